//! The zero-copy relay through the real binary: large bodies each way, close-delimited and
//! chunked ones, tunnels, keep-alive and pipelining, backends that cut a body or send past it,
//! clients that read slowly or not at all, more bodies at once than a worker has pipes, and TLS.
//! Each case checks what a user can see: the exact bytes, a cut body that ends in a reset (never
//! one that looks complete), the access line's byte counts and termination code, and
//! `lbmio_client_bytes_spliced_total`; where the answer must not depend on it, the same case
//! runs with `[lb] splice = off`, whose spliced counter stays 0.

mod support;

use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use support::*;

/// One health probe at start and no more: a backend stays "up" whatever it does.
const NO_HEALTH: &str = "[health]\ninterval_ms = 3600000\n";
/// `/metrics` on a port the kernel picks, and access lines on stderr as text.
const OBSERVED: &str = "[admin]\nlisten = 127.0.0.1:0\n[log]\naccess_log = text\n";
/// How long a log line or a metric may take to show (access lines are flushed every second).
const WAIT: Duration = Duration::from_secs(5);
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// What lb-mio reads with a head (the start of the body with it) goes through its buffer; the
/// rest of a large body is spliced. This is more than one such read.
const READ_WITH_HEAD: u64 = 64 * KIB as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Splice {
    On,
    Off,
}

const BOTH: [Splice; 2] = [Splice::On, Splice::Off];

/// A config for these backends with `splice` set, `/metrics`, the access log, no health
/// checks after the first, then `extra`.
fn config(backends: &[(&str, SocketAddr)], splice: Splice, extra: &str) -> String {
    let value = match splice {
        Splice::On => "on",
        Splice::Off => "off",
    };
    ini(
        backends,
        &format!("[lb]\nsplice = {value}\n{OBSERVED}{NO_HEALTH}{extra}"),
    )
}

/// A counter of lb-mio's `/metrics` with these labels.
#[track_caller]
fn counter(lb: &Lb, name: &str, labels: &[(&str, &str)]) -> u64 {
    metric(lb.admin_addr(), name, labels) as u64
}

/// `lbmio_client_bytes_spliced_total{direction}`.
#[track_caller]
fn spliced(lb: &Lb, direction: &str) -> u64 {
    counter(
        lb,
        "lbmio_client_bytes_spliced_total",
        &[("direction", direction)],
    )
}

/// `lbmio_upstream_connections_total{kind}`.
#[track_caller]
fn upstream_connections(lb: &Lb, kind: &str) -> u64 {
    counter(lb, "lbmio_upstream_connections_total", &[("kind", kind)])
}

/// Checks the spliced counter of `direction` grew from `before` by what `body` bytes that way
/// should add: all of them but what came in with a head (splice on), none (off).
#[track_caller]
fn assert_spliced(lb: &Lb, splice: Splice, direction: &str, before: u64, body: usize) {
    let grew = spliced(lb, direction) - before;
    let body = body as u64;
    match splice {
        Splice::On => assert!(
            grew <= body && grew + READ_WITH_HEAD >= body,
            "{body} body bytes {direction}, {grew} of them spliced"
        ),
        Splice::Off => assert_eq!(grew, 0, "spliced {direction} with splice = off"),
    }
}

/// The fields of a text access line a user checks.
#[derive(Debug)]
struct Access {
    status: Option<u16>,
    bytes_in: u64,
    bytes_out: u64,
    code: String,
}

/// Waits (≤ `WAIT`) for the access line of `"request_line"` and reads it; panics, showing the
/// log, without one.
#[track_caller]
fn access_line(lb: &Lb, request_line: &str) -> Access {
    access_lines(lb, request_line, 1).remove(0)
}

/// Waits (≤ `WAIT`) for `count` access lines of `"request_line"` and reads them.
#[track_caller]
fn access_lines(lb: &Lb, request_line: &str, count: usize) -> Vec<Access> {
    let quoted = format!("\"{request_line}\" ");
    lb.expect_log_count(&quoted, count, WAIT);
    (lb.log_lines_with(&quoted).iter())
        .map(|line| parse_access(line, &quoted))
        .collect()
}

/// The fields after the quoted request line of an access line.
#[track_caller]
fn parse_access(line: &str, quoted: &str) -> Access {
    let rest = &line[line.find(quoted).unwrap() + quoted.len()..];
    // STATUS BACKEND IN OUT TOTAL CONNECT FIRST_BYTE RETRIES CODE ID TLS
    let fields: Vec<&str> = rest.split(' ').collect();
    let number = |i: usize| -> u64 {
        (fields.get(i).and_then(|f| f.parse().ok()))
            .unwrap_or_else(|| panic!("field {i} of {line:?}"))
    };
    Access {
        status: fields[0].parse().ok(),
        bytes_in: number(2),
        bytes_out: number(3),
        code: fields.get(8).unwrap_or(&"").to_string(),
    }
}

