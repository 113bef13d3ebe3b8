//! One dispatched request: key check, worker choice, tries, answer.
//!
//! ```text
//! /api/v1/{type}[/{rest}] ─► key (cache / store) ─► 401
//!        │ usage row from here on, whatever the answer
//!        ▼
//!   service snapshot ─► 404 unknown type, 503 none online or metering behind
//!        ▼
//!   body: Content-Length ≤ DISPATCH_RETRY_BUFFER_BYTES → read (can be resent)
//!         larger / chunked → streamed to one worker; > max → 413
//!        ▼
//!   candidates (strategy, breaker admits, not tried yet) ─► try ─► response streamed
//!        └─ failed: retry when nothing reached the worker, or the request is
//!           idempotent / has Idempotency-Key and its body can be resent
//! ```
//!
//! Retry rule, in one place (`may_retry`): a request that never reached a
//! worker (connect refused or timed out, the pooled connection handed the
//! request back unsent, breaker open) is always tried on another worker.
//! Once it may have reached one, only when the method is idempotent (GET,
//! HEAD, PUT, DELETE, OPTIONS) or the client sent `Idempotency-Key` (which
//! the worker receives), so a job is never run twice behind the client's
//! back. A worker that does not answer within `DISPATCH_TIMEOUT_SECS` is not
//! retried either: 504 (another try would double the wait).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::body::Body as AxumBody;
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header,
};
use http_body_util::{BodyExt, Either, Full};
use serde_json::json;

use super::Gateway;
use super::body::{Finish, InFlight, MeteredBody};
use super::breaker::{Admit, BreakerState};
use super::conn::{ConnectError, TooLarge, Upload, WorkerBody};
use super::keys::{self, AuthError, Caller};
use super::pool::WorkerTarget;
use crate::proxy::rules;
use crate::store::Store;
use crate::store::usage::{UsageRow, new_key};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_WORKER_ID: HeaderName = HeaderName::from_static("x-worker-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// How one try ended, when it did not give a response.
#[derive(Debug)]
enum TryError {
    /// Nothing reached the worker; the request (and its body) came back.
    NotSent(String, Option<Box<Request<WorkerBody>>>),
    /// The worker may have received (part of) the request.
    Sent(String),
    /// No response head within `DISPATCH_TIMEOUT_SECS`.
    Timeout,
    /// The client's upload broke off, or grew past the limit.
    Client(StatusCode, &'static str),
}

/// Whether a failed try may be repeated on another worker: always when
/// nothing reached the worker; after that only for idempotent requests
/// whose body can be sent again. Never after a timeout.
fn may_retry(err: &TryError, idempotent: bool, replayable: bool) -> bool {
    match err {
        TryError::NotSent(..) => true,
        TryError::Sent(_) => idempotent && replayable,
        TryError::Timeout | TryError::Client(..) => false,
    }
}

/// Idempotent by method (RFC 9110 §9.2.2) or by the client's own key: the
/// balancer's rule ([`rules::is_idempotent`]), one rule for both tiers.
fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    rules::is_idempotent(
        method.as_str().as_bytes(),
        headers.contains_key(IDEMPOTENCY_KEY),
    )
}

/// A 5xx that says the worker, not the job, is in trouble (feeds the
/// breaker): the balancer's rule ([`rules::status_blames`]).
fn blames_worker(status: StatusCode) -> bool {
    rules::status_blames(status.as_u16())
}

/// Hop-by-hop headers ([`rules::is_hop_by_hop`]) and what the gateway sets
/// itself or consumes (the caller's key never reaches a worker).
fn skip_request_header(name: &HeaderName) -> bool {
    rules::is_hop_by_hop(name.as_str().as_bytes())
        || matches!(
            name.as_str(),
            "host" | "authorization" | "x-request-id" | "expect"
        )
}

fn skip_response_header(name: &HeaderName) -> bool {
    rules::is_hop_by_hop(name.as_str().as_bytes())
        || matches!(name.as_str(), "x-request-id" | "x-worker-id")
}

/// The client's request id when it is a sensible one, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_key)
}

