//! `api`: one API instance, a gateway replica (port 13004 by default).
//!
//! `api [--port N]` serves; `api healthcheck` probes `/health` for container
//! health checks (the image has no shell); `api keys create|list|revoke`
//! manages API keys in the shared database. Run `api --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hashgate::api::cli::{self, KeysAction};
use hashgate::config::Env;
use hashgate::health::selfcheck;
use hashgate::{api, shutdown, telemetry};

/// One hashgate API instance: a gateway replica behind the balancer.
///
/// Configured by the environment and `.env` (see .env.example); the flags
/// below override the variables they name.
#[derive(Debug, Parser)]
#[command(name = "api", version)]
struct Cli {
    /// Port to listen on.
    #[arg(long, short, env = "PORT", value_parser = clap::value_parser!(u16).range(1..), default_value_t = 13004, global = true)]
    port: u16,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Probe this instance's /health on 127.0.0.1; exit 0 only on 200.
    Healthcheck,
    /// Manage API keys (stored as SHA-256 digests in the shared database).
    Keys {
        #[command(subcommand)]
        action: Keys,
    },
}

#[derive(Debug, Subcommand)]
enum Keys {
    /// Create a key and print it once (alone on stdout).
    Create {
        /// A unique name to list and revoke the key by.
        #[arg(long)]
        name: String,
    },
    /// List keys: id, name, prefix, created, last used, revoked.
    List,
    /// Revoke a key by name or id; every replica refuses it within seconds.
    Revoke {
        /// The key's name, or its id from `api keys list`.
        #[arg(value_name = "NAME|ID")]
        key: String,
    },
}

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let mut env = Env::from_process();
    env.set("PORT", cli.port.to_string());
    match cli.command {
        Some(Command::Healthcheck) => selfcheck::main_for_port(cli.port),
        Some(Command::Keys { action }) => {
            telemetry::init("warn");
            let action = match action {
                Keys::Create { name } => KeysAction::Create { name },
                Keys::List => KeysAction::List,
                Keys::Revoke { key } => KeysAction::Revoke { name_or_id: key },
            };
            cli::keys_main(&env, action)
        }
        None => {
            telemetry::init("info");
            api::main_with(&env, shutdown::signal())
        }
    }
}
