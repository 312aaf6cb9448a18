//! Starting the wait of the next cgroup move early.
//!
//! Moving a process into a cgroup (a write to `cgroup.procs`, which runc and
//! libcontainer do for every container and exec) takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing. When no move happened in the last
//! ~15 ms, that first waits for an RCU grace period (the rwsem's `rcu_sync`
//! leaving its fast mode): about 8 ms on these hosts, against 0.1 ms for a
//! move right after another. A pod start pays it once, in its pause's
//! create. [`MoveWarmer::warm`] makes a move that changes nothing (this
//! process into the cgroup it is in) at the start of a call that will move
//! a process a few ms later: that later move then finds the grace period
//! under way or passed. Nothing else changes; on a kernel that does not
//! behave so, it costs one small write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Moves closer together than this share one grace period anyway.
const MIN_INTERVAL: Duration = Duration::from_millis(5);

/// See the module docs.
#[derive(Debug)]
pub struct MoveWarmer {
    /// This process's own `cgroup.procs`, when one was found.
    procs: Option<PathBuf>,
    started: Instant,
    /// When the last warm-up began, in µs since `started` (0: never).
    last_us: AtomicU64,
}

impl MoveWarmer {
    /// For this process, whose cgroups are read from `/proc/self/cgroup`
    /// under the cgroupfs mounted at `root` (`/sys/fs/cgroup`).
    pub fn for_this_process(root: &Path) -> MoveWarmer {
        let procs = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| own_procs_file(root, &text));
        MoveWarmer {
            procs,
            started: Instant::now(),
            last_us: AtomicU64::new(0),
        }
    }

    /// The `cgroup.procs` file a warm-up writes to, if any.
    pub fn procs_file(&self) -> Option<&Path> {
        self.procs.as_deref()
    }

    /// Moves this process into its own cgroup, unless a warm-up began less
    /// than [`MIN_INTERVAL`] ago. Blocks for up to a grace period: call it
    /// off the async runtime. Errors are ignored (this is only a hint).
    pub fn warm(&self) {
        let Some(procs) = &self.procs else {
            return;
        };
        let now = self.started.elapsed().as_micros() as u64 + 1;
        let last = self.last_us.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < MIN_INTERVAL.as_micros() as u64 {
            return;
        }
        if self
            .last_us
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        if let Err(e) = std::fs::write(procs, std::process::id().to_string()) {
            tracing::debug!(file = %procs.display(), error = %e, "warming cgroup moves");
        }
    }
}

/// This process's `cgroup.procs` in the first hierarchy of `proc_cgroup`
/// (`/proc/self/cgroup`) that exists under `root`: a v1 controller's
/// (`/sys/fs/cgroup/<controllers>/<path>`), else the unified one
/// (`/sys/fs/cgroup/<path>` or, on a hybrid host, `…/unified/<path>`).
fn own_procs_file(root: &Path, proc_cgroup: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(root.join(path));
            candidates.push(root.join("unified").join(path));
        } else if !controllers.starts_with("name=") {
            candidates.insert(0, root.join(controllers).join(path));
        }
    }
    candidates
        .into_iter()
        .map(|dir| dir.join("cgroup.procs"))
        .find(|file| file.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_v1_controllers_file_first_then_the_unified_one() {
        let root = tempfile::tempdir().unwrap();
        let text = "13:name=systemd:/a\n4:cpu,cpuacct:/kubepods/x\n0::/unified-path\n";
        // Nothing exists: nothing found.
        assert_eq!(own_procs_file(root.path(), text), None);
        let unified = root.path().join("unified/unified-path");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::write(unified.join("cgroup.procs"), "").unwrap();
        assert_eq!(
            own_procs_file(root.path(), text),
            Some(unified.join("cgroup.procs"))
        );
        let v1 = root.path().join("cpu,cpuacct/kubepods/x");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cgroup.procs"), "").unwrap();
        assert_eq!(
            own_procs_file(root.path(), text),
            Some(v1.join("cgroup.procs"))
        );
    }

    #[test]
    fn a_warm_up_is_skipped_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("cgroup.procs");
        let warmer = MoveWarmer {
            procs: Some(procs.clone()),
            started: Instant::now(),
            last_us: AtomicU64::new(0),
        };
        warmer.warm();
        assert_eq!(
            std::fs::read_to_string(&procs).unwrap(),
            std::process::id().to_string()
        );
        std::fs::write(&procs, "").unwrap();
        warmer.warm();
        assert_eq!(std::fs::read_to_string(&procs).unwrap(), "", "skipped");
        std::thread::sleep(MIN_INTERVAL + Duration::from_millis(1));
        warmer.warm();
        assert_eq!(
            std::fs::read_to_string(&procs).unwrap(),
            std::process::id().to_string()
        );
    }
}
