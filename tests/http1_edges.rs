//! HTTP/1.1 edge cases a HAProxy or nginx user checks first, over raw
//! sockets on both sides so the framing on the wire is visible: clients
//! write exact request bytes and parse the exact answer, backends are bare
//! `TcpListener`s that read the request the balancer forwards and write
//! exact response bytes.
//!
//! These pin the behaviour of the HTTP/1.1 request path, whatever parses it
//! (hyper, or a hand-written fast path): pipelining, every way a response
//! body is framed (length, chunked, close-delimited, none), request bodies,
//! `Expect: 100-continue`, header rewriting both ways, keep-alive and close,
//! stale pooled upstream connections, limits, timeouts and failover.

mod support;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{TestBalancer, client_ip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// Bound on one whole test.
const TEST_LIMIT: Duration = Duration::from_secs(30);
/// Bound on one response, request or close awaited.
const IO_LIMIT: Duration = Duration::from_secs(5);
/// The `Host` the clients send.
const HOST: &str = "edge.test";

// ---------------------------------------------------------------------------
// Wire: a buffered raw connection and an HTTP/1.x message parser.

/// A raw TCP connection with a read buffer, used by both clients and
/// backends.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("EOF {what}"))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Wire {
    fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    async fn connect(addr: SocketAddr) -> Wire {
        Wire::new(TcpStream::connect(addr).await.expect("connect"))
    }

    /// Connects from a chosen loopback address (a distinct client to the
    /// balancer's hash).
    async fn connect_from(source: IpAddr, addr: SocketAddr) -> Wire {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind source");
        Wire::new(socket.connect(addr).await.expect("connect"))
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next message head, CRLF CRLF included; `None` on a clean EOF
    /// before its first byte.
    async fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..end + 4).collect()));
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(eof("inside a message head"))
                };
            }
        }
    }

    /// Exactly `n` bytes.
    async fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(eof(&format!("after {} of {n} body bytes", self.buf.len())));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return String::from_utf8(line).map_err(|_| invalid("line is not UTF-8"));
            }
            if self.fill().await? == 0 {
                return Err(eof("inside a line"));
            }
        }
    }

    /// A chunked body, decoded strictly: (body, trailer fields, chunk count).
    async fn chunked(&mut self) -> io::Result<(Vec<u8>, Vec<(String, String)>, usize)> {
        let mut body = Vec::new();
        let mut chunks = 0;
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                break;
            }
            body.extend(self.take(size).await?);
            chunks += 1;
            if self.take(2).await? != b"\r\n" {
                return Err(invalid("chunk data not followed by CRLF"));
            }
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok((body, trailers, chunks));
            }
            trailers.push(field(&line)?);
        }
    }

    /// Everything up to EOF.
    async fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        while self.fill().await? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Whether the peer closes the connection (EOF or reset) within
    /// `within`, having sent nothing more.
    async fn closes_within(&mut self, within: Duration) -> bool {
        assert!(
            self.buf.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        match tokio::time::timeout(within, self.fill()).await {
            Err(_) => false,
            Ok(Err(_)) | Ok(Ok(0)) => true,
            Ok(Ok(_)) => panic!(
                "bytes after the last response: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }
}

fn field(line: &str) -> io::Result<(String, String)> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| invalid(format!("header line without colon: {line:?}")))?;
    if name.is_empty() || name.contains([' ', '\t']) {
        return Err(invalid(format!("bad header name in {line:?}")));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// A parsed message head: start line and fields in wire order.
#[derive(Debug, Clone)]
struct Head {
    start: String,
    fields: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(raw).map_err(|_| invalid("head is not UTF-8"))?;
        let text = text
            .strip_suffix("\r\n\r\n")
            .ok_or_else(|| invalid("head does not end in CRLF CRLF"))?;
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or("").to_owned();
        let fields = lines.map(field).collect::<io::Result<Vec<_>>>()?;
        Ok(Head { start, fields })
    }

    /// Every value of `name` (case-insensitive), in order.
    fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    /// The comma-separated tokens of every `name` line, lower-cased.
    fn tokens(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// How a response body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304).
    None,
    Length,
    Chunked,
    /// Read until the server closed the connection.
    Close,
}

/// A response as it came off the wire.
#[derive(Debug)]
struct Resp {
    version: String,
    status: u16,
    head: Head,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
    framing: Framing,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response, framed by the rules of RFC 9112 §6.3, refusing what a
/// strict client would refuse (both Transfer-Encoding and Content-Length,
/// conflicting lengths, a length on a 204).
async fn read_response(w: &mut Wire, to_head: bool) -> io::Result<Resp> {
    let raw = w.head().await?.ok_or_else(|| eof("before a response"))?;
    let head = Head::parse(&raw)?;
    let mut start = head.start.splitn(3, ' ');
    let version = start.next().unwrap_or("").to_owned();
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(invalid(format!("bad status line {:?}", head.start)));
    }
    let status: u16 = start
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| invalid(format!("bad status line {:?}", head.start)))?;
    let te = head.tokens("transfer-encoding");
    let lengths = head.all("content-length");
    if !te.is_empty() && !lengths.is_empty() {
        return Err(invalid("both Transfer-Encoding and Content-Length"));
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Err(invalid(format!("conflicting Content-Length {lengths:?}")));
    }
    if (status == 204 || (100..200).contains(&status)) && (!te.is_empty() || !lengths.is_empty()) {
        return Err(invalid(format!("{status} with a body length")));
    }
    let no_body = to_head || (100..200).contains(&status) || status == 204 || status == 304;
    let (body, trailers, framing) = if no_body {
        (Vec::new(), Vec::new(), Framing::None)
    } else if !te.is_empty() {
        if te.last().map(String::as_str) != Some("chunked") {
            return Err(invalid(format!(
                "Transfer-Encoding {te:?} not ending in chunked"
            )));
        }
        let (body, trailers, _) = w.chunked().await?;
        (body, trailers, Framing::Chunked)
    } else if let Some(len) = lengths.first() {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length {len:?}")))?;
        (w.take(len).await?, Vec::new(), Framing::Length)
    } else {
        (w.read_to_eof().await?, Vec::new(), Framing::Close)
    };
    Ok(Resp {
        version,
        status,
        head,
        body,
        trailers,
        framing,
    })
}

/// The next response, within [`IO_LIMIT`].
async fn recv(w: &mut Wire) -> Resp {
    recv_to(w, false).await
}

/// The next response to a request that was `HEAD` when `to_head`.
async fn recv_to(w: &mut Wire, to_head: bool) -> Resp {
    tokio::time::timeout(IO_LIMIT, read_response(w, to_head))
        .await
        .expect("a response within the I/O limit")
        .expect("a well-framed HTTP/1.x response")
}

/// A `GET` request's bytes.
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

/// `len` bytes of a recognisable, non-repeating-looking pattern.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) as u8) ^ (i >> 8) as u8 ^ seed)
        .collect()
}

/// A 200 with a Content-Length body and extra header lines (each ending in
/// CRLF).
fn ok_with(extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn ok(body: &[u8]) -> Vec<u8> {
    ok_with("", body)
}

/// Runs a test body within [`TEST_LIMIT`].
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test finished within its time limit");
}

// ---------------------------------------------------------------------------
// Raw backends.

/// A request as a raw backend received it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which accepted connection of this backend it came on (1, 2, ...).
    conn: usize,
    method: String,
    target: String,
    version: String,
    head: Head,
    body: Vec<u8>,
}

