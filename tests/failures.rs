//! When things go wrong: backends that refuse, hang, talk garbage or die mid-response; clients
//! that are slow, idle, too many, or vanish; a process out of file descriptors. Each test checks
//! the answer a user gets and that lb-mio keeps serving afterwards.

mod support;

use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// One health probe at start and no more: a backend stays "up" whatever the probe said (three
/// failures in a row are needed to mark it down).
const NO_HEALTH: &str = "[health]\ninterval_ms = 3600000\n";

const WAIT: Duration = Duration::from_secs(3);

#[track_caller]
fn assert_names_no_backend(resp: &Resp, backends: &[(&str, SocketAddr)]) {
    let shown = format!("{}{}", resp.head_str(), resp.body_str());
    for (name, addr) in backends {
        assert!(!shown.contains(name), "answer names {name}: {shown}");
        assert!(
            !shown.contains(&addr.port().to_string()),
            "answer names {addr}: {shown}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Backends down or refusing
// ---------------------------------------------------------------------------------------------

#[test]
fn every_backend_refusing_gives_502_after_trying_each() {
    let (d1, d2) = (dead_addr(), dead_addr());
    let lb = Lb::start(&ini(
        &[("dead1", d1), ("dead2", d2)],
        &format!("[lb]\nretries = 2\n{NO_HEALTH}"),
    ));
    let started = Instant::now();
    let resp = get(lb.addr, "/");
    assert_eq!(resp.status, 502, "{}", resp.head_str());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(resp.connection_has("close"), "{}", resp.head_str());
    assert_names_no_backend(&resp, &[("dead1", d1), ("dead2", d2)]);
    for name in ["dead1", "dead2"] {
        let line = format!("backend {name} failed");
        lb.expect_log(&line, WAIT);
    }
}

#[test]
fn all_backends_marked_down_gives_503_with_retry_after_and_recovers() {
    let backend = Backend::named("sick");
    backend.set_healthy(false);
    let lb = Lb::start(&ini(
        &[("sick", backend.addr)],
        "[health]\ninterval_ms = 20\ntimeout_ms = 500\nrise = 1\nfall = 1\n",
    ));
    lb.expect_log("backend sick is down", WAIT);
    let resp = get(lb.addr, "/");
    assert_eq!(resp.status, 503, "{}", resp.head_str());
    let retry_after: u64 = resp
        .header("retry-after")
        .expect("503 has Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    assert_names_no_backend(&resp, &[("sick", backend.addr)]);
    assert_eq!(backend.request_count(), 0, "a down backend got a request");
    lb.expect_log("no backend is up", WAIT);

    backend.set_healthy(true);
    lb.expect_log("backend sick is up", WAIT);
    let resp = get(lb.addr, "/");
    assert_eq!(resp.status, 200, "{}", resp.head_str());
    assert_eq!(resp.body_str(), "sick");
}

#[test]
fn a_refusing_backend_is_skipped_when_retries_allow() {
    let dead = dead_addr();
    let live = Backend::named("live");
    let lb = Lb::start(&ini(
        &[("dead", dead), ("live", live.addr)],
        &format!("[lb]\nretries = 2\n{NO_HEALTH}"),
    ));
    for i in 0..8 {
        let resp = get(lb.addr, &format!("/{i}"));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.head_str());
        assert_eq!(resp.body_str(), "live", "request {i}");
    }
    assert_eq!(live.request_count(), 8);
    // Round robin sent half of them to the dead backend first.
    lb.expect_log("backend dead failed", WAIT);
}

#[test]
fn without_retries_a_refusing_backend_gives_502() {
    let dead = dead_addr();
    let live = Backend::named("live");
    let lb = Lb::start(&ini(
        &[("dead", dead), ("live", live.addr)],
        &format!("[lb]\nretries = 0\n{NO_HEALTH}"),
    ));
    let statuses: Vec<u16> = (0..4)
        .map(|i| get(lb.addr, &format!("/{i}")).status)
        .collect();
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 502)),
        "{statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Backends that hang, talk garbage or die mid-response
// ---------------------------------------------------------------------------------------------

#[test]
fn a_silent_backend_gives_504_after_backend_ms() {
    let gate = Gate::new();
    let held = gate.clone();
    let backend = Backend::start("slow", move |_| {
        held.wait(Duration::from_secs(5));
        Response::ok("late")
    });
    let lb = Lb::start(&ini(
        &[("slow", backend.addr)],
        &format!("[timeouts]\nbackend_ms = 400\n{NO_HEALTH}"),
    ));
    let started = Instant::now();
    let resp = get(lb.addr, "/");
    let took = started.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.head_str());
    assert!(
        took >= Duration::from_millis(350),
        "504 too early: {took:?}"
    );
    assert!(took < Duration::from_millis(2500), "504 too late: {took:?}");
    assert_names_no_backend(&resp, &[("slow", backend.addr)]);
    lb.expect_log(
        "backend slow failed: no response in time",
        Duration::from_secs(1),
    );
    gate.open();
    let resp = get(lb.addr, "/");
    assert_eq!((resp.status, resp.body_str().as_str()), (200, "late"));
}

#[test]
fn a_backend_that_stalls_mid_body_gets_the_client_cut_off_not_a_504() {
    let backend = Backend::start("stall", |_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[b'x'; 30]);
        // Then silence, with the connection open, for longer than the test lasts.
        Response::script(vec![Step::Send(bytes), Step::Sleep(Duration::from_secs(4))])
    });
    let lb = Lb::start(&ini(
        &[("stall", backend.addr)],
        &format!("[timeouts]\nbackend_ms = 400\n{NO_HEALTH}"),
    ));
    let mut stream = connect(lb.addr);
    send(&mut stream, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let started = Instant::now();
    let bytes = read_to_close(&mut stream);
    let took = started.elapsed();
    let (head, body) = split_response(&bytes);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(
        body,
        vec![b'x'; 30],
        "the client gets the partial body and nothing else"
    );
    assert!(
        took >= Duration::from_millis(350),
        "cut too early: {took:?}"
    );
    assert!(took < Duration::from_millis(2500), "cut too late: {took:?}");
}

