//! What request and response heads share: reading the framing and connection headers, telling
//! hop-by-hop headers apart, and copying header lines byte-exact into the outgoing head.

use super::body::Framing;
use crate::buffer::Buffer;
use httparse::Header;

/// Most headers a `Connection` header may name: more is treated as malformed.
const MAX_CONNECTION_TOKENS: usize = 16;

/// Why a head was refused; each maps to one status (see `reply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Syntax error, bad or conflicting framing headers, bare LF, control characters.
    Malformed(&'static str),
    /// Head larger than the limit or more headers than allowed.
    TooLarge,
    /// Valid, but something lb-mio does not do (a transfer coding other than `chunked`, CONNECT).
    NotImplemented(&'static str),
}

/// The facts of a head's connection-level headers (`Connection`, framing, `Upgrade`).
#[derive(Debug, Default)]
pub struct HopHeaders<'a> {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Other headers named by `Connection`: hop-by-hop, never forwarded.
    named: [&'a [u8]; MAX_CONNECTION_TOKENS],
    named_len: usize,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub has_upgrade_header: bool,
}

impl<'a> HopHeaders<'a> {
    /// Reads the connection and framing headers, refusing duplicates and conflicts that would
    /// let two parties disagree on where a message ends.
    pub fn read(headers: &[Header<'a>]) -> Result<HopHeaders<'a>, HeadError> {
        let mut hop = HopHeaders::default();
        let mut seen_te = false;
        for h in headers {
            if h.name.eq_ignore_ascii_case("connection") {
                hop.read_connection(h.value)?;
            } else if h.name.eq_ignore_ascii_case("content-length") {
                if hop.content_length.is_some() {
                    return Err(HeadError::Malformed("duplicate Content-Length"));
                }
                hop.content_length = Some(parse_content_length(h.value)?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                if seen_te {
                    return Err(HeadError::Malformed("duplicate Transfer-Encoding"));
                }
                seen_te = true;
                check_transfer_encoding(h.value)?;
                hop.chunked = true;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                hop.has_upgrade_header = true;
            }
        }
        if seen_te && hop.content_length.is_some() {
            return Err(HeadError::Malformed(
                "Content-Length with Transfer-Encoding",
            ));
        }
        Ok(hop)
    }

    fn read_connection(&mut self, value: &'a [u8]) -> Result<(), HeadError> {
        for token in list_items(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if self.named_len < MAX_CONNECTION_TOKENS {
                self.named[self.named_len] = token;
                self.named_len += 1;
            } else {
                return Err(HeadError::Malformed("too many Connection tokens"));
            }
        }
        Ok(())
    }

    /// The body framing these headers give, `None` meaning no framing header at all.
    pub fn framing(&self) -> Option<Framing> {
        match (self.chunked, self.content_length) {
            (true, _) => Some(Framing::Chunked),
            (false, Some(n)) => Some(Framing::Length(n)),
            (false, None) => None,
        }
    }

    /// Whether a header is hop-by-hop: it describes this connection and is never forwarded.
    /// `Upgrade` is forwarded only when `keep_upgrade` (an upgrade is under way).
    pub fn is_hop_by_hop(&self, name: &str, keep_upgrade: bool) -> bool {
        const HOP: [&str; 4] = ["connection", "keep-alive", "proxy-connection", "te"];
        if name.eq_ignore_ascii_case("upgrade") {
            return !keep_upgrade;
        }
        HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || self.named[..self.named_len]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// The comma-separated items of a header value, trimmed, empty ones skipped.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|item| !item.is_empty())
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `Content-Length`: ASCII digits only (no sign, no list), at most 18 of them.
fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("bad Content-Length"));
    }
    Ok(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `Transfer-Encoding`: `chunked` alone is supported; a list must at least end in it.
fn check_transfer_encoding(value: &[u8]) -> Result<(), HeadError> {
    let last = list_items(value).last();
    if !last.is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked")) {
        return Err(HeadError::Malformed(
            "Transfer-Encoding does not end in chunked",
        ));
    }
    if list_items(value).count() > 1 {
        return Err(HeadError::NotImplemented(
            "transfer coding other than chunked",
        ));
    }
    Ok(())
}

/// Refuses a head with a bare LF line ending (httparse accepts them; a backend may not agree
/// where lines end, which is how requests get smuggled).
pub fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    let bare_lf = head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
    if bare_lf {
        return Err(HeadError::Malformed("bare LF"));
    }
    Ok(())
}

/// Where a head's first line ends, CRLF included.
pub fn first_line_len(head: &[u8]) -> usize {
    head.iter()
        .position(|&b| b == b'\n')
        .map_or(head.len(), |i| i + 1)
}

/// Copies one header line exactly as received (name, spacing, value, CRLF).
pub fn copy_header_line(head: &[u8], header: &Header, out: &mut Buffer) -> Result<(), HeadError> {
    let start = header.name.as_ptr() as usize - head.as_ptr() as usize;
    let value_end = header.value.as_ptr() as usize - head.as_ptr() as usize + header.value.len();
    let end = value_end + first_line_len(&head[value_end..]);
    put_all(out, &head[start..end])
}

/// Appends all of `bytes` to `out` or fails: the outgoing head must fit whole.
pub fn put_all(out: &mut Buffer, bytes: &[u8]) -> Result<(), HeadError> {
    if out.put(bytes) == bytes.len() {
        Ok(())
    } else {
        Err(HeadError::TooLarge)
    }
}

/// Appends `name: value\r\n`.
pub fn put_header(out: &mut Buffer, name: &[u8], value: &[u8]) -> Result<(), HeadError> {
    for part in [name, b": ", value, b"\r\n"] {
        put_all(out, part)?;
    }
    Ok(())
}

/// Maps httparse's errors onto ours.
pub fn from_httparse(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        httparse::Error::HeaderName => HeadError::Malformed("bad header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("bad header value"),
        httparse::Error::NewLine => HeadError::Malformed("bad line ending"),
        httparse::Error::Status => HeadError::Malformed("bad status"),
        httparse::Error::Token => HeadError::Malformed("bad token"),
        httparse::Error::Version => HeadError::Malformed("bad version"),
    }
}
