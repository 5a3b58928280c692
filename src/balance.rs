//! Backend choice: one small type per strategy behind one `pick` call. Every strategy reads only
//! atomics, skips backends that are down, and skips those a retry must avoid.

use crate::config::Strategy;
use crate::pool::Backend;
use rand::rngs::SmallRng;
use rand::RngExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Backends already tried for this request (by id; ids past 63 are never marked).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, id: usize) {
        if id < 64 {
            self.0 |= 1 << id;
        }
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn has(self, id: usize) -> bool {
        id < 64 && self.0 & (1 << id) != 0
    }
}

/// What one choice needs besides the pool.
pub struct Pick<'a> {
    /// Backends this request already failed on.
    pub avoid: Tried,
    pub rng: &'a mut SmallRng,
    /// `pool::clock_ms` now, for slow start.
    pub now_ms: u64,
}

pub trait Balancer: Send + Sync {
    /// A backend that is up and not avoided, or `None` when there is none.
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize>;
}

pub fn new(strategy: Strategy, slow_start: Duration) -> Box<dyn Balancer> {
    let slow_start_ms = slow_start.as_millis() as u64;
    match strategy {
        Strategy::RoundRobin => Box::new(RoundRobin {
            next: AtomicUsize::new(0),
            slow_start_ms,
        }),
        Strategy::LeastConn => Box::new(LeastConn { slow_start_ms }),
    }
}

fn eligible(backends: &[Arc<Backend>], avoid: Tried, id: usize) -> bool {
    backends[id].is_up() && !avoid.has(id)
}

/// Each request goes to the next backend in turn: one counter shared by all workers.
pub struct RoundRobin {
    next: AtomicUsize,
    slow_start_ms: u64,
}

impl Balancer for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize> {
        let n = backends.len();
        // A retry looks from the next turn without taking it: it must not shift the rotation
        // (with a dead backend, every request would meet it first).
        let avoid = pick.avoid;
        let start = if avoid.is_empty() {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        };
        let mut turn = (0..n)
            .map(|i| start.wrapping_add(i) % n)
            .filter(|&id| eligible(backends, avoid, id));
        let first = turn.next()?;
        // A backend in slow start takes its turn only with the odds of its current share.
        let mut ramped = |id: usize| {
            let share = backends[id].share(pick.now_ms, self.slow_start_ms);
            share >= 1.0 || pick.rng.random::<f64>() < share
        };
        std::iter::once(first)
            .chain(turn)
            .find(|&id| ramped(id))
            .or(Some(first))
    }
}

/// The backend with the fewest requests in flight (scaled by its slow-start share); ties are
/// broken at random so workers that read the same counters do not all pile onto one backend.
pub struct LeastConn {
    slow_start_ms: u64,
}

