//! The thread that follows etcd: a watch on the prefix from the revision after the last one
//! applied, the changes received together applied as one new snapshot. A silent watch is
//! normal (it can be quiet for hours); a member that vanished is found by TCP keepalive and
//! etcd's progress notifications, never by a read timeout, and one cut off from its cluster
//! cancels the watch (it was asked for a leader). When the watch fails the last view stays,
//! with one warning per outage, and the thread reconnects with backoff, starting on the next
//! member and resuming from the last revision seen, so no change is missed or applied twice;
//! when etcd compacted that revision away, it reads the whole prefix again.

use super::cache;
use super::view::{Key, View};
use super::{Fleet, Start};
use crate::config::Config;
use crate::etcd::{Client, Event, Message, Range};
use crate::shared::Shared;
use log::{info, warn};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The first wait after a failure; it doubles up to `BACKOFF_MAX` while etcd stays away.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most watch messages applied as one snapshot.
const BATCH: usize = 1024;
/// How long one wait for a watch message lasts; the watch is not over when it passes.
const WATCH_WAIT: Duration = Duration::from_secs(60);

/// Starts the thread that follows etcd with `client`, from the view the instance started with.
pub fn spawn(
    fleet: Arc<Fleet>,
    shared: Arc<Shared>,
    client: Client,
    start: Start,
) -> io::Result<JoinHandle<()>> {
    let cache_file = shared.load().config.etcd.cache_file.clone();
    let current = matches!(start, Start::Current);
    let mut follower = Follower {
        resume: match start {
            Start::Current => Some(fleet.applied()),
            Start::Stale => None,
        },
        fleet,
        shared,
        client,
        cache_file,
        backoff: BACKOFF_MIN,
        outage: None,
    };
    if current {
        let view = follower.fleet.parts.lock().view.clone();
        follower.saved(&view);
    }
    thread::Builder::new()
        .name("etcd".into())
        .spawn(move || loop {
            follower.follow();
        })
}

struct Follower {
    fleet: Arc<Fleet>,
    shared: Arc<Shared>,
    client: Client,
    cache_file: Option<PathBuf>,
    /// The revision the view is whole up to, to watch from the next; `None`: read the prefix.
    resume: Option<i64>,
    backoff: Duration,
    /// Since when etcd cannot be followed (one warning per outage).
    outage: Option<Instant>,
}

impl Follower {
    /// Reads the prefix when needed, then follows the watch until it ends.
    fn follow(&mut self) {
        let prefix = self.fleet.prefix.clone();
        let from = match self.resume {
            Some(revision) => revision,
            None => match self.client.range(prefix.as_bytes()) {
                Ok(range) => self.read_all(range),
                Err(e) => return self.lost(&e.to_string()),
            },
        };
        let mut watch = match self.client.watch(prefix.as_bytes(), from + 1) {
            Ok(watch) => watch,
            Err(e) => return self.lost(&e.to_string()),
        };
        self.back(from);
        loop {
            let mut message = watch.next(Instant::now() + WATCH_WAIT);
            // Changes already received are applied together: a burst is one snapshot.
            let mut events = Vec::new();
            let mut batched = 0;
            while let Ok(Some(Message::Events { events: more, .. })) = message {
                events.extend(more);
                batched += 1;
                message = match batched < BATCH {
                    true => watch.next(Instant::now()),
                    false => Ok(None),
                };
            }
            if !events.is_empty() {
                self.apply(&events);
            }
            match message {
                // (Events were all taken above.)
                Ok(None | Some(Message::Events { .. })) => {}
                Ok(Some(Message::Progress { revision })) => {
                    // Nothing changed under the prefix up to `revision`.
                    self.resume = self.resume.max(Some(revision));
                }
                Ok(Some(Message::Compacted { revision })) => {
                    let missed = self.resume.unwrap_or(from) + 1;
                    info!("etcd: revision {missed} was compacted (now {revision}): reading {prefix} again");
                    self.resume = None;
                    return;
                }
                Ok(Some(Message::Canceled { reason })) => {
                    return self.lost(&format!("etcd canceled the watch on {prefix}: {reason}"));
                }
                Err(e) => return self.lost(&e.to_string()),
            }
        }
    }

