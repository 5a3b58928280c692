//! The admin listener against the real binary: list, add, drain, delete and reweight backends
//! (adding and draining under live traffic, with no failed request), its 4xx answers, the
//! bearer token, the loopback-only rule, and `/metrics` read back with a Prometheus parser.

mod support;

use prometheus_parse::{Sample, SampleType, Scrape, Value as Metric};
use serde_json::Value;
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;
use support::*;

/// How long a state change may take to show (probes run every 50 ms in these tests).
const WAIT: Duration = Duration::from_secs(4);

/// Fast probes, and an admin listener on a port the kernel picks.
const ADMIN: &str = "[health]\ninterval_ms = 50\n[admin]\nlisten = 127.0.0.1:0\n";

const TOKEN: &str = "s3cret-token-0123456789";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One admin request without a token.
#[track_caller]
fn call(admin: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Resp {
    admin_request(admin, method, path, body, None)
}

/// The listed backend with this name, if listed.
fn listed(list: &Value, name: &str) -> Option<Value> {
    list["backends"]
        .as_array()
        .expect("\"backends\" is an array")
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
}

/// The listed backend with this name; panics if it is not listed.
#[track_caller]
fn backend(admin: SocketAddr, name: &str) -> Value {
    let list = api_backends(admin);
    listed(&list, name).unwrap_or_else(|| panic!("{name} not listed: {list}"))
}

/// Waits until backend `name`'s `field` is `want`; panics with the last listing if it never is.
#[track_caller]
fn wait_for_field(admin: SocketAddr, name: &str, field: &str, want: Value) {
    let mut last = Value::Null;
    let held = wait_until(WAIT, || {
        last = backend(admin, name);
        last[field] == want
    });
    assert!(held, "{name}.{field} never became {want}; last: {last}");
}

/// Asserts a 4xx answer with a JSON `{"error": "..."}` body.
#[track_caller]
fn assert_error(resp: &Resp, status: u16) {
    assert_eq!(resp.status, status, "{}", resp.body_str());
    let body = json_body(resp);
    let message = body["error"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "no error message: {body}");
}

/// `/metrics`, parsed.
#[track_caller]
fn scrape(admin: SocketAddr) -> Scrape {
    let resp = call(admin, "GET", "/metrics", None);
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        resp.header("content-type")
    );
    let text = resp.body_str();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse /metrics")
}

/// The samples of family `name` whose labels include all of `labels`.
fn samples<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The one counter or gauge sample of `name` with `labels` (0 when there is none).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match samples(scrape, name, labels).as_slice() {
        [] => 0.0,
        [one] => match &one.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        },
        many => panic!("{} samples of {name} {labels:?}", many.len()),
    }
}

/// The cumulative (upper bound, count) buckets of histogram `name` with `labels`.
#[track_caller]
fn histogram(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    match samples(scrape, name, labels).as_slice() {
        [one] => match &one.value {
            Metric::Histogram(buckets) => buckets.iter().map(|b| (b.less_than, b.count)).collect(),
            other => panic!("{name} is not a histogram: {other:?}"),
        },
        other => panic!("{} samples of histogram {name} {labels:?}", other.len()),
    }
}

/// The type the exposition declared for family `name`, read from its `# TYPE` line (the parser
/// keeps types only inside samples, and not for families with no sample).
fn declared_type(text: &str, name: &str) -> Option<SampleType> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("# TYPE ")?;
        let (family, kind) = rest.split_once(' ')?;
        (family == name).then(|| SampleType::parse(kind.trim()))
    })
}

// ---------------------------------------------------------------------------------------------
// GET: the list, the page, unknown paths
// ---------------------------------------------------------------------------------------------

