//! Name resolution for discovery, with hickory-resolver.
//!
//! One resolver is built at start-up and asked again on every refresh. It
//! keeps **no cache**: the balancer refreshes on its own interval
//! (`DNS_REFRESH_SECS`) and must see a scale-up on the next refresh, while
//! Docker's embedded DNS answers with a TTL of 600 s. A default hickory
//! cache would honour that TTL and hide new replicas for ten minutes, so the
//! cache holds nothing (size 0) and every TTL is clamped to zero as well.
//!
//! Without `DNS_SERVER` the system configuration applies (`/etc/resolv.conf`:
//! name servers, `search` domains and `ndots`, plus `/etc/hosts`), which is
//! what makes short names such as `api` (Docker Compose), `tasks.api`
//! (Swarm) or `api.default.svc.cluster.local` (a Kubernetes headless
//! Service) resolve the way they do for every other program in the
//! container. With `DNS_SERVER` only that server is asked (UDP, and TCP for
//! truncated answers), with no search list and no hosts file.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::system_conf::read_system_conf;
use hickory_resolver::{ResolverBuilder, TokioResolver};

use super::DiscoveryError;

/// Most addresses taken from one answer. A DNS answer is outside input: a
/// misconfigured zone must not build a ring of a million backends.
pub const MAX_ADDRESSES: usize = 1000;

/// Per-attempt timeout when `DNS_SERVER` names the server (the system
/// configuration brings its own, `options timeout:` in resolv.conf).
const SERVER_TIMEOUT: Duration = Duration::from_secs(2);

/// A resolver that never answers from a cache.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    /// Upper bound on one whole lookup (all attempts, all search names).
    deadline: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// The system resolver, or only `server` when given. `refresh` bounds how
    /// long one lookup may take: a lookup slower than the refresh interval
    /// (but at least 2 s and at most 10 s) counts as failed.
    pub fn new(server: Option<SocketAddr>, refresh: Duration) -> Result<Self, DiscoveryError> {
        let provider = TokioRuntimeProvider::default();
        let builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut ns.connections {
                    conn.port = addr.port();
                }
                let config = ResolverConfig::from_parts(None, Vec::new(), vec![ns]);
                let mut b = TokioResolver::builder_with_config(config, provider);
                let opts = b.options_mut();
                opts.timeout = SERVER_TIMEOUT;
                opts.use_hosts_file = ResolveHosts::Never;
                b
            }
            None => {
                let (config, opts) = read_system_conf().map_err(|e| DiscoveryError::Resolver {
                    reason: format!("cannot use /etc/resolv.conf ({e}); set DNS_SERVER"),
                })?;
                return Self::system(config, opts, refresh);
            }
        };
        Self::build(builder, refresh)
    }

    /// The system configuration as parsed from resolv.conf: its name
    /// servers, `search` list, `ndots`, `timeout` and `attempts` are kept
    /// as they are; only caching and the address families change.
    fn system(
        config: ResolverConfig,
        opts: ResolverOpts,
        refresh: Duration,
    ) -> Result<Self, DiscoveryError> {
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = opts;
        Self::build(builder, refresh)
    }

    fn build(
        mut builder: ResolverBuilder<TokioRuntimeProvider>,
        refresh: Duration,
    ) -> Result<Self, DiscoveryError> {
        no_cache(builder.options_mut());
        let inner = builder.build().map_err(|e| DiscoveryError::Resolver {
            reason: e.to_string(),
        })?;
        Ok(Resolver {
            inner,
            deadline: refresh.clamp(Duration::from_secs(2), Duration::from_secs(10)),
        })
    }

    /// Every usable address `name` has now (A and AAAA), sorted, without
    /// duplicates. No records or no such name is [`DiscoveryError::Empty`].
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        let answer = tokio::time::timeout(self.deadline, self.inner.lookup_ip(name))
            .await
            .map_err(|_| lookup_error(name, format!("timed out after {:?}", self.deadline)))?
            .map_err(|e| classify(name, &e))?;
        let ips = usable(answer.iter());
        if ips.is_empty() {
            return Err(DiscoveryError::Empty(name.to_owned()));
        }
        Ok(ips)
    }
}

/// Options that make the resolver ask the server every time.
fn no_cache(opts: &mut ResolverOpts) {
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Names come from our own configuration, never from an attacker, but an
    // answer for a search-list name must still be the one asked for.
    opts.preserve_intermediates = false;
}