#[test]
fn backend_garbage_gives_502() {
    // (target, what the backend sends)
    let cases: Vec<(&str, Vec<Step>)> = vec![
        ("/ssh", vec![Step::Send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec())]),
        (
            "/bad-status",
            vec![Step::Send(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n".to_vec())],
        ),
        (
            "/bare-lf",
            vec![Step::Send(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok".to_vec())],
        ),
        (
            "/cl-and-te",
            vec![Step::Send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                    .to_vec(),
            )],
        ),
        (
            "/two-lengths",
            vec![Step::Send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec(),
            )],
        ),
        ("/close-at-once", vec![Step::Close]),
        ("/reset-at-once", vec![Step::Abort]),
    ];
    let table = Arc::new(cases);
    let script = Arc::clone(&table);
    let backend = Backend::start("junk", move |req| {
        if req.target == "/ok" {
            return Response::ok("fine");
        }
        let mut steps = script
            .iter()
            .find(|(target, _)| *target == req.target)
            .map(|(_, steps)| steps.clone())
            .unwrap_or_default();
        steps.push(Step::Close);
        Response::script(steps)
    });
    let lb = Lb::start(&ini(&[("junk", backend.addr)], NO_HEALTH));
    for (target, _) in table.iter() {
        let resp = get(lb.addr, target);
        assert_eq!(resp.status, 502, "{target}: {}", resp.head_str());
        assert!(resp.connection_has("close"), "{target}");
        assert_names_no_backend(&resp, &[("junk", backend.addr)]);
    }
    let resp = get(lb.addr, "/ok");
    assert_eq!((resp.status, resp.body_str().as_str()), (200, "fine"));
}

#[test]
fn a_backend_dying_mid_body_gives_a_truncated_response_and_a_close() {
    let backend = Backend::start("dies", |req| {
        let bytes: Vec<u8> = match req.target.as_str() {
            "/length" => [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"[..],
                &[b'x'; 40],
            ]
            .concat(),
            _ => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n5\r\nab"
                .to_vec(),
        };
        Response::script(vec![Step::Send(bytes), Step::Close])
    });
    // A small backend_ms: this test is about what the client gets, not how soon (see
    // `a_backend_closing_right_after_its_last_bytes_is_noticed_at_once`).
    let lb = Lb::start(&ini(
        &[("dies", backend.addr)],
        &format!("[timeouts]\nbackend_ms = 500\n{NO_HEALTH}"),
    ));

    let mut stream = connect(lb.addr);
    send(&mut stream, "GET /length HTTP/1.1\r\nHost: a\r\n\r\n");
    let (head, body) = split_response(&read_to_close(&mut stream));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Content-Length: 100\r\n"), "{head}");
    assert!(
        body.len() < 100,
        "a complete-looking body: {} bytes",
        body.len()
    );
    assert!(
        body.iter().all(|&b| b == b'x'),
        "nothing but the backend's bytes: {body:?}"
    );

    let mut stream = connect(lb.addr);
    send(&mut stream, "GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n");
    let (head, body) = split_response(&read_to_close(&mut stream));
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        !body.ends_with(b"0\r\n\r\n"),
        "the client must not get a last chunk the backend never sent: {:?}",
        show(&body)
    );
    assert!(
        find(&body, b"HTTP/1.1").is_none(),
        "no second response after a cut"
    );
}

