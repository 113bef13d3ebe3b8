//! Where backends come from. Every refresh returns the *whole* current set;
//! the balancer diffs it against what it has and keeps the last good set
//! when a refresh fails or comes back empty.
//!
//! Order of precedence (first configured wins):
//!
//! - `BACKEND_HOSTS`, a static list. Each entry keeps its configured
//!   `host:port` as its ring name, so clients stay put when a container is
//!   restarted with a new address; entries that are names are re-resolved
//!   every `DNS_REFRESH_SECS` to pick that new address up. A name that does
//!   not resolve keeps the address it last had (its clients do not move; the
//!   health checks decide whether it still answers) and is warned about once;
//!   a name that has never resolved is left out until it does, so one missing
//!   container cannot keep the balancer from starting. When no name resolves
//!   at all (the DNS server is down), the refresh fails: the balancer keeps
//!   its set and the status page says why.
//! - `BACKEND_DNS` + `BACKEND_PORT`: every A and AAAA record of one name
//!   ([`dns`]), each backend named by its `ip:port`, so every balancer that
//!   sees the same answer builds the same ring.
//! - The port range `BACKEND_HOST:BACKEND_START_PORT..+BACKEND_COUNT`,
//!   handled as a static list.

pub mod dns;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use crate::backend::{BackendSpec, DEFAULT_WEIGHT, Endpoint};
use crate::config::DiscoveryConfig;

/// How often a port range whose host is a name is re-resolved (the range has
/// no interval of its own; this is `DNS_REFRESH_SECS`' default).
const RANGE_REFRESH: Duration = Duration::from_secs(60);

/// Why a refresh produced no usable set (the balancer keeps the last good one).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("lookup of {name} failed: {reason}")]
    Lookup { name: String, reason: String },
    #[error("{0} returned no addresses")]
    Empty(String),
    #[error("cannot set up the DNS resolver: {reason}")]
    Resolver { reason: String },
}

/// What a source is asked for on each refresh.
#[derive(Debug)]
enum Source {
    /// Fixed entries (static list or port range).
    List(Vec<BackendSpec>),
    /// Every address of one name.
    Dns { name: String, port: u16 },
}

/// What the last refreshes learned, so a failing name keeps its address and
/// problems are logged once, not on every refresh.
#[derive(Debug, Default)]
struct Memory {
    /// Last address of each static name that resolved.
    known: HashMap<String, IpAddr>,
    /// Static names failing right now.
    failing: HashSet<String>,
    /// Addresses cut from the last DNS answer.
    cut: usize,
}

/// A configured source of backends.
#[derive(Debug)]
pub struct Discovery {
    mode: &'static str,
    source: Source,
    refresh: Option<Duration>,
    /// Present whenever some name must be resolved.
    resolver: Option<dns::Resolver>,
    memory: Mutex<Memory>,
}

impl Discovery {
    /// Builds the source, and the resolver when there are names to resolve.
    pub fn new(config: DiscoveryConfig) -> Result<Self, DiscoveryError> {
        let mode = config.mode();
        let (source, refresh, server) = match config {
            DiscoveryConfig::Static {
                backends,
                refresh,
                server,
            } => {
                let names = backends.iter().any(|s| s.host.parse::<IpAddr>().is_err());
                let refresh = names.then_some(refresh);
                (Source::List(backends), refresh, server)
            }
            DiscoveryConfig::PortRange { host, start, count } => {
                let refresh = host.parse::<IpAddr>().is_err().then_some(RANGE_REFRESH);
                let specs = (0..count)
                    .filter_map(|i| start.checked_add(i))
                    .map(|port| BackendSpec {
                        host: host.clone(),
                        port,
                        weight: DEFAULT_WEIGHT,
                    })
                    .collect();
                (Source::List(specs), refresh, None)
            }
            DiscoveryConfig::Dns {
                name,
                port,
                refresh,
                server,
            } => (Source::Dns { name, port }, Some(refresh), server),
        };
        let resolver = match refresh {
            Some(every) => Some(dns::Resolver::new(server, every)?),
            None => None,
        };
        Ok(Discovery {
            mode,
            source,
            refresh,
            resolver,
            memory: Mutex::default(),
        })
    }

