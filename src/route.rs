//! The route table: which pool a request goes to, or what lb-mio answers instead, decided
//! once per request before a pool's strategy picks a backend. Routes are tried in file order
//! and the first whose every condition holds wins; none: the pool `default`, or 404.
//!
//! Finding a host's routes costs one hash lookup however many hosts there are (each exact host
//! and each `*.` suffix has its own list, merged at build time with the routes for any host);
//! then only that list is walked. Matching allocates nothing. `explain` walks the same checks
//! over every route and says why each one before the match did not match.

mod explain;

use crate::config::route::{self as conf, parent};
pub use crate::config::route::{parse_key, role, Action, HostPattern, Role, RouteConf, Template};
pub use explain::{explain, Explained, Question};

use crate::config::Cidr;
use crate::hash;
use crate::http::redirect::MAX_LOCATION;
use crate::http::request::{self, Seen};
use crate::http::rewrite::{HeaderRules, Rewrite};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a request came from, besides its head.
#[derive(Debug, Clone, Copy)]
pub struct Via<'a> {
    pub client: IpAddr,
    pub listener: SocketAddr,
    pub https: bool,
    pub sni: Option<&'a str>,
}

/// Where the table sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// This pool (by its index in the snapshot's pools).
    Pool(usize),
    /// The route answers itself: a redirect or a direct answer.
    Answer,
    /// No route matched and there is no pool `default`.
    NotFound,
}

/// The table's decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The route that matched, by position.
    pub route: Option<usize>,
    pub to: To,
}

/// A route ready to match: its configuration with pool names resolved.
#[derive(Debug)]
pub struct Route {
    pub conf: RouteConf,
    /// The pools of its `pool` action with their weights (one, or a split).
    pools: Vec<(usize, u32)>,
    /// The whole response of a `return` action.
    answer: Vec<u8>,
}

impl Route {
    pub fn name(&self) -> &str {
        &self.conf.name
    }

    pub fn rewrite(&self) -> &Rewrite {
        &self.conf.rewrite
    }

    /// The status a `return` or `redirect` route answers with (0 for a pool route).
    pub fn status(&self) -> u16 {
        match self.conf.action {
            Action::Redirect { status, .. } | Action::Return { status, .. } => status,
            Action::Pools { .. } => 0,
        }
    }

    /// The response a `return` or `redirect` route sends (a redirect's without its
    /// `Location`); empty for the others.
    pub fn answer(&self) -> &[u8] {
        &self.answer
    }

    /// Writes a redirect's `Location` header line for a request into `out`; its length (0
    /// for a route that does not redirect, or when it does not fit).
    pub fn location(&self, seen: &Seen, https: bool, out: &mut [u8; MAX_LOCATION]) -> usize {
        let Action::Redirect { template, .. } = &self.conf.action else {
            return 0;
        };
        let room = out.len();
        let mut rest = &mut out[..];
        let mut write = || -> std::io::Result<()> {
            rest.write_all(b"Location: ")?;
            template.write(seen, https, &mut rest)?;
            rest.write_all(b"\r\n")
        };
        match write() {
            Ok(()) => room - rest.len(),
            Err(_) => 0,
        }
    }

    /// Whether a redirect's `Location` for this request fits (a non-redirect always does).
    pub fn location_fits(&self, seen: &Seen, https: bool) -> bool {
        let redirects = matches!(self.conf.action, Action::Redirect { .. });
        !redirects || self.location(seen, https, &mut [0; MAX_LOCATION]) > 0
    }
}

/// Requests each route matched: a row of counters per worker, by route, so a worker counts in
/// memory of its own (a counter a route, 80 KB for 10,000 routes: it stays in the cache). Rows
/// are made of whole, aligned 128-byte lines, so no two workers' counters share one.
#[derive(Debug, Default)]
struct Hits(Box<[Box<[Line]>]>);

/// Sixteen counters on a line (and its neighbour, which CPUs fetch in pairs) of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line([AtomicU64; 16]);

impl Hits {
    fn new(workers: usize, routes: usize) -> Hits {
        let row = || (0..routes.div_ceil(16)).map(|_| Line::default()).collect();
        Hits((0..workers.max(1)).map(|_| row()).collect())
    }

