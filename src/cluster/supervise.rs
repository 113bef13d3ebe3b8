//! One supervised child: spawn, relay its output line by line under its
//! name, restart it with back-off when it dies, stop it gracefully on
//! request.
//!
//! A child that exits because it cannot bind its port or has a bad
//! configuration is not restarted: restarting would fail the same way
//! forever, so the launcher is told and stops everything instead.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::server::{EXIT_BIND_FAILED, EXIT_CONFIG};
use crate::shutdown::Shutdown;

/// How to start one child.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `api-1`, ..., `lb`.
    pub name: String,
    /// `api`, `balancer` or `worker`.
    pub kind: &'static str,
    pub port: u16,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<&'static str>,
    /// ANSI colour of the name prefix, when output is a terminal.
    pub colour: u8,
}

/// Something the launcher must act on.
#[derive(Debug)]
pub enum Event {
    Started {
        name: String,
        pid: u32,
    },
    /// The child cannot run at all (port in use, bad config, spawn failed).
    Fatal {
        name: String,
        reason: String,
    },
}

/// Time a child gets to stop after its stdin is closed, before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long counts as healthy again: back-off resets.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Runs `spec` until `stop` fires (then stops the child and returns).
pub async fn supervise(
    exe: Arc<PathBuf>,
    spec: Spec,
    events: mpsc::UnboundedSender<Event>,
    stop: Shutdown,
) {
    let prefix = Arc::new(prefix(&spec));
    let mut backoff = BACKOFF_START;
    loop {
        let started = Instant::now();
        let mut child = match spawn(&exe, &spec, &prefix) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot start {}: {e}", exe.display());
                let _ = events.send(Event::Fatal {
                    name: spec.name.clone(),
                    reason,
                });
                return;
            }
        };
        // Held here, not in `child`: tokio's `Child::wait` closes the stdin
        // it holds, and a closed stdin is the child's cue to stop.
        let stdin = child.stdin.take();
        let pid = child.id().unwrap_or(0);
        tracing::info!(child = %spec.name, pid, port = spec.port, "started");
        let _ = events.send(Event::Started {
            name: spec.name.clone(),
            pid,
        });

        let status = tokio::select! {
            s = child.wait() => s,
            () = stop.wait() => {
                drop(stdin);
                stop_child(&spec.name, child).await;
                return;
            }
        };
        drop(stdin);
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(child = %spec.name, error = %e, "cannot wait for child");
                return;
            }
        };
        if stop.is_triggered() {
            return;
        }
        if let Some(reason) = fatal_reason(&spec, status) {
            let _ = events.send(Event::Fatal {
                name: spec.name.clone(),
                reason,
            });
            return;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_START;
        }
        tracing::warn!(child = %spec.name, pid, %status, restart_in = ?backoff, "child exited, restarting");
        tokio::select! {
            () = stop.wait() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn fatal_reason(spec: &Spec, status: ExitStatus) -> Option<String> {
    let code = u8::try_from(status.code()?).ok()?;
    match code {
        EXIT_BIND_FAILED => Some(format!(
            "port {} is already in use or cannot be bound",
            spec.port
        )),
        EXIT_CONFIG => Some("invalid configuration (see its log line above)".to_owned()),
        _ => None,
    }
}

fn spawn(exe: &PathBuf, spec: &Spec, prefix: &Arc<String>) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("__child")
        .arg(spec.kind)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a terminal's Ctrl-C reaches only the launcher,
        // which then stops the children in order (closing their stdin).
        .process_group(0)
        .kill_on_drop(true);
    for var in &spec.env_remove {
        cmd.env_remove(var);
    }
    if !std::io::stderr().is_terminal() {
        cmd.env("NO_COLOR", "1");
    }
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(relay(out, prefix.clone(), false));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(relay(err, prefix.clone(), true));
    }
    Ok(child)
}

/// Waits for a child whose stdin was just closed (its cue to drain and
/// exit); SIGKILL after [`STOP_GRACE`].
async fn stop_child(name: &str, mut child: Child) {
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(child = %name, %status, "stopped"),
        Ok(Err(e)) => tracing::warn!(child = %name, error = %e, "cannot wait for child"),
        Err(_) => {
            tracing::warn!(child = %name, grace = ?STOP_GRACE, "did not stop in time, killing it");
            let _ = child.kill().await;
        }
    }
}

/// `api-1 | ` padded to a common width, coloured on a terminal.
fn prefix(spec: &Spec) -> String {
    let name = format!("{:<6}|", spec.name);
    if std::io::stderr().is_terminal() {
        format!("\x1b[{}m{name}\x1b[0m ", spec.colour)
    } else {
        format!("{name} ")
    }
}

/// Copies lines from a child's pipe to ours, each under the child's name;
/// one `write_all` per line so lines of different children never interleave.
async fn relay(pipe: impl AsyncRead + Unpin, prefix: Arc<String>, to_stderr: bool) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::with_capacity(256);
    // Bytes, not `lines()`: a non-UTF-8 line must not stop the relay (the
    // child would then block on a full pipe).
    while matches!(reader.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
        let text = String::from_utf8_lossy(&line);
        let out = format!("{prefix}{}\n", text.trim_end_matches(['\n', '\r']));
        let _ = if to_stderr {
            std::io::stderr().lock().write_all(out.as_bytes())
        } else {
            std::io::stdout().lock().write_all(out.as_bytes())
        };
        line.clear();
    }
}
