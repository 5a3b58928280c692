//! A TCP relay on loopback that a test can cut and restore: a network partition between a
//! client and a server that both keep running. Cut, it closes every relayed connection and
//! closes new ones at once; restored, it relays again.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How often the accept loop looks for a new connection, or for the end of the relay.
const LOOK: Duration = Duration::from_millis(20);

pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Relays connections to `127.0.0.1:0` (the relay's `addr`) on to `to`.
    pub fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            cut: Arc::default(),
            open: Arc::default(),
            stop: Arc::default(),
        };
        let (cut, open, stop) = (
            Arc::clone(&relay.cut),
            Arc::clone(&relay.open),
            Arc::clone(&relay.stop),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if !cut.load(Ordering::Relaxed) => {
                        if let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                        {
                            pipe(client, server, &open);
                        }
                    }
                    Ok(_) => {} // cut: dropped, so closed at once
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(LOOK),
                    Err(_) => thread::sleep(LOOK),
                }
            }
        });
        relay
    }

    /// Closes every relayed connection; new ones are closed at once until `restore`.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// Copies both ways between `client` and `server` on two threads; both sockets are kept in
/// `open`, so that a cut can close them.
fn pipe(client: TcpStream, server: TcpStream, open: &Mutex<Vec<TcpStream>>) {
    let mut open = open.lock().unwrap();
    for stream in [&client, &server] {
        if let Ok(clone) = stream.try_clone() {
            open.push(clone);
        }
    }
    for (from, to) in [(&client, &server), (&server, &client)] {
        let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
            continue;
        };
        thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) if to.write_all(&buf[..n]).is_err() => break,
                    Ok(_) => {}
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}
