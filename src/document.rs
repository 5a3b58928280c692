//! The JSON documents that define pools and routes, defined once: the admin API takes and shows
//! them, and a store of them (etcd, later) keeps the same text. Each carries `"version": 1`, so
//! a reader meets a newer shape with a clear error rather than a guess.
//!
//! A pool: `{"version": 1, "name": "api", "settings": {"strategy": "least_conn", "retries": 2},
//! "backends": [{"name": "api1", "address": "10.0.1.1:9000", "weight": 2, "tls": null,
//! "backup": false}]}`. `settings` holds a `[pool.NAME]` section's keys (strings, or numbers for
//! the keys that take one), read by the same code as config.ini (`PoolConf::build`).
//!
//! A route: `{"version": 1, "name": "api", "keys": [["host", "api.example.com"], ["pool",
//! "api"]]}`: a `[route.NAME]` section's lines in order, read by `route::parse_key` like the file's.
//!
//! Both are shown from the pairs kept in `PoolConf::keys` and `RouteConf::keys`, so a pool or a
//! route from config.ini reads back as the document that would define it.

use crate::backend::{self, Backend, BackendConf, WEIGHTS};
use crate::config::{self, Config, PoolConf};
use crate::route::RouteConf;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The document version this lb-mio reads and writes.
pub const VERSION: u64 = 1;

/// A pool document, read: the pool and the backends it lists (all in that pool).
#[derive(Debug)]
pub struct PoolDocument {
    pub conf: PoolConf,
    pub backends: Vec<BackendConf>,
}

/// Reads the document of pool `name`, its settings over the global ones of `globals`. Every
/// backend needs a name, unique within the document.
pub fn pool(value: &Value, name: &str, globals: &Config) -> Result<PoolDocument, String> {
    let fields = head(value, name, &["settings", "backends"])?;
    config::check_pool_name(name)?;
    let settings = match fields.get("settings") {
        None => Vec::new(),
        Some(Value::Object(map)) => (map.iter())
            .map(|(key, v)| Ok((key.clone(), setting(key, v)?)))
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("\"settings\" must be an object of pool keys".into()),
    };
    let conf = PoolConf::build(name, settings, globals).map_err(|e| format!("settings: {e}"))?;
    let list = match fields.get("backends") {
        None => &Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("\"backends\" must be a list".into()),
    };
    let mut backends: Vec<BackendConf> = Vec::with_capacity(list.len());
    for (at, b) in list.iter().enumerate() {
        let conf = backend_of(b, name).map_err(|e| format!("backends[{at}]: {e}"))?;
        if conf.name.is_empty() {
            return Err(format!("backends[{at}]: \"name\" is required"));
        }
        if backends.iter().any(|seen| seen.name == conf.name) {
            return Err(format!("backends[{at}]: {:?} is listed twice", conf.name));
        }
        backends.push(conf);
    }
    Ok(PoolDocument { conf, backends })
}

/// A setting's value as config.ini would spell it.
fn setting(key: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(text) => Ok(text.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("settings: {key}: expected a string or a number")),
    }
}

/// The document of pool `conf` with `backends` (the pool's backends given by address; those a
/// DNS lookup found follow their `[backends]` entry, which no document holds).
pub fn pool_json<'a>(conf: &PoolConf, backends: impl Iterator<Item = &'a Arc<Backend>>) -> Value {
    let settings: Map<String, Value> = (conf.keys.iter())
        .map(|(key, v)| {
            let number = config::pool_key_is_number(key).then(|| v.parse::<u64>().ok());
            let shown = number.flatten().map_or_else(|| json!(v), |n| json!(n));
            (key.clone(), shown)
        })
        .collect();
    let backends: Vec<Value> = backends.map(|b| backend_json(b)).collect();
    json!({ "version": VERSION, "name": conf.name, "settings": settings, "backends": backends })
}

