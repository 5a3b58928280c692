//! `chunked`: `lb_mio::http::chunked::ChunkedDecoder` on arbitrary bytes.
//!
//! Input layout: two bytes of split point (little-endian, taken modulo the body length + 1),
//! one byte of trailer limit (255 means the proxy's 8 KiB), then the bytes after a head.
//!
//! Beyond "never panics":
//! - fed whole, split in two at the split point, or one byte at a time, the decoder gives the
//!   same outcome (same error, or the same bytes used and the same `done`);
//! - that outcome is the one of a plain, non-incremental reading of the grammar in
//!   `src/http/chunked.rs` (`reference` below): complete at the same byte, incomplete, or refused;
//! - until done every byte is used; once done nothing more is; an error is sticky;
//! - `Body` (what the proxy uses) frames a chunked body exactly as the decoder does.

#![no_main]

use lb_mio::http::body::{Body, Framing};
use lb_mio::http::chunked::{ChunkError, ChunkedDecoder, Scan};
use libfuzzer_sys::fuzz_target;

mod common;
use common::show;

/// `Body`'s trailer limit.
const PROXY_TRAILER_LIMIT: usize = 8 * 1024;
/// Whitespace and extension bytes allowed on one size line.
const MAX_EXTENSION_BYTES: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The body ends after this many bytes.
    Done(usize),
    /// Every byte belongs to a body that has not ended yet.
    Incomplete,
    Refused,
}

fn outcome(scan: Result<Scan, ChunkError>, len: usize) -> Outcome {
    match scan {
        Ok(Scan { used, done: true }) => Outcome::Done(used),
        Ok(Scan { used, done: false }) => {
            assert_eq!(used, len, "bytes left unused before the end");
            Outcome::Incomplete
        }
        Err(_) => Outcome::Refused,
    }
}

/// The grammar, read over the whole input at once.
fn reference(input: &[u8], max_trailer: usize) -> Outcome {
    struct Reader<'a> {
        input: &'a [u8],
        at: usize,
    }
    impl Reader<'_> {
        fn peek(&self) -> Option<u8> {
            self.input.get(self.at).copied()
        }
    }
    let is_ctl = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let mut r = Reader { input, at: 0 };
    macro_rules! next {
        () => {
            match r.peek() {
                Some(b) => b,
                None => return Outcome::Incomplete,
            }
        };
    }
    macro_rules! expect {
        ($byte:expr) => {{
            if next!() != $byte {
                return Outcome::Refused;
            }
            r.at += 1;
        }};
    }
    loop {
        // chunk-size = 1*16HEXDIG, fitting in a u64
        let mut size: u64 = 0;
        let mut digits = 0;
        loop {
            let b = next!();
            let Some(d) = (b as char).to_digit(16) else {
                break;
            };
            size = match size
                .checked_mul(16)
                .and_then(|s| s.checked_add(u64::from(d)))
            {
                Some(s) if digits < 16 => s,
                _ => return Outcome::Refused,
            };
            digits += 1;
            r.at += 1;
        }
        if digits == 0 {
            return Outcome::Refused;
        }
        // [ BWS chunk-ext ], at most MAX_EXTENSION_BYTES in all
        let mut ext = 0;
        let mut bws = false;
        while matches!(next!(), b' ' | b'\t') {
            bws = true;
            ext += 1;
            if ext > MAX_EXTENSION_BYTES {
                return Outcome::Refused;
            }
            r.at += 1;
        }
        if next!() == b';' {
            // A quoted-string (with backslash escapes) must be closed before the CR.
            let (mut quoted, mut escaped) = (false, false);
            loop {
                let b = next!();
                if b == b'\r' && !quoted {
                    break;
                }
                if is_ctl(b) {
                    return Outcome::Refused;
                }
                if escaped {
                    escaped = false;
                } else if quoted && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    quoted = !quoted;
                }
                ext += 1;
                if ext > MAX_EXTENSION_BYTES {
                    return Outcome::Refused;
                }
                r.at += 1;
            }
        } else if bws {
            return Outcome::Refused; // whitespace is only allowed before an extension
        }
        expect!(b'\r');
        expect!(b'\n');
        if size == 0 {
            break;
        }
        // chunk-data CRLF
        if ((input.len() - r.at) as u64) < size {
            return Outcome::Incomplete;
        }
        r.at += size as usize;
        expect!(b'\r');
        expect!(b'\n');
    }
    // trailer-section CRLF; every byte of a field line counts against the limit
    let mut trailer = 0;
    loop {
        if next!() == b'\r' {
            r.at += 1;
            expect!(b'\n');
            return Outcome::Done(r.at);
        }
        let mut count = |r: &mut Reader| {
            trailer += 1;
            r.at += 1;
            trailer <= max_trailer
        };
        let mut name = 0;
        loop {
            let b = next!();
            if b == b':' && name > 0 {
                break;
            }
            if !is_tchar(b) || !count(&mut r) {
                return Outcome::Refused;
            }
            name += 1;
        }
        if !count(&mut r) {
            return Outcome::Refused;
        }
        loop {
            let b = next!();
            if b == b'\r' {
                break;
            }
            if is_ctl(b) || !count(&mut r) {
                return Outcome::Refused;
            }
        }
        if !count(&mut r) {
            return Outcome::Refused;
        }
        if next!() != b'\n' || !count(&mut r) {
            return Outcome::Refused;
        }
    }
}

