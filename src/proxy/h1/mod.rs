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
//! An `Upgrade` request (WebSocket and the like) is sent on a new backend
//! connection, never a pooled one; a `101` answer turns both connections
//! into a tunnel ([`super::tunnel`]) for the rest of the client
//! connection's life, any other answer is relayed like any response and
//! the connection carries on here.
//!
//! The first request the fast path does not handle ([`head::Request::Unusual`]:
//! `h2c` upgrades, `Expect`, chunked or large request bodies, HTTP/1.0 and h2c,
//! malformed heads, the balancer's own pages) hands the connection, with the
//! bytes already read, to hyper ([`super::hyper_path`]) for the rest of its
//! life. Routing is the driver's ([`super::driver`]), the same for both paths:
//! this module only makes attempts (`Fast`) and relays the answer. Its
//! deadlines are the shared timeout model's (`config::ProxyLimits`): the
//! whole head within `CLIENT_HEADER_TIMEOUT_SECS` and the body's pauses
//! within `CLIENT_BODY_TIMEOUT_SECS` (else 408 and a close: the client's
//! fault, no backend is tried), the client reading the answer within
//! `CLIENT_WRITE_TIMEOUT_SECS`, the backend's pauses in the body within
//! `UPSTREAM_BODY_TIMEOUT_SECS`.

pub(crate) mod buf;
pub mod head;
/// The chunked-body scanner (shared with the accept loop's head clock).
pub use crate::chunked;
pub(crate) mod idle;
mod park;

pub use idle::IdleClock;
pub use park::ParkingLot;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::UpstreamGuard;
use super::driver::{self, Call, Failed, Transport};
use super::error::ProxyError;
use super::hyper_path::Service;
use super::tunnel::{self, Start};
use super::{Proxy, rules};
use crate::backend::{Backend, Pinned};
use crate::config::ProxyLimits;
use crate::server::{Accepted, Detached, Handler};
use crate::threads;
use buf::Buf;
use head::{BodyProgress, Framing, ResponseHead};

/// Largest request body the fast path buffers whole (bigger: hyper streams
/// it). The same as the replay bound, so both paths retry the same requests.
pub const MAX_BODY: usize = rules::REPLAY_BODY_MAX;
/// Largest response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The fast path's own state: the shared request path, the coarse clock of
/// idle connections and the parking lot.
pub struct FastPath {
    pub proxy: Arc<Proxy>,
    pub idle: Arc<IdleClock>,
    pub parking: Arc<ParkingLot>,
}

impl FastPath {
    pub fn new(proxy: Arc<Proxy>) -> Arc<FastPath> {
        let idle = Arc::new(IdleClock::new(proxy.config.limits.idle_timeout));
        let parking = Arc::new(ParkingLot::new(Arc::clone(&proxy.totals.parked)));
        Arc::new(FastPath {
            proxy,
            idle,
            parking,
        })
    }

    /// Starts the parking lot's thread; woken connections are served on
    /// the workers, or on the calling runtime when there are none (tests).
    pub fn start_parking(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let runtime = tokio::runtime::Handle::current();
        let resume = move |stream: std::net::TcpStream, conn: Detached, pinned: Pinned| {
            let Some(fast) = weak.upgrade() else { return };
            let serve = move |stream: TcpStream| async move {
                // The peer address is not kept while parked (32 bytes a connection).
                let Ok(peer) = stream.peer_addr() else { return };
                let client: IpAddr = peer.ip().to_canonical();
                serve_fast(fast, conn.attach(stream, peer), client, pinned).await;
            };
            match threads::installed() {
                Some(workers) => workers.spawn_std(stream, serve),
                None => {
                    let _runtime = runtime.enter();
                    match TcpStream::from_std(stream) {
                        Ok(stream) => {
                            runtime.spawn(serve(stream));
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot resume a parked connection"),
                    }
                }
            }
        };
        ParkingLot::start(&self.parking, Arc::clone(&self.idle), Box::new(resume));
    }
}

/// At the connection budget: the longest-parked connections close first;
/// when too few are parked, so do the idle ones not parked yet. (Idle
/// connections hyper serves are not reached: h2c, HTTP/1.0 and trusted
/// proxies' connections wait for their own idle timeout.)
impl crate::server::ShedIdle for FastPath {
    fn shed_idle(&self, n: usize) -> usize {
        let closed = self.parking.shed_oldest(n);
        if closed < n {
            self.idle.shed_waiting();
        }
        closed
    }
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("parking", &self.parking)
            .finish_non_exhaustive()
    }
}

