//! A cgroup's usage read straight from cgroupfs (pod-level stats: the pod
//! cgroup holds the pause and every container).

use crate::fs::CgroupFs;

/// Usage of one cgroup; `None` where the file is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Total CPU time, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    pub memory_usage: Option<u64>,
    /// usage − inactive_file.
    pub working_set: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    pub processes: Option<u64>,
}

/// `key value` lines (`memory.stat`, `cpu.stat`).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads `cgroup`'s usage (v1 or v2 files).
pub fn read(fs: &impl CgroupFs, cgroup: &str) -> CgroupStats {
    let num = |controller: &str, file: &str| {
        fs.read(controller, cgroup, file)
            .and_then(|s| s.parse::<u64>().ok())
    };
    if fs.mode().is_v1() {
        let stat = fs.read("memory", cgroup, "memory.stat").unwrap_or_default();
        let usage = num("memory", "memory.usage_in_bytes");
        CgroupStats {
            cpu_usage_ns: num("cpuacct", "cpuacct.usage"),
            memory_usage: usage,
            working_set: usage
                .map(|u| u.saturating_sub(stat_field(&stat, "total_inactive_file").unwrap_or(0))),
            rss: stat_field(&stat, "total_rss"),
            page_faults: stat_field(&stat, "total_pgfault"),
            major_page_faults: stat_field(&stat, "total_pgmajfault"),
            processes: num("pids", "pids.current"),
        }
    } else {
        let stat = fs.read("", cgroup, "memory.stat").unwrap_or_default();
        let cpu = fs.read("", cgroup, "cpu.stat").unwrap_or_default();
        let usage = num("", "memory.current");
        CgroupStats {
            cpu_usage_ns: stat_field(&cpu, "usage_usec").map(|us| us * 1000),
            memory_usage: usage,
            working_set: usage
                .map(|u| u.saturating_sub(stat_field(&stat, "inactive_file").unwrap_or(0))),
            rss: stat_field(&stat, "anon"),
            page_faults: stat_field(&stat, "pgfault"),
            major_page_faults: stat_field(&stat, "pgmajfault"),
            processes: num("", "pids.current"),
        }
    }
}

/// What cAdvisor reports for a container beside [`CgroupStats`]: page
/// cache, how often the memory limit was hit, the processes (not threads)
/// in the cgroup itself, and the CPU settings the kernel applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerExtras {
    /// v1 `total_cache`, v2 `file` (memory.stat).
    pub cache: Option<u64>,
    /// v1 `memory.failcnt`, v2 `max` of memory.events.
    pub failcnt: Option<u64>,
    /// Lines of `cgroup.procs`.
    pub process_count: Option<u64>,
    /// v1 `cpu.shares`; v2 `cpu.weight` converted back to shares.
    pub cpu_shares: Option<u64>,
    /// CFS period and quota in µs (quota `None` when unlimited).
    pub cpu_period_us: Option<u64>,
    pub cpu_quota_us: Option<u64>,
}

