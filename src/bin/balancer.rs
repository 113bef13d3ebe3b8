//! `balancer`: the sticky consistent-hash reverse proxy (port 13003).
//!
//! `balancer` serves; `balancer healthcheck` probes `/health` for container
//! health checks (the image has no shell); `balancer ctl ...` drives a
//! running balancer's management API. Run `balancer --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hashgate::admin::ctl;
use hashgate::config::Env;
use hashgate::{balancer, shutdown, telemetry};

// mimalloc (v3): glibc's malloc was ~3.5% of the balancer's CPU under load
// (a few small allocations per request, freed on the same thread); with it,
// requests per core-second rose ~10% in bench/run.sh. It needs only a C
// compiler, which the bundled SQLite needs anyway. crates/alloc adds the
// thread that purges freed pages (idle connections' memory).
#[global_allocator]
static ALLOC: hashgate_alloc::MiMalloc = hashgate_alloc::MiMalloc;

/// The hashgate balancer: sticky consistent-hash HTTP load balancing.
///
/// Configured by the environment and `.env` (see .env.example); with no
/// command it serves.
#[derive(Debug, Parser)]
#[command(name = "balancer", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Probe this balancer's /health on 127.0.0.1:$BALANCER_PORT; exit 0 only on 200.
    Healthcheck,
    /// Manage a running balancer: list, drain, disable, enable, weight, add, remove, route, log.
    ///
    /// Reads LB_URL (default http://127.0.0.1:$BALANCER_PORT) and
    /// LB_ADMIN_TOKEN from the environment or .env. Exit status: 0 done,
    /// 1 refused by the balancer, 2 bad usage, 3 balancer unreachable.
    Ctl(ctl::Ctl),
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    // An unparsable port falls back to the default for the probe and the
    // CLI; the server itself refuses to start with it.
    let port = || {
        Env::from_process()
            .port_or("BALANCER_PORT", 13003)
            .unwrap_or(13003)
    };
    match cli.command {
        Some(Command::Healthcheck) => hashgate::health::selfcheck::main_for_port(port()),
        Some(Command::Ctl(c)) => ctl::run(c, port()),
        None => {
            // Returns freed memory to the OS when the workers go quiet.
            hashgate_alloc::init();
            telemetry::init("info");
            balancer::main_with(&Env::from_process(), shutdown::signal())
        }
    }
}
