//! Where lb-mio listens and whom it reaches: IPv6 clients and backends on [::1], several
//! `listen` addresses in one process, and several lb-mio processes sharing one port.

mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use support::*;

#[test]
fn ipv6_clients_and_backends() {
    let a = Backend::named_at("[::1]:0", "a");
    let lb = Lb::start(&ini(
        &[("a", a.addr)],
        "[lb]\nlisten = [::1]:0\n[health]\ninterval_ms = 50\nfall = 1\n",
    ));
    assert!(lb.addr.is_ipv6());
    let resp = get(lb.addr, "/six");
    assert_eq!((resp.status, resp.body_str().as_str()), (200, "a"));
    assert_eq!(a.last_request().header("X-Forwarded-For"), Some("::1"));
    // Probes reach the IPv6 backend: with fall = 1 one failed probe would mark it down.
    assert!(a.wait_for_probes(3, Duration::from_secs(2)));
    assert_eq!(get(lb.addr, "/").status, 200);
    assert_eq!(lb.count_log("is down"), 0, "{}", lb.log_text());
}

#[test]
fn ipv4_clients_reach_ipv6_backends_and_back() {
    let v6 = Backend::named_at("[::1]:0", "v6");
    let v4 = Backend::named("v4");
    let lb = Lb::start(&ini(&[("v6", v6.addr), ("v4", v4.addr)], ""));
    let bodies: HashSet<String> = (0..4).map(|_| get(lb.addr, "/").body_str()).collect();
    assert_eq!(bodies, HashSet::from(["v6".to_string(), "v4".to_string()]));
}

#[test]
fn one_process_listens_on_several_addresses() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(
        &[("a", a.addr)],
        "[lb]\nworkers = 2\nlisten = 127.0.0.1:0, [::1]:0\n",
    ));
    let addrs = lb.listening_on();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6());
    for addr in &addrs {
        for _ in 0..10 {
            assert_eq!(get(*addr, "/").status, 200, "{addr}");
        }
    }
    let seen: HashSet<String> = a
        .requests()
        .iter()
        .filter_map(|r| r.header("X-Forwarded-For").map(str::to_string))
        .collect();
    assert_eq!(seen, HashSet::from(["127.0.0.1".into(), "::1".into()]));
}

#[test]
fn a_busy_listen_address_is_an_error_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let a = Backend::named("a");
    // Without SO_REUSEPORT on `taken`, lb-mio cannot share its port.
    let result = Lb::try_start(&ini(
        &[("a", a.addr)],
        &format!("[lb]\nlisten = [::1]:0 {busy}\n"),
    ));
    let err = result.err().expect("lb-mio must not start");
    assert!(err.contains(&format!("cannot bind {busy}")), "{err}");
}

#[test]
fn two_instances_share_one_port_and_both_serve() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("[lb]\nlisten = 127.0.0.1:{port}\n");
    let first = Lb::start(&ini(&[("a", a.addr)], &listen));
    let second = Lb::start(&ini(&[("b", b.addr)], &listen));
    assert_eq!(first.addr, second.addr);
    // The kernel spreads new connections over both processes' listeners by a hash of the
    // client's address and port: 60 new connections all landing on one is a 2^-59 event.
    let bodies: Vec<String> = (0..60).map(|_| get(first.addr, "/").body_str()).collect();
    let on_a = bodies.iter().filter(|b| *b == "a").count();
    assert!(on_a > 0 && on_a < 60, "a served {on_a} of 60");
}

#[test]
fn two_instances_with_the_same_backends_hash_every_user_to_the_same_backend() {
    let backends = [
        Backend::named("a"),
        Backend::named("b"),
        Backend::named("c"),
    ];
    let list: Vec<(&str, SocketAddr)> =
        backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let conf = "[lb]\nstrategy = hash\nhash_key = header:X-User\n";
    let first = Lb::start(&ini(&list, conf));
    let second = Lb::start(&ini(&list, conf));
    let route = |lb: &Lb, user: usize| {
        let raw = format!("GET / HTTP/1.1\r\nHost: h\r\nX-User: user-{user}\r\n\r\n");
        request(lb.addr, raw).body_str()
    };
    let mut used = HashSet::new();
    for user in 0..30 {
        let there = route(&first, user);
        assert_eq!(route(&second, user), there, "user-{user}");
        used.insert(there);
    }
    assert_eq!(
        used.len(),
        3,
        "30 users should spread over all three: {used:?}"
    );
}
