//! The instance's own endpoints: `/health` for orchestrators and the
//! balancer, `/status.html` for people, `/api/client-ip` to see what the
//! balancer forwarded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use askama::Template;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::proxy::client_ip::X_FORWARDED_FOR;

/// `GET /health`: 200 when the schema is in place and the database answers a
/// ping in time, else 503 with the reason. Never hangs: the ping is bounded.
pub async fn health(State(s): State<Arc<AppState>>) -> Response {
    let db = s.check_db().await;
    let code = if db.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if db.is_ok() { "ok" } else { "unavailable" },
        "instance": s.instance,
        "pid": std::process::id(),
        "uptime_secs": s.started.elapsed().as_secs(),
        "database": {
            "kind": s.store.kind(),
            "ok": db.is_ok(),
            "error": db.err(),
        },
    });
    (code, Json(body)).into_response()
}

/// `GET /api/client-ip`: the client address as this instance resolves it
/// (`X-Forwarded-For` is believed only from `TRUSTED_PROXIES`).
pub async fn client_ip(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    ext: Extensions,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(ConnectInfo(peer)) = ext.get::<ConnectInfo<SocketAddr>>().copied() else {
        tracing::error!("no peer address attached to the request");
        return Err(ApiError::Internal);
    };
    let ip = s.trusted.client_ip(peer.ip(), &headers);
    let forwarded: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    Ok(Json(json!({
        "ip": ip.to_string(),
        "forwarded_for": if forwarded.is_empty() { None } else { Some(forwarded.join(", ")) },
        "peer": peer.to_string(),
        "instance": s.instance,
    })))
}

/// One row of the workers-by-status table.
struct StatusCount {
    status: String,
    count: i64,
}

/// One worker as this replica sees it.
struct WorkerView {
    id: i64,
    name: String,
    endpoint: String,
    status: String,
    breaker: &'static str,
    in_flight: u64,
    last_minute: u64,
    weight: i64,
    queue: String,
}

/// The workers of one service type.
struct ServiceView {
    service_type: String,
    online: usize,
    workers: Vec<WorkerView>,
}

fn services(s: &AppState) -> Vec<ServiceView> {
    let snap = s.gateway.pool.snapshot();
    let mut by_type: std::collections::BTreeMap<String, Vec<WorkerView>> = Default::default();
    for w in &snap.workers {
        let queue = match w.state.load.queue() {
            crate::select::Queue::Length(n) => n.to_string(),
            crate::select::Queue::Unknown => "-".to_owned(),
            crate::select::Queue::Failed => "failed".to_owned(),
        };
        by_type
            .entry(w.row.service_type.clone())
            .or_default()
            .push(WorkerView {
                id: w.row.id,
                name: w.row.name.clone(),
                endpoint: w.state.conns.authority().to_owned(),
                status: w.row.status.clone(),
                breaker: w.breaker().name(),
                in_flight: w.state.load.in_flight(),
                last_minute: w.state.last_minute(),
                weight: w.row.weight,
                queue,
            });
    }
    by_type
        .into_iter()
        .map(|(service_type, workers)| ServiceView {
            online: workers.iter().filter(|w| w.status == "online").count(),
            service_type,
            workers,
        })
        .collect()
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage<'a> {
    instance: &'a str,
    port: u16,
    pid: u32,
    version: &'static str,
    uptime: String,
    requests: u64,
    db_kind: &'static str,
    db_ok: bool,
    db_error: Option<String>,
    workers: Vec<StatusCount>,
    workers_total: i64,
    now: String,
    strategy: &'static str,
    services: Vec<ServiceView>,
    keys: Vec<crate::gateway::meter::KeyCount>,
    usage_backlog: usize,
    usage_ok: bool,
}

/// `GET /status.html`: the public page (no configuration or secret on it:
/// the database is shown by kind and state only).
pub async fn page(State(s): State<Arc<AppState>>) -> Response {
    let db = s.check_db().await;
    let workers = match &db {
        Ok(()) => s.store.count_by_status().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let page = StatusPage {
        instance: &s.instance,
        port: s.port,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION"),
        uptime: crate::pages::human_secs(s.started.elapsed().as_secs()),
        requests: s.requests.load(Relaxed),
        db_kind: s.store.kind(),
        db_ok: db.is_ok(),
        db_error: db.err(),
        workers_total: workers.iter().map(|(_, n)| n).sum(),
        workers: workers
            .into_iter()
            .map(|(status, count)| StatusCount { status, count })
            .collect(),
        now: httpdate::fmt_http_date(std::time::SystemTime::now()),
        strategy: s.gateway.config.strategy.name(),
        services: services(&s),
        keys: s.gateway.meter.key_counts(),
        usage_backlog: s.gateway.meter.backlog(),
        usage_ok: s.gateway.meter.healthy(),
    };
    match page.render() {
        Ok(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "status page failed to render");
            ApiError::Internal.into_response()
        }
    }
}
