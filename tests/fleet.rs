//! A fleet of lb-mio instances sharing backends, pools and routes in etcd, against the real
//! binary and a real etcd (3.4, `etcdctl` for every write a test makes itself) on loopback:
//! backends registering with leases and leaving under load, one killed and left to expire,
//! pools and routes made through one instance's admin API served by all (timed), etcd killed
//! and restarted, a three-member cluster losing the member lb-mio talks to, a start without
//! etcd (from the cache file, or from config.ini alone), malformed values, the admin API's
//! write-through (ETags, conflicts, read-your-writes), SIGHUP and `--check`. Every wait is
//! bounded; lease TTLs and health intervals are short so the file runs in seconds.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Longest wait for one change to reach an instance (the target is under a second).
const WAIT: Duration = Duration::from_secs(5);
/// Longest wait for an instance to catch up after etcd came back (its reconnect backoff
/// doubles up to 5 s).
const CATCH_UP: Duration = Duration::from_secs(12);
/// Fast probes that bring a new backend up at its first pass, and an admin listener.
const FAST: &str = "[health]\ninterval_ms = 50\nrise = 1\n[admin]\nlisten = 127.0.0.1:0\n";
/// Requests of the load clients go out every 2 ms per instance: three instances, etcd and
/// the test share two cores.
const PACE: Duration = Duration::from_millis(2);
const PREFIX: &str = "/lb-mio/";

/// A config for `backends` (the pool `default`) following etcd at `endpoints`; `etcd_extra`
/// goes on in the `[etcd]` section (e.g. `cache_file = ...`), then `extra` (any sections).
fn fleet_ini(
    backends: &[(&str, SocketAddr)],
    endpoints: &str,
    etcd_extra: &str,
    extra: &str,
) -> String {
    ini(
        backends,
        &format!(
            "{FAST}{extra}\n[etcd]\nendpoints = {endpoints}\nprefix = {PREFIX}\n\
             connect_timeout_ms = 300\nrequest_timeout_ms = 1000\n{etcd_extra}"
        ),
    )
}

/// `n` instances of the same config.
fn start_fleet(n: usize, config: &str) -> Vec<Lb> {
    (0..n).map(|_| Lb::start(config)).collect()
}

/// A backend's registration value.
fn backend_doc(addr: SocketAddr) -> String {
    json!({"address": addr.to_string(), "weight": 1}).to_string()
}

/// A route answering `200 BODY` itself for `/NAME/`.
fn return_route(name: &str, body: &str) -> String {
    json!({"version": 1, "name": name,
        "keys": [["path", format!("/{name}/")], ["return", format!("200 {body}")]]})
    .to_string()
}

/// A pool of one backend.
fn pool_doc(pool: &str, backend: &str, addr: SocketAddr, weight: u32) -> Value {
    json!({"version": 1, "name": pool, "settings": {},
        "backends": [{"name": backend, "address": addr.to_string(), "weight": weight}]})
}

/// `GET path`: the body of a 200, or what went wrong.
fn served(lb: &Lb, path: &str) -> String {
    match try_get(lb.addr, path, IO_TIMEOUT) {
        Ok(resp) if resp.status == 200 => resp.body_str(),
        Ok(resp) => format!("({} {})", resp.status, resp.body_str()),
        Err(e) => format!("({e})"),
    }
}

/// Waits until `GET path` on `lb` is answered `200 want`; how long it took. Panics, showing
/// the last answer and the log, if it is not within `within`.
#[track_caller]
fn wait_for_body(lb: &Lb, path: &str, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    let reached = wait_until(within, || {
        last = served(lb, path);
        last == want
    });
    assert!(
        reached,
        "GET {path} on {} never answered {want:?} within {within:?}; last: {last:?}; log:\n{}",
        lb.addr,
        lb.log_text()
    );
    started.elapsed()
}

/// The bodies of `n` GETs of `path`, each of which must be a 200.
#[track_caller]
fn bodies(lb: &Lb, path: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| lb.get_body(path)).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The names `GET /api/backends` lists.
fn listed(lb: &Lb) -> Vec<String> {
    api_backends(lb.admin_addr())["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until `GET /api/backends` no longer lists `name`.
#[track_caller]
fn wait_gone(lb: &Lb, name: &str, within: Duration) {
    let gone = wait_until(within, || !listed(lb).iter().any(|n| n == name));
    assert!(
        gone,
        "{name} still listed after {within:?}: {:?}; log:\n{}",
        listed(lb),
        lb.log_text()
    );
}

/// etcd's current revision.
#[track_caller]
fn etcd_revision(endpoints: &str) -> i64 {
    let out = etcdctl(
        endpoints,
        &["get", "/", "--prefix", "--keys-only", "-w", "json"],
    );
    let header: Value = serde_json::from_str(&out).expect("etcdctl -w json");
    header["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no revision in {out}"))
}

/// The value at `key` (empty when there is none).
#[track_caller]
fn etcd_value(endpoints: &str, key: &str) -> String {
    etcdctl(endpoints, &["get", key, "--print-value-only"])
        .trim()
        .to_string()
}

#[track_caller]
fn call(lb: &Lb, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let body = body.map(Value::to_string);
    admin_request(lb.admin_addr(), method, path, body.as_deref(), None)
}

/// An admin request with an `If-Match` header.
#[track_caller]
fn call_if_match(lb: &Lb, method: &str, path: &str, body: &Value, etag: &str) -> Resp {
    let body = body.to_string();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\
         If-Match: {etag}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    request(lb.admin_addr(), raw)
}

/// The `"revision"` of a 2xx JSON answer with `status`.
#[track_caller]
fn revision_of(resp: &Resp, status: u16) -> i64 {
    assert_eq!(resp.status, status, "{}", resp.body_str());
    let body = json_body(resp);
    body["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no \"revision\" in the answer: {body}"))
}

/// Waits until each load got `n` more answers.
#[track_caller]
fn each_answers(loads: &[Load], n: usize) {
    for load in loads {
        load.wait_for_more(n, WAIT);
    }
}

/// Asserts every instance still runs.
#[track_caller]
fn assert_all_alive(lbs: Vec<Lb>) {
    for mut lb in lbs {
        lb.assert_alive();
    }
}

