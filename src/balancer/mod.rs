//! The balancer's wiring: the request path's shared state ([`Proxy`]), the
//! fast path in front of it, the background loops (discovery, health,
//! least-queue polling, the idle and tunnel clocks, the charts' sampler,
//! the rate limiter's sweep), the management room ([`crate::admin`], whose
//! overrides every discovery refresh is layered with) and `run`.
//!
//! The request path reads one snapshot of the backend set through an
//! `ArcSwap` (no lock, no await while holding anything); discovery builds a
//! new snapshot off the hot path only when the set changed, reusing the
//! `Arc<Backend>` of every surviving endpoint so health, outlier state and
//! counters carry over, and swaps it in.

mod charts;
mod metrics;
mod queue;
pub mod status;
mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;

use crate::admin::Admin;
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
        |c| server::Listen {
            reuse_port: c.reuse_port,
            ..server::Listen::on(c.listen, server::Threads::PerCore(c.worker_threads))
        },
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
    let admin = Arc::new(Admin::load(&config.ops).map_err(std::io::Error::other)?);
    let opts = ServeOptions {
        max_header_bytes: config.limits.max_header_bytes,
        idle_timeout: config.limits.idle_timeout,
        header_timeout: config.limits.header_timeout,
        write_timeout: config.limits.client_write_timeout,
        grace: config.shutdown_grace,
        max_connections: config.max_client_connections,
        head_timeout_answer: crate::proxy::h1::head_timeout_answer,
        open_connections: None,
        shed: None,
    };
    let console = Arc::new(status::Console {
        admin: Arc::clone(&admin),
    });
    let proxy = Arc::new(Proxy::new(config, console));
    // The accept loop keeps the open-connections gauge of /metrics.
    let opts = ServeOptions {
        open_connections: Some(Arc::clone(&proxy.stats.connections)),
        ..opts
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        discovery = discovery.mode(),
        strategy = %proxy.config.strategy.strategy,
        "balancer starting"
    );

    // The first discovery completes before we accept, so the first request
    // already has a backend set (a failure is logged and retried by the loop).
    refresh(&proxy, &admin, &discovery).await;
    let fast = FastPath::new(Arc::clone(&proxy));
    // At the connection budget, idle fast-path connections make room.
    let opts = ServeOptions {
        shed: Some(Arc::clone(&fast) as Arc<dyn server::ShedIdle>),
        ..opts
    };
    let mut background = vec![
        tokio::spawn(discovery_loop(
            Arc::clone(&proxy),
            Arc::clone(&admin),
            discovery,
            shutdown.clone(),
        )),
        tokio::spawn(sample_loop(Arc::clone(&proxy), shutdown.clone())),
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
    if proxy.limiter.is_some() {
        background.push(tokio::spawn(sweep_loop(
            Arc::clone(&proxy),
            shutdown.clone(),
        )));
    }
    // Awaited, not aborted, at the end: it closes the open tunnels when
    // the drain begins, including hyper's, which no connection waits for.
    let tunnels = tokio::spawn({
        let (proxy, shutdown) = (Arc::clone(&proxy), shutdown.clone());
        async move { proxy.tunnels.run(shutdown).await }
    });
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
    let _ = tunnels.await;
    for task in background {
        task.abort();
    }
    tracing::info!("balancer stopped");
    Ok(())
}

/// One discovery refresh: publish a good answer (with the operator's
/// overrides layered over it), keep the last good set on a bad one and say
/// so once per failure streak.
async fn refresh(proxy: &Proxy, admin: &Admin, discovery: &Discovery) {
    match discovery.discover().await {
        Ok(set) if !set.is_empty() => {
            let n = set.len();
            admin.discovered(proxy, set);
            proxy.stats.discovery_ok.fetch_add(1, Relaxed);
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
    proxy.stats.discovery_failed.fetch_add(1, Relaxed);
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

async fn discovery_loop(
    proxy: Arc<Proxy>,
    admin: Arc<Admin>,
    discovery: Discovery,
    shutdown: Shutdown,
) {
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
        refresh(&proxy, &admin, &discovery).await;
    }
}

/// Moves the request path's figures on to each new 10 s slice and feeds
/// the `/lb` charts' ring one point per backend as each slice ends (a
/// moment after, so the slice is complete).
async fn sample_loop(proxy: Arc<Proxy>, shutdown: Shutdown) {
    use crate::stats::latency::{SLICE_SECS, epoch};
    crate::stats::latency::tick(std::time::Instant::now());
    loop {
        let since = epoch().elapsed();
        let next = (since.as_secs() / SLICE_SECS + 1) * SLICE_SECS;
        let wait = Duration::from_secs(next) + Duration::from_millis(100) - since;
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let now = std::time::Instant::now();
        crate::stats::latency::tick(now);
        let snapshot = proxy.backends.load();
        proxy.stats.history.sample(&snapshot.backends, now);
    }
}

/// Drops the rate limiter's buckets that have filled up again, every
/// second (the memory bound in [`crate::proxy::limit`]).
async fn sweep_loop(proxy: Arc<Proxy>, shutdown: Shutdown) {
    let Some(limiter) = &proxy.limiter else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        limiter.sweep();
    }
}
