//! Test support: real backends, a balancer started in-process, and an HTTP
//! client that can choose its source address (any 127.x.y.z is a distinct
//! client on loopback).
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod wire;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use hashgate::config::{BalancerConfig, Env};

/// `n` free TCP ports on 127.0.0.1 (released before returning; good enough
/// on a test machine).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// One free TCP port on 127.0.0.1 (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// The real `balancer` binary, to listen on 127.0.0.1:`port` in front of
/// `backends` (`BACKEND_HOSTS`), with an otherwise empty environment and no
/// stdin. Callers add variables and decide where its output goes.
pub fn balancer_binary(port: u16, backends: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_balancer"));
    cmd.env_clear()
        .env("BALANCER_HOST", "127.0.0.1")
        .env("BALANCER_PORT", port.to_string())
        .env("BACKEND_HOSTS", backends)
        .stdin(std::process::Stdio::null());
    cmd
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real HTTP backend on loopback. Every response names the backend in
/// `x-backend` and echoes the forwarding headers it received as JSON:
/// `{"backend", "path", "x_forwarded_for", "x_real_ip", "x_forwarded_proto", "x_forwarded_host"}`.
///
/// `/health` answers 200 or 503 (see [`TestBackend::set_healthy`]),
/// `/slow?ms=N` waits N ms first, `/ws` is a WebSocket echo, `/api/queue`
/// answers ComfyUI's queue shape with [`TestBackend::set_queue`]'s length.
/// [`TestBackend::set_delay`] slows every other answer down.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    queue: Arc<AtomicU64>,
    pub requests: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    /// Ends the WebSocket tunnels too when the backend is killed.
    killed: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TestBackend {
    /// Starts a backend on `addr` (port 0 picks a free port).
    pub async fn start(name: &str, addr: SocketAddr) -> TestBackend {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        Self::on(name, listener)
    }

    /// Starts a backend on an existing listener.
    pub fn on(name: &str, listener: TcpListener) -> TestBackend {
        let addr = listener.local_addr().expect("local addr");
        let healthy = Arc::new(AtomicBool::new(true));
        let requests = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let queue = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel();
        let (killed, on_kill) = tokio::sync::watch::channel(false);
        let shared = Shared {
            name: name.to_owned(),
            healthy: healthy.clone(),
            delay_ms: delay_ms.clone(),
            queue: queue.clone(),
            requests: requests.clone(),
            killed: on_kill,
        };
        let task = tokio::spawn(accept_loop(listener, Arc::new(shared), stopped));
        TestBackend {
            name: name.to_owned(),
            addr,
            healthy,
            delay_ms,
            queue,
            requests,
            stop: Some(stop),
            killed,
            task,
        }
    }

    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::SeqCst);
    }

    /// Every answer but `/health` and `/api/queue` waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The length `/api/queue` reports (running 1 when non-zero, the rest
    /// pending).
    pub fn set_queue(&self, n: u64) {
        self.queue.store(n, Ordering::SeqCst);
    }

    /// Kills the backend the hard way: listener and every open connection
    /// (WebSocket tunnels included) closed at once, as when its process dies.
    pub async fn kill(mut self) {
        let _ = self.killed.send(true);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        let _ = self.killed.send(true);
        self.task.abort();
    }
}

struct Shared {
    name: String,
    healthy: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    queue: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    killed: tokio::sync::watch::Receiver<bool>,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    // Connections live in this set, so stopping the loop drops them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| backend_handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn backend_handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    if path == "/health" {
        let up = shared.healthy.load(Ordering::SeqCst);
        let code = if up {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(reply(&shared.name, code, format!("{{\"up\":{up}}}")));
    }
    if path == "/ws" {
        return Ok(websocket_echo(
            &shared.name,
            shared.killed.clone(),
            &mut req,
        ));
    }
    if path == "/api/queue" {
        let n = shared.queue.load(Ordering::SeqCst) as usize;
        let running: Vec<u32> = (0..n.min(1) as u32).collect();
        let pending: Vec<u32> = (0..n.saturating_sub(1) as u32).collect();
        let body = serde_json::json!({ "queue_running": running, "queue_pending": pending });
        return Ok(reply(&shared.name, StatusCode::OK, body.to_string()));
    }
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if path == "/slow" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body_in = req.headers().get(header::CONTENT_LENGTH).is_some();
    let echo = serde_json::json!({
        "backend": shared.name,
        "path": path,
        "method": req.method().as_str(),
        "x_forwarded_for": h("x-forwarded-for"),
        "x_real_ip": h("x-real-ip"),
        "x_forwarded_proto": h("x-forwarded-proto"),
        "x_forwarded_host": h("x-forwarded-host"),
        "connection": h("connection"),
    });
    let mut body_len = 0;
    if body_in {
        body_len = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
    }
    let mut resp = reply(&shared.name, StatusCode::OK, echo.to_string());
    resp.headers_mut()
        .insert("x-body-len", HeaderValue::from(body_len));
    if path == "/hop" {
        // Hop-by-hop headers a proxy must not pass on to its client.
        let h = resp.headers_mut();
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("for this hop only"));
        h.insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic"),
        );
    }
    Ok(resp)
}

