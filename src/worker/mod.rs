//! The sample worker (`worker` binary): a job server of one service type
//! that registers with the gateway, heartbeats, and does simulated work.
//!
//! It stands in for the render / parse / combo servers the gateway fronts,
//! and is what the tests and `cluster --workers N` run:
//! - `POST|GET|PUT|DELETE /{type}[/...]`: one job: reads the body, waits for
//!   a run slot (`--concurrency`; the others wait, "pending"), works
//!   `--work-ms` (or the request's `X-Work-Ms`), answers `--work-bytes`
//!   bytes of JSON (or `X-Work-Bytes`) in chunks.
//! - `GET /health`, `GET /api/queue` (ComfyUI's shape: `queue_running`,
//!   `queue_pending`), `GET /stats` (jobs received and finished).
//! - Registers through `--master` (the balancer, in a real set-up), then
//!   heartbeats every interval the master announced with its real CPU and
//!   memory use and its queue length; re-registers when the master forgot
//!   it. On SIGTERM it stops accepting, finishes its jobs and reports itself
//!   offline.
//!
//! Registration is not authenticated, as today's registry routes are not:
//! the registry is meant for a private network between workers and
//! replicas (README: "Gateway", registration).

mod jobs;
mod master;
mod sys;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use clap::Parser;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::server::{self, ServeOptions};
use crate::shutdown::Shutdown;

/// A sample hashgate worker: registers with the gateway through the
/// balancer, heartbeats, and serves POST /{type} with simulated work.
#[derive(Debug, Parser)]
#[command(name = "worker", version)]
pub struct WorkerArgs {
    /// Service type served at /{type} (render, parse, combo, ...).
    #[arg(long = "type", env = "WORKER_TYPE", default_value = "render")]
    pub service_type: String,
    /// Port to listen on.
    #[arg(long, env = "WORKER_PORT", value_parser = clap::value_parser!(u16).range(1..), default_value_t = 5001)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "WORKER_LISTEN_HOST", default_value = "0.0.0.0")]
    pub listen_host: IpAddr,
    /// Host the gateway should connect to (what registration announces).
    #[arg(long, env = "WORKER_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// The master to register with: the balancer (or one API replica).
    #[arg(long, env = "MASTER_URL", default_value = "http://127.0.0.1:13003")]
    pub master: String,
    /// Name shown in listings (default TYPE-PORT).
    #[arg(long, env = "WORKER_NAME")]
    pub name: Option<String>,
    /// Weight for weighted round robin (1-1000).
    #[arg(long, env = "WORKER_WEIGHT", default_value_t = 1)]
    pub weight: u32,
    /// Simulated work per job, ms (a request's X-Work-Ms overrides).
    #[arg(long, env = "WORK_MS", default_value_t = 50)]
    pub work_ms: u64,
    /// Size of each answer, bytes (a request's X-Work-Bytes overrides).
    #[arg(long, env = "WORK_BYTES", default_value_t = 256)]
    pub work_bytes: usize,
    /// Jobs worked on at once; more wait in the queue (/api/queue).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
}

impl WorkerArgs {
    /// The checked configuration; the error names the flag and variable.
    pub fn into_config(self) -> Result<WorkerConfig, String> {
        WorkerConfig::new(
            self.service_type,
            self.listen_host,
            self.port,
            self.advertise_host,
            &self.master,
            self.name,
            self.weight,
            self.work_ms,
            self.work_bytes,
            self.concurrency,
        )
    }
}

/// A worker's settings (flags, or the environment).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub service_type: String,
    pub listen: SocketAddr,
    /// The host the gateway should connect to.
    pub advertise_host: String,
    /// Base URL of the master: the balancer or one replica (`http://...`).
    pub master: hyper::Uri,
    pub name: String,
    pub weight: u32,
    pub work: Duration,
    pub work_bytes: usize,
    pub concurrency: usize,
}

impl WorkerConfig {
    /// Checks what the flags and variables gave; the error names the flag.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service_type: String,
        host: IpAddr,
        port: u16,
        advertise_host: String,
        master: &str,
        name: Option<String>,
        weight: u32,
        work_ms: u64,
        work_bytes: usize,
        concurrency: usize,
    ) -> Result<WorkerConfig, String> {
        crate::api::input::check_new_service_type("type", &service_type)
            .map_err(|e| format!("--type / WORKER_TYPE: {e}"))?;
        crate::api::input::check_host("host", &advertise_host)
            .map_err(|e| format!("--advertise-host / WORKER_ADVERTISE_HOST: {e}"))?;
        let master: hyper::Uri = master
            .trim_end_matches('/')
            .parse()
            .map_err(|e| format!("--master / MASTER_URL {master:?}: {e}"))?;
        if master.scheme_str() != Some("http") || master.authority().is_none() {
            return Err(format!(
                "--master / MASTER_URL {master:?}: use http://host:port (the balancer or a replica)"
            ));
        }
        if !(1..=1000).contains(&weight) {
            return Err("--weight / WORKER_WEIGHT: must be between 1 and 1000".into());
        }
        if !(1..=10_000).contains(&concurrency) {
            return Err("--concurrency / WORKER_CONCURRENCY: must be between 1 and 10000".into());
        }
        let name = name.unwrap_or_else(|| format!("{service_type}-{port}"));
        crate::api::input::check_text("name", &name, 128)
            .map_err(|e| format!("--name / WORKER_NAME: {e}"))?;
        Ok(WorkerConfig {
            service_type,
            listen: SocketAddr::new(host, port),
            advertise_host,
            master,
            name,
            weight,
            work: Duration::from_millis(work_ms),
            work_bytes,
            concurrency,
        })
    }
}

/// Serves jobs on `listener` and keeps registered until `shutdown`; then
/// finishes the jobs in hand and reports itself offline.
pub async fn run(
    listener: TcpListener,
    mut config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = Shutdown::from_future(shutdown);
    let local = listener.local_addr()?;
    config.listen = local;
    let state = Arc::new(jobs::Jobs::new(config.clone()));
    tracing::info!(listen = %local, service_type = %config.service_type, master = %config.master, "worker starting");
    let registration = tokio::spawn(master::keep_registered(state.clone(), shutdown.clone()));
    let router = jobs::router(state.clone());
    let opts = ServeOptions {
        grace: Duration::from_secs(30),
        ..ServeOptions::default()
    };
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
    if let Ok(Some(id)) = registration.await {
        master::report_offline(&state, id).await;
    }
    tracing::info!(worker = %config.name, "worker stopped");
    Ok(())
}

/// The whole life of a worker process (the `worker` binary and the cluster
/// launcher's worker children).
pub fn main_with(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::process::ExitCode {
    server::main_with(
        "worker",
        Ok(config),
        |c| server::Listen::on(c.listen, server::Threads::Shared(2)),
        |listener, config| run(listener, config, shutdown),
    )
}