    fn slot(&self, worker: usize, at: usize) -> &AtomicU64 {
        &self.0[worker % self.0.len()][at / 16].0[at % 16]
    }

    fn count(&self, worker: usize, at: usize) {
        self.slot(worker, at).fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self, at: usize) -> u64 {
        (0..self.0.len())
            .map(|w| self.slot(w, at).load(Ordering::Relaxed))
            .sum()
    }
}

/// Every route, and the lists that find a host's routes.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// What `decide` checks of each route, by position.
    matchers: Vec<Matcher>,
    /// Every route's path prefixes and exact paths, one after another.
    paths: Vec<PathRule>,
    path_bytes: Vec<u8>,
    /// Every host's list of routes (positions), one after another.
    lists: Vec<u32>,
    /// The list of one exact host (with the `*.` and any-host routes that also match it).
    exact: HashMap<Box<[u8]>, List, hash::Fixed>,
    /// The list of any host one label under a suffix (with the any-host routes).
    wildcard: HashMap<Box<[u8]>, List, hash::Fixed>,
    /// The routes without a host condition.
    any: List,
    /// The pool `default`, when there is one.
    default_pool: Option<usize>,
    /// Requests each route matched; a reload keeps a route's count by its name.
    hits: Hits,
}

/// A host's routes: a range of `lists`.
type List = (u32, u32);

/// What a request's route decision reads of a route besides its host (a host's list holds
/// only routes whose host matches): its paths, kept in the table's own arrays, whether it has
/// conditions beyond them, where it sends a request, whether it rewrites, and its count.
/// Walking a host's routes reads these small records one after another, and a plain route
/// is decided without reading its configuration at all.
#[derive(Debug, Clone)]
struct Matcher {
    /// Its rules in `paths`; none: any path.
    paths: (u32, u32),
    nocase: bool,
    /// Method, header, query, client, listener, scheme or SNI conditions.
    more: bool,
    go: Go,
    /// A path rewrite or request header rules.
    rewrites: bool,
    /// Response header rules.
    answers_with_rules: bool,
}

/// Where a route sends what it matches.
#[derive(Debug, Clone, Copy)]
enum Go {
    Pool(u32),
    /// Several pools by weight: drawn at decision time.
    Split,
    /// A redirect or a direct answer.
    Answer,
}

/// A path prefix, or an exact path, in `path_bytes`.
#[derive(Debug, Clone, Copy)]
struct PathRule {
    at: u32,
    len: u32,
    exact: bool,
}

/// Why a route did not match: the first condition that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    Host,
    Path,
    Method,
    Header(usize),
    HasHeader,
    Query(usize),
    HasQuery,
    Client,
    Listener,
    Scheme,
    Sni,
}

impl RouteTable {
    /// The table for `routes`, counted by `workers` workers; `pool` finds a pool's index by
    /// name.
    pub fn new(
        confs: Vec<RouteConf>,
        workers: usize,
        pool: impl Fn(&str) -> Option<usize>,
    ) -> Result<RouteTable, String> {
        let mut table = RouteTable {
            default_pool: pool("default"),
            ..RouteTable::default()
        };
        for conf in confs {
            let pools = match &conf.action {
                Action::Pools { pools, .. } => pools
                    .iter()
                    .map(|(name, weight)| match pool(name) {
                        Some(index) => Ok((index, *weight)),
                        None => Err(format!("route {}: no pool {name:?}", conf.name)),
                    })
                    .collect::<Result<_, _>>()?,
                _ => Vec::new(),
            };
            let answer = match &conf.action {
                Action::Return { status, body } => conf::answer_bytes(*status, body),
                Action::Redirect { status, .. } => conf::answer_bytes(*status, ""),
                Action::Pools { .. } => Vec::new(),
            };
            table.add_matcher(&conf, &pools);
            table.routes.push(Route {
                conf,
                pools,
                answer,
            });
        }
        table.index_hosts();
        table.hits = Hits::new(workers, table.routes.len());
        Ok(table)
    }

