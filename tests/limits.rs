//! Slow clients and resource exhaustion: a reader too slow for a large response, a reader that
//! stops, an uploader that trickles, a flood of connections (below and beyond
//! `max_connections`), and what 10,000 idle keep-alive connections cost in memory. What lb-mio
//! holds is read from `/proc/<pid>` (RSS, open descriptors). `tests/failures.rs` has the
//! simpler cases (slowloris head, one connection over the limit, EMFILE, idle timeout).
//!
//! The tests that open thousands of connections run one at a time (`HEAVY`), so they do not add
//! up on the descriptor limit or on the two shared cores.

mod support;

use socket2::{Domain, SockRef, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// One health probe at start and no more: a backend stays up unless live traffic marks it down.
const NO_HEALTH: &str = "[health]\ninterval_ms = 3600000\n";

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// lb-mio's buffers (`src/buffer.rs`): 16 KiB each, four per exchange at most.
const LB_BUFFER: u64 = 16 * KIB;
/// The pipe a spliced body passes through (src/pipe.rs).
const PIPE: u64 = 64 * KIB;

/// Serializes the tests that open thousands of sockets.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// What a process holds, from /proc
// ---------------------------------------------------------------------------------------------

/// Waits until `pid` holds at most `most` descriptors; returns the last count seen.
fn wait_for_fds_at_most(pid: u32, most: usize, timeout: Duration) -> usize {
    let mut last = open_fds(pid);
    wait_until(timeout, || {
        last = open_fds(pid);
        last <= most
    });
    last
}

/// Open descriptors of a process once the count holds still for 200 ms (at most 3 s): a
/// baseline without the sockets that are just closing (a finished exchange's backend
/// connection, the start-up health probe).
fn settled_fds(pid: u32) -> usize {
    let mut last = open_fds(pid);
    for _ in 0..15 {
        thread::sleep(Duration::from_millis(200));
        let now = open_fds(pid);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// The kernel's count of connections dropped because an accept queue was full (all listeners
/// on the machine: `ListenOverflows` in /proc/net/netstat).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// The third (largest) value of a `tcp_rmem` / `tcp_wmem` style sysctl.
fn sysctl_max(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(64 * MIB)
}

// ---------------------------------------------------------------------------------------------
// Descriptor limits
// ---------------------------------------------------------------------------------------------

/// (soft, hard) RLIMIT_NOFILE of this process.
fn nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .take(2)
        .map(|v| v.parse().unwrap_or(u64::MAX)) // "unlimited"
        .collect();
    (values[0], values[1])
}

/// Raises this process's soft descriptor limit to `want` if it is lower, with `prlimit` (std
/// has no setrlimit): up to the hard limit, or past it where allowed (root). Returns the soft
/// limit now in force; lb-mio processes started later inherit it.
fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = nofile();
    if soft >= want {
        return soft;
    }
    let pid = std::process::id().to_string();
    for (s, h) in [(want, want.max(hard)), (want.min(hard), hard)] {
        let ok = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={s}:{h}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if ok && nofile().0 >= want {
            break;
        }
    }
    nofile().0
}

// ---------------------------------------------------------------------------------------------
// A backend that streams a large response and counts what it managed to write
// ---------------------------------------------------------------------------------------------

/// Size of the large response.
const BIG: u64 = 64 * MIB;

/// Byte `i` of the large response: splitmix64 of the 8-byte word index, so any range of it can
/// be produced (and checked) on its own.
fn fill_pattern(buf: &mut [u8], offset: u64) {
    let mut word_index = u64::MAX;
    let mut word = [0u8; 8];
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        if pos >> 3 != word_index {
            word_index = pos >> 3;
            let mut z = word_index.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            word = (z ^ (z >> 31)).to_le_bytes();
        }
        *b = word[(pos & 7) as usize];
    }
}

/// FNV-1a, 64 bits.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// The checksum of the whole large response.
fn big_checksum() -> u64 {
    let mut sum = Fnv::new();
    let mut chunk = vec![0u8; 256 * KIB as usize];
    let mut offset = 0;
    while offset < BIG {
        let n = (BIG - offset).min(chunk.len() as u64) as usize;
        fill_pattern(&mut chunk[..n], offset);
        sum.update(&chunk[..n]);
        offset += n as u64;
    }
    sum.0
}

