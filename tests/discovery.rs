//! Service discovery against the real binary: a DNS responder in the test (UDP on loopback)
//! answers A records for `web.test` from a list the test changes while a client sends requests
//! without pause. Mock backends listen on distinct loopback addresses (127.0.0.x) on one port,
//! since an A record carries no port. Addresses added take traffic, addresses removed drain and
//! leave, a silent DNS server changes nothing, and more than 64 addresses come and go without
//! running out of backend ids — with no failed request.

mod support;

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use support::*;

/// The name most tests discover.
const WEB: &str = "web.test";

/// Long enough for a lookup round (every 1 s) plus a passing probe (every 100 ms, rise 1).
const WAIT: Duration = Duration::from_secs(5);

/// A DNS server on 127.0.0.1 that answers `A web.test` with `addrs` (TTL 0) and `A NAME` for
/// each other name `set_host` gave, `AAAA` of those with no record, `SRV _http._tcp.web.test`
/// with `web.test` on each of `ports`, any other name with NXDOMAIN — or nothing at all while
/// `silent`.
struct Dns {
    addr: SocketAddr,
    hosts: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    ports: Arc<Mutex<Vec<u16>>>,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dns {
    fn start(addrs: &[Ipv4Addr]) -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let hosts = HashMap::from([(WEB.to_string(), addrs.to_vec())]);
        let list = Arc::new(Mutex::new(hosts));
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let ports = Arc::new(Mutex::new(Vec::new()));
        let (l, s, st) = (Arc::clone(&list), Arc::clone(&silent), Arc::clone(&stop));
        let p = Arc::clone(&ports);
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::SeqCst) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if s.load(Ordering::SeqCst) {
                    continue;
                }
                let answers = l.lock().unwrap().clone();
                let srv = p.lock().unwrap().clone();
                if let Some(reply) = answer(&buf[..n], &answers, &srv) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        Dns {
            addr,
            hosts: list,
            ports,
            silent,
            stop,
            thread: Some(thread),
        }
    }

    /// `[dns]` asking it, a round a second.
    fn section(&self) -> String {
        format!(
            "[dns]\nresolver = {}\nresolve_interval_s = 1\ntimeout_ms = 300\n",
            self.addr
        )
    }

    /// `web.test`'s addresses from now on.
    fn set(&self, addrs: &[Ipv4Addr]) {
        self.set_host(WEB, addrs);
    }

    /// `host`'s addresses from now on.
    fn set_host(&self, host: &str, addrs: &[Ipv4Addr]) {
        let mut hosts = self.hosts.lock().unwrap();
        hosts.insert(host.to_string(), addrs.to_vec());
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reply to one query, built by hand (independent of lb-mio's own DNS code): the header
/// with the query's ID, the question echoed, and A (or SRV) records that point back at it.
fn answer(query: &[u8], hosts: &HashMap<String, Vec<Ipv4Addr>>, ports: &[u16]) -> Option<Vec<u8>> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos + 1..pos + 1 + len)?).to_lowercase());
        pos += 1 + len;
    }
    let question_end = pos + 5;
    let qtype = u16::from_be_bytes([*query.get(pos + 1)?, *query.get(pos + 2)?]);
    query.get(..question_end)?;
    let name = labels.join(".");
    let known = hosts.contains_key(&name) || name == "_http._tcp.web.test";
    // (type, rdata) of each record, all owned by the question's name.
    let records: Vec<(u16, Vec<u8>)> = match (hosts.get(&name), qtype) {
        (Some(addrs), 1) => addrs.iter().map(|ip| (1, ip.octets().to_vec())).collect(),
        (None, 33) if name == "_http._tcp.web.test" => ports
            .iter()
            .map(|port| {
                let mut rdata = vec![0, 1, 0, 1];
                rdata.extend_from_slice(&port.to_be_bytes());
                rdata.extend_from_slice(b"\x03web\x04test\x00");
                (33, rdata)
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut reply = Vec::new();
    reply.extend_from_slice(&query[..2]);
    reply.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }]);
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..question_end]);
    for (rtype, rdata) in records {
        reply.extend_from_slice(&[0xC0, 12]);
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
        reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        reply.extend_from_slice(&rdata);
    }
    Some(reply)
}

