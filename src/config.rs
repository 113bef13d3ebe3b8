//! Typed configuration, parsed once at start-up.
//!
//! Only binaries read the process environment: they build an [`Env`] (after
//! `dotenvy` has loaded `.env`) and hand it to a `from_env` constructor. Tests
//! build an [`Env`] from pairs, so no test ever mutates the process
//! environment. Every variable is named in exactly one place, and a bad value
//! comes back as a [`ConfigError`] that names the variable, so `main` can print
//! it and exit non-zero instead of running with a guess.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use crate::backend::BackendSpec;
pub use crate::health::outlier::OutlierConfig;
use crate::select::{SelectOptions, Strategy};

/// A bad configuration value: which variable, what it held, what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(var: &'static str, value: &str, reason: impl Display) -> Self {
        ConfigError {
            var,
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A snapshot of environment variables. Empty values count as unset, the way
/// `.env` files and compose files usually mean them.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The process environment (call `dotenvy::dotenv()` first to merge `.env`).
    ///
    /// A variable that is not valid UTF-8 does not panic the process (as
    /// `std::env::vars` would): its value is read lossily, so a setting
    /// that parses it fails with an error naming it; a name that is not
    /// UTF-8 is no setting of ours and is left out.
    pub fn from_process() -> Self {
        Env(std::env::vars_os()
            .filter_map(|(k, v)| {
                let v = v.to_string_lossy().into_owned();
                Some((k.into_string().ok()?, v))
            })
            .collect())
    }

    /// An environment made of the given pairs only (tests, embedding).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    /// Sets one variable (used by command-line flags that mirror a variable).
    pub fn set(&mut self, var: &str, value: impl Into<String>) {
        self.0.insert(var.to_owned(), value.into());
    }

    /// The raw value, trimmed; `None` when unset or empty.
    pub fn raw(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// Parses `var` with `FromStr`, or returns `default` when it is unset.
    pub fn parse_or<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.parse_opt(var).map(|v| v.unwrap_or(default))
    }

    /// Parses `var` with `FromStr`; `None` when it is unset.
    pub fn parse_opt<T>(&self, var: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(var) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| ConfigError::new(var, v, e)),
        }
    }

    /// A count or size that must lie in `min..=max`.
    pub fn range_or<T>(
        &self,
        var: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let v = self.parse_or(var, default)?;
        if v < min || v > max {
            return Err(ConfigError::new(
                var,
                &v.to_string(),
                format_args!("must be between {min} and {max}"),
            ));
        }
        Ok(v)
    }

    /// A duration given in whole seconds, at least one.
    pub fn secs_or(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.range_or(var, default, 1, 86_400)
            .map(Duration::from_secs)
    }

    /// A duration given in milliseconds, at least one.
    pub fn millis_or(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.range_or(var, default, 1, 3_600_000)
            .map(Duration::from_millis)
    }

    /// A TCP port, 1..=65535.
    pub fn port_or(&self, var: &'static str, default: u16) -> Result<u16, ConfigError> {
        self.range_or(var, default, 1, u16::MAX)
    }

    /// Checks that `count` ports from `start` stay below 65536. The error
    /// names the variable the user set (the count when both or neither are
    /// set), never one left at its default.
    pub fn port_run(
        &self,
        start_var: &'static str,
        start: u16,
        count_var: &'static str,
        count: u16,
    ) -> Result<(), ConfigError> {
        if u32::from(start) + u32::from(count.max(1)) - 1 <= u32::from(u16::MAX) {
            return Ok(());
        }
        let (var, value) = if self.raw(count_var).is_none() && self.raw(start_var).is_some() {
            (start_var, start.to_string())
        } else {
            (count_var, count.to_string())
        };
        Err(ConfigError::new(
            var,
            &value,
            format_args!("{count} ports from {start} run past port 65535"),
        ))
    }

    /// A comma-separated list of CIDR blocks; a bare address means a single host.
    pub fn cidrs(&self, var: &'static str, default: &str) -> Result<Vec<IpNet>, ConfigError> {
        let raw = self.raw(var).unwrap_or(default);
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError::new(
                            var,
                            raw,
                            format_args!("{s:?} is not a CIDR block or IP address"),
                        )
                    })
            })
            .collect()
    }
}

