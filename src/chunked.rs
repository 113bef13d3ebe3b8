//! Finds the end of a chunked body (RFC 9112 §7.1) that is passed through
//! unchanged: the fast path forwards a backend's chunks byte for byte and
//! only needs to know where the message ends, so the connection can be
//! reused. Chunk extensions and trailer fields are skipped, never decoded.
//!
//! The same scanner follows client request bodies in the accept loop's
//! framing follower (`server/head_clock.rs`), ahead of hyper's decoder, so
//! one set of rules bounds chunked bodies in both directions; among them a
//! chunk size of at most [`MAX_SIZE_DIGITS`] hex digits.

/// Where the scanner is inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex chunk size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Right after the size's digits: a `;` or the line's end.
    SizeEnd {
        size: u64,
    },
    /// Blanks after the size: only a `;` may end them (RFC 9112 §7.1.1).
    SizeBlank {
        size: u64,
    },
    /// A chunk extension (ignored), up to the line's end.
    Ext {
        size: u64,
    },
    /// A `\r` ended the size line: only `\n` may follow.
    SizeCr {
        size: u64,
    },
    /// Inside the chunk's data.
    Data(u64),
    /// The `\r\n` after a chunk's data (`seen_cr`).
    DataEnd {
        seen_cr: bool,
    },
    /// At the start of a trailer line (`cr`: it began with `\r`, so it is
    /// the empty line that ends the body, if `\n` follows).
    TrailerLine {
        cr: bool,
    },
    /// Inside a trailer field line, up to its end (`colon`: the name has
    /// ended; `cr`: a `\r` came, only `\n` may follow).
    TrailerRest {
        colon: bool,
        cr: bool,
    },
    Done,
}

/// The most hex digits a chunk size may have (leading zeros count): 13,
/// sizes below 2^52 bytes (4 PiB), HAProxy's bound. No chunk anywhere near
/// that is ever forwarded within the balancer's deadlines; a longer size
/// line only makes a reader wait for bytes that never come (a 16-digit size
/// is 16 EiB).
pub const MAX_SIZE_DIGITS: u8 = 13;

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct Malformed;

/// Tracks a chunked body across reads.
#[derive(Debug, Clone)]
pub struct Chunked(State);

impl Default for Chunked {
    fn default() -> Self {
        Chunked(State::Size { size: 0, digits: 0 })
    }
}

/// A byte allowed inside a chunk extension or a field value: visible ASCII,
/// blanks and obs-text; never a control byte (RFC 9110 §5.5).
fn is_text(b: u8) -> bool {
    b == b'\t' || b >= 0x20 && b != 0x7f
}

