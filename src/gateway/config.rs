//! The gateway's settings, parsed once with the rest of the API instance's
//! configuration; a bad value names its variable and stops start-up.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{ConfigError, Env};
use crate::select::Strategy;

use super::breaker::BreakerConfig;

/// Everything dispatch, the breaker and metering read.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `GATEWAY_STRATEGY` (`weighted-round-robin`).
    pub strategy: Strategy,
    /// `DISPATCH_TIMEOUT_SECS` (30): a worker's time to start answering,
    /// per try; past it the client gets 504.
    pub timeout: Duration,
    /// `DISPATCH_CONNECT_TIMEOUT_MS` (2000): opening a connection to a worker.
    pub connect_timeout: Duration,
    /// `DISPATCH_MAX_TRIES` (3): distinct workers tried per request.
    pub max_tries: u32,
    /// `DISPATCH_MAX_BODY_BYTES` (16 MiB): larger request bodies get 413.
    pub max_body_bytes: u64,
    /// `DISPATCH_RETRY_BUFFER_BYTES` (1 MiB): request bodies up to this size
    /// (by `Content-Length`) are read before the first try so that a retry
    /// can send them again; larger and chunked bodies stream to one worker.
    pub retry_buffer_bytes: u64,
    /// `DISPATCH_POOL_MAX_IDLE` (64): idle keep-alive connections kept per worker.
    pub pool_max_idle: usize,
    /// `BREAKER_FAILURES`, `BREAKER_WINDOW_SECS`, `BREAKER_OPEN_SECS`.
    pub breaker: BreakerConfig,
    /// `USAGE_BUFFER_SECS` (300): how long usage rows wait in memory for an
    /// unreachable database before the replica refuses new dispatches.
    pub usage_buffer: Duration,
    /// `USAGE_BUFFER_MAX_ROWS` (200000): the same bound in rows.
    pub usage_max_rows: usize,
    /// `USAGE_SYNC_TIMEOUT_MS` (2000): how long a response's last bytes wait
    /// for its usage row to be committed while the database is healthy.
    pub usage_sync_timeout: Duration,
    /// `GATEWAY_PRICES` (`type=units,...`): price of one successful request
    /// per service type, integer minor units.
    pub prices: BTreeMap<String, i64>,
    /// `GATEWAY_DEFAULT_PRICE` (0): the price of other service types.
    pub default_price: i64,
    /// `KEY_CACHE_MS` (2000, at most 4000): how long a key check is reused
    /// before asking the database again; a revocation is seen within this.
    pub key_cache: Duration,
    /// `KEY_STALE_SECS` (300): while the database is unreachable, a key seen
    /// valid this recently is still accepted.
    pub key_stale: Duration,
    /// `WORKER_REFRESH_MS` (1000): how often the online workers are re-read.
    pub refresh: Duration,
    /// `WORKER_QUEUE_PATH`: when set, each worker's queue is polled there
    /// (ComfyUI's `/api/queue` shape) for least-queue.
    pub queue_path: Option<String>,
    /// `WORKER_QUEUE_POLL_MS` (1000).
    pub queue_poll: Duration,
}

