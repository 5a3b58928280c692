//! How a request (or a connection that never got to one) ended: which side ended it, the
//! reply lb-mio sends if any, the metric it counts under, its log line and its termination
//! code. `Conn::end` is the one place that acts on it.
//!
//! Termination codes follow HAProxy's, so an operator's habits carry over: the first letter
//! says who ended it, the second where the request was.
//!
//! | first | who | second | where |
//! | --- | --- | --- | --- |
//! | `-` | nobody: it completed | `R` | reading the request head (or PROXY header) |
//! | `C` | the client closed or broke the connection | `C` | choosing or connecting to a backend |
//! | `c` | the client was too slow (timeout) | `H` | waiting for the response head |
//! | `P` | lb-mio refused it (bad input, a limit, a policy) | `D` | moving a body |
//! | `S` | the backend failed or sent something bad | `T` | tunnelling after `101` |
//! | `s` | the backend was too slow (timeout) | `-` | completed |
//! | `K` | lb-mio stopped before it finished | | |
//! | `L` | lb-mio answered by design (a redirect to https, a route's answer) | | |

use super::exchange::{Failure, GiveUp, Held};
use crate::access_log::{Entry, RequestLine};
use crate::http::chunked::ChunkError;
use crate::http::head::HeadError;
use crate::http::reply::Reply;
use crate::tls::TlsFailure;
use log::{debug, info, warn};
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

/// Why a request or connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The response went out whole, or a tunnel closed.
    Completed,
    /// Nothing was in progress: an idle keep-alive connection closed or timed out, or a closing
    /// connection finished lingering. No line.
    Idle,
    // The client.
    /// The request head is malformed, too large, or asks for what lb-mio does not do.
    BadHead(HeadError),
    BadBody(ChunkError),
    HeadTimeout,
    /// The request body stalled for `backend_ms`.
    BodyTimeout,
    /// The client closed or reset the connection mid-request.
    ClientGone,
    /// Response bytes waited for `backend_ms` in a socket the client does not read.
    ClientStoppedReading,
    /// A tunnel carried nothing either way for `idle_ms`.
    TunnelTimeout,
    /// A TLS handshake, or a record after it, failed.
    Tls(TlsFailure),
    /// A TLS handshake did not finish within `header_ms`.
    HandshakeTimeout,
    /// Plain HTTP came to a TLS listener.
    PlainHttpToTls,
    /// A plain listener sends every request to https (`[tls] redirect_http`).
    RedirectHttps,
    /// A route answered itself (a redirect or a direct answer): the route, by position.
    Routed(usize),
    // lb-mio's own limits and policy.
    RateLimited,
    BadProxyHeader(&'static str),
    ProxyTimeout,
    /// Over `[limits] client_connections`, closed at accept.
    OverClientConnections,
    /// lb-mio stopped before the request finished (`drain_timeout_s` ran out).
    Stopped,
    /// No route matched and there is no pool `default`.
    NoRoute,
    /// The request body is over its pool's `max_body`.
    BodyTooLarge,
    // The backend.
    NoBackend,
    /// The backend failed before answering, and the request is not sent again.
    BackendFailed(Failure, GiveUp),
    BadResponse(HeadError),
    BadResponseBody(ChunkError),
    /// The backend closed inside a response head.
    ClosedInHead,
    /// The backend closed or broke the connection after part of the response went out.
    BackendCut(Option<io::ErrorKind>),
}

/// The first letter of a termination code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Nobody,
    Client,
    ClientTimeout,
    Policy,
    Backend,
    BackendTimeout,
    Stopped,
    /// lb-mio answered itself, by design.
    Local,
}

/// The second letter: where the request was when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Head,
    Connect,
    ResponseHead,
    Body,
    Tunnel,
    Done,
}

