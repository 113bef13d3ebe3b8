//! The property request smuggling breaks, checked over the HTTP/1.1 fast
//! path's own parse-and-rewrite code (`hashgate::proxy::h1::head`), with an
//! independent strict parser as the judge:
//!
//! - **Requests.** For a client byte stream, take every request the fast
//!   path forwards (its rewritten head plus the body bytes it counted, as
//!   `h1::exchange` assembles them). Parsed strictly, the upstream bytes
//!   must be exactly those requests, each with the body the fast path
//!   counted, one client identity each; and a strict parse of the client's
//!   own bytes must see the same requests (no desync between the balancer
//!   and a strict peer).
//! - **Responses.** For a backend byte stream, take what the fast path relays
//!   (interim heads, the final head and the body bytes `BodyProgress` lets
//!   through). Parsed strictly, the client must see exactly one final
//!   response with the body a strict parse of the backend's bytes sees, and
//!   either a self-delimiting message on a connection that stays open, or a
//!   `Connection: close`.
//!
//! Inputs: a corpus of the classic smuggling and desync shapes (CL.TE,
//! TE.CL, TE.TE obfuscations, duplicate and malformed lengths, framing and
//! forwarding headers named in `Connection`, pipelining), each also under
//! random byte-level mutations (proptest). The socket-level counterparts
//! are in `tests/smuggling.rs`.

use std::net::IpAddr;

use hashgate::proxy::h1::MAX_BODY;
use hashgate::proxy::h1::head::{self, BodyProgress, Framing};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// An independent strict HTTP/1.1 parser (RFC 9112): httparse for the head,
// framing by §6.3 written here, chunked bodies decoded here.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    /// `METHOD target` of a request, the status code of a response.
    start: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Trailer fields of a chunked body.
    trailers: usize,
}

impl Msg {
    fn all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    fn tokens(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }
}

#[derive(Debug)]
enum Strict {
    /// A message and how many bytes it took.
    Complete(Msg, usize),
    Incomplete,
    Invalid(#[allow(dead_code)] String),
}

/// The `Content-Length` of a message: every line one value of digits, all
/// equal (RFC 9110 §8.6); `None` without one.
fn strict_length(m: &Msg) -> Result<Option<u64>, String> {
    let mut length = None;
    for v in m.all("content-length") {
        let v = v.trim_ascii();
        if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "bad Content-Length {:?}",
                String::from_utf8_lossy(v)
            ));
        }
        let n: u64 = std::str::from_utf8(v).unwrap().parse().unwrap();
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length".into());
        }
        length = Some(n);
    }
    Ok(length)
}

/// A chunked body at the start of `buf`: (decoded body, bytes used).
fn strict_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize, usize)>, String> {
    let mut body = Vec::new();
    let mut trailers = 0;
    let mut i = 0;
    // One line: up to LF, a CR only right before it; None if incomplete.
    let line = |i: usize| -> Result<Option<(&[u8], usize)>, String> {
        let Some(lf) = buf[i..].iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let mut l = &buf[i..i + lf];
        if let Some(stripped) = l.strip_suffix(b"\r") {
            l = stripped;
        }
        if l.contains(&b'\r') || l.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err("control byte in a chunk line".into());
        }
        Ok(Some((l, i + lf + 1)))
    };
    loop {
        let Some((size_line, next)) = line(i)? else {
            return Ok(None);
        };
        let digits = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits == 0 || digits > 16 {
            return Err("bad chunk size".into());
        }
        let rest = &size_line[digits..];
        if !(rest.is_empty() || rest.trim_ascii_start().starts_with(b";")) {
            return Err("junk after the chunk size".into());
        }
        let size = u64::from_str_radix(std::str::from_utf8(&size_line[..digits]).unwrap(), 16)
            .map_err(|_| "chunk size overflows".to_string())?;
        i = next;
        if size == 0 {
            // Trailer fields up to an empty line.
            loop {
                let Some((l, next)) = line(i)? else {
                    return Ok(None);
                };
                i = next;
                if l.is_empty() {
                    return Ok(Some((body, i, trailers)));
                }
                trailers += 1;
                if !l.contains(&b':') || l[0] == b' ' || l[0] == b'\t' {
                    return Err("bad trailer line".into());
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| "chunk too large".to_string())?;
        if buf.len() - i < size {
            return Ok(None);
        }
        body.extend_from_slice(&buf[i..i + size]);
        i += size;
        match &buf[i..] {
            [b'\r', b'\n', ..] => i += 2,
            [b'\n', ..] => i += 1,
            [] | [b'\r'] => return Ok(None),
            _ => return Err("chunk data not followed by CRLF".into()),
        }
    }
}

fn fields(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

/// One request at the start of `buf`. Strict: both `Transfer-Encoding` and
/// `Content-Length` is refused (RFC 9112 §6.1), as is a transfer coding
/// that does not end in chunked (§6.3 item 4).
fn strict_request(buf: &[u8]) -> Strict {
    let mut lines = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut lines);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Strict::Incomplete,
        Err(e) => return Strict::Invalid(format!("head: {e}")),
    };
    let m = Msg {
        start: format!("{} {}", req.method.unwrap_or(""), req.path.unwrap_or("")),
        headers: fields(req.headers),
        body: Vec::new(),
        trailers: 0,
    };
    let te = m.tokens("transfer-encoding");
    let length = match strict_length(&m) {
        Ok(l) => l,
        Err(e) => return Strict::Invalid(e),
    };
    let rest = &buf[head_len..];
    if !te.is_empty() {
        if length.is_some() {
            return Strict::Invalid("both Transfer-Encoding and Content-Length".into());
        }
        if te.last().map(String::as_str) != Some("chunked") {
            return Strict::Invalid("request coding not ending in chunked".into());
        }
        return with_chunked_body(m, head_len, rest);
    }
    with_sized_body(m, head_len, rest, length.unwrap_or(0))
}

