//! Running the balancer day to day, against a real balancer and real
//! backends over loopback: the admin token (403 unset, 401 wrong, nothing
//! changes), drain and disable under a steady client loop with zero failed
//! requests, adding an unreachable backend, overrides surviving a restart
//! through LB_STATE_FILE, `/lb/route` agreeing with where 200 clients
//! really go, the client table, `/lb/config` and `/lb/stats`, and the log
//! switch.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::Value;
use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

fn env(backends: &[TestBackend], extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("BACKEND_HOSTS", hosts(backends)),
        ("HEALTH_INTERVAL_SECS", "1".into()),
        ("HEALTH_TIMEOUT_MS", "500".into()),
        ("HEALTH_RISE", "1".into()),
        ("HEALTH_FALL", "1".into()),
    ];
    v.extend_from_slice(extra);
    v
}

fn with_token() -> Vec<(&'static str, String)> {
    vec![("LB_ADMIN_TOKEN", TOKEN.into())]
}

/// One management call; `token` as given (None: no Authorization header).
async fn call(
    lb: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut c = Client::connect(lb).await.expect("connect");
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    c.send(method, path, &headers, body)
        .await
        .expect("management call")
}

fn backend_json(status: &Value, addr: SocketAddr) -> Value {
    status["backends"]
        .as_array()
        .and_then(|bs| {
            bs.iter()
                .find(|b| b["address"] == addr.to_string().as_str())
        })
        .cloned()
        .unwrap_or(Value::Null)
}

