//! One request in flight and its backend: what it needs only while it is in flight (held in a
//! box a worker reuses, so an idle connection holds none of it), what its access line will
//! say, and the decisions about replaying it after its backend failed.

use crate::access_log::RequestLine;
use crate::backend::Lease;
use crate::balance::Tried;
use crate::buffer::Buffer;
use crate::http::body::Body;
use crate::http::request::{IdFrom, Request};
use crate::pipe::Pipe;
use crate::request_id::MAX_CLIENT_ID;
use std::io;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// Where the response of the exchange is.
#[derive(Debug)]
pub enum ResponseState {
    /// Waiting for (the rest of) a status line and headers.
    Head,
    /// Relaying the body.
    Body(Body),
    /// Complete.
    Done,
}

/// How a backend connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect(io::ErrorKind),
    ConnectTimeout,
    Closed,
    Reset(io::ErrorKind),
    /// The TLS handshake with the backend failed (the request was not sent).
    Tls(&'static str),
    /// No progress within `backend_ms`.
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Failure::Connect(kind) => write!(f, "connect: {kind}"),
            Failure::ConnectTimeout => write!(f, "connect timeout"),
            Failure::Closed => write!(f, "closed the connection before responding"),
            Failure::Reset(kind) => write!(f, "{kind} before responding"),
            Failure::Tls(why) => write!(f, "TLS handshake failed: {why}"),
            Failure::Timeout => write!(f, "no response in time"),
        }
    }
}

impl Failure {
    /// It counts against the backend (passive health, `errors`): any failure on a fresh
    /// connection, but on a reused idle one only a timeout (the backend may just have closed
    /// it while idle, which says nothing of its health).
    pub fn blames_backend(self, reused: bool) -> bool {
        !reused || self == Failure::Timeout
    }

    /// It failed while connecting (the termination code's `C`), not while waiting for an answer.
    pub fn connecting(self) -> bool {
        matches!(
            self,
            Failure::Connect(_) | Failure::ConnectTimeout | Failure::Tls(_)
        )
    }

    pub fn timed_out(self) -> bool {
        matches!(self, Failure::ConnectTimeout | Failure::Timeout)
    }
}

/// Why a failed request is not sent to a backend again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The backend did not answer in time: it may be working on the request.
    InProgress,
    Answered,
    TooLarge,
    NotIdempotent,
    NoRetriesLeft,
    Budget,
    /// No other backend is up.
    NoBackend,
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            GiveUp::InProgress => "no answer in time: it may be in progress",
            GiveUp::Answered => "part of a response arrived",
            GiveUp::TooLarge => "the request is larger than the replay buffer",
            GiveUp::NotIdempotent => "it was sent and its method is not idempotent",
            GiveUp::NoRetriesLeft => "no retries left",
            GiveUp::Budget => "the retry budget is spent",
            GiveUp::NoBackend => "no other backend is up",
        })
    }
}

/// What follows a backend connection's failure before any response byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A pooled connection failed: a fresh one to the same backend tells whether the backend
    /// closed it while idle or died. No retry is spent and nothing counts against the backend.
    Fresh,
    /// Another backend, if the budget allows.
    Retry,
    GiveUp(GiveUp),
}

/// What the access line says of a request, gathered as it goes (its text is in `Text`).
pub struct Record {
    /// The first byte of the head arrived (or, pipelined, the request before it ended).
    pub started: Instant,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The attempt under way began (a connect, or a pooled connection taken).
    pub attempt: Instant,
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub retries: u32,
}

/// The text of a request's access line and its id, copied out of the head. It sits beside the
/// exchange in the reused box and each request overwrites what it uses, so a request costs no
/// clearing of these 2 KiB.
pub struct Text {
    /// Filled only while the access log is on.
    pub line: RequestLine,
    id: [u8; MAX_CLIENT_ID],
    id_len: usize,
}

impl Text {
    const EMPTY: Text = Text {
        line: RequestLine::EMPTY,
        id: [0; MAX_CLIENT_ID],
        id_len: 0,
    };