/// Reads the document of route `name`.
pub fn route(value: &Value, name: &str) -> Result<RouteConf, String> {
    let fields = head(value, name, &["keys"])?;
    let bad = || "\"keys\" must be a list of [key, value] pairs of strings".to_string();
    let pairs = fields
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    let keys: Vec<(String, String)> = (pairs.iter())
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(key), Value::String(v)]) => Ok((key.clone(), v.clone())),
            _ => Err(bad()),
        })
        .collect::<Result<_, _>>()?;
    RouteConf::from_keys(name, &keys).map_err(|e| format!("keys: {e}"))
}

pub fn route_json(conf: &RouteConf) -> Value {
    json!({ "version": VERSION, "name": conf.name, "keys": conf.keys })
}

/// The fields of a document for `name`: an object of `version`, `name` (the one the URL gives,
/// when present) and `allowed`; any other field is a mistake worth naming.
fn head<'a>(
    value: &'a Value,
    name: &str,
    allowed: &[&str],
) -> Result<&'a Map<String, Value>, String> {
    let fields = value.as_object().ok_or("expected a JSON object")?;
    match fields.get("version") {
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "version {v} is not known: this lb-mio reads version {VERSION}"
            ))
        }
        None => {
            return Err(format!(
                "\"version\" is required: this lb-mio reads version {VERSION}"
            ))
        }
    }
    match fields.get("name") {
        Some(Value::String(given)) if given != name => {
            return Err(format!("\"name\" is {given:?}, the URL names {name:?}"))
        }
        Some(Value::String(_)) | None => {}
        Some(_) => return Err("\"name\" must be a string".into()),
    }
    let known = |field: &String| {
        ["version", "name"].contains(&field.as_str()) || allowed.contains(&field.as_str())
    };
    match fields.keys().find(|field| !known(field)) {
        Some(field) => Err(format!("unknown field {field:?}")),
        None => Ok(fields),
    }
}

/// The fields a backend's JSON may have.
const BACKEND_FIELDS: [&str; 6] = ["address", "name", "weight", "tls", "pool", "backup"];

/// A backend as JSON gives it: `{"address": "ip:port", "name": "...", "weight": N, "tls":
/// "NAME", "pool": "...", "backup": false}`, only `address` required. Without `name` the name is
/// empty (the admin API then makes one up); without `pool`, it is `pool`.
pub fn backend(value: &Value, pool: &str) -> Result<BackendConf, String> {
    // A misspelt field would otherwise be dropped without a word (`"wieght": 5` read as
    // weight 1).
    let fields = value.as_object().ok_or("a backend is a JSON object")?;
    if let Some(field) = fields
        .keys()
        .find(|f| !BACKEND_FIELDS.contains(&f.as_str()))
    {
        return Err(format!("unknown field {field:?}"));
    }
    let address = value
        .get("address")
        .and_then(Value::as_str)
        .ok_or("\"address\" (\"ip:port\") is required")?;
    let addr = backend::parse_addr(address)?;
    let weight = match value.get("weight") {
        None => 1,
        Some(w) => w
            .as_u64()
            .and_then(backend::check_weight)
            .ok_or_else(|| format!("\"weight\" must be {WEIGHTS:?}"))?,
    };
    let name = match value.get("name") {
        None => String::new(),
        Some(n) => {
            let n = n.as_str().ok_or("\"name\" must be a string")?;
            backend::check_name(n)?;
            n.to_string()
        }
    };
    let tls = match value.get("tls") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(config::parse_server_name(name)?),
        Some(_) => return Err("\"tls\" must be the name the backend's certificate has".into()),
    };
    let pool = match value.get("pool") {
        None => pool,
        Some(p) => p.as_str().ok_or("\"pool\" must be a pool's name")?,
    };
    let backup = match value.get("backup") {
        None => false,
        Some(b) => b.as_bool().ok_or("\"backup\" must be true or false")?,
    };
    Ok(BackendConf {
        name,
        addr,
        weight,
        tls,
        pool: pool.to_string(),
        backup,
    })
}

/// A backend of pool `pool`: one that names another pool is a mistake.
pub fn backend_of(value: &Value, pool: &str) -> Result<BackendConf, String> {
    let conf = backend(value, pool)?;
    match conf.pool == pool {
        true => Ok(conf),
        false => Err(format!("\"pool\" is {:?}, not {pool:?}", conf.pool)),
    }
}

