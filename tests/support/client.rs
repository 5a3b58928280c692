//! The raw-socket client: connect, send bytes as given, read responses exactly as they come.
//! The readers take any `Read`: a `TcpStream`, or a TLS stream over one.

use super::http::{has_token, impl_message, parse_header_line, Message};
use super::util::{find, show};
use super::{IO_TIMEOUT, MAX_HEAD};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A connection to `addr` with 5 s read and write timeouts and no Nagle delay.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// A connection to `addr` made within `timeout`, with 5 s read and write timeouts and no
/// Nagle delay.
pub fn try_connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A connection to `addr` from the source address `from` (any port), with the timeouts of
/// [`connect`]: a client at another loopback address such as 127.0.0.2.
#[track_caller]
pub fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    try_connect_from(from, addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr} from {from}: {e}"))
}

/// `connect_from` within `timeout`, as a `Result`.
pub fn try_connect_from(
    from: IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&addr.into(), timeout)?;
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Writes all of `bytes`. Panics on error.
#[track_caller]
pub fn send(stream: &mut TcpStream, bytes: impl AsRef<[u8]>) {
    stream
        .write_all(bytes.as_ref())
        .unwrap_or_else(|e| panic!("send: {e}"));
}

/// Writes what it can of `bytes`, ignoring errors: lb-mio may answer and close before a long
/// request is all sent.
pub fn send_lenient(stream: &mut TcpStream, bytes: impl AsRef<[u8]>) {
    let _ = stream.write_all(bytes.as_ref());
}

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Resp {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// In order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    /// Status line and header lines exactly as received, final CRLF included.
    pub head: Vec<u8>,
    /// The body, de-chunked when chunked.
    pub body: Vec<u8>,
    /// The body bytes as received.
    pub raw_body: Vec<u8>,
}

impl_message!(Resp);

impl Resp {
    /// Whether a `Connection` header lists this token.
    pub fn connection_has(&self, token: &str) -> bool {
        has_token(&self.headers, "connection", token)
    }
}

/// How `read_response` frames the body of the response it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Normal rules: 1xx/204/304 have no body; else chunked, Content-Length or until close.
    Normal,
    /// The response to a HEAD request: never a body.
    Head,
}

fn read_byte<S: Read>(stream: &mut S) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    loop {
        match stream.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(b[0])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn read_line<S: Read>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        match read_byte(stream)? {
            Some(b) => line.push(b),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed mid-line after {:?}", String::from_utf8_lossy(&line)),
                ))
            }
        }
        if line.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    }
    Ok(line)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one response head. It reads byte by byte so nothing after the head is consumed.
/// `Err(UnexpectedEof)` when the connection closed before any byte.
pub fn try_read_head<S: Read>(stream: &mut S) -> io::Result<Resp> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match read_byte(stream)? {
            Some(b) => head.push(b),
            None if head.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed inside a response head: {:?}",
                        String::from_utf8_lossy(&head)
                    ),
                ))
            }
        }
        if head.len() > MAX_HEAD {
            return Err(bad("response head too long".into()));
        }
    }
    let text = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let headers = lines
        .map(|line| parse_header_line(line).ok_or_else(|| bad(format!("bad header line {line:?}"))))
        .collect::<io::Result<_>>()?;
    Ok(Resp {
        version,
        status,
        reason,
        headers,
        head,
        body: Vec::new(),
        raw_body: Vec::new(),
    })
}

/// Reads one whole response: head and body framed per `expect` and the response's headers.
pub fn try_read_response_as<S: Read>(stream: &mut S, expect: Expect) -> io::Result<Resp> {
    let mut resp = try_read_head(stream)?;
    let no_body = expect == Expect::Head || matches!(resp.status, 100..=199 | 204 | 304);
    if no_body {
        return Ok(resp);
    }
    if has_token(&resp.headers, "transfer-encoding", "chunked") {
        loop {
            let line = read_line(stream)?;
            resp.raw_body.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line).into_owned();
            let size = text.trim_end().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size line {text:?}")))?;
            if size == 0 {
                loop {
                    let line = read_line(stream)?;
                    resp.raw_body.extend_from_slice(&line);
                    if line == b"\r\n" {
                        return Ok(resp);
                    }
                }
            }
            let mut data = vec![0u8; size + 2];
            stream.read_exact(&mut data)?;
            if !data.ends_with(b"\r\n") {
                return Err(bad("chunk data not followed by CRLF".into()));
            }
            resp.raw_body.extend_from_slice(&data);
            resp.body.extend_from_slice(&data[..size]);
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body)?;
        resp.raw_body = body.clone();
        resp.body = body;
        Ok(resp)
    } else {
        let body = try_read_to_close(stream)?;
        resp.raw_body = body.clone();
        resp.body = body;
        Ok(resp)
    }
}

