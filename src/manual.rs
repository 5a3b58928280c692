//! What the `lb-mio` command says about itself: its usage (`--help`), its version (`--version`,
//! with the commit it was built from) and its manual page, lb-mio(1) (`--man`, roff).
//!
//! The manual page is made from the same pieces as the rest: the commands and what they do are
//! [`COMMANDS`] (which `--help` prints), and its CONFIGURATION section is the one key table
//! ([`config::keys`](crate::config::keys), which the README's table is held to). The packaged
//! copy, `src/package/lb-mio.1`, is this page; a test fails when the two differ.

use crate::config::keys::{self, Key, BACKENDS_LINE, BACKENDS_MEANING, KEYS};
use std::fmt::Write;

/// One way to run the command, as `--help` shows it.
pub struct Command {
    /// The arguments after `lb-mio`, one entry a line as `--help` breaks them.
    pub args: &'static [&'static str],
    /// What it does, one entry a line as `--help` breaks them (one paragraph in the manual).
    pub does: &'static [&'static str],
}

/// Every way to run `lb-mio`, in the order `--help` lists them.
pub const COMMANDS: &[Command] = &[
    Command {
        args: &["CONFIG"],
        does: &["run the load balancer"],
    },
    Command {
        args: &["--check CONFIG"],
        does: &["validate CONFIG and exit (0: valid)"],
    },
    Command {
        args: &[
            "--explain CONFIG METHOD URL [-H 'Name: value']... [--client IP]",
            "[--listener ADDR] [--sni NAME]",
        ],
        does: &["print which route a request would take, and why"],
    },
    Command {
        args: &["--demo [--listen ADDR]"],
        does: &[
            "start three built-in backends and a balancer in front of them",
            "(default ADDR 127.0.0.1:8080)",
        ],
    },
    Command {
        args: &["--man"],
        does: &["print the manual page, lb-mio(1), as roff"],
    },
    Command {
        args: &["--help | --version"],
        does: &["print this usage, or the version and the commit it was built from"],
    },
];

/// Where `--help` starts the text that says what a command does.
const COLUMN: usize = 32;

/// The `--help` text (also printed, to stderr, after a wrong command line).
pub fn usage() -> String {
    let mut out = String::new();
    for (i, command) in COMMANDS.iter().enumerate() {
        let prefix = if i == 0 { "usage: " } else { "       " };
        let mut line = format!("{prefix}lb-mio {}", command.args[0]);
        for more in &command.args[1..] {
            out.push_str(&line);
            out.push('\n');
            line = format!("{:COLUMN$}{more}", "");
        }
        let mut does = command.does.iter();
        if line.len() + 2 <= COLUMN {
            if let Some(first) = does.next() {
                line = format!("{line:COLUMN$}{first}");
            }
        }
        out.push_str(&line);
        for more in does {
            let _ = write!(out, "\n{:COLUMN$}{more}", "");
        }
        if i + 1 < COMMANDS.len() {
            out.push('\n');
        }
    }
    out
}

/// The commit lb-mio was built from: `LB_MIO_COMMIT` at build time, else git's short hash of
/// HEAD, else `unknown` (see `src/build.rs`).
pub const COMMIT: &str = env!("LB_MIO_COMMIT");

/// The `--version` line: `lb-mio 0.1.0 (commit 1a2b3c4)`.
pub fn version() -> String {
    format!("lb-mio {} (commit {COMMIT})", env!("CARGO_PKG_VERSION"))
}

