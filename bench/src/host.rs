//! What the bench leaves on the host and its removal: mounts under a
//! work dir, and cgroup trees under a parent in every hierarchy (killing
//! what still runs in them: only the bench's own pods can).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Mount points at or under `dir`, from this process's mountinfo, in mount
/// order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    caisson_sandbox::host::mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Unmounts (lazily) every mount under `dir`, the newest first; returns
/// what was mounted.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let mounts = mounts_under(dir);
    for mount in mounts.iter().rev() {
        if let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 on a NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
    mounts
}

/// `/sys/fs/cgroup/<hierarchy>/<parent>` for every mounted hierarchy where
/// it exists (each hierarchy once: `cpu` may be a link to `cpu,cpuacct`).
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/fs/cgroup") else {
        return dirs;
    };
    for entry in entries.flatten() {
        let Ok(hierarchy) = fs::canonicalize(entry.path()) else {
            continue;
        };
        let dir = hierarchy.join(parent.trim_start_matches('/'));
        if dir.is_dir() && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.sort();
    dirs
}

/// Cgroups below `dir` (not `dir` itself), parents before children.
fn cgroups_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(entry.path());
                found.extend(cgroups_below(&entry.path()));
            }
        }
    }
    found
}

/// Cgroups that exist below `parent` in any hierarchy.
pub fn cgroups_below_parent(parent: &str) -> Vec<PathBuf> {
    cgroup_dirs(parent)
        .iter()
        .flat_map(|d| cgroups_below(d))
        .collect()
}

/// What removing a cgroup parent found in it.
#[derive(Debug, Default)]
pub struct CgroupCleanup {
    /// Cgroups below the parents, which the runtimes should have removed.
    pub left: Vec<PathBuf>,
    /// Processes still in them, killed.
    pub killed: Vec<u32>,
}

/// Removes `dir` and every cgroup below it, deepest first, killing what
/// still runs there (only the bench's pods can).
fn remove_cgroup_tree(dir: &Path, cleanup: &mut CgroupCleanup) -> Result<()> {
    let mut all = vec![dir.to_path_buf()];
    all.extend(cgroups_below(dir));
    for cgroup in all.iter().rev() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                // SAFETY: kill on a pid read from the bench's own cgroup.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                if !cleanup.killed.contains(&pid) {
                    cleanup.killed.push(pid);
                }
            }
            match fs::remove_dir(cgroup) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                // Busy until the killed processes have exited.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("removing cgroup {}: {e}", cgroup.display()).into()),
            }
        }
    }
    all.remove(0);
    cleanup.left.extend(all);
    Ok(())
}

/// Removes `/sys/fs/cgroup/*/<parent>` for each parent, with everything below.
pub fn remove_cgroup_parents(parents: &[&str]) -> Result<CgroupCleanup> {
    let mut cleanup = CgroupCleanup::default();
    for parent in parents {
        for dir in cgroup_dirs(parent) {
            remove_cgroup_tree(&dir, &mut cleanup)?;
        }
    }
    Ok(cleanup)
}
