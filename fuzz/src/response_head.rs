//! `hashgate::proxy::h1::head::response`: the fast path's response head
//! parser and rewrite, the head a client receives in place of the backend's.
//!
//! Input: one flags byte (bit 0: the request was `HEAD`; bit 1: the client
//! connection closes after this response), then the backend's bytes.
//!
//! When the head is `Ready`:
//! - `head_len <= buf.len()`, and it is where httparse ends the head; the
//!   verdict and the rewrite depend on the head alone, and one byte less is
//!   `Partial`;
//! - the rewrite is exactly one complete HTTP/1.1 response head, `out.len()`
//!   bytes long, with the backend's status;
//! - at most one `Content-Length`, never beside `Transfer-Encoding`;
//! - the framing a strict peer reads (RFC 9112 §6.3) from the backend's head
//!   and from the rewrite are both the `framing` reported: backend, balancer
//!   and client agree where the body ends;
//! - a body that runs to the backend's close closes the client connection,
//!   and `Connection: close` is written exactly when the client connection
//!   closes (and no other `Connection` header);
//! - `reusable` only for an HTTP/1.1 backend that did not say close and
//!   frames its body;
//! - no hop-by-hop header but a chunked `Transfer-Encoding` (or a `HEAD`
//!   answer's), nothing named in `Connection` but the protected names, every
//!   other line unchanged and in order;
//! - rewriting the rewrite gives it back unchanged, when it holds no more
//!   lines than hashgate accepts.

use hashgate::proxy::h1::head::{self, Framing, Response, ResponseHead};

use crate::wire::{self, Field, HOP_BY_HOP, MAX_HEADERS, OUT_HEADERS, is_one_of, show};

pub struct Input<'a> {
    pub head_request: bool,
    pub close_client: bool,
    pub buf: &'a [u8],
}

pub fn decode(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, buf) = data.split_first()?;
    Some(Input {
        head_request: flags & 1 != 0,
        close_client: flags & 2 != 0,
        buf,
    })
}

pub fn encode(head_request: bool, close_client: bool, buf: &[u8]) -> Vec<u8> {
    let mut data = vec![u8::from(head_request) | u8::from(close_client) << 1];
    data.extend_from_slice(buf);
    data
}

pub fn check(data: &[u8]) {
    let Some(input) = decode(data) else { return };
    let mut out = Vec::new();
    let Response::Ready(head) =
        head::response(input.buf, input.head_request, input.close_client, &mut out)
    else {
        return;
    };
    check_ready(&input, &head, &out);
}

/// How a strict recipient frames a response body (RFC 9112 §6.3), or why
/// the head cannot be framed.
pub fn strict_framing(
    status: u16,
    fields: &[Field],
    head_request: bool,
) -> Result<Framing, &'static str> {
    let mut length = None;
    for v in wire::values(fields, "content-length") {
        let n = wire::content_length(v).ok_or("invalid Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length");
        }
        length = Some(n);
    }
    let codings = wire::tokens(fields, "transfer-encoding");
    let has_te = !wire::values(fields, "transfer-encoding").is_empty();
    if has_te && codings.is_empty() {
        return Err("empty Transfer-Encoding");
    }
    Ok(
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Empty
        } else if has_te {
            if codings.last().map(String::as_str) == Some("chunked") {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        },
    )
}

