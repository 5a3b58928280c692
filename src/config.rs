//! `config.ini` -> typed, validated [`Config`].
//!
//! The INI parser is hand-written so every error can name its file, line,
//! section and key.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;

use crate::backend::{self, BackendConf, MAX_BACKENDS, WEIGHTS};
use crate::dns;
use crate::http::chunked::is_token;
use crate::http::head::HOP_BY_HOP;
pub use crate::http::request::HashKey;
use crate::http::request::FORWARDING_HEADERS;
use crate::proxy_protocol::Version;
use route::RouteConf;

pub mod keys;
pub mod route;

const MAX_WORKERS: usize = 256;
const MAX_MS: u32 = 3_600_000;
/// Most `[limits] max_header_bytes`: a request head, and so its path, is never longer.
pub const MAX_HEAD: usize = 15_360;
/// Longest header name `expose_backend` and `request_id` take.
const MAX_HEADER_NAME: usize = 64;
/// Headers `expose_backend` and `request_id` may not name, besides the hop-by-hop ones and the
/// `X-Forwarded-*` lb-mio writes: they frame or route a message, or lb-mio writes them itself.
const RESERVED_HEADERS: [&str; 7] = [
    "Content-Length",
    "Transfer-Encoding",
    "Trailer",
    "Upgrade",
    "Host",
    "Server",
    "Set-Cookie",
];
/// Most `listen` addresses (each worker holds a listener for each).
pub const MAX_LISTEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub lb: Lb,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub health: Health,
    pub admin: Admin,
    pub log: Log,
    pub backends: Vec<BackendConf>,
    /// `[dns]`: how discovered backends are looked up.
    pub dns: Dns,
    /// `[backends]` entries that name a host (or an SRV name) instead of an address.
    pub discover: Vec<Discover>,
    pub tls: Tls,
    /// `[certificates]`, in file order: the first is the default.
    pub certificates: Vec<CertConf>,
    /// Every pool's settings: `default` (the global settings, for `[backends]`) first when it
    /// has backends, then each `[pool.NAME]` in file order.
    pub pools: Vec<PoolConf>,
    /// `[route.NAME]` sections, in file order.
    pub routes: Vec<RouteConf>,
    /// `[etcd]`: where a fleet keeps the backends, pools and routes it shares.
    pub etcd: Etcd,
    /// The backends etcd holds, merged in by the fleet (`fleet::merge`); none without `[etcd]`.
    pub stored: Stored,
}

/// `[etcd]`: the store a fleet of lb-mio instances shares; off without `endpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etcd {
    /// Members' `host:port`, tried in turn.
    pub endpoints: Vec<String>,
    /// Every key lb-mio reads and writes starts with it (`/lb-mio/`).
    pub prefix: String,
    /// TLS to etcd when set: the CA its members' certificates chain to.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The last view of the store, read at start when etcd cannot be reached.
    pub cache_file: Option<PathBuf>,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            endpoints: Vec::new(),
            prefix: "/lb-mio/".into(),
            ca: None,
            cert: None,
            key: None,
            user: None,
            password: None,
            connect_timeout: Duration::from_millis(1000),
            request_timeout: Duration::from_millis(3000),
            cache_file: None,
        }
    }
}

impl Etcd {
    pub fn is_on(&self) -> bool {
        !self.endpoints.is_empty()
    }
}

/// The backends etcd holds, by the kind of key that holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Listed in a pool document (`pools/NAME`).
    pub listed: Vec<BackendConf>,
    /// Each under a key of its own (`backends/POOL/NAME`), as a backend registers itself.
    pub registered: Vec<BackendConf>,
}

/// A pool's own settings: any it does not set follow the global ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConf {
    pub name: String,
    pub strategy: Strategy,
    pub retries: u32,
    pub sticky: Sticky,
    pub hash_key: HashKey,
    pub connect: Duration,
    pub backend: Duration,
    /// Largest request body, in bytes (0: no limit).
    pub max_body: u64,
    pub health: Health,
    /// The `(key, value)`s that set it, as given: a `[pool.NAME]` section's lines or a pool
    /// document's settings. The pool is rebuilt from them when the globals change, and shown as
    /// them (`document::pool_json`).
    pub keys: Vec<(String, String)>,
    pub origin: Origin,
}

/// Who defined a pool or a route. What the admin API defines lasts until the next reload or
/// restart, which read config.ini alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    #[default]
    File,
    Api,
    /// Read from etcd (`[etcd]`).
    Etcd,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::File => "config",
            Origin::Api => "admin",
            Origin::Etcd => "etcd",
        }
    }
}

impl PoolConf {
    /// A pool with the settings of `c` (the global ones, or those a pool section changed).
    pub fn from(name: &str, c: &Config) -> PoolConf {
        PoolConf {
            name: name.to_string(),
            strategy: c.lb.strategy,
            retries: c.lb.retries,
            sticky: c.lb.sticky,
            hash_key: c.lb.hash_key.clone(),
            connect: c.timeouts.connect,
            backend: c.timeouts.backend,
            max_body: c.limits.max_body,
            health: c.health.clone(),
            keys: Vec::new(),
            origin: Origin::File,
        }
    }

    /// The pool `name` that `keys` make over the global settings of `globals`: how config.ini's
    /// `[pool.NAME]` sections and the admin API's pool documents both become pools. The error
    /// names the first bad key.
    pub fn build(
        name: &str,
        keys: Vec<(String, String)>,
        globals: &Config,
    ) -> Result<PoolConf, String> {
        let mut own = globals.settings();
        for (key, value) in &keys {
            set_pool_key(&mut own, key, value).map_err(|e| format!("{key}: {e}"))?;
        }
        Ok(PoolConf {
            keys,
            ..PoolConf::from(name, &own)
        })
    }
}

/// Sets one pool key in `own` (a copy of the global settings) through the key table.
fn set_pool_key(own: &mut Config, key: &str, value: &str) -> Result<(), String> {
    match pool_key(key).and_then(|(section, name)| keys::find(section, name)) {
        Some(k) => k.set(own, value),
        None => Err("unknown pool key (expected strategy, retries, sticky, hash_key, connect_ms, backend_ms, max_body, or a [health] key prefixed health_)".into()),
    }
}

/// Whether pool key `key` takes a number (the admin API shows it as a JSON number).
pub fn pool_key_is_number(key: &str) -> bool {
    let known = pool_key(key).and_then(|(section, name)| keys::find(section, name));
    known.is_some_and(|k| matches!(k.value, keys::Value::Number { .. }))
}

/// A pool name: the backends' rule (it is a metric label and part of admin URLs).
pub fn check_pool_name(name: &str) -> Result<(), String> {
    backend::check_name(name)
        .map_err(|_| format!("{name:?} is not a pool name: 1 to 64 of A-Z a-z 0-9 _ . -"))
}

/// The pool `[backends]` fills.
pub const DEFAULT_POOL: &str = "default";

/// The keys a `[pool.NAME]` section takes, and the section each comes from: `[health]` keys
/// with a `health_` prefix, the others by their own name.
fn pool_key(key: &str) -> Option<(&'static str, &str)> {
    if let Some(health) = key.strip_prefix("health_") {
        return Some(("health", health));
    }
    let section = match key {
        "strategy" | "retries" | "sticky" | "hash_key" => "lb",
        "connect_ms" | "backend_ms" => "timeouts",
        "max_body" => "limits",
        _ => return None,
    };
    Some((section, key))
}

/// Most `[lb] retries`: it also bounds the backends one request tries (`balance::Tried`).
pub const MAX_RETRIES: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lb {
    /// Every address clients connect to (each worker listens on all of them).
    pub listen: Vec<SocketAddr>,
    /// Addresses clients connect to with TLS.
    pub tls_listen: Vec<SocketAddr>,
    pub workers: usize,
    pub strategy: Strategy,
    /// How many other backends a request may try when connecting fails.
    pub retries: u32,
    /// A response header naming the backend (`X-Backend: <name>`); `None`: off.
    pub expose_backend: Option<String>,
    /// The header that carries each request's id; `None`: off.
    pub request_id: Option<String>,
    /// Idle upstream connections kept per backend per worker.
    pub upstream_keepalive: usize,
    /// Idle upstream connections kept per worker over all backends.
    pub upstream_keepalive_total: usize,
    /// Retries allowed, as a percentage of requests.
    pub retry_budget: u32,
    /// On SIGTERM/SIGINT, how long requests in flight may take to finish.
    pub drain_timeout: Duration,
    pub sticky: Sticky,
    /// What the `hash` strategy hashes.
    pub hash_key: HashKey,
    /// `Server` header for every response; `None` passes the backend's through and sends none
    /// on lb-mio's own replies.
    pub server_header: Option<String>,
    /// Connections from `proxy_from` sources start with a PROXY protocol header.
    pub accept_proxy: bool,
    /// The balancers trusted to send a PROXY protocol header.
    pub proxy_from: Vec<Cidr>,
    /// A PROXY protocol header before every request to a backend (and every health probe).
    pub send_proxy: Option<Version>,
    /// Large plain bodies move socket to socket through kernel pipes (`pipe`), not buffers.
    pub splice: bool,
}

/// An address range, `10.0.0.0/8` or `::1/128` (a bare address is the range of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, width) = match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n).into(), u32::from(i).into(), 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = width - u32::from(self.bits);
        net.checked_shr(shift).unwrap_or(0) == ip.checked_shr(shift).unwrap_or(0)
    }
}

/// How a client is kept on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sticky {
    #[default]
    Off,
    /// A cookie names the backend; honoured while that backend is up.
    Cookie,
    /// The client address picks the backend: the `hash` strategy, whatever `strategy` says.
    ClientIp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    RoundRobin,
    LeastConn,
    WeightedRoundRobin,
    WeightedLeastConn,
    Random,
    WeightedRandom,
    P2c,
    Hash,
    Ewma,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// The client must send a whole request head within this.
    pub header: Duration,
    /// Idle keep-alive client connection.
    pub idle: Duration,
    /// Backend response, measured as time without progress.
    pub backend: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Per worker.
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Requests a second for all clients together (0: off), and the burst above it.
    pub rate: u32,
    pub rate_burst: u32,
    /// Requests a second for each client address (0: off), and the burst above it.
    pub client_rate: u32,
    pub client_burst: u32,
    /// Open connections per client address, over all workers (0: off).
    pub client_connections: u32,
    /// Largest request body in bytes (0: no limit); a pool may set its own.
    pub max_body: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Probe statuses that count as healthy.
    pub status: RangeInclusive<u16>,
    /// A probe slower than this fails (`None`: off).
    pub slow: Option<Duration>,
    /// A backend down this long is taken out of the pool for good (`None`: never).
    pub remove_after: Option<Duration>,
    /// Failures in a row on live traffic that mark a backend down at once (0: off).
    pub max_fails: u32,
    /// A recovered backend's share ramps up over this long (zero: at once).
    pub slow_start: Duration,
}