/// Sorted, deduplicated, without addresses nobody can connect to
/// (unspecified, multicast, broadcast, IPv6 link-local without a scope).
pub fn usable(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = ips
        .into_iter()
        .filter(|ip| {
            !ip.is_unspecified()
                && !ip.is_multicast()
                && match ip {
                    IpAddr::V4(v4) => !v4.is_broadcast(),
                    IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Keeps at most [`MAX_ADDRESSES`] of a sorted set; returns how many were cut.
/// The set is sorted first, so every balancer cuts the same ones.
pub fn cap(ips: &mut Vec<IpAddr>) -> usize {
    let cut = ips.len().saturating_sub(MAX_ADDRESSES);
    ips.truncate(MAX_ADDRESSES);
    cut
}

fn lookup_error(name: &str, reason: String) -> DiscoveryError {
    DiscoveryError::Lookup {
        name: name.to_owned(),
        reason,
    }
}

/// A short reason for the status page and the one warning line.
fn classify(name: &str, e: &NetError) -> DiscoveryError {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(_)) => DiscoveryError::Empty(name.to_owned()),
        NetError::Timeout => lookup_error(name, "timed out".into()),
        NetError::Io(io) => lookup_error(name, io.to_string()),
        other => lookup_error(name, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn unusable_answers_are_dropped_and_the_rest_sorted() {
        let got = usable(
            [
                "10.0.0.2",
                "0.0.0.0",
                "224.0.0.1",
                "255.255.255.255",
                "fe80::1",
                "::",
                "fd00::1",
                "10.0.0.1",
                "10.0.0.2",
            ]
            .map(ip),
        );
        assert_eq!(got, ["10.0.0.1", "10.0.0.2", "fd00::1"].map(ip));
    }

    #[test]
    fn a_huge_answer_is_cut_to_the_same_addresses_everywhere() {
        let mut a: Vec<IpAddr> = (0..1500u32)
            .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
            .collect();
        let mut b = a.clone();
        b.reverse();
        let mut b = usable(b);
        assert_eq!(cap(&mut a), 500);
        assert_eq!(cap(&mut b), 500);
        assert_eq!(a, b);
        assert_eq!(a.len(), MAX_ADDRESSES);
    }

    #[test]
    fn no_such_name_is_an_empty_set_and_a_timeout_says_so() {
        use hickory_resolver::net::NoRecords;
        use hickory_resolver::proto::op::{Query, ResponseCode};
        let nx = NetError::from(NoRecords::new(Query::default(), ResponseCode::NXDomain));
        assert!(matches!(classify("api", &nx), DiscoveryError::Empty(n) if n == "api"));
        let e = classify("api", &NetError::Timeout);
        assert!(matches!(e, DiscoveryError::Lookup { .. }));
        assert_eq!(e.to_string(), "lookup of api failed: timed out");
    }

    #[tokio::test]
    async fn docker_and_kubernetes_resolv_conf_keep_search_and_ndots() {
        use hickory_resolver::system_conf::parse_resolv_conf;
        let docker = "nameserver 127.0.0.11\noptions ndots:0\n";
        let k8s = "search default.svc.cluster.local svc.cluster.local cluster.local\n\
                   nameserver 10.96.0.10\noptions ndots:5\n";
        for (text, ndots, search) in [(docker, 0, 0), (k8s, 5, 3)] {
            let (config, opts) = parse_resolv_conf(text).expect("resolv.conf parses");
            assert_eq!(config.search().len(), search);
            let r = Resolver::system(config, opts, Duration::from_secs(60)).expect("resolver");
            let o = r.inner.options();
            assert_eq!(o.ndots, ndots, "{text}");
            assert_eq!(o.cache_size, 0);
            assert_eq!(o.ip_strategy, LookupIpStrategy::Ipv4AndIpv6);
            assert_eq!(r.deadline, Duration::from_secs(10));
        }
    }

    #[tokio::test]
    async fn the_resolver_is_built_without_a_cache() {
        let r = Resolver::new(
            Some("127.0.0.1:1".parse().expect("addr")),
            Duration::from_secs(1),
        )
        .expect("resolver");
        let o = r.inner.options();
        assert_eq!(o.cache_size, 0);
        assert_eq!(o.positive_max_ttl, Some(Duration::ZERO));
        assert_eq!(o.ip_strategy, LookupIpStrategy::Ipv4AndIpv6);
        assert_eq!(r.deadline, Duration::from_secs(2));
    }
}
