//! `Upgrade` tunnels over real sockets (`src/proxy/tunnel.rs`): WebSocket
//! clients, one per client address, echo through the balancer to their
//! sticky backend; a killed backend closes its tunnels at once and the
//! clients' reconnects land on their next candidate while every other
//! tunnel carries on; half-closes are passed on both ways; a client that
//! reads nothing holds its backend back instead of filling the balancer;
//! forgotten tunnels close after `TUNNEL_IDLE_TIMEOUT_SECS`; the drain
//! closes them all.
//!
//! Every property is checked on both transports: the fast path (a plain
//! client) and hyper's (the same balancer with `TRUSTED_PROXIES` covering
//! the clients, whose connections hyper serves from the first byte).
//! Waits are on conditions, bounded only so that a broken build fails
//! instead of hanging; no test measures time.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::wire::{Head, Wire, bounded, find};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;

/// Bound on one awaited event (a hang guard, not a measurement).
const EVENT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fast,
    Hyper,
}

const PATHS: [Path; 2] = [Path::Fast, Path::Hyper];

/// A balancer in front of `backends` that serves its clients on `path`.
async fn balancer(backends: &str, path: Path, extra: &[(&'static str, &str)]) -> TestBalancer {
    let mut pairs = vec![
        ("BACKEND_HOSTS", backends.to_owned()),
        // Long enough that nothing here is decided by a periodic check.
        ("HEALTH_INTERVAL_SECS", "60".to_owned()),
    ];
    if path == Path::Hyper {
        // Every test client is a trusted proxy: hyper serves them all.
        pairs.push(("TRUSTED_PROXIES", "127.0.0.0/8".to_owned()));
    }
    pairs.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    TestBalancer::start(&pairs).await
}

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket from `ip` to `/ws` through the balancer, and the backend
/// that accepted it.
async fn ws_from(ip: IpAddr, lb: SocketAddr) -> (Ws, String) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind((ip, 0).into()).expect("bind client address");
    let stream = socket.connect(lb).await.expect("connect");
    let (ws, resp) = tokio::time::timeout(
        EVENT,
        tokio_tungstenite::client_async(format!("ws://{lb}/ws"), stream),
    )
    .await
    .expect("handshake in time")
    .expect("websocket handshake");
    let backend = resp.headers()["x-backend"].to_str().unwrap().to_owned();
    (ws, backend)
}

/// Sends `text` and returns the echo (`"<backend>:<text>"`).
async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(text.into()).await.expect("send");
    let msg = tokio::time::timeout(EVENT, ws.next())
        .await
        .expect("echo in time")
        .expect("tunnel open")
        .expect("echo");
    msg.to_text().expect("text").to_owned()
}

/// Whether the tunnel has ended for this client: end of stream, an error
/// or a close frame, rather than a message.
async fn ended(ws: &mut Ws) -> bool {
    match tokio::time::timeout(EVENT, ws.next()).await {
        Err(_) => false,
        Ok(None | Some(Err(_))) => true,
        Ok(Some(Ok(msg))) => msg.is_close(),
    }
}

/// Open tunnels per backend name, as `/lb/status` shows them.
async fn open_tunnels(lb: &TestBalancer) -> HashMap<String, i64> {
    let s = lb.status().await;
    s["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            let name = b["name"].as_str().unwrap().to_owned();
            (name, b["tunnels"].as_i64().expect("tunnels"))
        })
        .collect()
}

