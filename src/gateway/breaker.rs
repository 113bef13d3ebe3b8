//! The per-worker circuit breaker: `BREAKER_FAILURES` failures within
//! `BREAKER_WINDOW_SECS` open it; while open nothing is sent to the worker;
//! after `BREAKER_OPEN_SECS` one request goes through (half-open) and its
//! outcome closes the breaker or opens it again. This is the "5 failures in
//! 60 s" breaker of the systems the gateway replaces, and a case of Envoy's
//! outlier detection.
//!
//! A pure state machine over an explicit `now`, so its tests need no clock;
//! each replica keeps its own breakers (a worker one replica cannot reach
//! may be fine from another). The mutex is held for a few instructions,
//! never across an await.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub window: Duration,
    pub open: Duration,
}

/// What the breaker says about one more request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead.
    Yes,
    /// The one half-open request: its outcome decides.
    Probe,
    /// Open (or a probe is already out): send nothing.
    No,
}

/// How a breaker looks from outside (status page, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed {
        failures: VecDeque<Instant>,
    },
    Open {
        until: Instant,
    },
    /// A probe went out at `since`. If its outcome never arrives (the
    /// client went away), another probe may go after `open` again.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(State::Closed {
                failures: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match &*self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now >= *until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may be sent now. [`Admit::Probe`] moves an expired
    /// open breaker to half-open: the caller must report the outcome.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut state = self.lock();
        match &*state {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } if now >= *until => {
                *state = State::HalfOpen { since: now };
                Admit::Probe
            }
            State::HalfOpen { since } if now.duration_since(*since) >= self.config.open => {
                *state = State::HalfOpen { since: now };
                Admit::Probe
            }
            State::Open { .. } | State::HalfOpen { .. } => Admit::No,
        }
    }

    /// Whether [`Breaker::admit`] would let a request through, without
    /// taking the probe (for filtering candidates).
    pub fn would_admit(&self, now: Instant) -> bool {
        match &*self.lock() {
            State::Closed { .. } => true,
            State::Open { until } => now >= *until,
            State::HalfOpen { since } => now.duration_since(*since) >= self.config.open,
        }
    }

    /// A request succeeded. Returns the new state if this changed it.
    pub fn success(&self, _now: Instant) -> Option<BreakerState> {
        let mut state = self.lock();
        match &*state {
            State::HalfOpen { .. } => {
                *state = State::Closed {
                    failures: VecDeque::new(),
                };
                Some(BreakerState::Closed)
            }
            _ => None,
        }
    }

    /// A request failed in a way that blames the worker. Returns the new
    /// state if this changed it.
    pub fn failure(&self, now: Instant) -> Option<BreakerState> {
        let cfg = self.config;
        let mut state = self.lock();
        match &mut *state {
            State::Closed { failures } => {
                while failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= cfg.window)
                {
                    failures.pop_front();
                }
                failures.push_back(now);
                if failures.len() >= cfg.failures as usize {
                    *state = State::Open {
                        until: now + cfg.open,
                    };
                    return Some(BreakerState::Open);
                }
                None
            }
            State::HalfOpen { .. } => {
                *state = State::Open {
                    until: now + cfg.open,
                };
                Some(BreakerState::Open)
            }
            // Failures of requests admitted before it opened change nothing.
            State::Open { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        failures: 3,
        window: Duration::from_secs(10),
        open: Duration::from_secs(5),
    };

    #[test]
    fn opens_after_the_failures_within_the_window() {
        let b = Breaker::new(CFG);
        let t = Instant::now();
        assert_eq!(b.failure(t), None);
        assert_eq!(b.failure(t + Duration::from_secs(1)), None);
        assert_eq!(b.admit(t), Admit::Yes);
        assert_eq!(
            b.failure(t + Duration::from_secs(2)),
            Some(BreakerState::Open)
        );
        assert_eq!(b.admit(t + Duration::from_secs(3)), Admit::No);
        assert!(!b.would_admit(t + Duration::from_secs(3)));
        assert_eq!(b.state(t + Duration::from_secs(3)), BreakerState::Open);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = Breaker::new(CFG);
        let t = Instant::now();
        b.failure(t);
        b.failure(t + Duration::from_secs(1));
        // The first two are over 10 s old by now.
        assert_eq!(b.failure(t + Duration::from_secs(12)), None);
        assert_eq!(b.admit(t + Duration::from_secs(12)), Admit::Yes);
    }

    #[test]
    fn one_half_open_probe_decides() {
        let b = Breaker::new(CFG);
        let t = Instant::now();
        for i in 0..3 {
            b.failure(t + Duration::from_millis(i));
        }
        let later = t + Duration::from_secs(6);
        assert!(b.would_admit(later));
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.admit(later), Admit::No, "only one probe at a time");
        assert_eq!(b.failure(later), Some(BreakerState::Open));
        assert_eq!(b.admit(later + Duration::from_secs(1)), Admit::No);
        let again = later + Duration::from_secs(5);
        assert_eq!(b.admit(again), Admit::Probe);
        assert_eq!(b.success(again), Some(BreakerState::Closed));
        assert_eq!(b.admit(again), Admit::Yes);
        assert_eq!(b.state(again), BreakerState::Closed);
    }

    #[test]
    fn a_lost_probe_does_not_wedge_it() {
        let b = Breaker::new(CFG);
        let t = Instant::now();
        for _ in 0..3 {
            b.failure(t);
        }
        assert_eq!(b.admit(t + Duration::from_secs(5)), Admit::Probe);
        assert_eq!(b.admit(t + Duration::from_secs(9)), Admit::No);
        assert_eq!(b.admit(t + Duration::from_secs(10)), Admit::Probe);
    }
}
