//! The fast path's buffers: taken from a per-thread free list for one
//! exchange and given back when it ends, so idle connections hold no buffer
//! and a thread with up to [`KEEP`] / 4 exchanges in flight (four buffers
//! each) allocates nothing per request. Past that, the extra buffers come
//! from and go back to the allocator's thread-local free lists.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Capacity of a new buffer: a typical request or response head and more.
/// Small, because a burst of new connections takes several each at once,
/// and what the allocator keeps of them after the burst counts against
/// every connection.
const SIZE: usize = 4 * 1024;
/// Read no less than this at a time (grow the buffer when less is free).
const MIN_ROOM: usize = 1024;
/// How much a buffer grows by when a read would have less than
/// [`MIN_ROOM`]: a body being relayed gets reads of this size.
const GROW: usize = 16 * 1024;
/// Buffers kept per thread; more than this in flight are freed on return.
/// Kept low on purpose: after a burst of connections the free list stays
/// full, and 32 buffers of 4 KB are 128 KB per thread held for good. At
/// 128 connections per balancer the extra buffers cost an allocation each,
/// from mimalloc's thread-local free lists (no system call).
const KEEP: usize = 32;
/// Buffers grown past this (a huge head) are freed rather than kept.
const KEEP_CAPACITY: usize = 4 * GROW;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A byte buffer that returns to its thread's free list when dropped.
#[derive(Debug)]
pub struct Buf(Vec<u8>);

impl Buf {
    /// An empty buffer, reused when the free list has one.
    pub fn take() -> Buf {
        let reused = FREE.with(|free| free.borrow_mut().pop());
        Buf(reused.unwrap_or_else(|| Vec::with_capacity(SIZE)))
    }

    /// The bytes, leaving the free list out of it (the connection is handed
    /// to hyper, which keeps them).
    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }

    /// Makes sure a read has at least [`MIN_ROOM`] bytes of room.
    pub fn reserve_room(&mut self) {
        if self.0.capacity() - self.0.len() < MIN_ROOM {
            self.0.reserve(GROW);
        }
    }

    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Deref for Buf {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        if v.capacity() == 0 || v.capacity() > KEEP_CAPACITY {
            return;
        }
        v.clear();
        // `try_with`: a buffer dropped while the thread exits is just freed.
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP {
                free.push(v);
            }
        });
    }
}
