//! A fleet of lb-mio instances shares its backends, pools and routes through etcd
//! (`[etcd]`). Each instance reads the prefix at start, then follows it with a watch on a
//! thread of its own (`follow`); every change is laid over config.ini's config (`view::merge`)
//! and becomes the next snapshot through the same `Shared::update` the admin API uses, so the
//! request path takes no lock. The admin API writes to etcd instead of the local snapshot
//! (`write`), and answers once the change is applied here.
//!
//! What the snapshot is made of is kept here: config.ini's config (a reload replaces it) and
//! etcd's view (the watch changes it). Precedence, for one name: etcd, then the state file,
//! then config.ini.

mod cache;
mod follow;
pub mod view;

use crate::config::Config;
use crate::etcd::{self, Client, Credentials, TlsFiles};
use crate::reload;
use crate::shared::Shared;
use log::{info, warn};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use view::{Key, View};

pub use follow::spawn;

pub struct Fleet {
    pub prefix: String,
    parts: Mutex<Parts>,
    /// The revision of the view the running snapshot was built from, and its changes.
    applied: Mutex<i64>,
    applied_changed: Condvar,
    /// Whether the watch is following etcd now.
    connected: AtomicBool,
    /// For the admin API's writes (the watch has a client of its own).
    writer: Mutex<Client>,
    request_timeout: Duration,
}

/// What the snapshot is merged from.
struct Parts {
    file: Config,
    view: View,
    /// What the last merge left out, to log each thing once rather than at every change.
    notes: Vec<String>,
}

/// How an instance started: from etcd's prefix as read now, or from an older view (the cache
/// file, or none) that the watch thread must read anew.
pub enum Start {
    Current,
    Stale,
}

impl Fleet {
    /// Reads `file`'s `[etcd]` prefix (bounded by its request timeout) and returns the fleet
    /// with the config to start from. When etcd cannot be reached the instance starts from the
    /// cache file, or from config.ini alone, and says so; it never fails for etcd's sake. An
    /// error is a client that cannot be made (a TLS file that does not read).
    pub fn start(file: Config) -> Result<(Fleet, Client, Start, Config), String> {
        let etcd = &file.etcd;
        let (mut reader, writer) = (client(&file)?, client(&file)?);
        let prefix = etcd.prefix.clone();
        let (view, start) = match reader.range(prefix.as_bytes()) {
            Ok(range) => {
                let view = follow::read(&prefix, range, &View::default(), &file);
                info!(
                    "etcd: {} keys under {prefix} at revision {}",
                    view.entries.len(),
                    view.revision
                );
                (view, Start::Current)
            }
            Err(e) => (without_etcd(&file, &e.to_string()), Start::Stale),
        };
        let mut notes = Vec::new();
        let merged = view::merge(&file, &view, &mut notes);
        log_new(&prefix, &notes, &[]);
        // A view from the cache is not etcd's yet: no write is taken as applied before the
        // watch thread read the prefix.
        let applied = match start {
            Start::Current => view.revision,
            Start::Stale => 0,
        };
        let fleet = Fleet {
            prefix,
            applied: Mutex::new(applied),
            applied_changed: Condvar::new(),
            connected: AtomicBool::new(matches!(start, Start::Current)),
            writer: Mutex::new(writer),
            request_timeout: etcd.request_timeout,
            parts: Mutex::new(Parts { file, view, notes }),
        };
        Ok((fleet, reader, start, merged))
    }

    /// Replaces config.ini's part (SIGHUP): the running snapshot becomes the new file with
    /// the view over it. A config that does not apply changes nothing.
    pub fn reload(&self, shared: &Shared, mut file: Config) -> Result<(), String> {
        let mut parts = self.parts.lock();
        // Kept as it will run, so that the merges that follow do not warn again.
        reload::keep_restart_only_settings(&parts.file, &mut file);
        let mut notes = Vec::new();
        let merged = view::merge(&file, &parts.view, &mut notes);
        shared.update(|snap| reload::apply(snap, merged))?;
        log_new(&self.prefix, &notes, &parts.notes);
        (parts.file, parts.notes) = (file, notes);
        Ok(())
    }

    /// Changes the view with `change` (which gets config.ini's config, to read documents
    /// over) and applies the result; the view's revision becomes the applied one.
    fn change(&self, shared: &Shared, change: impl FnOnce(&mut View, &Config)) -> View {
        let mut parts = self.parts.lock();
        let Parts { file, view, .. } = &mut *parts;
        change(view, file);
        let mut notes = Vec::new();
        let merged = view::merge(file, view, &mut notes);
        let revision = view.revision;
        match shared.update(|snap| reload::apply(snap, merged)) {
            Ok(()) => {
                *self.applied.lock() = revision;
                self.applied_changed.notify_all();
            }
            // The applied revision stays where it was, as `lbmio_etcd_revision` shows.
            Err(e) => warn!(
                "etcd: the view at revision {revision} does not apply, the running config stays: {e}"
            ),
        }
        log_new(&self.prefix, &notes, &parts.notes);
        parts.notes = notes;
        parts.view.clone()
    }

