//! What every thread shares. Whatever can change while lb-mio runs (the config, the backend
//! set, the strategy) lives in one immutable `Snapshot`; a change builds a new snapshot and
//! bumps the epoch. Workers compare the epoch (one atomic load) at each turn of their loop and
//! take the new snapshot only when it moved, so the request path never takes a lock.
//!
//! Every change also wakes the threads that watch for changes (`watch`): the workers, the
//! health thread and the discovery thread sleep until their next deadline, so a change must
//! reach them rather than wait for them to look.

use crate::access_log::Sink;
use crate::backend::{Backend, Backends};
use crate::balance::{self, Balancer};
use crate::config::{Config, PoolConf, Sticky, Strategy};
use crate::http::request;
use crate::metrics::{self, Totals, WorkerMetrics};
use crate::ratelimit::ConnLimit;
use crate::request_id;
use crate::route::RouteTable;
use crate::tls;
use mio::Waker;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The running configuration, as one consistent value.
pub struct Snapshot {
    pub config: Config,
    /// The backends by id (an id is a position). A removed backend stays as `State::Removed`
    /// until its slot takes a new backend (`backend::place`, once it has no request in flight);
    /// workers compare each slot's `Arc` with the one they knew when they take a new snapshot,
    /// and clear what they keep by id (idle connections, counters) for a slot that changed.
    pub backends: Backends,
    /// The pools, as `config.pools` lists them.
    pub pools: Vec<Pool>,
    /// Each pool's position by its name (the health thread asks for every backend).
    by_name: HashMap<String, usize>,
    /// The global settings, for a request whose pool a change removed while it was in flight.
    global: PoolConf,
    pub routes: RouteTable,
}

/// A pool: its settings and its backends, primaries and backups, each with their balancer.
pub struct Pool {
    pub conf: PoolConf,
    pub primary: Group,
    /// Take traffic only while no primary can.
    pub backup: Group,
    pub sticky_cookie: String,
    /// Its backends by the token their sticky cookie carries.
    pub tokens: HashMap<u64, usize>,
}

/// Some of a pool's backends (global ids) and the strategy's balancer over them.
pub struct Group {
    pub members: Vec<usize>,
    pub balancer: Box<dyn Balancer>,
}

impl Group {
    fn new(conf: &PoolConf, backends: &Backends, members: Vec<usize>) -> Group {
        let strategy = match conf.sticky {
            Sticky::ClientIp => Strategy::Hash,
            Sticky::Off | Sticky::Cookie => conf.strategy,
        };
        let balancer = balance::new(strategy, conf.health.slow_start, backends, &members);
        Group { members, balancer }
    }
}

impl Pool {
    fn new(conf: &PoolConf, backends: &Backends) -> Pool {
        let (mut primary, mut backup) = (Vec::new(), Vec::new());
        for (id, b) in backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.pool == conf.name)
        {
            match b.backup {
                true => backup.push(id),
                false => primary.push(id),
            }
        }
        let members = primary.iter().chain(&backup);
        let tokens = members.map(|&id| (backends[id].token(), id)).collect();
        Pool {
            tokens,
            primary: Group::new(conf, backends, primary),
            backup: Group::new(conf, backends, backup),
            sticky_cookie: request::sticky_cookie(&conf.name),
            conf: conf.clone(),
        }
    }

    /// Whether `hash` balances this pool (then the parse looks for its hash key).
    pub fn hashes(&self) -> bool {
        self.conf.strategy == Strategy::Hash || self.conf.sticky == Sticky::ClientIp
    }
}

impl Snapshot {
    /// The snapshot of `config` over `backends`; an error when a route names a pool the
    /// config lacks.
    pub fn new(config: Config, backends: Backends) -> Result<Snapshot, String> {
        let pools = config
            .pools
            .iter()
            .map(|p| Pool::new(p, &backends))
            .collect();
        let by_name = (config.pools.iter().enumerate())
            .map(|(at, p)| (p.name.clone(), at))
            .collect();
        let routes = RouteTable::new(config.routes.clone(), config.lb.workers, |name| {
            config.pool(name)
        })?;
        Ok(Snapshot {
            global: PoolConf::from("", &config),
            config,
            backends,
            pools,
            by_name,
            routes,
        })
    }

    /// The snapshot that follows this one: `new`, with the counts this one's routes kept.
    pub fn next(&self, config: Config, backends: Backends) -> Result<Snapshot, String> {
        let mut next = Snapshot::new(config, backends)?;
        next.routes.carry_counts(&self.routes);
        Ok(next)
    }

    /// The settings of pool `at`; the global ones for a request whose pool is gone.
    pub fn pool_conf(&self, at: Option<usize>) -> &PoolConf {
        at.map_or(&self.global, |at| &self.pools[at].conf)
    }

