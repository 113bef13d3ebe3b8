//! Metering under load: concurrent dispatches through five real `api`
//! replicas on a real MariaDB, across a replica's SIGTERM and a 5 s stop of
//! the database; afterwards `usage_log` must hold exactly one row per
//! answer the clients saw, with the status they saw, and nothing else.
//!
//! The clients talk to the replicas directly (each client sticks to one,
//! and moves to the next when its replica goes away), not through the
//! balancer: while the database is down every replica's `/health` is 503,
//! so a balancer would take them all out of rotation and the outage would
//! test nothing. The balancer path is covered by tests/gateway.rs.

#[path = "support/api.rs"]
mod api;
#[path = "support/gateway.rs"]
mod gw;
#[path = "support/mariadb.rs"]
mod mariadb;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use api::{ApiProcess, TempDir};
use gw::WorkerProcess;
use mariadb::MariaDb;
use support::Client;

const REPLICAS: usize = 5;
const CLIENTS: usize = 32;
/// Upper bound on requests (the run is also bounded in time).
const MAX_REQUESTS: u64 = 20_000;

fn sigterm(pid: u32) {
    let ok = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("sh");
    assert!(ok.success());
}

fn wait_exit(p: &mut ApiProcess, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = p.child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "replica did not stop: {}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Default)]
struct Seen {
    /// request id -> status, for every answer that carried our request id.
    answered: HashMap<String, u16>,
    /// Answers without it (none expected) and transport errors.
    other: u64,
    during_outage: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_rows_match_the_answers_across_a_sigterm_and_a_database_stop() {
    let Some(mut db) = MariaDb::start() else {
        return;
    };
    let tmp = TempDir::new("gw-load");
    let mut env = api::mysql_env(&db.url("kiro_api"));
    for (k, v) in gw::FAST.iter().chain(&[
        ("SHUTDOWN_GRACE_SECS", "10"),
        ("DB_ACQUIRE_TIMEOUT_MS", "1000"),
        ("DB_QUERY_TIMEOUT_MS", "3000"),
        ("RUST_LOG", "info"),
    ]) {
        env.push((k.to_string(), v.to_string()));
    }
    let ports = support::free_ports(REPLICAS);
    let mut replicas: Vec<ApiProcess> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| ApiProcess::spawn(p, &env, tmp.0.join(format!("api-{i}.log"))))
        .collect();
    for r in &replicas {
        api::wait_healthy(r.addr, Duration::from_secs(60)).await;
    }
    let master = replicas[0].addr;
    let _workers: Vec<WorkerProcess> = (0..3)
        .map(|i| {
            WorkerProcess::spawn(
                "render",
                master,
                &["--work-ms", "1", "--concurrency", "64"],
                tmp.0.join(format!("w{i}.log")),
            )
        })
        .collect();
    gw::wait_online(master, "render", 3).await;
    let key = gw::create_key(&env, "load");
    let addrs: Arc<Vec<SocketAddr>> = Arc::new(replicas.iter().map(|r| r.addr).collect());

    let seen = Arc::new(Mutex::new(Seen::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let outage = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (addrs, seen, sent, stop, outage) = (
            addrs.clone(),
            seen.clone(),
            sent.clone(),
            stop.clone(),
            outage.clone(),
        );
        let auth = format!("Bearer {key}");
        clients.push(tokio::spawn(async move {
            let mut target = c % REPLICAS;
            let mut conn: Option<Client> = None;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && sent.fetch_add(1, Ordering::SeqCst) < MAX_REQUESTS
            {
                n += 1;
                let id = format!("c{c}-{n}");
                if conn.is_none() {
                    match Client::connect(addrs[target]).await {
                        Ok(cl) => conn = Some(cl),
                        Err(_) => {
                            // The replica is gone: the next one.
                            target = (target + 1) % REPLICAS;
                            seen.lock().unwrap().other += 1;
                            continue;
                        }
                    }
                }
                let Some(cl) = conn.as_mut() else { continue };
                let headers = [
                    ("authorization", auth.as_str()),
                    ("x-request-id", id.as_str()),
                ];
                match cl
                    .send(
                        "POST",
                        "/api/v1/render",
                        &headers,
                        Bytes::from_static(b"{\"job\":1}"),
                    )
                    .await
                {
                    Ok(r) => {
                        let mut s = seen.lock().unwrap();
                        if r.headers.get("x-request-id").and_then(|v| v.to_str().ok())
                            == Some(id.as_str())
                        {
                            s.answered.insert(id, r.status.as_u16());
                            if outage.load(Ordering::SeqCst) && r.status == 200 {
                                s.during_outage += 1;
                            }
                        } else {
                            s.other += 1;
                        }
                    }
                    Err(_) => {
                        // Connection closed (replica draining): reconnect.
                        conn = None;
                        seen.lock().unwrap().other += 1;
                    }
                }
            }
        }));
    }

    let answered = |seen: &Arc<Mutex<Seen>>| seen.lock().unwrap().answered.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_term = answered(&seen);
    // A replica is stopped gracefully in the middle of the load.
    let victim = replicas[2].child.id();
    sigterm(victim);
    let status =
        tokio::task::block_in_place(|| wait_exit(&mut replicas[2], Duration::from_secs(30)));
    assert!(status.success(), "SIGTERM'd replica exit {status}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The database goes away for 5 s.
    tokio::task::block_in_place(|| db.stop());
    outage.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    outage.store(false, Ordering::SeqCst);
    tokio::task::block_in_place(|| db.restart());
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client task");
    }
    // Every replica stops gracefully: what they buffered is written.
    for (i, r) in replicas.iter_mut().enumerate() {
        if i == 2 {
            continue;
        }
        sigterm(r.child.id());
        let status = tokio::task::block_in_place(|| wait_exit(r, Duration::from_secs(60)));
        assert!(status.success(), "replica {i}: {status}\n{}", r.log());
    }

    let seen = seen.lock().unwrap();
    let rows = db.sql("SELECT request_id, status FROM kiro_api.usage_log");
    let mut logged: HashMap<String, u16> = HashMap::new();
    let mut duplicates = 0;
    for line in rows.lines() {
        let (id, status) = line.split_once('\t').expect("two columns");
        if logged
            .insert(id.to_owned(), status.parse().expect("status"))
            .is_some()
        {
            duplicates += 1;
        }
    }
    let ok = seen.answered.values().filter(|&&s| s == 200).count();
    eprintln!(
        "answered {} ({} ok, {} while the database was down), other outcomes {}, rows {}, answered before the SIGTERM {}",
        seen.answered.len(),
        ok,
        seen.during_outage,
        seen.other,
        logged.len(),
        before_term
    );
    assert!(
        seen.answered.len() >= 2000,
        "too few requests to mean anything"
    );
    assert!(
        seen.during_outage > 0,
        "nothing was served while the database was down"
    );
    assert_eq!(duplicates, 0);
    let missing: Vec<_> = seen
        .answered
        .iter()
        .filter(|(id, _)| !logged.contains_key(*id))
        .take(5)
        .collect();
    let extra: Vec<_> = logged
        .keys()
        .filter(|id| !seen.answered.contains_key(*id))
        .take(5)
        .collect();
    let differ: Vec<_> = seen
        .answered
        .iter()
        .filter(|(id, s)| logged.get(*id).is_some_and(|l| l != *s))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "answers without a usage row: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "usage rows for requests nobody saw answered: {extra:?}"
    );
    assert!(
        differ.is_empty(),
        "rows whose status differs from the answer: {differ:?}"
    );
    assert_eq!(logged.len(), seen.answered.len());

    // The aggregates agree: one try per answered request here (no worker
    // failed), in the per-minute stats and in the workers' running totals.
    let tries = db.sql("SELECT COUNT(*) FROM kiro_api.usage_log WHERE worker_id IS NOT NULL");
    let stats = db.sql("SELECT SUM(requests), SUM(failures) FROM kiro_api.worker_stats");
    let totals =
        db.sql("SELECT SUM(total_requests), MIN(avg_response_ms) > 0 FROM kiro_api.worker_nodes");
    assert_eq!(stats.trim(), format!("{}\t0", tries.trim()), "worker_stats");
    assert_eq!(
        totals.trim(),
        format!("{}\t1", tries.trim()),
        "worker totals"
    );
}

/// A replica killed with SIGKILL between requests has lost nothing: every
/// answer its clients saw in full is already in `usage_log` (the embedded
/// database; the rows are read back through a fresh replica's
/// `GET /api/v1/usage`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_between_requests_loses_no_usage_row() {
    let tmp = TempDir::new("gw-kill");
    let mut env = api::sqlite_env(&tmp);
    for (k, v) in gw::FAST {
        env.push((k.to_string(), v.to_string()));
    }
    let mut replica = ApiProcess::spawn(support::free_port(), &env, tmp.0.join("api.log"));
    api::wait_healthy(replica.addr, Duration::from_secs(60)).await;
    let _worker = WorkerProcess::spawn(
        "render",
        replica.addr,
        &["--work-ms", "1"],
        tmp.0.join("w.log"),
    );
    gw::wait_online(replica.addr, "render", 1).await;
    let key = gw::create_key(&env, "kill");
    let mut tasks = Vec::new();
    for c in 0..8 {
        let (addr, key) = (replica.addr, key.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..50 {
                let id = format!("k{c}-{n}");
                let r = gw::dispatch(
                    addr,
                    "POST",
                    "/api/v1/render",
                    Some(&key),
                    &[("x-request-id", &id)],
                    "{}",
                )
                .await;
                assert_eq!(r.status, 200);
                ids.push(id);
            }
            ids
        }));
    }
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.expect("client"));
    }
    // Between requests: nothing in flight. No grace, no flush.
    replica.child.kill().expect("SIGKILL");
    let _ = replica.child.wait();

    let fresh = ApiProcess::spawn(support::free_port(), &env, tmp.0.join("api2.log"));
    api::wait_healthy(fresh.addr, Duration::from_secs(60)).await;
    let r = gw::dispatch(
        fresh.addr,
        "GET",
        "/api/v1/usage?perPage=1000",
        Some(&key),
        &[],
        "",
    )
    .await;
    let v = r.json();
    let rows = v["data"]["rows"].as_array().expect("rows");
    let logged: Vec<String> = rows
        .iter()
        .map(|r| r["requestId"].as_str().unwrap_or("").to_owned())
        .collect();
    let missing: Vec<&String> = answered.iter().filter(|id| !logged.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "answered but not logged after a SIGKILL: {missing:?}"
    );
    answered.sort();
    let mut logged = logged;
    logged.sort();
    assert_eq!(logged.len(), answered.len());
    assert_eq!(logged, answered);
}
