//! One client connection and the request/response exchanges it carries: the pump.
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
//!
//! What a request must pass before it reaches a backend is `admission`; what one request in
//! flight holds, and whether it may be sent again, is `exchange`; how a request or connection
//! ended is `ending`, and `Conn::conclude` is the one place that acts on it.

mod admission;
mod ending;
mod exchange;
mod splice;

pub use admission::{route, Admission};
pub use ending::Cause;
pub use exchange::Exchanges;

use crate::access_log::{self, RequestLine, Sink};
use crate::backend::{self, Backend, Lease};
use crate::buffer::{Buffer, BufferPool, Io, BUF_SIZE};
use crate::config::{AccessLog, Config, Sticky, Strategy};
use crate::http::body::{Body, Framing};
use crate::http::head::HeadError;
use crate::http::redirect::{self, MAX_LOCATION};
use crate::http::reply::{self, Reply};
use crate::http::request::{self, HeadLimits, IdFrom, IdHeader, Request, Seen, Wanted};
use crate::http::response::{self, Added, Kind};
use crate::metrics::WorkerMetrics;
use crate::pipe::Pipes;
use crate::proxy_protocol;
use crate::request_id::{RequestIds, ID_LEN};
use crate::route::{To, Via};
use crate::shared::{Renumbering, Snapshot};
use crate::tls::{self, TlsFailure};
use crate::token::Readiness;
use crate::transport::Transport;
use crate::upstream::Upstreams;
use ending::{At, Outcome};
use exchange::{Exchange, Failure, Held, Next, ResponseState, Ways};
use log::{debug, info, warn};
use mio::Registry;
use std::io;
use std::net::{IpAddr, SocketAddr};
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
    /// Accepted, its first request not begun; holds no buffers. Times out after `header`.
    Fresh,
    /// Between requests with nothing buffered; holds no buffers. Times out after `idle`.
    KeepAlive,
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

    /// Waiting for a request to begin, with no request in progress.
    fn between_requests(self) -> bool {
        matches!(self, Phase::Fresh | Phase::KeepAlive)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Proxy => "proxy header",
            Phase::Fresh => "fresh",
            Phase::KeepAlive => "keep-alive",
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

/// Why the pump stopped short.
#[derive(Debug)]
enum Stop {
    /// The request (or the connection) ends for this cause.
    End(Cause),
    /// The backend connection failed before any response byte: retry elsewhere or end.
    Upstream(Failure),
}

impl From<Cause> for Stop {
    fn from(cause: Cause) -> Stop {
        Stop::End(cause)
    }
}

/// What a connection borrows from its worker while it runs.
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    pub buffers: &'a mut BufferPool,
    pub pipes: &'a mut Pipes,
    pub upstreams: &'a mut Upstreams,
    pub exchanges: &'a mut Exchanges,
    pub snap: &'a Snapshot,
    pub admission: &'a mut Admission,
    pub ids: &'a mut RequestIds,
    pub log: &'a mut access_log::Writer,
    pub sink: &'a Sink,
    pub metrics: &'a WorkerMetrics,
    /// The worker is draining: no connection is kept alive after its response.
    pub stopping: bool,
    /// Where `[tls] redirect_http` sends plain requests: the first TLS listener's port.
    pub https_port: Option<u16>,
    /// For backends spoken to over TLS.
    pub backend_tls: Option<&'a tls::Client>,
    pub now: Instant,
    /// This connection's slab index.
    pub id: usize,
}

/// A client connection: what every connection holds, idle or not (its transport, address,
/// phase, deadline and empty buffer slots); what a request in flight needs is in `exchange`,
/// a box the worker reuses.
pub struct Conn {
    client: Transport,
    /// The client: the connection's peer, or who a trusted balancer's PROXY header names.
    peer: SocketAddr,
    /// The address the client connected to: named by a PROXY header, or looked up once when
    /// `send_proxy` first needs it.
    dest: Option<SocketAddr>,
    /// The address counted in `[limits] client_connections`, released at close.
    pub counted: Option<IpAddr>,
    /// The listener it came in on: its place in `[lb] listen`, then `tls_listen`.
    listener: u8,
    pub ready: Readiness,
    phase: Phase,
    cin: Option<Buffer>,
    uout: Option<Buffer>,
    uin: Option<Buffer>,
    cout: Option<Buffer>,
    exchange: Option<Held>,
    client_eof: bool,
    shut_down: bool,
    /// When the first byte of the request head being read arrived.
    head_started: Instant,
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
    pub fn new(
        client: Transport,
        peer: SocketAddr,
        listener: u8,
        proxied: bool,
        now: Instant,
        header: Duration,
    ) -> Conn {
        Conn {
            client,
            peer,
            dest: None,
            counted: None,
            listener,
            ready: Readiness::default(),
            phase: if proxied { Phase::Proxy } else { Phase::Fresh },
            cin: None,
            uout: None,
            uin: None,
            cout: None,
            exchange: None,
            client_eof: false,
            shut_down: false,
            head_started: now,
            deadline: now + header,
        }
    }

