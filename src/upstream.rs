//! Keep-alive connections to one backend.
//!
//! Each backend owns a [`ConnPool`] of idle HTTP/1.1 connections, of two
//! kinds: plain sockets for the fast path ([`crate::proxy::h1`], which
//! speaks HTTP/1.1 to the backend itself) and hyper connections for the
//! requests hyper serves (h2c clients, upgrades, streamed bodies). A request
//! checks one out (or opens a new one) and hands it back once the backend
//! has sent the whole response. Owning the pool, rather than using
//! hyper-util's generic client, is what lets the proxy tell "nothing reached
//! the backend" (connect failed, or the request came back unsent) from "the
//! backend failed mid-request", which decides whether a request may be
//! retried elsewhere.
//!
//! Each connection worker thread has its own idle lists (see
//! [`crate::threads`]): a connection is registered with the reactor of the
//! thread that opened it, so handing it to a request on another thread would
//! turn every exchange into cross-thread wake-ups. Each list sits behind a
//! `std` mutex held only to push or pop, never across an await, and in
//! practice only ever taken by its own thread.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::threads;

/// The body of a request sent upstream on the hyper path: bytes kept whole
/// (so the request can be sent again), or the client's own stream, which
/// may pause at most `idle` between two pieces before the client is
/// blamed ([`ClientStalled`]) and the exchange ends.
pub enum UpstreamBody {
    Full(Option<Bytes>),
    Stream(Box<StreamBody>),
}

/// A client's request body streamed through; see [`UpstreamBody`].
pub struct StreamBody {
    /// Bytes already read from the client (while trying to keep the body
    /// whole), sent first.
    prefix: Option<Bytes>,
    inner: Incoming,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Fired (dropped) when the body is complete or broke: the backend's
    /// time to answer counts from then.
    sent: Option<oneshot::Sender<()>>,
}

/// The client paused its request body for longer than allowed.
#[derive(Debug, thiserror::Error)]
#[error("the client stopped sending its request body")]
pub struct ClientStalled;

impl UpstreamBody {
    pub fn empty() -> Self {
        UpstreamBody::Full(None)
    }

    /// The client's stream after `prefix`; the receiver resolves when the
    /// body has been sent whole (or broke off).
    pub fn stream(prefix: Bytes, inner: Incoming, idle: Duration) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let body = StreamBody {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
            idle,
            timer: None,
            sent: Some(tx),
        };
        (UpstreamBody::Stream(Box::new(body)), rx)
    }
}

impl StreamBody {
    /// The body as it was before anything of it was sent (hyper hands a
    /// request back unsent when the connection closed first).
    pub fn into_unsent(self) -> (Bytes, Incoming) {
        (self.prefix.unwrap_or_default(), self.inner)
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let s = match &mut *self {
            UpstreamBody::Full(bytes) => {
                return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))));
            }
            UpstreamBody::Stream(s) => s,
        };
        if let Some(prefix) = s.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                s.sent.take();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.sent.take();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(timer) = &mut s.timer {
                    timer.as_mut().reset(tokio::time::Instant::now() + s.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let idle = s.idle;
                let timer = s
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                s.sent.take();
                Poll::Ready(Some(Err(Box::new(ClientStalled))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Full(bytes) => bytes.is_none(),
            UpstreamBody::Stream(s) => s.prefix.is_none() && s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpstreamBody::Full(None) => SizeHint::with_exact(0),
            UpstreamBody::Stream(s) => {
                let pre = s.prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = s.inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + pre);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + pre);
                }
                hint
            }
        }
    }
}

/// A connection's request handle.
pub type Sender = http1::SendRequest<UpstreamBody>;

/// Per-thread idle lists of one kind of connection, newest last, each
/// with the time it was put back.
#[derive(Debug)]
struct Idle<T>(Box<[IdleList<T>]>);

/// One thread's list.
type IdleList<T> = Mutex<Vec<(T, Instant)>>;

impl<T> Idle<T> {
    fn new() -> Self {
        Idle((0..threads::slots()).map(|_| Mutex::default()).collect())
    }

