//! Backend choice: one small type per strategy behind one `pick` call. Every strategy reads only
//! atomics, skips backends that are down, and skips those a retry must avoid.

use crate::backend::Backend;
use crate::config::Strategy;
use rand::rngs::SmallRng;
use rand::RngExt;
use std::hash::{DefaultHasher, Hash as _, Hasher};
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

/// What one choice needs besides the backends.
pub struct Pick<'a> {
    /// Backends this request already failed on.
    pub avoid: Tried,
    pub rng: &'a mut SmallRng,
    /// `backend::clock_ms` now, for slow start.
    pub now_ms: u64,
    /// What `hash` hashes: the client address, or the configured header or cookie.
    pub key: u64,
}

pub trait Balancer: Send + Sync {
    /// A backend that is up and not avoided, or `None` when there is none.
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize>;
}

/// The strategy's balancer for `backends` (weights are read here: a weight change builds a new
/// balancer, as every change to the backend set does).
pub fn new(
    strategy: Strategy,
    slow_start: Duration,
    backends: &[Arc<Backend>],
) -> Box<dyn Balancer> {
    let slow_start_ms = slow_start.as_millis() as u64;
    let weights: Vec<u32> = backends.iter().map(|b| b.weight()).collect();
    match strategy {
        Strategy::RoundRobin => Box::new(RoundRobin::new(
            (0..backends.len()).collect(),
            slow_start_ms,
        )),
        Strategy::WeightedRoundRobin => {
            Box::new(RoundRobin::new(smooth_schedule(&weights), slow_start_ms))
        }
        Strategy::LeastConn => Box::new(LeastConn {
            weighted: false,
            slow_start_ms,
        }),
        Strategy::WeightedLeastConn => Box::new(LeastConn {
            weighted: true,
            slow_start_ms,
        }),
        Strategy::Random => Box::new(Random {
            weighted: false,
            slow_start_ms,
        }),
        Strategy::WeightedRandom => Box::new(Random {
            weighted: true,
            slow_start_ms,
        }),
        Strategy::P2c => Box::new(P2c { slow_start_ms }),
        Strategy::Hash => Box::new(Hash { slow_start_ms }),
        Strategy::Ewma => Box::new(Ewma { slow_start_ms }),
    }
}

fn eligible(backends: &[Arc<Backend>], avoid: Tried, id: usize) -> bool {
    backends[id].is_up() && !avoid.has(id)
}

/// How much traffic a backend should take relative to the others: its slow-start share, times
/// its weight for the weighted strategies.
fn capacity(backend: &Backend, pick: &Pick, slow_start_ms: u64, weighted: bool) -> f64 {
    let weight = if weighted {
        f64::from(backend.weight())
    } else {
        1.0
    };
    backend.share(pick.now_ms, slow_start_ms) * weight
}

/// The order in which nginx's smooth weighted round robin visits backends: each step every
/// backend gains its weight, the richest is chosen and pays the total. Weights 5, 1, 1 give
/// a a b a c a a — spread out, not a a a a a b c.
pub fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .fold(
                    (0, i64::MIN),
                    |best, (id, &c)| if c > best.1 { (id, c) } else { best },
                );
            current[best] -= total;
            best
        })
        .collect()
}

/// Backends take turns in a fixed schedule (each once for `round_robin`, the smooth weighted
/// order for `weighted_round_robin`) walked by one counter shared by all workers.
pub struct RoundRobin {
    schedule: Vec<usize>,
    next: AtomicUsize,
    slow_start_ms: u64,
}