    /// Keeps what `decide` reads of `conf` in the table's compact arrays.
    fn add_matcher(&mut self, conf: &RouteConf, pools: &[(usize, u32)]) {
        let first = self.paths.len() as u32;
        let exact = conf.exact_paths.iter().map(|p| (p, true));
        for (path, exact) in conf.paths.iter().map(|p| (p, false)).chain(exact) {
            let at = self.path_bytes.len() as u32;
            self.path_bytes.extend_from_slice(path.as_bytes());
            let len = path.len() as u32;
            self.paths.push(PathRule { at, len, exact });
        }
        let more = !(conf.methods.is_empty()
            && conf.headers.is_empty()
            && conf.has_headers.is_empty()
            && conf.queries.is_empty()
            && conf.has_queries.is_empty()
            && conf.clients.is_empty()
            && conf.listeners.is_empty()
            && conf.https.is_none()
            && conf.sni.is_empty());
        let go = match (&conf.action, pools) {
            (Action::Pools { .. }, [(pool, _)]) => Go::Pool(*pool as u32),
            (Action::Pools { .. }, _) => Go::Split,
            (Action::Redirect { .. } | Action::Return { .. }, _) => Go::Answer,
        };
        let r = &conf.rewrite;
        self.matchers.push(Matcher {
            paths: (first, self.paths.len() as u32),
            nocase: conf.path_nocase,
            more,
            go,
            rewrites: r.changes_path() || !r.request.is_empty(),
            answers_with_rules: !r.response.is_empty(),
        });
    }

    /// Whether route `at`'s path conditions hold for `path` (the normalised path).
    fn path_ok(&self, at: usize, path: &[u8]) -> bool {
        let m = &self.matchers[at];
        let rules = &self.paths[m.paths.0 as usize..m.paths.1 as usize];
        rules.is_empty()
            || rules.iter().any(|rule| {
                let want = &self.path_bytes[rule.at as usize..(rule.at + rule.len) as usize];
                let got = match rule.exact {
                    true => Some(path),
                    false => path.get(..want.len()),
                };
                got.is_some_and(|got| match m.nocase {
                    true => got.eq_ignore_ascii_case(want),
                    false => got == want,
                })
            })
    }

    /// Fills the host lists: each exact host's list holds, in file order, its own routes, those
    /// of the `*.` suffix it falls under, and those for any host; each suffix's list the same
    /// without an exact host. The lists go one after another into `lists`.
    fn index_hosts(&mut self) {
        let mut exact: HashMap<Box<[u8]>, Vec<u32>, hash::Fixed> = HashMap::default();
        let mut wildcard: HashMap<Box<[u8]>, Vec<u32>, hash::Fixed> = HashMap::default();
        let mut any = Vec::new();
        for (at, route) in self.routes.iter().enumerate() {
            let at = at as u32;
            if route.conf.hosts.is_empty() {
                any.push(at);
            }
            for host in &route.conf.hosts {
                let list = match host {
                    HostPattern::Exact(h) => exact.entry(h.as_bytes().into()).or_default(),
                    HostPattern::Under(s) => wildcard.entry(s.as_bytes().into()).or_default(),
                };
                list.push(at);
            }
        }
        let mut lists = Vec::new();
        let mut keep = |mut list: Vec<u32>, also: &[&[u32]]| {
            for more in also {
                list.extend_from_slice(more);
            }
            list.sort_unstable();
            list.dedup();
            let start = lists.len() as u32;
            lists.extend(list);
            (start, lists.len() as u32)
        };
        self.exact = (exact.iter())
            .map(|(host, list)| {
                let under = parent(host)
                    .and_then(|p| wildcard.get(p))
                    .map_or(&[][..], |l| &l[..]);
                (host.clone(), keep(list.clone(), &[under, &any]))
            })
            .collect();
        self.wildcard = (wildcard.into_iter())
            .map(|(suffix, list)| (suffix, keep(list, &[&any])))
            .collect();
        self.any = keep(any, &[]);
        self.lists = lists;
    }

