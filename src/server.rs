//! Starting lb-mio: bind one `SO_REUSEPORT` listener per worker, look discovered backends up
//! once, then start the workers, the health thread and the discovery thread. Everything that
//! can fail at start fails here, before any thread runs.

use crate::access_log::Sink;
use crate::admin;
use crate::backend::{self, Source};
use crate::config::Config;
use crate::discovery::Discovery;
use crate::fleet::{self, Fleet};
use crate::health;
use crate::listen::bind;
use crate::shared::{Shared, Snapshot};
use crate::state_file;
use crate::tls;
use crate::worker::{Handle, Listener, Msg, Worker};
use log::{info, warn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A started lb-mio: its threads run until the process ends.
pub struct Running {
    /// The first `listen` address (with the port the kernel chose, for port 0).
    pub addr: SocketAddr,
    /// Every `listen` address, in order.
    pub addrs: Vec<SocketAddr>,
    /// Every `tls_listen` address, in order.
    pub tls_addrs: Vec<SocketAddr>,
    /// Where the admin listener listens, when it is on.
    pub admin_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    /// The fleet it follows in etcd, with `[etcd]`.
    pub fleet: Option<Arc<Fleet>>,
    workers: Vec<(Handle, JoinHandle<()>)>,
}

impl Running {
    /// Graceful stop: every worker stops accepting and closes its idle connections; requests
    /// in flight finish, up to `drain_timeout_s`. Returns once every worker is done.
    pub fn stop(self) {
        let drain = self.shared.load().config.lb.drain_timeout;
        let deadline = Instant::now() + drain;
        for (handle, _) in &self.workers {
            handle.send(Msg::Stop { deadline });
        }
        for (_, thread) in self.workers {
            let _ = thread.join();
        }
    }
}

/// Binds every listener, then starts the workers and the health thread.
pub fn start(mut config: Config) -> Result<Running, Box<dyn std::error::Error>> {
    let mut saved = Vec::new();
    if let Some(path) = &config.admin.state_file {
        if let Some(file) = state_file::load(path)? {
            info!(
                "{} backends from the state file {}",
                file.backends.len(),
                path.display()
            );
            // The file stands in for the backends of the pools it names; a pool config.ini
            // has gained since it was written starts with config.ini's.
            config.backends.retain(|b| !file.pools.contains(&b.pool));
            if let Some(b) = file
                .backends
                .iter()
                .find(|s| config.backends.iter().any(|c| c.name == s.name))
            {
                let message = format!(
                    "state file {}: backend {} is config.ini's too, in another pool (names are unique over all pools)",
                    path.display(),
                    b.name
                );
                return Err(message.into());
            }
            saved = file.backends;
        }
    }
    let tls = tls::Server::load(&config)?;
    let backend_tls = tls::Client::load(&config)?;
    if let Some(tls) = &tls {
        for warning in tls.expiry_warnings() {
            warn!("{warning}");
        }
    }
    let mut listeners: Vec<Vec<Listener>> = (0..config.lb.workers).map(|_| Vec::new()).collect();
    let addrs = bind_all(&config.lb.listen, false, &mut listeners)?;
    let tls_addrs = bind_all(&config.lb.tls_listen, true, &mut listeners)?;
    let addr = addrs[0];
    let mut backends: Vec<_> = (backend::at_start(&config.backends, &Source::Config).iter())
        .chain(backend::at_start(&saved, &Source::StateFile).iter())
        .cloned()
        .collect();
    config.backends.extend(saved);
    // etcd's prefix is read before any worker accepts, like DNS below; its backends start up.
    let fleet = match config.etcd.is_on() {
        true => {
            let (fleet, client, start, merged) = Fleet::start(config)?;
            config = merged;
            for (confs, registered) in [
                (&config.stored.listed, false),
                (&config.stored.registered, true),
            ] {
                backends.extend(
                    backend::at_start(confs, &Source::Etcd { registered })
                        .iter()
                        .cloned(),
                );
            }
            Some((Arc::new(fleet), client, start))
        }
        false => None,
    };
    let workers = config.lb.workers;
    let log_file = config.log.access_log_file.clone();
    let sink = Sink::open(log_file.as_deref()).map_err(|e| {
        let path = log_file.unwrap_or_default();
        format!("cannot open [log] access_log_file {}: {e}", path.display())
    })?;
    let snapshot = Snapshot::new(config, backends.into())?;
    let shared = Arc::new(Shared::new(snapshot, workers, sink, tls, backend_tls));
    // Discovered entries are looked up once before any worker accepts (bounded by the DNS
    // timeout), so the first requests have their backends.
    let discovery = Discovery::start(&shared);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut workers = Vec::new();
    for (i, listeners) in listeners.into_iter().enumerate() {
        let metrics = Arc::clone(&shared.metrics[i]);
        let (worker, handle) = Worker::new(listeners, Arc::clone(&shared), metrics, i, seed)?;
        let thread = thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || worker.run())?;
        workers.push((handle, thread));
    }
    health::spawn(Arc::clone(&shared))?;
    discovery.spawn(Arc::clone(&shared))?;
    let fleet = match fleet {
        Some((fleet, client, start)) => {
            fleet::spawn(Arc::clone(&fleet), Arc::clone(&shared), client, start)?;
            Some(fleet)
        }
        None => None,
    };
    let admin = shared.load().config.admin.clone();
    let mut admin_addr = None;
    if let Some(listen) = admin.listen {
        let api = admin::Api {
            shared: Arc::clone(&shared),
            fleet: fleet.clone(),
            token: admin.token,
        };
        let bound = admin::spawn(api, listen)
            .map_err(|e| format!("cannot start the admin listener on {listen}: {e}"))?;
        info!("admin API listening on http://{bound}/");
        admin_addr = Some(bound);
    }
    let snap = shared.load();
    let shown = |addrs: &[SocketAddr]| -> String {
        let shown: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        shown.join(", ")
    };
    if let Some(tls) = &shared.tls {
        info!(
            "lb-mio listening for TLS on {}: {} certificates",
            shown(&tls_addrs),
            tls.certificates().len()
        );
    }
    info!(
        "lb-mio listening on {}: {} workers, {} strategy, {} backends",
        shown(&addrs),
        snap.config.lb.workers,
        snap.config.lb.strategy.name(),
        snap.backends.len()
    );
    Ok(Running {
        addr,
        addrs,
        tls_addrs,
        admin_addr,
        shared,
        fleet,
        workers,
    })
}

