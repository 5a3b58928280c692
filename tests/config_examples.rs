//! The configs the project shows keep working: every ```ini block of README.md loads, config.ini
//! passes `lb-mio --check`, and with mock backends put in place of their addresses config.ini
//! and the README's routing example balance their `[backends]` as before pools: no route
//! matched, the pool `default` takes the request and its strategy spreads the requests.

mod support;

use lb_mio::config::Config;
use std::collections::BTreeMap;
use support::*;

const README: &str = include_str!("../README.md");
const CONFIG_INI: &str = include_str!("../config.ini");

/// Every ```ini block of the README: (the line its fence is on, its text).
fn readme_ini_blocks() -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (at, line) in README.lines().enumerate() {
        match open.as_mut() {
            None if line.trim_end() == "```ini" => open = Some((at + 1, String::new())),
            None => {}
            Some(_) if line.starts_with("```") => blocks.extend(open.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(
        open.is_none(),
        "an ```ini block of README.md is never closed"
    );
    blocks
}

/// The section a line opens, if it opens one (`[pool.api.backends]` → `pool.api.backends`).
fn section_of(line: &str) -> Option<&str> {
    let line = line.split([';', '#']).next()?.trim();
    line.strip_prefix('[')?.strip_suffix(']').map(str::trim)
}

fn is_backends(section: &str) -> bool {
    section == "backends" || section.starts_with("pool.") && section.ends_with(".backends")
}

/// The rule for fragments: a block with no backends section (`[backends]` or
/// `[pool.NAME.backends]`) shows only the sections it is about (the TLS one shows `[lb]`,
/// `[tls]` and `[certificates]`); it is completed with a `[backends]` of one backend, as every
/// config needs one. Any other block is a whole config and is loaded as it is.
fn completed(block: &str) -> String {
    if block.lines().filter_map(section_of).any(is_backends) {
        block.to_string()
    } else {
        format!("{block}[backends]\nexample = 127.0.0.1:9001\n")
    }
}

#[test]
fn every_ini_block_of_the_readme_loads() {
    let blocks = readme_ini_blocks();
    // The TLS section, the routing section and its HAProxy translation, at least.
    assert!(
        blocks.len() >= 3,
        "only {} ```ini blocks found",
        blocks.len()
    );
    for (line, block) in blocks {
        // `Config::parse` reads no file: the README's certificate paths do not exist here.
        let file = "block";
        if let Err(e) = Config::parse(&completed(&block), file) {
            panic!("the ```ini block of README.md line {line} does not load: {e}\n{block}");
        }
    }
}

#[test]
fn config_ini_passes_check_and_has_only_the_default_pool() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.ini");
    let (status, stdout, stderr) = run_cli(&["--check", path]);
    assert!(status.success(), "{status}: {stdout}{stderr}");
    let config = Config::parse(CONFIG_INI, "config.ini").expect("config.ini parses");
    let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pools, ["default"]);
    assert!(config.routes.is_empty());
}

/// `text` made runnable here: one worker listening on a port the kernel picks (an `[lb]` is
/// added when there is none), no TLS listener, no admin listener, and each backend's address
/// replaced by a mock backend of its name (which answers with that name).
fn with_mock_backends(text: &str) -> (String, BTreeMap<String, Backend>) {
    let mut out = String::new();
    if !text.lines().filter_map(section_of).any(|s| s == "lb") {
        out.push_str("[lb]\nlisten = 127.0.0.1:0\nworkers = 1\n");
    }
    let mut backends = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(name) = section_of(line) {
            section = name.to_string();
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let trimmed = line.trim_start();
        let pair = (!trimmed.starts_with([';', '#']))
            .then(|| trimmed.split_once('='))
            .flatten();
        let Some((key, value)) = pair.map(|(k, v)| (k.trim(), v.trim())) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let replaced = match (section.as_str(), key) {
            ("lb", "listen") => Some("listen = 127.0.0.1:0".to_string()),
            ("lb", "workers") => Some("workers = 1".to_string()),
            ("lb", "tls_listen") => Some(String::new()),
            ("admin", "listen") => Some("listen = off".to_string()),
            (s, name) if is_backends(s) => {
                let backend = Backend::named(name);
                let rest = value.split_once(char::is_whitespace).map_or("", |(_, r)| r);
                let line = format!("{name} = {} {rest}", backend.addr);
                backends.insert(name.to_string(), backend);
                Some(line)
            }
            _ => None,
        };
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    (out, backends)
}

/// Requests each backend got, by name.
fn counts(backends: &BTreeMap<String, Backend>) -> BTreeMap<&str, usize> {
    backends
        .iter()
        .map(|(name, b)| (name.as_str(), b.request_count()))
        .collect()
}

#[test]
fn config_ini_round_robins_over_its_three_backends_as_before() {
    let (text, backends) = with_mock_backends(CONFIG_INI);
    let lb = Lb::start(&text);
    let served: Vec<String> = (0..30).map(|i| lb.get_body(&format!("/{i}"))).collect();
    // round_robin: each in turn, whichever comes first.
    for (i, name) in served.iter().enumerate().skip(3) {
        assert_eq!(*name, served[i - 3], "not in turn: {served:?}");
    }
    let want = BTreeMap::from([("s1", 10), ("s2", 10), ("s3", 10)]);
    assert_eq!(counts(&backends), want, "{served:?}");
}

#[test]
fn the_readme_routing_example_balances_its_default_pool_as_plain_backends() {
    let (_, block) = readme_ini_blocks()
        .into_iter()
        .find(|(_, b)| b.contains("[route.admin-deny]") && !b.contains("[route.to-https]"))
        .expect("the routing section's example");
    let (text, backends) = with_mock_backends(&block);
    let lb = Lb::start(&text);
    // No route matches: the pool `default`, round robin over its primaries, never the backup.
    let served: Vec<String> = (0..20)
        .map(|i| lb.get_body(&format!("/page/{i}")))
        .collect();
    let default = counts(&backends);
    let want = BTreeMap::from([("web1", 10), ("web2", 10), ("old", 0)]);
    for (name, count) in want {
        assert_eq!(default[name], count, "{name}: {served:?}");
    }
    assert_eq!(default["api1"] + default["api2"], 0, "{served:?}");
    // And the routes around it work as the README says.
    let denied = get(lb.addr, "/admin/x");
    assert_eq!(
        (denied.status, denied.body_str().as_str()),
        (403, "forbidden")
    );
    let api = request(
        lb.addr,
        "GET /api/users HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(api.status, 200, "{}", api.head_str());
    let reached = &backends[api.body_str().as_str()];
    assert!(reached.name.starts_with("api"), "{}", reached.name);
    let seen = reached.last_request();
    assert_eq!(seen.target, "/users", "strip_prefix = /api");
}
