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
}
