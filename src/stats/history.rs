//! The `/lb` charts' memory: one point per backend every
//! [`SLICE_SECS`](super::latency::SLICE_SECS) seconds for the last
//! [`POINTS`] of them (10 minutes): requests per second and p99 over that
//! slice. A small ring filled by the balancer's sampler from the slices
//! the request path already keeps (see [`super::latency`]); the request
//! path itself never touches it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::latency::{SLICE_SECS, SLICES, slice_of};
use crate::backend::Backend;

/// Points kept: 10 minutes of 10 s slices.
pub const POINTS: usize = 60;

/// One slice's figures of one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub backend: String,
    pub rps: f64,
    pub p99_ms: Option<f64>,
}

/// One slice's figures of every backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The slice number (see [`slice_of`]).
    pub slice: u64,
    /// Whether the slice was still running when sampled (only the live
    /// point [`History::points_now`] adds).
    pub partial: bool,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Default)]
struct Ring {
    last: Option<u64>,
    points: VecDeque<Point>,
}

/// The ring of points.
#[derive(Debug, Default)]
pub struct History {
    ring: Mutex<Ring>,
}

fn point(backends: &[Arc<Backend>], slice: u64, secs: f64, partial: bool) -> Point {
    Point {
        slice,
        partial,
        samples: backends
            .iter()
            .map(|b| {
                let p = b.metrics.slice(slice);
                Sample {
                    backend: b.name().to_owned(),
                    rps: p.samples as f64 / secs.max(0.001),
                    p99_ms: p.p99_ms,
                }
            })
            .collect(),
    }
}

impl History {
    /// Records every slice that ended since the last call (as far back as
    /// the window still holds them).
    pub fn sample(&self, backends: &[Arc<Backend>], now: Instant) {
        let current = slice_of(now);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = current.saturating_sub(SLICES as u64 - 1);
        let from = ring
            .last
            .map_or(current.saturating_sub(1), |l| l + 1)
            .max(oldest);
        for slice in from..current {
            let p = point(backends, slice, SLICE_SECS as f64, false);
            ring.points.push_back(p);
            ring.last = Some(slice);
        }
        while ring.points.len() > POINTS {
            ring.points.pop_front();
        }
    }

    /// The recorded points and the running slice so far (rates over the
    /// part of it that has passed), oldest first.
    pub fn points_now(&self, backends: &[Arc<Backend>], now: Instant) -> Vec<Point> {
        self.sample(backends, now);
        let mut out: Vec<Point> = {
            let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.points.iter().cloned().collect()
        };
        let current = slice_of(now);
        let start = super::latency::epoch() + std::time::Duration::from_secs(current * SLICE_SECS);
        let elapsed = now.saturating_duration_since(start).as_secs_f64().max(1.0);
        out.push(point(backends, current, elapsed, true));
        out
    }
}