/// `curl -sS --max-time 10 ARGS`, run to its end.
fn curl(args: &[&str]) -> Output {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10"]).args(args);
    run_within(&mut command, TOOL_TIMEOUT).expect("run curl")
}

/// `curl ARGS`, which must exit 0: its stdout.
#[track_caller]
fn curl_ok(args: &[&str]) -> String {
    curl(args).stdout_of_success(&format!("curl {args:?}"))
}

fn url(lb: &Lb, path: &str) -> String {
    format!("http://{}{path}", lb.addr)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// How a connection's reading ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// An orderly close (FIN).
    Closed,
    /// A reset: the response, whatever arrived of it, is not complete.
    Reset,
}

/// Reads until the peer closes: the bytes and how it ended. Panics on a timeout.
#[track_caller]
fn read_until_end(stream: &mut TcpStream) -> (Vec<u8>, End) {
    read_slowly_until_end(stream, Duration::ZERO)
}

/// `read_until_end`, pausing `pause` after each read.
#[track_caller]
fn read_slowly_until_end(stream: &mut TcpStream, pause: Duration) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * KIB];
    // Bounded: each read brings a byte at least, and no answer here is over 64 MiB.
    for _ in 0..64 * MIB {
        match stream.read(&mut buf) {
            Ok(0) => return (got, End::Closed),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                thread::sleep(pause);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (got, End::Reset),
            Err(e) => panic!("reading after {} bytes: {e}", got.len()),
        }
    }
    panic!("no end after {} bytes", got.len())
}

/// A backend answering every request with `body` (200, `Content-Length`).
fn serving(body: &Arc<Vec<u8>>) -> Backend {
    let body = Arc::clone(body);
    Backend::start("a", move |_| Response::ok(body.as_slice()))
}

// ---------------------------------------------------------------------------------------------
// Bodies with a length, each way
// ---------------------------------------------------------------------------------------------

#[test]
fn a_one_mebibyte_response_is_exact_spliced_and_logged_as_head_plus_body() {
    let body = Arc::new(lcg_bytes(MIB, 1));
    let backend = serving(&body);
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let dir = TempDir::new("-splice");
        let file = dir.path().join("body");
        let sizes = curl_ok(&[
            "-o",
            path_str(&file),
            "-w",
            "%{size_header} %{size_download}",
            &url(&lb, "/one"),
        ]);
        let got = std::fs::read(&file).unwrap();
        assert_same_bytes(&got, &body, &format!("the body, splice {splice:?}"));
        let (head, size): (u64, u64) = match sizes.split_once(' ') {
            Some((h, s)) => (h.parse().unwrap(), s.parse().unwrap()),
            None => panic!("curl -w: {sizes:?}"),
        };
        assert_eq!(size, MIB as u64);
        let line = access_line(&lb, "GET /one HTTP/1.1");
        assert_eq!((line.status, line.code.as_str()), (Some(200), "--"));
        assert_eq!(line.bytes_out, head + size, "{splice:?}: head + body");
        let out = counter(&lb, "lbmio_client_bytes_total", &[("direction", "out")]);
        assert_eq!(out, head + size, "{splice:?}: client bytes out");
        assert_spliced(&lb, splice, "out", 0, MIB);
    }
}

