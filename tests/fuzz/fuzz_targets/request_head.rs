//! `request_head`: `lb_mio::http::request::parse` on arbitrary bytes, the input being exactly
//! what a client sent (no selector bytes: seeds are raw requests). Limits are `[limits]`'s
//! defaults; the client address (IPv4, IPv6 or IPv4-mapped) follows the input length.
//!
//! Beyond "never panics":
//! - nothing is written for a refused or incomplete head, and a head is incomplete only while
//!   it is shorter than the limit;
//! - an accepted head took at most the input and the limit; the head alone gets the same answer
//!   and the same output; shorter prefixes of it are incomplete; the byte and header-count limits
//!   are inclusive (exactly the head's size and count accept, one less is `TooLarge`);
//! - the head the backend gets starts with the client's request line byte-exact, ends in CRLF
//!   CRLF and parses again to the same method, version, framing, upgrade and sticky token, with
//!   the same `Host`; forwarding it once more changes nothing but `X-Forwarded-For`, which gains
//!   the client address (so no header the client sent survives that should have been dropped).

#![no_main]

use lb_mio::buffer::{BufferPool, BUF_SIZE};
use lb_mio::config::HashKey;
use lb_mio::http::head::HeadError;
use lb_mio::http::request::{self, Forwarding, HeadLimits, Request, Wanted, MAX_HEADERS};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{find, first_line, show};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `[limits] max_header_bytes` and `max_headers` defaults.
const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 8192,
    max_headers: 64,
};
/// Roomy enough for any head the proxy writes from a head under `LIMITS`.
const REPARSE: HeadLimits = HeadLimits {
    max_bytes: BUF_SIZE,
    max_headers: MAX_HEADERS,
};

const CLIENTS: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x17)),
    // ::ffff:10.1.2.3, written as 10.1.2.3
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a01, 0x0203)),
];

type Parsed = (Result<Option<Request>, HeadError>, Vec<u8>);

fn parse(input: &[u8], limits: HeadLimits, client: IpAddr) -> Parsed {
    let mut out = BufferPool::new(0).take();
    let result = request::parse(input, limits, client, &mut out);
    (result, out.data().to_vec())
}

/// The value `hash` balances `input` by with `key`, if the head is accepted and has one.
fn hash_value(input: &[u8], limits: HeadLimits, client: IpAddr, key: &HashKey) -> Option<Vec<u8>> {
    let forwarding = Forwarding {
        hash_key: Some(key),
        ..Forwarding::default()
    };
    let mut out = BufferPool::new(0).take();
    let (req, ()) =
        request::parse_routed(input, limits, client, Wanted::default(), &mut out, |_| {
            Ok((forwarding, ()))
        })
        .ok()??;
    req.hash_source.map(|span| span.of(input).to_vec())
}

/// How many header fields httparse finds in a complete head.
fn header_count(head: &[u8]) -> usize {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => req.headers.len(),
        other => panic!("an accepted head no longer parses: {other:?}"),
    }
}

fn accepted(input: &[u8], client: IpAddr, req: Request, out: &[u8]) {
    assert!(req.head_len <= input.len(), "head_len past the input");
    assert!(req.head_len <= LIMITS.max_bytes, "head_len past the limit");
    let head = &input[..req.head_len];

    // The bytes after the head (a body, the next request) change nothing.
    assert_eq!(parse(head, LIMITS, client), (Ok(Some(req)), out.to_vec()));
    // Any shorter prefix is still incomplete.
    for len in [0, req.head_len / 2, req.head_len - 1] {
        let (result, written) = parse(&input[..len], LIMITS, client);
        assert_eq!(
            result,
            Ok(None),
            "prefix {:?} of {:?}",
            show(&input[..len]),
            show(head)
        );
        assert!(written.is_empty());
    }
    // The limits are inclusive.
    let exact = HeadLimits {
        max_bytes: req.head_len,
        ..LIMITS
    };
    assert_eq!(parse(input, exact, client).0, Ok(Some(req)));
    let short = HeadLimits {
        max_bytes: req.head_len - 1,
        ..LIMITS
    };
    assert_eq!(
        parse(input, short, client),
        (Err(HeadError::TooLarge), vec![])
    );
    let count = header_count(head);
    assert!(count <= LIMITS.max_headers);
    let exact = HeadLimits {
        max_headers: count,
        ..LIMITS
    };
    assert_eq!(parse(input, exact, client).0, Ok(Some(req)));
    if count > 0 {
        let fewer = HeadLimits {
            max_headers: count - 1,
            ..LIMITS
        };
        assert_eq!(
            parse(input, fewer, client),
            (Err(HeadError::TooLarge), vec![])
        );
    }

    // What the backend gets: the same request line, a complete head, the same decisions.
    assert!(
        out.starts_with(first_line(head)),
        "request line changed: {:?}",
        show(out)
    );
    assert!(out.ends_with(b"\r\n\r\n"), "{:?}", show(out));
    let (again, twice) = parse(out, REPARSE, client);
    let again = again
        .unwrap_or_else(|e| panic!("forwarded head refused: {e:?}: {:?}", show(out)))
        .unwrap_or_else(|| panic!("forwarded head incomplete: {:?}", show(out)));
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.method, req.method);
    assert_eq!(again.http10, req.http10);
    assert_eq!(again.framing, req.framing, "{:?}", show(out));
    assert_eq!(again.upgrade, req.upgrade);
    assert_eq!(again.sticky, req.sticky);
    let host = HashKey::Header("host".to_string());
    assert_eq!(
        hash_value(out, REPARSE, client, &host),
        hash_value(head, LIMITS, client, &host)
    );
    let cookie = HashKey::Cookie("lbmio".to_string());
    let _ = hash_value(head, LIMITS, client, &cookie);

    // Forwarding again only appends the client to X-Forwarded-For.
    let xff = find(out, b"\r\nX-Forwarded-For: ").expect("X-Forwarded-For written") + 2;
    let xff_end = xff + find(&out[xff..], b"\r\n").expect("CRLF");
    let mut want = out[..xff_end].to_vec();
    want.extend_from_slice(format!(", {}", client.to_canonical()).as_bytes());
    want.extend_from_slice(&out[xff_end..]);
    assert_eq!(show(&twice), show(&want), "forwarding is not stable");
}

fuzz_target!(|input: &[u8]| {
    let client = CLIENTS[input.len() % CLIENTS.len()];
    let (result, out) = parse(input, LIMITS, client);
    match result {
        Ok(Some(req)) => accepted(input, client, req, &out),
        Ok(None) => {
            assert!(input.len() < LIMITS.max_bytes, "incomplete past the limit");
            assert!(out.is_empty(), "incomplete head wrote {:?}", show(&out));
        }
        // Under these limits the output always fits, so a refusal never writes.
        Err(e) => assert!(out.is_empty(), "{e:?} wrote {:?}", show(&out)),
    }
});
