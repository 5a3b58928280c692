//! Backend choice: one small type per strategy behind one `pick` call. A balancer serves one
//! group of members (global backend ids), built for it by `new`; every strategy reads only
//! atomics, skips backends that are down, and skips those a retry must avoid.
//!
//! Groups may hold thousands of members (`backend::MAX_BACKENDS` in all), so no pick walks
//! them all in the common case: round robin, random and p2c draw or step in O(1);
//! least_conn and ewma compare a few members drawn at random once a group is larger than
//! `EXACT_UP_TO`; `hash` looks its key up in a Maglev table once a group is larger than
//! `RENDEZVOUS_UP_TO`. A full pass over the group is left as the fallback for when draws keep
//! landing on backends that are down or tried (most of the group is out).

use crate::backend::{Backend, MAX_BACKENDS};
use crate::config::{Strategy, MAX_RETRIES};
use crate::hash;
use rand::rngs::SmallRng;
use rand::RngExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most backends one request can try: the first and every retry.
pub const MAX_TRIED: usize = 1 + MAX_RETRIES as usize;

// `Tried` and the Maglev table keep ids in 16 bits.
const _: () = assert!(MAX_BACKENDS < u16::MAX as usize);

/// Backends already tried for this request, by global id, inline: retries are bounded by
/// `[lb] retries`, so a request meets at most `MAX_TRIED` backends and the set never
/// allocates. Past that (it cannot happen with the config's bounds), further ids go unmarked,
/// so a retry might meet one of them again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tried {
    ids: [u16; MAX_TRIED],
    len: u8,
}

impl Tried {
    pub fn add(&mut self, id: usize) {
        let len = usize::from(self.len);
        if len < MAX_TRIED && !self.has(id) {
            self.ids[len] = id as u16;
            self.len += 1;
        }
    }

    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    pub fn has(self, id: usize) -> bool {
        self.ids[..usize::from(self.len)]
            .iter()
            .any(|&tried| usize::from(tried) == id)
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
    /// A member of `members` (global ids into `backends`; the group the balancer was built
    /// for) that is up and not avoided, or `None` when there is none.
    fn pick(&self, backends: &[Arc<Backend>], members: &[usize], pick: &mut Pick) -> Option<usize>;
}

/// The strategy's balancer for the group `members` of `backends` (weights are read here: a
/// weight change builds a new balancer, as every change to the backend set does).
pub fn new(
    strategy: Strategy,
    slow_start: Duration,
    backends: &[Arc<Backend>],
    members: &[usize],
) -> Box<dyn Balancer> {
    let slow_start_ms = slow_start.as_millis() as u64;
    let weights: Vec<u32> = members.iter().map(|&id| backends[id].weight()).collect();
    let by_weight = || Draw::weighted(&weights);
    let uniform = || Draw::uniform(members.len());
    let cheapest = |cost, draw, exact_up_to, sample| {
        Box::new(Cheapest {
            cost,
            draw,
            exact_up_to,
            sample,
            slow_start_ms,
        })
    };
    match strategy {
        Strategy::RoundRobin => Box::new(RoundRobin::new(
            members.to_vec(),
            by_weight(),
            slow_start_ms,
        )),
        Strategy::WeightedRoundRobin => {
            let schedule = smooth_schedule(&weights).map(|pos| members[pos]);
            Box::new(RoundRobin::new(
                schedule.collect(),
                by_weight(),
                slow_start_ms,
            ))
        }
        Strategy::LeastConn => cheapest(
            Cost::Load { weighted: false },
            uniform(),
            EXACT_UP_TO,
            SAMPLE,
        ),
        Strategy::WeightedLeastConn => cheapest(
            Cost::Load { weighted: true },
            by_weight(),
            EXACT_UP_TO,
            SAMPLE,
        ),
        Strategy::Ewma => cheapest(Cost::Latency, by_weight(), EXACT_UP_TO, SAMPLE),
        Strategy::P2c => cheapest(Cost::Load { weighted: false }, uniform(), 2, 2),
        Strategy::Random => Box::new(Random {
            draw: uniform(),
            weighted: false,
            slow_start_ms,
        }),
        Strategy::WeightedRandom => Box::new(Random {
            draw: by_weight(),
            weighted: true,
            slow_start_ms,
        }),
        Strategy::Hash => Box::new(Hash::new(backends, members, &weights, slow_start_ms)),
    }
}

/// Draws at random before a pick gives up on drawing and walks the whole group: with half
/// the group out, 16 misses in a row happen once in 65,536 picks.
const PROBES: usize = 16;

/// Up to this many members, least_conn, weighted_least_conn and ewma compare them all (exact,
/// and cheap at this size); above, they compare `SAMPLE` drawn at random.
const EXACT_UP_TO: usize = 16;

/// Members compared by least_conn and ewma in a large group: the power of k choices. Two
/// already spread load exponentially better than one (that is p2c); four keep least_conn's
/// stronger pull toward the idlest backends for four counter reads.
const SAMPLE: usize = 4;

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

/// Draws a position in a group with odds in proportion to the members' weights, in O(1)
/// whatever the group's size (Vose's alias method: each slot holds its own odds and one other
/// position that fills the rest of it). Uniform when the weights are all equal (no table).
struct Draw {
    len: usize,
    /// Odds of keeping the slot's own position; empty for a uniform draw.
    keep: Vec<f64>,
    /// The position a slot gives otherwise.
    alias: Vec<u32>,
}

impl Draw {
    fn uniform(len: usize) -> Draw {
        Draw {
            len,
            keep: Vec::new(),
            alias: Vec::new(),
        }
    }