/// Asserts every load finished without a failure and with at least `min` answers each.
#[track_caller]
fn assert_no_failures(loads: Vec<Load>, min: usize) {
    for (i, load) in loads.into_iter().enumerate() {
        let (answered, failures) = load.finish();
        assert!(
            failures.is_empty(),
            "instance {i}: {} failed of {answered}: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        assert!(answered >= min, "instance {i}: only {answered} answered");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Backends register with leases and leave by revoking them, under load
// ---------------------------------------------------------------------------------------------

#[test]
fn backends_registering_and_revoking_their_leases_under_load_fail_no_request() {
    let etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let key = |name: &str| format!("{PREFIX}backends/default/{name}");
    let b0 = Backend::named("b0");
    let [b1, b2, b3] = ["b1", "b2", "b3"].map(Backend::named);
    // b1 registered before the fleet starts: found at start, up at once.
    let mut r1 = LeasedKey::put(&ep, &key("b1"), &backend_doc(b1.addr), 5);
    let lbs = start_fleet(3, &fleet_ini(&[("b0", b0.addr)], &ep, "", ""));
    for lb in &lbs {
        assert_eq!(bodies(lb, "/start", 4), set(&["b0", "b1"]), "at start");
    }
    let loads: Vec<Load> = lbs.iter().map(|lb| Load::paced(lb.addr, 1, PACE)).collect();
    each_answers(&loads, 20);

    // b2 registers: every instance serves it.
    let mut r2 = LeasedKey::put(&ep, &key("b2"), &backend_doc(b2.addr), 5);
    for lb in &lbs {
        let took = wait_for_body(lb, "/who", "b2", WAIT);
        eprintln!("b2 served by {} after {took:?}", lb.addr);
    }

    // b1 revokes its lease: it drains and leaves every instance, and gets no more traffic.
    r1.revoke();
    for lb in &lbs {
        wait_gone(lb, "b1", WAIT);
    }
    let b1_then = b1.request_count();
    each_answers(&loads, 100);
    assert_eq!(b1.request_count(), b1_then, "b1 got traffic after it left");

    // One joins while another leaves.
    let _r3 = LeasedKey::put(&ep, &key("b3"), &backend_doc(b3.addr), 5);
    r2.revoke();
    for lb in &lbs {
        wait_for_body(lb, "/who", "b3", WAIT);
        wait_gone(lb, "b2", WAIT);
        assert_eq!(bodies(lb, "/end", 4), set(&["b0", "b3"]));
    }
    each_answers(&loads, 50);
    assert!(b2.request_count() > 0 && b3.request_count() > 0);
    assert_no_failures(loads, 200);
    assert_all_alive(lbs);
}

// ---------------------------------------------------------------------------------------------
// 2. A backend killed without revoking: its lease expires, no GET fails meanwhile
// ---------------------------------------------------------------------------------------------

#[test]
fn a_backend_killed_without_revoking_fails_no_get_until_its_lease_expires() {
    let etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let key = format!("{PREFIX}backends/default/victim");
    let b0 = Backend::named("b0");
    let mut victim = Backend::named("victim");
    let mut lease = LeasedKey::put(&ep, &key, &backend_doc(victim.addr), 3);
    let lbs = start_fleet(3, &fleet_ini(&[("b0", b0.addr)], &ep, "", ""));
    let loads: Vec<Load> = lbs.iter().map(|lb| Load::paced(lb.addr, 2, PACE)).collect();
    for lb in &lbs {
        wait_for_body(lb, "/who", "victim", WAIT);
    }
    each_answers(&loads, 50);

    // Its host dies: the backend and its keep-alive both stop. The key stays until the lease
    // runs out (3 s), and the instances must retry what the dead backend refuses.
    let killed = Instant::now();
    victim.stop();
    lease.abandon();
    for lb in &lbs {
        wait_gone(lb, "victim", Duration::from_secs(3) + WAIT);
    }
    eprintln!(
        "victim gone from every instance {:?} after it died",
        killed.elapsed()
    );
    assert_eq!(etcd_value(&ep, &key), "", "the lease did not expire");
    each_answers(&loads, 100);
    assert_no_failures(loads, 200);
    assert_all_alive(lbs);
}

// ---------------------------------------------------------------------------------------------
// 3. A pool and a route made through one instance's admin API: served by all, timed
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pool_and_a_route_put_through_one_instance_are_served_by_all_within_a_second() {
    let etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let b0 = Backend::named("b0");
    let lbs = start_fleet(3, &fleet_ini(&[("b0", b0.addr)], &ep, "", ""));
    const ROUNDS: usize = 4;
    let mut times: Vec<Duration> = Vec::new();
    let mut keep = Vec::new();
    for round in 0..ROUNDS {
        let (pool, route, backend) = (
            format!("p{round}"),
            format!("r{round}"),
            format!("p{round}a"),
        );
        let b = Backend::named(&backend);
        // Each round asks another instance.
        let asked = &lbs[round % lbs.len()];
        let doc = pool_doc(&pool, &backend, b.addr, 1);
        let resp = call(asked, "PUT", &format!("/api/pools/{pool}"), Some(&doc));
        revision_of(&resp, 201);
        let route_doc = json!({"version": 1, "name": route,
            "keys": [["path", format!("/{route}/")], ["pool", pool]]});
        let path = format!("/{route}/x");
        let started = Instant::now();
        let resp = call(
            asked,
            "PUT",
            &format!("/api/routes/{route}"),
            Some(&route_doc),
        );
        revision_of(&resp, 201);
        // All three polled in turn, each timed from the route's PUT.
        let mut took: Vec<Option<Duration>> = vec![None; lbs.len()];
        for _ in 0..2000 {
            if took.iter().all(Option::is_some) || started.elapsed() > WAIT {
                break;
            }
            for (i, lb) in lbs.iter().enumerate() {
                if took[i].is_none() && served(lb, &path) == backend {
                    took[i] = Some(started.elapsed());
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
        for (i, t) in took.iter().enumerate() {
            let t = t.unwrap_or_else(|| {
                panic!(
                    "round {round}: instance {i} never served {path} from {backend}; log:\n{}",
                    lbs[i].log_text()
                )
            });
            times.push(t);
        }
        keep.push(b);
    }
    times.sort();
    let median = times[times.len() / 2];
    let max = *times.last().unwrap();
    eprintln!(
        "pool+route through one instance, served by each: median {median:?}, max {max:?} \
         over {} (instance, round) pairs: {times:?}",
        times.len()
    );
    assert!(median < Duration::from_secs(1), "median {median:?}");
    // What the API wrote is in etcd, under the spec's keys.
    let stored: Value = serde_json::from_str(&etcd_value(&ep, &format!("{PREFIX}routes/r0")))
        .expect("the route in etcd is JSON");
    assert_eq!(stored["keys"], json!([["path", "/r0/"], ["pool", "p0"]]));
    assert!(!etcd_value(&ep, &format!("{PREFIX}pools/p0")).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 4. etcd killed and restarted mid-run
// ---------------------------------------------------------------------------------------------

#[test]
fn etcd_killed_and_restarted_under_load_fails_nothing_and_misses_no_change() {
    let mut etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let b0 = Backend::named("b0");
    let [e1, e2] = ["e1", "e2"].map(Backend::named);
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}backends/default/e1"),
        &backend_doc(e1.addr),
    ]);
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}routes/gone"),
        &return_route("gone", "gone"),
    ]);
    let lbs = start_fleet(3, &fleet_ini(&[("b0", b0.addr)], &ep, "", ""));
    for lb in &lbs {
        assert_eq!(lb.get_body("/gone/"), "gone");
        assert_eq!(bodies(lb, "/", 4), set(&["b0", "e1"]));
        assert_eq!(metric(lb.admin_addr(), "lbmio_etcd_connected", &[]), 1.0);
    }
    let loads: Vec<Load> = lbs.iter().map(|lb| Load::paced(lb.addr, 1, PACE)).collect();
    each_answers(&loads, 20);

    etcd.kill();
    for lb in &lbs {
        lb.expect_log("etcd: lost", WAIT);
        let down = wait_until(WAIT, || {
            metric(lb.admin_addr(), "lbmio_etcd_connected", &[]) == 0.0
        });
        assert!(down, "lbmio_etcd_connected stayed 1 with etcd dead");
    }
    // A write while etcd is away: 503, nothing applied.
    let resp = call(
        &lbs[0],
        "PUT",
        "/api/routes/during",
        Some(&serde_json::from_str(&return_route("during", "during")).unwrap()),
    );
    assert_eq!(resp.status, 503, "{}", resp.body_str());
    // The last view is kept: e1 still takes traffic through the outage.
    let e1_then = e1.request_count();
    assert!(
        e1.wait_for_requests(e1_then + 60, WAIT),
        "e1 stopped getting traffic while etcd was away"
    );
    thread::sleep(Duration::from_millis(1500));
    for lb in &lbs {
        assert_eq!(lb.count_log("etcd: lost"), 1, "one warning per outage");
    }

    etcd.restart();
    // Changes made at once, before the instances' watches come back.
    for k in 0..5 {
        let name = format!("n{k}");
        etcd.ctl(&[
            "put",
            &format!("{PREFIX}routes/{name}"),
            &return_route(&name, &name),
        ]);
    }
    etcd.ctl(&["del", &format!("{PREFIX}routes/gone")]);
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}backends/default/e2"),
        &backend_doc(e2.addr),
    ]);
    let revision = etcd_revision(&ep);
    let restarted = Instant::now();
    for lb in &lbs {
        wait_for_body(lb, "/n4/", "n4", CATCH_UP);
        for k in 0..4 {
            assert_eq!(lb.get_body(&format!("/n{k}/")), format!("n{k}"));
        }
        wait_for_body(lb, "/who", "e2", WAIT);
        let after = lb.get_body("/gone/");
        assert!(["b0", "e1", "e2"].contains(&after.as_str()), "{after}");
        lb.expect_log("etcd: back", WAIT);
        assert_eq!(lb.count_log("etcd: lost"), 1, "{}", lb.log_text());
        let admin = lb.admin_addr();
        assert_eq!(metric(admin, "lbmio_etcd_connected", &[]), 1.0);
        assert_eq!(metric(admin, "lbmio_etcd_revision", &[]), revision as f64);
    }
    eprintln!(
        "every instance caught up {:?} after etcd restarted",
        restarted.elapsed()
    );
    each_answers(&loads, 50);
    assert_no_failures(loads, 200);
}