impl Cause {
    pub fn by(self) -> By {
        match self {
            Cause::Completed | Cause::Idle => By::Nobody,
            Cause::ClientGone | Cause::Tls(_) => By::Client,
            Cause::HandshakeTimeout
            | Cause::HeadTimeout
            | Cause::BodyTimeout
            | Cause::ClientStoppedReading
            | Cause::TunnelTimeout
            | Cause::ProxyTimeout => By::ClientTimeout,
            Cause::BadHead(_)
            | Cause::BadBody(_)
            | Cause::RateLimited
            | Cause::BadProxyHeader(_)
            | Cause::PlainHttpToTls
            | Cause::NoRoute
            | Cause::BodyTooLarge
            | Cause::OverClientConnections => By::Policy,
            Cause::RedirectHttps | Cause::Routed(_) => By::Local,
            Cause::Stopped => By::Stopped,
            Cause::BackendFailed(failure, _) if failure.timed_out() => By::BackendTimeout,
            Cause::NoBackend
            | Cause::BackendFailed(..)
            | Cause::BadResponse(_)
            | Cause::BadResponseBody(_)
            | Cause::ClosedInHead
            | Cause::BackendCut(_) => By::Backend,
        }
    }

    /// Where the request was, when the cause itself says so.
    pub fn at(self) -> Option<At> {
        match self {
            Cause::Completed => Some(At::Done),
            Cause::NoBackend => Some(At::Connect),
            Cause::BackendFailed(failure, _) if failure.connecting() => Some(At::Connect),
            Cause::BadHead(_) | Cause::HeadTimeout | Cause::RateLimited => Some(At::Head),
            Cause::BadProxyHeader(_) => Some(At::Head),
            Cause::ProxyTimeout | Cause::OverClientConnections => Some(At::Head),
            Cause::Tls(TlsFailure::Handshake(_)) | Cause::HandshakeTimeout => Some(At::Head),
            Cause::PlainHttpToTls | Cause::RedirectHttps => Some(At::Head),
            Cause::Routed(_) | Cause::NoRoute => Some(At::Head),
            _ => None,
        }
    }

    /// lb-mio's answer, when no response has begun.
    pub fn reply(self) -> Option<Reply> {
        Some(match self {
            Cause::BadHead(e) => Reply::for_head(e),
            Cause::BadBody(_) => Reply::BadRequest,
            Cause::HeadTimeout | Cause::BodyTimeout => Reply::RequestTimeout,
            Cause::RateLimited => Reply::TooManyRequests,
            Cause::PlainHttpToTls => Reply::PlainHttpToTls,
            Cause::RedirectHttps => Reply::RedirectHttps,
            Cause::NoRoute => Reply::NotFound,
            Cause::BodyTooLarge => Reply::PayloadTooLarge,
            Cause::NoBackend => Reply::ServiceUnavailable,
            Cause::BackendFailed(failure, _) if failure.timed_out() => Reply::GatewayTimeout,
            Cause::BackendFailed(..) | Cause::BadResponse(_) | Cause::ClosedInHead => {
                Reply::BadGateway
            }
            _ => return None,
        })
    }

    /// Ends the connection at once, without flushing or lingering: the client is gone, will
    /// not read, or is a balancer an answer would not help.
    pub fn closes_at_once(self) -> bool {
        matches!(
            self,
            Cause::Idle
                | Cause::ClientGone
                | Cause::ClientStoppedReading
                | Cause::TunnelTimeout
                | Cause::BadProxyHeader(_)
                | Cause::ProxyTimeout
                | Cause::OverClientConnections
                | Cause::Tls(_)
                | Cause::HandshakeTimeout
        )
    }

    /// A TLS handshake failed (`lbmio_tls_handshakes_total{result="failed"}`).
    pub fn failed_handshake(self) -> bool {
        matches!(
            self,
            Cause::Tls(TlsFailure::Handshake(_)) | Cause::HandshakeTimeout | Cause::PlainHttpToTls
        )
    }