/// A JSON error of the gateway's own.
fn answer(status: StatusCode, reason: &str, request_id: Option<&str>) -> Response<AxumBody> {
    let mut body = json!({ "success": false, "error": reason, "status": status.as_u16() });
    if let Some(id) = request_id {
        body["requestId"] = json!(id);
    }
    let mut resp = Response::new(AxumBody::from(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        h.insert(X_REQUEST_ID, v);
    }
    resp
}

pub fn unauthorized(e: &AuthError) -> Response<AxumBody> {
    if let AuthError::Unavailable(_) = e {
        return answer(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), None);
    }
    let mut resp = answer(StatusCode::UNAUTHORIZED, &e.to_string(), None);
    // RFC 6750 §3: no error code when no credentials were sent at all.
    let challenge = match e {
        AuthError::Missing => "Bearer realm=\"hashgate\"",
        _ => "Bearer realm=\"hashgate\", error=\"invalid_token\"",
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// `/api/v1/{type}[/{rest}]` → (`type`, `/{type}[/{rest}][?query]`).
fn split_path(req: &Request<AxumBody>) -> Option<(String, String)> {
    let path = req.uri().path().strip_prefix("/api/v1/")?;
    let (service, _) = path.split_once('/').unwrap_or((path, ""));
    let mut target = format!("/{path}");
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    Some((service.to_owned(), target))
}

/// One request's context after the key check.
struct Job {
    gw: Arc<Gateway>,
    caller: Caller,
    request_id: String,
    service: String,
    started: Instant,
    started_ms: i64,
    request_bytes: Arc<AtomicU64>,
}

impl Job {
    fn row(&self, status: StatusCode, worker_id: Option<i64>) -> UsageRow {
        let ok = status.is_success();
        UsageRow {
            row_key: new_key(),
            request_id: self.request_id.clone(),
            key_id: self.caller.key_id,
            service_type: self.service.clone(),
            worker_id,
            status: i64::from(status.as_u16()),
            request_bytes: i64::try_from(self.request_bytes.load(Relaxed)).unwrap_or(i64::MAX),
            response_bytes: 0,
            started_at: self.started_ms,
            ended_at: self.started_ms,
            duration_ms: 0,
            cost: if ok {
                self.gw.config.price(&self.service)
            } else {
                0
            },
            instance: self.gw.instance.clone(),
        }
    }

    /// Answers with an error of our own, once its usage row is written.
    async fn fail(&self, status: StatusCode, reason: &str) -> Response<AxumBody> {
        let mut resp = answer(status, reason, Some(&self.request_id));
        let mut row = self.row(status, None);
        row.ended_at = crate::store::now_ms();
        row.duration_ms = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        row.response_bytes = hyper::body::Body::size_hint(resp.body())
            .exact()
            .and_then(|n| i64::try_from(n).ok())
            .unwrap_or(0);
        self.gw.meter.record(row).wait().await;
        resp.headers_mut().remove(X_WORKER_ID);
        resp
    }
}

/// Serves one request to `/api/v1/{type}[/{rest}]`.
pub async fn dispatch(
    gw: Arc<Gateway>,
    store: Result<&Store, String>,
    req: Request<AxumBody>,
) -> Response<AxumBody> {
    if !matches!(
        *req.method(),
        Method::GET | Method::POST | Method::PUT | Method::DELETE
    ) {
        let mut resp = answer(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None);
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, POST, PUT, DELETE"),
        );
        return resp;
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let caller = match keys::bearer(auth) {
        Ok(token) => gw.keys.check(store, token).await,
        Err(e) => Err(e),
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "dispatch refused");
            return unauthorized(&e);
        }
    };
    gw.meter
        .count_key(caller.key_id, &caller.name, &caller.prefix);
    let Some((service, target)) = split_path(&req) else {
        return answer(StatusCode::NOT_FOUND, "route not found", None);
    };
    let job = Job {
        request_id: request_id(req.headers()),
        gw: gw.clone(),
        caller,
        service,
        started: Instant::now(),
        started_ms: crate::store::now_ms(),
        request_bytes: Arc::new(AtomicU64::new(0)),
    };
    let snapshot = gw.pool.snapshot();
    let Some(svc) = snapshot.services.get(&job.service).cloned() else {
        return if snapshot.known_types.contains(&job.service) {
            job.fail(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no online worker for service type {:?}", job.service),
            )
            .await
        } else {
            job.fail(
                StatusCode::NOT_FOUND,
                &format!("unknown service type {:?}", job.service),
            )
            .await
        };
    };
    if let Err(why) = gw.meter.accepting() {
        return job.fail(StatusCode::SERVICE_UNAVAILABLE, why).await;
    }

    let (parts, body) = req.into_parts();
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = gw.config.max_body_bytes;
    if length.is_some_and(|n| n > limit) {
        return job
            .fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body larger than {limit} bytes (DISPATCH_MAX_BODY_BYTES)"),
            )
            .await;
    }
    let empty = hyper::body::Body::is_end_stream(&body);
    let buffered = empty || length.is_some_and(|n| n <= gw.config.retry_buffer_bytes);
    let mut body = if buffered {
        let read = tokio::time::timeout(
            gw.config.timeout,
            http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
                .collect(),
        )
        .await;
        match read {
            Ok(Ok(collected)) => {
                let bytes = collected.to_bytes();
                job.request_bytes.store(bytes.len() as u64, Relaxed);
                Some(Either::Left(Full::new(bytes)))
            }
            Ok(Err(_)) => {
                return job
                    .fail(
                        StatusCode::BAD_REQUEST,
                        "the request body could not be read",
                    )
                    .await;
            }
            Err(_) => {
                return job
                    .fail(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive in time",
                    )
                    .await;
            }
        }
    } else {
        Some(Either::Right(Upload::new(
            body,
            job.request_bytes.clone(),
            limit,
        )))
    };
    let replayable = buffered;
    let idempotent = is_idempotent(&parts.method, &parts.headers);

    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
    for (name, value) in &parts.headers {
        if !skip_request_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&job.request_id) {
        headers.insert(X_REQUEST_ID, v);
    }

    let mut tried: Vec<i64> = Vec::new();
    let mut last_failure: Option<(StatusCode, String)> = None;
    while tried.len() < gw.config.max_tries as usize {
        let now = Instant::now();
        let pick = svc
            .selector
            .candidates(&svc.targets, 0, |t: &WorkerTarget| {
                !tried.contains(&t.state.id) && t.state.breaker.would_admit(now)
            })
            .next();
        let Some(i) = pick else { break };
        let t = &svc.targets[i];
        tried.push(t.state.id);
        let probe = match t.state.breaker.admit(now) {
            Admit::No => continue,
            Admit::Probe => true,
            Admit::Yes => false,
        };
        let Some(this_body) = (match &body {
            Some(Either::Left(full)) => Some(Either::Left(full.clone())),
            Some(Either::Right(_)) => body.take(),
            None => None,
        }) else {
            break;
        };
        let mut builder = Request::builder()
            .method(parts.method.clone())
            .uri(target.as_str())
            .version(hyper::Version::HTTP_11);
        if let Some(h) = builder.headers_mut() {
            h.clone_from(&headers);
            if let Ok(host) = HeaderValue::from_str(t.state.conns.authority()) {
                h.insert(header::HOST, host);
            }
            if let Either::Left(full) = &this_body {
                let n = hyper::body::Body::size_hint(full).exact().unwrap_or(0);
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        let out = match builder.body(this_body) {
            Ok(r) => r,
            Err(_) => {
                return job
                    .fail(StatusCode::BAD_REQUEST, "the request cannot be forwarded")
                    .await;
            }
        };
        let in_flight = InFlight::new(t.state.clone());
        t.state.count_dispatch();
        let try_started = Instant::now();
        if probe {
            tracing::info!(worker_id = t.state.id, worker = %t.name, "breaker half-open: one request decides");
        }
        match send(t, out, gw.config.timeout).await {
            Ok((resp, sender)) => {
                let elapsed = try_started.elapsed();
                t.state.load.record_latency(elapsed);
                let status = resp.status();
                let flip = if blames_worker(status) {
                    t.state.breaker.failure(Instant::now())
                } else {
                    t.state.breaker.success(Instant::now())
                };
                log_flip(t, flip);
                return respond(&job, t, resp, sender, in_flight);
            }
            Err(err) => {
                let flip = match &err {
                    TryError::Client(..) => None,
                    _ => t.state.breaker.failure(Instant::now()),
                };
                log_flip(t, flip);
                if !matches!(err, TryError::Client(..)) {
                    gw.meter
                        .worker_try(t.state.id, false, try_started.elapsed());
                }
                drop(in_flight);
                let retry = may_retry(&err, idempotent, replayable);
                tracing::debug!(worker_id = t.state.id, error = ?err, retry, request_id = %job.request_id, "dispatch try failed");
                match err {
                    TryError::NotSent(why, back) => {
                        if let Some(req) = back
                            && let Either::Right(upload) = req.into_body()
                        {
                            body = Some(Either::Right(upload));
                        }
                        last_failure = Some((StatusCode::BAD_GATEWAY, why));
                    }
                    TryError::Sent(why) => {
                        if !retry {
                            if job.request_bytes.load(Relaxed) > limit {
                                return too_large(&job, limit).await;
                            }
                            tracing::warn!(worker_id = t.state.id, request_id = %job.request_id, error = %why, "worker failed mid-request; not retried (not idempotent)");
                            return job
                                .fail(StatusCode::BAD_GATEWAY, "the worker failed while handling the request; it was not retried because it is not idempotent (send Idempotency-Key to allow that)")
                                .await;
                        }
                        last_failure = Some((StatusCode::BAD_GATEWAY, why));
                    }
                    TryError::Timeout => {
                        return job
                            .fail(
                                StatusCode::GATEWAY_TIMEOUT,
                                "the worker did not answer in time (DISPATCH_TIMEOUT_SECS)",
                            )
                            .await;
                    }
                    TryError::Client(status, why) => return job.fail(status, why).await,
                }
            }
        }
    }
    match last_failure {
        None if tried.is_empty() => {
            job.fail(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "no worker for service type {:?} is taking requests (circuit breakers open)",
                    job.service
                ),
            )
            .await
        }
        _ => {
            tracing::warn!(request_id = %job.request_id, tries = tried.len(), service = %job.service, "every try failed");
            job.fail(
                StatusCode::BAD_GATEWAY,
                "every worker tried failed to answer",
            )
            .await
        }
    }
}

