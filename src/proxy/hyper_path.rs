//! The hyper transport: every client connection the fast path hands over
//! (h2c, HTTP/1.0, upgrades, chunked or large bodies, `Expect`, trusted
//! proxies' connections, the balancer's own pages) is served by hyper with
//! one [`Service`] per connection.
//!
//! A request's head is rewritten by the shared rules ([`super::headers`]);
//! its body is read whole when it fits [`rules::REPLAY_BODY_MAX`] (as the
//! fast path does), so it can be sent again after a failure, and streamed
//! otherwise, with `CLIENT_BODY_TIMEOUT_SECS` between pieces. Then the
//! [`super::driver`] routes it; `Hyper` makes each attempt: a
//! pooled or new connection, the request, and the response head within
//! `UPSTREAM_TIMEOUT_SECS` of the request's last byte.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, Version};

use super::body::ProxyBody;
use super::driver::{self, Call, Failed, Transport};
use super::error::ProxyError;
use super::{Proxy, headers, rules, tunnel};
use crate::backend::{Backend, Pinned};
use crate::upstream::{ClientStalled, Sender, UpstreamBody};

/// Serves the requests of one client connection.
pub struct Service {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    conn: Arc<Pinned>,
}

impl Service {
    pub fn new(proxy: Arc<Proxy>, peer: SocketAddr) -> Self {
        Service {
            proxy,
            peer,
            conn: Arc::new(Pinned::default()),
        }
    }
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let host = match check_head(&req) {
            Ok(host) => host,
            Err(refusal) => {
                let resp = super::body::error_response(&refusal.into());
                return Box::pin(std::future::ready(Ok(resp)));
            }
        };
        if rules::is_own_endpoint(req.uri().path()) {
            let page = self.proxy.page(req);
            return Box::pin(async move { Ok(page.await) });
        }
        let proxy = Arc::clone(&self.proxy);
        let conn = Arc::clone(&self.conn);
        let peer = self.peer;
        Box::pin(async move {
            let resp = match forward(&proxy, peer, req, host).await {
                Ok((resp, backend)) => {
                    conn.repin(&backend);
                    resp
                }
                Err(e) => super::body::error_response(&e),
            };
            Ok(resp)
        })
    }
}

/// The strict-head rules ([`rules::check_head`]) for a request as hyper
/// parsed it; `Some`: the `Host` the backend gets instead of the client's
/// (an absolute-form target's authority). hyper's URI has already dropped
/// any fragment: the accept loop's follower refuses those.
fn check_head<B>(req: &Request<B>) -> Result<Option<HeaderValue>, rules::Refusal> {
    let uri = req.uri();
    let target = match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => rules::Target::Absolute {
            scheme,
            authority: authority.as_str(),
        },
        // HTTP/2 may leave `:authority` out (`Host` says it then).
        (Some(_), None) => rules::Target::Origin,
        (None, None) if uri.path().starts_with('/') => rules::Target::Origin,
        (None, None) if uri.path() == "*" => rules::Target::Asterisk,
        _ => rules::Target::Other,
    };
    let mut lines = req.headers().get_all(header::HOST).iter();
    let host = lines.next().map(HeaderValue::as_bytes);
    let host_lines = usize::from(host.is_some()) + lines.count();
    let method = req.method().as_str().as_bytes();
    match rules::check_head(method, target, host_lines, host)? {
        rules::HostFix::Keep => Ok(None),
        rules::HostFix::Authority(authority) => HeaderValue::from_str(authority)
            .map(Some)
            .map_err(|_| rules::Refusal::Bad("invalid request target")),
    }
}

