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
//! - **Giving way early** ([`connect_give_way`]): while another candidate
//!   remains, a connect gets `CONNECT_FAILOVER_MS` (250 ms), not all of
//!   `CONNECT_TIMEOUT_MS`: an address that stopped answering SYNs (a
//!   stopped Swarm task, a dead host) costs a request that long, not the
//!   whole connect timeout. Such a give-way blames nothing (the backend may
//!   only be slow to accept) but wakes the health checks
//!   ([`wakes_health_check`]), which decide.
//! - **Blame** ([`blame`], [`status_blames`]): which failures count against
//!   a backend in outlier detection; a client's slowness or a local
//!   resource shortage never does.
//! - **The balancer's own answers** ([`answer`], [`retry_after`]): which
//!   failure becomes which status, JSON reason and `Retry-After`.
//! - **Own endpoints** ([`is_own_endpoint`]): the paths the balancer answers
//!   itself, never proxied.
//! - **Strict request heads** ([`check_head`], [`has_fragment`],
//!   [`MAX_CHUNK_SIZE_DIGITS`]): what is refused before anything is
//!   forwarded (below).
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

use std::time::Duration;

use super::error::ProxyError;
use crate::config::ProxyLimits;
use crate::health::outlier::Fault;

pub use crate::chunked::MAX_SIZE_DIGITS as MAX_CHUNK_SIZE_DIGITS;

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

// ---------------------------------------------------------------------------
// Strict request heads.
//
// A proxy that forwards what its backend would read differently from itself
// is a smuggling or cache-poisoning tool, so a head that two readers could
// disagree on is refused, with the RFC's answer, before it reaches a backend
// (what HAProxy 2.6 refuses in the same role is refused here too; see
// `tests/rules.rs`):
//
// - `CONNECT`: 405 with `Allow`. The balancer tunnels only `Upgrade`
//   handshakes, to the client's sticky backend; a `CONNECT` tunnel would
//   make it an open forward proxy to wherever the client names.
// - More than one `Host` line, or a `Host` value that is not `host[:port]`:
//   400 (RFC 9112 §3.2: a server MUST answer 400 to either). HAProxy passes
//   two identical lines; we do not: which one a backend reads is then its
//   own choice, and the RFC leaves none.
// - A target in absolute form (`GET http://h/x`): RFC 9112 §3.2.2 says the
//   target's authority wins and `Host` is replaced by it. When the two
//   differ, the client is sending a backend one name and everything that
//   reads only `Host` (a cache, a log, a virtual-host router in front)
//   another: 400, as HAProxy does. When they agree (or `Host` is absent)
//   the request is forwarded in origin form with `Host` set to the
//   target's authority. Only `http` and `https` targets, without userinfo.
// - `*` only with `OPTIONS`; an authority-form target only with `CONNECT`
//   (itself refused): 400.
// - A `#` in the request line: a fragment never travels in a request
//   (RFC 9110 §4.2.5). hyper's URI parser drops it silently, so on hyper's
//   path the accept loop's framing follower turns it into a byte hyper's
//   parser refuses; both paths answer it as the malformed head it is
//   (hyper's 400, then close).
// - A chunk-size line over [`MAX_CHUNK_SIZE_DIGITS`] hex digits (a chunk of
//   2^52 bytes or more, HAProxy's bound): nothing that large is ever
//   forwarded within the deadlines the balancer keeps, and a size near
//   2^64 only waits for bytes that never come. One scanner, `chunked.rs`,
//   holds the bound for both directions: the follower ends a request body
//   at such a line (400, then close), and the fast path's relay ends a
//   response there.
//
// Every refusal closes the connection ([`closes_connection`]): after a head
// the balancer would not forward, it cannot be sure where the next one
// starts.

/// Why a request head is refused before anything is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400, with this reason.
    Bad(&'static str),
    /// `CONNECT`: 405.
    Connect,
}

impl From<Refusal> for ProxyError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Bad(why) => ProxyError::BadRequest(why),
            Refusal::Connect => ProxyError::MethodNotAllowed,
        }
    }
}

/// The `Allow` field of the balancer's 405 (RFC 9110 §15.5.6 requires one):
/// every method but `CONNECT` is proxied; these are the registered ones.
pub const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// A request target, by its form (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/path?query`.
    Origin,
    /// `*`.
    Asterisk,
    /// `scheme://authority/path?query`.
    Absolute { scheme: &'a str, authority: &'a str },
    /// Anything else (an authority alone, or no path).
    Other,
}

/// What the backend gets as `Host` when a head passes [`check_head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFix<'a> {
    /// The client's `Host` (or its absence) as it is.
    Keep,
    /// The absolute-form target's authority, in place of any `Host`.
    Authority(&'a str),
}

