//! A `[route.NAME]` section: its conditions, its action and its rewrites, parsed key by key.

use super::{parse_cidr, parse_hash_key, parse_listen, Cidr, Config, Origin};
use crate::backend::check_name;
use crate::http::chunked::is_token;
use crate::http::request::{HashKey, Seen, FORWARDING_HEADERS};
use crate::http::rewrite::Rewrite;
use std::io::{self, Write};
use std::net::SocketAddr;

/// Longest body a `return` route may answer with.
pub const MAX_ANSWER_BODY: usize = 512;

/// A host condition: `example.com`, or `*.example.com` (any one label under it). Stored lower
/// case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*.`.
    Under(String),
}

impl HostPattern {
    fn parse(v: &str) -> Result<HostPattern, String> {
        let lower = v.trim_end_matches('.').to_ascii_lowercase();
        let (pattern, name) = match lower.strip_prefix("*.") {
            Some(suffix) => (HostPattern::Under(suffix.to_string()), suffix),
            None => (HostPattern::Exact(lower.clone()), lower.as_str()),
        };
        // Hosts are matched without their port, so a pattern with one could never match; an
        // IPv6 literal keeps its colons inside brackets.
        let literal = name.starts_with('[') && name.ends_with(']');
        let ok = |c: char| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || (literal && c == ':')
        };
        let inner = if literal {
            &name[1..name.len() - 1]
        } else {
            name
        };
        if inner.is_empty() || name.len() > 253 || !inner.chars().all(ok) {
            return Err(format!(
                "{v:?} is not a host name (or *.name), without a port"
            ));
        }
        Ok(pattern)
    }

    /// Whether `host` (lower case, no port, no trailing dot) is this one, or one label under it.
    pub fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            HostPattern::Under(suffix) => {
                parent(host).is_some_and(|parent| parent.eq_ignore_ascii_case(suffix.as_bytes()))
            }
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Under(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// A redirect's target: text with `{scheme}`, `{host}`, `{path}` and `{query}` in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Scheme,
    Host,
    Path,
    Query,
}

