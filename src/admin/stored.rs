//! The admin API with `[etcd]`: a change to backends, pools or routes is written to etcd, so
//! every instance of the fleet follows it, instead of changing this instance alone. Each write
//! is a transaction on the key's revision: the one `If-Match` gives (a `GET` of a pool or a
//! route sends it as `ETag`), else the one read just before writing. Two operators' changes
//! never overwrite each other silently: the later one gets 409. The answer comes once this
//! instance applied the write (read your writes) and carries its `revision`.
//!
//! Backends from config.ini, the state file or DNS are this instance's own: etcd cannot change
//! them (409). Draining stays an action on the instance asked.

use super::routing::{self, json_of, names_free, no_pool, no_route, pool_document, unrouted};
use super::{backend_name, backend_of, weight_of, ApiAnswer, ApiRequest};
use crate::backend::Source;
use crate::config::Origin;
use crate::document;
use crate::fleet::view::{self, Key};
use crate::fleet::Fleet;
use crate::shared::Shared;
use log::info;
use serde_json::{json, Value};

/// The answer to `request` when it writes what etcd holds (or shows it with its revision);
/// `None` for the rest of the API.
pub fn answer(
    shared: &Shared,
    fleet: &Fleet,
    request: &ApiRequest,
    parts: &[&str],
) -> Option<ApiAnswer> {
    let store = Store {
        shared,
        fleet,
        if_match: request.if_match.as_deref(),
    };
    let body = &request.body;
    let answer = match (request.method.as_str(), parts) {
        ("GET", ["api", "pools", name]) => {
            store.tagged(routing::get_pool(shared, name), Key::Pool(name.to_string()))
        }
        ("GET", ["api", "routes", name]) => store.tagged(
            routing::get_route(shared, name),
            Key::Route(name.to_string()),
        ),
        ("PUT", ["api", "pools", name]) => store.put_pool(name, body),
        ("DELETE", ["api", "pools", name]) => store.delete_pool(name),
        ("PUT", ["api", "routes", name]) => store.put_route(name, body),
        ("DELETE", ["api", "routes", name]) => store.delete_route(name),
        ("POST", ["api", "backends"]) => store.add_backend(body, None),
        ("POST", ["api", "pools", pool, "backends"]) => store.add_backend(body, Some(pool)),
        ("PUT", ["api", "backends", name]) => store.set_weight(name, body),
        ("DELETE", ["api", "backends", name]) => store.delete_backend(name),
        _ => return None,
    };
    Some(answer.unwrap_or_else(|answer| answer))
}

struct Store<'a> {
    shared: &'a Shared,
    fleet: &'a Fleet,
    if_match: Option<&'a str>,
}

type Answer = Result<ApiAnswer, ApiAnswer>;

