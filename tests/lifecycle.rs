//! Operating lb-mio: SIGHUP reloads config.ini (backends added, removed, settings changed, a
//! broken file refused), SIGTERM/SIGINT drain and exit, and a zero-downtime binary upgrade with
//! a second lb-mio on the same port. Real binary, real sockets, loopback only.

mod support;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(3);

/// Fast health checks, so a backend added by a reload comes up in a few hundred milliseconds.
const INTERVAL_MS: u64 = 100;
const RISE: u64 = 2;
const FAST_HEALTH: &str = "[health]\ninterval_ms = 100\nrise = 2\n";

// ---------------------------------------------------------------------------------------------
// Local helpers: config rewrites, backends that hold a request
// ---------------------------------------------------------------------------------------------

/// How a connect with a short timeout fails, if it does.
fn connect_error(addr: SocketAddr) -> Option<io::ErrorKind> {
    try_connect(addr, Duration::from_millis(500))
        .err()
        .map(|e| e.kind())
}

/// The body of a response, which the test backends set to their name.
fn served_by(resp: &Resp) -> String {
    assert_eq!(resp.status, 200, "response:\n{}", resp.head_str());
    resp.body_str()
}

/// Sends `GET /slow` (keep-alive) on a new connection and reads the answer on a thread.
fn slow_request(addr: SocketAddr) -> JoinHandle<io::Result<Resp>> {
    let mut stream = connect(addr);
    send(&mut stream, "GET /slow HTTP/1.1\r\nHost: lb.test\r\n\r\n");
    thread::spawn(move || try_read_response(&mut stream))
}

/// What the health thread and live traffic did to one backend: probes are counted apart from
/// requests, and the number of probes answered before the first request is kept.
#[derive(Default)]
struct Tally {
    probes: AtomicUsize,
    served: AtomicUsize,
    probes_before_first_request: Mutex<Option<usize>>,
}

/// A backend answering its name, which sees health probes itself (to order them against the
/// first request).
fn tallied(name: &'static str) -> (Backend, Arc<Tally>) {
    let tally = Arc::new(Tally::default());
    let seen = Arc::clone(&tally);
    let options = BackendOptions {
        answer_probes: false,
        ..BackendOptions::default()
    };
    let backend = Backend::with_options(name, options, move |req| {
        if req.is_probe() {
            seen.probes.fetch_add(1, Ordering::SeqCst);
            return Response::ok("healthy").then_close();
        }
        let probes = seen.probes.load(Ordering::SeqCst);
        seen.probes_before_first_request
            .lock()
            .unwrap()
            .get_or_insert(probes);
        seen.served.fetch_add(1, Ordering::SeqCst);
        Response::ok(name)
    });
    (backend, tally)
}

// ---------------------------------------------------------------------------------------------
// SIGHUP
// ---------------------------------------------------------------------------------------------

