//! The balancer under file-descriptor pressure, for real: the `balancer`
//! binary started with a small `RLIMIT_NOFILE` (set by `ulimit -n` in the
//! shell that execs it), a real backend, and thousands of real keep-alive
//! client connections on loopback.
//!
//! What a user checks: at the connection budget a new client is still
//! answered (idle keep-alive connections make room, longest idle first),
//! and running out of descriptors, even when `MAX_CLIENT_CONNECTIONS` is
//! set too high for the limit, never marks a healthy backend down.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::wire::{IO_LIMIT, Wire, get, read_response};
use support::{TestBackend, balancer_binary, free_port, wait_for};

/// A `balancer` process limited to `nofile` descriptors, logging to a file;
/// killed on drop.
struct Limited {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Limited {
    fn start(nofile: u32, backend: SocketAddr, extra: &[(&str, &str)]) -> Limited {
        let port = free_port();
        let plain = balancer_binary(port, &backend.to_string());
        let log = std::env::temp_dir().join(format!(
            "hashgate-fd-pressure-{}-{port}.log",
            std::process::id()
        ));
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.env_clear()
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\""))
            .arg(plain.get_program())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        for (k, v) in plain.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.env("HEALTH_INTERVAL_SECS", "1").env("RUST_LOG", "info");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the balancer");
        Limited {
            addr: ([127, 0, 0, 1], port).into(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/lb/status`, on a fresh connection.
    async fn status(&self) -> serde_json::Value {
        let r = support::get(self.addr, "/lb/status")
            .await
            .expect("GET /lb/status");
        serde_json::from_slice(&r.body).expect("status JSON")
    }

    async fn wait_up(&self) {
        wait_for("the backend up", Duration::from_secs(20), || async {
            let r = support::get(self.addr, "/lb/status").await.ok()?;
            let s: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            (s["backends"][0]["state"] == "up").then_some(())
        })
        .await;
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `GET /x` on `c`, answered within `IO_LIMIT`: the status.
async fn ask(c: &mut Wire) -> Result<u16, String> {
    c.send(&get("/x")).await;
    match tokio::time::timeout(IO_LIMIT, read_response(c, false)).await {
        Err(_) => Err("no answer within IO_LIMIT".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(r)) => Ok(r.status),
    }
}

/// Whether the balancer has closed `c` (EOF or reset, at once).
async fn closed(c: &mut Wire) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(20), c.fill()).await,
        Ok(Ok(0) | Err(_))
    )
}

fn lines_with(log: &str, what: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

/// With 512 descriptors the budget is (512 - 64) / 2 = 224 connections.
/// 2,000 clients, one after the other, each open a keep-alive connection,
/// get an answer and stay idle: every one is answered in time (idle ones
/// are closed to make room, longest idle first), then a new client is
/// answered, and the backend was never marked down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_budget_idle_connections_make_room_for_new_clients() {
    let backend = TestBackend::start("b", "127.0.0.1:0".parse().expect("addr")).await;
    let lb = Limited::start(512, backend.addr, &[]);
    lb.wait_up().await;

    const CLIENTS: usize = 2000;
    let started = Instant::now();
    let mut open: Vec<Wire> = Vec::with_capacity(CLIENTS);
    let mut worst = Duration::ZERO;
    for i in 0..CLIENTS {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "2,000 connections took over four minutes"
        );
        let t = Instant::now();
        let mut c = Wire::connect(lb.addr).await;
        let status = ask(&mut c).await;
        assert_eq!(status, Ok(200), "client {i} of {CLIENTS}");
        worst = worst.max(t.elapsed());
        open.push(c);
    }
    eprintln!(
        "{CLIENTS} keep-alive clients answered in {:?}, the slowest in {worst:?}",
        started.elapsed()
    );

    // A new client is answered at once, and the budget held: most of the
    // idle connections were closed by the balancer, the oldest first.
    let mut fresh = Wire::connect(lb.addr).await;
    assert_eq!(ask(&mut fresh).await, Ok(200), "a new client");
    let mut still_open = Vec::new();
    for (i, c) in open.iter_mut().enumerate() {
        if !closed(c).await {
            still_open.push(i);
        }
    }
    assert!(
        still_open.len() <= 224,
        "{} idle connections still open, over the budget of 224",
        still_open.len()
    );
    assert!(
        still_open.iter().all(|&i| i >= CLIENTS / 2),
        "the oldest idle connections go first; still open: {still_open:?}"
    );
    drop(open);

    let status = lb.status().await;
    assert_eq!(status["backends"][0]["state"], "up", "{status}");
    let log = lb.log();
    assert!(
        !lines_with(&log, "connection budget reached").is_empty(),
        "the budget was reached: {log}"
    );
    assert!(lines_with(&log, "backend down").is_empty(), "{log}");
    assert!(lines_with(&log, "accept failed").is_empty(), "{log}");
}

/// `MAX_CLIENT_CONNECTIONS` far above what 256 descriptors allow: idle
/// clients take every descriptor, accepts fail with EMFILE, and so do the
/// health checks' connects for several rounds. No check is recorded as
/// failed: once the clients leave, the backend is up, was never marked
/// down, and serves a new client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_never_marks_a_backend_down() {
    let backend = TestBackend::start("b", "127.0.0.1:0".parse().expect("addr")).await;
    let lb = Limited::start(256, backend.addr, &[("MAX_CLIENT_CONNECTIONS", "5000")]);
    lb.wait_up().await;
    assert!(
        !lines_with(&lb.log(), "MAX_CLIENT_CONNECTIONS is above").is_empty(),
        "a warning at start-up: {}",
        lb.log()
    );

    // 400 idle connections: about 250 are accepted, the rest wait in the
    // backlog, and the process is out of descriptors.
    let t0 = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..400 {
        idle.push(Wire::connect(lb.addr).await);
    }
    wait_for(
        "accepts failing for want of descriptors",
        Duration::from_secs(20),
        || async { (!lines_with(&lb.log(), "accept failed").is_empty()).then_some(()) },
    )
    .await;
    // Three more rounds (HEALTH_INTERVAL_SECS=1, HEALTH_FALL=2) short of
    // descriptors: before the fix, two of them marked the backend down.
    eprintln!("out of descriptors after {:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(idle);

    wait_for("a new client answered", Duration::from_secs(20), || async {
        let mut c = Wire::connect(lb.addr).await;
        (ask(&mut c).await == Ok(200)).then_some(())
    })
    .await;
    eprintln!("a new client answered after {:?}", t0.elapsed());
    let status = lb.status().await;
    assert_eq!(status["backends"][0]["state"], "up", "{status}");
    let log = lb.log();
    assert!(lines_with(&log, "backend down").is_empty(), "{log}");
    assert!(
        !lines_with(&log, "health checks skipped").is_empty(),
        "the health checks did run out of descriptors: {log}"
    );
}
