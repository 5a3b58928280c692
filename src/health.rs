//! Health checks: a prober thread per backend sends `GET <path>` on its own connections and
//! flips the backend's atomic state after `rise` good or `fall` bad probes in a row. Workers only
//! read the state (and mark a backend down when live traffic fails on it), so they never wait
//! for a probe.

use crate::backend::{Backend, ProbeReport, State};
use crate::config::Health;
use crate::proxy_protocol::{self, Version};
use crate::shared::Shared;
use crate::tls;
use log::{info, warn};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the health thread looks for new backends and for drained ones to remove.
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);

pub fn spawn(shared: Arc<Shared>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("health".into())
        .spawn(move || supervise(&shared))
}

/// Gives every backend a prober thread of its own, so a slow or black-holed backend delays no
/// other backend's checks, and removes deleted backends once their last request finished.
fn supervise(shared: &Arc<Shared>) {
    // The backend each slot had at the last look: a slot holding another one (new, or a
    // removed backend's slot taken by a new one) gets a prober. Holding the `Arc`s keeps an
    // old record's address from being reused by a new one, so pointers compare safely.
    let mut probed: Vec<Arc<Backend>> = Vec::new();
    loop {
        let snap = shared.load();
        let new = snap.backends.iter().enumerate().filter(|(id, backend)| {
            !probed
                .get(*id)
                .is_some_and(|known| Arc::ptr_eq(known, backend))
        });
        for (_, backend) in new {
            let (shared, backend) = (Arc::clone(shared), Arc::clone(backend));
            let name = format!("probe-{}", backend.name);
            if let Err(e) = thread::Builder::new()
                .name(name)
                .spawn(move || probe_loop(&shared, &backend))
            {
                warn!("cannot start a health prober: {e}");
            }
        }
        probed = snap.backends.to_vec();
        for backend in snap.backends.iter() {
            if backend.retire() {
                info!("backend {} removed from the pool: drained", backend.name);
            }
        }
        thread::sleep(SUPERVISE_EVERY);
    }
}

/// Probes one backend every interval (±10% jitter, so balancers started alike do not probe in
/// lockstep) while it is up or down, with the health settings of the moment; ends when the
/// backend leaves the set.
fn probe_loop(shared: &Shared, backend: &Backend) {
    let mut tracker = Tracker::default();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = SmallRng::seed_from_u64(seed ^ backend.addr.port() as u64);
    loop {
        let started = Instant::now();
        let snap = shared.load();
        let (conf, proxy) = (snap.config.health.clone(), snap.config.lb.send_proxy);
        drop(snap);
        match backend.state() {
            State::Removed => return,
            State::Up | State::Down => {
                let tls = (shared.backend_tls.as_ref()).zip(backend.tls.as_deref());
                let result = probe(backend.addr, &conf, proxy, tls);
                tracker.observe(backend, &conf, result, started)
            }
            State::Draining => {}
        }
        let pause = conf.interval.mul_f64(rng.random_range(0.9..1.1));
        thread::sleep(pause.saturating_sub(started.elapsed()));
    }
}

/// What a prober remembers of its backend between probes.
#[derive(Debug, Default, Clone)]
struct Tracker {
    streak: Streak,
    /// The state this thread last saw. A change it did not make (a worker marked the backend
    /// down after failures on live traffic) restarts the streak, so recovery takes `rise`
    /// good probes from then on.
    seen: Option<State>,
    /// Since when the backend has been down, for `remove_after_s`.
    down_since: Option<Instant>,
}

impl Tracker {
    fn observe(
        &mut self,
        backend: &Backend,
        conf: &Health,
        result: Result<Duration, ProbeError>,
        now: Instant,
    ) {
        let state = backend.state();
        if self.seen.is_some_and(|seen| seen != state) {
            self.streak = Streak::default();
        }
        backend.set_last_probe(match &result {
            Ok(latency) => ProbeReport {
                ok: true,
                latency: *latency,
                reason: String::new(),
            },
            Err(why) => ProbeReport {
                ok: false,
                latency: now.elapsed(),
                reason: why.to_string(),
            },
        });
        if let Some(up) =
            self.streak
                .observe(result.is_ok(), state == State::Up, conf.rise, conf.fall)
        {
            let (from, to) = if up {
                (State::Down, State::Up)
            } else {
                (State::Up, State::Down)
            };
            if !backend.transition(from, to) {
                return; // drained meanwhile: the drain wins
            }
            match result {
                Ok(latency) => info!("backend {} is up (probe took {latency:?})", backend.name),
                Err(why) => warn!("backend {} is down: {why}", backend.name),
            }
        }
        self.down_since = match backend.state() {
            State::Down => Some(self.down_since.unwrap_or(now)),
            _ => None,
        };
        let expired = self
            .down_since
            .zip(conf.remove_after)
            .is_some_and(|(since, limit)| now - since >= limit);
        if expired && backend.transition(State::Down, State::Removed) {
            warn!(
                "backend {} removed from the pool: down for {:?}",
                backend.name,
                conf.remove_after.unwrap_or_default()
            );
        }
        self.seen = Some(backend.state());
    }
}

/// Consecutive results of one kind, for hysteresis: a backend flips only after `rise` good
/// (or `fall` bad) probes in a row, so one lost probe does not flap it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Streak {
    good: u32,
    bad: u32,
}

