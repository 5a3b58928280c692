//! TLS from the outside: a throwaway PKI made with the `openssl` CLI in a temp directory, the
//! real clients (`curl`, `openssl s_client`) run within a time limit, a ClientHello read apart,
//! and a small blocking rustls client for what the CLIs cannot do (a PROXY header first).

use super::lb::ini;
use super::process::{run_with_input, Output};
use super::util::{wait_until, TempDir};
use super::IO_TIMEOUT;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long one `openssl` or `curl` run may take before it is killed.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The PKI
// ---------------------------------------------------------------------------------------------

/// The kind of key a leaf certificate has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256.
    Ecdsa,
    /// RSA, 2048 bits.
    Rsa,
}

impl KeyKind {
    fn genpkey_args(self) -> [&'static str; 4] {
        match self {
            KeyKind::Ecdsa => ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::Rsa => ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        }
    }

    /// The name `/api/certificates` gives it.
    pub fn api_name(self) -> &'static str {
        match self {
            KeyKind::Ecdsa => "ECDSA",
            KeyKind::Rsa => "RSA",
        }
    }
}

/// When a leaf certificate is valid.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// From now on for this many days.
    Days(u32),
    /// From one time to another, as `openssl ca` takes them (`20200101000000Z`).
    Between(&'static str, &'static str),
}

/// A certificate authority of the test's own, in a temp directory removed on drop, and the
/// leaf certificates it signed there.
pub struct Pki {
    dir: TempDir,
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
}

/// A leaf certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Its subject's common name; unique in its `Pki`, so it tells which certificate was served.
    pub cn: String,
    /// Its subjectAltName names: DNS names, and IP addresses.
    pub names: Vec<String>,
    pub kind: KeyKind,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// `openssl ca`'s configuration: a database in the directory, any subject, extensions from
/// `-extfile` only.
const CA_CONFIG: &str = "\
[ca]
default_ca = test
[test]
dir = .
database = index.txt
new_certs_dir = issued
serial = serial
certificate = ca.pem
private_key = ca.key
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
";

