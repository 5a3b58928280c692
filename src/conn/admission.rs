//! Admission: what a request must pass before it reaches a backend. The route (during the
//! parse: it decides how the head is forwarded), then the rate limits, the retry budget's
//! share, the pool's stickiness and its strategy's choice, in that order: a request leaves
//! with a lease on a backend of its pool, or with the cause that refuses it. No sockets in here.

use super::ending::Cause;
use super::exchange::GiveUp;
use crate::backend::{self, Lease};
use crate::balance::{Pick, Tried};
use crate::config::{Sticky, MAX_HEAD};
use crate::hash;
use crate::http::head::HeadError;
use crate::http::request::{Forwarding, Request, Seen};
use crate::ratelimit::RateLimits;
use crate::retry::RetryBudget;
use crate::route::{Decision, To, Via};
use crate::shared::Snapshot;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use std::net::IpAddr;
use std::time::Instant;

/// What a worker keeps to admit requests.
pub struct Admission {
    rate: RateLimits,
    budget: RetryBudget,
    rng: SmallRng,
    /// This worker's index (each counts in slots of its own).
    worker: usize,
    /// Where a request's path is normalised for the routes: one per worker, as long as the
    /// longest head, so routing takes no memory per request.
    path_room: Box<[u8]>,
}

/// An admitted request: its backend, and what `hash` balanced it by (for a retry's choice).
pub struct Admitted {
    pub lease: Lease,
    pub key: u64,
}

impl Admission {
    pub fn new(snap: &Snapshot, worker: usize, seed: u64, now: Instant) -> Admission {
        let config = &snap.config;
        Admission {
            rate: RateLimits::new(&config.limits, config.lb.workers, now),
            budget: RetryBudget::new(config.lb.retry_budget),
            rng: SmallRng::seed_from_u64(seed),
            worker,
            path_room: vec![0; MAX_HEAD].into(),
        }
    }

    /// A new configuration: the rate buckets start afresh.
    pub fn renew(&mut self, snap: &Snapshot, now: Instant) {
        let config = &snap.config;
        self.rate = RateLimits::new(&config.limits, config.lb.workers, now);
    }

    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Room to normalise a path in.
    pub fn path_room(&mut self) -> &mut [u8] {
        &mut self.path_room
    }

    /// A random number for the route table's splits.
    pub fn draw(&mut self) -> u64 {
        self.rng.random()
    }

    /// Admits a parsed request (`head` is its head as the client sent it) to `pool`.
    pub fn admit(
        &mut self,
        snap: &Snapshot,
        pool: usize,
        client: IpAddr,
        request: &Request,
        head: &[u8],
        now: Instant,
    ) -> Result<Admitted, Cause> {
        if !self.rate.allow(client, now) {
            return Err(Cause::RateLimited);
        }
        self.budget.on_request();
        let key = match snap.pools[pool].hashes() {
            true => hash_key(client, request, head),
            false => 0,
        };
        let lease = match sticky_backend(snap, pool, request.sticky) {
            Some(id) => Lease::new(&snap.backends, id),
            None => self
                .choose(snap, pool, Tried::default(), key, now)
                .ok_or(Cause::NoBackend)?,
        };
        Ok(Admitted { lease, key })
    }

    /// Another backend of `pool` for a request that failed on those in `tried`, if the retry
    /// budget allows one (none when a change removed the pool meanwhile).
    pub fn retry(
        &mut self,
        snap: &Snapshot,
        pool: Option<usize>,
        tried: Tried,
        key: u64,
        now: Instant,
    ) -> Result<Lease, GiveUp> {
        let pool = pool.ok_or(GiveUp::NoBackend)?;
        if !self.budget.try_retry() {
            return Err(GiveUp::Budget);
        }
        self.choose(snap, pool, tried, key, now)
            .ok_or(GiveUp::NoBackend)
    }

    /// A primary of `pool`, or a backup when no primary can take the request.
    fn choose(
        &mut self,
        snap: &Snapshot,
        pool: usize,
        avoid: Tried,
        key: u64,
        now: Instant,
    ) -> Option<Lease> {
        let mut pick = Pick {
            avoid,
            rng: &mut self.rng,
            now_ms: backend::clock_ms(now),
            key,
        };
        let pool = &snap.pools[pool];
        let id = [&pool.primary, &pool.backup]
            .into_iter()
            .find_map(|group| {
                group
                    .balancer
                    .pick(&snap.backends, &group.members, &mut pick)
            })?;
        Some(Lease::new(&snap.backends, id))
    }
}