    /// Some route has a host condition: only then is a host with an empty label (`a..b`,
    /// `.a`, `a..` with its last dot gone) refused — nginx refuses it too, and a name routes and
    /// backends could read two ways is no name to route by.
    pub fn refuses_host(&self, host: &[u8]) -> bool {
        let empty_label =
            host.starts_with(b".") || host.ends_with(b".") || host.windows(2).any(|w| w == b"..");
        empty_label && !(self.exact.is_empty() && self.wildcard.is_empty())
    }

    /// Some route has a path condition: only then is a request's path normalised (and one
    /// that cannot be is refused), so a table of host routes leaves paths as they are.
    /// (Every route's path rules are in `paths`: asked on every request, it costs no walk.)
    pub fn looks_at_paths(&self) -> bool {
        !self.paths.is_empty()
    }

    /// Takes over the counts of `old`'s routes that have the same names. (Requests a worker
    /// routes by `old` between this copy and its move to the new table go uncounted: a few,
    /// at the moment a change takes effect.)
    pub fn carry_counts(&mut self, old: &RouteTable) {
        let by_name: HashMap<&str, usize> = (old.routes.iter().enumerate())
            .map(|(at, r)| (r.name(), at))
            .collect();
        for (at, route) in self.routes.iter().enumerate() {
            let Some(&was) = by_name.get(route.name()) else {
                continue;
            };
            for worker in 0..self.hits.0.len().min(old.hits.0.len()) {
                let count = old.hits.slot(worker, was).load(Ordering::Relaxed);
                self.hits.slot(worker, at).store(count, Ordering::Relaxed);
            }
        }
    }

    /// Counts a request worker `worker` routed by route `at`.
    pub fn count(&self, at: usize, worker: usize) {
        self.hits.count(worker, at);
    }

    /// Requests route `at` matched, over all workers.
    pub fn hits(&self, at: usize) -> u64 {
        self.hits.sum(at)
    }

    /// What route `at` changes in a request it forwards, when it changes anything.
    pub fn rewrite(&self, at: usize) -> Option<&Rewrite> {
        let rewrites = self.matchers[at].rewrites;
        rewrites.then(|| self.routes[at].rewrite())
    }

