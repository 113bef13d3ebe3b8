//! The request path: key -> candidates -> attempt -> outcome -> retry ->
//! answer, the same on both transports.
//!
//! ```text
//!  h1 (fast path) ─┐                      ┌─► select (strategy: candidates)
//!                  ├─► driver ── rules ───┤
//!  hyper_path ─────┘     │                └─► report (load, outlier, health wake)
//!                        ▼
//!                 upstream (pooled connections) ──► backend
//! ```
//!
//! The HTTP/1.1 fast path ([`h1`]) serves the common request itself; every
//! other connection is handed to hyper ([`hyper_path`]). Both hand each
//! request to the one [`driver`], which walks the strategy's candidates,
//! asks the transport for one attempt at a time, reports every outcome in
//! one place ([`report`]) and decides retries by [`rules`]. [`Proxy`] is what
//! they share: the configuration, the published backend set, the counters,
//! and the balancer's own pages, which the balancer plugs in.

pub mod body;
pub mod client_ip;
pub mod driver;
pub mod error;
pub mod h1;
pub mod headers;
pub mod hyper_path;
pub mod report;
pub mod rules;
pub mod tunnel;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::backend::{Backend, Endpoint, Published, Snapshot};
use crate::config::BalancerConfig;
use crate::ring::{MAX_BACKENDS, key_hash};
use crate::select::Queue;
use crate::upstream::ConnPool;
use body::ProxyBody;
use client_ip::TrustedProxies;

/// The balancer's own pages (`/lb`, `/health`, ...), answered for requests
/// [`rules::is_own_endpoint`] names. A plain function: the balancer plugs
/// its status module in, and the request path never imports the balancer.
pub type Pages = fn(&Proxy, &Request<Incoming>) -> Response<ProxyBody>;

/// Request totals across all backends.
#[derive(Debug, Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    /// Keep-alive client connections idle in the fast path's parking lot
    /// (kept by the lot).
    pub parked: Arc<AtomicUsize>,
}

/// What the last discovery refresh did, for the status page.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryState {
    pub last_refresh: Option<SystemTime>,
    pub ok: bool,
    pub message: String,
}

/// Everything the request path shares.
#[derive(Debug)]
pub struct Proxy {
    pub config: BalancerConfig,
    pub backends: Arc<Published>,
    pub trusted: TrustedProxies,
    pub totals: Totals,
    pub started: Instant,
    pub started_at: SystemTime,
    /// What the last discovery refresh did (written by the balancer's
    /// discovery loop, shown by its pages).
    pub discovery: Mutex<DiscoveryState>,
    /// The open tunnels' clock and deadlines (both transports' tunnels).
    pub tunnels: tunnel::Tunnels,
    pages: Pages,
    /// Whether the last look found too few backends available (panic
    /// routing, logged once per episode).
    panicking: AtomicBool,
}

impl Proxy {
    pub fn new(config: BalancerConfig, pages: Pages) -> Proxy {
        let s = &config.strategy;
        Proxy {
            backends: Arc::new(Published::new(s.strategy, s.select)),
            trusted: TrustedProxies::new(config.trusted_proxies.clone()),
            totals: Totals::default(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            discovery: Mutex::new(DiscoveryState::default()),
            tunnels: tunnel::Tunnels::new(&config.limits),
            pages,
            panicking: AtomicBool::new(false),
            config,
        }
    }

    /// Answers one of the balancer's own paths.
    pub fn page(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        (self.pages)(self, req)
    }

    /// The client key of a request from `peer` (the fast path never serves
    /// trusted proxies, so its key is the peer).
    pub fn key(&self, client: IpAddr) -> u64 {
        key_hash(client)
    }

    /// Publishes `endpoints` as the backend set. Returns whether it changed.
    /// Surviving backends keep their state; new ones trigger a health check.
    pub fn set_backends(&self, mut endpoints: Vec<Endpoint>) -> bool {
        endpoints.truncate(MAX_BACKENDS);
        let current = self.backends.load();
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
        let s = &self.config.strategy;
        self.backends
            .store(Snapshot::build(backends, s.strategy, s.select));
        if !added.is_empty() {
            self.backends.wake.notify_one();
        }
        true
    }

    /// Whether `backend` may take a new request from the strategy's point
    /// of view (least-queue also needs an answering queue endpoint).
    #[inline]
    pub fn available(&self, backend: &Backend) -> bool {
        backend.is_available()
            && (self.config.strategy.strategy != crate::select::Strategy::LeastQueue
                || backend.load.queue() != Queue::Failed)
    }

    /// Whether fewer than `PANIC_THRESHOLD_PERCENT` of the backends that pass
    /// their active checks are available (the rest ejected by outlier
    /// detection, or out of least-queue's rotation): then requests go to
    /// all of those that pass their checks (Envoy's panic routing: when most
    /// of the set looks bad, the inference is more likely wrong than the
    /// backends, and a few survivors would be crushed). A backend failing
    /// its own health check is never chosen, so with none passing, the
    /// answer stays 503. Logged once when it starts and once when it ends.
    pub fn panic_mode(&self, snapshot: &Snapshot) -> bool {
        let threshold = u64::from(self.config.outlier.panic_threshold_percent);
        let (mut checked, mut available) = (0u64, 0u64);
        for b in &snapshot.backends {
            if b.endpoint.weight > 0 && b.health.is_up() {
                checked += 1;
                available += u64::from(self.available(b));
            }
        }
        let panic = checked > 0 && available * 100 < threshold * checked;
        if self.panicking.swap(panic, Relaxed) != panic {
            if panic {
                tracing::warn!(
                    available,
                    passing_checks = checked,
                    threshold_percent = threshold,
                    "panic routing: too few backends available, sending requests to every backend that passes its checks"
                );
            } else {
                tracing::info!(available, passing_checks = checked, "panic routing over");
            }
        }
        panic
    }

    /// Whether the last look found the balancer in panic routing.
    pub fn is_panicking(&self) -> bool {
        self.panicking.load(Relaxed)
    }
}
