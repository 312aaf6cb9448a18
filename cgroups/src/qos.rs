//! Kubernetes QoS classes from what the CRI carries.
//!
//! The CRI does not carry requests and limits, only their cgroup translation,
//! so the class is read back from it (kubelet sends `cpu_shares` for the
//! request — 2 when there is none —, `cpu_quota`/`cpu_period` for the CPU
//! limit and `memory_limit_in_bytes` for the memory limit; a memory request
//! is not sent and is taken to equal the limit, its default):
//!
//! | class | every container has |
//! |---|---|
//! | BestEffort | no CPU request (`cpu_shares` ≤ 2), no CPU limit, no memory limit |
//! | Guaranteed | a CPU limit, a memory limit, and a CPU request equal to the limit (or none, which defaults to it) |
//! | Burstable | anything else |
//!
//! Pod-level figures (`LinuxPodSandboxConfig.resources`) are classified the
//! same way; the pod's overhead never changes its class.

use crate::cpu;

/// A Kubernetes QoS class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The tier directory name (`None` for Guaranteed, which sits at the top).
    pub fn tier(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }

    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// One container's (or a pod's) resources as the CRI carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `cpu.shares` (0 = unset).
    pub cpu_shares: u64,
    /// CFS quota in µs (≤ 0 = unlimited).
    pub cpu_quota: i64,
    /// CFS period in µs (0 = default).
    pub cpu_period: u64,
    /// Memory limit in bytes (0 = unlimited).
    pub memory_limit: u64,
}

impl Resources {
    fn has_request(&self) -> bool {
        self.cpu_shares > cpu::MIN_SHARES
    }

    fn cpu_limit_milli(&self) -> Option<u64> {
        cpu::milli_cpu_from_quota(self.cpu_quota, self.cpu_period)
    }

    fn is_best_effort(&self) -> bool {
        !self.has_request() && self.cpu_limit_milli().is_none() && self.memory_limit == 0
    }

    fn is_guaranteed(&self) -> bool {
        let Some(limit) = self.cpu_limit_milli() else {
            return false;
        };
        if self.memory_limit == 0 {
            return false;
        }
        // An unset request defaults to the limit; a set one must match it
        // (compared in shares, where kubelet's rounding happened).
        self.cpu_shares == 0 || self.cpu_shares == cpu::cpu_shares_from_request(limit)
    }
}

impl Resources {
    /// The shares a container counts for in its pod's sum: its request, or
    /// its limit when it has no request (the request defaults to it).
    fn shares_in_pod(&self) -> u64 {
        match (self.cpu_shares, self.cpu_limit_milli()) {
            (0, Some(limit)) => cpu::cpu_shares_from_request(limit),
            (shares, _) => shares,
        }
    }

    /// A pod's figures (the sums kubelet sent) after one of its containers
    /// changed from `old` to `new`: shares move by the difference; a CPU or
    /// memory limit moves by the difference when the container had one
    /// before and has one after, and otherwise stays as it is (a pod-level
    /// limit is kubelet's, not a sum that one container can drop).
    pub fn with_container_changed(&self, old: &Resources, new: &Resources) -> Resources {
        let shares = self
            .cpu_shares
            .saturating_add(new.shares_in_pod())
            .saturating_sub(old.shares_in_pod());
        let quota = match (
            self.cpu_limit_milli(),
            old.cpu_limit_milli(),
            new.cpu_limit_milli(),
        ) {
            (Some(pod), Some(o), Some(n)) => {
                let milli = pod.saturating_sub(o).saturating_add(n);
                cpu::cpu_quota_from_limit(milli, cpu::DEFAULT_PERIOD_US).unwrap_or(-1)
            }
            (Some(pod), _, _) => {
                cpu::cpu_quota_from_limit(pod, cpu::DEFAULT_PERIOD_US).unwrap_or(-1)
            }
            (None, _, _) => -1,
        };
        let memory = if self.memory_limit != 0 && old.memory_limit != 0 && new.memory_limit != 0 {
            self.memory_limit
                .saturating_sub(old.memory_limit)
                .saturating_add(new.memory_limit)
        } else {
            self.memory_limit
        };
        Resources {
            cpu_shares: shares,
            cpu_quota: quota,
            cpu_period: cpu::DEFAULT_PERIOD_US,
            memory_limit: memory,
        }
    }
}

