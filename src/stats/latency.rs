//! A backend's request figures, per worker thread: answers by status
//! class, failures by kind, an all-time latency histogram with Prometheus'
//! usual bucket bounds (for `/metrics`), and a sliding window of finer
//! buckets for the percentiles `/lb/stats` and the `/lb` charts show.
//!
//! **The window.** [`SLICES`] slices of [`SLICE_SECS`] seconds each, so
//! the percentiles cover the last 50 to 60 s (the window moves on in 10 s
//! steps: the oldest slice is dropped whole when a new one starts). The
//! slice that has just ended is also what the `/lb` charts take as one
//! point (requests per second and p99 over those 10 s).
//!
//! **The buckets.** A response time in microseconds falls in bucket
//! `4·⌊log2 t⌋ + (the two bits after the leading one)`: four buckets per
//! doubling, each 14-25% wide, from 1 µs to 2^28 µs (4.5 min; slower
//! answers share the last bucket). A percentile is reported as the middle
//! of its bucket, so it is within about ±12% of the exact order statistic;
//! that is plenty to tell 3 ms from 30 ms and costs one `leading_zeros`
//! and one atomic add per request, with no lock and no allocation.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::shard::PerThread;

/// Seconds per slice of the sliding window.
pub const SLICE_SECS: u64 = 10;
/// Slices in the window (the current one included).
pub const SLICES: usize = 6;
/// Buckets of the window's histogram (four per doubling of microseconds).
const FINE: usize = 4 * 28;

/// Upper bounds (seconds) of the `/metrics` histogram buckets (+Inf after).
pub const PROM_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The same bounds in microseconds, for the request path's comparisons.
const PROM_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Why an attempt (or a body) failed, as `/metrics` and `/lb/stats` count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection could be made.
    Connect,
    /// No answer within `UPSTREAM_TIMEOUT_SECS`, or a stall mid-body.
    Timeout,
    /// Reset or closed before the answer was complete.
    Reset,
    /// An answer that is not HTTP, or not framed.
    BadResponse,
    /// A 502, 503 or 504 of the backend's own.
    GatewayStatus,
}

impl FailureKind {
    pub const ALL: [FailureKind; 5] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::Reset,
        FailureKind::BadResponse,
        FailureKind::GatewayStatus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::BadResponse => "bad_response",
            FailureKind::GatewayStatus => "gateway_status",
        }
    }
}

/// The status classes counted, `1xx` to `5xx`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The start of the process-wide clock the windows' slices are numbered on.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The slice number of `at`.
#[inline]
pub fn slice_of(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_secs() / SLICE_SECS
}

/// The running slice's number as [`tick`] last set it: what the request
/// path files an answer under, one atomic load instead of a clock read and
/// a division per request.
static CURRENT: AtomicU64 = AtomicU64::new(0);

/// Moves the request path on to the slice `now` is in (the balancer's
/// sampler calls it just after each slice begins; answers in that moment
/// count in the slice before, which is harmless).
pub fn tick(now: Instant) {
    CURRENT.fetch_max(slice_of(now), Relaxed);
}

/// The slice the request path files answers under now.
#[inline]
pub fn current_slice() -> u64 {
    CURRENT.load(Relaxed)
}

#[derive(Debug)]
struct Slice {
    /// The slice number these counts belong to (+1, so 0 means never used).
    number: AtomicU64,
    counts: [AtomicU32; FINE],
}

