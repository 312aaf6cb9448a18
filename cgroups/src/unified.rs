//! The CRI's `unified` map (cgroup v2 file name → value): which keys are
//! accepted, and what they mean on a cgroup v1 node.
//!
//! Keys are checked against an allow-list of v2 interface files a container
//! or pod may set (no `cgroup.*` files, no node-level knobs such as
//! `cpuset.cpus.partition`). On v2 the files are written as given; on v1 a
//! key is translated to its v1 equivalent ([`Setting`]) or refused.

use crate::cpu;

/// Writable v2 files a container or pod may set.
const ALLOWED: &[&str] = &[
    "cpu.weight",
    "cpu.weight.nice",
    "cpu.max",
    "cpu.max.burst",
    "cpu.idle",
    "cpu.uclamp.min",
    "cpu.uclamp.max",
    "cpuset.cpus",
    "cpuset.mems",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "memory.swap.high",
    "memory.swap.max",
    "memory.zswap.max",
    "memory.oom.group",
    "io.weight",
    "io.bfq.weight",
    "io.max",
    "io.latency",
    "pids.max",
];

/// Why a `unified` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnifiedError {
    #[error("{key:?} is not a cgroup v2 file containers may set (allowed: {allowed}, hugetlb.<size>.max, hugetlb.<size>.rsvd.max)", allowed = ALLOWED.join(", "))]
    NotAllowed { key: String },
    #[error("{key:?} has no cgroup v1 equivalent and this node runs cgroup v1")]
    NoV1Equivalent { key: String },
    #[error("{key:?}: {value:?} is not valid: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: &'static str,
    },
}

impl UnifiedError {
    /// The key the error is about.
    pub fn key(&self) -> &str {
        match self {
            UnifiedError::NotAllowed { key }
            | UnifiedError::NoV1Equivalent { key }
            | UnifiedError::BadValue { key, .. } => key,
        }
    }
}

/// `hugetlb.<size>.max` / `hugetlb.<size>.rsvd.max` → the page size and
/// whether it is the reservation limit.
fn hugetlb_key(key: &str) -> Option<(&str, bool)> {
    let rest = key.strip_prefix("hugetlb.")?;
    let (size, rsvd) = match rest.strip_suffix(".rsvd.max") {
        Some(size) => (size, true),
        None => (rest.strip_suffix(".max")?, false),
    };
    valid_page_size(size).then_some((size, rsvd))
}

/// A hugetlb page size as the kernel names its files (`"64KB"`, `"2MB"`,
/// `"1GB"`): digits and KB, MB or GB.
pub fn valid_page_size(size: &str) -> bool {
    let Some(digits) = size
        .strip_suffix("KB")
        .or_else(|| size.strip_suffix("MB"))
        .or_else(|| size.strip_suffix("GB"))
    else {
        return false;
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Checks one entry against the allow-list.
pub fn check(key: &str, value: &str) -> Result<(), UnifiedError> {
    if !(ALLOWED.contains(&key) || hugetlb_key(key).is_some()) {
        return Err(UnifiedError::NotAllowed { key: key.into() });
    }
    if value.trim().is_empty() || value.contains('\0') {
        return Err(UnifiedError::BadValue {
            key: key.into(),
            value: value.into(),
            reason: "empty or contains NUL",
        });
    }
    Ok(())
}

/// Checks every entry; the first refused key (in key order) is reported.
pub fn check_all<'a>(
    entries: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), UnifiedError> {
    let mut all: Vec<(&String, &String)> = entries.into_iter().collect();
    all.sort();
    all.into_iter().try_for_each(|(k, v)| check(k, v))
}

/// What a `unified` key means on cgroup v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// `cpu.shares` (from `cpu.weight`, Kubernetes' conversion).
    CpuShares(u64),
    /// CFS quota (µs, -1 = unlimited) and period (from `cpu.max`).
    CpuQuota {
        quota: i64,
        period: Option<u64>,
    },
    /// `memory.limit_in_bytes` (-1 = unlimited).
    MemoryLimit(i64),
    /// Swap on top of the memory limit (-1 = unlimited): v1's
    /// `memory.memsw.limit_in_bytes` is limit + swap.
    Swap(i64),
    /// `pids.max` (-1 = unlimited).
    Pids(i64),
    CpusetCpus(String),
    CpusetMems(String),
    /// `hugetlb.<page_size>.limit_in_bytes`.
    Hugetlb {
        page_size: String,
        limit: u64,
    },
}

fn bad(key: &str, value: &str, reason: &'static str) -> UnifiedError {
    UnifiedError::BadValue {
        key: key.into(),
        value: value.into(),
        reason,
    }
}

/// `max` → -1, else a non-negative integer.
fn max_or_number(key: &str, value: &str) -> Result<i64, UnifiedError> {
    let v = value.trim();
    if v == "max" {
        return Ok(-1);
    }
    v.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| bad(key, value, "must be \"max\" or a non-negative integer"))
}

/// `"0-3,8"`-style lists.
pub fn valid_cpu_list(list: &str) -> bool {
    !list.is_empty()
        && list.split(',').all(|range| {
            let mut ends = range.splitn(2, '-');
            let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            ok(ends.next().unwrap_or("")) && ends.next().is_none_or(ok)
        })
}

