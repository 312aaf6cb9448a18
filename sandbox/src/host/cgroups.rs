//! A task's cgroup through libcgroups: its processes, limits and usage.
//! Shared by the native backend (libcontainer's cgroups) and the oci
//! backend (cgroups an external runtime made at the spec's `cgroupsPath`).
//!
//! libcgroups picks v1 (legacy or hybrid hosts, like ours: v1 controllers,
//! an empty cgroup2 at `/sys/fs/cgroup/unified`) or v2 itself; the only
//! differences left here are units (v1 `cpuacct.stat` counts USER_HZ ticks,
//! v2 `cpu.stat` microseconds) and key names in `memory.stat`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
};
use libcgroups::stats::Stats;
use oci_spec::runtime::LinuxResources;

use crate::backend::TaskStats;

/// Managers already made, by cgroup path, until [`forget`]: libcgroups 0.7
/// makes a v1 manager by reading `/proc/self/mountinfo` once per controller,
/// to the end for each controller the host has not mounted, so one made per
/// Stats call or exit read the node's whole mount table (every pod's
/// mounts) several times over. A manager is only paths: kept, it stays
/// right for as long as the task's cgroup path is the task's.
static MANAGERS: LazyLock<Mutex<HashMap<PathBuf, Arc<AnyCgroupManager>>>> =
    LazyLock::new(Mutex::default);