impl Streak {
    /// Counts a probe result; returns the new state when the backend should flip.
    pub fn observe(&mut self, ok: bool, up: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            (self.good, self.bad) = (self.good + 1, 0);
        } else {
            (self.good, self.bad) = (0, self.bad + 1);
        }
        match up {
            true if self.bad >= fall => Some(false),
            false if self.good >= rise => Some(true),
            _ => None,
        }
    }
}

/// Why a probe failed.
#[derive(Debug)]
pub enum ProbeError {
    Connect(io::Error),
    Timeout,
    Io(io::Error),
    Status(u16),
    /// Answered, but slower than `slow_ms`.
    Slow(Duration),
    Garbage,
    Panicked,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ProbeError::Connect(e) => write!(f, "connect: {e}"),
            ProbeError::Timeout => write!(f, "timeout"),
            ProbeError::Io(e) => write!(f, "{e}"),
            ProbeError::Status(code) => write!(f, "status {code}"),
            ProbeError::Slow(latency) => write!(f, "slow: answered in {latency:?}"),
            ProbeError::Garbage => write!(f, "not an HTTP response"),
            ProbeError::Panicked => write!(f, "probe thread panicked"),
        }
    }
}

/// One `GET <path>` on a fresh connection; healthy is a status in the expected range, within
/// the timeout (and `slow_ms`, when set).
/// With `send_proxy`, the probe starts with a header that names no client (v1 `UNKNOWN`,
/// v2 `LOCAL`), as a backend that expects one on every connection needs. A TLS backend is
/// probed over TLS (after that header), its certificate checked as for requests.
pub fn probe(
    addr: SocketAddr,
    conf: &Health,
    proxy: Option<Version>,
    tls: Option<(&tls::Client, &str)>,
) -> Result<Duration, ProbeError> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&addr, conf.timeout).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => ProbeError::Timeout,
            _ => ProbeError::Connect(e),
        })?;
    let left = conf
        .timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(ProbeError::Io)?;
    // A TLS backend is asked for the site its certificate names.
    let host = tls.map_or(addr.to_string(), |(_, name)| name.to_string());
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-mio-health\r\nConnection: close\r\n\r\n",
        conf.path
    );
    if let Some(version) = proxy {
        stream
            .write_all(proxy_protocol::local(version))
            .map_err(io_error)?;
    }
    let status = match tls {
        None => ask(&mut stream, &request)?,
        Some((client, name)) => {
            let connection = client
                .connection(name)
                .map_err(|e| ProbeError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
            ask(&mut rustls::StreamOwned::new(connection, stream), &request)?
        }
    };
    let latency = started.elapsed();
    // Each read and write had the time left then; together they may have had more.
    if latency > conf.timeout {
        return Err(ProbeError::Timeout);
    }
    if !conf.status.contains(&status) {
        return Err(ProbeError::Status(status));
    }
    match conf.slow {
        Some(slow) if latency > slow => Err(ProbeError::Slow(latency)),
        _ => Ok(latency),
    }
}

fn io_error(e: io::Error) -> ProbeError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ProbeError::Timeout,
        _ => ProbeError::Io(e),
    }
}

/// Sends `request` and reads the status of the answer.
fn ask(stream: &mut (impl Read + Write), request: &str) -> Result<u16, ProbeError> {
    stream.write_all(request.as_bytes()).map_err(io_error)?;
    read_status(stream)
}

/// Reads just enough of the response for its status line.
fn read_status(stream: &mut impl Read) -> Result<u16, ProbeError> {
    let mut head = [0u8; 512];
    let mut len = 0;
    while len < head.len() {
        let n = stream.read(&mut head[len..]).map_err(io_error)?;
        if n == 0 {
            break;
        }
        len += n;
        if let Some(end) = head[..len].windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(&head[..end]).ok_or(ProbeError::Garbage);
        }
    }
    Err(ProbeError::Garbage)
}

/// `HTTP/1.x NNN reason` -> NNN.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let code = line.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    let valid = line.get(8) == Some(&b' ') && code.iter().all(u8::is_ascii_digit);
    valid.then(|| code.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_down_only_after_fall_failures_in_a_row() {
        let mut streak = Streak::default();
        assert_eq!(streak.observe(false, true, 2, 3), None);
        assert_eq!(streak.observe(false, true, 2, 3), None);
        assert_eq!(streak.observe(true, true, 2, 3), None);
        assert_eq!(streak.observe(false, true, 2, 3), None);
        assert_eq!(streak.observe(false, true, 2, 3), None);
        assert_eq!(streak.observe(false, true, 2, 3), Some(false));
    }

    #[test]
    fn flips_up_only_after_rise_successes_in_a_row() {
        let mut streak = Streak::default();
        assert_eq!(streak.observe(true, false, 2, 3), None);
        assert_eq!(streak.observe(false, false, 2, 3), None);
        assert_eq!(streak.observe(true, false, 2, 3), None);
        assert_eq!(streak.observe(true, false, 2, 3), Some(true));
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
    }

    #[test]
    fn a_flapping_backend_does_not_flip() {
        let mut streak = Streak::default();
        for i in 0..20 {
            assert_eq!(streak.observe(i % 2 == 0, true, 2, 2), None);
        }
    }
}
