//! One worker thread: its own `mio::Poll`, its own `SO_REUSEPORT` listener, and everything its
//! connections touch (connection slab, buffer pool, upstream keep-alive pool). Nothing in here
//! is shared with other workers but the read-mostly backend pool.

use crate::accept::{self, Next};
use crate::access_log;
use crate::buffer::BufferPool;
use crate::config;
use crate::conn::{Admission, Conn, Ctx, Drive, Exchanges};
use crate::deadlines::Deadlines;
use crate::memory;
use crate::metrics::WorkerMetrics;
use crate::pipe::Pipes;
use crate::ratelimit::ConnLimit;
use crate::request_id::RequestIds;
use crate::shared::{Renumbering, Shared, Snapshot};
use crate::token::Tok;
use crate::transport::Transport;
use crate::upstream::{Keep, Upstreams};
use crossbeam_channel::{Receiver, Sender};
use log::{error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Waker};
use slab::Slab;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Free buffers a worker keeps for reuse.
const POOLED_BUFFERS: usize = 1024;

/// One worker's listener on one address.
pub struct Listener {
    pub socket: TcpListener,
    /// Clients connect with TLS.
    pub tls: bool,
}

/// What the main thread tells a worker.
#[derive(Debug, Clone, Copy)]
pub enum Msg {
    /// Stop accepting, close idle connections, let requests in flight finish until `deadline`.
    Stop { deadline: Instant },
}

/// The main thread's end of a worker: a message goes down the channel and the waker makes
/// the worker's `poll` return to read it.
pub struct Handle {
    tx: Sender<Msg>,
    waker: Arc<Waker>,
}

