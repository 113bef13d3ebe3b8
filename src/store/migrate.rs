//! Schema migrations, run by every instance at start-up.
//!
//! Ten instances may start at the same instant. On MySQL we take
//! `GET_LOCK('hashgate_migrations', 60)` on a dedicated connection (sqlx's
//! own lock does not lock on MariaDB, see `mysql`), so one instance applies
//! and the others wait, then find nothing to do; the connection is closed afterwards
//! (closing it also releases the lock if a migration failed half-way). The
//! first connection only checks that the database exists. A
//! missing database is created first (`CREATE DATABASE IF NOT EXISTS`).
//! SQLite has no advisory lock: racing processes may collide on the first
//! write, so the loser retries briefly and then sees the winner's work (the
//! DDL is `IF NOT EXISTS`, so nothing is applied twice).
//!
//! The SQL lives in `migrations/<dialect>/` and is compiled into the binary
//! (no files needed at run time, no `sqlx` macros needed at build time).

use std::time::Duration;

use sqlx::Connection;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions};

use super::{DbTarget, Store, StoreError};

fn migrator(dialect: &str) -> Migrator {
    let (workers, gateway, batches) = match dialect {
        "mysql" => (
            include_str!("../../migrations/mysql/0001_workers.sql"),
            include_str!("../../migrations/mysql/0002_gateway.sql"),
            include_str!("../../migrations/mysql/0003_stats_batches.sql"),
        ),
        _ => (
            include_str!("../../migrations/sqlite/0001_workers.sql"),
            include_str!("../../migrations/sqlite/0002_gateway.sql"),
            include_str!("../../migrations/sqlite/0003_stats_batches.sql"),
        ),
    };
    let migration = |version: i64, name: &'static str, sql: &'static str| {
        Migration::new(
            version,
            name.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(1, "workers", workers),
        migration(2, "gateway", gateway),
        migration(3, "stats_batches", batches),
    ])
}

pub(super) async fn run(store: &Store) -> Result<(), StoreError> {
    let limit = store.config.query_timeout.max(Duration::from_secs(30));
    let fut = async {
        match &store.config.target {
            DbTarget::MySql(opts) => mysql(opts).await,
            DbTarget::Sqlite(_) => sqlite(store).await,
        }
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout(limit)),
    }
}

async fn mysql(opts: &MySqlConnectOptions) -> Result<(), StoreError> {
    let conn = match MySqlConnection::connect_with(opts).await {
        Ok(c) => c,
        Err(sqlx::Error::Database(e))
            if e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|m| m.number() == 1049) =>
        {
            create_database(opts).await?;
            MySqlConnection::connect_with(opts).await?
        }
        Err(e) => return Err(e.into()),
    };
    let _ = conn.close().await;
    // A one-connection pool of its own, closed afterwards: if a migration
    // fails while holding GET_LOCK, closing the connection releases the lock
    // instead of returning it to a shared pool still held.
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.clone())
        .await?;
    // Our own lock, on the pool's one connection, before sqlx's: sqlx asks
    // for GET_LOCK(name, -1), which MySQL reads as "wait forever" but
    // MariaDB (10.11 tested) answers at once with NULL, locking nothing;
    // two instances then applied the same migration side by side.
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('hashgate_migrations', 60)")
        .fetch_one(&pool)
        .await?;
    if locked != Some(1) {
        pool.close().await;
        return Err(StoreError::Unavailable(
            "another instance held the migration lock for 60 s".into(),
        ));
    }
    let result = migrator("mysql").run(&pool).await;
    pool.close().await;
    result.map_err(migrate_error)
}

/// `CREATE DATABASE IF NOT EXISTS`; the name was checked to be a plain
/// identifier when the configuration was parsed.
async fn create_database(opts: &MySqlConnectOptions) -> Result<(), StoreError> {
    let Some(name) = opts.get_database() else {
        return Err(StoreError::Query("no database name configured".into()));
    };
    let name = name.to_owned();
    let mut conn = MySqlConnection::connect_with(&opts.clone().database("")).await?;
    let sql = format!("CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4");
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result?;
    tracing::info!(database = %name, "created the database");
    Ok(())
}

async fn sqlite(store: &Store) -> Result<(), StoreError> {
    let super::Pool::Sqlite(pool) = &store.pool else {
        return Err(StoreError::Query(
            "sqlite target without sqlite pool".into(),
        ));
    };
    let mut attempt = 0u32;
    loop {
        let result = migrator("sqlite").run(pool).await.map_err(migrate_error);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 20 => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "sqlite migration collided, retrying");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn migrate_error(e: sqlx::migrate::MigrateError) -> StoreError {
    match e {
        sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
        other => StoreError::Query(other.to_string()),
    }
}
