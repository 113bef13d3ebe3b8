//! Background work of an instance: apply the schema (retrying with back-off
//! until the database is reachable), then sweep silent workers offline.
//!
//! Every instance sweeps; the store's conditional update makes each
//! online-to-offline change happen (and be logged) exactly once however many
//! instances sweep at the same moment.

use std::sync::Arc;
use std::time::Duration;

use super::AppState;
use crate::shutdown::Shutdown;
use crate::store::now_ms;

pub(super) async fn migrate_then_sweep(state: Arc<AppState>, shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match state.store.migrate().await {
            Ok(()) => {
                tracing::info!(database = state.store.kind(), "schema up to date");
                state.set_migrated(Ok(()));
                state.gateway.start_discovery(&state.store, &shutdown);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot apply schema migrations yet");
                state.set_migrated(Err(e.to_string()));
            }
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }

    let mut tick = tokio::time::interval(state.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout_ms = i64::try_from(state.config.worker_timeout.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        match state.store.sweep_offline(now_ms() - timeout_ms).await {
            Ok(ids) => {
                for id in ids {
                    tracing::info!(worker_id = id, timeout = ?state.config.worker_timeout, "worker offline (no heartbeat)");
                }
            }
            Err(e) => tracing::debug!(error = %e, "offline sweep skipped"),
        }
    }
}
