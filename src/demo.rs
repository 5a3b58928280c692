//! The built-in test backend: `lb-mio --demo`, `examples/backend.rs` and the benchmarks'
//! "direct to backend" baseline.
//!
//! Each backend is one thread running one mio event loop. Sockets are registered edge-triggered
//! for reading and writing once, so the loop never re-registers: on every event a connection
//! answers what it has, writes until the socket is full and reads until the socket is empty.
//! Answering a request copies a response built at start into the connection's output buffer,
//! so the steady state allocates nothing.

use crate::accept::{self, Next};
use crate::buffer::{Buffer, BufferPool, Io};
use crate::http::body::{Body, Framing};
use crate::http::head::HopHeaders;
use crate::http::request::MAX_HEADERS;
use crate::listen;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

/// Token of the listening socket; connections use their slab key.
const LISTENER: Token = Token(usize::MAX);
/// Free buffers kept for reuse by new connections.
const POOL_KEEP: usize = 256;

/// A running demo backend; `addr()` tells where it listens.
pub struct DemoBackend {
    name: String,
    addr: SocketAddr,
}

impl DemoBackend {
    /// Binds `addr` (port 0 allowed) as the balancer binds its listeners and serves on a new
    /// thread named after `name` until the process exits.
    pub fn spawn(name: &str, addr: SocketAddr) -> io::Result<DemoBackend> {
        // Dual-stack on `[::]`, as a lone `listen` address of the balancer is.
        let listener = listen::bind(addr, false).map_err(io::Error::other)?;
        let addr = listener.local_addr()?;
        let responses = Responses::new(name);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if let Err(e) = serve(listener, &responses) {
                    log::error!("demo backend on {addr} stopped: {e}");
                }
            })?;
        Ok(DemoBackend {
            name: name.to_owned(),
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The event loop: runs until polling itself fails.
fn serve(mut listener: TcpListener, responses: &Responses) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns = Slab::new();
    let mut pool = BufferPool::new(POOL_KEEP);
    // Accepting is paused until then (out of file descriptors); the poll wakes up for it.
    let mut paused: Option<Instant> = None;
    loop {
        let timeout = paused.map(|until| until.saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        let mut listener_ready = false;
        for event in events.iter() {
            match event.token() {
                LISTENER => listener_ready = true,
                Token(key) => on_ready(key, &mut conns, &mut pool, responses),
            }
        }
        // A pause that ended accepts what queued meanwhile: its edge has passed.
        if paused.map_or(listener_ready, |until| Instant::now() >= until) {
            paused = accept_all(&listener, &poll, &mut conns, &mut pool);
        }
    }
}

/// Accepts until the backlog is empty (with edge triggering, a connection left in it would get
/// no event of its own) or until accepting must pause: then returns when it may resume.
fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    conns: &mut Slab<DemoConn>,
    pool: &mut BufferPool,
) -> Option<Instant> {
    loop {
        let socket = match listener.accept() {
            Ok((socket, _)) => socket,
            Err(e) => match accept::after_error(&e, Instant::now()) {
                Next::Retry => continue,
                Next::Wait => return None,
                Next::PauseUntil(until) => return Some(until),
            },
        };
        if let Err(e) = add_conn(socket, poll, conns, pool) {
            log::debug!("demo backend: dropping new connection: {e}");
        }
    }
}

fn add_conn(
    mut socket: TcpStream,
    poll: &Poll,
    conns: &mut Slab<DemoConn>,
    pool: &mut BufferPool,
) -> io::Result<()> {
    // Responses are small and each one is complete: send it now, not after the next ACK.
    socket.set_nodelay(true)?;
    let entry = conns.vacant_entry();
    // Both interests once and for all: a connection never re-registers.
    let interest = Interest::READABLE | Interest::WRITABLE;
    poll.registry()
        .register(&mut socket, Token(entry.key()), interest)?;
    entry.insert(DemoConn::new(socket, pool));
    Ok(())
}

fn on_ready(key: usize, conns: &mut Slab<DemoConn>, pool: &mut BufferPool, responses: &Responses) {
    // An event queued for a connection closed earlier in the same batch finds no entry, or a
    // new connection in its slot, which then just finds nothing to do.
    let Some(conn) = conns.get_mut(key) else {
        return;
    };
    match conn.on_ready(responses) {
        Ok(true) => {}
        Ok(false) => conns.remove(key).close(pool),
        Err(e) => {
            log::debug!("demo backend: connection error: {e}");
            conns.remove(key).close(pool);
        }
    }
}

/// Where a connection is in its request stream.
enum DemoPhase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Discarding a request body; `then` is the answer once it has all been read.
    Body { body: Body, then: DemoAnswer },
    /// The last response is queued; the write side closes once it is written.
    Closing,
    /// The write side is closed. Input is read and dropped until the client closes too:
    /// closing a socket with unread input resets the connection, and a reset can destroy
    /// responses the client has not read yet. (With no timers here, a client that never
    /// closes keeps its slot.)
    Draining,
}

