//! Protocol handling over real sockets: WebSocket tunnels, HTTP/2 clients,
//! malformed input, misbehaving backends, the status endpoints, and a
//! graceful stop of the real `balancer` binary.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn config(backends: &[TestBackend]) -> Vec<(&'static str, String)> {
    vec![
        ("BACKEND_HOSTS", hosts(backends)),
        ("HEALTH_INTERVAL_SECS", "1".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_goes_through_on_the_clients_backend() {
    let backends = backends(4).await;
    let lb = TestBalancer::start(&config(&backends)).await;
    lb.wait_healthy(4).await;
    for i in 0..12 {
        let ip = client_ip(i);
        let http_backend = get_from(ip, lb.addr, "/whoami")
            .await
            .unwrap()
            .backend()
            .unwrap()
            .to_owned();

        let socket = TcpSocket::new_v4().unwrap();
        socket.bind((ip, 0).into()).unwrap();
        let stream = socket.connect(lb.addr).await.unwrap();
        let url = format!("ws://{}/ws", lb.addr);
        let (mut ws, resp) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("websocket handshake");
        assert_eq!(resp.headers()["x-backend"], http_backend.as_str());
        for n in 0..3 {
            ws.send(format!("ping {n}").into()).await.unwrap();
            let echo = ws.next().await.unwrap().unwrap();
            assert_eq!(echo.to_text().unwrap(), format!("{http_backend}:ping {n}"));
        }
        ws.close(None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_the_balancer_both_ways() {
    let backends = backends(1).await;
    let lb = TestBalancer::start(&config(&backends)).await;
    lb.wait_healthy(1).await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    let r = c
        .send(
            "GET",
            "/hop",
            &[
                ("connection", "x-client-hop"),
                ("x-client-hop", "1"),
                ("te", "trailers"),
            ],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    for gone in ["keep-alive", "x-hop", "proxy-authenticate"] {
        assert!(
            !r.headers.contains_key(gone),
            "{gone} reached the client: {:?}",
            r.headers
        );
    }
    assert_eq!(
        r.json()["connection"],
        serde_json::Value::Null,
        "the backend saw no Connection header"
    );
    // The connection stays usable: the backend's hop headers did not close it.
    assert_eq!(c.get("/again").await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_clients_reach_http1_backends() {
    let backends = backends(2).await;
    let lb = TestBalancer::start(&config(&backends)).await;
    lb.wait_healthy(2).await;
    let stream = TcpStream::connect(lb.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let req = hyper::Request::get(format!("http://{}/h2", lb.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = h2.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        seen.push(resp.headers()["x-backend"].to_str().unwrap().to_owned());
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(
            body["x_forwarded_host"],
            lb.addr.to_string(),
            "authority became Host"
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "one client, one backend: {seen:?}"
    );
}

/// Sends raw bytes; returns what the balancer answered and whether it closed
/// the connection (within two seconds).
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status_of(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_or_close_and_the_balancer_keeps_serving() {
    let backends = backends(2).await;
    let lb = TestBalancer::start(&config(&backends)).await;
    lb.wait_healthy(2).await;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage request line", b"THIS IS NOT HTTP\r\n\r\n".to_vec()),
        ("bad method", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bad version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("no host", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("200 KB header", huge.into_bytes()),
        (
            "Content-Length with Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("two Content-Lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 7\r\n\r\nabcdefg".to_vec()),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("binary junk", (0u8..=255).cycle().take(4096).collect()),
    ];
    for (what, bytes) in cases {
        let (answer, closed) = raw_exchange(lb.addr, &bytes).await;
        let code = status_of(&answer);
        let responses = answer.matches("HTTP/1.1 ").count();
        if what.starts_with("Content-Length with") {
            // RFC 9112 §6.1: either refuse, or frame by Transfer-Encoding
            // alone and close after answering. hyper does the latter: one
            // answer, then the connection closes and the rest is discarded.
            assert!(responses <= 1, "{what}: more than one answer: {answer}");
            assert!(closed, "{what}: connection must close after the answer");
        } else {
            assert!(
                code.is_none_or(|c| (400..500).contains(&c)),
                "{what}: expected a 4xx or a close, got {:?}",
                answer.lines().next()
            );
        }
        assert!(
            !answer.contains("/smuggled"),
            "{what}: request smuggled through"
        );
        let ok = get(lb.addr, "/still-alive")
            .await
            .expect("balancer still serves");
        assert_eq!(ok.status, StatusCode::OK, "after {what}");
    }
    let s = lb.status().await;
    let up = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "up")
        .count();
    assert_eq!(
        up, 2,
        "a client's bad input never counts against a backend: {s}"
    );
    let total: u64 = backends
        .iter()
        .map(|b| b.requests.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let status = lb.status().await;
    let proxied = status["totals"]["requests"].as_u64().unwrap();
    assert!(
        proxied <= total,
        "nothing reached a backend that the balancer did not count"
    );
}

/// A backend that answers every request with bytes that are not HTTP.
async fn garbage_backend() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                if head.starts_with("GET /health") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                } else {
                    let _ = s.write_all(b"SPDY/99 banana\r\n\x00\x01\x02\r\n\r\n").await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_answer_is_502_and_a_slow_one_is_504() {
    let garbage = garbage_backend().await;
    let lb = TestBalancer::start(&[
        ("BACKEND_HOSTS", garbage.to_string()),
        ("HEALTH_INTERVAL_SECS", "3600".into()),
    ])
    .await;
    let r = get(lb.addr, "/x").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.json()["status"], 502);

    let slow = backends(1).await;
    let lb = TestBalancer::start(&[
        ("BACKEND_HOSTS", hosts(&slow)),
        ("UPSTREAM_TIMEOUT_SECS", "1".into()),
        ("HEALTH_INTERVAL_SECS", "3600".into()),
    ])
    .await;
    let r = get(lb.addr, "/slow?ms=3000").await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["status"], 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoints_describe_every_backend() {
    let backends = backends(3).await;
    let lb = TestBalancer::start(&config(&backends)).await;
    lb.wait_healthy(3).await;
    placement(lb.addr, 30).await;

    let s = lb.status().await;
    for field in [
        "version",
        "uptime_secs",
        "discovery",
        "healthy",
        "totals",
        "backends",
        "health_check",
    ] {
        assert!(s.get(field).is_some(), "/lb/status lacks {field}: {s}");
    }
    assert_eq!(s["discovery"]["mode"], "static");
    assert_eq!(s["totals"]["requests"], 30);
    let list = s["backends"].as_array().unwrap();
    let share: f64 = list.iter().map(|b| b["share"].as_f64().unwrap()).sum();
    assert!(
        (share - 1.0).abs() < 1e-6,
        "shares add up to the whole ring: {share}"
    );
    for b in list {
        for field in [
            "name",
            "address",
            "state",
            "healthy",
            "weight",
            "last_check",
            "latency_ms",
            "active",
            "total",
            "errors",
            "share",
            "clients",
        ] {
            assert!(b.get(field).is_some(), "backend lacks {field}: {b}");
        }
    }
    let total: u64 = list.iter().map(|b| b["total"].as_u64().unwrap()).sum();
    assert_eq!(total, 30);

    let page = get(lb.addr, "/lb").await.unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(
        html.contains("http-equiv=\"refresh\" content=\"5\""),
        "page refreshes itself"
    );
    for b in &backends {
        assert!(html.contains(&b.addr.to_string()), "/lb lists {}", b.addr);
    }
    let health = get(lb.addr, "/health").await.unwrap();
    assert_eq!(health.json()["healthy_backends"], 3);
}

#[test]
fn sigterm_lets_a_slow_request_finish_and_exits_zero() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend =
        rt.block_on(async { TestBackend::start("slow", "127.0.0.1:0".parse().unwrap()).await });
    let port = free_port();
    let mut child = balancer_binary(port, &backend.addr.to_string())
        .env("SHUTDOWN_GRACE_SECS", "10")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start balancer");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = std::net::TcpStream::connect(addr) {
            conn = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut conn = conn.expect("balancer listening");
    conn.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no new connections once stopping"
    );
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "in-flight request completed: {answer}"
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "clean exit");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
    drop(backend);
}

#[test]
fn a_bad_config_value_names_the_variable_and_stops_start_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_balancer"))
        .env_clear()
        .env("HEALTH_INTERVAL_SECS", "soon")
        .output()
        .expect("run balancer");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HEALTH_INTERVAL_SECS"), "{err}");
}

/// The in-process balancer of the other tests runs on the test's runtime;
/// the binary hands connections to per-core worker threads instead (see
/// `src/workers.rs`). This runs the binary with two workers, which the
/// accept loop deals connections to in turn, and checks that stickiness,
/// keep-alive, HTTP/2 and WebSocket tunnels behave the same there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_with_two_worker_threads_proxies_like_the_library() {
    let backends = backends(3).await;
    let port = free_port();
    let mut child = tokio::process::Command::from(balancer_binary(port, &hosts(&backends)))
        .env("HEALTH_INTERVAL_SECS", "1")
        .env("WORKER_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start balancer");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("3 healthy backends", Duration::from_secs(20), || async {
        let r = get(addr, "/health").await.ok()?;
        (r.json()["healthy_backends"] == 3).then_some(())
    })
    .await;

    // Stickiness over 40 client addresses, each asked twice on fresh
    // connections (which the accept loop deals to alternating workers).
    let first = placement(addr, 40).await;
    let again = placement(addr, 40).await;
    assert_eq!(first, again, "every client keeps its backend");
    let used: std::collections::HashSet<_> = first.values().collect();
    assert_eq!(used.len(), 3, "spread over all backends: {used:?}");

    // Keep-alive: many requests on one connection, one backend.
    let ip = client_ip(7);
    let mut c = Client::connect_from(ip, addr).await.unwrap();
    for _ in 0..20 {
        let r = c.get("/whoami").await.expect("keep-alive request");
        assert_eq!(r.backend(), Some(first[&ip].as_str()));
    }

    // HTTP/2 prior knowledge.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{addr}/h2"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);

    // A WebSocket tunnel on the client's own backend.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((ip, 0).into()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.headers()["x-backend"], first[&ip].as_str());
    ws.send("ping".into()).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.to_text().unwrap(), format!("{}:ping", first[&ip]));
    ws.close(None).await.unwrap();

    let _ = child.start_kill();
    let _ = child.wait().await;
}