/// Feeds `body` in two pieces, the way a connection does (unused bytes offered again).
fn scan_split(max_trailer: usize, body: &[u8], split: usize) -> Result<Scan, ChunkError> {
    let mut dec = ChunkedDecoder::new(max_trailer);
    let first = match dec.scan(&body[..split]) {
        Ok(first) => first,
        Err(e) => {
            assert_eq!(dec.scan(&body[split..]), Err(e), "error not sticky");
            return Err(e);
        }
    };
    assert!(first.used <= split);
    assert!(
        first.done || first.used == split,
        "bytes left unused before the end"
    );
    let second = dec.scan(&body[first.used..])?;
    if first.done {
        assert_eq!(
            second,
            Scan {
                used: 0,
                done: true
            },
            "used bytes after the end"
        );
    }
    Ok(Scan {
        used: first.used + second.used,
        done: second.done,
    })
}

/// Feeds `body` one byte at a time.
fn scan_bytes(max_trailer: usize, body: &[u8]) -> Result<Scan, ChunkError> {
    let mut dec = ChunkedDecoder::new(max_trailer);
    let mut used = 0;
    for byte in body.chunks(1) {
        let scan = dec.scan(byte)?;
        used += scan.used;
        if scan.done {
            break;
        }
    }
    Ok(Scan {
        used,
        done: dec.is_done(),
    })
}

fuzz_target!(|data: &[u8]| {
    let [lo, hi, limit, body @ ..] = data else {
        return;
    };
    let split = usize::from(u16::from_le_bytes([*lo, *hi])) % (body.len() + 1);
    let max_trailer = match limit {
        255 => PROXY_TRAILER_LIMIT,
        n => usize::from(*n),
    };

    let mut dec = ChunkedDecoder::new(max_trailer);
    let whole = dec.scan(body);
    match whole {
        Ok(scan) => {
            assert!(scan.used <= body.len());
            assert_eq!(scan.done, dec.is_done());
            if scan.done {
                assert!(body[..scan.used].ends_with(b"\r\n"));
                let after = dec.scan(&body[scan.used..]);
                assert_eq!(
                    after,
                    Ok(Scan {
                        used: 0,
                        done: true
                    })
                );
            }
        }
        Err(e) => {
            assert!(!dec.is_done());
            assert_eq!(dec.scan(b"0\r\n\r\n"), Err(e), "error not sticky");
        }
    }
    let got = outcome(whole, body.len());
    assert_eq!(
        got,
        reference(body, max_trailer),
        "decoder and grammar disagree on {:?} (trailer limit {max_trailer})",
        show(body)
    );
    assert_eq!(
        scan_split(max_trailer, body, split),
        whole,
        "split at {split}"
    );
    assert_eq!(scan_bytes(max_trailer, body), whole, "byte by byte");

    let mut framed = Body::new(Framing::Chunked);
    let proxy = ChunkedDecoder::new(PROXY_TRAILER_LIMIT).scan(body);
    match (framed.scan(body), proxy) {
        (Ok(used), Ok(scan)) => {
            assert_eq!(used, scan.used);
            assert_eq!(framed.is_done(), scan.done);
            // A chunked body cut short is a truncation, never a clean close.
            assert_eq!(framed.close(), scan.done);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("Body {a:?} but decoder {b:?}"),
    }
});
