//! One HTTP/1.1 connection to an etcd member, plain or TLS, over a blocking socket: a request
//! out, a response head and body in, every read and write bounded by the caller's deadline.
//! The connection stays open between requests (keep-alive) until either side closes it. A
//! `Session` is a connection with the auth token it got, and `exchange` one call over it.

use super::error::Why;
use super::wire::{self, malformed};
use crate::http::body::Framing;
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::HopHeaders;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::Value;
use socket2::{SockRef, TcpKeepalive};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest response head taken.
const MAX_HEAD: usize = 64 * 1024;
/// Longest body or watch message taken: a range over many keys is one body, so this is large,
/// but bounded, so a member gone wrong cannot make us grow without end.
pub const MAX_BODY: usize = 64 << 20;
/// Most headers in a response head (the gateway sends about ten).
const MAX_HEADERS: usize = 32;
/// TCP keepalive: a member that vanished without closing (power lost, network cut) is found
/// within idle + interval × probes, even on a watch that is silent for minutes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
const KEEPALIVE_PROBES: u32 = 3;
/// Trailer bytes taken after a chunked body (the gateway sends one short field).
const MAX_TRAILER: usize = 4096;

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }

    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.as_mut(),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A response head: what the body's reading and the connection's reuse depend on.
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    close: bool,
}

pub struct Connection {
    stream: Stream,
    /// `host:port`, for the Host header.
    endpoint: String,
    /// Bytes read and not used yet.
    buf: Vec<u8>,
    /// Requests sent so far.
    requests: u32,
    /// Whether a byte came back since the last request.
    answered: bool,
    /// The member said it closes the connection after this response.
    pub closing: bool,
    /// Whether we have a client certificate to show (for what a refused handshake means).
    client_cert: bool,
}