fn with_chunked_body(mut m: Msg, head_len: usize, rest: &[u8]) -> Strict {
    match strict_chunked(rest) {
        Ok(Some((body, used, trailers))) => {
            m.body = body;
            m.trailers = trailers;
            Strict::Complete(m, head_len + used)
        }
        Ok(None) => Strict::Incomplete,
        Err(e) => Strict::Invalid(e),
    }
}

fn with_sized_body(mut m: Msg, head_len: usize, rest: &[u8], n: u64) -> Strict {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if rest.len() < n {
        return Strict::Incomplete;
    }
    m.body = rest[..n].to_vec();
    Strict::Complete(m, head_len + n)
}

/// One response at the start of `buf` to a request that was `HEAD` when
/// `to_head`; `eof`: the stream ends after `buf` (a body without length
/// runs to it). Transfer-Encoding overrides Content-Length (§6.3 item 3).
fn strict_response(buf: &[u8], to_head: bool, eof: bool) -> Strict {
    let mut lines = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut lines);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Strict::Incomplete,
        Err(e) => return Strict::Invalid(format!("head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let m = Msg {
        start: status.to_string(),
        headers: fields(resp.headers),
        body: Vec::new(),
        trailers: 0,
    };
    let rest = &buf[head_len..];
    if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Strict::Complete(m, head_len);
    }
    let te = m.tokens("transfer-encoding");
    if !te.is_empty() {
        if te.last().map(String::as_str) == Some("chunked") {
            return with_chunked_body(m, head_len, rest);
        }
        return to_close(m, head_len, rest, eof);
    }
    match strict_length(&m) {
        Err(e) => Strict::Invalid(e),
        Ok(None) => to_close(m, head_len, rest, eof),
        Ok(Some(n)) => with_sized_body(m, head_len, rest, n),
    }
}

fn to_close(mut m: Msg, head_len: usize, rest: &[u8], eof: bool) -> Strict {
    if !eof {
        return Strict::Incomplete;
    }
    m.body = rest.to_vec();
    Strict::Complete(m, head_len + rest.len())
}

// ---------------------------------------------------------------------------
// The fast path, as `h1::exchange` and `h1::relay` drive it.

/// A request the fast path forwarded: its upstream bytes and what it
/// counted of the client's.
#[derive(Debug)]
struct Forwarded {
    upstream: Vec<u8>,
    /// The client's bytes of this request (head and body).
    client: std::ops::Range<usize>,
    body_len: usize,
}

/// Every request the fast path forwards from `input`, in order, until it
/// hands the connection to hyper, needs more bytes, or the client asked to
/// close.
fn fast_path_requests(input: &[u8], client: IpAddr) -> Vec<Forwarded> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut head_buf = Vec::new();
    while at < input.len() {
        let rest = &input[at..];
        let head::Request::Ready(h) = head::request(rest, client, MAX_BODY, &mut head_buf) else {
            break;
        };
        let end = h.head_len + h.body_len;
        if rest.len() < end {
            break;
        }
        let mut upstream = head_buf.clone();
        upstream.extend_from_slice(&rest[h.head_len..end]);
        out.push(Forwarded {
            upstream,
            client: at..at + end,
            body_len: h.body_len,
        });
        at += end;
        if h.close {
            break;
        }
    }
    out
}

