//! Every config key in one table: its section, name, default, accepted values, meaning and how
//! it is set. The parser looks keys up here (a key not in the table is unknown), number ranges
//! are checked from here, and the README's configuration table is these rows
//! ([`markdown_rows`]; a test holds the two together).
//!
//! `[backends]` is not in the table: its keys are backend names (see `set_backend`).

use std::path::PathBuf;
use std::time::Duration;

use super::{
    off_if_zero, parse_access_log, parse_bool, parse_cidr, parse_client_verify, parse_endpoints,
    parse_hash_key, parse_header_name, parse_level, parse_list, parse_listen, parse_optional_addr,
    parse_path, parse_prefix, parse_range, parse_redirect_http, parse_resolver, parse_send_proxy,
    parse_server_header, parse_status_range, parse_sticky, parse_strategy, parse_token,
    parse_visible, parse_workers, Config, MAX_HEAD, MAX_MS, MAX_RETRIES,
};

/// One `key = value` of a section.
pub struct Key {
    pub section: &'static str,
    pub name: &'static str,
    pub default: DefaultValue,
    pub value: Value,
    /// One line for users (markdown), as the README shows it.
    pub meaning: &'static str,
}

/// What a key is when the file does not set it.
pub enum DefaultValue {
    /// This value (shown in backticks, or as "empty" when it is empty).
    Is(&'static str),
    /// This value, then a note on what it means: `0` (off).
    Means(&'static str, &'static str),
    /// No value spells it; the text says what applies.
    Unset(&'static str),
}

/// The values a key accepts, and how one is stored.
pub enum Value {
    /// A whole number within `min..=max`.
    Number {
        min: u32,
        max: u32,
        set: fn(&mut Config, u32),
    },
    /// Anything else: `accepts` tells users what (markdown), `set` parses and stores it.
    Text {
        accepts: &'static str,
        set: fn(&mut Config, &str) -> Result<(), String>,
    },
}

impl Key {
    /// Parses `v` and stores it in `config`; the error is the bare message.
    pub fn set(&self, config: &mut Config, v: &str) -> Result<(), String> {
        match self.value {
            Value::Number { min, max, set } => parse_range(v, min, max).map(|n| set(config, n)),
            Value::Text { set, .. } => set(config, v),
        }
    }

    /// What the key accepts, for users (markdown).
    pub fn values(&self) -> String {
        match self.value {
            Value::Number { min, max, .. } => format!("{min}..={max}"),
            Value::Text { accepts, .. } => accepts.to_string(),
        }
    }

    /// The default as config.ini spells it; `None` when no value does.
    pub fn default_value(&self) -> Option<&'static str> {
        match self.default {
            DefaultValue::Is(v) | DefaultValue::Means(v, _) => Some(v),
            DefaultValue::Unset(_) => None,
        }
    }

    /// The default as the docs show it (markdown).
    pub fn shown_default(&self) -> String {
        match self.default {
            DefaultValue::Is("") => "empty".to_string(),
            DefaultValue::Is(v) => format!("`{v}`"),
            DefaultValue::Means(v, note) => format!("`{v}` ({note})"),
            DefaultValue::Unset(text) => text.to_string(),
        }
    }

    /// The README row `| section | key | default | meaning |`; the section cell is left empty
    /// unless `first` (the section's first row).
    pub fn markdown_row(&self, first: bool) -> String {
        let section = if first {
            format!(" `[{}]` ", self.section)
        } else {
            " ".to_string()
        };
        format!(
            "|{section}| `{}` | {} | {} |",
            self.name,
            self.shown_default(),
            self.meaning
        )
    }
}

/// The README's configuration rows for every key in the table, in order (without the header and
/// the `[backends]` row).
pub fn markdown_rows() -> impl Iterator<Item = String> {
    KEYS.iter().enumerate().map(|(i, key)| {
        let first = i == 0 || KEYS[i - 1].section != key.section;
        key.markdown_row(first)
    })
}

/// How a `[backends]` line reads (its keys are backend names, so it is not a row of [`KEYS`]).
pub const BACKENDS_LINE: &str =
    "name = ip:port | host:port | srv:NAME [weight=N] [tls | tls=NAME] [backup]";

/// What `[backends]` holds, for users (markdown), as the README shows it.
pub const BACKENDS_MEANING: &str = "at least one (none needed with `[etcd]`: backends may come from etcd); at most 16,384 over all pools at once; names are `[A-Za-z0-9_.-]` (at most 18 characters for `host`/`srv:` entries), weight 1..=1000; `tls`: speak TLS to the backend, its certificate checked against `NAME` (without one, against its address or host; `srv:` entries need a `NAME`); `backup`: traffic only while no other backend of its pool is up. `[pool.NAME.backends]` takes the same lines; `[pool.NAME]` and `[route.NAME]`: see [Routing](#routing-pools-and-routes)";

/// The README's last configuration row: `[backends]`.
pub fn backends_markdown_row() -> String {
    format!(
        "| `[backends]` | `{}` | | {BACKENDS_MEANING} |",
        BACKENDS_LINE.replace('|', "\\|")
    )
}

/// The key `name` of `[section]`.
pub fn find(section: &str, name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// The sections with keys, in table order.
pub fn sections() -> Vec<&'static str> {
    let mut names: Vec<&str> = Vec::new();
    for key in KEYS {
        if !names.contains(&key.section) {
            names.push(key.section);
        }
    }
    names
}

const BOOL: &str = "`true`/`false`, `on`/`off`, `yes`/`no`, `1`/`0`";
const HEADER: &str = "`off`, `on` or a header name (1 to 64 token characters)";
const FILE: &str = "a file path";

fn ms(n: u32) -> Duration {
    Duration::from_millis(n.into())
}

fn secs(n: u32) -> Duration {
    Duration::from_secs(n.into())
}

pub const KEYS: &[Key] = &[
    // ---- [lb] -------------------------------------------------------------------------------
    Key {
        section: "lb",
        name: "listen",
        default: DefaultValue::Is("0.0.0.0:8080"),
        value: Value::Text {
            accepts: "1 to 8 `ip:port` addresses, separated by commas or spaces",
            set: |c, v| parse_listen(v).map(|a| c.lb.listen = a),
        },
        meaning: "addresses to accept clients on, separated by commas or spaces, at most 8 (`127.0.0.1:8080, [::1]:8080`); `[::]:PORT` alone is dual-stack (takes IPv4 too); port 0 = any free port, logged at start",
    },
    Key {
        section: "lb",
        name: "tls_listen",
        default: DefaultValue::Unset("none"),
        value: Value::Text {
            accepts: "1 to 8 `ip:port` addresses, separated by commas or spaces",
            set: |c, v| parse_listen(v).map(|a| c.lb.tls_listen = a),
        },
        meaning: "addresses to accept TLS clients on (as `listen`), with the certificates of `[certificates]`; needs at least one",
    },
    Key {
        section: "lb",
        name: "workers",
        default: DefaultValue::Is("auto"),
        value: Value::Text {
            accepts: "`auto` or 1..=256",
            set: |c, v| parse_workers(v).map(|n| c.lb.workers = n),
        },
        meaning: "worker threads (`auto` = one per CPU), each with its own event loop and listener",
    },
    Key {
        section: "lb",
        name: "strategy",
        default: DefaultValue::Is("round_robin"),
        value: Value::Text {
            accepts: "`round_robin`, `least_conn`, `weighted_round_robin`, `weighted_least_conn`, `random`, `weighted_random`, `p2c`, `hash`, `ewma`",
            set: |c, v| parse_strategy(v).map(|s| c.lb.strategy = s),
        },
        meaning: "see [Strategies](#strategies)",
    },
    Key {
        section: "lb",
        name: "retries",
        default: DefaultValue::Is("2"),
        value: Value::Number {
            min: 0,
            max: MAX_RETRIES,
            set: |c, n| c.lb.retries = n,
        },
        meaning: "other backends a request may try when its backend fails before answering",
    },
    Key {
        section: "lb",
        name: "expose_backend",
        default: DefaultValue::Is("off"),
        value: Value::Text {
            accepts: HEADER,
            set: |c, v| parse_header_name(v, "X-Backend").map(|h| c.lb.expose_backend = h),
        },
        meaning: "`on`: add `X-Backend: <name>` to responses; a header name: add that header instead (reveals the backends)",
    },
    Key {
        section: "lb",
        name: "request_id",
        default: DefaultValue::Is("off"),
        value: Value::Text {
            accepts: HEADER,
            set: |c, v| parse_header_name(v, "X-Request-Id").map(|h| c.lb.request_id = h),
        },
        meaning: "give each request an id in this header (kept from the client if valid), forwarded, returned and logged; `on` = `X-Request-Id`",
    },
    Key {
        section: "lb",
        name: "upstream_keepalive",
        default: DefaultValue::Is("256"),
        value: Value::Number {
            min: 0,
            max: 10_000,
            set: |c, n| c.lb.upstream_keepalive = n as usize,
        },
        meaning: "idle backend connections kept per backend per worker",
    },
    Key {
        section: "lb",
        name: "upstream_keepalive_total",
        default: DefaultValue::Is("1024"),
        value: Value::Number {
            min: 0,
            max: 1_000_000,
            set: |c, n| c.lb.upstream_keepalive_total = n as usize,
        },
        meaning: "idle backend connections kept per worker over all backends; past it the least recently used is closed",
    },
    Key {
        section: "lb",
        name: "retry_budget",
        default: DefaultValue::Is("20"),
        value: Value::Number {
            min: 0,
            max: 100,
            set: |c, n| c.lb.retry_budget = n,
        },
        meaning: "retries may be at most this percentage of requests (per worker)",
    },
    Key {
        section: "lb",
        name: "drain_timeout_s",
        default: DefaultValue::Is("10"),
        value: Value::Number {
            min: 0,
            max: MAX_MS / 1000,
            set: |c, n| c.lb.drain_timeout = secs(n),
        },
        meaning: "on SIGTERM/SIGINT, how long requests in flight may take to finish",
    },
    Key {
        section: "lb",
        name: "hash_key",
        default: DefaultValue::Is("client_ip"),
        value: Value::Text {
            accepts: "`client_ip`, `header:NAME` or `cookie:NAME`",
            set: |c, v| parse_hash_key(v).map(|k| c.lb.hash_key = k),
        },
        meaning: "what `hash` balances by: `client_ip`, `header:NAME` or `cookie:NAME`",
    },
    Key {
        section: "lb",
        name: "sticky",
        default: DefaultValue::Is("off"),
        value: Value::Text {
            accepts: "`off`, `cookie` or `client_ip`",
            set: |c, v| parse_sticky(v).map(|s| c.lb.sticky = s),
        },
        meaning: "`cookie`: a cookie keeps each client on its backend while that backend is up; `client_ip`: the `hash` strategy picks by client address, whatever `strategy` says",
    },
    Key {
        section: "lb",
        name: "server_header",
        default: DefaultValue::Is(""),
        value: Value::Text {
            accepts: "empty, or up to 128 printable ASCII characters",
            set: |c, v| parse_server_header(v).map(|s| c.lb.server_header = s),
        },
        meaning: "empty: backends' `Server` headers pass through and lb-mio's own replies carry none; a value replaces the backends' header (hiding their software) and marks lb-mio's replies",
    },
    Key {
        section: "lb",
        name: "accept_proxy",
        default: DefaultValue::Is("false"),
        value: Value::Text {
            accepts: BOOL,
            set: |c, v| parse_bool(v).map(|b| c.lb.accept_proxy = b),
        },
        meaning: "connections from `proxy_from` must start with a PROXY protocol v1 or v2 header, whose client goes into `X-Forwarded-For`, logs, rate limits and `hash`",
    },
    Key {
        section: "lb",
        name: "proxy_from",
        default: DefaultValue::Is(""),
        value: Value::Text {
            accepts: "addresses or `address/bits` ranges, separated by commas or spaces",
            set: |c, v| parse_list(v, parse_cidr).map(|l| c.lb.proxy_from = l),
        },
        meaning: "the balancers trusted to send that header: addresses or ranges, `10.0.0.0/8, ::1` (required with `accept_proxy`)",
    },
    Key {
        section: "lb",
        name: "send_proxy",
        default: DefaultValue::Is("off"),
        value: Value::Text {
            accepts: "`off`, `v1` or `v2`",
            set: |c, v| parse_send_proxy(v).map(|p| c.lb.send_proxy = p),
        },
        meaning: "`v1` / `v2`: a PROXY header naming the client before every request to a backend, and a `LOCAL`/`UNKNOWN` one before every health probe",
    },
    Key {
        section: "lb",
        name: "splice",
        default: DefaultValue::Is("on"),
        value: Value::Text {
            accepts: BOOL,
            set: |c, v| parse_bool(v).map(|b| c.lb.splice = b),
        },
        meaning: "bodies of 32 KiB or more, close-delimited bodies, large chunks and tunnels move socket to socket through kernel pipes (`splice`), never copied through lb-mio; `off`: every byte through its buffers (TLS always is)",
    },
    // ---- [timeouts] -------------------------------------------------------------------------
    Key {
        section: "timeouts",
        name: "connect_ms",
        default: DefaultValue::Is("3000"),
        value: Value::Number {
            min: 1,
            max: MAX_MS,
            set: |c, n| c.timeouts.connect = ms(n),
        },
        meaning: "connecting to a backend (then retry, or 504)",
    },
    Key {
        section: "timeouts",
        name: "header_ms",
        default: DefaultValue::Is("10000"),
        value: Value::Number {
            min: 1,
            max: MAX_MS,
            set: |c, n| c.timeouts.header = ms(n),
        },
        meaning: "a client must send a whole request head within this (408, slowloris)",
    },
    Key {
        section: "timeouts",
        name: "idle_ms",
        default: DefaultValue::Is("60000"),
        value: Value::Number {
            min: 1,
            max: MAX_MS,
            set: |c, n| c.timeouts.idle = ms(n),
        },
        meaning: "idle keep-alive client connections close after this",
    },
    Key {
        section: "timeouts",
        name: "backend_ms",
        default: DefaultValue::Is("30000"),
        value: Value::Number {
            min: 1,
            max: MAX_MS,
            set: |c, n| c.timeouts.backend = ms(n),
        },
        meaning: "a request gets 504 after this long without progress from its backend",
    },
    // ---- [limits] ---------------------------------------------------------------------------
    Key {
        section: "limits",
        name: "max_connections",
        default: DefaultValue::Is("10000"),
        value: Value::Number {
            min: 1,
            max: 1_000_000,
            set: |c, n| c.limits.max_connections = n as usize,
        },
        meaning: "client connections per worker; at the limit a worker stops accepting",
    },
    Key {
        section: "limits",
        name: "max_header_bytes",
        default: DefaultValue::Is("8192"),
        value: Value::Number {
            min: 1024,
            max: MAX_HEAD as u32,
            set: |c, n| c.limits.max_header_bytes = n as usize,
        },
        meaning: "longest request head (431 above it; at most 15360)",
    },
    Key {
        section: "limits",
        name: "max_headers",
        default: DefaultValue::Is("64"),
        value: Value::Number {
            min: 8,
            max: 128,
            set: |c, n| c.limits.max_headers = n as usize,
        },
        meaning: "most request header fields (431 above it; at most 128)",
    },
    Key {
        section: "limits",
        name: "rate",
        default: DefaultValue::Means("0", "off"),
        value: Value::Number {
            min: 0,
            max: 10_000_000,
            set: |c, n| c.limits.rate = n,
        },
        meaning: "requests per second for all clients together (429 with `Retry-After: 1`)",
    },
    Key {
        section: "limits",
        name: "rate_burst",
        default: DefaultValue::Means("0", "= `rate`"),
        value: Value::Number {
            min: 0,
            max: 10_000_000,
            set: |c, n| c.limits.rate_burst = n,
        },
        meaning: "the burst above `rate`: requests that may come at once",
    },
    Key {
        section: "limits",
        name: "client_rate",
        default: DefaultValue::Means("0", "off"),
        value: Value::Number {
            min: 0,
            max: 10_000_000,
            set: |c, n| c.limits.client_rate = n,
        },
        meaning: "requests per second for each client address",
    },
    Key {
        section: "limits",
        name: "client_burst",
        default: DefaultValue::Means("0", "= `client_rate`"),
        value: Value::Number {
            min: 0,
            max: 10_000_000,
            set: |c, n| c.limits.client_burst = n,
        },
        meaning: "the burst above `client_rate`, per client address",
    },
    Key {
        section: "limits",
        name: "client_connections",
        default: DefaultValue::Means("0", "off"),
        value: Value::Number {
            min: 0,
            max: 1_000_000,
            set: |c, n| c.limits.client_connections = n,
        },
        meaning: "open connections per client address over all workers; more are closed at accept (fixed at start)",
    },
    Key {
        section: "limits",
        name: "max_body",
        default: DefaultValue::Means("0", "no limit"),
        value: Value::Number {
            min: 0,
            max: u32::MAX,
            set: |c, n| c.limits.max_body = u64::from(n),
        },
        meaning: "largest request body in bytes (413 above it); a pool may set its own",
    },
    // ---- [health] ---------------------------------------------------------------------------
    Key {
        section: "health",
        name: "path",
        default: DefaultValue::Is("/healthcheck"),
        value: Value::Text {
            accepts: "a path starting with `/`, without spaces or control characters",
            set: |c, v| parse_path(v).map(|p| c.health.path = p),
        },
        meaning: "probed with `GET` on every backend",
    },
    Key {
        section: "health",
        name: "interval_ms",
        default: DefaultValue::Is("2000"),
        value: Value::Number {
            min: 10,
            max: MAX_MS,
            set: |c, n| c.health.interval = ms(n),
        },
        meaning: "time between probes (±10% jitter)",
    },
    Key {
        section: "health",
        name: "timeout_ms",
        default: DefaultValue::Is("1000"),
        value: Value::Number {
            min: 1,
            max: MAX_MS,
            set: |c, n| c.health.timeout = ms(n),
        },
        meaning: "a probe slower than this fails",
    },
    Key {
        section: "health",
        name: "rise",
        default: DefaultValue::Is("2"),
        value: Value::Number {
            min: 1,
            max: 100,
            set: |c, n| c.health.rise = n,
        },
        meaning: "good probes in a row that mark a down backend up",
    },
    Key {
        section: "health",
        name: "fall",
        default: DefaultValue::Is("3"),
        value: Value::Number {
            min: 1,
            max: 100,
            set: |c, n| c.health.fall = n,
        },
        meaning: "failed probes in a row that mark an up backend down",
    },
    Key {
        section: "health",
        name: "status",
        default: DefaultValue::Is("200-399"),
        value: Value::Text {
            accepts: "`LOW-HIGH` within 100-599",
            set: |c, v| parse_status_range(v).map(|r| c.health.status = r),
        },
        meaning: "probe statuses that count as healthy",
    },
    Key {
        section: "health",
        name: "slow_ms",
        default: DefaultValue::Means("0", "off"),
        value: Value::Number {
            min: 0,
            max: MAX_MS,
            set: |c, n| c.health.slow = off_if_zero(ms(n)),
        },
        meaning: "a probe slower than this fails",
    },
    Key {
        section: "health",
        name: "remove_after_s",
        default: DefaultValue::Means("0", "never"),
        value: Value::Number {
            min: 0,
            max: MAX_MS / 1000,
            set: |c, n| c.health.remove_after = off_if_zero(secs(n)),
        },
        meaning: "a backend down this long leaves the pool for good",
    },
    Key {
        section: "health",
        name: "max_fails",
        default: DefaultValue::Is("3"),
        value: Value::Number {
            min: 0,
            max: 1000,
            set: |c, n| c.health.max_fails = n,
        },
        meaning: "failures in a row on live traffic that mark a backend down at once (0 = off)",
    },
    Key {
        section: "health",
        name: "slow_start_s",
        default: DefaultValue::Means("0", "off"),
        value: Value::Number {
            min: 0,
            max: MAX_MS / 1000,
            set: |c, n| c.health.slow_start = secs(n),
        },
        meaning: "a recovered backend's share ramps up over this long",
    },
    // ---- [tls] ------------------------------------------------------------------------------
    Key {
        section: "tls",
        name: "handshake_rate",
        default: DefaultValue::Means("0", "no cap"),
        value: Value::Number {
            min: 0,
            max: 1_000_000,
            set: |c, n| c.tls.handshake_rate = n,
        },
        meaning: "new TLS connections a worker accepts per second; above it the rest wait in the kernel's queue, so a handshake flood cannot starve established clients (as HAProxy's `maxsslrate`)",
    },
    Key {
        section: "tls",
        name: "ticket_key_file",
        default: DefaultValue::Unset("lb-mio's own keys, a new one every 6 hours"),
        value: Value::Text {
            accepts: FILE,
            set: |c, v| {
                if v.is_empty() {
                    return Err("expected a file path".to_string());
                }
                c.tls.ticket_key_file = Some(PathBuf::from(v));
                Ok(())
            },
        },
        meaning: "session ticket keys, one per line as 64 hex digits (`openssl rand -hex 32`): the first encrypts, all decrypt; re-read on SIGHUP. Processes sharing the file resume each other's sessions",
    },
    Key {
        section: "tls",
        name: "session_cache",
        default: DefaultValue::Is("20000"),
        value: Value::Number {
            min: 0,
            max: 10_000_000,
            set: |c, n| c.tls.session_cache = n as usize,
        },
        meaning: "TLS 1.2 sessions remembered by id for clients without tickets, shared by all workers; 0 = none (restart to change)",
    },
    Key {
        section: "tls",
        name: "redirect_http",
        default: DefaultValue::Is("off"),
        value: Value::Text {
            accepts: "`off`, `on`, or `listen` addresses",
            set: |c, v| parse_redirect_http(v).map(|r| c.tls.redirect_http = r),
        },
        meaning: "plain listeners that answer every request with `308` to the same host and target over https (the first `tls_listen` port, left out when 443): `on` = all of them, or some `listen` addresses (`0.0.0.0:80`)",
    },
    Key {
        section: "tls",
        name: "hsts",
        default: DefaultValue::Means("0", "off"),
        value: Value::Number {
            min: 0,
            max: 63_072_000,
            set: |c, n| c.tls.hsts = (n > 0).then(|| format!("max-age={n}")),
        },
        meaning: "`Strict-Transport-Security: max-age=N` (seconds) on every response over TLS",
    },
    Key {
        section: "tls",
        name: "backend_ca",
        default: DefaultValue::Unset("`/etc/ssl/certs/ca-certificates.crt` (the system's CAs)"),
        value: Value::Text {
            accepts: FILE,
            set: |c, v| {
                if v.is_empty() {
                    return Err("expected a file path".to_string());
                }
                c.tls.backend_ca = Some(PathBuf::from(v));
                Ok(())
            },
        },
        meaning: "PEM file of the CAs that sign the certificates of TLS backends (`s1 = 10.0.0.7:443 tls`)",
    },
    Key {
        section: "tls",
        name: "backend_verify",
        default: DefaultValue::Is("true"),
        value: Value::Text {
            accepts: "`true` or `false`",
            set: |c, v| parse_bool(v).map(|b| c.tls.backend_verify = b),
        },
        meaning: "check TLS backends' certificates (their CA, and the name given by `tls=NAME`, else the address); `false` encrypts to whoever answers",
    },
    Key {
        section: "tls",
        name: "client_ca",
        default: DefaultValue::Unset("none: no client certificates asked for"),
        value: Value::Text {
            accepts: FILE,
            set: |c, v| {
                if v.is_empty() {
                    return Err("expected a file path".to_string());
                }
                c.tls.client_ca = Some(PathBuf::from(v));
                Ok(())
            },
        },
        meaning: "PEM file of the CAs that sign clients' certificates: TLS listeners ask each client for one, and requests reach the backends with `X-Client-Verify` (`SUCCESS` or `NONE`) and `X-Client-Subject` (restart to change)",
    },
    Key {
        section: "tls",
        name: "client_verify",
        default: DefaultValue::Is("required"),
        value: Value::Text {
            accepts: "`required` or `optional`",
            set: |c, v| parse_client_verify(v).map(|m| c.tls.client_verify = m),
        },
        meaning: "with `client_ca`: a client without a valid certificate fails the handshake (`required`), or is served with `X-Client-Verify: NONE` (`optional`)",
    },
    // ---- [admin] ----------------------------------------------------------------------------
    Key {
        section: "admin",
        name: "listen",
        default: DefaultValue::Is("off"),
        value: Value::Text {
            accepts: "`ip:port` or `off`",
            set: |c, v| parse_optional_addr(v).map(|a| c.admin.listen = a),
        },
        meaning: "admin API, `/metrics` and status page address (`off` to disable); a non-loopback address needs `token`",
    },
    Key {
        section: "admin",
        name: "token",
        default: DefaultValue::Unset("none"),
        value: Value::Text {
            accepts: "16 or more visible ASCII characters",
            set: |c, v| parse_token(v).map(|t| c.admin.token = Some(t)),
        },
        meaning: "bearer token the admin API requires (16+ visible characters); without one only loopback clients are served",
    },
    Key {
        section: "admin",
        name: "state_file",
        default: DefaultValue::Unset("none"),
        value: Value::Text {
            accepts: FILE,
            set: |c, v| {
                c.admin.state_file = Some(PathBuf::from(v));
                Ok(())
            },
        },
        meaning: "where admin API backend changes are kept across restarts (written atomically; at start it replaces the backends of the pools it names)",
    },
    // ---- [log] ------------------------------------------------------------------------------
    Key {
        section: "log",
        name: "level",
        default: DefaultValue::Is("info"),
        value: Value::Text {
            accepts: "`off`, `error`, `warn`, `info`, `debug` or `trace`",
            set: |c, v| parse_level(v).map(|l| c.log.level = l),
        },
        meaning: "`off`, `error`, `warn`, `info`, `debug`, `trace`",
    },
    Key {
        section: "log",
        name: "access_log",
        default: DefaultValue::Is("off"),
        value: Value::Text {
            accepts: "`off`, `text` or `json` (`on`, `true`, `yes`, `1` = `text`)",
            set: |c, v| parse_access_log(v).map(|a| c.log.access_log = a),
        },
        meaning: "one line per request: `text`, or `json` (one JSON object a line); `on` = `text`",
    },
    Key {
        section: "log",
        name: "access_log_file",
        default: DefaultValue::Unset("none"),
        value: Value::Text {
            accepts: FILE,
            set: |c, v| {
                if v.is_empty() {
                    return Err("expected a file path".to_string());
                }
                c.log.access_log_file = Some(PathBuf::from(v));
                Ok(())
            },
        },
        meaning: "write the access log to this file instead of stderr (reopened on SIGUSR1)",
    },
    // ---- [dns] ------------------------------------------------------------------------------
    Key {
        section: "dns",
        name: "resolver",
        default: DefaultValue::Unset(
            "first `nameserver` in /etc/resolv.conf, else `127.0.0.1:53`",
        ),
        value: Value::Text {
            accepts: "`ip` or `ip:port`",
            set: |c, v| parse_resolver(v).map(|a| c.dns.resolver = Some(a)),
        },
        meaning: "the DNS server asked for [discovered backends](#service-discovery-dns) (`ip` or `ip:port`)",
    },
    Key {
        section: "dns",
        name: "resolve_interval_s",
        default: DefaultValue::Is("5"),
        value: Value::Number {
            min: 1,
            max: 3600,
            set: |c, n| c.dns.resolve_interval = secs(n),
        },
        meaning: "every discovered entry is looked up again this often (1..3600)",
    },
    Key {
        section: "dns",
        name: "timeout_ms",
        default: DefaultValue::Is("1000"),
        value: Value::Number {
            min: 10,
            max: 60_000,
            set: |c, n| c.dns.timeout = ms(n),
        },
        meaning: "one lookup gives up after this (10..60000); a failed lookup changes nothing",
    },
    // ---- [etcd] -----------------------------------------------------------------------------
    Key {
        section: "etcd",
        name: "endpoints",
        default: DefaultValue::Unset("none: no etcd"),
        value: Value::Text {
            accepts: "`host:port` list",
            set: |c, v| parse_endpoints(v).map(|list| c.etcd.endpoints = list),
        },
        meaning: "etcd members to [share backends, pools and routes](#running-a-fleet) with, tried in turn",
    },
    Key {
        section: "etcd",
        name: "prefix",
        default: DefaultValue::Is("/lb-mio/"),
        value: Value::Text {
            accepts: "a key prefix starting and ending with `/`",
            set: |c, v| parse_prefix(v).map(|p| c.etcd.prefix = p),
        },
        meaning: "every key lb-mio reads and writes in etcd starts with this",
    },
    Key {
        section: "etcd",
        name: "ca",
        default: DefaultValue::Unset("none: plain TCP"),
        value: Value::Text {
            accepts: FILE,
            set: |c, v| {
                c.etcd.ca = Some(PathBuf::from(v));
                Ok(())
            },
        },
        meaning: "TLS to etcd: the CA bundle (PEM) members' certificates must chain to",
    },
    Key {
        section: "etcd",
        name: "cert",
        default: DefaultValue::Unset("none"),
        value: Value::Text {
            accepts: FILE,
            set: |c, v| {
                c.etcd.cert = Some(PathBuf::from(v));
                Ok(())
            },
        },
        meaning: "client certificate chain (PEM) for etcd's `--client-cert-auth`; needs `key` and `ca`",
    },
    Key {
        section: "etcd",
        name: "key",
        default: DefaultValue::Unset("none"),
        value: Value::Text {
            accepts: FILE,
            set: |c, v| {
                c.etcd.key = Some(PathBuf::from(v));
                Ok(())
            },
        },
        meaning: "the client certificate's private key (PEM)",
    },
    Key {
        section: "etcd",
        name: "user",
        default: DefaultValue::Unset("none: no auth"),
        value: Value::Text {
            accepts: "an etcd user name",
            set: |c, v| parse_visible(v).map(|u| c.etcd.user = Some(u)),
        },
        meaning: "etcd user (with `password`) when etcd has auth enabled",
    },
    Key {
        section: "etcd",
        name: "password",
        default: DefaultValue::Unset("none"),
        value: Value::Text {
            accepts: "the user's password",
            set: |c, v| parse_visible(v).map(|p| c.etcd.password = Some(p)),
        },
        meaning: "the etcd user's password (keep the file readable by lb-mio only)",
    },
    Key {
        section: "etcd",
        name: "connect_timeout_ms",
        default: DefaultValue::Is("1000"),
        value: Value::Number {
            min: 10,
            max: 60_000,
            set: |c, n| c.etcd.connect_timeout = ms(n),
        },
        meaning: "connecting to one etcd member gives up after this (10..60000)",
    },
    Key {
        section: "etcd",
        name: "request_timeout_ms",
        default: DefaultValue::Is("3000"),
        value: Value::Number {
            min: 100,
            max: 60_000,
            set: |c, n| c.etcd.request_timeout = ms(n),
        },
        meaning: "one call to etcd gives up after this (100..60000); also bounds the read at start",
    },
    Key {
        section: "etcd",
        name: "cache_file",
        default: DefaultValue::Unset("none"),
        value: Value::Text {
            accepts: FILE,
            set: |c, v| {
                c.etcd.cache_file = Some(PathBuf::from(v));
                Ok(())
            },
        },
        meaning: "the last view of etcd, kept here (written atomically) and read at start when etcd cannot be reached",
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Strategy, BACKENDS};

    const BACKEND: &str = "[backends]\ns1 = 127.0.0.1:9001\n";

    #[test]
    fn every_key_parses_its_default_to_the_default() {
        // `[etcd]`'s keys need its endpoints.
        let etcd = "[etcd]\nendpoints = 127.0.0.1:2379\n";
        let with_etcd = format!("{etcd}{BACKEND}");
        for key in KEYS {
            let Some(value) = key.default_value() else {
                continue;
            };
            let (defaults, before) = match key.section {
                "etcd" => (Config::parse(&with_etcd, "config.ini").unwrap(), etcd),
                _ => (Config::parse(BACKEND, "config.ini").unwrap(), ""),
            };
            let line = format!("{} = {value}\n", key.name);
            let text = match before {
                "" => format!("[{}]\n{line}{BACKEND}", key.section),
                _ => format!("{before}{line}{BACKEND}"),
            };
            let config = Config::parse(&text, "config.ini")
                .unwrap_or_else(|e| panic!("[{}] {}: {e}", key.section, key.name));
            assert_eq!(config, defaults, "[{}] {} = {value}", key.section, key.name);
        }
    }

    #[test]
    fn keys_are_unique_and_sections_contiguous() {
        for (i, key) in KEYS.iter().enumerate() {
            let same = |k: &&Key| k.section == key.section && k.name == key.name;
            assert_eq!(KEYS.iter().filter(same).count(), 1, "{}", key.name);
            let later = KEYS[i..].iter().skip_while(|k| k.section == key.section);
            assert!(
                later.clone().all(|k| k.section != key.section),
                "[{}] is split",
                key.section
            );
        }
        assert!(!sections().contains(&BACKENDS));
    }

    #[test]
    fn numbers_are_checked_against_the_table_range() {
        let mut config = Config::parse(BACKEND, "config.ini").unwrap();
        for key in KEYS {
            let Value::Number { min, max, .. } = key.value else {
                continue;
            };
            let want = format!("expected a number {min}..={max}");
            assert_eq!(key.values(), format!("{min}..={max}"));
            for v in [min, max] {
                assert_eq!(key.set(&mut config, &v.to_string()), Ok(()), "{}", key.name);
            }
            for bad in [u64::from(max) + 1, u64::from(min).wrapping_sub(1)] {
                let err = key.set(&mut config, &bad.to_string()).unwrap_err();
                assert!(err.starts_with(&want), "{}: {err}", key.name);
            }
        }
    }

    #[test]
    fn strategy_values_name_every_strategy() {
        let accepts = find("lb", "strategy").unwrap().values();
        for s in Strategy::ALL {
            assert!(accepts.contains(&format!("`{}`", s.name())), "{}", s.name());
        }
    }

    /// config.ini is the commented example of every key: each is there, set or commented out.
    #[test]
    fn the_example_config_shows_every_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.ini");
        let example = std::fs::read_to_string(path).unwrap();
        let mut section = "";
        let mut shown = Vec::new();
        for line in example.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[') {
                section = name.split(']').next().unwrap();
            } else if let Some((key, _)) = line.trim_start_matches([';', ' ']).split_once(" = ") {
                shown.push((section, key.trim()));
            }
        }
        for key in KEYS {
            let name = (key.section, key.name);
            assert!(
                shown.contains(&name),
                "config.ini lacks [{}] {}",
                key.section,
                key.name
            );
        }
    }

    /// The README's configuration table: `(section, key, line)` for each row, the section carried
    /// down from the row that names it.
    fn readme_rows(readme: &str) -> Vec<(String, String, String)> {
        let mut lines = readme
            .lines()
            .skip_while(|l| !l.starts_with("| section | key | default | meaning |"));
        assert!(lines.next().is_some(), "README has no configuration table");
        let mut section = String::new();
        lines
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.split(" | ").map(str::trim).collect();
                let cell = |i: usize| cells.get(i).copied().unwrap_or("").trim_matches(['|', ' ']);
                if !cell(0).is_empty() {
                    section = cell(0).trim_matches(['`', '[', ']']).to_string();
                }
                let key = cell(1).trim_matches('`').to_string();
                (section.clone(), key, line.to_string())
            })
            .collect()
    }

    fn words(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// README.md's table says what the code table says: each key's row is the one
    /// `markdown_rows` renders (whitespace aside), in the same order, then the `[backends]` row.
    #[test]
    fn readme_configuration_table_matches_the_key_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let mut rows = readme_rows(&readme);
        let backends = rows.pop().expect("README configuration rows");
        assert_eq!(
            backends.0, BACKENDS,
            "the last row is [backends]: {}",
            backends.2
        );
        assert_eq!(
            words(&backends.2),
            words(&backends_markdown_row()),
            "README.md's [backends] row differs from BACKENDS_LINE and BACKENDS_MEANING"
        );
        let mut problems = Vec::new();
        for (key, expected) in KEYS.iter().zip(markdown_rows()) {
            match rows
                .iter()
                .find(|(s, k, _)| s == key.section && k == key.name)
            {
                None => problems.push(format!("missing row, expected:\n{expected}")),
                Some((_, _, line)) if words(line) != words(&expected) => {
                    problems.push(format!("row differs:\n{line}\nexpected:\n{expected}"))
                }
                Some(_) => {}
            }
        }
        for (section, name, line) in &rows {
            if find(section, name).is_none() {
                problems.push(format!("row for a key not in the table:\n{line}"));
            }
        }
        let order: Vec<(&str, &str)> = KEYS.iter().map(|k| (k.section, k.name)).collect();
        let readme_order: Vec<(&str, &str)> = rows
            .iter()
            .map(|(s, k, _)| (s.as_str(), k.as_str()))
            .collect();
        if problems.is_empty() && order != readme_order {
            problems.push(format!(
                "rows are out of order; expected:\n{}",
                markdown_rows().collect::<Vec<_>>().join("\n")
            ));
        }
        assert!(
            problems.is_empty(),
            "README.md's configuration table disagrees with src/config/keys.rs:\n\n{}",
            problems.join("\n\n")
        );
    }
}
