//! The status page in a real browser: headless Chromium loads it from the admin listener while
//! traffic flows, runs its polling script, and dumps the DOM; the table must list both
//! backends and every chart must have drawn samples.
//!
//! Needs Debian's `chromium`. Run as root (as on this project's machines and in CI), the test
//! installs it with apt-get when it is missing, so `cargo test` works on a fresh machine;
//! otherwise it fails, saying how to install it.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// Chromium gets this long before it is killed and the test fails (it takes about a second).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(30);

/// `chromium` on the `PATH`, if it is there.
fn chromium_on_path() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    })
}

/// As root, installs Debian's `chromium` (a fresh machine has none).
fn install_chromium() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    if !root {
        return;
    }
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "chromium"],
    ] {
        let _ = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
}

/// Where Chromium is: `$CHROMIUM`, else `chromium` on the `PATH` (installed first if need be).
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = chromium_on_path().or_else(|| {
        install_chromium();
        chromium_on_path()
    });
    found.unwrap_or_else(|| {
        panic!(
            "this test needs headless Chromium, and `chromium` is not on the PATH: install it \
             with `apt-get install -y chromium` (.ci/run does), or point $CHROMIUM at it"
        )
    })
}

/// A fresh directory for Chromium's profile, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "lb-mio-chromium-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create the profile directory");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs headless Chromium on `url` and returns the DOM it dumps once its virtual time budget
/// (5 s of page time: timers fire, but the page waits for no real second) is spent.
fn dump_dom(url: &str) -> String {
    let profile = TempDir::new();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium: {e} (install it: apt-get install -y chromium)")
        });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish in {BROWSER_TIMEOUT:?}; its stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let dom = stdout.join().unwrap_or_default();
    let errors = stderr.join().unwrap_or_default();
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium failed ({status}); stderr:\n{errors}\nstdout:\n{dom}"
    );
    dom
}

/// Every value of attribute `name` in `html`, in order.
fn attribute_values<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!(" {name}=\"");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// (id, data-points) of every `<canvas>`.
fn canvases(html: &str) -> Vec<(String, Option<usize>)> {
    html.match_indices("<canvas ")
        .map(|(i, _)| {
            let tag = &html[i..i + html[i..].find('>').unwrap_or(0)];
            let id = attribute_values(tag, "id").first().copied().unwrap_or("");
            let points = attribute_values(tag, "data-points")
                .first()
                .and_then(|n| n.parse().ok());
            (id.to_string(), points)
        })
        .collect()
}

/// The text of the element with this id (up to its first child tag or end tag).
fn text_of<'a>(html: &'a str, id: &str) -> &'a str {
    let Some(start) = html.find(&format!(" id=\"{id}\"")) else {
        return "";
    };
    let rest = &html[start..];
    let rest = &rest[rest.find('>').map_or(rest.len(), |i| i + 1)..];
    &rest[..rest.find('<').unwrap_or(rest.len())]
}

/// Keeps `GET /` going on a keep-alive connection until dropped (at most 60 s).
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut stream: Option<TcpStream> = None;
            for _ in 0..1_000_000 {
                if flag.load(Ordering::SeqCst) || Instant::now() >= deadline {
                    return;
                }
                let connected = match stream.take() {
                    Some(s) => Ok(s),
                    None => TcpStream::connect_timeout(&addr, IO_TIMEOUT).and_then(|s| {
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        Ok(s)
                    }),
                };
                if let Ok(mut s) = connected {
                    let sent = s.write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n");
                    if sent.is_ok() && try_read_response(&mut s).is_ok() {
                        stream = Some(s); // keep the connection for the next request
                    }
                }
                // A pause per request: a steady trickle, not a flood that starves the browser.
                thread::sleep(Duration::from_millis(2));
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_status_page_lists_backends_and_draws_live_charts() {
    let browser = chromium();
    let a = Backend::named("alpha");
    let b = Backend::named("beta");
    let lb = Lb::start(&ini(
        &[("alpha", a.addr), ("beta", b.addr)],
        "[health]\ninterval_ms = 100\n[admin]\nlisten = 127.0.0.1:0\n",
    ));
    let admin = lb.admin_addr();
    let _traffic = Traffic::start(lb.addr);
    assert!(
        a.wait_for_requests(5, Duration::from_secs(5))
            && b.wait_for_requests(5, Duration::from_secs(5)),
        "the traffic does not reach both backends"
    );

    let dom = dump_dom(&format!("http://{admin}/"));
    let context = || format!("(chromium: {})\n{dom}", browser.display());

    let mut rows = attribute_values(&dom, "data-backend");
    rows.sort_unstable();
    assert_eq!(
        rows,
        ["alpha", "beta"],
        "one table row per backend {}",
        context()
    );
    assert_eq!(
        attribute_values(&dom, "data-state"),
        ["up", "up"],
        "{}",
        context()
    );
    for addr in [a.addr, b.addr] {
        assert!(
            dom.contains(&format!(">{addr}<")),
            "{addr} is not shown {}",
            context()
        );
    }

    let charts = canvases(&dom);
    let ids: Vec<&str> = charts.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["chart-rps", "chart-errors", "chart-latency"],
        "{}",
        context()
    );
    for (id, points) in &charts {
        assert!(
            points.is_some_and(|n| n >= 2),
            "{id} drew {points:?} samples; it should have drawn one a second {}",
            context()
        );
    }
    let status = text_of(&dom, "status");
    assert!(
        status.contains("updated"),
        "the page's status line says {status:?} {}",
        context()
    );
}
