//! The storage seam: every query the API needs, behind one [`Store`].
//!
//! Two backends, one set of SQL: MySQL/MariaDB (shared by replicas on many
//! hosts) and an embedded SQLite file (local development, several processes
//! sharing one file in WAL mode). Both use `?` placeholders and the same
//! column types as far as the queries can tell, so a query is written once and
//! run on whichever pool the `on_pool!` macro picks; only the DDL and the upsert differ.
//!
//! Every operation is bounded by `DB_QUERY_TIMEOUT_MS` and the pool's acquire
//! timeout, so a dead database turns into [`StoreError::Unavailable`] (503)
//! within seconds instead of a hanging request. Pools connect lazily: an
//! instance starts, and recovers, without the database being up.

pub mod config;
pub mod keys;
mod migrate;
pub mod usage;
pub mod workers;

use std::future::Future;
use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use config::{DbConfig, DbTarget};

/// Runs `$body` with `$p` bound to whichever pool the store holds. The body
/// is compiled once per backend, so the SQL text is shared while sqlx's
/// types stay concrete.
macro_rules! on_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::MySql($p) => $body,
            $crate::store::Pool::Sqlite($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// What went wrong, in the terms callers branch on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is busy: retry later (503).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The operation ran past `DB_QUERY_TIMEOUT_MS` (503).
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    /// Anything else: a bug or a schema problem (500, logged).
    #[error("database error: {0}")]
    Query(String),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::PoolTimedOut
            | E::PoolClosed
            | E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            E::Database(db) if is_transient(db.as_ref()) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Query(e.to_string()),
        }
    }
}

/// Errors that mean "the database is not serving us right now" rather than
/// "this query is wrong".
fn is_transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(m) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // too many connections, access denied, unknown database, shutdown in
        // progress, lock wait timeout, deadlock, killed connection.
        return matches!(m.number(), 1040 | 1045 | 1049 | 1053 | 1205 | 1213 | 1927);
    }
    // SQLite: BUSY, LOCKED, IOERR, CANTOPEN (primary code = low byte).
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 14))
}

#[derive(Clone)]
pub(crate) enum Pool {
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// A handle to the database; cheap to clone (sqlx pools are reference counted).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    config: DbConfig,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.config.describe())
            .finish()
    }
}

impl Store {
    /// Builds the pool without connecting (so start-up never waits for the
    /// database). Creates the SQLite file's directory.
    pub fn open(config: DbConfig) -> std::io::Result<Store> {
        let pool = match &config.target {
            DbTarget::MySql(opts) => Pool::MySql(
                MySqlPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.acquire_timeout)
                    .connect_lazy_with((**opts).clone()),
            ),
            DbTarget::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot create {}: {e}", dir.display()),
                        )
                    })?;
                }
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(config.max_connections.min(8))
                        .acquire_timeout(config.acquire_timeout)
                        .connect_lazy_with(sqlite_options(path)),
                )
            }
        };
        Ok(Store { pool, config })
    }

    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    /// `mysql` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        self.config.kind()
    }

    /// Applies the schema migrations (safe to call from many instances at once).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrate::run(self).await
    }

    /// One round trip, bounded by `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let fut = async {
            on_pool!(self, |p| sqlx::query("SELECT 1")
                .execute(p)
                .await
                .map(|_| ()))
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// Runs one store operation under the query timeout.
    pub(crate) async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let limit = self.config.query_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }

    /// Closes the pool's connections (on shutdown).
    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await)
    }
}

/// WAL so readers never block the writer and several local processes share
/// the file; a busy timeout so concurrent writers queue instead of failing.
fn sqlite_options(path: &std::path::Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(5))
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
}

/// Milliseconds since the Unix epoch: the time unit of every stored timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