async fn too_large(job: &Job, limit: u64) -> Response<AxumBody> {
    job.fail(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body larger than {limit} bytes (DISPATCH_MAX_BODY_BYTES)"),
    )
    .await
}

fn log_flip(t: &WorkerTarget, flip: Option<BreakerState>) {
    match flip {
        Some(BreakerState::Open) => {
            tracing::warn!(worker_id = t.state.id, worker = %t.name, "circuit breaker open: sending nothing to this worker for now");
        }
        Some(BreakerState::Closed) => {
            tracing::info!(worker_id = t.state.id, worker = %t.name, "circuit breaker closed again");
        }
        _ => {}
    }
}

/// One try on one worker, up to its response head.
async fn send(
    t: &WorkerTarget,
    req: Request<WorkerBody>,
    timeout: Duration,
) -> Result<(Response<hyper::body::Incoming>, super::conn::Sender), TryError> {
    let mut sender = match t.state.conns.get().await {
        Ok(s) => s,
        Err(
            e @ (ConnectError::Timeout(_) | ConnectError::Io(..) | ConnectError::Handshake(..)),
        ) => {
            return Err(TryError::NotSent(e.to_string(), Some(Box::new(req))));
        }
    };
    let sent = tokio::time::timeout(timeout, sender.try_send_request(req)).await;
    match sent {
        Err(_) => Err(TryError::Timeout),
        Ok(Ok(resp)) => Ok((resp, sender)),
        Ok(Err(mut e)) => {
            let back = e.take_message();
            let err = e.into_error();
            if is_client_body_error(&err) {
                return Err(client_error(&err));
            }
            match back {
                Some(req) => Err(TryError::NotSent(err.to_string(), Some(Box::new(req)))),
                None => Err(TryError::Sent(err.to_string())),
            }
        }
    }
}

