//! Health checks at scale: one `health` thread probes every backend from its event loop, so
//! many backends cost no threads, and a black-holed one holds up nobody else's probes.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};
use support::*;

/// The live backends of the test (with the black hole, within `MAX_BACKENDS` = 64).
const BACKENDS: usize = 60;
const INTERVAL_MS: u64 = 300;
/// Far longer than the test's waits: the black hole's probe stays under way throughout.
const TIMEOUT_MS: u64 = 10_000;

#[test]
fn sixty_backends_are_probed_from_one_thread_and_a_black_hole_delays_none_of_them() {
    let backends: Vec<Backend> = (0..BACKENDS)
        .map(|i| Backend::named(&format!("b{i}")))
        .collect();
    // Listening but never accepting: the connect completes, no answer ever comes.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut list: Vec<(String, std::net::SocketAddr)> = (backends.iter())
        .map(|b| (b.name.clone(), b.addr))
        .collect();
    list.insert(0, ("hole".into(), hole.local_addr().unwrap()));
    let named: Vec<(&str, std::net::SocketAddr)> =
        list.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let lb = Lb::start(&ini(
        &named,
        &format!("[health]\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {TIMEOUT_MS}\n"),
    ));
    let interval = Duration::from_millis(INTERVAL_MS);
    let started = Instant::now();
    // Slack for a loaded machine, where the health thread wakes late.
    let slack = Duration::from_millis(1500);

    // Every backend within two intervals of the start.
    let all_probed = |n: usize| backends.iter().all(|b| b.probe_count() >= n);
    assert!(
        wait_until(2 * interval + slack, || all_probed(1)),
        "after {:?}, unprobed: {:?}",
        started.elapsed(),
        unprobed(&backends, 1)
    );
    // And again every interval (±10%), while the black hole's first probe is still under way.
    const ROUNDS: usize = 5;
    let within = interval.mul_f64(1.1 * ROUNDS as f64) + slack;
    assert!(
        wait_until(within, || all_probed(ROUNDS)),
        "after {:?}, probed fewer than {ROUNDS} times: {:?}",
        started.elapsed(),
        unprobed(&backends, ROUNDS)
    );
    assert!(started.elapsed() < Duration::from_millis(TIMEOUT_MS));
    lb.sync_log();
    assert_eq!(lb.count_log(" is down"), 0, "{}", lb.log_text());

    // No thread per backend: the main thread, one worker (`ini` sets workers = 1), the health
    // and discovery threads, and a few more at most, however many backends there are.
    let threads = thread_count(lb.pid());
    assert!(
        threads <= 1 + 6,
        "{threads} threads for {} backends",
        BACKENDS + 1
    );
}

/// The backends probed fewer than `n` times, with their counts.
fn unprobed(backends: &[Backend], n: usize) -> Vec<(String, usize)> {
    (backends.iter())
        .filter(|b| b.probe_count() < n)
        .map(|b| (b.name.clone(), b.probe_count()))
        .collect()
}
