//! `cluster`: the whole system on one machine (`cargo run --bin cluster`).
//!
//! `cluster [--instances N] [--start-port P] [--no-balancer]` starts and
//! supervises the instances and the balancer; `cluster healthcheck` probes
//! the balancer's `/health`; `cluster __child api|balancer` is the launcher
//! re-executing itself for one child (not meant to be typed).

use std::process::ExitCode;

use hashgate::cluster::{self, ClusterConfig};
use hashgate::config::Env;
use hashgate::health::selfcheck;
use hashgate::{shutdown, telemetry};

// The launcher re-executes itself as the balancer child: same allocator as
// the `balancer` binary (see there).
#[global_allocator]
static ALLOC: hashgate_alloc::MiMalloc = hashgate_alloc::MiMalloc;

const USAGE: &str =
    "usage: cluster [--instances N] [--start-port P] [--no-balancer] | cluster healthcheck";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__child") {
        hashgate_alloc::init();
        // The parent already loaded `.env` into the environment we inherit.
        telemetry::init("info");
        let kind = args.get(1).map(String::as_str).unwrap_or("");
        return cluster::child::main(kind, &Env::from_process());
    }
    let _ = dotenvy::dotenv();
    let mut env = Env::from_process();
    if args.first().map(String::as_str) == Some("healthcheck") {
        return selfcheck::main_for_port(env.port_or("BALANCER_PORT", 13003).unwrap_or(13003));
    }
    let mut balancer = true;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let var = match flag {
            "--instances" | "-n" => "INSTANCE_COUNT",
            "--start-port" => "START_PORT",
            "--balancer-port" => "BALANCER_PORT",
            "--no-balancer" => {
                balancer = false;
                continue;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        };
        match inline.or_else(|| it.next().cloned()) {
            Some(v) => env.set(var, v),
            None => return usage(&format!("{flag} needs a value")),
        }
    }
    telemetry::init("info");
    let mut config = match ClusterConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cluster: {e}");
            return ExitCode::from(2);
        }
    };
    config.balancer = balancer;
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

fn usage(msg: &str) -> ExitCode {
    eprintln!("cluster: {msg}\n{USAGE}");
    ExitCode::from(2)
}
