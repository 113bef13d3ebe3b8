//! `hashgate::proxy::client_ip::TrustedProxies::client_ip`: which address
//! a request is keyed by, from the TCP peer and `X-Forwarded-For`.
//!
//! Input, as text lines: the peer address; the trusted blocks
//! (comma-separated CIDRs or bare addresses; ones that do not parse are
//! left out); then one `X-Forwarded-For` header value per line (values a
//! header cannot hold, such as control bytes, are left out; others, such as
//! bytes over 0x7f, stay).
//!
//! Checks, against the rule in `src/proxy/client_ip.rs`'s docs, re-done
//! here: the key is the peer (as IPv4 when it is IPv4-mapped) unless the
//! peer is trusted; then the right-most hop that is not trusted, walking the
//! header lines from the last, each from its right; a hop that does not
//! read as an address (`ip`, `[v6]`, `v4:port`, `[v6]:port`), or a line that
//! is not visible ASCII, ends the walk at the last hop read; when every hop
//! is trusted, the left-most one. Besides equality with that walk, the
//! properties that make it safe, checked on their own:
//! - the key is the peer or an address read from the header, in canonical
//!   form;
//! - an untrusted peer's header is never read;
//! - the key is a trusted address only when no hop right of where the walk
//!   stopped is untrusted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashgate::proxy::client_ip::TrustedProxies;
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

pub struct Input {
    pub peer: IpAddr,
    pub trusted: Vec<IpNet>,
    pub headers: HeaderMap,
    /// The values as given (the header lines, in order).
    pub values: Vec<HeaderValue>,
}

pub fn decode(data: &[u8]) -> Option<Input> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let peer = std::str::from_utf8(lines.next()?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let trusted = String::from_utf8_lossy(lines.next().unwrap_or_default())
        .split(',')
        .map(str::trim)
        .filter_map(|s| {
            s.parse::<IpNet>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        })
        .collect();
    let values: Vec<HeaderValue> = lines
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect();
    let mut headers = HeaderMap::new();
    for v in &values {
        headers.append("x-forwarded-for", v.clone());
    }
    // Other headers do not count.
    headers.append("x-real-ip", HeaderValue::from_static("192.0.2.66"));
    headers.append("forwarded", HeaderValue::from_static("for=192.0.2.67"));
    Some(Input {
        peer,
        trusted,
        headers,
        values,
    })
}

pub fn encode(peer: &str, trusted: &str, values: &[&str]) -> Vec<u8> {
    let mut text = format!("{peer}\n{trusted}");
    for v in values {
        text.push('\n');
        text.push_str(v);
    }
    text.into_bytes()
}

pub fn check(data: &[u8]) {
    let Some(input) = decode(data) else { return };
    let key = TrustedProxies::new(input.trusted.clone()).client_ip(input.peer, &input.headers);
    let what = || {
        format!(
            "peer {}, trusted {:?}, X-Forwarded-For {:?}: key {key}",
            input.peer, input.trusted, input.values
        )
    };
    let trusted = |ip: IpAddr| input.trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    let peer = input.peer.to_canonical();

    assert_eq!(key, key.to_canonical(), "not canonical: {}", what());
    let walk = walk(&input, &trusted);
    assert_eq!(key, walk.key, "not the rule's key: {}", what());

    if !trusted(peer) {
        assert_eq!(key, peer, "an untrusted peer chose its key: {}", what());
        return;
    }
    assert!(
        key == peer || walk.read.contains(&key),
        "a key neither the peer nor in the header: {}",
        what()
    );
    if trusted(key) {
        assert!(
            walk.read.iter().all(|&ip| trusted(ip)),
            "a trusted key while an untrusted hop was read: {}",
            what()
        );
    }
}

/// The rule walked over the header lines.
struct Walk {
    key: IpAddr,
    /// The hops read, right to left, up to where the walk stopped.
    read: Vec<IpAddr>,
}

fn walk(input: &Input, trusted: &dyn Fn(IpAddr) -> bool) -> Walk {
    let peer = input.peer.to_canonical();
    let mut read = Vec::new();
    if input.trusted.is_empty() || !trusted(peer) {
        return Walk { key: peer, read };
    }
    let mut last = peer;
    for value in input.values.iter().rev() {
        let Ok(text) = value.to_str() else {
            return Walk { key: last, read };
        };
        for hop in text.rsplit(',') {
            let Some(ip) = hop_address(hop) else {
                return Walk { key: last, read };
            };
            read.push(ip);
            if !trusted(ip) {
                return Walk { key: ip, read };
            }
            last = ip;
        }
    }
    Walk { key: last, read }
}

/// One hop, in the forms the rule names: `ip`, `[v6]`, `v4:port`,
/// `[v6]:port`; canonical (IPv4-mapped addresses as IPv4).
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches([' ', '\t']);
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let v6: Ipv6Addr = v6.parse().ok()?;
        if !after.is_empty() {
            after.strip_prefix(':')?.parse::<u16>().ok()?;
        }
        return Some(IpAddr::V6(v6).to_canonical());
    }
    let (v4, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}
