//! `config`: `lb_mio::config::Config::parse` on arbitrary text (the input bytes, invalid UTF-8
//! replaced; seeds are plain config files).
//!
//! Beyond "never panics":
//! - every error reads `fuzz.ini:LINE: ...` with LINE a line of the text, and that line holds
//!   something (not blank, not a comment) and the section or key the message names; the one
//!   error without a line is a missing `[backends]` section (`fuzz.ini: [backends]: ...`);
//! - an accepted config has unique backend names and weights 1..=1000;
//! - line accounting: an empty line in front moves an error down by exactly one line and
//!   changes nothing else; a comment line at the end changes nothing at all.

#![no_main]

use lb_mio::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;

const FILE: &str = "fuzz.ini";

fn check_error(text: &str, e: &ConfigError) {
    let message = e.to_string();
    assert_eq!(e.file, FILE);
    if e.line == 0 {
        assert_eq!(e.key, "[backends]", "error without a line: {message}");
        assert!(message.starts_with("fuzz.ini: [backends]: "), "{message}");
        return;
    }
    let prefix = format!("{FILE}:{}: ", e.line);
    assert!(message.starts_with(&prefix), "{message}");
    let lines = text.lines().count();
    assert!(e.line <= lines, "line {} of {lines}: {message}", e.line);
    let line = text.lines().nth(e.line - 1).unwrap().trim();
    assert!(
        !line.is_empty() && !line.starts_with(';') && !line.starts_with('#'),
        "{message} points at {line:?}"
    );
    // The key is "[section]", "[section] key" or a key outside any section.
    let named = match e.key.split_once("] ") {
        Some((_, key)) if e.key.starts_with('[') => key,
        _ => e.key.as_str(),
    };
    assert!(
        line.contains(named),
        "{message} points at {line:?}, which does not name {named:?}"
    );
    assert!(message.starts_with(&format!("{prefix}{}", e.key)) || e.key.is_empty());
}

fn check_config(config: &Config) {
    let mut names = HashSet::new();
    for b in &config.backends {
        assert!(names.insert(&b.name), "backend {:?} twice", b.name);
        assert!((1..=1000).contains(&b.weight), "weight {}", b.weight);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let result = Config::parse(&text, FILE);
    match &result {
        Ok(config) => check_config(config),
        Err(e) => check_error(&text, e),
    }

    let shifted = Config::parse(&format!("\n{text}"), FILE);
    match (&result, &shifted) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            let want = if a.line == 0 { 0 } else { a.line + 1 };
            assert_eq!((b.line, &b.key), (want, &a.key), "{a} / {b}");
        }
        (a, b) => panic!("a leading empty line changed {a:?} into {b:?}"),
    }

    let commented = Config::parse(&format!("{text}\n; the end\n"), FILE);
    assert_eq!(commented, result, "a trailing comment changed the result");
});
