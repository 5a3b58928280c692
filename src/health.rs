//! Health checks: one thread, `health`, runs its own `mio` event loop with a probe state machine
//! per backend (`probe::Probe`: connect, PROXY header, TLS handshake, `GET <path>`, status line).
//! Each probe sends `GET <path>` on a connection of its own and the backend's atomic state flips
//! after `rise` good or `fall` bad probes in a row. Workers only read the state (and mark a
//! backend down when live traffic fails on it), so they never wait for a probe.
//!
//! Scale: no thread per backend, and nothing waits for a slow or black-holed backend (its
//! probe just sits in the loop until its deadline). First probes are spread over the interval
//! (`first_offset`), later ones every interval ±10% (the same for probes that started
//! together, so a small set's share their wake-ups), and at most `in_flight_cap()` probes are
//! under way at once, so 10,000 backends neither connect all at once nor run the process out
//! of descriptors: a backend due while every slot is taken starts when one frees.
//!
//! The same thread looks at the backend set when a change wakes it (`Shared::watch`): new
//! backends get a prober, replaced ones lose theirs. While a backend being removed still
//! drains, or one lost its pool, it looks again every `SUPERVISE_EVERY` until that is done;
//! otherwise it sleeps until the next probe is due, a probe's socket is ready, or a change.

mod probe;

pub use probe::ProbeError;

use crate::backend::{Backend, ProbeReport, State};
use crate::config::Health;
use crate::hash;
use crate::shared::{Shared, Snapshot};
use log::{info, warn};
use mio::{Events, Poll, Token, Waker};
use probe::{Probe, Target};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the health thread looks again while a backend waits to leave (drains before its
/// removal, or lost its pool).
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);

/// Most probes under way at once (fewer when the descriptor limit is low: `in_flight_cap`).
const MAX_IN_FLIGHT: usize = 1024;

/// First probes start at most this often on average: a set of 10,000 backends spreads its
/// first round over 2 s (or the interval, if shorter), while a handful are all probed at once,
/// as soon as they join.
const FIRST_PROBE_GAP: Duration = Duration::from_micros(200);

/// The health settings backend `id` is checked with: its pool's (the global ones for a
/// backend whose pool a reload removed while it drains). The one place that decides.
pub fn settings(snap: &Snapshot, id: usize) -> &Health {
    match snap.pool(&snap.backends[id].pool) {
        Some(pool) => &snap.pools[pool].conf.health,
        None => &snap.config.health,
    }
}

/// The token of the waker a change wakes the health thread with (backend ids are the others).
const CHANGED: Token = Token(usize::MAX);

pub fn spawn(shared: Arc<Shared>) -> io::Result<JoinHandle<()>> {
    let poll = Poll::new()?;
    shared.watch(Arc::new(Waker::new(poll.registry(), CHANGED)?));
    thread::Builder::new()
        .name("health".into())
        .spawn(move || Checker::new(shared, poll).run())
}

/// The probes one backend slot gets, and what they learnt.
struct Prober {
    backend: Arc<Backend>,
    tracker: Tracker,
    phase: Phase,
}

enum Phase {
    /// The next probe is due then.
    Idle { next_at: Instant },
    /// Due, waiting for one of the in-flight slots (in `Checker::waiting`).
    Waiting,
    /// A probe under way.
    Probing(Box<InFlight>),
    /// Out of the set for good: no more probes, until the slot takes another backend.
    Retired,
}

struct InFlight {
    probe: Probe,
    /// The settings it started with, to judge it by.
    conf: Health,
}

/// The health thread's state.
struct Checker {
    shared: Arc<Shared>,
    poll: Poll,
    /// By backend id; the id is also the mio token of the backend's probe.
    probers: Vec<Prober>,
    /// When probers want attention: a probe due, a probe's deadline. Entries are not removed
    /// when plans change: one whose time no longer matches its prober is skipped.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Backends due while every slot was taken, in the order they came due.
    waiting: VecDeque<usize>,
    in_flight: usize,
    cap: usize,
    rng: SmallRng,
    /// Live backends whose pool was gone at the last look (by id).
    orphans: HashSet<usize>,
    /// When to look at the backend set again: at once after a change, every
    /// `SUPERVISE_EVERY` while a backend waits to leave, else at the next change.
    look_at: Option<Instant>,
    /// Where the jitter of a probe's interval comes from (`jitter`).
    seed: u64,
    origin: Instant,
}

