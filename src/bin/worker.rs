//! `worker`: a sample job server for the gateway (render, parse, combo, ...).
//! See `worker --help` and [`hashgate::worker`].

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Parser;
use hashgate::server::EXIT_CONFIG;
use hashgate::worker::{self, WorkerConfig};
use hashgate::{shutdown, telemetry};

/// A sample hashgate worker: registers with the gateway through the
/// balancer, heartbeats, and serves POST /{type} with simulated work.
#[derive(Debug, Parser)]
#[command(name = "worker", version)]
struct Cli {
    /// Service type served at /{type} (render, parse, combo, ...).
    #[arg(long = "type", env = "WORKER_TYPE", default_value = "render")]
    service_type: String,
    /// Port to listen on.
    #[arg(long, env = "WORKER_PORT", value_parser = clap::value_parser!(u16).range(1..), default_value_t = 5001)]
    port: u16,
    /// Address to listen on.
    #[arg(long, env = "WORKER_LISTEN_HOST", default_value = "0.0.0.0")]
    listen_host: IpAddr,
    /// Host the gateway should connect to (what registration announces).
    #[arg(long, env = "WORKER_ADVERTISE_HOST", default_value = "127.0.0.1")]
    advertise_host: String,
    /// The master to register with: the balancer (or one API replica).
    #[arg(long, env = "MASTER_URL", default_value = "http://127.0.0.1:13003")]
    master: String,
    /// Name shown in listings (default TYPE-PORT).
    #[arg(long, env = "WORKER_NAME")]
    name: Option<String>,
    /// Weight for weighted round robin (1-1000).
    #[arg(long, env = "WORKER_WEIGHT", default_value_t = 1)]
    weight: u32,
    /// Simulated work per job, ms (a request's X-Work-Ms overrides).
    #[arg(long, env = "WORK_MS", default_value_t = 50)]
    work_ms: u64,
    /// Size of each answer, bytes (a request's X-Work-Bytes overrides).
    #[arg(long, env = "WORK_BYTES", default_value_t = 256)]
    work_bytes: usize,
    /// Jobs worked on at once; more wait in the queue (/api/queue).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    telemetry::init("info");
    let config = WorkerConfig::new(
        cli.service_type,
        cli.listen_host,
        cli.port,
        cli.advertise_host,
        &cli.master,
        cli.name,
        cli.weight,
        cli.work_ms,
        cli.work_bytes,
        cli.concurrency,
    );
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    worker::main_with(config, shutdown::signal())
}
