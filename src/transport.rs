//! A byte stream of the pump's: the client's, or a backend's. The pump reads and writes both
//! only through `Transport`, so TLS sits between a socket and the pump's buffers without the
//! pump, its phases or the HTTP code learning about it.
//!
//! Two things a transport may do that a plain socket does not, and the pump allows for both:
//! hold input that is ready with no new socket event to come (`buffered_input`: records already
//! decrypted, or a socket not yet drained), and accept a write before the socket takes it
//! (`pending_output`: bytes that must still be flushed before the connection can end).

use crate::buffer::{Buffer, Io};
use crate::tls::{Handshake, Session, TlsStream};
use crate::token::Readiness;
use mio::net::TcpStream;
use socket2::SockRef;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

/// A client connection's byte stream.
pub enum Transport {
    /// Bytes straight to and from the TCP socket.
    Plain(TcpStream),
    /// TLS records on the socket, plaintext for the pump.
    Tls(Box<TlsStream>),
}

impl Transport {
    /// One read into `buf`'s free space (callers check it has room). TLS may answer
    /// `Io::Moved(0)`: records taken in, no plaintext yet.
    pub fn read(&mut self, buf: &mut Buffer) -> io::Result<Io> {
        match self {
            Transport::Plain(stream) => buf.read_from(stream),
            Transport::Tls(tls) => tls.read(buf),
        }
    }

    /// One read of what the socket holds, in clear whatever the transport: a PROXY protocol
    /// header comes before any TLS.
    pub fn read_clear(&mut self, buf: &mut Buffer) -> io::Result<Io> {
        buf.read_from(self.socket())
    }

    /// Hands the transport what came behind the PROXY header (`take_early`); true if it took
    /// them (TLS records), false if they stay for the pump.
    pub fn take_early(&mut self, early: &[u8]) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(false),
            Transport::Tls(tls) => tls.take_early(early),
        }
    }

    /// One write of `buf`'s held bytes; the caller consumes what moved.
    pub fn write(&mut self, buf: &Buffer) -> io::Result<Io> {
        self.write_from(buf, 0)
    }

    /// One write of `buf`'s held bytes after the first `skip` (a request kept for a replay).
    pub fn write_from(&mut self, buf: &Buffer, skip: usize) -> io::Result<Io> {
        match self {
            Transport::Plain(stream) => buf.write_to(skip, stream),
            Transport::Tls(tls) => tls.write(buf, skip),
        }
    }

    /// Input is ready inside the transport, whatever the socket reports.
    pub fn buffered_input(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(tls) => tls.buffered_input(),
        }
    }

    /// The transport holds written bytes the socket has not taken yet.
    pub fn pending_output(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(tls) => tls.pending_output(),
        }
    }

    /// Ends our sending side (after the last response), keeping the receiving side open.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.shutdown(Shutdown::Write),
            Transport::Tls(tls) => tls.shutdown_write(),
        }
    }

    /// Makes the coming close a reset (RST, `SO_LINGER` 0) rather than an orderly end.
    pub fn abort(&mut self) {
        // Failing leaves an orderly close: the reset is the better answer, not the only one.
        let _ = SockRef::from(&*self.socket()).set_linger(Some(Duration::ZERO));
    }

    /// The address the client connected to.
    pub fn local_addr(&mut self) -> io::Result<SocketAddr> {
        self.socket().local_addr()
    }

    /// The socket underneath, for registering with the event loop.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(stream) => stream,
            Transport::Tls(tls) => tls.socket(),
        }
    }

    /// The TLS handshake just finished (once per connection).
    pub fn finished_handshake(&mut self) -> Option<Handshake> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => tls.finished_handshake(),
        }
    }

    /// A TLS handshake began and has not finished.
    pub fn in_handshake(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.in_handshake())
    }

    /// A TLS handshake to a backend, moved along (`TlsStream::handshake`); plain: nothing to do.
    pub fn handshake(&mut self, ready: &mut Readiness) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(false),
            Transport::Tls(tls) => tls.handshake(ready),
        }
    }

    /// The peer's end was an orderly one: always for TCP; over TLS, a close_notify.
    pub fn closed_cleanly(&self) -> bool {
        match self {
            Transport::Plain(_) => true,
            Transport::Tls(tls) => tls.closed_cleanly(),
        }
    }

    /// The client sent plain HTTP to a TLS listener.
    pub fn spoke_plain_to_tls(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.spoke_plain())
    }

    /// Requests arrive encrypted (over an established TLS session).
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(tls) if !tls.spoke_plain())
    }

    /// The subject of the client's certificate (TLS, when it sent one).
    pub fn client_subject(&self) -> Option<&str> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => tls.client_subject(),
        }
    }

    /// The name a TLS client asked for (SNI).
    pub fn sni(&self) -> Option<&str> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => tls.sni(),
        }
    }

    /// The TLS session, for the access log.
    pub fn session(&self) -> Option<Session<'_>> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => tls.session(),
        }
    }
}