    fn weighted(weights: &[u32]) -> Draw {
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Draw::uniform(weights.len());
        }
        let len = weights.len();
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        // Each slot holds on average 1: those under it are topped up from those over it.
        let mut keep: Vec<f64> = (weights.iter())
            .map(|&w| f64::from(w) * len as f64 / total)
            .collect();
        let mut alias: Vec<u32> = (0..len as u32).collect();
        let (mut under, mut over): (Vec<usize>, Vec<usize>) =
            (0..len).partition(|&i| keep[i] < 1.0);
        while let (Some(&small), Some(&large)) = (under.last(), over.last()) {
            under.pop();
            alias[small] = large as u32;
            keep[large] -= 1.0 - keep[small];
            if keep[large] < 1.0 {
                over.pop();
                under.push(large);
            }
        }
        // What is left holds 1 but for rounding.
        over.into_iter().chain(under).for_each(|i| keep[i] = 1.0);
        Draw { len, keep, alias }
    }

    fn position(&self, rng: &mut SmallRng) -> usize {
        let slot = rng.random_range(0..self.len);
        match self.keep.get(slot) {
            Some(&keep) if rng.random::<f64>() >= keep => self.alias[slot] as usize,
            _ => slot,
        }
    }
}

/// A backend in slow start is kept, once drawn, only with the odds of its current share.
fn ramped(backend: &Backend, pick: &mut Pick, slow_start_ms: u64) -> bool {
    let share = backend.share(pick.now_ms, slow_start_ms);
    share >= 1.0 || pick.rng.random::<f64>() < share
}

/// An eligible member drawn with odds in proportion to its capacity: `draw` gives them by
/// weight (or uniformly), slow start keeps each with the odds of its share. After `PROBES`
/// misses, the exact walk over the group.
fn draw_eligible(
    backends: &[Arc<Backend>],
    members: &[usize],
    draw: &Draw,
    pick: &mut Pick,
    slow_start_ms: u64,
    weighted: bool,
) -> Option<usize> {
    // An empty group has nothing to draw.
    let probes = if members.is_empty() { 0 } else { PROBES };
    for _ in 0..probes {
        let id = members[draw.position(pick.rng)];
        if eligible(backends, pick.avoid, id) && ramped(&backends[id], pick, slow_start_ms) {
            return Some(id);
        }
    }
    walk_draw(backends, members, pick, slow_start_ms, weighted)
}

