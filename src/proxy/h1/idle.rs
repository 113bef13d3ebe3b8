//! One clock for every idle fast-path connection of a balancer. It ticks
//! four times a second (four times per idle timeout when that is shorter) and
//! wakes the idle connections on each tick, so each can see whether to
//! close (timeout, drain) or to move to the parking lot ([`super::park`]);
//! and it wakes them at once when the drain begins.
//!
//! A timer per connection (tokio's `Sleep`) would add over a hundred bytes
//! to every idle connection's task and a timer-wheel insert to every
//! request; a coarse check is how nginx and HAProxy treat keep-alive
//! timeouts too. The price: an idle connection closes between the timeout
//! and one tick more.
//!
//! Open tunnels ([`crate::proxy::tunnel`]) have a clock of their own, of
//! the same kind but with ticks of up to a minute ([`IdleClock::with_max_tick`]).
//!
//! At the connection budget the accept loop may ask for idle connections to
//! close ([`IdleClock::shed_waiting`]): those not parked yet close at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::shutdown::Shutdown;

/// The longest tick.
const MAX_TICK: Duration = Duration::from_millis(250);
/// Never tick faster than this (a zero or tiny timeout).
const MIN_TICK: Duration = Duration::from_millis(10);
/// Ticks of idleness after which a connection parks: a quarter to half a
/// second at the usual tick.
const PARK_TICKS: u64 = 2;

#[derive(Debug)]
pub struct IdleClock {
    tick: Duration,
    /// Ticks in one idle timeout (rounded up).
    timeout_ticks: u64,
    ticks: AtomicU64,
    /// Connections idle since a tick before this one close (see
    /// [`IdleClock::shed_waiting`]).
    shed_before: AtomicU64,
    draining: AtomicBool,
    notify: Notify,
}

impl IdleClock {
    pub fn new(idle_timeout: Duration) -> Self {
        Self::with_max_tick(idle_timeout, MAX_TICK)
    }

    /// A clock whose ticks may be as long as `max_tick`: a quarter of the
    /// timeout up to that. Tunnels use it: waking thousands of open tunnels
    /// four times a second to check an hour's timeout would cost more than
    /// the tunnels themselves.
    pub fn with_max_tick(idle_timeout: Duration, max_tick: Duration) -> Self {
        let tick = (idle_timeout / 4).clamp(MIN_TICK, max_tick.max(MIN_TICK));
        let timeout_ticks = idle_timeout.as_nanos().div_ceil(tick.as_nanos());
        IdleClock {
            tick,
            timeout_ticks: u64::try_from(timeout_ticks).unwrap_or(u64::MAX),
            ticks: AtomicU64::new(0),
            shed_before: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// How often the clock ticks.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The current tick; an idle period starts here.
    pub fn now(&self) -> u64 {
        self.ticks.load(Relaxed)
    }

    /// A wake-up for the next tick or the drain. Take it before checking
    /// [`IdleClock::expired`]: a tick between the two still wakes it.
    pub fn next(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Whether a connection idle since tick `since` should close: a full
    /// timeout has passed for certain, or the drain began.
    pub fn expired(&self, since: u64) -> bool {
        self.draining() || self.now().saturating_sub(since) > self.timeout_ticks
    }

    /// Asks every connection idle since before the current tick and not
    /// parked to close (the budget needs room; see `server`), and wakes
    /// them. Not those that went idle within this tick: among them is the
    /// connection just accepted, whose request is on its way.
    pub fn shed_waiting(&self) {
        self.shed_before.fetch_max(self.now(), Relaxed);
        self.notify.notify_waiters();
    }

    /// Whether a connection idle since tick `since` was asked to close by
    /// [`IdleClock::shed_waiting`].
    pub fn is_shed(&self, since: u64) -> bool {
        since < self.shed_before.load(Relaxed)
    }

    /// Whether a connection idle since tick `since` has been idle long
    /// enough to park.
    pub fn may_park(&self, since: u64) -> bool {
        self.now().saturating_sub(since) >= PARK_TICKS
    }

    /// Whether the drain began (connections close after their exchange).
    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Ticks until `shutdown`, then marks the drain and wakes everyone.
    pub async fn run(&self, shutdown: Shutdown) {
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + self.tick, self.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => break,
                _ = every.tick() => {
                    self.ticks.fetch_add(1, Relaxed);
                    self.notify.notify_waiters();
                }
            }
        }
        self.draining.store(true, Relaxed);
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_divide_the_timeout() {
        let c = IdleClock::new(Duration::from_secs(60));
        assert_eq!((c.tick, c.timeout_ticks), (Duration::from_millis(250), 240));
        let c = IdleClock::new(Duration::from_millis(400));
        assert_eq!((c.tick, c.timeout_ticks), (Duration::from_millis(100), 4));
        let c = IdleClock::new(Duration::ZERO);
        assert_eq!((c.tick, c.timeout_ticks), (MIN_TICK, 0));
        let c = IdleClock::with_max_tick(Duration::from_secs(3600), Duration::from_secs(60));
        assert_eq!((c.tick, c.timeout_ticks), (Duration::from_secs(60), 60));
        let c = IdleClock::with_max_tick(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!((c.tick, c.timeout_ticks), (Duration::from_millis(250), 4));
    }

    #[test]
    fn expiry_needs_a_whole_timeout_and_the_drain_ends_everything() {
        let c = IdleClock::new(Duration::from_millis(400));
        for _ in 0..4 {
            c.ticks.fetch_add(1, Relaxed);
            assert!(!c.expired(0));
        }
        c.ticks.fetch_add(1, Relaxed);
        assert!(c.expired(0) && !c.expired(1));
        c.draining.store(true, Relaxed);
        assert!(c.expired(5));
    }
}
