//! PROXY protocol through the real binary: headers from trusted balancers name the client in
//! `X-Forwarded-For`; bad or untrusted ones are refused; `send_proxy` puts one before every
//! request to a backend (and every health probe).

mod support;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const TRUST_LOOPBACK: &str = "[lb]\naccept_proxy = on\nproxy_from = 127.0.0.0/8 ::1\n";
const GET: &str = "GET /who HTTP/1.1\r\nHost: h\r\n\r\n";

/// A v2 header: `src` connected to `dst`, both IPv4.
fn v2_header(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

fn forwarded_for(backend: &Backend) -> String {
    let request = backend.last_request();
    request.header("X-Forwarded-For").unwrap_or("").to_string()
}

#[test]
fn a_trusted_v1_header_names_the_client_for_every_request_on_the_connection() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], TRUST_LOOPBACK));
    let mut client = connect(lb.addr);
    send(&mut client, "PROXY TCP4 192.0.2.7 10.0.0.1 56324 80\r\n");
    for path in ["/one", "/two"] {
        let resp = get_on(&mut client, path);
        assert_eq!(resp.status, 200);
        assert_eq!(forwarded_for(&a), "192.0.2.7");
    }
}

#[test]
fn a_trusted_v2_header_names_the_client_and_ipv6_sources_work_too() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], TRUST_LOOPBACK));
    let mut client = connect(lb.addr);
    let mut bytes = v2_header([198, 51, 100, 9], 4000, [10, 0, 0, 1], 80);
    bytes.extend_from_slice(GET.as_bytes());
    send(&mut client, bytes);
    assert_eq!(read_response(&mut client).status, 200);
    assert_eq!(forwarded_for(&a), "198.51.100.9");

    let mut v6 = connect(lb.addr);
    send(&mut v6, format!("PROXY TCP6 2001:db8::7 ::1 1 80\r\n{GET}"));
    assert_eq!(read_response(&mut v6).status, 200);
    assert_eq!(forwarded_for(&a), "2001:db8::7");

    // A balancer's own check (UNKNOWN) leaves the connection's address.
    let mut local = connect(lb.addr);
    send(&mut local, format!("PROXY UNKNOWN\r\n{GET}"));
    assert_eq!(read_response(&mut local).status, 200);
    assert_eq!(forwarded_for(&a), "127.0.0.1");
}

#[test]
fn a_header_split_over_many_writes_is_put_together() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], TRUST_LOOPBACK));
    let mut client = connect(lb.addr);
    let mut bytes = v2_header([203, 0, 113, 5], 1, [10, 0, 0, 1], 80);
    bytes.extend_from_slice(GET.as_bytes());
    for byte in bytes {
        client.write_all(&[byte]).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(read_response(&mut client).status, 200);
    assert_eq!(forwarded_for(&a), "203.0.113.5");
}

