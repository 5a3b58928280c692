//! The optional state file: backend changes made through the admin API survive a restart.
//! After each change the live backends are written to a temp file that is then renamed over
//! the state file, so a crash never leaves half a file. The file names the pools it covers
//! (config.ini's, when it was written); at start it stands in for those pools' backends.

use crate::backend::{Backend, BackendConf};
use crate::config::{Origin, DEFAULT_POOL};
use crate::document;
use crate::shared::Snapshot;
use log::warn;
use serde_json::{json, Value};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Saves the snapshot's backends when a state file is configured; a failure is logged (the
/// change itself stands). Only the backends of config.ini's pools: a pool the admin API made
/// lasts until the next restart, and its backends with it.
pub fn persist(snap: &Snapshot) {
    if let Some(path) = &snap.config.admin.state_file {
        let of_file = snap
            .pools
            .iter()
            .map(|p| &p.conf)
            .filter(|p| p.origin == Origin::File);
        let pools: Vec<&str> = of_file.map(|p| p.name.as_str()).collect();
        if let Err(e) = save(path, &snap.backends, &pools) {
            warn!("state file {}: {e}", path.display());
        }
    }
}

/// What a state file holds.
#[derive(Debug, PartialEq)]
pub struct Saved {
    pub backends: Vec<BackendConf>,
    /// The pools it stands in for, its backends or not (a pool emptied through the admin API
    /// stays empty).
    pub pools: Vec<String>,
}

/// Writes the live backends of `pools` given as addresses, not those a lookup found (their
/// entries stay in the config, and a restart looks them up again), and the pools' names.
pub fn save(path: &Path, backends: &[Arc<Backend>], pools: &[&str]) -> io::Result<()> {
    let kept: Vec<Value> = backends
        .iter()
        .filter(|b| b.is_live() && b.source.is_local() && pools.contains(&b.pool.as_str()))
        .map(|b| {
            let mut saved = document::backend_json(b);
            saved["pool"] = json!(b.pool);
            saved
        })
        .collect();
    let text = json!({ "pools": pools, "backends": kept }).to_string() + "\n";
    let temp = path.with_extension("tmp");
    fs::write(&temp, text)?;
    fs::rename(&temp, path)
}

/// What a state file holds; `Ok(None)` when there is no state file yet.
pub fn load(path: &Path) -> Result<Option<Saved>, String> {
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
    // `"pools"`, `"pool"` and `"backup"` came with pools: a file from before has none of
    // them, and stood in for `[backends]`, the pool `default`.
    let backends = list
        .iter()
        .map(|b| match document::backend(b, DEFAULT_POOL) {
            Ok(conf) if conf.name.is_empty() => Err(bad("a backend without \"name\"")),
            Ok(conf) => Ok(conf),
            Err(e) => Err(bad(&e)),
        })
        .collect::<Result<Vec<_>, String>>()?;
    let pools = match value.get("pools") {
        None => vec![DEFAULT_POOL.to_string()],
        Some(pools) => (pools
            .as_array()
            .ok_or_else(|| bad("\"pools\" is not a list"))?)
        .iter()
        .map(|p| {
            p.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("a pool name that is not a string"))
        })
        .collect::<Result<_, _>>()?,
    };
    Ok(Some(Saved { backends, pools }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{self, Source, State};

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
        save(&path, &backends, &[DEFAULT_POOL]).unwrap();
        let loaded = load(&path).unwrap().unwrap().backends;
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
