//! HTTP behaviour through the real lb-mio binary: balancing, keep-alive, framing, header
//! rewriting, bodies, interim responses, upgrades and the access log.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Generous bound for anything that should happen "soon" on a busy machine.
const WAIT: Duration = Duration::from_secs(5);

/// Fast health checks that flip a backend after one probe.
const FAST_HEALTH: &str = "[health]\ninterval_ms = 50\ntimeout_ms = 2000\nrise = 1\nfall = 1\n";

// ---------------------------------------------------------------------------------------------
// Balancing
// ---------------------------------------------------------------------------------------------

/// Backends named a, b and c behind one lb-mio with `extra` config.
fn three_backends(extra: &str) -> ([Backend; 3], Lb) {
    let backends = [
        Backend::named("a"),
        Backend::named("b"),
        Backend::named("c"),
    ];
    let lb = Lb::start(&ini(
        &[
            ("a", backends[0].addr),
            ("b", backends[1].addr),
            ("c", backends[2].addr),
        ],
        extra,
    ));
    (backends, lb)
}

#[test]
fn weighted_round_robin_follows_the_weights_in_smooth_order() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let lb = Lb::start(&format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\nstrategy = weighted_round_robin\n\
         [backends]\na = {} weight=3\nb = {}\n",
        a.addr, b.addr
    ));
    let served: Vec<String> = (0..8)
        .map(|i| get(lb.addr, &format!("/{i}")).body_str())
        .collect();
    // Weights 3 and 1 interleave as a a b a, not a a a b.
    assert_eq!(served, ["a", "a", "b", "a", "a", "a", "b", "a"]);
    assert_eq!((a.request_count(), b.request_count()), (6, 2));
}

/// 100 requests from one client: every one reaches the same backend.
fn one_client_stays_on_one_backend(extra: &str) {
    let (backends, lb) = three_backends(extra);
    let served: Vec<String> = (0..100)
        .map(|i| get(lb.addr, &format!("/{i}")).body_str())
        .collect();
    assert!(served.iter().all(|name| *name == served[0]), "{served:?}");
    let counts: Vec<usize> = backends.iter().map(Backend::request_count).collect();
    assert_eq!(
        counts.iter().filter(|&&c| c == 100).count(),
        1,
        "{counts:?}"
    );
}

#[test]
fn hash_keeps_a_client_on_one_backend() {
    one_client_stays_on_one_backend("[lb]\nstrategy = hash\n");
}

#[test]
fn hash_on_a_header_keeps_each_user_on_one_backend_and_spreads_users() {
    // The backends must live as long as the test: `_backends`, not `_`.
    let (_backends, lb) = three_backends("[lb]\nstrategy = hash\nhash_key = header:X-User\n");
    let served_for = |user: &str| -> Vec<String> {
        (0..5)
            .map(|_| {
                let raw = format!(
                    "GET / HTTP/1.1\r\nHost: h\r\nX-User: {user}\r\nConnection: close\r\n\r\n"
                );
                request(lb.addr, raw).body_str()
            })
            .collect()
    };
    let mut used = std::collections::HashSet::new();
    for n in 0..30 {
        let served = served_for(&format!("user{n}"));
        assert!(
            served.iter().all(|b| *b == served[0]),
            "user{n}: {served:?}"
        );
        used.insert(served[0].clone());
    }
    assert_eq!(used.len(), 3, "30 users land on every backend: {used:?}");
}

#[test]
fn sticky_client_ip_keeps_a_client_on_one_backend_whatever_the_strategy() {
    one_client_stays_on_one_backend("[lb]\nstrategy = round_robin\nsticky = client_ip\n");
}