/// `[tls]`: how the TLS listeners handshake and what plain listeners do beside them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// New handshakes a worker starts per second; 0: no cap.
    pub handshake_rate: u32,
    /// Session ticket keys shared with other processes; `None`: lb-mio's own, rotated.
    pub ticket_key_file: Option<PathBuf>,
    /// TLS 1.2 sessions remembered by id, for clients without tickets; 0: none.
    pub session_cache: usize,
    /// Which plain listeners answer every request with a 308 to the same URL over https.
    pub redirect_http: RedirectHttp,
    /// The `Strict-Transport-Security` value for responses over TLS (`max-age=N`).
    pub hsts: Option<String>,
    /// The CAs that sign TLS backends' certificates; `None`: the system's bundle.
    pub backend_ca: Option<PathBuf>,
    /// TLS backends' certificates are checked (their CA and name).
    pub backend_verify: bool,
    /// The CAs that sign clients' certificates: with it, TLS listeners ask clients for one.
    pub client_ca: Option<PathBuf>,
    /// Without a certificate a client is refused (`required`) or served (`optional`).
    pub client_verify: ClientVerify,
}

/// A `[certificates]` line: `name = chain.pem key.pem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertConf {
    pub name: String,
    pub chain: PathBuf,
    pub key: PathBuf,
    /// `file:line` of the config line, for errors.
    pub origin: String,
}

/// `[tls] client_verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientVerify {
    #[default]
    Required,
    Optional,
}

/// `[tls] redirect_http`: which plain listeners send their requests to https.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RedirectHttp {
    #[default]
    Off,
    All,
    /// These `listen` addresses (as configured).
    Only(Vec<SocketAddr>),
}

impl RedirectHttp {
    /// Requests to the plain listener configured as `listen` redirect.
    pub fn covers(&self, listen: SocketAddr) -> bool {
        match self {
            RedirectHttp::Off => false,
            RedirectHttp::All => true,
            RedirectHttp::Only(addrs) => addrs.contains(&listen),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admin {
    /// `None` when the admin listener is off.
    pub listen: Option<SocketAddr>,
    /// Bearer token the admin API requires; without one it answers loopback clients only.
    pub token: Option<String>,
    /// Where backend changes made through the admin API are kept across restarts.
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub level: LevelFilter,
    pub access_log: AccessLog,
    /// Where the access log goes; `None`: stderr.
    pub access_log_file: Option<PathBuf>,
}

/// The access log's format, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Text,
    /// One JSON object a line.
    Json,
}

/// `[dns]`: the resolver service discovery asks, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// One DNS server (UDP, and TCP for truncated answers); `None`: the first `nameserver` of
    /// /etc/resolv.conf, read at each lookup round (127.0.0.1:53 without one).
    pub resolver: Option<SocketAddr>,
    /// Every discovered entry is looked up again this often.
    pub resolve_interval: Duration,
    /// One lookup (A and AAAA together, or SRV) gives up after this.
    pub timeout: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            resolver: None,
            resolve_interval: Duration::from_secs(5),
            timeout: Duration::from_millis(1000),
        }
    }
}

/// Longest name of a discovered entry: the backends it makes are named
/// `<entry>-<address>-<port>` (up to 46 more characters for IPv6) within the 64 a name may have.
pub const MAX_DISCOVER_NAME: usize = 18;

/// A `[backends]` entry whose addresses come from DNS: each address found becomes a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discover {
    pub name: String,
    /// The pool its backends join.
    pub pool: String,
    pub target: Target,
    pub weight: u32,
    /// TLS to the backends it finds, their certificates checked against this name.
    pub tls: Option<String>,
    /// Its backends are backups.
    pub backup: bool,
}

/// What a discovered entry looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port`: the A and AAAA records of `host` (lowercase, no final dot), on `port`.
    Host(String, u16),
    /// `srv:NAME`: the SRV records of `NAME`, then their targets' addresses, on their ports.
    Srv(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Host(host, port) => write!(f, "{host}:{port}"),
            Target::Srv(name) => write!(f, "srv:{name}"),
        }
    }
}

/// `key` holds the section too (`[lb] workers`, or `[backends]` for a
/// section-level error); it is empty for syntax and I/O errors. `line` is 0
/// when no line applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Strategy {
    pub const ALL: [Strategy; 9] = [
        Strategy::RoundRobin,
        Strategy::LeastConn,
        Strategy::WeightedRoundRobin,
        Strategy::WeightedLeastConn,
        Strategy::Random,
        Strategy::WeightedRandom,
        Strategy::P2c,
        Strategy::Hash,
        Strategy::Ewma,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastConn => "least_conn",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::WeightedLeastConn => "weighted_least_conn",
            Strategy::Random => "random",
            Strategy::WeightedRandom => "weighted_random",
            Strategy::P2c => "p2c",
            Strategy::Hash => "hash",
            Strategy::Ewma => "ewma",
        }
    }
}

impl Default for Lb {
    fn default() -> Self {
        Lb {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            tls_listen: Vec::new(),
            workers: auto_workers(),
            strategy: Strategy::RoundRobin,
            retries: 2,
            expose_backend: None,
            request_id: None,
            upstream_keepalive: 256,
            upstream_keepalive_total: 1024,
            retry_budget: 20,
            drain_timeout: Duration::from_secs(10),
            sticky: Sticky::Off,
            hash_key: HashKey::ClientIp,
            server_header: None,
            accept_proxy: false,
            splice: true,
            proxy_from: Vec::new(),
            send_proxy: None,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_millis(3_000),
            header: Duration::from_millis(10_000),
            idle: Duration::from_millis(60_000),
            backend: Duration::from_millis(30_000),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 8192,
            max_headers: 64,
            rate: 0,
            rate_burst: 0,
            client_rate: 0,
            client_burst: 0,
            client_connections: 0,
            max_body: 0,
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: "/healthcheck".to_string(),
            interval: Duration::from_millis(2_000),
            timeout: Duration::from_millis(1_000),
            rise: 2,
            fall: 3,
            status: 200..=399,
            slow: None,
            remove_after: None,
            max_fails: 3,
            slow_start: Duration::ZERO,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: LevelFilter::Info,
            access_log: AccessLog::Off,
            access_log_file: None,
        }
    }
}

