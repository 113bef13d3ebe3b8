//! Runtime management: the operator's room, next to the request path and
//! never woven through it (Envoy's admin interface, HAProxy's runtime API).
//!
//! ```text
//!  discovery ──► Admin::discovered ──┐
//!                                    ├─► Overrides::layer ──► Proxy::set_backends (snapshot)
//!  POST /lb/backends/... ──► change ─┘          │
//!                                   LB_STATE_FILE (temp file + rename)
//! ```
//!
//! - [`overrides`]: the overrides by backend name and how they layer over
//!   discovery (pure).
//! - [`api`]: the HTTP side: the admin token (`LB_ADMIN_TOKEN`, compared in
//!   constant time; 403 while unset, 401 when wrong, and nothing changes),
//!   the management calls and `POST /lb/log`.
//! - [`ctl`]: `balancer ctl ...`, the command line for the same API.
//!
//! Changes are made one at a time: the new overrides are computed on a
//! copy, written to `LB_STATE_FILE` (when set), and only then published; a
//! failed write changes nothing. Each change is logged once, with what
//! changed. The request path sees only the published snapshot.

pub mod api;
pub mod ctl;
pub mod overrides;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::backend::Endpoint;
use crate::config::OpsConfig;
use crate::proxy::Proxy;
use overrides::{Op, OpError, Overrides};

/// The management state: the overrides, the last set discovery found,
/// where they are kept.
#[derive(Debug)]
pub struct Admin {
    state_file: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// One change at a time, from computing it to publishing it (held
    /// across the state file's write: management calls only).
    changing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Inner {
    overrides: Overrides,
    discovered: Vec<Endpoint>,
}

/// Why a change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Refused(#[from] OpError),
    #[error("cannot write the state file: {0}")]
    StateFile(String),
}

/// What a change did.
#[derive(Debug, Clone)]
pub struct Changed {
    /// `None` when it already was so.
    pub what: Option<String>,
    pub overrides: Overrides,
}

impl Admin {
    /// The management state, with the overrides `LB_STATE_FILE` holds (a
    /// missing file is an empty one; an unreadable or malformed one stops
    /// start-up with the variable named).
    pub fn load(config: &OpsConfig) -> Result<Admin, String> {
        let overrides = match &config.state_file {
            Some(path) => read_state(path)?,
            None => Overrides::default(),
        };
        if !overrides.backends.is_empty() {
            tracing::info!(
                overrides = overrides.backends.len(),
                "runtime overrides restored from LB_STATE_FILE"
            );
        }
        Ok(Admin {
            state_file: config.state_file.clone(),
            inner: Mutex::new(Inner {
                overrides,
                discovered: Vec::new(),
            }),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Discovery found `set`: publish it with the overrides layered over.
    pub fn discovered(&self, proxy: &Proxy, set: Vec<Endpoint>) {
        let mut inner = self.inner();
        inner.discovered = set;
        proxy.set_backends(inner.overrides.layer(&inner.discovered));
    }

    /// The overrides in effect.
    pub fn overrides(&self) -> Overrides {
        self.inner().overrides.clone()
    }

    /// Applies `op`: computed on a copy, written to the state file, then
    /// published and logged once.
    pub async fn change(&self, proxy: &Proxy, op: Op) -> Result<Changed, ChangeError> {
        let _one_at_a_time = self.changing.lock().await;
        let (mut next, discovered) = {
            let inner = self.inner();
            (inner.overrides.clone(), inner.discovered.clone())
        };
        let what = next.apply(&op, &discovered)?;
        if what.is_some() {
            if let Some(path) = &self.state_file {
                let (path, text) = (path.clone(), state_text(&next));
                tokio::task::spawn_blocking(move || write_atomically(&path, text.as_bytes()))
                    .await
                    .map_err(|e| ChangeError::StateFile(e.to_string()))?
                    .map_err(ChangeError::StateFile)?;
            }
            let mut inner = self.inner();
            inner.overrides = next.clone();
            proxy.set_backends(inner.overrides.layer(&inner.discovered));
        }
        match &what {
            Some(what) => {
                tracing::info!(backend = %op.name(), change = %what, "backend changed by an operator")
            }
            None => tracing::debug!(backend = %op.name(), "operator change: already so"),
        }
        Ok(Changed {
            what,
            overrides: next,
        })
    }
}

fn state_text(overrides: &Overrides) -> String {
    let mut text = serde_json::to_string_pretty(overrides).unwrap_or_default();
    text.push('\n');
    text
}

fn read_state(path: &Path) -> Result<Overrides, String> {
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(Overrides::default()),
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            format!("invalid LB_STATE_FILE={shown:?}: not a hashgate state file: {e}")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::default()),
        Err(e) => Err(format!(
            "invalid LB_STATE_FILE={shown:?}: cannot read it: {e}"
        )),
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a part: a temporary file beside it, flushed, renamed over.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_replaced_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("hashgate-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(
            read_state(&path),
            Ok(Overrides::default()),
            "missing = empty"
        );
        let mut o = Overrides::default();
        let e = Endpoint::from_addr("10.0.0.1:1".parse().unwrap(), 1);
        o.apply(&Op::Disable(e.name.clone()), &[e]).unwrap();
        write_atomically(&path, state_text(&o).as_bytes()).unwrap();
        assert_eq!(read_state(&path), Ok(o));
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        std::fs::write(&path, "{ not json").unwrap();
        let err = read_state(&path).unwrap_err();
        assert!(err.contains("LB_STATE_FILE"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
