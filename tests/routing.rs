//! Issue 13, routing: several pools chosen by routes (host, path, method, headers, query,
//! client address, listener, scheme, SNI), weighted splits to canaries, redirects, direct
//! answers, rewrites and header rules, path safety, and `--explain` (CLI and admin API).
//! Real binary, real sockets, loopback only (127.0.0.0/8); every loop bounded in count and time.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Generous bound for anything that should happen "soon" on a busy machine.
const WAIT: Duration = Duration::from_secs(5);

/// Bound on the time one statistics run (thousands of requests) may take.
const LOAD_LIMIT: Duration = Duration::from_secs(30);

/// Health checks that notice a change within a few probes 50 ms apart.
const FAST_HEALTH: &str = "[health]\ninterval_ms = 50\ntimeout_ms = 2000\nrise = 1\nfall = 1\n";

// ---------------------------------------------------------------------------------------------
// Local helpers: pools of named mock backends, requests over any listener, statistics
// ---------------------------------------------------------------------------------------------

/// Mock backends by name; each answers `200` with its name, so a body names the backend (and,
/// with one backend per pool named after it, the pool).
struct Pools {
    backends: BTreeMap<String, Backend>,
}

impl Pools {
    fn named(names: &[&str]) -> Pools {
        let backends = names
            .iter()
            .map(|n| (n.to_string(), Backend::named(n)))
            .collect();
        Pools { backends }
    }

    fn add(&mut self, backend: Backend) {
        self.backends.insert(backend.name.clone(), backend);
    }

    #[track_caller]
    fn get(&self, name: &str) -> &Backend {
        self.backends
            .get(name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.get(name).addr
    }

    /// Requests (probes apart) each backend has received so far.
    fn counts(&self) -> BTreeMap<String, usize> {
        self.backends
            .iter()
            .map(|(n, b)| (n.clone(), b.request_count()))
            .collect()
    }

    /// `[pool.NAME.backends]\nNAME = ADDR` for each name.
    fn sections(&self, names: &[&str]) -> String {
        names
            .iter()
            .map(|n| format!("[pool.{n}.backends]\n{n} = {}\n", self.addr(n)))
            .collect()
    }
}

/// The backends whose request count differs between two `Pools::counts`.
fn changed(before: &BTreeMap<String, usize>, after: &BTreeMap<String, usize>) -> Vec<String> {
    after
        .iter()
        .filter(|(n, c)| before.get(*n) != Some(*c))
        .map(|(n, c)| format!("{n} (+{})", c - before.get(n).copied().unwrap_or(0)))
        .collect()
}

/// A port on 127.0.0.1 that was free a moment ago, for configs that must name their listen
/// addresses (a route's `listener`).
fn free_addr() -> SocketAddr {
    dead_addr()
}

/// A keep-alive client connection, made again when lb-mio closes it; optionally from another
/// loopback source address.
struct Client {
    addr: SocketAddr,
    from: Option<IpAddr>,
    stream: Option<TcpStream>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            from: None,
            stream: None,
        }
    }

    fn from_ip(addr: SocketAddr, from: IpAddr) -> Client {
        Client {
            addr,
            from: Some(from),
            stream: None,
        }
    }

    /// Sends one request (raw bytes) and reads its answer.
    fn send(&mut self, raw: &[u8]) -> Result<Resp, String> {
        if self.stream.is_none() {
            let stream = match self.from {
                Some(from) => try_connect_from(from, self.addr, IO_TIMEOUT),
                None => try_connect(self.addr, IO_TIMEOUT),
            };
            self.stream = Some(stream.map_err(|e| format!("connect: {e}"))?);
        }
        let stream = self.stream.as_mut().expect("connected");
        let result = stream
            .write_all(raw)
            .map_err(|e| format!("send: {e}"))
            .and_then(|()| try_read_response(stream).map_err(|e| format!("read: {e}")));
        match &result {
            Ok(resp) if !resp.connection_has("close") => {}
            _ => self.stream = None,
        }
        result
    }

    /// `GET path` with these extra header lines (each `Name: value`).
    fn get(&mut self, path: &str, headers: &[String]) -> Result<Resp, String> {
        let mut raw = format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n");
        for h in headers {
            raw.push_str(h);
            raw.push_str("\r\n");
        }
        raw.push_str("\r\n");
        self.send(raw.as_bytes())
    }
}

/// Whether `hits` out of `n` draws with probability `p` is within 3 standard deviations of
/// the expected `n p` (sigma = sqrt(n p (1 - p))).
fn within_3_sigma(hits: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    (hits as f64 - mean).abs() <= 3.0 * sigma
}

// ---------------------------------------------------------------------------------------------
// 1. The route table
// ---------------------------------------------------------------------------------------------

/// The pools of the route table, each with one backend named after it (the pool `wt` apart:
/// its backends are `w1` and `w2`).
const TABLE_POOLS: &[&str] = &[
    "secure",
    "sni",
    "second",
    "internal",
    "www",
    "apps",
    "api",
    "static",
    "exact",
    "docs",
    "writes",
    "hdr-eq",
    "hdr-has",
    "q-eq",
    "q-has",
    "rewritten",
    "stripped",
    "prefixed",
    "hdrs",
    "upload",
];

/// The routes, in order; `SECOND` stands for the second plain listener's address.
const TABLE_ROUTES: &str = "\
[route.to-https]
host = secure.example.com
scheme = http
redirect = 308 https://{host}{path}{query}

[route.secure]
host = secure.example.com
scheme = https
pool = secure

[route.sni]
sni = sni.example.com
pool = sni

[route.second]
listener = SECOND
path_exact = /which
pool = second

[route.internal]
path = /internal/
client = 127.0.0.2/32
pool = internal

[route.internal-deny]
path = /internal/
return = 403 internal only

[route.www]
host = www.example.com
pool = www

[route.apps]
host = *.apps.example.com
pool = apps

[route.api]
host = api.example.com
pool = api

[route.static]
path = /static/ /assets/
pool = static

[route.exact]
path_exact = /exact
pool = exact

[route.docs]
path = /docs/
path_case = insensitive
pool = docs

[route.writes]
path = /m/
method = POST PUT DELETE
pool = writes

[route.hdr-eq]
path = /h/
header X-Canary = 1
pool = hdr-eq

[route.hdr-has]
path = /h/
has_header = X-Debug
pool = hdr-has

[route.q-eq]
path_exact = /q
query debug = 1
pool = q-eq

[route.q-has]
path_exact = /q
has_query = trace
pool = q-has

[route.old]
path_exact = /old /old/
redirect = 301 https://{host}/new{path}{query}

[route.r302]
path = /r302/
redirect = 302 {scheme}://{host}/moved{path}{query}

[route.r307]
path = /r307/
redirect = 307 https://other.example.net{path}

[route.forbidden]
path = /forbidden
return = 403 go away

[route.gone]
path = /gone
return = 410

[route.missing]
path = /missing
return = 404

[route.rewritten]
path = /api/
strip_prefix = /api
add_prefix = /v2
pool = rewritten

[route.stripped]
path = /strip/
strip_prefix = /strip
pool = stripped

[route.prefixed]
path = /p/
add_prefix = /inner
pool = prefixed

[route.hdrs]
path = /hdrs/
set_header X-Env = prod
add_header X-Via = lb
remove_header = X-Debug Cookie2
pool = hdrs

[route.resp]
path = /resp/
set_response_header Cache-Control = no-store
add_response_header X-Frame-Options = DENY
remove_response_header = X-Powered-By X-Backend-Secret
pool = resp

[route.upload]
path = /upload/
pool = upload

[route.weighted]
path = /wt/
pool = wt
";