impl Default for Slice {
    fn default() -> Self {
        Slice {
            number: AtomicU64::new(0),
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// One thread's figures of one backend.
#[derive(Debug)]
struct Shard {
    classes: [AtomicU64; 5],
    failures: [AtomicU64; 5],
    /// Non-cumulative; the last is +Inf.
    prom: [AtomicU64; PROM_BOUNDS.len() + 1],
    sum_us: AtomicU64,
    window: [Slice; SLICES],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            classes: Default::default(),
            failures: Default::default(),
            prom: Default::default(),
            sum_us: AtomicU64::new(0),
            window: Default::default(),
        }
    }
}

/// A backend's request figures (see the module docs).
#[derive(Debug, Default)]
pub struct BackendMetrics {
    shards: PerThread<Shard>,
}

/// The fine bucket of `us` microseconds.
#[inline]
fn fine_bucket(us: u64) -> usize {
    let us = us.max(1);
    let log = 63 - us.leading_zeros() as usize;
    let frac = if log >= 2 {
        (us >> (log - 2)) as usize & 3
    } else {
        (us << (2 - log)) as usize & 3
    };
    (log * 4 + frac).min(FINE - 1)
}

/// The range of microseconds bucket `i` holds: `[low, high)`.
fn fine_range(i: usize) -> (f64, f64) {
    let (log, frac) = (i / 4, (i % 4) as f64);
    let unit = 2f64.powi(log as i32) / 4.0;
    ((4.0 + frac) * unit, (5.0 + frac) * unit)
}

impl BackendMetrics {
    /// A response head arrived after `took`, in slice `slice` (see
    /// [`current_slice`]).
    #[inline]
    pub fn answered(&self, status: u16, took: Duration, slice: u64) {
        let shard = self.shards.local();
        let class = (status / 100).clamp(1, 5) as usize - 1;
        shard.classes[class].fetch_add(1, Relaxed);
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let prom = PROM_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(PROM_BOUNDS_US.len());
        shard.prom[prom].fetch_add(1, Relaxed);
        shard.sum_us.fetch_add(us, Relaxed);
        let number = slice + 1;
        let slice = &shard.window[(number as usize) % SLICES];
        let seen = slice.number.load(Relaxed);
        if seen != number
            && slice
                .number
                .compare_exchange(seen, number, Relaxed, Relaxed)
                .is_ok()
        {
            // The first answer of a new slice clears the oldest one's counts.
            for c in &slice.counts {
                c.store(0, Relaxed);
            }
        }
        slice.counts[fine_bucket(us)].fetch_add(1, Relaxed);
    }

    /// An attempt or a body failed this way.
    #[inline]
    pub fn failed(&self, kind: FailureKind) {
        self.shards.local().failures[kind as usize].fetch_add(1, Relaxed);
    }

    /// Answers by status class, `1xx` first.
    pub fn classes(&self) -> [u64; 5] {
        let mut out = [0; 5];
        for s in self.shards.iter() {
            for (o, c) in out.iter_mut().zip(&s.classes) {
                *o += c.load(Relaxed);
            }
        }
        out
    }

    /// Failures by kind, in [`FailureKind::ALL`] order.
    pub fn failures(&self) -> [u64; 5] {
        let mut out = [0; 5];
        for s in self.shards.iter() {
            for (o, c) in out.iter_mut().zip(&s.failures) {
                *o += c.load(Relaxed);
            }
        }
        out
    }

    /// The all-time histogram: (cumulative counts per bound in
    /// [`PROM_BOUNDS`] order then +Inf, sum in seconds).
    pub fn histogram(&self) -> (Vec<u64>, f64) {
        let mut counts = vec![0u64; PROM_BOUNDS.len() + 1];
        let mut sum = 0u64;
        for s in self.shards.iter() {
            for (o, c) in counts.iter_mut().zip(&s.prom) {
                *o += c.load(Relaxed);
            }
            sum += s.sum_us.load(Relaxed);
        }
        let mut running = 0;
        for c in &mut counts {
            running += *c;
            *c = running;
        }
        (counts, sum as f64 / 1e6)
    }