fn check_ready(input: &Input<'_>, head: &ResponseHead, out: &[u8]) {
    let Input {
        head_request,
        close_client,
        buf,
    } = *input;
    let what = || {
        format!(
            "HEAD {head_request}, close {close_client}, backend head {}, rewritten {}",
            show(buf),
            show(out)
        )
    };

    assert!(
        head.head_len <= buf.len(),
        "head_len past the input: {}",
        what()
    );
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut lines);
    assert_eq!(
        resp.parse(buf).ok(),
        Some(httparse::Status::Complete(head.head_len)),
        "httparse ends the backend's head elsewhere: {}",
        what()
    );
    assert_eq!(resp.code, Some(head.status), "{}", what());
    let version = resp.version.unwrap();
    let sent = wire::fields(resp.headers);
    let mut alone = Vec::new();
    assert_eq!(
        head::response(
            &buf[..head.head_len],
            head_request,
            close_client,
            &mut alone
        ),
        Response::Ready(clone(head)),
        "the bytes after the head changed the verdict: {}",
        what()
    );
    // The balancer stamps its own `Date` on answers that lack one; two calls
    // may straddle a second, so that one line is compared without its value.
    assert_eq!(
        undated(&alone),
        undated(out),
        "the bytes after the head changed the rewrite"
    );
    for cut in [head.head_len - 1, head.head_len / 2] {
        assert_eq!(
            head::response(&buf[..cut], head_request, close_client, &mut Vec::new()),
            Response::Partial,
            "{cut} bytes of the head are not Partial: {}",
            what()
        );
    }

    let mut lines = [httparse::EMPTY_HEADER; OUT_HEADERS];
    let mut fwd = httparse::Response::new(&mut lines);
    assert_eq!(
        fwd.parse(out).ok(),
        Some(httparse::Status::Complete(out.len())),
        "the rewrite is not one complete head: {}",
        what()
    );
    assert_eq!(
        (fwd.version, fwd.code),
        (Some(1), Some(head.status)),
        "{}",
        what()
    );
    let relayed = wire::fields(fwd.headers);

    // Framing: one length at most, never beside chunking, and everyone
    // agrees where the body ends.
    let lengths = wire::values(&relayed, "content-length").len();
    let codings = wire::values(&relayed, "transfer-encoding").len();
    assert!(lengths <= 1, "{lengths} Content-Length lines: {}", what());
    assert!(
        lengths == 0 || codings == 0,
        "Content-Length beside Transfer-Encoding: {}",
        what()
    );
    assert_eq!(
        strict_framing(head.status, &sent, head_request),
        Ok(head.framing),
        "the backend's framing is not the one reported: {}",
        what()
    );
    assert_eq!(
        strict_framing(head.status, &relayed, head_request),
        Ok(head.framing),
        "the client would frame the body differently: {}",
        what()
    );

    // The connections.
    let named = wire::tokens(&sent, "connection");
    if head.framing == Framing::UntilClose || close_client {
        assert!(head.close_client, "the client connection stays: {}", what());
    }
    let connection = wire::values(&relayed, "connection");
    // An interim answer never says close: the final one does.
    let closes = head.close_client && !(100..200).contains(&head.status);
    let want_connection: &[&[u8]] = if closes { &[b"close"] } else { &[] };
    assert_eq!(connection, want_connection, "Connection: {}", what());
    if head.reusable {
        assert!(
            version == 1
                && head.framing != Framing::UntilClose
                && !named.iter().any(|t| t == "close"),
            "reusable: {}",
            what()
        );
    }

    // Every line: kept as it came, rewritten (the length), or dropped.
    let interim_or_204 = (100..200).contains(&head.status) || head.status == 204;
    let keep_codings = head.framing == Framing::Chunked || head_request;
    let has_codings = !wire::values(&sent, "transfer-encoding").is_empty();
    let length = strict_length(&sent).filter(|_| !has_codings && !interim_or_204);
    let mut want: Vec<Field> = Vec::new();
    let mut length_seen = false;
    for (name, value) in &sent {
        if name.eq_ignore_ascii_case("content-length") {
            if let Some(n) = length.filter(|_| !std::mem::replace(&mut length_seen, true)) {
                want.push((name.clone(), n.to_string().into_bytes()));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if keep_codings {
                want.push((name.clone(), value.clone()));
            }
        } else if !is_one_of(name, &HOP_BY_HOP) && !wire::removed_by_connection(name, &named) {
            want.push((name.clone(), value.clone()));
        }
    }
    // A final answer without a Date gets one (RFC 9110 §6.6.1), after the
    // kept lines; an interim one never.
    let interim = (100..200).contains(&head.status);
    let dated = !wire::values(&sent, "date").is_empty();
    let mut kept: Vec<Field> = relayed
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("connection"))
        .cloned()
        .collect();
    if !dated && !interim {
        let added = kept.pop().filter(|(n, v)| {
            n == "date" && httpdate::parse_http_date(&String::from_utf8_lossy(v)).is_ok()
        });
        assert!(
            added.is_some(),
            "no Date added to an answer without one: {}",
            what()
        );
    }
    assert_eq!(kept, want, "lines lost, added or altered: {}", what());

    // Rewriting the rewrite gives it back, when it still fits hashgate's
    // limit of lines (`connection: close` can take 100 lines to 101).
    if relayed.len() > MAX_HEADERS {
        return;
    }
    let mut again = Vec::new();
    match head::response(out, head_request, close_client, &mut again) {
        Response::Ready(second) => assert_eq!(
            (second.status, second.framing, second.close_client),
            (head.status, head.framing, head.close_client),
            "the rewrite reads differently: {}",
            what()
        ),
        other => panic!("the rewrite is {other:?}: {}", what()),
    }
    assert_eq!(again, out, "the rewrite does not rewrite to itself");
}

fn strict_length(fields: &[Field]) -> Option<u64> {
    wire::values(fields, "content-length")
        .first()
        .and_then(|v| wire::content_length(v))
}

/// The head with the value of every `date:` line the balancer wrote blanked.
fn undated(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    for line in head.split_inclusive(|&b| b == b'\n') {
        if line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"date:") {
            out.extend_from_slice(b"date: -\r\n");
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

fn clone(h: &ResponseHead) -> ResponseHead {
    ResponseHead {
        head_len: h.head_len,
        status: h.status,
        framing: h.framing,
        reusable: h.reusable,
        close_client: h.close_client,
    }
}
