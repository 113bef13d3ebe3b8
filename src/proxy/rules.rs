//! The proxy's rules as pure functions (no I/O), one place for both request
//! paths: the HTTP/1.1 fast path ([`super::h1`]) asks them about the bytes it
//! parsed in place, the hyper path ([`super::hyper_path`], [`super::headers`])
//! about its header maps, and the one request driver ([`super::driver`])
//! about retries and blame. A rule that differs between the two paths by
//! accident is a bug (a security bug for framing: see `tests/smuggling.rs`),
//! so neither path keeps a list of its own; `tests/rules.rs` runs each rule
//! through both over real sockets.
//!
//! - **Headers**: what is hop-by-hop, what `Connection` may name, which
//!   forwarding headers the balancer writes (below).
//! - **Retries** ([`may_retry`]): a request goes to the next candidate when
//!   none of it reached the backend (no connection, or a pooled connection
//!   that turned out closed before anything was sent), or when it is
//!   idempotent (RFC 9110 §9.2.2, or carries an `Idempotency-Key`) *and* its
//!   body was kept whole (at most [`REPLAY_BODY_MAX`] bytes, the same bound
//!   on both paths), never after a timeout (another try would double the
//!   wait, and the backend may still be working on it), never after the
//!   client's own body broke.
//!   A failure on a reused idle connection before any answer goes once
//!   more to the same backend on a new connection ([`may_retry_fresh`]).
//! - **Blame** ([`blame`], [`status_blames`]): which failures count against
//!   a backend in outlier detection; a client's slowness or a local
//!   resource shortage never does.
//! - **The balancer's own answers** ([`answer`], [`retry_after`]): which
//!   failure becomes which status, JSON reason and `Retry-After`.
//! - **Own endpoints** ([`is_own_endpoint`]): the paths the balancer answers
//!   itself, never proxied.
//!
//! # What `Connection` may and may not remove
//!
//! RFC 9110 §7.6.1 lets a sender list header names in `Connection`; a proxy
//! must then drop those headers, like the fixed hop-by-hop list. Obeyed
//! blindly, that lets the sender of a message edit what the proxy forwards:
//! `Connection: content-length` used to strip the length of a request whose
//! body was forwarded anyway, so the backend read that body as a second
//! request (request smuggling), and the same on a response left the client
//! reading to a close that never came.
//!
//! The names in [`connection_may_drop`]'s refusal list are **ignored** when
//! `Connection` names them, rather than the message being rejected:
//! - the framing (`Content-Length`, `Transfer-Encoding`): RFC 9112 §6 makes
//!   them describe this very message, and the framing the balancer forwards
//!   is always the framing it parsed (the fast path writes the length it
//!   read; hyper frames its bodies itself);
//! - `Host`, which names the target of the request (RFC 9110 §7.2);
//! - the forwarding headers the balancer sets itself (`X-Forwarded-For`,
//!   `X-Real-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host`, `Forwarded`),
//!   which are always replaced (or, from a trusted proxy, extended), so no
//!   `Connection` option can change who the backend thinks the client is.
//!
//! RFC 9110 §7.6.1 says a sender must not list such fields, but asks nothing
//! of the recipient; ignoring them serves the sloppy-but-honest client (as
//! HAProxy and nginx do: neither removes `Connection`-named headers at all)
//! and takes from the attacker everything the option could do.

use super::error::ProxyError;
use crate::health::outlier::Fault;

/// The hop-by-hop headers every proxy drops in both directions (RFC 9110
/// §7.6.1, plus the legacy `Keep-Alive` and `Proxy-Connection`), in lower
/// case. `Upgrade` passes only in a tunnel's handshake. `Trailer` is not
/// one (RFC 2616 listed it; RFC 9110 does not): it announces the trailer
/// fields of a chunked body, which travel end to end.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is in [`HOP_BY_HOP`] (ASCII case-insensitive).
#[inline]
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    // This runs for every header line of every message: length and first
    // byte pick the one name worth comparing (the tests hold this table to
    // the list above).
    let candidate: &[u8] = match (name.len(), name.first().map(u8::to_ascii_lowercase)) {
        (10, Some(b'c')) => b"connection",
        (10, Some(b'k')) => b"keep-alive",
        (16, Some(b'p')) => b"proxy-connection",
        (18, Some(b'p')) => b"proxy-authenticate",
        (19, Some(b'p')) => b"proxy-authorization",
        (2, Some(b't')) => b"te",
        (17, Some(b't')) => b"transfer-encoding",
        (7, Some(b'u')) => b"upgrade",
        _ => return false,
    };
    name.eq_ignore_ascii_case(candidate)
}

