//! Counters and latency histograms. Each worker owns one `WorkerMetrics` and is the only thread
//! that writes it, so the request path never writes a cache line another thread writes; the
//! admin thread sums all workers' counters when it is asked for them.
//!
//! Per-backend counters come in blocks of `BLOCK` backends, allocated as the backend set grows
//! (`WorkerMetrics::grow`, when a worker takes a larger snapshot) and never moved or freed, so
//! the admin thread reads them while the worker writes, without a lock.

use crate::backend::MAX_BACKENDS;
use crate::http::reply::Reply;
use crate::tls::Handshake;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le` labels).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why connections were closed without an answer (`lbmio_closed_total{reason}`).
pub const CLOSED_REASONS: [&str; 6] = [
    "bad_proxy_header",
    "proxy_timeout",
    "client_connections",
    "tls_handshake",
    "tls_handshake_timeout",
    "tls_error",
];

/// A latency histogram: a count per bucket (the last one unbounded) and the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        bump(&self.counts[bucket], 1);
        bump(&self.sum_micros, took.as_micros() as u64);
    }

    /// Adds this histogram's counts into `into` (per bucket, not cumulative) and its sum.
    fn add_to(&self, into: &mut Latency) {
        for (total, count) in into.counts.iter_mut().zip(&self.counts) {
            *total += count.load(Ordering::Relaxed);
        }
        into.sum_micros += self.sum_micros.load(Ordering::Relaxed);
    }
}

/// A single writer adds with a plain load and store: no locked instruction on the hot path.
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

/// What one worker counts for one backend.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// Responses by status class: 1xx (switching only), 2xx, 3xx, 4xx, 5xx.
    responses: [AtomicU64; 5],
    /// Requests that failed on this backend (refused, reset, timed out, garbage).
    errors: AtomicU64,
    latency: Histogram,
}

/// Backends per block of counters: 64 × 176 bytes, about 11 KiB a block per worker.
const BLOCK: usize = 64;

type Block = [BackendMetrics; BLOCK];

/// One worker's counters, on cache lines of their own.
#[derive(Debug)]
#[repr(align(64))]
pub struct WorkerMetrics {
    /// Per-backend counters, by id: block `id / BLOCK`, once allocated.
    backends: [OnceLock<Box<Block>>; MAX_BACKENDS / BLOCK],
    latency: Histogram,
    replies: [AtomicU64; Reply::ALL.len()],
    closed: [AtomicU64; CLOSED_REASONS.len()],
    retries: AtomicU64,
    upstream_opened: AtomicU64,
    upstream_reused: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Of those, the bytes spliced (`pipe`): in, out.
    spliced: [AtomicU64; 2],
    connections: AtomicU64,
    /// TLS handshakes: finished with TLS 1.2, with TLS 1.3, failed.
    tls_handshakes: [AtomicU64; 3],
    tls_resumed: AtomicU64,
}

impl Default for WorkerMetrics {
    fn default() -> WorkerMetrics {
        WorkerMetrics {
            backends: std::array::from_fn(|_| OnceLock::new()),
            latency: Histogram::default(),
            replies: Default::default(),
            closed: Default::default(),
            retries: AtomicU64::default(),
            upstream_opened: AtomicU64::default(),
            upstream_reused: AtomicU64::default(),
            bytes_in: AtomicU64::default(),
            bytes_out: AtomicU64::default(),
            spliced: Default::default(),
            connections: AtomicU64::default(),
            tls_handshakes: Default::default(),
            tls_resumed: AtomicU64::default(),
        }
    }
}

impl WorkerMetrics {
    /// Counters for the first `backends` ids: the worker calls this when it takes a snapshot,
    /// so the request path finds them allocated.
    pub fn grow(&self, backends: usize) {
        for id in (0..backends).step_by(BLOCK) {
            self.counters(id);
        }
    }

    /// The counters of backend `id`, allocating its block if `grow` did not.
    fn counters(&self, id: usize) -> &BackendMetrics {
        let block = self.backends[id / BLOCK]
            .get_or_init(|| Box::new(std::array::from_fn(|_| BackendMetrics::default())));
        &block[id % BLOCK]
    }

    /// The counters of backend `id` if any were kept.
    fn kept(&self, id: usize) -> Option<&BackendMetrics> {
        let block = self.backends[id / BLOCK].get()?;
        Some(&block[id % BLOCK])
    }

    /// Slot `backend` took a new backend: its counters start again from zero. Only the
    /// worker that owns these counters calls this (they have one writer).
    pub fn reset_backend(&self, backend: usize) {
        let counters = self.counters(backend);
        let zero = |c: &AtomicU64| c.store(0, Ordering::Relaxed);
        counters.responses.iter().for_each(zero);
        zero(&counters.errors);
        counters.latency.counts.iter().for_each(zero);
        zero(&counters.latency.sum_micros);
    }

    /// A response from `backend` ended after `took`.
    pub fn response(&self, backend: usize, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let counters = self.counters(backend);
        bump(&counters.responses[class], 1);
        counters.latency.observe(took);
        self.latency.observe(took);
    }

    pub fn backend_error(&self, backend: usize) {
        bump(&self.counters(backend).errors, 1);
    }

    pub fn reply(&self, reply: Reply) {
        let index = Reply::ALL.iter().position(|&r| r == reply).unwrap_or(0);
        bump(&self.replies[index], 1);
    }

    /// A connection closed without an answer, for one of `CLOSED_REASONS`.
    pub fn closed(&self, reason: &str) {
        if let Some(index) = CLOSED_REASONS.iter().position(|&r| r == reason) {
            bump(&self.closed[index], 1);
        }
    }

    pub fn retry(&self) {
        bump(&self.retries, 1);
    }

    pub fn upstream(&self, reused: bool) {
        bump(
            if reused {
                &self.upstream_reused
            } else {
                &self.upstream_opened
            },
            1,
        );
    }

    pub fn bytes(&self, from_clients: u64, to_clients: u64) {
        bump(&self.bytes_in, from_clients);
        bump(&self.bytes_out, to_clients);
    }

    /// Client bytes that went through a pipe, never through lb-mio's buffers.
    pub fn spliced(&self, from_clients: u64, to_clients: u64) {
        self.bytes(from_clients, to_clients);
        bump(&self.spliced[0], from_clients);
        bump(&self.spliced[1], to_clients);
    }

    /// A TLS handshake finished.
    pub fn tls_handshake(&self, handshake: Handshake) {
        bump(&self.tls_handshakes[usize::from(handshake.tls13)], 1);
        if handshake.resumed {
            bump(&self.tls_resumed, 1);
        }
    }

    pub fn tls_failed(&self) {
        bump(&self.tls_handshakes[2], 1);
    }

    /// The worker's count of open client connections (a gauge).
    pub fn set_connections(&self, open: usize) {
        self.connections.store(open as u64, Ordering::Relaxed);
    }
}

/// Latency summed over workers: counts per bucket (not cumulative) and the sum.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Latency {
    pub counts: [u64; BUCKETS.len() + 1],
    pub sum_micros: u64,
}

impl Latency {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One backend's counters summed over workers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BackendTotals {
    pub responses: [u64; 5],
    pub errors: u64,
    pub latency: Latency,
}

impl BackendTotals {
    pub fn requests(&self) -> u64 {
        self.responses.iter().sum::<u64>() + self.errors
    }
}

/// Everything summed over workers, as a scrape sees it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    pub backends: Vec<BackendTotals>,
    pub latency: Latency,
    pub replies: Vec<(Reply, u64)>,
    pub closed: Vec<(&'static str, u64)>,
    pub retries: u64,
    pub upstream_opened: u64,
    pub upstream_reused: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub spliced_in: u64,
    pub spliced_out: u64,
    pub connections: u64,
    /// Handshakes finished with TLS 1.2, with TLS 1.3, failed.
    pub tls_handshakes: [u64; 3],
    pub tls_resumed: u64,
}

/// Sums the counters of `workers` for the first `backends` backend ids.
pub fn totals(workers: &[&WorkerMetrics], backends: usize) -> Totals {
    let mut t = Totals {
        backends: vec![BackendTotals::default(); backends],
        replies: Reply::ALL.iter().map(|&r| (r, 0)).collect(),
        closed: CLOSED_REASONS.iter().map(|&r| (r, 0)).collect(),
        ..Totals::default()
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for w in workers {
        let kept = t.backends.iter_mut().enumerate();
        for (total, counters) in kept.filter_map(|(id, total)| Some((total, w.kept(id)?))) {
            for (sum, class) in total.responses.iter_mut().zip(&counters.responses) {
                *sum += load(class);
            }
            total.errors += load(&counters.errors);
            counters.latency.add_to(&mut total.latency);
        }
        w.latency.add_to(&mut t.latency);
        for ((_, sum), count) in t.closed.iter_mut().zip(&w.closed) {
            *sum += load(count);
        }
        for ((_, sum), count) in t.replies.iter_mut().zip(&w.replies) {
            *sum += load(count);
        }
        t.retries += load(&w.retries);
        t.upstream_opened += load(&w.upstream_opened);
        t.upstream_reused += load(&w.upstream_reused);
        t.bytes_in += load(&w.bytes_in);
        t.bytes_out += load(&w.bytes_out);
        t.spliced_in += load(&w.spliced[0]);
        t.spliced_out += load(&w.spliced[1]);
        t.connections += load(&w.connections);
        for (sum, count) in t.tls_handshakes.iter_mut().zip(&w.tls_handshakes) {
            *sum += load(count);
        }
        t.tls_resumed += load(&w.tls_resumed);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_every_worker() {
        let (a, b) = (WorkerMetrics::default(), WorkerMetrics::default());
        a.response(0, 200, Duration::from_micros(300));
        b.response(0, 503, Duration::from_millis(2));
        b.response(1, 204, Duration::from_secs(20));
        a.backend_error(1);
        a.reply(Reply::ServiceUnavailable);
        b.retry();
        let t = totals(&[&a, &b], 2);
        assert_eq!(t.backends[0].responses, [0, 1, 0, 0, 1]);
        assert_eq!(t.backends[1].requests(), 2);
        assert_eq!(t.latency.count(), 3);
        assert_eq!(t.latency.counts[0], 1, "300 µs is in the first bucket");
        assert_eq!(t.latency.counts[2], 1, "2 ms is in the 2.5 ms bucket");
        assert_eq!(
            t.latency.counts[BUCKETS.len()],
            1,
            "20 s is past the last bound"
        );
        assert_eq!(t.latency.sum_micros, 300 + 2_000 + 20_000_000);
        assert!(t.replies.contains(&(Reply::ServiceUnavailable, 1)));
        assert_eq!(t.retries, 1);
    }

    #[test]
    fn a_reused_slot_counts_from_zero() {
        let w = WorkerMetrics::default();
        w.response(3, 200, Duration::from_millis(1));
        w.backend_error(3);
        w.response(4, 200, Duration::from_millis(1));
        w.reset_backend(3);
        let t = totals(&[&w], 5);
        assert_eq!(t.backends[3], BackendTotals::default());
        assert_eq!(t.backends[4].requests(), 1, "other slots keep theirs");
        assert_eq!(
            t.latency.count(),
            2,
            "the overall histogram keeps every request"
        );
    }
}
