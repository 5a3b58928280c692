//! The `lb-mio` command: run from a config file, check one, or run the built-in demo.

use lb_mio::backend::BackendConf;
use lb_mio::config::{self, Config};
use lb_mio::demo::DemoBackend;
use lb_mio::route::{self, Question, RouteTable};
use lb_mio::server::{self, Running};
use lb_mio::{fleet, manual, notify, reload, state_file, tls, upgrade};
use log::LevelFilter;
use log::{error, info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use simplelog::{ColorChoice, ConfigBuilder, TermLogger, TerminalMode};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;

const DEMO_LISTEN: &str = "127.0.0.1:8080";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--help" | "-h"] => println!("{}", manual::usage()),
        ["--version" | "-V"] => println!("{}", manual::version()),
        ["--man"] => print!("{}", manual::man_page()),
        ["--check", path] => return check(Path::new(path)),
        ["--explain", path, method, url, rest @ ..] => {
            return explain(Path::new(path), method, url, rest)
        }
        ["--demo"] => return demo(DEMO_LISTEN),
        ["--demo", "--listen", addr] => return demo(addr),
        [path] if !path.starts_with('-') => return run_file(Path::new(path)),
        _ => {
            eprintln!("{}", manual::usage());
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// Validates the file and reads every certificate it names, as a start would.
fn check(path: &Path) -> ExitCode {
    let config = match Config::from_file(path) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    let tls = match tls::Server::load(&config) {
        Ok(tls) => tls,
        Err(e) => return fail(e),
    };
    if let Err(e) = tls::Client::load(&config) {
        return fail(e);
    }
    // etcd's TLS files are read; etcd itself is not asked.
    if config.etcd.is_on() {
        if let Err(e) = fleet::client(&config) {
            return fail(e);
        }
    }
    for warning in tls.iter().flat_map(tls::Server::expiry_warnings) {
        eprintln!("lb-mio: warning: {warning}");
    }
    let looked_up = match config.discover.len() {
        0 => String::new(),
        n => format!(", {n} looked up in DNS"),
    };
    let certificates = match config.certificates.len() {
        0 => String::new(),
        n => format!(", {n} certificates"),
    };
    let etcd = match config.etcd.is_on() {
        true => format!(
            ", more from etcd at {} (not asked)",
            config.etcd.endpoints.join(", ")
        ),
        false => String::new(),
    };
    println!(
        "{}: ok ({} backends{looked_up}{certificates}{etcd})",
        path.display(),
        config.backends.len()
    );
    ExitCode::SUCCESS
}

/// Prints what the route table of the config at `path` does with one request.
fn explain(path: &Path, method: &str, url: &str, options: &[&str]) -> ExitCode {
    let config = match Config::from_file(path) {
        Ok(config) => config,
        Err(e) => return unusable(e),
    };
    let question = match question(method, url, options) {
        Ok(question) => question,
        Err(e) => return unusable(format!("{e}\n{}", manual::usage())),
    };
    let table = match RouteTable::new(config.routes.clone(), 1, |name| config.pool(name)) {
        Ok(table) => table,
        Err(e) => return unusable(e),
    };
    match route::explain(&config, &table, &question) {
        Ok(explained) => {
            for line in explained.lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => unusable(e),
    }
}

/// The request `--explain` asks about, from its command line.
fn question(method: &str, url: &str, options: &[&str]) -> Result<Question, String> {
    let mut question = Question {
        method: method.to_string(),
        url: url.to_string(),
        headers: Vec::new(),
        client: IpAddr::from([127, 0, 0, 1]),
        listener: None,
        sni: None,
    };
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let value = options.next().ok_or(format!("{option} needs a value"))?;
        match *option {
            "-H" => {
                let (name, value) = value
                    .split_once(':')
                    .ok_or(format!("-H {value:?}: expected 'Name: value'"))?;
                question
                    .headers
                    .push((name.trim().to_string(), value.trim().to_string()));
            }
            "--client" => {
                question.client = value
                    .parse()
                    .map_err(|_| format!("--client {value:?}: expected an IP address"))?
            }
            "--listener" => {
                question.listener = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--listener {value:?}: expected ip:port"))?,
                )
            }
            "--sni" => question.sni = Some(value.to_string()),
            _ => return Err(format!("unknown option {option:?}")),
        }
    }
    Ok(question)
}

fn run_file(path: &Path) -> ExitCode {
    match Config::from_file(path) {
        Ok(config) => serve(config, Some(path), |_| {}),
        Err(e) => fail(e),
    }
}

/// Three demo backends on loopback ports chosen by the kernel, and the balancer in front.
fn demo(listen: &str) -> ExitCode {
    let listen: SocketAddr = match listen.parse() {
        Ok(addr) => addr,
        Err(_) => return fail(format!("--listen: expected ip:port, got {listen:?}")),
    };
    let mut backends = Vec::new();
    for i in 1..=3 {
        let name = format!("backend-{i}");
        match DemoBackend::spawn(&name, "127.0.0.1:0".parse().expect("valid address")) {
            Ok(backend) => backends.push(BackendConf {
                name,
                addr: backend.addr(),
                weight: 1,
                tls: None,
                pool: config::DEFAULT_POOL.to_string(),
                backup: false,
            }),
            Err(e) => return fail(format!("cannot start demo backend {name}: {e}")),
        }
    }
    let mut config = Config::with_backends(backends);
    config.lb.listen = vec![listen];
    // The status page on a port of the kernel's choosing, so the demo never collides.
    config.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    serve(config, None, |running| {
        println!(
            "lb-mio demo: three backends behind http://{}/",
            running.addr
        );
        println!(
            "try: curl http://{}/   (each answer names the backend that served it)",
            running.addr
        );
        if let Some(admin) = running.admin_addr {
            println!("status page: http://{admin}/   (admin API: http://{admin}/api/backends)");
        }
    })
}

/// Starts lb-mio, reloads `path` on SIGHUP, reopens the access log file on SIGUSR1, hands over
/// to a new process on SIGUSR2 (`upgrade`), and on SIGINT or SIGTERM drains and stops; systemd
/// hears of each (`notify`).
fn serve(config: Config, path: Option<&Path>, started: impl FnOnce(&Running)) -> ExitCode {
    init_logging(config.log.level);
    let mut signals = match Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2]) {
        Ok(signals) => signals,
        Err(e) => return fail(format!("cannot install signal handlers: {e}")),
    };
    let running = match server::start(config) {
        Ok(running) => running,
        Err(e) => return fail(e),
    };
    started(&running);
    upgrade::ready();
    for signal in signals.forever() {
        match signal {
            SIGHUP => {
                notify::notify("RELOADING=1");
                reload(&running, path);
                notify::notify("READY=1");
            }
            SIGUSR1 => reopen_access_log(&running),
            SIGUSR2 => {
                if let Err(e) = upgrade::start_successor() {
                    error!("upgrade: cannot start the new lb-mio: {e}; this one keeps serving");
                }
            }
            _ => {
                notify::notify("STOPPING=1");
                let drain = running.shared.load().config.lb.drain_timeout;
                info!("lb-mio stopping on signal {signal}: draining for up to {drain:?}");
                break;
            }
        }
    }
    running.stop();
    info!("lb-mio stopped");
    ExitCode::SUCCESS
}

