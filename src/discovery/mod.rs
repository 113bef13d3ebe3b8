//! Where backends come from. Every source returns the *whole* current set;
//! the balancer diffs it against what it has, so sources stay stateless.
//!
//! Order of precedence (first configured wins): `BACKEND_HOSTS` (static list,
//! names re-resolved every refresh so a restarted container's new address is
//! picked up), `BACKEND_DNS` (A and AAAA records of one name), and the port
//! range `BACKEND_HOST:BACKEND_START_PORT..+BACKEND_COUNT`.

use std::time::Duration;

use crate::backend::Endpoint;
use crate::config::DiscoveryConfig;

/// Why a refresh produced no usable set (the balancer keeps the last good one).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("lookup of {name} failed: {reason}")]
    Lookup { name: String, reason: String },
    #[error("{0} returned no addresses")]
    Empty(String),
}

/// A configured source of backends.
#[derive(Debug)]
pub struct Discovery {
    config: DiscoveryConfig,
}

impl Discovery {
    pub fn new(config: DiscoveryConfig) -> Result<Self, DiscoveryError> {
        Ok(Discovery { config })
    }

    /// The short name shown on the status page.
    pub fn mode(&self) -> &'static str {
        self.config.mode()
    }

    /// How often to refresh; `None` when the set can never change.
    pub fn refresh_interval(&self) -> Option<Duration> {
        match &self.config {
            DiscoveryConfig::Dns { refresh, .. } => Some(*refresh),
            _ => None,
        }
    }

    /// The whole current set, sorted and without duplicates.
    pub async fn discover(&self) -> Result<Vec<Endpoint>, DiscoveryError> {
        let mut set = match &self.config {
            DiscoveryConfig::PortRange { host, start, count } => {
                let mut out = Vec::new();
                for port in *start..=start.saturating_add(count - 1) {
                    let addr = resolve_one(host, port).await?;
                    out.push(Endpoint {
                        name: format!("{host}:{port}"),
                        addr,
                        weight: 1,
                    });
                }
                out
            }
            DiscoveryConfig::Static(specs) => {
                let mut out = Vec::new();
                for spec in specs {
                    let addr = resolve_one(&spec.host, spec.port).await?;
                    out.push(Endpoint {
                        name: spec.to_string(),
                        addr,
                        weight: spec.weight,
                    });
                }
                out
            }
            DiscoveryConfig::Dns { .. } => {
                return Err(DiscoveryError::Lookup {
                    name: "dns".into(),
                    reason: "not built yet".into(),
                });
            }
        };
        set.sort();
        set.dedup_by(|a, b| a.name == b.name);
        Ok(set)
    }
}

async fn resolve_one(host: &str, port: u16) -> Result<std::net::SocketAddr, DiscoveryError> {
    let err = |reason: String| DiscoveryError::Lookup {
        name: host.to_owned(),
        reason,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| DiscoveryError::Empty(host.to_owned()))
}