/// Sequential requests to a fast and a slow (+30 ms) backend: how many the slow one got.
fn slow_backend_share(strategy: &str) -> usize {
    let fast = Backend::named("fast");
    let slow = Backend::start("slow", |_| {
        Response::ok("slow").delay(Duration::from_millis(30))
    });
    let lb = Lb::start(&ini(
        &[("fast", fast.addr), ("slow", slow.addr)],
        &format!("[lb]\nstrategy = {strategy}\n"),
    ));
    // A few client threads, so requests overlap and in-flight counts differ.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let addr = lb.addr;
            thread::spawn(move || {
                for i in 0..15 {
                    assert_eq!(get(addr, &format!("/{t}/{i}")).status, 200);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(fast.request_count() + slow.request_count(), 60);
    slow.request_count()
}

#[test]
fn a_slow_backend_loses_its_share_under_ewma_and_least_conn() {
    // Round robin would give it 30 of 60; latency- and load-aware strategies far fewer.
    let ewma = slow_backend_share("ewma");
    assert!(ewma <= 12, "ewma sent {ewma} of 60 to the slow backend");
    let least_conn = slow_backend_share("least_conn");
    assert!(
        least_conn <= 20,
        "least_conn sent {least_conn} of 60 to the slow backend"
    );
}

#[test]
fn a_client_over_its_rate_gets_429_then_is_served_again() {
    let backend = Backend::named("a");
    let lb = Lb::start(&ini(
        &[("a", backend.addr)],
        "[limits]\nclient_rate = 5\nclient_burst = 5\n",
    ));
    let statuses: Vec<u16> = (0..10)
        .map(|i| get(lb.addr, &format!("/{i}")).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );
    let limited = get(lb.addr, "/over");
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(
        backend.request_count(),
        5,
        "limited requests never reach the backend"
    );
    // Tokens come back at 5 a second.
    let deadline = Instant::now() + Duration::from_secs(3);
    while get(lb.addr, "/again").status != 200 {
        assert!(Instant::now() < deadline, "still limited after 3 s");
        thread::sleep(Duration::from_millis(50));
    }
    lb.expect_log("rate limited", Duration::from_secs(2));
}

/// A GET carrying `cookie` (the `Cookie` header's value).
fn get_with_cookie(addr: std::net::SocketAddr, cookie: &str) -> Resp {
    request(
        addr,
        format!("GET / HTTP/1.1\r\nHost: h\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn a_sticky_cookie_keeps_a_client_on_its_backend_until_that_backend_goes_down() {
    let (backends, lb) =
        three_backends("[lb]\nsticky = cookie\n[health]\ninterval_ms = 50\nrise = 1\nfall = 1\n");
    let first = get(lb.addr, "/");
    let set = first
        .header("set-cookie")
        .expect("the first answer sets the cookie")
        .to_string();
    assert!(
        set.starts_with("lbmio=") && set.contains("HttpOnly"),
        "{set}"
    );
    assert!(
        !set.contains(&backends[0].addr.to_string()),
        "the cookie names no address"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let home = first.body_str();
    for i in 0..100 {
        let resp = get_with_cookie(lb.addr, &format!("x=1; {cookie}"));
        assert_eq!(resp.body_str(), home, "request {i}");
        assert_eq!(
            resp.header("set-cookie"),
            None,
            "a matching cookie is not set again"
        );
    }
    // Its backend fails its health checks: the client moves, and its cookie is rewritten.
    let home_backend = backends.iter().find(|b| b.name == home).unwrap();
    home_backend.set_healthy(false);
    lb.expect_log(&format!("backend {home} is down"), Duration::from_secs(3));
    let moved = get_with_cookie(lb.addr, &cookie);
    assert_ne!(moved.body_str(), home);
    let rewritten = moved.header("set-cookie").expect("a new cookie");
    assert_ne!(rewritten.split(';').next().unwrap(), cookie);
}

#[test]
fn connections_over_client_connections_are_closed_until_one_ends() {
    let backend = Backend::named("a");
    let lb = Lb::start(&ini(
        &[("a", backend.addr)],
        "[lb]\nworkers = 2\n[limits]\nclient_connections = 2\n",
    ));
    let (mut first, mut second) = (connect(lb.addr), connect(lb.addr));
    assert_eq!(get_on(&mut first, "/1").status, 200);
    assert_eq!(get_on(&mut second, "/2").status, 200);
    let mut third = connect(lb.addr);
    send(&mut third, b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n");
    let mut rest = Vec::new();
    let _ = third.read_to_end(&mut rest); // closed or reset, never answered
    assert!(
        rest.is_empty(),
        "the third connection was served: {}",
        show(&rest)
    );
    lb.expect_log("over [limits] client_connections", Duration::from_secs(2));
    drop(first);
    // Once the lb has seen the close, a new connection is served.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut next = connect(lb.addr);
        send(
            &mut next,
            b"GET /4 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        );
        let mut answer = Vec::new();
        let _ = next.read_to_end(&mut answer);
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get_on(&mut second, "/5").status,
        200,
        "the open ones carry on"
    );
}

#[test]
fn round_robin_spreads_requests_evenly_over_three_backends() {
    let (backends, lb) = three_backends("[lb]\nstrategy = round_robin\n");

    let served: Vec<String> = (0..30)
        .map(|i| get(lb.addr, &format!("/{i}")).body_str())
        .collect();

    for b in &backends {
        assert_eq!(b.request_count(), 10, "backend {} in {served:?}", b.name);
    }
    // In turn: every window of three consecutive requests hits all three backends.
    for window in served.windows(3) {
        let mut names = window.to_vec();
        names.sort();
        assert_eq!(names, ["a", "b", "c"], "in {served:?}");
    }
}

#[test]
fn least_conn_sends_to_the_idle_backend_while_another_holds_a_slow_request() {
    let gate = Gate::new();
    let a = Backend::gated("a", &gate);
    let b = Backend::gated("b", &gate);
    let lb = Lb::start(&ini(
        &[("a", a.addr), ("b", b.addr)],
        "[lb]\nstrategy = least_conn\n",
    ));

    let mut slow = connect(lb.addr);
    send(&mut slow, "GET /slow HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    let (busy, idle) = holder(&a, &b, WAIT);

    for i in 0..10 {
        let resp = get(lb.addr, &format!("/quick/{i}"));
        assert_eq!(
            resp.body_str(),
            idle.name,
            "quick request {i} went to the busy backend"
        );
    }
    assert_eq!(busy.request_count(), 1);
    assert_eq!(idle.request_count(), 10);

    gate.open();
    let resp = read_response(&mut slow);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), busy.name);
}

#[test]
fn a_backend_failing_health_checks_gets_no_traffic_and_returns_when_healthy() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let lb = Lb::start(&ini(&[("a", a.addr), ("b", b.addr)], FAST_HEALTH));

    b.set_healthy(false);
    lb.expect_log("backend b is down", WAIT);
    for i in 0..10 {
        assert_eq!(get(lb.addr, &format!("/down/{i}")).body_str(), "a");
    }
    assert_eq!(b.request_count(), 0, "a backend marked down got traffic");

    b.set_healthy(true);
    lb.expect_log("backend b is up", WAIT);
    let mut served = HashMap::new();
    for i in 0..10 {
        *served
            .entry(get(lb.addr, &format!("/up/{i}")).body_str())
            .or_insert(0) += 1;
    }
    assert_eq!(served.get("a"), Some(&5), "{served:?}");
    assert_eq!(served.get("b"), Some(&5), "{served:?}");
}

// ---------------------------------------------------------------------------------------------
// Connections: keep-alive, reuse, pipelining, HTTP/1.0
// ---------------------------------------------------------------------------------------------

#[test]
fn ten_requests_share_one_client_connection() {
    let a = Backend::start("a", |req| Response::ok(req.target.clone()));
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    for i in 0..10 {
        let path = format!("/ka/{i}");
        let resp = get_on(&mut client, &path);
        assert_eq!(resp.status, 200, "request {i}");
        assert_eq!(resp.body_str(), path);
        assert!(
            !resp.connection_has("close"),
            "request {i}: {}",
            resp.head_str()
        );
    }
    assert_eq!(a.request_count(), 10);
}

#[test]
fn upstream_connections_are_reused_across_sequential_requests() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    // Fresh client connections each time: reuse is the balancer's doing, not the client's.
    for i in 0..50 {
        assert_eq!(get(lb.addr, &format!("/{i}")).status, 200, "request {i}");
    }
    assert_eq!(a.request_count(), 50);
    assert!(
        a.connection_count() <= 3,
        "50 sequential requests opened {} backend connections",
        a.connection_count()
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    // The first request is the slowest and each goes to a different backend, so answering
    // out of order would show.
    let mk = |name: &'static str, delay_ms: u64| {
        Backend::start(name, move |req| {
            Response::ok(format!("{name} {}", req.target)).delay(Duration::from_millis(delay_ms))
        })
    };
    let (a, b, c) = (mk("a", 200), mk("b", 50), mk("c", 0));
    let lb = Lb::start(&ini(&[("a", a.addr), ("b", b.addr), ("c", c.addr)], ""));

    let mut client = connect(lb.addr);
    send(
        &mut client,
        "GET /one HTTP/1.1\r\nHost: lb.test\r\n\r\n\
         GET /two HTTP/1.1\r\nHost: lb.test\r\n\r\n\
         GET /three HTTP/1.1\r\nHost: lb.test\r\n\r\n",
    );
    let bodies: Vec<String> = (0..3)
        .map(|_| read_response(&mut client).body_str())
        .collect();
    let targets: Vec<&str> = bodies
        .iter()
        .map(|b| b.split(' ').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(targets, ["/one", "/two", "/three"], "{bodies:?}");
    // And the connection still works afterwards.
    assert_eq!(get_on(&mut client, "/four").status, 200);
}

#[test]
fn http10_client_gets_its_response_and_the_connection_closes() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    send(&mut client, "GET /old HTTP/1.0\r\n\r\n");
    let resp = read_response(&mut client);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), "a");
    assert!(
        closes_within(&mut client, WAIT),
        "an HTTP/1.0 connection without keep-alive stayed open"
    );
    assert_eq!(a.last_request().target, "/old");
}

#[test]
fn http10_client_with_keep_alive_keeps_its_connection() {
    let a = Backend::start("a", |req| Response::ok(req.target.clone()));
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    for path in ["/first", "/second", "/third"] {
        send(
            &mut client,
            format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        );
        let resp = read_response(&mut client);
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.body_str(), path);
        assert!(
            resp.connection_has("keep-alive"),
            "an HTTP/1.0 keep-alive response must say so: {}",
            resp.head_str()
        );
    }
}

#[test]
fn a_backend_closing_its_connection_does_not_close_the_clients() {
    let a = Backend::start("a", |req| {
        Response::ok(req.target.clone())
            .header("Connection", "close")
            .then_close()
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    for path in ["/1", "/2", "/3"] {
        let resp = get_on(&mut client, path);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body_str(), path);
        assert!(!resp.connection_has("close"), "{}", resp.head_str());
    }
    assert_eq!(
        a.connection_count(),
        3,
        "each backend connection carries one request"
    );
}

// ---------------------------------------------------------------------------------------------
// What the backend receives
// ---------------------------------------------------------------------------------------------

fn is_forwarded_header(line: &str) -> bool {
    line.to_ascii_lowercase().starts_with("x-forwarded-")
}

#[test]
fn request_line_and_headers_reach_the_backend_byte_exact() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let request_line = "GET /p/a%20b/%E2%82%AC?q=%2F%3D&x=1&x=2&empty= HTTP/1.1";
    let lines = [
        "Host: Example.TEST:8080",
        "x-lower: one",
        "X-UPPER:two",
        "X-MiXeD-CaSe:   spaced   value   ",
        "X-Tab:\tvalue\twith tabs\t",
        "X-Dup: first",
        "Accept: */*",
        "x-dup: second",
        "X-Dup: third, fourth",
        "X-Empty:",
        "Cookie: a=1; b=\"2\"",
    ];
    let raw = format!(
        "{request_line}\r\n{}\r\n\r\n",
        lines.join("\r\n") + "\r\nConnection: close"
    );
    let resp = request(lb.addr, raw);
    assert_eq!(resp.status, 200);

    let got = a.last_request();
    let head = got.head_str();
    assert!(
        head.starts_with(&format!("{request_line}\r\n")),
        "request line changed: {head:?}"
    );
    assert_eq!(got.target, "/p/a%20b/%E2%82%AC?q=%2F%3D&x=1&x=2&empty=");
    let end_to_end: Vec<String> = got
        .header_lines()
        .into_iter()
        .filter(|l| !is_forwarded_header(l))
        .collect();
    assert_eq!(end_to_end, lines, "headers changed: {head:?}");
    assert_eq!(
        got.header_all("x-dup"),
        ["first", "second", "third, fourth"]
    );
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let resp = request(
        lb.addr,
        "GET /hop HTTP/1.1\r\n\
         Host: lb.test\r\n\
         Connection: keep-alive, X-Secret, x-other-secret\r\n\
         X-Secret: hidden\r\n\
         X-Other-Secret: hidden too\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Upgrade: h2c\r\n\
         X-Kept: yes\r\n\
         \r\n",
    );
    assert_eq!(resp.status, 200);

    let got = a.last_request();
    for name in HOP_BY_HOP.into_iter().chain(["X-Secret", "X-Other-Secret"]) {
        assert!(
            !got.has_header(name),
            "{name} reached the backend: {:?}",
            got.head_str()
        );
    }
    assert_eq!(got.header("X-Kept"), Some("yes"));
}

#[test]
fn hop_by_hop_headers_of_the_response_are_not_relayed() {
    let a = Backend::start("a", |_| {
        Response::ok("body")
            .header("Connection", "X-Internal")
            .header("X-Internal", "backend secret")
            .header("Keep-Alive", "timeout=5")
            .header("X-Public", "yes")
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    let resp = get_on(&mut client, "/");
    for name in ["X-Internal", "Keep-Alive"] {
        assert!(
            !resp.has_header(name),
            "{name} relayed: {}",
            resp.head_str()
        );
    }
    assert!(!resp.connection_has("X-Internal"), "{}", resp.head_str());
    assert_eq!(resp.header("X-Public"), Some("yes"));
    assert_eq!(resp.body_str(), "body");
}

#[test]
fn x_forwarded_headers_describe_the_client() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    request(
        lb.addr,
        "GET /fresh HTTP/1.1\r\nHost: shop.example:81\r\nConnection: close\r\n\r\n",
    );
    let fresh = a.last_request();
    assert_eq!(fresh.header_all("X-Forwarded-For"), ["127.0.0.1"]);
    assert_eq!(fresh.header_all("X-Forwarded-Proto"), ["http"]);
    assert_eq!(fresh.header_all("X-Forwarded-Host"), ["shop.example:81"]);

    request(
        lb.addr,
        "GET /chained HTTP/1.1\r\n\
         Host: shop.example\r\n\
         X-Forwarded-For: 1.2.3.4\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: spoofed.example\r\n\
         Connection: close\r\n\r\n",
    );
    let chained = a.last_request();
    assert_eq!(
        chained.header_all("X-Forwarded-For"),
        ["1.2.3.4, 127.0.0.1"]
    );
    assert_eq!(chained.header_all("X-Forwarded-Proto"), ["http"]);
    assert_eq!(chained.header_all("X-Forwarded-Host"), ["shop.example"]);
}

#[test]
fn expose_backend_names_the_backend_in_each_response() {
    let a = Backend::named("alpha");
    let b = Backend::named("beta");
    let lb = Lb::start(&ini(
        &[("alpha", a.addr), ("beta", b.addr)],
        "[lb]\nexpose_backend = true\n",
    ));

    for i in 0..4 {
        let resp = get(lb.addr, &format!("/{i}"));
        let name = resp.body_str();
        assert_eq!(
            resp.header_all("X-Backend"),
            [name.as_str()],
            "{}",
            resp.head_str()
        );
    }
}

#[test]
fn expose_backend_takes_the_header_to_name_it_in() {
    let a = Backend::named("alpha");
    let lb = Lb::start(&ini(
        &[("alpha", a.addr)],
        "[lb]\nexpose_backend = X-Forwarded-Server\n",
    ));

    let resp = get(lb.addr, "/");
    assert_eq!(
        resp.header_all("X-Forwarded-Server"),
        ["alpha"],
        "{}",
        resp.head_str()
    );
    assert!(!resp.has_header("X-Backend"), "{}", resp.head_str());
}

#[test]
fn no_backend_name_in_responses_by_default() {
    let a = Backend::named("alpha");
    let lb = Lb::start(&ini(&[("alpha", a.addr)], ""));

    let resp = get(lb.addr, "/");
    assert_eq!(resp.status, 200);
    assert!(!resp.has_header("X-Backend"), "{}", resp.head_str());
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// A backend that answers with the size of the request body it received.
fn body_counter() -> Backend {
    Backend::start("a", |req| Response::ok(req.body.len().to_string()))
}

#[test]
fn a_one_mebibyte_upload_arrives_byte_for_byte() {
    let a = body_counter();
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));
    let data = lcg_bytes(1 << 20, 1);

    let mut client = connect(lb.addr);
    send(
        &mut client,
        format!(
            "POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {}\r\n\r\n",
            data.len()
        ),
    );
    send(&mut client, &data);
    let resp = read_response(&mut client);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), data.len().to_string());
    let got = a.last_request();
    assert_same_bytes(&got.body, &data, "uploaded body");
    assert_eq!(got.header("Content-Length"), Some("1048576"));
}

