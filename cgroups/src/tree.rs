//! The kubepods hierarchy Caisson builds when kubelet gives no
//! `cgroup_parent` (crictl, standalone nodes), under a configurable top that
//! does not collide with a kubelet's `/kubepods`:
//!
//! ```text
//! <top>                    node allocatable: memory limit, cpu shares
//! ├── pod<uid>             Guaranteed pods
//! ├── burstable            cpu shares = sum of its pods' requests (≥ 2)
//! │   └── pod<uid>
//! └── besteffort           cpu shares = 2
//!     └── pod<uid>
//! ```
//!
//! Pod cgroups get the sums of their containers plus overhead
//! ([`PodResources`]); container cgroups are made and limited by the shim.

use crate::cpu;
use crate::fs::CgroupFs;
use crate::path::pod_cgroup_name;
use crate::{CgroupError, PodResources, QosClass};

/// What the node gives to pods (config); `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAllocatable {
    pub memory: Option<u64>,
    pub cpu_milli: Option<u64>,
}

/// The hierarchy under `top`.
#[derive(Debug, Clone)]
pub struct QosTree<F> {
    fs: F,
    top: String,
    allocatable: NodeAllocatable,
}

/// The cgroup limits of one level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_shares: Option<u64>,
    /// CFS quota over [`cpu::DEFAULT_PERIOD_US`]; `None` = unlimited.
    pub cpu_quota: Option<i64>,
    /// `None` = unlimited.
    pub memory: Option<u64>,
}

impl<F: CgroupFs> QosTree<F> {
    pub fn new(fs: F, top: &str, allocatable: NodeAllocatable) -> QosTree<F> {
        let top = format!("/{}", top.trim_matches('/'));
        QosTree {
            fs,
            top,
            allocatable,
        }
    }

    /// The cgroup files.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// The top (node-allocatable) cgroup.
    pub fn top(&self) -> &str {
        &self.top
    }

    /// A tier's cgroup (`<top>` for Guaranteed).
    pub fn tier(&self, class: QosClass) -> String {
        match class.tier() {
            Some(tier) => format!("{}/{tier}", self.top),
            None => self.top.clone(),
        }
    }

    /// The cgroup of pod `uid` of `class`.
    pub fn pod_cgroup(&self, class: QosClass, uid: &str) -> String {
        format!("{}/{}", self.tier(class), pod_cgroup_name(uid))
    }

    /// Creates the top and tiers with their limits (idempotent).
    pub fn ensure(&self) -> Result<(), CgroupError> {
        self.fs.create(&self.top)?;
        let top = Limits {
            cpu_shares: self.allocatable.cpu_milli.map(cpu::cpu_shares_from_request),
            cpu_quota: None,
            memory: self.allocatable.memory,
        };
        self.apply(&self.top, &top)?;
        for class in [QosClass::Burstable, QosClass::BestEffort] {
            let tier = self.tier(class);
            self.fs.create(&tier)?;
            self.apply(
                &tier,
                &Limits {
                    cpu_shares: Some(cpu::MIN_SHARES),
                    ..Limits::default()
                },
            )?;
        }
        Ok(())
    }

    /// Sets the burstable tier's shares to the sum of its pods' requests,
    /// as kubelet does.
    pub fn set_burstable_requests(&self, shares: u64) -> Result<(), CgroupError> {
        self.apply(
            &self.tier(QosClass::Burstable),
            &Limits {
                cpu_shares: Some(shares.clamp(cpu::MIN_SHARES, cpu::MAX_SHARES)),
                ..Limits::default()
            },
        )
    }