#[derive(Default)]
struct StreamState {
    /// Body bytes of `/big` the backend's `write` calls accepted so far.
    written: AtomicU64,
    /// When and how the stream ended (when it did).
    outcome: Mutex<Option<(Instant, Result<(), io::ErrorKind>)>>,
    requests: AtomicUsize,
}

/// Answers `GET /big` with `BIG` bytes of `fill_pattern` (`Content-Length`), written 64 KiB at
/// a time through a 64 KiB send buffer, and anything else with `200 ok`. One thread per
/// connection; keep-alive.
struct Streamer {
    addr: SocketAddr,
    state: Arc<StreamState>,
    _server: RawBackend,
}

impl Streamer {
    fn start() -> Streamer {
        let state = Arc::new(StreamState::default());
        let shared = Arc::clone(&state);
        let server = RawBackend::start(move |stream| serve_stream(stream, &shared));
        Streamer {
            addr: server.addr,
            state,
            _server: server,
        }
    }

    fn written(&self) -> u64 {
        self.state.written.load(Ordering::SeqCst)
    }

    fn outcome(&self) -> Option<(Instant, Result<(), io::ErrorKind>)> {
        *self.state.outcome.lock().unwrap()
    }

    /// Waits until the written count stops growing (the same over `quiet`); returns it.
    fn wait_for_stall(&self, quiet: Duration, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut last = self.written();
        loop {
            thread::sleep(quiet);
            let now = self.written();
            if now == last && now > 0 {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the backend never stopped writing ({now} of {BIG} bytes written)"
            );
            last = now;
        }
    }
}

fn serve_stream(mut stream: TcpStream, state: &StreamState) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    // Long enough for any stall a test makes; still bounded.
    let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
    let _ = SockRef::from(&stream).set_send_buffer_size(64 * KIB as usize);
    let mut input = Vec::new();
    for _ in 0..1000 {
        let end = loop {
            if let Some(i) = find(&input, b"\r\n\r\n") {
                break i + 4;
            }
            let mut tmp = [0u8; 4096];
            match stream.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => input.extend_from_slice(&tmp[..n]),
            }
            if input.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&input[..end]).into_owned();
        input.drain(..end);
        if !head.starts_with("GET /big ") {
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
            continue;
        }
        state.requests.fetch_add(1, Ordering::SeqCst);
        state.written.store(0, Ordering::SeqCst);
        let result = stream_big(&mut stream, state);
        *state.outcome.lock().unwrap() = Some((Instant::now(), result));
        if result.is_err() {
            return;
        }
    }
}

fn stream_big(stream: &mut TcpStream, state: &StreamState) -> Result<(), io::ErrorKind> {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
    stream.write_all(head.as_bytes()).map_err(|e| e.kind())?;
    let mut chunk = vec![0u8; 64 * KIB as usize];
    let mut offset = 0u64;
    while offset < BIG {
        let n = (BIG - offset).min(chunk.len() as u64) as usize;
        fill_pattern(&mut chunk[..n], offset);
        let mut done = 0;
        while done < n {
            match stream.write(&chunk[done..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero),
                Ok(m) => {
                    done += m;
                    state.written.fetch_add(m as u64, Ordering::SeqCst);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.kind()),
            }
        }
        offset += n as u64;
    }
    Ok(())
}

/// A client connection whose receive buffer is small and fixed (no autotuning), so what sits in
/// the kernel between lb-mio and the client is bounded and known.
fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(64 * KIB as usize).unwrap();
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Reads a response head (and whatever body bytes came with it); returns (head, body bytes).
fn read_head_and_some(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(i) = find(&bytes, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..i + 4]).into_owned();
            return (head, bytes[i + 4..].to_vec());
        }
        let n = stream.read(&mut tmp).expect("reading a response head");
        assert!(n > 0, "closed before a response head");
        bytes.extend_from_slice(&tmp[..n]);
    }
}

/// Checks body bytes against the pattern as they arrive, and sums them.
struct BodyCheck {
    received: u64,
    sum: Fnv,
    expected: Vec<u8>,
}

impl BodyCheck {
    fn new() -> BodyCheck {
        BodyCheck {
            received: 0,
            sum: Fnv::new(),
            expected: Vec::new(),
        }
    }

