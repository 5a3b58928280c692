//! The access log: one line per request (and per connection that ended before a request for a
//! reason an operator must see), as text or JSON, to stderr or a file.
//!
//! Each worker formats its lines into a buffer of its own and hands whole batches to the shared
//! `Sink` (at most every second, when the buffer fills, and at stop), so a request costs no
//! allocation, no lock and no system call. Whatever a client sent is escaped, so no request can
//! forge a line: text escapes bytes outside visible ASCII (and `"`, `\`) as `\xNN`, JSON escapes
//! control characters and every byte that is not UTF-8 as `\u00NN`.

use crate::config::AccessLog as Format;
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest target kept for the log; a longer one is logged cut, and marked so.
pub const MAX_TARGET: usize = 2048;
const MAX_METHOD: usize = 32;
const MAX_VERSION: usize = 16;

/// A worker hands its lines to the sink once this much is buffered (or a second passed).
const BATCH: usize = 32 * 1024;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A request line as the log shows it, copied out of the head (which the buffer then drops).
pub struct RequestLine {
    method: Field<MAX_METHOD>,
    target: Field<MAX_TARGET>,
    version: Field<MAX_VERSION>,
}

/// Up to `N` bytes inline, and whether more were cut.
struct Field<const N: usize> {
    bytes: [u8; N],
    len: usize,
    cut: bool,
}

impl<const N: usize> Field<N> {
    const EMPTY: Field<N> = Field {
        bytes: [0; N],
        len: 0,
        cut: false,
    };

    fn set(&mut self, from: &[u8]) {
        self.len = from.len().min(N);
        self.cut = from.len() > N;
        self.bytes[..self.len].copy_from_slice(&from[..self.len]);
    }

    fn get(&self) -> Option<&[u8]> {
        (self.len > 0).then(|| &self.bytes[..self.len])
    }
}

impl RequestLine {
    pub const EMPTY: RequestLine = RequestLine {
        method: Field::EMPTY,
        target: Field::EMPTY,
        version: Field::EMPTY,
    };

    /// Forgets the last request's line (its bytes stay, unread).
    pub fn clear(&mut self) {
        self.method.len = 0;
        self.target.len = 0;
        self.target.cut = false;
        self.version.len = 0;
    }

    /// Takes method, target and version from the first line of `head` (what there is of it:
    /// a head refused as malformed may have fewer parts).
    pub fn fill(&mut self, head: &[u8]) {
        let start = head.iter().position(|&b| b != b'\r' && b != b'\n');
        let head = &head[start.unwrap_or(head.len())..];
        let end = head.iter().position(|&b| b == b'\r' || b == b'\n');
        let line = &head[..end.unwrap_or(head.len())];
        let mut parts = line.splitn(2, |&b| b == b' ');
        self.method.set(parts.next().unwrap_or_default());
        let rest = parts.next().unwrap_or_default();
        let (target, version) = match rest.iter().rposition(|&b| b == b' ') {
            // Without its line end the line may be cut short: what follows is target.
            Some(space) if end.is_some() => (&rest[..space], &rest[space + 1..]),
            _ => (rest, &b""[..]),
        };
        self.target.set(target);
        self.version.set(version);
    }
}

/// One line of the access log. Fields that do not apply are `None` (`-` in text, `null` in JSON).
pub struct Entry<'a> {
    pub client: SocketAddr,
    pub line: &'a RequestLine,
    pub status: Option<u16>,
    pub backend: Option<&'a str>,
    /// Bytes of the request and of the response, heads included.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From the first byte of the head to the last byte of the response.
    pub total: Option<Duration>,
    /// Connecting to the backend that answered (`None` on a reused connection).
    pub connect: Option<Duration>,
    /// From the start of the attempt that answered to the first response byte.
    pub first_byte: Option<Duration>,
    pub retries: u32,
    /// The termination code (`ending::Ending::code`).
    pub code: [u8; 2],
    pub request_id: Option<&'a [u8]>,
}

/// Where every worker's lines go: stderr, or a file that SIGUSR1 reopens (for logrotate).
pub struct Sink {
    path: Mutex<Option<PathBuf>>,
    file: Mutex<Option<File>>,
}

impl Sink {
    /// Opens `path` for appending (creating it), or stderr with `None`.
    pub fn open(path: Option<&Path>) -> io::Result<Sink> {
        let file = path.map(append).transpose()?;
        Ok(Sink {
            path: Mutex::new(path.map(Path::to_path_buf)),
            file: Mutex::new(file),
        })
    }

    /// Opens the file again (after logrotate moved it), or `path` instead when it changed on a
    /// reload. On failure the old file stays in use.
    pub fn reopen(&self, path: Option<&Path>) -> io::Result<()> {
        let file = path.map(append).transpose()?;
        *self.file.lock() = file;
        *self.path.lock() = path.map(Path::to_path_buf);
        Ok(())
    }