async fn route(lb: SocketAddr, ip: IpAddr) -> Value {
    get(lb, &format!("/lb/route?ip={ip}"))
        .await
        .expect("GET /lb/route")
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_nothing_changes() {
    let backends = backends(2).await;
    let target = backends[0].addr.to_string();
    let calls: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", format!("/lb/backends/{target}/disable"), None),
        ("POST", format!("/lb/backends/{target}/drain"), None),
        (
            "POST",
            format!("/lb/backends/{target}/weight"),
            Some(serde_json::json!({"weight": 5})),
        ),
        ("DELETE", format!("/lb/backends/{target}"), None),
        (
            "POST",
            "/lb/backends/add".into(),
            Some(serde_json::json!({"address": "127.0.0.1:1"})),
        ),
        (
            "POST",
            "/lb/log".into(),
            Some(serde_json::json!({"level": "debug"})),
        ),
        ("GET", "/lb/clients".into(), None),
    ];

    // Unset: 403 with a reason saying how to enable it.
    let lb = TestBalancer::start(&env(&backends, &[])).await;
    lb.wait_healthy(2).await;
    let before = get(lb.addr, "/lb/backends").await.unwrap().json();
    for (method, path, body) in &calls {
        let r = call(lb.addr, method, path, Some(TOKEN), body.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}: {r:?}");
        let why = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(why.contains("LB_ADMIN_TOKEN"), "{method} {path}: {why}");
    }
    assert_eq!(get(lb.addr, "/lb/backends").await.unwrap().json(), before);
    lb.stop().await.unwrap();

    // Set: a wrong or missing token gets 401, and nothing changes.
    let lb = TestBalancer::start(&env(&backends, &with_token())).await;
    lb.wait_healthy(2).await;
    let before = get(lb.addr, "/lb/backends").await.unwrap().json();
    for (method, path, body) in &calls {
        for token in [None, Some("wrong-token-0123456789"), Some("")] {
            let r = call(lb.addr, method, path, token, body.clone()).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}: {r:?}"
            );
            assert!(r.headers.contains_key("www-authenticate"));
        }
    }
    assert_eq!(get(lb.addr, "/lb/backends").await.unwrap().json(), before);
    // The token is never shown.
    let config = get(lb.addr, "/lb/config").await.unwrap();
    let text = String::from_utf8_lossy(&config.body);
    assert!(!text.contains(TOKEN), "{text}");
    assert_eq!(config.json()["management"]["admin_token"], "set");
    for page in ["/lb", "/lb/status", "/lb/stats", "/metrics", "/lb/backends"] {
        let body = get(lb.addr, page).await.unwrap().body;
        assert!(
            !String::from_utf8_lossy(&body).contains(TOKEN),
            "{page} shows the token"
        );
    }
    // With it: the change is made and shows.
    let r = call(
        lb.addr,
        "POST",
        &format!("/lb/backends/{}/disable", backends[0].addr),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["change"], "disabled");
    let s = lb.status().await;
    assert_eq!(backend_json(&s, backends[0].addr)["state"], "disabled");
    // Bad input: clear errors, nothing changes.
    for (path, body, want) in [
        ("/lb/backends/nope:1/disable", None, StatusCode::NOT_FOUND),
        (
            "/lb/backends/add",
            Some(serde_json::json!({"address": "no-port"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/lb/backends/add",
            Some(serde_json::json!({"adress": "127.0.0.1:1"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            &format!("/lb/backends/{}/weight", backends[1].addr),
            Some(serde_json::json!({"weight": 1000})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/lb/log",
            Some(serde_json::json!({"level": "loud"})),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let r = call(lb.addr, "POST", path, Some(TOKEN), body).await;
        assert_eq!(r.status, want, "{path}: {r:?}");
        assert!(r.json()["error"].is_string(), "{path}: {r:?}");
    }
    let r = call(
        lb.addr,
        "GET",
        &format!("/lb/backends/{}/disable", backends[0].addr),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    lb.stop().await.unwrap();
}

/// Clients sending requests in a loop, each from its own address, counting
/// answers by backend and failures, until told to stop.
struct Loop {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    seen: Arc<std::sync::Mutex<HashMap<IpAddr, Vec<String>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Loop {
    fn start(lb: SocketAddr, clients: &[IpAddr], path: &'static str) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let tasks = clients
            .iter()
            .map(|&ip| {
                let (stop, failed, sent, seen) =
                    (stop.clone(), failed.clone(), sent.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut conn = None;
                    while !stop.load(Ordering::SeqCst) {
                        if conn.is_none() {
                            conn = Client::connect_from(ip, lb).await.ok();
                        }
                        let Some(c) = conn.as_mut() else {
                            failed.fetch_add(1, Ordering::SeqCst);
                            continue;
                        };
                        sent.fetch_add(1, Ordering::SeqCst);
                        match c.get(path).await {
                            Ok(r) if r.status == StatusCode::OK => {
                                let b = r.backend().unwrap_or_default().to_owned();
                                let mut seen = seen.lock().unwrap();
                                let list: &mut Vec<String> = seen.entry(ip).or_default();
                                if list.last() != Some(&b) {
                                    list.push(b);
                                }
                            }
                            other => {
                                eprintln!("client {ip}: {other:?}");
                                failed.fetch_add(1, Ordering::SeqCst);
                                conn = None;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Loop {
            stop,
            failed,
            sent,
            seen,
            tasks,
        }
    }

    async fn wait_sent(&self, n: u64) {
        let sent = self.sent.clone();
        wait_for("requests sent", Duration::from_secs(20), || {
            let sent = sent.clone();
            async move { (sent.load(Ordering::SeqCst) >= n).then_some(()) }
        })
        .await;
    }

    async fn finish(self) -> (u64, u64, HashMap<IpAddr, Vec<String>>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("client task");
        }
        let seen = self.seen.lock().unwrap().clone();
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            seen,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_clients_to_their_next_candidate_with_no_failed_request() {
    let backends = backends(3).await;
    let lb = TestBalancer::start(&env(&backends, &with_token())).await;
    lb.wait_healthy(3).await;
    let name = |b: &TestBackend| b.addr.to_string();
    let target = &backends[1];

    // The clients on the target and their second candidate, before.
    let clients: Vec<IpAddr> = (0..60).map(client_ip).collect();
    let mut expected_next = HashMap::new();
    for &ip in &clients {
        let r = route(lb.addr, ip).await;
        if r["backend"] == name(target).as_str() {
            expected_next.insert(ip, r["order"][1]["name"].as_str().unwrap().to_owned());
        }
    }
    assert!(expected_next.len() >= 5, "some clients live on the target");

    let steady = Loop::start(lb.addr, &clients, "/whoami");
    steady.wait_sent(300).await;
    let r = call(
        lb.addr,
        "POST",
        &format!("/lb/backends/{}/drain", name(target)),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["change"], "draining (weight 0)");
    let at_drain = steady.sent.load(Ordering::SeqCst);
    steady.wait_sent(at_drain + 600).await;
    let (sent, failed, seen) = steady.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the drain"
    );

    let by_name: HashMap<String, &str> = backends
        .iter()
        .map(|b| (name(b), b.name.as_str()))
        .collect();
    for (ip, next) in &expected_next {
        let path = &seen[ip];
        assert_eq!(
            path.last().map(String::as_str),
            Some(by_name[next]),
            "client {ip} went {path:?}, expected to end on its next candidate {next}"
        );
    }
    for ip in clients.iter().filter(|ip| !expected_next.contains_key(ip)) {
        assert_eq!(
            seen[ip].len(),
            1,
            "client {ip} of another backend moved: {:?}",
            seen[ip]
        );
    }
    // Nothing in flight: drained, on /lb too.
    let s = wait_for("the target drained", Duration::from_secs(10), || async {
        let s = lb.status().await;
        (backend_json(&s, target.addr)["drained"] == true).then_some(s)
    })
    .await;
    assert_eq!(backend_json(&s, target.addr)["state"], "draining");
    let page = String::from_utf8(get(lb.addr, "/lb").await.unwrap().body.to_vec()).unwrap();
    assert!(
        page.contains(r#"<span class="badge draining">drained</span>"#),
        "{page}"
    );
    // Enable brings its clients back.
    call(
        lb.addr,
        "POST",
        &format!("/lb/backends/{}/enable", name(target)),
        Some(TOKEN),
        None,
    )
    .await;
    let ip = *expected_next.keys().next().unwrap();
    let r = get_from(ip, lb.addr, "/whoami").await.unwrap();
    assert_eq!(r.backend(), Some(target.name.as_str()));
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_lets_in_flight_requests_finish_and_takes_no_new_ones() {
    let backends = backends(2).await;
    let lb = TestBalancer::start(&env(&backends, &with_token())).await;
    lb.wait_healthy(2).await;
    let target = &backends[0];
    let ip = (0..500)
        .map(client_ip)
        .find(|ip| futures_ready_route(lb.addr, *ip, &target.addr.to_string()))
        .expect("a client on the target");
    let addr = lb.addr;
    let slow = tokio::spawn(async move { get_from(ip, addr, "/slow?ms=1500").await });
    wait_for(
        "the slow request in flight",
        Duration::from_secs(5),
        || async { (backend_json(&lb.status().await, target.addr)["active"] == 1).then_some(()) },
    )
    .await;
    let r = call(
        lb.addr,
        "POST",
        &format!("/lb/backends/{}/disable", target.addr),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Forty clients, some of them the target's, from the moment it is
    // disabled: none may reach it.
    let steady = Loop::start(
        lb.addr,
        &(0..40).map(client_ip).collect::<Vec<_>>(),
        "/whoami",
    );
    steady.wait_sent(400).await;
    let slow = slow.await.unwrap().expect("the slow request");
    assert_eq!(
        slow.status,
        StatusCode::OK,
        "the request in flight finished"
    );
    assert_eq!(slow.backend(), Some(target.name.as_str()));
    let (sent, failed, seen) = steady.finish().await;
    assert_eq!(failed, 0, "{failed} of {sent} failed");
    let reached: usize = seen
        .values()
        .map(|names| names.iter().filter(|n| **n == target.name).count())
        .sum();
    assert_eq!(
        reached, 0,
        "the disabled backend still answered ({reached} clients)"
    );
    assert_eq!(
        route(lb.addr, ip).await["backend"],
        backends[1].addr.to_string().as_str()
    );
    lb.stop().await.unwrap();
}

/// Whether `/lb/route` puts `ip` on `want` (blocking helper for `find`).
fn futures_ready_route(lb: SocketAddr, ip: IpAddr, want: &str) -> bool {
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(route(lb, ip))
        })
        .join()
        .unwrap()
    });
    r["backend"] == want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_unreachable_backend_shows_down_and_gets_nothing() {
    let backends = backends(2).await;
    let lb = TestBalancer::start(&env(&backends, &with_token())).await;
    lb.wait_healthy(2).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let r = call(
        lb.addr,
        "POST",
        "/lb/backends/add",
        Some(TOKEN),
        Some(serde_json::json!({"address": dead, "weight": 3})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = call(
        lb.addr,
        "POST",
        "/lb/backends/add",
        Some(TOKEN),
        Some(serde_json::json!({"address": dead})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "adding twice: {r:?}");
    let s = wait_for(
        "the added backend down",
        Duration::from_secs(10),
        || async {
            let s = lb.status().await;
            let b = s["backends"]
                .as_array()?
                .iter()
                .find(|b| b["name"] == dead.as_str())?
                .clone();
            (b["state"] == "down").then_some(s)
        },
    )
    .await;
    let added = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == dead.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (added["source"].as_str(), added["weight"].as_u64()),
        (Some("added"), Some(3))
    );
    let placed = placement(lb.addr, 150).await;
    assert!(
        placed.values().all(|b| b == "b1" || b == "b2"),
        "{placed:?}"
    );
    let listed = get(lb.addr, "/lb/backends").await.unwrap().json();
    let entry = listed["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == dead.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["source"], "added");
    // Removed again: gone.
    let r = call(
        lb.addr,
        "DELETE",
        &format!("/lb/backends/{dead}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(lb.status().await["backends"].as_array().unwrap().len(), 2);
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_survive_a_restart_with_a_state_file() {
    let backends = backends(3).await;
    let dir = std::env::temp_dir().join(format!("hashgate-ops-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("overrides.json");
    let _ = std::fs::remove_file(&file);
    let mut extra = with_token();
    extra.push(("LB_STATE_FILE", file.display().to_string()));
    let lb = TestBalancer::start(&env(&backends, &extra)).await;
    lb.wait_healthy(3).await;
    let dead = format!("127.0.0.1:{}", free_port());
    for (method, path, body) in [
        (
            "POST",
            format!("/lb/backends/{}/disable", backends[0].addr),
            None,
        ),
        (
            "POST",
            format!("/lb/backends/{}/weight", backends[1].addr),
            Some(serde_json::json!({"weight": 4})),
        ),
        ("DELETE", format!("/lb/backends/{}", backends[2].addr), None),
        (
            "POST",
            "/lb/backends/add".into(),
            Some(serde_json::json!({"address": dead})),
        ),
    ] {
        let r = call(lb.addr, method, &path, Some(TOKEN), body).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {r:?}");
    }
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        saved["backends"][backends[0].addr.to_string()]["disabled"],
        true
    );
    lb.stop().await.unwrap();

    let lb = TestBalancer::start(&env(&backends, &extra)).await;
    let s = lb.status().await;
    let names: Vec<&str> = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&backends[2].addr.to_string().as_str()),
        "removed stays removed: {names:?}"
    );
    assert!(names.contains(&dead.as_str()), "added is back: {names:?}");
    assert_eq!(backend_json(&s, backends[0].addr)["state"], "disabled");
    assert_eq!(backend_json(&s, backends[1].addr)["weight"], 4);
    let listed = get(lb.addr, "/lb/backends").await.unwrap().json();
    assert_eq!(
        listed["removed"][0]["name"],
        backends[2].addr.to_string().as_str()
    );
    // Enabling the removed one brings it back and is written too.
    call(
        lb.addr,
        "POST",
        &format!("/lb/backends/{}/enable", backends[2].addr),
        Some(TOKEN),
        None,
    )
    .await;
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(!saved.contains(&backends[2].addr.to_string()), "{saved}");
    lb.stop().await.unwrap();

    // A corrupt state file stops start-up, naming the variable.
    std::fs::write(&file, "{ this is not json").unwrap();
    let env_pairs: Vec<(String, String)> = env(&backends, &extra)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let config =
        hashgate::config::BalancerConfig::from_env(&hashgate::config::Env::from_pairs(env_pairs))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = hashgate::balancer::run(listener, config, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("LB_STATE_FILE"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_agrees_with_where_200_clients_really_go() {
    let backends = backends(5).await;
    let lb = TestBalancer::start(&env(&backends, &[])).await;
    lb.wait_healthy(5).await;
    let by_name: HashMap<String, String> = backends
        .iter()
        .map(|b| (b.addr.to_string(), b.name.clone()))
        .collect();
    // With one backend down the fallback order matters too.
    backends[3].set_healthy(false);
    wait_for("b4 down", Duration::from_secs(10), || async {
        (backend_json(&lb.status().await, backends[3].addr)["state"] == "down").then_some(())
    })
    .await;
    let placed = placement(lb.addr, 200).await;
    let mut moved = 0;
    for (ip, backend) in &placed {
        let r = route(lb.addr, *ip).await;
        let said = r["backend"].as_str().expect("a backend");
        assert_eq!(&by_name[said], backend, "{ip}: /lb/route says {said}: {r}");
        let order: Vec<&str> = r["order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(order.len(), 5, "the full order: {r}");
        if order[0] == backends[3].addr.to_string() {
            moved += 1;
            assert_eq!(
                order[1], said,
                "a client of the down backend is on its next candidate"
            );
        }
    }
    assert!(
        moved > 10,
        "some clients had the down backend first ({moved})"
    );
    let r = get(lb.addr, "/lb/route?ip=not-an-ip").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("/lb/route?ip=")
    );
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_table_stats_and_log_switch() {
    hashgate::telemetry::init("info");
    let backends = backends(2).await;
    let lb = TestBalancer::start(&env(
        &backends,
        &[
            ("LB_ADMIN_TOKEN", TOKEN.into()),
            ("CLIENT_TABLE_SIZE", "50".into()),
        ],
    ))
    .await;
    lb.wait_healthy(2).await;
    let placed = placement(lb.addr, 80).await;
    let mut c = Client::connect_from(client_ip(3), lb.addr).await.unwrap();
    for _ in 0..4 {
        c.get("/whoami").await.unwrap();
    }
    let r = call(lb.addr, "GET", "/lb/clients", Some(TOKEN), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    let clients = j["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 50, "bounded by CLIENT_TABLE_SIZE");
    assert_eq!(
        clients[0]["ip"],
        client_ip(3).to_string().as_str(),
        "newest first"
    );
    // Its placement request is long gone from a table of 50: these four.
    assert_eq!(clients[0]["requests"], 4);
    let by_name: HashMap<String, String> = backends
        .iter()
        .map(|b| (b.addr.to_string(), b.name.clone()))
        .collect();
    for entry in clients {
        let ip: IpAddr = entry["ip"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            by_name[entry["backend"].as_str().unwrap()],
            placed[&ip],
            "{entry}"
        );
    }
    let one = call(
        lb.addr,
        "GET",
        &format!("/lb/clients?ip={}", client_ip(3)),
        Some(TOKEN),
        None,
    )
    .await
    .json();
    assert_eq!(one["count"], 1);

    let stats = get(lb.addr, "/lb/stats").await.unwrap().json();
    let total: u64 = stats["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["responses"]["2xx"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 84);
    assert_eq!(stats["totals"]["responses"]["2xx"], 84);
    assert_eq!(stats["totals"]["success_rate"], 1.0);
    assert!(
        stats["totals"]["latency"]["p99_ms"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    assert_eq!(stats["totals"]["latency"]["samples"], 84);
    assert_eq!(stats["rate_limit"]["enabled"], false);
    assert_eq!(stats["window"]["secs"], 60);

    let r = call(
        lb.addr,
        "POST",
        "/lb/log",
        Some(TOKEN),
        Some(serde_json::json!({"level": "debug"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["filter"], "debug");
    assert_eq!(
        get(lb.addr, "/lb/config").await.unwrap().json()["management"]["log_filter"],
        "debug"
    );
    let r = call(
        lb.addr,
        "POST",
        "/lb/log",
        Some(TOKEN),
        Some(serde_json::json!({"filter": "info,hashgate=debug"})),
    )
    .await;
    assert_eq!(r.json()["previous"], "debug");
    let r = call(
        lb.addr,
        "POST",
        "/lb/log",
        Some(TOKEN),
        Some(serde_json::json!({"filter": "info,[[["})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    lb.stop().await.unwrap();
}
