//! The admin API's pools and routes: listed, shown as their documents (`document`), and
//! created, replaced and removed at run time. Every change builds the next snapshot from the
//! current one through `Shared::update`, so workers take it at their next loop turn; one that
//! does not validate answers 4xx and changes nothing. What the API changes lasts until the next
//! reload or restart, which read config.ini alone (`reload` says what it drops).

use super::ApiAnswer;
use crate::backend::{Backend, BackendConf, Source};
use crate::config::{Config, Origin, PoolConf};
use crate::document;
use crate::reload;
use crate::route::{self, Role, RouteConf};
use crate::shared::{Shared, Snapshot};
use log::info;
use serde_json::{json, Value};
use std::sync::Arc;

/// `GET /api/pools`: each pool in config order with its strategy, its backends by state and
/// the responses they relayed.
pub fn list_pools(shared: &Shared) -> ApiAnswer {
    let snap = shared.load();
    let totals = shared.totals();
    let pools: Vec<Value> = (snap.pools.iter())
        .map(|pool| {
            let mine = || {
                (snap.backends.iter().zip(&totals.backends))
                    .filter(|(b, _)| b.is_listed() && b.pool == pool.conf.name)
            };
            json!({
                "name": pool.conf.name,
                "strategy": pool.conf.strategy.name(),
                "backends": mine().count(),
                "up": mine().filter(|(b, _)| b.is_up()).count(),
                "requests": mine().map(|(_, t)| t.requests()).sum::<u64>(),
                "source": pool.conf.origin.name(),
            })
        })
        .collect();
    ApiAnswer::json(200, json!({ "pools": pools }))
}

/// `GET /api/pools/NAME`: its document.
pub fn get_pool(shared: &Shared, name: &str) -> ApiAnswer {
    let snap = shared.load();
    match snap.pool(name) {
        Some(at) => ApiAnswer::json(200, pool_document(&snap, at)),
        None => no_pool(name),
    }
}

/// The document of pool `at`: its settings and the live backends it lists (given by address
/// where the pool was defined: config.ini or the admin API, or etcd's document).
pub fn pool_document(snap: &Snapshot, at: usize) -> Value {
    let conf = &snap.pools[at].conf;
    let listed = |source: &Source| match conf.origin {
        Origin::Etcd => *source == Source::Etcd { registered: false },
        Origin::File | Origin::Api => source.is_local(),
    };
    let given =
        (snap.backends.iter()).filter(|b| b.pool == conf.name && b.is_live() && listed(&b.source));
    document::pool_json(conf, given)
}

pub(super) fn no_pool(name: &str) -> ApiAnswer {
    ApiAnswer::error(404, format!("no pool {name:?}"))
}

/// `PUT /api/pools/NAME`: creates the pool (last) or replaces its settings in place; its
/// backends become the document's as a reload would make them (`reload::replace_given`).
pub fn put_pool(shared: &Shared, name: &str, body: &[u8]) -> ApiAnswer {
    let value = match json_of(body) {
        Ok(value) => value,
        Err(answer) => return answer,
    };
    let (mut created, mut shown) = (false, Value::Null);
    let changed = shared.update(|snap| {
        let document::PoolDocument {
            conf,
            backends: wanted,
        } = document::pool(&value, name, &snap.config).map_err(|e| ApiAnswer::error(400, e))?;
        names_free(snap, name, &wanted)?;
        let mut config = snap.config.clone();
        let conf = PoolConf {
            origin: Origin::Api,
            ..conf
        };
        match config.pool(name) {
            Some(at) => config.pools[at] = conf,
            None => {
                config.pools.push(conf);
                created = true;
            }
        }
        let mine = |b: &Backend| b.pool == name && b.source.is_local();
        let gone = |b: &Backend| {
            info!(
                "admin API: backend {} at {} is gone from the pool's document: draining",
                b.name, b.addr
            );
            b.drain(true);
        };
        let backends = reload::replace_given(
            &snap.backends,
            &wanted,
            mine,
            (&Source::Admin, &reload::UpBefore::none()),
            "admin API",
            gone,
        )
        .map_err(|e| ApiAnswer::error(409, e))?;
        let next = next(snap, config, backends)?;
        // What this change made, whatever a later one makes of it.
        shown = (next.pool(name)).map_or(Value::Null, |at| pool_document(&next, at));
        Ok(next)
    });
    match changed {
        Ok(()) => {
            info!(
                "pool {name} {} (admin API)",
                if created { "created" } else { "replaced" }
            );
            ApiAnswer::json(if created { 201 } else { 200 }, shown)
        }
        Err(answer) => answer,
    }
}

/// 409 when a backend of `wanted` (pool `pool`'s) has a name a backend of another pool has.
pub(super) fn names_free(
    snap: &Snapshot,
    pool: &str,
    wanted: &[BackendConf],
) -> Result<(), ApiAnswer> {
    let taken = (wanted.iter()).find_map(|conf| {
        let other = (snap.backends.iter()).find(|b| b.name == conf.name && b.is_listed());
        other.filter(|b| b.pool != pool)
    });
    match taken {
        Some(other) => {
            let message = format!(
                "backend name {:?} is taken in pool {}",
                other.name, other.pool
            );
            Err(ApiAnswer::error(409, message))
        }
        None => Ok(()),
    }
}

/// 409 while a route sends requests to pool `pool`.
pub(super) fn unrouted(snap: &Snapshot, pool: &str) -> Result<(), ApiAnswer> {
    let routed = (snap.config.routes.iter()).find(|r| r.pool_names().any(|p| p == pool));
    match routed {
        Some(route) => {
            let message = format!(
                "route {} sends requests to pool {pool}: change or delete it first",
                route.name
            );
            Err(ApiAnswer::error(409, message))
        }
        None => Ok(()),
    }
}

