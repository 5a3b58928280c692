//! Property tests over the public HTTP API: request and response heads, body framing.

mod support;

use lb_mio::buffer::{BufferPool, BUF_SIZE};
use lb_mio::http::body::{Body, Framing};
use lb_mio::http::head::HeadError;
use lb_mio::http::request::{self, HeadLimits, Request, MAX_HEADERS};
use lb_mio::http::response::{self, Kind, Response};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr};
use support::{show, HOP_BY_HOP, X_FORWARDED};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 15_360,
    max_headers: 64,
};
/// Roomy enough to re-parse any head the proxy writes from a head under `LIMITS`.
const REPARSE: HeadLimits = HeadLimits {
    max_bytes: BUF_SIZE,
    max_headers: MAX_HEADERS,
};

type RequestResult = Result<Option<Request>, HeadError>;
type ResponseResult = Result<Option<Response>, HeadError>;

fn parse_request(input: &[u8], limits: HeadLimits) -> (RequestResult, Vec<u8>) {
    let mut out = BufferPool::new(0).take();
    let result = request::parse(input, limits, CLIENT, &mut out);
    (result, out.data().to_vec())
}

fn parse_response(
    input: &[u8],
    max_bytes: usize,
    req: &Request,
    backend: Option<&str>,
) -> (ResponseResult, Vec<u8>) {
    let mut out = BufferPool::new(0).take();
    let result = response::parse(
        input,
        max_bytes,
        req,
        response::Added::backend(backend.map(|name| ("X-Backend", name))),
        &mut out,
    );
    (result, out.data().to_vec())
}

fn request_for(head: &[u8]) -> Request {
    parse_request(head, LIMITS).0.unwrap().unwrap()
}

// ---- Generators ---------------------------------------------------------------------------

/// Fragments that steer random heads into the interesting parts of the parsers.
const FRAGMENTS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "CONNECT",
    " ",
    "/",
    " HTTP/1.1",
    " HTTP/1.0",
    "HTTP/1.1 ",
    "HTTP/1.0 ",
    "200 OK",
    "101",
    "100",
    "204",
    "304",
    "\r\n",
    "\r\n",
    "\r\n",
    "\n",
    "\r",
    ":",
    ": ",
    ",",
    ", ",
    "\t",
    "Host",
    "Content-Length",
    "content-length",
    "Transfer-Encoding",
    "chunked",
    "gzip",
    "Connection",
    "close",
    "keep-alive",
    "Keep-Alive",
    "upgrade",
    "Upgrade",
    "TE",
    "trailers",
    "Proxy-Connection",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-A",
    "h",
    "0",
    "5",
    "12",
    "-1",
    "+1",
    "99999999999999999999",
    "\0",
    "\x7f",
    "\u{e9}",
    " \r\n",
];

const START_LINES: &[&str] = &[
    "GET / HTTP/1.1",
    "GET / HTTP/1.0",
    "HEAD / HTTP/1.1",
    "POST /p HTTP/1.1",
    "POST /p HTTP/1.0",
    "CONNECT h:1 HTTP/1.1",
    "get / HTTP/1.1",
    "HTTP/1.1 200 OK",
    "HTTP/1.0 200 OK",
    "HTTP/1.1 101 Switching Protocols",
    "HTTP/1.1 100 Continue",
    "HTTP/1.1 204 No Content",
    "HTTP/1.1 304 Not Modified",
];

const NAMES: &[&str] = &[
    "Host",
    "host",
    "Content-Length",
    "content-length",
    "Transfer-Encoding",
    "Connection",
    "connection",
    "Keep-Alive",
    "Upgrade",
    "TE",
    "Proxy-Connection",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-A",
    "x-a",
    "Trailer",
];

const VALUE_PARTS: &[&str] = &[
    "chunked",
    "gzip",
    "close",
    "keep-alive",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "host",
    "x-a",
    "te",
    "0",
    "5",
    "12",
    "+1",
    ",",
    ", ",
    " ",
    "\t",
    "h",
    "websocket",
    "h",
    "\0",
];

/// Mostly CRLF, sometimes a bare LF or trailing whitespace.
fn line_end() -> impl Strategy<Value = &'static str> {
    prop_oneof![20 => Just("\r\n"), 1 => Just("\n"), 1 => Just(" \r\n")]
}

