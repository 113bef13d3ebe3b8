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
//! one place ([`report`]) and decides retries by [`rules`]; before routing it
//! asks the client's token bucket ([`limit`], when rate limiting is on).
//! [`Proxy`] is what they share: the configuration, the published backend
//! set, the counters ([`crate::stats`]), and the balancer's own pages, which
//! the balancer plugs in.

pub mod body;
pub mod client_ip;
pub mod driver;
pub mod error;
pub mod h1;
pub mod headers;
pub mod hyper_path;
pub mod limit;
pub mod report;
pub mod rules;
pub mod tunnel;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::backend::{Backend, Listed, Published, Snapshot};
use crate::config::BalancerConfig;
use crate::ring::{MAX_BACKENDS, key_hash};
use crate::select::Queue;
use crate::stats::Stats;
use crate::upstream::ConnPool;
use body::ProxyBody;
use client_ip::TrustedProxies;

/// An answer of the balancer's own pages, on its way.
pub type PageFuture = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// The balancer's own pages (`/lb`, `/health`, `/metrics`, the management
/// API, ...), answered for requests [`rules::is_own_endpoint`] names. A
/// trait object because outside code plugs in here: the balancer plugs its
/// status and admin rooms in, and the request path never imports them.
/// Asynchronous, and given the whole request, because the management API
/// reads JSON bodies and writes its state file.
pub trait Pages: Send + Sync + std::fmt::Debug + 'static {
    fn answer(&self, proxy: Arc<Proxy>, req: Request<Incoming>) -> PageFuture;
}

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
    /// Per-thread figures, the client table and the charts' ring.
    pub stats: Stats,
    /// Per-client token buckets (`RATE_LIMIT_RPS`), when configured.
    pub limiter: Option<limit::Limiter>,
    /// The open tunnels' clock and deadlines (both transports' tunnels).
    pub tunnels: tunnel::Tunnels,
    pages: Arc<dyn Pages>,
    /// Whether the last look found too few backends available (panic
    /// routing, logged once per episode).
    panicking: AtomicBool,
}

impl Proxy {
    pub fn new(config: BalancerConfig, pages: Arc<dyn Pages>) -> Proxy {
        let s = &config.strategy;
        Proxy {
            backends: Arc::new(Published::new(s.strategy, s.select)),
            trusted: TrustedProxies::new(config.trusted_proxies.clone()),
            totals: Totals::default(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            discovery: Mutex::new(DiscoveryState::default()),
            stats: Stats::new(config.ops.client_table_size),
            limiter: config.ops.rate_limit.map(limit::Limiter::new),
            tunnels: tunnel::Tunnels::new(&config.limits),
            pages,
            panicking: AtomicBool::new(false),
            config,
        }
    }

    /// Answers one of the balancer's own paths.
    pub fn page(self: &Arc<Self>, req: Request<Incoming>) -> PageFuture {
        self.pages.answer(Arc::clone(self), req)
    }

    /// The client key of a request from `peer` (the fast path never serves
    /// trusted proxies, so its key is the peer).
    pub fn key(&self, client: IpAddr) -> u64 {
        key_hash(client)
    }

    /// Publishes `listed` (discovery's set with the operator's overrides
    /// applied) as the backend set. Returns whether it changed. A backend
    /// whose name and address stay keeps its `Arc<Backend>` (state,
    /// counters, connections) and takes its new weight and flags; new ones
    /// trigger a health check.
    pub fn set_backends(&self, mut listed: Vec<Listed>) -> bool {
        listed.truncate(MAX_BACKENDS);
        let current = self.backends.load();
        let same = current.backends.len() == listed.len()
            && current
                .backends
                .iter()
                .zip(&listed)
                .all(|(b, l)| b.lists_as(l));
        if same {
            return false;
        }
        let limits = &self.config.limits;
        let mut added = Vec::new();
        let backends: Vec<Arc<Backend>> = listed
            .into_iter()
            .map(|l| {
                let e = &l.endpoint;
                if let Some(b) = current
                    .backends
                    .iter()
                    .find(|b| b.endpoint.name == e.name && b.endpoint.addr == e.addr)
                {
                    b.apply(&l);
                    return Arc::clone(b);
                }
                added.push(e.name.clone());
                let pool = ConnPool::new(
                    e.addr,
                    limits.pool_max_idle,
                    limits.pool_idle_timeout,
                    limits.connect_timeout,
                );
                Arc::new(Backend::listed(&l, pool))
            })
            .collect();
        let removed: Vec<&str> = current
            .backends
            .iter()
            .filter(|b| !backends.iter().any(|n| Arc::ptr_eq(n, b)))
            .map(|b| b.name())
            .collect();
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(
                backends = backends.len(),
                added = ?added,
                removed = ?removed,
                "backend set changed"
            );
        }
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
            if b.weight() > 0 && !b.is_disabled() && b.health.is_up() {
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

    /// Whether the driver takes `b` as a candidate: available, or (in
    /// panic routing, asked only when needed) passing its checks and
    /// neither drained nor disabled by an operator.
    #[inline]
    pub fn accepts(&self, b: &Backend, in_panic: impl FnOnce() -> bool) -> bool {
        self.available(b) || (b.health.is_up() && !b.is_disabled() && in_panic())
    }

    /// Whether the last look found the balancer in panic routing.
    pub fn is_panicking(&self) -> bool {
        self.panicking.load(Relaxed)
    }
}
