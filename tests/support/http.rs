//! HTTP/1.1 vocabulary shared by the mock backend and the raw client (header lookup, reason
//! phrases, chunked coding), and the headers lb-mio itself drops or sets.

use super::util::show;

/// `body` in chunked transfer coding with chunks of at most `chunk` bytes, then `0\r\n\r\n`.
pub fn chunk_encode(body: &[u8], chunk: usize) -> Vec<u8> {
    chunk_encode_sizes(body, &[chunk])
}

/// `body` in chunked transfer coding, the chunk sizes taken from `sizes` in turn (over again
/// from the first when they run out), then `0\r\n\r\n`.
pub fn chunk_encode_sizes(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    assert!(!sizes.is_empty(), "no chunk size");
    let mut out = Vec::with_capacity(body.len() + body.len() / 8 + 16);
    let mut rest = body;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (part, tail) = rest.split_at(size.clamp(1, rest.len()));
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
        rest = tail;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The RFC 9110 reason phrase of `status`: what the mock backend sends, and lb-mio with the
/// answers it makes itself. Any other status gets a phrase no client may rely on.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Whatever",
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), lowercase: lb-mio does not forward them (nor those
/// that `Connection` names), but for what an upgrade it relays needs.
pub const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

/// The headers lb-mio sets on each request it forwards, lowercase: `X-Forwarded-For` extends
/// the client's list, the others replace what the client sent.
pub const X_FORWARDED: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// The `User-Agent` of lb-mio's health probes.
pub const PROBE_USER_AGENT: &str = "lb-mio-health";

/// What a request and a response as received have in common: headers, the head as it came,
/// a body.
pub trait Message {
    /// In order, names as sent, values with surrounding spaces and tabs trimmed.
    fn headers(&self) -> &[(String, String)];
    /// The start line and header lines exactly as received, final CRLF included.
    fn head(&self) -> &[u8];
    /// The body, de-chunked when it came chunked.
    fn body(&self) -> &[u8];

    /// The first header with this name (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of headers with this name (case-insensitive), in order.
    fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    fn head_str(&self) -> String {
        show(self.head())
    }

    fn body_str(&self) -> String {
        show(self.body())
    }
}

/// `impl Message` for a struct with `headers`, `head` and `body` fields.
macro_rules! impl_message {
    ($type:ty) => {
        impl Message for $type {
            fn headers(&self) -> &[(String, String)] {
                &self.headers
            }

            fn head(&self) -> &[u8] {
                &self.head
            }

            fn body(&self) -> &[u8] {
                &self.body
            }
        }
    };
}
pub(super) use impl_message;

/// One header line (no CRLF) as (name as sent, value trimmed of spaces and tabs).
pub(super) fn parse_header_line(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(':')?;
    Some((
        name.to_string(),
        value.trim_matches([' ', '\t']).to_string(),
    ))
}

/// Whether a header `name` lists `token` (comma-separated, case-insensitive).
pub(super) fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}
