//! `cluster`: the whole system on one machine (`cargo run --bin cluster`).
//!
//! `cluster [--instances N] [--start-port P] [--balancer-port P]
//! [--no-balancer] [--workers N]` starts and supervises the instances, the
//! balancer and sample workers; `cluster healthcheck` probes the balancer's
//! `/health`; `cluster __child api|balancer|worker` is the launcher
//! re-executing itself for one child (hidden, not meant to be typed).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hashgate::cluster::{self, ClusterConfig};
use hashgate::config::Env;
use hashgate::health::selfcheck;
use hashgate::{shutdown, telemetry};

// The launcher re-executes itself as the balancer child: same allocator as
// the `balancer` binary (see there).
#[global_allocator]
static ALLOC: hashgate_alloc::MiMalloc = hashgate_alloc::MiMalloc;

/// hashgate on one machine: API instances on 13004.., the balancer on
/// 13003, and optionally sample workers on 5001.., on the embedded database
/// unless MySQL is configured.
///
/// Values are checked (and bad ones named) by the same rules as the
/// variables they override.
#[derive(Debug, Parser)]
#[command(name = "cluster", version)]
struct Cli {
    /// API instances to start.
    #[arg(short = 'n', long, env = "INSTANCE_COUNT", value_name = "N")]
    instances: Option<String>,
    /// Port of the first instance; the others follow.
    #[arg(long, env = "START_PORT", value_name = "P")]
    start_port: Option<String>,
    /// Port of the balancer.
    #[arg(long, env = "BALANCER_PORT", value_name = "P")]
    balancer_port: Option<String>,
    /// Start only the instances (and workers), no balancer.
    #[arg(long)]
    no_balancer: bool,
    /// Sample workers to start (render, parse, combo, ...) on 5001.. (WORKER_START_PORT);
    /// with the embedded database a development key and a ready curl are printed.
    #[arg(long, env = "WORKER_COUNT", value_name = "N")]
    workers: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Probe the balancer's /health on 127.0.0.1; exit 0 only on 200.
    Healthcheck,
    /// One child of the launcher (internal).
    #[command(name = "__child", hide = true)]
    Child { kind: String },
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("__child") {
        return child(&std::env::args().nth(2).unwrap_or_default());
    }
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let mut env = Env::from_process();
    for (var, value) in [
        ("INSTANCE_COUNT", &cli.instances),
        ("START_PORT", &cli.start_port),
        ("BALANCER_PORT", &cli.balancer_port),
        ("WORKER_COUNT", &cli.workers),
    ] {
        if let Some(v) = value {
            env.set(var, v.clone());
        }
    }
    match cli.command {
        Some(Command::Healthcheck) => {
            return selfcheck::main_for_port(env.port_or("BALANCER_PORT", 13003).unwrap_or(13003));
        }
        Some(Command::Child { kind }) => return child(&kind),
        None => {}
    }
    telemetry::init("info");
    let mut config = match ClusterConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cluster: {e}");
            return ExitCode::from(2);
        }
    };
    config.balancer = !cli.no_balancer;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cluster: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cluster::run(config, shutdown::signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One child of the launcher. The parent already loaded `.env` into the
/// environment we inherit.
fn child(kind: &str) -> ExitCode {
    hashgate_alloc::init();
    telemetry::init("info");
    cluster::child::main(kind, &Env::from_process())
}
