//! What a process holds, as /proc tells it: memory, descriptors, threads, CPU time.

use std::time::Duration;

/// Resident memory of a process in bytes (`VmRSS`).
#[track_caller]
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in kB in /proc/PID/status");
    kib * 1024
}

/// Open file descriptors of a process.
#[track_caller]
pub fn open_fds(pid: u32) -> usize {
    count_entries(pid, "fd")
}

/// Threads of a process.
#[track_caller]
pub fn thread_count(pid: u32) -> usize {
    count_entries(pid, "task")
}

#[track_caller]
fn count_entries(pid: u32, dir: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{dir}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/{dir}: {e}"))
        .count()
}

/// User plus system CPU time of a process so far, from `/proc/PID/stat`.
#[track_caller]
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let after = &stat[stat.rfind(')').expect("(comm) in /proc/PID/stat") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// Context switches of each thread of a process so far (voluntary and not, from
/// `/proc/PID/task/*/status`), by thread name: how often its threads woke up. A thread that
/// exited is no longer counted.
#[track_caller]
pub fn context_switches(pid: u32) -> Vec<(String, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let mut threads = Vec::new();
    for task in tasks.flatten() {
        let path = task.path();
        // A thread that exits between the listing and the read is skipped.
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("status")),
        ) else {
            continue;
        };
        let switches: u64 = (status.lines())
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or(l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .map(|v| v.trim().parse::<u64>().expect("a count"))
            .sum();
        threads.push((name.trim().to_string(), switches));
    }
    threads
}

/// The remote addresses of a process's established IPv4 TCP connections (its sockets matched
/// by inode against `/proc/PID/net/tcp`).
#[track_caller]
pub fn tcp_peers(pid: u32) -> Vec<std::net::SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("/proc/PID/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "01" || !inodes.iter().any(|i| i == f[9]) {
                return None;
            }
            let (ip, port) = f[2].split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?;
            let port = u16::from_str_radix(port, 16).ok()?;
            // The address is in host byte order (little-endian here).
            let ip = std::net::Ipv4Addr::from(ip.swap_bytes());
            Some(std::net::SocketAddr::from((ip, port)))
        })
        .collect()
}
