//! The client byte stream. The pump reads and writes the client only through `Transport`, so
//! another transport (TLS) can sit between the socket and the pump's buffers without the pump,
//! its phases or the HTTP code learning about it.
//!
//! Two things a transport may do that a plain socket does not, and the pump allows for both:
//! hold input that is ready with no new socket event to come (`buffered_input`: records already
//! decrypted), and accept a write before the socket takes it (`pending_output`: bytes that
//! must still be flushed before the connection can end).

use crate::buffer::{Buffer, Io};
use mio::net::TcpStream;
use socket2::SockRef;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

/// A client connection's byte stream.
pub enum Transport {
    /// Bytes straight to and from the TCP socket.
    Plain(TcpStream),
}

impl Transport {
    /// One read into `buf`'s free space (callers check it has room).
    pub fn read(&mut self, buf: &mut Buffer) -> io::Result<Io> {
        match self {
            Transport::Plain(stream) => buf.read_from(stream),
        }
    }

    /// One write of `buf`'s held bytes; the caller consumes what moved.
    pub fn write(&mut self, buf: &Buffer) -> io::Result<Io> {
        match self {
            Transport::Plain(stream) => buf.write_to(0, stream),
        }
    }

    /// Input is ready inside the transport, whatever the socket reports.
    pub fn buffered_input(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
        }
    }

    /// The transport holds written bytes the socket has not taken yet.
    pub fn pending_output(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
        }
    }

    /// Ends our sending side (after the last response), keeping the receiving side open.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.socket().shutdown(Shutdown::Write)
    }

    /// Makes the coming close a reset (RST, `SO_LINGER` 0) rather than an orderly end.
    pub fn abort(&mut self) {
        // Failing leaves an orderly close: the reset is the better answer, not the only one.
        let _ = SockRef::from(&*self.socket()).set_linger(Some(Duration::ZERO));
    }

    /// The address the client connected to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Plain(stream) => stream.local_addr(),
        }
    }

    /// The socket underneath, for registering with the event loop.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(stream) => stream,
        }
    }
}