// ---------------------------------------------------------------------------------------------
// 5. A three-member cluster: the member lb-mio talks to is killed
// ---------------------------------------------------------------------------------------------

/// The cluster member `lb` holds a connection to.
#[track_caller]
fn connected_member(lb: &Lb, cluster: &EtcdCluster) -> usize {
    let mut peers = Vec::new();
    let found = wait_until(WAIT, || {
        peers = tcp_peers(lb.pid());
        peers.iter().any(|p| cluster.member_at(p.port()).is_some())
    });
    assert!(found, "lb-mio holds no connection to etcd: {peers:?}");
    peers
        .iter()
        .find_map(|p| cluster.member_at(p.port()))
        .unwrap()
}

#[test]
fn a_cluster_member_killed_under_lb_mio_changes_are_still_followed() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints().join(", ");
    let b0 = Backend::named("b0");
    let lb = Lb::start(&fleet_ini(&[("b0", b0.addr)], &endpoints, "", ""));
    let load = Load::paced(lb.addr, 1, PACE);
    let put_route = |cluster: &EtcdCluster, via: usize, name: &str| {
        cluster.put(
            via,
            &format!("{PREFIX}routes/{name}"),
            &return_route(name, name),
        );
    };
    put_route(&cluster, 0, "c0");
    wait_for_body(&lb, "/c0/", "c0", WAIT);

    for (step, name) in ["c1", "c2"].iter().enumerate() {
        let dead = connected_member(&lb, &cluster);
        cluster.kill(dead);
        let via = (dead + 1) % 3;
        let killed = Instant::now();
        put_route(&cluster, via, name);
        let took = wait_for_body(&lb, &format!("/{name}/"), name, CATCH_UP);
        eprintln!(
            "step {step}: member {dead} killed; a change via member {via} served {:?} after the \
             kill ({took:?} after the put)",
            killed.elapsed()
        );
        // And the next change too, via the third member.
        let other = format!("{name}b");
        put_route(&cluster, (dead + 2) % 3, &other);
        wait_for_body(&lb, &format!("/{other}/"), &other, WAIT);
        cluster.restart(dead);
    }
    load.wait_for_more(50, WAIT);
    assert_no_failures(vec![load], 100);
}

