//! A real etcd (Debian's `etcd-server`) on loopback, its data directory on tmpfs, on ports
//! free when it started; killed on drop, its data removed. `kill` and `restart` keep the data
//! directory and the ports, as a member that crashed and came back. It may serve clients over
//! TLS (asking them for a certificate, or not), and have user/password auth enabled; `ctl`
//! then speaks to it the same way.

use super::process::{Pipe, Process};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// What etcd logs once it takes client requests (both of its loggers say it).
const READY: &str = "ready to serve client requests";
/// etcd starts in about a second; a loaded CI machine may take longer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Etcd {
    pub client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    extra: Vec<String>,
    tls: Option<EtcdTls>,
    /// `user:password` for `etcdctl`, once `enable_auth` turned auth on.
    ctl_user: Option<String>,
    process: Option<Process>,
}

/// TLS on etcd's client URLs (the peer URL stays plain: there is one member).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// etcd's certificate and key (`--cert-file`, `--key-file`). `etcdctl` presents them as
    /// its client certificate too, so the certificate should allow clientAuth (a `Pki` leaf
    /// does).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed `cert`, which `etcdctl` trusts; with `client_cert_auth`, also the
    /// one clients' certificates must chain to (`--trusted-ca-file`).
    pub ca: PathBuf,
    /// `--client-cert-auth`: a client without a certificate from `ca` is turned away.
    pub client_cert_auth: bool,
}

impl Etcd {
    /// A single-member etcd with `extra` flags (e.g. a short
    /// `--experimental-watch-progress-notify-interval`).
    pub fn start(extra: &[&str]) -> Etcd {
        Etcd::start_on(LOCALHOST.into(), None, extra)
    }

    /// `start`, serving clients over TLS as `tls` says (`https` client URLs).
    pub fn start_tls(tls: EtcdTls, extra: &[&str]) -> Etcd {
        Etcd::start_on(LOCALHOST.into(), Some(tls), extra)
    }

    /// `start` on the loopback address `ip` (`::1` for IPv6), over TLS if `tls` is given.
    pub fn start_on(ip: IpAddr, tls: Option<EtcdTls>, extra: &[&str]) -> Etcd {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/dev/shm/lb-mio-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut etcd = Etcd {
            client: free_port(ip),
            peer: free_port(ip),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            ctl_user: None,
            process: None,
        };
        etcd.restart();
        etcd
    }

    /// `host:port` for clients.
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// The client URL: `http://host:port`, or `https://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// Adds user `root` with `password` and turns auth on (with `etcdctl`, which then signs
    /// in as root for the rest of the test).
    #[track_caller]
    pub fn enable_auth(&mut self, password: &str) {
        self.ctl(&["user", "add", &format!("root:{password}")]);
        self.ctl(&["auth", "enable"]);
        self.ctl_user = Some(format!("root:{password}"));
    }

    /// Kills etcd at once (SIGKILL), leaving its data as it was.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts etcd (again) on the same data directory and ports, and waits until it serves.
    #[track_caller]
    pub fn restart(&mut self) {
        let client = self.url();
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
            .args(["--initial-cluster", &format!("default={peer}")]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
            if tls.client_cert_auth {
                command
                    .arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(&tls.ca);
            }
        }
        command.args(&self.extra);
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
            .args(["--endpoints", &self.url()]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.cert)
                .arg("--key")
                .arg(&tls.key);
        }
        if let Some(user) = &self.ctl_user {
            command.args(["--user", user]);
        }
        command.args(args);
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

/// A port on loopback address `ip` that nobody listens on now.
fn free_port(ip: IpAddr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind a free port");
    listener.local_addr().expect("local address")
}
