//! Body framing: which bytes after a head belong to its body, so bodies stream through bounded
//! buffers without ever being held whole.

use super::chunked::{ChunkError, ChunkedDecoder, Scan};
use crate::pipe::SPLICE_MIN;

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the sender closes (responses only).
    UntilClose,
}

impl Framing {
    /// A body framed so is worth moving through a pipe: one of `SPLICE_MIN` bytes or more, or
    /// one whose length is not known (a chunked body's chunks are judged one by one).
    pub fn worth_splicing(self) -> bool {
        match self {
            Framing::Empty => false,
            Framing::Length(n) => n >= SPLICE_MIN,
            Framing::Chunked | Framing::UntilClose => true,
        }
    }
}

/// Progress through one body.
#[derive(Debug, Clone)]
pub enum Body {
    /// This many bytes are still to come.
    Length(u64),
    /// A chunked body, validated as it passes.
    Chunked(ChunkedDecoder),
    /// Bytes until the peer closes.
    UntilClose,
    /// The body is complete.
    Done,
}

/// Longest trailer section accepted after a chunked body.
const MAX_TRAILER_BYTES: usize = 8 * 1024;

impl Body {
    pub fn new(framing: Framing) -> Body {
        match framing {
            Framing::Empty | Framing::Length(0) => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(ChunkedDecoder::new(MAX_TRAILER_BYTES)),
            Framing::UntilClose => Body::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Body::Done)
    }

    /// How many bytes at the start of `input` belong to this body; moves to `Done` when the
    /// body ends among them. Bytes after the end belong to the next message.
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let (used, done) = match self {
            Body::Done => (0, true),
            Body::UntilClose => (input.len(), false),
            Body::Length(left) => {
                let used = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= used as u64;
                (used, *left == 0)
            }
            Body::Chunked(decoder) => {
                let Scan { used, done } = decoder.scan(input)?;
                (used, done)
            }
        };
        if done {
            *self = Body::Done;
        }
        Ok(used)
    }

    /// How many of the next bytes may pass without being scanned: the rest of a body whose
    /// end is a count or the close, or of a chunk's data when it is `SPLICE_MIN` or more (the
    /// size lines around chunks are always scanned, and a small chunk is cheaper copied along
    /// with them).
    pub fn splice_len(&self) -> u64 {
        match self {
            Body::Length(left) => *left,
            Body::UntilClose => u64::MAX,
            Body::Chunked(decoder) => Some(decoder.data_left())
                .filter(|&left| left >= SPLICE_MIN)
                .unwrap_or(0),
            Body::Done => 0,
        }
    }

    /// `n` bytes (at most `splice_len`) passed unscanned.
    pub fn pass(&mut self, n: u64) {
        match self {
            Body::Length(left) => {
                *left -= n.min(*left);
                if *left == 0 {
                    *self = Body::Done;
                }
            }
            Body::Chunked(decoder) => decoder.pass_data(n),
            Body::UntilClose | Body::Done => {}
        }
    }

    /// The sender closed: fine for a close-delimited body, a truncation for any other.
    pub fn close(&mut self) -> bool {
        match self {
            Body::UntilClose | Body::Done => {
                *self = Body::Done;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_body_stops_at_its_length() {
        let mut body = Body::new(Framing::Length(5));
        assert_eq!(body.scan(b"abc").unwrap(), 3);
        assert!(!body.is_done());
        assert_eq!(body.scan(b"deGET /").unwrap(), 2);
        assert!(body.is_done());
        assert_eq!(body.scan(b"more").unwrap(), 0);
    }

    #[test]
    fn empty_and_zero_length_bodies_are_done_at_once() {
        assert!(Body::new(Framing::Empty).is_done());
        assert!(Body::new(Framing::Length(0)).is_done());
    }

    #[test]
    fn chunked_body_ends_after_last_chunk() {
        let mut body = Body::new(Framing::Chunked);
        let wire = b"3\r\nabc\r\n0\r\n\r\nNEXT";
        assert_eq!(body.scan(wire).unwrap(), wire.len() - 4);
        assert!(body.is_done());
    }

    #[test]
    fn spliced_bytes_count_against_the_length() {
        let mut body = Body::new(Framing::Length(SPLICE_MIN + 2));
        assert_eq!(body.splice_len(), SPLICE_MIN + 2);
        body.pass(SPLICE_MIN);
        assert_eq!(body.scan(b"abNEXT").unwrap(), 2);
        assert!(body.is_done());
    }

    #[test]
    fn only_large_chunks_data_is_spliced_and_the_framing_is_still_checked() {
        let mut body = Body::new(Framing::Chunked);
        assert_eq!(body.scan(b"3\r\nab").unwrap(), 5);
        assert_eq!(body.splice_len(), 0, "a small chunk is scanned");
        let size = format!("c\r\n{:x}\r\n", SPLICE_MIN);
        assert_eq!(body.scan(size.as_bytes()).unwrap(), size.len());
        assert_eq!(body.splice_len(), SPLICE_MIN);
        body.pass(SPLICE_MIN - 1);
        assert_eq!(
            body.splice_len(),
            0,
            "one byte left: no longer worth a splice"
        );
        assert_eq!(body.scan(b"z").unwrap(), 1);
        assert!(body.scan(b"X\r\n").is_err(), "data must still end in CRLF");
    }

    #[test]
    fn close_ends_only_close_delimited_bodies() {
        let mut until_close = Body::new(Framing::UntilClose);
        assert_eq!(until_close.scan(b"anything").unwrap(), 8);
        assert!(until_close.close());
        assert!(until_close.is_done());
        assert!(!Body::new(Framing::Length(3)).close());
        assert!(!Body::new(Framing::Chunked).close());
    }
}
