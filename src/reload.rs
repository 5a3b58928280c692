//! SIGHUP: a new config.ini becomes a new snapshot. Backends that stay (same pool, name, address,
//! `tls` and `backup`) keep their record, so their health, counters and connections in flight carry on; new ones
//! start down until their health checks pass; those gone from the file drain, then leave.
//! Addresses found by DNS stay while their entry stays as it was (discovery keeps them up to
//! date); those of an entry removed or changed drain, and discovery looks the entry up anew.

use crate::backend::{self, Backend, Source, State};
use crate::config::Config;
use crate::shared::Snapshot;
use log::{info, warn};
use std::sync::Arc;

/// The snapshot `new` makes of `old`. What a running lb-mio cannot change (its listen address,
/// its worker count, the admin listener) is kept from the old config, with a warning.
pub fn apply(old: &Snapshot, mut new: Config) -> Result<Snapshot, String> {
    keep_restart_only_settings(&old.config, &mut new);
    let mut backends = old.backends.to_vec();
    let given = |b: &&Arc<Backend>| b.is_live() && b.source.is_given();
    for conf in &new.backends {
        match old.backends.iter().filter(given).find(|b| conf.is(b)) {
            Some(kept) => kept.set_weight(conf.weight),
            None => {
                let backend = Backend::new(conf, State::Down, Source::Config);
                backend::place(&mut backends, backend)?;
                info!(
                    "reload: backend {} at {} added; down until its health checks pass",
                    conf.name, conf.addr
                );
            }
        }
    }
    for found in old.backends.iter().filter(|b| b.is_live()) {
        let Some(entry) = found.source.dns_entry() else {
            continue;
        };
        let same = |list: &[crate::config::Discover]| {
            list.iter().find(|d| d.name == entry).map(|d| {
                (
                    (d.target.clone(), d.tls.clone(), d.pool.clone(), d.backup),
                    d.weight,
                )
            })
        };
        match (same(&old.config.discover), same(&new.discover)) {
            (Some((was, _)), Some((now, weight))) if was == now => found.set_weight(weight),
            _ => {
                info!(
                    "reload: backend {} at {}: its DNS entry {entry} is gone or changed: draining",
                    found.name, found.addr
                );
                found.drain(true);
            }
        }
    }
    for gone in old.backends.iter().filter(given) {
        if !new.backends.iter().any(|c| c.is(gone)) {
            info!(
                "reload: backend {} at {} is gone from the config: draining",
                gone.name, gone.addr
            );
            gone.drain(true);
        }
    }
    old.next(new, backends.into())
}

