//! `hashgate::proxy::h1::head::request`: the fast path's request head parser
//! and rewrite, the bytes a backend receives in place of the client's head.
//!
//! Input: one flags byte, the client address, then the client's bytes.
//! Flags bits 0-1 pick the address: 0 IPv4 (4 bytes follow), 1 and 3 IPv6
//! (16 bytes), 2 an IPv4-mapped IPv6 address (4 bytes); bits 2-4 pick
//! `max_body` from [`MAX_BODIES`].
//!
//! When the head is `Ready`:
//! - `head_len <= buf.len()`, and it is where httparse ends the head; the
//!   verdict and the rewrite depend on the head alone (the same for the head
//!   without the bytes after it), and one byte less is `Partial`;
//! - the rewrite is exactly one complete HTTP/1.1 request head, `out.len()`
//!   bytes long, with the client's method and target;
//! - one `X-Forwarded-For` and one `X-Real-IP`, both the client address as
//!   `Display` writes it (IPv4-mapped addresses as IPv4), one
//!   `X-Forwarded-Proto: http`, one `X-Forwarded-Host` equal to the one
//!   `Host`, no `Forwarded`;
//! - no `Transfer-Encoding` nor any other hop-by-hop header, nothing the
//!   client named in `Connection` (except the framing, `Host` and the
//!   forwarding headers, which `Connection` cannot remove);
//! - the framing is the framing parsed: the client sent no
//!   `Transfer-Encoding`, every `Content-Length` it sent reads `body_len`,
//!   and the rewrite carries exactly one `Content-Length: body_len` when the
//!   client sent one (none otherwise, and then `body_len` is 0);
//!   `body_len <= max_body`;
//! - every other line of the client's passes unchanged, in order;
//! - `idempotent` and `close` are read from the method and `Connection`;
//! - rewriting the rewrite gives it back unchanged (a fixpoint), when it
//!   holds no more lines than hashgate accepts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hashgate::proxy::h1::MAX_BODY;
use hashgate::proxy::h1::head::{self, Request, RequestHead};

use crate::wire::{self, FORWARDING, Field, HOP_BY_HOP, MAX_HEADERS, OUT_HEADERS, is_one_of, show};

/// The `max_body` values an input can pick (the fast path's own first).
pub const MAX_BODIES: [usize; 8] = [MAX_BODY, 0, 1, 5, 1024, u32::MAX as usize, usize::MAX, 100];

pub struct Input<'a> {
    pub client: IpAddr,
    pub max_body: usize,
    pub buf: &'a [u8],
}

pub fn decode(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, rest) = data.split_first()?;
    let (client, buf) = match flags & 0b11 {
        0 | 2 => {
            let (a, buf) = rest.split_first_chunk::<4>()?;
            let v4 = Ipv4Addr::from(*a);
            let ip = if flags & 0b11 == 0 {
                IpAddr::V4(v4)
            } else {
                IpAddr::V6(v4.to_ipv6_mapped())
            };
            (ip, buf)
        }
        _ => {
            let (a, buf) = rest.split_first_chunk::<16>()?;
            (IpAddr::V6(Ipv6Addr::from(*a)), buf)
        }
    };
    let max_body = MAX_BODIES[usize::from(flags >> 2 & 0b111)];
    Some(Input {
        client,
        max_body,
        buf,
    })
}

/// The input that [`decode`]s to `client`, `MAX_BODIES[max_body]` and `buf`.
pub fn encode(client: IpAddr, max_body: u8, buf: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(buf.len() + 17);
    let flags = (max_body & 0b111) << 2;
    match client {
        IpAddr::V4(v4) => {
            data.push(flags);
            data.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                data.push(flags | 2);
                data.extend_from_slice(&v4.octets());
            }
            None => {
                data.push(flags | 1);
                data.extend_from_slice(&v6.octets());
            }
        },
    }
    data.extend_from_slice(buf);
    data
}

pub fn check(data: &[u8]) {
    let Some(input) = decode(data) else { return };
    let mut out = Vec::new();
    let Request::Ready(head) = head::request(input.buf, input.client, input.max_body, &mut out)
    else {
        return;
    };
    check_ready(&input, &head, &out);
}

