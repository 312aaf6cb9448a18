//! Capabilities: containerd's default set, CRI add/drop (with `ALL`),
//! ambient additions, privileged.
//!
//! Order follows containerd: add `ALL`, then drop `ALL`, then the named
//! additions, then the named drops. So `drop: [ALL], add: [NET_ADMIN]` is
//! just NET_ADMIN, and `add: [ALL], drop: [CHOWN]` is everything but CHOWN.
//! Names are accepted with or without `CAP_`, in any case. Inheritable holds
//! only what is ambient (containerd stopped filling it after
//! CVE-2022-24769).

use std::collections::BTreeSet;
use std::str::FromStr;

use caisson_proto::cri;
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::host::HostFacts;
use super::SpecError;

/// Every capability oci-spec knows, by bit number.
const BY_BIT: [(u32, Capability); 41] = [
    (0, Capability::Chown),
    (1, Capability::DacOverride),
    (2, Capability::DacReadSearch),
    (3, Capability::Fowner),
    (4, Capability::Fsetid),
    (5, Capability::Kill),
    (6, Capability::Setgid),
    (7, Capability::Setuid),
    (8, Capability::Setpcap),
    (9, Capability::LinuxImmutable),
    (10, Capability::NetBindService),
    (11, Capability::NetBroadcast),
    (12, Capability::NetAdmin),
    (13, Capability::NetRaw),
    (14, Capability::IpcLock),
    (15, Capability::IpcOwner),
    (16, Capability::SysModule),
    (17, Capability::SysRawio),
    (18, Capability::SysChroot),
    (19, Capability::SysPtrace),
    (20, Capability::SysPacct),
    (21, Capability::SysAdmin),
    (22, Capability::SysBoot),
    (23, Capability::SysNice),
    (24, Capability::SysResource),
    (25, Capability::SysTime),
    (26, Capability::SysTtyConfig),
    (27, Capability::Mknod),
    (28, Capability::Lease),
    (29, Capability::AuditWrite),
    (30, Capability::AuditControl),
    (31, Capability::Setfcap),
    (32, Capability::MacOverride),
    (33, Capability::MacAdmin),
    (34, Capability::Syslog),
    (35, Capability::WakeAlarm),
    (36, Capability::BlockSuspend),
    (37, Capability::AuditRead),
    (38, Capability::Perfmon),
    (39, Capability::Bpf),
    (40, Capability::CheckpointRestore),
];

pub(crate) const SYS_RESOURCE_BIT: u32 = 24;

/// containerd's (and Docker's) default set for containers.
pub(crate) use caisson_sandbox::backend::defaults::RUNTIME_DEFAULT_CAPS as DEFAULT_CAPS;

/// The capabilities whose bits are set in `mask` (a `CapBnd:` value).
pub(crate) fn in_mask(mask: u64) -> Vec<Capability> {
    BY_BIT
        .iter()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, cap)| *cap)
        .collect()
}

fn bit(cap: Capability) -> u32 {
    BY_BIT
        .iter()
        .find(|(_, c)| *c == cap)
        .map(|(b, _)| *b)
        .expect("every Capability has a bit")
}

/// Whether `bits` holds the capability named `name` (`CAP_SYS_ADMIN` or
/// `SYS_ADMIN`); unknown names are never held.
pub(crate) fn holds_named(bits: &BTreeSet<u32>, name: &str) -> bool {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).is_ok_and(|cap| bits.contains(&bit(cap)))
}

/// The sets a process starts with, as capability bit numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CapSets {
    /// Bounding = effective = permitted.
    pub bounding: BTreeSet<u32>,
    /// Ambient (and so also inheritable).
    pub ambient: BTreeSet<u32>,
}

impl CapSets {
    pub(crate) fn none() -> CapSets {
        CapSets::default()
    }

    /// Everything this node can grant (privileged containers).
    pub(crate) fn all(host: &HostFacts) -> CapSets {
        CapSets {
            bounding: host.all_caps.iter().map(|c| bit(*c)).collect(),
            ambient: BTreeSet::new(),
        }
    }
}

/// Parses `"net_admin"`, `"CAP_NET_ADMIN"`: `Ok(None)` for `ALL`.
fn parse(name: &str, field: &str) -> Result<Option<Capability>, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare)
        .map(Some)
        .map_err(|_| SpecError::invalid(field, format!("unknown capability {name:?}")))
}

