//! A real etcd (Debian's `etcd-server`) on loopback, its data directory on tmpfs, on ports
//! free when it started; killed on drop, its data removed. `kill` and `restart` keep the data
//! directory and the ports, as a member that crashed and came back.

use super::process::{Pipe, Process};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What etcd logs once it takes client requests (both of its loggers say it).
const READY: &str = "ready to serve client requests";
/// etcd starts in about a second; a loaded CI machine may take longer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Etcd {
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    extra: Vec<String>,
    process: Option<Process>,
}

impl Etcd {
    /// A single-member etcd with `extra` flags (e.g. a short
    /// `--experimental-watch-progress-notify-interval`).
    pub fn start(extra: &[&str]) -> Etcd {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/dev/shm/lb-mio-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut etcd = Etcd {
            client: free_port(),
            peer: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            process: None,
        };
        etcd.restart();
        etcd
    }

    /// `host:port` for clients.
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// Kills etcd at once (SIGKILL), leaving its data as it was.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts etcd (again) on the same data directory and ports, and waits until it serves.
    #[track_caller]
    pub fn restart(&mut self) {
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let mut command = Command::new("etcd");
        command
            .args(["--name", "default", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(&self.extra);
        let process = Process::spawn(&mut command, Pipe::Stderr).expect("run etcd (etcd-server)");
        let ready = process.wait_for_lines(READY, 1, START_TIMEOUT);
        assert!(ready, "etcd did not start:\n{}", process.lines().join("\n"));
        self.process = Some(process);
    }

    /// `etcdctl` against this etcd; its stdout. Panics if it fails.
    #[track_caller]
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint()])
            .args(args);
        let output = super::run_within(&mut command, Duration::from_secs(10)).expect("run etcdctl");
        output.stdout_of_success(&format!("etcdctl {}", args.join(" ")))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.process = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}