#[test]
fn a_one_mebibyte_upload_reaches_the_backend_exact_with_and_without_expect() {
    let backend = Backend::start("a", |req| Response::ok(req.body.len().to_string()));
    let body = lcg_bytes(MIB, 2);
    let file = TempFile::new(".bin", &body);
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        for (target, expect) in [("/plain", "Expect:"), ("/expect", "Expect: 100-continue")] {
            let what = format!("{target}, splice {splice:?}");
            let before = spliced(&lb, "in");
            let upload = format!("@{}", file.path_str());
            let out = curl_ok(&[
                "--data-binary",
                &upload,
                "-H",
                expect,
                "-H",
                "Content-Type: application/octet-stream",
                "-w",
                " %{http_code} %{size_request} %{size_upload}",
                &url(&lb, target),
            ]);
            let [answer, status, request, upload] = out.split(' ').collect::<Vec<_>>()[..] else {
                panic!("{what}: curl said {out:?}")
            };
            assert_eq!(
                (status, answer, upload),
                ("200", "1048576", "1048576"),
                "{what}"
            );
            // curl counts the body in `size_request` only when it sent it with the head.
            let request: u64 = request.parse().unwrap();
            let head = request.checked_sub(MIB as u64).unwrap_or(request);
            let seen = backend.last_request();
            assert_eq!(seen.target, target);
            assert_same_bytes(&seen.body, &body, &format!("the upload {what}"));
            let line = access_line(&lb, &format!("POST {target} HTTP/1.1"));
            assert_eq!(line.code, "--", "{what}");
            assert_eq!(line.bytes_in, head + MIB as u64, "{what}: head + body in");
            assert_spliced(&lb, splice, "in", before, MIB);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies without a length
// ---------------------------------------------------------------------------------------------

#[test]
fn a_close_delimited_mebibyte_arrives_whole_then_the_connection_closes() {
    let body = Arc::new(lcg_bytes(MIB, 3));
    let answer = Arc::clone(&body);
    let backend = Backend::start("a", move |_| {
        Response::ok(answer.as_slice()).http10().close_delimited()
    });
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let dir = TempDir::new("-splice");
        let file = dir.path().join("body");
        curl_ok(&["-o", path_str(&file), &url(&lb, "/curl")]);
        let got = std::fs::read(&file).unwrap();
        assert_same_bytes(&got, &body, &format!("curl's body, splice {splice:?}"));

        // A keep-alive client still gets the close that ends the body, and an orderly one.
        let mut client = connect(lb.addr);
        send(&mut client, "GET /raw HTTP/1.1\r\nHost: lb.test\r\n\r\n");
        let (bytes, end) = read_until_end(&mut client);
        let (head, got) = split_response(&bytes);
        assert!(
            head.starts_with("HTTP/1.") && head[8..].starts_with(" 200 "),
            "{head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "{head}"
        );
        assert_same_bytes(&got, &body, &format!("the raw body, splice {splice:?}"));
        assert_eq!(end, End::Closed, "splice {splice:?}");
        assert_spliced(&lb, splice, "out", 0, 2 * MIB);
    }
}

/// `HTTP/1.1 200` with a chunked body of these chunks in one piece, each `size\r\ndata\r\n`,
/// then `0\r\n\r\n`; `extension` on the first size line.
fn chunked_response(chunks: &[&[u8]], extension: &str) -> (Vec<u8>, Vec<u8>) {
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut body = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let ext = if i == 0 { extension } else { "" };
        body.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    (head, body)
}

#[test]
fn large_chunks_arrive_with_their_framing_byte_for_byte() {
    let data = lcg_bytes(300 * KIB + 3, 4);
    let chunks = [
        &data[..200 * KIB],
        &data[200 * KIB..200 * KIB + 3],
        &data[200 * KIB + 3..],
    ];
    let (head, wire) = chunked_response(&chunks, ";part=1");
    let answer = [&head[..], &wire[..]].concat();
    let backend = Backend::start("a", move |req| match req.target.as_str() {
        "/chunked" => Response::raw(answer.clone()),
        _ => Response::ok("after"),
    });
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let mut client = connect(lb.addr);
        let resp = get_on(&mut client, "/chunked");
        assert_eq!(resp.status, 200, "{}", resp.head_str());
        assert_same_bytes(&resp.raw_body, &wire, &format!("chunked wire, {splice:?}"));
        assert_same_bytes(&resp.body, &data, &format!("de-chunked, {splice:?}"));
        // The body's end was found: the connection carries the next request.
        assert_eq!(get_on(&mut client, "/next").body_str(), "after");
        // The two large chunks' data, but for what came in with the head or a size line.
        assert_spliced(&lb, splice, "out", 0, 300 * KIB);
    }
}

#[test]
fn a_chunk_not_ended_by_crlf_after_spliced_data_cuts_the_response_with_a_reset() {
    let data = lcg_bytes(256 * KIB, 5);
    let (head, mut wire) = chunked_response(&[&data], "");
    // The data (after `40000\r\n`) is followed by `XX` where its CRLF belongs.
    let crlf = 7 + data.len();
    wire[crlf..crlf + 2].copy_from_slice(b"XX");
    let answer = [&head[..], &wire[..]].concat();
    let backend = Backend::start("a", move |_| Response::raw(answer.clone()));
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let mut client = connect(lb.addr);
        send(&mut client, "GET /bad HTTP/1.1\r\nHost: lb.test\r\n\r\n");
        let (bytes, end) = read_until_end(&mut client);
        let (head, body) = split_response(&bytes);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(end, End::Reset, "{splice:?}: a clean end after a bad chunk");
        // At most the chunk's size line and data: not the bad bytes, nor what followed them.
        assert!(body.len() <= crlf, "{splice:?}: {} bytes", body.len());
        assert_same_bytes(&body, &wire[..body.len()], "what arrived of the body");
        lb.expect_log("backend a sent a bad chunked body", WAIT);
        assert_eq!(access_line(&lb, "GET /bad HTTP/1.1").code, "SD");
    }
}

