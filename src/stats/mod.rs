//! The balancer's figures: what `/lb/stats`, `/metrics`, `/lb/clients` and
//! the `/lb` charts read.
//!
//! Everything the request path writes is per worker thread ([`shard`]:
//! Envoy's per-worker counters) and summed when read, so a scrape locks
//! nothing a request takes and a request never writes a cache line another
//! worker writes. Per backend ([`latency::BackendMetrics`], in each
//! [`Backend`](crate::backend::Backend)): answers by status class,
//! failures by kind, the latency histogram and the percentile window. Here:
//! the balancer-wide figures, the client table ([`clients`]) and the
//! charts' ring ([`history`]), which only the control plane writes.

pub mod clients;
pub mod history;
pub mod latency;
pub mod shard;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};

pub use latency::{BackendMetrics, FailureKind, Percentiles};
pub use shard::Counter;

/// Balancer-wide figures.
#[derive(Debug)]
pub struct Stats {
    pub clients: clients::ClientTable,
    /// Requests answered 429 by the rate limiter.
    pub rate_limited: Counter,
    /// Client connections open now (kept by the accept loop).
    pub connections: Arc<AtomicUsize>,
    /// `Upgrade` tunnels open now.
    pub tunnels: AtomicI64,
    /// Discovery refreshes that published a set, and those that failed
    /// (the last good set kept).
    pub discovery_ok: AtomicU64,
    pub discovery_failed: AtomicU64,
    pub history: history::History,
}

impl Stats {
    pub fn new(client_table_size: usize) -> Self {
        Stats {
            clients: clients::ClientTable::new(client_table_size),
            rate_limited: Counter::default(),
            connections: Arc::new(AtomicUsize::new(0)),
            tunnels: AtomicI64::new(0),
            discovery_ok: AtomicU64::new(0),
            discovery_failed: AtomicU64::new(0),
            history: history::History::default(),
        }
    }

    pub fn tunnels_open(&self) -> u64 {
        self.tunnels.load(Relaxed).max(0) as u64
    }
}
