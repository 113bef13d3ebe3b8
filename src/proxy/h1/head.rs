//! Request and response heads on the fast path: parsed in place with
//! httparse and rewritten by copying the lines that stay and appending the
//! ones the balancer adds. No header map, no allocation per header.
//!
//! The rules are the hyper path's, from [`crate::proxy::rules`]: hop-by-hop
//! headers (the fixed list and whatever `Connection` may name) go in both
//! directions; the backend gets `X-Forwarded-For`, `X-Real-IP`,
//! `X-Forwarded-Proto` and `X-Forwarded-Host` set by us, and no `Forwarded`
//! (the fast path only serves peers that are not trusted proxies, so the
//! client's own copies are replaced, never extended). The framing forwarded
//! is the framing parsed: a `Content-Length` is written from the value read,
//! once, whatever else the message said. A request this module does not
//! handle is reported [`Request::Unusual`] and served by hyper instead.
//!
//! An `Upgrade` request (`Upgrade` and `Connection: upgrade`, as hyper's
//! path reads it) keeps its `Upgrade` lines and says `Connection: upgrade`
//! to the backend, and only then may the answer be a `101 Switching
//! Protocols` ([`upgrade_response`]); after that the connection is a
//! tunnel ([`crate::proxy::tunnel`]). `h2c` upgrades are left to hyper.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::IpAddr;

use crate::chunked::{Chunked, Malformed};

use crate::proxy::rules;

/// Most header lines one head may carry (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Most names a `Connection` header may list on the fast path.
const MAX_NAMED: usize = 8;

/// What a client's bytes hold so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The head is not complete yet.
    Partial,
    /// Something the fast path leaves to hyper: another protocol version,
    /// an `h2c` upgrade, `Expect`, a chunked or large body, a malformed head (hyper
    /// answers it properly), one of the balancer's own pages.
    Unusual,
    /// A head the rules refuse ([`rules::check_head`]): answered by the
    /// balancer, then the connection closes.
    Refused(rules::Refusal),
    Ready(RequestHead),
}

/// A complete request head, already rewritten for the backend.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the client's head (the body starts here).
    pub head_len: usize,
    /// `Content-Length` (0 without one).
    pub body_len: usize,
    /// Safe to send again after a failure ([`rules::is_idempotent`]).
    pub idempotent: bool,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// The client takes trailer fields (`TE: trailers`).
    pub te_trailers: bool,
    /// The client asks to switch protocols (`Upgrade` with `Connection:
    /// upgrade`): a `101` answer turns the connection into a tunnel.
    pub upgrade: bool,
}

