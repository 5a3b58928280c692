//! `response_head`: `lb_mio::http::response::parse` on arbitrary bytes.
//!
//! Input layout: one selector byte, then what the backend sent. Selector bits 0-2 pick the
//! request the response answers (`REQUESTS`), bit 3 adds `X-Backend: s1`, bit 4 a sticky
//! `Set-Cookie`, bit 5 a configured `Server`. The head limit is `BUF_SIZE`, as in the proxy.
//!
//! Beyond "never panics":
//! - incomplete only while shorter than the limit; nothing written for an incomplete head or a
//!   refusal other than `TooLarge` (the only one that can come from writing);
//! - an accepted head: `head_len` within the input and the limit; same answer from the head
//!   alone; shorter prefixes incomplete; the limit is inclusive;
//! - the decisions follow RFC 9112 §6.3 and the request: 101 switches only an upgrade request,
//!   other 1xx are interim, HEAD/1xx/204/304 have no body, only a final response with a bounded
//!   body leaves the upstream connection reusable, the client connection stays open exactly when
//!   the client wants it and the body is bounded (and is told `Connection: close` otherwise);
//! - a configured `Server` replaces the backend's: a final response has exactly one, lb-mio's,
//!   an interim one none;
//! - the head the client gets starts with the backend's status line byte-exact and parses again
//!   to the same status, kind and framing, so the client frames the body as the proxy does.

#![no_main]

use lb_mio::buffer::{BufferPool, BUF_SIZE};
use lb_mio::http::body::Framing;
use lb_mio::http::head::HeadError;
use lb_mio::http::request::{self, HeadLimits, Method, Request, MAX_HEADERS};
use lb_mio::http::response::{self, Added, Kind, Response};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{find, first_line, show};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

const REQUESTS: [&[u8]; 8] = [
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
];

const COOKIE: &[u8] = b"lbmio=00000000000000ff; Path=/; HttpOnly";
const SERVER: &str = "lb-mio/fuzz";

/// The `Request`s the proxy keeps for `REQUESTS`.
fn requests() -> &'static [Request] {
    static KEPT: OnceLock<Vec<Request>> = OnceLock::new();
    KEPT.get_or_init(|| {
        let limits = HeadLimits {
            max_bytes: 1024,
            max_headers: 16,
        };
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        REQUESTS
            .iter()
            .map(|head| {
                let mut out = BufferPool::new(0).take();
                request::parse(head, limits, client, &mut out)
                    .expect("valid request")
                    .expect("complete request")
            })
            .collect()
    })
}

type Parsed = (Result<Option<Response>, HeadError>, Vec<u8>);

fn parse(input: &[u8], max_bytes: usize, req: &Request, added: Added) -> Parsed {
    let mut out = BufferPool::new(0).take();
    let result = response::parse(input, max_bytes, req, added, &mut out);
    (result, out.data().to_vec())
}

fn accepted(input: &[u8], req: &Request, added: Added, res: Response, out: &[u8]) {
    assert!(res.head_len <= input.len(), "head_len past the input");
    assert!(res.head_len <= BUF_SIZE, "head_len past the limit");
    let head = &input[..res.head_len];
    assert_eq!(
        parse(head, BUF_SIZE, req, added),
        (Ok(Some(res)), out.to_vec())
    );
    for len in [0, res.head_len / 2, res.head_len - 1] {
        let (result, written) = parse(&input[..len], BUF_SIZE, req, added);
        assert_eq!(
            result,
            Ok(None),
            "prefix {:?} of {:?}",
            show(&input[..len]),
            show(head)
        );
        assert!(written.is_empty());
    }
    assert_eq!(parse(input, res.head_len, req, added).0, Ok(Some(res)));
    assert_eq!(
        parse(input, res.head_len - 1, req, added),
        (Err(HeadError::TooLarge), vec![])
    );

    // The decisions.
    let status = res.status;
    match res.kind {
        Kind::Switch => assert!(status == 101 && req.upgrade),
        Kind::Interim => assert!((100..=199).contains(&status) && status != 101),
        Kind::Final => assert!(!(100..=199).contains(&status)),
    }
    if req.method == Method::Head || matches!(status, 100..=199 | 204 | 304) {
        assert_eq!(res.framing, Framing::Empty);
    }
    if res.reusable {
        assert!(res.kind == Kind::Final && res.framing != Framing::UntilClose);
    }
    assert_eq!(
        res.client_keep_alive,
        req.keep_alive && res.framing != Framing::UntilClose
    );

    // What the client gets.
    assert!(
        out.starts_with(first_line(head)),
        "status line changed: {:?}",
        show(out)
    );
    assert!(out.ends_with(b"\r\n\r\n"), "{:?}", show(out));
    if res.kind == Kind::Final && !res.client_keep_alive {
        assert!(
            find(out, b"\r\nConnection: close\r\n").is_some(),
            "{:?}",
            show(out)
        );
    }
    if res.kind == Kind::Final && added.backend.is_some() {
        assert!(
            find(out, b"\r\nX-Backend: s1\r\n").is_some(),
            "{:?}",
            show(out)
        );
    }
    // What a client's parser makes of it (lb-mio adds up to four headers to at most
    // MAX_HEADERS, so this one needs more room than lb-mio's).
    let mut storage = [httparse::EMPTY_HEADER; 2 * MAX_HEADERS];
    let mut client = httparse::Response::new(&mut storage);
    assert_eq!(
        client.parse(out),
        Ok(httparse::Status::Complete(out.len())),
        "{:?}",
        show(out)
    );
    assert_eq!(client.code, Some(res.status));
    if let Some(server) = added.server {
        let servers: Vec<&[u8]> = client
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("server"))
            .map(|h| h.value)
            .collect();
        let want: &[&[u8]] = match res.kind {
            Kind::Final => &[server.as_bytes()],
            _ => &[],
        };
        assert_eq!(servers, want, "{:?}", show(out));
    }
    if client.headers.len() > MAX_HEADERS {
        return; // more than lb-mio's own parser takes: the checks above must do
    }
    let (again, _) = parse(out, BUF_SIZE, req, Added::default());
    let again = again
        .unwrap_or_else(|e| panic!("client head refused: {e:?}: {:?}", show(out)))
        .unwrap_or_else(|| panic!("client head incomplete: {:?}", show(out)));
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.status, res.status);
    assert_eq!(again.kind, res.kind);
    assert_eq!(again.framing, res.framing, "{:?}", show(out));
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let req = &requests()[usize::from(selector & 7)];
    let mut added = Added::default();
    if selector & 8 != 0 {
        added.backend = Some(("X-Backend", "s1"));
    }
    if selector & 16 != 0 {
        added.set_cookie = Some(COOKIE);
    }
    if selector & 32 != 0 {
        added.server = Some(SERVER);
    }
    let (result, out) = parse(input, BUF_SIZE, req, added);
    match result {
        Ok(Some(res)) => accepted(input, req, added, res, &out),
        Ok(None) => {
            assert!(input.len() < BUF_SIZE, "incomplete past the limit");
            assert!(out.is_empty(), "incomplete head wrote {:?}", show(&out));
        }
        // The client's head may outgrow the buffer while being written: then, and only then,
        // part of it was written (the proxy truncates it).
        Err(HeadError::TooLarge) => {}
        Err(e) => assert!(out.is_empty(), "{e:?} wrote {:?}", show(&out)),
    }
});
