//! The worker registry over real sockets, on both databases: the embedded
//! SQLite file and a real MariaDB started by the test.
//!
//! Each scenario is one async function run twice (`*_sqlite`, `*_mysql`).

#[path = "support/api.rs"]
mod api;
#[path = "support/mariadb.rs"]
mod mariadb;
mod support;

use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use api::{Instance, TempDir, json};
use mariadb::MariaDb;

/// A database for one test, kept alive as long as the test runs.
enum Db {
    Sqlite(TempDir),
    MySql(MariaDb),
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(TempDir::new("registry"))
    }

    fn mysql() -> Option<Db> {
        MariaDb::start().map(Db::MySql)
    }

    fn kind(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::MySql(_) => "mysql",
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        match self {
            Db::Sqlite(dir) => api::sqlite_env(dir),
            Db::MySql(m) => api::mysql_env(&m.url("kiro_api")),
        }
    }
}

async fn instances(db: &Db, n: usize, extra: &[(&str, &str)]) -> Vec<Instance> {
    let mut env = db.env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Instance::start(&env).await);
    }
    for i in &out {
        i.wait_healthy(Duration::from_secs(30)).await;
        let (_, health) = json(i.addr, "GET", "/health", None).await;
        assert_eq!(health["database"]["kind"], db.kind(), "{health}");
    }
    out
}

const W1: &str =
    r#"{"name":"render-1","host":"10.0.0.7","port":9001,"serviceType":"render","weight":3}"#;

