//! API keys (`api_keys`): only the SHA-256 digest of a key is stored (see
//! [`crate::gateway::keys`] for the key format and why this digest).
//!
//! Names are unique, so `api keys revoke NAME` is unambiguous; revocation
//! sets `revoked_at` rather than deleting, so usage rows keep their key.

use serde::Serialize;
use sqlx::{ColumnIndex, Database, Decode, FromRow, Row, Type};

use super::{Store, StoreError, now_ms, on_pool};

/// One key as `api keys list` and the gateway see it (never the key itself).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl ApiKey {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

impl<'r, R> FromRow<'r, R> for ApiKey
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database>,
    R::Database: Database,
{
    fn from_row(r: &'r R) -> Result<Self, sqlx::Error> {
        Ok(ApiKey {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            prefix: r.try_get("prefix")?,
            created_at: r.try_get("created_at")?,
            last_used_at: r.try_get("last_used_at")?,
            revoked_at: r.try_get("revoked_at")?,
        })
    }
}

const COLUMNS: &str = "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys";

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateKeyError {
    #[error("a key named {0:?} already exists")]
    NameTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Stores a new key's digest under `name`; returns its row.
    pub async fn create_key(
        &self,
        name: &str,
        prefix: &str,
        key_hash: &str,
    ) -> Result<ApiKey, CreateKeyError> {
        let now = now_ms();
        let fut = async {
            on_pool!(self, |p| sqlx::query(
                "INSERT INTO api_keys (name, prefix, key_hash, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(name)
            .bind(prefix)
            .bind(key_hash)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ()))
        };
        match tokio::time::timeout(self.config.query_timeout, fut).await {
            Ok(Ok(())) => {}
            Ok(Err(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                return Err(CreateKeyError::NameTaken(name.to_owned()));
            }
            Ok(Err(e)) => return Err(StoreError::from(e).into()),
            Err(_) => return Err(StoreError::Timeout(self.config.query_timeout).into()),
        }
        self.key_by_name(name)
            .await?
            .ok_or_else(|| StoreError::Query("created key vanished".into()).into())
    }

    /// Every key, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let fut = async {
            on_pool!(self, |p| sqlx::query_as::<_, ApiKey>(sqlx::AssertSqlSafe(
                format!("{COLUMNS} ORDER BY id")
            ))
            .fetch_all(p)
            .await)
        };
        self.bounded(fut).await
    }

    pub async fn key_by_name(&self, name: &str) -> Result<Option<ApiKey>, StoreError> {
        let fut = async {
            on_pool!(self, |p| sqlx::query_as::<_, ApiKey>(sqlx::AssertSqlSafe(
                format!("{COLUMNS} WHERE name = ?")
            ))
            .bind(name)
            .fetch_optional(p)
            .await)
        };
        self.bounded(fut).await
    }

    /// The key whose digest is `key_hash` (revoked or not).
    pub async fn key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let fut = async {
            on_pool!(self, |p| sqlx::query_as::<_, ApiKey>(sqlx::AssertSqlSafe(
                format!("{COLUMNS} WHERE key_hash = ?")
            ))
            .bind(key_hash)
            .fetch_optional(p)
            .await)
        };
        self.bounded(fut).await
    }

    /// Revokes the key named `name_or_id` (a name first, then a numeric id).
    /// Returns the key, `None` when there is no such key.
    pub async fn revoke_key(&self, name_or_id: &str) -> Result<Option<ApiKey>, StoreError> {
        let key = match self.key_by_name(name_or_id).await? {
            Some(k) => Some(k),
            None => match name_or_id.parse::<i64>() {
                Ok(id) => {
                    let fut = async {
                        on_pool!(self, |p| sqlx::query_as::<_, ApiKey>(sqlx::AssertSqlSafe(
                            format!("{COLUMNS} WHERE id = ?")
                        ))
                        .bind(id)
                        .fetch_optional(p)
                        .await)
                    };
                    self.bounded(fut).await?
                }
                Err(_) => None,
            },
        };
        let Some(key) = key else { return Ok(None) };
        let now = now_ms();
        let fut = async {
            on_pool!(self, |p| sqlx::query(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
            )
            .bind(now)
            .bind(key.id)
            .execute(p)
            .await
            .map(|_| ()))
        };
        self.bounded(fut).await?;
        Ok(Some(ApiKey {
            revoked_at: key.revoked_at.or(Some(now)),
            ..key
        }))
    }
}
