//! Chaos under load: lb-mio (the real binary, two workers, health checks every 100 ms, retries
//! on) in front of four mock backends that a chaos thread kills, hangs, resumes and restarts at
//! random (seeded, the seed printed; `CHAOS_SEED=N` replays a schedule) while keep-alive clients
//! send GETs and POSTs, each carrying a unique id. Then it checks exactly what the README
//! promises (see `chaos_under_load_keeps_the_promise`) and that lb-mio's descriptors, memory and
//! threads are back where they were.
//!
//! The mock backends stand in for processes:
//! - kill (SIGKILL): the port refuses connections and every open connection is reset (RST);
//! - hang (SIGSTOP): connections are still accepted and request heads still read (so the test
//!   knows which requests a hung backend sat on), but no body is read and nothing is answered,
//!   health probes included;
//! - resume (SIGCONT): whatever it sat on is answered, late;
//! - restart: a fresh listener on the same port.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use support::*;

const BACKENDS: usize = 4;
const GET_CLIENTS: usize = 4;
const POST_CLIENTS: usize = 2;
/// How long the clients load lb-mio while the chaos runs.
const LOAD: Duration = Duration::from_secs(12);
/// Load without chaos first, so buffers and pools reach their working size before the baseline.
const WARMUP: Duration = Duration::from_secs(2);
/// Every client thread stops after this many requests, whatever the clock says.
const MAX_REQUESTS_PER_CLIENT: usize = 50_000;
/// lb-mio's `backend_ms`: a request sent to a hung backend gets 504 after this.
const BACKEND_MS: u64 = 1500;
/// A client gives up on a response after this: far above `backend_ms` plus a retry or two, so
/// only a hang in lb-mio reaches it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(6);
/// Mock backends close keep-alive connections idle this long (as real servers do), so after
/// the load lb-mio's idle upstream connections close and its descriptor count can be compared.
const BACKEND_IDLE: Duration = Duration::from_millis(700);
/// How often a mock connection thread looks at its backend's kill and hang switches.
const POLL: Duration = Duration::from_millis(20);
/// A backend up at least this long is up in lb-mio's eyes too (rise 2 × 100 ms, with room).
const SETTLED: Duration = Duration::from_millis(1000);
/// POST body: the id, then padding.
const POST_PAD: usize = 300;

const CONFIG: &str = "\
[lb]
workers = 2
strategy = round_robin
; backends - 1: a GET refused or reset by three dead backends still reaches the live one
retries = 3
[timeouts]
backend_ms = 1500
connect_ms = 1000
[health]
path = /healthcheck
interval_ms = 100
timeout_ms = 200
rise = 2
fall = 2
[log]
level = info
";

// ---------------------------------------------------------------------------------------------
// Mock backends that can be killed, hung, resumed and restarted on the same port
// ---------------------------------------------------------------------------------------------

/// One request a backend received (its head, at least).
#[derive(Debug, Clone, Copy)]
struct Arrival {
    id: u64,
    post: bool,
    /// The backend was hung while it held this request (it may have been answered after).
    stalled: bool,
    answered: bool,
    /// The backend was killed while it held this request.
    killed: bool,
}

/// What outlives a backend's restarts: its name, its hang switch and everything it received.
struct MockShared {
    name: String,
    hung: AtomicBool,
    arrivals: Mutex<Vec<Arrival>>,
}

impl MockShared {
    fn mark(&self, index: usize, f: impl FnOnce(&mut Arrival)) {
        f(&mut self.arrivals.lock().unwrap()[index]);
    }
}

/// One run of a backend, from start (or restart) to kill.
struct Life {
    dead: AtomicBool,
    /// Connection threads still running.
    live: AtomicUsize,
}

struct Mock {
    addr: SocketAddr,
    shared: Arc<MockShared>,
    life: Option<(Arc<Life>, JoinHandle<()>)>,
}