/// A head shaped like a real one, from parts with a meaning to the proxy.
fn structured_head() -> impl Strategy<Value = Vec<u8>> {
    let line = (
        prop::sample::select(NAMES),
        prop::sample::select(vec![":", ": ", ":\t", " :", ":  "]),
        prop::collection::vec(prop::sample::select(VALUE_PARTS), 0..4),
        line_end(),
    )
        .prop_map(|(name, sep, value, end)| format!("{name}{sep}{}{end}", value.concat()));
    (
        prop::sample::select(vec!["", "", "", "\r\n"]),
        prop::sample::select(START_LINES),
        line_end(),
        prop::sample::select(vec!["Host: h\r\n", "Host: h\r\n", "Host: h\r\n", ""]),
        prop::collection::vec(line, 0..6),
        any::<prop::sample::Index>(),
        prop_oneof![8 => Just("\r\n"), 1 => Just(""), 1 => Just("\n")],
    )
        .prop_map(|(lead, start, end, host, mut lines, host_at, last)| {
            lines.insert(host_at.index(lines.len() + 1), host.to_string());
            format!("{lead}{start}{end}{}{last}", lines.concat()).into_bytes()
        })
}

/// A head assembled from `FRAGMENTS` or shaped like a real one.
fn fragment_head() -> impl Strategy<Value = Vec<u8>> {
    let loose = (
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40),
        any::<bool>(),
    )
        .prop_map(|(parts, end)| {
            let mut head = parts.concat().into_bytes();
            if end {
                head.extend_from_slice(b"\r\n\r\n");
            }
            head
        });
    prop_oneof![1 => loose, 3 => structured_head()]
}

/// A request the proxy has kept, from a small set covering its decisions.
fn kept_request() -> impl Strategy<Value = Request> {
    prop::sample::select(vec![
        &b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n",
    ])
    .prop_map(request_for)
}

/// Whether a (lowercase) name has a meaning to the proxy: generated end-to-end headers must
/// avoid them.
fn special(lower: &str) -> bool {
    ["host", "content-length", "transfer-encoding"].contains(&lower)
        || HOP_BY_HOP.contains(&lower)
        || X_FORWARDED.contains(&lower)
}

fn end_to_end_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,15}".prop_filter("special header", |name| {
        let lower = name.to_ascii_lowercase();
        !special(&lower) && !lower.starts_with("x-hop-")
    })
}

/// Optional whitespace around a value.
fn ows() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "  ", "\t", " \t"])
}

/// A header line (CRLF included) with a safe name and a printable value.
fn end_to_end_line() -> impl Strategy<Value = Vec<u8>> {
    (end_to_end_name(), ows(), "([!-~]([ \t]*[!-~])*)?", ows()).prop_map(
        |(name, before, value, after)| format!("{name}:{before}{value}{after}\r\n").into_bytes(),
    )
}

/// A header line the proxy must drop, and the token it adds to `Connection` (if any).
fn hop_line() -> impl Strategy<Value = (Vec<u8>, Option<String>)> {
    prop_oneof![
        Just((b"Keep-Alive: timeout=5\r\n".to_vec(), None)),
        Just((b"keep-alive:\r\n".to_vec(), None)),
        Just((b"TE: trailers\r\n".to_vec(), None)),
        Just((b"Proxy-Connection: keep-alive\r\n".to_vec(), None)),
        Just((b"Upgrade: websocket\r\n".to_vec(), None)),
        "[a-z]{1,8}".prop_map(|suffix| {
            let line = format!("X-Hop-{suffix}: secret\r\n").into_bytes();
            (line, Some(format!("x-HOP-{suffix}")))
        }),
    ]
}

#[derive(Debug, Clone)]
enum Line {
    EndToEnd(Vec<u8>),
    Hop(Vec<u8>, Option<String>),
}

/// A valid request: its bytes (head, then `body` bytes), and what the backend must get.
#[derive(Debug, Clone)]
struct ValidRequest {
    head: Vec<u8>,
    body: Vec<u8>,
    request_line: Vec<u8>,
    /// End-to-end header lines, in order.
    kept: Vec<Vec<u8>>,
    host: Option<Vec<u8>>,
    http10: bool,
    close: bool,
    framing: Framing,
}

