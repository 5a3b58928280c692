//! One health probe as a state machine on a non-blocking socket, moved along by the health
//! thread's event loop: connect, the PROXY header (in clear), the TLS handshake (to a TLS
//! backend), `GET <path>`, then reads until the status line. It never blocks: each step goes
//! as far as the socket allows and says when it must wait for the next event.
//!
//! rustls is driven here straight from the socket rather than through `TlsStream`, whose
//! failures are a worker's (logged at each one): a probe's failure is reported by the probe,
//! in rustls's own words, and logged once when the backend changes state.

use crate::buffer::Io;
use crate::config::Health;
use crate::proxy_protocol::{self, Version};
use crate::tls;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ClientConnection;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bytes of the answer looked at for the status line.
const HEAD: usize = 512;

/// Most bytes a TLS probe takes from the socket (certificates, then the answer's start): a
/// backend that streams records cannot keep the health thread reading.
const MAX_TLS_BYTES: usize = 256 * 1024;

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
        }
    }
}

/// Where a probe goes and how it speaks there.
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub conf: &'a Health,
    /// With `send_proxy`, a header that names no client (v1 `UNKNOWN`, v2 `LOCAL`), as a
    /// backend that expects one on every connection needs.
    pub proxy: Option<Version>,
    /// A TLS backend: the client config and the name its certificate must have.
    pub tls: Option<(&'a tls::Client, &'a str)>,
}

/// How far a probe has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The TCP handshake is under way.
    Connecting,
    /// Writing the PROXY header, in clear, before anything else (TLS included).
    Proxy,
    /// The TLS handshake (TLS backends only).
    Handshaking,
    /// Writing the request.
    Sending,
    /// Reading until the status line.
    Reading,
}

pub struct Probe {
    tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
    step: Step,
    proxy: &'static [u8],
    request: Vec<u8>,
    /// Bytes of the PROXY header, then of the request, written so far.
    sent: usize,
    head: [u8; HEAD],
    len: usize,
    /// Socket bytes a TLS probe took in.
    taken: usize,
    pub started: Instant,
    pub deadline: Instant,
}

impl Probe {
    /// Starts a non-blocking connect, registered under `token` for both directions; the
    /// events that follow go to `advance`. Fails only when the connect fails at once.
    pub fn start(
        registry: &Registry,
        token: Token,
        target: &Target,
        now: Instant,
    ) -> Result<Probe, ProbeError> {
        let tls =
            match target.tls {
                None => None,
                Some((client, name)) => Some(Box::new(client.connection(name).map_err(|e| {
                    ProbeError::Io(io::Error::new(io::ErrorKind::InvalidInput, e))
                })?)),
            };
        let mut tcp = TcpStream::connect(target.addr).map_err(connect_error)?;
        registry
            .register(&mut tcp, token, Interest::READABLE | Interest::WRITABLE)
            .map_err(ProbeError::Io)?;
        Ok(Probe {
            tcp,
            tls,
            step: Step::Connecting,
            proxy: target.proxy.map_or(&[], proxy_protocol::local),
            request: request(target),
            sent: 0,
            head: [0; HEAD],
            len: 0,
            taken: 0,
            started: now,
            deadline: now + target.conf.timeout,
        })
    }

    /// Moves the probe as far as the socket allows: `None` while it waits for an event, the
    /// status of the answer (or why there is none) once it ended. Every step runs until the
    /// socket blocks, so no edge-triggered event is left unused.
    pub fn advance(&mut self) -> Option<Result<u16, ProbeError>> {
        loop {
            let moved = match self.step {
                Step::Connecting => self.connected(),
                Step::Proxy => write_from(&mut self.tcp, self.proxy, &mut self.sent).map_err(io),
                Step::Handshaking => self.handshake().map_err(io),
                Step::Sending => self.send().map_err(io),
                Step::Reading => return self.read_status().transpose(),
            };
            match moved {
                Ok(true) => self.step = self.next_step(),
                Ok(false) => return None,
                Err(why) => return Some(Err(why)),
            }
        }
    }

    /// The step after the current one, which has finished.
    fn next_step(&mut self) -> Step {
        match self.step {
            Step::Connecting if !self.proxy.is_empty() => Step::Proxy,
            Step::Connecting | Step::Proxy => {
                self.sent = 0;
                match self.tls {
                    Some(_) => Step::Handshaking,
                    None => Step::Sending,
                }
            }
            Step::Handshaking => Step::Sending,
            Step::Sending | Step::Reading => Step::Reading,
        }
    }

    /// Deregisters the socket; it closes when the probe is dropped.
    pub fn close(mut self, registry: &Registry) {
        // Deregistering can only fail if the socket is already gone from the poll set.
        let _ = registry.deregister(&mut self.tcp);
    }

