//! The workers a replica dispatches to: a snapshot of the registry,
//! re-read from the shared database every `WORKER_REFRESH_MS` and published
//! with `ArcSwap`, so the request path reads it without a lock.
//!
//! What a replica learns about a worker by itself (requests in flight, the
//! latency estimate, the breaker, pooled connections, the last minute's
//! dispatches) lives in a [`WorkerState`] kept across refreshes by worker
//! id. A service's [`Selector`] is rebuilt only when its set of online
//! workers or their weights change, so round-robin turns and smooth
//! weighted round-robin's state carry on between refreshes.
//!
//! Queue lengths for least-queue come from the heartbeats (`queueLength`,
//! shared through the database; applied when a newer heartbeat arrives) or,
//! when `WORKER_QUEUE_PATH` is set, from polling each online worker.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::Request;

use super::breaker::{Breaker, BreakerState};
use super::config::GatewayConfig;
use super::conn::Conns;
use crate::select::{Load, SelectOptions, Selector, Target};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::store::workers::{Worker, WorkerFilter};

/// What one replica knows about one worker; survives refreshes.
#[derive(Debug)]
pub struct WorkerState {
    pub id: i64,
    pub load: Load,
    pub breaker: Breaker,
    pub conns: Conns,
    /// Dispatches per second over the last minute (a ring of 60 seconds).
    minute: [(AtomicI64, AtomicU64); 60],
    /// The heartbeat whose queue length was applied last.
    heartbeat_seen: AtomicI64,
}

impl WorkerState {
    fn new(w: &Worker, config: &GatewayConfig) -> WorkerState {
        WorkerState {
            id: w.id,
            load: Load::default(),
            breaker: Breaker::new(config.breaker),
            conns: Conns::new(
                authority(&w.host, w.port),
                config.pool_max_idle,
                config.connect_timeout,
            ),
            minute: std::array::from_fn(|_| (AtomicI64::new(-1), AtomicU64::new(0))),
            heartbeat_seen: AtomicI64::new(i64::MIN),
        }
    }

    /// Counts one dispatch in this second.
    pub fn count_dispatch(&self) {
        let sec = unix_secs();
        let (stamp, count) = &self.minute[(sec % 60) as usize];
        if stamp.swap(sec, Relaxed) != sec {
            count.store(0, Relaxed);
        }
        count.fetch_add(1, Relaxed);
    }

    /// Dispatches in the last 60 seconds (approximate at second edges).
    pub fn last_minute(&self) -> u64 {
        let now = unix_secs();
        self.minute
            .iter()
            .filter(|(stamp, _)| now - stamp.load(Relaxed) < 60)
            .map(|(_, c)| c.load(Relaxed))
            .sum()
    }
}

fn unix_secs() -> i64 {
    crate::store::now_ms() / 1000
}

/// `host:port`, with brackets around an IPv6 address.
fn authority(host: &str, port: i64) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One online worker as a selection target.
#[derive(Debug, Clone)]
pub struct WorkerTarget {
    pub state: Arc<WorkerState>,
    pub name: String,
    key: String,
    weight: u32,
}

impl Target for WorkerTarget {
    /// The worker's id: stable across renames (the name is for people).
    #[allow(clippy::misnamed_getters)]
    fn name(&self) -> &str {
        &self.key
    }
    fn weight(&self) -> u32 {
        self.weight
    }
    fn load(&self) -> &Load {
        &self.state.load
    }
}

/// The online workers of one service type and their selector.
#[derive(Debug)]
pub struct Service {
    pub targets: Vec<WorkerTarget>,
    pub selector: Selector,
}

/// A registered worker as the status page shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub row: Worker,
    pub state: Arc<WorkerState>,
}

impl Listed {
    pub fn breaker(&self) -> BreakerState {
        self.state.breaker.state(Instant::now())
    }
}

/// One published view of the registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub services: HashMap<String, Arc<Service>>,
    /// Every registered service type, online or not (404 vs 503).
    pub known_types: HashSet<String>,
    pub workers: Vec<Listed>,
    /// Whether the last refresh reached the database.
    pub fresh: bool,
}

/// The published snapshot and what keeps it current.
#[derive(Debug)]
pub struct Pool {
    current: ArcSwap<Snapshot>,
}

