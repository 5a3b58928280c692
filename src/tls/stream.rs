//! One TLS connection, from a client or to a backend: rustls's state machine between the socket
//! and the pump's buffers. Reads decrypt into a buffer; writes encrypt from one once rustls has
//! flushed what it held, so rustls never holds more than one batch of records.

use crate::buffer::{Buffer, Io};
use crate::token::Readiness;
use log::{debug, warn};
use mio::net::TcpStream;
use rustls::{ClientConnection, Connection, HandshakeKind, ProtocolVersion, ServerConnection};
use std::fmt;
use std::io::{self, Read, Write};

/// Most records taken in by one `read` that give no plaintext (a handshake's), so a client
/// cannot keep a worker in one connection.
const RECORD_READS: usize = 8;

/// Why a TLS connection failed; carried in the `io::Error` a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The handshake failed: the reason, in words.
    Handshake(&'static str),
    /// A record after the handshake was bad.
    Record(&'static str),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            TlsFailure::Handshake(why) => write!(f, "TLS handshake failed: {why}"),
            TlsFailure::Record(why) => write!(f, "TLS error: {why}"),
        }
    }
}

impl std::error::Error for TlsFailure {}

impl TlsFailure {
    /// The failure an `io::Error` from `TlsStream::read` carries, if it is one.
    pub fn of(e: &io::Error) -> Option<TlsFailure> {
        e.get_ref()?.downcast_ref::<TlsFailure>().copied()
    }
}

/// A finished handshake, as metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub tls13: bool,
    pub resumed: bool,
}

/// What an access line says of a TLS connection.
#[derive(Debug, Clone, Copy)]
pub struct Session<'a> {
    pub version: &'static str,
    pub cipher: &'static str,
    pub sni: Option<&'a str>,
    pub resumed: bool,
}

pub struct TlsStream {
    tcp: TcpStream,
    tls: Connection,
    /// The first byte was not a TLS record: the client speaks plain HTTP, and bytes pass in
    /// clear from then on (for lb-mio's 400).
    plain: bool,
    /// A byte arrived: from then on a close is a failed handshake, not a silent connection.
    started: bool,
    /// The last socket read was short or blocked: nothing waits in the socket.
    drained: bool,
    /// Decrypted bytes rustls holds that the pump has not taken.
    plaintext: usize,
    /// The peer's close_notify came: once the plaintext before it is taken, a read says so.
    peer_closed: bool,
    /// The finished handshake was handed to `finished_handshake`.
    reported: bool,
    /// close_notify is queued: the socket's write side ends once rustls has flushed it.
    closing: bool,
    /// The subject of the client's certificate, when it sent one (`[tls] client_ca`).
    client_subject: Option<Box<str>>,
}

/// Counts whether the socket read filled what rustls offered: a short read drained it.
struct Short<'a> {
    tcp: &'a mut TcpStream,
    short: bool,
}

impl Read for Short<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

impl TlsStream {
    /// A client's connection: its first byte tells TLS from plain HTTP.
    pub fn server(tcp: TcpStream, tls: ServerConnection) -> TlsStream {
        TlsStream::new(tcp, tls.into(), false)
    }

    /// A connection to a backend: TLS from the first byte, our ClientHello.
    pub fn client(tcp: TcpStream, tls: ClientConnection) -> TlsStream {
        TlsStream::new(tcp, tls.into(), true)
    }

