//! `cluster` as a user runs it: the real binary, on free ports, with the
//! embedded database in a temporary directory and no `.env`.
//!
//! Child pids come from each instance's `/health` (`pid`); signals go through
//! `sh -c kill` (no extra crate, no procps needed).

#[path = "support/api.rs"]
mod api;
mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use api::{TempDir, json};

/// `n` consecutive free ports (for the instances) plus one for the balancer,
/// drawn from 20000..32000: below Linux's ephemeral range (32768 up), so an
/// outgoing connection of another test cannot take one between this check
/// and the launcher's bind.
fn port_block(n: u16) -> (u16, u16) {
    let (start, lb, _free_again) = port_block_held(n);
    (start, lb)
}

/// [`port_block`], with the block's listeners still held (balancer port
/// first): a test that needs one of the ports taken keeps its listener
/// instead of binding it again, which another process could beat it to.
fn port_block_held(n: u16) -> (u16, u16, Vec<TcpListener>) {
    for _ in 0..200 {
        let start = 20_000 + (rand::random::<u16>() % 12_000);
        let held: Result<Vec<TcpListener>, _> = (start..=start + n)
            .map(|p| TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)))
            .collect();
        if let Ok(held) = held {
            return (start + 1, start, held);
        }
    }
    panic!("no block of {n} free ports");
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -{sig} {pid}")])
        .status()
        .expect("sh");
    assert!(ok.success(), "kill -{sig} {pid}");
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only a running process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
        .unwrap_or(false)
}

fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cluster did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The launcher, stopped (SIGINT, then SIGKILL) if a failed assertion
/// leaves it running: its instances must not outlive the test.
struct Launched(Child);

impl std::ops::Deref for Launched {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Launched {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn launch(dir: &TempDir, start: u16, lb: u16, n: u16) -> Launched {
    Launched(
        Command::new(env!("CARGO_BIN_EXE_cluster"))
            .args([
                "--instances",
                &n.to_string(),
                "--start-port",
                &start.to_string(),
            ])
            .current_dir(&dir.0)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BALANCER_PORT", lb.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cluster"),
    )
}

/// Collects a pipe in the background (a full pipe would stall the launcher).
fn collect(pipe: Option<impl Read + Send + 'static>) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let out = buf.clone();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
                out.lock().expect("buffer").push_str(&text);
            }
        });
    }
    buf
}

