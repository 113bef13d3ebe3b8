//! `Upgrade` tunnels (WebSocket and friends): once the backend answers
//! `101 Switching Protocols`, both upgraded connections are spliced together
//! until either side closes. The tunnel counts as one request in flight on
//! its backend for as long as it is open.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::Proxy;
use super::body::{ProxyBody, UpstreamGuard};

/// Passes `resp` through; if it is a 101, splices the two sides in a task
/// that keeps `guard` (the request in flight) until the tunnel closes.
pub fn splice(
    mut resp: Response<Incoming>,
    client: OnUpgrade,
    guard: UpstreamGuard,
    proxy: &Arc<Proxy>,
) -> Response<ProxyBody> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused: an ordinary answer, on a connection never pooled.
        return resp.map(|b| ProxyBody::upstream(b, None, guard, Arc::clone(proxy)));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let proxy = Arc::clone(proxy);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(backend = %guard.backend().name(), error = %e, "upgrade failed");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        let _open = OpenTunnel::new(&proxy, guard.client());
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                tracing::debug!(backend = %guard.backend().name(), up, down, "tunnel closed")
            }
            Err(e) => {
                tracing::debug!(backend = %guard.backend().name(), error = %e, "tunnel ended with an error")
            }
        }
    });
    resp.map(|_| ProxyBody::empty())
}

/// Counts one open tunnel (balancer-wide and in the client table) while it
/// lives.
struct OpenTunnel<'a> {
    proxy: &'a Proxy,
    client: std::net::IpAddr,
}

impl<'a> OpenTunnel<'a> {
    fn new(proxy: &'a Proxy, client: std::net::IpAddr) -> Self {
        proxy
            .stats
            .tunnels
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        proxy.stats.clients.tunnel(client, true);
        OpenTunnel { proxy, client }
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        let stats = &self.proxy.stats;
        stats
            .tunnels
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        stats.clients.tunnel(self.client, false);
    }
}
