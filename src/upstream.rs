//! A worker's upstream connections: the ones in use by client connections and the idle
//! upstream connections, kept per backend so most requests skip the TCP handshake.

use crate::tls;
use crate::token::{Readiness, Tok};
use crate::transport::Transport;
use mio::net::TcpStream;
use mio::{Interest, Registry};
use slab::Slab;
use std::io::{self, Read};
use std::net::SocketAddr;

/// One connection to a backend.
pub struct Upstream {
    pub stream: Transport,
    pub backend: usize,
    pub ready: Readiness,
    /// The client connection using it; `None` while it waits idle.
    pub owner: Option<usize>,
    /// The handshake has completed.
    pub connected: bool,
    /// It was an idle connection, reused (a failure may just mean the backend closed it
    /// meanwhile).
    pub reused: bool,
    /// The slot's generation when it was opened: a connection to a backend whose slot has
    /// since taken another backend is closed on release, never kept idle for the new one.
    generation: u64,
}

pub struct Upstreams {
    slab: Slab<Upstream>,
    /// Idle connections by backend id, most recently used last.
    idle: Vec<Vec<usize>>,
    /// By backend id: bumped each time the slot takes a new backend (`renew`).
    generations: Vec<u64>,
    /// Most idle connections kept per backend.
    keep: usize,
}

impl Upstreams {
    pub fn new(backends: usize, keep: usize) -> Upstreams {
        Upstreams {
            slab: Slab::new(),
            idle: vec![Vec::new(); backends],
            generations: vec![0; backends],
            keep,
        }
    }

    /// Makes room for backends added since, and takes the new idle limit: idle connections
    /// over it are closed, the least recently used first.
    pub fn resize(&mut self, registry: &Registry, backends: usize, keep: usize) {
        self.idle.resize_with(backends, Vec::new);
        self.generations.resize(backends, 0);
        self.keep = keep;
        for backend in 0..backends {
            while self.idle[backend].len() > keep {
                let oldest = self.idle[backend].remove(0);
                self.close(registry, oldest);
            }
        }
    }

    /// Slot `backend` took a new backend (another address): its idle connections lead to the
    /// old one, so they are closed, and those still in use will be closed when released.
    pub fn renew(&mut self, registry: &Registry, backend: usize) {
        self.close_idle(registry, backend);
        self.generations[backend] += 1;
    }

    pub fn get(&mut self, id: usize) -> &mut Upstream {
        &mut self.slab[id]
    }

    /// The connection for an event's token, if it still exists.
    pub fn try_get(&mut self, id: usize) -> Option<&mut Upstream> {
        self.slab.get_mut(id)
    }

    /// An idle connection to `backend`, now owned by connection `owner`.
    pub fn checkout(&mut self, backend: usize, owner: usize) -> Option<usize> {
        let id = self.idle[backend].pop()?;
        let upstream = &mut self.slab[id];
        upstream.owner = Some(owner);
        upstream.reused = true;
        Some(id)
    }

    /// Starts a non-blocking connect; the first writable event tells how it went. With `tls`
    /// (the client config and the name the backend's certificate must have) the handshake
    /// follows the connect, its records carried by the pump's reads and writes.
    pub fn connect(
        &mut self,
        registry: &Registry,
        backend: usize,
        addr: SocketAddr,
        owner: usize,
        tls: Option<(&tls::Client, &str)>,
    ) -> io::Result<usize> {
        let tcp = TcpStream::connect(addr)?;
        // A head or a body tail goes out in one write; Nagle would hold it back for an ACK.
        tcp.set_nodelay(true)?;
        let mut stream = match tls {
            None => Transport::Plain(tcp),
            Some((client, name)) => Transport::Tls(Box::new(
                client.connect(tcp, name).map_err(io::Error::other)?,
            )),
        };
        let entry = self.slab.vacant_entry();
        let id = entry.key();
        registry.register(
            stream.socket(),
            Tok::Upstream(id).into(),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Upstream {
            stream,
            backend,
            ready: Readiness::default(),
            owner: Some(owner),
            connected: false,
            reused: false,
            generation: self.generations[backend],
        });
        Ok(id)
    }

    /// Gives a connection back: kept idle for reuse when `reusable` and its backend has fewer
    /// than the limit idle, else closed.
    pub fn release(&mut self, registry: &Registry, id: usize, reusable: bool) {
        let backend = self.slab[id].backend;
        let current = self.slab[id].generation == self.generations[backend];
        if reusable && current && self.idle[backend].len() < self.keep {
            self.slab[id].owner = None;
            self.idle[backend].push(id);
        } else {
            self.close(registry, id);
        }
    }

    /// An event on an idle connection: the backend closed it or sent something unasked.
    /// Either way it can no longer be trusted with a request, unless the event was spurious.
    /// (Over TLS a byte cannot be looked at alone: any readable event closes it.)
    pub fn on_idle_event(&mut self, registry: &Registry, id: usize) {
        let mut probe = [0u8; 1];
        let stream = &mut self.slab[id].stream;
        let read = match stream.is_tls() {
            true => Ok(0),
            false => stream.socket().read(&mut probe),
        };
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => {
                let backend = self.slab[id].backend;
                self.idle[backend].retain(|&idle| idle != id);
                self.close(registry, id);
            }
        }
    }

    /// Closes every idle connection to `backend`.
    pub fn close_idle(&mut self, registry: &Registry, backend: usize) {
        for id in std::mem::take(&mut self.idle[backend]) {
            self.close(registry, id);
        }
    }

    pub fn close(&mut self, registry: &Registry, id: usize) {
        let mut upstream = self.slab.remove(id);
        // Deregistering can only fail if the socket is already gone from the poll set.
        let _ = registry.deregister(upstream.stream.socket());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_never_keeps_an_idle_connection_to_its_old_backend() {
        let poll = mio::Poll::new().unwrap();
        let registry = poll.registry();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut upstreams = Upstreams::new(1, 8);
        let idle = upstreams.connect(registry, 0, addr, 1, None).unwrap();
        let busy = upstreams.connect(registry, 0, addr, 2, None).unwrap();
        upstreams.release(registry, idle, true);
        // Slot 0 takes another backend: the idle connection closes at once, the busy one
        // when it is released.
        upstreams.renew(registry, 0);
        assert!(upstreams.try_get(idle).is_none());
        upstreams.release(registry, busy, true);
        assert!(upstreams.try_get(busy).is_none());
        assert_eq!(upstreams.checkout(0, 3), None);
        // Connections to the new backend are kept idle as usual.
        let fresh = upstreams.connect(registry, 0, addr, 4, None).unwrap();
        upstreams.release(registry, fresh, true);
        assert_eq!(upstreams.checkout(0, 5), Some(fresh));
    }

    #[test]
    fn a_lower_idle_limit_closes_the_least_recently_used_first() {
        let poll = mio::Poll::new().unwrap();
        let registry = poll.registry();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut upstreams = Upstreams::new(1, 8);
        let ids: Vec<usize> = (0..3)
            .map(|owner| upstreams.connect(registry, 0, addr, owner, None).unwrap())
            .collect();
        for &id in &ids {
            upstreams.release(registry, id, true);
        }
        upstreams.resize(registry, 1, 1);
        assert!(upstreams.try_get(ids[0]).is_none() && upstreams.try_get(ids[1]).is_none());
        assert_eq!(upstreams.checkout(0, 9), Some(ids[2]));
        upstreams.release(registry, ids[2], true);
        upstreams.resize(registry, 1, 0);
        assert_eq!(upstreams.checkout(0, 9), None, "keep 0 keeps nothing idle");
    }
}
