//! Pools and routes through the admin API, against the real binary: a pool and a route made
//! at run time take traffic; routes replaced, placed and deleted, then their pool; bad
//! documents answer 4xx with a message and change nothing; config.ini's pools and routes read
//! back as the documents that define them; requests counted per route and per pool; a pool's
//! backends paged; a reload drops what the API made and says so. Loopback only; every wait
//! bounded.

mod support;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(5);

/// Fast probes that bring a new backend up at its first pass, and an admin listener.
const ADMIN: &str = "[health]\ninterval_ms = 50\nrise = 1\n[admin]\nlisten = 127.0.0.1:0\n";

#[track_caller]
fn call(admin: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let body = body.map(Value::to_string);
    admin_request(admin, method, path, body.as_deref(), None)
}

/// A 2xx answer's JSON body.
#[track_caller]
fn ok(resp: Resp) -> Value {
    assert!(
        (200..300).contains(&resp.status),
        "{} {}",
        resp.status,
        resp.body_str()
    );
    json_body(&resp)
}

/// Asserts an answer with `status` whose `{"error"}` message contains `words`.
#[track_caller]
fn refused(resp: Resp, status: u16, words: &str) {
    let body = json_body(&resp);
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        resp.status == status && message.contains(words),
        "{} {body}",
        resp.status
    );
}

/// The route names, in the order they are tried.
fn route_names(admin: SocketAddr) -> Vec<String> {
    let routes = ok(call(admin, "GET", "/api/routes", None));
    (routes["routes"].as_array().expect("routes").iter())
        .map(|r| r["name"].as_str().expect("a name").to_string())
        .collect()
}

/// Waits until `GET path` is answered by `backend` (each mock answers with its name).
#[track_caller]
fn wait_for_body(lb: &Lb, path: &str, backend: &str) {
    let mut last = String::new();
    let reached = wait_until(WAIT, || {
        last = get(lb.addr, path).body_str();
        last == backend
    });
    assert!(
        reached,
        "GET {path} never reached {backend}; last: {last:?}"
    );
}

