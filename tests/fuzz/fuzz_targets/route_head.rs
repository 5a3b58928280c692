//! `route_head`: `lb_mio::http::request::parse_routed` on arbitrary bytes (exactly what a
//! client sent), with the route table of a fixed config whose routes look at the host (exact and
//! `*.`), the path (prefix, exact, case-insensitive), the method, headers and query parameters,
//! split over pools, rewrite, redirect and answer — decided the way a worker decides. Whether
//! the request came over TLS, and the draw for a split, follow the input length.
//!
//! Beyond "never panics":
//! - the path the table sees is `http::path::normalise` of the path as sent, and normalising
//!   it again changes nothing (an accepted path is a fixed point: matching is stable);
//! - `decide` and `explain` agree on the route that matched;
//! - a head routed to a pool is written for the backend (with the route's rewrite) and a
//!   redirect's `Location` is built whenever the parse accepts the head.

#![no_main]

use lb_mio::buffer::BufferPool;
use lb_mio::config::Config;
use lb_mio::http::path;
use lb_mio::http::redirect::MAX_LOCATION;
use lb_mio::http::request::{self, Forwarding, HeadLimits, Seen, Wanted};
use lb_mio::route::{RouteTable, To, Via};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;

mod common;
use common::show;

const CONFIG: &str = "\
[backends]
web = 127.0.0.1:9001
[pool.api.backends]
api = 127.0.0.1:9002
[pool.admin.backends]
admin = 127.0.0.1:9003
[pool.canary.backends]
canary = 127.0.0.1:9004
[route.old]
path_exact = /v1 /v1/
redirect = 301 https://{host}/v2{path}{query}
[route.admin]
path = /admin/
path_case = insensitive
client = 10.0.0.0/8
pool = admin
[route.admin-deny]
path = /admin
path_case = insensitive
return = 403 forbidden
[route.api]
host = api.example.com *.api.example.com
path = /api/
method = GET HEAD POST
header X-Canary = 1
has_query = trace
strip_prefix = /api
add_prefix = /v2
set_header X-Env = prod
remove_header = X-Debug
pool = api
[route.debug]
query debug = 1
has_header = X-Debug
return = 410 gone
[route.split]
host = www.example.com
split_by = header:X-User
pool = default 95, canary 5
";

/// `[limits]`'s defaults.
const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 8192,
    max_headers: 64,
};

struct Table {
    routes: RouteTable,
    pools: Vec<String>,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let config = Config::parse(CONFIG, "route_head.ini").expect("the fixed config parses");
    let routes = RouteTable::new(config.routes.clone(), 1, |name| config.pool(name))
        .expect("the fixed config's routes build");
    let pools = config.pools.iter().map(|p| p.name.clone()).collect();
    Table { routes, pools }
});

/// Checks what the table sees of an accepted head and decides where it goes.
fn route<'t>(table: &'t Table, seen: &Seen, via: &Via, draw: u64) -> Forwarding<'t> {
    if seen.path != b"*" {
        // An absolute-form target without a path is routed as `/`.
        let sent = if seen.sent_path.is_empty() {
            &b"/"[..]
        } else {
            seen.sent_path
        };
        let mut once = vec![0; sent.len()];
        let normalised = path::normalise(sent, &mut once)
            .unwrap_or_else(|e| panic!("the parser took {:?}: {e:?}", show(sent)));
        assert_eq!(normalised, seen.path, "the table saw another path");
        let mut twice = vec![0; seen.path.len()];
        let again = path::normalise(seen.path, &mut twice).unwrap_or_else(|e| {
            panic!(
                "{:?} normalised to {:?}, which is refused: {e:?}",
                show(seen.sent_path),
                show(seen.path)
            )
        });
        assert_eq!(
            show(again),
            show(seen.path),
            "normalising {:?} again changed it",
            show(seen.sent_path)
        );
    }
    let decision = table.routes.decide(seen, via, draw);
    let pools: Vec<&str> = table.pools.iter().map(String::as_str).collect();
    let said = table.routes.explain(seen, via, &pools);
    let explained = said.iter().find_map(|l| {
        let rest = l.strip_prefix("route ")?;
        rest.strip_suffix(": match")
    });
    let decided = decision.route.map(|at| table.routes.route(at).name());
    assert_eq!(decided, explained, "decide and explain disagree: {said:?}");
    match (decision.to, decision.route) {
        (To::Pool(_), at) => Forwarding {
            rewrite: at.and_then(|at| table.routes.rewrite(at)),
            ..Forwarding::default()
        },
        (To::Answer, Some(at)) => {
            let route = table.routes.route(at);
            if route.location_fits(seen, via.https) {
                route.location(seen, via.https, &mut [0; MAX_LOCATION]);
            }
            Forwarding::default()
        }
        (To::Answer, None) => panic!("an answer without a route"),
        (To::NotFound, _) => panic!("no route matched, but there is a pool default"),
    }
}

fuzz_target!(|input: &[u8]| {
    let table = &*TABLE;
    let https = input.len() % 2 == 1;
    let via = Via {
        client: IpAddr::V4(Ipv4Addr::new(10, 1, 2, (input.len() % 3) as u8)),
        listener: SocketAddr::from(([127, 0, 0, 1], if https { 443 } else { 80 })),
        https,
        sni: https.then_some("api.example.com"),
    };
    // Room for the longest path: the head is no longer than the input.
    let mut room = vec![0; input.len()];
    let wanted = Wanted {
        path_room: Some(&mut room),
        https,
        ..Wanted::default()
    };
    let draw = (input.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = BufferPool::new(0).take();
    let routed = request::parse_routed(input, LIMITS, via.client, wanted, &mut out, |seen| {
        Ok((route(table, seen, &via, draw), ()))
    });
    if let Ok(Some(_)) = routed {
        assert!(out.data().ends_with(b"\r\n\r\n"), "{:?}", show(out.data()));
    }
});
