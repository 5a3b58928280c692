//! The admin listener, on a thread of its own, off the workers' path: a JSON API to list, add,
//! drain, reweight and remove backends, `/metrics` in Prometheus text format, and the status
//! page. One request per connection, answered and closed: it serves operators, not traffic.

use crate::backend::{self, Backend, BackendConf, Source, State, WEIGHTS};
use crate::config;
use crate::document;
use crate::fleet::Fleet;
use crate::listen;
use crate::metrics;
use crate::route::{self, Question};
use crate::shared::{Shared, Snapshot};
use crate::state_file;
use crate::tls::EXPIRY_WARNING_DAYS;
use log::{info, warn};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Longest admin request (head and body) accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// How long a client may take to send its whole request, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Admin requests served at once; more are dropped.
const MAX_OPEN: usize = 16;

/// How long accepting pauses after it failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const STATUS_PAGE: &str = include_str!("status.html");

mod exposition;
mod routing;
mod stored;

/// What the admin API serves from.
pub struct Api {
    pub shared: Arc<Shared>,
    /// With `[etcd]`: where changes are written instead (`stored`).
    pub fleet: Option<Arc<Fleet>>,
    /// The bearer token every request must carry; without one, loopback clients only.
    pub token: Option<String>,
}

/// Binds the admin listener (so a failure is reported at start) and serves it on a new thread.
pub fn spawn(api: Api, addr: SocketAddr) -> io::Result<SocketAddr> {
    // `SO_REUSEPORT`, as the workers' listeners: during an upgrade (SIGUSR2) the new process
    // binds the admin address while the old one still holds it.
    let listener = listen::bind_blocking(addr, false).map_err(io::Error::other)?;
    let addr = listener.local_addr()?;
    let api = Arc::new(api);
    let open = Arc::new(AtomicUsize::new(0));
    thread::Builder::new()
        .name("admin".into())
        .spawn(move || loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: accepting again at once would fail the same way.
                    warn!("admin: accept: {e}");
                    thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            // Each request on a thread of its own, so a slow client delays nobody else.
            if open.fetch_add(1, Ordering::Relaxed) >= MAX_OPEN {
                open.fetch_sub(1, Ordering::Relaxed);
                continue; // dropped: too many admin requests at once
            }
            let (api, open) = (Arc::clone(&api), Arc::clone(&open));
            let spawned = thread::Builder::new()
                .name("admin-request".into())
                .spawn(move || {
                    if let Err(e) = serve(&api, stream) {
                        warn!("admin: {e}");
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            if let Err(e) = spawned {
                warn!("admin: cannot start a thread: {e}");
            }
        })?;
    Ok(addr)
}

/// Reads that share one deadline: a client must send its whole request in time, however it
/// spaces its bytes.
struct Timed<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// An admin request, read whole.
struct ApiRequest {
    method: String,
    path: String,
    authorization: Option<String>,
    /// The revision a write is based on, with `[etcd]` (`If-Match: "REV"`).
    if_match: Option<String>,
    body: Vec<u8>,
}

/// An admin answer.
struct ApiAnswer {
    status: u16,
    content_type: &'static str,
    body: String,
    /// The revision of the etcd key that holds what is shown (`ETag`).
    etag: Option<i64>,
}

impl ApiAnswer {
    fn json(status: u16, value: Value) -> ApiAnswer {
        ApiAnswer {
            status,
            content_type: "application/json",
            body: value.to_string() + "\n",
            etag: None,
        }
    }

    fn error(status: u16, message: impl Into<String>) -> ApiAnswer {
        ApiAnswer::json(status, json!({ "error": message.into() }))
    }
}

fn serve(api: &Api, mut stream: TcpStream) -> io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let peer = stream.peer_addr()?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let answer = match read_request(&mut Timed {
        stream: &mut stream,
        deadline,
    }) {
        Ok(request) => match check_access(&request, peer, api.token.as_deref()) {
            Ok(()) => route(api, &request),
            Err(answer) => answer,
        },
        Err(message) => ApiAnswer::error(400, message),
    };
    let reason = reason(answer.status);
    let etag = answer
        .etag
        .map_or(String::new(), |rev| format!("ETag: \"{rev}\"\r\n"));
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{etag}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(answer.body.as_bytes())
}

/// With a token, every request must carry it; without one, only loopback clients are served.
fn check_access(
    request: &ApiRequest,
    peer: SocketAddr,
    token: Option<&str>,
) -> Result<(), ApiAnswer> {
    match token {
        Some(token) => {
            let given = request
                .authorization
                .as_deref()
                .and_then(|v| v.strip_prefix("Bearer "));
            if given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())) {
                Ok(())
            } else {
                Err(ApiAnswer::error(401, "a valid bearer token is required"))
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => Err(ApiAnswer::error(
            403,
            "loopback clients only (no [admin] token is set)",
        )),
    }
}

fn read_request(stream: &mut Timed) -> Result<ApiRequest, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) =
            req.parse(&buf).map_err(|e| format!("bad request: {e}"))?
        {
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let length: usize = header("content-length")
                .map_or(Ok(0), |v| v.trim().parse())
                .map_err(|_| "bad Content-Length")?;
            if head_len + length > MAX_REQUEST {
                return Err("request too large".into());
            }
            let request = ApiRequest {
                method: req.method.unwrap_or_default().to_string(),
                path: req.path.unwrap_or_default().to_string(),
                authorization: header("authorization"),
                if_match: header("if-match"),
                body: Vec::new(),
            };
            return read_body(stream, buf, head_len, length, request);
        }
        if buf.len() >= MAX_REQUEST {
            return Err("request too large".into());
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed mid-request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn read_body(
    stream: &mut Timed,
    mut buf: Vec<u8>,
    head_len: usize,
    length: usize,
    mut request: ApiRequest,
) -> Result<ApiRequest, String> {
    buf.drain(..head_len);
    let mut rest = vec![0u8; length.saturating_sub(buf.len())];
    stream
        .read_exact(&mut rest)
        .map_err(|e| format!("read body: {e}"))?;
    buf.extend_from_slice(&rest);
    buf.truncate(length);
    request.body = buf;
    Ok(request)
}

fn route(api: &Api, request: &ApiRequest) -> ApiAnswer {
    let answer = answer(api, request);
    if request.method != "GET" && answer.status < 300 {
        state_file::persist(&api.shared.load());
    }
    answer
}

fn answer(api: &Api, request: &ApiRequest) -> ApiAnswer {
    let shared = &*api.shared;
    let path = request.path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let Some(fleet) = &api.fleet {
        if let Some(answer) = stored::answer(shared, fleet, request, &parts) {
            return answer;
        }
    }
    match (request.method.as_str(), parts.as_slice()) {
        ("GET", [""]) => ApiAnswer {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: STATUS_PAGE.to_string(),
            etag: None,
        },
        ("GET", ["metrics"]) => {
            let snap = shared.load();
            let certificates = shared.tls.as_ref().map(|tls| tls.certificates());
            let mut body = exposition::render(&shared.totals(), &snap, certificates.as_deref());
            if let Some(fleet) = &api.fleet {
                exposition::render_fleet(&mut body, fleet);
            }
            ApiAnswer {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body,
                etag: None,
            }
        }
        ("GET", ["api", "backends"]) => list_backends(shared, None, &request.path),
        ("GET", ["api", "pools", name, "backends"]) => {
            list_backends(shared, Some(name), &request.path)
        }
        ("GET", ["api", "certificates"]) => ApiAnswer::json(200, list_certificates(shared)),
        ("POST", ["api", "backends"]) => add_backend(shared, &request.body, None),
        ("POST", ["api", "pools", name, "backends"]) => {
            add_backend(shared, &request.body, Some(name))
        }
        ("GET", ["api", "pools"]) => routing::list_pools(shared),
        ("GET", ["api", "pools", name]) => routing::get_pool(shared, name),
        ("PUT", ["api", "pools", name]) => routing::put_pool(shared, name, &request.body),
        ("DELETE", ["api", "pools", name]) => routing::delete_pool(shared, name),
        ("GET", ["api", "routes"]) => routing::list_routes(shared),
        ("GET", ["api", "routes", name]) => routing::get_route(shared, name),
        ("PUT", ["api", "routes", name]) => routing::put_route(shared, name, &request.body),
        ("DELETE", ["api", "routes", name]) => routing::delete_route(shared, name),
        ("POST", ["api", "explain"]) => explain(shared, &request.body),
        ("POST", ["api", "backends", name, "drain"]) => with_backend(shared, name, |b| {
            shared.drain(b, false);
            info!("backend {} draining (admin API)", b.name);
            ApiAnswer::json(200, json!({ "name": b.name, "state": b.state().name() }))
        }),
        ("DELETE", ["api", "backends", name]) => with_backend(shared, name, |b| {
            shared.drain(b, true);
            info!("backend {} draining, then removed (admin API)", b.name);
            ApiAnswer::json(202, json!({ "name": b.name, "state": b.state().name() }))
        }),
        ("PUT", ["api", "backends", name]) => {
            let answer = with_backend(shared, name, |b| set_weight(b, &request.body));
            if answer.status == 200 {
                // Weighted round robin's schedule is built from the weights: build it anew.
                let rebuilt = shared
                    .update(|snap| snap.next(snap.config.clone(), Arc::clone(&snap.backends)));
                if let Err(e) = rebuilt {
                    return ApiAnswer::error(500, &e);
                }
            }
            answer
        }
        (
            _,
            ["", ..]
            | ["metrics"]
            | ["api", "backends" | "certificates" | "explain" | "pools" | "routes", ..],
        ) => ApiAnswer::error(405, "method not allowed"),
        _ => ApiAnswer::error(404, "not found"),
    }
}

/// The certificates the TLS listeners serve, in config order (the first is the default); an
/// empty list without TLS listeners.
fn list_certificates(shared: &Shared) -> Value {
    let Some(tls) = &shared.tls else {
        return json!([]);
    };
    let certificates: Vec<Value> = (tls.certificates().iter())
        .map(|cert| {
            json!({
                "name": cert.conf.name,
                "names": cert.names,
                "not_after": crate::access_log::rfc3339(cert.not_after),
                "expires_in_days": cert.days_left(),
                "expires_soon": cert.days_left() < EXPIRY_WARNING_DAYS,
                "key": cert.kind.name(),
                "chain": cert.conf.chain,
                "key_file": cert.conf.key,
            })
        })
        .collect();
    Value::Array(certificates)
}

/// Backends one listing returns without `limit`, and at most.
const PAGE_DEFAULT: usize = 1_000;
const PAGE_MAX: usize = 10_000;

/// `offset` and `limit` from a listing's query string (`path`, `query` when there is one);
/// other parameters are ignored.
fn page(query: Option<(&str, &str)>) -> Result<(usize, usize), String> {
    let (mut offset, mut limit) = (0, PAGE_DEFAULT);
    let pairs = query.map_or("", |(_, q)| q).split('&');
    for (name, value) in pairs.filter_map(|pair| pair.split_once('=')) {
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{name}: expected a number, got {value:?}"))
        };
        match name {
            "offset" => offset = number()?,
            "limit" => limit = number()?,
            _ => {}
        }
    }
    if limit > PAGE_MAX {
        return Err(format!("limit: at most {PAGE_MAX}"));
    }
    Ok((offset, limit))
}