/// Adds to each worker's `listeners` one listener per address of `listen`; returns the
/// addresses bound. With port 0 the first bind of an address picks the port and the other
/// workers' listeners share it.
fn bind_all(
    listen: &[SocketAddr],
    tls: bool,
    listeners: &mut [Vec<Listener>],
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error>> {
    let mut addrs = Vec::new();
    for &wanted in listen {
        let v6_only = v6_only(wanted, listen);
        let first = bind(wanted, v6_only)?;
        let addr = first.local_addr()?;
        listeners[0].push(Listener { socket: first, tls });
        for worker in &mut listeners[1..] {
            let socket = bind(addr, v6_only)?;
            worker.push(Listener { socket, tls });
        }
        addrs.push(addr);
    }
    Ok(addrs)
}

/// `[::]:port` alone is dual-stack and takes IPv4 clients too, unless an IPv4 address on the
/// same port is listed as well; every other IPv6 address takes IPv6 only.
fn v6_only(addr: SocketAddr, listen: &[SocketAddr]) -> bool {
    let shares_port = |a: &SocketAddr| a.is_ipv4() && a.port() == addr.port();
    !addr.ip().is_unspecified() || listen.iter().any(shares_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_wildcard_is_dual_stack_unless_ipv4_shares_its_port() {
        let addrs = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|a| a.parse().unwrap()).collect()
        };
        let alone = addrs(&["[::]:80"]);
        assert!(!v6_only(alone[0], &alone));
        let beside = addrs(&["[::]:80", "0.0.0.0:80"]);
        assert!(v6_only(beside[0], &beside));
        let other_port = addrs(&["[::]:80", "0.0.0.0:81"]);
        assert!(!v6_only(other_port[0], &other_port));
        let loopback = addrs(&["[::1]:80"]);
        assert!(v6_only(loopback[0], &loopback));
    }
}
