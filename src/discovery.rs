//! Service discovery: a `[backends]` entry that names a host (`api = api.service.consul:8080`)
//! or an SRV name (`web = srv:_http._tcp.web.consul`) is looked up in DNS every
//! `[dns] resolve_interval_s` by a thread of its own. Each address found is an ordinary backend
//! named `<entry>-<address>-<port>` (`api-10.0.0.5-8080`, `api-fd00..5-8080`): a new one starts
//! down and takes traffic once its health checks pass, one gone from DNS drains and then
//! leaves, freeing its slot for the next (`backend::place`). A lookup that fails (timeout,
//! SERVFAIL, NXDOMAIN, empty answer) changes nothing. Changes go through `Shared::update` like
//! the admin API's, so the workers see them within one loop turn and take no lock.

use crate::backend::{self, Backend, BackendConf, Source, State};
use crate::config::{Discover, Dns, Target};
use crate::dns::{self, DnsError, Resolver};
use crate::shared::{Shared, Snapshot};
use log::{info, warn, Level};
use mio::{Events, Poll, Token, Waker};
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the thread waits after its poll failed, rather than spin.
const POLL_RETRY: Duration = Duration::from_millis(100);

/// The discovery thread's memory between rounds.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Entries whose last lookup failed: one warning per failure streak.
    failing: HashSet<String>,
    /// The entries and `[dns]` settings of the last round, to notice a reload that changed them.
    entries: Vec<Discover>,
    dns: Dns,
}

impl Discovery {
    /// Looks every entry up once, before the workers start, so traffic has backends from the
    /// first request: the addresses found now start up, like `[backends]` addresses at start.
    /// Entries are looked up at once, so this takes at most about `[dns] timeout_ms`.
    pub fn start(shared: &Shared) -> Discovery {
        let mut discovery = Discovery::default();
        discovery.round(shared, State::Up);
        discovery
    }

    /// Runs the rounds that follow, every `resolve_interval_s`, on a thread of their own. It
    /// sleeps until the next round, or until a change (`Shared::watch`) that may have changed
    /// the entries; with no entry, until a change alone.
    pub fn spawn(mut self, shared: Arc<Shared>) -> io::Result<JoinHandle<()>> {
        let mut poll = Poll::new()?;
        shared.watch(Arc::new(Waker::new(poll.registry(), Token(0))?));
        thread::Builder::new()
            .name("discovery".into())
            .spawn(move || {
                let mut events = Events::with_capacity(4);
                let mut next = Instant::now() + self.dns.resolve_interval;
                let mut epoch = shared.epoch();
                loop {
                    let left = next.saturating_duration_since(Instant::now());
                    wait(
                        &mut poll,
                        &mut events,
                        (!self.entries.is_empty()).then_some(left),
                    );
                    let mut reloaded = false;
                    if shared.epoch() != epoch {
                        epoch = shared.epoch();
                        let snap = shared.load();
                        reloaded =
                            snap.config.discover != self.entries || snap.config.dns != self.dns;
                    }
                    if reloaded || Instant::now() >= next {
                        self.round(&shared, State::Down);
                        next = Instant::now() + self.dns.resolve_interval;
                    }
                }
            })
    }

    /// Looks every entry up (all at once, each bounded by the DNS timeout) and applies what
    /// the lookups that worked found; `state` is what new backends start as.
    fn round(&mut self, shared: &Shared, state: State) {
        let snap = shared.load();
        self.entries = snap.config.discover.clone();
        self.dns = snap.config.dns.clone();
        if self.entries.is_empty() {
            return;
        }
        let resolver = Resolver {
            server: self.dns.resolver.unwrap_or_else(dns::system_resolver),
            timeout: self.dns.timeout,
        };
        let results = lookup_all(&resolver, &self.entries);
        let mut found = Vec::new();
        for (entry, result) in self.entries.iter().zip(results) {
            match result {
                Ok(addrs) => {
                    if self.failing.remove(&entry.name) {
                        info!(
                            "discovery: {} ({}): lookups work again",
                            entry.name, entry.target
                        );
                    }
                    found.push((entry.clone(), addrs));
                }
                Err(why) => {
                    if self.failing.insert(entry.name.clone()) {
                        let kept = snap.backends.iter().filter(|b| owned(b, entry)).count();
                        warn!(
                            "discovery: {} ({}): lookup at {} failed: {why}; keeping its {kept} addresses until a lookup works",
                            entry.name, entry.target, resolver.server
                        );
                    }
                }
            }
        }
        if !found.is_empty() {
            // `Err`: nothing to change, so no new snapshot and no epoch bump. The lines are
            // logged once the lock is released: a slow stderr must not hold it.
            let mut notes = Vec::new();
            let _ = shared.update(|snap| apply(snap, &found, state, &mut notes).ok_or(()));
            for (level, line) in notes {
                log::log!(level, "{line}");
            }
        }
    }
}

