//! The HTTP/1.1 fast path: the balancer's own request loop for the common
//! request (HTTP/1.1, no body or a `Content-Length` body of at most
//! [`MAX_BODY`], no upgrade, from a peer that is not a trusted proxy).
//!
//! It does what HAProxy and nginx do and hyper cannot be told to: parse the
//! head in place, copy the lines that stay, append the forwarding headers,
//! and move the response through in the same buffers, which go back to a
//! per-thread free list between requests. An idle keep-alive connection
//! therefore holds no buffer at all, only its socket and a small task, and
//! after a moment not even the task (`park.rs`); a request costs no header
//! map, and no allocation while its thread has few requests in flight
//! (`buf.rs`).
//!
//! The first request the fast path does not handle ([`head::Request::Unusual`]:
//! upgrades, `Expect`, chunked or large request bodies, HTTP/1.0 and h2c,
//! malformed heads, the balancer's own pages) hands the connection, with the
//! bytes already read, to hyper and the [`Proxy`] service for the rest of
//! its life. The routing rules are the same on both paths: the client's ring
//! candidates in order, down or draining backends skipped, the next
//! candidate tried when nothing reached the backend, or when the request is
//! idempotent; for such a request, a pooled connection the backend closed
//! while idle is replaced by a fresh one without counting as a failure.

mod buf;
pub mod chunked;
pub mod head;
mod idle;
mod park;

pub use idle::IdleClock;
pub use park::ParkingLot;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::UpstreamGuard;
use super::error::ProxyError;
use super::{Pinned, Proxy};
use crate::backend::Backend;
use crate::balancer::Balancer;
use crate::ring::key_hash;
use crate::server::{Accepted, Handler};
use buf::Buf;
use head::{BodyProgress, Framing, ResponseHead};

/// Largest request body the fast path buffers whole (bigger: hyper streams it).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Serves balancer connections: the fast path first, hyper when needed.
pub struct Connection(pub Arc<Balancer>);

impl Handler for Connection {
    fn run(self, conn: Accepted) -> impl Future<Output = ()> + Send {
        serve(self.0, conn)
    }
}

/// What one exchange left behind.
enum Next {
    /// Keep the connection; the buffer holds bytes of the next request.
    KeepAlive(Option<Buf>),
    Close,
    /// Hand the connection to hyper with these bytes already read.
    Hyper(Vec<u8>),
}

async fn serve(state: Arc<Balancer>, conn: Accepted) {
    let peer = conn.peer;
    if !state.trusted.is_empty() && state.trusted.contains(peer.ip()) {
        // Trusted proxies' forwarding headers are read and extended:
        // hyper's path does that.
        return hyper_path(state, conn, Vec::new()).await;
    }
    let client = peer.ip().to_canonical();
    serve_fast(state, conn, client, Pinned::default()).await;
}

/// The fast path's loop over one connection's requests, from its first
/// request or from the parking lot.
async fn serve_fast(state: Arc<Balancer>, mut conn: Accepted, client: IpAddr, pinned: Pinned) {
    let mut carry = None;
    loop {
        if carry.is_none() {
            let may_park = state.parking.is_open();
            match wait_for_request(&state.idle, &conn.stream, may_park).await {
                Wait::Request => {}
                Wait::Close => return,
                Wait::Park(since) => return park(&state, conn, pinned, since),
            }
        }
        let draining = state.idle.draining();
        // Boxed: the exchange's state lives only while a request does, so
        // an idle connection's task stays small.
        let exchange = Box::pin(exchange(
            &state,
            &mut conn.stream,
            client,
            carry.take(),
            &pinned,
            draining,
        ));
        match exchange.await {
            Next::KeepAlive(next) if !draining => carry = next,
            Next::KeepAlive(_) | Next::Close => return,
            Next::Hyper(read) => {
                drop(pinned);
                return hyper_path(state, conn, read).await;
            }
        }
    }
}