#[test]
fn reload_adds_a_backend_that_takes_traffic_once_its_health_checks_pass() {
    let (a, _) = tallied("a");
    let (b, b_tally) = tallied("b");
    let lb = Lb::start(&ini(&[("a", a.addr)], FAST_HEALTH));
    let mut kept = connect(lb.addr);
    assert_eq!(served_by(&get_on(&mut kept, "/before")), "a");

    let hup = Instant::now();
    lb.reload_ok(&ini(&[("a", a.addr), ("b", b.addr)], FAST_HEALTH));
    lb.expect_log(&format!("backend b at {} added", b.addr), WAIT);

    // Health checks bring b up after RISE probes, one interval apart: a few hundred ms.
    let bound = Duration::from_millis(RISE * INTERVAL_MS + INTERVAL_MS) + Duration::from_secs(2);
    let mut requests = 0;
    let reached = wait_until(bound, || {
        requests += 1;
        served_by(&get(lb.addr, "/after"));
        b_tally.served.load(Ordering::SeqCst) > 0
    });
    assert!(
        reached,
        "b got no traffic in {bound:?} after SIGHUP ({requests} requests); log:\n{}",
        lb.log_text()
    );
    let probes = b_tally.probes_before_first_request.lock().unwrap().unwrap();
    assert!(
        probes >= RISE as usize,
        "b took traffic after only {probes} health probes (rise = {RISE}): it did not start down"
    );
    // The state flips before the line is written: the line may trail b's first request.
    lb.expect_log("backend b is up", WAIT);
    eprintln!(
        "b took traffic {:?} after SIGHUP, after {probes} probes",
        hup.elapsed()
    );

    // Round robin over both now; the connection opened before the reload carries on.
    let mut names = Vec::new();
    for i in 0..4 {
        names.push(served_by(&get_on(&mut kept, &format!("/kept/{i}"))));
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"], "on the pre-reload connection");
}

#[test]
fn reload_removes_a_backend_after_its_request_in_flight_finishes() {
    let gate = Gate::new();
    let a = Backend::gated("a", &gate);
    let b = Backend::gated("b", &gate);
    let lb = Lb::start(&ini(&[("a", a.addr), ("b", b.addr)], FAST_HEALTH));

    let slow = slow_request(lb.addr);
    let (busy, other) = holder(&a, &b, WAIT);
    lb.reload_ok(&ini(&[(other.name.as_str(), other.addr)], FAST_HEALTH));
    let draining = format!(
        "backend {} at {} is gone from the config: draining",
        busy.name, busy.addr
    );
    lb.expect_log(&draining, WAIT);

    // While its request is in flight, the removed backend takes no new one.
    for i in 0..6 {
        assert_eq!(
            served_by(&get(lb.addr, &format!("/during/{i}"))),
            other.name
        );
    }
    assert_eq!(busy.request_count(), 1);
    // Several health rounds (which remove drained backends) pass with the request in flight.
    thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
    assert_eq!(
        lb.count_log(&format!("backend {} removed", busy.name)),
        0,
        "removed while a request was still in flight; log:\n{}",
        lb.log_text()
    );

    gate.open();
    let resp = slow.join().unwrap().expect("the request in flight failed");
    assert_eq!(served_by(&resp), busy.name, "the request in flight");
    let removed = format!("backend {} removed from the pool: drained", busy.name);
    lb.expect_log(&removed, WAIT);

    for i in 0..6 {
        assert_eq!(served_by(&get(lb.addr, &format!("/after/{i}"))), other.name);
    }
    assert_eq!(busy.request_count(), 1, "the removed backend got requests");
}

#[test]
fn a_broken_config_is_refused_with_its_line_and_the_old_one_keeps_running() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let c = Backend::named("c");
    let lb = Lb::start(&ini(&[("a", a.addr), ("b", b.addr)], FAST_HEALTH));

    // The broken file would also swap b for c: none of it may apply.
    let fixed = ini(&[("a", a.addr), ("c", c.addr)], FAST_HEALTH);
    let broken = fixed.replace("workers = 1", "workers = x");
    let line = broken
        .lines()
        .position(|l| l == "workers = x")
        .expect("the broken line")
        + 1;
    let outcome = lb.reload(&broken);
    let want = format!(
        "reload failed, the running config stays: {}:{line}: [lb] workers",
        lb.config_path().display()
    );
    assert!(outcome.contains(&want), "want {want:?} in {outcome:?}");

    // Give a wrongly applied c time to pass its health checks, then look at the traffic.
    thread::sleep(Duration::from_millis(3 * INTERVAL_MS + 100));
    let mut names = Vec::new();
    for i in 0..8 {
        names.push(served_by(&get(lb.addr, &format!("/broken/{i}"))));
    }
    names.sort();
    assert_eq!(names, ["a", "a", "a", "a", "b", "b", "b", "b"]);
    assert_eq!(c.probe_count() + c.request_count(), 0, "c was added");
    assert_eq!(lb.count_log("is gone from the config"), 0);

    lb.reload_ok(&fixed);
    let b_gone = format!("backend b at {} is gone from the config: draining", b.addr);
    let c_added = format!("backend c at {} added", c.addr);
    lb.expect_log(&b_gone, WAIT);
    lb.expect_log(&c_added, WAIT);
    assert!(
        wait_until(WAIT, || served_by(&get(lb.addr, "/fixed")) == "c"),
        "c got no traffic after the fixed reload; log:\n{}",
        lb.log_text()
    );
    let b_before = b.request_count();
    for i in 0..6 {
        assert_ne!(served_by(&get(lb.addr, &format!("/fixed/{i}"))), "b");
    }
    assert_eq!(b.request_count(), b_before);
}

