//! `/metrics`: the Prometheus text exposition of every worker's counters summed (`metrics`),
//! for the backends, pools and routes of the running snapshot, and of the TLS listeners.

use crate::backend::{Backend, State};
use crate::fleet::Fleet;
use crate::metrics::{BackendTotals, Latency, Totals, BUCKETS};
use crate::shared::{Pool, Snapshot};
use crate::tls::Certificate;
use std::fmt::Write;
use std::sync::Arc;

/// The Prometheus text exposition of `totals` for the backends, pools and routes of `snap`,
/// and of the TLS listeners' handshakes and `certificates` when there are TLS listeners.
pub fn render(
    totals: &Totals,
    snap: &Snapshot,
    certificates: Option<&[Arc<Certificate>]>,
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let named = || {
        (snap.backends.iter())
            .zip(&totals.backends)
            .filter(|(b, _)| b.is_listed())
    };
    // Every per-backend series names the backend and its pool.
    let of = |b: &Backend| format!("backend=\"{}\",pool=\"{}\"", b.name, b.pool);
    header(
        &mut out,
        "lbmio_responses_total",
        "counter",
        "Responses relayed from backends, by status class.",
    );
    for (b, t) in named() {
        for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().zip(t.responses) {
            line(
                &mut out,
                "lbmio_responses_total",
                &format!("{},class=\"{class}\"", of(b)),
                n,
            );
        }
    }
    header(
        &mut out,
        "lbmio_backend_failures_total",
        "counter",
        "Requests that failed on a backend (refused, reset, timed out).",
    );
    for (b, t) in named() {
        line(&mut out, "lbmio_backend_failures_total", &of(b), t.errors);
    }
    header(
        &mut out,
        "lbmio_backend_up",
        "gauge",
        "1 when the backend takes traffic.",
    );
    for (b, _) in named() {
        line(&mut out, "lbmio_backend_up", &of(b), u64::from(b.is_up()));
    }
    header(
        &mut out,
        "lbmio_health_transitions_total",
        "counter",
        "Backend state changes.",
    );
    for (b, _) in named() {
        line(
            &mut out,
            "lbmio_health_transitions_total",
            &of(b),
            b.transitions(),
        );
    }
    header(
        &mut out,
        "lbmio_request_duration_seconds",
        "histogram",
        "Time from request head to response end.",
    );
    histogram(
        &mut out,
        "lbmio_request_duration_seconds",
        "",
        &totals.latency,
    );
    header(
        &mut out,
        "lbmio_backend_request_duration_seconds",
        "histogram",
        "The same, by backend.",
    );
    for (b, t) in named() {
        histogram(
            &mut out,
            "lbmio_backend_request_duration_seconds",
            &format!("{},", of(b)),
            &t.latency,
        );
    }
    render_routing(&mut out, totals, snap);
    header(
        &mut out,
        "lbmio_rejected_total",
        "counter",
        "Requests lb-mio answered itself, by reason.",
    );
    for (reply, n) in &totals.replies {
        let labels = format!("reason=\"{}\",status=\"{}\"", reply.name(), reply.status());
        line(&mut out, "lbmio_rejected_total", &labels, *n);
    }
    header(
        &mut out,
        "lbmio_closed_total",
        "counter",
        "Client connections lb-mio closed without an answer, by reason.",
    );
    for (reason, n) in &totals.closed {
        line(
            &mut out,
            "lbmio_closed_total",
            &format!("reason=\"{reason}\""),
            *n,
        );
    }
    header(
        &mut out,
        "lbmio_retries_total",
        "counter",
        "Requests sent again to another backend.",
    );
    line(&mut out, "lbmio_retries_total", "", totals.retries);
    header(
        &mut out,
        "lbmio_upstream_connections_total",
        "counter",
        "Backend connections opened, and idle ones reused.",
    );
    line(
        &mut out,
        "lbmio_upstream_connections_total",
        "kind=\"opened\"",
        totals.upstream_opened,
    );
    line(
        &mut out,
        "lbmio_upstream_connections_total",
        "kind=\"reused\"",
        totals.upstream_reused,
    );
    header(
        &mut out,
        "lbmio_client_bytes_total",
        "counter",
        "Bytes read from and written to clients.",
    );
    line(
        &mut out,
        "lbmio_client_bytes_total",
        "direction=\"in\"",
        totals.bytes_in,
    );
    line(
        &mut out,
        "lbmio_client_bytes_total",
        "direction=\"out\"",
        totals.bytes_out,
    );
    header(
        &mut out,
        "lbmio_client_bytes_spliced_total",
        "counter",
        "Of the client bytes, those moved socket to socket through a pipe (splice), never copied.",
    );
    line(
        &mut out,
        "lbmio_client_bytes_spliced_total",
        "direction=\"in\"",
        totals.spliced_in,
    );
    line(
        &mut out,
        "lbmio_client_bytes_spliced_total",
        "direction=\"out\"",
        totals.spliced_out,
    );
    header(
        &mut out,
        "lbmio_client_connections",
        "gauge",
        "Open client connections.",
    );
    line(&mut out, "lbmio_client_connections", "", totals.connections);
    if let Some(certificates) = certificates {
        render_tls(&mut out, totals, certificates);
    }
    out
}

