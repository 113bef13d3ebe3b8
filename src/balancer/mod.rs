//! The balancer's wiring: shared state, the published backend snapshot, the
//! background loops and `run`.
//!
//! The request path reads one [`Pool`] snapshot through an `ArcSwap` (no lock,
//! no await while holding anything); discovery builds a new snapshot off the
//! hot path only when the set changed, reusing the `Arc<Backend>` of every
//! surviving endpoint so health and counters carry over, and swaps it in.

pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::backend::{Backend, Endpoint};
use crate::config::BalancerConfig;
use crate::discovery::Discovery;
use crate::proxy::{client_ip::TrustedProxies, h1};
use crate::ring::{MAX_BACKENDS, Ring};
use crate::server::{self, ServeOptions};
use crate::shutdown::Shutdown;
use crate::upstream::ConnPool;

/// An immutable backend set and its ring; indices of `ring` refer to `backends`.
#[derive(Debug)]
pub struct Pool {
    pub backends: Vec<Arc<Backend>>,
    pub ring: Ring,
}

impl Pool {
    fn build(backends: Vec<Arc<Backend>>) -> Pool {
        let weights: Vec<(&str, u32)> = backends
            .iter()
            .map(|b| (b.name(), b.endpoint.weight))
            .collect();
        let ring = Ring::build(&weights);
        Pool { backends, ring }
    }

    pub fn empty() -> Pool {
        Pool::build(Vec::new())
    }
}

/// What the last discovery refresh did, for the status page.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryState {
    pub last_refresh: Option<SystemTime>,
    pub ok: bool,
    pub message: String,
}

/// Request totals across all backends.
#[derive(Debug, Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    pub no_backend: AtomicU64,
}

/// Everything the balancer's tasks share.
#[derive(Debug)]
pub struct Balancer {
    pub config: BalancerConfig,
    pool: ArcSwap<Pool>,
    pub trusted: TrustedProxies,
    pub totals: Totals,
    pub started: Instant,
    pub started_at: SystemTime,
    pub discovery_mode: &'static str,
    discovery: Mutex<DiscoveryState>,
    /// Wakes the health loop for an immediate check (passive failure, new backend).
    pub health_wake: Notify,
    /// Idle timeout and drain for the fast path's keep-alive connections.
    pub idle: h1::IdleClock,
    /// Where the fast path's long-idle connections wait.
    pub parking: h1::ParkingLot,
}