    #[track_caller]
    fn add(&mut self, bytes: &[u8]) {
        self.expected.resize(bytes.len(), 0);
        fill_pattern(&mut self.expected, self.received);
        if bytes != &self.expected[..] {
            let at = bytes.iter().zip(&self.expected).position(|(a, b)| a != b);
            panic!(
                "body differs from what the backend sent at byte {}",
                self.received + at.unwrap_or(0) as u64
            );
        }
        self.sum.update(bytes);
        self.received += bytes.len() as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// Slow readers
// ---------------------------------------------------------------------------------------------

/// A client that stops reading a 64 MiB response, then reads slowly, then fast: the backend is
/// held back (it writes only what the socket buffers, lb-mio's four 16 KiB buffers and its
/// 64 KiB pipe hold),
/// lb-mio's memory does not grow with the response, and the client gets every byte.
#[test]
fn a_slow_reader_holds_the_backend_back_without_growing_memory_and_gets_every_byte() {
    let backend = Streamer::start();
    let lb = Lb::start(&ini(
        &[("big", backend.addr)],
        &format!("[timeouts]\nbackend_ms = 10000\n{NO_HEALTH}"),
    ));
    let pid = lb.pid();
    // First use of everything (buffers, idle upstream connections) before the baseline.
    assert_eq!(get(lb.addr, "/warm").status, 200);
    thread::sleep(Duration::from_millis(100));
    let rss0 = rss(pid);

    let mut client = small_window_client(lb.addr);
    let client_rcvbuf = SockRef::from(&client).recv_buffer_size().unwrap() as u64;
    send(&mut client, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");

    // 1. Not reading at all.
    let stalled_at = backend.wait_for_stall(Duration::from_millis(300), Duration::from_secs(10));
    let mut peak = rss(pid);
    for _ in 0..10 {
        thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss(pid));
    }
    let still = backend.written();
    // What can sit between the backend's write calls and the client's read calls: the
    // backend's send buffer (64 KiB asked, the kernel doubles it), lb-mio's upstream receive
    // buffer and client send buffer (autotuned up to tcp_rmem / tcp_wmem max), lb-mio's four
    // buffers and its pipe, the client's receive buffer; plus one 64 KiB write in flight.
    let lb_socket_max =
        sysctl_max("/proc/sys/net/ipv4/tcp_rmem") + sysctl_max("/proc/sys/net/ipv4/tcp_wmem");
    let bound = 2 * 64 * KIB + lb_socket_max + 4 * LB_BUFFER + PIPE + client_rcvbuf + 64 * KIB;
    eprintln!(
        "stalled reader: backend wrote {} KiB of {} KiB (bound {} KiB); lb-mio RSS {} KiB -> peak {} KiB (+{} KiB)",
        still / KIB,
        BIG / KIB,
        bound / KIB,
        rss0 / KIB,
        peak / KIB,
        peak.saturating_sub(rss0) / KIB
    );
    // Bytes spliced into the pipe no longer count against lb-mio's receive buffer: a
    // zero-window probe may find that room after the stall was seen, for one pipe at most.
    assert!(
        still - stalled_at <= PIPE,
        "the backend kept writing while the client read nothing: {stalled_at} then {still}"
    );
    assert!(
        still < BIG,
        "the backend wrote the whole response to a client that read nothing"
    );
    assert!(
        still <= bound,
        "the backend wrote {still} bytes, more than the buffers between it and the client hold ({bound})"
    );
    assert!(
        peak < rss0 + 2 * MIB,
        "lb-mio grew from {rss0} to {peak} bytes for one stalled response"
    );

    // 2. Reading slowly: 16 KiB every 20 ms for a second. The backend advances with the client.
    let (head, first) = read_head_and_some(&mut client);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {BIG}\r\n")),
        "{head}"
    );
    let mut check = BodyCheck::new();
    check.add(&first);
    let mut chunk = vec![0u8; 16 * KIB as usize];
    let slow_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < slow_until {
        let n = client.read(&mut chunk).expect("slow read");
        assert!(n > 0, "closed during the slow read");
        check.add(&chunk[..n]);
        peak = peak.max(rss(pid));
        thread::sleep(Duration::from_millis(20));
    }
    let during_slow = backend.written();
    assert!(
        during_slow <= check.received + bound,
        "the backend ran ahead of a slow reader: wrote {during_slow}, the client read {}",
        check.received
    );
    assert!(
        peak < rss0 + 2 * MIB,
        "lb-mio grew from {rss0} to {peak} bytes while relaying to a slow reader"
    );

    // 3. Reading fast: every byte arrives, intact, in bounded time.
    let started = Instant::now();
    let mut chunk = vec![0u8; 256 * KIB as usize];
    while check.received < BIG {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "64 MiB took over 30 s: {} bytes so far",
            check.received
        );
        let want = ((BIG - check.received) as usize).min(chunk.len());
        let n = client.read(&mut chunk[..want]).expect("fast read");
        assert!(n > 0, "closed after {} of {BIG} body bytes", check.received);
        check.add(&chunk[..n]);
    }
    let took = started.elapsed();
    assert_eq!(check.sum.0, big_checksum(), "checksum of the body");
    eprintln!(
        "slow reader: the rest of 64 MiB arrived in {took:?}; lb-mio RSS peak +{} KiB",
        peak.saturating_sub(rss0) / KIB
    );
    assert!(
        wait_until(Duration::from_secs(5), || backend.outcome().is_some()),
        "the backend never finished"
    );
    assert_eq!(backend.outcome().unwrap().1, Ok(()));
    // The connection is still good for another request.
    assert_eq!(get_on(&mut client, "/after").status, 200);
}

