//! The load figures strategies read, one [`Load`] per target.
//!
//! Every figure is shared by all connection threads and read on every
//! request by the strategies that use it, so each is a single atomic (or a
//! mutex held for a few instructions, never across an await) rather than
//! per-thread shards that a reader would have to sum: a least-connections
//! pick must see the requests the other threads have in flight *now*.
//! `cargo bench --bench select` measures what that costs.
//!
//! The latency estimate is Finagle's peak EWMA (also linkerd's and tower's
//! `PeakEwma`): a slower sample replaces the estimate at once, a faster one
//! is blended in with a weight that grows with the time since the last
//! sample (time constant [`DECAY`]). A backend that turns slow is avoided
//! within one request; one that recovers wins its traffic back gradually.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How fast the latency estimate forgets (tower's default).
pub const DECAY: Duration = Duration::from_secs(10);
/// The estimate of a target never measured: optimistic, so a new target is
/// tried (and measured) soon.
const INITIAL_RTT_NS: f64 = 1_000_000.0;

/// `queue` while no poll has answered yet.
const QUEUE_UNKNOWN: u64 = u64::MAX - 1;
/// `queue` after the target's queue endpoint failed.
const QUEUE_FAILED: u64 = u64::MAX;

/// What a target's queue endpoint said last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Not polled yet (counts as empty).
    Unknown,
    /// The length of the queue (running plus pending jobs).
    Length(u64),
    /// The endpoint failed or answered nonsense: the target is out of the
    /// least-queue rotation until it answers again.
    Failed,
}

/// One target's load.
#[derive(Debug)]
pub struct Load {
    in_flight: AtomicU64,
    /// Requests sent since the last queue poll (they are not in the polled
    /// figure yet).
    sent: AtomicU64,
    queue: AtomicU64,
    /// (estimate in ns, time of the last sample).
    ewma: Mutex<(f64, Option<Instant>)>,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            in_flight: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            queue: AtomicU64::new(QUEUE_UNKNOWN),
            ewma: Mutex::new((INITIAL_RTT_NS, None)),
        }
    }
}

/// One request in flight on a target, from [`Load::begin`] until dropped.
#[derive(Debug)]
#[must_use = "the request counts as in flight only while this lives"]
pub struct InFlight<'a>(&'a Load);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Load {
    /// Counts one request in flight until the guard drops.
    pub fn begin(&self) -> InFlight<'_> {
        self.enter();
        InFlight(self)
    }

    /// Counts one request in flight; pair with [`Load::leave`] (for owners
    /// that cannot hold a borrowed guard).
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.sent.fetch_add(1, Relaxed);
    }

    /// Ends what [`Load::enter`] began.
    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Requests in flight on this target now, over all threads.
    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Feeds one response time into the peak EWMA.
    pub fn record_latency(&self, rtt: Duration) {
        self.record_latency_at(rtt, Instant::now());
    }

    /// [`Load::record_latency`] with the time already read.
    pub fn record_latency_at(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut ewma = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let (estimate, last) = *ewma;
        let next = match last {
            // The first sample replaces the optimistic guess.
            None => rtt,
            Some(_) if rtt > estimate => rtt,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                let w = (-elapsed / DECAY.as_secs_f64()).exp();
                estimate * w + rtt * (1.0 - w)
            }
        };
        *ewma = (next, Some(now));
    }

    /// The latency estimate in nanoseconds, decayed for the time since the
    /// last sample (as tower's `PeakEwma` does when read): a backend that
    /// was slow once and has had no traffic since looks faster and faster,
    /// so it is tried, and measured, again.
    pub fn latency_ns(&self) -> f64 {
        self.latency_ns_at(Instant::now())
    }

    fn latency_ns_at(&self, now: Instant) -> f64 {
        let (estimate, last) = *self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        match last {
            None => estimate,
            Some(last) => {
                let idle = now.saturating_duration_since(last).as_secs_f64();
                estimate * (-idle / DECAY.as_secs_f64()).exp()
            }
        }
    }

    /// The cost least-time compares: latency times the work queued behind it.
    pub fn cost(&self) -> f64 {
        self.latency_ns() * (self.in_flight() + 1) as f64
    }

    /// Records what the queue endpoint said; `None`: it failed. Restarts
    /// the count of requests sent since.
    pub fn set_queue(&self, queue: Option<u64>) {
        let v = match queue {
            Some(n) => n.min(QUEUE_UNKNOWN - 1),
            None => QUEUE_FAILED,
        };
        self.queue.store(v, Relaxed);
        self.sent.store(0, Relaxed);
    }

    pub fn queue(&self) -> Queue {
        match self.queue.load(Relaxed) {
            QUEUE_UNKNOWN => Queue::Unknown,
            QUEUE_FAILED => Queue::Failed,
            n => Queue::Length(n),
        }
    }

    /// What least-queue compares: the polled queue plus what was sent since
    /// the poll; `None` when the queue endpoint failed.
    pub fn queue_score(&self) -> Option<u64> {
        let queued = match self.queue() {
            Queue::Failed => return None,
            Queue::Unknown => 0,
            Queue::Length(n) => n,
        };
        Some(queued.saturating_add(self.sent.load(Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_guards() {
        let load = Load::default();
        let a = load.begin();
        let b = load.begin();
        assert_eq!(load.in_flight(), 2);
        drop(a);
        assert_eq!(load.in_flight(), 1);
        drop(b);
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn a_slow_sample_wins_at_once_and_a_fast_one_decays_in() {
        let load = Load::default();
        let t0 = Instant::now();
        load.record_latency_at(Duration::from_millis(5), t0);
        assert_eq!(load.latency_ns_at(t0), 5e6);
        load.record_latency_at(Duration::from_millis(50), t0);
        assert_eq!(
            load.latency_ns_at(t0),
            50e6,
            "peak: a slower sample replaces"
        );
        // Unsampled for one time constant, it reads e times smaller.
        let idle = load.latency_ns_at(t0 + DECAY);
        assert!((idle - 50e6 / std::f64::consts::E).abs() < 1.0, "{idle}");
        // One time constant later a 5 ms sample moves the estimate 63% of
        // the way down.
        let t1 = t0 + DECAY;
        load.record_latency_at(Duration::from_millis(5), t1);
        let expected = 50e6 * (-1f64).exp() + 5e6 * (1.0 - (-1f64).exp());
        assert!((load.latency_ns_at(t1) - expected).abs() < 1.0);
    }

    #[test]
    fn the_queue_score_adds_what_was_sent_since_the_poll() {
        let load = Load::default();
        assert_eq!(load.queue(), Queue::Unknown);
        load.enter();
        load.enter();
        assert_eq!(load.queue_score(), Some(2));
        load.set_queue(Some(7));
        assert_eq!(load.queue_score(), Some(7));
        load.enter();
        assert_eq!(load.queue_score(), Some(8));
        load.set_queue(None);
        assert_eq!((load.queue(), load.queue_score()), (Queue::Failed, None));
    }
}
