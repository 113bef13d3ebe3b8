//! One clock for every idle fast-path connection of a balancer: it ticks
//! [`TICKS_PER_TIMEOUT`] times per idle timeout and wakes the idle
//! connections on each tick, so they can see whether their time is up, and
//! at once when the drain begins.
//!
//! A timer per connection (tokio's `Sleep`) would add over a hundred bytes
//! to every idle connection's task and a timer-wheel insert to every
//! request; this is how nginx and HAProxy treat keep-alive timeouts too (a
//! coarse check, not a timer each). The price: an idle connection closes
//! between the timeout and a quarter more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::shutdown::Shutdown;

/// Ticks per idle timeout: the timeout's resolution.
pub const TICKS_PER_TIMEOUT: u64 = 4;
/// Never tick faster than this (a zero or tiny timeout).
const MIN_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
pub struct IdleClock {
    ticks: AtomicU64,
    draining: AtomicBool,
    notify: Notify,
}

impl IdleClock {
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
        self.draining() || self.now().saturating_sub(since) > TICKS_PER_TIMEOUT
    }

    /// Whether the drain began (connections close after their exchange).
    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Ticks until `shutdown`, then marks the drain and wakes everyone.
    pub async fn run(&self, idle_timeout: Duration, shutdown: Shutdown) {
        let tick = (idle_timeout / TICKS_PER_TIMEOUT as u32).max(MIN_TICK);
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
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
