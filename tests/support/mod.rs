//! Shared test harness for lb-mio integration tests: run the real binary, scripted mock
//! backends, raw HTTP/1.1 clients and config builders. Loopback only, std only, every wait
//! bounded by a deadline and every socket by a timeout.
//!
//! ```ignore
//! mod support;
//! use support::*;
//!
//! let a = Backend::start("a", |_req| Response::ok("from a"));
//! let lb = Lb::start(&ini(&[("a", a.addr)], ""));
//! let resp = get(lb.addr, "/");
//! assert_eq!(resp.body_str(), "from a");
//! ```
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Read/write timeout on every socket the harness opens (clients and backend connections).
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `Lb::start` waits for the "listening" log line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `run_cli` lets the binary run before killing it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest response head the client reader accepts.
const MAX_HEAD: usize = 64 * 1024;

pub const BIN: &str = env!("CARGO_BIN_EXE_lb-mio");

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

/// Polls `cond` (every 5 ms) until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `len` random-looking but deterministic bytes (a 64-bit LCG, high bits).
pub fn lcg_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// `body` in chunked transfer coding with chunks of at most `chunk` bytes, then `0\r\n\r\n`.
pub fn chunk_encode(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk.max(1) * 8 + 16);
    for part in body.chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Index of the first occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A short description of where two byte strings first differ (for assertion messages).
pub fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i} (lengths {} and {})",
            a.len(),
            b.len()
        ),
        None if a.len() == b.len() => "equal".to_string(),
        None => format!(
            "one is a prefix of the other (lengths {} and {})",
            a.len(),
            b.len()
        ),
    }
}

/// Asserts two byte strings are equal without dumping megabytes on failure.
#[track_caller]
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert!(got == want, "{what}: {}", first_difference(got, want));
}

/// A one-shot gate: handlers `wait` on it, the test `open`s it. Clones share the gate.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    pub fn open(&self) {
        let (lock, cv) = &*self.0;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }

    /// Waits until opened; false if `timeout` passed first.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.0;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |open| !*open)
            .unwrap();
        *guard
    }

    pub fn is_open(&self) -> bool {
        *self.0 .0.lock().unwrap()
    }
}