async fn wait_tunnels(lb: &TestBalancer, want: &HashMap<String, i64>, what: &str) {
    wait_for(what, EVENT, || async {
        let got = open_tunnels(lb).await;
        (got == *want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_echo_through_their_sticky_backend_and_are_counted() {
    for path in PATHS {
        let backends = backends(3).await;
        let lb = balancer(&hosts(&backends), path, &[]).await;
        lb.wait_healthy(3).await;
        let by_name: HashMap<&str, String> = backends
            .iter()
            .map(|b| (b.name.as_str(), b.addr.to_string()))
            .collect();
        let mut want: HashMap<String, i64> = by_name.values().map(|a| (a.clone(), 0)).collect();
        let mut open = Vec::new();
        for i in 0..9 {
            let ip = client_ip(i);
            let http = get_from(ip, lb.addr, "/whoami").await.expect("GET");
            let sticky = http.backend().expect("x-backend").to_owned();
            let (mut ws, backend) = ws_from(ip, lb.addr).await;
            assert_eq!(
                backend, sticky,
                "{path:?}: client {ip} tunnels to its own backend"
            );
            for n in 0..3 {
                assert_eq!(
                    echo(&mut ws, &format!("m{n}")).await,
                    format!("{sticky}:m{n}")
                );
            }
            *want.get_mut(&by_name[sticky.as_str()]).unwrap() += 1;
            open.push(ws);
        }
        wait_tunnels(&lb, &want, "every open tunnel counted on its backend").await;
        let s = lb.status().await;
        assert_eq!(s["totals"]["tunnels"], 9, "{path:?}: {s}");
        let page = get(lb.addr, "/lb").await.expect("GET /lb");
        let html = String::from_utf8_lossy(&page.body);
        assert!(
            html.contains("<th class=\"num\">Tunnels</th>"),
            "{path:?}: {html}"
        );
        assert!(html.contains("9 in tunnels"), "{path:?}: {html}");

        for mut ws in open {
            ws.close(None).await.expect("close");
            // The closing handshake completes: the backend answers it.
            while let Ok(Some(Ok(_))) = tokio::time::timeout(EVENT, ws.next()).await {}
        }
        let zero = want.keys().map(|k| (k.clone(), 0)).collect();
        wait_tunnels(&lb, &zero, "closed tunnels no longer counted").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_closes_its_tunnels_and_reconnects_land_on_the_next_candidate() {
    for path in PATHS {
        let mut backends = backends(3).await;
        let lb = balancer(&hosts(&backends), path, &[]).await;
        lb.wait_healthy(3).await;
        let mut tunnels = Vec::new();
        for i in 0..15 {
            let ip = client_ip(i);
            let (mut ws, backend) = ws_from(ip, lb.addr).await;
            assert_eq!(echo(&mut ws, "hi").await, format!("{backend}:hi"));
            tunnels.push((ip, ws, backend));
        }
        // The backend holding the most tunnels dies.
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (_, _, b) in &tunnels {
            *count.entry(b.as_str()).or_default() += 1;
        }
        let victim = count.iter().max_by_key(|(_, n)| **n).unwrap().0.to_string();
        assert!(
            count.len() > 1,
            "{path:?}: the clients spread over the backends: {count:?}"
        );
        let at = backends.iter().position(|b| b.name == victim).unwrap();
        let victim_addr = backends[at].addr.to_string();
        backends.remove(at).kill().await;

        let (mut hit, mut spared): (Vec<_>, Vec<_>) =
            tunnels.into_iter().partition(|(_, _, b)| *b == victim);
        for (ip, ws, _) in &mut hit {
            assert!(
                ended(ws).await,
                "{path:?}: client {ip}'s tunnel ends with its backend"
            );
        }
        // Reconnect at once, as a client's reconnect logic does: it lands
        // where that client's requests now go, not on the dead backend.
        for (ip, ws, backend) in &mut hit {
            let (mut again, now) = ws_from(*ip, lb.addr).await;
            assert_ne!(now, victim, "{path:?}: client {ip}");
            assert_eq!(echo(&mut again, "back").await, format!("{now}:back"));
            let http = get_from(*ip, lb.addr, "/whoami").await.expect("GET");
            assert_eq!(
                http.backend(),
                Some(now.as_str()),
                "{path:?}: client {ip}'s tunnel and requests agree on its next candidate"
            );
            *ws = again;
            *backend = now;
        }
        // Nobody else noticed.
        for (ip, ws, backend) in &mut spared {
            assert_eq!(
                echo(ws, "still here").await,
                format!("{backend}:still here"),
                "{path:?}: client {ip}"
            );
        }
        let s = lb.status().await;
        assert_eq!(
            s["totals"]["failed_requests"], 0,
            "{path:?}: no reconnect failed: {s}"
        );
        let victim_tunnels = s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == victim_addr.as_str())
            .map(|b| b["tunnels"].clone());
        assert_eq!(victim_tunnels, Some(0.into()), "{path:?}: {s}");
        assert_eq!(s["totals"]["tunnels"], 15, "{path:?}: {s}");
    }
}

// ---------------------------------------------------------------------------
// A raw upgrade backend: it answers any `Upgrade` with a 101 and then does
// what the path says, byte for byte, with no protocol on top.

/// What the stream backend saw and did.
#[derive(Default)]
struct Seen {
    /// Bytes the flood has handed to its socket so far.
    flooded: AtomicU64,
}

struct StreamBackend {
    addr: SocketAddr,
    seen: Arc<Seen>,
    /// What a tunnel reported: the bytes it read before the client's FIN,
    /// or the flood's total when its writes stopped moving.
    reports: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// Socket buffers of the test's own ends (the client's receive side, the
/// backend's send side), small so that what the balancer's sockets and
/// buffers hold is most of what the flood gets out.
const TEST_SOCKET_BUFFER: u32 = 64 * 1024;

/// The most bytes a client that reads nothing may let out of its backend:
/// what the kernel may buffer on the balancer's two sockets (the largest
/// receive buffer on the backend's side, the largest send buffer on the
/// client's, from `tcp_rmem`/`tcp_wmem`), the test's own small buffers
/// (doubled, as Linux counts them), and a MiB for the balancer's own
/// buffer and the flood's last write.
fn backpressure_bound() -> u64 {
    let max = |file: &str, default: u64| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{file}"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(default)
    };
    max("tcp_rmem", 6 << 20)
        + max("tcp_wmem", 4 << 20)
        + 4 * u64::from(TEST_SOCKET_BUFFER)
        + (1 << 20)
}

/// The flood's byte at offset `i` (never repeating within 251 bytes).
fn flood_byte(i: u64) -> u8 {
    (i % 251) as u8
}

impl StreamBackend {
    async fn start() -> StreamBackend {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(TEST_SOCKET_BUFFER).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (report, reports) = mpsc::unbounded_channel();
        let shared = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, report) = (Arc::clone(&shared), report.clone());
                tokio::spawn(async move {
                    let _ = stream_serve(Wire::new(stream), &seen, &report).await;
                });
            }
        });
        StreamBackend {
            addr,
            seen,
            reports,
        }
    }

    async fn report(&mut self) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(20), self.reports.recv())
            .await
            .expect("the backend reports in time")
            .expect("a report")
    }
}

