//! Fixed-size byte buffers with read/write cursors, and the per-worker pool they come from.
//!
//! A connection takes buffers from the pool when it has bytes to hold and gives them back when it
//! goes idle, so an idle keep-alive connection costs its socket and a slab slot, not buffer memory.

use std::io::{self, Read, Write};

/// Size of every buffer: large enough for any request or response head we accept.
pub const BUF_SIZE: usize = 16 * 1024;

/// A byte buffer: bytes `start..end` are held, `end..BUF_SIZE` is free space. One pointer, so
/// a connection's four empty buffer slots cost 32 bytes of its slab entry.
pub struct Buffer(Box<Space>);

struct Space {
    start: usize,
    end: usize,
    bytes: [u8; BUF_SIZE],
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
        Buffer(Box::new(Space {
            start: 0,
            end: 0,
            bytes: [0; BUF_SIZE],
        }))
    }

    /// The bytes held.
    pub fn data(&self) -> &[u8] {
        &self.0.bytes[self.0.start..self.0.end]
    }

    pub fn len(&self) -> usize {
        self.0.end - self.0.start
    }

    pub fn is_empty(&self) -> bool {
        self.0.start == self.0.end
    }

    pub fn is_full(&self) -> bool {
        self.len() == BUF_SIZE
    }

    /// Drops `n` bytes from the front (they were written or parsed).
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.0.start += n;
        if self.0.start == self.0.end {
            self.0.start = 0;
            self.0.end = 0;
        }
    }

    /// Drops held bytes past the first `len` (undoes a partly written head).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.0.end = self.0.start + len;
        }
    }

    /// Free space in all, at the back or the front.
    pub fn room(&self) -> usize {
        BUF_SIZE - self.len()
    }

    /// Free space at the back, moving held bytes to the front first when the back is full.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.0.end == BUF_SIZE {
            self.compact();
        }
        &mut self.0.bytes[self.0.end..]
    }

    /// How many bytes the next `read_from` can take: a read that fills it may have left more
    /// in the socket, a shorter one drained it.
    pub fn spare_len(&mut self) -> usize {
        self.spare().len()
    }

    fn compact(&mut self) {
        self.0.bytes.copy_within(self.0.start..self.0.end, 0);
        self.0.end -= self.0.start;
        self.0.start = 0;
    }

    /// Marks `n` bytes written into `spare()` as held.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.0.end + n <= BUF_SIZE);
        self.0.end += n;
    }

    /// Appends as much of `bytes` as fits (up to `room()`); returns how much did.
    pub fn put(&mut self, bytes: &[u8]) -> usize {
        if bytes.len() > BUF_SIZE - self.0.end {
            self.compact();
        }
        let spare = &mut self.0.bytes[self.0.end..];
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
        self.0.start = 0;
        self.0.end = 0;
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

    /// Free buffers held.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Frees all but `keep` of the free buffers (a burst is over).
    pub fn shrink(&mut self, keep: usize) {
        self.free.truncate(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer_with_gap_at_front() -> Buffer {
        let mut buf = BufferPool::new(0).take();
        assert_eq!(buf.put(&[1; BUF_SIZE - 100]), BUF_SIZE - 100);
        buf.consume(1000); // 1000 free at the front, 100 at the back
        buf
    }

    #[test]
    fn put_uses_the_free_space_at_the_front_too() {
        let mut buf = buffer_with_gap_at_front();
        assert_eq!(buf.room(), 1100);
        assert_eq!(buf.put(&[2; 1100]), 1100);
        assert!(buf.is_full());
        assert_eq!(&buf.data()[..BUF_SIZE - 1100], &[1; BUF_SIZE - 1100][..]);
        assert_eq!(&buf.data()[BUF_SIZE - 1100..], &[2; 1100][..]);
    }

    #[test]
    fn put_of_more_than_the_room_takes_what_fits() {
        let mut buf = buffer_with_gap_at_front();
        assert_eq!(buf.put(&[2; 5000]), 1100);
    }

    #[test]
    fn reads_go_to_the_back_until_it_is_full() {
        let mut buf = buffer_with_gap_at_front();
        assert_eq!(buf.spare_len(), 100);
        let mut src: &[u8] = &[3; 100];
        assert_eq!(buf.read_from(&mut src).unwrap(), Io::Moved(100));
        assert_eq!(
            buf.spare_len(),
            1000,
            "a full back moves the held bytes to the front"
        );
    }

    #[test]
    fn emptied_buffer_starts_over() {
        let mut buf = buffer_with_gap_at_front();
        buf.consume(buf.len());
        assert!(buf.is_empty());
        assert_eq!(buf.spare_len(), BUF_SIZE);
    }
}
