//! Ring lookup cost by backend count: the owner of a key (`primary`), the
//! first candidate (what the proxy asks for on every request) and the walk
//! to a second candidate (failover, the only path that allocates).
//!
//! `cargo bench --bench ring`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hashgate::ring::{Ring, key_hash};

fn backends(n: usize) -> Vec<(String, u32)> {
    (0..n)
        .map(|i| (format!("10.0.{}.{}:13004", i / 200, i % 200 + 1), 1))
        .collect()
}

/// 1,024 client keys, so lookups touch different cache lines of the table.
fn hashes() -> Vec<u64> {
    (0..1024u32)
        .map(|i| {
            key_hash(IpAddr::V4(Ipv4Addr::from(
                0xc633_6400 ^ i.wrapping_mul(2_654_435_761),
            )))
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let keys = hashes();
    let mut group = c.benchmark_group("ring");
    for n in [5, 10, 100] {
        let ring = Ring::build(&backends(n));
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("primary", n), &ring, |b, ring| {
            b.iter(|| {
                i = (i + 1) & 1023;
                ring.primary(black_box(keys[i]))
            })
        });
        group.bench_with_input(BenchmarkId::new("first_candidate", n), &ring, |b, ring| {
            b.iter(|| {
                i = (i + 1) & 1023;
                ring.candidates(black_box(keys[i])).next()
            })
        });
        group.bench_with_input(BenchmarkId::new("failover_second", n), &ring, |b, ring| {
            b.iter(|| {
                i = (i + 1) & 1023;
                ring.candidates(black_box(keys[i])).nth(1)
            })
        });
    }
    group.finish();

    c.bench_function("ring/key_hash_v4", |b| {
        let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        b.iter(|| key_hash(black_box(ip)))
    });
    c.bench_function("ring/key_hash_v6", |b| {
        let ip: IpAddr = "2001:db8::1:9".parse().expect("literal");
        b.iter(|| key_hash(black_box(ip)))
    });
}

criterion_group!(benches, lookups);
criterion_main!(benches);
