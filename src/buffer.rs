//! Fixed-size byte buffers with read/write cursors, and the per-worker pool they come from.
//!
//! A connection takes buffers from the pool when it has bytes to hold and gives them back when it
//! goes idle, so an idle keep-alive connection costs its socket and a slab slot, not buffer memory.

use std::io::{self, Read, Write};

/// Size of every buffer: large enough for any request or response head we accept.
pub const BUF_SIZE: usize = 16 * 1024;

/// A byte buffer: bytes `start..end` are held, `end..BUF_SIZE` is free space.
pub struct Buffer {
    bytes: Box<[u8]>,
    start: usize,
    end: usize,
}

/// What one socket read or write did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Io {
    /// Moved this many bytes (never 0).
    Moved(usize),
    /// The socket has nothing more for now (`WouldBlock`).
    Blocked,
    /// The peer closed its side (read returned 0).
    Closed,
}

impl Buffer {
    fn new() -> Buffer {
        Buffer {
            bytes: vec![0; BUF_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The bytes held.
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn is_full(&self) -> bool {
        self.len() == BUF_SIZE
    }

    /// Drops `n` bytes from the front (they were written or parsed).
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Drops held bytes past the first `len` (undoes a partly written head).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }

    /// Free space at the back, moving held bytes to the front first when that makes more room.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && self.end == BUF_SIZE {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.bytes[self.end..]
    }

    /// Marks `n` bytes written into `spare()` as held.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= BUF_SIZE);
        self.end += n;
    }

    /// Appends as much of `bytes` as fits; returns how much did.
    pub fn put(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let n = bytes.len().min(spare.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.commit(n);
        n
    }

    /// One `read` from `src` into the free space (callers check `is_full` first).
    pub fn read_from(&mut self, src: &mut impl Read) -> io::Result<Io> {
        let spare = self.spare();
        debug_assert!(
            !spare.is_empty(),
            "callers read only into a buffer with room"
        );
        match retry_interrupted(|| src.read(spare)) {
            Ok(0) => Ok(Io::Closed),
            Ok(n) => {
                self.commit(n);
                Ok(Io::Moved(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Io::Blocked),
            Err(e) => Err(e),
        }
    }

    /// One `write` of the held bytes from `skip` on to `dst`; the caller decides what to consume.
    pub fn write_to(&self, skip: usize, dst: &mut impl Write) -> io::Result<Io> {
        let data = &self.data()[skip..];
        match retry_interrupted(|| dst.write(data)) {
            Ok(0) => Ok(Io::Closed),
            Ok(n) => Ok(Io::Moved(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Io::Blocked),
            Err(e) => Err(e),
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }
}

fn retry_interrupted<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A worker's free buffers. Buffers are allocated on first need and reused after that, so the
/// steady state allocates nothing; at most `keep` free buffers are kept.
pub struct BufferPool {
    free: Vec<Buffer>,
    keep: usize,
}

impl BufferPool {
    pub fn new(keep: usize) -> BufferPool {
        BufferPool {
            free: Vec::with_capacity(keep),
            keep,
        }
    }

    pub fn take(&mut self) -> Buffer {
        self.free.pop().unwrap_or_else(Buffer::new)
    }

    pub fn give(&mut self, mut buf: Buffer) {
        if self.free.len() < self.keep {
            buf.clear();
            self.free.push(buf);
        }
    }
}
