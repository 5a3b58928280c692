//! Malformed and ambiguous requests, sent raw. Every rejected request gets its status and a
//! closed connection, the backend never receives it (nor anything smuggled inside it), lb-mio
//! logs one line for it, names no backend in its answer, and keeps serving afterwards.

mod support;

use std::time::Duration;
use support::*;

/// Small limits so the limit cases stay small; one probe at start and no more, so the backend
/// sees nothing but what the tests send.
const CONFIG: &str = "\
[timeouts]
header_ms = 1000
backend_ms = 1000
[limits]
max_header_bytes = 1024
max_headers = 8
[health]
interval_ms = 3600000
";

const WAIT: Duration = Duration::from_secs(3);

/// A name the backend answers with and that must never reach a client through an error.
const BACKEND_NAME: &str = "secret-backend-7";

#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// lb-mio answers this status itself and closes; the backend gets nothing.
    Reject(u16),
    /// Forwarded: the backend gets a request for this target and the client its 200.
    Forward(&'static str),
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    outcome: Outcome,
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, outcome: Outcome) -> Case {
    Case {
        name,
        bytes: bytes.into(),
        outcome,
    }
}

use Outcome::{Forward, Reject};

/// A complete request that must never reach the backend when it rides inside a rejected one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// An lb-mio in front of one recording backend.
struct Rig {
    backend: Backend,
    lb: Lb,
    /// Targets the backend should have received so far, in order.
    expected: Vec<String>,
}

impl Rig {
    fn start() -> Rig {
        let backend = Backend::start(BACKEND_NAME, |req| {
            Response::ok(format!("{BACKEND_NAME} saw {}", req.target))
        });
        let lb = Lb::start(&ini(&[(BACKEND_NAME, backend.addr)], CONFIG));
        Rig {
            backend,
            lb,
            expected: Vec::new(),
        }
    }

    /// Sends one case on a fresh connection and checks everything a user would.
    fn check(&mut self, case: &Case, index: usize) {
        let name = case.name;
        let mut stream = connect(self.lb.addr);
        let local = stream.local_addr().unwrap();
        send_lenient(&mut stream, &case.bytes);
        let resp = try_read_response(&mut stream)
            .unwrap_or_else(|e| panic!("{name}: no response: {e}\nlog:\n{}", self.lb.log_text()));
        match case.outcome {
            Reject(status) => {
                assert_eq!(resp.status, status, "{name}: {}", resp.head_str());
                assert!(resp.connection_has("close"), "{name}: {}", resp.head_str());
                let rest = read_to_close(&mut stream);
                assert!(rest.is_empty(), "{name}: bytes after the error: {rest:?}");
                let shown = format!("{}{}", resp.head_str(), resp.body_str());
                for secret in [
                    self.backend.addr.to_string(),
                    self.backend.addr.port().to_string(),
                    BACKEND_NAME.to_string(),
                ] {
                    assert!(
                        !shown.contains(&secret),
                        "{name}: error names {secret:?}: {shown}"
                    );
                }
                let line = format!("{local}: rejected request");
                assert!(
                    self.lb.wait_for_log(&line, WAIT),
                    "{name}: no log line {line:?}; log:\n{}",
                    self.lb.log_text()
                );
            }
            Forward(target) => {
                assert_eq!(resp.status, 200, "{name}: {}", resp.head_str());
                assert_eq!(
                    resp.body_str(),
                    format!("{BACKEND_NAME} saw {target}"),
                    "{name}"
                );
                self.expected.push(target.to_string());
            }
        }
        // lb-mio still serves, and the backend has seen exactly what it should.
        let after = format!("/after-{index}");
        let resp = get(self.lb.addr, &after);
        assert_eq!(resp.status, 200, "{name}: follow-up: {}", resp.head_str());
        self.expected.push(after);
        let got: Vec<String> = self
            .backend
            .requests()
            .iter()
            .map(|r| r.target.clone())
            .collect();
        assert_eq!(got, self.expected, "{name}: what the backend received");
        for req in self.backend.requests() {
            let all = format!("{}{}", req.head_str(), req.body_str()).to_ascii_lowercase();
            assert!(!all.contains("smuggled"), "{name}: backend got {all:?}");
        }
    }

    fn run(cases: &[Case]) -> Rig {
        let mut rig = Rig::start();
        for (i, case) in cases.iter().enumerate() {
            rig.check(case, i);
        }
        rig.lb.assert_alive();
        rig
    }
}

