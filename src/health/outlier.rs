//! Outlier detection: passive health from the requests themselves, Envoy's
//! model (`consecutive_gateway_failure`, growing ejection time, a cap on
//! how many backends may be ejected at once), of which the "5 failures,
//! then open the breaker" circuit breakers of the systems hashgate
//! replaces are a case.
//!
//! A backend is **ejected** after `consecutive_failures` gateway failures
//! in a row (a refused or reset connection, a garbage answer, a timeout, a
//! 502/503/504 from the backend; one success resets the count). The n-th
//! ejection lasts n times the base (capped); time spent healthy since the
//! last one earns the count back (one base period per step). When the time
//! is up the backend is **half-open**: the next request (or active check)
//! decides: success restores it, failure ejects it again for longer. An
//! active check that passes also ends an ejection that connection failures
//! caused (the process was gone, and now it answers): it cannot vouch for
//! an ejection caused by the answers themselves.
//!
//! One client can never eject a backend by itself through slowness: a
//! timeout counts once per client key within a streak, so ten slow
//! requests from one client are one failure, while every other client's
//! timeout still counts. The at-most-this-share cap is the caller's
//! (`may_eject`), since it needs the whole backend set.
//!
//! The request path reads one atomic per request ([`Outlier::admit`]); the
//! mutex is taken only on failures, on the first success after one, and
//! around ejections.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

/// Outlier detection (Envoy's model) and the panic threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// `OUTLIER_CONSECUTIVE_FAILURES`: gateway failures in a row that eject.
    pub consecutive_failures: u32,
    /// `OUTLIER_BASE_EJECTION_SECS`: the first ejection's length; the n-th
    /// lasts n times as long.
    pub base_ejection: Duration,
    /// `OUTLIER_MAX_EJECTION_SECS`: the longest an ejection lasts.
    pub max_ejection: Duration,
    /// `OUTLIER_MAX_EJECTION_PERCENT`: at most this share of the backends
    /// is ejected at once.
    pub max_ejection_percent: u32,
    /// `PANIC_THRESHOLD_PERCENT`: below this share of backends available,
    /// route over all of them rather than answer 503.
    pub panic_threshold_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            panic_threshold_percent: 50,
        }
    }
}

const HEALTHY: u8 = 0;
const EJECTED: u8 = 1;
const HALF_OPEN: u8 = 2;
const PROBING: u8 = 3;

/// What kind of gateway failure a backend caused (the request path's rules
/// decide which failures blame a backend at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No connection could be made (refused, connect timeout).
    Connect,
    /// The backend took too long; `client` is the key of the client whose
    /// request it was (a streak counts each client once).
    Timeout { client: u64 },
    /// Reset, closed early, a garbage answer, or a 502/503/504 of its own.
    Answer,
}

/// Whether a backend takes a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Half-open: it takes one request, the one that claims
    /// [`Outlier::try_probe`].
    Probe,
    No,
}

/// A change worth one log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Ejected {
        for_: Duration,
        failures: u32,
        times: u32,
    },
    HalfOpen,
    Restored,
}

impl Change {
    /// One line per outlier state change of backend `name`.
    pub fn log(&self, name: &str, why: &str) {
        match self {
            Change::Ejected {
                for_,
                failures,
                times,
            } => tracing::warn!(
                backend = %name,
                for_secs = for_.as_secs_f64(),
                failures,
                ejections = times,
                last_failure = why,
                "backend ejected"
            ),
            Change::HalfOpen => tracing::info!(backend = %name, "backend half-open"),
            Change::Restored => tracing::info!(backend = %name, reason = why, "backend restored"),
        }
    }
}

/// What the status page shows.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    Healthy,
    Ejected {
        until: SystemTime,
        reason: String,
        times: u32,
    },
    HalfOpen {
        reason: String,
        times: u32,
    },
}

#[derive(Debug, Default)]
struct Inner {
    /// Client keys whose timeouts are already in the current streak.
    timeout_keys: Vec<u64>,
    /// Ejections so far, after decay.
    times: u32,
    /// When the last ejection ended.
    restored_at: Option<Instant>,
    /// Whether the current ejection was caused by connection failures.
    by_connect: bool,
    /// The last failure's description, for the status page.
    reason: String,
    until: Option<SystemTime>,
}