/// What an idle connection does next.
enum Wait {
    /// The client sent something.
    Request,
    /// Idle timeout, drain or a broken socket.
    Close,
    /// Idle since this tick for long enough to park.
    Park(u64),
}

/// Waits, holding no buffer, until the client sends something, the
/// connection should close, or (`may_park`) it should park.
async fn wait_for_request(clock: &IdleClock, stream: &TcpStream, may_park: bool) -> Wait {
    let since = clock.now();
    loop {
        let tick = clock.next();
        if clock.expired(since) {
            return Wait::Close;
        }
        if may_park && clock.may_park(since) {
            return Wait::Park(since);
        }
        // `poll_read_ready` keeps its waker in the socket's own slot: no
        // waiter node in this future, which every idle connection carries.
        let readable = std::future::poll_fn(|cx| stream.poll_read_ready(cx));
        tokio::select! {
            biased;
            ready = readable => return if ready.is_ok() { Wait::Request } else { Wait::Close },
            () = tick => {}
        }
    }
}

/// Moves an idle connection to the parking lot; its task ends here.
/// If that fails (the system refuses another epoll entry), the connection
/// closes: an idle keep-alive connection may be closed at any time, and
/// clients retry on a new one.
fn park(state: &Balancer, conn: Accepted, pinned: Pinned, since: u64) {
    let (stream, conn) = conn.detach();
    match stream.into_std() {
        Ok(stream) => {
            let parked = park::Parked::new(stream, conn, pinned, since);
            if state.parking.park(parked).is_err() {
                tracing::debug!("cannot park a connection: closing it");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot park a connection: closing it"),
    }
}

/// Serves the rest of the connection with hyper and [`Proxy`]. Boxed: the
/// hyper connection's state is large, and inline it would size every fast
/// path connection's task.
async fn hyper_path(state: Arc<Balancer>, conn: Accepted, read: Vec<u8>) {
    let proxy = Proxy::new(state, conn.peer);
    Box::pin(conn.serve_http(read, proxy)).await;
}

/// One request and its response.
async fn exchange(
    state: &Balancer,
    stream: &mut TcpStream,
    client: IpAddr,
    carry: Option<Buf>,
    pinned: &Pinned,
    draining: bool,
) -> Next {
    let limits = &state.config.limits;
    let mut input = carry.unwrap_or_else(Buf::take);
    let mut request = Buf::take();

    let head = loop {
        match head::request(&input, client, MAX_BODY, &mut request) {
            // A head over the limit that arrived whole in one read: hyper
            // refuses it (431) like one that arrives in pieces.
            head::Request::Ready(head) if head.head_len > limits.max_header_bytes => {
                return Next::Hyper(input.into_vec());
            }
            head::Request::Ready(head) => break head,
            head::Request::Unusual => return Next::Hyper(input.into_vec()),
            // Too big for us: hyper answers 431.
            head::Request::Partial if input.len() >= limits.max_header_bytes => {
                return Next::Hyper(input.into_vec());
            }
            head::Request::Partial => {}
        }
        match read_some(stream, &mut input, limits.idle_timeout).await {
            Some(n) if n > 0 => {}
            _ => return Next::Close,
        }
    };
    let end = head.head_len + head.body_len;
    while input.len() < end {
        match read_some(stream, &mut input, limits.idle_timeout).await {
            Some(n) if n > 0 => {}
            _ => return Next::Close,
        }
    }
    request.extend_from_slice(&input[head.head_len..end]);
    input.drain(..end);
    let carry = (!input.is_empty()).then_some(input);
    let close = head.close || draining;
    let head_request = request.starts_with(b"HEAD ");

    state.totals.requests.fetch_add(1, Relaxed);
    let pool = state.pool();
    let mut response = Buf::take();
    let mut out = Buf::take();
    let mut last_error = None;
    for idx in pool.ring.candidates(key_hash(client)) {
        let backend = &pool.backends[idx];
        if !backend.is_available() {
            continue;
        }
        let guard = UpstreamGuard::new(Arc::clone(backend));
        let attempt = Attempt {
            limits,
            backend,
            request: &request,
            head_request,
            close,
            idempotent: head.idempotent,
        };
        match attempt.run(stream, &mut response, &mut out).await {
            Ok((upstream, head)) => {
                pinned.repin(backend);
                let timeout = limits.upstream_timeout;
                let relayed = relay(
                    stream,
                    upstream,
                    head,
                    &mut response,
                    &mut out,
                    &guard,
                    timeout,
                );
                return match relayed.await {
                    Relayed::Done => Next::KeepAlive(carry),
                    Relayed::Close => Next::Close,
                };
            }
            Err(Failed::Client) => return Next::Close,
            Err(Failed::Backend { error, sent }) => {
                if error.blames_backend() {
                    backend.stats.errors.fetch_add(1, Relaxed);
                    state.passive_failure(backend, &error);
                }
                let next = error.may_try_next() && (!sent || head.idempotent);
                last_error = Some(error);
                if !next {
                    break;
                }
            }
        }
    }
    state.totals.failed.fetch_add(1, Relaxed);
    let error = last_error.unwrap_or(ProxyError::NoBackend);
    let status = error.status();
    let body = error.body().to_string();
    head::own_response(
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        "application/json",
        body.as_bytes(),
        close,
        &mut out,
    );
    if stream.write_all(&out).await.is_err() || close {
        return Next::Close;
    }
    Next::KeepAlive(carry)
}

/// One try of one request on one backend, up to the final response head.
struct Attempt<'a> {
    limits: &'a crate::config::ProxyLimits,
    backend: &'a Backend,
    /// The rewritten head and the whole body.
    request: &'a [u8],
    head_request: bool,
    close: bool,
    idempotent: bool,
}

enum Failed {
    /// The backend failed; `sent`: the request may have reached it.
    Backend { error: ProxyError, sent: bool },
    /// The client went away (writing it an interim response failed).
    Client,
}

impl Attempt<'_> {
    async fn run(
        &self,
        client: &mut TcpStream,
        response: &mut Buf,
        out: &mut Buf,
    ) -> Result<(TcpStream, ResponseHead), Failed> {
        let pool = &self.backend.pool;
        let (mut upstream, mut reused) = match pool.checkout_raw() {
            Some(s) => (s, true),
            None => (self.connect().await?, false),
        };
        loop {
            response.clear();
            let failure = match upstream.write_all(self.request).await {
                Ok(()) => match self.read_head(client, &mut upstream, response, out).await {
                    Ok(head) => return Ok((upstream, head)),
                    Err(failure) => failure,
                },
                Err(e) => Failed::Backend {
                    error: ProxyError::UpstreamIo(e),
                    sent: true,
                },
            };
            // A pooled connection the backend closed while it sat idle
            // fails before any byte of an answer: a fresh one is not a
            // second attempt, as long as the request may be sent again.
            let stale = matches!(
                &failure,
                Failed::Backend {
                    error: ProxyError::UpstreamIo(_),
                    ..
                }
            ) && response.is_empty();
            if reused && stale && self.idempotent {
                upstream = self.connect().await?;
                reused = false;
                continue;
            }
            return Err(failure);
        }
    }

    async fn connect(&self) -> Result<TcpStream, Failed> {
        self.backend
            .pool
            .connect_raw()
            .await
            .map_err(|e| Failed::Backend {
                error: ProxyError::Connect(e),
                sent: false,
            })
    }

    /// Reads up to the final response head, passing interim (1xx) ones on.
    async fn read_head(
        &self,
        client: &mut TcpStream,
        upstream: &mut TcpStream,
        response: &mut Buf,
        out: &mut Buf,
    ) -> Result<ResponseHead, Failed> {
        let deadline = Instant::now() + self.limits.upstream_timeout;
        let backend_failed = |error| Failed::Backend { error, sent: true };
        loop {
            if !response.is_empty() {
                match head::response(response, self.head_request, self.close, out) {
                    head::Response::Ready(head) if head.is_interim() => {
                        client.write_all(out).await.map_err(|_| Failed::Client)?;
                        response.drain(..head.head_len);
                        continue;
                    }
                    head::Response::Ready(head) => return Ok(head),
                    head::Response::Bad(why) => {
                        return Err(backend_failed(ProxyError::BadResponse(why)));
                    }
                    head::Response::Partial if response.len() >= MAX_RESPONSE_HEAD => {
                        return Err(backend_failed(ProxyError::BadResponse(
                            "response head too large",
                        )));
                    }
                    head::Response::Partial => {}
                }
            }
            let read = tokio::time::timeout_at(deadline, read_into(upstream, response));
            match read.await {
                Err(_) => return Err(backend_failed(ProxyError::Timeout)),
                Ok(Ok(0)) => {
                    return Err(backend_failed(ProxyError::UpstreamIo(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(backend_failed(ProxyError::UpstreamIo(e))),
            }
        }
    }
}

/// How relaying a response ended.
enum Relayed {
    /// Complete; the client connection may carry another request.
    Done,
    /// The client connection must close (asked for, body ran to close, or
    /// either side failed mid-body).
    Close,
}

/// Sends the response whose head `response` starts with (already rewritten
/// into `out`) and its body; returns the backend connection to the pool when
/// the exchange completed cleanly.
async fn relay(
    client: &mut TcpStream,
    mut upstream: TcpStream,
    head: ResponseHead,
    response: &mut Buf,
    out: &mut Buf,
    guard: &UpstreamGuard,
    timeout: Duration,
) -> Relayed {
    let backend = guard.backend();
    let body = &response[head.head_len..];
    let mut reusable = head.reusable;
    let mut progress = BodyProgress::new(head.framing);
    // The head and the body bytes that came with it go out in one write.
    let first = match progress.feed(body) {
        Ok(n) => n,
        Err(e) => return body_failed(backend, &e),
    };
    reusable &= first == body.len();
    out.extend_from_slice(&body[..first]);
    if client.write_all(out).await.is_err() {
        return Relayed::Close;
    }
    while !progress.is_done() {
        response.clear();
        let n = match tokio::time::timeout(timeout, read_into(&mut upstream, response)).await {
            Ok(Ok(0)) if head.framing == Framing::UntilClose => break,
            Ok(Ok(0)) => {
                let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                return body_failed(backend, &eof);
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return body_failed(backend, &e),
            Err(_) => return body_failed(backend, &ProxyError::Timeout),
        };
        let take = match progress.feed(response) {
            Ok(k) => k,
            Err(e) => return body_failed(backend, &e),
        };
        reusable &= take == n;
        if client.write_all(&response[..take]).await.is_err() {
            return Relayed::Close;
        }
    }
    if reusable {
        backend.pool.checkin_raw(upstream);
    }
    if head.close_client {
        Relayed::Close
    } else {
        Relayed::Done
    }
}

/// The backend broke off mid-body: the client connection cannot be framed
/// any more, so it closes; the failure counts against the backend.
fn body_failed(backend: &Backend, why: &dyn std::fmt::Display) -> Relayed {
    backend.stats.errors.fetch_add(1, Relaxed);
    tracing::debug!(backend = %backend.name(), error = %why, "backend body failed mid-stream");
    Relayed::Close
}

/// Reads what the socket has into `buf`'s spare room, growing it when
/// nearly full. `Ok(0)`: the peer closed.
async fn read_into(stream: &mut TcpStream, buf: &mut Buf) -> std::io::Result<usize> {
    buf.reserve_room();
    stream.read_buf(buf.vec_mut()).await
}

/// [`read_into`] within `timeout`; `None` on error or timeout.
async fn read_some(stream: &mut TcpStream, buf: &mut Buf, timeout: Duration) -> Option<usize> {
    tokio::time::timeout(timeout, read_into(stream, buf))
        .await
        .ok()?
        .ok()
}
