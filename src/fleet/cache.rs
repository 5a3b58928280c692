//! `[etcd] cache_file`: the last view of etcd, written after each change (to a temp file then
//! renamed over the cache, so a crash never leaves half a file), and read at start when etcd
//! cannot be reached, so a restart in an outage serves what the fleet served.

use super::view::{Key, View};
use crate::config::Config;
use serde_json::{json, Map, Value};
use std::fs;
use std::io;
use std::path::Path;

/// Writes `view` (of the keys under `prefix`).
pub fn save(path: &Path, prefix: &str, view: &View) -> io::Result<()> {
    let keys: Map<String, Value> = (view.entries.iter())
        .map(|(key, entry)| {
            let saved = json!({ "value": entry.value, "mod_revision": entry.mod_revision });
            (key.to_string(), saved)
        })
        .collect();
    let text = json!({ "prefix": prefix, "revision": view.revision, "keys": keys }).to_string();
    let temp = path.with_extension("tmp");
    fs::write(&temp, text + "\n")?;
    fs::rename(&temp, path)
}

/// The view the cache holds for `prefix`; `Ok(None)` when there is no cache yet. Its values
/// are read again as the keys' documents (over `file`); one that does not read is an error,
/// as is a cache of another prefix.
pub fn load(path: &Path, prefix: &str, file: &Config) -> Result<Option<View>, String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    let cache: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    if cache["prefix"].as_str() != Some(prefix) {
        return Err(format!("it holds {} rather than {prefix}", cache["prefix"]));
    }
    let revision = cache["revision"].as_i64().ok_or("no \"revision\"")?;
    let keys = cache["keys"].as_object().ok_or("no \"keys\" object")?;
    let mut view = View {
        revision,
        ..View::default()
    };
    for (name, saved) in keys {
        let key = Key::parse(name).map_err(|e| format!("{name}: {e}"))?;
        let value = saved["value"].to_string();
        let mod_revision = saved["mod_revision"].as_i64().unwrap_or(0);
        (view.put(key, value.as_bytes(), mod_revision, file))
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(Some(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_view_loads_back_and_another_prefix_is_refused() {
        let file = Config::parse("[backends]\na = 127.0.0.1:1\n", "t.ini").unwrap();
        let mut view = View {
            revision: 42,
            ..View::default()
        };
        let pool = br#"{"version": 1, "backends": [{"name": "b", "address": "127.0.0.1:2"}]}"#;
        view.put(Key::Pool("api".into()), pool, 40, &file).unwrap();
        let backend = br#"{"address": "127.0.0.1:3", "weight": 2}"#;
        let registered = Key::Backend {
            pool: "api".into(),
            name: "c".into(),
        };
        view.put(registered, backend, 41, &file).unwrap();
        let path = std::env::temp_dir().join(format!("lb-mio-cache-{}.json", std::process::id()));
        save(&path, "/lb-mio/", &view).unwrap();
        assert_eq!(load(&path, "/lb-mio/", &file).unwrap(), Some(view));
        let other = load(&path, "/other/", &file).unwrap_err();
        assert!(other.contains("/other/"), "{other}");
        fs::write(&path, "{\"prefix\": \"/lb-mio/\", \"revision\": 1, \"keys\": {\"pools/x\": {\"value\": {\"version\": 9}}}}").unwrap();
        let bad = load(&path, "/lb-mio/", &file).unwrap_err();
        assert!(bad.starts_with("pools/x: version 9"), "{bad}");
        fs::remove_file(&path).unwrap();
    }
}
