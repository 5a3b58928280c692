//! lb-mio's admin API from the outside: one request per connection, and the backend list.

use super::client::{request, Resp};
use super::http::Message;
use serde_json::Value;
use std::net::SocketAddr;

/// One admin request on its own connection (the admin listener closes after each answer),
/// with a JSON `body` and an `Authorization` value if given.
#[track_caller]
pub fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    authorization: Option<&str>,
) -> Resp {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n");
    if let Some(value) = authorization {
        raw.push_str(&format!("Authorization: {value}\r\n"));
    }
    if let Some(body) = body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(body.unwrap_or(""));
    request(admin, raw)
}

/// The body as JSON. Panics (showing it) if it is not.
#[track_caller]
pub fn json_body(resp: &Resp) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", resp.body_str()))
}

/// `GET /api/backends`, checked for status and content type.
#[track_caller]
pub fn api_backends(admin: SocketAddr) -> Value {
    let resp = admin_request(admin, "GET", "/api/backends", None, None);
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    json_body(&resp)
}

/// The value of the one counter or gauge sample of `name` whose labels include `labels` in
/// `/metrics` (0 when there is none).
#[track_caller]
pub fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::{Scrape, Value as Metric};
    let text = admin_request(admin, "GET", "/metrics", None, None).body_str();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse /metrics");
    let found: Vec<f64> = (scrape.samples.iter())
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => v,
            _ => panic!("{name} is not a single value"),
        })
        .collect();
    match found[..] {
        [] => 0.0,
        [one] => one,
        _ => panic!("{} samples of {name} {labels:?}:\n{text}", found.len()),
    }
}
