//! What the kernel shows of a process (memory, threads, exit) and the bench's
//! cgroups.

use std::fs;
use std::time::Duration;

use serde_json::{json, Value};

use super::Result;
use crate::measure::proc_field as field;

/// Memory of one process, in KiB, as /proc reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub vm_rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    /// From `smaps_rollup`; `None` when the kernel has none.
    pub pss: Option<u64>,
    pub threads: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let status = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        let get = |key: &str| {
            field(&status, key).ok_or_else(|| format!("no {key} in {path}: has {pid} exited?"))
        };
        let pss = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|text| field(&text, "Pss"));
        Ok(Memory {
            vm_rss: get("VmRSS")?,
            rss_anon: get("RssAnon")?,
            rss_file: get("RssFile")?,
            pss,
            threads: get("Threads")?,
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "vm_rss_kib": self.vm_rss,
            "rss_anon_kib": self.rss_anon,
            "rss_file_kib": self.rss_file,
            "pss_kib": self.pss,
            "threads": self.threads,
        })
    }
}

/// Waits until `pid` has exited (a zombie counts: this VM's init may not
/// reap orphans), on its pidfd rather than by polling /proc.
pub fn wait_exit(pid: u32, deadline: Duration) -> Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(()),
            _ => Err(format!("pidfd_open({pid}): {err}").into()),
        };
    }
    let fd = fd as libc::c_int;
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = deadline.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd; the fd is ours and closed right after.
    let ready = unsafe {
        let n = libc::poll(&mut pfd, 1, timeout);
        libc::close(fd);
        n
    };
    match ready {
        1 => Ok(()),
        0 => {
            Err(format!("process {pid} still runs {deadline:?} after it should have exited").into())
        }
        _ => Err(format!(
            "poll on pidfd of {pid}: {}",
            std::io::Error::last_os_error()
        )
        .into()),
    }
}

/// Whether `pid` still runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

/// Fails unless `pid` is in `leader`'s namespaces of each kind (`net`, …).
pub fn check_shares_namespaces(pid: u32, leader: u32, kinds: &[&str]) -> Result<()> {
    let ns = |pid: u32, kind: &str| {
        let link = format!("/proc/{pid}/ns/{kind}");
        fs::read_link(&link).map_err(|e| format!("reading {link}: {e}"))
    };
    for kind in kinds {
        let (mine, theirs) = (ns(pid, kind)?, ns(leader, kind)?);
        if mine != theirs {
            return Err(format!(
                "process {pid} is in {}, not in {leader}'s {}",
                mine.display(),
                theirs.display()
            )
            .into());
        }
    }
    Ok(())
}

/// The hierarchies (`memory`, `cpu,cpuacct`, `name=systemd`; empty for v2)
/// in which `pid` is in the cgroup `path`, from /proc/<pid>/cgroup.
pub fn hierarchies_in(pid: u32, path: &str) -> Result<Vec<String>> {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).map_err(|e| format!("reading {file}: {e}"))?;
    Ok(parse_hierarchies_in(&text, path))
}

fn parse_hierarchies_in(text: &str, path: &str) -> Vec<String> {
    let mut found: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, cgroup) = (parts.next()?, parts.next()?, parts.next()?);
            (cgroup == path).then(|| controllers.to_string())
        })
        .collect();
    found.sort();
    found
}

/// The parent of every cgroup the bench makes: `cgroupsPath` is
/// `/caisson-bench/<task id>`.
pub const CGROUP_PARENT: &str = "caisson-bench";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields() {
        let status = "Name:\tx\nVmRSS:\t    1234 kB\nRssAnon:\t  56 kB\nThreads:\t7\n";
        let cases = [
            ("VmRSS", Some(1234)),
            ("RssAnon", Some(56)),
            ("Threads", Some(7)),
            ("VmRS", None),
            ("Pss", None),
        ];
        for (key, want) in cases {
            assert_eq!(field(status, key), want, "{key}");
        }
    }

    #[test]
    fn finds_the_hierarchies_of_a_cgroup() {
        let text = "12:pids:/caisson-bench/c1\n11:cpu,cpuacct:/caisson-bench/c1\n\
                    3:memory:/other\n1:name=systemd:/caisson-bench/c1\n0::/caisson-bench/c1\n";
        assert_eq!(
            parse_hierarchies_in(text, "/caisson-bench/c1"),
            ["", "cpu,cpuacct", "name=systemd", "pids"]
        );
        assert!(parse_hierarchies_in(text, "/caisson-bench/c2").is_empty());
    }

    #[test]
    fn reads_this_process() {
        let me = Memory::of(std::process::id()).unwrap();
        assert!(me.vm_rss > 0 && me.threads >= 1, "{me:?}");
        assert!(alive(std::process::id()));
    }
}
