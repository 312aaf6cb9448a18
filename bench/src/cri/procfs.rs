//! What the kernel shows of the daemons and their pods: memory and the
//! process tree from /proc, mounts, and the bench's cgroups in /sys.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use super::Result;
use crate::measure::proc_field as field;

/// Memory of one process (or a sum of several), in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS` from `status`.
    pub rss: u64,
    /// `Pss` from `smaps_rollup`: shared pages split between their users.
    pub pss: u64,
}

impl std::ops::Add for Memory {
    type Output = Memory;
    fn add(self, other: Memory) -> Memory {
        Memory {
            rss: self.rss + other.rss,
            pss: self.pss + other.pss,
        }
    }
}

impl std::iter::Sum for Memory {
    fn sum<I: Iterator<Item = Memory>>(iter: I) -> Memory {
        iter.fold(Memory::default(), |a, b| a + b)
    }
}

impl Memory {
    pub fn of(pid: u32) -> Result<Memory> {
        let read = |file: &str, key: &str| -> Result<u64> {
            let path = format!("/proc/{pid}/{file}");
            let text = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
            field(&text, key).ok_or_else(|| format!("no {key} in {path}: has {pid} exited?").into())
        };
        Ok(Memory {
            rss: read("status", "VmRSS")?,
            pss: read("smaps_rollup", "Pss")?,
        })
    }

    /// This memory divided among `n` (pods).
    pub fn per(self, n: usize) -> Memory {
        let n = n.max(1) as u64;
        Memory {
            rss: self.rss / n,
            pss: self.pss / n,
        }
    }

    pub fn json(&self) -> Value {
        json!({"vm_rss_kib": self.rss, "pss_kib": self.pss})
    }
}

/// One process, from /proc/<pid>/{stat,comm,cmdline}.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub argv: Vec<String>,
}

/// `(state, ppid)` from the text of /proc/<pid>/stat (`comm` may hold spaces
/// and parentheses, so the fields are read after its last `)`).
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The CPU time of processes `pids` together over `window` (sleeping
/// through it), in % of one CPU.
pub fn cpu_share(pids: &[u32], window: std::time::Duration) -> Result<f64> {
    let total = || -> Result<std::time::Duration> {
        let mut sum = std::time::Duration::ZERO;
        for pid in pids {
            let (user, system) = crate::measure::process_cpu(*pid)?;
            sum += user + system;
        }
        Ok(sum)
    };
    let before = total()?;
    std::thread::sleep(window);
    let after = total()?;
    Ok(after.saturating_sub(before).as_secs_f64() * 100.0 / window.as_secs_f64())
}

/// The host's busy CPU time so far (all CPUs: user, nice, system, irq,
/// softirq, steal from `/proc/stat`), at the kernel's 10 ms resolution.
pub fn host_busy() -> Result<std::time::Duration> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("/proc/stat has no cpu line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle, iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(std::time::Duration::from_millis(busy * 1000 / hz))
}

/// Every running process (zombies left out: this VM's init may not reap
/// the shims' orphans).
pub fn processes() -> Vec<Process> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let (state, ppid) = parse_stat(&stat)?;
            if state == 'Z' || state == 'X' {
                return None;
            }
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let argv = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(Process {
                pid,
                ppid,
                comm: comm.trim().to_string(),
                argv,
            })
        })
        .collect()
}

/// Whether `argv` runs the binary named `name` with `-id <id>`.
fn is_shim_of(argv: &[String], name: &str, id: &str) -> bool {
    let binary = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str());
    binary == Some(name) && argv.windows(2).any(|w| w[0] == "-id" && w[1] == id)
}

/// Whether any argument of `argv` is a path under `dir`.
fn mentions(argv: &[String], dir: &Path) -> bool {
    argv.iter().any(|a| Path::new(a).starts_with(dir))
}

/// A pod's shim and its pause process.
#[derive(Debug, Clone)]
pub struct PodProcesses {
    pub shim: u32,
    pub pause: u32,
    /// The shim's own helper processes: everything below it but the pause
    /// and the container (Caisson's fork server while it runs).
    pub helpers: Vec<u32>,
}

/// Finds the shim serving `pod_id` (the binary `shim_name` with `-id
/// <pod_id>` and a socket under `dir`), the pause below it (a descendant
/// whose `comm` names pause: `pause` or `caisson-pause`) and the shim's
/// helpers, and checks that the pod's container (`sleep`) runs below it too.
pub fn pod_processes(shim_name: &str, dir: &Path, pod_id: &str) -> Result<PodProcesses> {
    let all = processes();
    let below = shim_tree(&all, shim_name, dir, pod_id)?;
    let pauses: Vec<&Process> = all
        .iter()
        .filter(|p| below[1..].contains(&p.pid) && p.comm.contains("pause"))
        .collect();
    let sleeps = all
        .iter()
        .filter(|p| below[1..].contains(&p.pid) && p.comm == "sleep")
        .count();
    let [pause] = pauses[..] else {
        return Err(tree_error(&all, &below, "one pause", pauses.len()));
    };
    if sleeps != 1 {
        return Err(tree_error(&all, &below, "one container (sleep)", sleeps));
    }
    let helpers = all
        .iter()
        .filter(|p| below[1..].contains(&p.pid) && p.pid != pause.pid && p.comm != "sleep")
        .map(|p| p.pid)
        .collect();
    Ok(PodProcesses {
        shim: below[0],
        pause: pause.pid,
        helpers,
    })
}

