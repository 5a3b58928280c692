//! Body framing: which bytes after a head belong to its body, so bodies stream through bounded
//! buffers without ever being held whole.

use super::chunked::{ChunkError, ChunkedDecoder, Scan};

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
    fn close_ends_only_close_delimited_bodies() {
        let mut until_close = Body::new(Framing::UntilClose);
        assert_eq!(until_close.scan(b"anything").unwrap(), 8);
        assert!(until_close.close());
        assert!(until_close.is_done());
        assert!(!Body::new(Framing::Length(3)).close());
        assert!(!Body::new(Framing::Chunked).close());
    }
}