impl Config {
    /// An unreadable file is reported with line 0.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &file),
            Err(e) => Err(ConfigError {
                file,
                line: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// `file` is only used to label errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut parser = Parser::new(file);
        for (i, raw) in text.lines().enumerate() {
            parser.feed(i + 1, raw)?;
        }
        parser.finish()
    }

    /// All defaults plus `backends`.
    pub fn with_backends(backends: Vec<BackendConf>) -> Config {
        Config {
            lb: Lb::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            health: Health::default(),
            admin: Admin::default(),
            log: Log::default(),
            backends,
            dns: Dns::default(),
            discover: Vec::new(),
            tls: Tls {
                session_cache: DEFAULT_SESSION_CACHE,
                backend_verify: true,
                ..Tls::default()
            },
            certificates: Vec::new(),
            pools: Vec::new(),
            routes: Vec::new(),
            etcd: Etcd::default(),
            stored: Stored::default(),
        }
        .pools_from_globals()
    }

    /// Every pool made anew from its own keys over the global settings (after the parser or
    /// code changed them), the pool `default` first when `[backends]` has entries (a
    /// `[pool.default]` section only gives it keys).
    pub fn pools_from_globals(mut self) -> Config {
        let mut declared = std::mem::take(&mut self.pools);
        let default =
            (declared.iter().position(|p| p.name == DEFAULT_POOL)).map(|at| declared.remove(at));
        if self.has_backends(DEFAULT_POOL) || self.etcd.is_on() {
            declared.insert(
                0,
                default.unwrap_or_else(|| PoolConf::from(DEFAULT_POOL, &self)),
            );
        }
        self.pools = (declared.into_iter())
            .map(|p| match PoolConf::build(&p.name, p.keys.clone(), &self) {
                Ok(built) => PoolConf {
                    origin: p.origin,
                    ..built
                },
                // Cannot happen: a key's checks do not depend on the globals, and every key was
                // checked when it was read.
                Err(_) => p,
            })
            .collect();
        self
    }

    /// Whether pool `pool` has backends: addresses, or entries to look up.
    fn has_backends(&self, pool: &str) -> bool {
        self.backends.iter().any(|b| b.pool == pool) || self.discover.iter().any(|d| d.pool == pool)
    }

    /// The settings pools may change, without the backends.
    fn settings(&self) -> Config {
        Config {
            lb: self.lb.clone(),
            timeouts: self.timeouts.clone(),
            limits: self.limits.clone(),
            health: self.health.clone(),
            ..Config::with_backends(Vec::new())
        }
    }

    /// The pool called `name`, by position.
    pub fn pool(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}

/// The section whose keys are backend names (parsed by `set_backend`, not from the key table).
const BACKENDS: &str = "backends";
/// The section whose keys are certificate names (parsed by `set_certificate`).
const CERTIFICATES: &str = "certificates";
/// `[tls] session_cache` when unset.
pub const DEFAULT_SESSION_CACHE: usize = 20_000;

struct Parser<'a> {
    file: &'a str,
    config: Config,
    /// Current section name.
    section: Option<&'a str>,
    /// Header line of each section seen, to reject repeats and to point
    /// the "no backends" error at `[backends]`.
    headers: HashMap<&'a str, usize>,
    /// Line of each `(section, key)` seen, to reject duplicates.
    keys: HashMap<(&'a str, &'a str), usize>,
    /// The pool of each backend name: names are unique over all pools.
    names: HashMap<&'a str, &'a str>,
}

/// What a section's name makes it.
#[derive(Clone, Copy)]
enum Section<'a> {
    /// `[lb]`, `[health]`, ... : keys from the key table.
    Fixed(&'a str),
    /// `[backends]` or `[pool.NAME.backends]`: keys are backend names.
    Backends(&'a str),
    Certificates,
    /// `[pool.NAME]`: the pool's own settings.
    Pool(&'a str),
    /// `[route.NAME]`.
    Route,
}

impl<'a> Section<'a> {
    fn of(name: &'a str) -> Section<'a> {
        if name == BACKENDS {
            return Section::Backends(DEFAULT_POOL);
        }
        if name == CERTIFICATES {
            return Section::Certificates;
        }
        if let Some(pool) = name.strip_prefix("pool.") {
            return match pool.strip_suffix(".backends") {
                Some(pool) => Section::Backends(pool),
                None => Section::Pool(pool),
            };
        }
        match name.strip_prefix("route.") {
            Some(_) => Section::Route,
            None => Section::Fixed(name),
        }
    }
}

enum Line<'a> {
    Blank,
    Section(&'a str),
    Pair(&'a str, &'a str),
}

impl<'a> Parser<'a> {
    fn new(file: &'a str) -> Self {
        Parser {
            file,
            config: Config::with_backends(Vec::new()),
            section: None,
            headers: HashMap::new(),
            keys: HashMap::new(),
            names: HashMap::new(),
        }
    }

    fn error(&self, line: usize, key: String, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line,
            key,
            message,
        }
    }

    fn feed(&mut self, line: usize, raw: &'a str) -> Result<(), ConfigError> {
        match split_line(raw) {
            Ok(Line::Blank) => Ok(()),
            Ok(Line::Section(name)) => self.enter(line, name),
            Ok(Line::Pair(key, value)) => self.set(line, key, value),
            Err(message) => Err(self.error(line, String::new(), message)),
        }
    }

    fn enter(&mut self, line: usize, name: &'a str) -> Result<(), ConfigError> {
        let label = format!("[{name}]");
        if let Some(first) = self.headers.insert(name, line) {
            let message = format!("duplicate section (first at line {first})");
            return Err(self.error(line, label, message));
        }
        let entered = match Section::of(name) {
            Section::Fixed(name) if !keys::sections().contains(&name) => {
                let mut known = keys::sections();
                known.extend([
                    BACKENDS,
                    CERTIFICATES,
                    "pool.NAME",
                    "pool.NAME.backends",
                    "route.NAME",
                ]);
                Err(format!(
                    "unknown section (expected one of {})",
                    known.join(", ")
                ))
            }
            Section::Backends(pool) | Section::Pool(pool) => self.declare_pool(pool),
            Section::Route => RouteConf::new(&name["route.".len()..]).map(|route| {
                self.config.routes.push(route);
            }),
            Section::Fixed(_) | Section::Certificates => Ok(()),
        };
        entered.map_err(|message| self.error(line, label, message))?;
        self.section = Some(name);
        Ok(())
    }

    /// A pool named by a section header (its settings or its backends, in either order).
    /// Its settings are made at the end (`pools_from_globals`), once the globals are known.
    fn declare_pool(&mut self, pool: &'a str) -> Result<(), String> {
        check_pool_name(pool)?;
        if self.config.pool(pool).is_none() {
            let declared = PoolConf::from(pool, &self.config);
            self.config.pools.push(declared);
        }
        Ok(())
    }

    fn set(&mut self, line: usize, key: &'a str, value: &'a str) -> Result<(), ConfigError> {
        let Some(section) = self.section else {
            let message = "key outside any [section]".to_string();
            return Err(self.error(line, key.to_string(), message));
        };
        let label = format!("[{section}] {key}");
        if let Some(first) = self.keys.insert((section, key), line) {
            let what = match Section::of(section) {
                Section::Backends(_) => "backend name",
                Section::Certificates => "certificate name",
                _ => "key",
            };
            let message = format!("duplicate {what} (first at line {first})");
            return Err(self.error(line, label, message));
        }
        let set = match Section::of(section) {
            Section::Backends(pool) => self.set_backend(pool, key, value),
            Section::Certificates => {
                let origin = format!("{}:{line}", self.file);
                set_certificate(&mut self.config, key, value, origin)
            }
            Section::Pool(pool) => self.set_pool_key(pool, key, value),
            Section::Route => {
                let route = self
                    .config
                    .routes
                    .last_mut()
                    .expect("entered with its section");
                route::parse_key(route, key, value)
            }
            Section::Fixed(section) => match keys::find(section, key) {
                Some(k) => k.set(&mut self.config, value),
                None => Err("unknown key".to_string()),
            },
        };
        set.map_err(|message| self.error(line, label, message))
    }

    fn set_backend(&mut self, pool: &'a str, name: &'a str, v: &str) -> Result<(), String> {
        if let Some(other) = self.names.insert(name, pool) {
            return Err(format!(
                "backend name already used in pool {other} (names are unique over all pools)"
            ));
        }
        set_backend(&mut self.config, pool, name, v)
    }

    /// Checks a pool setting now (so its error names its line) and keeps it for the end.
    fn set_pool_key(&mut self, pool: &str, key: &str, v: &str) -> Result<(), String> {
        set_pool_key(&mut Config::with_backends(Vec::new()), key, v)?;
        let at = self.config.pool(pool).expect("declared with its section");
        self.config.pools[at]
            .keys
            .push((key.to_string(), v.to_string()));
        Ok(())
    }

    fn finish(mut self) -> Result<Config, ConfigError> {
        self.check_etcd()?;
        let etcd = self.config.etcd.is_on();
        if self.config.backends.is_empty() && self.config.discover.is_empty() && !etcd {
            let line = self.headers.get("backends").copied().unwrap_or(0);
            let message = "at least one backend is required".to_string();
            return Err(self.error(line, "[backends]".to_string(), message));
        }
        self.config = std::mem::replace(&mut self.config, Config::with_backends(Vec::new()))
            .pools_from_globals();
        self.check_pools_and_routes()?;
        let lb = &self.config.lb;
        if lb.accept_proxy && lb.proxy_from.is_empty() {
            // Trusting a PROXY header from anyone would let any client pick its own address.
            let line = self.keys.get(&("lb", "accept_proxy")).copied().unwrap_or(0);
            let message = "needs [lb] proxy_from: the balancers trusted to send it".to_string();
            return Err(self.error(line, "[lb] accept_proxy".to_string(), message));
        }
        if lb.tls_listen.is_empty() != self.config.certificates.is_empty() {
            // Either alone is a mistake: a TLS listener with nothing to serve, or
            // certificates no listener serves.
            let (line, key, message) = match lb.tls_listen.is_empty() {
                true => (
                    self.headers.get(CERTIFICATES).copied().unwrap_or(0),
                    "[certificates]",
                    "needs [lb] tls_listen: the addresses that serve them",
                ),
                false => (
                    self.keys.get(&("lb", "tls_listen")).copied().unwrap_or(0),
                    "[lb] tls_listen",
                    "needs a [certificates] section with at least one certificate",
                ),
            };
            return Err(self.error(line, key.to_string(), message.to_string()));
        }
        let redirect = &self.config.tls.redirect_http;
        if *redirect != RedirectHttp::Off && lb.tls_listen.is_empty() {
            let line = self
                .keys
                .get(&("tls", "redirect_http"))
                .copied()
                .unwrap_or(0);
            let message = "needs [lb] tls_listen: where to send the requests".to_string();
            return Err(self.error(line, "[tls] redirect_http".to_string(), message));
        }
        if let RedirectHttp::Only(addrs) = redirect {
            if let Some(addr) = addrs.iter().find(|a| !lb.listen.contains(a)) {
                let line = self
                    .keys
                    .get(&("tls", "redirect_http"))
                    .copied()
                    .unwrap_or(0);
                let message = format!("{addr} is not in [lb] listen");
                return Err(self.error(line, "[tls] redirect_http".to_string(), message));
            }
        }
        // (Port 0 twice is two ports, each the kernel's choice.)
        let shared = |a: &&SocketAddr| a.port() != 0 && lb.listen.contains(a);
        if let Some(addr) = lb.tls_listen.iter().find(shared) {
            let line = self.keys.get(&("lb", "tls_listen")).copied().unwrap_or(0);
            let message = format!("{addr} is also in [lb] listen");
            return Err(self.error(line, "[lb] tls_listen".to_string(), message));
        }
        let admin = &self.config.admin;
        if admin.listen.is_some_and(|a| !a.ip().is_loopback()) && admin.token.is_none() {
            // The admin API changes the pool: off loopback it must ask who is calling.
            let line = self.keys.get(&("admin", "listen")).copied().unwrap_or(0);
            let message = "a non-loopback address needs [admin] token".to_string();
            return Err(self.error(line, "[admin] listen".to_string(), message));
        }
        Ok(self.config)
    }
}

impl Parser<'_> {
    /// `[etcd]` is whole: its other keys need `endpoints`, a client certificate its key, a
    /// user a password.
    fn check_etcd(&self) -> Result<(), ConfigError> {
        let etcd = &self.config.etcd;
        let fail = |key: &str, message: &str| {
            let line = self.keys.get(&("etcd", key)).copied().unwrap_or(0);
            Err(self.error(line, format!("[etcd] {key}"), message.into()))
        };
        if !etcd.is_on() {
            let set = self.keys.keys().find(|(section, _)| *section == "etcd");
            return match set {
                Some((_, key)) => fail(key, "needs [etcd] endpoints"),
                None => Ok(()),
            };
        }
        if etcd.cert.is_some() != etcd.key.is_some() {
            let key = if etcd.cert.is_some() { "cert" } else { "key" };
            return fail(key, "a client certificate needs both cert and key");
        }
        if etcd.cert.is_some() && etcd.ca.is_none() {
            return fail(
                "cert",
                "needs [etcd] ca: a client certificate is for TLS to etcd",
            );
        }
        if etcd.user.is_some() != etcd.password.is_some() {
            let key = if etcd.user.is_some() {
                "user"
            } else {
                "password"
            };
            return fail(key, "etcd auth needs both user and password");
        }
        Ok(())
    }

    /// Every pool has backends, and every route is whole and names pools that exist.
    fn check_pools_and_routes(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let default_section = format!("pool.{DEFAULT_POOL}");
        if let Some(&line) = self
            .headers
            .get(default_section.as_str())
            .filter(|_| c.pool(DEFAULT_POOL).is_none())
        {
            let message = "pool default has no backends: add [backends]".to_string();
            return Err(self.error(line, format!("[{default_section}]"), message));
        }
        // With etcd, backends may come from the store and register themselves later.
        for pool in c.pools.iter().filter(|_| !c.etcd.is_on()) {
            if !c.has_backends(&pool.name) {
                let section = format!("pool.{}", pool.name);
                let line = self.headers.get(section.as_str()).copied().unwrap_or(0);
                let message = format!(
                    "pool {} has no backends: add [pool.{}.backends]",
                    pool.name, pool.name
                );
                return Err(self.error(line, format!("[{section}]"), message));
            }
        }
        let mut routed = vec![false; c.pools.len()];
        for route in &c.routes {
            let section = format!("route.{}", route.name);
            let line = self.headers.get(section.as_str()).copied().unwrap_or(0);
            if let Err(message) = route.check() {
                return Err(self.error(line, format!("[{section}]"), message));
            }
            if let Err((key, message)) = route.fits(c) {
                let line = (self.keys.get(&(section.as_str(), key)).copied()).unwrap_or(line);
                return Err(self.error(line, format!("[{section}] {key}"), message));
            }
            for name in route.pool_names() {
                match c.pool(name) {
                    Some(pool) => routed[pool] = true,
                    None => {
                        let line = self
                            .keys
                            .get(&(section.as_str(), "pool"))
                            .copied()
                            .unwrap_or(line);
                        let message = format!("no pool {name:?}");
                        return Err(self.error(line, format!("[{section}] pool"), message));
                    }
                }
            }
        }
        for (pool, routed) in c.pools.iter().zip(routed) {
            if !routed && pool.name != DEFAULT_POOL {
                log::warn!(
                    "{}: pool {} gets no traffic: no route names it",
                    self.file,
                    pool.name
                );
            }
        }
        Ok(())
    }
}

fn split_line(raw: &str) -> Result<Line<'_>, String> {
    let line = strip_comment(raw).trim();
    if line.is_empty() {
        return Ok(Line::Blank);
    }
    if let Some(name) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return Ok(Line::Section(name));
    }
    match line.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok(Line::Pair(key.trim(), value.trim())),
        _ => Err(format!(
            "expected \"key = value\" or \"[section]\", got {line:?}"
        )),
    }
}