// ---------------------------------------------------------------------------------------------
// 6. etcd unreachable at start
// ---------------------------------------------------------------------------------------------

#[test]
fn etcd_unreachable_at_start_lb_mio_starts_from_its_cache_file_then_catches_up() {
    let mut etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let key = |name: &str| format!("{PREFIX}backends/default/{name}");
    let file = Backend::named("file");
    let [cached, later] = ["cached", "later"].map(Backend::named);
    etcd.ctl(&["put", &key("cached"), &backend_doc(cached.addr)]);
    let dir = TempDir::new("-fleet-cache");
    let cache = dir.path().join("etcd-cache.json");
    let cache_line = format!("cache_file = {}\n", cache.display());
    let config = fleet_ini(&[("file", file.addr)], &ep, &cache_line, "");

    // A first run with etcd up leaves its view in the cache file.
    {
        let lb = Lb::start(&config);
        wait_for_body(&lb, "/who", "cached", WAIT);
        let written = wait_until(WAIT, || {
            std::fs::read_to_string(&cache).is_ok_and(|s| s.contains(&cached.addr.to_string()))
        });
        assert!(
            written,
            "no cache file naming cached at {}",
            cache.display()
        );
    }
    // While nobody watches: one backend comes, the cached one goes; then etcd dies.
    etcd.ctl(&["put", &key("later"), &backend_doc(later.addr)]);
    etcd.ctl(&["del", &key("cached")]);
    etcd.kill();

    let started = Instant::now();
    let lb = Lb::start(&config);
    let took = started.elapsed();
    eprintln!("started without etcd, from the cache, in {took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(
        !lb.log_lines_with(&cache.display().to_string()).is_empty(),
        "no log line names the cache file; log:\n{}",
        lb.log_text()
    );
    assert!(
        lb.log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("etcd")),
        "no warning about etcd; log:\n{}",
        lb.log_text()
    );
    // The backend from the cache serves at once (found at start: up).
    assert_eq!(bodies(&lb, "/", 6), set(&["cached", "file"]));

    etcd.restart();
    let restarted = Instant::now();
    wait_for_body(&lb, "/who", "later", CATCH_UP);
    wait_gone(&lb, "cached", WAIT);
    eprintln!("caught up {:?} after etcd came up", restarted.elapsed());
    assert_eq!(bodies(&lb, "/", 6), set(&["file", "later"]));
}

#[test]
fn etcd_unreachable_at_start_without_a_cache_lb_mio_starts_from_config_ini_alone() {
    let mut etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let file = Backend::named("file");
    let e1 = Backend::named("e1");
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}backends/default/e1"),
        &backend_doc(e1.addr),
    ]);
    etcd.kill();
    let started = Instant::now();
    let lb = Lb::start(&fleet_ini(&[("file", file.addr)], &ep, "", ""));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(
        lb.log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("etcd")),
        "no warning about etcd; log:\n{}",
        lb.log_text()
    );
    assert_eq!(bodies(&lb, "/", 6), set(&["file"]));
    assert_eq!(metric(lb.admin_addr(), "lbmio_etcd_connected", &[]), 0.0);
    thread::sleep(Duration::from_millis(500));
    etcd.restart();
    let restarted = Instant::now();
    wait_for_body(&lb, "/who", "e1", CATCH_UP);
    eprintln!("caught up {:?} after etcd came up", restarted.elapsed());
    assert_eq!(metric(lb.admin_addr(), "lbmio_etcd_connected", &[]), 1.0);
}

// ---------------------------------------------------------------------------------------------
// 7. Malformed values
// ---------------------------------------------------------------------------------------------

#[test]
fn a_malformed_value_is_logged_with_its_key_and_ignored_and_a_valid_one_later_applies() {
    let etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let b0 = Backend::named("b0");
    let odd = Backend::named("odd");
    let mut lb = Lb::start(&fleet_ini(&[("b0", b0.addr)], &ep, "", ""));
    let put = |key: &str, value: &str| {
        etcd.ctl(&["put", &format!("{PREFIX}{key}"), value]);
    };
    put("routes/ok", &return_route("ok", "v1"));
    wait_for_body(&lb, "/ok/", "v1", WAIT);

    // Bad JSON over a valid value: the valid one stays.
    put("routes/ok", "{\"version\": 1, \"name\": ");
    // An unknown field in a pool; a misspelt one in a backend.
    put(
        "pools/bad",
        r#"{"version": 1, "name": "bad", "settings": {}, "backends": [], "colour": "red"}"#,
    );
    let odd_doc = json!({"address": odd.addr.to_string(), "wieght": 1}).to_string();
    put("backends/default/odd", &odd_doc);
    for key in ["routes/ok", "pools/bad", "backends/default/odd"] {
        let full = format!("{PREFIX}{key}");
        lb.expect_log(&full, WAIT);
        let lines = lb.log_lines_with(&full);
        assert!(
            lines.iter().all(|l| l.contains("WARN")),
            "not a warning: {lines:?}"
        );
    }
    assert_eq!(lb.get_body("/ok/"), "v1", "the last valid route went");
    assert_eq!(call(&lb, "GET", "/api/pools/bad", None).status, 404);
    assert!(
        !listed(&lb).contains(&"odd".to_string()),
        "{:?}",
        listed(&lb)
    );
    assert_eq!(bodies(&lb, "/", 4), set(&["b0"]));
    lb.assert_alive();

    // Valid values written later apply.
    put("routes/ok", &return_route("ok", "v2"));
    put("backends/default/odd", &backend_doc(odd.addr));
    wait_for_body(&lb, "/ok/", "v2", WAIT);
    wait_for_body(&lb, "/who", "odd", WAIT);
    lb.assert_alive();
}