/// `GET /api/backends`, or `/api/pools/NAME/backends` for `pool`: the page the query asks for.
fn list_backends(shared: &Shared, pool: Option<&str>, path: &str) -> ApiAnswer {
    if let Some(name) = pool.filter(|name| shared.load().pool(name).is_none()) {
        return ApiAnswer::error(404, format!("no pool {name:?}"));
    }
    match page(path.split_once('?')) {
        Ok((offset, limit)) => ApiAnswer::json(200, backends_page(shared, pool, offset, limit)),
        Err(message) => ApiAnswer::error(400, message),
    }
}

/// The listed backends (of `pool`, or all) from the `offset`-th, at most `limit` of them, with
/// their counters summed over workers, and how many are listed in all (`total`).
fn backends_page(shared: &Shared, pool: Option<&str>, offset: usize, limit: usize) -> Value {
    let snap = shared.load();
    let totals = shared.totals();
    let listed = || {
        (snap.backends.iter())
            .zip(&totals.backends)
            .filter(|(b, _)| b.is_listed() && pool.is_none_or(|name| b.pool == name))
    };
    let backends: Vec<Value> = listed()
        .skip(offset)
        .take(limit)
        .map(|(b, t)| {
            let probe = b.last_probe().map(|p| {
                json!({ "ok": p.ok, "latency_ms": p.latency.as_secs_f64() * 1000.0, "reason": p.reason })
            });
            json!({
                "name": b.name,
                "pool": b.pool,
                "address": b.addr.to_string(),
                "tls": b.tls,
                "weight": b.weight(),
                "state": b.state().name(),
                "active": b.active(),
                "requests": t.requests(),
                "errors": t.errors + t.responses[4],
                "last_probe": probe,
                "source": b.source.name(),
                "discovered_by": b.source.dns_entry(),
            })
        })
        .collect();
    let latency = &totals.latency;
    json!({
        "backends": backends,
        "total": listed().count(),
        "offset": offset,
        "limit": limit,
        "totals": {
            "requests": latency.count(),
            "errors": totals.backends.iter().map(|t| t.errors + t.responses[4]).sum::<u64>(),
            "rejected": totals.replies.iter().map(|(_, n)| n).sum::<u64>(),
            "latency_buckets": latency.counts,
            "latency_bounds": metrics::BUCKETS,
            "connections": totals.connections,
        }
    })
}

