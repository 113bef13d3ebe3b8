//! Request smuggling and response desync through the balancer, over real
//! sockets, on both request paths (the HTTP/1.1 fast path and hyper's).
//!
//! The backend is a raw `TcpListener` that parses what the balancer sends it
//! strictly and records every request, so "one client request became two
//! upstream requests" is visible as an extra request, and "one client got
//! another's answer" as a body in the wrong place. A connection reaches the
//! hyper path by first asking for `/health`, which the balancer answers
//! itself and which hands the connection to hyper for the rest of its life.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::wire::*;

const ATTACKER: [u8; 4] = [127, 0, 6, 6];
const VICTIM: [u8; 4] = [127, 0, 7, 7];

/// The reproducer of the report: the `Content-Length` is named in
/// `Connection`, and the 91 body bytes are a complete second request with
/// forged forwarding headers.
const SMUGGLE: &[u8] = b"POST /x HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\nContent-Length: 91\r\n\r\n\
GET /smuggled HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n";

const SECRET: &str = "secret=VICTIM-TOKEN-42";

#[derive(Debug, Clone, Copy)]
enum Path {
    Fast,
    Hyper,
}

/// Puts a fresh client connection on `path`.
async fn enter(c: &mut Wire, path: Path) {
    if let Path::Hyper = path {
        c.send(&get("/health")).await;
        let r = recv(c).await;
        assert_eq!(r.status, 200, "the balancer's own /health: {r:?}");
    }
}

/// Answers `/victim` with the victim's secret, everything else with what
/// was asked and how many body bytes came with it. A smuggled request is
/// answered late, so that an upstream connection carrying one is already
/// back in the pool, waiting, when the next client's request arrives.
fn by_target(seen: &Seen) -> Answer {
    let body = if seen.target == "/victim" {
        SECRET.to_owned()
    } else {
        format!(
            "{} {} ({} body bytes)",
            seen.method,
            seen.target,
            seen.body.len()
        )
    };
    let answer = Answer::keep(ok(body.as_bytes()));
    if seen.target == "/smuggled" {
        answer.delayed(Duration::from_millis(300))
    } else {
        answer
    }
}

/// The final response to the request just sent, interim ones skipped.
async fn final_response(c: &mut Wire) -> Resp {
    loop {
        let r = recv(c).await;
        if r.status >= 200 {
            return r;
        }
    }
}

