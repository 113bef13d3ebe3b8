//! The balancer's own endpoints. The read-only pages: `GET /health`,
//! `GET /lb` (HTML, with live charts) and `GET /lb/status` (the same data
//! as JSON) here; `/lb/stats`, `/lb/backends`, `/lb/config`, `/lb/route`
//! and `/lb/clients` in [`super::views`]; `/metrics` in [`super::metrics`];
//! the management calls in [`crate::admin::api`]. Every path
//! [`rules::is_own_endpoint`](crate::proxy::rules::is_own_endpoint) names is
//! answered by [`Console`] (unknown ones 404); everything else is proxied.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use askama::Template;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::charts::{self, Chart, Metric};
use super::{metrics, views};
use crate::admin::{Admin, api};
use crate::health::outlier::View;
use crate::pages;
use crate::proxy::body::ProxyBody;
use crate::proxy::body::json_response;
use crate::proxy::{PageFuture, Pages, Proxy};

/// The balancer's own endpoints, plugged into the request path as its
/// [`Pages`]: the status pages, the operator's views and the management
/// room.
#[derive(Debug)]
pub struct Console {
    pub admin: Arc<Admin>,
}

impl Pages for Console {
    fn answer(&self, proxy: Arc<Proxy>, req: Request<Incoming>) -> PageFuture {
        let admin = Arc::clone(&self.admin);
        Box::pin(async move {
            if api::is_management(req.uri().path()) {
                let token = proxy.config.ops.admin_token.clone();
                return api::handle(&admin, token.as_ref(), &proxy, req).await;
            }
            read_only(&proxy, &admin, &req)
        })
    }
}

/// The pages that only read.
fn read_only(proxy: &Arc<Proxy>, admin: &Admin, req: &Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path();
    let known = matches!(
        path,
        "/health"
            | "/lb"
            | "/lb/"
            | "/lb/status"
            | "/lb/stats"
            | "/lb/backends"
            | "/lb/config"
            | "/lb/route"
            | "/lb/clients"
            | "/metrics"
    );
    if !known {
        return json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "no such balancer endpoint", "status": 404 }),
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({ "error": "method not allowed", "status": 405 }),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let query = req.uri().query();
    let ok = |v: serde_json::Value| json_response(StatusCode::OK, &v);
    match path {
        "/lb/stats" => return ok(views::stats(proxy)),
        "/lb/backends" => return ok(views::backends(proxy, admin)),
        "/lb/config" => return ok(views::config(&proxy.config)),
        "/lb/route" => {
            return match views::route(proxy, query) {
                Ok(v) => ok(v),
                Err(why) => api::error(StatusCode::BAD_REQUEST, &why),
            };
        }
        "/lb/clients" => {
            // Client addresses are personal data: the admin token only.
            if let Err(refused) =
                api::authorize(proxy.config.ops.admin_token.as_ref(), req.headers())
            {
                return refused;
            }
            return match views::clients(proxy, query) {
                Ok(v) => ok(v),
                Err(why) => api::error(StatusCode::BAD_REQUEST, &why),
            };
        }
        "/metrics" => {
            let openmetrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            return match metrics::scrape(proxy, openmetrics) {
                Ok((text, content_type)) => {
                    let mut resp = Response::new(ProxyBody::full(text));
                    let h = resp.headers_mut();
                    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    resp
                }
                Err(e) => internal_error(&e),
            };
        }
        _ => {}
    }
    let status = Status::collect(proxy);
    match path {
        "/health" => {
            let code = if status.healthy > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(
                code,
                &serde_json::json!({
                    "status": if status.healthy > 0 { "ok" } else { "unavailable" },
                    "healthy_backends": status.healthy,
                    "backends": status.backends.len(),
                }),
            )
        }
        "/lb/status" => match serde_json::to_value(&status) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => internal_error(&e),
        },
        _ => {
            let now = Instant::now();
            let snapshot = proxy.backends.load();
            let names: Vec<String> = snapshot
                .backends
                .iter()
                .map(|b| b.name().to_owned())
                .collect();
            let points = proxy.stats.history.points_now(&snapshot.backends, now);
            let page = LbPage {
                s: &status,
                charts: [
                    charts::draw(Metric::Rps, &names, &points, now),
                    charts::draw(Metric::P99, &names, &points, now),
                ],
                rate_limit: proxy
                    .limiter
                    .as_ref()
                    .map(|l| format!("{} req/s, burst {}", l.limit().rps, l.limit().burst)),
                rate_limited: proxy.stats.rate_limited.get(),
            };
            match page.render() {
                Ok(html) => {
                    let mut resp = Response::new(ProxyBody::full(html));
                    let h = resp.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    resp
                }
                Err(e) => internal_error(&e),
            }
        }
    }
}

