//! The command line: `--help`, `--version`, `--man`, `--check`, config errors, a missing file, `--demo`.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use support::*;

/// A config error as the user sees it: non-zero exit, nothing on stdout, and exactly one line on
/// stderr that starts with `lb-mio: FILE:LINE: ` and names the key.
#[track_caller]
fn assert_one_error(args: &[&str], file: &str, line: usize, key: &str, case: &str) {
    let (status, out, err) = run_cli(args);
    assert!(!status.success(), "{case}: exit {status}, stderr {err:?}");
    assert_eq!(out, "", "{case}: stdout");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{case}: one message expected, got {err:?}");
    let prefix = format!("lb-mio: {file}:{line}: ");
    assert!(
        lines[0].starts_with(&prefix),
        "{case}: {:?} does not start with {prefix:?}",
        lines[0]
    );
    assert!(
        lines[0][prefix.len()..].starts_with(key),
        "{case}: {:?} does not name {key:?} after the line number",
        lines[0]
    );
}

#[test]
fn help_exits_zero_and_shows_usage() {
    for flag in ["--help", "-h"] {
        let (status, out, err) = run_cli(&[flag]);
        assert!(status.success(), "{flag}: {status} {err}");
        assert!(out.contains("usage: lb-mio CONFIG"), "{flag}: {out}");
        for mode in ["--check CONFIG", "--demo", "--version"] {
            assert!(out.contains(mode), "{flag}: usage lacks {mode}: {out}");
        }
    }
}

#[test]
fn version_exits_zero_and_prints_the_crate_version_and_commit() {
    for flag in ["--version", "-V"] {
        let (status, out, err) = run_cli(&[flag]);
        assert!(status.success(), "{flag}: {status} {err}");
        assert_eq!(
            out.trim(),
            format!(
                "lb-mio {} (commit {})",
                env!("CARGO_PKG_VERSION"),
                env!("LB_MIO_COMMIT")
            ),
            "{flag}"
        );
    }
}

/// `--man` prints lb-mio(1), the page the package ships.
#[test]
fn man_prints_the_manual_page() {
    let (status, out, err) = run_cli(&["--man"]);
    assert!(status.success(), "{status} {err}");
    assert!(out.starts_with(".TH LB\\-MIO 1 "), "{out}");
    assert_eq!(out, lb_mio::manual::man_page());
}

#[test]
fn unknown_arguments_fail_with_usage() {
    for args in [&[][..], &["--bogus"], &["--check"], &["a.ini", "b.ini"]] {
        let (status, out, err) = run_cli(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {status}");
        assert_eq!(out, "", "{args:?}");
        assert!(err.contains("usage: lb-mio CONFIG"), "{args:?}: {err}");
    }
}

#[test]
fn check_accepts_the_example_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.ini");
    // The repository ships config.ini; fall back to an equivalent file if it is not there yet.
    let fallback = TempFile::new(
        ".ini",
        b"[lb]\nlisten = 127.0.0.1:8080\n[backends]\ns1 = 127.0.0.1:9001\ns2 = 127.0.0.1:9002\ns3 = 127.0.0.1:9003\n",
    );
    let path = if path.exists() {
        path
    } else {
        fallback.path().to_path_buf()
    };
    let path = path.to_str().unwrap();
    let (status, out, err) = run_cli(&["--check", path]);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out.trim(), format!("{path}: ok (3 backends)"));
}

#[test]
fn check_counts_the_backends_of_a_minimal_file() {
    let file = TempFile::new(".ini", b"[backends]\nonly = 127.0.0.1:9001 weight=3\n");
    let (status, out, err) = run_cli(&["--check", file.path_str()]);
    assert!(status.success(), "{status}: {err}");
    assert_eq!(out.trim(), format!("{}: ok (1 backends)", file.path_str()));
}