/// A client that stops reading for good is cut off when `backend_ms` passes without progress
/// (the response already began: the connection is closed, nothing is added), the backend
/// connection is closed with it, and the client's stall does not count against the backend.
#[test]
fn a_reader_that_stops_is_cut_off_after_backend_ms_without_blaming_the_backend() {
    let backend = Streamer::start();
    // max_fails = 1: a single failure counted against the backend would mark it down.
    let lb = Lb::start(&ini(
        &[("big", backend.addr)],
        "[timeouts]\nbackend_ms = 600\nidle_ms = 10000\n[health]\ninterval_ms = 3600000\nmax_fails = 1\n",
    ));
    let pid = lb.pid();
    assert_eq!(get(lb.addr, "/warm").status, 200);
    let fds0 = settled_fds(pid);

    let mut client = small_window_client(lb.addr);
    let sent_at = Instant::now();
    send(&mut client, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        wait_until(Duration::from_secs(5), || backend.outcome().is_some()),
        "lb-mio never gave up on a client that reads nothing (backend wrote {} bytes); log:\n{}",
        backend.written(),
        lb.log_text()
    );
    let (ended, result) = backend.outcome().unwrap();
    // lb-mio's clock runs from its last progress, which came after the request was sent (the
    // buffers fill within milliseconds), so the cut comes at least backend_ms after the send.
    let took = ended - sent_at;
    eprintln!(
        "stopped reader: the backend wrote {} KiB; its connection was closed {took:?} after the request ({result:?})",
        backend.written() / KIB
    );
    assert!(
        result.is_err(),
        "the backend finished a response nobody read"
    );
    assert!(
        took >= Duration::from_millis(550),
        "cut off too early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(2600),
        "cut off too late: {took:?}"
    );

    // The client gets what was already on its way, then the close: never the whole body.
    let (head, first) = read_head_and_some(&mut client);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut check = BodyCheck::new();
    check.add(&first);
    let mut chunk = vec![0u8; 256 * KIB as usize];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        match client.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => check.add(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("waiting for the close after {} bytes: {e}", check.received),
        }
    }
    assert!(check.received < BIG, "a cut-off client got the whole body");

    let left = wait_for_fds_at_most(pid, fds0, Duration::from_secs(3));
    assert!(
        left <= fds0,
        "lb-mio holds {left} descriptors, {fds0} before"
    );
    // Not the backend's fault: it is still up and serving.
    assert_eq!(lb.count_log("is down"), 0, "log:\n{}", lb.log_text());
    lb.expect_log(
        "client stopped reading the response",
        Duration::from_secs(1),
    );
    let resp = get(lb.addr, "/next");
    assert_eq!(
        resp.status,
        200,
        "{}\nlog:\n{}",
        resp.head_str(),
        lb.log_text()
    );
}

// ---------------------------------------------------------------------------------------------
// Slow uploaders
// ---------------------------------------------------------------------------------------------