/// A temp file that is removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    /// Writes `contents` to a fresh, uniquely named file in the temp directory.
    pub fn new(suffix: &str, contents: &[u8]) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("lb-mio-test-{}-{n}-{nanos}{suffix}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).expect("write temp file");
        TempFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Config builder
// ---------------------------------------------------------------------------------------------

/// A config for the given backends: `[lb]` with `listen = 127.0.0.1:0` and `workers = 1`, then
/// `extra` (raw INI text: any sections), then `[backends]`. Keys of an `[lb]` section in `extra`
/// are merged into (and override) the generated `[lb]`; lines of a `[backends]` section in
/// `extra` are appended after the generated backend lines.
///
/// `ini(&[("a", a.addr)], "[lb]\nexpose_backend = true\n[health]\ninterval_ms = 50\n")`
pub fn ini(backends: &[(&str, SocketAddr)], extra: &str) -> String {
    let mut lb: Vec<(String, String)> = vec![
        ("listen".into(), "127.0.0.1:0".into()),
        ("workers".into(), "1".into()),
    ];
    let mut other = String::new();
    let mut extra_backends = String::new();
    let mut section = String::new();
    for line in extra.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            section = trimmed[1..trimmed.len() - 1].trim().to_string();
            if section != "lb" && section != "backends" {
                other.push_str(trimmed);
                other.push('\n');
            }
            continue;
        }
        match section.as_str() {
            "lb" => {
                if let Some((k, v)) = trimmed.split_once('=') {
                    let (k, v) = (k.trim().to_string(), v.trim().to_string());
                    match lb.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => lb.push((k, v)),
                    }
                } else if !trimmed.is_empty() {
                    // Keep odd lines so a test of bad input still sees them.
                    lb.push((trimmed.to_string(), String::new()));
                }
            }
            "backends" => {
                extra_backends.push_str(line);
                extra_backends.push('\n');
            }
            _ => {
                other.push_str(line);
                other.push('\n');
            }
        }
    }
    let mut out = String::from("[lb]\n");
    for (k, v) in &lb {
        if v.is_empty() {
            out.push_str(&format!("{k}\n"));
        } else {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out.push_str(&other);
    out.push_str("[backends]\n");
    for (name, addr) in backends {
        out.push_str(&format!("{name} = {addr}\n"));
    }
    out.push_str(&extra_backends);
    out
}

/// An address on loopback where nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

// ---------------------------------------------------------------------------------------------
// The balancer process
// ---------------------------------------------------------------------------------------------

type LogLines = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A running `lb-mio CONFIG`; killed (and its config removed) on drop.
pub struct Lb {
    pub addr: SocketAddr,
    child: Child,
    log: LogLines,
    config: TempFile,
}

impl Lb {
    /// Starts lb-mio with this config and waits (≤10 s) for it to listen. Panics, showing the
    /// log, if it does not.
    #[track_caller]
    pub fn start(ini: &str) -> Lb {
        match Lb::try_start(ini) {
            Ok(lb) => lb,
            Err(log) => panic!("lb-mio did not start; its stderr:\n{log}\nconfig:\n{ini}"),
        }
    }

    /// Like `start`, but a process that exits (or never listens) is an `Err` holding its stderr.
    pub fn try_start(ini: &str) -> Result<Lb, String> {
        Lb::try_start_as(ini, |config| {
            let mut command = Command::new(BIN);
            command.arg(config);
            command
        })
    }

    /// Like `try_start`, but runs the command `command` makes of the config file's path: one
    /// that ends up as (or `exec`s) `lb-mio CONFIG`.
    pub fn try_start_as(ini: &str, command: impl FnOnce(&Path) -> Command) -> Result<Lb, String> {
        let config = TempFile::new(".ini", ini.as_bytes());
        let mut child = command(config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lb-mio");
        let stderr = child.stderr.take().expect("piped stderr");
        let log: LogLines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = Arc::clone(&log);
        let reader_thread = thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        let (lock, cv) = &*sink;
                        lock.lock().unwrap().push(text);
                        cv.notify_all();
                    }
                }
            }
            // Wake waiters so they notice the end promptly.
            sink.1.notify_all();
        });
        let mut lb = Lb {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            log,
            config,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(addr) = lb.log().iter().find_map(|l| parse_listening(l)) {
                lb.addr = addr;
                return Ok(lb);
            }
            if let Ok(Some(status)) = lb.child.try_wait() {
                // The pipe is at EOF once the process is gone: let the reader drain it.
                let _ = reader_thread.join();
                return Err(format!("(exited: {status})\n{}", lb.log_text()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "(no listening line in {START_TIMEOUT:?})\n{}",
                    lb.log_text()
                ));
            }
            let (lock, cv) = &*lb.log;
            let guard = lock.lock().unwrap();
            let _ = cv.wait_timeout(guard, Duration::from_millis(20)).unwrap();
        }
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    /// The whole stderr so far, one line per line.
    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    /// How many stderr lines so far contain `substr`.
    pub fn count_log(&self, substr: &str) -> usize {
        self.log
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(substr))
            .count()
    }

    /// Waits until some stderr line contains `substr`; false if `timeout` passed first.
    pub fn wait_for_log(&self, substr: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(substr, 1, timeout)
    }

    /// Waits until at least `count` stderr lines contain `substr`.
    pub fn wait_for_log_count(&self, substr: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.log;
        let mut guard = lock.lock().unwrap();
        loop {
            if guard.iter().filter(|l| l.contains(substr)).count() >= count {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Bounded slices, so a process that dies (no more notifications) cannot stall us.
            let slice = (deadline - now).min(Duration::from_millis(50));
            guard = cv.wait_timeout(guard, slice).unwrap().0;
        }
    }

    /// Waits (≤`within`) until some stderr line contains `needle`; panics, showing the log, if
    /// none does.
    #[track_caller]
    pub fn expect_log(&self, needle: &str, within: Duration) {
        if !self.wait_for_log(needle, within) {
            panic!(
                "no log line with {needle:?} within {within:?}; log:\n{}",
                self.log_text()
            );
        }
    }

    /// Waits (≤`within`) until at least `count` stderr lines contain `needle`; panics, showing
    /// the log, if they do not.
    #[track_caller]
    pub fn expect_log_count(&self, needle: &str, count: usize, within: Duration) {
        if !self.wait_for_log_count(needle, count, within) {
            panic!(
                "fewer than {count} log lines with {needle:?} within {within:?}; log:\n{}",
                self.log_text()
            );
        }
    }

    /// The process's exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Panics (showing the log) if the process exited or any thread panicked.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.exited() {
            panic!("lb-mio exited ({status}); log:\n{}", self.log_text());
        }
        assert_eq!(
            self.count_log("panicked"),
            0,
            "a thread panicked; log:\n{}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin address from `admin API listening on http://127.0.0.1:PORT/` (logged before
    /// the line `Lb::start` waits for).
    #[track_caller]
    pub fn admin_addr(&self) -> SocketAddr {
        self.log()
            .iter()
            .find_map(|line| {
                let rest = &line[line.find("admin API listening on http://")? + 30..];
                rest.trim_end_matches('/').parse().ok()
            })
            .unwrap_or_else(|| panic!("no admin listening line; log:\n{}", self.log_text()))
    }

    pub fn config_path(&self) -> &Path {
        self.config.path()
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in `... lb-mio listening on 127.0.0.1:PORT: ...`.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("lb-mio listening on ")? + "lb-mio listening on ".len()..];
    let word = rest.split_whitespace().next()?;
    word.trim_end_matches([':', ',']).parse().ok()
}