fn check_ready(input: &Input<'_>, head: &RequestHead, out: &[u8]) {
    let Input {
        client,
        max_body,
        buf,
    } = *input;
    let what = || format!("client head {}, rewritten {}", show(buf), show(out));

    // Where the head ends, and that nothing after it counts.
    assert!(
        head.head_len <= buf.len(),
        "head_len past the input: {}",
        what()
    );
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut lines);
    assert_eq!(
        req.parse(buf).ok(),
        Some(httparse::Status::Complete(head.head_len)),
        "httparse ends the client's head elsewhere: {}",
        what()
    );
    let (method, target) = (req.method.unwrap(), req.path.unwrap());
    let sent = wire::fields(req.headers);
    assert_eq!(req.version, Some(1), "{}", what());
    let mut alone = Vec::new();
    assert_eq!(
        head::request(&buf[..head.head_len], client, max_body, &mut alone),
        Request::Ready(clone(head)),
        "the bytes after the head changed the verdict: {}",
        what()
    );
    assert_eq!(alone, out, "the bytes after the head changed the rewrite");
    for cut in [head.head_len - 1, head.head_len / 2] {
        assert_eq!(
            head::request(&buf[..cut], client, max_body, &mut Vec::new()),
            Request::Partial,
            "{cut} bytes of the head are not Partial: {}",
            what()
        );
    }

    // The rewrite is one complete head, all of `out`.
    let mut lines = [httparse::EMPTY_HEADER; OUT_HEADERS];
    let mut fwd = httparse::Request::new(&mut lines);
    assert_eq!(
        fwd.parse(out).ok(),
        Some(httparse::Status::Complete(out.len())),
        "the rewrite is not one complete head: {}",
        what()
    );
    assert_eq!(
        (fwd.method, fwd.path, fwd.version),
        (Some(method), Some(target), Some(1)),
        "request line changed: {}",
        what()
    );
    let forwarded = wire::fields(fwd.headers);

    // Identity: set by the balancer, once each.
    let ip = client.to_canonical().to_string();
    let hosts = wire::values(&sent, "host");
    assert_eq!(hosts.len(), 1, "Ready without exactly one Host: {}", what());
    for (name, want) in [
        ("x-forwarded-for", ip.as_bytes()),
        ("x-real-ip", ip.as_bytes()),
        ("x-forwarded-proto", &b"http"[..]),
        ("x-forwarded-host", hosts[0]),
        ("host", hosts[0]),
    ] {
        assert_eq!(
            wire::values(&forwarded, name),
            [want],
            "{name} is not exactly one {}: {}",
            show(want),
            what()
        );
    }
    assert!(
        wire::values(&forwarded, "forwarded").is_empty(),
        "{}",
        what()
    );

    // Framing: the length parsed is the length every line said, written once.
    assert!(
        wire::values(&sent, "transfer-encoding").is_empty(),
        "Ready with a Transfer-Encoding: {}",
        what()
    );
    let lengths = wire::values(&sent, "content-length");
    for v in &lengths {
        assert_eq!(
            wire::content_length(v),
            Some(head.body_len as u64),
            "a Content-Length {} disagrees with body_len {}: {}",
            show(v),
            head.body_len,
            what()
        );
    }
    let body_len = head.body_len.to_string();
    let want_lengths: &[&[u8]] = if lengths.is_empty() {
        assert_eq!(head.body_len, 0, "a length from nowhere: {}", what());
        &[]
    } else {
        &[body_len.as_bytes()]
    };
    assert_eq!(
        wire::values(&forwarded, "content-length"),
        want_lengths,
        "Content-Length not forwarded once as parsed: {}",
        what()
    );
    assert!(head.body_len <= max_body, "body over max_body: {}", what());

    // Everything else passes as it came, in order; nothing hop-by-hop but
    // an upgrade's `Upgrade` lines (both halves asked for: `Upgrade` and
    // `Connection: upgrade`), which keep their place and are followed by
    // one `connection: upgrade` of the balancer's.
    let named = wire::tokens(&sent, "connection");
    let upgrade =
        named.iter().any(|t| t == "upgrade") && !wire::values(&sent, "upgrade").is_empty();
    assert_eq!(head.upgrade, upgrade, "upgrade: {}", what());
    let mut want: Vec<Field> = Vec::new();
    let mut length_seen = false;
    for (name, value) in &sent {
        if name.eq_ignore_ascii_case("content-length") {
            if !std::mem::replace(&mut length_seen, true) {
                want.push((name.clone(), body_len.clone().into_bytes()));
            }
        } else if (upgrade && name.eq_ignore_ascii_case("upgrade"))
            || (!is_one_of(name, &HOP_BY_HOP)
                && !is_one_of(name, &FORWARDING)
                && !wire::removed_by_connection(name, &named))
        {
            want.push((name.clone(), value.clone()));
        }
    }
    if upgrade {
        want.push(("connection".to_owned(), b"upgrade".to_vec()));
    }
    let kept: Vec<Field> = forwarded
        .iter()
        .filter(|(n, _)| !is_one_of(n, &FORWARDING))
        .cloned()
        .collect();
    assert_eq!(kept, want, "lines lost, added or altered: {}", what());

    let keyed = !wire::values(&sent, "idempotency-key").is_empty();
    let idempotent =
        keyed || ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"].contains(&method);
    assert_eq!(head.idempotent, idempotent, "{}", what());
    let te_trailers = wire::tokens(&sent, "te").iter().any(|t| t == "trailers");
    assert_eq!(head.te_trailers, te_trailers, "TE: trailers: {}", what());
    assert_eq!(
        head.close,
        named.iter().any(|t| t == "close"),
        "close: {}",
        what()
    );

    // A fixpoint: the backend's head rewritten again is itself (when it
    // still fits hashgate's limit of lines: the four added lines can take
    // a head of 97-100 lines past it).
    if forwarded.len() > MAX_HEADERS {
        return;
    }
    let mut again = Vec::new();
    let second = head::request(out, client, max_body, &mut again);
    assert_eq!(
        second,
        Request::Ready(RequestHead {
            head_len: out.len(),
            close: false,
            // TE is hop-by-hop: the rewrite carries none.
            te_trailers: false,
            ..clone(head)
        }),
        "the rewrite does not rewrite to itself: {}",
        what()
    );
    assert_eq!(again, out, "the rewrite does not rewrite to itself");
}

fn clone(h: &RequestHead) -> RequestHead {
    RequestHead {
        head_len: h.head_len,
        body_len: h.body_len,
        idempotent: h.idempotent,
        close: h.close,
        te_trailers: h.te_trailers,
        upgrade: h.upgrade,
    }
}
