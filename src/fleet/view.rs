//! What etcd holds under the prefix, as lb-mio reads it: each key of the layout with its JSON
//! document, checked when it arrives, and `merge`, which lays the view over config.ini's
//! config. A value that does not read is refused with its key, and the key's last good value
//! stays.
//!
//! The layout under the prefix: `pools/NAME` (a pool document), `routes/NAME` (a route
//! document) and `backends/POOL/NAME` (one backend, as it registers itself).

use crate::backend::{self, BackendConf};
use crate::config::{Config, Origin, PoolConf, Stored};
use crate::document;
use crate::route::RouteConf;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// A key of the layout, without the prefix. Ordered so that a view lists pools, then routes
/// (in name order: the order they are tried), then backends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Pool(String),
    Route(String),
    Backend { pool: String, name: String },
}

impl Key {
    /// `backends/POOL/NAME`.
    pub fn backend(pool: &str, name: &str) -> Key {
        Key::Backend {
            pool: pool.to_string(),
            name: name.to_string(),
        }
    }

    /// The key that `rest` (a key without the prefix) names; an error says the layout.
    pub fn parse(rest: &str) -> Result<Key, String> {
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["pools", name] => Ok(Key::Pool(name.to_string())),
            ["routes", name] => Ok(Key::Route(name.to_string())),
            ["backends", pool, name] => Ok(Key::backend(pool, name)),
            _ => {
                Err("not a key lb-mio reads: pools/NAME, routes/NAME or backends/POOL/NAME".into())
            }
        }
    }
}

impl fmt::Display for Key {
    /// As it follows the prefix in etcd.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Key::Pool(name) => write!(f, "pools/{name}"),
            Key::Route(name) => write!(f, "routes/{name}"),
            Key::Backend { pool, name } => write!(f, "backends/{pool}/{name}"),
        }
    }
}

/// One key's value and the revision of its last change.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub value: Value,
    pub mod_revision: i64,
}

/// The keys under the prefix whose values read, as of `revision`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub revision: i64,
    pub entries: BTreeMap<Key, Entry>,
}

impl View {
    /// Takes `value` for `key` when it reads as the document the key holds (pool documents
    /// over `file`'s global settings); else the error, and the key keeps its last good value.
    pub fn put(
        &mut self,
        key: Key,
        value: &[u8],
        mod_revision: i64,
        file: &Config,
    ) -> Result<(), String> {
        let value: Value = serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
        check(&key, &value, file)?;
        self.entries.insert(
            key,
            Entry {
                value,
                mod_revision,
            },
        );
        Ok(())
    }

    pub fn remove(&mut self, key: &Key) {
        self.entries.remove(key);
    }

    /// The mod_revision of `key`, when the view holds it.
    pub fn revision_of(&self, key: &Key) -> Option<i64> {
        self.entries.get(key).map(|e| e.mod_revision)
    }
}

/// Whether `value` reads as what `key` holds (pool documents over `file`'s global settings).
pub fn check(key: &Key, value: &Value, file: &Config) -> Result<(), String> {
    match key {
        Key::Pool(name) => document::pool(value, name, file).map(drop),
        Key::Route(name) => document::route(value, name).map(drop),
        Key::Backend { pool, name } => registered(value, pool, name).map(drop),
    }
}

/// A backend under `backends/POOL/NAME`: its document, whose `name` and `pool`, when given,
/// are the key's.
pub fn registered(value: &Value, pool: &str, name: &str) -> Result<BackendConf, String> {
    crate::config::check_pool_name(pool)?;
    backend::check_name(name)?;
    let conf = document::backend_of(value, pool)?;
    match conf.name.as_str() {
        "" => Ok(BackendConf {
            name: name.to_string(),
            ..conf
        }),
        given if given == name => Ok(conf),
        given => Err(format!("\"name\" is {given:?}, the key names {name:?}")),
    }
}