/// A `;` or `#` starts a comment only at line start or after whitespace, so
/// values such as `/health#x` survive.
fn strip_comment(line: &str) -> &str {
    let mut after_space = true;
    for (i, c) in line.char_indices() {
        if after_space && (c == ';' || c == '#') {
            return &line[..i];
        }
        after_space = c.is_whitespace();
    }
    line
}

/// `ip:port` or `ip` (port 53) of a DNS server.
fn parse_resolver(v: &str) -> Result<SocketAddr, String> {
    let addr = v
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .or_else(|_| v.parse::<SocketAddr>())
        .map_err(|_| format!("expected ip or ip:port of a DNS server, got {v:?}"))?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(format!("{v:?} cannot be asked"));
    }
    Ok(addr)
}

/// In `[backends]` the key is the backend name; the value an address, or a host name or SRV
/// name to look up in DNS.
fn set_backend(c: &mut Config, pool: &str, name: &str, v: &str) -> Result<(), String> {
    if c.backends.len() + c.discover.len() == MAX_BACKENDS {
        return Err(format!("at most {MAX_BACKENDS} backends"));
    }
    let first = v.split_whitespace().next().unwrap_or("");
    if first.parse::<SocketAddr>().is_ok() || !looks_like_a_name(first) {
        c.backends.push(parse_backend(pool, name, v)?);
    } else {
        c.discover.push(parse_discover(pool, name, v)?);
    }
    Ok(())
}

/// In `[certificates]` the key is the certificate's name; the value its full-chain PEM file,
/// then its key PEM file. The files are read when lb-mio starts or reloads (and by `--check`).
fn set_certificate(c: &mut Config, name: &str, v: &str, origin: String) -> Result<(), String> {
    if c.certificates.len() == MAX_CERTIFICATES {
        return Err(format!("at most {MAX_CERTIFICATES} certificates"));
    }
    // The name is a metric label and an admin API key: the backends' rule suits it.
    backend::check_name(name).map_err(|e| e.replace("backend", "certificate"))?;
    let files: Vec<&str> = v.split_whitespace().collect();
    let [chain, key] = files[..] else {
        return Err("expected the full-chain PEM file, then the key PEM file".to_string());
    };
    c.certificates.push(CertConf {
        name: name.to_string(),
        chain: PathBuf::from(chain),
        key: PathBuf::from(key),
        origin,
    });
    Ok(())
}

/// Most `[certificates]` entries.
pub const MAX_CERTIFICATES: usize = 256;

/// `host:port` where `host` is no IP literal, or `srv:NAME`: worth reading as a DNS entry (so
/// `1.2.3.4` and `[::1]` keep the address errors they always had).
fn looks_like_a_name(v: &str) -> bool {
    v.starts_with("srv:")
        || v.rsplit_once(':')
            .is_some_and(|(host, _)| !host.starts_with('[') && host.parse::<IpAddr>().is_err())
}

/// `host:port [weight=N]` or `srv:NAME [weight=N]`.
fn parse_discover(pool: &str, name: &str, v: &str) -> Result<Discover, String> {
    backend::check_name(name)?;
    if name.len() > MAX_DISCOVER_NAME {
        return Err(format!(
            "a backend name with a host to look up may have at most {MAX_DISCOVER_NAME} characters (its addresses are named NAME-ADDRESS-PORT)"
        ));
    }
    let mut words = v.split_whitespace();
    let target = parse_target(words.next().unwrap_or(""))?;
    // An SRV record names a host of its own for each backend: `tls` needs a name given.
    let host = match &target {
        Target::Host(host, _) => Some(host.as_str()),
        Target::Srv(_) => None,
    };
    let words = parse_backend_words(words, host)?;
    Ok(Discover {
        name: name.to_string(),
        pool: pool.to_string(),
        target,
        weight: words.weight,
        tls: words.tls,
        backup: words.backup,
    })
}

fn parse_target(v: &str) -> Result<Target, String> {
    if let Some(srv) = v.strip_prefix("srv:") {
        return dns::check_name(srv)
            .map(Target::Srv)
            .map_err(|_| format!("expected srv:NAME with a valid DNS name, got {v:?}"));
    }
    let bad = || format!("expected ip:port, host:port or srv:NAME, got {v:?}");
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let host = dns::check_name(host).map_err(|_| bad())?;
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Target::Host(host, port)),
        _ => Err(bad()),
    }
}

fn parse_range<T>(v: &str, min: T, max: T) -> Result<T, String>
where
    T: FromStr + PartialOrd + fmt::Display,
{
    match v.parse() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("expected a number {min}..={max}, got {v:?}")),
    }
}

/// A bearer token: 16 or more visible ASCII characters, so it fits a header unquoted.
fn parse_token(v: &str) -> Result<String, String> {
    if v.len() < 16 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("expected 16 or more visible ASCII characters".to_string());
    }
    Ok(v.to_string())
}

/// A `Server` value: printable ASCII, so it cannot end the header line or the head.
fn parse_server_header(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > 128 || !v.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err("expected up to 128 printable ASCII characters".to_string());
    }
    Ok(Some(v.to_string()))
}

pub fn parse_hash_key(v: &str) -> Result<HashKey, String> {
    let token = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match v.split_once(':') {
        None if v == "client_ip" => Ok(HashKey::ClientIp),
        Some(("header", name)) if token(name) => Ok(HashKey::Header(name.to_string())),
        Some(("cookie", name)) if token(name) => Ok(HashKey::Cookie(name.to_string())),
        _ => Err(format!(
            "expected client_ip, header:NAME or cookie:NAME, got {v:?}"
        )),
    }
}

fn parse_sticky(v: &str) -> Result<Sticky, String> {
    match v {
        "off" => Ok(Sticky::Off),
        "cookie" => Ok(Sticky::Cookie),
        "client_ip" => Ok(Sticky::ClientIp),
        _ => Err(format!("expected off, cookie or client_ip, got {v:?}")),
    }
}

fn off_if_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// `200-399`: the statuses a health probe accepts.
fn parse_status_range(v: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("expected a status range like 200-399 (100..=599), got {v:?}");
    let (lo, hi) = v.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(lo..=599).contains(&hi) {
        return Err(bad());
    }
    Ok(lo..=hi)
}

fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    // Literal addresses only: a name resolved once at startup would go stale
    // silently, and the event loop must never block on DNS.
    v.parse()
        .map_err(|_| format!("expected ip:port, got {v:?}"))
}

/// Addresses separated by spaces or commas, at most `MAX_LISTEN`, no repeats.
pub fn parse_listen(v: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs = parse_list(v, parse_addr)?;
    if addrs.is_empty() || addrs.len() > MAX_LISTEN {
        return Err(format!("expected 1 to {MAX_LISTEN} ip:port addresses"));
    }
    if let Some(twice) = addrs
        .iter()
        .find(|a| addrs.iter().filter(|b| b == a).count() > 1)
    {
        return Err(format!("{twice} is listed twice"));
    }
    Ok(addrs)
}

/// etcd members: `host:port` each (a name or an address; `[v6]:port`).
fn parse_endpoints(v: &str) -> Result<Vec<String>, String> {
    let endpoint = |e: &str| {
        let bad = || format!("expected host:port, got {e:?}");
        let (host, port) = e.rsplit_once(':').ok_or_else(bad)?;
        let named = !host.is_empty() && host.bytes().all(|b| b.is_ascii_graphic());
        match (named, port.parse::<u16>()) {
            (true, Ok(port)) if port != 0 => Ok(e.to_string()),
            _ => Err(bad()),
        }
    };
    let list = parse_list(v, endpoint)?;
    match list.is_empty() {
        true => Err("expected one or more host:port".into()),
        false => Ok(list),
    }
}

