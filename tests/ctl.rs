//! `balancer ctl`, the real binary, against a running balancer: what it
//! prints, what it changes and its exit status (0 done, 1 refused by the
//! balancer, 2 bad usage, 3 unreachable).

mod support;

use std::net::SocketAddr;
use std::process::Output;

use support::*;

const TOKEN: &str = "ctl-test-token-0123456789";

fn ctl(lb: SocketAddr, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_balancer"));
    cmd.env_clear()
        .env("LB_URL", format!("http://{lb}"))
        .arg("ctl")
        .args(args);
    if let Some(t) = token {
        cmd.env("LB_ADMIN_TOKEN", t);
    }
    cmd.stdin(std::process::Stdio::null())
        .output()
        .expect("run balancer ctl")
}

async fn weight(lb: &TestBalancer, name: &str) -> u64 {
    let s = lb.status().await;
    s["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["name"] == name))
        .and_then(|b| b["weight"].as_u64())
        .expect("the backend is listed")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_changes_and_says_what_went_wrong() {
    let backends = backends(2).await;
    let lb = TestBalancer::start(&[
        ("BACKEND_HOSTS", hosts(&backends)),
        ("HEALTH_INTERVAL_SECS", "1".into()),
        ("LB_ADMIN_TOKEN", TOKEN.into()),
    ])
    .await;
    lb.wait_healthy(2).await;
    let (a, b) = (backends[0].addr.to_string(), backends[1].addr.to_string());
    let addr = lb.addr;
    let run = move |token: Option<&'static str>, args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl(addr, token, &args)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let out = run(None, args(&["list"])).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(listing.starts_with("NAME"), "{listing}");
    assert!(listing.contains(&a) && listing.contains(&b), "{listing}");

    // Without the token: refused, exit 1, nothing changed.
    let out = run(None, args(&["drain", &a])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    assert_eq!(weight(&lb, &a).await, 1);

    let out = run(Some(TOKEN), args(&["drain", &a])).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{a}: draining (weight 0)\n"));
    let out = run(Some(TOKEN), args(&["list"])).await.unwrap();
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with(&a) && l.contains("drained")),
        "{}",
        text(&out.stdout)
    );
    let out = run(Some(TOKEN), args(&["enable", &a])).await.unwrap();
    assert_eq!(text(&out.stdout), format!("{a}: enabled\n"));
    let out = run(Some(TOKEN), args(&["weight", &b, "3"])).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(weight(&lb, &b).await, 3);

    let dead = format!("127.0.0.1:{}", free_port());
    let out = run(Some(TOKEN), args(&["add", &dead, "--weight", "2"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(Some(TOKEN), args(&["add", &dead])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("409"), "{}", text(&out.stderr));
    let out = run(Some(TOKEN), args(&["remove", &dead])).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = run(Some(TOKEN), args(&["disable", "nope:1"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no backend named"),
        "{}",
        text(&out.stderr)
    );

    let ip = client_ip(42);
    let out = run(None, args(&["route", &ip.to_string()])).await.unwrap();
    let routed = text(&out.stdout);
    let went = get_from(ip, lb.addr, "/").await.unwrap();
    let went = backends
        .iter()
        .find(|x| Some(x.name.as_str()) == went.backend())
        .unwrap();
    assert!(
        routed.starts_with(&format!("{ip} -> {} ", went.addr)),
        "{routed}"
    );

    // Bad usage: 2, from clap; unreachable: 3.
    let out = run(None, args(&["weight", &a, "heavy"])).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let out = tokio::task::spawn_blocking(move || ctl(closed, None, &["list"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("cannot reach the balancer"),
        "{}",
        text(&out.stderr)
    );
    lb.stop().await.unwrap();
}
