//! `hashgate::proxy::h1::chunked::Chunked::feed`, which finds the end of a
//! chunked body relayed unchanged, and `head::BodyProgress`, which follows
//! any response body across reads.
//!
//! Input: one flags byte, two bytes of length (little endian), the piece
//! sizes, then the body bytes. Flags bits 0-1 pick the framing
//! `BodyProgress` follows (0 chunked, 1 `Length(length)`, 2 empty, 3 until
//! close); bits 2-5 say how many piece sizes follow (none: the body in one
//! piece). The body is fed in pieces of those sizes, over and over (a size
//! 0 is an empty read), the way reads from a socket split it.
//!
//! Checks, for the chunked scanner:
//! - `feed` never claims more than it was given, and claims less only once
//!   the body is done; once done it claims nothing more, and a read of
//!   nothing changes nothing;
//! - the verdict does not depend on how the bytes are split: whole, byte by
//!   byte and in the input's pieces, the body ends at the same byte or is
//!   refused at the same byte;
//! - a reference decoder written from RFC 9112 §7.1 (lenient where hashgate
//!   is strict, so it judges only where the body ends) finds the same end:
//!   whatever the balancer relays as one body, a strict client reads as one
//!   body, no more, no less.
//!
//! For `BodyProgress`: chunked it claims exactly what `Chunked` does; a
//! length claims bytes up to the length and is done there; an empty body
//! claims nothing and is done; a body until close claims everything and is
//! never done.

use hashgate::proxy::h1::chunked::Chunked;
use hashgate::proxy::h1::head::{BodyProgress, Framing};

use crate::wire::show;

pub struct Input<'a> {
    pub framing: Framing,
    /// Sizes of the reads the body is split into, used in turn; empty: one
    /// read of the whole body.
    pub pieces: &'a [u8],
    pub body: &'a [u8],
}

pub fn decode(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, rest) = data.split_first()?;
    let (length, rest) = rest.split_first_chunk::<2>()?;
    let framing = match flags & 0b11 {
        0 => Framing::Chunked,
        1 => Framing::Length(u64::from(u16::from_le_bytes(*length))),
        2 => Framing::Empty,
        _ => Framing::UntilClose,
    };
    let count = usize::from(flags >> 2 & 0b1111);
    if rest.len() < count {
        return None;
    }
    let (pieces, body) = rest.split_at(count);
    Some(Input {
        framing,
        pieces,
        body,
    })
}

/// The input that [`decode`]s to these; `pieces` holds at most 15 sizes.
pub fn encode(framing: Framing, pieces: &[u8], body: &[u8]) -> Vec<u8> {
    assert!(pieces.len() < 16, "at most 15 piece sizes");
    let (kind, length) = match framing {
        Framing::Chunked => (0, 0),
        Framing::Length(n) => (1, u16::try_from(n).expect("lengths up to 65535")),
        Framing::Empty => (2, 0),
        Framing::UntilClose => (3, 0),
    };
    let mut data = vec![kind | (pieces.len() as u8) << 2];
    data.extend_from_slice(&length.to_le_bytes());
    data.extend_from_slice(pieces);
    data.extend_from_slice(body);
    data
}

/// Where a body ends, or the byte that breaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The body is complete after this many bytes.
    Ends(usize),
    /// All the bytes belong to the body and more are needed.
    NeedsMore,
    /// The byte at this index cannot be part of a chunked body.
    Refused(usize),
}

/// The input's reads: the body cut in pieces of the given sizes in turn.
fn reads<'a>(pieces: &'a [u8], body: &'a [u8]) -> Vec<&'a [u8]> {
    if pieces.iter().all(|&p| p == 0) {
        // Nothing but empty reads would never get through the body.
        let mut reads: Vec<&[u8]> = pieces.iter().map(|_| &body[..0]).collect();
        reads.push(body);
        return reads;
    }
    let mut reads = Vec::new();
    let mut at = 0;
    for &size in pieces.iter().cycle() {
        if at == body.len() {
            break;
        }
        let end = body.len().min(at + usize::from(size));
        reads.push(&body[at..end]);
        at = end;
    }
    reads
}

