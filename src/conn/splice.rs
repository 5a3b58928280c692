//! The zero-copy relay: a body worth splicing (`Framing::worth_splicing`) moves socket → pipe →
//! socket (`crate::pipe`), in the same pump and under the same rules as the buffered path:
//! edge-triggered readiness, backpressure (a full pipe stops the reading side), the timeouts
//! between bytes, exact byte counts. Only plain TCP on both sides: TLS bytes must pass through
//! rustls.
//!
//! Order holds by one rule each way. Bytes go into the pipe only once the buffer read before
//! it (`cin`, `uin`) is empty, and out of it only once the buffer that must leave first
//! (`uout`'s unsent bytes, `cout`) is; the buffered relay into that buffer waits while the
//! pipe holds bytes. A chunked body's size lines take the buffered path, and its large
//! chunks' data the pipe, so the framing is checked as before.

use super::{buf, held, Conn, Ctx, ResponseState, Stop, Ways};
use crate::buffer::Io;
use crate::http::body::Body;
use crate::pipe::{Pipe, Pipes};
use crate::token::Readiness;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// One way through a pipe, as a turn of it needs it.
struct Leg<'a> {
    from: RawFd,
    from_ready: &'a mut Readiness,
    to: RawFd,
    to_ready: &'a mut Readiness,
    body: &'a mut Body,
    pipe: &'a mut Option<Pipe>,
    /// Bytes read earlier and still buffered (`cin`, `uin`): they go before any spliced byte.
    before: usize,
    /// Bytes that must leave before the pipe's (`uout`'s unsent ones, `cout`).
    ahead: usize,
}

/// What a turn did.
#[derive(Default)]
struct Turn {
    /// Bytes into the pipe.
    filled: usize,
    /// Bytes out of it.
    drained: usize,
    /// The reading side closed.
    eof: bool,
    /// The kernel refused to splice: the worker copies from now on.
    refused: bool,
}

impl Turn {
    fn moved(&self) -> bool {
        self.filled > 0 || self.drained > 0 || self.eof || self.refused
    }
}

/// Which socket failed.
enum Broke {
    From(io::Error),
    To(io::Error),
}

impl Leg<'_> {
    /// One splice in, if the body has bytes to pass and the socket may have them, then one
    /// out, if nothing must leave first; a drained pipe goes back to the worker.
    fn turn(self, pipes: &mut Pipes) -> Result<Turn, Broke> {
        let mut turn = Turn::default();
        let max = self.body.splice_len();
        if self.before == 0 && max > 0 && self.from_ready.readable {
            if let Some(mut pipe) = self.pipe.take().or_else(|| pipes.take()) {
                let filled = pipe.fill(self.from, max);
                let empty = pipe.is_empty();
                *self.pipe = Some(pipe);
                match filled {
                    Ok(Io::Moved(n)) => {
                        self.body.pass(n as u64);
                        turn.filled = n;
                    }
                    // Into an empty pipe: the socket is drained. Otherwise the pipe may be the
                    // one full: the socket is tried again once the pipe drained.
                    Ok(Io::Blocked) => self.from_ready.readable &= !empty,
                    Ok(Io::Closed) => {
                        self.from_ready.readable = false;
                        turn.eof = true;
                    }
                    Err(e) if refused(&e) && empty => {
                        pipes.refuse(&format!("splice: {e}"));
                        turn.refused = true;
                    }
                    Err(e) => return Err(Broke::From(e)),
                }
            } else {
                turn.refused = !pipes.available(); // making one failed: copy instead
            }
        }
        if let Some(pipe) = self.pipe.as_mut().filter(|p| !p.is_empty()) {
            if self.ahead == 0 && self.to_ready.writable {
                match pipe.drain(self.to) {
                    Ok(Io::Moved(n)) => turn.drained = n,
                    Ok(Io::Blocked) => self.to_ready.writable = false,
                    Ok(Io::Closed) => return Err(Broke::To(io::ErrorKind::WriteZero.into())),
                    Err(e) => return Err(Broke::To(e)),
                }
            }
        }
        if let Some(pipe) = self.pipe.take_if(|p| p.is_empty()) {
            pipes.give(pipe);
        }
        Ok(turn)
    }
}

/// The kernel cannot splice these descriptors (an old kernel, a socket type without it).
fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS))
}

impl Conn {
    /// Which ways have spliced bytes waiting in a pipe (a pipe is held only while some are).
    pub(super) fn piped(&self) -> Ways<bool> {
        let ex = self.exchange.as_deref();
        Ways {
            request: ex.is_some_and(|ex| ex.pipes.request.is_some()),
            response: ex.is_some_and(|ex| ex.pipes.response.is_some()),
        }
    }

