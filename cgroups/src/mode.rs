//! cgroup v1 / hybrid / unified detection.

use std::path::Path;

/// How this node mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// v1 controllers only.
    Legacy,
    /// v1 controllers, plus a cgroup2 tree at `/sys/fs/cgroup/unified`
    /// without controllers: limits go to v1.
    Hybrid,
    /// cgroup v2 only.
    Unified,
}

impl CgroupMode {
    /// Reads the mode from the mounts under `root` (normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path) -> CgroupMode {
        if is_cgroup2(root) {
            CgroupMode::Unified
        } else if is_cgroup2(&root.join("unified")) {
            CgroupMode::Hybrid
        } else {
            CgroupMode::Legacy
        }
    }

    /// How logs and RuntimeConfig name it.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Legacy => "v1",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::Unified => "unified",
        }
    }

    /// Whether limits are written to v1 controllers.
    pub fn is_v1(self) -> bool {
        self != CgroupMode::Unified
    }
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_legacy() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(CgroupMode::detect(dir.path()), CgroupMode::Legacy);
        assert!(CgroupMode::Legacy.is_v1());
        assert!(!CgroupMode::Unified.is_v1());
        assert_eq!(CgroupMode::Hybrid.as_str(), "hybrid");
        // This machine: v1 controllers, cgroup2 at /sys/fs/cgroup/unified.
        let host = CgroupMode::detect(Path::new("/sys/fs/cgroup"));
        assert!(host.is_v1() || host == CgroupMode::Unified);
    }
}
