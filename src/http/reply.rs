//! The answers lb-mio gives itself when it cannot forward a request. Each is a complete
//! response that closes the connection, with a short body that names no backend.

use super::head::{self, HeadError};
use crate::buffer::Buffer;

/// Why lb-mio answered instead of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Malformed request, or conflicting framing headers.
    BadRequest,
    /// The request head did not arrive within the header timeout.
    RequestTimeout,
    /// The request head is over the size or header-count limit.
    HeaderTooLarge,
    /// A transfer coding other than chunked, or CONNECT.
    NotImplemented,
    /// The backend refused, reset, or sent something that is not HTTP, after any retries.
    BadGateway,
    /// No backend is up.
    ServiceUnavailable,
    /// The client, or all clients together, went over the configured rate.
    TooManyRequests,
    /// The backend did not answer in time.
    GatewayTimeout,
    /// The request line alone is over the head size limit.
    UriTooLong,
    /// Plain HTTP sent to a TLS listener (answered in clear, as nginx does).
    PlainHttpToTls,
    /// A plain listener sends the request to https (`[tls] redirect_http`); the `Location`
    /// header comes from the request.
    RedirectHttps,
    /// No route matched and there is no pool `default`.
    NotFound,
    /// The request body is over its pool's `max_body`.
    PayloadTooLarge,
}

impl Reply {
    /// Room a reply needs at most, with the longest `Server`, request id and `Location`
    /// headers.
    pub const MAX_LEN: usize = 512 + super::redirect::MAX_LOCATION;

    /// Every reply, in a fixed order (metrics count them by position).
    pub const ALL: [Reply; 13] = [
        Reply::BadRequest,
        Reply::RequestTimeout,
        Reply::HeaderTooLarge,
        Reply::NotImplemented,
        Reply::BadGateway,
        Reply::ServiceUnavailable,
        Reply::TooManyRequests,
        Reply::GatewayTimeout,
        Reply::UriTooLong,
        Reply::PlainHttpToTls,
        Reply::RedirectHttps,
        Reply::NotFound,
        Reply::PayloadTooLarge,
    ];

    pub fn status(self) -> u16 {
        match self {
            Reply::BadRequest => 400,
            Reply::RequestTimeout => 408,
            Reply::HeaderTooLarge => 431,
            Reply::NotImplemented => 501,
            Reply::BadGateway => 502,
            Reply::ServiceUnavailable => 503,
            Reply::TooManyRequests => 429,
            Reply::GatewayTimeout => 504,
            Reply::UriTooLong => 414,
            Reply::PlainHttpToTls => 400,
            Reply::RedirectHttps => 308,
            Reply::NotFound => 404,
            Reply::PayloadTooLarge => 413,
        }
    }

    /// The answer to a head lb-mio refuses.
    pub fn for_head(e: HeadError) -> Reply {
        match e {
            HeadError::Malformed(_) => Reply::BadRequest,
            HeadError::TooLarge => Reply::HeaderTooLarge,
            HeadError::UriTooLong => Reply::UriTooLong,
            HeadError::NotImplemented(_) => Reply::NotImplemented,
        }
    }

