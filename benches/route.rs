//! What routing adds to a request: parsing a head and deciding its route, as a worker does
//! (`request::parse_routed` with a closure calling `RouteTable::decide`), against the same
//! parse with no routes (no path normalisation, an empty table). `cargo bench --bench route`;
//! prints markdown tables, times in ns per request (median of `ROUNDS` rounds, one thread).
//!
//! (a) one host with N routes, the request matching the last: the walk over a host's list.
//! (b) N/10 hosts with 10 routes each, requests going round every host and matching their
//!     host's last route: the host lookup, which should not grow with the hosts.
//! (c) the path normalisation: `path::normalise` alone and within a parse, on plain and
//!     hostile-looking paths.

use lb_mio::buffer::{Buffer, BufferPool};
use lb_mio::http::head::HeadError;
use lb_mio::http::path;
use lb_mio::http::request::{self, Forwarding, HeadLimits, Wanted};
use lb_mio::route::{parse_key, Decision, RouteConf, RouteTable, Via};
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

/// A route from `key = value` pairs, checked as the config loader checks it.
fn route(name: &str, keys: &[(&str, &str)]) -> RouteConf {
    let mut conf = RouteConf::new(name).expect("route name");
    for (key, value) in keys {
        parse_key(&mut conf, key, value).expect("route key");
    }
    conf.check().expect("whole route");
    conf
}

/// `hosts` hosts `hN.example.test` with `per_host` routes each, `[route.hN-rM]` matching path
/// prefix `/pM/`, all to the pool `default` (the only pool).
fn table(hosts: usize, per_host: usize) -> RouteTable {
    let mut confs = Vec::with_capacity(hosts * per_host);
    for h in 0..hosts {
        for r in 0..per_host {
            let (host, path) = (format!("h{h}.example.test"), format!("/p{r}/"));
            let keys = [
                ("host", host.as_str()),
                ("path", &path),
                ("pool", "default"),
            ];
            confs.push(route(&format!("h{h}-r{r}"), &keys));
        }
    }
    RouteTable::new(confs, |name| (name == "default").then_some(0)).expect("table")
}

/// A GET of `target` for `host`, with the headers a browser-less client sends.
fn head(host: &str, target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-mio-bench\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

/// Parses `head` and routes it through `table` as a worker does: the decision, the route's
/// count and its rewrite for the backend's head. With an empty table the path is not
/// normalised, as in a worker of a config without routes.
fn parse(table: &RouteTable, head: &[u8], out: &mut Buffer) -> Result<Decision, HeadError> {
    out.truncate(0);
    let wanted = Wanted {
        normalise: !table.is_empty(),
        ..Wanted::default()
    };
    let parsed = request::parse_routed(head, LIMITS, VIA.client, wanted, out, |seen| {
        let decision = table.decide(seen, &VIA, 0);
        let route = decision.route.map(|at| table.route(at));
        if let Some(route) = route {
            route.count();
        }
        let forwarding = Forwarding {
            rewrite: route.map(|r| r.rewrite()),
            ..Forwarding::default()
        };
        Ok((forwarding, decision))
    })?;
    Ok(parsed.expect("a whole head").1)
}

/// ns per request of parsing and routing `heads` in turn through `table`.
fn per_request(table: &RouteTable, heads: &[Vec<u8>], out: &mut Buffer) -> f64 {
    let mut next = heads.iter().cycle();
    time(|count| {
        for _ in 0..count {
            let head = next.next().expect("heads");
            black_box(parse(table, black_box(head), out).ok());
        }
    })
}

/// (a) and (b): one row per size, with and without the table.
fn routing_rows(sizes: &[(usize, usize)], out: &mut Buffer) {
    let none = RouteTable::default();
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
            let got = parse(&table, head, out).expect("routed").route;
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
    let long_hostile = "/static/./a//b/../%7Euser;v=1/%41%42".repeat(24) + "/x.png";
    let paths = [
        ("plain", "/p9/index.html".to_string()),
        (
            "hostile-looking",
            "/static//./img/../%61dmin;jsessionid=1/%7Euser/./a//b/../c.png".to_string(),
        ),
        ("long hostile-looking", long_hostile),
        ("refused: `..;`", "/static/..;/admin/".to_string()),
        ("refused: `%2F`", "/static/..%2Fadmin/".to_string()),
    ];
    let none = RouteTable::default();
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
        let result = match parse(&one, &heads[0], out) {
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
