//! The request-smuggling corpus: hostile request bytes, each with the RFC 9112 / RFC 9110
//! section that decides it and what lb-mio must do, sent raw to the real binary in front of a
//! recording mock backend.
//!
//! A case is either
//!
//! - **rejected**: lb-mio answers the status itself (`Connection: close`), closes, logs one
//!   `rejected request` line for that client, and the backend gets no request from it — nor
//!   any request hidden in it or pipelined behind it; or
//! - **forwarded**: the backend gets exactly the requests the client sent, in order, each
//!   byte-exact (request line, every end-to-end header line, the body as sent, chunk framing
//!   and trailers included), followed only by the `X-Forwarded-*` lines lb-mio adds; the
//!   client gets each answer in order, and a probe request sent afterwards on the same
//!   connection is answered too (so lb-mio and the backend still agree where requests end).
//!
//! `tests/bad_input.rs` has the first, smaller set of malformed inputs; where a category here
//! overlaps one of its cases, the input here is a different variant (another value, another
//! place, a smuggled request behind it), not a copy. Where the RFC leaves a choice (reject or repair, accept or
//! refuse), the comment on the case says which one lb-mio makes and why; the rule throughout is
//! the one a careful HAProxy/nginx user expects: never forward anything two parsers could
//! frame differently, and never repair a request (repairing is a second interpretation).

mod support;

use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Small head limits so the limit cases stay small; health probes once at start only.
const CONFIG: &str = "\
[timeouts]
header_ms = 1000
backend_ms = 2000
[limits]
max_header_bytes = 2048
max_headers = 32
[health]
interval_ms = 3600000
";

/// `max_header_bytes` above.
const MAX_HEAD: usize = 2048;

/// How long a rejected case waits before counting the backend's requests: long enough for
/// anything lb-mio wrongly forwarded to arrive on loopback, short enough to keep the file fast.
/// The run ends with one longer look at everything the backend received.
const SETTLE: Duration = Duration::from_millis(40);

/// Bound on waiting for an answer or a close that should come at once.
const READ_WAIT: Duration = Duration::from_secs(2);

/// Bound on waiting for a log line that should already be there.
const LOG_WAIT: Duration = Duration::from_secs(2);

/// A complete request that must never reach the backend as a request when it rides inside or
/// behind a rejected one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// The case table
// ---------------------------------------------------------------------------------------------

/// One request as the client sent it: its head (request line to the empty line) and its body
/// bytes exactly as on the wire.
#[derive(Clone)]
struct Sent {
    head: Vec<u8>,
    body: Vec<u8>,
}

/// What lb-mio does after forwarding the case's `forwarded` requests.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// It answers this status itself, closes, and logs one rejection.
    Reject(u16),
    /// It closes without another answer and without a rejection (the last forwarded request
    /// ended the connection: `Connection: close`, HTTP/1.0); the bytes after it are dropped.
    Close,
    /// The connection stays open and in sync: a probe request on it is forwarded and answered.
    Open,
}

struct Case {
    name: &'static str,
    /// The RFC 9112 / 9110 section that decides the case.
    rfc: &'static str,
    /// What the client sends, all at once.
    wire: Vec<u8>,
    /// The requests the backend must receive from this connection, in order.
    forwarded: Vec<Sent>,
    end: End,
}

fn sent(head: impl AsRef<[u8]>, body: impl AsRef<[u8]>) -> Sent {
    let head = head.as_ref().to_vec();
    assert!(head.ends_with(b"\r\n\r\n"), "a head ends in an empty line");
    Sent {
        head,
        body: body.as_ref().to_vec(),
    }
}

/// lb-mio answers `status` to these bytes and forwards nothing.
fn reject(name: &'static str, rfc: &'static str, status: u16, wire: impl AsRef<[u8]>) -> Case {
    Case {
        name,
        rfc,
        wire: wire.as_ref().to_vec(),
        forwarded: Vec::new(),
        end: End::Reject(status),
    }
}

/// The backend gets these requests exactly as sent (the wire is their concatenation).
fn forward(name: &'static str, rfc: &'static str, requests: Vec<Sent>) -> Case {
    let wire = requests
        .iter()
        .flat_map(|r| r.head.iter().chain(&r.body).copied())
        .collect();
    Case {
        name,
        rfc,
        wire,
        forwarded: requests,
        end: End::Open,
    }
}

impl Case {
    /// More bytes after the forwarded requests, and what lb-mio does with them.
    fn then(mut self, tail: impl AsRef<[u8]>, end: End) -> Case {
        self.wire.extend_from_slice(tail.as_ref());
        self.end = end;
        self
    }
}

/// `POST /<path>` with `Host: a`, the given extra header lines (each ending in CRLF) and body.
fn post(path: &str, headers: &str, body: impl AsRef<[u8]>) -> Vec<u8> {
    let mut wire = format!("POST /{path} HTTP/1.1\r\nHost: a\r\n{headers}\r\n").into_bytes();
    wire.extend_from_slice(body.as_ref());
    wire
}

/// A chunked POST whose body is `body` (raw chunk framing, sent as is).
fn chunked(path: &str, body: impl AsRef<[u8]>) -> Vec<u8> {
    post(path, "Transfer-Encoding: chunked\r\n", body)
}

