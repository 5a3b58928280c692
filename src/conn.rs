//! One client connection and the request/response exchange it carries.
//!
//! Bytes flow through four pooled buffers:
//!
//! ```text
//! client ─read─► cin ─(head rewrite, body framing)─► uout ─write─► backend
//! client ◄write─ cout ◄─(head rewrite, body framing)─ uin ◄─read── backend
//! ```
//!
//! Every event drives the same pump (`round`): each step moves what it can and says whether it
//! did. Backpressure falls out of it: a step only reads into a buffer with room and only moves
//! bytes into a buffer with room, so a slow side stops the other instead of growing memory.

use crate::balance::{Pick, Tried};
use crate::buffer::{Buffer, BufferPool, Io, BUF_SIZE};
use crate::config::{AccessLog, Sticky, Strategy};
use crate::http::body::{Body, Framing};
use crate::http::head::HeadError;
use crate::http::reply::Reply;
use crate::http::request::{self, HeadLimits, Request, STICKY_COOKIE};
use crate::http::response::{self, Added, Kind};
use crate::metrics::WorkerMetrics;
use crate::pool::{self, Backend, Lease};
use crate::proxy_protocol;
use crate::ratelimit::RateLimits;
use crate::retry::RetryBudget;
use crate::shared::Snapshot;
use crate::token::Readiness;
use crate::upstream::Upstreams;
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::Registry;
use rand::rngs::SmallRng;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

/// Most pump rounds per event, so one busy connection cannot starve the others; a connection
/// that still has work is driven again after the other events.
const MAX_ROUNDS: usize = 16;

/// How long a closing connection waits for the client to read the last response and close.
const LINGER: Duration = Duration::from_secs(2);

/// Where a client connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the PROXY protocol header of a trusted balancer. Times out after `header`.
    Proxy,
    /// Between requests with nothing buffered; holds no buffers. Times out after `idle`.
    Idle,
    /// Receiving a request head. Times out after `header`.
    Head,
    /// Waiting for a new backend connection to complete. Times out after `connect`.
    Connecting,
    /// Sending the request and relaying the response. Times out after `backend` without progress.
    Forwarding,
    /// Relaying raw bytes both ways after `101 Switching Protocols`.
    Tunnel,
    /// Flushing the last bytes to the client, then waiting briefly for it to close.
    Closing,
}

impl Phase {
    /// Request and response bytes may flow to and from the backend.
    fn talks_to_backend(self) -> bool {
        matches!(self, Phase::Forwarding | Phase::Tunnel)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Proxy => "proxy header",
            Phase::Idle => "idle",
            Phase::Head => "head",
            Phase::Connecting => "connecting",
            Phase::Forwarding => "forwarding",
            Phase::Tunnel => "tunnel",
            Phase::Closing => "closing",
        }
    }
}

/// What a drive left the connection as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// Waiting for events.
    Open,
    /// Hit the round cap with work left: drive it again soon.
    Busy,
    /// Done: the worker removes it.
    Closed,
}

/// Why the pump stopped short; `Conn::stop` turns each into what the client sees.
#[derive(Debug)]
enum Stop {
    /// Answer the client with this reply, then close.
    Reply(Reply),
    /// Flush what the client already has, then close (a response was cut off mid-way).
    Cut,
    /// Close at once (the client is gone or broke the connection).
    Close,
    /// The backend connection failed before any response byte: retry elsewhere or answer.
    Upstream(Failure),
}

/// How a backend connection failed.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Connect(io::ErrorKind),
    ConnectTimeout,
    Closed,
    Reset(io::ErrorKind),
    /// No response within `backend_ms`.
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Failure::Connect(kind) => write!(f, "connect: {kind}"),
            Failure::ConnectTimeout => write!(f, "connect timeout"),
            Failure::Closed => write!(f, "closed the connection before responding"),
            Failure::Reset(kind) => write!(f, "{kind} before responding"),
            Failure::Timeout => write!(f, "no response in time"),
        }
    }
}

impl Failure {
    fn reply(self) -> Reply {
        match self {
            Failure::ConnectTimeout | Failure::Timeout => Reply::GatewayTimeout,
            _ => Reply::BadGateway,
        }
    }
}

/// Where the response of the current exchange is.
#[derive(Debug)]
enum ResponseState {
    /// Waiting for (the rest of) a status line and headers.
    Head,
    /// Relaying the body.
    Body(Body),
    /// Complete.
    Done,
}

/// One request in flight and its backend.
struct Exchange {
    request: Request,
    req_body: Body,
    response: ResponseState,
    lease: Lease,
    /// The backend connection (in the worker's upstream table), once there is one.
    upstream: Option<usize>,
    tried: Tried,
    retries_left: u32,
    /// While the request can still be replayed, written bytes stay in `uout` and this counts
    /// them; afterwards written bytes are dropped at once and it stays 0.
    sent: usize,
    replayable: bool,
    /// Any byte of a response arrived from the backend.
    answered: bool,
    /// The backend closed its side of the connection.
    upstream_eof: bool,
    /// The final response allows reusing the upstream connection.
    reusable: bool,
    client_keep_alive: bool,
    status: u16,
    started: Instant,
    /// What `hash` balances by (see `hash_key`).
    key: u64,
    /// The request line, for the access log (only kept when it is on).
    line: Option<RequestLine>,
}

