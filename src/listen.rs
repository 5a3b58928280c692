//! The listening sockets: every one lb-mio binds (the workers' on each `listen` address, the
//! admin API's, the demo backends') allows other sockets on the same address
//! (`SO_REUSEPORT`), so each worker accepts on its own and a new process can bind beside a
//! running one during an upgrade.

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Which step of binding a listener failed, and on which address.
#[derive(Debug)]
pub enum BindError {
    Socket(SocketAddr, io::Error),
    ReusePort(SocketAddr, io::Error),
    Bind(SocketAddr, io::Error),
    Listen(SocketAddr, io::Error),
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            BindError::Socket(a, e) => write!(f, "cannot create a socket for {a}: {e}"),
            BindError::ReusePort(a, e) => write!(f, "cannot set SO_REUSEPORT for {a}: {e}"),
            BindError::Bind(a, e) => write!(f, "cannot bind {a}: {e}"),
            BindError::Listen(a, e) => write!(f, "cannot listen on {a}: {e}"),
        }
    }
}

impl std::error::Error for BindError {}

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 1024;

/// A non-blocking listener that other sockets can bind to the same address (`SO_REUSEPORT`),
/// so each worker accepts on its own and the kernel spreads connections over them.
pub fn bind(addr: SocketAddr, v6_only: bool) -> Result<TcpListener, BindError> {
    let socket = reusable(addr, v6_only)?;
    socket
        .set_nonblocking(true)
        .map_err(|e| BindError::Listen(addr, e))?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A blocking listener with `SO_REUSEPORT`, for a thread that waits in `accept`.
pub fn bind_blocking(addr: SocketAddr, v6_only: bool) -> Result<std::net::TcpListener, BindError> {
    reusable(addr, v6_only).map(Into::into)
}

/// A listening socket on `addr` with `SO_REUSEPORT`.
fn reusable(addr: SocketAddr, v6_only: bool) -> Result<Socket, BindError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| BindError::Socket(addr, e))?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(v6_only)
            .map_err(|e| BindError::Socket(addr, e))?;
    }
    socket
        .set_reuse_address(true)
        .and_then(|()| socket.set_reuse_port(true))
        .map_err(|e| BindError::ReusePort(addr, e))?;
    socket
        .bind(&addr.into())
        .map_err(|e| BindError::Bind(addr, e))?;
    socket
        .listen(BACKLOG)
        .map_err(|e| BindError::Listen(addr, e))?;
    Ok(socket)
}