fn with_backend(shared: &Shared, name: &str, act: impl FnOnce(&Backend) -> ApiAnswer) -> ApiAnswer {
    let snap = shared.load();
    match snap
        .backends
        .iter()
        .find(|b| b.name == name && b.is_listed())
    {
        Some(backend) => act(backend),
        None => ApiAnswer::error(404, format!("no backend named {name:?}")),
    }
}

fn set_weight(backend: &Backend, body: &[u8]) -> ApiAnswer {
    match weight_of(body) {
        Ok(w) => {
            backend.set_weight(w);
            info!("backend {} weight is now {w} (admin API)", backend.name);
            ApiAnswer::json(200, json!({ "name": backend.name, "weight": w }))
        }
        Err(answer) => answer,
    }
}

/// The weight `{"weight": N}` asks for.
fn weight_of(body: &[u8]) -> Result<u32, ApiAnswer> {
    let weight = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("weight").and_then(Value::as_u64))
        .and_then(backend::check_weight);
    weight.ok_or_else(|| ApiAnswer::error(400, format!(r#"expected {{"weight": {WEIGHTS:?}}}"#)))
}

/// The backend `body` describes (`document::backend`), in pool `pool` when the URL names one;
/// one with TLS needs TLS to backends.
fn backend_of(shared: &Shared, body: &[u8], pool: Option<&str>) -> Result<BackendConf, ApiAnswer> {
    let value = serde_json::from_slice::<Value>(body)
        .map_err(|e| ApiAnswer::error(400, format!("bad JSON: {e}")))?;
    let conf = match pool {
        Some(pool) => document::backend_of(&value, pool),
        None => document::backend(&value, config::DEFAULT_POOL),
    };
    let conf = conf.map_err(|message| ApiAnswer::error(400, message))?;
    if conf.tls.is_some() && shared.backend_tls.is_none() {
        let message = "no TLS to backends: [tls] backend_ca could not be read at start";
        return Err(ApiAnswer::error(400, message));
    }
    Ok(conf)
}

/// `name`, or a name made up (`api-N`) when it is empty; 409 when a backend has it.
fn backend_name(snap: &Snapshot, name: &str) -> Result<String, ApiAnswer> {
    let taken = |name: &str| (snap.backends.iter()).any(|b| b.name == name && b.is_listed());
    let name = match name {
        "" => (snap.backends.len() + 1..)
            .map(|n| format!("api-{n}"))
            .find(|n| !taken(n))
            .unwrap_or_default(),
        name => name.to_string(),
    };
    match taken(&name) {
        true => Err(ApiAnswer::error(
            409,
            format!("a backend named {name:?} exists"),
        )),
        false => Ok(name),
    }
}

/// `{"address": "ip:port", "weight": N, "name": "...", "tls": "NAME", "pool": "...",
/// "backup": false}` (`document::backend`), into the pool `pool` when the URL names one: the new
/// backend starts down and takes traffic once its health checks pass; with `tls`, lb-mio speaks
/// TLS to it and checks its certificate against NAME.
fn add_backend(shared: &Shared, body: &[u8], pool: Option<&str>) -> ApiAnswer {
    let conf = match backend_of(shared, body, pool) {
        Ok(conf) => conf,
        Err(answer) => return answer,
    };
    let mut placed = None;
    let added = shared.update(|snap| {
        let name = backend_name(snap, &conf.name)?;
        if snap.pool(&conf.pool).is_none() {
            return Err(ApiAnswer::error(404, format!("no pool {:?}", conf.pool)));
        }
        let backend = Backend::new(
            &BackendConf {
                name,
                ..conf.clone()
            },
            State::Down,
            Source::Admin,
        );
        let mut backends = snap.backends.to_vec();
        let id = backend::place(&mut backends, backend).map_err(|e| ApiAnswer::error(409, e))?;
        placed = Some(Arc::clone(&backends[id]));
        snap.next(snap.config.clone(), backends.into())
            .map_err(|e| ApiAnswer::error(500, &e))
    });
    match (added, placed) {
        (Ok(()), Some(backend)) => {
            info!(
                "backend {} at {} added (admin API); down until its health checks pass",
                backend.name, backend.addr
            );
            ApiAnswer::json(
                201,
                json!({ "name": backend.name, "address": backend.addr.to_string(), "weight": backend.weight(), "state": backend.state().name() }),
            )
        }
        (Err(answer), _) => answer,
        (Ok(()), None) => ApiAnswer::error(500, "backend not added"),
    }
}

/// `POST /api/explain`: what the running route table does with the request described.
fn explain(shared: &Shared, body: &[u8]) -> ApiAnswer {
    let question = match parse_question(body) {
        Ok(question) => question,
        Err(e) => return ApiAnswer::error(400, e),
    };
    let snap = shared.load();
    match route::explain(&snap.config, &snap.routes, &question) {
        Ok(explained) => {
            let action = explained
                .lines
                .iter()
                .find_map(|l| l.strip_prefix("action: "));
            let action = action.map(|a| a.split_once(' ').unwrap_or((a, "")));
            ApiAnswer::json(
                200,
                json!({
                    "route": explained.route,
                    "action": action.map(|(kind, detail)| json!({ "kind": kind, "detail": detail })),
                    "lines": explained.lines,
                }),
            )
        }
        Err(e) => ApiAnswer::error(400, e),
    }
}

/// `{"method": "GET", "url": "https://...", "headers": {"Name": "value"}, "client": "ip"}`.
fn parse_question(body: &[u8]) -> Result<Question, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    let text = |key: &str| value.get(key).and_then(Value::as_str);
    let headers = match value.get("headers") {
        None => Vec::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(name, v)| {
                Ok((
                    name.clone(),
                    v.as_str().ok_or("header values are strings")?.to_string(),
                ))
            })
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("\"headers\" must be an object".into()),
    };
    let client = match text("client") {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(ip) => ip
            .parse()
            .map_err(|_| format!("\"client\": {ip:?} is not an IP address"))?,
    };
    Ok(Question {
        method: text("method").unwrap_or("GET").to_string(),
        url: text("url")
            .ok_or("\"url\" (an absolute http:// or https:// URL) is required")?
            .to_string(),
        headers,
        client,
        listener: None,
        sni: text("sni").map(str::to_string),
    })
}

/// Compares in time that depends on the length only, so timing tells nothing of the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        500 => "Internal Server Error",
        _ => "",
    }
}
