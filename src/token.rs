//! Typed `mio` tokens: which socket an event is for. A slab index and its side pack into one
//! `Token`; the listener and the waker have reserved values above every index.

use crate::config::MAX_LISTEN;

/// A worker's listeners: `listen`, then `tls_listen`, each up to `MAX_LISTEN` addresses.
const MAX_LISTENERS: usize = 2 * MAX_LISTEN;
use mio::{event::Event, Token};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    /// The worker's listener `n`: the `listen` addresses, then the `tls_listen` ones.
    Listener(usize),
    /// The main thread has a message for this worker.
    Waker,
    /// The client socket of connection `n` (index into the worker's connection slab).
    Client(usize),
    /// Upstream socket `n` (index into the worker's upstream slab).
    Upstream(usize),
}

const WAKER: usize = usize::MAX;
/// Listener `n` is `LISTENERS - n`, below the waker and far above any slab index.
const LISTENERS: usize = usize::MAX - 1;
const LOWEST_LISTENER: usize = LISTENERS - MAX_LISTENERS + 1;

impl From<Tok> for Token {
    fn from(tok: Tok) -> Token {
        Token(match tok {
            Tok::Listener(n) => LISTENERS - n,
            Tok::Waker => WAKER,
            Tok::Client(n) => n << 1,
            Tok::Upstream(n) => n << 1 | 1,
        })
    }
}

impl From<Token> for Tok {
    fn from(Token(t): Token) -> Tok {
        match t {
            WAKER => Tok::Waker,
            LOWEST_LISTENER..=LISTENERS => Tok::Listener(LISTENERS - t),
            t if t & 1 == 0 => Tok::Client(t >> 1),
            t => Tok::Upstream(t >> 1),
        }
    }
}

/// What the kernel last reported for a socket, kept until a read or write shows it is used up.
/// Sockets are registered once for both directions; each state acts on the readiness it needs,
/// so an event that a state cannot use yet is remembered instead of lost (edge-triggered).
#[derive(Debug, Default, Clone, Copy)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer closed its side (or the socket failed): a read will end in EOF or an error,
    /// however short the reads before it, and no further event will say so.
    pub read_closed: bool,
}

impl Readiness {
    /// After a read of `n` bytes into `room`: a short read means the socket is drained, unless
    /// the peer's close is still to be read.
    pub fn after_read(&mut self, n: usize, room: usize) {
        self.readable = n == room || self.read_closed;
    }

    /// Errors and hang-ups count as both: the next read or write reports them.
    pub fn update(&mut self, event: &Event) {
        let broken = event.is_error() || event.is_read_closed() || event.is_write_closed();
        self.read_closed |= event.is_read_closed() || event.is_error();
        self.readable |= event.is_readable() || broken;
        self.writable |= event.is_writable() || broken;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for tok in [
            Tok::Listener(0),
            Tok::Listener(MAX_LISTEN - 1),
            Tok::Waker,
            Tok::Client(0),
            Tok::Upstream(0),
            Tok::Client(7),
            Tok::Upstream(1 << 40),
        ] {
            assert_eq!(Tok::from(Token::from(tok)), tok);
        }
    }
}