/// lb-mio(1), in roff (man macros).
pub fn man_page() -> String {
    let mut page = String::new();
    let mut line = |s: &str| {
        page.push_str(s);
        page.push('\n');
    };
    line(&format!(
        ".TH LB\\-MIO 1 \"\" \"lb\\-mio {}\" \"User Commands\"",
        env!("CARGO_PKG_VERSION")
    ));
    // Left-aligned, no hyphenation: keys, paths and addresses stay whole.
    line(".ad l");
    line(".nh");
    line(".SH NAME");
    line("lb\\-mio \\- thread\\-per\\-core HTTP/1.1 load balancer");

    line(".SH SYNOPSIS");
    line(".nf");
    for command in COMMANDS {
        line(&format!("\\fBlb\\-mio\\fR {}", synopsis(command.args[0])));
        for more in &command.args[1..] {
            line(&format!("        {}", synopsis(more)));
        }
    }
    line(".fi");

    line(".SH DESCRIPTION");
    for paragraph in DESCRIPTION {
        line(".PP");
        line(&inline(paragraph));
    }

    line(".SH OPTIONS");
    for command in COMMANDS {
        line(".TP");
        line(&format!(
            "\\fBlb\\-mio\\fR {}",
            synopsis(&command.args.join(" "))
        ));
        line(&sentence(&command.does.join(" ")));
    }

    line(".SH SIGNALS");
    for (signal, does) in SIGNALS {
        line(".TP");
        line(&format!(".B {signal}"));
        line(&inline(does));
    }

    line(".SH CONFIGURATION");
    for paragraph in CONFIGURATION {
        line(".PP");
        line(&inline(paragraph));
    }
    for section in keys::sections() {
        line(&format!(".SS \"[{section}]\""));
        for key in KEYS.iter().filter(|k| k.section == section) {
            key_entry(key, &mut line);
        }
    }
    line(".SS \"[backends]\"");
    line(".TP");
    line(&format!("\\fB{}\\fR", escape(BACKENDS_LINE)));
    line(&sentence(BACKENDS_MEANING));

    line(".SH FILES");
    for (path, what) in FILES {
        line(".TP");
        line(&format!(".I {}", escape(path)));
        line(&inline(what));
    }

    line(".SH \"EXIT STATUS\"");
    for (status, what) in EXIT_STATUS {
        line(".TP");
        line(&format!(".B {status}"));
        line(&inline(what));
    }

    line(".SH \"SEE ALSO\"");
    line(".BR systemctl (1),");
    line(".BR systemd.service (5),");
    line(".BR logrotate (8),");
    line(".I /usr/share/doc/lb\\-mio/README.md");
    page
}

/// One key of the CONFIGURATION section: its name, then what it means, its default and values.
fn key_entry(key: &Key, line: &mut impl FnMut(&str)) {
    line(".TP");
    line(&format!(".B {}", escape(key.name)));
    line(&sentence(key.meaning));
    line(&sentence(&format!("Default: {}", key.shown_default())));
    line(&sentence(&format!("Values: {}", key.values())));
}

const DESCRIPTION: &[&str] = &[
    "lb-mio is an HTTP/1.1 load balancer for Linux, thread-per-core and synchronous: each worker \
     thread runs its own event loop on its own `SO_REUSEPORT` listener and forwards requests to \
     backends chosen by the configured strategy, while one health thread probes every backend. \
     It routes requests to pools by host, path and headers, and terminates TLS itself.",
    "It reads one configuration file, given on the command line (the package installs \
     `/etc/lb-mio/config.ini`). Logs go to stderr; under systemd, to the journal.",
];

const SIGNALS: &[(&str, &str)] = &[
    (
        "SIGHUP",
        "Re-read the configuration file. Backends that keep their name and address keep their \
         state; new ones start down until their health checks pass; those gone from the file \
         drain and leave. `[lb] listen`, `workers` and `[admin]` need a restart. A file that does \
         not validate is logged and the running configuration stays.",
    ),
    (
        "SIGTERM, SIGINT",
        "Stop accepting, let requests in flight finish for up to `[lb] drain_timeout_s`, exit 0.",
    ),
    (
        "SIGUSR1",
        "Open the access log file again (after logrotate moved it).",
    ),
    (
        "SIGUSR2",
        "Upgrade without dropping a request: start the binary at lb-mio's own path with the same \
         arguments; the new process listens on the same addresses (`SO_REUSEPORT`), then stops \
         the old one, which drains. If the new one fails to start, the old one keeps serving. \
         With `sysctl net.ipv4.tcp_migrate_req=1` the connections still waiting in the old \
         process's accept queue move to the new one instead of being reset.",
    ),
];

const CONFIGURATION: &[&str] = &[
    "One INI file; comments start with `;` or `#`. Every key has a default, so the smallest valid \
     file is a `[backends]` section. Unknown sections and keys, duplicates and bad values are \
     errors that name the line. The keys, by section:",
];

