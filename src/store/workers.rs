//! The worker registry's queries (`worker_nodes`).
//!
//! Every write is a single statement, so nothing is ever half-written and no
//! multi-statement transaction can deadlock between SQLite processes. The
//! offline sweep is a conditional `UPDATE ... WHERE status <> 'offline'`
//! per stale row: when ten instances sweep at once, exactly one of them sees
//! "1 row affected" for a given worker, and only that one logs the change.

use serde::Serialize;
use sqlx::{ColumnIndex, Database, Decode, FromRow, Row, Type};

use super::{Pool, Store, StoreError, now_ms, on_pool};

/// Status values a worker can have; `offline` is set by the sweep (or by a
/// worker announcing its own shutdown).
pub const STATUSES: [&str; 4] = ["online", "busy", "draining", "offline"];

/// A validated registration.
#[derive(Debug, Clone)]
pub struct NewWorker {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub service_type: String,
    pub weight: u32,
    pub max_connections: u32,
}

/// A validated heartbeat; `None` keeps the stored value.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub worker_id: i64,
    pub status: &'static str,
    pub current_connections: Option<u32>,
    pub cpu_usage: Option<f64>,
    pub memory_usage: Option<f64>,
    /// Jobs queued on the worker (running plus pending), for least-queue.
    pub queue_length: Option<u32>,
}

/// Listing filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct WorkerFilter {
    pub service_type: Option<String>,
    pub status: Option<String>,
}

/// One row of `worker_nodes`, as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    pub id: i64,
    pub name: String,
    pub host: String,
    pub port: i64,
    pub service_type: String,
    pub status: String,
    pub weight: i64,
    pub max_connections: i64,
    pub current_connections: i64,
    pub cpu_usage: Option<f64>,
    pub memory_usage: Option<f64>,
    /// What the last heartbeat reported; `None` if it never did.
    pub queue_length: Option<i64>,
    pub total_requests: i64,
    pub total_failures: i64,
    pub avg_response_ms: f64,
    /// Epoch milliseconds, like every timestamp the API returns.
    pub last_heartbeat: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

