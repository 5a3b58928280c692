//! Request ids (`[lb] request_id`): a request that comes without a valid id gets a fresh one,
//! unique across workers, processes and hosts without a system call per request: a random
//! 64-bit prefix drawn once per process, the worker's index and the worker's own counter.

use std::fs::File;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest id taken from a client; a longer one (or one with other than visible ASCII) is
/// replaced.
pub const MAX_CLIENT_ID: usize = 128;

/// Length of a fresh id: 32 hex digits.
pub const ID_LEN: usize = 32;

/// A client's id is kept when it is 1..=128 visible ASCII characters.
pub fn valid(id: &[u8]) -> bool {
    (1..=MAX_CLIENT_ID).contains(&id.len()) && id.iter().all(u8::is_ascii_graphic)
}

/// One worker's source of fresh ids.
pub struct RequestIds {
    prefix: u64,
    worker: u16,
    next: u64,
}

impl RequestIds {
    pub fn new(prefix: u64, worker: usize) -> RequestIds {
        RequestIds {
            prefix,
            worker: worker as u16,
            next: 0,
        }
    }

    /// `PPPPPPPPPPPPPPPP WWWW CCCCCCCCCCCC` (prefix, worker, counter) without the spaces.
    pub fn fresh(&mut self) -> [u8; ID_LEN] {
        self.next += 1;
        let mut id = [0; ID_LEN];
        hex(&mut id[..16], self.prefix);
        hex(&mut id[16..20], u64::from(self.worker));
        hex(&mut id[20..], self.next);
        id
    }
}

/// `value`'s low hex digits into `out`, most significant first.
fn hex(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The per-process prefix: 64 bits from the kernel's random source (the clock and the pid if
/// it cannot be read).
pub fn process_prefix() -> u64 {
    let mut bytes = [0u8; 8];
    match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_differ_by_worker_and_count() {
        let mut a = RequestIds::new(0xfeed, 0);
        let mut b = RequestIds::new(0xfeed, 1);
        let first = a.fresh();
        assert_eq!(&first, b"000000000000feed0000000000000001");
        assert_ne!(a.fresh(), first);
        assert_ne!(b.fresh(), first);
        assert!(valid(&first));
    }

    #[test]
    fn client_ids_must_be_short_visible_ascii() {
        assert!(valid(b"f81d4fae-7dec-11d0-a765-00a0c91e6bf6"));
        assert!(valid(&[b'x'; 128]));
        assert!(!valid(&[b'x'; 129]));
        assert!(!valid(b""));
        assert!(!valid(b"has space"));
        assert!(!valid(b"caf\xc3\xa9"));
    }
}