    /// The `reason` label of `lbmio_closed_total`, for connections closed without an answer
    /// for a reason an operator must see.
    pub fn closed_label(self) -> Option<&'static str> {
        match self {
            Cause::BadProxyHeader(_) => Some("bad_proxy_header"),
            Cause::ProxyTimeout => Some("proxy_timeout"),
            Cause::OverClientConnections => Some("client_connections"),
            Cause::Tls(TlsFailure::Handshake(_)) => Some("tls_handshake"),
            Cause::Tls(TlsFailure::Record(_)) => Some("tls_error"),
            Cause::HandshakeTimeout => Some("tls_handshake_timeout"),
            _ => None,
        }
    }

    /// The log line, by who ended it: the client's doings at info (debug for the common
    /// ones), the backend's at warn. Per-attempt failures are logged where they happen.
    pub fn log(self, peer: SocketAddr, backend: Option<&str>) {
        let backend = backend.unwrap_or("-");
        match self {
            Cause::Completed | Cause::Idle => {}
            Cause::BadHead(e) => info!("{peer}: rejected request: {}", e.why()),
            Cause::BadBody(e) => info!("{peer}: rejected request body: {e}"),
            Cause::HeadTimeout => debug!("{peer}: timed out while reading a request head"),
            Cause::BodyTimeout => info!("{peer}: request body stalled: timed out"),
            Cause::ClientGone => debug!("{peer}: client closed the connection mid-request"),
            Cause::ClientStoppedReading => {
                info!("{peer}: client stopped reading the response: closed")
            }
            Cause::TunnelTimeout => debug!("{peer}: tunnel idle: closed"),
            Cause::Tls(failure) => info!("{peer}: {failure}"),
            Cause::HandshakeTimeout => info!("{peer}: TLS handshake timed out"),
            Cause::PlainHttpToTls => info!("{peer}: plain HTTP sent to a TLS port: 400"),
            Cause::RedirectHttps | Cause::Routed(_) => {}
            Cause::NoRoute => info!("{peer}: no route matched and there is no pool default: 404"),
            Cause::BodyTooLarge => info!("{peer}: request body over its pool's max_body: 413"),
            Cause::RateLimited => info!("{peer}: rate limited"),
            Cause::BadProxyHeader(why) => info!("{peer}: bad PROXY protocol header: {why}"),
            Cause::ProxyTimeout => info!("{peer}: no PROXY protocol header in time: closed"),
            Cause::OverClientConnections => {
                info!("{peer}: over [limits] client_connections: closed")
            }
            Cause::Stopped => info!("{peer}: request cut short: lb-mio stopped"),
            Cause::NoBackend => warn!("{peer}: no backend is up"),
            Cause::BackendFailed(_, why) => warn!("{peer}: not retried: {why}"),
            Cause::BadResponse(e) => warn!("{peer}: bad response from {backend}: {}", e.why()),
            Cause::BadResponseBody(e) => {
                warn!("{peer}: backend {backend} sent a bad chunked body: {e}")
            }
            Cause::ClosedInHead => warn!("{peer}: backend {backend} closed inside a response head"),
            Cause::BackendCut(None) => {
                warn!("{peer}: backend {backend} closed inside a response body")
            }
            Cause::BackendCut(Some(kind)) => {
                warn!("{peer}: backend {backend} connection broke mid-response: {kind}")
            }
        }
    }
}

impl By {
    fn letter(self) -> u8 {
        match self {
            By::Nobody => b'-',
            By::Client => b'C',
            By::ClientTimeout => b'c',
            By::Policy => b'P',
            By::Backend => b'S',
            By::BackendTimeout => b's',
            By::Stopped => b'K',
            By::Local => b'L',
        }
    }
}

impl At {
    fn letter(self) -> u8 {
        match self {
            At::Head => b'R',
            At::Connect => b'C',
            At::ResponseHead => b'H',
            At::Body => b'D',
            At::Tunnel => b'T',
            At::Done => b'-',
        }
    }
}

/// How a request ended, for its access line.
pub struct Outcome {
    pub code: [u8; 2],
    /// The status of lb-mio's own reply, if it sent one.
    pub reply: Option<u16>,
    /// Its length.
    pub sent: u64,
    pub now: Instant,
}

impl Outcome {
    /// The line of a request that got as far as an exchange.
    pub fn of_exchange<'a>(&self, client: SocketAddr, held: &'a Held) -> Entry<'a> {
        let (ex, record, text) = (&**held, &held.record, held.text());
        Entry {
            client,
            line: &text.line,
            status: self.reply.or((ex.status != 0).then_some(ex.status)),
            backend: ex.lease.as_ref().map(|l| l.backend().name.as_str()),
            bytes_in: record.bytes_in,
            bytes_out: record.bytes_out + self.sent,
            total: Some(self.now - record.started),
            connect: record.connect,
            first_byte: record.first_byte,
            retries: record.retries,
            code: self.code,
            request_id: text.id(),
            tls: None,
        }
    }

    /// The line of a head refused before an exchange began (`bytes_in` of it arrived; `head`
    /// is when the first did and the id it was given), or of a connection that ended before
    /// any request (`head` is `None`; `bytes_in` is what it sent, a PROXY header say).
    pub fn before_exchange<'a>(
        &self,
        client: SocketAddr,
        line: &'a RequestLine,
        bytes_in: usize,
        head: Option<(Instant, Option<&'a [u8]>)>,
    ) -> Entry<'a> {
        Entry {
            client,
            line,
            status: self.reply,
            backend: None,
            bytes_in: bytes_in as u64,
            bytes_out: self.sent,
            total: head.map(|(started, _)| self.now - started),
            connect: None,
            first_byte: None,
            retries: 0,
            code: self.code,
            request_id: head.and_then(|(_, id)| id),
            tls: None,
        }
    }
}