/// After a size line's end: data, or the trailer section of the last chunk.
fn line_end(size: u64) -> State {
    if size == 0 {
        State::TrailerLine { cr: false }
    } else {
        State::Data(size)
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.0 == State::Done
    }

    /// Consumes bytes of the body; returns how many belong to it (all of
    /// `buf` unless the body ends inside it). Lines may end in `\r\n` or a
    /// bare `\n` (RFC 9112 §2.2 lets a recipient accept it), never in a bare
    /// `\r`, and hold no control bytes: whatever the balancer relays, a
    /// strict client frames the same way.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, Malformed> {
        self.scan(buf, false).map_err(|_| Malformed)
    }

    /// Like [`Chunked::feed`], but a refusal says which byte of `buf` broke
    /// the body (everything before it was accepted).
    pub fn feed_locating(&mut self, buf: &[u8]) -> Result<usize, usize> {
        self.scan(buf, false)
    }

    /// Like [`Chunked::feed`], but stops where the trailer section begins
    /// (after the last chunk's size line), so a caller can leave the
    /// trailer fields out.
    pub fn feed_to_trailers(&mut self, buf: &[u8]) -> Result<usize, Malformed> {
        self.scan(buf, true).map_err(|_| Malformed)
    }

    /// Inside the trailer section (the last chunk was seen).
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.0,
            State::TrailerLine { .. } | State::TrailerRest { .. }
        )
    }

    /// `Err(i)`: the byte at `i` is refused.
    fn scan(&mut self, buf: &[u8], stop_at_trailers: bool) -> Result<usize, usize> {
        let mut i = 0;
        while i < buf.len() {
            if stop_at_trailers && self.in_trailers() {
                return Ok(i);
            }
            let b = buf[i];
            self.0 = match self.0 {
                State::Size { size, digits } => match hex(b) {
                    Some(d) if digits < MAX_SIZE_DIGITS => State::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(i),
                    None if digits == 0 => return Err(i),
                    None => {
                        // Re-read this byte as the rest of the line.
                        self.0 = State::SizeEnd { size };
                        continue;
                    }
                },
                State::SizeEnd { size } | State::SizeBlank { size } if b == b' ' || b == b'\t' => {
                    State::SizeBlank { size }
                }
                State::SizeBlank { size } => match b {
                    b';' => State::Ext { size },
                    _ => return Err(i),
                },
                State::SizeEnd { size } => match b {
                    b';' => State::Ext { size },
                    b'\r' => State::SizeCr { size },
                    b'\n' => line_end(size),
                    _ => return Err(i),
                },
                State::Ext { size } => match b {
                    b'\r' => State::SizeCr { size },
                    b'\n' => line_end(size),
                    b if is_text(b) => State::Ext { size },
                    _ => return Err(i),
                },
                State::SizeCr { size } => match b {
                    b'\n' => line_end(size),
                    _ => return Err(i),
                },
                State::Data(left) => {
                    let take = (buf.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.0 = if left == 0 {
                        State::DataEnd { seen_cr: false }
                    } else {
                        State::Data(left)
                    };
                    continue;
                }
                State::DataEnd { seen_cr } => match b {
                    b'\r' if !seen_cr => State::DataEnd { seen_cr: true },
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return Err(i),
                },
                State::TrailerLine { cr } => match b {
                    b'\n' => {
                        self.0 = State::Done;
                        return Ok(i + 1);
                    }
                    _ if cr => return Err(i),
                    b'\r' => State::TrailerLine { cr: true },
                    // A field name's first byte; no folding, no empty name.
                    b if b.is_ascii_graphic() && b != b':' => State::TrailerRest {
                        colon: false,
                        cr: false,
                    },
                    _ => return Err(i),
                },
                State::TrailerRest { colon, cr } => match b {
                    b'\n' if colon => State::TrailerLine { cr: false },
                    _ if cr => return Err(i),
                    b'\r' if colon => State::TrailerRest { colon, cr: true },
                    b':' => State::TrailerRest { colon: true, cr },
                    b if colon && is_text(b) => State::TrailerRest { colon, cr },
                    b if b.is_ascii_graphic() => State::TrailerRest { colon, cr },
                    _ => return Err(i),
                },
                State::Done => return Ok(i),
            };
            i += 1;
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"5\r\nhello\r\n1a;ext=\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\n";

    #[test]
    fn finds_the_end_in_one_piece_and_byte_by_byte() {
        let mut c = Chunked::default();
        let mut buf = BODY.to_vec();
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(c.feed(&buf), Ok(BODY.len()));
        assert!(c.is_done());

        let mut c = Chunked::default();
        for (i, b) in BODY.iter().enumerate() {
            assert!(!c.is_done(), "done early at byte {i}");
            assert_eq!(c.feed(std::slice::from_ref(b)), Ok(1));
        }
        assert!(c.is_done());
    }

    #[test]
    fn an_empty_body_without_trailers_ends_at_the_blank_line() {
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"0\r\n\r\nGET"), Ok(5));
        assert!(c.is_done());
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn chunk_sizes_stop_at_thirteen_hex_digits() {
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"fffffffffffff\r\nab"), Ok(17), "2^52 - 1 is fine");
        let mut c = Chunked::default();
        assert_eq!(c.feed_locating(b"10000000000000\r\n"), Err(13));
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"0000000000005\r\nhello\r\n0\r\n\r\n"), Ok(27));
        assert!(c.is_done());
        let mut c = Chunked::default();
        assert_eq!(c.feed_locating(b"5\r\nhello\r\nzz"), Err(10));
    }

    #[test]
    fn bare_cr_control_bytes_and_junk_in_lines_are_refused() {
        for bad in [
            &b"5\rext\r\nhello\r\n"[..],
            b"5x\r\n",
            b"0 \r\n\r\n",
            b"5;a\x01\r\n",
            b"0\r\nX-Sum 1\r\n\r\n",
            b"0\r\n Folded: 1\r\n\r\n",
            b"0\r\nX: a\rb\r\n\r\n",
            b"0\r\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(Malformed), "{bad:?}");
        }
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"5 ; a=\"b c\"\r\nhello\r\n0\r\n\r\n"), Ok(25));
        assert!(c.is_done());
    }

    #[test]
    fn bare_lf_line_ends_are_tolerated() {
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"3\nabc\n0\n\n"), Ok(9));
        assert!(c.is_done());
    }
}