    /// The short name shown on the status page.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// How often to refresh; `None` when the set can never change (a list of
    /// IP addresses).
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.refresh
    }

    /// The whole current set, sorted and without duplicate names.
    pub async fn discover(&self) -> Result<Vec<Endpoint>, DiscoveryError> {
        let mut set = match &self.source {
            Source::List(specs) => self.resolve_list(specs).await?,
            Source::Dns { name, port } => self.resolve_dns(name, *port).await?,
        };
        set.sort();
        set.dedup_by(|a, b| a.name == b.name);
        Ok(set)
    }

    fn resolver(&self) -> Result<&dns::Resolver, DiscoveryError> {
        self.resolver
            .as_ref()
            .ok_or_else(|| DiscoveryError::Resolver {
                reason: "no resolver was set up".into(),
            })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn resolve_dns(&self, name: &str, port: u16) -> Result<Vec<Endpoint>, DiscoveryError> {
        let mut ips = self.resolver()?.lookup(name).await?;
        let cut = dns::cap(&mut ips);
        let mut memory = self.memory();
        if cut != memory.cut {
            memory.cut = cut;
            if cut > 0 {
                tracing::warn!(
                    name,
                    cut,
                    kept = dns::MAX_ADDRESSES,
                    "DNS answer has too many addresses, using the first ones"
                );
            }
        }
        Ok(ips
            .into_iter()
            .map(|ip| Endpoint::from_addr(SocketAddr::new(ip, port), 1))
            .collect())
    }

    /// Resolves each distinct name once. See the module docs for what a
    /// failing name does.
    async fn resolve_list(&self, specs: &[BackendSpec]) -> Result<Vec<Endpoint>, DiscoveryError> {
        let mut now: HashMap<&str, Result<IpAddr, DiscoveryError>> = HashMap::new();
        for spec in specs {
            let host = spec.host.as_str();
            if host.parse::<IpAddr>().is_err() && !now.contains_key(host) {
                // A name with several addresses is one backend: take the
                // lowest (IPv4 first), which every balancer agrees on.
                let ip = self.resolver()?.lookup(host).await.map(|ips| ips[0]);
                now.insert(host, ip);
            }
        }
        let mut memory = self.memory();
        let mut out = Vec::with_capacity(specs.len());
        let mut first_error = None;
        let mut now_ok = 0;
        for spec in specs {
            let ip = match spec.host.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => match now.remove(spec.host.as_str()) {
                    Some(Ok(ip)) => {
                        now_ok += 1;
                        memory.resolved(&spec.host, ip)
                    }
                    Some(Err(e)) => {
                        let kept = memory.failed(&spec.host, &e);
                        first_error.get_or_insert(e);
                        kept
                    }
                    // A name listed twice (two ports): resolved above.
                    None => memory.known.get(&spec.host).copied(),
                },
            };
            if let Some(ip) = ip {
                out.push(Endpoint {
                    name: spec.to_string(),
                    addr: SocketAddr::new(ip, spec.port),
                    weight: spec.weight,
                });
            }
        }
        // No name resolved at all (the DNS server is down): report it, and
        // the balancer keeps the set it has. Before any name has ever
        // resolved, a list's plain addresses are still served.
        let none_resolved = now_ok == 0;
        match first_error {
            Some(e) if out.is_empty() || (none_resolved && !memory.known.is_empty()) => Err(e),
            _ => Ok(out),
        }
    }
}

impl Memory {
    fn resolved(&mut self, host: &str, ip: IpAddr) -> Option<IpAddr> {
        if self.failing.remove(host) {
            tracing::info!(host, address = %ip, "backend name resolves again");
        }
        self.known.insert(host.to_owned(), ip);
        Some(ip)
    }

    /// The address to keep using for a name that failed to resolve, if any.
    fn failed(&mut self, host: &str, e: &DiscoveryError) -> Option<IpAddr> {
        let kept = self.known.get(host).copied();
        if self.failing.insert(host.to_owned()) {
            match kept {
                Some(ip) => tracing::warn!(
                    host, error = %e, kept = %ip,
                    "backend name does not resolve, keeping its last address"
                ),
                None => tracing::warn!(
                    host, error = %e,
                    "backend name does not resolve, leaving it out until it does"
                ),
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_list(hosts: &str) -> DiscoveryConfig {
        DiscoveryConfig::Static {
            backends: hosts
                .split(',')
                .map(|s| s.parse().expect("test spec"))
                .collect(),
            refresh: Duration::from_secs(7),
            server: None,
        }
    }

    #[tokio::test]
    async fn a_list_of_addresses_never_refreshes_and_needs_no_resolver() {
        let d = Discovery::new(static_list("10.0.0.2:80,10.0.0.1:80=3,[fd00::1]:81"))
            .expect("discovery");
        assert_eq!(d.mode(), "static");
        assert_eq!(d.refresh_interval(), None);
        assert!(d.resolver.is_none());
        let set = d.discover().await.expect("set");
        let names: Vec<&str> = set.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["10.0.0.1:80", "10.0.0.2:80", "[fd00::1]:81"]);
        assert_eq!(set[0].weight, 3);
    }

    #[test]
    fn a_list_with_names_refreshes_on_the_dns_interval() {
        let d = Discovery::new(static_list("10.0.0.1:80,api-1:13004")).expect("discovery");
        assert_eq!(d.refresh_interval(), Some(Duration::from_secs(7)));
        assert!(d.resolver.is_some());
    }

    #[tokio::test]
    async fn a_port_range_of_an_address_is_fixed() {
        let d = Discovery::new(DiscoveryConfig::PortRange {
            host: "127.0.0.1".into(),
            start: 65534,
            count: 5,
        })
        .expect("discovery");
        assert_eq!(d.mode(), "port-range");
        assert_eq!(d.refresh_interval(), None);
        let set = d.discover().await.expect("set");
        let names: Vec<&str> = set.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["127.0.0.1:65534", "127.0.0.1:65535"]);
    }

    #[test]
    fn a_failing_name_keeps_its_last_address_and_warns_once() {
        let mut m = Memory::default();
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        let e = || DiscoveryError::Empty("api-1".into());
        assert_eq!(m.failed("api-1", &e()), None);
        assert_eq!(m.resolved("api-1", ip), Some(ip));
        assert!(m.failing.is_empty());
        assert_eq!(m.failed("api-1", &e()), Some(ip));
        assert_eq!(m.failed("api-1", &e()), Some(ip));
        assert_eq!(m.failing.len(), 1);
    }
}