const FILES: &[(&str, &str)] = &[
    (
        "/etc/lb-mio/config.ini",
        "The configuration the packaged service runs (`lb-mio --check` it after editing, then \
         `systemctl reload lb-mio`).",
    ),
    (
        "/var/lib/lb-mio/",
        "The service's state directory, writable by the `lb-mio` user: the place for \
         `[admin] state_file` and `[etcd] cache_file`.",
    ),
    (
        "/var/log/lb-mio/access.log",
        "The place for `[log] access_log_file`; rotated by `/etc/logrotate.d/lb-mio`.",
    ),
    (
        "/lib/systemd/system/lb-mio.service",
        "The systemd unit: runs lb-mio as user `lb-mio`, reloads with SIGHUP after a `--check`.",
    ),
];

const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "Success: a valid file (`--check`), or a clean stop after SIGTERM or SIGINT.",
    ),
    (
        "1",
        "The configuration is not valid, or lb-mio could not start.",
    ),
    (
        "2",
        "A wrong command line, or a question `--explain` cannot answer.",
    ),
];

/// A line of command syntax: options bold, placeholders (upper case) italic.
fn synopsis(args: &str) -> String {
    args.split(' ')
        .map(|word| {
            let core_start = word
                .find(|c: char| c != '[' && c != '(')
                .unwrap_or(word.len());
            let core_end = word
                .rfind(|c: char| c != ']' && c != '.' && c != ')')
                .map_or(core_start, |i| i + 1)
                .max(core_start);
            let (open, core, close) = (
                &word[..core_start],
                &word[core_start..core_end],
                &word[core_end..],
            );
            let placeholder =
                core.len() > 1 && core.chars().all(|c| c.is_ascii_uppercase() || c == '_');
            let core = if core.starts_with('-') {
                format!("\\fB{}\\fR", escape(core).replace('-', "\\-"))
            } else if placeholder {
                format!("\\fI{}\\fR", escape(core))
            } else {
                escape(core)
            };
            format!("{}{core}{}", escape(open), escape(close))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Markdown text as one roff sentence: `inline`, ending with a full stop.
fn sentence(text: &str) -> String {
    let mut text = text.to_string();
    if !text.ends_with('.') {
        text.push('.');
    }
    let mut first = text.chars();
    let capital = match first.next() {
        Some(c) => c.to_uppercase().chain(first).collect(),
        None => text,
    };
    inline(&capital)
}

/// The markdown the key table's texts use, as roff: `code` bold, `[text](#anchor)` the text
/// (the README's section), the rest escaped.
fn inline(markdown: &str) -> String {
    let mut out = String::new();
    let mut rest = markdown;
    while let Some(i) = rest.find(['`', '[']) {
        out.push_str(&escape(&rest[..i]));
        rest = &rest[i..];
        if let Some(code) = rest.strip_prefix('`') {
            let end = code.find('`').unwrap_or(code.len());
            let _ = write!(out, "\\fB{}\\fR", escape(&code[..end]).replace('-', "\\-"));
            rest = code.get(end + 1..).unwrap_or("");
        } else if let Some((text, after)) = link(rest) {
            let _ = write!(out, "{} (README.md)", escape(text));
            rest = after;
        } else {
            out.push('[');
            rest = &rest[1..];
        }
    }
    out.push_str(&escape(rest));
    // A line may not start with a control character.
    if out.starts_with(['.', '\'']) {
        out.insert_str(0, "\\&");
    }
    out
}

/// `[text](#anchor)…` → `(text, …)`.
fn link(s: &str) -> Option<(&str, &str)> {
    let (text, rest) = s.strip_prefix('[')?.split_once("](")?;
    let (target, after) = rest.split_once(')')?;
    (target.starts_with('#') && !text.contains('`')).then_some((text, after))
}

/// Plain text as roff: backslashes and characters outside ASCII escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '±' => out.push_str("\\(+-"),
            '×' => out.push_str("\\(mu"),
            c if c.is_ascii() => out.push(c),
            c => {
                let _ = write!(out, "\\[u{:04X}]", u32::from(c));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `--help` printed before the table of commands, with the two new lines.
    #[test]
    fn usage_keeps_its_layout() {
        let expected = "\
usage: lb-mio CONFIG            run the load balancer
       lb-mio --check CONFIG    validate CONFIG and exit (0: valid)
       lb-mio --explain CONFIG METHOD URL [-H 'Name: value']... [--client IP]
                                [--listener ADDR] [--sni NAME]
                                print which route a request would take, and why
       lb-mio --demo [--listen ADDR]
                                start three built-in backends and a balancer in front of them
                                (default ADDR 127.0.0.1:8080)
       lb-mio --man             print the manual page, lb-mio(1), as roff
       lb-mio --help | --version
                                print this usage, or the version and the commit it was built from";
        assert_eq!(usage(), expected);
    }

    #[test]
    fn version_names_the_commit() {
        assert!(!COMMIT.is_empty());
        assert_eq!(
            version(),
            format!("lb-mio {} (commit {COMMIT})", env!("CARGO_PKG_VERSION"))
        );
    }

    /// Built in a git checkout without `LB_MIO_COMMIT`, the commit is HEAD's (the build script
    /// runs again when HEAD moves).
    #[test]
    fn the_commit_is_heads() {
        if env!("LB_MIO_COMMIT_SOURCE") != "git" {
            return;
        }
        let out = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("git ran at build time");
        let head = String::from_utf8(out.stdout).unwrap();
        assert!(
            head.trim().starts_with(COMMIT),
            "built from {COMMIT}, HEAD is {head}"
        );
    }

    /// Every key of the table has its entry, under its section, with its default and values.
    #[test]
    fn the_manual_has_every_key() {
        let page = man_page();
        for section in keys::sections() {
            let heading = format!(".SS \"[{section}]\"\n");
            let start = page.find(&heading).expect(&heading) + heading.len();
            let body = &page[start..];
            let body = &body[..body.find(".SS").or(body.find(".SH")).unwrap()];
            for key in KEYS.iter().filter(|k| k.section == section) {
                let mut entry = String::new();
                key_entry(key, &mut |l: &str| {
                    entry.push_str(l);
                    entry.push('\n');
                });
                assert!(
                    body.contains(&entry),
                    "[{section}] {} is not in the manual",
                    key.name
                );
                assert!(body.contains(&format!(".B {}\n", escape(key.name))));
            }
        }
        assert!(page.contains(&escape(BACKENDS_LINE)));
    }

    /// Every command of `--help` is in the manual's synopsis and options.
    #[test]
    fn the_manual_has_every_command() {
        let page = man_page();
        for command in COMMANDS {
            let shown = format!("\\fBlb\\-mio\\fR {}", synopsis(command.args[0]));
            assert_eq!(page.matches(&shown).count(), 2, "{shown}");
        }
    }

    #[test]
    fn markdown_becomes_roff() {
        assert_eq!(
            inline("`on`: a `X-Backend`"),
            "\\fBon\\fR: a \\fBX\\-Backend\\fR"
        );
        assert_eq!(
            inline("see [Strategies](#strategies)"),
            "see Strategies (README.md)"
        );
        assert_eq!(
            inline("names are `[A-Z]` [x]"),
            "names are \\fB[A\\-Z]\\fR [x]"
        );
        assert_eq!(inline(".5 \\ ±1"), "\\&.5 \\e \\(+-1");
        assert_eq!(
            synopsis("--explain CONFIG [-H 'Name: value']..."),
            "\\fB\\-\\-explain\\fR \\fICONFIG\\fR [\\fB\\-H\\fR 'Name: value']..."
        );
        assert_eq!(sentence("at least one"), "At least one.");
    }

    /// The packaged page, `src/package/lb-mio.1`, is the one `lb-mio --man` prints.
    #[test]
    fn the_packaged_manual_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/package/lb-mio.1");
        let packaged = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            packaged == man_page(),
            "src/package/lb-mio.1 is not what `lb-mio --man` prints; run\n\n    \
             cargo run -q -- --man > src/package/lb-mio.1\n"
        );
    }
}