// ---------------------------------------------------------------------------------------------
// A backend that cuts a body, or sends past it
// ---------------------------------------------------------------------------------------------

/// A raw backend that answers a health probe, and any other request with `answer`.
fn raw_backend(answer: impl Fn(&TcpStream, &Request) + Send + Sync + 'static) -> RawBackend {
    RawBackend::start(move |stream| {
        if let Some(request) = read_request(&stream) {
            match request.is_probe() {
                true => reply_and_close(&stream, 200),
                false => answer(&stream, &request),
            }
        }
    })
}

#[test]
fn a_backend_cutting_a_spliced_body_halfway_cuts_the_client_and_is_blamed() {
    let body = Arc::new(lcg_bytes(MIB, 6));
    let sent = Arc::clone(&body);
    let backend = raw_backend(move |stream, request| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {MIB}\r\n\r\n");
        let mut out = stream;
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(&sent[..MIB / 2]);
        match request.target.as_str() {
            "/reset" => reset(stream.try_clone().unwrap()),
            _ => {
                let _ = stream.shutdown(Shutdown::Write);
            }
        }
    });
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        for (target, log) in [
            ("/fin", "backend a closed inside a response body"),
            ("/reset", "backend a connection broke mid-response"),
        ] {
            let dir = TempDir::new("-splice");
            let file = dir.path().join("body");
            let out = curl(&["-o", path_str(&file), &url(&lb, target)]);
            let code = out.status.and_then(|s| s.code());
            // 18: a body shorter than its length; 56: the connection reset.
            assert!(
                matches!(code, Some(18 | 56)),
                "{target} {splice:?}: curl exit {code:?}: {}",
                out.stderr
            );
            let got = std::fs::read(&file).unwrap_or_default();
            assert!(
                got.len() <= MIB / 2,
                "{target} {splice:?}: {} bytes",
                got.len()
            );
            assert_same_bytes(&got, &body[..got.len()], "what arrived of the body");
            lb.expect_log(log, WAIT);
            let line = access_line(&lb, &format!("GET {target} HTTP/1.1"));
            assert_eq!(
                (line.status, line.code.as_str()),
                (Some(200), "SD"),
                "{target}"
            );
        }
    }
}

#[test]
fn bytes_a_backend_sends_past_a_spliced_body_never_reach_the_next_request() {
    let body = Arc::new(lcg_bytes(100 * KIB, 7));
    let sent = Arc::clone(&body);
    let backend = RawBackend::start(move |stream| {
        // Bounded: a connection serves at most ten requests.
        for seq in 0..10 {
            let Some(request) = read_request(&stream) else {
                return;
            };
            if request.is_probe() {
                return reply_and_close(&stream, 200);
            }
            let mut out = &stream;
            let answer = match (request.target.as_str(), seq) {
                ("/stray", _) => {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", sent.len());
                    [
                        head.as_bytes(),
                        &sent[..],
                        b"HTTP/1.1 200 OK\r\nGarbage: 1\r\n\r\n",
                    ]
                    .concat()
                }
                (_, 0) => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh".to_vec(),
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nreused".to_vec(),
            };
            if out.write_all(&answer).is_err() {
                return;
            }
        }
    });
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let mut client = connect(lb.addr);
        let resp = get_on(&mut client, "/stray");
        assert_same_bytes(&resp.body, &body, &format!("the body, {splice:?}"));
        let next = get_on(&mut client, "/next");
        assert_eq!(
            (next.status, next.body_str().as_str()),
            (200, "fresh"),
            "{splice:?}"
        );
        // The connection the stray bytes came on was closed, not handed to the next request.
        assert_eq!(upstream_connections(&lb, "opened"), 2, "{splice:?}");
        assert_eq!(upstream_connections(&lb, "reused"), 0, "{splice:?}");
        assert_spliced(&lb, splice, "out", 0, 100 * KIB);
    }
}