/// What a raw backend does after writing its answer.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Waits for the next request on the connection.
    KeepOpen,
    /// Closes the connection at once.
    Close,
    /// Keeps the connection idle this long, then closes it.
    CloseAfter(Duration),
    /// Holds the connection open and never answers anything again.
    Hang,
}

/// A raw backend's answer to one request: exact bytes, then what to do.
struct Answer {
    bytes: Vec<u8>,
    then: Then,
}

impl Answer {
    fn keep(bytes: Vec<u8>) -> Answer {
        Answer {
            bytes,
            then: Then::KeepOpen,
        }
    }
}

enum Event {
    /// A health probe was answered.
    Probe,
    Request(Seen),
    /// The backend closed connection `n`.
    Closed(usize),
}

/// How a raw backend behaves, shared by its connections.
struct Behaviour {
    handler: Box<dyn Fn(&Seen) -> Answer + Send + Sync>,
    /// Answer `Expect: 100-continue` with `100 Continue` before the body.
    continue_first: bool,
    /// Set by [`RawBackend::kill`]: a request read from then on is not
    /// answered (its connection is dropped), even by a connection task that
    /// has not noticed its abort yet.
    dead: AtomicBool,
    events: mpsc::UnboundedSender<Event>,
}

/// A backend on a bare `TcpListener`. Health probes (`GET /health`) get a
/// 200 and a close; every other request goes to the handler, and the test
/// sees it (head and body as received) through [`RawBackend::request`].
struct RawBackend {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Event>,
    behaviour: Arc<Behaviour>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> RawBackend {
        Self::start_with(false, handler).await
    }

