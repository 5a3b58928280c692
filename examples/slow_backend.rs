//! A deliberately slow backend for benchmarks (std only):
//! `cargo run --release --example slow_backend -- 9003 20 slow`.
//!
//! Thread per connection, HTTP/1.1 keep-alive on 127.0.0.1:PORT. `GET /healthcheck` gets 200
//! at once; any other request gets 200 with body NAME after sleeping DELAY_MS. Requests are
//! assumed to have no body (only the head, up to CRLFCRLF, is read). The connection is closed
//! when the client closes it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::exit;
use std::time::Duration;
use std::{env, thread};

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let (Some(port), Some(delay), Some(name)) = (
        args.first().and_then(|a| a.parse::<u16>().ok()),
        args.get(1).and_then(|a| a.parse::<u64>().ok()),
        args.get(2).cloned(),
    ) else {
        eprintln!("usage: slow_backend PORT DELAY_MS NAME");
        exit(2);
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
        eprintln!("slow_backend: cannot listen on 127.0.0.1:{port}: {e}");
        exit(1);
    });
    println!("{name} listening on 127.0.0.1:{port}, {delay} ms per request");
    let delay = Duration::from_millis(delay);
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        thread::spawn(move || {
            let _ = serve(stream, delay, &name);
        });
    }
}

/// Answers the requests on one connection until the client closes it (or an I/O error).
fn serve(stream: TcpStream, delay: Duration, name: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    loop {
        // The request line, then header lines up to the empty one.
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(()); // EOF: the client closed the connection
        }
        let health = line.split_whitespace().nth(1) == Some("/healthcheck");
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        if !health {
            thread::sleep(delay);
        }
        let body = if health { "ok" } else { name };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(response.as_bytes())?;
    }
}
