//! A backend: what discovery found (`BackendSpec`, `Endpoint`) and the live
//! object the balancer routes to (`Backend`), with its health and counters.
//!
//! A `Backend` lives as long as discovery keeps returning its endpoint; when
//! the set is rebuilt, surviving endpoints keep their `Arc<Backend>`, so health
//! and counters carry across rebuilds without copying.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64};

use crate::health::HealthCell;
use crate::upstream::ConnPool;

/// One entry of `BACKEND_HOSTS`: `host:port`, optionally `=weight`
/// (`api-1:13004`, `10.0.0.7:13004=2`, `[fd00::7]:13004=0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// The weight given to a backend that names none.
pub const DEFAULT_WEIGHT: u32 = 1;
/// The largest weight accepted; keeps the ring table's fill bounded.
pub const MAX_WEIGHT: u32 = 100;

impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, weight) = match s.rsplit_once('=') {
            Some((addr, w)) => {
                let w: u32 = w
                    .trim()
                    .parse()
                    .map_err(|_| format!("{s:?}: weight {w:?} is not a whole number"))?;
                if w > MAX_WEIGHT {
                    return Err(format!("{s:?}: weight must be 0..={MAX_WEIGHT}"));
                }
                (addr.trim(), w)
            }
            None => (s, DEFAULT_WEIGHT),
        };
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
            return Err(format!("{s:?}: bad host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?}: port must be 1..=65535"))?;
        Ok(BackendSpec {
            host: host.to_owned(),
            port,
            weight,
        })
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A resolved backend as discovery reports it.
///
/// `name` is what the hash ring places (the configured `host:port`, or the
/// resolved `ip:port` under DNS discovery): a property of the backend itself,
/// never its position in a list, so every balancer with the same set agrees.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

impl Endpoint {
    /// An endpoint named by its own socket address.
    pub fn from_addr(addr: SocketAddr, weight: u32) -> Self {
        Endpoint {
            name: addr.to_string(),
            addr,
            weight,
        }
    }
}

/// Request counters of one backend, updated lock-free on the request path.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Requests being proxied right now.
    pub active: AtomicU64,
    /// Requests sent to this backend since it appeared.
    pub total: AtomicU64,
    /// Requests that failed here (connect error, reset, timeout, bad answer).
    pub errors: AtomicU64,
    /// Client connections whose latest request went here.
    pub clients: AtomicI64,
}

/// A live backend: address, health, counters and its pool of keep-alive connections.
#[derive(Debug)]
pub struct Backend {
    pub endpoint: Endpoint,
    pub health: HealthCell,
    pub stats: BackendStats,
    pub pool: ConnPool,
}

impl Backend {
    pub fn new(endpoint: Endpoint, pool: ConnPool) -> Self {
        Backend {
            endpoint,
            health: HealthCell::default(),
            stats: BackendStats::default(),
            pool,
        }
    }

    pub fn name(&self) -> &str {
        &self.endpoint.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// Healthy and not draining: may take new clients.
    pub fn is_available(&self) -> bool {
        self.endpoint.weight > 0 && self.health.is_up()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_hosts_ports_and_weights() {
        let s: BackendSpec = "api-1:13004".parse().unwrap();
        assert_eq!((s.host.as_str(), s.port, s.weight), ("api-1", 13004, 1));
        let s: BackendSpec = "10.0.0.7:13004=2".parse().unwrap();
        assert_eq!((s.host.as_str(), s.port, s.weight), ("10.0.0.7", 13004, 2));
        let s: BackendSpec = "[fd00::7]:13004=0".parse().unwrap();
        assert_eq!((s.host.as_str(), s.port, s.weight), ("fd00::7", 13004, 0));
        assert_eq!(s.to_string(), "[fd00::7]:13004");
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "api-1",
            ":13004",
            "api:0",
            "api:70000",
            "api:13004=-1",
            "api:13004=101",
            "a b:1",
        ] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad} must be refused");
        }
    }
}