    fn new(tcp: TcpStream, tls: Connection, started: bool) -> TlsStream {
        TlsStream {
            tcp,
            tls,
            plain: false,
            started,
            drained: true,
            plaintext: 0,
            peer_closed: false,
            reported: false,
            closing: false,
            client_subject: None,
        }
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// One read of plaintext into `buf`. `Io::Moved(0)` means records were taken in that gave
    /// no plaintext yet (a handshake): the socket may hold more, and `buffered_input` says so.
    pub fn read(&mut self, buf: &mut Buffer) -> io::Result<Io> {
        if self.plain {
            return buf.read_from(&mut self.tcp);
        }
        if !self.started {
            match self.sniff()? {
                Some(io) => return Ok(io),
                None if self.plain => return buf.read_from(&mut self.tcp),
                None => {}
            }
        }
        for round in 0..RECORD_READS {
            match buf.read_from(&mut self.tls.reader()) {
                Ok(Io::Blocked) => {}
                Ok(Io::Moved(n)) => {
                    self.plaintext = self.plaintext.saturating_sub(n);
                    if round == 0 {
                        // Plaintext from an earlier read: the socket was not looked at, and
                        // the event for what reached it since may already be spent. The pump
                        // judges readiness by this read's size, so say the socket may hold more.
                        self.drained = false;
                    }
                    return Ok(Io::Moved(n));
                }
                // A client that closes without close_notify: an end like any other for HTTP,
                // whose own framing says whether a request was whole.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Io::Closed),
                other => return other,
            }
            match self.take_records()? {
                Io::Closed => return Ok(Io::Closed),
                // Records taken in this call (a handshake flight) are progress: the pump must
                // go round again, to send what rustls now wants to send.
                Io::Blocked => return Ok(if round > 0 { Io::Moved(0) } else { Io::Blocked }),
                Io::Moved(_) => {}
            }
        }
        Ok(Io::Moved(0))
    }

    /// One socket read into rustls, and what it decrypts processed: `Closed` at the socket's
    /// end, `Blocked` when it is dry.
    fn take_records(&mut self) -> io::Result<Io> {
        let mut socket = Short {
            tcp: &mut self.tcp,
            short: false,
        };
        match self.tls.read_tls(&mut socket) {
            Ok(0) => Ok(Io::Closed),
            Ok(n) => {
                self.drained = socket.short;
                self.process()?;
                Ok(Io::Moved(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.drained = true;
                Ok(Io::Blocked)
            }
            // rustls refuses more input: its buffers are full of what was not taken.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Err(self.failed("oversized or unprocessed records"))
            }
            Err(e) => Err(e),
        }
    }

    /// Bytes that came behind a PROXY protocol header, read in clear with it: the start of
    /// the handshake, given to rustls. Returns false when they are not TLS but plain HTTP
    /// (left for the pump, which answers 400) or there are none.
    pub fn take_early(&mut self, mut early: &[u8]) -> io::Result<bool> {
        let Some(&first) = early.first() else {
            return Ok(false);
        };
        self.started = true;
        self.plain = first.is_ascii_uppercase();
        while !self.plain && !early.is_empty() {
            match self.tls.read_tls(&mut early) {
                Ok(n) if n > 0 => self.process()?,
                _ => return Err(self.failed("oversized or unprocessed records")),
            }
        }
        Ok(!self.plain)
    }

    /// Moves a handshake to a backend along as far as the socket allows: sends what rustls has
    /// to send, takes in records until the socket is dry or the handshake is done. True if
    /// anything moved; `ready` learns what the socket said.
    pub fn handshake(&mut self, ready: &mut Readiness) -> io::Result<bool> {
        let mut moved = self.send_handshake(ready)?;
        if !ready.readable && !self.buffered_input() {
            return Ok(moved);
        }
        for _ in 0..RECORD_READS {
            match self.take_records()? {
                Io::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
                Io::Blocked => {
                    ready.readable = false;
                    break;
                }
                Io::Moved(_) => moved = true,
            }
            if !self.tls.is_handshaking() {
                break;
            }
        }
        Ok(self.send_handshake(ready)? || moved)
    }

    fn send_handshake(&mut self, ready: &mut Readiness) -> io::Result<bool> {
        if !ready.writable || !self.tls.wants_write() {
            return Ok(false);
        }
        match self.flush()? {
            Io::Blocked => {
                ready.writable = false;
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    /// The peer ended the connection with close_notify (a FIN alone may be an attacker's).
    pub fn closed_cleanly(&self) -> bool {
        self.plain || self.peer_closed
    }

    /// Looks at the first byte without taking it: a TLS handshake record starts with 22; an
    /// upper-case letter is a plain HTTP method. Returns an `Io` when there is nothing to read.
    fn sniff(&mut self) -> io::Result<Option<Io>> {
        let mut first = [0u8; 1];
        match self.tcp.peek(&mut first) {
            Ok(0) => Ok(Some(Io::Closed)),
            Ok(_) => {
                self.started = true;
                self.plain = first[0].is_ascii_uppercase();
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.drained = true;
                Ok(Some(Io::Blocked))
            }
            Err(e) => Err(e),
        }
    }

    /// Decrypts the records taken in; a failure sends rustls's alert (if the socket takes it).
    fn process(&mut self) -> io::Result<()> {
        match self.tls.process_new_packets() {
            Ok(state) => {
                self.plaintext = state.plaintext_bytes_to_read();
                self.peer_closed = state.peer_has_closed();
                Ok(())
            }
            Err(e) => {
                match &self.tls {
                    // A backend's failure is an operator's concern (its certificate, say).
                    Connection::Client(_) => warn!("TLS with a backend: {e}"),
                    Connection::Server(_) => debug!("TLS: {e}"),
                }
                let _ = self.tls.write_tls(&mut self.tcp);
                Err(self.failed(reason(&e)))
            }
        }
    }

    fn failed(&self, why: &'static str) -> io::Error {
        let failure = match self.tls.is_handshaking() {
            true => TlsFailure::Handshake(why),
            false => TlsFailure::Record(why),
        };
        io::Error::new(io::ErrorKind::InvalidData, failure)
    }

    /// Encrypts what it can of `buf` past its first `skip` bytes and sends it; returns the
    /// plaintext taken. What rustls held from before goes out first, and no new plaintext is
    /// taken until it has.
    pub fn write(&mut self, buf: &Buffer, skip: usize) -> io::Result<Io> {
        if self.plain {
            return buf.write_to(skip, &mut self.tcp);
        }
        if self.flush()? == Io::Blocked {
            return Ok(Io::Blocked);
        }
        let data = &buf.data()[skip..];
        let taken = match data.is_empty() {
            true => 0,
            false => self.tls.writer().write(data)?,
        };
        self.flush()?;
        Ok(Io::Moved(taken))
    }

    /// Writes rustls's records until the socket blocks or none are left; after close_notify
    /// has gone out, ends the socket's write side.
    fn flush(&mut self) -> io::Result<Io> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Ok(Io::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Io::Blocked),
                Err(e) => return Err(e),
            }
        }
        if self.closing {
            self.closing = false;
            self.tcp.shutdown(std::net::Shutdown::Write)?;
        }
        Ok(Io::Moved(0))
    }

    /// Decrypted bytes wait, the socket may hold more records than the last read took, or the
    /// peer's close_notify is still to be reported (the pump stops reading once it is).
    pub fn buffered_input(&self) -> bool {
        !self.plain && (!self.drained || self.plaintext > 0 || self.peer_closed)
    }

    pub fn pending_output(&self) -> bool {
        !self.plain && self.tls.wants_write()
    }

    /// Ends our sending side: close_notify, then the socket's own end once rustls has flushed
    /// it (now, or from a later `write`: `pending_output` holds the connection open till then).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if self.plain {
            return self.tcp.shutdown(std::net::Shutdown::Write);
        }
        self.tls.send_close_notify();
        self.closing = true;
        self.flush().map(|_| ())
    }