/// The route table's balancer: two plain listeners, one TLS listener (a certificate for
/// `*.example.com`), the pools above, `[backends]` as the pool `default`. Fields drop in
/// order: lb-mio stops before its backends and files go.
struct Table {
    lb: Lb,
    pools: Pools,
    pki: Pki,
    second: SocketAddr,
}

impl Table {
    fn start() -> Table {
        let pki = Pki::new();
        let cert = pki.leaf(
            "site",
            KeyKind::Ecdsa,
            &["*.example.com", "*.apps.example.com"],
        );
        let mut names = vec!["default", "w1", "w2"];
        names.extend_from_slice(TABLE_POOLS);
        let mut pools = Pools::named(&names);
        // Headers for the response rules to work on.
        pools.add(Backend::start("resp", |_| {
            Response::ok("resp")
                .header("Cache-Control", "max-age=60")
                .header("X-Frame-Options", "SAMEORIGIN")
                .header("X-Powered-By", "php")
                .header("X-Backend-Secret", "42")
                .header("X-Other", "kept")
        }));
        let (first, second) = (free_addr(), free_addr());
        let config = format!(
            "[lb]\nlisten = {first}, {second}\ntls_listen = 127.0.0.1:0\nworkers = 1\n\
             [certificates]\nsite = {}\n\
             [backends]\ndefault = {}\n\
             {}\
             [pool.resp.backends]\nresp = {}\n\
             [pool.wt]\nstrategy = weighted_round_robin\n\
             [pool.wt.backends]\nw1 = {} weight=3\nw2 = {}\n\
             [pool.upload]\nmax_body = 1024\n\
             {}",
            cert.entry(),
            pools.addr("default"),
            pools.sections(TABLE_POOLS),
            pools.addr("resp"),
            pools.addr("w1"),
            pools.addr("w2"),
            TABLE_ROUTES.replace("SECOND", &second.to_string()),
        );
        let lb = Lb::start(&config);
        assert_eq!(lb.listening_on(), [first, second], "{}", lb.log_text());
        Table {
            lb,
            pools,
            pki,
            second,
        }
    }

    /// Sends `raw` the way `via` says, on a new connection; the answer.
    fn exchange(&self, via: Via, raw: &[u8]) -> Result<Resp, String> {
        let read = |r: std::io::Result<Resp>| r.map_err(|e| format!("read: {e}"));
        match via {
            Via::Plain | Via::Second | Via::From2 => {
                let to = if matches!(via, Via::Second) {
                    self.second
                } else {
                    self.lb.addr
                };
                let mut client = match via {
                    Via::From2 => Client::from_ip(to, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
                    _ => Client::new(to),
                };
                client.send(raw)
            }
            Via::Tls(sni) => {
                let tcp = try_connect(self.lb.tls_addr(), IO_TIMEOUT)
                    .map_err(|e| format!("connect: {e}"))?;
                let mut tls = tls_client(tcp, &self.pki.ca, sni);
                tls.write_all(raw)
                    .and_then(|()| tls.flush())
                    .map_err(|e| format!("send over TLS: {e}"))?;
                read(try_read_response(&mut tls))
            }
        }
    }
}

/// Where a case's request comes in.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// The first plain listener, from 127.0.0.1.
    Plain,
    /// The second plain listener, from 127.0.0.1.
    Second,
    /// The first plain listener, from 127.0.0.2.
    From2,
    /// The TLS listener, asking for this SNI name.
    Tls(&'static str),
}

/// What a case expects.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// `200` from this pool's backend (and no other), which received the target byte for byte
    /// as sent.
    Pool(&'static str),
    /// `200` from this pool's backend, which received this (rewritten) target.
    Rewritten(&'static str, &'static str),
    /// lb-mio's own answer with this status (and this body, when given); no backend sees it.
    Answer(u16, Option<&'static str>),
    /// A redirect with this status and `Location`; no backend sees it.
    Redirect(u16, &'static str),
}

struct Case {
    name: &'static str,
    via: Via,
    /// `METHOD TARGET`.
    request: &'static str,
    /// Header lines; `Host: lb.test` is added unless one is given, `Connection: close` always.
    headers: &'static [&'static str],
    /// Bytes of request body (with a `Content-Length`), 0 for none.
    body: usize,
    want: Want,
}

fn case(
    name: &'static str,
    via: Via,
    request: &'static str,
    headers: &'static [&'static str],
    want: Want,
) -> Case {
    Case {
        name,
        via,
        request,
        headers,
        body: 0,
        want,
    }
}

impl Case {
    fn with_body(mut self, bytes: usize) -> Case {
        self.body = bytes;
        self
    }

    fn target(&self) -> &'static str {
        self.request.split(' ').nth(1).expect("METHOD TARGET")
    }

    fn raw(&self) -> Vec<u8> {
        let mut raw = format!("{} HTTP/1.1\r\n", self.request);
        let has_host = self
            .headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("host:"));
        if !has_host {
            raw.push_str("Host: lb.test\r\n");
        }
        for h in self.headers {
            raw.push_str(h);
            raw.push_str("\r\n");
        }
        if self.body > 0 || self.request.starts_with("POST ") {
            raw.push_str(&format!("Content-Length: {}\r\n", self.body));
        }
        raw.push_str("Connection: close\r\n\r\n");
        let mut raw = raw.into_bytes();
        raw.extend(lcg_bytes(self.body, 13));
        raw
    }
}