struct DemoConn {
    socket: TcpStream,
    input: Buffer,
    output: Buffer,
    state: DemoPhase,
}

impl DemoConn {
    fn new(socket: TcpStream, pool: &mut BufferPool) -> DemoConn {
        DemoConn {
            socket,
            input: pool.take(),
            output: pool.take(),
            state: DemoPhase::Head,
        }
    }

    /// Drops the socket (which also removes it from the poll) and returns the buffers.
    fn close(self, pool: &mut BufferPool) {
        pool.give(self.input);
        pool.give(self.output);
    }

    /// Makes all the progress the socket allows. `Ok(false)`: the connection is finished.
    fn on_ready(&mut self, responses: &Responses) -> io::Result<bool> {
        loop {
            let wants_input = self.answer(responses);
            if !self.flush()? {
                // The socket is full; its writable edge brings us back.
                return Ok(true);
            }
            if matches!(self.state, DemoPhase::Closing) {
                self.socket.shutdown(Shutdown::Write)?;
                self.state = DemoPhase::Draining;
            }
            if !wants_input {
                // `answer` stopped for room in `output`, which is empty now.
                continue;
            }
            match self.input.read_from(&mut self.socket)? {
                Io::Moved(_) => {}
                // Read until empty: edge triggering reports new input only.
                Io::Blocked => return Ok(true),
                Io::Closed => return Ok(false),
            }
        }
    }

    /// Answers the complete requests in `input`, in order, while `output` has room for another
    /// response. Returns whether it stopped for lack of input (rather than of room).
    fn answer(&mut self, responses: &Responses) -> bool {
        while self.output.spare().len() >= responses.max_len {
            match self.next_request() {
                Ok(Some(answer)) => self.respond(answer, responses),
                Ok(None) => return true,
                Err(Malformed) => self.respond(DemoAnswer::BAD_REQUEST, responses),
            }
        }
        false
    }

    /// Consumes input up to the end of the next request: `Ok(None)` when that needs more input.
    fn next_request(&mut self) -> Result<Option<DemoAnswer>, Malformed> {
        loop {
            match &mut self.state {
                DemoPhase::Head => {
                    let Some(head) = parse_head(self.input.data())? else {
                        // A head that fills the whole buffer is too large to ever complete.
                        return if self.input.is_full() {
                            Err(Malformed)
                        } else {
                            Ok(None)
                        };
                    };
                    self.input.consume(head.len);
                    self.state = DemoPhase::Body {
                        body: Body::new(head.framing),
                        then: head.answer,
                    };
                }
                DemoPhase::Body { body, then } => {
                    let used = body.scan(self.input.data()).map_err(|_| Malformed)?;
                    self.input.consume(used);
                    return Ok(body.is_done().then_some(*then));
                }
                DemoPhase::Closing | DemoPhase::Draining => {
                    // Nothing after the last response gets an answer.
                    self.input.consume(self.input.len());
                    return Ok(None);
                }
            }
        }
    }

    fn respond(&mut self, answer: DemoAnswer, responses: &Responses) {
        responses.write(answer, &mut self.output);
        self.state = match answer.conn {
            Persist::KeepAlive | Persist::KeepAlive10 => DemoPhase::Head,
            Persist::Close => DemoPhase::Closing,
        };
    }

    /// Writes `output` until it is empty (`true`) or the socket is full (`false`).
    fn flush(&mut self) -> io::Result<bool> {
        while !self.output.is_empty() {
            match self.output.write_to(0, &mut self.socket)? {
                Io::Moved(n) => self.output.consume(n),
                Io::Blocked => return Ok(false),
                Io::Closed => return Err(io::ErrorKind::WriteZero.into()),
            }
        }
        Ok(true)
    }
}

/// The request cannot be parsed; it gets a 400 and the connection closes.
struct Malformed;

/// What a request head says about its request.
struct Head {
    /// Bytes the head took.
    len: usize,
    framing: Framing,
    answer: DemoAnswer,
}

