//! CPU conversions with Kubernetes' formulas (pkg/kubelet/cm/helpers_linux.go
//! and the KEP for cgroup v2 weights).

/// Smallest `cpu.shares` the kernel accepts; kubelet uses it for BestEffort.
pub const MIN_SHARES: u64 = 2;
/// Largest `cpu.shares` (v1).
pub const MAX_SHARES: u64 = 262_144;
/// `cpu.shares` of one CPU.
pub const SHARES_PER_CPU: u64 = 1024;
/// Default CFS period (µs).
pub const DEFAULT_PERIOD_US: u64 = 100_000;
/// Smallest CFS quota the kernel accepts (µs).
pub const MIN_QUOTA_US: i64 = 1000;
/// Largest CFS quota the kernel accepts (µs): `max_cfs_runtime`, 2^44 - 1.
pub const MAX_QUOTA_US: i64 = (1 << 44) - 1;
/// The CFS periods the kernel accepts (µs): 1 ms to 1 s.
pub const PERIOD_RANGE_US: std::ops::RangeInclusive<u64> = 1000..=1_000_000;

/// `cpu.shares` for a CPU request in milli-CPU (`MilliCPUToShares`).
pub fn cpu_shares_from_request(milli_cpu: u64) -> u64 {
    if milli_cpu == 0 {
        return MIN_SHARES;
    }
    (milli_cpu.saturating_mul(SHARES_PER_CPU) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// CFS quota (µs) for a CPU limit in milli-CPU over `period_us`
/// (`MilliCPUToQuota`), at most [`MAX_QUOTA_US`]; `None` means no limit.
pub fn cpu_quota_from_limit(milli_cpu: u64, period_us: u64) -> Option<i64> {
    if milli_cpu == 0 {
        return None;
    }
    let quota = u128::from(milli_cpu) * u128::from(period_us) / 1000;
    let quota = i64::try_from(quota).unwrap_or(i64::MAX);
    Some(quota.clamp(MIN_QUOTA_US, MAX_QUOTA_US))
}

/// The milli-CPU a quota/period pair stands for; `None` without a limit.
pub fn milli_cpu_from_quota(quota_us: i64, period_us: u64) -> Option<u64> {
    if quota_us <= 0 {
        return None;
    }
    let period = if period_us == 0 {
        DEFAULT_PERIOD_US
    } else {
        period_us
    };
    let milli = u128::from(quota_us as u64) * 1000 / u128::from(period);
    Some(u64::try_from(milli).unwrap_or(u64::MAX))
}

/// cgroup v2 `cpu.weight` for v1 `cpu.shares`
/// (`CpuSharesToCpuWeight`: `1 + ((shares - 2) * 9999) / 262142`).
pub fn cpu_weight_from_shares(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - 2) * 9999) / 262_142
}

/// v1 `cpu.shares` for a v2 `cpu.weight` (the inverse formula).
pub fn cpu_shares_from_weight(weight: u64) -> u64 {
    let weight = weight.clamp(1, 10_000);
    2 + ((weight - 1) * 262_142) / 9999
}

/// `cpu.max` contents for a quota/period (`"max <period>"` without a limit).
pub fn cpu_max(quota_us: Option<i64>, period_us: u64) -> String {
    match quota_us {
        Some(q) if q > 0 => format!("{q} {period_us}"),
        _ => format!("max {period_us}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_from_request() {
        for (milli, want) in [
            (0, 2),
            (1, 2),
            (100, 102),
            (250, 256),
            (500, 512),
            (1000, 1024),
            (2000, 2048),
            (1_000_000, MAX_SHARES),
            (u64::MAX, MAX_SHARES),
        ] {
            assert_eq!(cpu_shares_from_request(milli), want, "{milli}m");
        }
    }

    #[test]
    fn quota_from_limit() {
        for (milli, period, want) in [
            (0, 100_000, None),
            (5, 100_000, Some(1000)),
            (500, 100_000, Some(50_000)),
            (1000, 100_000, Some(100_000)),
            (2500, 100_000, Some(250_000)),
            (500, 50_000, Some(25_000)),
        ] {
            assert_eq!(
                cpu_quota_from_limit(milli, period),
                want,
                "{milli}m/{period}"
            );
        }
        assert_eq!(milli_cpu_from_quota(50_000, 100_000), Some(500));
        assert_eq!(milli_cpu_from_quota(50_000, 0), Some(500));
        assert_eq!(milli_cpu_from_quota(-1, 100_000), None);
        // Out-of-range figures saturate instead of overflowing.
        assert_eq!(milli_cpu_from_quota(i64::MAX, 1), Some(u64::MAX));
        assert_eq!(
            cpu_quota_from_limit(u64::MAX, 1_000_000),
            Some(MAX_QUOTA_US)
        );
    }

    #[test]
    fn shares_weight_round_trip() {
        for (shares, weight) in [(2, 1), (1024, 39), (512, 20), (102, 4), (262_144, 10_000)] {
            assert_eq!(cpu_weight_from_shares(shares), weight, "shares {shares}");
        }
        for (weight, shares) in [(1, 2), (100, 2597), (10_000, 262_144)] {
            assert_eq!(cpu_shares_from_weight(weight), shares, "weight {weight}");
        }
    }

    #[test]
    fn cpu_max_text() {
        assert_eq!(cpu_max(Some(50_000), 100_000), "50000 100000");
        assert_eq!(cpu_max(None, 100_000), "max 100000");
        assert_eq!(cpu_max(Some(-1), 100_000), "max 100000");
    }
}