async fn stream_serve(
    mut w: Wire,
    seen: &Seen,
    report: &mpsc::UnboundedSender<Vec<u8>>,
) -> std::io::Result<()> {
    while let Some(raw) = w.head().await? {
        let head = Head::parse(&raw)?;
        let target = head.start.split(' ').nth(1).unwrap_or("").to_owned();
        let Some(protocol) = head.get("upgrade").map(str::to_owned) else {
            w.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            continue;
        };
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\nConnection: Upgrade\r\n\r\n"
        );
        w.send(answer.as_bytes()).await;
        let mut s = w.stream;
        let early = w.buf;
        match target.as_str() {
            // Reads to the client's FIN, then says what it got and closes.
            "/read-then-answer" => {
                let mut got = early;
                s.read_to_end(&mut got).await?;
                report.send(got.clone()).ok();
                s.write_all(format!("got {} bytes", got.len()).as_bytes())
                    .await?;
                s.shutdown().await?;
            }
            // Speaks first and sends its FIN, then reads what the client
            // sends to its own FIN.
            "/speak-then-read" => {
                s.write_all(b"first").await?;
                s.shutdown().await?;
                let mut got = early;
                s.read_to_end(&mut got).await?;
                report.send(got).ok();
            }
            // Writes twice `backpressure_bound()`; reports the total the first time a write
            // stops moving for a while (the client is not reading).
            "/flood" => {
                let total = 2 * backpressure_bound();
                let mut reported = false;
                let mut at = 0;
                while at < total {
                    let n = (total - at).min(64 * 1024);
                    let chunk: Vec<u8> = (at..at + n).map(flood_byte).collect();
                    at += n;
                    let mut write = std::pin::pin!(s.write_all(&chunk));
                    if !reported {
                        tokio::select! {
                            r = &mut write => { r?; seen.flooded.fetch_add(chunk.len() as u64, Ordering::SeqCst); continue; }
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        reported = true;
                        let total = seen.flooded.load(Ordering::SeqCst);
                        report.send(total.to_string().into_bytes()).ok();
                    }
                    write.await?;
                    seen.flooded.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                s.shutdown().await?;
                let _ = s.read(&mut [0u8; 1]).await;
            }
            _ => {}
        }
        return Ok(());
    }
    Ok(())
}

/// Opens a raw tunnel from `ip` through the balancer to `target`;
/// returns the connection positioned after the 101 head.
async fn raw_tunnel(ip: IpAddr, lb: SocketAddr, target: &str, recv_buffer: Option<u32>) -> Wire {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.bind((ip, 0).into()).unwrap();
    let mut w = Wire::new(socket.connect(lb).await.expect("connect"));
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: tunnel.test\r\nConnection: Upgrade\r\nUpgrade: test-stream\r\n\r\n"
    );
    w.send(req.as_bytes()).await;
    let raw = tokio::time::timeout(EVENT, w.head())
        .await
        .expect("101 in time")
        .expect("read")
        .expect("a head");
    let head = Head::parse(&raw).unwrap();
    assert!(head.start.starts_with("HTTP/1.1 101 "), "{}", head.start);
    assert_eq!(head.get("upgrade"), Some("test-stream"), "{:?}", head);
    assert!(
        head.tokens("connection").contains(&"upgrade".to_owned()),
        "{head:?}"
    );
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closes_are_passed_on_both_ways() {
    for path in PATHS {
        bounded(async {
            let mut backend = StreamBackend::start().await;
            let lb = balancer(&backend.addr.to_string(), path, &[]).await;
            lb.wait_healthy(1).await;

            // The client finishes first: its FIN reaches the backend, which
            // still answers on the other half, then closes.
            let mut w = raw_tunnel(client_ip(1), lb.addr, "/read-then-answer", None).await;
            w.send(b"hello, ").await;
            w.send(b"backend").await;
            w.stream.shutdown().await.unwrap();
            assert_eq!(backend.report().await, b"hello, backend", "{path:?}");
            let answer = w.read_to_eof().await.expect("answer, then EOF");
            assert_eq!(answer, b"got 14 bytes", "{path:?}");

            // The backend finishes first: the client reads its bytes and
            // EOF, and can still send to it.
            let mut w = raw_tunnel(client_ip(2), lb.addr, "/speak-then-read", None).await;
            assert_eq!(w.take(5).await.unwrap(), b"first", "{path:?}");
            assert_eq!(w.fill().await.unwrap(), 0, "{path:?}: EOF after it");
            w.send(b"after your FIN").await;
            w.stream.shutdown().await.unwrap();
            assert_eq!(backend.report().await, b"after your FIN", "{path:?}");

            let zero = [(backend.addr.to_string(), 0)].into();
            wait_tunnels(&lb, &zero, "both tunnels ended").await;
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_holds_its_backend_back() {
    for path in PATHS {
        bounded(async {
            let mut backend = StreamBackend::start().await;
            let lb = balancer(&backend.addr.to_string(), path, &[]).await;
            lb.wait_healthy(1).await;
            let mut w = raw_tunnel(client_ip(3), lb.addr, "/flood", Some(TEST_SOCKET_BUFFER)).await;
            // The client reads nothing until the backend's writes stall.
            let stalled: u64 = String::from_utf8(backend.report().await)
                .unwrap()
                .parse()
                .unwrap();
            let bound = backpressure_bound();
            assert!(
                stalled <= bound,
                "{path:?}: {stalled} bytes left the backend for a client reading nothing \
                 (the kernel's buffers hold at most {bound}; the flood is twice that)"
            );
            // Now the client reads: every byte arrives, in order.
            let mut at = 0u64;
            let mut chunk = std::mem::take(&mut w.buf);
            loop {
                for (i, b) in chunk.iter().enumerate() {
                    assert_eq!(
                        *b,
                        flood_byte(at + i as u64),
                        "{path:?}: byte {}",
                        at + i as u64
                    );
                }
                at += chunk.len() as u64;
                chunk.resize(64 * 1024, 0);
                let n = w.stream.read(&mut chunk).await.expect("read the flood");
                if n == 0 {
                    break;
                }
                chunk.truncate(n);
            }
            assert_eq!(at, 2 * bound, "{path:?}: the whole flood arrived");
            assert_eq!(backend.seen.flooded.load(Ordering::SeqCst), 2 * bound);
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_tunnel_closes_after_the_idle_timeout_and_a_busy_one_stays() {
    for path in PATHS {
        let backends = backends(1).await;
        let lb = balancer(
            &hosts(&backends),
            path,
            &[("TUNNEL_IDLE_TIMEOUT_SECS", "1")],
        )
        .await;
        lb.wait_healthy(1).await;
        let (mut idle, _) = ws_from(client_ip(1), lb.addr).await;
        let (mut busy, b) = ws_from(client_ip(2), lb.addr).await;
        // The busy one talks every 200 ms for three idle timeouts.
        let talk = async {
            for n in 0..15 {
                assert_eq!(echo(&mut busy, &format!("{n}")).await, format!("{b}:{n}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        // `ended` waits for the next event on the idle one: its close.
        let quiet = async {
            let closed = tokio::time::timeout(Duration::from_secs(10), idle.next()).await;
            let closed = match closed {
                Err(_) => false,
                Ok(None | Some(Err(_))) => true,
                Ok(Some(Ok(msg))) => msg.is_close(),
            };
            assert!(closed, "{path:?}: the idle tunnel closed");
        };
        tokio::join!(talk, quiet);
        assert_eq!(
            echo(&mut busy, "last").await,
            format!("{b}:last"),
            "{path:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_open_tunnels() {
    for path in PATHS {
        let backends = backends(1).await;
        let lb = balancer(&hosts(&backends), path, &[("SHUTDOWN_GRACE_SECS", "60")]).await;
        lb.wait_healthy(1).await;
        let (mut ws, b) = ws_from(client_ip(1), lb.addr).await;
        assert_eq!(echo(&mut ws, "x").await, format!("{b}:x"));
        // The stop returns once every connection is gone: the tunnel does
        // not hold it for the grace period.
        tokio::time::timeout(Duration::from_secs(20), lb.stop())
            .await
            .expect("the drain does not wait for open tunnels")
            .expect("balancer stopped");
        assert!(ended(&mut ws).await, "{path:?}: the tunnel closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_an_ordinary_answer_and_the_connection_carries_on() {
    for path in PATHS {
        let backends = backends(1).await;
        let lb = balancer(&hosts(&backends), path, &[]).await;
        lb.wait_healthy(1).await;
        let mut w = Wire::connect_from(client_ip(4), lb.addr).await;
        // No Sec-WebSocket-Key: the backend answers 400 instead of 101.
        w.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .await;
        let r = support::wire::recv(&mut w).await;
        assert_eq!(r.status, 400, "{path:?}");
        w.send(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let r = support::wire::recv(&mut w).await;
        assert_eq!(r.status, 200, "{path:?}");
        assert!(
            find(r.body.as_slice(), b"\"path\":\"/after\"").is_some(),
            "{path:?}"
        );
    }
}
