//! kubelet's `oom_score_adj` policy (pkg/kubelet/qos/policy.go), clamped to
//! what this node lets us set.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::QosClass;

/// Guaranteed pods' score: die last.
pub const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
/// BestEffort pods' score: die first.
pub const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;

/// The score kubelet gives a container of `class` whose memory request is
/// `memory_request` bytes on a node with `memory_capacity` bytes.
/// Burstable: `1000 - 1000 * request / capacity`, within `[2, 999]`.
pub fn oom_score_adj(class: QosClass, memory_request: u64, memory_capacity: u64) -> i32 {
    match class {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            if memory_capacity == 0 {
                return 999;
            }
            let used = (1000u128 * memory_request as u128 / memory_capacity as u128) as i64;
            (1000 - used).clamp(2, 999) as i32
        }
    }
}

/// This process's own `oom_score_adj`.
pub fn own_oom_score_adj() -> Option<i32> {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// `[cgroups] restrict_oom_score_adj = true` (containerd's setting of that
/// name): no container gets a lower score than the runtime's own `own`, so a
/// runtime that runs with a raised score (or without CAP_SYS_RESOURCE) never
/// hands out one it could not set itself. Silent: the operator asked for it.
/// Without it, scores are clamped only where the kernel would refuse them
/// ([`OomPolicy::clamp`], with one warning).
pub fn restrict_to_own(wanted: i32, own: i32) -> i32 {
    wanted.clamp(-1000, 1000).max(own)
}

/// How far down a score may go on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomPolicy {
    /// The lowest score this process can set (-1000 with CAP_SYS_RESOURCE,
    /// else its own `oom_score_adj`).
    pub min_allowed: i32,
    /// Clamp scores below `min_allowed` (with one warning saying why)
    /// instead of passing them on, which would fail the container start.
    pub restrict: bool,
}

static WARNED: AtomicBool = AtomicBool::new(false);

impl OomPolicy {
    /// The score to set for a wanted one.
    pub fn clamp(&self, wanted: i32) -> i32 {
        let wanted = wanted.clamp(-1000, 1000);
        if !self.restrict || wanted >= self.min_allowed {
            return wanted;
        }
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                wanted,
                granted = self.min_allowed,
                "oom_score_adj below what this node allows (no CAP_SYS_RESOURCE); clamping (warned once)"
            );
        }
        self.min_allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    #[test]
    fn kubelet_policy() {
        use QosClass::*;
        for (class, request, capacity, want) in [
            (Guaranteed, GI, 4 * GI, -997),
            (BestEffort, 0, 4 * GI, 1000),
            (Burstable, GI, 4 * GI, 750),
            (Burstable, 0, 4 * GI, 999),
            (Burstable, 4 * GI, 4 * GI, 2),
            (Burstable, 8 * GI, 4 * GI, 2),
            (Burstable, GI / 1000, 4 * GI, 999),
            (Burstable, GI, 0, 999),
        ] {
            assert_eq!(
                oom_score_adj(class, request, capacity),
                want,
                "{class:?} {request}/{capacity}"
            );
        }
    }

    #[test]
    fn restricted_to_the_runtimes_own() {
        for (wanted, own, want) in [
            (-997, 0, 0),
            (-997, -1000, -997),
            (100, 300, 300),
            (500, 300, 500),
            (1000, 0, 1000),
            (-5000, -1000, -1000),
        ] {
            assert_eq!(restrict_to_own(wanted, own), want, "{wanted} own {own}");
        }
        assert!(own_oom_score_adj().is_some_and(|s| (-1000..=1000).contains(&s)));
    }

    #[test]
    fn clamping() {
        for (min_allowed, restrict, wanted, want) in [
            (-1000, true, -997, -997),
            (0, true, -997, 0),
            (0, false, -997, -997),
            (0, true, 1000, 1000),
            (-500, true, 5000, 1000),
            (200, true, 100, 200),
        ] {
            let policy = OomPolicy {
                min_allowed,
                restrict,
            };
            assert_eq!(policy.clamp(wanted), want, "{policy:?} {wanted}");
        }
    }
}