    /// The calling thread's list.
    fn own(&self) -> std::sync::MutexGuard<'_, Vec<(T, Instant)>> {
        self.0[threads::slot() % self.0.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The newest connection put back within `idle_timeout`, if any.
    fn pop(&self, idle_timeout: Duration) -> Option<T> {
        let mut idle = self.own();
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() <= idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    fn push(&self, conn: T, max_idle: usize, idle_timeout: Duration) {
        if max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.own();
        // Checkout takes the newest (LIFO keeps few connections warm), so
        // the oldest sit at the front: drop one that outlived the idle
        // timeout on each check-in, so a burst's surplus drains away.
        if idle
            .first()
            .is_some_and(|(_, since)| now.duration_since(*since) > idle_timeout)
        {
            idle.remove(0);
        }
        if idle.len() < max_idle {
            idle.push((conn, now));
        }
    }

    fn len(&self) -> usize {
        self.0
            .iter()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    fn clear(&self) {
        for list in &self.0 {
            list.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

/// Idle keep-alive connections to one backend: hyper connections for the
/// requests hyper serves, plain sockets for the HTTP/1.1 fast path
/// ([`crate::proxy::h1`]), which speaks to the backend itself.
#[derive(Debug)]
pub struct ConnPool {
    addr: SocketAddr,
    idle: Idle<Sender>,
    raw: Idle<TcpStream>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    /// Not connected within `CONNECT_FAILOVER_MS` while another candidate
    /// remained: given up for it. Not the backend's failure (it may only be
    /// slow to accept); the health check it triggers decides.
    #[error("connect to {0} took over {1:?}: gave way to the next backend")]
    GaveWay(SocketAddr, Duration),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, io::Error),
    #[error("handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

impl ConnectError {
    /// The failure is this machine's (out of file descriptors, memory or
    /// local ports), not the backend's: it must never count against it.
    pub fn is_local(&self) -> bool {
        matches!(self, ConnectError::Io(_, e) if is_local(e))
    }

    /// The connect was given up early for the next candidate.
    pub fn gave_way(&self) -> bool {
        matches!(self, ConnectError::GaveWay(..))
    }
}

/// Whether a socket error is this machine's shortage (file descriptors,
/// memory, local ports) rather than anything a peer did: proxied requests
/// and health checks alike never blame a backend for it.
pub fn is_local(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

impl ConnPool {
    pub fn new(
        addr: SocketAddr,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Self {
        ConnPool {
            addr,
            idle: Idle::new(),
            raw: Idle::new(),
            max_idle,
            idle_timeout,
            connect_timeout,
        }
    }

    /// An idle connection ready for a request, if the pool holds one.
    /// Connections the backend closed, or idle too long, are dropped on the way.
    pub async fn checkout(&self) -> Option<Sender> {
        loop {
            let mut sender = self.idle.pop(self.idle_timeout)?;
            if sender.is_closed() {
                continue;
            }
            // A connection put back as its response ended may still be
            // finishing that exchange in its task: wait for it, briefly.
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Puts a connection back for reuse, unless the pool is full or it closed.
    pub fn checkin(&self, sender: Sender) {
        if !sender.is_closed() {
            self.idle.push(sender, self.max_idle, self.idle_timeout);
        }
    }

    /// An idle socket for the fast path, if the pool holds one that still
    /// looks open: an idle socket that turned readable was closed by the
    /// backend (or holds bytes nobody asked for) and is dropped. Costs no
    /// system call unless the reactor saw the socket become readable.
    pub fn checkout_raw(&self) -> Option<TcpStream> {
        while let Some(stream) = self.raw.pop(self.idle_timeout) {
            let mut cx = Context::from_waker(Waker::noop());
            if stream.poll_read_ready(&mut cx).is_pending() {
                return Some(stream);
            }
            // Readiness may be left over from the last response: look.
            let mut probe = [0u8; 1];
            if let Err(e) = stream.try_read(&mut probe) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Some(stream);
                }
            }
        }
        None
    }

    /// Puts a fast-path socket back after a complete exchange.
    pub fn checkin_raw(&self, stream: TcpStream) {
        self.raw.push(stream, self.max_idle, self.idle_timeout);
    }

    /// Opens a plain socket to the backend (no delay). The connect gets
    /// `CONNECT_TIMEOUT_MS`, or `give_way` when that is shorter (see
    /// [`crate::proxy::rules::connect_give_way`]; the error is then
    /// [`ConnectError::GaveWay`]).
    pub async fn connect_raw(&self, give_way: Option<Duration>) -> Result<TcpStream, ConnectError> {
        let early = give_way.filter(|t| *t < self.connect_timeout);
        let within = early.unwrap_or(self.connect_timeout);
        let stream = tokio::time::timeout(within, TcpStream::connect(self.addr))
            .await
            .map_err(|_| match early {
                Some(t) => ConnectError::GaveWay(self.addr, t),
                None => ConnectError::Timeout(self.addr),
            })?
            .map_err(|e| ConnectError::Io(self.addr, e))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Opens a new hyper connection (kept usable after a `101 Switching
    /// Protocols`; such a connection is never pooled). `give_way`: as for
    /// [`ConnPool::connect_raw`].
    pub async fn connect(&self, give_way: Option<Duration>) -> Result<Sender, ConnectError> {
        let stream = self.connect_raw(give_way).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(self.addr, e))?;
        let addr = self.addr;
        // Driven on the calling thread's runtime: the worker whose idle
        // list this connection will go back to.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Idle connections held now, over all threads and both kinds (for the
    /// status page and tests).
    pub fn idle_count(&self) -> usize {
        self.idle.len() + self.raw.len()
    }

    /// Drops every idle connection (the backend went down or left the set).
    pub fn clear(&self) {
        self.idle.clear();
        self.raw.clear();
    }
}
