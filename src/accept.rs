//! What an accept loop does when `accept` fails: one rule for the workers and the demo
//! backends.

use log::warn;
use std::io;
use std::time::{Duration, Instant};

/// How long accepting pauses when the process is out of file descriptors.
const BACKOFF: Duration = Duration::from_millis(100);

/// The accept loop's next step after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The queue is empty: the listener's next event brings more.
    Wait,
    /// The error was about one connection (or a signal): accept the next.
    Retry,
    /// Out of descriptors or memory: accepting again at once would fail the same way, so the
    /// queued connections wait until then.
    PauseUntil(Instant),
}

/// Decides what follows `accept` failing with `e` at `now`, and logs the errors that matter.
pub fn after_error(e: &io::Error, now: Instant) -> Next {
    if e.kind() == io::ErrorKind::WouldBlock {
        return Next::Wait;
    }
    if out_of_descriptors(e) {
        warn!("accept: {e}; pausing accepts for {BACKOFF:?}");
        return Next::PauseUntil(now + BACKOFF);
    }
    warn!("accept: {e}");
    Next::Retry
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_out_of_resources_pauses() {
        let now = Instant::now();
        let after = |e: io::Error| after_error(&e, now);
        assert_eq!(after(io::ErrorKind::WouldBlock.into()), Next::Wait);
        for errno in [24, 23, 105, 12] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(after(e), Next::PauseUntil(now + BACKOFF));
        }
        assert_eq!(after(io::ErrorKind::ConnectionAborted.into()), Next::Retry);
        assert_eq!(after(io::ErrorKind::Interrupted.into()), Next::Retry);
    }
}
