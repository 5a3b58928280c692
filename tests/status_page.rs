//! The status page in a real browser: headless Chromium loads it from the admin listener while
//! traffic flows, runs its polling script, and dumps the DOM; the table must list both
//! backends, the pools and routes tables their rows, and every chart must have drawn samples;
//! with TLS, the certificates table lists each certificate and marks those that expire within
//! 14 days.
//!
//! Needs Debian's `chromium`. Run as root (as on this project's machines and in CI), the test
//! installs it with apt-get when it is missing, so `cargo test` works on a fresh machine;
//! otherwise it fails, saying how to install it.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// Chromium gets this long before it is killed and the test fails (it takes about a second).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(30);

/// `chromium` on the `PATH`, if it is there.
fn chromium_on_path() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    })
}

/// As root, installs Debian's `chromium` (a fresh machine has none).
fn install_chromium() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    if !root {
        return;
    }
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "chromium"],
    ] {
        let _ = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
}

/// Where Chromium is: `$CHROMIUM`, else `chromium` on the `PATH` (installed first if need be).
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = chromium_on_path().or_else(|| {
        install_chromium();
        chromium_on_path()
    });
    found.unwrap_or_else(|| {
        panic!(
            "this test needs headless Chromium, and `chromium` is not on the PATH: install it \
             with `apt-get install -y chromium` (.ci/run does), or point $CHROMIUM at it"
        )
    })
}

/// Runs headless Chromium on `url` and returns the DOM it dumps once its virtual time budget
/// (5 s of page time: timers fire, but the page waits for no real second) is spent.
fn dump_dom(url: &str) -> String {
    let profile = TempDir::new("-chromium");
    let out = run_within(
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url),
        BROWSER_TIMEOUT,
    )
    .unwrap_or_else(|e| {
        panic!("cannot run chromium: {e} (install it: apt-get install -y chromium)")
    });
    let Some(status) = out.status else {
        panic!(
            "chromium did not finish in {BROWSER_TIMEOUT:?}; its stderr:\n{}",
            out.stderr
        );
    };
    assert!(
        status.success() && out.stdout.contains("</html>"),
        "chromium failed ({status}); stderr:\n{}\nstdout:\n{}",
        out.stderr,
        out.stdout
    );
    out.stdout
}

/// Every value of attribute `name` in `html`, in order.
fn attribute_values<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!(" {name}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// (id, data-points) of every `<canvas>`.
fn canvases(html: &str) -> Vec<(String, Option<usize>)> {
    html.match_indices("<canvas ")
        .map(|(i, _)| {
            let tag = &html[i..i + html[i..].find('>').unwrap_or(0)];
            let id = attribute_values(tag, "id").first().copied().unwrap_or("");
            let points = attribute_values(tag, "data-points")
                .first()
                .and_then(|n| n.parse().ok());
            (id.to_string(), points)
        })
        .collect()
}

/// The text of the element with this id (up to its first child tag or end tag).
fn text_of<'a>(html: &'a str, id: &str) -> &'a str {
    let Some(start) = html.find(&format!(" id=\"{id}\"")) else {
        return "";
    };
    let rest = &html[start..];
    let rest = &rest[rest.find('>').map_or(rest.len(), |i| i + 1)..];
    &rest[..rest.find('<').unwrap_or(rest.len())]
}

#[test]
fn the_status_page_lists_backends_and_draws_live_charts() {
    let browser = chromium();
    let a = Backend::named("alpha");
    let b = Backend::named("beta");
    let lb = Lb::start(&ini(
        &[("alpha", a.addr), ("beta", b.addr)],
        "[health]\ninterval_ms = 100\n[admin]\nlisten = 127.0.0.1:0\n[route.all]\npool = default\n",
    ));
    let admin = lb.admin_addr();
    // A steady trickle of requests, not a flood that starves the browser.
    let _traffic = Load::paced(lb.addr, 1, Duration::from_millis(2));
    assert!(
        a.wait_for_requests(5, Duration::from_secs(5))
            && b.wait_for_requests(5, Duration::from_secs(5)),
        "the traffic does not reach both backends"
    );

    let dom = dump_dom(&format!("http://{admin}/"));
    let context = || format!("(chromium: {})\n{dom}", browser.display());

    let mut rows = attribute_values(&dom, "data-backend");
    rows.sort_unstable();
    assert_eq!(
        rows,
        ["alpha", "beta"],
        "one table row per backend {}",
        context()
    );
    assert_eq!(
        attribute_values(&dom, "data-state"),
        ["up", "up"],
        "{}",
        context()
    );
    for addr in [a.addr, b.addr] {
        assert!(
            dom.contains(&format!(">{addr}<")),
            "{addr} is not shown {}",
            context()
        );
    }

    assert_eq!(
        attribute_values(&dom, "data-pool"),
        ["default"],
        "{}",
        context()
    );
    assert_eq!(
        attribute_values(&dom, "data-route"),
        ["all"],
        "{}",
        context()
    );
    assert!(
        dom.contains(">pool = default<") && dom.contains(">2 / 2<"),
        "the route's action and the pool's backends up are not shown {}",
        context()
    );

    let charts = canvases(&dom);
    let ids: Vec<&str> = charts.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["chart-rps", "chart-errors", "chart-latency"],
        "{}",
        context()
    );
    for (id, points) in &charts {
        assert!(
            points.is_some_and(|n| n >= 2),
            "{id} drew {points:?} samples; it should have drawn one a second {}",
            context()
        );
    }
    let status = text_of(&dom, "status");
    assert!(
        status.contains("updated"),
        "the page's status line says {status:?} {}",
        context()
    );
}

/// The `<tr ...>` start tag of the certificates table's row for `name`.
fn certificate_row<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let at = html.find(&format!(" data-certificate=\"{name}\""))?;
    let start = html[..at].rfind("<tr")?;
    let end = at + html[at..].find('>')?;
    Some(&html[start..=end])
}

#[test]
fn the_status_page_lists_certificates_and_marks_those_expiring_soon() {
    let browser = chromium();
    let pki = Pki::new();
    let site = pki.leaf("site", KeyKind::Ecdsa, &["a.example.com"]);
    let soon = pki.leaf_valid(
        "soon",
        KeyKind::Rsa,
        &["soon.example.com"],
        Validity::Days(5),
    );
    let a = Backend::named("alpha");
    let lb = Lb::start(&tls_ini(
        &[("alpha", a.addr)],
        &[("site", &site), ("soon", &soon)],
        "[admin]\nlisten = 127.0.0.1:0\n",
    ));
    let dom = dump_dom(&format!("http://{}/", lb.admin_addr()));
    let context = || format!("(chromium: {})\n{dom}", browser.display());

    let mut rows = attribute_values(&dom, "data-certificate");
    rows.sort_unstable();
    assert_eq!(
        rows,
        ["site", "soon"],
        "one row per certificate {}",
        context()
    );
    let row = |name| certificate_row(&dom, name).unwrap_or_default();
    assert!(
        row("soon").contains("expires-soon"),
        "soon is not marked {}",
        context()
    );
    assert!(
        !row("site").contains("expires-soon"),
        "site is marked {}",
        context()
    );
    for name in ["a.example.com", "soon.example.com"] {
        assert!(dom.contains(name), "{name} is not shown {}", context());
    }
}
