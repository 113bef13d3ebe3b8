//! Finds the end of a chunked body (RFC 9112 §7.1) that is passed through
//! unchanged: the fast path forwards a backend's chunks byte for byte and
//! only needs to know where the message ends, so the connection can be
//! reused. Chunk extensions and trailer fields are skipped, never decoded.

/// Where the scanner is inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex chunk size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions (ignored) up to the line's `\n`.
    SizeLine {
        size: u64,
    },
    /// Inside the chunk's data.
    Data(u64),
    /// The `\r\n` after a chunk's data (`seen_cr`).
    DataEnd {
        seen_cr: bool,
    },
    /// At the start of a trailer line (`empty` until a byte other than
    /// `\r` arrives on it).
    TrailerLine {
        empty: bool,
    },
    /// Inside a non-empty trailer line, up to its `\n`.
    TrailerRest,
    Done,
}

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

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.0 == State::Done
    }

    /// Consumes bytes of the body; returns how many belong to it (all of
    /// `buf` unless the body ends inside it).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.0 = match self.0 {
                State::Size { size, digits } => match hex(b) {
                    // 16 hex digits overflow u64: nobody sends such a chunk.
                    Some(d) if digits < 15 => State::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(Malformed),
                    None if digits == 0 => return Err(Malformed),
                    None => {
                        let next = State::SizeLine { size };
                        // Re-read this byte as part of the line's tail.
                        self.0 = next;
                        continue;
                    }
                },
                State::SizeLine { size } => match b {
                    b'\n' if size == 0 => State::TrailerLine { empty: true },
                    b'\n' => State::Data(size),
                    b'\r' | b';' | b' ' | b'\t' | b'=' | b'"' => State::SizeLine { size },
                    b if b.is_ascii_graphic() => State::SizeLine { size },
                    _ => return Err(Malformed),
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
                    _ => return Err(Malformed),
                },
                State::TrailerLine { empty } => match b {
                    b'\r' if empty => State::TrailerLine { empty: true },
                    b'\n' if empty => {
                        self.0 = State::Done;
                        return Ok(i + 1);
                    }
                    b'\n' => State::TrailerLine { empty: true },
                    _ => State::TrailerRest,
                },
                State::TrailerRest => match b {
                    b'\n' => State::TrailerLine { empty: true },
                    _ => State::TrailerRest,
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
    fn bare_lf_line_ends_are_tolerated() {
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"3\nabc\n0\n\n"), Ok(9));
        assert!(c.is_done());
    }
}
