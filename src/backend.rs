//! Backend membership: what a backend is made of (`BackendConf`) and where it came from
//! (`Source`), the rules every backend meets (`MAX_BACKENDS`, `WEIGHTS`, `check_name`,
//! `parse_addr`), and the live set every thread shares (`Backends`): read-mostly records whose
//! changing parts are atomics, so workers pick and count without a lock. A backend joins the
//! set through `place` and leaves it through `Backend::retire` (or the health thread's removal
//! of one down too long), whoever added it.

use crate::hash;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// What a backend is made of, wherever it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConf {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Speak TLS to it, checking its certificate against this name (`tls` or `tls=NAME`).
    pub tls: Option<String>,
    /// The pool it serves.
    pub pool: String,
    /// Takes traffic only while no other backend of its pool is up.
    pub backup: bool,
}

impl BackendConf {
    /// Whether `backend` is the one this describes (a reload keeps it, taking the new weight).
    pub fn is(&self, backend: &Backend) -> bool {
        (&self.name, self.addr, &self.tls, &self.pool, self.backup)
            == (
                &backend.name,
                backend.addr,
                &backend.tls,
                &backend.pool,
                backend.backup,
            )
    }
}

/// Where a backend came from. Every part of lb-mio that adds backends is a source, and tells
/// its own backends from the others' by this alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `[backends]` in config.ini, at start or by a reload.
    Config,
    /// `POST /api/backends`.
    Admin,
    /// The state file, which at start stands in for the backends of the pools it names.
    StateFile,
    /// Discovery's DNS lookup of the `[backends]` entry `entry`.
    Dns { entry: String },
    /// etcd: listed in its pool's document, or `registered` under a key of its own.
    Etcd { registered: bool },
}

impl Source {
    pub fn name(&self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Admin => "admin",
            Source::StateFile => "state_file",
            Source::Dns { .. } => "dns",
            Source::Etcd { .. } => "etcd",
        }
    }

    /// A backend this instance holds alone (config.ini, the state file, its admin API without
    /// etcd), not one the fleet shares through etcd.
    pub fn is_local(&self) -> bool {
        matches!(self, Source::Config | Source::Admin | Source::StateFile)
    }

    /// The `[backends]` entry whose DNS lookup found the backend.
    pub fn dns_entry(&self) -> Option<&str> {
        match self {
            Source::Dns { entry } => Some(entry),
            Source::Config | Source::Admin | Source::StateFile | Source::Etcd { .. } => None,
        }
    }
}

/// Most backend slots, over all pools. Per-worker tables (counters, idle connections) grow
/// with the set up to this, and ids fit in 16 bits (`balance::Tried`). A slot whose backend
/// left the set for good and has no request in flight takes the next backend added (`place`),
/// so this bounds the backends in the set at once, not over the process's life.
pub const MAX_BACKENDS: usize = 16_384;

/// The weights a backend may have: its share of traffic, relative to the others'.
pub const WEIGHTS: RangeInclusive<u32> = 1..=1000;

/// `weight` as a backend's weight, when it is one of `WEIGHTS`.
pub fn check_weight(weight: u64) -> Option<u32> {
    u32::try_from(weight).ok().filter(|w| WEIGHTS.contains(w))
}

/// A backend name: 1 to 64 of `A-Z a-z 0-9 _ . -`, so it fits an admin URL and a metrics label.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if (1..=64).contains(&name.len()) && name.chars().all(ok_char) {
        Ok(())
    } else {
        Err("invalid backend name: expected 1 to 64 of A-Z a-z 0-9 _ . -".to_string())
    }
}

/// A backend address: a literal `ip:port` that can be connected to (not port 0, not 0.0.0.0).
pub fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = v
        .parse()
        .map_err(|_| format!("expected ip:port, got {v:?}"))?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(format!("{v:?} cannot be connected to"));
    }
    Ok(addr)
}

/// A backend's health as every thread sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Failing: gets no traffic; the health thread keeps probing it.
    Down = 0,
    /// Healthy: takes traffic.
    Up = 1,
    /// Out of the set for good (down longer than `remove_after_s`, or drained after it was
    /// deleted through the admin API or left config.ini or DNS): no traffic, no probes.
    Removed = 2,
    /// Taking no new requests while those in flight finish (admin API drain or delete).
    Draining = 3,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Up,
            2 => State::Removed,
            3 => State::Draining,
            _ => State::Down,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Down => "down",
            State::Up => "up",
            State::Removed => "removed",
            State::Draining => "draining",
        }
    }
}

/// The last health probe of a backend, for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    pub ok: bool,
    pub latency: std::time::Duration,
    /// Why it failed; empty when it passed.
    pub reason: String,
}

