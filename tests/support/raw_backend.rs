//! A bare loopback server: each accepted connection goes to the test's handler as a socket, on a
//! thread of its own. `Backend` speaks HTTP on top of it; tests that need to misbehave below
//! HTTP (reset, never answer, record raw bytes) use it directly.

use super::IO_TIMEOUT;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What the acceptor and the connection threads share.
#[derive(Default)]
struct Conns {
    stop: AtomicBool,
    /// A clone of each open connection by index, to shut them down on stop.
    open: Mutex<Vec<(usize, TcpStream)>>,
    /// Every accepted connection.
    accepted: AtomicUsize,
    /// Connections whose handler still runs.
    live: AtomicUsize,
}

/// A loopback server that hands each accepted connection (read and write timeouts
/// `IO_TIMEOUT`, no Nagle delay) and its index in accept order to its handler, on a thread of
/// its own. When the handler returns, the connection closes (with a reset if the handler set
/// SO_LINGER 0). On `stop` or drop the listener closes and every connection still open is
/// shut down.
pub struct RawBackend {
    pub addr: SocketAddr,
    conns: Arc<Conns>,
    acceptor: Option<JoinHandle<()>>,
}

impl RawBackend {
    /// Listens on `127.0.0.1:0`; `handler` gets each connection.
    pub fn start(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> RawBackend {
        RawBackend::start_at("127.0.0.1:0", "raw", move |stream, _| handler(stream))
    }

    /// Listens on `addr` (e.g. `[::1]:0`); `name` names its threads.
    pub fn start_at(
        addr: &str,
        name: &str,
        handler: impl Fn(TcpStream, usize) + Send + Sync + 'static,
    ) -> RawBackend {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("backend addr");
        let conns = Arc::new(Conns::default());
        let shared = Arc::clone(&conns);
        let name = name.to_string();
        let acceptor = thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || accept_loop(listener, &name, shared, Arc::new(handler)))
            .expect("spawn backend");
        RawBackend {
            addr,
            conns,
            acceptor: Some(acceptor),
        }
    }

    /// Connections accepted so far (health probes included).
    pub fn accepted(&self) -> usize {
        self.conns.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now (their handler still runs).
    pub fn open_connections(&self) -> usize {
        self.conns.live.load(Ordering::SeqCst)
    }

    /// Stops accepting (the port then refuses connections) and shuts down every open connection.
    pub fn stop(&mut self) {
        self.conns.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            // Wake the blocking accept.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = acceptor.join();
        }
        for (_, stream) in self.conns.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

type Handler = Arc<dyn Fn(TcpStream, usize) + Send + Sync>;

fn accept_loop(listener: TcpListener, name: &str, conns: Arc<Conns>, handler: Handler) {
    for _ in 0..1_000_000 {
        let accepted = listener.accept();
        if conns.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let index = conns.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_nodelay(true);
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        conns.open.lock().unwrap().push((index, clone));
        conns.live.fetch_add(1, Ordering::SeqCst);
        let (shared, handler) = (Arc::clone(&conns), Arc::clone(&handler));
        let spawned = thread::Builder::new()
            .name(format!("backend-{name}-conn"))
            .spawn(move || {
                handler(stream, index);
                shared.close(index);
            });
        if spawned.is_err() {
            conns.close(index);
        }
    }
}

impl Conns {
    /// Drops the clone kept for `stop`, so the socket closes now.
    fn close(&self, index: usize) {
        self.open.lock().unwrap().retain(|(i, _)| *i != index);
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}
