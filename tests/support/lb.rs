//! The balancer under test: `lb-mio CONFIG` started, watched through its log and stopped on drop;
//! one-shot command lines; config files built from backends.

use super::client::{get, request};
use super::http::Message;
use super::process::{run_within, Pipe, Process};
use super::util::{wait_until, TempFile};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lb-mio");
/// How long `Lb::start` waits for the "listening" log line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `run_cli` lets the binary run before killing it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Lb::sync_log` and `Lb::reload` wait for their line.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// A config for the given backends: `[lb]` with `listen = 127.0.0.1:0` and `workers = 1`, then
/// `extra` (raw INI text: any sections), then `[backends]`. Keys of an `[lb]` section in `extra`
/// are merged into (and override) the generated `[lb]`; lines of a `[backends]` section in
/// `extra` are appended after the generated backend lines.
///
/// `ini(&[("a", a.addr)], "[lb]\nexpose_backend = true\n[health]\ninterval_ms = 50\n")`
pub fn ini(backends: &[(&str, SocketAddr)], extra: &str) -> String {
    let mut lb: Vec<(String, String)> = vec![
        ("listen".into(), "127.0.0.1:0".into()),
        ("workers".into(), "1".into()),
    ];
    let mut other = String::new();
    let mut extra_backends = String::new();
    let mut section = String::new();
    for line in extra.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            section = trimmed[1..trimmed.len() - 1].trim().to_string();
            if section != "lb" && section != "backends" {
                other.push_str(trimmed);
                other.push('\n');
            }
            continue;
        }
        match section.as_str() {
            "lb" => {
                if let Some((k, v)) = trimmed.split_once('=') {
                    let (k, v) = (k.trim().to_string(), v.trim().to_string());
                    match lb.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => lb.push((k, v)),
                    }
                } else if !trimmed.is_empty() {
                    // Keep odd lines so a test of bad input still sees them.
                    lb.push((trimmed.to_string(), String::new()));
                }
            }
            "backends" => {
                extra_backends.push_str(line);
                extra_backends.push('\n');
            }
            _ => {
                other.push_str(line);
                other.push('\n');
            }
        }
    }
    let mut out = String::from("[lb]\n");
    for (k, v) in &lb {
        if v.is_empty() {
            out.push_str(&format!("{k}\n"));
        } else {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out.push_str(&other);
    out.push_str("[backends]\n");
    for (name, addr) in backends {
        out.push_str(&format!("{name} = {addr}\n"));
    }
    out.push_str(&extra_backends);
    out
}

/// A running `lb-mio CONFIG`; killed (and its config removed) on drop.
pub struct Lb {
    /// The first address it listens on.
    pub addr: SocketAddr,
    process: Process,
    config: TempFile,
}

impl Lb {
    /// Starts lb-mio with this config and waits (≤10 s) for it to listen. Panics, showing the
    /// log, if it does not.
    #[track_caller]
    pub fn start(ini: &str) -> Lb {
        match Lb::try_start(ini) {
            Ok(lb) => lb,
            Err(log) => panic!("lb-mio did not start; its stderr:\n{log}\nconfig:\n{ini}"),
        }
    }

    /// Like `start`, but a process that exits (or never listens) is an `Err` holding its stderr.
    pub fn try_start(ini: &str) -> Result<Lb, String> {
        Lb::try_start_as(ini, |config| {
            let mut command = Command::new(BIN);
            command.arg(config);
            command
        })
    }

    /// `start`, with the soft limit on open descriptors (`ulimit -n`) set to `fds`.
    #[track_caller]
    pub fn start_with_nofile(fds: u64, ini: &str) -> Lb {
        Lb::try_start_with_nofile(fds, ini)
            .unwrap_or_else(|log| panic!("lb-mio did not start:\n{log}"))
    }

    /// `try_start` as `sh -c "ulimit -n FDS && exec lb-mio CONFIG"`.
    pub fn try_start_with_nofile(fds: u64, ini: &str) -> Result<Lb, String> {
        let script = format!("ulimit -n {fds} && exec \"$0\" \"$1\"");
        Lb::try_start_as(ini, |config| {
            let mut command = Command::new("sh");
            command.args(["-c", &script, BIN]).arg(config);
            command
        })
    }

    /// Like `try_start`, but runs the command `command` makes of the config file's path: one
    /// that ends up as (or `exec`s) `lb-mio CONFIG`.
    pub fn try_start_as(ini: &str, command: impl FnOnce(&Path) -> Command) -> Result<Lb, String> {
        let config = TempFile::new(".ini", ini.as_bytes());
        let process =
            Process::spawn(&mut command(config.path()), Pipe::Stderr).expect("spawn lb-mio");
        let mut lb = Lb {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            process,
            config,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(addrs) = lb.log().iter().find_map(|l| listening_on(l)) {
                lb.addr = addrs[0];
                return Ok(lb);
            }
            if let Some(status) = lb.exited() {
                // The pipe is at EOF once the process is gone: let every line in.
                lb.process.wait_for_eof(START_TIMEOUT);
                return Err(format!("(exited: {status})\n{}", lb.log_text()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "(no listening line in {START_TIMEOUT:?})\n{}",
                    lb.log_text()
                ));
            }
            lb.process.wait_for_more(Duration::from_millis(20));
        }
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.process.lines()
    }

    /// The whole stderr so far, one line per line.
    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    /// The stderr lines so far that contain `substr`.
    pub fn log_lines_with(&self, substr: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.contains(substr))
            .collect()
    }

    /// How many stderr lines so far contain `substr`.
    pub fn count_log(&self, substr: &str) -> usize {
        self.process.count_lines(substr)
    }

    /// Waits until some stderr line contains `substr`; false if `timeout` passed first.
    pub fn wait_for_log(&self, substr: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(substr, 1, timeout)
    }

    /// Waits until at least `count` stderr lines contain `substr`.
    pub fn wait_for_log_count(&self, substr: &str, count: usize, timeout: Duration) -> bool {
        self.process.wait_for_lines(substr, count, timeout)
    }

    /// Waits (≤`within`) until some stderr line contains `needle`; panics, showing the log, if
    /// none does.
    #[track_caller]
    pub fn expect_log(&self, needle: &str, within: Duration) {
        if !self.wait_for_log(needle, within) {
            panic!(
                "no log line with {needle:?} within {within:?}; log:\n{}",
                self.log_text()
            );
        }
    }

    /// Waits (≤`within`) until at least `count` stderr lines contain `needle`; panics, showing
    /// the log, if they do not.
    #[track_caller]
    pub fn expect_log_count(&self, needle: &str, count: usize, within: Duration) {
        if !self.wait_for_log_count(needle, count, within) {
            panic!(
                "fewer than {count} log lines with {needle:?} within {within:?}; log:\n{}",
                self.log_text()
            );
        }
    }

    /// Makes lb-mio log a line and waits for it: a request without `Host`, which the worker
    /// that takes it rejects and logs after everything it logged before. With one worker,
    /// `log()` then holds every line about what came before this call.
    #[track_caller]
    pub fn sync_log(&self) {
        let before = self.count_log("rejected request");
        let resp = request(self.addr, "GET /sync-log HTTP/1.1\r\n\r\n");
        assert_eq!(resp.status, 400, "{}", resp.head_str());
        self.expect_log_count("rejected request", before + 1, SYNC_TIMEOUT);
    }

    /// `GET path` on its first address, which must answer `200`: the body (with mock backends
    /// that answer with their names, the backend that served it).
    #[track_caller]
    pub fn get_body(&self, path: &str) -> String {
        let resp = get(self.addr, path);
        assert_eq!(
            resp.status,
            200,
            "{path}: {}; log:\n{}",
            resp.head_str(),
            self.log_text()
        );
        resp.body_str()
    }

    /// The log lines so far that end a reload attempt, one way or the other.
    fn reload_outcomes(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| l.contains("reloaded ") || l.contains("reload failed"))
            .collect()
    }

    /// Rewrites the config file in place, sends SIGHUP and returns the log line that says how
    /// the reload went (waits ≤5 s for it; panics, showing the log, without one).
    #[track_caller]
    pub fn reload(&self, ini: &str) -> String {
        std::fs::write(self.config_path(), ini).expect("rewrite the config file");
        let before = self.reload_outcomes().len();
        self.signal("HUP");
        let done = wait_until(SYNC_TIMEOUT, || self.reload_outcomes().len() > before);
        assert!(
            done,
            "no reload outcome logged after SIGHUP; log:\n{}",
            self.log_text()
        );
        self.reload_outcomes().swap_remove(before)
    }

    /// `reload`, which must succeed.
    #[track_caller]
    pub fn reload_ok(&self, ini: &str) {
        let outcome = self.reload(ini);
        assert!(
            outcome.contains("reloaded "),
            "the reload failed: {outcome}\nconfig:\n{ini}"
        );
    }

    /// The process's exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// Waits (≤ `timeout`) for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Sends `signal` (`HUP`, `TERM`, `INT`...) to the process.
    #[track_caller]
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Panics (showing the log) if the process exited or any thread panicked.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.exited() {
            panic!("lb-mio exited ({status}); log:\n{}", self.log_text());
        }
        assert_eq!(
            self.count_log("panicked"),
            0,
            "a thread panicked; log:\n{}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Every address in the `lb-mio listening on A, B: ...` line.
    #[track_caller]
    pub fn listening_on(&self) -> Vec<SocketAddr> {
        self.log()
            .iter()
            .find_map(|l| listening_on(l))
            .unwrap_or_else(|| panic!("no listening line; log:\n{}", self.log_text()))
    }

    /// Every address in the `lb-mio listening for TLS on A, B: N certificates` line (logged
    /// before the line `Lb::start` waits for).
    #[track_caller]
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.log()
            .iter()
            .find_map(|l| addrs_after(l, "lb-mio listening for TLS on "))
            .unwrap_or_else(|| panic!("no TLS listening line; log:\n{}", self.log_text()))
    }

    /// The first TLS address.
    #[track_caller]
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addrs()[0]
    }

    /// The admin address from `admin API listening on http://127.0.0.1:PORT/` (logged before
    /// the line `Lb::start` waits for).
    #[track_caller]
    pub fn admin_addr(&self) -> SocketAddr {
        self.log()
            .iter()
            .find_map(|line| {
                let rest = &line[line.find("admin API listening on http://")? + 30..];
                rest.trim_end_matches('/').parse().ok()
            })
            .unwrap_or_else(|| panic!("no admin listening line; log:\n{}", self.log_text()))
    }

    pub fn config_path(&self) -> &Path {
        self.config.path()
    }
}

/// The addresses in a `... lb-mio listening on A, B: ...` line.
fn listening_on(line: &str) -> Option<Vec<SocketAddr>> {
    addrs_after(line, "lb-mio listening on ")
}

/// The addresses in a `... PREFIX A, B: ...` line.
fn addrs_after(line: &str, prefix: &str) -> Option<Vec<SocketAddr>> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let list = &rest[..rest.find(": ")?];
    list.split(", ").map(|a| a.parse().ok()).collect()
}

/// Runs `lb-mio ARGS` (≤10 s, then killed); returns (exit status, stdout, stderr).
#[track_caller]
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = run_within(Command::new(BIN).args(args), CLI_TIMEOUT).expect("spawn lb-mio");
    match out.status {
        Some(status) => (status, out.stdout, out.stderr),
        None => panic!("lb-mio {args:?} still running after {CLI_TIMEOUT:?}; killed"),
    }
}