#[test]
fn a_pool_document_whose_backend_has_a_field_it_does_not_know_is_malformed() {
    // The spec's "unknown field" holds inside a pool document's backends too: `"wieght": 5`
    // must not make a backend of weight 1.
    let etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let b0 = Backend::named("b0");
    let typo = Backend::named("typo");
    let lb = Lb::start(&fleet_ini(&[("b0", b0.addr)], &ep, "", ""));
    let doc = json!({"version": 1, "name": "typo", "settings": {},
        "backends": [{"name": "typo", "address": typo.addr.to_string(), "wieght": 5}]});
    etcd.ctl(&["put", &format!("{PREFIX}pools/typo"), &doc.to_string()]);
    let key = format!("{PREFIX}pools/typo");
    let warned = lb.wait_for_log(&key, WAIT);
    assert!(
        warned,
        "no warning naming {key}; GET /api/pools/typo: {}; log:\n{}",
        call(&lb, "GET", "/api/pools/typo", None).body_str(),
        lb.log_text()
    );
    assert_eq!(call(&lb, "GET", "/api/pools/typo", None).status, 404);
}

// ---------------------------------------------------------------------------------------------
// Precedence: etcd over config.ini, for a pool and a route of the same name; a backend name
// taken by another source
// ---------------------------------------------------------------------------------------------