/// Feeds `reads` in turn, checking each answer; the verdict over all.
fn scan(reads: &[&[u8]], what: &dyn Fn() -> String) -> Verdict {
    let mut c = Chunked::default();
    let mut at = 0;
    let mut end = None;
    for read in reads {
        let was_done = c.is_done();
        let before = c.clone();
        match c.feed(read) {
            Err(_) => {
                assert!(!was_done, "refused bytes after the end: {}", what());
                // The scanner stops at the bad byte; the reads after it are
                // never fed (the connection closes), so that is the verdict.
                return Verdict::Refused(at + first_refused(&before, read, what));
            }
            Ok(n) => {
                assert!(
                    n <= read.len(),
                    "claimed {n} of {} bytes: {}",
                    read.len(),
                    what()
                );
                if was_done {
                    assert_eq!(n, 0, "claimed bytes after the end: {}", what());
                }
                if n < read.len() {
                    assert!(c.is_done(), "stopped short of the end: {}", what());
                }
                if read.is_empty() {
                    assert_eq!(c.is_done(), was_done, "an empty read changed the state");
                }
                if c.is_done() && !was_done {
                    end = Some(at + n);
                }
            }
        }
        at += read.len();
    }
    match end {
        Some(end) => {
            assert_eq!(c.feed(b"0\r\n\r\n"), Ok(0), "claimed bytes after the end");
            assert!(c.is_done());
            Verdict::Ends(end)
        }
        None => Verdict::NeedsMore,
    }
}

/// Which byte of `read` a scanner in state `c` refuses, fed byte by byte.
fn first_refused(c: &Chunked, read: &[u8], what: &dyn Fn() -> String) -> usize {
    let mut c = c.clone();
    for (i, b) in read.iter().enumerate() {
        if c.feed(std::slice::from_ref(b)).is_err() {
            return i;
        }
    }
    panic!("refused in one read, accepted byte by byte: {}", what())
}

pub fn check(data: &[u8]) {
    let Some(Input {
        framing,
        pieces,
        body,
    }) = decode(data)
    else {
        return;
    };
    let what = || format!("body {}, pieces {pieces:?}", show(body));
    let split = reads(pieces, body);

    let whole = scan(&[body], &what);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(scan(&bytes, &what), whole, "byte by byte: {}", what());
    assert_eq!(scan(&split, &what), whole, "in pieces: {}", what());

    match (whole, reference(body)) {
        (Verdict::Ends(n), Reference::Ends(m)) => {
            assert_eq!(
                n,
                m,
                "the body ends elsewhere for a strict client: {}",
                what()
            )
        }
        (Verdict::Ends(n), r) => panic!("ends at {n}, a strict client: {r:?}: {}", what()),
        (Verdict::NeedsMore, Reference::Ends(m)) => {
            panic!(
                "a strict client ends the body at {m}, hashgate reads on: {}",
                what()
            )
        }
        // hashgate is stricter than the reference on extensions, trailers
        // and sizes: refusing is always safe (the connection closes).
        _ => {}
    }

    progress(framing, &split, whole, &what);
}