/// Runs `lb-mio ARGS` (≤10 s, then killed); returns (exit status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lb-mio");
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            panic!("lb-mio {args:?} still running after {CLI_TIMEOUT:?}; killed ({status})");
        }
        thread::sleep(Duration::from_millis(5));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Mock backend
// ---------------------------------------------------------------------------------------------

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

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Every value of headers with this name (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_all(&self.headers, name)
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    /// The header lines as received, without the request line and the final empty line.
    pub fn header_lines(&self) -> Vec<String> {
        let text = self.head_str();
        text.split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
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
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
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
    name: String,
    handler: Handler,
    options: BackendOptions,
    requests: Mutex<Vec<Request>>,
    /// Connections that carried at least one recorded (non-probe) request.
    connections: AtomicUsize,
    /// Every accepted connection, probes included.
    accepted: AtomicUsize,
    probes: AtomicUsize,
    health_status: AtomicUsize,
    stop: AtomicBool,
    /// Open connections by index, to shut them down on stop.
    open: Mutex<Vec<(usize, TcpStream)>>,
    /// Connections currently open (accepted and not yet closed by either side).
    live: AtomicUsize,
}

/// A scripted HTTP/1.1 server on `127.0.0.1:0`, one thread per connection. Records every
/// request (health probes apart); answers with its handler. Stops on `stop()` or drop.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<BackendState>,
    acceptor: Option<JoinHandle<()>>,
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
        let listener = TcpListener::bind(addr).expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(BackendState {
            name: name.to_string(),
            handler: Arc::new(handler),
            options,
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            health_status: AtomicUsize::new(200),
            stop: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
        });
        let shared = Arc::clone(&state);
        let acceptor = thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || accept_loop(listener, shared))
            .expect("spawn backend");
        Backend {
            addr,
            name: name.to_string(),
            state,
            acceptor: Some(acceptor),
        }
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
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.state.live.load(Ordering::SeqCst)
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
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            // Wake the blocking accept.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = acceptor.join();
        }
        for (_, stream) in self.state.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, state: Arc<BackendState>) {
    let mut conn_index = 0;
    loop {
        let Ok((stream, _)) = listener.accept() else {
            if state.stop.load(Ordering::SeqCst) {
                return;
            }
            continue;
        };
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        state.accepted.fetch_add(1, Ordering::SeqCst);
        let index = conn_index;
        conn_index += 1;
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        state.open.lock().unwrap().push((index, clone));
        let shared = Arc::clone(&state);
        state.live.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name(format!("backend-{}-conn", state.name))
            .spawn(move || {
                let _ = serve(stream, &shared, index);
                // Close for real (the clone kept for `stop` would otherwise hold it open).
                let mut open = shared.open.lock().unwrap();
                if let Some(i) = open.iter().position(|(id, _)| *id == index) {
                    let (_, s) = open.swap_remove(i);
                    let _ = s.shutdown(Shutdown::Both);
                }
                drop(open);
                shared.live.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            state.live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A parsed request head: (method, target, version, headers, head length).
type Head = (String, String, String, Vec<(String, String)>, usize);

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let end = find(bytes, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&bytes[..end - 4]).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.splitn(3, ' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let version = first.next()?.to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line.split_once(':')?;
        headers.push((n.to_string(), v.trim_matches([' ', '\t']).to_string()));
    }
    Some((method, target, version, headers, end))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn header_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A connection's input: bytes read but not yet used.
struct Input {
    stream: TcpStream,
    buf: Vec<u8>,
    /// While set: (most bytes per read, pause after each read).
    slow: Option<(usize, Duration)>,
}

impl Input {
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
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut input = Input {
        stream: stream.try_clone()?,
        buf: Vec::new(),
        slow: None,
    };
    let slow = (state.options.slow_body_read > 0)
        .then_some((state.options.slow_body_read, state.options.slow_body_pause));
    let mut out = stream;
    let mut counted = false;
    // Bounded: a connection serves at most this many requests.
    for seq in 0..100_000 {
        let (method, target, version, headers, head_len) = loop {
            if let Some(head) = parse_head(&input.buf) {
                break head;
            }
            if input.buf.len() > MAX_HEAD || !input.fill() {
                return Ok(());
            }
        };
        let head = input.take(head_len);
        let probe = header(&headers, "user-agent") == Some("lb-mio-health");
        if probe && state.options.answer_probes {
            state.probes.fetch_add(1, Ordering::SeqCst);
            let status = state.health_status.load(Ordering::SeqCst) as u16;
            let reply = format!(
                "HTTP/1.1 {status} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                reason(status)
            );
            let _ = out.write_all(reply.as_bytes());
            let _ = out.shutdown(Shutdown::Write);
            return Ok(());
        }
        if state.options.auto_continue && has_token(&headers, "expect", "100-continue") {
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let chunked = has_token(&headers, "transfer-encoding", "chunked");
        let length = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
        input.slow = slow;
        let body = if chunked {
            input.chunked()
        } else if let Some(n) = length {
            input.exact(n).map(|b| (b.clone(), b))
        } else {
            Some((Vec::new(), Vec::new()))
        };
        input.slow = None;
        let Some((body, raw_body)) = body else {
            return Ok(());
        };
        let close_requested = has_token(&headers, "connection", "close")
            || (version == "HTTP/1.0" && !has_token(&headers, "connection", "keep-alive"));
        let request = Request {
            method: method.clone(),
            target,
            version,
            headers,
            head,
            body,
            raw_body,
            conn,
            seq_on_conn: seq,
        };
        if !counted {
            counted = true;
            state.connections.fetch_add(1, Ordering::SeqCst);
        }
        state.requests.lock().unwrap().push(request.clone());
        let response = (state.handler)(&request);
        for step in response.steps(&method) {
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

// ---------------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------------

/// A connection to `addr` with 5 s read and write timeouts and no Nagle delay.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = stream.set_nodelay(true);
    stream
}

/// Writes all of `bytes`. Panics on error.
#[track_caller]
pub fn send(stream: &mut TcpStream, bytes: impl AsRef<[u8]>) {
    stream
        .write_all(bytes.as_ref())
        .unwrap_or_else(|e| panic!("send: {e}"));
}

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Resp {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// In order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    /// Status line and header lines exactly as received, final CRLF included.
    pub head: Vec<u8>,
    /// The body, de-chunked when chunked.
    pub body: Vec<u8>,
    /// The body bytes as received.
    pub raw_body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_all(&self.headers, name)
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// Whether a `Connection` header lists this token.
    pub fn connection_has(&self, token: &str) -> bool {
        has_token(&self.headers, "connection", token)
    }

    pub fn head_str(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How `read_response` frames the body of the response it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Normal rules: 1xx/204/304 have no body; else chunked, Content-Length or until close.
    Normal,
    /// The response to a HEAD request: never a body.
    Head,
}

fn read_byte(stream: &mut TcpStream) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    loop {
        match stream.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(b[0])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn read_line(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        match read_byte(stream)? {
            Some(b) => line.push(b),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed mid-line after {:?}", String::from_utf8_lossy(&line)),
                ))
            }
        }
        if line.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    }
    Ok(line)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one response head. It reads byte by byte so nothing after the head is consumed.
/// `Err(UnexpectedEof)` when the connection closed before any byte.
pub fn try_read_head(stream: &mut TcpStream) -> io::Result<Resp> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match read_byte(stream)? {
            Some(b) => head.push(b),
            None if head.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed inside a response head: {:?}",
                        String::from_utf8_lossy(&head)
                    ),
                ))
            }
        }
        if head.len() > MAX_HEAD {
            return Err(bad("response head too long".into()));
        }
    }
    let text = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        headers.push((n.to_string(), v.trim_matches([' ', '\t']).to_string()));
    }
    Ok(Resp {
        version,
        status,
        reason,
        headers,
        head,
        body: Vec::new(),
        raw_body: Vec::new(),
    })
}

