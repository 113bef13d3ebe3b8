//! `Upgrade` tunnels (WebSocket and friends): once the backend answers
//! `101 Switching Protocols`, the client's connection and the backend's are
//! relayed to each other until both sides are done, on either transport.
//!
//! A tunnel spends most of its life idle (a chat client, a dashboard
//! waiting for the next event), and a balancer may hold tens of thousands.
//! So an open tunnel holds no buffer between bursts, as HAProxy's buffer
//! pool and the fast path's keep-alive connections do: it waits on the two
//! sockets' readiness alone, borrows a per-thread pooled buffer
//! ([`Buf`]) when bytes arrive, and gives it back as soon as they are
//! written on. A copy loop with its own buffers (`copy_bidirectional`, what
//! tunnels used before) keeps 16 KiB per tunnel for its whole life.
//!
//! - **Backpressure**: a direction whose bytes cannot all be written yet
//!   keeps them (one buffer at most) and reads nothing more from its
//!   source until they are out, so a slow reader holds back its sender
//!   through the kernel's windows instead of filling the balancer's memory.
//! - **Half-close**: a FIN from one side is passed on (`shutdown(Write)`
//!   on the other) once what came before it is written; the other
//!   direction carries on. The tunnel ends when both directions are done,
//!   or at the first error on either side.
//! - **Deadlines**: `TUNNEL_IDLE_TIMEOUT_SECS` closes a tunnel in which no
//!   byte moved either way for that long (HAProxy's `timeout tunnel`),
//!   checked on a coarse clock ([`IdleClock::with_max_tick`]) rather than a
//!   timer per tunnel, so it closes between the timeout and a minute more;
//!   a client that reads nothing of what is waiting for it for
//!   `CLIENT_WRITE_TIMEOUT_SECS` is cut off, as in any other answer (the
//!   one timer, only while such a write waits). The drain closes every
//!   tunnel at once.
//! - **Accounting**: a tunnel counts as one request in flight on its
//!   backend while it is open, and in the backend's open tunnels
//!   (`/lb/status`); a tunnel broken by the backend (a reset) is reported
//!   like a broken response body ([`super::report::body_failed`]); a clean
//!   close or the client's own failure blames nobody.
//!
//! The fast path ([`super::h1`]) relays its two plain sockets. On hyper's
//! path ([`splice`]) the backend's side comes back as the plain socket it
//! was; the client's side stays hyper's `Upgraded` (hyper-util's wrapper
//! around it cannot be named to take it apart), read the same way: a
//! buffer is lent for each read and given back when nothing came.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::Proxy;
use super::body::{ProxyBody, UpstreamGuard};
use super::error::ProxyError;
use super::h1::buf::Buf;
use super::h1::idle::IdleClock;
use crate::backend::Backend;
use crate::config::ProxyLimits;
use crate::shutdown::Shutdown;

/// The longest tick of the tunnels' clock.
const MAX_TICK: Duration = Duration::from_secs(60);
/// Reads and writes one direction makes in one go before letting the
/// thread's other connections run.
const ROUNDS: usize = 16;

/// What every tunnel of a balancer shares: the coarse clock of their idle
/// timeout (and the drain), and the client write deadline.
#[derive(Debug)]
pub struct Tunnels {
    clock: IdleClock,
    client_write_timeout: Duration,
}

impl Tunnels {
    pub fn new(limits: &ProxyLimits) -> Self {
        Tunnels {
            clock: IdleClock::with_max_tick(limits.tunnel_idle_timeout, MAX_TICK),
            client_write_timeout: limits.client_write_timeout,
        }
    }

    /// Ticks the clock until `shutdown`, then closes every tunnel.
    pub async fn run(&self, shutdown: Shutdown) {
        self.clock.run(shutdown).await;
    }
}

/// Bytes already read when the tunnel opens, to be written first.
#[derive(Debug, Default)]
pub struct Start {
    /// What the client sent after its request (read with it).
    pub to_upstream: Option<Buf>,
    /// What the backend sent after its `101` head.
    pub to_client: Option<Buf>,
}

impl Start {
    /// A non-empty buffer, or none.
    pub fn bytes(buf: Buf) -> Option<Buf> {
        (!buf.is_empty()).then_some(buf)
    }
}