/// The rules above for one request head: its method, its target's form,
/// how many `Host` lines it has and the first one's value.
pub fn check_head<'a>(
    method: &[u8],
    target: Target<'a>,
    host_lines: usize,
    host: Option<&[u8]>,
) -> Result<HostFix<'a>, Refusal> {
    if method == b"CONNECT" {
        return Err(Refusal::Connect);
    }
    if host_lines > 1 {
        return Err(Refusal::Bad("more than one Host header"));
    }
    if host.is_some_and(|h| !valid_host(h)) {
        return Err(Refusal::Bad("invalid Host header"));
    }
    match target {
        Target::Origin => Ok(HostFix::Keep),
        Target::Asterisk if method == b"OPTIONS" => Ok(HostFix::Keep),
        Target::Asterisk => Err(Refusal::Bad("a * target is only for OPTIONS")),
        Target::Absolute { scheme, authority } => {
            let default_port = if scheme.eq_ignore_ascii_case("http") {
                80
            } else if scheme.eq_ignore_ascii_case("https") {
                443
            } else {
                return Err(Refusal::Bad("unsupported scheme in the request target"));
            };
            let authority_ok = !authority.is_empty() && valid_host(authority.as_bytes());
            if !authority_ok {
                return Err(Refusal::Bad("invalid request target"));
            }
            match host {
                Some(h) if !same_authority(h, authority.as_bytes(), default_port) => Err(
                    Refusal::Bad("Host does not match the request target's authority"),
                ),
                _ => Ok(HostFix::Authority(authority)),
            }
        }
        Target::Other => Err(Refusal::Bad("invalid request target")),
    }
}

/// Whether a request line holds a `#` (a fragment, or a method spelled
/// with one): refused as a malformed head on both paths (see above).
#[inline]
pub fn has_fragment(request_line: &[u8]) -> bool {
    request_line.contains(&b'#')
}

/// Whether `value` is a valid `Host` field value: empty (a target without
/// an authority, RFC 9112 §3.2), or `uri-host [ ":" port ]` with a
/// non-empty host (RFC 9110 §4.2.1, §7.2; RFC 3986 §3.2.2).
pub fn valid_host(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let Some((host, port)) = split_host_port(value) else {
        return false;
    };
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
        && port.is_none_or(|p| port_number(p).is_some());
    let host_ok = match host {
        [b'[', inner @ .., b']'] => {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => !host.is_empty() && reg_name(host),
    };
    port_ok && host_ok
}

/// A reg-name or IPv4 address: unreserved, sub-delims and `%XX`.
fn reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 2;
            }
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `host[:port]` split at the port's colon (an IPv6 literal keeps its
/// brackets). `None`: junk after an IPv6 literal.
fn split_host_port(value: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    if value.first() == Some(&b'[') {
        let close = value.iter().position(|&b| b == b']')?;
        let (host, rest) = value.split_at(close + 1);
        return match rest {
            [] => Some((host, None)),
            [b':', port @ ..] => Some((host, Some(port))),
            _ => None,
        };
    }
    match value.iter().position(|&b| b == b':') {
        Some(i) => Some((&value[..i], Some(&value[i + 1..]))),
        None => Some((value, None)),
    }
}

/// A port's number; an empty port is the scheme's default (RFC 3986 §3.2.3).
fn port_number(digits: &[u8]) -> Option<Option<u16>> {
    if digits.is_empty() {
        return Some(None);
    }
    std::str::from_utf8(digits).ok()?.parse().ok().map(Some)
}

/// Whether a `Host` value names the same host and port as a target's
/// authority: hosts compared without regard to case, a missing port being
/// the scheme's default (RFC 9110 §4.2.3).
fn same_authority(host: &[u8], authority: &[u8], default_port: u16) -> bool {
    let (Some((h1, p1)), Some((h2, p2))) = (split_host_port(host), split_host_port(authority))
    else {
        return false;
    };
    let port = |p: Option<&[u8]>| match p.map(port_number) {
        None | Some(Some(None)) => Some(default_port),
        Some(Some(Some(n))) => Some(n),
        Some(None) => None,
    };
    h1.eq_ignore_ascii_case(h2) && port(p1).is_some() && port(p1) == port(p2)
}

