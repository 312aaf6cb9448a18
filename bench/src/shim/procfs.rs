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

/// Where a process's resident memory is: `Rss` from `/proc/<pid>/smaps`,
/// summed per mapped object and permissions (`libc.so.6 r-xp`; `[heap]`,
/// `[stack]`, and `[anon]` for unnamed anonymous mappings), largest first.
pub fn rss_by_mapping(pid: u32) -> Result<Vec<(String, u64)>> {
    let path = format!("/proc/{pid}/smaps");
    let text = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    Ok(parse_rss_by_mapping(&text))
}

fn parse_rss_by_mapping(smaps: &str) -> Vec<(String, u64)> {
    let mut sums: Vec<(String, u64)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A mapping's header: "start-end perms offset dev inode [path]".
        let header = fields.first().is_some_and(|f| {
            f.split_once('-').is_some_and(|(a, b)| {
                !a.is_empty()
                    && a.chars().all(|c| c.is_ascii_hexdigit())
                    && b.chars().all(|c| c.is_ascii_hexdigit())
            })
        }) && fields.len() >= 5;
        if header {
            let object = fields
                .get(5)
                .map_or("[anon]", |p| p.rsplit('/').next().unwrap_or(p));
            let key = if object.starts_with('[') {
                object.to_string()
            } else {
                format!("{object} {}", fields[1])
            };
            current = Some(match sums.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    sums.push((key, 0));
                    sums.len() - 1
                }
            });
        } else if let (Some(i), Some(&"Rss:")) = (current, fields.first()) {
            sums[i].1 += fields
                .get(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    sums.retain(|(_, kib)| *kib > 0);
    sums.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sums
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
    fn sums_rss_per_object_and_permissions() {
        let smaps = "\
5600-5700 r--p 00000000 fe:01 12 /usr/bin/shim
Size:                 64 kB
Rss:                  12 kB
5700-5800 r-xp 00001000 fe:01 12 /usr/bin/shim
Rss:                  40 kB
7f00-7f10 r-xp 00000000 fe:01 13 /usr/lib/libc.so.6
Rss:                  30 kB
7f20-7f30 rw-p 00000000 00:00 0
Rss:                   8 kB
7f30-7f40 rw-p 00000000 00:00 0
Rss:                   4 kB
7f40-7f50 r--p 00000000 fe:01 13 /usr/lib/libc.so.6
Rss:                   0 kB
7ffd-7ffe rw-p 00000000 00:00 0 [stack]
Rss:                  20 kB
";
        assert_eq!(
            super::parse_rss_by_mapping(smaps),
            vec![
                ("shim r-xp".to_string(), 40),
                ("libc.so.6 r-xp".to_string(), 30),
                ("[stack]".to_string(), 20),
                ("[anon]".to_string(), 12),
                ("shim r--p".to_string(), 12),
            ]
        );
    }

    #[test]
    fn reads_this_process() {
        let me = Memory::of(std::process::id()).unwrap();
        assert!(me.vm_rss > 0 && me.threads >= 1, "{me:?}");
        assert!(alive(std::process::id()));
    }
}
