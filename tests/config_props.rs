//! Property tests over the config parser: whatever the file holds, the answer is a config or
//! one error that names a real line of it (the fuzz target `config` checks the same, longer).

use lb_mio::config::Config;
use proptest::prelude::*;

const FILE: &str = "props.ini";

/// Lines a config file is made of: sections, known and unknown keys with plausible and
/// implausible values, backends, comments, blanks and junk.
fn line() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "[lb]",
        "[timeouts]",
        "[limits]",
        "[health]",
        "[admin]",
        "[log]",
        "[dns]",
        "[backends]",
        "[nope]",
        "[lb",
        "[]",
    ])
    .prop_map(str::to_string);
    let key = prop::sample::select(vec![
        "listen",
        "workers",
        "strategy",
        "retries",
        "expose_backend",
        "request_id",
        "sticky",
        "hash_key",
        "server_header",
        "accept_proxy",
        "proxy_from",
        "send_proxy",
        "connect_ms",
        "max_connections",
        "rate",
        "interval_ms",
        "status",
        "token",
        "level",
        "access_log",
        "access_log_file",
        "resolver",
        "resolve_interval_s",
        "s1",
        "api",
        "bogus",
    ]);
    let value = prop::sample::select(vec![
        "1",
        "0",
        "auto",
        "on",
        "maybe",
        "127.0.0.1:80",
        "[::1]:8080",
        "127.0.0.1:80 weight=3",
        "host.example:80",
        "srv:_http._tcp.x",
        "10.0.0.0/8, ::1",
        "v2",
        "200-204",
        "-1",
        "99999999999999999999",
        "",
        "round_robin",
        "json",
        "X-Request-Id",
        "cookie",
        "header:X-User",
        "a\u{1}b",
    ]);
    let pair = (key, value).prop_map(|(k, v)| format!("{k} = {v}"));
    prop_oneof![
        3 => section,
        6 => pair,
        1 => Just("; a comment".to_string()),
        1 => Just(String::new()),
        1 => "[ -~]{0,20}",
    ]
}

fn file() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..24).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_error_names_a_line_that_says_something(text in file()) {
        let Err(e) = Config::parse(&text, FILE) else { return Ok(()) };
        let message = e.to_string();
        prop_assert_eq!(&e.file, FILE);
        if e.line == 0 {
            // The one error no line can hold: nothing to balance over.
            prop_assert!(message.starts_with("props.ini: [backends]: "), "{}", message);
            return Ok(());
        }
        let prefix = format!("{FILE}:{}: ", e.line);
        prop_assert!(message.starts_with(&prefix), "{}", message);
        let line = text.lines().nth(e.line - 1);
        prop_assert!(line.is_some(), "line {} of {:?}", e.line, text);
        let line = line.unwrap().trim();
        prop_assert!(!line.is_empty() && !line.starts_with(';'), "{} points at {:?}", message, line);
    }

    #[test]
    fn a_blank_line_in_front_moves_errors_down_one_line(text in file()) {
        let result = Config::parse(&text, FILE);
        let shifted = Config::parse(&format!("\n{text}"), FILE);
        match (result, shifted) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => {
                let want = if a.line == 0 { 0 } else { a.line + 1 };
                prop_assert_eq!((b.line, b.key), (want, a.key));
            }
            (a, b) => prop_assert!(false, "{:?} became {:?}", a, b),
        }
    }
}