/// Where the balancer's backends come from; the first that is configured wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryConfig {
    /// `BACKEND_HOSTS`: a fixed list. Entries that are names (`api-1:13004`)
    /// are re-resolved every `refresh`, so a restarted container's new
    /// address is picked up; a list of IP addresses never changes.
    Static {
        backends: Vec<BackendSpec>,
        /// `DNS_REFRESH_SECS`.
        refresh: Duration,
        /// `DNS_SERVER`: resolve names with this server instead of the system resolver.
        server: Option<SocketAddr>,
    },
    /// `BACKEND_DNS` + `BACKEND_PORT`, re-resolved every `DNS_REFRESH_SECS`.
    Dns {
        name: String,
        port: u16,
        refresh: Duration,
        /// `DNS_SERVER`: query this server instead of the system resolver.
        server: Option<SocketAddr>,
    },
    /// `BACKEND_HOST` + `BACKEND_START_PORT` + `BACKEND_COUNT`.
    PortRange {
        host: String,
        start: u16,
        count: u16,
    },
}

impl DiscoveryConfig {
    /// The short name shown on the status page.
    pub fn mode(&self) -> &'static str {
        match self {
            DiscoveryConfig::Static { .. } => "static",
            DiscoveryConfig::Dns { .. } => "dns",
            DiscoveryConfig::PortRange { .. } => "port-range",
        }
    }
}

/// Active health checking (`HEALTH_*`).
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub interval: Duration,
    pub path: String,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

/// Limits and timeouts on every phase of a proxied exchange: the one
/// timeout model both request paths follow. Whose fault a timeout is
/// decides what it blames: a client's slowness (head, body, reading the
/// answer) never counts against a backend.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// `CLIENT_IDLE_TIMEOUT_SECS`: an idle keep-alive client connection,
    /// until the first byte of its next request.
    pub idle_timeout: Duration,
    /// `CLIENT_HEADER_TIMEOUT_SECS`: a whole request head, from its first
    /// byte (408, then close).
    pub header_timeout: Duration,
    /// `CLIENT_BODY_TIMEOUT_SECS`: the longest pause between two reads of a
    /// request body (408, then close; the client's fault).
    pub client_body_timeout: Duration,
    /// `CLIENT_WRITE_TIMEOUT_SECS`: the longest a client may leave the
    /// answer unread before its connection (and the backend's) is closed.
    pub client_write_timeout: Duration,
    /// `CONNECT_TIMEOUT_MS`: opening a TCP connection to a backend.
    pub connect_timeout: Duration,
    /// `CONNECT_FAILOVER_MS`: how long a connect may take before the
    /// request gives way to the next candidate, when one remains (the last
    /// candidate gets all of `connect_timeout`). At most `connect_timeout`.
    pub connect_failover: Duration,
    /// `UPSTREAM_TIMEOUT_SECS`: from the request's last byte sent to the
    /// backend until the response head is complete (504).
    pub upstream_timeout: Duration,
    /// `UPSTREAM_BODY_TIMEOUT_SECS`: the longest pause between two reads of
    /// a response body (the client connection is cut off).
    pub upstream_body_timeout: Duration,
    /// `TUNNEL_IDLE_TIMEOUT_SECS`: an `Upgrade` tunnel (WebSocket and the
    /// like) in which no byte moved either way for this long is closed
    /// (HAProxy's `timeout tunnel`).
    pub tunnel_idle_timeout: Duration,
    /// Idle pooled connections kept per backend.
    pub pool_max_idle: usize,
    /// Time an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
}

/// `LB_STRATEGY` and its knobs.
#[derive(Debug, Clone)]
pub struct StrategyConfig {
    pub strategy: Strategy,
    pub select: SelectOptions,
    /// `QUEUE_PATH`: least-queue's endpoint on every backend.
    pub queue_path: String,
    /// `QUEUE_POLL_MS`: how often least-queue polls it.
    pub queue_poll: Duration,
}

/// Everything the balancer needs, parsed and checked.
#[derive(Debug, Clone)]
pub struct BalancerConfig {
    pub listen: SocketAddr,
    /// `BALANCER_REUSE_PORT` (false): listen with `SO_REUSEPORT`, so a new
    /// balancer can start on the port before the old one drains.
    pub reuse_port: bool,
    pub discovery: DiscoveryConfig,
    pub health: HealthConfig,
    pub limits: ProxyLimits,
    pub strategy: StrategyConfig,
    pub outlier: OutlierConfig,
    pub trusted_proxies: Vec<IpNet>,
    /// `MAX_CLIENT_CONNECTIONS`: open client connections at most (`None`:
    /// sized from the file-descriptor limit at start-up, see
    /// [`crate::server`]).
    pub max_client_connections: Option<usize>,
    pub shutdown_grace: Duration,
    /// `WORKER_THREADS`: connection worker threads, each a single-threaded
    /// event loop (0 = one per core); see [`crate::threads`].
    pub worker_threads: usize,
    /// Runtime management, the client table and the rate limiter.
    pub ops: OpsConfig,
}

