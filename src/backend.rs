//! A backend: what discovery found (`BackendSpec`, `Endpoint`), the live
//! object the balancer routes to (`Backend`, with its health, outlier
//! state, load and counters), and the published set of them (`Snapshot`,
//! `Published`).
//!
//! A `Backend` lives as long as discovery keeps returning its endpoint; when
//! the set is rebuilt, surviving endpoints keep their `Arc<Backend>`, so health
//! and counters carry across rebuilds without copying.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::health::HealthCell;
use crate::health::outlier::{Admit, Outlier, View};
use crate::select::{Load, SelectOptions, Selector, Strategy, Target};
use crate::stats::latency::BackendMetrics;
use crate::upstream::ConnPool;

/// One entry of `BACKEND_HOSTS`: `host:port`, optionally `=weight`
/// (`api-1:13004`, `10.0.0.7:13004=2`, `[fd00::7]:13004=0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// The weight given to a backend that names none.
pub const DEFAULT_WEIGHT: u32 = 1;
/// The largest weight accepted; keeps the ring table's fill bounded.
pub const MAX_WEIGHT: u32 = 100;

impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, weight) = match s.rsplit_once('=') {
            Some((addr, w)) => {
                let w: u32 = w
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?}: weight {w:?} is not a whole number"))?;
                if w > MAX_WEIGHT {
                    return Err(format!("{s:?}: weight must be 0..={MAX_WEIGHT}"));
                }
                (addr.trim(), w)
            }
            None => (s, DEFAULT_WEIGHT),
        };
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
            return Err(format!("{s:?}: bad host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: port must be 1..=65535"))?;
        Ok(BackendSpec {
            host: host.to_owned(),
            port,
            weight,
        })
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A resolved backend as discovery reports it.
///
/// `name` is what the hash ring places (the configured `host:port`, or the
/// resolved `ip:port` under DNS discovery): a property of the backend itself,
/// never its position in a list, so every balancer with the same set agrees.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

impl Endpoint {
    /// An endpoint named by its own socket address.
    pub fn from_addr(addr: SocketAddr, weight: u32) -> Self {
        Endpoint {
            name: addr.to_string(),
            addr,
            weight,
        }
    }
}

/// Where a backend comes from: discovery, or an operator's `add` at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Discovered,
    Added,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Discovered => "discovered",
            Source::Added => "added",
        }
    }
}

/// A backend as the published set lists it: discovery's endpoint with the
/// operator's overrides applied (see [`crate::admin`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub endpoint: Endpoint,
    /// The weight in effect (an override's, else the endpoint's).
    pub weight: u32,
    /// No new requests (in-flight ones and open tunnels finish).
    pub disabled: bool,
    pub source: Source,
}

impl Listed {
    /// A discovered endpoint with no override.
    pub fn discovered(endpoint: Endpoint) -> Self {
        Listed {
            weight: endpoint.weight,
            endpoint,
            disabled: false,
            source: Source::Discovered,
        }
    }
}

/// What an operator may change on a live backend without replacing it
/// (its counters, health and connections stay): read on every request,
/// so atomics.
#[derive(Debug)]
struct Controls {
    weight: AtomicU32,
    disabled: AtomicBool,
    source: AtomicU8,
}

/// Request counters of one backend, updated lock-free on the request path
/// (what is in flight is in its [`Load`]).
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Requests sent to this backend since it appeared.
    pub total: AtomicU64,
    /// Requests that failed here (connect error, reset, timeout, bad answer,
    /// a 502/503/504 of its own).
    pub errors: AtomicU64,
    /// Client connections whose latest request went here.
    pub clients: AtomicI64,
    /// `Upgrade` tunnels (WebSocket and the like) open to this backend.
    pub tunnels: AtomicI64,
}

/// A live backend: address, health (active checks and outlier detection),
/// load, counters and its pool of keep-alive connections.
#[derive(Debug)]
pub struct Backend {
    /// What discovery (or the operator's `add`) said: name, address and
    /// the configured weight.
    pub endpoint: Endpoint,
    pub health: HealthCell,
    pub outlier: Outlier,
    pub load: Load,
    pub stats: BackendStats,
    /// Answers by class, failures by kind, latency (per worker thread).
    pub metrics: BackendMetrics,
    pub pool: ConnPool,
    controls: Controls,
}

