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
//! head is incomplete. It only observes: hyper still parses everything. A
//! connection that turns into something else (h2c, an upgrade, `CONNECT`,
//! a head it cannot read) is left alone from then on; hyper answers a bad
//! head itself.

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

    /// Follows the framing over bytes hyper just read.
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Off => return,
                Phase::Idle => {
                    self.phase = Phase::Head(Vec::new());
                    self.wrote = false;
                    self.deadline = Some(Box::pin(tokio::time::sleep(self.limit)));
                }
                Phase::Head(head) => {
                    let before = head.len();
                    head.extend_from_slice(bytes);
                    let Some(end) = head_end(head) else {
                        if head.len() > self.max_head {
                            self.phase = Phase::Off;
                        }
                        return;
                    };
                    let used = end - before;
                    self.phase = next_phase(&head[..end]);
                    self.deadline = None;
                    bytes = &bytes[used..];
                }
                Phase::Length(left) => {
                    let take = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.phase = Phase::Idle;
                    }
                }
                Phase::Chunked(chunks) => match chunks.feed(bytes) {
                    Ok(used) => {
                        bytes = &bytes[used..];
                        if chunks.is_done() {
                            self.phase = Phase::Idle;
                        }
                    }
                    Err(_) => self.phase = Phase::Off,
                },
            }
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
        let filled = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.observe(&buf.filled()[filled..]);
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
        }
    }

    #[tokio::test]
    async fn heads_bodies_and_pipelined_requests_are_followed() {
        let mut c = clock();
        c.observe(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel");
        assert_eq!(phase(&c), "length");
        c.observe(b"loGET / HTTP/1.1\r\n");
        assert_eq!(phase(&c), "head", "the next head began");
        assert!(c.deadline.is_some());
        c.observe(b"Host: h\r\n\r\n");
        assert_eq!(phase(&c), "idle");
        assert!(c.deadline.is_none());
        c.observe(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        );
        assert_eq!(phase(&c), "chunked");
        c.observe(b"0\r\n\r\n");
        assert_eq!(phase(&c), "idle");
        c.observe(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        );
        assert_eq!(phase(&c), "off");
    }

    #[tokio::test]
    async fn bare_lf_heads_and_leading_blank_lines_end_where_hyper_ends_them() {
        let mut c = clock();
        c.observe(b"\r\nGET / HTTP/1.1\nHost: h\n\n");
        assert_eq!(phase(&c), "idle");
    }
}
