//! TLS termination through the real binary, with real clients (`curl`, `openssl s_client`) and
//! a PKI made for each test: SNI and the choice between certificates, ALPN, versions; requests
//! over TLS (keep-alive, pipelining, chunked bodies, upgrades); session resumption, also
//! across two processes that share a ticket key file; certificate reloads on SIGHUP; `--check`;
//! redirects to https and HSTS; hostile clients (plain HTTP, byte-at-a-time and stalled
//! handshakes, thousands of them, garbage); metrics, the admin API and the access log; and a
//! PROXY header before the handshake.

mod support;

use prometheus_parse::{Scrape, Value as Metric};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

use KeyKind::{Ecdsa, Rsa};

/// One health probe at start and no more: a backend stays "up" whatever it does.
const NO_HEALTH: &str = "[health]\ninterval_ms = 3600000\n";
/// An admin listener (for `/metrics` and the API) on a port the kernel picks.
const ADMIN: &str = "[admin]\nlisten = 127.0.0.1:0\n";
/// Access lines on stderr, as text.
const ACCESS_LOG: &str = "[log]\naccess_log = text\n";
/// How long a metric or an access line may take to show (lines are flushed every second).
const WAIT: Duration = Duration::from_secs(5);
/// The name most tests ask for; the site certificate covers it.
const HOST: &str = "a.example.com";
/// A request that asks lb-mio to close after answering, so `s_client -ign_eof` ends then.
const GET_AND_CLOSE: &str = "GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A balancer with one ECDSA certificate (`a.example.com`, `*.a.example.com`) in front of one
/// backend answering its name. Fields drop in order: lb-mio stops before its files go.
struct Site {
    lb: Lb,
    backend: Backend,
    pki: Pki,
}

impl Site {
    fn start(extra: &str) -> Site {
        Site::with_backend(Backend::named("a"), extra)
    }

    fn with_backend(backend: Backend, extra: &str) -> Site {
        let pki = Pki::new();
        let cert = pki.leaf("site", Ecdsa, &[HOST, "*.a.example.com"]);
        let config = tls_ini(
            &[("a", backend.addr)],
            &[("site", &cert)],
            &format!("{NO_HEALTH}{extra}"),
        );
        let lb = Lb::start(&config);
        Site { lb, backend, pki }
    }

    fn tls(&self) -> SocketAddr {
        self.lb.tls_addr()
    }

    /// `curl ARGS https://a.example.com:PORT/PATH...`, which must succeed; its stdout.
    #[track_caller]
    fn curl_ok(&self, args: &[&str], paths: &[&str]) -> String {
        curl_ok(&self.pki, HOST, self.tls(), args, paths)
    }

    /// `s_client -servername a.example.com ARGS`, trusting the test CA.
    fn s_client(&self, args: &[&str], input: &str) -> SOut {
        self.pki
            .s_client(self.tls(), Some(HOST), args, input.as_bytes())
    }
}

/// `/metrics` of the balancer, parsed.
#[track_caller]
fn scrape(lb: &Lb) -> Scrape {
    let resp = admin_request(lb.admin_addr(), "GET", "/metrics", None, None);
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let text = resp.body_str();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse /metrics")
}

/// The one sample of counter or gauge `name` with exactly these labels; 0 when there is none.
#[track_caller]
fn metric(lb: &Lb, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = scrape(lb);
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && s.labels.len() == labels.len())
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => v,
            ref other => panic!("{name} is not a single value: {other:?}"),
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{} samples of {name} {labels:?}",
        found.len()
    );
    found.first().copied().unwrap_or(0.0)
}

/// Waits (≤ `WAIT`) until metric `name{labels}` is `want`; panics with the last value if not.
#[track_caller]
fn expect_metric(lb: &Lb, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = 0.0;
    let held = wait_until(WAIT, || {
        last = metric(lb, name, labels);
        last == want
    });
    assert!(held, "{name}{labels:?} is {last}, expected {want}");
}

/// `lbmio_tls_handshakes_total{result="ok"}` over both versions.
fn ok_handshakes(lb: &Lb) -> f64 {
    ["TLSv1.3", "TLSv1.2"]
        .iter()
        .map(|v| {
            metric(
                lb,
                "lbmio_tls_handshakes_total",
                &[("result", "ok"), ("version", v)],
            )
        })
        .sum()
}