impl RoundRobin {
    fn new(schedule: Vec<usize>, slow_start_ms: u64) -> RoundRobin {
        RoundRobin {
            schedule,
            next: AtomicUsize::new(0),
            slow_start_ms,
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize> {
        let n = self.schedule.len();
        // A retry looks from the next turn without taking it: it must not shift the rotation
        // (with a dead backend, every request would meet it first).
        let avoid = pick.avoid;
        let start = if avoid.is_empty() {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        };
        let id = *self.schedule.get(start % n.max(1))?;
        // A backend in slow start takes its turn only with the odds of its current share.
        let ramped = |pick: &mut Pick| {
            let share = backends[id].share(pick.now_ms, self.slow_start_ms);
            share >= 1.0 || pick.rng.random::<f64>() < share
        };
        let usable = id < backends.len() && eligible(backends, avoid, id);
        if usable && ramped(pick) {
            return Some(id);
        }
        // A turn that cannot be taken goes to one of the others drawn by weight, so they share
        // it as their weights say (walking on in the schedule would favour whoever is next).
        let mut others = Pick {
            avoid,
            rng: &mut *pick.rng,
            now_ms: pick.now_ms,
            key: pick.key,
        };
        others.avoid.add(id);
        weighted_draw(backends, &mut others, self.slow_start_ms, true).or(usable.then_some(id))
    }
}

/// The backend with the fewest requests in flight for its capacity (active ÷ weight for
/// `weighted_least_conn`); ties are broken at random so workers that read the same counters
/// do not all pile onto one backend.
pub struct LeastConn {
    weighted: bool,
    slow_start_ms: u64,
}

impl Balancer for LeastConn {
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize> {
        let mut best = None;
        let mut best_load = f64::INFINITY;
        let mut ties = 0;
        for id in (0..backends.len()).filter(|&id| eligible(backends, pick.avoid, id)) {
            let backend = &backends[id];
            let load = (backend.active() + 1) as f64
                / capacity(backend, pick, self.slow_start_ms, self.weighted);
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

/// A backend at random, each with odds in proportion to its capacity (1, or its weight for
/// `weighted_random`): two passes over the backends, no allocation.
pub struct Random {
    weighted: bool,
    slow_start_ms: u64,
}

impl Balancer for Random {
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize> {
        weighted_draw(backends, pick, self.slow_start_ms, self.weighted)
    }
}

/// An eligible backend drawn with odds in proportion to its capacity.
fn weighted_draw(
    backends: &[Arc<Backend>],
    pick: &mut Pick,
    slow_start_ms: u64,
    weighted: bool,
) -> Option<usize> {
    let avoid = pick.avoid;
    let candidates = || (0..backends.len()).filter(move |&id| eligible(backends, avoid, id));
    let weigh = |id: usize, pick: &Pick| capacity(&backends[id], pick, slow_start_ms, weighted);
    let total: f64 = candidates().map(|id| weigh(id, pick)).sum();
    let mut left = pick.rng.random::<f64>() * total;
    let mut last = None;
    for id in candidates() {
        left -= weigh(id, pick);
        last = Some(id);
        if left < 0.0 {
            break;
        }
    }
    last
}

/// Power of two choices: two different backends at random, and the one with fewer requests in
/// flight for its slow-start share — nearly least-conn's spread for two counter reads.
pub struct P2c {
    slow_start_ms: u64,
}

impl Balancer for P2c {
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize> {
        let avoid = pick.avoid;
        let nth = |n: usize| {
            (0..backends.len())
                .filter(|&id| eligible(backends, avoid, id))
                .nth(n)
        };
        let count = (0..backends.len())
            .filter(|&id| eligible(backends, avoid, id))
            .count();
        if count < 2 {
            return nth(0);
        }
        let first = pick.rng.random_range(0..count);
        let second = (first + pick.rng.random_range(1..count)) % count;
        let (a, b) = (nth(first)?, nth(second)?);
        let load = |id: usize| {
            (backends[id].active() + 1) as f64
                / capacity(&backends[id], pick, self.slow_start_ms, false)
        };
        Some(if load(b) < load(a) { b } else { a })
    }
}

/// Consistent hashing on the request's key (rendezvous hashing): every backend scores the
/// key with a hash of both, and the highest weighted score wins. A client keeps its backend
/// while that backend is up; adding or removing one of N backends moves only the clients that
/// win or lose there, about 1/N of them. O(N) per pick, no table to rebuild.
pub struct Hash {
    slow_start_ms: u64,
}

impl Balancer for Hash {
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize> {
        let score = |id: usize| {
            let mut hasher = DefaultHasher::new();
            (pick.key, &backends[id].name).hash(&mut hasher);
            // A uniform draw in (0, 1] from the hash, turned into a weighted score.
            let unit = ((hasher.finish() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            -capacity(&backends[id], pick, self.slow_start_ms, true) / unit.ln()
        };
        (0..backends.len())
            .filter(|&id| eligible(backends, pick.avoid, id))
            .map(|id| (id, score(id)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(id, _)| id)
    }
}

/// Latency-aware: the lowest peak-EWMA response time times requests in flight (plus one), for
/// its capacity; a backend that turns slow loses traffic within about a second. Ties (say, no
/// backend measured yet) are broken at random.
pub struct Ewma {
    slow_start_ms: u64,
}

impl Balancer for Ewma {
    fn pick(&self, backends: &[Arc<Backend>], pick: &mut Pick) -> Option<usize> {
        let mut best = None;
        let mut best_cost = f64::INFINITY;
        let mut ties = 0;
        for id in (0..backends.len()).filter(|&id| eligible(backends, pick.avoid, id)) {
            let backend = &backends[id];
            // One microsecond at least, so unmeasured backends still compare by load.
            let latency = backend.latency_now(pick.now_ms).max(1.0);
            let cost = latency * (backend.active() + 1) as f64
                / capacity(backend, pick, self.slow_start_ms, true);
            if cost < best_cost {
                (best, best_cost, ties) = (Some(id), cost, 1);
            } else if cost == best_cost {
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
    use crate::backend::{self, BackendConf, Backends, Lease, Source, State};
    use rand::SeedableRng;

    const KEY: u64 = 1;
    use std::time::Instant;

    /// `n` backends, all up: the first `n` of any larger such set.
    fn up(n: usize) -> Backends {
        let confs: Vec<BackendConf> = (0..n)
            .map(|i| BackendConf {
                name: format!("s{i}"),
                addr: format!("127.0.0.1:{}", 9001 + i).parse().unwrap(),
                weight: 1,
                tls: None,
            })
            .collect();
        backend::at_start(&confs, &Source::Config)
    }

    fn picks(balancer: &dyn Balancer, backends: &Backends, count: usize) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut pick = Pick {
            avoid: Tried::default(),
            rng: &mut rng,
            now_ms: backend::clock_ms(Instant::now()),
            key: KEY,
        };
        (0..count)
            .map(|_| balancer.pick(backends, &mut pick).unwrap())
            .collect()
    }

    fn balancer(strategy: Strategy, backends: &Backends) -> Box<dyn Balancer> {
        new(strategy, Duration::ZERO, backends)
    }

    fn pick_once(balancer: &dyn Balancer, backends: &Backends, avoid: Tried) -> Option<usize> {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut pick = Pick {
            avoid,
            rng: &mut rng,
            now_ms: 0,
            key: KEY,
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
        let backends = up(3);
        assert_eq!(
            picks(&*balancer(Strategy::RoundRobin, &backends), &backends, 6),
            [0, 1, 2, 0, 1, 2]
        );
    }

    #[test]
    fn round_robin_skips_down_backends_and_shares_their_turns() {
        let backends = up(3);
        backends[1].transition(State::Up, State::Down);
        let counts = counts(
            &picks(&*balancer(Strategy::RoundRobin, &backends), &backends, 3000),
            3,
        );
        assert_eq!(counts[1], 0);
        // 1000 turns each, and the down backend's 1000 split at random: about 1500 each.
        assert!(
            counts
                .iter()
                .step_by(2)
                .all(|&c| (1400..=1600).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn round_robin_skips_tried_backends() {
        let backends = up(3);
        let mut tried = Tried::default();
        tried.add(0);
        tried.add(1);
        let balancer = balancer(Strategy::RoundRobin, &backends);
        for _ in 0..3 {
            assert_eq!(pick_once(&*balancer, &backends, tried), Some(2));
        }
    }

    #[test]
    fn a_retry_does_not_take_a_turn() {
        let backends = up(3);
        let balancer = balancer(Strategy::RoundRobin, &backends);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut pick = |avoid| {
            balancer.pick(
                &backends,
                &mut Pick {
                    avoid,
                    rng: &mut rng,
                    now_ms: 0,
                    key: KEY,
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
        let backends = up(2);
        backends[0].transition(State::Up, State::Down);
        backends[1].transition(State::Up, State::Removed);
        assert_eq!(
            pick_once(
                &*balancer(Strategy::RoundRobin, &backends),
                &backends,
                Tried::default()
            ),
            None
        );
        assert_eq!(
            pick_once(
                &*balancer(Strategy::LeastConn, &backends),
                &backends,
                Tried::default()
            ),
            None
        );
    }

    #[test]
    fn least_conn_picks_the_least_busy() {
        let backends = up(3);
        let _busy = [
            Lease::new(&backends, 0),
            Lease::new(&backends, 0),
            Lease::new(&backends, 2),
        ];
        assert!(
            picks(&*balancer(Strategy::LeastConn, &backends), &backends, 20)
                .iter()
                .all(|&id| id == 1)
        );
    }

    #[test]
    fn least_conn_spreads_ties_evenly() {
        let backends = up(3);
        let counts = counts(
            &picks(&*balancer(Strategy::LeastConn, &backends), &backends, 3000),
            3,
        );
        // Each backend should get a third; 10% either side is about 4 standard deviations.
        assert!(
            counts.iter().all(|&c| (900..=1100).contains(&c)),
            "{counts:?}"
        );
    }

    /// Backend 0 came back up `elapsed_ms` ago; returns `now_ms` for picks.
    fn recovered(backends: &Backends, elapsed_ms: u64) -> u64 {
        backends[0].transition(State::Up, State::Down);
        backends[0].transition(State::Down, State::Up);
        backend::clock_ms(Instant::now()) + elapsed_ms
    }

    fn shares_during_slow_start(strategy: Strategy, elapsed_ms: u64) -> Vec<usize> {
        let backends = up(2);
        let balancer = new(strategy, Duration::from_secs(10), &backends);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut pick = Pick {
            avoid: Tried::default(),
            rng: &mut rng,
            now_ms: recovered(&backends, elapsed_ms),
            key: KEY,
        };
        let ids: Vec<usize> = (0..4000)
            .map(|_| balancer.pick(&backends, &mut pick).unwrap())
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

    fn weighted(weights: &[u32]) -> Backends {
        let backends = up(weights.len());
        backends
            .iter()
            .zip(weights)
            .for_each(|(b, &w)| b.set_weight(w));
        backends
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves_like_nginx() {
        let backends = weighted(&[5, 1, 1]);
        let order = picks(
            &*balancer(Strategy::WeightedRoundRobin, &backends),
            &backends,
            14,
        );
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weighted_round_robin_shares_a_down_backends_turns_by_weight() {
        let backends = weighted(&[5, 1, 1]);
        backends[0].transition(State::Up, State::Down);
        let counts = counts(
            &picks(
                &*balancer(Strategy::WeightedRoundRobin, &backends),
                &backends,
                7000,
            ),
            3,
        );
        // b and c weigh the same, so they split a's turns too: about 3500 each.
        assert_eq!(counts[0], 0);
        assert!(
            counts[1..].iter().all(|&c| (3300..=3700).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn random_spreads_evenly() {
        let backends = up(3);
        let counts = counts(
            &picks(&*balancer(Strategy::Random, &backends), &backends, 3000),
            3,
        );
        // A third each; the band is about 4 standard deviations.
        assert!(
            counts.iter().all(|&c| (900..=1100).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn weighted_random_follows_the_weights() {
        let backends = weighted(&[6, 3, 1]);
        let counts = counts(
            &picks(
                &*balancer(Strategy::WeightedRandom, &backends),
                &backends,
                10_000,
            ),
            3,
        );
        // 60%, 30%, 10%, each within about 4 standard deviations.
        let bands = [5800..=6200, 2820..=3180, 880..=1120];
        assert!(
            counts.iter().zip(bands).all(|(c, band)| band.contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn weighted_least_conn_divides_by_weight() {
        let backends = weighted(&[3, 1]);
        let _busy = [
            Lease::new(&backends, 0),
            Lease::new(&backends, 0),
            Lease::new(&backends, 1),
        ];
        // (2+1)/3 = 1 for the heavy backend against (1+1)/1 = 2 for the light one.
        assert!(picks(
            &*balancer(Strategy::WeightedLeastConn, &backends),
            &backends,
            20
        )
        .iter()
        .all(|&id| id == 0));
        assert!(
            picks(&*balancer(Strategy::LeastConn, &backends), &backends, 20)
                .iter()
                .all(|&id| id == 1)
        );
    }

    #[test]
    fn p2c_never_picks_the_busiest_of_two_candidates() {
        let backends = up(3);
        let _busy: Vec<Lease> = (0..5).map(|_| Lease::new(&backends, 2)).collect();
        let counts = counts(
            &picks(&*balancer(Strategy::P2c, &backends), &backends, 3000),
            3,
        );
        // Backend 2 loses every pair it is in; 0 and 1 tie and split the rest at random.
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1200 && counts[1] > 1200, "{counts:?}");
    }

    #[test]
    fn every_strategy_skips_down_and_tried_backends() {
        let backends = weighted(&[2, 1, 1]);
        backends[0].transition(State::Up, State::Down);
        let mut tried = Tried::default();
        tried.add(1);
        for strategy in Strategy::ALL {
            let b = balancer(strategy, &backends);
            assert_eq!(
                pick_once(&*b, &backends, tried),
                Some(2),
                "{}",
                strategy.name()
            );
        }
    }

    /// Where `clients` distinct client addresses land.
    fn hashed(backends: &Backends, clients: u32) -> Vec<usize> {
        let hash = balancer(Strategy::Hash, backends);
        let mut rng = SmallRng::seed_from_u64(1);
        (0..clients)
            .map(|n| {
                let key = u64::from(n);
                let mut pick = Pick {
                    avoid: Tried::default(),
                    rng: &mut rng,
                    now_ms: 0,
                    key,
                };
                hash.pick(backends, &mut pick).unwrap()
            })
            .collect()
    }

    #[test]
    fn hash_keeps_a_client_on_its_backend() {
        let backends = up(5);
        assert_eq!(hashed(&backends, 1000), hashed(&backends, 1000));
        let counts = counts(&hashed(&backends, 10_000), 5);
        assert!(
            counts.iter().all(|&c| (1800..=2200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn hash_moves_only_the_clients_of_a_backend_that_goes() {
        let backends = up(10);
        let before = hashed(&backends, 10_000);
        backends[3].transition(State::Up, State::Down);
        let after = hashed(&backends, 10_000);
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(
            moved.iter().all(|&i| before[i] == 3),
            "only backend 3's clients move"
        );
        // A tenth of the clients, within about 5 standard deviations.
        assert!((850..=1150).contains(&moved.len()), "{} moved", moved.len());
    }

    #[test]
    fn hash_moves_about_one_in_n_clients_to_a_new_backend() {
        let (ten, eleven) = (up(10), up(11));
        let (before, after) = (hashed(&ten, 10_000), hashed(&eleven, 10_000));
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(
            moved.iter().all(|&i| after[i] == 10),
            "clients move only to the new backend"
        );
        assert!(
            (760..=1060).contains(&moved.len()),
            "{} moved, about 909 expected",
            moved.len()
        );
    }

    #[test]
    fn hash_follows_the_weights() {
        let backends = weighted(&[3, 1]);
        let counts = counts(&hashed(&backends, 10_000), 2);
        assert!((7300..=7700).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn ewma_moves_traffic_off_a_slow_backend_and_back_once_it_recovers() {
        let backends = up(2);
        let now = backend::clock_ms(Instant::now());
        backends[0].observe_latency(Duration::from_millis(50), now);
        backends[1].observe_latency(Duration::from_millis(1), now);
        let ewma = balancer(Strategy::Ewma, &backends);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut pick = Pick {
            avoid: Tried::default(),
            rng: &mut rng,
            now_ms: now,
            key: KEY,
        };
        let _busy: Vec<Lease> = (0..10).map(|_| Lease::new(&backends, 1)).collect();
        // 50 ms x 1 against 1 ms x 11: the fast backend, even with ten requests in flight.
        assert_eq!(ewma.pick(&backends, &mut pick), Some(1));
        // Without traffic the slow figure decays; fast answers pull an average down.
        for _ in 0..20 {
            backends[0].observe_latency(Duration::from_millis(1), now);
        }
        assert_eq!(ewma.pick(&backends, &mut pick), Some(0));
    }

    #[test]
    fn peak_ewma_takes_a_slower_sample_at_once() {
        let backends = up(1);
        backends[0].observe_latency(Duration::from_millis(1), 0);
        backends[0].observe_latency(Duration::from_millis(80), 0);
        assert_eq!(backends[0].latency_now(0), 80_000.0);
        assert!(
            backends[0].latency_now(1000) < 80_000.0 / 2.5,
            "decays by e per second"
        );
    }

    #[test]
    fn lease_counts_while_alive() {
        let backends = up(1);
        let lease = Lease::new(&backends, 0);
        assert_eq!(backends[0].active(), 1);
        drop(lease);
        assert_eq!(backends[0].active(), 0);
    }

    #[test]
    fn failures_in_a_row_mark_a_backend_down_once() {
        let backends = up(1);
        assert!(!backends[0].record_failure(3));
        backends[0].record_success();
        assert!(!backends[0].record_failure(3));
        assert!(!backends[0].record_failure(3));
        assert!(
            backends[0].record_failure(3),
            "the third in a row marks it down"
        );
        assert_eq!(backends[0].state(), State::Down);
        assert!(!backends[0].record_failure(3), "already down");
    }

    #[test]
    fn passive_health_can_be_off() {
        let backends = up(1);
        assert!((0..10).all(|_| !backends[0].record_failure(0)));
        assert!(backends[0].is_up());
    }
}
