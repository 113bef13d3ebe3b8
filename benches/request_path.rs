//! The balancer's per-request work outside the sockets, on a browser-like
//! request: for a direct client, the HTTP/1.1 fast path's head parsing and
//! rewrite (`proxy::h1::head`) with `key_hash`, the default strategy's first
//! candidate through the selection seam and the driver's bookkeeping (the
//! rate limiter's check, off by default; load, latency, outlier streak,
//! the per-thread metrics and the client table, through the real
//! `proxy::report::answered`); behind a trusted proxy, hyper's path
//! (`client_ip`, `key_hash`, the same pick and bookkeeping,
//! `strip_hop_by_hop`, `set_forwarding`).
//!
//! `cargo bench --bench request_path` runs it under criterion. With
//! `HASHGATE_PATH_LOOPS=N` it instead runs the path N times and exits: the
//! fixed workload `bench/guard.sh` counts instructions of under callgrind
//! (timing is never asserted anywhere; instruction counts are reproducible).

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use hashgate::backend::{Endpoint, Listed};
use hashgate::config::{BalancerConfig, Env};
use hashgate::proxy::client_ip::TrustedProxies;
use hashgate::proxy::h1::{self, head};
use hashgate::proxy::headers::{set_forwarding, strip_hop_by_hop};
use hashgate::proxy::{PageFuture, Pages, Proxy, report};
use hashgate::ring::key_hash;
use hyper::HeaderMap;
use hyper::header::{HOST, HeaderName, HeaderValue};

/// What a browser or an API client typically sends.
fn request_headers(xff: Option<&'static str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let pairs = [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("authorization", "Bearer 0123456789abcdef0123456789abcdef"),
        ("referer", "https://app.example.com/dashboard"),
        (
            "cookie",
            "session=3f2a9c1d7e; theme=dark; _ga=GA1.2.123456789.1700000000",
        ),
        ("x-request-id", "9b2d6a4e-5c1f-4e8a-b0d3-7f6e5d4c3b2a"),
        ("connection", "keep-alive"),
    ];
    for (k, v) in pairs {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    if let Some(xff) = xff {
        h.append("x-forwarded-for", HeaderValue::from_static(xff));
    }
    h
}

/// A browser-like request as it arrives on the wire (the same headers).
fn request_bytes() -> Vec<u8> {
    let mut raw = b"GET /api/v1/items?page=2 HTTP/1.1\r\n".to_vec();
    for (name, value) in request_headers(None).iter() {
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw
}

/// A typical API response head.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
    Content-Length: 17\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\n\
    Cache-Control: no-store\r\nX-Request-Id: 9b2d6a4e-5c1f-4e8a-b0d3-7f6e5d4c3b2a\r\n\r\n";

/// What the balancer does for one request besides socket I/O, by path.
enum Case {
    /// A direct client (no trusted proxies, the default): the HTTP/1.1
    /// fast path parses and rewrites the request head, keys and picks,
    /// then parses and rewrites the response head.
    Fast { peer: IpAddr, request: Vec<u8> },
    /// Behind a CDN or ingress (a trusted proxy): hyper's path, the key
    /// from X-Forwarded-For and the header map rewrite. hyper's own parsing
    /// is not counted (the map is cloned outside).
    Trusted {
        trusted: TrustedProxies,
        peer: IpAddr,
        headers: HeaderMap,
    },
}

/// One request's work. Returns the chosen backend index.
#[inline(never)]
fn request_path(case: &Case, proxy: &Proxy, headers: &mut HeaderMap, out: &mut Vec<u8>) -> usize {
    match case {
        Case::Fast { peer, request } => {
            let head::Request::Ready(req) = head::request(request, *peer, h1::MAX_BODY, out) else {
                return usize::MAX;
            };
            let chosen = pick(proxy, *peer);
            match head::response(RESPONSE, false, req.close, out) {
                head::Response::Ready(_) => chosen,
                _ => usize::MAX,
            }
        }
        Case::Trusted { trusted, peer, .. } => {
            let peer = *peer;
            let client = trusted.client_ip(peer, headers);
            let chosen = pick(proxy, client);
            strip_hop_by_hop(headers, false);
            let host = headers.get(HOST).cloned();
            set_forwarding(headers, peer, client, true, host.as_ref());
            chosen
        }
    }
}

/// What `proxy::driver` does per request besides the attempt: the rate
/// limiter asked (when configured), the strategy's first candidate that is
/// available, the request counted in flight, the answer reported (latency,
/// outlier streak, per-thread metrics), the client table told.
fn pick(proxy: &Proxy, client: IpAddr) -> usize {
    if let Some(limiter) = &proxy.limiter {
        if limiter.check(client).is_err() {
            return usize::MAX;
        }
    }
    let set = proxy.backends.load();
    let key = key_hash(client);
    let Some(i) = set
        .selector
        .candidates(&set.backends, key, |b| proxy.accepts(b, || false))
        .next()
    else {
        return usize::MAX;
    };
    let b = &set.backends[i];
    b.load.enter();
    b.stats
        .total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // One clock read, as before this bench counted the driver's work: the
    // driver itself reads it when the attempt starts and when it is
    // answered (two reads; it used to take three).
    let now = Instant::now();
    report::answered(proxy, b, 200, Duration::from_micros(300), now);
    proxy.stats.clients.seen(client, b, now);
    b.load.leave();
    i
}

impl Case {
    fn name(&self) -> &'static str {
        match self {
            Case::Fast { .. } => "fast_path_direct_client",
            Case::Trusted { .. } => "hyper_path_trusted_proxy",
        }
    }

    /// The header map `request_path` rewrites (empty for the fast path).
    fn headers(&self) -> HeaderMap {
        match self {
            Case::Fast { .. } => HeaderMap::new(),
            Case::Trusted { headers, .. } => headers.clone(),
        }
    }
}

