//! Kernel pipes for the zero-copy relay: a large body moves socket → pipe → socket with
//! splice(2), so the kernel hands its pages on and lb-mio never copies the bytes.
//!
//! A worker keeps its pipes in `Pipes`, made on first need and reused. A connection holds one
//! only while bytes sit in it (it goes back when drained), so pipes serve the bodies actually
//! moving, not every connection that might send one. The kernel counts pipe pages per user
//! (`/proc/sys/fs/pipe-user-pages-soft`: 64 MiB by default): over it, new pipes are one page
//! and cannot grow; `Pipes` then stops making them and bodies take the buffered path.

use crate::buffer::Io;
use log::warn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

/// The size each pipe is given (`F_SETPIPE_SZ`), measured: a 1 MiB response cost 302 µs of
/// CPU through 64 KiB pipes, 348 µs through 256 KiB ones and 303 µs through 1 MiB ones: larger
/// pipes save splices but not CPU, and take more of the user's pipe budget (README).
const PIPE_SIZE: usize = 64 * 1024;

/// A pipe that came out smaller than this (the user is over its pipe pages) is not worth a
/// splice: its few slots would cost more system calls than copying.
const MIN_PIPE_SIZE: usize = PIPE_SIZE;

/// Most pipes one worker makes (fewer when the user's pipe budget is small: `Pipes::new`).
const MAX_PIPES: usize = 64;

/// Where the kernel keeps the per-user pipe budget, in pages.
const PIPE_USER_PAGES_SOFT: &str = "/proc/sys/fs/pipe-user-pages-soft";

/// Free pipes kept for the next bodies; more go back to the kernel when drained.
const KEEP_FREE: usize = 16;

/// Bodies whose length says at least this much are spliced (after what came in with their
/// head). Measured: a 16 KiB body costs less copied (its head
/// and body leave in one write, a splice needs calls of its own), 32 KiB costs a fifth less
/// spliced, 64 KiB two fifths (README, "Zero-copy bodies").
pub const SPLICE_MIN: u64 = 32 * 1024;

/// A pipe and how many bytes it holds.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just made and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let fd = write.as_raw_fd();
        // Growing fails over the user's pipe budget: the pipe keeps the size it has.
        // SAFETY: fcntl on a descriptor this function owns.
        let size = match unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) } {
            n if n > 0 => n,
            // SAFETY: as above.
            _ => unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) },
        };
        Ok(Pipe {
            read,
            write,
            held: 0,
            size: usize::try_from(size).unwrap_or(0),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// One splice of at most `max` bytes from socket `from` into the pipe. `Blocked` with
    /// bytes already in the pipe says nothing of the socket: the pipe may be the one full
    /// (it counts slots, and a slot may hold a small segment), so only `Blocked` into an
    /// empty pipe means the socket is drained.
    pub fn fill(&mut self, from: RawFd, max: u64) -> io::Result<Io> {
        let room = self.size - self.held;
        let len = usize::try_from(max).unwrap_or(usize::MAX).min(room);
        if len == 0 {
            return Ok(Io::Blocked);
        }
        let moved = splice(from, self.write.as_raw_fd(), len)?;
        if let Io::Moved(n) = moved {
            self.held += n;
        }
        Ok(moved)
    }

    /// One splice of what the pipe holds into socket `to`.
    pub fn drain(&mut self, to: RawFd) -> io::Result<Io> {
        let moved = splice(self.read.as_raw_fd(), to, self.held)?;
        if let Io::Moved(n) = moved {
            self.held -= n;
        }
        Ok(moved)
    }
}

/// One non-blocking splice of up to `len` bytes.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<Io> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    loop {
        // SAFETY: both descriptors are open for the length of the call; null offsets, as
        // sockets and pipes have none.
        let n = unsafe { libc::splice(from, ptr::null_mut(), to, ptr::null_mut(), len, flags) };
        match n {
            0 => return Ok(Io::Closed),
            n if n > 0 => return Ok(Io::Moved(n as usize)),
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(Io::Blocked),
                    _ => return Err(e),
                }
            }
        }
    }
}

/// The kernel cannot make pipes or splice these descriptors (an old kernel, a socket type
/// without it): an answer that will not change, unlike running out of descriptors.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS))
}

/// A worker's pipes.
pub struct Pipes {
    free: Vec<Pipe>,
    /// Pipes made and not yet closed: free, or lent to a connection.
    made: usize,
    /// Most pipes made at once.
    max: usize,
    /// Off since the kernel refused to splice: the buffered path.
    on: bool,
    /// A pipe could not be had once (said once in the log).
    short: bool,
}

