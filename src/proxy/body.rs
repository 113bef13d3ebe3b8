//! The response body the balancer sends to clients on the hyper path: a
//! backend's streamed body, or a small body of our own. An enum rather than
//! a boxed trait object, so the hot path allocates nothing for it.
//!
//! A backend body hands its keep-alive connection back to the backend's pool
//! once the backend has sent the whole response, keeps the request counted
//! in flight on its backend until the client has it all, and cuts the
//! exchange off when the backend pauses longer than
//! `UPSTREAM_BODY_TIMEOUT_SECS` between two pieces (a backend that stalls
//! mid-body; reported as its failure).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::time::Sleep;

use super::Proxy;
use super::error::ProxyError;
use super::{report, rules};
use crate::backend::Backend;
use crate::upstream::Sender;

/// The balancer's answer to a failure ([`rules::answer`]); the error itself
/// goes to the log, at debug.
pub fn error_response(error: &ProxyError) -> Response<ProxyBody> {
    let (status, _) = rules::answer(error);
    tracing::debug!(status, error = %error, "request failed");
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = json_bytes(status, rules::answer_body(error));
    for (name, value) in rules::answer_fields(error) {
        resp.headers_mut()
            .insert(*name, HeaderValue::from_static(value));
    }
    if rules::closes_connection(error) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(secs) = rules::retry_after(error) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A JSON response of our own.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    json_bytes(status, value.to_string())
}

fn json_bytes(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Counts one request in flight on a backend for as long as it lives.
#[derive(Debug)]
pub struct UpstreamGuard {
    backend: Arc<Backend>,
    /// The client key, for reports about the body.
    key: u64,
    /// The client, for the client table's tunnel count.
    client: std::net::IpAddr,
}

impl UpstreamGuard {
    pub fn new(backend: Arc<Backend>, key: u64, client: std::net::IpAddr) -> Self {
        backend.stats.total.fetch_add(1, Relaxed);
        backend.load.enter();
        UpstreamGuard {
            backend,
            key,
            client,
        }
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    pub fn client(&self) -> std::net::IpAddr {
        self.client
    }

    /// The backend broke off or stalled mid-body.
    pub fn body_failed(&self, proxy: &Proxy, error: &ProxyError) {
        report::body_failed(proxy, &self.backend, error, self.key);
    }
}

impl Drop for UpstreamGuard {
    fn drop(&mut self) {
        self.backend.load.leave();
    }
}

/// Body of every response the balancer sends on the hyper path.
pub enum ProxyBody {
    /// A complete body of our own (status pages, errors); `None` once sent.
    Full(Option<Bytes>),
    /// A backend's body, streamed through.
    Upstream(Box<Upstream>),
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyBody::Full(b) => f.debug_tuple("Full").field(b).finish(),
            ProxyBody::Upstream(u) => f.debug_tuple("Upstream").field(&u.guard).finish(),
        }
    }
}

/// A backend's body on its way to the client.
pub struct Upstream {
    inner: Incoming,
    /// The connection to return to the pool at the end (`None` for
    /// upgraded connections and after an error).
    keep: Option<Sender>,
    guard: UpstreamGuard,
    proxy: Arc<Proxy>,
    timeout: Duration,
    /// Armed while the backend owes the next piece (made at the first wait:
    /// a body that arrives with its head never needs one).
    idle: Option<Pin<Box<Sleep>>>,
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn upstream(
        inner: Incoming,
        keep: Option<Sender>,
        guard: UpstreamGuard,
        proxy: Arc<Proxy>,
    ) -> Self {
        let timeout = proxy.config.limits.upstream_body_timeout;
        ProxyBody::Upstream(Box::new(Upstream {
            inner,
            keep,
            guard,
            proxy,
            timeout,
            idle: None,
        }))
    }
}

impl Upstream {
    fn finish(&mut self) {
        if let Some(sender) = self.keep.take() {
            self.guard.backend().pool.checkin(sender);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let up = match &mut *self {
            ProxyBody::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(up) => up,
        };
        match Pin::new(&mut up.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                up.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                up.keep.take();
                let error = ProxyError::Upstream(e);
                up.guard.body_failed(&up.proxy, &error);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = &mut up.idle {
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + up.timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let timeout = up.timeout;
                let idle = up
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                up.keep.take();
                let error = ProxyError::Timeout;
                up.guard.body_failed(&up.proxy, &error);
                Poll::Ready(Some(Err("the backend stalled mid-body".into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream(up) => up.inner.size_hint(),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // An empty body (204, Content-Length: 0) may never be polled: the
        // exchange is complete all the same, so the connection can be reused.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}
