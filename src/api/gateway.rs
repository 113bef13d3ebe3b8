//! The gateway's routes on an API instance: dispatch to workers
//! (`/api/v1/{serviceType}[/...]`) and the caller's own usage
//! (`GET /api/v1/usage`). The work is in [`crate::gateway`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::gateway::{dispatch as forward, keys};
use crate::store::now_ms;

/// `GET|POST|PUT|DELETE /api/v1/{serviceType}[/{rest}]`
pub async fn dispatch(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let store = s.store().map_err(|e| e.to_string());
    forward::dispatch(s.gateway.clone(), store, req).await
}

/// `GET /api/v1/usage?days=30&page=1&perPage=50`: the calling key's totals
/// by day and service type, and its latest rows, newest first.
pub async fn usage(
    State(s): State<Arc<AppState>>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let caller = match keys::bearer(auth) {
        Ok(token) => {
            s.gateway
                .keys
                .check(s.store().map_err(|e| e.to_string()), token)
                .await
        }
        Err(e) => Err(e),
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => return forward::unauthorized(&e),
    };
    match usage_body(&s, caller, query).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn usage_body(
    s: &AppState,
    caller: keys::Caller,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<serde_json::Value, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let int = |name: &str, default: i64, max: i64| -> Result<i64, ApiError> {
        match q.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::field(name, format!("must be an integer between 1 and {max}"))
                }),
        }
    };
    let days = int("days", 30, 3660)?;
    let page = int("page", 1, 1_000_000)?;
    let per_page = int("perPage", 50, 1000)?;
    let store = s.store()?;
    let since = now_ms() - days * 86_400_000;
    let totals = store.usage_totals(caller.key_id, since).await?;
    let rows = store
        .usage_rows(caller.key_id, per_page, (page - 1) * per_page)
        .await?;
    Ok(json!({
        "success": true,
        "data": {
            "key": { "name": caller.name, "prefix": caller.prefix },
            "currency": "minor units",
            "days": days,
            "totals": totals,
            "rows": rows,
            "page": page,
            "perPage": per_page,
        }
    }))
}