#[test]
fn a_chunked_upload_arrives_byte_for_byte() {
    let a = body_counter();
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));
    let data = lcg_bytes(700_000, 2);
    // Odd chunk sizes, some larger than the proxy's 16 KiB buffers.
    let wire = chunk_encode_sizes(&data, &[1, 17, 4096, 70_000, 333]);

    let mut client = connect(lb.addr);
    send(
        &mut client,
        "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    send(&mut client, &wire);
    let resp = read_response(&mut client);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_str(), data.len().to_string());
    let got = a.last_request();
    assert_same_bytes(&got.body, &data, "de-chunked upload");
    assert_same_bytes(&got.raw_body, &wire, "chunked upload on the wire");
    // The connection is usable afterwards: the proxy found the body's end.
    assert_eq!(get_on(&mut client, "/after").status, 200);
}

/// A backend that serves `data` at `/length`, `/chunked` and `/close` with those framings.
fn download_server(data: Arc<Vec<u8>>) -> Backend {
    Backend::start("a", move |req| {
        let body = data.to_vec();
        match req.target.as_str() {
            "/chunked" => Response::ok(body).chunked(100_000),
            "/close" => Response::ok(body).close_delimited(),
            _ => Response::ok(body),
        }
    })
}

#[test]
fn an_eight_mebibyte_download_with_content_length_arrives_byte_for_byte() {
    let data = Arc::new(lcg_bytes(8 << 20, 3));
    let a = download_server(Arc::clone(&data));
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    let resp = get_on(&mut client, "/length");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Content-Length"), Some("8388608"));
    assert_same_bytes(&resp.body, &data, "downloaded body");
    assert_eq!(get_on(&mut client, "/length").body.len(), data.len());
}

