//! Child mode: `cluster __child api|balancer|worker`, the launcher re-executing
//! itself.
//!
//! `cargo run --bin cluster` builds only the `cluster` binary, so the
//! launcher cannot count on sibling `api`/`balancer` executables. It runs its
//! own executable in child mode instead: each instance is still a separate
//! OS process (a crash takes down one instance, not the cluster), running the
//! same library code as the standalone binaries.
//!
//! A child stops on SIGINT/SIGTERM as usual, and also when its stdin reaches
//! end-of-file: the launcher holds the write end, so closing it is how the
//! launcher asks for a graceful stop, and a launcher that dies (even by
//! SIGKILL) takes its children with it instead of leaving orphans.

use std::future::Future;
use std::io::Read;
use std::process::ExitCode;

use crate::config::Env;
use crate::server::EXIT_CONFIG;
use crate::{api, balancer, shutdown, worker};

/// Runs child `kind` (`api` or `balancer`) to completion.
pub fn main(kind: &str, env: &Env) -> ExitCode {
    match kind {
        "api" => api::main_with(env, stop_signal()),
        "balancer" => balancer::main_with(env, stop_signal()),
        "worker" => {
            use clap::Parser;
            // The launcher set WORKER_* in our environment; no flags.
            match worker::WorkerArgs::try_parse_from(["worker"])
                .map_err(|e| e.to_string())
                .and_then(worker::WorkerArgs::into_config)
            {
                Ok(config) => worker::main_with(config, stop_signal()),
                Err(e) => {
                    eprintln!("worker: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        other => {
            eprintln!("cluster: unknown child kind {other:?}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// SIGINT, SIGTERM or end-of-file on stdin, whichever comes first.
fn stop_signal() -> impl Future<Output = ()> + Send + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // A plain thread, not tokio's blocking pool: a read that never returns
    // must not hold up the runtime's shutdown after a signal.
    let _ = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
    async move {
        tokio::select! {
            () = shutdown::signal() => {}
            _ = rx => tracing::info!("launcher closed stdin, shutting down"),
        }
    }
}