/// `up_since` of a backend that has not come back from a failure: no slow start.
const STEADY: u64 = u64::MAX;

/// How fast the response-time average forgets: an idle backend's figure falls by e every this
/// many milliseconds, and each new sample takes `1 - LATENCY_KEEP` of the gap.
const LATENCY_DECAY_MS: f64 = 1000.0;
const LATENCY_KEEP: f64 = 0.7;

/// Smallest share of a backend in slow start, so its first requests do arrive.
const MIN_SHARE: f64 = 0.05;

/// Milliseconds since the first call: a clock that fits in an atomic.
pub fn clock_ms(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    now.saturating_duration_since(epoch).as_millis() as u64
}

/// One backend server.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// TLS to it, and the name its certificate must have.
    pub tls: Option<String>,
    pub pool: String,
    pub backup: bool,
    pub source: Source,
    /// Changed live through the admin API.
    weight: AtomicU32,
    /// Deleted through the admin API: removed once drained.
    removing: AtomicBool,
    /// Written by the health thread after each probe, read by the admin API.
    last_probe: Mutex<Option<ProbeReport>>,
    /// A `State`: set by the health thread, and by workers marking a failing backend down.
    state: AtomicU8,
    /// When the backend last came back up (`clock_ms`), for slow start; `STEADY` if never.
    up_since: AtomicU64,
    /// Failures in a row on live traffic (passive health).
    fails: AtomicU32,
    /// State changes so far, for `/metrics`.
    transitions: AtomicU64,
    /// Peak-EWMA of response times in microseconds (`f64` bits), for `ewma`.
    latency: AtomicU64,
    /// When `latency` was last updated (`clock_ms`).
    latency_at: AtomicU64,
    /// Requests in flight on this backend, over all workers (for `least_conn`).
    active: Padded,
}

/// A counter on a cache line of its own, so the workers that write it do not also invalidate
/// the line holding the read-mostly fields beside it.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicUsize);

impl Backend {
    /// A backend from `source` that starts in `state` (`Up` at start-up; `Down` when added at
    /// run time, so it takes traffic only once its health checks pass).
    pub fn new(conf: &BackendConf, state: State, source: Source) -> Backend {
        Backend {
            name: conf.name.clone(),
            addr: conf.addr,
            tls: conf.tls.clone(),
            pool: conf.pool.clone(),
            backup: conf.backup,
            source,
            weight: AtomicU32::new(conf.weight),
            removing: AtomicBool::new(false),
            last_probe: Mutex::new(None),
            state: AtomicU8::new(state as u8),
            up_since: AtomicU64::new(STEADY),
            fails: AtomicU32::new(0),
            transitions: AtomicU64::new(0),
            latency: AtomicU64::new(0),
            latency_at: AtomicU64::new(0),
            active: Padded::default(),
        }
    }

    /// Not removed: the admin API and `/metrics` list it, and no other backend may take its
    /// name (a draining one too, even when it is being removed).
    pub fn is_listed(&self) -> bool {
        self.state() != State::Removed
    }

    /// Listed and staying: not removed, and not being removed once drained. A source that
    /// looks at its backends looks at these.
    pub fn is_live(&self) -> bool {
        self.is_listed() && !self.removing()
    }

    /// Out of the set for good with no request in flight: its slot can take a new backend.
    fn vacated(&self) -> bool {
        !self.is_listed() && self.active() == 0
    }