    /// Route `at`'s response header rules, when it has any.
    pub fn response_rules(&self, at: usize) -> Option<&HeaderRules> {
        let has = self.matchers[at].answers_with_rules;
        has.then(|| &self.routes[at].rewrite().response)
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn route(&self, at: usize) -> &Route {
        &self.routes[at]
    }

    /// The routes that may match requests for `host` (lower case, no port, no trailing dot).
    fn candidates(&self, host: &[u8]) -> &[u32] {
        let list = match self.exact.get(host) {
            Some(list) => list,
            None => parent(host)
                .and_then(|p| self.wildcard.get(p))
                .unwrap_or(&self.any),
        };
        &self.lists[list.0 as usize..list.1 as usize]
    }

    /// Where a request goes. `draw` is a random number, for a split without `split_by`. The
    /// host's list holds only routes whose host condition holds, so only the rest is checked.
    pub fn decide(&self, seen: &Seen, via: &Via, draw: u64) -> Decision {
        let holds = |&at: &usize| {
            self.path_ok(at, seen.path)
                && (!self.matchers[at].more || self.check_more(at, seen, via).is_ok())
        };
        let mut found = self.candidates(seen.host).iter().map(|&at| at as usize);
        let matched = found.find(holds);
        match matched {
            Some(at) => Decision {
                route: Some(at),
                to: self.action(at, seen, via, draw),
            },
            None => Decision {
                route: None,
                to: self.default_pool.map_or(To::NotFound, To::Pool),
            },
        }
    }

    fn action(&self, at: usize, seen: &Seen, via: &Via, draw: u64) -> To {
        match self.matchers[at].go {
            Go::Pool(pool) => return To::Pool(pool as usize),
            Go::Answer => return To::Answer,
            Go::Split => {}
        }
        let route = &self.routes[at];
        match &route.conf.action {
            Action::Pools { split_by, .. } => {
                let draw = match split_by {
                    Some(key) => split_key(seen, via, key),
                    None => draw,
                };
                To::Pool(pick_weighted(&route.pools, draw))
            }
            Action::Redirect { .. } | Action::Return { .. } => To::Answer,
        }
    }

    /// Checks every condition of route `at`, in the order `explain` reports them.
    fn check(&self, at: usize, seen: &Seen, via: &Via) -> Result<(), Miss> {
        let c = &self.routes[at].conf;
        let host = c.hosts.is_empty() || c.hosts.iter().any(|h| h.matches(seen.host));
        ok(host, Miss::Host)?;
        ok(self.path_ok(at, seen.path), Miss::Path)?;
        self.check_more(at, seen, via)
    }

    /// Checks route `at`'s conditions beyond host and path.
    fn check_more(&self, at: usize, seen: &Seen, via: &Via) -> Result<(), Miss> {
        let c = &self.routes[at].conf;
        let method = seen.method.as_bytes();
        ok(
            c.methods.is_empty() || c.methods.iter().any(|m| m.as_bytes() == method),
            Miss::Method,
        )?;
        for (i, (name, value)) in c.headers.iter().enumerate() {
            ok(
                header_values(seen, name).any(|v| v == value.as_bytes()),
                Miss::Header(i),
            )?;
        }
        let present = |name: &String| header_values(seen, name).next().is_some();
        ok(
            c.has_headers.is_empty() || c.has_headers.iter().any(present),
            Miss::HasHeader,
        )?;
        for (i, (name, value)) in c.queries.iter().enumerate() {
            ok(
                query_values(seen, name).any(|v| v == value.as_bytes()),
                Miss::Query(i),
            )?;
        }
        let given = |name: &String| query_values(seen, name).next().is_some();
        ok(
            c.has_queries.is_empty() || c.has_queries.iter().any(given),
            Miss::HasQuery,
        )?;
        ok(
            c.clients.is_empty() || c.clients.iter().any(|r: &Cidr| r.contains(via.client)),
            Miss::Client,
        )?;
        ok(
            c.listeners.is_empty() || c.listeners.contains(&via.listener),
            Miss::Listener,
        )?;
        ok(c.https.is_none_or(|https| https == via.https), Miss::Scheme)?;
        let sni = via.sni.unwrap_or_default().as_bytes();
        ok(
            c.sni.is_empty() || c.sni.iter().any(|h| h.matches(sni)),
            Miss::Sni,
        )
    }

    /// What the table does with a request, line by line (`lb-mio --explain`).
    pub fn explain(&self, seen: &Seen, via: &Via, pools: &[&str]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut matched = None;
        for (at, route) in self.routes.iter().enumerate() {
            match self.check(at, seen, via) {
                Ok(()) => {
                    lines.push(format!("route {}: match", route.name()));
                    matched = Some(at);
                    break;
                }
                Err(miss) => lines.push(format!(
                    "route {}: no ({})",
                    route.name(),
                    self.miss_text(at, miss, seen, via)
                )),
            }
        }
        let Some(at) = matched else {
            lines.push("no route matched".into());
            lines.push(match self.default_pool {
                Some(pool) => format!("action: pool {}", pools[pool]),
                None => "action: return 404".into(),
            });
            return lines;
        };
        let route = &self.routes[at];
        lines.push(self.action_text(at, seen, via, pools));
        explain_rewrite(route.rewrite(), seen.sent_path, &mut lines);
        lines
    }

    fn action_text(&self, at: usize, seen: &Seen, via: &Via, pools: &[&str]) -> String {
        let route = &self.routes[at];
        match &route.conf.action {
            Action::Pools { split_by, .. } if route.pools.len() > 1 => {
                let shares: Vec<String> = (route.pools.iter())
                    .map(|&(p, w)| format!("{} {w}", pools[p]))
                    .collect();
                let to = match (split_by, self.action(at, seen, via, 0)) {
                    (Some(_), To::Pool(p)) => pools[p],
                    _ => "random",
                };
                format!("action: split {} -> {to}", shares.join(", "))
            }
            Action::Pools { .. } => format!("action: pool {}", pools[route.pools[0].0]),
            Action::Redirect { status, template } => {
                let mut location = Vec::new();
                // Writing to a Vec cannot fail.
                let _ = template.write(seen, via.https, &mut location);
                format!(
                    "action: redirect {status} {}",
                    String::from_utf8_lossy(&location)
                )
            }
            Action::Return { status, .. } => format!("action: return {status}"),
        }
    }

    fn miss_text(&self, at: usize, miss: Miss, seen: &Seen, via: &Via) -> String {
        let c = &self.routes[at].conf;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let list = |items: &[String]| items.join(" ");
        match miss {
            Miss::Host => format!("host: {} is not {}", text(seen.host), c.host_list()),
            Miss::Path => c.path_miss(&text(seen.path)),
            Miss::Method => format!("method: {} is not {}", seen.method, list(&c.methods)),
            Miss::Header(i) => {
                let (name, want) = &c.headers[i];
                match header_values(seen, name).next() {
                    None => format!("header {name}: absent"),
                    Some(v) => format!("header {name}: {} is not {want}", text(v)),
                }
            }
            Miss::HasHeader => format!("has_header: none of {}", list(&c.has_headers)),
            Miss::Query(i) => {
                let (name, want) = &c.queries[i];
                match query_values(seen, name).next() {
                    None => format!("query {name}: absent"),
                    Some(v) => format!("query {name}: {} is not {want}", text(v)),
                }
            }
            Miss::HasQuery => format!("has_query: none of {}", list(&c.has_queries)),
            Miss::Client => format!("client: {} is outside the ranges", via.client),
            Miss::Listener => format!("listener: came in on {}", via.listener),
            Miss::Scheme => format!("scheme: {}", if via.https { "https" } else { "http" }),
            Miss::Sni => format!("sni: {}", via.sni.unwrap_or("(none)")),
        }
    }
}

fn explain_rewrite(rewrite: &Rewrite, sent_path: &[u8], lines: &mut Vec<String>) {
    if rewrite.changes_path() {
        let new = rewrite.path(sent_path).concat();
        let (from, to) = (
            String::from_utf8_lossy(sent_path),
            String::from_utf8_lossy(&new),
        );
        lines.push(format!("rewrite: {from} -> {to}"));
    }
    for (direction, rules) in [
        ("request", &rewrite.request),
        ("response", &rewrite.response),
    ] {
        let mut line =
            |what: &str, rule: &str| lines.push(format!("{direction} header: {what} {rule}"));
        for (name, value) in &rules.set {
            line("set", &format!("{name}: {value}"));
        }
        for (name, value) in &rules.add {
            line("add", &format!("{name}: {value}"));
        }
        for name in &rules.remove {
            line("remove", name);
        }
    }
}

/// `Ok` when `cond` holds, else the miss that says so.
fn ok(cond: bool, miss: Miss) -> Result<(), Miss> {
    if cond {
        Ok(())
    } else {
        Err(miss)
    }
}

fn header_values<'a>(seen: &'a Seen, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    (seen.headers.iter())
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.trim_ascii())
}

/// The values of query parameter `name`, as sent.
fn query_values<'a>(seen: &'a Seen, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    let pairs = seen.query.unwrap_or_default().split(|&b| b == b'&');
    pairs.filter_map(move |pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        (key == name.as_bytes()).then_some(value)
    })
}

/// What keeps a client on one side of a split: the `split_by` header or cookie, else its address.
fn split_key(seen: &Seen, via: &Via, key: &request::HashKey) -> u64 {
    const SEED: u64 = 0x5e1f_5eed;
    match request::hash_source(seen.headers, key) {
        Some(value) => hash::fixed(SEED, value),
        None => hash::ip(SEED, via.client),
    }
}

/// The pool whose share of the total weight `draw` falls in.
fn pick_weighted(pools: &[(usize, u32)], draw: u64) -> usize {
    let total: u64 = pools.iter().map(|&(_, w)| u64::from(w)).sum();
    let mut at = draw % total.max(1);
    for &(pool, weight) in pools {
        if at < u64::from(weight) {
            return pool;
        }
        at -= u64::from(weight);
    }
    pools[0].0
}

#[cfg(test)]
mod tests;