impl Mock {
    fn start(name: &str) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock backend");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(MockShared {
            name: name.to_string(),
            hung: AtomicBool::new(false),
            arrivals: Mutex::new(Vec::new()),
        });
        let mut mock = Mock {
            addr,
            shared,
            life: None,
        };
        mock.run(listener);
        mock
    }

    fn run(&mut self, listener: TcpListener) {
        let life = Arc::new(Life {
            dead: AtomicBool::new(false),
            live: AtomicUsize::new(0),
        });
        let (shared, l) = (Arc::clone(&self.shared), Arc::clone(&life));
        let acceptor = thread::Builder::new()
            .name(format!("mock-{}", self.shared.name))
            .spawn(move || accept_loop(listener, shared, l))
            .expect("spawn mock acceptor");
        self.life = Some((life, acceptor));
    }

    /// Like SIGKILL: the listener closes (connects are refused, the accept queue is reset) and
    /// every open connection is reset. Returns once they all are.
    fn kill(&mut self) {
        let Some((life, acceptor)) = self.life.take() else {
            return;
        };
        life.dead.store(true, Ordering::SeqCst);
        // Wake the blocking accept; the acceptor resets this connection and returns, and the
        // listener closes with it.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        acceptor.join().expect("mock acceptor panicked");
        assert!(
            wait_until(Duration::from_secs(3), || life.live.load(Ordering::SeqCst)
                == 0),
            "{}: connection threads still running after the kill",
            self.shared.name
        );
        self.shared.hung.store(false, Ordering::SeqCst);
    }

    /// A fresh process on the same port.
    fn restart(&mut self) {
        assert!(self.life.is_none(), "restart of a running backend");
        let mut listener = None;
        for _ in 0..200 {
            match TcpListener::bind(self.addr) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
        let listener = listener.unwrap_or_else(|| panic!("cannot bind {} again", self.addr));
        self.run(listener);
    }

    /// Like SIGSTOP / SIGCONT.
    fn set_hung(&self, hung: bool) {
        self.shared.hung.store(hung, Ordering::SeqCst);
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().unwrap().clone()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.set_hung(false);
        if let Some((life, acceptor)) = self.life.take() {
            life.dead.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<MockShared>, life: Arc<Life>) {
    for _ in 0..10_000_000u64 {
        let accepted = listener.accept();
        if life.dead.load(Ordering::SeqCst) {
            if let Ok((stream, _)) = accepted {
                reset(stream);
            }
            return;
        }
        let Ok((stream, _)) = accepted else {
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        life.live.fetch_add(1, Ordering::SeqCst);
        let (shared, life) = (Arc::clone(&shared), Arc::clone(&life));
        let spawned = thread::Builder::new()
            .name(format!("mock-{}-conn", shared.name))
            .spawn(move || {
                match serve(&stream, &shared, &life) {
                    Served::Reset => reset(stream),
                    Served::Close => drop(stream),
                }
                life.live.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            panic!("cannot spawn a mock connection thread");
        }
    }
}

enum Served {
    /// Killed: reset the connection.
    Reset,
    /// Closed normally (idle, peer gone, bad input).
    Close,
}

/// Waits while the backend is hung (calling `on_stall` each round); false if it was killed
/// meanwhile. Bounded: the chaos thread always resumes or kills within seconds.
fn wait_unhung(shared: &MockShared, life: &Life, mut on_stall: impl FnMut()) -> bool {
    for _ in 0..6_000 {
        if life.dead.load(Ordering::SeqCst) {
            return false;
        }
        if !shared.hung.load(Ordering::SeqCst) {
            return true;
        }
        on_stall();
        thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Reads what is there into `buf`: Some(true) if bytes came, Some(false) on a poll timeout,
/// None when the peer closed or broke the connection.
fn read_some(mut stream: &TcpStream, buf: &mut Vec<u8>) -> Option<bool> {
    let mut tmp = [0u8; 8192];
    match stream.read(&mut tmp) {
        Ok(0) => None,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Some(true)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Some(false)
        }
        Err(_) => None,
    }
}

/// Serves keep-alive requests: `GET /g/<id>` answers `<name> GET <id>`, `POST /p/<id>` (body:
/// `id=<id>;` then padding) answers `<name> POST <id>`; `GET /healthcheck` answers 200 and
/// closes. Every other request is recorded as it arrives.
fn serve(stream: &TcpStream, shared: &MockShared, life: &Life) -> Served {
    let _ = stream.set_read_timeout(Some(POLL));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut idle_since = Instant::now();
    for _ in 0..1_000_000 {
        // The head; read even while hung (the kernel would buffer it for a stopped process).
        let (request, head_len) = loop {
            if life.dead.load(Ordering::SeqCst) {
                return Served::Reset;
            }
            if let Some(parsed) = parse_request_head(&buf) {
                break parsed;
            }
            if buf.len() > 16 * 1024 {
                return Served::Close;
            }
            if buf.is_empty()
                && idle_since.elapsed() > BACKEND_IDLE
                && !shared.hung.load(Ordering::SeqCst)
            {
                return Served::Close;
            }
            if read_some(stream, &mut buf).is_none() {
                return Served::Close;
            }
        };
        buf.drain(..head_len);
        let (method, target) = (request.method.as_str(), request.target.as_str());
        let length: usize = request
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if target == "/healthcheck" {
            if !wait_unhung(shared, life, || {}) {
                return Served::Reset;
            }
            reply_and_close(stream, 200);
            return Served::Close;
        }
        let post = method == "POST";
        let id = target
            .strip_prefix(if post { "/p/" } else { "/g/" })
            .and_then(|s| s.parse::<u64>().ok());
        let Some(id) = id else {
            reply_and_close(stream, 400);
            return Served::Close;
        };
        let index = {
            let mut arrivals = shared.arrivals.lock().unwrap();
            arrivals.push(Arrival {
                id,
                post,
                stalled: false,
                answered: false,
                killed: false,
            });
            arrivals.len() - 1
        };
        let stall = || shared.mark(index, |a| a.stalled = true);
        let killed = || {
            shared.mark(index, |a| a.killed = true);
            Served::Reset
        };
        // The body: not read while hung (a stopped process stops mid-request).
        while buf.len() < length {
            if !wait_unhung(shared, life, stall) {
                return killed();
            }
            if read_some(stream, &mut buf).is_none() {
                return Served::Close;
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        if post && !body.starts_with(format!("id={id};").as_bytes()) {
            reply_and_close(stream, 400);
            return Served::Close;
        }
        // Some requests take a moment, so that kills and hangs land on requests in flight.
        if id % 5 == 0 {
            thread::sleep(Duration::from_millis(2));
        }
        if !wait_unhung(shared, life, stall) {
            return killed();
        }
        let text = format!("{} {method} {id}", shared.name);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if (&*stream).write_all(response.as_bytes()).is_err() {
            return Served::Close;
        }
        shared.mark(index, |a| a.answered = true);
        idle_since = Instant::now();
    }
    Served::Close
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// What one request came to.
#[derive(Debug, Clone)]
enum Outcome {
    /// A response: status, body.
    Answered(u16, String),
    /// No response: what went wrong.
    Failed(String),
}

#[derive(Debug, Clone)]
struct Sent {
    id: u64,
    post: bool,
    outcome: Outcome,
    took: Duration,
}

/// A client connection: connected within 2 s, then every read and write within
/// `CLIENT_TIMEOUT`.
fn open(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = try_connect(addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    Ok(stream)
}

/// Keep-alive requests (GETs, or POSTs when `post`) with fresh ids until `end`, reconnecting
/// after a `Connection: close` or an error.
fn client(addr: SocketAddr, post: bool, ids: &AtomicU64, end: Instant) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut conn: Option<TcpStream> = None;
    for _ in 0..MAX_REQUESTS_PER_CLIENT {
        if Instant::now() >= end {
            break;
        }
        let id = ids.fetch_add(1, Ordering::SeqCst);
        let request = if post {
            let body = format!("id={id};{}", "x".repeat(POST_PAD));
            format!(
                "POST /p/{id} HTTP/1.1\r\nHost: lb.test\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            format!("GET /g/{id} HTTP/1.1\r\nHost: lb.test\r\n\r\n")
        };
        let started = Instant::now();
        let mut stream = match conn.take() {
            Some(stream) => stream,
            None => match open(addr) {
                Ok(stream) => stream,
                Err(e) => {
                    sent.push(Sent {
                        id,
                        post,
                        outcome: Outcome::Failed(format!("connect: {e}")),
                        took: started.elapsed(),
                    });
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let result = stream
            .write_all(request.as_bytes())
            .and_then(|()| try_read_response(&mut stream));
        let outcome = match result {
            Ok(resp) => {
                if !resp.connection_has("close") {
                    conn = Some(stream);
                }
                Outcome::Answered(resp.status, resp.body_str())
            }
            Err(e) => Outcome::Failed(e.to_string()),
        };
        sent.push(Sent {
            id,
            post,
            outcome,
            took: started.elapsed(),
        });
    }
    sent
}

/// Runs the GET and POST clients until `end`; every request they sent.
fn load(addr: SocketAddr, ids: &Arc<AtomicU64>, end: Instant) -> Vec<Sent> {
    let threads: Vec<JoinHandle<Vec<Sent>>> = (0..GET_CLIENTS + POST_CLIENTS)
        .map(|i| {
            let ids = Arc::clone(ids);
            thread::spawn(move || client(addr, i >= GET_CLIENTS, &ids, end))
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread panicked"))
        .collect()
}

/// A right answer: 200 from one of the backends, naming this request.
fn answered_right(sent: &Sent, names: &[String]) -> bool {
    let method = if sent.post { "POST" } else { "GET" };
    match &sent.outcome {
        Outcome::Answered(200, body) => body
            .strip_suffix(&format!(" {method} {}", sent.id))
            .is_some_and(|name| names.iter().any(|n| n == name)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The chaos
// ---------------------------------------------------------------------------------------------

/// splitmix64: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Hung,
    Down,
}

/// What the chaos did.
#[derive(Default)]
struct ChaosLog {
    lines: Vec<String>,
    kills: usize,
    hangs: usize,
    resumes: usize,
    restarts: usize,
}

/// Kills, hangs, resumes and restarts backends at random until `end`, one action every
/// 150–600 ms, never leaving fewer than one backend that is up and settled (up long enough for
/// lb-mio to see it up); then brings every backend back.
fn chaos(mocks: &mut [Mock], seed: u64, start: Instant, end: Instant) -> ChaosLog {
    let mut rng = Rng(seed);
    let mut log = ChaosLog::default();
    let mut states: Vec<(State, Instant)> = vec![(State::Up, start - SETTLED); mocks.len()];
    let stamp = |log: &mut ChaosLog, what: String| {
        log.lines
            .push(format!("{:>6.3}s {what}", start.elapsed().as_secs_f64()));
    };
    for _ in 0..1000 {
        let pause = Duration::from_millis(150 + rng.below(450));
        if Instant::now() + pause >= end {
            break;
        }
        thread::sleep(pause);
        let i = rng.below(mocks.len() as u64) as usize;
        let name = mocks[i].shared.name.clone();
        let now = Instant::now();
        let others_settled = (0..mocks.len())
            .any(|j| j != i && states[j].0 == State::Up && now - states[j].1 >= SETTLED);
        let roll = rng.below(100);
        match states[i].0 {
            State::Up if !others_settled => {}
            State::Up if roll < 35 => {
                mocks[i].kill();
                states[i] = (State::Down, now);
                log.kills += 1;
                stamp(&mut log, format!("kill {name}"));
            }
            State::Up if roll < 75 => {
                mocks[i].set_hung(true);
                states[i] = (State::Hung, now);
                log.hangs += 1;
                stamp(&mut log, format!("hang {name}"));
            }
            State::Up => {
                mocks[i].kill();
                mocks[i].restart();
                states[i] = (State::Up, Instant::now());
                log.kills += 1;
                log.restarts += 1;
                stamp(&mut log, format!("kill and restart {name} at once"));
            }
            State::Hung if roll < 60 => {
                mocks[i].set_hung(false);
                states[i] = (State::Up, now);
                log.resumes += 1;
                stamp(&mut log, format!("resume {name}"));
            }
            State::Hung => {
                mocks[i].kill();
                states[i] = (State::Down, now);
                log.kills += 1;
                stamp(&mut log, format!("kill {name} (hung)"));
            }
            State::Down => {
                mocks[i].restart();
                states[i] = (State::Up, Instant::now());
                log.restarts += 1;
                stamp(&mut log, format!("restart {name}"));
            }
        }
    }
    for (i, mock) in mocks.iter_mut().enumerate() {
        match states[i].0 {
            State::Up => {}
            State::Hung => mock.set_hung(false),
            State::Down => mock.restart(),
        }
    }
    stamp(&mut log, "every backend back".to_string());
    log
}

// ---------------------------------------------------------------------------------------------
// lb-mio's resources, from /proc
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    rss_kib: u64,
    threads: usize,
}

fn usage(pid: u32) -> Usage {
    Usage {
        fds: open_fds(pid),
        rss_kib: rss(pid) / 1024,
        threads: thread_count(pid),
    }
}

/// lb-mio at rest: after the backends closed their idle connections, the fewest descriptors
/// seen over a second (a health probe holds one for a moment), with the RSS and threads then.
fn at_rest(pid: u32) -> Usage {
    thread::sleep(BACKEND_IDLE + Duration::from_millis(800));
    let mut least: Option<Usage> = None;
    for _ in 0..10 {
        let now = usage(pid);
        if least.is_none_or(|l| now.fds < l.fds) {
            least = Some(now);
        }
        thread::sleep(Duration::from_millis(100));
    }
    least.expect("sampled")
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// The promise (README, "Health, failover and retries"), asserted exactly:
///
/// - GET (idempotent): every one gets 200 with its own answer, except one that reached a
///   backend which then hung: lb-mio does not retry a request that may have been processed
///   after it timed out, so that one gets 504 after `backend_ms`. Such 504s are bounded: the
///   health checks (every 100 ms, fall 2) mark a hung backend down well within `backend_ms`,
///   so a hang costs each client at most one. A GET that a killed backend refused or reset
///   is retried on another backend (`retries = 3`: even three dead backends leave it one try
///   at the live one): never a 502, never a 503 (one backend is always up).
/// - POST: never received twice by the backends, over all of them and all their restarts. A
///   POST answered 200 was received exactly once; otherwise it got 502 (its backend was killed
///   while it held it, or it went out on a connection that broke before an answer) or 504 (its
///   backend hung), and a 504'd POST was held by a hung backend.
/// - No client ever waits past `CLIENT_TIMEOUT` or sees a connection dropped without an answer.
/// - Afterwards lb-mio has as many threads as before (no worker or health thread gone), its open
///   descriptors and RSS are back near the post-warmup baseline, and it serves every backend.
#[test]
fn chaos_under_load_keeps_the_promise() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("chaos seed: {seed} (CHAOS_SEED={seed} replays the schedule)");

    let mut mocks: Vec<Mock> = (1..=BACKENDS)
        .map(|i| Mock::start(&format!("s{i}")))
        .collect();
    let names: Vec<String> = mocks.iter().map(|m| m.shared.name.clone()).collect();
    let backends: Vec<(&str, SocketAddr)> = mocks
        .iter()
        .zip(&names)
        .map(|(m, n)| (n.as_str(), m.addr))
        .collect();
    let mut lb = Lb::start(&ini(&backends, CONFIG));
    let pid = lb.pid();
    let ids = Arc::new(AtomicU64::new(1));

    // Every backend serving through lb-mio.
    let mut seen = HashSet::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            if let Ok((200, body)) = try_get_once(lb.addr, ids.fetch_add(1, Ordering::SeqCst)) {
                seen.insert(body.split(' ').next().unwrap_or("").to_string());
            }
            seen.len() == BACKENDS
        }),
        "not every backend answered through lb-mio: {seen:?}\n{}",
        lb.log_text()
    );

    // Warm-up at full load, no chaos: the baseline is lb-mio after it.
    let warm = load(lb.addr, &ids, Instant::now() + WARMUP);
    let warm_bad: Vec<&Sent> = warm.iter().filter(|s| !answered_right(s, &names)).collect();
    assert!(
        warm_bad.is_empty(),
        "errors without any chaos: {:?}",
        &warm_bad[..warm_bad.len().min(10)]
    );
    let before = at_rest(pid);

    // The load, and the chaos beside it.
    let start = Instant::now();
    let end = start + LOAD;
    let loader = {
        let ids = Arc::clone(&ids);
        let addr = lb.addr;
        thread::spawn(move || load(addr, &ids, end))
    };
    let chaos_log = chaos(&mut mocks, seed, start, end);
    let sent = loader.join().expect("load thread panicked");
    let load_took = start.elapsed();
    lb.assert_alive();

    // What the backends received, by id.
    let mut arrivals: Vec<(String, Arrival)> = Vec::new();
    for mock in &mocks {
        arrivals.extend(
            mock.arrivals()
                .into_iter()
                .map(|a| (mock.shared.name.clone(), a)),
        );
    }
    let stalled: HashSet<(bool, u64)> = arrivals
        .iter()
        .filter(|(_, a)| a.stalled)
        .map(|(_, a)| (a.post, a.id))
        .collect();
    let mut posts_at: HashMap<u64, Vec<String>> = HashMap::new();
    for (name, a) in arrivals.iter().filter(|(_, a)| a.post) {
        posts_at.entry(a.id).or_default().push(name.clone());
    }

    // Tally.
    let mut tally: HashMap<String, usize> = HashMap::new();
    let mut broken: Vec<String> = Vec::new();
    let mut gateway_timeouts = 0;
    for s in &sent {
        let kind = if s.post { "POST" } else { "GET" };
        let what = match &s.outcome {
            _ if answered_right(s, &names) => "200".to_string(),
            Outcome::Answered(status, _) => status.to_string(),
            Outcome::Failed(e) => format!("no answer: {e}"),
        };
        *tally.entry(format!("{kind} {what}")).or_default() += 1;
        let allowed = match (&s.outcome, s.post) {
            _ if answered_right(s, &names) => true,
            (Outcome::Answered(504, _), post) => stalled.contains(&(post, s.id)),
            (Outcome::Answered(502, _), true) => true,
            _ => false,
        };
        if matches!(s.outcome, Outcome::Answered(504, _)) {
            gateway_timeouts += 1;
        }
        if !allowed {
            broken.push(format!(
                "{kind} {} after {:?}: {:?} (received by: {:?})",
                s.id,
                s.took,
                s.outcome,
                arrivals
                    .iter()
                    .filter(|(_, a)| a.id == s.id && a.post == s.post)
                    .map(|(n, a)| format!("{n} {a:?}"))
                    .collect::<Vec<_>>()
            ));
        }
    }
    let mut tally: Vec<_> = tally.into_iter().collect();
    tally.sort();
    let post_502_unseen = sent
        .iter()
        .filter(|s| s.post && matches!(s.outcome, Outcome::Answered(502, _)))
        .filter(|s| !posts_at.contains_key(&s.id))
        .count();
    // Why lb-mio answered instead of retrying, as its log says.
    let mut not_retried: HashMap<String, usize> = HashMap::new();
    for line in lb.log() {
        if let Some(why) = line.split("not retried: ").nth(1) {
            *not_retried.entry(why.to_string()).or_default() += 1;
        }
    }
    let gets = sent.iter().filter(|s| !s.post).count();
    let posts = sent.len() - gets;
    let slowest = sent.iter().map(|s| s.took).max().unwrap_or_default();
    let report = format!(
        "seed {seed}; {gets} GETs and {posts} POSTs in {load_took:.1?} (slowest {slowest:.0?}); \
         outcomes {tally:?}; POST 502s no backend received: {post_502_unseen}; \
         not retried because (lb-mio's log): {not_retried:?}\n\
         chaos: {} kills, {} hangs, {} resumes, {} restarts:\n  {}\n\
         lb-mio: {} log lines; its state changes (the first 60):\n  {}",
        chaos_log.kills,
        chaos_log.hangs,
        chaos_log.resumes,
        chaos_log.restarts,
        chaos_log.lines.join("\n  "),
        lb.log().len(),
        lb.log()
            .into_iter()
            .filter(|l| l.contains(" is down") || l.contains(" is up"))
            .take(60)
            .collect::<Vec<_>>()
            .join("\n  "),
    );
    eprintln!("{report}");

    assert!(
        gets >= 500 && posts >= 100,
        "too little load to mean anything\n{report}"
    );
    assert!(
        broken.is_empty(),
        "{} requests broke the promise; the first 20:\n  {}\n{report}",
        broken.len(),
        broken[..broken.len().min(20)].join("\n  ")
    );
    let duplicated: Vec<(&u64, &Vec<String>)> =
        posts_at.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(
        duplicated.is_empty(),
        "POSTs received more than once: {:?}\n{report}",
        &duplicated[..duplicated.len().min(20)]
    );
    for s in sent.iter().filter(|s| s.post && answered_right(s, &names)) {
        assert_eq!(
            posts_at.get(&s.id).map(Vec::len),
            Some(1),
            "POST {} answered 200 but not received exactly once\n{report}",
            s.id
        );
    }
    let clients = GET_CLIENTS + POST_CLIENTS;
    assert!(
        gateway_timeouts <= chaos_log.hangs * clients,
        "{gateway_timeouts} 504s for {} hangs and {clients} clients: a hung backend was not \
         marked down within backend_ms ({BACKEND_MS} ms)\n{report}",
        chaos_log.hangs
    );

    // lb-mio still serves every backend (once the restarted ones pass their health checks).
    let mut seen = HashSet::new();
    let mut after_errors = Vec::new();
    let serving = wait_until(Duration::from_secs(5), || {
        match try_get_once(lb.addr, ids.fetch_add(1, Ordering::SeqCst)) {
            Ok((200, body)) => {
                seen.insert(body.split(' ').next().unwrap_or("").to_string());
            }
            other => after_errors.push(format!("{other:?}")),
        }
        seen.len() == BACKENDS
    });
    assert!(
        serving && after_errors.is_empty(),
        "after the chaos: backends answering {seen:?}, errors {after_errors:?}\n{report}"
    );

    // Resources back where they were.
    let after = at_rest(pid);
    eprintln!(
        "lb-mio at rest: before {before:?}, after {after:?} (RSS {:+} KiB, fds {:+})",
        after.rss_kib as i64 - before.rss_kib as i64,
        after.fds as i64 - before.fds as i64
    );
    lb.assert_alive();
    assert_eq!(
        after.threads, before.threads,
        "lb-mio's thread count changed: a worker or the health thread died\n{report}"
    );
    assert!(
        after.fds <= before.fds + 2,
        "lb-mio holds {} descriptors at rest, {} before the chaos: a leak\n{}",
        after.fds,
        before.fds,
        list_fds(pid)
    );
    assert!(
        after.rss_kib <= before.rss_kib + 2048,
        "lb-mio's RSS grew from {} KiB to {} KiB at rest\n{report}",
        before.rss_kib,
        after.rss_kib
    );
}

/// One `GET /g/<id>` on its own connection: (status, body) or what went wrong.
fn try_get_once(addr: SocketAddr, id: u64) -> Result<(u16, String), String> {
    let resp = try_get(addr, &format!("/g/{id}"), CLIENT_TIMEOUT)?;
    Ok((resp.status, resp.body_str()))
}

/// Where each of lb-mio's descriptors points, for a leak report.
fn list_fds(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return String::new();
    };
    let mut lines: Vec<String> = dir
        .flatten()
        .map(|e| {
            let target =
                std::fs::read_link(e.path()).map_or("?".into(), |t| t.display().to_string());
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    lines.sort();
    lines.join("\n")
}
