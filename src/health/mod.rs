//! Backend health, active and passive: an IO-free state machine with
//! rise/fall thresholds ([`Machine`]), the per-backend cell the request path
//! reads ([`HealthCell`]), the HTTP probe ([`probe`]), the checking loop
//! ([`checker`]), outlier detection from the requests themselves
//! ([`outlier`]), and the container probe the binaries run against their own
//! process ([`selfcheck`]).
//!
//! Active checks decide by thresholds so one blip does not flap a backend; a
//! new backend's first result counts at once, so a replica that comes up
//! healthy takes clients after one check. Requests never mark a backend
//! down here: their failures feed outlier detection, and a refused
//! connection rings the loop's bell for an immediate re-check.

pub mod checker;
pub mod outlier;
pub mod probe;
pub mod selfcheck;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// Rise/fall counter. `observe` reports when the verdict flips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    up: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
    /// No result seen yet: the first one decides alone.
    fresh: bool,
}

impl Default for Machine {
    /// A backend nobody has checked yet is presumed up (so a restart of the
    /// balancer does not refuse traffic until the first round completes).
    fn default() -> Self {
        Machine {
            up: true,
            streak: 0,
            fresh: true,
        }
    }
}

impl Machine {
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Feeds one check result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let fresh = std::mem::replace(&mut self.fresh, false);
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { rise } else { fall };
        if fresh || self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// A change of verdict, as [`HealthCell::record`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    Up,
    Down,
    /// The very first check of a new backend failed: it was presumed up
    /// until then, but was never seen healthy (an instance still starting).
    /// Worth a line, not a warning.
    NotReady,
}

/// What the status page shows about the last check.
#[derive(Debug, Clone, Default)]
pub struct LastCheck {
    pub at: Option<SystemTime>,
    pub latency: Option<Duration>,
    /// Why the last check failed (`None` when it passed).
    pub error: Option<String>,
}

/// One backend's health: an atomic flag for the request path, the machine
/// and the last result behind a mutex that is never held across an await.
#[derive(Debug)]
pub struct HealthCell {
    up: AtomicBool,
    state: Mutex<(Machine, LastCheck)>,
}

impl Default for HealthCell {
    fn default() -> Self {
        HealthCell::new()
    }
}

impl HealthCell {
    pub fn new() -> Self {
        HealthCell {
            up: AtomicBool::new(true),
            state: Mutex::default(),
        }
    }

    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records an active check; returns the change when the verdict flipped.
    pub fn record(&self, check: LastCheck, rise: u32, fall: u32) -> Option<Flip> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let first = guard.0.fresh;
        let flipped = guard.0.observe(check.error.is_none(), rise, fall);
        guard.1 = check;
        self.up.store(guard.0.is_up(), Ordering::Relaxed);
        flipped.map(|up| match (up, first) {
            (true, _) => Flip::Up,
            (false, true) => Flip::NotReady,
            (false, false) => Flip::Down,
        })
    }

    pub fn last_check(&self) -> LastCheck {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let mut m = Machine::default();
        assert!(m.is_up());
        assert_eq!(
            m.observe(false, 2, 3),
            Some(false),
            "first failure counts at once"
        );
        assert_eq!(
            m.observe(true, 2, 3),
            None,
            "one success is not enough to rise"
        );
        assert_eq!(m.observe(true, 2, 3), Some(true));
        assert_eq!(m.observe(false, 2, 3), None);
        assert_eq!(m.observe(false, 2, 3), None);
        assert_eq!(m.observe(false, 2, 3), Some(false), "third failure falls");
    }

    #[test]
    fn a_blip_resets_the_streak() {
        let mut m = Machine::default();
        m.observe(true, 2, 2);
        assert_eq!(m.observe(false, 2, 2), None);
        assert_eq!(m.observe(true, 2, 2), None);
        assert_eq!(m.observe(false, 2, 2), None, "streak restarted");
        assert!(m.is_up());
    }

    #[test]
    fn a_new_backend_failing_its_first_check_is_not_ready_not_down() {
        let failed = LastCheck {
            at: Some(SystemTime::now()),
            latency: None,
            error: Some("answered 503".into()),
        };
        let ok = LastCheck {
            error: None,
            ..failed.clone()
        };
        let cell = HealthCell::new();
        assert_eq!(cell.record(failed.clone(), 1, 1), Some(Flip::NotReady));
        assert!(!cell.is_up());
        assert_eq!(cell.record(ok, 1, 1), Some(Flip::Up));
        assert_eq!(cell.record(failed, 1, 1), Some(Flip::Down));
    }
}