// ---------------------------------------------------------------------------------------------
// Slow clients and stopped ones
// ---------------------------------------------------------------------------------------------

#[test]
fn a_slow_reader_gets_sixteen_mebibytes_exact_without_lb_mio_holding_them() {
    let body = Arc::new(lcg_bytes(16 * MIB, 8));
    let backend = serving(&body);
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let pid = lb.pid();
        let before = rss(pid);
        let mut client = connect(lb.addr);
        send(&mut client, "GET /slow HTTP/1.1\r\nHost: lb.test\r\n\r\n");
        let head = try_read_head(&mut client).expect("the response head");
        assert_eq!(head.header("Content-Length"), Some("16777216"));
        let mut got = Vec::with_capacity(body.len());
        let mut buf = vec![0u8; 32 * KIB];
        let mut most = before;
        // Bounded: 16 MiB in reads of at least one byte, a pause every read.
        for reads in 0..body.len() {
            if got.len() == body.len() {
                break;
            }
            let n = client.read(&mut buf).expect("read the body");
            assert!(n > 0, "{splice:?}: closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            if reads % 32 == 0 {
                most = most.max(rss(pid));
            }
            thread::sleep(Duration::from_millis(1));
        }
        assert_same_bytes(&got, &body, &format!("the body read slowly, {splice:?}"));
        let grown = most.saturating_sub(before);
        assert!(
            grown < 4 * MIB as u64,
            "{splice:?}: lb-mio grew by {} KiB for a 16 MiB body read slowly",
            grown / 1024
        );
    }
}

/// A raw backend whose answer to anything but a probe is a 64 MiB body it writes until lb-mio
/// stops taking it; `/small` gets `ok`.
fn endless_backend() -> RawBackend {
    let block = Arc::new(lcg_bytes(64 * KIB, 9));
    raw_backend(move |stream, request| {
        let mut out = stream;
        if request.target == "/small" {
            let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            return;
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 64 * MIB);
        let _ = out.write_all(head.as_bytes());
        for _ in 0..1024 {
            if out.write_all(&block).is_err() {
                return;
            }
        }
    })
}

#[test]
fn clients_that_stop_reading_are_closed_after_backend_ms_and_not_held_against_the_backend() {
    const CLIENTS: usize = 3;
    let backend = endless_backend();
    for splice in BOTH {
        let extra = "[timeouts]\nbackend_ms = 300\n";
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, extra));
        let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| connect(lb.addr)).collect();
        for client in &mut clients {
            send(client, "GET /stalled HTTP/1.1\r\nHost: lb.test\r\n\r\n");
        }
        // Nobody reads: lb-mio's socket buffers and pipes fill, then `backend_ms` passes.
        lb.expect_log_count("client stopped reading the response: closed", CLIENTS, WAIT);
        for client in &mut clients {
            let (bytes, end) = read_until_end(client);
            let (head, body) = split_response(&bytes);
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            assert!(body.len() < 64 * MIB, "{splice:?}: the whole body");
            assert_eq!(end, End::Reset, "{splice:?}: a cut body ended cleanly");
        }
        for line in access_lines(&lb, "GET /stalled HTTP/1.1", CLIENTS) {
            assert_eq!(
                (line.status, line.code.as_str()),
                (Some(200), "cD"),
                "{splice:?}"
            );
        }
        let failures = counter(&lb, "lbmio_backend_failures_total", &[("backend", "a")]);
        assert_eq!(
            failures, 0,
            "{splice:?}: the clients' stall counted against a"
        );
        assert_eq!(counter(&lb, "lbmio_backend_up", &[("backend", "a")]), 1);
        assert_eq!(lb.get_body("/small"), "ok");
        if splice == Splice::On {
            assert!(spliced(&lb, "out") > 0, "nothing spliced before the stall");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keep-alive, pipelining, tunnels
// ---------------------------------------------------------------------------------------------

#[test]
fn pipelined_large_and_small_answers_come_exact_in_order_on_one_reused_backend_connection() {
    let big = Arc::new(lcg_bytes(MIB, 10));
    let chunked = Arc::new(lcg_bytes(600 * KIB, 11));
    let upload = lcg_bytes(256 * KIB, 12);
    let (b, c) = (Arc::clone(&big), Arc::clone(&chunked));
    let backend = Backend::start("a", move |req| match req.target.as_str() {
        "/big" => Response::ok(b.as_slice()),
        "/chunked" => Response::ok(c.as_slice()).chunked(200 * KIB),
        "/upload" => Response::ok(req.body.len().to_string()),
        _ => Response::ok("small"),
    });
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let mut client = connect(lb.addr);
        let post = format!(
            "POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {}\r\n\r\n",
            upload.len()
        );
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n\r\n");
        let pipelined = [
            get("/big").as_bytes(),
            post.as_bytes(),
            &upload,
            get("/small").as_bytes(),
            get("/chunked").as_bytes(),
        ]
        .concat();
        // Written from a thread: lb-mio reads the pipeline as it answers it.
        let mut writer = client.try_clone().unwrap();
        let sender = thread::spawn(move || writer.write_all(&pipelined));
        let what = |n: &str| format!("{n}, {splice:?}");
        assert_same_bytes(&read_response(&mut client).body, &big, &what("/big"));
        assert_eq!(
            read_response(&mut client).body_str(),
            "262144",
            "{splice:?}"
        );
        assert_eq!(read_response(&mut client).body_str(), "small", "{splice:?}");
        assert_same_bytes(
            &read_response(&mut client).body,
            &chunked,
            &what("/chunked"),
        );
        sender.join().unwrap().expect("send the pipeline");
        let uploaded = backend
            .requests()
            .into_iter()
            .find(|r| r.target == "/upload");
        assert_same_bytes(&uploaded.unwrap().body, &upload, &what("the upload"));
        // The next request, on another client connection, takes the same backend connection.
        assert_eq!(lb.get_body("/after"), "small");
        assert_eq!(upstream_connections(&lb, "opened"), 1, "{splice:?}");
        assert_eq!(upstream_connections(&lb, "reused"), 4, "{splice:?}");
        let seen: Vec<usize> = backend.requests().iter().map(|r| r.conn).collect();
        assert!(
            seen.windows(2).rev().take(4).all(|w| w[0] == w[1]),
            "{seen:?}"
        );
        if splice == Splice::On {
            assert!(spliced(&lb, "out") >= MIB as u64, "too little spliced out");
            assert!(
                spliced(&lb, "in") >= 128 * KIB as u64,
                "too little spliced in"
            );
        } else {
            assert_eq!(spliced(&lb, "out") + spliced(&lb, "in"), 0);
        }
    }
}