/// Serves balancer connections: the fast path first, hyper when needed.
pub struct Connection(pub Arc<FastPath>);

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
    /// The backend switched protocols: relay the two connections.
    Tunnel(Box<Switched>),
}

/// A tunnel about to open: the backend's connection, the request it keeps
/// in flight there, and the bytes either side already sent.
struct Switched {
    upstream: TcpStream,
    guard: UpstreamGuard,
    start: Start,
}

async fn serve(fast: Arc<FastPath>, conn: Accepted) {
    let peer = conn.peer;
    let proxy = &fast.proxy;
    if !proxy.trusted.is_empty() && proxy.trusted.contains(peer.ip()) {
        // Trusted proxies' forwarding headers are read and extended:
        // hyper's path does that.
        return hyper_path(&fast, conn, Vec::new()).await;
    }
    let client = peer.ip().to_canonical();
    serve_fast(fast, conn, client, Pinned::default()).await;
}

/// The fast path's loop over one connection's requests, from its first
/// request or from the parking lot.
async fn serve_fast(fast: Arc<FastPath>, mut conn: Accepted, client: IpAddr, pinned: Pinned) {
    let mut carry = None;
    loop {
        if carry.is_none() {
            let may_park = fast.parking.is_open();
            match wait_for_request(&fast.idle, &conn.stream, may_park).await {
                Wait::Request => {}
                Wait::Close => return,
                Wait::Park(since) => return park(&fast, conn, pinned, since),
            }
        }
        let draining = fast.idle.draining();
        // Boxed: the exchange's state lives only while a request does, so
        // an idle connection's task stays small.
        let exchange = Box::pin(exchange(
            &fast.proxy,
            &mut conn.stream,
            client,
            carry.take(),
            &pinned,
            draining,
        ));
        let next = exchange.await;
        match next {
            Next::KeepAlive(next) if !draining => carry = next,
            Next::KeepAlive(_) | Next::Close => return,
            Next::Hyper(read) => {
                drop(pinned);
                return hyper_path(&fast, conn, read).await;
            }
            Next::Tunnel(switched) => {
                let Switched {
                    upstream,
                    guard,
                    start,
                } = *switched;
                // Boxed like the exchange: only a tunnel pays for its state.
                let relay = tunnel::relay(&mut conn.stream, upstream, start, guard, &fast.proxy);
                return Box::pin(relay).await;
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
        if clock.expired(since) || clock.is_shed(since) {
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
fn park(fast: &FastPath, conn: Accepted, pinned: Pinned, since: u64) {
    let (stream, conn) = conn.detach();
    match stream.into_std() {
        Ok(stream) => {
            let parked = park::Parked::new(stream, conn, pinned, since);
            if fast.parking.park(parked).is_err() {
                tracing::debug!("cannot park a connection: closing it");
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot park a connection: closing it"),
    }
}

/// Serves the rest of the connection with hyper. Boxed: the hyper
/// connection's state is large, and inline it would size every fast path
/// connection's task.
async fn hyper_path(fast: &FastPath, conn: Accepted, read: Vec<u8>) {
    let service = Service::new(Arc::clone(&fast.proxy), conn.peer);
    Box::pin(conn.serve_http(read, service)).await;
}

/// How reading a request from the client ended, when it did not.
enum Incomplete {
    /// The client closed, or the socket failed.
    Gone,
    /// A deadline ran out: answer 408 and close.
    TooSlow,
}

/// Reads more of a request within `deadline`.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Buf,
    deadline: Instant,
) -> Result<(), Incomplete> {
    match tokio::time::timeout_at(deadline, read_into(stream, buf)).await {
        Err(_) => Err(Incomplete::TooSlow),
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(Incomplete::Gone),
    }
}

/// One request and its response.
async fn exchange(
    proxy: &Arc<Proxy>,
    stream: &mut TcpStream,
    client: IpAddr,
    carry: Option<Buf>,
    pinned: &Pinned,
    draining: bool,
) -> Next {
    let limits = &proxy.config.limits;
    let mut input = carry.unwrap_or_else(Buf::take);
    let mut request = Buf::take();

    // The whole head within its deadline, counted from its first byte
    // (which is here, or the readiness that brought us here).
    let head_deadline = Instant::now() + limits.header_timeout;
    let head = loop {
        match head::request(&input, client, MAX_BODY, &mut request) {
            // A head over the limit that arrived whole in one read: hyper
            // refuses it (431) like one that arrives in pieces.
            head::Request::Ready(head) if head.head_len > limits.max_header_bytes => {
                return Next::Hyper(input.into_vec());
            }
            head::Request::Ready(head) => break head,
            head::Request::Unusual => return Next::Hyper(input.into_vec()),
            head::Request::Refused(refusal) => {
                own_answer(&refusal.into(), true, &mut request);
                let _ = write_client(stream, &request, limits).await;
                return Next::Close;
            }
            // Too big for us: hyper answers 431.
            head::Request::Partial if input.len() >= limits.max_header_bytes => {
                return Next::Hyper(input.into_vec());
            }
            head::Request::Partial => {}
        }
        match read_until(stream, &mut input, head_deadline).await {
            Ok(()) => {}
            Err(Incomplete::Gone) => return Next::Close,
            Err(Incomplete::TooSlow) => return too_slow(stream, &mut request).await,
        }
    };
    let end = head.head_len + head.body_len;
    while input.len() < end {
        let deadline = Instant::now() + limits.client_body_timeout;
        match read_until(stream, &mut input, deadline).await {
            Ok(()) => {}
            Err(Incomplete::Gone) => return Next::Close,
            Err(Incomplete::TooSlow) => return too_slow(stream, &mut request).await,
        }
    }
    request.extend_from_slice(&input[head.head_len..end]);
    input.drain(..end);
    let carry = (!input.is_empty()).then_some(input);
    let close = head.close || draining;
    let te_trailers = head.te_trailers;
    let upgrade = head.upgrade;

    let mut response = Buf::take();
    let mut out = Buf::take();
    let mut fast = Fast {
        limits,
        request: &request,
        head_request: request.starts_with(b"HEAD "),
        close,
        upgrade,
        client: &mut *stream,
        response: &mut response,
        out: &mut out,
    };
    let call = Call {
        key: proxy.key(client),
        client,
        replayable: head.idempotent,
    };
    let error = match driver::drive(proxy, call, &mut fast).await {
        Ok(routed) => {
            let (upstream, mut head) = routed.response;
            pinned.repin(routed.guard.backend());
            if head.status == 101 {
                // `out` holds the rewritten 101 head; what followed it in
                // `response` is the backend's first tunnel bytes.
                if write_client(stream, &out, limits).await.is_err() {
                    return Next::Close;
                }
                response.drain(..head.head_len);
                return Next::Tunnel(Box::new(Switched {
                    upstream,
                    guard: routed.guard,
                    start: Start {
                        to_upstream: carry,
                        to_client: Start::bytes(response),
                    },
                }));
            }
            // A connection opened for an upgrade is never pooled.
            head.reusable &= !upgrade;
            let relayed = relay(
                stream,
                upstream,
                head,
                te_trailers,
                &mut response,
                &mut out,
                &routed.guard,
                proxy,
            );
            return match relayed.await {
                Relayed::Done => Next::KeepAlive(carry),
                Relayed::Close => Next::Close,
            };
        }
        Err(ProxyError::ClientBody(_)) => return Next::Close,
        Err(error) => error,
    };
    tracing::debug!(status = rules::answer(&error).0, error = %error, "request failed");
    own_answer(&error, close, &mut out);
    if write_client(stream, &out, limits).await.is_err() || close {
        return Next::Close;
    }
    Next::KeepAlive(carry)
}

/// The balancer's own answer to `error`, into `out`.
fn own_answer(error: &ProxyError, close: bool, out: &mut Vec<u8>) {
    let (status, _) = rules::answer(error);
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = rules::answer_body(error);
    // A rare answer (a 429 at most as often as its client asks): the small
    // list of extra fields costs nothing that matters.
    let retry_after = rules::retry_after(error).map(|secs| secs.to_string());
    let mut fields = rules::answer_fields(error).to_vec();
    if let Some(secs) = &retry_after {
        fields.push(("retry-after", secs.as_str()));
    }
    head::own_response_with(
        status,
        reason,
        "application/json",
        &fields,
        body.as_bytes(),
        close || rules::closes_connection(error),
        out,
    );
}

/// The 408 a client too slow with its request head gets, on either path
/// (the accept loop sends it on connections hyper serves).
pub fn head_timeout_answer() -> Vec<u8> {
    let mut out = Vec::new();
    own_answer(&ProxyError::ClientTimeout, true, &mut out);
    out
}

/// 408 and a close: the client was too slow with its request.
async fn too_slow(stream: &mut TcpStream, out: &mut Buf) -> Next {
    own_answer(&ProxyError::ClientTimeout, true, out);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(out)).await;
    Next::Close
}

/// Writes to the client within `CLIENT_WRITE_TIMEOUT_SECS`.
async fn write_client(
    stream: &mut TcpStream,
    bytes: &[u8],
    limits: &ProxyLimits,
) -> Result<(), ()> {
    match tokio::time::timeout(limits.client_write_timeout, stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// One request, tried on backends over raw sockets: the fast path's
/// [`Transport`].
struct Fast<'a> {
    limits: &'a ProxyLimits,
    /// The rewritten head and the whole body.
    request: &'a [u8],
    head_request: bool,
    close: bool,
    /// An upgrade: a new connection, and a `101` is a possible answer.
    upgrade: bool,
    client: &'a mut TcpStream,
    response: &'a mut Buf,
    out: &'a mut Buf,
}

impl Transport for Fast<'_> {
    type Response = (TcpStream, ResponseHead);

    fn attempt(
        &mut self,
        backend: &Arc<Backend>,
        fresh: bool,
        give_way: Option<Duration>,
    ) -> impl Future<Output = Result<Self::Response, Failed>> + Send {
        let backend = Arc::clone(backend);
        async move {
            let pooled = if fresh || self.upgrade {
                None
            } else {
                backend.pool.checkout_raw()
            };
            let reused = pooled.is_some();
            let mut upstream = match pooled {
                Some(s) => s,
                None => connect(&backend, give_way).await?,
            };
            self.response.clear();
            let mut failure = match upstream.write_all(self.request).await {
                Ok(()) => match self.read_head(&mut upstream).await {
                    Ok(head) => return Ok((upstream, head)),
                    Err(failure) => failure,
                },
                Err(e) => Failed::new(ProxyError::UpstreamIo(e), true),
            };
            failure.stale = reused
                && matches!(failure.error, ProxyError::UpstreamIo(_))
                && self.response.is_empty();
            Err(failure)
        }
    }

    fn status(response: &Self::Response) -> u16 {
        response.1.status
    }
}

async fn connect(backend: &Backend, give_way: Option<Duration>) -> Result<TcpStream, Failed> {
    backend
        .pool
        .connect_raw(give_way)
        .await
        .map_err(|e| Failed::new(ProxyError::Connect(e), false))
}

impl Fast<'_> {
    /// Reads up to the final response head, passing interim (1xx) ones on.
    async fn read_head(&mut self, upstream: &mut TcpStream) -> Result<ResponseHead, Failed> {
        let deadline = Instant::now() + self.limits.upstream_timeout;
        let backend_failed = |error| Failed::new(error, true);
        loop {
            if !self.response.is_empty() {
                let parse = if self.upgrade {
                    head::upgrade_response
                } else {
                    head::response
                };
                match parse(self.response, self.head_request, self.close, self.out) {
                    head::Response::Ready(head) if head.is_interim() => {
                        if write_client(self.client, self.out, self.limits)
                            .await
                            .is_err()
                        {
                            let gone = ProxyError::ClientBody("the client went away".into());
                            return Err(Failed::new(gone, true));
                        }
                        self.response.drain(..head.head_len);
                        continue;
                    }
                    head::Response::Ready(head) => return Ok(head),
                    head::Response::Bad(why) => {
                        return Err(backend_failed(ProxyError::BadResponse(why)));
                    }
                    head::Response::Partial if self.response.len() >= MAX_RESPONSE_HEAD => {
                        return Err(backend_failed(ProxyError::BadResponse(
                            "response head too large",
                        )));
                    }
                    head::Response::Partial => {}
                }
            }
            let read = tokio::time::timeout_at(deadline, read_into(upstream, self.response));
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
    /// either side failed or stalled mid-body).
    Close,
}

/// Sends the response whose head `response` starts with (already rewritten
/// into `out`) and its body; returns the backend connection to the pool when
/// the exchange completed cleanly.
#[allow(clippy::too_many_arguments)]
async fn relay(
    client: &mut TcpStream,
    mut upstream: TcpStream,
    head: ResponseHead,
    te_trailers: bool,
    response: &mut Buf,
    out: &mut Buf,
    guard: &UpstreamGuard,
    proxy: &Proxy,
) -> Relayed {
    let limits = &proxy.config.limits;
    let backend = guard.backend();
    let body = &response[head.head_len..];
    let mut reusable = head.reusable;
    let mut progress = BodyProgress::new(head.framing, te_trailers);
    // The head and the body bytes that came with it go out in one write.
    let fed = match progress.feed(body) {
        Ok(fed) => fed,
        Err(e) => return body_failed(guard, proxy, ProxyError::BadResponse(malformed(&e))),
    };
    reusable &= fed.used == body.len();
    out.extend_from_slice(&body[..fed.pass]);
    out.extend_from_slice(fed.tail);
    if write_client(client, out, limits).await.is_err() {
        return Relayed::Close;
    }
    while !progress.is_done() {
        response.clear();
        let read = tokio::time::timeout(
            limits.upstream_body_timeout,
            read_into(&mut upstream, response),
        );
        let n = match read.await {
            Ok(Ok(0)) if head.framing == Framing::UntilClose => break,
            Ok(Ok(0)) => {
                let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                return body_failed(guard, proxy, ProxyError::UpstreamIo(eof));
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return body_failed(guard, proxy, ProxyError::UpstreamIo(e)),
            Err(_) => return body_failed(guard, proxy, ProxyError::Timeout),
        };
        let fed = match progress.feed(response) {
            Ok(fed) => fed,
            Err(e) => return body_failed(guard, proxy, ProxyError::BadResponse(malformed(&e))),
        };
        reusable &= fed.used == n;
        if write_client(client, &response[..fed.pass], limits)
            .await
            .is_err()
        {
            return Relayed::Close;
        }
        if !fed.tail.is_empty() && write_client(client, fed.tail, limits).await.is_err() {
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

fn malformed(_: &chunked::Malformed) -> &'static str {
    "malformed chunked body"
}

/// The backend broke off or stalled mid-body: the client connection cannot
/// be framed any more, so it closes; the failure is reported.
fn body_failed(guard: &UpstreamGuard, proxy: &Proxy, error: ProxyError) -> Relayed {
    guard.body_failed(proxy, &error);
    Relayed::Close
}

/// Reads what the socket has into `buf`'s spare room, growing it when
/// nearly full. `Ok(0)`: the peer closed.
async fn read_into(stream: &mut TcpStream, buf: &mut Buf) -> std::io::Result<usize> {
    buf.reserve_room();
    stream.read_buf(buf.vec_mut()).await
}
