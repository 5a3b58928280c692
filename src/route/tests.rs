use super::*;
use crate::buffer::BufferPool;
use crate::http::request::{parse_routed, Forwarding, HeadLimits, Wanted};

const POOLS: [&str; 4] = ["default", "api", "canary", "admin"];

/// A table from route sections written as config text: `name: key = value; key = value`.
fn table(routes: &[&str]) -> RouteTable {
    let confs = routes
        .iter()
        .map(|line| {
            let (name, keys) = line.split_once(':').unwrap();
            let mut conf = RouteConf::new(name.trim()).unwrap();
            for pair in keys.split(';') {
                let (key, value) = pair.split_once('=').unwrap();
                parse_key(&mut conf, key.trim(), value.trim()).unwrap();
            }
            conf.check().unwrap();
            conf
        })
        .collect();
    RouteTable::new(confs, 1, |name| POOLS.iter().position(|p| *p == name)).unwrap()
}

const VIA: Via = Via {
    client: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
    listener: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), 80),
    https: false,
    sni: None,
};

/// What the table decides for `head`, and the route `explain` says matched.
fn ask(table: &RouteTable, head: &str, via: &Via) -> (Decision, Option<String>) {
    try_ask(table, head, via).unwrap()
}

fn try_ask(
    table: &RouteTable,
    head: &str,
    via: &Via,
) -> Result<(Decision, Option<String>), crate::http::head::HeadError> {
    through(head, via, |seen| {
        let decision = table.decide(seen, via, 7);
        let lines = table.explain(seen, via, &POOLS);
        let said = lines.iter().find_map(|l| {
            let rest = l.strip_prefix("route ")?;
            rest.strip_suffix(": match").map(str::to_string)
        });
        (decision, said)
    })
}

/// What `f` makes of `head` as the parse hands it to a route table.
fn through<T>(
    head: &str,
    via: &Via,
    f: impl FnOnce(&crate::http::request::Seen) -> T,
) -> Result<T, crate::http::head::HeadError> {
    let limits = HeadLimits {
        max_bytes: 8192,
        max_headers: 64,
    };
    let mut room = [0; 1024];
    let wanted = Wanted {
        path_room: Some(&mut room),
        ..Wanted::default()
    };
    let mut out = BufferPool::new(0).take();
    let parsed = parse_routed(
        head.as_bytes(),
        limits,
        via.client,
        wanted,
        &mut out,
        |seen| Ok((Forwarding::default(), f(seen))),
    );
    Ok(parsed?.unwrap().1)
}

fn get(host: &str, target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

fn matched(table: &RouteTable, head: &str) -> Option<String> {
    let (decision, said) = ask(table, head, &VIA);
    let name = decision.route.map(|at| table.route(at).name().to_string());
    assert_eq!(name, said, "decide and explain disagree on {head:?}");
    name
}

#[test]
fn exact_wildcard_and_any_host_routes_keep_file_order() {
    let t = table(&[
        "any-health: path_exact = /health; pool = default",
        "wild: host = *.example.com; pool = api",
        "exact: host = www.example.com; pool = admin",
        "any: pool = canary",
    ]);
    let cases = [
        ("www.example.com", "/health", "any-health"),
        ("www.example.com", "/x", "wild"),
        ("WWW.Example.COM.:8080", "/x", "wild"),
        ("a.example.com", "/x", "wild"),
        ("a.b.example.com", "/x", "any"),
        ("example.com", "/x", "any"),
        ("other.test", "/x", "any"),
    ];
    for (host, path, want) in cases {
        assert_eq!(
            matched(&t, &get(host, path)).as_deref(),
            Some(want),
            "{host}{path}"
        );
    }
}

#[test]
fn only_an_absolute_form_target_names_the_host() {
    let t = table(&[
        "admin: host = admin.example.com; return = 403",
        "rest: pool = default",
    ]);
    let head = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: admin.example.com\r\n\r\n");
    for target in [
        "/?x=http://www.example.com",
        "/a://b/c",
        "http://admin.example.com/x",
    ] {
        assert_eq!(
            matched(&t, &head(target)).as_deref(),
            Some("admin"),
            "{target}"
        );
    }
    // A host longer than any DNS name is refused, not cut to one a route names.
    let long = format!(
        "GET / HTTP/1.1\r\nHost: {}.admin.example.com\r\n\r\n",
        "a".repeat(250)
    );
    assert!(try_ask(&t, &long, &VIA).is_err());
    // Nor is a host with an empty label, while host routes exist.
    let no_hosts = table(&["rest: pool = default"]);
    for host in [
        "admin.example.com..",
        ".admin.example.com",
        "admin..example.com",
    ] {
        let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let refused = |t: &RouteTable| through(&head, &VIA, |seen| t.refuses_host(seen.host));
        assert_eq!(refused(&t), Ok(true), "{host}");
        assert_eq!(
            refused(&no_hosts),
            Ok(false),
            "{host}: no host route, no refusal"
        );
    }
}

#[test]
fn conditions_and_together_and_lists_or_within_a_key() {
    let t = table(&[
        "api: host = api.test; path = /v1/ /v2/; method = GET POST; header X-Canary = 1; pool = canary",
        "q: has_query = debug; query env = prod; pool = admin",
        "fallback: path = /; pool = api",
    ]);
    let with = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: api.test\r\n{extra}\r\n")
    };
    for (target, header, want) in [
        ("/v2/x", "X-Canary: 1\r\n", "api"),
        ("/v3/x", "X-Canary: 1\r\n", "fallback"),
        ("/v1/x", "X-Canary: 2\r\n", "fallback"),
        ("/x?debug&env=prod", "", "q"),
        ("/x?debug&env=dev", "", "fallback"),
    ] {
        let got = matched(&t, &with(target, header));
        assert_eq!(got.as_deref(), Some(want), "{target} {header:?}");
    }
}

