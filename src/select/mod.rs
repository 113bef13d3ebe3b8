//! Selection: which target (a balancer backend, a gateway worker) gets a
//! request, and in which order the others follow when it fails. One module
//! for both tiers, as the systems hashgate replaces offer the same choice
//! of strategies at both.
//!
//! A [`Selector`] is built from one published set of targets (names and
//! weights; rebuilt only when the set changes, off the request path) and
//! asked, per request, for that request's [`Candidates`]: an ordered walk
//! of target indices, the strategy's pick first. Per-request skipping
//! (down, ejected, already tried) is the caller's `accept` filter, never
//! state kept here: the seam of pingora-load-balancing's
//! `BackendSelection::select_with(key, max, accept)`.
//!
//! | strategy | first pick | then |
//! |---|---|---|
//! | `maglev` (default, sticky) | the key's owner in the Maglev table ([`crate::ring`]) | the key's own ring order |
//! | `maglev-bounded` (sticky) | the first of the key's ring order whose in-flight requests stay within `HASH_BALANCE_FACTOR` times its weighted share of all in flight (consistent hashing with bounded loads, Mirrokni et al. 2016; HAProxy's `hash-balance-factor`) | the key's ring order |
//! | `round-robin` | the next target in turn | the targets after it |
//! | `weighted-round-robin` | nginx's smooth weighted round robin (weights 5,1,1 give a a b a c a a) | the targets after it |
//! | `least-connections` | fewest requests in flight, ties at random | the targets after it |
//! | `least-time` | power of two choices (Mitzenmacher 2001) over peak-EWMA latency times in-flight, as Finagle, linkerd and tower's p2c do | the targets after it |
//! | `least-queue` | smallest polled queue plus requests sent since the poll; a target whose queue endpoint failed is skipped | the targets after it |
//!
//! The load figures live in each target's [`Load`] (see `load.rs` for why
//! they are shared atomics, not per-thread shards).

mod load;

pub use load::{DECAY, InFlight, Load, Queue};

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::ring::{self, Ring};

/// The strategies, by the exact names `LB_STRATEGY` and `GATEWAY_STRATEGY`
/// take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    Maglev,
    MaglevBounded,
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    LeastTime,
    LeastQueue,
}

impl Strategy {
    pub const ALL: [Strategy; 7] = [
        Strategy::Maglev,
        Strategy::MaglevBounded,
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::LeastConnections,
        Strategy::LeastTime,
        Strategy::LeastQueue,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Maglev => "maglev",
            Strategy::MaglevBounded => "maglev-bounded",
            Strategy::RoundRobin => "round-robin",
            Strategy::WeightedRoundRobin => "weighted-round-robin",
            Strategy::LeastConnections => "least-connections",
            Strategy::LeastTime => "least-time",
            Strategy::LeastQueue => "least-queue",
        }
    }

    /// Whether a client key keeps its target while the set and the loads
    /// allow (the consistent-hash strategies).
    pub fn is_sticky(self) -> bool {
        matches!(self, Strategy::Maglev | Strategy::MaglevBounded)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
                format!("unknown strategy; one of {}", names.join(", "))
            })
    }
}

/// Knobs of the strategies that have any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectOptions {
    /// `maglev-bounded`: how far above its weighted share of all requests in
    /// flight a target may go before its keys move on (1.25 = 125%).
    pub hash_balance_factor: f64,
}

impl Default for SelectOptions {
    fn default() -> Self {
        SelectOptions {
            hash_balance_factor: 1.25,
        }
    }
}

/// What a selector sees of one target.
pub trait Target {
    /// What the ring places: a property of the target, never its position.
    fn name(&self) -> &str;
    /// 0 takes no new requests (draining).
    fn weight(&self) -> u32;
    /// The weight the sticky strategies place the target with on the
    /// ring. Its weight, unless it is drained at runtime: then it keeps its
    /// place, so its keys walk on to their own next candidate (as when it
    /// fails) and every other key stays where it is; they come back when
    /// it is enabled again.
    fn placement_weight(&self) -> u32 {
        self.weight()
    }
    fn load(&self) -> &Load;
}

