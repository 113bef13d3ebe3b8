//! The rate limiter's memory bound with 100,000 distinct client addresses,
//! driven directly (the table is the same one the balancer sweeps every
//! second; `tests/rate_limit.rs` does the same over real sockets with
//! 2,000): the table never holds more than the addresses of its refill
//! window, each costs about the documented 64 bytes, and a sweep after the
//! buckets have filled up again leaves it empty. Alone in its test binary
//! so the process's memory is its own.

use std::net::IpAddr;
use std::time::Duration;

use hashgate::config::RateLimit;
use hashgate::proxy::limit::Limiter;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn one_hundred_thousand_addresses_do_not_outgrow_the_bound() {
    let limiter = Limiter::new(RateLimit {
        rps: 10.0,
        burst: 5,
    });
    let before = rss();
    for i in 0..100_000u32 {
        let ip = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        // Two requests each: every bucket is left part-empty.
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.check(ip).is_ok());
    }
    let peak = limiter.tracked();
    let grown = rss().saturating_sub(before);
    let per_entry = grown as f64 / peak as f64;
    println!(
        "100,000 addresses: {peak} entries, {grown} bytes more resident, {per_entry:.0} bytes each"
    );
    assert!(peak <= 100_000, "{peak}");
    assert!(
        per_entry < 128.0,
        "{per_entry:.0} bytes per client: more than documented"
    );
    // The buckets are full again after burst / rps = 0.5 s.
    std::thread::sleep(limiter.refill_time() + Duration::from_millis(100));
    limiter.sweep();
    assert_eq!(
        limiter.tracked(),
        0,
        "a sweep after the refill time forgets them all"
    );
    // Another wave reuses the space.
    for i in 0..100_000u32 {
        let ip = IpAddr::from((0x0b00_0000 + i).to_be_bytes());
        assert!(limiter.check(ip).is_ok());
    }
    assert!(limiter.tracked() <= 100_000);
}