/// `DELETE /api/pools/NAME`: refused while a route names the pool; else the pool goes, with its
/// DNS entries, and its backends drain (once no worker routes to it), then leave.
pub fn delete_pool(shared: &Shared, name: &str) -> ApiAnswer {
    let deleted = shared.update(|snap| {
        let Some(at) = snap.pool(name) else {
            return Err(no_pool(name));
        };
        unrouted(snap, name)?;
        let mut config = snap.config.clone();
        config.pools.remove(at);
        config.discover.retain(|d| d.pool != name);
        // Its backends are drained by the health thread once no worker routes to the pool.
        next(snap, config, snap.backends.to_vec())
    });
    match deleted {
        Ok(()) => {
            info!("pool {name} deleted (admin API)");
            ApiAnswer::json(202, json!({ "name": name, "deleted": true }))
        }
        Err(answer) => answer,
    }
}

/// `GET /api/routes`: every route in the order they are tried, each its document with the
/// requests it matched, where it came from, and what it checks and does in short.
pub fn list_routes(shared: &Shared) -> ApiAnswer {
    let snap = shared.load();
    let routes: Vec<Value> = (snap.routes.routes().iter().enumerate())
        .map(|(at, route)| {
            let mut entry = document::route_json(&route.conf);
            let summary = |role: Role| {
                let keys = route
                    .conf
                    .keys
                    .iter()
                    .filter(|(key, _)| route::role(key) == role);
                keys.map(|(key, v)| format!("{key} = {v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            entry["hits"] = json!(snap.routes.hits(at));
            entry["source"] = json!(route.conf.origin.name());
            entry["conditions"] = json!(summary(Role::Condition));
            entry["action"] = json!(summary(Role::Action));
            entry
        })
        .collect();
    ApiAnswer::json(200, json!({ "routes": routes }))
}

/// `GET /api/routes/NAME`: its document.
pub fn get_route(shared: &Shared, name: &str) -> ApiAnswer {
    let snap = shared.load();
    match snap.config.routes.iter().find(|r| r.name == name) {
        Some(route) => ApiAnswer::json(200, document::route_json(route)),
        None => no_route(name),
    }
}

pub(super) fn no_route(name: &str) -> ApiAnswer {
    ApiAnswer::error(404, format!("no route {name:?}"))
}

/// `PUT /api/routes/NAME`: a route document, and `"before": "OTHER"` to place the route just
/// before another. Without it a new route goes last and an existing one keeps its place. A
/// replaced route keeps its count (counts follow names).
pub fn put_route(shared: &Shared, name: &str, body: &[u8]) -> ApiAnswer {
    let mut value = match json_of(body) {
        Ok(value) => value,
        Err(answer) => return answer,
    };
    // `before` places the route; it is no part of the route's document.
    let before = value
        .as_object_mut()
        .and_then(|fields| fields.remove("before"));
    let before = match before {
        None => None,
        Some(Value::String(other)) if other != name => Some(other),
        Some(_) => return ApiAnswer::error(400, "\"before\" must name another route"),
    };
    let conf = match document::route(&value, name) {
        Ok(conf) => RouteConf {
            origin: Origin::Api,
            ..conf
        },
        Err(e) => return ApiAnswer::error(400, e),
    };
    let mut created = false;
    let changed = shared.update(|snap| {
        let mut config = snap.config.clone();
        let was = config.routes.iter().position(|r| r.name == name);
        if let Some(at) = was {
            config.routes.remove(at);
        }
        let at = match (&before, was) {
            (Some(other), _) => (config.routes.iter().position(|r| r.name == *other))
                .ok_or_else(|| ApiAnswer::error(400, format!("\"before\": no route {other:?}")))?,
            (None, Some(at)) => at,
            (None, None) => config.routes.len(),
        };
        created = was.is_none();
        conf.fits(&config)
            .map_err(|(key, why)| ApiAnswer::error(400, format!("{key}: {why}")))?;
        config.routes.insert(at, conf.clone());
        next(snap, config, snap.backends.to_vec())
    });
    match changed {
        Ok(()) => {
            info!(
                "route {name} {} (admin API)",
                if created { "created" } else { "replaced" }
            );
            ApiAnswer::json(if created { 201 } else { 200 }, document::route_json(&conf))
        }
        Err(answer) => answer,
    }
}

/// `DELETE /api/routes/NAME`.
pub fn delete_route(shared: &Shared, name: &str) -> ApiAnswer {
    let deleted = shared.update(|snap| {
        let mut config = snap.config.clone();
        let at =
            (config.routes.iter().position(|r| r.name == name)).ok_or_else(|| no_route(name))?;
        config.routes.remove(at);
        next(snap, config, snap.backends.to_vec())
    });
    match deleted {
        Ok(()) => {
            info!("route {name} deleted (admin API)");
            ApiAnswer::json(200, json!({ "name": name, "deleted": true }))
        }
        Err(answer) => answer,
    }
}

/// The next snapshot, or a 400 naming why `config` does not make one (a route that names a
/// pool it lacks).
fn next(
    snap: &Snapshot,
    config: Config,
    backends: Vec<Arc<Backend>>,
) -> Result<Snapshot, ApiAnswer> {
    snap.next(config, backends.into())
        .map_err(|e| ApiAnswer::error(400, e))
}

pub(super) fn json_of(body: &[u8]) -> Result<Value, ApiAnswer> {
    serde_json::from_slice(body).map_err(|e| ApiAnswer::error(400, format!("bad JSON: {e}")))
}
