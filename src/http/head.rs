//! What request and response heads share: reading the framing and connection headers, telling
//! hop-by-hop headers apart, and copying header lines byte-exact into the outgoing head.

use super::body::Framing;
use crate::buffer::Buffer;
use httparse::Header;

/// Most headers a `Connection` header may name: more is treated as malformed.
const MAX_CONNECTION_TOKENS: usize = 16;

/// Headers `Connection` must not name: they frame or route the message for every hop.
const END_TO_END: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];

/// Why a head was refused; each maps to one status (see `reply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Syntax error, bad or conflicting framing headers, bare LF, control characters.
    Malformed(&'static str),
    /// Head larger than the limit or more headers than allowed.
    TooLarge,
    /// The request line alone is longer than the head limit (a target too long to parse).
    UriTooLong,
    /// Valid, but something lb-mio does not do (a transfer coding other than `chunked`, CONNECT).
    NotImplemented(&'static str),
}

impl HeadError {
    /// What was wrong, for a log line.
    pub fn why(self) -> &'static str {
        match self {
            HeadError::Malformed(why) | HeadError::NotImplemented(why) => why,
            HeadError::TooLarge => "head too large",
            HeadError::UriTooLong => "request line too long",
        }
    }
}

/// Headers that are hop-by-hop whatever `Connection` names (besides `Upgrade`, kept when
/// upgrading).
pub const HOP_BY_HOP: [&str; 4] = ["connection", "keep-alive", "proxy-connection", "te"];

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
            } else if END_TO_END.iter().any(|h| token.eq_ignore_ascii_case(h)) {
                // Dropping these would change how the next hop frames the message.
                return Err(HeadError::Malformed(
                    "Connection names an end-to-end header",
                ));
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
        if name.eq_ignore_ascii_case("upgrade") {
            return !keep_upgrade;
        }
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
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

/// The head without the empty lines httparse skips before the start line (RFC 9112 §2.2):
/// they are not part of the start line and are not forwarded.
pub fn skip_empty_lines(head: &[u8]) -> &[u8] {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    &head[start..]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{BufferPool, BUF_SIZE};

    /// What a row expects: a value, no value, or the refusal.
    type Outcome<T> = Result<Option<T>, HeadError>;

    fn header<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    #[test]
    fn list_items_table() {
        let rows: &[(&[u8], &[&[u8]])] = &[
            (b"", &[]),
            (b" ", &[]),
            (b",", &[]),
            (b" , ,\t,", &[]),
            (b"close", &[b"close"]),
            (b"  close\t", &[b"close"]),
            (b"a,b", &[b"a", b"b"]),
            (b"a, b ,\tc", &[b"a", b"b", b"c"]),
            (b",a,,b,", &[b"a", b"b"]),
            (b"a b, c", &[b"a b", b"c"]),
            (b"Keep-Alive, Upgrade", &[b"Keep-Alive", b"Upgrade"]),
            (b"x;q=1, y", &[b"x;q=1", b"y"]),
        ];
        for &(value, want) in rows {
            let got: Vec<&[u8]> = list_items(value).collect();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn line_endings_table() {
        let bare = Err(HeadError::Malformed("bare LF"));
        let rows: &[(&[u8], Result<(), HeadError>)] = &[
            (b"", Ok(())),
            (b"\r\n", Ok(())),
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", Ok(())),
            (b"a\rb", Ok(())), // bare CR is httparse's to refuse
            (b"\n", bare),
            (b"\nGET", bare),
            (b"GET / HTTP/1.1\n", bare),
            (b"GET / HTTP/1.1\r\nHost: h\n\r\n", bare),
            (b"GET / HTTP/1.1\r\nHost: h\r\n\n", bare),
            (b"a\r\r\n\n", bare),
            (b"a\n\r", bare),
        ];
        for &(head, want) in rows {
            assert_eq!(check_line_endings(head), want, "{head:?}");
        }
    }

    #[test]
    fn content_length_table() {
        let bad = Err(HeadError::Malformed("bad Content-Length"));
        let rows: &[(&[u8], Outcome<u64>)] = &[
            (b"0", Ok(Some(0))),
            (b"42", Ok(Some(42))),
            (b"  42\t", Ok(Some(42))),
            (b"000", Ok(Some(0))),
            (b"999999999999999999", Ok(Some(999_999_999_999_999_999))),
            (b"1000000000000000000", bad),
            (b"18446744073709551616", bad),
            (b"", bad),
            (b" ", bad),
            (b"+1", bad),
            (b"-1", bad),
            (b"1,1", bad),
            (b"1, 1", bad),
            (b"1 1", bad),
            (b"1.5", bad),
            (b"1e3", bad),
            (b"0x1", bad),
            (b"\"1\"", bad),
            (b"1\x00", bad),
        ];
        for &(value, want) in rows {
            let got =
                HopHeaders::read(&[header("content-length", value)]).map(|h| h.content_length);
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn framing_headers_table() {
        use HeadError::{Malformed, NotImplemented};
        let not_chunked = Err(Malformed("Transfer-Encoding does not end in chunked"));
        let rows: &[(&str, &[Header], Outcome<Framing>)] = &[
            ("none", &[], Ok(None)),
            (
                "unrelated",
                &[header("Content-Type", b"text/plain")],
                Ok(None),
            ),
            (
                "length",
                &[header("Content-Length", b"5")],
                Ok(Some(Framing::Length(5))),
            ),
            (
                "chunked",
                &[header("Transfer-Encoding", b"chunked")],
                Ok(Some(Framing::Chunked)),
            ),
            (
                "Chunked, any case",
                &[header("TRANSFER-ENCODING", b"ChUnKeD")],
                Ok(Some(Framing::Chunked)),
            ),
            (
                "duplicate length",
                &[
                    header("Content-Length", b"5"),
                    header("content-length", b"5"),
                ],
                Err(Malformed("duplicate Content-Length")),
            ),
            (
                "duplicate TE",
                &[
                    header("Transfer-Encoding", b"chunked"),
                    header("Transfer-Encoding", b"chunked"),
                ],
                Err(Malformed("duplicate Transfer-Encoding")),
            ),
            (
                "length and TE",
                &[
                    header("Content-Length", b"5"),
                    header("Transfer-Encoding", b"chunked"),
                ],
                Err(Malformed("Content-Length with Transfer-Encoding")),
            ),
            (
                "TE and length",
                &[
                    header("Transfer-Encoding", b"chunked"),
                    header("Content-Length", b"5"),
                ],
                Err(Malformed("Content-Length with Transfer-Encoding")),
            ),
            ("gzip", &[header("Transfer-Encoding", b"gzip")], not_chunked),
            (
                "chunked then gzip",
                &[header("Transfer-Encoding", b"chunked, gzip")],
                not_chunked,
            ),
            ("empty TE", &[header("Transfer-Encoding", b"")], not_chunked),
            (
                "gzip then chunked",
                &[header("Transfer-Encoding", b"gzip, chunked")],
                Err(NotImplemented("transfer coding other than chunked")),
            ),
            (
                "chunked with empty items",
                &[header("Transfer-Encoding", b" ,chunked, ")],
                Ok(Some(Framing::Chunked)),
            ),
        ];
        for &(name, headers, want) in rows {
            let got = HopHeaders::read(headers).map(|h| h.framing());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn connection_tokens_table() {
        // (Connection values, close, keep_alive, upgrade)
        let rows: &[(&[&[u8]], bool, bool, bool)] = &[
            (&[], false, false, false),
            (&[b"close"], true, false, false),
            (&[b"CLOSE"], true, false, false),
            (&[b"Keep-Alive"], false, true, false),
            (&[b"upgrade"], false, false, true),
            (&[b"keep-alive, Upgrade"], false, true, true),
            (&[b"keep-alive", b"close"], true, true, false),
            (&[b"closed, keep-alive-ish"], false, false, false),
        ];
        for &(values, close, keep_alive, upgrade) in rows {
            let headers: Vec<Header> = values.iter().map(|v| header("Connection", v)).collect();
            let hop = HopHeaders::read(&headers).unwrap();
            assert_eq!(
                (hop.close, hop.keep_alive, hop.upgrade),
                (close, keep_alive, upgrade),
                "{values:?}"
            );
            assert!(!hop.has_upgrade_header);
        }
        let hop = HopHeaders::read(&[header("upgrade", b"websocket")]).unwrap();
        assert!(hop.has_upgrade_header && !hop.upgrade);
    }

    #[test]
    fn connection_token_limits() {
        let sixteen = b"a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p";
        assert!(HopHeaders::read(&[header("Connection", sixteen)]).is_ok());
        // close, keep-alive and upgrade do not count against the limit.
        let with_known = b"a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,close,keep-alive,upgrade";
        assert!(HopHeaders::read(&[header("Connection", with_known)]).is_ok());
        let seventeen = b"a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q";
        assert_eq!(
            HopHeaders::read(&[header("Connection", seventeen)]).unwrap_err(),
            HeadError::Malformed("too many Connection tokens")
        );
        for named in [
            &b"Content-Length"[..],
            b"transfer-encoding",
            b"HOST",
            b"close, host",
        ] {
            assert_eq!(
                HopHeaders::read(&[header("Connection", named)]).unwrap_err(),
                HeadError::Malformed("Connection names an end-to-end header"),
                "{:?}",
                String::from_utf8_lossy(named)
            );
        }
    }

    #[test]
    fn hop_by_hop_table() {
        let headers = [
            header("Connection", b"close, X-Named"),
            header("connection", b"x-other"),
        ];
        let hop = HopHeaders::read(&headers).unwrap();
        // (name, keep_upgrade, hop-by-hop)
        let rows: &[(&str, bool, bool)] = &[
            ("Connection", false, true),
            ("CONNECTION", true, true),
            ("Keep-Alive", false, true),
            ("keep-alive", true, true),
            ("Proxy-Connection", false, true),
            ("TE", false, true),
            ("te", true, true),
            ("Upgrade", false, true),
            ("upgrade", true, false),
            ("X-Named", false, true),
            ("x-named", true, true),
            ("X-OTHER", false, true),
            ("X-Named-Not", false, false),
            ("X-Name", false, false),
            ("close", false, false),
            ("Transfer-Encoding", false, false),
            ("Trailer", false, false),
            ("Content-Length", false, false),
            ("Host", false, false),
            ("Proxy-Authorization", false, false),
            ("Tex", false, false),
        ];
        for &(name, keep_upgrade, want) in rows {
            assert_eq!(
                hop.is_hop_by_hop(name, keep_upgrade),
                want,
                "{name} keep_upgrade={keep_upgrade}"
            );
        }
        let plain = HopHeaders::read(&[]).unwrap();
        assert!(!plain.is_hop_by_hop("X-Named", false));
        assert!(plain.is_hop_by_hop("Connection", false));
    }

    #[test]
    fn first_line_and_empty_lines() {
        let rows: &[(&[u8], usize)] = &[
            (b"", 0),
            (b"abc", 3),
            (b"\r\n", 2),
            (b"GET / HTTP/1.1\r\nHost: h\r\n", 16),
            (b"a\nb", 2),
        ];
        for &(head, len) in rows {
            assert_eq!(first_line_len(head), len, "{head:?}");
        }
        let rows: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"\r\n", b""),
            (b"\r\n\r\nGET\r\n", b"GET\r\n"),
            (b"\nGET", b"GET"),
            (b"GET\r\n\r\n", b"GET\r\n\r\n"),
        ];
        for &(head, want) in rows {
            assert_eq!(skip_empty_lines(head), want, "{head:?}");
        }
    }

    #[test]
    fn header_lines_are_copied_exactly() {
        let head = b"GET / HTTP/1.1\r\nA:b\r\nX-Sp:   v  w \t\r\nEmpty:\r\nBlank:  \r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut storage);
        assert!(req.parse(head).unwrap().is_complete());
        let want: [&[u8]; 4] = [
            b"A:b\r\n",
            b"X-Sp:   v  w \t\r\n",
            b"Empty:\r\n",
            b"Blank:  \r\n",
        ];
        assert_eq!(req.headers.len(), want.len());
        for (h, want) in req.headers.iter().zip(want) {
            let mut out = BufferPool::new(0).take();
            copy_header_line(head, h, &mut out).unwrap();
            assert_eq!(out.data(), want, "{}", h.name);
        }
    }

    #[test]
    fn writing_needs_room_for_everything() {
        let mut out = BufferPool::new(0).take();
        put_header(&mut out, b"X-A", b"1").unwrap();
        assert_eq!(out.data(), b"X-A: 1\r\n");

        let mut full = BufferPool::new(0).take();
        full.put(&vec![0; BUF_SIZE - 3]);
        assert_eq!(put_all(&mut full, b"abc"), Ok(()));
        assert_eq!(put_all(&mut full, b""), Ok(()));
        assert_eq!(put_all(&mut full, b"d"), Err(HeadError::TooLarge));

        let mut almost = BufferPool::new(0).take();
        almost.put(&vec![0; BUF_SIZE - 7]);
        assert_eq!(
            put_header(&mut almost, b"X-A", b"1"),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn httparse_errors_map_to_ours() {
        use httparse::Error as E;
        assert_eq!(from_httparse(E::TooManyHeaders), HeadError::TooLarge);
        for e in [
            E::HeaderName,
            E::HeaderValue,
            E::NewLine,
            E::Status,
            E::Token,
            E::Version,
        ] {
            assert!(matches!(from_httparse(e), HeadError::Malformed(_)), "{e:?}");
        }
    }
}
