//! What the operating system can tell about the two processes sharing the
//! machine: our own CPU time (getrusage), the server's CPU time and memory
//! (/proc/PID/stat and /proc/PID/status), finding the server's pid from its
//! listening port (/proc/net/tcp → socket inode → /proc/*/fd), and raising
//! the open-file limit so thousands of sockets fit.

use std::fs;

use anyhow::{Context, Result};

/// CPU seconds (user + system) this process has used
/// (CLOCK_PROCESS_CPUTIME_ID: the same sum getrusage gives, in nanoseconds).
pub fn self_cpu_s() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// CPU seconds (user + system) process `pid` has used, from /proc/PID/stat.
pub fn proc_cpu_s(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')', index 0 is field 3 (state): utime is field 14, stime 15.
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((utime + stime) / hz)
}

/// Resident memory of `pid` in KiB: (VmRSS, VmHWM).
pub fn proc_rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Our own resident memory in KiB.
pub fn self_rss_kib() -> u64 {
    proc_rss_kib(std::process::id()).map(|r| r.0).unwrap_or(0)
}

/// The pid of the process listening on TCP `port`, if /proc can tell.
pub fn find_listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // 0A is LISTEN
            }
            let lport = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if lport == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(t) = target.to_str()
                && inodes.iter().any(|i| i == t)
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Raise RLIMIT_NOFILE: the soft limit to the hard one and, when we may
/// (root), the hard one toward `want` (capped by /proc/sys/fs/nr_open).
/// Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    // `None` is unlimited (RLIM_INFINITY).
    let (soft, hard) = (lim.current.unwrap_or(u64::MAX), lim.maximum.unwrap_or(u64::MAX));
    let nr_open: u64 =
        fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(hard);
    let target = want.min(nr_open);
    if target > hard && setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: Some(target) }).is_ok() {
        return target;
    }
    if soft < hard && setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum }).is_ok() {
        return hard;
    }
    soft
}

/// Resident memory of all `pids` together in KiB: (VmRSS, VmHWM) summed;
/// None when there is no pid or one cannot be read.
pub fn procs_rss_kib(pids: &[u32]) -> Option<(u64, u64)> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold((0, 0), |(rss, hwm), &p| proc_rss_kib(p).ok().map(|(r, h)| (rss + r, hwm + h)))
}

/// CPU seconds all `pids` together have used; None as for [`procs_rss_kib`].
pub fn procs_cpu_s(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(0.0, |sum, &p| proc_cpu_s(p).ok().map(|c| sum + c))
}

/// A measured interval: our CPU, and the server's CPU and memory when its
/// pids are known (summed over its processes when it has several).
pub struct Usage {
    pids: Vec<u32>,
    t0: u64,
    self_cpu0: f64,
    server_cpu0: Option<f64>,
    pub server_rss0_kib: Option<u64>,
}

/// The totals of a [`Usage`] interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageReport {
    pub wall_s: f64,
    pub client_cpu_s: f64,
    pub server_cpu_s: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub server_hwm_kib: Option<u64>,
    pub client_rss_kib: u64,
}

impl Usage {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            t0: crate::clock::now_ns(),
            self_cpu0: self_cpu_s(),
            server_cpu0: procs_cpu_s(pids),
            server_rss0_kib: procs_rss_kib(pids).map(|r| r.0),
        }
    }

    pub fn stop(&self) -> UsageReport {
        let rss = procs_rss_kib(&self.pids);
        UsageReport {
            wall_s: (crate::clock::now_ns() - self.t0) as f64 / 1e9,
            client_cpu_s: self_cpu_s() - self.self_cpu0,
            server_cpu_s: match (procs_cpu_s(&self.pids), self.server_cpu0) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
            server_rss_kib: rss.map(|r| r.0),
            server_hwm_kib: rss.map(|r| r.1),
            client_rss_kib: self_rss_kib(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_readable_through_proc() {
        let pid = std::process::id();
        assert!(proc_cpu_s(pid).unwrap() >= 0.0);
        let (rss, hwm) = proc_rss_kib(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }

    #[test]
    fn finds_the_process_listening_on_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(find_listener_pid(port), Some(std::process::id()));
        drop(l);
    }
}