impl Backend {
    pub fn new(endpoint: Endpoint, pool: ConnPool) -> Self {
        let listed = Listed::discovered(endpoint);
        Backend::listed(&listed, pool)
    }

    /// A backend as `listed` says (weight, disabled, source).
    pub fn listed(listed: &Listed, pool: ConnPool) -> Self {
        let b = Backend {
            endpoint: listed.endpoint.clone(),
            health: HealthCell::default(),
            outlier: Outlier::default(),
            load: Load::default(),
            stats: BackendStats::default(),
            metrics: BackendMetrics::default(),
            pool,
            controls: Controls {
                weight: AtomicU32::new(0),
                disabled: AtomicBool::new(false),
                source: AtomicU8::new(0),
            },
        };
        b.apply(listed);
        b
    }

    /// Takes the weight, disabled flag and source of `listed`.
    pub fn apply(&self, listed: &Listed) {
        self.controls.weight.store(listed.weight, Relaxed);
        self.controls.disabled.store(listed.disabled, Relaxed);
        self.controls
            .source
            .store(u8::from(listed.source == Source::Added), Relaxed);
    }

    /// Whether it lists as `listed` (so a rebuild may keep it as it is).
    pub fn lists_as(&self, listed: &Listed) -> bool {
        self.endpoint.name == listed.endpoint.name
            && self.endpoint.addr == listed.endpoint.addr
            && self.weight() == listed.weight
            && self.is_disabled() == listed.disabled
            && self.source() == listed.source
    }

    /// The weight in effect (0: draining).
    #[inline]
    pub fn weight(&self) -> u32 {
        self.controls.weight.load(Relaxed)
    }

    /// Disabled by an operator: no new requests.
    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.controls.disabled.load(Relaxed)
    }

    pub fn source(&self) -> Source {
        if self.controls.source.load(Relaxed) == 1 {
            Source::Added
        } else {
            Source::Discovered
        }
    }

    /// Weight 0 and nothing in flight any more: safe to stop.
    pub fn is_drained(&self) -> bool {
        self.weight() == 0 && self.load.in_flight() == 0
    }

    pub fn name(&self) -> &str {
        &self.endpoint.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// May take new requests: weight above 0, not disabled, up by its
    /// checks, and not ejected by outlier detection (a half-open backend is
    /// available: the request path then lets one request through).
    #[inline]
    pub fn is_available(&self) -> bool {
        self.weight() > 0
            && !self.is_disabled()
            && self.health.is_up()
            && self.outlier.admit() != Admit::No
    }

    /// What the status pages call its state.
    pub fn state(&self) -> State {
        if self.is_disabled() {
            return State::Disabled;
        }
        if !self.health.is_up() {
            return State::Down;
        }
        match self.outlier.view() {
            View::Ejected { .. } => State::Ejected,
            View::HalfOpen { .. } => State::HalfOpen,
            View::Healthy => self.healthy_state(),
        }
    }

    fn healthy_state(&self) -> State {
        if self.weight() == 0 {
            State::Draining
        } else {
            State::Up
        }
    }

    /// [`Backend::state`] from atomics only (no lock the request path
    /// takes): what a `/metrics` scrape reads.
    pub fn state_now(&self) -> State {
        use crate::health::outlier::Phase;
        if self.is_disabled() {
            return State::Disabled;
        }
        if !self.health.is_up() {
            return State::Down;
        }
        match self.outlier.phase() {
            Phase::Ejected => State::Ejected,
            Phase::HalfOpen => State::HalfOpen,
            Phase::Healthy => self.healthy_state(),
        }
    }
}