/// The operator's side of the balancer: the admin token, where overrides
/// are kept, the client table and the rate limiter.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// `LB_ADMIN_TOKEN`: the bearer token of the management API (`None`:
    /// every mutating call answers 403 and says how to enable it).
    pub admin_token: Option<Secret>,
    /// `LB_STATE_FILE`: where runtime overrides are written (atomically)
    /// and read back at start-up.
    pub state_file: Option<std::path::PathBuf>,
    /// `CLIENT_TABLE_SIZE`: recently seen client keys kept for `/lb/clients`.
    pub client_table_size: usize,
    /// `RATE_LIMIT_RPS` / `RATE_LIMIT_BURST`; `None`: no rate limiting.
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket per client key: `rps` tokens a second, `burst` at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rps: f64,
    pub burst: u32,
}

/// A secret from the environment: compared, never printed (`Debug` and
/// every status page show only that it is set).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A secret made in code (tests, embedding).
    pub fn for_tests(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The shortest admin token accepted: long enough that guessing is no
/// strategy, short enough for `openssl rand -hex 16`.
pub const MIN_TOKEN_LEN: usize = 16;

fn ops_from_env(env: &Env) -> Result<OpsConfig, ConfigError> {
    let admin_token = match env.raw("LB_ADMIN_TOKEN") {
        None => None,
        // The value itself is never echoed back, not even in an error.
        Some(t) if t.len() < MIN_TOKEN_LEN => {
            return Err(ConfigError::new(
                "LB_ADMIN_TOKEN",
                "(hidden)",
                format_args!(
                    "must be at least {MIN_TOKEN_LEN} characters (e.g. openssl rand -hex 24)"
                ),
            ));
        }
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(ConfigError::new(
                "LB_ADMIN_TOKEN",
                "(hidden)",
                "must be printable ASCII without spaces (it travels in an Authorization header)",
            ));
        }
        Some(t) => Some(Secret(t.to_owned())),
    };
    let rps: f64 = env.parse_or("RATE_LIMIT_RPS", 0.0)?;
    if !rps.is_finite() || !(0.0..=1_000_000.0).contains(&rps) {
        return Err(ConfigError::new(
            "RATE_LIMIT_RPS",
            &rps.to_string(),
            "must be between 0 (off) and 1000000 requests per second",
        ));
    }
    if rps > 0.0 && rps < 0.001 {
        return Err(ConfigError::new(
            "RATE_LIMIT_RPS",
            &rps.to_string(),
            "must be 0 (off) or at least 0.001",
        ));
    }
    let burst: Option<u32> = env.parse_opt("RATE_LIMIT_BURST")?;
    let rate_limit = match (rps > 0.0, burst) {
        (false, Some(b)) => {
            return Err(ConfigError::new(
                "RATE_LIMIT_BURST",
                &b.to_string(),
                "needs RATE_LIMIT_RPS (rate limiting is off without it)",
            ));
        }
        (false, None) => None,
        (true, Some(0)) => {
            return Err(ConfigError::new(
                "RATE_LIMIT_BURST",
                "0",
                "must be at least 1",
            ));
        }
        (true, burst) => Some(RateLimit {
            rps,
            burst: burst.unwrap_or_else(|| rps.ceil().clamp(1.0, u32::MAX as f64) as u32),
        }),
    };
    Ok(OpsConfig {
        admin_token,
        state_file: env.raw("LB_STATE_FILE").map(std::path::PathBuf::from),
        client_table_size: env.range_or("CLIENT_TABLE_SIZE", 10_000, 0, 1_000_000)?,
        rate_limit,
    })
}