#[test]
fn a_chunked_download_arrives_byte_for_byte() {
    let data = Arc::new(lcg_bytes(3 << 20, 4));
    let a = download_server(Arc::clone(&data));
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    let resp = get_on(&mut client, "/chunked");
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("Transfer-Encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked")),
        "{}",
        resp.head_str()
    );
    assert_same_bytes(&resp.body, &data, "de-chunked download");
    assert_same_bytes(
        &resp.raw_body,
        &chunk_encode(&data, 100_000),
        "chunked wire bytes",
    );
    // The proxy found the end of the chunked body: the connection carries another request.
    assert_eq!(get_on(&mut client, "/length").body.len(), data.len());
}

#[test]
fn a_close_delimited_download_arrives_byte_for_byte() {
    let data = Arc::new(lcg_bytes(3 << 20, 5));
    let a = download_server(Arc::clone(&data));
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    send(&mut client, "GET /close HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    let resp = read_response(&mut client); // no length: reads until the proxy closes
    assert_eq!(resp.status, 200);
    assert!(!resp.has_header("Content-Length"));
    assert!(
        resp.connection_has("close"),
        "a close-delimited body must end the client connection: {}",
        resp.head_str()
    );
    assert_same_bytes(&resp.body, &data, "close-delimited download");
}

/// Both sides move data in small uneven steps, so the proxy's buffers are often partly written
/// and partly filled at once (a shared, busy machine does this by itself).
#[test]
fn a_slow_client_downloading_from_a_trickling_backend_gets_every_byte() {
    let size = 8 << 20;
    let a = Backend::start("a", move |_| {
        let body = lcg_bytes(size, 12);
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
        let mut steps = vec![Step::Send(head.into_bytes())];
        for (i, piece) in body.chunks(3000).enumerate() {
            steps.push(Step::Send(piece.to_vec()));
            if i % 20 == 0 {
                steps.push(Step::Sleep(Duration::from_millis(1)));
            }
        }
        Response::script(steps)
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], SLOW_TIMEOUTS));
    let want = lcg_bytes(size, 12);

    for attempt in 0..4 {
        let mut client = connect(lb.addr);
        client.set_read_timeout(Some(PROMPT)).unwrap();
        send(&mut client, "GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n");
        std::thread::sleep(Duration::from_millis(100)); // a slow client, not a readiness wait
        let head = try_read_head(&mut client).expect("response head");
        assert_eq!(head.status, 200);
        let mut got = Vec::with_capacity(size);
        let mut piece = vec![0u8; 7000];
        for reads in 0..size {
            if got.len() == size {
                break;
            }
            let want_now = piece.len().min(size - got.len());
            match std::io::Read::read(&mut client, &mut piece[..want_now]) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&piece[..n]),
                Err(e) => panic!("attempt {attempt}: stalled after {} bytes: {e}", got.len()),
            }
            if reads % 3 == 0 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        assert_same_bytes(&got, &want, &format!("attempt {attempt}: downloaded body"));
    }
}