#[test]
fn reload_switches_round_robin_to_least_conn() {
    let gate = Gate::new();
    let a = Backend::gated("a", &gate);
    let b = Backend::gated("b", &gate);
    let extra = format!("[lb]\nstrategy = round_robin\n{FAST_HEALTH}");
    let lb = Lb::start(&ini(&[("a", a.addr), ("b", b.addr)], &extra));

    let slow = slow_request(lb.addr);
    let (busy, idle) = holder(&a, &b, WAIT);

    // Round robin takes turns whatever the load: the busy backend gets its share.
    for i in 0..6 {
        served_by(&get(lb.addr, &format!("/rr/{i}")));
    }
    let busy_rr = busy.request_count() - 1;
    assert!(
        busy_rr >= 2,
        "round robin sent {busy_rr} of 6 to the busy backend"
    );

    let extra = format!("[lb]\nstrategy = least_conn\n{FAST_HEALTH}");
    lb.reload_ok(&ini(&[("a", a.addr), ("b", b.addr)], &extra));

    // Least connections: every request goes where nothing is in flight.
    for i in 0..6 {
        assert_eq!(
            served_by(&get(lb.addr, &format!("/lc/{i}"))),
            idle.name,
            "request {i} after the switch to least_conn"
        );
    }
    assert_eq!(busy.request_count(), 1 + busy_rr);

    gate.open();
    let resp = slow.join().unwrap().expect("the slow request failed");
    assert_eq!(served_by(&resp), busy.name);
}

