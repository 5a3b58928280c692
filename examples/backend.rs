//! Demo backends for trying lb-mio by hand and for benchmarks:
//! `cargo run --release --example backend -- 9001 9002 9003`.

use lb_mio::demo::DemoBackend;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::exit;

fn main() {
    let Some(ports) = parse_ports() else {
        eprintln!("usage: backend PORT [PORT...]");
        exit(2);
    };
    let logger_config = simplelog::Config::default();
    // Only fails if a logger is already set, which cannot happen this early.
    let _ = simplelog::SimpleLogger::init(log::LevelFilter::Warn, logger_config);
    for port in ports {
        let name = format!("backend-{port}");
        match DemoBackend::spawn(&name, SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
            Ok(backend) => println!("{} listening on {}", backend.name(), backend.addr()),
            Err(e) => {
                eprintln!("{name}: {e}"); // the error names the call and the address
                exit(1);
            }
        }
    }
    // The backends serve on their own threads until the process is killed.
    loop {
        std::thread::park();
    }
}

/// The ports given on the command line; `None` if there are none or one is not a port number.
fn parse_ports() -> Option<Vec<u16>> {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().ok())
        .collect::<Option<_>>()?;
    (!ports.is_empty()).then_some(ports)
}