/// One backend's outlier state.
#[derive(Debug)]
pub struct Outlier {
    state: AtomicU8,
    /// While ejected: the end (ms on [`clock_ms`]); while probing: when the
    /// probe is given up as lost.
    until_ms: AtomicU64,
    streak: AtomicU32,
    /// Ejections since the backend appeared (never decays: `/metrics`'
    /// `hashgate_backend_ejections_total`).
    ejections: AtomicU64,
    inner: Mutex<Inner>,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            state: AtomicU8::new(HEALTHY),
            until_ms: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            inner: Mutex::default(),
        }
    }
}

/// The outlier state from its atomics alone (see [`Outlier::phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    Ejected,
    HalfOpen,
}

/// Milliseconds on a process-wide monotonic clock.
fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Outlier {
    /// Whether the backend takes a request now. A cheap read unless an
    /// ejection is running out.
    #[inline]
    pub fn admit(&self) -> Admit {
        match self.state.load(Relaxed) {
            HEALTHY => Admit::Yes,
            HALF_OPEN => Admit::Probe,
            state => {
                // Ejected until, or probing since: look at the clock.
                if clock_ms() < self.until_ms.load(Relaxed) {
                    Admit::No
                } else if self
                    .state
                    .compare_exchange(state, HALF_OPEN, Relaxed, Relaxed)
                    .is_ok()
                    || self.state.load(Relaxed) == HALF_OPEN
                {
                    Admit::Probe
                } else {
                    self.admit_settled()
                }
            }
        }
    }

    fn admit_settled(&self) -> Admit {
        match self.state.load(Relaxed) {
            HEALTHY => Admit::Yes,
            HALF_OPEN => Admit::Probe,
            _ => Admit::No,
        }
    }

    /// Claims the half-open backend's one request. False when another
    /// request got there first. A probe that never reports is given up
    /// after `lost_after`, and the backend is half-open again.
    pub fn try_probe(&self, lost_after: Duration) -> bool {
        let claimed = self
            .state
            .compare_exchange(HALF_OPEN, PROBING, Relaxed, Relaxed)
            .is_ok();
        if claimed {
            self.until_ms
                .store(clock_ms() + lost_after.as_millis() as u64, Relaxed);
        }
        claimed
    }

    /// The state without taking the lock and without side effects (an
    /// ejection that ran out reads as half-open): what a scrape reads.
    pub fn phase(&self) -> Phase {
        match self.state.load(Relaxed) {
            HEALTHY => Phase::Healthy,
            HALF_OPEN | PROBING => Phase::HalfOpen,
            _ if clock_ms() >= self.until_ms.load(Relaxed) => Phase::HalfOpen,
            _ => Phase::Ejected,
        }
    }

    /// Ejections since the backend appeared.
    pub fn ejections_total(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// Whether it is ejected or half-open (counts against the cap).
    pub fn is_out(&self) -> bool {
        self.state.load(Relaxed) != HEALTHY
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request succeeded: the streak ends; a half-open backend is restored.
    #[inline]
    pub fn success(&self) -> Option<Change> {
        if self.streak.load(Relaxed) == 0 && self.state.load(Relaxed) == HEALTHY {
            return None;
        }
        self.success_slow()
    }

    fn success_slow(&self) -> Option<Change> {
        let mut inner = self.inner();
        self.streak.store(0, Relaxed);
        inner.timeout_keys.clear();
        match self.state.load(Relaxed) {
            HALF_OPEN | PROBING => Some(self.restore(&mut inner)),
            _ => None,
        }
    }

    fn restore(&self, inner: &mut Inner) -> Change {
        self.state.store(HEALTHY, Relaxed);
        inner.restored_at = Some(Instant::now());
        inner.until = None;
        Change::Restored
    }

    /// A request failed by the backend's fault. `may_eject`: whether the cap
    /// on ejected backends leaves room for one more.
    pub fn failure(
        &self,
        fault: Fault,
        reason: &dyn std::fmt::Display,
        cfg: &OutlierConfig,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Change> {
        let mut inner = self.inner();
        inner.reason = reason.to_string();
        match self.state.load(Relaxed) {
            // The half-open request failed: out again, for longer.
            PROBING | HALF_OPEN => {
                return Some(self.eject(&mut inner, cfg, fault == Fault::Connect));
            }
            // Already out: requests sent before the ejection finishing.
            EJECTED => return None,
            _ => {}
        }
        if let Fault::Timeout { client } = fault {
            if inner.timeout_keys.contains(&client) {
                return None;
            }
            inner.timeout_keys.push(client);
        }
        let failures = self.streak.fetch_add(1, Relaxed) + 1;
        if failures < cfg.consecutive_failures || !may_eject() {
            return None;
        }
        Some(self.eject(&mut inner, cfg, fault == Fault::Connect))
    }

    fn eject(&self, inner: &mut Inner, cfg: &OutlierConfig, by_connect: bool) -> Change {
        let failures = self.streak.swap(0, Relaxed);
        inner.timeout_keys.clear();
        // Time healthy since the last ejection earns ejections back.
        if let Some(at) = inner.restored_at {
            let earned = at.elapsed().as_millis() / cfg.base_ejection.as_millis().max(1);
            inner.times = inner
                .times
                .saturating_sub(u32::try_from(earned).unwrap_or(u32::MAX));
        }
        inner.times = inner.times.saturating_add(1);
        let for_ = cfg
            .base_ejection
            .saturating_mul(inner.times)
            .min(cfg.max_ejection.max(cfg.base_ejection));
        inner.by_connect = by_connect;
        inner.until = Some(SystemTime::now() + for_);
        self.until_ms
            .store(clock_ms() + for_.as_millis() as u64, Relaxed);
        self.state.store(EJECTED, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        Change::Ejected {
            for_,
            failures,
            times: inner.times,
        }
    }

    /// An active health check's result. A pass restores a half-open
    /// backend, and ends an ejection that connection failures caused; a
    /// failure ejects a half-open backend again.
    pub fn check(&self, ok: bool, cfg: &OutlierConfig) -> Option<Change> {
        if self.state.load(Relaxed) == HEALTHY {
            return None;
        }
        // Let an expired ejection turn half-open first.
        let admit = self.admit();
        let mut inner = self.inner();
        match (self.state.load(Relaxed), ok) {
            (HALF_OPEN | PROBING, true) => Some(self.restore(&mut inner)),
            (EJECTED, true) if inner.by_connect => Some(self.restore(&mut inner)),
            (HALF_OPEN, false) if admit == Admit::Probe => {
                inner.reason = "health check failed while half-open".to_owned();
                Some(self.eject(&mut inner, cfg, false))
            }
            _ => None,
        }
    }

    /// For the status page (an expired ejection shows as half-open).
    pub fn view(&self) -> View {
        let state = self.state.load(Relaxed);
        if state == HEALTHY {
            return View::Healthy;
        }
        let inner = self.inner();
        let expired = clock_ms() >= self.until_ms.load(Relaxed);
        match (state, inner.until) {
            (EJECTED, Some(until)) if !expired => View::Ejected {
                until,
                reason: inner.reason.clone(),
                times: inner.times,
            },
            _ => View::HalfOpen {
                reason: inner.reason.clone(),
                times: inner.times,
            },
        }
    }

    /// Ejections so far (after decay).
    pub fn times(&self) -> u32 {
        self.inner().times
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(base_ms: u64) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(base_ms),
            max_ejection: Duration::from_millis(base_ms * 10),
            ..OutlierConfig::default()
        }
    }

    fn fail(o: &Outlier, fault: Fault, cfg: &OutlierConfig) -> Option<Change> {
        o.failure(fault, &"503", cfg, || true)
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_streak() {
        let (o, c) = (Outlier::default(), cfg(60_000));
        assert_eq!(fail(&o, Fault::Answer, &c), None);
        assert_eq!(fail(&o, Fault::Answer, &c), None);
        assert_eq!(o.success(), None);
        assert_eq!(fail(&o, Fault::Answer, &c), None);
        assert_eq!(fail(&o, Fault::Answer, &c), None);
        assert_eq!(o.admit(), Admit::Yes);
        let change = fail(&o, Fault::Answer, &c);
        assert!(
            matches!(
                change,
                Some(Change::Ejected {
                    failures: 3,
                    times: 1,
                    ..
                })
            ),
            "{change:?}"
        );
        assert_eq!(o.admit(), Admit::No);
        assert!(matches!(o.view(), View::Ejected { times: 1, .. }));
    }

    #[test]
    fn one_clients_timeouts_count_once() {
        let (o, c) = (Outlier::default(), cfg(60_000));
        for _ in 0..10 {
            assert_eq!(fail(&o, Fault::Timeout { client: 7 }, &c), None);
        }
        assert_eq!(o.admit(), Admit::Yes, "one slow client ejects nothing");
        assert_eq!(fail(&o, Fault::Timeout { client: 8 }, &c), None);
        assert!(fail(&o, Fault::Timeout { client: 9 }, &c).is_some());
    }

    #[test]
    fn the_cap_holds_an_ejection_back() {
        let (o, c) = (Outlier::default(), cfg(60_000));
        for _ in 0..5 {
            assert_eq!(o.failure(Fault::Answer, &"x", &c, || false), None);
        }
        assert_eq!(o.admit(), Admit::Yes);
    }

    #[test]
    fn half_open_takes_one_request_and_its_outcome_decides() {
        let (o, c) = (Outlier::default(), cfg(20));
        for _ in 0..3 {
            fail(&o, Fault::Answer, &c);
        }
        assert_eq!(o.admit(), Admit::No);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(o.admit(), Admit::Probe);
        assert!(o.try_probe(Duration::from_secs(60)));
        assert!(!o.try_probe(Duration::from_secs(60)), "one probe at a time");
        assert_eq!(o.admit(), Admit::No);
        // The probe fails: ejected again, for twice as long.
        let change = fail(&o, Fault::Answer, &c);
        assert!(
            matches!(change, Some(Change::Ejected { times: 2, for_, .. }) if for_ == Duration::from_millis(40)),
            "{change:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(o.admit(), Admit::Probe);
        assert!(o.try_probe(Duration::from_secs(60)));
        assert_eq!(o.success(), Some(Change::Restored));
        assert_eq!(o.admit(), Admit::Yes);
        assert_eq!(o.view(), View::Healthy);
    }

    #[test]
    fn ejections_grow_to_the_cap() {
        let (o, c) = (Outlier::default(), cfg(1));
        for _ in 0..3 {
            fail(&o, Fault::Answer, &c);
        }
        let mut last = Duration::from_millis(1);
        for round in 2..=15u32 {
            std::thread::sleep(last + Duration::from_millis(2));
            assert_eq!(o.admit(), Admit::Probe, "round {round}");
            assert!(o.try_probe(Duration::from_secs(60)));
            match fail(&o, Fault::Answer, &c) {
                Some(Change::Ejected { for_, times, .. }) => {
                    assert_eq!(times, round);
                    last = for_;
                }
                other => panic!("round {round}: {other:?}"),
            }
            assert_eq!(last, Duration::from_millis(u64::from(round.min(10))));
        }
    }

    #[test]
    fn a_passing_check_ends_a_connect_ejection_but_not_an_answer_ejection() {
        let c = cfg(60_000);
        let o = Outlier::default();
        for _ in 0..3 {
            fail(&o, Fault::Connect, &c);
        }
        assert_eq!(o.check(true, &c), Some(Change::Restored));
        assert_eq!(o.admit(), Admit::Yes);
        let o = Outlier::default();
        for _ in 0..3 {
            fail(&o, Fault::Answer, &c);
        }
        assert_eq!(o.check(true, &c), None);
        assert_eq!(o.admit(), Admit::No);
    }

    #[test]
    fn a_lost_probe_is_given_up() {
        let (o, c) = (Outlier::default(), cfg(5));
        for _ in 0..3 {
            fail(&o, Fault::Answer, &c);
        }
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(o.admit(), Admit::Probe);
        assert!(o.try_probe(Duration::from_millis(5)));
        assert_eq!(o.admit(), Admit::No);
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(o.admit(), Admit::Probe);
    }
}
