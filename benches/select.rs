//! What picking a backend costs, per strategy and set size: the first
//! candidate through the selection seam (what every request asks for), with
//! the availability filter the driver passes. Shared load counters are
//! read as the request path reads them (one atomic per target, a mutex for
//! the latency estimate and for smooth weighted round robin).
//!
//! `cargo bench --bench select`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hashgate::backend::{Backend, Endpoint, Snapshot};
use hashgate::ring::key_hash;
use hashgate::select::{SelectOptions, Strategy};
use hashgate::upstream::ConnPool;

fn set(n: usize, strategy: Strategy) -> Snapshot {
    let backends = (0..n)
        .map(|i| {
            let addr = format!("10.0.{}.{}:13004", i / 200, i % 200 + 1)
                .parse()
                .expect("literal");
            let pool = ConnPool::new(addr, 0, Duration::from_secs(30), Duration::from_secs(2));
            let b = Backend::new(Endpoint::from_addr(addr, 1 + (i % 3) as u32), pool);
            b.load
                .record_latency(Duration::from_micros(200 + 37 * i as u64));
            b.load.set_queue(Some((i % 7) as u64));
            Arc::new(b)
        })
        .collect();
    Snapshot::build(backends, strategy, SelectOptions::default())
}

fn keys() -> Vec<u64> {
    (0..1024u32)
        .map(|i| {
            key_hash(IpAddr::V4(Ipv4Addr::from(
                0xc633_6400 ^ i.wrapping_mul(2_654_435_761),
            )))
        })
        .collect()
}

fn first_candidate(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("select_first");
    for strategy in Strategy::ALL {
        for n in [5, 10, 100] {
            let s = set(n, strategy);
            let mut i = 0;
            group.bench_with_input(BenchmarkId::new(strategy.name(), n), &s, |b, s| {
                b.iter(|| {
                    i = (i + 1) & 1023;
                    s.selector
                        .candidates(&s.backends, black_box(keys[i]), |b| b.is_available())
                        .next()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, first_candidate);
criterion_main!(benches);