/// Sleeps until a change wakes `poll`, or `timeout` passes.
fn wait(poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) {
    if let Err(e) = poll.poll(events, timeout) {
        if e.kind() != io::ErrorKind::Interrupted {
            warn!("discovery: poll failed: {e}");
            thread::sleep(POLL_RETRY);
        }
    }
}

/// Every entry's lookup, on threads of their own so one slow entry delays no other.
fn lookup_all(resolver: &Resolver, entries: &[Discover]) -> Vec<Result<Vec<SocketAddr>, DnsError>> {
    thread::scope(|scope| {
        let running: Vec<_> = entries
            .iter()
            .map(|entry| {
                let target = &entry.target;
                thread::Builder::new()
                    .name("discovery-lookup".into())
                    .spawn_scoped(scope, move || lookup(resolver, target))
                    .map_err(|_| target)
            })
            .collect();
        running
            .into_iter()
            .map(|handle| match handle {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(DnsError::Io("lookup thread panicked".into()))),
                // No thread to be had: look it up here.
                Err(target) => lookup(resolver, target),
            })
            .collect()
    })
}

/// The addresses `target` stands for now.
pub fn lookup(resolver: &Resolver, target: &Target) -> Result<Vec<SocketAddr>, DnsError> {
    match target {
        Target::Host(host, port) => Ok(resolver
            .lookup_ip(host)?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, *port))
            .collect()),
        Target::Srv(name) => resolver.lookup_srv(name),
    }
}

/// The name of the backend for `addr` found by `entry`: `api-10.0.0.5-8080`,
/// `api-fd00..5-8080` (a colon cannot be in a name, and must not be in an admin URL). At most
/// 18 + 1 + 39 + 1 + 5 = 64 characters (`config::MAX_DISCOVER_NAME`).
pub fn backend_name(entry: &str, addr: SocketAddr) -> String {
    let ip = addr.ip().to_string().replace(':', ".");
    format!("{entry}-{ip}-{}", addr.port())
}

/// A live backend that `entry`'s lookup found.
fn owned(backend: &Backend, entry: &Discover) -> bool {
    backend.is_live() && backend.source.dns_entry() == Some(entry.name.as_str())
}

