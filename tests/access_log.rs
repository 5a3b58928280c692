//! The access log through the real binary, in both formats (text and JSON): one line per
//! request whatever its ending (status, backend, termination code, request line, bytes,
//! times), none for idle connections; hostile bytes escaped; long targets cut and marked;
//! request ids; the log file and its reopening on SIGUSR1; `access_log = off`; and the
//! connections refused before any request.
//!
//! Lines are buffered per worker and flushed at least every second and when lb-mio stops, so a
//! test waits (bounded) for the line it expects, and stops lb-mio with SIGTERM before it
//! counts lines or asserts that some line was never written.

mod support;

use serde_json::Value;
use std::io::Read;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

/// How long a line may take to show: lines are flushed at least every second.
const LINE_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping lb-mio may take to exit.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// One health probe at start and no more: a backend stays "up" whatever it does.
const NO_HEALTH: &str = "[health]\ninterval_ms = 3600000\n";
/// Health checks that mark a failing backend down at its first failed probe.
const FAST_HEALTH: &str = "[health]\ninterval_ms = 20\ntimeout_ms = 500\nrise = 1\nfall = 1\n";

// ---------------------------------------------------------------------------------------------
// Reading the log
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

const FORMATS: [Format; 2] = [Format::Text, Format::Json];

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }

    /// A `[log]` section with this format and the keys `log`, then `extra` (other sections).
    fn config(self, log: &str, extra: &str) -> String {
        format!("[log]\naccess_log = {}\n{log}{extra}", self.name())
    }

    /// The access line `line` is, or `None` for a line of lb-mio's own. Panics on a line that
    /// starts like an access line but is malformed.
    fn parse(self, line: &str) -> Option<Access> {
        match self {
            Format::Text => parse_text(line),
            Format::Json => parse_json(line),
        }
    }
}

/// One access line, whatever its format: `None` where the line has `-` (text) or `null` (JSON).
/// A target is as the line shows it: `\xNN` escapes in text, decoded in JSON.
#[derive(Debug, Clone)]
struct Access {
    time: String,
    client: String,
    method: Option<String>,
    target: Option<String>,
    target_cut: bool,
    version: Option<String>,
    status: Option<u16>,
    backend: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    total_ms: Option<f64>,
    connect_ms: Option<f64>,
    first_byte_ms: Option<f64>,
    retries: u64,
    code: String,
    request_id: Option<String>,
    /// `VERSION/CIPHER/SNI/full|resumed` for a TLS connection (JSON's object in the same form).
    tls: Option<String>,
}

fn malformed(what: &str, line: &str) -> ! {
    panic!("malformed access line ({what}): {line:?}")
}

fn number<T: FromStr>(s: &str, what: &str, line: &str) -> T {
    s.parse().unwrap_or_else(|_| malformed(what, line))
}

/// `TIME CLIENT "METHOD TARGET VERSION" STATUS BACKEND IN OUT TOTAL CONNECT FIRST_BYTE RETRIES
/// CODE ID TLS`; a cut target is followed by ` (cut)` inside the quotes.
fn parse_text(line: &str) -> Option<Access> {
    let (time, rest) = line.split_once(' ')?;
    // lb-mio's own lines begin with `HH:MM:SS [LEVEL]`, access lines with the date.
    let date = time.as_bytes().get(..5)?;
    if !(date[..4].iter().all(u8::is_ascii_digit) && date[4] == b'-') {
        return None;
    }
    let (client, rest) = rest
        .split_once(" \"")
        .unwrap_or_else(|| malformed("no request line", line));
    // `"` inside the request line is escaped, so the first `" ` closes it.
    let (request, rest) = rest
        .split_once("\" ")
        .unwrap_or_else(|| malformed("request line not closed", line));
    let mut words: Vec<&str> = request.split(' ').collect();
    let target_cut = words.len() == 4 && words[2] == "(cut)";
    if target_cut {
        words.remove(2);
    }
    let [method, target, version] = words[..] else {
        malformed("request line is not three words", line)
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let [status, backend, bytes_in, bytes_out, total, connect, first_byte, retries, code, id, tls] =
        fields[..]
    else {
        malformed("not eleven fields after the request line", line)
    };
    let text = |s: &str| (s != "-").then(|| s.to_string());
    let ms = |s: &str, what: &str| (s != "-").then(|| number::<f64>(s, what, line));
    Some(Access {
        time: check_time(time, line),
        client: client.to_string(),
        method: text(method),
        target: text(target),
        target_cut,
        version: text(version),
        status: (status != "-").then(|| number(status, "status", line)),
        backend: text(backend),
        bytes_in: number(bytes_in, "bytes_in", line),
        bytes_out: number(bytes_out, "bytes_out", line),
        total_ms: ms(total, "total"),
        connect_ms: ms(connect, "connect"),
        first_byte_ms: ms(first_byte, "first_byte"),
        retries: number(retries, "retries", line),
        code: code.to_string(),
        request_id: text(id),
        tls: text(tls),
    })
}

const JSON_KEYS: [&str; 17] = [
    "time",
    "client",
    "method",
    "target",
    "target_cut",
    "version",
    "status",
    "backend",
    "bytes_in",
    "bytes_out",
    "total_ms",
    "connect_ms",
    "first_byte_ms",
    "retries",
    "termination",
    "request_id",
    "tls",
];

/// One JSON object with exactly `JSON_KEYS`, each of its type (or null where allowed).
fn parse_json(line: &str) -> Option<Access> {
    if !line.starts_with('{') {
        return None;
    }
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("an access line that is not JSON ({e}): {line:?}"));
    let object = v
        .as_object()
        .unwrap_or_else(|| malformed("not an object", line));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut want = JSON_KEYS.to_vec();
    keys.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys, want, "the keys of {line:?}");
    let text = |k: &str| match &v[k] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        _ => malformed(k, line),
    };
    let ms = |k: &str| match &v[k] {
        Value::Null => None,
        Value::Number(n) => n.as_f64(),
        _ => malformed(k, line),
    };
    let count = |k: &str| v[k].as_u64().unwrap_or_else(|| malformed(k, line));
    let time = text("time").unwrap_or_else(|| malformed("time", line));
    Some(Access {
        time: check_time(&time, line),
        client: text("client").unwrap_or_else(|| malformed("client", line)),
        method: text("method"),
        target: text("target"),
        target_cut: v["target_cut"]
            .as_bool()
            .unwrap_or_else(|| malformed("target_cut", line)),
        version: text("version"),
        status: match &v["status"] {
            Value::Null => None,
            s => Some(
                s.as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or_else(|| malformed("status", line)),
            ),
        },
        backend: text("backend"),
        bytes_in: count("bytes_in"),
        bytes_out: count("bytes_out"),
        total_ms: ms("total_ms"),
        connect_ms: ms("connect_ms"),
        first_byte_ms: ms("first_byte_ms"),
        retries: count("retries"),
        code: text("termination").unwrap_or_else(|| malformed("termination", line)),
        request_id: text("request_id"),
        tls: match &v["tls"] {
            Value::Null => None,
            tls => Some(format!(
                "{}/{}/{}/{}",
                tls["version"]
                    .as_str()
                    .unwrap_or_else(|| malformed("tls", line)),
                tls["cipher"]
                    .as_str()
                    .unwrap_or_else(|| malformed("tls", line)),
                tls["sni"].as_str().unwrap_or("-"),
                match tls["resumed"].as_bool() {
                    Some(true) => "resumed",
                    Some(false) => "full",
                    None => malformed("tls", line),
                }
            )),
        },
    })
}