    /// What a sticky-session cookie says for this backend: a hash of its name, so it reveals
    /// no address and means the same to every lb-mio instance with the same config.
    pub fn token(&self) -> u64 {
        hash::fnv1a(hash::FNV_OFFSET, self.name.as_bytes())
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// Stops new requests; with `remove`, it leaves the set once idle (`retire`).
    pub fn drain(&self, remove: bool) {
        self.removing.fetch_or(remove, Ordering::Relaxed);
        self.state.store(State::Draining as u8, Ordering::Relaxed);
    }

    /// Deleted (admin API), or gone from config.ini (reload) or from DNS (discovery): it leaves
    /// once drained.
    pub fn removing(&self) -> bool {
        self.removing.load(Ordering::Relaxed)
    }

    /// Draining -> Removed, for a backend being removed whose last request finished: it leaves
    /// the set, and its slot can take the next backend placed. True when this call moved it.
    /// The health thread calls it for every backend, whoever drained it.
    pub fn retire(&self) -> bool {
        self.removing() && self.active() == 0 && self.transition(State::Draining, State::Removed)
    }

    pub fn last_probe(&self) -> Option<ProbeReport> {
        self.last_probe.lock().clone()
    }

    pub fn set_last_probe(&self, report: ProbeReport) {
        *self.last_probe.lock() = Some(report);
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn is_up(&self) -> bool {
        self.state() == State::Up
    }

    /// Moves the backend from `from` to `to`, unless another thread changed its state first
    /// (a drain never gets undone by a probe that was already under way). Coming up starts
    /// the slow start clock and ends any failure streak.
    pub fn transition(&self, from: State, to: State) -> bool {
        if to == State::Up {
            self.up_since
                .store(clock_ms(Instant::now()), Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
        }
        let (from, to) = (from as u8, to as u8);
        let moved = self
            .state
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if moved {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
        moved
    }

    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Counts a failure on live traffic; true when it is the one that marks the backend down.
    pub fn record_failure(&self, max_fails: u32) -> bool {
        let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        max_fails > 0 && fails >= max_fails && self.transition(State::Up, State::Down)
    }

    /// A response arrived: the failure streak is over (written only when there was one).
    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }

    /// Adds a response time (or a failure's penalty) to the peak-EWMA: a slower response is
    /// taken at once, a faster one pulls the average down as the old value ages out over
    /// `LATENCY_DECAY_MS`. Workers race to update it; a lost update only costs one sample.
    pub fn observe_latency(&self, took: std::time::Duration, now_ms: u64) {
        let sample = took.as_secs_f64() * 1e6;
        let current = self.latency_now(now_ms);
        let next = if sample > current {
            sample
        } else {
            current + (sample - current) * (1.0 - LATENCY_KEEP)
        };
        self.latency.store(next.to_bits(), Ordering::Relaxed);
        self.latency_at.store(now_ms, Ordering::Relaxed);
    }

    /// The peak-EWMA in microseconds, decayed for the time since it was last fed, so a backend
    /// that was slow and got no traffic since is tried again after a while.
    pub fn latency_now(&self, now_ms: u64) -> f64 {
        let latency = f64::from_bits(self.latency.load(Ordering::Relaxed));
        let idle = now_ms.saturating_sub(self.latency_at.load(Ordering::Relaxed)) as f64;
        latency * (-idle / LATENCY_DECAY_MS).exp()
    }

    /// The part of its normal share this backend should get now: ramps from `MIN_SHARE` to 1
    /// over `slow_start_ms` after it came back up.
    pub fn share(&self, now_ms: u64, slow_start_ms: u64) -> f64 {
        let since = self.up_since.load(Ordering::Relaxed);
        let elapsed = now_ms.saturating_sub(since);
        if since == STEADY || elapsed >= slow_start_ms {
            return 1.0;
        }
        (elapsed as f64 / slow_start_ms as f64).max(MIN_SHARE)
    }

    pub fn active(&self) -> usize {
        self.active.0.load(Ordering::Relaxed)
    }
}

/// The backend set: every backend, in the order they were placed; a backend's position is its
/// id in per-worker tables.
pub type Backends = Arc<[Arc<Backend>]>;

/// The set lb-mio starts with: `confs` from `source`, all up.
pub fn at_start(confs: &[BackendConf], source: &Source) -> Backends {
    confs
        .iter()
        .map(|c| Arc::new(Backend::new(c, State::Up, source.clone())))
        .collect()
}

/// Puts `backend` in the first vacated slot of `backends` (one whose backend was removed and
/// has no request in flight), or after the last; its id is returned. Every place that adds a
/// backend (admin API, reload, discovery) goes through here. Workers notice a reused slot when
/// they take the new snapshot (its `Arc` changed) and forget what they kept for the old one.
pub fn place(backends: &mut Vec<Arc<Backend>>, backend: Backend) -> Result<usize, String> {
    let backend = Arc::new(backend);
    if let Some(id) = backends.iter().position(|b| b.vacated()) {
        backends[id] = backend;
        return Ok(id);
    }
    if backends.len() >= MAX_BACKENDS {
        return Err(format!(
            "no free backend slot: at most {MAX_BACKENDS} backends at once (removed ones free theirs once drained)"
        ));
    }
    backends.push(backend);
    Ok(backends.len() - 1)
}

/// A request in flight on a backend: counted while the lease lives, so no path that ends a
/// request can forget to uncount it.
#[derive(Debug)]
pub struct Lease {
    pub id: usize,
    backend: Arc<Backend>,
}

impl Lease {
    pub fn new(backends: &Backends, id: usize) -> Lease {
        let backend = Arc::clone(&backends[id]);
        backend.active.0.fetch_add(1, Ordering::Relaxed);
        Lease { id, backend }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.active.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(n: usize) -> BackendConf {
        BackendConf {
            name: format!("b{n}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 1000 + (n % 60_000) as u16)),
            weight: 1,
            tls: None,
            pool: "default".into(),
            backup: false,
        }
    }

    fn given(n: usize, state: State) -> Backend {
        Backend::new(&conf(n), state, Source::Config)
    }

    /// Deleted and drained: it leaves.
    fn remove(backend: &Backend) {
        backend.drain(true);
        assert!(backend.retire());
    }

    #[test]
    fn slots_of_drained_removed_backends_are_reused() {
        let mut backends = Vec::new();
        for n in 0..MAX_BACKENDS {
            assert_eq!(place(&mut backends, given(n, State::Up)), Ok(n));
        }
        let full = place(&mut backends, given(99, State::Down));
        assert!(full.unwrap_err().contains("no free backend slot"));

        // Removed (down too long) but a request still in flight: the slot stays taken.
        let frozen: Backends = backends.clone().into();
        let lease = Lease::new(&frozen, 5);
        assert!(backends[5].transition(State::Up, State::Down));
        assert!(backends[5].transition(State::Down, State::Removed));
        remove(&backends[9]);
        let old = Arc::clone(&backends[9]);
        assert_eq!(place(&mut backends, given(100, State::Down)), Ok(9));
        assert!(
            !Arc::ptr_eq(&old, &backends[9]),
            "a new record in the old slot"
        );
        assert_eq!(backends[9].name, "b100");
        assert!(place(&mut backends, given(101, State::Down)).is_err());
        drop(lease);
        assert_eq!(place(&mut backends, given(101, State::Down)), Ok(5));
        assert_eq!(backends.len(), MAX_BACKENDS);

        // A draining backend (not yet removed) keeps its slot, however idle.
        backends[7].drain(true);
        assert!(place(&mut backends, given(102, State::Down)).is_err());
    }

    #[test]
    fn churn_never_runs_out_of_ids() {
        let api = Source::Dns {
            entry: "api".into(),
        };
        let mut backends = Vec::new();
        for n in 0..10 * MAX_BACKENDS {
            let found = Backend::new(&conf(n), State::Down, api.clone());
            let id = place(&mut backends, found).expect("a slot");
            if n >= 3 {
                // Keep three live, remove the one added three turns ago.
                let old = backends
                    .iter()
                    .find(|b| b.name == format!("b{}", n - 3))
                    .unwrap();
                remove(old);
            }
            assert!(id < 4, "{n}: id {id}");
        }
        assert!(backends.len() <= 4);
        assert_eq!(backends[0].source, api);
        assert_eq!(backends[0].source.dns_entry(), Some("api"));
    }

    #[test]
    fn live_means_listed_and_staying() {
        let backend = given(0, State::Up);
        assert!(backend.is_live() && backend.is_listed());
        assert!(backend.transition(State::Up, State::Down));
        assert!(backend.is_live(), "down is still live: it may come back");

        // Drained to take no traffic, but staying.
        let drained = given(1, State::Up);
        drained.drain(false);
        assert!(drained.is_live());

        // Being removed: listed (and holding its name) until it has left, but no longer live.
        let leaving = given(2, State::Up);
        leaving.drain(true);
        assert!(!leaving.is_live() && leaving.is_listed());
        assert!(leaving.retire());
        assert!(!leaving.is_live() && !leaving.is_listed());
    }

    #[test]
    fn only_a_drained_backend_being_removed_retires_and_only_once() {
        let set: Backends = vec![Arc::new(given(0, State::Up))].into();
        let backend = &set[0];
        assert!(!backend.retire(), "up");
        backend.drain(false);
        assert!(!backend.retire(), "draining, but not being removed");

        backend.drain(true);
        let lease = Lease::new(&set, 0);
        assert!(!backend.retire(), "a request in flight");
        assert_eq!(backend.state(), State::Draining);
        drop(lease);
        assert!(backend.retire());
        assert_eq!(backend.state(), State::Removed);
        assert!(!backend.retire(), "already removed");
    }

    #[test]
    fn weights_are_1_to_1000() {
        assert_eq!(WEIGHTS, 1..=1000);
        assert_eq!(check_weight(1), Some(1));
        assert_eq!(check_weight(1000), Some(1000));
        for bad in [0, 1001, u64::from(u32::MAX) + 2] {
            assert_eq!(check_weight(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_and_addresses_follow_the_rules() {
        assert_eq!(check_name("api-10.0.0.5-8080"), Ok(()));
        for bad in ["", "a b", "a:b", "<b>", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_addr("[::1]:80"),
            Ok(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], 80)))
        );
        for bad in ["127.0.0.1", "127.0.0.1:0", "0.0.0.0:80", "localhost:80"] {
            assert!(parse_addr(bad).is_err(), "{bad:?}");
        }
    }
}
