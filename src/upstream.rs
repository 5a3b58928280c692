//! A worker's upstream connections: the ones in use by client connections and the idle
//! upstream connections, kept per backend so most requests skip the TCP handshake, within a
//! limit per backend and one over all backends (the least recently used goes first).

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
    /// Its places in the idle lists (`ALL`, `BACKEND`) while it waits idle.
    links: [Links; 2],
}

/// Idle connections kept per worker: `per_backend` for each backend, `total` over all of them
/// (with thousands of backends, the first bound alone would allow millions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub per_backend: usize,
    pub total: usize,
}

/// No connection (the end of an idle list).
const NONE: usize = usize::MAX;

/// Which idle list a link belongs to: every idle connection is in both.
const ALL: usize = 0;
const BACKEND: usize = 1;

/// An idle connection's neighbours in one idle list.
#[derive(Debug, Clone, Copy)]
struct Links {
    older: usize,
    newer: usize,
}

/// Idle connections, least recently used first, linked through the slab: adding, taking one
/// out and finding the oldest are O(1), and an empty list is three words.
#[derive(Debug, Clone, Copy)]
struct IdleList {
    oldest: usize,
    newest: usize,
    len: usize,
}

impl IdleList {
    const EMPTY: IdleList = IdleList {
        oldest: NONE,
        newest: NONE,
        len: 0,
    };

    fn push(&mut self, slab: &mut Slab<Upstream>, which: usize, id: usize) {
        slab[id].links[which] = Links {
            older: self.newest,
            newer: NONE,
        };
        match self.newest {
            NONE => self.oldest = id,
            newest => slab[newest].links[which].newer = id,
        }
        self.newest = id;
        self.len += 1;
    }

    fn unlink(&mut self, slab: &mut Slab<Upstream>, which: usize, id: usize) {
        let Links { older, newer } = slab[id].links[which];
        match older {
            NONE => self.oldest = newer,
            older => slab[older].links[which].newer = newer,
        }
        match newer {
            NONE => self.newest = older,
            newer => slab[newer].links[which].older = older,
        }
        self.len -= 1;
    }
}

pub struct Upstreams {
    slab: Slab<Upstream>,
    /// Idle connections by backend id.
    idle: Vec<IdleList>,
    /// Every idle connection, whatever its backend.
    all_idle: IdleList,
    /// By backend id: bumped each time the slot takes a new backend (`renew`).
    generations: Vec<u64>,
    keep: Keep,
}

impl Upstreams {
    pub fn new(backends: usize, keep: Keep) -> Upstreams {
        Upstreams {
            slab: Slab::new(),
            idle: vec![IdleList::EMPTY; backends],
            all_idle: IdleList::EMPTY,
            generations: vec![0; backends],
            keep,
        }
    }

    /// Makes room for backends added since, and takes the new idle limits: idle connections
    /// over them are closed, the least recently used first.
    pub fn resize(&mut self, registry: &Registry, backends: usize, keep: Keep) {
        self.idle.resize(backends, IdleList::EMPTY);
        self.generations.resize(backends, 0);
        self.keep = keep;
        for backend in 0..backends {
            self.trim(registry, backend);
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

    /// Connection `id` is plain TCP (its bytes may be spliced).
    pub fn plain(&self, id: usize) -> bool {
        !self.slab[id].stream.is_tls()
    }

    /// The connection for an event's token, if it still exists.
    pub fn try_get(&mut self, id: usize) -> Option<&mut Upstream> {
        self.slab.get_mut(id)
    }

    /// An idle connection to `backend`, now owned by connection `owner`.
    pub fn checkout(&mut self, backend: usize, owner: usize) -> Option<usize> {
        let id = Some(self.idle[backend].newest).filter(|&id| id != NONE)?;
        self.wake(id);
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
            links: [Links {
                older: NONE,
                newer: NONE,
            }; 2],
        });
        Ok(id)
    }

    /// Gives a connection back: kept idle for reuse when `reusable`, else closed. Past either
    /// idle limit, the least recently used idle connection goes.
    pub fn release(&mut self, registry: &Registry, id: usize, reusable: bool) {
        let backend = self.slab[id].backend;
        let current = self.slab[id].generation == self.generations[backend];
        if reusable && current && self.nothing_unread(id) {
            self.slab[id].owner = None;
            self.idle[backend].push(&mut self.slab, BACKEND, id);
            self.all_idle.push(&mut self.slab, ALL, id);
            self.trim(registry, backend);
        } else {
            self.close(registry, id);
        }
    }

