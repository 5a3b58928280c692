//! Failover: backends that die, hang, reset, flap, slow down or come back. What a client of
//! lb-mio sees (no error for idempotent requests, no request sent twice where that could do
//! harm) and what the log says (each state change once, with its reason).

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(5);

/// Probe timeout where probes are meant to pass: a loaded machine must not fail them.
const PROBE_TIMEOUT: &str = "timeout_ms = 3000";

// ---------------------------------------------------------------------------------------------
// 1. A backend killed mid-stream
// ---------------------------------------------------------------------------------------------

/// What one client request of the stream came to.
enum Outcome {
    Answered(u16, String),
    Failed(String),
}

/// Keep-alive GETs, one every few ms, until `stop` (or 1500 requests).
fn stream_of_gets(addr: SocketAddr, client: usize, stop: Arc<AtomicBool>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut conn: Option<TcpStream> = None;
    for i in 0..1500 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn.take() {
            Some(stream) => stream,
            None => match try_connect(addr, IO_TIMEOUT) {
                Ok(stream) => stream,
                Err(e) => {
                    outcomes.push(Outcome::Failed(format!("connect: {e}")));
                    continue;
                }
            },
        };
        let mut stream = stream;
        let request = format!("GET /c{client}/{i} HTTP/1.1\r\nHost: lb.test\r\n\r\n");
        let result = stream
            .write_all(request.as_bytes())
            .and_then(|()| try_read_response(&mut stream));
        match result {
            Ok(resp) => {
                let close = resp.connection_has("close");
                outcomes.push(Outcome::Answered(resp.status, resp.body_str()));
                if !close {
                    conn = Some(stream);
                }
            }
            Err(e) => outcomes.push(Outcome::Failed(format!("request {i}: {e}"))),
        }
        thread::sleep(Duration::from_millis(3));
    }
    outcomes
}

/// The backend's listener and every connection it has are closed in the middle of the stream,
/// while some of its requests are in flight (sent to it, not yet answered).
#[test]
fn a_backend_killed_mid_stream_costs_the_clients_nothing() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let killing = Arc::new(AtomicBool::new(false));
    let killed = Gate::new();
    let mut doomed = {
        let (in_flight, killing, killed) =
            (Arc::clone(&in_flight), Arc::clone(&killing), killed.clone());
        Backend::start("doomed", move |_| {
            in_flight.fetch_add(1, Ordering::SeqCst);
            // A few ms of work, so requests are in flight when it dies; once the kill is under
            // way, no answer leaves before the connections are gone.
            for _ in 0..10 {
                if killing.load(Ordering::SeqCst) {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
            if killing.load(Ordering::SeqCst) {
                killed.wait(IO_TIMEOUT);
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Response::ok("doomed")
        })
    };
    let steady = Backend::named("steady");
    let lb = Lb::start(&ini(
        &[("doomed", doomed.addr), ("steady", steady.addr)],
        &format!("[health]\ninterval_ms = 50\n{PROBE_TIMEOUT}\n"),
    ));
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let stop = Arc::clone(&stop);
            let addr = lb.addr;
            thread::spawn(move || stream_of_gets(addr, c, stop))
        })
        .collect();

    let warmed = wait_until(WAIT, || {
        doomed.request_count() >= 30
            && started.elapsed() >= Duration::from_millis(600)
            && in_flight.load(Ordering::SeqCst) > 0
    });
    let before_kill = doomed.request_count();
    killing.store(true, Ordering::SeqCst);
    doomed.stop();
    killed.open();
    let killed_at = Instant::now();
    let steady_at_kill = steady.request_count();
    let carried_on = wait_until(WAIT, || {
        killed_at.elapsed() >= Duration::from_millis(1000)
            && steady.request_count() >= steady_at_kill + 50
    });
    stop.store(true, Ordering::SeqCst);
    let outcomes: Vec<Outcome> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();

    assert!(
        warmed,
        "doomed got only {before_kill} requests before the kill"
    );
    assert!(
        carried_on,
        "steady got {} requests in the second after the kill",
        steady.request_count() - steady_at_kill
    );
    let bad: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Answered(200..=299, _) => None,
            Outcome::Answered(status, body) => Some(format!("{status} {body:?}")),
            Outcome::Failed(why) => Some(why.clone()),
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {bad:?}\nlog:\n{}",
        bad.len(),
        outcomes.len(),
        lb.log_text()
    );
    let from_doomed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Answered(_, body) if body == "doomed"))
        .count();
    assert!(from_doomed > 0, "no answer came from doomed");
    // Requests were in flight on it: they went elsewhere.
    lb.sync_log();
    let cut = lb
        .log_lines_with("backend doomed failed")
        .into_iter()
        .filter(|l| l.contains("before responding"))
        .count();
    assert!(cut > 0, "no request was cut off:\n{}", lb.log_text());
    lb.expect_log("backend doomed is down", WAIT);
}