#[test]
fn etcd_replaces_the_files_pool_and_route_of_the_same_name_and_a_taken_backend_name_is_refused() {
    let etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let [b0, fapi, eapi, dup] = ["b0", "fapi", "eapi", "dup"].map(Backend::named);
    let file_part = format!(
        "[pool.api.backends]\nfapi = {}\n[route.api]\npath = /api/\npool = api\n\
         [route.zz]\npath = /zz/\nreturn = 200 file-zz\n",
        fapi.addr
    );
    let lb = Lb::start(&fleet_ini(&[("b0", b0.addr)], &ep, "", &file_part));
    assert_eq!(lb.get_body("/api/x"), "fapi");
    assert_eq!(lb.get_body("/zz/"), "file-zz");

    // The etcd pool api replaces the file's, backends and all.
    let doc = pool_doc("api", "eapi", eapi.addr, 1);
    etcd.ctl(&["put", &format!("{PREFIX}pools/api"), &doc.to_string()]);
    wait_for_body(&lb, "/api/x", "eapi", WAIT);
    wait_gone(&lb, "fapi", WAIT);
    let fapi_then = fapi.request_count();
    assert_eq!(bodies(&lb, "/api/y", 6), set(&["eapi"]));
    assert_eq!(fapi.request_count(), fapi_then);

    // An etcd route named like a file route replaces it in place: it still comes before the
    // etcd routes that sort after it, and /zz/ answers from etcd.
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}routes/zz"),
        &return_route("zz", "etcd-zz"),
    ]);
    wait_for_body(&lb, "/zz/", "etcd-zz", WAIT);
    let routes = json_body(&call(&lb, "GET", "/api/routes", None));
    let names: Vec<&str> = (routes["routes"].as_array().expect("routes").iter())
        .map(|r| r["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["api", "zz"], "{routes}");

    // A registered backend named like config.ini's b0: ignored, with a warning naming its key.
    let key = format!("{PREFIX}backends/default/b0");
    etcd.ctl(&["put", &key, &backend_doc(dup.addr)]);
    lb.expect_log(&key, WAIT);
    assert!(lb.log_lines_with(&key).iter().all(|l| l.contains("WARN")));
    assert_eq!(bodies(&lb, "/", 6), set(&["b0"]));
    assert_eq!(dup.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 8. Admin writes go to etcd: ETags, conflicts, revisions, read-your-writes
// ---------------------------------------------------------------------------------------------

#[test]
fn admin_writes_go_through_etcd_guarded_by_revision_and_read_back_at_once() {
    let etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let b0 = Backend::named("b0");
    let [api1, api2, other] = ["api1", "api2", "other"].map(Backend::named);
    let lbs = start_fleet(2, &fleet_ini(&[("b0", b0.addr)], &ep, "", ""));
    let (a, b) = (&lbs[0], &lbs[1]);
    let etag = |lb: &Lb, path: &str| -> String {
        let resp = call(lb, "GET", path, None);
        assert_eq!(resp.status, 200, "{}", resp.body_str());
        resp.header("etag")
            .unwrap_or_else(|| panic!("no ETag on GET {path}: {}", resp.head_str()))
            .to_string()
    };

    // A pool made through A: its answer carries the revision, its GET the same as an ETag.
    let v1 = pool_doc("api", "api1", api1.addr, 1);
    let r1 = revision_of(&call(a, "PUT", "/api/pools/api", Some(&v1)), 201);
    assert_eq!(etag(a, "/api/pools/api"), format!("\"{r1}\""));
    let stored: Value = serde_json::from_str(&etcd_value(&ep, &format!("{PREFIX}pools/api")))
        .expect("the pool in etcd is JSON");
    assert_eq!(stored["backends"][0]["address"], api1.addr.to_string());
    let followed = wait_until(WAIT, || {
        call(b, "GET", "/api/pools/api", None).header("etag") == Some(format!("\"{r1}\"").as_str())
    });
    assert!(followed, "B never saw the pool at {r1}");

    // B changes it (no If-Match: guarded on what B read); A's If-Match is stale now: 409.
    let v2 = pool_doc("api", "api1", api1.addr, 2);
    let r2 = revision_of(&call(b, "PUT", "/api/pools/api", Some(&v2)), 200);
    assert!(r2 > r1);
    let v3 = pool_doc("api", "api1", api1.addr, 3);
    let stale = call_if_match(a, "PUT", "/api/pools/api", &v3, &format!("\"{r1}\""));
    assert_eq!(stale.status, 409, "{}", stale.body_str());
    let stored: Value =
        serde_json::from_str(&etcd_value(&ep, &format!("{PREFIX}pools/api"))).unwrap();
    assert_eq!(
        stored["backends"][0]["weight"], 2,
        "a stale write went through"
    );
    // With the current ETag it goes, and A reads it back at once.
    let r3 = revision_of(
        &call_if_match(a, "PUT", "/api/pools/api", &v3, &format!("\"{r2}\"")),
        200,
    );
    assert!(r3 > r2);
    assert_eq!(etag(a, "/api/pools/api"), format!("\"{r3}\""));
    let read = json_body(&call(a, "GET", "/api/pools/api", None));
    assert_eq!(read["backends"][0]["weight"], 3, "{read}");

    // Read your writes: right after each PUT's answer, the instance asked serves the change.
    for k in 0..5 {
        let body = format!("ryw{k}");
        let doc: Value = serde_json::from_str(&return_route("ryw", &body)).unwrap();
        let status = if k == 0 { 201 } else { 200 };
        revision_of(&call(a, "PUT", "/api/routes/ryw", Some(&doc)), status);
        assert_eq!(
            served(a, "/ryw/"),
            body,
            "the PUT answered before it applied"
        );
    }
    // A route's ETag guards it the same way.
    let route_tag = etag(a, "/api/routes/ryw");
    let doc: Value = serde_json::from_str(&return_route("ryw", "by-b")).unwrap();
    revision_of(&call(b, "PUT", "/api/routes/ryw", Some(&doc)), 200);
    let doc: Value = serde_json::from_str(&return_route("ryw", "late")).unwrap();
    let stale = call_if_match(a, "PUT", "/api/routes/ryw", &doc, &route_tag);
    assert_eq!(stale.status, 409, "{}", stale.body_str());
    // `before` has no meaning for etcd routes.
    let placed =
        json!({"version": 1, "keys": [["path", "/p/"], ["return", "200 p"]], "before": "ryw"});
    assert_eq!(
        call(a, "PUT", "/api/routes/placed", Some(&placed)).status,
        400
    );

    // A backend POSTed where its key exists: 409, the first one kept.
    let first = json!({"name": "api2", "address": api2.addr.to_string(), "weight": 1});
    let resp = call(a, "POST", "/api/pools/api/backends", Some(&first));
    revision_of(&resp, 201);
    let key = format!("{PREFIX}backends/api/api2");
    assert!(etcd_value(&ep, &key).contains(&api2.addr.to_string()));
    let second = json!({"name": "api2", "address": other.addr.to_string(), "weight": 1});
    let conflict = call(b, "POST", "/api/pools/api/backends", Some(&second));
    assert_eq!(conflict.status, 409, "{}", conflict.body_str());
    assert!(etcd_value(&ep, &key).contains(&api2.addr.to_string()));

    // Deletes: a pool a route names, config.ini's pool and backend are refused.
    let route = json!({"version": 1, "keys": [["path", "/api/"], ["pool", "api"]]});
    revision_of(&call(a, "PUT", "/api/routes/api", Some(&route)), 201);
    let refused = call(a, "DELETE", "/api/pools/api", None);
    assert_eq!(refused.status, 409, "{}", refused.body_str());
    let refused = call(a, "DELETE", "/api/pools/default", None);
    assert_eq!(refused.status, 409, "{}", refused.body_str());
    let refused = call(a, "DELETE", "/api/backends/b0", None);
    assert_eq!(refused.status, 409, "{}", refused.body_str());
    assert!(
        json_body(&refused)["error"]
            .as_str()
            .is_some_and(|e| e.contains("config")),
        "the answer does not say where b0 comes from: {}",
        refused.body_str()
    );
    revision_of(&call(a, "DELETE", "/api/routes/ryw", None), 200);
    assert_eq!(etcd_value(&ep, &format!("{PREFIX}routes/ryw")), "");
    assert_eq!(served(a, "/ryw/"), "b0", "a deleted route still served");
}

// ---------------------------------------------------------------------------------------------
// 9. SIGHUP with [etcd], and --check without etcd
// ---------------------------------------------------------------------------------------------

#[test]
fn sighup_applies_the_file_and_keeps_the_etcd_view_and_following() {
    let etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    let [f1, f2, e1] = ["f1", "f2", "e1"].map(Backend::named);
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}backends/default/e1"),
        &backend_doc(e1.addr),
    ]);
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}routes/eroute"),
        &return_route("eroute", "eroute"),
    ]);
    let lb = Lb::start(&fleet_ini(&[("f1", f1.addr)], &ep, "", ""));
    assert_eq!(bodies(&lb, "/", 4), set(&["f1", "e1"]));
    assert_eq!(lb.get_body("/eroute/"), "eroute");

    lb.reload_ok(&fleet_ini(
        &[("f1", f1.addr), ("f2", f2.addr)],
        &ep,
        "",
        "[route.cfg]\npath = /cfg/\nreturn = 200 cfg\n",
    ));
    wait_for_body(&lb, "/cfg/", "cfg", WAIT);
    wait_for_body(&lb, "/who", "f2", WAIT);
    assert_eq!(bodies(&lb, "/", 6), set(&["f1", "f2", "e1"]));
    assert_eq!(lb.get_body("/eroute/"), "eroute", "the etcd route was lost");
    // Still following.
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}routes/after"),
        &return_route("after", "after"),
    ]);
    wait_for_body(&lb, "/after/", "after", WAIT);
    etcd.ctl(&["del", &format!("{PREFIX}backends/default/e1")]);
    wait_gone(&lb, "e1", WAIT);
}

