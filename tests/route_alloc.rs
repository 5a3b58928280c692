//! Routing allocates nothing: parsing a head and deciding its route as a worker does
//! (`request::parse_routed` with the worker's `conn::route`), over a table of
//! 1,000 hosts with 10 routes each plus wildcard, any-host, header, query, split and rewrite
//! routes, counts no allocation after a warm-up. A global allocator counts the allocations of
//! the thread that asks it to (the test harness's own threads may allocate meanwhile).

use lb_mio::backend::{self, Source};
use lb_mio::buffer::BufferPool;
use lb_mio::config::Config;
use lb_mio::conn;
use lb_mio::http::request::{self, HeadLimits, Wanted};
use lb_mio::route::{Decision, To, Via};
use lb_mio::shared::Snapshot;
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

/// A snapshot with 1,000 hosts of 10 routes each (`[route.hN-rM]`, path `/pM/`), a wildcard
/// route with a rewrite and header rules, a split kept by a header, a direct answer, and a
/// route for any host.
fn snapshot() -> Snapshot {
    let mut text = String::from(
        "[lb]\nworkers = 1\n\
         [backends]\nweb = 127.0.0.1:9\n\
         [pool.api.backends]\napi1 = 127.0.0.1:10\n\
         [pool.canary.backends]\ncanary1 = 127.0.0.1:11\n\
         [route.api]\nhost = *.api.example.test\npath = /v1/\nmethod = GET POST\n\
         header X-Canary = 1\nstrip_prefix = /v1\nadd_prefix = /v2\nset_header X-Env = prod\n\
         remove_header = X-Debug\npool = api\n\
         [route.split]\nhost = *.api.example.test\nhas_query = trace\n\
         pool = default 95, canary 5\nsplit_by = header:X-User\n\
         [route.admin-deny]\npath = /admin/\nclient = 10.0.0.0/8\nreturn = 403 forbidden\n",
    );
    let pools = ["default", "api", "canary"];
    for h in 0..1_000 {
        for r in 0..10 {
            let pool = pools[(h + r) % pools.len()];
            text += &format!(
                "[route.h{h}-r{r}]\nhost = h{h}.example.test\npath = /p{r}/\npool = {pool}\n"
            );
        }
    }
    text += "[route.rest]\npool = default\n";
    let config = Config::parse(&text, "route_alloc.ini").unwrap();
    let backends = backend::at_start(&config.backends, &Source::Config);
    Snapshot::new(config, backends).unwrap()
}

/// Requests that take every kind of path through the table: exact hosts (their last route),
/// a wildcard with a rewrite, a split kept by a header, a path to normalise, no host route.
fn heads() -> Vec<Vec<u8>> {
    let mut heads: Vec<String> = (0..1_000)
        .map(|h| format!("GET /p9/x?a=1 HTTP/1.1\r\nHost: h{h}.example.test:8080\r\n\r\n"))
        .collect();
    heads.extend([
        "POST /v1/users HTTP/1.1\r\nHost: eu.api.example.test\r\nX-Canary: 1\r\nX-Debug: on\r\nContent-Length: 0\r\n\r\n".to_string(),
        "GET /v1/x?trace HTTP/1.1\r\nHost: EU.api.example.test.\r\nX-User: ada\r\n\r\n".to_string(),
        "GET /static//./img/%61dmin;j=1/%7Euser/c.png HTTP/1.1\r\nHost: h7.example.test\r\n\r\n".to_string(),
        "GET http://elsewhere.test/p1/ HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n".to_string(),
    ]);
    heads.into_iter().map(String::into_bytes).collect()
}

#[test]
fn routing_a_request_allocates_nothing() {
    let snap = snapshot();
    let heads = heads();
    let limits = HeadLimits {
        max_bytes: 8192,
        max_headers: 100,
    };
    let via = Via {
        client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        listener: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80),
        https: false,
        sni: None,
    };
    let mut out = BufferPool::new(0).take();
    let mut room = vec![0; limits.max_bytes];
    // As a worker routes a request: `conn::route` during the parse.
    let mut route_once = |head: &[u8], draw: u64| {
        out.truncate(0);
        let wanted = Wanted {
            path_room: Some(&mut room[..]),
            ..Wanted::default()
        };
        let parsed = request::parse_routed(head, limits, via.client, wanted, &mut out, |seen| {
            conn::route(&snap, seen, &via, (draw, 0))
        });
        parsed.unwrap().unwrap().1
    };
    // Warm up, and check the requests go where they should.
    let name = |d: Decision| d.route.map(|at| snap.routes.route(at).name().to_string());
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
