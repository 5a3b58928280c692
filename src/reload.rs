//! SIGHUP: a new config.ini becomes a new snapshot. Backends that stay (same pool, name, address,
//! `tls` and `backup`) keep their record, so their health, counters and connections in flight carry on; new ones
//! start down until their health checks pass; those gone from the file drain, then leave.
//! Addresses found by DNS stay while their entry stays as it was (discovery keeps them up to
//! date); those of an entry removed or changed drain, and discovery looks the entry up anew.

use crate::backend::{self, Backend, BackendConf, Source, State};
use crate::config::{Config, Origin};
use crate::shared::Snapshot;
use log::{info, warn};
use std::collections::HashMap;
use std::sync::Arc;

/// The snapshot `new` makes of `old`. What a running lb-mio cannot change (its listen address,
/// its worker count, the admin listener) is kept from the old config, with a warning.
pub fn apply(old: &Snapshot, mut new: Config) -> Result<Snapshot, String> {
    keep_restart_only_settings(&old.config, &mut new);
    warn_of_api_changes(&old.config, &new);
    let up = UpBefore::of(&old.backends);
    let gone = |b: &Backend| let_go(b, &new, "reload", " is gone from the config");
    let mut backends = replace_given(
        &old.backends,
        &new.backends,
        |b| b.source.is_local(),
        (&Source::Config, &up),
        "reload",
        gone,
    )?;
    // etcd's, listed in pool documents and registered under keys of their own.
    let stored = [(&new.stored.listed, false), (&new.stored.registered, true)];
    for (wanted, registered) in stored {
        let source = Source::Etcd { registered };
        let gone = |b: &Backend| let_go(b, &new, "etcd", " is gone from etcd");
        let mine = |b: &Backend| b.source == source;
        backends = replace_given(&backends, wanted, mine, (&source, &up), "etcd", gone)?;
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
            _ => let_go(
                found,
                &new,
                "reload",
                &format!(": its DNS entry {entry} is gone or changed"),
            ),
        }
    }
    old.next(new, backends.into())
}

/// The backend set with the live given backends that `mine` selects replaced by `wanted`: one
/// that stays (same name, address, TLS, pool and role) keeps its record (health, counters,
/// requests in flight) and takes the new weight; a new one starts down until its health checks
/// pass; one not wanted goes to `gone` (which drains it, now or later). A reload does this to
/// every given backend, the admin API to one pool's. New backends come from `source`; `by`
/// says who changed the set, in the log. Nothing changes when a new backend finds no free slot.
pub fn replace_given(
    old: &[Arc<Backend>],
    wanted: &[BackendConf],
    mine: impl Fn(&Backend) -> bool,
    (source, up): (&Source, &UpBefore),
    by: &str,
    gone: impl Fn(&Backend),
) -> Result<Vec<Arc<Backend>>, String> {
    // By name, so that a change over thousands of backends (etcd's) stays linear.
    let mut by_name: HashMap<&str, Vec<&Arc<Backend>>> = HashMap::new();
    for b in old.iter().filter(|b| b.is_live() && mine(b)) {
        by_name.entry(b.name.as_str()).or_default().push(b);
    }
    let mut backends = old.to_vec();
    let mut kept = Vec::new();
    for conf in wanted {
        let same = by_name
            .get(conf.name.as_str())
            .and_then(|list| list.iter().find(|b| conf.is(b)));
        match same {
            Some(b) => kept.push((*b, conf.weight)),
            None if up.had(conf) => {
                let backend = Backend::new(conf, State::Up, source.clone());
                backend::place(&mut backends, backend)?;
                info!(
                    "{by}: backend {} at {} now comes from {}; up, as it was",
                    conf.name,
                    conf.addr,
                    source.name()
                );
            }
            None => {
                let backend = Backend::new(conf, State::Down, source.clone());
                backend::place(&mut backends, backend)?;
                info!(
                    "{by}: backend {} at {} added; down until its health checks pass",
                    conf.name, conf.addr
                );
            }
        }
    }
    for (b, weight) in &kept {
        b.set_weight(*weight);
    }
    let wanted: HashMap<&str, Vec<&BackendConf>> =
        wanted.iter().fold(HashMap::new(), |mut by, c| {
            by.entry(c.name.as_str()).or_default().push(c);
            by
        });
    for left in old.iter().filter(|b| b.is_live() && mine(b)) {
        let same = wanted.get(left.name.as_str());
        if !same.is_some_and(|list| list.iter().any(|c| c.is(left))) {
            gone(left);
        }
    }
    Ok(backends)
}

/// The backends that were up before a change, by name. A backend that moves from one source
/// to another in the change (config.ini's pool taken over by etcd's document, a backend from
/// its pool's document to a key of its own) gets a new record, which starts up rather than
/// down: it served a moment ago, and starting down would leave its pool without a backend
/// until the health checks pass.
pub struct UpBefore(HashMap<String, Vec<Arc<Backend>>>);

