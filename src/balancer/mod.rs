//! The balancer's wiring: the request path's shared state ([`Proxy`]), the
//! fast path in front of it, the background loops (discovery, health,
//! least-queue polling, the idle clock) and `run`.
//!
//! The request path reads one snapshot of the backend set through an
//! `ArcSwap` (no lock, no await while holding anything); discovery builds a
//! new snapshot off the hot path only when the set changed, reusing the
//! `Arc<Backend>` of every surviving endpoint so health, outlier state and
//! counters carry over, and swaps it in.

mod queue;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;

use crate::config::BalancerConfig;
use crate::discovery::Discovery;
use crate::proxy::h1::{Connection, FastPath};
use crate::proxy::{DiscoveryState, Proxy};
use crate::select::Strategy;
use crate::server::{self, ServeOptions};
use crate::shutdown::Shutdown;

/// The whole life of a balancer process, shared by the `balancer` binary and
/// the cluster launcher's child: parse `env`, serve until `shutdown`.
pub fn main_with(
    env: &crate::config::Env,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::process::ExitCode {
    server::main_with(
        "balancer",
        BalancerConfig::from_env(env),
        |c| (c.listen, server::Threads::PerCore(c.worker_threads)),
        |listener, config| run(listener, config, shutdown),
    )
}

/// Runs the balancer on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: BalancerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = Shutdown::from_future(shutdown);
    let discovery = Discovery::new(config.discovery.clone()).map_err(std::io::Error::other)?;
    let opts = ServeOptions {
        max_header_bytes: config.limits.max_header_bytes,
        idle_timeout: config.limits.idle_timeout,
        header_timeout: config.limits.header_timeout,
        write_timeout: config.limits.client_write_timeout,
        grace: config.shutdown_grace,
        max_connections: config.max_client_connections,
        head_timeout_answer: crate::proxy::h1::head_timeout_answer,
        shed: None,
    };
    let proxy = Arc::new(Proxy::new(config, status::handle));
    tracing::info!(
        listen = %listener.local_addr()?,
        discovery = discovery.mode(),
        strategy = %proxy.config.strategy.strategy,
        "balancer starting"
    );

    // The first discovery completes before we accept, so the first request
    // already has a backend set (a failure is logged and retried by the loop).
    refresh(&proxy, &discovery).await;
    let fast = FastPath::new(Arc::clone(&proxy));
    // At the connection budget, idle fast-path connections make room.
    let opts = ServeOptions {
        shed: Some(Arc::clone(&fast) as Arc<dyn server::ShedIdle>),
        ..opts
    };
    let mut background = vec![
        tokio::spawn(discovery_loop(
            Arc::clone(&proxy),
            discovery,
            shutdown.clone(),
        )),
        tokio::spawn(crate::health::checker::run(
            Arc::clone(&proxy.backends),
            proxy.config.health.clone(),
            proxy.config.outlier,
            shutdown.clone(),
        )),
        tokio::spawn({
            let (fast, shutdown) = (Arc::clone(&fast), shutdown.clone());
            async move {
                fast.idle.run(shutdown).await;
                fast.parking.wake();
            }
        }),
    ];
    if proxy.config.strategy.strategy == Strategy::LeastQueue {
        background.push(tokio::spawn(queue::run(
            Arc::clone(&proxy),
            shutdown.clone(),
        )));
    }
    fast.start_parking();

    let handler = Arc::clone(&fast);
    server::serve_with(
        listener,
        opts,
        move |_peer: SocketAddr| Connection(Arc::clone(&handler)),
        shutdown,
    )
    .await;
    for task in background {
        task.abort();
    }
    tracing::info!("balancer stopped");
    Ok(())
}

/// One discovery refresh: publish a good answer, keep the last good set on a
/// bad one and say so once per failure streak.
async fn refresh(proxy: &Proxy, discovery: &Discovery) {
    match discovery.discover().await {
        Ok(set) if !set.is_empty() => {
            let n = set.len();
            proxy.set_backends(set);
            record(proxy, true, format!("{n} backends"));
        }
        Ok(_) => keep_last(proxy, "no backends found".to_owned()),
        Err(e) => keep_last(proxy, e.to_string()),
    }
}

fn record(proxy: &Proxy, ok: bool, message: String) {
    let mut d = proxy.discovery.lock().unwrap_or_else(|p| p.into_inner());
    *d = DiscoveryState {
        last_refresh: Some(SystemTime::now()),
        ok,
        message,
    };
}

fn keep_last(proxy: &Proxy, why: String) {
    let was_ok = {
        let d = proxy.discovery.lock().unwrap_or_else(|p| p.into_inner());
        d.ok || d.last_refresh.is_none()
    };
    let kept = proxy.backends.load().backends.len();
    if was_ok {
        tracing::warn!(error = %why, kept, "discovery failed, keeping the last good backend set");
    }
    record(proxy, false, format!("{why}; kept {kept} backends"));
}

fn discovery_ok(proxy: &Proxy) -> bool {
    proxy.discovery.lock().unwrap_or_else(|p| p.into_inner()).ok
}

async fn discovery_loop(proxy: Arc<Proxy>, discovery: Discovery, shutdown: Shutdown) {
    let Some(every) = discovery.refresh_interval() else {
        return;
    };
    // After a failure, retry sooner (but never spin): a floor of one second.
    let retry = (every / 4).max(Duration::from_secs(1)).min(every);
    loop {
        let wait = if discovery_ok(&proxy) { every } else { retry };
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(wait) => {}
        }
        refresh(&proxy, &discovery).await;
    }
}