/// Checks that `time` is RFC 3339 UTC with milliseconds (`2026-12-05T02:45:51.123Z`) and within
/// five minutes of now; returns it.
fn check_time(time: &str, line: &str) -> String {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    let shaped = time.len() == SHAPE.len()
        && time.bytes().zip(SHAPE).all(|(b, &s)| match s {
            b'd' => b.is_ascii_digit(),
            _ => b == s,
        });
    assert!(
        shaped,
        "time {time:?} is not RFC 3339 UTC with ms: {line:?}"
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let off = now.as_secs() as i64 - unix_seconds(time);
    assert!(
        off.abs() < 300,
        "time {time:?} is {off} s off the clock: {line:?}"
    );
    time.to_string()
}

/// Seconds since 1970 of a well-shaped RFC 3339 UTC time (Howard Hinnant's
/// `days_from_civil`).
fn unix_seconds(time: &str) -> i64 {
    let n = |from: usize, to: usize| time[from..to].parse::<i64>().unwrap();
    let (month, day) = (n(5, 7), n(8, 10));
    let year = n(0, 4) - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)
}

/// A line lb-mio logs of its own: `HH:MM:SS [LEVEL] ...`.
fn is_own_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 10
        && b[..8].iter().enumerate().all(|(i, c)| match i {
            2 | 5 => *c == b':',
            _ => c.is_ascii_digit(),
        })
        && &b[8..10] == b" ["
}

/// Every access line on lb-mio's stderr so far.
fn lines(lb: &Lb, format: Format) -> Vec<Access> {
    lb.log().iter().filter_map(|l| format.parse(l)).collect()
}

fn lines_for(lb: &Lb, format: Format, client: SocketAddr) -> Vec<Access> {
    let client = client.to_string();
    let mut all = lines(lb, format);
    all.retain(|a| a.client == client);
    all
}

/// Waits (≤ `LINE_WAIT`) for the access line of `client`; panics, showing the log, if none
/// shows.
#[track_caller]
fn wait_line(lb: &Lb, format: Format, client: SocketAddr) -> Access {
    let mut found = None;
    wait_until(LINE_WAIT, || {
        found = lines_for(lb, format, client).into_iter().next();
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no {} access line for {client} within {LINE_WAIT:?}; log:\n{}",
            format.name(),
            lb.log_text()
        )
    })
}

/// Every line of stderr is lb-mio's own or a well-formed access line (a raw newline in an
/// access line would leave a piece that is neither).
#[track_caller]
fn assert_log_well_formed(lb: &Lb, format: Format) {
    for line in lb.log() {
        assert!(
            is_own_line(&line) || format.parse(&line).is_some(),
            "neither lb-mio's own line nor a {} access line: {line:?}",
            format.name()
        );
    }
}

/// The complete access lines in a file (none if it does not exist); anything else in it fails.
fn file_lines(path: &Path, format: Format) -> Vec<Access> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A batch being written may end with a part line: only complete ones count.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| {
            format
                .parse(l)
                .unwrap_or_else(|| panic!("not an access line in {}: {l:?}", path.display()))
        })
        .collect()
}

