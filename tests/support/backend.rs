//! The scripted mock backend: an HTTP/1.1 server on loopback that records every request it
//! receives and answers each with what the test's handler returns.

use super::http::{
    chunk_encode, has_token, impl_message, parse_header_line, reason, Message, PROBE_USER_AGENT,
};
use super::raw_backend::RawBackend;
use super::util::{find, show, wait_until, Gate};
use super::{IO_TIMEOUT, MAX_HEAD};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// In order, names as sent, values with surrounding spaces/tabs trimmed.
    pub headers: Vec<(String, String)>,
    /// The request line and header lines exactly as received, final CRLF included.
    pub head: Vec<u8>,
    /// The body: de-chunked when chunked.
    pub body: Vec<u8>,
    /// The body bytes exactly as received (chunk framing included).
    pub raw_body: Vec<u8>,
    /// Which backend connection carried it (0-based, in accept order over all connections).
    pub conn: usize,
    /// Its position among the requests of that connection (0-based).
    pub seq_on_conn: usize,
}

impl_message!(Request);

impl Request {
    /// The header lines as received, without the request line and the final empty line.
    pub fn header_lines(&self) -> Vec<String> {
        let text = self.head_str();
        text.split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Whether it is one of lb-mio's health probes.
    pub fn is_probe(&self) -> bool {
        self.header("user-agent") == Some(PROBE_USER_AGENT)
    }
}

/// One scripted action of a backend response.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Pause.
    Sleep(Duration),
    /// Echo every byte received (including bytes already buffered) until the peer closes.
    Echo,
    /// Half-close (FIN) the write side.
    ShutdownWrite,
    /// Close the connection now (the steps after it are not run).
    Close,
    /// Shut down both directions at once and stop (std cannot send a true RST).
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` (added unless the status forbids a body).
    Length,
    /// `Transfer-Encoding: chunked` with chunks of at most this many bytes.
    Chunked(usize),
    /// No length; body then close.
    Close,
    /// No framing header added at all (the handler's own headers rule).
    Bare,
}

#[derive(Debug, Clone)]
enum Kind {
    Http {
        version: String,
        status: u16,
        reason: Option<String>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        framing: Framing,
    },
    Script(Vec<Step>),
}

/// What a backend does in answer to one request: an HTTP response built from parts, or raw
/// steps; optional steps before and after. After a response the connection stays open
/// (keep-alive) unless the request or `then_close` says otherwise.
#[derive(Debug, Clone)]
pub struct Response {
    kind: Kind,
    before: Vec<Step>,
    after: Vec<Step>,
    close: bool,
}

impl Response {
    /// `200 OK` with this body and a `Content-Length`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Response {
        Response::status(200, body)
    }

    /// This status with this body; `Content-Length` added unless the status has no body
    /// (1xx, 204, 304).
    pub fn status(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            kind: Kind::Http {
                version: "HTTP/1.1".into(),
                status,
                reason: None,
                headers: Vec::new(),
                body: body.into(),
                framing: Framing::Length,
            },
            before: Vec::new(),
            after: Vec::new(),
            close: false,
        }
    }

    /// Exactly these bytes, nothing added.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Response {
        Response::script(vec![Step::Send(bytes.into())])
    }

    /// Exactly these steps.
    pub fn script(steps: Vec<Step>) -> Response {
        Response {
            kind: Kind::Script(steps),
            before: Vec::new(),
            after: Vec::new(),
            close: false,
        }
    }

    /// `101 Switching Protocols` (`Upgrade: <protocol>`, `Connection: Upgrade`), then echo
    /// every byte until the peer closes.
    pub fn upgrade_echo(protocol: &str) -> Response {
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\nConnection: Upgrade\r\n\r\n"
        );
        Response::script(vec![Step::Send(head.into_bytes()), Step::Echo, Step::Close])
    }

    /// Adds a header (in order, after any framing header the harness adds).
    pub fn header(mut self, name: &str, value: &str) -> Response {
        if let Kind::Http { headers, .. } = &mut self.kind {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }

    pub fn reason(mut self, text: &str) -> Response {
        if let Kind::Http { reason, .. } = &mut self.kind {
            *reason = Some(text.to_string());
        }
        self
    }

    /// `HTTP/1.0` status line.
    pub fn http10(mut self) -> Response {
        if let Kind::Http { version, .. } = &mut self.kind {
            *version = "HTTP/1.0".into();
        }
        self
    }

    /// Send the body chunked, in chunks of at most `chunk` bytes.
    pub fn chunked(mut self, chunk: usize) -> Response {
        if let Kind::Http { framing, .. } = &mut self.kind {
            *framing = Framing::Chunked(chunk.max(1));
        }
        self
    }

    /// No framing header: the body ends when the backend closes.
    pub fn close_delimited(mut self) -> Response {
        if let Kind::Http { framing, .. } = &mut self.kind {
            *framing = Framing::Close;
        }
        self.close = true;
        self
    }

    /// Add no framing header at all (set your own `Content-Length`/`Transfer-Encoding`, body
    /// sent as given).
    pub fn bare(mut self) -> Response {
        if let Kind::Http { framing, .. } = &mut self.kind {
            *framing = Framing::Bare;
        }
        self
    }

    /// Pause before answering.
    pub fn delay(mut self, d: Duration) -> Response {
        self.before.push(Step::Sleep(d));
        self
    }

    /// A step before the response (e.g. `Step::Send(b"HTTP/1.1 103 Early Hints\r\n\r\n")`).
    pub fn before(mut self, step: Step) -> Response {
        self.before.push(step);
        self
    }

    /// A step after the response.
    pub fn then(mut self, step: Step) -> Response {
        self.after.push(step);
        self
    }

    /// Close the connection after the response.
    pub fn then_close(mut self) -> Response {
        self.close = true;
        self
    }

    /// The steps this response takes for a request with method `method`.
    fn steps(&self, method: &str) -> Vec<Step> {
        let mut steps = self.before.clone();
        match &self.kind {
            Kind::Script(script) => steps.extend(script.iter().cloned()),
            Kind::Http {
                version,
                status,
                reason: why,
                headers,
                body,
                framing,
            } => {
                let no_body_status = matches!(status, 100..=199 | 204 | 304);
                let mut head = format!(
                    "{version} {status} {}\r\n",
                    why.clone().unwrap_or_else(|| reason(*status).to_string())
                );
                match framing {
                    Framing::Length if !no_body_status => {
                        head.push_str(&format!("Content-Length: {}\r\n", body.len()))
                    }
                    Framing::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
                    _ => {}
                }
                for (n, v) in headers {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                head.push_str("\r\n");
                let mut bytes = head.into_bytes();
                if method != "HEAD" && !no_body_status || *framing == Framing::Bare {
                    match framing {
                        Framing::Chunked(n) => bytes.extend(chunk_encode(body, *n)),
                        _ => bytes.extend_from_slice(body),
                    }
                }
                steps.push(Step::Send(bytes));
            }
        }
        steps.extend(self.after.iter().cloned());
        if self.close {
            steps.push(Step::Close);
        }
        steps
    }
}

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Backend behaviour switches.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Answer `Expect: 100-continue` with `100 Continue` before reading the body.
    pub auto_continue: bool,
    /// Health probes (`User-Agent: lb-mio-health`) are answered by the harness (status from
    /// `set_health_status`) and not recorded; when false they go to the handler like any
    /// request.
    pub answer_probes: bool,
    /// Read request bodies slowly: at most this many bytes per read, pausing
    /// `slow_body_pause` after each (0: read as fast as possible).
    pub slow_body_read: usize,
    pub slow_body_pause: Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            auto_continue: true,
            answer_probes: true,
            slow_body_read: 0,
            slow_body_pause: Duration::ZERO,
        }
    }
}

struct BackendState {
    handler: Handler,
    options: BackendOptions,
    requests: Mutex<Vec<Request>>,
    /// Connections that carried at least one recorded (non-probe) request.
    connections: AtomicUsize,
    probes: AtomicUsize,
    health_status: AtomicUsize,
}

/// Waits (≤ `timeout`) for the one request sent to reach `a` or `b`: (the one holding it, the
/// other). Panics if it reaches neither.
#[track_caller]
pub fn holder<'a>(a: &'a Backend, b: &'a Backend, timeout: Duration) -> (&'a Backend, &'a Backend) {
    let got = wait_until(timeout, || a.request_count() + b.request_count() == 1);
    assert!(got, "the slow request never reached a backend");
    if a.request_count() == 1 {
        (a, b)
    } else {
        (b, a)
    }
}

/// An address on loopback where nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// A scripted HTTP/1.1 server on `127.0.0.1:0`, one thread per connection. Records every
/// request (health probes apart); answers with its handler. Stops on `stop()` or drop.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<BackendState>,
    raw: RawBackend,
}

impl Backend {
    /// A backend answering every request with `handler(&request)`.
    pub fn start(
        name: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Backend {
        Backend::with_options(name, BackendOptions::default(), handler)
    }

    /// A backend that answers `200 OK` with its own name as the body.
    pub fn named(name: &str) -> Backend {
        let body = name.to_string();
        Backend::start(name, move |_| Response::ok(body.clone()))
    }

    /// A backend answering with its own name that holds a request for `/slow` until `gate`
    /// opens (≤ 5 s).
    pub fn gated(name: &str, gate: &Gate) -> Backend {
        let (body, gate) = (name.to_string(), gate.clone());
        Backend::start(name, move |req| {
            if req.target == "/slow" {
                gate.wait(IO_TIMEOUT);
            }
            Response::ok(body.clone())
        })
    }

    pub fn with_options(
        name: &str,
        options: BackendOptions,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Backend {
        Backend::with_options_at("127.0.0.1:0", name, options, handler)
    }

    /// A backend answering with its own name, listening on `addr` (e.g. `[::1]:0`).
    pub fn named_at(addr: &str, name: &str) -> Backend {
        let body = name.to_string();
        let handler = move |_: &Request| Response::ok(body.clone());
        Backend::with_options_at(addr, name, BackendOptions::default(), handler)
    }

    pub fn with_options_at(
        addr: &str,
        name: &str,
        options: BackendOptions,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Backend {
        let state = Arc::new(BackendState {
            handler: Arc::new(handler),
            options,
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            health_status: AtomicUsize::new(200),
        });
        let shared = Arc::clone(&state);
        let raw = RawBackend::start_at(addr, name, move |stream, index| {
            let end = stream.try_clone();
            let _ = serve(stream, &shared, index);
            // A FIN first, even with bytes left unread (a bare close would only reset).
            if let Ok(end) = end {
                let _ = end.shutdown(Shutdown::Both);
            }
        });
        Backend {
            addr: raw.addr,
            name: name.to_string(),
            state,
            raw,
        }
    }

    /// How many recorded requests so far had a target starting with `prefix`.
    pub fn requests_under(&self, prefix: &str) -> usize {
        let requests = self.state.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| r.target.starts_with(prefix))
            .count()
    }

    /// Every recorded request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The last recorded request. Panics if none.
    #[track_caller]
    pub fn last_request(&self) -> Request {
        self.requests()
            .pop()
            .unwrap_or_else(|| panic!("backend {} got no request", self.name))
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Connections that carried at least one recorded request (health-probe-only ones are not
    /// counted).
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every accepted connection, probes included.
    pub fn accepted_count(&self) -> usize {
        self.raw.accepted()
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.raw.open_connections()
    }

    /// Health probes answered by the harness.
    pub fn probe_count(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    /// Status answered to health probes from now on (200 by default).
    pub fn set_health_status(&self, status: u16) {
        self.state
            .health_status
            .store(status as usize, Ordering::SeqCst);
    }

    /// `set_health_status(200)` or `(500)`.
    pub fn set_healthy(&self, healthy: bool) {
        self.set_health_status(if healthy { 200 } else { 500 });
    }

    /// Waits until at least `n` requests were recorded.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.request_count() >= n)
    }

    /// Waits until at least `n` more health probes than now were answered.
    pub fn wait_for_probes(&self, n: usize, timeout: Duration) -> bool {
        let target = self.probe_count() + n;
        wait_until(timeout, || self.probe_count() >= target)
    }

    /// Stops accepting (the port then refuses connections) and closes every open connection.
    pub fn stop(&mut self) {
        self.raw.stop();
    }
}

/// A request head at the start of `bytes`, if all there: the request (no body yet) and the
/// head's length.
pub fn parse_request_head(bytes: &[u8]) -> Option<(Request, usize)> {
    let end = find(bytes, b"\r\n\r\n")? + 4;
    let text = show(&bytes[..end - 4]);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.splitn(3, ' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    let request = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers: lines.map(parse_header_line).collect::<Option<_>>()?,
        head: bytes[..end].to_vec(),
        body: Vec::new(),
        raw_body: Vec::new(),
        conn: 0,
        seq_on_conn: 0,
    };
    Some((request, end))
}

/// An empty `status` answer with `Connection: close`, then a FIN: what a plain backend gives
/// a health probe, or a request it refuses.
pub fn reply_and_close(mut stream: &TcpStream, status: u16) {
    let reply = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        reason(status)
    );
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads one request (head, and the body its headers frame) from `stream`; `None` if the
/// connection ends, times out or sends no request head first. It may read past the request.
pub fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut input = Input::new(stream).ok()?;
    let mut request = input.head(0, 0)?;
    input.body(&mut request)?;
    Some(request)
}

/// A connection's input: bytes read but not yet used.
struct Input {
    stream: TcpStream,
    buf: Vec<u8>,
    /// While set: (most bytes per read, pause after each read).
    slow: Option<(usize, Duration)>,
}

impl Input {
    fn new(stream: &TcpStream) -> io::Result<Input> {
        Ok(Input {
            stream: stream.try_clone()?,
            buf: Vec::new(),
            slow: None,
        })
    }

    /// The next request head: the request without its body yet.
    fn head(&mut self, conn: usize, seq: usize) -> Option<Request> {
        loop {
            if let Some((request, len)) = parse_request_head(&self.buf) {
                self.take(len);
                return Some(Request {
                    conn,
                    seq_on_conn: seq,
                    ..request
                });
            }
            if self.buf.len() > MAX_HEAD || !self.fill() {
                return None;
            }
        }
    }

    /// Reads the body `request`'s headers frame into it (none without a framing header).
    fn body(&mut self, request: &mut Request) -> Option<()> {
        let length = request
            .header("content-length")
            .and_then(|v| v.parse().ok());
        (request.body, request.raw_body) =
            if has_token(&request.headers, "transfer-encoding", "chunked") {
                self.chunked()?
            } else if let Some(n) = length {
                let body = self.exact(n)?;
                (body.clone(), body)
            } else {
                (Vec::new(), Vec::new())
            };
        Some(())
    }

    /// Reads more; false at EOF or on error.
    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 64 * 1024];
        let limit = self.slow.map_or(tmp.len(), |(n, _)| n.clamp(1, tmp.len()));
        match self.stream.read(&mut tmp[..limit]) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                if let Some((_, pause)) = self.slow {
                    thread::sleep(pause);
                }
                true
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// Reads exactly `n` bytes.
    fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.take(n))
    }

    /// Reads a CRLF-terminated line (CRLF included).
    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Some(self.take(i + 2));
            }
            if self.buf.len() > 64 * 1024 || !self.fill() {
                return None;
            }
        }
    }

    /// A chunked body: (decoded, raw).
    fn chunked(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut body = Vec::new();
        let mut raw = Vec::new();
        loop {
            let line = self.line()?;
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            let size = text.trim_end().split(';').next()?.trim();
            let size = usize::from_str_radix(size, 16).ok()?;
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    let line = self.line()?;
                    raw.extend_from_slice(&line);
                    if line == b"\r\n" {
                        return Some((body, raw));
                    }
                }
            }
            let data = self.exact(size + 2)?;
            raw.extend_from_slice(&data);
            body.extend_from_slice(&data[..size]);
        }
    }
}

fn serve(stream: TcpStream, state: &BackendState, conn: usize) -> io::Result<()> {
    let mut input = Input::new(&stream)?;
    let slow = (state.options.slow_body_read > 0)
        .then_some((state.options.slow_body_read, state.options.slow_body_pause));
    let mut out = stream;
    let mut counted = false;
    // Bounded: a connection serves at most this many requests.
    for seq in 0..100_000 {
        let Some(mut request) = input.head(conn, seq) else {
            return Ok(());
        };
        if request.is_probe() && state.options.answer_probes {
            state.probes.fetch_add(1, Ordering::SeqCst);
            reply_and_close(&out, state.health_status.load(Ordering::SeqCst) as u16);
            return Ok(());
        }
        let has = |name, token| has_token(&request.headers, name, token);
        if state.options.auto_continue && has("expect", "100-continue") {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let close_requested = has("connection", "close")
            || (request.version == "HTTP/1.0" && !has("connection", "keep-alive"));
        input.slow = slow;
        let read = input.body(&mut request);
        input.slow = None;
        if read.is_none() {
            return Ok(());
        }
        if !counted {
            counted = true;
            state.connections.fetch_add(1, Ordering::SeqCst);
        }
        state.requests.lock().unwrap().push(request.clone());
        let response = (state.handler)(&request);
        for step in response.steps(&request.method) {
            match step {
                Step::Send(bytes) => out.write_all(&bytes)?,
                Step::Sleep(d) => thread::sleep(d),
                Step::ShutdownWrite => out.shutdown(Shutdown::Write)?,
                Step::Close => {
                    let _ = out.shutdown(Shutdown::Write);
                    return Ok(());
                }
                Step::Abort => {
                    let _ = out.shutdown(Shutdown::Both);
                    return Ok(());
                }
                Step::Echo => {
                    let pending = std::mem::take(&mut input.buf);
                    out.write_all(&pending)?;
                    let mut tmp = [0u8; 16 * 1024];
                    loop {
                        match input.stream.read(&mut tmp) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => out.write_all(&tmp[..n])?,
                        }
                    }
                }
            }
        }
        if close_requested {
            let _ = out.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
    Ok(())
}