// ---------------------------------------------------------------------------------------------
// 2. A backend that accepts and never answers
// ---------------------------------------------------------------------------------------------

/// Accepts and reads, never writes (health probes included). Records the target of each
/// request it reads.
fn black_hole_backend() -> (RawBackend, Arc<Mutex<Vec<String>>>) {
    let targets = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&targets);
    let backend = RawBackend::start(move |mut stream| {
        let Some(request) = read_request(&stream) else {
            return;
        };
        seen.lock().unwrap().push(request.target);
        let mut tmp = [0u8; 4096];
        for _ in 0..10_000 {
            match stream.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    (backend, targets)
}

#[test]
fn a_backend_that_never_answers_gives_bounded_504s_then_is_marked_down() {
    let (hole, at_hole) = black_hole_backend();
    let ok = Backend::named("ok");
    // Active checks every minute (one round at start): only live traffic can mark it down.
    let lb = Lb::start(&ini(
        &[("hole", hole.addr), ("ok", ok.addr)],
        "[timeouts]\nbackend_ms = 300\n[health]\ninterval_ms = 60000\ntimeout_ms = 200\n",
    ));
    let mut statuses = HashMap::new();
    for i in 0..12 {
        if lb.count_log("backend hole is down") > 0 {
            break;
        }
        let path = format!("/r{i}");
        let started = Instant::now();
        let resp = get(lb.addr, &path);
        let took = started.elapsed();
        match resp.status {
            504 => {
                assert!(
                    took >= Duration::from_millis(250),
                    "504 too early: {took:?}"
                );
                // backend_ms plus slack for a loaded machine; a hang would take forever.
                assert!(
                    took < Duration::from_millis(4000),
                    "504 too late: {took:?}\n{}",
                    lb.log_text()
                );
            }
            200 => {
                assert_eq!(resp.body_str(), "ok");
                assert!(took < Duration::from_millis(4000), "200 took {took:?}");
            }
            other => panic!("request {i}: status {other}\n{}", lb.log_text()),
        }
        statuses.insert(path, resp.status);
    }
    lb.expect_log("backend hole is down: 3 failures in a row", WAIT);
    let at_ok: Vec<String> = ok.requests().into_iter().map(|r| r.target).collect();
    // Every request is at one backend or the other (the hole records as it reads).
    assert!(wait_until(WAIT, || {
        let at_hole = at_hole.lock().unwrap();
        statuses
            .keys()
            .all(|p| at_ok.contains(p) || at_hole.contains(p))
    }));
    let at_hole: Vec<String> = at_hole
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.starts_with("/r"))
        .cloned()
        .collect();
    // A 504 each, never retried: the other backend did not see them.
    for path in &at_hole {
        assert_eq!(statuses[path], 504, "{path}");
        assert!(!at_ok.contains(path), "{path} was also sent to ok");
    }
    // (ok answers well within backend_ms, unless a badly loaded machine starves it: so its
    // answers are not checked here, only where each request went.)
    assert_eq!(
        at_hole.len(),
        3,
        "max_fails = 3 timeouts should mark it down: {at_hole:?}\n{}",
        lb.log_text()
    );
    // Marked down: it gets no more connections (no probe is due for a minute).
    let hole_conns = hole.accepted();
    for i in 0..10 {
        let started = Instant::now();
        let resp = get(lb.addr, &format!("/after{i}"));
        assert_eq!((resp.status, resp.body_str().as_str()), (200, "ok"));
        assert!(
            started.elapsed() < Duration::from_millis(4000),
            "request {i} after the mark took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(hole.accepted(), hole_conns, "hole still got connections");
}

// ---------------------------------------------------------------------------------------------
// 3. Half a response, then a reset
// ---------------------------------------------------------------------------------------------

const HALF_LENGTH: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
const HALF_CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n5\r\nab";

/// Answers `/length` and `/chunked` with half a response; after `gate` opens (or at once if
/// there is none), resets.
fn half_then_reset(gate: Option<Gate>) -> RawBackend {
    RawBackend::start(move |mut stream| {
        let Some(request) = read_request(&stream) else {
            return;
        };
        if request.is_probe() {
            return reply_and_close(&stream, 200);
        }
        let half = if request.target == "/length" {
            HALF_LENGTH
        } else {
            HALF_CHUNKED
        };
        if stream.write_all(half).is_err() {
            return;
        }
        if let Some(gate) = &gate {
            gate.wait(IO_TIMEOUT);
        }
        reset(stream);
    })
}

/// What the client got in answer to `GET path`: all bytes until the connection closed.
fn read_all_of(addr: SocketAddr, path: &str, until: Option<(&[u8], &Gate)>) -> Vec<u8> {
    let mut stream = connect(addr);
    send(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n\r\n"),
    );
    // lb-mio closes at once; this only bounds how long a failing run waits.
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut got = Vec::new();
    if let Some((prefix, gate)) = until {
        // The whole half response reached the client before the backend resets.
        let mut tmp = [0u8; 4096];
        while find(&got, prefix).is_none() {
            match stream.read(&mut tmp) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&tmp[..n]),
            }
            assert!(got.len() < 64 * 1024, "too much: {got:?}");
        }
        gate.open();
    }
    let rest = try_read_to_close(&mut stream)
        .unwrap_or_else(|e| panic!("GET {path}: the connection was not closed: {e}"));
    got.extend_from_slice(&rest);
    got
}

#[track_caller]
fn assert_cut_short(bytes: &[u8], path: &str) {
    let text = show(bytes);
    assert!(text.starts_with("HTTP/1.1 200 "), "{path}: {text}");
    let (_, body) = split_response(bytes);
    if path == "/length" {
        assert!(text.contains("Content-Length: 100\r\n"), "{path}: {text}");
        assert!(body.len() < 100, "{path}: a complete-looking body: {text}");
        assert!(body.iter().all(|&b| b == b'x'), "{path}: {text}");
    } else {
        assert!(
            !body.ends_with(b"0\r\n\r\n"),
            "{path}: a last chunk the backend never sent: {text}"
        );
        assert!(
            split_response(HALF_CHUNKED).1.starts_with(&body),
            "{path}: bytes the backend never sent: {text}"
        );
    }
    assert!(
        find(&body, b"HTTP/1.").is_none(),
        "{path}: a second response: {text}"
    );
}

#[test]
fn half_a_response_then_a_reset_never_looks_complete() {
    let gate = Gate::new();
    let backend = half_then_reset(Some(gate.clone()));
    let lb = Lb::start(&ini(
        &[("half", backend.addr)],
        "[health]\ninterval_ms = 60000\nmax_fails = 0\n",
    ));
    let got = read_all_of(lb.addr, "/length", Some((HALF_LENGTH, &gate)));
    assert_cut_short(&got, "/length");
    assert_eq!(
        split_response(&got).1,
        split_response(HALF_LENGTH).1,
        "all the backend sent"
    );

    let gate = Gate::new();
    let backend = half_then_reset(Some(gate.clone()));
    let lb = Lb::start(&ini(
        &[("half", backend.addr)],
        "[health]\ninterval_ms = 60000\nmax_fails = 0\n",
    ));
    // The client's prefix to wait for: the first chunk, and the start of the second.
    let got = read_all_of(lb.addr, "/chunked", Some((b"5\r\nab", &gate)));
    assert_cut_short(&got, "/chunked");
}

/// A reset right after the half response: lb-mio may see the bytes (and cut the client off) or
/// only the reset (and answer 502); never a whole response.
#[test]
fn half_a_response_then_an_immediate_reset_gives_a_cut_or_a_502() {
    let backend = half_then_reset(None);
    let lb = Lb::start(&ini(
        &[("half", backend.addr)],
        "[health]\ninterval_ms = 60000\nmax_fails = 0\n",
    ));
    for i in 0..10 {
        let path = if i % 2 == 0 { "/length" } else { "/chunked" };
        let got = read_all_of(lb.addr, path, None);
        if got.starts_with(b"HTTP/1.1 502 ") {
            continue;
        }
        assert_cut_short(&got, path);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A POST is never sent twice
// ---------------------------------------------------------------------------------------------

#[test]
fn a_post_whose_backend_resets_is_not_replayed_and_gets_502() {
    let swallowed: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&swallowed);
    let eater = RawBackend::start(move |stream| {
        let Some(request) = read_request(&stream) else {
            return;
        };
        if request.is_probe() {
            return reply_and_close(&stream, 200);
        }
        log.lock().unwrap().push(request.body_str());
        reset(stream);
    });
    let good = Backend::start("good", |_| Response::ok("stored"));
    // Passive health off, so the eater keeps getting its turn.
    let lb = Lb::start(&ini(
        &[("eater", eater.addr), ("good", good.addr)],
        "[health]\ninterval_ms = 60000\nmax_fails = 0\n",
    ));
    let mut statuses = HashMap::new();
    for i in 0..20 {
        let id = format!("post-{i:03}");
        let raw = format!(
            "POST /orders HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{id}",
            id.len()
        );
        let resp = request(lb.addr, raw);
        statuses.insert(id, resp.status);
    }
    let swallowed = swallowed.lock().unwrap().clone();
    let stored: Vec<String> = good.requests().into_iter().map(|r| r.body_str()).collect();
    for (id, status) in &statuses {
        let at_eater = swallowed.iter().filter(|b| *b == id).count();
        let at_good = stored.iter().filter(|b| *b == id).count();
        assert!(
            at_eater + at_good <= 1,
            "{id} reached the backends {} times (eater {at_eater}, good {at_good})",
            at_eater + at_good
        );
        match status {
            200 => assert_eq!(at_good, 1, "{id}: 200 but good never got it"),
            502 => assert_eq!(at_eater, 1, "{id}: 502 but the eater never got it"),
            other => panic!("{id}: status {other}"),
        }
    }
    let bad = statuses.values().filter(|&&s| s == 502).count();
    assert!(
        bad > 0 && bad < statuses.len(),
        "both backends should have had POSTs: {statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. All backends down, then one back
// ---------------------------------------------------------------------------------------------

#[test]
fn all_down_gives_a_fast_503_and_a_recovered_backend_gets_traffic_after_rise_probes() {
    const INTERVAL_MS: u64 = 100;
    const RISE: u64 = 3;
    let a = Backend::named("a");
    let b = Backend::named("b");
    a.set_healthy(false);
    b.set_healthy(false);
    let lb = Lb::start(&ini(
        &[("a", a.addr), ("b", b.addr)],
        &format!(
            "[health]\ninterval_ms = {INTERVAL_MS}\n{PROBE_TIMEOUT}\nrise = {RISE}\nfall = 1\n"
        ),
    ));
    for name in ["a", "b"] {
        let line = format!("backend {name} is down: status 500");
        lb.expect_log(&line, WAIT);
    }
    // The slowest of 10 answers, from sending the request to the end of the 503. Slack for a
    // loaded machine: up to three batches of 10, one of which must be all under 50 ms (an
    // lb-mio that waited for anything before answering would fail all three).
    let mut batches = Vec::new();
    for _ in 0..3 {
        let mut slowest = Duration::ZERO;
        for i in 0..10 {
            let mut stream = connect(lb.addr);
            let started = Instant::now();
            send(
                &mut stream,
                format!("GET /{i} HTTP/1.1\r\nHost: lb.test\r\n\r\n"),
            );
            let resp = read_response(&mut stream);
            slowest = slowest.max(started.elapsed());
            assert_eq!(resp.status, 503, "{}", resp.head_str());
            assert!(resp.has_header("retry-after"), "{}", resp.head_str());
        }
        batches.push(slowest);
        if slowest < Duration::from_millis(50) {
            break;
        }
    }
    assert!(
        batches
            .iter()
            .any(|&slowest| slowest < Duration::from_millis(50)),
        "the slowest 503 of each batch of 10 took {batches:?}"
    );
    assert_eq!(a.request_count() + b.request_count(), 0);

    a.set_healthy(true);
    let back = Instant::now();
    let mut answered = None;
    for _ in 0..1000 {
        if back.elapsed() > Duration::from_secs(5) {
            break;
        }
        match try_get(lb.addr, "/again", IO_TIMEOUT) {
            Ok(resp) if resp.status == 200 => {
                answered = Some((back.elapsed(), resp.body_str()));
                break;
            }
            _ => {}
        }
        thread::sleep(Duration::from_millis(5));
    }
    let (took, body) = answered.unwrap_or_else(|| panic!("a never came back:\n{}", lb.log_text()));
    assert_eq!(body, "a");
    // The first good probe comes within one interval (+10% jitter), then rise - 1 more.
    let interval = Duration::from_millis(INTERVAL_MS);
    let soonest = interval.mul_f64(0.9 * (RISE - 1) as f64);
    // Slack for a loaded machine, where the health thread wakes late.
    let latest = interval.mul_f64(1.1 * RISE as f64) + interval + Duration::from_millis(1500);
    assert!(
        took >= soonest,
        "back after {took:?}: fewer than rise = {RISE} good probes?"
    );
    assert!(
        took <= latest,
        "back only after {took:?} (limit {latest:?})"
    );
    lb.expect_log("backend a is up", WAIT);
}

// ---------------------------------------------------------------------------------------------
// 6. A flapping backend
// ---------------------------------------------------------------------------------------------

/// A backend whose health check alternates 200, 500, 200, ... behind an lb-mio with this
/// hysteresis, over at least 21 probes. Returns the lb (for its log) and the statuses of GETs
/// sent meanwhile.
fn flapping(rise: u32, fall: u32) -> (Lb, Vec<u16>, Backend) {
    let probes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&probes);
    let options = BackendOptions {
        answer_probes: false,
        ..BackendOptions::default()
    };
    let flap = Backend::with_options("flap", options, move |req| {
        if req.is_probe() {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            return Response::status(if n.is_multiple_of(2) { 200 } else { 500 }, "").then_close();
        }
        Response::ok("flap")
    });
    let lb = Lb::start(&ini(
        &[("flap", flap.addr)],
        &format!("[health]\ninterval_ms = 50\n{PROBE_TIMEOUT}\nrise = {rise}\nfall = {fall}\n"),
    ));
    let mut statuses = Vec::new();
    // About 1.1 s; the deadline is for a badly loaded machine.
    let deadline = Instant::now() + Duration::from_secs(8);
    for _ in 0..800 {
        if probes.load(Ordering::SeqCst) >= 22 || Instant::now() > deadline {
            break;
        }
        statuses.push(get(lb.addr, "/").status);
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        probes.load(Ordering::SeqCst) >= 22,
        "only {} probes in 8 s",
        probes.load(Ordering::SeqCst)
    );
    // Probe 22 started after the result of probe 21 was acted on (and logged).
    lb.sync_log();
    (lb, statuses, flap)
}

#[test]
fn a_flapping_health_check_does_not_flip_a_backend_with_rise_2_fall_2() {
    let (lb, statuses, _flap) = flapping(2, 2);
    let changes = lb.log_lines_with("backend flap ");
    assert!(changes.is_empty(), "state changes logged: {changes:#?}");
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
}

/// The control: the same flapping with rise 1 and fall 1 does flip it, back and forth.
#[test]
fn a_flapping_health_check_flips_a_backend_with_rise_1_fall_1() {
    let (lb, _, _flap) = flapping(1, 1);
    let downs = lb.count_log("backend flap is down: status 500");
    let ups = lb.count_log("backend flap is up");
    assert!(
        downs >= 5 && ups >= 5,
        "{downs} downs, {ups} ups:\n{}",
        lb.log_text()
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Slow start
// ---------------------------------------------------------------------------------------------

/// GETs on one keep-alive connection, for `window` or `count` requests, whichever ends first:
/// how many each body named.
fn share_in(stream: &mut TcpStream, window: Duration, count: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let started = Instant::now();
    for _ in 0..count {
        if started.elapsed() >= window {
            break;
        }
        let resp = get_on(stream, "/");
        assert_eq!(resp.status, 200, "{}", resp.head_str());
        *counts.entry(resp.body_str()).or_insert(0) += 1;
    }
    counts
}

fn fraction(counts: &HashMap<String, usize>, name: &str) -> f64 {
    let total: usize = counts.values().sum();
    counts.get(name).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

#[test]
fn slow_start_ramps_a_recovered_backend_up() {
    let steady = Backend::named("steady");
    let fresh = Backend::named("fresh");
    fresh.set_healthy(false);
    let lb = Lb::start(&ini(
        &[("steady", steady.addr), ("fresh", fresh.addr)],
        &format!(
            "[health]\ninterval_ms = 50\n{PROBE_TIMEOUT}\nrise = 1\nfall = 1\nslow_start_s = 2\n"
        ),
    ));
    lb.expect_log("backend fresh is down", WAIT);
    fresh.set_healthy(true);
    lb.expect_log("backend fresh is up", WAIT);
    let up_at = Instant::now();
    let mut stream = connect(lb.addr);
    // The first 0.5 s (thousands of requests on an idle machine).
    let early = share_in(&mut stream, Duration::from_millis(500), 100_000);
    // The ramp ends 2 s after the backend came up (a little before `up_at`).
    let ramped = Duration::from_millis(2200).saturating_sub(up_at.elapsed());
    assert!(wait_until(ramped + Duration::from_secs(1), || up_at
        .elapsed()
        >= Duration::from_millis(2200)));
    let late = share_in(&mut stream, Duration::from_secs(3), 200);
    let (early_share, late_share) = (fraction(&early, "fresh"), fraction(&late, "fresh"));
    assert!(
        early.values().sum::<usize>() >= 20 && late.values().sum::<usize>() >= 20,
        "too few requests to tell: early {early:?}, late {late:?}"
    );
    // Round robin: half of the turns are fresh's. In the first 0.5 s its share grows from 5%
    // to 25% (about 7% of all requests); after the ramp it takes every turn (50%). The bound
    // of 30% leaves room for a small early sample on a loaded machine.
    assert!(
        early_share < 0.3,
        "early: {early:?} ({early_share:.2} to fresh)"
    );
    assert!(
        late_share > 0.4,
        "late: {late:?} ({late_share:.2} to fresh)"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Passive health
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_connections_mark_a_backend_down_after_max_fails_and_it_gets_no_more_attempts() {
    let dead = dead_addr();
    let live = Backend::named("live");
    // One probe round at start (one bad probe of three needed); the next only in a minute.
    let lb = Lb::start(&ini(
        &[("dead", dead), ("live", live.addr)],
        "[health]\ninterval_ms = 60000\nmax_fails = 4\n",
    ));
    for i in 0..20 {
        let resp = get(lb.addr, &format!("/{i}"));
        assert_eq!(
            (resp.status, resp.body_str().as_str()),
            (200, "live"),
            "request {i}\n{}",
            lb.log_text()
        );
    }
    lb.expect_log(
        "backend dead is down: 4 failures in a row, the last: connect",
        WAIT,
    );
    lb.sync_log();
    let attempts = lb.log_lines_with("backend dead failed");
    assert_eq!(attempts.len(), 4, "attempts on dead: {attempts:#?}");
    assert_eq!(lb.count_log("backend dead is down"), 1, "{}", lb.log_text());
    assert_eq!(live.request_count(), 20);
}

// ---------------------------------------------------------------------------------------------
// 9. Expected status range, slow probes, removal
// ---------------------------------------------------------------------------------------------

/// A backend whose health checks (`User-Agent: lb-mio-health`) are answered by `probe`, after
/// `delay`; other requests get its name. Probes are recorded with the rest of its requests, so
/// balancers given different health paths can be told apart.
fn probed_backend(
    name: &str,
    delay: Duration,
    probe: impl Fn() -> u16 + Send + Sync + 'static,
) -> Backend {
    let options = BackendOptions {
        answer_probes: false,
        ..BackendOptions::default()
    };
    let body = name.to_string();
    Backend::with_options(name, options, move |req| {
        if req.is_probe() {
            Response::status(probe(), "").delay(delay).then_close()
        } else {
            Response::ok(body.clone())
        }
    })
}

/// How many requests for `path` the backend got.
fn count_path(backend: &Backend, path: &str) -> usize {
    backend
        .requests()
        .iter()
        .filter(|r| r.target == path)
        .count()
}

#[test]
fn a_health_answer_outside_the_status_range_fails_the_probe() {
    let status = Arc::new(AtomicUsize::new(301));
    let answer = Arc::clone(&status);
    let moved = probed_backend("moved", Duration::ZERO, move || {
        answer.load(Ordering::SeqCst) as u16
    });
    let health = format!("interval_ms = 50\n{PROBE_TIMEOUT}\nrise = 1\nfall = 1\n");
    let strict = Lb::start(&ini(
        &[("moved", moved.addr)],
        &format!("[health]\npath = /strict\nstatus = 200-204\n{health}"),
    ));
    // The control: the default range, 200-399.
    let default = Lb::start(&ini(
        &[("moved", moved.addr)],
        &format!("[health]\npath = /default\n{health}"),
    ));
    strict.expect_log("backend moved is down: status 301", WAIT);
    assert_eq!(get(strict.addr, "/").status, 503);
    // Five more 301s for the default balancer (with fall = 1 any one would mark it down).
    let seen = count_path(&moved, "/default");
    assert!(wait_until(WAIT, || count_path(&moved, "/default") >= seen + 5));
    default.sync_log();
    assert_eq!(
        default.count_log("backend moved is"),
        0,
        "{}",
        default.log_text()
    );
    assert_eq!(get(default.addr, "/").status, 200);

    // The top of the range is in it.
    status.store(204, Ordering::SeqCst);
    strict.expect_log("backend moved is up", WAIT);
    assert_eq!(get(strict.addr, "/").status, 200);
}

#[test]
fn a_slow_health_answer_fails_the_probe_when_slow_ms_is_set() {
    let slowpoke = probed_backend("slowpoke", Duration::from_millis(400), || 200);
    let quick = Backend::named("quick");
    // fall = 2: one probe slowed by a loaded machine does not mark quick down.
    let health = format!("interval_ms = 50\n{PROBE_TIMEOUT}\nrise = 1\nfall = 2\n");
    let backends = [("slowpoke", slowpoke.addr), ("quick", quick.addr)];
    let lb = Lb::start(&ini(
        &backends,
        &format!("[health]\npath = /on\nslow_ms = 200\n{health}"),
    ));
    // The control: slow_ms = 0 is off.
    let off = Lb::start(&ini(
        &backends,
        &format!("[health]\npath = /off\nslow_ms = 0\n{health}"),
    ));
    lb.expect_log("backend slowpoke is down: slow", WAIT);
    // Three slow answers for `off`: the third is sent after the second was acted on.
    assert!(wait_until(WAIT, || count_path(&slowpoke, "/off") >= 3));
    lb.sync_log();
    off.sync_log();
    assert_eq!(lb.count_log("backend quick is"), 0, "{}", lb.log_text());
    assert_eq!(off.count_log(" is down"), 0, "{}", off.log_text());
    for i in 0..4 {
        let resp = get(lb.addr, &format!("/{i}"));
        assert_eq!((resp.status, resp.body_str().as_str()), (200, "quick"));
    }
    for i in 0..4 {
        assert_eq!(get(off.addr, &format!("/{i}")).status, 200);
    }
}

#[test]
fn a_backend_down_for_remove_after_s_is_removed_for_good() {
    let gone = Backend::named("gone");
    let stay = Backend::named("stay");
    gone.set_healthy(false);
    let lb = Lb::start(&ini(
        &[("gone", gone.addr), ("stay", stay.addr)],
        &format!(
            "[health]\ninterval_ms = 50\n{PROBE_TIMEOUT}\nrise = 1\nfall = 1\nremove_after_s = 1\n"
        ),
    ));
    lb.expect_log("backend gone is down", WAIT);
    let down_at = Instant::now();
    lb.expect_log("backend gone removed from the pool", WAIT);
    let took = down_at.elapsed();
    assert!(took >= Duration::from_millis(850), "removed after {took:?}");

    gone.set_healthy(true);
    // Ten more probe intervals (counted at the backend that stays): gone, probed, would be
    // up after one (rise = 1).
    assert!(stay.wait_for_probes(10, WAIT));
    lb.sync_log();
    assert_eq!(lb.count_log("backend gone is up"), 0, "{}", lb.log_text());
    assert_eq!(lb.count_log("backend gone removed"), 1, "{}", lb.log_text());
    for i in 0..10 {
        let resp = get(lb.addr, &format!("/{i}"));
        assert_eq!((resp.status, resp.body_str().as_str()), (200, "stay"));
    }
    assert_eq!(gone.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 10. Retry budget
// ---------------------------------------------------------------------------------------------

/// Twenty GETs through a balancer in front of a refusing backend and a live one.
fn statuses_with(lb_extra: &str) -> (Vec<u16>, Lb) {
    let dead = dead_addr();
    let live = Backend::named("live");
    let lb = Lb::start(&ini(
        &[("dead", dead), ("live", live.addr)],
        &format!("{lb_extra}[health]\ninterval_ms = 60000\n"),
    ));
    let statuses = (0..20)
        .map(|i| get(lb.addr, &format!("/{i}")).status)
        .collect();
    (statuses, lb)
}

#[test]
fn a_zero_retry_budget_lets_refused_connections_through_as_502() {
    let (statuses, lb) = statuses_with("[lb]\nretry_budget = 0\n");
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 502),
        "{statuses:?}"
    );
    lb.expect_log("retry budget", WAIT);
}

/// The control: the default budget retries them all.
#[test]
fn the_default_retry_budget_retries_refused_connections() {
    let (statuses, lb) = statuses_with("");
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(lb.count_log("retry budget"), 0, "{}", lb.log_text());
    assert!(lb.count_log("backend dead failed") > 0, "{}", lb.log_text());
}

// ---------------------------------------------------------------------------------------------
// A request in flight on a pooled connection
// ---------------------------------------------------------------------------------------------

/// A request in flight on a pooled (keep-alive) connection when its backend dies goes to
/// another backend, even with a single retry: the failure on the pooled connection must not use
/// up that retry on the dead backend (lb-mio before c5d69ee answered 502 here).
#[test]
fn a_request_cut_on_a_pooled_connection_is_retried_on_another_backend() {
    let gate = Gate::new();
    let mut a = Backend::gated("a", &gate);
    let b = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("a", a.addr), ("b", b.addr)],
        "[lb]\nretries = 1\n[health]\ninterval_ms = 60000\n",
    ));
    // One request to each backend: lb-mio now holds a pooled connection to each.
    let mut client = connect(lb.addr);
    assert_eq!(get_on(&mut client, "/warm").body_str(), "a");
    assert_eq!(get_on(&mut client, "/warm").body_str(), "b");
    // The next turn is a's, on its pooled connection; a holds the request.
    send(&mut client, "GET /slow HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    assert!(wait_until(WAIT, || a
        .requests()
        .iter()
        .any(|r| r.target == "/slow")));
    // Another client takes b's turn meanwhile.
    assert_eq!(get(lb.addr, "/other").body_str(), "b");
    a.stop();
    let resp = read_response(&mut client);
    gate.open();
    assert_eq!(
        (resp.status, resp.body_str().as_str()),
        (200, "b"),
        "{}",
        lb.log_text()
    );
}

// ---------------------------------------------------------------------------------------------
// Health checks of one backend do not wait for another's; round robin keeps its rotation
// ---------------------------------------------------------------------------------------------

/// Probes run side by side in the health thread's event loop, so a black-holed backend delays
/// no other backend's checks: a recovering backend comes back after `rise x interval_ms`, not
/// `rise x timeout_ms` (regression: probes once ran in rounds that waited for the slowest).
#[test]
fn a_black_holed_backend_does_not_slow_the_other_backends_health_checks() {
    let (hole, _) = black_hole_backend();
    let a = Backend::named("a");
    a.set_healthy(false);
    let lb = Lb::start(&ini(
        &[("a", a.addr), ("hole", hole.addr)],
        "[health]\ninterval_ms = 50\ntimeout_ms = 3000\nrise = 2\nfall = 1\n",
    ));
    lb.expect_log("backend a is down", WAIT);
    a.set_healthy(true);
    let back = Instant::now();
    lb.expect_log("backend a is up", Duration::from_secs(8));
    // rise x interval (+10% jitter) plus one interval, with 1.5 s of slack for a loaded
    // machine: still well under the 3 s that waiting for the black hole's probe would take.
    let took = back.elapsed();
    assert!(
        took < Duration::from_millis(2 * 55 + 55 + 1500),
        "a came back only after {took:?}\n{}",
        lb.log_text()
    );
}

/// Round robin gives each backend its turn in order, and a retry does not take a turn: with
/// two backends, one refusing, about half the requests meet the refusing one first (regression:
/// retries once took turns, so every request met it first: 20 attempts for 20 requests).
#[test]
fn round_robin_keeps_its_rotation_across_a_failover() {
    let dead = dead_addr();
    let live = Backend::named("live");
    // Passive health off, active checks every minute and a budget that allows every retry:
    // only the rotation decides.
    let lb = Lb::start(&ini(
        &[("dead", dead), ("live", live.addr)],
        "[lb]\nretry_budget = 100\n[health]\ninterval_ms = 60000\nmax_fails = 0\n",
    ));
    for i in 0..20 {
        let resp = get(lb.addr, &format!("/{i}"));
        assert_eq!(resp.status, 200, "request {i}\n{}", lb.log_text());
    }
    lb.sync_log();
    let attempts = lb.count_log("backend dead failed");
    assert!(
        attempts <= 12,
        "{attempts} of 20 requests tried the dead backend first"
    );
}