fn internal_error(e: &dyn std::fmt::Display) -> Response<ProxyBody> {
    tracing::error!(error = %e, "status page failed to render");
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &serde_json::json!({ "error": "internal error", "status": 500 }),
    )
}

/// Everything `/lb` and `/lb/status` show.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_secs: u64,
    pub started_at: String,
    pub now: String,
    pub discovery: DiscoveryStatus,
    pub health_check: HealthCheckStatus,
    pub routing: RoutingStatus,
    /// Backends up and taking clients.
    pub healthy: usize,
    pub totals: TotalsStatus,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub struct DiscoveryStatus {
    pub mode: &'static str,
    pub last_refresh: Option<String>,
    pub last_refresh_ago_secs: Option<u64>,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct HealthCheckStatus {
    pub path: String,
    pub interval_secs: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Serialize)]
pub struct TotalsStatus {
    pub requests: u64,
    pub active: u64,
    pub errors: u64,
    pub failed_requests: u64,
    pub clients: i64,
    /// Keep-alive client connections idle in the parking lot (no task, no
    /// buffer; see `proxy::h1::park`).
    pub parked: usize,
    /// `Upgrade` tunnels (WebSocket and the like) open now.
    pub tunnels: i64,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// The name the ring places (`host:port` as configured or resolved).
    pub name: String,
    /// The socket address connections go to.
    pub address: String,
    /// `up`, `down` (health checks), `ejected` (outlier detection, until
    /// `ejected_until`), `half-open`, `draining` (weight 0) or `disabled`
    /// (by an operator).
    pub state: &'static str,
    /// Weight 0 and nothing in flight any more.
    pub drained: bool,
    /// `discovered`, or `added` by an operator at runtime.
    pub source: &'static str,
    pub healthy: bool,
    pub weight: u32,
    pub last_check: Option<String>,
    pub last_check_ago_secs: Option<u64>,
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    /// While ejected: until when, and the last failure.
    pub ejected_until: Option<String>,
    pub ejected_for_secs: Option<u64>,
    pub ejection_reason: Option<String>,
    /// Ejections so far (each lasts longer; time healthy earns them back).
    pub ejections: u32,
    /// Requests in flight now (what least-connections reads).
    pub active: u64,
    pub total: u64,
    pub errors: u64,
    /// Share of the traffic by construction: of the hash space for the
    /// sticky strategies, of the weights for the others; 0..=1.
    pub share: f64,
    /// Client connections whose latest request went here.
    pub clients: i64,
    /// `Upgrade` tunnels (WebSocket and the like) open to it now.
    pub tunnels: i64,
}

/// The strategy in use.
#[derive(Debug, Serialize)]
pub struct RoutingStatus {
    pub strategy: &'static str,
    /// Whether a client keeps its backend (the consistent-hash strategies).
    pub sticky: bool,
    /// Fewer than `PANIC_THRESHOLD_PERCENT` of the backends are available:
    /// requests go to all of them.
    pub panic: bool,
}