/// (case, config text, line of the error, what the message names first after the line)
const BAD_CONFIGS: &[(&str, &str, usize, &str)] = &[
    (
        "unknown section",
        "[lb]\nworkers = 1\n\n[backend]\ns1 = 127.0.0.1:9001\n",
        4,
        "[backend]: unknown section",
    ),
    (
        "unknown key",
        "; comment\n[lb]\nworkers = 1\nport = 8080\n[backends]\ns1 = 127.0.0.1:9001\n",
        4,
        "[lb] port: unknown key",
    ),
    (
        "bad backend address",
        "[backends]\ns1 = 127.0.0.1:9001\ns2 = 127.0.0.1\ns3 = 127.0.0.1:9003\n",
        3,
        "[backends] s2: expected ip:port",
    ),
    (
        "bad listen address",
        "[lb]\nworkers = 1\nlisten = localhost:8080\n[backends]\ns1 = 127.0.0.1:9001\n",
        3,
        "[lb] listen: expected ip:port",
    ),
    (
        "bad number",
        "[backends]\ns1 = 127.0.0.1:9001\n[timeouts]\nconnect_ms = 100\nheader_ms = soon\n",
        5,
        "[timeouts] header_ms: expected a number",
    ),
    (
        "number out of range",
        "[limits]\nmax_headers = 129\n[backends]\ns1 = 127.0.0.1:9001\n",
        2,
        "[limits] max_headers: expected a number",
    ),
    (
        "no backends",
        "[lb]\nworkers = 1\n\n[backends]\n; none yet\n",
        4,
        "[backends]: at least one backend is required",
    ),
];

#[test]
fn check_rejects_bad_configs_with_one_message_naming_file_line_and_key() {
    for (case, text, line, key) in BAD_CONFIGS {
        let file = TempFile::new(".ini", text.as_bytes());
        assert_one_error(
            &["--check", file.path_str()],
            file.path_str(),
            *line,
            key,
            case,
        );
    }
}

#[test]
fn running_a_bad_config_fails_the_same_way_before_listening() {
    for (case, text, line, key) in BAD_CONFIGS {
        let file = TempFile::new(".ini", text.as_bytes());
        assert_one_error(&[file.path_str()], file.path_str(), *line, key, case);
    }
}

#[test]
fn a_listen_address_in_use_fails_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let file = TempFile::new(
        ".ini",
        format!("[lb]\nlisten = {addr}\nworkers = 1\n[backends]\ns1 = 127.0.0.1:9001\n").as_bytes(),
    );
    let (status, _, err) = run_cli(&[file.path_str()]);
    assert!(!status.success(), "{status}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("lb-mio: ")).collect();
    assert_eq!(errors.len(), 1, "{err:?}");
    assert!(
        errors[0].contains(&format!("cannot bind {addr}")),
        "{err:?}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = std::env::temp_dir();
    let missing = dir.join(format!("lb-mio-no-such-file-{}.ini", std::process::id()));
    let missing = missing.to_str().unwrap();
    for args in [vec![missing], vec!["--check", missing]] {
        let (status, out, err) = run_cli(&args);
        assert!(!status.success(), "{args:?}: {status}");
        assert_eq!(out, "", "{args:?}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err:?}");
        assert!(
            lines[0].starts_with(&format!("lb-mio: {missing}: cannot read")),
            "{args:?}: {err:?}"
        );
    }
}

/// The `http://ADDR/` in a demo stdout line.
fn demo_url(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("http://")? + "http://".len()..];
    rest.split('/').next()?.parse().ok()
}

#[test]
fn demo_serves_from_three_backends_and_prints_its_url() {
    let demo = Process::spawn(
        Command::new(BIN).args(["--demo", "--listen", "127.0.0.1:0"]),
        Pipe::Stdout,
    )
    .expect("spawn lb-mio --demo");
    assert!(
        demo.wait_for_lines("", 1, START_TIMEOUT),
        "the demo prints a line on stdout"
    );
    let first = demo.lines().swap_remove(0);
    let addr = demo_url(&first).unwrap_or_else(|| panic!("no http://ADDR/ in {first:?}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(
        addr.port(),
        0,
        "the printed URL has the port the kernel chose"
    );

    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let resp = get(addr, "/");
        assert_eq!(resp.status, 200, "{}", resp.head_str());
        seen.insert(resp.body_str().trim().to_string());
    }
    let want: BTreeSet<String> = ["backend-1", "backend-2", "backend-3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(seen, want);
    drop(demo);
}

#[test]
fn demo_rejects_a_bad_listen_address() {
    let (status, out, err) = run_cli(&["--demo", "--listen", "nowhere"]);
    assert!(!status.success(), "{status}");
    assert_eq!(out, "");
    assert!(err.contains("--listen") && err.contains("nowhere"), "{err}");
}
