//! The database seam under stress: ten `api` processes migrating one empty
//! database at the same instant, the database going away and coming back
//! under a running instance, ten concurrent sweepers, and the password
//! staying out of logs, errors and pages.

#[path = "support/api.rs"]
mod api;
#[path = "support/mariadb.rs"]
mod mariadb;
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::StatusCode;

use api::{ApiProcess, Instance, TempDir, json};
use hashgate::config::Env;
use hashgate::store::workers::NewWorker;
use hashgate::store::{DbConfig, Store, now_ms};
use mariadb::MariaDb;

async fn mariadb() -> Option<MariaDb> {
    tokio::task::spawn_blocking(MariaDb::start)
        .await
        .expect("start MariaDB")
}

/// Ten real processes started together on an empty database all come up.
async fn ten_processes_at_once(env: Vec<(String, String)>, dir: &TempDir) {
    let ports = support::free_ports(10);
    let procs: Vec<ApiProcess> = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| ApiProcess::spawn(p, &env, dir.0.join(format!("api-{i}.log"))))
        .collect();
    for p in &procs {
        let limit = Duration::from_secs(60);
        let deadline = Instant::now() + limit;
        loop {
            let r = api::call(p.addr, "GET", "/health", None).await;
            if matches!(r, Ok((StatusCode::OK, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never healthy: {r:?}\n{}",
                p.addr,
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // All see the same (single) registry.
    let reg = r#"{"name":"w","host":"10.1.1.1","port":80,"serviceType":"parse"}"#;
    let (s, body) = json(procs[0].addr, "POST", "/api/v1/worker/register", Some(reg)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for p in &procs {
        let (_, b) = json(p.addr, "GET", "/api/v1/workers", None).await;
        assert_eq!(b["count"], 1, "{}: {b}", p.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_instances_migrate_one_empty_mysql_at_once() {
    let Some(db) = mariadb().await else { return };
    let dir = TempDir::new("ten-mysql");
    // The database itself does not exist yet: the instances create it.
    ten_processes_at_once(api::mysql_env(&db.url("fresh_db")), &dir).await;
    // Every migration in migrations/mysql, each applied once and completely
    // (a half-applied one would be a row with success = 0).
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/mysql"))
        .expect("migrations/mysql")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    let applied = db.sql("SELECT COUNT(*), SUM(success) FROM fresh_db._sqlx_migrations");
    assert_eq!(
        applied.trim(),
        format!("{files}\t{files}"),
        "each migration applied exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_instances_migrate_one_empty_sqlite_file_at_once() {
    let dir = TempDir::new("ten-sqlite");
    ten_processes_at_once(api::sqlite_env(&dir), &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_a_fast_503_and_recovery_needs_no_restart() {
    let Some(mut db) = mariadb().await else {
        return;
    };
    let inst = Instance::start(&api::mysql_env(&db.url("kiro_api"))).await;
    inst.wait_healthy(Duration::from_secs(30)).await;
    let reg = r#"{"name":"w","host":"10.1.1.2","port":81,"serviceType":"render"}"#;
    assert_eq!(
        json(inst.addr, "POST", "/api/v1/worker/register", Some(reg))
            .await
            .0,
        StatusCode::OK
    );

    tokio::task::block_in_place(|| db.stop());
    let t = Instant::now();
    support::wait_for("/health 503", Duration::from_secs(5), || async {
        let (s, b) = json(inst.addr, "GET", "/health", None).await;
        (s == StatusCode::SERVICE_UNAVAILABLE).then_some(b)
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(5));
    for (method, path, body) in [
        ("GET", "/api/v1/workers", None),
        ("POST", "/api/v1/worker/register", Some(reg)),
        (
            "POST",
            "/api/v1/worker/heartbeat",
            Some(r#"{"workerId":1}"#),
        ),
    ] {
        let t = Instant::now();
        let (s, b) = json(inst.addr, method, path, body).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{path}: {b}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{path} took {:?}",
            t.elapsed()
        );
        assert!(
            b["error"].as_str().unwrap_or("").contains("database"),
            "{b}"
        );
    }
    let (s, page) = json(inst.addr, "GET", "/status.html", None).await;
    assert_eq!(s, StatusCode::OK, "the status page still renders: {page}");

    tokio::task::block_in_place(|| db.restart());
    inst.wait_healthy(Duration::from_secs(30)).await;
    let (s, b) = json(inst.addr, "GET", "/api/v1/workers", None).await;
    assert_eq!(
        (s, &b["count"]),
        (StatusCode::OK, &serde_json::json!(1)),
        "{b}"
    );
    inst.stop().await;
}

/// A worker list read before the database went away is answered again
/// (stale-if-error, with its `Age`) while it is away, so an idempotent read
/// rides out a database restart (bench/chaos.sh's "MariaDB down" row); a
/// list never read, and every write, still get the fast 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_list_read_before_an_outage_is_answered_during_it() {
    let Some(mut db) = mariadb().await else {
        return;
    };
    let inst = Instance::start(&api::mysql_env(&db.url("kiro_api"))).await;
    inst.wait_healthy(Duration::from_secs(30)).await;
    let reg = r#"{"name":"w","host":"10.1.1.3","port":81,"serviceType":"render"}"#;
    let (s, b) = json(inst.addr, "POST", "/api/v1/worker/register", Some(reg)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, fresh) = json(inst.addr, "GET", "/api/v1/workers", None).await;
    assert_eq!(
        (s, &fresh["count"]),
        (StatusCode::OK, &serde_json::json!(1))
    );

    tokio::task::block_in_place(|| db.stop());
    let mut c = support::Client::connect(inst.addr).await.expect("connect");
    let t = Instant::now();
    let r = c
        .send("GET", "/api/v1/workers", &[], Bytes::new())
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(r.json(), fresh, "the list read before the outage");
    let age: u64 = r.headers["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 30, "Age: {age}");

    let (s, b) = json(inst.addr, "GET", "/api/v1/workers?status=offline", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "never read before: {b}");
    let (s, b) = json(inst.addr, "POST", "/api/v1/worker/register", Some(reg)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "a write: {b}");

    tokio::task::block_in_place(|| db.restart());
    inst.wait_healthy(Duration::from_secs(30)).await;
    let r = c
        .send("GET", "/api/v1/workers", &[], Bytes::new())
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers.get("age").is_none(), "fresh again");
    inst.stop().await;
}

/// Ten stores sweeping the same stale worker: exactly one marks it offline.
async fn sweep_exactly_once(env: Vec<(String, String)>) {
    let config = DbConfig::from_env(&Env::from_pairs(env)).expect("db config");
    let stores: Vec<Store> = (0..10)
        .map(|_| Store::open(config.clone()).expect("open"))
        .collect();
    stores[0].migrate().await.expect("migrate");
    let id = stores[0]
        .register_worker(&NewWorker {
            name: "quiet".into(),
            host: "10.9.9.9".into(),
            port: 7000,
            service_type: "render".into(),
            weight: 1,
            max_connections: 10,
        })
        .await
        .expect("register");
    for round in 0..2 {
        let cutoff = now_ms() + 1_000; // everything is stale
        let results =
            futures_util::future::join_all(stores.iter().map(|s| s.sweep_offline(cutoff))).await;
        let changed: Vec<i64> = results
            .into_iter()
            .flat_map(|r| r.expect("sweep"))
            .collect();
        let expected: &[i64] = if round == 0 { &[id] } else { &[] };
        assert_eq!(changed, expected, "round {round}");
    }
    let w = stores[3]
        .get_worker(id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(w.status, "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sweepers_mark_a_worker_offline_exactly_once_mysql() {
    let Some(db) = mariadb().await else { return };
    sweep_exactly_once(api::mysql_env(&db.url("sweep"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sweepers_mark_a_worker_offline_exactly_once_sqlite() {
    let dir = TempDir::new("sweep");
    sweep_exactly_once(api::sqlite_env(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_appears_in_logs_errors_or_pages() {
    let Some(db) = mariadb().await else { return };
    let dir = TempDir::new("secret");
    let secret = "Wrong-Secret-Pw-7731";
    let url = format!(
        "mysql://{}:{secret}@127.0.0.1:{}/kiro_api",
        mariadb::USER,
        db.port
    );
    let port = support::free_ports(1)[0];
    let p = ApiProcess::spawn(port, &api::mysql_env(&url), dir.0.join("api.log"));
    let body = support::wait_for("a 503 from /health", Duration::from_secs(20), || async {
        match api::call(p.addr, "GET", "/health", None).await {
            Ok((StatusCode::SERVICE_UNAVAILABLE, b)) => Some(b),
            _ => None,
        }
    })
    .await;
    assert!(
        body.to_string().contains("Access denied"),
        "the reason is shown: {body}"
    );
    let (_, list) = json(p.addr, "GET", "/api/v1/workers", None).await;
    let mut c = support::Client::connect(p.addr).await.expect("connect");
    let page = c.get("/status.html").await.expect("page");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (what, text) in [
        ("health", body.to_string()),
        ("list", list.to_string()),
        ("page", String::from_utf8_lossy(&page.body).into_owned()),
        ("log", p.log()),
    ] {
        assert!(
            !text.contains(secret),
            "password leaked into the {what}: {text}"
        );
    }
    assert!(
        p.log().contains("mysql://hashgate@127.0.0.1"),
        "log names the target: {}",
        p.log()
    );

    // A malformed URL stops start-up, names the variable, hides the password.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_api"))
        .env_clear()
        .env("DATABASE_URL", format!("mysql://u:{secret}@h:notaport/db"))
        .output()
        .expect("run api");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("DATABASE_URL") && !err.contains(secret),
        "{err}"
    );
}

/// `api healthcheck` (the container probe) exits 0 only while `/health` is 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand_follows_health() {
    let dir = TempDir::new("probe");
    let port = support::free_ports(1)[0];
    let probe = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_api"))
            .arg("healthcheck")
            .env_clear()
            .env("PORT", port.to_string())
            .output()
            .expect("run api healthcheck")
            .status
    };
    assert!(!probe().success(), "nothing listening yet");
    let p = ApiProcess::spawn(port, &api::sqlite_env(&dir), dir.0.join("api.log"));
    api::wait_healthy(p.addr, Duration::from_secs(30)).await;
    assert!(probe().success(), "{}", p.log());
}