/// Regression: a close-delimited body ends where the connection ends, so when its backend broke
/// mid-body lb-mio's orderly close made the cut body look complete. The client gets a reset.
#[test]
fn a_close_delimited_body_cut_by_a_backend_reset_ends_in_a_reset_not_an_end() {
    let backend = RawBackend::start(|stream| {
        if read_request(&stream).is_some() {
            let head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe first part";
            if (&stream).write_all(head).is_ok() {
                thread::sleep(Duration::from_millis(100));
                reset(stream);
            }
        }
    });
    let lb = Lb::start(&ini(&[("cut", backend.addr)], NO_HEALTH));
    let mut stream = connect(lb.addr);
    send(&mut stream, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut buf = [0u8; 4096];
    let end = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    let err = end.expect_err("an orderly end: the cut body looks complete");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

/// A backend that sends its last bytes and closes at once: lb-mio must see the close at once
/// too, not when `backend_ms` runs out. Repeated, because the data and the FIN arrive in one
/// readiness event only some of the time.
#[test]
fn a_backend_closing_right_after_its_last_bytes_is_noticed_at_once() {
    let backend = Backend::start("dies", |req| {
        let bytes: &[u8] = match req.target.as_str() {
            "/mid-body" => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxxxxxxxxxx",
            _ => b"HTTP/1.1 200 OK\r\nContent-Le",
        };
        Response::script(vec![Step::Send(bytes.to_vec()), Step::Close])
    });
    let lb = Lb::start(&ini(
        &[("dies", backend.addr)],
        &format!("[lb]\nretries = 0\n[timeouts]\nbackend_ms = 3000\n{NO_HEALTH}"),
    ));
    for i in 0..10 {
        for target in ["/mid-body", "/mid-head"] {
            let mut stream = connect(lb.addr);
            send(
                &mut stream,
                format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n"),
            );
            let started = Instant::now();
            let bytes = read_to_close(&mut stream);
            let took = started.elapsed();
            let (head, _) = split_response(&bytes);
            let want = if target == "/mid-body" {
                "HTTP/1.1 200 "
            } else {
                "HTTP/1.1 502 "
            };
            assert!(head.starts_with(want), "{target} #{i}: {head}");
            assert!(
                took < Duration::from_millis(1000),
                "{target} #{i}: the backend's close was noticed only after {took:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connect timeout
// ---------------------------------------------------------------------------------------------

/// A loopback listener whose accept queue is full and never drained: the kernel drops further
/// SYNs, so a connect to it hangs until the connecting side gives up. Returns the listener and
/// the connections that fill its queue (keep both alive).
fn black_hole() -> (Socket, Vec<TcpStream>) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => return (socket, fillers), // the queue is full: connects now hang
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

#[test]
fn a_hanging_connect_gives_504_after_connect_ms() {
    let (hole, _fillers) = black_hole();
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let lb = Lb::start(&ini(
        &[("hole", hole_addr)],
        &format!("[lb]\nretries = 0\n[timeouts]\nconnect_ms = 300\n{NO_HEALTH}"),
    ));
    let started = Instant::now();
    let resp = get(lb.addr, "/");
    let took = started.elapsed();
    assert_eq!(resp.status, 504, "{}", resp.head_str());
    assert!(took >= Duration::from_millis(250), "too early: {took:?}");
    assert!(took < Duration::from_millis(2500), "too late: {took:?}");
    lb.expect_log("connect timeout", WAIT);
}

#[test]
fn a_hanging_connect_is_retried_on_another_backend() {
    let (hole, _fillers) = black_hole();
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let live = Backend::named("live");
    let lb = Lb::start(&ini(
        &[("hole", hole_addr), ("live", live.addr)],
        &format!("[lb]\nretries = 1\n[timeouts]\nconnect_ms = 300\n{NO_HEALTH}"),
    ));
    for i in 0..2 {
        let resp = get(lb.addr, &format!("/{i}"));
        assert_eq!(resp.status, 200, "{}", resp.head_str());
        assert_eq!(resp.body_str(), "live");
    }
    lb.expect_log("connect timeout", WAIT);
}

// ---------------------------------------------------------------------------------------------
// Slow, idle and silent clients
// ---------------------------------------------------------------------------------------------

#[test]
fn a_slowloris_head_gets_408_at_header_ms() {
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!("[timeouts]\nheader_ms = 300\nidle_ms = 5000\n{NO_HEALTH}"),
    ));
    let mut stream = connect(lb.addr);
    let started = Instant::now();
    let slow = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: {}\r\n\r\n",
        "z".repeat(60)
    );
    let trickle = Trickle::start(&stream, slow.into_bytes(), Duration::from_millis(25));
    let resp = read_response(&mut stream);
    let took = started.elapsed();
    trickle.stop();
    assert_eq!(resp.status, 408, "{}", resp.head_str());
    assert!(
        took >= Duration::from_millis(250),
        "408 too early: {took:?}"
    );
    assert!(took < Duration::from_millis(2000), "408 too late: {took:?}");
    assert!(read_to_close(&mut stream).is_empty());
    assert_eq!(backend.request_count(), 0);
    assert_eq!(get(lb.addr, "/").status, 200);
}

#[test]
fn a_slow_head_that_finishes_in_time_is_served() {
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!("[timeouts]\nheader_ms = 3000\n{NO_HEALTH}"),
    ));
    let mut stream = connect(lb.addr);
    let head = "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n";
    let _trickle = Trickle::start(&stream, head.as_bytes().to_vec(), Duration::from_millis(5));
    let resp = read_response(&mut stream);
    assert_eq!(resp.status, 200, "{}", resp.head_str());
    assert_eq!(backend.last_request().target, "/slow");
}

/// Waits for the close; whatever arrives before it must be at most a 408.
#[track_caller]
fn closed_within(stream: &mut TcpStream, limit: Duration, lb: &Lb) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let local = stream.local_addr().unwrap();
    let rest = try_read_to_close(stream).unwrap_or_else(|e| {
        panic!(
            "{local}: not closed in {limit:?}: {e}; log:\n{}",
            lb.log_text()
        )
    });
    if !rest.is_empty() {
        let text = show(&rest);
        assert!(
            text.starts_with("HTTP/1.1 408 "),
            "unexpected bytes before the close: {text}"
        );
    }
    started.elapsed()
}