    /// The handshake just finished (reported once).
    pub fn finished_handshake(&mut self) -> Option<Handshake> {
        if self.reported || self.plain || self.tls.is_handshaking() {
            return None;
        }
        self.reported = true;
        if let Connection::Server(server) = &self.tls {
            let leaf = server.peer_certificates().and_then(|chain| chain.first());
            self.client_subject = leaf.map(|cert| subject_of(cert).into());
        }
        Some(Handshake {
            tls13: self.tls.protocol_version() == Some(ProtocolVersion::TLSv1_3),
            resumed: self.tls.handshake_kind() == Some(HandshakeKind::Resumed),
        })
    }

    /// The subject of the certificate the client proved it holds, if it sent one.
    pub fn client_subject(&self) -> Option<&str> {
        self.client_subject.as_deref()
    }

    /// The name the client asked for (SNI), when it sent one.
    pub fn sni(&self) -> Option<&str> {
        match &self.tls {
            Connection::Server(server) => server.server_name(),
            Connection::Client(_) => None,
        }
    }

    /// Bytes arrived but the handshake has not finished (a close now is a failed one).
    pub fn in_handshake(&self) -> bool {
        self.started && !self.plain && self.tls.is_handshaking()
    }

    /// The client sent plain HTTP to this TLS port.
    pub fn spoke_plain(&self) -> bool {
        self.plain
    }

    pub fn session(&self) -> Option<Session<'_>> {
        if self.plain || self.tls.is_handshaking() {
            return None;
        }
        let version = match self.tls.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "-",
        };
        let cipher = (self.tls.negotiated_cipher_suite())
            .and_then(|s| s.suite().as_str())
            .unwrap_or("-");
        Some(Session {
            version,
            cipher,
            sni: match &self.tls {
                Connection::Server(server) => server.server_name(),
                Connection::Client(_) => None,
            },
            resumed: self.tls.handshake_kind() == Some(HandshakeKind::Resumed),
        })
    }
}

/// A certificate's subject as a header may carry it (`CN=alice,O=Example`): bytes outside
/// visible ASCII become `?`, so no certificate can put a line break into a request head.
fn subject_of(cert: &rustls::pki_types::CertificateDer) -> String {
    let subject = match x509_parser::parse_x509_certificate(cert) {
        Ok((_, cert)) => cert.subject().to_string(),
        Err(_) => String::new(),
    };
    let visible = |c: char| c.is_ascii_graphic() || c == ' ';
    subject
        .chars()
        .map(|c| if visible(c) { c } else { '?' })
        .collect()
}

/// A rustls error in words for the log and the metric, without allocating.
fn reason(e: &rustls::Error) -> &'static str {
    use rustls::Error;
    match e {
        Error::InvalidMessage(_) => "malformed record or message",
        Error::PeerIncompatible(_) => "no protocol version or cipher suite in common",
        Error::NoApplicationProtocol => "no ALPN protocol in common (lb-mio speaks http/1.1)",
        Error::AlertReceived(_) => "the peer sent an alert",
        Error::DecryptError => "a record failed to decrypt",
        Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => {
            "an unexpected message"
        }
        Error::PeerMisbehaved(_) => "the peer broke the protocol",
        Error::NoCertificatesPresented | Error::InvalidCertificate(_) => {
            "the peer's certificate is not accepted"
        }
        _ => "protocol error",
    }
}