fn text(buf: &Arc<Mutex<String>>) -> String {
    buf.lock().expect("buffer").clone()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn pid_of(port: u16) -> Option<u32> {
    match api::call(addr(port), "GET", "/health", None).await {
        Ok((StatusCode::OK, b)) => b["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_starts_supervises_and_stops_cleanly() {
    const N: u16 = 3;
    let dir = TempDir::new("cluster");
    let (start, lb) = port_block(N);
    let mut cluster = launch(&dir, start, lb, N);
    let out = collect(cluster.stdout.take());
    let err = collect(cluster.stderr.take());

    // The balancer lists N healthy backends, each of them checked: until
    // its first check a new backend counts as up, and an instance still
    // opening its database answers that check 503.
    let status = support::wait_for(
        "N checked, healthy backends on /lb",
        Duration::from_secs(60),
        || async {
            let (s, b) = api::call(addr(lb), "GET", "/lb/status", None).await.ok()?;
            let checked = b["backends"]
                .as_array()?
                .iter()
                .all(|b| b["last_check"].is_string());
            (s == StatusCode::OK && b["healthy"] == N && checked).then_some(b)
        },
    )
    .await;
    assert_eq!(
        status["backends"].as_array().map(Vec::len),
        Some(usize::from(N))
    );
    assert!(
        dir.0.join("data/hashgate.db").exists(),
        "embedded database in ./data"
    );
    let (s, page) = json(addr(lb), "GET", "/api/client-ip", None).await;
    assert_eq!(
        (s, &page["ip"]),
        (StatusCode::OK, &serde_json::json!("127.0.0.1")),
        "{page}"
    );

    support::wait_for("the URLs", Duration::from_secs(30), || async {
        text(&out)
            .contains(&format!("http://127.0.0.1:{lb}/lb"))
            .then_some(())
    })
    .await;
    let mut pids = Vec::new();
    for port in start..start + N {
        pids.push(pid_of(port).await.expect("instance pid"));
    }
    // Kill one instance the hard way: it comes back, with a new pid.
    let victim = pids[1];
    signal(victim, "KILL");
    let new_pid = support::wait_for("restarted instance", Duration::from_secs(30), || async {
        pid_of(start + 1).await.filter(|&p| p != victim)
    })
    .await;
    pids[1] = new_pid;

    // SIGINT: everything stops, exit 0.
    signal(cluster.id(), "INT");
    let status = tokio::task::block_in_place(|| wait_exit(&mut cluster, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(200));
    let err = text(&err);
    assert!(status.success(), "exit {status}\n{err}");
    assert!(err.contains("api-2 |"), "child lines are prefixed:\n{err}");
    assert!(err.contains("restarting"), "the restart is logged:\n{err}");
    assert!(
        err.lines()
            .filter(|l| l.starts_with("api-"))
            .all(|l| !l.contains('\x1b')),
        "no colour codes in child lines when not on a terminal"
    );
    for pid in pids {
        assert!(
            !alive(pid),
            "child {pid} still running after the launcher exited"
        );
    }
    for port in (start..start + N).chain([lb]) {
        assert!(
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok(),
            "port {port} still bound"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_named_and_nothing_half_starts() {
    const N: u16 = 3;
    let dir = TempDir::new("cluster-busy");
    let (start, lb, mut held) = port_block_held(N);
    let busy = start + 1;
    // Keep the listener on `busy`; free the rest for the cluster.
    let _squatter = held.remove(usize::from(busy - lb));
    drop(held);
    let mut cluster = launch(&dir, start, lb, N);
    let err = collect(cluster.stderr.take());
    let status = tokio::task::block_in_place(|| wait_exit(&mut cluster, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(200));
    let err = text(&err);
    assert!(!status.success(), "must fail: {err}");
    assert!(
        err.contains(&format!("port {busy}")),
        "names the port: {err}"
    );
    for port in [start, start + 2, lb] {
        assert!(
            api::call(addr(port), "GET", "/health", None).await.is_err(),
            "{port} answered"
        );
    }
}

/// `cluster --workers 3` as a newcomer runs it: the printed `curl` is run
/// as printed (through a shell) and dispatches through the balancer to a
/// render worker; the workers are the render, parse and combo of the
/// replaced system.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_workers_prints_a_curl_that_works() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "curl is needed");
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    const N: u16 = 2;
    let dir = TempDir::new("cluster-workers");
    let (start, lb) = port_block(N);
    let (workers, _, _free) = port_block_held(2);
    drop(_free);
    let mut cluster = Command::new(env!("CARGO_BIN_EXE_cluster"))
        .args([
            "-n",
            &N.to_string(),
            "--start-port",
            &start.to_string(),
            "--workers",
            "3",
        ])
        .current_dir(&dir.0)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BALANCER_PORT", lb.to_string())
        .env("WORKER_START_PORT", (workers - 1).to_string())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cluster");
    let out = collect(cluster.stdout.take());
    let err = collect(cluster.stderr.take());
    let curl = support::wait_for("the printed curl", Duration::from_secs(90), || async {
        text(&out).lines().find_map(|l| {
            l.trim()
                .strip_prefix("dispatch")
                .map(|c| c.trim().to_owned())
        })
    })
    .await;
    assert!(
        curl.starts_with("curl ") && curl.contains(&format!("127.0.0.1:{lb}/api/v1/render")),
        "{curl}"
    );
    let run = tokio::task::block_in_place(|| {
        Command::new("sh").args(["-c", &curl]).output().expect("sh")
    });
    let body = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}\n{}", text(&err)));
    assert_eq!(v["serviceType"], "render", "{v}");
    for ty in ["render-1|", "parse-1|", "combo-1|"] {
        assert!(text(&err).contains(ty), "no {ty} child:\n{}", text(&err));
    }
    signal(cluster.id(), "TERM");
    let status = tokio::task::block_in_place(|| wait_exit(&mut cluster, Duration::from_secs(30)));
    assert!(status.success(), "exit {status}\n{}", text(&err));
}