    /// The connect finished (a writable event; a spurious one leaves it waiting).
    fn connected(&mut self) -> Result<bool, ProbeError> {
        match (self.tcp.take_error(), self.tcp.peer_addr()) {
            (Ok(None), Ok(_)) => Ok(true),
            (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            (Ok(Some(e)) | Err(e), _) | (Ok(None), Err(e)) => Err(connect_error(e)),
        }
    }

    fn handshake(&mut self) -> io::Result<bool> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(true);
        };
        loop {
            if !flush(tls, &mut self.tcp)? {
                return Ok(false);
            }
            if !tls.is_handshaking() {
                return Ok(true);
            }
            match take_records(tls, &mut self.tcp, &mut self.taken)? {
                Io::Blocked => return Ok(false),
                Io::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
                Io::Moved(_) => {}
            }
        }
    }

    /// Writes the request: to the socket, or to rustls (which takes it whole) and then on.
    fn send(&mut self) -> io::Result<bool> {
        match self.tls.as_deref_mut() {
            None => write_from(&mut self.tcp, &self.request, &mut self.sent),
            Some(tls) => {
                write_from(&mut tls.writer(), &self.request, &mut self.sent)?;
                flush(tls, &mut self.tcp)
            }
        }
    }

    /// Reads until the status line: `None` while the socket is dry.
    fn read_status(&mut self) -> Result<Option<u16>, ProbeError> {
        loop {
            let Some(n) = self.receive().map_err(io)? else {
                return Ok(None);
            };
            if n == 0 {
                return Err(ProbeError::Garbage);
            }
            self.len += n;
            if let Some(end) = self.head[..self.len].windows(2).position(|w| w == b"\r\n") {
                return parse_status_line(&self.head[..end])
                    .map(Some)
                    .ok_or(ProbeError::Garbage);
            }
            if self.len == HEAD {
                return Err(ProbeError::Garbage);
            }
        }
    }

    /// One read of the answer into `head`: `Some(0)` at its end, `None` while the socket is dry.
    fn receive(&mut self) -> io::Result<Option<usize>> {
        let buf = &mut self.head[self.len..];
        let Some(tls) = self.tls.as_deref_mut() else {
            return blocked_is_none(self.tcp.read(buf));
        };
        loop {
            match blocked_is_none(tls.reader().read(buf))? {
                Some(n) => return Ok(Some(n)),
                // No plaintext yet (after the socket's end rustls says so itself, so this
                // loop ends there, or at MAX_TLS_BYTES).
                None => match take_records(tls, &mut self.tcp, &mut self.taken)? {
                    Io::Blocked => return Ok(None),
                    Io::Moved(_) | Io::Closed => {}
                },
            }
        }
    }
}

/// `GET <path>`; a TLS backend is asked for the site its certificate names.
fn request(target: &Target) -> Vec<u8> {
    let host = target
        .tls
        .map_or(target.addr.to_string(), |(_, name)| name.to_string());
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-mio-health\r\nConnection: close\r\n\r\n",
        target.conf.path
    )
    .into_bytes()
}