/// The class of a set of containers (a pod's containers, or one pod-level
/// figure).
pub fn qos_class<'a>(containers: impl IntoIterator<Item = &'a Resources>) -> QosClass {
    let all: Vec<&Resources> = containers.into_iter().collect();
    if all.iter().all(|r| r.is_best_effort()) {
        QosClass::BestEffort
    } else if all.iter().all(|r| r.is_guaranteed()) {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// What a pod's cgroup is sized from: its resources and its overhead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodResources {
    /// The pod-level resources (the sums of its containers' as kubelet sends
    /// them), or the sums Caisson computed.
    pub resources: Resources,
    /// `LinuxPodSandboxConfig.overhead` (RuntimeClass overhead).
    pub overhead: Resources,
}

impl PodResources {
    /// Sums containers' resources: shares add up, quotas add up only when
    /// every container has one (otherwise the pod is unlimited), likewise
    /// memory limits.
    pub fn from_containers<'a>(containers: impl IntoIterator<Item = &'a Resources>) -> Resources {
        let mut sum = Resources {
            cpu_period: cpu::DEFAULT_PERIOD_US,
            ..Resources::default()
        };
        let mut all_quota = true;
        let mut all_memory = true;
        let mut milli_limit = 0u64;
        for r in containers {
            sum.cpu_shares = sum.cpu_shares.saturating_add(r.shares_in_pod());
            match r.cpu_limit_milli() {
                Some(m) => milli_limit = milli_limit.saturating_add(m),
                None => all_quota = false,
            }
            if r.memory_limit == 0 {
                all_memory = false;
            } else {
                sum.memory_limit = sum.memory_limit.saturating_add(r.memory_limit);
            }
        }
        sum.cpu_quota = if all_quota && milli_limit > 0 {
            cpu::cpu_quota_from_limit(milli_limit, cpu::DEFAULT_PERIOD_US).unwrap_or(-1)
        } else {
            -1
        };
        if !all_memory {
            sum.memory_limit = 0;
        }
        sum
    }

    /// The pod's class (overhead does not count).
    pub fn class(&self) -> QosClass {
        qos_class([&self.resources])
    }

    /// `cpu.shares` of the pod cgroup: request plus overhead, at least 2.
    pub fn cpu_shares(&self) -> u64 {
        (self
            .resources
            .cpu_shares
            .saturating_add(self.overhead.cpu_shares))
        .clamp(cpu::MIN_SHARES, cpu::MAX_SHARES)
    }

    /// CFS quota of the pod cgroup (µs over [`cpu::DEFAULT_PERIOD_US`]):
    /// limit plus overhead, `None` when unlimited.
    pub fn cpu_quota(&self) -> Option<i64> {
        let limit = self.resources.cpu_limit_milli()?;
        let overhead = self.overhead.cpu_limit_milli().unwrap_or(0);
        cpu::cpu_quota_from_limit(limit.saturating_add(overhead), cpu::DEFAULT_PERIOD_US)
    }

    /// Memory limit of the pod cgroup: limit plus overhead, `None` when
    /// unlimited.
    pub fn memory_limit(&self) -> Option<u64> {
        if self.resources.memory_limit == 0 {
            return None;
        }
        Some(
            self.resources
                .memory_limit
                .saturating_add(self.overhead.memory_limit),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cpu_shares: u64, cpu_quota: i64, memory_limit: u64) -> Resources {
        Resources {
            cpu_shares,
            cpu_quota,
            cpu_period: 100_000,
            memory_limit,
        }
    }

    const MI: u64 = 1 << 20;

    #[test]
    fn classes() {
        use QosClass::*;
        let cases: Vec<(&str, Vec<Resources>, QosClass)> = vec![
            ("nothing", vec![Resources::default()], BestEffort),
            ("kubelet's 2 shares", vec![r(2, -1, 0)], BestEffort),
            ("request only", vec![r(512, -1, 0)], Burstable),
            ("memory limit only", vec![r(2, -1, 64 * MI)], Burstable),
            ("cpu limit only", vec![r(1024, 100_000, 0)], Burstable),
            (
                "request below limit",
                vec![r(512, 100_000, 64 * MI)],
                Burstable,
            ),
            (
                "request = limit",
                vec![r(1024, 100_000, 64 * MI)],
                Guaranteed,
            ),
            ("250m = 250m", vec![r(256, 25_000, 64 * MI)], Guaranteed),
            (
                "limits, no request",
                vec![r(0, 50_000, 64 * MI)],
                Guaranteed,
            ),
            (
                "two guaranteed",
                vec![r(1024, 100_000, 64 * MI), r(512, 50_000, MI)],
                Guaranteed,
            ),
            (
                "guaranteed + besteffort",
                vec![r(1024, 100_000, 64 * MI), r(2, -1, 0)],
                Burstable,
            ),
            ("two besteffort", vec![r(0, 0, 0), r(2, -1, 0)], BestEffort),
        ];
        for (name, containers, want) in cases {
            assert_eq!(qos_class(&containers), want, "{name}");
        }
    }

    #[test]
    fn pod_sums() {
        let sum = PodResources::from_containers(&[r(1024, 100_000, 64 * MI), r(512, 50_000, MI)]);
        assert_eq!(sum.cpu_shares, 1536);
        assert_eq!(sum.cpu_quota, 150_000);
        assert_eq!(sum.memory_limit, 65 * MI);
        let sum = PodResources::from_containers(&[r(1024, 100_000, 64 * MI), r(2, -1, 0)]);
        assert_eq!(sum.cpu_shares, 1026);
        assert_eq!(sum.cpu_quota, -1);
        assert_eq!(sum.memory_limit, 0);
        let sum = PodResources::from_containers(&[r(0, 50_000, MI)]);
        assert_eq!(sum.cpu_shares, 512);
    }

    #[test]
    fn pod_figures_follow_a_container_change() {
        let pod = r(1536, 150_000, 65 * MI);
        for (name, old, new, want) in [
            (
                "grow",
                r(1024, 100_000, 64 * MI),
                r(2048, 200_000, 128 * MI),
                r(2560, 250_000, 129 * MI),
            ),
            (
                "shrink",
                r(1024, 100_000, 64 * MI),
                r(512, 50_000, 32 * MI),
                r(1024, 100_000, 33 * MI),
            ),
            (
                "the container's limits dropped: the pod's stay",
                r(1024, 100_000, 64 * MI),
                r(1024, -1, 0),
                r(1536, 150_000, 65 * MI),
            ),
            (
                "the container gains limits: the pod's stay",
                r(1024, -1, 0),
                r(1024, 100_000, 64 * MI),
                r(1536, 150_000, 65 * MI),
            ),
            (
                "no request: the limit counts",
                r(0, 100_000, 64 * MI),
                r(0, 50_000, 64 * MI),
                r(1024, 100_000, 65 * MI),
            ),
        ] {
            assert_eq!(pod.with_container_changed(&old, &new), want, "{name}");
        }
        // An unlimited pod stays unlimited.
        let unlimited = r(512, -1, 0);
        let got = unlimited.with_container_changed(&r(512, -1, 0), &r(256, 50_000, MI));
        assert_eq!(got, r(256, -1, 0));
    }

    #[test]
    fn huge_figures_saturate() {
        let huge = r(u64::MAX, i64::MAX, u64::MAX);
        let sum = PodResources::from_containers(&[huge.clone(), huge.clone()]);
        assert_eq!(sum.cpu_quota, cpu::MAX_QUOTA_US);
        assert_eq!(sum.memory_limit, u64::MAX);
        let pod = PodResources {
            resources: sum.clone(),
            overhead: huge.clone(),
        };
        assert_eq!(pod.cpu_quota(), Some(cpu::MAX_QUOTA_US));
        assert_eq!(pod.memory_limit(), Some(u64::MAX));
        assert_eq!(pod.cpu_shares(), cpu::MAX_SHARES);
        let _ = pod.class();
        let changed = sum.with_container_changed(&r(1024, 100_000, MI), &huge);
        assert_eq!(changed.cpu_quota, cpu::MAX_QUOTA_US);
    }

    #[test]
    fn pod_sizing_with_overhead() {
        let pod = PodResources {
            resources: r(1024, 100_000, 64 * MI),
            overhead: r(256, 25_000, 16 * MI),
        };
        assert_eq!(pod.class(), QosClass::Guaranteed);
        assert_eq!(pod.cpu_shares(), 1280);
        assert_eq!(pod.cpu_quota(), Some(125_000));
        assert_eq!(pod.memory_limit(), Some(80 * MI));
        let pod = PodResources::default();
        assert_eq!(pod.class(), QosClass::BestEffort);
        assert_eq!(pod.cpu_shares(), 2);
        assert_eq!(pod.cpu_quota(), None);
        assert_eq!(pod.memory_limit(), None);
    }
}
