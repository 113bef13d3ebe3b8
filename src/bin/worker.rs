//! `worker`: a sample job server for the gateway (render, parse, combo, ...).
//! See `worker --help` and [`hashgate::worker`].

use std::process::ExitCode;

use clap::Parser;
use hashgate::server::EXIT_CONFIG;
use hashgate::worker::{self, WorkerArgs};
use hashgate::{shutdown, telemetry};

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let args = WorkerArgs::parse();
    telemetry::init("info");
    match args.into_config() {
        Ok(config) => worker::main_with(config, shutdown::signal()),
        Err(e) => {
            eprintln!("worker: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