    /// A connection handed back still readable (a spliced body stops at its last byte, with no
    /// read that found the socket empty) may hold bytes the backend sent past the response;
    /// it is kept only if a peek finds none, as no later event would tell of them.
    fn nothing_unread(&mut self, id: usize) -> bool {
        let upstream = &mut self.slab[id];
        if !upstream.ready.readable || upstream.stream.is_tls() {
            return true;
        }
        let empty = matches!(upstream.stream.socket().peek(&mut [0; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        upstream.ready.readable = !empty;
        empty
    }

    /// Closes the oldest idle connections while `backend` or the worker has more than kept.
    fn trim(&mut self, registry: &Registry, backend: usize) {
        while self.idle[backend].len > self.keep.per_backend {
            self.close_one_idle(registry, self.idle[backend].oldest);
        }
        while self.all_idle.len > self.keep.total {
            self.close_one_idle(registry, self.all_idle.oldest);
        }
    }

    /// Idle connection `id` leaves the idle lists (to be used, or closed).
    fn wake(&mut self, id: usize) {
        let backend = self.slab[id].backend;
        self.idle[backend].unlink(&mut self.slab, BACKEND, id);
        self.all_idle.unlink(&mut self.slab, ALL, id);
    }

    fn close_one_idle(&mut self, registry: &Registry, id: usize) {
        self.wake(id);
        self.close(registry, id);
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
            _ => self.close_one_idle(registry, id),
        }
    }

    /// Closes every idle connection to `backend`.
    pub fn close_idle(&mut self, registry: &Registry, backend: usize) {
        while self.idle[backend].len > 0 {
            self.close_one_idle(registry, self.idle[backend].newest);
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

    fn keep(per_backend: usize, total: usize) -> Keep {
        Keep { per_backend, total }
    }

    #[test]
    fn a_reused_slot_never_keeps_an_idle_connection_to_its_old_backend() {
        let poll = mio::Poll::new().unwrap();
        let registry = poll.registry();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut upstreams = Upstreams::new(1, keep(8, 100));
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
        let mut upstreams = Upstreams::new(1, keep(8, 100));
        let ids: Vec<usize> = (0..3)
            .map(|owner| upstreams.connect(registry, 0, addr, owner, None).unwrap())
            .collect();
        for &id in &ids {
            upstreams.release(registry, id, true);
        }
        upstreams.resize(registry, 1, keep(1, 100));
        assert!(upstreams.try_get(ids[0]).is_none() && upstreams.try_get(ids[1]).is_none());
        assert_eq!(upstreams.checkout(0, 9), Some(ids[2]));
        upstreams.release(registry, ids[2], true);
        upstreams.resize(registry, 1, keep(0, 100));
        assert_eq!(upstreams.checkout(0, 9), None, "keep 0 keeps nothing idle");
    }

    #[test]
    fn past_the_worker_limit_the_least_recently_used_of_any_backend_goes() {
        let poll = mio::Poll::new().unwrap();
        let registry = poll.registry();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut upstreams = Upstreams::new(3, keep(8, 2));
        let ids: Vec<usize> = (0..3)
            .map(|backend| upstreams.connect(registry, backend, addr, 1, None).unwrap())
            .collect();
        // Idle in the order 1, 0, 2: the third to go idle closes backend 1's.
        for backend in [1, 0, 2] {
            upstreams.release(registry, ids[backend], true);
        }
        assert!(upstreams.try_get(ids[1]).is_none());
        assert_eq!(upstreams.checkout(1, 9), None);
        // Backend 0's, used again, is the newest once back: backend 2's goes next.
        assert_eq!(upstreams.checkout(0, 9), Some(ids[0]));
        upstreams.release(registry, ids[0], true);
        let again = upstreams.connect(registry, 1, addr, 1, None).unwrap();
        upstreams.release(registry, again, true);
        assert!(upstreams.try_get(ids[2]).is_none());
        assert_eq!(upstreams.checkout(0, 9), Some(ids[0]));
        assert_eq!(upstreams.checkout(1, 9), Some(again));
    }
}