/// Reads [`ContainerExtras`] of `cgroup` (v1 or v2 files).
pub fn read_container_extras(fs: &impl CgroupFs, cgroup: &str) -> ContainerExtras {
    let num = |controller: &str, file: &str| {
        fs.read(controller, cgroup, file)
            .and_then(|s| s.parse::<u64>().ok())
    };
    let process_count = |controller: &str| {
        fs.read(controller, cgroup, "cgroup.procs")
            .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count() as u64)
    };
    if fs.mode().is_v1() {
        let stat = fs.read("memory", cgroup, "memory.stat").unwrap_or_default();
        let quota = fs
            .read("cpu", cgroup, "cpu.cfs_quota_us")
            .and_then(|s| s.parse::<i64>().ok());
        ContainerExtras {
            cache: stat_field(&stat, "total_cache"),
            failcnt: num("memory", "memory.failcnt"),
            process_count: process_count("pids").or_else(|| process_count("memory")),
            cpu_shares: num("cpu", "cpu.shares"),
            cpu_period_us: num("cpu", "cpu.cfs_period_us"),
            cpu_quota_us: quota.filter(|q| *q > 0).map(|q| q as u64),
        }
    } else {
        let stat = fs.read("", cgroup, "memory.stat").unwrap_or_default();
        let events = fs.read("", cgroup, "memory.events").unwrap_or_default();
        let max = fs.read("", cgroup, "cpu.max").unwrap_or_default();
        let mut max = max.split_whitespace();
        let (quota, period) = (max.next(), max.next());
        ContainerExtras {
            cache: stat_field(&stat, "file"),
            failcnt: stat_field(&events, "max"),
            process_count: process_count(""),
            cpu_shares: num("", "cpu.weight").map(crate::cpu::cpu_shares_from_weight),
            cpu_period_us: period.and_then(|p| p.parse().ok()),
            cpu_quota_us: quota.and_then(|q| q.parse().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::CgroupRoot;
    use crate::CgroupMode;

    #[test]
    fn v1_and_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = CgroupRoot::at(dir.path().join("v1"), CgroupMode::Hybrid);
        v1.create("/p").unwrap();
        for (controller, file, text) in [
            ("cpuacct", "cpuacct.usage", "1234\n"),
            ("memory", "memory.usage_in_bytes", "1000\n"),
            ("memory", "memory.stat", "cache 5\ntotal_inactive_file 300\ntotal_rss 600\ntotal_pgfault 9\ntotal_pgmajfault 1\n"),
            ("pids", "pids.current", "3\n"),
        ] {
            v1.write(controller, "/p", file, text).unwrap();
        }
        let want = CgroupStats {
            cpu_usage_ns: Some(1234),
            memory_usage: Some(1000),
            working_set: Some(700),
            rss: Some(600),
            page_faults: Some(9),
            major_page_faults: Some(1),
            processes: Some(3),
        };
        assert_eq!(read(&v1, "/p"), want);

        let v2 = CgroupRoot::at(dir.path().join("v2"), CgroupMode::Unified);
        v2.create("/p").unwrap();
        for (file, text) in [
            ("cpu.stat", "usage_usec 2\nuser_usec 1\n"),
            ("memory.current", "1000\n"),
            (
                "memory.stat",
                "anon 600\ninactive_file 300\npgfault 9\npgmajfault 1\n",
            ),
            ("pids.current", "3\n"),
        ] {
            v2.write("", "/p", file, text).unwrap();
        }
        assert_eq!(
            read(&v2, "/p"),
            CgroupStats {
                cpu_usage_ns: Some(2000),
                ..want
            }
        );
        assert_eq!(read(&v2, "/missing"), CgroupStats::default());
    }

    #[test]
    fn container_extras_v1_and_v2() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = CgroupRoot::at(dir.path().join("v1"), CgroupMode::Hybrid);
        v1.create("/c").unwrap();
        for (controller, file, text) in [
            ("memory", "memory.stat", "cache 1\ntotal_cache 4096\n"),
            ("memory", "memory.failcnt", "7\n"),
            ("pids", "cgroup.procs", "10\n11\n"),
            ("cpu", "cpu.shares", "512\n"),
            ("cpu", "cpu.cfs_period_us", "100000\n"),
            ("cpu", "cpu.cfs_quota_us", "-1\n"),
        ] {
            v1.write(controller, "/c", file, text).unwrap();
        }
        let want = ContainerExtras {
            cache: Some(4096),
            failcnt: Some(7),
            process_count: Some(2),
            cpu_shares: Some(512),
            cpu_period_us: Some(100_000),
            cpu_quota_us: None,
        };
        assert_eq!(read_container_extras(&v1, "/c"), want);

        let v2 = CgroupRoot::at(dir.path().join("v2"), CgroupMode::Unified);
        v2.create("/c").unwrap();
        for (file, text) in [
            ("memory.stat", "anon 1\nfile 4096\n"),
            ("memory.events", "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n"),
            ("cgroup.procs", "10\n11\n"),
            ("cpu.weight", "20\n"),
            ("cpu.max", "50000 100000\n"),
        ] {
            v2.write("", "/c", file, text).unwrap();
        }
        let got = read_container_extras(&v2, "/c");
        assert_eq!(
            got,
            ContainerExtras {
                cpu_shares: Some(crate::cpu::cpu_shares_from_weight(20)),
                cpu_quota_us: Some(50_000),
                ..want
            }
        );
        assert_eq!(
            read_container_extras(&v2, "/missing"),
            ContainerExtras::default()
        );
    }
}