impl UpBefore {
    pub fn of(backends: &[Arc<Backend>]) -> UpBefore {
        let mut up: HashMap<String, Vec<Arc<Backend>>> = HashMap::new();
        for b in backends.iter().filter(|b| b.is_live() && b.is_up()) {
            up.entry(b.name.clone()).or_default().push(Arc::clone(b));
        }
        UpBefore(up)
    }

    /// No backend: every new one starts down.
    pub fn none() -> UpBefore {
        UpBefore(HashMap::new())
    }

    fn had(&self, conf: &BackendConf) -> bool {
        (self.0.get(&conf.name)).is_some_and(|list| list.iter().any(|b| conf.is(b)))
    }
}

/// Pools and routes the admin API made or changed last only until a reload: says which ones
/// the file drops, and which it puts back as the file has them.
fn warn_of_api_changes(old: &Config, new: &Config) {
    let api = |origin: Origin| origin == Origin::Api;
    let pools = (old.pools.iter().filter(|p| api(p.origin)))
        .map(|p| (&p.name, new.pool(&p.name).is_some()));
    let routes = (old.routes.iter().filter(|r| api(r.origin)))
        .map(|r| (&r.name, new.routes.iter().any(|n| n.name == r.name)));
    for (what, made) in [
        ("pool", pools.collect::<Vec<_>>()),
        ("route", routes.collect()),
    ] {
        for (name, in_file) in made {
            match in_file {
                true => warn!("reload: {what} {name} set through the admin API is config.ini's again"),
                false => warn!("reload: {what} {name} made through the admin API is gone: config.ini does not have it"),
            }
        }
    }
}

/// A backend the new config no longer has (`why`, after its address, says so; `by` says who
/// changed it) leaves once drained: at once, or, when its whole
/// pool went, by the health thread once no worker routes to that pool any more (draining it
/// now would answer 503 to requests that workers still route by the old snapshot).
fn let_go(backend: &Backend, new: &Config, by: &str, why: &str) {
    let (name, addr) = (&backend.name, backend.addr);
    if new.pool(&backend.pool).is_none() {
        info!(
            "{by}: backend {name} at {addr}{why}, with its pool {}",
            backend.pool
        );
        return;
    }
    info!("{by}: backend {name} at {addr}{why}: draining");
    backend.drain(true);
}

/// Keeps in `new` what a running lb-mio cannot change from `old`, with a warning for each.
pub fn keep_restart_only_settings(old: &Config, new: &mut Config) {
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
    // The watch and its client are made at start.
    if new.etcd != old.etcd {
        warn!("reload: [etcd] takes effect at the next start");
        new.etcd = old.etcd.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_backend_whose_pool_is_gone_is_left_for_the_health_thread_to_drain() {
        let text = |extra: &str| {
            format!(
                "[backends]\na = 127.0.0.1:1\n{extra}[route.r]\nhost = x.test\npool = default\n"
            )
        };
        let with_b =
            text("[pool.b.backends]\nb = 127.0.0.1:2\n[route.rb]\nhost = b.test\npool = b\n");
        let old = Config::parse(&with_b, "old.ini").unwrap();
        let backends = backend::at_start(&old.backends, &Source::Config);
        let old = Snapshot::new(old, backends).unwrap();
        let new = apply(&old, Config::parse(&text(""), "new.ini").unwrap()).unwrap();
        let b = new.backends.iter().find(|b| b.name == "b").unwrap();
        assert_eq!(
            b.state(),
            State::Up,
            "workers on the old snapshot may still route to b"
        );
        assert_eq!(new.pool("b"), None, "but the new snapshot has no pool b");
        assert!(new.pools.iter().all(|p| !p.primary.members.contains(&1)));
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
    fn etcds_backends_follow_the_store_apart_from_the_files() {
        let conf = |name: &str, port: u16| BackendConf {
            name: name.into(),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            weight: 1,
            tls: None,
            pool: "default".into(),
            backup: false,
        };
        let mut file = config(&[("a", "127.0.0.1:1", 1)]);
        file.stored.registered = vec![conf("r1", 2), conf("r2", 3)];
        let old = apply(&snapshot(&[("a", "127.0.0.1:1", 1)]), file.clone()).unwrap();
        let registered = Source::Etcd { registered: true };
        assert_eq!(old.backends[1].source, registered);
        // r1 goes, r3 registers, l1 comes in a pool document.
        file.stored.registered = vec![conf("r2", 3), conf("r3", 4)];
        file.stored.listed = vec![conf("l1", 5)];
        let new = apply(&old, file).unwrap();
        let state = |name: &str| {
            let b = new.backends.iter().find(|b| b.name == name).unwrap();
            (b.state(), b.source.clone())
        };
        assert_eq!(state("a"), (State::Up, Source::Config), "the file's stays");
        assert_eq!(state("r1"), (State::Draining, registered.clone()));
        assert!(Arc::ptr_eq(&old.backends[2], &new.backends[2]), "r2 kept");
        assert_eq!(state("r3"), (State::Down, registered));
        assert_eq!(
            state("l1"),
            (State::Down, Source::Etcd { registered: false })
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