    /// A label for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Reply::BadRequest => "bad_request",
            Reply::RequestTimeout => "request_timeout",
            Reply::HeaderTooLarge => "header_too_large",
            Reply::NotImplemented => "not_implemented",
            Reply::BadGateway => "bad_gateway",
            Reply::ServiceUnavailable => "no_backend",
            Reply::TooManyRequests => "rate_limited",
            Reply::GatewayTimeout => "gateway_timeout",
            Reply::UriTooLong => "uri_too_long",
            Reply::PlainHttpToTls => "plain_http_to_tls",
            Reply::RedirectHttps => "redirect_https",
            Reply::NotFound => "no_route",
            Reply::PayloadTooLarge => "body_too_large",
        }
    }

    /// Appends the reply to `out` (empty, or with room for a reply: it is under 500 bytes),
    /// with `Server: <server>` after the status line when one is configured, and the request's
    /// id when it has one: `(header, id)`, then `extra` (whole header lines: a `Location`).
    pub fn write(
        self,
        server: Option<&str>,
        request_id: Option<(&str, &[u8])>,
        extra: &[u8],
        out: &mut Buffer,
    ) {
        write_response(self.bytes(), server, request_id, extra, out);
    }

    /// The whole response on the wire (a unit test checks each `Content-Length`).
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Reply::BadRequest => b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n",
            Reply::RequestTimeout => b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nrequest timeout\n",
            Reply::HeaderTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: 23\r\nConnection: close\r\n\r\nrequest head too large\n",
            Reply::NotImplemented => b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nnot implemented\n",
            Reply::BadGateway => b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad gateway\n",
            Reply::ServiceUnavailable => b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nContent-Length: 17\r\nConnection: close\r\n\r\nno backend is up\n",
            Reply::TooManyRequests => b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nContent-Length: 18\r\nConnection: close\r\n\r\ntoo many requests\n",
            Reply::GatewayTimeout => b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\ngateway timeout\n",
            Reply::UriTooLong => b"HTTP/1.1 414 URI Too Long\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nConnection: close\r\n\r\nrequest line too long\n",
            Reply::PlainHttpToTls => b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 44\r\nConnection: close\r\n\r\na plain HTTP request was sent to a TLS port\n",
            Reply::RedirectHttps => b"HTTP/1.1 308 Permanent Redirect\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: close\r\n\r\nredirected to https\n",
            Reply::NotFound => b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nno route\n",
            Reply::PayloadTooLarge => b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: 23\r\nConnection: close\r\n\r\nrequest body too large\n",
        }
    }
}

/// Appends the response `bytes` to `out` with `Server: <server>` after the status line when
/// one is configured, the request's id when it has one, then `extra` (whole header lines).
pub fn write_response(
    bytes: &[u8],
    server: Option<&str>,
    request_id: Option<(&str, &[u8])>,
    extra: &[u8],
    out: &mut Buffer,
) {
    let line = head::first_line_len(bytes);
    out.put(&bytes[..line]);
    if let Some(server) = server {
        let _ = head::put_header(out, b"Server", server.as_bytes());
    }
    if let Some((header, id)) = request_id {
        let _ = head::put_header(out, header.as_bytes(), id);
    }
    out.put(extra);
    out.put(&bytes[line..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_is_a_well_framed_response_with_its_status() {
        for reply in Reply::ALL {
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut res = httparse::Response::new(&mut headers);
            let bytes = reply.bytes();
            let head_len = match res.parse(bytes).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("{reply:?} head is incomplete"),
            };
            assert_eq!(res.code, Some(reply.status()));
            let length = res
                .headers
                .iter()
                .find(|h| h.name == "Content-Length")
                .unwrap();
            let length: usize = std::str::from_utf8(length.value).unwrap().parse().unwrap();
            assert_eq!(length, bytes.len() - head_len, "{reply:?} Content-Length");
        }
    }

    #[test]
    fn a_configured_server_header_follows_the_status_line() {
        let mut out = crate::buffer::BufferPool::new(0).take();
        Reply::BadGateway.write(Some("edge"), Some(("X-Request-Id", b"abc")), b"", &mut out);
        assert!(out.data().starts_with(
            b"HTTP/1.1 502 Bad Gateway\r\nServer: edge\r\nX-Request-Id: abc\r\nContent-Type"
        ));
        let mut plain = crate::buffer::BufferPool::new(0).take();
        Reply::BadGateway.write(None, None, b"", &mut plain);
        assert_eq!(plain.data(), Reply::BadGateway.bytes());
    }

    #[test]
    fn every_reply_fits_in_max_len_with_the_longest_added_headers() {
        let server = "s".repeat(128);
        let id = [b'i'; 128];
        let header = "h".repeat(64);
        for reply in Reply::ALL {
            let mut out = crate::buffer::BufferPool::new(0).take();
            let location = [b'l'; super::super::redirect::MAX_LOCATION];
            reply.write(Some(&server), Some((&header, &id)), &location, &mut out);
            assert!(
                out.len() <= Reply::MAX_LEN,
                "{reply:?}: {} bytes",
                out.len()
            );
            assert!(out
                .data()
                .ends_with(&reply.bytes()[reply.bytes().len() - 10..]));
        }
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let text = std::str::from_utf8(Reply::ServiceUnavailable.bytes()).unwrap();
        assert!(text.contains("\r\nRetry-After: 1\r\n"));
    }
}
