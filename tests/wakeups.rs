//! Quiet when idle: with no traffic, lb-mio wakes only for its work (a probe due, a probe's
//! answer), not on timers of its own; and the threads that sleep still follow every change at
//! once, since the change wakes them.

mod support;

use serde_json::Value;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// How long the idle process is watched.
const IDLE: Duration = Duration::from_secs(4);
/// The most wake-ups per second, over all its threads, of an idle lb-mio with three backends
/// and the default health interval (2 s).
const MAX_PER_SECOND: f64 = 5.0;
/// Default `[health]`: `interval_ms = 2000`, `rise = 2`.
const INTERVAL: Duration = Duration::from_secs(2);
const RISE: u32 = 2;
/// For a loaded machine.
const SLACK: Duration = Duration::from_millis(1500);

const ADMIN: &str = "[admin]\nlisten = 127.0.0.1:0\n";

/// The config for `backends`, with the default health settings and the admin listener.
fn config(backends: &[&Backend]) -> String {
    let list: Vec<(&str, SocketAddr)> = (backends.iter())
        .map(|b| (b.name.as_str(), b.addr))
        .collect();
    ini(&list, ADMIN)
}

/// Three backends, the default health settings, the admin listener, no traffic.
fn idle_lb(backends: &[Backend; 3]) -> Lb {
    let lb = Lb::start(&config(&backends.each_ref()));
    // Past the start: every backend had its first probe.
    let probed = wait_until(INTERVAL + SLACK, || {
        backends.iter().all(|b| b.probe_count() >= 1)
    });
    assert!(probed, "not every backend was probed");
    lb
}

fn total(threads: &[(String, u64)]) -> u64 {
    threads.iter().map(|(_, n)| n).sum()
}

#[test]
fn an_idle_balancer_with_three_backends_wakes_at_most_five_times_a_second() {
    let backends = ["a", "b", "c"].map(Backend::named);
    let mut lb = idle_lb(&backends);
    let before = context_switches(lb.pid());
    let started = Instant::now();
    thread::sleep(IDLE);
    let after = context_switches(lb.pid());
    let per_second = (total(&after) - total(&before)) as f64 / started.elapsed().as_secs_f64();
    assert!(
        per_second <= MAX_PER_SECOND,
        "{per_second:.1} wake-ups per second; per thread before: {before:?}, after: {after:?}"
    );
    // It slept, but not through its work: the probes went on.
    let probes: usize = backends.iter().map(Backend::probe_count).sum();
    assert!(probes >= 3 * 2, "only {probes} probes");
    lb.assert_alive();
}

/// The backend called `name` in the admin API's list, if listed.
fn listed(admin: SocketAddr, name: &str) -> Option<Value> {
    let list = api_backends(admin);
    (list["backends"].as_array().expect("a list").iter())
        .find(|b| b["name"] == name)
        .cloned()
}

/// `backend`, just added, is probed at once and is up after `RISE` probes an interval apart.
#[track_caller]
fn assert_probed_at_once_then_up(admin: SocketAddr, backend: &Backend) {
    let name = backend.name.as_str();
    let probed = wait_until(SLACK, || backend.probe_count() >= 1);
    assert!(probed, "{name} was not probed at once");
    let up_within = INTERVAL.mul_f64(1.1) * (RISE - 1) + SLACK;
    let up = wait_until(up_within, || {
        listed(admin, name).is_some_and(|b| b["state"] == "up")
    });
    assert!(
        up,
        "{name} is not up after {up_within:?}: {:?}",
        listed(admin, name)
    );
}

#[test]
fn changes_reach_the_sleeping_health_thread_at_once() {
    let backends = ["a", "b", "c"].map(Backend::named);
    let mut lb = idle_lb(&backends);
    let admin = lb.admin_addr();

    // Added through the admin API: probed at once, up after `rise` probes an interval apart.
    let d = Backend::named("d");
    let body = format!(r#"{{"address":"{}","name":"d"}}"#, d.addr);
    let resp = admin_request(admin, "POST", "/api/backends", Some(&body), None);
    assert_eq!(resp.status, 201, "{}", resp.body_str());
    assert_probed_at_once_then_up(admin, &d);

    // Added by a reload: the same.
    let e = Backend::named("e");
    let [a, b, c] = &backends;
    lb.reload_ok(&config(&[a, b, c, &e]));
    assert_probed_at_once_then_up(admin, &e);

    // Deleted with nothing in flight: it leaves at once, not at its next probe.
    let resp = admin_request(admin, "DELETE", "/api/backends/a", None, None);
    assert_eq!(resp.status, 202, "{}", resp.body_str());
    let gone = wait_until(INTERVAL / 4, || listed(admin, "a").is_none());
    assert!(gone, "a is still listed: {:?}", listed(admin, "a"));
    lb.assert_alive();
}
