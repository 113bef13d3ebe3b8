//! Discovery against a real DNS server (dnsmasq, started by the test on
//! loopback, answering with Docker's TTL of 600 s): the backend set follows
//! the answer on our own refresh interval, 3 -> 6 -> 2 replicas, and is kept
//! when the server goes away; static names follow a changed address without
//! moving their clients.

#[path = "support/dns.rs"]
mod dns;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dns::Dnsmasq;
use support::*;

/// The `n`-th replica address, 127.0.0.<n>.
fn replica(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A port free on every one of `hosts` (all replicas listen on one port,
/// as `BACKEND_PORT` requires), and a backend named `r<n>` on each.
async fn replicas(hosts: &[u8]) -> (u16, Vec<TestBackend>) {
    'port: loop {
        let first = tokio::net::TcpListener::bind((replica(hosts[0]), 0))
            .await
            .expect("bind first replica");
        let port = first.local_addr().expect("addr").port();
        let mut out = vec![TestBackend::on(&format!("r{}", hosts[0]), first)];
        for &n in &hosts[1..] {
            match tokio::net::TcpListener::bind((replica(n), port)).await {
                Ok(l) => out.push(TestBackend::on(&format!("r{n}"), l)),
                Err(_) => continue 'port,
            }
        }
        return (port, out);
    }
}

fn records<'a>(name: &'a str, hosts: &[u8]) -> Vec<(&'a str, IpAddr)> {
    hosts.iter().map(|&n| (name, replica(n))).collect()
}

