//! The optional state file: backend changes made through the admin API survive a restart.
//! After each change the live backends are written to a temp file that is then renamed over
//! the state file, so a crash never leaves half a file; at start, a state file that exists
//! replaces the config's `[backends]`.

use crate::backend::{self, Backend, BackendConf};
use crate::shared::Snapshot;
use log::warn;
use serde_json::{json, Value};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Saves the snapshot's backends when a state file is configured; a failure is logged (the
/// change itself stands).
pub fn persist(snap: &Snapshot) {
    if let Some(path) = &snap.config.admin.state_file {
        if let Err(e) = save(path, &snap.backends) {
            warn!("state file {}: {e}", path.display());
        }
    }
}

/// Writes the live backends given as addresses, not those a lookup found: their entries stay
/// in the config, and a restart looks them up again.
pub fn save(path: &Path, backends: &[Arc<Backend>]) -> io::Result<()> {
    let kept: Vec<Value> = backends
        .iter()
        .filter(|b| b.is_live() && b.source.is_given())
        .map(|b| {
            json!({ "name": b.name, "address": b.addr.to_string(), "weight": b.weight(), "tls": b.tls, "pool": b.pool, "backup": b.backup })
        })
        .collect();
    let text = json!({ "backends": kept }).to_string() + "\n";
    let temp = path.with_extension("tmp");
    fs::write(&temp, text)?;
    fs::rename(&temp, path)
}

/// The backends a state file holds; `Ok(None)` when there is no state file yet.
pub fn load(path: &Path) -> Result<Option<Vec<BackendConf>>, String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let bad = |why: &str| format!("{}: {why}", path.display());
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let list = value
        .get("backends")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"backends\" list"))?;
    list.iter()
        .map(|b| {
            let field = |key: &str| {
                b.get(key)
                    .ok_or_else(|| bad(&format!("a backend without {key:?}")))
            };
            let name = field("name")?.as_str().ok_or_else(|| bad("bad name"))?;
            backend::check_name(name).map_err(|e| bad(&e))?;
            let addr = field("address")?
                .as_str()
                .ok_or_else(|| bad("bad address"))?;
            let addr = backend::parse_addr(addr).map_err(|e| bad(&e))?;
            let weight = field("weight")?
                .as_u64()
                .and_then(backend::check_weight)
                .ok_or_else(|| bad("bad weight"))?;
            // `"tls"`: the name a TLS backend's certificate must have (absent: plain HTTP).
            let tls = match b.get("tls") {
                None | Some(Value::Null) => None,
                Some(Value::String(name)) => {
                    Some(crate::config::parse_server_name(name).map_err(|e| bad(&e))?)
                }
                Some(_) => return Err(bad("bad tls")),
            };
            // `"pool"` and `"backup"` came with pools: a file from before has neither.
            let pool = match b.get("pool") {
                None => crate::config::DEFAULT_POOL,
                Some(p) => p.as_str().ok_or_else(|| bad("bad pool"))?,
            };
            let backup = match b.get("backup") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| bad("bad backup"))?,
            };
            Ok(BackendConf {
                name: name.to_string(),
                addr,
                weight,
                tls,
                pool: pool.to_string(),
                backup,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Source, State};

    #[test]
    fn saved_backends_load_back_without_the_removed_ones() {
        let dir = std::env::temp_dir().join(format!("lb-mio-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let confs: Vec<BackendConf> = ["127.0.0.1:1", "127.0.0.1:2", "[::1]:3"]
            .iter()
            .enumerate()
            .map(|(i, a)| BackendConf {
                name: format!("s{i}"),
                addr: a.parse().unwrap(),
                weight: i as u32 + 1,
                tls: None,
                pool: "default".into(),
                backup: false,
            })
            .collect();
        let mut backends = backend::at_start(&confs, &Source::StateFile).to_vec();
        backends[1].drain(true);
        let found = BackendConf {
            name: "api-10.0.0.1-80".into(),
            addr: "10.0.0.1:80".parse().unwrap(),
            weight: 1,
            tls: None,
            pool: "default".into(),
            backup: false,
        };
        let api = Source::Dns {
            entry: "api".into(),
        };
        backends.push(Arc::new(Backend::new(&found, State::Up, api)));
        save(&path, &backends).unwrap();
        let loaded = load(&path).unwrap().unwrap();
        assert_eq!(loaded, [confs[0].clone(), confs[2].clone()]);
        assert!(
            !path.with_extension("tmp").exists(),
            "the temp file was renamed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_state_file_is_not_an_error() {
        assert_eq!(load(Path::new("/nonexistent/lb-mio/state.json")), Ok(None));
    }

    #[test]
    fn a_damaged_state_file_is_an_error_naming_it() {
        let path =
            std::env::temp_dir().join(format!("lb-mio-bad-state-{}.json", std::process::id()));
        fs::write(&path, "{\"backends\": [{\"name\": \"a\"}]}").unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("address"),
            "{err}"
        );
        fs::remove_file(&path).unwrap();
    }
}
