//! systemd's notify protocol, spoken directly: when systemd started lb-mio with `Type=notify`
//! it sets `NOTIFY_SOCKET`, a unix datagram socket (a path, or an abstract name after `@`), and
//! reads `KEY=value` lines from it: `READY=1` once lb-mio listens, `RELOADING=1` then `READY=1`
//! around a reload, `STOPPING=1` when it drains, and `MAINPID=N` when an upgrade hands the
//! service to a new process (`upgrade`). Without `NOTIFY_SOCKET` nothing is sent.

use log::warn;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (lines of `KEY=value`) to systemd, when it asked for them; a failure is
/// logged: lb-mio serves all the same, and systemd will say it never heard.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = socket.to_string_lossy().into_owned();
    if let Err(e) = send(&socket, state) {
        warn!(
            "cannot tell systemd {:?} at NOTIFY_SOCKET {socket}: {e}",
            state.trim()
        );
    }
}

fn send(socket: &str, state: &str) -> io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sender = UnixDatagram::unbound()?;
    sender.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_a_socket_by_path_and_by_abstract_name() {
        let dir = std::env::temp_dir().join(format!("lb-mio-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let by_path = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("lb-mio-notify-test-{}", std::process::id());
        let abstract_addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let by_name = UnixDatagram::bind_addr(&abstract_addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = by_name.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