#[test]
fn check_validates_an_etcd_config_without_contacting_etcd() {
    // Something listens where etcd would be: --check must not connect to it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let backend = dead_addr();
    let good = TempFile::new(
        ".ini",
        fleet_ini(&[("b", backend)], &endpoint, "", "").as_bytes(),
    );
    let started = Instant::now();
    let (status, out, err) = run_cli(&["--check", good.path_str()]);
    assert!(status.success(), "{status}: {out}{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "--check connected to etcd"
    );

    // The [etcd] section itself is checked: a prefix must start and end with '/'.
    let bad = ini(
        &[("b", backend)],
        &format!("[etcd]\nendpoints = {endpoint}\nprefix = lb-mio\n"),
    );
    let bad = TempFile::new(".ini", bad.as_bytes());
    let (status, out, err) = run_cli(&["--check", bad.path_str()]);
    assert!(!status.success(), "a bad prefix passed: {out}{err}");
    assert!(err.contains("prefix"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// A partition while etcd compacts away what lb-mio missed: a full re-read
// ---------------------------------------------------------------------------------------------

#[test]
fn a_watch_cut_off_while_etcd_compacted_what_it_missed_reads_the_prefix_again() {
    let etcd = Etcd::start(&[]);
    let ep = etcd.endpoint();
    // lb-mio reaches etcd through a relay the test cuts: etcd keeps running, and writes.
    let relay = Relay::start(etcd.client);
    let [b0, kept, gone, added] = ["b0", "kept", "gone", "added"].map(Backend::named);
    for b in [&kept, &gone] {
        let key = format!("{PREFIX}backends/default/{}", b.name);
        etcd.ctl(&["put", &key, &backend_doc(b.addr)]);
    }
    let lb = Lb::start(&fleet_ini(
        &[("b0", b0.addr)],
        &relay.addr.to_string(),
        "",
        "",
    ));
    assert_eq!(bodies(&lb, "/", 8), set(&["b0", "kept", "gone"]));
    let load = Load::paced(lb.addr, 1, PACE);
    load.wait_for_more(20, WAIT);

    relay.cut();
    lb.expect_log("etcd: lost", WAIT);
    etcd.ctl(&["del", &format!("{PREFIX}backends/default/gone")]);
    let key = format!("{PREFIX}backends/default/added");
    etcd.ctl(&["put", &key, &backend_doc(added.addr)]);
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}routes/late"),
        &return_route("late", "late"),
    ]);
    let revision = etcd_revision(&ep);
    etcd.ctl(&["compaction", &revision.to_string()]);
    // Reconnects keep failing for a while: still one warning for the outage.
    thread::sleep(Duration::from_millis(600));
    relay.restore();

    lb.expect_log("was compacted", CATCH_UP);
    wait_for_body(&lb, "/late/", "late", CATCH_UP);
    wait_gone(&lb, "gone", WAIT);
    let caught_up = wait_until(WAIT, || {
        bodies(&lb, "/", 12) == set(&["b0", "kept", "added"])
    });
    assert!(
        caught_up,
        "served: {:?}; log:\n{}",
        bodies(&lb, "/", 12),
        lb.log_text()
    );
    assert_eq!(
        lb.count_log("etcd: lost"),
        1,
        "one warning per outage:\n{}",
        lb.log_text()
    );
    assert_eq!(
        metric(lb.admin_addr(), "lbmio_etcd_revision", &[]),
        revision as f64,
        "the view read again is etcd's as it stands"
    );
    assert_no_failures(vec![load], 20);
}

// ---------------------------------------------------------------------------------------------
// TLS with a client certificate, and etcd's auth
// ---------------------------------------------------------------------------------------------

#[test]
fn over_tls_with_a_client_certificate_the_fleet_reads_follows_and_writes() {
    let pki = Pki::new();
    let etcd = Etcd::start_tls(EtcdTls::on_loopback(&pki, true), &[]);
    let ours = pki.leaf("lb-mio", KeyKind::Ecdsa, &["lb-mio.test"]);
    let tls = format!(
        "ca = {}\ncert = {}\nkey = {}\n",
        pki.ca.display(),
        ours.cert.display(),
        ours.key.display()
    );
    follows_reads_and_writes(&etcd, &tls);
}

#[test]
fn over_tls_with_a_password_the_fleet_reads_follows_and_writes_and_a_wrong_one_is_named() {
    let pki = Pki::new();
    let mut etcd = Etcd::start_tls(EtcdTls::on_loopback(&pki, false), &[]);
    etcd.enable_auth("fleet-secret");
    let tls = format!(
        "ca = {}\nuser = root\npassword = fleet-secret\n",
        pki.ca.display()
    );
    follows_reads_and_writes(&etcd, &tls);

    // A password etcd does not take: the instance starts from config.ini alone and says why.
    let b0 = Backend::named("b0");
    let wrong = tls.replace("fleet-secret", "wrong-secret");
    let refused = Lb::start(&fleet_ini(&[("b0", b0.addr)], &etcd.endpoint(), &wrong, ""));
    assert_eq!(bodies(&refused, "/", 4), set(&["b0"]));
    refused.expect_log("sign-in as root: etcdserver: authentication failed", WAIT);
}

/// An instance with `etcd_keys` (TLS, auth) reads a backend at start, follows a new one, and
/// writes a route through its admin API.
#[track_caller]
fn follows_reads_and_writes(etcd: &Etcd, etcd_keys: &str) {
    let [b0, r1, r2] = ["b0", "r1", "r2"].map(Backend::named);
    let put = |name: &str, addr| {
        etcd.ctl(&[
            "put",
            &format!("{PREFIX}backends/default/{name}"),
            &backend_doc(addr),
        ]);
    };
    put("r1", r1.addr);
    let lb = Lb::start(&fleet_ini(
        &[("b0", b0.addr)],
        &etcd.endpoint(),
        etcd_keys,
        "",
    ));
    let read = bodies(&lb, "/", 6);
    assert_eq!(
        read,
        set(&["b0", "r1"]),
        "read at start:\n{}",
        lb.log_text()
    );
    put("r2", r2.addr);
    let followed = wait_until(WAIT, || bodies(&lb, "/", 9) == set(&["b0", "r1", "r2"]));
    assert!(followed, "r2 not followed:\n{}", lb.log_text());
    let route = serde_json::from_str(&return_route("t", "over tls")).unwrap();
    revision_of(&call(&lb, "PUT", "/api/routes/t", Some(&route)), 201);
    assert_eq!(lb.get_body("/t/"), "over tls", "written through, read back");
    let stored = etcd.ctl(&["get", "--print-value-only", &format!("{PREFIX}routes/t")]);
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), route);
}

// ---------------------------------------------------------------------------------------------
// Members that fail in ways a connection does not show, and writes the watch would refuse
// ---------------------------------------------------------------------------------------------

