//! Routing allocates nothing: parsing a head and deciding its route as a worker does
//! (`request::parse_routed` with a closure calling `RouteTable::decide`), over a table of
//! 1,000 hosts with 10 routes each plus wildcard, any-host, header, query, split and rewrite
//! routes, counts no allocation after a warm-up. A global allocator counts the allocations of
//! the thread that asks it to (the test harness's own threads may allocate meanwhile).

use lb_mio::buffer::BufferPool;
use lb_mio::http::request::{self, Forwarding, HeadLimits, Wanted};
use lb_mio::route::{parse_key, RouteConf, RouteTable, To, Via};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const POOLS: [&str; 3] = ["default", "api", "canary"];

/// A route from `key = value` pairs, checked as the config loader checks it.
fn route(name: &str, keys: &[(&str, &str)]) -> RouteConf {
    let mut conf = RouteConf::new(name).unwrap();
    for (key, value) in keys {
        parse_key(&mut conf, key, value).unwrap();
    }
    conf.check().unwrap();
    conf
}

fn table() -> RouteTable {
    let mut confs = vec![
        route(
            "api",
            &[
                ("host", "*.api.example.test"),
                ("path", "/v1/"),
                ("method", "GET POST"),
                ("header X-Canary", "1"),
                ("strip_prefix", "/v1"),
                ("add_prefix", "/v2"),
                ("set_header X-Env", "prod"),
                ("remove_header", "X-Debug"),
                ("pool", "api"),
            ],
        ),
        route(
            "split",
            &[
                ("host", "*.api.example.test"),
                ("has_query", "trace"),
                ("pool", "default 95, canary 5"),
                ("split_by", "header:X-User"),
            ],
        ),
        route(
            "admin-deny",
            &[
                ("path", "/admin/"),
                ("client", "10.0.0.0/8"),
                ("return", "403 forbidden"),
            ],
        ),
    ];
    for h in 0..1_000 {
        for r in 0..10 {
            let (host, path) = (format!("h{h}.example.test"), format!("/p{r}/"));
            let pool = POOLS[(h + r) % POOLS.len()];
            let keys = [("host", host.as_str()), ("path", &path), ("pool", pool)];
            confs.push(route(&format!("h{h}-r{r}"), &keys));
        }
    }
    confs.push(route("rest", &[("pool", "default")]));
    RouteTable::new(confs, |name| POOLS.iter().position(|p| *p == name)).unwrap()
}

/// Requests that take every kind of path through the table: exact hosts (their last route),
/// a wildcard with a rewrite, a split kept by a header, a hostile path, no host route at all.
fn heads() -> Vec<Vec<u8>> {
    let mut heads: Vec<String> = (0..1_000)
        .map(|h| format!("GET /p9/x?a=1 HTTP/1.1\r\nHost: h{h}.example.test:8080\r\n\r\n"))
        .collect();
    heads.extend([
        "POST /v1/users HTTP/1.1\r\nHost: eu.api.example.test\r\nX-Canary: 1\r\nX-Debug: on\r\nContent-Length: 0\r\n\r\n".to_string(),
        "GET /v1/x?trace HTTP/1.1\r\nHost: EU.api.example.test.\r\nX-User: ada\r\n\r\n".to_string(),
        "GET /static//./img/../%61dmin;j=1/%7Euser/c.png HTTP/1.1\r\nHost: h7.example.test\r\n\r\n".to_string(),
        "GET http://elsewhere.test/p1/ HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n".to_string(),
    ]);
    heads.into_iter().map(String::into_bytes).collect()
}

#[test]
fn routing_a_request_allocates_nothing() {
    let table = table();
    let heads = heads();
    let limits = HeadLimits {
        max_bytes: 8192,
        max_headers: 100,
    };
    let wanted = Wanted {
        normalise: true,
        ..Wanted::default()
    };
    let via = Via {
        client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        listener: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80),
        https: false,
        sni: None,
    };
    let mut out = BufferPool::new(0).take();
    let mut route_once = |head: &[u8], draw: u64| {
        out.truncate(0);
        let parsed = request::parse_routed(head, limits, via.client, wanted, &mut out, |seen| {
            let decision = table.decide(seen, &via, draw);
            let route = decision.route.map(|at| table.route(at));
            if let Some(route) = route {
                route.count();
            }
            let forwarding = Forwarding {
                rewrite: route.map(|r| r.rewrite()),
                ..Forwarding::default()
            };
            Ok((forwarding, decision))
        });
        parsed.unwrap().unwrap().1
    };
    // Warm up, and check the requests go where they should.
    let name = |d: lb_mio::route::Decision| d.route.map(|at| table.route(at).name().to_string());
    for (h, head) in heads.iter().take(1_000).enumerate() {
        assert_eq!(name(route_once(head, 0)), Some(format!("h{h}-r9")));
    }
    let ends: Vec<_> = heads[1_000..].iter().map(|h| route_once(h, 0)).collect();
    let names: Vec<_> = ends.iter().map(|d| name(*d)).collect();
    let expected = ["api", "split", "rest", "rest"].map(|n| Some(n.to_string()));
    assert_eq!(names, expected);
    assert_eq!(ends[0].to, To::Pool(1));

    COUNTING.with(|c| c.set(true));
    for (i, head) in heads.iter().cycle().take(1_000).enumerate() {
        std::hint::black_box(route_once(head, i as u64));
    }
    for head in &heads[1_000..] {
        std::hint::black_box(route_once(head, 3));
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 0, "routing allocated");
}