    pub fn path(&self) -> Option<PathBuf> {
        self.path.lock().clone()
    }

    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        match &mut *self.file.lock() {
            Some(file) => file.write_all(bytes),
            None => io::stderr().lock().write_all(bytes),
        }
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A worker's end of the access log.
pub struct Writer {
    buf: Vec<u8>,
    last_flush: Instant,
}

impl Writer {
    pub fn new(now: Instant) -> Writer {
        Writer {
            buf: Vec::with_capacity(BATCH + MAX_TARGET * 6),
            last_flush: now,
        }
    }

    /// Formats `entry` into the batch; hands the batch over once it is large.
    pub fn write(&mut self, format: Format, entry: &Entry, sink: &Sink) {
        let wall = SystemTime::now();
        match format {
            Format::Off => return,
            Format::Text => text(&mut self.buf, wall, entry),
            Format::Json => json(&mut self.buf, wall, entry),
        }
        if self.buf.len() >= BATCH {
            self.flush(sink);
        }
    }

    /// Hands the batch over when a second has passed since the last time.
    pub fn tick(&mut self, now: Instant, sink: &Sink) {
        if now.duration_since(self.last_flush) >= FLUSH_EVERY {
            self.last_flush = now;
            self.flush(sink);
        }
    }

    pub fn flush(&mut self, sink: &Sink) {
        if !self.buf.is_empty() {
            if let Err(e) = sink.write(&self.buf) {
                log::error!("access log: {e}: {} bytes lost", self.buf.len());
            }
            self.buf.clear();
        }
    }
}

/// `TIME CLIENT "METHOD TARGET VERSION" STATUS BACKEND IN OUT TOTAL CONNECT FIRST_BYTE RETRIES
/// CODE ID`, times in milliseconds.
fn text(out: &mut Vec<u8>, wall: SystemTime, e: &Entry) {
    rfc3339(out, wall);
    let _ = write!(out, " {} \"", e.client);
    text_field(out, e.line.method.get());
    out.push(b' ');
    text_field(out, e.line.target.get());
    if e.line.target.cut {
        out.extend_from_slice(b" (cut)");
    }
    out.push(b' ');
    text_field(out, e.line.version.get());
    out.extend_from_slice(b"\" ");
    text_or_dash(out, e.status);
    out.push(b' ');
    text_field(out, e.backend.map(str::as_bytes));
    let _ = write!(out, " {} {} ", e.bytes_in, e.bytes_out);
    text_or_dash(out, e.total.map(Ms));
    out.push(b' ');
    text_or_dash(out, e.connect.map(Ms));
    out.push(b' ');
    text_or_dash(out, e.first_byte.map(Ms));
    let _ = write!(out, " {} ", e.retries);
    out.extend_from_slice(&e.code);
    out.push(b' ');
    text_field(out, e.request_id);
    out.push(b'\n');
}

/// Milliseconds with three decimals.
struct Ms(Duration);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{:.3}", self.0.as_secs_f64() * 1000.0)
    }
}

fn text_or_dash(out: &mut Vec<u8>, value: Option<impl std::fmt::Display>) {
    match value {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push(b'-'),
    }
}

/// Visible ASCII as it is, anything else (and `"`, `\`) as `\xNN`; `-` for nothing.
fn text_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(value) = value else {
        out.push(b'-');
        return;
    };
    for &b in value {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

fn json(out: &mut Vec<u8>, wall: SystemTime, e: &Entry) {
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339(out, wall);
    let _ = write!(out, "\",\"client\":\"{}\"", e.client);
    json_pair(out, "method", e.line.method.get());
    json_pair(out, "target", e.line.target.get());
    let _ = write!(out, ",\"target_cut\":{}", e.line.target.cut);
    json_pair(out, "version", e.line.version.get());
    json_number(out, "status", e.status);
    json_pair(out, "backend", e.backend.map(str::as_bytes));
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{}",
        e.bytes_in, e.bytes_out
    );
    json_number(out, "total_ms", e.total.map(Ms));
    json_number(out, "connect_ms", e.connect.map(Ms));
    json_number(out, "first_byte_ms", e.first_byte.map(Ms));
    let _ = write!(out, ",\"retries\":{}", e.retries);
    json_pair(out, "termination", Some(&e.code));
    json_pair(out, "request_id", e.request_id);
    out.extend_from_slice(b"}\n");
}

fn json_number(out: &mut Vec<u8>, name: &str, value: Option<impl std::fmt::Display>) {
    let _ = write!(out, ",\"{name}\":");
    text_or_dash(out, value);
    if out.last() == Some(&b'-') {
        out.pop();
        out.extend_from_slice(b"null");
    }
}