#[test]
fn a_trickled_upload_to_a_slow_backend_arrives_byte_for_byte() {
    let size = 8 << 20;
    let slow_reader = BackendOptions {
        slow_body_read: 2000,
        slow_body_pause: Duration::from_micros(100),
        ..Default::default()
    };
    let a = Backend::with_options("a", slow_reader, |req| {
        Response::ok(req.body.len().to_string())
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], SLOW_TIMEOUTS));
    let data = lcg_bytes(size, 13);

    for attempt in 0..3 {
        let mut client = connect(lb.addr);
        client.set_read_timeout(Some(PROMPT)).unwrap();
        send(
            &mut client,
            format!("POST /up HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {size}\r\n\r\n"),
        );
        for (i, piece) in data.chunks(3000).enumerate() {
            send(&mut client, piece);
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1)); // trickle, not a readiness wait
            }
        }
        let resp = try_read_response(&mut client).unwrap_or_else(|e| {
            panic!(
                "attempt {attempt}: no response ({e}); the backend got {} requests",
                a.request_count()
            )
        });
        assert_eq!(resp.body_str(), size.to_string(), "attempt {attempt}");
        assert_same_bytes(
            &a.last_request().body,
            &data,
            &format!("attempt {attempt}: upload"),
        );
    }
}

