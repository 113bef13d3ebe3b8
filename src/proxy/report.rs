//! The one place outcomes go: every attempt's result (from the driver) and
//! every broken response body (from either transport's relay) feeds the
//! backend's counters, its load figures and outlier detection, and a
//! refused connection wakes the health loop for an immediate re-check.
//! A connect given up early for the next candidate wakes it too, without
//! counting against the backend.
//! Which failures count is decided by [`super::rules`]; what the outlier
//! detector makes of them, by [`crate::health::outlier`]. Each change of
//! state is logged here, once.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::Proxy;
use super::error::ProxyError;
use super::rules;
use crate::backend::Backend;
use crate::health::outlier::{Change, Fault};
use crate::stats::FailureKind;

/// The kind `/metrics` counts a failure of the backend's as.
fn kind(error: &ProxyError) -> FailureKind {
    match error {
        ProxyError::Connect(_) => FailureKind::Connect,
        ProxyError::Timeout => FailureKind::Timeout,
        ProxyError::BadResponse(_) => FailureKind::BadResponse,
        ProxyError::Upstream(e) if e.is_parse() => FailureKind::BadResponse,
        _ => FailureKind::Reset,
    }
}

/// The backend answered with a response head of `status`, `took` after
/// the attempt began; `now` is when.
pub fn answered(proxy: &Proxy, backend: &Backend, status: u16, took: Duration, now: Instant) {
    backend.load.record_latency_at(took, now);
    backend
        .metrics
        .answered(status, took, crate::stats::latency::current_slice());
    if rules::status_blames(status) {
        backend.metrics.failed(FailureKind::GatewayStatus);
        backend.stats.errors.fetch_add(1, Relaxed);
        let why = format!("answered {status}");
        outlier_failure(proxy, backend, Fault::Answer, &why);
    } else if let Some(change) = backend.outlier.success() {
        change.log(backend.name(), "a request succeeded");
    }
}

/// An attempt failed before a response head.
pub fn failed(proxy: &Proxy, backend: &Backend, error: &ProxyError, client: u64) {
    if rules::wakes_health_check(error) {
        // An immediate check takes a dead process (refused) or a vanished
        // address (no answer to a SYN) out within a round of probes.
        proxy.backends.wake.notify_one();
    }
    let Some(fault) = rules::blame(error, client) else {
        tracing::debug!(backend = %backend.name(), error = %error, "attempt failed (not the backend's fault)");
        return;
    };
    tracing::debug!(backend = %backend.name(), error = %error, "attempt failed");
    backend.stats.errors.fetch_add(1, Relaxed);
    backend.metrics.failed(kind(error));
    if fault == Fault::Connect {
        // Nothing listening: the idle connections are dead too.
        backend.pool.clear();
    }
    outlier_failure(proxy, backend, fault, error);
}

/// The backend broke off (or stalled) in the middle of a response body.
pub fn body_failed(proxy: &Proxy, backend: &Backend, error: &ProxyError, client: u64) {
    tracing::debug!(backend = %backend.name(), error = %error, "backend body failed mid-stream");
    backend.stats.errors.fetch_add(1, Relaxed);
    backend.metrics.failed(kind(error));
    if let Some(fault) = rules::blame(error, client) {
        outlier_failure(proxy, backend, fault, error);
    }
}

fn outlier_failure(proxy: &Proxy, backend: &Backend, fault: Fault, why: &dyn std::fmt::Display) {
    let cfg = &proxy.config.outlier;
    // The cap on ejected backends needs the whole set: counted only when
    // a streak is long enough to eject.
    let may_eject = || {
        let snapshot = proxy.backends.load();
        let total = snapshot.backends.len() as u64;
        let out = snapshot
            .backends
            .iter()
            .filter(|b| b.outlier.is_out())
            .count() as u64;
        out * 100 < u64::from(cfg.max_ejection_percent) * total
    };
    if let Some(change) = backend.outlier.failure(fault, why, cfg, may_eject) {
        if matches!(change, Change::Ejected { .. }) {
            backend.pool.clear();
        }
        change.log(backend.name(), &why.to_string());
    }
}
