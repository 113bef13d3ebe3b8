//! Findings in hashgate that are reported and not fixed yet, each with its
//! reproducer in `fuzz/artifacts-found/<target>/`.
//!
//! The checks tolerate exactly these shapes, so that a fuzz run keeps
//! looking for new failures instead of stopping at a known one within
//! seconds. `tests/findings.rs` replays the reproducers with the tolerance
//! off ([`STRICT`]) and fails once a finding no longer reproduces: then
//! delete its function here and move its reproducer to `corpus/<target>/`
//! as a regression seed.

use std::sync::atomic::AtomicBool;

/// Set by `tests/findings.rs`: no finding is tolerated.
pub static STRICT: AtomicBool = AtomicBool::new(false);

// None open. Fixed so far, their reproducers now regression seeds in
// `corpus/<target>/`: `client_ip` bracketed hops other than `[v6]` and
// `[v6]:port` (v4-in-brackets, v6-bracket-junk); `config` blaming a port
// count that was never set (backend-count-blamed-for-start,
// instance-count-blamed-for-start); a `DATABASE_URL` password holding `/`
// echoed unmasked (url-slash-in-password).