impl Checker {
    fn new(shared: Arc<Shared>, poll: Poll) -> Checker {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Checker {
            shared,
            poll,
            probers: Vec::new(),
            timers: BinaryHeap::new(),
            waiting: VecDeque::new(),
            in_flight: 0,
            cap: in_flight_cap(),
            rng: SmallRng::seed_from_u64(seed),
            orphans: HashSet::new(),
            look_at: Some(Instant::now()),
            seed,
            origin: Instant::now(),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            self.turn(&mut events);
        }
    }

    /// One turn of the loop: the backend set when it is time to look, the probes due or past
    /// their deadline, then the socket events (or a change) until the next of those.
    fn turn(&mut self, events: &mut Events) {
        let now = Instant::now();
        if self.look_at.is_some_and(|at| now >= at) {
            let waiting = self.look(now);
            self.look_at = waiting.then_some(now + SUPERVISE_EVERY);
        }
        self.fire_timers(now);
        self.start_waiting(now);
        let wake = self.next_timer().into_iter().chain(self.look_at).min();
        let timeout = wake.map(|at| at.saturating_duration_since(now));
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                warn!("health checks: poll failed: {e}");
                thread::sleep(SUPERVISE_EVERY);
            }
        }
        for event in events.iter() {
            match event.token() {
                CHANGED => self.look_at = Some(now),
                Token(id) => self.on_event(id),
            }
        }
    }

    /// Follows the backend set: a slot holding another backend than at the last look (new, or
    /// a removed backend's slot taken by a new one) gets a new prober, whose first probe is
    /// spread over the interval. Holding the `Arc`s keeps an old record's address from being
    /// reused by a new one, so pointers compare safely. True while some backend waits to leave
    /// (draining before its removal, or orphaned): the next look must come soon.
    fn look(&mut self, now: Instant) -> bool {
        let snap = self.shared.load();
        for id in snap.backends.len()..self.probers.len() {
            self.stop_probe(id);
        }
        self.probers.truncate(snap.backends.len());
        for (id, backend) in snap.backends.iter().enumerate() {
            let known = self.probers.get(id);
            if !known.is_some_and(|p| Arc::ptr_eq(&p.backend, backend)) {
                let offset = first_offset(&mut self.rng, settings(&snap, id), snap.backends.len());
                self.adopt(id, backend, now + offset);
            }
            if backend.retire() {
                info!("backend {} removed from the pool: drained", backend.name);
            }
        }
        self.drain_orphans(&snap);
        let leaving = |b: &Arc<Backend>| b.removing() && b.state() == State::Draining;
        !self.orphans.is_empty() || snap.backends.iter().any(leaving)
    }

    /// Drains the backends whose pool is gone (a reload or the admin API removed it) once they
    /// were orphans at two looks in a row: by then every worker routes by a snapshot without
    /// their pool, so none sends a request to a backend that drains under it.
    fn drain_orphans(&mut self, snap: &Snapshot) {
        let orphans: HashSet<usize> = (snap.backends.iter().enumerate())
            .filter(|(_, b)| b.is_live() && snap.pool(&b.pool).is_none())
            .map(|(id, _)| id)
            .collect();
        for &id in orphans.intersection(&self.orphans) {
            let backend = &snap.backends[id];
            info!(
                "backend {}: its pool {} is gone: draining",
                backend.name, backend.pool
            );
            backend.drain(true);
        }
        self.orphans = orphans;
    }

    fn adopt(&mut self, id: usize, backend: &Arc<Backend>, next_at: Instant) {
        let prober = Prober {
            backend: Arc::clone(backend),
            tracker: Tracker::default(),
            phase: Phase::Idle { next_at },
        };
        if id < self.probers.len() {
            self.stop_probe(id);
            self.probers[id] = prober;
        } else {
            self.probers.push(prober);
        }
        self.timers.push(Reverse((next_at, id)));
    }

    /// Drops the probe under way for slot `id`, if any (its backend left the slot).
    fn stop_probe(&mut self, id: usize) {
        let phase = std::mem::replace(&mut self.probers[id].phase, Phase::Retired);
        if let Phase::Probing(probing) = phase {
            probing.probe.close(self.poll.registry());
            self.in_flight -= 1;
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(prober) = self.probers.get(id) else {
                continue;
            };
            match &prober.phase {
                Phase::Idle { next_at } if *next_at <= now => self.due(id, now),
                Phase::Probing(probing) if probing.probe.deadline <= now => {
                    self.finish(id, Err(ProbeError::Timeout), now)
                }
                _ => {} // planned for another time since
            }
        }
    }

    /// When the next timer that still matches its prober's plan is due; the stale ones on top
    /// (a probe's deadline after it ended) are dropped, so they wake nobody.
    fn next_timer(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            let planned = self.probers.get(id).is_some_and(|p| match &p.phase {
                Phase::Idle { next_at } => *next_at == at,
                Phase::Probing(probing) => probing.probe.deadline == at,
                Phase::Waiting | Phase::Retired => false,
            });
            if planned {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Backends that waited for a slot, while there are slots.
    fn start_waiting(&mut self, now: Instant) {
        while self.in_flight < self.cap {
            let Some(id) = self.waiting.pop_front() else {
                return;
            };
            if matches!(self.probers.get(id), Some(p) if matches!(p.phase, Phase::Waiting)) {
                self.begin(id, now);
            }
        }
    }

    /// A probe is due: it begins when a slot is free and no backend waits for one (those that
    /// waited go first, or a backend probed often would keep taking the slot back).
    fn due(&mut self, id: usize, now: Instant) {
        if self.in_flight < self.cap && self.waiting.is_empty() {
            self.begin(id, now);
        } else {
            self.probers[id].phase = Phase::Waiting;
            self.waiting.push_back(id);
        }
    }

    /// Probes a backend that is up or down; a draining one is skipped this time, a removed one
    /// for good.
    fn begin(&mut self, id: usize, now: Instant) {
        let prober = &mut self.probers[id];
        match prober.backend.state() {
            State::Removed => prober.phase = Phase::Retired,
            State::Draining => {
                let interval = settings(&self.shared.load(), id).interval;
                self.plan_next(id, interval, now, now)
            }
            State::Up | State::Down => self.start(id, now),
        }
    }

    /// Starts a probe with the settings of the moment.
    fn start(&mut self, id: usize, now: Instant) {
        let snap = self.shared.load();
        let conf = settings(&snap, id).clone();
        let backend = Arc::clone(&self.probers[id].backend);
        let target = Target {
            addr: backend.addr,
            conf: &conf,
            proxy: snap.config.lb.send_proxy,
            tls: (self.shared.backend_tls.as_ref()).zip(backend.tls.as_deref()),
        };
        match Probe::start(self.poll.registry(), Token(id), &target, now) {
            Ok(probe) => {
                self.timers.push(Reverse((probe.deadline, id)));
                self.probers[id].phase = Phase::Probing(Box::new(InFlight { probe, conf }));
                self.in_flight += 1;
            }
            Err(why) => {
                let prober = &mut self.probers[id];
                prober
                    .tracker
                    .observe(&prober.backend, &conf, Err(why), now);
                self.plan_next(id, conf.interval, now, now);
            }
        }
    }

    fn on_event(&mut self, id: usize) {
        let Some(Prober {
            phase: Phase::Probing(probing),
            ..
        }) = self.probers.get_mut(id)
        else {
            return; // the probe ended earlier in this round of events
        };
        if let Some(result) = probing.probe.advance() {
            self.finish(id, result, Instant::now());
        }
    }

    /// A probe ended (`status`: the answer's, or why there was none): judged, counted, and the
    /// next one planned.
    fn finish(&mut self, id: usize, status: Result<u16, ProbeError>, now: Instant) {
        let prober = &mut self.probers[id];
        let Phase::Probing(probing) = std::mem::replace(&mut prober.phase, Phase::Retired) else {
            return;
        };
        let InFlight { probe, conf } = *probing;
        let started = probe.started;
        probe.close(self.poll.registry());
        self.in_flight -= 1;
        let result = status.and_then(|status| probe::judge(&conf, status, now - started));
        prober
            .tracker
            .observe(&prober.backend, &conf, result, started);
        self.plan_next(id, conf.interval, started, now);
    }

    /// The next probe: an interval (±10% jitter, so balancers started alike do not probe in
    /// lockstep) after this one started, and not before it ended.
    fn plan_next(&mut self, id: usize, interval: Duration, started: Instant, now: Instant) {
        let next_at = (started + interval.mul_f64(self.jitter(started))).max(now);
        self.probers[id].phase = Phase::Idle { next_at };
        self.timers.push(Reverse((next_at, id)));
    }

    /// A factor in 0.9..1.1 that depends only on when a probe started (and on this process's
    /// seed): probes started in the same turn of the loop (a small set's, which come due
    /// together) stay together, and the thread wakes once for all of them.
    fn jitter(&self, started: Instant) -> f64 {
        let nanos = started.duration_since(self.origin).as_nanos() as u64;
        let draw = hash::fixed(self.seed, &nanos.to_le_bytes()) >> 11; // 53 bits
        0.9 + 0.2 * (draw as f64 / (1u64 << 53) as f64)
    }
}

/// When a new backend's first probe comes: at random within the interval, or within
/// `FIRST_PROBE_GAP` per backend of the set when that is shorter, so a large set's first round
/// is spread out but a small set is checked at once.
fn first_offset(rng: &mut SmallRng, conf: &Health, backends: usize) -> Duration {
    let window = conf.interval.min(FIRST_PROBE_GAP * backends as u32);
    window.mul_f64(rng.random_range(0.0..1.0))
}

/// `MAX_IN_FLIGHT`, or a quarter of the descriptor limit when that is lower: probes must
/// leave the workers most of the descriptors.
fn in_flight_cap() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let quarter = if ok { limit.rlim_cur / 4 } else { 64 };
    MAX_IN_FLIGHT
        .min(usize::try_from(quarter).unwrap_or(MAX_IN_FLIGHT))
        .max(1)
}