/// Relays `client` and `upstream` until the tunnel ends (see the module
/// docs); `guard` keeps it counted on its backend meanwhile.
pub async fn relay<C, U>(
    mut client: C,
    mut upstream: U,
    start: Start,
    guard: UpstreamGuard,
    proxy: &Proxy,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let backend = guard.backend();
    let _open = Open::new(proxy, backend, guard.client());
    let tunnels = &proxy.tunnels;
    let clock = &tunnels.clock;
    let mut up = Flow::new(start.to_upstream);
    let mut down = Flow::new(start.to_client);
    let mut since = clock.now();
    let mut tick = pin!(clock.next());
    // Armed only while bytes wait for a client that is not reading.
    let mut stalled: Option<Pin<Box<Sleep>>> = None;
    let end = std::future::poll_fn(|cx| {
        let mut ticked = false;
        while tick.as_mut().poll(cx).is_ready() {
            tick.set(clock.next());
            ticked = true;
        }
        if clock.draining() {
            return Poll::Ready(End::Drain);
        }
        let sent = match up.pump(cx, &mut client, &mut upstream) {
            Ok(moved) => moved,
            Err(Broke::Read(e)) => return Poll::Ready(End::Client(e)),
            Err(Broke::Write(e)) => return Poll::Ready(End::Upstream(e)),
        };
        let received = match down.pump(cx, &mut upstream, &mut client) {
            Ok(moved) => moved,
            Err(Broke::Read(e)) => return Poll::Ready(End::Upstream(e)),
            Err(Broke::Write(e)) => return Poll::Ready(End::Client(e)),
        };
        if up.done && down.done {
            return Poll::Ready(End::Closed);
        }
        if sent.any() || received.any() {
            since = clock.now();
        } else if ticked && clock.expired(since) {
            return Poll::Ready(End::Idle);
        }
        if down.held.is_none() {
            stalled = None;
        } else if received.blocked {
            let deadline = || tokio::time::Instant::now() + tunnels.client_write_timeout;
            let timer = match &mut stalled {
                Some(timer) => {
                    if received.wrote {
                        timer.as_mut().reset(deadline());
                    }
                    timer
                }
                None => stalled.insert(Box::pin(tokio::time::sleep_until(deadline()))),
            };
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::ClientStalled);
            }
        }
        Poll::Pending
    })
    .await;
    let (up_bytes, down_bytes) = (up.bytes, down.bytes);
    match end {
        End::Upstream(e) => {
            tracing::debug!(backend = %backend.name(), error = %e, up_bytes, down_bytes, "tunnel broken by the backend");
            guard.body_failed(proxy, &ProxyError::UpstreamIo(e));
        }
        End::Client(e) => {
            tracing::debug!(backend = %backend.name(), error = %e, up_bytes, down_bytes, "tunnel broken by the client");
        }
        other => {
            tracing::debug!(backend = %backend.name(), end = other.name(), up_bytes, down_bytes, "tunnel closed");
        }
    }
}

/// How a tunnel ended.
#[derive(Debug)]
enum End {
    /// Both sides sent their FIN and it was passed on.
    Closed,
    /// Nothing moved for `TUNNEL_IDLE_TIMEOUT_SECS`.
    Idle,
    /// The balancer is shutting down.
    Drain,
    /// The client left bytes unread for `CLIENT_WRITE_TIMEOUT_SECS`.
    ClientStalled,
    /// Reading from or writing to the client failed.
    Client(io::Error),
    /// Reading from or writing to the backend failed.
    Upstream(io::Error),
}

impl End {
    fn name(&self) -> &'static str {
        match self {
            End::Closed => "closed by both sides",
            End::Idle => "idle timeout",
            End::Drain => "shutdown",
            End::ClientStalled => "the client stopped reading",
            End::Client(_) => "client error",
            End::Upstream(_) => "backend error",
        }
    }
}

/// One open tunnel, counted on its backend, balancer-wide and in the
/// client table, for as long as it lives.
struct Open<'a> {
    proxy: &'a Proxy,
    backend: &'a Backend,
    client: IpAddr,
}

impl<'a> Open<'a> {
    fn new(proxy: &'a Proxy, backend: &'a Backend, client: IpAddr) -> Self {
        backend.stats.tunnels.fetch_add(1, Relaxed);
        proxy.stats.tunnels.fetch_add(1, Relaxed);
        proxy.stats.clients.tunnel(client, true);
        Open {
            proxy,
            backend,
            client,
        }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.backend.stats.tunnels.fetch_sub(1, Relaxed);
        self.proxy.stats.tunnels.fetch_sub(1, Relaxed);
        self.proxy.stats.clients.tunnel(self.client, false);
    }
}

/// A side failed: reading its source or writing its destination.
enum Broke {
    Read(io::Error),
    Write(io::Error),
}