    /// The whole prefix, read anew: the view becomes it (a key whose value does not read
    /// keeps its last good value); the revision read.
    fn read_all(&mut self, range: Range) -> i64 {
        let prefix = self.fleet.prefix.clone();
        let view = self.fleet.change(&self.shared, |view, file| {
            *view = read(&prefix, range, view, file);
        });
        self.saved(&view);
        self.resume = Some(view.revision);
        view.revision
    }

    /// One message's changes, applied as one snapshot.
    fn apply(&mut self, events: &[Event]) {
        let Some(last) = events.last().map(Event::revision) else {
            return;
        };
        let prefix = self.fleet.prefix.clone();
        let view = self.fleet.change(&self.shared, |view, file| {
            for event in events {
                change(&prefix, view, event, file);
            }
            view.revision = last;
        });
        self.saved(&view);
        self.resume = Some(last);
    }

    /// Writes `view` to the cache file, when there is one; a failure is logged (the view
    /// applies all the same).
    fn saved(&self, view: &View) {
        let Some(path) = &self.cache_file else {
            return;
        };
        if let Err(e) = cache::save(path, &self.fleet.prefix, view) {
            warn!("etcd: cache file {}: {e}", path.display());
        }
    }

    /// etcd cannot be followed now: the view stays; warns once per outage, then waits.
    fn lost(&mut self, why: &str) {
        self.fleet.connected.store(false, Ordering::Relaxed);
        // The next try starts on another member: this one may be cut off from its cluster
        // and still answer.
        self.client.next_member();
        if self.outage.is_none() {
            self.outage = Some(Instant::now());
            let applied = self.fleet.applied();
            warn!("etcd: lost ({why}); keeping the view at revision {applied}, reconnecting");
        }
        thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Watching again (from after `from`).
    fn back(&mut self, from: i64) {
        self.fleet.connected.store(true, Ordering::Relaxed);
        self.backoff = BACKOFF_MIN;
        if let Some(since) = self.outage.take() {
            info!(
                "etcd: back after {:.1?}; following from revision {}",
                since.elapsed(),
                from + 1
            );
        }
    }
}

/// The view of `range` (the whole prefix): each key read as its document; one that does not
/// read is logged with its key and keeps `old`'s value, when it had one.
pub fn read(prefix: &str, range: Range, old: &View, file: &Config) -> View {
    let mut view = View {
        revision: range.revision,
        ..View::default()
    };
    for kv in range.kvs {
        let event = Event::Put(kv);
        if let Some(key) = change(prefix, &mut view, &event, file) {
            if let Some(entry) = old.entries.get(&key) {
                view.entries.insert(key, entry.clone());
            }
        }
    }
    view
}

/// Applies one change to `view`; a value that does not read is logged with its key and
/// ignored: the key is returned then.
fn change(prefix: &str, view: &mut View, event: &Event, file: &Config) -> Option<Key> {
    let (full, put) = match event {
        Event::Put(kv) => (&kv.key, Some(kv)),
        Event::Delete { key, .. } => (key, None),
    };
    let shown = String::from_utf8_lossy(full);
    let key = match shown.strip_prefix(prefix).map(Key::parse) {
        Some(Ok(key)) => key,
        Some(Err(e)) => {
            warn!("etcd: {shown}: ignored: {e}");
            return None;
        }
        None => return None,
    };
    let Some(kv) = put else {
        view.remove(&key);
        return None;
    };
    match view.put(key.clone(), &kv.value, kv.mod_revision, file) {
        Ok(()) => None,
        Err(e) => {
            warn!("etcd: {shown}: ignored: {e}");
            Some(key)
        }
    }
}