impl Pipes {
    /// The pipes of one of `workers` workers: all of them together take at most half the
    /// user's pipe budget, and the rest stays for the user's other processes.
    pub fn new(workers: usize) -> Pipes {
        let pages: Option<usize> = std::fs::read_to_string(PIPE_USER_PAGES_SOFT)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .filter(|&pages| pages > 0); // 0: no budget at all
        let max = pages.map_or(MAX_PIPES, |pages| {
            (pages * 4096 / 2 / workers.max(1) / PIPE_SIZE).clamp(1, MAX_PIPES)
        });
        Pipes {
            free: Vec::new(),
            made: 0,
            max,
            on: true,
            short: false,
        }
    }

    /// A pipe can be had now (`take` fails after this only if the kernel refuses a new one).
    pub fn available(&self) -> bool {
        self.on && (!self.free.is_empty() || self.made < self.max)
    }

    /// A free pipe, or a new one; `None` when none can be had (this body is copied instead).
    pub fn take(&mut self) -> Option<Pipe> {
        if !self.available() {
            return None;
        }
        if let Some(pipe) = self.free.pop() {
            return Some(pipe);
        }
        match Pipe::new() {
            Ok(pipe) if pipe.size >= MIN_PIPE_SIZE => {
                self.made += 1;
                Some(pipe)
            }
            // Over the user's budget (lb-mio's other workers, or the user's other processes):
            // the kernel made a one-page pipe. Maybe not for long, so only this body is copied.
            Ok(pipe) => self.short(&format!("a new pipe got {} bytes", pipe.size)),
            Err(e) if unsupported(&e) => {
                self.refuse(&format!("pipe2: {e}"));
                None
            }
            // Out of descriptors or memory for now.
            Err(e) => self.short(&format!("pipe2: {e}")),
        }
    }

    /// No pipe for this body; the first time, a warning.
    fn short(&mut self, why: &str) -> Option<Pipe> {
        if !self.short {
            self.short = true;
            warn!("a body is copied, not spliced: {why} (see {PIPE_USER_PAGES_SOFT}); said once");
        }
        None
    }

    /// Takes back a pipe: kept if it is empty and few are free, closed otherwise (a pipe
    /// that still holds bytes belonged to a body that was cut).
    pub fn give(&mut self, pipe: Pipe) {
        if pipe.is_empty() && self.free.len() < KEEP_FREE {
            self.free.push(pipe);
        } else {
            self.made -= 1;
        }
    }

    /// The kernel cannot splice: this worker copies every body from now on.
    pub fn refuse(&mut self, why: &str) {
        if self.on {
            warn!("splice off for this worker, bodies are copied: {why}");
            self.on = false;
            self.made -= self.free.len();
            self.free.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn bytes_go_through_a_pipe_unchanged() {
        let (mut tx, from) = UnixStream::pair().unwrap();
        let (to, mut rx) = UnixStream::pair().unwrap();
        from.set_nonblocking(true).unwrap();
        let mut pipes = Pipes::new(1);
        let mut pipe = pipes.take().expect("a pipe");
        assert!(pipe.size >= MIN_PIPE_SIZE);
        tx.write_all(b"hello, pipe").unwrap();
        assert_eq!(pipe.fill(from.as_raw_fd(), 5).unwrap(), Io::Moved(5));
        assert_eq!(pipe.fill(from.as_raw_fd(), 100).unwrap(), Io::Moved(6));
        assert_eq!(pipe.fill(from.as_raw_fd(), 100).unwrap(), Io::Blocked);
        assert_eq!(pipe.drain(to.as_raw_fd()).unwrap(), Io::Moved(11));
        assert!(pipe.is_empty());
        let mut got = [0; 11];
        rx.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello, pipe");
        drop(tx);
        assert_eq!(pipe.fill(from.as_raw_fd(), 100).unwrap(), Io::Closed);
        pipes.give(pipe);
        assert_eq!(pipes.free.len(), 1);
    }

    #[test]
    fn a_pipe_with_bytes_left_is_closed_not_reused() {
        let (mut tx, from) = UnixStream::pair().unwrap();
        let mut pipes = Pipes::new(1);
        let mut pipe = pipes.take().unwrap();
        tx.write_all(b"cut").unwrap();
        assert_eq!(pipe.fill(from.as_raw_fd(), 100).unwrap(), Io::Moved(3));
        pipes.give(pipe);
        assert_eq!((pipes.free.len(), pipes.made), (0, 0));
    }

    #[test]
    fn workers_share_half_the_users_pipe_budget() {
        let budget =
            std::fs::read_to_string(PIPE_USER_PAGES_SOFT).map(|t| t.trim().parse::<usize>());
        let many = Pipes::new(1 << 20);
        match budget {
            Ok(Ok(pages)) if pages > 0 => assert_eq!(many.max, 1),
            _ => assert_eq!(many.max, MAX_PIPES),
        }
        assert!(Pipes::new(1).max >= many.max);
    }

    #[test]
    fn refused_gives_no_more_pipes() {
        let mut pipes = Pipes::new(1);
        pipes.refuse("test");
        assert!(!pipes.available());
        assert!(pipes.take().is_none());
    }
}
