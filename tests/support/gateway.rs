//! Gateway test kit: API keys through the real `api keys` command, real
//! `worker` processes, and small in-test workers that count what they
//! receive and misbehave on request.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::api::json;
use crate::support::{Client, Reply, wait_for};

/// Settings that make the gateway react quickly in tests.
pub const FAST: &[(&str, &str)] = &[
    ("WORKER_REFRESH_MS", "100"),
    ("KEY_CACHE_MS", "1000"),
    ("HEARTBEAT_INTERVAL_SECS", "1"),
];

/// `api keys ARGS...` against the database in `env`; (exit ok, stdout, stderr).
pub fn api_keys(env: &[(String, String)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_api"))
        .arg("keys")
        .args(args)
        .env_clear()
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run api keys");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A new key named `name` (the secret).
pub fn create_key(env: &[(String, String)], name: &str) -> String {
    let (ok, out, err) = api_keys(env, &["create", "--name", name]);
    assert!(ok, "api keys create failed: {err}");
    let key = out.trim().to_owned();
    assert!(key.starts_with("hg_") && key.len() == 67, "{out:?}");
    assert!(err.contains(name) && !err.contains(&key), "{err}");
    key
}

/// One dispatch request with `key`; `headers` added.
pub async fn dispatch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    let mut c = Client::connect(addr).await.expect("connect");
    c.send(method, path, &h, Bytes::from(body.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn worker_id(r: &Reply) -> Option<i64> {
    r.headers.get("x-worker-id")?.to_str().ok()?.parse().ok()
}

/// Waits until `addr` lists `n` online workers of `service_type` and then
/// for the gateway's registry refresh.
pub async fn wait_online(addr: SocketAddr, service_type: &str, n: usize) {
    let path = format!("/api/v1/workers?serviceType={service_type}&status=online");
    wait_for(
        &format!("{n} online {service_type} workers"),
        Duration::from_secs(30),
        || async {
            let (_, v) = json(addr, "GET", &path, None).await;
            (v["data"].as_array().map(Vec::len) == Some(n)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
}

/// A real `worker` process; killed on drop.
pub struct WorkerProcess {
    pub addr: SocketAddr,
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn spawn(
        service_type: &str,
        master: SocketAddr,
        extra: &[&str],
        log: PathBuf,
    ) -> WorkerProcess {
        let port = crate::support::free_port();
        let file = std::fs::File::create(&log).expect("worker log");
        let child = Command::new(env!("CARGO_BIN_EXE_worker"))
            .args([
                "--type",
                service_type,
                "--port",
                &port.to_string(),
                "--listen-host",
                "127.0.0.1",
                "--master",
                &format!("http://{master}"),
            ])
            .args(extra)
            .env_clear()
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn worker");
        WorkerProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            log,
        }
    }

    /// Jobs this worker received (its `/stats`).
    pub async fn received(&self) -> u64 {
        let r = crate::support::get(self.addr, "/stats")
            .await
            .expect("worker /stats");
        r.json()["received"].as_u64().expect("received")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.child.id())])
            .status()
            .expect("sh");
        assert!(ok.success());
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What an in-test worker does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 after its delay.
    Ok = 0,
    /// Reads the request, then closes the connection without answering
    /// (a worker that dies mid-request).
    Die = 1,
    /// 503 (a worker in trouble: feeds the breaker).
    Unavailable = 2,
}

/// A worker written for the tests: counts jobs, answers after `delay_ms`,
/// serves `/api/queue` with a length the test sets.
pub struct TestWorker {
    pub addr: SocketAddr,
    pub id: i64,
    pub received: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
    pub delay_ms: Arc<AtomicU64>,
    pub queue: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TestWorker {
    /// Starts a worker and registers it with `master` as `service_type`.
    pub async fn start(master: SocketAddr, service_type: &str, weight: u32) -> TestWorker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind worker");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(AtomicU64::new(0));
        let mode = Arc::new(AtomicU8::new(Mode::Ok as u8));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let queue = Arc::new(AtomicU64::new(0));
        let (r, m, d, q) = (
            received.clone(),
            mode.clone(),
            delay_ms.clone(),
            queue.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, m, d, q) = (r.clone(), m.clone(), d.clone(), q.clone());
                tokio::spawn(async move {
                    // `die` drops the connection mid-request: the socket
                    // closes with no answer, as when a worker is killed.
                    let die = Arc::new(tokio::sync::Notify::new());
                    let dying = die.clone();
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (r, m, d, q) = (r.clone(), m.clone(), d.clone(), q.clone());
                        let die = die.clone();
                        async move { Ok::<_, Infallible>(serve(req, r, m, d, q, die).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = dying.notified() => {}
                    }
                });
            }
        });
        let body = json!({"name": format!("t-{}", addr.port()), "host": "127.0.0.1",
            "port": addr.port(), "serviceType": service_type, "weight": weight})
        .to_string();
        let (s, v) = json(master, "POST", "/api/v1/worker/register", Some(&body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        TestWorker {
            addr,
            id: v["data"]["workerId"].as_i64().expect("workerId"),
            received,
            mode,
            delay_ms,
            queue,
            task,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Sends a heartbeat for this worker through `master`.
    pub async fn heartbeat(&self, master: SocketAddr, status: &str, queue: Option<u64>) {
        let mut hb = json!({"workerId": self.id, "status": status});
        if let Some(q) = queue {
            hb["queueLength"] = json!(q);
        }
        let (s, v) = json(
            master,
            "POST",
            "/api/v1/worker/heartbeat",
            Some(&hb.to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    req: Request<Incoming>,
    received: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    queue: Arc<AtomicU64>,
    die: Arc<tokio::sync::Notify>,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/api/queue" {
        let n = queue.load(Ordering::SeqCst) as usize;
        let running: Vec<Value> = (0..n).map(|i| json!([i, "job"])).collect();
        let body = json!({"queue_running": running, "queue_pending": []}).to_string();
        return Response::new(Full::new(Bytes::from(body)));
    }
    received.fetch_add(1, Ordering::SeqCst);
    let idem = req.headers().get("idempotency-key").is_some();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let delay = delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match mode.load(Ordering::SeqCst) {
        1 => {
            die.notify_one();
            std::future::pending::<Response<Full<Bytes>>>().await
        }
        2 => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"{\"error\":\"busy\"}")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
        _ => Response::new(Full::new(Bytes::from(
            json!({"ok": true, "bytes": body.len(), "idempotent": idem}).to_string(),
        ))),
    }
}
