//! A real etcd (Debian's `etcd-server`) on loopback, its data directory on tmpfs, on ports
//! free when it started; killed on drop, its data removed. `kill` and `restart` keep the data
//! directory and the ports, as a member that crashed and came back. It may serve clients over
//! TLS (asking them for a certificate, or not), and have user/password auth enabled; `ctl`
//! then speaks to it the same way.

use super::process::{Pipe, Process};
use super::tls::{KeyKind, Pki};
use super::util::free_port;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
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

impl EtcdTls {
    /// A certificate for 127.0.0.1 from `pki`, asking clients for one of theirs with
    /// `client_cert_auth`.
    pub fn on_loopback(pki: &Pki, client_cert_auth: bool) -> EtcdTls {
        let member = pki.leaf("etcd", KeyKind::Ecdsa, &["127.0.0.1"]);
        EtcdTls {
            cert: member.cert,
            key: member.key,
            ca: pki.ca.clone(),
            client_cert_auth,
        }
    }
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
        let peer = format!("http://{}", self.peer);
        let initial = format!("default={peer}");
        let mut command = etcd_command("default", &self.dir, &self.url(), &peer, &initial);
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

// ---------------------------------------------------------------------------------------------
// A cluster of several members on loopback, and leases held from the command line
// ---------------------------------------------------------------------------------------------

/// Short raft timings, so a cluster that lost its leader elects another in well under a
/// second (etcd's defaults are 100 ms and 1 s).
const CLUSTER_TIMING: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

/// A real etcd cluster of `n` members on loopback, each with its data directory on tmpfs;
/// each member can be killed and restarted on its data (as a member that crashed and came
/// back). Killed on drop, data removed.
pub struct EtcdCluster {
    members: Vec<ClusterMember>,
    /// `name=http://peer,...` for every member.
    initial: String,
    token: String,
}

struct ClusterMember {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    process: Option<Process>,
}

impl EtcdCluster {
    /// Starts `n` members at once (each waits for a quorum before it serves) and waits until
    /// every one serves.
    #[track_caller]
    pub fn start(n: usize) -> EtcdCluster {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let id = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Every port held until all are chosen, so no two are the same.
        let held: Vec<TcpListener> = (0..2 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
            .collect();
        let ports: Vec<SocketAddr> = held.iter().map(|l| l.local_addr().unwrap()).collect();
        drop(held);
        let members: Vec<ClusterMember> = (0..n)
            .map(|i| {
                let dir = PathBuf::from(format!(
                    "/dev/shm/lb-mio-etcd-cluster-{}-{id}-m{i}",
                    std::process::id()
                ));
                let _ = std::fs::remove_dir_all(&dir);
                ClusterMember {
                    name: format!("m{i}"),
                    client: ports[2 * i],
                    peer: ports[2 * i + 1],
                    dir,
                    process: None,
                }
            })
            .collect();
        let initial = (members.iter())
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial,
            token: format!("lb-mio-test-{}-{id}", std::process::id()),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_ready(i);
        }
        cluster
    }

    /// `host:port` of member `i` for clients.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client.to_string()
    }

    /// Every member's endpoint, in order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The member whose client port is `port`, if any.
    pub fn member_at(&self, port: u16) -> Option<usize> {
        self.members.iter().position(|m| m.client.port() == port)
    }

    /// Kills member `i` at once (SIGKILL), leaving its data as it was.
    pub fn kill(&mut self, i: usize) {
        self.members[i].process = None;
    }

