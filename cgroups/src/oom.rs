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

/// How far down a score may go on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomPolicy {
    /// The lowest score this process can set (-1000 with CAP_SYS_RESOURCE,
    /// else its own `oom_score_adj`).
    pub min_allowed: i32,
    /// Like containerd's `restrict_oom_score_adj`: clamp scores below
    /// `min_allowed` (with one warning) instead of passing them on, which
    /// would fail the container start.
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
