//! Keep-alive HTTP/1.1 connections to one worker, and the request body
//! type sent over them.
//!
//! A small pool of hyper client connections per worker rather than
//! hyper-util's generic client: owning the connection step is what tells
//! "nothing reached the worker" (connect refused, or hyper hands the request
//! back unsent) from "the worker may have acted on it", and that decides
//! whether a request that is not idempotent may be tried elsewhere.
//! The idle list sits behind a mutex held only to push or pop.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What is sent to a worker: a body read in full (so it can be sent again)
/// or the client's body streamed through.
pub type WorkerBody = Either<Full<Bytes>, Upload>;
pub type Sender = http1::SendRequest<WorkerBody>;

/// Idle connections older than this are not reused: below the keep-alive
/// timeouts common servers use (hyper's header read timeout is 30 s), so a
/// pooled connection is rarely one the worker is about to close.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(String),
    #[error("connect to {0}: {1}")]
    Io(String, std::io::Error),
    #[error("handshake with {0}: {1}")]
    Handshake(String, hyper::Error),
}

/// The connections to one worker (`host:port`).
#[derive(Debug)]
pub struct Conns {
    authority: String,
    idle: Mutex<Vec<(Sender, Instant)>>,
    max_idle: usize,
    connect_timeout: Duration,
}

impl Conns {
    pub fn new(authority: String, max_idle: usize, connect_timeout: Duration) -> Conns {
        Conns {
            authority,
            idle: Mutex::new(Vec::new()),
            max_idle,
            connect_timeout,
        }
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    fn pop(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// A ready connection: an idle one, else a new one.
    pub async fn get(&self) -> Result<Sender, ConnectError> {
        while let Some(mut sender) = self.pop() {
            if sender.is_ready() {
                return Ok(sender);
            }
            // Put back as its response ended, it may still be finishing
            // that exchange: wait for it, briefly.
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(100), sender.ready()).await
            {
                return Ok(sender);
            }
        }
        self.connect().await
    }

    async fn connect(&self) -> Result<Sender, ConnectError> {
        let a = &self.authority;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(a.as_str()))
            .await
            .map_err(|_| ConnectError::Timeout(a.clone()))?
            .map_err(|e| ConnectError::Io(a.clone(), e))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(a.clone(), e))?;
        let authority = a.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(worker = %authority, error = %e, "worker connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Returns a connection after a complete exchange.
    pub fn put(&self, sender: Sender) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((sender, Instant::now()));
        }
    }

    /// Drops every idle connection (the worker left the set).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A request body larger than `DISPATCH_MAX_BODY_BYTES`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// The client's body, streamed to a worker, counted and bounded.
#[derive(Debug)]
pub struct Upload {
    inner: AxumBody,
    seen: Arc<AtomicU64>,
    limit: u64,
}

impl Upload {
    /// `seen` counts the bytes read so far (the usage row's request bytes).
    pub fn new(inner: AxumBody, seen: Arc<AtomicU64>, limit: u64) -> Upload {
        Upload { inner, seen, limit }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this.seen.fetch_add(data.len() as u64, Relaxed) + data.len() as u64;
                    if total > this.limit {
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
