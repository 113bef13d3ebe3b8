//! The request path: key -> candidates -> forward -> fail over -> map errors.
//!
//! The HTTP/1.1 fast path ([`h1`]) serves the common request itself; every
//! other connection is handed to hyper, where one [`Proxy`] serves it. For
//! each request both take the current [`Pool`](crate::balancer::Pool)
//! snapshot, hash the client key and walk that key's candidates in ring
//! order, skipping backends that are down or draining. A request is tried
//! on the next candidate when nothing of it reached the backend (connect
//! failed, or hyper hands it back unsent); after it was sent, only an
//! idempotent request without a body is retried (its head is kept for
//! that). Errors map to HTTP in [`error`]: no backend 503, upstream failure
//! 502, upstream timeout 504.

pub mod body;
pub mod client_ip;
pub mod error;
pub mod h1;
pub mod headers;
pub mod rules;
mod tunnel;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use http_body_util::{Either, Empty};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, Uri, Version};

use crate::backend::Backend;
use crate::balancer::{Balancer, status};
use crate::ring::key_hash;
use crate::upstream::{Sender, UpstreamBody};
use body::{ProxyBody, UpstreamGuard};
use error::{Failure, ProxyError};

/// Serves the requests of one client connection.
pub struct Proxy {
    state: Arc<Balancer>,
    peer: SocketAddr,
    conn: Arc<Pinned>,
}

impl Proxy {
    pub fn new(state: Arc<Balancer>, peer: SocketAddr) -> Self {
        Proxy {
            state,
            peer,
            conn: Arc::new(Pinned::default()),
        }
    }
}

/// The backend a client connection's latest request went to, behind the
/// per-backend "clients connected" gauge. The mutex is held for a pointer
/// compare, never across an await.
#[derive(Default)]
struct Pinned(Mutex<Option<Arc<Backend>>>);

impl Pinned {
    /// The pinned backend, its gauge count handed over with it (a parked
    /// connection keeps counting as connected).
    fn into_backend(mut self) -> Option<Arc<Backend>> {
        self.0.get_mut().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Takes back what [`Pinned::into_backend`] handed over.
    fn from_backend(backend: Option<Arc<Backend>>) -> Pinned {
        Pinned(Mutex::new(backend))
    }

    fn repin(&self, backend: &Arc<Backend>) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|b| Arc::ptr_eq(b, backend)) {
            return;
        }
        backend.stats.clients.fetch_add(1, Relaxed);
        if let Some(old) = slot.replace(Arc::clone(backend)) {
            old.stats.clients.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(b) = self.0.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            b.stats.clients.fetch_sub(1, Relaxed);
        }
    }
}

type ProxyFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ProxyFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if status::is_own_endpoint(req.uri().path()) {
            let resp = status::handle(&self.state, &req);
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let state = Arc::clone(&self.state);
        let conn = Arc::clone(&self.conn);
        let peer = self.peer;
        Box::pin(async move {
            let resp = match forward(&state, peer, req).await {
                Ok((resp, backend)) => {
                    conn.repin(&backend);
                    resp
                }
                Err(e) => e.into_response(),
            };
            Ok(resp)
        })
    }
}

/// Methods that may be replayed after they reached a backend (RFC 9110 §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What is kept of a request so it can be sent again after a failure that
/// happened once it was on the wire.
struct Replay {
    method: Method,
    uri: Uri,
    headers: hyper::HeaderMap,
}

