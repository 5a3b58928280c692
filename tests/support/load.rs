//! Steady load: client threads that keep requests going while a test changes things.

use super::client::{try_connect, try_read_response};
use super::http::Message;
use super::util::wait_until;
use super::IO_TIMEOUT;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Client threads, each sending `GET /` on a keep-alive connection until stopped (at most
/// 60 s or 200,000 requests each), reconnecting after a close. Anything but a 200, and any
/// I/O error, is a failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `clients` threads with a pause of 0.5 ms after each request, which leaves the two
    /// shared cores some room for the balancer's other threads.
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        Load::paced(addr, clients, Duration::from_micros(500))
    }

    /// `clients` threads, each pausing `pause` after each request.
    pub fn paced(addr: SocketAddr, clients: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                thread::spawn(move || load_client(addr, pause, &stop, &ok, &failures))
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    /// Requests answered with a 200 so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Waits (up to `within`) until `n` more requests than now got their 200.
    #[track_caller]
    pub fn wait_for_more(&self, n: usize, within: Duration) {
        let target = self.ok() + n;
        assert!(
            wait_until(within, || self.ok() >= target),
            "the load stalled at {} answered requests; failures: {:?}",
            self.ok(),
            self.failures()
        );
    }

    /// Stops the clients; returns (answered requests, failures).
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop_and_join();
        (self.ok(), self.failures())
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn load_client(
    addr: SocketAddr,
    pause: Duration,
    stop: &AtomicBool,
    ok: &AtomicUsize,
    failures: &Mutex<Vec<String>>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream: Option<TcpStream> = None;
    for _ in 0..200_000 {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        let result = (|| {
            if stream.is_none() {
                stream = Some(try_connect(addr, IO_TIMEOUT)?);
            }
            let s = stream.as_mut().expect("connected");
            s.write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n")?;
            try_read_response(s)
        })();
        match result {
            Ok(resp) if resp.status == 200 => {
                ok.fetch_add(1, Ordering::SeqCst);
                if resp.connection_has("close") {
                    stream = None;
                }
            }
            Ok(resp) => {
                let failure = format!("{} {}", resp.status, resp.body_str());
                failures.lock().unwrap().push(failure);
                stream = None;
            }
            Err(e) => {
                failures.lock().unwrap().push(e.to_string());
                stream = None;
            }
        }
        thread::sleep(pause);
    }
}