impl Pki {
    /// A fresh CA (ECDSA P-256, valid 30 days).
    pub fn new() -> Pki {
        let dir = TempDir::new("-pki");
        let path = dir.path();
        std::fs::write(path.join("ca.cnf"), CA_CONFIG).expect("write ca.cnf");
        std::fs::write(path.join("index.txt"), "").expect("write index.txt");
        std::fs::write(path.join("serial"), "1000\n").expect("write serial");
        std::fs::create_dir(path.join("issued")).expect("create issued/");
        openssl(
            path,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/CN=lb-mio test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        let ca = path.join("ca.pem");
        Pki { dir, ca }
    }

    /// A file path in the PKI's directory (for test files that should go away with it).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The CA certificate's path as text (for command lines).
    pub fn ca_str(&self) -> &str {
        self.ca.to_str().expect("temp path is UTF-8")
    }

    /// A leaf certificate valid from now for 30 days, with common name `cn` and these DNS
    /// names (`*.example.com` for a wildcard), signed by the CA. A name that is an IP address
    /// (`127.0.0.1`, `::1`) goes in as an IP address, as a server reached by address needs.
    pub fn leaf(&self, cn: &str, kind: KeyKind, names: &[&str]) -> Leaf {
        self.leaf_valid(cn, kind, names, Validity::Days(30))
    }

    /// `leaf`, valid when `validity` says (already expired, expiring soon...).
    pub fn leaf_valid(&self, cn: &str, kind: KeyKind, names: &[&str], validity: Validity) -> Leaf {
        let dir = self.dir.path();
        let (cert, key, csr, ext) = (
            format!("{cn}.pem"),
            format!("{cn}.key"),
            format!("{cn}.csr"),
            format!("{cn}.ext"),
        );
        assert!(!dir.join(&cert).exists(), "two leaves named {cn}");
        let san: Vec<String> = names.iter().map(|n| san_entry(n)).collect();
        let usage = match kind {
            KeyKind::Ecdsa => "digitalSignature",
            KeyKind::Rsa => "digitalSignature,keyEncipherment",
        };
        let extensions = format!(
            "subjectAltName = {}\nbasicConstraints = CA:FALSE\nkeyUsage = critical,{usage}\n\
             extendedKeyUsage = serverAuth, clientAuth\n",
            san.join(",")
        );
        std::fs::write(dir.join(&ext), extensions).expect("write extensions");
        self.new_key(kind, &key);
        let subject = format!("/CN={cn}");
        openssl(
            dir,
            &["req", "-new", "-key", &key, "-subj", &subject, "-out", &csr],
        );
        let days = match validity {
            Validity::Days(n) => n.to_string(),
            Validity::Between(..) => String::new(),
        };
        let mut args = vec![
            "ca", "-batch", "-config", "ca.cnf", "-notext", "-in", &csr, "-out", &cert, "-extfile",
            &ext,
        ];
        match validity {
            Validity::Days(_) => args.extend(["-days", &days]),
            Validity::Between(start, end) => args.extend(["-startdate", start, "-enddate", end]),
        }
        openssl(dir, &args);
        Leaf {
            cn: cn.to_string(),
            names: names.iter().map(|n| n.to_string()).collect(),
            kind,
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    /// A leaf certificate (ECDSA, 30 days) signed by an intermediate CA that the root signed,
    /// in a full-chain file: the leaf, then the intermediate. Clients trust the root only, so
    /// they check out the chain only if the server sends all of it.
    pub fn chained_leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        let dir = self.dir.path();
        let constraints =
            "basicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n";
        std::fs::write(dir.join("intermediate.ext"), constraints).expect("write extensions");
        self.new_key(KeyKind::Ecdsa, "intermediate.key");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                "intermediate.key",
                "-subj",
                "/CN=lb-mio test intermediate",
                "-out",
                "intermediate.csr",
            ],
        );
        openssl(
            dir,
            &[
                "ca",
                "-batch",
                "-config",
                "ca.cnf",
                "-notext",
                "-in",
                "intermediate.csr",
                "-out",
                "intermediate.pem",
                "-extfile",
                "intermediate.ext",
                "-days",
                "30",
            ],
        );
        let (cert, key, csr, ext) = (
            format!("{cn}.pem"),
            format!("{cn}.key"),
            format!("{cn}.csr"),
            format!("{cn}.ext"),
        );
        let san: Vec<String> = names.iter().map(|n| san_entry(n)).collect();
        let extensions = format!(
            "subjectAltName = {}\nbasicConstraints = CA:FALSE\n\
             keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n",
            san.join(",")
        );
        std::fs::write(dir.join(&ext), extensions).expect("write extensions");
        self.new_key(KeyKind::Ecdsa, &key);
        let subject = format!("/CN={cn}");
        openssl(
            dir,
            &["req", "-new", "-key", &key, "-subj", &subject, "-out", &csr],
        );
        let leaf_only = format!("{cn}.leaf.pem");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "intermediate.pem",
                "-CAkey",
                "intermediate.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &ext,
                "-out",
                &leaf_only,
            ],
        );
        let chain = std::fs::read_to_string(dir.join(&leaf_only)).expect("read the leaf")
            + &std::fs::read_to_string(dir.join("intermediate.pem"))
                .expect("read the intermediate");
        std::fs::write(dir.join(&cert), chain).expect("write the chain");
        Leaf {
            cn: cn.to_string(),
            names: names.iter().map(|n| n.to_string()).collect(),
            kind: KeyKind::Ecdsa,
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    /// A fresh private key of this kind that belongs to no certificate.
    pub fn stray_key(&self, file: &str, kind: KeyKind) -> PathBuf {
        self.new_key(kind, file);
        self.path(file)
    }

    fn new_key(&self, kind: KeyKind, file: &str) {
        let mut args = vec!["genpkey"];
        args.extend(kind.genpkey_args());
        args.extend(["-out", file]);
        openssl(self.dir.path(), &args);
    }

    /// A ticket key file: `lines` lines of 64 hex digits each (`openssl rand -hex 32`).
    pub fn ticket_keys(&self, file: &str, lines: usize) -> PathBuf {
        let text: String = (0..lines)
            .map(|_| openssl(self.dir.path(), &["rand", "-hex", "32"]))
            .collect();
        let path = self.path(file);
        std::fs::write(&path, text).expect("write the ticket key file");
        path
    }
}