/// The route table's decision, and what it means for forwarding: the pool's hash key and
/// sticky cookie, the route's rewrite. A redirect whose `Location` would not fit is a 414.
pub fn route<'s>(
    snap: &'s Snapshot,
    seen: &Seen,
    via: &Via,
    (draw, worker): (u64, usize),
) -> Result<(Forwarding<'s>, Decision), HeadError> {
    if snap.routes.refuses_host(seen.host) {
        return Err(HeadError::Malformed("empty label in the host"));
    }
    let decision = snap.routes.decide(seen, via, draw);
    if let Some(at) = decision.route {
        snap.routes.count(at, worker);
    }
    // Only a rewrite with something to do: the head writer then checks no header against it.
    let rewrite = decision.route.and_then(|at| snap.routes.rewrite(at));
    let forwarding = match decision.to {
        To::Pool(pool) => {
            let pool = &snap.pools[pool];
            Forwarding {
                rewrite,
                hash_key: pool.hashes().then_some(&pool.conf.hash_key),
                sticky_cookie: (pool.conf.sticky == Sticky::Cookie)
                    .then_some(pool.sticky_cookie.as_str()),
            }
        }
        To::Answer | To::NotFound => Forwarding::default(),
    };
    if let Some(at) = decision.route.filter(|_| decision.to == To::Answer) {
        if !snap.routes.route(at).location_fits(seen, via.https) {
            return Err(HeadError::UriTooLong);
        }
    }
    Ok((forwarding, decision))
}

/// With `sticky = cookie` in `pool`, the backend of that pool the client's cookie names,
/// while it takes traffic.
fn sticky_backend(snap: &Snapshot, pool: usize, token: Option<u64>) -> Option<usize> {
    let pool = &snap.pools[pool];
    let token = token.filter(|_| pool.conf.sticky == Sticky::Cookie)?;
    let id = *pool.tokens.get(&token)?;
    snap.backends[id].is_up().then_some(id)
}

/// What `hash` balances a request by: a hash of the configured header or cookie, or of the
/// client address (also when the request lacks that header or cookie). The parse found the
/// value (`Forwarding::hash_key`) only when its pool hashes.
fn hash_key(client: IpAddr, request: &Request, head: &[u8]) -> u64 {
    match request.hash_source {
        Some(span) => hash::fixed(0, span.of(head)),
        None => hash::ip(0, client),
    }
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
                pool: "default".into(),
                backup: false,
            })
            .collect();
        let mut config = Config::with_backends(confs.clone());
        config.lb.workers = 1;
        extra(&mut config);
        Snapshot::new(
            config.pools_from_globals(),
            backend::at_start(&confs, &Source::Config),
        )
        .unwrap()
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
        let mut admission = Admission::new(&snap, 0, 1, Instant::now());
        let ids: Vec<usize> = (0..3)
            .map(|_| {
                let admitted = admission
                    .admit(&snap, 0, CLIENT, &request(None), HEAD, Instant::now())
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
        let mut admission = Admission::new(&snap, 0, 1, now);
        let first = admission.admit(&snap, 0, CLIENT, &request(None), HEAD, now);
        assert!(first.is_ok());
        let refused = admission.admit(&snap, 0, CLIENT, &request(None), HEAD, now);
        assert_eq!(refused.err(), Some(Cause::RateLimited));
        assert_eq!(snap.backends.iter().map(|b| b.active()).sum::<usize>(), 1);
    }

    #[test]
    fn no_backend_up_is_refused() {
        let snap = snapshot(|_| {});
        for backend in snap.backends.iter() {
            backend.drain(false);
        }
        let mut admission = Admission::new(&snap, 0, 1, Instant::now());
        let refused = admission.admit(&snap, 0, CLIENT, &request(None), HEAD, Instant::now());
        assert_eq!(refused.err(), Some(Cause::NoBackend));
    }

    #[test]
    fn a_sticky_cookie_names_its_backend_while_it_is_up() {
        let snap = snapshot(|c| c.lb.sticky = Sticky::Cookie);
        let token = snap.backends[2].token();
        let mut admission = Admission::new(&snap, 0, 1, Instant::now());
        let admit = |admission: &mut Admission| {
            let sticky = request(Some(token));
            admission.admit(&snap, 0, CLIENT, &sticky, HEAD, Instant::now())
        };
        for _ in 0..3 {
            assert_eq!(admit(&mut admission).unwrap().lease.id, 2);
        }
        snap.backends[2].drain(false);
        let moved = admit(&mut admission).unwrap();
        assert_ne!(moved.lease.id, 2);
    }

    #[test]
    fn a_retry_avoids_what_was_tried_and_spends_the_budget() {
        let snap = snapshot(|c| c.lb.retry_budget = 0);
        let mut admission = Admission::new(&snap, 0, 1, Instant::now());
        let mut tried = Tried::default();
        tried.add(0);
        let spent = admission.retry(&snap, Some(0), tried, 0, Instant::now());
        assert_eq!(spent.err(), Some(GiveUp::Budget));

        let snap = snapshot(|_| {});
        let mut admission = Admission::new(&snap, 0, 1, Instant::now());
        tried.add(1);
        let lease = admission
            .retry(&snap, Some(0), tried, 0, Instant::now())
            .unwrap();
        assert_eq!(lease.id, 2);
        tried.add(2);
        let none = admission.retry(&snap, Some(0), tried, 0, Instant::now());
        assert_eq!(none.err(), Some(GiveUp::NoBackend));
    }
}