/// `file` with `view` laid over it: a pool document replaces the file's pool of its name
/// (settings and listed backends) or adds one; a route replaces the file's route of its name
/// in place, or goes after them in name order; backends go to `stored`. What cannot join (a
/// route naming a pool that is not there, a backend of such a pool, a backend name another
/// source uses) is left out, with a line in `notes`.
pub fn merge(file: &Config, view: &View, notes: &mut Vec<String>) -> Config {
    let mut config = file.clone();
    let mut listed = Vec::new();
    for (key, entry) in &view.entries {
        let Key::Pool(name) = key else { continue };
        // Checked when it arrived; only new global settings can refuse it now.
        let Ok(doc) = document::pool(&entry.value, name, file) else {
            notes.push(format!("{key}: left out: its settings no longer read"));
            continue;
        };
        let conf = PoolConf {
            origin: Origin::Etcd,
            ..doc.conf
        };
        match config.pool(name) {
            Some(at) => config.pools[at] = conf,
            None => config.pools.push(conf),
        }
        config.backends.retain(|b| b.pool != *name);
        listed.extend(doc.backends.into_iter().map(|conf| (key, conf)));
    }
    let mut names: HashSet<String> = config.backends.iter().map(|b| b.name.clone()).collect();
    let mut stored = Stored::default();
    for (key, conf) in listed {
        claim(&mut names, conf, key, &mut stored.listed, notes);
    }
    for (key, entry) in &view.entries {
        let Key::Backend { pool, name } = key else {
            continue;
        };
        match registered(&entry.value, pool, name) {
            Ok(_) if config.pool(pool).is_none() => {
                notes.push(format!("{key}: left out: there is no pool {pool}"))
            }
            Ok(conf) => claim(&mut names, conf, key, &mut stored.registered, notes),
            Err(e) => notes.push(format!("{key}: left out: {e}")),
        }
    }
    // By name, so that thousands of routes in etcd merge in linear time.
    let mut file_routes: HashMap<String, usize> = (config.routes.iter().enumerate())
        .map(|(at, r)| (r.name.clone(), at))
        .collect();
    for (key, entry) in &view.entries {
        let Key::Route(name) = key else { continue };
        match route(&entry.value, name, &config) {
            Ok(conf) => match file_routes.remove(name) {
                Some(at) => config.routes[at] = conf,
                None => config.routes.push(conf),
            },
            Err(e) => notes.push(format!("{key}: left out: {e}")),
        }
    }
    config.stored = stored;
    config
}

/// Adds `conf` to `into` unless another backend has its name.
fn claim(
    names: &mut HashSet<String>,
    conf: BackendConf,
    key: &Key,
    into: &mut Vec<BackendConf>,
    notes: &mut Vec<String>,
) {
    match names.insert(conf.name.clone()) {
        true => into.push(conf),
        false => notes.push(format!(
            "{key}: backend {} left out: another backend has its name",
            conf.name
        )),
    }
}

