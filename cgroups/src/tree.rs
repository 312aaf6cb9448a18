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
use crate::unified::{self, Setting, UnifiedError};
use crate::{CgroupError, PodResources, QosClass};

/// Why [`QosTree::apply_extras`] failed: a refused request, or a write.
#[derive(Debug, thiserror::Error)]
pub enum UnifiedApplyError {
    #[error(transparent)]
    Unified(#[from] UnifiedError),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

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
    /// Swap on top of `memory` in bytes (-1 = unlimited); `None` leaves
    /// the swap limit alone. v1 keeps it as memory + swap
    /// (`memory.memsw.limit_in_bytes`, never below the memory limit), so
    /// the two files are written in the order that keeps that true.
    pub swap: Option<i64>,
}

impl Limits {
    /// The wider of two limits on each resource (unlimited wins): a pod is
    /// set to this while one of its containers grows or shrinks, so that
    /// the container never needs more than its pod allows (v1 refuses a
    /// child CFS quota above its parent's).
    pub fn widest(&self, other: &Limits) -> Limits {
        Limits {
            cpu_shares: self.cpu_shares.max(other.cpu_shares),
            cpu_quota: self.cpu_quota.zip(other.cpu_quota).map(|(a, b)| a.max(b)),
            memory: self.memory.zip(other.memory).map(|(a, b)| a.max(b)),
            swap: match (self.swap, other.swap) {
                (Some(a), Some(b)) if a < 0 || b < 0 => Some(-1),
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

impl PodResources {
    /// The limits of the pod's cgroup.
    pub fn limits(&self) -> Limits {
        Limits {
            cpu_shares: Some(self.cpu_shares()),
            cpu_quota: self.cpu_quota(),
            memory: self.memory_limit(),
            swap: None,
        }
    }
}

/// The swap on top of `memory` for a CRI memory + swap total
/// (`memory_swap_limit_in_bytes`, -1 = unlimited swap).
pub fn swap_over(
    total: Option<i64>,
    memory: Option<u64>,
) -> Result<Option<i64>, UnifiedApplyError> {
    match (total, memory) {
        (None, _) => Ok(None),
        (Some(-1), _) => Ok(Some(-1)),
        (Some(total), Some(limit)) => Ok(Some(
            total
                .saturating_sub(i64::try_from(limit).unwrap_or(i64::MAX))
                .max(0),
        )),
        (Some(_), None) => Err(UnifiedApplyError::Invalid {
            field: "memory_swap_limit_in_bytes".into(),
            reason: "a swap limit needs a memory limit".into(),
        }),
    }
}

/// Pod-level limits besides CPU and memory, where the CRI (or the node's
/// config, for pids) carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodExtras {
    /// `pids.max` (config `pod_pids_limit`, like kubelet's `--pod-max-pids`).
    pub pids_limit: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Memory + swap in bytes, as CRI's `memory_swap_limit_in_bytes`
    /// (-1 = unlimited swap); needs a memory limit.
    pub memory_swap: Option<i64>,
    /// Page size (`"2MB"`) → bytes.
    pub hugepages: Vec<(String, u64)>,
    /// Checked `unified` entries (v2 file → value).
    pub unified: Vec<(String, String)>,
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

    /// Whether `cgroup` is pod `uid`'s cgroup in one of this tree's tiers
    /// (a pod caissond placed itself, not one under a kubelet parent).
    pub fn holds_pod_cgroup(&self, cgroup: &str, uid: &str) -> bool {
        [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ]
        .into_iter()
        .any(|class| cgroup == self.pod_cgroup(class, uid))
    }

    /// Creates the top and tiers with their limits (idempotent).
    pub fn ensure(&self) -> Result<(), CgroupError> {
        self.fs.create(&self.top)?;
        let top = Limits {
            cpu_shares: self.allocatable.cpu_milli.map(cpu::cpu_shares_from_request),
            cpu_quota: None,
            memory: self.allocatable.memory,
            swap: None,
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
    fn set_burstable_requests(&self, shares: u64) -> Result<(), CgroupError> {
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

    /// Creates pod `uid`'s cgroup in its class's tier, sized from `pod`
    /// with `extras`; returns its path. On failure nothing is left behind.
    pub fn create_pod(
        &self,
        uid: &str,
        pod: &PodResources,
        extras: &PodExtras,
    ) -> Result<String, UnifiedApplyError> {
        self.create_pod_in(pod.class(), uid, pod, extras)
    }

    /// [`QosTree::create_pod`] in the tier of `class`, which someone else
    /// decided (a microvm guest places its pod where the host did, before
    /// the pod's containers and so its figures are known).
    pub fn create_pod_in(
        &self,
        class: QosClass,
        uid: &str,
        pod: &PodResources,
        extras: &PodExtras,
    ) -> Result<String, UnifiedApplyError> {
        self.ensure()?;
        let cgroup = self.pod_cgroup(class, uid);
        if let Err(e) = self.fs.create(&cgroup) {
            let _ = self.fs.remove_tree(&cgroup);
            return Err(e.into());
        }
        let applied = swap_over(extras.memory_swap, pod.memory_limit()).and_then(|swap| {
            let limits = Limits {
                swap,
                ..pod.limits()
            };
            self.apply(&cgroup, &limits)?;
            self.apply_extras(&cgroup, extras, &limits)
        });
        if let Err(e) = applied {
            let _ = self.fs.remove_tree(&cgroup);
            return Err(e);
        }
        Ok(cgroup)
    }

    /// Writes a pod's [`PodExtras`] to its cgroup, whose limits are
    /// `limits` (its `memory_swap` goes with them: [`swap_over`]).
    /// `unified` entries are written as given on v2 and as their v1
    /// equivalents on v1, last.
    pub fn apply_extras(
        &self,
        cgroup: &str,
        extras: &PodExtras,
        limits: &Limits,
    ) -> Result<(), UnifiedApplyError> {
        let v1 = self.fs.mode().is_v1();
        let mut settings: Vec<Setting> = vec![];
        if let Some(pids) = extras.pids_limit {
            settings.push(Setting::Pids(i64::try_from(pids).unwrap_or(i64::MAX)));
        }
        if let Some(cpus) = &extras.cpuset_cpus {
            settings.push(Setting::CpusetCpus(cpus.clone()));
        }
        if let Some(mems) = &extras.cpuset_mems {
            settings.push(Setting::CpusetMems(mems.clone()));
        }
        for (page_size, limit) in &extras.hugepages {
            settings.push(Setting::Hugetlb {
                page_size: page_size.clone(),
                limit: *limit,
            });
        }
        if !v1 {
            for (key, value) in &extras.unified {
                unified::check(key, value)?;
            }
        } else {
            for (key, value) in &extras.unified {
                settings.push(unified::to_v1(key, value)?);
            }
        }
        let mut memory = (limits.memory, limits.swap);
        for setting in &settings {
            self.write_setting(cgroup, setting, &mut memory)?;
        }
        if !v1 {
            for (key, value) in &extras.unified {
                let controller = key.split('.').next().unwrap_or("");
                if controller == "cpuset" || controller == "hugetlb" || controller == "io" {
                    self.fs.create_in(controller, cgroup)?;
                }
                self.fs.write("", cgroup, key, value)?;
            }
        }
        Ok(())
    }

    /// One setting's files. `memory` tracks the memory limit and the swap
    /// on top of it.
    fn write_setting(
        &self,
        cgroup: &str,
        setting: &Setting,
        memory: &mut (Option<u64>, Option<i64>),
    ) -> Result<(), CgroupError> {
        let v1 = self.fs.mode().is_v1();
        let max = |n: i64| {
            if n < 0 {
                "max".to_string()
            } else {
                n.to_string()
            }
        };
        match setting {
            Setting::CpuShares(shares) => {
                if v1 {
                    self.fs
                        .write("cpu", cgroup, "cpu.shares", &shares.to_string())
                } else {
                    let weight = cpu::cpu_weight_from_shares(*shares);
                    self.fs.write("", cgroup, "cpu.weight", &weight.to_string())
                }
            }
            Setting::CpuQuota { quota, period } => {
                let period = period.unwrap_or(cpu::DEFAULT_PERIOD_US);
                if v1 {
                    self.fs
                        .write("cpu", cgroup, "cpu.cfs_period_us", &period.to_string())?;
                    self.fs
                        .write("cpu", cgroup, "cpu.cfs_quota_us", &quota.to_string())
                } else {
                    let quota = (*quota > 0).then_some(*quota);
                    self.fs
                        .write("", cgroup, "cpu.max", &cpu::cpu_max(quota, period))
                }
            }
            Setting::MemoryLimit(limit) => {
                memory.0 = (*limit >= 0).then_some(*limit as u64);
                if v1 {
                    self.write_v1_memory(cgroup, memory.0, memory.1)
                } else {
                    self.fs.write("", cgroup, "memory.max", &max(*limit))
                }
            }
            Setting::Swap(swap) => {
                memory.1 = Some(*swap);
                if v1 {
                    self.write_v1_memory(cgroup, memory.0, memory.1)
                } else {
                    self.fs.write("", cgroup, "memory.swap.max", &max(*swap))
                }
            }
            Setting::Pids(pids) => self.fs.write("pids", cgroup, "pids.max", &max(*pids)),
            Setting::CpusetCpus(list) | Setting::CpusetMems(list) => {
                let file = if matches!(setting, Setting::CpusetCpus(_)) {
                    "cpuset.cpus"
                } else {
                    "cpuset.mems"
                };
                self.fs.create_in("cpuset", cgroup)?;
                self.fs.write("cpuset", cgroup, file, list)
            }
            Setting::Hugetlb { page_size, limit } => {
                self.fs.create_in("hugetlb", cgroup)?;
                let (file, value) = if v1 {
                    let value = if *limit == u64::MAX {
                        "-1".to_string()
                    } else {
                        limit.to_string()
                    };
                    (format!("hugetlb.{page_size}.limit_in_bytes"), value)
                } else {
                    let value = if *limit == u64::MAX {
                        "max".to_string()
                    } else {
                        limit.to_string()
                    };
                    (format!("hugetlb.{page_size}.max"), value)
                };
                self.fs.write("hugetlb", cgroup, &file, &value)
            }
        }
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
            self.write_v1_memory(cgroup, limits.memory, limits.swap)?;
        } else {
            self.fs.write(
                "cpu",
                cgroup,
                "cpu.max",
                &cpu::cpu_max(limits.cpu_quota, period),
            )?;
            let memory = limits.memory.map_or("max".to_string(), |m| m.to_string());
            self.fs.write("memory", cgroup, "memory.max", &memory)?;
            if let Some(swap) = limits.swap {
                let swap = if swap < 0 {
                    "max".to_string()
                } else {
                    swap.to_string()
                };
                self.fs.write("memory", cgroup, "memory.swap.max", &swap)?;
            }
        }
        Ok(())
    }

    /// v1 `memory.limit_in_bytes` and, when `swap` is given,
    /// `memory.memsw.limit_in_bytes` (limit + swap). The kernel refuses a
    /// memory limit above memsw at every moment: memsw is written first
    /// when it is not below the current limit, last otherwise.
    fn write_v1_memory(
        &self,
        cgroup: &str,
        memory: Option<u64>,
        swap: Option<i64>,
    ) -> Result<(), CgroupError> {
        let limit = memory.map_or(-1, |m| i64::try_from(m).unwrap_or(i64::MAX));
        let write_limit = || {
            self.fs.write(
                "memory",
                cgroup,
                "memory.limit_in_bytes",
                &limit.to_string(),
            )
        };
        let Some(swap) = swap else {
            return write_limit();
        };
        let memsw = match memory {
            Some(_) if swap >= 0 => limit.saturating_add(swap),
            _ => -1,
        };
        let unlimited_as_max = |v: i64| if v < 0 { i64::MAX } else { v };
        let current = self
            .fs
            .read("memory", cgroup, "memory.limit_in_bytes")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(i64::MAX);
        let write_memsw = || {
            self.fs.write(
                "memory",
                cgroup,
                "memory.memsw.limit_in_bytes",
                &memsw.to_string(),
            )
        };
        if unlimited_as_max(memsw) >= unlimited_as_max(current) {
            write_memsw()?;
            write_limit()
        } else {
            write_limit()?;
            write_memsw()
        }
    }

    /// Removes a cgroup of this tree (a pod's) with everything below it,
    /// in every hierarchy.
    pub fn remove(&self, cgroup: &str) -> Result<(), CgroupError> {
        self.fs.remove_tree(cgroup)
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
    fn holds_only_its_own_tiers_pod_cgroups() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree(dir.path(), CgroupMode::Hybrid);
        for (cgroup, uid, held) in [
            ("/caisson-kubepods/podu1", "u1", true),
            ("/caisson-kubepods/burstable/podu1", "u1", true),
            ("/caisson-kubepods/besteffort/podu1", "u1", true),
            ("/caisson-kubepods/besteffort/podu1", "u2", false),
            ("/kubepods/burstable/podu1", "u1", false),
            ("/caisson-kubepods/other/podu1", "u1", false),
        ] {
            assert_eq!(tree.holds_pod_cgroup(cgroup, uid), held, "{cgroup} {uid}");
        }
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
            let path = tree
                .create_pod(uid, &resources, &PodExtras::default())
                .unwrap();
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
        tree.create_pod("b2", &pod(256, -1, 0), &PodExtras::default())
            .unwrap();
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
        let path = tree
            .create_pod("g", &pod(512, 50_000, 64 * MI), &PodExtras::default())
            .unwrap();
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
        let be = tree
            .create_pod("e", &PodResources::default(), &PodExtras::default())
            .unwrap();
        assert_eq!(fs.read("", &be, "cpu.weight").unwrap(), "1");
        assert_eq!(fs.read("", &be, "cpu.max").unwrap(), "max 100000");
        assert_eq!(fs.read("", &be, "memory.max").unwrap(), "max");
    }

    fn extras() -> PodExtras {
        PodExtras {
            pids_limit: Some(128),
            cpuset_cpus: Some("0".into()),
            cpuset_mems: Some("0".into()),
            memory_swap: Some(96 * MI as i64),
            hugepages: vec![("2MB".into(), 4 * MI)],
            unified: vec![],
        }
    }

    #[test]
    fn v2_pod_extras_and_unified() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree(dir.path(), CgroupMode::Unified);
        let mut extras = extras();
        extras.unified = vec![
            ("memory.high".into(), "50000000".into()),
            ("pids.max".into(), "100".into()),
        ];
        let path = tree
            .create_pod("g", &pod(1024, 100_000, 64 * MI), &extras)
            .unwrap();
        let fs = tree.fs();
        for (file, want) in [
            ("memory.max", (64 * MI).to_string()),
            ("memory.swap.max", (32 * MI).to_string()),
            ("cpuset.cpus", "0".to_string()),
            ("cpuset.mems", "0".to_string()),
            ("hugetlb.2MB.max", (4 * MI).to_string()),
            ("memory.high", "50000000".to_string()),
            // unified wins over the config's pids limit: written last.
            ("pids.max", "100".to_string()),
            ("cpu.weight", "39".to_string()),
            ("cpu.max", "100000 100000".to_string()),
        ] {
            assert_eq!(fs.read("", &path, file).unwrap(), want, "{file}");
        }
        let refused = PodExtras {
            unified: vec![("cgroup.procs".into(), "1".into())],
            ..PodExtras::default()
        };
        let err = tree
            .create_pod("bad", &pod(2, -1, 0), &refused)
            .unwrap_err();
        assert!(err.to_string().contains("cgroup.procs"), "{err}");
        assert!(
            !dir.path()
                .join("caisson-kubepods/besteffort/podbad")
                .exists(),
            "a refused pod leaves nothing"
        );
    }

    #[test]
    fn v1_pod_extras_and_unified() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree(dir.path(), CgroupMode::Hybrid);
        // A controller that is not mounted is refused, and nothing is made.
        let huge = PodExtras {
            hugepages: vec![("2MB".into(), MI)],
            ..PodExtras::default()
        };
        let err = tree.create_pod("h", &pod(512, -1, 0), &huge).unwrap_err();
        assert!(err.to_string().contains("hugetlb"), "{err}");
        assert!(!dir.path().join("hugetlb").exists());
        assert!(!dir
            .path()
            .join("cpu/caisson-kubepods/burstable/podh")
            .exists());
        std::fs::create_dir_all(dir.path().join("hugetlb")).unwrap();
        // A fake v1 root: cpuset's root holds the node's CPUs and nodes.
        std::fs::create_dir_all(dir.path().join("cpuset")).unwrap();
        std::fs::write(dir.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(dir.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        let mut extras = extras();
        extras.cpuset_cpus = Some("1".into());
        extras.unified = vec![
            ("cpu.weight".into(), "100".into()),
            ("pids.max".into(), "max".into()),
        ];
        let path = tree
            .create_pod("b", &pod(512, -1, 64 * MI), &extras)
            .unwrap();
        let fs = tree.fs();
        for (controller, file, want) in [
            ("memory", "memory.limit_in_bytes", (64 * MI).to_string()),
            (
                "memory",
                "memory.memsw.limit_in_bytes",
                (96 * MI).to_string(),
            ),
            ("pids", "pids.max", "max".to_string()),
            ("cpuset", "cpuset.cpus", "1".to_string()),
            ("cpuset", "cpuset.mems", "0".to_string()),
            (
                "hugetlb",
                "hugetlb.2MB.limit_in_bytes",
                (4 * MI).to_string(),
            ),
            ("cpu", "cpu.shares", "2597".to_string()),
        ] {
            assert_eq!(
                fs.read(controller, &path, file).unwrap(),
                want,
                "{controller}/{file}"
            );
        }
        // Each new cpuset level inherited its parent's before the pod's own.
        assert_eq!(
            fs.read("cpuset", "/caisson-kubepods/burstable", "cpuset.cpus")
                .unwrap(),
            "0-1"
        );
        // v2-only keys are refused on v1, naming the key; nothing is left.
        let refused = PodExtras {
            unified: vec![("memory.high".into(), "1".into())],
            ..PodExtras::default()
        };
        let err = tree
            .create_pod("x", &pod(512, -1, 0), &refused)
            .unwrap_err();
        assert!(
            err.to_string().contains("memory.high") && err.to_string().contains("v1"),
            "{err}"
        );
        assert!(!dir
            .path()
            .join("cpu/caisson-kubepods/burstable/podx")
            .exists());
        // Swap without a memory limit is refused.
        let swap_only = PodExtras {
            memory_swap: Some(MI as i64),
            ..PodExtras::default()
        };
        assert!(tree.create_pod("s", &pod(512, -1, 0), &swap_only).is_err());
        // The root is never removed.
        assert!(fs.remove_tree("/").is_err());
        assert!(fs.remove_one("//").is_err());
        assert!(dir.path().join("cpu/caisson-kubepods").is_dir());
        // remove_one leaves a cgroup with children alone (a fake tree says
        // ENOTEMPTY where cgroupfs says EBUSY).
        fs.create(&format!("{path}/task")).unwrap();
        let _ = fs.remove_one(&path);
        assert!(dir
            .path()
            .join("cpu")
            .join(&path[1..])
            .join("task")
            .is_dir());
        // Removal takes every hierarchy, children first.
        fs.create(&format!("{path}/task")).unwrap();
        tree.remove(&path).unwrap();
        for controller in ["cpu", "memory", "pids", "cpuset", "hugetlb"] {
            assert!(
                !dir.path().join(controller).join(&path[1..]).exists(),
                "{controller}"
            );
        }
    }

    #[test]
    fn widest_limits() {
        let a = Limits {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            memory: Some(64 * MI),
            swap: Some(32 * MI as i64),
        };
        let b = Limits {
            cpu_shares: Some(1024),
            cpu_quota: Some(20_000),
            memory: None,
            swap: Some(-1),
        };
        assert_eq!(
            a.widest(&b),
            Limits {
                cpu_shares: Some(1024),
                cpu_quota: Some(50_000),
                memory: None,
                swap: Some(-1),
            }
        );
        assert_eq!(a.widest(&a), a);
        let c = Limits { swap: None, ..a };
        assert_eq!(a.widest(&c).swap, a.swap);
    }

    #[test]
    fn a_pod_cgroup_made_in_some_hierarchies_only_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tree(dir.path(), CgroupMode::Hybrid);
        tree.ensure().unwrap();
        // The memory hierarchy refuses the pod's dir (a file is in the way):
        // the dirs already made in cpu and cpuacct must go.
        let blocker = dir.path().join("memory/caisson-kubepods/burstable/podp");
        std::fs::write(&blocker, "").unwrap();
        assert!(tree
            .create_pod("p", &pod(512, -1, 0), &PodExtras::default())
            .is_err());
        for controller in ["cpu", "cpuacct"] {
            let left = dir
                .path()
                .join(controller)
                .join("caisson-kubepods/burstable/podp");
            assert!(!left.exists(), "{} left behind", left.display());
        }
    }

    /// A fake v1 tree that, like the kernel, refuses a memory limit above
    /// `memory.memsw.limit_in_bytes` (EINVAL).
    #[derive(Debug)]
    struct StrictMemsw(CgroupRoot);

    impl CgroupFs for StrictMemsw {
        fn dir(&self, controller: &str, cgroup: &str) -> std::path::PathBuf {
            self.0.dir(controller, cgroup)
        }
        fn mode(&self) -> CgroupMode {
            self.0.mode()
        }
        fn write(
            &self,
            controller: &str,
            cgroup: &str,
            file: &str,
            value: &str,
        ) -> Result<(), CgroupError> {
            let bytes = |v: Option<String>| {
                v.and_then(|v| v.parse::<i64>().ok()).map_or(i64::MAX, |v| {
                    if v < 0 {
                        i64::MAX
                    } else {
                        v
                    }
                })
            };
            let (limit, memsw) = match file {
                "memory.limit_in_bytes" => (
                    bytes(Some(value.into())),
                    bytes(self.read(controller, cgroup, "memory.memsw.limit_in_bytes")),
                ),
                "memory.memsw.limit_in_bytes" => (
                    bytes(self.read(controller, cgroup, "memory.limit_in_bytes")),
                    bytes(Some(value.into())),
                ),
                _ => (0, 0),
            };
            if limit > memsw {
                return Err(CgroupError::WriteFailed {
                    path: self.dir(controller, cgroup).join(file),
                    value: value.into(),
                    source: std::io::Error::from_raw_os_error(22),
                });
            }
            self.0.write(controller, cgroup, file, value)
        }
    }

    #[test]
    fn v1_swap_follows_the_memory_limit_in_the_kernels_order() {
        let dir = tempfile::tempdir().unwrap();
        let tree = QosTree::new(
            StrictMemsw(CgroupRoot::at(dir.path(), CgroupMode::Hybrid)),
            "caisson-kubepods",
            NodeAllocatable::default(),
        );
        let extras = PodExtras {
            memory_swap: Some(96 * MI as i64),
            ..PodExtras::default()
        };
        let path = tree
            .create_pod("s", &pod(512, -1, 64 * MI), &extras)
            .unwrap();
        let read = |file| tree.fs().read("memory", &path, file).unwrap();
        let memsw = "memory.memsw.limit_in_bytes";
        assert_eq!(read(memsw), (96 * MI).to_string());
        let swap = Some(32 * MI as i64);
        for (memory, want_limit, want_memsw) in [
            (
                Some(128 * MI),
                (128 * MI).to_string(),
                (160 * MI).to_string(),
            ),
            (Some(16 * MI), (16 * MI).to_string(), (48 * MI).to_string()),
            (None, "-1".to_string(), "-1".to_string()),
            (Some(64 * MI), (64 * MI).to_string(), (96 * MI).to_string()),
        ] {
            let limits = Limits {
                cpu_shares: Some(512),
                cpu_quota: None,
                memory,
                swap,
            };
            tree.apply(&path, &limits)
                .unwrap_or_else(|e| panic!("{memory:?}: {e}"));
            assert_eq!(read("memory.limit_in_bytes"), want_limit, "{memory:?}");
            assert_eq!(read(memsw), want_memsw, "{memory:?}");
        }
        // A pod-level unified memory.max above the memory + swap total.
        let extras = PodExtras {
            memory_swap: Some(96 * MI as i64),
            unified: vec![("memory.max".into(), (256 * MI).to_string())],
            ..PodExtras::default()
        };
        let path = tree
            .create_pod("u", &pod(512, -1, 64 * MI), &extras)
            .unwrap();
        let read = |file| tree.fs().read("memory", &path, file).unwrap();
        assert_eq!(read("memory.limit_in_bytes"), (256 * MI).to_string());
        assert_eq!(read(memsw), (288 * MI).to_string());
    }
}