    /// Sets the burstable tier's shares to the sum of its pods' shares as
    /// the cgroupfs shows them (so that it needs no bookkeeping).
    pub fn refresh_burstable(&self) -> Result<(), CgroupError> {
        let tier = self.tier(QosClass::Burstable);
        let v1 = self.fs.mode().is_v1();
        let controller = if v1 { "cpu" } else { "" };
        let mut total = 0;
        if let Ok(entries) = std::fs::read_dir(self.fs.dir(controller, &tier)) {
            for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                let child = format!("{tier}/{}", entry.file_name().to_string_lossy());
                total += if v1 {
                    self.fs
                        .read(controller, &child, "cpu.shares")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                } else {
                    self.fs
                        .read(controller, &child, "cpu.weight")
                        .and_then(|s| s.parse().ok())
                        .map_or(0, cpu::cpu_shares_from_weight)
                };
            }
        }
        self.set_burstable_requests(total)
    }

    /// The limits of a pod's cgroup.
    pub fn pod_limits(pod: &PodResources) -> Limits {
        Limits {
            cpu_shares: Some(pod.cpu_shares()),
            cpu_quota: pod.cpu_quota(),
            memory: pod.memory_limit(),
        }
    }

    /// Creates pod `uid`'s cgroup in its class's tier, sized from `pod`;
    /// returns its path. On failure nothing is left behind.
    pub fn create_pod(&self, uid: &str, pod: &PodResources) -> Result<String, CgroupError> {
        self.ensure()?;
        let cgroup = self.pod_cgroup(pod.class(), uid);
        self.fs.create(&cgroup)?;
        if let Err(e) = self.apply(&cgroup, &Self::pod_limits(pod)) {
            let _ = self.fs.remove(&cgroup);
            return Err(e);
        }
        Ok(cgroup)
    }

    /// Writes `limits` to `cgroup` (v1 or v2 files).
    pub fn apply(&self, cgroup: &str, limits: &Limits) -> Result<(), CgroupError> {
        let v1 = self.fs.mode().is_v1();
        if let Some(shares) = limits.cpu_shares {
            if v1 {
                self.fs
                    .write("cpu", cgroup, "cpu.shares", &shares.to_string())?;
            } else {
                let weight = cpu::cpu_weight_from_shares(shares);
                self.fs
                    .write("cpu", cgroup, "cpu.weight", &weight.to_string())?;
            }
        }
        let period = cpu::DEFAULT_PERIOD_US;
        if v1 {
            self.fs
                .write("cpu", cgroup, "cpu.cfs_period_us", &period.to_string())?;
            let quota = limits.cpu_quota.unwrap_or(-1);
            self.fs
                .write("cpu", cgroup, "cpu.cfs_quota_us", &quota.to_string())?;
            let memory = limits.memory.map_or("-1".to_string(), |m| m.to_string());
            self.fs
                .write("memory", cgroup, "memory.limit_in_bytes", &memory)?;
        } else {
            self.fs.write(
                "cpu",
                cgroup,
                "cpu.max",
                &cpu::cpu_max(limits.cpu_quota, period),
            )?;
            let memory = limits.memory.map_or("max".to_string(), |m| m.to_string());
            self.fs.write("memory", cgroup, "memory.max", &memory)?;
        }
        Ok(())
    }

    /// Removes a cgroup of this tree (a pod's).
    pub fn remove(&self, cgroup: &str) -> Result<(), CgroupError> {
        self.fs.remove(cgroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::CgroupRoot;
    use crate::{CgroupMode, Resources};

    const MI: u64 = 1 << 20;

    fn pod(shares: u64, quota: i64, memory: u64) -> PodResources {
        PodResources {
            resources: Resources {
                cpu_shares: shares,
                cpu_quota: quota,
                cpu_period: 100_000,
                memory_limit: memory,
            },
            overhead: Resources::default(),
        }
    }

    fn tree(dir: &std::path::Path, mode: CgroupMode) -> QosTree<CgroupRoot> {
        QosTree::new(
            CgroupRoot::at(dir, mode),
            "caisson-kubepods/",
            NodeAllocatable {
                memory: Some(256 * MI),
                cpu_milli: Some(2000),
            },
        )
    }

    #[test]
    fn v1_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree(dir.path(), CgroupMode::Hybrid);
        let cases = [
            (
                "g",
                pod(1024, 100_000, 64 * MI),
                "/caisson-kubepods/podg",
                "1024",
                "100000",
                "67108864",
            ),
            (
                "b",
                pod(512, -1, 0),
                "/caisson-kubepods/burstable/podb",
                "512",
                "-1",
                "-1",
            ),
            (
                "e",
                pod(2, -1, 0),
                "/caisson-kubepods/besteffort/pode",
                "2",
                "-1",
                "-1",
            ),
        ];
        for (uid, resources, want_path, shares, quota, memory) in cases {
            let path = tree.create_pod(uid, &resources).unwrap();
            assert_eq!(path, want_path);
            let fs = tree.fs();
            assert_eq!(
                fs.read("cpu", &path, "cpu.shares").unwrap(),
                shares,
                "{uid}"
            );
            assert_eq!(
                fs.read("cpu", &path, "cpu.cfs_quota_us").unwrap(),
                quota,
                "{uid}"
            );
            assert_eq!(
                fs.read("memory", &path, "memory.limit_in_bytes").unwrap(),
                memory,
                "{uid}"
            );
            assert!(dir.path().join("pids").join(&path[1..]).is_dir());
        }
        let fs = tree.fs();
        assert_eq!(
            fs.read("cpu", "/caisson-kubepods", "cpu.shares").unwrap(),
            "2048"
        );
        assert_eq!(
            fs.read("memory", "/caisson-kubepods", "memory.limit_in_bytes")
                .unwrap(),
            (256 * MI).to_string()
        );
        assert_eq!(
            fs.read("cpu", "/caisson-kubepods/besteffort", "cpu.shares")
                .unwrap(),
            "2"
        );
        tree.create_pod("b2", &pod(256, -1, 0)).unwrap();
        tree.refresh_burstable().unwrap();
        assert_eq!(
            fs.read("cpu", "/caisson-kubepods/burstable", "cpu.shares")
                .unwrap(),
            "768"
        );
        tree.remove(&tree.pod_cgroup(QosClass::Burstable, "b2"))
            .unwrap();
        tree.set_burstable_requests(512 + 256).unwrap();
        assert_eq!(
            fs.read("cpu", "/caisson-kubepods/burstable", "cpu.shares")
                .unwrap(),
            "768"
        );
        for (uid, class) in [
            ("g", QosClass::Guaranteed),
            ("b", QosClass::Burstable),
            ("e", QosClass::BestEffort),
        ] {
            tree.remove(&tree.pod_cgroup(class, uid)).unwrap();
        }
        assert!(!dir.path().join("cpu/caisson-kubepods/podg").exists());
        assert!(!dir
            .path()
            .join("memory/caisson-kubepods/burstable/podb")
            .exists());
        // Removing twice is fine.
        tree.remove("/caisson-kubepods/podg").unwrap();
    }

    #[test]
    fn v2_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree(dir.path(), CgroupMode::Unified);
        let path = tree.create_pod("g", &pod(512, 50_000, 64 * MI)).unwrap();
        assert_eq!(path, "/caisson-kubepods/podg");
        let fs = tree.fs();
        assert_eq!(fs.read("", &path, "cpu.weight").unwrap(), "20");
        assert_eq!(fs.read("", &path, "cpu.max").unwrap(), "50000 100000");
        assert_eq!(fs.read("", &path, "memory.max").unwrap(), "67108864");
        assert_eq!(
            fs.read("", "/caisson-kubepods", "cgroup.subtree_control")
                .unwrap(),
            "+cpu +memory +pids"
        );
        assert_eq!(
            fs.read("", "/", "cgroup.subtree_control").unwrap(),
            "+cpu +memory +pids"
        );
        let be = tree.create_pod("e", &PodResources::default()).unwrap();
        assert_eq!(fs.read("", &be, "cpu.weight").unwrap(), "1");
        assert_eq!(fs.read("", &be, "cpu.max").unwrap(), "max 100000");
        assert_eq!(fs.read("", &be, "memory.max").unwrap(), "max");
    }
}
