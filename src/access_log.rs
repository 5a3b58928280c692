//! The access log: one line per request (and per connection that ended before a request for a
//! reason an operator must see), as text or JSON, to stderr or a file.
//!
//! Each worker formats its lines into a buffer of its own and hands whole batches to the shared
//! `Sink` (at most once a second, when the buffer fills, and at stop), so a request costs no
//! allocation, no lock and no system call. Whatever a client sent is escaped, so no request can
//! forge a line: text escapes bytes outside visible ASCII (and `"`, `\`) as `\xNN`, JSON escapes
//! control characters and every byte that is not UTF-8 as `\u00NN`.

use crate::config::AccessLog as Format;
use crate::tls::Session;
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

    /// The line of `head`.
    pub fn of(head: &[u8]) -> RequestLine {
        let mut line = RequestLine::EMPTY;
        line.fill(head);
        line
    }

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
    /// The TLS session the request came over.
    pub tls: Option<Session<'a>>,
}

/// Where every worker's lines go: stderr, or a file that SIGUSR1 reopens (for logrotate).
pub struct Sink {
    /// The file and its path; `None` for stderr.
    file: Mutex<Option<(PathBuf, File)>>,
}

impl Sink {
    /// Opens `path` for appending (creating it), or stderr with `None`.
    pub fn open(path: Option<&Path>) -> io::Result<Sink> {
        Ok(Sink {
            file: Mutex::new(opened(path)?),
        })
    }

    /// Opens the file again (after logrotate moved it), or `path` instead when it changed on a
    /// reload. On failure the old file stays in use.
    pub fn reopen(&self, path: Option<&Path>) -> io::Result<()> {
        *self.file.lock() = opened(path)?;
        Ok(())
    }

    pub fn path(&self) -> Option<PathBuf> {
        self.file.lock().as_ref().map(|(path, _)| path.clone())
    }

    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        match &mut *self.file.lock() {
            Some((_, file)) => file.write_all(bytes),
            None => io::stderr().lock().write_all(bytes),
        }
    }
}