/// Whether the balancer closes the client connection after answering
/// `error` itself: after the client's own failure (a refused head, a body
/// that broke or stalled), the connection may be out of step.
pub fn closes_connection(error: &ProxyError) -> bool {
    matches!(
        error,
        ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::ClientBody(_)
            | ProxyError::ClientTimeout
    )
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
        | ProxyError::MethodNotAllowed
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

/// How long an attempt's new connection may take to come up before the
/// request gives way to the next candidate: `CONNECT_FAILOVER_MS` while
/// `another_candidate` remains; `None` for the last one, which gets all of
/// `CONNECT_TIMEOUT_MS` (giving up early there would only turn a slow
/// answer into a failed request).
pub fn connect_give_way(limits: &ProxyLimits, another_candidate: bool) -> Option<Duration> {
    another_candidate.then_some(limits.connect_failover)
}

/// Whether a failed attempt rings the health loop for an immediate check:
/// a connect that failed for the backend's reasons (refused, timed out, or
/// given up early for the next candidate), never a local shortage.
pub fn wakes_health_check(error: &ProxyError) -> bool {
    matches!(error, ProxyError::Connect(e) if !e.is_local())
}

/// What a failure says about the backend, for outlier detection: `None`
/// when it was not the backend's doing (the client's body, a local
/// shortage of file descriptors or ports, a connect given up early for
/// the next candidate).
pub fn blame(error: &ProxyError, client: u64) -> Option<Fault> {
    match error {
        ProxyError::Connect(e) if e.is_local() || e.gave_way() => None,
        ProxyError::Connect(_) => Some(Fault::Connect),
        ProxyError::Upstream(_) | ProxyError::UpstreamIo(_) | ProxyError::BadResponse(_) => {
            Some(Fault::Answer)
        }
        ProxyError::Timeout => Some(Fault::Timeout { client }),
        ProxyError::NoBackend
        | ProxyError::BadRequest(_)
        | ProxyError::MethodNotAllowed
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
        ProxyError::MethodNotAllowed => (405, "CONNECT is not supported"),
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

/// `retry_after_secs` when it carries a `Retry-After`).
/// Fields the balancer's answer to `error` carries besides its own (the
/// 405's `Allow`).
pub fn answer_fields(error: &ProxyError) -> &'static [(&'static str, &'static str)] {
    match error {
        ProxyError::MethodNotAllowed => &[("allow", ALLOW)],
        _ => &[],
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
    fn a_connect_that_gave_way_blames_nothing_and_wakes_the_checks() {
        use crate::upstream::ConnectError;
        let addr = "127.0.0.1:1".parse().unwrap();
        let gave_way = ProxyError::Connect(ConnectError::GaveWay(addr, Duration::from_millis(250)));
        assert_eq!(blame(&gave_way, 1), None);
        assert!(wakes_health_check(&gave_way) && may_retry(&gave_way, false, false));
        let timed_out = ProxyError::Connect(ConnectError::Timeout(addr));
        assert_eq!(blame(&timed_out, 1), Some(Fault::Connect));
        assert!(wakes_health_check(&timed_out));
        let emfile = ProxyError::Connect(ConnectError::Io(
            addr,
            std::io::Error::from_raw_os_error(24),
        ));
        assert!(!wakes_health_check(&emfile));
        assert!(!wakes_health_check(&ProxyError::Timeout));
    }

    #[test]
    fn host_values_are_host_and_optional_port() {
        for ok in [
            "",
            "h",
            "edge.test:8080",
            "EXAMPLE.com",
            "10.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "a_b-c~d",
            "x%41y",
            "h:",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "a b", "a, b", ":80", "h:99999", "h:8a", "[::1", "[::1]x", "u@h", "h/x", "h#", "x%4",
            "[]",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn heads_are_checked_connect_first_then_host_then_target() {
        use Refusal::Bad;
        let abs = |scheme, authority| Target::Absolute { scheme, authority };
        // (method, target, Host lines, first Host, verdict)
        type Case<'a> = (
            &'a [u8],
            Target<'a>,
            usize,
            Option<&'a [u8]>,
            Result<HostFix<'a>, Refusal>,
        );
        let cases: [Case; 12] = [
            (b"GET", Target::Origin, 1, Some(b"h"), Ok(HostFix::Keep)),
            (b"CONNECT", Target::Other, 2, None, Err(Refusal::Connect)),
            (
                b"GET",
                Target::Origin,
                2,
                Some(b"h"),
                Err(Bad("more than one Host header")),
            ),
            (
                b"GET",
                Target::Origin,
                1,
                Some(b"a b"),
                Err(Bad("invalid Host header")),
            ),
            (
                b"OPTIONS",
                Target::Asterisk,
                1,
                Some(b"h"),
                Ok(HostFix::Keep),
            ),
            (
                b"GET",
                Target::Asterisk,
                1,
                Some(b"h"),
                Err(Bad("a * target is only for OPTIONS")),
            ),
            (
                b"GET",
                abs("http", "h"),
                0,
                None,
                Ok(HostFix::Authority("h")),
            ),
            (
                b"GET",
                abs("HTTP", "H:80"),
                1,
                Some(b"h"),
                Ok(HostFix::Authority("H:80")),
            ),
            (
                b"GET",
                abs("https", "h"),
                1,
                Some(b"h:443"),
                Ok(HostFix::Authority("h")),
            ),
            (
                b"GET",
                abs("http", "h"),
                1,
                Some(b"h:8080"),
                Err(Bad("Host does not match the request target's authority")),
            ),
            (
                b"GET",
                abs("ws", "h"),
                1,
                Some(b"h"),
                Err(Bad("unsupported scheme in the request target")),
            ),
            (
                b"GET",
                Target::Other,
                1,
                Some(b"h"),
                Err(Bad("invalid request target")),
            ),
        ];
        for (method, target, lines, host, want) in cases {
            assert_eq!(
                check_head(method, target, lines, host),
                want,
                "{target:?} {host:?}"
            );
        }
        assert!(has_fragment(b"GET /a#b HTTP/1.1") && !has_fragment(b"GET /a HTTP/1.1"));
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
