//! Rate limiting per client key over real sockets: a burst above the
//! limit gets 429 with `Retry-After` and a JSON body, the same on the fast
//! path and on hyper's (one rule, one place: the driver); a client within
//! its rate is never limited; many distinct addresses leave nothing behind
//! once their buckets have filled up again; and the limiter shows in
//! `/lb/stats` and `/metrics`.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::wire::{self, Wire};
use support::*;

fn env(backends: &[TestBackend], rps: &str, burst: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BACKEND_HOSTS", hosts(backends)),
        ("HEALTH_INTERVAL_SECS", "1".into()),
        ("RATE_LIMIT_RPS", rps.into()),
        ("RATE_LIMIT_BURST", burst.into()),
    ]
}

/// A request that the fast path serves (a plain GET) and one that goes to
/// hyper (a chunked upload), both from `ip`, keep-alive.
fn requests() -> [(&'static str, Vec<u8>); 2] {
    [
        ("fast path", wire::get("/burst")),
        (
            "hyper path",
            format!(
                "POST /burst HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                wire::HOST
            )
            .into_bytes(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_limit_gets_429_with_retry_after_on_both_paths() {
    let backends = backends(2).await;
    // One token every 100 s: nothing refills during the test.
    let lb = TestBalancer::start(&env(&backends, "0.01", "5")).await;
    lb.wait_healthy(2).await;
    for (i, (path, request)) in requests().into_iter().enumerate() {
        let ip = client_ip(10 + i as u32);
        let mut w = Wire::connect_from(ip, lb.addr).await;
        let mut statuses = Vec::new();
        for _ in 0..8 {
            w.send(&request).await;
            let r = wire::recv(&mut w).await;
            if r.status == 429 {
                let retry: u64 = r
                    .head
                    .get("retry-after")
                    .unwrap_or_else(|| panic!("{path}: 429 without Retry-After: {r:?}"))
                    .parse()
                    .expect("Retry-After in seconds");
                assert!((1..=100).contains(&retry), "{path}: Retry-After {retry}");
                assert_eq!(r.head.get("content-type"), Some("application/json"));
                let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
                assert_eq!(body["status"], 429, "{path}: {body}");
                assert_eq!(body["retry_after_secs"], retry, "{path}: {body}");
                assert!(
                    body["error"]
                        .as_str()
                        .unwrap()
                        .contains("too many requests")
                );
            }
            statuses.push(r.status);
        }
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429], "{path}");
        // Another client is not affected.
        let r = get_from(client_ip(100 + i as u32), lb.addr, "/other")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{path}: another client");
    }
    let stats = get(lb.addr, "/lb/stats").await.unwrap().json();
    assert_eq!(stats["rate_limit"]["enabled"], true);
    assert_eq!(stats["rate_limit"]["limited_total"], 6);
    assert_eq!(stats["totals"]["rate_limited"], 6);
    let metrics = String::from_utf8(get(lb.addr, "/metrics").await.unwrap().body.to_vec()).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "hashgate_rate_limited_requests_total 6"),
        "{metrics}"
    );
    // No backend saw the limited requests.
    let answered: u64 = backends
        .iter()
        .map(|b| b.requests.load(std::sync::atomic::Ordering::SeqCst))
        .sum();
    let page = String::from_utf8(get(lb.addr, "/lb").await.unwrap().body.to_vec()).unwrap();
    assert!(page.contains("limited (429)"), "{page}");
    assert!(answered >= 12, "{answered}");
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_within_its_rate_is_never_limited() {
    let backends = backends(1).await;
    let lb = TestBalancer::start(&env(&backends, "20", "20")).await;
    lb.wait_healthy(1).await;
    let mut c = Client::connect_from(client_ip(7), lb.addr).await.unwrap();
    // Ten a second against twenty allowed: a pause of at least 100 ms
    // between requests refills two tokens, whatever the scheduler does.
    for i in 0..40 {
        let r = c.get("/steady").await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(lb.addr, "/lb/stats").await.unwrap().json()["rate_limit"]["limited_total"],
        0
    );
    lb.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_addresses_are_forgotten_once_their_buckets_are_full() {
    let backends = backends(1).await;
    // A bucket refills in 0.5 s: entries outlive their client by that
    // and the sweep's second at most.
    let lb = TestBalancer::start(&env(&backends, "10", "5")).await;
    lb.wait_healthy(1).await;
    let clients: Vec<IpAddr> = (0..2000).map(client_ip).collect();
    for chunk in clients.chunks(100) {
        let mut tasks = Vec::new();
        for &ip in chunk {
            let addr = lb.addr;
            tasks.push(tokio::spawn(async move { get_from(ip, addr, "/x").await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().status, 200);
        }
    }
    let tracked = get(lb.addr, "/lb/stats").await.unwrap().json()["rate_limit"]["tracked_clients"]
        .as_u64()
        .unwrap();
    assert!(tracked <= 2000, "{tracked}");
    wait_for(
        "the limiter's table to empty",
        Duration::from_secs(10),
        || async {
            let s = get(lb.addr, "/lb/stats").await.unwrap().json();
            (s["rate_limit"]["tracked_clients"] == 0).then_some(())
        },
    )
    .await;
    lb.stop().await.unwrap();
}
