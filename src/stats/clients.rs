//! The recently seen clients (`/lb/clients`): each client key with the
//! backend its latest request went to, how many requests it sent and when
//! it was last seen, and its open `Upgrade` tunnels.
//!
//! Bounded: an LRU of `CLIENT_TABLE_SIZE` keys per worker thread, so a
//! request updates only its own thread's table (a mutex nobody else takes
//! except a reader of `/lb/clients`, held for one lookup). A client whose
//! connections landed on several threads is in several tables; the reader
//! merges them and keeps the `CLIENT_TABLE_SIZE` most recent, which are
//! exactly the most recent keys overall (each is among the most recent of
//! the thread that saw it last). Memory is therefore at most (worker
//! threads + 1) x `CLIENT_TABLE_SIZE` entries of about 100 bytes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use lru::LruCache;

use super::shard::PerThread;
use crate::backend::Backend;

#[derive(Debug)]
struct Seen {
    backend: Weak<Backend>,
    requests: u64,
    last: Instant,
    tunnels: u32,
}

/// One thread's table, made at the first request that thread serves.
type Shard = Mutex<Option<LruCache<IpAddr, Seen>>>;

/// The table; disabled (nothing kept) when its size is 0.
#[derive(Debug)]
pub struct ClientTable {
    size: usize,
    shards: Option<PerThread<Shard>>,
}

/// One client as `/lb/clients` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Client {
    pub ip: IpAddr,
    /// The backend its latest request went to (`None`: since removed).
    pub backend: Option<String>,
    pub requests: u64,
    #[serde(skip)]
    pub last: Instant,
    pub tunnels: u32,
}

impl ClientTable {
    pub fn new(size: usize) -> Self {
        ClientTable {
            size,
            shards: (size > 0).then(PerThread::new),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn with_local<R>(&self, f: impl FnOnce(&mut LruCache<IpAddr, Seen>) -> R) -> Option<R> {
        let cap = NonZeroUsize::new(self.size)?;
        let shard = self.shards.as_ref()?.local();
        let mut guard = shard.lock().unwrap_or_else(|p| p.into_inner());
        // Allocated at the first request a thread serves, not up front.
        Some(f(guard.get_or_insert_with(|| LruCache::new(cap))))
    }

    /// `client`'s request went to `backend` at `now`.
    #[inline]
    pub fn seen(&self, client: IpAddr, backend: &Arc<Backend>, now: Instant) {
        self.with_local(|table| match table.get_mut(&client) {
            Some(seen) => {
                seen.requests += 1;
                seen.last = now;
                if seen.backend.as_ptr() != Arc::as_ptr(backend) {
                    seen.backend = Arc::downgrade(backend);
                }
            }
            None => {
                table.put(
                    client,
                    Seen {
                        backend: Arc::downgrade(backend),
                        requests: 1,
                        last: now,
                        tunnels: 0,
                    },
                );
            }
        });
    }

    /// A tunnel of `client`'s opened (`true`) or closed.
    pub fn tunnel(&self, client: IpAddr, open: bool) {
        self.with_local(|table| {
            if let Some(seen) = table.peek_mut(&client) {
                seen.tunnels = if open {
                    seen.tunnels + 1
                } else {
                    seen.tunnels.saturating_sub(1)
                };
            }
        });
    }

    /// The most recent clients first, at most the table's size.
    pub fn recent(&self) -> Vec<Client> {
        let Some(shards) = &self.shards else {
            return Vec::new();
        };
        let mut merged: HashMap<IpAddr, Client> = HashMap::new();
        for shard in shards.iter() {
            // Copied out under the lock; names are looked up after it.
            let entries: Vec<(IpAddr, Weak<Backend>, u64, Instant, u32)> = {
                let guard = shard.lock().unwrap_or_else(|p| p.into_inner());
                let Some(table) = guard.as_ref() else {
                    continue;
                };
                table
                    .iter()
                    .map(|(ip, s)| (*ip, s.backend.clone(), s.requests, s.last, s.tunnels))
                    .collect()
            };
            for (ip, backend, requests, last, tunnels) in entries {
                let name = backend.upgrade().map(|b| b.name().to_owned());
                let c = merged.entry(ip).or_insert_with(|| Client {
                    ip,
                    backend: None,
                    requests: 0,
                    last,
                    tunnels: 0,
                });
                c.requests += requests;
                c.tunnels += tunnels;
                if last >= c.last || c.backend.is_none() {
                    c.last = c.last.max(last);
                    if name.is_some() {
                        c.backend = name;
                    }
                }
            }
        }
        let mut all: Vec<Client> = merged.into_values().collect();
        all.sort_by(|a, b| b.last.cmp(&a.last).then(a.ip.cmp(&b.ip)));
        all.truncate(self.size);
        all
    }

    /// Keys held across the threads' tables (what memory the table uses).
    pub fn held(&self) -> usize {
        let Some(shards) = &self.shards else { return 0 };
        shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map_or(0, LruCache::len)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Endpoint;
    use crate::upstream::ConnPool;
    use std::time::Duration;

    fn backend(port: u16) -> Arc<Backend> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let pool = ConnPool::new(addr, 0, Duration::from_secs(1), Duration::from_secs(1));
        Arc::new(Backend::new(Endpoint::from_addr(addr, 1), pool))
    }

    #[test]
    fn the_table_keeps_the_most_recent_clients_only() {
        let table = ClientTable::new(100);
        let b = backend(1);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            table.seen(ip, &b, t0 + Duration::from_millis(u64::from(i)));
        }
        let ip = IpAddr::from(999u32.to_be_bytes());
        table.seen(ip, &b, t0 + Duration::from_secs(5));
        let recent = table.recent();
        assert_eq!(recent.len(), 100);
        assert!(table.held() <= 100);
        assert_eq!(recent[0].ip, ip);
        assert_eq!(recent[0].requests, 2);
        assert_eq!(recent[0].backend.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(recent[99].ip, IpAddr::from(900u32.to_be_bytes()));
        table.tunnel(ip, true);
        assert_eq!(table.recent()[0].tunnels, 1);
        assert!(ClientTable::new(0).recent().is_empty());
    }
}