#[test]
fn a_bad_header_from_a_trusted_source_closes_the_connection_unanswered() {
    let a = Backend::named("a");
    let extra = format!("{TRUST_LOOPBACK}[admin]\nlisten = 127.0.0.1:0\n");
    let lb = Lb::start(&ini(&[("a", a.addr)], &extra));
    for bad in [
        "PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n",
        "PROXY TCP4 ::1 10.0.0.1 1 2\r\n",
        "PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n",
        "GET / HTTP/1.1\r\nHost: h\r\n\r\n", // no header at all
    ] {
        let mut client = connect(lb.addr);
        send(&mut client, format!("{bad}{GET}"));
        let rest = read_to_close(&mut client);
        assert!(rest.is_empty(), "{bad:?} got {:?}", show(&rest));
    }
    lb.expect_log_count("bad PROXY protocol header", 4, Duration::from_secs(2));
    assert_eq!(a.request_count(), 0);
    // Counted as what happened (closed, unanswered), not as a 400 that was never sent.
    let metrics = admin_request(lb.admin_addr(), "GET", "/metrics", None, None).body_str();
    let has = |line: &str| metrics.lines().any(|l| l == line);
    assert!(
        has("lbmio_closed_total{reason=\"bad_proxy_header\"} 4"),
        "{metrics}"
    );
    assert!(
        has("lbmio_rejected_total{reason=\"bad_request\",status=\"400\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_trusted_source_that_never_sends_its_header_is_closed_at_header_ms() {
    let a = Backend::named("a");
    let extra = format!("{TRUST_LOOPBACK}[timeouts]\nheader_ms = 200\n");
    let lb = Lb::start(&ini(&[("a", a.addr)], &extra));
    let mut client = connect(lb.addr);
    send(&mut client, "PROXY TCP4 192.0.2.7");
    let started = Instant::now();
    assert!(closes_within(&mut client, Duration::from_secs(2)));
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn an_untrusted_source_cannot_choose_its_address() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(
        &[("a", a.addr)],
        "[lb]\naccept_proxy = on\nproxy_from = 10.0.0.0/8\n",
    ));
    let mut v1 = connect(lb.addr);
    send(
        &mut v1,
        format!("PROXY TCP4 192.0.2.7 10.0.0.1 1 80\r\n{GET}"),
    );
    assert_eq!(read_response(&mut v1).status, 400);
    let mut v2 = connect(lb.addr);
    let mut bytes = v2_header([192, 0, 2, 7], 1, [10, 0, 0, 1], 80);
    bytes.extend_from_slice(GET.as_bytes());
    send(&mut v2, bytes);
    assert_eq!(read_response(&mut v2).status, 400);
    assert_eq!(a.request_count(), 0);

    // Plain HTTP from it is served, under its own address.
    assert_eq!(get(lb.addr, "/").status, 200);
    assert_eq!(forwarded_for(&a), "127.0.0.1");
}

/// A raw backend: records each connection's bytes up to the end of the first request head
/// and answers `200 ok`.
fn recording_backend() -> (RawBackend, Arc<Mutex<Vec<Vec<u8>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let backend = RawBackend::start(move |mut stream| {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        while find(&bytes, b"\r\n\r\n").is_none() && bytes.len() < 65536 {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
        record.lock().unwrap().push(bytes);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    });
    (backend, seen)
}

fn recorded_with(seen: &Mutex<Vec<Vec<u8>>>, needle: &str) -> Option<Vec<u8>> {
    let seen = seen.lock().unwrap();
    let found = seen.iter().find(|b| find(b, needle.as_bytes()).is_some());
    found.cloned()
}

#[test]
fn send_proxy_puts_a_header_before_each_request_and_each_probe() {
    for (version, want) in [
        ("v1", b"PROXY TCP4 127.0.0.1 ".to_vec()),
        (
            "v2",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\x00\x00\x01".to_vec(),
        ),
    ] {
        let (raw, seen) = recording_backend();
        let extra = format!("[lb]\nsend_proxy = {version}\n[health]\ninterval_ms = 50\n");
        let lb = Lb::start(&ini(&[("raw", raw.addr)], &extra));
        let mut client = connect(lb.addr);
        let local_port = client.local_addr().unwrap().port();
        for path in ["/first", "/second"] {
            let resp = get_on(&mut client, path);
            assert_eq!(resp.status, 200, "{version}");
            let bytes = recorded_with(&seen, path).expect("the request reached the backend");
            assert!(bytes.starts_with(&want), "{version}: {:?}", show(&bytes));
            let port = match version {
                "v1" => format!(" {local_port} {}\r\nGET {path} ", lb.addr.port()),
                _ => String::new(),
            };
            assert!(find(&bytes, port.as_bytes()).is_some(), "{version}: ports");
        }
        let probe = match version {
            "v1" => "PROXY UNKNOWN\r\nGET /healthcheck ",
            _ => "QUIT\n\x20\x00\x00\x00GET /healthcheck ",
        };
        assert!(
            wait_until(Duration::from_secs(2), || recorded_with(&seen, probe)
                .is_some()),
            "{version}: no probe with a LOCAL header"
        );
    }
}

#[test]
fn two_lb_mios_in_a_row_carry_the_client_through() {
    let a = Backend::named("a");
    let inner = Lb::start(&ini(&[("a", a.addr)], TRUST_LOOPBACK));
    let outer_conf =
        format!("{TRUST_LOOPBACK}send_proxy = v2\n[health]\ninterval_ms = 50\nfall = 1\n");
    let outer = Lb::start(&ini(&[("inner", inner.addr)], &outer_conf));
    let mut client = connect(outer.addr);
    send(
        &mut client,
        format!("PROXY TCP4 192.0.2.44 10.0.0.1 1234 80\r\n{GET}"),
    );
    assert_eq!(read_response(&mut client).status, 200);
    // The inner one learnt the client from the outer one's header, not from the socket.
    assert_eq!(forwarded_for(&a), "192.0.2.44, 192.0.2.44");
    // The outer one's probes (LOCAL headers) keep the inner one up: with fall = 1 a single
    // refused probe would have it marked down and answer 503.
    thread::sleep(Duration::from_millis(300));
    send(&mut client, GET);
    assert_eq!(read_response(&mut client).status, 200);
    assert!(outer.count_log("is down") == 0, "{}", outer.log_text());
}

#[test]
fn a_trusted_balancer_is_not_held_to_the_per_client_connection_cap() {
    let a = Backend::named("a");
    let extra = format!("{TRUST_LOOPBACK}[limits]\nclient_connections = 1\n");
    let lb = Lb::start(&ini(&[("a", a.addr)], &extra));
    // Three connections from the one balancer address, each carrying another client.
    let mut clients: Vec<_> = (1..=3).map(|_| connect(lb.addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        send(
            client,
            format!("PROXY TCP4 192.0.2.{i} 10.0.0.1 1000 80\r\n{GET}"),
        );
        assert_eq!(read_response(client).status, 200, "connection {i}");
    }
    assert_eq!(lb.count_log("client_connections"), 0, "{}", lb.log_text());
}