/// The start of a request line, held inline so the access log costs no allocation.
struct RequestLine {
    bytes: [u8; 96],
    len: usize,
}

impl RequestLine {
    fn new(head: &[u8]) -> RequestLine {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        let len = line.len().min(96);
        let mut bytes = [0; 96];
        bytes[..len].copy_from_slice(&line[..len]);
        RequestLine { bytes, len }
    }
}

/// What a connection borrows from its worker while it runs.
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    pub buffers: &'a mut BufferPool,
    pub upstreams: &'a mut Upstreams,
    pub snap: &'a Snapshot,
    pub rng: &'a mut SmallRng,
    pub budget: &'a mut RetryBudget,
    pub rate: &'a mut RateLimits,
    pub metrics: &'a WorkerMetrics,
    /// The worker is draining: no connection is kept alive after its response.
    pub stopping: bool,
    pub now: Instant,
    /// This connection's slab index.
    pub id: usize,
}

pub struct Conn {
    client: TcpStream,
    /// The client: the connection's peer, or who a trusted balancer's PROXY header names.
    peer: SocketAddr,
    /// The address the client connected to: named by a PROXY header, or looked up once when
    /// `send_proxy` first needs it.
    dest: Option<SocketAddr>,
    /// The address counted in `[limits] client_connections`, released at close.
    pub counted: Option<IpAddr>,
    pub ready: Readiness,
    phase: Phase,
    cin: Option<Buffer>,
    uout: Option<Buffer>,
    uin: Option<Buffer>,
    cout: Option<Buffer>,
    exchange: Option<Exchange>,
    client_eof: bool,
    shut_down: bool,
    /// At least one exchange finished on this connection.
    served: bool,
    pub deadline: Instant,
}

/// A buffer slot, filled from the pool on first use.
fn buf<'a>(slot: &'a mut Option<Buffer>, pool: &mut BufferPool) -> &'a mut Buffer {
    slot.get_or_insert_with(|| pool.take())
}

fn held(slot: &Option<Buffer>) -> usize {
    slot.as_ref().map_or(0, Buffer::len)
}

impl Conn {
    /// A new client connection: it must send a request head (after a PROXY protocol header
    /// when `proxied`) within the header timeout.
    pub fn new(client: TcpStream, peer: SocketAddr, proxied: bool, deadline: Instant) -> Conn {
        Conn {
            client,
            peer,
            dest: None,
            counted: None,
            ready: Readiness::default(),
            phase: if proxied { Phase::Proxy } else { Phase::Idle },
            cin: None,
            uout: None,
            uin: None,
            cout: None,
            exchange: None,
            client_eof: false,
            shut_down: false,
            served: false,
            deadline,
        }
    }

    /// Kept alive after a response, waiting for a next request, with nothing buffered. (A new
    /// connection that has not sent its first request yet is not idle: one is on its way.)
    pub fn is_idle(&self) -> bool {
        self.served && self.phase == Phase::Idle && held(&self.cin) == 0 && held(&self.cout) == 0
    }

    pub fn client(&mut self) -> &mut TcpStream {
        &mut self.client
    }

    /// Runs the pump until nothing moves (or the round cap).
    pub fn drive(&mut self, ctx: &mut Ctx) -> Drive {
        for _ in 0..MAX_ROUNDS {
            let moved = match self.round(ctx) {
                Ok(moved) => moved,
                Err(stop) => match self.stop(ctx, stop) {
                    Drive::Closed => return self.close(ctx),
                    _ => true,
                },
            };
            if self.finished() {
                return self.close(ctx);
            }
            if !moved {
                self.settle(ctx);
                return Drive::Open;
            }
            if self.phase.talks_to_backend() {
                self.deadline = ctx.now + self.timeout(ctx);
            }
        }
        Drive::Busy
    }

    /// The deadline passed: what that means depends on the phase.
    pub fn expire(&mut self, ctx: &mut Ctx) -> Drive {
        debug!("{} timed out while {}", self.peer, self.phase.name());
        let stop = match self.phase {
            Phase::Head => Stop::Reply(Reply::RequestTimeout),
            Phase::Connecting => Stop::Upstream(Failure::ConnectTimeout),
            Phase::Forwarding if self.waiting_for_client() => Stop::Reply(Reply::RequestTimeout),
            // The stall is the client's: it stopped reading the response. Closed, and not
            // counted against the backend (three such clients would mark it down).
            Phase::Forwarding if self.client_not_reading() => {
                info!("{}: client stopped reading the response: closed", self.peer);
                Stop::Close
            }
            Phase::Forwarding => {
                if let Some(ex) = &self.exchange {
                    let backend = &ex.lease.backend().name;
                    warn!(
                        "{}: backend {backend} failed: {}",
                        self.peer,
                        Failure::Timeout
                    );
                    count_failure(ctx, &ex.lease, Failure::Timeout);
                }
                Stop::Reply(Reply::GatewayTimeout)
            }
            Phase::Proxy | Phase::Idle | Phase::Tunnel | Phase::Closing => Stop::Close,
        };
        match self.stop(ctx, stop) {
            Drive::Closed => self.close(ctx),
            _ => self.drive(ctx),
        }
    }

