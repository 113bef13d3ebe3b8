//! Stale-if-error for the registry's reads (RFC 5861's idea, kept in this
//! process): the last answer this instance read for a request is kept, and
//! while the database is unreachable a request whose last good answer is at
//! most `WORKERS_STALE_SECS` old gets that answer, with an `Age` header
//! saying how old, instead of a 503. A database restart then costs readers
//! the pool's acquire timeout per request, not an error. Writes never take
//! this path: a registration or heartbeat that cannot be stored is a 503.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Distinct requests remembered before the cache starts over (a bound on
/// memory when many filters are asked for).
const MAX_ENTRIES: usize = 256;

/// Last good answers by request, each with the time it was read.
#[derive(Debug)]
pub struct StaleCache<K> {
    window: Duration,
    entries: Mutex<HashMap<K, (Instant, Bytes)>>,
}

impl<K: Eq + Hash> StaleCache<K> {
    /// Answers are served for `window` after they were read; zero keeps
    /// nothing.
    pub fn new(window: Duration) -> Self {
        StaleCache {
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers `body` as the latest answer for `key`.
    pub fn put(&self, key: K, body: Bytes) {
        self.put_at(key, body, Instant::now());
    }

    fn put_at(&self, key: K, body: Bytes, at: Instant) {
        if self.window.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, (at, body));
    }

    /// The latest answer for `key` and its age, if it is within the window.
    pub fn get(&self, key: &K) -> Option<(Duration, Bytes)> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &K, now: Instant) -> Option<(Duration, Bytes)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, body) = entries.get(key)?;
        let age = now.saturating_duration_since(*at);
        (age <= self.window).then(|| (age, body.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_served_within_its_window_only() {
        let cache = StaleCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        cache.put_at("all", Bytes::from_static(b"[1]"), t0);
        let (age, body) = cache.get_at(&"all", t0 + Duration::from_secs(30)).unwrap();
        assert_eq!((age, &body[..]), (Duration::from_secs(30), &b"[1]"[..]));
        assert!(cache.get_at(&"all", t0 + Duration::from_secs(31)).is_none());
        assert!(cache.get_at(&"other", t0).is_none());
    }

    #[test]
    fn the_latest_answer_wins_and_zero_keeps_nothing() {
        let cache = StaleCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        cache.put_at(1, Bytes::from_static(b"old"), t0);
        cache.put_at(1, Bytes::from_static(b"new"), t0 + Duration::from_secs(1));
        let (age, body) = cache.get_at(&1, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!((age, &body[..]), (Duration::from_secs(1), &b"new"[..]));

        let off = StaleCache::new(Duration::ZERO);
        off.put(1, Bytes::from_static(b"x"));
        assert!(off.get(&1).is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let cache = StaleCache::new(Duration::from_secs(30));
        for k in 0..MAX_ENTRIES * 3 {
            cache.put(k, Bytes::new());
        }
        let n = cache.entries.lock().unwrap().len();
        assert!(n <= MAX_ENTRIES, "{n}");
        assert!(cache.get(&(MAX_ENTRIES * 3 - 1)).is_some());
    }
}
