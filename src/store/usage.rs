//! Metering writes and reads: `usage_log` rows, per-minute `worker_stats`
//! and the running totals on `worker_nodes`.
//!
//! Rows arrive in batches from the gateway's meter
//! ([`crate::gateway::meter`]): one multi-row `INSERT` per batch, so the
//! database sees one statement and one commit for many requests (group
//! commit). Each row carries a random `row_key` under a UNIQUE index and the
//! insert ignores duplicates: a batch retried after a lost acknowledgement
//! (the commit happened, the answer did not arrive) writes nothing twice.
//!
//! The aggregates (`worker_stats`, totals, `last_used_at`) are increments
//! merged in memory and written about once a second, one statement each.
//! Both dialects evaluate the running-mean update against the old count:
//! SQLite reads old values throughout an `UPDATE`, MySQL assigns left to
//! right, so the mean is assigned before the count.

use serde::Serialize;
use sqlx::{ColumnIndex, Database, Decode, FromRow, Row, Type};

use super::{Pool, Store, StoreError, now_ms, on_pool};

/// One dispatched request, as billed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageRow {
    #[serde(skip)]
    pub row_key: String,
    pub request_id: String,
    #[serde(skip)]
    pub key_id: i64,
    pub service_type: String,
    pub worker_id: Option<i64>,
    pub status: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub started_at: i64,
    pub ended_at: i64,
    pub duration_ms: i64,
    /// Integer minor units of the configured currency.
    pub cost: i64,
    pub instance: String,
}

impl<'r, R> FromRow<'r, R> for UsageRow
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database>,
    R::Database: Database,
{
    fn from_row(r: &'r R) -> Result<Self, sqlx::Error> {
        Ok(UsageRow {
            row_key: r.try_get("row_key")?,
            request_id: r.try_get("request_id")?,
            key_id: r.try_get("key_id")?,
            service_type: r.try_get("service_type")?,
            worker_id: r.try_get("worker_id")?,
            status: r.try_get("status")?,
            request_bytes: r.try_get("request_bytes")?,
            response_bytes: r.try_get("response_bytes")?,
            started_at: r.try_get("started_at")?,
            ended_at: r.try_get("ended_at")?,
            duration_ms: r.try_get("duration_ms")?,
            cost: r.try_get("cost")?,
            instance: r.try_get("instance")?,
        })
    }
}

/// Increments for one worker's row in one minute of `worker_stats`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsDelta {
    /// Random per batch and kept across its retries: the write is applied
    /// once whatever happens to its acknowledgement (`stats_batches`).
    pub token: String,
    pub worker_id: i64,
    /// Start of the minute, epoch ms.
    pub interval_start: i64,
    pub requests: i64,
    pub successes: i64,
    pub failures: i64,
    /// Sum of the response times, ms (the stored mean is updated from it).
    pub total_ms: i64,
}

/// Totals of one service type on one day (UTC).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotal {
    /// Start of the day, epoch ms.
    pub day: i64,
    pub service_type: String,
    pub requests: i64,
    pub failures: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub cost: i64,
}