/// A backend's answer to an upgrade.
const SWITCHING: &str =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// A client with a small window that asked for an upgrade and got the 101: a tunnel.
#[track_caller]
fn open_tunnel(lb: &Lb) -> TcpStream {
    let mut client = small_window_client(lb.addr);
    send(
        &mut client,
        "GET /chat HTTP/1.1\r\nHost: lb.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    let switch = read_response(&mut client);
    assert_eq!(switch.status, 101, "{}", switch.head_str());
    client
}

#[test]
fn a_tunnel_moves_a_mebibyte_each_way_and_a_half_close_still_gets_the_answer() {
    let from_client = Arc::new(lcg_bytes(MIB, 13));
    let from_backend = Arc::new(lcg_bytes(MIB, 14));
    // More than the socket buffers between lb-mio and a client with a small window take.
    let last = Arc::new(lcg_bytes(4 * MIB, 15));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (send_back, record) = (Arc::clone(&from_backend), Arc::clone(&received));
    let send_last = Arc::clone(&last);
    let backend = raw_backend(move |stream, _| {
        let mut io = stream;
        let mut first = vec![0u8; MIB];
        if io.write_all(SWITCHING.as_bytes()).is_err() || io.read_exact(&mut first).is_err() {
            return;
        }
        let _ = io.write_all(&send_back);
        // Then whatever the client sends until its half-close, answered after it: a line and
        // 4 MiB, and the close at once.
        let mut rest = Vec::new();
        let _ = io.read_to_end(&mut rest);
        let answer = format!("after eof: {} more bytes\n", rest.len());
        first.extend_from_slice(&rest);
        *record.lock().unwrap() = first;
        let _ = io.write_all(&[answer.as_bytes(), &send_last].concat());
    });
    let tail = b"the client's last words";
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let mut client = open_tunnel(&lb);
        send(&mut client, from_client.as_slice());
        let mut got = vec![0u8; MIB];
        client.read_exact(&mut got).expect("the backend's mebibyte");
        assert_same_bytes(
            &got,
            &from_backend,
            &format!("backend to client, {splice:?}"),
        );
        send(&mut client, tail);
        client.shutdown(Shutdown::Write).unwrap();
        // Read slowly, behind a small window: the backend has closed long before its last
        // bytes reach the client.
        let (answer, end) = read_slowly_until_end(&mut client, Duration::from_millis(2));
        let line = format!("after eof: {} more bytes\n", tail.len());
        let want = [line.as_bytes(), &last].concat();
        assert_same_bytes(
            &answer,
            &want,
            &format!("the answer to a half-close, {splice:?}"),
        );
        assert_eq!(end, End::Closed, "{splice:?}");
        let want = [from_client.as_slice(), tail].concat();
        let seen = std::mem::take(&mut *received.lock().unwrap());
        assert_same_bytes(&seen, &want, &format!("client to backend, {splice:?}"));
        assert_spliced(&lb, splice, "in", 0, MIB + tail.len());
        let out = spliced(&lb, "out");
        match splice {
            Splice::On => assert!(out + READ_WITH_HEAD >= 5 * MIB as u64, "{out} spliced out"),
            Splice::Off => assert_eq!(out, 0),
        }
    }
}