fn json_pair(out: &mut Vec<u8>, name: &str, value: Option<&[u8]>) {
    let _ = write!(out, ",\"{name}\":");
    match value {
        Some(value) => json_string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: valid UTF-8 passes, `"` `\` and control characters are escaped, and each
/// byte of an invalid sequence becomes `\u00NN`, so no byte is lost.
fn json_string(out: &mut Vec<u8>, mut value: &[u8]) {
    out.push(b'"');
    while !value.is_empty() {
        let (valid, rest) = match std::str::from_utf8(value) {
            Ok(s) => (s, &b""[..]),
            Err(e) => {
                let (good, bad) = value.split_at(e.valid_up_to());
                let skip = e.error_len().unwrap_or(bad.len());
                // `good` was just checked to be valid.
                let good = std::str::from_utf8(good).unwrap_or_default();
                json_chars(out, good);
                for &b in &bad[..skip] {
                    let _ = write!(out, "\\u{b:04x}");
                }
                value = &bad[skip..];
                continue;
            }
        };
        json_chars(out, valid);
        value = rest;
    }
    out.push(b'"');
}

fn json_chars(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// `2026-12-05T02:45:51.123Z`: UTC, milliseconds.
fn rfc3339(out: &mut Vec<u8>, wall: SystemTime) {
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let day_secs = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        since.subsec_millis()
    );
}

/// Year, month, day of a count of days since 1970-01-01 (the proleptic Gregorian calendar;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(head: &[u8]) -> RequestLine {
        let mut line = RequestLine::EMPTY;
        line.fill(head);
        line
    }

    fn entry(line: &RequestLine) -> Entry<'_> {
        Entry {
            client: "192.0.2.7:40312".parse().unwrap(),
            line,
            status: Some(200),
            backend: Some("s2"),
            bytes_in: 78,
            bytes_out: 301,
            total: Some(Duration::from_micros(1234)),
            connect: None,
            first_byte: Some(Duration::from_micros(800)),
            retries: 1,
            code: *b"--",
            request_id: Some(b"abc"),
        }
    }

    fn at_epoch(format: fn(&mut Vec<u8>, SystemTime, &Entry), e: &Entry) -> String {
        let mut out = Vec::new();
        format(
            &mut out,
            UNIX_EPOCH + Duration::from_millis(1_764_902_751_123),
            e,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_text_line_has_every_field_in_order() {
        let line = line(b"GET /index.html?q=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            at_epoch(text, &entry(&line)),
            "2025-12-05T02:45:51.123Z 192.0.2.7:40312 \"GET /index.html?q=1 HTTP/1.1\" 200 s2 78 301 1.234 - 0.800 1 -- abc\n"
        );
    }

    #[test]
    fn a_json_line_parses_and_uses_null_for_what_does_not_apply() {
        let line = line(b"GET / HTTP/1.1\r\n");
        let mut e = entry(&line);
        e.backend = None;
        e.status = None;
        let json = at_epoch(super::json, &e);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["time"], "2025-12-05T02:45:51.123Z");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["target"], "/");
        assert_eq!(v["target_cut"], false);
        assert_eq!(v["version"], "HTTP/1.1");
        assert!(v["status"].is_null() && v["backend"].is_null() && v["connect_ms"].is_null());
        assert_eq!(v["total_ms"], 1.234);
        assert_eq!(v["retries"], 1);
        assert_eq!(v["termination"], "--");
    }

    #[test]
    fn hostile_bytes_cannot_forge_a_line() {
        let line = line(b"GET /a\"b\\c\x01\xff\xc3\xa9 HTTP/1.1\r\n");
        let e = entry(&line);
        let text = at_epoch(text, &e);
        assert!(
            text.contains("\"GET /a\\x22b\\x5cc\\x01\\xff\\xc3\\xa9 HTTP/1.1\""),
            "{text}"
        );
        let json = at_epoch(super::json, &e);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        // Valid UTF-8 (é) passes; the invalid byte 0xff is kept as U+00FF.
        assert_eq!(v["target"], "/a\"b\\c\u{1}\u{ff}\u{e9}");
        assert_eq!(json.lines().count(), 1);
    }

    #[test]
    fn a_long_target_is_cut_and_marked() {
        let mut head = b"GET /".to_vec();
        head.extend(std::iter::repeat_n(b'a', 3000));
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let line = line(&head);
        let text = at_epoch(text, &entry(&line));
        assert!(text.contains(" (cut) HTTP/1.1\""), "{text}");
        let v: serde_json::Value =
            serde_json::from_str(&at_epoch(super::json, &entry(&line))).unwrap();
        assert_eq!(v["target"].as_str().unwrap().len(), MAX_TARGET);
        assert_eq!(v["target_cut"], true);
    }

    #[test]
    fn a_request_line_without_its_end_has_no_version() {
        let line = line(b"GET /very-long-tar");
        assert_eq!(line.target.get(), Some(&b"/very-long-tar"[..]));
        assert_eq!(line.version.get(), None);
        let empty = super::tests::line(b"");
        assert_eq!(empty.method.get(), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_792), (2026, 12, 5));
    }
}
