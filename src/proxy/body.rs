//! The response body the balancer sends to clients: a backend's streamed
//! body, or a small body of our own. An enum rather than a boxed trait object,
//! so the hot path allocates nothing for it.
//!
//! A backend body hands its keep-alive connection back to the backend's pool
//! once the backend has sent the whole response, and keeps the backend's
//! active-request gauge up until the client has it all.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::backend::Backend;
use crate::upstream::Sender;

/// Counts one request in flight on a backend for as long as it lives.
#[derive(Debug)]
pub struct UpstreamGuard(Arc<Backend>);

impl UpstreamGuard {
    pub fn new(backend: Arc<Backend>) -> Self {
        backend.stats.total.fetch_add(1, Relaxed);
        backend.stats.active.fetch_add(1, Relaxed);
        UpstreamGuard(backend)
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for UpstreamGuard {
    fn drop(&mut self) {
        self.0.stats.active.fetch_sub(1, Relaxed);
    }
}

/// Body of every response the balancer sends.
#[derive(Debug)]
pub enum ProxyBody {
    /// A complete body of our own (status pages, errors); `None` once sent.
    Full(Option<Bytes>),
    /// A backend's body, streamed through.
    Upstream {
        inner: Incoming,
        /// The connection to return to the pool at the end (`None` for
        /// upgraded connections and after an error).
        keep: Option<Sender>,
        guard: UpstreamGuard,
    },
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn upstream(inner: Incoming, keep: Option<Sender>, guard: UpstreamGuard) -> Self {
        ProxyBody::Upstream { inner, keep, guard }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut *self {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream { inner, keep, guard } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(None) => {
                    if let Some(sender) = keep.take() {
                        guard.backend().pool.checkin(sender);
                    }
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    keep.take();
                    guard.backend().stats.errors.fetch_add(1, Relaxed);
                    tracing::debug!(backend = %guard.backend().name(), error = %e, "backend body failed mid-stream");
                    Poll::Ready(Some(Err(e)))
                }
                other => other,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // An empty body (204, Content-Length: 0) may never be polled: the
        // exchange is complete all the same, so the connection can be reused.
        if let ProxyBody::Upstream { inner, keep, guard } = self {
            if inner.is_end_stream() {
                if let Some(sender) = keep.take() {
                    guard.backend().pool.checkin(sender);
                }
            }
        }
    }
}