impl Handle {
    pub fn send(&self, msg: Msg) {
        // A worker that already exited has nothing left to stop.
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

pub struct Worker {
    poll: Poll,
    /// One per `listen` and `tls_listen` address; empty once the worker stopped accepting.
    listeners: Vec<Listener>,
    rx: Receiver<Msg>,
    /// Set when told to stop: the drain deadline.
    stopping: Option<Instant>,
    conns: Slab<Conn>,
    upstreams: Upstreams,
    buffers: BufferPool,
    /// Pipes for bodies spliced socket to socket.
    pipes: Pipes,
    exchanges: Exchanges,
    admission: Admission,
    ids: RequestIds,
    log: access_log::Writer,
    shared: Arc<Shared>,
    /// The snapshot this worker runs on, and the epoch it was taken at.
    snap: Arc<Snapshot>,
    epoch: u64,
    metrics: Arc<WorkerMetrics>,
    /// Connections that hit the per-event work cap and still have work.
    again: Vec<usize>,
    /// Accepting is paused until then (out of file descriptors).
    accept_paused_until: Option<Instant>,
    /// Accepting stopped at `max_connections`; a closed connection resumes it.
    at_limit: bool,
    /// `[tls] handshake_rate`: TLS connections this worker may still accept this second.
    handshakes: HandshakeBudget,
    /// When to look for connections whose deadline passed.
    deadlines: Deadlines,
    /// Reused list of connections whose deadline passed.
    expired: Vec<usize>,
    /// Most connections open at once since memory was last given back (`memory`).
    high_water: usize,
    /// The last loop turn with an event: the worker gives memory back once quiet.
    last_event: Instant,
    /// The port of the first TLS listener, where `[tls] redirect_http` sends plain requests.
    https_port: Option<u16>,
}

impl Worker {
    pub fn new(
        mut listeners: Vec<Listener>,
        shared: Arc<Shared>,
        metrics: Arc<WorkerMetrics>,
        index: usize,
        seed: u64,
    ) -> io::Result<(Worker, Handle)> {
        let poll = Poll::new()?;
        for (i, listener) in listeners.iter_mut().enumerate() {
            poll.registry().register(
                &mut listener.socket,
                Tok::Listener(i).into(),
                Interest::READABLE,
            )?;
        }
        let https_port = (listeners.iter().find(|l| l.tls))
            .and_then(|l| l.socket.local_addr().ok())
            .map(|addr| addr.port());
        let waker = Arc::new(Waker::new(poll.registry(), Tok::Waker.into())?);
        // A change wakes the worker too: it takes the new snapshot at once, not at its next event.
        shared.watch(Arc::clone(&waker));
        let (tx, rx) = crossbeam_channel::unbounded();
        let epoch = shared.epoch();
        let snap = shared.load();
        let keep = idle_keep(&snap.config.lb);
        metrics.grow(snap.backends.len());
        let now = Instant::now();
        let worker = Worker {
            poll,
            listeners,
            rx,
            stopping: None,
            conns: Slab::new(),
            upstreams: Upstreams::new(snap.backends.len(), keep),
            buffers: BufferPool::new(POOLED_BUFFERS),
            pipes: Pipes::new(snap.config.lb.workers),
            exchanges: Exchanges::default(),
            admission: Admission::new(&snap, index, seed ^ index as u64, now),
            ids: RequestIds::new(shared.id_prefix, index),
            log: access_log::Writer::new(now),
            shared,
            snap,
            epoch,
            metrics,
            again: Vec::new(),
            accept_paused_until: None,
            at_limit: false,
            handshakes: HandshakeBudget::default(),
            deadlines: Deadlines::new(now),
            expired: Vec::new(),
            high_water: 0,
            last_event: now,
            https_port,
        };
        Ok((worker, Handle { tx, waker }))
    }

    /// The event loop; runs until told to stop and drained.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!("worker poll failed: {e}");
                    return;
                }
            }
            let now = Instant::now();
            if !events.is_empty() {
                self.last_event = now;
            }
            self.refresh();
            for event in events.iter() {
                match Tok::from(event.token()) {
                    Tok::Listener(i) => self.accept(i, now),
                    Tok::Waker => self.on_messages(now),
                    Tok::Client(id) => {
                        if let Some(conn) = self.conns.get_mut(id) {
                            conn.ready.update(event);
                            self.drive(id, now);
                        }
                    }
                    Tok::Upstream(up) => self.on_upstream_event(up, event, now),
                }
            }
            for id in std::mem::take(&mut self.again) {
                self.drive(id, now);
            }
            self.on_timers(now);
            if self
                .stopping
                .is_some_and(|deadline| self.conns.is_empty() || now >= deadline)
            {
                self.close_all(now);
                self.log.flush(&self.shared.access_sink);
                info!("worker stopped with {} connections open", self.conns.len());
                return;
            }
        }
    }

    /// How long the loop may sleep: until the earliest thing it has to do without an event
    /// (a connection's deadline, the end of an accept pause or of the second whose TLS
    /// handshakes are spent, the access log's flush, the end of a drain, memory to give
    /// back), for good when there is none; not at all with connections still busy.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = [
            self.deadlines.next_scan(),
            self.accept_paused_until,
            self.handshakes.renews_at(),
            self.log.next_flush(),
            self.stopping,
            self.quiet_give_back_at(),
        ];
        let next = next.into_iter().flatten().min();
        next.map(|at| at.saturating_duration_since(now))
    }

    /// Does whatever came due by `now` (see `timeout`).
    fn on_timers(&mut self, now: Instant) {
        if self.deadlines.due(now) {
            self.expire(now);
        }
        let paused = self.accept_paused_until.is_some_and(|until| now >= until);
        let renewed = self.handshakes.renews_at().is_some_and(|at| now >= at);
        if paused || renewed {
            // Cleared first: with no listener left (stopping) nothing would clear them.
            self.accept_paused_until = None;
            self.handshakes.spent_out = false;
            self.accept_all(now);
        }
        self.log.tick(now, &self.shared.access_sink);
        self.give_back_memory(now);
    }

    fn on_messages(&mut self, now: Instant) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Stop { deadline } => self.stop(deadline, now),
            }
        }
    }

    /// Stops accepting and closes the connections waiting idle between requests; the others
    /// finish their request and close after its response.
    fn stop(&mut self, deadline: Instant, now: Instant) {
        self.stopping = Some(deadline);
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle())
            .map(|(id, _)| id)
            .collect();
        for id in idle {
            // A request that arrived but was not read yet is served (its response closes the
            // connection); only a connection with nothing to read is closed now.
            if let Some(conn) = self.conns.get_mut(id) {
                conn.ready.readable = true;
            }
            self.drive(id, now);
            if self.conns.get(id).is_some_and(Conn::is_idle) {
                self.with_conn(id, now, Conn::close);
            }
        }
    }

    /// Takes the new snapshot when a change bumped the epoch: one atomic load per loop turn.
    /// A slot that took a new backend (another `Arc` at the same id) loses the idle
    /// connections and the counters this worker kept for the old one.
    fn refresh(&mut self) {
        let epoch = self.shared.epoch();
        if epoch != self.epoch {
            let old = std::mem::replace(&mut self.snap, self.shared.load());
            self.epoch = epoch;
            let lb = &self.snap.config.lb;
            self.admission.renew(&self.snap, Instant::now());
            let (backends, keep) = (self.snap.backends.len(), idle_keep(lb));
            self.upstreams.resize(self.poll.registry(), backends, keep);
            self.metrics.grow(backends);
            if let Some(renumbering) = Renumbering::between(&old, &self.snap) {
                for (_, conn) in self.conns.iter_mut() {
                    conn.follow(&renumbering);
                }
            }
            let slots = old.backends.iter().zip(self.snap.backends.iter());
            for (id, (was, now)) in slots.enumerate() {
                if !Arc::ptr_eq(was, now) {
                    self.upstreams.renew(self.poll.registry(), id);
                    self.metrics.reset_backend(id);
                }
            }
        }
    }

    fn on_upstream_event(&mut self, up: usize, event: &mio::event::Event, now: Instant) {
        let Some(upstream) = self.upstreams.try_get(up) else {
            return;
        };
        upstream.ready.update(event);
        match upstream.owner {
            Some(id) => self.drive(id, now),
            None => self.upstreams.on_idle_event(self.poll.registry(), up),
        }
    }

    /// Accepts on every listener (after a pause or a stop at the connection limit).
    fn accept_all(&mut self, now: Instant) {
        for i in 0..self.listeners.len() {
            self.accept(i, now);
        }
    }

    /// Accepts on listener `i` until its queue is empty, the connection limit is reached,
    /// descriptors run out, or (TLS) the second's handshakes are spent.
    fn accept(&mut self, i: usize, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| now < until) {
            return;
        }
        self.accept_paused_until = None;
        let max = self.snap.config.limits.max_connections;
        let rate = self.snap.config.tls.handshake_rate;
        loop {
            self.at_limit = self.conns.len() >= max;
            let Some(listener) = self.listeners.get(i).filter(|_| !self.at_limit) else {
                return;
            };
            let tls = listener.tls;
            // At most 16 listeners.
            let index = i as u8;
            // Left in the kernel's queue, they are accepted when the budget renews (`renews_at`).
            if tls && !self.handshakes.has_room(rate, now) {
                return;
            }
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    if tls {
                        self.handshakes.spend();
                    }
                    self.add_conn(stream, peer, index, tls, now)
                }
                Err(e) => match accept::after_error(&e, now) {
                    Next::Retry => {}
                    Next::Wait => return,
                    Next::PauseUntil(until) => {
                        self.accept_paused_until = Some(until);
                        return;
                    }
                },
            }
        }
    }

    fn add_conn(
        &mut self,
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        listener: u8,
        tls: bool,
        now: Instant,
    ) {
        // A v4 client of a dual-stack listener shows as ::ffff:a.b.c.d; it is a.b.c.d.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let lb = &self.snap.config.lb;
        let proxied = lb.accept_proxy && lb.proxy_from.iter().any(|net| net.contains(peer.ip()));
        // A trusted balancer carries many clients: per-client caps cannot count its address.
        let limit = self.shared.conn_limit.as_ref().filter(|_| !proxied);
        let header = self.snap.config.timeouts.header;
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        if limit.is_some_and(|limit| !limit.open(peer.ip())) {
            let plain = Transport::Plain(stream);
            let conn = Conn::new(plain, peer, listener, proxied, now, header);
            entry.insert(conn);
            self.with_conn(id, now, Conn::refuse);
            return;
        }
        // Heads and small bodies go out in one write each; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let mut transport = match (tls, &self.shared.tls) {
            (true, Some(server)) => match server.accept(stream) {
                Ok(tls) => Transport::Tls(Box::new(tls)),
                Err(e) => {
                    warn!("TLS for {peer}: {e}");
                    return forget_count(limit, peer);
                }
            },
            _ => Transport::Plain(stream),
        };
        let token = Tok::Client(id).into();
        if let Err(e) = self.poll.registry().register(
            transport.socket(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register {peer}: {e}");
            return forget_count(limit, peer);
        }
        let mut conn = Conn::new(transport, peer, listener, proxied, now, header);
        conn.counted = limit.map(|_| peer.ip());
        self.deadlines.note(conn.deadline);
        entry.insert(conn);
        self.metrics.set_connections(self.conns.len());
        self.high_water = self.high_water.max(self.conns.len());
    }

    fn drive(&mut self, id: usize, now: Instant) {
        self.with_conn(id, now, Conn::drive);
    }

    /// Runs `step` on connection `id` with the worker's parts it needs, then acts on the outcome.
    fn with_conn(&mut self, id: usize, now: Instant, step: fn(&mut Conn, &mut Ctx) -> Drive) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let mut ctx = Ctx {
            registry: self.poll.registry(),
            buffers: &mut self.buffers,
            pipes: &mut self.pipes,
            upstreams: &mut self.upstreams,
            exchanges: &mut self.exchanges,
            snap: &self.snap,
            admission: &mut self.admission,
            ids: &mut self.ids,
            log: &mut self.log,
            sink: &self.shared.access_sink,
            stopping: self.stopping.is_some(),
            https_port: self.https_port,
            backend_tls: self.shared.backend_tls.as_ref(),
            metrics: &self.metrics,
            now,
            id,
        };
        let drive = step(conn, &mut ctx);
        if drive != Drive::Closed {
            self.deadlines.note(conn.deadline);
        }
        match drive {
            Drive::Open => {}
            Drive::Busy => self.again.push(id),
            Drive::Closed => {
                let mut conn = self.conns.remove(id);
                if let (Some(limit), Some(ip)) = (&self.shared.conn_limit, conn.counted) {
                    limit.close(ip);
                }
                self.metrics.set_connections(self.conns.len());
                let _ = self.poll.registry().deregister(conn.socket());
                if self.at_limit {
                    self.accept_all(now);
                }
            }
        }
    }

    /// Times out the connections whose deadline passed, and notes the earliest of the others'.
    fn expire(&mut self, now: Instant) {
        self.expired.clear();
        self.deadlines.scanning(now);
        for (id, conn) in self.conns.iter() {
            if conn.deadline <= now {
                self.expired.push(id);
            } else {
                self.deadlines.note(conn.deadline);
            }
        }
        for i in 0..self.expired.len() {
            self.with_conn(self.expired[i], now, Conn::expire);
        }
    }

    /// Gives memory back: its allocator's free pages once open connections fell by
    /// `GIVE_BACK_AFTER` since the last time; and once the worker is quiet after a burst, the
    /// free buffers and exchange records beyond what a quiet worker keeps as well.
    fn give_back_memory(&mut self, now: Instant) {
        let quiet = self.quiet_give_back_at().is_some_and(|at| now >= at);
        if quiet {
            self.buffers.shrink(memory::KEEP_WHEN_QUIET);
            self.exchanges.shrink(memory::KEEP_WHEN_QUIET);
        }
        if quiet || self.high_water.saturating_sub(self.conns.len()) >= memory::GIVE_BACK_AFTER {
            memory::give_back();
            self.high_water = self.conns.len();
        }
    }

    /// When a quiet worker gives memory back: `memory::QUIET` after its last event, if a
    /// burst left more free buffers, or more closed connections' heap, than it keeps.
    fn quiet_give_back_at(&self) -> Option<Instant> {
        let closed = self.high_water.saturating_sub(self.conns.len());
        let surplus =
            self.buffers.free() > memory::KEEP_WHEN_QUIET || closed > memory::KEEP_WHEN_QUIET;
        surplus.then_some(self.last_event + memory::QUIET)
    }

    /// The drain is over: whatever is still open closes now, each request with its line.
    fn close_all(&mut self, now: Instant) {
        let open: Vec<usize> = self.conns.iter().map(|(id, _)| id).collect();
        for id in open {
            self.with_conn(id, now, Conn::cut_short);
        }
    }
}