impl Store<'_> {
    /// `answer` with the revision of `key` as its `ETag`, when etcd holds it.
    fn tagged(&self, mut answer: ApiAnswer, key: Key) -> Answer {
        if answer.status == 200 {
            answer.etag = self.fleet.revision_of(&key);
        }
        Ok(answer)
    }

    /// `PUT /api/pools/NAME`: the pool document, at `pools/NAME`.
    fn put_pool(&self, name: &str, body: &[u8]) -> Answer {
        let value = json_of(body)?;
        let snap = self.shared.load();
        let doc = document::pool(&value, name, &snap.config).map_err(bad)?;
        names_free(&snap, name, &doc.backends)?;
        let key = Key::Pool(name.to_string());
        let (revision, created) = self.put(&key, &value)?;
        info!("pool {name} written to etcd at revision {revision} (admin API)");
        let snap = self.shared.load();
        let shown = snap
            .pool(name)
            .map_or(Value::Null, |at| pool_document(&snap, at));
        Ok(written(if created { 201 } else { 200 }, shown, revision))
    }

    /// `DELETE /api/pools/NAME`: refused while a route names the pool, and for config.ini's.
    fn delete_pool(&self, name: &str) -> Answer {
        let snap = self.shared.load();
        let at = snap.pool(name).ok_or_else(|| no_pool(name))?;
        self.must_be_stored("pool", name, snap.pools[at].conf.origin)?;
        // Deleting an etcd pool that hides config.ini's brings the file's back: routes stay.
        if !self.fleet.file_has_pool(name) {
            unrouted(&snap, name)?;
        }
        self.deleted(Key::Pool(name.to_string()), "pool", name, 202)
    }

    /// `PUT /api/routes/NAME`: the route document, at `routes/NAME`. Routes from etcd are tried
    /// in name order, so `before` cannot place one.
    fn put_route(&self, name: &str, body: &[u8]) -> Answer {
        let value = json_of(body)?;
        if value.get("before").is_some() {
            let message = "with [etcd], routes are tried in name order after config.ini's: \
                           name the route to place it (\"before\" is for a single instance)";
            return Err(ApiAnswer::error(400, message));
        }
        let conf = view::route(&value, name, &self.shared.load().config).map_err(bad)?;
        let (revision, created) = self.put(&Key::Route(name.to_string()), &value)?;
        info!("route {name} written to etcd at revision {revision} (admin API)");
        let status = if created { 201 } else { 200 };
        Ok(written(status, document::route_json(&conf), revision))
    }

    /// `DELETE /api/routes/NAME`: one etcd holds.
    fn delete_route(&self, name: &str) -> Answer {
        let snap = self.shared.load();
        let route = (snap.config.routes.iter()).find(|r| r.name == name);
        let route = route.ok_or_else(|| no_route(name))?;
        self.must_be_stored("route", name, route.origin)?;
        self.deleted(Key::Route(name.to_string()), "route", name, 200)
    }

    /// Deletes the `what` called `name` at `key`, answering `status` once applied.
    fn deleted(&self, key: Key, what: &str, name: &str, status: u16) -> Answer {
        let revision = self.delete(&key)?;
        info!("{what} {name} deleted from etcd at revision {revision} (admin API)");
        let shown = json!({ "name": name, "deleted": true });
        Ok(written(status, shown, revision))
    }

    /// `POST /api/backends`: the backend, registered at `backends/POOL/NAME` (only if no
    /// such key exists), without a lease: it stays until deleted.
    fn add_backend(&self, body: &[u8], pool: Option<&str>) -> Answer {
        let conf = backend_of(self.shared, body, pool)?;
        let snap = self.shared.load();
        if snap.pool(&conf.pool).is_none() {
            return Err(no_pool(&conf.pool));
        }
        let name = backend_name(&snap, &conf.name)?;
        let key = Key::backend(&conf.pool, &name);
        let value = json!({ "address": conf.addr.to_string(), "weight": conf.weight, "tls": conf.tls, "backup": conf.backup });
        let revision = self.write(&key, Some(&value.to_string()), 0, 0)?;
        info!(
            "backend {name} at {} written to etcd at revision {revision} (admin API)",
            conf.addr
        );
        let snap = self.shared.load();
        let state = (snap.backends.iter())
            .find(|b| b.name == name && b.is_listed())
            .map(|b| b.state().name());
        let shown = json!({ "name": name, "address": conf.addr.to_string(), "weight": conf.weight, "state": state });
        Ok(written(201, shown, revision))
    }

    /// `PUT /api/backends/NAME` `{"weight": N}`: rewrites the key that holds the backend.
    fn set_weight(&self, name: &str, body: &[u8]) -> Answer {
        let weight = weight_of(body)?;
        let (key, registered) = self.holder(name)?;
        let revision = match registered {
            true => self.edit(&key, |doc| {
                doc["weight"] = json!(weight);
                Ok(())
            })?,
            false => self.edit(&key, |doc| {
                let listed = listed_backend(doc, name)?;
                listed["weight"] = json!(weight);
                Ok(())
            })?,
        };
        info!("backend {name} weight {weight} written to etcd at revision {revision} (admin API)");
        Ok(written(
            200,
            json!({ "name": name, "weight": weight }),
            revision,
        ))
    }

    /// `DELETE /api/backends/NAME`: deletes its key, or takes it out of its pool's document;
    /// it drains on every instance, then leaves.
    fn delete_backend(&self, name: &str) -> Answer {
        let (key, registered) = self.holder(name)?;
        let revision = match registered {
            true => self.delete(&key)?,
            false => self.edit(&key, |doc| {
                let list = doc.get_mut("backends").and_then(Value::as_array_mut);
                let list = list.ok_or_else(|| gone(name))?;
                let before = list.len();
                list.retain(|b| b.get("name").and_then(Value::as_str) != Some(name));
                match list.len() < before {
                    true => Ok(()),
                    false => Err(gone(name)),
                }
            })?,
        };
        info!("backend {name} deleted from etcd at revision {revision} (admin API)");
        let snap = self.shared.load();
        let state = (snap.backends.iter())
            .find(|b| b.name == name)
            .map(|b| b.state().name());
        Ok(written(
            202,
            json!({ "name": name, "state": state }),
            revision,
        ))
    }

    /// The key that holds backend `name`, and whether it is the backend's own (registered)
    /// rather than its pool's document; 409 for a backend etcd does not hold.
    fn holder(&self, name: &str) -> Result<(Key, bool), ApiAnswer> {
        let snap = self.shared.load();
        let backend = (snap.backends.iter()).find(|b| b.name == name && b.is_listed());
        let backend = backend.ok_or_else(|| no(&format!("backend named {name:?}")))?;
        match backend.source {
            Source::Etcd { registered: true } => Ok((Key::backend(&backend.pool, name), true)),
            Source::Etcd { registered: false } => Ok((Key::Pool(backend.pool.clone()), false)),
            _ => {
                let message = format!(
                    "backend {name} comes from {}, which is this instance's own: etcd cannot change it",
                    backend.source.name()
                );
                Err(ApiAnswer::error(409, message))
            }
        }
    }

    /// 409 unless `origin` is etcd.
    fn must_be_stored(&self, what: &str, name: &str, origin: Origin) -> Result<(), ApiAnswer> {
        match origin {
            Origin::Etcd => Ok(()),
            Origin::File | Origin::Api => {
                let message =
                    format!("{what} {name} is config.ini's: etcd holds no {what} of that name");
                Err(ApiAnswer::error(409, message))
            }
        }
    }

    /// Puts `value` at `key`, guarded on its revision: the revision of the write, and whether
    /// it made the key.
    fn put(&self, key: &Key, value: &Value) -> Result<(i64, bool), ApiAnswer> {
        let now = self.fleet.read(key).map_err(unavailable)?;
        let guard = self.guard(now.as_ref().map_or(0, |kv| kv.mod_revision))?;
        let lease = now.as_ref().map_or(0, |kv| kv.lease);
        let text = value.to_string();
        let revision = self.write(key, Some(&text), lease, guard)?;
        Ok((revision, now.is_none()))
    }

    /// Rewrites the document at `key` with `edit`, keeping its lease.
    fn edit(
        &self,
        key: &Key,
        edit: impl FnOnce(&mut Value) -> Result<(), ApiAnswer>,
    ) -> Result<i64, ApiAnswer> {
        let now = self.fleet.read(key).map_err(unavailable)?;
        let now = now.ok_or_else(|| {
            ApiAnswer::error(409, format!("{} is gone from etcd", self.fleet.key(key)))
        })?;
        let unreadable = |e: String| {
            let message = format!("{} does not read: {e}; write it whole", self.fleet.key(key));
            ApiAnswer::error(409, message)
        };
        let mut doc: Value =
            serde_json::from_slice(&now.value).map_err(|e| unreadable(e.to_string()))?;
        view::check(key, &doc, &self.shared.load().config).map_err(unreadable)?;
        edit(&mut doc)?;
        let guard = self.guard(now.mod_revision)?;
        self.write(key, Some(&doc.to_string()), now.lease, guard)
    }

    /// Deletes `key`, guarded on its revision.
    fn delete(&self, key: &Key) -> Result<i64, ApiAnswer> {
        let now = self.fleet.read(key).map_err(unavailable)?;
        let now = now.ok_or_else(|| no(&self.fleet.key(key)))?;
        let guard = self.guard(now.mod_revision)?;
        self.write(key, None, 0, guard)
    }

    /// The revision a write is guarded on: `If-Match`'s, else `now` (what was just read).
    fn guard(&self, now: i64) -> Result<i64, ApiAnswer> {
        let Some(given) = self.if_match else {
            return Ok(now);
        };
        let revision = given.trim().trim_start_matches("W/").trim_matches('"');
        revision.parse().map_err(|_| {
            ApiAnswer::error(
                400,
                format!("If-Match: expected \"REVISION\", got {given:?}"),
            )
        })
    }

    /// The write, once applied here: its revision; 409 when the key changed since `guard`.
    fn write(
        &self,
        key: &Key,
        value: Option<&str>,
        lease: i64,
        guard: i64,
    ) -> Result<i64, ApiAnswer> {
        match self
            .fleet
            .write(key, value.map(str::as_bytes), lease, guard)
        {
            Ok(Some(revision)) => self.taken(key, value.is_some(), revision),
            Ok(None) => {
                let key = self.fleet.key(key);
                let message = match guard {
                    0 => format!("{key} exists"),
                    _ => format!("{key} changed since revision {guard}: read it again and retry"),
                };
                Err(ApiAnswer::error(409, message))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// `revision` once this instance applied it and holds `key` as written there (`put`, or
    /// deleted). The watch checks a value as this instance did before writing it; when it
    /// refused it all the same, the answer says so.
    fn taken(&self, key: &Key, put: bool, revision: i64) -> Result<i64, ApiAnswer> {
        let revision = self.applied(revision)?;
        match (put, self.fleet.revision_of(key)) {
            (true, Some(held)) if held == revision => Ok(revision),
            (false, None) => Ok(revision),
            _ => {
                let key = self.fleet.key(key);
                let message = format!(
                    "{key} was written at revision {revision}, but this instance did not take it: see its log"
                );
                Err(ApiAnswer::error(409, message))
            }
        }
    }

    /// `revision` once this instance applied it; 202 when it has not within etcd's request
    /// timeout (the write stands, and the watch brings it).
    fn applied(&self, revision: i64) -> Result<i64, ApiAnswer> {
        match self.fleet.wait_applied(revision) {
            true => Ok(revision),
            false => {
                let note = format!("written to etcd at revision {revision}; not yet applied here");
                Err(written(202, json!({ "note": note }), revision))
            }
        }
    }
}

/// A write's answer: `shown` (an object) with the write's revision.
fn written(status: u16, mut shown: Value, revision: i64) -> ApiAnswer {
    if let Some(fields) = shown.as_object_mut() {
        fields.insert("revision".into(), json!(revision));
    }
    ApiAnswer::json(status, shown)
}

/// The entry of backend `name` in a pool document.
fn listed_backend<'a>(doc: &'a mut Value, name: &str) -> Result<&'a mut Value, ApiAnswer> {
    let list = doc.get_mut("backends").and_then(Value::as_array_mut);
    let found = list.and_then(|list| {
        list.iter_mut()
            .find(|b| b.get("name").and_then(Value::as_str) == Some(name))
    });
    found.ok_or_else(|| gone(name))
}

fn gone(name: &str) -> ApiAnswer {
    ApiAnswer::error(
        409,
        format!("backend {name} is gone from its pool's document in etcd"),
    )
}

fn bad(message: String) -> ApiAnswer {
    ApiAnswer::error(400, message)
}

fn no(what: &str) -> ApiAnswer {
    ApiAnswer::error(404, format!("no {what}"))
}

fn unavailable(e: crate::etcd::Error) -> ApiAnswer {
    ApiAnswer::error(503, format!("etcd cannot be written: {e}"))
}