#[test]
fn listen_workers_and_admin_changes_wait_for_a_restart_and_the_rest_applies() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], FAST_HEALTH));
    let mut kept = connect(lb.addr);
    let resp = get_on(&mut kept, "/before");
    assert!(!resp.has_header("x-backend"));

    let (elsewhere, admin) = (dead_addr(), dead_addr());
    let extra = format!(
        "[lb]\nlisten = {elsewhere}\nworkers = 2\nexpose_backend = true\n\
         [admin]\nlisten = {admin}\n{FAST_HEALTH}"
    );
    lb.reload_ok(&ini(&[("a", a.addr)], &extra));
    for warning in [
        "reload: [lb] listen, tls_listen and workers take effect at the next start",
        "reload: [admin] takes effect at the next start",
    ] {
        lb.expect_log(warning, WAIT);
    }

    // Still on the old address (the kept connection and new ones), nothing on the new ones;
    // the setting that can change live did.
    let resp = get_on(&mut kept, "/after");
    assert_eq!(resp.header("x-backend"), Some("a"), "{}", resp.head_str());
    assert_eq!(get(lb.addr, "/new").header("x-backend"), Some("a"));
    for addr in [elsewhere, admin] {
        assert_eq!(
            connect_error(addr),
            Some(io::ErrorKind::ConnectionRefused),
            "something listens on {addr} after the reload"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SIGTERM / SIGINT
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_finishes_the_request_in_flight_closes_the_rest_and_exits_zero() {
    let gate = Gate::new();
    let a = Backend::gated("a", &gate);
    let drain = Duration::from_secs(5);
    let extra = format!("[lb]\nworkers = 2\ndrain_timeout_s = 5\n{FAST_HEALTH}");
    let mut lb = Lb::start(&ini(&[("a", a.addr)], &extra));

    // Idle keep-alive connections (spread over both workers, most likely).
    let mut idle: Vec<TcpStream> = (0..4).map(|_| connect(lb.addr)).collect();
    for (i, conn) in idle.iter_mut().enumerate() {
        assert_eq!(served_by(&get_on(conn, &format!("/idle/{i}"))), "a");
    }
    let slow = slow_request(lb.addr);
    assert!(
        a.wait_for_requests(5, WAIT),
        "the slow request never arrived"
    );

    let term = Instant::now();
    lb.signal("TERM");

    for (i, conn) in idle.iter_mut().enumerate() {
        assert!(
            closes_within(conn, Duration::from_secs(1)),
            "idle connection {i} still open {:?} after SIGTERM",
            term.elapsed()
        );
    }
    let closed_idle = term.elapsed();

    // The listeners close: a new connection is refused, and stays refused.
    let refused = wait_until(Duration::from_secs(1), || {
        connect_error(lb.addr) == Some(io::ErrorKind::ConnectionRefused)
    });
    assert!(
        refused,
        "lb-mio still accepts {:?} after SIGTERM",
        term.elapsed()
    );
    for _ in 0..3 {
        assert_eq!(
            connect_error(lb.addr),
            Some(io::ErrorKind::ConnectionRefused)
        );
    }
    assert!(
        lb.exited().is_none(),
        "lb-mio exited with a request in flight; log:\n{}",
        lb.log_text()
    );
    thread::sleep(Duration::from_millis(200));
    assert!(
        lb.exited().is_none(),
        "lb-mio exited with a request in flight"
    );

    gate.open();
    let resp = slow.join().unwrap().expect("the request in flight failed");
    assert_eq!(served_by(&resp), "a");
    assert!(
        resp.connection_has("close"),
        "a response relayed while stopping must say Connection: close:\n{}",
        resp.head_str()
    );
    let status = lb.wait_exit(drain.saturating_sub(term.elapsed()));
    let status = status.unwrap_or_else(|| {
        panic!(
            "lb-mio still running {:?} after SIGTERM; log:\n{}",
            term.elapsed(),
            lb.log_text()
        )
    });
    assert!(status.success(), "exit: {status}; log:\n{}", lb.log_text());
    lb.expect_log("lb-mio stopped", WAIT);
    eprintln!(
        "idle connections closed {closed_idle:?} after SIGTERM, exit after {:?}",
        term.elapsed()
    );
}

#[test]
fn sigint_stops_waiting_for_a_request_at_the_drain_timeout() {
    let a = Backend::start("a", |req| {
        let slow = req.target == "/slow";
        Response::ok("a").delay(Duration::from_secs(if slow { 5 } else { 0 }))
    });
    let drain = Duration::from_secs(1);
    let extra = format!("[lb]\ndrain_timeout_s = 1\n{FAST_HEALTH}");
    let mut lb = Lb::start(&ini(&[("a", a.addr)], &extra));

    let slow = slow_request(lb.addr);
    assert!(
        a.wait_for_requests(1, WAIT),
        "the slow request never arrived"
    );
    let int = Instant::now();
    lb.signal("INT");
    let status = lb.wait_exit(drain + Duration::from_secs(2));
    let took = int.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "lb-mio still running {took:?} after SIGINT with drain_timeout_s = 1; log:\n{}",
            lb.log_text()
        )
    });
    assert!(status.success(), "exit: {status}; log:\n{}", lb.log_text());
    assert!(
        took >= drain.mul_f64(0.9),
        "lb-mio exited {took:?} after SIGINT: it did not wait for the request in flight"
    );
    assert!(
        slow.join().unwrap().is_err(),
        "the cut request got a response"
    );
}

// ---------------------------------------------------------------------------------------------
// Zero-downtime upgrade
// ---------------------------------------------------------------------------------------------

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Sets `net.ipv4.tcp_migrate_req = 1` for the life of the guard, then restores the old value.
///
/// When one `SO_REUSEPORT` listener of a group closes, Linux resets the connections still in
/// ITS accept queue (handshake done, not yet accepted) unless this is 1; then the kernel moves
/// them to another listener of the group. The old lb-mio closes its listeners on SIGTERM while
/// clients keep connecting, so without it a zero-downtime upgrade loses the connections that
/// happened to be queued at that instant: a kernel limit, not lb-mio's. (Tests run as root in
/// a throwaway VM; the setting is per network namespace.)
struct MigrateReq {
    old: Option<String>,
}

