//! A small closed-loop HTTP/1.1 load generator for benches/failover.sh:
//!
//!     loadgen HOST:PORT --conns N --secs S
//!
//! N keep-alive connections, a thread each, send `GET /` one request at a time for S seconds.
//! stdout gets `second,ok,errors` and then one CSV line per second, printed as each second ends
//! (second 0 covers [0 s, 1 s) after the start). An error is a non-2xx status, a failed
//! connect, read or write, a connection closed before the whole response, or no response byte
//! for 2 s; it counts in the second it is noticed, and the connection is then replaced (after
//! 50 ms when the connect itself failed, so a dead address is not hammered). stderr gets one
//! line per second and kind of error, e.g. `loadgen: second 6: 3 x status 502`.
//! Requests in flight when S seconds are up are not counted.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

struct Stats {
    start: Instant,
    ok: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
    /// (second, what went wrong) -> how many times.
    kinds: Mutex<BTreeMap<(usize, String), u64>>,
}

impl Stats {
    fn second(&self) -> usize {
        self.start.elapsed().as_secs() as usize
    }

    fn ok(&self) {
        if let Some(n) = self.ok.get(self.second()) {
            n.fetch_add(1, Relaxed);
        }
    }

    fn error(&self, what: String) {
        let s = self.second();
        if let Some(n) = self.errors.get(s) {
            n.fetch_add(1, Relaxed);
            *self.kinds.lock().unwrap().entry((s, what)).or_default() += 1;
        }
    }
}

fn main() {
    let Some((addr, conns, secs)) = parse_args() else {
        eprintln!("usage: loadgen HOST:PORT --conns N --secs S");
        std::process::exit(2);
    };
    let stats = Arc::new(Stats {
        start: Instant::now(),
        ok: (0..secs).map(|_| AtomicU64::new(0)).collect(),
        errors: (0..secs).map(|_| AtomicU64::new(0)).collect(),
        kinds: Mutex::default(),
    });
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: loadgen\r\n\r\n");
    let deadline = stats.start + Duration::from_secs(secs as u64);
    for _ in 0..conns {
        let (stats, request) = (Arc::clone(&stats), request.clone());
        thread::spawn(move || client(addr, request.as_bytes(), &stats, deadline));
    }
    println!("second,ok,errors");
    for s in 0..secs {
        // A little after the second ends, so requests finishing right at its end are in.
        let due = stats.start + Duration::from_millis(s as u64 * 1000 + 1050);
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let (ok, errors) = (stats.ok[s].load(Relaxed), stats.errors[s].load(Relaxed));
        println!("{s},{ok},{errors}");
        let kinds = stats.kinds.lock().unwrap();
        for ((_, what), n) in kinds.range((s, String::new())..(s + 1, String::new())) {
            eprintln!("loadgen: second {s}: {n} x {what}");
        }
    }
    // Returning ends the process and the client threads with it.
}

fn parse_args() -> Option<(SocketAddr, usize, usize)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first()?.to_socket_addrs().ok()?.next()?;
    let (mut conns, mut secs) = (None, None);
    for pair in args[1..].chunks(2) {
        let value = pair.get(1)?.parse().ok().filter(|&n| n > 0);
        match pair[0].as_str() {
            "--conns" => conns = value,
            "--secs" => secs = value,
            _ => return None,
        }
    }
    Some((addr, conns?, secs?))
}

/// One connection's loop: request, response, repeat; a new connection after any error.
fn client(addr: SocketAddr, request: &[u8], stats: &Stats, deadline: Instant) {
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    while Instant::now() < deadline {
        let stream = match conn {
            Some(ref mut stream) => stream,
            None => match connect(addr) {
                Ok(stream) => conn.insert(stream),
                Err(e) => {
                    stats.error(format!("connect: {e}"));
                    thread::sleep(CONNECT_BACKOFF);
                    continue;
                }
            },
        };
        match exchange(stream, request, &mut buf) {
            Ok((status, keep_alive)) => {
                if (200..300).contains(&status) {
                    stats.ok();
                } else {
                    stats.error(format!("status {status}"));
                }
                if !keep_alive {
                    conn = None;
                }
            }
            Err(e) => {
                stats.error(e);
                conn = None;
            }
        }
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// Sends the request and reads one response: its status, and whether the connection can carry
/// the next request (a `Content-Length` body and no `Connection: close`; any other response is
/// taken as ending at close, so the connection is replaced instead of read to its end).
fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(u16, bool), String> {
    stream
        .write_all(request)
        .map_err(|e| format!("write: {}", describe(&e)))?;
    buf.clear();
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf, "head")?;
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
    let status = head
        .strip_prefix("http/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or("bad status line")?;
    let header = |name: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) else {
        return Ok((status, false));
    };
    while buf.len() < head_len + length {
        read_more(stream, buf, "body")?;
    }
    Ok((status, header("connection") != Some("close")))
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, part: &str) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) if buf.is_empty() => Err("closed before the response".into()),
        Ok(0) => Err(format!("closed inside the response {part}")),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read {part}: {}", describe(&e))),
    }
}

/// Read timeouts show up as WouldBlock on Linux; name them plainly.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout (2 s)".into(),
        _ => e.to_string(),
    }
}
