//! Findings in hashgate that are reported and not fixed yet, each with its
//! reproducer in `fuzz/artifacts-found/<target>/`.
//!
//! The checks tolerate exactly these shapes, so that a fuzz run keeps
//! looking for new failures instead of stopping at a known one within
//! seconds. `tests/findings.rs` replays the reproducers with the tolerance
//! off ([`STRICT`]) and fails once a finding no longer reproduces: then
//! delete its function here and move its reproducer to `corpus/<target>/`
//! as a regression seed.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by `tests/findings.rs`: no finding is tolerated.
pub static STRICT: AtomicBool = AtomicBool::new(false);

fn tolerant() -> bool {
    !STRICT.load(Ordering::Relaxed)
}

/// `client_ip`: `parse_hop` reads `[x]` followed by anything as the
/// address `x`, IPv4 too (`[198.51.100.2]`, `[2001:db8::1]junk`), where its
/// docs name only `[v6]` and `[v6]:port`; the walk should stop at such a
/// malformed hop. Reproducers: `artifacts-found/client_ip/*bracket*`.
pub fn bracketed_hop(hop: &str) -> Option<std::net::IpAddr> {
    if !tolerant() {
        return None;
    }
    let inner = hop.trim().strip_prefix('[')?;
    let end = inner.find(']')?;
    inner[..end]
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// `config`: a port range that runs past 65535 blames the count, even when
/// only the start port was set (`BACKEND_START_PORT=65535` alone: "invalid
/// BACKEND_COUNT=\"5\": runs past port 65535"; the launcher's
/// `START_PORT`/`INSTANCE_COUNT` alike). Reproducers:
/// `artifacts-found/config/*count*`.
pub fn count_blamed_for_start(var: &str, reason: &str, start_set: bool) -> bool {
    tolerant()
        && matches!(var, "BACKEND_COUNT" | "INSTANCE_COUNT")
        && reason == "runs past port 65535"
        && start_set
}

/// `config`: a `DATABASE_URL` whose password holds `/`, `?` or `#`
/// (base64 passwords do) is echoed unmasked in the start-up error, because
/// `redact_url` ends the authority at the first of those and finds no `@`
/// before it. Reproducer: `artifacts-found/config/url-slash-in-password`.
pub fn url_password_with_delimiter(password: &str) -> bool {
    tolerant() && password.contains(['/', '?', '#'])
}
