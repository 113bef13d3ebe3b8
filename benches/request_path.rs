//! The balancer's per-request work outside the sockets: client key
//! (`TrustedProxies::client_ip`), `key_hash`, the ring's first candidate, and
//! the header rewrite (`strip_hop_by_hop`, `set_forwarding`), the way
//! `proxy::forward` strings them together, on a browser-like header map.
//!
//! `cargo bench --bench request_path` runs it under criterion. With
//! `HASHGATE_PATH_LOOPS=N` it instead runs the path N times and exits: the
//! fixed workload `bench/guard.sh` counts instructions of under callgrind
//! (timing is never asserted anywhere; instruction counts are reproducible).

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BatchSize, Criterion};
use hashgate::proxy::client_ip::TrustedProxies;
use hashgate::proxy::headers::{set_forwarding, strip_hop_by_hop};
use hashgate::ring::{Ring, key_hash};
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

/// One request's key, pick and rewrite, as `proxy::forward` and
/// `rewrite_head` do it. Returns the chosen backend index.
#[inline(never)]
fn request_path(
    trusted: &TrustedProxies,
    ring: &Ring,
    peer: IpAddr,
    headers: &mut HeaderMap,
) -> usize {
    let client = trusted.client_ip(peer, headers);
    let from_trusted = !trusted.is_empty() && trusted.contains(peer);
    let hash = key_hash(client);
    let chosen = ring.candidates(hash).next().unwrap_or(usize::MAX);
    strip_hop_by_hop(headers, false);
    let host = headers.get(HOST).cloned();
    set_forwarding(headers, peer, client, from_trusted, host.as_ref());
    chosen
}

struct Case {
    name: &'static str,
    trusted: TrustedProxies,
    peer: IpAddr,
    headers: HeaderMap,
}

fn cases() -> Vec<Case> {
    let ip = |s: &str| s.parse::<IpAddr>().expect("literal");
    vec![
        // The default deployment: clients connect directly, nothing trusted.
        Case {
            name: "direct_client",
            trusted: TrustedProxies::default(),
            peer: ip("203.0.113.9"),
            headers: request_headers(None),
        },
        // Behind a CDN or ingress: the key comes from X-Forwarded-For.
        Case {
            name: "behind_trusted_proxy",
            trusted: TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("literal")]),
            peer: ip("10.0.0.2"),
            headers: request_headers(Some("198.51.100.7, 10.1.1.1")),
        },
    ]
}

fn five_backends() -> Ring {
    let names: Vec<(String, u32)> = (13004..13009)
        .map(|p| (format!("127.0.0.1:{p}"), 1))
        .collect();
    Ring::build(&names)
}

fn bench(c: &mut Criterion) {
    let ring = five_backends();
    let mut group = c.benchmark_group("request_path");
    for case in cases() {
        group.bench_function(case.name, |b| {
            b.iter_batched_ref(
                || case.headers.clone(),
                |h| request_path(&case.trusted, &ring, black_box(case.peer), h),
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
    let mut sum = 0usize;
    for _ in 0..loops {
        for case in &cases {
            let mut h = case.headers.clone();
            sum = sum.wrapping_add(request_path(
                &case.trusted,
                &ring,
                black_box(case.peer),
                &mut h,
            ));
            black_box(&h);
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