fn valid_request() -> impl Strategy<Value = ValidRequest> {
    let method = prop_oneof![
        prop::sample::select(vec![
            "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"
        ])
        .prop_map(str::to_string),
        "[A-Z][A-Z_-]{0,9}".prop_filter("CONNECT", |m| m != "CONNECT"),
    ];
    let target = prop_oneof![
        "/[A-Za-z0-9._~%!$&'()*+,;=:@/?-]{0,40}",
        Just("*".to_string()),
        "http://[a-z]{1,10}(:[0-9]{1,5})?/[a-z0-9/]{0,10}",
    ];
    let lines = prop::collection::vec(
        prop_oneof![
            4 => end_to_end_line().prop_map(Line::EndToEnd),
            1 => hop_line().prop_map(|(line, token)| Line::Hop(line, token)),
        ],
        0..12,
    );
    (
        method,
        target,
        any::<bool>(),
        lines,
        prop::option::of("[a-z0-9.-]{1,20}(:[0-9]{1,5})?"),
        any::<prop::sample::Index>(),
        prop::option::of(0u64..100),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(
            |(method, target, http10, lines, host, host_at, length, close, conn_at)| {
                let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
                let host = match (host, http10) {
                    (None, false) => Some("example.com".to_string()),
                    (host, _) => host,
                };
                let target = match (target.strip_prefix("http://"), &host) {
                    // An absolute-form target names the authority Host names (RFC 9112 §3.2.2).
                    (Some(rest), Some(host)) => {
                        format!(
                            "http://{host}{}",
                            &rest[rest.find('/').unwrap_or(rest.len())..]
                        )
                    }
                    // The asterisk form is for OPTIONS only (RFC 9112 §3.2.4).
                    (None, _) if target == "*" && method != "OPTIONS" => "/".to_string(),
                    _ => target,
                };
                let request_line = format!("{method} {target} {version}\r\n").into_bytes();
                let mut all = lines;
                if let Some(n) = length {
                    all.push(Line::EndToEnd(
                        format!("Content-Length: {n}\r\n").into_bytes(),
                    ));
                }
                if let Some(host) = &host {
                    let at = host_at.index(all.len() + 1);
                    all.insert(at, Line::EndToEnd(format!("Host: {host}\r\n").into_bytes()));
                }
                let mut tokens: Vec<String> = all
                    .iter()
                    .filter_map(|line| match line {
                        Line::Hop(_, token) => token.clone(),
                        Line::EndToEnd(_) => None,
                    })
                    .collect();
                if close {
                    tokens.push("close".to_string());
                }
                if !tokens.is_empty() {
                    let value = tokens.join(", ");
                    let at = conn_at.index(all.len() + 1);
                    all.insert(
                        at,
                        Line::Hop(format!("Connection: {value}\r\n").into_bytes(), None),
                    );
                }
                let mut head = request_line.clone();
                let mut kept = Vec::new();
                for line in all {
                    match line {
                        Line::EndToEnd(bytes) => {
                            head.extend_from_slice(&bytes);
                            kept.push(bytes);
                        }
                        Line::Hop(bytes, _) => head.extend_from_slice(&bytes),
                    }
                }
                head.extend_from_slice(b"\r\n");
                let framing = length.map_or(Framing::Empty, Framing::Length);
                let body = vec![b'b'; length.unwrap_or(0) as usize];
                ValidRequest {
                    head,
                    body,
                    request_line,
                    kept,
                    host: host.map(String::into_bytes),
                    http10,
                    close,
                    framing,
                }
            },
        )
}

impl ValidRequest {
    /// The head the backend must get.
    fn forwarded(&self) -> Vec<u8> {
        let mut want = self.request_line.clone();
        for line in &self.kept {
            want.extend_from_slice(line);
        }
        want.extend_from_slice(b"X-Forwarded-For: 198.51.100.9\r\nX-Forwarded-Proto: http\r\n");
        if let Some(host) = &self.host {
            want.extend_from_slice(b"X-Forwarded-Host: ");
            want.extend_from_slice(host);
            want.extend_from_slice(b"\r\n");
        }
        if self.http10 {
            want.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        want.extend_from_slice(b"\r\n");
        want
    }

    fn wire(&self) -> Vec<u8> {
        [&self.head[..], &self.body[..]].concat()
    }
}

/// A valid response head to a plain GET, with a body framed by its headers.
fn valid_response() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
        prop::sample::select(vec![200u16, 201, 204, 301, 304, 404, 500, 503]),
        "[A-Za-z ]{0,20}",
        prop::collection::vec(end_to_end_line(), 0..10),
        prop_oneof![
            Just(None),
            (0u64..50).prop_map(Some),
            Just(Some(u64::MAX)), // stands for chunked
        ],
    )
        .prop_map(|(version, status, reason, lines, framing)| {
            let mut head = format!("{version} {status} {reason}\r\n").into_bytes();
            for line in lines {
                head.extend_from_slice(&line);
            }
            let body = match framing {
                Some(u64::MAX) => {
                    head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                    b"3\r\nabc\r\n0\r\n\r\n".to_vec()
                }
                Some(n) => {
                    head.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
                    vec![b'r'; n as usize]
                }
                None => b"until close".to_vec(),
            };
            head.extend_from_slice(b"\r\n");
            (head, body)
        })
}