impl Balancer for LeastConn {
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize> {
        let mut best = None;
        let mut best_load = f64::INFINITY;
        let mut ties = 0;
        for id in (0..backends.len()).filter(|&id| eligible(backends, pick.avoid, id)) {
            let backend = &backends[id];
            let load =
                (backend.active() + 1) as f64 / backend.share(pick.now_ms, self.slow_start_ms);
            if load < best_load {
                (best, best_load, ties) = (Some(id), load, 1);
            } else if load == best_load {
                // Reservoir sampling: each of the k tied backends ends up chosen with odds 1/k.
                ties += 1;
                if pick.rng.random_range(0..ties) == 0 {
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
    use crate::pool::{self, Backends, Lease, State};
    use rand::SeedableRng;
    use std::time::Instant;

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
        let mut pick = Pick {
            avoid: Tried::default(),
            rng: &mut rng,
            now_ms: pool::clock_ms(Instant::now()),
        };
        (0..count)
            .map(|_| balancer.pick(backends, &mut pick).unwrap())
            .collect()
    }

    fn round_robin() -> Box<dyn Balancer> {
        new(Strategy::RoundRobin, Duration::ZERO)
    }

    fn least_conn() -> Box<dyn Balancer> {
        new(Strategy::LeastConn, Duration::ZERO)
    }

    fn pick_once(balancer: &dyn Balancer, backends: &Backends, avoid: Tried) -> Option<usize> {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut pick = Pick {
            avoid,
            rng: &mut rng,
            now_ms: 0,
        };
        balancer.pick(backends, &mut pick)
    }

    fn counts(ids: &[usize], n: usize) -> Vec<usize> {
        (0..n)
            .map(|id| ids.iter().filter(|&&i| i == id).count())
            .collect()
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let pool = backends(3);
        assert_eq!(picks(&*round_robin(), &pool, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_down_backends() {
        let pool = backends(3);
        pool[1].transition(State::Up, State::Down);
        assert_eq!(picks(&*round_robin(), &pool, 4), [0, 2, 2, 0]);
    }

    #[test]
    fn round_robin_skips_tried_backends() {
        let pool = backends(3);
        let mut tried = Tried::default();
        tried.add(0);
        tried.add(1);
        let balancer = round_robin();
        for _ in 0..3 {
            assert_eq!(pick_once(&*balancer, &pool, tried), Some(2));
        }
    }

    #[test]
    fn a_retry_does_not_take_a_turn() {
        let pool = backends(3);
        let balancer = round_robin();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut pick = |avoid| {
            balancer.pick(
                &pool,
                &mut Pick {
                    avoid,
                    rng: &mut rng,
                    now_ms: 0,
                },
            )
        };
        assert_eq!(pick(Tried::default()), Some(0));
        let mut tried = Tried::default();
        tried.add(0);
        assert_eq!(pick(tried), Some(1), "the retry goes to the next backend");
        assert_eq!(
            pick(Tried::default()),
            Some(1),
            "and the next request still has its turn"
        );
        assert_eq!(pick(Tried::default()), Some(2));
    }

    #[test]
    fn no_backend_when_all_are_down_or_removed() {
        let pool = backends(2);
        pool[0].transition(State::Up, State::Down);
        pool[1].transition(State::Up, State::Removed);
        assert_eq!(pick_once(&*round_robin(), &pool, Tried::default()), None);
        assert_eq!(pick_once(&*least_conn(), &pool, Tried::default()), None);
    }

    #[test]
    fn least_conn_picks_the_least_busy() {
        let pool = backends(3);
        let _busy = [
            Lease::new(&pool, 0),
            Lease::new(&pool, 0),
            Lease::new(&pool, 2),
        ];
        assert!(picks(&*least_conn(), &pool, 20).iter().all(|&id| id == 1));
    }

    #[test]
    fn least_conn_spreads_ties_evenly() {
        let pool = backends(3);
        let counts = counts(&picks(&*least_conn(), &pool, 3000), 3);
        // Each backend should get a third; 10% either side is about 4 standard deviations.
        assert!(
            counts.iter().all(|&c| (900..=1100).contains(&c)),
            "{counts:?}"
        );
    }

    /// Backend 0 came back up `elapsed_ms` ago; returns `now_ms` for picks.
    fn recovered(pool: &Backends, elapsed_ms: u64) -> u64 {
        pool[0].transition(State::Up, State::Down);
        pool[0].transition(State::Down, State::Up);
        pool::clock_ms(Instant::now()) + elapsed_ms
    }

    fn shares_during_slow_start(strategy: Strategy, elapsed_ms: u64) -> Vec<usize> {
        let pool = backends(2);
        let balancer = new(strategy, Duration::from_secs(10));
        let mut rng = SmallRng::seed_from_u64(3);
        let mut pick = Pick {
            avoid: Tried::default(),
            rng: &mut rng,
            now_ms: recovered(&pool, elapsed_ms),
        };
        let ids: Vec<usize> = (0..4000)
            .map(|_| balancer.pick(&pool, &mut pick).unwrap())
            .collect();
        counts(&ids, 2)
    }

    #[test]
    fn round_robin_ramps_a_recovered_backend_up() {
        // A quarter into the slow start, backend 0 takes a quarter of its turns: an eighth of
        // all picks instead of half (500 of 4000; the band is about 5 standard deviations).
        let early = shares_during_slow_start(Strategy::RoundRobin, 2_500);
        assert!((400..=600).contains(&early[0]), "{early:?}");
        let done = shares_during_slow_start(Strategy::RoundRobin, 10_000);
        assert_eq!(done, [2000, 2000]);
    }

    #[test]
    fn least_conn_ramps_a_recovered_backend_up() {
        // With nothing in flight least_conn prefers the backend whose share is whole.
        assert_eq!(
            shares_during_slow_start(Strategy::LeastConn, 2_500),
            [0, 4000]
        );
        let done = shares_during_slow_start(Strategy::LeastConn, 10_000);
        assert!(done.iter().all(|&c| (1800..=2200).contains(&c)), "{done:?}");
    }

    #[test]
    fn lease_counts_while_alive() {
        let pool = backends(1);
        let lease = Lease::new(&pool, 0);
        assert_eq!(pool[0].active(), 1);
        drop(lease);
        assert_eq!(pool[0].active(), 0);
    }

    #[test]
    fn failures_in_a_row_mark_a_backend_down_once() {
        let pool = backends(1);
        assert!(!pool[0].record_failure(3));
        pool[0].record_success();
        assert!(!pool[0].record_failure(3));
        assert!(!pool[0].record_failure(3));
        assert!(
            pool[0].record_failure(3),
            "the third in a row marks it down"
        );
        assert_eq!(pool[0].state(), State::Down);
        assert!(!pool[0].record_failure(3), "already down");
    }

    #[test]
    fn passive_health_can_be_off() {
        let pool = backends(1);
        assert!((0..10).all(|_| !pool[0].record_failure(0)));
        assert!(pool[0].is_up());
    }
}