/// Reads one whole response: head and body framed per `expect` and the response's headers.
pub fn try_read_response_as(stream: &mut TcpStream, expect: Expect) -> io::Result<Resp> {
    let mut resp = try_read_head(stream)?;
    let no_body = expect == Expect::Head || matches!(resp.status, 100..=199 | 204 | 304);
    if no_body {
        return Ok(resp);
    }
    if has_token(&resp.headers, "transfer-encoding", "chunked") {
        loop {
            let line = read_line(stream)?;
            resp.raw_body.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line).into_owned();
            let size = text.trim_end().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size line {text:?}")))?;
            if size == 0 {
                loop {
                    let line = read_line(stream)?;
                    resp.raw_body.extend_from_slice(&line);
                    if line == b"\r\n" {
                        return Ok(resp);
                    }
                }
            }
            let mut data = vec![0u8; size + 2];
            stream.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(bad("chunk data not followed by CRLF".into()));
            }
            resp.raw_body.extend_from_slice(&data);
            resp.body.extend_from_slice(&data[..size]);
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body)?;
        resp.raw_body = body.clone();
        resp.body = body;
        Ok(resp)
    } else {
        let body = try_read_to_close(stream)?;
        resp.raw_body = body.clone();
        resp.body = body;
        Ok(resp)
    }
}