/// Requests by route and by pool, and each pool's backends by state.
fn render_routing(out: &mut String, totals: &Totals, snap: &Snapshot) {
    let name = "lbmio_route_requests_total";
    header(
        out,
        name,
        "counter",
        "Requests each route matched (redirects and direct answers too).",
    );
    for (at, route) in snap.routes.routes().iter().enumerate() {
        let hits = snap.routes.hits(at);
        line(out, name, &format!("route=\"{}\"", route.name()), hits);
    }
    let name = "lbmio_pool_requests_total";
    header(
        out,
        name,
        "counter",
        "Responses relayed from each pool's backends (backends removed no longer count).",
    );
    for pool in &snap.pools {
        let relayed = pool_backends(snap, totals, pool)
            .map(|(_, t)| t.responses.iter().sum::<u64>())
            .sum();
        line(out, name, &format!("pool=\"{}\"", pool.conf.name), relayed);
    }
    let name = "lbmio_pool_backends";
    header(out, name, "gauge", "Each pool's backends, by state.");
    for pool in &snap.pools {
        for state in [State::Up, State::Down, State::Draining] {
            let count = pool_backends(snap, totals, pool)
                .filter(|(b, _)| b.state() == state)
                .count();
            let labels = format!("pool=\"{}\",state=\"{}\"", pool.conf.name, state.name());
            line(out, name, &labels, count as u64);
        }
    }
}

/// The listed backends of `pool`, with their counters.
fn pool_backends<'a>(
    snap: &'a Snapshot,
    totals: &'a Totals,
    pool: &'a Pool,
) -> impl Iterator<Item = (&'a Arc<Backend>, &'a BackendTotals)> {
    (snap.backends.iter().zip(&totals.backends))
        .filter(|(b, _)| b.is_listed() && b.pool == pool.conf.name)
}

fn render_tls(out: &mut String, totals: &Totals, certificates: &[Arc<Certificate>]) {
    let name = "lbmio_tls_handshakes_total";
    header(
        out,
        name,
        "counter",
        "TLS handshakes, by result and version.",
    );
    let labels = [
        "result=\"ok\",version=\"TLSv1.2\"",
        "result=\"ok\",version=\"TLSv1.3\"",
        "result=\"failed\",version=\"none\"",
    ];
    for (labels, n) in labels.iter().zip(totals.tls_handshakes) {
        line(out, name, labels, n);
    }
    let name = "lbmio_tls_resumed_total";
    header(
        out,
        name,
        "counter",
        "TLS handshakes that resumed a session.",
    );
    line(out, name, "", totals.tls_resumed);
    let name = "lbmio_tls_certificate_expiry_seconds";
    header(
        out,
        name,
        "gauge",
        "When each certificate expires (notAfter), as a Unix timestamp.",
    );
    for cert in certificates {
        let labels = format!("certificate=\"{}\"", cert.conf.name);
        line(out, name, &labels, cert.not_after.max(0) as u64);
    }
}

/// Whether this instance follows etcd now, and the revision of etcd's view it runs on.
pub fn render_fleet(out: &mut String, fleet: &Fleet) {
    let name = "lbmio_etcd_connected";
    header(
        out,
        name,
        "gauge",
        "1 while the watch on etcd is followed, 0 in an outage.",
    );
    line(out, name, "", fleet.connected().into());
    let name = "lbmio_etcd_revision";
    header(
        out,
        name,
        "gauge",
        "The etcd revision of the view the running config is built from.",
    );
    line(out, name, "", fleet.applied().max(0) as u64);
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn line(out: &mut String, name: &str, labels: &str, value: u64) {
    let _ = match labels {
        "" => writeln!(out, "{name} {value}"),
        _ => writeln!(out, "{name}{{{labels}}} {value}"),
    };
}

/// Cumulative `_bucket` lines, `_sum` and `_count`; `labels` ends in a comma when not empty.
fn histogram(out: &mut String, name: &str, labels: &str, latency: &Latency) {
    let mut cumulative = 0;
    for (i, count) in latency.counts.iter().enumerate() {
        cumulative += count;
        let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
    }
    let bare = labels.trim_end_matches(',');
    let braces = if bare.is_empty() {
        String::new()
    } else {
        format!("{{{bare}}}")
    };
    let _ = writeln!(
        out,
        "{name}_sum{braces} {}",
        latency.sum_micros as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{braces} {}", latency.count());
}