    pub fn id(&self) -> Option<&[u8]> {
        (self.id_len > 0).then(|| &self.id[..self.id_len])
    }

    /// Keeps the request's id: the client's (`head` holds it) or the fresh one.
    pub fn set_id(&mut self, from: IdFrom, head: &[u8], fresh: &[u8]) {
        let id = match from {
            IdFrom::Off => &[][..],
            IdFrom::Client(span) => span.of(head),
            IdFrom::Fresh | IdFrom::Replaced => fresh,
        };
        self.id_len = id.len().min(MAX_CLIENT_ID);
        self.id[..self.id_len].copy_from_slice(&id[..self.id_len]);
    }
}

/// One request in flight.
pub struct Exchange {
    pub request: Request,
    pub req_body: Body,
    pub response: ResponseState,
    /// The backend, once admission chose one.
    pub lease: Option<Lease>,
    /// The backend connection (in the worker's upstream table), once there is one.
    pub upstream: Option<usize>,
    pub tried: Tried,
    /// `[lb] retries` when the request began; `record.retries` counts those spent.
    pub max_retries: u32,
    /// While the request can still be replayed, written bytes stay in `uout` and this counts
    /// them; afterwards written bytes are dropped at once and it stays 0.
    pub sent: usize,
    pub replayable: bool,
    /// Any byte of a response arrived from the backend.
    pub answered: bool,
    /// The backend closed its side of the connection.
    pub upstream_eof: bool,
    /// lb-mio closed its sending side of the backend connection (a tunnel the client ended).
    pub upstream_shut: bool,
    /// Bytes of PROXY protocol header at the front of `uout` (`send_proxy`): to a TLS backend
    /// they go in clear, before the handshake.
    pub proxy_len: usize,
    /// The final response allows reusing the upstream connection.
    pub reusable: bool,
    pub client_keep_alive: bool,
    pub status: u16,
    /// When the head was parsed: the backend's latency (for the metrics and `ewma`) runs from
    /// here, so a client slow to send its head cannot make a backend look slow.
    pub admitted: Instant,
    /// For a tunnel, from `admitted` to the switching response head: its latency in the
    /// metrics (a final response's runs to its last byte).
    pub took: Option<Duration>,
    /// What `hash` balances by (see `admission`).
    pub key: u64,
    /// The pool the route chose (by position in the snapshot's pools; `None` once a change
    /// removed it while the request was in flight).
    pub pool: Option<usize>,
    /// The route that matched, by position.
    pub route: Option<usize>,
    /// Each way's body is worth splicing (`Framing::worth_splicing`): request, response.
    pub splice: Ways<bool>,
    /// The pipe each way's spliced bytes sit in, while some do.
    pub pipes: Ways<Option<Pipe>>,
    pub record: Record,
}

/// Something for each way bytes go: the request's (client to backend) and the response's.
#[derive(Debug, Default)]
pub struct Ways<T> {
    pub request: T,
    pub response: T,
}

impl Exchange {
    /// A request whose head began to arrive at `started` and was parsed `now`.
    pub fn new(request: Request, retries: u32, started: Instant, now: Instant) -> Exchange {
        Exchange {
            request,
            req_body: Body::new(request.framing),
            response: ResponseState::Head,
            lease: None,
            upstream: None,
            tried: Tried::default(),
            max_retries: retries,
            sent: 0,
            replayable: true,
            answered: false,
            upstream_eof: false,
            upstream_shut: false,
            proxy_len: 0,
            reusable: false,
            client_keep_alive: request.keep_alive,
            status: 0,
            admitted: now,
            took: None,
            key: 0,
            pool: None,
            route: None,
            splice: Ways {
                request: request.framing.worth_splicing(),
                response: false,
            },
            pipes: Ways::default(),
            record: Record {
                started,
                bytes_in: request.head_len as u64,
                bytes_out: 0,
                attempt: now,
                connect: None,
                first_byte: None,
                retries: 0,
            },
        }
    }

    pub fn lease(&self) -> &Lease {
        self.lease
            .as_ref()
            .expect("an exchange talks to a backend only once admitted")
    }