/// `try_read_response_as(stream, Expect::Normal)`.
pub fn try_read_response(stream: &mut TcpStream) -> io::Result<Resp> {
    try_read_response_as(stream, Expect::Normal)
}

/// Reads one whole response (a 1xx comes back on its own: call again for the final one).
/// Panics on error.
#[track_caller]
pub fn read_response(stream: &mut TcpStream) -> Resp {
    try_read_response(stream).unwrap_or_else(|e| panic!("reading a response: {e}"))
}

/// Reads the response to a HEAD request (never a body).
#[track_caller]
pub fn read_head_response(stream: &mut TcpStream) -> Resp {
    try_read_response_as(stream, Expect::Head).unwrap_or_else(|e| panic!("reading a response: {e}"))
}

/// Reads until the peer closes (EOF, or a reset after some bytes). Errors on timeout.
pub fn try_read_to_close(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut tmp = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut tmp) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// Reads until the peer closes; panics if it does not within the read timeout.
#[track_caller]
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    try_read_to_close(stream).unwrap_or_else(|e| panic!("waiting for the connection to close: {e}"))
}

/// Whether the peer closes the connection (with no further bytes) within `timeout`. Bytes that
/// do arrive make it false.
pub fn closes_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let old = stream.read_timeout().ok().flatten();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut b = [0u8; 1];
    let closed = match stream.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    };
    stream.set_read_timeout(old).unwrap();
    closed
}