/// The access line of the request whose request line is `GET TARGET HTTP/1.1` (text format),
/// waited for (≤ `WAIT`).
#[track_caller]
fn access_line(lb: &Lb, target: &str) -> String {
    let needle = format!("\"GET {target} HTTP/1.1\"");
    let mut found = None;
    wait_until(WAIT, || {
        found = lb.log().into_iter().find(|l| l.contains(&needle));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no access line for {target}; log:\n{}", lb.log_text()))
}

/// The last field of an access line: `tls`.
fn tls_field(line: &str) -> &str {
    line.rsplit(' ').next().unwrap_or_default()
}

/// Whether the tests run as root (who reads a file whatever its mode).
fn running_as_root() -> bool {
    let out = run_within(std::process::Command::new("id").arg("-u"), TOOL_TIMEOUT).expect("id -u");
    out.stdout.trim() == "0"
}

/// The soft limit on open descriptors of a process, from `/proc/PID/limits`.
fn nofile_limit(pid: &str) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(1024)
}

/// Copies a leaf's certificate and key over the files `cert` and `key`.
fn install(leaf: &Leaf, cert: &Path, key: &Path) {
    std::fs::copy(&leaf.cert, cert).expect("copy the certificate");
    std::fs::copy(&leaf.key, key).expect("copy the key");
}

// ---------------------------------------------------------------------------------------------
// Choosing the certificate
// ---------------------------------------------------------------------------------------------

#[test]
fn sni_picks_the_certificate_that_names_the_host_and_the_first_listed_is_the_default() {
    let pki = Pki::new();
    let main = pki.leaf("main", Ecdsa, &["main.test"]);
    let wild = pki.leaf("wild", Ecdsa, &["*.example.com"]);
    let exact = pki.leaf("exact", Rsa, &["exact.example.org", "other.example.org"]);
    let a = Backend::named("a");
    let certs = [("main", &main), ("wild", &wild), ("exact", &exact)];
    let lb = Lb::start(&tls_ini(&[("a", a.addr)], &certs, NO_HEALTH));
    let tls = lb.tls_addr();
    for (sni, want) in [
        (Some("a.example.com"), "wild"),
        (Some("A.Example.COM"), "wild"),
        (Some("example.com"), "main"),
        (Some("a.b.example.com"), "main"),
        (Some("exact.example.org"), "exact"),
        (Some("other.example.org"), "exact"),
        (Some("main.test"), "main"),
        (Some("unknown.test"), "main"),
        (None, "main"),
    ] {
        let out = pki.s_client(tls, sni, &[], b"");
        assert!(out.verified(), "SNI {sni:?}: {}", out.all());
        assert_eq!(out.subject_cn(), Some(want), "SNI {sni:?}:\n{}", out.all());
    }
    // What a client reads in the certificate served: every name of that entry.
    let out = pki.s_client(tls, Some("other.example.org"), &[], b"");
    assert_eq!(out.served_names(), exact.names);
}

#[test]
fn ecdsa_and_rsa_certificates_for_one_name_the_clients_signature_algorithms_choose() {
    let pki = Pki::new();
    let rsa = pki.leaf("rsa", Rsa, &["both.example.com"]);
    let ec = pki.leaf("ec", Ecdsa, &["both.example.com"]);
    let a = Backend::named("a");
    // RSA listed first: ECDSA still wins for a client that takes both.
    let certs = [("rsa", &rsa), ("ec", &ec)];
    let lb = Lb::start(&tls_ini(&[("a", a.addr)], &certs, NO_HEALTH));
    for (args, want_cn, want_signature) in [
        (&[][..], "ec", "ECDSA"),
        (
            &["-tls1_3", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"],
            "rsa",
            "RSA-PSS",
        ),
        (
            &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
            "rsa",
            "RSA-PSS",
        ),
        (
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
            "ec",
            "ECDSA",
        ),
        (&["-tls1_2"], "ec", "ECDSA"),
    ] {
        let out = pki.s_client(lb.tls_addr(), Some("both.example.com"), args, b"");
        assert!(out.verified(), "{args:?}: {}", out.all());
        assert_eq!(out.subject_cn(), Some(want_cn), "{args:?}:\n{}", out.all());
        assert_eq!(out.signature_type(), Some(want_signature), "{args:?}");
    }
}

#[test]
fn port_0_in_listen_and_tls_listen_makes_two_listeners() {
    // How every test of the harness writes its plain listener; the spec lets tls_listen take
    // port 0 too. Two listeners on two ports the kernel picks, not one address twice.
    let pki = Pki::new();
    let cert = pki.leaf("site", Ecdsa, &[HOST]);
    let a = Backend::named("a");
    let extra = format!("[lb]\nlisten = 127.0.0.1:0\ntls_listen = 127.0.0.1:0\n{NO_HEALTH}");
    let lb = Lb::start(&tls_ini(&[("a", a.addr)], &[("site", &cert)], &extra));
    assert_ne!(lb.addr, lb.tls_addr());
    assert_eq!(get(lb.addr, "/").body_str(), "a");
    assert_eq!(curl_ok(&pki, HOST, lb.tls_addr(), &[], &["/"]), "a");
}

#[test]
fn tls_listens_on_every_address_given_ipv4_and_ipv6() {
    let pki = Pki::new();
    let cert = pki.leaf("site", Ecdsa, &[HOST]);
    let a = Backend::named("a");
    // The plain listener on a port of its own (port 0 would be in both lists).
    let plain = dead_addr();
    let extra = format!("[lb]\nlisten = {plain}\ntls_listen = 127.0.0.1:0, [::1]:0\n{NO_HEALTH}");
    let lb = Lb::start(&tls_ini(&[("a", a.addr)], &[("site", &cert)], &extra));
    let addrs = lb.tls_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");
    // The plain listener line is unchanged: plain listeners only.
    assert_eq!(lb.listening_on(), [plain]);
    for addr in addrs {
        assert_eq!(curl_ok(&pki, HOST, addr, &[], &["/"]), "a", "over {addr}");
    }
}

#[test]
fn eight_plain_and_eight_tls_listeners_all_accept() {
    let pki = Pki::new();
    let cert = pki.leaf("site", Ecdsa, &[HOST]);
    let a = Backend::named("a");
    let eight = |first: u8| -> String {
        let addrs: Vec<String> = (first..first + 8)
            .map(|i| format!("127.0.0.{i}:0"))
            .collect();
        addrs.join(", ")
    };
    let extra = format!(
        "[lb]\nlisten = {}\ntls_listen = {}\n{NO_HEALTH}",
        eight(1),
        eight(11)
    );
    let lb = Lb::start(&tls_ini(&[("a", a.addr)], &[("site", &cert)], &extra));
    let (plain, tls) = (lb.listening_on(), lb.tls_addrs());
    assert_eq!((plain.len(), tls.len()), (8, 8), "{plain:?} {tls:?}");
    for addr in plain {
        assert_eq!(get(addr, "/").status, 200, "plain {addr}");
    }
    // The last ones too: a worker has sixteen listeners, each with an event token of its own.
    for addr in tls {
        assert_eq!(curl_ok(&pki, HOST, addr, &[], &["/"]), "a", "over {addr}");
    }
}

#[test]
fn a_full_chain_file_is_served_whole() {
    let pki = Pki::new();
    let leaf = pki.chained_leaf("chained", &[HOST]);
    let a = Backend::named("a");
    let lb = Lb::start(&tls_ini(&[("a", a.addr)], &[("chained", &leaf)], NO_HEALTH));
    // The client trusts the root only: it checks out only with the intermediate sent too.
    let out = pki.s_client(lb.tls_addr(), Some(HOST), &[], b"");
    assert!(out.verified(), "{}", out.all());
    assert_eq!(
        out.chain_subjects(),
        ["CN = chained", "CN = lb-mio test intermediate"],
        "{}",
        out.all()
    );
    assert_eq!(curl_ok(&pki, HOST, lb.tls_addr(), &[], &["/"]), "a");
}

// ---------------------------------------------------------------------------------------------
// Protocols and versions
// ---------------------------------------------------------------------------------------------

#[test]
fn alpn_agrees_on_http11_refuses_h2_alone_and_serves_clients_without_alpn() {
    let site = Site::start("");
    let out = site.s_client(&["-alpn", "http/1.1"], "");
    assert_eq!(out.alpn(), Some("http/1.1"), "{}", out.all());
    let out = site.s_client(&["-alpn", "h2,http/1.1"], "");
    assert_eq!(out.alpn(), Some("http/1.1"), "{}", out.all());

    let out = site.s_client(&["-alpn", "h2"], "");
    assert!(
        !out.handshake_done(),
        "an h2-only client was served: {}",
        out.all()
    );
    assert!(
        out.stderr.contains("no application protocol"),
        "not refused with no_application_protocol: {}",
        out.all()
    );

    let out = site.s_client(&["-ign_eof"], GET_AND_CLOSE);
    assert!(out.handshake_done(), "{}", out.all());
    assert_eq!(out.alpn(), None);
    assert!(out.http().starts_with("HTTP/1.1 200"), "{}", out.all());
}

#[test]
fn curl_gets_answers_over_tls12_and_tls13() {
    let site = Site::start("");
    for (args, version) in [
        (&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2"),
        (&["--tlsv1.3"], "TLSv1.3"),
    ] {
        let mut all = vec!["-v"];
        all.extend(args);
        let out = curl(&site.pki, HOST, site.tls(), &all, &["/hello"]);
        assert!(
            out.status.is_some_and(|s| s.success()),
            "{args:?}: {}",
            out.stderr
        );
        assert_eq!(out.stdout, "a", "{args:?}");
        assert!(
            out.stderr
                .contains(&format!("SSL connection using {version}")),
            "{args:?} did not use {version}: {}",
            out.stderr
        );
        // curl offers h2 first; lb-mio picks http/1.1.
        assert!(out.stderr.contains("ALPN: offers h2"), "{}", out.stderr);
        assert!(
            out.stderr.contains("ALPN: server accepted http/1.1"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn tls10_and_tls11_clients_are_refused_and_counted_as_failed_handshakes() {
    let site = Site::start(ADMIN);
    for (flag, version) in [("-tls1", 0x0301), ("-tls1_1", 0x0302)] {
        let args = [flag, "-cipher", "DEFAULT@SECLEVEL=0"];
        // The client really offers that version, and only it.
        let hello = ClientHello::parse(&capture_client_hello(&args));
        assert_eq!(
            hello.versions(),
            [version],
            "{flag} offers {:x?}",
            hello.versions()
        );
        let out = site.s_client(&args, "");
        assert!(!out.handshake_done(), "{flag} was served: {}", out.all());
        assert!(
            !out.status.is_some_and(|s| s.success()),
            "{flag}: {}",
            out.all()
        );
    }
    let failed = [("result", "failed"), ("version", "none")];
    expect_metric(&site.lb, "lbmio_tls_handshakes_total", &failed, 2.0);
    assert_eq!(ok_handshakes(&site.lb), 0.0);
    // And a current client is served after them.
    assert_eq!(site.curl_ok(&[], &["/"]), "a");
}

// ---------------------------------------------------------------------------------------------
// Requests over TLS
// ---------------------------------------------------------------------------------------------

#[test]
fn requests_over_tls_reach_the_backend_marked_https_and_answers_come_back_whole() {
    let body = lcg_bytes(4 * 1024 * 1024, 7);
    let answer = body.clone();
    let site = Site::with_backend(
        Backend::start("a", move |_| Response::ok(answer.clone())),
        "",
    );
    let file = site.pki.path("body");
    // A client's own X-Forwarded-Proto is not believed: lb-mio says how it came.
    let spoof = [
        "-H",
        "X-Forwarded-Proto: http",
        "-o",
        file.to_str().unwrap(),
    ];
    site.curl_ok(&spoof, &["/tls?x=1"]);
    assert_same_bytes(&std::fs::read(&file).unwrap(), &body, "the body over TLS");
    let seen = site.backend.last_request();
    assert_eq!(seen.target, "/tls?x=1");
    assert_eq!(seen.header_all("X-Forwarded-Proto"), ["https"]);
    assert_eq!(
        seen.header("Host"),
        Some(format!("{HOST}:{}", site.tls().port()).as_str())
    );

    // The same balancer's plain listener says http, whatever the client claims.
    let plain = request(
        site.lb.addr,
        "GET /plain HTTP/1.1\r\nHost: lb.test\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    );
    assert_same_bytes(&plain.body, &body, "the body over plain HTTP");
    let seen = site.backend.last_request();
    assert_eq!(seen.header_all("X-Forwarded-Proto"), ["http"]);
}

#[test]
fn a_client_that_reads_slowly_holds_back_the_backend_not_lb_mio_memory() {
    let body = Arc::new(lcg_bytes(32 * 1024 * 1024, 11));
    let answer = Arc::clone(&body);
    let backend = Backend::start("a", move |_| Response::ok(answer.as_slice()));
    let site = Site::with_backend(backend, "");
    let pid = site.lb.pid();
    let before = rss(pid);
    let mut tls = tls_client(connect(site.tls()), &site.pki.ca, HOST);
    let request = format!("GET /big HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).expect("send over TLS");
    let mut first = vec![0u8; 64 * 1024];
    tls.read_exact(&mut first).expect("the first 64 KiB");
    // The client stops reading; the backend has 32 MiB to give.
    thread::sleep(Duration::from_secs(1));
    let grown = rss(pid).saturating_sub(before);
    assert!(
        grown < 16 * 1024 * 1024,
        "lb-mio took {} MiB in for a client that does not read",
        grown / (1024 * 1024)
    );
    let mut all = first;
    tls.read_to_end(&mut all)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Ok(0),
            _ => Err(e),
        })
        .expect("the rest of the response");
    let (head, rest) = split_response(&all);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_same_bytes(&rest, &body, "the body read slowly over TLS");
}

#[test]
fn a_request_for_a_host_the_certificate_does_not_cover_is_served() {
    let site = Site::start("");
    let out = site.curl_ok(&["-H", "Host: elsewhere.test"], &["/other"]);
    assert_eq!(out, "a");
    assert_eq!(
        site.backend.last_request().header("Host"),
        Some("elsewhere.test")
    );
}

#[test]
fn keep_alive_two_requests_on_one_connection_take_one_handshake() {
    let site = Site::start(ADMIN);
    let out = curl(&site.pki, HOST, site.tls(), &["-v"], &["/one", "/two"]);
    assert!(out.status.is_some_and(|s| s.success()), "{}", out.stderr);
    assert_eq!(out.stdout, "aa");
    assert!(
        out.stderr.contains("Re-using existing connection"),
        "curl opened a second connection: {}",
        out.stderr
    );
    let targets: Vec<String> = site
        .backend
        .requests()
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(targets, ["/one", "/two"]);
    assert_eq!(ok_handshakes(&site.lb), 1.0);
}

#[test]
fn pipelined_requests_over_tls_are_answered_in_order() {
    let backend = Backend::start("a", |req| Response::ok(format!("answer to {}", req.target)));
    let site = Site::with_backend(backend, "");
    // s_client sends what it reads from stdin in one go: both requests in one record.
    let requests = format!(
        "GET /first HTTP/1.1\r\nHost: {HOST}\r\n\r\n\
         GET /second HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    let out = site.s_client(&["-ign_eof"], &requests);
    let http = out.http();
    assert_eq!(http.matches("HTTP/1.1 200 OK").count(), 2, "{}", out.all());
    let first = http.find("answer to /first").expect("the first answer");
    let second = http.find("answer to /second").expect("the second answer");
    assert!(first < second, "answers out of order: {http}");
}

#[test]
fn a_chunked_request_body_and_a_chunked_response_cross_tls_intact() {
    let backend = Backend::start("a", |req| Response::ok(req.body.clone()).chunked(1000));
    let site = Site::with_backend(backend, "");
    let data: Vec<u8> = lcg_bytes(1024 * 1024, 3);
    let upload = site.pki.path("upload");
    let (download, headers) = (site.pki.path("download"), site.pki.path("headers"));
    std::fs::write(&upload, &data).unwrap();
    site.curl_ok(
        &[
            "--data-binary",
            &format!("@{}", upload.display()),
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
            "-o",
            download.to_str().unwrap(),
            "-D",
            headers.to_str().unwrap(),
        ],
        &["/upload"],
    );
    let request = site.backend.last_request();
    assert_eq!(request.method, "POST");
    assert_same_bytes(&request.body, &data, "the request body at the backend");
    let head = std::fs::read_to_string(&headers)
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_same_bytes(
        &std::fs::read(&download).unwrap(),
        &data,
        "the response body",
    );
}

#[test]
fn an_upgrade_over_tls_moves_bytes_both_ways() {
    let site = Site::with_backend(
        Backend::start("a", |_| Response::upgrade_echo("websocket")),
        "",
    );
    let ca = site.pki.ca_str();
    let mut client = SClient::start(site.tls(), &["-CAfile", ca, "-servername", HOST]);
    client.send(format!(
        "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    ));
    assert!(
        client.wait_for("HTTP/1.1 101 Switching Protocols", 1, WAIT),
        "no 101: {}",
        client.stdout()
    );
    for (i, message) in ["ping through tls\n", "and a second one\n"]
        .iter()
        .enumerate()
    {
        client.send(message);
        assert!(
            client.wait_for(message, 1, WAIT),
            "message {i} not echoed: {}",
            client.stdout()
        );
    }
    let out = client.finish();
    assert_eq!(
        out.http().matches("ping through tls").count(),
        1,
        "{}",
        out.all()
    );
    let request = site.backend.last_request();
    assert_eq!(request.header("X-Forwarded-Proto"), Some("https"));
}

// ---------------------------------------------------------------------------------------------
// Session resumption
// ---------------------------------------------------------------------------------------------

/// A full handshake at `from` saving the session to `session`, then one at `to` offering it
/// (the same balancer, or another): (first, second).
fn carry_session(
    pki: &Pki,
    (from, to): (SocketAddr, SocketAddr),
    version: &str,
    session: &str,
) -> (SOut, SOut) {
    let connect = |addr, how| {
        let args = [version, how, session, "-ign_eof"];
        pki.s_client(addr, Some(HOST), &args, GET_AND_CLOSE.as_bytes())
    };
    (connect(from, "-sess_out"), connect(to, "-sess_in"))
}

#[test]
fn a_session_resumes_and_is_counted_in_tls13_and_in_tls12() {
    for (flag, version) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let site = Site::start(ADMIN);
        let session = site.pki.path("session.pem");
        let (first, second) = carry_session(
            &site.pki,
            (site.tls(), site.tls()),
            flag,
            session.to_str().unwrap(),
        );
        assert!(first.handshake_done() && !first.reused(), "{}", first.all());
        assert!(second.reused(), "{version} not resumed:\n{}", second.all());
        assert_eq!(second.protocol(), Some(version));
        assert!(
            second.http().starts_with("HTTP/1.1 200"),
            "{}",
            second.all()
        );
        expect_metric(&site.lb, "lbmio_tls_resumed_total", &[], 1.0);
    }
}

/// Saves a session from a connection made with `args`, then resumes it `times` times on new
/// connections; panics at one that is not resumed. Returns the first connection's output.
#[track_caller]
fn resume_times(site: &Site, args: &[&str], file: &str, times: usize) -> SOut {
    let session = site.pki.path(file);
    let session = session.to_str().unwrap();
    let first = site.s_client(
        &[args, &["-sess_out", session, "-ign_eof"]].concat(),
        GET_AND_CLOSE,
    );
    assert!(first.handshake_done(), "{args:?}: {}", first.all());
    for i in 0..times {
        let out = site.s_client(
            &[args, &["-sess_in", session, "-ign_eof"]].concat(),
            GET_AND_CLOSE,
        );
        assert!(
            out.reused(),
            "{args:?}: connection {i} not resumed:\n{}",
            out.all()
        );
    }
    first
}

#[test]
fn sessions_resume_on_any_worker() {
    // Four workers, each with a listener of its own: the kernel spreads connections over them.
    let site = Site::start(&format!("[lb]\nworkers = 4\n{ADMIN}"));
    // TLS 1.2 without tickets resumes from the session cache that all workers share.
    let first = resume_times(&site, &["-tls1_2", "-no_ticket"], "cached.pem", 8);
    assert!(
        !first.stdout.contains("TLS session ticket:"),
        "a ticket: {}",
        first.all()
    );
    // TLS 1.3 resumes from a ticket, which every worker can open.
    resume_times(&site, &["-tls1_3"], "ticket.pem", 8);
    expect_metric(&site.lb, "lbmio_tls_resumed_total", &[], 16.0);
}

#[test]
fn without_a_ticket_key_file_each_process_has_keys_of_its_own() {
    let pki = Pki::new();
    let cert = pki.leaf("site", Ecdsa, &[HOST]);
    let a = Backend::named("a");
    let start = || Lb::start(&tls_ini(&[("a", a.addr)], &[("site", &cert)], NO_HEALTH));
    let (first, second) = (start(), start());
    let session = pki.path("session.pem");
    let session = session.to_str().unwrap();
    let addrs = (first.tls_addr(), second.tls_addr());
    let (saved, out) = carry_session(&pki, addrs, "-tls1_3", session);
    assert!(saved.handshake_done(), "{}", saved.all());
    assert!(out.handshake_done(), "{}", out.all());
    assert!(
        !out.reused(),
        "another process opened the ticket:\n{}",
        out.all()
    );
}

#[test]
fn two_processes_sharing_a_ticket_key_file_resume_each_others_sessions() {
    let pki = Pki::new();
    let cert = pki.leaf("site", Ecdsa, &[HOST]);
    let a = Backend::named("a");
    let shared = pki.ticket_keys("shared.keys", 1);
    let other = pki.ticket_keys("other.keys", 1);
    let start = |keys: &Path| {
        let extra = format!(
            "{NO_HEALTH}{ADMIN}[tls]\nticket_key_file = {}\n",
            keys.display()
        );
        Lb::start(&tls_ini(&[("a", a.addr)], &[("site", &cert)], &extra))
    };
    let (first, second, stranger) = (start(&shared), start(&shared), start(&other));
    for version in ["-tls1_3", "-tls1_2"] {
        let session = pki.path(&format!("session{version}.pem"));
        let session = session.to_str().unwrap();
        let out = pki.s_client(
            first.tls_addr(),
            Some(HOST),
            &[version, "-sess_out", session, "-ign_eof"],
            GET_AND_CLOSE.as_bytes(),
        );
        assert!(
            out.handshake_done() && !out.reused(),
            "{version}: {}",
            out.all()
        );
        let resume = |lb: &Lb| {
            pki.s_client(
                lb.tls_addr(),
                Some(HOST),
                &[version, "-sess_in", session, "-ign_eof"],
                GET_AND_CLOSE.as_bytes(),
            )
        };
        let out = resume(&second);
        assert!(
            out.reused(),
            "{version}: not resumed at the process sharing the keys:\n{}",
            out.all()
        );
        assert!(out.http().starts_with("HTTP/1.1 200"), "{}", out.all());
        let out = resume(&stranger);
        assert!(out.handshake_done(), "{version}: {}", out.all());
        assert!(
            !out.reused(),
            "{version}: resumed with other keys:\n{}",
            out.all()
        );
    }
    expect_metric(&second, "lbmio_tls_resumed_total", &[], 2.0);
    expect_metric(&stranger, "lbmio_tls_resumed_total", &[], 0.0);
}

#[test]
fn a_ticket_key_moved_to_the_second_line_still_decrypts() {
    let pki = Pki::new();
    let cert = pki.leaf("site", Ecdsa, &[HOST]);
    let a = Backend::named("a");
    let old = pki.ticket_keys("old.keys", 1);
    let old_key = std::fs::read_to_string(&old).unwrap();
    let new = pki.ticket_keys("new.keys", 1);
    let rotated = pki.path("rotated.keys");
    std::fs::write(&rotated, std::fs::read_to_string(&new).unwrap() + &old_key).unwrap();
    let start = |keys: &Path| {
        let extra = format!("{NO_HEALTH}[tls]\nticket_key_file = {}\n", keys.display());
        Lb::start(&tls_ini(&[("a", a.addr)], &[("site", &cert)], &extra))
    };
    let (before, after) = (start(&old), start(&rotated));
    let session = pki.path("session.pem");
    let session = session.to_str().unwrap();
    let addrs = (before.tls_addr(), after.tls_addr());
    let (saved, out) = carry_session(&pki, addrs, "-tls1_3", session);
    assert!(saved.handshake_done(), "{}", saved.all());
    assert!(
        out.reused(),
        "a ticket under the second key did not resume:\n{}",
        out.all()
    );
}

#[test]
fn the_ticket_key_file_is_read_again_on_sighup() {
    let pki = Pki::new();
    let cert = pki.leaf("site", Ecdsa, &[HOST]);
    let a = Backend::named("a");
    let keys = pki.ticket_keys("live.keys", 1);
    let extra = format!("{NO_HEALTH}[tls]\nticket_key_file = {}\n", keys.display());
    let lb = Lb::start(&tls_ini(&[("a", a.addr)], &[("site", &cert)], &extra));
    let (old, new) = (pki.path("old.pem"), pki.path("new.pem"));
    let (old, new) = (old.to_str().unwrap(), new.to_str().unwrap());
    let connect = |args: &[&str]| {
        let args = [&["-tls1_3", "-ign_eof"], args].concat();
        pki.s_client(lb.tls_addr(), Some(HOST), &args, GET_AND_CLOSE.as_bytes())
    };
    let reload = |text: String| {
        std::fs::write(&keys, text).unwrap();
        let before = lb.count_log("reloaded ");
        lb.signal("HUP");
        lb.expect_log_count("reloaded ", before + 1, WAIT);
    };
    assert!(connect(&["-sess_out", old]).handshake_done());
    assert!(
        connect(&["-sess_in", old]).reused(),
        "no resumption before the reload"
    );

    // A new key alone: tickets under the first one no longer open.
    let second_key = openssl(&pki.path(""), &["rand", "-hex", "32"]);
    reload(second_key.clone());
    let out = connect(&["-sess_in", old]);
    assert!(
        out.handshake_done() && !out.reused(),
        "the dropped key still decrypts:\n{}",
        out.all()
    );
    assert!(connect(&["-sess_out", new]).handshake_done());

    // Rotated: a third key first, the second kept for decrypting.
    let third_key = openssl(&pki.path(""), &["rand", "-hex", "32"]);
    reload(third_key + &second_key);
    assert!(
        connect(&["-sess_in", new]).reused(),
        "the second line no longer decrypts"
    );
    assert!(!connect(&["-sess_in", old]).reused());
}

// ---------------------------------------------------------------------------------------------
// Reloading certificates
// ---------------------------------------------------------------------------------------------

/// A balancer whose second certificate entry, `live`, is read from files the test rewrites;
/// the default entry covers `main.test` only.
struct Reloadable {
    lb: Lb,
    _backend: Backend,
    cert: PathBuf,
    key: PathBuf,
    old: Leaf,
    new: Leaf,
    pki: Pki,
}

impl Reloadable {
    fn start() -> Reloadable {
        let pki = Pki::new();
        let main = pki.leaf("main", Ecdsa, &["main.test"]);
        let old = pki.leaf("old", Ecdsa, &[HOST]);
        let new = pki.leaf("new", Rsa, &[HOST, "b.example.com"]);
        let (cert, key) = (pki.path("live.pem"), pki.path("live.key"));
        install(&old, &cert, &key);
        let backend = Backend::named("a");
        let entries = [
            ("main", main.entry()),
            ("live", format!("{} {}", cert.display(), key.display())),
        ];
        let config = tls_ini_entries(&[("a", backend.addr)], &entries, NO_HEALTH);
        Reloadable {
            lb: Lb::start(&config),
            _backend: backend,
            cert,
            key,
            old,
            new,
            pki,
        }
    }

    /// The common name of the certificate served for `name`.
    fn served(&self, name: &str) -> String {
        let out = self.pki.s_client(self.lb.tls_addr(), Some(name), &[], b"");
        out.subject_cn()
            .unwrap_or_else(|| panic!("no certificate for {name}: {}", out.all()))
            .to_string()
    }

    /// Sends SIGHUP and waits (≤ `WAIT`) until `name` is served the certificate `cn`.
    #[track_caller]
    fn hup_until_served(&self, name: &str, cn: &str) {
        self.lb.signal("HUP");
        let mut last = String::new();
        let held = wait_until(WAIT, || {
            last = self.served(name);
            last == cn
        });
        assert!(
            held,
            "{name} still gets {last} after SIGHUP, not {cn}; log:\n{}",
            self.lb.log_text()
        );
    }
}

#[test]
fn sighup_makes_new_handshakes_use_a_replaced_certificate() {
    let site = Reloadable::start();
    assert_eq!(site.served(HOST), "old");
    // b.example.com is in no certificate yet: the default.
    assert_eq!(site.served("b.example.com"), "main");
    install(&site.new, &site.cert, &site.key);
    site.hup_until_served(HOST, "new");
    // The new certificate's names count for SNI now.
    assert_eq!(site.served("b.example.com"), "new");
    assert_eq!(site.served("main.test"), "main");
}

#[test]
fn a_broken_certificate_file_on_sighup_keeps_the_old_certificate_and_names_the_file() {
    let mut site = Reloadable::start();
    std::fs::write(&site.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    site.lb.signal("HUP");
    let needle = format!("reload: [certificates] live: {}: ", site.cert.display());
    site.lb.expect_log(&needle, WAIT);
    let line = site.lb.log_lines_with(&needle).remove(0);
    assert!(line.contains("the old certificate stays"), "{line}");
    assert_eq!(site.served(HOST), "old");
    site.lb.assert_alive();
    // Fixed, the next reload takes it.
    install(&site.new, &site.cert, &site.key);
    site.hup_until_served(HOST, "new");
}

#[test]
fn a_certificate_reload_under_load_fails_no_request() {
    let site = Reloadable::start();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let plain = Load::start(site.lb.addr, 1);
    // Two threads of sequential curl runs: a new TLS handshake each (at most 300 each, 30 s).
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            let (ca, addr) = (site.pki.ca.clone(), site.lb.tls_addr());
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                for _ in 0..300 {
                    if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                        return;
                    }
                    let out = run_within(
                        std::process::Command::new("curl")
                            .args(["-sS", "--max-time", "5", "--cacert"])
                            .arg(&ca)
                            .arg("--resolve")
                            .arg(format!("{HOST}:{}:127.0.0.1", addr.port()))
                            .arg(format!("https://{HOST}:{}/", addr.port())),
                        TOOL_TIMEOUT,
                    )
                    .expect("run curl");
                    if out.status.is_some_and(|s| s.success()) && out.stdout == "a" {
                        ok.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{:?} {}", out.status, out.stderr));
                    }
                }
            })
        })
        .collect();
    let (old, new) = (&site.old, &site.new);
    for (round, leaf) in [new, old, new, old].into_iter().enumerate() {
        let before = ok.load(Ordering::SeqCst);
        install(leaf, &site.cert, &site.key);
        site.hup_until_served(HOST, &leaf.cn);
        // Some handshakes after this reload before the next.
        let moved = wait_until(WAIT, || ok.load(Ordering::SeqCst) >= before + 5);
        assert!(moved, "round {round}: the curl clients stalled");
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    let (plain_ok, plain_failures) = plain.finish();
    assert_eq!(
        *failures.lock().unwrap(),
        Vec::<String>::new(),
        "failed TLS requests"
    );
    assert_eq!(
        plain_failures,
        Vec::<String>::new(),
        "failed plain requests"
    );
    assert!(plain_ok > 0);
}

// ---------------------------------------------------------------------------------------------
// --check
// ---------------------------------------------------------------------------------------------

#[test]
fn check_fails_on_a_bad_certificate_entry_naming_the_line_and_the_file() {
    let pki = Pki::new();
    let good = pki.leaf("good", Ecdsa, &[HOST]);
    let stray = pki.stray_key("stray.key", Ecdsa);
    let missing = pki.path("missing.pem");
    let unreadable = pki.path("unreadable.pem");
    std::fs::copy(&good.cert, &unreadable).unwrap();
    let (cert, key) = (good.cert.clone(), good.key.clone());
    let mut cases = vec![
        (
            "a missing certificate file",
            missing.clone(),
            key.clone(),
            vec![missing.clone()],
        ),
        (
            "a missing key file",
            cert.clone(),
            missing.clone(),
            vec![missing.clone()],
        ),
        (
            "no certificate in the file",
            key.clone(),
            key.clone(),
            vec![key.clone()],
        ),
        (
            "no key in the file",
            cert.clone(),
            cert.clone(),
            vec![cert.clone()],
        ),
        // Either file may be the one named: it is the pair that does not match.
        (
            "a key that does not match",
            cert.clone(),
            stray.clone(),
            vec![cert.clone(), stray.clone()],
        ),
    ];
    if running_as_root() {
        eprintln!("running as root: chmod 000 does not stop root reading, so that case is skipped");
    } else {
        let mut mode = std::fs::metadata(&unreadable).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o000);
        std::fs::set_permissions(&unreadable, mode).unwrap();
        cases.push((
            "an unreadable file",
            unreadable.clone(),
            key.clone(),
            vec![unreadable.clone()],
        ));
    }
    for (case, cert, key, named) in cases {
        let entries = [
            ("good", good.entry()),
            ("bad", format!("{} {}", cert.display(), key.display())),
        ];
        let text = tls_ini_entries(&[("a", dead_addr())], &entries, "");
        let config = TempFile::new(".ini", text.as_bytes());
        let (status, _, err) = run_cli(&["--check", config.path_str()]);
        assert_eq!(status.code(), Some(1), "{case}: {status}: {err}");
        let line = line_of(&text, "bad =");
        let prefix = format!("lb-mio: {}:{line}: [certificates] bad: ", config.path_str());
        let message = err
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{case}: no message starting {prefix:?}: {err}"));
        let rest = &message[prefix.len()..];
        assert!(
            named
                .iter()
                .any(|f| rest.starts_with(&format!("{}: ", f.display()))),
            "{case}: {message:?} does not name {named:?}"
        );
    }
}

#[test]
fn check_warns_about_expired_and_soon_expiring_certificates_but_passes() {
    let pki = Pki::new();
    let good = pki.leaf("good", Ecdsa, &[HOST]);
    let expired = pki.leaf_valid(
        "expired",
        Ecdsa,
        &["old.example.com"],
        Validity::Between("20200101000000Z", "20200201000000Z"),
    );
    let soon = pki.leaf_valid("soon", Rsa, &["soon.example.com"], Validity::Days(5));
    let certs = [("good", &good), ("expired", &expired), ("soon", &soon)];
    let text = tls_ini(&[("a", dead_addr())], &certs, "");
    let config = TempFile::new(".ini", text.as_bytes());
    let (status, _, err) = run_cli(&["--check", config.path_str()]);
    assert!(status.success(), "{status}: {err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("warn"))
        .collect();
    for leaf in [&expired, &soon] {
        assert!(
            warnings
                .iter()
                .any(|l| l.contains(&leaf.cn) || l.contains(leaf.cert_str())),
            "no warning names {}: {err}",
            leaf.cn
        );
    }
    assert!(
        !warnings
            .iter()
            .any(|l| l.contains("good") || l.contains(good.cert_str())),
        "a warning about the good certificate: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// redirect_http and hsts
// ---------------------------------------------------------------------------------------------

#[test]
fn redirect_http_answers_plain_requests_with_308_to_the_tls_port() {
    let site = Site::start("[tls]\nredirect_http = on\n");
    let port = site.tls().port();
    for (host, target, name) in [
        ("shop.example", "/path?q=1", "shop.example"),
        ("shop.example:8080", "/cart?id=7&x", "shop.example"),
        ("a.example.com", "/", "a.example.com"),
        ("[::1]:8080", "/v6", "[::1]"),
        ("[2001:db8::1]", "/v6?a=b", "[2001:db8::1]"),
    ] {
        let resp = request(
            site.lb.addr,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(resp.status, 308, "{host}{target}: {}", resp.head_str());
        let want = format!("https://{name}:{port}{target}");
        assert_eq!(
            resp.header("Location"),
            Some(want.as_str()),
            "{host}{target}"
        );
    }
    assert_eq!(
        site.backend.request_count(),
        0,
        "a redirected request reached the backend"
    );
    // Over TLS, requests are served.
    assert_eq!(site.curl_ok(&[], &["/path?q=1"]), "a");
}

#[test]
fn hsts_is_added_to_responses_over_tls_only() {
    let site = Site::start("[tls]\nhsts = 31536000\n");
    let head = site.curl_ok(&["-s", "-D", "-", "-o", "/dev/null"], &["/"]);
    let hsts: Vec<&str> = head
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("strict-transport-security:")
        })
        .collect();
    assert_eq!(hsts.len(), 1, "{head}");
    assert_eq!(
        hsts[0].split_once(':').unwrap().1.trim(),
        "max-age=31536000"
    );
    let plain = get(site.lb.addr, "/");
    assert_eq!(plain.status, 200);
    assert!(
        !plain.has_header("Strict-Transport-Security"),
        "{}",
        plain.head_str()
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile clients
// ---------------------------------------------------------------------------------------------

#[test]
fn plain_http_to_the_tls_port_gets_a_clear_text_400_and_a_close() {
    let site = Site::start(ACCESS_LOG);
    let mut stream = connect(site.tls());
    send(
        &mut stream,
        format!("GET /plain-on-tls HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
    );
    let resp = read_response(&mut stream);
    assert_eq!(resp.status, 400, "{}", resp.head_str());
    let body = resp.body_str().to_ascii_lowercase();
    assert!(
        body.contains("tls") || body.contains("https"),
        "the body does not say why: {body:?}"
    );
    assert!(
        closes_within(&mut stream, WAIT),
        "the connection stayed open"
    );
    assert_eq!(site.backend.request_count(), 0);
    let line = access_line(&site.lb, "/plain-on-tls");
    assert!(line.contains(" 400 ") && line.contains(" PR "), "{line}");
}

#[test]
fn a_client_hello_sent_one_byte_at_a_time_is_answered() {
    let site = Site::start("");
    let hello = capture_client_hello(&["-servername", HOST]);
    let mut stream = connect(site.tls());
    for byte in &hello {
        stream.write_all(&[*byte]).unwrap();
        thread::sleep(Duration::from_millis(1));
    }
    let answer = read_some(&mut stream, 6);
    assert!(
        is_handshake_record(&answer),
        "no handshake record back: {answer:02x?}"
    );
    assert_eq!(answer.get(5), Some(&2), "not a ServerHello: {answer:02x?}");
}

#[test]
fn a_client_hello_split_over_two_records_is_answered() {
    let site = Site::start("");
    let hello = capture_client_hello(&["-servername", HOST]);
    // The same handshake message, framed as two records (legal, and what a long hello with
    // post-quantum key shares may need).
    let message = &hello[5..];
    let mut split = Vec::new();
    for part in [&message[..40], &message[40..]] {
        split.extend_from_slice(&[0x16, 0x03, 0x01]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    let mut stream = connect(site.tls());
    send(&mut stream, &split);
    let answer = read_some(&mut stream, 6);
    assert!(
        is_handshake_record(&answer),
        "no handshake record back: {answer:02x?}"
    );
    assert_eq!(answer.get(5), Some(&2), "not a ServerHello: {answer:02x?}");
}

#[test]
fn a_handshake_that_stops_half_way_is_closed_at_header_ms_and_its_descriptor_returns() {
    let site = Site::start(&format!("{ACCESS_LOG}[timeouts]\nheader_ms = 500\n"));
    let hello = capture_client_hello(&["-servername", HOST]);
    let baseline = open_fds(site.lb.pid());
    let mut stream = connect(site.tls());
    send(&mut stream, &hello[..hello.len() / 2]);
    let sent = Instant::now();
    assert!(
        stays_open(&mut stream, Duration::from_millis(300)),
        "closed before header_ms"
    );
    assert!(
        closes_within(&mut stream, WAIT),
        "still open after header_ms"
    );
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "closed only after {waited:?}"
    );
    let back = wait_until(WAIT, || open_fds(site.lb.pid()) <= baseline);
    assert!(
        back,
        "{} descriptors, {baseline} before",
        open_fds(site.lb.pid())
    );
    let timed_out = wait_until(WAIT, || site.lb.count_log(" cR ") == 1);
    assert!(
        timed_out,
        "no access line with cR; log:\n{}",
        site.lb.log_text()
    );
}

/// Opens `count` connections to `addr`, each sending `half` (half a ClientHello) and no more;
/// returns them and how long opening them took.
fn stalled_handshakes(addr: SocketAddr, count: usize, half: &[u8]) -> (Vec<TcpStream>, Duration) {
    let started = Instant::now();
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = try_connect(addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connection {i} after {:?}: {e}", started.elapsed()));
        send_lenient(&mut stream, half);
        streams.push(stream);
    }
    (streams, started.elapsed())
}

/// Asserts that lb-mio closes every one of `streams` (EOF or reset) within 20 s in all.
#[track_caller]
fn all_closed(streams: &mut [TcpStream]) {
    let count = streams.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, stream) in streams.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero() && closes_within(stream, left.min(WAIT)),
            "connection {i} of {count} still open"
        );
    }
}

#[test]
fn thousands_of_stalled_handshakes_are_all_closed_and_memory_and_descriptors_come_back() {
    // 10,000 as in the issue when both processes may hold that many descriptors (each end of
    // each connection is one); fewer under a lower limit, leaving room for the other tests.
    let site = Site::start("[timeouts]\nheader_ms = 5000\n[limits]\nmax_connections = 20000\n");
    let pid = site.lb.pid();
    let limit = nofile_limit("self").min(nofile_limit(&pid.to_string()));
    let count = 10_000.min(limit.saturating_sub(1_500));
    assert!(
        count >= 1_000,
        "only {limit} descriptors allowed: too few for this test"
    );
    if count < 10_000 {
        eprintln!("RLIMIT_NOFILE is {limit}: {count} connections instead of 10,000");
    }
    let hello = capture_client_hello(&["-servername", HOST]);
    let half = &hello[..hello.len() / 2];
    // Warm up (one full request), so the baseline has what any connection allocates once.
    assert_eq!(site.curl_ok(&[], &["/"]), "a");
    let (fds_before, rss_before) = (open_fds(pid), rss(pid));
    let mib = |b: u64| b / (1024 * 1024);

    // Two floods. Memory the first left behind that is kept for reuse (the allocator's) is
    // taken again by the second; memory lost (a leak) is not, and the second flood's peak per
    // connection held, counted from the baseline, comes out higher by what leaked.
    let mut report = format!(
        "{count} connections a flood; before: {fds_before} fds, {} MiB",
        mib(rss_before)
    );
    let (mut per_connection, mut kept) = (Vec::new(), Vec::new());
    for round in 1..=2 {
        let (mut streams, took) = stalled_handshakes(site.tls(), count, half);
        // lb-mio may still be taking in the last half hellos (header_ms is 5 s).
        thread::sleep(Duration::from_millis(300));
        let (fds_peak, rss_peak) = (open_fds(pid), rss(pid));
        all_closed(&mut streams);
        drop(streams);
        let back = wait_until(WAIT, || open_fds(pid) <= fds_before);
        let rss_after = rss(pid);
        report += &format!(
            "; flood {round} opened in {took:?}: peak {fds_peak} fds, {} MiB, then {} fds, {} MiB",
            mib(rss_peak),
            open_fds(pid),
            mib(rss_after)
        );
        assert!(back, "descriptors did not come back: {report}");
        // Held at once: most of the stalled handshakes were really there together.
        let held = fds_peak.saturating_sub(fds_before);
        assert!(held >= count / 2, "the flood was not held: {report}");
        per_connection.push((rss_peak - rss_before) as f64 / held as f64);
        kept.push((rss_after - rss_before, rss_peak - rss_before));
    }
    eprintln!("{report}");
    assert!(
        per_connection[1] <= per_connection[0] * 1.25,
        "memory leaks: {:.0} bytes per held connection at the second peak, {:.0} at the first: {report}",
        per_connection[1],
        per_connection[0]
    );
    // Near baseline: what the worker's buffer pool keeps by design (at most 1024 buffers of
    // 16 KiB), and at most a quarter of the rest of what the flood took.
    const POOL: u64 = 1024 * 16 * 1024;
    for (round, &(left, took)) in kept.iter().enumerate() {
        assert!(
            left <= POOL + took / 4,
            "memory did not come back after flood {}: {} of its {} MiB stay \
             (kept, not leaked: the leak check above passed): {report}",
            round + 1,
            mib(left),
            mib(took)
        );
    }
    assert_eq!(site.curl_ok(&[], &["/"]), "a");
}

#[test]
fn garbage_is_closed_unanswered_and_lb_mio_keeps_serving() {
    let site = Site::start(ACCESS_LOG);
    let hello = capture_client_hello(&["-servername", HOST]);
    let mut cases: Vec<(String, Vec<u8>, bool)> = [5usize, 100, 3000]
        .iter()
        .enumerate()
        .map(|(seed, &len)| {
            let mut bytes = lcg_bytes(len, seed as u64);
            bytes[0] |= 0x80; // not a record type, nor the start of an HTTP method
            (format!("{len} random bytes"), bytes, false)
        })
        .collect();
    let mut oversized = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    oversized.extend(lcg_bytes(1000, 9));
    cases.push(("a record announcing 64 KiB".into(), oversized, false));
    let mut bad_hello = vec![0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04];
    bad_hello.extend([0xde, 0xad, 0xbe, 0xef]);
    cases.push(("a ClientHello that is not one".into(), bad_hello, false));
    cases.push((
        "half a ClientHello, then EOF".into(),
        hello[..hello.len() / 2].to_vec(),
        true,
    ));

    for (case, bytes, then_eof) in &cases {
        let mut stream = connect(site.tls());
        send_lenient(&mut stream, bytes);
        if *then_eof {
            stream.shutdown(Shutdown::Write).unwrap();
        }
        let started = Instant::now();
        let back = read_to_close(&mut stream);
        // No reply: nothing, or at most a TLS alert record (type 0x15) saying why.
        assert!(
            back.is_empty() || back[0] == 0x15 && back.len() <= 7,
            "{case}: got {back:02x?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{case}: closed only at the timeout"
        );
    }
    assert_eq!(site.curl_ok(&[], &["/"]), "a");
    site.lb.sync_log();
    let closed = wait_until(WAIT, || site.lb.count_log(" CR ") >= cases.len());
    assert!(
        closed,
        "expected {} access lines with CR; log:\n{}",
        cases.len(),
        site.lb.log_text()
    );
    let mut lb = site.lb;
    lb.assert_alive();
}

#[test]
fn handshake_rate_makes_a_flood_wait_its_turn_while_an_established_client_is_served() {
    let site = Site::start("[tls]\nhandshake_rate = 4\n");
    let ca = site.pki.ca_str();
    let mut established = SClient::start(site.tls(), &["-servername", HOST, "-CAfile", ca]);
    assert!(
        established.wait_for("Verify return code", 1, WAIT),
        "{}",
        established.stdout()
    );
    // 20 new handshakes at 4 a second: at least four seconds' turns, so at least three
    // seconds from the first to the last (all at once they take well under one).
    const FLOOD: usize = 20;
    let started = Instant::now();
    let (done, served_in) = thread::scope(|scope| {
        let flood: Vec<_> = (0..FLOOD)
            .map(|_| scope.spawn(|| site.s_client(&[], "").handshake_done()))
            .collect();
        thread::sleep(Duration::from_millis(300));
        let asked = Instant::now();
        established.send(format!("GET /during HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
        let answered = established.wait_for("HTTP/1.1 200", 1, WAIT);
        let served_in = answered.then(|| asked.elapsed());
        let done = flood
            .into_iter()
            .map(|t| t.join())
            .filter(|joined| matches!(joined, Ok(true)))
            .count();
        (done, served_in)
    });
    let took = started.elapsed();
    assert_eq!(done, FLOOD, "handshakes refused instead of waiting");
    assert!(
        took >= Duration::from_millis(2500),
        "{FLOOD} handshakes in {took:?}: no cap"
    );
    let served_in = served_in.expect("the established client got no answer during the flood");
    assert!(
        served_in < Duration::from_secs(1),
        "the established client waited {served_in:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics, admin API, access log
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_count_handshakes_by_result_and_version() {
    let site = Site::start(ADMIN);
    for args in [
        &["-tls1_3"][..],
        &["-tls1_3"],
        &["-tls1_2"],
        &["-alpn", "h2"],
    ] {
        site.s_client(&[args, &["-ign_eof"]].concat(), GET_AND_CLOSE);
    }
    let count = |result, version| [("result", result), ("version", version)];
    for (labels, want) in [
        (count("ok", "TLSv1.3"), 2.0),
        (count("ok", "TLSv1.2"), 1.0),
        (count("failed", "none"), 1.0),
    ] {
        expect_metric(&site.lb, "lbmio_tls_handshakes_total", &labels, want);
    }
    expect_metric(&site.lb, "lbmio_tls_resumed_total", &[], 0.0);
}

#[test]
fn a_handshake_with_no_request_after_it_is_counted() {
    // What a certificate monitor does: `openssl s_client </dev/null`, or a client that
    // connects ahead of need and stays idle.
    let site = Site::start(ADMIN);
    let out = site.s_client(&["-tls1_3"], "");
    assert!(out.handshake_done(), "{}", out.all());
    let out = site.s_client(&["-tls1_2"], "");
    assert!(out.handshake_done(), "{}", out.all());
    let idle = SClient::start(
        site.tls(),
        &["-servername", HOST, "-CAfile", site.pki.ca_str()],
    );
    assert!(
        idle.wait_for("Verify return code", 1, WAIT),
        "{}",
        idle.stdout()
    );
    let ok13 = [("result", "ok"), ("version", "TLSv1.3")];
    expect_metric(&site.lb, "lbmio_tls_handshakes_total", &ok13, 2.0);
    let ok12 = [("result", "ok"), ("version", "TLSv1.2")];
    expect_metric(&site.lb, "lbmio_tls_handshakes_total", &ok12, 1.0);
    drop(idle);
}

#[test]
fn certificate_expiry_shows_in_metrics_and_the_api() {
    let pki = Pki::new();
    let ec = pki.leaf("ec", Ecdsa, &[HOST, "*.a.example.com"]);
    let rsa = pki.leaf_valid("rsa", Rsa, &["b.example.com"], Validity::Days(400));
    let soon = pki.leaf_valid("soon", Ecdsa, &["soon.example.com"], Validity::Days(5));
    let a = Backend::named("a");
    let certs = [("ec", &ec), ("rsa", &rsa), ("soon", &soon)];
    let lb = Lb::start(&tls_ini(
        &[("a", a.addr)],
        &certs,
        &format!("{NO_HEALTH}{ADMIN}"),
    ));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    for (name, leaf) in certs {
        let expiry = metric(
            &lb,
            "lbmio_tls_certificate_expiry_seconds",
            &[("certificate", name)],
        );
        assert_eq!(expiry, leaf.not_after() as f64, "{name}");
    }

    let resp = admin_request(lb.admin_addr(), "GET", "/api/certificates", None, None);
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let list = json_body(&resp);
    let list = list
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"));
    assert_eq!(list.len(), certs.len(), "{list:?}");
    for (name, leaf) in certs {
        let entry = list
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {list:?}"));
        let names: BTreeSet<&str> = entry["names"]
            .as_array()
            .unwrap_or_else(|| panic!("{entry}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let want: BTreeSet<&str> = leaf.names.iter().map(String::as_str).collect();
        assert_eq!(names, want, "{name}");
        let not_after = entry["not_after"].as_str().and_then(utc_seconds);
        assert_eq!(not_after, Some(leaf.not_after()), "{name}: {entry}");
        let days = entry["expires_in_days"]
            .as_i64()
            .unwrap_or_else(|| panic!("{entry}"));
        let exact = (leaf.not_after() - now) as f64 / 86_400.0;
        assert!(
            (days as f64 - exact).abs() <= 1.0,
            "{name}: {days} days, really {exact:.2}"
        );
        assert_eq!(entry["key"], leaf.kind.api_name(), "{name}");
        assert_eq!(entry["chain"], leaf.cert_str(), "{name}");
        assert_eq!(entry["key_file"], leaf.key.to_str().unwrap(), "{name}");
    }
}

#[test]
fn the_access_log_ends_with_the_tls_field() {
    let site = Site::start(ACCESS_LOG);
    site.curl_ok(
        &["--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"],
        &["/log-13"],
    );
    let line = access_line(&site.lb, "/log-13");
    assert_eq!(
        tls_field(&line),
        "TLSv1.3/TLS13_AES_128_GCM_SHA256/a.example.com/full",
        "{line}"
    );

    let args = [
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        "--ciphers",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ];
    site.curl_ok(&args, &["/log-12"]);
    let line = access_line(&site.lb, "/log-12");
    let parts: Vec<&str> = tls_field(&line).split('/').collect();
    assert_eq!(parts.len(), 4, "{line}");
    assert_eq!(
        (parts[0], parts[2], parts[3]),
        ("TLSv1.2", HOST, "full"),
        "{line}"
    );
    assert!(
        parts[1].contains("ECDHE_ECDSA") && parts[1].contains("AES_128_GCM"),
        "{line}"
    );

    let request = "GET /log-nosni HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n";
    let out = site
        .pki
        .s_client(site.tls(), None, &["-ign_eof"], request.as_bytes());
    assert!(out.handshake_done(), "{}", out.all());
    let line = access_line(&site.lb, "/log-nosni");
    assert!(tls_field(&line).ends_with("/-/full"), "{line}");

    let session = site.pki.path("session.pem");
    let session = session.to_str().unwrap();
    let request = "GET /log-resumed HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n";
    site.s_client(&["-sess_out", session, "-ign_eof"], GET_AND_CLOSE);
    let out = site.s_client(&["-sess_in", session, "-ign_eof"], request);
    assert!(out.reused(), "{}", out.all());
    let line = access_line(&site.lb, "/log-resumed");
    assert!(
        tls_field(&line).ends_with("/a.example.com/resumed"),
        "{line}"
    );

    get(site.lb.addr, "/log-plain");
    let line = access_line(&site.lb, "/log-plain");
    assert_eq!(tls_field(&line), "-", "{line}");
}

#[test]
fn the_json_access_log_has_a_tls_object_or_null() {
    let site = Site::start("[log]\naccess_log = json\n");
    site.curl_ok(
        &["--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"],
        &["/json-tls"],
    );
    get(site.lb.addr, "/json-plain");
    let find = |target: &str| -> Value {
        let mut found = None;
        wait_until(WAIT, || {
            found = site
                .lb
                .log()
                .into_iter()
                .filter(|l| l.starts_with('{'))
                .map(|l| serde_json::from_str::<Value>(&l).expect("a JSON access line"))
                .find(|v| v["target"] == target);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no line for {target}: {}", site.lb.log_text()))
    };
    let tls = &find("/json-tls")["tls"];
    assert_eq!(tls["version"], "TLSv1.3", "{tls}");
    assert_eq!(tls["cipher"], "TLS13_AES_128_GCM_SHA256", "{tls}");
    assert_eq!(tls["sni"], HOST, "{tls}");
    assert_eq!(tls["resumed"], false, "{tls}");
    assert_eq!(find("/json-plain")["tls"], Value::Null);

    let request = "GET /json-nosni HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n";
    let out = site
        .pki
        .s_client(site.tls(), None, &["-ign_eof"], request.as_bytes());
    assert!(out.handshake_done(), "{}", out.all());
    let tls = &find("/json-nosni")["tls"];
    assert_eq!(tls["sni"], Value::Null, "{tls}");
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol before the handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn accept_proxy_on_a_tls_listener_takes_the_header_before_the_client_hello() {
    let site = Site::start("[lb]\naccept_proxy = on\nproxy_from = 127.0.0.0/8\n");
    // v1, then v2 (198.51.100.9:4000 to 10.0.0.1:443).
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 1, 0x0f, 0xa0, 0x01, 0xbb]);
    for (header, client) in [
        (
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n".to_vec(),
            "192.0.2.7",
        ),
        (v2, "198.51.100.9"),
    ] {
        let mut stream = connect(site.tls());
        send(&mut stream, &header);
        let mut tls = tls_client(stream, &site.pki.ca, HOST);
        let request = format!("GET /proxied HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        if let Err(e) = tls.write_all(request.as_bytes()) {
            panic!(
                "no TLS handshake after a PROXY header: {e}; log:\n{}",
                site.lb.log_text()
            );
        }
        let answer = tls_read_to_close(&mut tls);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let request = site.backend.last_request();
        assert_eq!(request.target, "/proxied");
        assert_eq!(request.header("X-Forwarded-For"), Some(client));
        assert_eq!(request.header("X-Forwarded-Proto"), Some("https"));
    }

    // The header and the ClientHello in one write, as a balancer in front sends them.
    let mut bytes = b"PROXY TCP4 192.0.2.8 10.0.0.1 1 443\r\n".to_vec();
    bytes.extend(capture_client_hello(&["-servername", HOST]));
    let mut stream = connect(site.tls());
    send(&mut stream, &bytes);
    let answer = read_some(&mut stream, 6);
    assert!(
        is_handshake_record(&answer),
        "no handshake record back: {answer:02x?}"
    );

    // A trusted source that starts with the ClientHello sent no header: refused, as on a
    // plain listener, before any handshake.
    let out = site.s_client(&[], "");
    assert!(
        !out.handshake_done(),
        "served without a PROXY header: {}",
        out.all()
    );
}

// ---------------------------------------------------------------------------------------------
// TLS to backends
// ---------------------------------------------------------------------------------------------

/// A TLS backend: Debian's `openssl s_server -WWW`, serving the files of a directory of its own
/// (`index.html`, and `healthcheck` for the probes) with the certificate `leaf`. One connection
/// at a time, each answered with HTTP/1.0 and closed: a real TLS server, not lb-mio's own code.
struct TlsBackend {
    addr: SocketAddr,
    _files: TempDir,
    _server: Process,
}

impl TlsBackend {
    fn start(leaf: &Leaf) -> TlsBackend {
        let files = TempDir::new("-www");
        std::fs::write(files.path().join("index.html"), "over tls\n").unwrap();
        std::fs::write(files.path().join("healthcheck"), "ok\n").unwrap();
        // A port the kernel just handed out, for s_server to bind.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let server = Process::spawn(
            std::process::Command::new("openssl")
                .args(["s_server", "-quiet", "-WWW", "-accept", &addr.to_string()])
                .arg("-cert")
                .arg(&leaf.cert)
                .arg("-key")
                .arg(&leaf.key)
                .current_dir(files.path()),
            Pipe::Stderr,
        )
        .expect("start openssl s_server");
        let listening = wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_ok());
        assert!(listening, "s_server did not listen on {addr}");
        TlsBackend {
            addr,
            _files: files,
            _server: server,
        }
    }
}

/// lb-mio in front of `backend` as `s1 = ADDR TLS_WORDS`, trusting `pki`'s CA.
fn lb_before_tls_backend(pki: &Pki, backend: &TlsBackend, words: &str, extra: &str) -> Lb {
    let config = format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\n[tls]\nbackend_ca = {}\n{extra}{ADMIN}\
         [backends]\ns1 = {} {words}\n",
        pki.ca.display(),
        backend.addr
    );
    Lb::start(&config)
}

#[test]
fn a_tls_backend_is_spoken_to_over_tls_and_probed_over_tls() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki.leaf("backend", Ecdsa, &["backend.test"]));
    let health = "[health]\npath = /healthcheck\ninterval_ms = 100\nrise = 1\n";
    let lb = lb_before_tls_backend(&pki, &backend, "tls=backend.test", health);
    let up = wait_until(Duration::from_secs(5), || {
        api_backends(lb.admin_addr())["backends"][0]["state"] == "up"
    });
    assert!(up, "the TLS probe never passed:\n{}", lb.log_text());
    assert_eq!(
        api_backends(lb.admin_addr())["backends"][0]["tls"],
        "backend.test"
    );
    for _ in 0..3 {
        let resp = get(lb.addr, "/index.html");
        assert_eq!(resp.status, 200, "{}", lb.log_text());
        assert_eq!(resp.body_str(), "over tls\n");
    }
}

#[test]
fn a_tls_backend_whose_certificate_names_another_host_is_refused_unless_verify_is_off() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki.leaf("backend", Ecdsa, &["backend.test"]));
    // Probes off: the backend counts as up, so a request meets the handshake itself.
    let lb = lb_before_tls_backend(&pki, &backend, "tls=other.test", NO_HEALTH);
    let resp = get(lb.addr, "/index.html");
    assert_eq!(resp.status, 502, "{}", lb.log_text());
    let within = Duration::from_secs(3);
    lb.expect_log("TLS with a backend: invalid peer certificate", within);
    let failed = "backend s1 failed: TLS handshake failed: the peer's certificate is not accepted";
    lb.expect_log(failed, within);
    drop(lb);
    // The probe says why too.
    let health = "[health]\npath = /healthcheck\ninterval_ms = 100\n";
    let lb = lb_before_tls_backend(&pki, &backend, "tls=other.test", health);
    let said = wait_until(Duration::from_secs(5), || {
        let reason = &api_backends(lb.admin_addr())["backends"][0]["last_probe"]["reason"];
        reason
            .as_str()
            .is_some_and(|r| r.contains("not valid for name"))
    });
    assert!(said, "{}", api_backends(lb.admin_addr()));
    drop(lb);
    let off = format!("backend_verify = false\n{NO_HEALTH}");
    let lb = lb_before_tls_backend(&pki, &backend, "tls=other.test", &off);
    assert_eq!(get(lb.addr, "/index.html").body_str(), "over tls\n");
}

#[test]
fn a_tls_backend_needs_a_readable_ca_file() {
    let config = TempFile::new(
        ".ini",
        b"[tls]\nbackend_ca = /nonexistent/ca.pem\n[backends]\ns1 = 127.0.0.1:443 tls\n",
    );
    let (status, _, stderr) = run_cli(&["--check", config.path().to_str().unwrap()]);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("[tls] backend_ca: /nonexistent/ca.pem"),
        "{stderr}"
    );
}

#[test]
fn a_tls_backend_added_through_the_admin_api_is_probed_and_used_over_tls() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki.leaf("backend", Ecdsa, &["backend.test"]));
    let plain = Backend::named("plain");
    let config = format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\n[tls]\nbackend_ca = {}\n\
         [health]\npath = /healthcheck\ninterval_ms = 100\nrise = 1\n{ADMIN}\
         [backends]\nplain = {}\n",
        pki.ca.display(),
        plain.addr
    );
    let lb = Lb::start(&config);
    let body = format!(
        r#"{{"name": "secure", "address": "{}", "tls": "backend.test"}}"#,
        backend.addr
    );
    let resp = admin_request(lb.admin_addr(), "POST", "/api/backends", Some(&body), None);
    assert!(resp.status < 300, "{} {}", resp.status, resp.body_str());
    let secure_up = || {
        let backends = api_backends(lb.admin_addr());
        let list = backends["backends"].as_array().cloned().unwrap_or_default();
        list.iter()
            .any(|b| b["name"] == "secure" && b["state"] == "up" && b["tls"] == "backend.test")
    };
    assert!(
        wait_until(Duration::from_secs(5), secure_up),
        "{}",
        api_backends(lb.admin_addr())
    );
    // Round robin over the two: the TLS one answers some of them, whole.
    let bodies: Vec<String> = (0..4)
        .map(|_| get(lb.addr, "/index.html").body_str())
        .collect();
    assert!(bodies.iter().any(|b| b == "over tls\n"), "{bodies:?}");
    // A name that is not a DNS name or an address is refused.
    let bad = format!(r#"{{"address": "{}", "tls": "not a name"}}"#, backend.addr);
    let resp = admin_request(lb.admin_addr(), "POST", "/api/backends", Some(&bad), None);
    assert_eq!(resp.status, 400, "{}", resp.body_str());
}

// ---------------------------------------------------------------------------------------------
// Client certificates
// ---------------------------------------------------------------------------------------------

/// lb-mio asking TLS clients for certificates signed by `pki`'s CA (`client_verify = MODE`).
fn lb_asking_for_client_certificates(pki: &Pki, backend: &Backend, mode: &str) -> Lb {
    let cert = pki.leaf("site", Ecdsa, &[HOST]);
    let extra = format!(
        "[tls]\nclient_ca = {}\nclient_verify = {mode}\n{NO_HEALTH}",
        pki.ca.display()
    );
    Lb::start(&tls_ini(&[("a", backend.addr)], &[("site", &cert)], &extra))
}

#[test]
fn a_required_client_certificate_is_checked_and_its_subject_reaches_the_backend() {
    let pki = Pki::new();
    let backend = Backend::named("a");
    let lb = lb_asking_for_client_certificates(&pki, &backend, "required");
    let alice = pki.leaf("alice", Ecdsa, &["alice.client"]);
    let with_cert = [
        "--cert",
        alice.cert.to_str().unwrap(),
        "--key",
        alice.key.to_str().unwrap(),
        // What a client says of itself is not passed on.
        "-H",
        "X-Client-Verify: FORGED",
    ];
    assert_eq!(curl_ok(&pki, HOST, lb.tls_addr(), &with_cert, &["/"]), "a");
    let seen = backend.last_request();
    assert_eq!(seen.header_all("X-Client-Verify"), ["SUCCESS"]);
    assert_eq!(seen.header_all("X-Client-Subject"), ["CN=alice"]);
    // Without a certificate, or with one from another CA, the handshake fails.
    let without = curl(&pki, HOST, lb.tls_addr(), &[], &["/"]);
    assert!(!without.status.is_some_and(|s| s.success()), "{without:?}");
    let stranger = Pki::new().leaf("mallory", Ecdsa, &["mallory.client"]);
    let other_ca = [
        "--cert",
        stranger.cert.to_str().unwrap(),
        "--key",
        stranger.key.to_str().unwrap(),
    ];
    let refused = curl(&pki, HOST, lb.tls_addr(), &other_ca, &["/"]);
    assert!(!refused.status.is_some_and(|s| s.success()), "{refused:?}");
    assert_eq!(backend.requests().len(), 1, "only alice got through");
}

#[test]
fn an_optional_client_certificate_lets_a_client_without_one_in_marked_none() {
    let pki = Pki::new();
    let backend = Backend::named("a");
    let lb = lb_asking_for_client_certificates(&pki, &backend, "optional");
    let spoof = ["-H", "X-Client-Subject: CN=admin"];
    assert_eq!(curl_ok(&pki, HOST, lb.tls_addr(), &spoof, &["/"]), "a");
    let seen = backend.last_request();
    assert_eq!(seen.header_all("X-Client-Verify"), ["NONE"]);
    assert!(seen.header_all("X-Client-Subject").is_empty(), "{seen:?}");
    // Plain requests carry neither header, whatever the client sends.
    let plain = request(
        lb.addr,
        "GET / HTTP/1.1\r\nHost: lb.test\r\nX-Client-Verify: SUCCESS\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(plain.status, 200);
    assert!(backend
        .last_request()
        .header_all("X-Client-Verify")
        .is_empty());
}

/// A TLS backend that answers any method: Python's `ssl` module (OpenSSL) serving each request
/// with `200` and the length of the body it read (`s_server -WWW` answers GET only).
const ANSWERING_BACKEND: &str = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
def serve(raw):
    with ctx.wrap_socket(raw, server_side=True) as tls:
        data = b""
        while b"\r\n\r\n" not in data:
            data += tls.recv(65536) or b"\r\n\r\n"
        head, body = data.split(b"\r\n\r\n", 1)
        length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
        while len(body) < (length[0] if length else 0):
            body += tls.recv(65536)
        answer = b"read %d" % len(body)
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer))
print("ready", flush=True)
while True:
    raw, _ = listener.accept()
    threading.Thread(target=serve, args=(raw,), daemon=True).start()
"#;

#[test]
fn a_post_whose_tls_backend_fails_the_handshake_goes_to_another_unsent() {
    let pki = Pki::new();
    let leaf = pki.leaf("backend", Ecdsa, &["backend.test"]);
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = Process::spawn(
        std::process::Command::new("python3")
            .args(["-c", ANSWERING_BACKEND, &addr.port().to_string()])
            .arg(&leaf.cert)
            .arg(&leaf.key),
        Pipe::Stdout,
    )
    .expect("start python3");
    assert!(server.wait_for_lines("ready", 1, Duration::from_secs(5)));
    // s1 names the wrong host: its handshake fails before any of the request went out, so
    // even a POST goes to s2 (the same server, under its right name).
    let config = format!(
        "[lb]\nlisten = 127.0.0.1:0\nworkers = 1\nretries = 1\n[tls]\nbackend_ca = {}\n\
         {NO_HEALTH}{ADMIN}[backends]\ns1 = {addr} tls=other.test\ns2 = {addr} tls=backend.test\n",
        pki.ca.display(),
    );
    let lb = Lb::start(&config);
    let body = "x".repeat(100 * 1024);
    for _ in 0..2 {
        let head = format!(
            "POST /form HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let resp = request(lb.addr, &(head + &body));
        assert_eq!(resp.status, 200, "{}", lb.log_text());
        assert_eq!(resp.body_str(), format!("read {}", body.len()));
    }
    lb.expect_log(
        "backend s1 failed: TLS handshake failed",
        Duration::from_secs(3),
    );
}