    /// One pass over every step of the pump; true if any of them moved something.
    fn round(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let mut moved = self.read_client(ctx)?;
        moved |= self.read_proxy_header(ctx)?;
        moved |= self.start_request(ctx)?;
        moved |= self.check_connected(ctx)?;
        moved |= self.forward_request(ctx)?;
        moved |= self.check_client_eof()?;
        moved |= self.write_upstream(ctx)?;
        moved |= self.read_upstream(ctx)?;
        moved |= self.relay_response(ctx)?;
        moved |= self.check_upstream_eof()?;
        moved |= self.write_client(ctx)?;
        moved |= self.finish_exchange(ctx)?;
        Ok(moved)
    }

    fn read_client(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        if !self.ready.readable || self.client_eof {
            return Ok(false);
        }
        let cin = buf(&mut self.cin, ctx.buffers);
        if self.phase == Phase::Closing {
            cin.consume(cin.len()); // lingering: whatever the client still sends is dropped
        }
        if cin.is_full() {
            return Ok(false);
        }
        let room = cin.spare_len();
        match cin.read_from(&mut self.client) {
            Ok(Io::Moved(n)) => {
                ctx.metrics.bytes(n as u64, 0);
                // A short read drained the socket: wait for the next event instead of a
                // read that would only say WouldBlock.
                self.ready.after_read(n, room);
                if self.phase == Phase::Idle {
                    self.enter(Phase::Head, ctx);
                }
                Ok(true)
            }
            Ok(Io::Blocked) => {
                self.ready.readable = false;
                Ok(false)
            }
            Ok(Io::Closed) => {
                self.client_eof = true;
                Ok(true)
            }
            Err(e) => {
                debug!("{}: client read: {e}", self.peer);
                Err(Stop::Close)
            }
        }
    }

    /// The client closed its side and everything it sent before has been used. After a whole
    /// request that is a half-close and the response still goes out; a request cut short, or
    /// a connection with no request, is over.
    fn check_client_eof(&self) -> Result<bool, Stop> {
        if !self.client_eof {
            return Ok(false);
        }
        let drained = held(&self.cin) == 0;
        match (&self.exchange, self.phase) {
            (_, Phase::Closing) => Ok(false),
            (Some(ex), Phase::Connecting | Phase::Forwarding) if ex.req_body.is_done() => Ok(false),
            (Some(_), Phase::Connecting | Phase::Forwarding) if !drained => Ok(false),
            (_, Phase::Tunnel) if !drained => Ok(false),
            (_, Phase::Tunnel) => Err(Stop::Cut),
            // Idle, a head that can no longer complete, or a request body cut short.
            _ => Err(Stop::Close),
        }
    }

    /// Takes the PROXY protocol header off the front of `cin`: from then on the client is the
    /// one it names. A bad header closes the connection: the sender is a balancer, not a client
    /// an HTTP answer would help.
    fn read_proxy_header(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        if self.phase != Phase::Proxy || held(&self.cin) == 0 {
            return Ok(false);
        }
        let cin = buf(&mut self.cin, ctx.buffers);
        match proxy_protocol::parse(cin.data()) {
            Ok(None) => Ok(false), // headers are far shorter than a buffer: more will come
            Ok(Some(header)) => {
                cin.consume(header.len);
                if let Some((client, dest)) = header.addrs {
                    (self.peer, self.dest) = (client, Some(dest));
                }
                self.enter(Phase::Head, ctx);
                Ok(true)
            }
            Err(why) => {
                info!("{}: bad PROXY protocol header: {why}", self.peer);
                ctx.metrics.reply(Reply::BadRequest);
                Err(Stop::Close)
            }
        }
    }