/// An eligible member drawn with odds in proportion to its capacity, by two passes over the
/// group (no allocation).
fn walk_draw(
    backends: &[Arc<Backend>],
    members: &[usize],
    pick: &mut Pick,
    slow_start_ms: u64,
    weighted: bool,
) -> Option<usize> {
    let avoid = pick.avoid;
    let candidates = || (members.iter().copied()).filter(move |&id| eligible(backends, avoid, id));
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

/// Most entries in weighted round robin's schedule: `SCHEDULE_PER_MEMBER` per member, and at
/// least `SCHEDULE_MIN` (so that small groups keep their exact weights, 1 to 1000).
const SCHEDULE_PER_MEMBER: usize = 16;
const SCHEDULE_MIN: usize = 1 << 16;

/// The order in which nginx's smooth weighted round robin visits members (positions in
/// `weights`): each step every member gains its weight, the richest is chosen (the first on a
/// tie) and pays the total. Weights 5, 1, 1 give a a b a c a a — spread out, not a a a a a b c.
///
/// The schedule is one cycle: sum(weights) entries, after weights are divided by their
/// greatest common divisor. Past `SCHEDULE_MIN` or `SCHEDULE_PER_MEMBER` entries a member
/// (1,000 members of mixed weights could need a million), the weights are scaled down to fit,
/// each rounded down but kept at 1 at least: shares then follow the weights to within one
/// scaled unit (a sixteenth of the mean weight, or better).
fn smooth_schedule(weights: &[u32]) -> impl Iterator<Item = usize> {
    let weights = fit(
        weights,
        SCHEDULE_MIN.max(SCHEDULE_PER_MEMBER * weights.len()),
    );
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut classes = Class::all(&weights);
    (1..=total).map(move |step| {
        let best = (classes.iter_mut())
            .max_by_key(|class| (class.current(step, total), std::cmp::Reverse(class.next())))
            .expect("a schedule has members");
        let chosen = best.next();
        best.picks += 1;
        chosen
    })
}

/// The members of one weight in a smooth schedule. Members of the same weight gain alike, so
/// the richest of them is always the first with the fewest picks: they take turns in order,
/// and a step compares one candidate per weight instead of every member.
struct Class {
    weight: u64,
    /// Positions, in order.
    members: Vec<usize>,
    picks: u64,
}

impl Class {
    fn all(weights: &[u32]) -> Vec<Class> {
        let mut classes: Vec<Class> = Vec::new();
        for (pos, &w) in weights.iter().enumerate() {
            match classes.iter_mut().find(|c| c.weight == u64::from(w)) {
                Some(class) => class.members.push(pos),
                None => classes.push(Class {
                    weight: u64::from(w),
                    members: vec![pos],
                    picks: 0,
                }),
            }
        }
        classes
    }

    fn len(&self) -> u64 {
        self.members.len() as u64
    }

    /// The candidate's current weight at `step`: gained `step` times, paid once per pick.
    fn current(&self, step: u64, total: u64) -> i64 {
        (step * self.weight) as i64 - (total * (self.picks / self.len())) as i64
    }

    fn next(&self) -> usize {
        self.members[(self.picks % self.len()) as usize]
    }
}

/// `weights` over their greatest common divisor, scaled down (each at least 1) when their sum
/// is over `most`.
fn fit(weights: &[u32], most: usize) -> Vec<u32> {
    let divisor = weights.iter().fold(0, |a, &b| gcd(a, b)).max(1);
    let reduced: Vec<u32> = weights.iter().map(|&w| w / divisor).collect();
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if total <= most as u64 {
        return reduced;
    }
    let scale = |w: u32| (u64::from(w) * most as u64 / total).max(1) as u32;
    reduced.into_iter().map(scale).collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Members take turns in a fixed schedule (each once for `round_robin`, the smooth weighted
/// order for `weighted_round_robin`) walked by one counter shared by all workers.
pub struct RoundRobin {
    /// Global ids.
    schedule: Vec<usize>,
    next: AtomicUsize,
    /// By weight, for turns that cannot be taken.
    draw: Draw,
    slow_start_ms: u64,
}

impl RoundRobin {
    fn new(schedule: Vec<usize>, draw: Draw, slow_start_ms: u64) -> RoundRobin {
        RoundRobin {
            schedule,
            next: AtomicUsize::new(0),
            draw,
            slow_start_ms,
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, backends: &[Arc<Backend>], members: &[usize], pick: &mut Pick) -> Option<usize> {
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
        let usable = eligible(backends, avoid, id);
        if usable && ramped(&backends[id], pick, self.slow_start_ms) {
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
        draw_eligible(
            backends,
            members,
            &self.draw,
            &mut others,
            self.slow_start_ms,
            true,
        )
        .or(usable.then_some(id))
    }
}

/// A member at random, each with odds in proportion to its capacity (1, or its weight for
/// `weighted_random`).
pub struct Random {
    draw: Draw,
    weighted: bool,
    slow_start_ms: u64,
}

impl Balancer for Random {
    fn pick(&self, backends: &[Arc<Backend>], members: &[usize], pick: &mut Pick) -> Option<usize> {
        draw_eligible(
            backends,
            members,
            &self.draw,
            pick,
            self.slow_start_ms,
            self.weighted,
        )
    }
}

/// What the comparing strategies minimise.
#[derive(Clone, Copy)]
enum Cost {
    /// Requests in flight (plus one) for the capacity: `least_conn`, `weighted_least_conn`
    /// and `p2c` (unweighted).
    Load { weighted: bool },
    /// The peak-EWMA response time times requests in flight (plus one), for the weighted
    /// capacity: `ewma`.
    Latency,
}

/// The member with the lowest cost among those compared: all of them in a group of at most
/// `exact_up_to`, else `sample` different ones drawn at random (by weight for the weighted
/// costs). Ties are broken at random so workers that read the same counters do not all pile
/// onto one backend. `p2c` is this with two drawn; `least_conn` (fewest in flight),
/// `weighted_least_conn` (in flight ÷ weight) and `ewma` (latency-aware: a backend that turns
/// slow loses traffic within about a second) compare them all in small groups.
pub struct Cheapest {
    cost: Cost,
    draw: Draw,
    exact_up_to: usize,
    sample: usize,
    slow_start_ms: u64,
}

impl Cheapest {
    fn cost(&self, backend: &Backend, pick: &Pick) -> f64 {
        let in_flight = (backend.active() + 1) as f64;
        match self.cost {
            Cost::Load { weighted } => {
                in_flight / capacity(backend, pick, self.slow_start_ms, weighted)
            }
            // One microsecond at least, so unmeasured backends still compare by load.
            Cost::Latency => {
                backend.latency_now(pick.now_ms).max(1.0) * in_flight
                    / capacity(backend, pick, self.slow_start_ms, true)
            }
        }
    }

    /// The cheapest eligible one of `ids`.
    fn lowest(
        &self,
        backends: &[Arc<Backend>],
        ids: impl Iterator<Item = usize>,
        pick: &mut Pick,
    ) -> Option<usize> {
        let mut best = None;
        let mut best_cost = f64::INFINITY;
        let mut ties = 0;
        for id in ids.filter(|&id| eligible(backends, pick.avoid, id)) {
            let cost = self.cost(&backends[id], pick);
            if cost < best_cost {
                (best, best_cost, ties) = (Some(id), cost, 1);
            } else if cost == best_cost {
                // Reservoir sampling: each of the k tied backends ends up chosen with odds 1/k.
                ties += 1;
                if pick.rng.random_range(0..ties) == 0 {
                    best = Some(id);
                }
            }
        }
        best
    }

    /// Up to `into.len()` different eligible members drawn at random; fewer when draws keep
    /// missing (most of the group out). How many were found.
    fn sample(
        &self,
        backends: &[Arc<Backend>],
        members: &[usize],
        pick: &mut Pick,
        into: &mut [usize],
    ) -> usize {
        let mut found = 0;
        for _ in 0..PROBES {
            let id = members[self.draw.position(pick.rng)];
            if eligible(backends, pick.avoid, id) && !into[..found].contains(&id) {
                into[found] = id;
                found += 1;
                if found == into.len() {
                    break;
                }
            }
        }
        found
    }
}

impl Balancer for Cheapest {
    fn pick(&self, backends: &[Arc<Backend>], members: &[usize], pick: &mut Pick) -> Option<usize> {
        let all = members.iter().copied();
        if members.len() <= self.exact_up_to {
            return self.lowest(backends, all, pick);
        }
        let mut drawn = [0; SAMPLE];
        match self.sample(backends, members, pick, &mut drawn[..self.sample]) {
            0 => self.lowest(backends, all, pick),
            found => self.lowest(backends, drawn[..found].iter().copied(), pick),
        }
    }
}

/// Up to this many members `hash` uses rendezvous hashing (exact: only the keys of a backend
/// that comes or goes move; O(members) per pick); above, a Maglev table (O(1) per pick).
pub const RENDEZVOUS_UP_TO: usize = 16;

/// Maglev table slots per member, at least (up to twice as many: `maglev_size`): with 100, each
/// member's share is within a few percent of its weight's, and a change of one member moves
/// little more than its own keys.
const MAGLEV_SLOTS_PER_MEMBER: usize = 100;

/// No member in this Maglev slot yet (while the table is built).
const EMPTY: u16 = u16::MAX;

/// Consistent hashing on the request's key. A client keeps its backend while that backend is
/// up; adding or removing one of N backends moves about 1/N of the clients, and weights set
/// the shares.
///
/// Small groups use rendezvous hashing: every member scores the key with a hash of both, and
/// the highest weighted score wins, so exactly the clients that win or lose at the changed
/// member move. Large groups use Maglev (Eisenbud et al., NSDI 2016): a table of a prime
/// number of slots (at least `MAGLEV_SLOTS_PER_MEMBER` a member) filled by the members taking
/// turns, each claiming the next free slot of its own permutation, a turn per round in
/// proportion to its weight; a key's slot names its member. A key whose member is down or
/// tried hashes again (another slot, so another member drawn by weight), so a down backend's
/// clients spread over the others and nobody else's move.
pub struct Hash {
    /// Each member's name hashed (`hash::fixed`), by position.
    names: Vec<u64>,
    /// Positions by slot; empty in a group small enough for rendezvous.
    table: Vec<u16>,
    slow_start_ms: u64,
}

impl Hash {
    fn new(
        backends: &[Arc<Backend>],
        members: &[usize],
        weights: &[u32],
        slow_start_ms: u64,
    ) -> Hash {
        let names: Vec<u64> = (members.iter())
            .map(|&id| hash::fixed(0, backends[id].name.as_bytes()))
            .collect();
        let table = match members.len() {
            0..=RENDEZVOUS_UP_TO => Vec::new(),
            n => maglev_table(&names, weights, maglev_size(n)),
        };
        Hash {
            names,
            table,
            slow_start_ms,
        }
    }

    /// The key's uniform draw in (0, 1] for the member at `pos`: fixed by both.
    fn unit(&self, key: u64, pos: usize) -> f64 {
        let h = hash::mix(key ^ self.names[pos]);
        ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// The highest weighted score among the eligible members: O(members).
    fn rendezvous(
        &self,
        backends: &[Arc<Backend>],
        members: &[usize],
        pick: &Pick,
    ) -> Option<usize> {
        let score = |pos: usize| {
            let backend = &backends[members[pos]];
            -capacity(backend, pick, self.slow_start_ms, true) / self.unit(pick.key, pos).ln()
        };
        (0..members.len())
            .filter(|&pos| eligible(backends, pick.avoid, members[pos]))
            .map(|pos| (pos, score(pos)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(pos, _)| members[pos])
    }

    /// The key's member in the Maglev table, hashing again past members that are out; a
    /// member in slow start keeps the keys whose draw is under its share (the same keys
    /// each time, more as the share grows).
    fn maglev(&self, backends: &[Arc<Backend>], members: &[usize], pick: &Pick) -> Option<usize> {
        (0..PROBES as u64).find_map(|round| {
            let slot = hash::mix(pick.key ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let pos = usize::from(self.table[(slot % self.table.len() as u64) as usize]);
            let id = members[pos];
            let share = backends[id].share(pick.now_ms, self.slow_start_ms);
            let kept = share >= 1.0 || self.unit(pick.key, pos) < share;
            (eligible(backends, pick.avoid, id) && kept).then_some(id)
        })
    }
}

impl Balancer for Hash {
    fn pick(&self, backends: &[Arc<Backend>], members: &[usize], pick: &mut Pick) -> Option<usize> {
        if self.table.is_empty() {
            return self.rendezvous(backends, members, pick);
        }
        self.maglev(backends, members, pick)
            .or_else(|| self.rendezvous(backends, members, pick))
    }
}

/// A Maglev lookup table of `size` slots (a prime) for members with these name hashes and
/// weights: positions by slot.
fn maglev_table(names: &[u64], weights: &[u32], size: usize) -> Vec<u16> {
    let size64 = size as u64;
    // Member `pos` tries slots offset, offset + skip, offset + 2 skip, ... (mod size): a
    // permutation of all slots, since size is prime and skip is not 0.
    let offset: Vec<u64> = names.iter().map(|&h| hash::mix(h ^ 1) % size64).collect();
    let skip: Vec<u64> = names
        .iter()
        .map(|&h| hash::mix(h ^ 2) % (size64 - 1) + 1)
        .collect();
    let mut tried = vec![0u64; names.len()];
    let heaviest = u64::from(weights.iter().copied().max().unwrap_or(1));
    let mut credit = vec![0u64; names.len()];
    let mut table = vec![EMPTY; size];
    let mut filled = 0;
    loop {
        for pos in 0..names.len() {
            // A turn per round for the heaviest; lighter members save up for theirs.
            credit[pos] += u64::from(weights[pos]);
            while credit[pos] >= heaviest {
                credit[pos] -= heaviest;
                let slot = (0..)
                    .map(|_| {
                        tried[pos] += 1;
                        ((offset[pos] + (tried[pos] - 1) * skip[pos]) % size64) as usize
                    })
                    .find(|&slot| table[slot] == EMPTY)
                    .expect("a permutation reaches every slot");
                table[slot] = pos as u16;
                filled += 1;
                if filled == size {
                    return table;
                }
            }
        }
    }
}

/// Maglev slots for `members`: at least `MAGLEV_SLOTS_PER_MEMBER` a member, the first prime
/// past a power of two. A key's slot depends on the size, so the size changes only when the
/// group doubles (then every key may move, once); between, adding or removing a member moves
/// about its own share of keys.
fn maglev_size(members: usize) -> usize {
    prime_at_least((members * MAGLEV_SLOTS_PER_MEMBER).next_power_of_two())
}

/// The smallest prime at or above `n` (n is at most a few million: trial division is quick).
fn prime_at_least(n: usize) -> usize {
    let is_prime = |m: usize| {
        m >= 2
            && (2..)
                .take_while(|d| d * d <= m)
                .all(|d| !m.is_multiple_of(d))
    };
    (n..).find(|&m| is_prime(m)).expect("primes go on")
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
                pool: "default".into(),
                backup: false,
            })
            .collect();
        backend::at_start(&confs, &Source::Config)
    }

    /// The whole set as one group.
    fn members(backends: &Backends) -> Vec<usize> {
        (0..backends.len()).collect()
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
            .map(|_| {
                balancer
                    .pick(backends, &members(backends), &mut pick)
                    .unwrap()
            })
            .collect()
    }

    fn balancer(strategy: Strategy, backends: &Backends) -> Box<dyn Balancer> {
        new(strategy, Duration::ZERO, backends, &members(backends))
    }

    fn pick_once(balancer: &dyn Balancer, backends: &Backends, avoid: Tried) -> Option<usize> {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut pick = Pick {
            avoid,
            rng: &mut rng,
            now_ms: 0,
            key: KEY,
        };
        balancer.pick(backends, &members(backends), &mut pick)
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
                &members(&backends),
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
        let balancer = new(
            strategy,
            Duration::from_secs(10),
            &backends,
            &members(&backends),
        );
        let mut rng = SmallRng::seed_from_u64(3);
        let mut pick = Pick {
            avoid: Tried::default(),
            rng: &mut rng,
            now_ms: recovered(&backends, elapsed_ms),
            key: KEY,
        };
        let ids: Vec<usize> = (0..4000)
            .map(|_| {
                balancer
                    .pick(&backends, &members(&backends), &mut pick)
                    .unwrap()
            })
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
                hash.pick(backends, &members(backends), &mut pick).unwrap()
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
        assert_eq!(
            ewma.pick(&backends, &members(&backends), &mut pick),
            Some(1)
        );
        // Without traffic the slow figure decays; fast answers pull an average down.
        for _ in 0..20 {
            backends[0].observe_latency(Duration::from_millis(1), now);
        }
        assert_eq!(
            ewma.pick(&backends, &members(&backends), &mut pick),
            Some(0)
        );
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

    #[test]
    fn ten_thousand_backends_are_placed_and_picked_by_every_strategy() {
        let mut set = Vec::new();
        for conf in up(10_000).iter() {
            let next = set.len();
            let placed = backend::Backend::new(
                &BackendConf {
                    name: conf.name.clone(),
                    addr: conf.addr,
                    weight: 1 + (set.len() % 3) as u32,
                    tls: None,
                    pool: "default".into(),
                    backup: false,
                },
                State::Up,
                Source::Config,
            );
            assert_eq!(backend::place(&mut set, placed), Ok(next));
        }
        let backends: Backends = set.into();
        // A group of the last thousand, one of them down and one tried.
        let group: Vec<usize> = (9_000..10_000).collect();
        backends[9_500].transition(State::Up, State::Down);
        let mut tried = Tried::default();
        tried.add(9_999);
        for strategy in Strategy::ALL {
            let b = new(strategy, Duration::ZERO, &backends, &group);
            let mut rng = SmallRng::seed_from_u64(5);
            for key in 0..200 {
                let mut pick = Pick {
                    avoid: tried,
                    rng: &mut rng,
                    now_ms: 0,
                    key,
                };
                let id = b.pick(&backends, &group, &mut pick).unwrap();
                assert!(
                    group.contains(&id) && id != 9_500 && id != 9_999,
                    "{}: {id}",
                    strategy.name()
                );
            }
        }
    }

    #[test]
    fn tried_holds_any_ids_up_to_the_most_a_request_can_try() {
        let mut tried = Tried::default();
        let ids: Vec<usize> = (0..MAX_TRIED).map(|n| n * 1_499 + 64).collect();
        ids.iter().for_each(|&id| tried.add(id));
        assert!(ids.iter().all(|&id| tried.has(id)));
        assert!(!tried.has(0) && !tried.has(MAX_BACKENDS - 1));
        tried.add(7);
        assert!(!tried.has(7), "past MAX_TRIED ids go unmarked");
    }

    #[test]
    fn a_large_group_compares_a_sample_and_still_avoids_the_busy() {
        // Least conn in a group past EXACT_UP_TO: 4 drawn at random, the idlest of them. Half
        // the group busy: a busy one wins only when all four drawn are busy (1 in 16).
        let backends = up(100);
        let _busy: Vec<Lease> = (0..50).map(|id| Lease::new(&backends, id)).collect();
        let counts = counts(
            &picks(&*balancer(Strategy::LeastConn, &backends), &backends, 3200),
            100,
        );
        let to_busy: usize = counts[..50].iter().sum();
        assert!(
            (100..=320).contains(&to_busy),
            "{to_busy} of 3200 to busy backends"
        );
    }

    #[test]
    fn random_draws_by_weight_in_a_large_group() {
        let backends = weighted(&[[4; 50], [1; 50]].concat());
        let counts = counts(
            &picks(
                &*balancer(Strategy::WeightedRandom, &backends),
                &backends,
                10_000,
            ),
            100,
        );
        let heavy: usize = counts[..50].iter().sum();
        // 80%, within about 5 standard deviations.
        assert!((7800..=8200).contains(&heavy), "{heavy}");
    }

    #[test]
    fn a_smooth_schedule_stays_bounded_and_keeps_the_weights() {
        // 1,000 members of weights 1..=1000: a million turns unbounded.
        let weights: Vec<u32> = (1..=1000).collect();
        let schedule: Vec<usize> = smooth_schedule(&weights).collect();
        let bound = SCHEDULE_MIN.max(SCHEDULE_PER_MEMBER * weights.len());
        assert!(
            schedule.len() <= bound + weights.len(),
            "{}",
            schedule.len()
        );
        let counts = counts(&schedule, 1000);
        // Each share within one scaled unit of its weight's.
        let unit = 500_500.0 / schedule.len() as f64;
        for (w, &c) in weights.iter().zip(&counts) {
            let wanted = f64::from(*w) / unit;
            assert!(
                (c as f64 - wanted).abs() <= 1.0 + wanted * 0.05,
                "weight {w}: {c} turns, {wanted} wanted"
            );
        }
        // Equal weights: one turn each, in order.
        assert_eq!(
            smooth_schedule(&[7; 5]).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn hash_in_a_large_group_moves_only_the_keys_of_a_backend_that_goes() {
        let backends = up(200);
        let before = hashed(&backends, 20_000);
        let counts = counts(&before, 200);
        // 100 keys each on average; Maglev's table keeps every share close.
        assert!(
            counts.iter().all(|&c| (55..=150).contains(&c)),
            "{counts:?}"
        );
        backends[17].transition(State::Up, State::Down);
        let after = hashed(&backends, 20_000);
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(
            moved.iter().all(|&i| before[i] == 17),
            "only backend 17's keys move"
        );
        assert_eq!(moved.len(), counts[17]);
    }

    #[test]
    fn hash_in_a_large_group_moves_about_one_in_n_keys_to_a_new_backend() {
        let (old, new) = (up(200), up(201));
        let (before, after) = (hashed(&old, 20_000), hashed(&new, 20_000));
        let moved: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        let to_new = moved.iter().filter(|&&i| after[i] == 200).count();
        // About 100 keys (1/201) go to the new backend. Maglev's rebuilt table also shifts
        // some between the others: about twice as many again (297 moved in all, 1.5%).
        assert!((55..=150).contains(&to_new), "{to_new} to the new backend");
        assert!(
            moved.len() <= 4 * to_new,
            "{} moved, {to_new} to the new one",
            moved.len()
        );
    }

    #[test]
    fn hash_in_a_large_group_follows_the_weights() {
        let backends = weighted(&[[3; 50], [1; 50]].concat());
        let counts = counts(&hashed(&backends, 20_000), 100);
        let heavy: usize = counts[..50].iter().sum();
        assert!(
            (14_700..=15_300).contains(&heavy),
            "{heavy} of 20000, 15000 wanted"
        );
    }
}
