//! The request-head deadline on connections hyper serves: from the first
//! byte of a request head to its end, at most `CLIENT_HEADER_TIMEOUT_SECS`;
//! past it the client gets the balancer's 408 and the connection closes,
//! as on the fast path and in HAProxy (`timeout http-request`).
//!
//! hyper cannot be told this: its `header_read_timeout` starts when it
//! begins waiting for a head, so it counts idle keep-alive time and head
//! together, and when it runs out hyper closes without a word. So this
//! wrapper watches the bytes hyper reads, follows the HTTP/1.1 framing just
//! far enough to know where each head starts and ends (a head's end, then
//! its `Content-Length` or chunked body), and runs its own clock while a
//! head is incomplete. A connection that turns into something else (h2c,
//! an upgrade, `CONNECT`, a head it cannot read) is left alone from then
//! on; hyper answers a bad head itself.
//!
//! Since it sees every byte before hyper does, it also holds two of the
//! strict-head rules ([`crate::proxy::rules`]) that hyper's parser lets
//! through:
//! - a `#` in a request line (hyper's URI parser drops a fragment without
//!   a word) becomes a DEL byte, which hyper's parser refuses: hyper
//!   answers the head as malformed (400, close), as the fast path has it
//!   do;
//! - a chunked request body that [`crate::chunked`] refuses (a chunk size
//!   over its digit bound, a bare CR, control bytes) ends at the refused
//!   byte: hyper gets the bytes before it, then a read error, so the body
//!   fails and the client gets the balancer's 400 and a close. hyper alone
//!   would accept a 16-digit size and wait for exabytes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::chunked::Chunked;

/// Where the byte stream is.
enum Phase {
    /// Between requests.
    Idle,
    /// Inside a head: the bytes so far.
    Head(Vec<u8>),
    /// Inside a body of this many bytes more.
    Length(u64),
    Chunked(Chunked),
    /// No longer HTTP/1.1 requests we can follow.
    Off,
    /// A request body was refused: every further read fails.
    Refused,
}

/// A stream whose request heads must each arrive within a deadline.
pub struct HeadClock<T> {
    inner: T,
    limit: Duration,
    /// The largest head worth following (hyper refuses larger ones).
    max_head: usize,
    phase: Phase,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Something was written since the current head began (a pipelined
    /// request: a 408 now could land inside that answer).
    wrote: bool,
    /// Makes the answer to send when the deadline passes.
    answer: fn() -> Vec<u8>,
}

impl<T> HeadClock<T> {
    pub fn new(inner: T, limit: Duration, max_head: usize, answer: fn() -> Vec<u8>) -> Self {
        HeadClock {
            inner,
            limit,
            max_head,
            phase: Phase::Idle,
            deadline: None,
            wrote: false,
            answer,
        }
    }

    /// Follows the framing over bytes hyper just read (and is about to
    /// see), turning a request line's `#` into a byte hyper refuses.
    /// `Some(n)`: a request body was refused at byte `n`; hyper must see
    /// only the bytes before it.
    fn observe(&mut self, bytes: &mut [u8]) -> Option<usize> {
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.phase {
                Phase::Off | Phase::Refused => return None,
                Phase::Idle => {
                    self.phase = Phase::Head(Vec::new());
                    self.wrote = false;
                    self.deadline = Some(Box::pin(tokio::time::sleep(self.limit)));
                }
                Phase::Head(head) => {
                    let before = head.len();
                    head.extend_from_slice(&bytes[at..]);
                    refuse_fragments(head, before, &mut bytes[at..]);
                    let Some(end) = head_end(head) else {
                        if head.len() > self.max_head {
                            self.phase = Phase::Off;
                        }
                        return None;
                    };
                    let used = end - before;
                    self.phase = next_phase(&head[..end]);
                    self.deadline = None;
                    at += used;
                }
                Phase::Length(left) => {
                    let take = (bytes.len() - at).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    at += take;
                    if *left == 0 {
                        self.phase = Phase::Idle;
                    }
                }
                Phase::Chunked(chunks) => match chunks.feed_locating(&bytes[at..]) {
                    Ok(used) => {
                        at += used;
                        if chunks.is_done() {
                            self.phase = Phase::Idle;
                        }
                    }
                    Err(refused) => {
                        self.phase = Phase::Refused;
                        return Some(at + refused);
                    }
                },
            }
        }
        None
    }
}

/// The read error hyper gets once a request body was refused.
fn refused_body() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "malformed chunked request body",
    )
}