    /// `continue_first`: answer `Expect: 100-continue` with an interim
    /// `100 Continue` before reading the body, as real servers do.
    async fn start_with(
        continue_first: bool,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let (tx, events) = mpsc::unbounded_channel();
        let behaviour = Arc::new(Behaviour {
            handler: Box::new(handler),
            continue_first,
            dead: AtomicBool::new(false),
            events: tx,
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(raw_accept_loop(listener, Arc::clone(&behaviour), stopped));
        RawBackend {
            addr,
            events,
            behaviour,
            stop: Some(stop),
            task,
        }
    }

    /// The next proxied request this backend received (probes skipped).
    async fn request(&mut self) -> Seen {
        tokio::time::timeout(IO_LIMIT, async {
            loop {
                match self.events.recv().await.expect("backend running") {
                    Event::Request(seen) => return seen,
                    Event::Probe | Event::Closed(_) => {}
                }
            }
        })
        .await
        .expect("the backend received a request in time")
    }

    /// Waits until this backend has closed its connection `conn`.
    async fn closed(&mut self, conn: usize) {
        tokio::time::timeout(IO_LIMIT, async {
            loop {
                if let Event::Closed(n) = self.events.recv().await.expect("backend running") {
                    if n == conn {
                        return;
                    }
                }
            }
        })
        .await
        .expect("the backend closed its connection in time");
    }

    /// Waits until this backend has answered a health probe.
    async fn probed(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Event::Probe = self.events.recv().await.expect("backend running") {
                    return;
                }
            }
        })
        .await
        .expect("the balancer probed the backend");
    }

    /// Stops the backend the hard way: listener and every connection closed
    /// at once, as when its process dies. Returns the port held so that it
    /// refuses connections from then on (see [`refusing_port`]).
    async fn kill(mut self) -> TcpSocket {
        self.behaviour.dead.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        refusing_port(self.addr)
    }
}

