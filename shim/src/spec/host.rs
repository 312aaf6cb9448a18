//! Facts about this node that change what a spec may ask for: the
//! capabilities this process can grant, the cgroup mode, swap accounting,
//! the lowest `oom_score_adj` it can set, the kernel version, the
//! architecture and whether AppArmor is enabled. Read once per process; the builders take them as an
//! argument so tests can state their own.

use std::path::Path;
use std::sync::OnceLock;

use oci_spec::runtime::Capability;

use super::capabilities;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostFacts {
    /// Capabilities in this process's bounding set: what "all" means, and
    /// the most a container can be given (root here lacks CAP_SYS_RESOURCE).
    pub all_caps: Vec<Capability>,
    /// cgroup v2 alone (unified mode): containers get a cgroup namespace.
    pub cgroup_v2: bool,
    /// The memory controller accounts swap, so a swap limit can be set.
    pub swap_accounting: bool,
    /// The lowest `oom_score_adj` this process may hand out: -1000 with
    /// CAP_SYS_RESOURCE, else its own value.
    pub min_oom_score_adj: i32,
    /// `MemTotal` in bytes: the capacity Burstable `oom_score_adj` is
    /// computed against.
    pub memory_capacity: u64,
    /// `(major, minor)` of the running kernel.
    pub kernel: (u32, u32),
    /// The architecture in Go's spelling (`amd64`, `arm64`), as seccomp
    /// profiles name them.
    pub arch: &'static str,
    /// AppArmor is enabled in the kernel
    /// (`/sys/module/apparmor/parameters/enabled` is `Y`): `Localhost`
    /// profiles can be applied.
    pub apparmor: bool,
}

/// This node's facts, read on first use.
pub(crate) fn facts() -> &'static HostFacts {
    static FACTS: OnceLock<HostFacts> = OnceLock::new();
    FACTS.get_or_init(read)
}

fn read() -> HostFacts {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status_mask(&status, "CapBnd:").unwrap_or(u64::MAX);
    let effective = status_mask(&status, "CapEff:").unwrap_or(0);
    let own_oom = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let cgroup_v2 = is_cgroup2(Path::new("/sys/fs/cgroup"));
    HostFacts {
        all_caps: capabilities::in_mask(bounding),
        cgroup_v2,
        swap_accounting: swap_accounting(cgroup_v2),
        min_oom_score_adj: if effective & (1 << capabilities::SYS_RESOURCE_BIT) != 0 {
            -1000
        } else {
            own_oom
        },
        memory_capacity: mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default()),
        kernel: kernel_version(
            &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
        ),
        arch: go_arch(std::env::consts::ARCH),
        apparmor: apparmor_enabled(
            &std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").unwrap_or_default(),
        ),
    }
}

/// `/sys/module/apparmor/parameters/enabled` says `Y` (absent: no AppArmor).
fn apparmor_enabled(parameter: &str) -> bool {
    parameter.trim() == "Y"
}

/// `MemTotal:` of `/proc/meminfo`, in bytes (0 when unreadable).
fn mem_total(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The hex mask on a `/proc/<pid>/status` line such as `CapBnd:`.
fn status_mask(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

fn swap_accounting(cgroup_v2: bool) -> bool {
    if !cgroup_v2 {
        return Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists();
    }
    // v2: look at our own cgroup (the root has no memory.swap.max).
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    Path::new("/sys/fs/cgroup")
        .join(rel)
        .join("memory.swap.max")
        .exists()
}

/// `"6.1.0-18-amd64"` → `(6, 1)`; unparsable → `(0, 0)`.
pub(crate) fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => (0, 0),
    }
}

/// Rust's architecture names in Go's spelling.
fn go_arch(arch: &str) -> &'static str {
    match arch {
        "x86_64" => "amd64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        _ => "unknown",
    }
}

#[cfg(test)]
impl HostFacts {
    /// A node like the ones Caisson runs on: x86_64, a 6.1 kernel, cgroup v1
    /// with swap accounting, root without CAP_SYS_RESOURCE.
    pub(crate) fn for_tests() -> HostFacts {
        HostFacts {
            all_caps: capabilities::in_mask(0x1ff_feff_ffff),
            cgroup_v2: false,
            swap_accounting: true,
            min_oom_score_adj: 0,
            memory_capacity: 4 << 30,
            kernel: (6, 1),
            arch: "amd64",
            apparmor: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        for (release, want) in [
            ("6.1.0-18-amd64", (6, 1)),
            ("6.18.44-fc-v595", (6, 18)),
            ("4.8", (4, 8)),
            ("5.15.0\n", (5, 15)),
            ("garbage", (0, 0)),
            ("", (0, 0)),
        ] {
            assert_eq!(kernel_version(release), want, "{release:?}");
        }
    }

    #[test]
    fn apparmor_parameter() {
        for (text, want) in [("Y\n", true), ("Y", true), ("N\n", false), ("", false)] {
            assert_eq!(apparmor_enabled(text), want, "{text:?}");
        }
    }

    #[test]
    fn status_masks() {
        let status = "Name:\tx\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";
        assert_eq!(status_mask(status, "CapBnd:"), Some(0x1fffeffffff));
        assert_eq!(status_mask(status, "CapAmb:"), None);
    }

    #[test]
    fn test_facts_lack_sys_resource() {
        let facts = HostFacts::for_tests();
        assert!(!facts.all_caps.contains(&Capability::SysResource));
        assert!(facts.all_caps.contains(&Capability::SysAdmin));
        assert!(facts.all_caps.contains(&Capability::CheckpointRestore));
    }

    #[test]
    fn this_node_reads() {
        let facts = read();
        assert!(!facts.all_caps.is_empty());
        assert_ne!(facts.kernel, (0, 0));
        assert_ne!(facts.arch, "unknown");
    }
}
