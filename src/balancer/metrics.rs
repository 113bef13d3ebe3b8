//! `GET /metrics`: Prometheus metrics through `prometheus-client`'s
//! encoders, read at scrape time by a [`Collector`] from the figures the
//! request path already keeps (per-thread shards summed, atomics loaded):
//! nothing is registered per request and nothing the request path takes
//! is locked (backend states come from atomics, not the outlier mutex).
//!
//! Served as OpenMetrics text when the scraper asks for it (Prometheus
//! does), else as the classic Prometheus text format 0.0.4.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `hashgate_requests_total` | counter | `backend`, `class` (`1xx`..`5xx`): answers from each backend |
//! | `hashgate_backend_failures_total` | counter | `backend`, `kind` (`connect`, `timeout`, `reset`, `bad_response`, `gateway_status`) |
//! | `hashgate_backend_in_flight` | gauge | `backend` |
//! | `hashgate_backend_response_seconds` | histogram | `backend`: time to the response head |
//! | `hashgate_backend_up` | gauge | `backend`: passing its health checks |
//! | `hashgate_backend_state` | gauge | `backend`, `state`: 1 for its state (`up`, `down`, `ejected`, `half-open`, `draining`, `disabled`) |
//! | `hashgate_backend_weight` | gauge | `backend` |
//! | `hashgate_backend_ejections_total` | counter | `backend` |
//! | `hashgate_balancer_requests_total` | counter | requests routed (rate-limited ones excluded) |
//! | `hashgate_balancer_failed_requests_total` | counter | answered by the balancer with 502/503/504 |
//! | `hashgate_rate_limited_requests_total` | counter | answered 429 |
//! | `hashgate_rate_limiter_tracked_clients` | gauge | clients whose bucket is not full |
//! | `hashgate_discovery_refreshes_total` | counter | `result` (`ok`, `failed`) |
//! | `hashgate_client_connections` | gauge | open client connections |
//! | `hashgate_upgrade_tunnels` | gauge | open `Upgrade` tunnels |
//! | `hashgate_build_info` | gauge | `version`, `strategy`: always 1 |

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::backend::State;
use crate::proxy::Proxy;
use crate::stats::FailureKind;
use crate::stats::latency::{CLASSES, PROM_BOUNDS};

/// Reads the proxy's figures at each scrape.
#[derive(Debug)]
struct Figures(Arc<Proxy>);

