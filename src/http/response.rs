//! Response heads: parse what the backend sent, decide the framing and what happens to both
//! connections afterwards, and write the head the client gets (hop-by-hop headers replaced).

use super::body::Framing;
use super::head::{self, HeadError, HopHeaders};
use super::request::{Method, Request, MAX_HEADERS};
use super::rewrite::HeaderRules;
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
/// the headers in `added`.
pub fn parse(
    input: &[u8],
    max_bytes: usize,
    request: &Request,
    added: Added,
    out: &mut Buffer,
) -> Result<Option<Response>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    let head_len = match res.parse(input).map_err(head::from_httparse)? {
        httparse::Status::Partial if input.len() >= max_bytes => return Err(HeadError::TooLarge),
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) if n > max_bytes => return Err(HeadError::TooLarge),
        httparse::Status::Complete(n) => n,
    };
    let head = &input[..head_len];
    head::check_line_endings(head)?;
    let head = head::skip_empty_lines(head);
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
    write_client_head(head, res.headers, &hop, &response, request, added, out)?;
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
    added: Added,
    out: &mut Buffer,
) -> Result<(), HeadError> {
    head::put_all(out, &head[..head::first_line_len(head)])?;
    let switching = response.kind == Kind::Switch;
    for h in headers {
        if !added.replaces(h.name, response.kind) && !hop.is_hop_by_hop(h.name, switching) {
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
    if response.kind == Kind::Final {
        if let Some(server) = added.server {
            head::put_header(out, b"Server", server.as_bytes())?;
        }
        if let Some((header, name)) = added.backend {
            head::put_header(out, header.as_bytes(), name.as_bytes())?;
        }
        if let Some(cookie) = added.set_cookie {
            head::put_header(out, b"Set-Cookie", cookie)?;
        }
        if let Some(hsts) = added.hsts {
            head::put_header(out, b"Strict-Transport-Security", hsts.as_bytes())?;
        }
        if let Some(rules) = added.rules {
            rules.put(out)?;
        }
    }
    if let Some((header, id)) = added.request_id.filter(|_| response.kind != Kind::Interim) {
        head::put_header(out, header.as_bytes(), id)?;
    }
    head::put_all(out, b"\r\n")
}

/// Headers lb-mio adds to a final response.
#[derive(Debug, Default, Clone, Copy)]
pub struct Added<'a> {
    /// `(header, name)`: the header that names the backend, `X-Backend: <name>` by default
    /// (`expose_backend`).
    pub backend: Option<(&'a str, &'a str)>,
    /// `Set-Cookie: <value>` (sticky sessions).
    pub set_cookie: Option<&'a [u8]>,
    /// `Server: <value>` in place of the backend's (`server_header`).
    pub server: Option<&'a str>,
    /// `(header, id)`: the request's id, in place of any the backend sent (`request_id`); on
    /// the final response and a `101`, not on interim ones.
    pub request_id: Option<(&'a str, &'a [u8])>,
    /// `Strict-Transport-Security: <value>` in place of the backend's, over TLS (`[tls] hsts`).
    pub hsts: Option<&'a str>,
    /// The route's response header rules.
    pub rules: Option<&'a HeaderRules>,
}

impl<'a> Added<'a> {
    /// The backend's header `name` in a head of `kind` gives way to one lb-mio adds: a
    /// configured `Server` (the backend's would name its software), the request's id, or
    /// lb-mio's HSTS policy.
    fn replaces(&self, name: &str, kind: Kind) -> bool {
        let server = self.server.is_some() && name.eq_ignore_ascii_case("server");
        let id = self.request_id.filter(|_| kind != Kind::Interim);
        let hsts = self.hsts.is_some() && name.eq_ignore_ascii_case("strict-transport-security");
        let ruled = kind == Kind::Final && self.rules.is_some_and(|r| r.drops(name.as_bytes()));
        server || hsts || ruled || id.is_some_and(|(h, _)| name.eq_ignore_ascii_case(h))
    }

    pub fn backend(header_and_name: Option<(&'a str, &'a str)>) -> Added<'a> {
        Added {
            backend: header_and_name,
            ..Added::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{BufferPool, BUF_SIZE};
    use crate::http::request::{self, HeadLimits};
    use crate::http::testing::{head_end, show};
    use std::net::{IpAddr, Ipv4Addr};

    const MAX: usize = 1024;

    /// The `Request` the proxy keeps for these request head bytes.
    fn request(head: &[u8]) -> Request {
        let limits = HeadLimits {
            max_bytes: 1024,
            max_headers: 16,
        };
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut out = BufferPool::new(0).take();
        request::parse(head, limits, client, &mut out)
            .unwrap()
            .expect("complete request head")
    }

    fn run(
        req: &[u8],
        input: &[u8],
        backend: Option<&str>,
    ) -> (Result<Option<Response>, HeadError>, Vec<u8>) {
        let mut out = BufferPool::new(0).take();
        let result = parse(
            input,
            MAX,
            &request(req),
            Added::backend(backend.map(|name| ("X-Backend", name))),
            &mut out,
        );
        (result, out.data().to_vec())
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    const HEAD: &[u8] = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n";
    const GET10: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
    const GET10_KEEP: &[u8] = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";

    // ---- Decisions ------------------------------------------------------------------------

    /// (name, request, response, status, kind, framing, reusable, client_keep_alive)
    type Decision = (
        &'static str,
        &'static [u8],
        &'static [u8],
        u16,
        Kind,
        Framing,
        bool,
        bool,
    );

    const DECISIONS: &[Decision] = &[
        (
            "Content-Length",
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            200,
            Kind::Final,
            Framing::Length(5),
            true,
            true,
        ),
        (
            "Content-Length: 0",
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            200,
            Kind::Final,
            Framing::Length(0),
            true,
            true,
        ),
        (
            "chunked",
            GET,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            200,
            Kind::Final,
            Framing::Chunked,
            true,
            true,
        ),
        (
            "no framing: until close, nothing reused",
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            200,
            Kind::Final,
            Framing::UntilClose,
            false,
            false,
        ),
        (
            "HEAD response has no body whatever its Content-Length",
            HEAD,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            200,
            Kind::Final,
            Framing::Empty,
            true,
            true,
        ),
        (
            "HEAD response has no body whatever its Transfer-Encoding",
            HEAD,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            200,
            Kind::Final,
            Framing::Empty,
            true,
            true,
        ),
        (
            "HEAD response without framing is not close-delimited",
            HEAD,
            b"HTTP/1.1 200 OK\r\n\r\n",
            200,
            Kind::Final,
            Framing::Empty,
            true,
            true,
        ),
        (
            "204 has no body",
            GET,
            b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
            204,
            Kind::Final,
            Framing::Empty,
            true,
            true,
        ),
        (
            "304 has no body",
            GET,
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            304,
            Kind::Final,
            Framing::Empty,
            true,
            true,
        ),
        (
            "205 is framed as usual",
            GET,
            b"HTTP/1.1 205 Reset Content\r\nContent-Length: 0\r\n\r\n",
            205,
            Kind::Final,
            Framing::Length(0),
            true,
            true,
        ),
        (
            "100 Continue is interim",
            GET,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            100,
            Kind::Interim,
            Framing::Empty,
            false,
            true,
        ),
        (
            "103 Early Hints is interim",
            GET,
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
            103,
            Kind::Interim,
            Framing::Empty,
            false,
            true,
        ),
        (
            "101 after an upgrade request switches",
            UPGRADE,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            101,
            Kind::Switch,
            Framing::Empty,
            false,
            true,
        ),
        (
            "an upgrade request may get a normal response",
            UPGRADE,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
            200,
            Kind::Final,
            Framing::Length(2),
            true,
            true,
        ),
        (
            "backend closes: upstream not reused, client kept",
            GET,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            200,
            Kind::Final,
            Framing::Length(2),
            false,
            true,
        ),
        (
            "client closes: upstream still reusable",
            GET_CLOSE,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            200,
            Kind::Final,
            Framing::Length(2),
            true,
            false,
        ),
        (
            "HTTP/1.0 response without keep-alive is not reusable",
            GET,
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            200,
            Kind::Final,
            Framing::Length(2),
            false,
            true,
        ),
        (
            "HTTP/1.0 response with keep-alive is reusable",
            GET,
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
            200,
            Kind::Final,
            Framing::Length(2),
            true,
            true,
        ),
        (
            "HTTP/1.0 response with keep-alive and close",
            GET,
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok",
            200,
            Kind::Final,
            Framing::Length(2),
            false,
            true,
        ),
        (
            "HTTP/1.0 response without framing",
            GET,
            b"HTTP/1.0 200 OK\r\n\r\n",
            200,
            Kind::Final,
            Framing::UntilClose,
            false,
            false,
        ),
        (
            "HTTP/1.0 client closes by default",
            GET10,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            200,
            Kind::Final,
            Framing::Length(2),
            true,
            false,
        ),
        (
            "HTTP/1.0 client with keep-alive is kept",
            GET10_KEEP,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            200,
            Kind::Final,
            Framing::Length(2),
            true,
            true,
        ),
        (
            "HTTP/1.0 keep-alive client, close-delimited body",
            GET10_KEEP,
            b"HTTP/1.0 200 OK\r\n\r\n",
            200,
            Kind::Final,
            Framing::UntilClose,
            false,
            false,
        ),
        (
            "error statuses are final responses too",
            GET,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            503,
            Kind::Final,
            Framing::Length(0),
            true,
            true,
        ),
        (
            "empty reason phrase",
            GET,
            b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
            200,
            Kind::Final,
            Framing::Length(0),
            true,
            true,
        ),
        (
            "no reason phrase",
            GET,
            b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
            200,
            Kind::Final,
            Framing::Length(0),
            true,
            true,
        ),
    ];

    #[test]
    fn response_decisions() {
        let mut wrong = Vec::new();
        for &(name, req, input, status, kind, framing, reusable, keep) in DECISIONS {
            let want = Response {
                status,
                kind,
                framing,
                reusable,
                client_keep_alive: keep,
                head_len: head_end(input),
            };
            match run(req, input, None) {
                (Ok(Some(got)), out) if got == want && out.ends_with(b"\r\n\r\n") => {}
                (got, out) => wrong.push(format!("{name}: got {got:?}, wrote {:?}", show(&out))),
            }
        }
        assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    }

    // ---- What the client gets, byte for byte ---------------------------------------------

    /// (name, request, response, backend name, client head)
    type Forwarded = (
        &'static str,
        &'static [u8],
        &'static [u8],
        Option<&'static str>,
        &'static [u8],
    );

    const FORWARDED: &[Forwarded] = &[
        (
            "X-Backend when a name is given",
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Some("b1"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend: b1\r\n\r\n",
        ),
        (
            "no X-Backend without a name",
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            None,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
        ),
        (
            "end-to-end lines byte-exact, hop-by-hop and named headers dropped",
            GET,
            b"HTTP/1.1 200 Fine  Thanks\r\nserver:  x/1 \r\nConnection: keep-alive, X-Hop\r\n\
              Keep-Alive: timeout=5\r\nx-hop: 1\r\nSet-Cookie: a=1\r\nProxy-Connection: x\r\n\
              TE: trailers\r\nUpgrade: h2c\r\nSet-Cookie: b=2\r\nSet-Cookie: a=1\r\n\
              CONTENT-LENGTH:0\r\n\r\n",
            None,
            b"HTTP/1.1 200 Fine  Thanks\r\nserver:  x/1 \r\nSet-Cookie: a=1\r\n\
              Set-Cookie: b=2\r\nSet-Cookie: a=1\r\nCONTENT-LENGTH:0\r\n\r\n",
        ),
        (
            "the client will close: Connection: close before X-Backend",
            GET_CLOSE,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Some("b1"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nX-Backend: b1\r\n\r\n",
        ),
        (
            "close-delimited body: the client connection closes too",
            GET,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
            None,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
        ),
        (
            "backend Connection: close is not passed to a kept client",
            GET,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            None,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "kept HTTP/1.0 client is told keep-alive",
            GET10_KEEP,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Some("b"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\nX-Backend: b\r\n\r\n",
        ),
        (
            "HTTP/1.0 client without keep-alive is told close",
            GET10,
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            None,
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        (
            "101 keeps Upgrade, says Connection: upgrade, names no backend",
            UPGRADE,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: xyz=\r\n\r\n",
            Some("b1"),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: xyz=\r\n\
              Connection: upgrade\r\n\r\n",
        ),
        (
            "interim response gets no Connection and no X-Backend",
            GET_CLOSE,
            b"HTTP/1.1 100 Continue\r\nConnection: keep-alive\r\n\r\n",
            Some("b1"),
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ),
        (
            "HEAD response keeps its Content-Length",
            HEAD,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            None,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        ),
        (
            "empty lines before the status line are not forwarded",
            GET,
            b"\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            None,
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ),
    ];

    #[test]
    fn client_heads_are_exact() {
        let mut wrong = Vec::new();
        for &(name, req, input, backend, want) in FORWARDED {
            match run(req, input, backend) {
                (Ok(Some(r)), out) if out == want && r.head_len == head_end(input) => {}
                (got, out) => wrong.push(format!("{name}: got {got:?}, wrote {:?}", show(&out))),
            }
        }
        assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    }

    // ---- Refused heads ---------------------------------------------------------------------

    const BAD_NAME: HeadError = HeadError::Malformed("bad header name");
    const BAD_VALUE: HeadError = HeadError::Malformed("bad header value");
    const BAD_STATUS: HeadError = HeadError::Malformed("bad status");
    const BAD_VERSION: HeadError = HeadError::Malformed("bad version");

    const REFUSED: &[(&str, &[u8], &[u8], HeadError)] = &[
        (
            "101 without an upgrade request",
            GET,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            HeadError::Malformed("101 without an upgrade request"),
        ),
        (
            "101 to an HTTP/1.0 request",
            b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            HeadError::Malformed("101 without an upgrade request"),
        ),
        (
            "duplicate Content-Length",
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            HeadError::Malformed("duplicate Content-Length"),
        ),
        (
            "comma-joined Content-Length",
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2,2\r\n\r\n",
            HeadError::Malformed("bad Content-Length"),
        ),
        (
            "Content-Length with Transfer-Encoding",
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            HeadError::Malformed("Content-Length with Transfer-Encoding"),
        ),
        (
            "bad framing headers are refused even when the body is empty",
            HEAD,
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            HeadError::Malformed("bad Content-Length"),
        ),
        (
            "Transfer-Encoding not ending in chunked",
            GET,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            HeadError::Malformed("Transfer-Encoding does not end in chunked"),
        ),
        (
            "Transfer-Encoding with another coding",
            GET,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            HeadError::NotImplemented("transfer coding other than chunked"),
        ),
        (
            "Connection naming Content-Length",
            GET,
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok",
            HeadError::Malformed("Connection names an end-to-end header"),
        ),
        (
            "bare LF",
            GET,
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            HeadError::Malformed("bare LF"),
        ),
        (
            "obs-fold",
            GET,
            b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n",
            BAD_NAME,
        ),
        (
            "control character in a value",
            GET,
            b"HTTP/1.1 200 OK\r\nX-A: b\x00c\r\n\r\n",
            BAD_VALUE,
        ),
        (
            "space before the colon",
            GET,
            b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
            BAD_NAME,
        ),
        ("two-digit status", GET, b"HTTP/1.1 20 OK\r\n\r\n", BAD_STATUS),
        ("letters in status", GET, b"HTTP/1.1 2x0 OK\r\n\r\n", BAD_STATUS),
        ("HTTP/2", GET, b"HTTP/2 200 OK\r\n\r\n", BAD_VERSION),
        ("not HTTP", GET, b"SSH-2.0-OpenSSH_9.6\r\n\r\n", BAD_VERSION),
    ];

    #[test]
    fn refused_heads() {
        let mut wrong = Vec::new();
        for &(name, req, input, want) in REFUSED {
            let (result, out) = run(req, input, Some("b1"));
            if result != Err(want) || !out.is_empty() {
                wrong.push(format!("{name}: got {result:?}, wrote {:?}", show(&out)));
            }
        }
        assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    }

    #[test]
    fn incomplete_heads_wait() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        for len in 0..whole.len() {
            let (result, out) = run(GET, &whole[..len], Some("b1"));
            assert_eq!(result, Ok(None), "prefix of {len}");
            assert!(out.is_empty());
        }
        assert!(matches!(run(GET, whole, None).0, Ok(Some(_))));
    }

    // ---- Limits -----------------------------------------------------------------------------

    #[test]
    fn size_limits() {
        let req = request(GET);
        let at = |input: &[u8], max: usize| {
            let mut out = BufferPool::new(0).take();
            parse(input, max, &req, Added::default(), &mut out)
        };
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
        let n = head.len();
        let mut with_body = head.to_vec();
        with_body.extend_from_slice(b"abc");
        assert!(matches!(at(head, n), Ok(Some(r)) if r.head_len == n));
        assert!(matches!(at(&with_body, n), Ok(Some(r)) if r.head_len == n));
        assert_eq!(
            at(head, n - 1),
            Err(HeadError::TooLarge),
            "complete but over"
        );
        assert_eq!(at(&with_body, n - 1), Err(HeadError::TooLarge), "with body");
        assert_eq!(at(&head[..n - 1], n), Ok(None));
        assert_eq!(at(&head[..n - 1], n - 1), Err(HeadError::TooLarge));

        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut too_many = many.clone();
        many.extend_from_slice(b"\r\n");
        assert!(matches!(at(&many, 8192), Ok(Some(_))));
        too_many.extend_from_slice(b"X-last: v\r\n\r\n");
        assert_eq!(at(&too_many, 8192), Err(HeadError::TooLarge));
    }

    #[test]
    fn client_head_must_fit_in_out() {
        let req = request(GET);
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let want = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Backend: b1\r\n\r\n";
        let added = Added::backend(Some(("X-Backend", "b1")));
        for room in [0, 1, want.len() - 1] {
            let mut out = BufferPool::new(0).take();
            out.put(&vec![b'.'; BUF_SIZE - room]);
            let result = parse(input, MAX, &req, added, &mut out);
            assert_eq!(result, Err(HeadError::TooLarge), "room {room}");
        }
        let mut out = BufferPool::new(0).take();
        out.put(&vec![b'.'; BUF_SIZE - want.len()]);
        assert!(matches!(
            parse(input, MAX, &req, added, &mut out),
            Ok(Some(_))
        ));
        assert!(out.data().ends_with(want));
    }

    #[test]
    fn interim_then_final() {
        let req = request(GET);
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut out = BufferPool::new(0).take();
        let added = Added::backend(Some(("X-Backend", "b")));
        let first = parse(wire, MAX, &req, added, &mut out).unwrap().unwrap();
        assert_eq!(first.kind, Kind::Interim);
        let second = parse(&wire[first.head_len..], MAX, &req, added, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(second.kind, Kind::Final);
        assert_eq!(first.head_len + second.head_len, wire.len());
        assert_eq!(
            show(out.data()),
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Backend: b\r\n\r\n"
        );
    }

    #[test]
    fn the_backend_is_named_in_the_configured_header() {
        let req = request(GET);
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let added = Added::backend(Some(("X-Forwarded-Server", "b1")));
        let mut out = BufferPool::new(0).take();
        parse(input, MAX, &req, added, &mut out).unwrap().unwrap();
        assert_eq!(
            show(out.data()),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Forwarded-Server: b1\r\n\r\n"
        );
    }

    #[test]
    fn a_configured_server_header_replaces_the_backends() {
        let req = request(GET);
        let input = b"HTTP/1.1 200 OK\r\nserver: gunicorn/20.1\r\nContent-Length: 0\r\n\r\n";
        let added = Added {
            server: Some("edge"),
            ..Added::default()
        };
        let mut out = BufferPool::new(0).take();
        parse(input, MAX, &req, added, &mut out).unwrap().unwrap();
        assert_eq!(
            show(out.data()),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nServer: edge\r\n\r\n"
        );
        let (_, passed) = run(GET, input, None);
        assert_eq!(
            passed, input,
            "without server_header the backend's passes through"
        );
    }

    #[test]
    fn the_request_id_replaces_any_the_backend_sent() {
        let req = request(GET);
        let input = b"HTTP/1.1 200 OK\r\nx-request-id: other\r\nContent-Length: 0\r\n\r\n";
        let added = Added {
            request_id: Some(("X-Request-Id", b"abc")),
            ..Added::default()
        };
        let mut out = BufferPool::new(0).take();
        parse(input, MAX, &req, added, &mut out).unwrap().unwrap();
        assert_eq!(
            show(out.data()),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Request-Id: abc\r\n\r\n"
        );
    }
}