/// A client that sends part of a request and closes at once is let go at once, not after
/// `header_ms` or `backend_ms` (and gets no 408 it can no longer use), and its backend
/// connection with it. Repeated, because the data and the FIN arrive in one readiness event
/// only some of the time.
/// Waits (≤3 s) for lb-mio to close `stream` on a 300 ms timeout and checks when it did.
#[track_caller]
fn assert_closed_after_300ms(stream: &mut TcpStream, lb: &Lb) {
    let took = closed_within(stream, Duration::from_secs(3), lb);
    // lb-mio's clock for this may start a little before ours: half the timeout is the bound.
    assert!(
        took >= Duration::from_millis(150),
        "closed too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2000),
        "closed too late: {took:?}"
    );
}

#[test]
fn a_client_closing_right_after_sending_is_let_go_at_once() {
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!("[timeouts]\nheader_ms = 3000\nbackend_ms = 3000\n{NO_HEALTH}"),
    ));
    let partial = [
        ("mid-head", "GET / HTTP/1.1\r\nHost: a\r\nX-Part"),
        (
            "mid-body",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        ),
    ];
    for i in 0..10 {
        for (stage, bytes) in partial {
            let mut stream = connect(lb.addr);
            send(&mut stream, bytes);
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let started = Instant::now();
            let bytes = read_to_close(&mut stream);
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(1000),
                "{stage} #{i}: closed after {took:?} with {:?}",
                show(&bytes)
            );
        }
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_idle_ms() {
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!("[timeouts]\nheader_ms = 5000\nidle_ms = 300\n{NO_HEALTH}"),
    ));
    let mut stream = connect(lb.addr);
    assert_eq!(get_on(&mut stream, "/").status, 200);
    assert_closed_after_300ms(&mut stream, &lb);
}

