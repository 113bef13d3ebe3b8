//! Which database an API instance talks to, parsed once from the environment.
//!
//! `DATABASE_URL` wins; otherwise `MYSQL_HOST` (plus `MYSQL_PORT`, `MYSQL_USER`,
//! `MYSQL_PASSWORD`, `MYSQL_DATABASE`) selects MySQL; with neither, an embedded
//! SQLite file (`SQLITE_PATH`) so local development needs nothing installed.
//!
//! The password is a secret: it lives only inside the sqlx connect options,
//! `Debug` and every message print [`DbConfig::describe`] instead, and a bad
//! `DATABASE_URL` is echoed back with its password masked.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::MySqlConnectOptions;

use crate::config::{ConfigError, Env};

/// Where the data lives.
#[derive(Clone)]
pub enum DbTarget {
    /// Boxed: the options are large and copied with the config.
    MySql(Box<MySqlConnectOptions>),
    Sqlite(PathBuf),
}

/// The database settings of one API instance.
#[derive(Clone)]
pub struct DbConfig {
    pub target: DbTarget,
    /// `DB_MAX_CONNECTIONS`: pool size.
    pub max_connections: u32,
    /// `DB_ACQUIRE_TIMEOUT_MS`: how long a request waits for a connection
    /// (this is what turns "database down" into a fast 503).
    pub acquire_timeout: Duration,
    /// `DB_QUERY_TIMEOUT_MS`: upper bound on any single store operation.
    pub query_timeout: Duration,
}

impl DbConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let target = if let Some(url) = env.raw("DATABASE_URL") {
            parse_url(url)?
        } else if let Some(host) = env.raw("MYSQL_HOST") {
            let database = env.raw("MYSQL_DATABASE").unwrap_or("kiro_api");
            if !is_plain_identifier(database) {
                return Err(ConfigError::new(
                    "MYSQL_DATABASE",
                    database,
                    "use letters, digits and _ only",
                ));
            }
            let mut opts = MySqlConnectOptions::new()
                .host(host)
                .port(env.port_or("MYSQL_PORT", 13306)?)
                .username(env.raw("MYSQL_USER").unwrap_or("root"))
                .database(database);
            if let Some(pw) = env.raw("MYSQL_PASSWORD") {
                opts = opts.password(pw);
            }
            DbTarget::MySql(Box::new(opts))
        } else {
            DbTarget::Sqlite(PathBuf::from(
                env.raw("SQLITE_PATH").unwrap_or("data/hashgate.db"),
            ))
        };
        Ok(DbConfig {
            target,
            max_connections: env.range_or("DB_MAX_CONNECTIONS", 10, 1, 1000)?,
            acquire_timeout: env.millis_or("DB_ACQUIRE_TIMEOUT_MS", 2_000)?,
            query_timeout: env.millis_or("DB_QUERY_TIMEOUT_MS", 5_000)?,
        })
    }

    /// `mysql` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self.target {
            DbTarget::MySql(_) => "mysql",
            DbTarget::Sqlite(_) => "sqlite",
        }
    }

    /// A printable description with no secret in it.
    pub fn describe(&self) -> String {
        match &self.target {
            DbTarget::MySql(o) => format!(
                "mysql://{}@{}:{}/{}",
                o.get_username(),
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("")
            ),
            DbTarget::Sqlite(path) => format!("sqlite:{}", path.display()),
        }
    }
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("target", &self.describe())
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("query_timeout", &self.query_timeout)
            .finish()
    }
}

