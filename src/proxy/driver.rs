//! The one request driver: candidates from the selector -> an attempt on
//! each -> its outcome reported -> the retry decision, for both transports.
//! A transport (the fast path's raw sockets, hyper's client) only knows how
//! to make one attempt on one backend; which backends, in which order, how
//! often, and what each outcome means are decided here and in
//! [`super::rules`], once.
//!
//! A backend whose ejection ran out is half-open: only the request that
//! claims its probe goes there, and that request's outcome decides (see
//! [`crate::health::outlier`]). Below the panic threshold every backend that
//! passes its active checks is a candidate, ejected or not
//! ([`Proxy::panic_mode`]).
//!
//! Before anything else, the client's token bucket is asked (when
//! `RATE_LIMIT_RPS` is set): one check, here, for both transports. After an
//! answer, the client table learns where the client went.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::Proxy;
use super::body::UpstreamGuard;
use super::error::ProxyError;
use super::{report, rules};
use crate::backend::Backend;
use crate::health::outlier::Admit;

/// What the driver needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The client key's hash (the sticky strategies' key; the outlier
    /// detector counts a client's timeouts once).
    pub key: u64,
    /// The client key itself (the rate limiter's key, the client table's).
    pub client: IpAddr,
    /// Idempotent, and its body kept whole: it may be sent again after it
    /// reached a backend (see [`rules::may_retry`]).
    pub replayable: bool,
}

/// A failed attempt: why, and whether any of the request may have reached
/// the backend.
#[derive(Debug)]
pub struct Failed {
    pub error: ProxyError,
    pub sent: bool,
    /// It went out on a reused idle connection and failed before any byte
    /// of an answer: most likely the backend closed that connection just
    /// as it was reused (see [`rules::may_retry_fresh`]).
    pub stale: bool,
}

impl Failed {
    pub fn new(error: ProxyError, sent: bool) -> Self {
        Failed {
            error,
            sent,
            stale: false,
        }
    }
}

/// One transport's way of trying a request on one backend.
pub trait Transport {
    /// A response head (and whatever the transport needs to relay the rest).
    type Response: Send;

    /// Tries the request on `backend`, up to the response head; on a new
    /// connection when `fresh`, else on a pooled one if there is one. A new
    /// connection that is not up within `give_way` (when shorter than
    /// `CONNECT_TIMEOUT_MS`) fails with [`crate::upstream::ConnectError::GaveWay`].
    fn attempt(
        &mut self,
        backend: &Arc<Backend>,
        fresh: bool,
        give_way: Option<Duration>,
    ) -> impl Future<Output = Result<Self::Response, Failed>> + Send;

    /// The response's status code.
    fn status(response: &Self::Response) -> u16;
}

/// A request that reached a backend and got a response head.
pub struct Routed<R> {
    pub response: R,
    /// Keeps the request counted in flight on its backend until the body
    /// is through; reports how the body ended.
    pub guard: UpstreamGuard,
}

/// Routes one request: tries the candidates in order until one answers or
/// the rules forbid another try.
pub async fn drive<T: Transport>(
    proxy: &Proxy,
    call: Call,
    transport: &mut T,
) -> Result<Routed<T::Response>, ProxyError> {
    if let Some(limiter) = &proxy.limiter {
        if let Err(retry_after) = limiter.check(call.client) {
            proxy.stats.rate_limited.inc();
            return Err(ProxyError::RateLimited { retry_after });
        }
    }
    proxy
        .totals
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let snapshot = proxy.backends.load();
    // Computed at most once, and only when a candidate is unavailable.
    let panic = OnceLock::new();
    let in_panic = || *panic.get_or_init(|| proxy.panic_mode(&snapshot));
    let accept = |b: &Arc<Backend>| proxy.accepts(b, in_panic);
    let lost_probe_after =
        proxy.config.limits.connect_timeout + proxy.config.limits.upstream_timeout;
    let mut last = None;
    let mut candidates = snapshot
        .selector
        .candidates(&snapshot.backends, call.key, accept)
        .peekable();
    while let Some(i) = candidates.next() {
        let backend = &snapshot.backends[i];
        if backend.outlier.admit() == Admit::Probe && !in_panic() {
            if !backend.outlier.try_probe(lost_probe_after) {
                continue; // another request is the half-open probe
            }
            tracing::info!(backend = %backend.name(), "backend half-open: one request decides");
        }
        let guard = UpstreamGuard::new(Arc::clone(backend), call.key, call.client);
        let started = Instant::now();
        let give_way = rules::connect_give_way(&proxy.config.limits, candidates.peek().is_some());
        let mut attempt = transport.attempt(backend, false, give_way).await;
        if let Err(f) = &attempt {
            if rules::may_retry_fresh(f.stale, f.sent, call.replayable) {
                tracing::debug!(backend = %backend.name(), error = %f.error, "a reused connection was closed: once more on a new one");
                attempt = transport.attempt(backend, true, give_way).await;
            }
        }
        match attempt {
            Ok(response) => {
                let now = Instant::now();
                let took = now.saturating_duration_since(started);
                report::answered(proxy, backend, T::status(&response), took, now);
                proxy.stats.clients.seen(call.client, backend, now);
                return Ok(Routed { response, guard });
            }
            Err(Failed { error, sent, .. }) => {
                report::failed(proxy, backend, &error, call.key);
                let again = rules::may_retry(&error, sent, call.replayable);
                last = Some(error);
                if !again {
                    break;
                }
            }
        }
    }
    proxy
        .totals
        .failed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Err(last.unwrap_or(ProxyError::NoBackend))
}