/// Forwards one request; returns the response and the backend that gave it.
/// `host`: the `Host` to send instead of the client's ([`check_head`]).
async fn forward(
    proxy: &Arc<Proxy>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    host: Option<HeaderValue>,
) -> Result<(Response<ProxyBody>, Arc<Backend>), ProxyError> {
    let client = proxy.trusted.client_ip(peer.ip(), req.headers());
    let from_trusted = !proxy.trusted.is_empty() && proxy.trusted.contains(peer.ip());
    let upgrade = headers::is_upgrade(req.headers());
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let idempotent = rules::is_idempotent(
        req.method().as_str().as_bytes(),
        req.headers().contains_key("idempotency-key"),
    );

    let (mut parts, body) = req.into_parts();
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    rewrite_head(&mut parts, peer.ip(), client, from_trusted, upgrade)?;
    let limits = &proxy.config.limits;
    let body = if upgrade {
        Outgoing::Whole(None)
    } else {
        read_body(body, limits.client_body_timeout).await?
    };
    let replayable = idempotent && matches!(body, Outgoing::Whole(_));
    let mut transport = Hyper {
        parts,
        body: Some(body),
        upgrade,
        head_timeout: limits.upstream_timeout,
        body_timeout: limits.client_body_timeout,
    };
    let call = Call {
        key: proxy.key(client),
        client,
        replayable,
    };
    let routed = driver::drive(proxy, call, &mut transport).await?;
    let ((resp, keep), guard) = (routed.response, routed.guard);
    let backend = Arc::clone(guard.backend());
    let resp = match on_client_upgrade {
        Some(client_side) => tunnel::splice(resp, client_side, guard, proxy),
        None => resp.map(|b| ProxyBody::upstream(b, keep, guard, Arc::clone(proxy))),
    };
    Ok((resp, backend))
}

/// A request body as the transport sends it.
enum Outgoing {
    /// Read whole (at most [`rules::REPLAY_BODY_MAX`]): sent again as often
    /// as needed. `None`: no body.
    Whole(Option<Bytes>),
    /// Larger: what was read while trying, then the rest of the stream.
    /// Sent once.
    Stream(Bytes, Incoming),
}

/// Reads the client's body whole if it fits the replay bound, within
/// `idle` between pieces.
async fn read_body(mut body: Incoming, idle: Duration) -> Result<Outgoing, ProxyError> {
    if body.is_end_stream() {
        return Ok(Outgoing::Whole(None));
    }
    let known = body.size_hint().exact();
    if known.is_some_and(|n| n > rules::REPLAY_BODY_MAX as u64) {
        return Ok(Outgoing::Stream(Bytes::new(), body));
    }
    let mut whole = BytesMut::with_capacity(known.unwrap_or(0) as usize);
    loop {
        let frame = match tokio::time::timeout(
            idle,
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)),
        )
        .await
        {
            Err(_) => return Err(ProxyError::ClientTimeout),
            Ok(None) => return Ok(Outgoing::Whole(Some(whole.freeze()))),
            Ok(Some(Err(e))) => return Err(ProxyError::ClientBody(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers of a chunked request are not forwarded (like nginx).
        if let Ok(data) = frame.into_data() {
            whole.extend_from_slice(&data);
        }
        if whole.len() > rules::REPLAY_BODY_MAX {
            return Ok(Outgoing::Stream(whole.freeze(), body));
        }
    }
}

/// Rewrites the request head for the backend: origin-form URI, HTTP/1.1, a
/// Host header, no hop-by-hop headers, forwarding headers set.
fn rewrite_head(
    parts: &mut Parts,
    peer: IpAddr,
    client: IpAddr,
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
        peer,
        client,
        from_trusted,
        host.as_ref(),
    );
    Ok(())
}

/// One request, tried on backends one at a time through hyper's client.
struct Hyper {
    parts: Parts,
    /// `None` once a streamed body went out (it cannot be sent again).
    body: Option<Outgoing>,
    upgrade: bool,
    head_timeout: Duration,
    body_timeout: Duration,
}