/// The v1 equivalent of an allowed entry (checked with [`check`] first).
pub fn to_v1(key: &str, value: &str) -> Result<Setting, UnifiedError> {
    check(key, value)?;
    let v = value.trim();
    if let Some((page_size, rsvd)) = hugetlb_key(key) {
        if rsvd {
            return Err(UnifiedError::NoV1Equivalent { key: key.into() });
        }
        let limit = max_or_number(key, value)?;
        return Ok(Setting::Hugetlb {
            page_size: page_size.into(),
            limit: if limit < 0 { u64::MAX } else { limit as u64 },
        });
    }
    Ok(match key {
        "cpu.weight" => {
            let w: u64 = v
                .parse()
                .ok()
                .filter(|w| (1..=10_000).contains(w))
                .ok_or_else(|| bad(key, value, "must be an integer in 1..=10000"))?;
            Setting::CpuShares(cpu::cpu_shares_from_weight(w))
        }
        "cpu.max" => {
            let mut parts = v.split_whitespace();
            let quota = max_or_number(key, parts.next().unwrap_or(""))?;
            let period = match parts.next() {
                None => None,
                Some(p) => Some(
                    p.parse::<u64>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad(key, value, "period must be a positive integer"))?,
                ),
            };
            if parts.next().is_some() {
                return Err(bad(key, value, "must be \"<quota|max> [period]\""));
            }
            if quota > cpu::MAX_QUOTA_US {
                return Err(bad(key, value, "quota is above the kernel's 2^44-1 µs"));
            }
            if period.is_some_and(|p| !cpu::PERIOD_RANGE_US.contains(&p)) {
                return Err(bad(key, value, "period must be in 1000..=1000000 µs"));
            }
            Setting::CpuQuota { quota, period }
        }
        "memory.max" => Setting::MemoryLimit(max_or_number(key, value)?),
        "memory.swap.max" => Setting::Swap(max_or_number(key, value)?),
        "pids.max" => Setting::Pids(max_or_number(key, value)?),
        "cpuset.cpus" | "cpuset.mems" => {
            if !valid_cpu_list(v) {
                return Err(bad(key, value, "must be a list like \"0-3,8\""));
            }
            if key == "cpuset.cpus" {
                Setting::CpusetCpus(v.into())
            } else {
                Setting::CpusetMems(v.into())
            }
        }
        _ => return Err(UnifiedError::NoV1Equivalent { key: key.into() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        for (key, value, ok) in [
            ("memory.high", "1000000", true),
            ("cpu.weight", "100", true),
            ("hugetlb.2MB.max", "max", true),
            ("hugetlb.1GB.rsvd.max", "0", true),
            ("io.max", "8:0 rbps=1048576", true),
            ("cgroup.procs", "1", false),
            ("cgroup.subtree_control", "+cpu", false),
            ("cpuset.cpus.partition", "root", false),
            ("../../release_agent", "x", false),
            ("memory.bogus", "1", false),
            ("hugetlb.2M.max", "1", false),
            ("hugetlb..max", "1", false),
            ("memory.max", "", false),
            ("memory.max", "1\0", false),
        ] {
            assert_eq!(check(key, value).is_ok(), ok, "{key}={value:?}");
        }
        let err = check("memory.bogus", "1").unwrap_err();
        assert_eq!(err.key(), "memory.bogus");
        assert!(err.to_string().contains("memory.bogus"), "{err}");
        let map: std::collections::BTreeMap<String, String> = [
            ("memory.high".to_string(), "1".to_string()),
            ("zzz".to_string(), "1".to_string()),
            ("aaa".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(check_all(&map).unwrap_err().key(), "aaa");
    }

    #[test]
    fn v1_equivalents() {
        use Setting::*;
        for (key, value, want) in [
            ("cpu.weight", "39", Some(CpuShares(998))),
            ("cpu.weight", "1", Some(CpuShares(2))),
            (
                "cpu.max",
                "50000 100000",
                Some(CpuQuota {
                    quota: 50_000,
                    period: Some(100_000),
                }),
            ),
            (
                "cpu.max",
                "max",
                Some(CpuQuota {
                    quota: -1,
                    period: None,
                }),
            ),
            ("memory.max", "67108864", Some(MemoryLimit(64 << 20))),
            ("memory.max", "max", Some(MemoryLimit(-1))),
            ("memory.swap.max", "0", Some(Swap(0))),
            ("pids.max", "64", Some(Pids(64))),
            ("pids.max", "max", Some(Pids(-1))),
            ("cpuset.cpus", "0-1", Some(CpusetCpus("0-1".into()))),
            ("cpuset.mems", "0", Some(CpusetMems("0".into()))),
            (
                "hugetlb.2MB.max",
                "4194304",
                Some(Hugetlb {
                    page_size: "2MB".into(),
                    limit: 4 << 20,
                }),
            ),
            ("memory.high", "1000", None),
            ("memory.low", "1000", None),
            ("io.weight", "100", None),
            ("hugetlb.2MB.rsvd.max", "1", None),
            ("cpu.weight", "0", None),
            ("cpu.max", "x 100000", None),
            ("cpu.max", "1000 0", None),
            ("cpu.max", "1000 999", None),
            ("cpu.max", "9223372036854775807 100000", None),
            ("hugetlb.2TB.max", "1", None),
            ("pids.max", "-5", None),
            ("cpuset.cpus", "0-", None),
        ] {
            assert_eq!(to_v1(key, value).ok(), want, "{key}={value:?}");
        }
        assert!(matches!(
            to_v1("memory.high", "1"),
            Err(UnifiedError::NoV1Equivalent { .. })
        ));
        assert!(matches!(
            to_v1("pids.max", "x"),
            Err(UnifiedError::BadValue { .. })
        ));
    }
}