// Written out instead of derived (the `macros` feature would also pull in
// compile-time query checking, which needs a database at build time).
impl<'r, R> FromRow<'r, R> for Worker
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<f64>: Decode<'r, R::Database>,
    Option<i64>: Decode<'r, R::Database>,
    R::Database: Database,
{
    fn from_row(r: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Worker {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            host: r.try_get("host")?,
            port: r.try_get("port")?,
            service_type: r.try_get("service_type")?,
            status: r.try_get("status")?,
            weight: r.try_get("weight")?,
            max_connections: r.try_get("max_connections")?,
            current_connections: r.try_get("current_connections")?,
            cpu_usage: r.try_get("cpu_usage")?,
            memory_usage: r.try_get("memory_usage")?,
            queue_length: r.try_get("queue_length")?,
            total_requests: r.try_get("total_requests")?,
            total_failures: r.try_get("total_failures")?,
            avg_response_ms: r.try_get("avg_response_ms")?,
            last_heartbeat: r.try_get("last_heartbeat")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }
}

const COLUMNS: &str = "SELECT id, name, host, port, service_type, status, weight, \
    max_connections, current_connections, cpu_usage, memory_usage, queue_length, \
    total_requests, total_failures, avg_response_ms, last_heartbeat, created_at, updated_at FROM worker_nodes";

// The one real dialect difference in the queries: the upsert keyed by the
// UNIQUE (host, port) constraint.
const UPSERT_MYSQL: &str = "INSERT INTO worker_nodes (name, host, port, service_type, \
    status, weight, max_connections, last_heartbeat, created_at, updated_at) \
    VALUES (?, ?, ?, ?, 'online', ?, ?, ?, ?, ?) \
    ON DUPLICATE KEY UPDATE name = VALUES(name), service_type = VALUES(service_type), \
    status = 'online', weight = VALUES(weight), max_connections = VALUES(max_connections), \
    last_heartbeat = VALUES(last_heartbeat), updated_at = VALUES(updated_at)";
const UPSERT_SQLITE: &str = "INSERT INTO worker_nodes (name, host, port, service_type, \
    status, weight, max_connections, last_heartbeat, created_at, updated_at) \
    VALUES (?, ?, ?, ?, 'online', ?, ?, ?, ?, ?) \
    ON CONFLICT (host, port) DO UPDATE SET name = excluded.name, \
    service_type = excluded.service_type, status = 'online', weight = excluded.weight, \
    max_connections = excluded.max_connections, last_heartbeat = excluded.last_heartbeat, \
    updated_at = excluded.updated_at";

impl Store {
    /// Registers a worker, or refreshes the one already at `host:port`.
    /// Returns its id.
    pub async fn register_worker(&self, w: &NewWorker) -> Result<i64, StoreError> {
        let now = now_ms();
        let sql = match &self.pool {
            Pool::MySql(_) => UPSERT_MYSQL,
            Pool::Sqlite(_) => UPSERT_SQLITE,
        };
        let fut = async {
            on_pool!(self, |p| {
                sqlx::query(sql)
                    .bind(&w.name)
                    .bind(&w.host)
                    .bind(i64::from(w.port))
                    .bind(&w.service_type)
                    .bind(i64::from(w.weight))
                    .bind(i64::from(w.max_connections))
                    .bind(now)
                    .bind(now)
                    .bind(now)
                    .execute(p)
                    .await?;
                sqlx::query_scalar::<_, i64>(
                    "SELECT id FROM worker_nodes WHERE host = ? AND port = ?",
                )
                .bind(&w.host)
                .bind(i64::from(w.port))
                .fetch_optional(p)
                .await
            })
        };
        self.bounded(fut).await?.ok_or_else(|| {
            StoreError::Query("registered worker vanished (removed concurrently)".into())
        })
    }

    /// Records a heartbeat. `Ok(false)` when no such worker exists.
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<bool, StoreError> {
        let now = now_ms();
        let fut = async {
            on_pool!(self, |p| {
                sqlx::query(
                "UPDATE worker_nodes SET status = ?, \
                 current_connections = COALESCE(?, current_connections), \
                 cpu_usage = COALESCE(?, cpu_usage), memory_usage = COALESCE(?, memory_usage), \
                 queue_length = COALESCE(?, queue_length), last_heartbeat = ?, updated_at = ? WHERE id = ?",
            )
            .bind(hb.status)
            .bind(hb.current_connections.map(i64::from))
            .bind(hb.cpu_usage)
            .bind(hb.memory_usage)
            .bind(hb.queue_length.map(i64::from))
            .bind(now)
            .bind(now)
            .bind(hb.worker_id)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
            })
        };
        Ok(self.bounded(fut).await? > 0)
    }

    /// Workers matching `filter`, by id.
    pub async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<Worker>, StoreError> {
        const SQL: &str = "SELECT id, name, host, port, service_type, status, weight, \
            max_connections, current_connections, cpu_usage, memory_usage, queue_length, \
            total_requests, total_failures, avg_response_ms, last_heartbeat, created_at, \
            updated_at FROM worker_nodes WHERE (? IS NULL OR service_type = ?) \
            AND (? IS NULL OR status = ?) ORDER BY id LIMIT 10000";
        let (st, status) = (&filter.service_type, &filter.status);
        let fut = async {
            on_pool!(self, |p| sqlx::query_as::<_, Worker>(SQL)
                .bind(st)
                .bind(st)
                .bind(status)
                .bind(status)
                .fetch_all(p)
                .await)
        };
        self.bounded(fut).await
    }

    pub async fn get_worker(&self, id: i64) -> Result<Option<Worker>, StoreError> {
        let fut = async {
            on_pool!(self, |p| sqlx::query_as::<_, Worker>(sqlx::AssertSqlSafe(
                format!("{COLUMNS} WHERE id = ?")
            ))
            .bind(id)
            .fetch_optional(p)
            .await)
        };
        self.bounded(fut).await
    }

    /// Removes a worker (and its stats). `Ok(false)` when it did not exist.
    pub async fn delete_worker(&self, id: i64) -> Result<bool, StoreError> {
        let fut = async {
            on_pool!(self, |p| sqlx::query(
                "DELETE FROM worker_nodes WHERE id = ?"
            )
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        };
        Ok(self.bounded(fut).await? > 0)
    }

    /// Worker counts per status, for the status page.
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let fut = async {
            on_pool!(self, |p| sqlx::query_as::<_, (String, i64)>(
                "SELECT status, COUNT(*) FROM worker_nodes GROUP BY status ORDER BY status",
            )
            .fetch_all(p)
            .await)
        };
        self.bounded(fut).await
    }

    /// Marks workers silent since before `cutoff_ms` offline. Returns the ids
    /// this call changed (each stale worker is reported by exactly one
    /// caller, however many sweep concurrently).
    pub async fn sweep_offline(&self, cutoff_ms: i64) -> Result<Vec<i64>, StoreError> {
        let stale: Vec<i64> = {
            let fut = async {
                on_pool!(self, |p| sqlx::query_scalar::<_, i64>(
                    "SELECT id FROM worker_nodes WHERE status <> 'offline' \
                     AND last_heartbeat < ? ORDER BY id LIMIT 1000",
                )
                .bind(cutoff_ms)
                .fetch_all(p)
                .await)
            };
            self.bounded(fut).await?
        };
        let mut changed = Vec::new();
        for id in stale {
            let now = now_ms();
            let fut = async {
                on_pool!(self, |p| sqlx::query(
                    "UPDATE worker_nodes SET status = 'offline', updated_at = ? \
                     WHERE id = ? AND status <> 'offline' AND last_heartbeat < ?",
                )
                .bind(now)
                .bind(id)
                .bind(cutoff_ms)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
            };
            if self.bounded(fut).await? == 1 {
                changed.push(id);
            }
        }
        Ok(changed)
    }
}