impl<T: Target> Target for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn weight(&self) -> u32 {
        (**self).weight()
    }
    fn placement_weight(&self) -> u32 {
        (**self).placement_weight()
    }
    fn load(&self) -> &Load {
        (**self).load()
    }
}

/// A strategy's state for one set of targets.
#[derive(Debug)]
pub struct Selector {
    strategy: Strategy,
    opts: SelectOptions,
    /// The Maglev table (sticky strategies only).
    ring: Option<Ring>,
    weights: Box<[u32]>,
    /// Round robin's turn.
    turn: AtomicUsize,
    /// Smooth weighted round robin's current weights (nginx's algorithm
    /// needs one consistent view: a mutex held for one pass over the
    /// weights, never across an await).
    current: Mutex<Vec<i64>>,
}

impl Selector {
    pub fn new<T: Target>(strategy: Strategy, opts: SelectOptions, targets: &[T]) -> Selector {
        let weights: Box<[u32]> = targets.iter().map(Target::weight).collect();
        let ring = strategy.is_sticky().then(|| {
            let named: Vec<(&str, u32)> = targets
                .iter()
                .map(|t| (t.name(), t.placement_weight()))
                .collect();
            Ring::build(&named)
        });
        Selector {
            strategy,
            opts,
            ring,
            current: Mutex::new(vec![0; weights.len()]),
            weights,
            turn: AtomicUsize::new(0),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Target `i`'s share of the traffic by construction: its share of the
    /// ring for the sticky strategies, of the weights for the others.
    pub fn share(&self, i: usize) -> f64 {
        if self.weights.get(i).is_none_or(|&w| w == 0) {
            return 0.0;
        }
        match &self.ring {
            Some(ring) => ring.share(i),
            None => {
                let total: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
                let w = self.weights.get(i).copied().unwrap_or(0);
                if total == 0 {
                    0.0
                } else {
                    f64::from(w) / total as f64
                }
            }
        }
    }

    /// The request's candidates, the strategy's pick first: indices into
    /// `targets` (the slice the selector was built from), each at most
    /// once, only those `accept` takes and whose weight is not 0. `key`:
    /// the client key's hash ([`ring::key_hash`]), read by the sticky
    /// strategies only.
    pub fn candidates<'a, T, F>(
        &'a self,
        targets: &'a [T],
        key: u64,
        accept: F,
    ) -> Candidates<'a, T, F>
    where
        T: Target,
        F: Fn(&T) -> bool,
    {
        let n = targets.len().min(self.weights.len());
        let mut c = Candidates {
            targets: &targets[..n],
            weights: &self.weights[..n],
            accept,
            first: None,
            first_done: false,
            walk: Walk::Rotate { next: 0, left: 0 },
        };
        match (&self.ring, self.strategy) {
            (Some(ring), Strategy::MaglevBounded) => {
                c.first = self.bounded_pick(&c, ring, key);
                c.walk = Walk::Ring(ring.candidates(key));
            }
            (Some(ring), _) => c.walk = Walk::Ring(ring.candidates(key)),
            (None, strategy) => {
                let first = match strategy {
                    Strategy::RoundRobin => {
                        let turn = self.turn.fetch_add(1, Relaxed);
                        c.rotation_from(turn % n.max(1))
                    }
                    Strategy::WeightedRoundRobin => self.smooth_weighted_pick(&c),
                    Strategy::LeastConnections => c.least_by(|t| Some(t.load().in_flight())),
                    Strategy::LeastTime => c.power_of_two(),
                    _ => c.least_by(|t| t.load().queue_score()),
                };
                c.first = first;
                c.walk = Walk::Rotate {
                    next: first.map_or(0, |f| f + 1),
                    left: n,
                };
            }
        }
        c
    }

    /// maglev-bounded's first pick: the first candidate in the key's ring
    /// order within the bound; the plain first when every one is over it.
    fn bounded_pick<T: Target, F: Fn(&T) -> bool>(
        &self,
        c: &Candidates<'_, T, F>,
        ring: &Ring,
        key: u64,
    ) -> Option<usize> {
        let mut total_load = 0u64;
        let mut total_weight = 0u64;
        for (t, &w) in c.targets.iter().zip(c.weights) {
            if w > 0 && (c.accept)(t) {
                total_load += t.load().in_flight();
                total_weight += u64::from(w);
            }
        }
        if total_weight == 0 {
            return None;
        }
        // This request counts too; the bound is at least one request, so
        // an idle set never pushes a key off its owner.
        let fair = (total_load + 1) as f64 * self.opts.hash_balance_factor / total_weight as f64;
        let mut plain_first = None;
        for i in ring.candidates(key) {
            let Some(t) = c.targets.get(i) else { continue };
            if !(c.accept)(t) {
                continue;
            }
            plain_first.get_or_insert(i);
            let bound = (fair * f64::from(c.weights[i])).ceil().max(1.0) as u64;
            if t.load().in_flight() < bound {
                return Some(i);
            }
        }
        plain_first
    }

    /// nginx's smooth weighted round robin over the accepted targets.
    fn smooth_weighted_pick<T: Target, F: Fn(&T) -> bool>(
        &self,
        c: &Candidates<'_, T, F>,
    ) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, t) in c.targets.iter().enumerate() {
            let w = i64::from(c.weights[i]);
            if w == 0 || !(c.accept)(t) {
                continue;
            }
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }
}

