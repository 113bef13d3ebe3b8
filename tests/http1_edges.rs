//! HTTP/1.1 edge cases a HAProxy or nginx user checks first, over raw
//! sockets on both sides so the framing on the wire is visible: clients
//! write exact request bytes and parse the exact answer, backends are bare
//! `TcpListener`s that read the request the balancer forwards and write
//! exact response bytes.
//!
//! These pin the behaviour of the HTTP/1.1 request path, whatever parses it
//! (hyper, or a hand-written fast path): pipelining, every way a response
//! body is framed (length, chunked, close-delimited, none), request bodies,
//! `Expect: 100-continue`, header rewriting both ways, keep-alive and close,
//! stale pooled upstream connections, limits, timeouts and failover.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::wire::*;
use support::{TestBalancer, client_ip};
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------
// The cases.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_one_write_get_complete_responses_in_order() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| {
            let body = format!("{} {} body={}", seen.method, seen.target, seen.body.len());
            Answer::keep(ok(body.as_bytes()))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;

        let mut burst = get("/one");
        burst.extend_from_slice(
            format!("POST /two HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 8\r\n\r\n2nd body")
                .as_bytes(),
        );
        burst.extend(get("/three"));
        c.send(&burst).await;

        for expected in ["GET /one body=0", "POST /two body=8", "GET /three body=0"] {
            let r = recv(&mut c).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.text(), expected);
        }
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(backend.request().await.target);
        }
        assert_eq!(order, ["/one", "/two", "/three"], "backend order");
        // Still in sync after the burst.
        c.send(&get("/four")).await;
        assert_eq!(recv(&mut c).await.text(), "GET /four body=0");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_with_trailer_arrives_whole_and_the_connection_stays_usable() {
    bounded(async {
        let big = pattern(20_000, 7);
        let mut expected = b"hello, ".to_vec();
        expected.extend_from_slice(b"chunked ");
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b" world");
        let chunked = move || {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n".to_vec();
            out.extend_from_slice(b"7\r\nhello, \r\n");
            // A chunk extension, which a recipient must ignore.
            out.extend_from_slice(b"8;name=value\r\nchunked \r\n");
            out.extend_from_slice(format!("{:X}\r\n", big.len()).as_bytes());
            out.extend_from_slice(&big);
            out.extend_from_slice(b"\r\n6\r\n world\r\n");
            out.extend_from_slice(b"0\r\nX-Checksum: 42\r\n\r\n");
            out
        };
        let backend = RawBackend::start(move |seen| {
            if seen.target == "/chunked" {
                Answer::keep(chunked())
            } else {
                echo_target(seen)
            }
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(format!("GET /chunked HTTP/1.1\r\nHost: {HOST}\r\nTE: trailers\r\n\r\n").as_bytes())
            .await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200, "{:?}", r.head);
        assert_eq!(r.body.len(), expected.len(), "body length ({:?})", r.framing);
        assert!(r.body == expected, "body bytes differ");
        assert_ne!(r.framing, Framing::Close, "framed, so keep-alive can go on");
        // A proxy may drop trailer fields (RFC 9110 §6.5.1), but one that
        // passes them on passes them unchanged.
        assert!(
            r.trailers
                .iter()
                .all(|(k, v)| k.eq_ignore_ascii_case("x-checksum") && v == "42"),
            "trailers: {:?}",
            r.trailers
        );

        c.send(&get("/next")).await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/next"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_response_arrives_whole_and_correctly_framed() {
    bounded(async {
        let body = pattern(50_000, 3);
        let sent = body.clone();
        let backend = RawBackend::start(move |seen| {
            if seen.target == "/until-close" {
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
                out.extend_from_slice(&sent);
                Answer {
                    bytes: out,
                    then: Then::Close,
                    delay: Duration::ZERO,
                }
            } else {
                echo_target(seen)
            }
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/until-close")).await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), body.len(), "body length ({:?})", r.framing);
        assert!(r.body == body, "body bytes differ");
        match r.framing {
            // Relayed close-delimited: the client connection ended with it
            // (read_response read to EOF).
            Framing::Close => {}
            // Re-framed (chunked or with a length): the client connection is
            // still good.
            _ => {
                c.send(&get("/next")).await;
                let r = recv(&mut c).await;
                assert_eq!((r.status, r.text().as_str()), (200, "/next"));
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_headers_without_body_and_the_next_get_works() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| {
            if seen.method == "HEAD" {
                Answer::keep(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
                        .to_vec(),
                )
            } else {
                echo_target(seen)
            }
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        for round in 0..2 {
            c.send(format!("HEAD /doc HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
                .await;
            let r = recv_to(&mut c, true).await;
            assert_eq!(r.status, 200, "round {round}: {r:?}");
            assert!(
                r.head.all("content-length").iter().all(|v| *v == "1000"),
                "a HEAD answer's Content-Length is the GET body's length, if any: {:?}",
                r.head
            );
            assert!(!r.head.has("transfer-encoding"), "{:?}", r.head);
            // No body bytes followed the head: the next bytes are the next
            // response's status line.
            c.send(&get("/after-head")).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, "/after-head"));
        }
        let seen = backend.request().await;
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("HEAD", "/doc")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_answers_keep_the_connection_in_sync() {
    bounded(async {
        let backend = RawBackend::start(|seen| match seen.target.as_str() {
            "/no-content" => Answer::keep(b"HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n".to_vec()),
            // A 304 may carry the Content-Length of the representation it
            // stands for; it still has no body.
            "/not-modified" => Answer::keep(
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\nX-Kind: 304\r\n\r\n"
                    .to_vec(),
            ),
            _ => echo_target(seen),
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        for _ in 0..2 {
            c.send(&get("/no-content")).await;
            let r = recv(&mut c).await;
            assert_eq!(r.status, 204, "{r:?}");
            assert_eq!(r.head.get("x-kind"), Some("204"));

            c.send(&get("/after-204")).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, "/after-204"));

            c.send(
                format!("GET /not-modified HTTP/1.1\r\nHost: {HOST}\r\nIf-None-Match: \"v1\"\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let r = recv(&mut c).await;
            assert_eq!(r.status, 304, "{r:?}");
            assert_eq!(r.head.get("etag"), Some("\"v1\""));
            assert_eq!(r.head.get("x-kind"), Some("304"));

            c.send(&get("/after-304")).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, "/after-304"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_with_content_length_reaches_the_backend_byte_exact() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| {
            Answer::keep(ok(format!("got {}", seen.body.len()).as_bytes()))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let body = pattern(100 * 1024, 11);
        let mut c = Wire::connect(lb.addr).await;
        let mut req = format!(
            "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        c.send(&req).await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text()), (200, format!("got {}", body.len())));

        let seen = backend.request().await;
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.head.all("content-length"), ["102400"]);
        assert!(!seen.head.has("transfer-encoding"), "{:?}", seen.head);
        assert_eq!(seen.head.get("content-type"), Some("application/octet-stream"));
        assert!(seen.body == body, "the backend got different bytes");

        c.send(&get("/after-post")).await;
        assert_eq!(recv(&mut c).await.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_reaches_the_backend_byte_exact() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| {
            Answer::keep(ok(format!("got {}", seen.body.len()).as_bytes()))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let body = pattern(70_000, 13);
        let mut req =
            format!("POST /stream HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n")
                .into_bytes();
        for part in body.chunks(30_000) {
            req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            req.extend_from_slice(part);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let mut c = Wire::connect(lb.addr).await;
        c.send(&req).await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text()), (200, format!("got {}", body.len())));
        let seen = backend.request().await;
        assert!(seen.body == body, "the backend got different bytes");
        assert!(
            !(seen.head.has("transfer-encoding") && seen.head.has("content-length")),
            "{:?}",
            seen.head
        );
        c.send(&get("/after-stream")).await;
        assert_eq!(recv(&mut c).await.status, 200);
    })
    .await;
}

/// A response carrying both Transfer-Encoding and Content-Length is framed
/// by the chunked coding, and an intermediary that forwards it "MUST first
/// remove the received Content-Length field" (RFC 9112 §6.3): the client
/// never gets both, nor a length that contradicts the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answer_with_both_chunked_and_length_is_framed_by_chunked() {
    bounded(async {
        let backend = RawBackend::start(|seen| {
            if seen.target == "/both" {
                Answer::keep(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                        .to_vec(),
                )
            } else {
                echo_target(seen)
            }
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/both")).await;
        // read_response refuses a head with both.
        let r = recv(&mut c).await;
        if r.status == 200 {
            assert_eq!(r.text(), "hello");
            c.send(&get("/next")).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, "/next"));
        } else {
            // Refusing the answer as malformed is right too.
            assert_eq!(r.status, 502, "{r:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_stop_at_the_balancer() {
    bounded(async {
        let mut backend = RawBackend::start(|_| {
            Answer::keep(ok_with(
                "Connection: keep-alive, X-Backend-Hop\r\nKeep-Alive: timeout=30, max=100\r\nX-Backend-Hop: internal\r\nX-End-To-End: from-backend\r\n",
                b"ok",
            ))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(
            b"GET /headers?q=1 HTTP/1.1\r\n\
              Host: shop.example:8080\r\n\
              X-Forwarded-For: 6.6.6.6\r\n\
              X-Forwarded-For: 7.7.7.7, 8.8.8.8\r\n\
              X-Real-IP: 6.6.6.6\r\n\
              X-Forwarded-Proto: https\r\n\
              X-Forwarded-Host: evil.example\r\n\
              Connection: keep-alive, X-Hop\r\n\
              Keep-Alive: timeout=5\r\n\
              X-Hop: secret\r\n\
              TE: trailers\r\n\
              Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
              Proxy-Connection: keep-alive\r\n\
              Accept: */*\r\n\
              X-End-To-End: from-client\r\n\
              \r\n",
        )
        .await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));

        let seen = backend.request().await;
        let h = &seen.head;
        assert_eq!(seen.target, "/headers?q=1");
        assert_eq!(seen.version, "HTTP/1.1");
        assert_eq!(h.all("host"), ["shop.example:8080"]);
        assert_eq!(h.all("x-forwarded-for"), ["127.0.0.1"], "replaced: {h:?}");
        assert_eq!(h.all("x-real-ip"), ["127.0.0.1"], "{h:?}");
        assert_eq!(h.all("x-forwarded-proto"), ["http"], "{h:?}");
        assert_eq!(h.all("x-forwarded-host"), ["shop.example:8080"], "{h:?}");
        assert_eq!(h.all("accept"), ["*/*"]);
        assert_eq!(h.all("x-end-to-end"), ["from-client"]);
        for gone in [
            "keep-alive",
            "x-hop",
            "te",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(!h.has(gone), "{gone} reached the backend: {h:?}");
        }
        // The balancer may speak for its own hop (keep-alive or close), but
        // none of the client's Connection tokens may pass.
        assert!(
            h.tokens("connection")
                .iter()
                .all(|t| t == "keep-alive" || t == "close"),
            "the client's Connection reached the backend: {h:?}"
        );

        let h = &r.head;
        assert!(!h.has("keep-alive"), "Keep-Alive reached the client: {h:?}");
        assert!(!h.has("x-backend-hop"), "X-Backend-Hop reached the client: {h:?}");
        assert!(
            h.tokens("connection")
                .iter()
                .all(|t| t == "keep-alive" || t == "close"),
            "the backend's Connection reached the client: {h:?}"
        );
        assert_eq!(h.all("x-end-to-end"), ["from-backend"]);

        // The backend's hop-by-hop headers did not end the client connection.
        c.send(&get("/again")).await;
        assert_eq!(recv(&mut c).await.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_connection_close_gets_its_answer_then_the_close() {
    bounded(async {
        let backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(
            format!("GET /bye HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/bye"));
        assert_ne!(r.framing, Framing::Chunked, "a known length stays a length");
        assert!(
            c.closes_within(IO_LIMIT).await,
            "the balancer closed the connection after the answer"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_while_idle_costs_no_error() {
    bounded(async {
        let mut pair = Vec::new();
        for name in ["a", "b"] {
            pair.push(
                RawBackend::start(move |seen| Answer {
                    bytes: ok_with(&format!("X-Backend: {name}\r\n"), seen.target.as_bytes()),
                    then: Then::CloseAfter(Duration::from_millis(200)),
                    delay: Duration::ZERO,
                })
                .await,
            );
        }
        let lb = balancer(&[&pair[0], &pair[1]], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        let mut first_backend = None;
        let mut last_conn = 0;
        for round in 0..3 {
            let path = format!("/round-{round}");
            c.send(&get(&path)).await;
            let r = recv(&mut c).await;
            assert_eq!(r.status, 200, "round {round}: {r:?}");
            assert_eq!(r.text(), path);
            let name = r.head.get("x-backend").expect("x-backend").to_owned();
            let first = first_backend.get_or_insert_with(|| name.clone());
            assert_eq!(
                &name, first,
                "round {round}: the client stays on its backend"
            );
            let backend = &mut pair[usize::from(name == "b")];
            let seen = backend.request().await;
            assert_eq!(seen.target, path);
            assert!(seen.conn > last_conn, "a fresh upstream connection");
            last_conn = seen.conn;
            // The backend closes its end of the idle pooled connection; the
            // next request follows at once.
            backend.closed(seen.conn).await;
        }
        let status = lb.status().await;
        assert_eq!(status["totals"]["failed_requests"], 0, "{status}");
        for b in status["backends"].as_array().expect("backends") {
            assert_eq!(b["errors"], 0, "no backend blamed: {b}");
            assert_eq!(b["state"], "up", "{b}");
        }
    })
    .await;
}

/// A backend that says `Connection: close` is not sent another request on
/// that connection, even while the socket is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_connection_close_answer_is_never_reused() {
    bounded(async {
        let mut backend = RawBackend::start(|seen| Answer {
            bytes: ok_with("Connection: close\r\n", seen.target.as_bytes()),
            // Slow to close, and deaf meanwhile: a request sent here waits.
            then: Then::CloseAfter(Duration::from_secs(3)),
            delay: Duration::ZERO,
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        let mut conns = Vec::new();
        for path in ["/first", "/second", "/third"] {
            let started = Instant::now();
            c.send(&get(path)).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, path));
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{path} waited on a closing connection"
            );
            conns.push(backend.request().await.conn);
        }
        assert!(
            conns.windows(2).all(|w| w[0] < w[1]),
            "a new upstream connection each time: {conns:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_response_arrives_byte_exact_with_its_length() {
    bounded(async {
        let body = pattern(1 << 20, 5);
        let sent = body.clone();
        let backend = RawBackend::start(move |_| Answer::keep(ok(&sent))).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/big")).await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.framing, Framing::Length, "{:?}", r.head);
        assert_eq!(r.head.all("content-length"), ["1048576"]);
        assert_eq!(r.body.len(), body.len());
        assert!(r.body == body, "body bytes differ");
        c.send(&get("/big")).await;
        assert!(recv(&mut c).await.body == body, "second time too");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_limit_gets_431_and_a_close_not_a_hang() {
    bounded(async {
        let mut backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[("MAX_HEADER_BYTES", "16384")]).await;

        // Within the limit: served.
        let mut c = Wire::connect(lb.addr).await;
        let fits = format!(
            "GET /fits HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(10 * 1024)
        );
        c.send(fits.as_bytes()).await;
        let r = recv(&mut c).await;
        assert_eq!((r.status, r.text().as_str()), (200, "/fits"));
        let seen = backend.request().await;
        assert_eq!(seen.head.get("x-big").map(str::len), Some(10 * 1024));

        // Over it: refused, and the connection ends.
        for size in [20 * 1024, 64 * 1024] {
            let mut c = Wire::connect(lb.addr).await;
            let huge = format!(
                "GET /huge HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
                "a".repeat(size)
            );
            // The balancer may stop reading (and close) before it has it all.
            let _ = c.stream.write_all(huge.as_bytes()).await;
            let r = recv(&mut c).await;
            assert!(
                r.status == 431 || r.status == 400,
                "{size} B header: {} {:?}",
                r.status,
                r.head
            );
            assert!(
                r.framing == Framing::Close || c.closes_within(IO_LIMIT).await,
                "{size} B header: the connection closes after the refusal"
            );
        }

        // The balancer still serves, and the huge requests never reached the backend.
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/still-alive")).await;
        assert_eq!(recv(&mut c).await.status, 200);
        assert_eq!(backend.request().await.target, "/still-alive");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_gets_a_valid_answer_and_a_close() {
    bounded(async {
        let mut backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(b"GET /legacy HTTP/1.0\r\nUser-Agent: old\r\n\r\n")
            .await;
        let r = recv(&mut c).await;
        assert!(r.version.starts_with("HTTP/1."), "{r:?}");
        assert_eq!((r.status, r.text().as_str()), (200, "/legacy"));
        assert_ne!(
            r.framing,
            Framing::Chunked,
            "no chunked to an HTTP/1.0 client"
        );
        assert!(
            r.framing == Framing::Close || c.closes_within(IO_LIMIT).await,
            "an HTTP/1.0 connection without keep-alive ends after the answer"
        );
        let seen = backend.request().await;
        assert_eq!(seen.target, "/legacy");
        assert!(seen.version.starts_with("HTTP/1."), "{seen:?}");
        assert_eq!(seen.head.all("x-forwarded-for"), ["127.0.0.1"]);
    })
    .await;
}

/// RFC 9112 §3.2: every HTTP/1.1 request carries Host (empty when there is
/// no authority). The balancer forwards an HTTP/1.0 request as HTTP/1.1, so
/// it must add one; strict backends (Go's net/http, nginx) answer a Host-less
/// HTTP/1.1 request with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_reaches_the_backend_with_a_host() {
    bounded(async {
        let mut backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(b"GET /legacy HTTP/1.0\r\n\r\n").await;
        assert_eq!(recv(&mut c).await.status, 200);
        let seen = backend.request().await;
        if seen.version == "HTTP/1.1" {
            assert_eq!(
                seen.head.all("host").len(),
                1,
                "an HTTP/1.1 request needs exactly one Host: {:?}",
                seen.head
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_keep_alive_client_keeps_its_connection() {
    bounded(async {
        let backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        for path in ["/ab-1", "/ab-2", "/ab-3"] {
            c.send(
                format!("GET {path} HTTP/1.0\r\nHost: {HOST}\r\nConnection: Keep-Alive\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text().as_str()), (200, path));
            assert_eq!(r.framing, Framing::Length, "{:?}", r.head);
            assert!(
                r.head
                    .tokens("connection")
                    .contains(&"keep-alive".to_owned()),
                "an HTTP/1.0 client is told the connection stays: {:?}",
                r.head
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_an_interim_answer_and_the_body_goes_through() {
    bounded(async {
        let mut backend = RawBackend::start_with(true, |seen| {
            Answer::keep(ok(format!("got {}", seen.body.len()).as_bytes()))
        })
        .await;
        let lb = balancer(&[&backend], &[]).await;
        let body = pattern(40_000, 9);
        let mut c = Wire::connect(lb.addr).await;
        c.send(
            format!(
                "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        let interim = recv(&mut c).await;
        assert_eq!(interim.status, 100, "interim answer first: {interim:?}");
        c.send(&body).await;
        let mut r = recv(&mut c).await;
        let mut extra_interim = 0;
        while r.status == 100 {
            extra_interim += 1;
            r = recv(&mut c).await;
        }
        assert_eq!((r.status, r.text()), (200, format!("got {}", body.len())));
        assert!(extra_interim <= 1, "{extra_interim} more 100 Continue");

        let seen = backend.request().await;
        assert!(seen.body == body, "the backend got different bytes");
        assert_eq!(seen.head.all("content-length"), ["40000"]);

        c.send(&get("/after-upload")).await;
        assert_eq!(recv(&mut c).await.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_gets_504_after_the_upstream_timeout() {
    bounded(async {
        let mut backend = RawBackend::start(|_| Answer {
            bytes: Vec::new(),
            then: Then::Hang,
            delay: Duration::ZERO,
        })
        .await;
        let lb = balancer(&[&backend], &[("UPSTREAM_TIMEOUT_SECS", "1")]).await;
        let mut c = Wire::connect(lb.addr).await;
        let started = Instant::now();
        c.send(&get("/stuck")).await;
        let r = recv(&mut c).await;
        let waited = started.elapsed();
        assert_eq!(r.status, 504, "{r:?}");
        assert!(
            waited >= Duration::from_millis(900),
            "504 only after the timeout: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(4),
            "504 soon after the timeout: {waited:?}"
        );
        let json: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(json["status"], 504);
        assert_eq!(backend.request().await.target, "/stuck", "tried once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_died_fails_over_to_the_other_without_an_error() {
    bounded(async {
        let named = |name: &'static str| {
            move |seen: &Seen| {
                Answer::keep(ok_with(
                    &format!("X-Backend: {name}\r\n"),
                    seen.target.as_bytes(),
                ))
            }
        };
        let mut a = RawBackend::start(named("a")).await;
        let b = RawBackend::start(named("b")).await;
        let lb = balancer(&[&a, &b], &[]).await;
        a.probed().await;

        // A client whose backend is `a`, with a keep-alive connection that
        // has already been there.
        let mut found = None;
        for i in 0..200 {
            let ip = client_ip(i);
            let mut c = Wire::connect_from(ip, lb.addr).await;
            c.send(&get("/where")).await;
            let r = recv(&mut c).await;
            assert_eq!(r.status, 200);
            if r.head.get("x-backend") == Some("a") {
                found = Some((ip, c));
                break;
            }
        }
        let (ip, mut c) = found.expect("some client lands on a");

        let _dead = a.kill().await;
        // The same keep-alive client connection (its upstream connection to
        // `a` is gone, and `a` refuses new ones)...
        c.send(&get("/after-death")).await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.head.get("x-backend"), Some("b"));
        assert_eq!(r.text(), "/after-death");
        // ...and a new connection from the same client.
        let mut c = Wire::connect_from(ip, lb.addr).await;
        c.send(&get("/new-connection")).await;
        let r = recv(&mut c).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.head.get("x-backend"), Some("b"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_from_the_start_costs_no_client_an_error() {
    bounded(async {
        // A port nobody listens on.
        let dead = refusing_port(SocketAddr::from(([127, 0, 0, 1], 0)));
        let dead_addr = dead.local_addr().expect("addr");
        let live = RawBackend::start(echo_target).await;
        let lb = TestBalancer::start(&[
            ("BACKEND_HOSTS", format!("{dead_addr},{}", live.addr)),
            ("HEALTH_INTERVAL_SECS", "3600".to_owned()),
        ])
        .await;
        // At once (before the first health round has judged the dead one),
        // from clients spread over both backends' share of the ring.
        for i in 0..32 {
            let mut c = Wire::connect_from(client_ip(i), lb.addr).await;
            let path = format!("/client-{i}");
            c.send(&get(&path)).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text()), (200, path), "client {i}");
        }
    })
    .await;
}

/// Waits until `/lb/status` counts exactly `n` parked connections.
async fn wait_parked(lb: &TestBalancer, n: usize, what: &str) {
    support::wait_for(what, IO_LIMIT, || async {
        let s = lb.status().await;
        (s["totals"]["parked"].as_u64() == Some(n as u64)).then_some(())
    })
    .await;
}

/// A keep-alive connection idle for a moment moves to the parking lot (no
/// task, no buffer), and its next request is served like any other; parked
/// connections still close at the idle timeout, and a parked client still
/// counts as connected to its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_park_and_wake_for_their_next_request() {
    const CLIENTS: usize = 20;
    bounded(async {
        let backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[("CLIENT_IDLE_TIMEOUT_SECS", "3")]).await;
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let mut c = Wire::connect(lb.addr).await;
            c.send(&get(&format!("/first-{i}"))).await;
            let r = recv(&mut c).await;
            assert_eq!((r.status, r.text()), (200, format!("/first-{i}")));
            clients.push(c);
        }
        wait_parked(&lb, CLIENTS, "every idle connection parked").await;
        let s = lb.status().await;
        assert_eq!(
            s["totals"]["clients"].as_i64(),
            Some(CLIENTS as i64),
            "parked clients still count as connected: {s}"
        );

        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&get(&format!("/again-{i}"))).await;
            let r = recv(c).await;
            assert_eq!((r.status, r.text()), (200, format!("/again-{i}")));
        }
        // Woken connections are served like new ones: a pipelined pair too.
        let c = &mut clients[0];
        c.send(&[get("/p1"), get("/p2")].concat()).await;
        assert_eq!(recv(c).await.text(), "/p1");
        assert_eq!(recv(c).await.text(), "/p2");

        // They park again, and the idle timeout closes them from there.
        wait_parked(&lb, CLIENTS, "the connections parked again").await;
        for c in &mut clients {
            assert!(
                c.closes_within(Duration::from_secs(6)).await,
                "a parked connection outlived its idle timeout"
            );
        }
        let s = lb.status().await;
        assert_eq!(s["totals"]["parked"].as_u64(), Some(0), "{s}");
        assert_eq!(s["totals"]["errors"].as_u64(), Some(0), "{s}");
    })
    .await;
}

/// Shutdown closes parked connections at once and the drain completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_parked_connections() {
    bounded(async {
        let backend = RawBackend::start(echo_target).await;
        let lb = balancer(&[&backend], &[]).await;
        let mut c = Wire::connect(lb.addr).await;
        c.send(&get("/once")).await;
        assert_eq!(recv(&mut c).await.status, 200);
        wait_parked(&lb, 1, "the connection parked").await;
        let stopped = tokio::time::timeout(IO_LIMIT, lb.stop()).await;
        assert!(matches!(stopped, Ok(Ok(()))), "the drain finished promptly");
        assert!(
            c.closes_within(IO_LIMIT).await,
            "the parked connection closed"
        );
    })
    .await;
}