/// `try_read_response_as(stream, Expect::Normal)`.
pub fn try_read_response<S: Read>(stream: &mut S) -> io::Result<Resp> {
    try_read_response_as(stream, Expect::Normal)
}

/// Reads one whole response (a 1xx comes back on its own: call again for the final one).
/// Panics on error.
#[track_caller]
pub fn read_response<S: Read>(stream: &mut S) -> Resp {
    try_read_response(stream).unwrap_or_else(|e| panic!("reading a response: {e}"))
}

/// Reads the response to a HEAD request (never a body).
#[track_caller]
pub fn read_head_response<S: Read>(stream: &mut S) -> Resp {
    try_read_response_as(stream, Expect::Head).unwrap_or_else(|e| panic!("reading a response: {e}"))
}

/// Reads until the peer closes (EOF, or a reset after some bytes). Errors on timeout.
pub fn try_read_to_close<S: Read>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut tmp = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut tmp) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// Reads until the peer closes; panics if it does not within the read timeout.
#[track_caller]
pub fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    try_read_to_close(stream).unwrap_or_else(|e| panic!("waiting for the connection to close: {e}"))
}

/// Whether the peer closes the connection (with no further bytes) within `timeout`. Bytes that
/// do arrive make it false.
pub fn closes_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let old = stream.read_timeout().ok().flatten();
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut b = [0u8; 1];
    let closed = match stream.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
    };
    stream.set_read_timeout(old).unwrap();
    closed
}

/// Whether the connection is still open and silent for `quiet` (read times out).
pub fn stays_open(stream: &mut TcpStream, quiet: Duration) -> bool {
    let old = stream.read_timeout().ok().flatten();
    stream.set_read_timeout(Some(quiet)).unwrap();
    let mut b = [0u8; 1];
    let open = matches!(stream.read(&mut b), Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
    stream.set_read_timeout(old).unwrap();
    open
}

/// `GET path HTTP/1.1` with `Host: lb.test` (keep-alive) on an open connection; reads the
/// response.
#[track_caller]
pub fn get_on(stream: &mut TcpStream, path: &str) -> Resp {
    send(
        stream,
        format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n\r\n"),
    );
    read_response(stream)
}

/// One `GET path` on a new connection (`Connection: close`). Panics on error.
#[track_caller]
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    try_get(addr, path, IO_TIMEOUT).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// One `GET path` on a new connection (`Connection: close`), each step (connect, send, read)
/// bounded by `timeout`; an error says which step failed.
pub fn try_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Resp, String> {
    let mut stream = try_connect(addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("timeouts: {e}"))?;
    let raw = format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n");
    stream
        .write_all(raw.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    try_read_response(&mut stream).map_err(|e| format!("read: {e}"))
}

/// Sends raw request bytes on a new connection and reads one response.
#[track_caller]
pub fn request(addr: SocketAddr, raw: impl AsRef<[u8]>) -> Resp {
    let mut stream = connect(addr);
    send(&mut stream, raw);
    read_response(&mut stream)
}

/// Bytes of a response as the client received them, split into the head (CRLFs included)
/// and what follows it. Panics if there is no whole head.
#[track_caller]
pub fn split_response(bytes: &[u8]) -> (String, Vec<u8>) {
    let end = find(bytes, b"\r\n\r\n").expect("a complete response head") + 4;
    (show(&bytes[..end]), bytes[end..].to_vec())
}

/// Writes bytes one at a time, `every` apart, from a thread of its own, until all are sent,
/// the connection fails or the `Trickle` is stopped (or dropped).
pub struct Trickle {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
}

impl Trickle {
    pub fn start(stream: &TcpStream, bytes: Vec<u8>, every: Duration) -> Trickle {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&sent));
        let mut writer = stream.try_clone().expect("clone the stream");
        thread::spawn(move || {
            for b in bytes {
                if flag.load(Ordering::SeqCst) || writer.write_all(&[b]).is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                thread::sleep(every);
            }
        });
        Trickle { stop, sent }
    }

    /// Bytes written so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// No more bytes after the one being written, if any.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop();
    }
}
