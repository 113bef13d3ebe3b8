//! The API instance: one replica behind the balancer.
//!
//! [`app`] builds the axum router (handlers testable without a socket);
//! [`run`] serves it through the shared accept loop ([`crate::server`]) and
//! starts the background work: migrations (retried until the database is
//! there, so an instance started before its database still comes up, with
//! `/health` saying why it is not ready) and the offline sweep.
//!
//! The process never exits because the database went away: requests that
//! need it get a 503 within the pool's acquire timeout (worker lists read
//! recently get their last answer instead, see [`stale`]), `/health` turns
//! 503, and the pool reconnects by itself when the database returns.

pub mod cli;
pub mod config;
pub mod error;
mod gateway;
pub mod input;
mod stale;
mod status;
mod tasks;
pub mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tokio::net::TcpListener;
use tower::ServiceExt;

pub use config::ApiConfig;
use error::ApiError;

use crate::gateway::Gateway;
use crate::proxy::client_ip::TrustedProxies;
use crate::server::{self, ServeOptions};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::store::workers::WorkerFilter;
use stale::StaleCache;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub instance: String,
    pub port: u16,
    pub config: ApiConfig,
    pub store: Store,
    pub trusted: TrustedProxies,
    pub started: Instant,
    pub requests: AtomicU64,
    /// Dispatch to workers, keys and metering.
    pub gateway: Arc<Gateway>,
    /// The last worker list read per filter, for a database outage.
    pub(crate) stale_lists: StaleCache<WorkerFilter>,
    instance_header: HeaderValue,
    migrated: AtomicBool,
    /// Why the last migration attempt failed (shown by `/health`).
    migrate_error: Mutex<Option<String>>,
}

impl AppState {
    /// State for an instance listening on `port`; opens (but does not
    /// connect) the database pool.
    pub fn new(config: ApiConfig, port: u16) -> std::io::Result<AppState> {
        let instance = config.instance_for(port);
        let instance_header = HeaderValue::from_str(&instance)
            .map_err(|_| std::io::Error::other("INSTANCE_ID is not a valid header value"))?;
        Ok(AppState {
            gateway: Arc::new(Gateway::new(config.gateway.clone(), instance.clone())),
            stale_lists: StaleCache::new(config.workers_stale),
            store: Store::open(config.db.clone())?,
            trusted: TrustedProxies::new(config.trusted_proxies.clone()),
            instance,
            instance_header,
            port,
            config,
            started: Instant::now(),
            requests: AtomicU64::new(0),
            migrated: AtomicBool::new(false),
            migrate_error: Mutex::new(None),
        })
    }

    /// The store, once the schema is in place.
    pub fn store(&self) -> Result<&Store, ApiError> {
        if self.migrated.load(Relaxed) {
            return Ok(&self.store);
        }
        Err(ApiError::Unavailable(self.not_ready_reason()))
    }

    fn not_ready_reason(&self) -> String {
        let last = self
            .migrate_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match last {
            Some(e) => format!("schema migrations not applied yet: {e}"),
            None => "schema migrations not applied yet".to_owned(),
        }
    }

    /// `Ok` when the schema is in place and the database answers in time.
    pub async fn check_db(&self) -> Result<(), String> {
        if !self.migrated.load(Relaxed) {
            return Err(self.not_ready_reason());
        }
        let db = &self.config.db;
        let limit = db
            .query_timeout
            .min(db.acquire_timeout + Duration::from_secs(1));
        self.store.ping(limit).await.map_err(|e| e.to_string())
    }

    pub fn heartbeat_interval_ms(&self) -> u64 {
        u64::try_from(self.config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX)
    }

    fn set_migrated(&self, result: Result<(), String>) {
        let mut last = self.migrate_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                *last = None;
                self.migrated.store(true, Relaxed);
            }
            Err(e) => *last = Some(e),
        }
    }
}

/// The router: every route, the body limit, the `X-Instance-Id` stamp.
pub fn app(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/health", get(status::health))
        .route("/status.html", get(status::page))
        .route("/api/client-ip", get(status::client_ip))
        .route("/api/v1/worker/register", post(workers::register))
        .route("/api/v1/worker/heartbeat", post(workers::heartbeat))
        .route("/api/v1/workers", get(workers::list))
        .route(
            "/api/v1/workers/{id}",
            get(workers::get).delete(workers::remove),
        )
        .route("/api/v1/usage", get(gateway::usage))
        // Everything else under /api/v1/ is a service type: the static
        // routes above take precedence (the router prefers static segments),
        // and registration refuses their names as service types.
        .route("/api/v1/{service}", any(gateway::dispatch))
        .route("/api/v1/{service}/{*rest}", any(gateway::dispatch))
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), stamp))
        .with_state(state)
}

/// Counts the request and names the instance on every response.
async fn stamp(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    s.requests.fetch_add(1, Relaxed);
    let mut resp = next.run(req).await.into_response();
    resp.headers_mut()
        .insert("x-instance-id", s.instance_header.clone());
    resp
}

/// Serves the API on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = Shutdown::from_future(shutdown);
    let local = listener.local_addr()?;
    let opts = ServeOptions {
        grace: config.shutdown_grace,
        ..ServeOptions::default()
    };
    let state = Arc::new(AppState::new(config, local.port())?);
    tracing::info!(
        listen = %local,
        instance = %state.instance,
        database = %state.store.config().describe(),
        "api instance starting"
    );
    tokio::spawn(tasks::migrate_then_sweep(state.clone(), shutdown.clone()));
    // The meter outlives the accept loop: requests still draining record
    // their rows, then the meter writes what is left.
    let (close_meter, meter_closed) = Shutdown::manual();
    let metering = state.gateway.start_metering(&state.store, &meter_closed);
    let router = app(state.clone());
    server::serve(
        listener,
        opts,
        move |peer: SocketAddr| {
            let router = router.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move { Ok::<_, Infallible>(router.oneshot(req).await.into_response()) }
            })
        },
        shutdown,
    )
    .await;
    let _ = close_meter.send(true);
    let _ = metering.await;
    state.store.close().await;
    tracing::info!(instance = %state.instance, "api instance stopped");
    Ok(())
}

/// The whole life of an API process, shared by the `api` binary and the
/// cluster launcher's children: parse `env`, serve until `shutdown`.
pub fn main_with(
    env: &crate::config::Env,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::process::ExitCode {
    server::main_with(
        "api",
        ApiConfig::from_env(env),
        |c| server::Listen::on(c.listen, server::Threads::Shared(0)),
        |listener, config| run(listener, config, shutdown),
    )
}