/// Binds `addr` without listening: connections to it are refused, and while
/// the socket lives no other test's listener can be given that port (which
/// would answer in the dead backend's place).
fn refusing_port(addr: SocketAddr) -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("socket");
    // The dead listener's connections may linger in TIME_WAIT.
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("hold the port");
    socket
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_accept_loop(
    listener: TcpListener,
    behaviour: Arc<Behaviour>,
    mut stopped: oneshot::Receiver<()>,
) {
    // Connections live in this set, so returning drops them all.
    let mut conns = JoinSet::new();
    let mut next = 0;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                next += 1;
                let conn = next;
                let behaviour = Arc::clone(&behaviour);
                conns.spawn(async move {
                    let mut w = Wire::new(stream);
                    let _ = raw_serve(&mut w, conn, &behaviour).await;
                    drop(w);
                    let _ = behaviour.events.send(Event::Closed(conn));
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves one backend connection until the handler closes it or the peer does.
async fn raw_serve(w: &mut Wire, conn: usize, behaviour: &Behaviour) -> io::Result<()> {
    let events = &behaviour.events;
    loop {
        let Some(raw) = w.head().await? else {
            return Ok(());
        };
        if behaviour.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        let head = Head::parse(&raw)?;
        let mut line = head.start.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (line.next(), line.next(), line.next(), line.next())
        else {
            return Err(invalid(format!("bad request line {:?}", head.start)));
        };
        let (method, target, version) = (method.to_owned(), target.to_owned(), version.to_owned());
        if target == "/health" {
            let _ = events.send(Event::Probe);
            return w
                .stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        }
        if behaviour.continue_first && head.tokens("expect").iter().any(|t| t == "100-continue") {
            w.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let te = head.tokens("transfer-encoding");
        let body = if te.last().map(String::as_str) == Some("chunked") {
            w.chunked().await?.0
        } else if let Some(len) = head.get("content-length") {
            let len = len.parse().map_err(|_| invalid("bad Content-Length"))?;
            w.take(len).await?
        } else {
            Vec::new()
        };
        let seen = Seen {
            conn,
            method,
            target,
            version,
            head,
            body,
        };
        let answer = (behaviour.handler)(&seen);
        let _ = events.send(Event::Request(seen));
        w.stream.write_all(&answer.bytes).await?;
        match answer.then {
            Then::KeepOpen => {}
            Then::Close => return Ok(()),
            Then::CloseAfter(idle) => {
                tokio::time::sleep(idle).await;
                return Ok(());
            }
            Then::Hang => std::future::pending::<()>().await,
        }
    }
}

/// A balancer in front of `backends` (static list, health probes only at
/// start and after a failure), plus `extra` settings.
async fn balancer(backends: &[&RawBackend], extra: &[(&'static str, &str)]) -> TestBalancer {
    let hosts = backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut pairs = vec![
        ("BACKEND_HOSTS", hosts),
        ("HEALTH_INTERVAL_SECS", "3600".to_owned()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    TestBalancer::start(&pairs).await
}

/// A handler answering 200 with the request target as the body.
fn echo_target(seen: &Seen) -> Answer {
    Answer::keep(ok(seen.target.as_bytes()))
}

// ---------------------------------------------------------------------------
// The cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_one_write_get_complete_responses_in_order() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| {
            let body = format!("{} {} body={}", seen.method, seen.target, seen.body.len());
            Answer::keep(ok(body.as_bytes()))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;

        let mut burst = get("/one");
        burst.extend_from_slice(
            format!("POST /two HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 8\r\n\r\n2nd body")
                .as_bytes(),
        );
        burst.extend(get("/three"));
        c.send(&burst).await;

        for expected in ["GET /one body=0", "POST /two body=8", "GET /three body=0"] {
            let r = recv(&mut c).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.text(), expected);
        }
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(backend.request().await.target);
        }
        assert_eq!(order, ["/one", "/two", "/three"], "backend order");
        // Still in sync after the burst.
        c.send(&get("/four")).await;
        assert_eq!(recv(&mut c).await.text(), "GET /four body=0");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_with_trailer_arrives_whole_and_the_connection_stays_usable() {
    bounded(async {
        let big = pattern(20_000, 7);
        let mut expected = b"hello, ".to_vec();
        expected.extend_from_slice(b"chunked ");
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b" world");
        let chunked = move || {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n".to_vec();
            out.extend_from_slice(b"7\r\nhello, \r\n");
            // A chunk extension, which a recipient must ignore.
            out.extend_from_slice(b"8;name=value\r\nchunked \r\n");
            out.extend_from_slice(format!("{:X}\r\n", big.len()).as_bytes());
            out.extend_from_slice(&big);
            out.extend_from_slice(b"\r\n6\r\n world\r\n");
            out.extend_from_slice(b"0\r\nX-Checksum: 42\r\n\r\n");
            out
        };
        let backend = RawBackend::start(move |seen| {
            if seen.target == "/chunked" {
                Answer::keep(chunked())
            } else {
                echo_target(seen)
            }
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(format!("GET /chunked HTTP/1.1\r\nHost: {HOST}\r\nTE: trailers\r\n\r\n").as_bytes())
            .await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200, "{:?}", r.head);
        assert_eq!(r.body.len(), expected.len(), "body length ({:?})", r.framing);
        assert!(r.body == expected, "body bytes differ");
        assert_ne!(r.framing, Framing::Close, "framed, so keep-alive can go on");
        // A proxy may drop trailer fields (RFC 9110 §6.5.1), but one that
        // passes them on passes them unchanged.
        assert!(
            r.trailers
                .iter()
                .all(|(k, v)| k.eq_ignore_ascii_case("x-checksum") && v == "42"),
            "trailers: {:?}",
            r.trailers
        );

        c.send(&get("/next")).await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/next"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_response_arrives_whole_and_correctly_framed() {
    bounded(async {
        let body = pattern(50_000, 3);
        let sent = body.clone();
        let backend = RawBackend::start(move |seen| {
            if seen.target == "/until-close" {
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
                out.extend_from_slice(&sent);
                Answer {
                    bytes: out,
                    then: Then::Close,
                }
            } else {
                echo_target(seen)
            }
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/until-close")).await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), body.len(), "body length ({:?})", r.framing);
        assert!(r.body == body, "body bytes differ");
        match r.framing {
            // Relayed close-delimited: the client connection ended with it
            // (read_response read to EOF).
            Framing::Close => {}
            // Re-framed (chunked or with a length): the client connection is
            // still good.
            _ => {
                c.send(&get("/next")).await;
                let r = recv(&mut c).await;
                assert_eq!((r.status, r.text().as_str()), (200, "/next"));
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_headers_without_body_and_the_next_get_works() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| {
            if seen.method == "HEAD" {
                Answer::keep(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
                        .to_vec(),
                )
            } else {
                echo_target(seen)
            }
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        for round in 0..2 {
            c.send(format!("HEAD /doc HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
                .await;
            let r = recv_to(&mut c, true).await;
            assert_eq!(r.status, 200, "round {round}: {r:?}");
            assert!(
                r.head.all("content-length").iter().all(|v| *v == "1000"),
                "a HEAD answer's Content-Length is the GET body's length, if any: {:?}",
                r.head
            );
            assert!(!r.head.has("transfer-encoding"), "{:?}", r.head);
            // No body bytes followed the head: the next bytes are the next
            // response's status line.
            c.send(&get("/after-head")).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, "/after-head"));
        }
        let seen = backend.request().await;
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("HEAD", "/doc")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_answers_keep_the_connection_in_sync() {
    bounded(async {
        let backend = RawBackend::start(|seen| match seen.target.as_str() {
            "/no-content" => Answer::keep(b"HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n".to_vec()),
            // A 304 may carry the Content-Length of the representation it
            // stands for; it still has no body.
            "/not-modified" => Answer::keep(
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\nX-Kind: 304\r\n\r\n"
                    .to_vec(),
            ),
            _ => echo_target(seen),
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        for _ in 0..2 {
            c.send(&get("/no-content")).await;
            let r = recv(&mut c).await;
            assert_eq!(r.status, 204, "{r:?}");
            assert_eq!(r.head.get("x-kind"), Some("204"));

            c.send(&get("/after-204")).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, "/after-204"));

            c.send(
                format!("GET /not-modified HTTP/1.1\r\nHost: {HOST}\r\nIf-None-Match: \"v1\"\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let r = recv(&mut c).await;
            assert_eq!(r.status, 304, "{r:?}");
            assert_eq!(r.head.get("etag"), Some("\"v1\""));
            assert_eq!(r.head.get("x-kind"), Some("304"));

            c.send(&get("/after-304")).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, "/after-304"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_with_content_length_reaches_the_backend_byte_exact() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| {
            Answer::keep(ok(format!("got {}", seen.body.len()).as_bytes()))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let body = pattern(100 * 1024, 11);
        let mut c = Wire::connect(lb.addr).await;
        let mut req = format!(
            "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        c.send(&req).await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text()), (200, format!("got {}", body.len())));

        let seen = backend.request().await;
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.head.all("content-length"), ["102400"]);
        assert!(!seen.head.has("transfer-encoding"), "{:?}", seen.head);
        assert_eq!(seen.head.get("content-type"), Some("application/octet-stream"));
        assert!(seen.body == body, "the backend got different bytes");

        c.send(&get("/after-post")).await;
        assert_eq!(recv(&mut c).await.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_reaches_the_backend_byte_exact() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| {
            Answer::keep(ok(format!("got {}", seen.body.len()).as_bytes()))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let body = pattern(70_000, 13);
        let mut req =
            format!("POST /stream HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n")
                .into_bytes();
        for part in body.chunks(30_000) {
            req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            req.extend_from_slice(part);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let mut c = Wire::connect(lb.addr).await;
        c.send(&req).await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text()), (200, format!("got {}", body.len())));
        let seen = backend.request().await;
        assert!(seen.body == body, "the backend got different bytes");
        assert!(
            !(seen.head.has("transfer-encoding") && seen.head.has("content-length")),
            "{:?}",
            seen.head
        );
        c.send(&get("/after-stream")).await;
        assert_eq!(recv(&mut c).await.status, 200);
    })
    .await;
}

/// A response carrying both Transfer-Encoding and Content-Length is framed
/// by the chunked coding, and an intermediary that forwards it "MUST first
/// remove the received Content-Length field" (RFC 9112 §6.3): the client
/// never gets both, nor a length that contradicts the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answer_with_both_chunked_and_length_is_framed_by_chunked() {
    bounded(async {
        let backend = RawBackend::start(|seen| {
            if seen.target == "/both" {
                Answer::keep(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                        .to_vec(),
                )
            } else {
                echo_target(seen)
            }
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/both")).await;
        // read_response refuses a head with both.
        let r = recv(&mut c).await;
        if r.status == 200 {
            assert_eq!(r.text(), "hello");
            c.send(&get("/next")).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, "/next"));
        } else {
            // Refusing the answer as malformed is right too.
            assert_eq!(r.status, 502, "{r:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_stop_at_the_balancer() {
    bounded(async {
        let mut backend = RawBackend::start(|_| {
            Answer::keep(ok_with(
                "Connection: keep-alive, X-Backend-Hop\r\nKeep-Alive: timeout=30, max=100\r\nX-Backend-Hop: internal\r\nX-End-To-End: from-backend\r\n",
                b"ok",
            ))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(
            b"GET /headers?q=1 HTTP/1.1\r\n\
              Host: shop.example:8080\r\n\
              X-Forwarded-For: 6.6.6.6\r\n\
              X-Forwarded-For: 7.7.7.7, 8.8.8.8\r\n\
              X-Real-IP: 6.6.6.6\r\n\
              X-Forwarded-Proto: https\r\n\
              X-Forwarded-Host: evil.example\r\n\
              Connection: keep-alive, X-Hop\r\n\
              Keep-Alive: timeout=5\r\n\
              X-Hop: secret\r\n\
              TE: trailers\r\n\
              Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
              Proxy-Connection: keep-alive\r\n\
              Accept: */*\r\n\
              X-End-To-End: from-client\r\n\
              \r\n",
        )
        .await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));

        let seen = backend.request().await;
        let h = &seen.head;
        assert_eq!(seen.target, "/headers?q=1");
        assert_eq!(seen.version, "HTTP/1.1");
        assert_eq!(h.all("host"), ["shop.example:8080"]);
        assert_eq!(h.all("x-forwarded-for"), ["127.0.0.1"], "replaced: {h:?}");
        assert_eq!(h.all("x-real-ip"), ["127.0.0.1"], "{h:?}");
        assert_eq!(h.all("x-forwarded-proto"), ["http"], "{h:?}");
        assert_eq!(h.all("x-forwarded-host"), ["shop.example:8080"], "{h:?}");
        assert_eq!(h.all("accept"), ["*/*"]);
        assert_eq!(h.all("x-end-to-end"), ["from-client"]);
        for gone in [
            "keep-alive",
            "x-hop",
            "te",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(!h.has(gone), "{gone} reached the backend: {h:?}");
        }
        // The balancer may speak for its own hop (keep-alive or close), but
        // none of the client's Connection tokens may pass.
        assert!(
            h.tokens("connection")
                .iter()
                .all(|t| t == "keep-alive" || t == "close"),
            "the client's Connection reached the backend: {h:?}"
        );

        let h = &r.head;
        assert!(!h.has("keep-alive"), "Keep-Alive reached the client: {h:?}");
        assert!(!h.has("x-backend-hop"), "X-Backend-Hop reached the client: {h:?}");
        assert!(
            h.tokens("connection")
                .iter()
                .all(|t| t == "keep-alive" || t == "close"),
            "the backend's Connection reached the client: {h:?}"
        );
        assert_eq!(h.all("x-end-to-end"), ["from-backend"]);

        // The backend's hop-by-hop headers did not end the client connection.
        c.send(&get("/again")).await;
        assert_eq!(recv(&mut c).await.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_connection_close_gets_its_answer_then_the_close() {
    bounded(async {
        let backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(
            format!("GET /bye HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/bye"));
        assert_ne!(r.framing, Framing::Chunked, "a known length stays a length");
        assert!(
            c.closes_within(IO_LIMIT).await,
            "the balancer closed the connection after the answer"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_while_idle_costs_no_error() {
    bounded(async {
        let mut pair = Vec::new();
        for name in ["a", "b"] {
            pair.push(
                RawBackend::start(move |seen| Answer {
                    bytes: ok_with(&format!("X-Backend: {name}\r\n"), seen.target.as_bytes()),
                    then: Then::CloseAfter(Duration::from_millis(200)),
                })
                .await,
            );
        }
        let lb = balancer(&[&pair[0], &pair[1]], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        let mut first_backend = None;
        let mut last_conn = 0;
        for round in 0..3 {
            let path = format!("/round-{round}");
            c.send(&get(&path)).await;
            let r = recv(&mut c).await;
            assert_eq!(r.status, 200, "round {round}: {r:?}");
            assert_eq!(r.text(), path);
            let name = r.head.get("x-backend").expect("x-backend").to_owned();
            let first = first_backend.get_or_insert_with(|| name.clone());
            assert_eq!(
                &name, first,
                "round {round}: the client stays on its backend"
            );
            let backend = &mut pair[usize::from(name == "b")];
            let seen = backend.request().await;
            assert_eq!(seen.target, path);
            assert!(seen.conn > last_conn, "a fresh upstream connection");
            last_conn = seen.conn;
            // The backend closes its end of the idle pooled connection; the
            // next request follows at once.
            backend.closed(seen.conn).await;
        }
        let status = lb.status().await;
        assert_eq!(status["totals"]["failed_requests"], 0, "{status}");
        for b in status["backends"].as_array().expect("backends") {
            assert_eq!(b["errors"], 0, "no backend blamed: {b}");
            assert_eq!(b["state"], "up", "{b}");
        }
    })
    .await;
}

/// A backend that says `Connection: close` is not sent another request on
/// that connection, even while the socket is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_connection_close_answer_is_never_reused() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| Answer {
            bytes: ok_with("Connection: close\r\n", seen.target.as_bytes()),
            // Slow to close, and deaf meanwhile: a request sent here waits.
            then: Then::CloseAfter(Duration::from_secs(3)),
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        let mut conns = Vec::new();
        for path in ["/first", "/second", "/third"] {
            let started = Instant::now();
            c.send(&get(path)).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, path));
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{path} waited on a closing connection"
            );
            conns.push(backend.request().await.conn);
        }
        assert!(
            conns.windows(2).all(|w| w[0] < w[1]),
            "a new upstream connection each time: {conns:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_response_arrives_byte_exact_with_its_length() {
    bounded(async {
        let body = pattern(1 << 20, 5);
        let sent = body.clone();
        let backend = RawBackend::start(move |_| Answer::keep(ok(&sent))).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/big")).await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.framing, Framing::Length, "{:?}", r.head);
        assert_eq!(r.head.all("content-length"), ["1048576"]);
        assert_eq!(r.body.len(), body.len());
        assert!(r.body == body, "body bytes differ");
        c.send(&get("/big")).await;
        assert!(recv(&mut c).await.body == body, "second time too");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_limit_gets_431_and_a_close_not_a_hang() {
    bounded(async {
        let mut backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[("MAX_HEADER_BYTES", "16384")]).await;

        // Within the limit: served.
        let mut c = Wire::connect(lb.addr).await;
        let fits = format!(
            "GET /fits HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(10 * 1024)
        );
        c.send(fits.as_bytes()).await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/fits"));
        let seen = backend.request().await;
        assert_eq!(seen.head.get("x-big").map(str::len), Some(10 * 1024));

        // Over it: refused, and the connection ends.
        for size in [20 * 1024, 64 * 1024] {
            let mut c = Wire::connect(lb.addr).await;
            let huge = format!(
                "GET /huge HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
                "a".repeat(size)
            );
            // The balancer may stop reading (and close) before it has it all.
            let _ = c.stream.write_all(huge.as_bytes()).await;
            let r = recv(&mut c).await;
            assert!(
                r.status == 431 || r.status == 400,
                "{size} B header: {} {:?}",
                r.status,
                r.head
            );
            assert!(
                r.framing == Framing::Close || c.closes_within(IO_LIMIT).await,
                "{size} B header: the connection closes after the refusal"
            );
        }

        // The balancer still serves, and the huge requests never reached the backend.
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/still-alive")).await;
        assert_eq!(recv(&mut c).await.status, 200);
        assert_eq!(backend.request().await.target, "/still-alive");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_gets_a_valid_answer_and_a_close() {
    bounded(async {
        let mut backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(b"GET /legacy HTTP/1.0\r\nUser-Agent: old\r\n\r\n")
            .await;
        let r = recv(&mut c).await;
        assert!(r.version.starts_with("HTTP/1."), "{r:?}");
        assert_eq!((r.status, r.text().as_str()), (200, "/legacy"));
        assert_ne!(
            r.framing,
            Framing::Chunked,
            "no chunked to an HTTP/1.0 client"
        );
        assert!(
            r.framing == Framing::Close || c.closes_within(IO_LIMIT).await,
            "an HTTP/1.0 connection without keep-alive ends after the answer"
        );
        let seen = backend.request().await;
        assert_eq!(seen.target, "/legacy");
        assert!(seen.version.starts_with("HTTP/1."), "{seen:?}");
        assert_eq!(seen.head.all("x-forwarded-for"), ["127.0.0.1"]);
    })
    .await;
}

/// RFC 9112 §3.2: every HTTP/1.1 request carries Host (empty when there is
/// no authority). The balancer forwards an HTTP/1.0 request as HTTP/1.1, so
/// it must add one; strict backends (Go's net/http, nginx) answer a Host-less
/// HTTP/1.1 request with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_reaches_the_backend_with_a_host() {
    bounded(async {
        let mut backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(b"GET /legacy HTTP/1.0\r\n\r\n").await;
        assert_eq!(recv(&mut c).await.status, 200);
        let seen = backend.request().await;
        if seen.version == "HTTP/1.1" {
            assert_eq!(
                seen.head.all("host").len(),
                1,
                "an HTTP/1.1 request needs exactly one Host: {:?}",
                seen.head
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_keep_alive_client_keeps_its_connection() {
    bounded(async {
        let backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        for path in ["/ab-1", "/ab-2", "/ab-3"] {
            c.send(
                format!("GET {path} HTTP/1.0\r\nHost: {HOST}\r\nConnection: Keep-Alive\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, path));
            assert_eq!(r.framing, Framing::Length, "{:?}", r.head);
            assert!(
                r.head
                    .tokens("connection")
                    .contains(&"keep-alive".to_owned()),
                "an HTTP/1.0 client is told the connection stays: {:?}",
                r.head
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_an_interim_answer_and_the_body_goes_through() {
    bounded(async {
        let mut backend = RawBackend::start_with(true, |seen| {
            Answer::keep(ok(format!("got {}", seen.body.len()).as_bytes()))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let body = pattern(40_000, 9);
        let mut c = Wire::connect(lb.addr).await;
        c.send(
            format!(
                "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        let interim = recv(&mut c).await;
        assert_eq!(interim.status, 100, "interim answer first: {interim:?}");
        c.send(&body).await;
        let mut r = recv(&mut c).await;
        let mut extra_interim = 0;
        while r.status == 100 {
            extra_interim += 1;
            r = recv(&mut c).await;
        }
        assert_eq!((r.status, r.text()), (200, format!("got {}", body.len())));
        assert!(extra_interim <= 1, "{extra_interim} more 100 Continue");

        let seen = backend.request().await;
        assert!(seen.body == body, "the backend got different bytes");
        assert_eq!(seen.head.all("content-length"), ["40000"]);

        c.send(&get("/after-upload")).await;
        assert_eq!(recv(&mut c).await.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_gets_504_after_the_upstream_timeout() {
    bounded(async {
        let mut backend = RawBackend::start(|_| Answer {
            bytes: Vec::new(),
            then: Then::Hang,
        })
        .await;
        let lb = balancer(&[&backend], &[("UPSTREAM_TIMEOUT_SECS", "1")]).await;
        let mut c = Wire::connect(lb.addr).await;
        let started = Instant::now();
        c.send(&get("/stuck")).await;
        let r = recv(&mut c).await;
        let waited = started.elapsed();
        assert_eq!(r.status, 504, "{r:?}");
        assert!(
            waited >= Duration::from_millis(900),
            "504 only after the timeout: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(4),
            "504 soon after the timeout: {waited:?}"
        );
        let json: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(json["status"], 504);
        assert_eq!(backend.request().await.target, "/stuck", "tried once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_died_fails_over_to_the_other_without_an_error() {
    bounded(async {
        let named = |name: &'static str| {
            move |seen: &Seen| {
                Answer::keep(ok_with(
                    &format!("X-Backend: {name}\r\n"),
                    seen.target.as_bytes(),
                ))
            }
        };
        let mut a = RawBackend::start(named("a")).await;
        let b = RawBackend::start(named("b")).await;
        let lb = balancer(&[&a, &b], &[]).await;
        a.probed().await;

        // A client whose backend is `a`, with a keep-alive connection that
        // has already been there.
        let mut found = None;
        for i in 0..200 {
            let ip = client_ip(i);
            let mut c = Wire::connect_from(ip, lb.addr).await;
            c.send(&get("/where")).await;
            let r = recv(&mut c).await;
            assert_eq!(r.status, 200);
            if r.head.get("x-backend") == Some("a") {
                found = Some((ip, c));
                break;
            }
        }
        let (ip, mut c) = found.expect("some client lands on a");

        let _dead = a.kill().await;
        // The same keep-alive client connection (its upstream connection to
        // `a` is gone, and `a` refuses new ones)...
        c.send(&get("/after-death")).await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.head.get("x-backend"), Some("b"));
        assert_eq!(r.text(), "/after-death");
        // ...and a new connection from the same client.
        let mut c = Wire::connect_from(ip, lb.addr).await;
        c.send(&get("/new-connection")).await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.head.get("x-backend"), Some("b"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_from_the_start_costs_no_client_an_error() {
    bounded(async {
        // A port nobody listens on.
        let dead = refusing_port(SocketAddr::from(([127, 0, 0, 1], 0)));
        let dead_addr = dead.local_addr().expect("addr");
        let live = RawBackend::start(echo_target).await;
        let lb = TestBalancer::start(&[
            ("BACKEND_HOSTS", format!("{dead_addr},{}", live.addr)),
            ("HEALTH_INTERVAL_SECS", "3600".to_owned()),
        ])
        .await;
        // At once (before the first health round has judged the dead one),
        // from clients spread over both backends' share of the ring.
        for i in 0..32 {
            let mut c = Wire::connect_from(client_ip(i), lb.addr).await;
            let path = format!("/client-{i}");
            c.send(&get(&path)).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text()), (200, path), "client {i}");
        }
    })
    .await;
}

/// Waits until `/lb/status` counts exactly `n` parked connections.
async fn wait_parked(lb: &TestBalancer, n: usize, what: &str) {
    support::wait_for(what, IO_LIMIT, || async {
        let s = lb.status().await;
        (s["totals"]["parked"].as_u64() == Some(n as u64)).then_some(())
    })
    .await;
}

/// A keep-alive connection idle for a moment moves to the parking lot (no
/// task, no buffer), and its next request is served like any other; parked
/// connections still close at the idle timeout, and a parked client still
/// counts as connected to its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_park_and_wake_for_their_next_request() {
    const CLIENTS: usize = 20;
    bounded(async {
        let backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[("CLIENT_IDLE_TIMEOUT_SECS", "3")]).await;
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let mut c = Wire::connect(lb.addr).await;
            c.send(&get(&format!("/first-{i}"))).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text()), (200, format!("/first-{i}")));
            clients.push(c);
        }
        wait_parked(&lb, CLIENTS, "every idle connection parked").await;
        let s = lb.status().await;
        assert_eq!(
            s["totals"]["clients"].as_i64(),
            Some(CLIENTS as i64),
            "parked clients still count as connected: {s}"
        );

        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&get(&format!("/again-{i}"))).await;
            let r = recv(c).await;
            assert_eq!((r.status, r.text()), (200, format!("/again-{i}")));
        }
        // Woken connections are served like new ones: a pipelined pair too.
        let c = &mut clients[0];
        c.send(&[get("/p1"), get("/p2")].concat()).await;
        assert_eq!(recv(c).await.text(), "/p1");
        assert_eq!(recv(c).await.text(), "/p2");

        // They park again, and the idle timeout closes them from there.
        wait_parked(&lb, CLIENTS, "the connections parked again").await;
        for c in &mut clients {
            assert!(
                c.closes_within(Duration::from_secs(6)).await,
                "a parked connection outlived its idle timeout"
            );
        }
        let s = lb.status().await;
        assert_eq!(s["totals"]["parked"].as_u64(), Some(0), "{s}");
        assert_eq!(s["totals"]["errors"].as_u64(), Some(0), "{s}");
    })
    .await;
}

/// Shutdown closes parked connections at once and the drain completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_parked_connections() {
    bounded(async {
        let backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/once")).await;
        assert_eq!(recv(&mut c).await.status, 200);
        wait_parked(&lb, 1, "the connection parked").await;
        let stopped = tokio::time::timeout(IO_LIMIT, lb.stop()).await;
        assert!(matches!(stopped, Ok(Ok(()))), "the drain finished promptly");
        assert!(
            c.closes_within(IO_LIMIT).await,
            "the parked connection closed"
        );
    })
    .await;
}