/// Parses the request head at the start of `buf` and writes the backend's
/// version of it to `out` (cleared first). `client`: the address the
/// forwarding headers name. Bodies over `max_body` bytes are unusual.
pub fn request(buf: &[u8], client: IpAddr, max_body: usize, out: &mut Vec<u8>) -> Request {
    // Uninitialised: zeroing a hundred header slots per parse costs more
    // than parsing a typical head.
    let mut lines = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut lines) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Request::Partial,
        Err(_) => return Request::Unusual,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Request::Unusual;
    };
    // Other target forms, and a `#` (refused as a malformed head, which
    // hyper answers: see rules), are hyper's.
    if !path.starts_with('/')
        || rules::has_fragment(path.as_bytes())
        || rules::has_fragment(method.as_bytes())
    {
        return Request::Unusual;
    }

    let mut host = None;
    let mut host_lines = 0;
    let mut body_len = None;
    let mut close = false;
    let mut idempotency_key = false;
    let mut te_trailers = false;
    let mut upgrade_header = false;
    let mut connection_upgrade = false;
    let mut named = Named::default();
    for line in req.headers.iter() {
        let name = line.name;
        if name.len() == 15 && name.eq_ignore_ascii_case("idempotency-key") {
            idempotency_key = true;
        } else if name.len() == 2 && name.eq_ignore_ascii_case("te") {
            te_trailers |= tokens(line.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        } else if name.eq_ignore_ascii_case("host") {
            host_lines += 1;
            host.get_or_insert(line.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            match content_length(line.value) {
                Some(n) if n <= max_body as u64 && body_len.is_none() => {
                    body_len = Some(n as usize)
                }
                _ => return Request::Unusual,
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            // h2c stays hyper's, as before tunnels came to the fast path.
            if tokens(line.value).any(|t| t.eq_ignore_ascii_case(b"h2c")) {
                return Request::Unusual;
            }
            upgrade_header = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
        {
            return Request::Unusual;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(line.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    // The default in HTTP/1.1.
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    connection_upgrade = true;
                } else if rules::connection_may_drop(token) && !named.add(token) {
                    // More names than the fast path keeps.
                    return Request::Unusual;
                }
            }
        }
    }
    let target = rules::Target::Origin;
    if let Err(refusal) = rules::check_head(method.as_bytes(), target, host_lines, host) {
        return Request::Refused(refusal);
    }
    if rules::is_own_endpoint(path.split_once('?').map_or(path, |(p, _)| p)) {
        return Request::Unusual;
    }
    // HTTP/1.1 requires Host: hyper answers its absence with a 400.
    let Some(host) = host else {
        return Request::Unusual;
    };
    // Both halves, or neither: an `Upgrade` alone is a hop-by-hop header
    // like any other (hyper's path reads it the same way).
    let upgrade = connection_upgrade && upgrade_header;

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut length_written = false;
    for line in req.headers.iter() {
        let name = line.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // The length parsed, once, in the client's spelling of the name.
            if !length_written {
                length_written = true;
                push_length(out, name, body_len.unwrap_or(0) as u64);
            }
            continue;
        }
        let keep = upgrade && name.eq_ignore_ascii_case(b"upgrade");
        if !keep && (request_drops(name) || named.contains(name)) {
            continue;
        }
        push_line(out, name, line.value);
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    let ip_start = out.len();
    push_ip(out, client.to_canonical());
    let ip_end = out.len();
    out.extend_from_slice(b"\r\nx-real-ip: ");
    out.extend_from_within(ip_start..ip_end);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
    push_line(out, b"x-forwarded-host", host);
    out.extend_from_slice(b"\r\n");

    Request::Ready(RequestHead {
        head_len,
        body_len: body_len.unwrap_or(0),
        idempotent: rules::is_idempotent(method.as_bytes(), idempotency_key),
        close,
        te_trailers,
        upgrade,
    })
}

/// What a backend's bytes hold so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    Partial,
    /// Not a response the balancer can pass on (the reason is logged).
    Bad(&'static str),
    Ready(ResponseHead),
}

/// A complete response head, already rewritten for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend keeps the connection open after this response.
    pub reusable: bool,
    /// The client connection must close after this response (the client
    /// asked, or the body ends with the backend's close).
    pub close_client: bool,
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`HEAD`, 1xx, 204, 304).
    Empty,
    Length(u64),
    /// Chunked: passed through unchanged, scanned for its end.
    Chunked,
    /// Delimited by the backend closing the connection.
    UntilClose,
}

/// Follows a response body across reads: which of the bytes the backend
/// sends belong to it, which of those are passed on, and when it is
/// complete. A chunked body's trailer fields are passed on only to a client
/// that said it takes them (`TE: trailers`), as hyper's path does.
#[derive(Debug, Clone)]
pub struct BodyProgress {
    framing: Framing,
    /// Bytes still to come of a `Length` body.
    left: u64,
    chunks: Chunked,
    keep_trailers: bool,
    /// Leaving a trailer section out.
    swallowing: bool,
}

/// What [`BodyProgress::feed`] made of some bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// How many belong to the body (the rest, if any, do not).
    pub used: usize,
    /// How many of those, from the start, to pass on.
    pub pass: usize,
    /// What to send after them: the end of a chunked body whose trailer
    /// fields were left out.
    pub tail: &'static [u8],
}

impl BodyProgress {
    pub fn new(framing: Framing, keep_trailers: bool) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyProgress {
            framing,
            left,
            chunks: Chunked::default(),
            keep_trailers,
            swallowing: false,
        }
    }

    /// Takes the next bytes from the backend.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Fed, Malformed> {
        let all = |n| Fed {
            used: n,
            pass: n,
            tail: b"",
        };
        Ok(match self.framing {
            Framing::Empty => all(0),
            Framing::Length(_) => {
                let take = bytes
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= take as u64;
                all(take)
            }
            Framing::Chunked if self.keep_trailers => all(self.chunks.feed(bytes)?),
            Framing::Chunked => {
                let mut pass = 0;
                if !self.swallowing {
                    pass = self.chunks.feed_to_trailers(bytes)?;
                    self.swallowing = self.chunks.in_trailers();
                }
                let mut used = pass;
                if self.swallowing {
                    used += self.chunks.feed(&bytes[pass..])?;
                }
                let tail: &'static [u8] = if self.swallowing && self.chunks.is_done() {
                    b"\r\n"
                } else {
                    b""
                };
                Fed { used, pass, tail }
            }
            Framing::UntilClose => all(bytes.len()),
        })
    }

    /// Whether the body is complete (a body that runs to close never is:
    /// the backend's close ends it).
    pub fn is_done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunks.is_done(),
            Framing::UntilClose => false,
        }
    }
}