/// A backend as `backend` reads it (without its pool: the pool document holds it).
pub fn backend_json(b: &Backend) -> Value {
    json!({ "name": b.name, "address": b.addr.to_string(), "weight": b.weight(), "tls": b.tls, "backup": b.backup })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Source, State};

    const INI: &str = "[backends]\nweb = 127.0.0.1:1\n[pool.api]\nstrategy = least_conn\nretries = 1\nhealth_path = /healthz\n[pool.api.backends]\napi1 = 127.0.0.1:2 weight=2\n[route.api]\nhost = api.example.com\nheader X-Canary = 1\npool = api\n";

    fn config() -> Config {
        Config::parse(INI, "config.ini").unwrap()
    }

    #[test]
    fn a_config_pool_reads_back_as_its_document_and_builds_the_same_pool() {
        let config = config();
        let conf = &config.pools[1];
        let api1 = Arc::new(Backend::new(&config.backends[1], State::Up, Source::Config));
        let doc = pool_json(conf, std::iter::once(&api1));
        assert_eq!(
            doc,
            json!({"version": 1, "name": "api",
                   "settings": {"strategy": "least_conn", "retries": 1, "health_path": "/healthz"},
                   "backends": [{"name": "api1", "address": "127.0.0.1:2", "weight": 2, "tls": null, "backup": false}]})
        );
        let read = pool(&doc, "api", &config).unwrap();
        // The same pool (a JSON object keeps its keys in its own order).
        let keys = conf.keys.clone();
        assert_eq!(PoolConf { keys, ..read.conf }, *conf);
        assert_eq!(read.backends, [config.backends[1].clone()]);
    }

    #[test]
    fn a_config_route_reads_back_as_its_document_and_builds_the_same_route() {
        let config = config();
        let doc = route_json(&config.routes[0]);
        assert_eq!(
            doc,
            json!({"version": 1, "name": "api", "keys": [["host", "api.example.com"], ["header X-Canary", "1"], ["pool", "api"]]})
        );
        assert_eq!(route(&doc, "api").unwrap(), config.routes[0]);
    }

    #[test]
    fn bad_documents_name_what_is_wrong() {
        let config = config();
        let cases = [
            (json!({"version": 2, "name": "x"}), "version 2"),
            (json!({"name": "x"}), "\"version\" is required"),
            (json!({"version": 1, "name": "y"}), "the URL names"),
            (
                json!({"version": 1, "setings": {}}),
                "unknown field \"setings\"",
            ),
            (
                json!({"version": 1, "settings": {"colour": "red"}}),
                "settings: colour: unknown pool key",
            ),
            (
                json!({"version": 1, "settings": {"retries": 99}}),
                "settings: retries: expected a number",
            ),
            (
                json!({"version": 1, "settings": {"retries": true}}),
                "a string or a number",
            ),
            (
                json!({"version": 1, "backends": [{"address": "127.0.0.1:1"}]}),
                "backends[0]: \"name\" is required",
            ),
            (
                json!({"version": 1, "backends": [{"name": "a", "address": "127.0.0.1:1", "pool": "z"}]}),
                "not \"x\"",
            ),
            (
                json!({"version": 1, "backends": [{"name": "a", "address": "127.0.0.1:1", "wieght": 5}]}),
                "backends[0]: unknown field \"wieght\"",
            ),
        ];
        for (doc, want) in cases {
            let err = pool(&doc, "x", &config).unwrap_err();
            assert!(err.contains(want), "{doc}: {err}");
        }
        let routes = [
            (
                json!({"version": 1, "keys": [["pool", "a"], ["pool", "b"]]}),
                "pool: duplicate key",
            ),
            (
                json!({"version": 1, "keys": [["colour", "red"]]}),
                "unknown route key",
            ),
            (
                json!({"version": 1, "keys": [["host", "a.example"]]}),
                "needs an action",
            ),
            (
                json!({"version": 1, "keys": [["host"]]}),
                "pairs of strings",
            ),
        ];
        for (doc, want) in routes {
            let err = route(&doc, "x").unwrap_err();
            assert!(err.contains(want), "{doc}: {err}");
        }
    }
}