/// Whether the connection is still open and silent for `quiet` (read times out).
pub fn stays_open(stream: &mut TcpStream, quiet: Duration) -> bool {
    let old = stream.read_timeout().ok().flatten();
    stream.set_read_timeout(Some(quiet)).unwrap();
    let mut b = [0u8; 1];
    let open = matches!(stream.read(&mut b), Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
    stream.set_read_timeout(old).unwrap();
    open
}

/// `GET path HTTP/1.1` with `Host: lb.test` (keep-alive) on an open connection; reads the
/// response.
#[track_caller]
pub fn get_on(stream: &mut TcpStream, path: &str) -> Resp {
    send(
        stream,
        format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n\r\n"),
    );
    read_response(stream)
}

/// One `GET path` on a new connection (`Connection: close`).
#[track_caller]
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    let mut stream = connect(addr);
    send(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n"),
    );
    read_response(&mut stream)
}

/// Sends raw request bytes on a new connection and reads one response.
#[track_caller]
pub fn request(addr: SocketAddr, raw: impl AsRef<[u8]>) -> Resp {
    let mut stream = connect(addr);
    send(&mut stream, raw);
    read_response(&mut stream)
}

// ---------------------------------------------------------------------------------------------
// Steady load
// ---------------------------------------------------------------------------------------------

/// Client threads, each sending `GET /` on a keep-alive connection until stopped (at most
/// 60 s or 200,000 requests each), reconnecting after a close. Anything but a 200, and any
/// I/O error, is a failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                thread::spawn(move || load_client(addr, &stop, &ok, &failures))
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    /// Requests answered with a 200 so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Waits (up to `within`) until `n` more requests than now got their 200.
    #[track_caller]
    pub fn wait_for_more(&self, n: usize, within: Duration) {
        let target = self.ok() + n;
        assert!(
            wait_until(within, || self.ok() >= target),
            "the load stalled at {} answered requests; failures: {:?}",
            self.ok(),
            self.failures()
        );
    }

    /// Stops the clients; returns (answered requests, failures).
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop_and_join();
        (self.ok(), self.failures())
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn load_client(
    addr: SocketAddr,
    stop: &AtomicBool,
    ok: &AtomicUsize,
    failures: &Mutex<Vec<String>>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream: Option<TcpStream> = None;
    for _ in 0..200_000 {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        let result = (|| {
            if stream.is_none() {
                let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                s.set_nodelay(true)?;
                stream = Some(s);
            }
            let s = stream.as_mut().expect("connected");
            s.write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n")?;
            try_read_response(s)
        })();
        match result {
            Ok(resp) if resp.status == 200 => {
                ok.fetch_add(1, Ordering::SeqCst);
                if resp.connection_has("close") {
                    stream = None;
                }
            }
            Ok(resp) => {
                let failure = format!("{} {}", resp.status, resp.body_str());
                failures.lock().unwrap().push(failure);
                stream = None;
            }
            Err(e) => {
                failures.lock().unwrap().push(e.to_string());
                stream = None;
            }
        }
        // Leave the two shared cores some room for the balancer's other threads.
        thread::sleep(Duration::from_micros(500));
    }
}