fn opened(path: Option<&Path>) -> io::Result<Option<(PathBuf, File)>> {
    path.map(|path| Ok((path.to_path_buf(), append(path)?)))
        .transpose()
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// A worker's end of the access log.
pub struct Writer {
    buf: Vec<u8>,
    last_flush: Instant,
    clock: Clock,
}

impl Writer {
    pub fn new(now: Instant) -> Writer {
        Writer {
            buf: Vec::with_capacity(BATCH + MAX_TARGET * 6),
            last_flush: now,
            clock: Clock::default(),
        }
    }

    /// Formats `entry` into the batch; hands the batch over once it is large.
    pub fn write(&mut self, format: Format, entry: &Entry, sink: &Sink) {
        let time = self.clock.stamp(SystemTime::now());
        match format {
            Format::Off => return,
            Format::Text => text(&mut self.buf, &time, entry),
            Format::Json => json(&mut self.buf, &time, entry),
        }
        if self.buf.len() >= BATCH {
            self.flush(sink);
        }
    }

    /// Hands the batch over when a second has passed since the last time: a line waits a
    /// second at most, and the first after a quiet second not at all.
    pub fn tick(&mut self, now: Instant, sink: &Sink) {
        if !self.buf.is_empty() && now.duration_since(self.last_flush) >= FLUSH_EVERY {
            self.last_flush = now;
            self.flush(sink);
        }
    }

    /// When `tick` hands the batch over; `None` while it is empty.
    pub fn next_flush(&self) -> Option<Instant> {
        (!self.buf.is_empty()).then_some(self.last_flush + FLUSH_EVERY)
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

/// `2026-12-05T02:45:51.123Z`.
type Stamp = [u8; 24];

/// Writes RFC 3339 times, the date and time of day worked out once per second.
#[derive(Default)]
struct Clock {
    second: u64,
    stamp: Stamp,
}

impl Clock {
    fn stamp(&mut self, wall: SystemTime) -> Stamp {
        let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second || self.stamp[0] == 0 {
            self.second = since.as_secs();
            self.stamp = rfc3339_second(self.second);
        }
        let ms = since.subsec_millis();
        self.stamp[20..23].copy_from_slice(&three_digits(ms));
        self.stamp
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix timestamp (UTC), as the admin API shows dates.
pub fn rfc3339(secs: i64) -> String {
    let stamp = rfc3339_second(secs.max(0) as u64);
    format!("{}Z", String::from_utf8_lossy(&stamp[..19]))
}

/// `YYYY-MM-DDTHH:MM:SS.000Z` for a second since the epoch (UTC).
fn rfc3339_second(secs: u64) -> Stamp {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let day_secs = secs % 86_400;
    let mut stamp = *b"0000-00-00T00:00:00.000Z";
    let year = year.clamp(0, 9999) as u32;
    stamp[0..2].copy_from_slice(&two_digits(year / 100));
    stamp[2..4].copy_from_slice(&two_digits(year % 100));
    stamp[5..7].copy_from_slice(&two_digits(month));
    stamp[8..10].copy_from_slice(&two_digits(day));
    stamp[11..13].copy_from_slice(&two_digits((day_secs / 3600) as u32));
    stamp[14..16].copy_from_slice(&two_digits((day_secs / 60 % 60) as u32));
    stamp[17..19].copy_from_slice(&two_digits((day_secs % 60) as u32));
    stamp
}

fn two_digits(n: u32) -> [u8; 2] {
    [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

fn three_digits(n: u32) -> [u8; 3] {
    [
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// Decimal digits without the formatting machinery (a line has a dozen numbers), two at a time.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839404142434445464748495051525354555657585960616263\
        6465666768697071727374757677787980818283848586878889909192939495969798\
        99";
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[n as usize * 2..n as usize * 2 + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + n as u8;
    }
    // Byte by byte: a call to memcpy costs more than these few stores.
    for &digit in &digits[at..] {
        out.push(digit);
    }
}

/// Milliseconds with three decimals.
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros() as u64;
    push_u64(out, micros / 1000);
    out.push(b'.');
    out.extend_from_slice(&three_digits((micros % 1000) as u32));
}

fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
            out.push(b':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// A value, or what stands for none: `-` in text, `null` in JSON.
fn push_or<T>(out: &mut Vec<u8>, value: Option<T>, none: &[u8], push: fn(&mut Vec<u8>, T)) {
    match value {
        Some(v) => push(out, v),
        None => out.extend_from_slice(none),
    }
}

/// `TIME CLIENT "METHOD TARGET VERSION" STATUS BACKEND IN OUT TOTAL CONNECT FIRST_BYTE RETRIES
/// CODE ID TLS`, times in milliseconds; TLS is `VERSION/CIPHER/SNI/full|resumed` or `-`.
fn text(out: &mut Vec<u8>, time: &Stamp, e: &Entry) {
    out.extend_from_slice(time);
    out.push(b' ');
    push_addr(out, e.client);
    out.extend_from_slice(b" \"");
    text_field(out, e.line.method.get());
    out.push(b' ');
    text_field(out, e.line.target.get());
    if e.line.target.cut {
        out.extend_from_slice(b" (cut)");
    }
    out.push(b' ');
    text_field(out, e.line.version.get());
    out.extend_from_slice(b"\" ");
    push_or(out, e.status.map(u64::from), b"-", push_u64);
    out.push(b' ');
    text_field(out, e.backend.map(str::as_bytes));
    for n in [e.bytes_in, e.bytes_out] {
        out.push(b' ');
        push_u64(out, n);
    }
    for d in [e.total, e.connect, e.first_byte] {
        out.push(b' ');
        push_or(out, d, b"-", push_ms);
    }
    out.push(b' ');
    push_u64(out, u64::from(e.retries));
    out.push(b' ');
    out.extend_from_slice(&e.code);
    out.push(b' ');
    text_field(out, e.request_id);
    out.push(b' ');
    match &e.tls {
        None => out.push(b'-'),
        Some(tls) => {
            for part in [tls.version, tls.cipher] {
                out.extend_from_slice(part.as_bytes());
                out.push(b'/');
            }
            text_field(out, tls.sni.map(str::as_bytes));
            out.extend_from_slice(match tls.resumed {
                true => b"/resumed",
                false => b"/full",
            });
        }
    }
    out.push(b'\n');
}

/// Visible ASCII as it is, anything else (and `"`, `\`) as `\xNN`; `-` for nothing.
fn text_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(value) = value else {
        out.push(b'-');
        return;
    };
    let plain = |b: &u8| b.is_ascii_graphic() && *b != b'"' && *b != b'\\';
    if value.iter().all(plain) {
        out.extend_from_slice(value);
        return;
    }
    for b in value {
        if plain(b) {
            out.push(*b);
        } else {
            let hex = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'x',
                hex[usize::from(b >> 4)],
                hex[usize::from(b & 15)],
            ]);
        }
    }
}

fn json(out: &mut Vec<u8>, time: &Stamp, e: &Entry) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(time);
    out.extend_from_slice(b"\",\"client\":\"");
    push_addr(out, e.client);
    out.push(b'"');
    json_pair(out, "method", e.line.method.get());
    json_pair(out, "target", e.line.target.get());
    out.extend_from_slice(match e.line.target.cut {
        true => b",\"target_cut\":true",
        false => b",\"target_cut\":false",
    });
    json_pair(out, "version", e.line.version.get());
    json_key(out, "status");
    push_or(out, e.status.map(u64::from), b"null", push_u64);
    json_pair(out, "backend", e.backend.map(str::as_bytes));
    json_key(out, "bytes_in");
    push_u64(out, e.bytes_in);
    json_key(out, "bytes_out");
    push_u64(out, e.bytes_out);
    for (name, d) in [
        ("total_ms", e.total),
        ("connect_ms", e.connect),
        ("first_byte_ms", e.first_byte),
    ] {
        json_key(out, name);
        push_or(out, d, b"null", push_ms);
    }
    json_key(out, "retries");
    push_u64(out, u64::from(e.retries));
    json_pair(out, "termination", Some(&e.code));
    json_pair(out, "request_id", e.request_id);
    json_key(out, "tls");
    match &e.tls {
        None => out.extend_from_slice(b"null"),
        Some(tls) => {
            out.extend_from_slice(b"{\"version\":\"");
            out.extend_from_slice(tls.version.as_bytes());
            out.extend_from_slice(b"\"");
            json_pair(out, "cipher", Some(tls.cipher.as_bytes()));
            json_pair(out, "sni", tls.sni.map(str::as_bytes));
            json_key(out, "resumed");
            out.extend_from_slice(if tls.resumed { b"true" } else { b"false" });
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"}\n");
}

/// `,"name":`
fn json_key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn json_pair(out: &mut Vec<u8>, name: &str, value: Option<&[u8]>) {
    json_key(out, name);
    push_or(out, value, b"null", json_string);
}

/// A JSON string: valid UTF-8 passes, `"` `\` and control characters are escaped, and each
/// byte of an invalid sequence becomes `\u00NN`, so no byte is lost.
fn json_string(out: &mut Vec<u8>, mut value: &[u8]) {
    out.push(b'"');
    if value
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.extend_from_slice(value);
        out.push(b'"');
        return;
    }
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
        RequestLine::of(head)
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
            tls: None,
        }
    }

    fn at_epoch(format: fn(&mut Vec<u8>, &Stamp, &Entry), e: &Entry) -> String {
        let mut out = Vec::new();
        let wall = UNIX_EPOCH + Duration::from_millis(1_764_902_751_123);
        format(&mut out, &Clock::default().stamp(wall), e);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_text_line_has_every_field_in_order() {
        let line = line(b"GET /index.html?q=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            at_epoch(text, &entry(&line)),
            "2025-12-05T02:45:51.123Z 192.0.2.7:40312 \"GET /index.html?q=1 HTTP/1.1\" 200 s2 78 301 1.234 - 0.800 1 -- abc -\n"
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
    fn the_clock_works_the_date_out_again_when_the_second_changes() {
        let mut clock = Clock::default();
        let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(
            &clock.stamp(at(1_764_979_199_998)),
            b"2025-12-05T23:59:59.998Z"
        );
        assert_eq!(
            &clock.stamp(at(1_764_979_199_999)),
            b"2025-12-05T23:59:59.999Z"
        );
        assert_eq!(
            &clock.stamp(at(1_764_979_200_007)),
            b"2025-12-06T00:00:00.007Z"
        );
    }

    #[test]
    fn numbers_are_written_as_decimal_text() {
        for n in [
            0,
            7,
            10,
            99,
            100,
            101,
            999,
            1000,
            65_535,
            1_234_567,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        let mut out = Vec::new();
        push_ms(&mut out, Duration::from_micros(12_045));
        assert_eq!(out, b"12.045");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_792), (2026, 12, 5));
    }
}