/// A valid chunked body: (chunk sizes, extensions, trailers) encoded on the wire.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((1usize..40, any::<bool>(), any::<bool>()), 0..8),
        prop::collection::vec("[A-Za-z][A-Za-z0-9-]{0,8}: [ -~]{0,10}", 0..3),
        any::<bool>(),
    )
        .prop_map(|(chunks, trailers, last_ext)| {
            let mut wire = Vec::new();
            for (i, (size, upper, ext)) in chunks.into_iter().enumerate() {
                let digits = if upper {
                    format!("{size:X}")
                } else {
                    format!("{size:x}")
                };
                wire.extend_from_slice(digits.as_bytes());
                if ext {
                    wire.extend_from_slice(b";name=value");
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, size));
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(if last_ext { b"0;x\r\n" } else { b"0\r\n" });
            for trailer in trailers {
                wire.extend_from_slice(trailer.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"\r\n");
            wire
        })
}

/// Feeds `wire` to `body` in pieces cut at `cuts`; returns the bytes used, or the error.
fn scan_in_pieces(body: &mut Body, wire: &[u8], cuts: &[usize]) -> Result<usize, String> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut at = 0;
    for end in points {
        let end = end.max(at);
        // A real connection offers everything it holds, not just the new piece.
        let used = body.scan(&wire[at..end]).map_err(|e| e.to_string())?;
        assert!(used <= end - at);
        at += used;
        if body.is_done() {
            break;
        }
    }
    Ok(at)
}

// ---- Properties ---------------------------------------------------------------------------