/// What a prober remembers of its backend between probes.
#[derive(Debug, Default, Clone)]
struct Tracker {
    streak: Streak,
    /// The state this thread last saw. A change it did not make (a worker marked the backend
    /// down after failures on live traffic) restarts the streak, so recovery takes `rise`
    /// good probes from then on.
    seen: Option<State>,
    /// Since when the backend has been down, for `remove_after_s`.
    down_since: Option<Instant>,
}

impl Tracker {
    fn observe(
        &mut self,
        backend: &Backend,
        conf: &Health,
        result: Result<Duration, ProbeError>,
        now: Instant,
    ) {
        let state = backend.state();
        if self.seen.is_some_and(|seen| seen != state) {
            self.streak = Streak::default();
        }
        backend.set_last_probe(match &result {
            Ok(latency) => ProbeReport {
                ok: true,
                latency: *latency,
                reason: String::new(),
            },
            Err(why) => ProbeReport {
                ok: false,
                latency: now.elapsed(),
                reason: why.to_string(),
            },
        });
        if let Some(up) =
            self.streak
                .observe(result.is_ok(), state == State::Up, conf.rise, conf.fall)
        {
            let (from, to) = if up {
                (State::Down, State::Up)
            } else {
                (State::Up, State::Down)
            };
            if !backend.transition(from, to) {
                return; // drained meanwhile: the drain wins
            }
            match result {
                Ok(latency) => info!("backend {} is up (probe took {latency:?})", backend.name),
                Err(why) => warn!("backend {} is down: {why}", backend.name),
            }
        }
        self.down_since = match backend.state() {
            State::Down => Some(self.down_since.unwrap_or(now)),
            _ => None,
        };
        let expired = self
            .down_since
            .zip(conf.remove_after)
            .is_some_and(|(since, limit)| now - since >= limit);
        if expired && backend.transition(State::Down, State::Removed) {
            warn!(
                "backend {} removed from the pool: down for {:?}",
                backend.name,
                conf.remove_after.unwrap_or_default()
            );
        }
        self.seen = Some(backend.state());
    }
}

