//! The read-only operator endpoints beside `/lb/status`: `/lb/stats`,
//! `/lb/backends`, `/lb/config`, `/lb/route?ip=` and `/lb/clients`. Each
//! reads the published snapshot and the per-thread figures (atomics: no
//! lock the request path takes, except the client table's per-thread
//! mutex for `/lb/clients`, held for one copy).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};

use crate::admin::Admin;
use crate::backend::Backend;
use crate::config::{BalancerConfig, DiscoveryConfig};
use crate::health::outlier::View;
use crate::proxy::Proxy;
use crate::ring::key_hash;
use crate::stats::latency::{CLASSES, SLICE_SECS, SLICES};
use crate::stats::{BackendMetrics, FailureKind};

fn classes_json(c: [u64; 5]) -> Value {
    CLASSES
        .iter()
        .zip(c)
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Share of attempts answered below 500 (failures before an answer count
/// as attempts); `None` before the first.
fn success_rate(classes: [u64; 5], failures: [u64; 5]) -> Option<f64> {
    let answered: u64 = classes.iter().sum();
    // A backend's own 502-504 is already among the 5xx answers.
    let lost: u64 = failures.iter().sum::<u64>() - failures[FailureKind::GatewayStatus as usize];
    let attempts = answered + lost;
    let ok = answered - classes[4];
    (attempts > 0).then(|| (ok as f64 / attempts as f64 * 10_000.0).round() / 10_000.0)
}

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t.max(SystemTime::UNIX_EPOCH))
}

/// `GET /lb/stats`.
pub fn stats(proxy: &Proxy) -> Value {
    let now = Instant::now();
    let snapshot = proxy.backends.load();
    let mut total_classes = [0u64; 5];
    let backends: Vec<Value> = snapshot
        .backends
        .iter()
        .map(|b| {
            let classes = b.metrics.classes();
            let failures = b.metrics.failures();
            for (t, c) in total_classes.iter_mut().zip(classes) {
                *t += c;
            }
            let outlier = match b.outlier.view() {
                View::Healthy => json!({ "state": "healthy", "ejections": b.outlier.times() }),
                View::Ejected { until, reason, times } => json!({
                    "state": "ejected", "ejected_until": http_date(until),
                    "ejected_for_secs": until.duration_since(SystemTime::now()).unwrap_or_default().as_secs(),
                    "reason": reason, "ejections": times,
                }),
                View::HalfOpen { reason, times } => {
                    json!({ "state": "half-open", "reason": reason, "ejections": times })
                }
            };
            json!({
                "name": b.name(),
                "state": b.state().name(),
                "drained": b.is_drained(),
                "requests": b.stats.total.load(Relaxed),
                "responses": classes_json(classes),
                "failures": FailureKind::ALL.iter().zip(failures)
                    .map(|(k, v)| (k.name().to_owned(), json!(v)))
                    .collect::<serde_json::Map<_, _>>(),
                "success_rate": success_rate(classes, failures),
                "latency": b.metrics.window(now),
                "in_flight": b.load.in_flight(),
                "ejections_total": b.outlier.ejections_total(),
                "outlier": outlier,
            })
        })
        .collect();
    let total_failures = snapshot.backends.iter().fold([0u64; 5], |mut acc, b| {
        for (a, f) in acc.iter_mut().zip(b.metrics.failures()) {
            *a += f;
        }
        acc
    });
    let latency = BackendMetrics::merged_window(snapshot.backends.iter().map(|b| &b.metrics), now);
    json!({
        "window": {
            "secs": SLICE_SECS * SLICES as u64,
            "slice_secs": SLICE_SECS,
            "about": "latency percentiles cover the last 50-60 s (six 10 s slices; the oldest drops out whole), from buckets a quarter of a doubling wide: within about 12%",
        },
        "totals": {
            "requests": proxy.totals.requests.load(Relaxed),
            "failed_requests": proxy.totals.failed.load(Relaxed),
            "responses": classes_json(total_classes),
            "success_rate": success_rate(total_classes, total_failures),
            "latency": latency,
            "in_flight": snapshot.backends.iter().map(|b| b.load.in_flight()).sum::<u64>(),
            "rate_limited": proxy.stats.rate_limited.get(),
            "client_connections": proxy.stats.connections.load(Relaxed),
            "tunnels_open": proxy.stats.tunnels_open(),
        },
        "rate_limit": rate_limit(proxy),
        "backends": backends,
    })
}