/// The request headers the balancer writes itself: a client's copies are
/// replaced (untrusted peer) or extended (trusted proxy), never passed on as
/// they came.
pub const FORWARDING: [&str; 5] = [
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Whether `name` is one of [`FORWARDING`].
#[inline]
pub fn is_forwarding(name: &[u8]) -> bool {
    let candidate: &[u8] = match (name.len(), name.first().map(u8::to_ascii_lowercase)) {
        (15, Some(b'x')) => b"x-forwarded-for",
        (9, Some(b'x')) => b"x-real-ip",
        (17, Some(b'x')) => b"x-forwarded-proto",
        (16, Some(b'x')) => b"x-forwarded-host",
        (9, Some(b'f')) => b"forwarded",
        _ => return false,
    };
    name.eq_ignore_ascii_case(candidate)
}

/// Whether a `Connection` header listing `name` makes that header
/// hop-by-hop. Never for the framing, `Host` or the forwarding headers: see
/// the module docs.
#[inline]
pub fn connection_may_drop(name: &[u8]) -> bool {
    !(name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"host")
        || is_forwarding(name))
}

/// Paths the balancer answers itself (status, health, metrics and the
/// management API under `/lb/`); every other path is proxied.
pub fn is_own_endpoint(path: &str) -> bool {
    matches!(path, "/health" | "/metrics" | "/lb") || path.starts_with("/lb/")
}

/// The largest request body kept whole for a retry. Both paths buffer a
/// body up to this before sending it (the fast path serves no larger one);
/// a larger body streams, and a request whose body streamed is never sent
/// twice.
pub const REPLAY_BODY_MAX: usize = 64 * 1024;

/// Whether sending a request twice has the effect of sending it once:
/// the idempotent methods of RFC 9110 §9.2.2, or any request carrying an
/// `Idempotency-Key` (the IETF draft, and Stripe's practice).
pub fn is_idempotent(method: &[u8], idempotency_key: bool) -> bool {
    idempotency_key
        || matches!(
            method,
            b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
        )
}

/// Whether a failed attempt may be tried on the next candidate. `sent`:
/// some of the request may have reached the backend; `replayable`: it is
/// idempotent and its body was kept whole.
pub fn may_retry(error: &ProxyError, sent: bool, replayable: bool) -> bool {
    match error {
        ProxyError::Connect(_) => true,
        ProxyError::Upstream(_) | ProxyError::UpstreamIo(_) | ProxyError::BadResponse(_) => {
            !sent || replayable
        }
        // The backend sat on it: it may still act on it, and another try
        // doubles the client's wait.
        ProxyError::Timeout => false,
        ProxyError::NoBackend
        | ProxyError::BadRequest(_)
        | ProxyError::ClientBody(_)
        | ProxyError::ClientTimeout
        | ProxyError::RateLimited { .. } => false,
    }
}

/// Whether an attempt that failed on a reused idle connection before any
/// byte of an answer (`stale`) goes once more to the same backend, on a new
/// connection, without counting against it: a keep-alive connection the
/// backend closed just as it was reused is a race, not a failure (nginx and
/// HAProxy retry it too). Only when nothing was sent, or the request may be
/// sent again anyway.
pub fn may_retry_fresh(stale: bool, sent: bool, replayable: bool) -> bool {
    stale && (!sent || replayable)
}

/// What a failure says about the backend, for outlier detection: `None`
/// when it was not the backend's doing (the client's body, a local
/// shortage of file descriptors or ports).
pub fn blame(error: &ProxyError, client: u64) -> Option<Fault> {
    match error {
        ProxyError::Connect(e) if e.is_local() => None,
        ProxyError::Connect(_) => Some(Fault::Connect),
        ProxyError::Upstream(_) | ProxyError::UpstreamIo(_) | ProxyError::BadResponse(_) => {
            Some(Fault::Answer)
        }
        ProxyError::Timeout => Some(Fault::Timeout { client }),
        ProxyError::NoBackend
        | ProxyError::BadRequest(_)
        | ProxyError::ClientBody(_)
        | ProxyError::ClientTimeout
        | ProxyError::RateLimited { .. } => None,
    }
}

/// Whether a backend's own answer is a gateway failure (it is passed to the
/// client as it is, and counts in outlier detection).
pub fn status_blames(status: u16) -> bool {
    matches!(status, 502..=504)
}

/// The balancer's answer to a failure: status and the JSON body's reason.
/// Backend addresses and error details go to the log, never to the client.
pub fn answer(error: &ProxyError) -> (u16, &'static str) {
    match error {
        ProxyError::NoBackend => (503, "no healthy backend"),
        ProxyError::Connect(_) => (502, "no backend could be reached"),
        ProxyError::Upstream(_) | ProxyError::UpstreamIo(_) | ProxyError::BadResponse(_) => {
            (502, "the backend failed to answer")
        }
        ProxyError::Timeout => (504, "the backend did not answer in time"),
        ProxyError::BadRequest(why) => (400, why),
        ProxyError::ClientBody(_) => (400, "the request body could not be read"),
        ProxyError::ClientTimeout => (408, "the request was not received in time"),
        ProxyError::RateLimited { .. } => (429, "too many requests from this client"),
    }
}

