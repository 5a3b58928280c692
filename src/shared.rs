//! What every thread shares. Whatever can change while lb-mio runs (the config, the backend
//! set, the strategy) lives in one immutable `Snapshot`; a change builds a new snapshot and
//! bumps the epoch. Workers compare the epoch (one atomic load) at each turn of their loop and
//! take the new snapshot only when it moved, so the request path never takes a lock.

use crate::access_log::Sink;
use crate::backend::Backends;
use crate::balance::{self, Balancer};
use crate::config::{Config, Sticky, Strategy};
use crate::metrics::{self, Totals, WorkerMetrics};
use crate::ratelimit::ConnLimit;
use crate::request_id;
use crate::tls;
use parking_lot::RwLock;
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
    /// The ids the balancer chooses among (every backend).
    pub members: Vec<usize>,
    pub balancer: Box<dyn Balancer>,
}

impl Snapshot {
    pub fn new(config: Config, backends: Backends) -> Snapshot {
        let strategy = match config.lb.sticky {
            Sticky::ClientIp => Strategy::Hash,
            Sticky::Off | Sticky::Cookie => config.lb.strategy,
        };
        let members: Vec<usize> = (0..backends.len()).collect();
        let balancer = balance::new(strategy, config.health.slow_start, &backends, &members);
        Snapshot {
            config,
            backends,
            members,
            balancer,
        }
    }
}

pub struct Shared {
    current: RwLock<Arc<Snapshot>>,
    epoch: AtomicU64,
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
    pub fn update<E>(
        &self,
        change: impl FnOnce(&Snapshot) -> Result<Snapshot, E>,
    ) -> Result<(), E> {
        let mut current = self.current.write();
        *current = Arc::new(change(&current)?);
        self.epoch.fetch_add(1, Ordering::Release);
        Ok(())
    }
}