fn ip(octets: [u8; 4]) -> IpAddr {
    IpAddr::from(octets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_named_in_connection_smuggles_nothing_and_leaks_nothing() {
    for path in [Path::Fast, Path::Hyper] {
        bounded(async {
            let mut backend = RawBackend::start(by_target).await;
            let lb = balancer(&[&backend], &[]).await;

            let mut attacker = Wire::connect_from(ip(ATTACKER), lb.addr).await;
            enter(&mut attacker, path).await;
            attacker.send(SMUGGLE).await;
            let r = recv(&mut attacker).await;
            assert_eq!(r.status, 200, "{path:?}: {r:?}");
            assert_eq!(r.text(), "POST /x (91 body bytes)", "{path:?}");

            // Another client, on the upstream connection the attacker's
            // request just gave back to the pool.
            let mut victim = Wire::connect_from(ip(VICTIM), lb.addr).await;
            victim.send(&get("/victim")).await;
            let v = recv(&mut victim).await;
            assert_eq!(
                (v.status, v.text().as_str()),
                (200, SECRET),
                "{path:?}: the victim got someone else's answer"
            );

            attacker.send(&get("/next")).await;
            let n = recv(&mut attacker).await;
            assert_eq!(n.text(), "GET /next (0 body bytes)", "{path:?}");

            // Exactly the three requests the clients sent, each with the
            // client's own address and nothing it forged.
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(backend.request().await);
            }
            seen.extend(backend.received_so_far());
            let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
            assert_eq!(targets, ["/x", "/victim", "/next"], "{path:?}");
            assert_eq!(seen[0].body.len(), 91, "{path:?}: the body went as a body");
            for (s, client) in seen.iter().zip([ATTACKER, VICTIM, ATTACKER]) {
                let client = ip(client).to_string();
                assert_eq!(s.head.all("x-forwarded-for"), [client.as_str()], "{path:?}");
                assert_eq!(s.head.all("x-real-ip"), [client.as_str()], "{path:?}");
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_naming_its_framing_in_connection_stays_framed() {
    for path in [Path::Fast, Path::Hyper] {
        bounded(async {
            let backend = RawBackend::start(|seen| {
                Answer::keep(match seen.target.as_str() {
                    "/length" => b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
                    "/chunked" => b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
                    other => ok(other.as_bytes()),
                })
            })
            .await;
            let lb = balancer(&[&backend], &[]).await;
            let mut c = Wire::connect(lb.addr).await;
            enter(&mut c, path).await;
            for target in ["/length", "/chunked"] {
                c.send(&get(target)).await;
                let r = recv(&mut c).await;
                assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{path:?} {target}");
                assert_ne!(r.framing, Framing::Close, "{path:?} {target}: {r:?}");
                // The next answer on the same connection arrives on its own.
                c.send(&get("/after")).await;
                let r = recv(&mut c).await;
                assert_eq!((r.status, r.text().as_str()), (200, "/after"), "{path:?} {target}");
            }
        })
        .await;
    }
}

/// Every name a client could list in `Connection` to make the balancer drop
/// something: none of them may change the framing or the client identity
/// the backend sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_option_changes_framing_or_client_identity() {
    let cases: &[(&str, &str)] = &[
        ("content-length", ""),
        ("transfer-encoding", "Transfer-Encoding: chunked\r\n"),
        ("host", ""),
        ("x-forwarded-for", "X-Forwarded-For: 6.6.6.6\r\n"),
        ("x-real-ip", "X-Real-IP: 6.6.6.6\r\n"),
        ("x-forwarded-host", "X-Forwarded-Host: evil.example\r\n"),
        ("x-forwarded-proto", "X-Forwarded-Proto: https\r\n"),
        ("upgrade", ""),
        ("te", "TE: trailers\r\n"),
        ("trailer", "Trailer: X-Sum\r\n"),
        ("expect", "Expect: 100-continue\r\n"),
    ];
    for path in [Path::Fast, Path::Hyper] {
        bounded(async {
            let mut backend = RawBackend::start(by_target).await;
            let lb = balancer(&[&backend], &[]).await;
            let mut c = Wire::connect_from(ip(ATTACKER), lb.addr).await;
            enter(&mut c, path).await;
            let client = ip(ATTACKER).to_string();
            for (i, (name, extra)) in cases.iter().enumerate() {
                let target = format!("/case{i}");
                let chunked = extra.starts_with("Transfer-Encoding");
                let body: &[u8] = if chunked { b"5\r\nhello\r\n0\r\n\r\n" } else { b"hello" };
                let length = if chunked { String::new() } else { "Content-Length: 5\r\n".to_owned() };
                let req = format!(
                    "POST {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: {name}\r\n{extra}{length}\r\n"
                );
                let mut bytes = req.into_bytes();
                bytes.extend_from_slice(body);
                c.send(&bytes).await;
                let r = final_response(&mut c).await;
                let want = format!("POST {target} (5 body bytes)");
                assert_eq!((r.status, r.text()), (200, want), "{path:?} Connection: {name}");

                let seen = backend.request().await;
                let h = &seen.head;
                assert_eq!(seen.target, target, "{path:?} Connection: {name}");
                assert_eq!(seen.body, b"hello", "{path:?} Connection: {name}");
                assert_eq!(h.all("host"), [HOST], "{path:?} Connection: {name}: {h:?}");
                assert_eq!(h.all("x-forwarded-for"), [client.as_str()], "{path:?} {name}: {h:?}");
                assert_eq!(h.all("x-real-ip"), [client.as_str()], "{path:?} {name}: {h:?}");
                assert_eq!(h.all("x-forwarded-host"), [HOST], "{path:?} {name}: {h:?}");
                assert_eq!(h.all("x-forwarded-proto"), ["http"], "{path:?} {name}: {h:?}");
            }
            assert!(backend.received_so_far().is_empty(), "{path:?}: an extra request");
        })
        .await;
    }
}

/// A chunk size that overflows 64 bits (`1` and sixteen zeros: zero to a
/// decoder that wraps) or that no body ever reaches (sixteen `f`s), with
/// a complete second request where a wrapping decoder would look for the
/// next message: the head is refused (400, close) on both paths, the
/// embedded request reaches no backend, and the next client gets its own
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_chunk_size_smuggles_nothing() {
    let embedded =
        "GET /smuggled HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    for size in ["10000000000000000", "ffffffffffffffff"] {
        for path in [Path::Fast, Path::Hyper] {
            bounded(async {
                let mut backend = RawBackend::start(by_target).await;
                let lb = balancer(&[&backend], &[]).await;
                let mut attacker = Wire::connect_from(ip(ATTACKER), lb.addr).await;
                enter(&mut attacker, path).await;
                let attack = format!(
                    "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n\r\n{embedded}"
                );
                attacker.send(attack.as_bytes()).await;
                let r = final_response(&mut attacker).await;
                assert_eq!(r.status, 400, "{path:?} {size}: {r:?}");
                assert!(
                    attacker.closes_within(IO_LIMIT).await,
                    "{path:?} {size}: the connection stays open"
                );

                let mut victim = Wire::connect_from(ip(VICTIM), lb.addr).await;
                victim.send(&get("/victim")).await;
                let v = recv(&mut victim).await;
                assert_eq!((v.status, v.text().as_str()), (200, SECRET), "{path:?} {size}");

                let seen = backend.request().await;
                assert_eq!(seen.target, "/victim", "{path:?} {size}: {seen:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                let rest: Vec<String> = backend
                    .received_so_far()
                    .into_iter()
                    .map(|s| s.target)
                    .collect();
                assert!(rest.is_empty(), "{path:?} {size}: also forwarded {rest:?}");
            })
            .await;
        }
    }
}
