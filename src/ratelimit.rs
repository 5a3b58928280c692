//! Rate limiting with token buckets, and the per-client connection limit. Token buckets: one for all clients and one per client address. Each
//! worker keeps its own buckets, with its share of the configured rates (rate ÷ workers), so
//! the request path shares nothing; per-client buckets live in a fixed-size table where a new
//! client takes over the slot of another, so memory stays fixed whatever the clients do.

use crate::config::Limits;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Slots in a worker's per-client table.
const CLIENT_SLOTS: usize = 4096;

/// `rate` tokens a second, holding at most `burst`; a request takes one.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(burst);
        self.at = now;
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        allowed
    }
}

/// A rate and its burst, as one worker's share; `None` when off.
#[derive(Debug, Clone, Copy)]
struct Share {
    rate: f64,
    burst: f64,
}

impl Share {
    fn of(rate: u32, burst: u32, workers: usize) -> Option<Share> {
        let per_worker = |n: u32| (f64::from(n) / workers as f64).max(1.0);
        (rate > 0).then(|| Share {
            rate: per_worker(rate),
            burst: per_worker(if burst > 0 { burst } else { rate }),
        })
    }
}

/// One worker's limits.
pub struct RateLimits {
    global: Option<(Share, Bucket)>,
    client: Option<Share>,
    clients: Vec<Option<(IpAddr, Bucket)>>,
}

impl RateLimits {
    pub fn new(limits: &Limits, workers: usize, now: Instant) -> RateLimits {
        let global = Share::of(limits.rate, limits.rate_burst, workers)
            .map(|s| (s, Bucket::full(s.burst, now)));
        let client = Share::of(limits.client_rate, limits.client_burst, workers);
        let slots = if client.is_some() { CLIENT_SLOTS } else { 0 };
        RateLimits {
            global,
            client,
            clients: vec![None; slots],
        }
    }

    /// Whether a request from `client` may go on now (it takes a token from each bucket).
    pub fn allow(&mut self, client: IpAddr, now: Instant) -> bool {
        self.allow_client(client, now) && self.allow_global(now)
    }

    fn allow_global(&mut self, now: Instant) -> bool {
        match &mut self.global {
            Some((share, bucket)) => bucket.take(share.rate, share.burst, now),
            None => true,
        }
    }

    fn allow_client(&mut self, client: IpAddr, now: Instant) -> bool {
        let Some(share) = self.client else {
            return true;
        };
        let slot = &mut self.clients[slot_of(client)];
        match slot {
            Some((ip, bucket)) if *ip == client => bucket.take(share.rate, share.burst, now),
            _ => {
                // A new client (or one evicted since) starts with a full bucket.
                let mut bucket = Bucket::full(share.burst, now);
                let allowed = bucket.take(share.rate, share.burst, now);
                *slot = Some((client, bucket));
                allowed
            }
        }
    }
}

/// A client's slot in a worker's bucket table.
fn slot_of(client: IpAddr) -> usize {
    hash(client) as usize % CLIENT_SLOTS
}

/// FNV-1a over the address bytes (no allocation).
fn hash(client: IpAddr) -> u64 {
    let v6 = match client.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    crate::hash::fnv1a(crate::hash::FNV_OFFSET, &v6.octets())
}
/// Open connections per client address, over all workers: a fixed table of atomic counters
/// indexed by a hash of the address, touched once when a connection opens and once when it
/// closes (never per request). Two clients that share a slot share its limit: with 65,536 slots
/// that is rare, and it can only limit early, never let a client past the limit.
pub struct ConnLimit {
    max: u32,
    open: Vec<AtomicU32>,
}

/// Slots in the connection-count table.
const CONN_SLOTS: usize = 65_536;

impl ConnLimit {
    /// `max` connections per client address; `None` when 0 (off).
    pub fn new(max: u32) -> Option<ConnLimit> {
        (max > 0).then(|| ConnLimit {
            max,
            open: (0..CONN_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Counts a new connection from `client`; false (and not counted) when over the limit.
    pub fn open(&self, client: IpAddr) -> bool {
        let slot = &self.open[hash(client) as usize % CONN_SLOTS];
        if slot.fetch_add(1, Ordering::Relaxed) < self.max {
            return true;
        }
        slot.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// A counted connection from `client` closed.
    pub fn close(&self, client: IpAddr) {
        self.open[hash(client) as usize % CONN_SLOTS].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(rate: u32, burst: u32, client_rate: u32, client_burst: u32) -> Limits {
        Limits {
            rate,
            rate_burst: burst,
            client_rate,
            client_burst,
            ..Limits::default()
        }
    }

    fn allowed(rl: &mut RateLimits, client: IpAddr, count: usize, now: Instant) -> usize {
        (0..count).filter(|_| rl.allow(client, now)).count()
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let start = Instant::now();
        let mut rl = RateLimits::new(&limits(10, 5, 0, 0), 1, start);
        assert_eq!(allowed(&mut rl, A, 20, start), 5, "the burst");
        assert_eq!(
            allowed(&mut rl, A, 20, start + Duration::from_millis(500)),
            5,
            "10/s for 0.5 s"
        );
    }

    #[test]
    fn each_client_has_its_own_bucket() {
        let now = Instant::now();
        let mut rl = RateLimits::new(&limits(0, 0, 2, 0), 1, now);
        assert_eq!(allowed(&mut rl, A, 10, now), 2);
        assert_eq!(
            allowed(&mut rl, B, 10, now),
            2,
            "A's limit does not touch B"
        );
    }

    #[test]
    fn workers_share_the_rate() {
        let now = Instant::now();
        let mut rl = RateLimits::new(&limits(100, 100, 0, 0), 4, now);
        assert_eq!(allowed(&mut rl, A, 100, now), 25);
    }

    #[test]
    fn connections_per_client_are_held_to_the_limit() {
        let limit = ConnLimit::new(2).unwrap();
        assert!(limit.open(A) && limit.open(A));
        assert!(!limit.open(A), "a third connection from A");
        assert!(limit.open(B), "B has its own count");
        limit.close(A);
        assert!(limit.open(A), "room again after a close");
        assert!(ConnLimit::new(0).is_none(), "0 is off");
    }

    #[test]
    fn off_by_default() {
        let now = Instant::now();
        let mut rl = RateLimits::new(&Limits::default(), 1, now);
        assert_eq!(allowed(&mut rl, A, 10_000, now), 10_000);
    }
}
