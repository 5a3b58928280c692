//! What routing adds to a request: parsing a head and deciding its route, as a worker does
//! (`request::parse_routed` with the worker's `conn::route`), against the same parse with no
//! routes (no path normalisation, an empty table). `cargo bench --bench route`;
//! prints markdown tables, times in ns per request (median of `ROUNDS` rounds, one thread).
//!
//! (a) one host with N routes, the request matching the last: the walk over a host's list.
//! (b) N/10 hosts with 10 routes each, requests going round every host and matching their
//!     host's last route: the host lookup, which should not grow with the hosts.
//! (c) the path normalisation: `path::normalise` alone and within a parse, on plain and
//!     hostile-looking paths.

use lb_mio::backend::{self, Source};
use lb_mio::buffer::{Buffer, BufferPool};
use lb_mio::config::Config;
use lb_mio::conn;
use lb_mio::http::head::HeadError;
use lb_mio::http::path;
use lb_mio::http::request::{self, HeadLimits, Wanted};
use lb_mio::route::{Decision, Via};
use lb_mio::shared::Snapshot;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use support::{time, ROUNDS};

mod support;

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 8192,
    max_headers: 100,
};

const VIA: Via = Via {
    client: IpAddr::V4(Ipv4Addr::LOCALHOST),
    listener: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80),
    https: false,
    sni: None,
};

/// The snapshot of a config with one backend in the pool `default` and `hosts` hosts
/// `hN.example.test` with `per_host` routes each, `[route.hN-rM]` matching path prefix `/pM/`.
fn table(hosts: usize, per_host: usize) -> Snapshot {
    let mut text = String::from("[lb]\nworkers = 1\n[backends]\nweb = 127.0.0.1:9\n");
    for h in 0..hosts {
        for r in 0..per_host {
            text += &format!(
                "[route.h{h}-r{r}]\nhost = h{h}.example.test\npath = /p{r}/\npool = default\n"
            );
        }
    }
    let config = Config::parse(&text, "bench.ini").expect("config");
    let backends = backend::at_start(&config.backends, &Source::Config);
    Snapshot::new(config, backends).expect("snapshot")
}

/// A GET of `target` for `host`, with the headers a browser-less client sends.
fn head(host: &str, target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-mio-bench\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

/// Parses `head` and routes it through `snap` as a worker does (`conn::route`: the decision,
/// the route's count, what it means for the backend's head). Without a route that looks at
/// paths, the path is not normalised, as in a worker.
fn parse(
    snap: &Snapshot,
    head: &[u8],
    out: &mut Buffer,
    room: &mut [u8],
) -> Result<Decision, HeadError> {
    out.truncate(0);
    let wanted = Wanted {
        path_room: snap.routes.looks_at_paths().then_some(room),
        ..Wanted::default()
    };
    let parsed = request::parse_routed(head, LIMITS, VIA.client, wanted, out, |seen| {
        conn::route(snap, seen, &VIA, (0, 0))
    })?;
    Ok(parsed.expect("a whole head").1)
}

/// ns per request of parsing and routing `heads` in turn through `snap`.
fn per_request(snap: &Snapshot, heads: &[Vec<u8>], out: &mut Buffer) -> f64 {
    let mut room = vec![0; LIMITS.max_bytes];
    let mut next = heads.iter().cycle();
    time(|count| {
        for _ in 0..count {
            let head = next.next().expect("heads");
            black_box(parse(snap, black_box(head), out, &mut room).ok());
        }
    })
}

/// (a) and (b): one row per size, with and without the table.
fn routing_rows(sizes: &[(usize, usize)], out: &mut Buffer) {
    let none = table(0, 0);
    println!("| hosts × routes each | routes | parse, no routes | parse + route | routing | routing share |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for &(hosts, per_host) in sizes {
        let table = table(hosts, per_host);
        let target = format!("/p{}/index.html", per_host - 1);
        let heads: Vec<Vec<u8>> = (0..hosts)
            .map(|h| head(&format!("h{h}.example.test"), &target))
            .collect();
        for (h, head) in heads.iter().enumerate() {
            let want = Some(h * per_host + per_host - 1);
            let mut room = vec![0; LIMITS.max_bytes];
            let got = parse(&table, head, out, &mut room).expect("routed").route;
            assert_eq!(
                got, want,
                "{hosts} hosts: the request must match its host's last route"
            );
        }
        let base = per_request(&none, &heads, out);
        let routed = per_request(&table, &heads, out);
        println!(
            "| {hosts} × {per_host} | {} | {base:.0} | {routed:.0} | {:.0} | {:.0}% |",
            hosts * per_host,
            routed - base,
            100.0 * (routed - base) / routed
        );
    }
}

/// (c): `path::normalise` alone, and a parse without and with routes (one route, so the
/// difference is the normalisation), for each path; refused paths answer 400.
fn normalise_rows(out: &mut Buffer) {
    let long_hostile = "/static/./a//b/%7Euser;v=1/%41%42".repeat(24) + "/x.png";
    let paths = [
        ("plain", "/p9/index.html".to_string()),
        (
            "hostile-looking",
            "/static//./img/%61dmin;jsessionid=1/%7Euser/./a//b/c.png".to_string(),
        ),
        ("long hostile-looking", long_hostile),
        ("refused: `..`", "/static/../admin/".to_string()),
        ("refused: `..;`", "/static/..;/admin/".to_string()),
        ("refused: `%2F`", "/static/..%2Fadmin/".to_string()),
    ];
    let none = table(0, 0);
    let one = table(1, 1);
    let mut buf = vec![0u8; 16 * 1024];
    println!("| path | bytes | `path::normalise` | parse, no routes | parse + normalise + route | result |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for (what, target) in &paths {
        let heads = [head("h0.example.test", target)];
        let alone = time(|count| {
            for _ in 0..count {
                black_box(path::normalise(black_box(target.as_bytes()), &mut buf).is_ok());
            }
        });
        let base = per_request(&none, &heads, out);
        let routed = per_request(&one, &heads, out);
        let result = match parse(&one, &heads[0], out, &mut buf) {
            Ok(_) => match path::normalise(target.as_bytes(), &mut buf) {
                Ok(p) => format!("routed as `{}`", shorten(p)),
                Err(e) => format!("? {}", e.why()),
            },
            Err(e) => format!("400 ({e:?})"),
        };
        println!(
            "| {what} | {} | {alone:.0} | {base:.0} | {routed:.0} | {result} |",
            target.len()
        );
    }
}

/// A normalised path for a table cell: at most 40 bytes of it.
fn shorten(path: &[u8]) -> String {
    let text = String::from_utf8_lossy(path);
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.into_owned(),
    }
}

fn main() {
    let mut out = BufferPool::new(0).take();
    println!("(a) one host, N routes, the request matching the last (ns per request)\n");
    routing_rows(
        &[(1, 1), (1, 10), (1, 100), (1, 1_000), (1, 10_000)],
        &mut out,
    );
    println!("\n(b) N/10 hosts with 10 routes each, requests round every host, each matching its host's last route (ns per request)\n");
    routing_rows(&[(1, 10), (10, 10), (100, 10), (1_000, 10)], &mut out);
    println!("\n(c) path normalisation (ns)\n");
    normalise_rows(&mut out);
    println!("\nMedian of {ROUNDS} rounds, one thread. `routing` = parse + route − parse with no routes.");
}