#[test]
fn the_path_that_matches_is_the_normalised_one() {
    let t = table(&[
        "admin: path = /admin/; path_case = insensitive; return = 403",
        "rest: pool = default",
    ]);
    for target in [
        "/admin/x",
        "/./admin/x",
        "//admin/x",
        "/%61dmin/x",
        "/ADMIN/x",
        "/admin;x/y",
    ] {
        assert_eq!(
            matched(&t, &get("h", target)).as_deref(),
            Some("admin"),
            "{target}"
        );
    }
    assert_eq!(
        matched(&t, &get("h", "/administrator")).as_deref(),
        Some("rest")
    );
    // A `..` is read differently by different backends: refused, not resolved.
    assert!(try_ask(&t, &get("h", "/public/../admin/x"), &VIA).is_err());
}

#[test]
fn no_match_goes_to_default_or_is_not_found() {
    let t = table(&["api: path = /api/; pool = api"]);
    let (decision, _) = ask(&t, &get("h", "/x"), &VIA);
    assert_eq!(
        decision,
        Decision {
            route: None,
            to: To::Pool(0)
        }
    );

    let confs = vec![];
    let without_default = RouteTable::new(confs, 1, |name| (name == "api").then_some(1)).unwrap();
    let (decision, _) = ask(&without_default, &get("h", "/x"), &VIA);
    assert_eq!(decision.to, To::NotFound);
}

#[test]
fn a_split_follows_its_weights_and_split_by_keeps_a_client_on_one_side() {
    let t = table(&["canary: pool = default 95, canary 5"]);
    let (d, _) = ask(&t, &get("h", "/"), &VIA);
    assert_eq!(d.to, To::Pool(0), "draw 7 of 100 falls in the first 95");
    let picks: Vec<usize> = (0..100)
        .map(|draw| pick_weighted(&[(0, 95), (2, 5)], draw))
        .collect();
    assert_eq!(picks.iter().filter(|&&p| p == 2).count(), 5);

    let sticky = table(&["canary: pool = default 50, canary 50; split_by = header:X-User"]);
    let user = |name: &str| {
        let head = format!("GET / HTTP/1.1\r\nHost: h\r\nX-User: {name}\r\n\r\n");
        ask(&sticky, &head, &VIA).0.to
    };
    let sides: Vec<To> = (0..40).map(|n| user(&format!("u{n}"))).collect();
    assert!(
        sides.contains(&To::Pool(0)) && sides.contains(&To::Pool(2)),
        "{sides:?}"
    );
    for (n, side) in sides.iter().enumerate() {
        assert_eq!(user(&format!("u{n}")), *side, "u{n} moved");
    }
}