/// `GET /api/backends`: the listed backends as (name, state, discovered_by).
fn listed(admin: SocketAddr) -> Vec<(String, String, Option<String>)> {
    listing(admin)
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or_default().to_string(),
                b["state"].as_str().unwrap_or_default().to_string(),
                b["discovered_by"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// `GET /api/backends`: the `backends` array.
fn listing(admin: SocketAddr) -> Vec<Value> {
    api_backends(admin)["backends"]
        .as_array()
        .expect("backends")
        .clone()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Health checks that see a backend come up within a probe or two, 100 ms apart.
const FAST_HEALTH: &str = "[health]\ninterval_ms = 100\nrise = 1\n";

/// Backends answering with their names, all on one port (an A record carries none): the
/// first at 127.0.0.1, the next at .2, and so on.
fn on_one_port<const N: usize>(names: [&str; N]) -> (u16, [Backend; N]) {
    let mut port = 0;
    let backends = std::array::from_fn(|i| {
        let backend = Backend::named_at(&format!("127.0.0.{}:{port}", i + 1), names[i]);
        port = backend.addr.port();
        backend
    });
    (port, backends)
}

/// Three backends on one port at 127.0.0.1 to .3, a DNS server answering `web.test` with .1
/// and .2, and an lb-mio (with `extra` config) that discovers `web = web.test:port` there.
struct Web {
    b1: Backend,
    b2: Backend,
    b3: Backend,
    port: u16,
    dns: Dns,
    lb: Lb,
}

impl Web {
    fn start(extra: &str) -> Web {
        let (port, [b1, b2, b3]) = on_one_port(["b1", "b2", "b3"]);
        let dns = Dns::start(&[ip(1), ip(2)]);
        let config = ini(
            &[],
            &format!(
                "{extra}{FAST_HEALTH}[admin]\nlisten = 127.0.0.1:0\n{}\
                 [backends]\nweb = web.test:{port}\n",
                dns.section()
            ),
        );
        let lb = Lb::start(&config);
        Web {
            b1,
            b2,
            b3,
            port,
            dns,
            lb,
        }
    }
}

#[test]
fn dns_answers_change_under_load_without_a_failed_request() {
    let started = Instant::now();
    // Four backends on one port, on 127.0.0.1 to .3 and (for the end) .200.
    let Web {
        b1,
        b2,
        b3,
        port,
        dns,
        lb,
    } = Web::start("[lb]\nworkers = 2\n");
    let admin = lb.admin_addr();
    let name = |last: u8| format!("web-127.0.0.{last}-{port}");

    // (1) Looked up before the first request: both addresses take traffic at once.
    for _ in 0..20 {
        assert_eq!(get(lb.addr, "/").status, 200, "{}", lb.log_text());
    }
    assert!(b1.request_count() > 0 && b2.request_count() > 0);
    let shown = listed(admin);
    assert!(
        shown.contains(&(name(1), "up".into(), Some("web".into()))),
        "{shown:?}"
    );

    // (4) From here on a client sends requests without pause.
    let client = Load::start(lb.addr, 1);

    // (2) A third address: taken within a round plus a probe.
    dns.set(&[ip(1), ip(2), ip(3)]);
    assert!(
        b3.wait_for_requests(1, WAIT),
        "127.0.0.3 got no traffic; log:\n{}",
        lb.log_text()
    );
    lb.expect_log(&format!("added as backend {}", name(3)), WAIT);

    // (3) The first one goes: it drains, leaves the pool, and gets no new request.
    dns.set(&[ip(2), ip(3)]);
    lb.expect_log(
        &format!("backend {} removed from the pool: drained", name(1)),
        WAIT,
    );
    let b1_then = b1.request_count();
    let seen = client.ok();
    assert!(wait_until(WAIT, || client.ok() >= seen + 200));
    assert_eq!(b1.request_count(), b1_then, "a removed address got traffic");
    assert!(
        !listed(admin).iter().any(|(n, _, _)| *n == name(1)),
        "{:?}",
        listed(admin)
    );

    // (5) DNS falls silent: one warning, the set is kept and takes the traffic.
    dns.silent.store(true, Ordering::SeqCst);
    lb.expect_log("discovery: web (web.test", WAIT);
    lb.expect_log("failed: timeout; keeping its 2 addresses", WAIT);
    let (b2_then, b3_then) = (b2.request_count(), b3.request_count());
    thread::sleep(Duration::from_millis(1500)); // another failed round or two
    assert!(b2.request_count() > b2_then && b3.request_count() > b3_then);
    assert_eq!(
        lb.count_log("lookup at"),
        1,
        "one warning per failure streak"
    );
    dns.silent.store(false, Ordering::SeqCst);
    lb.expect_log("lookups work again", WAIT);

    // (6) Churn: 80 more addresses (nothing listens there: they stay down) come and go in
    // groups of 20, so over 64 distinct addresses pass through the pool.
    for group in 0..4u8 {
        let first = 10 + group * 20;
        let mut answer = vec![ip(2), ip(3)];
        answer.extend((first..first + 20).map(ip));
        dns.set(&answer);
        lb.expect_log(&format!("added as backend {}", name(first + 19)), WAIT);
    }
    dns.set(&[ip(2), ip(3)]);
    lb.expect_log(
        &format!("backend {} removed from the pool: drained", name(89)),
        WAIT,
    );
    // Address number 84 has a backend: it gets a slot and traffic.
    let b4 = Backend::named_at(&format!("127.0.0.200:{port}"), "b4");
    dns.set(&[ip(2), ip(3), ip(200)]);
    assert!(
        b4.wait_for_requests(1, WAIT),
        "127.0.0.200 got no traffic; log:\n{}",
        lb.log_text()
    );
    let log = lb.log_text();
    assert!(!log.contains("no free backend slot"), "{log}");
    assert_eq!(lb.count_log("added as backend web-"), 84, "{log}");
    assert_eq!(lb.count_log("is gone from DNS"), 81, "{log}");
    // 84 addresses went through no more than 2 + 20 + 20 + 2 slots at once: ids were reused.
    let ids: Vec<usize> = lb
        .log()
        .iter()
        .filter_map(|l| l.split("(id ").nth(1)?.split(')').next()?.parse().ok())
        .collect();
    assert_eq!(ids.len(), 84);
    assert!(ids.iter().all(|&id| id < 45), "{ids:?}");
    let shown = listed(admin);
    assert_eq!(shown.len(), 3, "{shown:?}");

    let (answered, failures) = client.finish();
    // Slot 0 was 127.0.0.1's: its pooled connections there were dropped (b1 still listens,
    // so a stale one would have reached it), and its counters started again from zero.
    assert_eq!(
        b1.request_count(),
        b1_then,
        "a reused slot's old connections were used"
    );
    let b4_listed = listing(admin)
        .into_iter()
        .find(|b| b["name"] == name(200).as_str())
        .expect("b4 listed");
    let counted = b4_listed["requests"].as_u64().unwrap_or_default();
    assert!(
        counted <= b4.request_count() as u64,
        "{counted} counted for b4, which got {}",
        b4.request_count()
    );
    assert!(
        failures.is_empty(),
        "{} failed of {answered}: {failures:?}",
        failures.len()
    );
    assert!(answered > 500, "only {answered} requests answered");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_config_of_only_discovered_entries_starts_and_waits_for_dns() {
    // Nothing answers at the resolver yet: lb-mio starts with no backend (503), keeps
    // asking, and serves once DNS answers.
    let b1 = Backend::named_at("127.0.0.1:0", "b1");
    let dns = Dns::start(&[]);
    dns.silent.store(true, Ordering::SeqCst);
    let config = ini(
        &[],
        &format!(
            "[health]\ninterval_ms = 100\nrise = 1\n[dns]\nresolver = {}\nresolve_interval_s = 1\ntimeout_ms = 200\n\
             [backends]\nweb = web.test:{}\n",
            dns.addr,
            b1.addr.port()
        ),
    );
    let lb = Lb::start(&config);
    lb.expect_log("failed: timeout; keeping its 0 addresses", WAIT);
    assert_eq!(get(lb.addr, "/").status, 503);
    dns.set(&[ip(1)]);
    dns.silent.store(false, Ordering::SeqCst);
    assert!(
        wait_until(WAIT, || get(lb.addr, "/").status == 200),
        "{}",
        lb.log_text()
    );
    assert_eq!(lb.count_log("lookup at"), 1);
}

#[test]
fn a_reused_slot_forgets_the_old_address_connections_and_counters() {
    // One worker, so the client's keep-alive connection and every pooled backend connection
    // live in the same worker. The slot of 127.0.0.1 is taken by 127.0.0.3 well within the
    // mock backends' 5 s idle timeout, so pooled connections to 127.0.0.1 are still open
    // then: a request for the new backend must not go down one of them.
    let Web {
        b1,
        b2,
        b3,
        port,
        dns,
        lb,
    } = Web::start("");
    let admin = lb.admin_addr();
    let client = Load::start(lb.addr, 1);
    assert!(wait_until(WAIT, || b1.request_count() >= 50
        && b2.request_count() >= 50));
    dns.set(&[ip(2)]);
    lb.expect_log(
        &format!("backend web-127.0.0.1-{port} removed from the pool: drained"),
        WAIT,
    );
    let b1_then = b1.request_count();
    dns.set(&[ip(2), ip(3)]);
    lb.expect_log(
        &format!("added as backend web-127.0.0.3-{port} (id 0)"),
        WAIT,
    );
    assert!(b3.wait_for_requests(50, WAIT), "{}", lb.log_text());
    let (answered, failures) = client.finish();
    assert!(
        failures.is_empty(),
        "{} failed of {answered}: {failures:?}",
        failures.len()
    );
    assert_eq!(
        b1.request_count(),
        b1_then,
        "a pooled connection to the old address was used"
    );
    let b3_listed = listing(admin)
        .into_iter()
        .find(|b| b["name"] == format!("web-127.0.0.3-{port}").as_str())
        .expect("b3 listed");
    let counted = b3_listed["requests"].as_u64().unwrap_or_default();
    assert!(
        counted <= b3.request_count() as u64,
        "{counted} counted for b3, which got {}",
        b3.request_count()
    );
}

#[test]
fn srv_records_give_each_server_its_port() {
    // SRV records carry the port: three backends on 127.0.0.1, each on its own port.
    let backends: Vec<Backend> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| Backend::named(n))
        .collect();
    let ports: Vec<u16> = backends.iter().map(|b| b.addr.port()).collect();
    let dns = Dns::start(&[ip(1)]);
    *dns.ports.lock().unwrap() = ports[..2].to_vec();
    let config = ini(
        &[],
        &format!(
            "{FAST_HEALTH}{}[backends]\nweb = srv:_http._tcp.web.test\n",
            dns.section()
        ),
    );
    let lb = Lb::start(&config);
    let client = Load::start(lb.addr, 1);
    assert!(wait_until(WAIT, || backends[0].request_count() >= 20
        && backends[1].request_count() >= 20));
    *dns.ports.lock().unwrap() = ports[1..].to_vec();
    assert!(backends[2].wait_for_requests(20, WAIT), "{}", lb.log_text());
    lb.expect_log(
        &format!(
            "backend web-127.0.0.1-{} removed from the pool: drained",
            ports[0]
        ),
        WAIT,
    );
    let (answered, failures) = client.finish();
    assert!(
        failures.is_empty(),
        "{} failed of {answered}: {failures:?}",
        failures.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Pools: a `[pool.NAME.backends]` entry's addresses belong to that pool only
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pools_dns_entries_serve_that_pool_only_and_a_backup_entry_waits_for_its_primaries() {
    // api.test is .1 and .2, spare.test (a backup entry) is .3, all in the pool `api`; the
    // default pool is one fixed backend.
    let (port, [mut a1, mut a2, s3]) = on_one_port(["a1", "a2", "s3"]);
    let site = Backend::named("site");
    let dns = Dns::start(&[]);
    dns.set_host("api.test", &[ip(1), ip(2)]);
    dns.set_host("spare.test", &[ip(3)]);
    let lb = Lb::start(&ini(
        &[("site", site.addr)],
        &format!(
            "{FAST_HEALTH}fall = 1\n{}\
             [pool.api.backends]\napi = api.test:{port}\nspare = spare.test:{port} backup\n\
             [route.api]\npath = /api/\npool = api\n",
            dns.section()
        ),
    ));

    // Looked up before the first request: round robin over the two primaries, never the
    // backup; everything else goes to the default pool, never to a discovered address.
    let api: Vec<String> = (0..20).map(|i| lb.get_body(&format!("/api/{i}"))).collect();
    let count = |name: &str| api.iter().filter(|s| *s == name).count();
    assert_eq!((count("a1"), count("a2")), (10, 10), "{api:?}");
    for i in 0..20 {
        assert_eq!(lb.get_body(&format!("/site/{i}")), "site");
    }
    assert_eq!(s3.request_count(), 0, "the backup took traffic");
    assert_eq!(site.request_count(), 20);
    assert_eq!(
        site.requests_under("/api/"),
        0,
        "the default pool got the pool's traffic"
    );
    for b in [&a1, &a2] {
        assert_eq!(
            b.requests_under("/api/"),
            b.request_count(),
            "{} got other traffic",
            b.name
        );
    }

    // Both primaries go: the backup entry's address takes the pool's traffic once the
    // health checks see it; the default pool still gets none of it.
    a1.stop();
    a2.stop();
    let moved = wait_until(WAIT, || {
        try_get(lb.addr, "/api/probe", IO_TIMEOUT).is_ok_and(|r| r.body_str() == "s3")
    });
    assert!(
        moved,
        "the backup never took traffic; log:\n{}",
        lb.log_text()
    );
    for i in 0..10 {
        assert_eq!(lb.get_body(&format!("/api/after/{i}")), "s3");
    }
    assert_eq!(s3.requests_under("/api/"), s3.request_count());
    assert_eq!(site.requests_under("/api/"), 0);
}

#[test]
fn a_reload_that_moves_a_dns_entry_to_another_pool_drains_its_old_backends() {
    let (port, [a1, a2]) = on_one_port(["a1", "a2"]);
    let (site, keep, v2) = (
        Backend::named("site"),
        Backend::named("keep"),
        Backend::named("v2"),
    );
    let dns = Dns::start(&[]);
    dns.set_host("api.test", &[ip(1), ip(2)]);
    let config = |pools: String| {
        ini(
            &[("site", site.addr)],
            &format!(
                "{FAST_HEALTH}{}{pools}\
                 [route.api]\npath = /api/\npool = api\n[route.v2]\npath = /v2/\npool = v2\n",
                dns.section()
            ),
        )
    };
    let entry = format!("api = api.test:{port}");
    let lb = Lb::start(&config(format!(
        "[pool.api.backends]\n{entry}\n[pool.v2.backends]\nv2 = {}\n",
        v2.addr
    )));
    let before: HashSet<String> = (0..10).map(|i| lb.get_body(&format!("/api/{i}"))).collect();
    assert_eq!(before, HashSet::from(["a1".into(), "a2".into()]));

    // The entry moves to the pool v2; the pool api gets a fixed backend instead.
    lb.reload_ok(&config(format!(
        "[pool.api.backends]\nkeep = {}\n[pool.v2.backends]\nv2 = {}\n{entry}\n",
        keep.addr, v2.addr
    )));
    for last in [1, 2] {
        lb.expect_log(
            &format!("backend api-127.0.0.{last}-{port} at 127.0.0.{last}:{port}: its DNS entry api is gone or changed: draining"),
            WAIT,
        );
    }
    let reached = wait_until(WAIT, || {
        try_get(lb.addr, "/api/probe", IO_TIMEOUT).is_ok_and(|r| r.body_str() == "keep")
    });
    assert!(reached, "keep never took /api/; log:\n{}", lb.log_text());
    let old = (a1.requests_under("/api/"), a2.requests_under("/api/"));
    for i in 0..20 {
        assert_eq!(lb.get_body(&format!("/api/after/{i}")), "keep");
    }
    assert_eq!(
        (a1.requests_under("/api/"), a2.requests_under("/api/")),
        old,
        "drained backends got /api/"
    );

    // Found again for the pool v2 (once the old records left): both take its traffic.
    let joined = wait_until(WAIT, || {
        let _ = try_get(lb.addr, "/v2/probe", IO_TIMEOUT);
        a1.requests_under("/v2/") > 0 && a2.requests_under("/v2/") > 0
    });
    assert!(
        joined,
        "the moved entry's addresses never served /v2/; log:\n{}",
        lb.log_text()
    );
    assert_eq!(
        (a1.requests_under("/api/"), a2.requests_under("/api/")),
        old
    );
    assert_eq!(
        site.requests_under("/api/") + site.requests_under("/v2/"),
        0
    );
}