/// A key prefix that starts and ends with `/`, so that lb-mio's keys sit apart from others'.
fn parse_prefix(v: &str) -> Result<String, String> {
    let visible = v.bytes().all(|b| b.is_ascii_graphic());
    match v.len() > 1 && v.starts_with('/') && v.ends_with('/') && visible {
        true => Ok(v.to_string()),
        false => Err(format!(
            "expected a prefix starting and ending with '/', got {v:?}"
        )),
    }
}

/// A name or secret of visible ASCII characters.
fn parse_visible(v: &str) -> Result<String, String> {
    match !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()) {
        true => Ok(v.to_string()),
        false => Err("expected visible ASCII characters".into()),
    }
}

fn parse_list<T>(v: &str, item: fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(item)
        .collect()
}

pub fn parse_cidr(v: &str) -> Result<Cidr, String> {
    let bad = || format!("expected an address or address/bits, got {v:?}");
    let (ip, bits) = v.split_once('/').unwrap_or((v, ""));
    let net: IpAddr = ip.parse().map_err(|_| bad())?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        "" => max,
        bits => bits.parse().ok().filter(|&b| b <= max).ok_or_else(bad)?,
    };
    Ok(Cidr { net, bits })
}

fn parse_send_proxy(v: &str) -> Result<Option<Version>, String> {
    match v {
        "off" => Ok(None),
        "v1" => Ok(Some(Version::V1)),
        "v2" => Ok(Some(Version::V2)),
        _ => Err(format!("expected off, v1 or v2, got {v:?}")),
    }
}

fn parse_optional_addr(v: &str) -> Result<Option<SocketAddr>, String> {
    if v == "off" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("expected ip:port or \"off\", got {v:?}"))
}

/// `off`, `on` (every plain listener), or the `listen` addresses that redirect.
fn parse_redirect_http(v: &str) -> Result<RedirectHttp, String> {
    match parse_bool(v) {
        Ok(true) => Ok(RedirectHttp::All),
        Ok(false) => Ok(RedirectHttp::Off),
        Err(_) => parse_listen(v)
            .map(RedirectHttp::Only)
            .map_err(|_| format!("expected on, off, or [lb] listen addresses, got {v:?}")),
    }
}

fn parse_client_verify(v: &str) -> Result<ClientVerify, String> {
    match v {
        "required" => Ok(ClientVerify::Required),
        "optional" => Ok(ClientVerify::Optional),
        _ => Err(format!("expected required or optional, got {v:?}")),
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(format!("expected true|false|on|off|yes|no|1|0, got {v:?}")),
    }
}

/// `off`, `on` (the header named `on`) or a header name (an RFC 9110 token, at most 64 characters); the
/// other spellings of a bool mean what they mean for one.
fn parse_header_name(v: &str, on: &str) -> Result<Option<String>, String> {
    match parse_bool(v) {
        Ok(true) => Ok(Some(on.to_string())),
        Ok(false) => Ok(None),
        Err(_) if reserved_header(v) => Err(format!(
            "{v:?} frames or routes the message, or lb-mio sets it: choose another header"
        )),
        Err(_) if (1..=MAX_HEADER_NAME).contains(&v.len()) && v.bytes().all(is_token) => {
            Ok(Some(v.to_string()))
        }
        Err(_) => Err(format!(
            "expected off, on or a header name (1 to {MAX_HEADER_NAME} of A-Z a-z 0-9 !#$%&'*+-.^_`|~), got {v:?}"
        )),
    }
}

fn reserved_header(name: &str) -> bool {
    let set_per_hop = HOP_BY_HOP.iter().chain(&FORWARDING_HEADERS);
    let mut all = RESERVED_HEADERS.iter().chain(set_per_hop);
    all.any(|h| name.eq_ignore_ascii_case(h))
}

/// `off`, `text` or `json`; a bool's other spellings keep meaning off and (for true) text.
fn parse_access_log(v: &str) -> Result<AccessLog, String> {
    match v {
        "text" => Ok(AccessLog::Text),
        "json" => Ok(AccessLog::Json),
        _ => match parse_bool(v) {
            Ok(true) => Ok(AccessLog::Text),
            Ok(false) => Ok(AccessLog::Off),
            Err(_) => Err(format!(
                "expected off, text or json (or true|false|on|yes|no|1|0), got {v:?}"
            )),
        },
    }
}

fn parse_workers(v: &str) -> Result<usize, String> {
    if v == "auto" {
        return Ok(auto_workers());
    }
    parse_range(v, 1, MAX_WORKERS)
        .map_err(|_| format!("expected a number 1..={MAX_WORKERS} or \"auto\", got {v:?}"))
}

/// One worker per available CPU, kept within the bound an explicit count has.
fn auto_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(MAX_WORKERS)
}

fn parse_strategy(v: &str) -> Result<Strategy, String> {
    Strategy::ALL
        .into_iter()
        .find(|s| s.name() == v)
        .ok_or_else(|| {
            let names: Vec<&str> = Strategy::ALL.iter().map(Strategy::name).collect();
            format!("expected one of {}, got {v:?}", names.join(", "))
        })
}

/// Exact lowercase names: `LevelFilter::from_str` would also accept `INFO`.
fn parse_level(v: &str) -> Result<LevelFilter, String> {
    match v {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(format!(
            "expected off|error|warn|info|debug|trace, got {v:?}"
        )),
    }
}

/// The path goes verbatim into a request line, so it must not break it.
fn parse_path(v: &str) -> Result<String, String> {
    let clean = !v.chars().any(|c| c.is_whitespace() || c.is_control());
    if v.starts_with('/') && clean {
        Ok(v.to_string())
    } else {
        Err(format!(
            "expected a path starting with '/' without spaces or control characters, got {v:?}"
        ))
    }
}

/// `ip:port [weight=N] [tls | tls=NAME] [backup]`.
fn parse_backend(pool: &str, name: &str, v: &str) -> Result<BackendConf, String> {
    backend::check_name(name)?;
    let mut words = v.split_whitespace();
    let addr = backend::parse_addr(words.next().unwrap_or(""))?;
    let words = parse_backend_words(words, Some(&addr.ip().to_string()))?;
    Ok(BackendConf {
        name: name.to_string(),
        addr,
        weight: words.weight,
        tls: words.tls,
        pool: pool.to_string(),
        backup: words.backup,
    })
}

/// What the words after a backend's address say.
struct BackendWords {
    weight: u32,
    tls: Option<String>,
    backup: bool,
}

/// The words after a backend's address, each at most once: `weight=N` (default 1), `tls`
/// or `tls=NAME` (TLS to it, its certificate checked against NAME; `tls` alone against
/// `tls_name`, the address or host it was given by, when it has one), and `backup` (traffic
/// only while no other backend of its pool is up).
fn parse_backend_words<'a>(
    words: impl Iterator<Item = &'a str>,
    tls_name: Option<&str>,
) -> Result<BackendWords, String> {
    let (mut weight, mut tls, mut backup) = (None, None, false);
    for word in words {
        match word {
            "backup" if !backup => backup = true,
            "tls" if tls.is_none() => {
                let name = tls_name.ok_or("tls needs a name here: tls=NAME")?;
                tls = Some(name.to_string());
            }
            _ if word.starts_with("tls=") && tls.is_none() => {
                tls = Some(parse_server_name(&word["tls=".len()..])?)
            }
            _ if word.starts_with("weight=") && weight.is_none() => {
                weight = Some(parse_weight(word)?)
            }
            _ => {
                return Err(format!(
                    "unexpected {word:?} (expected weight=N, tls, tls=NAME or backup)"
                ))
            }
        }
    }
    Ok(BackendWords {
        weight: weight.unwrap_or(1),
        tls,
        backup,
    })
}

/// The name a TLS backend's certificate must have: a DNS name or an IP address.
pub fn parse_server_name(v: &str) -> Result<String, String> {
    rustls::pki_types::ServerName::try_from(v)
        .map(|_| v.to_string())
        .map_err(|_| format!("tls={v:?}: expected a DNS name or an IP address"))
}