/// Registered through instance 1, heartbeated through 3, listed through 5.
async fn shared_registry(db: Db) {
    let apis = instances(&db, 5, &[]).await;
    let a = |i: usize| apis[i - 1].addr;

    let (s, body) = json(a(1), "POST", "/api/v1/worker/register", Some(W1)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["heartbeatInterval"], 30000);
    let id = body["data"]["workerId"].as_i64().expect("workerId");

    // Re-registering the same host:port updates, never duplicates.
    let again = W1.replace("render-1", "render-one");
    let (s, body) = json(a(2), "POST", "/api/v1/worker/register", Some(&again)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["workerId"].as_i64(), Some(id));

    let hb = json!({"workerId": id, "status": "busy", "currentConnections": 7,
                    "cpuUsage": 42.5, "memoryUsage": 61.0})
    .to_string();
    let (s, body) = json(a(3), "POST", "/api/v1/worker/heartbeat", Some(&hb)).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let (s, body) = json(a(5), "GET", "/api/v1/workers?serviceType=render", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let list = body["data"].as_array().expect("data array");
    assert_eq!(list.len(), 1, "{body}");
    let w = &list[0];
    assert_eq!(w["id"].as_i64(), Some(id));
    assert_eq!(w["name"], "render-one");
    assert_eq!(w["status"], "busy");
    assert_eq!(w["currentConnections"], 7);
    assert_eq!(w["cpuUsage"], 42.5);
    assert_eq!(w["weight"], 3);

    let (_, body) = json(a(4), "GET", "/api/v1/workers?status=online", None).await;
    assert_eq!(body["data"].as_array().map(Vec::len), Some(0), "{body}");
    let (_, body) = json(a(4), "GET", "/api/v1/workers?serviceType=parse", None).await;
    assert_eq!(body["data"].as_array().map(Vec::len), Some(0), "{body}");
    let (s, body) = json(a(4), "GET", &format!("/api/v1/workers/{id}"), None).await;
    assert_eq!(
        (s, &body["data"]["host"]),
        (StatusCode::OK, &json!("10.0.0.7"))
    );

    let (s, _) = json(
        a(2),
        "POST",
        "/api/v1/worker/heartbeat",
        Some(r#"{"workerId":999999}"#),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, _) = json(a(1), "DELETE", &format!("/api/v1/workers/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = json(a(5), "GET", &format!("/api/v1/workers/{id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = json(a(3), "DELETE", &format!("/api/v1/workers/{id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    for i in apis {
        i.stop().await;
    }
}

/// Every bad payload gets its 4xx naming the field, and the table is unchanged.
async fn bad_input(db: Db) {
    let apis = instances(&db, 1, &[("API_MAX_BODY_BYTES", "2048")]).await;
    let a = apis[0].addr;
    let (s, body) = json(a, "POST", "/api/v1/worker/register", Some(W1)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let id = body["data"]["workerId"].as_i64().expect("id");
    let before = json(a, "GET", "/api/v1/workers", None).await.1["data"].clone();

    let long_name = "n".repeat(129);
    let huge =
        json!({"name": "x".repeat(4096), "host": "h", "port": 1, "serviceType": "s"}).to_string();
    let reg = |over: Value| {
        let mut v: Value = serde_json::from_str(W1).expect("W1");
        if let (Some(m), Value::Object(o)) = (v.as_object_mut(), over) {
            for (k, val) in o {
                if val.is_null() {
                    m.remove(&k);
                } else {
                    m.insert(k, val);
                }
            }
        }
        v.to_string()
    };
    let register_cases: Vec<(String, u16, &str)> = vec![
        ("{\"name\": ".into(), 400, "body"),
        ("[1,2]".into(), 400, "body"),
        (reg(json!({"name": null})), 400, "name"),
        (reg(json!({"name": long_name})), 400, "name"),
        (reg(json!({"name": 12})), 400, "name"),
        (reg(json!({"host": null})), 400, "host"),
        (reg(json!({"host": "bad host"})), 400, "host"),
        (reg(json!({"port": "9001"})), 400, "port"),
        (reg(json!({"port": 0})), 400, "port"),
        (reg(json!({"port": 70000})), 400, "port"),
        (reg(json!({"port": 90.5})), 400, "port"),
        (reg(json!({"serviceType": null})), 400, "serviceType"),
        (reg(json!({"serviceType": "a/b"})), 400, "serviceType"),
        (reg(json!({"weight": 0})), 400, "weight"),
        (reg(json!({"weight": "heavy"})), 400, "weight"),
        (
            reg(json!({"host": "10.0.0.8", "port": 9002, "maxConnections": -1})),
            400,
            "maxConnections",
        ),
        (huge, 413, "body"),
    ];
    for (payload, code, field) in &register_cases {
        let (s, body) = json(a, "POST", "/api/v1/worker/register", Some(payload)).await;
        assert_eq!(s.as_u16(), *code, "{payload:.80} -> {body}");
        assert_eq!(body["field"], *field, "{payload:.80} -> {body}");
        assert_eq!(body["success"], false);
    }
    let heartbeat_cases = [
        (json!({"status": "busy"}), "workerId"),
        (json!({"workerId": "1"}), "workerId"),
        (json!({"workerId": 0}), "workerId"),
        (json!({"workerId": id, "status": "sleeping"}), "status"),
        (json!({"workerId": id, "cpuUsage": 101}), "cpuUsage"),
        (
            json!({"workerId": id, "memoryUsage": "lots"}),
            "memoryUsage",
        ),
        (
            json!({"workerId": id, "currentConnections": -1}),
            "currentConnections",
        ),
    ];
    for (payload, field) in &heartbeat_cases {
        let (s, body) = json(
            a,
            "POST",
            "/api/v1/worker/heartbeat",
            Some(&payload.to_string()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{payload} -> {body}");
        assert_eq!(body["field"], *field, "{payload} -> {body}");
    }
    // Wrong content type, bad ids and filters.
    let mut c = support::Client::connect(a).await.expect("connect");
    let r = c
        .send(
            "POST",
            "/api/v1/worker/register",
            &[("content-type", "text/plain")],
            W1.into(),
        )
        .await
        .expect("send");
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for (path, field) in [
        ("/api/v1/workers/abc", "id"),
        ("/api/v1/workers/-4", "id"),
        ("/api/v1/workers?status=sleeping", "status"),
        ("/api/v1/workers?serviceType=a%2Fb", "serviceType"),
    ] {
        let (s, body) = json(a, "GET", path, None).await;
        assert_eq!(
            (s, &body["field"]),
            (StatusCode::BAD_REQUEST, &json!(field)),
            "{path}"
        );
    }
    let (s, _) = json(a, "DELETE", "/api/v1/workers/abc", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let after = json(a, "GET", "/api/v1/workers", None).await.1["data"].clone();
    assert_eq!(before, after, "a refused request changed the table");
    for i in apis {
        i.stop().await;
    }
}

/// A silent worker goes offline by the sweep; a heartbeat brings it back.
async fn offline_sweep(db: Db) {
    let apis = instances(
        &db,
        3,
        &[("WORKER_TIMEOUT_SECS", "1"), ("WORKER_SWEEP_SECS", "1")],
    )
    .await;
    let (_, body) = json(apis[0].addr, "POST", "/api/v1/worker/register", Some(W1)).await;
    let id = body["data"]["workerId"].as_i64().expect("id");
    let path = format!("/api/v1/workers/{id}");
    support::wait_for("worker offline", Duration::from_secs(10), || async {
        let (_, b) = json(apis[1].addr, "GET", &path, None).await;
        (b["data"]["status"] == "offline").then_some(())
    })
    .await;
    let hb = json!({"workerId": id}).to_string();
    let (s, body) = json(apis[2].addr, "POST", "/api/v1/worker/heartbeat", Some(&hb)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, b) = json(apis[0].addr, "GET", &path, None).await;
    assert_eq!(b["data"]["status"], "online");
    for i in apis {
        i.stop().await;
    }
}

macro_rules! on_both {
    ($scenario:ident, $sqlite:ident, $mysql:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $scenario(Db::sqlite()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mysql() {
            let Some(db) = tokio::task::spawn_blocking(Db::mysql).await.expect("start") else {
                return;
            };
            $scenario(db).await;
        }
    };
}

on_both!(
    shared_registry,
    shared_registry_sqlite,
    shared_registry_mysql
);
on_both!(bad_input, bad_input_sqlite, bad_input_mysql);
on_both!(offline_sweep, offline_sweep_sqlite, offline_sweep_mysql);

/// `X-Instance-Id` on every response, the status page, `/api/client-ip`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_endpoints() {
    let db = Db::sqlite();
    let mut env = db.env();
    env.push(("INSTANCE_ID".into(), "api-test-7".into()));
    let inst = Instance::start(&env).await;
    inst.wait_healthy(Duration::from_secs(30)).await;
    let a = inst.addr;
    for (path, code) in [("/health", 200), ("/nope", 404), ("/api/v1/workers/x", 400)] {
        let r = support::get(a, path).await.expect("get");
        assert_eq!(r.status.as_u16(), code, "{path}");
        assert_eq!(r.headers["x-instance-id"], "api-test-7", "{path}");
    }
    let (_, body) = json(a, "POST", "/api/v1/worker/register", Some(W1)).await;
    let id = body["data"]["workerId"].as_i64().expect("id");
    let other = W1.replace("9001", "9002");
    json(a, "POST", "/api/v1/worker/register", Some(&other)).await;
    let hb = json!({"workerId": id, "status": "busy"}).to_string();
    json(a, "POST", "/api/v1/worker/heartbeat", Some(&hb)).await;

    let page = support::get(a, "/status.html").await.expect("page");
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8_lossy(&page.body);
    for needle in [
        "api-test-7",
        "sqlite",
        "id=\"db-state\">ok<",
        "st-busy\">busy</span></td><td data-label=\"Count\" class=\"num\">1<",
        "st-online\">online</span></td><td data-label=\"Count\" class=\"num\">1<",
        &format!("pid {}", std::process::id()),
    ] {
        assert!(
            html.contains(needle),
            "status page lacks {needle:?}:\n{html}"
        );
    }

    // Loopback is trusted by default: the balancer's header is believed.
    let mut c = support::Client::connect(a).await.expect("connect");
    let r = c
        .send(
            "GET",
            "/api/client-ip",
            &[("x-forwarded-for", "198.51.100.4, 203.0.113.5")],
            Default::default(),
        )
        .await
        .expect("client-ip");
    let v = r.json();
    assert_eq!(v["ip"], "203.0.113.5", "{v}");
    assert_eq!(v["forwarded_for"], "198.51.100.4, 203.0.113.5");
    assert_eq!(v["instance"], "api-test-7");
    assert!(
        v["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{v}"
    );
    inst.stop().await;

    // From a peer that is not trusted, the header is ignored.
    env.push(("TRUSTED_PROXIES".into(), "10.0.0.0/8".into()));
    let inst = Instance::start(&env).await;
    let mut c = support::Client::connect(inst.addr).await.expect("connect");
    let r = c
        .send(
            "GET",
            "/api/client-ip",
            &[("x-forwarded-for", "203.0.113.5")],
            Default::default(),
        )
        .await
        .expect("client-ip");
    assert_eq!(r.json()["ip"], "127.0.0.1");
    inst.stop().await;
}