/// `BodyProgress` over the same reads.
fn progress(framing: Framing, reads: &[&[u8]], chunked: Verdict, what: &dyn Fn() -> String) {
    let mut p = BodyProgress::new(framing, true);
    // The same body for a client that takes no trailers: the same bytes
    // belong to it, a prefix of them is passed on, the end added once.
    let mut q = BodyProgress::new(framing, false);
    let mut c = Chunked::default();
    let mut claimed: u64 = 0;
    for read in reads {
        let was_done = p.is_done();
        let fed = p.feed(read);
        let stripped = q.feed(read);
        match (&fed, &stripped) {
            (Ok(f), Ok(g)) => {
                assert_eq!((f.pass, f.tail), (f.used, &b""[..]), "{}", what());
                assert_eq!(
                    g.used,
                    f.used,
                    "trailers or not, the same bytes belong to the body: {}",
                    what()
                );
                assert!(g.pass <= g.used, "{}", what());
                assert!(
                    g.tail.is_empty() || q.is_done(),
                    "the end added before the end: {}",
                    what()
                );
                assert_eq!(q.is_done(), p.is_done(), "{}", what());
            }
            (Err(_), Err(_)) => {}
            _ => panic!("trailers or not, one refused and one did not: {}", what()),
        }
        let got = fed.map(|f| f.used);
        if framing == Framing::Chunked {
            let want = c.feed(read);
            assert_eq!(got, want, "BodyProgress differs from Chunked: {}", what());
            if got.is_err() {
                assert!(matches!(chunked, Verdict::Refused(_)), "{}", what());
                return;
            }
            assert_eq!(p.is_done(), c.is_done(), "{}", what());
        }
        let n = got.unwrap_or_else(|e| panic!("{framing:?} refused bytes ({e}): {}", what()));
        assert!(
            n <= read.len(),
            "claimed {n} of {} bytes: {}",
            read.len(),
            what()
        );
        if was_done {
            assert_eq!(n, 0, "{framing:?} claimed bytes after the end: {}", what());
        }
        if n < read.len() {
            assert!(
                p.is_done(),
                "{framing:?} stopped short of the end: {}",
                what()
            );
        }
        claimed += n as u64;
        match framing {
            Framing::Empty => assert!(n == 0 && p.is_done(), "{}", what()),
            Framing::UntilClose => assert!(n == read.len() && !p.is_done(), "{}", what()),
            Framing::Length(len) => {
                assert_eq!(p.is_done(), claimed == len, "{}", what());
                assert!(claimed <= len, "{}", what());
            }
            Framing::Chunked => {}
        }
    }
    let total: u64 = reads.iter().map(|r| r.len() as u64).sum();
    match framing {
        Framing::Length(len) => assert_eq!(claimed, len.min(total), "{}", what()),
        Framing::Empty => assert!(claimed == 0 && p.is_done()),
        Framing::UntilClose => assert_eq!(claimed, total),
        Framing::Chunked => match chunked {
            Verdict::Ends(n) => assert!(claimed == n as u64 && p.is_done(), "{}", what()),
            Verdict::NeedsMore => assert!(claimed == total && !p.is_done(), "{}", what()),
            Verdict::Refused(_) => panic!("the reads were accepted: {}", what()),
        },
    }
}

/// The reference decoder's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reference {
    Ends(usize),
    NeedsMore,
    Invalid,
}

/// Where a chunked body (RFC 9112 §7.1) ends, read line by line the way a
/// strict client does, accepting a bare LF as a line end (§2.2). Lenient
/// inside extensions and trailer lines (any text), since only where the
/// body ends is judged.
fn reference(buf: &[u8]) -> Reference {
    let mut i = 0;
    loop {
        let (line, next) = match next_line(buf, i) {
            Ok(l) => l,
            Err(r) => return r,
        };
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return Reference::Invalid;
        }
        let rest = &line[digits..];
        let rest = rest.trim_ascii_start();
        if !rest.is_empty() && rest[0] != b';' {
            return Reference::Invalid;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16)
            .expect("16 hex digits fit");
        i = next;
        if size == 0 {
            loop {
                let (line, next) = match next_line(buf, i) {
                    Ok(l) => l,
                    Err(r) => return r,
                };
                if line.is_empty() {
                    return Reference::Ends(next);
                }
                i = next;
            }
        }
        let Some(end) = usize::try_from(size).ok().and_then(|s| i.checked_add(s)) else {
            return Reference::NeedsMore;
        };
        if end > buf.len() {
            return Reference::NeedsMore;
        }
        i = end;
        match &buf[i..] {
            [b'\r', b'\n', ..] => i += 2,
            [b'\n', ..] => i += 1,
            [] | [b'\r'] => return Reference::NeedsMore,
            _ => return Reference::Invalid,
        }
    }
}

/// The line starting at `i` (without its end) and where the next starts.
fn next_line(buf: &[u8], i: usize) -> Result<(&[u8], usize), Reference> {
    let Some(lf) = buf[i..].iter().position(|&b| b == b'\n') else {
        // No control byte may come, even before the line is complete.
        return Err(if buf[i..].iter().any(|&b| is_control(b) && b != b'\r') {
            Reference::Invalid
        } else {
            Reference::NeedsMore
        });
    };
    let raw = &buf[i..i + lf];
    let line = raw.strip_suffix(b"\r").unwrap_or(raw);
    if line.iter().any(|&b| is_control(b)) {
        return Err(Reference::Invalid);
    }
    Ok((line, i + lf + 1))
}

/// Bytes no chunk line may hold (RFC 9110 §5.5): controls but HT, and DEL.
fn is_control(b: u8) -> bool {
    b < 0x20 && b != b'\t' || b == 0x7f
}