/// A connection counted in `client_connections` that will not run after all.
fn forget_count(limit: Option<&ConnLimit>, peer: SocketAddr) {
    if let Some(limit) = limit {
        limit.close(peer.ip());
    }
}

/// `[tls] handshake_rate`, counted per second of this worker's clock.
#[derive(Default)]
struct HandshakeBudget {
    second: Option<Instant>,
    spent: u32,
    /// The last accept found the budget spent: TLS listeners may have connections waiting.
    spent_out: bool,
}

impl HandshakeBudget {
    /// When a spent budget is renewed: the TLS listeners may have connections waiting.
    fn renews_at(&self) -> Option<Instant> {
        let second = self.second.filter(|_| self.spent_out)?;
        Some(second + Duration::from_secs(1))
    }

    /// Another TLS connection may be accepted now (always, with no cap).
    fn has_room(&mut self, rate: u32, now: Instant) -> bool {
        if self
            .second
            .is_none_or(|start| now - start >= Duration::from_secs(1))
        {
            (self.second, self.spent) = (Some(now), 0);
        }
        self.spent_out = rate > 0 && self.spent >= rate;
        !self.spent_out
    }

    fn spend(&mut self) {
        self.spent += 1;
    }
}

/// Idle backend connections kept: `upstream_keepalive` per backend and
/// `upstream_keepalive_total` in all, or none with `send_proxy`, since a connection's PROXY
/// header names one client and cannot carry another's request.
fn idle_keep(lb: &config::Lb) -> Keep {
    match lb.send_proxy {
        Some(_) => Keep {
            per_backend: 0,
            total: 0,
        },
        None => Keep {
            per_backend: lb.upstream_keepalive,
            total: lb.upstream_keepalive_total,
        },
    }
}