/// The two-letter termination code of `cause` at `at`.
pub fn code(cause: Cause, at: At) -> [u8; 2] {
    [cause.by().letter(), cause.at().unwrap_or(at).letter()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_codes() {
        let refused = Failure::Connect(io::ErrorKind::ConnectionRefused);
        let cases = [
            (Cause::Completed, At::Body, "--", None),
            (
                Cause::BadHead(HeadError::Malformed("x")),
                At::Head,
                "PR",
                Some(400),
            ),
            (
                Cause::BadHead(HeadError::TooLarge),
                At::Head,
                "PR",
                Some(431),
            ),
            (
                Cause::BadHead(HeadError::UriTooLong),
                At::Head,
                "PR",
                Some(414),
            ),
            (
                Cause::BadHead(HeadError::NotImplemented("x")),
                At::Head,
                "PR",
                Some(501),
            ),
            (Cause::HeadTimeout, At::Head, "cR", Some(408)),
            (Cause::BodyTimeout, At::Body, "cD", Some(408)),
            (Cause::RateLimited, At::Head, "PR", Some(429)),
            (Cause::NoBackend, At::Head, "SC", Some(503)),
            (
                Cause::BackendFailed(refused, GiveUp::NoRetriesLeft),
                At::Head,
                "SC",
                Some(502),
            ),
            (
                Cause::BackendFailed(Failure::ConnectTimeout, GiveUp::NoRetriesLeft),
                At::Connect,
                "sC",
                Some(504),
            ),
            (
                Cause::BackendFailed(Failure::Timeout, GiveUp::InProgress),
                At::ResponseHead,
                "sH",
                Some(504),
            ),
            (
                Cause::BadResponse(HeadError::Malformed("x")),
                At::ResponseHead,
                "SH",
                Some(502),
            ),
            (Cause::ClientGone, At::Body, "CD", None),
            (Cause::ClientStoppedReading, At::Body, "cD", None),
            (Cause::TunnelTimeout, At::Tunnel, "cT", None),
            (Cause::BackendCut(None), At::Body, "SD", None),
            (Cause::BadProxyHeader("x"), At::Head, "PR", None),
            (Cause::OverClientConnections, At::Done, "PR", None),
            (Cause::Tls(TlsFailure::Handshake("x")), At::Head, "CR", None),
            (Cause::Tls(TlsFailure::Record("x")), At::Body, "CD", None),
            (Cause::HandshakeTimeout, At::Head, "cR", None),
            (Cause::PlainHttpToTls, At::Head, "PR", Some(400)),
            (Cause::RedirectHttps, At::Head, "LR", Some(308)),
        ];
        for (cause, at, want, status) in cases {
            let got = code(cause, at);
            assert_eq!(std::str::from_utf8(&got).unwrap(), want, "{cause:?}");
            assert_eq!(cause.reply().map(Reply::status), status, "{cause:?}");
        }
    }

    #[test]
    fn connections_closed_without_an_answer_have_a_label_of_their_own() {
        assert_eq!(
            Cause::BadProxyHeader("x").closed_label(),
            Some("bad_proxy_header")
        );
        assert_eq!(Cause::BadProxyHeader("x").reply(), None);
        assert_eq!(Cause::RateLimited.closed_label(), None);
        for cause in [
            Cause::BadProxyHeader("x"),
            Cause::ProxyTimeout,
            Cause::OverClientConnections,
            Cause::Tls(TlsFailure::Handshake("x")),
            Cause::Tls(TlsFailure::Record("x")),
            Cause::HandshakeTimeout,
        ] {
            let label = cause.closed_label().unwrap();
            assert!(crate::metrics::CLOSED_REASONS.contains(&label), "{label}");
        }
    }
}