impl Status {
    pub fn collect(state: &Proxy) -> Status {
        let now = SystemTime::now();
        let snapshot = state.backends.load();
        let backends: Vec<BackendStatus> = snapshot
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let check = b.health.last_check();
                let up = b.health.is_up();
                let (until, reason, ejections) = match b.outlier.view() {
                    View::Healthy => (None, None, b.outlier.times()),
                    View::Ejected {
                        until,
                        reason,
                        times,
                    } => (Some(until), Some(reason), times),
                    View::HalfOpen { reason, times } => (None, Some(reason), times),
                };
                BackendStatus {
                    name: b.name().to_owned(),
                    address: b.addr().to_string(),
                    state: b.state().name(),
                    drained: b.is_drained(),
                    source: b.source().name(),
                    healthy: up,
                    weight: b.weight(),
                    last_check: check.at.map(http_date),
                    last_check_ago_secs: check.at.map(|t| ago(now, t)),
                    latency_ms: check
                        .latency
                        .map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0),
                    last_error: check.error,
                    ejected_until: until.map(http_date),
                    ejected_for_secs: until
                        .map(|t| t.duration_since(now).unwrap_or_default().as_secs()),
                    ejection_reason: reason,
                    ejections,
                    active: b.load.in_flight(),
                    total: b.stats.total.load(Relaxed),
                    errors: b.stats.errors.load(Relaxed),
                    share: snapshot.selector.share(i),
                    clients: b.stats.clients.load(Relaxed).max(0),
                    tunnels: b.stats.tunnels.load(Relaxed).max(0),
                }
            })
            .collect();
        let panic = state.panic_mode(&snapshot);
        let strategy = snapshot.selector.strategy();
        let d = state
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let h = &state.config.health;
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: state.started.elapsed().as_secs(),
            started_at: http_date(state.started_at),
            now: http_date(now),
            discovery: DiscoveryStatus {
                mode: state.config.discovery.mode(),
                last_refresh: d.last_refresh.map(http_date),
                last_refresh_ago_secs: d.last_refresh.map(|t| ago(now, t)),
                ok: d.ok,
                message: d.message,
            },
            health_check: HealthCheckStatus {
                path: h.path.clone(),
                interval_secs: h.interval.as_secs(),
                timeout_ms: h.timeout.as_millis() as u64,
                rise: h.rise,
                fall: h.fall,
            },
            routing: RoutingStatus {
                strategy: strategy.name(),
                sticky: strategy.is_sticky(),
                panic,
            },
            healthy: backends.iter().filter(|b| b.state == "up").count(),
            totals: TotalsStatus {
                requests: state.totals.requests.load(Relaxed),
                active: backends.iter().map(|b| b.active).sum(),
                errors: backends.iter().map(|b| b.errors).sum(),
                failed_requests: state.totals.failed.load(Relaxed),
                clients: backends.iter().map(|b| b.clients).sum(),
                parked: state.totals.parked.load(Relaxed),
                tunnels: backends.iter().map(|b| b.tunnels).sum(),
            },
            backends,
        }
    }
}

fn ago(now: SystemTime, then: SystemTime) -> u64 {
    now.duration_since(then).unwrap_or(Duration::ZERO).as_secs()
}

/// `Sun, 22 Nov 2026 03:20:00 GMT`, the format HTTP itself uses.
fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t.max(UNIX_EPOCH))
}

/// `/lb`: the status page.
#[derive(Template)]
#[template(path = "lb.html")]
struct LbPage<'a> {
    s: &'a Status,
    charts: [Chart; 2],
    /// `10 req/s, burst 20`, when rate limiting is on.
    rate_limit: Option<String>,
    rate_limited: u64,
}

/// How the page shows the numbers. Methods rather than fields, so the JSON
/// stays the raw data and scripts never parse "2 h 13 min".
impl Status {
    /// `2 h 13 min`.
    pub fn uptime_text(&self) -> String {
        pages::human_secs(self.uptime_secs)
    }

    /// The headline colour: `ok` when every backend is up, `bad` when none
    /// is, `warn` in between (some down or draining).
    pub fn level(&self) -> &'static str {
        match self.healthy {
            0 => "bad",
            n if n == self.backends.len() => "ok",
            _ => "warn",
        }
    }

    /// `refreshed 12 s ago`, or `not yet`.
    pub fn discovery_refresh_text(&self) -> String {
        match self.discovery.last_refresh_ago_secs {
            Some(s) => format!("refreshed {} ago", pages::human_secs(s)),
            None => "not refreshed yet".to_owned(),
        }
    }
}

impl BackendStatus {
    /// The state as the page words it: `drained` once a draining backend
    /// has nothing left in flight.
    pub fn label(&self) -> &'static str {
        if self.state == "draining" && self.drained {
            "drained"
        } else {
            self.state
        }
    }

    /// `ejected until 10:42:07 GMT`, when ejected.
    pub fn until_text(&self) -> Option<String> {
        let until = self.ejected_until.as_deref()?;
        let time = until.split(' ').nth(4).unwrap_or(until);
        Some(format!("until {time} GMT"))
    }

    /// Share of the hash space in percent, for the bar and its label.
    pub fn share_pct(&self) -> f64 {
        self.share * 100.0
    }

    /// `0.4 ms`, `153 ms`, `1.25 s`, or `–` before the first passed check.
    pub fn latency_text(&self) -> String {
        match self.latency_ms {
            None => "–".to_owned(),
            Some(ms) if ms < 100.0 => format!("{ms:.1} ms"),
            Some(ms) if ms < 1000.0 => format!("{ms:.0} ms"),
            Some(ms) => format!("{:.2} s", ms / 1000.0),
        }
    }

    /// `3 s ago`, or `never` before the first check.
    pub fn last_check_text(&self) -> String {
        match self.last_check_ago_secs {
            Some(s) => format!("{} ago", pages::human_secs(s)),
            None => "never".to_owned(),
        }
    }
}
