//! The one accept loop, shared by the balancer and the API instances.
//!
//! HTTP/1.1 with keep-alive and prior-knowledge HTTP/2 (h2c) on the same
//! port, `Upgrade` support, limits on the request head, idle time and a
//! client's reading, a connection budget sized from the file-descriptor
//! limit, and a graceful drain: on shutdown the listener
//! closes at once, idle connections are closed, in-flight requests get
//! `grace` to finish, and whatever is left after that is dropped with one
//! log line.
//!
//! The budget: past it a new client waits until a connection ends, and to
//! make that soon the accept loop first asks the listener's [`ShedIdle`]
//! (the balancer's fast path) to close idle keep-alive connections, longest
//! idle first, as nginx does when it runs short of connections: an idle
//! keep-alive connection may be closed at any time (clients retry on a new
//! one), a new client has no other way in. The budget leaves a reserve of
//! descriptors for upstream connections, health checks and DNS, so the
//! process reaches it long before it could run out; accept errors (EMFILE
//! all the same, when another part of the process took the rest) back off
//! exponentially and are logged once per episode.
//!
//! Where the connections run: on the per-core workers when the process
//! installed them ([`crate::threads`], the balancer binary), else on the
//! runtime that calls [`serve`] (the API instances, tests).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;

use crate::shutdown::Shutdown;
use crate::threads;
use head_clock::HeadClock;

mod head_clock;

/// Client-facing limits of one listener.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request head accepted (bigger: 431 and close).
    pub max_header_bytes: usize,
    /// Idle keep-alive time, counted until the next request head is complete.
    pub idle_timeout: Duration,
    /// The whole request head, from its first byte (the fast path's bound;
    /// hyper bounds idle time and head together by `idle_timeout`).
    pub header_timeout: Duration,
    /// The longest a write to the client may wait for the client to read.
    pub write_timeout: Duration,
    /// How long in-flight requests may run on after shutdown begins.
    pub grace: Duration,
    /// Open client connections at most; `None`: sized from the
    /// file-descriptor limit ([`connection_budget`]).
    pub max_connections: Option<usize>,
    /// The answer a client too slow with its request head gets.
    pub head_timeout_answer: fn() -> Vec<u8>,
    /// Kept at the number of client connections open (the balancer's
    /// `/metrics` gauge), when given.
    pub open_connections: Option<Arc<AtomicUsize>>,
    /// Closes idle connections when the budget is reached (`None`: new
    /// clients only wait).
    pub shed: Option<Arc<dyn ShedIdle>>,
}

/// Something that can close idle keep-alive connections to make room for
/// new clients at the connection budget.
pub trait ShedIdle: std::fmt::Debug + Send + Sync {
    /// Closes up to `n` idle connections, the longest idle first; returns
    /// how many it closed at once (others it asked to close may follow
    /// shortly).
    fn shed_idle(&self, n: usize) -> usize;
}

/// A plain 408, for listeners that bring no answer of their own.
fn plain_408() -> Vec<u8> {
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_header_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(30),
            max_connections: None,
            head_timeout_answer: plain_408,
            open_connections: None,
            shed: None,
        }
    }
}

/// File descriptors kept back from client connections: upstream
/// connections, health checks, DNS, the listener and the runtime's own.
/// A twentieth of the limit, at least 64 and at most 4,096.
fn fd_reserve(limit: u64) -> u64 {
    (limit / 20).clamp(64, 4096)
}

/// How many client connections fit the process's file-descriptor limit:
/// each may need a second descriptor for its backend, and `fd_reserve`
/// stays free, so local pressure never starves an upstream connect or a
/// health check. Raises the soft limit to the hard limit first (the
/// default soft limit of 1,024 is a relic; nginx's `worker_rlimit_nofile`
/// and HAProxy do the same).
pub fn connection_budget() -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file-descriptor limit; assuming 1024");
            1024
        }
    };
    let budget = limit.saturating_sub(fd_reserve(limit)) / 2;
    usize::try_from(budget.max(16)).unwrap_or(usize::MAX)
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
    serve_with(listener, opts, move |peer| HyperOnly(make(peer)), shutdown).await;
}