/// What one direction did in one go.
#[derive(Debug, Clone, Copy, Default)]
struct Moved {
    read: bool,
    wrote: bool,
    /// It holds bytes its destination cannot take now.
    blocked: bool,
}

impl Moved {
    fn any(self) -> bool {
        self.read || self.wrote
    }
}

/// One direction of a tunnel: source -> destination.
#[derive(Debug, Default)]
struct Flow {
    /// Read from the source, not yet all written: `held[sent..]` is left.
    held: Option<Buf>,
    sent: usize,
    /// The source sent its FIN...
    eof: bool,
    /// ...and it was passed on: this direction is over.
    done: bool,
    /// Bytes read from the source, for the log.
    bytes: u64,
}

impl Flow {
    fn new(first: Option<Buf>) -> Self {
        Flow {
            bytes: first.as_ref().map_or(0, |b| b.len() as u64),
            held: first.filter(|b| !b.is_empty()),
            ..Flow::default()
        }
    }

    /// Moves what can move now without waiting; registers for the
    /// readiness it needs next (writable while it holds bytes, else
    /// readable). Holds a buffer only while bytes wait to be written.
    fn pump<R, W>(&mut self, cx: &mut Context<'_>, src: &mut R, dst: &mut W) -> Result<Moved, Broke>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut moved = Moved::default();
        for _ in 0..ROUNDS {
            if let Some(held) = &self.held {
                match Pin::new(&mut *dst).poll_write(cx, &held[self.sent..]) {
                    Poll::Ready(Ok(0)) => {
                        return Err(Broke::Write(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        moved.wrote = true;
                        self.sent += n;
                        if self.sent == held.len() {
                            // Back to the thread's free list.
                            self.held = None;
                            self.sent = 0;
                        }
                    }
                    Poll::Ready(Err(e)) => return Err(Broke::Write(e)),
                    Poll::Pending => {
                        moved.blocked = true;
                        return Ok(moved);
                    }
                }
            } else if self.eof {
                if !self.done {
                    match Pin::new(&mut *dst).poll_shutdown(cx) {
                        // A destination already gone cannot take the FIN;
                        // the other direction will see that for itself.
                        Poll::Ready(_) => self.done = true,
                        Poll::Pending => {}
                    }
                }
                return Ok(moved);
            } else {
                let mut buf = Buf::take();
                match poll_read_buf(cx, src, &mut buf) {
                    Poll::Ready(Ok(0)) => self.eof = true,
                    Poll::Ready(Ok(n)) => {
                        moved.read = true;
                        self.bytes += n as u64;
                        self.held = Some(buf);
                    }
                    Poll::Ready(Err(e)) => return Err(Broke::Read(e)),
                    // Nothing to read: the buffer goes back at once.
                    Poll::Pending => return Ok(moved),
                }
            }
        }
        // More to do: let the thread's other connections run first.
        cx.waker().wake_by_ref();
        Ok(moved)
    }
}

/// One read into `buf`'s free room, if the source has bytes now.
fn poll_read_buf<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    src: &mut R,
    buf: &mut Buf,
) -> Poll<io::Result<usize>> {
    pin!(src.read_buf(buf.vec_mut())).poll(cx)
}

/// hyper's path: passes `resp` through; if it is a 101, relays the two
/// upgraded connections in a task of their own that keeps `guard` until
/// the tunnel ends.
pub fn splice(
    mut resp: Response<Incoming>,
    client: OnUpgrade,
    guard: UpstreamGuard,
    proxy: &Arc<Proxy>,
) -> Response<ProxyBody> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused: an ordinary answer, on a connection never pooled.
        return resp.map(|b| ProxyBody::upstream(b, None, guard, Arc::clone(proxy)));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let proxy = Arc::clone(proxy);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(backend = %guard.backend().name(), error = %e, "upgrade failed");
                return;
            }
        };
        let client = TokioIo::new(client);
        // The backend's side is the plain socket the pool opened, with
        // whatever hyper read past the 101 head.
        match upstream.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let mut early = Buf::take();
                early.extend_from_slice(&parts.read_buf);
                let start = Start {
                    to_upstream: None,
                    to_client: Start::bytes(early),
                };
                relay(client, parts.io.into_inner(), start, guard, &proxy).await;
            }
            Err(upstream) => {
                let upstream = TokioIo::new(upstream);
                relay(client, upstream, Start::default(), guard, &proxy).await;
            }
        }
    });
    resp.map(|_| ProxyBody::empty())
}