/// Parses the request head at the start of `input`; `Ok(None)` when it is not complete yet.
/// Takes up to `MAX_HEADERS` headers, the most the balancer can be set to accept, and a head
/// as large as the input buffer, larger than any `max_header_bytes`.
fn parse_head(input: &[u8]) -> Result<Option<Head>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed),
    };
    // The proxy's own framing rules: refusing conflicting or duplicate framing headers keeps
    // this backend agreeing with the proxy on where each request ends.
    let hop = HopHeaders::read(req.headers).map_err(|_| Malformed)?;
    let http10 = req.version == Some(0);
    if http10 && hop.chunked {
        return Err(Malformed);
    }
    let conn = match (hop.close, http10, hop.keep_alive) {
        (true, _, _) | (false, true, false) => Persist::Close,
        (false, true, true) => Persist::KeepAlive10,
        (false, false, _) => Persist::KeepAlive,
    };
    let path = req.path.unwrap_or_default();
    let page = match path.split_once('?').map_or(path, |(path, _query)| path) {
        "/healthcheck" => Page::Health,
        _ => Page::Name,
    };
    let head_only = req.method == Some("HEAD");
    let framing = hop.framing().unwrap_or(Framing::Empty);
    Ok(Some(Head {
        len,
        framing,
        answer: DemoAnswer {
            page,
            head_only,
            conn,
        },
    }))
}

/// Which response a request gets.
#[derive(Clone, Copy)]
struct DemoAnswer {
    page: Page,
    /// A `HEAD` request: the response head only.
    head_only: bool,
    conn: Persist,
}

impl DemoAnswer {
    const BAD_REQUEST: DemoAnswer = DemoAnswer {
        page: Page::BadRequest,
        head_only: false,
        conn: Persist::Close,
    };
}

#[derive(Clone, Copy)]
enum Page {
    /// `ok\n`, for `/healthcheck`.
    Health,
    /// The backend's name, for everything else.
    Name,
    BadRequest,
}

/// What happens to the connection after a response, and so which `Connection` header it has.
#[derive(Clone, Copy)]
enum Persist {
    /// HTTP/1.1 default: no header needed.
    KeepAlive,
    /// HTTP/1.0 closes by default, so staying open must be announced.
    KeepAlive10,
    Close,
}

/// A backend's responses, built once at start so that answering a request is a copy.
struct Responses {
    /// Status line and headers, by `[Page][Persist]`.
    heads: [[Box<[u8]>; 3]; 3],
    /// Bodies, by `Page`.
    bodies: [Box<[u8]>; 3],
    /// The longest response: `output` must have this much room to take any response.
    max_len: usize,
}

impl Responses {
    fn new(name: &str) -> Responses {
        let bodies: [Box<[u8]>; 3] = [
            b"ok\n".as_slice().into(),
            format!("{name}\n").into_bytes().into(),
            b"bad request\n".as_slice().into(),
        ];
        let status = ["200 OK", "200 OK", "400 Bad Request"];
        let connection = ["", "Connection: keep-alive\r\n", "Connection: close\r\n"];
        let heads = std::array::from_fn(|page| {
            std::array::from_fn(|conn| {
                let head = format!(
                    "HTTP/1.1 {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
                    status[page],
                    bodies[page].len(),
                    connection[conn],
                );
                head.into_bytes().into_boxed_slice()
            })
        });
        let max_len = (0..3)
            .map(|page| heads[page][2].len() + bodies[page].len())
            .max();
        Responses {
            heads,
            bodies,
            max_len: max_len.unwrap_or_default(),
        }
    }

    fn write(&self, answer: DemoAnswer, out: &mut Buffer) {
        let page = answer.page as usize;
        out.put(&self.heads[page][answer.conn as usize]);
        if !answer.head_only {
            out.put(&self.bodies[page]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    const NAME: &str = "backend-test";

    fn connect() -> (TcpStream, BufReader<TcpStream>) {
        let backend = DemoBackend::spawn(NAME, "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(backend.name(), NAME);
        let stream = TcpStream::connect(backend.addr()).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        (stream, reader)
    }

    /// Reads one response head: the status line and the header lines, lowercased.
    fn read_head(reader: &mut BufReader<TcpStream>) -> (String, Vec<String>) {
        let mut lines = Vec::new();
        for _ in 0..32 {
            let mut line = String::new();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "connection closed mid-head"
            );
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                let status = lines.remove(0);
                return (status, lines);
            }
            lines.push(line);
        }
        panic!("head too long");
    }

    fn content_length(headers: &[String]) -> usize {
        let value = headers
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "));
        value.expect("no Content-Length").parse().unwrap()
    }

    /// Reads one response: status line, headers and body.
    fn read_response(reader: &mut BufReader<TcpStream>) -> (String, Vec<String>, String) {
        let (status, headers) = read_head(reader);
        let mut body = vec![0; content_length(&headers)];
        reader.read_exact(&mut body).unwrap();
        (status, headers, String::from_utf8(body).unwrap())
    }

    fn get_body(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let (status, _, body) = read_response(reader);
        assert_eq!(status, "http/1.1 200 ok");
        body
    }

    fn assert_closed(reader: &mut BufReader<TcpStream>) {
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "bytes after the last response: {rest:?}");
    }

    #[test]
    fn body_is_the_backend_name() {
        let (mut stream, mut reader) = connect();
        stream
            .write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, headers, body) = read_response(&mut reader);
        assert_eq!(status, "http/1.1 200 ok");
        assert!(headers.contains(&"content-type: text/plain".to_owned()));
        assert_eq!(body, "backend-test\n");
    }