fn parse_weight(word: &str) -> Result<u32, String> {
    let Some(n) = word.strip_prefix("weight=") else {
        return Err(format!(
            "expected \"weight=N\" after the address, got {word:?}"
        ));
    };
    n.parse()
        .ok()
        .and_then(backend::check_weight)
        .ok_or_else(|| format!("expected weight={WEIGHTS:?}, got {word:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[backends]\ns1 = 127.0.0.1:9001\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "config.ini")
    }

    fn backend(name: &str, addr: &str, weight: u32) -> BackendConf {
        BackendConf {
            name: name.to_string(),
            addr: addr.parse().unwrap(),
            weight,
            tls: None,
            pool: "default".into(),
            backup: false,
        }
    }

    #[test]
    fn full_example() {
        let text = "\
[lb]
listen = [::1]:8081, 127.0.0.1:8081
tls_listen = 127.0.0.1:8443
workers = 4
strategy = least_conn
retries = 0
expose_backend = yes
request_id = X-Trace-Id
upstream_keepalive = 0
retry_budget = 50
server_header = edge/2 (test)
accept_proxy = on
proxy_from = 10.0.0.0/8 ::1
send_proxy = v2
splice = off

[timeouts]
connect_ms = 1
header_ms = 2
idle_ms = 3
backend_ms = 3600000

[limits]
max_connections = 1
max_header_bytes = 15360
max_headers = 8
rate = 1000
rate_burst = 2000
client_rate = 10
client_burst = 20

[health]
path = /status?full=1
interval_ms = 10
timeout_ms = 5
rise = 1
fall = 100
status = 200-204
slow_ms = 250
remove_after_s = 60
max_fails = 0
slow_start_s = 30

[admin]
listen = 127.0.0.1:9900

[log]
level = trace
access_log = json
access_log_file = /var/log/lb-mio/access.log

[dns]
resolver = [::1]:5353
resolve_interval_s = 3600
timeout_ms = 10

[tls]
handshake_rate = 500
ticket_key_file = /etc/lb-mio/tickets.key
session_cache = 0
redirect_http = [::1]:8081
hsts = 31536000
backend_ca = /etc/lb-mio/backends-ca.pem
backend_verify = off
client_ca = /etc/lb-mio/clients-ca.pem
client_verify = optional

[certificates]
site = /etc/lb-mio/site.pem /etc/lb-mio/site.key

[backends]
s1 = 127.0.0.1:9001
s2 = [::1]:9002 weight=1000
s3 = 10.0.0.7:443 tls=api.internal weight=2
s4 = 10.0.0.8:443 tls
api = API.Service.Consul.:8080 weight=3
web = srv:_http._tcp.web.consul

[etcd]
endpoints = etcd1.internal:2379, 10.0.0.9:2379 [fd00::9]:2379
prefix = /edge/lb/
ca = /etc/lb-mio/etcd-ca.pem
cert = /etc/lb-mio/etcd.pem
key = /etc/lb-mio/etcd.key
user = lb
password = s3cret!
connect_timeout_ms = 250
request_timeout_ms = 1500
cache_file = /var/lib/lb-mio/etcd.json
";
        let expected = Config {
            lb: Lb {
                listen: vec![
                    "[::1]:8081".parse().unwrap(),
                    "127.0.0.1:8081".parse().unwrap(),
                ],
                tls_listen: vec!["127.0.0.1:8443".parse().unwrap()],
                workers: 4,
                strategy: Strategy::LeastConn,
                retries: 0,
                expose_backend: Some("X-Backend".to_string()),
                request_id: Some("X-Trace-Id".to_string()),
                upstream_keepalive: 0,
                upstream_keepalive_total: 1024,
                retry_budget: 50,
                drain_timeout: Duration::from_secs(10),
                sticky: Sticky::Off,
                hash_key: HashKey::ClientIp,
                server_header: Some("edge/2 (test)".to_string()),
                accept_proxy: true,
                proxy_from: vec![
                    parse_cidr("10.0.0.0/8").unwrap(),
                    parse_cidr("::1").unwrap(),
                ],
                send_proxy: Some(Version::V2),
                splice: false,
            },
            timeouts: Timeouts {
                connect: Duration::from_millis(1),
                header: Duration::from_millis(2),
                idle: Duration::from_millis(3),
                backend: Duration::from_secs(3600),
            },
            limits: Limits {
                max_connections: 1,
                max_header_bytes: 15360,
                max_headers: 8,
                rate: 1000,
                rate_burst: 2000,
                client_rate: 10,
                client_burst: 20,
                client_connections: 0,
                max_body: 0,
            },
            health: Health {
                path: "/status?full=1".to_string(),
                interval: Duration::from_millis(10),
                timeout: Duration::from_millis(5),
                rise: 1,
                fall: 100,
                status: 200..=204,
                slow: Some(Duration::from_millis(250)),
                remove_after: Some(Duration::from_secs(60)),
                max_fails: 0,
                slow_start: Duration::from_secs(30),
            },
            admin: Admin {
                listen: Some("127.0.0.1:9900".parse().unwrap()),
                token: None,
                state_file: None,
            },
            log: Log {
                level: LevelFilter::Trace,
                access_log: AccessLog::Json,
                access_log_file: Some(PathBuf::from("/var/log/lb-mio/access.log")),
            },
            backends: vec![
                backend("s1", "127.0.0.1:9001", 1),
                backend("s2", "[::1]:9002", 1000),
                BackendConf {
                    tls: Some("api.internal".to_string()),
                    ..backend("s3", "10.0.0.7:443", 2)
                },
                BackendConf {
                    tls: Some("10.0.0.8".to_string()),
                    ..backend("s4", "10.0.0.8:443", 1)
                },
            ],
            dns: Dns {
                resolver: Some("[::1]:5353".parse().unwrap()),
                resolve_interval: Duration::from_secs(3600),
                timeout: Duration::from_millis(10),
            },
            discover: vec![
                Discover {
                    name: "api".to_string(),
                    target: Target::Host("api.service.consul".to_string(), 8080),
                    weight: 3,
                    tls: None,
                    pool: "default".into(),
                    backup: false,
                },
                Discover {
                    name: "web".to_string(),
                    target: Target::Srv("_http._tcp.web.consul".to_string()),
                    weight: 1,
                    tls: None,
                    pool: "default".into(),
                    backup: false,
                },
            ],
            tls: Tls {
                handshake_rate: 500,
                ticket_key_file: Some(PathBuf::from("/etc/lb-mio/tickets.key")),
                session_cache: 0,
                redirect_http: RedirectHttp::Only(vec!["[::1]:8081".parse().unwrap()]),
                hsts: Some("max-age=31536000".to_string()),
                backend_ca: Some(PathBuf::from("/etc/lb-mio/backends-ca.pem")),
                backend_verify: false,
                client_ca: Some(PathBuf::from("/etc/lb-mio/clients-ca.pem")),
                client_verify: ClientVerify::Optional,
            },
            certificates: vec![CertConf {
                name: "site".to_string(),
                chain: PathBuf::from("/etc/lb-mio/site.pem"),
                key: PathBuf::from("/etc/lb-mio/site.key"),
                origin: "config.ini:69".to_string(),
            }],
            pools: Vec::new(),
            routes: Vec::new(),
            etcd: Etcd {
                endpoints: vec![
                    "etcd1.internal:2379".into(),
                    "10.0.0.9:2379".into(),
                    "[fd00::9]:2379".into(),
                ],
                prefix: "/edge/lb/".into(),
                ca: Some(PathBuf::from("/etc/lb-mio/etcd-ca.pem")),
                cert: Some(PathBuf::from("/etc/lb-mio/etcd.pem")),
                key: Some(PathBuf::from("/etc/lb-mio/etcd.key")),
                user: Some("lb".into()),
                password: Some("s3cret!".into()),
                connect_timeout: Duration::from_millis(250),
                request_timeout: Duration::from_millis(1500),
                cache_file: Some(PathBuf::from("/var/lib/lb-mio/etcd.json")),
            },
            stored: Stored::default(),
        }
        .pools_from_globals();
        assert_eq!(parse(text).unwrap(), expected);
    }

    #[test]
    fn tls_to_a_backend_checks_the_name_given_or_the_address_or_host() {
        let config = parse(
            "[backends]\na = 10.0.0.1:443 tls\nb = 10.0.0.2:443 weight=3 tls=api.internal\n\
             c = api.consul:443 tls\nd = srv:_https._tcp.web tls=web.internal\n",
        )
        .unwrap();
        assert_eq!(config.backends[0].tls.as_deref(), Some("10.0.0.1"));
        assert_eq!(config.backends[1].tls.as_deref(), Some("api.internal"));
        assert_eq!(config.backends[1].weight, 3);
        assert_eq!(config.discover[0].tls.as_deref(), Some("api.consul"));
        assert_eq!(config.discover[1].tls.as_deref(), Some("web.internal"));
        let srv = parse("[backends]\nd = srv:_https._tcp.web tls\n").unwrap_err();
        assert!(
            srv.to_string().contains("tls needs a name here: tls=NAME"),
            "{srv}"
        );
        let twice = parse("[backends]\na = 10.0.0.1:443 tls tls=x\n").unwrap_err();
        assert!(
            twice.to_string().contains("unexpected \"tls=x\""),
            "{twice}"
        );
        let bad = parse("[backends]\na = 10.0.0.1:443 tls=a..b\n").unwrap_err();
        assert!(
            bad.to_string()
                .contains("expected a DNS name or an IP address"),
            "{bad}"
        );
    }

    #[test]
    fn a_pool_takes_the_global_settings_it_does_not_set_whatever_the_order() {
        let c = parse(
            "[pool.api]\nstrategy = least_conn\nhealth_path = /hz\nmax_body = 10\n\
             [pool.api.backends]\napi1 = 127.0.0.1:2 backup\n\
             [lb]\nstrategy = random\nretries = 4\n[timeouts]\nbackend_ms = 7000\n\
             [health]\ninterval_ms = 500\n[backends]\nweb = 127.0.0.1:1\n",
        )
        .unwrap();
        let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default", "api"]);
        let (default, api) = (&c.pools[0], &c.pools[1]);
        assert_eq!(
            (default.strategy, api.strategy),
            (Strategy::Random, Strategy::LeastConn)
        );
        assert_eq!((default.retries, api.retries), (4, 4));
        assert_eq!(api.backend, Duration::from_millis(7000));
        assert_eq!((default.max_body, api.max_body), (0, 10));
        assert_eq!(
            (&default.health.path[..], &api.health.path[..]),
            ("/healthcheck", "/hz")
        );
        assert_eq!(api.health.interval, Duration::from_millis(500));
        let api1 = c.backends.iter().find(|b| b.name == "api1").unwrap();
        assert_eq!((api1.pool.as_str(), api1.backup), ("api", true));
    }

    #[test]
    fn pools_and_routes_are_checked_where_they_are_written() {
        for (text, want) in [
            (
                "[pool.api]\nretries = 2\n",
                "config.ini:1: [pool.api]: pool api has no backends",
            ),
            (
                "[pool.api]\ncolour = red\n",
                "config.ini:2: [pool.api] colour: unknown pool key",
            ),
            (
                "[pool.api]\nretries = 99\n",
                "config.ini:2: [pool.api] retries:",
            ),
            (
                "[pool.a.backends]\nweb = 127.0.0.1:2\n",
                "config.ini:4: [backends] web: backend name already used in pool a",
            ),
            (
                "[route.r]\npath = /x\npool = nowhere\n",
                "config.ini:3: [route.r] pool: no pool \"nowhere\"",
            ),
            (
                "[route.r]\npath = /x\n",
                "config.ini:1: [route.r]: needs an action",
            ),
            (
                "[route.a b]\n",
                "config.ini:1: [route.a b]: \"a b\" is not a route name",
            ),
            (
                "[pool.x y]\n",
                "config.ini:1: [pool.x y]: \"x y\" is not a pool name",
            ),
        ] {
            let err = parse(&format!("{text}[backends]\nweb = 127.0.0.1:1\n")).unwrap_err();
            assert!(err.to_string().starts_with(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn settings_for_a_default_pool_without_backends_are_an_error() {
        let text = "[pool.default]\nretries = 1\n[pool.a.backends]\nx = 127.0.0.1:1\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("config.ini:1: [pool.default]: pool default has no backends"),
            "{err}"
        );
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        let expected = Config::with_backends(vec![backend("s1", "127.0.0.1:9001", 1)]);
        assert_eq!(config, expected);
        assert_eq!(config.lb.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
        assert!(config.lb.workers >= 1);
        assert_eq!(config.lb.strategy, Strategy::RoundRobin);
        assert_eq!(config.lb.retries, 2);
        assert_eq!(config.timeouts.header, Duration::from_secs(10));
        assert_eq!(config.limits.max_header_bytes, 8192);
        assert_eq!(config.health.path, "/healthcheck");
        assert_eq!(config.admin.listen, None);
        assert_eq!(config.log.level, LevelFilter::Info);
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let text = "\
; leading comment
# another

  [lb] ; section comment
workers = 3 # trailing hash
strategy = least_conn ; trailing semicolon
[health]
path = /a#b;c
[admin]
listen = off ; disabled
[backends]
   ; indented comment
s1 = 127.0.0.1:9001 weight=2 ; main
";
        let config = parse(text).unwrap();
        assert_eq!(config.lb.workers, 3);
        assert_eq!(config.lb.strategy, Strategy::LeastConn);
        assert_eq!(config.health.path, "/a#b;c");
        assert_eq!(config.admin.listen, None);
        assert_eq!(config.backends, vec![backend("s1", "127.0.0.1:9001", 2)]);
    }

    #[test]
    fn crlf_line_endings() {
        let config = parse("[lb]\r\nretries = 5\r\n[backends]\r\ns1 = 10.0.0.1:80\r\n").unwrap();
        assert_eq!(config.lb.retries, 5);
        assert_eq!(config.backends, vec![backend("s1", "10.0.0.1:80", 1)]);
    }

    #[test]
    fn workers_auto_resolves_to_a_count() {
        let config = parse(&format!("[lb]\nworkers = auto\n{MINIMAL}")).unwrap();
        assert!((1..=MAX_WORKERS).contains(&config.lb.workers));
    }

    #[test]
    fn bool_spellings() {
        for (v, want) in [
            ("true", true),
            ("on", true),
            ("yes", true),
            ("1", true),
            ("false", false),
            ("off", false),
            ("no", false),
            ("0", false),
        ] {
            assert_eq!(parse_bool(v), Ok(want), "{v}");
            // The keys that were bools keep every spelling: true is their usual "on".
            let text = format!("[lb]\nexpose_backend = {v}\n[log]\naccess_log = {v}\n{MINIMAL}");
            let config = parse(&text).unwrap();
            let access_log = if want {
                AccessLog::Text
            } else {
                AccessLog::Off
            };
            assert_eq!(config.log.access_log, access_log, "{v}");
            let header = want.then(|| "X-Backend".to_string());
            assert_eq!(config.lb.expose_backend, header, "{v}");
        }
    }

    #[test]
    fn access_log_formats_and_file() {
        for (v, want) in [
            ("off", AccessLog::Off),
            ("text", AccessLog::Text),
            ("json", AccessLog::Json),
        ] {
            let config = parse(&format!("[log]\naccess_log = {v}\n{MINIMAL}")).unwrap();
            assert_eq!(config.log.access_log, want, "{v}");
        }
        let config = parse(&format!("[log]\naccess_log_file = access.log\n{MINIMAL}")).unwrap();
        assert_eq!(
            config.log.access_log_file,
            Some(PathBuf::from("access.log"))
        );
        assert_eq!(parse(MINIMAL).unwrap().log.access_log_file, None, "stderr");
    }

    #[test]
    fn header_names_of_expose_backend_and_request_id() {
        let header = |key: &str, v: &str| {
            let config = parse(&format!("[lb]\n{key} = {v}\n{MINIMAL}")).unwrap();
            match key {
                "expose_backend" => config.lb.expose_backend,
                _ => config.lb.request_id,
            }
        };
        let some = |h: &str| Some(h.to_string());
        assert_eq!(header("expose_backend", "on"), some("X-Backend"));
        assert_eq!(
            header("expose_backend", "X-Forwarded-Server"),
            some("X-Forwarded-Server")
        );
        assert_eq!(header("expose_backend", "off"), None);
        assert_eq!(header("request_id", "on"), some("X-Request-Id"));
        assert_eq!(header("request_id", "X-Request-Id"), some("X-Request-Id"));
        assert_eq!(
            header("request_id", "x-correlation-id"),
            some("x-correlation-id")
        );
        assert_eq!(header("request_id", &"a".repeat(64)), Some("a".repeat(64)));
        assert_eq!(header("request_id", "false"), None);
        for key in ["expose_backend", "request_id"] {
            for bad in ["", "X Id", "X-Id:", "X-\u{e9}", "(id)", &"a".repeat(65)] {
                let err = parse(&format!("[lb]\n{key} = {bad}\n{MINIMAL}")).unwrap_err();
                assert_eq!(err.line, 2, "{key} = {bad:?}");
                let want = format!("[lb] {key}: expected off, on or a header name (1 to 64 of ");
                assert!(err.to_string().contains(&want), "{key} = {bad:?}: {err}");
            }
        }
    }

    #[test]
    fn cidr_ranges() {
        let range = |v: &str| parse_cidr(v).unwrap();
        let ip = |v: &str| v.parse::<IpAddr>().unwrap();
        assert!(range("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!range("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(range("10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!range("10.1.2.3").contains(ip("10.1.2.4")));
        assert!(range("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(
            range("127.0.0.0/8").contains(ip("::ffff:127.0.0.9")),
            "v4-mapped"
        );
        assert!(!range("127.0.0.0/8").contains(ip("::1")));
        assert!(range("::1").contains(ip("::1")));
        assert!(range("fd00::/8").contains(ip("fdab::1")));
        assert!(!range("fd00::/8").contains(ip("fe80::1")));
        assert!(range("::/0").contains(ip("2001:db8::1")));
        assert!(range("10.0.0.0/12").contains(ip("10.15.0.1")));
        assert!(!range("10.0.0.0/12").contains(ip("10.16.0.1")));
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in [Strategy::RoundRobin, Strategy::LeastConn] {
            assert_eq!(parse_strategy(s.name()), Ok(s));
        }
    }

    #[test]
    fn errors_name_line_and_key() {
        // (case, input, expected line, expected Display substring)
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "unknown section",
                "[backends]\ns1 = 1.2.3.4:80\n[nope]\n",
                3,
                "[nope]: unknown section",
            ),
            (
                "duplicate section",
                "[lb]\n[backends]\ns1 = 1.2.3.4:80\n[lb]\n",
                4,
                "[lb]: duplicate section (first at line 1)",
            ),
            (
                "unknown key",
                "[lb]\nlisten = 1.2.3.4:80\nport = 80\n",
                3,
                "[lb] port: unknown key",
            ),
            (
                "uppercase key",
                "[lb]\nWorkers = 2\n",
                2,
                "[lb] Workers: unknown key",
            ),
            (
                "duplicate key",
                "[lb]\nretries = 1\n\nretries = 2\n",
                4,
                "[lb] retries: duplicate key (first at line 2)",
            ),
            (
                "duplicate backend name",
                "[backends]\ns1 = 1.2.3.4:80\ns1 = 1.2.3.4:81\n",
                3,
                "[backends] s1: duplicate backend name (first at line 2)",
            ),
            (
                "bad address",
                "[backends]\ns1 = 1.2.3.4\n",
                2,
                "[backends] s1: expected ip:port, got \"1.2.3.4\"",
            ),
            (
                "bad host name",
                "[backends]\ns1 = -bad-.example:80\n",
                2,
                "[backends] s1: expected ip:port, host:port or srv:NAME, got \"-bad-.example:80\"",
            ),
            (
                "not an IPv4 address, nor a host name",
                "[backends]\ns1 = 1.2.3.256:80\n",
                2,
                "[backends] s1: expected ip:port, host:port or srv:NAME",
            ),
            (
                "host without a port",
                "[backends]\ns1 = api.consul:\n",
                2,
                "[backends] s1: expected ip:port, host:port or srv:NAME, got \"api.consul:\"",
            ),
            (
                "host with port 0",
                "[backends]\ns1 = api.consul:0\n",
                2,
                "[backends] s1: expected ip:port, host:port or srv:NAME",
            ),
            (
                "bad SRV name",
                "[backends]\ns1 = srv:_http._tcp..consul\n",
                2,
                "[backends] s1: expected srv:NAME with a valid DNS name",
            ),
            (
                "discovered entry name too long",
                "[backends]\nabcdefghijklmnopqrs = api.consul:80\n",
                2,
                "[backends] abcdefghijklmnopqrs: a backend name with a host to look up may have at most 18 characters",
            ),
            (
                "junk after a host",
                "[backends]\napi = api.consul:80 weight=2 x\n",
                2,
                "[backends] api: unexpected \"x\" (expected weight=N, tls, tls=NAME or backup)",
            ),
            (
                "bad resolver",
                "[dns]\nresolver = dns.google\n",
                2,
                "[dns] resolver: expected ip or ip:port of a DNS server, got \"dns.google\"",
            ),
            (
                "resolver port 0",
                "[dns]\nresolver = 127.0.0.1:0\n",
                2,
                "[dns] resolver: \"127.0.0.1:0\" cannot be asked",
            ),
            (
                "resolve interval 0",
                "[dns]\nresolve_interval_s = 0\n",
                2,
                "[dns] resolve_interval_s: expected a number 1..=3600, got \"0\"",
            ),
            (
                "dns timeout too long",
                "[dns]\ntimeout_ms = 60001\n",
                2,
                "[dns] timeout_ms: expected a number 10..=60000",
            ),
            (
                "unknown dns key",
                "[dns]\nsearch = consul\n",
                2,
                "[dns] search: unknown key",
            ),
            (
                "etcd key without endpoints",
                "[backends]\ns1 = 1.2.3.4:80\n[etcd]\nprefix = /x/\n",
                4,
                "[etcd] prefix: needs [etcd] endpoints",
            ),
            (
                "etcd endpoint without a port",
                "[etcd]\nendpoints = 127.0.0.1:2379, etcd.internal\n",
                2,
                "[etcd] endpoints: expected host:port, got \"etcd.internal\"",
            ),
            (
                "etcd prefix without its slashes",
                "[etcd]\nendpoints = 127.0.0.1:2379\nprefix = lb-mio\n",
                3,
                "[etcd] prefix: expected a prefix starting and ending with '/'",
            ),
            (
                "etcd client certificate without its key",
                "[etcd]\nendpoints = 127.0.0.1:2379\nca = /ca.pem\ncert = /c.pem\n",
                4,
                "[etcd] cert: a client certificate needs both cert and key",
            ),
            (
                "etcd user without a password",
                "[etcd]\nendpoints = 127.0.0.1:2379\nuser = lb\n",
                3,
                "[etcd] user: etcd auth needs both user and password",
            ),
            (
                "empty backend address",
                "[backends]\ns1 =\n",
                2,
                "[backends] s1: expected ip:port, got \"\"",
            ),
            (
                "bad listen address",
                "[lb]\nlisten = :8080\n",
                2,
                "[lb] listen: expected ip:port",
            ),
            (
                "bad admin address",
                "[admin]\nlisten = none\n",
                2,
                "[admin] listen: expected ip:port or \"off\", got \"none\"",
            ),
            (
                "zero weight",
                "[backends]\ns1 = 1.2.3.4:80 weight=0\n",
                2,
                "[backends] s1: expected weight=1..=1000, got \"weight=0\"",
            ),
            (
                "weight too big",
                "[backends]\ns1 = 1.2.3.4:80 weight=1001\n",
                2,
                "[backends] s1: expected weight=1..=1000",
            ),
            (
                "junk instead of weight",
                "[backends]\ns1 = 1.2.3.4:80 heavy\n",
                2,
                "[backends] s1: unexpected \"heavy\" (expected weight=N, tls, tls=NAME or backup)",
            ),
            (
                "junk after weight",
                "[backends]\ns1 = 1.2.3.4:80 weight=2 x\n",
                2,
                "[backends] s1: unexpected \"x\" (expected weight=N, tls, tls=NAME or backup)",
            ),
            (
                "bad backend name",
                "[backends]\nbad/name = 1.2.3.4:80\n",
                2,
                "[backends] bad/name: invalid backend name",
            ),
            (
                "backend name too long",
                &format!("[backends]\n{} = 1.2.3.4:80\n", "a".repeat(65)),
                2,
                "invalid backend name",
            ),
            (
                "workers out of range",
                "[lb]\nworkers = 0\n",
                2,
                "[lb] workers: expected a number 1..=256 or \"auto\", got \"0\"",
            ),
            (
                "status range reversed",
                "[health]\nstatus = 399-200\n",
                2,
                "[health] status: expected a status range like 200-399",
            ),
            (
                "status range not a range",
                "[health]\nstatus = 200\n",
                2,
                "[health] status: expected a status range like 200-399",
            ),
            (
                "retry budget over 100",
                "[lb]\nretry_budget = 101\n",
                2,
                "[lb] retry_budget: expected a number 0..=100",
            ),
            (
                "workers not a number",
                "[lb]\nworkers = x\n",
                2,
                "[lb] workers: expected a number 1..=256 or \"auto\", got \"x\"",
            ),
            (
                "number out of range",
                "[limits]\nmax_header_bytes = 1023\n",
                2,
                "[limits] max_header_bytes: expected a number 1024..=15360, got \"1023\"",
            ),
            (
                "negative number",
                "[lb]\nretries = -1\n",
                2,
                "[lb] retries: expected a number 0..=10, got \"-1\"",
            ),
            (
                "timeout zero",
                "[timeouts]\nconnect_ms = 0\n",
                2,
                "[timeouts] connect_ms: expected a number 1..=3600000",
            ),
            (
                "interval too small",
                "[health]\ninterval_ms = 9\n",
                2,
                "[health] interval_ms: expected a number 10..=3600000",
            ),
            (
                "bad bool",
                "[lb]\naccept_proxy = maybe\n",
                2,
                "[lb] accept_proxy: expected true|false|on|off|yes|no|1|0, got \"maybe\"",
            ),
            (
                "bad access log format",
                "[log]\naccess_log = csv\n",
                2,
                "[log] access_log: expected off, text or json (or true|false|on|yes|no|1|0), got \"csv\"",
            ),
            (
                "empty access log file",
                "[log]\naccess_log_file =\n",
                2,
                "[log] access_log_file: expected a file path",
            ),
            (
                "bad request id header",
                "[lb]\nrequest_id = X Request Id\n",
                2,
                "[lb] request_id: expected off, on or a header name",
            ),
            (
                "bad expose_backend header",
                "[lb]\nexpose_backend = X-Backend:\n",
                2,
                "[lb] expose_backend: expected off, on or a header name",
            ),
            (
                "a framing header as the request id",
                "[lb]\nrequest_id = content-length\n",
                2,
                "[lb] request_id: \"content-length\" frames or routes the message",
            ),
            (
                "lb-mio's own header as the backend's name",
                "[lb]\nexpose_backend = Server\n",
                2,
                "[lb] expose_backend: \"Server\" frames or routes the message",
            ),
            (
                "unknown log key",
                "[log]\naccess_log_path = a.log\n",
                2,
                "[log] access_log_path: unknown key",
            ),
            (
                "accept_proxy without proxy_from",
                "[lb]\nworkers = 1\naccept_proxy = true\n[backends]\na = 127.0.0.1:1\n",
                3,
                "[lb] accept_proxy: needs [lb] proxy_from",
            ),
            (
                "bad proxy_from",
                "[lb]\nproxy_from = 10.0.0.0/33\n",
                2,
                "[lb] proxy_from: expected an address or address/bits, got \"10.0.0.0/33\"",
            ),
            (
                "listen twice",
                "[lb]\nlisten = 127.0.0.1:80 127.0.0.1:80\n",
                2,
                "[lb] listen: 127.0.0.1:80 is listed twice",
            ),
            (
                "bad send_proxy",
                "[lb]\nsend_proxy = v3\n",
                2,
                "[lb] send_proxy: expected off, v1 or v2, got \"v3\"",
            ),
            (
                "control character in server_header",
                "[lb]\nserver_header = a\x01b\n",
                2,
                "[lb] server_header: expected up to 128 printable ASCII characters",
            ),
            (
                "bad strategy",
                "[lb]\nstrategy = fastest\n",
                2,
                "[lb] strategy: expected one of round_robin, least_conn, weighted_round_robin, weighted_least_conn, random, weighted_random, p2c, hash, ewma, got \"fastest\"",
            ),
            (
                "bad log level",
                "[log]\nlevel = INFO\n",
                2,
                "[log] level: expected off|error|warn|info|debug|trace",
            ),
            (
                "relative health path",
                "[health]\npath = health\n",
                2,
                "[health] path: expected a path starting with '/'",
            ),
            (
                "health path with space",
                "[health]\npath = /a b\n",
                2,
                "[health] path: expected a path starting with '/'",
            ),
            (
                "key outside section",
                "listen = 1.2.3.4:80\n[backends]\ns1 = 1.2.3.4:80\n",
                1,
                "listen: key outside any [section]",
            ),
            (
                "garbage line",
                "[lb]\nretries 2\n",
                2,
                "expected \"key = value\" or \"[section]\", got \"retries 2\"",
            ),
            (
                "empty key",
                "[lb]\n = 2\n",
                2,
                "expected \"key = value\" or \"[section]\", got \"= 2\"",
            ),
            (
                "unclosed section",
                "[lb\n",
                1,
                "expected \"key = value\" or \"[section]\", got \"[lb\"",
            ),
            (
                "admin off loopback without a token",
                "[admin]\nlisten = 0.0.0.0:9900\n[backends]\na = 127.0.0.1:1\n",
                2,
                "[admin] listen: a non-loopback address needs [admin] token",
            ),
            (
                "empty backends section",
                "[lb]\nretries = 1\n[backends]\n; none yet\n",
                3,
                "[backends]: at least one backend is required",
            ),
        ];
        for (case, input, line, want) in cases {
            let err = parse(input).expect_err(case);
            let shown = err.to_string();
            assert_eq!(err.line, *line, "{case}: {shown}");
            assert!(
                shown.starts_with(&format!("config.ini:{line}: ")),
                "{case}: {shown}"
            );
            assert!(shown.contains(want), "{case}: {shown:?} lacks {want:?}");
        }
    }

    #[test]
    fn host_entries_are_discovered_and_addresses_stay_static() {
        let config = parse(
            "[dns]\nresolver = 10.0.0.53\n[backends]\napi = localhost:80\nv4 = 10.0.0.1:80\nv6 = [fd00::1]:80\n",
        )
        .unwrap();
        assert_eq!(config.dns.resolver, Some("10.0.0.53:53".parse().unwrap()));
        assert_eq!(config.dns.resolve_interval, Duration::from_secs(5));
        assert_eq!(config.dns.timeout, Duration::from_millis(1000));
        assert_eq!(config.backends.len(), 2);
        assert_eq!(
            config.discover,
            vec![Discover {
                name: "api".into(),
                target: Target::Host("localhost".into(), 80),
                weight: 1,
                tls: None,
                pool: "default".into(),
                backup: false,
            }]
        );
        assert_eq!(config.discover[0].target.to_string(), "localhost:80");
        // Only discovered entries: valid (their addresses come once DNS answers).
        let only = parse("[backends]\nweb = srv:_http._tcp.web.consul weight=7\n").unwrap();
        assert!(only.backends.is_empty());
        assert_eq!(only.discover[0].weight, 7);
        assert_eq!(Config::with_backends(Vec::new()).dns, Dns::default());
    }

    #[test]
    fn missing_backends_section() {
        let err = parse("[lb]\nretries = 1\n").unwrap_err();
        assert_eq!(err.line, 0);
        assert_eq!(
            err.to_string(),
            "config.ini: [backends]: at least one backend is required"
        );
    }

    #[test]
    fn display_formats() {
        let err = parse("[lb]\nworkers = x\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.ini:2: [lb] workers: expected a number 1..=256 or \"auto\", got \"x\""
        );
        let err = parse("[lb]\n???\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.ini:2: expected \"key = value\" or \"[section]\", got \"???\""
        );
    }

    #[test]
    fn from_file_reads_and_reports_unreadable() {
        let dir = std::env::temp_dir().join(format!("lb-mio-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.ini");
        std::fs::write(&path, MINIMAL).unwrap();
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.backends.len(), 1);

        let missing = dir.join("missing.ini");
        let err = Config::from_file(&missing).unwrap_err();
        assert_eq!(err.line, 0);
        let prefix = format!("{}: cannot read: ", missing.display());
        assert!(err.to_string().starts_with(&prefix), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