/// `GET <target>` with the given header lines.
fn get_head(target: &str, headers: &str) -> String {
    format!("GET {target} HTTP/1.1\r\n{headers}\r\n")
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

use End::{Close, Reject};

/// Content-Length and Transfer-Encoding: CL.TE, TE.CL, TE.TE and malformed lengths.
fn framing_cases() -> Vec<Case> {
    let te_chunked = |path: &str, te_line: &str| {
        sent(
            format!("POST /{path} HTTP/1.1\r\nHost: a\r\n{te_line}\r\n\r\n"),
            "5\r\nhello\r\n0\r\n\r\n",
        )
    };
    vec![
        // ---- CL.TE and TE.CL: both framing headers. RFC 9112 §6.3 lets a server either let
        // Transfer-Encoding win (then close) or reject; a proxy that forwarded both would hand
        // the backend the same ambiguity, so lb-mio rejects.
        reject(
            "CL.TE: the classic one-byte prefix attack",
            "RFC 9112 §6.1, §6.3 (3)",
            400,
            post(
                "",
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                format!("0\r\n\r\nG{SMUGGLED}"),
            ),
        ),
        reject(
            "TE.CL: the chunk hides a request from a length-framing backend",
            "RFC 9112 §6.1, §6.3 (3)",
            400,
            post(
                "",
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            ),
        ),
        reject(
            "CL with an obfuscated TE (xchunked)",
            "RFC 9112 §6.1, §6.3 (3)",
            400,
            post(
                "",
                "Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n",
                format!("hello{SMUGGLED}"),
            ),
        ),
        reject(
            "CL with TE: identity",
            "RFC 9112 §6.1, §6.3 (3)",
            400,
            post(
                "",
                "Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
                "hello",
            ),
        ),
        reject(
            "TE and CL in HTTP/1.0",
            "RFC 9112 §6.1: TE in HTTP/1.0 means faulty framing, even with a Content-Length",
            400,
            format!(
                "POST / HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
        ),
        // ---- TE.TE: one side must not see chunked where the other does.
        reject(
            "TE: space before the colon",
            "RFC 9112 §5.1: no whitespace between field name and colon (MUST 400)",
            400,
            chunked_with("Transfer-Encoding : chunked"),
        ),
        reject(
            "TE: tab before the colon",
            "RFC 9112 §5.1",
            400,
            chunked_with("Transfer-Encoding\t: chunked"),
        ),
        reject(
            "TE: xchunked",
            "RFC 9112 §6.3 (4): final coding not chunked, MUST 400 and close",
            400,
            chunked_with("Transfer-Encoding: xchunked"),
        ),
        reject(
            "TE: chunked, identity",
            "RFC 9112 §6.3 (4)",
            400,
            chunked_with("Transfer-Encoding: chunked, identity"),
        ),
        // A list that ends in chunked is framed unambiguously; the coding before it is one
        // lb-mio does not implement ("identity" is no longer a registered coding).
        reject(
            "TE: identity, chunked",
            "RFC 9112 §6.1: unknown transfer coding, SHOULD 501",
            501,
            chunked_with("Transfer-Encoding: identity, chunked"),
        ),
        reject(
            "TE: chunked in quotes",
            "RFC 9112 §6.3 (4)",
            400,
            chunked_with("Transfer-Encoding: \"chunked\""),
        ),
        reject(
            "TE: NBSP (obs-text) before chunked",
            "RFC 9112 §6.3 (4): \\xa0chunked is not chunked",
            400,
            chunked_with_bytes(b"Transfer-Encoding: \xa0chunked"),
        ),
        reject(
            "TE: vertical tab after chunked",
            "RFC 9110 §5.5: VT is not allowed in a field value",
            400,
            chunked_with("Transfer-Encoding: chunked\x0b"),
        ),
        reject(
            "TE: NUL inside chunked",
            "RFC 9110 §5.5: NUL MUST be rejected (or replaced by SP)",
            400,
            chunked_with("Transfer-Encoding: chun\0ked"),
        ),
        reject(
            "TE: leading whitespace on the first header line",
            "RFC 9112 §2.2: whitespace before the first field line",
            400,
            "POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: a\r\n\r\n0\r\n\r\n",
        ),
        // RFC 9112 §5.2 lets a recipient replace obs-fold by SP; lb-mio rejects instead: it
        // forwards heads byte-exact, and a repaired head is a second interpretation of them.
        reject(
            "TE: carried in an obs-fold continuation line",
            "RFC 9112 §5.2: obs-fold, reject (choice) or replace by SP",
            400,
            "POST / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        reject(
            "TE: two lines, chunked then identity",
            "RFC 9112 §6.3 (4), RFC 9110 §5.3 (combined: chunked, identity)",
            400,
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        ),
        // Combined, these two lines read "gzip, chunked" (501); lb-mio refuses a second
        // Transfer-Encoding line outright: no client needs one.
        reject(
            "TE: two lines, gzip then chunked",
            "RFC 9110 §5.3; lb-mio refuses repeated TE lines (choice)",
            400,
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        // OWS around a field value is not part of it: these are plain chunked.
        forward(
            "TE: tab as the only whitespace",
            "RFC 9112 §5.1: OWS = SP / HTAB",
            vec![te_chunked("tab", "Transfer-Encoding:\tchunked")],
        ),
        forward(
            "TE: no whitespace, trailing tab",
            "RFC 9112 §5.1",
            vec![te_chunked("trailing", "Transfer-Encoding:chunked\t")],
        ),
        forward(
            "TE: mixed spaces and tabs around the value",
            "RFC 9112 §5.1",
            vec![te_chunked("mixed", "transfer-encoding: \t chunked \t ")],
        ),
        // `Transfer_Encoding` is a different, valid field name (underscore is a tchar): it
        // frames nothing, so the bytes after the head are the next request and go to the
        // backend as one. nginx drops such headers by default; HAProxy forwards them, as
        // lb-mio does: every HTTP parser frames by the exact name `Transfer-Encoding`.
        forward(
            "TE: underscore instead of dash is another field",
            "RFC 9110 §5.1, §5.6.2 (tchar includes _)",
            vec![
                sent(
                    "POST /underscore HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",
                    "",
                ),
                sent("GET /underscore-next HTTP/1.1\r\nHost: a\r\n\r\n", ""),
            ],
        ),
        // ---- Content-Length values.
        // RFC 9110 §8.6 lets a recipient accept a list of identical values as one; lb-mio
        // refuses any list or repeated line: a backend that takes the first or the last value
        // must never disagree with it.
        reject(
            "CL: 5, 5",
            "RFC 9110 §8.6: identical list, MAY accept; refused (choice)",
            400,
            post("", "Content-Length: 5, 5\r\n", "hello"),
        ),
        reject(
            "CL: 5,6",
            "RFC 9110 §8.6, RFC 9112 §6.3 (5): invalid, MUST 400",
            400,
            post("", "Content-Length: 5,6\r\n", format!("hello!{SMUGGLED}")),
        ),
        reject(
            "CL: two lines, 0 then 34",
            "RFC 9112 §6.3 (5)",
            400,
            post(
                "",
                "Content-Length: 0\r\ncontent-length: 34\r\n",
                SMUGGLED,
            ),
        ),
        reject(
            "CL: leading plus",
            "RFC 9110 §8.6: 1*DIGIT",
            400,
            post("", "Content-Length: +5\r\n", "hello"),
        ),
        reject(
            "CL: negative",
            "RFC 9110 §8.6: 1*DIGIT",
            400,
            post("", "Content-Length: -5\r\n", "hello"),
        ),
        reject(
            "CL: hex",
            "RFC 9110 §8.6: 1*DIGIT",
            400,
            post("", "Content-Length: 0x5\r\n", "hello"),
        ),
        reject(
            "CL: empty",
            "RFC 9110 §8.6: 1*DIGIT",
            400,
            post("", "Content-Length:\r\n", SMUGGLED),
        ),
        reject(
            "CL: space inside the number",
            "RFC 9110 §8.6",
            400,
            post("", "Content-Length: 3 4\r\n", SMUGGLED),
        ),
        reject(
            "CL: form feed after the number",
            "RFC 9110 §5.5: FF is not allowed in a field value",
            400,
            post("", "Content-Length: 5\x0c\r\n", "hello"),
        ),
        reject(
            "CL: NBSP (obs-text) before the number",
            "RFC 9110 §8.6: only DIGIT, OWS is SP/HTAB",
            400,
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xa05\r\n\r\nhello"[..],
        ),
        reject(
            "CL: 2^64 + 5 (wraps to 5 in a 64-bit parser)",
            "RFC 9112 §6.3 (5); RFC 9110 §8.6: anticipate large numerals, no overflow",
            400,
            post(
                "",
                "Content-Length: 18446744073709551621\r\n",
                format!("hello{SMUGGLED}"),
            ),
        ),
        reject(
            "CL: 2^64",
            "RFC 9110 §8.6",
            400,
            post("", "Content-Length: 18446744073709551616\r\n", ""),
        ),
        // A value of 5 written with 19 digits is valid, but lb-mio reads at most 18 digits
        // (so no value can overflow) and refuses longer ones: no real client pads a length.
        reject(
            "CL: 5 padded to 19 digits",
            "RFC 9110 §8.6; lb-mio caps the digits at 18 (choice)",
            400,
            post("", "Content-Length: 0000000000000000005\r\n", "hello"),
        ),
        forward(
            "CL: OWS around the value",
            "RFC 9112 §5.1: OWS is not part of the value",
            vec![sent(
                "POST /cl-ows HTTP/1.1\r\nHost: a\r\nContent-Length: \t 5 \t\r\n\r\n",
                "hello",
            )],
        ),
        forward(
            "CL: no space after the colon, leading zeros",
            "RFC 9110 §8.6: 1*DIGIT",
            vec![sent(
                "POST /cl-zeros HTTP/1.1\r\nHost: a\r\nContent-length:007\r\n\r\n",
                "hello!!",
            )],
        ),
        // A GET may have a body: Content-Length frames it whatever the method, so the bytes
        // after it are a request again.
        forward(
            "CL on a GET frames a body",
            "RFC 9112 §6.3 (6), RFC 9110 §9.3.1",
            vec![
                sent(
                    "GET /get-body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                    "hello",
                ),
                sent("GET /get-body-next HTTP/1.1\r\nHost: a\r\n\r\n", ""),
            ],
        ),
        forward(
            "chunked GET",
            "RFC 9112 §6.3 (4)",
            vec![sent(
                "GET /get-chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            )],
        ),
    ]
}

/// A chunked POST whose Transfer-Encoding line is `line`, with a small valid body and a
/// smuggled request behind it.
fn chunked_with(line: &str) -> Vec<u8> {
    chunked_with_bytes(line.as_bytes())
}

fn chunked_with_bytes(line: &[u8]) -> Vec<u8> {
    cat(&[
        b"POST / HTTP/1.1\r\nHost: a\r\n",
        line,
        b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        SMUGGLED.as_bytes(),
    ][..])
}

/// Chunk sizes, chunk extensions, trailers and line endings inside a chunked body.
fn chunked_cases() -> Vec<Case> {
    let ok = |path: &'static str, body: &[u8]| {
        sent(
            format!("POST /{path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            body,
        )
    };
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(5000));
    vec![
        // ---- Chunk sizes: 1*HEXDIG, nothing else. A size that does not fit in 64 bits, or
        // that a lax parser reads differently (prefix, sign, spaces), must never pass.
        reject(
            "size: 17 hex digits (overflows 64 bits)",
            "RFC 9112 §7.1: anticipate large numerals, prevent overflow",
            400,
            chunked(
                "",
                format!("1{:016x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            ),
        ),
        // 17 digits with the value 5: lb-mio reads at most 16 hex digits, so no size can
        // overflow, and refuses padded sizes (choice: no real sender pads).
        reject(
            "size: 5 padded to 17 digits",
            "RFC 9112 §7.1; lb-mio caps the digits at 16 (choice)",
            400,
            chunked("", "00000000000000005\r\nhello\r\n0\r\n\r\n"),
        ),
        reject(
            "size: 0x prefix on a zero size",
            "RFC 9112 §7.1: chunk-size = 1*HEXDIG",
            400,
            chunked("", format!("0x0\r\n\r\n{SMUGGLED}")),
        ),
        reject(
            "size: leading plus",
            "RFC 9112 §7.1",
            400,
            chunked("", "+5\r\nhello\r\n0\r\n\r\n"),
        ),
        reject(
            "size: negative zero",
            "RFC 9112 §7.1",
            400,
            chunked("", format!("-0\r\n\r\n{SMUGGLED}")),
        ),
        reject(
            "size: leading space",
            "RFC 9112 §7.1: no whitespace before the size",
            400,
            chunked("", " 5\r\nhello\r\n0\r\n\r\n"),
        ),
        reject(
            "size: leading tab",
            "RFC 9112 §7.1",
            400,
            chunked("", "\t5\r\nhello\r\n0\r\n\r\n"),
        ),
        // BWS is allowed only before a `;` (chunk-ext); a size followed by bare whitespace is
        // read as 5 by some parsers and refused by others.
        reject(
            "size: trailing space without an extension",
            "RFC 9112 §7.1, §7.1.1: BWS only before ';'",
            400,
            chunked("", "5 \r\nhello\r\n0\r\n\r\n"),
        ),
        reject(
            "size: underscore separator",
            "RFC 9112 §7.1",
            400,
            chunked("", "1_0\r\n0123456789abcdef\r\n0\r\n\r\n"),
        ),
        reject(
            "size: empty line instead of the last chunk",
            "RFC 9112 §7.1: last-chunk = 1*\"0\"",
            400,
            chunked("", format!("5\r\nhello\r\n\r\n{SMUGGLED}")),
        ),
        forward(
            "size: upper-case hex and leading zeros within 16 digits",
            "RFC 9112 §7.1: HEXDIG is case-insensitive",
            vec![ok("hex", b"00A\r\n0123456789\r\n000\r\n\r\n")],
        ),
        // ---- Chunk data must be exactly as long as its size, then CRLF.
        reject(
            "data longer than its size",
            "RFC 9112 §7.1: chunk-data CRLF",
            400,
            chunked("", "3\r\nhello\r\n0\r\n\r\n"),
        ),
        reject(
            "data shorter than its size swallows a request",
            "RFC 9112 §7.1",
            400,
            chunked("", format!("10\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        ),
        reject(
            "last chunk without the final CRLF: the next request would be a trailer",
            "RFC 9112 §7.1, §7.1.2",
            400,
            chunked("", format!("0\r\n{SMUGGLED}")),
        ),
        // ---- Chunk extensions: forwarded as sent when well formed; a server "ought to
        // limit" their length (§7.1.1): lb-mio allows 4 KiB per size line.
        forward(
            "extensions: token, quoted-string, BWS",
            "RFC 9112 §7.1.1",
            vec![ok(
                "ext",
                b"5;name=value\r\nhello\r\n1 ; a = \"q \\\" ;\" ;b\r\n!\r\n0;last\r\n\r\n",
            )],
        ),
        reject(
            "extensions: 5000 bytes on one size line",
            "RFC 9112 §7.1.1: limit extension length, answer 4xx",
            400,
            chunked("", long_ext),
        ),
        reject(
            "extensions: bare LF ends the size line",
            "RFC 9112 §2.2, §7.1: CRLF only in chunked framing",
            400,
            chunked("", format!("5;a=b\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        ),
        reject(
            "extensions: bare CR inside",
            "RFC 9112 §2.2: bare CR",
            400,
            chunked("", "5;a\rb\r\nhello\r\n0\r\n\r\n"),
        ),
        reject(
            "extensions: NUL inside",
            "RFC 9112 §7.1.1: quoted-string/token admit no CTL",
            400,
            chunked("", "5;a=\0\r\nhello\r\n0\r\n\r\n"),
        ),
        // A quoted-string cannot contain CR or LF, so the CRLF inside this one ends the size
        // line for lb-mio, while a parser that reads quoted-strings to their closing quote
        // sees `xx` and the last chunk as part of the extension: the two disagree on where
        // the body ends. The unterminated quoted-string makes it invalid: refuse.
        reject(
            "extensions: CRLF inside a quoted-string",
            "RFC 9112 §7.1.1, RFC 9110 §5.6.4: qdtext excludes CR and LF",
            400,
            chunked("", format!("2;a=\"\r\nxx\r\n0\r\n\r\n{SMUGGLED}\"\r\n")),
        ),
        // ---- Trailers. Framing was decided by the head and lb-mio never reads trailer
        // fields for it, so it forwards them exactly as sent, even fields that RFC 9110
        // §6.5.1 says a sender must not put there (HAProxy forwards request trailers too;
        // RFC 9110 §6.5.2 forbids the backend to merge them into the header section). The
        // request pipelined after them shows the framing did not move.
        forward(
            "trailers: framing and routing fields are forwarded as data",
            "RFC 9110 §6.5.1, §6.5.2; RFC 9112 §7.1.2",
            vec![
                ok(
                    "trailers",
                    b"5\r\nhello\r\n0\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\nHost: evil\r\n\r\n",
                ),
                sent("GET /trailers-next HTTP/1.1\r\nHost: a\r\n\r\n", ""),
            ],
        ),
        reject(
            "trailers: obs-fold",
            "RFC 9112 §5.2, §7.1.2",
            400,
            chunked("", "0\r\nX-A: b\r\n c\r\n\r\n"),
        ),
        reject(
            "trailers: space before the colon",
            "RFC 9112 §5.1, §7.1.2",
            400,
            chunked("", "0\r\nX-A : b\r\n\r\n"),
        ),
        reject(
            "trailers: line without a colon",
            "RFC 9112 §5.1, §7.1.2",
            400,
            chunked("", "0\r\nX-A\r\n\r\n"),
        ),
        reject(
            "trailers: NUL in a value",
            "RFC 9110 §5.5",
            400,
            chunked("", "0\r\nX-A: b\0c\r\n\r\n"),
        ),
        reject(
            "trailers: bare LF ends a field line",
            "RFC 9112 §2.2",
            400,
            chunked("", format!("0\r\nX-A: b\n\r\n{SMUGGLED}")),
        ),
        reject(
            "trailers: over 8 KiB",
            "RFC 9112 §7.1.2; lb-mio limits the trailer section (choice)",
            400,
            chunked("", format!("0\r\nX-Big: {}\r\n\r\n", "t".repeat(9000))),
        ),
        // ---- Line endings inside the chunked framing: CRLF only.
        reject(
            "bare LF after chunk data",
            "RFC 9112 §7.1: chunk-data CRLF",
            400,
            chunked("", format!("5\r\nhello\n0\r\n\r\n{SMUGGLED}")),
        ),
        reject(
            "bare LF ending the last chunk",
            "RFC 9112 §7.1",
            400,
            chunked("", format!("0\n\r\n{SMUGGLED}")),
        ),
        reject(
            "bare LF as the final empty line",
            "RFC 9112 §7.1",
            400,
            chunked("", format!("5\r\nhello\r\n0\r\n\n{SMUGGLED}")),
        ),
        reject(
            "bare CR after chunk data",
            "RFC 9112 §2.2, §7.1",
            400,
            chunked("", "5\r\nhello\r0\r\n\r\n"),
        ),
    ]
}

/// Line endings, control characters, folding and field-name syntax in the head.
fn head_cases() -> Vec<Case> {
    vec![
        // RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator; lb-mio
        // refuses it anywhere in a head: a backend that does not would see one long line.
        reject(
            "bare LF hides a Transfer-Encoding line",
            "RFC 9112 §2.2: bare LF MAY be accepted; refused (choice)",
            400,
            "POST / HTTP/1.1\r\nHost: a\r\nX-A: b\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        reject(
            "bare LF as the empty line ending the head",
            "RFC 9112 §2.2",
            400,
            format!("GET / HTTP/1.1\r\nHost: a\r\n\n{SMUGGLED}"),
        ),
        reject(
            "bare CR ends a header line",
            "RFC 9112 §2.2: bare CR MUST be rejected or replaced by SP",
            400,
            "POST / HTTP/1.1\r\nHost: a\rTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        reject(
            "bare CR ends the request line",
            "RFC 9112 §2.2, §3",
            400,
            "GET / HTTP/1.1\rHost: a\r\n\r\n",
        ),
        reject(
            "bare CR inside the target",
            "RFC 9112 §2.2, §3.2",
            400,
            "GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        reject(
            "NUL in the target",
            "RFC 9112 §3.2: request-target has no CTL",
            400,
            "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        reject(
            "NUL in the method",
            "RFC 9110 §9.1: method = token",
            400,
            "G\0ET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        reject(
            "escape character in the target",
            "RFC 9112 §3.2",
            400,
            "GET /\x1b[2J HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        reject(
            "NUL in a field name",
            "RFC 9110 §5.1: field-name = token",
            400,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length\0: 5\r\n\r\nhello",
        ),
        reject(
            "form feed in a field name",
            "RFC 9110 §5.1",
            400,
            "GET / HTTP/1.1\r\nHost: a\r\nX-\x0cA: b\r\n\r\n",
        ),
        reject(
            "vertical tab in a field value",
            "RFC 9110 §5.5",
            400,
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x0bc\r\n\r\n",
        ),
        reject(
            "NUL in the Host value",
            "RFC 9110 §5.5: NUL MUST be rejected or replaced by SP",
            400,
            "GET / HTTP/1.1\r\nHost: a\0.evil\r\n\r\n",
        ),
        reject(
            "obs-fold continues a Content-Length",
            "RFC 9112 §5.2: reject (choice) or replace by SP",
            400,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n 0\r\n\r\nhello",
        ),
        reject(
            "obs-fold continues the Host value",
            "RFC 9112 §5.2",
            400,
            "GET / HTTP/1.1\r\nHost: a\r\n\tevil\r\n\r\n",
        ),
        reject(
            "tab between Content-Length and the colon",
            "RFC 9112 §5.1: MUST 400",
            400,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\nhello",
        ),
        reject(
            "space between Host and the colon",
            "RFC 9112 §5.1: MUST 400",
            400,
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ),
        reject(
            "brackets in a field name",
            "RFC 9110 §5.1, §5.6.2",
            400,
            "GET / HTTP/1.1\r\nHost: a\r\nX[A]: b\r\n\r\n",
        ),
        // obs-text (bytes 0x80-0xff) is allowed in a field value and forwarded unchanged.
        forward(
            "obs-text in a field value",
            "RFC 9110 §5.5: field-vchar includes obs-text",
            vec![sent(
                b"GET /obs-text HTTP/1.1\r\nHost: a\r\nX-Latin: caf\xe9 \xa0\r\n\r\n",
                "",
            )],
        ),
    ]
}

/// The request line: method, target forms, version, length.
fn request_line_cases() -> Vec<Case> {
    let long_target = format!("/{}", "u".repeat(MAX_HEAD + 100));
    let long_header = format!("X-Pad: {}\r\n", "h".repeat(MAX_HEAD + 100));
    vec![
        // ---- Target forms (RFC 9112 §3.2).
        forward(
            "absolute-form with the same Host",
            "RFC 9112 §3.2.2: a server MUST accept absolute-form",
            vec![sent(
                "GET http://a.test/abs?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "",
            )],
        ),
        forward(
            "absolute-form: scheme and host compare case-insensitively",
            "RFC 9110 §4.2.3: scheme and host are case-insensitive",
            vec![sent(
                "GET HTTP://A.Test/abs-case HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "",
            )],
        ),
        // `http://a.test:80/` and `Host: a.test` name the same origin (HAProxy normalises the
        // default port the same way).
        forward(
            "absolute-form: default port on one side only",
            "RFC 9110 §4.2.3: an empty or default port is equivalent to none",
            vec![sent(
                "GET http://a.test:80/abs-port HTTP/1.1\r\nHost: a.test\r\n\r\n",
                "",
            )],
        ),
        forward(
            "absolute-form in HTTP/1.0 without Host",
            "RFC 9112 §3.2.2: the target gives the host",
            vec![sent("GET http://a.test/abs-ten HTTP/1.0\r\n\r\n", "")],
        )
        .then(SMUGGLED, Close),
        // The backend, as an origin server, must use the target's authority and ignore Host
        // (§3.2.2), while lb-mio's X-Forwarded-Host, hash_key and access log would use Host:
        // a proxy must then rewrite Host from the target. lb-mio forwards heads byte-exact, so
        // it refuses the disagreement instead (as HAProxy does).
        reject(
            "absolute-form with another Host",
            "RFC 9112 §3.2.2, RFC 9110 §7.2: Host MUST be identical to the authority",
            400,
            "GET http://a.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        ),
        reject(
            "absolute-form with another port",
            "RFC 9112 §3.2.2, RFC 9110 §7.2",
            400,
            "GET http://a.test:8080/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
        // RFC 9110 §4.2.4 asks recipients to treat userinfo in an http URI as an error
        // (HAProxy ignores it when comparing with Host; lb-mio refuses, since it forwards the
        // target as sent and the backend would see it).
        reject(
            "absolute-form with userinfo",
            "RFC 9110 §4.2.4: userinfo is deprecated, SHOULD be treated as an error",
            400,
            "GET http://user:pw@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
        ),
        reject(
            "absolute-form with an empty host",
            "RFC 9110 §4.2.1: an http URI with an empty host MUST be rejected",
            400,
            "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        // lb-mio is a gateway to http origin servers: an absolute-form target of another
        // scheme is not a request it can serve.
        reject(
            "absolute-form with another scheme",
            "RFC 9112 §3.2.2; lb-mio serves http and https URIs only (choice)",
            400,
            "GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        forward(
            "asterisk-form with OPTIONS",
            "RFC 9112 §3.2.4",
            vec![sent("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "")],
        ),
        reject(
            "asterisk-form with GET",
            "RFC 9112 §3.2.4: only for OPTIONS",
            400,
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        reject(
            "asterisk followed by a path",
            "RFC 9112 §3.2",
            400,
            "OPTIONS */x HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        reject(
            "authority-form with GET",
            "RFC 9112 §3.2.3: only for CONNECT",
            400,
            "GET a.test:80 HTTP/1.1\r\nHost: a.test:80\r\n\r\n",
        ),
        reject(
            "relative target without a slash",
            "RFC 9112 §3.2.1: origin-form starts with /",
            400,
            "GET admin HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        // ---- Length: a request line longer than the head limit is a target too long to
        // parse (414, as nginx answers), a long header section is 431.
        reject(
            "request line over max_header_bytes",
            "RFC 9112 §3: a target longer than the server parses MUST get 414",
            414,
            get_head(&long_target, "Host: a\r\n"),
        ),
        reject(
            "request line over the limit and never finished",
            "RFC 9112 §3",
            414,
            format!("GET {long_target}"),
        ),
        reject(
            "short request line, header section over the limit",
            "RFC 6585 §5: 431",
            431,
            get_head("/", &format!("Host: a\r\n{long_header}")),
        ),
        // ---- Methods: a token, case-sensitive; a proxy forwards methods it does not know.
        reject(
            "method with a parenthesis",
            "RFC 9110 §9.1, §5.6.2: method = token",
            400,
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        reject(
            "tab between method and target",
            "RFC 9112 §3: single SP (lenient whitespace MAY be parsed; refused)",
            400,
            "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        reject(
            "method in quotes",
            "RFC 9110 §9.1",
            400,
            "\"GET\" / HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        // nginx refuses methods with lower-case letters; HAProxy forwards any token, as
        // lb-mio does: `get` is a valid (unknown) method, and the backend answers it.
        forward(
            "extension and lower-case methods are forwarded",
            "RFC 9110 §9.1: methods are case-sensitive tokens",
            vec![
                sent("PURGE /purge HTTP/1.1\r\nHost: a\r\n\r\n", ""),
                sent("get /lower HTTP/1.1\r\nHost: a\r\n\r\n", ""),
            ],
        ),
        // ---- Versions.
        reject(
            "HTTP/0.9 simple request",
            "RFC 9112 §2.3, Appendix C.1: no HTTP/0.9",
            400,
            "GET /\r\n",
        ),
        reject(
            "version with a trailing letter",
            "RFC 9112 §2.3: HTTP-version = HTTP-name \"/\" DIGIT \".\" DIGIT",
            400,
            "GET / HTTP/1.1x\r\nHost: a\r\n\r\n",
        ),
        // 505 would name the cause; lb-mio answers every malformed request line with 400.
        reject(
            "HTTP/2.0 in an HTTP/1 request line",
            "RFC 9112 §2.3; RFC 9110 §15.6.6 (505 MAY); 400 (choice)",
            400,
            format!("GET / HTTP/2.0\r\nHost: a\r\n\r\n{SMUGGLED}"),
        ),
        // RFC 9110 §2.5 says to treat 1.2 as 1.1, but lb-mio forwards the request line as
        // sent and will not pass on a version the backend may not understand.
        reject(
            "HTTP/1.2",
            "RFC 9110 §2.5 (SHOULD treat as 1.1); refused (choice)",
            400,
            "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        ),
        reject(
            "two-digit minor version",
            "RFC 9112 §2.3",
            400,
            "GET / HTTP/1.10\r\nHost: a\r\n\r\n",
        ),
    ]
}

/// Host: one, valid, in every HTTP/1.1 request.
fn host_cases() -> Vec<Case> {
    vec![
        reject(
            "Host: a comma-separated list",
            "RFC 9112 §3.2: an invalid Host value MUST get 400",
            400,
            "GET / HTTP/1.1\r\nHost: a.test, evil.test\r\n\r\n",
        ),
        reject(
            "Host with a space inside",
            "RFC 9112 §3.2",
            400,
            "GET / HTTP/1.1\r\nHost: a.test evil.test\r\n\r\n",
        ),
        reject(
            "Host with a path",
            "RFC 9112 §3.2, RFC 9110 §7.2: Host = uri-host [ \":\" port ]",
            400,
            "GET / HTTP/1.1\r\nHost: a.test/evil\r\n\r\n",
        ),
        reject(
            "Host with userinfo",
            "RFC 9112 §3.2, RFC 9110 §7.2",
            400,
            "GET / HTTP/1.1\r\nHost: evil@a.test\r\n\r\n",
        ),
        reject(
            "Host with a non-numeric port",
            "RFC 9110 §4.2.1: port = *DIGIT",
            400,
            "GET / HTTP/1.1\r\nHost: a.test:8o\r\n\r\n",
        ),
        reject(
            "missing Host before a smuggled request",
            "RFC 9112 §3.2: HTTP/1.1 without Host MUST get 400",
            400,
            format!("GET / HTTP/1.1\r\nX-A: b\r\n\r\n{SMUGGLED}"),
        ),
        reject(
            "Host twice, names in different case",
            "RFC 9112 §3.2: more than one Host MUST get 400",
            400,
            format!("GET / HTTP/1.1\r\nhOST: a\r\nHost: a\r\n\r\n{SMUGGLED}"),
        ),
        forward(
            "Host: empty value",
            "RFC 9112 §3.2: an empty Host is allowed when the target has no authority",
            vec![sent("GET /empty-host HTTP/1.1\r\nHost:\r\n\r\n", "")],
        ),
        forward(
            "Host: IPv6 literal with a port",
            "RFC 9110 §7.2, RFC 3986 §3.2.2",
            vec![sent(
                "GET /ipv6-host HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
                "",
            )],
        ),
    ]
}

/// Requests pipelined behind clean and unclean ones.
fn pipelining_cases() -> Vec<Case> {
    vec![
        forward(
            "clean Content-Length body, then a request",
            "RFC 9112 §6.3 (6), §9.3.2: pipelined requests are answered in order",
            vec![
                sent(
                    "POST /pipe-cl HTTP/1.1\r\nHost: a\r\nContent-Length: 14\r\n\r\n",
                    "GET /x HTTP/1.",
                ),
                sent("GET /pipe-cl-next HTTP/1.1\r\nHost: a\r\n\r\n", ""),
            ],
        ),
        // The chunk carries a whole request as data: data it stays.
        forward(
            "clean chunked body carrying request bytes, then a request",
            "RFC 9112 §7.1, §9.3.2",
            vec![
                sent(
                    "POST /pipe-chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                    format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
                ),
                sent("GET /pipe-chunked-next HTTP/1.1\r\nHost: a\r\n\r\n", ""),
            ],
        ),
        forward(
            "a GET has no body: what follows is the next request",
            "RFC 9112 §6.3 (7): no framing headers, no body",
            vec![
                sent("GET /pipe-get HTTP/1.1\r\nHost: a\r\n\r\n", ""),
                sent("GET /pipe-get-next HTTP/1.1\r\nHost: a\r\n\r\n", ""),
            ],
        ),
        forward(
            "Connection: close ends the connection; the request behind it is dropped",
            "RFC 9112 §9.6: no further requests after close",
            vec![sent(
                "GET /pipe-close HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                "",
            )],
        )
        .then(SMUGGLED, Close),
        forward(
            "HTTP/1.0 without keep-alive ends the connection",
            "RFC 9112 §9.3: HTTP/1.0 is not persistent by default",
            vec![sent("GET /pipe-ten HTTP/1.0\r\nHost: a\r\n\r\n", "")],
        )
        .then(SMUGGLED, Close),
        forward(
            "TE.CL behind a good request: only the good one goes through",
            "RFC 9112 §6.3 (3), §9.3.2",
            vec![sent("GET /pipe-first HTTP/1.1\r\nHost: a\r\n\r\n", "")],
        )
        .then(
            post(
                "",
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
            ),
            Reject(400),
        ),
        forward(
            "bad chunked body behind a good one",
            "RFC 9112 §7.1, §9.3.2",
            vec![sent(
                "POST /pipe-good-chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            )],
        )
        .then(
            chunked("", format!("5\r\nhello\r\n0\r\n\n{SMUGGLED}")),
            Reject(400),
        ),
        forward(
            "malformed head behind a good one",
            "RFC 9112 §2.2, §9.3.2",
            vec![sent("GET /pipe-before-lf HTTP/1.1\r\nHost: a\r\n\r\n", "")],
        )
        .then(
            format!("GET /pipe-lf HTTP/1.1\nHost: a\r\n\r\n{SMUGGLED}"),
            Reject(400),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running the table
// ---------------------------------------------------------------------------------------------

/// One lb-mio in front of one recording backend that answers `200 <method> <target>`.
struct Rig {
    backend: Backend,
    lb: Lb,
    /// What the backend must have received so far, in order: (request line, body as sent).
    expected: Vec<(Vec<u8>, Vec<u8>)>,
    probes: usize,
}

impl Rig {
    fn start() -> Rig {
        let backend = Backend::start("smuggling", |req| {
            Response::ok(format!("{} {}", req.method, req.target))
        });
        let lb = Lb::start(&ini(&[("s", backend.addr)], CONFIG));
        Rig {
            backend,
            lb,
            expected: Vec::new(),
            probes: 0,
        }
    }

    /// Runs one case; returns what went wrong (empty when the case holds).
    fn check(&mut self, case: &Case) -> Vec<String> {
        let mut wrong = Vec::new();
        let before = self.backend.request_count();
        let mut stream = connect(self.lb.addr);
        stream.set_read_timeout(Some(READ_WAIT)).unwrap();
        let rejection = format!("{}: rejected request", stream.local_addr().unwrap());
        // The kernel may hand this case a port an earlier case used: only new lines count.
        let earlier = self.lb.count_log(&rejection);
        send_lenient(&mut stream, &case.wire);

        for sent in &case.forwarded {
            let line = request_line(&sent.head);
            match try_read_response(&mut stream) {
                Ok(resp) if resp.status == 200 && resp.body == line_text(line) => {}
                Ok(resp) => wrong.push(format!(
                    "{} was not answered by the backend: {:?} {:?}",
                    show(line),
                    resp.head_str(),
                    resp.body_str()
                )),
                Err(e) => wrong.push(format!("no response to {}: {e}", show(line))),
            }
            self.expected.push((line.to_vec(), sent.body.clone()));
        }
        if !wrong.is_empty() {
            return wrong;
        }

        match case.end {
            End::Reject(status) => {
                match try_read_response(&mut stream) {
                    Ok(resp) => {
                        let status_line = format!("HTTP/1.1 {status} {}", reason(status));
                        if !resp
                            .head
                            .starts_with(format!("{status_line}\r\n").as_bytes())
                            || !resp.connection_has("close")
                        {
                            wrong.push(format!("answered {:?}, want {status}", resp.head_str()));
                        }
                        match try_read_to_close(&mut stream) {
                            Ok(rest) if rest.is_empty() => {}
                            Ok(rest) => {
                                wrong.push(format!("bytes after the {status}: {:?}", show(&rest)))
                            }
                            Err(e) => wrong.push(format!("not closed after the {status}: {e}")),
                        }
                    }
                    Err(e) => wrong.push(format!("no {status} answer: {e}")),
                }
                if !self
                    .lb
                    .wait_for_log_count(&rejection, earlier + 1, LOG_WAIT)
                {
                    wrong.push(format!("no log line {rejection:?}"));
                }
            }
            End::Close => {
                if !closes_within(&mut stream, Duration::from_secs(2)) {
                    wrong.push("the connection did not close".into());
                }
            }
            End::Open => {
                // The connection is still in step: a probe on it is forwarded and answered.
                self.probes += 1;
                let probe = format!("GET /probe-{} HTTP/1.1\r\nHost: a\r\n\r\n", self.probes);
                send_lenient(&mut stream, &probe);
                let line = request_line(probe.as_bytes()).to_vec();
                match try_read_response(&mut stream) {
                    Ok(resp) if resp.status == 200 && resp.body == line_text(&line) => {}
                    Ok(resp) => wrong.push(format!(
                        "probe after the requests got {:?} {:?}",
                        resp.head_str(),
                        resp.body_str()
                    )),
                    Err(e) => wrong.push(format!("probe after the requests: {e}")),
                }
                self.expected.push((line, Vec::new()));
            }
        }
        drop(stream);

        // Whatever lb-mio wrongly let through has had its chance to arrive.
        if case.end != End::Open {
            thread::sleep(SETTLE);
        }
        let want_rejections = usize::from(matches!(case.end, End::Reject(_)));
        let rejections = self.lb.count_log(&rejection) - earlier;
        if rejections != want_rejections {
            wrong.push(format!(
                "{rejections} log lines {rejection:?}, want {want_rejections}"
            ));
        }
        let got = self.backend.requests();
        let new = &got[before.min(got.len())..];
        let want = self.expected.len() - before;
        if new.len() != want {
            wrong.push(format!(
                "the backend got {} requests, want {want}: {:?}",
                new.len(),
                new.iter().map(|r| r.head_str()).collect::<Vec<_>>()
            ));
        } else {
            for (req, sent) in new.iter().zip(&case.forwarded) {
                if let Err(e) = same_request(req, sent) {
                    wrong.push(e);
                }
            }
        }
        self.lb.assert_alive();
        wrong
    }

    /// Runs every case, then checks the backend's whole record once more after a longer look.
    fn run(cases: Vec<Case>) {
        let started = Instant::now();
        let mut rig = Rig::start();
        let mut failures = Vec::new();
        for case in &cases {
            let wrong = rig.check(case);
            if !wrong.is_empty() {
                failures.push(format!(
                    "{} [{}]:\n    {}",
                    case.name,
                    case.rfc,
                    wrong.join("\n    ")
                ));
                // Later cases count from what the backend actually has.
                rig.expected = rig
                    .backend
                    .requests()
                    .iter()
                    .map(|r| (request_line(&r.head).to_vec(), r.raw_body.clone()))
                    .collect();
            }
        }
        thread::sleep(SETTLE * 5);
        if failures.is_empty() {
            let got: Vec<(Vec<u8>, Vec<u8>)> = rig
                .backend
                .requests()
                .iter()
                .map(|r| (request_line(&r.head).to_vec(), r.raw_body.clone()))
                .collect();
            if got != rig.expected {
                failures.push(format!(
                    "the backend's whole record differs from what was sent:\n{:?}",
                    got.iter().map(|(l, _)| show(l)).collect::<Vec<_>>()
                ));
            }
        }
        rig.lb.assert_alive();
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}\n\nlb-mio log:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n"),
            rig.lb.log_text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the table took {:?}",
            started.elapsed()
        );
    }
}

/// The request line of a head, without its CRLF.
fn request_line(head: &[u8]) -> &[u8] {
    &head[..find(head, b"\r\n").unwrap_or(head.len())]
}

/// `<method> <target>` of a request line: what the backend answers.
fn line_text(line: &[u8]) -> Vec<u8> {
    let end = line.iter().rposition(|&b| b == b' ').unwrap_or(line.len());
    line[..end].to_vec()
}

/// Whether lb-mio drops (hop-by-hop) or replaces (`X-Forwarded-*`) a header of this name.
fn not_forwarded(name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || X_FORWARDED.contains(&name)
}

/// The field lines of a head (no request line, no CRLFs, no final empty line).
fn field_lines(head: &[u8]) -> Vec<&[u8]> {
    let end = head.len() - 4;
    let start = (request_line(head).len() + 2).min(end);
    if start >= end {
        return Vec::new();
    }
    head[start..end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

fn field_name(line: &[u8]) -> String {
    let end = line.iter().position(|&b| b == b':').unwrap_or(line.len());
    show(&line[..end]).to_ascii_lowercase()
}

/// The backend's request is the client's, byte for byte: request line, every end-to-end field
/// line in order, then exactly the lines lb-mio adds, and the body as sent.
fn same_request(got: &Request, sent: &Sent) -> Result<(), String> {
    let line = request_line(&sent.head);
    let what = show(line);
    if request_line(&got.head) != line {
        return Err(format!(
            "{what}: the backend got request line {:?}",
            show(request_line(&got.head))
        ));
    }
    let client: Vec<&[u8]> = field_lines(&sent.head)
        .into_iter()
        .filter(|l| !not_forwarded(&field_name(l)))
        .collect();
    let host = client.iter().find(|l| field_name(l) == "host").map(|l| {
        let value = &l[l.iter().position(|&b| b == b':').unwrap() + 1..];
        value.trim_ascii().to_vec()
    });
    let mut want: Vec<Vec<u8>> = client.iter().map(|l| l.to_vec()).collect();
    want.push(b"X-Forwarded-For: 127.0.0.1".to_vec());
    want.push(b"X-Forwarded-Proto: http".to_vec());
    if let Some(host) = host {
        want.push([&b"X-Forwarded-Host: "[..], &host].concat());
    }
    if line.ends_with(b"HTTP/1.0") {
        want.push(b"Connection: keep-alive".to_vec());
    }
    let got_lines: Vec<Vec<u8>> = field_lines(&got.head)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    if got_lines != want {
        return Err(format!(
            "{what}: the backend got the field lines {:?}, want {:?}",
            got_lines.iter().map(|l| show(l)).collect::<Vec<_>>(),
            want.iter().map(|l| show(l)).collect::<Vec<_>>()
        ));
    }
    if got.raw_body != sent.body {
        return Err(format!(
            "{what}: the backend got the body {:?}, want {:?}",
            show(&got.raw_body),
            show(&sent.body)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The tests: one rig per group, so the groups run in parallel
// ---------------------------------------------------------------------------------------------

#[test]
fn content_length_and_transfer_encoding() {
    Rig::run(framing_cases());
}

#[test]
fn chunked_framing() {
    Rig::run(chunked_cases());
}

#[test]
fn head_syntax() {
    Rig::run(head_cases());
}

#[test]
fn request_line_and_target() {
    Rig::run(request_line_cases());
}

#[test]
fn host() {
    Rig::run(host_cases());
}

#[test]
fn pipelining() {
    Rig::run(pipelining_cases());
}

/// Every case name is unique and every case names its RFC section, so a failure points at one
/// row and the rule that decides it.
#[test]
fn the_table_is_well_formed() {
    let all: Vec<Case> = [
        framing_cases(),
        chunked_cases(),
        head_cases(),
        request_line_cases(),
        host_cases(),
        pipelining_cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut names: Vec<&str> = all.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "duplicate case names");
    for case in &all {
        assert!(case.rfc.starts_with("RFC "), "{}: {}", case.name, case.rfc);
        if case.end == End::Open || case.end == End::Close {
            assert!(!case.forwarded.is_empty(), "{}", case.name);
        }
    }
}