    /// Kept alive after a response, waiting for a next request, with nothing buffered. (A new
    /// connection that has not sent its first request yet is not idle: one is on its way.)
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::KeepAlive
            && held(&self.cin) == 0
            && held(&self.cout) == 0
            && !self.client.pending_output()
    }

    pub fn socket(&mut self) -> &mut mio::net::TcpStream {
        self.client.socket()
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
            // A head waiting behind responses its client does not read: no reply would fit.
            Phase::Head if self.client_not_reading() => Cause::ClientStoppedReading.into(),
            Phase::Head => Cause::HeadTimeout.into(),
            Phase::Proxy => Cause::ProxyTimeout.into(),
            Phase::Fresh if self.client.in_handshake() => Cause::HandshakeTimeout.into(),
            Phase::Connecting => Stop::Upstream(Failure::ConnectTimeout),
            Phase::Forwarding if self.waiting_for_client() => Cause::BodyTimeout.into(),
            // The stall is the client's: it stopped reading the response. Closed, and not
            // counted against the backend (three such clients would mark it down).
            Phase::Forwarding if self.client_not_reading() => Cause::ClientStoppedReading.into(),
            Phase::Forwarding => Stop::Upstream(Failure::Timeout),
            Phase::Tunnel => Cause::TunnelTimeout.into(),
            Phase::Fresh | Phase::KeepAlive | Phase::Closing => Cause::Idle.into(),
        };
        match self.stop(ctx, stop) {
            Drive::Closed => self.close(ctx),
            _ => self.drive(ctx),
        }
    }

    /// A connection over `[limits] client_connections`, refused at accept: it never runs, but
    /// its ending is counted and logged like any other.
    pub fn refuse(&mut self, ctx: &mut Ctx) -> Drive {
        self.conclude(ctx, Cause::OverClientConnections);
        Drive::Closed
    }

    /// One pass over every step of the pump; true if any of them moved something.
    fn round(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let mut moved = self.read_client(ctx)?;
        moved |= self.read_proxy_header(ctx)?;
        moved |= self.start_request(ctx)?;
        moved |= self.check_connected(ctx)?;
        moved |= self.forward_request(ctx)?;
        moved |= self.check_client_eof(ctx)?;
        moved |= self.write_upstream(ctx)?;
        moved |= self.splice_request(ctx)?;
        moved |= self.read_upstream(ctx)?;
        moved |= self.relay_response(ctx)?;
        moved |= self.check_upstream_eof(ctx)?;
        moved |= self.write_client(ctx)?;
        moved |= self.splice_response(ctx)?;
        moved |= self.finish_exchange(ctx)?;
        Ok(moved)
    }

    fn read_client(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let ready = self.ready.readable || self.client.buffered_input();
        if !ready || self.client_eof || self.splicing_request(ctx) {
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
        let read = match self.phase {
            Phase::Proxy => self.client.read_clear(cin),
            _ => self.client.read(cin),
        };
        // Whatever the read gave: a handshake may finish with no request behind it.
        if let Some(handshake) = self.client.finished_handshake() {
            ctx.metrics.tls_handshake(handshake);
        }
        match read {
            Ok(Io::Moved(n)) => {
                ctx.metrics.bytes(n as u64, 0);
                // A short read drained the socket: wait for the next event instead of a
                // read that would only say WouldBlock.
                self.ready.after_read(n, room);
                // (TLS records may give no plaintext: a handshake is no request yet.)
                if self.phase.between_requests() && n > 0 {
                    self.head_started = ctx.now;
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
                Err(self.read_failed(&e))
            }
        }
    }

    /// A read from the client failed: a TLS failure, or the client broke the connection.
    fn read_failed(&self, e: &io::Error) -> Stop {
        match TlsFailure::of(e) {
            Some(failure) => Cause::Tls(failure).into(),
            None => self.client_gone(),
        }
    }

    /// The client broke the connection: the end of a request in progress, or of an idle one
    /// (or a TLS handshake it began).
    fn client_gone(&self) -> Stop {
        match self.phase {
            _ if self.client.in_handshake() => {
                Cause::Tls(TlsFailure::Handshake("the client closed the connection")).into()
            }
            Phase::Fresh | Phase::KeepAlive | Phase::Closing => Cause::Idle.into(),
            _ => Cause::ClientGone.into(),
        }
    }

    /// The client closed its side and everything it sent before has been used. After a whole
    /// request that is a half-close and the response still goes out; in a tunnel it is passed
    /// on to the backend; a request cut short, or a connection with no request, is over.
    fn check_client_eof(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        if !self.client_eof {
            return Ok(false);
        }
        let drained = held(&self.cin) == 0 && !self.piped().request;
        match (&self.exchange, self.phase) {
            (_, Phase::Closing) => Ok(false),
            (Some(ex), Phase::Connecting | Phase::Forwarding) if ex.req_body.is_done() => Ok(false),
            (Some(_), Phase::Connecting | Phase::Forwarding) if !drained => Ok(false),
            (_, Phase::Tunnel) if !drained => Ok(false),
            (Some(_), Phase::Tunnel) => Ok(self.half_close_upstream(ctx)),
            (None, Phase::Tunnel) => Err(Cause::Completed.into()),
            // Between requests, a head that can no longer complete, or a request body cut short.
            _ => Err(self.client_gone()),
        }
    }

    /// Once every byte the client sent before ending its side of a tunnel is with the backend,
    /// the backend sees the end too; the tunnel lasts until the backend ends its side (or
    /// `idle_ms` passes).
    fn half_close_upstream(&mut self, ctx: &mut Ctx) -> bool {
        let ex = self.exchange.as_mut().expect("a tunnel has its exchange");
        if ex.upstream_shut || held(&self.uout) > 0 || ex.pipes.request.is_some() {
            return false;
        }
        ex.upstream_shut = true;
        if let Some(up) = ex.upstream {
            let _ = ctx.upstreams.get(up).stream.shutdown_write();
        }
        true
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
                // On a TLS listener what followed the header is the start of the handshake.
                match self.client.take_early(cin.data()) {
                    Ok(true) => cin.consume(cin.len()),
                    Ok(false) => {}
                    Err(e) => return Err(self.read_failed(&e)),
                }
                // The request may have come with the header; if not, the connection is as
                // fresh as one that just arrived (a balancer's health check may now close it).
                self.head_started = ctx.now;
                let next = if cin.is_empty() {
                    Phase::Fresh
                } else {
                    Phase::Head
                };
                self.enter(next, ctx);
                Ok(true)
            }
            Err(why) => Err(Cause::BadProxyHeader(why).into()),
        }
    }

    /// Parses a request head from `cin`, writes the backend's head into `uout`, admits the
    /// request and starts the exchange with its backend.
    fn start_request(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        if self.phase != Phase::Head || self.exchange.is_some() || held(&self.cin) == 0 {
            return Ok(false);
        }
        // Whatever ends this request, lb-mio's own reply must fit behind the responses queued
        // for a pipelining client: the next request waits until they drained that far.
        if held(&self.cout) > BUF_SIZE - Reply::MAX_LEN {
            return Ok(false);
        }
        let config = &ctx.snap.config;
        let limits = HeadLimits {
            max_bytes: config.limits.max_header_bytes,
            max_headers: config.limits.max_headers,
        };
        // Drawn only when ids are on (then even when the client brings its own: it is cheap).
        let fresh = (config.lb.request_id.as_ref())
            .map(|_| ctx.ids.fresh())
            .unwrap_or_default();
        let dest = self.dest_addr(ctx);
        let (draw, worker) = (ctx.admission.draw(), ctx.admission.worker());
        let wanted = Wanted {
            id: config.lb.request_id.as_deref().map(|name| IdHeader {
                name,
                fresh: &fresh,
            }),
            path_room: match ctx.snap.routes.looks_at_paths() {
                true => Some(ctx.admission.path_room()),
                false => None,
            },
            https: self.client.is_tls(),
            client_cert: (config.tls.client_ca.is_some() && self.client.is_tls())
                .then(|| self.client.client_subject()),
        };
        let via = Via {
            client: self.peer.ip(),
            listener: listen_addr(config, self.listener),
            https: self.client.is_tls(),
            sni: self.client.sni(),
        };
        let cin = buf(&mut self.cin, ctx.buffers);
        let uout = buf(&mut self.uout, ctx.buffers);
        if let Some((version, dest)) = dest {
            proxy_protocol::write(version, self.peer, dest, uout);
        }
        let proxy_len = uout.len();
        let route = |seen: &Seen| admission::route(ctx.snap, seen, &via, (draw, worker));
        let parsed = request::parse_routed(cin.data(), limits, self.peer.ip(), wanted, uout, route);
        let (request, decision) = match parsed {
            Ok(Some(parsed)) => parsed,
            Ok(None) => {
                uout.truncate(0);
                return Ok(false);
            }
            Err(e) => {
                uout.truncate(0);
                return Err(Cause::BadHead(e).into());
            }
        };
        let head = &cin.data()[..request.head_len];
        if let Some(refused) = refused_by_listener(&self.client, self.listener, ctx, head) {
            uout.truncate(0);
            return Err(refused.into());
        }
        if request.id == IdFrom::Replaced {
            let header = config.lb.request_id.as_deref().unwrap_or_default();
            info!("{}: invalid {header} replaced by a fresh one", self.peer);
        }
        let pool = match decision.to {
            To::Pool(pool) => pool,
            To::Answer | To::NotFound => {
                uout.truncate(0);
                let cause = match decision.route {
                    Some(route) => Cause::Routed(route),
                    None => Cause::NoRoute,
                };
                return Err(cause.into());
            }
        };
        let conf = &ctx.snap.pools[pool].conf;
        let ex = Exchange::new(request, conf.retries, self.head_started, ctx.now);
        let mut held = ctx.exchanges.start(ex);
        let text = held.text_mut();
        text.set_id(request.id, head, &fresh);
        if config.log.access_log != AccessLog::Off {
            text.line.fill(head);
        }
        let admitted = match over_max_body(&request, conf.max_body) {
            true => Err(Cause::BodyTooLarge),
            false => ctx
                .admission
                .admit(ctx.snap, pool, self.peer.ip(), &request, head, ctx.now),
        };
        cin.consume(request.head_len);
        self.exchange = Some(held);
        let ex = self.exchange.as_mut().expect("just started");
        (ex.pool, ex.route) = (Some(pool), decision.route);
        let admitted = admitted?;
        ex.proxy_len = proxy_len;
        ex.lease = Some(admitted.lease);
        ex.key = admitted.key;
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

    /// Gets the exchange's backend a connection: an idle pooled one, or a new one. (With
    /// `send_proxy` the worker pools none: a connection's header names one client.)
    fn connect(&mut self, ctx: &mut Ctx) -> Result<(), Stop> {
        let ex = self.exchange.as_mut().expect("connect needs an exchange");
        let backend = ex.lease().id;
        ex.record.attempt = ctx.now;
        ex.record.connect = None;
        ex.record.first_byte = None;
        if let Some(id) = ctx.upstreams.checkout(backend, ctx.id) {
            ctx.metrics.upstream(true);
            ex.upstream = Some(id);
            self.enter(Phase::Forwarding, ctx);
            return Ok(());
        }
        let addr = ex.lease().backend().addr;
        let tls = match (&ex.lease().backend().tls, ctx.backend_tls) {
            (None, _) => None,
            (Some(name), Some(client)) => Some((client, name.as_str())),
            // A TLS backend added by a reload when none could be made at start.
            (Some(_), None) => {
                let unsupported = io::ErrorKind::Unsupported;
                return Err(Stop::Upstream(Failure::Connect(unsupported)));
            }
        };
        match ctx
            .upstreams
            .connect(ctx.registry, backend, addr, ctx.id, tls)
        {
            Ok(id) => {
                ctx.metrics.upstream(false);
                ex.upstream = Some(id);
                self.enter(Phase::Connecting, ctx);
                Ok(())
            }
            Err(e) => Err(Stop::Upstream(Failure::Connect(e.kind()))),
        }
    }

    /// A new backend connection became writable: did the TCP handshake succeed? Then, to a
    /// TLS backend, the TLS handshake (under `connect_ms` too, and before any of the request
    /// goes to rustls, so a failure leaves the request unsent and free to go elsewhere).
    fn check_connected(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(ex) = self.exchange.as_mut() else {
            return Ok(false);
        };
        let Some(up) = ex.upstream else {
            return Ok(false);
        };
        let up = ctx.upstreams.get(up);
        if self.phase != Phase::Connecting {
            return Ok(false);
        }
        let mut moved = false;
        if !up.connected {
            if !up.ready.writable {
                return Ok(false);
            }
            let socket = up.stream.socket();
            match (socket.take_error(), socket.peer_addr()) {
                (Ok(None), Ok(_)) => up.connected = true,
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => {
                    up.ready.writable = false; // a spurious event: still connecting
                    return Ok(false);
                }
                (Ok(Some(e)) | Err(e), _) | (Ok(None), Err(e)) => {
                    return Err(Stop::Upstream(Failure::Connect(e.kind())));
                }
            }
            moved = true;
            // A PROXY header goes before the ClientHello, in clear, as before a plain request.
            if up.stream.is_tls() && ex.proxy_len > 0 {
                let uout = buf(&mut self.uout, ctx.buffers);
                let header = &uout.data()[..ex.proxy_len];
                match io::Write::write(up.stream.socket(), header) {
                    Ok(n) if n == header.len() && ex.replayable => ex.sent = n,
                    Ok(n) if n == header.len() => uout.consume(n),
                    Ok(_) => return Err(Stop::Upstream(Failure::Closed)),
                    Err(e) => return Err(Stop::Upstream(Failure::Connect(e.kind()))),
                }
            }
        }
        if up.stream.in_handshake() {
            match up.stream.handshake(&mut up.ready) {
                Ok(progress) => moved |= progress,
                Err(e) => {
                    let failure = match TlsFailure::of(&e) {
                        Some(TlsFailure::Handshake(why) | TlsFailure::Record(why)) => {
                            Failure::Tls(why)
                        }
                        None => Failure::Connect(e.kind()),
                    };
                    return Err(Stop::Upstream(failure));
                }
            }
            if up.stream.in_handshake() {
                return Ok(moved);
            }
        }
        ex.record.connect = Some(ctx.now - ex.record.attempt);
        self.enter(Phase::Forwarding, ctx);
        Ok(true)
    }

    /// Moves request body bytes from `cin` to `uout`, validating their framing on the way.
    fn forward_request(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(ex) = &mut self.exchange else {
            return Ok(false);
        };
        // Spliced bytes still in the pipe go first.
        if ex.req_body.is_done() || held(&self.cin) == 0 || ex.pipes.request.is_some() {
            return Ok(false);
        }
        let cin = buf(&mut self.cin, ctx.buffers);
        let uout = buf(&mut self.uout, ctx.buffers);
        if uout.is_full() && ex.sent > 0 {
            ex.give_up_replay(uout);
        }
        let room = uout.room();
        let input = &cin.data()[..cin.len().min(room)];
        let used = ex.req_body.scan(input).map_err(Cause::BadBody)?;
        uout.put(&cin.data()[..used]);
        cin.consume(used);
        self.count_request_body(ctx, used)?;
        Ok(used > 0)
    }

    /// Counts `n` more request bytes passed on, against the pool's `max_body`. A chunked body
    /// counts with its framing: a few bytes a chunk on top of the data.
    fn count_request_body(&mut self, ctx: &Ctx, n: usize) -> Result<(), Stop> {
        let ex = self
            .exchange
            .as_mut()
            .expect("a request body has its exchange");
        ex.record.bytes_in += n as u64;
        let max_body = ctx.snap.pool_conf(ex.pool).max_body;
        let body = ex.record.bytes_in - ex.request.head_len as u64;
        if max_body > 0 && body > max_body {
            return Err(Cause::BodyTooLarge.into());
        }
        Ok(())
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
        if !up.ready.writable || pending == 0 && !up.stream.pending_output() {
            return Ok(false);
        }
        let uout = buf(&mut self.uout, ctx.buffers);
        match up.stream.write_from(uout, ex.sent) {
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
        // While spliced bytes wait in the pipe, what follows them could only wait in `uin`; and
        // a backend that resets once it sent everything must not cut a response lb-mio has whole.
        if self.piped().response || self.splicing_response(ctx) {
            return Ok(false);
        }
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
        if !(up.ready.readable || up.stream.buffered_input()) || uin.is_full() {
            return Ok(false);
        }
        let room = uin.spare_len();
        match up.stream.read(uin) {
            Ok(Io::Moved(n)) => {
                up.ready.after_read(n, room);
                // (TLS records may give no plaintext: the handshake is no answer yet.)
                if n > 0 && !ex.answered {
                    ex.answered = true;
                    ex.record.first_byte = Some(ctx.now - ex.record.attempt);
                }
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
            Some(ex) if !ex.answered => match TlsFailure::of(&e) {
                Some(TlsFailure::Handshake(why)) => Stop::Upstream(Failure::Tls(why)),
                _ => Stop::Upstream(Failure::Reset(e.kind())),
            },
            _ => Cause::BackendCut(Some(e.kind())).into(),
        }
    }

    /// The backend closed its side and the response bytes before the close have been relayed
    /// (as far as they can be): the end of a close-delimited body or a tunnel, or a failure.
    fn check_upstream_eof(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(ex) = self.exchange.as_deref_mut().filter(|ex| ex.upstream_eof) else {
            return Ok(false);
        };
        // Over TLS only close_notify ends a close-delimited body: a bare FIN could be anyone's
        // (RFC 9112 §9.8), and the response is then cut, not complete.
        let clean = ex
            .upstream
            .is_none_or(|up| ctx.upstreams.get(up).stream.closed_cleanly());
        ex.reusable = false;
        let drained = held(&self.uin) == 0 && ex.pipes.response.is_none();
        match &mut ex.response {
            ResponseState::Head if !ex.answered => Err(Stop::Upstream(Failure::Closed)),
            ResponseState::Head => Err(Cause::ClosedInHead.into()),
            _ if !drained => Ok(false),
            _ if self.phase == Phase::Tunnel => Err(Cause::Completed.into()),
            ResponseState::Body(body) => {
                if !body.close() || !clean {
                    return Err(Cause::BackendCut(None).into());
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
        // Spliced bytes still in the pipe go first.
        if self.exchange.is_none() || self.piped().response || held(&self.uin) == 0 {
            return Ok(false);
        }
        let ex = self.exchange.as_deref_mut().expect("checked above");
        match &mut ex.response {
            ResponseState::Head => self.relay_head(ctx),
            ResponseState::Body(body) => {
                let uin = buf(&mut self.uin, ctx.buffers);
                let cout = buf(&mut self.cout, ctx.buffers);
                let room = cout.room();
                let used = body
                    .scan(&uin.data()[..uin.len().min(room)])
                    .map_err(Cause::BadResponseBody)?;
                cout.put(&uin.data()[..used]);
                uin.consume(used);
                ex.record.bytes_out += used as u64;
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
        let held = self.exchange.as_mut().expect("relay needs an exchange");
        let (ex, text) = held.parts();
        let uin = buf(&mut self.uin, ctx.buffers);
        let cout = buf(&mut self.cout, ctx.buffers);
        let backend = ex
            .lease
            .as_ref()
            .expect("only an admitted request is answered");
        let backend = backend.backend();
        let lb = &ctx.snap.config.lb;
        let before = cout.len();
        // A stopping worker closes each connection after its response, and says so in it.
        let request = Request {
            keep_alive: ex.request.keep_alive && !ctx.stopping,
            ..ex.request
        };
        // A sticky client whose cookie does not name this backend (new, or moved by a failure)
        // gets one that does.
        let token = backend.token();
        let pool = ex.pool.map(|at| &ctx.snap.pools[at]);
        let cookie = pool
            .filter(|pool| pool.conf.sticky == Sticky::Cookie && request.sticky != Some(token))
            .map(|pool| format!("{}={token:016x}; Path=/; HttpOnly", pool.sticky_cookie));
        let added = Added {
            backend: lb
                .expose_backend
                .as_deref()
                .zip(Some(backend.name.as_str())),
            set_cookie: cookie.as_deref().map(str::as_bytes),
            server: lb.server_header.as_deref(),
            request_id: lb.request_id.as_deref().zip(text.id()),
            hsts: (ctx.snap.config.tls.hsts.as_deref()).filter(|_| self.client.is_tls()),
            rules: ex.route.and_then(|at| ctx.snap.routes.response_rules(at)),
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
                return Err(Cause::BadResponse(e).into());
            }
        };
        uin.consume(response.head_len);
        ex.record.bytes_out += (cout.len() - before) as u64;
        backend.record_success();
        if response.kind == Kind::Final {
            observe_latency(ctx, ex.pool, backend, ctx.now - ex.admitted);
        }
        ex.give_up_replay(buf(&mut self.uout, ctx.buffers));
        ex.status = response.status;
        match response.kind {
            Kind::Interim => {}
            Kind::Switch => {
                ex.took = Some(ctx.now - ex.admitted);
                ex.splice = Ways {
                    request: true,
                    response: true,
                };
                ex.req_body = Body::new(Framing::UntilClose);
                ex.response = ResponseState::Body(Body::new(Framing::UntilClose));
                self.enter(Phase::Tunnel, ctx);
            }
            Kind::Final => {
                ex.reusable = response.reusable;
                ex.client_keep_alive = response.client_keep_alive;
                ex.splice.response = response.framing.worth_splicing();
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
        let pending = held(&self.cout);
        if pending == 0 && !self.client.pending_output() || !self.ready.writable {
            return Ok(false);
        }
        let cout = buf(&mut self.cout, ctx.buffers);
        match self.client.write(cout) {
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
            Ok(Io::Closed) => Err(self.client_gone()),
            Err(e) => {
                debug!("{}: client write: {e}", self.peer);
                Err(self.client_gone())
            }
        }
    }

    /// When both the request and the response are complete: hand the backend connection back,
    /// then wait for the next request (already buffered if pipelined), or close.
    fn finish_exchange(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        let Some(ex) = &mut self.exchange else {
            return Ok(false);
        };
        // Complete once its last byte left the pipe too.
        let piped = ex.pipes.response.is_some();
        if !matches!(ex.response, ResponseState::Done) || piped || self.phase == Phase::Tunnel {
            return Ok(false);
        }
        if !ex.req_body.is_done() {
            // The backend answered before taking the whole request: nothing can follow it.
            return Err(Cause::Completed.into());
        }
        let unsent = held(&self.uout) - ex.sent > 0 || ex.pipes.request.is_some();
        let reusable = ex.reusable && !unsent && held(&self.uin) == 0;
        if let Some(up) = ex.upstream.take() {
            ctx.upstreams.release(ctx.registry, up, reusable);
        }
        let keep_alive = ex.client_keep_alive;
        self.conclude(ctx, Cause::Completed);
        for slot in [&mut self.uout, &mut self.uin] {
            if let Some(buffer) = slot.take() {
                ctx.buffers.give(buffer);
            }
        }
        if !keep_alive || ctx.stopping || (self.client_eof && held(&self.cin) == 0) {
            self.enter(Phase::Closing, ctx);
        } else if held(&self.cin) > 0 {
            self.head_started = ctx.now;
            self.enter(Phase::Head, ctx); // a pipelined request is waiting
        } else {
            self.enter(Phase::KeepAlive, ctx);
        }
        Ok(true)
    }

    /// Acts on a `Stop`: a retry, or the end of the request (and perhaps the connection).
    fn stop(&mut self, ctx: &mut Ctx, mut stop: Stop) -> Drive {
        let cause = loop {
            match stop {
                Stop::End(cause) => break cause,
                // Each turn spends a retry or a fresh connection: the loop is bounded.
                Stop::Upstream(failure) => match self.retry(ctx, failure) {
                    Ok(()) => return Drive::Open,
                    Err(next) => stop = next,
                },
            }
        };
        let cut = cause != Cause::Completed && self.response_started();
        self.conclude(ctx, cause);
        if cut {
            // Part of a response went out: the client gets a reset, never an end it could take
            // for the response's own (a close-delimited body ends with the connection).
            self.client.abort();
            return Drive::Closed;
        }
        if cause.closes_at_once() {
            return Drive::Closed;
        }
        self.enter(Phase::Closing, ctx);
        Drive::Open
    }

    /// The one place a request ends, and a connection that never got to one: it logs the
    /// ending, sends lb-mio's reply if it has one (and no response began), counts it, writes
    /// the access line, and lets the exchange go (its backend connection closed unless it was
    /// handed back).
    fn conclude(&mut self, ctx: &mut Ctx, cause: Cause) {
        let lease = self.exchange.as_ref().and_then(|ex| ex.lease.as_ref());
        cause.log(self.peer, lease.map(|l| l.backend().name.as_str()));
        let reply = cause.reply().filter(|_| !self.response_started());
        // A head refused before its exchange gets an id of its own, in its reply and its line.
        let refused_head = self.exchange.is_none() && self.phase == Phase::Head;
        let fresh =
            (refused_head && ctx.snap.config.lb.request_id.is_some()).then(|| ctx.ids.fresh());
        if cause.failed_handshake() {
            ctx.metrics.tls_failed();
        }
        let sent = match (reply, cause) {
            (Some(reply), _) => self.send_reply(ctx, reply, fresh.as_ref()),
            (None, Cause::Routed(at)) => self.send_route_answer(ctx, at, fresh.as_ref()),
            (None, _) => 0,
        };
        match (reply, &self.exchange) {
            (Some(reply), _) => ctx.metrics.reply(reply),
            // A tunnel is counted however it ends: its response was the 101.
            (None, Some(ex)) if cause == Cause::Completed || ex.took.is_some() => {
                let took = ex.took.unwrap_or(ctx.now - ex.admitted);
                ctx.metrics.response(ex.lease().id, ex.status, took);
            }
            _ => {
                if let Some(label) = cause.closed_label() {
                    ctx.metrics.closed(label);
                }
            }
        }
        let format = ctx.snap.config.log.access_log;
        if format != AccessLog::Off {
            let outcome = Outcome {
                code: ending::code(cause, self.at()),
                reply: reply.map(Reply::status).or(match cause {
                    Cause::Routed(at) => Some(ctx.snap.routes.route(at).status()),
                    _ => None,
                }),
                sent,
                now: ctx.now,
            };
            let sent_in = self.cin.as_ref().map_or(&[][..], Buffer::data);
            // Made only for a head refused before its exchange: it is 2 KiB.
            let line;
            let entry = match &self.exchange {
                Some(held) => Some(outcome.of_exchange(self.peer, held)),
                None if refused_head => {
                    line = RequestLine::of(sent_in);
                    let head = Some((self.head_started, fresh.as_ref().map(|id| &id[..])));
                    Some(outcome.before_exchange(self.peer, &line, sent_in.len(), head))
                }
                None if cause.closed_label().is_some() => {
                    let line = &RequestLine::EMPTY;
                    Some(outcome.before_exchange(self.peer, line, sent_in.len(), None))
                }
                None => None,
            };
            if let Some(mut entry) = entry {
                entry.tls = self.client.session();
                ctx.log.write(format, &entry, ctx.sink);
            }
        }
        if let Some(mut ex) = self.exchange.take() {
            if let Some(up) = ex.upstream.take() {
                ctx.upstreams.close(ctx.registry, up);
            }
            let pipes = [ex.pipes.request.take(), ex.pipes.response.take()];
            for pipe in pipes.into_iter().flatten() {
                ctx.pipes.give(pipe);
            }
            ctx.exchanges.end(ex);
        }
    }

    /// Writes `reply` for the client, with the exchange's id (or `fresh`); returns its length.
    fn send_reply(&mut self, ctx: &mut Ctx, reply: Reply, fresh: Option<&[u8; ID_LEN]>) -> u64 {
        let cout = buf(&mut self.cout, ctx.buffers);
        let before = cout.len();
        let lb = &ctx.snap.config.lb;
        let id = self.exchange.as_ref().and_then(|held| held.text().id());
        let id = id.or(fresh.map(|id| &id[..]));
        let mut location = [0; MAX_LOCATION];
        let mut location_len = 0;
        if let (Reply::RedirectHttps, Some(port)) = (reply, ctx.https_port) {
            let head = self.cin.as_ref().map_or(&[][..], Buffer::data);
            location_len = redirect::location_header(head, port, &mut location).unwrap_or(0);
        }
        reply.write(
            lb.server_header.as_deref(),
            lb.request_id.as_deref().zip(id),
            &location[..location_len],
            cout,
        );
        (cout.len() - before) as u64
    }

    /// Writes a route's own answer (a redirect or a direct answer) for the head still in
    /// `cin`; returns its length.
    fn send_route_answer(&mut self, ctx: &mut Ctx, at: usize, fresh: Option<&[u8; ID_LEN]>) -> u64 {
        let route = ctx.snap.routes.route(at);
        let head = self.cin.as_ref().map_or(&[][..], Buffer::data);
        let mut location = [0; MAX_LOCATION];
        let https = self.client.is_tls();
        let len = request::with_seen(head, |seen| route.location(seen, https, &mut location));
        let cout = buf(&mut self.cout, ctx.buffers);
        let before = cout.len();
        let lb = &ctx.snap.config.lb;
        let id = fresh.map(|id| &id[..]);
        let extra = &location[..len.unwrap_or(0)];
        let (server, id) = (
            lb.server_header.as_deref(),
            lb.request_id.as_deref().zip(id),
        );
        reply::write_response(route.answer(), server, id, extra, cout);
        (cout.len() - before) as u64
    }

    /// Where the request was, for the termination code.
    fn at(&self) -> At {
        match (self.phase, &self.exchange) {
            (Phase::Tunnel, _) => At::Tunnel,
            (Phase::Connecting, _) => At::Connect,
            (_, Some(ex)) if ex.response_started() || !ex.req_body.is_done() => At::Body,
            (_, Some(_)) => At::ResponseHead,
            _ => At::Head,
        }
    }

    /// Some of this exchange's response went to the client already: no other answer can follow.
    fn response_started(&self) -> bool {
        self.exchange
            .as_ref()
            .is_some_and(|ex| ex.response_started())
    }

    /// A backend connection failed before any response byte. The request goes to another
    /// backend if it can be replayed whole and sending it again is harmless.
    fn retry(&mut self, ctx: &mut Ctx, failure: Failure) -> Result<(), Stop> {
        let peer = self.peer;
        let ex = self.exchange.as_mut().expect("retry needs an exchange");
        let reused = ex.upstream.is_some_and(|up| ctx.upstreams.get(up).reused);
        let backend = ex.lease().id;
        warn!(
            "{peer}: backend {} failed: {failure}",
            ex.lease().backend().name
        );
        if let Some(up) = ex.upstream.take() {
            ctx.upstreams.close(ctx.registry, up);
        }
        let next = ex.after_failure(failure, reused);
        if failure.blames_backend(reused) {
            ex.tried.add(backend);
            count_failure(ctx, ex.pool, ex.lease(), failure);
        }
        let next = match next {
            Next::Retry => ctx
                .admission
                .retry(ctx.snap, ex.pool, ex.tried, ex.key, ctx.now)
                .map_err(|why| Cause::BackendFailed(failure, why))
                .map(Some)?,
            Next::Fresh => None,
            Next::GiveUp(why) => return Err(Cause::BackendFailed(failure, why).into()),
        };
        ex.sent = 0;
        ex.upstream_eof = false;
        match next {
            Some(lease) => {
                ctx.metrics.retry();
                ex.record.retries += 1;
                ex.lease = Some(lease);
            }
            // A pooled connection that fails is either one the backend closed while idle or
            // the sign of a backend that died; a fresh connection to the same backend tells
            // which. Its other idle connections are as suspect, so they go too.
            None => ctx.upstreams.close_idle(ctx.registry, backend),
        }
        self.connect(ctx)
    }

    /// Waiting on the client: its request body is incomplete and nothing is left to send.
    fn waiting_for_client(&self) -> bool {
        let piped = self.piped().request;
        self.exchange.as_ref().is_some_and(|ex| {
            !ex.req_body.is_done() && held(&self.uout) == ex.sent && held(&self.cin) == 0 && !piped
        })
    }

    /// Waiting on the client: response bytes sit in `cout` (or in the transport) and its
    /// socket takes no more.
    fn client_not_reading(&self) -> bool {
        let pending = held(&self.cout) > 0 || self.client.pending_output() || self.piped().response;
        pending && !self.ready.writable
    }

    fn timeout(&self, ctx: &Ctx) -> Duration {
        let t = &ctx.snap.config.timeouts;
        let pool = (self.exchange.as_ref()).map(|ex| ctx.snap.pool_conf(ex.pool));
        match self.phase {
            Phase::KeepAlive | Phase::Tunnel => t.idle,
            Phase::Proxy | Phase::Fresh | Phase::Head => t.header,
            Phase::Connecting => pool.map_or(t.connect, |p| p.connect),
            Phase::Forwarding => pool.map_or(t.backend, |p| p.backend),
            Phase::Closing => LINGER,
        }
    }

    fn enter(&mut self, phase: Phase, ctx: &mut Ctx) {
        if phase == Phase::Closing {
            self.drop_buffers(ctx);
        }
        self.phase = phase;
        self.deadline = ctx.now + self.timeout(ctx);
    }

    /// Gives back every buffer but `cout`, which may hold the last bytes for the client.
    fn drop_buffers(&mut self, ctx: &mut Ctx) {
        for slot in [&mut self.cin, &mut self.uout, &mut self.uin] {
            if let Some(buffer) = slot.take() {
                ctx.buffers.give(buffer);
            }
        }
    }

    /// A closing connection is finished once the client has all its bytes and has closed too.
    fn finished(&mut self) -> bool {
        if self.phase != Phase::Closing || held(&self.cout) > 0 || self.client.pending_output() {
            return false;
        }
        if !self.shut_down {
            self.shut_down = true;
            // Half-close so the client sees the end, but keep reading: closing with unread
            // input would reset the connection and could destroy the response in flight.
            if self.client.shutdown_write().is_err() {
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

    /// A stopping worker's drain time is over: a request still in progress (or a head that
    /// began to arrive) ends here, with its line.
    pub fn cut_short(&mut self, ctx: &mut Ctx) -> Drive {
        if self.exchange.is_some() || self.phase == Phase::Head {
            self.conclude(ctx, Cause::Stopped);
        }
        self.close(ctx)
    }

    /// A change renumbered the pools and routes: the request in flight keeps its own (or
    /// loses it, when the change removed it: no retry then, and the global timeouts).
    pub fn follow(&mut self, renumbering: &Renumbering) {
        if let Some(ex) = self.exchange.as_mut() {
            ex.pool = ex.pool.and_then(|at| renumbering.pool(at));
            ex.route = ex.route.and_then(|at| renumbering.route(at));
        }
    }

    /// Releases everything; the worker then deregisters the socket and frees the slot.
    pub fn close(&mut self, ctx: &mut Ctx) -> Drive {
        self.drop_buffers(ctx);
        if let Some(buffer) = self.cout.take() {
            ctx.buffers.give(buffer);
        }
        Drive::Closed
    }
}

/// What the listener itself answers instead of forwarding: a plain HTTP request that came
/// to a TLS port, or any request to a plain port that `[tls] redirect_http` sends to https.
fn refused_by_listener(client: &Transport, listener: u8, ctx: &Ctx, head: &[u8]) -> Option<Cause> {
    if client.spoke_plain_to_tls() {
        return Some(Cause::PlainHttpToTls);
    }
    let https_port = ctx.https_port?;
    let lb = &ctx.snap.config.lb;
    // Plain listeners come first: a TLS listener's index is past the end of `listen`.
    let plain = lb.listen.get(usize::from(listener))?;
    if !ctx.snap.config.tls.redirect_http.covers(*plain) {
        return None;
    }
    let mut location = [0; MAX_LOCATION];
    Some(
        match redirect::location_header(head, https_port, &mut location) {
            Some(_) => Cause::RedirectHttps,
            None if redirect::host(head).is_none() => {
                Cause::BadHead(HeadError::Malformed("no Host to redirect to"))
            }
            None => Cause::BadHead(HeadError::UriTooLong),
        },
    )
}

/// The address of listener `index` as config.ini gives it: `[lb] listen`, then `tls_listen`.
fn listen_addr(config: &Config, index: u8) -> SocketAddr {
    let lb = &config.lb;
    let all = lb.listen.iter().chain(&lb.tls_listen);
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    all.copied().nth(usize::from(index)).unwrap_or(unknown)
}

/// A body its length says is over the pool's `max_body` (a chunked one is counted as it goes).
fn over_max_body(request: &Request, max_body: u64) -> bool {
    matches!(request.framing, Framing::Length(n) if max_body > 0 && n > max_body)
}

/// Passive health: a failure on live traffic counts against the backend, and `max_fails` in a
/// row mark it down without waiting for the health checks (which bring it back).
fn count_failure(ctx: &Ctx, pool: Option<usize>, lease: &Lease, failure: Failure) {
    ctx.metrics.backend_error(lease.id);
    let backend = lease.backend();
    let conf = ctx.snap.pool_conf(pool);
    // For `ewma` a failure costs as much as the slowest connect we would wait for.
    observe_latency(ctx, pool, backend, conf.connect);
    let max_fails = conf.health.max_fails;
    if backend.record_failure(max_fails) {
        warn!(
            "backend {} is down: {max_fails} failures in a row, the last: {failure}",
            backend.name
        );
    }
}

/// Feeds the response-time average that `ewma` picks by (only then: it is a write that every
/// worker makes to the backend's shared record).
fn observe_latency(ctx: &Ctx, pool: Option<usize>, backend: &Backend, took: Duration) {
    if ctx.snap.pool_conf(pool).strategy == Strategy::Ewma {
        backend.observe_latency(took, backend::clock_ms(ctx.now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a request in flight needs lives in the reused exchange box, not in the slab entry
    /// every idle keep-alive connection keeps (600 bytes with the exchange inline, 272 with four
    /// 32-byte buffer slots).
    #[test]
    fn an_idle_connection_holds_no_exchange_state() {
        let entry = std::mem::size_of::<Conn>();
        assert!(entry <= 192, "Conn is {entry} bytes");
    }
}
