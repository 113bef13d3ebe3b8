//! The gateway: API replicas as masters of pools of workers.
//!
//! A client sends `POST /api/v1/render` with `Authorization: Bearer <key>`
//! to any replica (through the balancer); the replica checks the key,
//! picks an online `render` worker by `GATEWAY_STRATEGY`, forwards the
//! request, retries elsewhere when that is safe, and streams the answer
//! back, recording a usage row for billing and per-minute statistics.
//! Every bit of shared state is in the database (the registry, keys, usage);
//! what a replica learns by itself (in-flight counts, latency, breakers)
//! stays in that replica.
//!
//! - [`config`]: `GATEWAY_*`, `DISPATCH_*`, `BREAKER_*`, `USAGE_*`, `KEY_*`.
//! - [`keys`]: key format, digest, the cached check (revocation within 2 s).
//! - [`pool`]: the published snapshot of online workers and their per-replica state.
//! - [`conn`]: keep-alive connections to one worker; the upload body.
//! - [`breaker`]: the per-worker circuit breaker (a pure state machine).
//! - [`dispatch`]: one request, from key check to answer; the retry rule.
//! - [`body`]: the streamed response that writes its usage row before its last bytes.
//! - [`meter`]: usage rows (group commit, buffering through outages) and aggregates.
//!
//! How load figures combine across replicas: the selection strategies
//! ([`crate::select`]) read a worker's [`crate::select::Load`] in *this*
//! replica. In-flight requests (least-connections, the in-flight factor of
//! least-time) are this replica's own, exact and current; with N replicas
//! each balancing its own share of the traffic, the workers' totals even
//! out as well. Queue lengths (least-queue) are shared: a worker reports its
//! whole queue, whoever sent the jobs, in its heartbeat (through the
//! database, at most one heartbeat interval old) or through
//! `WORKER_QUEUE_PATH` (polled by each replica every `WORKER_QUEUE_POLL_MS`);
//! each replica adds the requests it sent since that figure arrived, so a
//! burst from one replica is seen by it at once and by the others at the
//! next report.

pub mod body;
pub mod breaker;
pub mod config;
pub mod conn;
pub mod dispatch;
pub mod keys;
pub mod meter;
pub mod pool;

use std::sync::Arc;

pub use config::GatewayConfig;

use crate::shutdown::Shutdown;
use crate::store::Store;

/// A replica's gateway: configuration, worker snapshot, key cache, meter.
#[derive(Debug)]
pub struct Gateway {
    pub config: GatewayConfig,
    pub pool: Arc<pool::Pool>,
    pub keys: keys::KeyCache,
    pub meter: Arc<meter::Meter>,
    /// This replica's id, written into each usage row.
    pub instance: String,
}

impl Gateway {
    pub fn new(config: GatewayConfig, instance: String) -> Gateway {
        Gateway {
            keys: keys::KeyCache::new(config.key_cache, config.key_stale),
            meter: Arc::new(meter::Meter::new(&config)),
            pool: Arc::new(pool::Pool::new()),
            config,
            instance,
        }
    }

    /// Starts the registry refresh and the queue poller; they stop with
    /// `shutdown`.
    pub fn start_discovery(&self, store: &Store, shutdown: &Shutdown) {
        tokio::spawn(self.pool.clone().refresh_loop(
            store.clone(),
            self.config.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(
            self.pool
                .clone()
                .queue_loop(self.config.clone(), shutdown.clone()),
        );
    }

    /// Starts the meter's writers. `closed` should fire once no request can
    /// record anything any more (after the server has drained); await the
    /// handle to know every row has been written or given up on.
    pub fn start_metering(&self, store: &Store, closed: &Shutdown) -> tokio::task::JoinHandle<()> {
        let meter = self.meter.clone();
        let (store, closed) = (store.clone(), closed.clone());
        tokio::spawn(async move {
            let aggregates =
                tokio::spawn(meter.clone().aggregate_loop(store.clone(), closed.clone()));
            meter.flush_loop(store, closed).await;
            let _ = aggregates.await;
        })
    }
}
