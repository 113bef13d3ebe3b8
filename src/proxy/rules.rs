//! The proxy's header rules as pure functions, one place for both request
//! paths: the HTTP/1.1 fast path ([`super::h1`]) asks them about the bytes it
//! parsed in place, the hyper path ([`super::headers`]) about its header
//! maps. A rule that differs between the two by accident is a security bug
//! (see `tests/smuggling.rs`), so neither path keeps a list of its own.
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

/// The hop-by-hop headers every proxy drops in both directions (RFC 9110
/// §7.6.1, plus the legacy `Keep-Alive` and `Proxy-Connection`), in lower
/// case. `Upgrade` passes only in a tunnel's handshake.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
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
        (7, Some(b't')) => b"trailer",
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