    /// The fine counts of the slices `from..=to` (slice numbers), summed
    /// over the threads.
    fn window_counts(&self, from: u64, to: u64) -> [u64; FINE] {
        let mut out = [0u64; FINE];
        for s in self.shards.iter() {
            for slice in &s.window {
                let n = slice.number.load(Relaxed);
                if n == 0 || n - 1 < from || n - 1 > to {
                    continue;
                }
                for (o, c) in out.iter_mut().zip(&slice.counts) {
                    *o += u64::from(c.load(Relaxed));
                }
            }
        }
        out
    }

    /// Percentiles over the sliding window ending at `now`.
    pub fn window(&self, now: Instant) -> Percentiles {
        let to = slice_of(now);
        let from = to.saturating_sub(SLICES as u64 - 1);
        Percentiles::of(&self.window_counts(from, to))
    }

    /// The figures of one slice (`slice` numbers as [`slice_of`]).
    pub fn slice(&self, slice: u64) -> Percentiles {
        Percentiles::of(&self.window_counts(slice, slice))
    }
}

/// Answers counted and their response-time percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Percentiles {
    fn of(counts: &[u64; FINE]) -> Percentiles {
        let samples: u64 = counts.iter().sum();
        let at = |q: f64| -> Option<f64> {
            if samples == 0 {
                return None;
            }
            // The smallest value with at least q of the samples at or below it.
            let rank = ((q * samples as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    let (low, high) = fine_range(i);
                    let ms = (low + high) / 2.0 / 1000.0;
                    return Some((ms * 1000.0).round() / 1000.0);
                }
            }
            None
        };
        Percentiles {
            samples,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
        }
    }
}

impl BackendMetrics {
    /// Percentiles over the window of several backends together.
    pub fn merged_window<'a>(
        all: impl Iterator<Item = &'a BackendMetrics>,
        now: Instant,
    ) -> Percentiles {
        let to = slice_of(now);
        let from = to.saturating_sub(SLICES as u64 - 1);
        let mut sum = [0u64; FINE];
        for m in all {
            for (o, c) in sum.iter_mut().zip(m.window_counts(from, to)) {
                *o += c;
            }
        }
        Percentiles::of(&sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_quarters_of_a_doubling_and_hold_their_values() {
        assert_eq!(fine_bucket(0), fine_bucket(1));
        for us in [1u64, 3, 7, 100, 999, 1000, 1001, 12_345, 3_000_000] {
            let (low, high) = fine_range(fine_bucket(us));
            assert!(
                low <= us as f64 && (us as f64) < high,
                "{us}: [{low}, {high})"
            );
            assert!(high / low <= 1.5, "{us}: bucket too wide");
        }
        assert_eq!(fine_bucket(u64::MAX), FINE - 1);
    }

    #[test]
    fn percentiles_come_from_the_window_and_old_slices_drop_out() {
        let m = BackendMetrics::default();
        let t0 = epoch() + Duration::from_secs(1000);
        for i in 0..100u64 {
            // 1..=100 ms
            m.answered(200, Duration::from_millis(i + 1), slice_of(t0));
        }
        let p = m.window(t0);
        assert_eq!(p.samples, 100);
        let near = |got: Option<f64>, want: f64| {
            let got = got.expect("a value");
            assert!((got - want).abs() / want < 0.13, "{got} vs {want}");
        };
        near(p.p50_ms, 50.0);
        near(p.p95_ms, 95.0);
        near(p.p99_ms, 99.0);
        assert_eq!(m.classes(), [0, 100, 0, 0, 0]);
        // A minute later the slice is out of the window; a new answer
        // reuses (and clears) its place.
        let t1 = t0 + Duration::from_secs(SLICE_SECS * SLICES as u64);
        assert_eq!(m.window(t1).samples, 0);
        m.answered(503, Duration::from_millis(2), slice_of(t1));
        assert_eq!(m.window(t1).samples, 1);
        assert_eq!(m.classes()[4], 1);
        let (hist, sum) = m.histogram();
        assert_eq!(*hist.last().unwrap(), 101);
        assert!(sum > 5.0);
    }
}
