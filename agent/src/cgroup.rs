//! A container's cgroup (v2) in the guest: where it is, its figures, its
//! processes, and new limits.

use std::fs;
use std::path::{Path, PathBuf};

use caisson_agent_proto::Stats;

/// Where the guest's cgroup2 is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The cgroup `pid` is in (from `/proc/<pid>/cgroup`'s `0::` line), as a
/// path relative to [`ROOT`]'s top (`/kubepods/pod1/c1`).
pub fn of_pid(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The cgroup's directory.
pub fn dir(path: &str) -> PathBuf {
    Path::new(ROOT).join(path.trim_start_matches('/'))
}

fn read(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file)).ok()
}

fn number(dir: &Path, file: &str) -> u64 {
    read(dir, file)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// A `key value` file's value for `key`.
pub fn keyed(dir: &Path, file: &str, key: &str) -> u64 {
    read(dir, file)
        .and_then(|t| keyed_value(&t, key))
        .unwrap_or(0)
}

fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A limit file: `max` (no limit) is 0.
fn limit(dir: &Path, file: &str) -> u64 {
    match read(dir, file) {
        Some(t) if t.trim() == "max" => 0,
        Some(t) => t.trim().parse().unwrap_or(0),
        None => 0,
    }
}

/// The container's usage, from its cgroup's files.
pub fn stats(dir: &Path) -> Stats {
    let cpu = read(dir, "cpu.stat").unwrap_or_default();
    let usec = |k| keyed_value(&cpu, k).unwrap_or(0) * 1000;
    let memory = read(dir, "memory.stat").unwrap_or_default();
    let mem = |k| keyed_value(&memory, k).unwrap_or(0);
    let current = number(dir, "memory.current");
    Stats {
        cpu_usage_ns: usec("usage_usec"),
        cpu_user_ns: usec("user_usec"),
        cpu_system_ns: usec("system_usec"),
        memory_usage_bytes: current,
        // "max" as the host's libcgroups reports no limit (a huge number,
        // not 0: consumers subtract usage from it).
        memory_limit_bytes: match read(dir, "memory.max") {
            Some(t) if t.trim() == "max" => u64::MAX,
            _ => limit(dir, "memory.max"),
        },
        memory_working_set_bytes: current.saturating_sub(mem("inactive_file")),
        memory_rss_bytes: mem("anon"),
        page_faults: mem("pgfault"),
        major_page_faults: mem("pgmajfault"),
        oom_events: oom_kills(dir),
        pids_current: number(dir, "pids.current"),
        pids_limit: limit(dir, "pids.max"),
        memory_cache_bytes: mem("file"),
        memory_failcnt: keyed(dir, "memory.events", "max"),
    }
}

/// `memory.events`' `oom_kill`.
pub fn oom_kills(dir: &Path) -> u64 {
    keyed(dir, "memory.events", "oom_kill")
}

/// The pids in the cgroup (and, for a threaded tree, its processes only).
pub fn procs(dir: &Path) -> Vec<i32> {
    read(dir, "cgroup.procs")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Applies an OCI `linux.resources` object to the cgroup, through
/// libcgroups' v2 manager (the same conversions as at create).
pub fn update(path: &str, container_id: &str, resources_json: &[u8]) -> Result<(), String> {
    use libcgroups::common::{create_cgroup_manager, CgroupConfig, CgroupManager, ControllerOpt};
    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_slice(resources_json).map_err(|e| format!("resources_json: {e}"))?;
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path: PathBuf::from(path),
        systemd_cgroup: false,
        container_name: container_id.to_string(),
    })
    .map_err(|e| format!("cgroup {path}: {e}"))?;
    manager
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| format!("applying resources to {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_the_v2_files() {
        let dir = std::env::temp_dir().join(format!("caisson-agent-cg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let files = [
            (
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            ),
            ("memory.current", "10000\n"),
            ("memory.max", "max\n"),
            (
                "memory.stat",
                "anon 4096\nfile 5000\ninactive_file 3000\npgfault 12\npgmajfault 1\n",
            ),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
            ("pids.current", "3\n"),
            ("pids.max", "64\n"),
        ];
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
        let s = stats(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            (s.cpu_usage_ns, s.cpu_user_ns, s.cpu_system_ns),
            (1_500_000, 1_000_000, 500_000)
        );
        assert_eq!(
            (s.memory_usage_bytes, s.memory_limit_bytes),
            (10000, u64::MAX)
        );
        assert_eq!(
            (s.memory_working_set_bytes, s.memory_rss_bytes),
            (7000, 4096)
        );
        assert_eq!(
            (s.page_faults, s.major_page_faults, s.oom_events),
            (12, 1, 1)
        );
        assert_eq!((s.pids_current, s.pids_limit), (3, 64));
        assert_eq!((s.memory_cache_bytes, s.memory_failcnt), (5000, 2));
    }

    #[test]
    fn cgroup_dirs_are_under_the_root() {
        assert_eq!(
            dir("/kubepods/p/c"),
            Path::new("/sys/fs/cgroup/kubepods/p/c")
        );
        assert_eq!(dir("/"), Path::new("/sys/fs/cgroup/"));
    }
}