impl ResponseHead {
    /// An interim (1xx) response: pass it on, then read the final one. A
    /// `101` is final: the tunnel it opens follows it.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses the response head at the start of `buf` and writes the client's
/// version of it to `out` (cleared first). `head_request`: the request was
/// `HEAD` (no body, whatever the headers say). `close_client`: the client
/// connection closes after this response, so say so.
pub fn response(buf: &[u8], head_request: bool, close_client: bool, out: &mut Vec<u8>) -> Response {
    parse_response(buf, head_request, close_client, false, out)
}

/// [`response`] for a request that asked to upgrade: a `101 Switching
/// Protocols` is accepted too and keeps its `Upgrade` and `Connection:
/// upgrade`; what follows its head belongs to the tunnel.
pub fn upgrade_response(
    buf: &[u8],
    head_request: bool,
    close_client: bool,
    out: &mut Vec<u8>,
) -> Response {
    parse_response(buf, head_request, close_client, true, out)
}

fn parse_response(
    buf: &[u8],
    head_request: bool,
    close_client: bool,
    upgrade: bool,
    out: &mut Vec<u8>,
) -> Response {
    let mut lines = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut lines);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Response::Partial,
        Err(_) => return Response::Bad("malformed response head"),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Response::Bad("malformed response head");
    };
    if !(100..600).contains(&status) {
        return Response::Bad("status code out of range");
    }
    let switching = status == 101;
    if switching && !upgrade {
        return Response::Bad("101 Switching Protocols without an upgrade request");
    }

    let mut length = None;
    let mut chunked = None;
    let mut conn_close = version == 0;
    let mut named = Named::default();
    for line in resp.headers.iter() {
        let name = line.name;
        if name.eq_ignore_ascii_case("content-length") {
            match content_length(line.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Response::Bad("invalid Content-Length"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides: chunked, or the body runs to close.
            match tokens(line.value).last() {
                Some(t) => chunked = Some(t.eq_ignore_ascii_case(b"chunked")),
                None => return Response::Bad("empty Transfer-Encoding"),
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(line.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    conn_close &= version != 0;
                } else if rules::connection_may_drop(token) && !named.add(token) {
                    return Response::Bad("too many names in Connection");
                }
            }
        }
    }
    let framing = if (100..200).contains(&status) || head_request || status == 204 || status == 304
    {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let until_close = framing == Framing::UntilClose;
    // An HTTP/1.0 backend only keeps a connection open when it says so.
    let reusable = !conn_close && !until_close && version == 1 && !switching;
    let close_client = (close_client || until_close) && !switching;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let _ = write!(out, "{status:03}");
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Chunked passes through as it is; a body that runs to close loses its
    // coding header like on the hyper path; Content-Length never travels
    // beside Transfer-Encoding (RFC 9112 §6.3) nor on a 1xx or 204 (RFC 9110
    // §8.6), and is written from the value parsed, once (a HEAD or 304
    // answer keeps it as information).
    let length =
        length.filter(|_| chunked.is_none() && !(100..200).contains(&status) && status != 204);
    let mut length_written = false;
    let mut has_date = false;
    for line in resp.headers.iter() {
        let name = line.name.as_bytes();
        has_date |= name.eq_ignore_ascii_case(b"date");
        let drop = if name.eq_ignore_ascii_case(b"transfer-encoding") {
            framing != Framing::Chunked && !head_request
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if let Some(n) = length.filter(|_| !length_written) {
                length_written = true;
                push_length(out, name, n);
            }
            continue;
        } else if switching && name.eq_ignore_ascii_case(b"upgrade") {
            false
        } else {
            response_drops(name) || named.contains(name)
        };
        if !drop {
            push_line(out, name, line.value);
        }
    }
    // An interim answer gets neither: its connection decisions and date
    // belong to the final one (RFC 9110 §6.6.1 asks a date of 2xx-4xx).
    let interim = (100..200).contains(&status);
    if !has_date && !interim {
        push_date(out);
    }
    if switching {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if close_client && !interim {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    Response::Ready(ResponseHead {
        head_len,
        status,
        framing,
        reusable,
        close_client,
    })
}

/// A complete response of the balancer's own (an error), ready to send.
pub fn own_response(
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) {
    own_response_with(status, reason, content_type, &[], body, close, out);
}

/// [`own_response`] with `fields` added to its head.
pub fn own_response_with(
    status: u16,
    reason: &str,
    content_type: &str,
    fields: &[(&str, &str)],
    body: &[u8],
    close: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {status:03} {reason}\r\ncontent-type: {content_type}\r\ncache-control: no-store\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in fields {
        push_line(out, name.as_bytes(), value.as_bytes());
    }
    push_date(out);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

thread_local! {
    /// This second's `Date` value (an HTTP-date is always 29 bytes),
    /// formatted once a second per thread, as hyper caches its own.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

/// A `Date` line: a proxy forwarding a response without one adds it (RFC
/// 9110 §6.6.1), and the balancer's own answers carry one, as hyper's do.
fn push_date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut date = cell.borrow_mut();
        if date.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                date.1.copy_from_slice(text.as_bytes());
                date.0 = secs;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date.1);
        out.extend_from_slice(b"\r\n");
    });
}

/// Request headers never passed on: hop-by-hop, and the forwarding headers
/// the balancer sets itself (the fast path never serves a trusted proxy).
fn request_drops(name: &[u8]) -> bool {
    rules::is_hop_by_hop(name) || rules::is_forwarding(name)
}

/// Response headers never passed on (`Transfer-Encoding` is decided apart).
fn response_drops(name: &[u8]) -> bool {
    rules::is_hop_by_hop(name)
}

/// The names a `Connection` header lists (besides close/keep-alive/upgrade).
#[derive(Default)]
struct Named<'a> {
    names: [&'a [u8]; MAX_NAMED],
    len: usize,
}

impl<'a> Named<'a> {
    /// Records `name`; false when the list is full.
    fn add(&mut self, name: &'a [u8]) -> bool {
        if self.len == MAX_NAMED {
            return false;
        }
        self.names[self.len] = name;
        self.len += 1;
        true
    }

    fn contains(&self, name: &[u8]) -> bool {
        self.names[..self.len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A `Content-Length` value: digits only, at most 18 of them.
fn content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Writes an address as text: IPv4 by hand (`core::fmt` costs about a
/// thousand instructions per address, a tenth of the whole request path),
/// IPv6 through `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A `Content-Length` line with the value the balancer parsed.
fn push_length(out: &mut Vec<u8>, name: &[u8], n: u64) {
    push_line(out, name, itoa::Buffer::new().format(n).as_bytes());
}

fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(req: &[u8]) -> (Request, String) {
        let mut out = Vec::new();
        let parsed = request(req, "192.0.2.7".parse().unwrap(), 1024, &mut out);
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_request_keeps_its_lines_loses_hop_by_hop_and_gains_forwarding() {
        let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: api.example\r\nConnection: keep-alive, X-Hop\r\n\
            X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: secret\r\n\
            X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nAccept: */*\r\n\r\nGET /next";
        let (parsed, out) = rewrite(raw);
        let head_len = raw.len() - b"GET /next".len();
        assert_eq!(
            parsed,
            Request::Ready(RequestHead {
                head_len,
                body_len: 0,
                idempotent: true,
                close: false,
                te_trailers: true,
                upgrade: false,
            })
        );
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: api.example\r\nAccept: */*\r\n\
             x-forwarded-for: 192.0.2.7\r\nx-real-ip: 192.0.2.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: api.example\r\n\r\n"
        );
    }

    #[test]
    fn body_length_close_and_idempotency_are_read() {
        let (parsed, out) = rewrite(
            b"POST /p HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        );
        let Request::Ready(head) = parsed else {
            panic!("not ready: {parsed:?}")
        };
        assert_eq!(
            (head.body_len, head.idempotent, head.close),
            (5, false, true)
        );
        assert!(out.contains("content-length: 5\r\n"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("connection:"), "{out}");
    }

    #[test]
    fn what_the_fast_path_leaves_to_hyper() {
        let unusual: [&[u8]; 11] = [
            b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /lb HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /health?x HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1025\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        ];
        for raw in unusual {
            let (parsed, _) = rewrite(raw);
            assert_eq!(parsed, Request::Unusual, "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(
            rewrite(b"GET / HTTP/1.1\r\nHost: h\r\n").0,
            Request::Partial
        );
        assert_eq!(rewrite(b"GE").0, Request::Partial);
    }

    #[test]
    fn an_upgrade_keeps_its_handshake_and_an_upgrade_alone_is_dropped() {
        let (parsed, out) = rewrite(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: k\r\n\r\n",
        );
        let Request::Ready(head) = parsed else {
            panic!("not ready: {parsed:?}")
        };
        assert!(head.upgrade && head.idempotent && !head.close);
        assert_eq!(
            out,
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\
             connection: upgrade\r\nx-forwarded-for: 192.0.2.7\r\nx-real-ip: 192.0.2.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: h\r\n\r\n"
        );
        // Either half alone asks for nothing: the other headers pass as usual.
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nX-End: 1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nX-End: 1\r\n\r\n",
        ] {
            let (parsed, out) = rewrite(raw);
            let Request::Ready(head) = parsed else {
                panic!("not ready: {parsed:?}")
            };
            assert!(!head.upgrade);
            let lower = out.to_ascii_lowercase();
            assert!(!lower.contains("upgrade"), "{out}");
            assert!(lower.contains("x-end: 1"), "{out}");
        }
    }

    #[test]
    fn a_101_answers_an_upgrade_only() {
        let raw =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Accept: a\r\nContent-Length: 0\r\nKeep-Alive: 5\r\n\r\n\x81\x02hi";
        let mut out = Vec::new();
        assert!(matches!(
            response(raw, false, false, &mut out),
            Response::Bad(_)
        ));
        let Response::Ready(head) = upgrade_response(raw, false, true, &mut out) else {
            panic!("101 refused")
        };
        assert_eq!(head.status, 101);
        assert!(!head.is_interim() && !head.reusable && !head.close_client);
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!(&raw[head.head_len..], b"\x81\x02hi");
        let text = String::from_utf8(out.clone()).unwrap();
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.starts_with("http/1.1 101 switching protocols\r\n"),
            "{text}"
        );
        assert!(text.contains("Upgrade: websocket\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Accept: a\r\n"), "{text}");
        assert!(lower.contains("connection: upgrade\r\n"), "{text}");
        for gone in ["content-length", "keep-alive", "connection: close"] {
            assert!(!lower.contains(gone), "{gone} in {text}");
        }
        // Any other answer to an upgrade is an ordinary one.
        let Response::Ready(head) = upgrade_response(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno",
            false,
            false,
            &mut out,
        ) else {
            panic!("403 refused")
        };
        assert_eq!((head.status, head.framing), (403, Framing::Length(2)));
    }

    /// The rewritten head, without the `Date` line the balancer adds to a
    /// response that has none (checked here: exactly one, well formed).
    fn answer(resp: &[u8], head_request: bool, close: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        match response(resp, head_request, close, &mut out) {
            Response::Ready(head) => {
                let text = String::from_utf8(out).unwrap();
                let dates: Vec<&str> = text
                    .lines()
                    .filter(|l| l.to_ascii_lowercase().starts_with("date: "))
                    .collect();
                if head.is_interim() {
                    assert!(dates.is_empty(), "no Date on an interim answer: {text}");
                    return (head, text);
                }
                assert_eq!(dates.len(), 1, "{text}");
                assert!(httpdate::parse_http_date(&dates[0][6..]).is_ok(), "{text}");
                let without = text.replace(&format!("{}\r\n", dates[0]), "");
                (head, without)
            }
            other => panic!("{other:?} for {}", String::from_utf8_lossy(resp)),
        }
    }

    #[test]
    fn a_backends_own_date_is_kept_and_not_doubled() {
        let mut out = Vec::new();
        let raw =
            b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            response(raw, false, false, &mut out),
            Response::Ready(_)
        ));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.to_ascii_lowercase().matches("date:").count(),
            1,
            "{text}"
        );
        assert!(text.contains("Sun, 06 Nov 1994"), "{text}");
    }

    #[test]
    fn response_framing_and_reuse() {
        let (h, out) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Id: 7\r\n\r\nabc",
            false,
            false,
        );
        assert_eq!(
            (h.framing, h.reusable, h.close_client, h.status),
            (Framing::Length(3), true, false, 200)
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Id: 7\r\n\r\n"
        );

        let (h, out) = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");

        let (h, out) = answer(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", false, false);
        assert_eq!(
            (h.framing, h.reusable, h.close_client),
            (Framing::UntilClose, false, true)
        );
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");

        let (h, _) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            true,
            false,
        );
        assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let raw = format!("HTTP/1.1 {status}\r\n\r\n");
            assert_eq!(
                answer(raw.as_bytes(), false, false).0.framing,
                Framing::Empty
            );
        }
        let (h, _) = answer(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert_eq!((h.reusable, h.close_client), (false, false));
        let (h, _) = answer(
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert!(!h.reusable);
        let (h, out) = answer(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            false,
            true,
        );
        assert!(h.close_client && out.contains("connection: close"), "{out}");
    }

    #[test]
    fn addresses_are_written_like_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(String::from_utf8(out).unwrap(), ip);
        }
    }

    #[test]
    fn bad_responses_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 010 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\nContent-Length: 3\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let mut out = Vec::new();
            assert!(
                matches!(response(raw, false, false, &mut out), Response::Bad(_)),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