fn parse_url(url: &str) -> Result<DbTarget, ConfigError> {
    let bad = |reason: &str| ConfigError::new("DATABASE_URL", &redact_url(url), reason);
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = path.split('?').next().unwrap_or("");
        if path.is_empty() || path.contains(":memory:") {
            return Err(bad("needs a file path, e.g. sqlite:data/hashgate.db"));
        }
        return Ok(DbTarget::Sqlite(PathBuf::from(path)));
    }
    let mysql = if let Some(rest) = url.strip_prefix("mariadb://") {
        format!("mysql://{rest}")
    } else if url.starts_with("mysql://") {
        url.to_owned()
    } else {
        return Err(bad("must start with mysql://, mariadb:// or sqlite:"));
    };
    // sqlx's parse errors come from the `url` crate and never echo the input,
    // but they are still reported through the redacted value only.
    let opts = MySqlConnectOptions::from_str(&mysql)
        .map_err(|_| bad("not a valid mysql://user:password@host:port/database URL"))?;
    match opts.get_database() {
        None => Err(bad(
            "names no database (mysql://user:password@host:port/DATABASE)",
        )),
        Some(db) if !is_plain_identifier(db) => {
            Err(bad("database name: use letters, digits and _ only"))
        }
        Some(_) => Ok(DbTarget::MySql(Box::new(opts))),
    }
}

/// A database name we can safely quote with backticks in `CREATE DATABASE`.
fn is_plain_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `scheme://user:secret@host/db` -> `scheme://user:***@host/db`.
///
/// The credentials end at the *last* `@` of the URL, not at the first `/`:
/// people paste passwords with `/`, `?`, `#` or `@` in them unencoded (a
/// base64 password has `/`), and such a URL must never reach a log whole.
/// A URL with an `@` in its path or query is over-redacted, never under.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let Some(user_end) = rest[..at].find(':') else {
        return url.to_owned(); // a user and no password
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end],
        &rest[..user_end],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<DbConfig, ConfigError> {
        DbConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn embedded_is_the_default() {
        let c = cfg(&[]).expect("defaults parse");
        assert_eq!(c.kind(), "sqlite");
        assert_eq!(c.describe(), "sqlite:data/hashgate.db");
    }

    #[test]
    fn mysql_parts_and_url_select_mysql_without_leaking_the_password() {
        let c = cfg(&[
            ("MYSQL_HOST", "db.internal"),
            ("MYSQL_PASSWORD", "s3cret-pw"),
        ])
        .unwrap();
        assert_eq!(c.describe(), "mysql://root@db.internal:13306/kiro_api");
        assert!(!format!("{c:?}").contains("s3cret-pw"));
        let c = cfg(&[("DATABASE_URL", "mariadb://u:s3cret-pw@h:3307/app")]).unwrap();
        assert_eq!(c.describe(), "mysql://u@h:3307/app");
        assert!(!format!("{c:?}").contains("s3cret-pw"));
    }

    #[test]
    fn bad_urls_name_the_variable_and_hide_the_password() {
        for url in [
            "postgres://u:s3cret-pw@h/db",
            "mysql://u:s3cret-pw@h:notaport/db",
            "mysql://u:s3cret-pw@h:3306",
            "mysql://u:s3cret-pw@h:3306/db;drop",
            "sqlite::memory:",
        ] {
            let err = cfg(&[("DATABASE_URL", url)]).expect_err(url);
            assert_eq!(err.var, "DATABASE_URL");
            assert!(!err.to_string().contains("s3cret-pw"), "{err}");
        }
        let err = cfg(&[("MYSQL_HOST", "h"), ("MYSQL_PORT", "0")]).unwrap_err();
        assert_eq!(err.var, "MYSQL_PORT");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("mysql://u:p@h:1/d"), "mysql://u:***@h:1/d");
        assert_eq!(redact_url("mysql://u@h/d"), "mysql://u@h/d");
        assert_eq!(
            redact_url("mysql://u:s3cr/et-pw@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(redact_url("mysql://u:a?b#c@h/db"), "mysql://u:***@h/db");
        assert_eq!(redact_url("mysql://h:1/db"), "mysql://h:1/db");
        assert_eq!(redact_url("mysql://u:p@ss@h/d"), "mysql://u:***@h/d");
        assert_eq!(redact_url("sqlite:x.db"), "sqlite:x.db");
    }
}
