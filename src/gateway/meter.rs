//! Metering: a `usage_log` row per dispatched request, per-minute
//! `worker_stats` and the workers' running totals.
//!
//! # When a row is durable
//!
//! Rows go through one channel to one flusher task, which writes whatever
//! has queued as a single multi-row insert (group commit: at 3,000 requests
//! a second that is a few dozen rows per statement, not 3,000 statements).
//! While the database is healthy a response's last bytes are held back
//! until its row is committed (at most `USAGE_SYNC_TIMEOUT_MS`), so a
//! replica killed *between* requests has nothing unwritten: every request
//! whose answer the client has seen in full is in the table.
//!
//! While the database is unreachable, rows wait in memory and the flusher
//! retries with back-off; responses are not held back (the client is
//! served, the row is written when the database returns). When rows have
//! waited `USAGE_BUFFER_SECS`, or `USAGE_BUFFER_MAX_ROWS` are waiting, the
//! replica answers new dispatches 503 instead of serving requests it could
//! not bill; the waiting rows are kept. On a graceful stop the flusher
//! keeps trying for up to `USAGE_BUFFER_SECS` after the last request.
//!
//! The crash window: rows buffered during a database outage (and any row
//! whose commit took longer than `USAGE_SYNC_TIMEOUT_MS`) are lost if the
//! replica is killed (SIGKILL, OOM, power) before the database returns.
//! One more, narrow: an answer with an empty body is complete once its head
//! is sent, so there is nothing to hold back and its row commits a moment
//! after the client has it. A
//! graceful stop loses them only if the database stays away for the whole
//! `USAGE_BUFFER_SECS`, and then says how many in the log.
//!
//! The aggregates (`worker_stats`, totals, keys' `last_used_at`) are summed
//! in memory and written every second, each worker's increments in one
//! transaction with a random token (a failed write is retried as it is, and
//! the token, written in the same transaction, makes a retry of a batch that
//! did commit, its acknowledgement lost, add nothing); a kill loses at most
//! that second of them, never a usage row.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::config::GatewayConfig;
use crate::shutdown::Shutdown;
use crate::store::usage::{MAX_BATCH, StatsDelta, UsageRow, new_key};
use crate::store::{Store, now_ms};

struct Pending {
    row: UsageRow,
    ack: Option<oneshot::Sender<()>>,
}

/// Requests counted per key on this replica (status page: names and
/// prefixes only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    pub name: String,
    pub prefix: String,
    pub requests: u64,
}

#[derive(Debug, Default)]
struct Aggregates {
    stats: HashMap<(i64, i64), StatsDelta>,
    /// Batches whose write failed, retried as they are, token included,
    /// so one that did commit is not counted twice.
    retry: Vec<StatsDelta>,
    key_used: HashMap<i64, i64>,
}

impl Aggregates {
    /// Sums `d` into its worker-minute's increments not yet written.
    fn add(&mut self, d: StatsDelta) {
        let e = self
            .stats
            .entry((d.worker_id, d.interval_start))
            .or_insert_with(|| StatsDelta {
                worker_id: d.worker_id,
                interval_start: d.interval_start,
                ..StatsDelta::default()
            });
        e.requests += d.requests;
        e.successes += d.successes;
        e.failures += d.failures;
        e.total_ms = e.total_ms.saturating_add(d.total_ms);
    }
}

/// How long a stats batch's token is remembered.
const STATS_TOKENS_KEPT: Duration = Duration::from_secs(24 * 3600);

/// The replica's meter; share it in an `Arc`.
pub struct Meter {
    tx: mpsc::UnboundedSender<Pending>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
    healthy: AtomicBool,
    /// Rows not yet committed (queued or being written).
    backlog: AtomicUsize,
    /// `ended_at` of the oldest uncommitted row while the database fails
    /// (`i64::MAX` when none).
    oldest_waiting: AtomicI64,
    aggregates: Mutex<Aggregates>,
    per_key: Mutex<HashMap<i64, KeyCount>>,
    sync_timeout: Duration,
    buffer_for: Duration,
    max_rows: usize,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("healthy", &self.healthy.load(Relaxed))
            .field("backlog", &self.backlog.load(Relaxed))
            .finish()
    }
}

impl Meter {
    pub fn new(config: &GatewayConfig) -> Meter {
        let (tx, rx) = mpsc::unbounded_channel();
        Meter {
            tx,
            rx: Mutex::new(Some(rx)),
            healthy: AtomicBool::new(true),
            backlog: AtomicUsize::new(0),
            oldest_waiting: AtomicI64::new(i64::MAX),
            aggregates: Mutex::new(Aggregates::default()),
            per_key: Mutex::new(HashMap::new()),
            sync_timeout: config.usage_sync_timeout,
            buffer_for: config.usage_buffer,
            max_rows: config.usage_max_rows,
        }
    }