    /// Parses a request head from `cin`, writes the backend's head into `uout`, and starts the
    /// exchange with a backend.
    fn start_request(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        if self.phase != Phase::Head || self.exchange.is_some() || held(&self.cin) == 0 {
            return Ok(false);
        }
        let limits = &ctx.snap.config.limits;
        let limits = HeadLimits {
            max_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
        };
        let dest = self.dest_addr(ctx);
        let cin = buf(&mut self.cin, ctx.buffers);
        let uout = buf(&mut self.uout, ctx.buffers);
        if let Some((version, dest)) = dest {
            proxy_protocol::write(version, self.peer, dest, uout);
        }
        let request = match request::parse(cin.data(), limits, self.peer.ip(), uout) {
            Ok(Some(request)) => request,
            Ok(None) => {
                uout.truncate(0);
                return Ok(false);
            }
            Err(e) => {
                uout.truncate(0);
                info!("{}: rejected request: {}", self.peer, describe(e));
                return Err(Stop::Reply(head_reply(e)));
            }
        };
        let line = (ctx.snap.config.log.access_log != AccessLog::Off)
            .then(|| RequestLine::new(cin.data()));
        let key = hash_key(ctx, self.peer.ip(), &cin.data()[..request.head_len]);
        cin.consume(request.head_len);
        if !ctx.rate.allow(self.peer.ip(), ctx.now) {
            info!("{}: rate limited", self.peer);
            return Err(Stop::Reply(Reply::TooManyRequests));
        }
        ctx.budget.on_request();
        let lease = match self.sticky_backend(ctx, request.sticky) {
            Some(id) => Lease::new(&ctx.snap.backends, id),
            None => self.choose_backend(ctx, Tried::default(), key)?,
        };
        let exchange = Exchange {
            request,
            req_body: Body::new(request.framing),
            response: ResponseState::Head,
            upstream: None,
            tried: Tried::default(),
            retries_left: ctx.snap.config.lb.retries,
            sent: 0,
            replayable: true,
            answered: false,
            upstream_eof: false,
            reusable: false,
            client_keep_alive: request.keep_alive,
            status: 0,
            started: ctx.now,
            line,
            key,
            lease,
        };
        self.exchange = Some(exchange);
        self.connect(ctx)?;
        Ok(true)
    }

    /// With `send_proxy`, the version and the address the client connected to, for the header
    /// that goes before the request.
    fn dest_addr(&mut self, ctx: &Ctx) -> Option<(proxy_protocol::Version, SocketAddr)> {
        let version = ctx.snap.config.lb.send_proxy?;
        if self.dest.is_none() {
            self.dest = self.client.local_addr().ok();
        }
        Some((version, self.dest?))
    }

    /// With `sticky = cookie`, the backend the client's cookie names, while it takes traffic.
    fn sticky_backend(&self, ctx: &Ctx, token: Option<u64>) -> Option<usize> {
        let token = token.filter(|_| ctx.snap.config.lb.sticky == Sticky::Cookie)?;
        let backends = &ctx.snap.backends;
        (0..backends.len()).find(|&id| backends[id].is_up() && backends[id].token() == token)
    }

    fn choose_backend(&self, ctx: &mut Ctx, avoid: Tried, key: u64) -> Result<Lease, Stop> {
        let backends = &ctx.snap.backends;
        let now_ms = pool::clock_ms(ctx.now);
        let mut pick = Pick {
            avoid,
            rng: ctx.rng,
            now_ms,
            key,
        };
        match ctx.snap.balancer.pick(backends, &mut pick) {
            Some(id) => Ok(Lease::new(backends, id)),
            None => {
                warn!("{}: no backend is up", self.peer);
                Err(Stop::Reply(Reply::ServiceUnavailable))
            }
        }
    }

    /// Gets the exchange's backend a connection: an idle pooled one, or a new one. (With
    /// `send_proxy` the worker pools none: a connection's header names one client.)
    fn connect(&mut self, ctx: &mut Ctx) -> Result<(), Stop> {
        let ex = self.exchange.as_mut().expect("connect needs an exchange");
        let backend = ex.lease.id;
        if let Some(id) = ctx.upstreams.checkout(backend, ctx.id) {
            ctx.metrics.upstream(true);
            ex.upstream = Some(id);
            self.enter(Phase::Forwarding, ctx);
            return Ok(());
        }
        let addr = ex.lease.backend().addr;
        match ctx.upstreams.connect(ctx.registry, backend, addr, ctx.id) {
            Ok(id) => {
                ctx.metrics.upstream(false);
                ex.upstream = Some(id);
                self.enter(Phase::Connecting, ctx);
                Ok(())
            }
            Err(e) => Err(Stop::Upstream(Failure::Connect(e.kind()))),
        }
    }