    /// Starts member `i` again on its data directory and ports; waits until it serves.
    #[track_caller]
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i);
    }

    /// `etcdctl` against member `i` only; its stdout. Panics if it fails, showing what every
    /// member logged.
    #[track_caller]
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(i)])
            .args(args);
        let output = super::run_within(&mut command, Duration::from_secs(10)).expect("run etcdctl");
        if output.status.is_some_and(|s| s.success()) {
            return output.stdout;
        }
        panic!(
            "etcdctl (member {i}) {}: {:?}\n{}\n{}",
            args.join(" "),
            output.status,
            output.stderr,
            self.logs()
        );
    }

    /// `put KEY VALUE` through member `i`, tried again (up to 5 times, 2 s each) while it
    /// fails: a write proposed while the cluster has no leader (the old one just killed, the
    /// election not yet over) is dropped, and etcdctl only sees its deadline pass. A put
    /// repeated writes the same value again.
    #[track_caller]
    pub fn put(&self, i: usize, key: &str, value: &str) {
        let mut errors = Vec::new();
        for _ in 0..5 {
            let mut command = Command::new("etcdctl");
            command
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.endpoint(i), "--command-timeout=2s"])
                .args(["put", key, value]);
            let output =
                super::run_within(&mut command, Duration::from_secs(5)).expect("run etcdctl");
            if output.status.is_some_and(|s| s.success()) {
                return;
            }
            errors.push(output.stderr);
        }
        panic!(
            "etcdctl (member {i}) put {key}: {}\n{}",
            errors.join("\n"),
            self.logs()
        );
    }

    /// What each running member logged, for a failure's message.
    pub fn logs(&self) -> String {
        (self.members.iter())
            .filter_map(|m| {
                let lines = m.process.as_ref()?.lines();
                Some(format!("--- {}:\n{}", m.name, lines.join("\n")))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn spawn(&mut self, i: usize) {
        let (initial, token) = (self.initial.clone(), self.token.clone());
        let m = &mut self.members[i];
        let (client, peer) = (format!("http://{}", m.client), format!("http://{}", m.peer));
        let mut command = etcd_command(&m.name, &m.dir, &client, &peer, &initial);
        command
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &token])
            .args(CLUSTER_TIMING);
        let process = Process::spawn(&mut command, Pipe::Stderr).expect("run etcd (etcd-server)");
        m.process = Some(process);
    }

    #[track_caller]
    fn wait_ready(&self, i: usize) {
        let process = self.members[i].process.as_ref().expect("spawned");
        let ready = process.wait_for_lines(READY, 1, START_TIMEOUT);
        assert!(
            ready,
            "etcd member {i} did not start:\n{}",
            process.lines().join("\n")
        );
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.process = None;
            let _ = std::fs::remove_dir_all(&m.dir);
        }
    }
}

/// `etcdctl --endpoints ENDPOINTS ARGS`; its stdout. Panics if it fails.
#[track_caller]
pub fn etcdctl(endpoints: &str, args: &[&str]) -> String {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints])
        .args(args);
    let output = super::run_within(&mut command, Duration::from_secs(10)).expect("run etcdctl");
    output.stdout_of_success(&format!("etcdctl {}", args.join(" ")))
}

/// A key put with a lease of its own, kept alive by `etcdctl lease keep-alive` running beside
/// the test: what a backend registering itself does. Revoked, or left to expire (the
/// keep-alive killed, as when the backend's host dies).
pub struct LeasedKey {
    pub endpoints: String,
    pub key: String,
    /// The lease ID as etcdctl writes it (hex).
    pub lease: String,
    keep_alive: Option<Process>,
}

impl LeasedKey {
    /// `lease grant TTL`, `put --lease=ID KEY VALUE`, then `lease keep-alive ID` beside the
    /// test.
    #[track_caller]
    pub fn put(endpoints: &str, key: &str, value: &str, ttl_s: u32) -> LeasedKey {
        // "lease 694d8c5d6e9a5b0c granted with TTL(5s)"
        let granted = etcdctl(endpoints, &["lease", "grant", &ttl_s.to_string()]);
        let lease = (granted.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no lease ID in {granted:?}"))
            .to_string();
        etcdctl(endpoints, &["put", &format!("--lease={lease}"), key, value]);
        let mut command = Command::new("etcdctl");
        command.env("ETCDCTL_API", "3").args([
            "--endpoints",
            endpoints,
            "lease",
            "keep-alive",
            &lease,
        ]);
        let keep_alive =
            Process::spawn(&mut command, Pipe::Stdout).expect("run etcdctl lease keep-alive");
        LeasedKey {
            endpoints: endpoints.to_string(),
            key: key.to_string(),
            lease,
            keep_alive: Some(keep_alive),
        }
    }

    /// Stops keeping the lease alive (its key goes when its TTL runs out).
    pub fn abandon(&mut self) {
        self.keep_alive = None;
    }

    /// `lease revoke ID`: the key is deleted at once.
    #[track_caller]
    pub fn revoke(&mut self) {
        self.keep_alive = None;
        etcdctl(&self.endpoints, &["lease", "revoke", &self.lease]);
    }
}

/// `etcd` as member `name` of `initial_cluster`, its data in `dir`, serving clients at `client`
/// and peers at `peer` (URLs).
fn etcd_command(
    name: &str,
    dir: &Path,
    client: &str,
    peer: &str,
    initial_cluster: &str,
) -> Command {
    let mut command = Command::new("etcd");
    command
        .args(["--name", name, "--data-dir"])
        .arg(dir)
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", initial_cluster]);
    command
}
