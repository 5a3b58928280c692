//! Backend choice: one small type per strategy behind one `pick` call. Every strategy reads only
//! atomics, skips backends that are down, and skips those a retry must avoid.

use crate::config::Strategy;
use crate::pool::Backend;
use rand::rngs::SmallRng;
use rand::RngExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Backends already tried for this request (by id; ids past 63 are never marked).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, id: usize) {
        if id < 64 {
            self.0 |= 1 << id;
        }
    }

    pub fn has(self, id: usize) -> bool {
        id < 64 && self.0 & (1 << id) != 0
    }
}

pub trait Balancer: Send + Sync {
    /// A backend that is up and not in `avoid`, or `None` when there is none.
    fn pick(&self, backends: &[Arc<Backend>], avoid: Tried, rng: &mut SmallRng) -> Option<usize>;
}

pub fn new(strategy: Strategy) -> Box<dyn Balancer> {
    match strategy {
        Strategy::RoundRobin => Box::new(RoundRobin::default()),
        Strategy::LeastConn => Box::new(LeastConn),
    }
}

fn eligible(backends: &[Arc<Backend>], avoid: Tried, id: usize) -> bool {
    backends[id].is_up() && !avoid.has(id)
}

/// Each request goes to the next backend in turn: one counter shared by all workers.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], avoid: Tried, _: &mut SmallRng) -> Option<usize> {
        let n = backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| start.wrapping_add(i) % n)
            .find(|&id| eligible(backends, avoid, id))
    }
}

/// The backend with the fewest requests in flight; ties are broken at random so workers that
/// read the same counters do not all pile onto the same backend.
pub struct LeastConn;

impl Balancer for LeastConn {
    fn pick(&self, backends: &[Arc<Backend>], avoid: Tried, rng: &mut SmallRng) -> Option<usize> {
        let mut best = None;
        let mut best_active = usize::MAX;
        let mut ties = 0;
        for id in (0..backends.len()).filter(|&id| eligible(backends, avoid, id)) {
            let active = backends[id].active();
            if active < best_active {
                (best, best_active, ties) = (Some(id), active, 1);
            } else if active == best_active {
                // Reservoir sampling: each of the k tied backends ends up chosen with odds 1/k.
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some(id);
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendConf;
    use crate::pool::{self, Backends, Lease};
    use rand::SeedableRng;

    fn backends(n: usize) -> Backends {
        let confs: Vec<BackendConf> = (0..n)
            .map(|i| BackendConf {
                name: format!("s{i}"),
                addr: format!("127.0.0.1:{}", 9001 + i).parse().unwrap(),
                weight: 1,
            })
            .collect();
        pool::from_config(&confs)
    }

    fn picks(balancer: &dyn Balancer, backends: &Backends, count: usize) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(7);
        (0..count)
            .map(|_| balancer.pick(backends, Tried::default(), &mut rng).unwrap())
            .collect()
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let pool = backends(3);
        assert_eq!(picks(&RoundRobin::default(), &pool, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_down_backends() {
        let pool = backends(3);
        pool[1].set_up(false);
        assert_eq!(picks(&RoundRobin::default(), &pool, 4), [0, 2, 2, 0]);
    }

    #[test]
    fn round_robin_skips_tried_backends() {
        let pool = backends(3);
        let mut tried = Tried::default();
        tried.add(0);
        tried.add(1);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..3 {
            assert_eq!(RoundRobin::default().pick(&pool, tried, &mut rng), Some(2));
        }
    }

    #[test]
    fn no_backend_when_all_are_down() {
        let pool = backends(2);
        pool.iter().for_each(|b| _ = b.set_up(false));
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(
            RoundRobin::default().pick(&pool, Tried::default(), &mut rng),
            None
        );
        assert_eq!(LeastConn.pick(&pool, Tried::default(), &mut rng), None);
    }

    #[test]
    fn least_conn_picks_the_least_busy() {
        let pool = backends(3);
        let _busy = [
            Lease::new(&pool, 0),
            Lease::new(&pool, 0),
            Lease::new(&pool, 2),
        ];
        assert!(picks(&LeastConn, &pool, 20).iter().all(|&id| id == 1));
    }

    #[test]
    fn least_conn_spreads_ties_evenly() {
        let pool = backends(3);
        let mut counts = [0usize; 3];
        for id in picks(&LeastConn, &pool, 3000) {
            counts[id] += 1;
        }
        // Each backend should get a third; 10% either side is about 4 standard deviations.
        assert!(
            counts.iter().all(|&c| (900..=1100).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn lease_counts_while_alive() {
        let pool = backends(1);
        let lease = Lease::new(&pool, 0);
        assert_eq!(pool[0].active(), 1);
        drop(lease);
        assert_eq!(pool[0].active(), 0);
    }
}
