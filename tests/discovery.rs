//! Service discovery against the real binary: a DNS responder in the test (UDP on loopback)
//! answers A records for `web.test` from a list the test changes while a client sends requests
//! without pause. Mock backends listen on distinct loopback addresses (127.0.0.x) on one port,
//! since an A record carries no port. Addresses added take traffic, addresses removed drain and
//! leave, a silent DNS server changes nothing, and more than 64 addresses come and go without
//! running out of backend ids — with no failed request.

mod support;

use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use support::*;

/// Long enough for a lookup round (every 1 s) plus a passing probe (every 100 ms, rise 1).
const WAIT: Duration = Duration::from_secs(5);

/// A DNS server on 127.0.0.1 that answers `A web.test` with `addrs` (TTL 0), `AAAA web.test`
/// with no record, `SRV _http._tcp.web.test` with `web.test` on each of `ports`, any other
/// name with NXDOMAIN — or nothing at all while `silent`.
struct Dns {
    addr: SocketAddr,
    addrs: Arc<Mutex<Vec<Ipv4Addr>>>,
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
        let list = Arc::new(Mutex::new(addrs.to_vec()));
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
            addrs: list,
            ports,
            silent,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, addrs: &[Ipv4Addr]) {
        *self.addrs.lock().unwrap() = addrs.to_vec();
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
fn answer(query: &[u8], addrs: &[Ipv4Addr], ports: &[u16]) -> Option<Vec<u8>> {
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
    let known = name == "web.test" || name == "_http._tcp.web.test";
    // (type, rdata) of each record, all owned by the question's name.
    let records: Vec<(u16, Vec<u8>)> = match (name.as_str(), qtype) {
        ("web.test", 1) => addrs.iter().map(|ip| (1, ip.octets().to_vec())).collect(),
        ("_http._tcp.web.test", 33) => ports
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
        let b1 = Backend::named_at("127.0.0.1:0", "b1");
        let port = b1.addr.port();
        let at = |last: u8, name: &str| Backend::named_at(&format!("127.0.0.{last}:{port}"), name);
        let (b2, b3) = (at(2, "b2"), at(3, "b3"));
        let dns = Dns::start(&[ip(1), ip(2)]);
        let config = ini(
            &[],
            &format!(
                "{extra}[health]\ninterval_ms = 100\nrise = 1\n[admin]\nlisten = 127.0.0.1:0\n\
                 [dns]\nresolver = {}\nresolve_interval_s = 1\ntimeout_ms = 300\n\
                 [backends]\nweb = web.test:{port}\n",
                dns.addr
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
            "[health]\ninterval_ms = 100\nrise = 1\n\
             [dns]\nresolver = {}\nresolve_interval_s = 1\ntimeout_ms = 300\n\
             [backends]\nweb = srv:_http._tcp.web.test\n",
            dns.addr
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
