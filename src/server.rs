//! The one accept loop, shared by the balancer and the API instances.
//!
//! HTTP/1.1 with keep-alive and prior-knowledge HTTP/2 (h2c) on the same
//! port, `Upgrade` support, limits on the request head and idle time, and a
//! graceful drain: on shutdown the listener closes at once, idle connections
//! are closed, in-flight requests get `grace` to finish, and whatever is left
//! after that is dropped with one log line.
//!
//! Where the connections run: on the per-core workers when the process
//! installed them ([`crate::workers`], the balancer binary), else on the
//! runtime that calls [`serve`] (the API instances, tests).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;
use crate::workers;

/// Client-facing limits of one listener.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request head accepted (bigger: 431 and close).
    pub max_header_bytes: usize,
    /// Idle keep-alive time, counted until the next request head is complete.
    pub idle_timeout: Duration,
    /// How long in-flight requests may run on after shutdown begins.
    pub grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_header_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(30),
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, serving each with the
/// service `make(peer)` returns, then drains. Returns when every connection
/// has finished or the grace period has run out.
pub async fn serve<M, S, B>(listener: TcpListener, opts: ServeOptions, make: M, shutdown: Shutdown)
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // hyper-util's builder bounds the request head through the read
        // buffer: a head that does not fit gets 431 and a close.
        .max_buf_size(opts.max_header_bytes.max(8192))
        .header_read_timeout(opts.idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(opts.max_header_bytes as u32)
        .keep_alive_interval(Some(opts.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let workers = workers::installed();

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = make(peer);
        let watcher = graceful.watcher();
        let builder = Arc::clone(&builder);
        match workers {
            // Hand the socket to a worker thread, which registers it with
            // its own reactor and serves it there (see `workers`).
            Some(workers) => match stream.into_std() {
                Ok(stream) => workers.spawn_conn(async move {
                    match tokio::net::TcpStream::from_std(stream) {
                        Ok(stream) => serve_conn(&builder, stream, service, watcher, peer).await,
                        Err(e) => tracing::warn!(%peer, error = %e, "cannot register a connection"),
                    }
                }),
                Err(e) => tracing::warn!(%peer, error = %e, "cannot hand a connection over"),
            },
            None => {
                tokio::spawn(async move {
                    serve_conn(&builder, stream, service, watcher, peer).await;
                });
            }
        }
    }
    drop(listener);

    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(opts.grace) => {
            tracing::warn!(grace = ?opts.grace, "grace period over, dropping the connections still open");
        }
    }
}

/// Serves one client connection to its end (or to the drain's end).
async fn serve_conn<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    stream: tokio::net::TcpStream,
    service: S,
    watcher: Watcher,
    peer: SocketAddr,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// Binds a listener, naming the address in the error (ports in use are the
/// most common start-up failure).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Exit status for a bad configuration value.
pub const EXIT_CONFIG: u8 = 2;
/// Exit status when the listening port cannot be bound (the cluster launcher
/// treats it as fatal instead of restarting the child).
pub const EXIT_BIND_FAILED: u8 = 3;

/// How a server process runs its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// tokio's work-stealing runtime with this many threads (0 = one per
    /// core): the API instances, whose handlers wait on the database.
    Shared(usize),
    /// The control plane on the main thread plus this many per-core
    /// connection workers (0 = one per core): the balancer. See
    /// [`crate::workers`].
    PerCore(usize),
}

/// The whole life of a server process, shared by every binary and the
/// cluster launcher's children: take the parsed config (a bad value was
/// already named by its `ConfigError`), start the runtime(s) `listen` asks
/// for, bind `listen`'s address, run until `run` returns. Errors are printed
/// and mapped to an exit status.
pub fn main_with<C, F>(
    name: &str,
    config: Result<C, crate::config::ConfigError>,
    listen: impl Fn(&C) -> (SocketAddr, Threads),
    run: impl FnOnce(TcpListener, C) -> F,
) -> std::process::ExitCode
where
    F: Future<Output = std::io::Result<()>>,
{
    use std::process::ExitCode;
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (addr, threads) = listen(&config);
    // `_workers` keeps the worker threads running until this returns (the
    // drain has finished by then).
    let (_workers, rt) = match start_runtime(name, threads) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, port = addr.port(), "cannot listen");
                return ExitCode::from(EXIT_BIND_FAILED);
            }
        };
        match run(listener, config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "{name} failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// The main runtime `threads` asks for, and the per-core workers behind it
/// when it asks for them.
fn start_runtime(
    name: &str,
    threads: Threads,
) -> std::io::Result<(Option<workers::Running>, tokio::runtime::Runtime)> {
    match threads {
        Threads::Shared(n) => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                rt.worker_threads(n);
            }
            Ok((None, rt.enable_all().build()?))
        }
        Threads::PerCore(n) => {
            let running = workers::Workers::install(n, name)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok((Some(running), rt))
        }
    }
}

/// A future that never resolves: a `shutdown` for callers with no other plan.
pub fn never() -> impl Future<Output = ()> + Send + 'static {
    std::future::pending()
}