/// `(name, address)` of every backend `/lb/status` lists.
fn listed(status: &serde_json::Value) -> BTreeSet<(String, String)> {
    status["backends"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    let s = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
                    (s("name"), s("address"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the balancer lists exactly `want` (each named by its own
/// `ip:port`), all checked and up; returns how long that took.
async fn wait_for_set(lb: &TestBalancer, port: u16, want: &[u8]) -> Duration {
    let start = Instant::now();
    let want: BTreeSet<(String, String)> = want
        .iter()
        .map(|&n| {
            let a = SocketAddr::new(replica(n), port).to_string();
            (a.clone(), a)
        })
        .collect();
    wait_for(
        &format!("the balancer to list {want:?}"),
        Duration::from_secs(20),
        || async {
            let s = lb.status().await;
            let all_up = s["backends"].as_array().is_some_and(|bs| {
                bs.iter()
                    .all(|b| b["state"] == "up" && !b["last_check"].is_null())
            });
            (listed(&s) == want && all_up).then_some(())
        },
    )
    .await;
    start.elapsed()
}

/// The distinct backends `clients` land on through the balancer.
async fn reached(lb: &TestBalancer, clients: u32) -> BTreeSet<String> {
    placement(lb.addr, clients).await.into_values().collect()
}

fn names(hosts: &[u8]) -> BTreeSet<String> {
    hosts.iter().map(|n| format!("r{n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_dns_3_6_2_and_is_kept_when_the_server_stops() {
    let (port, _backends) = replicas(&[11, 12, 13, 14, 15, 16]).await;
    let Some(mut server) = Dnsmasq::start("scale", &records("api.test", &[11, 12, 13])).await
    else {
        return;
    };
    let (ips, ttl) = server.answers("api.test").await.expect("dnsmasq answers");
    assert_eq!(ips.len(), 3);
    assert_eq!(ttl, dns::TTL, "the server answers with Docker's long TTL");

    let lb = TestBalancer::start(&[
        ("BACKEND_DNS", "api.test".into()),
        ("BACKEND_PORT", port.to_string()),
        ("DNS_SERVER", server.addr.to_string()),
        ("DNS_REFRESH_SECS", "1".into()),
        ("HEALTH_INTERVAL_SECS", "1".into()),
    ])
    .await;
    wait_for_set(&lb, port, &[11, 12, 13]).await;
    assert_eq!(lb.status().await["discovery"]["mode"], "dns");
    assert_eq!(reached(&lb, 60).await, names(&[11, 12, 13]));

    // Scale up: the cached answer (TTL 600) must not hide the new replicas.
    server
        .set(&records("api.test", &[11, 12, 13, 14, 15, 16]), "api.test")
        .await;
    let took = wait_for_set(&lb, port, &[11, 12, 13, 14, 15, 16]).await;
    eprintln!("3 -> 6 replicas seen after {took:?} (DNS_REFRESH_SECS=1, TTL 600)");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: far below the TTL of 600 s, but slow"
    );
    assert_eq!(reached(&lb, 120).await, names(&[11, 12, 13, 14, 15, 16]));

    // Scale down to two (the others still run: routing follows DNS, not luck).
    server
        .set(&records("api.test", &[12, 15]), "api.test")
        .await;
    let took = wait_for_set(&lb, port, &[12, 15]).await;
    eprintln!("6 -> 2 replicas seen after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: far below the TTL of 600 s, but slow"
    );
    let before = placement(lb.addr, 60).await;
    assert_eq!(
        before.values().cloned().collect::<BTreeSet<_>>(),
        names(&[12, 15])
    );

    // The server goes away: the pool of two is kept and the page says why.
    server.stop();
    let status = wait_for(
        "discovery to report the failure",
        Duration::from_secs(20),
        || async {
            let s = lb.status().await;
            (s["discovery"]["ok"] == false).then_some(s)
        },
    )
    .await;
    let message = status["discovery"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{status}");
    eprintln!("after the DNS server stopped: {message}");
    // Another failed refresh later, the set is still the same two.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = lb.status().await;
    assert_eq!(status["discovery"]["ok"], false);
    assert_eq!(listed(&status).len(), 2, "{status}");
    wait_for_set(&lb, port, &[12, 15]).await;
    let after = placement(lb.addr, 60).await;
    assert_eq!(before, after, "no client moved while DNS was down");

    lb.stop().await.expect("balancer stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_names_follow_a_new_address_without_moving_clients() {
    let (port, _backends) = replicas(&[21, 22, 23]).await;
    let Some(mut server) = Dnsmasq::start(
        "static",
        &[("web-1.test", replica(21)), ("web-2.test", replica(22))],
    )
    .await
    else {
        return;
    };
    let lb = TestBalancer::start(&[
        (
            "BACKEND_HOSTS",
            format!("web-1.test:{port},web-2.test:{port}"),
        ),
        ("DNS_SERVER", server.addr.to_string()),
        ("DNS_REFRESH_SECS", "1".into()),
        ("HEALTH_INTERVAL_SECS", "1".into()),
    ])
    .await;
    let addr = |n: u8| SocketAddr::new(replica(n), port).to_string();
    let expect = |web2: u8| -> BTreeSet<(String, String)> {
        [
            (format!("web-1.test:{port}"), addr(21)),
            (format!("web-2.test:{port}"), addr(web2)),
        ]
        .into()
    };
    let wait_listed = |want: BTreeSet<(String, String)>| {
        let lb = &lb;
        async move {
            wait_for("the static list", Duration::from_secs(20), || async {
                (listed(&lb.status().await) == want).then_some(())
            })
            .await
        }
    };
    wait_listed(expect(22)).await;
    let before = placement(lb.addr, 60).await;

    // web-2 restarts with a new address: same ring name, so its clients
    // follow it to the new address and nobody else moves.
    server
        .set(
            &[("web-1.test", replica(21)), ("web-2.test", replica(23))],
            "web-2.test",
        )
        .await;
    wait_listed(expect(23)).await;
    let after = placement(lb.addr, 60).await;
    let moved: HashMap<IpAddr, (String, String)> = before
        .iter()
        .filter(|(ip, b)| after[*ip] != **b)
        .map(|(ip, b)| (*ip, (b.clone(), after[ip].clone())))
        .collect();
    assert!(
        moved
            .values()
            .all(|(from, to)| from == "r22" && to == "r23"),
        "only web-2's clients change address: {moved:?}"
    );
    assert_eq!(moved.len(), before.values().filter(|b| *b == "r22").count());

    // web-2 vanishes from DNS: it keeps its last address (no remap).
    server
        .set(&[("web-1.test", replica(21))], "web-2.test")
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(listed(&lb.status().await), expect(23));

    // Nothing resolves any more: the refresh fails, the set is kept.
    server.stop();
    wait_for("discovery to fail", Duration::from_secs(20), || async {
        (lb.status().await["discovery"]["ok"] == false).then_some(())
    })
    .await;
    assert_eq!(listed(&lb.status().await), expect(23));
    lb.stop().await.expect("balancer stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_aaaa_records_both_become_backends() {
    let v6 = IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
    let Ok(l6) = tokio::net::TcpListener::bind((v6, 0)).await else {
        eprintln!("SKIPPED: no IPv6 loopback on this host");
        return;
    };
    let port = l6.local_addr().expect("addr").port();
    let Ok(l4) = tokio::net::TcpListener::bind((replica(31), port)).await else {
        eprintln!("SKIPPED: port {port} taken on {}", replica(31));
        return;
    };
    let _backends = [TestBackend::on("v6", l6), TestBackend::on("v4", l4)];
    let Some(server) =
        Dnsmasq::start("aaaa", &[("mixed.test", replica(31)), ("mixed.test", v6)]).await
    else {
        return;
    };
    let lb = TestBalancer::start(&[
        ("BACKEND_DNS", "mixed.test".into()),
        ("BACKEND_PORT", port.to_string()),
        ("DNS_SERVER", server.addr.to_string()),
        ("DNS_REFRESH_SECS", "1".into()),
        ("HEALTH_INTERVAL_SECS", "1".into()),
    ])
    .await;
    let want: BTreeSet<(String, String)> = [SocketAddr::new(replica(31), port), (v6, port).into()]
        .iter()
        .map(|a| (a.to_string(), a.to_string()))
        .collect();
    wait_for(
        "an IPv4 and an IPv6 backend",
        Duration::from_secs(20),
        || async { (listed(&lb.status().await) == want).then_some(()) },
    )
    .await;
    assert_eq!(
        reached(&lb, 40).await,
        BTreeSet::from(["v4".to_owned(), "v6".to_owned()])
    );
    lb.stop().await.expect("balancer stops cleanly");
}

/// An operator's management call with the token these tests set.
async fn manage(lb: &TestBalancer, method: &str, path: &str) -> Reply {
    let mut c = Client::connect(lb.addr).await.expect("connect");
    c.send(
        method,
        path,
        &[("authorization", "Bearer dns-test-admin-token-0123")],
        Default::default(),
    )
    .await
    .expect("management call")
}

/// `(name, state)` of every backend listed.
fn states(status: &serde_json::Value) -> BTreeSet<(String, String)> {
    status["backends"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    let s = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
                    (s("name"), s("state"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_outlive_the_backend_leaving_and_coming_back_in_dns() {
    let (port, _backends) = replicas(&[31, 32, 33]).await;
    let Some(server) = Dnsmasq::start("overrides", &records("ops.test", &[31, 32, 33])).await
    else {
        return;
    };
    let lb = TestBalancer::start(&[
        ("BACKEND_DNS", "ops.test".into()),
        ("BACKEND_PORT", port.to_string()),
        ("DNS_SERVER", server.addr.to_string()),
        ("DNS_REFRESH_SECS", "1".into()),
        ("HEALTH_INTERVAL_SECS", "1".into()),
        ("LB_ADMIN_TOKEN", "dns-test-admin-token-0123".into()),
    ])
    .await;
    wait_for_set(&lb, port, &[31, 32, 33]).await;
    let name = |n: u8| SocketAddr::new(replica(n), port).to_string();
    let want = |list: &[(u8, &str)]| -> BTreeSet<(String, String)> {
        list.iter()
            .map(|(n, s)| (name(*n), (*s).to_owned()))
            .collect()
    };

    // Disable r32, then DNS drops it and lists it again: still disabled.
    let r = manage(&lb, "POST", &format!("/lb/backends/{}/disable", name(32))).await;
    assert_eq!(r.status, hyper::StatusCode::OK, "{r:?}");
    server
        .set(&records("ops.test", &[31, 33]), "ops.test")
        .await;
    wait_for_set(&lb, port, &[31, 33]).await;
    server
        .set(&records("ops.test", &[31, 32, 33]), "ops.test")
        .await;
    let expected = want(&[(31, "up"), (32, "disabled"), (33, "up")]);
    wait_for(
        "r32 listed again, disabled",
        Duration::from_secs(20),
        || async { (states(&lb.status().await) == expected).then_some(()) },
    )
    .await;
    assert_eq!(
        reached(&lb, 90).await,
        names(&[31, 33]),
        "no client reaches the disabled one"
    );

    // Remove discovered r33: it stays out through refreshes that list it.
    let r = manage(&lb, "DELETE", &format!("/lb/backends/{}", name(33))).await;
    assert_eq!(r.status, hyper::StatusCode::OK, "{r:?}");
    let refreshed = lb.status().await["discovery"]["last_refresh"].clone();
    wait_for(
        "two more DNS refreshes",
        Duration::from_secs(20),
        || async {
            let s = lb.status().await;
            (s["discovery"]["last_refresh"] != refreshed && s["discovery"]["ok"] == true)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        states(&lb.status().await),
        want(&[(31, "up"), (32, "disabled")])
    );
    assert_eq!(reached(&lb, 60).await, names(&[31]));

    // Enabled again, both are back.
    manage(&lb, "POST", &format!("/lb/backends/{}/enable", name(33))).await;
    manage(&lb, "POST", &format!("/lb/backends/{}/enable", name(32))).await;
    wait_for_set(&lb, port, &[31, 32, 33]).await;
    assert_eq!(reached(&lb, 90).await, names(&[31, 32, 33]));
    lb.stop().await.expect("balancer stops cleanly");
}
