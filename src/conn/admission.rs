//! Admission: what a request must pass before it reaches a backend. The rate limits, the retry
//! budget's share, stickiness and the strategy's choice, in that order: a request leaves with a
//! lease on its backend, or with the cause that refuses it. No sockets in here.

use super::ending::Cause;
use super::exchange::GiveUp;
use crate::backend::{self, Lease};
use crate::balance::{Pick, Tried};
use crate::config::{HashKey, Sticky, Strategy};
use crate::hash;
use crate::http::request::Request;
use crate::ratelimit::RateLimits;
use crate::retry::RetryBudget;
use crate::shared::Snapshot;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::net::IpAddr;
use std::time::Instant;

/// What a worker keeps to admit requests.
pub struct Admission {
    rate: RateLimits,
    budget: RetryBudget,
    rng: SmallRng,
}

/// An admitted request: its backend, and what `hash` balanced it by (for a retry's choice).
pub struct Admitted {
    pub lease: Lease,
    pub key: u64,
}

impl Admission {
    pub fn new(snap: &Snapshot, seed: u64, now: Instant) -> Admission {
        let config = &snap.config;
        Admission {
            rate: RateLimits::new(&config.limits, config.lb.workers, now),
            budget: RetryBudget::new(config.lb.retry_budget),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// A new configuration: the rate buckets start afresh.
    pub fn renew(&mut self, snap: &Snapshot, now: Instant) {
        let config = &snap.config;
        self.rate = RateLimits::new(&config.limits, config.lb.workers, now);
    }

    /// Admits a parsed request (`head` is its head as the client sent it).
    pub fn admit(
        &mut self,
        snap: &Snapshot,
        client: IpAddr,
        request: &Request,
        head: &[u8],
        now: Instant,
    ) -> Result<Admitted, Cause> {
        if !self.rate.allow(client, now) {
            return Err(Cause::RateLimited);
        }
        self.budget.on_request();
        let key = match wanted_hash_key(snap) {
            Some(_) => hash_key(client, request, head),
            None => 0,
        };
        let lease = match sticky_backend(snap, request.sticky) {
            Some(id) => Lease::new(&snap.backends, id),
            None => self
                .choose(snap, Tried::default(), key, now)
                .ok_or(Cause::NoBackend)?,
        };
        Ok(Admitted { lease, key })
    }

    /// Another backend for a request that failed on those in `tried`, if the retry budget
    /// allows one.
    pub fn retry(
        &mut self,
        snap: &Snapshot,
        tried: Tried,
        key: u64,
        now: Instant,
    ) -> Result<Lease, GiveUp> {
        if !self.budget.try_retry() {
            return Err(GiveUp::Budget);
        }
        self.choose(snap, tried, key, now).ok_or(GiveUp::NoBackend)
    }

    fn choose(&mut self, snap: &Snapshot, avoid: Tried, key: u64, now: Instant) -> Option<Lease> {
        let mut pick = Pick {
            avoid,
            rng: &mut self.rng,
            now_ms: backend::clock_ms(now),
            key,
        };
        let id = snap
            .balancer
            .pick(&snap.backends, &snap.members, &mut pick)?;
        Some(Lease::new(&snap.backends, id))
    }
}

/// With `sticky = cookie`, the backend the client's cookie names, while it takes traffic.
fn sticky_backend(snap: &Snapshot, token: Option<u64>) -> Option<usize> {
    let token = token.filter(|_| snap.config.lb.sticky == Sticky::Cookie)?;
    let backends = &snap.backends;
    (0..backends.len()).find(|&id| backends[id].is_up() && backends[id].token() == token)
}

/// What `hash` balances a request by: a hash of the configured header or cookie, or of the
/// client address (also when the request lacks that header or cookie). The parse found the
/// value (`Wanted::hash_key`) only when the `hash` strategy is in use.
fn hash_key(client: IpAddr, request: &Request, head: &[u8]) -> u64 {
    match request.hash_source {
        Some(span) => hash::fixed(0, span.of(head)),
        None => match client {
            IpAddr::V4(ip) => hash::fixed(0, &ip.octets()),
            IpAddr::V6(ip) => hash::fixed(0, &ip.octets()),
        },
    }
}

/// The hash key the parse must look for: `hash` balances by it.
pub fn wanted_hash_key(snap: &Snapshot) -> Option<&HashKey> {
    let lb = &snap.config.lb;
    let hashing = lb.strategy == Strategy::Hash || lb.sticky == Sticky::ClientIp;
    hashing.then_some(&lb.hash_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendConf, Source};
    use crate::config::Config;
    use crate::http::body::Framing;
    use crate::http::request::{IdFrom, Method};
    use std::net::{Ipv4Addr, SocketAddr};

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    fn snapshot(extra: impl FnOnce(&mut Config)) -> Snapshot {
        let confs: Vec<BackendConf> = (0..3)
            .map(|n| BackendConf {
                name: format!("b{n}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + n)),
                weight: 1,
                tls: None,
            })
            .collect();
        let mut config = Config::with_backends(confs.clone());
        config.lb.workers = 1;
        extra(&mut config);
        Snapshot::new(config, backend::at_start(&confs, &Source::Config))
    }

    fn request(sticky: Option<u64>) -> Request {
        Request {
            method: Method::Get,
            http10: false,
            framing: Framing::Empty,
            keep_alive: true,
            upgrade: false,
            head_len: 0,
            sticky,
            id: IdFrom::Off,
            hash_source: None,
        }
    }

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn round_robin_admits_each_backend_in_turn() {
        let snap = snapshot(|_| {});
        let mut admission = Admission::new(&snap, 1, Instant::now());
        let ids: Vec<usize> = (0..3)
            .map(|_| {
                let admitted = admission
                    .admit(&snap, CLIENT, &request(None), HEAD, Instant::now())
                    .unwrap();
                admitted.lease.id
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2], "{ids:?}");
    }

    #[test]
    fn over_the_client_rate_is_refused_before_a_backend_is_chosen() {
        let snap = snapshot(|c| {
            c.limits.client_rate = 1;
            c.limits.client_burst = 1;
        });
        let now = Instant::now();
        let mut admission = Admission::new(&snap, 1, now);
        let first = admission.admit(&snap, CLIENT, &request(None), HEAD, now);
        assert!(first.is_ok());
        let refused = admission.admit(&snap, CLIENT, &request(None), HEAD, now);
        assert_eq!(refused.err(), Some(Cause::RateLimited));
        assert_eq!(snap.backends.iter().map(|b| b.active()).sum::<usize>(), 1);
    }

    #[test]
    fn no_backend_up_is_refused() {
        let snap = snapshot(|_| {});
        for backend in snap.backends.iter() {
            backend.drain(false);
        }
        let mut admission = Admission::new(&snap, 1, Instant::now());
        let refused = admission.admit(&snap, CLIENT, &request(None), HEAD, Instant::now());
        assert_eq!(refused.err(), Some(Cause::NoBackend));
    }

    #[test]
    fn a_sticky_cookie_names_its_backend_while_it_is_up() {
        let snap = snapshot(|c| c.lb.sticky = Sticky::Cookie);
        let token = snap.backends[2].token();
        let mut admission = Admission::new(&snap, 1, Instant::now());
        for _ in 0..3 {
            let admitted = admission
                .admit(&snap, CLIENT, &request(Some(token)), HEAD, Instant::now())
                .unwrap();
            assert_eq!(admitted.lease.id, 2);
        }
        snap.backends[2].drain(false);
        let moved = admission
            .admit(&snap, CLIENT, &request(Some(token)), HEAD, Instant::now())
            .unwrap();
        assert_ne!(moved.lease.id, 2);
    }

    #[test]
    fn a_retry_avoids_what_was_tried_and_spends_the_budget() {
        let snap = snapshot(|c| c.lb.retry_budget = 0);
        let mut admission = Admission::new(&snap, 1, Instant::now());
        let mut tried = Tried::default();
        tried.add(0);
        let spent = admission.retry(&snap, tried, 0, Instant::now());
        assert_eq!(spent.err(), Some(GiveUp::Budget));

        let snap = snapshot(|_| {});
        let mut admission = Admission::new(&snap, 1, Instant::now());
        tried.add(1);
        let lease = admission.retry(&snap, tried, 0, Instant::now()).unwrap();
        assert_eq!(lease.id, 2);
        tried.add(2);
        let none = admission.retry(&snap, tried, 0, Instant::now());
        assert_eq!(none.err(), Some(GiveUp::NoBackend));
    }
}
