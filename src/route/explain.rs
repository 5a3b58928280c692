//! `lb-mio --explain` and `POST /api/explain`: what the route table would do with one request,
//! line by line. The request goes through the same parse and the same checks as live traffic.

use super::{RouteTable, Via};
use crate::buffer::BufferPool;
use crate::config::Config;
use crate::http::reply::Reply;
use crate::http::request::{self, Forwarding, HeadLimits};
use std::net::{IpAddr, SocketAddr};

/// A request to explain.
#[derive(Debug, Clone)]
pub struct Question {
    pub method: String,
    /// Absolute: `http://host[:port]/path?query` or `https://...`.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub client: IpAddr,
    /// The listener it came in on; by default the first of its scheme.
    pub listener: Option<SocketAddr>,
    /// The TLS name asked for; by default the URL's host, over https.
    pub sni: Option<String>,
}

/// What the table does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// The route that matched.
    pub route: Option<String>,
    pub lines: Vec<String>,
}

/// Explains `q` against `config`'s routes; an error for a question that is not a request.
pub fn explain(config: &Config, table: &RouteTable, q: &Question) -> Result<Explained, String> {
    let (https, authority, target) = split_url(&q.url)?;
    let listener = match (q.listener, https) {
        (Some(listener), _) => listener,
        (None, true) => *config
            .lb
            .tls_listen
            .first()
            .ok_or("no [lb] tls_listen for https")?,
        (None, false) => *config.lb.listen.first().ok_or("no [lb] listen")?,
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let sni = q.sni.clone().or_else(|| https.then(|| host.to_string()));
    let via = Via {
        client: q.client,
        listener,
        https,
        sni: sni.as_deref(),
    };
    let mut head = format!("{} {target} HTTP/1.1\r\nHost: {authority}\r\n", q.method);
    for (name, value) in &q.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let limits = HeadLimits {
        max_bytes: config.limits.max_header_bytes,
        max_headers: config.limits.max_headers,
    };
    let mut path_room = vec![0; head.len()];
    let wanted = request::Wanted {
        path_room: table.looks_at_paths().then_some(&mut path_room[..]),
        https,
        ..request::Wanted::default()
    };
    let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    let mut lines = vec![format!("request: {} {}", q.method, q.url)];
    let mut out = BufferPool::new(0).take();
    let explained = request::parse_routed(
        head.as_bytes(),
        limits,
        q.client,
        wanted,
        &mut out,
        |seen| {
            let mut said = vec![format!("path: {}", String::from_utf8_lossy(seen.path))];
            said.extend(table.explain(seen, &via, &pools));
            let route = table
                .decide(seen, &via, 0)
                .route
                .map(|at| table.route(at).name().to_string());
            Ok((Forwarding::default(), (route, said)))
        },
    );
    match explained {
        Ok(Some((_, (route, said)))) => {
            lines.extend(said);
            Ok(Explained { route, lines })
        }
        Ok(None) => Err("the request head is incomplete".into()),
        Err(e) => {
            lines.push(format!(
                "refused: {} {}",
                Reply::for_head(e).status(),
                e.why()
            ));
            Ok(Explained { route: None, lines })
        }
    }
}

/// `(https, authority, target)` of an absolute URL.
fn split_url(url: &str) -> Result<(bool, &str, String), String> {
    let (https, rest) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        _ => return Err(format!("{url:?}: expected an http:// or https:// URL")),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    if authority.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    match target.starts_with('/') {
        true => Ok((https, authority, target.to_string())),
        false => Ok((https, authority, format!("/{target}"))),
    }
}