#[test]
fn list_shows_every_backend_with_its_counters() {
    let a = Backend::named("a");
    let b = Backend::start("b", |_| Response::status(503, "busy"));
    let lb = Lb::start(&ini(
        &[("a", a.addr), ("b", b.addr)],
        &format!("{ADMIN}[lb]\nexpose_backend = true\n"),
    ));
    let admin = lb.admin_addr();

    // Before any traffic: both configured backends, up, idle, and the totals' shape.
    let first = api_backends(admin);
    let backends = first["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2, "{first}");
    for (listed, (name, addr)) in backends.iter().zip([("a", a.addr), ("b", b.addr)]) {
        assert_eq!(listed["name"], name);
        assert_eq!(listed["address"], addr.to_string());
        assert_eq!(listed["weight"], 1);
        assert_eq!(listed["state"], "up");
        assert_eq!(listed["active"], 0);
        assert_eq!(listed["requests"], 0);
        assert_eq!(listed["errors"], 0);
        assert_eq!(listed["source"], "config");
        assert_eq!(listed["discovered_by"], Value::Null);
    }
    let totals = &first["totals"];
    let bounds = totals["latency_bounds"].as_array().expect("bounds");
    let buckets = totals["latency_buckets"].as_array().expect("buckets");
    assert_eq!(
        buckets.len(),
        bounds.len() + 1,
        "one more bucket (+Inf) than bounds"
    );
    let bounds: Vec<f64> = bounds.iter().map(|b| b.as_f64().expect("number")).collect();
    assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
    for key in ["requests", "errors", "rejected", "connections"] {
        assert_eq!(totals[key], 0, "totals.{key} in {totals}");
    }

    // The probes report in: ok, with a latency, no reason.
    let probed = wait_until(WAIT, || {
        let list = api_backends(admin);
        ["a", "b"]
            .iter()
            .all(|n| listed(&list, n).is_some_and(|b| b["last_probe"]["ok"] == true))
    });
    assert!(probed, "no passing probe listed: {}", api_backends(admin));
    let probe = backend(admin, "a")["last_probe"].clone();
    assert!(
        probe["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{probe}"
    );
    assert_eq!(probe["reason"], "");

    // Six requests, round robin: three 200s from a, three 503s (errors) from b.
    let mut served = [0, 0];
    for _ in 0..6 {
        let resp = get(lb.addr, "/");
        match resp.header("x-backend") {
            Some("a") => served[0] += 1,
            Some("b") => served[1] += 1,
            other => panic!("served by {other:?}: {}", resp.head_str()),
        }
    }
    assert_eq!(served, [3, 3]);
    // Counted when each response ends, which may be a moment after the client has it.
    let mut last = Value::Null;
    let counted = wait_until(WAIT, || {
        last = api_backends(admin);
        last["totals"]["requests"] == 6
    });
    assert!(counted, "totals.requests never reached 6: {last}");
    let a_row = listed(&last, "a").expect("a");
    let b_row = listed(&last, "b").expect("b");
    assert_eq!(
        (a_row["requests"].clone(), a_row["errors"].clone()),
        (3.into(), 0.into())
    );
    assert_eq!(
        (b_row["requests"].clone(), b_row["errors"].clone()),
        (3.into(), 3.into())
    );
    assert_eq!(last["totals"]["errors"], 3);
    let in_buckets: u64 = last["totals"]["latency_buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|n| n.as_u64().expect("count"))
        .sum();
    assert_eq!(in_buckets, 6, "every request is in one latency bucket");
}

#[test]
fn status_page_and_unknown_paths() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ADMIN));
    let admin = lb.admin_addr();

    let page = call(admin, "GET", "/", None);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.body_str();
    assert!(
        html.contains("<canvas"),
        "the page draws charts on canvases"
    );
    assert!(html.contains("/api/backends"), "the page polls the API");
    assert!(
        !html.contains("innerHTML"),
        "API text is set as text, never parsed as HTML"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resource"
    );

    assert_error(&call(admin, "GET", "/nope", None), 404);
    assert_error(&call(admin, "GET", "/api/other", None), 404);
    assert_error(&call(admin, "POST", "/metrics", Some("{}")), 405);
    assert_error(&call(admin, "PATCH", "/api/backends/a", Some("{}")), 405);
    // A query string is ignored.
    assert_eq!(call(admin, "GET", "/api/backends?x=1", None).status, 200);
}

// ---------------------------------------------------------------------------------------------
// Changing the pool
// ---------------------------------------------------------------------------------------------

