//! The active health probe: `GET <path>` on a fresh connection, with one
//! deadline covering connect, request and response head.
//!
//! A fresh connection (not a pooled one) is deliberate: the probe must prove
//! that the backend accepts new connections, which is what new clients need.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A passed probe's latency, or why it failed.
pub type ProbeResult = Result<Duration, String>;

/// Probes `addr`; 2xx and 3xx pass, anything else fails.
pub async fn probe(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> ProbeResult {
    let started = Instant::now();
    match tokio::time::timeout(timeout, exchange(addr, host, path)).await {
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => Ok(started.elapsed()),
        Ok(Ok(status)) => Err(format!("answered {status}")),
    }
}

async fn exchange(addr: SocketAddr, host: &str, path: &str) -> Result<StatusCode, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "hashgate-health")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    // Read (and discard) the body so the backend sees a clean exchange.
    let _ = resp.into_body().collect().await;
    conn.abort();
    Ok(status)
}
