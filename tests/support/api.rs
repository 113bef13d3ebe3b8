//! API instances for tests: in-process (`api::run` on 127.0.0.1:0) or as real
//! `api` processes, against the embedded SQLite file or a test MariaDB, plus
//! a small JSON client.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use hashgate::api::{self, ApiConfig};
use hashgate::config::Env;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hashgate-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The environment pairs that point an instance at a database.
pub fn sqlite_env(dir: &TempDir) -> Vec<(String, String)> {
    vec![(
        "SQLITE_PATH".into(),
        dir.0.join("hashgate.db").display().to_string(),
    )]
}

pub fn mysql_env(url: &str) -> Vec<(String, String)> {
    vec![("DATABASE_URL".into(), url.to_owned())]
}

/// An API instance running in this process.
pub struct Instance {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Instance {
    /// Starts an instance configured by `env` (plus fast test defaults).
    pub async fn start(env: &[(String, String)]) -> Instance {
        let mut pairs: Vec<(String, String)> = vec![
            ("DB_ACQUIRE_TIMEOUT_MS".into(), "1000".into()),
            ("DB_QUERY_TIMEOUT_MS".into(), "3000".into()),
            ("SHUTDOWN_GRACE_SECS".into(), "2".into()),
        ];
        pairs.extend(env.iter().cloned());
        let config = ApiConfig::from_env(&Env::from_pairs(pairs)).expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Instance {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub async fn wait_healthy(&self, limit: Duration) {
        wait_healthy(self.addr, limit).await;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `GET /health` on `addr` answers 200.
pub async fn wait_healthy(addr: SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let last = call(addr, "GET", "/health", None).await;
        if last.as_ref().is_ok_and(|(s, _)| *s == StatusCode::OK) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} not healthy within {limit:?}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request with an optional JSON body; returns the status and the
/// parsed body (`Null` when it is not JSON).
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(StatusCode, Value)> {
    let mut c = crate::support::Client::connect(addr).await?;
    let headers: &[(&str, &str)] = if body.is_some() {
        &[("content-type", "application/json")]
    } else {
        &[]
    };
    let r = c
        .send(
            method,
            path,
            headers,
            Bytes::from(body.unwrap_or("").to_owned()),
        )
        .await
        .map_err(std::io::Error::other)?;
    Ok((r.status, r.json()))
}

/// [`call`] that must reach the instance.
pub async fn json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (StatusCode, Value) {
    call(addr, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// A real `api` process; killed on drop.
pub struct ApiProcess {
    pub addr: SocketAddr,
    pub child: Child,
    pub log: PathBuf,
}

impl ApiProcess {
    /// Starts `target/.../api --port P` with `env`; output goes to `log`.
    pub fn spawn(port: u16, env: &[(String, String)], log: PathBuf) -> ApiProcess {
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_api"))
            .arg("--port")
            .arg(port.to_string())
            .env_clear()
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env("API_HOST", "127.0.0.1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn api");
        ApiProcess {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
