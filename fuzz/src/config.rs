//! Configuration from the environment: `hashgate::config::BalancerConfig`,
//! `hashgate::api::ApiConfig` (with the database settings) and
//! `hashgate::cluster::ClusterConfig`, each `from_env(&Env::from_pairs(..))`.
//!
//! Input, as text lines: `NAME=value` (a later line for the same name wins;
//! lines without `=` are left out; bytes that are not UTF-8 become U+FFFD).
//! Each configuration is built from all the pairs together and from each
//! pair alone.
//!
//! Checks:
//! - nothing panics;
//! - an error names a variable the configuration reads, its message says
//!   that name, the variable was set, and without it the error is gone or
//!   names another variable: the variable named is the culprit;
//! - a configuration that parses holds what its types and docs promise
//!   (ranges, non-empty lists, an absolute health path, port ranges that
//!   end by 65535), and takes a number it was given as given;
//! - the cluster launcher's children get settings their own parsers accept;
//! - secrets stay out: a configuration (or error) prints the same with or
//!   without `MYSQL_PASSWORD`, and never shows the `user:password@` part of
//!   a `DATABASE_URL`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use hashgate::api::ApiConfig;
use hashgate::cluster::ClusterConfig;
use hashgate::config::{BalancerConfig, ConfigError, DiscoveryConfig, Env};

pub type Vars = BTreeMap<String, String>;

/// Set for the API when the input does not, so it does not read the
/// machine's host name on every run.
const HOSTNAME: &str = "fuzz-host";

pub fn decode(data: &[u8]) -> Vars {
    let mut vars = Vars::new();
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        vars.insert(
            String::from_utf8_lossy(&line[..eq]).into_owned(),
            String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
        );
    }
    vars
}

pub fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut text = String::new();
    for (name, value) in pairs {
        text.push_str(name);
        text.push('=');
        text.push_str(value);
        text.push('\n');
    }
    text.into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Balancer,
    Api,
    Cluster,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Balancer, Kind::Api, Kind::Cluster];
}

enum Config {
    Balancer(BalancerConfig),
    Api(ApiConfig),
    Cluster(ClusterConfig),
}

fn parse(kind: Kind, vars: &Vars) -> Result<Config, ConfigError> {
    let mut env = Env::from_pairs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    match kind {
        Kind::Balancer => BalancerConfig::from_env(&env).map(Config::Balancer),
        Kind::Api => {
            if !vars.contains_key("HOSTNAME") {
                env.set("HOSTNAME", HOSTNAME);
            }
            ApiConfig::from_env(&env).map(Config::Api)
        }
        Kind::Cluster => ClusterConfig::from_env(&env).map(Config::Cluster),
    }
}

/// What a result prints: `Debug` of a configuration, `Display` of an error
/// (what `main` writes to the log).
fn printed(result: &Result<Config, ConfigError>) -> String {
    match result {
        Ok(Config::Balancer(c)) => format!("{c:?}"),
        Ok(Config::Api(c)) => format!("{c:?}"),
        Ok(Config::Cluster(c)) => format!("{c:?}"),
        Err(e) => e.to_string(),
    }
}

/// A variable counts as set when it holds more than blanks (`Env::raw`).
fn value<'a>(vars: &'a Vars, name: &str) -> Option<&'a str> {
    vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

pub fn check(data: &[u8]) {
    let vars = decode(data);
    for kind in Kind::ALL {
        check_vars(kind, &vars);
        for (name, value) in &vars {
            check_vars(kind, &Vars::from([(name.clone(), value.clone())]));
        }
    }
}

fn check_vars(kind: Kind, vars: &Vars) {
    let what = || format!("{kind:?} from {vars:?}");
    let result = parse(kind, vars);
    match &result {
        Err(e) => {
            assert!(e.to_string().contains(e.var), "{e}: {}", what());
            culprit(kind, vars, e, &what);
        }
        Ok(Config::Balancer(c)) => balancer(c, vars, &what),
        Ok(Config::Api(c)) => api(c, vars, &what),
        Ok(Config::Cluster(c)) => cluster(c, &what),
    }
    secrets(kind, vars, &result, &what);
}