/// Turns every `#` of the request line in `head` (its bytes from `before`
/// on are `new`, a copy about to reach hyper) into a DEL, which hyper's
/// parser refuses in a request line: a fragment is never sent in a request
/// (see [`crate::proxy::rules::has_fragment`]).
fn refuse_fragments(head: &mut [u8], before: usize, new: &mut [u8]) {
    let Some(start) = head.iter().position(|&b| b != b'\r' && b != b'\n') else {
        return;
    };
    let line_end = head[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(head.len(), |n| start + n);
    let from = start.max(before);
    if from >= line_end || !crate::proxy::rules::has_fragment(&head[from..line_end]) {
        return;
    }
    for i in from..line_end {
        if head[i] == b'#' {
            head[i] = 0x7f;
            new[i - before] = 0x7f;
        }
    }
}

/// Where a head ends (past its blank line), if it does.
fn head_end(buf: &[u8]) -> Option<usize> {
    // Blank lines before a request line are ignored (RFC 9112 §2.2).
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let body = &buf[start..];
    body.windows(2)
        .enumerate()
        .find_map(|(i, w)| match w {
            [b'\n', b'\n'] => Some(i + 2),
            [b'\n', b'\r'] if body.get(i + 2) == Some(&b'\n') => Some(i + 3),
            _ => None,
        })
        .map(|n| start + n)
}

/// What follows a complete head.
fn next_phase(head: &[u8]) -> Phase {
    let mut lines = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut lines);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Phase::Off;
    }
    if req.method == Some("CONNECT") || req.method == Some("PRI") {
        return Phase::Off;
    }
    let mut length = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            return Phase::Off;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Phase::Chunked(Chunked::default());
        }
        if name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(n) => length = Some(n),
                None => return Phase::Off,
            }
        }
    }
    match length {
        Some(n) if n > 0 => Phase::Length(n),
        _ => Phase::Idle,
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadClock<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Phase::Refused = this.phase {
            return Poll::Ready(Err(refused_body()));
        }
        let filled = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > filled {
                    if let Some(cut) = this.observe(&mut buf.filled_mut()[filled..]) {
                        buf.set_filled(filled + cut);
                        if cut == 0 {
                            return Poll::Ready(Err(refused_body()));
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(deadline) = &mut this.deadline else {
                    return Poll::Pending;
                };
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.deadline = None;
                this.phase = Phase::Off;
                if !this.wrote {
                    // Best effort: the client is slow, not necessarily
                    // deaf; one try, no waiting.
                    let answer = (this.answer)();
                    let _ = Pin::new(&mut this.inner).poll_write(cx, &answer);
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                }
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request head not received in time",
                )))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadClock<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.wrote = true;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.wrote = true;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> HeadClock<tokio::io::DuplexStream> {
        let (a, _b) = tokio::io::duplex(64);
        HeadClock::new(a, Duration::from_secs(10), 64 * 1024, Vec::new)
    }

    fn phase(c: &HeadClock<tokio::io::DuplexStream>) -> &'static str {
        match c.phase {
            Phase::Idle => "idle",
            Phase::Head(_) => "head",
            Phase::Length(_) => "length",
            Phase::Chunked(_) => "chunked",
            Phase::Off => "off",
            Phase::Refused => "refused",
        }
    }

    #[tokio::test]
    async fn heads_bodies_and_pipelined_requests_are_followed() {
        let mut c = clock();
        c.observe(&mut b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel".to_vec());
        assert_eq!(phase(&c), "length");
        c.observe(&mut b"loGET / HTTP/1.1\r\n".to_vec());
        assert_eq!(phase(&c), "head", "the next head began");
        assert!(c.deadline.is_some());
        c.observe(&mut b"Host: h\r\n\r\n".to_vec());
        assert_eq!(phase(&c), "idle");
        assert!(c.deadline.is_none());
        c.observe(
            &mut b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                .to_vec(),
        );
        assert_eq!(phase(&c), "chunked");
        c.observe(&mut b"0\r\n\r\n".to_vec());
        assert_eq!(phase(&c), "idle");
        c.observe(
            &mut b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec(),
        );
        assert_eq!(phase(&c), "off");
    }

    #[tokio::test]
    async fn a_fragment_in_a_request_line_becomes_a_byte_hyper_refuses() {
        let mut c = clock();
        let mut first = b"\r\nGET /a#".to_vec();
        assert_eq!(c.observe(&mut first), None);
        assert_eq!(first, b"\r\nGET /a\x7f");
        let mut rest = b"b?c#d HTTP/1.1\r\nX-Tag: #1\r\n\r\n".to_vec();
        assert_eq!(c.observe(&mut rest), None);
        assert_eq!(
            rest, b"b?c\x7fd HTTP/1.1\r\nX-Tag: #1\r\n\r\n",
            "only the request line"
        );
        assert_eq!(phase(&c), "off", "hyper refuses that head");
    }

    #[tokio::test]
    async fn a_refused_chunk_size_ends_the_bytes_hyper_sees() {
        let mut c = clock();
        let mut read =
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nffffffffffffffff\r\n"
                .to_vec();
        let body = read.len() - b"5\r\nhello\r\nffffffffffffffff\r\n".len();
        assert_eq!(c.observe(&mut read), Some(body + 10 + 13));
        assert_eq!(phase(&c), "refused");
    }

    #[tokio::test]
    async fn bare_lf_heads_and_leading_blank_lines_end_where_hyper_ends_them() {
        let mut c = clock();
        c.observe(&mut b"\r\nGET / HTTP/1.1\nHost: h\n\n".to_vec());
        assert_eq!(phase(&c), "idle");
    }
}
