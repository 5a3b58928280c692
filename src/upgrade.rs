//! Upgrading in place without dropping a request, in a form systemd can follow. On SIGUSR2 the
//! running lb-mio starts the binary at its own path (after a package upgrade, the new one) with
//! the same arguments, telling it who it replaces (`LB_MIO_UPGRADE_FROM`). The new process binds
//! the same addresses beside the old one (every listener has `SO_REUSEPORT`), and once it
//! listens it tells systemd it is now the service's main process (`MAINPID`, then `READY=1`)
//! and sends the old one SIGTERM, which drains and exits. A new process that fails before that
//! (a config the new binary refuses, say) exits, and the old one logs it and keeps serving.

use crate::notify;
use log::{error, info, warn};
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

/// Set for a new process: the pid of the one it replaces.
const FROM: &str = "LB_MIO_UPGRADE_FROM";

/// What `/proc/self/exe` reads when the file was replaced since the process started.
const DELETED: &str = " (deleted)";

/// Whether a successor was started and has not failed: one upgrade at a time.
static UNDER_WAY: AtomicBool = AtomicBool::new(false);

/// Starts the successor of this process; a thread watches it until it exits, which it must
/// not do before it took over.
pub fn start_successor() -> io::Result<u32> {
    if UNDER_WAY.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("an upgrade is under way already"));
    }
    start().inspect_err(|_| UNDER_WAY.store(false, Ordering::SeqCst))
}

fn start() -> io::Result<u32> {
    let binary = own_path()?;
    let child = Command::new(&binary)
        .args(std::env::args_os().skip(1))
        .env(FROM, std::process::id().to_string())
        .stdin(Stdio::null())
        .spawn()?;
    let pid = child.id();
    info!(
        "upgrade: started {} (pid {pid}); this one drains once it listens",
        binary.display()
    );
    thread::Builder::new()
        .name("upgrade".into())
        .spawn(move || watch(child))?;
    Ok(pid)
}

/// The path this process was started from, as it stands now.
fn own_path() -> io::Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    Ok(PathBuf::from(exe.strip_suffix(DELETED).unwrap_or(&exe)))
}

/// Waits for the successor; it ends this process (SIGTERM) before it could ever exit, so an
/// exit seen here means the upgrade failed.
fn watch(mut child: Child) {
    let pid = child.id();
    let waited = child.wait();
    UNDER_WAY.store(false, Ordering::SeqCst);
    match waited {
        Ok(status) => error!(
            "upgrade: the new lb-mio (pid {pid}) exited ({status}) before it took over; this one keeps serving"
        ),
        Err(e) => warn!("upgrade: cannot wait for the new lb-mio (pid {pid}): {e}"),
    }
}

/// Called once this process listens: tells systemd it is ready and, when it is a successor,
/// that it is the service's main process now, then ends the process it replaces.
pub fn ready() {
    let Some(old) = predecessor() else {
        notify::notify("READY=1");
        return;
    };
    notify::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
    // Only the process that started this one: a stale variable names nobody to end.
    if std::os::unix::process::parent_id() != old {
        warn!("upgrade: {FROM}={old} is not the process that started this one: not ending it");
        return;
    }
    info!("upgrade: listening; ending the old lb-mio (pid {old}), which drains");
    // SAFETY: kill(2) with a pid and a signal number; it touches no memory of ours.
    if unsafe { libc::kill(old as libc::pid_t, libc::SIGTERM) } != 0 {
        warn!(
            "upgrade: cannot end pid {old}: {}",
            io::Error::last_os_error()
        );
    }
}

/// The pid of the process this one replaces, when it was started as a successor.
fn predecessor() -> Option<u32> {
    std::env::var(FROM).ok()?.parse().ok()
}