/// A request body that pauses longer than `backend_ms` between bytes gets 408 (no response
/// has begun) that long after its last byte, and the backend never sees a complete request.
#[test]
fn an_upload_slower_than_backend_ms_per_byte_gets_408_and_never_reaches_the_backend_whole() {
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!("[timeouts]\nheader_ms = 5000\nbackend_ms = 400\n{NO_HEALTH}"),
    ));
    let mut stream = connect(lb.addr);
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
    let started = Instant::now();
    send(&mut stream, head);
    let body = Trickle::start(&stream, b"0123456789".to_vec(), Duration::from_millis(1000));
    let resp = read_response(&mut stream);
    let took = started.elapsed();
    body.stop();
    assert_eq!(resp.status, 408, "{}", resp.head_str());
    assert!(resp.connection_has("close"), "{}", resp.head_str());
    // The head and the first byte went out at once; the second was due after 1 s.
    assert_eq!(body.sent(), 1);
    assert!(
        took >= Duration::from_millis(300),
        "408 too early: {took:?}"
    );
    assert!(took < Duration::from_millis(1000), "408 too late: {took:?}");
    assert!(read_to_close(&mut stream).is_empty());
    // The backend got the head (lb-mio streams bodies) but never a whole request, and its
    // connection was closed.
    assert_eq!(backend.request_count(), 0, "{:?}", backend.requests());
    assert!(
        wait_until(Duration::from_secs(3), || backend.open_connections() == 0),
        "{} backend connection(s) left open",
        backend.open_connections()
    );
    assert_eq!(get(lb.addr, "/").status, 200);
}

/// The timeout is between bytes, not for the whole body: a body that keeps coming, each byte
/// within `backend_ms` of the last, is served however long it takes in all.
#[test]
fn an_upload_that_keeps_coming_is_served_however_long_it_takes() {
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        &format!("[timeouts]\nheader_ms = 5000\nbackend_ms = 400\n{NO_HEALTH}"),
    ));
    let mut stream = connect(lb.addr);
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
    let started = Instant::now();
    send(&mut stream, head);
    let _body = Trickle::start(&stream, b"0123456789".to_vec(), Duration::from_millis(120));
    let resp = read_response(&mut stream);
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.head_str());
    assert!(took > Duration::from_millis(1000), "{took:?}");
    assert_eq!(backend.last_request().body, b"0123456789");
}

// ---------------------------------------------------------------------------------------------
// Floods
// ---------------------------------------------------------------------------------------------

/// One keep-alive client making requests on its own connection, from another thread, until
/// stopped: returns (status or error, latency) per request, and the connection.
type SteadyResults = Vec<(Result<u16, String>, Duration)>;