/// What the fast path relays of one backend response stream.
#[derive(Debug)]
enum Relayed {
    /// Not relayed: 502 (a bad head) or still waiting for more.
    Nothing,
    /// Relayed, then the body broke off: the client connection closes.
    Aborted,
    Done {
        client: Vec<u8>,
        framing: Framing,
        close_client: bool,
    },
}

/// `trailers`: the client sent `TE: trailers`; `split`: where the body is
/// cut into two reads.
fn fast_path_response(
    backend: &[u8],
    to_head: bool,
    close: bool,
    trailers: bool,
    split: usize,
) -> Relayed {
    let mut client = Vec::new();
    let mut rest = backend;
    let mut out = Vec::new();
    loop {
        match head::response(rest, to_head, close, &mut out) {
            head::Response::Ready(h) if h.is_interim() => {
                client.extend_from_slice(&out);
                rest = &rest[h.head_len..];
            }
            head::Response::Ready(h) => {
                client.extend_from_slice(&out);
                let body = &rest[h.head_len..];
                let mut progress = BodyProgress::new(h.framing, trailers);
                // Two reads, split where the input says: the result must not
                // depend on how the bytes arrived.
                let split = split.min(body.len());
                let mut at = 0;
                for piece in [&body[..split], &body[split..]] {
                    if progress.is_done() {
                        break;
                    }
                    let Ok(fed) = progress.feed(piece) else {
                        return Relayed::Aborted;
                    };
                    client.extend_from_slice(&piece[..fed.pass]);
                    client.extend_from_slice(fed.tail);
                    at += fed.used;
                    if fed.used < piece.len() {
                        break;
                    }
                }
                let _ = at;
                if !progress.is_done() && h.framing != Framing::UntilClose {
                    // The backend closed before the end: the relay breaks off.
                    return Relayed::Aborted;
                }
                return Relayed::Done {
                    client,
                    framing: h.framing,
                    close_client: h.close_client,
                };
            }
            head::Response::Partial | head::Response::Bad(_) => return Relayed::Nothing,
        }
    }
}

// ---------------------------------------------------------------------------
// The properties.

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_requests(input: &[u8], client: IpAddr) -> Result<(), String> {
    let forwarded = fast_path_requests(input, client);
    let ip = client.to_canonical().to_string();
    for (i, f) in forwarded.iter().enumerate() {
        // Upstream: exactly one request, exactly the body counted.
        let m = match strict_request(&f.upstream) {
            Strict::Complete(m, used) if used == f.upstream.len() => m,
            Strict::Complete(_, used) => {
                return Err(format!(
                    "request {i}: upstream holds more than one request ({used} of {} bytes): {:?}",
                    f.upstream.len(),
                    text(&f.upstream)
                ));
            }
            other => {
                return Err(format!(
                    "request {i}: upstream {other:?}: {:?}",
                    text(&f.upstream)
                ));
            }
        };
        if m.body.len() != f.body_len {
            return Err(format!(
                "request {i}: body {} upstream, {} counted",
                m.body.len(),
                f.body_len
            ));
        }
        for (name, want) in [
            ("x-forwarded-for", Some(&ip)),
            ("x-real-ip", Some(&ip)),
            ("forwarded", None),
        ] {
            let got: Vec<String> = m.all(name).iter().map(|v| text(v)).collect();
            let want: Vec<String> = want.into_iter().cloned().collect();
            if got != want {
                return Err(format!(
                    "request {i}: {name} {got:?} upstream, want {want:?}"
                ));
            }
        }
        if m.all("host").len() != 1 || !m.all("transfer-encoding").is_empty() {
            return Err(format!(
                "request {i}: Host or framing headers wrong: {:?}",
                m.headers
            ));
        }
        // The client's own bytes, parsed strictly, hold the same request.
        let theirs = match strict_request(&input[f.client.clone()]) {
            Strict::Complete(theirs, used) if used == f.client.len() => theirs,
            other => {
                return Err(format!(
                    "request {i}: forwarded, but a strict parser reads the client's bytes as {other:?}: {:?}",
                    text(&input[f.client.clone()])
                ));
            }
        };
        if (theirs.start.as_str(), &theirs.body) != (m.start.as_str(), &m.body) {
            return Err(format!(
                "request {i}: client sent {theirs:?}, upstream got {m:?}"
            ));
        }
    }
    Ok(())
}