impl Balancer {
    pub fn new(config: BalancerConfig) -> Balancer {
        Balancer {
            trusted: TrustedProxies::new(config.trusted_proxies.clone()),
            discovery_mode: config.discovery.mode(),
            idle: h1::IdleClock::new(config.limits.idle_timeout),
            parking: h1::ParkingLot::new(),
            config,
            pool: ArcSwap::from_pointee(Pool::empty()),
            totals: Totals::default(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            discovery: Mutex::new(DiscoveryState::default()),
            health_wake: Notify::new(),
        }
    }

    /// The current snapshot (cheap; hold it for one request at most).
    #[inline]
    pub fn pool(&self) -> arc_swap::Guard<Arc<Pool>> {
        self.pool.load()
    }

    /// Publishes `endpoints` as the backend set. Returns whether it changed.
    /// Surviving backends keep their state; new ones trigger a health check.
    pub fn set_backends(&self, mut endpoints: Vec<Endpoint>) -> bool {
        endpoints.truncate(MAX_BACKENDS);
        let current = self.pool.load();
        let same = current.backends.len() == endpoints.len()
            && current
                .backends
                .iter()
                .zip(&endpoints)
                .all(|(b, e)| b.endpoint == *e);
        if same {
            return false;
        }
        let limits = &self.config.limits;
        let mut added = Vec::new();
        let backends: Vec<Arc<Backend>> = endpoints
            .into_iter()
            .map(|e| {
                if let Some(b) = current.backends.iter().find(|b| b.endpoint == e) {
                    return Arc::clone(b);
                }
                added.push(e.name.clone());
                let pool = ConnPool::new(
                    e.addr,
                    limits.pool_max_idle,
                    limits.pool_idle_timeout,
                    limits.connect_timeout,
                );
                Arc::new(Backend::new(e, pool))
            })
            .collect();
        let removed: Vec<&str> = current
            .backends
            .iter()
            .filter(|b| !backends.iter().any(|n| Arc::ptr_eq(n, b)))
            .map(|b| b.name())
            .collect();
        tracing::info!(
            backends = backends.len(),
            added = ?added,
            removed = ?removed,
            "backend set changed"
        );
        self.pool.store(Arc::new(Pool::build(backends)));
        if !added.is_empty() {
            self.health_wake.notify_one();
        }
        true
    }

    pub fn discovery_state(&self) -> DiscoveryState {
        self.discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record_discovery(&self, ok: bool, message: String) {
        let mut d = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        *d = DiscoveryState {
            last_refresh: Some(SystemTime::now()),
            ok,
            message,
        };
    }

    /// A backend failed a proxied request: down at once, re-check soon.
    pub fn passive_failure(&self, backend: &Backend, why: &dyn std::fmt::Display) {
        backend.pool.clear();
        if backend.health.mark_down() {
            tracing::warn!(backend = %backend.name(), reason = %why, "backend down (request failed)");
        }
        self.health_wake.notify_one();
    }
}

/// The whole life of a balancer process, shared by the `balancer` binary and
/// the cluster launcher's child: parse `env`, serve until `shutdown`.
pub fn main_with(
    env: &crate::config::Env,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::process::ExitCode {
    server::main_with(
        "balancer",
        BalancerConfig::from_env(env),
        |c| (c.listen, server::Threads::PerCore(c.worker_threads)),
        |listener, config| run(listener, config, shutdown),
    )
}

/// Runs the balancer on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: BalancerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = Shutdown::from_future(shutdown);
    let discovery = Discovery::new(config.discovery.clone()).map_err(std::io::Error::other)?;
    let opts = ServeOptions {
        max_header_bytes: config.limits.max_header_bytes,
        idle_timeout: config.limits.idle_timeout,
        grace: config.shutdown_grace,
    };
    let state = Arc::new(Balancer::new(config));
    tracing::info!(
        listen = %listener.local_addr()?,
        discovery = discovery.mode(),
        "balancer starting"
    );

    // The first discovery completes before we accept, so the first request
    // already has a pool (a failure here is logged and retried by the loop).
    refresh(&state, &discovery).await;
    let bg = [
        tokio::spawn(discovery_loop(
            Arc::clone(&state),
            discovery,
            shutdown.clone(),
        )),
        tokio::spawn(crate::health::run(Arc::clone(&state), shutdown.clone())),
        tokio::spawn({
            let (state, shutdown) = (Arc::clone(&state), shutdown.clone());
            async move {
                state.idle.run(shutdown).await;
                state.parking.wake();
            }
        }),
    ];
    h1::ParkingLot::start(&state);

    let proxy_state = Arc::clone(&state);
    server::serve_with(
        listener,
        opts,
        move |_peer: SocketAddr| h1::Connection(Arc::clone(&proxy_state)),
        shutdown,
    )
    .await;
    for task in bg {
        task.abort();
    }
    tracing::info!("balancer stopped");
    Ok(())
}

/// One discovery refresh: publish a good answer, keep the last good set on a
/// bad one and say so once per failure streak.
async fn refresh(state: &Balancer, discovery: &Discovery) {
    match discovery.discover().await {
        Ok(set) if !set.is_empty() => {
            let n = set.len();
            state.set_backends(set);
            state.record_discovery(true, format!("{n} backends"));
        }
        Ok(_) => keep_last(state, "no backends found".to_owned()),
        Err(e) => keep_last(state, e.to_string()),
    }
}

fn keep_last(state: &Balancer, why: String) {
    let was_ok = {
        let d = state.discovery.lock().unwrap_or_else(|p| p.into_inner());
        d.ok || d.last_refresh.is_none()
    };
    let kept = state.pool().backends.len();
    if was_ok {
        tracing::warn!(error = %why, kept, "discovery failed, keeping the last good backend set");
    }
    state.record_discovery(false, format!("{why}; kept {kept} backends"));
}

async fn discovery_loop(state: Arc<Balancer>, discovery: Discovery, shutdown: Shutdown) {
    let Some(every) = discovery.refresh_interval() else {
        return;
    };
    // After a failure, retry sooner (but never spin): a floor of one second.
    let retry = (every / 4).max(Duration::from_secs(1)).min(every);
    loop {
        let wait = if state.discovery_state().ok {
            every
        } else {
            retry
        };
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(wait) => {}
        }
        refresh(&state, &discovery).await;
    }
}