#[test]
fn a_keep_alive_connection_used_in_time_stays_open() {
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!("[timeouts]\nheader_ms = 5000\nidle_ms = 1000\n{NO_HEALTH}"),
    ));
    let mut stream = connect(lb.addr);
    for _ in 0..3 {
        assert_eq!(get_on(&mut stream, "/").status, 200);
        assert!(stays_open(&mut stream, Duration::from_millis(300)));
    }
    assert_eq!(backend.request_count(), 3);
}

#[test]
fn a_connection_that_never_sends_is_closed_after_header_ms() {
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!("[timeouts]\nheader_ms = 300\nidle_ms = 5000\n{NO_HEALTH}"),
    ));
    let mut stream = connect(lb.addr);
    assert_closed_after_300ms(&mut stream, &lb);
    assert_eq!(get(lb.addr, "/").status, 200);
}

// ---------------------------------------------------------------------------------------------
// Too many connections, too few file descriptors
// ---------------------------------------------------------------------------------------------

#[test]
fn max_connections_holds_the_next_connection_until_one_closes() {
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!("[timeouts]\nheader_ms = 5000\nidle_ms = 5000\n[limits]\nmax_connections = 2\n{NO_HEALTH}"),
    ));
    let mut a = connect(lb.addr);
    let mut b = connect(lb.addr);
    assert_eq!(get_on(&mut a, "/a").status, 200);
    assert_eq!(get_on(&mut b, "/b").status, 200);

    let mut c = connect(lb.addr); // the kernel completes the handshake; lb-mio does not accept
    send(&mut c, "GET /c HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        stays_open(&mut c, Duration::from_millis(400)),
        "connection 3 was served while 2 were open"
    );
    assert_eq!(backend.request_count(), 2);

    drop(a);
    let resp = read_response(&mut c);
    assert_eq!(resp.status, 200, "{}", resp.head_str());
    assert_eq!(backend.last_request().target, "/c");

    // Still at the limit with b and c: the same again, and b keeps working meanwhile.
    let mut d = connect(lb.addr);
    send(&mut d, "GET /d HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(get_on(&mut b, "/b2").status, 200);
    assert!(stays_open(&mut d, Duration::from_millis(300)));
    drop(c);
    assert_eq!(read_response(&mut d).status, 200);
}

