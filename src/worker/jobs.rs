//! The worker's HTTP side: jobs, `/health`, `/api/queue`, `/stats`.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::json;
use tokio::sync::Semaphore;

use super::WorkerConfig;

/// Largest job body read (bigger: 413).
const MAX_JOB_BYTES: usize = 256 << 20;
/// Size of the response's chunks.
const CHUNK: usize = 16 * 1024;

/// The worker's state, shared by its handlers and its heartbeat.
#[derive(Debug)]
pub struct Jobs {
    pub config: WorkerConfig,
    slots: Semaphore,
    next: AtomicU64,
    pub received: AtomicU64,
    pub finished: AtomicU64,
    /// Job number → request id, waiting for a slot / working.
    pending: Mutex<BTreeMap<u64, String>>,
    running: Mutex<BTreeMap<u64, String>>,
    /// The id the master gave us (0 until registered).
    pub worker_id: AtomicI64,
}

impl Jobs {
    pub fn new(config: WorkerConfig) -> Jobs {
        Jobs {
            slots: Semaphore::new(config.concurrency),
            config,
            next: AtomicU64::new(1),
            received: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            pending: Mutex::new(BTreeMap::new()),
            running: Mutex::new(BTreeMap::new()),
            worker_id: AtomicI64::new(0),
        }
    }

    /// Jobs running plus waiting.
    pub fn queue_length(&self) -> usize {
        lock(&self.pending).len() + lock(&self.running).len()
    }

    fn queue_json(&self) -> serde_json::Value {
        let list = |m: &Mutex<BTreeMap<u64, String>>| -> Vec<serde_json::Value> {
            lock(m).iter().map(|(n, id)| json!([n, id])).collect()
        };
        json!({ "queue_running": list(&self.running), "queue_pending": list(&self.pending) })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes a job off the queue lists when it ends, however it ends (a client
/// that goes away drops the handler mid-way).
struct Ticket<'a> {
    jobs: &'a Jobs,
    n: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        lock(&self.jobs.pending).remove(&self.n);
        lock(&self.jobs.running).remove(&self.n);
    }
}

pub fn router(jobs: Arc<Jobs>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/queue", get(queue))
        .route("/stats", get(stats))
        .route("/{service}", any(job))
        .route("/{service}/{*rest}", any(job))
        .with_state(jobs)
}

async fn health(State(j): State<Arc<Jobs>>) -> Response {
    Json(json!({
        "status": "ok",
        "worker": j.config.name,
        "serviceType": j.config.service_type,
        "workerId": j.worker_id.load(Relaxed),
        "queueLength": j.queue_length(),
    }))
    .into_response()
}

async fn queue(State(j): State<Arc<Jobs>>) -> Response {
    Json(j.queue_json()).into_response()
}

/// What the worker has received and finished (tests count jobs with it).
async fn stats(State(j): State<Arc<Jobs>>) -> Response {
    Json(json!({
        "worker": j.config.name,
        "received": j.received.load(Relaxed),
        "finished": j.finished.load(Relaxed),
        "queueLength": j.queue_length(),
    }))
    .into_response()
}

/// A per-request override from a header, bounded.
fn header_num(h: &HeaderMap, name: &str, max: u64) -> Option<u64> {
    h.get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&n| n <= max)
}

async fn job(State(j): State<Arc<Jobs>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if service != j.config.service_type {
        let msg = format!("this worker serves /{} only", j.config.service_type);
        return (StatusCode::NOT_FOUND, Json(json!({ "error": msg }))).into_response();
    }
    let n = j.next.fetch_add(1, Relaxed);
    j.received.fetch_add(1, Relaxed);
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let work = header_num(req.headers(), "x-work-ms", 3_600_000)
        .map_or(j.config.work, Duration::from_millis);
    let size = header_num(req.headers(), "x-work-bytes", 256 << 20)
        .map_or(j.config.work_bytes, |n| n as usize);
    let method = req.method().to_string();
    lock(&j.pending).insert(n, request_id.clone());
    let _ticket = Ticket { jobs: &j, n };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_JOB_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let msg = "request body unreadable or too large";
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response();
        }
    };
    let Ok(_slot) = j.slots.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    {
        lock(&j.pending).remove(&n);
        lock(&j.running).insert(n, request_id.clone());
    }
    tokio::time::sleep(work).await;
    j.finished.fetch_add(1, Relaxed);
    let head = json!({
        "worker": j.config.name,
        "workerId": j.worker_id.load(Relaxed),
        "serviceType": j.config.service_type,
        "method": method,
        "path": path,
        "job": n,
        "requestId": request_id,
        "idempotencyKey": idempotency_key,
        "requestBytes": body.len(),
        "workMs": work.as_millis() as u64,
    });
    let mut out = head.to_string();
    // Pad to the configured size: `{..., "output":"xxx..."}`.
    out.pop();
    out.push_str(",\"output\":\"");
    let fill = size.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', fill));
    out.push_str("\"}");
    let mut resp = Response::new(AxumBody::new(Chunks::new(Bytes::from(out))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A body sent in chunks of [`CHUNK`] bytes (so responses stream).
struct Chunks {
    left: VecDeque<Bytes>,
    len: u64,
}

impl Chunks {
    fn new(mut all: Bytes) -> Chunks {
        let len = all.len() as u64;
        let mut left = VecDeque::new();
        while !all.is_empty() {
            left.push_back(all.split_to(all.len().min(CHUNK)));
        }
        Chunks { left, len }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.left.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.left.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}