impl Connection {
    /// Connects to `endpoint` (`host:port`), trying each of its addresses within `timeout`;
    /// TLS when `tls` is given, the certificate checked against the host.
    pub fn open(
        endpoint: &str,
        tls: Option<&Arc<ClientConfig>>,
        timeout: Duration,
    ) -> Result<Connection, Why> {
        let tcp = connect(endpoint, timeout)?;
        tcp.set_nodelay(true)?;
        let keepalive = TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
        let client_cert = tls.is_some_and(|config| config.client_auth_cert_resolver.has_certs());
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = ServerName::try_from(host(endpoint).to_string())
                    .map_err(|_| malformed(format!("{endpoint}: no DNS name or IP address")))?;
                let tls = ClientConnection::new(Arc::clone(config), name)
                    .map_err(|e| malformed(format!("TLS: {e}")))?;
                Stream::Tls(Box::new(StreamOwned::new(tls, tcp)))
            }
        };
        Ok(Connection {
            stream,
            endpoint: endpoint.to_string(),
            buf: Vec::new(),
            requests: 0,
            answered: false,
            closing: false,
            client_cert,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether `why` may only mean that the member had closed this kept-alive connection
    /// before our request reached it: nothing came back, and it served a request before.
    /// Such a request was not run, so sending it again on a new connection is safe.
    pub fn stale(&self, why: &Why) -> bool {
        // A timeout is no such sign: the member may be running the request still.
        matches!(why, Why::Io(_)) && !timed_out(why) && self.requests > 1 && !self.answered
    }

    /// Sends `POST path` with a JSON body (and etcd's auth token, if any, and `headers`).
    pub fn send(
        &mut self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
        deadline: Instant,
    ) -> Result<(), Why> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            self.endpoint,
            body.len()
        );
        let token = token.map(|token| ("Authorization", token));
        for (name, value) in token.iter().chain(headers) {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        self.requests += 1;
        self.answered = false;
        self.bound(deadline)?;
        let io = self.stream.io();
        let sent = io.write_all(&request).and_then(|()| io.flush());
        sent.map_err(|e| self.failed(e))
    }

    /// Reads a response head.
    pub fn read_head(&mut self, deadline: Instant) -> Result<Head, Why> {
        loop {
            if let Some(head) = self.parse_head()? {
                return Ok(head);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(malformed(format!("response head over {MAX_HEAD} bytes")));
            }
            self.more(deadline)?;
        }
    }

    /// The head at the start of the buffer, taken out of it, once it is whole.
    fn parse_head(&mut self) -> Result<Option<Head>, Why> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let len = match response.parse(&self.buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(malformed(format!("response head: {e}"))),
        };
        let hop = HopHeaders::read(response.headers)
            .map_err(|e| malformed(format!("response head: {}", e.why())))?;
        let status = response.code.unwrap_or(0);
        let framing = match status {
            100..=199 | 204 | 304 => Framing::Empty,
            _ => hop.framing().unwrap_or(Framing::UntilClose),
        };
        let close = hop.close || response.version == Some(0) || framing == Framing::UntilClose;
        self.buf.drain(..len);
        Ok(Some(Head {
            status,
            framing,
            close,
        }))
    }

    /// Reads the whole body `head` announces.
    pub fn read_body(&mut self, head: &Head, deadline: Instant) -> Result<Vec<u8>, Why> {
        self.closing = head.close;
        let mut body = Vec::new();
        match head.framing {
            Framing::Empty => {}
            Framing::Length(len) => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > MAX_BODY {
                    return Err(malformed(format!("a body of {len} bytes")));
                }
                while self.buf.len() < len {
                    self.more(deadline)?;
                }
                body.extend(self.buf.drain(..len));
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new(MAX_TRAILER);
                while !self.read_chunked(&mut decoder, &mut body, deadline)? {
                    if body.len() > MAX_BODY {
                        return Err(malformed(format!("a body over {MAX_BODY} bytes")));
                    }
                }
            }
            Framing::UntilClose => {
                while self.fill(deadline)? > 0 && self.buf.len() <= MAX_BODY {}
                body = std::mem::take(&mut self.buf);
            }
        }
        Ok(body)
    }

    /// Appends to `data` the chunk data of a chunked body: what is buffered, or else what one
    /// read brings. True once the body has ended.
    pub fn read_chunked(
        &mut self,
        decoder: &mut ChunkedDecoder,
        data: &mut Vec<u8>,
        deadline: Instant,
    ) -> Result<bool, Why> {
        if self.buf.is_empty() {
            self.more(deadline)?;
        }
        let scan = (decoder.decode(&self.buf, data))
            .map_err(|e| malformed(format!("chunked body: {e}")))?;
        self.buf.drain(..scan.used);
        Ok(scan.done)
    }

    /// Reads at least one more byte; the member closing is an error here.
    fn more(&mut self, deadline: Instant) -> Result<(), Why> {
        match self.fill(deadline)? {
            0 => Err(Why::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "etcd closed the connection",
            ))),
            _ => Ok(()),
        }
    }

    /// One read into the buffer: how many bytes came (0: the member closed).
    fn fill(&mut self, deadline: Instant) -> Result<usize, Why> {
        self.bound(deadline)?;
        let mut chunk = [0; 16 * 1024];
        let n = self
            .stream
            .io()
            .read(&mut chunk)
            .map_err(|e| self.failed(e))?;
        self.buf.extend_from_slice(&chunk[..n]);
        self.answered |= n > 0;
        Ok(n)
    }

    /// A failed read or write, said plainly when TLS is what failed: rustls's own words
    /// (`received fatal alert: BadCertificate`) do not tell whose certificate is at fault.
    fn failed(&self, e: io::Error) -> Why {
        use rustls::AlertDescription as Alert;
        let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
            return Why::Io(e);
        };
        let why = match tls {
            rustls::Error::InvalidCertificate(_) => {
                format!("TLS: the member's certificate does not check out: {tls}")
            }
            rustls::Error::AlertReceived(
                Alert::BadCertificate
                | Alert::CertificateRequired
                | Alert::UnknownCA
                | Alert::CertificateUnknown
                | Alert::CertificateExpired
                | Alert::CertificateRevoked
                | Alert::UnsupportedCertificate,
            ) => match self.client_cert {
                true => format!("TLS: the member refused our client certificate ({tls})"),
                false => {
                    format!("TLS: the member asks for a client certificate and none is set ({tls})")
                }
            },
            _ => format!("TLS: {tls}"),
        };
        Why::Io(io::Error::new(e.kind(), why))
    }

    /// Makes the socket's next reads and writes give up at `deadline`.
    fn bound(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        let tcp = self.stream.tcp();
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))
    }
}

/// The first address of `endpoint` that takes a connection within `timeout`.
fn connect(endpoint: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in endpoint.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host(endpoint: &str) -> &str {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether a read gave up at its deadline (rather than the connection failing).
pub fn timed_out(why: &Why) -> bool {
    matches!(why, Why::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// A connection and the auth token it got: etcd's simple tokens are known to the member that
/// issued them only, so each connection authenticates on its own.
pub struct Session {
    pub conn: Connection,
    pub token: Option<String>,
}

impl Session {
    pub fn exchange(&mut self, path: &str, body: &[u8], deadline: Instant) -> Result<Value, Why> {
        exchange(&mut self.conn, path, self.token.as_deref(), body, deadline)
    }
}

/// Sends a request on `conn` and reads its answer: the JSON object etcd sent, unwrapped from
/// the `result` a streamed call's answer comes in.
pub fn exchange(
    conn: &mut Connection,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    deadline: Instant,
) -> Result<Value, Why> {
    conn.send(path, token, &[], body, deadline)?;
    let head = conn.read_head(deadline)?;
    let body = conn.read_body(&head, deadline)?;
    let answer = serde_json::from_slice::<Value>(&body);
    if head.status != 200 {
        let message = match &answer {
            Ok(answer) => wire::error_message(answer),
            Err(_) => None,
        };
        let message = message.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(Why::Refused {
            status: head.status,
            message,
        });
    }
    let mut answer = answer.map_err(|e| malformed(format!("answer is not JSON: {e}")))?;
    if let Some(message) = wire::error_message(&answer) {
        return Err(Why::Refused {
            status: head.status,
            message,
        });
    }
    Ok(match answer.get_mut("result") {
        Some(result) => result.take(),
        None => answer,
    })
}