/// The snapshot that follows from `found` (each entry with the addresses its lookup returned),
/// or `None` when no backend is added. Addresses gone drain (an atomic, no new snapshot
/// needed) and leave once their last request finished; new ones start as `state`. A result
/// for an entry the config no longer has as it was (a reload came between) is ignored. What
/// it did goes to `notes`, one line per address, for the log.
pub fn apply(
    snap: &Snapshot,
    found: &[(Discover, Vec<SocketAddr>)],
    state: State,
    notes: &mut Vec<(Level, String)>,
) -> Option<Snapshot> {
    let mut backends = snap.backends.to_vec();
    let mut added = false;
    for (entry, addrs) in found {
        if !snap.config.discover.contains(entry) {
            continue;
        }
        for gone in snap
            .backends
            .iter()
            .filter(|b| owned(b, entry) && !addrs.contains(&b.addr))
        {
            notes.push((
                Level::Info,
                format!(
                    "discovery: {}: {} is gone from DNS: backend {} draining, then removed",
                    entry.name, gone.addr, gone.name
                ),
            ));
            gone.drain(true);
        }
        for &addr in addrs {
            if backends.iter().any(|b| owned(b, entry) && b.addr == addr) {
                continue;
            }
            let name = backend_name(&entry.name, addr);
            if let Some(taken) = backends.iter().find(|b| b.name == name && b.is_listed()) {
                // Ours, still draining after the address went away and came back: it is
                // added again once it left. Anyone else's: a clash to report.
                if taken.source.dns_entry() != Some(entry.name.as_str()) {
                    notes.push((
                        Level::Warn,
                        format!(
                            "discovery: {}: {addr} not added: a backend named {name} exists",
                            entry.name
                        ),
                    ));
                }
                continue;
            }
            let conf = BackendConf {
                name,
                addr,
                weight: entry.weight,
                tls: entry.tls.clone(),
                pool: entry.pool.clone(),
                backup: entry.backup,
            };
            let source = Source::Dns {
                entry: entry.name.clone(),
            };
            match backend::place(&mut backends, Backend::new(&conf, state, source)) {
                Ok(id) => {
                    added = true;
                    let how = match state {
                        State::Up => "up",
                        _ => "down until its health checks pass",
                    };
                    notes.push((
                        Level::Info,
                        format!(
                            "discovery: {}: {addr} added as backend {} (id {id}); {how}",
                            entry.name, conf.name
                        ),
                    ));
                }
                Err(e) => notes.push((
                    Level::Warn,
                    format!("discovery: {}: {addr} not added: {e}", entry.name),
                )),
            }
        }
    }
    if !added {
        return None;
    }
    match snap.next(snap.config.clone(), backends.into()) {
        Ok(next) => Some(next),
        Err(e) => {
            notes.push((Level::Warn, format!("discovery: {e}")));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MAX_BACKENDS;
    use crate::config::Config;

    fn entry(name: &str) -> Discover {
        Discover {
            name: name.into(),
            target: Target::Host(format!("{name}.test"), 80),
            weight: 2,
            tls: None,
            pool: "default".into(),
            backup: false,
        }
    }

    fn snapshot(entries: &[&str]) -> Snapshot {
        let mut config = Config::with_backends(Vec::new());
        config.discover = entries.iter().map(|e| entry(e)).collect();
        Snapshot::new(config, Arc::from(Vec::new())).unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// The live addresses `entry`'s lookup found.
    fn live(snap: &Snapshot, entry: &str) -> Vec<SocketAddr> {
        let mut live: Vec<SocketAddr> = snap
            .backends
            .iter()
            .filter(|b| owned(b, &self::entry(entry)))
            .map(|b| b.addr)
            .collect();
        live.sort();
        live
    }

    /// The health thread's part: drained backends leave.
    fn settle(snap: &Snapshot) {
        for b in snap.backends.iter() {
            b.retire();
        }
    }

    /// `snap` with `others` more backends from config.ini.
    fn crowded(snap: &Snapshot, others: usize) -> Snapshot {
        let confs: Vec<BackendConf> = (0..others)
            .map(|n| BackendConf {
                name: format!("s{n}"),
                addr: SocketAddr::from(([10, 9, (n / 250) as u8, (n % 250) as u8 + 1], 80)),
                weight: 1,
                tls: None,
                pool: "default".into(),
                backup: false,
            })
            .collect();
        let mut backends = snap.backends.to_vec();
        backends.extend(backend::at_start(&confs, &Source::Config).iter().cloned());
        Snapshot::new(snap.config.clone(), backends.into()).unwrap()
    }

    #[test]
    fn names_fit_the_backend_name_rules() {
        let v4 = backend_name("api", "10.0.0.5:8080".parse().unwrap());
        assert_eq!(v4, "api-10.0.0.5-8080");
        let v6 = backend_name("api", "[fd00::5]:8080".parse().unwrap());
        assert_eq!(v6, "api-fd00..5-8080");
        let longest = backend_name(
            &"a".repeat(crate::config::MAX_DISCOVER_NAME),
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                .parse()
                .unwrap(),
        );
        assert_eq!(longest.len(), 64);
        for name in [v4, v6, longest] {
            assert_eq!(backend::check_name(&name), Ok(()), "{name}");
        }
    }

    #[test]
    fn addresses_are_added_drained_and_kept() {
        let snap = snapshot(&["api", "web"]);
        let found = [(entry("api"), addrs(&["10.0.0.1:80", "10.0.0.2:80"]))];
        let snap = apply(&snap, &found, State::Down, &mut Vec::new()).expect("two added");
        assert_eq!(live(&snap, "api"), addrs(&["10.0.0.1:80", "10.0.0.2:80"]));
        assert_eq!(snap.backends[0].name, "api-10.0.0.1-80");
        assert_eq!(snap.backends[0].state(), State::Down);
        assert_eq!(snap.backends[0].weight(), 2);
        assert_eq!(snap.backends[0].source.dns_entry(), Some("api"));

        // The same answer again: nothing to do.
        assert!(apply(&snap, &found, State::Down, &mut Vec::new()).is_none());

        // One goes, one comes: the one gone drains, the new one takes a new slot (the old
        // one is not free before it has left).
        let found = [(entry("api"), addrs(&["10.0.0.2:80", "10.0.0.3:80"]))];
        let next = apply(&snap, &found, State::Down, &mut Vec::new()).expect("one added");
        assert_eq!(snap.backends[0].state(), State::Draining);
        assert!(snap.backends[0].removing());
        assert_eq!(next.backends.len(), 3);
        assert_eq!(live(&next, "api"), addrs(&["10.0.0.2:80", "10.0.0.3:80"]));

        // Once it left, its slot takes the next address.
        settle(&next);
        let found = [(
            entry("api"),
            addrs(&["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]),
        )];
        let last = apply(&next, &found, State::Down, &mut Vec::new()).expect("one added");
        assert_eq!(last.backends.len(), 3);
        assert_eq!(last.backends[0].name, "api-10.0.0.4-80");
    }

    #[test]
    fn a_draining_address_that_comes_back_waits_for_its_slot() {
        let snap = snapshot(&["api"]);
        let one = [(entry("api"), addrs(&["10.0.0.1:80"]))];
        let snap = apply(&snap, &one, State::Up, &mut Vec::new()).unwrap();
        let none: [(Discover, Vec<SocketAddr>); 1] = [(entry("api"), Vec::new())];
        assert!(apply(&snap, &none, State::Down, &mut Vec::new()).is_none());
        assert_eq!(snap.backends[0].state(), State::Draining);
        // Back before it left: not added twice under one name.
        assert!(apply(&snap, &one, State::Down, &mut Vec::new()).is_none());
        settle(&snap);
        let back = apply(&snap, &one, State::Down, &mut Vec::new()).expect("added again");
        assert_eq!(back.backends.len(), 1);
        assert_eq!(back.backends[0].state(), State::Down);
    }

    #[test]
    fn results_for_entries_no_longer_configured_are_ignored() {
        let snap = snapshot(&["api"]);
        let mut moved = entry("api");
        moved.target = Target::Host("elsewhere.test".into(), 80);
        let found = [
            (moved, addrs(&["10.0.0.1:80"])),
            (entry("gone"), addrs(&["10.0.0.2:80"])),
        ];
        assert!(apply(&snap, &found, State::Down, &mut Vec::new()).is_none());
    }

    #[test]
    fn churn_reuses_slots_and_a_full_backend_set_is_reported_not_fatal() {
        let mut snap = snapshot(&["api"]);
        for round in 0..(3 * MAX_BACKENDS / 8) {
            let base = round * 8;
            let list: Vec<SocketAddr> = (base..base + 8)
                .map(|n| SocketAddr::from(([10, 0, (n / 250) as u8, (n % 250) as u8 + 1], 80)))
                .collect();
            snap = apply(
                &snap,
                &[(entry("api"), list.clone())],
                State::Down,
                &mut Vec::new(),
            )
            .unwrap();
            settle(&snap);
            assert_eq!(live(&snap, "api").len(), 8);
            assert!(
                snap.backends.len() <= 16,
                "round {round}: {}",
                snap.backends.len()
            );
        }
        // Others hold all slots but 64, and the old 8 keep theirs while they drain: of 80 new
        // addresses, 56 get one, the rest wait.
        let snap = crowded(&snap, MAX_BACKENDS - 64);
        let many: Vec<SocketAddr> = (1..=80)
            .map(|n| SocketAddr::from(([10, 1, 0, n], 80)))
            .collect();
        let mut notes = Vec::new();
        let full = apply(&snap, &[(entry("api"), many)], State::Down, &mut notes).unwrap();
        settle(&full);
        assert_eq!(full.backends.len(), MAX_BACKENDS);
        let refused = notes.iter().filter(|(level, line)| {
            *level == Level::Warn && line.contains("not added: no free backend slot")
        });
        assert_eq!(refused.count(), 80 - 56);
        let gone = notes
            .iter()
            .filter(|(_, line)| line.contains("is gone from DNS"));
        assert_eq!(gone.count(), 8);
    }
}