    /// Waits until the snapshot holds what etcd held at `revision` (an admin write's): false
    /// when the request timeout passed first.
    pub fn wait_applied(&self, revision: i64) -> bool {
        let deadline = Instant::now() + self.request_timeout;
        let mut applied = self.applied.lock();
        while *applied < revision {
            if self
                .applied_changed
                .wait_until(&mut applied, deadline)
                .timed_out()
            {
                return *applied >= revision;
            }
        }
        true
    }

    pub fn applied(&self) -> i64 {
        *self.applied.lock()
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether config.ini has a pool called `name` (which an etcd pool of that name hides).
    pub fn file_has_pool(&self, name: &str) -> bool {
        self.parts.lock().file.pool(name).is_some()
    }

    /// The mod_revision of `key` as this instance last read it (for an `ETag`).
    pub fn revision_of(&self, key: &Key) -> Option<i64> {
        self.parts.lock().view.revision_of(key)
    }

    /// The full etcd key of `key`.
    pub fn key(&self, key: &Key) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value and mod_revision (0: absent) of `key` as etcd holds it now, and its lease.
    pub fn read(&self, key: &Key) -> Result<Option<etcd::Kv>, etcd::Error> {
        let full = self.key(key);
        let range = self.writer.lock().range(full.as_bytes())?;
        Ok(range.kvs.into_iter().find(|kv| kv.key == full.as_bytes()))
    }

    /// Puts `value` at `key` (on `lease`), or deletes it for `None`, if its mod_revision is
    /// still `guard` (0: absent): the revision of the write, `None` when the key changed.
    pub fn write(
        &self,
        key: &Key,
        value: Option<&[u8]>,
        lease: i64,
        guard: i64,
    ) -> Result<Option<i64>, etcd::Error> {
        let full = self.key(key);
        let mut writer = self.writer.lock();
        match value {
            Some(value) => writer.put_if(full.as_bytes(), value, lease, guard),
            None => writer.delete_if(full.as_bytes(), guard),
        }
    }
}

/// The view to start from when etcd cannot be read (`why`): the cache file's, or none; the
/// log says which.
fn without_etcd(file: &Config, why: &str) -> View {
    let prefix = &file.etcd.prefix;
    let cannot = format!("etcd: cannot read {prefix} at start ({why})");
    let Some(path) = file.etcd.cache_file.as_deref() else {
        warn!("{cannot}; starting from config.ini alone, and reconnecting");
        return View::default();
    };
    match cache::load(path, prefix, file) {
        Ok(Some(view)) => {
            let (path, revision) = (path.display(), view.revision);
            warn!("{cannot}; starting from the cache file {path} (revision {revision}), and reconnecting");
            view
        }
        Ok(None) => {
            warn!("{cannot}, and there is no cache file yet; starting from config.ini alone, and reconnecting");
            View::default()
        }
        Err(e) => {
            warn!("{cannot}, nor the cache file {}: {e}; starting from config.ini alone, and reconnecting", path.display());
            View::default()
        }
    }
}

/// A client as `[etcd]` says (its TLS files read now; it connects on its first call).
pub fn client(config: &Config) -> Result<Client, String> {
    Client::new(options(config)).map_err(|e| format!("[etcd]: {e}"))
}

/// The client options `[etcd]` gives.
fn options(config: &Config) -> etcd::Options {
    let etcd = &config.etcd;
    let tls = etcd.ca.clone().map(|ca| TlsFiles {
        ca,
        cert: etcd.cert.clone(),
        key: etcd.key.clone(),
    });
    let credentials = match (&etcd.user, &etcd.password) {
        (Some(user), Some(password)) => Some(Credentials {
            user: user.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    etcd::Options {
        endpoints: etcd.endpoints.clone(),
        tls,
        credentials,
        connect_timeout: etcd.connect_timeout,
        request_timeout: etcd.request_timeout,
    }
}

/// Logs what a merge left out (each note begins with a key under `prefix`) that the one
/// before did not.
fn log_new(prefix: &str, notes: &[String], before: &[String]) {
    for note in notes.iter().filter(|n| !before.contains(n)) {
        warn!("etcd: {prefix}{note}");
    }
}
