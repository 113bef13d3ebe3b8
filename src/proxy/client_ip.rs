//! Which IP address a request is keyed by.
//!
//! The TCP peer, unless the peer is a trusted proxy (`TRUSTED_PROXIES`): then
//! the right-most address of `X-Forwarded-For` that is not itself a trusted
//! proxy, the first hop nobody we trust can vouch for. An untrusted client can
//! therefore never choose its key (and so its backend) by sending headers: its
//! header is ignored. When every hop is trusted, the left-most one is the
//! client (a client inside a trusted network). A malformed hop ends the walk:
//! the last hop before it that we could read is the key, never a guess.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::HeaderName;
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The trusted proxy blocks, checked with a linear scan (the list is short).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client address for a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.0.is_empty() || !self.contains(peer) {
            return peer;
        }
        // Several X-Forwarded-For lines form one list, in order; walk it
        // from the right, skipping hops we trust. A malformed hop ends the
        // walk: nothing left of it can be vouched for.
        // `last` is the left-most hop reached so far: when every hop is
        // trusted (a client inside a trusted network), that is the client,
        // as nginx's real_ip_recursive has it.
        let mut last = peer;
        for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
            let Ok(value) = value.to_str() else {
                return last;
            };
            for hop in value.rsplit(',') {
                match parse_hop(hop) {
                    Some(ip) if !self.contains(ip) => return ip,
                    Some(ip) => last = ip,
                    None => return last,
                }
            }
        }
        last
    }
}

/// One `X-Forwarded-For` element: an IP, optionally `[v6]`, `v4:port` or
/// `[v6]:port` as some proxies write them.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        // Only `[v6]` or `[v6]:port`: brackets hold an IPv6 address, and
        // nothing but a port may follow them.
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok()))
        {
            return None;
        }
        return inside
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    let (ip, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn only_v6_goes_in_brackets_and_only_a_port_after_them() {
        assert_eq!(parse_hop("[2001:db8::9]"), Some(ip("2001:db8::9")));
        assert_eq!(parse_hop("[2001:db8::9]:443"), Some(ip("2001:db8::9")));
        for bad in [
            "[198.51.100.2]",
            "[2001:db8::1]junk",
            "[2001:db8::1]:",
            "[::1]:99999",
            "[::1",
        ] {
            assert_eq!(parse_hop(bad), None, "{bad}");
        }
    }

    #[test]
    fn untrusted_peers_are_their_own_key() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            t.client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"])),
            ip("203.0.113.9")
        );
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("10.0.0.1"), &headers(&["1.2.3.4"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn trusted_peers_give_the_rightmost_untrusted_hop() {
        let t = trusted(&["10.0.0.0/8", "::1/128"]);
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &h), ip("198.51.100.7"));
        let h = headers(&["2001:db8::5, [2001:db8::9]:443"]);
        assert_eq!(t.client_ip(ip("::1"), &h), ip("2001:db8::9"));
        let h = headers(&["198.51.100.7:5555"]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn trusted_peer_without_usable_header_is_the_key() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &headers(&[])), ip("10.0.0.2"));
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), &headers(&["1.2.3.4, garbage"])),
            ip("10.0.0.2")
        );
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), &headers(&["1.2.3.4, garbage, 10.1.1.1"])),
            ip("10.1.1.1"),
            "the last hop read before the malformed one"
        );
        assert_eq!(
            t.client_ip(ip("10.0.0.2"), &headers(&["garbage, 1.2.3.4"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn when_every_hop_is_trusted_the_leftmost_is_the_client() {
        let t = trusted(&["10.0.0.0/8", "192.168.0.0/16"]);
        let h = headers(&["192.168.1.20, 10.9.9.9"]);
        assert_eq!(t.client_ip(ip("10.0.0.2"), &h), ip("192.168.1.20"));
    }

    #[test]
    fn mapped_v4_peers_match_v4_blocks() {
        let t = trusted(&["127.0.0.0/8"]);
        let h = headers(&["192.0.2.1"]);
        assert_eq!(t.client_ip(ip("::ffff:127.0.0.1"), &h), ip("192.0.2.1"));
    }
}