/// A subjectAltName entry for `openssl`'s extension file: `IP:` for an address, `DNS:` else.
fn san_entry(name: &str) -> String {
    match name.parse::<std::net::IpAddr>() {
        Ok(_) => format!("IP:{name}"),
        Err(_) => format!("DNS:{name}"),
    }
}

impl Leaf {
    /// The value of its `[certificates]` line: the certificate file, then the key file.
    pub fn entry(&self) -> String {
        format!("{} {}", self.cert.display(), self.key.display())
    }

    pub fn cert_str(&self) -> &str {
        self.cert.to_str().expect("temp path is UTF-8")
    }

    /// Its notAfter as seconds since 1970, as `openssl x509 -enddate` tells it.
    pub fn not_after(&self) -> i64 {
        let out = openssl(
            Path::new("."),
            &[
                "x509",
                "-in",
                self.cert_str(),
                "-noout",
                "-enddate",
                "-dateopt",
                "iso_8601",
            ],
        );
        // notAfter=2027-01-04 05:45:36Z
        let date = out.trim().strip_prefix("notAfter=").expect("notAfter=");
        utc_seconds(date).unwrap_or_else(|| panic!("unreadable notAfter {out:?}"))
    }
}

/// Runs `openssl ARGS` in `dir` to its end; panics (showing its stderr) unless it succeeds.
/// Returns its stdout.
#[track_caller]
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    openssl_with_input(dir, args, b"")
}

/// `openssl ARGS` with `input` on its stdin.
#[track_caller]
pub fn openssl_with_input(dir: &Path, args: &[&str], input: &[u8]) -> String {
    let out = run_with_input(
        Command::new("openssl").args(args).current_dir(dir),
        input,
        TOOL_TIMEOUT,
    )
    .expect("run openssl");
    match out.status {
        Some(status) if status.success() => out.stdout,
        status => panic!("openssl {args:?}: {status:?}\n{}", out.stderr),
    }
}

/// Seconds since 1970 of a UTC time written `2027-01-04 05:45:36Z` or `2027-01-04T05:45:36Z`
/// (fractions of a second, `+00:00` also taken); `None` if it is not one.
pub fn utc_seconds(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |from: usize, to: usize| -> Option<i64> {
        let part = text.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        rest = fraction.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    if !matches!(rest, "Z" | "+00:00") {
        return None;
    }
    let (month, day) = (digits(5, 7)?, digits(8, 10)?);
    // Howard Hinnant's days_from_civil.
    let year = digits(0, 4)? - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + digits(11, 13)? * 3600 + digits(14, 16)? * 60 + digits(17, 19)?)
}

/// A config with a TLS listener on a port the kernel picks (`tls_listen = 127.0.0.1:0`) and
/// these `[certificates]` entries in order (the first is the default), then `extra` as
/// [`ini`] takes it (an `[lb]` key there overrides these).
///
/// The plain listener is `[::1]:0`: lb-mio refuses an address that is in both `listen` and
/// `tls_listen` and, as of this writing, counts `127.0.0.1:0` twice as one address (the test
/// `port_0_in_listen_and_tls_listen_makes_two_listeners` is about that).
pub fn tls_ini(backends: &[(&str, SocketAddr)], certs: &[(&str, &Leaf)], extra: &str) -> String {
    let entries: Vec<(&str, String)> = certs.iter().map(|(n, l)| (*n, l.entry())).collect();
    tls_ini_entries(backends, &entries, extra)
}

/// `tls_ini` with `[certificates]` lines as given: (name, "CERT_FILE KEY_FILE").
pub fn tls_ini_entries(
    backends: &[(&str, SocketAddr)],
    certs: &[(&str, String)],
    extra: &str,
) -> String {
    let mut more =
        String::from("[lb]\nlisten = [::1]:0\ntls_listen = 127.0.0.1:0\n[certificates]\n");
    for (name, entry) in certs {
        more.push_str(&format!("{name} = {entry}\n"));
    }
    more.push_str(extra);
    ini(backends, &more)
}

