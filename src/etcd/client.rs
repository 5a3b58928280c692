//! The calls lb-mio makes to etcd, over one kept-alive connection to one member at a time:
//! a member that fails is left for the next endpoint, and the connection is opened anew on
//! the next call. Blocking, for a thread of its own; each call bounded by the request timeout.

use super::connection::{exchange, Connection, Session};
use super::error::{Error, Why};
use super::tls::{client_config, TlsFiles};
use super::watch::Watch;
use super::wire::{self, bytes_value, int_value, malformed, shown, Kv};
use rustls::ClientConfig;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct Options {
    /// Members' `host:port`, tried in turn.
    pub endpoints: Vec<String>,
    pub tls: Option<TlsFiles>,
    pub credentials: Option<Credentials>,
    /// For each address of a member.
    pub connect_timeout: Duration,
    /// For a whole call, from sending the request to the last byte of the answer.
    pub request_timeout: Duration,
}

/// etcd's user/password auth.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Every key under a prefix, at one revision of the store.
#[derive(Debug)]
pub struct Range {
    pub revision: i64,
    pub kvs: Vec<Kv>,
}

/// A lease etcd granted: its id and its time to live in seconds (etcd may raise the one asked).
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub id: i64,
    pub ttl: i64,
}

/// What etcd says to a sign-in while its auth is off.
const AUTH_OFF: &str = "authentication is not enabled";
/// What etcd says to a request without a token while its auth is on.
const NO_USER: &str = "user name is empty";

pub struct Client {
    options: Options,
    tls: Option<Arc<ClientConfig>>,
    /// Index of the endpoint in use, or to try first.
    current: usize,
    session: Option<Session>,
}

impl Client {
    /// Reads the TLS files; connects on the first call.
    pub fn new(options: Options) -> Result<Client, String> {
        if options.endpoints.is_empty() {
            return Err("no etcd endpoint".into());
        }
        let tls = options.tls.as_ref().map(client_config).transpose()?;
        Ok(Client {
            options,
            tls,
            current: 0,
            session: None,
        })
    }

    /// Moves on to the next endpoint: the next call starts there.
    pub fn next_member(&mut self) {
        self.session = None;
        self.current = (self.current + 1) % self.options.endpoints.len();
    }

    /// Every key starting with `prefix`, and the revision they were read at (a watch from the
    /// next revision misses nothing).
    pub fn range(&mut self, prefix: &[u8]) -> Result<Range, Error> {
        let call = format!("range {}", shown(prefix));
        let body = Value::Object(wire::prefix_range(prefix));
        self.call(&call, "/v3/kv/range", &body, |answer| {
            Ok(Range {
                revision: wire::header_revision(answer)?,
                kvs: wire::kvs(answer)?,
            })
        })
    }