fn is_interim(m: &Msg) -> bool {
    m.start
        .parse::<u16>()
        .is_ok_and(|s| (100..200).contains(&s) && s != 101)
}

fn check_response(
    backend: &[u8],
    to_head: bool,
    close: bool,
    trailers: bool,
    split: usize,
) -> Result<(), String> {
    let relayed = fast_path_response(backend, to_head, close, trailers, split);
    let (client, framing, close_client) = match relayed {
        Relayed::Nothing | Relayed::Aborted => return Ok(()),
        Relayed::Done {
            client,
            framing,
            close_client,
        } => (client, framing, close_client),
    };
    // What a strict client reads: interim answers, then one final answer
    // that uses every byte relayed.
    let mut at = 0;
    let mine = loop {
        match strict_response(&client[at..], to_head, close_client) {
            Strict::Complete(m, used) if is_interim(&m) => at += used,
            Strict::Complete(m, used) => {
                at += used;
                break m;
            }
            other => {
                return Err(format!(
                    "the client reads {other:?} from {:?}",
                    text(&client)
                ));
            }
        }
    };
    if at != client.len() {
        return Err(format!(
            "bytes after the final response: {:?}",
            text(&client[at..])
        ));
    }
    let delimited = to_head
        || ["204", "304"].contains(&mine.start.as_str())
        || !mine.all("content-length").is_empty()
        || mine.tokens("transfer-encoding").last().map(String::as_str) == Some("chunked");
    let says_close = mine.tokens("connection").iter().any(|t| t == "close");
    if !(delimited || (close_client && says_close)) {
        return Err(format!(
            "a body without length on a connection kept open: {:?}",
            text(&client)
        ));
    }
    if close_client && !says_close {
        return Err(format!(
            "the connection closes unannounced: {:?}",
            text(&client)
        ));
    }
    if mine.all("content-length").len() > 1
        || (!mine.all("content-length").is_empty() && !mine.all("transfer-encoding").is_empty())
    {
        return Err(format!("ambiguous framing relayed: {:?}", mine.headers));
    }
    for name in ["keep-alive", "proxy-authenticate", "upgrade", "te"] {
        if !mine.all(name).is_empty() {
            return Err(format!("hop-by-hop {name} relayed: {:?}", mine.headers));
        }
    }
    if !trailers && mine.trailers > 0 {
        return Err(format!(
            "trailer fields relayed to a client that did not ask: {:?}",
            text(&client)
        ));
    }
    // A strict parse of the backend's own bytes sees the same final body.
    let eof = framing == Framing::UntilClose;
    let mut at = 0;
    let theirs = loop {
        match strict_response(&backend[at..], to_head, eof) {
            Strict::Complete(m, used) if is_interim(&m) => at += used,
            Strict::Complete(m, _) => break Some(m),
            _ => break None,
        }
    };
    if let Some(theirs) = theirs {
        if theirs.body != mine.body || theirs.start != mine.start {
            return Err(format!(
                "backend sent {} with {:?}, client got {} with {:?}",
                theirs.start,
                text(&theirs.body),
                mine.start,
                text(&mine.body)
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The corpus.

const REQUESTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    // The report's reproducer.
    b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\nContent-Length: 91\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Content-Length, X-Real-IP\r\nContent-Length: 5\r\nX-Real-IP: 6.6.6.6\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: close, content-length\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: x-forwarded-for, forwarded\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\r\n",
    // CL.TE and TE.CL.
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    // TE.TE obfuscations.
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n5c\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n5c\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n5c\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding:\tchunked\r\n\r\n5c\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n Transfer-Encoding: chunked\r\n\r\n5c\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nX: X\nTransfer-Encoding: chunked\r\n\r\n5c\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding\n: chunked\r\n\r\n5c\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: identity, chunked\r\n\r\n5c\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked, identity\r\n\r\n5c\r\n",
    // Duplicate and malformed lengths.
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 005\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /pipelined HTTP/1.1\r\nHost: h\r\n\r\n",
    // Identity headers.
    b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-Host: evil\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nHost: evil\r\n\r\n",
    // Other shapes the fast path must leave alone or read right.
    b"GET / HTTP/1.1\nHost: h\n\n",
    b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
];

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Content-Length, X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nhello until close",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nglued!",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 ; a=\"b\"\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n",
];

/// Pieces a mutation inserts: the parts smuggling is made of.
const SNIPPETS: &[&[u8]] = &[
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: content-length\r\n",
    b"Connection: transfer-encoding, host\r\n",
    b", content-length",
    b"X-Forwarded-For: 6.6.6.6\r\n",
    b"Forwarded: for=6.6.6.6\r\n",
    b"Host: evil\r\n",
    b"\r\n",
    b"\n",
    b"0\r\n\r\n",
    b" chunked",
    b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
];

const BYTES: &[u8] = b"\r\n \t:,;0159afAF-+\0\x0bXx";

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..BYTES.len()).prop_map(|(at, b)| Mutation::Replace(at, BYTES[b])),
        (any::<usize>(), 0..SNIPPETS.len()).prop_map(|(at, s)| Mutation::Insert(at, s)),
        (any::<usize>(), 1usize..8).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 1usize..40).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
    ]
}