/// The 1-based line of `text` that starts with `prefix` (for `FILE:LINE:` in messages).
#[track_caller]
pub fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
        + 1
}

// ---------------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------------

/// `curl -sS --max-time 10 --cacert CA --resolve HOST:PORT:IP ARGS https://HOST:PORT/PATH...`
/// run to its end (one URL per path, on one connection when it can). `host` is what the
/// client asks for (SNI, certificate check, `Host`); `addr` is where it connects.
pub fn curl(pki: &Pki, host: &str, addr: SocketAddr, args: &[&str], paths: &[&str]) -> Output {
    let ip = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let port = addr.port();
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--cacert", pki.ca_str()])
        .arg("--resolve")
        .arg(format!("{host}:{port}:{ip}"))
        .args(args)
        .args(paths.iter().map(|p| format!("https://{host}:{port}{p}")));
    run_with_input(&mut command, b"", TOOL_TIMEOUT).expect("run curl")
}

/// `curl`, which must exit 0; returns its stdout. Panics showing its stderr otherwise.
#[track_caller]
pub fn curl_ok(pki: &Pki, host: &str, addr: SocketAddr, args: &[&str], paths: &[&str]) -> String {
    curl(pki, host, addr, args, paths)
        .stdout_of_success(&format!("curl {args:?} {paths:?} to {host} at {addr}"))
}

// ---------------------------------------------------------------------------------------------
// openssl s_client
// ---------------------------------------------------------------------------------------------

/// What `openssl s_client` printed, with readers for what a user looks at in it.
#[derive(Debug, Clone)]
pub struct SOut {
    /// `None` when it was still running at the time limit and was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl SOut {
    /// The `New, TLSv1.3, Cipher is ...` (or `Reused, ...`) line, if a session was set up.
    fn session_line(&self) -> Option<&str> {
        self.stdout.lines().find(|l| {
            (l.starts_with("New, ") || l.starts_with("Reused, ")) && !l.contains("(NONE)")
        })
    }

    /// Whether the handshake completed. (A TLS 1.3 client prints its session line once the
    /// ServerHello is in, even when the server then refuses with an alert: a completed
    /// handshake also has the server's certificate, which a resumed session keeps.)
    pub fn handshake_done(&self) -> bool {
        self.session_line().is_some() && !self.stdout.contains("no peer certificate available")
    }

    /// The version the handshake agreed (`TLSv1.3`), if it completed.
    pub fn protocol(&self) -> Option<&str> {
        self.session_line()?.split(", ").nth(1)
    }

    /// The cipher the handshake agreed, in OpenSSL's naming.
    pub fn cipher(&self) -> Option<&str> {
        self.session_line()?.split("Cipher is ").nth(1)
    }

    /// Whether the session was resumed (`Reused, ...`).
    pub fn reused(&self) -> bool {
        self.session_line()
            .is_some_and(|l| l.starts_with("Reused, "))
    }

