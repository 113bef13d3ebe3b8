//! Rate limiting per client key (`RATE_LIMIT_RPS`, `RATE_LIMIT_BURST`; off
//! by default): a token bucket per client, `burst` requests at once and
//! `rps` a second after that, checked once per request by the
//! [`driver`](super::driver), the same on both transports. A request over
//! the limit gets `429` with `Retry-After` (whole seconds until a token is
//! back, at least 1) and a JSON body, and reaches no backend.
//!
//! The buckets are `governor`'s keyed GCRA limiter: one 64-bit "theoretical
//! arrival time" per client in a sharded map, updated with a compare-and-
//! swap, no lock across anything.
//!
//! **Memory.** A client's entry is worth keeping only until its bucket is
//! full again, `burst / rps` seconds after its last request; after that it
//! is indistinguishable from a new client. [`Limiter::sweep`] (every
//! second, from the balancer's control plane) drops those entries
//! (`retain_recent`) and hands the map's spare capacity back when it
//! shrank by half. So however many distinct addresses arrive, the table
//! holds at most the addresses seen in the last `burst / rps + 1` seconds,
//! about 64 bytes each (measured: `tests/rate_limit.rs`); a burst of
//! 100,000 addresses is gone again within that time.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::RateLimit;

/// The per-client token buckets.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// The table's size after the last sweep that shrank it.
    shrunk_at: AtomicUsize,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        let period = Duration::from_secs_f64(1.0 / limit.rps).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        Limiter {
            limit,
            buckets: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            shrunk_at: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token of `client`'s bucket; `Err(seconds)` to wait when it
    /// is empty (for `Retry-After`, at least 1).
    #[inline]
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        match self.buckets.check_key(&client) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
        }
    }

    /// Drops the buckets that have filled up again (see the module docs).
    pub fn sweep(&self) {
        self.buckets.retain_recent();
        let now = self.buckets.len();
        let before = self.shrunk_at.load(Relaxed);
        if now < before / 2 {
            self.buckets.shrink_to_fit();
            self.shrunk_at.store(now, Relaxed);
        } else if now > before {
            self.shrunk_at.store(now, Relaxed);
        }
    }

    /// Clients whose bucket is not full (what the table holds).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// How long an idle client's entry can outlive its last request
    /// before a sweep drops it: `burst / rps`.
    pub fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.limit.burst) / self.limit.rps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_client_waits_and_others_do_not() {
        let l = Limiter::new(RateLimit { rps: 1.0, burst: 3 });
        let a = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..3 {
            assert_eq!(l.check(a), Ok(()));
        }
        assert_eq!(l.check(a), Err(1));
        assert_eq!(l.check(IpAddr::from([10, 0, 0, 2])), Ok(()));
        assert_eq!(l.tracked(), 2);
    }
}