proptest! {
    // Cheap cases, and an accepted head with a conflict in it is rare: run many.
    #![proptest_config(ProptestConfig::with_cases(8192))]

    /// Heads built from meaningful fragments reach deep into the checks; whatever is
    /// accepted, the backend must frame exactly as the proxy does.
    #[test]
    fn accepted_requests_frame_the_same_for_the_backend(input in fragment_head()) {
        let (result, out) = parse_request(&input, LIMITS);
        match result {
            Ok(Some(req)) => {
                prop_assert!(req.head_len <= input.len());
                prop_assert!(out.ends_with(b"\r\n\r\n"));
                let (again, _) = parse_request(&out, REPARSE);
                let again = again
                    .map_err(|e| TestCaseError::fail(format!("{e:?} for {:?}", show(&out))))?
                    .expect("the forwarded head is complete");
                prop_assert_eq!(again.head_len, out.len());
                prop_assert_eq!(again.method, req.method);
                prop_assert_eq!(again.framing, req.framing, "{:?}", show(&out));
                prop_assert_eq!(again.http10, req.http10);
                prop_assert_eq!(again.upgrade, req.upgrade);
            }
            Ok(None) | Err(_) => prop_assert!(out.is_empty()),
        }
    }

    /// Likewise for responses: the client must frame exactly as the proxy does.
    #[test]
    fn accepted_responses_frame_the_same_for_the_client(
        input in fragment_head(),
        req in kept_request(),
    ) {
        let (result, out) = parse_response(&input, BUF_SIZE, &req, Some("b"));
        if let Ok(Some(res)) = result {
            prop_assert!(res.head_len <= input.len());
            let (again, _) = parse_response(&out, BUF_SIZE, &req, None);
            let again = again
                .map_err(|e| TestCaseError::fail(format!("{e:?} for {:?}", show(&out))))?
                .expect("the client head is complete");
            prop_assert_eq!(again.head_len, out.len());
            prop_assert_eq!(again.status, res.status);
            prop_assert_eq!(again.kind, res.kind);
            prop_assert_eq!(again.framing, res.framing, "{:?}", show(&out));
            if res.kind == Kind::Final && !res.client_keep_alive {
                prop_assert!(show(&out).contains("\r\nConnection: close\r\n"));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..600),
        max_bytes in 1usize..=15_360,
        max_headers in 0usize..=MAX_HEADERS,
        req in kept_request(),
        framing in prop::sample::select(vec![
            Framing::Empty, Framing::Length(10), Framing::Chunked, Framing::UntilClose,
        ]),
    ) {
        let limits = HeadLimits { max_bytes, max_headers };
        let _ = parse_request(&input, limits);
        let _ = parse_response(&input, max_bytes, &req, Some("b"));
        let mut body = Body::new(framing);
        let used = body.scan(&input);
        if let Ok(used) = used {
            prop_assert!(used <= input.len());
        }
    }

    #[test]
    fn valid_requests_are_forwarded_exactly(r in valid_request()) {
        let wire = r.wire();
        let (result, out) = parse_request(&wire, LIMITS);
        let req = result
            .map_err(|e| TestCaseError::fail(format!("{e:?} for {:?}", show(&r.head))))?
            .expect("complete");
        prop_assert_eq!(req.head_len, r.head.len());
        prop_assert_eq!(req.http10, r.http10);
        prop_assert_eq!(req.framing, r.framing);
        prop_assert_eq!(req.keep_alive, !r.close && !r.http10);
        prop_assert!(!req.upgrade);
        prop_assert!(out.starts_with(&r.request_line));
        prop_assert_eq!(show(&out), show(&r.forwarded()));
        // Every end-to-end line appears once per time it was sent, in order.
        let mut rest = &out[r.request_line.len()..];
        for line in &r.kept {
            prop_assert!(rest.starts_with(line), "{:?} not next in {:?}", show(line), show(rest));
            rest = &rest[line.len()..];
        }
    }

    #[test]
    fn split_requests_wait_then_parse_the_same(r in valid_request()) {
        let wire = r.wire();
        let whole = parse_request(&wire, LIMITS);
        prop_assert!(matches!(whole.0, Ok(Some(_))), "{:?}", whole.0);
        let mut out = BufferPool::new(0).take();
        for len in 0..r.head.len() {
            prop_assert_eq!(
                request::parse(&wire[..len], LIMITS, CLIENT, &mut out),
                Ok(None),
                "prefix {:?}",
                show(&wire[..len])
            );
            prop_assert!(out.is_empty());
        }
        // The head alone, the head with its body, the same buffer after waiting: one answer.
        prop_assert_eq!(parse_request(&r.head, LIMITS), whole.clone());
        prop_assert_eq!(request::parse(&wire, LIMITS, CLIENT, &mut out), whole.0);
        prop_assert_eq!(out.data(), &whole.1[..]);
    }

    #[test]
    fn split_responses_wait_then_parse_the_same(
        (head, body) in valid_response(),
        req in kept_request(),
    ) {
        let wire = [&head[..], &body[..]].concat();
        let whole = parse_response(&wire, BUF_SIZE, &req, Some("b"));
        let res = whole.0
            .map_err(|e| TestCaseError::fail(format!("{e:?} for {:?}", show(&head))))?
            .expect("complete");
        prop_assert_eq!(res.head_len, head.len());
        for len in 0..head.len() {
            let (result, out) = parse_response(&wire[..len], BUF_SIZE, &req, Some("b"));
            prop_assert_eq!(result, Ok(None));
            prop_assert!(out.is_empty());
        }
        prop_assert_eq!(parse_response(&head, BUF_SIZE, &req, Some("b")), whole.clone());
        // The body the framing describes is exactly the body that follows.
        let mut body_state = Body::new(res.framing);
        let used = body_state.scan(&body).unwrap();
        match res.framing {
            Framing::UntilClose => prop_assert_eq!(used, body.len()),
            Framing::Empty => prop_assert_eq!(used, 0),
            _ => {
                prop_assert_eq!(used, body.len());
                prop_assert!(body_state.is_done());
            }
        }
    }

    #[test]
    fn chunked_bodies_end_in_the_same_place_however_split(
        wire in chunked_body(),
        next in "[A-Z]{0,10}",
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut stream = wire.clone();
        stream.extend_from_slice(next.as_bytes());
        let mut body = Body::new(Framing::Chunked);
        let used = scan_in_pieces(&mut body, &stream, &cuts)
            .map_err(|e| TestCaseError::fail(format!("{e} for {:?}", show(&wire))))?;
        prop_assert_eq!(used, wire.len());
        prop_assert!(body.is_done());
        prop_assert_eq!(body.scan(next.as_bytes()).unwrap(), 0);
        prop_assert!(body.close());
    }

    #[test]
    fn length_bodies_take_exactly_their_length(
        n in 0u64..500,
        extra in 0usize..100,
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let stream = vec![b'x'; n as usize + extra];
        let mut body = Body::new(Framing::Length(n));
        prop_assert_eq!(scan_in_pieces(&mut body, &stream, &cuts).unwrap(), n as usize);
        prop_assert!(body.is_done());
    }

    #[test]
    fn chunked_garbage_never_overruns(
        input in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut body = Body::new(Framing::Chunked);
        if let Ok(used) = scan_in_pieces(&mut body, &input, &cuts) {
            prop_assert!(used <= input.len());
            if !body.is_done() {
                prop_assert!(!body.close(), "a chunked body cut short is a truncation");
            }
        }
    }
}