/// How long a test waits for a connection to end before calling it a hang; the configs below
/// set `backend_ms`/`idle_ms` far above it, so only prompt closing passes.
const PROMPT: Duration = Duration::from_secs(3);
const SLOW_TIMEOUTS: &str = "[timeouts]\nbackend_ms = 30000\nidle_ms = 30000\n";

#[test]
fn a_close_delimited_response_ends_as_soon_as_the_backend_closes() {
    let a = Backend::start("a", |req| {
        let size: usize = req.target[1..].parse().unwrap_or(0);
        Response::ok(lcg_bytes(size, 8)).close_delimited()
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], SLOW_TIMEOUTS));

    for size in [5, 1000, 20_000, 100_000, 5, 5] {
        let mut client = connect(lb.addr);
        client.set_read_timeout(Some(PROMPT)).unwrap();
        send(
            &mut client,
            format!("GET /{size} HTTP/1.1\r\nHost: lb.test\r\n\r\n"),
        );
        let resp = try_read_response(&mut client).unwrap_or_else(|e| {
            panic!("{size}-byte close-delimited body did not end within {PROMPT:?}: {e}")
        });
        assert_same_bytes(&resp.body, &lcg_bytes(size, 8), "close-delimited body");
    }

    // A client that starts reading late: the backend has sent everything and closed by then.
    let mut client = connect(lb.addr);
    client.set_read_timeout(Some(PROMPT)).unwrap();
    send(
        &mut client,
        format!("GET /{} HTTP/1.1\r\nHost: lb.test\r\n\r\n", 8 << 20),
    );
    std::thread::sleep(Duration::from_millis(300)); // a slow client, not a readiness wait
    let resp = try_read_response(&mut client).unwrap_or_else(|e| {
        panic!("8 MiB close-delimited body did not end within {PROMPT:?}: {e}")
    });
    assert_same_bytes(&resp.body, &lcg_bytes(8 << 20, 8), "close-delimited body");
}