/// The variable an error names was set, and is the one to blame: without
/// it the error is gone or names another.
fn culprit(kind: Kind, vars: &Vars, e: &ConfigError, what: &dyn Fn() -> String) {
    assert!(
        value(vars, e.var).is_some(),
        "blames {}, which is not set ({e}): {}",
        e.var,
        what()
    );
    let mut without = vars.clone();
    without.remove(e.var);
    if let Err(again) = parse(kind, &without) {
        assert_ne!(
            again.var,
            e.var,
            "without {} the same variable is blamed ({again}): {}",
            e.var,
            what()
        );
    }
}

/// A numeric variable and the field it sets.
type Given<C> = (&'static str, fn(&C) -> u64);

/// Each numeric variable given as a plain number is taken as given.
fn as_given<C>(c: &C, vars: &Vars, table: &[Given<C>], what: &dyn Fn() -> String) {
    for (name, field) in table {
        if let Some(n) = value(vars, name).and_then(|v| v.parse::<u64>().ok()) {
            assert_eq!(field(c), n, "{name} not taken as given: {}", what());
        }
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn balancer(c: &BalancerConfig, vars: &Vars, what: &dyn Fn() -> String) {
    let h = &c.health;
    assert!(h.path.starts_with('/'), "{}", what());
    assert!((1..=100).contains(&h.rise) && (1..=100).contains(&h.fall));
    let l = &c.limits;
    for d in [
        h.interval,
        h.timeout,
        l.idle_timeout,
        l.connect_timeout,
        l.upstream_timeout,
        l.pool_idle_timeout,
        c.shutdown_grace,
    ] {
        assert!(d >= Duration::from_millis(1), "a zero duration: {}", what());
    }
    assert!((8 * 1024..=1024 * 1024).contains(&l.max_header_bytes));
    assert!(c.worker_threads <= 1024 && l.pool_max_idle <= 100_000);
    match &c.discovery {
        DiscoveryConfig::Static { backends, .. } => {
            assert!(!backends.is_empty(), "{}", what());
            for b in backends {
                assert!(
                    b.port != 0 && b.weight <= 100 && !b.host.is_empty(),
                    "{}",
                    what()
                );
            }
        }
        DiscoveryConfig::Dns { name, port, .. } => {
            assert!(
                !name.is_empty() && !name.contains(['/', ' ', ':']),
                "{}",
                what()
            );
            assert_ne!(*port, 0);
        }
        DiscoveryConfig::PortRange { start, count, .. } => {
            assert!(*start != 0 && *count != 0, "{}", what());
            assert!(
                u32::from(*start) + u32::from(*count) - 1 <= 65535,
                "runs past 65535: {}",
                what()
            );
        }
    }
    let listed = value(vars, "TRUSTED_PROXIES")
        .map_or(0, |v| v.split(',').filter(|s| !s.trim().is_empty()).count());
    assert_eq!(c.trusted_proxies.len(), listed, "{}", what());
    as_given(
        c,
        vars,
        &[
            ("BALANCER_PORT", |c| c.listen.port().into()),
            ("HEALTH_RISE", |c| c.health.rise.into()),
            ("HEALTH_FALL", |c| c.health.fall.into()),
            ("HEALTH_INTERVAL_SECS", |c| secs(c.health.interval)),
            ("HEALTH_TIMEOUT_MS", |c| millis(c.health.timeout)),
            ("MAX_HEADER_BYTES", |c| c.limits.max_header_bytes as u64),
            ("CLIENT_IDLE_TIMEOUT_SECS", |c| secs(c.limits.idle_timeout)),
            ("CONNECT_TIMEOUT_MS", |c| millis(c.limits.connect_timeout)),
            ("UPSTREAM_TIMEOUT_SECS", |c| secs(c.limits.upstream_timeout)),
            ("POOL_MAX_IDLE", |c| c.limits.pool_max_idle as u64),
            ("POOL_IDLE_TIMEOUT_SECS", |c| {
                secs(c.limits.pool_idle_timeout)
            }),
            ("SHUTDOWN_GRACE_SECS", |c| secs(c.shutdown_grace)),
            ("WORKER_THREADS", |c| c.worker_threads as u64),
        ],
        what,
    );
}

fn api(c: &ApiConfig, vars: &Vars, what: &dyn Fn() -> String) {
    let header_safe =
        |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    if let Some(id) = &c.instance_id {
        assert!(
            header_safe(id),
            "INSTANCE_ID unfit for a header: {}",
            what()
        );
    }
    assert!(
        header_safe(&c.hostname),
        "host name unfit for a header: {}",
        what()
    );
    assert!(header_safe(&c.instance_for(c.listen.port())), "{}", what());
    for d in [
        c.worker_timeout,
        c.sweep_interval,
        c.heartbeat_interval,
        c.shutdown_grace,
        c.db.acquire_timeout,
        c.db.query_timeout,
    ] {
        assert!(d >= Duration::from_millis(1), "a zero duration: {}", what());
    }
    assert!((1..=1000).contains(&c.db.max_connections), "{}", what());
    as_given(
        c,
        vars,
        &[
            ("PORT", |c| c.listen.port().into()),
            ("WORKER_TIMEOUT_SECS", |c| secs(c.worker_timeout)),
            ("WORKER_SWEEP_SECS", |c| secs(c.sweep_interval)),
            ("HEARTBEAT_INTERVAL_SECS", |c| secs(c.heartbeat_interval)),
            ("API_MAX_BODY_BYTES", |c| c.max_body_bytes as u64),
            ("SHUTDOWN_GRACE_SECS", |c| secs(c.shutdown_grace)),
            ("DB_MAX_CONNECTIONS", |c| c.db.max_connections.into()),
            ("DB_ACQUIRE_TIMEOUT_MS", |c| millis(c.db.acquire_timeout)),
            ("DB_QUERY_TIMEOUT_MS", |c| millis(c.db.query_timeout)),
        ],
        what,
    );
}

/// The launcher's children must start with what it gives them.
fn cluster(c: &ClusterConfig, what: &dyn Fn() -> String) {
    assert!(c.instances >= 1 && c.start_port >= 1, "{}", what());
    let last = u32::from(c.start_port) + u32::from(c.instances) - 1;
    assert!(last <= 65535, "instances past port 65535: {}", what());
    let balancer = Vars::from_iter(
        [
            ("BALANCER_PORT", c.balancer_port.to_string()),
            ("BACKEND_HOST", "127.0.0.1".into()),
            ("BACKEND_START_PORT", c.start_port.to_string()),
            ("BACKEND_COUNT", c.instances.to_string()),
            ("HEALTH_INTERVAL_SECS", c.health_interval.clone()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    if let Err(e) = parse(Kind::Balancer, &balancer) {
        panic!("the cluster's balancer would not start ({e}): {}", what());
    }
    for port in [c.start_port, last as u16] {
        let api = Vars::from_iter(
            [
                ("PORT", port.to_string()),
                ("TRUSTED_PROXIES", c.api_trusted_proxies.clone()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        if let Err(e) = parse(Kind::Api, &api) {
            panic!("the cluster's instance would not start ({e}): {}", what());
        }
    }
}

fn secrets(
    kind: Kind,
    vars: &Vars,
    result: &Result<Config, ConfigError>,
    what: &dyn Fn() -> String,
) {
    let shown = printed(result);
    if vars.contains_key("MYSQL_PASSWORD") {
        let mut without = vars.clone();
        without.remove("MYSQL_PASSWORD");
        assert_eq!(
            shown,
            printed(&parse(kind, &without)),
            "MYSQL_PASSWORD changes what is printed: {}",
            what()
        );
    }
    if let Some((user, password)) = value(vars, "DATABASE_URL").and_then(userinfo) {
        // The two spellings of a password a message may show on purpose.
        let placeholder = password == "***" || (user, password) == ("user", "password");
        let credentials = format!("{user}:{password}@");
        // Shown as part of another variable's value, it is that value.
        let elsewhere = vars.iter().any(|(k, v)| {
            k != "DATABASE_URL" && (k.contains(&credentials) || v.contains(&credentials))
        });
        if elsewhere {
            return;
        }
        assert!(
            placeholder || !shown.contains(&credentials),
            "the DATABASE_URL password is printed: {shown}; {}",
            what()
        );
    }
}

/// The `user` and `password` of `scheme://user:password@host...`: up to the
/// last `@`, the way a person writing the URL means it (a password may hold
/// `/`, `?` or `#` a URL parser would end it at).
/// Only for a URL that starts with its scheme, and not SQLite's (a file
/// path, which holds no credentials whatever it looks like).
fn userinfo(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let is_scheme = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !is_scheme || scheme.eq_ignore_ascii_case("sqlite") {
        return None;
    }
    let (info, _) = rest.rsplit_once('@')?;
    let (user, password) = info.split_once(':')?;
    if password.is_empty() || user.contains(['/', '?', '#']) {
        return None;
    }
    Some((user, password))
}