fn post_chunked(body: &str) -> String {
    format!("POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
}

#[test]
fn malformed_request_lines_and_headers_get_400() {
    Rig::run(&[
        case(
            "well-formed control",
            "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n",
            Forward("/ok"),
        ),
        case(
            "request line without version",
            "GET /\r\nHost: a\r\n\r\n",
            Reject(400),
        ),
        case(
            "request line with two spaces",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            Reject(400),
        ),
        case(
            "space in the target",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            Reject(400),
        ),
        case(
            "unknown version",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            Reject(400),
        ),
        case(
            "control character in the target",
            "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            Reject(400),
        ),
        case(
            "not HTTP at all",
            "SSH-2.0-OpenSSH_9.6\r\n\r\n",
            Reject(400),
        ),
        case(
            "space in a header name",
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
            Reject(400),
        ),
        case(
            "space before the colon",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 0\r\n\r\n",
            Reject(400),
        ),
        case(
            "header line without a colon",
            "GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
            Reject(400),
        ),
        case(
            "NUL in a header value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
            Reject(400),
        ),
        case(
            "0x01 in a header value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",
            Reject(400),
        ),
        case(
            "DEL in a header value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n",
            Reject(400),
        ),
        case(
            "lone CR in a header value",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
            Reject(400),
        ),
        case(
            "obs-fold continuation line",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
            Reject(400),
        ),
        case(
            "obs-fold with a tab",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n\tb\r\n\r\n",
            Reject(400),
        ),
        case(
            "bare LF line endings",
            "GET / HTTP/1.1\nHost: a\n\n",
            Reject(400),
        ),
        case(
            "one bare LF among CRLFs",
            "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
            Reject(400),
        ),
        case(
            "leading bare LF",
            "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            Reject(400),
        ),
    ]);
}

#[test]
fn ambiguous_framing_gets_400_or_501_and_smuggles_nothing() {
    Rig::run(&[
        case(
            "duplicate Content-Length",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 35\r\n\r\n{SMUGGLED}"),
            Reject(400),
        ),
        case(
            "duplicate equal Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            Reject(400),
        ),
        case(
            "comma-joined Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            Reject(400),
        ),
        case(
            "signed Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            Reject(400),
        ),
        case(
            "hex Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
            Reject(400),
        ),
        case(
            "Content-Length too big to be real",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            Reject(400),
        ),
        case(
            "CL.TE",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            Reject(400),
        ),
        case(
            "TE.CL",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n23\r\n{SMUGGLED}\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "Transfer-Encoding: chunked, identity",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            Reject(400),
        ),
        case(
            "Transfer-Encoding: identity",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            Reject(400),
        ),
        case(
            "Transfer-Encoding: gzip",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            Reject(400),
        ),
        case(
            "empty Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
            Reject(400),
        ),
        case(
            "Transfer-Encoding: gzip, chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            Reject(501),
        ),
        case(
            "two Transfer-Encoding headers",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Reject(400),
        ),
        case(
            "Transfer-Encoding in HTTP/1.0",
            format!("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n23\r\n{SMUGGLED}\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "chunked in any case is chunked (control)",
            "POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            Forward("/chunked"),
        ),
    ]);
}

#[test]
fn bad_chunked_bodies_get_400_and_the_backend_never_gets_the_rest() {
    Rig::run(&[
        case(
            "non-hex chunk size",
            post_chunked(&format!("zz\r\n{SMUGGLED}")),
            Reject(400),
        ),
        case(
            "negative chunk size",
            post_chunked(&format!("-1\r\n{SMUGGLED}")),
            Reject(400),
        ),
        case(
            "0x-prefixed chunk size",
            post_chunked(&format!("0x23\r\n{SMUGGLED}\r\n0\r\n\r\n")),
            Reject(400),
        ),
        case(
            "chunk size of 17 digits",
            post_chunked(&format!("10000000000000023\r\n{SMUGGLED}\r\n0\r\n\r\n")),
            Reject(400),
        ),
        case(
            "empty chunk size",
            post_chunked(&format!("\r\n{SMUGGLED}")),
            Reject(400),
        ),
        case(
            "missing CRLF after chunk data",
            post_chunked(&format!("3\r\nabc{SMUGGLED}0\r\n\r\n")),
            Reject(400),
        ),
        case(
            "bare LF after chunk size",
            post_chunked(&format!("3\nabc\r\n0\r\n\r\n{SMUGGLED}")),
            Reject(400),
        ),
        case(
            "control character in a chunk extension",
            post_chunked("3;x=\x01\r\nabc\r\n0\r\n\r\n"),
            Reject(400),
        ),
        case(
            "valid chunked body (control)",
            "POST /chunked-ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer-A: b\r\n\r\n",
            Forward("/chunked-ok"),
        ),
    ]);
}

#[test]
fn host_rules() {
    Rig::run(&[
        case(
            "missing Host in HTTP/1.1",
            "GET / HTTP/1.1\r\n\r\n",
            Reject(400),
        ),
        case(
            "missing Host with an absolute target",
            "GET http://a/ HTTP/1.1\r\n\r\n",
            Reject(400),
        ),
        case(
            "two Host headers",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            Reject(400),
        ),
        case(
            "two Host headers in different case",
            "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            Reject(400),
        ),
        case(
            "HTTP/1.0 without Host (control)",
            "GET /ten HTTP/1.0\r\n\r\n",
            Forward("/ten"),
        ),
    ]);
}

/// A head of exactly `len` bytes with `Host` and one padding header.
fn head_of_len(target: &str, len: usize) -> String {
    let start = format!("GET {target} HTTP/1.1\r\nHost: a\r\nX-Pad: ");
    let pad = len - start.len() - "\r\n\r\n".len();
    format!("{start}{}\r\n\r\n", "p".repeat(pad))
}

/// A head with `count` header fields (`Host` included).
fn head_with_headers(target: &str, count: usize) -> String {
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: a\r\n");
    for i in 1..count {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head
}

#[test]
fn heads_over_the_limits_get_431() {
    assert_eq!(head_of_len("/x", 1024).len(), 1024);
    Rig::run(&[
        case(
            "head of exactly max_header_bytes (control)",
            head_of_len("/at-limit", 1024),
            Forward("/at-limit"),
        ),
        case(
            "head one byte over max_header_bytes",
            head_of_len("/", 1025),
            Reject(431),
        ),
        case(
            "head far over max_header_bytes",
            head_of_len("/", 12_000),
            Reject(431),
        ),
        case(
            "head over the limit and never finished",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}", "p".repeat(2000)),
            Reject(431),
        ),
        case(
            "exactly max_headers fields (control)",
            head_with_headers("/eight", 8),
            Forward("/eight"),
        ),
        case(
            "one field over max_headers",
            head_with_headers("/", 9),
            Reject(431),
        ),
        case(
            "many small fields",
            head_with_headers("/", 100),
            Reject(431),
        ),
    ]);
}

#[test]
fn connect_gets_501() {
    Rig::run(&[
        case(
            "CONNECT",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            Reject(501),
        ),
        case(
            "CONNECT with a tunnel payload after it",
            format!("CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n{SMUGGLED}"),
            Reject(501),
        ),
    ]);
}

#[test]
fn bytes_after_a_content_length_body_are_the_next_request_and_are_checked() {
    let rig = Rig::start();
    let mut stream = connect(rig.lb.addr);
    send(
        &mut stream,
        "POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGARBAGE\r\n\r\n",
    );
    let first = read_response(&mut stream);
    assert_eq!(first.status, 200, "{}", first.head_str());
    let second = read_response(&mut stream);
    assert_eq!(second.status, 400, "{}", second.head_str());
    assert!(read_to_close(&mut stream).is_empty());
    let reqs = rig.backend.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].target, "/first");
    assert_eq!(reqs[0].body, b"abc");
}