fn rate_limit(proxy: &Proxy) -> Value {
    match &proxy.limiter {
        None => json!({ "enabled": false, "limited_total": proxy.stats.rate_limited.get() }),
        Some(l) => json!({
            "enabled": true,
            "rps": l.limit().rps,
            "burst": l.limit().burst,
            "limited_total": proxy.stats.rate_limited.get(),
            "tracked_clients": l.tracked(),
            "refill_secs": l.refill_time().as_secs_f64(),
        }),
    }
}

/// `GET /lb/backends`: each backend with its state, weights, source and
/// overrides, and the removed ones.
pub fn backends(proxy: &Proxy, admin: &Admin) -> Value {
    let overrides = admin.overrides();
    let snapshot = proxy.backends.load();
    let listed: Vec<Value> = snapshot
        .backends
        .iter()
        .map(|b| {
            json!({
                "name": b.name(),
                "address": b.addr().to_string(),
                "state": b.state().name(),
                "drained": b.is_drained(),
                "healthy": b.health.is_up(),
                "weight": b.weight(),
                "configured_weight": b.endpoint.weight,
                "source": b.source(),
                "disabled": b.is_disabled(),
                "in_flight": b.load.in_flight(),
                "requests": b.stats.total.load(Relaxed),
                "override": overrides.get(b.name()),
            })
        })
        .collect();
    let removed: Vec<Value> = overrides
        .backends
        .iter()
        .filter(|(name, o)| o.removed && !snapshot.backends.iter().any(|b| b.name() == *name))
        .map(|(name, o)| json!({ "name": name, "override": o }))
        .collect();
    json!({
        "strategy": snapshot.selector.strategy().name(),
        "sticky": snapshot.selector.strategy().is_sticky(),
        "backends": listed,
        "removed": removed,
    })
}

/// `GET /lb/route?ip=ADDR`: where requests from `ip` go now, and the rest
/// of its candidate order. The same candidates and filter the driver
/// uses, so it agrees with where requests really go.
pub fn route(proxy: &Proxy, query: Option<&str>) -> Result<Value, String> {
    let usage = "give a client address: /lb/route?ip=203.0.113.7";
    let raw = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("ip="))
        .ok_or(usage)?;
    let raw = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| usage.to_owned())?;
    let ip: IpAddr = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not an IP address; {usage}"))?;
    let ip = ip.to_canonical();
    let snapshot = proxy.backends.load();
    let strategy = snapshot.selector.strategy();
    let describe = |b: &Arc<Backend>| {
        json!({
            "name": b.name(),
            "address": b.addr().to_string(),
            "state": b.state().name(),
            "takes_requests": proxy.available(b),
        })
    };
    if !strategy.is_sticky() {
        return Ok(json!({
            "ip": ip.to_string(),
            "strategy": strategy.name(),
            "sticky": false,
            "backend": null,
            "order": [],
            "note": "this strategy is not sticky: each request goes where the load says at that moment",
        }));
    }
    let key = key_hash(ip);
    let panic = proxy.panic_mode(&snapshot);
    let accept = |b: &Arc<Backend>| proxy.accepts(b, || panic);
    let chosen = snapshot
        .selector
        .candidates(&snapshot.backends, key, accept)
        .next();
    let order: Vec<Value> = snapshot
        .selector
        .candidates(&snapshot.backends, key, |_| true)
        .map(|i| describe(&snapshot.backends[i]))
        .collect();
    Ok(json!({
        "ip": ip.to_string(),
        "strategy": strategy.name(),
        "sticky": true,
        "panic": panic,
        "backend": chosen.map(|i| snapshot.backends[i].name().to_owned()),
        "order": order,
    }))
}

