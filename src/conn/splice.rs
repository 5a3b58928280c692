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
use crate::pipe::{self, Pipe, Pipes};
use crate::token::Readiness;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// One way through a pipe, as a turn of it needs it.
struct Leg<'a> {
    from: RawFd,
    from_ready: &'a mut Readiness,
    to: RawFd,
    to_ready: &'a mut Readiness,
    /// The body the bytes belong to; `None` once it is complete (its last bytes may still be
    /// in the pipe).
    body: Option<&'a mut Body>,
    pipe: &'a mut Option<Pipe>,
    /// Bytes read earlier and still buffered (`cin`, `uin`): they go before any spliced byte.
    before: usize,
    /// Bytes that must leave before the pipe's (`uout`'s unsent ones, `cout`).
    ahead: usize,
}

/// What a fill did.
#[derive(Default)]
struct Filled {
    bytes: usize,
    /// The reading side closed.
    eof: bool,
    /// No pipe could be had, or the kernel refused to splice: the body is copied instead.
    refused: bool,
}

impl Filled {
    fn moved(&self) -> bool {
        self.bytes > 0 || self.eof || self.refused
    }
}

impl Leg<'_> {
    /// One splice into the pipe, if the body has bytes to pass and the socket may have them.
    fn fill(&mut self, pipes: &mut Pipes) -> io::Result<Filled> {
        let mut filled = Filled::default();
        let max = self.body.as_ref().map_or(0, |body| body.splice_len());
        if self.before > 0 || max == 0 || !self.from_ready.readable {
            return Ok(filled);
        }
        let Some(mut pipe) = self.pipe.take().or_else(|| pipes.take()) else {
            filled.refused = true; // none free: the buffered path takes the body on
            return Ok(filled);
        };
        let moved = pipe.fill(self.from, max);
        let empty = pipe.is_empty();
        *self.pipe = Some(pipe);
        match moved? {
            Io::Moved(n) => {
                if let Some(body) = self.body.as_mut() {
                    body.pass(n as u64);
                }
                filled.bytes = n;
            }
            // Into an empty pipe: the socket is drained. Otherwise the pipe may be the one full:
            // the socket is tried again once the pipe drained.
            Io::Blocked => self.from_ready.readable &= !empty,
            Io::Closed => {
                self.from_ready.readable = false;
                filled.eof = true;
            }
        }
        Ok(filled)
    }

    /// One splice out of the pipe, once nothing must leave before its bytes.
    fn drain(&mut self) -> io::Result<usize> {
        let Some(pipe) = self.pipe.as_mut().filter(|p| !p.is_empty()) else {
            return Ok(0);
        };
        if self.ahead > 0 || !self.to_ready.writable {
            return Ok(0);
        }
        match pipe.drain(self.to)? {
            Io::Moved(n) => Ok(n),
            Io::Blocked => {
                self.to_ready.writable = false;
                Ok(0)
            }
            Io::Closed => Err(io::ErrorKind::WriteZero.into()),
        }
    }

    /// A fill, and a drain unless the fill failed; a drained pipe goes back to the worker.
    /// (Both results come back, so what moved is counted whatever failed.)
    fn turn(mut self, pipes: &mut Pipes) -> (io::Result<Filled>, io::Result<usize>) {
        let filled = match self.fill(pipes) {
            Err(e) if pipe::unsupported(&e) && self.pipe.as_ref().is_some_and(Pipe::is_empty) => {
                pipes.refuse(&format!("splice: {e}"));
                Ok(Filled {
                    refused: true,
                    ..Filled::default()
                })
            }
            filled => filled,
        };
        let drained = match filled {
            Ok(_) => self.drain(),
            Err(_) => Ok(0),
        };
        if let Some(pipe) = self.pipe.take_if(|p| p.is_empty()) {
            pipes.give(pipe);
        }
        (filled, drained)
    }
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
        let up = ctx
            .upstreams
            .get(ex.upstream.expect("a spliced request has its backend"));
        let leg = Leg {
            from: self.client.socket().as_raw_fd(),
            from_ready: &mut self.ready,
            to: up.stream.socket().as_raw_fd(),
            to_ready: &mut up.ready,
            body: Some(&mut ex.req_body),
            pipe: &mut ex.pipes.request,
            before: held(&self.cin),
            ahead: held(&self.uout) - ex.sent,
        };
        let (filled, drained) = leg.turn(ctx.pipes);
        // No pipe to be had: this body is copied from here on.
        ex.splice.request &= !filled.as_ref().is_ok_and(|f| f.refused);
        let bytes = filled.as_ref().map_or(0, |f| f.bytes);
        if ex.replayable && bytes > 0 {
            // Spliced bytes are not kept: from the first one the request cannot be sent again
            // (until then a backend that closes on its head still gets it retried).
            ex.give_up_replay(buf(&mut self.uout, ctx.buffers));
        }
        ctx.metrics.spliced(bytes as u64, 0);
        self.count_request_body(ctx, bytes)?;
        let filled = filled.map_err(|e| self.read_failed(&e))?;
        self.client_eof |= filled.eof;
        let drained = drained.map_err(|e| self.upstream_broke(e))?;
        Ok(filled.moved() || drained > 0)
    }

    /// Backend → pipe → client.
    pub(super) fn splice_response(&mut self, ctx: &mut Ctx) -> Result<bool, Stop> {
        if !(self.piped().response || self.splicing_response(ctx)) {
            return Ok(false);
        }
        let ex = self.exchange.as_deref_mut().expect("checked above");
        let up = ctx
            .upstreams
            .get(ex.upstream.expect("a spliced response has its backend"));
        let leg = Leg {
            from: up.stream.socket().as_raw_fd(),
            from_ready: &mut up.ready,
            to: self.client.socket().as_raw_fd(),
            to_ready: &mut self.ready,
            body: match &mut ex.response {
                ResponseState::Body(body) => Some(body),
                _ => None,
            },
            pipe: &mut ex.pipes.response,
            before: held(&self.uin),
            ahead: held(&self.cout),
        };
        let (filled, drained) = leg.turn(ctx.pipes);
        ex.splice.response &= !filled.as_ref().is_ok_and(|f| f.refused);
        ex.record.bytes_out += filled.as_ref().map_or(0, |f| f.bytes) as u64;
        if matches!(&ex.response, ResponseState::Body(body) if body.is_done()) {
            ex.response = ResponseState::Done;
        }
        ex.upstream_eof |= filled.as_ref().is_ok_and(|f| f.eof);
        ctx.metrics
            .spliced(0, *drained.as_ref().unwrap_or(&0) as u64);
        let filled = filled.map_err(|e| self.upstream_broke(e))?;
        let drained = drained.map_err(|e| {
            log::debug!("{}: client write: {e}", self.peer);
            self.client_gone()
        })?;
        Ok(filled.moved() || drained > 0)
    }
}