impl MigrateReq {
    fn enable() -> MigrateReq {
        let old = std::fs::read_to_string(MIGRATE_REQ).ok();
        match std::fs::write(MIGRATE_REQ, "1") {
            Ok(()) => {}
            Err(e) => eprintln!("cannot set {MIGRATE_REQ} (queued connections may be reset): {e}"),
        }
        MigrateReq { old }
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(MIGRATE_REQ, old.trim());
        }
    }
}

/// What the load clients saw.
struct Load {
    started: Instant,
    stop: AtomicBool,
    ok: AtomicUsize,
    /// Keep-alive connections that closed between requests and were retried on a new one.
    reconnects: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn new() -> Load {
        Load {
            started: Instant::now(),
            stop: AtomicBool::new(false),
            ok: AtomicUsize::new(0),
            reconnects: AtomicUsize::new(0),
            failures: Mutex::new(Vec::new()),
        }
    }

    fn fail(&self, what: String) {
        let at = self.started.elapsed();
        self.failures
            .lock()
            .unwrap()
            .push(format!("at {at:.3?}: {what}"));
    }
}

const LOAD_REQUEST: &str = "GET /load HTTP/1.1\r\nHost: lb.test\r\n\r\n";
const LOAD_REQUEST_CLOSE: &str = "GET /load HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n";