#[test]
fn client_listener_scheme_and_sni_come_from_the_connection() {
    let t = table(&[
        "inside: client = 10.0.0.0/8; pool = admin",
        "tls: scheme = https; sni = *.example.com; pool = api",
        "port: listener = 127.0.0.1:8080; pool = canary",
    ]);
    let head = get("h", "/");
    let from = |via: Via| {
        ask(&t, &head, &via)
            .0
            .route
            .map(|at| t.route(at).name().to_string())
    };
    let inside = Via {
        client: "10.1.2.3".parse().unwrap(),
        ..VIA
    };
    assert_eq!(from(inside).as_deref(), Some("inside"));
    let tls = Via {
        https: true,
        sni: Some("shop.example.com"),
        ..VIA
    };
    assert_eq!(from(tls).as_deref(), Some("tls"));
    let other = Via {
        https: true,
        sni: Some("example.com"),
        ..VIA
    };
    assert_eq!(from(other), None);
    let port = Via {
        listener: "127.0.0.1:8080".parse().unwrap(),
        ..VIA
    };
    assert_eq!(from(port).as_deref(), Some("port"));
}

#[test]
fn explain_says_which_key_failed_first() {
    let t = table(&[
        "a: host = api.test; pool = api",
        "b: path = /admin/; pool = admin",
        "c: header X-Canary = 1; pool = canary",
        "d: path_exact = /x; redirect = 308 https://{host}{path}{query}",
    ]);
    let head = "GET /x?q=1 HTTP/1.1\r\nHost: www.test:8080\r\n\r\n";
    let lines = through(head, &VIA, |seen| t.explain(seen, &VIA, &POOLS)).unwrap();
    assert_eq!(
        lines,
        [
            "route a: no (host: www.test is not api.test)",
            "route b: no (path: /x does not start with /admin/)",
            "route c: no (header X-Canary: absent)",
            "route d: match",
            "action: redirect 308 https://www.test:8080/x?q=1",
        ]
    );
}

#[test]
fn a_route_section_is_checked_key_by_key() {
    let mut r = RouteConf::new("r").unwrap();
    for (key, value, why) in [
        ("path", "api", "not a normal path"),
        ("path", "/a//b", "not a normal path"),
        ("path", "/a/../b", "not a normal path"),
        ("method", "get", "not a method"),
        ("redirect", "200 /x", "not a redirect status"),
        ("redirect", "301 https://{hots}/", "unknown {hots}"),
        ("redirect", "301 {path}/", "starts with http://"),
        ("redirect", "302 /{path}", "starts with http://"),
        ("host", "example.com:8080", "without a port"),
        ("host", "[::1]", ""),
        ("return", "204 done", "has no body"),
        ("return", "700", "not a status"),
        ("pool", "a 0, b 5", "not a weight"),
        ("split_by", "header:X", ""),
        ("header", "1", "needs a name"),
        ("set_header Content-Length", "0", "frames the message"),
        (
            "remove_response_header",
            "Transfer-Encoding",
            "frames the message",
        ),
        ("set_header X(1)", "v", "not a name"),
        ("add_header X-A", "a\rb", "visible ASCII"),
        (
            "remove_header",
            "X-Forwarded-For",
            "writes X-Forwarded-For itself",
        ),
        ("colour", "red", "unknown route key"),
        ("redirect", "302 /login?next={path}", ""),
    ] {
        let err = parse_key(&mut r, key, value);
        if why.is_empty() {
            assert!(err.is_ok(), "{key} = {value}");
        } else {
            assert!(err.unwrap_err().contains(why), "{key} = {value}");
        }
    }
    assert!(RouteConf::new("a b").is_err());
    let mut two = RouteConf::new("two").unwrap();
    parse_key(&mut two, "pool", "api").unwrap();
    assert!(parse_key(&mut two, "return", "404")
        .unwrap_err()
        .contains("one action"));
    let mut none = RouteConf::new("none").unwrap();
    assert!(none.check().unwrap_err().contains("needs an action"));
    parse_key(&mut none, "return", "404").unwrap();
    parse_key(&mut none, "strip_prefix", "/x").unwrap();
    assert!(none.check().unwrap_err().contains("need a pool action"));
}

#[test]
fn counts_follow_a_route_by_its_name_into_the_next_table() {
    let old = table(&["a: path = /a/; pool = api", "b: pool = default"]);
    old.count(0, 0);
    old.count(0, 0);
    old.count(1, 0);
    let mut new = table(&[
        "new: path = /n/; pool = canary",
        "b: pool = default",
        "a: path = /a/; pool = api",
    ]);
    new.carry_counts(&old);
    assert_eq!((new.hits(0), new.hits(1), new.hits(2)), (0, 1, 2));
}