    /// The agreed ALPN protocol, if any.
    pub fn alpn(&self) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("ALPN protocol: "))
    }

    /// The served certificate's common name (from `subject=CN = NAME`).
    pub fn subject_cn(&self) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("subject=")?.split("CN = ").nth(1))
            .map(|cn| cn.split(',').next().unwrap_or(cn).trim())
    }

    /// The served certificate, PEM.
    pub fn cert_pem(&self) -> Option<&str> {
        let begin = self.stdout.find("-----BEGIN CERTIFICATE-----")?;
        let end = self.stdout[begin..].find("-----END CERTIFICATE-----")? + begin + 25;
        Some(&self.stdout[begin..end])
    }

    /// The subjects of the chain the server sent, leaf first (the ` N s:` lines of
    /// `Certificate chain`).
    pub fn chain_subjects(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let (depth, subject) = l.trim_start().split_once(" s:")?;
                depth.parse::<u32>().ok().map(|_| subject)
            })
            .collect()
    }

    /// The served certificate's subjectAltName DNS names, read by `openssl x509`.
    #[track_caller]
    pub fn served_names(&self) -> Vec<String> {
        let pem = self
            .cert_pem()
            .unwrap_or_else(|| panic!("no certificate served:\n{}", self.all()));
        let text = openssl_with_input(
            Path::new("."),
            &["x509", "-noout", "-ext", "subjectAltName"],
            pem.as_bytes(),
        );
        text.split([',', '\n'])
            .filter_map(|part| part.trim().strip_prefix("DNS:"))
            .map(str::to_string)
            .collect()
    }

    /// The kind of the server's handshake signature (`ECDSA`, `RSA-PSS`...).
    pub fn signature_type(&self) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("Peer signature type: "))
    }

    /// Whether the chain checked out against `-CAfile`.
    pub fn verified(&self) -> bool {
        self.stdout.lines().any(|l| l == "Verification: OK")
    }

    /// What came back over the connection: everything from the first HTTP status line on.
    pub fn http(&self) -> &str {
        self.stdout
            .find("HTTP/1.")
            .map_or("", |at| &self.stdout[at..])
    }

    /// Both outputs, for assertion messages.
    pub fn all(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// An `openssl s_client -connect ADDR -nocommands ARGS` running beside the test: the test writes
/// to its stdin and watches its stdout; killed on drop. Without `-ign_eof` it ends the
/// connection when its stdin closes; with it, when the server closes.
pub struct SClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl SClient {
    pub fn start(addr: SocketAddr, args: &[&str]) -> SClient {
        let mut child = Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(addr.to_string())
            .arg("-nocommands")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl s_client");
        let stdin = child.stdin.take();
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            gather(child.stdout.take().expect("piped stdout"), &stdout),
            gather(child.stderr.take().expect("piped stderr"), &stderr),
        ];
        SClient {
            child,
            stdin,
            stdout,
            stderr,
            readers,
        }
    }

    /// Writes `bytes` to its stdin (it sends them once the handshake is done).
    #[track_caller]
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes.as_ref()).expect("write to s_client");
        stdin.flush().expect("flush s_client's stdin");
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Waits until its stdout contains `needle` `count` times; false if `timeout` passed first.
    pub fn wait_for(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.stdout().matches(needle).count() >= count)
    }

    /// Closes its stdin, waits (≤ `TOOL_TIMEOUT`) for it to exit (killing it then), and returns
    /// what it printed.
    pub fn finish(mut self) -> SOut {
        self.stdin = None;
        let deadline = Instant::now() + TOOL_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(5));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let text =
            |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
        SOut {
            status,
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
        }
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends what `pipe` gives to `sink` until its end, on a thread of its own.
fn gather(mut pipe: impl Read + Send + 'static, sink: &Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    let sink = Arc::clone(sink);
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// `openssl s_client -connect ADDR -nocommands ARGS` with `input` on its stdin, run to its end
/// (≤ `TOOL_TIMEOUT`). With no input it ends right after the handshake; to get an answer to
/// a request, pass `-ign_eof` and end the request with `Connection: close`.
pub fn s_client(addr: SocketAddr, args: &[&str], input: &[u8]) -> SOut {
    let mut client = SClient::start(addr, args);
    if !input.is_empty() {
        // It may have failed and gone already: what it printed says why.
        let _ = client.stdin.as_mut().map(|s| s.write_all(input));
    }
    client.finish()
}

impl Pki {
    /// `s_client` that trusts this CA (and fails on a chain that does not check out), sending
    /// SNI `server_name` (none when `None`).
    pub fn s_client(
        &self,
        addr: SocketAddr,
        server_name: Option<&str>,
        args: &[&str],
        input: &[u8],
    ) -> SOut {
        let mut all = vec!["-CAfile", self.ca_str(), "-verify_return_error"];
        match server_name {
            Some(name) => all.extend(["-servername", name]),
            None => all.push("-noservername"),
        }
        all.extend(args);
        s_client(addr, &all, input)
    }
}

// ---------------------------------------------------------------------------------------------
// A ClientHello, captured and read apart
// ---------------------------------------------------------------------------------------------

/// The first TLS record `openssl s_client ARGS` sends, read by a listener of the test's own
/// (which then hangs up).
#[track_caller]
pub fn capture_client_hello(args: &[&str]) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a capture listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let client = SClient::start(listener.local_addr().unwrap(), args);
    let mut accepted = None;
    wait_until(TOOL_TIMEOUT, || {
        accepted = listener.accept().ok().map(|(s, _)| s);
        accepted.is_some()
    });
    let mut stream = accepted.expect("s_client connected to the capture listener");
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut record = vec![0u8; 5];
    stream.read_exact(&mut record).expect("a record header");
    let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
    record.resize(5 + len, 0);
    stream.read_exact(&mut record[5..]).expect("the record");
    drop(client);
    record
}