fn reply(name: &str, code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        "x-backend",
        HeaderValue::from_str(name).expect("ascii name"),
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn websocket_echo(
    name: &str,
    mut killed: tokio::sync::watch::Receiver<bool>,
    req: &mut Request<Incoming>,
) -> Response<Full<Bytes>> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return reply(
            name,
            StatusCode::BAD_REQUEST,
            "{\"error\":\"no key\"}".into(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    let me = name.to_owned();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        loop {
            let msg = tokio::select! {
                // Killed: the socket goes with the task, as with the process.
                _ = killed.wait_for(|k| *k) => break,
                msg = ws.next() => msg,
            };
            let Some(Ok(msg)) = msg else { break };
            if msg.is_text() {
                let text = format!("{me}:{}", msg.to_text().unwrap_or(""));
                if ws.send(text.into()).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("base64"),
    );
    h.insert(
        "x-backend",
        HeaderValue::from_str(name).expect("ascii name"),
    );
    resp
}

/// A balancer running in-process on 127.0.0.1:<free port>.
pub struct TestBalancer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestBalancer {
    /// Starts a balancer configured by `pairs` (environment-variable names).
    pub async fn start(pairs: &[(&str, String)]) -> TestBalancer {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), pairs).await
    }

    /// Starts a balancer listening on `addr` (e.g. `[::1]:0`).
    pub async fn start_on(addr: SocketAddr, pairs: &[(&str, String)]) -> TestBalancer {
        let env = Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let config = BalancerConfig::from_env(&env).expect("test config is valid");
        let listener = TcpListener::bind(addr).await.expect("bind balancer");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hashgate::balancer::run(listener, config, async move {
            let _ = stopped.await;
        }));
        TestBalancer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.expect("balancer task")
    }

    /// `GET /lb/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let r = get(self.addr, "/lb/status").await.expect("GET /lb/status");
        serde_json::from_slice(&r.body).expect("status JSON")
    }

    /// Waits until `/lb/status` shows exactly `n` backends, all up.
    pub async fn wait_healthy(&self, n: usize) -> serde_json::Value {
        wait_for(
            &format!("{n} healthy backends"),
            Duration::from_secs(20),
            || async {
                let s = self.status().await;
                let backends = s["backends"].as_array()?;
                let up = backends.iter().filter(|b| b["state"] == "up").count();
                (backends.len() == n && up == n).then_some(s)
            },
        )
        .await
    }
}

impl Drop for TestBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn backend(&self) -> Option<&str> {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A keep-alive HTTP/1.1 client connection from a chosen source address.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    target: SocketAddr,
}

impl Client {
    /// Connects from `source` (an address on this host, e.g. 127.0.0.42) to `target`.
    pub async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<Client> {
        let socket = if source.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(target).await?;
        Self::handshake(stream, target).await
    }

    pub async fn connect(target: SocketAddr) -> std::io::Result<Client> {
        Self::handshake(TcpStream::connect(target).await?, target).await
    }

    async fn handshake(stream: TcpStream, target: SocketAddr) -> std::io::Result<Client> {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Client { sender, target })
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, hyper::Error> {
        self.send("GET", path, &[], Bytes::new()).await
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.target.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).expect("valid test request");
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// One GET on a fresh connection from 127.0.0.1.
pub async fn get(target: SocketAddr, path: &str) -> std::io::Result<Reply> {
    let mut c = Client::connect(target).await?;
    c.get(path).await.map_err(std::io::Error::other)
}

/// One GET on a fresh connection from `source`.
pub async fn get_from(source: IpAddr, target: SocketAddr, path: &str) -> std::io::Result<Reply> {
    let mut c = Client::connect_from(source, target).await?;
    c.get(path).await.map_err(std::io::Error::other)
}

/// The distinct client address number `i` (127.1.x.y, never 127.0.0.1).
pub fn client_ip(i: u32) -> IpAddr {
    IpAddr::from([
        127,
        1 + (i / 65_000) as u8,
        ((i % 65_000) / 250) as u8,
        (i % 250 + 1) as u8,
    ])
}

/// Starts `n` backends on 127.0.0.1, named `b1`..`bn`.
pub async fn backends(n: usize) -> Vec<TestBackend> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(TestBackend::start(&format!("b{i}"), "127.0.0.1:0".parse().expect("addr")).await);
    }
    out
}

/// `BACKEND_HOSTS` for a set of backends.
pub fn hosts(backends: &[TestBackend]) -> String {
    backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Which backend each of `clients` lands on (one fresh connection each).
pub async fn placement(balancer: SocketAddr, clients: u32) -> HashMap<IpAddr, String> {
    let mut out = HashMap::new();
    for i in 0..clients {
        let ip = client_ip(i);
        let r = get_from(ip, balancer, "/whoami")
            .await
            .expect("request through the balancer");
        assert_eq!(r.status, StatusCode::OK, "client {ip}: {r:?}");
        out.insert(ip, r.backend().expect("x-backend").to_owned());
    }
    out
}

/// An empty-bodied request type some tests need.
pub type EmptyBody = Empty<Bytes>;