/// Every case of the route table: (name, where it comes in, `METHOD TARGET`, header lines,
/// what it gets).
#[rustfmt::skip]
fn table_cases() -> Vec<Case> {
    use Via::*;
    use Want::*;
    vec![
        // Hosts: exact, case, port, trailing dot, one-label wildcard, absolute form.
        case("host exact", Plain, "GET /", &["Host: www.example.com"], Pool("www")),
        case("host case-insensitive", Plain, "GET /", &["Host: WWW.Example.COM"], Pool("www")),
        case("host with a port", Plain, "GET /", &["Host: www.example.com:8080"], Pool("www")),
        case("host with a trailing dot", Plain, "GET /", &["Host: www.example.com."], Pool("www")),
        case("host longer than the route's", Plain, "GET /", &["Host: www.example.com.evil.test"], Pool("default")),
        case("wildcard host", Plain, "GET /", &["Host: a.apps.example.com"], Pool("apps")),
        case("wildcard host, case and port", Plain, "GET /", &["Host: A.APPS.Example.com:81"], Pool("apps")),
        case("wildcard needs a label", Plain, "GET /", &["Host: apps.example.com"], Pool("default")),
        case("wildcard is one label", Plain, "GET /", &["Host: a.b.apps.example.com"], Pool("default")),
        case("host origin-form", Plain, "GET /x", &["Host: api.example.com"], Pool("api")),
        case("host of an absolute-form target", Plain, "GET http://api.example.com/x", &["Host: api.example.com"], Pool("api")),
        // Paths: prefixes, exact, case; normalised to match, forwarded as sent.
        case("path prefix", Plain, "GET /static/app.css", &[], Pool("static")),
        case("path prefix, second of the list", Plain, "GET /assets/logo.png", &[], Pool("static")),
        case("path prefix is not a word prefix", Plain, "GET /staticfile", &[], Pool("default")),
        case("path case-sensitive by default", Plain, "GET /Static/app.css", &[], Pool("default")),
        case("path with repeated slashes", Plain, "GET //static//app.css", &[], Pool("static")),
        case("path with dot segments", Plain, "GET /./static/./app.css", &[], Pool("static")),
        case("a dot-dot segment is refused", Plain, "GET /x/../static/app.css", &[], Answer(400, None)),
        case("path with an encoded unreserved char", Plain, "GET /%73tatic/app.css", &[], Pool("static")),
        case("path exact", Plain, "GET /exact", &[], Pool("exact")),
        case("path exact ignores the query", Plain, "GET /exact?x=1", &[], Pool("exact")),
        case("path exact, not with a slash", Plain, "GET /exact/", &[], Pool("default")),
        case("path exact, not longer", Plain, "GET /exactly", &[], Pool("default")),
        case("path case-insensitive option", Plain, "GET /DOCS/intro", &[], Pool("docs")),
        case("path case-insensitive option, mixed", Plain, "GET /dOcS/", &[], Pool("docs")),
        // Methods.
        case("method not listed", Plain, "GET /m/x", &[], Pool("default")),
        case("method POST", Plain, "POST /m/x", &[], Pool("writes")),
        case("method DELETE", Plain, "DELETE /m/x", &[], Pool("writes")),
        case("method PATCH not listed", Plain, "PATCH /m/x", &[], Pool("default")),
        // Headers.
        case("header equal", Plain, "GET /h/x", &["X-Canary: 1"], Pool("hdr-eq")),
        case("header name case-insensitive", Plain, "GET /h/x", &["x-canary: 1"], Pool("hdr-eq")),
        case("header other value", Plain, "GET /h/x", &["X-Canary: 2"], Pool("default")),
        case("header present", Plain, "GET /h/x", &["X-Debug: yes"], Pool("hdr-has")),
        case("header present after a failed equal", Plain, "GET /h/x", &["X-Canary: 2", "X-Debug: 1"], Pool("hdr-has")),
        case("header absent", Plain, "GET /h/x", &[], Pool("default")),
        // Query.
        case("query equal", Plain, "GET /q?debug=1", &[], Pool("q-eq")),
        case("query equal, second parameter", Plain, "GET /q?a=2&debug=1", &[], Pool("q-eq")),
        case("query other value", Plain, "GET /q?debug=10", &[], Pool("default")),
        case("query equal wins by order", Plain, "GET /q?debug=1&trace", &[], Pool("q-eq")),
        case("query present, no value", Plain, "GET /q?trace", &[], Pool("q-has")),
        case("query present, a value", Plain, "GET /q?trace=yes", &[], Pool("q-has")),
        case("query name is whole", Plain, "GET /q?xtrace=1", &[], Pool("default")),
        case("query absent", Plain, "GET /q", &[], Pool("default")),
        // Client address.
        case("client in the CIDR", From2, "GET /internal/x", &[], Pool("internal")),
        case("client outside the CIDR", Plain, "GET /internal/x", &[], Answer(403, Some("internal only"))),
        // Listener.
        case("second listener", Second, "GET /which", &[], Pool("second")),
        case("first listener", Plain, "GET /which", &[], Pool("default")),
        // Scheme and SNI: http is redirected to https, which is served (no loop).
        case("scheme http redirected", Plain, "GET /login?next=/home", &["Host: secure.example.com"], Redirect(308, "https://secure.example.com/login?next=/home")),
        case("scheme https served", Tls("secure.example.com"), "GET /login?next=/home", &["Host: secure.example.com"], Pool("secure")),
        case("sni", Tls("sni.example.com"), "GET /x", &[], Pool("sni")),
        case("other sni", Tls("other.example.com"), "GET /x", &[], Pool("default")),
        case("no sni over plain", Plain, "GET /x", &["Host: sni.example.com"], Pool("default")),
        // Redirects.
        case("redirect 301", Plain, "GET /old?x=1", &[], Redirect(301, "https://lb.test/new/old?x=1")),
        case("redirect 301, host with port, no query", Plain, "GET /old/", &["Host: lb.test:8080"], Redirect(301, "https://lb.test:8080/new/old/")),
        case("redirect 302, scheme, path as sent", Plain, "GET /r302/%7Euser", &[], Redirect(302, "http://lb.test/moved/r302/%7Euser")),
        case("redirect 307 without the query", Plain, "GET /r307/a?b=c", &[], Redirect(307, "https://other.example.net/r307/a")),
        // Direct answers.
        case("return 403 with a body", Plain, "GET /forbidden", &[], Answer(403, Some("go away"))),
        case("return 410", Plain, "GET /gone", &[], Answer(410, None)),
        case("return 404", Plain, "GET /missing/x", &[], Answer(404, None)),
        case("a fragment is refused", Plain, "GET /x#frag", &[], Answer(400, None)),
        case("OPTIONS * takes routes without path keys", Plain, "OPTIONS *", &[], Pool("default")),
        // No route.
        case("no route: default pool", Plain, "GET /nothing", &[], Pool("default")),
        // Rewrites.
        case("strip and add a prefix", Plain, "GET /api/users?id=7", &[], Rewritten("rewritten", "/v2/users?id=7")),
        case("strip and add a prefix, bare", Plain, "GET /api/", &[], Rewritten("rewritten", "/v2/")),
        case("strip a prefix", Plain, "GET /strip/x/y", &[], Rewritten("stripped", "/x/y")),
        case("strip to the root", Plain, "GET /strip/", &[], Rewritten("stripped", "/")),
        case("strip applies to the path as sent", Plain, "GET /%73trip/x", &[], Rewritten("stripped", "/%73trip/x")),
        case("add a prefix", Plain, "GET /p/x?y=1", &[], Rewritten("prefixed", "/inner/p/x?y=1")),
        // Without a rewrite the target goes byte for byte.
        case("odd encoding kept", Plain, "GET /a/%7euser", &[], Pool("default")),
        case("dots, params and query kept", Plain, "GET /a/./b//c;v=1?x=%20&y", &[], Pool("default")),
        // Per-pool max_body.
        case("body at the pool's limit", Plain, "POST /upload/x", &[], Pool("upload")).with_body(1024),
        case("body over the pool's limit", Plain, "POST /upload/x", &[], Answer(413, None)).with_body(1025),
        case("body elsewhere unlimited", Plain, "POST /nothing", &[], Pool("default")).with_body(4096),
    ]
}