    #[test]
    fn healthcheck_answers_ok_with_any_query() {
        let (mut stream, mut reader) = connect();
        assert_eq!(get_body(&mut stream, &mut reader, "/healthcheck"), "ok\n");
        assert_eq!(
            get_body(&mut stream, &mut reader, "/healthcheck?probe=1"),
            "ok\n"
        );
    }

    #[test]
    fn keep_alive_serves_100_requests_on_one_connection() {
        let (mut stream, mut reader) = connect();
        for _ in 0..100 {
            assert_eq!(get_body(&mut stream, &mut reader, "/"), "backend-test\n");
        }
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let (mut stream, mut reader) = connect();
        let three =
            "GET /a HTTP/1.1\r\n\r\nGET /healthcheck HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        stream.write_all(three.as_bytes()).unwrap();
        for expected in ["backend-test\n", "ok\n", "backend-test\n"] {
            assert_eq!(read_response(&mut reader).2, expected);
        }
    }

    #[test]
    fn many_pipelined_requests_outgrow_both_buffers() {
        let (stream, mut reader) = connect();
        let count = 5000;
        let mut writer = stream.try_clone().unwrap();
        // Write from another thread: the responses fill the socket before the requests are all sent.
        let sender = std::thread::spawn(move || {
            let request = b"GET /healthcheck HTTP/1.1\r\n\r\n".repeat(count);
            writer.write_all(&request).unwrap();
        });
        for _ in 0..count {
            assert_eq!(read_response(&mut reader).2, "ok\n");
        }
        sender.join().unwrap();
    }

    #[test]
    fn request_bodies_are_skipped() {
        let (mut stream, mut reader) = connect();
        stream
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
        assert_eq!(read_response(&mut reader).2, "backend-test\n");
        let chunked =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        stream.write_all(chunked.as_bytes()).unwrap();
        assert_eq!(read_response(&mut reader).2, "backend-test\n");
        assert_eq!(get_body(&mut stream, &mut reader, "/healthcheck"), "ok\n");
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let (mut stream, mut reader) = connect();
        stream
            .write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let (_, headers, _) = read_response(&mut reader);
        assert!(headers.contains(&"connection: keep-alive".to_owned()));
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let (status, headers, body) = read_response(&mut reader);
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("http/1.1 200 ok", "backend-test\n")
        );
        assert!(headers.contains(&"connection: close".to_owned()));
        assert_closed(&mut reader);
    }

    #[test]
    fn connection_close_is_honoured() {
        let (mut stream, mut reader) = connect();
        stream
            .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut reader).2, "backend-test\n");
        assert_closed(&mut reader);
    }

    #[test]
    fn head_gets_no_body() {
        let (mut stream, mut reader) = connect();
        stream.write_all(b"HEAD / HTTP/1.1\r\n\r\n").unwrap();
        let (status, headers) = read_head(&mut reader);
        assert_eq!(status, "http/1.1 200 ok");
        assert_eq!(content_length(&headers), NAME.len() + 1);
        // The next response starts right after the head: no body bytes came in between.
        assert_eq!(get_body(&mut stream, &mut reader, "/healthcheck"), "ok\n");
    }

    #[test]
    fn garbage_gets_400_and_close() {
        let (mut stream, mut reader) = connect();
        stream.write_all(b"\x01\x02 not http\r\n\r\n").unwrap();
        let (status, _, body) = read_response(&mut reader);
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("http/1.1 400 bad request", "bad request\n")
        );
        assert_closed(&mut reader);
    }

    #[test]
    fn bad_chunked_body_gets_400_and_close() {
        let (mut stream, mut reader) = connect();
        let bad = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        stream.write_all(bad.as_bytes()).unwrap();
        assert_eq!(read_response(&mut reader).0, "http/1.1 400 bad request");
        assert_closed(&mut reader);
    }
}