    /// A new backend connection became writable: did the handshake succeed?
    fn check_connected(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(up) = self.exchange.as_ref().and_then(|ex| ex.upstream) else {
            return Ok(false);
        };
        let up = ctx.upstreams.get(up);
        if self.phase != Phase::Connecting || !up.ready.writable {
            return Ok(false);
        }
        match (up.stream.take_error(), up.stream.peer_addr()) {
            (Ok(None), Ok(_)) => {
                up.connected = true;
                self.enter(Phase::Forwarding, ctx);
                Ok(true)
            }
            (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => {
                up.ready.writable = false; // a spurious event: still connecting
                Ok(false)
            }
            (Ok(Some(e)) | Err(e), _) | (Ok(None), Err(e)) => {
                Err(Stop::Upstream(Failure::Connect(e.kind())))
            }
        }
    }

    /// Moves request body bytes from `cin` to `uout`, validating their framing on the way.
    fn forward_request(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(ex) = &mut self.exchange else {
            return Ok(false);
        };
        if ex.req_body.is_done() || held(&self.cin) == 0 {
            return Ok(false);
        }
        let cin = buf(&mut self.cin, ctx.buffers);
        let uout = buf(&mut self.uout, ctx.buffers);
        if uout.is_full() && ex.sent > 0 {
            give_up_replay(ex, uout);
        }
        let room = uout.room();
        let input = &cin.data()[..cin.len().min(room)];
        let used = ex.req_body.scan(input).map_err(|e| {
            info!("{}: rejected request body: {e}", self.peer);
            Stop::Reply(Reply::BadRequest)
        })?;
        uout.put(&cin.data()[..used]);
        cin.consume(used);
        Ok(used > 0)
    }

    fn write_upstream(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(ex) = &mut self.exchange else {
            return Ok(false);
        };
        let pending = held(&self.uout).saturating_sub(ex.sent);
        let Some(up) = ex.upstream.filter(|_| self.phase.talks_to_backend()) else {
            return Ok(false);
        };
        let up = ctx.upstreams.get(up);
        if !up.ready.writable || pending == 0 {
            return Ok(false);
        }
        let uout = buf(&mut self.uout, ctx.buffers);
        match uout.write_to(ex.sent, &mut up.stream) {
            Ok(Io::Moved(n)) => {
                up.ready.writable = n == pending;
                if ex.replayable {
                    ex.sent += n;
                } else {
                    uout.consume(n);
                }
                Ok(true)
            }
            Ok(Io::Blocked) => {
                up.ready.writable = false;
                Ok(false)
            }
            Ok(Io::Closed) => Err(Stop::Upstream(Failure::Closed)),
            Err(e) => Err(self.upstream_broke(e)),
        }
    }

    fn read_upstream(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(ex) = &mut self.exchange else {
            return Ok(false);
        };
        let Some(up) = ex.upstream.filter(|_| self.phase.talks_to_backend()) else {
            return Ok(false);
        };
        let up = ctx.upstreams.get(up);
        if ex.upstream_eof {
            return Ok(false);
        }
        let uin = buf(&mut self.uin, ctx.buffers);
        if !up.ready.readable || uin.is_full() {
            return Ok(false);
        }
        let room = uin.spare_len();
        match uin.read_from(&mut up.stream) {
            Ok(Io::Moved(n)) => {
                up.ready.after_read(n, room);
                ex.answered = true;
                Ok(true)
            }
            Ok(Io::Blocked) => {
                up.ready.readable = false;
                Ok(false)
            }
            Ok(Io::Closed) => {
                up.ready.readable = false;
                ex.upstream_eof = true;
                Ok(true)
            }
            Err(e) => Err(self.upstream_broke(e)),
        }
    }

    /// A read or write error on the backend connection: retryable only before any response.
    fn upstream_broke(&self, e: io::Error) -> Stop {
        match &self.exchange {
            Some(ex) if !ex.answered => Stop::Upstream(Failure::Reset(e.kind())),
            _ => {
                warn!("{}: backend connection broke mid-response: {e}", self.peer);
                Stop::Cut
            }
        }
    }

    /// The backend closed its side and the response bytes before the close have been relayed
    /// (as far as they can be): the end of a close-delimited body or a tunnel, or a failure.
    fn check_upstream_eof(&mut self) -> Result<bool, Stop> {
        let Some(ex) = self.exchange.as_mut().filter(|ex| ex.upstream_eof) else {
            return Ok(false);
        };
        ex.reusable = false;
        let drained = held(&self.uin) == 0;
        match &mut ex.response {
            ResponseState::Head if !ex.answered => Err(Stop::Upstream(Failure::Closed)),
            ResponseState::Head => {
                warn!("{}: backend closed inside a response head", self.peer);
                Err(Stop::Reply(Reply::BadGateway))
            }
            _ if !drained => Ok(false),
            _ if self.phase == Phase::Tunnel => Err(Stop::Cut),
            ResponseState::Body(body) => {
                if !body.close() {
                    warn!("{}: backend closed inside a response body", self.peer);
                    return Err(Stop::Cut);
                }
                ex.response = ResponseState::Done;
                Ok(true)
            }
            ResponseState::Done => Ok(false),
        }
    }

    /// Moves response bytes from `uin` to `cout` until nothing more moves (the head rewritten,
    /// the body as it is): a head and the body bytes behind it leave in one write.
    fn relay_response(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let mut moved = false;
        while self.relay_step(ctx)? {
            moved = true;
        }
        Ok(moved)
    }

    /// One move: a head, or body bytes, or stray bytes after a complete response.
    fn relay_step(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        if self.exchange.is_none() || held(&self.uin) == 0 {
            return Ok(false);
        }
        let ex = self.exchange.as_mut().expect("checked above");
        match &mut ex.response {
            ResponseState::Head => self.relay_head(ctx),
            ResponseState::Body(body) => {
                let uin = buf(&mut self.uin, ctx.buffers);
                let cout = buf(&mut self.cout, ctx.buffers);
                let room = cout.room();
                let used = body.scan(&uin.data()[..uin.len().min(room)]).map_err(|e| {
                    warn!("{}: backend sent a bad chunked body: {e}", self.peer);
                    Stop::Cut
                })?;
                cout.put(&uin.data()[..used]);
                uin.consume(used);
                if body.is_done() {
                    ex.response = ResponseState::Done;
                }
                Ok(used > 0)
            }
            ResponseState::Done => {
                // Bytes after a complete response: the backend is confused; never reuse it.
                let uin = buf(&mut self.uin, ctx.buffers);
                debug!("{}: {} stray bytes after a response", self.peer, uin.len());
                uin.consume(uin.len());
                ex.reusable = false;
                Ok(false)
            }
        }
    }

    fn relay_head(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let ex = self.exchange.as_mut().expect("relay needs an exchange");
        let uin = buf(&mut self.uin, ctx.buffers);
        let cout = buf(&mut self.cout, ctx.buffers);
        let backend = ex.lease.backend();
        let name = ctx
            .snap
            .config
            .lb
            .expose_backend
            .as_deref()
            .map(|header| (header, backend.name.as_str()));
        let before = cout.len();
        // A stopping worker closes each connection after its response, and says so in it.
        let request = Request {
            keep_alive: ex.request.keep_alive && !ctx.stopping,
            ..ex.request
        };
        // A sticky client whose cookie does not name this backend (new, or moved by a failure)
        // gets one that does.
        let token = backend.token();
        let cookie = (ctx.snap.config.lb.sticky == Sticky::Cookie && request.sticky != Some(token))
            .then(|| format!("{STICKY_COOKIE}={token:016x}; Path=/; HttpOnly"));
        let added = Added {
            backend: name,
            set_cookie: cookie.as_deref().map(str::as_bytes),
            server: ctx.snap.config.lb.server_header.as_deref(),
        };
        let response = match response::parse(uin.data(), BUF_SIZE, &request, added, cout) {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(false),
            Err(e) if before > 0 && e == HeadError::TooLarge => {
                cout.truncate(before);
                return Ok(false); // no room behind earlier responses: wait for cout to drain
            }
            Err(e) => {
                cout.truncate(before);
                warn!(
                    "{}: bad response from {}: {}",
                    self.peer,
                    backend.name,
                    describe(e)
                );
                return Err(Stop::Reply(Reply::BadGateway));
            }
        };
        uin.consume(response.head_len);
        backend.record_success();
        give_up_replay(ex, buf(&mut self.uout, ctx.buffers));
        ex.status = response.status;
        match response.kind {
            Kind::Interim => {}
            Kind::Switch => {
                ctx.metrics
                    .response(ex.lease.id, response.status, ctx.now - ex.started);
                ex.req_body = Body::new(Framing::UntilClose);
                ex.response = ResponseState::Body(Body::new(Framing::UntilClose));
                self.enter(Phase::Tunnel, ctx);
            }
            Kind::Final => {
                observe_latency(ctx, ex.lease.backend(), ctx.now - ex.started);
                ex.reusable = response.reusable;
                ex.client_keep_alive = response.client_keep_alive;
                let body = Body::new(response.framing);
                ex.response = if body.is_done() {
                    ResponseState::Done
                } else {
                    ResponseState::Body(body)
                };
            }
        }
        Ok(true)
    }

    fn write_client(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(cout) = self.cout.as_mut().filter(|b| !b.is_empty()) else {
            return Ok(false);
        };
        if !self.ready.writable {
            return Ok(false);
        }
        let pending = cout.len();
        match cout.write_to(0, &mut self.client) {
            Ok(Io::Moved(n)) => {
                ctx.metrics.bytes(0, n as u64);
                self.ready.writable = n == pending;
                cout.consume(n);
                Ok(true)
            }
            Ok(Io::Blocked) => {
                self.ready.writable = false;
                Ok(false)
            }
            Ok(Io::Closed) => Err(Stop::Close),
            Err(e) => {
                debug!("{}: client write: {e}", self.peer);
                Err(Stop::Close)
            }
        }
    }

    /// When both the request and the response are complete: hand the backend connection back,
    /// then wait for the next request (already buffered if pipelined), or close.
    fn finish_exchange(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(ex) = &self.exchange else {
            return Ok(false);
        };
        if !matches!(ex.response, ResponseState::Done) || self.phase == Phase::Tunnel {
            return Ok(false);
        }
        if !ex.req_body.is_done() {
            // The backend answered before taking the whole request: nothing can follow it.
            return Err(Stop::Cut);
        }
        let ex = self.exchange.take().expect("checked above");
        self.served = true;
        let unsent = held(&self.uout) - ex.sent;
        let reusable = ex.reusable && unsent == 0 && held(&self.uin) == 0;
        if let Some(up) = ex.upstream {
            ctx.upstreams.release(ctx.registry, up, reusable);
        }
        for slot in [&mut self.uout, &mut self.uin] {
            if let Some(buffer) = slot.take() {
                ctx.buffers.give(buffer);
            }
        }
        ctx.metrics
            .response(ex.lease.id, ex.status, ctx.now - ex.started);
        self.log_access(ctx, &ex);
        if !ex.client_keep_alive || ctx.stopping || (self.client_eof && held(&self.cin) == 0) {
            self.enter(Phase::Closing, ctx);
        } else if held(&self.cin) > 0 {
            self.enter(Phase::Head, ctx); // a pipelined request is waiting
        } else {
            self.enter(Phase::Idle, ctx);
        }
        Ok(true)
    }

    fn log_access(&self, ctx: &Ctx, ex: &Exchange) {
        if let Some(line) = &ex.line {
            let ms = ctx.now.duration_since(ex.started).as_secs_f64() * 1000.0;
            let line = String::from_utf8_lossy(&line.bytes[..line.len]);
            let backend = &ex.lease.backend().name;
            info!(target: "access", "{} \"{line}\" {} {backend} {ms:.1}ms", self.peer, ex.status);
        }
    }

    /// Turns a `Stop` into what the client sees.
    fn stop(&mut self, ctx: &mut Ctx, stop: Stop) -> Drive {
        match stop {
            Stop::Close => Drive::Closed,
            Stop::Cut => {
                self.enter(Phase::Closing, ctx);
                Drive::Open
            }
            Stop::Reply(reply) if self.response_started() => {
                debug!(
                    "{}: {} after the response began: closing",
                    self.peer,
                    reply.status()
                );
                Drive::Closed
            }
            Stop::Reply(reply) => {
                ctx.metrics.reply(reply);
                self.enter(Phase::Closing, ctx);
                let server = ctx.snap.config.lb.server_header.as_deref();
                reply.write(server, buf(&mut self.cout, ctx.buffers));
                Drive::Open
            }
            Stop::Upstream(failure) => match self.retry(ctx, failure) {
                Ok(()) => Drive::Open,
                Err(stop) => self.stop(ctx, stop),
            },
        }
    }

    /// Some of this exchange's response went to the client already: no other answer can follow.
    fn response_started(&self) -> bool {
        self.exchange
            .as_ref()
            .is_some_and(|ex| !matches!(ex.response, ResponseState::Head))
    }

    /// A backend connection failed before any response byte. The request goes to another
    /// backend if it can be replayed whole and sending it again is harmless.
    fn retry(&mut self, ctx: &mut Ctx, failure: Failure) -> Result<(), Stop> {
        let peer = self.peer;
        let ex = self.exchange.as_mut().expect("retry needs an exchange");
        let reused = ex.upstream.is_some_and(|up| ctx.upstreams.get(up).reused);
        let backend = ex.lease.id;
        warn!(
            "{peer}: backend {} failed: {failure}",
            ex.lease.backend().name
        );
        if let Some(up) = ex.upstream.take() {
            ctx.upstreams.close(ctx.registry, up);
        }
        if let Some(why) = not_replayable(ex) {
            warn!("{peer}: not retried: {why}");
            return Err(Stop::Reply(failure.reply()));
        }
        ex.sent = 0;
        ex.upstream_eof = false;
        if reused {
            // A pooled connection that fails is either one the backend closed while idle or
            // the sign of a backend that died; a fresh connection to the same backend tells
            // which. Its other idle connections are as suspect, so they go too. This attempt
            // costs no retry: the backend has not failed yet.
            ctx.upstreams.close_idle(ctx.registry, backend);
            return self.connect(ctx);
        }
        ex.tried.add(backend);
        count_failure(ctx, &ex.lease, failure);
        if ex.retries_left == 0 {
            warn!("{peer}: not retried: no retries left");
            return Err(Stop::Reply(failure.reply()));
        }
        if !ctx.budget.try_retry() {
            warn!("{peer}: not retried: the retry budget is spent");
            return Err(Stop::Reply(failure.reply()));
        }
        ex.retries_left -= 1;
        ctx.metrics.retry();
        let (tried, key) = (ex.tried, ex.key);
        let lease = self
            .choose_backend(ctx, tried, key)
            .map_err(|_| Stop::Reply(failure.reply()))?;
        self.exchange.as_mut().expect("still here").lease = lease;
        self.connect(ctx)
    }

    /// Waiting on the client: its request body is incomplete and nothing is left to send.
    fn waiting_for_client(&self) -> bool {
        self.exchange.as_ref().is_some_and(|ex| {
            !ex.req_body.is_done() && held(&self.uout) == ex.sent && held(&self.cin) == 0
        })
    }

    /// Waiting on the client: response bytes sit in `cout` and its socket takes no more.
    fn client_not_reading(&self) -> bool {
        held(&self.cout) > 0 && !self.ready.writable
    }

    fn timeout(&self, ctx: &Ctx) -> Duration {
        let t = &ctx.snap.config.timeouts;
        match self.phase {
            Phase::Idle => t.idle,
            Phase::Proxy | Phase::Head => t.header,
            Phase::Connecting => t.connect,
            Phase::Forwarding => t.backend,
            Phase::Tunnel => t.idle,
            Phase::Closing => LINGER,
        }
    }

    fn enter(&mut self, phase: Phase, ctx: &mut Ctx) {
        if phase == Phase::Closing {
            self.drop_exchange(ctx);
        }
        self.phase = phase;
        self.deadline = ctx.now + self.timeout(ctx);
    }

    /// Ends the exchange without a complete response: the backend connection cannot be reused.
    fn drop_exchange(&mut self, ctx: &mut Ctx) {
        if let Some(ex) = self.exchange.take() {
            if let Some(up) = ex.upstream {
                ctx.upstreams.close(ctx.registry, up);
            }
        }
        for slot in [&mut self.cin, &mut self.uout, &mut self.uin] {
            if let Some(buffer) = slot.take() {
                ctx.buffers.give(buffer);
            }
        }
    }

    /// A closing connection is finished once the client has all its bytes and has closed too.
    fn finished(&mut self) -> bool {
        if self.phase != Phase::Closing || held(&self.cout) > 0 {
            return false;
        }
        if !self.shut_down {
            self.shut_down = true;
            // Half-close so the client sees the end, but keep reading: closing with unread
            // input would reset the connection and could destroy the response in flight.
            if self.client.shutdown(Shutdown::Write).is_err() {
                return true;
            }
        }
        self.client_eof
    }

    /// Returns empty buffers to the pool whenever the connection waits: it holds a buffer only
    /// while bytes sit in it, so idle connections hold none and a request waiting on its
    /// backend holds none for the directions that have nothing in flight.
    fn settle(&mut self, ctx: &mut Ctx) {
        for slot in [&mut self.cin, &mut self.uout, &mut self.uin, &mut self.cout] {
            if let Some(buffer) = slot.take_if(|b| b.is_empty()) {
                ctx.buffers.give(buffer);
            }
        }
    }

    /// Releases everything; the worker then deregisters the socket and frees the slot.
    pub fn close(&mut self, ctx: &mut Ctx) -> Drive {
        self.drop_exchange(ctx);
        if let Some(buffer) = self.cout.take() {
            ctx.buffers.give(buffer);
        }
        Drive::Closed
    }
}

/// What `hash` balances a request by: a hash of the configured header or cookie, or of the
/// client address (also when the request lacks that header or cookie). Computed only when the
/// `hash` strategy is in use.
fn hash_key(ctx: &Ctx, client: IpAddr, head: &[u8]) -> u64 {
    let lb = &ctx.snap.config.lb;
    if lb.strategy != Strategy::Hash && lb.sticky != Sticky::ClientIp {
        return 0;
    }
    let mut hasher = DefaultHasher::new();
    match request::hash_source(head, &lb.hash_key) {
        Some(value) => value.hash(&mut hasher),
        None => client.hash(&mut hasher),
    }
    hasher.finish()
}

/// Passive health: a failure on live traffic counts against the backend, and `max_fails` in a
/// row mark it down without waiting for the health checks (which bring it back).
fn count_failure(ctx: &Ctx, lease: &Lease, failure: Failure) {
    ctx.metrics.backend_error(lease.id);
    let backend = lease.backend();
    // For `ewma` a failure costs as much as the slowest connect we would wait for.
    observe_latency(ctx, backend, ctx.snap.config.timeouts.connect);
    let max_fails = ctx.snap.config.health.max_fails;
    if backend.record_failure(max_fails) {
        warn!(
            "backend {} is down: {max_fails} failures in a row, the last: {failure}",
            backend.name
        );
    }
}

/// Feeds the response-time average that `ewma` picks by (only then: it is a write that every
/// worker makes to the backend's shared record).
fn observe_latency(ctx: &Ctx, backend: &Backend, took: Duration) {
    if ctx.snap.config.lb.strategy == Strategy::Ewma {
        backend.observe_latency(took, pool::clock_ms(ctx.now));
    }
}

/// Why a failed request cannot go to a backend again, if it cannot: sending it twice could do
/// harm, or part of it is gone from the buffer, or part of a response arrived.
fn not_replayable(ex: &Exchange) -> Option<&'static str> {
    if ex.answered {
        Some("part of a response arrived")
    } else if !ex.replayable {
        Some("the request is larger than the replay buffer")
    } else if ex.sent > 0 && !ex.request.method.is_idempotent() {
        Some("it was sent and its method is not idempotent")
    } else {
        None
    }
}

/// Stops keeping written request bytes for a replay (the response began, or room is needed).
fn give_up_replay(ex: &mut Exchange, uout: &mut Buffer) {
    uout.consume(ex.sent);
    ex.sent = 0;
    ex.replayable = false;
}

fn head_reply(e: HeadError) -> Reply {
    match e {
        HeadError::Malformed(_) => Reply::BadRequest,
        HeadError::TooLarge => Reply::HeaderTooLarge,
        HeadError::UriTooLong => Reply::UriTooLong,
        HeadError::NotImplemented(_) => Reply::NotImplemented,
    }
}

fn describe(e: HeadError) -> &'static str {
    match e {
        HeadError::Malformed(why) | HeadError::NotImplemented(why) => why,
        HeadError::TooLarge => "head too large",
        HeadError::UriTooLong => "request line too long",
    }
}