#[test]
fn a_route_table_sends_each_request_where_its_route_says() {
    let table = Table::start();
    let cases = table_cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let before = table.pools.counts();
        let resp = match table.exchange(case.via, &case.raw()) {
            Ok(resp) => resp,
            Err(e) => {
                failures.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        let moved = changed(&before, &table.pools.counts());
        let got = format!(
            "{} {:?} (backends: {moved:?})",
            resp.status,
            resp.body_str()
        );
        let mut fail = |what: String| failures.push(format!("{}: {what}; got {got}", case.name));
        match case.want {
            Want::Pool(pool) | Want::Rewritten(pool, _) => {
                let target = match case.want {
                    Want::Rewritten(_, target) => target,
                    _ => case.target(),
                };
                if resp.status != 200
                    || resp.body_str() != pool
                    || moved != [format!("{pool} (+1)")]
                {
                    fail(format!("want pool {pool}"));
                } else if table.pools.get(pool).last_request().target != target {
                    let seen = table.pools.get(pool).last_request().target;
                    fail(format!("want target {target:?} at {pool}, it saw {seen:?}"));
                }
            }
            Want::Answer(status, body) => {
                if resp.status != status || !moved.is_empty() {
                    fail(format!("want lb-mio's own {status}"));
                } else if body.is_some_and(|b| resp.body_str() != b) {
                    fail(format!("want body {body:?}"));
                }
            }
            Want::Redirect(status, location) => {
                if resp.status != status || !moved.is_empty() {
                    fail(format!("want a {status} redirect"));
                } else if resp.header("location") != Some(location) {
                    let seen = resp.header("location");
                    fail(format!("want Location {location:?}, not {seen:?}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\nlog:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        table.lb.log_text()
    );

    // Request header rules: what the route's backend sees; other routes leave headers be.
    let sent = "GET /hdrs/x HTTP/1.1\r\nHost: lb.test\r\nX-Env: dev\r\nX-Env: test\r\n\
                X-Via: client\r\nX-Debug: 1\r\nCookie2: a=b\r\nX-Keep: yes\r\nConnection: close\r\n\r\n";
    let resp = table.exchange(Via::Plain, sent.as_bytes()).unwrap();
    assert_eq!((resp.status, resp.body_str().as_str()), (200, "hdrs"));
    let seen = table.pools.get("hdrs").last_request();
    assert_eq!(
        seen.header_all("X-Env"),
        ["prod"],
        "set replaces every copy"
    );
    assert_eq!(seen.header_all("X-Via"), ["client", "lb"], "add appends");
    assert!(!seen.has_header("X-Debug"), "{}", seen.head_str());
    assert!(!seen.has_header("Cookie2"), "{}", seen.head_str());
    assert_eq!(seen.header("X-Keep"), Some("yes"));
    let elsewhere = sent.replace("/hdrs/x", "/elsewhere");
    table.exchange(Via::Plain, elsewhere.as_bytes()).unwrap();
    let seen = table.pools.get("default").last_request();
    assert_eq!(seen.target, "/elsewhere");
    assert_eq!(seen.header_all("X-Env"), ["dev", "test"]);
    assert_eq!(seen.header_all("X-Via"), ["client"]);
    assert_eq!(seen.header("X-Debug"), Some("1"));

    // Response header rules: what the client sees.
    let raw = b"GET /resp/x HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n";
    let resp = table.exchange(Via::Plain, raw).unwrap();
    assert_eq!((resp.status, resp.body_str().as_str()), (200, "resp"));
    assert_eq!(
        resp.header_all("Cache-Control"),
        ["no-store"],
        "{}",
        resp.head_str()
    );
    assert_eq!(
        resp.header_all("X-Frame-Options"),
        ["SAMEORIGIN", "DENY"],
        "{}",
        resp.head_str()
    );
    assert!(!resp.has_header("X-Powered-By"), "{}", resp.head_str());
    assert!(!resp.has_header("X-Backend-Secret"), "{}", resp.head_str());
    assert_eq!(resp.header("X-Other"), Some("kept"));

    // Weights within a pool: weighted round robin gives w1 (weight 3) three of every four.
    let before = table.pools.counts();
    for i in 0..8 {
        let raw = format!("GET /wt/{i} HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n");
        let resp = table.exchange(Via::Plain, raw.as_bytes()).unwrap();
        assert_eq!(resp.status, 200, "{}", resp.head_str());
    }
    let after = table.pools.counts();
    assert_eq!(
        (after["w1"] - before["w1"], after["w2"] - before["w2"]),
        (6, 2),
        "{:?}",
        changed(&before, &after)
    );
}

#[test]
fn without_a_default_pool_a_request_no_route_takes_gets_404() {
    let only = Backend::named("only");
    let lb = Lb::start(&format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\n\
         [pool.only.backends]\nonly = {}\n\
         [route.only]\npath = /only/\npool = only\n",
        only.addr
    ));
    let routed = get(lb.addr, "/only/x");
    assert_eq!((routed.status, routed.body_str().as_str()), (200, "only"));
    let missed = get(lb.addr, "/elsewhere");
    assert_eq!(missed.status, 404, "{}", missed.head_str());
    assert_eq!(only.request_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Backups, per-pool sticky cookies
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pool_with_backups_uses_them_only_when_every_primary_is_down() {
    let mut pools = Pools::named(&["web", "p1", "p2", "b1"]);
    let lb = Lb::start(&format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\n{FAST_HEALTH}\
         [backends]\nweb = {}\n\
         [pool.bk.backends]\np1 = {}\np2 = {}\nb1 = {} backup\n\
         [route.bk]\npath = /bk/\npool = bk\n",
        pools.addr("web"),
        pools.addr("p1"),
        pools.addr("p2"),
        pools.addr("b1"),
    ));
    let served: Vec<String> = (0..10)
        .map(|i| get(lb.addr, &format!("/bk/{i}")).body_str())
        .collect();
    let used: HashSet<&str> = served.iter().map(String::as_str).collect();
    assert_eq!(used, HashSet::from(["p1", "p2"]), "{served:?}");
    assert_eq!(pools.get("b1").request_count(), 0);

    // Both primaries go: the backup takes the pool's traffic once health checks see it.
    for name in ["p1", "p2"] {
        pools.backends.get_mut(name).unwrap().stop();
    }
    let moved = wait_until(WAIT, || {
        try_get(lb.addr, "/bk/probe", IO_TIMEOUT).is_ok_and(|r| r.body_str() == "b1")
    });
    assert!(
        moved,
        "the backup never took traffic; log:\n{}",
        lb.log_text()
    );
    for i in 0..10 {
        let resp = get(lb.addr, &format!("/bk/after/{i}"));
        assert_eq!((resp.status, resp.body_str().as_str()), (200, "b1"));
    }
    // The default pool never saw the pool's traffic.
    assert_eq!(pools.get("web").request_count(), 0);
}

#[test]
fn each_pool_times_out_and_checks_health_by_its_own_settings() {
    // Probes reach the handler, so each backend records the path it was checked on.
    let options = BackendOptions {
        answer_probes: false,
        ..BackendOptions::default()
    };
    let slow = |r: &Request| match r.is_probe() {
        true => Response::ok(""),
        false => Response::ok("slow").delay(Duration::from_millis(600)),
    };
    let roomy = Backend::with_options("roomy", options.clone(), slow);
    let tight = Backend::with_options("tight", options, slow);
    let lb = Lb::start(&format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\nretries = 0\n\
         [health]\ninterval_ms = 50\n\
         [backends]\nroomy = {}\n\
         [pool.tight]\nbackend_ms = 150\nhealth_path = /hz\nhealth_max_fails = 0\n\
         [pool.tight.backends]\ntight = {}\n\
         [route.tight]\npath = /t/\npool = tight\n",
        roomy.addr, tight.addr
    ));
    let waited = get(lb.addr, "/x");
    assert_eq!((waited.status, waited.body_str().as_str()), (200, "slow"));
    let cut = get(lb.addr, "/t/x");
    assert_eq!(cut.status, 504, "the pool's backend_ms: {}", cut.head_str());

    let probed_on = |b: &Backend| -> HashSet<String> {
        let probes = b.requests().into_iter().filter(Request::is_probe);
        probes.map(|r| r.target).collect()
    };
    assert!(wait_until(WAIT, || !probed_on(&tight).is_empty()));
    assert_eq!(probed_on(&tight), HashSet::from(["/hz".to_string()]));
    assert_eq!(
        probed_on(&roomy),
        HashSet::from(["/healthcheck".to_string()])
    );
}

/// `name=value` of a `Set-Cookie` header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_string()
}

#[test]
fn each_pool_has_its_own_sticky_cookie_and_they_do_not_overwrite_each_other() {
    let pools = Pools::named(&["d1", "d2", "c1", "c2"]);
    let lb = Lb::start(&format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\nsticky = cookie\n\
         [backends]\nd1 = {}\nd2 = {}\n\
         [pool.cart.backends]\nc1 = {}\nc2 = {}\n\
         [route.cart]\npath = /cart/\npool = cart\n",
        pools.addr("d1"),
        pools.addr("d2"),
        pools.addr("c1"),
        pools.addr("c2"),
    ));
    let mut client = Client::new(lb.addr);
    let first = client.get("/", &[]).unwrap();
    let set = first.header_all("set-cookie");
    assert_eq!(set.len(), 1, "{}", first.head_str());
    let default_cookie = cookie_pair(set[0]);
    assert!(default_cookie.starts_with("lbmio="), "{default_cookie}");
    let default_home = first.body_str();

    // The cart pool sets its own cookie and leaves the default pool's alone.
    let with_default = format!("Cookie: {default_cookie}");
    let cart = client.get("/cart/items", &[with_default]).unwrap();
    let set = cart.header_all("set-cookie");
    assert_eq!(set.len(), 1, "{}", cart.head_str());
    let cart_cookie = cookie_pair(set[0]);
    assert!(cart_cookie.starts_with("lbmio_cart="), "{cart_cookie}");
    let cart_home = cart.body_str();
    assert!(cart_home.starts_with('c'), "{cart_home}");

    // With both cookies, each pool keeps its client on its backend and sets nothing again.
    let both = format!("Cookie: {default_cookie}; {cart_cookie}");
    for i in 0..20 {
        let (path, home) = if i % 2 == 0 {
            (format!("/page/{i}"), &default_home)
        } else {
            (format!("/cart/{i}"), &cart_home)
        };
        let resp = client.get(&path, std::slice::from_ref(&both)).unwrap();
        assert_eq!(&resp.body_str(), home, "{path}");
        assert!(
            !resp.has_header("set-cookie"),
            "{path}: {}",
            resp.head_str()
        );
    }
    // Without the cookies, round robin would have spread these over both backends of each pool.
    let counts = pools.counts();
    assert!(
        counts[&default_home] >= 11 && counts[&cart_home] >= 11,
        "{counts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2, 3. Canaries
// ---------------------------------------------------------------------------------------------

/// A balancer whose route `[route.split]` sends everything to `stable 95, canary 5`, with
/// `extra` lines in that route (such as `split_by`).
fn canary_site(extra_route_lines: &str) -> (Pools, Lb) {
    let pools = Pools::named(&["stable", "canary"]);
    let lb = Lb::start(&format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 2\n{}\
         [route.split]\npool = stable 95, canary 5\n{extra_route_lines}",
        pools.sections(&["stable", "canary"])
    ));
    (pools, lb)
}

#[test]
fn a_five_percent_canary_gets_five_percent_of_requests() {
    let (pools, lb) = canary_site("");
    let addr = lb.addr;
    const THREADS: usize = 4;
    const EACH: usize = 5_000;
    let deadline = Instant::now() + LOAD_LIMIT;
    let tallies: Vec<HashMap<String, usize>> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut client = Client::new(addr);
                    let mut tally = HashMap::new();
                    for i in 0..EACH {
                        assert!(Instant::now() < deadline, "thread {t}: too slow at {i}");
                        let resp = client.get(&format!("/{t}/{i}"), &[]).unwrap();
                        assert_eq!(resp.status, 200, "{}", resp.head_str());
                        *tally.entry(resp.body_str()).or_insert(0) += 1;
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let n = THREADS * EACH;
    let canary: usize = tallies.iter().filter_map(|t| t.get("canary")).sum();
    let stable: usize = tallies.iter().filter_map(|t| t.get("stable")).sum();
    assert_eq!(canary + stable, n, "{tallies:?}");
    assert_eq!(pools.get("canary").request_count(), canary);
    assert!(
        within_3_sigma(canary, n, 0.05),
        "the canary got {canary} of {n} requests ({:.2}%), beyond 3 sigma of 5%",
        canary as f64 * 100.0 / n as f64
    );
}

/// Sends `per_user` requests for each of `users` users (in parallel over a few threads) with
/// `request(client for user u, u)`; checks each user saw one pool only and that the share of
/// users on the canary is within 3 sigma of 5%.
fn users_stay_on_one_pool(
    lb: &Lb,
    users: usize,
    per_user: usize,
    client_for: impl Fn(usize) -> Client + Sync,
    request: impl Fn(&mut Client, usize, usize) -> Result<Resp, String> + Sync,
) {
    const THREADS: usize = 4;
    let deadline = Instant::now() + LOAD_LIMIT;
    let homes: Vec<(usize, HashSet<String>)> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (client_for, request) = (&client_for, &request);
                s.spawn(move || {
                    let mut seen = Vec::new();
                    for user in (t..users).step_by(THREADS) {
                        let mut client = client_for(user);
                        let mut pools = HashSet::new();
                        for i in 0..per_user {
                            assert!(Instant::now() < deadline, "too slow at user {user}");
                            let resp = request(&mut client, user, i)
                                .unwrap_or_else(|e| panic!("user {user}, request {i}: {e}"));
                            assert_eq!(resp.status, 200, "{}", resp.head_str());
                            pools.insert(resp.body_str());
                        }
                        seen.push((user, pools));
                    }
                    seen
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(homes.len(), users);
    let split: Vec<_> = homes.iter().filter(|(_, p)| p.len() != 1).collect();
    assert!(split.is_empty(), "users on more than one pool: {split:?}");
    let on_canary = homes.iter().filter(|(_, p)| p.contains("canary")).count();
    assert!(
        within_3_sigma(on_canary, users, 0.05),
        "{on_canary} of {users} users on the canary, beyond 3 sigma of 5%; log:\n{}",
        lb.log_text()
    );
}

#[test]
fn a_canary_split_by_header_keeps_each_user_on_one_pool() {
    let (_pools, lb) = canary_site("split_by = header:X-User\n");
    let addr = lb.addr;
    users_stay_on_one_pool(
        &lb,
        200,
        50,
        // Users share connections: the header decides, not the connection.
        move |_| Client::new(addr),
        |client, user, i| client.get(&format!("/{i}"), &[format!("X-User: user-{user}")]),
    );
}

#[test]
fn a_canary_split_by_cookie_keeps_each_user_on_one_pool() {
    let (_pools, lb) = canary_site("split_by = cookie:session\n");
    let addr = lb.addr;
    users_stay_on_one_pool(
        &lb,
        200,
        20,
        move |_| Client::new(addr),
        |client, user, i| {
            let cookie = format!("Cookie: theme=dark; session=s{user:04}; lang=en");
            client.get(&format!("/{i}"), &[cookie])
        },
    );
}

#[test]
fn a_canary_split_by_client_ip_keeps_each_user_on_one_pool() {
    let (_pools, lb) = canary_site("split_by = client_ip\n");
    let addr = lb.addr;
    users_stay_on_one_pool(
        &lb,
        200,
        20,
        move |user| Client::from_ip(addr, IpAddr::V4(Ipv4Addr::new(127, 0, 1, user as u8 + 1))),
        |client, _, i| client.get(&format!("/{i}"), &[]),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Reload under load
// ---------------------------------------------------------------------------------------------

#[test]
fn a_request_in_flight_keeps_its_pool_and_route_when_a_reload_renumbers_or_removes_them() {
    // api answers after 800 ms: each reload below lands while its request is in flight.
    let api = Backend::start("api", |_| {
        Response::ok("api").delay(Duration::from_millis(800))
    });
    let web = Backend::named("web");
    let head = format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\n[backends]\nweb = {}\n",
        web.addr
    );
    let api_pool = format!(
        "[pool.api.backends]\napi = {}\n\
         [route.api]\npath = /api/\nset_response_header X-Route = api\npool = api\n",
        api.addr
    );
    // A pool and a route written before api's take their places.
    let first = format!(
        "[pool.first.backends]\nfirst = {}\n\
         [route.first]\npath = /first/\nset_response_header X-Route = first\npool = first\n",
        web.addr
    );
    let lb = Lb::start(&format!("{head}{api_pool}"));
    let route_header = |resp: &Resp| {
        let found = resp
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-route"));
        found.map(|(_, v)| v.clone())
    };
    // Renumbered, the route's rules still apply; removed, they are gone with it (the request
    // still finishes on its backend).
    for (next, rules) in [
        (format!("{head}{first}{api_pool}"), Some("api")),
        (head.clone(), None),
    ] {
        let addr = lb.addr;
        let asked = api.request_count();
        let flying = thread::spawn(move || get(addr, "/api/x"));
        assert!(
            api.wait_for_requests(asked + 1, WAIT),
            "the request never reached api"
        );
        lb.reload_ok(&next);
        let resp = flying.join().unwrap();
        assert_eq!((resp.status, resp.body_str().as_str()), (200, "api"));
        assert_eq!(
            route_header(&resp).as_deref(),
            rules,
            "the route it came by"
        );
    }
    // The worker that carried them is still there.
    let after = get(lb.addr, "/api/x");
    assert_eq!((after.status, after.body_str().as_str()), (200, "web"));
    assert_eq!(lb.count_log("panicked"), 0, "{}", lb.log_text());
}

#[test]
fn a_reload_under_load_adds_a_pool_and_route_and_removes_others_without_failing_a_request() {
    let pools = Pools::named(&["a", "b", "c"]);
    let head = format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 2\n{FAST_HEALTH}[backends]\na = {}\n",
        pools.addr("a")
    );
    // Before: the load (Host: lb.test) goes to pool b by its route.
    let before = format!(
        "{head}[pool.b.backends]\nb = {}\n[route.legacy]\nhost = lb.test\npool = b\n",
        pools.addr("b")
    );
    // After: route and pool b are gone (the load falls to the default pool a), pool c and a
    // route to it are new.
    let after = format!(
        "{head}[pool.c.backends]\nc = {}\n[route.new]\npath = /c/\npool = c\n",
        pools.addr("c")
    );
    let lb = Lb::start(&before);
    const CLIENTS: usize = 4;
    let load = Load::start(lb.addr, CLIENTS);
    load.wait_for_more(300, WAIT);
    assert!(pools.get("b").request_count() > 0);
    assert_eq!(
        pools.get("a").request_count(),
        0,
        "the route sends the load to b"
    );

    lb.reload_ok(&after);

    // The new route reaches c once its health checks pass.
    let mut client = Client::new(lb.addr);
    let reached = wait_until(WAIT, || {
        client
            .get("/c/first", &[])
            .is_ok_and(|r| r.status == 200 && r.body_str() == "c")
    });
    assert!(
        reached,
        "the new route never reached c; log:\n{}",
        lb.log_text()
    );
    for i in 0..20 {
        let resp = client.get(&format!("/c/{i}"), &[]).unwrap();
        assert_eq!(
            (resp.status, resp.body_str().as_str()),
            (200, "c"),
            "/c/{i}"
        );
    }
    assert_eq!(pools.get("c").last_request().target, "/c/19");

    // The load now goes to a, and b gets nothing more.
    load.wait_for_more(300, WAIT);
    let (a_then, b_then) = (
        pools.get("a").request_count(),
        pools.get("b").request_count(),
    );
    load.wait_for_more(300, WAIT);
    // Each client may have had one request at a already when `a_then` was read.
    let a_now = pools.get("a").request_count();
    assert!(
        a_now + CLIENTS >= a_then + 300,
        "a got {} of 300",
        a_now - a_then
    );
    assert_eq!(
        pools.get("b").request_count(),
        b_then,
        "b still gets requests"
    );
    // Once no worker routes to pool b, the health thread drains its backend.
    lb.expect_log("backend b: its pool b is gone: draining", WAIT);
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the reload: {:?}\nlog:\n{}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(10)],
        lb.log_text()
    );
    assert!(pools
        .get("c")
        .requests()
        .iter()
        .all(|r| r.target.starts_with("/c/")));
}

// ---------------------------------------------------------------------------------------------
// 5. Path safety
// ---------------------------------------------------------------------------------------------

/// The request targets of tests/path_corpus.txt (comments and empty lines skipped).
fn path_corpus() -> Vec<Vec<u8>> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/path_corpus.txt");
    let text = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty() && !line.starts_with(b"#"))
        .map(<[u8]>::to_vec)
        .collect()
}

/// The path of a target as a backend reads it: before `?` (and `#`), without an absolute
/// form's scheme and authority.
fn target_path(target: &[u8]) -> &[u8] {
    let mut path = target;
    if let Some(at) = find(path, b"://") {
        let rest = &path[at + 3..];
        path = rest
            .iter()
            .position(|&b| b == b'/')
            .map_or(b"/", |i| &rest[i..]);
    }
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    &path[..end]
}

/// Every valid `%XX` decoded (as nginx does, `%2F` included); bad escapes kept as they are.
fn percent_decode(path: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(path[i]);
        i += 1;
    }
    out
}

/// Slashes merged, `.` and `..` segments resolved (`..` at the root stays there).
fn resolve_dots(path: &[u8]) -> Vec<u8> {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for segment in path.split(|&b| b == b'/') {
        trailing = matches!(segment, b"" | b"." | b"..");
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = Vec::new();
    for segment in &segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if trailing || out.is_empty() {
        out.push(b'/');
    }
    out
}

/// Each segment's `;params` dropped, as Tomcat does before decoding.
fn drop_params(path: &[u8]) -> Vec<u8> {
    let segments: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .map(|s| s.split(|&b| b == b';').next().unwrap_or(s))
        .collect();
    segments.join(&b'/')
}

/// How nginx reads a target's path: decoded, slashes merged, dot segments resolved.
fn nginx_reading(target: &[u8]) -> Vec<u8> {
    resolve_dots(&percent_decode(target_path(target)))
}

/// How Tomcat reads it: `;params` dropped first, then as nginx.
fn tomcat_reading(target: &[u8]) -> Vec<u8> {
    resolve_dots(&percent_decode(&drop_params(target_path(target))))
}

fn is_admin(path: &[u8]) -> bool {
    path == b"/admin" || path.starts_with(b"/admin/")
}

#[test]
fn the_path_readers_of_the_safety_check_see_what_backends_see() {
    // The check below is only as good as these readings.
    assert_eq!(nginx_reading(b"/public/%2e%2e/admin"), b"/admin");
    assert_eq!(nginx_reading(b"//admin//x?y=/admin"), b"/admin/x");
    assert_eq!(nginx_reading(b"/a%2F..%2Fadmin"), b"/admin");
    assert_eq!(nginx_reading(b"http://h/x/../admin/"), b"/admin/");
    assert_eq!(nginx_reading(b"/;x/admin"), b"/;x/admin");
    assert_eq!(tomcat_reading(b"/;x/admin"), b"/admin");
    assert_eq!(tomcat_reading(b"/public/..;/admin"), b"/admin");
    assert_eq!(nginx_reading(b"/admin%zz"), b"/admin%zz");
    assert!(is_admin(b"/admin") && is_admin(b"/admin/") && !is_admin(b"/administrator"));
}

#[test]
fn hostile_paths_never_reach_the_public_pool_as_an_admin_path() {
    let pools = Pools::named(&["public", "admin"]);
    let lb = Lb::start(&format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\n\
         [backends]\npublic = {}\n\
         [pool.admin.backends]\nadmin = {}\n\
         [route.admin]\npath = /admin/\nclient = 10.0.0.0/8\npool = admin\n\
         [route.admin-deny]\npath = /admin\nreturn = 403\n",
        pools.addr("public"),
        pools.addr("admin"),
    ));
    // The routes do what they say for plain paths.
    assert_eq!(get(lb.addr, "/admin/users").status, 403);
    assert_eq!(get(lb.addr, "/public/x").body_str(), "public");

    let corpus = path_corpus();
    assert!(corpus.len() >= 30, "{} paths in the corpus", corpus.len());
    let mut failures = Vec::new();
    for path in &corpus {
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(path);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n");
        match Client::new(lb.addr).send(&raw) {
            Ok(resp) if [400, 403].contains(&resp.status) => {}
            Ok(resp) if resp.status == 200 && resp.body_str() == "public" => {}
            Ok(resp) => failures.push(format!(
                "{}: {} {:?}",
                show(path),
                resp.status,
                resp.body_str()
            )),
            Err(e) => failures.push(format!("{}: no answer: {e}", show(path))),
        }
    }
    for request in pools.get("public").requests() {
        let target = request.target.as_bytes();
        let (nginx, tomcat) = (nginx_reading(target), tomcat_reading(target));
        if is_admin(&nginx) || is_admin(&tomcat) {
            failures.push(format!(
                "the public pool got {:?}, which nginx reads as {:?} and Tomcat as {:?}",
                request.target,
                show(&nginx),
                show(&tomcat)
            ));
        }
    }
    assert_eq!(
        pools.get("admin").request_count(),
        0,
        "{:?}",
        pools.get("admin").requests()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 6, 7. --explain and POST /api/explain
// ---------------------------------------------------------------------------------------------

/// The routes `--explain` is asked about.
const EXPLAIN_ROUTES: &str = "\
[route.admin]
path = /admin/
client = 10.0.0.0/8 127.0.0.0/8
pool = admin

[route.canary-users]
host = api.example.com
header X-Canary = 1
pool = canary

[route.api]
host = api.example.com
path = /api/
scheme = https
strip_prefix = /api
add_prefix = /v2
set_header X-Env = prod
remove_header = X-Debug
set_response_header Cache-Control = no-store
pool = api

[route.old-api]
path_exact = /v1 /v1/
redirect = 301 https://{host}/v2{path}{query}

[route.split-users]
host = www.example.com
pool = stable 95, canary 5
split_by = header:X-User

[route.split-random]
host = random.example.com
pool = stable 95, canary 5

[route.deny]
path = /private
return = 403 no
";

/// A config for `--explain`: listeners on `plain` and `tls`, `[admin]` on `admin` if given,
/// the pools admin, api, canary and stable (plus `[backends]` when `default` is true) at the
/// addresses `addr` gives, and the routes above.
fn explain_config(
    cert: &Leaf,
    (plain, tls, admin): (SocketAddr, SocketAddr, Option<SocketAddr>),
    default: bool,
    addr: impl Fn(&str) -> SocketAddr,
) -> String {
    let mut config = format!(
        "[lb]\nlisten = {plain}\ntls_listen = {tls}\nworkers = 1\n\
         [certificates]\nsite = {}\n",
        cert.entry()
    );
    if let Some(admin) = admin {
        config.push_str(&format!("[admin]\nlisten = {admin}\n"));
    }
    if default {
        config.push_str(&format!("[backends]\nweb = {}\n", addr("web")));
    }
    for pool in ["admin", "api", "canary", "stable"] {
        config.push_str(&format!(
            "[pool.{pool}.backends]\n{pool} = {}\n",
            addr(pool)
        ));
    }
    config.push_str(EXPLAIN_ROUTES);
    config
}

/// The `--explain` config file with backends nowhere (explaining connects to none).
struct Explain {
    file: TempFile,
    _pki: Pki,
}

impl Explain {
    fn new(default: bool) -> Explain {
        let pki = Pki::new();
        let cert = pki.leaf("site", KeyKind::Ecdsa, &["*.example.com"]);
        let listeners = (
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
            None,
        );
        let config = explain_config(&cert, listeners, default, |_| {
            "127.0.0.1:9".parse().unwrap()
        });
        Explain {
            file: TempFile::new(".ini", config.as_bytes()),
            _pki: pki,
        }
    }

    /// `lb-mio --explain CONFIG ARGS...`, which must exit 0: its stdout lines.
    #[track_caller]
    fn run(&self, args: &[&str]) -> Vec<String> {
        explain_lines(self.file.path_str(), args)
    }
}

/// `lb-mio --explain CONFIG ARGS...`, which must exit 0: its stdout lines.
#[track_caller]
fn explain_lines(config: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--explain", config];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = run_cli(&all);
    assert!(
        status.success(),
        "lb-mio {all:?}: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout.lines().map(str::to_string).collect()
}

/// Asserts `line` is `route NAME: no (KEY...)`: the route did not match, `KEY` first failing.
#[track_caller]
fn assert_no(line: &str, route: &str, key: Option<&str>) {
    let prefix = match key {
        Some(key) => format!("route {route}: no ({key}: "),
        None => format!("route {route}: no ("),
    };
    assert!(
        line.starts_with(&prefix) && line.ends_with(')'),
        "want {prefix:?}...\")\", got {line:?}"
    );
}

#[test]
fn explain_names_the_first_failing_key_of_each_route_before_the_match_and_the_rules() {
    let explain = Explain::new(true);
    let lines = explain.run(&["GET", "https://api.example.com/api/x"]);
    assert_eq!(
        lines,
        [
            "request: GET https://api.example.com/api/x",
            "path: /api/x",
            "route admin: no (path: /api/x does not start with /admin/)",
            "route canary-users: no (header X-Canary: absent)",
            "route api: match",
            "action: pool api",
            "rewrite: /api/x -> /v2/x",
            "request header: set X-Env: prod",
            "request header: remove X-Debug",
            "response header: set Cache-Control: no-store",
        ]
    );

    // With the header, the earlier route takes it.
    let lines = explain.run(&["GET", "https://api.example.com/api/x", "-H", "X-Canary: 1"]);
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert_eq!(lines[0], "request: GET https://api.example.com/api/x");
    assert_eq!(lines[1], "path: /api/x");
    assert_no(&lines[2], "admin", Some("path"));
    assert_eq!(
        lines[3..],
        ["route canary-users: match", "action: pool canary"]
    );

    // --client: a client outside the admin route's CIDRs fails on `client`; nothing else
    // matches, so the default pool.
    let lines = explain.run(&["GET", "http://x.test/admin/users", "--client", "192.0.2.7"]);
    assert_eq!(
        lines[..2],
        [
            "request: GET http://x.test/admin/users",
            "path: /admin/users"
        ]
    );
    assert_no(&lines[2], "admin", Some("client"));
    let names = [
        "admin",
        "canary-users",
        "api",
        "old-api",
        "split-users",
        "split-random",
        "deny",
    ];
    assert_eq!(lines.len(), 2 + names.len() + 2, "{lines:#?}");
    for (line, name) in lines[2..].iter().zip(names) {
        assert_no(line, name, None);
    }
    assert_no(&lines[5], "old-api", Some("path_exact"));
    assert_no(&lines[6], "split-users", Some("host"));
    assert_no(&lines[7], "split-random", Some("host"));
    assert_no(&lines[8], "deny", Some("path"));
    assert_eq!(lines[9..], ["no route matched", "action: pool default"]);

    // The same client inside the CIDR gets the admin pool.
    let lines = explain.run(&["GET", "http://x.test/admin/users", "--client", "10.1.2.3"]);
    assert_eq!(lines[2..], ["route admin: match", "action: pool admin"]);

    // A direct answer.
    let lines = explain.run(&["GET", "http://x.test/private/x"]);
    assert_eq!(lines.last().map(String::as_str), Some("action: return 403"));
    assert!(
        lines.contains(&"route deny: match".to_string()),
        "{lines:#?}"
    );
}

#[test]
fn explain_shows_a_redirect_with_its_location() {
    let explain = Explain::new(true);
    let lines = explain.run(&[
        "GET",
        "http://old.example.com:8080/v1?a=1",
        "-H",
        "X-Canary: 1",
    ]);
    assert_eq!(lines.len(), 7, "{lines:#?}");
    assert_eq!(lines[0], "request: GET http://old.example.com:8080/v1?a=1");
    assert_eq!(lines[1], "path: /v1");
    assert_no(&lines[2], "admin", Some("path"));
    assert_no(&lines[3], "canary-users", Some("host"));
    assert_no(&lines[4], "api", None);
    assert_eq!(
        lines[5..],
        [
            "route old-api: match",
            "action: redirect 301 https://old.example.com:8080/v2/v1?a=1",
        ]
    );
}

/// The `action:` line of an explanation.
#[track_caller]
fn action(lines: &[String]) -> &str {
    lines
        .iter()
        .find(|l| l.starts_with("action: "))
        .unwrap_or_else(|| panic!("no action line: {lines:#?}"))
}

#[test]
fn explain_shows_which_pool_a_split_gives() {
    let explain = Explain::new(true);
    let split = "action: split stable 95, canary 5 -> ";
    let mut on_canary = 0;
    for user in 0..20 {
        let header = format!("X-User: user-{user}");
        let args = ["GET", "http://www.example.com/", "-H", header.as_str()];
        let lines = explain.run(&args);
        assert!(
            lines.contains(&"route split-users: match".to_string()),
            "{lines:#?}"
        );
        let pool = action(&lines)
            .strip_prefix(split)
            .unwrap_or_else(|| panic!("{lines:#?}"))
            .to_string();
        assert!(pool == "stable" || pool == "canary", "{lines:#?}");
        on_canary += usize::from(pool == "canary");
        // split_by decides: the same user gets the same answer.
        assert_eq!(action(&explain.run(&args)), format!("{split}{pool}"));
    }
    assert!(on_canary < 20, "every user on the 5% canary");
    // Without split_by each request is drawn at random.
    let lines = explain.run(&["GET", "http://random.example.com/"]);
    assert!(
        lines.contains(&"route split-random: match".to_string()),
        "{lines:#?}"
    );
    assert_eq!(action(&lines), format!("{split}random"));
}

#[test]
fn explain_refuses_an_unsafe_path_and_stops() {
    let explain = Explain::new(true);
    for url in [
        "http://www.example.com/a/..;/admin/",
        "http://www.example.com/a%2Fb",
        "http://www.example.com/../admin/",
        "http://www.example.com/x%00",
    ] {
        let lines = explain.run(&["GET", url]);
        assert_eq!(lines.len(), 2, "{url}: {lines:#?}");
        assert_eq!(lines[0], format!("request: GET {url}"));
        assert!(lines[1].starts_with("refused: 400 "), "{url}: {lines:#?}");
        assert!(
            lines[1].len() > "refused: 400 ".len(),
            "a reason: {lines:#?}"
        );
    }
}

#[test]
fn explain_without_a_default_pool_answers_404_when_no_route_matches() {
    let explain = Explain::new(false);
    let lines = explain.run(&["GET", "http://nowhere.test/elsewhere"]);
    assert_eq!(
        lines[lines.len() - 2..],
        ["no route matched", "action: return 404"],
        "{lines:#?}"
    );
}

#[test]
fn explain_on_a_bad_config_or_bad_arguments_exits_2_saying_why() {
    let config = "[lb]\nlisten = 127.0.0.1:8080\n[backends]\nweb = 127.0.0.1:9001\n\
                  [route.lost]\npath = /x\npool = nowhere\n";
    let file = TempFile::new(".ini", config.as_bytes());
    let line = line_of(config, "pool = nowhere");
    let (status, stdout, stderr) =
        run_cli(&["--explain", file.path_str(), "GET", "http://x.test/x"]);
    assert_eq!(
        status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let at = format!("{}:{line}", file.path_str());
    assert!(stderr.contains(&at), "stderr names {at}: {stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");

    let explain = Explain::new(true);
    let config = explain.file.path_str();
    let bad: [&[&str]; 4] = [
        &["GET"],
        &["GET", "/relative/path"],
        &["GET", "http://x.test/", "--client", "not-an-address"],
        &["GET", "http://x.test/", "-H", "no colon"],
    ];
    for args in bad {
        let mut all = vec!["--explain", config];
        all.extend_from_slice(args);
        let (status, stdout, stderr) = run_cli(&all);
        assert_eq!(
            status.code(),
            Some(2),
            "{args:?}: stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(!stderr.trim().is_empty(), "{args:?}: nothing on stderr");
    }
}

#[test]
fn the_admin_api_explains_like_the_cli_and_a_split_it_names_is_where_requests_go() {
    let pools = Pools::named(&["web", "admin", "api", "canary", "stable"]);
    let pki = Pki::new();
    let cert = pki.leaf("site", KeyKind::Ecdsa, &["*.example.com"]);
    let listeners = (
        free_addr(),
        free_addr(),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    let lb = Lb::start(&explain_config(&cert, listeners, true, |n| pools.addr(n)));
    let admin = lb.admin_addr();
    let config = lb.config_path().to_str().unwrap().to_string();

    let asks: [(&str, &[&str], Value); 3] = [
        (
            r#"{"method":"GET","url":"https://api.example.com/api/x","headers":{"X-Canary":"1"},"client":"10.0.0.1"}"#,
            &[
                "GET",
                "https://api.example.com/api/x",
                "-H",
                "X-Canary: 1",
                "--client",
                "10.0.0.1",
            ],
            Value::from("canary-users"),
        ),
        (
            r#"{"method":"GET","url":"https://api.example.com/api/x"}"#,
            &["GET", "https://api.example.com/api/x"],
            Value::from("api"),
        ),
        (
            r#"{"method":"POST","url":"http://nowhere.test/x"}"#,
            &["POST", "http://nowhere.test/x"],
            Value::Null,
        ),
    ];
    for (body, args, route) in asks {
        let resp = admin_request(admin, "POST", "/api/explain", Some(body), None);
        assert_eq!(resp.status, 200, "{body}: {}", resp.body_str());
        let answer = json_body(&resp);
        assert_eq!(answer["route"], route, "{body}: {answer}");
        assert!(answer["action"].is_object(), "{body}: {answer}");
        let lines: Vec<String> = answer["lines"]
            .as_array()
            .unwrap_or_else(|| panic!("no lines: {answer}"))
            .iter()
            .map(|l| l.as_str().expect("a line is a string").to_string())
            .collect();
        assert_eq!(lines, explain_lines(&config, args), "{body}");
    }

    // A split explained is the split served: each user lands where the explanation says.
    let split = "action: split stable 95, canary 5 -> ";
    let mut client = Client::new(lb.addr);
    for user in 0..20 {
        let header = format!("X-User: user-{user}");
        let lines = explain_lines(
            &config,
            &["GET", "http://www.example.com/", "-H", header.as_str()],
        );
        let pool = action(&lines)
            .strip_prefix(split)
            .unwrap_or_else(|| panic!("{lines:#?}"));
        let raw = format!("GET / HTTP/1.1\r\nHost: www.example.com\r\n{header}\r\n\r\n");
        let resp = client.send(raw.as_bytes()).unwrap();
        assert_eq!(
            (resp.status, resp.body_str().as_str()),
            (200, pool),
            "user-{user}"
        );
    }
}