#[test]
fn out_of_file_descriptors_lb_mio_backs_off_without_spinning_and_recovers() {
    let backend = Backend::named("b");
    let lb = Lb::start_with_nofile(
        64,
        &ini(
            &[("b", backend.addr)],
            &format!("[timeouts]\nheader_ms = 5000\nidle_ms = 5000\n{NO_HEALTH}"),
        ),
    );
    // Short timeouts: a request lb-mio cannot take must not hold the test up.
    let quick = Duration::from_millis(500);
    let status = || try_get(lb.addr, "/", quick).map(|resp| resp.status);
    assert_eq!(status(), Ok(200), "{}", lb.log_text());

    let clients: Vec<TcpStream> = (0..120).map(|_| connect(lb.addr)).collect();
    let ran_out = wait_until(WAIT, || lb.log_text().contains("Too many open files"));
    assert!(
        ran_out,
        "lb-mio never ran out of descriptors:\n{}",
        lb.log_text()
    );

    // A measurement window, not a wait for readiness: lb-mio is out of descriptors with
    // connections queued the whole time; a busy loop would burn a core.
    let (cpu0, wall0) = (cpu_time(lb.pid()), Instant::now());
    thread::sleep(Duration::from_millis(1000));
    let (cpu, wall) = (cpu_time(lb.pid()) - cpu0, wall0.elapsed());
    assert!(
        cpu.as_secs_f64() < 0.5 * wall.as_secs_f64(),
        "lb-mio used {cpu:?} of CPU in {wall:?} while out of descriptors"
    );

    drop(clients);
    let recovered = wait_until(Duration::from_secs(4), || status() == Ok(200));
    assert!(recovered, "lb-mio did not serve again:\n{}", lb.log_text());
}

// ---------------------------------------------------------------------------------------------
// Clients that vanish
// ---------------------------------------------------------------------------------------------

#[test]
fn clients_vanishing_mid_request_or_mid_response_do_not_disturb_others() {
    let big = Arc::new(vec![b'y'; 4 << 20]);
    let body = Arc::clone(&big);
    let backend = Backend::start("b", move |req| match req.target.as_str() {
        "/big" => Response::ok(body.as_slice()),
        _ => Response::ok("small"),
    });
    // No upstream keep-alive: every backend connection lb-mio opens must be closed when its
    // exchange ends, however it ends. A short backend_ms bounds how long noticing may take (see
    // `a_client_closing_right_after_sending_is_let_go_at_once` for "at once").
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!(
            "[lb]\nupstream_keepalive = 0\n[timeouts]\nheader_ms = 5000\nbackend_ms = 1000\n{NO_HEALTH}"
        ),
    ));
    let mut other = connect(lb.addr);
    // After each vanishing client: `other` is still served, and no backend connection is left
    // open (`other` is idle between its requests).
    let mut settled = |stage: &str| {
        assert_eq!(get_on(&mut other, "/").body_str(), "small", "{stage}");
        assert!(
            wait_until(WAIT, || backend.open_connections() == 0),
            "{stage}: {} backend connection(s) still open",
            backend.open_connections()
        );
    };
    settled("start");

    let mut s = connect(lb.addr);
    send(&mut s, "GET / HTTP/1.1\r\nHost: a\r\nX-Half");
    drop(s);
    settled("mid-head");

    // The backend gets the head but must never see a complete request.
    let before = backend.accepted_count();
    let mut s = connect(lb.addr);
    send(
        &mut s,
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n",
    );
    send(&mut s, [b'u'; 100]);
    assert!(wait_until(WAIT, || backend.accepted_count() > before));
    drop(s);
    settled("mid-body");

    for abort in [false, true] {
        let mut s = connect(lb.addr);
        send(&mut s, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut first = [0u8; 1024];
        s.read_exact(&mut first).unwrap();
        assert!(first.starts_with(b"HTTP/1.1 200 "));
        if abort {
            reset(s);
            settled("mid-response, reset");
        } else {
            drop(s);
            settled("mid-response, FIN");
        }
    }

    let targets: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    assert!(!targets.contains(&"/upload".to_string()), "{targets:?}");
    assert_eq!(get(lb.addr, "/big").body.len(), big.len());
}