fn mutate(base: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut v = base.to_vec();
    for m in mutations {
        let len = v.len();
        match *m {
            Mutation::Replace(at, b) if len > 0 => v[at % len] = b,
            Mutation::Insert(at, s) => {
                let at = at % (len + 1);
                v.splice(at..at, SNIPPETS[s].iter().copied());
            }
            Mutation::Delete(at, n) if len > 0 => {
                let at = at % len;
                v.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate(at, n) if len > 0 => {
                let at = at % len;
                let piece = v[at..(at + n).min(len)].to_vec();
                v.splice(at..at, piece);
            }
            _ => {}
        }
    }
    v
}

fn clients() -> [IpAddr; 3] {
    [
        "192.0.2.7".parse().unwrap(),
        "2001:db8::7".parse().unwrap(),
        "::ffff:198.51.100.9".parse().unwrap(),
    ]
}

#[test]
fn the_corpus_requests_hold_the_property() {
    for (i, a) in REQUESTS.iter().enumerate() {
        for client in clients() {
            check_requests(a, client).unwrap_or_else(|e| panic!("corpus {i} {:?}: {e}", text(a)));
        }
        // Pipelined behind every other entry too.
        for b in REQUESTS {
            let both = [*a, *b].concat();
            check_requests(&both, clients()[0])
                .unwrap_or_else(|e| panic!("corpus {i} + {:?}: {e}", text(b)));
        }
    }
}

#[test]
fn the_reproducer_is_forwarded_as_one_request_with_its_body() {
    let forwarded = fast_path_requests(REQUESTS[2], clients()[0]);
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].body_len, 91);
    let up = text(&forwarded[0].upstream);
    assert!(up.contains("Content-Length: 91\r\n"), "{up}");
}

#[test]
fn the_corpus_responses_hold_the_property() {
    for (i, r) in RESPONSES.iter().enumerate() {
        for (to_head, close) in [(false, false), (false, true), (true, false)] {
            for (trailers, split) in [
                (true, usize::MAX),
                (false, usize::MAX),
                (false, 40),
                (true, 45),
            ] {
                check_response(r, to_head, close, trailers, split).unwrap_or_else(|e| {
                    panic!(
                        "corpus {i} {:?} head={to_head} close={close} trailers={trailers} split={split}: {e}",
                        text(r)
                    )
                });
            }
        }
    }
}

proptest! {
    // PROPTEST_CASES=1000000 for a longer search.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4096)
    ))]

    #[test]
    fn mutated_requests_hold_the_property(
        first in 0..REQUESTS.len(),
        second in proptest::option::of(0..REQUESTS.len()),
        mutations in proptest::collection::vec(mutation(), 0..5),
        client in 0usize..3,
    ) {
        let mut input = REQUESTS[first].to_vec();
        if let Some(s) = second {
            input.extend_from_slice(REQUESTS[s]);
        }
        let input = mutate(&input, &mutations);
        if let Err(e) = check_requests(&input, clients()[client]) {
            return Err(TestCaseError::fail(format!("{e}\ninput: {:?}", text(&input))));
        }
    }

    #[test]
    fn mutated_responses_hold_the_property(
        which in 0..RESPONSES.len(),
        mutations in proptest::collection::vec(mutation(), 0..5),
        to_head in any::<bool>(),
        close in any::<bool>(),
        trailers in any::<bool>(),
        split in 0usize..200,
    ) {
        let backend = mutate(RESPONSES[which], &mutations);
        if let Err(e) = check_response(&backend, to_head, close, trailers, split) {
            return Err(TestCaseError::fail(format!("{e}\nbackend: {:?}", text(&backend))));
        }
    }
}