/// A ClientHello record read apart: what it offers.
#[derive(Debug, Clone)]
pub struct ClientHello {
    /// `client_version`: 0x0301 for TLS 1.0, 0x0303 for 1.2 (and for 1.3 clients).
    pub legacy_version: u16,
    /// Each extension: its type and its data.
    pub extensions: Vec<(u16, Vec<u8>)>,
}

impl ClientHello {
    /// Reads one TLS record that holds a whole ClientHello. Panics on anything else.
    #[track_caller]
    pub fn parse(record: &[u8]) -> ClientHello {
        assert_eq!(record.first(), Some(&0x16), "not a handshake record");
        assert_eq!(record.get(5), Some(&1), "not a ClientHello");
        let mut r = Reader(&record[9..]);
        let legacy_version = r.u16();
        r.take(32); // random
        let n = usize::from(r.u8());
        r.take(n); // session id
        let n = usize::from(r.u16());
        r.take(n); // cipher suites
        let n = usize::from(r.u8());
        r.take(n); // compression methods
        let mut extensions = Vec::new();
        if !r.0.is_empty() {
            let n = usize::from(r.u16());
            let mut e = Reader(r.take(n));
            while !e.0.is_empty() {
                let kind = e.u16();
                let n = usize::from(e.u16());
                extensions.push((kind, e.take(n).to_vec()));
            }
        }
        ClientHello {
            legacy_version,
            extensions,
        }
    }

    fn extension(&self, kind: u16) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, d)| d.as_slice())
    }

    /// The versions it offers: its supported_versions extension, else `legacy_version` alone.
    pub fn versions(&self) -> Vec<u16> {
        match self.extension(43) {
            Some(data) => data[1..]
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect(),
            None => vec![self.legacy_version],
        }
    }

    /// The name it sends in SNI, if any.
    pub fn server_name(&self) -> Option<String> {
        let data = self.extension(0)?;
        // list length (2), name type (1), name length (2), name
        Some(String::from_utf8_lossy(data.get(5..)?).into_owned())
    }
}

/// Big-endian reads off the front of a slice; panics past its end (a malformed hello).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        assert!(n <= self.0.len(), "ClientHello cut short");
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([b[0], b[1]])
    }
}

/// Whether `bytes` begin with a TLS handshake record (a ServerHello's record: `16 03 03`).
pub fn is_handshake_record(bytes: &[u8]) -> bool {
    bytes.len() >= 5 && bytes[0] == 0x16 && bytes[1] == 0x03
}

/// Reads what comes back on `stream` within its read timeout, until it closes or `want` bytes
/// came.
pub fn read_some(stream: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < want {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A small blocking rustls client
// ---------------------------------------------------------------------------------------------

/// A TLS connection made by [`tls_client`].
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client on an open connection, trusting the CA certificate in `ca`, asking for
/// `server_name` and offering ALPN `http/1.1`: for what the CLIs cannot do, such as writing a
/// PROXY header before the handshake. The handshake runs at the first read or write.
#[track_caller]
pub fn tls_client(stream: TcpStream, ca: &Path, server_name: &str) -> TlsStream {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA file") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("add the CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(server_name.to_string()).expect("a DNS name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    rustls::StreamOwned::new(conn, stream)
}

/// Reads what comes over `stream` until the server closes (with or without close_notify);
/// panics on another error, or on a timeout of the socket.
#[track_caller]
pub fn tls_read_to_close(stream: &mut TlsStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("reading over TLS after {} bytes: {e}", out.len()),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