/// Opens the access log file again (logrotate moved it); the old one stays on failure.
fn reopen_access_log(running: &Running) {
    if let Some(path) = running.shared.access_sink.path() {
        switch_access_log(running, Some(&path));
    }
}

/// Sends the access log to `path` (stderr for `None`) from now on.
fn switch_access_log(running: &Running, path: Option<&Path>) {
    let shown = path.map_or("stderr".to_string(), |p| p.display().to_string());
    match running.shared.access_sink.reopen(path) {
        Ok(()) => info!("access log: {shown}"),
        Err(e) => error!("cannot open the access log {shown}: {e}; the old one stays"),
    }
}

/// Re-reads the config file; a file that does not validate leaves the running config as it is.
fn reload(running: &Running, path: Option<&Path>) {
    let Some(path) = path else {
        warn!("SIGHUP: the demo has no config file to reload");
        return;
    };
    let applied = Config::from_file(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let shared = &running.shared;
            match &running.fleet {
                // etcd's view is laid over the new file, and followed on.
                Some(fleet) => fleet.reload(shared, config.clone())?,
                None => shared.update(|snap| reload::apply(snap, config.clone()))?,
            }
            // Only with the rest of the new config: a file that fails keeps all of the old.
            if let Some(tls) = &running.shared.tls {
                tls.reload(&config);
            }
            Ok(())
        });
    match applied {
        Ok(()) => {
            info!("reloaded {}", path.display());
            let snap = running.shared.load();
            state_file::persist(&snap);
            let log_file = snap.config.log.access_log_file.as_deref();
            if log_file != running.shared.access_sink.path().as_deref() {
                switch_access_log(running, log_file);
            }
        }
        Err(e) => error!("reload failed, the running config stays: {e}"),
    }
}

fn init_logging(level: LevelFilter) {
    let config = ConfigBuilder::new()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .build();
    // Only fails if a logger is already set, which cannot happen in this program.
    let _ = TermLogger::init(level, config, TerminalMode::Stderr, ColorChoice::Never);
}

/// A question `--explain` cannot answer: a bad config or a bad request.
fn unusable(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("lb-mio: {message}");
    ExitCode::from(2)
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("lb-mio: {message}");
    ExitCode::FAILURE
}