    /// The request body (or a tunnel's client bytes) goes to the backend through a pipe now.
    pub(super) fn splicing_request(&self, ctx: &Ctx) -> bool {
        let Some(ex) = self.exchange.as_deref() else {
            return false;
        };
        // Only behind a head the backend took: a pooled connection found closed on that write
        // leaves the request whole to send again.
        let sent = held(&self.uout) == ex.sent && (ex.sent > 0 || !ex.replayable);
        let splices = ex.splice.request && ex.req_body.splice_len() > 0 && held(&self.cin) == 0;
        splices
            && sent
            && self.phase.talks_to_backend()
            && self.can_splice(ctx, ex.pipes.request.is_some())
    }

    /// The response body (or a tunnel's backend bytes) goes to the client through a pipe now.
    pub(super) fn splicing_response(&self, ctx: &Ctx) -> bool {
        let Some(ex) = self.exchange.as_deref() else {
            return false;
        };
        let splices = match &ex.response {
            ResponseState::Body(body) => ex.splice.response && body.splice_len() > 0,
            _ => false,
        };
        splices && held(&self.uin) == 0 && self.can_splice(ctx, ex.pipes.response.is_some())
    }

    /// Both sides are plain TCP, splicing is on, and a pipe is held or can be had.
    fn can_splice(&self, ctx: &Ctx, holds_pipe: bool) -> bool {
        let upstream = self.exchange.as_ref().and_then(|ex| ex.upstream);
        let plain = upstream.is_some_and(|up| ctx.upstreams.plain(up));
        plain
            && !self.client.is_tls()
            && ctx.snap.config.lb.splice
            && (holds_pipe || ctx.pipes.available())
    }

    /// Client → pipe → backend.
    pub(super) fn splice_request(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        if !(self.piped().request || self.splicing_request(ctx)) {
            return Ok(false);
        }
        let ex = self.exchange.as_deref_mut().expect("checked above");
        if ex.replayable {
            // The spliced bytes are not kept: the request can no longer be sent again (as a
            // buffered body larger than `uout` could not be either).
            ex.give_up_replay(buf(&mut self.uout, ctx.buffers));
        }
        let up = ctx
            .upstreams
            .get(ex.upstream.expect("a spliced request has its backend"));
        let leg = Leg {
            from: self.client.socket().as_raw_fd(),
            from_ready: &mut self.ready,
            to: up.stream.socket().as_raw_fd(),
            to_ready: &mut up.ready,
            body: &mut ex.req_body,
            pipe: &mut ex.pipes.request,
            before: held(&self.cin),
            ahead: held(&self.uout) - ex.sent,
        };
        let turn = match leg.turn(ctx.pipes) {
            Ok(turn) => turn,
            Err(Broke::From(e)) => return Err(self.read_failed(&e)),
            Err(Broke::To(e)) => return Err(self.upstream_broke(e)),
        };
        self.client_eof |= turn.eof;
        ctx.metrics.spliced(turn.filled as u64, 0);
        self.count_request_body(ctx, turn.filled)?;
        Ok(turn.moved())
    }

    /// Backend → pipe → client.
    pub(super) fn splice_response(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        if !(self.piped().response || self.splicing_response(ctx)) {
            return Ok(false);
        }
        let ex = self.exchange.as_deref_mut().expect("checked above");
        // A body done may still have its last bytes in the pipe: they drain.
        let mut done = Body::Done;
        let body = match &mut ex.response {
            ResponseState::Body(body) => body,
            _ => &mut done,
        };
        let up = ctx
            .upstreams
            .get(ex.upstream.expect("a spliced response has its backend"));
        let leg = Leg {
            from: up.stream.socket().as_raw_fd(),
            from_ready: &mut up.ready,
            to: self.client.socket().as_raw_fd(),
            to_ready: &mut self.ready,
            body,
            pipe: &mut ex.pipes.response,
            before: held(&self.uin),
            ahead: held(&self.cout),
        };
        let turn = match leg.turn(ctx.pipes) {
            Ok(turn) => turn,
            Err(Broke::From(e)) => return Err(self.upstream_broke(e)),
            Err(Broke::To(e)) => {
                log::debug!("{}: client write: {e}", self.peer);
                return Err(self.client_gone());
            }
        };
        ex.upstream_eof |= turn.eof;
        ex.record.bytes_out += turn.filled as u64;
        if matches!(&ex.response, ResponseState::Body(body) if body.is_done()) {
            ex.response = ResponseState::Done;
        }
        ctx.metrics.spliced(0, turn.drained as u64);
        Ok(turn.moved())
    }
}
