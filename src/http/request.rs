//! Request heads: parse what the client sent, check it, and write the head the backend gets:
//! the request line and end-to-end headers byte-exact, hop-by-hop headers dropped, and the
//! `X-Forwarded-*` headers added.

use super::body::Framing;
use super::head::{self, HeadError, HopHeaders};
use crate::buffer::Buffer;
use std::io::Write;
use std::net::IpAddr;

/// Size limits for request heads.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// Most headers any limit may allow (the size of the parse array on the stack).
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// Safe to send twice (RFC 9110 §9.2.2).
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// What the proxy keeps of a request head once it has been forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub http10: bool,
    pub framing: Framing,
    /// The client may send another request on this connection afterwards.
    pub keep_alive: bool,
    /// The client asked to switch protocols (`Connection: upgrade` + `Upgrade`).
    pub upgrade: bool,
    /// Bytes of input the head took.
    pub head_len: usize,
}

/// Parses a request head at the start of `input`. `Ok(None)`: the head is not complete yet.
/// On success the head for the backend has been appended to `out`.
pub fn parse(
    input: &[u8],
    limits: HeadLimits,
    client: IpAddr,
    out: &mut Buffer,
) -> Result<Option<Request>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage[..limits.max_headers]);
    let head_len = match req.parse(input).map_err(head::from_httparse)? {
        httparse::Status::Partial if input.len() >= limits.max_bytes => {
            return Err(HeadError::TooLarge)
        }
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) if n > limits.max_bytes => return Err(HeadError::TooLarge),
        httparse::Status::Complete(n) => n,
    };
    let head = &input[..head_len];
    head::check_line_endings(head)?;
    let method_token = req.method.unwrap_or_default();
    if method_token == "CONNECT" {
        return Err(HeadError::NotImplemented("CONNECT"));
    }
    let http10 = req.version == Some(0);
    let hop = HopHeaders::read(req.headers)?;
    let host = single_host(req.headers, http10)?;
    if http10 && hop.chunked {
        return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    let request = Request {
        method: Method::from_token(method_token),
        http10,
        framing: hop.framing().unwrap_or(Framing::Empty),
        keep_alive: !hop.close && (!http10 || hop.keep_alive),
        upgrade: !http10 && hop.upgrade && hop.has_upgrade_header,
        head_len,
    };
    write_upstream_head(head, req.headers, &hop, &request, host, client, out)?;
    Ok(Some(request))
}

/// HTTP/1.1 requires exactly one `Host`; HTTP/1.0 allows none. Returns its value.
fn single_host<'a>(
    headers: &[httparse::Header<'a>],
    http10: bool,
) -> Result<Option<&'a [u8]>, HeadError> {
    let mut hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(HeadError::Malformed("duplicate Host")),
        (None, _) if !http10 => Err(HeadError::Malformed("missing Host")),
        (host, _) => Ok(host.map(|h| h.value)),
    }
}

/// Headers lb-mio sets itself; the client's copies are replaced (`X-Forwarded-For` extended).
fn is_forwarding_header(name: &str) -> bool {
    ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

fn write_upstream_head(
    head: &[u8],
    headers: &[httparse::Header],
    hop: &HopHeaders,
    request: &Request,
    host: Option<&[u8]>,
    client: IpAddr,
    out: &mut Buffer,
) -> Result<(), HeadError> {
    head::put_all(out, &head[..head::first_line_len(head)])?;
    for h in headers {
        if !hop.is_hop_by_hop(h.name, request.upgrade) && !is_forwarding_header(h.name) {
            head::copy_header_line(head, h, out)?;
        }
    }
    write_forwarded_for(headers, client, out)?;
    head::put_header(out, b"X-Forwarded-Proto", b"http")?;
    if let Some(host) = host {
        head::put_header(out, b"X-Forwarded-Host", host)?;
    }
    if request.upgrade {
        head::put_header(out, b"Connection", b"upgrade")?;
    } else if request.http10 {
        // Ask an HTTP/1.0 backend to keep the upstream connection open for reuse.
        head::put_header(out, b"Connection", b"keep-alive")?;
    }
    head::put_all(out, b"\r\n")
}

/// `X-Forwarded-For: <what the client sent>, <client address>` as one header.
fn write_forwarded_for(
    headers: &[httparse::Header],
    client: IpAddr,
    out: &mut Buffer,
) -> Result<(), HeadError> {
    head::put_all(out, b"X-Forwarded-For: ")?;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        head::put_all(out, h.value)?;
        head::put_all(out, b", ")?;
    }
    let mut text = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    // 48 bytes hold any IPv6 address in text form, so this write cannot fall short.
    let _ = write!(cursor, "{}", client.to_canonical());
    let len = cursor.position() as usize;
    head::put_all(out, &text[..len])?;
    head::put_all(out, b"\r\n")
}
