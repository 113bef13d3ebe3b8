//! `CONNECT_FAILOVER_MS` over real sockets: a backend whose address stops
//! answering SYNs (a stopped Swarm task, a dead host) costs a request the
//! short failover time, not the whole connect timeout, when another
//! candidate remains; the last candidate still gets all of
//! `CONNECT_TIMEOUT_MS`.
//!
//! The blackhole is portable (no root, no firewall): a listener with a
//! backlog of 0 whose one queue slot is taken, so the kernel drops every
//! further SYN, as it does for a full accept queue. Timings are asserted
//! only against generous bounds; the Swarm test measures the real numbers.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::*;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Replaces `backend` by a listener on the same address that accepts
/// nothing and holds one connection in its queue: SYNs go unanswered.
async fn blackhole(backend: TestBackend) -> (TcpListener, TcpStream) {
    let addr = backend.addr;
    backend.kill().await;
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("rebind the backend's address");
    let listener = socket.listen(0).expect("listen");
    let filler = TcpStream::connect(addr).await.expect("fill the queue");
    // Proof that it is a blackhole: another connect gets nowhere.
    let probe = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
    assert!(probe.is_err(), "the full queue still answered a SYN");
    (listener, filler)
}

/// A balancer over `hosts` with these connect times, health checks out of
/// the way (one hour apart) so only the requests decide.
async fn balancer(hosts: &str, timeout_ms: u64, failover_ms: u64) -> TestBalancer {
    TestBalancer::start(&[
        ("BACKEND_HOSTS", hosts.to_owned()),
        ("HEALTH_INTERVAL_SECS", "3600".into()),
        ("CONNECT_TIMEOUT_MS", timeout_ms.to_string()),
        ("CONNECT_FAILOVER_MS", failover_ms.to_string()),
    ])
    .await
}

/// A GET of `/whoami` from `ip` on the fast path (a fresh connection), or
/// on hyper's (the same connection after a `/health` the balancer answers
/// itself): the answer and how long it took.
async fn timed_get(lb: SocketAddr, ip: IpAddr, hyper_path: bool) -> (Reply, Duration) {
    let mut client = Client::connect_from(ip, lb).await.expect("connect");
    if hyper_path {
        let health = client.get("/health").await.expect("/health");
        assert_eq!(health.status, StatusCode::OK);
    }
    let t0 = Instant::now();
    let reply = client.get("/whoami").await.expect("GET /whoami");
    (reply, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_backend_gives_way_to_the_next_candidate_early_on_both_paths() {
    let mut bs = backends(2).await;
    // A connect timeout long enough that waiting it out would fail the bound below.
    let lb = balancer(&hosts(&bs), 10_000, 200).await;
    lb.wait_healthy(2).await;
    let (a, b) = (bs[0].name.clone(), bs[1].name.clone());
    let places = placement(lb.addr, 40).await;
    let on_a: Vec<IpAddr> = places
        .iter()
        .filter(|(_, name)| **name == a)
        .map(|(ip, _)| *ip)
        .collect();
    assert!(on_a.len() >= 2, "no clients on {a}: {places:?}");

    let _hole = blackhole(bs.remove(0)).await;
    for (ip, hyper_path) in [(on_a[0], false), (on_a[1], true)] {
        let (reply, took) = timed_get(lb.addr, ip, hyper_path).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{ip} hyper={hyper_path}: {reply:?}"
        );
        assert_eq!(
            reply.backend(),
            Some(b.as_str()),
            "failed over to the key's next backend"
        );
        assert!(
            took < Duration::from_secs(5),
            "{ip} hyper={hyper_path}: answered after {took:?}, the connect timeout is 10 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_candidate_gets_the_whole_connect_timeout() {
    let mut bs = backends(1).await;
    let lb = balancer(&hosts(&bs), 1_000, 100).await;
    lb.wait_healthy(1).await;
    let _hole = blackhole(bs.remove(0)).await;
    let (reply, took) = timed_get(lb.addr, client_ip(1), false).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert!(
        took >= Duration::from_millis(1_000),
        "the only candidate gave up after {took:?}, before CONNECT_TIMEOUT_MS"
    );
}

#[test]
fn a_failover_time_above_the_connect_timeout_is_refused_by_name() {
    let env = hashgate::config::Env::from_pairs([
        ("CONNECT_TIMEOUT_MS".to_owned(), "500".to_owned()),
        ("CONNECT_FAILOVER_MS".to_owned(), "800".to_owned()),
    ]);
    let err = hashgate::config::BalancerConfig::from_env(&env)
        .expect_err("a failover time above the connect timeout")
        .to_string();
    assert!(err.contains("CONNECT_FAILOVER_MS"), "{err}");
}