fn managers() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Arc<AnyCgroupManager>>> {
    MANAGERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The manager of the cgroup libcontainer made for task `id` (made once per
/// cgroup path, see [`MANAGERS`]).
pub fn manager(id: &str, cgroup_path: &Path) -> Result<Arc<AnyCgroupManager>, String> {
    if let Some(made) = managers().get(cgroup_path) {
        return Ok(made.clone());
    }
    let made = Arc::new(
        create_cgroup_manager(CgroupConfig {
            cgroup_path: cgroup_path.to_path_buf(),
            systemd_cgroup: false,
            container_name: id.to_string(),
        })
        .map_err(|e| format!("cgroup {}: {e}", cgroup_path.display()))?,
    );
    managers().insert(cgroup_path.to_path_buf(), made.clone());
    Ok(made)
}

/// Drops the manager kept for `cgroup_path` (its task is deleted).
pub fn forget(cgroup_path: &Path) {
    managers().remove(cgroup_path);
}

/// Every process in the cgroup (and its sub-cgroups).
pub fn pids(id: &str, cgroup_path: &Path) -> Result<Vec<u32>, String> {
    let pids = manager(id, cgroup_path)?
        .get_all_pids()
        .map_err(|e| format!("listing cgroup {}: {e}", cgroup_path.display()))?;
    Ok(pids.into_iter().map(|p| p.as_raw() as u32).collect())
}

/// SIGKILLs what is left in the cgroup and waits, at most `limit` (zero:
/// one round of kills), until it is empty. A process may still be on its way out when its task is deleted
/// (libcontainer's intermediate process on a loaded node), and libcgroups
/// gives up removing a busy cgroup after about 100 ms. False if a process
/// was still there at the limit; true too when there is no such cgroup.
pub fn drain(id: &str, cgroup_path: &Path, limit: std::time::Duration) -> bool {
    if is_hierarchy_root(cgroup_path) {
        return true;
    }
    let deadline = std::time::Instant::now() + limit;
    loop {
        let Ok(left) = pids(id, cgroup_path) else {
            return true;
        };
        if left.is_empty() {
            return true;
        }
        for pid in left {
            // SAFETY: kill(2) with a pid and a signal number.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A hierarchy's root, which [`drain`] and [`signal_all`] never touch:
/// every process of the host is in it.
fn is_hierarchy_root(cgroup_path: &Path) -> bool {
    cgroup_path.file_name().is_none()
}

/// Sends `signal` to every process in the cgroup (and its sub-cgroups), as
/// libcontainer's `kill(all)` does: the cgroup is frozen while its
/// processes are listed and signalled, so none forks past the kill, and
/// thawed after (a frozen process cannot act on a signal), unless
/// `stay_frozen` (a paused task sent anything but SIGKILL stays paused).
/// Through the manager kept for the cgroup: libcontainer's own makes a new
/// one per call ([`MANAGERS`]). A process already gone is not an error.
pub fn signal_all(
    id: &str,
    cgroup_path: &Path,
    signal: i32,
    stay_frozen: bool,
) -> Result<(), String> {
    use libcgroups::common::FreezerState;
    if is_hierarchy_root(cgroup_path) {
        return Err(format!(
            "refusing to signal every process of cgroup {}",
            cgroup_path.display()
        ));
    }
    let manager = manager(id, cgroup_path)?;
    if let Err(e) = manager.freeze(FreezerState::Frozen) {
        tracing::warn!(id, error = %e, "could not freeze the cgroup to signal it");
    }
    let signalled = manager
        .get_all_pids()
        .map_err(|e| format!("listing cgroup {}: {e}", cgroup_path.display()))
        .and_then(|pids| {
            for pid in pids {
                // SAFETY: kill(2) with a pid and a signal number.
                if unsafe { libc::kill(pid.as_raw(), signal) } != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        return Err(format!("signalling {pid}: {e}"));
                    }
                }
            }
            Ok(())
        });
    if !stay_frozen {
        if let Err(e) = manager.freeze(FreezerState::Thawed) {
            tracing::warn!(id, error = %e, "could not thaw the cgroup after signalling it");
        }
    }
    signalled
}

/// Applies new limits.
pub fn update(id: &str, cgroup_path: &Path, resources: &LinuxResources) -> Result<(), String> {
    let disable_oom_killer = resources
        .memory()
        .as_ref()
        .and_then(|m| m.disable_oom_killer())
        .unwrap_or(false);
    manager(id, cgroup_path)?
        .apply(&ControllerOpt {
            resources,
            disable_oom_killer,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| format!("updating cgroup {}: {e}", cgroup_path.display()))
}

/// Usage of the cgroup, in [`TaskStats`] units.
pub fn stats(id: &str, cgroup_path: &Path) -> Result<TaskStats, String> {
    let manager = manager(id, cgroup_path)?;
    let v1 = matches!(*manager, AnyCgroupManager::V1(_));
    let stats = manager
        .stats()
        .map_err(|e| format!("reading cgroup {} stats: {e}", cgroup_path.display()))?;
    let mut out = task_stats(&stats, v1);
    if v1 {
        out.oom_events = v1_oom_kills(cgroup_path).unwrap_or(0);
    }
    Ok(out)
}

/// Converts libcgroups' stats; `v1` selects units and key names.
fn task_stats(stats: &Stats, v1: bool) -> TaskStats {
    let cpu = &stats.cpu.usage;
    let (cpu_user_ns, cpu_system_ns, cpu_usage_ns) = if v1 {
        let tick_ns = 1_000_000_000 / clock_ticks_per_second();
        (
            cpu.usage_user.saturating_mul(tick_ns),
            cpu.usage_kernel.saturating_mul(tick_ns),
            cpu.usage_total,
        )
    } else {
        (
            cpu.usage_user.saturating_mul(1000),
            cpu.usage_kernel.saturating_mul(1000),
            cpu.usage_total.saturating_mul(1000),
        )
    };
    let memory = &stats.memory;
    let stat = |v1_key: &str, v2_key: &str| -> u64 {
        let key = if v1 { v1_key } else { v2_key };
        lookup(&memory.stats, key)
    };
    let usage = memory.memory.usage;
    let inactive_file = stat("total_inactive_file", "inactive_file");
    TaskStats {
        cpu_usage_ns,
        cpu_user_ns,
        cpu_system_ns,
        memory_usage_bytes: usage,
        memory_limit_bytes: memory.memory.limit,
        memory_working_set_bytes: usage.saturating_sub(inactive_file),
        memory_rss_bytes: stat("total_rss", "anon"),
        page_faults: stat("total_pgfault", "pgfault"),
        major_page_faults: stat("total_pgmajfault", "pgmajfault"),
        // v2: libcgroups reads `oom` of memory.events into fail_count; v1 is
        // read from memory.oom_control by the caller.
        oom_events: if v1 { 0 } else { memory.memory.fail_count },
        pids_current: stats.pids.current,
        pids_limit: stats.pids.limit,
        memory_cache_bytes: stat("total_cache", "file"),
        memory_failcnt: if v1 { memory.memory.fail_count } else { 0 },
    }
}

fn lookup(stats: &HashMap<String, u64>, key: &str) -> u64 {
    stats.get(key).copied().unwrap_or(0)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// How many processes of the task the kernel OOM-killed: `oom_kill` in the
/// v1 memory cgroup's `memory.oom_control`, or in v2's `memory.events`.
pub fn oom_kills(cgroup_path: &Path) -> u64 {
    if let Some(n) = v1_oom_kills(cgroup_path) {
        return n;
    }
    let relative: PathBuf = cgroup_path
        .components()
        .skip_while(|c| c.as_os_str() == "/")
        .collect();
    std::fs::read_to_string(
        Path::new("/sys/fs/cgroup")
            .join(relative)
            .join("memory.events"),
    )
    .ok()
    .and_then(|events| parse_oom_kill(&events))
    .unwrap_or(0)
}

/// `oom_kill` of the v1 memory cgroup's `memory.oom_control`.
fn v1_oom_kills(cgroup_path: &Path) -> Option<u64> {
    // Where the v1 memory hierarchy is mounted, looked up in the mount table
    // once: hierarchies are not moved under a running shim.
    static MEMORY_MOUNT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let mount = MEMORY_MOUNT
        .get_or_init(|| {
            libcgroups::v1::util::get_subsystem_mount_point(&libcgroups::v1::ControllerType::Memory)
                .ok()
        })
        .as_ref()?;
    let relative: PathBuf = cgroup_path
        .components()
        .skip_while(|c| c.as_os_str() == "/")
        .collect();
    let control = std::fs::read_to_string(mount.join(relative).join("memory.oom_control")).ok()?;
    parse_oom_kill(&control)
}

fn parse_oom_kill(oom_control: &str) -> Option<u64> {
    oom_control.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_path_gets_one_manager_until_forgotten() {
        // Making a manager computes paths; it creates no cgroup.
        let path = Path::new("/caisson-unit-test/managers");
        let first = manager("t", path).unwrap();
        let again = manager("t", path).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "made twice");
        let other = manager("u", Path::new("/caisson-unit-test/other")).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        forget(path);
        assert!(!Arc::ptr_eq(&first, &manager("t", path).unwrap()));
        forget(path);
        forget(Path::new("/caisson-unit-test/other"));
    }

    #[test]
    fn oom_kill_is_read_from_oom_control() {
        for (text, want) in [
            ("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", Some(3)),
            ("oom_kill_disable 0\nunder_oom 0\n", None),
            ("", None),
        ] {
            assert_eq!(parse_oom_kill(text), want, "{text:?}");
        }
    }

    #[test]
    fn stats_convert_units_per_version() {
        let mut stats = Stats::default();
        stats.cpu.usage.usage_total = 5_000;
        stats.cpu.usage.usage_user = 2;
        stats.cpu.usage.usage_kernel = 1;
        stats.memory.memory.usage = 1000;
        stats.memory.memory.limit = 4096;
        for (k, v) in [
            ("total_inactive_file", 300),
            ("inactive_file", 100),
            ("total_rss", 600),
            ("anon", 500),
            ("total_pgfault", 9),
            ("pgfault", 8),
        ] {
            stats.memory.stats.insert(k.to_string(), v);
        }
        let tick = 1_000_000_000 / clock_ticks_per_second();
        let v1 = task_stats(&stats, true);
        assert_eq!(
            (v1.cpu_usage_ns, v1.cpu_user_ns, v1.cpu_system_ns),
            (5_000, 2 * tick, tick)
        );
        assert_eq!(
            (
                v1.memory_working_set_bytes,
                v1.memory_rss_bytes,
                v1.page_faults
            ),
            (700, 600, 9)
        );
        let v2 = task_stats(&stats, false);
        assert_eq!(
            (v2.cpu_usage_ns, v2.cpu_user_ns, v2.cpu_system_ns),
            (5_000_000, 2000, 1000)
        );
        assert_eq!(
            (
                v2.memory_working_set_bytes,
                v2.memory_rss_bytes,
                v2.page_faults
            ),
            (900, 500, 8)
        );
        assert_eq!(v2.memory_limit_bytes, 4096);
    }
}