#[test]
fn a_close_delimited_body_that_fills_the_proxy_buffer_arrives_whole() {
    // Head (19 bytes) + body = 16 KiB, exactly one proxy buffer; the proxy's rewritten head is
    // longer (it adds `Connection: close`), so the body cannot all move on in one step.
    let a = Backend::start("a", |_| {
        Response::ok(lcg_bytes(16 * 1024 - 19, 9)).close_delimited()
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], SLOW_TIMEOUTS));

    for attempt in 0..5 {
        let mut client = connect(lb.addr);
        client.set_read_timeout(Some(PROMPT)).unwrap();
        send(&mut client, "GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n");
        let resp =
            try_read_response(&mut client).unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        assert_same_bytes(
            &resp.body,
            &lcg_bytes(16 * 1024 - 19, 9),
            &format!("attempt {attempt}: close-delimited body"),
        );
    }
}

#[test]
fn a_response_from_a_backend_that_closes_after_it_arrives_whole() {
    // Head + body fill one 16 KiB proxy buffer and the proxy adds `X-Backend` to the head.
    let head_len = "HTTP/1.1 200 OK\r\nContent-Length: 16323\r\nConnection: close\r\n\r\n".len();
    let size = 16 * 1024 - head_len;
    let a = Backend::start("a", move |_| {
        Response::ok(lcg_bytes(size, 10))
            .header("Connection", "close")
            .then_close()
    });
    let lb = Lb::start(&ini(
        &[("a", a.addr)],
        &format!("[lb]\nexpose_backend = true\n{SLOW_TIMEOUTS}"),
    ));

    let mut client = connect(lb.addr);
    client.set_read_timeout(Some(PROMPT)).unwrap();
    for attempt in 0..5 {
        let resp = try_read_response({
            send(&mut client, "GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n");
            &mut client
        })
        .unwrap_or_else(|e| panic!("attempt {attempt}: {e}; log:\n{}", lb.log_text()));
        assert_eq!(resp.status, 200);
        assert_same_bytes(&resp.body, &lcg_bytes(size, 10), "body");
    }
}

// ---------------------------------------------------------------------------------------------
// Responses without a body, interim responses, upgrades
// ---------------------------------------------------------------------------------------------