impl Template {
    fn parse(v: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = v;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or("an unclosed {")? + open;
            pieces.push(match &rest[open + 1..close] {
                "scheme" => Piece::Scheme,
                "host" => Piece::Host,
                "path" => Piece::Path,
                "query" => Piece::Query,
                other => {
                    return Err(format!(
                        "unknown {{{other}}}: expected {{scheme}} {{host}} {{path}} {{query}}"
                    ))
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        if pieces.is_empty() || v.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!("{v:?} is not a redirect target"));
        }
        Ok(Template(pieces))
    }

    /// Writes the target for a request: `{host}` is its host with any port, `{path}` its
    /// path as sent, `{query}` `?` and its query when it has one.
    pub fn write(&self, seen: &Seen, https: bool, out: &mut impl Write) -> io::Result<()> {
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.write_all(text.as_bytes())?,
                Piece::Scheme => out.write_all(if https { b"https" } else { b"http" })?,
                Piece::Host => out.write_all(seen.authority)?,
                Piece::Path if seen.sent_path.is_empty() => out.write_all(b"/")?,
                Piece::Path => out.write_all(seen.sent_path)?,
                Piece::Query => {
                    if let Some(query) = seen.query {
                        out.write_all(b"?")?;
                        out.write_all(query)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a route does with a request it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `pool = api`, or a split `pool = stable 95, canary 5` (optionally kept per client).
    Pools {
        pools: Vec<(String, u32)>,
        split_by: Option<HashKey>,
    },
    Redirect {
        status: u16,
        template: Template,
    },
    Return {
        status: u16,
        body: String,
    },
}

/// One `[route.NAME]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConf {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<String>,
    pub exact_paths: Vec<String>,
    pub path_nocase: bool,
    pub methods: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub has_headers: Vec<String>,
    pub queries: Vec<(String, String)>,
    pub has_queries: Vec<String>,
    pub clients: Vec<Cidr>,
    pub listeners: Vec<SocketAddr>,
    /// `scheme`: `Some(true)` for https only.
    pub https: Option<bool>,
    pub sni: Vec<HostPattern>,
    pub action: Action,
    pub rewrite: Rewrite,
    /// The `(key, value)`s that set it, as given (`parse_key` keeps each): a `[route.NAME]`
    /// section's lines or a route document's keys, shown as they came (`document::route_json`).
    pub keys: Vec<(String, String)>,
    pub origin: Origin,
}

impl RouteConf {
    /// A route with no conditions yet; `parse_key` fills it, `check` tells whether it is whole.
    pub fn new(name: &str) -> Result<RouteConf, String> {
        check_name(name)
            .map_err(|_| format!("{name:?} is not a route name: 1 to 64 of A-Z a-z 0-9 _ . -"))?;
        Ok(RouteConf {
            name: name.to_string(),
            hosts: Vec::new(),
            paths: Vec::new(),
            exact_paths: Vec::new(),
            path_nocase: false,
            methods: Vec::new(),
            headers: Vec::new(),
            has_headers: Vec::new(),
            queries: Vec::new(),
            has_queries: Vec::new(),
            clients: Vec::new(),
            listeners: Vec::new(),
            https: None,
            sni: Vec::new(),
            action: Action::Pools {
                pools: Vec::new(),
                split_by: None,
            },
            rewrite: Rewrite::default(),
            keys: Vec::new(),
            origin: Origin::File,
        })
    }

    /// The route `keys` make, each read as a `[route.NAME]` line is (and, as there, each at
    /// most once): how a route document becomes a route. The error names the first bad key.
    pub fn from_keys(name: &str, keys: &[(String, String)]) -> Result<RouteConf, String> {
        let mut route = RouteConf::new(name)?;
        for (at, (key, value)) in keys.iter().enumerate() {
            if keys[..at].iter().any(|(seen, _)| seen == key) {
                return Err(format!("{key}: duplicate key"));
            }
            parse_key(&mut route, key, value).map_err(|e| format!("{key}: {e}"))?;
        }
        route.check()?;
        Ok(route)
    }

    /// Whether the route is whole: one action, and rewrites only where a request goes on.
    pub fn check(&self) -> Result<(), String> {
        match &self.action {
            Action::Pools { pools, .. } if pools.is_empty() => {
                Err("needs an action: pool, redirect or return".into())
            }
            Action::Pools { .. } => Ok(()),
            Action::Redirect { .. } | Action::Return { .. } => {
                let r = &self.rewrite;
                match r.changes_path() || !r.request.is_empty() || !r.response.is_empty() {
                    true => Err("rewrites and header rules need a pool action".into()),
                    false => Ok(()),
                }
            }
        }
    }

    /// What a route must agree on with the rest of `c`, wherever it comes from (config.ini or
    /// the admin API): its listeners exist, and no header rule names the request id header
    /// lb-mio writes. The key at fault, and why.
    pub fn fits(&self, c: &Config) -> Result<(), (&'static str, String)> {
        let listens = |a: &SocketAddr| c.lb.listen.contains(a) || c.lb.tls_listen.contains(a);
        if let Some(addr) = self.listeners.iter().find(|a| !listens(a)) {
            let why = format!("{addr} is in neither [lb] listen nor tls_listen");
            return Err(("listener", why));
        }
        let id = c.lb.request_id.as_deref();
        if let Some(id) = id.filter(|id| self.rule_headers().any(|h| h.eq_ignore_ascii_case(id))) {
            let why = format!("a header rule names {id}, the [lb] request_id header lb-mio writes");
            return Err(("header rule", why));
        }
        Ok(())
    }

    /// The header names its rules name, both ways.
    pub fn rule_headers(&self) -> impl Iterator<Item = &str> {
        let (req, res) = (&self.rewrite.request, &self.rewrite.response);
        let given = (req
            .set
            .iter()
            .chain(&req.add)
            .chain(&res.set)
            .chain(&res.add))
        .map(|(n, _)| n);
        given
            .chain(req.remove.iter().chain(&res.remove))
            .map(String::as_str)
    }

    /// The pools its action sends requests to.
    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        let pools = match &self.action {
            Action::Pools { pools, .. } => &pools[..],
            _ => &[],
        };
        pools.iter().map(|(name, _)| name.as_str())
    }

    pub fn path_miss(&self, path: &str) -> String {
        let mut why = Vec::new();
        if !self.paths.is_empty() {
            why.push(format!("does not start with {}", self.paths.join(" or ")));
        }
        if !self.exact_paths.is_empty() {
            why.push(format!("is not {}", self.exact_paths.join(" or ")));
        }
        let key = if self.paths.is_empty() {
            "path_exact"
        } else {
            "path"
        };
        format!("{key}: {path} {}", why.join(" and "))
    }

    pub fn host_list(&self) -> String {
        let names: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
        names.join(" ")
    }
}

/// The whole response of a `return` route: the status, its short text body exactly as
/// configured (as nginx's `return` sends it), and a close.
pub fn answer_bytes(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        429 => "Too Many Requests",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Sets one `key = value` of a route section, and keeps the pair. Keys with an argument
/// (`header X-Canary = 1`) arrive whole in `key`.
pub fn parse_key(route: &mut RouteConf, key: &str, v: &str) -> Result<(), String> {
    set_key(route, key, v)?;
    route.keys.push((key.to_string(), v.to_string()));
    Ok(())
}

/// What a route key does, by its first word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decides whether the route matches.
    Condition,
    /// What the route does with a request: `pool`, `redirect`, `return`.
    Action,
    /// How a request or its response changes on the way (and `split_by`, which tunes a split).
    Rule,
}

pub fn role(key: &str) -> Role {
    match key.split_whitespace().next().unwrap_or_default() {
        "pool" | "redirect" | "return" => Role::Action,
        "split_by" | "strip_prefix" | "add_prefix" => Role::Rule,
        word if word.ends_with("_header") && word != "has_header" => Role::Rule,
        _ => Role::Condition,
    }
}

fn set_key(route: &mut RouteConf, key: &str, v: &str) -> Result<(), String> {
    let (word, arg) = match key.split_once(char::is_whitespace) {
        Some((word, arg)) => (word, Some(arg.trim())),
        None => (key, None),
    };
    let words = || v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    if NAMED.contains(&word) && arg.is_none() {
        return Err(format!("{word} needs a name: `{word} NAME = VALUE`"));
    }
    let named = || arg.map_or(Ok(String::new()), |name| header_name(word, name));
    let r = &mut route.rewrite;
    match (word, arg) {
        ("host", None) => route.hosts = list(v, HostPattern::parse)?,
        ("sni", None) => route.sni = list(v, HostPattern::parse)?,
        ("path", None) => route.paths = list(v, parse_path)?,
        ("path_exact", None) => route.exact_paths = list(v, parse_path)?,
        ("path_case", None) => {
            route.path_nocase = match v {
                "sensitive" => false,
                "insensitive" => true,
                _ => return Err("expected sensitive or insensitive".into()),
            }
        }
        ("method", None) => route.methods = list(v, parse_method)?,
        ("header", Some(_)) => route.headers.push((named()?, v.to_string())),
        ("has_header", None) => route.has_headers = words(),
        ("query", Some(_)) => route.queries.push((named()?, v.to_string())),
        ("has_query", None) => route.has_queries = words(),
        ("client", None) => route.clients = list(v, parse_cidr)?,
        ("listener", None) => route.listeners = parse_listen(v)?,
        ("scheme", None) => {
            route.https = Some(match v {
                "http" => false,
                "https" => true,
                _ => return Err("expected http or https".into()),
            })
        }
        ("pool", None) => set_action(route, parse_pools(v)?)?,
        ("split_by", None) => match &mut route.action {
            Action::Pools { split_by, .. } => *split_by = Some(parse_hash_key(v)?),
            _ => return Err("split_by goes with a pool action".into()),
        },
        ("redirect", None) => set_action(route, parse_redirect(v)?)?,
        ("return", None) => set_action(route, parse_return(v)?)?,
        ("strip_prefix", None) => r.strip_prefix = Some(parse_path(v)?),
        ("add_prefix", None) => {
            r.add_prefix = Some(parse_path(v)?.trim_end_matches('/').to_string())
        }
        ("set_header", Some(_)) => r.request.set.push((named()?, field_value(v)?)),
        ("add_header", Some(_)) => r.request.add.push((named()?, field_value(v)?)),
        ("remove_header", None) => r.request.remove = list(v, |n| header_name(word, n))?,
        ("set_response_header", Some(_)) => r.response.set.push((named()?, field_value(v)?)),
        ("add_response_header", Some(_)) => r.response.add.push((named()?, field_value(v)?)),
        ("remove_response_header", None) => r.response.remove = list(v, |n| header_name(word, n))?,
        _ => return Err("unknown route key".into()),
    }
    Ok(())
}

/// The keys that take a name: `header X-Canary = 1`.
const NAMED: [&str; 6] = [
    "header",
    "query",
    "set_header",
    "add_header",
    "set_response_header",
    "add_response_header",
];

/// Headers no rule may touch: they frame or route the message, or are the connection's own.
const FRAMING: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "host",
    "trailer",
    "upgrade",
    "connection",
    "keep-alive",
    "te",
    "proxy-connection",
];

/// A header value a rule writes: visible characters, spaces and tabs only, so no rule can end
/// a header line early.
fn field_value(v: &str) -> Result<String, String> {
    match v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        true => Ok(v.to_string()),
        false => Err("a header value has visible ASCII, spaces and tabs only".into()),
    }
}

