//! Resources from `LinuxContainerResources`, translated as containerd does
//! (0 means "not set"); the QoS policy that picks the numbers lives with
//! the cgroups crate, not here.

use std::collections::HashMap;

use caisson_proto::cri;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources};

use super::host::HostFacts;
use super::SpecError;

/// The pause container's `oom_score_adj` (kubelet's, as containerd sets it).
pub(crate) const SANDBOX_OOM_SCORE_ADJ: i32 = -998;
/// The pause container's CPU shares (containerd's `WithDefaultSandboxShares`).
pub(crate) const SANDBOX_CPU_SHARES: u64 = 2;

/// Raises `requested` to the lowest value this node can grant, with a
/// warning: a pod is never failed for it (root here lacks
/// CAP_SYS_RESOURCE, so negative values are out of reach).
pub(crate) fn clamp_oom_score_adj(requested: i32, host: &HostFacts) -> i32 {
    caisson_cgroups::OomPolicy {
        min_allowed: host.min_oom_score_adj,
        restrict: true,
    }
    .clamp(requested)
}

/// The `oom_score_adj` a container gets: the request's when kubelet sent one
/// (non-zero), else kubelet's policy for the container's QoS class
/// (Guaranteed -997, BestEffort 1000, Burstable from its memory limit — the
/// only memory figure the CRI carries — against the node's memory).
fn class_oom_score_adj(r: &cri::LinuxContainerResources, host: &HostFacts) -> i32 {
    if r.oom_score_adj != 0 {
        return r.oom_score_adj as i32;
    }
    let resources = qos_resources(r);
    let class = caisson_cgroups::qos::qos_class([&resources]);
    caisson_cgroups::oom::oom_score_adj(class, resources.memory_limit, host.memory_capacity)
}

/// The QoS view of CRI resources.
pub(crate) fn qos_resources(r: &cri::LinuxContainerResources) -> caisson_cgroups::Resources {
    caisson_cgroups::Resources {
        cpu_shares: r.cpu_shares.max(0) as u64,
        cpu_quota: r.cpu_quota,
        cpu_period: r.cpu_period.max(0) as u64,
        memory_limit: r.memory_limit_in_bytes.max(0) as u64,
    }
}

/// The pause container's resources: minimal CPU shares, nothing else.
pub(crate) fn sandbox_resources() -> LinuxResources {
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(SANDBOX_CPU_SHARES));
    let mut resources = super::empty_resources();
    resources.set_cpu(Some(cpu));
    resources
}

use caisson_cgroups::unified::{valid_cpu_list, valid_page_size};

/// A cgroup v2 file name: no path separators, nothing hidden.
fn valid_unified_key(key: &str) -> bool {
    !key.is_empty() && !key.contains('/') && !key.starts_with('.') && !key.contains('\0')
}