#[test]
fn head_response_has_a_length_but_no_body_and_the_connection_goes_on() {
    let a = Backend::start("a", |_| Response::ok(vec![b'x'; 1234]));
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    send(&mut client, "HEAD /doc HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    let head = read_head_response(&mut client);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some("1234"));
    assert_eq!(a.last_request().method, "HEAD");

    let next = get_on(&mut client, "/doc");
    assert_eq!(next.status, 200);
    assert_eq!(next.body.len(), 1234);
}

#[test]
fn no_content_and_not_modified_have_no_body_and_the_connection_goes_on() {
    let a = Backend::start("a", |req| match req.target.as_str() {
        "/204" => Response::status(204, ""),
        // A 304 may carry the Content-Length of the representation it stands for.
        "/304" => Response::status(304, "").header("Content-Length", "5000"),
        _ => Response::ok("plain"),
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    for (path, status) in [("/204", 204), ("/304", 304), ("/204", 204)] {
        let resp = get_on(&mut client, path);
        assert_eq!(resp.status, status);
        assert!(resp.body.is_empty());
        let next = get_on(&mut client, "/plain");
        assert_eq!(next.status, 200, "request after {path}");
        assert_eq!(next.body_str(), "plain", "request after {path}");
    }
}

#[test]
fn expect_100_continue_gets_the_backends_interim_response_before_the_body() {
    let a = body_counter();
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    send(
        &mut client,
        "PUT /file HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = read_response(&mut client);
    assert_eq!(interim.status, 100, "{}", interim.head_str());
    assert_eq!(a.request_count(), 0, "the backend cannot have the body yet");

    send(&mut client, "hello world");
    let fin = read_response(&mut client);
    assert_eq!(fin.status, 200);
    assert_eq!(fin.body_str(), "11");
    assert_eq!(a.last_request().body, b"hello world");
}

#[test]
fn websocket_upgrade_tunnels_bytes_both_ways() {
    let a = Backend::start("a", |_| Response::upgrade_echo("websocket"));
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    send(
        &mut client,
        "GET /chat HTTP/1.1\r\nHost: lb.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let switch = read_response(&mut client);
    assert_eq!(switch.status, 101, "{}", switch.head_str());
    assert_eq!(switch.header("Upgrade"), Some("websocket"));
    assert!(switch.connection_has("upgrade"), "{}", switch.head_str());

    let got = a.last_request();
    assert_eq!(got.header("Upgrade"), Some("websocket"));
    assert!(
        got.header("Connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{:?}",
        got.head_str()
    );
    assert_eq!(
        got.header("Sec-WebSocket-Key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    for (i, message) in [lcg_bytes(5, 6), lcg_bytes(200_000, 7), b"bye".to_vec()]
        .iter()
        .enumerate()
    {
        send(&mut client, message);
        let mut echoed = vec![0u8; message.len()];
        std::io::Read::read_exact(&mut client, &mut echoed)
            .unwrap_or_else(|e| panic!("message {i} not echoed: {e}"));
        assert_same_bytes(&echoed, message, "echoed through the tunnel");
    }
}

/// Regression: a client that half-closed a tunnel (sent its last bytes, then FIN) had the tunnel
/// torn down at once, so its last bytes could miss the backend and the answer never came back.
#[test]
fn a_client_half_closing_a_tunnel_still_gets_the_backends_answer() {
    let a = Backend::start("a", |_| Response::upgrade_echo("websocket"));
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));
    for attempt in 0..10 {
        let mut client = connect(lb.addr);
        send(
            &mut client,
            "GET /chat HTTP/1.1\r\nHost: lb.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(read_response(&mut client).status, 101);
        let last = lcg_bytes(50_000, attempt);
        send(&mut client, &last);
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let echoed = try_read_to_close(&mut client)
            .unwrap_or_else(|e| panic!("attempt {attempt}: no orderly end: {e}"));
        assert_same_bytes(&echoed, &last, "the echo after a half-close");
    }
}

#[test]
fn when_the_backend_ends_a_tunnel_the_client_gets_its_last_bytes_and_the_close() {
    // The backend sends its last bytes and closes at once; `/big` sends 4 MiB.
    let a = Backend::start("a", |req| {
        let last = if req.target == "/big" {
            lcg_bytes(4 << 20, 11)
        } else {
            b"goodbye".to_vec()
        };
        Response::script(vec![
            Step::Send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                    .to_vec(),
            ),
            Step::Sleep(Duration::from_millis(20)),
            Step::Send(last),
            Step::Close,
        ])
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], SLOW_TIMEOUTS));
    let open_tunnel = |path: &str| {
        let mut client = connect(lb.addr);
        client.set_read_timeout(Some(PROMPT)).unwrap();
        send(
            &mut client,
            format!(
                "GET {path} HTTP/1.1\r\nHost: lb.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            ),
        );
        assert_eq!(read_response(&mut client).status, 101);
        client
    };

    for attempt in 0..10 {
        let mut client = open_tunnel("/small");
        let rest = try_read_to_close(&mut client).unwrap_or_else(|e| {
            panic!("attempt {attempt}: tunnel not closed within {PROMPT:?}: {e}")
        });
        assert_eq!(rest, b"goodbye", "attempt {attempt}");
    }

    let mut client = open_tunnel("/big");
    std::thread::sleep(Duration::from_millis(300)); // a slow client, not a readiness wait
    let rest = try_read_to_close(&mut client)
        .unwrap_or_else(|e| panic!("big tunnel not closed within {PROMPT:?}: {e}"));
    assert_same_bytes(&rest, &lcg_bytes(4 << 20, 11), "last tunnel bytes");
}

#[test]
fn an_interim_103_response_is_relayed_before_the_final_one() {
    let a = Backend::start("a", |_| {
        Response::ok("final").before(Step::Send(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec(),
        ))
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], ""));

    let mut client = connect(lb.addr);
    let hints = get_on(&mut client, "/");
    assert_eq!(hints.status, 103, "{}", hints.head_str());
    assert_eq!(hints.header("Link"), Some("</style.css>; rel=preload"));
    let fin = read_response(&mut client);
    assert_eq!(fin.status, 200);
    assert_eq!(fin.body_str(), "final");
    assert_eq!(get_on(&mut client, "/again").status, 103);
}

// ---------------------------------------------------------------------------------------------
// How client connections end
// ---------------------------------------------------------------------------------------------

#[test]
fn connection_close_from_the_client_gets_the_response_then_the_close() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], SLOW_TIMEOUTS));

    let mut client = connect(lb.addr);
    send(
        &mut client,
        "GET / HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n",
    );
    let resp = read_response(&mut client);
    assert_eq!(resp.body_str(), "a");
    assert!(resp.connection_has("close"), "{}", resp.head_str());
    assert!(closes_within(&mut client, PROMPT), "connection left open");
}

#[test]
fn a_client_that_half_closes_after_its_request_gets_the_response_then_the_close() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], SLOW_TIMEOUTS));

    for attempt in 0..20 {
        let mut client = connect(lb.addr);
        send(&mut client, "GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n");
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let resp = read_response(&mut client);
        assert_eq!(resp.body_str(), "a", "attempt {attempt}");
        assert!(
            closes_within(&mut client, PROMPT),
            "attempt {attempt}: lb-mio kept a half-closed connection open"
        );
    }
}

#[test]
fn server_header_replaces_the_backends_and_marks_lb_mios_own_replies() {
    let a = Backend::start("a", |_| {
        Response::ok("hi").header("Server", "gunicorn/20.1")
    });
    let lb = Lb::start(&ini(&[("a", a.addr)], "[lb]\nserver_header = edge\n"));
    let resp = get(lb.addr, "/");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header_all("Server"), vec!["edge"]);
    let bad = request(
        lb.addr,
        "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header_all("Server"), vec!["edge"]);

    let plain = Lb::start(&ini(&[("a", a.addr)], ""));
    assert_eq!(
        get(plain.addr, "/").header_all("Server"),
        vec!["gunicorn/20.1"]
    );
    let bad = request(
        plain.addr,
        "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
    );
    assert!(!bad.has_header("Server"), "{}", bad.head_str());
}
