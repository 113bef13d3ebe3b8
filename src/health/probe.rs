//! The active probes: `GET <path>` on a fresh connection, with one deadline
//! covering connect, request and the whole (bounded) answer. The health
//! check wants the status; least-queue's poll ([`fetch`]) the body too.
//!
//! A fresh connection (not a pooled one) is deliberate: the probe must prove
//! that the backend accepts new connections, which is what new clients need.
//!
//! A probe that cannot even open its socket because this process is short
//! of file descriptors (or memory, or local ports) says so
//! ([`Failure::Local`]): that is no verdict on the backend, and the checker
//! records nothing for it (a full fd table once marked a healthy backend
//! down, and every client got 503 after the pressure had passed).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The backend failed it (refused, timed out, answered badly).
    Backend(String),
    /// This process could not make the probe (no file descriptor, memory
    /// or local port): no verdict on the backend.
    Local(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Backend(why) | Failure::Local(why) => f.write_str(why),
        }
    }
}

/// A passed probe's latency, or why it failed.
pub type ProbeResult = Result<Duration, Failure>;

/// Probes `addr`; 2xx and 3xx pass, anything else fails.
pub async fn probe(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> ProbeResult {
    let started = Instant::now();
    match get(addr, host, path, timeout, 64 * 1024).await {
        Err(e) => Err(e),
        Ok((status, _)) if status.is_success() || status.is_redirection() => Ok(started.elapsed()),
        Ok((status, _)) => Err(Failure::Backend(format!("answered {status}"))),
    }
}

/// `GET path` on `addr` within `timeout`: the status and at most
/// `max_body` bytes of body (more is an error).
pub async fn fetch(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<(StatusCode, Bytes), String> {
    get(addr, host, path, timeout, max_body)
        .await
        .map_err(|e| e.to_string())
}

async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<(StatusCode, Bytes), Failure> {
    match tokio::time::timeout(timeout, exchange(addr, host, path, max_body)).await {
        Err(_) => Err(Failure::Backend(format!(
            "timed out after {} ms",
            timeout.as_millis()
        ))),
        Ok(result) => result,
    }
}

async fn exchange(
    addr: SocketAddr,
    host: &str,
    path: &str,
    max_body: usize,
) -> Result<(StatusCode, Bytes), Failure> {
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        let why = format!("connect: {e}");
        if crate::upstream::is_local(&e) {
            Failure::Local(why)
        } else {
            Failure::Backend(why)
        }
    })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Backend(format!("handshake: {e}")))?;
    let conn = tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "hashgate-health")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| Failure::Backend(format!("bad request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failure::Backend(format!("request: {e}")))?;
    let status = resp.status();
    // Read the body (bounded) so the backend sees a clean exchange.
    let body = Limited::new(resp.into_body(), max_body)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| Failure::Backend(format!("body: {e}")));
    conn.abort();
    Ok((status, body?))
}