/// A header (or query parameter) name a key names: a token, and for header rules none that
/// frames the message.
fn header_name(word: &str, name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(is_token) {
        return Err(format!("{name:?} is not a name"));
    }
    let rule = word.ends_with("_header");
    let named = |list: &[&str]| list.iter().any(|f| name.eq_ignore_ascii_case(f));
    if rule && named(&FRAMING) {
        return Err(format!(
            "{word}: {name} frames the message; no rule may change it"
        ));
    }
    if rule && named(&FORWARDING_HEADERS) {
        return Err(format!(
            "{word}: lb-mio writes {name} itself; no rule may change it"
        ));
    }
    Ok(name.to_string())
}

fn list<T>(v: &str, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let items: Vec<T> = v.split_whitespace().map(item).collect::<Result<_, _>>()?;
    match items.is_empty() {
        true => Err("expected at least one value".into()),
        false => Ok(items),
    }
}

/// The one action a route has: a second one is a mistake.
fn set_action(route: &mut RouteConf, action: Action) -> Result<(), String> {
    if !matches!(&route.action, Action::Pools { pools, .. } if pools.is_empty()) {
        return Err("a route has one action: pool, redirect or return".into());
    }
    route.action = action;
    Ok(())
}

/// A path as routes compare it: normal already (matching uses normalised paths, so `//` or a
/// dot segment here could never match).
fn parse_path(v: &str) -> Result<String, String> {
    let odd = |b: u8| b.is_ascii_control() || b" ?#\\%".contains(&b);
    let dots = v.split('/').skip(1).any(|seg| seg == "." || seg == "..");
    match v.starts_with('/') && !v.bytes().any(odd) && !v.contains("//") && !dots {
        true => Ok(v.to_string()),
        false => Err(format!(
            "{v:?} is not a normal path: it starts with /, has no // or dot segment, no space ? # \\ or %"
        )),
    }
}