#[test]
fn a_member_that_answers_it_has_no_leader_is_left_for_the_next_one() {
    let etcd = Etcd::start(&[]);
    // A member cut off from its cluster answers every call, with 503 "no leader".
    let leaderless = TcpListener::bind("127.0.0.1:0").unwrap();
    let leaderless_addr = leaderless.local_addr().unwrap();
    thread::spawn(move || {
        for stream in leaderless.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let _ = stream.read(&mut [0u8; 4096]);
            let body = r#"{"error":"etcdserver: no leader","code":14}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let [b0, r1, r2] = ["b0", "r1", "r2"].map(Backend::named);
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}backends/default/r1"),
        &backend_doc(r1.addr),
    ]);
    let endpoints = format!("{leaderless_addr}, {}", etcd.endpoint());
    let lb = Lb::start(&fleet_ini(&[("b0", b0.addr)], &endpoints, "", ""));
    assert_eq!(
        bodies(&lb, "/", 6),
        set(&["b0", "r1"]),
        "read at start:\n{}",
        lb.log_text()
    );
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}backends/default/r2"),
        &backend_doc(r2.addr),
    ]);
    let followed = wait_until(WAIT, || bodies(&lb, "/", 9) == set(&["b0", "r1", "r2"]));
    assert!(followed, "r2 not followed:\n{}", lb.log_text());
    let route = serde_json::from_str(&return_route("w", "written")).unwrap();
    revision_of(&call(&lb, "PUT", "/api/routes/w", Some(&route)), 201);
}

#[test]
fn a_write_whose_answer_never_comes_back_is_read_back_and_answered_as_made() {
    let etcd = Etcd::start(&[]);
    // The first endpoint passes everything on, but loses etcd's answers to transactions:
    // the write is made, and the instance cannot tell from its answer.
    let lossy = answer_eater(etcd.client, b"POST /v3/kv/txn ");
    let b0 = Backend::named("b0");
    let endpoints = format!("{lossy}, {}", etcd.endpoint());
    let lb = Lb::start(&fleet_ini(&[("b0", b0.addr)], &endpoints, "", ""));
    let route = serde_json::from_str(&return_route("late", "late")).unwrap();
    let resp = call(&lb, "PUT", "/api/routes/late", Some(&route));
    let revision = revision_of(&resp, 201);
    let held = etcdctl(
        &etcd.endpoint(),
        &["get", &format!("{PREFIX}routes/late"), "-w", "json"],
    );
    let held: Value = serde_json::from_str(&held).unwrap();
    assert_eq!(
        held["kvs"][0]["mod_revision"].as_i64(),
        Some(revision),
        "{held}"
    );
    assert_eq!(lb.get_body("/late/"), "late");
}

#[test]
fn a_pool_moving_from_config_ini_to_etcd_with_the_same_backend_keeps_serving() {
    let etcd = Etcd::start(&[]);
    let [b0, a1] = ["b0", "a1"].map(Backend::named);
    // Every request to the pool api; probes every 500 ms, two to come up: a backend that
    // started down again would fail requests for a second.
    let file = format!(
        "[health]\ninterval_ms = 500\nrise = 2\n[admin]\nlisten = 127.0.0.1:0\n\
         [pool.api.backends]\na1 = {}\n[route.api]\npath = /\npool = api\n\
         [etcd]\nendpoints = {}\nprefix = {PREFIX}\n",
        a1.addr,
        etcd.endpoint()
    );
    let lb = Lb::start(&ini(&[("b0", b0.addr)], &file));
    assert_eq!(lb.get_body("/x"), "a1");
    let load = Load::paced(lb.addr, 1, PACE);
    load.wait_for_more(20, WAIT);
    // The same pool and backend, now etcd's; then etcd's deleted, and config.ini's back.
    let doc = pool_doc("api", "a1", a1.addr, 1);
    revision_of(&call(&lb, "PUT", "/api/pools/api", Some(&doc)), 201);
    let source = |lb: &Lb| {
        let backends = api_backends(lb.admin_addr());
        let listed = backends["backends"].as_array().unwrap().clone();
        let a1 = listed
            .into_iter()
            .filter(|b| b["name"] == "a1" && b["state"] == "up");
        a1.map(|b| b["source"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(source(&lb), ["etcd"]);
    load.wait_for_more(20, WAIT);
    revision_of(&call(&lb, "DELETE", "/api/pools/api", None), 202);
    assert_eq!(source(&lb), ["config"]);
    load.wait_for_more(20, WAIT);
    assert_no_failures(vec![load], 60);
}

#[test]
fn a_weight_written_into_a_document_this_instance_cannot_read_is_refused() {
    let etcd = Etcd::start(&[]);
    let [b0, a1] = ["b0", "a1"].map(Backend::named);
    let lb = Lb::start(&fleet_ini(&[("b0", b0.addr)], &etcd.endpoint(), "", ""));
    let doc = pool_doc("api", "a1", a1.addr, 1);
    let key = format!("{PREFIX}pools/api");
    etcd.ctl(&["put", &key, &doc.to_string()]);
    wait_until(WAIT, || listed(&lb).iter().any(|n| n == "a1"));
    // Someone writes a document lb-mio cannot read: ignored, the last good one stays.
    let mut newer = doc.clone();
    newer["version"] = json!(2);
    etcd.ctl(&["put", &key, &newer.to_string()]);
    lb.expect_log(&format!("{key}: ignored"), WAIT);
    let resp = call(&lb, "PUT", "/api/backends/a1", Some(&json!({"weight": 7})));
    assert_eq!(resp.status, 409, "{}", resp.body_str());
    assert!(
        resp.body_str().contains("does not read"),
        "{}",
        resp.body_str()
    );
    let a1_weight = api_backends(lb.admin_addr())["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "a1")
        .map(|b| b["weight"].clone());
    assert_eq!(a1_weight, Some(json!(1)));
    assert_eq!(
        etcd_value(&etcd.endpoint(), &key),
        newer.to_string(),
        "nothing written"
    );
}

/// A relay to `to` that passes every request on but drops the answer to those that start
/// with `request` (etcd runs them; their answers never come back).
fn answer_eater(to: SocketAddr, request: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            let eating = Arc::new(AtomicBool::new(false));
            let (mut from_client, mut to_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let seen = Arc::clone(&eating);
            thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_client.read(&mut buf) {
                    if buf[..n].windows(request.len()).any(|w| w == request) {
                        seen.store(true, Ordering::SeqCst);
                    }
                    if to_server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let (mut from_server, mut to_client) = (server, client);
            thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_server.read(&mut buf) {
                    if !eating.load(Ordering::SeqCst) && to_client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}