/// Writes `bytes` from `*sent` on until all went (true) or the socket blocks (false).
fn write_from(out: &mut impl Write, bytes: &[u8], sent: &mut usize) -> io::Result<bool> {
    while *sent < bytes.len() {
        match blocked_is_none(out.write(&bytes[*sent..]))? {
            Some(0) => return Err(io::ErrorKind::WriteZero.into()),
            Some(n) => *sent += n,
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// Sends what rustls has to send: true once nothing is left, false if the socket blocked.
fn flush(tls: &mut ClientConnection, tcp: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        if blocked_is_none(tls.write_tls(tcp))?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One socket read into rustls, processed. A bad record fails with rustls's reason (its alert
/// sent if the socket takes it).
fn take_records(
    tls: &mut ClientConnection,
    tcp: &mut TcpStream,
    taken: &mut usize,
) -> io::Result<Io> {
    let n = match blocked_is_none(tls.read_tls(tcp))? {
        None => return Ok(Io::Blocked),
        Some(n) => n,
    };
    *taken += n;
    if *taken > MAX_TLS_BYTES {
        return Err(io::Error::other("too many bytes before the status line"));
    }
    if let Err(e) = tls.process_new_packets() {
        let _ = tls.write_tls(tcp);
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    Ok(if n == 0 { Io::Closed } else { Io::Moved(n) })
}

fn blocked_is_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

fn connect_error(e: io::Error) -> ProbeError {
    match e.kind() {
        io::ErrorKind::TimedOut => ProbeError::Timeout,
        _ => ProbeError::Connect(e),
    }
}

fn io(e: io::Error) -> ProbeError {
    match e.kind() {
        io::ErrorKind::TimedOut => ProbeError::Timeout,
        _ => ProbeError::Io(e),
    }
}

/// A probe's answer judged: healthy is a status in the expected range, within the timeout
/// (and `slow_ms`, when set). Returns the latency.
pub fn judge(conf: &Health, status: u16, latency: Duration) -> Result<Duration, ProbeError> {
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

/// `HTTP/1.x NNN reason` -> NNN.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let code = line.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    let valid = line.get(8) == Some(&b' ') && code.iter().all(u8::is_ascii_digit);
    valid.then(|| code.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::net::TcpListener;
    use std::thread;

    /// A one-connection server on loopback: reads the request head, answers `answer` (nothing
    /// with `None`, holding the connection for a while), and returns what it read.
    fn server(answer: Option<&'static [u8]>) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            match answer {
                Some(bytes) => stream.write_all(bytes).unwrap(),
                None => thread::sleep(Duration::from_millis(500)),
            }
            got
        });
        (addr, handle)
    }

    fn conf() -> Health {
        Health {
            path: "/hc".into(),
            ..Health::default()
        }
    }

    /// Runs a probe to `addr` in an event loop of its own for up to `within`: its result (if
    /// it ended) and the step it was at.
    fn run(
        addr: SocketAddr,
        proxy: Option<Version>,
        within: Duration,
    ) -> (Option<Result<u16, ProbeError>>, Step) {
        let mut poll = Poll::new().unwrap();
        let conf = conf();
        let target = Target {
            addr,
            conf: &conf,
            proxy,
            tls: None,
        };
        let now = Instant::now();
        let mut probe = match Probe::start(poll.registry(), Token(7), &target, now) {
            Ok(probe) => probe,
            Err(why) => return (Some(Err(why)), Step::Connecting),
        };
        assert_eq!(probe.deadline, now + conf.timeout);
        let mut events = Events::with_capacity(8);
        let until = Instant::now() + within;
        while Instant::now() < until {
            poll.poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            for event in events.iter() {
                assert_eq!(event.token(), Token(7));
                if let Some(result) = probe.advance() {
                    return (Some(result), probe.step);
                }
            }
        }
        let step = probe.step;
        probe.close(poll.registry());
        (None, step)
    }

    #[test]
    fn a_probe_sends_the_proxy_header_then_its_request_and_reads_the_status() {
        let (addr, server) = server(Some(b"HTTP/1.1 204 No Content\r\n\r\n"));
        let (result, step) = run(addr, Some(Version::V1), Duration::from_secs(5));
        assert_eq!(result.unwrap().unwrap(), 204);
        assert_eq!(step, Step::Reading);
        let request = String::from_utf8(server.join().unwrap()).unwrap();
        let want = format!(
            "PROXY UNKNOWN\r\nGET /hc HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lb-mio-health\r\n"
        );
        assert!(request.starts_with(&want), "{request:?}");
    }

    #[test]
    fn a_refused_connect_fails_the_probe() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (result, _) = run(addr, None, Duration::from_secs(5));
        let why = result.expect("ended").unwrap_err();
        assert!(matches!(why, ProbeError::Connect(_)), "{why}");
        assert!(why.to_string().starts_with("connect: "), "{why}");
    }

    #[test]
    fn an_answer_without_a_status_line_is_garbage() {
        for answer in [&b"SSH-2.0-OpenSSH\r\n"[..], b"", &[b'x'; HEAD + 10]] {
            let (addr, server) = server(Some(answer));
            let (result, _) = run(addr, None, Duration::from_secs(5));
            let why = result.expect("ended").unwrap_err();
            assert!(matches!(why, ProbeError::Garbage), "{answer:?}: {why}");
            server.join().unwrap();
        }
    }

    /// A backend that never answers leaves the probe waiting in `Reading` (the health thread
    /// ends it at its deadline), never blocking the loop.
    #[test]
    fn a_silent_backend_leaves_the_probe_waiting_for_the_answer() {
        let (addr, server) = server(None);
        let started = Instant::now();
        let (result, step) = run(addr, None, Duration::from_millis(200));
        assert!(result.is_none());
        assert_eq!(step, Step::Reading);
        assert!(started.elapsed() < Duration::from_secs(2));
        server.join().unwrap();
    }

    #[test]
    fn answers_are_judged_by_status_range_timeout_and_slow_ms() {
        let mut conf = conf();
        let ms = Duration::from_millis;
        assert_eq!(judge(&conf, 200, ms(5)).unwrap(), ms(5));
        assert!(judge(&conf, 399, ms(5)).is_ok());
        assert!(matches!(
            judge(&conf, 404, ms(5)),
            Err(ProbeError::Status(404))
        ));
        let late = conf.timeout + ms(1);
        assert!(matches!(judge(&conf, 200, late), Err(ProbeError::Timeout)));
        conf.slow = Some(ms(10));
        assert!(matches!(
            judge(&conf, 200, ms(11)),
            Err(ProbeError::Slow(_))
        ));
        assert!(judge(&conf, 200, ms(10)).is_ok());
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
    }
}
