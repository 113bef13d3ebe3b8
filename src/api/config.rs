//! The API instance's configuration (`PORT`, `INSTANCE_ID`, database, registry
//! timings), parsed once by the binary; bad values name their variable.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::config::{ConfigError, Env};
use crate::gateway::GatewayConfig;
use crate::store::DbConfig;

/// Everything an API instance needs, parsed and checked.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `API_HOST` (0.0.0.0) + `PORT` (13004).
    pub listen: SocketAddr,
    /// `INSTANCE_ID`; `None` means `hostname:port` of the actual listener.
    pub instance_id: Option<String>,
    /// `HOSTNAME` (or the kernel's host name), for the default instance id.
    pub hostname: String,
    pub db: DbConfig,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    /// Defaults to loopback, where the local balancer runs.
    pub trusted_proxies: Vec<IpNet>,
    /// `WORKER_TIMEOUT_SECS` (60): silence after which a worker goes offline.
    pub worker_timeout: Duration,
    /// `WORKER_SWEEP_SECS` (5): how often each instance looks for silent workers.
    pub sweep_interval: Duration,
    /// `HEARTBEAT_INTERVAL_SECS` (30): what registration tells workers.
    pub heartbeat_interval: Duration,
    /// `WORKERS_STALE_SECS` (30): while the database is unreachable, a worker
    /// list this instance read at most this long ago is answered (with an
    /// `Age` header) instead of a 503; 0 turns this off.
    pub workers_stale: Duration,
    /// `API_MAX_BODY_BYTES` (65536): larger request bodies get 413.
    pub max_body_bytes: usize,
    /// `SHUTDOWN_GRACE_SECS` (30): drain time for in-flight requests.
    pub shutdown_grace: Duration,
    /// Dispatch, breaker, metering and key settings.
    pub gateway: GatewayConfig,
}

impl ApiConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let host: IpAddr = env.parse_or("API_HOST", IpAddr::from([0, 0, 0, 0]))?;
        let port = env.port_or("PORT", 13004)?;
        let instance_id = match env.raw("INSTANCE_ID") {
            None => None,
            Some(id) if is_header_safe(id) => Some(id.to_owned()),
            Some(id) => {
                return Err(ConfigError::new(
                    "INSTANCE_ID",
                    id,
                    "use up to 128 visible ASCII characters",
                ));
            }
        };
        let hostname = env
            .raw("HOSTNAME")
            .map(str::to_owned)
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .filter(|h| is_header_safe(h))
            .unwrap_or_else(|| "localhost".to_owned());
        Ok(ApiConfig {
            listen: SocketAddr::new(host, port),
            instance_id,
            hostname,
            db: DbConfig::from_env(env)?,
            trusted_proxies: env.cidrs("TRUSTED_PROXIES", "127.0.0.0/8,::1")?,
            worker_timeout: env.secs_or("WORKER_TIMEOUT_SECS", 60)?,
            sweep_interval: env.secs_or("WORKER_SWEEP_SECS", 5)?,
            heartbeat_interval: env.secs_or("HEARTBEAT_INTERVAL_SECS", 30)?,
            workers_stale: env
                .range_or("WORKERS_STALE_SECS", 30, 0, 3_600)
                .map(Duration::from_secs)?,
            max_body_bytes: env.range_or("API_MAX_BODY_BYTES", 64 * 1024, 1024, 16 << 20)?,
            shutdown_grace: env.secs_or("SHUTDOWN_GRACE_SECS", 30)?,
            gateway: GatewayConfig::from_env(env)?,
        })
    }

    /// The identity for a listener bound to `port`.
    pub fn instance_for(&self, port: u16) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| format!("{}:{port}", self.hostname))
    }
}

/// Fits in an `X-Instance-Id` header and a log line as is.
fn is_header_safe(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<ApiConfig, ConfigError> {
        ApiConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = cfg(&[("HOSTNAME", "box")]).unwrap();
        assert_eq!(c.listen.port(), 13004);
        assert_eq!(c.instance_for(13004), "box:13004");
        assert_eq!(c.worker_timeout, Duration::from_secs(60));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.workers_stale, Duration::from_secs(30));
        assert_eq!(c.db.kind(), "sqlite");
        assert_eq!(c.trusted_proxies.len(), 2);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("PORT", "0"),
            ("PORT", "abc"),
            ("INSTANCE_ID", "has space"),
            ("WORKER_TIMEOUT_SECS", "0"),
            ("WORKERS_STALE_SECS", "3601"),
            ("API_MAX_BODY_BYTES", "10"),
            ("DB_MAX_CONNECTIONS", "0"),
            ("DB_ACQUIRE_TIMEOUT_MS", "soon"),
            ("TRUSTED_PROXIES", "nope"),
        ] {
            let err = cfg(&[(var, value)]).expect_err(var);
            assert_eq!(err.var, var, "{err}");
        }
    }
}