fn parse_method(v: &str) -> Result<String, String> {
    match !v.is_empty() && v.bytes().all(|b| b.is_ascii_uppercase()) {
        true => Ok(v.to_string()),
        false => Err(format!("{v:?} is not a method (GET, POST, ...)")),
    }
}

/// `api`, or `stable 95, canary 5`.
fn parse_pools(v: &str) -> Result<Action, String> {
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    let mut pools = Vec::new();
    for part in &parts {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (name, weight) = match words[..] {
            [name] if parts.len() == 1 => (name, 1),
            [name, weight] => (
                name,
                weight
                    .parse()
                    .ok()
                    .filter(|w| (1..=1000).contains(w))
                    .ok_or(format!("{weight:?} is not a weight (1 to 1000)"))?,
            ),
            _ => {
                return Err("expected a pool, or pools with weights: `stable 95, canary 5`".into())
            }
        };
        check_name(name).map_err(|_| format!("{name:?} is not a pool name"))?;
        pools.push((name.to_string(), weight));
    }
    Ok(Action::Pools {
        pools,
        split_by: None,
    })
}

fn parse_redirect(v: &str) -> Result<Action, String> {
    let (status, target) = v
        .split_once(char::is_whitespace)
        .ok_or("expected a status and a target: `301 https://{host}{path}{query}`")?;
    let status = match status.parse() {
        Ok(s @ (301 | 302 | 303 | 307 | 308)) => s,
        _ => {
            return Err(format!(
                "{status:?} is not a redirect status (301 302 303 307 308)"
            ))
        }
    };
    let target = target.trim();
    // An absolute target, or a path on this site that starts with a character of its own: a
    // `{path}` sent as `//evil.example` at the front would make a protocol-relative Location
    // pointing at another site.
    let absolute = ["http://", "https://", "{scheme}://"];
    let second = target.as_bytes().get(1);
    let local = target.starts_with('/') && !matches!(second, Some(b'/' | b'\\' | b'{'));
    if !local && !absolute.iter().any(|a| target.starts_with(a)) {
        return Err(format!(
            "{target:?}: a redirect target starts with http://, https://, {{scheme}}:// \
             or a path of its own (/login)"
        ));
    }
    Ok(Action::Redirect {
        status,
        template: Template::parse(target)?,
    })
}

fn parse_return(v: &str) -> Result<Action, String> {
    let (status, body) = v.split_once(char::is_whitespace).unwrap_or((v, ""));
    let status = match status.parse() {
        Ok(s @ 200..=599) => s,
        _ => return Err(format!("{status:?} is not a status (200 to 599)")),
    };
    let body = body.trim();
    if matches!(status, 204 | 304) && !body.is_empty() {
        return Err(format!("a {status} has no body"));
    }
    if body.len() > MAX_ANSWER_BODY || body.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!(
            "the body is one line of at most {MAX_ANSWER_BODY} bytes"
        ));
    }
    Ok(Action::Return {
        status,
        body: body.to_string(),
    })
}

/// `host` without its first label: what a `*.` pattern would have to be.
pub fn parent(host: &[u8]) -> Option<&[u8]> {
    let dot = host.iter().position(|&b| b == b'.')?;
    Some(&host[dot + 1..]).filter(|rest| !rest.is_empty())
}
