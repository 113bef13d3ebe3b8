//! The routing core over real sockets: strategies, outlier detection and
//! panic routing, as a user of the balancer sees them (which backend
//! answered, what `/lb/status` says), never by peeking inside.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::Value;
use support::wire::{Answer, RawBackend, ok_with};
use support::*;

/// The status entry of the backend at `addr`.
fn backend_status(status: &Value, addr: std::net::SocketAddr) -> Value {
    status["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["name"] == addr.to_string()))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A raw backend that answers every request with 503 (health probes get
/// 200: its checks pass, its answers fail) until `fixed` is set, then 200.
async fn failing_backend(name: &'static str, fixed: Arc<AtomicBool>) -> RawBackend {
    RawBackend::start(move |_| {
        let header = format!("X-Backend: {name}\r\n");
        if fixed.load(Ordering::SeqCst) {
            Answer::keep(ok_with(&header, b"fixed"))
        } else {
            let body = "unavailable";
            Answer::keep(
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\n{header}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        }
    })
    .await
}

fn env(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// One GET from `ip`; (status, answering backend, body).
async fn ask(lb: &TestBalancer, ip: IpAddr, path: &str) -> (StatusCode, String, Value) {
    let r = get_from(ip, lb.addr, path).await.expect("a response");
    let who = r.backend().unwrap_or("").to_owned();
    (r.status, who, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_get_504_and_eject_nothing_and_other_clients_keep_being_served() {
    let backends = backends(3).await;
    let lb = TestBalancer::start(&env(&[
        ("BACKEND_HOSTS", &hosts(&backends)),
        ("HEALTH_INTERVAL_SECS", "1"),
        ("UPSTREAM_TIMEOUT_SECS", "1"),
    ]))
    .await;
    lb.wait_healthy(3).await;
    let before = placement(lb.addr, 100).await;
    let slow_client = client_ip(5_000);

    let (status, _, body) = ask(&lb, slow_client, "/slow?ms=2500").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"], "the backend did not answer in time");
    let s = lb.status().await;
    for b in s["backends"].as_array().unwrap() {
        assert_eq!(
            (b["state"].as_str(), b["ejections"].as_u64()),
            (Some("up"), Some(0)),
            "{b}"
        );
    }

    // Ten at once from the same client, while everyone else keeps asking.
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let addr = lb.addr;
            tokio::spawn(async move { get_from(slow_client, addr, "/slow?ms=2500").await })
        })
        .collect();
    let during = placement(lb.addr, 100).await;
    for s in slow {
        let r = s.await.unwrap().expect("an answer");
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(
        during, before,
        "other clients stay where they were, all served"
    );
    let s = lb.status().await;
    for b in s["backends"].as_array().unwrap() {
        assert_eq!(
            (b["state"].as_str(), b["ejections"].as_u64()),
            (Some("up"), Some(0)),
            "{b}"
        );
    }
    assert_eq!(placement(lb.addr, 100).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_then_half_open_then_ejected_for_longer_then_restored() {
    let fixed = Arc::new(AtomicBool::new(false));
    let bad = failing_backend("bad", fixed.clone()).await;
    let good = TestBackend::start("good", "127.0.0.1:0".parse().unwrap()).await;
    let lb = TestBalancer::start(&env(&[
        ("BACKEND_HOSTS", &format!("{},{}", bad.addr, good.addr)),
        ("HEALTH_INTERVAL_SECS", "3600"),
        ("OUTLIER_CONSECUTIVE_FAILURES", "3"),
        ("OUTLIER_BASE_EJECTION_SECS", "2"),
    ]))
    .await;
    lb.wait_healthy(2).await;

    // A client whose requests go to the failing backend: its first 503 is
    // the first failure of the streak.
    let mut client = None;
    for i in 0..200 {
        let (status, who, _) = ask(&lb, client_ip(i), "/x").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(who, "bad");
            client = Some(client_ip(i));
            break;
        }
    }
    let client = client.expect("some client lands on the failing backend");
    for _ in 0..2 {
        let (status, who, _) = ask(&lb, client, "/x").await;
        assert_eq!(
            (status, who.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "bad")
        );
    }
    let b = backend_status(&lb.status().await, bad.addr);
    assert_eq!(b["state"], "ejected", "{b}");
    assert_eq!(b["ejections"], 1, "{b}");
    assert_eq!(b["ejection_reason"], "answered 503", "{b}");
    let first_for = b["ejected_for_secs"].as_u64().unwrap();
    // Meanwhile its clients are served by the next candidate.
    let (status, who, _) = ask(&lb, client, "/x").await;
    assert_eq!((status, who.as_str()), (StatusCode::OK, "good"));

    // The ejection runs out: half-open, and one request decides.
    wait_for("half-open", Duration::from_secs(10), || async {
        (backend_status(&lb.status().await, bad.addr)["state"] == "half-open").then_some(())
    })
    .await;
    let (status, who, _) = ask(&lb, client, "/x").await;
    assert_eq!(
        (status, who.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "bad"),
        "the probe"
    );
    let b = backend_status(&lb.status().await, bad.addr);
    assert_eq!(
        (b["state"].as_str(), b["ejections"].as_u64()),
        (Some("ejected"), Some(2)),
        "{b}"
    );
    assert!(
        b["ejected_for_secs"].as_u64().unwrap() > first_for,
        "the second ejection is longer: {b} after {first_for} s"
    );

    // Fixed: the next half-open request restores it, and its client is back.
    fixed.store(true, Ordering::SeqCst);
    wait_for("half-open again", Duration::from_secs(15), || async {
        (backend_status(&lb.status().await, bad.addr)["state"] == "half-open").then_some(())
    })
    .await;
    let (status, who, _) = ask(&lb, client, "/x").await;
    assert_eq!((status, who.as_str()), (StatusCode::OK, "bad"));
    let b = backend_status(&lb.status().await, bad.addr);
    assert_eq!(b["state"], "up", "{b}");
    let (_, who, _) = ask(&lb, client, "/x").await;
    assert_eq!(who, "bad", "the client is back on its own backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_half_the_backends_are_ejected_and_below_the_threshold_traffic_goes_everywhere() {
    for (max_percent, ejected, panic) in [("50", 2, false), ("100", 3, true)] {
        let never = Arc::new(AtomicBool::new(false));
        let bad = [
            failing_backend("bad1", never.clone()).await,
            failing_backend("bad2", never.clone()).await,
            failing_backend("bad3", never.clone()).await,
        ];
        let good = TestBackend::start("good", "127.0.0.1:0".parse().unwrap()).await;
        let hosts = format!(
            "{},{},{},{}",
            bad[0].addr, bad[1].addr, bad[2].addr, good.addr
        );
        let lb = TestBalancer::start(&env(&[
            ("BACKEND_HOSTS", &hosts),
            ("HEALTH_INTERVAL_SECS", "3600"),
            ("OUTLIER_CONSECUTIVE_FAILURES", "1"),
            ("OUTLIER_BASE_EJECTION_SECS", "600"),
            ("OUTLIER_MAX_EJECTION_PERCENT", max_percent),
        ]))
        .await;
        lb.wait_healthy(4).await;
        let mut answered_by = HashMap::new();
        for i in 0..200 {
            let (status, who, body) = ask(&lb, client_ip(i), "/x").await;
            assert!(
                !who.is_empty(),
                "max {max_percent}%: the balancer answered itself ({status} {body}): traffic must flow"
            );
            *answered_by.entry(who).or_insert(0) += 1;
        }
        let s = lb.status().await;
        let out = s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["state"] == "ejected")
            .count();
        assert_eq!(out, ejected, "max {max_percent}%: {s}");
        assert_eq!(s["routing"]["panic"], panic, "max {max_percent}%: {s}");
        if panic {
            // Panic routing: the ejected backends get their clients again.
            assert!(answered_by.len() == 4, "{answered_by:?}");
        }
    }
}

/// The backends' names in the order `n` requests from one client met them.
async fn sequence(lb: &TestBalancer, n: usize) -> Vec<String> {
    let mut c = Client::connect_from(client_ip(1), lb.addr).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = c.get("/seq").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        out.push(r.backend().unwrap().to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_smooth_weighted_round_robin_give_exact_sequences() {
    let backends = backends(3).await;
    let lb = TestBalancer::start(&env(&[
        ("BACKEND_HOSTS", &hosts(&backends)),
        ("LB_STRATEGY", "round-robin"),
    ]))
    .await;
    lb.wait_healthy(3).await;
    let s = lb.status().await;
    assert_eq!(
        (
            s["routing"]["strategy"].as_str(),
            s["routing"]["sticky"].as_bool()
        ),
        (Some("round-robin"), Some(false))
    );
    let seq = sequence(&lb, 9).await;
    for (i, b) in seq.iter().enumerate() {
        assert_eq!(b, &seq[i % 3], "period 3: {seq:?}");
    }
    let mut first: Vec<&String> = seq[..3].iter().collect();
    first.sort();
    first.dedup();
    assert_eq!(first.len(), 3, "each in turn: {seq:?}");

    let weighted = format!(
        "{}=5,{}=1,{}=1",
        backends[0].addr, backends[1].addr, backends[2].addr
    );
    let lb = TestBalancer::start(&env(&[
        ("BACKEND_HOSTS", &weighted),
        ("LB_STRATEGY", "weighted-round-robin"),
    ]))
    .await;
    lb.wait_healthy(3).await;
    let seq = sequence(&lb, 14).await;
    // a: weight 5; b: the first weight-1 backend met, c: the other.
    let b = seq
        .iter()
        .find(|n| **n != backends[0].name)
        .unwrap()
        .clone();
    let letters: String = seq
        .iter()
        .map(|n| {
            if *n == backends[0].name {
                'a'
            } else if *n == b {
                'b'
            } else {
                'c'
            }
        })
        .collect();
    assert_eq!(letters, "aabacaaaabacaa", "{seq:?}");
}

/// Per backend, how many requests a closed-loop load of `loops` clients
/// running for `run` got.
async fn load_split(lb: &TestBalancer, loops: u32, run: Duration) -> HashMap<String, u32> {
    let tasks: Vec<_> = (0..loops)
        .map(|i| {
            let addr = lb.addr;
            tokio::spawn(async move {
                let mut c = Client::connect_from(client_ip(100 + i), addr)
                    .await
                    .unwrap();
                let mut seen = HashMap::new();
                let end = Instant::now() + run;
                while Instant::now() < end {
                    let r = c.get("/work").await.expect("an answer");
                    assert_eq!(r.status, StatusCode::OK);
                    *seen.entry(r.backend().unwrap().to_owned()).or_insert(0u32) += 1;
                }
                seen
            })
        })
        .collect();
    let mut total = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_a_backend_holding_long_requests() {
    let backends = backends(3).await;
    backends[0].set_delay(Duration::from_millis(1500));
    let lb = TestBalancer::start(&env(&[
        ("BACKEND_HOSTS", &hosts(&backends)),
        ("LB_STRATEGY", "least-connections"),
    ]))
    .await;
    lb.wait_healthy(3).await;
    let split = load_split(&lb, 12, Duration::from_secs(3)).await;
    let total: u32 = split.values().sum();
    let slow = split.get("b1").copied().unwrap_or(0);
    assert!(
        slow * 10 < total,
        "the busy backend got {slow} of {total}: {split:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_time_sends_clearly_less_to_a_backend_slowed_by_50_ms() {
    let backends = backends(3).await;
    backends[0].set_delay(Duration::from_millis(50));
    let lb = TestBalancer::start(&env(&[
        ("BACKEND_HOSTS", &hosts(&backends)),
        ("LB_STRATEGY", "least-time"),
    ]))
    .await;
    lb.wait_healthy(3).await;
    let split = load_split(&lb, 6, Duration::from_secs(3)).await;
    let total: u32 = split.values().sum();
    let slow = split.get("b1").copied().unwrap_or(0);
    // Round robin would give it a third; least-time far less.
    assert!(
        slow * 10 < total,
        "the slow backend got {slow} of {total}: {split:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_queue_follows_the_backends_queue_endpoints() {
    let backends = backends(3).await;
    for (b, q) in backends.iter().zip([50, 0, 50]) {
        b.set_queue(q);
    }
    let lb = TestBalancer::start(&env(&[
        ("BACKEND_HOSTS", &hosts(&backends)),
        ("LB_STRATEGY", "least-queue"),
        ("QUEUE_POLL_MS", "100"),
    ]))
    .await;
    lb.wait_healthy(3).await;
    wait_for("the first poll", Duration::from_secs(10), || async {
        (sequence(&lb, 1).await[0] == "b2").then_some(())
    })
    .await;
    assert!(sequence(&lb, 20).await.iter().all(|b| b == "b2"));

    // The queues change: the requests follow.
    backends[1].set_queue(50);
    backends[2].set_queue(0);
    wait_for(
        "a poll that sees b3 empty",
        Duration::from_secs(10),
        || async { (sequence(&lb, 1).await[0] == "b3").then_some(()) },
    )
    .await;
    assert!(sequence(&lb, 20).await.iter().all(|b| b == "b3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_bounded_spreads_one_hot_client_while_the_others_keep_their_backends() {
    let backends = backends(4).await;
    let lb = TestBalancer::start(&env(&[
        ("BACKEND_HOSTS", &hosts(&backends)),
        ("LB_STRATEGY", "maglev-bounded"),
        ("HASH_BALANCE_FACTOR", "1.25"),
    ]))
    .await;
    lb.wait_healthy(4).await;
    let s = lb.status().await;
    assert_eq!(s["routing"]["sticky"], true);
    let before = placement(lb.addr, 100).await;
    let hot = client_ip(9_000);
    let (_, owner, _) = ask(&lb, hot, "/whoami").await;

    const HOT: usize = 12;
    let burst: Vec<_> = (0..HOT)
        .map(|_| {
            let addr = lb.addr;
            tokio::spawn(async move { get_from(hot, addr, "/slow?ms=1500").await })
        })
        .collect();
    // While the burst is in flight, everybody else asks again.
    wait_for("the burst in flight", Duration::from_secs(5), || async {
        let s = lb.status().await;
        (s["totals"]["active"].as_u64()? >= HOT as u64).then_some(())
    })
    .await;
    let during = placement(lb.addr, 100).await;
    let mut served = HashMap::new();
    for b in burst {
        let r = b.await.unwrap().expect("an answer");
        assert_eq!(r.status, StatusCode::OK);
        *served.entry(r.backend().unwrap().to_owned()).or_insert(0) += 1;
    }
    // The bound for 12 in flight over 4 equal backends: ceil(13 x 1.25 / 4).
    let bound = 5;
    assert!(
        served.get(&owner).copied().unwrap_or(0) <= bound,
        "{served:?}"
    );
    assert!(served.len() > 1, "the hot client spread out: {served:?}");
    // The hot client's requests spread about evenly, so every backend stays
    // under the bound and its own clients stay: at most a handful may meet
    // a backend at the bound at the moment they ask.
    let kept = before.iter().filter(|(ip, b)| during[*ip] == **b).count();
    assert!(
        kept * 100 >= before.len() * 95,
        "the other clients keep their backends: {kept} of {}",
        before.len()
    );
}