#[test]
fn a_pool_and_a_route_made_through_the_api_take_traffic_until_a_reload() {
    let web = Backend::named("web");
    let api1 = Backend::named("api1");
    let lb = Lb::start(&ini(&[("web", web.addr)], ADMIN));
    let admin = lb.admin_addr();
    let pool = json!({"version": 1, "name": "api",
        "settings": {"strategy": "least_conn", "health_rise": 1},
        "backends": [{"name": "api1", "address": api1.addr.to_string(), "weight": 2, "tls": null, "backup": false}]});
    let created = call(admin, "PUT", "/api/pools/api", Some(&pool));
    assert_eq!(created.status, 201, "{}", created.body_str());
    assert_eq!(json_body(&created), pool, "the answer is the document");
    let route = json!({"version": 1, "name": "api", "keys": [["path", "/api/"], ["pool", "api"]]});
    assert_eq!(
        call(admin, "PUT", "/api/routes/api", Some(&route)).status,
        201
    );

    wait_for_body(&lb, "/api/x", "api1");
    const SENT: usize = 10;
    for _ in 0..SENT {
        assert_eq!(get(lb.addr, "/api/x").body_str(), "api1");
    }
    assert_eq!(
        get(lb.addr, "/other").body_str(),
        "web",
        "no route matched: default"
    );

    let pools = ok(call(admin, "GET", "/api/pools", None));
    let api = (pools["pools"].as_array().unwrap().iter())
        .find(|p| p["name"] == "api")
        .cloned();
    let api = api.unwrap_or_else(|| panic!("no pool api in {pools}"));
    assert_eq!(
        (
            api["strategy"].clone(),
            api["up"].clone(),
            api["backends"].clone(),
            api["source"].clone()
        ),
        (json!("least_conn"), json!(1), json!(1), json!("admin"))
    );
    let routes = ok(call(admin, "GET", "/api/routes", None));
    let listed = &routes["routes"][0];
    assert_eq!(
        (
            listed["name"].clone(),
            listed["conditions"].clone(),
            listed["action"].clone()
        ),
        (json!("api"), json!("path = /api/"), json!("pool = api"))
    );
    assert!(
        listed["hits"].as_u64().is_some_and(|n| n > SENT as u64),
        "{routes}"
    );

    // Per route, per pool, and each backend series names its pool.
    let counted = wait_until(WAIT, || {
        metric(admin, "lbmio_pool_requests_total", &[("pool", "api")]) > SENT as f64
    });
    assert!(
        counted,
        "lbmio_pool_requests_total{{pool=\"api\"}} never passed {SENT}"
    );
    assert!(metric(admin, "lbmio_route_requests_total", &[("route", "api")]) > SENT as f64);
    // `/other`, and any `/api/x` a worker sent on before it took the new snapshot.
    assert!(metric(admin, "lbmio_pool_requests_total", &[("pool", "default")]) >= 1.0);
    assert_eq!(
        metric(
            admin,
            "lbmio_pool_backends",
            &[("pool", "api"), ("state", "up")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            admin,
            "lbmio_pool_backends",
            &[("pool", "api"), ("state", "down")]
        ),
        0.0
    );
    assert_eq!(
        metric(
            admin,
            "lbmio_backend_up",
            &[("backend", "api1"), ("pool", "api")]
        ),
        1.0
    );

    // What the API made lasts until a reload, which says what it drops.
    lb.signal("HUP");
    lb.expect_log("pool api made through the admin API is gone", WAIT);
    lb.expect_log("route api made through the admin API is gone", WAIT);
    assert_eq!(call(admin, "GET", "/api/pools/api", None).status, 404);
    assert!(route_names(admin).is_empty());
    wait_for_body(&lb, "/api/x", "web");
}

const TWO_POOLS: &str = "[pool.api]\nstrategy = least_conn\nretries = 1\nhealth_path = /healthz\n\
    [route.api]\nhost = api.example.com\npath = /api/\nheader X-Canary = 1\npool = api\n";

/// lb-mio with the pools `default` (web) and `api` (api1) and the route `api`.
fn two_pools(web: &Backend, api1: &Backend) -> Lb {
    let api = format!("[pool.api.backends]\napi1 = {} weight=2\n", api1.addr);
    Lb::start(&ini(
        &[("web", web.addr)],
        &format!("{ADMIN}{TWO_POOLS}{api}"),
    ))
}

#[test]
fn config_pools_and_routes_read_back_as_their_documents() {
    let (web, api1) = (Backend::named("web"), Backend::named("api1"));
    let lb = two_pools(&web, &api1);
    let admin = lb.admin_addr();
    let pool = json!({"version": 1, "name": "api",
        "settings": {"strategy": "least_conn", "retries": 1, "health_path": "/healthz"},
        "backends": [{"name": "api1", "address": api1.addr.to_string(), "weight": 2, "tls": null, "backup": false}]});
    assert_eq!(ok(call(admin, "GET", "/api/pools/api", None)), pool);
    let route = json!({"version": 1, "name": "api",
        "keys": [["host", "api.example.com"], ["path", "/api/"], ["header X-Canary", "1"], ["pool", "api"]]});
    assert_eq!(ok(call(admin, "GET", "/api/routes/api", None)), route);
    let default = ok(call(admin, "GET", "/api/pools/default", None));
    assert_eq!(
        default["settings"],
        json!({}),
        "default follows the globals"
    );

    // Put back as they are, they are replaced by themselves.
    assert_eq!(
        call(admin, "PUT", "/api/pools/api", Some(&pool)).status,
        200
    );
    assert_eq!(
        call(admin, "PUT", "/api/routes/api", Some(&route)).status,
        200
    );
    assert_eq!(ok(call(admin, "GET", "/api/pools/api", None)), pool);
    assert_eq!(ok(call(admin, "GET", "/api/routes/api", None)), route);
}

#[test]
fn routes_are_replaced_and_placed_then_deleted_and_their_pool_after_them() {
    let (web, api1) = (Backend::named("web"), Backend::named("api1"));
    let lb = two_pools(&web, &api1);
    let admin = lb.admin_addr();
    let v2 = json!({"version": 1, "keys": [["path", "/v2/"], ["pool", "api"]]});
    assert_eq!(call(admin, "PUT", "/api/routes/api", Some(&v2)).status, 200);
    wait_for_body(&lb, "/v2/x", "api1");
    assert_eq!(
        get(lb.addr, "/api/x").body_str(),
        "web",
        "the old conditions are gone"
    );

    let deny = json!({"version": 1, "keys": [["path", "/v2/secret"], ["return", "403 no"]], "before": "api"});
    assert_eq!(
        call(admin, "PUT", "/api/routes/deny", Some(&deny)).status,
        201
    );
    let last = json!({"version": 1, "keys": [["path", "/v3/"], ["pool", "api"]]});
    assert_eq!(
        call(admin, "PUT", "/api/routes/last", Some(&last)).status,
        201
    );
    assert_eq!(route_names(admin), ["deny", "api", "last"]);
    assert_eq!(get(lb.addr, "/v2/secret").status, 403);
    // Replaced without `before`, a route keeps its place; with it, it moves.
    assert_eq!(
        call(
            admin,
            "PUT",
            "/api/routes/deny",
            Some(&json!({"version": 1, "keys": [["return", "404"]]}))
        )
        .status,
        200
    );
    assert_eq!(route_names(admin), ["deny", "api", "last"]);
    let moved =
        json!({"version": 1, "keys": [["path", "/v3/"], ["pool", "api"]], "before": "deny"});
    assert_eq!(
        call(admin, "PUT", "/api/routes/last", Some(&moved)).status,
        200
    );
    assert_eq!(route_names(admin), ["last", "deny", "api"]);

    refused(
        call(admin, "DELETE", "/api/pools/api", None),
        409,
        "route last sends requests to pool api",
    );
    for name in ["last", "api"] {
        assert_eq!(
            call(admin, "DELETE", &format!("/api/routes/{name}"), None).status,
            200
        );
    }
    assert_eq!(route_names(admin), ["deny"]);
    assert_eq!(call(admin, "DELETE", "/api/pools/api", None).status, 202);
    refused(
        call(admin, "GET", "/api/pools/api", None),
        404,
        "no pool \"api\"",
    );
    let gone = wait_until(WAIT, || {
        !api_backends(admin).to_string().contains("\"api1\"")
    });
    assert!(gone, "api1 never left: {}", api_backends(admin));
}

#[test]
fn bad_documents_answer_4xx_and_change_nothing() {
    let (web, api1) = (Backend::named("web"), Backend::named("api1"));
    let lb = two_pools(&web, &api1);
    let admin = lb.admin_addr();
    let state = || {
        let pools = ok(call(admin, "GET", "/api/pools", None));
        let routes = ok(call(admin, "GET", "/api/routes", None));
        (
            pools,
            routes,
            ok(call(admin, "GET", "/api/pools/api", None)),
        )
    };
    let before = state();
    let route = |keys: Value| json!({"version": 1, "keys": keys});
    let cases = [
        (
            "PUT",
            "/api/pools/api",
            json!({"version": 1, "settings": {"colour": "red"}}),
            400,
            "settings: colour: unknown pool key",
        ),
        (
            "PUT",
            "/api/pools/api",
            json!({"version": 2}),
            400,
            "version 2 is not known",
        ),
        (
            "PUT",
            "/api/pools/api",
            json!({"version": 1, "name": "web"}),
            400,
            "the URL names",
        ),
        (
            "PUT",
            "/api/pools/bad!name",
            json!({"version": 1}),
            400,
            "not a pool name",
        ),
        (
            "PUT",
            "/api/pools/other",
            json!({"version": 1, "backends": [{"name": "web", "address": "127.0.0.1:9"}]}),
            409,
            "taken in pool default",
        ),
        (
            "PUT",
            "/api/routes/r",
            route(json!([["listener", "127.0.0.1:1"], ["pool", "default"]])),
            400,
            "listener: 127.0.0.1:1 is in neither",
        ),
        (
            "PUT",
            "/api/routes/r",
            route(json!([["pool", "nope"]])),
            400,
            "no pool \"nope\"",
        ),
        (
            "PUT",
            "/api/routes/r",
            route(json!([["colour", "red"]])),
            400,
            "unknown route key",
        ),
        (
            "PUT",
            "/api/routes/r",
            json!({"version": 3, "keys": [["pool", "api"]]}),
            400,
            "version 3",
        ),
        (
            "PUT",
            "/api/routes/r",
            json!({"version": 1, "keys": [["pool", "api"]], "before": "nope"}),
            400,
            "no route \"nope\"",
        ),
        (
            "PUT",
            "/api/routes/api",
            route(json!([["pool", "nope"]])),
            400,
            "no pool \"nope\"",
        ),
        (
            "DELETE",
            "/api/pools/api",
            json!(null),
            409,
            "route api sends requests to pool api",
        ),
        ("DELETE", "/api/pools/nope", json!(null), 404, "no pool"),
        ("DELETE", "/api/routes/nope", json!(null), 404, "no route"),
        (
            "POST",
            "/api/pools/nope/backends",
            json!({"address": "127.0.0.1:9"}),
            404,
            "no pool",
        ),
        (
            "POST",
            "/api/pools/api/backends",
            json!({"address": "127.0.0.1:9", "pool": "default"}),
            400,
            "not \"api\"",
        ),
        (
            "PATCH",
            "/api/routes/api",
            json!(null),
            405,
            "method not allowed",
        ),
    ];
    for (method, path, body, status, words) in cases {
        let body = (!body.is_null()).then_some(&body);
        refused(call(admin, method, path, body), status, words);
    }
    let bad_json = admin_request(admin, "PUT", "/api/pools/api", Some("{"), None);
    refused(bad_json, 400, "bad JSON");
    assert_eq!(state(), before, "a refused change changed something");
    assert_eq!(lb.count_log("(admin API)"), 0, "{}", lb.log_text());
}

#[test]
fn a_pools_backends_come_in_pages() {
    let (web, api1) = (Backend::named("web"), Backend::named("api1"));
    let lb = two_pools(&web, &api1);
    let admin = lb.admin_addr();
    let dead = dead_addr();
    for i in 1..=4 {
        let body = json!({"address": dead.to_string(), "name": format!("n{i}")});
        let added = ok(call(admin, "POST", "/api/pools/api/backends", Some(&body)));
        assert_eq!(added["name"], format!("n{i}"));
    }
    let page = |path: &str| {
        let list = ok(call(admin, "GET", path, None));
        let names: Vec<String> = (list["backends"].as_array().unwrap().iter())
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect();
        (names, list["total"].as_u64().unwrap())
    };
    assert_eq!(
        page("/api/pools/api/backends"),
        (
            ["api1", "n1", "n2", "n3", "n4"].map(String::from).to_vec(),
            5
        )
    );
    assert_eq!(
        page("/api/pools/api/backends?offset=1&limit=2"),
        (["n1", "n2"].map(String::from).to_vec(), 5)
    );
    assert_eq!(
        page("/api/pools/default/backends"),
        (vec!["web".to_string()], 1)
    );
    assert_eq!(page("/api/backends").1, 6, "every pool's");
    refused(
        call(admin, "GET", "/api/pools/api/backends?limit=ten", None),
        400,
        "limit",
    );
    refused(
        call(admin, "GET", "/api/pools/nope/backends", None),
        404,
        "no pool",
    );
    let doc = ok(call(admin, "GET", "/api/pools/api", None));
    assert_eq!(doc["backends"].as_array().map(Vec::len), Some(5), "{doc}");
}
