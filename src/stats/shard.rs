//! Per-thread shards: one cache line (or more) per connection-worker slot
//! ([`crate::threads::slot`]), written by that worker and summed by
//! whoever reads. This is Envoy's per-worker stats layout: a request never
//! writes a cache line another worker writes, and a reader (a scrape of
//! `/metrics`, `/lb/stats`) takes no lock at all, it only loads atomics.
//!
//! The shards are still atomics, written with `fetch_add`: threads that are
//! not workers (tests, the control plane) share slot 0, and a reader on
//! another thread must see whole values.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::threads;

/// A value padded to its own cache lines, so neighbouring shards never
/// share one (two lines: some CPUs prefetch pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// One `T` per worker slot.
#[derive(Debug)]
pub struct PerThread<T> {
    shards: Box<[Padded<T>]>,
}

impl<T: Default> Default for PerThread<T> {
    fn default() -> Self {
        PerThread::new()
    }
}

impl<T: Default> PerThread<T> {
    /// One shard per slot of the workers installed now (built after
    /// [`threads::Workers::install`], as the balancer does).
    pub fn new() -> Self {
        PerThread {
            shards: (0..threads::slots())
                .map(|_| Padded(T::default()))
                .collect(),
        }
    }
}

impl<T> PerThread<T> {
    /// The calling thread's shard.
    #[inline]
    pub fn local(&self) -> &T {
        let i = threads::slot();
        // A slot past the end (workers installed after this was built)
        // shares the last shard: still correct, only less spread.
        &self.shards[i.min(self.shards.len() - 1)].0
    }

    /// Every shard, for a reader to sum.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|p| &p.0)
    }
}

/// A monotonic counter sharded per thread.
#[derive(Debug, Default)]
pub struct Counter(PerThread<AtomicU64>);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.local().fetch_add(1, Relaxed);
    }

    /// The sum over all threads.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_summed_and_never_share_a_line() {
        let c = Counter::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..1000).for_each(|_| c.inc()));
            }
        });
        assert_eq!(c.get(), 4000);
        assert!(std::mem::align_of::<Padded<AtomicU64>>() >= 64);
    }
}
