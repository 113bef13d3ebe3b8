//! The worker registry endpoints (`/api/v1/worker/...`, `/api/v1/workers`).
//!
//! All state is in the database, so any instance answers for any worker: a
//! worker may register through one replica and heartbeat through another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::input::{self, Fields, JsonObject};
use crate::store::workers::{Heartbeat, NewWorker, WorkerFilter};

type Reply = Result<Json<Value>, ApiError>;

/// `POST /api/v1/worker/register`
pub async fn register(State(s): State<Arc<AppState>>, JsonObject(body): JsonObject) -> Reply {
    let f = Fields(&body);
    let name = Fields::required("name", f.text("name", 128)?)?;
    let host = Fields::required("host", f.text("host", 255)?)?;
    input::check_host("host", &host)?;
    let port = Fields::required("port", f.int("port", 1, 65535)?)?;
    let service_type = Fields::required("serviceType", f.text("serviceType", 64)?)?;
    input::check_new_service_type("serviceType", &service_type)?;
    let weight = f.int("weight", 1, 1000)?.unwrap_or(1);
    let max_connections = f.int("maxConnections", 1, 1_000_000)?.unwrap_or(100);
    let worker = NewWorker {
        name,
        host,
        port: u16::try_from(port).map_err(|_| ApiError::field("port", "out of range"))?,
        service_type,
        weight: u32::try_from(weight).unwrap_or(1),
        max_connections: u32::try_from(max_connections).unwrap_or(100),
    };
    let store = s.store()?;
    let id = store.register_worker(&worker).await?;
    tracing::info!(
        worker_id = id,
        name = %worker.name,
        endpoint = %format_args!("{}:{}", worker.host, worker.port),
        service_type = %worker.service_type,
        "worker registered"
    );
    Ok(Json(json!({
        "success": true,
        "data": {
            "workerId": id,
            "heartbeatInterval": s.heartbeat_interval_ms(),
        }
    })))
}

/// `POST /api/v1/worker/heartbeat`
pub async fn heartbeat(State(s): State<Arc<AppState>>, JsonObject(body): JsonObject) -> Reply {
    let f = Fields(&body);
    let worker_id = Fields::required("workerId", f.int("workerId", 1, i64::MAX)?)?;
    let status = match f.text("status", 16)? {
        Some(st) => input::check_status("status", &st)?,
        None => "online",
    };
    let hb = Heartbeat {
        worker_id,
        status,
        current_connections: f
            .int("currentConnections", 0, 10_000_000)?
            .and_then(|n| u32::try_from(n).ok()),
        cpu_usage: f.num("cpuUsage", 0.0, 100.0)?,
        memory_usage: f.num("memoryUsage", 0.0, 100.0)?,
        queue_length: f
            .int("queueLength", 0, 10_000_000)?
            .and_then(|n| u32::try_from(n).ok()),
    };
    let store = s.store()?;
    if !store.heartbeat(&hb).await? {
        return Err(ApiError::NotFound(format!("worker {worker_id}")));
    }
    tracing::debug!(worker_id, status, "heartbeat");
    Ok(Json(json!({
        "success": true,
        "data": {
            "workerId": worker_id,
            "status": status,
            "heartbeatInterval": s.heartbeat_interval_ms(),
        }
    })))
}

/// `GET /api/v1/workers?serviceType=&status=`
///
/// While the database is unreachable, the last list this instance read for
/// the same filter within `WORKERS_STALE_SECS` is answered, with an `Age`
/// header, instead of a 503 (see [`super::stale`]).
pub async fn list(
    State(s): State<Arc<AppState>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let mut filter = WorkerFilter::default();
    if let Some(st) = q.get("serviceType") {
        input::check_service_type("serviceType", st)?;
        filter.service_type = Some(st.clone());
    }
    if let Some(st) = q.get("status") {
        filter.status = Some(input::check_status("status", st)?.to_owned());
    }
    match s.store()?.list_workers(&filter).await {
        Ok(workers) => {
            let body = json!({
                "success": true,
                "data": workers,
                "count": workers.len(),
            });
            let body = Bytes::from(serde_json::to_vec(&body).map_err(|_| ApiError::Internal)?);
            s.stale_lists.put(filter, body.clone());
            Ok(json_bytes(body, None))
        }
        Err(e) if e.is_unavailable() => match s.stale_lists.get(&filter) {
            Some((age, body)) => {
                tracing::debug!(error = %e, age_secs = age.as_secs(), "database unavailable, answering the last worker list");
                Ok(json_bytes(body, Some(age)))
            }
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// A JSON body already serialized, with an `Age` header when it is a
/// remembered answer.
fn json_bytes(body: Bytes, age: Option<Duration>) -> Response {
    let mut res = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(age) = age {
        res.headers_mut()
            .insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    res
}

/// `GET /api/v1/workers/{id}`
pub async fn get(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Reply {
    let id = input::parse_id(&id)?;
    match s.store()?.get_worker(id).await? {
        Some(w) => Ok(Json(json!({ "success": true, "data": w }))),
        None => Err(ApiError::NotFound(format!("worker {id}"))),
    }
}

/// `DELETE /api/v1/workers/{id}`
pub async fn remove(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Reply {
    let id = input::parse_id(&id)?;
    if !s.store()?.delete_worker(id).await? {
        return Err(ApiError::NotFound(format!("worker {id}")));
    }
    tracing::info!(worker_id = id, "worker removed");
    Ok(Json(json!({ "success": true, "data": { "workerId": id } })))
}