/// The sets for a non-privileged container from its CRI request.
pub(crate) fn from_request(
    request: Option<&cri::Capability>,
    host: &HostFacts,
    sc_field: &str,
) -> Result<CapSets, SpecError> {
    let mut set: BTreeSet<u32> = DEFAULT_CAPS.iter().map(|c| bit(*c)).collect();
    let mut ambient = BTreeSet::new();
    let Some(request) = request else {
        return Ok(restrict(
            CapSets {
                bounding: set,
                ambient,
            },
            host,
        ));
    };
    let all: BTreeSet<u32> = host.all_caps.iter().map(|c| bit(*c)).collect();

    let parse_list = |names: &[String], list: &str| -> Result<Vec<Option<Capability>>, SpecError> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| parse(n, &format!("{sc_field}.capabilities.{list}[{i}]")))
            .collect()
    };
    let add = parse_list(&request.add_capabilities, "add_capabilities")?;
    let drop = parse_list(&request.drop_capabilities, "drop_capabilities")?;
    let add_ambient = parse_list(
        &request.add_ambient_capabilities,
        "add_ambient_capabilities",
    )?;

    if add.iter().any(Option::is_none) {
        set = all.clone();
    }
    if drop.iter().any(Option::is_none) {
        set.clear();
    }
    set.extend(add.iter().flatten().map(|c| bit(*c)));
    for cap in drop.iter().flatten() {
        set.remove(&bit(*cap));
    }
    // Ambient additions go into every set, and a drop does not undo them:
    // the CRI asks for them explicitly.
    for cap in &add_ambient {
        match cap {
            Some(cap) => {
                set.insert(bit(*cap));
                ambient.insert(bit(*cap));
            }
            None => {
                set.extend(all.iter().copied());
                ambient.extend(all.iter().copied());
            }
        }
    }
    Ok(restrict(
        CapSets {
            bounding: set,
            ambient,
        },
        host,
    ))
}

/// Drops what this node cannot grant (with a warning, never an error: root
/// here lacks CAP_SYS_RESOURCE, and a pod asking for it should still run).
fn restrict(mut sets: CapSets, host: &HostFacts) -> CapSets {
    let grantable: BTreeSet<u32> = host.all_caps.iter().map(|c| bit(*c)).collect();
    let missing: Vec<u32> = sets.bounding.difference(&grantable).copied().collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|b| cap_name(*b)).collect();
        tracing::warn!(
            capabilities = names.join(","),
            "capabilities outside this node's bounding set cannot be granted; leaving them out"
        );
        sets.bounding.retain(|b| grantable.contains(b));
        sets.ambient.retain(|b| grantable.contains(b));
    }
    sets
}

fn cap_name(bit: u32) -> String {
    BY_BIT
        .iter()
        .find(|(b, _)| *b == bit)
        .map(|(_, c)| format!("CAP_{c}"))
        .unwrap_or_else(|| format!("cap{bit}"))
}

fn to_set(bits: &BTreeSet<u32>) -> Capabilities {
    bits.iter()
        .filter_map(|b| BY_BIT.iter().find(|(bb, _)| bb == b).map(|(_, c)| *c))
        .collect()
}

