//! Starting lb-mio: bind one `SO_REUSEPORT` listener per worker, then start the workers and the
//! health thread. Everything that can fail at start fails here, before any thread runs.

use crate::admin;
use crate::config::Config;
use crate::health;
use crate::pool;
use crate::shared::{Shared, Snapshot};
use crate::state_file;
use crate::worker::{Handle, Msg, Worker};
use log::info;
use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| BindError::Socket(addr, e))?;
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
    socket
        .set_nonblocking(true)
        .map_err(|e| BindError::Listen(addr, e))?;
    Ok(TcpListener::from_std(socket.into()))
}

/// A started lb-mio: its threads run until the process ends.
pub struct Running {
    pub addr: SocketAddr,
    /// Where the admin listener listens, when it is on.
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    workers: Vec<(Handle, JoinHandle<()>)>,
}

impl Running {
    /// Graceful stop: every worker stops accepting and closes its idle connections; requests
    /// in flight finish, up to `drain_timeout_s`. Returns once every worker is done.
    pub fn stop(self) {
        let drain = self.shared.load().config.lb.drain_timeout;
        let deadline = Instant::now() + drain;
        for (handle, _) in &self.workers {
            handle.send(Msg::Stop { deadline });
        }
        for (_, thread) in self.workers {
            let _ = thread.join();
        }
    }
}

/// Binds every listener, then starts the workers and the health thread.
pub fn start(mut config: Config) -> Result<Running, Box<dyn std::error::Error>> {
    if let Some(path) = &config.admin.state_file {
        if let Some(backends) = state_file::load(path)? {
            info!(
                "{} backends from the state file {}",
                backends.len(),
                path.display()
            );
            config.backends = backends;
        }
    }
    let listeners = bind_all(config.lb.listen, config.lb.workers)?;
    let addr = listeners[0].local_addr()?;
    let backends = pool::from_config(&config.backends);
    let workers = config.lb.workers;
    let shared = Arc::new(Shared::new(Snapshot::new(config, backends), workers));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut workers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let metrics = Arc::clone(&shared.metrics[i]);
        let (worker, handle) =
            Worker::new(listener, Arc::clone(&shared), metrics, seed ^ i as u64)?;
        let thread = thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || worker.run())?;
        workers.push((handle, thread));
    }
    health::spawn(Arc::clone(&shared))?;
    let admin = shared.load().config.admin.clone();
    let mut admin_addr = None;
    if let Some(listen) = admin.listen {
        let bound = admin::spawn(Arc::clone(&shared), listen, admin.token)
            .map_err(|e| format!("cannot start the admin listener on {listen}: {e}"))?;
        info!("admin API listening on http://{bound}/");
        admin_addr = Some(bound);
    }
    let snap = shared.load();
    info!(
        "lb-mio listening on {addr}: {} workers, {} strategy, {} backends",
        snap.config.lb.workers,
        snap.config.lb.strategy.name(),
        snap.backends.len()
    );
    Ok(Running {
        addr,
        admin_addr,
        shared,
        workers,
    })
}

/// One listener per worker. With port 0 the first bind picks the port and the rest share it.
fn bind_all(
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<TcpListener>, Box<dyn std::error::Error>> {
    let first = bind(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind(addr)?);
    }
    Ok(listeners)
}