/// `GET /lb/clients[?ip=ADDR]`: the recently seen clients, newest first.
pub fn clients(proxy: &Proxy, query: Option<&str>) -> Result<Value, String> {
    let only: Option<IpAddr> = match query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("ip="))
    {
        None => None,
        Some(raw) => Some(
            percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{raw:?} is not an IP address"))?
                .to_canonical(),
        ),
    };
    let now = Instant::now();
    let table = &proxy.stats.clients;
    let clients: Vec<Value> = table
        .recent()
        .into_iter()
        .filter(|c| only.is_none_or(|ip| ip == c.ip))
        .map(|c| {
            let ago = now.saturating_duration_since(c.last);
            json!({
                "ip": c.ip.to_string(),
                "backend": c.backend,
                "requests": c.requests,
                "last_seen_ago_secs": ago.as_secs(),
                "last_seen": http_date(SystemTime::now() - ago),
                "tunnels": c.tunnels,
            })
        })
        .collect();
    Ok(json!({
        "table_size": table.size(),
        "tunnels_open": proxy.stats.tunnels_open(),
        "count": clients.len(),
        "clients": clients,
    }))
}

/// `GET /lb/config`: the configuration in effect. Secrets are never shown:
/// the admin token appears only as whether it is set.
pub fn config(c: &BalancerConfig) -> Value {
    let discovery = match &c.discovery {
        DiscoveryConfig::Static {
            backends,
            refresh,
            server,
        } => json!({
            "mode": "static",
            "backends": backends.iter().map(|b| format!("{b}={}", b.weight)).collect::<Vec<_>>(),
            "refresh_secs": refresh.as_secs(),
            "dns_server": server.map(|s| s.to_string()),
        }),
        DiscoveryConfig::Dns {
            name,
            port,
            refresh,
            server,
        } => json!({
            "mode": "dns", "name": name, "port": port, "refresh_secs": refresh.as_secs(),
            "dns_server": server.map(|s| s.to_string()),
        }),
        DiscoveryConfig::PortRange { host, start, count } => {
            json!({ "mode": "port-range", "host": host, "start_port": start, "count": count })
        }
    };
    let l = &c.limits;
    let o = &c.outlier;
    json!({
        "listen": c.listen.to_string(),
        "discovery": discovery,
        "health_check": {
            "path": c.health.path, "interval_secs": c.health.interval.as_secs(),
            "timeout_ms": c.health.timeout.as_millis() as u64,
            "rise": c.health.rise, "fall": c.health.fall,
        },
        "routing": {
            "strategy": c.strategy.strategy.name(),
            "hash_balance_factor": c.strategy.select.hash_balance_factor,
            "queue_path": c.strategy.queue_path,
            "queue_poll_ms": c.strategy.queue_poll.as_millis() as u64,
        },
        "outlier": {
            "consecutive_failures": o.consecutive_failures,
            "base_ejection_secs": o.base_ejection.as_secs(),
            "max_ejection_secs": o.max_ejection.as_secs(),
            "max_ejection_percent": o.max_ejection_percent,
            "panic_threshold_percent": o.panic_threshold_percent,
        },
        "limits": {
            "max_header_bytes": l.max_header_bytes,
            "client_idle_timeout_secs": l.idle_timeout.as_secs(),
            "client_header_timeout_secs": l.header_timeout.as_secs(),
            "client_body_timeout_secs": l.client_body_timeout.as_secs(),
            "client_write_timeout_secs": l.client_write_timeout.as_secs(),
            "connect_timeout_ms": l.connect_timeout.as_millis() as u64,
            "connect_failover_ms": l.connect_failover.as_millis() as u64,
            "upstream_timeout_secs": l.upstream_timeout.as_secs(),
            "upstream_body_timeout_secs": l.upstream_body_timeout.as_secs(),
            "pool_max_idle": l.pool_max_idle,
            "pool_idle_timeout_secs": l.pool_idle_timeout.as_secs(),
        },
        "trusted_proxies": c.trusted_proxies.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "max_client_connections": c.max_client_connections,
        "shutdown_grace_secs": c.shutdown_grace.as_secs(),
        "worker_threads": c.worker_threads,
        "management": {
            "admin_token": if c.ops.admin_token.is_some() { "set" } else { "unset" },
            "state_file": c.ops.state_file.as_ref().map(|p| p.display().to_string()),
            "client_table_size": c.ops.client_table_size,
            "log_filter": crate::telemetry::current_filter(),
        },
        "rate_limit": c.ops.rate_limit.map(|r| json!({ "rps": r.rps, "burst": r.burst })),
    })
}