fn cases() -> Vec<Case> {
    let ip = |s: &str| s.parse::<IpAddr>().expect("literal");
    vec![
        Case::Fast {
            peer: ip("203.0.113.9"),
            request: request_bytes(),
        },
        Case::Trusted {
            trusted: TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("literal")]),
            peer: ip("10.0.0.2"),
            headers: request_headers(Some("198.51.100.7, 10.1.1.1")),
        },
    ]
}

/// No pages: the bench never asks for one.
#[derive(Debug)]
struct NoPages;

impl Pages for NoPages {
    fn answer(&self, _: Arc<Proxy>, _: hyper::Request<hyper::body::Incoming>) -> PageFuture {
        Box::pin(async { hyper::Response::new(hashgate::proxy::body::ProxyBody::empty()) })
    }
}

/// The balancer's shared state with its default configuration (maglev,
/// no rate limit, a client table of 10,000) over five backends.
fn five_backends() -> Proxy {
    let config = BalancerConfig::from_env(&Env::default()).expect("default config");
    let proxy = Proxy::new(config, Arc::new(NoPages));
    let listed = (13004..13009)
        .map(|p| {
            let addr = format!("127.0.0.1:{p}").parse().expect("literal");
            Listed::discovered(Endpoint::from_addr(addr, 1))
        })
        .collect();
    proxy.set_backends(listed);
    proxy
}

fn bench(c: &mut Criterion) {
    let ring = five_backends();
    let mut group = c.benchmark_group("request_path");
    let mut out = Vec::with_capacity(16 * 1024);
    for case in cases() {
        group.bench_function(case.name(), |b| {
            b.iter_batched_ref(
                || case.headers(),
                |h| request_path(&case, &ring, h, &mut out),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The callgrind workload: both cases `loops` times each. Only
/// `request_path` itself is counted (callgrind `--toggle-collect`), so the
/// header clone that stands in for hyper's parsing is left out.
fn count_mode(loops: u64) {
    let ring = five_backends();
    let cases = cases();
    let mut out = Vec::with_capacity(16 * 1024);
    let mut sum = 0usize;
    for _ in 0..loops {
        for case in &cases {
            let mut h = case.headers();
            sum = sum.wrapping_add(request_path(case, &ring, &mut h, &mut out));
            black_box(&h);
            black_box(&out);
        }
    }
    println!(
        "request_path: {} requests, checksum {sum}",
        loops * cases.len() as u64
    );
}

fn main() {
    if let Some(loops) = std::env::var("HASHGATE_PATH_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        count_mode(loops);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