/// The `Retry-After` (seconds) the balancer's answer to `error` carries:
/// only a rate-limited request's, on both paths.
pub fn retry_after(error: &ProxyError) -> Option<u64> {
    match error {
        ProxyError::RateLimited { retry_after } => Some(*retry_after),
        _ => None,
    }
}

/// The JSON body of the balancer's answer to `error` (with
/// `retry_after_secs` when it carries a `Retry-After`).
pub fn answer_body(error: &ProxyError) -> String {
    let (status, reason) = answer(error);
    match retry_after(error) {
        Some(secs) => {
            serde_json::json!({ "error": reason, "status": status, "retry_after_secs": secs })
        }
        None => serde_json::json!({ "error": reason, "status": status }),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_list_is_matched_in_any_case() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
            assert!(
                is_hop_by_hop(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
        }
        for name in ["content-length", "host", "cookie", "t", "", "upgrades"] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn the_fast_lookups_agree_with_the_lists() {
        // Every name of either list, and every other name of the same
        // length and first letter, is classified as the lists say.
        let all: Vec<&str> = HOP_BY_HOP
            .iter()
            .chain(FORWARDING.iter())
            .copied()
            .collect();
        for name in &all {
            assert_eq!(
                is_hop_by_hop(name.as_bytes()),
                HOP_BY_HOP.contains(name),
                "{name}"
            );
            assert_eq!(
                is_forwarding(name.as_bytes()),
                FORWARDING.contains(name),
                "{name}"
            );
            let mut near = name.as_bytes().to_vec();
            *near.last_mut().unwrap() ^= 1;
            assert!(
                !is_hop_by_hop(&near) && !is_forwarding(&near),
                "{name} altered"
            );
        }
    }

    #[test]
    fn retries_need_an_unsent_request_or_a_replayable_one_and_never_follow_a_timeout() {
        use std::io::{Error, ErrorKind};
        let reset = || ProxyError::UpstreamIo(Error::from(ErrorKind::ConnectionReset));
        let refused = || {
            ProxyError::Connect(crate::upstream::ConnectError::Io(
                "127.0.0.1:1".parse().unwrap(),
                Error::from(ErrorKind::ConnectionRefused),
            ))
        };
        // (error, sent, replayable) -> may retry
        let cases = [
            (refused(), true, false, true),
            (reset(), false, false, true),
            (reset(), true, false, false),
            (reset(), true, true, true),
            (ProxyError::BadResponse("x"), true, true, true),
            (ProxyError::Timeout, false, true, false),
            (ProxyError::ClientTimeout, false, true, false),
        ];
        for (error, sent, replayable, want) in cases {
            assert_eq!(
                may_retry(&error, sent, replayable),
                want,
                "{error:?} {sent} {replayable}"
            );
        }
        assert!(is_idempotent(b"PUT", false) && !is_idempotent(b"POST", false));
        assert!(is_idempotent(b"POST", true));
    }

    #[test]
    fn a_client_or_local_failure_blames_no_backend() {
        use std::io::Error;
        let emfile = ProxyError::Connect(crate::upstream::ConnectError::Io(
            "127.0.0.1:1".parse().unwrap(),
            Error::from_raw_os_error(24),
        ));
        assert_eq!(blame(&emfile, 1), None);
        assert_eq!(blame(&ProxyError::ClientTimeout, 1), None);
        assert_eq!(
            blame(&ProxyError::Timeout, 9),
            Some(Fault::Timeout { client: 9 })
        );
        assert!(status_blames(503) && !status_blames(500) && !status_blames(429));
    }

    #[test]
    fn own_endpoints_are_the_status_health_metrics_and_lb_paths() {
        for p in [
            "/health",
            "/metrics",
            "/lb",
            "/lb/",
            "/lb/status",
            "/lb/backends/x/drain",
        ] {
            assert!(is_own_endpoint(p), "{p}");
        }
        for p in ["/", "/healthz", "/lbx", "/api/lb", "/metrics/x"] {
            assert!(!is_own_endpoint(p), "{p}");
        }
    }

    #[test]
    fn connection_cannot_remove_framing_host_or_client_identity() {
        for name in [
            "Content-Length",
            "transfer-encoding",
            "HOST",
            "x-forwarded-for",
            "X-Real-IP",
            "x-forwarded-proto",
            "x-forwarded-host",
            "Forwarded",
        ] {
            assert!(!connection_may_drop(name.as_bytes()), "{name}");
        }
        for name in ["x-hop", "cookie", "te", "expect", "upgrade", "x-forwarded"] {
            assert!(connection_may_drop(name.as_bytes()), "{name}");
        }
    }
}
