//! API keys: their format, their digest, and the check on every dispatch.
//!
//! A key is `hg_` followed by 64 hex digits: 256 bits from the operating
//! system's random source, with a prefix that secret scanners and people
//! recognise. The key is printed once at creation; the database holds only
//! its SHA-256 digest and the first 11 characters (`hg_` + 8 digits) to tell
//! keys apart in listings.
//!
//! Why SHA-256 and not a password hash (bcrypt, scrypt, Argon2): slow hashes
//! exist to make guessing *low-entropy* secrets expensive. A 256-bit random
//! key cannot be guessed whatever the hash costs, so a slow hash would only
//! add milliseconds of CPU to every request. A fast, preimage-resistant
//! digest is what GitHub, Stripe and the other issuers of random tokens use
//! for the same reason. Lookup is by digest through a unique index, so no
//! secret is ever compared byte by byte in our code.
//!
//! Revocation and caching: a successful check is reused for `KEY_CACHE_MS`
//! (2 s, at most 4 s) before the database is asked again, so a key revoked
//! on any replica stops working on every replica within that time (the
//! issue asks for 5 s) while a busy key costs one query per replica every
//! two seconds rather than one per request. Unknown keys are cached for
//! the same time, so a flood of bad keys does not become a flood of
//! queries. While the database is unreachable, a key that was valid within
//! `KEY_STALE_SECS` is still accepted (stale-if-error), so dispatch and
//! metering ride out a short outage; a revocation cannot be written during
//! an outage anyway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::keys::ApiKey;
use crate::store::{Store, StoreError};

/// What every key starts with.
pub const KEY_PREFIX: &str = "hg_";
const KEY_HEX: usize = 64;
/// Characters of a key shown in listings (`hg_` + 8 hex digits).
pub const SHOWN: usize = KEY_PREFIX.len() + 8;
/// Entries the cache holds before it starts over (a bound on memory when
/// many distinct bad keys arrive).
const CACHE_MAX: usize = 10_000;

/// A new key: the secret (to print once), its shown prefix and its digest.
pub struct NewKey {
    pub plaintext: String,
    pub prefix: String,
    pub hash: String,
}

/// Generates a key from the OS-seeded generator.
pub fn generate() -> NewKey {
    let mut bytes = [0u8; KEY_HEX / 2];
    rand::rng().fill_bytes(&mut bytes);
    let plaintext = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    NewKey {
        prefix: plaintext[..SHOWN].to_owned(),
        hash: digest(&plaintext),
        plaintext,
    }
}

/// The stored form of a key: lower-case hex SHA-256.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Why a request is not authenticated (all 401 except `Unavailable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send Authorization: Bearer <key>")]
    Missing,
    #[error("malformed API key: expected Authorization: Bearer hg_<64 hex digits>")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
    #[error("API key revoked")]
    Revoked,
    /// The database cannot say (503).
    #[error("cannot check the API key: {0}")]
    Unavailable(String),
}

/// The key a request authenticated with (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: i64,
    pub name: String,
    pub prefix: String,
}

/// The bearer token of an `Authorization` header value, if well-formed.
pub fn bearer(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let raw = header.ok_or(AuthError::Missing)?;
    let raw = std::str::from_utf8(raw).map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = raw.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    let well_formed = token.len() == KEY_PREFIX.len() + KEY_HEX
        && token.starts_with(KEY_PREFIX)
        && token[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if well_formed {
        Ok(token)
    } else {
        Err(AuthError::Malformed)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: Option<ApiKey>,
    /// The last time the database was asked (successfully or not).
    checked: Instant,
    /// The last time the database answered for this key.
    confirmed: Instant,
}

/// Recent answers of the database about key digests.
#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    stale: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl KeyCache {
    pub fn new(ttl: Duration, stale: Duration) -> KeyCache {
        KeyCache {
            ttl,
            stale,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lookup_cached(&self, hash: &str) -> Option<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(hash).cloned()
    }

    fn remember(&self, hash: String, key: Option<ApiKey>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_MAX && !entries.contains_key(&hash) {
            entries.clear();
        }
        let now = Instant::now();
        entries.insert(
            hash,
            Entry {
                key,
                checked: now,
                confirmed: now,
            },
        );
    }

    /// The database could not be asked: do not ask again for this key
    /// before the cache time is over (every request would wait for the
    /// pool's acquire timeout otherwise).
    fn postpone(&self, hash: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get_mut(hash) {
            e.checked = Instant::now();
        }
    }

    /// Checks `token` (already well-formed) against the cache or the store.
    pub async fn check(
        &self,
        store: Result<&Store, String>,
        token: &str,
    ) -> Result<Caller, AuthError> {
        let hash = digest(token);
        let cached = self.lookup_cached(&hash);
        if let Some(e) = &cached
            && e.checked.elapsed() < self.ttl
        {
            return verdict(e.key.as_ref());
        }
        let answer = match store {
            Ok(store) => store.key_by_hash(&hash).await,
            Err(reason) => Err(StoreError::Unavailable(reason)),
        };
        match answer {
            Ok(key) => {
                let v = verdict(key.as_ref());
                self.remember(hash, key);
                v
            }
            Err(e) => match cached {
                Some(Entry {
                    key: Some(key),
                    confirmed,
                    ..
                }) if !key.is_revoked() && confirmed.elapsed() < self.stale => {
                    tracing::debug!(error = %e, key = %key.prefix, "database unreachable, accepting a recently valid key");
                    self.postpone(&hash);
                    verdict(Some(&key))
                }
                _ => Err(AuthError::Unavailable(e.to_string())),
            },
        }
    }
}

fn verdict(key: Option<&ApiKey>) -> Result<Caller, AuthError> {
    match key {
        None => Err(AuthError::Unknown),
        Some(k) if k.is_revoked() => Err(AuthError::Revoked),
        Some(k) => Ok(Caller {
            key_id: k.id,
            name: k.name.clone(),
            prefix: k.prefix.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_prefixed() {
        let a = generate();
        let b = generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(a.plaintext.starts_with("hg_") && a.plaintext.len() == 67);
        assert_eq!(a.prefix, &a.plaintext[..11]);
        assert_eq!(a.hash, digest(&a.plaintext));
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(&a.plaintext[3..]));
        assert_eq!(
            bearer(Some(format!("Bearer {}", a.plaintext).as_bytes())),
            Ok(a.plaintext.as_str())
        );
        assert_eq!(
            bearer(Some(format!("bearer  {} ", a.plaintext).as_bytes())),
            Ok(a.plaintext.as_str())
        );
    }

    #[test]
    fn bearer_refuses_what_is_not_a_key() {
        assert_eq!(bearer(None), Err(AuthError::Missing));
        let good = generate().plaintext;
        for bad in [
            "Basic dXNlcjpwdw==".to_owned(),
            "Bearer".to_owned(),
            format!("Token {good}"),
            format!("Bearer {}", &good[..66]),
            format!("Bearer {}", good.to_uppercase()),
            format!("Bearer xx_{}", &good[3..]),
            format!("Bearer {good}0"),
        ] {
            assert_eq!(
                bearer(Some(bad.as_bytes())),
                Err(AuthError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(bearer(Some(b"Bearer \xff")), Err(AuthError::Malformed));
    }
}