fn keep_restart_only_settings(old: &Config, new: &mut Config) {
    let lb = (&new.lb.listen, &new.lb.tls_listen, new.lb.workers);
    if lb != (&old.lb.listen, &old.lb.tls_listen, old.lb.workers) {
        warn!("reload: [lb] listen, tls_listen and workers take effect at the next start");
        new.lb.listen = old.lb.listen.clone();
        new.lb.tls_listen = old.lb.tls_listen.clone();
        new.lb.workers = old.lb.workers;
    }
    // rustls's configs are built at start: what they hold waits for the next.
    let built = |c: &Config| {
        let tls = &c.tls;
        let client = (tls.client_ca.clone(), tls.client_verify);
        (
            tls.session_cache,
            client,
            tls.backend_ca.clone(),
            tls.backend_verify,
        )
    };
    if built(new) != built(old) {
        warn!(
            "reload: [tls] session_cache, client_ca, client_verify, backend_ca and \
             backend_verify take effect at the next start"
        );
        let tls = &old.tls;
        new.tls.session_cache = tls.session_cache;
        (new.tls.client_ca, new.tls.client_verify) = (tls.client_ca.clone(), tls.client_verify);
        (new.tls.backend_ca, new.tls.backend_verify) = (tls.backend_ca.clone(), tls.backend_verify);
    }
    if new.admin != old.admin {
        warn!("reload: [admin] takes effect at the next start");
        new.admin = old.admin.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendConf;

    fn config(backends: &[(&str, &str, u32)]) -> Config {
        Config::with_backends(
            backends
                .iter()
                .map(|&(name, addr, weight)| BackendConf {
                    name: name.into(),
                    addr: addr.parse().unwrap(),
                    weight,
                    tls: None,
                    pool: "default".into(),
                    backup: false,
                })
                .collect(),
        )
    }

    fn snapshot(backends: &[(&str, &str, u32)]) -> Snapshot {
        let config = config(backends);
        let backends = backend::at_start(&config.backends, &Source::Config);
        Snapshot::new(config, backends).unwrap()
    }

    #[test]
    fn kept_backends_keep_their_record_and_take_the_new_weight() {
        let old = snapshot(&[("a", "127.0.0.1:1", 1), ("b", "127.0.0.1:2", 1)]);
        let new = apply(
            &old,
            config(&[("a", "127.0.0.1:1", 5), ("b", "127.0.0.1:2", 1)]),
        )
        .unwrap();
        assert!(Arc::ptr_eq(&old.backends[0], &new.backends[0]));
        assert_eq!(new.backends[0].weight(), 5);
        assert_eq!(new.backends.len(), 2);
    }

    #[test]
    fn new_backends_start_down_and_missing_ones_drain() {
        let old = snapshot(&[("a", "127.0.0.1:1", 1), ("b", "127.0.0.1:2", 1)]);
        let new = apply(
            &old,
            config(&[("a", "127.0.0.1:1", 1), ("c", "127.0.0.1:3", 1)]),
        )
        .unwrap();
        assert_eq!(
            new.backends.len(),
            3,
            "b keeps its slot while it drains: c takes a new one"
        );
        assert_eq!(new.backends[1].state(), State::Draining);
        assert!(new.backends[1].retire(), "b leaves once drained");
        assert_eq!(
            (new.backends[2].name.as_str(), new.backends[2].state()),
            ("c", State::Down)
        );
    }

    #[test]
    fn a_removed_backends_slot_is_reused() {
        let old = snapshot(&[("a", "127.0.0.1:1", 1), ("b", "127.0.0.1:2", 1)]);
        old.backends[0].drain(true);
        assert!(old.backends[0].transition(State::Draining, State::Removed));
        let new = apply(
            &old,
            config(&[("b", "127.0.0.1:2", 1), ("c", "127.0.0.1:3", 1)]),
        )
        .unwrap();
        assert_eq!(new.backends.len(), 2);
        assert_eq!(new.backends[0].name, "c");
        assert!(Arc::ptr_eq(&old.backends[1], &new.backends[1]));
    }

    #[test]
    fn discovered_backends_follow_their_entry() {
        use crate::config::{Discover, Target};
        let entry = |name: &str, host: &str, weight| Discover {
            name: name.into(),
            target: Target::Host(host.into(), 80),
            weight,
            tls: None,
            pool: "default".into(),
            backup: false,
        };
        let mut config = config(&[("a", "127.0.0.1:1", 1)]);
        config.discover = vec![entry("api", "api.test", 1), entry("web", "web.test", 1)];
        let found = |name: &str, entry: &str| {
            let conf = BackendConf {
                name: name.into(),
                addr: "10.0.0.1:80".parse().unwrap(),
                weight: 1,
                tls: None,
                pool: "default".into(),
                backup: false,
            };
            let entry = entry.to_string();
            Arc::new(Backend::new(&conf, State::Up, Source::Dns { entry }))
        };
        let mut backends = backend::at_start(&config.backends, &Source::Config).to_vec();
        backends.push(found("api-10.0.0.1-80", "api"));
        backends.push(found("web-10.0.0.1-80", "web"));
        let old = Snapshot::new(config.clone(), backends.into()).unwrap();
        // api keeps its host (new weight), web moves to another host.
        config.discover = vec![entry("api", "api.test", 4), entry("web", "www.test", 1)];
        let new = apply(&old, config).unwrap();
        assert_eq!(new.backends.len(), 3);
        assert_eq!(new.backends[1].state(), State::Up);
        assert_eq!(new.backends[1].weight(), 4);
        assert_eq!(new.backends[2].state(), State::Draining);
        assert!(new.backends[2].removing());
        assert_eq!(
            new.backends[0].state(),
            State::Up,
            "static backends as before"
        );
    }

    #[test]
    fn a_backend_or_entry_moved_to_another_pool_or_made_a_backup_is_replaced() {
        let parse = |text: &str| Config::parse(text, "t.ini").unwrap();
        let old = parse(
            "[backends]\na = 127.0.0.1:1\nb = 127.0.0.1:2\nweb = web.test:80\n\
             [pool.api.backends]\nc = 127.0.0.1:3\n[route.api]\npath = /api/\npool = api\n",
        );
        let found = BackendConf {
            name: "web-10.0.0.1-80".into(),
            addr: "10.0.0.1:80".parse().unwrap(),
            weight: 1,
            tls: None,
            pool: "default".into(),
            backup: false,
        };
        let mut backends = backend::at_start(&old.backends, &Source::Config).to_vec();
        let web = Source::Dns {
            entry: "web".into(),
        };
        backends.push(Arc::new(Backend::new(&found, State::Up, web)));
        let old = Snapshot::new(old, backends.into()).unwrap();
        // a becomes a backup; b and the entry web move to the pool api; c stays as it was.
        let new = parse(
            "[backends]\na = 127.0.0.1:1 backup\n\
             [pool.api.backends]\nb = 127.0.0.1:2\nc = 127.0.0.1:3\nweb = web.test:80\n\
             [route.api]\npath = /api/\npool = api\n",
        );
        let new = apply(&old, new).unwrap();
        let state = |at: usize| (new.backends[at].name.as_str(), new.backends[at].state());
        assert_eq!(state(0), ("a", State::Draining));
        assert_eq!(state(1), ("b", State::Draining));
        assert!(Arc::ptr_eq(&old.backends[2], &new.backends[2]), "c kept");
        assert_eq!(state(3), ("web-10.0.0.1-80", State::Draining));
        let added: Vec<_> = new.backends[4..]
            .iter()
            .map(|b| (b.name.as_str(), b.pool.as_str(), b.backup, b.state()))
            .collect();
        assert_eq!(
            added,
            [
                ("a", "default", true, State::Down),
                ("b", "api", false, State::Down)
            ]
        );
    }

    #[test]
    fn a_moved_backend_is_replaced() {
        let old = snapshot(&[("a", "127.0.0.1:1", 1)]);
        let new = apply(&old, config(&[("a", "127.0.0.1:9", 1)])).unwrap();
        assert_eq!(new.backends[0].state(), State::Draining);
        assert_eq!(new.backends[1].addr, "127.0.0.1:9".parse().unwrap());
    }

    #[test]
    fn listen_and_workers_wait_for_a_restart() {
        let old = snapshot(&[("a", "127.0.0.1:1", 1)]);
        let mut changed = config(&[("a", "127.0.0.1:1", 1)]);
        changed.lb.listen = vec!["127.0.0.1:1234".parse().unwrap()];
        changed.lb.workers = old.config.lb.workers + 1;
        changed.lb.retries = 7;
        let new = apply(&old, changed).unwrap();
        assert_eq!(new.config.lb.listen, old.config.lb.listen);
        assert_eq!(new.config.lb.workers, old.config.lb.workers);
        assert_eq!(new.config.lb.retries, 7, "everything else applies");
    }
}