/// A backend's state as the status pages show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    /// Failing its active health checks.
    Down,
    /// Taken out by outlier detection until a time.
    Ejected,
    /// Its ejection ran out: one request or check decides.
    HalfOpen,
    /// Weight 0: no new clients, still checked (drained once nothing is
    /// in flight, see [`Backend::is_drained`]).
    Draining,
    /// Disabled by an operator: no new requests, still checked.
    Disabled,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Up,
        State::Down,
        State::Ejected,
        State::HalfOpen,
        State::Draining,
        State::Disabled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Ejected => "ejected",
            State::HalfOpen => "half-open",
            State::Draining => "draining",
            State::Disabled => "disabled",
        }
    }
}

impl Target for Backend {
    fn name(&self) -> &str {
        &self.endpoint.name
    }
    fn weight(&self) -> u32 {
        Backend::weight(self)
    }
    fn placement_weight(&self) -> u32 {
        // Drained by an operator (an override of 0 over a configured
        // weight): keeps its place on the ring. A backend configured with
        // weight 0 has none.
        match Backend::weight(self) {
            0 if self.source() == Source::Discovered => self.endpoint.weight,
            w => w,
        }
    }
    fn load(&self) -> &Load {
        &self.load
    }
}

/// An immutable backend set and its strategy's state; indices the
/// selector yields refer to `backends`.
#[derive(Debug)]
pub struct Snapshot {
    pub backends: Vec<Arc<Backend>>,
    pub selector: Selector,
}

impl Snapshot {
    pub fn build(backends: Vec<Arc<Backend>>, strategy: Strategy, opts: SelectOptions) -> Self {
        let selector = Selector::new(strategy, opts, &backends);
        Snapshot { backends, selector }
    }
}

/// The published backend set: read on every request without a lock,
/// replaced as a whole when discovery finds a different set (PLB's
/// ArcSwap); and the bell that wakes the health loop for an immediate
/// round (a new backend, a refused connection).
#[derive(Debug)]
pub struct Published {
    current: ArcSwap<Snapshot>,
    pub wake: Notify,
}

impl Published {
    pub fn new(strategy: Strategy, opts: SelectOptions) -> Self {
        Published {
            current: ArcSwap::from_pointee(Snapshot::build(Vec::new(), strategy, opts)),
            wake: Notify::new(),
        }
    }

    /// The current snapshot (cheap; hold it for one request at most).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

/// The backend a client connection's latest request went to, behind the
/// per-backend "clients connected" gauge. The mutex is held for a pointer
/// compare, never across an await.
#[derive(Debug, Default)]
pub struct Pinned(Mutex<Option<Arc<Backend>>>);

impl Pinned {
    /// The pinned backend, its gauge count handed over with it (a parked
    /// connection keeps counting as connected).
    pub fn into_backend(mut self) -> Option<Arc<Backend>> {
        self.0.get_mut().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Takes back what [`Pinned::into_backend`] handed over.
    pub fn from_backend(backend: Option<Arc<Backend>>) -> Pinned {
        Pinned(Mutex::new(backend))
    }

    pub fn repin(&self, backend: &Arc<Backend>) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|b| Arc::ptr_eq(b, backend)) {
            return;
        }
        backend.stats.clients.fetch_add(1, Relaxed);
        if let Some(old) = slot.replace(Arc::clone(backend)) {
            old.stats.clients.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(b) = self.0.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            b.stats.clients.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_hosts_ports_and_weights() {
        let s: BackendSpec = "api-1:13004".parse().unwrap();
        assert_eq!((s.host.as_str(), s.port, s.weight), ("api-1", 13004, 1));
        let s: BackendSpec = "10.0.0.7:13004=2".parse().unwrap();
        assert_eq!((s.host.as_str(), s.port, s.weight), ("10.0.0.7", 13004, 2));
        let s: BackendSpec = "[fd00::7]:13004=0".parse().unwrap();
        assert_eq!((s.host.as_str(), s.port, s.weight), ("fd00::7", 13004, 0));
        assert_eq!(s.to_string(), "[fd00::7]:13004");
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "api-1",
            ":13004",
            "api:0",
            "api:70000",
            "api:13004=-1",
            "api:13004=101",
            "a b:1",
        ] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad} must be refused");
        }
    }
}
