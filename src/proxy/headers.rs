//! Header rewriting between client and backend on the hyper path, by the
//! rules of [`super::rules`] (the fast path applies the same ones to the
//! bytes it parses).
//!
//! Hop-by-hop headers (the fixed list plus anything `Connection` may name)
//! belong to one connection and are dropped in both directions, except the
//! `Upgrade` handshake of a tunnel; hyper frames each message it writes
//! from its body, so no framing header travels as it came. Requests gain
//! the forwarding headers: `X-Forwarded-For` (appended to a trusted proxy's
//! list, replaced otherwise, so an untrusted client cannot plant addresses
//! for the backend), `X-Forwarded-Proto`, `X-Forwarded-Host` and
//! `X-Real-IP`; an untrusted client's `Forwarded` is removed.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

use super::client_ip::X_FORWARDED_FOR;
use super::rules;

pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// [`rules::HOP_BY_HOP`] as header names (a lookup by a static name skips
/// parsing the name on every request).
static HOP_BY_HOP: [HeaderName; 8] = {
    let l = rules::HOP_BY_HOP;
    [
        HeaderName::from_static(l[0]),
        HeaderName::from_static(l[1]),
        HeaderName::from_static(l[2]),
        HeaderName::from_static(l[3]),
        HeaderName::from_static(l[4]),
        HeaderName::from_static(l[5]),
        HeaderName::from_static(l[6]),
        HeaderName::from_static(l[7]),
    ]
};

/// Removes hop-by-hop headers. With `keep_upgrade`, an `Upgrade` handshake
/// keeps `Upgrade` and a `Connection: upgrade` so the backend sees it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in Connection are hop-by-hop too, unless the rules say
    // Connection may not touch them. Collecting them costs an allocation
    // only when Connection names something unusual.
    if let Some(conn) = headers.get(&header::CONNECTION) {
        let named: Vec<HeaderName> = conn
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|t| {
                !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"upgrade")
                    && rules::connection_may_drop(t)
            })
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the request asks to switch protocols (WebSocket and friends).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Sets the forwarding headers on a request headed for a backend.
///
/// `from_trusted`: the peer is a trusted proxy, so its `X-Forwarded-For`,
/// `-Proto` and `-Host` are kept and extended; otherwise they are replaced.
/// `host`: the request's authority (Host header or HTTP/2 `:authority`).
pub fn set_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    client: IpAddr,
    from_trusted: bool,
    host: Option<&HeaderValue>,
) {
    let peer = peer.to_canonical();
    let client = client.to_canonical();
    let peer_value = ip_value(peer);
    let xff = if from_trusted && headers.contains_key(&X_FORWARDED_FOR) {
        // Fold every existing line into one list and append the peer.
        let mut list = String::new();
        for v in headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(v) = v.to_str() {
                list.push_str(v);
                list.push_str(", ");
            }
        }
        list.push_str(peer_value.to_str().unwrap_or(""));
        HeaderValue::from_str(&list).unwrap_or_else(|_| peer_value.clone())
    } else {
        peer_value.clone()
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    // We describe our hop in the X-Forwarded-* headers only; a `Forwarded`
    // list is believed (and passed on) only from a trusted proxy.
    if !from_trusted && headers.contains_key(&FORWARDED) {
        headers.remove(&FORWARDED);
    }
    // The common case, a direct client: one formatted value serves both
    // headers (a HeaderValue clone shares its bytes).
    let real_ip = if client == peer {
        peer_value
    } else {
        ip_value(client)
    };
    headers.insert(&X_REAL_IP, real_ip);
    if !(from_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !(from_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => {
                headers.insert(&X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// An IP address as a header value, formatted on the stack: one allocation
/// (the value's own bytes) instead of a `String` and a copy.
fn ip_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write as _;
    let mut buf = [0u8; 48]; // the longest IPv6 text is 45 bytes
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn an_upgrade_keeps_its_handshake() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn a_client_cannot_strip_forwarding_headers_via_connection() {
        let mut h = map(&[("connection", "x-forwarded-for, x-real-ip")]);
        strip_hop_by_hop(&mut h, false);
        set_forwarding(
            &mut h,
            "192.0.2.1".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            false,
            None,
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-real-ip"], "192.0.2.1");
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        let host = HeaderValue::from_static("api.example");
        set_forwarding(
            &mut h,
            "192.0.2.1".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            false,
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example");
    }

    #[test]
    fn trusted_forwarding_headers_are_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-for", "10.0.0.9"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarding(
            &mut h,
            "10.0.0.2".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
            true,
            None,
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.9, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-real-ip"], "198.51.100.7");
    }
}
