//! The checking loop: every backend probed concurrently each interval, and at
//! once when something rings the bell (a new backend, a refused
//! connection). Each result feeds the backend's rise/fall machine and its
//! outlier state (a pass can end a half-open or connection-caused ejection;
//! see [`super::outlier`]). A probe this process could not make (no file
//! descriptor left: [`Failure::Local`]) records nothing: local pressure
//! never takes a backend down.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;

use super::probe::{Failure, probe};
use super::{Flip, LastCheck};
use crate::backend::Published;
use crate::config::{HealthConfig, OutlierConfig};
use crate::shutdown::Shutdown;

/// After a wake-up, the soonest the next extra round may run: a flood of
/// passive failures must not become a flood of probes.
const MIN_GAP: Duration = Duration::from_millis(250);

/// While a backend is down it is probed this often (like HAProxy's
/// `downinter`), so a recovered backend gets its clients back within a few
/// seconds rather than `rise` full intervals.
fn down_interval(interval: Duration) -> Duration {
    (interval / 10).clamp(Duration::from_secs(1), interval)
}

pub async fn run(
    backends: Arc<Published>,
    cfg: HealthConfig,
    outlier: OutlierConfig,
    shutdown: Shutdown,
) {
    // Whether the last round had probes it could not make (one warning per
    // such episode, one line when it ends).
    let mut short = false;
    loop {
        let skipped = round(&backends, &cfg, &outlier).await;
        match (skipped, short) {
            (0, true) => tracing::info!("health checks run again"),
            (n, false) if n > 0 => tracing::warn!(
                skipped = n,
                "health checks skipped: this process is short of file descriptors; backends keep their state"
            ),
            _ => {}
        }
        short = skipped > 0;
        let any_down = backends
            .load()
            .backends
            .iter()
            .any(|b| !b.health.is_up() || b.outlier.is_out());
        let wait = if any_down {
            down_interval(cfg.interval)
        } else {
            cfg.interval
        };
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(wait) => {}
            () = backends.wake.notified() => {
                tokio::time::sleep(MIN_GAP).await;
            }
        }
    }
}

/// Probes every backend of the current snapshot concurrently and records the
/// results; logs one line per state change. Returns how many probes could
/// not be made for want of local resources (nothing is recorded for them).
async fn round(backends: &Published, cfg: &HealthConfig, outlier: &OutlierConfig) -> usize {
    let mut skipped = 0;
    let snapshot = backends.load();
    let mut probes = JoinSet::new();
    for backend in snapshot.backends.iter().map(Arc::clone) {
        let (path, timeout) = (cfg.path.clone(), cfg.timeout);
        probes.spawn(async move {
            let result = probe(backend.addr(), backend.name(), &path, timeout).await;
            (backend, result)
        });
    }
    drop(snapshot);
    while let Some(joined) = probes.join_next().await {
        let Ok((backend, result)) = joined else {
            continue;
        };
        let result = match result {
            Err(Failure::Local(why)) => {
                tracing::debug!(backend = %backend.name(), error = %why, "health check not made");
                skipped += 1;
                continue;
            }
            Err(Failure::Backend(why)) => Err(why),
            Ok(latency) => Ok(latency),
        };
        let check = LastCheck {
            at: Some(SystemTime::now()),
            latency: result.as_ref().ok().copied(),
            error: result.err(),
        };
        let error = check.error.clone();
        let ok = error.is_none();
        match backend.health.record(check, cfg.rise, cfg.fall) {
            Some(Flip::Up) => tracing::info!(backend = %backend.name(), "backend up"),
            Some(flip) => {
                backend.pool.clear();
                let reason = error.as_deref().unwrap_or("");
                if flip == Flip::NotReady {
                    tracing::info!(backend = %backend.name(), reason, "backend not ready yet");
                } else {
                    tracing::warn!(backend = %backend.name(), reason, "backend down");
                }
            }
            None => tracing::debug!(backend = %backend.name(), error = ?error, "health check"),
        }
        if let Some(change) = backend.outlier.check(ok, outlier) {
            let why = if ok {
                "health check passed"
            } else {
                "health check failed"
            };
            change.log(backend.name(), why);
        }
    }
    skipped
}
