//! `api`: one API instance (port 13004 by default).
//!
//! `api [--port N]` serves; `api healthcheck` probes `/health` on the
//! configured port for container health checks (the image has no shell).

use std::process::ExitCode;

use hashgate::config::Env;
use hashgate::health::selfcheck;
use hashgate::{api, shutdown, telemetry};

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let mut env = Env::from_process();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "healthcheck" => {
                return selfcheck::main_for_port(env.port_or("PORT", 13004).unwrap_or(13004));
            }
            "--port" | "-p" => match args.next() {
                Some(p) => env.set("PORT", p),
                None => return usage("--port needs a value"),
            },
            other => match other.strip_prefix("--port=") {
                Some(p) => env.set("PORT", p),
                None if other == "--help" || other == "-h" => {
                    println!("usage: api [--port N] | api healthcheck");
                    return ExitCode::SUCCESS;
                }
                None => return usage(&format!("unknown argument {other:?}")),
            },
        }
    }
    telemetry::init("info");
    api::main_with(&env, shutdown::signal())
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("api: {msg}\nusage: api [--port N] | api healthcheck");
    ExitCode::from(2)
}
