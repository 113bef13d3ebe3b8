//! `balancer`: the sticky consistent-hash reverse proxy (port 13003).

use std::process::ExitCode;

use hashgate::config::{BalancerConfig, Env};
use hashgate::{balancer, server, shutdown, telemetry};

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    // `balancer healthcheck`: the container probe (the image has no shell or
    // curl). An unparsable port falls back to the default; the server itself
    // would have refused to start with it anyway.
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let port = Env::from_process()
            .port_or("BALANCER_PORT", 13003)
            .unwrap_or(13003);
        return hashgate::healthcheck::main_for_port(port);
    }
    telemetry::init("info");
    let config = match BalancerConfig::from_env(&Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("balancer: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        rt.worker_threads(config.worker_threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("balancer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = server::bind(config.listen).await?;
        balancer::run(listener, config, shutdown::signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balancer: {e}");
            ExitCode::FAILURE
        }
    }
}
