//! One shutdown path for every binary and background loop.
//!
//! `main` passes [`signal()`] (SIGINT or SIGTERM) to a `run` function; tests
//! pass their own future. `run` turns it into a [`Shutdown`] handle that the
//! accept loop and every background task clone and watch.

use std::future::Future;

use tokio::sync::watch;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (`docker stop`, systemd,
/// Kubernetes).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A cloneable view of "has shutdown begun?".
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A handle that fires when `trigger` resolves (spawns a small task).
    pub fn from_future(trigger: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// A handle and the sender that fires it (for code that decides itself).
    pub fn manual() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (at once if it already has; also when
    /// the trigger is dropped, so a lost trigger never hangs a loop forever).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|&v| v).await;
    }
}