/// One request's walk over the targets; see [`Selector::candidates`].
pub struct Candidates<'a, T, F> {
    targets: &'a [T],
    weights: &'a [u32],
    accept: F,
    /// The strategy's pick, yielded first.
    first: Option<usize>,
    first_done: bool,
    walk: Walk<'a>,
}

enum Walk<'a> {
    /// The key's Maglev order.
    Ring(ring::Candidates<'a>),
    /// Every index once, from `next` on, wrapping.
    Rotate { next: usize, left: usize },
}

impl<T: Target, F: Fn(&T) -> bool> Candidates<'_, T, F> {
    fn takes(&self, i: usize) -> bool {
        self.weights.get(i).is_some_and(|&w| w > 0) && (self.accept)(&self.targets[i])
    }

    /// The first accepted target from `start` on, wrapping.
    fn rotation_from(&self, start: usize) -> Option<usize> {
        let n = self.targets.len();
        (0..n).map(|k| (start + k) % n).find(|&i| self.takes(i))
    }

    /// The accepted target with the smallest `score` (`None`: not
    /// eligible), ties broken at random (reservoir sampling: no allocation).
    fn least_by(&self, score: impl Fn(&T) -> Option<u64>) -> Option<usize> {
        let mut best: Option<(usize, u64)> = None;
        let mut ties = 0u32;
        for i in 0..self.targets.len() {
            if !self.takes(i) {
                continue;
            }
            let Some(s) = score(&self.targets[i]) else {
                continue;
            };
            match best {
                Some((_, b)) if s > b => {}
                Some((_, b)) if s == b => {
                    ties += 1;
                    if fastrand::u32(..=ties) == 0 {
                        best = Some((i, s));
                    }
                }
                _ => {
                    best = Some((i, s));
                    ties = 0;
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Two accepted targets at random; the one with the lower cost.
    fn power_of_two(&self) -> Option<usize> {
        let eligible = (0..self.targets.len()).filter(|&i| self.takes(i)).count();
        let nth = |k: usize| (0..self.targets.len()).filter(|&i| self.takes(i)).nth(k);
        match eligible {
            0 => None,
            1 => nth(0),
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(a)?, nth(b)?);
                let cost = |i: usize| self.targets[i].load().cost();
                Some(if cost(b) < cost(a) { b } else { a })
            }
        }
    }
}

impl<T: Target, F: Fn(&T) -> bool> Iterator for Candidates<'_, T, F> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if !self.first_done {
            self.first_done = true;
            if let Some(f) = self.first {
                return Some(f);
            }
        }
        loop {
            let i = match &mut self.walk {
                Walk::Ring(walk) => walk.next()?,
                Walk::Rotate { next, left } => {
                    if *left == 0 {
                        return None;
                    }
                    *left -= 1;
                    let i = *next % self.targets.len();
                    *next = i + 1;
                    i
                }
            };
            if Some(i) != self.first && i < self.targets.len() && self.takes(i) {
                return Some(i);
            }
        }
    }
}

#[cfg(test)]
mod tests;
