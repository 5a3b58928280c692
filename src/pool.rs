//! The backend pool that every thread shares: read-mostly records whose changing parts are
//! atomics, so workers pick and count without a lock.

use crate::config::BackendConf;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// One backend server.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Flipped by the health thread; workers only read it.
    up: AtomicBool,
    /// Requests in flight on this backend, over all workers (for `least_conn`).
    active: Padded,
}

/// A counter on a cache line of its own, so the workers that write it do not also invalidate
/// the line holding the read-mostly fields beside it.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicUsize);

impl Backend {
    pub fn new(conf: &BackendConf) -> Backend {
        Backend {
            name: conf.name.clone(),
            addr: conf.addr,
            weight: conf.weight,
            up: AtomicBool::new(true),
            active: Padded::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Sets the health flag; returns whether it changed.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }

    pub fn active(&self) -> usize {
        self.active.0.load(Ordering::Relaxed)
    }
}

/// All backends, in config order; a backend's position is its id in per-worker tables.
pub type Backends = Arc<[Arc<Backend>]>;

pub fn from_config(confs: &[BackendConf]) -> Backends {
    confs.iter().map(|c| Arc::new(Backend::new(c))).collect()
}

/// A request in flight on a backend: counted while the lease lives, so no path that ends a
/// request can forget to uncount it.
#[derive(Debug)]
pub struct Lease {
    pub id: usize,
    backend: Arc<Backend>,
}

impl Lease {
    pub fn new(backends: &Backends, id: usize) -> Lease {
        let backend = Arc::clone(&backends[id]);
        backend.active.0.fetch_add(1, Ordering::Relaxed);
        Lease { id, backend }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.active.0.fetch_sub(1, Ordering::Relaxed);
    }
}