/// A container's cgroup resources and its `oom_score_adj`. `field` names
/// the request's `resources` message.
pub(crate) fn container_resources(
    r: &cri::LinuxContainerResources,
    host: &HostFacts,
    field: &str,
) -> Result<(LinuxResources, Option<i32>), SpecError> {
    let invalid =
        |name: &str, reason: String| SpecError::invalid(format!("{field}.{name}"), reason);
    if r.cpu_period < 0 {
        return Err(invalid(
            "cpu_period",
            format!("{} is negative", r.cpu_period),
        ));
    }
    if r.cpu_period != 0 && !caisson_cgroups::cpu::PERIOD_RANGE_US.contains(&(r.cpu_period as u64))
    {
        return Err(invalid(
            "cpu_period",
            format!("{} µs is outside 1000..=1000000", r.cpu_period),
        ));
    }
    if r.cpu_quota < -1 {
        return Err(invalid("cpu_quota", format!("{} is below -1", r.cpu_quota)));
    }
    if r.cpu_quota > caisson_cgroups::cpu::MAX_QUOTA_US {
        return Err(invalid(
            "cpu_quota",
            format!(
                "{} µs is above the kernel's maximum {}",
                r.cpu_quota,
                caisson_cgroups::cpu::MAX_QUOTA_US
            ),
        ));
    }
    if r.cpu_shares < 0 {
        return Err(invalid(
            "cpu_shares",
            format!("{} is negative", r.cpu_shares),
        ));
    }
    if r.memory_limit_in_bytes < 0 {
        return Err(invalid(
            "memory_limit_in_bytes",
            format!("{} is negative", r.memory_limit_in_bytes),
        ));
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return Err(invalid(
            "memory_swap_limit_in_bytes",
            format!("{} is below -1", r.memory_swap_limit_in_bytes),
        ));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(invalid(
            "oom_score_adj",
            format!("{} is outside -1000..=1000", r.oom_score_adj),
        ));
    }
    for (name, list) in [
        ("cpuset_cpus", &r.cpuset_cpus),
        ("cpuset_mems", &r.cpuset_mems),
    ] {
        if !list.is_empty() && !valid_cpu_list(list) {
            return Err(invalid(
                name,
                format!("{list:?} is not a list like \"0-3,8\""),
            ));
        }
    }

    let mut cpu = LinuxCpu::default();
    if r.cpu_period != 0 {
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if r.cpu_quota != 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_shares != 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }

    let mut memory = LinuxMemory::default();
    if r.memory_limit_in_bytes != 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
    }
    if host.swap_accounting {
        // Swap equal to the limit means no swap, unless the request gives one.
        if r.memory_swap_limit_in_bytes != 0 {
            memory.set_swap(Some(r.memory_swap_limit_in_bytes));
        } else if r.memory_limit_in_bytes != 0 {
            memory.set_swap(Some(r.memory_limit_in_bytes));
        }
    } else if r.memory_swap_limit_in_bytes != 0 {
        tracing::warn!("swap accounting is off on this node; ignoring the swap limit");
    }

    let mut hugepages = Vec::with_capacity(r.hugepage_limits.len());
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        if !valid_page_size(&h.page_size) {
            return Err(invalid(
                &format!("hugepage_limits[{i}].page_size"),
                format!("{:?} is not a size like \"2MB\"", h.page_size),
            ));
        }
        let limit = i64::try_from(h.limit).map_err(|_| {
            invalid(
                &format!("hugepage_limits[{i}].limit"),
                format!("{} is too large", h.limit),
            )
        })?;
        let mut hugepage = LinuxHugepageLimit::default();
        hugepage.set_page_size(h.page_size.clone());
        hugepage.set_limit(limit);
        hugepages.push(hugepage);
    }

    let mut keys: Vec<&String> = r.unified.keys().collect();
    keys.sort();
    if let Some(bad) = keys.iter().find(|k| !valid_unified_key(k)) {
        return Err(invalid(
            &format!("unified[{bad}]"),
            "not a cgroup file name".into(),
        ));
    }

    let mut resources = super::empty_resources();
    if cpu != LinuxCpu::default() {
        resources.set_cpu(Some(cpu));
    }
    if memory != LinuxMemory::default() {
        resources.set_memory(Some(memory));
    }
    if !hugepages.is_empty() {
        resources.set_hugepage_limits(Some(hugepages));
    }
    if !r.unified.is_empty() {
        resources.set_unified(Some(
            r.unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        ));
    }
    let oom = clamp_oom_score_adj(class_oom_score_adj(r, host), host);
    Ok((resources, Some(oom)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 256 << 20,
            oom_score_adj: 900,
            cpuset_cpus: "0-1,3".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 1 << 30,
            }],
            unified: HashMap::from([("memory.high".to_string(), "1000000".to_string())]),
            memory_swap_limit_in_bytes: 0,
        }
    }

    #[test]
    fn translates_everything() {
        let host = HostFacts::for_tests();
        let (res, oom) = container_resources(&full(), &host, "r").unwrap();
        let cpu = res.cpu().clone().unwrap();
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.quota(), Some(50_000));
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1,3"));
        assert_eq!(cpu.mems().as_deref(), Some("0"));
        let memory = res.memory().unwrap();
        assert_eq!(memory.limit(), Some(256 << 20));
        assert_eq!(memory.swap(), Some(256 << 20), "swap = limit: no swap");
        let huge = res.hugepage_limits().clone().unwrap();
        assert_eq!(
            (huge[0].page_size().as_str(), huge[0].limit()),
            ("2MB", 1 << 30)
        );
        assert_eq!(res.unified().as_ref().unwrap()["memory.high"], "1000000");
        assert_eq!(oom, Some(900));
    }

    #[test]
    fn zero_means_unset() {
        let host = HostFacts::for_tests();
        let (res, oom) = container_resources(&Default::default(), &host, "r").unwrap();
        assert!(res.cpu().is_none());
        assert!(res.memory().is_none());
        assert!(res.hugepage_limits().is_none());
        assert!(res.unified().is_none());
        assert_eq!(oom, Some(1000), "no resources: BestEffort");
    }

    #[test]
    fn oom_score_adj_by_class() {
        let host = HostFacts::for_tests(); // 4 GiB, floor 0
        let r = |cpu_shares, cpu_quota, memory_limit_in_bytes, oom_score_adj| {
            cri::LinuxContainerResources {
                cpu_shares,
                cpu_quota,
                cpu_period: 100_000,
                memory_limit_in_bytes,
                oom_score_adj,
                ..Default::default()
            }
        };
        for (name, resources, want) in [
            ("best effort", r(2, 0, 0, 0), 1000),
            ("burstable 1 GiB", r(512, 0, 1 << 30, 0), 750),
            ("burstable, no memory", r(512, 0, 0, 0), 999),
            (
                "guaranteed, clamped to the floor",
                r(1024, 100_000, 1 << 30, 0),
                0,
            ),
            ("kubelet's value wins", r(2, 0, 0, 500), 500),
        ] {
            let (_, oom) = container_resources(&resources, &host, "r").unwrap();
            assert_eq!(oom, Some(want), "{name}");
        }
        let privileged = HostFacts {
            min_oom_score_adj: -1000,
            ..HostFacts::for_tests()
        };
        let (_, oom) =
            container_resources(&r(1024, 100_000, 1 << 30, 0), &privileged, "r").unwrap();
        assert_eq!(oom, Some(-997));
    }

    #[test]
    fn cpu_figures_out_of_the_kernels_range_are_refused() {
        let host = HostFacts::for_tests();
        for (name, r) in [
            (
                "r.cpu_quota",
                cri::LinuxContainerResources {
                    cpu_quota: i64::MAX,
                    ..Default::default()
                },
            ),
            (
                "r.cpu_period",
                cri::LinuxContainerResources {
                    cpu_period: 999,
                    ..Default::default()
                },
            ),
            (
                "r.cpu_period",
                cri::LinuxContainerResources {
                    cpu_period: 1_000_001,
                    ..Default::default()
                },
            ),
        ] {
            match container_resources(&r, &host, "r") {
                Err(SpecError::InvalidArgument { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        let max = cri::LinuxContainerResources {
            cpu_quota: caisson_cgroups::cpu::MAX_QUOTA_US,
            cpu_period: 1_000_000,
            ..Default::default()
        };
        container_resources(&max, &host, "r").unwrap();
    }

    #[test]
    fn swap_rules() {
        let explicit = cri::LinuxContainerResources {
            memory_limit_in_bytes: 100,
            memory_swap_limit_in_bytes: 300,
            ..Default::default()
        };
        let host = HostFacts::for_tests();
        let (res, _) = container_resources(&explicit, &host, "r").unwrap();
        assert_eq!(res.memory().unwrap().swap(), Some(300));
        let no_swap = HostFacts {
            swap_accounting: false,
            ..HostFacts::for_tests()
        };
        let (res, _) = container_resources(&explicit, &no_swap, "r").unwrap();
        assert_eq!(res.memory().unwrap().swap(), None);
        assert_eq!(res.memory().unwrap().limit(), Some(100));
    }

    #[test]
    fn oom_score_adj_is_clamped() {
        let host = HostFacts::for_tests();
        let guaranteed = cri::LinuxContainerResources {
            oom_score_adj: -997,
            ..Default::default()
        };
        assert_eq!(
            container_resources(&guaranteed, &host, "r").unwrap().1,
            Some(0)
        );
        let capable = HostFacts {
            min_oom_score_adj: -1000,
            ..HostFacts::for_tests()
        };
        assert_eq!(
            container_resources(&guaranteed, &capable, "r").unwrap().1,
            Some(-997)
        );
        assert_eq!(clamp_oom_score_adj(SANDBOX_OOM_SCORE_ADJ, &host), 0);
    }

    #[test]
    fn invalid_table() {
        let host = HostFacts::for_tests();
        let cases: Vec<(cri::LinuxContainerResources, &str)> = vec![
            (
                cri::LinuxContainerResources {
                    cpu_period: -1,
                    ..full()
                },
                "r.cpu_period",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_quota: -2,
                    ..full()
                },
                "r.cpu_quota",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_shares: -5,
                    ..full()
                },
                "r.cpu_shares",
            ),
            (
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: -1,
                    ..full()
                },
                "r.memory_limit_in_bytes",
            ),
            (
                cri::LinuxContainerResources {
                    memory_swap_limit_in_bytes: -2,
                    ..full()
                },
                "r.memory_swap_limit_in_bytes",
            ),
            (
                cri::LinuxContainerResources {
                    oom_score_adj: 1001,
                    ..full()
                },
                "r.oom_score_adj",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_cpus: "0-".into(),
                    ..full()
                },
                "r.cpuset_cpus",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_mems: "a".into(),
                    ..full()
                },
                "r.cpuset_mems",
            ),
            (
                // The kernel names no hugetlb files in TB: unified's rule.
                cri::LinuxContainerResources {
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "1TB".into(),
                        limit: 1,
                    }],
                    ..full()
                },
                "r.hugepage_limits[0].page_size",
            ),
            (
                cri::LinuxContainerResources {
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "2M".into(),
                        limit: 1,
                    }],
                    ..full()
                },
                "r.hugepage_limits[0].page_size",
            ),
            (
                cri::LinuxContainerResources {
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "1GB".into(),
                        limit: u64::MAX,
                    }],
                    ..full()
                },
                "r.hugepage_limits[0].limit",
            ),
            (
                cri::LinuxContainerResources {
                    unified: HashMap::from([("../../release_agent".to_string(), "x".to_string())]),
                    ..full()
                },
                "r.unified[../../release_agent]",
            ),
        ];
        for (r, field) in cases {
            let err = container_resources(&r, &host, "r").unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
        for ok in ["0", "0-3", "0,2,4-7"] {
            assert!(valid_cpu_list(ok), "{ok}");
        }
    }

    #[test]
    fn sandbox_gets_minimal_shares() {
        let res = sandbox_resources();
        assert_eq!(
            res.cpu().as_ref().unwrap().shares(),
            Some(SANDBOX_CPU_SHARES)
        );
        assert!(res.memory().is_none());
    }
}