fn is_client_body_error(e: &hyper::Error) -> bool {
    e.is_user() && std::error::Error::source(e).is_some()
}

fn client_error(e: &hyper::Error) -> TryError {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if s.downcast_ref::<TooLarge>().is_some() {
            return TryError::Client(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large (DISPATCH_MAX_BODY_BYTES)",
            );
        }
        src = s.source();
    }
    TryError::Client(
        StatusCode::BAD_REQUEST,
        "the request body could not be read",
    )
}

/// The worker's response, streamed back with the gateway's headers.
fn respond(
    job: &Job,
    t: &WorkerTarget,
    resp: Response<hyper::body::Incoming>,
    sender: super::conn::Sender,
    in_flight: InFlight,
) -> Response<AxumBody> {
    let (parts, body) = resp.into_parts();
    let finish = Finish {
        meter: job.gw.meter.clone(),
        row: job.row(parts.status, Some(t.state.id)),
        started: job.started,
        failed: false,
    };
    let metered = MeteredBody::new(body, sender, in_flight, finish, job.gw.config.timeout);
    let mut out = Response::new(AxumBody::new(metered));
    *out.status_mut() = parts.status;
    let h = out.headers_mut();
    for (name, value) in &parts.headers {
        if !skip_response_header(name) {
            h.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&job.request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    h.insert(X_WORKER_ID, HeaderValue::from(t.state.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_rule() {
        let not_sent = TryError::NotSent("refused".into(), None);
        let sent = TryError::Sent("reset".into());
        // Nothing reached a worker: always.
        assert!(may_retry(&not_sent, false, false));
        // Reached one: only idempotent requests with a body we still have.
        assert!(!may_retry(&sent, false, true));
        assert!(may_retry(&sent, true, true));
        assert!(!may_retry(&sent, true, false));
        assert!(!may_retry(&TryError::Timeout, true, true));
    }

    #[test]
    fn idempotency() {
        let mut h = HeaderMap::new();
        assert!(!is_idempotent(&Method::POST, &h));
        assert!(is_idempotent(&Method::PUT, &h));
        assert!(is_idempotent(&Method::GET, &h));
        h.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("job-7"));
        assert!(is_idempotent(&Method::POST, &h));
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h).len(), 32);
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&h), "abc-1");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 32);
    }
}