#[test]
fn an_added_backend_comes_up_and_takes_traffic_under_load() {
    let a = Backend::named("a");
    let c = Backend::named("c");
    let mut lb = Lb::start(&ini(&[("a", a.addr)], ADMIN));
    let admin = lb.admin_addr();
    let load = Load::start(lb.addr, 3);
    load.wait_for_more(20, WAIT);

    let body = format!(r#"{{"address":"{}","weight":2,"name":"c"}}"#, c.addr);
    let resp = call(admin, "POST", "/api/backends", Some(&body));
    assert_eq!(resp.status, 201, "{}", resp.body_str());
    let added = json_body(&resp);
    assert_eq!(added["name"], "c");
    assert_eq!(added["address"], c.addr.to_string());
    assert_eq!(added["weight"], 2);
    assert_eq!(
        added["state"], "down",
        "a new backend waits for its health checks"
    );

    wait_for_field(admin, "c", "state", "up".into());
    assert!(
        c.wait_for_requests(10, WAIT),
        "c is up but got {} requests",
        c.request_count()
    );
    load.wait_for_more(20, WAIT);
    let (answered, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed of {answered}: {failures:?}",
        failures.len()
    );
    assert_eq!(backend(admin, "c")["weight"], 2);
    assert_eq!(backend(admin, "c")["source"], "admin");
    lb.assert_alive();
}

#[test]
fn a_drained_backend_finishes_in_flight_requests_and_gets_no_new_ones() {
    let a = Backend::named("a");
    // b is slow, so requests are in flight on it when it is drained.
    let b = Backend::start("b", |_| Response::ok("b").delay(Duration::from_millis(30)));
    let mut lb = Lb::start(&ini(&[("a", a.addr), ("b", b.addr)], ADMIN));
    let admin = lb.admin_addr();
    let load = Load::start(lb.addr, 4);
    assert!(b.wait_for_requests(10, WAIT), "b got no traffic");

    let resp = call(admin, "POST", "/api/backends/b/drain", None);
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(json_body(&resp)["state"], "draining");
    // What was in flight finishes; once nothing is, b's count must not move again.
    wait_for_field(admin, "b", "active", 0.into());
    let settled = b.request_count();
    load.wait_for_more(100, WAIT);
    let (answered, failures) = load.finish();
    assert_eq!(
        b.request_count(),
        settled,
        "b got requests after it drained"
    );
    assert!(
        failures.is_empty(),
        "{} failed of {answered}: {failures:?}",
        failures.len()
    );
    let row = backend(admin, "b");
    assert_eq!(
        row["state"], "draining",
        "probes do not undo a drain: {row}"
    );
    lb.assert_alive();
}

#[test]
fn a_deleted_backend_drains_then_leaves_the_list() {
    let a = Backend::named("a");
    let b = Backend::named("b");
    let lb = Lb::start(&ini(&[("a", a.addr), ("b", b.addr)], ADMIN));
    let admin = lb.admin_addr();

    let resp = call(admin, "DELETE", "/api/backends/b", None);
    assert_eq!(resp.status, 202, "{}", resp.body_str());
    assert_eq!(json_body(&resp)["name"], "b");
    let mut last = Value::Null;
    let gone = wait_until(WAIT, || {
        last = api_backends(admin);
        listed(&last, "b").is_none()
    });
    assert!(gone, "b is still listed: {last}");
    assert!(listed(&last, "a").is_some(), "{last}");
    let text = call(admin, "GET", "/metrics", None).body_str();
    assert!(
        !text.contains("backend=\"b\""),
        "b is still in /metrics:\n{text}"
    );
    assert_error(&call(admin, "DELETE", "/api/backends/b", None), 404);

    // Traffic only goes to a now, and the name is free again.
    for _ in 0..4 {
        assert_eq!(get(lb.addr, "/").body_str(), "a");
    }
    let body = format!(r#"{{"address":"{}","name":"b"}}"#, b.addr);
    let resp = call(admin, "POST", "/api/backends", Some(&body));
    assert_eq!(resp.status, 201, "{}", resp.body_str());
}

#[test]
fn a_new_weight_shows_in_the_list() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ADMIN));
    let admin = lb.admin_addr();

    let resp = call(admin, "PUT", "/api/backends/a", Some(r#"{"weight": 7}"#));
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(json_body(&resp)["weight"], 7);
    assert_eq!(backend(admin, "a")["weight"], 7);

    for bad in [
        r#"{"weight": 0}"#,
        r#"{"weight": 1001}"#,
        r#"{"weight": "3"}"#,
        "{}",
        "weight=3",
    ] {
        assert_error(&call(admin, "PUT", "/api/backends/a", Some(bad)), 400);
    }
    assert_eq!(
        backend(admin, "a")["weight"],
        7,
        "a bad PUT changes nothing"
    );
}

#[test]
fn bad_requests_get_a_4xx_and_a_json_error() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ADMIN));
    let admin = lb.admin_addr();
    let post = |body: &str| call(admin, "POST", "/api/backends", Some(body));

    assert_error(&post(r#"{"address": "#), 400); // bad JSON
    assert_error(&post("not json at all"), 400);
    assert_error(&post(r#"{"weight": 2}"#), 400); // missing address
    assert_error(&post(r#"{"address": 8080}"#), 400);
    for bad in [
        "127.0.0.1",
        "localhost:80",
        "127.0.0.1:99999",
        "",
        "300.1.1.1:80",
    ] {
        assert_error(&post(&format!(r#"{{"address": "{bad}"}}"#)), 400);
    }
    let addr = dead_addr();
    assert_error(
        &post(&format!(r#"{{"address": "{addr}", "weight": 0}}"#)),
        400,
    );
    assert_error(
        &post(&format!(r#"{{"address": "{addr}", "name": "<b>x</b>"}}"#)),
        400,
    );
    assert_error(
        &post(&format!(r#"{{"address": "{addr}", "name": "a"}}"#)),
        409,
    ); // duplicate

    assert_error(&call(admin, "POST", "/api/backends/zz/drain", None), 404);
    assert_error(&call(admin, "DELETE", "/api/backends/zz", None), 404);
    assert_error(
        &call(admin, "PUT", "/api/backends/zz", Some(r#"{"weight": 2}"#)),
        404,
    );

    // None of that changed the pool.
    let pool = api_backends(admin);
    assert_eq!(pool["backends"].as_array().map(Vec::len), Some(1), "{pool}");

    // A name is made up when none is given.
    let resp = post(&format!(r#"{{"address": "{addr}"}}"#));
    assert_eq!(resp.status, 201, "{}", resp.body_str());
    let name = json_body(&resp)["name"]
        .as_str()
        .expect("a name")
        .to_string();
    assert!(!name.is_empty() && name != "a", "{name:?}");
    assert!(listed(&api_backends(admin), &name).is_some());
}

// ---------------------------------------------------------------------------------------------
// Access
// ---------------------------------------------------------------------------------------------

#[test]
fn a_token_is_required_when_set() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], &format!("{ADMIN}token = {TOKEN}\n")));
    let admin = lb.admin_addr();
    let bearer = format!("Bearer {TOKEN}");

    for path in ["/", "/metrics", "/api/backends"] {
        assert_error(&admin_request(admin, "GET", path, None, None), 401);
        assert_error(
            &admin_request(
                admin,
                "GET",
                path,
                None,
                Some("Bearer wrong-token-0123456789"),
            ),
            401,
        );
        assert_error(&admin_request(admin, "GET", path, None, Some(TOKEN)), 401); // no "Bearer "
        let resp = admin_request(admin, "GET", path, None, Some(&bearer));
        assert_eq!(resp.status, 200, "{path}: {}", resp.body_str());
    }
    // Changes need it too.
    let drain = "/api/backends/a/drain";
    assert_error(&admin_request(admin, "POST", drain, None, None), 401);
    assert_eq!(backend_with(admin, &bearer, "a")["state"], "up");
    assert_eq!(
        admin_request(admin, "POST", drain, None, Some(&bearer)).status,
        200
    );
    assert_eq!(backend_with(admin, &bearer, "a")["state"], "draining");
}

#[track_caller]
fn backend_with(admin: SocketAddr, authorization: &str, name: &str) -> Value {
    let resp = admin_request(admin, "GET", "/api/backends", None, Some(authorization));
    assert_eq!(resp.status, 200);
    listed(&json_body(&resp), name).unwrap_or_else(|| panic!("{name} not listed"))
}

#[test]
fn an_admin_address_off_loopback_needs_a_token() {
    // A documentation address (TEST-NET-1): nothing would be reachable there even if the
    // check were missing; the check must refuse it before any bind.
    let config = format!(
        "[admin]\nlisten = 192.0.2.1:9900\n[backends]\na = {}\n",
        dead_addr()
    );
    let file = TempFile::new(".ini", config.as_bytes());
    for args in [vec![file.path_str()], vec!["--check", file.path_str()]] {
        let (status, _out, err) = run_cli(&args);
        assert!(!status.success(), "{args:?} was accepted:\n{err}");
        assert!(err.contains("[admin] listen"), "{args:?}: {err}");
        assert!(err.contains("token"), "{args:?}: {err}");
    }
    // With a token it is accepted.
    let with_token = config.replace("[admin]\n", &format!("[admin]\ntoken = {TOKEN}\n"));
    let file = TempFile::new(".ini", with_token.as_bytes());
    let (status, out, err) = run_cli(&["--check", file.path_str()]);
    assert!(status.success(), "{out}{err}");
}

// ---------------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------------

/// Regression: the latency a backend is measured by (and `ewma` balances by) began when the
/// head's first byte arrived, so a client slow to send its head made a fast backend look slow.
#[test]
fn a_slow_head_is_not_counted_as_backend_latency() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ADMIN));
    let mut client = connect(lb.addr);
    send(&mut client, "GET / HTTP/1.1\r\nHost: a\r\n");
    thread::sleep(Duration::from_millis(600));
    send(&mut client, "\r\n");
    assert_eq!(read_response(&mut client).status, 200);
    let name = "lbmio_request_duration_seconds";
    let buckets = wait_until(WAIT, || {
        histogram(&scrape(lb.admin_addr()), name, &[])
            .last()
            .map(|b| b.1)
            == Some(1.0)
    });
    assert!(buckets, "the response was never counted");
    let histogram = histogram(&scrape(lb.admin_addr()), name, &[]);
    let under_half = histogram.iter().find(|(le, _)| *le == 0.5).map(|b| b.1);
    assert_eq!(under_half, Some(1.0), "{histogram:?}");
}

/// Regression: a `101` was counted only when its tunnel ended with a clean close.
#[test]
fn a_tunnel_that_times_out_is_counted_as_its_101() {
    let a = Backend::start("a", |_| Response::upgrade_echo("websocket"));
    let lb = Lb::start(&ini(
        &[("a", a.addr)],
        &format!("{ADMIN}[timeouts]\nidle_ms = 200\n"),
    ));
    let mut client = connect(lb.addr);
    send(
        &mut client,
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(read_head_response(&mut client).status, 101);
    assert!(closes_within(&mut client, Duration::from_secs(3)));
    let onexx = [("backend", "a"), ("class", "1xx")];
    let counted = wait_until(WAIT, || {
        value(&scrape(lb.admin_addr()), "lbmio_responses_total", &onexx) == 1.0
    });
    assert!(counted, "the 101 was not counted");
}

#[test]
fn metrics_parse_and_count_every_request() {
    const SENT: usize = 25;
    let a = Backend::named("a");
    // Two workers: the counts are sums over both.
    let lb = Lb::start(&ini(
        &[("a", a.addr)],
        &format!("{ADMIN}[lb]\nworkers = 2\n"),
    ));
    let admin = lb.admin_addr();
    for _ in 0..SENT {
        assert_eq!(get(lb.addr, "/").status, 200);
    }
    let name = "lbmio_responses_total";
    let twoxx = [("backend", "a"), ("class", "2xx")];
    let counted = wait_until(WAIT, || value(&scrape(admin), name, &twoxx) >= SENT as f64);
    assert!(counted, "{name} never reached {SENT}");

    let text = call(admin, "GET", "/metrics", None).body_str();
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let families = [
        ("lbmio_responses_total", SampleType::Counter),
        ("lbmio_backend_failures_total", SampleType::Counter),
        ("lbmio_backend_up", SampleType::Gauge),
        ("lbmio_health_transitions_total", SampleType::Counter),
        ("lbmio_request_duration_seconds", SampleType::Histogram),
        (
            "lbmio_backend_request_duration_seconds",
            SampleType::Histogram,
        ),
        ("lbmio_rejected_total", SampleType::Counter),
        ("lbmio_closed_total", SampleType::Counter),
        ("lbmio_retries_total", SampleType::Counter),
        ("lbmio_upstream_connections_total", SampleType::Counter),
        ("lbmio_client_bytes_total", SampleType::Counter),
        ("lbmio_client_bytes_spliced_total", SampleType::Counter),
        ("lbmio_client_connections", SampleType::Gauge),
    ];
    for (family, kind) in families {
        assert_eq!(
            declared_type(&text, family),
            Some(kind),
            "# TYPE of {family}"
        );
        assert!(parsed.docs.contains_key(family), "no # HELP for {family}");
        let found = samples(&parsed, family, &[]);
        assert!(!found.is_empty(), "no sample of {family}:\n{text}");
        let parsed_as = |s: &&Sample| {
            matches!(
                (&s.value, kind),
                (Metric::Counter(_), SampleType::Counter)
                    | (Metric::Gauge(_), SampleType::Gauge)
                    | (Metric::Histogram(_), SampleType::Histogram)
            )
        };
        assert!(found.iter().all(parsed_as), "{family} samples: {found:?}");
    }

    assert_eq!(value(&parsed, name, &twoxx), SENT as f64, "{text}");
    for class in ["1xx", "3xx", "4xx", "5xx"] {
        assert_eq!(
            value(&parsed, name, &[("backend", "a"), ("class", class)]),
            0.0
        );
    }
    assert_eq!(value(&parsed, "lbmio_backend_up", &[("backend", "a")]), 1.0);
    assert_eq!(
        value(&parsed, "lbmio_backend_failures_total", &[("backend", "a")]),
        0.0
    );
    assert_eq!(value(&parsed, "lbmio_retries_total", &[]), 0.0);
    let rejected: f64 = samples(&parsed, "lbmio_rejected_total", &[])
        .iter()
        .map(|s| match s.value {
            Metric::Counter(v) => v,
            _ => unreachable!(),
        })
        .sum();
    assert_eq!(rejected, 0.0);
    assert!(value(&parsed, "lbmio_client_bytes_total", &[("direction", "in")]) > 0.0);
    assert!(value(&parsed, "lbmio_client_bytes_total", &[("direction", "out")]) > 0.0);

    // The request-duration histograms: cumulative buckets ending in +Inf at the count sent,
    // and `_count` (which the parser leaves untyped) agreeing.
    for (family, labels) in [
        ("lbmio_request_duration_seconds", &[][..]),
        (
            "lbmio_backend_request_duration_seconds",
            &[("backend", "a")][..],
        ),
    ] {
        let buckets = histogram(&parsed, family, labels);
        assert_eq!(buckets.len(), 15, "{family}: {buckets:?}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{buckets:?}"
        );
        assert_eq!(
            buckets.last().copied(),
            Some((f64::INFINITY, SENT as f64)),
            "{family}"
        );
        assert_eq!(
            value(&parsed, &format!("{family}_count"), labels),
            SENT as f64
        );
        assert!(
            value(&parsed, &format!("{family}_sum"), labels) > 0.0,
            "{family}_sum"
        );
    }
}

#[test]
fn the_listing_comes_in_pages() {
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ADMIN));
    let admin = lb.admin_addr();
    let dead = dead_addr();
    for i in 1..=5 {
        let body = format!(r#"{{"address": "{dead}", "name": "n{i}"}}"#);
        assert_eq!(
            call(admin, "POST", "/api/backends", Some(&body)).status,
            201
        );
    }
    let names = |path: &str| {
        let list = json_body(&call(admin, "GET", path, None));
        let names: Vec<String> = (list["backends"].as_array().expect("backends").iter())
            .map(|b| b["name"].as_str().expect("a name").to_string())
            .collect();
        (names, list["total"].clone())
    };
    // Without parameters: all of them (up to the default page of 1,000), and the count.
    assert_eq!(
        names("/api/backends"),
        (
            ["a", "n1", "n2", "n3", "n4", "n5"]
                .map(String::from)
                .to_vec(),
            6.into()
        )
    );
    assert_eq!(
        names("/api/backends?offset=2&limit=3"),
        (["n2", "n3", "n4"].map(String::from).to_vec(), 6.into())
    );
    assert_eq!(names("/api/backends?limit=0"), (Vec::new(), 6.into()));
    assert_eq!(names("/api/backends?offset=9"), (Vec::new(), 6.into()));
    let whole = json_body(&call(admin, "GET", "/api/backends?offset=4", None));
    assert_eq!(
        (whole["offset"].clone(), whole["limit"].clone()),
        (4.into(), 1000.into())
    );
    for bad in ["limit=10001", "offset=-1", "limit=ten"] {
        assert_error(
            &call(admin, "GET", &format!("/api/backends?{bad}"), None),
            400,
        );
    }
}

#[test]
fn deleted_backends_free_their_ids_for_the_next_ones() {
    // 70 backends added and deleted over the run, ten at a time: each slot is taken again
    // once its backend has left, so the set never grows past 11.
    let a = Backend::named("a");
    let lb = Lb::start(&ini(&[("a", a.addr)], ADMIN));
    let admin = lb.admin_addr();
    let dead = dead_addr();
    for round in 0..7 {
        for i in 0..10 {
            let body = format!(r#"{{"address": "{dead}", "name": "r{round}-{i}"}}"#);
            let resp = call(admin, "POST", "/api/backends", Some(&body));
            assert_eq!(resp.status, 201, "round {round}: {}", resp.body_str());
        }
        for i in 0..10 {
            let resp = call(
                admin,
                "DELETE",
                &format!("/api/backends/r{round}-{i}"),
                None,
            );
            assert_eq!(resp.status, 202, "{}", resp.body_str());
        }
        let left = wait_until(WAIT, || {
            api_backends(admin)["backends"].as_array().map(Vec::len) == Some(1)
        });
        assert!(left, "round {round}: {}", api_backends(admin));
    }
    assert_eq!(get(lb.addr, "/").body_str(), "a");
    assert_eq!(lb.count_log("no free backend slot"), 0);
}

// ---------------------------------------------------------------------------------------------
// The state file keeps each backend's pool and backup flag
// ---------------------------------------------------------------------------------------------

/// The state file's backends as (name, pool, backup), by name.
#[track_caller]
fn saved(path: &std::path::Path) -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(path).expect("read the state file");
    let value: Value = serde_json::from_str(&text).expect("the state file is JSON");
    let mut list: Vec<_> = value["backends"]
        .as_array()
        .expect("\"backends\" is an array")
        .iter()
        .map(|b| {
            let field = |key: &str| b[key].as_str().unwrap_or("(none)").to_string();
            (field("name"), field("pool"), b["backup"] == true)
        })
        .collect();
    list.sort();
    list
}

#[test]
fn backends_added_to_a_pool_keep_their_pool_and_backup_flag_across_a_restart() {
    let site = Backend::named("site");
    let first = Backend::named("first");
    let mut added = Backend::named("added");
    let spare = Backend::named("spare");
    let dir = TempDir::new("-state");
    let state = dir.path().join("state.json");
    let config = ini(
        &[("site", site.addr)],
        &format!(
            "{ADMIN}state_file = {}\n[pool.api.backends]\nfirst = {}\n\
             [route.api]\npath = /api/\npool = api\n",
            state.display(),
            first.addr
        ),
    );
    let lb = Lb::start(&config);
    let admin = lb.admin_addr();
    for (backend, extra) in [(&added, ""), (&spare, r#", "backup": true"#)] {
        let body = format!(
            r#"{{"address": "{}", "name": "{}", "pool": "api"{extra}}}"#,
            backend.addr, backend.name
        );
        let resp = call(admin, "POST", "/api/backends", Some(&body));
        assert_eq!(resp.status, 201, "{}", resp.body_str());
    }
    let want = |name: &str, pool: &str, backup| (name.to_string(), pool.to_string(), backup);
    assert_eq!(
        saved(&state),
        [
            want("added", "api", false),
            want("first", "api", false),
            want("site", "default", false),
            want("spare", "api", true),
        ]
    );
    drop(lb);

    // A restart takes the backends from the state file: both primaries share the pool's
    // traffic, the backup gets none, and the default pool none of it.
    let lb = Lb::start(&config);
    lb.expect_log("4 backends from the state file", WAIT);
    let api: Vec<String> = (0..20).map(|i| lb.get_body(&format!("/api/{i}"))).collect();
    let count = |name: &str| api.iter().filter(|s| *s == name).count();
    assert_eq!((count("first"), count("added")), (10, 10), "{api:?}");
    for i in 0..10 {
        assert_eq!(lb.get_body(&format!("/site/{i}")), "site");
    }
    assert_eq!(spare.request_count(), 0, "the backup took traffic");
    assert_eq!(added.requests_under("/site/"), 0);
    assert_eq!(site.requests_under("/api/"), 0);

    // The backup is still one: it takes the pool's traffic once no primary is up.
    added.stop();
    drop(first);
    let moved = wait_until(WAIT, || {
        try_get(lb.addr, "/api/probe", IO_TIMEOUT).is_ok_and(|r| r.body_str() == "spare")
    });
    assert!(
        moved,
        "the backup never took traffic; log:\n{}",
        lb.log_text()
    );
    for i in 0..10 {
        assert_eq!(lb.get_body(&format!("/api/after/{i}")), "spare");
    }
    assert_eq!(site.requests_under("/api/"), 0);
}

#[test]
fn a_pool_the_state_file_does_not_name_starts_with_the_config_files_backends() {
    let (old, listed_in_config, fresh) = (
        Backend::named("old"),
        Backend::named("cfg"),
        Backend::named("fresh"),
    );
    let dir = TempDir::new("-state");
    let state = dir.path().join("state.json");
    let saved_default = format!(
        r#"{{"backends":[{{"name":"old","address":"{}","weight":1,"tls":null,"pool":"default","backup":false}}]}}"#,
        old.addr
    );
    std::fs::write(&state, saved_default).unwrap();
    // Pool v2 came to config.ini after the state file was written.
    let config = ini(
        &[("cfg", listed_in_config.addr)],
        &format!(
            "{ADMIN}state_file = {}\n[pool.v2.backends]\nfresh = {}\n\
             [route.v2]\npath = /v2/\npool = v2\n",
            state.display(),
            fresh.addr
        ),
    );
    let lb = Lb::start(&config);
    lb.expect_log("1 backends from the state file", WAIT);
    for i in 0..5 {
        assert_eq!(
            lb.get_body(&format!("/{i}")),
            "old",
            "the state file's default pool"
        );
        assert_eq!(
            lb.get_body(&format!("/v2/{i}")),
            "fresh",
            "config.ini's new pool"
        );
    }
    assert_eq!(listed_in_config.request_count(), 0);
}

#[test]
fn a_pool_the_state_file_left_empty_stays_empty_and_a_name_it_shares_with_config_is_refused() {
    let listed_in_config = Backend::named("cfg");
    let dir = TempDir::new("-state");
    let state = dir.path().join("state.json");
    // Every backend of `default` was deleted through the admin API before the restart.
    std::fs::write(&state, r#"{"pools":["default"],"backends":[]}"#).unwrap();
    let config = ini(
        &[("cfg", listed_in_config.addr)],
        &format!("{ADMIN}state_file = {}\n", state.display()),
    );
    let lb = Lb::start(&config);
    lb.expect_log("0 backends from the state file", WAIT);
    assert_eq!(
        get(lb.addr, "/").status,
        503,
        "the emptied pool stays empty"
    );
    assert_eq!(listed_in_config.request_count(), 0);
    drop(lb);

    // A saved backend named like one of config.ini's in another pool: two backends one name.
    let saved = format!(
        r#"{{"pools":["default"],"backends":[{{"name":"cfg","address":"{}","weight":1,"tls":null,"pool":"default","backup":false}}]}}"#,
        listed_in_config.addr
    );
    std::fs::write(&state, saved).unwrap();
    let clash = format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\n{ADMIN}state_file = {}\n\
         [backends]\nweb = {}\n[pool.v2.backends]\ncfg = {}\n[route.v2]\npath = /v2/\npool = v2\n",
        state.display(),
        listed_in_config.addr,
        listed_in_config.addr
    );
    let Err(refused) = Lb::try_start(&clash) else {
        panic!("lb-mio started with two backends named cfg");
    };
    assert!(
        refused.contains("backend cfg is config.ini's too"),
        "{refused}"
    );
}

#[test]
fn a_state_file_from_before_pools_loads_into_the_default_pool() {
    let (old, listed_in_config, added) = (
        Backend::named("old"),
        Backend::named("cfg"),
        Backend::named("added"),
    );
    let dir = TempDir::new("-state");
    let state = dir.path().join("state.json");
    // As lb-mio wrote it before pools: no "pool", no "backup".
    let before = format!(
        r#"{{"backends":[{{"name":"old","address":"{}","weight":1,"tls":null}}]}}"#,
        old.addr
    );
    std::fs::write(&state, before).unwrap();
    let config = ini(
        &[("cfg", listed_in_config.addr)],
        &format!("{ADMIN}state_file = {}\n", state.display()),
    );
    let lb = Lb::start(&config);
    lb.expect_log("1 backends from the state file", WAIT);
    for i in 0..10 {
        assert_eq!(lb.get_body(&format!("/{i}")), "old");
    }
    assert_eq!(
        listed_in_config.request_count(),
        0,
        "the state file replaces [backends]"
    );
    // The next change writes it anew, with the pool of each backend.
    let body = format!(r#"{{"address": "{}", "name": "added"}}"#, added.addr);
    let resp = call(lb.admin_addr(), "POST", "/api/backends", Some(&body));
    assert_eq!(resp.status, 201, "{}", resp.body_str());
    let default = |name: &str| (name.to_string(), "default".to_string(), false);
    assert_eq!(saved(&state), [default("added"), default("old")]);
}
