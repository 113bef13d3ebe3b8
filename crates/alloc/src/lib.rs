//! hashgate's global allocator: mimalloc (v3), plus a thread that hands
//! freed memory back to the operating system when the program goes quiet.
//!
//! # Why
//!
//! mimalloc keeps a freed page resident for `purge_delay` (1 s in v3) in
//! case it is needed again, and purges it only when some thread next
//! allocates. A balancer's workers go quiet after a burst: 5,000 clients
//! connect, are answered, and sit idle (parked, about 50 bytes each). The
//! burst's tasks and buffers are freed, but with nothing allocating
//! afterwards their pages stay resident for good: measured at 450-760 bytes
//! per idle connection (bench/run.sh's idle phase, one or two workers).
//!
//! [`init`] starts one thread, `mimalloc-purge`, that asks mimalloc every
//! [`PURGE_EVERY`] to return all free pages: the "background thread" jemalloc
//! has for the same reason. Measured: about 150 bytes per idle connection
//! with one worker, 280 with two.
//!
//! Alternatives measured and not taken (2 workers, wrk at 128 connections):
//! - `MIMALLOC_PURGE_DELAY=0` (purge at every free) reaches the same memory,
//!   but pages freed and reused under load are faulted back in: 0.85 page
//!   faults per request. The purge thread costs about 0.03.
//! - A non-forced collect from this thread (`mi_collect(false)`) purges
//!   nothing here: once mimalloc's program-wide "purge due" time is cleared
//!   by a worker's early look, it is not set again while an arena already
//!   has one pending, so only a forced collect finds those pages.
//!
//! # Safety
//!
//! This is the only crate in hashgate with `unsafe` code: two calls into
//! mimalloc's C API, each with a `SAFETY` note. The main crate keeps
//! `unsafe_code = "forbid"`.

use std::time::Duration;

pub use mimalloc::MiMalloc;

/// How often the purge thread returns free pages to the OS.
pub const PURGE_EVERY: Duration = Duration::from_millis(100);

/// Starts the purge thread. Without it (the system refuses a thread) memory
/// is still returned, only later, when some thread next allocates; start-up
/// goes on.
pub fn init() {
    let spawned = std::thread::Builder::new()
        .name("mimalloc-purge".into())
        .stack_size(64 * 1024)
        .spawn(|| {
            // SAFETY: `mi_thread_init` takes nothing and sets up the calling
            // thread's mimalloc heap (what a thread's first allocation does
            // anyway); it touches no Rust memory. `mi_collect` does nothing on
            // a thread without a heap, and this thread never allocates.
            unsafe { libmimalloc_sys::mi_thread_init() };
            loop {
                std::thread::sleep(PURGE_EVERY);
                purge();
            }
        });
    if let Err(e) = spawned {
        eprintln!("hashgate-alloc: no purge thread ({e}); freed memory is returned later");
    }
}

/// Returns every free page of the program's arenas to the OS, plus this
/// thread's own free pages.
pub fn purge() {
    // SAFETY: `mi_collect` takes a bool and works only on mimalloc's own
    // heap and arena structures, which it synchronises itself (it may be
    // called from any thread at any time); it touches no Rust memory.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: MiMalloc = MiMalloc;

    /// Allocates and frees 64 MiB in 64 KiB pieces, then checks the purge
    /// returns it: the thread's resident memory falls back by at least half
    /// of what the allocation added.
    #[test]
    fn purge_returns_freed_memory_to_the_os() {
        let before = resident_kib();
        let blocks: Vec<Box<[u8]>> = (0..1024).map(|i| vec![i as u8; 64 * 1024].into()).collect();
        let peak = resident_kib();
        assert!(
            peak > before + 32 * 1024,
            "allocation shows: {before} -> {peak} KiB"
        );
        drop(std::hint::black_box(blocks));
        purge();
        let after = resident_kib();
        assert!(
            after < peak - (peak - before) / 2,
            "purged: {before} KiB before, {peak} at the peak, {after} after"
        );
    }

    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }
}
