//! Child processes: one that runs beside the test (its output gathered line by line, killed on
//! drop) or one that runs to its end within a time limit.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The output pipe of a child that `Process` gathers (the other one goes to /dev/null).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    Stdout,
    Stderr,
}

/// The lines read so far, and whether the pipe has closed.
#[derive(Default)]
struct Gathered {
    lines: Vec<String>,
    closed: bool,
}

/// A child's lines on one pipe, gathered by a thread as they come; waiters are woken at each.
#[derive(Clone, Default)]
struct Lines(Arc<(Mutex<Gathered>, Condvar)>);

impl Lines {
    fn gather(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            // Ends at EOF: when the child (and whatever inherited the pipe) is gone.
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                sink.update(|g| g.lines.push(text));
                line.clear();
            }
            sink.update(|g| g.closed = true);
        });
        lines
    }

    fn update(&self, change: impl FnOnce(&mut Gathered)) {
        let (lock, cv) = &*self.0;
        change(&mut lock.lock().unwrap());
        cv.notify_all();
    }

    fn with<T>(&self, f: impl FnOnce(&Gathered) -> T) -> T {
        f(&self.0 .0.lock().unwrap())
    }

    /// Waits until `done` holds for what is gathered; false if `timeout` passed first.
    fn wait(&self, timeout: Duration, mut done: impl FnMut(&Gathered) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.0;
        let mut guard = lock.lock().unwrap();
        loop {
            if done(&guard) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }
}

/// A child process running beside the test, killed on drop. What it writes to one pipe is
/// gathered line by line.
pub struct Process {
    child: Child,
    lines: Lines,
}

impl Process {
    /// Spawns `command` with no input, gathering the lines it writes to `pipe`.
    pub fn spawn(command: &mut Command, pipe: Pipe) -> io::Result<Process> {
        let (out, err) = match pipe {
            Pipe::Stdout => (Stdio::piped(), Stdio::null()),
            Pipe::Stderr => (Stdio::null(), Stdio::piped()),
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        let lines = match pipe {
            Pipe::Stdout => Lines::gather(child.stdout.take().expect("piped stdout")),
            Pipe::Stderr => Lines::gather(child.stderr.take().expect("piped stderr")),
        };
        Ok(Process { child, lines })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.with(|g| g.lines.clone())
    }

    /// How many lines so far contain `substr`.
    pub fn count_lines(&self, substr: &str) -> usize {
        self.lines.with(|g| count(&g.lines, substr))
    }

    /// Waits until at least `n` lines contain `substr`; false if `timeout` passed first.
    pub fn wait_for_lines(&self, substr: &str, n: usize, timeout: Duration) -> bool {
        self.lines.wait(timeout, |g| count(&g.lines, substr) >= n)
    }

    /// Waits until a new line comes, the pipe closes or `timeout` passes.
    pub fn wait_for_more(&self, timeout: Duration) {
        let seen = self.lines.with(|g| g.lines.len());
        self.lines
            .wait(timeout, |g| g.lines.len() > seen || g.closed);
    }

    /// Waits until the pipe closes (every line is in then); false if `timeout` passed first.
    pub fn wait_for_eof(&self, timeout: Duration) -> bool {
        self.lines.wait(timeout, |g| g.closed)
    }

    /// The exit status if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits (≤ `timeout`) for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` (`HUP`, `TERM`, `INT`...) with kill(1).
    #[track_caller]
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(lines: &[String], substr: &str) -> usize {
    lines.iter().filter(|l| l.contains(substr)).count()
}

/// What a command that ran to its end (or was killed) wrote.
#[derive(Debug)]
pub struct Output {
    /// `None` when it was still running at the time limit and was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The stdout of a command that must have exited 0; panics showing `what` ran, its status
    /// and its stderr otherwise.
    #[track_caller]
    pub fn stdout_of_success(self, what: &str) -> String {
        assert!(
            self.status.is_some_and(|s| s.success()),
            "{what}: {:?}\n{}",
            self.status,
            self.stderr
        );
        self.stdout
    }
}

/// Runs `command` with no input to its end, killing it after `timeout`; both output pipes are
/// read meanwhile, so a chatty child cannot block on a full pipe.
pub fn run_within(command: &mut Command, timeout: Duration) -> io::Result<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    finish_within(child, timeout)
}

/// `run_within`, with `input` written to the command's stdin (from a thread of its own), which
/// is then closed.
pub fn run_with_input(
    command: &mut Command,
    input: &[u8],
    timeout: Duration,
) -> io::Result<Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A child that exits without reading makes this fail: what it wrote tells why.
    thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    finish_within(child, timeout)
}

/// Reads both output pipes of `child` to their end and waits for it, killing it after
/// `timeout`.
fn finish_within(mut child: Child, timeout: Duration) -> io::Result<Output> {
    let stdout = read_all(child.stdout.take().expect("piped stdout"));
    let stderr = read_all(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads a pipe to its end on a thread of its own.
fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