/// The route document `value` of route `name`, when it fits `config` and its pools are there.
pub fn route(value: &Value, name: &str, config: &Config) -> Result<RouteConf, String> {
    let conf = document::route(value, name)?;
    conf.fits(config)
        .map_err(|(k, why)| format!("{k}: {why}"))?;
    if let Some(missing) = conf.pool_names().find(|p| config.pool(p).is_none()) {
        return Err(format!("there is no pool {missing}"));
    }
    Ok(RouteConf {
        origin: Origin::Etcd,
        ..conf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[backends]\na = 127.0.0.1:1\n[pool.api]\nretries = 1\n\
                        [pool.api.backends]\nb = 127.0.0.1:2\n[route.r1]\npath = /api/\npool = api\n";

    fn file() -> Config {
        Config::parse(FILE, "config.ini").unwrap()
    }

    fn view(entries: &[(Key, &str)]) -> View {
        let mut view = View::default();
        for (key, value) in entries {
            view.put(key.clone(), value.as_bytes(), 1, &file()).unwrap();
        }
        view
    }

    fn names(confs: &[BackendConf]) -> Vec<(&str, &str)> {
        confs
            .iter()
            .map(|c| (c.pool.as_str(), c.name.as_str()))
            .collect()
    }

    #[test]
    fn an_etcd_pool_replaces_the_files_with_its_backends_and_routes_follow_in_name_order() {
        let view = view(&[
            (
                Key::Pool("api".into()),
                r#"{"version": 1, "settings": {"retries": 3}, "backends": [{"name": "c", "address": "127.0.0.1:3"}]}"#,
            ),
            (Key::Pool("new".into()), r#"{"version": 1}"#),
            (Key::backend("new", "d"), r#"{"address": "127.0.0.1:4"}"#),
            (
                Key::Route("r2".into()),
                r#"{"version": 1, "keys": [["path", "/new/"], ["pool", "new"]]}"#,
            ),
            (
                Key::Route("r1".into()),
                r#"{"version": 1, "keys": [["path", "/v2/"], ["pool", "api"]]}"#,
            ),
            (
                Key::Route("r0".into()),
                r#"{"version": 1, "keys": [["path", "/x/"], ["pool", "default"]]}"#,
            ),
        ]);
        let mut notes = Vec::new();
        let merged = merge(&file(), &view, &mut notes);
        assert!(notes.is_empty(), "{notes:?}");
        let api = &merged.pools[merged.pool("api").unwrap()];
        assert_eq!((api.retries, api.origin), (3, Origin::Etcd));
        assert_eq!(
            names(&merged.backends),
            [("default", "a")],
            "b went with the file's api"
        );
        assert_eq!(names(&merged.stored.listed), [("api", "c")]);
        assert_eq!(names(&merged.stored.registered), [("new", "d")]);
        let routes: Vec<(&str, Origin)> = (merged.routes.iter())
            .map(|r| (r.name.as_str(), r.origin))
            .collect();
        assert_eq!(
            routes,
            [
                ("r1", Origin::Etcd),
                ("r0", Origin::Etcd),
                ("r2", Origin::Etcd)
            ],
            "r1 in the file's place, the others after it in name order"
        );
    }

    #[test]
    fn what_cannot_join_is_left_out_with_its_key_and_the_rest_applies() {
        let view = view(&[
            (Key::backend("gone", "x"), r#"{"address": "127.0.0.1:5"}"#),
            (
                Key::backend("default", "a"),
                r#"{"address": "127.0.0.1:6"}"#,
            ),
            (
                Key::backend("default", "e"),
                r#"{"address": "127.0.0.1:7"}"#,
            ),
            (
                Key::Route("rx".into()),
                r#"{"version": 1, "keys": [["path", "/x/"], ["pool", "gone"]]}"#,
            ),
        ]);
        let mut notes = Vec::new();
        let merged = merge(&file(), &view, &mut notes);
        assert_eq!(
            notes,
            [
                "backends/default/a: backend a left out: another backend has its name",
                "backends/gone/x: left out: there is no pool gone",
                "routes/rx: left out: there is no pool gone",
            ]
        );
        assert_eq!(names(&merged.stored.registered), [("default", "e")]);
        assert_eq!(merged.routes.len(), 1, "the file's route alone");
    }

    #[test]
    fn a_value_that_does_not_read_is_refused_and_the_last_good_one_stays() {
        let mut view = view(&[(Key::Pool("p".into()), r#"{"version": 1}"#)]);
        let before = view.clone();
        let key = Key::Pool("p".into());
        let bad = [
            (&b"{"[..], "not JSON"),
            (br#"{"version": 2}"#, "version 2 is not known"),
            (
                br#"{"version": 1, "colour": "red"}"#,
                "unknown field \"colour\"",
            ),
        ];
        for (value, want) in bad {
            let err = view.put(key.clone(), value, 9, &file()).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        let named = Key::backend("default", "z");
        let err = (view.put(
            named,
            br#"{"name": "y", "address": "127.0.0.1:1"}"#,
            9,
            &file(),
        ))
        .unwrap_err();
        assert!(err.contains("the key names \"z\""), "{err}");
        assert_eq!(view, before);
        assert_eq!(
            Key::parse("pools/a/b").unwrap_err().split(':').next(),
            Some("not a key lb-mio reads")
        );
        assert_eq!(
            Key::parse("backends/p/n"),
            Ok(Key::Backend {
                pool: "p".into(),
                name: "n".into()
            })
        );
    }

    #[test]
    fn a_registered_backend_with_a_field_it_does_not_know_is_refused_and_the_last_value_stays() {
        let key = Key::Backend {
            pool: "default".into(),
            name: "e".into(),
        };
        let mut view = view(&[(key.clone(), r#"{"address": "127.0.0.1:7", "weight": 2}"#)]);
        let misspelt = br#"{"address": "127.0.0.1:8", "wieght": 5}"#;
        assert_eq!(
            view.put(key.clone(), misspelt, 2, &file()),
            Err("unknown field \"wieght\"".into())
        );
        assert_eq!(
            view.put(key.clone(), b"[1]", 3, &file()),
            Err("a backend is a JSON object".into())
        );
        assert_eq!(view.revision_of(&key), Some(1), "the last good value stays");
        let every = br#"{"address": "127.0.0.1:8", "name": "e", "weight": 3, "tls": null, "pool": "default", "backup": false}"#;
        assert_eq!(view.put(key.clone(), every, 4, &file()), Ok(()));
    }
}