/// Consecutive results of one kind, for hysteresis: a backend flips only after `rise` good
/// (or `fall` bad) probes in a row, so one lost probe does not flap it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Streak {
    good: u32,
    bad: u32,
}

impl Streak {
    /// Counts a probe result; returns the new state when the backend should flip.
    pub fn observe(&mut self, ok: bool, up: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            (self.good, self.bad) = (self.good + 1, 0);
        } else {
            (self.good, self.bad) = (0, self.bad + 1);
        }
        match up {
            true if self.bad >= fall => Some(false),
            false if self.good >= rise => Some(true),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::Sink;
    use crate::backend::{self, Source};
    use crate::config::Config;
    use std::net::{SocketAddr, TcpListener};

    #[test]
    fn flips_down_only_after_fall_failures_in_a_row() {
        let mut streak = Streak::default();
        assert_eq!(streak.observe(false, true, 2, 3), None);
        assert_eq!(streak.observe(false, true, 2, 3), None);
        assert_eq!(streak.observe(true, true, 2, 3), None);
        assert_eq!(streak.observe(false, true, 2, 3), None);
        assert_eq!(streak.observe(false, true, 2, 3), None);
        assert_eq!(streak.observe(false, true, 2, 3), Some(false));
    }

    #[test]
    fn flips_up_only_after_rise_successes_in_a_row() {
        let mut streak = Streak::default();
        assert_eq!(streak.observe(true, false, 2, 3), None);
        assert_eq!(streak.observe(false, false, 2, 3), None);
        assert_eq!(streak.observe(true, false, 2, 3), None);
        assert_eq!(streak.observe(true, false, 2, 3), Some(true));
    }

    #[test]
    fn first_probes_spread_over_the_interval_or_less_for_a_small_set() {
        let mut rng = SmallRng::seed_from_u64(1);
        let conf = Health {
            interval: Duration::from_secs(2),
            ..Health::default()
        };
        let offsets: Vec<Duration> = (0..1000)
            .map(|_| first_offset(&mut rng, &conf, 10_000))
            .collect();
        assert!(offsets.iter().all(|&o| o < conf.interval));
        // Spread: each half of the interval gets a fair share.
        let early = offsets.iter().filter(|&&o| o < conf.interval / 2).count();
        assert!(
            (400..=600).contains(&early),
            "{early} of 1000 in the first half"
        );
        // Ten backends: all within 2 ms, not up to 2 s.
        let small = (0..100).map(|_| first_offset(&mut rng, &conf, 10)).max();
        assert!(small.unwrap() < FIRST_PROBE_GAP * 10);
    }

    /// A checker for `backends` (silent listeners) with `cap` probes in flight at most.
    fn checker(backends: &[SocketAddr], cap: usize) -> Checker {
        let mut ini = String::from("[health]\ninterval_ms = 50\ntimeout_ms = 200\n[backends]\n");
        for (i, addr) in backends.iter().enumerate() {
            ini.push_str(&format!("b{i} = {addr}\n"));
        }
        let config = Config::parse(&ini, "test.ini").unwrap();
        let set = backend::at_start(&config.backends, &Source::Config);
        let sink = Sink::open(None).unwrap();
        let shared = Shared::new(Snapshot::new(config, set).unwrap(), 1, sink, None, None);
        let mut checker = Checker::new(Arc::new(shared), Poll::new().unwrap());
        checker.cap = cap;
        checker
    }

    /// Backends that never answer hold their slots till their deadlines; the others wait their
    /// turn rather than start beyond the cap, and every one is probed in time all the same.
    #[test]
    fn probes_beyond_the_cap_wait_for_a_slot_and_still_all_run() {
        // Bound and listening but never accepting: connects complete, answers never come.
        let holes: Vec<TcpListener> = (0..5)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = holes.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut checker = checker(&addrs, 2);
        let mut events = Events::with_capacity(64);
        let (started, mut waited) = (Instant::now(), false);
        let probed = |checker: &Checker| {
            (checker.probers.iter())
                .filter(|p| p.backend.last_probe().is_some())
                .count()
        };
        while probed(&checker) < addrs.len() && started.elapsed() < Duration::from_secs(5) {
            checker.turn(&mut events);
            assert!(checker.in_flight <= 2, "{} in flight", checker.in_flight);
            waited |= (checker.probers.iter()).any(|p| matches!(p.phase, Phase::Waiting));
        }
        assert!(waited, "no backend had to wait for a slot");
        // Three rounds of two 200 ms timeouts: well under a second, on an idle machine.
        assert_eq!(
            probed(&checker),
            addrs.len(),
            "after {:?}",
            started.elapsed()
        );
        for prober in &checker.probers {
            assert_eq!(prober.backend.last_probe().unwrap().reason, "timeout");
        }
    }

    #[test]
    fn the_jitter_stays_within_ten_percent_and_is_the_same_for_probes_started_together() {
        let hole = TcpListener::bind("127.0.0.1:0").unwrap();
        let checker = checker(&[hole.local_addr().unwrap()], 1);
        let start = Instant::now();
        let factors: Vec<f64> = (0..1000)
            .map(|i| checker.jitter(start + Duration::from_micros(i)))
            .collect();
        assert!(factors.iter().all(|f| (0.9..1.1).contains(f)));
        let low = factors.iter().filter(|&&f| f < 1.0).count();
        assert!((400..=600).contains(&low), "{low} of 1000 below 1");
        assert_eq!(checker.jitter(start), checker.jitter(start));
    }

    #[test]
    fn the_in_flight_cap_leaves_most_descriptors_to_the_workers() {
        let cap = in_flight_cap();
        assert!((1..=MAX_IN_FLIGHT).contains(&cap), "{cap}");
    }

    #[test]
    fn a_flapping_backend_does_not_flip() {
        let mut streak = Streak::default();
        for i in 0..20 {
            assert_eq!(streak.observe(i % 2 == 0, true, 2, 2), None);
        }
    }
}