fn steady_client(
    mut stream: TcpStream,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(SteadyResults, TcpStream)> {
    thread::spawn(move || {
        let mut results = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..100_000 {
            if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                break;
            }
            let started = Instant::now();
            let request = format!("GET /steady-{i} HTTP/1.1\r\nHost: a\r\n\r\n");
            let outcome = stream
                .write_all(request.as_bytes())
                .and_then(|_| try_read_response(&mut stream))
                .map(|resp| resp.status)
                .map_err(|e| e.to_string());
            let failed = outcome.is_err();
            results.push((outcome, started.elapsed()));
            if failed {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        (results, stream)
    })
}

#[track_caller]
fn assert_all_ok(results: &SteadyResults, min: usize) -> Duration {
    let bad: Vec<_> = results.iter().filter(|(r, _)| *r != Ok(200)).collect();
    assert!(
        bad.is_empty(),
        "steady client: {} failed: {bad:?}",
        bad.len()
    );
    assert!(
        results.len() >= min,
        "steady client made only {} requests",
        results.len()
    );
    results.iter().map(|(_, t)| *t).max().unwrap_or_default()
}

/// 2,000 connections as fast as one thread can open them (a quarter closed at once, a quarter
/// reset, a quarter sending half a head, a quarter silent) while a client on an established
/// keep-alive connection keeps asking: every one of its requests succeeds, and once the flood
/// is gone lb-mio holds what it held before and serves new connections.
#[test]
fn a_flood_of_connections_does_not_disturb_an_established_client_and_leaves_nothing_behind() {
    const FLOOD: usize = 2000;
    let _heavy = heavy();
    let limit = raise_nofile(FLOOD as u64 + 1000);
    if limit < FLOOD as u64 + 500 {
        eprintln!(
            "SKIPPED: the descriptor limit is {limit} and cannot be raised to {}",
            FLOOD + 500
        );
        return;
    }
    let backend = Backend::named("b");
    let lb = Lb::start_with_nofile(
        8192,
        &ini(
            &[("b", backend.addr)],
            &format!("[timeouts]\nheader_ms = 10000\nidle_ms = 30000\n{NO_HEALTH}"),
        ),
    );
    let pid = lb.pid();
    let mut steady = connect(lb.addr);
    assert_eq!(get_on(&mut steady, "/first").status, 200);
    let fds0 = settled_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let runner = steady_client(steady, Arc::clone(&stop));
    let overflows0 = listen_overflows();
    let started = Instant::now();
    let mut kept = Vec::new();
    let mut connect_errors = Vec::new();
    for i in 0..FLOOD {
        let mut stream = match TcpStream::connect_timeout(&lb.addr, Duration::from_secs(3)) {
            Ok(stream) => stream,
            Err(e) => {
                connect_errors.push(e.to_string());
                continue;
            }
        };
        match i % 4 {
            0 => drop(stream),
            1 => reset(stream),
            2 => {
                let _ = stream.write_all(b"GET /flood HTTP/1.1\r\nHost: a\r\nX-Half");
                kept.push(stream);
            }
            _ => kept.push(stream),
        }
    }
    let flood_took = started.elapsed();
    assert!(
        connect_errors.is_empty(),
        "{} connects failed: {:?}",
        connect_errors.len(),
        &connect_errors[..connect_errors.len().min(5)]
    );
    // lb-mio accepts the ones kept open (and lets the others go). A flood faster than lb-mio
    // drains its accept queue (1024) overflows it: the kernel then drops the handshake's last
    // ACK and the connection completes on a retransmission, a second or more later. So all
    // should arrive, but a loaded machine may leave some in flight; at least half must.
    let want = fds0 + kept.len();
    let mut seen = 0;
    let accepted = wait_until(Duration::from_secs(5), || {
        seen = open_fds(pid);
        seen >= want
    });
    let overflows = listen_overflows() - overflows0;
    if !accepted {
        eprintln!(
            "note: lb-mio holds {seen} descriptors, {want} with the whole flood; the kernel counted {overflows} accept-queue overflows"
        );
    }
    assert!(
        seen >= fds0 + kept.len() / 2,
        "lb-mio holds {seen} descriptors, {want} expected with the flood open ({overflows} accept-queue overflows)"
    );
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (results, mut steady) = runner.join().unwrap();
    let slowest = assert_all_ok(&results, 10);
    eprintln!(
        "flood: {FLOOD} connections in {flood_took:?} ({} kept open); lb-mio fds {fds0} -> {seen}; steady client: {} requests, all 200, slowest {slowest:?}",
        kept.len(),
        results.len()
    );

    drop(kept);
    let left = wait_for_fds_at_most(pid, fds0 + 2, Duration::from_secs(5));
    assert!(
        left <= fds0 + 2,
        "lb-mio holds {left} descriptors after the flood, {fds0} before"
    );
    for i in 0..20 {
        let resp = get(lb.addr, &format!("/fresh-{i}"));
        assert_eq!(
            resp.status,
            200,
            "fresh connection {i}: {}",
            resp.head_str()
        );
    }
    assert_eq!(get_on(&mut steady, "/last").status, 200);
    let targets: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    assert!(
        !targets.iter().any(|t| t == "/flood"),
        "a half head reached the backend"
    );
    assert!(
        wait_for_fds_at_most(pid, fds0 + 2, Duration::from_secs(3)) <= fds0 + 2,
        "descriptors left after the fresh connections"
    );
    let mut lb = lb;
    lb.assert_alive();
}

/// At `max_connections` a worker stops accepting: the connections it has keep being served,
/// the excess waits in the kernel's accept queue (not accepted, not answered, no CPU spent on
/// it) and is served in order as slots free up; nothing is left afterwards.
#[test]
fn a_flood_beyond_max_connections_waits_while_accepted_clients_are_served() {
    const MAX: usize = 32;
    const EXCESS: usize = 300;
    let _heavy = heavy();
    let limit = raise_nofile(EXCESS as u64 + 500);
    if limit < EXCESS as u64 + 200 {
        eprintln!("SKIPPED: the descriptor limit is {limit}");
        return;
    }
    let backend = Backend::named("b");
    let lb = Lb::start(&ini(
        &[("b", backend.addr)],
        // No idle upstream connections kept: every descriptor lb-mio holds is a client's or
        // an exchange's, so the count shows what is left.
        &format!("[lb]\nupstream_keepalive = 0\n[timeouts]\nheader_ms = 10000\nidle_ms = 30000\n[limits]\nmax_connections = {MAX}\n{NO_HEALTH}"),
    ));
    let pid = lb.pid();
    let mut steady = connect(lb.addr);
    assert_eq!(get_on(&mut steady, "/first").status, 200);
    // After the exchange's backend connection (and the start-up health probe) closed.
    let fds0 = settled_fds(pid);

    // Fill the other slots with connections that send nothing.
    let hogs: Vec<TcpStream> = (1..MAX).map(|_| connect(lb.addr)).collect();
    let full = fds0 + MAX - 1;
    let mut seen = 0;
    assert!(
        wait_until(Duration::from_secs(3), || {
            seen = open_fds(pid);
            seen >= full
        }),
        "lb-mio holds {seen} descriptors, {full} expected at the limit"
    );

    // The excess: whole requests, waiting in the accept queue.
    let mut excess = Vec::new();
    for i in 0..EXCESS {
        let mut stream = connect(lb.addr);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        send(
            &mut stream,
            format!("GET /excess-{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        );
        excess.push(stream);
    }

    // While the hogs hold their slots: the accepted client is served, the excess is not
    // accepted, lb-mio idles.
    let (cpu0, wall0) = (cpu_time(pid), Instant::now());
    let hold_until = Instant::now() + Duration::from_millis(1500);
    let (mut served, mut slowest) = (0, Duration::ZERO);
    while Instant::now() < hold_until {
        let asked = Instant::now();
        assert_eq!(get_on(&mut steady, "/steady").status, 200);
        slowest = slowest.max(asked.elapsed());
        served += 1;
        thread::sleep(Duration::from_millis(20));
    }
    let (cpu, wall) = (cpu_time(pid) - cpu0, wall0.elapsed());
    let held = open_fds(pid);
    let excess_served = backend
        .requests()
        .iter()
        .filter(|r| r.target.starts_with("/excess"))
        .count();
    eprintln!(
        "at max_connections = {MAX}: {EXCESS} waiting; steady client served {served} times (slowest {slowest:?}); lb-mio fds {held} (at the limit {full}); CPU {cpu:?} in {wall:?}"
    );
    assert!(served >= 10, "{served}");
    assert_eq!(excess_served, 0, "connections over the limit were served");
    assert!(
        held <= full + 1,
        "lb-mio holds {held} descriptors over the limit ({full})"
    );
    assert!(
        cpu.as_secs_f64() < 0.3 * wall.as_secs_f64(),
        "lb-mio used {cpu:?} of CPU in {wall:?} at the limit"
    );

    // The hogs go; the excess is served, in order, as slots free up.
    drop(hogs);
    let started = Instant::now();
    for (i, mut stream) in excess.into_iter().enumerate() {
        let resp = try_read_response(&mut stream).unwrap_or_else(|e| {
            panic!(
                "excess connection {i}: {e} after {:?}; log:\n{}",
                started.elapsed(),
                lb.log_text()
            )
        });
        assert_eq!(resp.status, 200, "excess connection {i}");
        drop(stream); // frees the slot at once (a closing connection waits for the client)
    }
    eprintln!(
        "the {EXCESS} waiting connections were served {:?} after the hold",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let mut targets: Vec<String> = backend
        .requests()
        .into_iter()
        .map(|r| r.target)
        .filter(|t| t.starts_with("/excess"))
        .collect();
    targets.sort();
    targets.dedup();
    assert_eq!(
        targets.len(),
        EXCESS,
        "each waiting request served exactly once"
    );
    assert_eq!(get_on(&mut steady, "/after").status, 200);

    let left = wait_for_fds_at_most(pid, fds0 + 2, Duration::from_secs(5));
    assert!(
        left <= fds0 + 2,
        "lb-mio holds {left} descriptors, {fds0} before"
    );
    let mut lb = lb;
    lb.assert_alive();
}

// ---------------------------------------------------------------------------------------------
// Idle keep-alive connections: memory per connection
// ---------------------------------------------------------------------------------------------

/// Reads one small `Content-Length` response with few syscalls; returns its status.
fn read_small_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<u16> {
    buf.clear();
    let mut tmp = [0u8; 2048];
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::other(format!("no Content-Length: {head}")))?;
            if buf.len() >= i + 4 + len {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| io::Error::other(format!("bad status line: {head}")))?;
                return Ok(status);
            }
        }
        let n = stream.read(&mut tmp)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// What an idle keep-alive connection costs lb-mio in memory: its RSS before and after 10,000
/// connections that each completed a request and now wait. (The kernel's socket memory is not
/// in RSS.) The connections are opened one after another, so no more than one exchange holds
/// buffers at a time and the figure is the idle cost alone, not the buffer pool's high water.
#[test]
fn ten_thousand_idle_keep_alive_connections_cost_under_4_kib_each() {
    const N: usize = 10_000;
    let _heavy = heavy();
    let want = N as u64 + 1000;
    let limit = raise_nofile(want);
    if limit < want {
        eprintln!(
            "SKIPPED: {N} idle connections need {want} descriptors in this process; the limit is {limit} and prlimit could not raise it"
        );
        return;
    }
    let backend = Backend::named("b");
    let config = ini(
        &[("b", backend.addr)],
        &format!(
            "[timeouts]\nheader_ms = 60000\nidle_ms = 300000\n[limits]\nmax_connections = 30000\n{NO_HEALTH}"
        ),
    );
    let lb = match Lb::try_start_with_nofile(limit.min(30_000), &config) {
        Ok(lb) => lb,
        Err(log) => {
            eprintln!("SKIPPED: lb-mio could not start with {limit} descriptors:\n{log}");
            return;
        }
    };
    let pid = lb.pid();
    // Warm up: the first exchange allocates the buffers (back in the pool after it), the
    // upstream connection and the rest of first use.
    let mut buf = Vec::with_capacity(2048);
    for _ in 0..2 {
        let mut stream = connect(lb.addr);
        send(&mut stream, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(read_small_response(&mut stream, &mut buf).unwrap(), 200);
    }
    thread::sleep(Duration::from_millis(300));
    let fds0 = settled_fds(pid);
    let rss0 = rss(pid);

    let started = Instant::now();
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "only {i} connections after 40 s"
        );
        let mut stream = try_connect(lb.addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connection {i}: {e}; log:\n{}", lb.log_text()));
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let status = read_small_response(&mut stream, &mut buf)
            .unwrap_or_else(|e| panic!("connection {i}: {e}; log:\n{}", lb.log_text()));
        assert_eq!(status, 200, "connection {i}");
        conns.push(stream);
    }
    let opened = started.elapsed();
    thread::sleep(Duration::from_millis(300));
    let (rss1, fds1) = (rss(pid), open_fds(pid));
    let per_conn = rss1.saturating_sub(rss0) as f64 / N as f64;
    eprintln!(
        "{N} idle keep-alive connections (opened in {opened:?}): lb-mio RSS {} KiB -> {} KiB, {per_conn:.0} bytes per connection; fds {fds0} -> {fds1}; size_of::<Conn>() = {} bytes",
        rss0 / KIB,
        rss1 / KIB,
        std::mem::size_of::<lb_mio::conn::Conn>()
    );
    assert!(
        fds1 >= fds0 + N,
        "lb-mio does not hold the {N} connections: {fds0} -> {fds1}"
    );
    assert!(
        per_conn < 4096.0,
        "{per_conn:.0} bytes of RSS per idle connection"
    );
    // They are all alive, and each still works: a few are asked again.
    for i in (0..N).step_by(N / 10) {
        conns[i]
            .write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        assert_eq!(
            read_small_response(&mut conns[i], &mut buf).unwrap(),
            200,
            "connection {i}"
        );
    }

    for stream in &conns {
        let _ = stream.shutdown(Shutdown::Both);
    }
    drop(conns);
    let left = wait_for_fds_at_most(pid, fds0 + 2, Duration::from_secs(10));
    assert!(
        left <= fds0 + 2,
        "lb-mio holds {left} descriptors after the close, {fds0} before"
    );
    let mut lb = lb;
    lb.assert_alive();
}