/// What serves one accepted connection: made by the accept loop, run on the
/// thread the connection is handed to.
pub trait Handler: Send + 'static {
    fn run(self, conn: Accepted) -> impl Future<Output = ()> + Send;
}

/// Serves every connection with hyper and one service.
struct HyperOnly<S>(S);

impl<S, B> Handler for HyperOnly<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn run(self, conn: Accepted) -> impl Future<Output = ()> + Send {
        conn.serve_http(Vec::new(), self.0)
    }
}

/// One accepted client connection, registered with the runtime that will
/// serve it. A handler may read from `stream` itself and hand the connection
/// to hyper at any point ([`Accepted::serve_http`]), passing on what it read.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    http: Arc<Http>,
    /// Keeps the drain waiting for this connection while it lives.
    watcher: Watcher,
    /// Its place in the connection budget.
    permit: Slot,
}

/// A connection's place in the budget (and in the open-connections gauge,
/// when there is one) for as long as it lives.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Option<Arc<AtomicUsize>>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: Option<Arc<AtomicUsize>>) -> Self {
        if let Some(n) = &open {
            n.fetch_add(1, Relaxed);
        }
        Slot {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(n) = &self.open {
            n.fetch_sub(1, Relaxed);
        }
    }
}

/// How hyper serves a listener's connections.
struct Http {
    builder: auto::Builder<TokioExecutor>,
    write_timeout: Duration,
    header_timeout: Duration,
    max_header_bytes: usize,
    head_timeout_answer: fn() -> Vec<u8>,
}

/// An accepted connection without its socket and peer address: its place
/// in the drain and the budget, and how hyper would serve it, kept while
/// the socket waits somewhere cheaper than a task (the fast path's parking
/// lot).
pub struct Detached {
    http: Arc<Http>,
    watcher: Watcher,
    permit: Slot,
}

impl Detached {
    /// The connection again, on `stream` (its own socket, re-registered)
    /// from `peer`.
    pub fn attach(self, stream: TcpStream, peer: SocketAddr) -> Accepted {
        let Detached {
            http,
            watcher,
            permit,
        } = self;
        Accepted {
            stream,
            peer,
            http,
            watcher,
            permit,
        }
    }
}

impl Accepted {
    /// Separates the socket from what else must outlive it (the peer address
    /// is dropped: the socket still knows it).
    pub fn detach(self) -> (TcpStream, Detached) {
        let Accepted {
            stream,
            peer: _,
            http,
            watcher,
            permit,
        } = self;
        (
            stream,
            Detached {
                http,
                watcher,
                permit,
            },
        )
    }