/// A backend that sends 16 MiB into a tunnel and closes at once, long before a slow client
/// has read them: every byte still reaches the client, then the orderly close.
#[test]
fn a_tunnel_the_backend_closes_before_a_slow_client_read_its_bytes_delivers_them_all() {
    // More than lb-mio's client socket and the pipe take from a client that does not read.
    let last = Arc::new(lcg_bytes(16 * MIB, 16));
    let send_last = Arc::clone(&last);
    let backend = raw_backend(move |stream, _| {
        let mut io = stream;
        let _ = io.write_all(&[SWITCHING.as_bytes(), &send_last].concat());
        // Returning closes the connection at once.
    });
    for splice in BOTH {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let mut client = open_tunnel(&lb);
        // Not reading while the backend writes its last bytes and closes, then slowly.
        thread::sleep(Duration::from_millis(300));
        let (got, end) = read_slowly_until_end(&mut client, Duration::from_millis(1));
        assert_same_bytes(&got, &last, &format!("the tunnel's last bytes, {splice:?}"));
        assert_eq!(end, End::Closed, "{splice:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// More bodies than pipes; TLS
// ---------------------------------------------------------------------------------------------

/// Pipes among the open descriptors of a process.
fn pipes_open(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    (fds.flatten())
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}

/// A client whose receive buffer is small, so a response it does not read stays in lb-mio.
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_recv_buffer_size(16 * KIB).unwrap();
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Reads `want.len()` bytes from `stream` a piece at a time, comparing as it goes.
#[track_caller]
fn read_exact_as(stream: &mut TcpStream, want: &[u8], what: &str) {
    let mut buf = vec![0u8; 64 * KIB];
    for (i, piece) in want.chunks(buf.len()).enumerate() {
        let got = &mut buf[..piece.len()];
        stream
            .read_exact(got)
            .unwrap_or_else(|e| panic!("{what}: piece {i}: {e}"));
        assert_same_bytes(got, piece, &format!("{what}, piece {i}"));
    }
}

#[test]
fn a_hundred_downloads_at_once_on_one_worker_are_exact_beyond_its_sixty_four_pipes() {
    const CLIENTS: usize = 100;
    const MAX_PIPES: usize = 64;
    // More than a loopback connection's socket buffers take from a client that does not read:
    // the rest waits in a pipe, or, with none left, in lb-mio's buffer.
    let body = Arc::new(lcg_bytes(4 * MIB, 15));
    let sent = Arc::clone(&body);
    let backend = raw_backend(move |stream, _| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", sent.len());
        let mut out = stream;
        let _ = out
            .write_all(head.as_bytes())
            .and_then(|()| out.write_all(&sent));
    });
    let lb = Lb::start(&config(&[("a", backend.addr)], Splice::On, ""));
    let pid = lb.pid();
    let own = pipes_open(pid); // stderr, to the test
    let (headed, go) = (Arc::new(AtomicUsize::new(0)), Gate::new());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, body) = (lb.addr, Arc::clone(&body));
            let (headed, go) = (Arc::clone(&headed), go.clone());
            thread::spawn(move || {
                let mut client = small_window_client(addr);
                send(
                    &mut client,
                    format!("GET /{i} HTTP/1.1\r\nHost: lb.test\r\n\r\n"),
                );
                let head = try_read_head(&mut client).expect("a head");
                assert_eq!(head.status, 200);
                // Every response is under way before any is read further.
                headed.fetch_add(1, Ordering::SeqCst);
                assert!(go.wait(Duration::from_secs(10)), "never let go");
                read_exact_as(&mut client, &body, &format!("download {i}"));
            })
        })
        .collect();
    let all_headed = wait_until(Duration::from_secs(10), || {
        headed.load(Ordering::SeqCst) == CLIENTS
    });
    // The bodies fill what pipes the worker may have; it must make no more while they move.
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watch = (Arc::clone(&most), Arc::clone(&done));
    let watcher = thread::spawn(move || {
        for _ in 0..20_000 {
            if watch.1.load(Ordering::SeqCst) {
                return;
            }
            let pipes = pipes_open(pid).saturating_sub(own) / 2;
            watch.0.fetch_max(pipes, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(1));
        }
    });
    let full = wait_until(Duration::from_secs(2), || {
        most.load(Ordering::SeqCst) >= MAX_PIPES
    });
    go.open();
    for client in clients {
        client.join().expect("a download failed");
    }
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let most = most.load(Ordering::SeqCst);
    assert!(all_headed, "not every response started");
    assert!(
        full,
        "at most {most} pipes in use at once: the pool was never full"
    );
    assert!(most <= MAX_PIPES, "{most} pipes open at once");
    let out = spliced(&lb, "out");
    let total = (CLIENTS * body.len()) as u64;
    assert!(out > 0 && out < total, "{out} of {total} bytes spliced");
}

