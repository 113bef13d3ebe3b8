//! What the head checks share: a parsed head as plain data, and the
//! header-name lists of RFC 9110, written out here rather than taken from
//! `hashgate::proxy::rules`, so the checks do not grade hashgate against
//! itself.

/// A header line as httparse saw it.
pub type Field = (String, Vec<u8>);

/// Most header lines hashgate accepts in one head (it refuses more).
pub const MAX_HEADERS: usize = 100;

/// Room for a rewritten head: the client's lines plus the four the
/// balancer appends, and then some.
pub const OUT_HEADERS: usize = 128;

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy `Keep-Alive` and
/// `Proxy-Connection`), as the README's proxying section lists them.
/// `Trailer` is not one: it announces end-to-end trailer fields.
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

/// The identity headers the balancer sets itself on a request.
pub const FORWARDING: [&str; 5] = [
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Names a `Connection` header may list without the header being dropped
/// (README, "Errors and limits": framing, `Host`, forwarding headers).
pub fn protected_from_connection(name: &str) -> bool {
    ["content-length", "transfer-encoding", "host"]
        .iter()
        .chain(FORWARDING.iter())
        .any(|p| name.eq_ignore_ascii_case(p))
}

/// Whether a `Connection` header listing `named` removes the header `name`.
pub fn removed_by_connection(name: &str, named: &[String]) -> bool {
    named.iter().any(|n| name.eq_ignore_ascii_case(n)) && !protected_from_connection(name)
}

pub fn is_one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n))
}

pub fn fields(headers: &[httparse::Header<'_>]) -> Vec<Field> {
    headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

/// The values of every line called `name`, in order.
pub fn values<'a>(fields: &'a [Field], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// The comma-separated list elements of every `name` line, trimmed, empty
/// ones skipped, lower case (RFC 9110 §5.6.1).
pub fn tokens(fields: &[Field], name: &str) -> Vec<String> {
    values(fields, name)
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// A `Content-Length` value as RFC 9110 §8.6 has it: digits only. `None`
/// for anything else (hashgate refuses more than 18 digits too; so does
/// this judge, since such a value overflows what either can hold).
pub fn content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Shows bytes in a failure message.
pub fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}