/// The text of one scrape, and its content type.
pub fn scrape(
    proxy: &Arc<Proxy>,
    openmetrics: bool,
) -> Result<(String, &'static str), std::fmt::Error> {
    let mut registry = Registry::with_prefix("hashgate");
    registry.register_collector(Box::new(Figures(Arc::clone(proxy))));
    let mut out = String::with_capacity(16 * 1024);
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok((
            out,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        Ok((out, "text/plain; version=0.0.4; charset=utf-8"))
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn one(v: i64) -> Vec<(Vec<(&'static str, String)>, i64)> {
    vec![(Vec::new(), v)]
}

impl Collector for Figures {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let proxy = &self.0;
        let snapshot = proxy.backends.load();
        let backends = &snapshot.backends;
        let label = |b: &crate::backend::Backend| vec![("backend", b.name().to_owned())];

        counter(
            &mut enc,
            "requests",
            "Answers from each backend, by status class",
            backends.iter().flat_map(|b| {
                let classes = b.metrics.classes();
                CLASSES.iter().zip(classes).map(move |(class, v)| {
                    (
                        vec![
                            ("backend", b.name().to_owned()),
                            ("class", (*class).to_owned()),
                        ],
                        v,
                    )
                })
            }),
        )?;
        counter(
            &mut enc,
            "backend_failures",
            "Failed attempts and broken bodies, by kind",
            backends.iter().flat_map(|b| {
                let failures = b.metrics.failures();
                FailureKind::ALL.iter().zip(failures).map(move |(k, v)| {
                    (
                        vec![
                            ("backend", b.name().to_owned()),
                            ("kind", k.name().to_owned()),
                        ],
                        v,
                    )
                })
            }),
        )?;
        gauge(
            &mut enc,
            "backend_in_flight",
            "Requests in flight on each backend",
            backends
                .iter()
                .map(|b| (label(b), b.load.in_flight() as i64)),
        )?;
        {
            let mut family = enc.encode_descriptor(
                "backend_response",
                "Time from the attempt's start to the backend's response head",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for b in backends.iter() {
                let (cumulative, sum) = b.metrics.histogram();
                let count = cumulative.last().copied().unwrap_or(0);
                let buckets: Vec<(f64, u64)> = PROM_BOUNDS
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::INFINITY))
                    .zip(cumulative.iter().copied())
                    .collect();
                // The encoder takes per-bucket counts and sums them itself.
                let mut previous = 0;
                let buckets: Vec<(f64, u64)> = buckets
                    .into_iter()
                    .map(|(le, c)| {
                        let own = c - previous;
                        previous = c;
                        (le, own)
                    })
                    .collect();
                let labels = label(b);
                family
                    .encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }
        gauge(
            &mut enc,
            "backend_up",
            "1 while the backend passes its active health checks",
            backends
                .iter()
                .map(|b| (label(b), i64::from(b.health.is_up()))),
        )?;
        gauge(
            &mut enc,
            "backend_state",
            "1 for the backend's state as /lb shows it",
            backends.iter().flat_map(|b| {
                let now = b.state_now();
                State::ALL.iter().map(move |s| {
                    (
                        vec![
                            ("backend", b.name().to_owned()),
                            ("state", s.name().to_owned()),
                        ],
                        i64::from(*s == now),
                    )
                })
            }),
        )?;
        gauge(
            &mut enc,
            "backend_weight",
            "The weight in effect (0: draining)",
            backends.iter().map(|b| (label(b), i64::from(b.weight()))),
        )?;
        counter(
            &mut enc,
            "backend_ejections",
            "Ejections by outlier detection",
            backends
                .iter()
                .map(|b| (label(b), b.outlier.ejections_total())),
        )?;
        counter(
            &mut enc,
            "balancer_requests",
            "Requests routed to a backend (rate-limited ones excluded)",
            [(Vec::new(), proxy.totals.requests.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "balancer_failed_requests",
            "Requests the balancer answered with 502, 503 or 504 itself",
            [(Vec::new(), proxy.totals.failed.load(Relaxed))],
        )?;
        counter(
            &mut enc,
            "rate_limited_requests",
            "Requests answered 429 by the per-client rate limiter",
            [(Vec::new(), proxy.stats.rate_limited.get())],
        )?;
        gauge(
            &mut enc,
            "rate_limiter_tracked_clients",
            "Clients whose token bucket is not full (0 when rate limiting is off)",
            one(proxy.limiter.as_ref().map_or(0, |l| l.tracked() as i64)),
        )?;
        counter(
            &mut enc,
            "discovery_refreshes",
            "Discovery refreshes, by result (a failed one keeps the last good set)",
            [
                (
                    vec![("result", "ok".to_owned())],
                    proxy.stats.discovery_ok.load(Relaxed),
                ),
                (
                    vec![("result", "failed".to_owned())],
                    proxy.stats.discovery_failed.load(Relaxed),
                ),
            ],
        )?;
        gauge(
            &mut enc,
            "client_connections",
            "Client connections open now",
            one(proxy.stats.connections.load(Relaxed) as i64),
        )?;
        gauge(
            &mut enc,
            "upgrade_tunnels",
            "Upgrade (WebSocket) tunnels open now",
            one(proxy.stats.tunnels_open() as i64),
        )?;
        gauge(
            &mut enc,
            "build_info",
            "The running build (always 1)",
            [(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("strategy", snapshot.selector.strategy().name().to_owned()),
                ],
                1,
            )],
        )?;
        Ok(())
    }
}