    /// Puts `key` (attached to `lease` unless 0); the revision of the change.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, Error> {
        let call = format!("put {}", shown(key));
        let body = wire::put_request(key, value, lease);
        self.call(&call, "/v3/kv/put", &body, wire::header_revision)
    }

    /// Puts `key` only if its mod_revision is still `mod_revision` (0: only if it does not
    /// exist): the revision of the write, or `None` when the key changed meanwhile, and then
    /// nothing was written.
    pub fn put_if(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: i64,
        mod_revision: i64,
    ) -> Result<Option<i64>, Error> {
        let call = format!("put {} at revision {mod_revision}", shown(key));
        let put = json!({"request_put": wire::put_request(key, value, lease)});
        self.txn(&call, key, mod_revision, put, Some((value, lease)))
    }

    /// Deletes `key` only if its mod_revision is still `mod_revision`: the revision of the
    /// delete, or `None` when the key changed meanwhile (or is gone), and then nothing was
    /// deleted.
    pub fn delete_if(&mut self, key: &[u8], mod_revision: i64) -> Result<Option<i64>, Error> {
        let call = format!("delete {} at revision {mod_revision}", shown(key));
        let delete = json!({"request_delete_range": {"key": bytes_value(key)}});
        self.txn(&call, key, mod_revision, delete, None)
    }

    /// Runs `operation` if `key`'s mod_revision is `mod_revision`. A transaction is not sent
    /// twice: when its outcome is unclear (no answer in time, a member that could not say),
    /// the key is read back, and the write counts as made when the key holds what it wrote
    /// (`wrote`: the value and lease of a put; `None`: a delete).
    fn txn(
        &mut self,
        call: &str,
        key: &[u8],
        mod_revision: i64,
        operation: Value,
        wrote: Option<(&[u8], i64)>,
    ) -> Result<Option<i64>, Error> {
        let body = wire::guarded_txn(key, mod_revision, operation)
            .to_string()
            .into_bytes();
        let answer = self.on_endpoints(call, false, |client| {
            let answer = client.ask("/v3/kv/txn", &body)?;
            let revision = wire::header_revision(&answer)?;
            Ok(wire::flag(&answer, "succeeded").then_some(revision))
        });
        match answer {
            Ok(done) => Ok(done),
            Err(error) if error.may_have_run() => {
                self.session = None;
                let now = self.range(key)?;
                let held = now.kvs.iter().find(|kv| kv.key == key);
                let made = match (wrote, held) {
                    (Some((value, lease)), Some(kv)) => {
                        (kv.value == value && kv.lease == lease && kv.mod_revision > mod_revision)
                            .then_some(kv.mod_revision)
                    }
                    (None, None) => Some(now.revision),
                    _ => None,
                };
                made.map(Some).ok_or(error)
            }
            Err(error) => Err(error),
        }
    }

    /// A new lease of `ttl` seconds.
    pub fn lease_grant(&mut self, ttl: i64) -> Result<Lease, Error> {
        let call = format!("lease grant {ttl}s");
        let body = json!({"TTL": int_value(ttl)});
        self.call(&call, "/v3/lease/grant", &body, |answer| {
            Ok(Lease {
                id: wire::int(answer, "ID")?,
                ttl: wire::int(answer, "TTL")?,
            })
        })
    }

    /// Renews lease `id`: its time to live from now, in seconds; 0 when the lease is gone
    /// (expired or revoked), and its keys with it. The gateway's keep-alive is a stream; one
    /// request and its one answer make a renewal.
    pub fn lease_keep_alive(&mut self, id: i64) -> Result<i64, Error> {
        let call = format!("lease keep-alive {id:x}");
        let body = json!({"ID": int_value(id)});
        self.call(&call, "/v3/lease/keepalive", &body, |answer| {
            wire::int(answer, "TTL")
        })
    }

    /// Revokes lease `id`: etcd deletes its keys.
    pub fn lease_revoke(&mut self, id: i64) -> Result<(), Error> {
        let call = format!("lease revoke {id:x}");
        let body = json!({"ID": int_value(id)});
        self.call(&call, "/v3/lease/revoke", &body, |_| Ok(()))
    }

    /// Watches every key starting with `prefix` from `start_revision` on, on a connection of
    /// its own, with progress notifications.
    pub fn watch(&mut self, prefix: &[u8], start_revision: i64) -> Result<Watch, Error> {
        let call = format!("watch {} from revision {start_revision}", shown(prefix));
        let timeout = self.options.request_timeout;
        self.on_endpoints(&call, true, |client| {
            let session = client.connect()?;
            let deadline = Instant::now() + timeout;
            Watch::start(session, prefix, start_revision, deadline)
        })
        .map(|watch| watch.named(&call))
    }

    /// Sends `body` to `path` and reads the answer with `read`.
    fn call<T>(
        &mut self,
        call: &str,
        path: &str,
        body: &Value,
        read: impl Fn(&Value) -> Result<T, Why>,
    ) -> Result<T, Error> {
        let body = body.to_string().into_bytes();
        self.on_endpoints(call, true, |client| read(&client.ask(path, &body)?))
    }

    /// Runs `attempt` on the current endpoint, and on the next ones in turn while the member
    /// is what fails (its connection, or its answer that it cannot serve); the error is the
    /// last endpoint's.
    /// A call that is not `idempotent` goes to no other member once it may have run.
    fn on_endpoints<T>(
        &mut self,
        call: &str,
        idempotent: bool,
        mut attempt: impl FnMut(&mut Client) -> Result<T, Why>,
    ) -> Result<T, Error> {
        let mut tries = self.options.endpoints.len();
        loop {
            let why = match attempt(self) {
                Ok(done) => return Ok(done),
                Err(why) => why,
            };
            let error = Error {
                endpoint: self.options.endpoints[self.current].clone(),
                call: call.to_string(),
                why,
            };
            tries -= 1;
            let again = error.is_member() && (idempotent || !error.may_have_run());
            if !again || tries == 0 {
                return Err(error);
            }
            self.next_member();
        }
    }

    /// One request and its answer on the kept-alive connection; sent again on a new
    /// connection when the old one turns out stale, and again with a new token when etcd
    /// refused ours.
    fn ask(&mut self, path: &str, body: &[u8]) -> Result<Value, Why> {
        let deadline = Instant::now() + self.options.request_timeout;
        let mut session = match self.session.take() {
            Some(session) => session,
            None => self.connect()?,
        };
        let mut answer = session.exchange(path, body, deadline);
        if matches!(&answer, Err(why) if session.conn.stale(why)) {
            session = self.connect()?;
            answer = session.exchange(path, body, deadline);
        }
        if self.signed_out(&session, &answer) {
            session.token = self.authenticate(&mut session.conn)?;
            answer = session.exchange(path, body, deadline);
        }
        // After a good answer or an error etcd sent, the connection is in step for the next
        // request; after a failure partway it is not.
        let in_step = matches!(answer, Ok(_) | Err(Why::Refused { .. }));
        if in_step && !session.conn.closing {
            self.session = Some(session);
        }
        answer
    }

    /// Whether etcd refused `answer` for want of a (valid) token that a new sign-in may get:
    /// ours is unknown to it (it restarted, or the token expired: HTTP 401), or we have none
    /// because auth was off when we signed in, and it is on now.
    fn signed_out<T>(&self, session: &Session, answer: &Result<T, Why>) -> bool {
        match answer {
            Err(Why::Refused { status: 401, .. }) => session.token.is_some(),
            Err(Why::Refused { message, .. }) => {
                session.token.is_none()
                    && self.options.credentials.is_some()
                    && message.contains(NO_USER)
            }
            _ => false,
        }
    }

    /// A new connection to the current endpoint, authenticated if we have credentials.
    pub(super) fn connect(&self) -> Result<Session, Why> {
        let endpoint = &self.options.endpoints[self.current];
        let tls = self.tls.as_ref();
        let mut conn = Connection::open(endpoint, tls, self.options.connect_timeout)?;
        let token = self.authenticate(&mut conn)?;
        Ok(Session { conn, token })
    }

    /// A token for `conn`, or `None` without credentials or while etcd's auth is off (as
    /// etcd's own client does: credentials set before auth is enabled are no error).
    fn authenticate(&self, conn: &mut Connection) -> Result<Option<String>, Why> {
        let Some(credentials) = &self.options.credentials else {
            return Ok(None);
        };
        let deadline = Instant::now() + self.options.request_timeout;
        let body = json!({"name": credentials.user, "password": credentials.password});
        let answer = exchange(
            conn,
            "/v3/auth/authenticate",
            None,
            body.to_string().as_bytes(),
            deadline,
        );
        let answer = match answer {
            Err(Why::Refused { message, .. }) if message.contains(AUTH_OFF) => return Ok(None),
            Err(Why::Refused { status, message }) => {
                let message = format!("sign-in as {}: {message}", credentials.user);
                return Err(Why::Refused { status, message });
            }
            answer => answer?,
        };
        match answer["token"].as_str() {
            Some(token) => Ok(Some(token.to_string())),
            None => Err(malformed("authenticate: no token in the answer".into())),
        }
    }
}