impl GatewayConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let strategy: Strategy = env.parse_or("GATEWAY_STRATEGY", Strategy::WeightedRoundRobin)?;
        if strategy.is_sticky() {
            return Err(ConfigError::new(
                "GATEWAY_STRATEGY",
                strategy.name(),
                "the gateway has no client key to hash; use round-robin, weighted-round-robin, \
                 least-connections, least-time or least-queue",
            ));
        }
        let queue_path = match env.raw("WORKER_QUEUE_PATH") {
            None => None,
            Some(p) if p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(p.to_owned())
            }
            Some(p) => {
                return Err(ConfigError::new(
                    "WORKER_QUEUE_PATH",
                    p,
                    "must be a path starting with /, e.g. /api/queue",
                ));
            }
        };
        Ok(GatewayConfig {
            strategy,
            timeout: env.secs_or("DISPATCH_TIMEOUT_SECS", 30)?,
            connect_timeout: env.millis_or("DISPATCH_CONNECT_TIMEOUT_MS", 2_000)?,
            max_tries: env.range_or("DISPATCH_MAX_TRIES", 3, 1, 10)?,
            max_body_bytes: env.range_or("DISPATCH_MAX_BODY_BYTES", 16 << 20, 1, 1 << 40)?,
            retry_buffer_bytes: env.range_or(
                "DISPATCH_RETRY_BUFFER_BYTES",
                1 << 20,
                0,
                64 << 20,
            )?,
            pool_max_idle: env.range_or("DISPATCH_POOL_MAX_IDLE", 64, 0, 100_000)?,
            breaker: BreakerConfig {
                failures: env.range_or("BREAKER_FAILURES", 5, 1, 1_000_000)?,
                window: env.secs_or("BREAKER_WINDOW_SECS", 60)?,
                open: env.secs_or("BREAKER_OPEN_SECS", 60)?,
            },
            usage_buffer: env.secs_or("USAGE_BUFFER_SECS", 300)?,
            usage_max_rows: env.range_or("USAGE_BUFFER_MAX_ROWS", 200_000, 1_000, 100_000_000)?,
            usage_sync_timeout: Duration::from_millis(env.range_or(
                "USAGE_SYNC_TIMEOUT_MS",
                2_000,
                0,
                60_000,
            )?),
            prices: parse_prices(env)?,
            default_price: env.range_or("GATEWAY_DEFAULT_PRICE", 0, 0, i64::MAX / 1_000_000)?,
            key_cache: Duration::from_millis(env.range_or("KEY_CACHE_MS", 2_000, 0, 4_000)?),
            key_stale: env.secs_or("KEY_STALE_SECS", 300)?,
            refresh: env.millis_or("WORKER_REFRESH_MS", 1_000)?,
            queue_path,
            queue_poll: env.millis_or("WORKER_QUEUE_POLL_MS", 1_000)?,
        })
    }

    /// The price of one successful request of `service_type`.
    pub fn price(&self, service_type: &str) -> i64 {
        self.prices
            .get(service_type)
            .copied()
            .unwrap_or(self.default_price)
    }
}

/// `render=250,parse=10`: whole minor units per request.
fn parse_prices(env: &Env) -> Result<BTreeMap<String, i64>, ConfigError> {
    const VAR: &str = "GATEWAY_PRICES";
    let Some(raw) = env.raw(VAR) else {
        return Ok(BTreeMap::new());
    };
    let mut prices = BTreeMap::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |why: &str| ConfigError::new(VAR, raw, format_args!("{item:?}: {why}"));
        let (ty, units) = item
            .split_once('=')
            .ok_or_else(|| bad("expected type=units, e.g. render=250"))?;
        let ty = ty.trim();
        if ty.is_empty()
            || !ty
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("the service type uses letters, digits, - and _ only"));
        }
        let units: i64 = units
            .trim()
            .parse()
            .ok()
            .filter(|u| (0..=i64::MAX / 1_000_000).contains(u))
            .ok_or_else(|| {
                bad("the price is a whole number of minor units (no decimal point), at least 0")
            })?;
        prices.insert(ty.to_owned(), units);
    }
    Ok(prices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.strategy, Strategy::WeightedRoundRobin);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.max_tries, 3);
        assert_eq!(c.breaker.failures, 5);
        assert_eq!(c.breaker.window, Duration::from_secs(60));
        assert_eq!(c.breaker.open, Duration::from_secs(60));
        assert_eq!(c.price("render"), 0);
    }

    #[test]
    fn prices_are_integer_minor_units() {
        let c = cfg(&[
            ("GATEWAY_PRICES", "render=250, parse=10"),
            ("GATEWAY_DEFAULT_PRICE", "1"),
        ])
        .unwrap();
        assert_eq!(
            (c.price("render"), c.price("parse"), c.price("x")),
            (250, 10, 1)
        );
        for bad in ["render=2.50", "render", "=3", "ren der=1", "render=-1"] {
            let e = cfg(&[("GATEWAY_PRICES", bad)]).expect_err(bad);
            assert_eq!(e.var, "GATEWAY_PRICES");
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("GATEWAY_STRATEGY", "fastest"),
            ("GATEWAY_STRATEGY", "maglev"),
            ("DISPATCH_TIMEOUT_SECS", "0"),
            ("DISPATCH_MAX_TRIES", "0"),
            ("BREAKER_FAILURES", "x"),
            ("KEY_CACHE_MS", "5000"),
            ("USAGE_BUFFER_SECS", "-1"),
            ("WORKER_QUEUE_PATH", "api/queue"),
        ] {
            let e = cfg(&[(var, value)]).expect_err(var);
            assert_eq!(e.var, var, "{e}");
        }
    }
}