    /// Some of the response went to the client already: no other answer can follow.
    pub fn response_started(&self) -> bool {
        !matches!(self.response, ResponseState::Head)
    }

    /// Why this request cannot go to a backend again, if it cannot: sending it twice could do
    /// harm, or part of it is gone from the buffer, or part of a response arrived.
    pub fn not_replayable(&self) -> Option<GiveUp> {
        if self.answered {
            Some(GiveUp::Answered)
        } else if !self.replayable {
            Some(GiveUp::TooLarge)
        } else if self.sent > 0 && !self.request.method.is_idempotent() {
            Some(GiveUp::NotIdempotent)
        } else {
            None
        }
    }

    /// What follows `failure` of a backend connection (`reused`: one taken from the pool of
    /// idle upstream connections). A timeout is never retried: the backend may be working on
    /// the request, and a retry would double the wait and the work.
    pub fn after_failure(&self, failure: Failure, reused: bool) -> Next {
        let stop = match failure {
            Failure::Timeout => Some(GiveUp::InProgress),
            _ => self.not_replayable(),
        };
        match stop {
            None if reused => Next::Fresh,
            Some(why) => Next::GiveUp(why),
            None if self.record.retries >= self.max_retries => Next::GiveUp(GiveUp::NoRetriesLeft),
            None => Next::Retry,
        }
    }

    /// Stops keeping written request bytes for a replay (the response began, or room is
    /// needed).
    pub fn give_up_replay(&mut self, uout: &mut Buffer) {
        uout.consume(self.sent);
        self.sent = 0;
        self.replayable = false;
    }
}

/// A worker's exchange records, reused: a connection takes one when a request starts and gives
/// it back when the request ends, so the steady state allocates nothing and an idle connection
/// holds only a `None`.
#[derive(Default)]
pub struct Exchanges {
    free: Vec<Held>,
}

/// An exchange (always `Some` while held) and its text, in a box that is reused.
pub struct Held(Box<Slot>);

struct Slot {
    exchange: Option<Exchange>,
    text: Text,
}

/// Free records kept for reuse.
const KEEP: usize = 1024;

impl Exchanges {
    pub fn start(&mut self, exchange: Exchange) -> Held {
        let mut held = self.free.pop().unwrap_or_else(|| {
            Held(Box::new(Slot {
                exchange: None,
                text: Text::EMPTY,
            }))
        });
        held.0.exchange = Some(exchange);
        held.0.text.id_len = 0;
        held.0.text.line.clear();
        held
    }

    /// Ends the exchange (its lease with it) and keeps the box.
    pub fn end(&mut self, mut held: Held) {
        held.0.exchange = None;
        if self.free.len() < KEEP {
            self.free.push(held);
        }
    }

    /// Frees all but `keep` of the free records (a burst is over).
    pub fn shrink(&mut self, keep: usize) {
        self.free.truncate(keep);
    }
}

impl Held {
    pub fn text(&self) -> &Text {
        &self.0.text
    }

    pub fn text_mut(&mut self) -> &mut Text {
        &mut self.0.text
    }

    /// The exchange to change and its text to read, at once.
    pub fn parts(&mut self) -> (&mut Exchange, &Text) {
        let slot = &mut *self.0;
        let exchange = slot.exchange.as_mut().expect("held exchanges are Some");
        (exchange, &slot.text)
    }
}

impl Deref for Held {
    type Target = Exchange;
    fn deref(&self) -> &Exchange {
        self.0.exchange.as_ref().expect("held exchanges are Some")
    }
}

impl DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Exchange {
        self.0.exchange.as_mut().expect("held exchanges are Some")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::Framing;
    use crate::http::request::{Method, Span};

    fn exchange(method: Method) -> Exchange {
        let request = Request {
            method,
            http10: false,
            framing: Framing::Empty,
            keep_alive: true,
            upgrade: false,
            head_len: 40,
            sticky: None,
            id: IdFrom::Off,
            hash_source: None,
        };
        Exchange::new(request, 2, Instant::now(), Instant::now())
    }