    /// Serves the rest of the connection with hyper (HTTP/1.1 keep-alive,
    /// h2c, upgrades, the limits and drain of [`ServeOptions`]). `read`: bytes
    /// already read from the stream, which hyper sees first.
    pub async fn serve_http<S, B>(self, read: Vec<u8>, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Accepted {
            stream,
            peer,
            http,
            watcher,
            permit: _permit,
        } = self;
        // A client that stops reading our answer fails the write after
        // `write_timeout`, which ends the connection (and frees its backend).
        let io = HeadClock::new(
            Prefixed::new(read, stream),
            http.header_timeout,
            http.max_header_bytes,
            http.head_timeout_answer,
        );
        let mut io = TimeoutStream::new(io);
        io.set_write_timeout(Some(http.write_timeout));
        let io = TokioIo::new(Box::pin(io));
        let conn = http.builder.serve_connection_with_upgrades(io, service);
        let result = watcher.watch(conn.into_owned()).await;
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "client connection ended with an error");
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, handing each to the
/// handler `make(peer)` returns, on the thread that will serve it, then
/// drains. Returns when
/// every connection has finished (dropped its [`Accepted`]) or the grace
/// period has run out.
pub async fn serve_with<M, H>(
    listener: TcpListener,
    opts: ServeOptions,
    make: M,
    shutdown: Shutdown,
) where
    M: Fn(SocketAddr) -> H,
    H: Handler,
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
    let http = Arc::new(Http {
        builder,
        write_timeout: opts.write_timeout,
        header_timeout: opts.header_timeout,
        max_header_bytes: opts.max_header_bytes,
        head_timeout_answer: opts.head_timeout_answer,
    });
    let graceful = GracefulShutdown::new();
    let workers = threads::installed();
    let fits = connection_budget();
    let max = opts.max_connections.unwrap_or(fits);
    if max > fits {
        tracing::warn!(
            max_client_connections = max,
            fits,
            "MAX_CLIENT_CONNECTIONS is above what the file-descriptor limit leaves room for"
        );
    }
    let budget = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
    tracing::debug!(max_connections = max, "connection budget");
    let mut backoff = Backoff::default();
    let mut full = Full::new(max);

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    backoff.succeeded();
                    conn
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    let wait = backoff.failed(&e);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        // Its place in the budget. At the budget, close idle connections
        // to make room, then wait for one to end (one accepted client waits
        // here, holding one descriptor of the reserve; the rest wait in the
        // kernel's backlog).
        let permit = match Arc::clone(&budget).try_acquire_owned() {
            Ok(p) => {
                full.ended(budget.available_permits());
                p
            }
            Err(_) => {
                let permit = loop {
                    full.reached(opts.shed.as_deref());
                    // Shed again until there is room: connections too
                    // recently idle to close now may be closed next time.
                    tokio::select! {
                        biased;
                        () = shutdown.wait() => break None,
                        p = Arc::clone(&budget).acquire_owned() => break p.ok(),
                        () = tokio::time::sleep(SHED_AGAIN) => {}
                    }
                };
                match permit {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let http = Arc::clone(&http);
        let watcher = graceful.watcher();
        let handler = make(peer);
        let permit = Slot::new(permit, opts.open_connections.clone());
        let accepted = move |stream| Accepted {
            stream,
            peer,
            http,
            watcher,
            permit,
        };
        match workers {
            // Hand the socket to a worker thread: registered with that
            // worker's reactor and served there (see `workers`).
            Some(workers) => {
                workers.spawn_conn(stream, move |stream| handler.run(accepted(stream)))
            }
            None => {
                tokio::spawn(handler.run(accepted(stream)));
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

/// How often a new client waiting at the budget asks for idle connections
/// to close again.
const SHED_AGAIN: Duration = Duration::from_millis(100);

/// An episode at the connection budget: one warning when it starts, one
/// line when it ends, and the idle connections closed in between.
#[derive(Debug)]
struct Full {
    max: usize,
    /// Idle connections closed so far in this episode (`None`: not at the
    /// budget).
    shed: Option<usize>,
}

impl Full {
    fn new(max: usize) -> Self {
        Full { max, shed: None }
    }

    /// A new client found the budget full: close idle connections (at most
    /// an eighth of the budget, at most 32 at a time, as nginx's
    /// `ngx_drain_connections` does), longest idle first.
    fn reached(&mut self, shed: Option<&dyn ShedIdle>) {
        if self.shed.is_none() {
            tracing::warn!(
                max_connections = self.max,
                "connection budget reached: closing idle keep-alive connections, new clients wait for room"
            );
        }
        let closed = shed.map_or(0, |s| s.shed_idle((self.max / 8).clamp(1, 32)));
        self.shed = Some(self.shed.unwrap_or(0) + closed);
    }

    /// A new client found room, `free` places left: the episode ends
    /// once an eighth of the budget is free again (no flapping at the
    /// edge).
    fn ended(&mut self, free: usize) {
        if self.shed.is_some() && free >= (self.max / 8).max(1) {
            let closed = self.shed.take().unwrap_or(0);
            tracing::info!(idle_closed = closed, "below the connection budget again");
        }
    }
}

/// Exponential back-off on accept errors (EMFILE, ENFILE, ENOBUFS...):
/// 5 ms doubling to 1 s, one warning when an episode starts and one line
/// when it ends, never one per error.
#[derive(Debug, Default)]
struct Backoff {
    errors: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn failed(&mut self, e: &std::io::Error) -> Duration {
        if self.errors == 0 {
            tracing::warn!(error = %e, "accept failed; backing off until it succeeds");
        }
        self.errors = self.errors.saturating_add(1);
        Self::FIRST
            .saturating_mul(1 << self.errors.min(16).saturating_sub(1))
            .min(Self::MAX)
    }

    fn succeeded(&mut self) {
        if self.errors > 0 {
            tracing::info!(errors = self.errors, "accepting again");
            self.errors = 0;
        }
    }
}

/// A stream that yields `prefix` before its own bytes: a connection whose
/// first bytes were already read by someone else, handed on.
struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    fn new(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The listen backlog: where new clients wait while the accept loop is at
/// its budget or backing off. tokio's `bind` asks for 128, which a burst
/// overflows at once (clients whose SYN is dropped retry after 1, 3, 7 s);
/// the kernel caps it at `net.core.somaxconn` (4,096 on current Linux),
/// as it does nginx's `backlog` and HAProxy's.
const BACKLOG: u32 = 4096;

/// Binds a listener, naming the address in the error (ports in use are the
/// most common start-up failure). `reuse_port` sets `SO_REUSEPORT`, so a
/// second process (a new version, a restart) can listen on the same port
/// while this one still serves and then drains: the kernel spreads new
/// connections over every listener and nothing is refused in between. Off
/// by default, so an accidental second start fails instead of sharing.
pub async fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std's and tokio's own `bind` do on Unix: a restarted server
        // rebinds its port while old connections linger in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        if reuse_port {
            socket.set_reuseport(true)?;
        }
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
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
    /// [`crate::threads`].
    PerCore(usize),
}

/// Where and how a server process listens.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    pub addr: SocketAddr,
    pub threads: Threads,
    /// `SO_REUSEPORT` (see [`bind`]).
    pub reuse_port: bool,
}

impl Listen {
    /// On `addr` alone (no `SO_REUSEPORT`).
    pub fn on(addr: SocketAddr, threads: Threads) -> Listen {
        Listen {
            addr,
            threads,
            reuse_port: false,
        }
    }
}

/// The whole life of a server process, shared by every binary and the
/// cluster launcher's children: take the parsed config (a bad value was
/// already named by its `ConfigError`), start the runtime(s) `listen` asks
/// for, bind `listen`'s address, run until `run` returns. Errors are printed
/// and mapped to an exit status.
pub fn main_with<C, F>(
    name: &str,
    config: Result<C, crate::config::ConfigError>,
    listen: impl Fn(&C) -> Listen,
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
    let Listen {
        addr,
        threads,
        reuse_port,
    } = listen(&config);
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
        let listener = match bind(addr, reuse_port).await {
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
) -> std::io::Result<(Option<threads::Running>, tokio::runtime::Runtime)> {
    match threads {
        Threads::Shared(n) => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                rt.worker_threads(n);
            }
            Ok((None, rt.enable_all().build()?))
        }
        Threads::PerCore(n) => {
            let running = threads::Workers::install(n, name)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_listener_shares_the_port_only_with_reuse_port() {
        let first = bind("127.0.0.1:0".parse().unwrap(), true).await.unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(addr, true).await.expect("both ask for SO_REUSEPORT");
        // Each takes connections while the other lives; closing one leaves
        // the port to the other (a restart without a refused connection).
        drop(first);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_, peer) = second.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());

        let alone = bind("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
        let addr = alone.local_addr().unwrap();
        let err = bind(addr, false).await.expect_err("the port is taken");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(bind(addr, true).await.is_err(), "the first did not opt in");
    }
}