/// 128 random bits as 32 hex digits: a usage row's `row_key`, a stats
/// batch's token, a request id the client did not choose.
pub fn new_key() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The most rows one insert carries (14 placeholders each; well under
/// SQLite's and MySQL's limits).
pub const MAX_BATCH: usize = 1000;

const INSERT_COLUMNS: &str = "(row_key, request_id, key_id, service_type, worker_id, status, \
    request_bytes, response_bytes, started_at, ended_at, duration_ms, cost, instance)";

const STATS_MYSQL: &str = "INSERT INTO worker_stats \
    (worker_id, interval_start, requests, successes, failures, avg_response_ms) \
    VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
    avg_response_ms = (avg_response_ms * requests + VALUES(avg_response_ms) * VALUES(requests)) \
        / (requests + VALUES(requests)), \
    requests = requests + VALUES(requests), successes = successes + VALUES(successes), \
    failures = failures + VALUES(failures)";
const STATS_SQLITE: &str = "INSERT INTO worker_stats \
    (worker_id, interval_start, requests, successes, failures, avg_response_ms) \
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (worker_id, interval_start) DO UPDATE SET \
    avg_response_ms = (avg_response_ms * requests + excluded.avg_response_ms * excluded.requests) \
        / (requests + excluded.requests), \
    requests = requests + excluded.requests, successes = successes + excluded.successes, \
    failures = failures + excluded.failures";

impl Store {
    /// Writes a batch of usage rows in one statement; rows already written
    /// (same `row_key`) are skipped.
    pub async fn insert_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let verb = match self.pool {
            Pool::MySql(_) => "INSERT IGNORE INTO",
            Pool::Sqlite(_) => "INSERT OR IGNORE INTO",
        };
        let mut sql = format!("{verb} usage_log {INSERT_COLUMNS} VALUES ");
        for i in 0..rows.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str("(?,?,?,?,?,?,?,?,?,?,?,?,?)");
        }
        let fut = async {
            on_pool!(self, |p| {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for r in rows {
                    q = q
                        .bind(&r.row_key)
                        .bind(&r.request_id)
                        .bind(r.key_id)
                        .bind(&r.service_type)
                        .bind(r.worker_id)
                        .bind(r.status)
                        .bind(r.request_bytes)
                        .bind(r.response_bytes)
                        .bind(r.started_at)
                        .bind(r.ended_at)
                        .bind(r.duration_ms)
                        .bind(r.cost)
                        .bind(&r.instance);
                }
                q.execute(p).await.map(|_| ())
            })
        };
        self.bounded(fut).await
    }

    /// Adds one minute's increments to `worker_stats` and to the worker's
    /// running totals, once per `d.token`: a batch already applied (a
    /// retry after a commit whose acknowledgement was lost, or that
    /// outlived the query timeout) adds nothing. A worker removed
    /// meanwhile is skipped.
    pub async fn add_worker_stats(&self, d: &StatsDelta) -> Result<(), StoreError> {
        if d.requests <= 0 {
            return Ok(());
        }
        let exists = self.get_worker(d.worker_id).await?.is_some();
        if !exists {
            return Ok(());
        }
        let mean = d.total_ms as f64 / d.requests as f64;
        let (sql, claim) = match self.pool {
            Pool::MySql(_) => (
                STATS_MYSQL,
                "INSERT IGNORE INTO stats_batches (token, applied_at) VALUES (?, ?)",
            ),
            Pool::Sqlite(_) => (
                STATS_SQLITE,
                "INSERT OR IGNORE INTO stats_batches (token, applied_at) VALUES (?, ?)",
            ),
        };
        // One transaction: the token and both increments, or none of them.
        let fut = async {
            on_pool!(self, |p| {
                let mut tx = p.begin().await?;
                let claimed = sqlx::query(claim)
                    .bind(&d.token)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if claimed == 0 {
                    tracing::debug!(token = %d.token, "worker stats batch already applied");
                    return tx.rollback().await;
                }
                sqlx::query(sql)
                    .bind(d.worker_id)
                    .bind(d.interval_start)
                    .bind(d.requests)
                    .bind(d.successes)
                    .bind(d.failures)
                    .bind(mean)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE worker_nodes SET avg_response_ms = \
                     (avg_response_ms * total_requests + ?) / (total_requests + ?), \
                     total_requests = total_requests + ?, total_failures = total_failures + ? \
                     WHERE id = ?",
                )
                .bind(d.total_ms as f64)
                .bind(d.requests)
                .bind(d.requests)
                .bind(d.failures)
                .bind(d.worker_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            })
        };
        self.bounded(fut).await
    }

    /// Forgets the tokens of stats batches applied more than `keep` ago
    /// (a batch retried after that long would count twice; the meter gives
    /// up on none, but retries every second).
    pub async fn prune_stats_batches(&self, keep: std::time::Duration) -> Result<u64, StoreError> {
        let before = now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let fut = async {
            on_pool!(self, |p| {
                sqlx::query("DELETE FROM stats_batches WHERE applied_at < ?")
                    .bind(before)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            })
        };
        self.bounded(fut).await
    }

    /// Moves a key's `last_used_at` forward to `at` (never back).
    pub async fn touch_key(&self, key_id: i64, at: i64) -> Result<(), StoreError> {
        let fut = async {
            on_pool!(self, |p| sqlx::query(
                "UPDATE api_keys SET last_used_at = ? \
                 WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            )
            .bind(at)
            .bind(key_id)
            .bind(at)
            .execute(p)
            .await
            .map(|_| ()))
        };
        self.bounded(fut).await
    }

    /// A key's totals by day and service type since `since` (epoch ms),
    /// newest day first.
    pub async fn usage_totals(
        &self,
        key_id: i64,
        since: i64,
    ) -> Result<Vec<UsageTotal>, StoreError> {
        const SQL: &str = "SELECT started_at - (started_at % 86400000) AS day, service_type, \
            COUNT(*) AS requests, \
            CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS SIGNED) AS failures, \
            CAST(SUM(request_bytes) AS SIGNED) AS request_bytes, \
            CAST(SUM(response_bytes) AS SIGNED) AS response_bytes, \
            CAST(SUM(cost) AS SIGNED) AS cost FROM usage_log WHERE key_id = ? AND started_at >= ? \
            GROUP BY started_at - (started_at % 86400000), service_type \
            ORDER BY day DESC, service_type LIMIT 1000";
        let fut = async {
            on_pool!(self, |p| {
                let rows = sqlx::query(SQL)
                    .bind(key_id)
                    .bind(since)
                    .fetch_all(p)
                    .await?;
                rows.iter()
                    .map(|r| {
                        // MySQL's SUM is DECIMAL, hence the casts to SIGNED.
                        Ok(UsageTotal {
                            day: r.try_get::<i64, _>("day")?,
                            service_type: r.try_get("service_type")?,
                            requests: r.try_get::<i64, _>("requests")?,
                            failures: r.try_get::<i64, _>("failures")?,
                            request_bytes: r.try_get::<i64, _>("request_bytes")?,
                            response_bytes: r.try_get::<i64, _>("response_bytes")?,
                            cost: r.try_get::<i64, _>("cost")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            })
        };
        self.bounded(fut).await
    }

    /// A key's latest rows, newest first: `limit` rows after skipping `offset`.
    pub async fn usage_rows(
        &self,
        key_id: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        const SQL: &str = "SELECT row_key, request_id, key_id, service_type, worker_id, status, \
            request_bytes, response_bytes, started_at, ended_at, duration_ms, cost, instance \
            FROM usage_log WHERE key_id = ? ORDER BY started_at DESC, id DESC LIMIT ? OFFSET ?";
        let fut = async {
            on_pool!(self, |p| sqlx::query_as::<_, UsageRow>(SQL)
                .bind(key_id)
                .bind(limit)
                .bind(offset)
                .fetch_all(p)
                .await)
        };
        self.bounded(fut).await
    }

    /// Every usage row (tests and operators reconciling a run), oldest first.
    pub async fn all_usage(&self) -> Result<Vec<UsageRow>, StoreError> {
        const SQL: &str = "SELECT row_key, request_id, key_id, service_type, worker_id, status, \
            request_bytes, response_bytes, started_at, ended_at, duration_ms, cost, instance \
            FROM usage_log ORDER BY id";
        let fut = async {
            on_pool!(self, |p| sqlx::query_as::<_, UsageRow>(SQL)
                .fetch_all(p)
                .await)
        };
        self.bounded(fut).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;
    use crate::store::config::DbConfig;
    use crate::store::workers::NewWorker;

    /// A retried stats batch (its first commit landed, its acknowledgement
    /// did not) adds nothing; a new batch adds its increments.
    #[tokio::test]
    async fn a_stats_batch_is_applied_once_per_token() {
        let dir = std::env::temp_dir().join(format!(
            "hashgate-stats-{}-{}",
            std::process::id(),
            now_ms()
        ));
        let url = format!("sqlite:{}", dir.join("t.db").display());
        let config =
            DbConfig::from_env(&Env::from_pairs([("DATABASE_URL", url.as_str())])).expect("config");
        let store = Store::open(config).expect("open");
        store.migrate().await.expect("migrate");
        let worker_id = store
            .register_worker(&NewWorker {
                name: "w1".into(),
                host: "127.0.0.1".into(),
                port: 5001,
                service_type: "render".into(),
                weight: 1,
                max_connections: 4,
            })
            .await
            .expect("worker");
        let batch = |token: &str| StatsDelta {
            token: token.into(),
            worker_id,
            interval_start: 60_000,
            requests: 3,
            successes: 2,
            failures: 1,
            total_ms: 30,
        };
        store.add_worker_stats(&batch("aaaa")).await.expect("first");
        store.add_worker_stats(&batch("aaaa")).await.expect("retry");
        store
            .add_worker_stats(&batch("bbbb"))
            .await
            .expect("second");
        let w = store
            .get_worker(worker_id)
            .await
            .expect("read")
            .expect("worker");
        assert_eq!((w.total_requests, w.total_failures), (6, 2));
        // Nothing is pruned that is younger than what is kept.
        assert_eq!(
            store
                .prune_stats_batches(std::time::Duration::from_secs(60))
                .await
                .expect("prune"),
            0
        );
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