    const REFUSED: Failure = Failure::Connect(io::ErrorKind::ConnectionRefused);
    const RESET: Failure = Failure::Reset(io::ErrorKind::ConnectionReset);

    #[test]
    fn a_failure_before_sending_is_retried_whatever_the_method() {
        let post = exchange(Method::Post);
        assert_eq!(post.after_failure(REFUSED, false), Next::Retry);
    }

    #[test]
    fn a_sent_request_is_retried_only_when_idempotent() {
        let mut get = exchange(Method::Get);
        get.sent = 40;
        assert_eq!(get.after_failure(RESET, false), Next::Retry);
        let mut post = exchange(Method::Post);
        post.sent = 40;
        assert_eq!(
            post.after_failure(RESET, false),
            Next::GiveUp(GiveUp::NotIdempotent)
        );
        // Even on a pooled connection: the backend may have seen it.
        assert_eq!(
            post.after_failure(Failure::Closed, true),
            Next::GiveUp(GiveUp::NotIdempotent)
        );
    }

    #[test]
    fn a_pooled_connection_that_fails_is_tried_fresh_first() {
        let get = exchange(Method::Get);
        assert_eq!(get.after_failure(Failure::Closed, true), Next::Fresh);
    }

    #[test]
    fn timeouts_are_never_retried() {
        let get = exchange(Method::Get);
        for reused in [false, true] {
            assert_eq!(
                get.after_failure(Failure::Timeout, reused),
                Next::GiveUp(GiveUp::InProgress)
            );
        }
    }

    #[test]
    fn nothing_is_replayed_after_a_response_began_or_the_buffer_moved_on() {
        let mut answered = exchange(Method::Get);
        answered.answered = true;
        assert_eq!(
            answered.after_failure(RESET, false),
            Next::GiveUp(GiveUp::Answered)
        );
        let mut large = exchange(Method::Put);
        large.replayable = false;
        assert_eq!(
            large.after_failure(RESET, false),
            Next::GiveUp(GiveUp::TooLarge)
        );
    }

    #[test]
    fn a_reused_connection_that_fails_blames_the_backend_only_by_timing_out() {
        assert!(RESET.blames_backend(false));
        assert!(!RESET.blames_backend(true));
        assert!(!Failure::Closed.blames_backend(true));
        assert!(Failure::Timeout.blames_backend(true));
    }

    #[test]
    fn retries_run_out() {
        let mut get = exchange(Method::Get);
        get.record.retries = get.max_retries;
        assert_eq!(
            get.after_failure(REFUSED, false),
            Next::GiveUp(GiveUp::NoRetriesLeft)
        );
    }

    #[test]
    fn records_are_reused_and_release_their_contents() {
        let mut exchanges = Exchanges::default();
        let held = exchanges.start(exchange(Method::Get));
        let first = &*held as *const Exchange;
        exchanges.end(held);
        let again = exchanges.start(exchange(Method::Post));
        assert_eq!(&*again as *const Exchange, first, "the same box");
        assert_eq!(again.request.method, Method::Post);
    }

    #[test]
    fn the_text_keeps_the_clients_id_or_the_fresh_one() {
        let mut held = Exchanges::default().start(exchange(Method::Get));
        let text = held.text_mut();
        let head = b"GET / HTTP/1.1\r\nX-Request-Id: abc\r\n\r\n";
        text.set_id(IdFrom::Client(Span { at: 30, len: 3 }), head, b"fresh");
        assert_eq!(text.id(), Some(&b"abc"[..]));
        text.set_id(IdFrom::Replaced, head, b"fresh");
        assert_eq!(text.id(), Some(&b"fresh"[..]));
        text.set_id(IdFrom::Off, head, b"fresh");
        assert_eq!(text.id(), None);
    }

    #[test]
    fn a_reused_record_starts_without_the_last_requests_text() {
        let mut exchanges = Exchanges::default();
        let mut held = exchanges.start(exchange(Method::Get));
        held.text_mut().set_id(IdFrom::Fresh, b"", b"old-id");
        exchanges.end(held);
        let again = exchanges.start(exchange(Method::Get));
        assert_eq!(again.text().id(), None);
    }
}
