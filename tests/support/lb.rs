//! The balancer under test: `lb-mio CONFIG` started, watched through its log and stopped on drop;
//! one-shot command lines; config files built from backends.

use super::util::TempFile;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_lb-mio");
/// How long `Lb::start` waits for the "listening" log line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `run_cli` lets the binary run before killing it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);

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

/// An address on loopback where nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

type LogLines = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A running `lb-mio CONFIG`; killed (and its config removed) on drop.
pub struct Lb {
    pub addr: SocketAddr,
    child: Child,
    log: LogLines,
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

    /// Like `try_start`, but runs the command `command` makes of the config file's path: one
    /// that ends up as (or `exec`s) `lb-mio CONFIG`.
    pub fn try_start_as(ini: &str, command: impl FnOnce(&Path) -> Command) -> Result<Lb, String> {
        let config = TempFile::new(".ini", ini.as_bytes());
        let mut child = command(config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lb-mio");
        let stderr = child.stderr.take().expect("piped stderr");
        let log: LogLines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = Arc::clone(&log);
        let reader_thread = thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        let (lock, cv) = &*sink;
                        lock.lock().unwrap().push(text);
                        cv.notify_all();
                    }
                }
            }
            // Wake waiters so they notice the end promptly.
            sink.1.notify_all();
        });
        let mut lb = Lb {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            log,
            config,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(addr) = lb.log().iter().find_map(|l| parse_listening(l)) {
                lb.addr = addr;
                return Ok(lb);
            }
            if let Ok(Some(status)) = lb.child.try_wait() {
                // The pipe is at EOF once the process is gone: let the reader drain it.
                let _ = reader_thread.join();
                return Err(format!("(exited: {status})\n{}", lb.log_text()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "(no listening line in {START_TIMEOUT:?})\n{}",
                    lb.log_text()
                ));
            }
            let (lock, cv) = &*lb.log;
            let guard = lock.lock().unwrap();
            let _ = cv.wait_timeout(guard, Duration::from_millis(20)).unwrap();
        }
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    /// The whole stderr so far, one line per line.
    pub fn log_text(&self) -> String {
        self.log().join("\n")
    }

    /// How many stderr lines so far contain `substr`.
    pub fn count_log(&self, substr: &str) -> usize {
        self.log
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(substr))
            .count()
    }

    /// Waits until some stderr line contains `substr`; false if `timeout` passed first.
    pub fn wait_for_log(&self, substr: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(substr, 1, timeout)
    }

    /// Waits until at least `count` stderr lines contain `substr`.
    pub fn wait_for_log_count(&self, substr: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.log;
        let mut guard = lock.lock().unwrap();
        loop {
            if guard.iter().filter(|l| l.contains(substr)).count() >= count {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Bounded slices, so a process that dies (no more notifications) cannot stall us.
            let slice = (deadline - now).min(Duration::from_millis(50));
            guard = cv.wait_timeout(guard, slice).unwrap().0;
        }
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

    /// The process's exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
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
        self.child.id()
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

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in `... lb-mio listening on 127.0.0.1:PORT: ...`.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("lb-mio listening on ")? + "lb-mio listening on ".len()..];
    let word = rest.split_whitespace().next()?;
    word.trim_end_matches([':', ',']).parse().ok()
}

/// Runs `lb-mio ARGS` (≤10 s, then killed); returns (exit status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lb-mio");
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            panic!("lb-mio {args:?} still running after {CLI_TIMEOUT:?}; killed ({status})");
        }
        thread::sleep(Duration::from_millis(5));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}