    /// Whether new dispatches may be served: `Err` says why not.
    pub fn accepting(&self) -> Result<(), &'static str> {
        if self.backlog.load(Relaxed) >= self.max_rows {
            return Err("usage metering is behind (database unreachable); try again later");
        }
        let oldest = self.oldest_waiting.load(Relaxed);
        let limit = i64::try_from(self.buffer_for.as_millis()).unwrap_or(i64::MAX);
        if oldest != i64::MAX && now_ms().saturating_sub(oldest) >= limit {
            return Err("usage metering is behind (database unreachable); try again later");
        }
        Ok(())
    }

    pub fn backlog(&self) -> usize {
        self.backlog.load(Relaxed)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Counts a request for `name`/`prefix` on the status page.
    pub fn count_key(&self, key_id: i64, name: &str, prefix: &str) {
        let mut per_key = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
        per_key
            .entry(key_id)
            .or_insert_with(|| KeyCount {
                name: name.to_owned(),
                prefix: prefix.to_owned(),
                requests: 0,
            })
            .requests += 1;
    }

    pub fn key_counts(&self) -> Vec<KeyCount> {
        let per_key = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<KeyCount> = per_key.values().cloned().collect();
        v.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.name.cmp(&b.name)));
        v
    }

    /// Adds one try on a worker to the minute's statistics.
    pub fn worker_try(&self, worker_id: i64, ok: bool, elapsed: Duration) {
        let now = now_ms();
        let minute = now - now.rem_euclid(60_000);
        let mut agg = self.aggregates.lock().unwrap_or_else(|p| p.into_inner());
        agg.add(StatsDelta {
            worker_id,
            interval_start: minute,
            requests: 1,
            successes: i64::from(ok),
            failures: i64::from(!ok),
            total_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            token: String::new(),
        });
    }

    /// Queues a row. The returned future resolves once the row is committed,
    /// at once while the database is failing, and after
    /// `USAGE_SYNC_TIMEOUT_MS` at most.
    pub fn record(&self, row: UsageRow) -> Synced {
        {
            let mut agg = self.aggregates.lock().unwrap_or_else(|p| p.into_inner());
            let used = agg.key_used.entry(row.key_id).or_insert(0);
            *used = (*used).max(row.ended_at);
        }
        let wait = self.healthy.load(Relaxed) && !self.sync_timeout.is_zero();
        let (ack, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.backlog.fetch_add(1, Relaxed);
        if self.tx.send(Pending { row, ack }).is_err() {
            // The flusher is gone (the process is stopping and gave up).
            self.backlog.fetch_sub(1, Relaxed);
            tracing::error!("usage row dropped: the meter has stopped");
        }
        Synced {
            rx,
            limit: self.sync_timeout,
        }
    }

    /// Writes usage rows until `shutdown`, then until everything queued is
    /// written or `USAGE_BUFFER_SECS` have passed.
    pub async fn flush_loop(self: Arc<Self>, store: Store, shutdown: Shutdown) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let mut buffer: Vec<Pending> = Vec::new();
        let mut backoff = Duration::from_millis(100);
        let mut outage_since: Option<Instant> = None;
        let mut closing_since: Option<Instant> = None;
        loop {
            if buffer.is_empty() {
                if closing_since.is_some() {
                    match rx.try_recv() {
                        Ok(p) => buffer.push(p),
                        Err(_) => break,
                    }
                } else {
                    tokio::select! {
                        got = rx.recv() => match got {
                            Some(p) => buffer.push(p),
                            None => break,
                        },
                        () = shutdown.wait() => {
                            closing_since = Some(Instant::now());
                            continue;
                        }
                    }
                }
            }
            while let Ok(p) = rx.try_recv() {
                buffer.push(p);
            }
            let n = buffer.len().min(MAX_BATCH);
            let rows: Vec<UsageRow> = buffer[..n].iter().map(|p| p.row.clone()).collect();
            match store.insert_usage(&rows).await {
                Ok(()) => {
                    for p in buffer.drain(..n) {
                        if let Some(ack) = p.ack {
                            let _ = ack.send(());
                        }
                    }
                    self.backlog.fetch_sub(n, Relaxed);
                    if let Some(since) = outage_since.take() {
                        tracing::info!(outage = ?since.elapsed(), waiting = buffer.len(), "usage rows are being written again");
                    }
                    self.healthy.store(true, Relaxed);
                    self.oldest_waiting.store(i64::MAX, Relaxed);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    // Release the responses waiting on these rows: the rows
                    // stay here and are retried.
                    for p in &mut buffer {
                        p.ack.take();
                    }
                    self.healthy.store(false, Relaxed);
                    self.oldest_waiting.store(buffer[0].row.ended_at, Relaxed);
                    if outage_since.is_none() {
                        outage_since = Some(Instant::now());
                        tracing::warn!(error = %e, waiting = buffer.len(), "cannot write usage rows; keeping them and retrying");
                    }
                    match closing_since {
                        Some(since) if since.elapsed() >= self.buffer_for => {
                            let lost = buffer.len() + rx.len();
                            tracing::error!(
                                lost,
                                "stopping with usage rows the database never took"
                            );
                            return;
                        }
                        Some(_) => tokio::time::sleep(backoff).await,
                        None => tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = shutdown.wait() => closing_since = Some(Instant::now()),
                        },
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        if let Some(since) = closing_since {
            tracing::debug!(took = ?since.elapsed(), "usage rows all written");
        }
    }

    /// Writes the aggregates every second until `shutdown`, then once more.
    pub async fn aggregate_loop(self: Arc<Self>, store: Store, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds: u64 = 0;
        loop {
            let stopping = tokio::select! {
                () = shutdown.wait() => true,
                _ = tick.tick() => false,
            };
            self.write_aggregates(&store).await;
            if stopping {
                return;
            }
            // Every ten minutes, the batch tokens of more than a day ago go
            // (by then no retry of theirs is still waiting: the replica
            // stops taking dispatches after USAGE_BUFFER_SECS of outage).
            rounds += 1;
            if rounds % 600 == 0 {
                if let Err(e) = store.prune_stats_batches(STATS_TOKENS_KEPT).await {
                    tracing::debug!(error = %e, "old stats batch tokens not pruned yet");
                }
            }
        }
    }

    /// Writes what the aggregates hold: first the batches that failed before,
    /// with their tokens (applied once whatever became of their first
    /// commit); then, only once none is left, each worker-minute's new
    /// increments as one batch with a fresh token. While the database
    /// fails, new increments keep summing in memory instead of piling up
    /// as batches, so the retry list stays as long as it was when the
    /// failures began.
    pub async fn write_aggregates(&self, store: &Store) {
        let taken = std::mem::take(&mut *self.aggregates.lock().unwrap_or_else(|p| p.into_inner()));
        let mut failed = Aggregates::default();
        let mut pending = taken.retry.into_iter();
        for d in pending.by_ref() {
            if let Err(e) = store.add_worker_stats(&d).await {
                tracing::debug!(error = %e, worker_id = d.worker_id, "worker stats not written yet");
                failed.retry.push(d);
                break;
            }
        }
        failed.retry.extend(pending);
        if failed.retry.is_empty() {
            for d in taken.stats.into_values() {
                let d = StatsDelta {
                    token: new_key(),
                    ..d
                };
                if let Err(e) = store.add_worker_stats(&d).await {
                    tracing::debug!(error = %e, worker_id = d.worker_id, "worker stats not written yet");
                    failed.retry.push(d);
                }
            }
        } else {
            failed.stats = taken.stats;
        }
        for (key_id, at) in taken.key_used {
            if store.touch_key(key_id, at).await.is_err() {
                failed.key_used.insert(key_id, at);
            }
        }
        if failed.retry.is_empty() && failed.stats.is_empty() && failed.key_used.is_empty() {
            return;
        }
        let mut agg = self.aggregates.lock().unwrap_or_else(|p| p.into_inner());
        agg.retry.append(&mut failed.retry);
        for d in failed.stats.into_values() {
            agg.add(d);
        }
        for (key_id, at) in failed.key_used {
            let e = agg.key_used.entry(key_id).or_insert(0);
            *e = (*e).max(at);
        }
    }
}

/// Resolves when a recorded row is committed (or the wait is over).
pub struct Synced {
    rx: Option<oneshot::Receiver<()>>,
    limit: Duration,
}

impl Synced {
    pub async fn wait(self) {
        if let Some(rx) = self.rx {
            let _ = tokio::time::timeout(self.limit, rx).await;
        }
    }

    /// The pieces, for a body that polls the wait itself.
    pub fn into_parts(self) -> (Option<oneshot::Receiver<()>>, Duration) {
        (self.rx, self.limit)
    }
}