impl Pool {
    pub fn new() -> Pool {
        Pool {
            current: ArcSwap::from_pointee(Snapshot::default()),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Re-reads the registry every `config.refresh` until `shutdown`.
    pub async fn refresh_loop(
        self: Arc<Self>,
        store: Store,
        config: GatewayConfig,
        shutdown: Shutdown,
    ) {
        let mut states: HashMap<i64, Arc<WorkerState>> = HashMap::new();
        let mut failing = false;
        let mut tick = tokio::time::interval(config.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            match store.list_workers(&WorkerFilter::default()).await {
                Ok(rows) => {
                    if failing {
                        tracing::info!("worker registry readable again");
                        failing = false;
                    }
                    let next = self.rebuild(rows, &mut states, &config);
                    self.current.store(Arc::new(next));
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the worker registry; dispatching to the last known workers");
                        failing = true;
                    }
                }
            }
        }
    }

    fn rebuild(
        &self,
        rows: Vec<Worker>,
        states: &mut HashMap<i64, Arc<WorkerState>>,
        config: &GatewayConfig,
    ) -> Snapshot {
        let old = self.snapshot();
        let mut by_type: HashMap<String, Vec<WorkerTarget>> = HashMap::new();
        let mut known_types = HashSet::new();
        let mut workers = Vec::with_capacity(rows.len());
        let mut live = HashSet::new();
        for row in rows {
            live.insert(row.id);
            let state = states
                .entry(row.id)
                .or_insert_with(|| Arc::new(WorkerState::new(&row, config)))
                .clone();
            if state.conns.authority() != authority(&row.host, row.port) {
                // Same id, new address (cannot happen with today's upsert
                // keyed by host:port, but a stale pool must never be used).
                let fresh = Arc::new(WorkerState::new(&row, config));
                states.insert(row.id, fresh.clone());
            }
            let state = states[&row.id].clone();
            if config.queue_path.is_none()
                && state.heartbeat_seen.swap(row.last_heartbeat, Relaxed) != row.last_heartbeat
                && let Some(q) = row.queue_length
            {
                state.load.set_queue(Some(u64::try_from(q).unwrap_or(0)));
            }
            known_types.insert(row.service_type.clone());
            if row.status == "online" {
                by_type
                    .entry(row.service_type.clone())
                    .or_default()
                    .push(WorkerTarget {
                        state: state.clone(),
                        name: row.name.clone(),
                        key: row.id.to_string(),
                        weight: u32::try_from(row.weight.max(0)).unwrap_or(1),
                    });
            }
            workers.push(Listed { row, state });
        }
        states.retain(|id, s| {
            let keep = live.contains(id);
            if !keep {
                s.conns.clear();
            }
            keep
        });
        let services = by_type
            .into_iter()
            .map(|(ty, targets)| {
                let same = old.services.get(&ty).filter(|svc| {
                    svc.targets.len() == targets.len()
                        && svc.targets.iter().zip(&targets).all(|(a, b)| {
                            a.state.id == b.state.id && a.weight == b.weight && a.name == b.name
                        })
                });
                let svc = match same {
                    Some(svc) => svc.clone(),
                    None => Arc::new(Service {
                        selector: Selector::new(
                            config.strategy,
                            SelectOptions::default(),
                            &targets,
                        ),
                        targets,
                    }),
                };
                (ty, svc)
            })
            .collect();
        Snapshot {
            services,
            known_types,
            workers,
            fresh: true,
        }
    }

    /// Polls `WORKER_QUEUE_PATH` on every online worker every
    /// `WORKER_QUEUE_POLL_MS` (only when the path is set).
    pub async fn queue_loop(self: Arc<Self>, config: GatewayConfig, shutdown: Shutdown) {
        let Some(path) = config.queue_path.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(config.queue_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let snap = self.snapshot();
            let mut polls = tokio::task::JoinSet::new();
            for svc in snap.services.values() {
                for t in &svc.targets {
                    let state = t.state.clone();
                    let path = path.clone();
                    let limit = config.queue_poll.max(Duration::from_millis(500));
                    polls.spawn(async move {
                        let q = tokio::time::timeout(limit, poll_queue(&state.conns, &path))
                            .await
                            .ok()
                            .flatten();
                        if q.is_none() {
                            tracing::debug!(worker_id = state.id, "queue poll failed");
                        }
                        state.load.set_queue(q);
                    });
                }
            }
            while polls.join_next().await.is_some() {}
        }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

/// `GET path` on the worker: ComfyUI's `{"queue_running":[..],
/// "queue_pending":[..]}` (both counted) or `{"queue": N}`.
async fn poll_queue(conns: &Conns, path: &str) -> Option<u64> {
    let mut sender = conns.get().await.ok()?;
    let req = Request::get(path)
        .header(hyper::header::HOST, conns.authority())
        .body(Either::Left(Full::new(Bytes::new())))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .ok()?
        .to_bytes();
    conns.put(sender);
    queue_length(&body)
}

/// The queue length a queue endpoint's JSON says.
pub fn queue_length(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if let Some(n) = v.get("queue").and_then(serde_json::Value::as_u64) {
        return Some(n);
    }
    let running = v.get("queue_running")?.as_array()?.len();
    let pending = v.get("queue_pending")?.as_array()?.len();
    Some((running + pending) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_shapes() {
        assert_eq!(
            queue_length(br#"{"queue_running":[[1,"a"]],"queue_pending":[[2,"b"],[3,"c"]]}"#),
            Some(3)
        );
        assert_eq!(queue_length(br#"{"queue": 4}"#), Some(4));
        assert_eq!(queue_length(br#"{"queue_running": 3}"#), None);
        assert_eq!(queue_length(b"<html>"), None);
    }

    #[test]
    fn ipv6_authority() {
        assert_eq!(authority("::1", 5001), "[::1]:5001");
        assert_eq!(authority("w1", 5001), "w1:5001");
    }
}