#[test]
fn a_mebibyte_over_tls_is_exact_and_never_spliced() {
    let body = Arc::new(lcg_bytes(MIB, 16));
    let backend = serving(&body);
    let pki = Pki::new();
    let host = "a.example.com";
    let cert = pki.leaf("site", KeyKind::Ecdsa, &[host]);
    let lb = Lb::start(&tls_ini(
        &[("a", backend.addr)],
        &[("site", &cert)],
        &format!("{OBSERVED}{NO_HEALTH}"),
    ));
    let file = pki.path("body");
    let upload = TempFile::new(".bin", &body[..256 * KIB]);
    let up = format!("@{}", upload.path_str());
    let path = path_str(&file);
    support::curl_ok(&pki, host, lb.tls_addr(), &["-o", path], &["/tls"]);
    assert_same_bytes(&std::fs::read(&file).unwrap(), &body, "the body over TLS");
    support::curl_ok(
        &pki,
        host,
        lb.tls_addr(),
        &["--data-binary", &up, "-o", path],
        &["/up"],
    );
    assert_same_bytes(
        &backend.last_request().body,
        &body[..256 * KIB],
        "the upload over TLS",
    );
    let out = counter(&lb, "lbmio_client_bytes_total", &[("direction", "out")]);
    assert!(out > MIB as u64, "{out} bytes out");
    assert_eq!((spliced(&lb, "in"), spliced(&lb, "out")), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// Review: replay given up before any body byte was spliced
// ---------------------------------------------------------------------------------------------

/// A pooled backend connection the backend closes as the next head arrives (its keep-alive
/// timer fired): with no body byte sent yet, the PUT goes again on a fresh connection, as it
/// does with splice off.
#[test]
fn a_large_put_whose_pooled_connection_closes_before_its_body_is_sent_again() {
    const LEN: usize = 64 * KIB;
    let backend = RawBackend::start(move |stream| {
        let mut input = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let mut seq = 0;
        let mut s = &stream;
        loop {
            // The next head.
            let (request, len) = loop {
                if let Some(parsed) = parse_request_head(&input) {
                    break parsed;
                }
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => input.extend_from_slice(&buf[..n]),
                }
            };
            input.drain(..len);
            if request.is_probe() {
                return reply_and_close(&stream, 200);
            }
            if request.target == "/put" && seq > 0 {
                return; // closes: the pooled connection was stale
            }
            if request.target == "/put" {
                while input.len() < LEN {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => input.extend_from_slice(&buf[..n]),
                    }
                }
                input.drain(..LEN);
            }
            let body = if request.target == "/put" {
                "got it"
            } else {
                "warm"
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
            seq += 1;
        }
    });
    for splice in [Splice::Off, Splice::On] {
        let lb = Lb::start(&config(&[("a", backend.addr)], splice, ""));
        let mut client = connect(lb.addr);
        assert_eq!(get_on(&mut client, "/warm").body_str(), "warm");
        // The head first; the body once the backend had time to close the pooled connection.
        let head = format!("PUT /put HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {LEN}\r\n\r\n");
        send(&mut client, head.as_bytes());
        thread::sleep(Duration::from_millis(300));
        send_lenient(&mut client, vec![b'x'; LEN]);
        let resp = read_response(&mut client);
        assert_eq!(
            (resp.status, resp.body_str().as_str()),
            (200, "got it"),
            "{splice:?}"
        );
    }
}