/// One request on a new connection: every error is a failure.
fn fresh_request(addr: SocketAddr, request: &str) -> Result<(Resp, TcpStream), String> {
    let mut stream =
        try_connect(addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send on a new connection: {e}"))?;
    let resp = try_read_response(&mut stream).map_err(|e| format!("new connection: {e}"))?;
    if resp.status != 200 {
        return Err(format!("status {} on a new connection", resp.status));
    }
    Ok((resp, stream))
}

/// A client opening a new connection per request.
fn one_shot_client(addr: SocketAddr, load: &Load) {
    for _ in 0..100_000 {
        if load.stop.load(Ordering::SeqCst) {
            return;
        }
        match fresh_request(addr, LOAD_REQUEST_CLOSE) {
            Ok(_) => {
                load.ok.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => load.fail(e),
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// A keep-alive client: a connection that closes between requests (the server may close an
/// idle connection at any time) is normal, and the request is retried on a new one.
fn keep_alive_client(addr: SocketAddr, load: &Load) {
    let mut kept: Option<TcpStream> = None;
    for _ in 0..100_000 {
        if load.stop.load(Ordering::SeqCst) {
            return;
        }
        let reused = kept.take().and_then(|mut stream| {
            let sent = stream.write_all(LOAD_REQUEST.as_bytes());
            let resp = sent.and_then(|()| try_read_response(&mut stream));
            match resp {
                Ok(resp) => Some(Ok((resp, stream))),
                // Closed or reset before any byte of a response: retry on a new connection.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::ConnectionAborted
                    ) && !e.to_string().contains("inside") =>
                {
                    load.reconnects.fetch_add(1, Ordering::SeqCst);
                    None
                }
                Err(e) => Some(Err(format!("kept connection: {e}"))),
            }
        });
        let result = match reused {
            Some(Ok((resp, stream))) if resp.status == 200 => Ok((resp, stream)),
            Some(Ok((resp, _))) => Err(format!("status {} on a kept connection", resp.status)),
            Some(Err(e)) => Err(e),
            None => fresh_request(addr, LOAD_REQUEST),
        };
        match result {
            Ok((resp, stream)) => {
                load.ok.fetch_add(1, Ordering::SeqCst);
                if !resp.connection_has("close") {
                    kept = Some(stream);
                }
            }
            Err(e) => load.fail(e),
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Six clients against `addr`: four opening a connection per request, two keeping theirs.
fn start_load(addr: SocketAddr) -> (Arc<Load>, Vec<JoinHandle<()>>) {
    let load = Arc::new(Load::new());
    let clients = (0..6)
        .map(|i| {
            let load = Arc::clone(&load);
            thread::spawn(move || match i % 3 {
                2 => keep_alive_client(addr, &load),
                _ => one_shot_client(addr, &load),
            })
        })
        .collect();
    (load, clients)
}

fn stop_load(load: &Load, clients: Vec<JoinHandle<()>>) {
    load.stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
}

#[test]
fn a_new_lb_mio_on_the_same_port_takes_over_without_a_failed_request() {
    let _migrate = MigrateReq::enable();
    let a = Backend::named("a");
    let b = Backend::named("b");
    let backends = [("a", a.addr), ("b", b.addr)];
    let config = |listen: &str, workers: usize| {
        let extra = format!(
            "[lb]\nlisten = {listen}\nworkers = {workers}\n[log]\naccess_log = true\n{FAST_HEALTH}"
        );
        ini(&backends, &extra)
    };
    let mut current = Lb::start(&config("127.0.0.1:0", 2));
    let addr = current.addr;

    let (load, clients) = start_load(addr);
    if !wait_until(WAIT, || load.ok.load(Ordering::SeqCst) >= 20) {
        stop_load(&load, clients);
        panic!(
            "the load never got going: {:?}",
            load.failures.lock().unwrap()
        );
    }

    // Three upgrades in a row: each new binary binds the port beside the running one, which
    // then drains on SIGTERM. More handovers, more chances to catch a request lost in one.
    let mut timeline = Vec::new();
    let mut retired = Vec::new();
    for workers in [1, 2, 1] {
        let mut next = Lb::start(&config(&addr.to_string(), workers));
        assert_eq!(next.addr, addr);
        thread::sleep(Duration::from_millis(300));
        let term = Instant::now();
        let term_at = load.started.elapsed();
        current.signal("TERM");
        let status = current.wait_exit(WAIT);
        let exit_after = term.elapsed();
        let ok_at_exit = load.ok.load(Ordering::SeqCst);
        timeline.push(format!(
            "SIGTERM at {term_at:.3?}, exit {exit_after:.3?} later, {ok_at_exit} ok by then"
        ));
        let status = status.unwrap_or_else(|| {
            stop_load(&load, Vec::new());
            panic!("the old lb-mio did not exit:\n{}", current.log_text())
        });
        assert!(status.success(), "old lb-mio exit: {status}");
        next.assert_alive();
        std::mem::swap(&mut current, &mut next);
        retired.push(next);
    }
    let ok_at_last_exit = load.ok.load(Ordering::SeqCst);
    thread::sleep(Duration::from_secs(1));
    stop_load(&load, clients);

    let total = load.ok.load(Ordering::SeqCst);
    let failures = load.failures.lock().unwrap().clone();
    let timeline = format!(
        "{}; {total} requests ok in all; {} keep-alive reconnects",
        timeline.join("; "),
        load.reconnects.load(Ordering::SeqCst)
    );
    eprintln!("{timeline}");
    // A reset on a new connection within a few ms of a SIGTERM (with tcp_migrate_req = 1) is
    // the old lb-mio closing a connection it had accepted but not read yet as if it were idle.
    assert!(
        failures.is_empty(),
        "{} failed requests (of {}): {:?}\n{timeline}",
        failures.len(),
        total + failures.len(),
        &failures[..failures.len().min(10)],
    );
    assert!(
        total - ok_at_last_exit >= 10,
        "only {} requests after the last handover",
        total - ok_at_last_exit
    );
    // Every instance served its share (each access log line is one request it relayed).
    for (i, lb) in retired.iter().chain([&current]).enumerate() {
        let served = lb.count_log("\"GET /load HTTP/1.1\" 200");
        assert!(
            served >= 10,
            "instance {i} served {served} requests; its log:\n{}",
            lb.log_text()
        );
    }
    current.assert_alive();
}

// ---------------------------------------------------------------------------------------------
// SIGUSR2: the upgrade a package runs, as systemd sees it
// ---------------------------------------------------------------------------------------------

/// systemd's side of `Type=notify`: the datagram socket lb-mio finds in `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    _dir: TempDir,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = TempDir::new("-notify");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            socket,
            _dir: dir,
            path,
        }
    }

    /// The messages received within `within` (each `KEY=value` lines), until one that has
    /// `until`.
    fn until(&self, until: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if got.last().is_some_and(|m| m.contains(until)) {
                    break;
                }
            }
        }
        got
    }
}

/// The process an upgrade started, ended when the test is.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// lb-mio started as systemd starts it, with `NOTIFY_SOCKET`.
fn start_notifying(config: &str, notify: &NotifySocket) -> Lb {
    Lb::try_start_as(config, |path| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lb-mio"));
        command.arg(path).env("NOTIFY_SOCKET", &notify.path);
        command
    })
    .unwrap()
}

#[test]
fn sigusr2_hands_the_service_to_a_new_process_under_load_and_tells_systemd() {
    let _migrate = MigrateReq::enable();
    let a = Backend::named("a");
    // Ports of its own: the new process reads the same file and must bind the same ports,
    // the admin listener's too (as in the packaged config.ini).
    let listen = free_port([127, 0, 0, 1].into());
    let admin = free_port([127, 0, 0, 1].into());
    let config = ini(
        &[("a", a.addr)],
        &format!("[lb]\nlisten = {listen}\nworkers = 2\n[admin]\nlisten = {admin}\n"),
    );
    let notify = NotifySocket::bind();
    let mut old = start_notifying(&config, &notify);
    assert_eq!(notify.until("READY=1", WAIT), ["READY=1"]);
    let (load, clients) = start_load(old.addr);
    assert!(wait_until(WAIT, || load.ok.load(Ordering::SeqCst) >= 20));

    old.signal("USR2");
    let messages = notify.until("READY=1", WAIT);
    let main_pid = messages.iter().find_map(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MAINPID="))
            .and_then(|p| p.parse::<u32>().ok())
    });
    let Some(new_pid) = main_pid else {
        stop_load(&load, clients);
        panic!("no MAINPID: {messages:?}\n{}", old.log_text());
    };
    let _successor = Successor(new_pid);
    assert_ne!(new_pid, old.pid());
    assert_eq!(
        messages.last().map(|m| m.ends_with("READY=1")),
        Some(true),
        "{messages:?}"
    );
    let status = old.wait_exit(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "the old one did not drain and exit: {status:?}"
    );
    assert!(notify
        .until("STOPPING=1", WAIT)
        .iter()
        .any(|m| m == "STOPPING=1"));
    let ok_at_exit = load.ok.load(Ordering::SeqCst);
    let serves = wait_until(WAIT, || load.ok.load(Ordering::SeqCst) >= ok_at_exit + 50);
    stop_load(&load, clients);
    let failures = load.failures.lock().unwrap().clone();
    let first = &failures[..failures.len().min(10)];
    assert!(
        serves,
        "the new process does not serve: {first:?}\n{}",
        old.log_text()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(old
        .log_text()
        .contains(&format!("ending the old lb-mio (pid {})", old.pid())));
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let a = Backend::named("a");
    let config = ini(&[("a", a.addr)], "[lb]\nlisten = 127.0.0.1:0\n");
    let mut old = Lb::start(&config);
    // The file the new process reads has gone bad since.
    std::fs::write(old.config_path(), format!("{config}[lb]\nworkers = many\n")).unwrap();
    old.signal("USR2");
    old.expect_log("before it took over; this one keeps serving", WAIT);
    assert_eq!(old.get_body("/"), "a");
    // A second try, once the first failed, is taken.
    old.signal("USR2");
    old.expect_log_count("before it took over; this one keeps serving", 2, WAIT);
    old.assert_alive();
}