/// Waits (≤ `LINE_WAIT`) until the file at `path` has the line of `client`.
#[track_caller]
fn wait_file_line(path: &Path, format: Format, client: SocketAddr) -> Access {
    let client = client.to_string();
    let mut found = None;
    wait_until(LINE_WAIT, || {
        found = file_lines(path, format)
            .into_iter()
            .find(|a| a.client == client);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no access line for {client} in {} within {LINE_WAIT:?}; it has:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Driving lb-mio and clients
// ---------------------------------------------------------------------------------------------

/// Stops lb-mio with SIGTERM (which flushes every worker's lines) and waits until it exited
/// and its last line, logged after the workers stopped, has been read.
#[track_caller]
fn stop(lb: &mut Lb) {
    lb.signal("TERM");
    let exited = lb.wait_exit(STOP_WAIT);
    assert!(
        exited.is_some(),
        "lb-mio still running {STOP_WAIT:?} after SIGTERM"
    );
    lb.expect_log("lb-mio stopped", LINE_WAIT);
}

/// One client connection: its address, what it sent, what it received.
struct Sent {
    client: SocketAddr,
    sent: Vec<u8>,
    received: Vec<u8>,
}

impl Sent {
    /// The status of the response the client got, if one began.
    fn status(&self) -> Option<u16> {
        let rest = self.received.strip_prefix(b"HTTP/1.1 ")?;
        std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Sends `raw` on a new connection and reads until lb-mio closes it.
fn exchange(lb: SocketAddr, raw: &[u8]) -> Sent {
    let mut stream = connect(lb);
    let client = stream.local_addr().unwrap();
    send(&mut stream, raw);
    let received = read_to_close(&mut stream);
    Sent {
        client,
        sent: raw.to_vec(),
        received,
    }
}

/// Sends `raw` on a new connection, reads the response head (and whatever came with it), then
/// resets the connection.
fn reset_after_head(lb: SocketAddr, raw: &[u8]) -> Sent {
    let mut stream = connect(lb);
    let client = stream.local_addr().unwrap();
    send(&mut stream, raw);
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&received, b"\r\n\r\n").is_none() {
        let n = stream.read(&mut buf).expect("reading the response head");
        assert!(n > 0, "closed before the response head");
        received.extend_from_slice(&buf[..n]);
    }
    reset(stream);
    Sent {
        client,
        sent: raw.to_vec(),
        received,
    }
}

/// `GET target` with `Connection: close`.
fn get_req(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Checks what holds for the times of any line: total ≥ first byte ≥ connect, where they apply.
#[track_caller]
fn assert_times(line: &Access, what: &str) {
    let times = [line.total_ms, line.connect_ms, line.first_byte_ms];
    assert!(
        times.iter().flatten().all(|t| *t >= 0.0),
        "{what}: a negative time"
    );
    if let (Some(total), Some(first)) = (line.total_ms, line.first_byte_ms) {
        assert!(total >= first, "{what}: total < first byte");
    }
    if let (Some(total), Some(connect)) = (line.total_ms, line.connect_ms) {
        assert!(total >= connect, "{what}: total < connect");
    }
    if let (Some(first), Some(connect)) = (line.first_byte_ms, line.connect_ms) {
        assert!(first >= connect, "{what}: first byte < connect");
    }
}

// ---------------------------------------------------------------------------------------------
// Every ending: one line, with its status, backend and termination code
// ---------------------------------------------------------------------------------------------

/// The backend `a` of an ending case.
#[derive(Clone, Copy)]
enum Upstream {
    /// A mock backend answering with this.
    Answers(fn(&Request) -> Response),
    /// An address where nothing listens.
    Refuses,
    /// A backend that fails its health checks: none is up.
    Down,
}

/// What the client of an ending case does.
enum Client {
    /// Sends these bytes, then reads until lb-mio closes.
    Sends(Vec<u8>),
    /// Uses up its address's rate with a request on another connection, then `Sends`.
    SendsOverRate(Vec<u8>),
    /// Sends these bytes, reads the response head and resets the connection.
    ResetsAfterHead(Vec<u8>),
}

struct Ending {
    name: &'static str,
    /// Config sections beyond `[log]` and `[health]`.
    config: &'static str,
    upstream: Upstream,
    client: Client,
    /// The status the client gets and the line shows (`None`: no response began).
    status: Option<u16>,
    backend: Option<&'static str>,
    code: &'static str,
    /// Method, target and version as logged; a target ending in `*` is a prefix.
    request: [Option<&'static str>; 3],
    /// A backend connection was made: `connect` applies.
    connected: bool,
    /// A response byte came from the backend: `first_byte` applies (`None`: not checked).
    first_byte: Option<bool>,
    /// The least total time (a timeout's).
    min_total_ms: f64,
}

/// `GET target HTTP/1.1` as logged.
fn get_line(target: &'static str) -> [Option<&'static str>; 3] {
    [Some("GET"), Some(target), Some("HTTP/1.1")]
}

/// What most cases share: a backend answering 200, and a head refused by lb-mio.
fn refused_head() -> Ending {
    Ending {
        name: "",
        config: "",
        upstream: Upstream::Answers(|_| Response::ok("hello")),
        client: Client::Sends(Vec::new()),
        status: None,
        backend: None,
        code: "PR",
        request: [None; 3],
        connected: false,
        first_byte: Some(false),
        min_total_ms: 0.0,
    }
}

/// A 200 that begins, then stalls for a second before the rest of its body.
fn slow_big_body(_: &Request) -> Response {
    let mut first = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n".to_vec();
    first.extend_from_slice(&[b'x'; 1000]);
    Response::script(vec![
        Step::Send(first),
        Step::Sleep(Duration::from_secs(1)),
        Step::Send(vec![b'y'; 199_000]),
    ])
}

/// A 200 of 100 bytes, cut after 40.
fn cut_body(_: &Request) -> Response {
    let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[b'x'; 40]);
    Response::script(vec![Step::Send(bytes), Step::Close])
}

fn endings() -> Vec<Ending> {
    let long_line = format!("GET /{}", "a".repeat(2000)); // never finished
    let big_head = format!(
        "GET /big-head HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1500)
    );
    vec![
        Ending {
            name: "200",
            client: Client::Sends(get_req("/ok")),
            status: Some(200),
            backend: Some("a"),
            code: "--",
            request: get_line("/ok"),
            connected: true,
            first_byte: Some(true),
            ..refused_head()
        },
        Ending {
            name: "400 (two Host headers)",
            client: Client::Sends(b"GET /dup HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
            status: Some(400),
            request: get_line("/dup"),
            ..refused_head()
        },
        Ending {
            name: "408 (head unfinished at header_ms)",
            config: "[timeouts]\nheader_ms = 300\n",
            client: Client::Sends(b"GET /slow HTTP/1.1\r\nHost: a\r\n".to_vec()),
            status: Some(408),
            code: "cR",
            request: get_line("/slow"),
            min_total_ms: 250.0,
            ..refused_head()
        },
        Ending {
            name: "414 (request line over max_header_bytes)",
            config: "[limits]\nmax_header_bytes = 1024\n",
            client: Client::Sends(long_line.into_bytes()),
            status: Some(414),
            request: [Some("GET"), Some("/aaaaaaaaaaaaaaaa*"), None],
            ..refused_head()
        },
        Ending {
            name: "431 (header section over max_header_bytes)",
            config: "[limits]\nmax_header_bytes = 1024\n",
            client: Client::Sends(big_head.into_bytes()),
            status: Some(431),
            request: get_line("/big-head"),
            ..refused_head()
        },
        Ending {
            name: "429 (over client_rate)",
            config: "[limits]\nclient_rate = 1\nclient_burst = 1\n",
            client: Client::SendsOverRate(get_req("/limited")),
            status: Some(429),
            request: get_line("/limited"),
            ..refused_head()
        },
        Ending {
            name: "501 (CONNECT)",
            client: Client::Sends(b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n".to_vec()),
            status: Some(501),
            request: [Some("CONNECT"), Some("a:1"), Some("HTTP/1.1")],
            ..refused_head()
        },
        Ending {
            name: "502 (connect refused)",
            config: "[lb]\nretries = 0\n",
            upstream: Upstream::Refuses,
            client: Client::Sends(get_req("/refused")),
            status: Some(502),
            backend: Some("a"),
            code: "SC",
            request: get_line("/refused"),
            ..refused_head()
        },
        Ending {
            name: "502 (bad response head)",
            config: "[lb]\nretries = 0\n",
            upstream: Upstream::Answers(|_| {
                let garbage = b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec();
                Response::script(vec![Step::Send(garbage), Step::Close])
            }),
            client: Client::Sends(get_req("/garbage")),
            status: Some(502),
            backend: Some("a"),
            code: "SH",
            request: get_line("/garbage"),
            connected: true,
            first_byte: None,
            ..refused_head()
        },
        Ending {
            name: "502 (closed before responding)",
            config: "[lb]\nretries = 0\n",
            upstream: Upstream::Answers(|_| Response::script(vec![Step::Close])),
            client: Client::Sends(get_req("/closed")),
            status: Some(502),
            backend: Some("a"),
            code: "SH",
            request: get_line("/closed"),
            connected: true,
            ..refused_head()
        },
        Ending {
            name: "503 (no backend up)",
            upstream: Upstream::Down,
            client: Client::Sends(get_req("/down")),
            status: Some(503),
            code: "SC",
            request: get_line("/down"),
            ..refused_head()
        },
        Ending {
            name: "504 (no response in backend_ms)",
            config: "[timeouts]\nbackend_ms = 400\n",
            upstream: Upstream::Answers(|_| {
                Response::ok("late").delay(Duration::from_millis(1500))
            }),
            client: Client::Sends(get_req("/late")),
            status: Some(504),
            backend: Some("a"),
            code: "sH",
            request: get_line("/late"),
            connected: true,
            min_total_ms: 350.0,
            ..refused_head()
        },
        Ending {
            name: "client gone mid-response",
            upstream: Upstream::Answers(slow_big_body),
            client: Client::ResetsAfterHead(get_req("/big")),
            status: Some(200),
            backend: Some("a"),
            code: "CD",
            request: get_line("/big"),
            connected: true,
            first_byte: Some(true),
            ..refused_head()
        },
        Ending {
            name: "backend gone mid-response",
            config: "[timeouts]\nbackend_ms = 3000\n",
            upstream: Upstream::Answers(cut_body),
            client: Client::Sends(get_req("/cut")),
            status: Some(200),
            backend: Some("a"),
            code: "SD",
            request: get_line("/cut"),
            connected: true,
            first_byte: Some(true),
            ..refused_head()
        },
    ]
}

/// Whether a logged field matches what a case wants (`*` at the end: a prefix).
fn matches(want: Option<&str>, got: Option<&str>) -> bool {
    match (want.map(|w| w.strip_suffix('*').ok_or(w)), got) {
        (Some(Ok(prefix)), Some(got)) => got.starts_with(prefix),
        (Some(Err(exact)), Some(got)) => got == exact,
        (None, None) => true,
        _ => false,
    }
}

/// Runs one ending case on a fresh lb-mio and checks its one line.
fn check_ending(format: Format, case: &Ending) {
    let backend = match case.upstream {
        Upstream::Answers(answer) => Some(Backend::start("a", answer)),
        Upstream::Refuses => None,
        Upstream::Down => {
            let backend = Backend::named("a");
            backend.set_healthy(false);
            Some(backend)
        }
    };
    let addr = backend.as_ref().map_or_else(dead_addr, |b| b.addr);
    let down = matches!(case.upstream, Upstream::Down);
    let health = if down { FAST_HEALTH } else { NO_HEALTH };
    let extra = format!("{}{health}", case.config);
    let mut lb = Lb::start(&ini(&[("a", addr)], &format.config("", &extra)));
    if down {
        lb.expect_log("backend a is down", LINE_WAIT);
    }
    let seen = match &case.client {
        Client::Sends(raw) => exchange(lb.addr, raw),
        Client::SendsOverRate(raw) => {
            assert_eq!(exchange(lb.addr, &get_req("/first")).status(), Some(200));
            exchange(lb.addr, raw)
        }
        Client::ResetsAfterHead(raw) => reset_after_head(lb.addr, raw),
    };
    let what = format!("{} ({})", case.name, format.name());
    assert_eq!(
        seen.status(),
        case.status,
        "{what}: the client got {:?}",
        seen.shown()
    );

    let line = wait_line(&lb, format, seen.client);
    let what = format!("{what}: {line:?}");
    assert_eq!(line.status, case.status, "{what}");
    assert_eq!(line.backend.as_deref(), case.backend, "{what}");
    assert_eq!(line.code, case.code, "{what}");
    let [method, target, version] = case.request;
    assert_eq!(line.method.as_deref(), method, "{what}");
    assert!(matches(target, line.target.as_deref()), "{what}: target");
    assert_eq!(line.version.as_deref(), version, "{what}");
    assert!(!line.target_cut, "{what}");
    // A head over `max_header_bytes` (1024) is refused once that much is in.
    let head = seen.sent.len().min(1024) as u64;
    assert!(line.bytes_in >= head, "{what}: bytes_in < {head}");
    let out = seen.received.len() as u64;
    assert!(line.bytes_out >= out, "{what}: bytes_out < {out} received");
    assert_times(&line, &what);
    let total = line.total_ms.unwrap_or_else(|| panic!("{what}: no total"));
    assert!(total >= case.min_total_ms, "{what}: total too short");
    assert_eq!(line.connect_ms.is_some(), case.connected, "{what}: connect");
    if let Some(first_byte) = case.first_byte {
        assert_eq!(
            line.first_byte_ms.is_some(),
            first_byte,
            "{what}: first byte"
        );
    }
    assert_eq!(line.retries, 0, "{what}");
    assert_eq!(line.request_id, None, "{what}: request ids are off");
    assert_eq!(line.tls, None, "{what}: a plain connection");

    stop(&mut lb);
    let count = lines_for(&lb, format, seen.client).len();
    assert_eq!(
        count,
        1,
        "{what}: lines for one request; log:\n{}",
        lb.log_text()
    );
    assert_log_well_formed(&lb, format);
}

/// Every case of `endings()` in `format`; a failing case does not hide the others.
fn check_endings(format: Format) {
    let mut failed = Vec::new();
    for case in endings() {
        if panic::catch_unwind(AssertUnwindSafe(|| check_ending(format, &case))).is_err() {
            failed.push(case.name);
        }
    }
    assert!(
        failed.is_empty(),
        "{} cases failed (panics above): {failed:?}",
        format.name()
    );
}

#[test]
fn every_ending_gets_one_text_line_with_its_status_backend_and_code() {
    check_endings(Format::Text);
}

#[test]
fn every_ending_gets_one_json_line_with_its_status_backend_and_code() {
    check_endings(Format::Json);
}

// ---------------------------------------------------------------------------------------------
// Keep-alive and idle connections
// ---------------------------------------------------------------------------------------------

#[test]
fn keep_alive_requests_get_a_line_each_in_order_and_idle_closes_none() {
    for format in FORMATS {
        let backend = Backend::named("a");
        let extra = format!("[timeouts]\nidle_ms = 300\n{NO_HEALTH}");
        let mut lb = Lb::start(&ini(&[("a", backend.addr)], &format.config("", &extra)));
        // A connection that sends nothing and closes: no line. (Closed first, so the one
        // worker has seen it long before it stops.)
        let silent = connect(lb.addr);
        let silent_addr = silent.local_addr().unwrap();
        drop(silent);

        let mut stream = connect(lb.addr);
        let client = stream.local_addr().unwrap();
        let paths = ["/1", "/2", "/3"];
        let mut received = Vec::new();
        for path in paths {
            let resp = get_on(&mut stream, path);
            assert_eq!(resp.status, 200, "{}", resp.head_str());
            received.push((resp.head.len() + resp.raw_body.len()) as u64);
        }
        // One more keep-alive connection, closed by the client while idle.
        let mut other = connect(lb.addr);
        let other_addr = other.local_addr().unwrap();
        assert_eq!(get_on(&mut other, "/other").status, 200);
        drop(other);
        // lb-mio closes the first when it has been idle for idle_ms.
        assert!(
            closes_within(&mut stream, Duration::from_secs(3)),
            "{}: the idle connection was not closed",
            format.name()
        );
        assert_eq!(
            backend.connection_count(),
            1,
            "the four requests share one backend connection"
        );
        stop(&mut lb);

        let got = lines_for(&lb, format, client);
        let targets: Vec<_> = got.iter().map(|l| l.target.as_deref()).collect();
        let want: Vec<_> = paths.iter().map(|p| Some(*p)).collect();
        assert_eq!(targets, want, "{}; log:\n{}", format.name(), lb.log_text());
        for (i, line) in got.iter().enumerate() {
            let what = format!("request {i} ({}): {line:?}", format.name());
            assert_eq!(line.status, Some(200), "{what}");
            assert_eq!(line.backend.as_deref(), Some("a"), "{what}");
            assert_eq!(line.code, "--", "{what}");
            let head = format!("GET {} HTTP/1.1\r\nHost: lb.test\r\n\r\n", paths[i]);
            assert!(line.bytes_in >= head.len() as u64, "{what}: bytes_in");
            assert!(line.bytes_out >= received[i], "{what}: bytes_out");
            assert_times(line, &what);
            assert!(line.first_byte_ms.is_some(), "{what}: first byte");
            // Only the first request opened the backend connection; the others reused it.
            assert_eq!(line.connect_ms.is_some(), i == 0, "{what}: connect");
        }
        assert!(got.windows(2).all(|w| w[0].time <= w[1].time), "{got:?}");
        assert_eq!(
            lines_for(&lb, format, other_addr).len(),
            1,
            "{}",
            lb.log_text()
        );
        assert_eq!(
            lines_for(&lb, format, silent_addr).len(),
            0,
            "{}",
            lb.log_text()
        );
        assert_eq!(lines(&lb, format).len(), 4, "{}", lb.log_text());
        assert_log_well_formed(&lb, format);
    }
}

// ---------------------------------------------------------------------------------------------
// What a client sends cannot break a line
// ---------------------------------------------------------------------------------------------

/// A target: its bytes, as a text line shows it, as a JSON line shows it, the version logged
/// (a line end inside the request line ends what is logged).
type Hostile = (
    &'static [u8],
    &'static str,
    &'static str,
    Option<&'static str>,
);

const HOSTILE: [Hostile; 5] = [
    (
        b"/caf%C3%A9/\xff",
        r"/caf%C3%A9/\xff",
        "/caf%C3%A9/\u{ff}",
        Some("HTTP/1.1"),
    ),
    (
        b"/caf\xc3\xa9",
        r"/caf\xc3\xa9",
        "/caf\u{e9}",
        Some("HTTP/1.1"),
    ),
    (b"/q\"\\", r"/q\x22\x5c", "/q\"\\", Some("HTTP/1.1")),
    (
        b"/ctl\x01\x7f",
        r"/ctl\x01\x7f",
        "/ctl\u{1}\u{7f}",
        Some("HTTP/1.1"),
    ),
    (b"/x\n{\"forged\":true}", "/x", "/x", None),
];

#[test]
fn hostile_bytes_in_a_target_are_escaped_and_every_line_parses() {
    for format in FORMATS {
        let backend = Backend::named("a");
        let mut lb = Lb::start(&ini(&[("a", backend.addr)], &format.config("", NO_HEALTH)));
        for (bytes, as_text, as_json, version) in HOSTILE {
            let raw = [
                b"GET ",
                bytes,
                b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            ]
            .concat();
            let seen = exchange(lb.addr, &raw);
            let line = wait_line(&lb, format, seen.client);
            let what = format!("{:?} ({}): {line:?}", seen.shown(), format.name());
            assert!(seen.status().is_some(), "{what}: no answer");
            assert_eq!(line.status, seen.status(), "{what}");
            let want = match format {
                Format::Text => as_text,
                Format::Json => as_json,
            };
            assert_eq!(line.method.as_deref(), Some("GET"), "{what}");
            assert_eq!(line.target.as_deref(), Some(want), "{what}");
            assert_eq!(line.version.as_deref(), version, "{what}");
        }
        stop(&mut lb);
        assert_log_well_formed(&lb, format);
        assert_eq!(lines(&lb, format).len(), HOSTILE.len(), "{}", lb.log_text());
        assert_eq!(lb.count_log("forged"), 0, "{}", lb.log_text());
    }
}

#[test]
fn a_target_over_2048_bytes_is_logged_cut_and_marked() {
    for format in FORMATS {
        let backend = Backend::named("a");
        let extra = format!("[limits]\nmax_header_bytes = 15360\n{NO_HEALTH}");
        let lb = Lb::start(&ini(&[("a", backend.addr)], &format.config("", &extra)));
        for (len, cut) in [(2048, false), (3000, true)] {
            let target = format!("/{}", "t".repeat(len - 1));
            let seen = exchange(lb.addr, &get_req(&target));
            assert_eq!(seen.status(), Some(200), "{}", seen.shown());
            let line = wait_line(&lb, format, seen.client);
            let what = format!("{len} bytes ({})", format.name());
            assert_eq!(line.target_cut, cut, "{what}");
            assert_eq!(line.target.as_deref(), Some(&target[..2048]), "{what}");
            assert_eq!(line.version.as_deref(), Some("HTTP/1.1"), "{what}");
            assert!(line.bytes_in >= seen.sent.len() as u64, "{what}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------------

fn is_fresh_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[test]
fn request_ids_are_forwarded_returned_and_logged_alike() {
    let max = "i".repeat(128);
    let over = "x".repeat(129);
    // (target, the ids the client sends, whether its id is kept)
    let cases: [(&str, Vec<&str>, bool); 5] = [
        ("/none", vec![], false),
        ("/own", vec!["client-id-42"], true),
        ("/longest", vec![&max], true),
        ("/too-long", vec![&over], false),
        ("/two", vec!["one", "two"], false),
    ];
    for format in FORMATS {
        let backend = Backend::named("a");
        let extra = format!("[lb]\nrequest_id = X-Request-Id\n{NO_HEALTH}");
        let lb = Lb::start(&ini(&[("a", backend.addr)], &format.config("", &extra)));
        let mut fresh = Vec::new();
        for (target, sent, kept) in &cases {
            let what = format!("{target} ({})", format.name());
            let mut raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
            for id in sent {
                raw.push_str(&format!("X-Request-Id: {id}\r\n"));
            }
            raw.push_str("\r\n");
            let mut stream = connect(lb.addr);
            let client = stream.local_addr().unwrap();
            send(&mut stream, &raw);
            let resp = read_response(&mut stream);
            assert_eq!(resp.status, 200, "{what}: {}", resp.head_str());
            let returned = resp.header_all("x-request-id");
            let request = backend
                .requests()
                .into_iter()
                .find(|r| r.target == *target)
                .unwrap_or_else(|| panic!("{what}: the backend did not get it"));
            let forwarded = request.header_all("x-request-id");
            assert_eq!(forwarded.len(), 1, "{what}: {}", request.head_str());
            assert_eq!(returned, forwarded, "{what}: {}", resp.head_str());
            let line = wait_line(&lb, format, client);
            assert_eq!(line.request_id.as_deref(), Some(forwarded[0]), "{what}");
            if *kept {
                assert_eq!(forwarded[0], sent[0], "{what}: the client's id is kept");
            } else {
                assert!(is_fresh_id(forwarded[0]), "{what}: {:?}", forwarded[0]);
                assert!(!sent.contains(&forwarded[0]), "{what}");
                fresh.push(forwarded[0].to_string());
            }
        }
        let mut distinct = fresh.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), fresh.len(), "fresh ids repeat: {fresh:?}");
    }
}

#[test]
fn a_head_refused_before_its_exchange_gets_a_fresh_id_in_its_reply_and_line() {
    for format in FORMATS {
        let backend = Backend::named("a");
        let extra = format!("[lb]\nrequest_id = X-Request-Id\n{NO_HEALTH}");
        let lb = Lb::start(&ini(&[("a", backend.addr)], &format.config("", &extra)));
        let refused = exchange(lb.addr, b"GET / HTTP/1.1\r\nX-Request-Id: mine\r\n\r\n");
        assert_eq!(refused.status(), Some(400), "{}", refused.shown());
        let id = refused
            .shown()
            .lines()
            .find_map(|l| l.strip_prefix("X-Request-Id: ").map(str::to_string))
            .unwrap_or_else(|| panic!("no id in {}", refused.shown()));
        assert!(is_fresh_id(&id), "{id:?}");
        let line = wait_line(&lb, format, refused.client);
        assert_eq!(line.request_id.as_deref(), Some(id.as_str()), "{line:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Where lines go
// ---------------------------------------------------------------------------------------------

#[test]
fn lines_go_to_the_file_and_to_a_new_one_after_a_move_and_sigusr1() {
    for format in FORMATS {
        let backend = Backend::named("a");
        let file = TempFile::new(".log", b"");
        // Removed on drop, like the file.
        let moved = TempFile {
            path: PathBuf::from(format!("{}.1", file.path_str())),
        };
        let log = format!("access_log_file = {}\n", file.path_str());
        let mut lb = Lb::start(&ini(
            &[("a", backend.addr)],
            &format.config(&log, NO_HEALTH),
        ));

        let before = exchange(lb.addr, &get_req("/before"));
        assert_eq!(before.status(), Some(200), "{}", before.shown());
        wait_file_line(file.path(), format, before.client);

        std::fs::rename(file.path(), moved.path()).expect("move the log");
        lb.signal("USR1");
        lb.expect_log(&format!("access log: {}", file.path_str()), LINE_WAIT);
        let after = exchange(lb.addr, &get_req("/after"));
        assert_eq!(after.status(), Some(200), "{}", after.shown());
        wait_file_line(file.path(), format, after.client);
        stop(&mut lb);

        let clients = |path: &Path| -> Vec<String> {
            let lines = file_lines(path, format);
            lines.into_iter().map(|a| a.client).collect()
        };
        let what = format.name();
        assert_eq!(clients(moved.path()), [before.client.to_string()], "{what}");
        assert_eq!(clients(file.path()), [after.client.to_string()], "{what}");
        assert!(lines(&lb, format).is_empty(), "{what}: {}", lb.log_text());
        assert_log_well_formed(&lb, format);
    }
}

#[test]
fn no_line_is_written_when_the_access_log_is_off_or_not_configured() {
    for log in ["[log]\naccess_log = off\n", ""] {
        let backend = Backend::named("a");
        let mut lb = Lb::start(&ini(&[("a", backend.addr)], &format!("{log}{NO_HEALTH}")));
        let served = exchange(lb.addr, &get_req("/unlogged-200"));
        assert_eq!(served.status(), Some(200), "{}", served.shown());
        let bad = b"GET /unlogged-400 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert_eq!(exchange(lb.addr, bad).status(), Some(400));
        stop(&mut lb);
        for line in lb.log() {
            assert!(
                is_own_line(&line),
                "{log:?}: {line:?} in:\n{}",
                lb.log_text()
            );
        }
        assert_eq!(lb.count_log("/unlogged"), 0, "{log:?}: {}", lb.log_text());
    }
}

// ---------------------------------------------------------------------------------------------
// Connections refused before any request
// ---------------------------------------------------------------------------------------------

/// The line of a connection closed unanswered before any request.
#[track_caller]
fn assert_refused_unanswered(line: &Access, what: &str) {
    assert_eq!(line.code, "PR", "{what}");
    assert_eq!(line.status, None, "{what}");
    assert_eq!(line.backend, None, "{what}");
    assert_eq!(line.method, None, "{what}");
    assert_eq!(line.bytes_out, 0, "{what}");
    assert_eq!(line.connect_ms, None, "{what}");
    assert_eq!(line.first_byte_ms, None, "{what}");
    assert_times(line, what);
}

#[test]
fn a_connection_over_client_connections_gets_a_pr_line_without_a_request() {
    for format in FORMATS {
        let backend = Backend::named("a");
        let extra = format!("[limits]\nclient_connections = 1\n{NO_HEALTH}");
        let mut lb = Lb::start(&ini(&[("a", backend.addr)], &format.config("", &extra)));
        let mut first = connect(lb.addr);
        let first_addr = first.local_addr().unwrap();
        assert_eq!(get_on(&mut first, "/first").status, 200);
        let refused = exchange(lb.addr, &get_req("/second"));
        assert!(refused.received.is_empty(), "answered: {}", refused.shown());

        let line = wait_line(&lb, format, refused.client);
        let what = format!("{}: {line:?}", format.name());
        assert_refused_unanswered(&line, &what);
        assert_eq!((line.target, line.version), (None, None), "{what}");
        drop(first);
        stop(&mut lb);
        assert_eq!(lines_for(&lb, format, refused.client).len(), 1, "{what}");
        assert_eq!(lines_for(&lb, format, first_addr).len(), 1, "{what}");
        assert_log_well_formed(&lb, format);
    }
}

/// A balancer's health check sends its PROXY header and closes (or goes silent): that is no
/// request, so no line and no 408.
#[test]
fn a_proxy_header_with_nothing_after_it_gets_no_line() {
    let header = b"PROXY TCP4 192.0.2.9 10.0.0.1 40000 80\r\n";
    let backend = Backend::named("a");
    let extra = format!(
        "[lb]\naccept_proxy = true\nproxy_from = 127.0.0.1\n[timeouts]\nheader_ms = 300\n{NO_HEALTH}"
    );
    let mut lb = Lb::start(&ini(
        &[("a", backend.addr)],
        &Format::Text.config("", &extra),
    ));
    let mut closed = connect(lb.addr);
    send(&mut closed, header);
    drop(closed);
    let mut silent = connect(lb.addr);
    send(&mut silent, header);
    let rest = read_to_close(&mut silent);
    assert!(rest.is_empty(), "a silent connection got {:?}", show(&rest));
    stop(&mut lb);
    let client: SocketAddr = "192.0.2.9:40000".parse().unwrap();
    assert_eq!(
        lines_for(&lb, Format::Text, client).len(),
        0,
        "{}",
        lb.log_text()
    );
}

/// A head still arriving when the drain time runs out ends with a `K` line.
#[test]
fn a_head_cut_short_by_the_drain_deadline_gets_a_k_line() {
    let backend = Backend::named("a");
    let extra = format!("[lb]\ndrain_timeout_s = 1\n{NO_HEALTH}");
    let mut lb = Lb::start(&ini(
        &[("a", backend.addr)],
        &Format::Json.config("", &extra),
    ));
    let mut client = connect(lb.addr);
    let addr = client.local_addr().unwrap();
    send(&mut client, "GET /half HTTP/1.1\r\nHost: a\r\n");
    // The head is in the worker before it is told to stop.
    lb.sync_log();
    stop(&mut lb);
    let found = lines_for(&lb, Format::Json, addr);
    assert_eq!(found.len(), 1, "{}", lb.log_text());
    assert_eq!(found[0].code, "KR", "{:?}", found[0]);
    assert_eq!(found[0].target.as_deref(), Some("/half"), "{:?}", found[0]);
}

#[test]
fn a_bad_proxy_header_from_a_trusted_source_gets_a_pr_line() {
    let proxied = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 80\r\n";
    let bad_header = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n"; // no destination port
    for format in FORMATS {
        let backend = Backend::named("a");
        let extra = format!("[lb]\naccept_proxy = true\nproxy_from = 127.0.0.1\n{NO_HEALTH}");
        let mut lb = Lb::start(&ini(&[("a", backend.addr)], &format.config("", &extra)));
        // A good header names the client its line shows.
        let good = exchange(lb.addr, &[&proxied[..], &get_req("/proxied")].concat());
        assert_eq!(good.status(), Some(200), "{}", good.shown());
        let line = wait_line(&lb, format, "192.0.2.7:56324".parse().unwrap());
        assert_eq!(line.target.as_deref(), Some("/proxied"), "{line:?}");
        assert_eq!(line.code, "--", "{line:?}");

        let bad = exchange(lb.addr, &[&bad_header[..], &get_req("/bad")].concat());
        assert!(bad.received.is_empty(), "answered: {}", bad.shown());
        let line = wait_line(&lb, format, bad.client);
        let what = format!("{}: {line:?}", format.name());
        assert_refused_unanswered(&line, &what);
        assert!(line.bytes_in >= bad_header.len() as u64, "{what}: bytes_in");
        stop(&mut lb);
        assert_eq!(lines_for(&lb, format, bad.client).len(), 1, "{what}");
        assert_log_well_formed(&lb, format);
        assert_eq!(backend.request_count(), 1);
    }
}