#[test]
fn a_bad_request_pipelined_after_a_good_one_is_refused_alone() {
    let rig = Rig::start();
    let mut stream = connect(rig.lb.addr);
    send(
        &mut stream,
        format!("GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{SMUGGLED}"),
    );
    let first = read_response(&mut stream);
    assert_eq!(first.status, 200);
    assert_eq!(first.body_str(), format!("{BACKEND_NAME} saw /one"));
    let second = read_response(&mut stream);
    assert_eq!(second.status, 400, "{}", second.head_str());
    assert!(read_to_close(&mut stream).is_empty());
    let targets: Vec<String> = rig
        .backend
        .requests()
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(targets, ["/one"]);
}

#[test]
fn a_chunked_body_that_goes_bad_after_forwarding_began_is_cut_off() {
    let rig = Rig::start();
    let mut stream = connect(rig.lb.addr);
    send(
        &mut stream,
        "POST /stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    // The head (and the good chunk) go to the backend before the bad part exists.
    assert!(
        wait_until(WAIT, || rig.backend.open_connections() >= 1),
        "lb-mio did not connect to the backend"
    );
    send(&mut stream, format!("zz\r\n{SMUGGLED}"));
    let resp = read_response(&mut stream);
    assert_eq!(resp.status, 400, "{}", resp.head_str());
    assert!(read_to_close(&mut stream).is_empty());
    // The backend never sees a complete request: its connection is closed mid-body.
    assert!(
        wait_until(WAIT, || rig.backend.open_connections() == 0),
        "lb-mio kept the backend connection of a rejected body open"
    );
    assert_eq!(
        rig.backend.request_count(),
        0,
        "{:?}",
        rig.backend.requests()
    );
    assert_eq!(get(rig.lb.addr, "/after").status, 200);
    let targets: Vec<String> = rig
        .backend
        .requests()
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(targets, ["/after"]);
}

/// Every answer lb-mio makes itself is framed exactly: a client that reads `Content-Length`
/// bytes and then waits for the close finds nothing left over.
fn assert_exact_reply(raw: &str, status: u16) {
    let rig = Rig::start();
    let mut stream = connect(rig.lb.addr);
    send_lenient(&mut stream, raw.as_bytes());
    let resp = read_response(&mut stream);
    assert_eq!(resp.status, status, "{}", resp.head_str());
    let rest = read_to_close(&mut stream);
    assert!(
        rest.is_empty(),
        "{status}: {rest:?} after the declared body {:?}",
        resp.body_str()
    );
}

#[test]
fn the_400_and_501_replies_are_framed_exactly() {
    assert_exact_reply("GET /\r\n\r\n", 400);
    assert_exact_reply("CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n", 501);
}

/// Regression: the 431 answer once said `Content-Length: 22` and sent 23 bytes.
#[test]
fn the_431_reply_is_framed_exactly() {
    assert_exact_reply(&head_with_headers("/", 9), 431);
}

// ---------------------------------------------------------------------------------------------
// Regressions: each of these was broken when these tests were written
// ---------------------------------------------------------------------------------------------

/// RFC 9112 §2.2 lets a server skip empty lines before the request line. lb-mio once skipped
/// them while parsing but then forwarded "the first line" of the raw bytes as the request line:
/// the backend got `\r\n` + headers, without `GET /lead HTTP/1.1`.
#[test]
fn an_empty_line_before_the_request_line_does_not_lose_the_request_line() {
    let rig = Rig::start();
    let mut stream = connect(rig.lb.addr);
    send(&mut stream, "\r\nGET /lead HTTP/1.1\r\nHost: a\r\n\r\n");
    let resp = read_response(&mut stream);
    match resp.status {
        400 => assert_eq!(rig.backend.request_count(), 0),
        200 => {
            let req = rig.backend.last_request();
            assert_eq!(req.target, "/lead");
            assert!(
                req.head_str().starts_with("GET /lead HTTP/1.1\r\n"),
                "{:?}",
                req.head_str()
            );
        }
        other => panic!(
            "expected 200 (forwarded whole) or 400, got {other}: {}",
            resp.head_str()
        ),
    }
}

/// `Connection: content-length` once made lb-mio treat the request's framing header as
/// hop-by-hop and drop it while the body still went out: the backend read the body as the next
/// request (request smuggling).
#[test]
fn connection_cannot_strip_framing_headers() {
    let rig = Rig::start();
    let cases = [
        format!("POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\nConnection: content-length\r\n\r\n{SMUGGLED}"),
        format!("POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n23\r\n{SMUGGLED}\r\n0\r\n\r\n"),
    ];
    for raw in cases {
        let mut stream = connect(rig.lb.addr);
        send(&mut stream, &raw);
        let resp = read_response(&mut stream);
        assert!(matches!(resp.status, 200 | 400), "{}", resp.head_str());
        drop(stream);
        assert_eq!(get(rig.lb.addr, "/after").status, 200);
        for req in rig.backend.requests() {
            assert_ne!(
                req.target, "/smuggled",
                "the backend got a smuggled request"
            );
            if req.target != "/after" {
                assert_eq!(req.body_str(), SMUGGLED, "{}: body lost", req.target);
            }
        }
    }
}

/// `Connection: host` once made lb-mio drop `Host`: the backend got an HTTP/1.1 request without
/// one, which lb-mio itself refuses from clients.
#[test]
fn connection_cannot_strip_host() {
    let rig = Rig::start();
    let resp = request(
        rig.lb.addr,
        "GET /h HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
    );
    match resp.status {
        400 => assert_eq!(rig.backend.request_count(), 0),
        200 => assert_eq!(rig.backend.last_request().header("host"), Some("a")),
        other => panic!("expected 200 or 400, got {other}"),
    }
}