/// The process tree of the shim serving `pod_id` (the topmost process of
/// the binary `shim_name` with `-id <pod_id>` and a socket under `dir`)
/// among `all`: the shim's
/// pid first, then its descendants'.
pub fn shim_tree(all: &[Process], shim_name: &str, dir: &Path, pod_id: &str) -> Result<Vec<u32>> {
    let matching: Vec<&Process> = all
        .iter()
        .filter(|p| is_shim_of(&p.argv, shim_name, pod_id) && mentions(&p.argv[1..], dir))
        .collect();
    // A fork server the shim forked (not exec'd) has the shim's command
    // line: the shim is the one whose parent is not another match.
    let shims: Vec<&Process> = matching
        .iter()
        .filter(|p| !matching.iter().any(|q| q.pid == p.ppid))
        .copied()
        .collect();
    let [shim] = shims[..] else {
        let candidates: Vec<String> = all
            .iter()
            .filter(|p| p.comm.starts_with(&shim_name[..shim_name.len().min(15)]))
            .map(|p| format!("{} {}", p.pid, p.argv.join(" ")))
            .collect();
        return Err(format!(
            "expected one {shim_name} with `-id {pod_id}`, found {}; running {shim_name}s:\n{}",
            shims.len(),
            candidates.join("\n")
        )
        .into());
    };
    let mut below = vec![shim.pid];
    let mut i = 0;
    while i < below.len() {
        let parent = below[i];
        below.extend(all.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    Ok(below)
}

/// "expected {what} below the shim": the shim's process tree.
pub fn tree_error(
    all: &[Process],
    below: &[u32],
    what: &str,
    found: usize,
) -> Box<dyn std::error::Error> {
    let tree: Vec<String> = all
        .iter()
        .filter(|p| below.contains(&p.pid))
        .map(|p| format!("{} ({}) {}", p.pid, p.comm, p.argv.join(" ")))
        .collect();
    format!(
        "expected {what} below the shim {}, found {found}; its tree:\n{}",
        below[0],
        tree.join("\n")
    )
    .into()
}

/// Running processes with a path under `dir` in their command line (shims
/// of the bench's daemons): `pid argv…`.
pub fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let me = std::process::id();
    processes()
        .into_iter()
        .filter(|p| p.pid != me && mentions(&p.argv, dir))
        .map(|p| (p.pid, p.argv.join(" ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields() {
        let status = "Name:\tx\nVmRSS:\t    1234 kB\nPss:   56 kB\n";
        let cases = [("VmRSS", Some(1234)), ("Pss", Some(56)), ("VmRS", None)];
        for (key, want) in cases {
            assert_eq!(field(status, key), want, "{key}");
        }
    }

    #[test]
    fn parses_stat_after_comm() {
        let cases = [
            ("12 (sleep) S 7 12 12 0", Some(('S', 7))),
            ("13 (a) b (c)) Z 1 13", Some(('Z', 1))),
            ("garbage", None),
        ];
        for (stat, want) in cases {
            assert_eq!(parse_stat(stat), want, "{stat}");
        }
    }

    #[test]
    fn recognises_a_pods_shim() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let runc =
            argv("/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id abc -address /b/c.sock");
        let cases = [
            (&runc, "containerd-shim-runc-v2", "abc", true),
            (&runc, "containerd-shim-runc-v2", "ab", false),
            (&runc, "containerd-shim-caisson-v2", "abc", false),
        ];
        for (argv, name, id, want) in cases {
            assert_eq!(is_shim_of(argv, name, id), want, "{name} {id}");
        }
        assert!(mentions(&runc, Path::new("/b")));
        assert!(!mentions(&runc, Path::new("/bc")));
    }

    #[test]
    fn sums_and_divides_memory() {
        let m = [Memory { rss: 10, pss: 4 }, Memory { rss: 30, pss: 8 }];
        let total: Memory = m.into_iter().sum();
        assert_eq!(total, Memory { rss: 40, pss: 12 });
        assert_eq!(total.per(4), Memory { rss: 10, pss: 3 });
        assert!(Memory::of(std::process::id()).unwrap().rss > 0);
    }
}