impl BalancerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let host: IpAddr = env.parse_or("BALANCER_HOST", IpAddr::from([0, 0, 0, 0]))?;
        let port = env.port_or("BALANCER_PORT", 13003)?;
        let connect_timeout = env.millis_or("CONNECT_TIMEOUT_MS", 2_000)?;
        Ok(BalancerConfig {
            listen: SocketAddr::new(host, port),
            reuse_port: env.parse_or("BALANCER_REUSE_PORT", false)?,
            discovery: discovery_from_env(env)?,
            health: HealthConfig {
                interval: env.secs_or("HEALTH_INTERVAL_SECS", 30)?,
                path: health_path(env)?,
                timeout: env.millis_or("HEALTH_TIMEOUT_MS", 2_000)?,
                rise: env.range_or("HEALTH_RISE", 2, 1, 100)?,
                fall: env.range_or("HEALTH_FALL", 2, 1, 100)?,
            },
            limits: ProxyLimits {
                max_header_bytes: env.range_or(
                    "MAX_HEADER_BYTES",
                    64 * 1024,
                    8 * 1024,
                    1024 * 1024,
                )?,
                idle_timeout: env.secs_or("CLIENT_IDLE_TIMEOUT_SECS", 60)?,
                header_timeout: env.secs_or("CLIENT_HEADER_TIMEOUT_SECS", 10)?,
                client_body_timeout: env.secs_or("CLIENT_BODY_TIMEOUT_SECS", 30)?,
                client_write_timeout: env.secs_or("CLIENT_WRITE_TIMEOUT_SECS", 60)?,
                connect_timeout,
                connect_failover: connect_failover(env, connect_timeout)?,
                upstream_timeout: env.secs_or("UPSTREAM_TIMEOUT_SECS", 60)?,
                upstream_body_timeout: env.secs_or("UPSTREAM_BODY_TIMEOUT_SECS", 60)?,
                tunnel_idle_timeout: env.secs_or("TUNNEL_IDLE_TIMEOUT_SECS", 3600)?,
                pool_max_idle: env.range_or("POOL_MAX_IDLE", 256, 0, 100_000)?,
                pool_idle_timeout: env.secs_or("POOL_IDLE_TIMEOUT_SECS", 30)?,
            },
            strategy: strategy_from_env(env)?,
            outlier: OutlierConfig {
                consecutive_failures: env.range_or("OUTLIER_CONSECUTIVE_FAILURES", 5, 1, 1000)?,
                base_ejection: env.secs_or("OUTLIER_BASE_EJECTION_SECS", 30)?,
                max_ejection: env.secs_or("OUTLIER_MAX_EJECTION_SECS", 300)?,
                max_ejection_percent: env.range_or("OUTLIER_MAX_EJECTION_PERCENT", 50, 0, 100)?,
                panic_threshold_percent: env.range_or("PANIC_THRESHOLD_PERCENT", 50, 0, 100)?,
            },
            trusted_proxies: env.cidrs("TRUSTED_PROXIES", "")?,
            max_client_connections: env
                .parse_opt::<usize>("MAX_CLIENT_CONNECTIONS")?
                .map(|n| {
                    if n == 0 {
                        Err(ConfigError::new(
                            "MAX_CLIENT_CONNECTIONS",
                            "0",
                            "must be at least 1",
                        ))
                    } else {
                        Ok(n)
                    }
                })
                .transpose()?,
            shutdown_grace: env.secs_or("SHUTDOWN_GRACE_SECS", 30)?,
            worker_threads: env.range_or("WORKER_THREADS", 0, 0, 1024)?,
            ops: ops_from_env(env)?,
        })
    }
}

/// `CONNECT_FAILOVER_MS`: 250 by default (or `CONNECT_TIMEOUT_MS`, when
/// that is shorter); set above `CONNECT_TIMEOUT_MS`, an error.
fn connect_failover(env: &Env, connect_timeout: Duration) -> Result<Duration, ConfigError> {
    let default = connect_timeout.min(Duration::from_millis(250));
    let failover = env.millis_or("CONNECT_FAILOVER_MS", default.as_millis() as u64)?;
    if failover > connect_timeout {
        return Err(ConfigError::new(
            "CONNECT_FAILOVER_MS",
            &failover.as_millis().to_string(),
            format!(
                "must not exceed CONNECT_TIMEOUT_MS ({} ms)",
                connect_timeout.as_millis()
            ),
        ));
    }
    Ok(failover)
}

fn health_path(env: &Env) -> Result<String, ConfigError> {
    absolute_path(env, "HEALTH_PATH", "/health")
}

/// A request path to send to backends (`HEALTH_PATH`, `QUEUE_PATH`).
fn absolute_path(env: &Env, var: &'static str, default: &str) -> Result<String, ConfigError> {
    let path = env.raw(var).unwrap_or(default);
    if !path.starts_with('/') || path.parse::<hyper::Uri>().is_err() {
        return Err(ConfigError::new(
            var,
            path,
            format_args!("must be an absolute path such as {default}"),
        ));
    }
    Ok(path.to_owned())
}