    /// The pool called `name`, by position.
    pub fn pool(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

/// Where a newer snapshot puts the pools and routes an older one numbered, so that requests in
/// flight keep their pool and route across a change (`None`: it is gone).
pub struct Renumbering {
    pools: Vec<Option<usize>>,
    routes: Vec<Option<usize>>,
}

impl Renumbering {
    /// `None` when `new` numbers every pool and route as `old` did.
    pub fn between(old: &Snapshot, new: &Snapshot) -> Option<Renumbering> {
        let pools: Vec<Option<usize>> =
            (old.pools.iter()).map(|p| new.pool(&p.conf.name)).collect();
        let routes_by_name: HashMap<&str, usize> = (new.routes.routes().iter().enumerate())
            .map(|(at, r)| (r.name(), at))
            .collect();
        let routes: Vec<Option<usize>> = (old.routes.routes().iter())
            .map(|r| routes_by_name.get(r.name()).copied())
            .collect();
        let same = |map: &[Option<usize>], len: usize| {
            map.len() == len && map.iter().enumerate().all(|(at, to)| *to == Some(at))
        };
        let unmoved = same(&pools, new.pools.len()) && same(&routes, new.routes.routes().len());
        (!unmoved).then_some(Renumbering { pools, routes })
    }

    pub fn pool(&self, at: usize) -> Option<usize> {
        self.pools.get(at).copied().flatten()
    }

    pub fn route(&self, at: usize) -> Option<usize> {
        self.routes.get(at).copied().flatten()
    }
}

pub struct Shared {
    current: RwLock<Arc<Snapshot>>,
    epoch: AtomicU64,
    /// Woken by every change (`notify`).
    watchers: Mutex<Vec<Arc<Waker>>>,
    /// One set of counters per worker, by worker index.
    pub metrics: Vec<Arc<WorkerMetrics>>,
    /// `[limits] client_connections`, fixed at start.
    pub conn_limit: Option<ConnLimit>,
    /// Where every worker's access log lines go.
    pub access_sink: Sink,
    /// The random start of this process's request ids.
    pub id_prefix: u64,
    /// What the TLS listeners share; `None` without any.
    pub tls: Option<tls::Server>,
    /// What TLS connections to backends share; `None` when none can be made.
    pub backend_tls: Option<tls::Client>,
}

impl Shared {
    pub fn new(
        snapshot: Snapshot,
        workers: usize,
        access_sink: Sink,
        tls: Option<tls::Server>,
        backend_tls: Option<tls::Client>,
    ) -> Shared {
        Shared {
            access_sink,
            tls,
            backend_tls,
            id_prefix: request_id::process_prefix(),
            conn_limit: ConnLimit::new(snapshot.config.limits.client_connections),
            current: RwLock::new(Arc::new(snapshot)),
            epoch: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            metrics: (0..workers).map(|_| Arc::default()).collect(),
        }
    }

    /// Every worker's counters summed, for the current backends.
    pub fn totals(&self) -> Totals {
        let workers: Vec<&WorkerMetrics> = self.metrics.iter().map(|m| &**m).collect();
        metrics::totals(&workers, self.load().backends.len())
    }

    /// The current snapshot (takes a read lock: not for the request path).
    pub fn load(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read())
    }

    /// Bumped by every change.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Replaces the snapshot with what `change` builds from the current one. Changes are
    /// serialised by the write lock, so two of them never build on the same old snapshot.
    /// The watchers are woken either way: a change that builds no snapshot may still have set
    /// backends to drain (discovery's, when DNS only lost addresses).
    pub fn update<E>(
        &self,
        change: impl FnOnce(&Snapshot) -> Result<Snapshot, E>,
    ) -> Result<(), E> {
        let built = {
            let mut current = self.current.write();
            change(&current).map(|next| {
                *current = Arc::new(next);
                self.epoch.fetch_add(1, Ordering::Release);
            })
        };
        self.notify();
        built
    }

    /// Sets `backend` to drain (and, with `remove`, to leave once drained): an atomic change,
    /// no new snapshot, but the health thread must know to retire it.
    pub fn drain(&self, backend: &Backend, remove: bool) {
        backend.drain(remove);
        self.notify();
    }

    /// Has `waker` woken at every change from now on.
    pub fn watch(&self, waker: Arc<Waker>) {
        self.watchers.lock().push(waker);
    }

    /// Wakes every watcher: the snapshot changed, or a backend was set to drain (an atomic
    /// change, which the health thread must see to retire it once drained).
    pub fn notify(&self) {
        for waker in self.watchers.lock().iter() {
            // Fails only when the eventfd is gone with its thread, which has nothing to follow.
            let _ = waker.wake();
        }
    }
}
