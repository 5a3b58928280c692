//! Response heads: parse what the backend sent, decide the framing and what happens to both
//! connections afterwards, and write the head the client gets (hop-by-hop headers replaced).

use super::body::Framing;
use super::head::{self, HeadError, HopHeaders};
use super::request::{Method, Request, MAX_HEADERS};
use crate::buffer::Buffer;

/// What kind of response head this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 1xx other than 101: relayed, and the final response is still to come.
    Interim,
    /// 101 Switching Protocols: both connections become a byte tunnel.
    Switch,
    /// The final response to the request.
    Final,
}

/// What the proxy keeps of a response head once it has been relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub kind: Kind,
    pub framing: Framing,
    /// The upstream connection may carry another request after this response.
    pub reusable: bool,
    /// The client connection stays open after this response.
    pub client_keep_alive: bool,
    pub head_len: usize,
}

/// Parses a response head at the start of `input` (at most `max_bytes` long) to `request`.
/// `Ok(None)`: not complete yet. On success the client's head has been appended to `out`, with
/// `X-Backend: <backend>` when a backend name is given.
pub fn parse(
    input: &[u8],
    max_bytes: usize,
    request: &Request,
    backend: Option<&str>,
    out: &mut Buffer,
) -> Result<Option<Response>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    let head_len = match res.parse(input).map_err(head::from_httparse)? {
        httparse::Status::Partial if input.len() >= max_bytes => return Err(HeadError::TooLarge),
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let head = &input[..head_len];
    head::check_line_endings(head)?;
    let status = res.code.unwrap_or_default();
    let kind = match status {
        101 if request.upgrade => Kind::Switch,
        101 => return Err(HeadError::Malformed("101 without an upgrade request")),
        100..=199 => Kind::Interim,
        _ => Kind::Final,
    };
    let hop = HopHeaders::read(res.headers)?;
    let framing = response_framing(request.method, status, &hop);
    let http10 = res.version == Some(0);
    let response = Response {
        status,
        kind,
        framing,
        reusable: kind == Kind::Final
            && framing != Framing::UntilClose
            && !hop.close
            && (!http10 || hop.keep_alive),
        client_keep_alive: request.keep_alive && framing != Framing::UntilClose,
        head_len,
    };
    write_client_head(head, res.headers, &hop, &response, request, backend, out)?;
    Ok(Some(response))
}

/// RFC 9112 §6.3: responses to HEAD, 1xx, 204 and 304 have no body whatever their headers say;
/// without framing headers the body runs until the backend closes.
fn response_framing(method: Method, status: u16, hop: &HopHeaders) -> Framing {
    if method == Method::Head || matches!(status, 100..=199 | 204 | 304) {
        return Framing::Empty;
    }
    hop.framing().unwrap_or(Framing::UntilClose)
}

fn write_client_head(
    head: &[u8],
    headers: &[httparse::Header],
    hop: &HopHeaders,
    response: &Response,
    request: &Request,
    backend: Option<&str>,
    out: &mut Buffer,
) -> Result<(), HeadError> {
    head::put_all(out, &head[..head::first_line_len(head)])?;
    let switching = response.kind == Kind::Switch;
    for h in headers {
        if !hop.is_hop_by_hop(h.name, switching) {
            head::copy_header_line(head, h, out)?;
        }
    }
    match response.kind {
        Kind::Switch => head::put_header(out, b"Connection", b"upgrade")?,
        Kind::Interim => {}
        Kind::Final if !response.client_keep_alive => {
            head::put_header(out, b"Connection", b"close")?
        }
        Kind::Final if request.http10 => head::put_header(out, b"Connection", b"keep-alive")?,
        Kind::Final => {}
    }
    if let (Some(name), Kind::Final) = (backend, response.kind) {
        head::put_header(out, b"X-Backend", name.as_bytes())?;
    }
    head::put_all(out, b"\r\n")
}