fn strategy_from_env(env: &Env) -> Result<StrategyConfig, ConfigError> {
    let factor: f64 = env.parse_or("HASH_BALANCE_FACTOR", 1.25)?;
    if !(1.0..=100.0).contains(&factor) {
        return Err(ConfigError::new(
            "HASH_BALANCE_FACTOR",
            &factor.to_string(),
            "must be between 1.0 and 100 (1.25 = 125% of the mean load)",
        ));
    }
    Ok(StrategyConfig {
        strategy: env.parse_or("LB_STRATEGY", Strategy::Maglev)?,
        select: SelectOptions {
            hash_balance_factor: factor,
        },
        queue_path: absolute_path(env, "QUEUE_PATH", "/api/queue")?,
        queue_poll: env.millis_or("QUEUE_POLL_MS", 1_000)?,
    })
}

fn discovery_from_env(env: &Env) -> Result<DiscoveryConfig, ConfigError> {
    if let Some(hosts) = env.raw("BACKEND_HOSTS") {
        let specs = hosts
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<BackendSpec>()
                    .map_err(|e| ConfigError::new("BACKEND_HOSTS", hosts, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if specs.is_empty() {
            return Err(ConfigError::new("BACKEND_HOSTS", hosts, "lists no backend"));
        }
        return Ok(DiscoveryConfig::Static {
            backends: specs,
            refresh: env.secs_or("DNS_REFRESH_SECS", 60)?,
            server: env.parse_opt("DNS_SERVER")?,
        });
    }
    if let Some(name) = env.raw("BACKEND_DNS") {
        if name.contains(['/', ' ', ':']) {
            return Err(ConfigError::new(
                "BACKEND_DNS",
                name,
                "must be a DNS name such as api or tasks.api",
            ));
        }
        return Ok(DiscoveryConfig::Dns {
            name: name.to_owned(),
            port: env.port_or("BACKEND_PORT", 13004)?,
            refresh: env.secs_or("DNS_REFRESH_SECS", 60)?,
            server: env.parse_opt("DNS_SERVER")?,
        });
    }
    let host = env.raw("BACKEND_HOST").unwrap_or("127.0.0.1").to_owned();
    let start = env.port_or("BACKEND_START_PORT", 13004)?;
    let count = env.range_or("BACKEND_COUNT", 5, 1, 1000)?;
    env.port_run("BACKEND_START_PORT", start, "BACKEND_COUNT", count)?;
    Ok(DiscoveryConfig::PortRange { host, start, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<BalancerConfig, ConfigError> {
        BalancerConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = cfg(&[]).expect("defaults parse");
        assert_eq!(c.listen, "0.0.0.0:13003".parse().unwrap());
        assert_eq!(
            c.discovery,
            DiscoveryConfig::PortRange {
                host: "127.0.0.1".into(),
                start: 13004,
                count: 5
            }
        );
        assert_eq!(c.health.interval, Duration::from_secs(30));
        assert_eq!(c.health.path, "/health");
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.limits.tunnel_idle_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn reuse_port_is_off_unless_asked_for() {
        assert!(!cfg(&[]).unwrap().reuse_port);
        assert!(cfg(&[("BALANCER_REUSE_PORT", "true")]).unwrap().reuse_port);
        let err = cfg(&[("BALANCER_REUSE_PORT", "yes")]).unwrap_err();
        assert_eq!(err.var, "BALANCER_REUSE_PORT", "{err}");
    }

    #[test]
    fn the_tunnel_idle_timeout_is_read_in_seconds() {
        let c = cfg(&[("TUNNEL_IDLE_TIMEOUT_SECS", "90")]).expect("valid config");
        assert_eq!(c.limits.tunnel_idle_timeout, Duration::from_secs(90));
    }

    #[test]
    fn first_configured_discovery_wins() {
        let c = cfg(&[
            ("BACKEND_HOSTS", "10.0.0.1:1,10.0.0.2:2"),
            ("BACKEND_DNS", "api"),
        ])
        .unwrap();
        assert_eq!(c.discovery.mode(), "static");
        let c = cfg(&[
            ("BACKEND_DNS", "api"),
            ("BACKEND_PORT", "8080"),
            ("DNS_SERVER", "127.0.0.1:5353"),
        ])
        .unwrap();
        assert_eq!(
            c.discovery,
            DiscoveryConfig::Dns {
                name: "api".into(),
                port: 8080,
                refresh: Duration::from_secs(60),
                server: Some("127.0.0.1:5353".parse().unwrap()),
            }
        );
    }

    #[test]
    fn a_static_list_takes_the_dns_refresh_and_server() {
        let c = cfg(&[
            ("BACKEND_HOSTS", "api-1:13004"),
            ("DNS_REFRESH_SECS", "5"),
            ("DNS_SERVER", "127.0.0.1:5353"),
        ])
        .expect("valid config");
        let DiscoveryConfig::Static {
            backends,
            refresh,
            server,
        } = c.discovery
        else {
            panic!("static expected");
        };
        assert_eq!(backends.len(), 1);
        assert_eq!(refresh, Duration::from_secs(5));
        assert_eq!(server, Some("127.0.0.1:5353".parse().expect("addr")));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("BALANCER_PORT", "70000"),
            ("BALANCER_PORT", "http"),
            ("BALANCER_HOST", "not-an-ip"),
            ("HEALTH_INTERVAL_SECS", "0"),
            ("HEALTH_INTERVAL_SECS", "-3"),
            ("HEALTH_PATH", "health"),
            ("TRUSTED_PROXIES", "10.0.0.0/8,nonsense"),
            ("BACKEND_HOSTS", "10.0.0.1"),
            ("BACKEND_HOSTS", "10.0.0.1:13004=x"),
            ("DNS_SERVER", "localhost"),
            ("BACKEND_COUNT", "0"),
            ("BACKEND_START_PORT", "65535"),
            ("LB_STRATEGY", "fastest"),
            ("HASH_BALANCE_FACTOR", "0.5"),
            ("QUEUE_PATH", "api/queue"),
            ("OUTLIER_MAX_EJECTION_PERCENT", "101"),
            ("CLIENT_HEADER_TIMEOUT_SECS", "0"),
            ("MAX_CLIENT_CONNECTIONS", "0"),
            ("LB_ADMIN_TOKEN", "short"),
            ("LB_ADMIN_TOKEN", "has a space in it, long enough"),
            ("CLIENT_TABLE_SIZE", "-1"),
            ("RATE_LIMIT_RPS", "fast"),
            ("RATE_LIMIT_RPS", "-1"),
            ("RATE_LIMIT_BURST", "10"),
            ("TUNNEL_IDLE_TIMEOUT_SECS", "0"),
            ("TUNNEL_IDLE_TIMEOUT_SECS", "1h"),
            ("TUNNEL_IDLE_TIMEOUT_SECS", "86401"),
        ] {
            let mut pairs = vec![(var, value)];
            if var == "DNS_SERVER" {
                pairs.push(("BACKEND_DNS", "api"));
            }
            let err = cfg(&pairs).expect_err(&format!("{var}={value} must be refused"));
            assert_eq!(err.var, var, "{err}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn ops_defaults_and_the_token_is_never_echoed() {
        let c = cfg(&[]).unwrap();
        assert!(c.ops.admin_token.is_none() && c.ops.rate_limit.is_none());
        assert_eq!(c.ops.client_table_size, 10_000);
        let c = cfg(&[("RATE_LIMIT_RPS", "2.5")]).unwrap();
        assert_eq!(c.ops.rate_limit, Some(RateLimit { rps: 2.5, burst: 3 }));
        let c = cfg(&[("RATE_LIMIT_RPS", "10"), ("RATE_LIMIT_BURST", "40")]).unwrap();
        assert_eq!(
            c.ops.rate_limit,
            Some(RateLimit {
                rps: 10.0,
                burst: 40
            })
        );
        let token = "s3cret-token-0123456789";
        let c = cfg(&[("LB_ADMIN_TOKEN", token)]).unwrap();
        assert_eq!(c.ops.admin_token.as_ref().map(|t| t.expose()), Some(token));
        assert!(!format!("{c:?}").contains(token), "Debug shows the token");
        let err = cfg(&[("LB_ADMIN_TOKEN", "short-secret")]).unwrap_err();
        assert!(!err.to_string().contains("short-secret"), "{err}");
    }

    #[test]
    fn trusted_proxies_accept_cidrs_and_bare_addresses() {
        let c = cfg(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1 ,::1")]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        assert!(c.trusted_proxies[1].contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
    }
}
