//! Logging set-up shared by the binaries: `RUST_LOG` filters, `info` by
//! default, and the filter can be changed while the process runs
//! ([`set_filter`], the balancer's `POST /lb/log`) through
//! tracing-subscriber's `reload` layer: a verbose-log switch without a
//! restart.

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// The installed filter's reload handle and its directives as last set.
static FILTER: OnceLock<(reload::Handle<EnvFilter, Registry>, Mutex<String>)> = OnceLock::new();

/// Installs the global subscriber. `default` applies when `RUST_LOG` is unset
/// (e.g. `"info"`); output goes to stderr so stdout stays for CLI output.
pub fn init(default: &str) {
    let (filter, text) = match std::env::var("RUST_LOG") {
        Ok(v) if EnvFilter::try_new(&v).is_ok() => (EnvFilter::new(&v), v),
        _ => (EnvFilter::new(default), default.to_owned()),
    };
    // Colour only on a terminal: piped or captured logs stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let (filter, handle) = reload::Layer::new(filter);
    let output = fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false);
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set((handle, Mutex::new(text)));
    }
}

/// Why the filter was not changed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("logging was not set up by this process")]
    NotInstalled,
    #[error("{0}")]
    Invalid(String),
}

/// Replaces the log filter (`RUST_LOG` syntax: `debug`,
/// `info,hashgate=debug`); returns the one it replaced.
pub fn set_filter(directives: &str) -> Result<String, FilterError> {
    let (handle, current) = FILTER.get().ok_or(FilterError::NotInstalled)?;
    let filter = EnvFilter::try_new(directives).map_err(|e| FilterError::Invalid(e.to_string()))?;
    handle
        .reload(filter)
        .map_err(|e| FilterError::Invalid(e.to_string()))?;
    let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
    Ok(std::mem::replace(&mut current, directives.to_owned()))
}

/// The filter in effect, when this process set up logging.
pub fn current_filter() -> Option<String> {
    FILTER
        .get()
        .map(|(_, c)| c.lock().unwrap_or_else(|p| p.into_inner()).clone())
}