impl Hyper {
    /// The request for one attempt, and the signal that its body was sent
    /// whole (for a streamed body).
    fn request(
        &mut self,
    ) -> Option<(
        Request<UpstreamBody>,
        Option<tokio::sync::oneshot::Receiver<()>>,
    )> {
        let (body, sent) = match self.body.take()? {
            Outgoing::Whole(bytes) => {
                self.body = Some(Outgoing::Whole(bytes.clone()));
                (UpstreamBody::Full(bytes), None)
            }
            Outgoing::Stream(prefix, rest) => {
                let (body, sent) = UpstreamBody::stream(prefix, rest, self.body_timeout);
                (body, Some(sent))
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.headers_mut() = self.parts.headers.clone();
        Some((req, sent))
    }
}

impl Transport for Hyper {
    type Response = (Response<Incoming>, Option<Sender>);

    fn attempt(
        &mut self,
        backend: &Arc<Backend>,
        fresh: bool,
        give_way: Option<Duration>,
    ) -> impl Future<Output = Result<Self::Response, Failed>> + Send {
        let backend = Arc::clone(backend);
        async move {
            let (upgrade, head_timeout) = (self.upgrade, self.head_timeout);
            let Some((req, sent)) = self.request() else {
                // A streamed body already went to another backend.
                let gone = ProxyError::BadRequest("request body already sent");
                return Err(Failed::new(gone, true));
            };
            let pooled = if upgrade || fresh {
                None
            } else {
                backend.pool.checkout().await
            };
            let reused = pooled.is_some();
            let mut sender: Sender = match pooled {
                Some(s) => s,
                None => match backend.pool.connect(give_way).await {
                    Ok(s) => s,
                    Err(e) => {
                        give_back(&mut self.body, req);
                        return Err(Failed::new(ProxyError::Connect(e), false));
                    }
                },
            };
            let send = sender.try_send_request(req);
            let result = match sent {
                // The backend's time to answer counts from the body's last
                // byte: a slow upload is the client's time.
                Some(uploaded) => {
                    tokio::pin!(send);
                    tokio::select! {
                        r = &mut send => Ok(r),
                        _ = uploaded => tokio::time::timeout(head_timeout, send).await,
                    }
                }
                None => tokio::time::timeout(head_timeout, send).await,
            };
            match result {
                Err(_) => Err(Failed::new(ProxyError::Timeout, true)),
                Ok(Ok(mut resp)) => {
                    let switching = resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS;
                    // A chunked body's length is its chunking: a
                    // Content-Length beside it must go (RFC 9112 §6.3).
                    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
                        resp.headers_mut().remove(header::CONTENT_LENGTH);
                    }
                    headers::strip_hop_by_hop(resp.headers_mut(), switching);
                    // We answer in our own version (RFC 9110 §6.2), as the
                    // fast path does, whatever the backend spoke.
                    *resp.version_mut() = Version::HTTP_11;
                    let keep = (!upgrade).then_some(sender);
                    Ok((resp, keep))
                }
                // The client's own body broke or stalled: not the backend's
                // fault, and the body is gone.
                Ok(Err(e)) if e.error().is_user() => {
                    let stalled = std::error::Error::source(e.error())
                        .is_some_and(|s| s.downcast_ref::<ClientStalled>().is_some());
                    let error = if stalled {
                        ProxyError::ClientTimeout
                    } else {
                        ProxyError::ClientBody(e.into_error().to_string())
                    };
                    Err(Failed::new(error, true))
                }
                Ok(Err(mut e)) => {
                    // Handed back unsent: the connection was closed before
                    // the request went out (safe to send anywhere).
                    let unsent = e.take_message();
                    let sent = unsent.is_none();
                    if let Some(unsent) = unsent {
                        give_back(&mut self.body, unsent);
                    }
                    let error = e.into_error();
                    let stale = reused && (!sent || error.is_incomplete_message());
                    Err(Failed {
                        error: ProxyError::Upstream(error),
                        sent,
                        stale,
                    })
                }
            }
        }
    }

    fn status(response: &Self::Response) -> u16 {
        response.0.status().as_u16()
    }
}

/// A request hyper handed back unsent keeps its body for the next
/// candidate (a streamed body that was never polled is still whole).
fn give_back(slot: &mut Option<Outgoing>, req: Request<UpstreamBody>) {
    if slot.is_some() {
        return;
    }
    if let UpstreamBody::Stream(s) = req.into_body() {
        let (prefix, inner) = s.into_unsent();
        *slot = Some(Outgoing::Stream(prefix, inner));
    }
}
