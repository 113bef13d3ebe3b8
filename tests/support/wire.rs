//! Raw HTTP/1.x on both sides of the balancer: a buffered raw connection
//! ([`Wire`]), a strict response reader ([`read_response`]) and a backend on a
//! bare `TcpListener` ([`RawBackend`]) that records each request exactly as it
//! arrived and answers with exact bytes. The framing on the wire stays
//! visible, whatever parses it inside the balancer.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::TestBalancer;

/// Bound on one whole test.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);
/// Bound on one response, request or close awaited.
pub const IO_LIMIT: Duration = Duration::from_secs(5);
/// The `Host` the clients send.
pub const HOST: &str = "edge.test";

// ---------------------------------------------------------------------------
// Wire: a buffered raw connection and an HTTP/1.x message parser.

/// A raw TCP connection with a read buffer, used by both clients and
/// backends.
pub struct Wire {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

pub fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

pub fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("EOF {what}"))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Wire {
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn connect(addr: SocketAddr) -> Wire {
        Wire::new(TcpStream::connect(addr).await.expect("connect"))
    }

    /// Connects from a chosen loopback address (a distinct client to the
    /// balancer's hash).
    pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> Wire {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind source");
        Wire::new(socket.connect(addr).await.expect("connect"))
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next message head, CRLF CRLF included; `None` on a clean EOF
    /// before its first byte.
    pub async fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
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
    pub async fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(eof(&format!("after {} of {n} body bytes", self.buf.len())));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One CRLF-terminated line, without the CRLF.
    pub async fn line(&mut self) -> io::Result<String> {
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
    pub async fn chunked(&mut self) -> io::Result<(Vec<u8>, Vec<(String, String)>, usize)> {
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
    pub async fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        while self.fill().await? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Whether the peer closes the connection (EOF or reset) within
    /// `within`, having sent nothing more.
    pub async fn closes_within(&mut self, within: Duration) -> bool {
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

pub fn field(line: &str) -> io::Result<(String, String)> {
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
pub struct Head {
    pub start: String,
    pub fields: Vec<(String, String)>,
}

impl Head {
    pub fn parse(raw: &[u8]) -> io::Result<Head> {
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
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    /// The comma-separated tokens of every `name` line, lower-cased.
    pub fn tokens(&self, name: &str) -> Vec<String> {
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
pub enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304).
    None,
    Length,
    Chunked,
    /// Read until the server closed the connection.
    Close,
}

/// A response as it came off the wire.
#[derive(Debug)]
pub struct Resp {
    pub version: String,
    pub status: u16,
    pub head: Head,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub framing: Framing,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response, framed by the rules of RFC 9112 §6.3, refusing what a
/// strict client would refuse (both Transfer-Encoding and Content-Length,
/// conflicting lengths, a length on a 204).
pub async fn read_response(w: &mut Wire, to_head: bool) -> io::Result<Resp> {
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
pub async fn recv(w: &mut Wire) -> Resp {
    recv_to(w, false).await
}

/// The next response to a request that was `HEAD` when `to_head`.
pub async fn recv_to(w: &mut Wire, to_head: bool) -> Resp {
    tokio::time::timeout(IO_LIMIT, read_response(w, to_head))
        .await
        .expect("a response within the I/O limit")
        .expect("a well-framed HTTP/1.x response")
}

/// A `GET` request's bytes.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

/// `len` bytes of a recognisable, non-repeating-looking pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) as u8) ^ (i >> 8) as u8 ^ seed)
        .collect()
}

/// A 200 with a Content-Length body and extra header lines (each ending in
/// CRLF).
pub fn ok_with(extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn ok(body: &[u8]) -> Vec<u8> {
    ok_with("", body)
}

/// Runs a test body within [`TEST_LIMIT`].
pub async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test finished within its time limit");
}

// ---------------------------------------------------------------------------
// Raw backends.

/// A request as a raw backend received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which accepted connection of this backend it came on (1, 2, ...).
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    pub head: Head,
    pub body: Vec<u8>,
}

/// What a raw backend does after writing its answer.
#[derive(Debug, Clone, Copy)]
pub enum Then {
    /// Waits for the next request on the connection.
    KeepOpen,
    /// Closes the connection at once.
    Close,
    /// Keeps the connection idle this long, then closes it.
    CloseAfter(Duration),
    /// Holds the connection open and never answers anything again.
    Hang,
    /// Resets the connection at once (an RST rather than a FIN, as when a
    /// process crashes with the request read).
    Reset,
}

/// A raw backend's answer to one request: exact bytes, then what to do.
pub struct Answer {
    pub bytes: Vec<u8>,
    pub then: Then,
    /// Wait this long before writing the answer.
    pub delay: Duration,
}

impl Answer {
    pub fn keep(bytes: Vec<u8>) -> Answer {
        Answer {
            bytes,
            then: Then::KeepOpen,
            delay: Duration::ZERO,
        }
    }

    /// The same answer, written only after `delay`.
    pub fn delayed(self, delay: Duration) -> Answer {
        Answer { delay, ..self }
    }

    /// No answer at all (the request has been read whole), then `then`.
    pub fn nothing(then: Then) -> Answer {
        Answer {
            bytes: Vec::new(),
            then,
            delay: Duration::ZERO,
        }
    }
}

pub enum Event {
    /// A health probe was answered.
    Probe,
    Request(Seen),
    /// The backend closed connection `n`.
    Closed(usize),
}

/// How a raw backend behaves, shared by its connections.
pub struct Behaviour {
    pub handler: Box<dyn Fn(&Seen) -> Answer + Send + Sync>,
    /// Answer `Expect: 100-continue` with `100 Continue` before the body.
    pub continue_first: bool,
    /// Set by [`RawBackend::kill`]: a request read from then on is not
    /// answered (its connection is dropped), even by a connection task that
    /// has not noticed its abort yet.
    pub dead: AtomicBool,
    pub events: mpsc::UnboundedSender<Event>,
}

/// A backend on a bare `TcpListener`. Health probes (`GET /health`) get a
/// 200 and a close; every other request goes to the handler, and the test
/// sees it (head and body as received) through [`RawBackend::request`].
pub struct RawBackend {
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub behaviour: Arc<Behaviour>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    pub async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> RawBackend {
        Self::start_with(false, handler).await
    }

    /// `continue_first`: answer `Expect: 100-continue` with an interim
    /// `100 Continue` before reading the body, as real servers do.
    pub async fn start_with(
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
    pub async fn request(&mut self) -> Seen {
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

    /// Every proxied request received so far and not yet taken, without
    /// waiting.
    pub fn received_so_far(&mut self) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            if let Event::Request(seen) = event {
                out.push(seen);
            }
        }
        out
    }

    /// Waits until this backend has closed its connection `conn`.
    pub async fn closed(&mut self, conn: usize) {
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
    pub async fn probed(&mut self) {
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
    pub async fn kill(mut self) -> TcpSocket {
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
pub fn refusing_port(addr: SocketAddr) -> TcpSocket {
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

pub async fn raw_accept_loop(
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
pub async fn raw_serve(w: &mut Wire, conn: usize, behaviour: &Behaviour) -> io::Result<()> {
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
        if !answer.delay.is_zero() {
            tokio::time::sleep(answer.delay).await;
        }
        w.stream.write_all(&answer.bytes).await?;
        match answer.then {
            Then::KeepOpen => {}
            Then::Close => return Ok(()),
            Then::CloseAfter(idle) => {
                tokio::time::sleep(idle).await;
                return Ok(());
            }
            Then::Hang => std::future::pending::<()>().await,
            Then::Reset => {
                w.stream.set_zero_linger()?;
                return Ok(());
            }
        }
    }
}

/// A balancer in front of `backends` (static list, health probes only at
/// start and after a failure), plus `extra` settings.
pub async fn balancer(backends: &[&RawBackend], extra: &[(&'static str, &str)]) -> TestBalancer {
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
pub fn echo_target(seen: &Seen) -> Answer {
    Answer::keep(ok(seen.target.as_bytes()))
}