impl Replay {
    fn request(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Forwards one request; returns the response and the backend that gave it.
async fn forward(
    state: &Balancer,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<(Response<ProxyBody>, Arc<Backend>), ProxyError> {
    state.totals.requests.fetch_add(1, Relaxed);
    let client = state.trusted.client_ip(peer.ip(), req.headers());
    let from_trusted = !state.trusted.is_empty() && state.trusted.contains(peer.ip());
    let hash = key_hash(client);
    let upgrade = headers::is_upgrade(req.headers());
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    rewrite_head(&mut parts, peer, client, from_trusted, upgrade)?;
    let replay =
        (is_idempotent(&parts.method) && body.is_end_stream() && !upgrade).then(|| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        });
    let mut pending = Some(Request::from_parts(parts, Either::Left(body)));

    let pool = state.pool();
    let mut last_error = None;
    for idx in pool.ring.candidates(hash) {
        let backend = &pool.backends[idx];
        if !backend.is_available() {
            continue;
        }
        let Some(request) = pending
            .take()
            .or_else(|| replay.as_ref().map(Replay::request))
        else {
            break;
        };
        match send(state, backend, request, upgrade).await {
            Ok(resp) => {
                let resp = match on_client_upgrade {
                    Some(client_side) => tunnel::splice(resp, client_side, Arc::clone(backend)),
                    None => resp,
                };
                return Ok((resp, Arc::clone(backend)));
            }
            Err(Failure { request, error }) => {
                if error.blames_backend() {
                    backend.stats.errors.fetch_add(1, Relaxed);
                    state.passive_failure(backend, &error);
                }
                let next = error.may_try_next();
                pending = request;
                last_error = Some(error);
                if !next {
                    break;
                }
            }
        }
    }
    state.totals.failed.fetch_add(1, Relaxed);
    Err(last_error.unwrap_or(ProxyError::NoBackend))
}

/// Rewrites the request head for the backend: origin-form URI, HTTP/1.1, a
/// Host header, no hop-by-hop headers, forwarding headers set.
fn rewrite_head(
    parts: &mut Parts,
    peer: SocketAddr,
    client: std::net::IpAddr,
    from_trusted: bool,
    upgrade: bool,
) -> Result<(), ProxyError> {
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/2 carries the authority in the URI; HTTP/1.1 backends need Host.
        let authority = parts
            .uri
            .authority()
            .map(|a| HeaderValue::from_str(a.as_str()));
        match authority {
            Some(Ok(v)) => {
                parts.headers.insert(header::HOST, v);
            }
            Some(Err(_)) => return Err(ProxyError::BadRequest("invalid authority")),
            None if parts.version == Version::HTTP_11 => {
                return Err(ProxyError::BadRequest("missing Host header"));
            }
            // An HTTP/1.0 request may lack Host; the HTTP/1.1 request made
            // of it may not: an empty one is what RFC 9112 §3.2 prescribes
            // for a target without an authority.
            None => {
                parts
                    .headers
                    .insert(header::HOST, HeaderValue::from_static(""));
            }
        }
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = pq
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    }
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let host = parts
        .headers
        .get(header::HOST)
        .filter(|h| !h.is_empty())
        .cloned();
    headers::set_forwarding(
        &mut parts.headers,
        peer.ip(),
        client,
        from_trusted,
        host.as_ref(),
    );
    Ok(())
}

/// One attempt on one backend.
async fn send(
    state: &Balancer,
    backend: &Arc<Backend>,
    mut req: Request<UpstreamBody>,
    upgrade: bool,
) -> Result<Response<ProxyBody>, Failure> {
    let guard = UpstreamGuard::new(Arc::clone(backend));
    let timeout = state.config.limits.upstream_timeout;
    // A pooled connection may have been closed by the backend while idle; if
    // hyper hands the request back unsent, try once more on a fresh one.
    let mut pooled = if upgrade {
        None
    } else {
        backend.pool.checkout().await
    };
    loop {
        let reused = pooled.is_some();
        let mut sender: Sender = match pooled.take() {
            Some(s) => s,
            None => match backend.pool.connect().await {
                Ok(s) => s,
                Err(e) => {
                    return Err(Failure {
                        request: Some(req),
                        error: ProxyError::Connect(e),
                    });
                }
            },
        };
        let sent = tokio::time::timeout(timeout, sender.try_send_request(req)).await;
        match sent {
            Err(_) => {
                return Err(Failure {
                    request: None,
                    error: ProxyError::Timeout,
                });
            }
            Ok(Ok(mut resp)) => {
                let switching = resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS;
                // A chunked body's length is its chunking: a Content-Length
                // beside it must go (RFC 9112 §6.3), not reach the client.
                if resp.headers().contains_key(header::TRANSFER_ENCODING) {
                    resp.headers_mut().remove(header::CONTENT_LENGTH);
                }
                headers::strip_hop_by_hop(resp.headers_mut(), switching);
                let keep = (!upgrade).then_some(sender);
                return Ok(resp.map(|b| ProxyBody::upstream(b, keep, guard)));
            }
            // The client's own body broke: not the backend's fault, and the
            // body is gone, so there is nothing to retry.
            Ok(Err(e)) if e.error().is_user() => {
                return Err(Failure {
                    request: None,
                    error: ProxyError::ClientBody(e.into_error()),
                });
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(unsent) if reused => req = unsent,
                Some(unsent) => {
                    return Err(Failure {
                        request: Some(unsent),
                        error: ProxyError::Upstream(e.into_error()),
                    });
                }
                None => {
                    return Err(Failure {
                        request: None,
                        error: ProxyError::Upstream(e.into_error()),
                    });
                }
            },
        }
    }
}