/// The OCI form: bounding/effective/permitted = the set; inheritable and
/// ambient = the ambient additions.
pub(crate) fn to_oci(sets: &CapSets) -> LinuxCapabilities {
    let main = to_set(&sets.bounding);
    let ambient = to_set(&sets.ambient);
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(main.clone()));
    caps.set_effective(Some(main.clone()));
    caps.set_permitted(Some(main));
    caps.set_inheritable(Some(ambient.clone()));
    caps.set_ambient(Some(ambient));
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(names: &[Capability]) -> BTreeSet<u32> {
        names.iter().map(|c| bit(*c)).collect()
    }

    fn request(add: &[&str], drop: &[&str], ambient: &[&str]) -> cri::Capability {
        cri::Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: ambient.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn bits_cover_every_capability_once() {
        let bits: BTreeSet<u32> = BY_BIT.iter().map(|(b, _)| *b).collect();
        assert_eq!(bits.len(), BY_BIT.len());
        assert_eq!(bits, (0..=40).collect());
        assert_eq!(bit(Capability::SysResource), SYS_RESOURCE_BIT);
        assert_eq!(
            in_mask(0b101),
            vec![Capability::Chown, Capability::DacReadSearch]
        );
    }

    #[test]
    #[allow(clippy::type_complexity)] // one tuple per table row
    fn add_drop_table() {
        let host = HostFacts::for_tests();
        let default = caps(&DEFAULT_CAPS);
        let all: BTreeSet<u32> = host.all_caps.iter().map(|c| bit(*c)).collect();
        let with = |extra: &[Capability]| -> BTreeSet<u32> {
            default.union(&caps(extra)).copied().collect()
        };
        let without = |gone: &[Capability]| -> BTreeSet<u32> {
            default.difference(&caps(gone)).copied().collect()
        };
        let cases: Vec<(&str, Option<cri::Capability>, BTreeSet<u32>, BTreeSet<u32>)> = vec![
            ("no request", None, default.clone(), BTreeSet::new()),
            (
                "empty request",
                Some(request(&[], &[], &[])),
                default.clone(),
                BTreeSet::new(),
            ),
            (
                "add bare name",
                Some(request(&["NET_ADMIN"], &[], &[])),
                with(&[Capability::NetAdmin]),
                BTreeSet::new(),
            ),
            (
                "add with prefix, lower case",
                Some(request(&["cap_sys_ptrace"], &[], &[])),
                with(&[Capability::SysPtrace]),
                BTreeSet::new(),
            ),
            (
                "drop one",
                Some(request(&[], &["NET_RAW"], &[])),
                without(&[Capability::NetRaw]),
                BTreeSet::new(),
            ),
            (
                "drop ALL then add",
                Some(request(&["NET_BIND_SERVICE"], &["ALL"], &[])),
                caps(&[Capability::NetBindService]),
                BTreeSet::new(),
            ),
            (
                "drop all",
                Some(request(&[], &["all"], &[])),
                BTreeSet::new(),
                BTreeSet::new(),
            ),
            (
                "add ALL",
                Some(request(&["ALL"], &[], &[])),
                all.clone(),
                BTreeSet::new(),
            ),
            (
                "add ALL drop one",
                Some(request(&["ALL"], &["CHOWN"], &[])),
                all.iter()
                    .copied()
                    .filter(|b| *b != bit(Capability::Chown))
                    .collect(),
                BTreeSet::new(),
            ),
            (
                "add and drop the same: drop wins",
                Some(request(&["SYS_ADMIN"], &["SYS_ADMIN"], &[])),
                default.clone(),
                BTreeSet::new(),
            ),
            (
                "ambient goes everywhere",
                Some(request(&[], &["ALL"], &["NET_BIND_SERVICE"])),
                caps(&[Capability::NetBindService]),
                caps(&[Capability::NetBindService]),
            ),
            (
                "not grantable here: dropped, not an error",
                Some(request(&["SYS_RESOURCE", "SYS_NICE"], &[], &[])),
                with(&[Capability::SysNice]),
                BTreeSet::new(),
            ),
        ];
        for (name, req, want, want_ambient) in cases {
            let got = from_request(req.as_ref(), &host, "sc").unwrap();
            assert_eq!(got.bounding, want, "{name}");
            assert_eq!(got.ambient, want_ambient, "{name}");
        }
    }

    #[test]
    fn unknown_capabilities_name_the_field() {
        let host = HostFacts::for_tests();
        for (req, field) in [
            (
                request(&["CHOWN", "NOPE"], &[], &[]),
                "sc.capabilities.add_capabilities[1]",
            ),
            (
                request(&[], &["CAP_"], &[]),
                "sc.capabilities.drop_capabilities[0]",
            ),
            (
                request(&[], &[], &["CAP_FLY"]),
                "sc.capabilities.add_ambient_capabilities[0]",
            ),
        ] {
            let err = from_request(Some(&req), &host, "sc").unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument { .. }), "{err}");
            assert_eq!(err.field(), Some(field));
        }
    }

    #[test]
    fn oci_form() {
        let sets = CapSets {
            bounding: caps(&[Capability::Chown, Capability::NetBindService]),
            ambient: caps(&[Capability::NetBindService]),
        };
        let oci = to_oci(&sets);
        let main: Capabilities = [Capability::Chown, Capability::NetBindService].into();
        assert_eq!(oci.bounding().as_ref(), Some(&main));
        assert_eq!(oci.effective().as_ref(), Some(&main));
        assert_eq!(oci.permitted().as_ref(), Some(&main));
        let amb: Capabilities = [Capability::NetBindService].into();
        assert_eq!(oci.inheritable().as_ref(), Some(&amb));
        assert_eq!(oci.ambient().as_ref(), Some(&amb));
        let none = to_oci(&CapSets::none());
        assert_eq!(none.bounding().as_ref(), Some(&Capabilities::new()));
    }
}
