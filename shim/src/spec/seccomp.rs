//! Seccomp: Unconfined, RuntimeDefault (the built-in profile in
//! `seccomp_default.json`), or a Localhost profile file; privileged
//! containers get none.
//!
//! Profiles are read in Docker's format, a superset of the OCI
//! `LinuxSeccomp` JSON: rules may carry `includes`/`excludes` conditions on
//! capabilities, architectures and kernel version, and `archMap` lists the
//! sub-architectures of each native one. Rendering evaluates those against
//! the container's bounding set and this node, as Docker and containerd do,
//! and yields plain OCI. A Localhost file in plain OCI form works unchanged.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use caisson_proto::cri;
use cri::security_profile::ProfileType;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSyscall,
};
use serde::Deserialize;

use super::capabilities::holds_named;
use super::host::{kernel_version, HostFacts};
use super::SpecError;

/// Which profile a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SeccompChoice {
    Unconfined,
    RuntimeDefault,
    /// A profile file on this node; `field` names where the request gave it.
    Localhost {
        path: PathBuf,
        field: String,
    },
}

/// The choice from a security context's `seccomp` profile or, when that is
/// unset, its deprecated `seccomp_profile_path` (where `""` means
/// unconfined).
pub(crate) fn choice(
    profile: Option<&cri::SecurityProfile>,
    legacy_path: &str,
    sc_field: &str,
) -> Result<SeccompChoice, SpecError> {
    if let Some(profile) = profile {
        let kind = ProfileType::try_from(profile.profile_type).map_err(|_| {
            SpecError::invalid(
                format!("{sc_field}.seccomp.profile_type"),
                format!("unknown profile type {}", profile.profile_type),
            )
        })?;
        return match kind {
            ProfileType::RuntimeDefault => Ok(SeccompChoice::RuntimeDefault),
            ProfileType::Unconfined => Ok(SeccompChoice::Unconfined),
            ProfileType::Localhost => localhost(
                &profile.localhost_ref,
                format!("{sc_field}.seccomp.localhost_ref"),
            ),
        };
    }
    let field = format!("{sc_field}.seccomp_profile_path");
    match legacy_path {
        "" | "unconfined" => Ok(SeccompChoice::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompChoice::RuntimeDefault),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(path, field),
            None => Err(SpecError::invalid(
                field,
                format!("unknown seccomp profile {other:?}"),
            )),
        },
    }
}

fn localhost(path: &str, field: String) -> Result<SeccompChoice, SpecError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(SpecError::invalid(
            field,
            format!("{path:?} is not an absolute path"),
        ));
    }
    Ok(SeccompChoice::Localhost {
        path: PathBuf::from(path),
        field,
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMapEntry>,
    #[serde(default)]
    flags: Vec<LinuxSeccompFilterFlag>,
    #[serde(default)]
    listener_path: Option<PathBuf>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMapEntry {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    /// Docker's older single-name form.
    #[serde(default)]
    name: Option<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    includes: Condition,
    #[serde(default)]
    excludes: Condition,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// The seccomp architecture of a Go-spelled native architecture.
fn native_arch(arch: &str) -> Option<Arch> {
    match arch {
        "amd64" => Some(Arch::ScmpArchX86_64),
        "x86" => Some(Arch::ScmpArchX86),
        "arm64" => Some(Arch::ScmpArchAarch64),
        "arm" => Some(Arch::ScmpArchArm),
        "s390x" => Some(Arch::ScmpArchS390x),
        "ppc64le" => Some(Arch::ScmpArchPpc64le),
        "riscv64" => Some(Arch::ScmpArchRiscv64),
        "loong64" => Some(Arch::ScmpArchLoongarch64),
        _ => None,
    }
}

impl Rule {
    /// Docker's semantics: every included cap must be held, no excluded cap
    /// may be; the native arch must be included (if any are listed) and not
    /// excluded; the kernel must be at least `minKernel`.
    fn applies(&self, caps: &BTreeSet<u32>, host: &HostFacts) -> bool {
        let inc = &self.includes;
        let exc = &self.excludes;
        if !inc.caps.iter().all(|c| holds_named(caps, c)) {
            return false;
        }
        if exc.caps.iter().any(|c| holds_named(caps, c)) {
            return false;
        }
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == host.arch) {
            return false;
        }
        if exc.arches.iter().any(|a| a == host.arch) {
            return false;
        }
        if let Some(min) = &inc.min_kernel {
            if host.kernel < kernel_version(min) {
                return false;
            }
        }
        if let Some(min) = &exc.min_kernel {
            if host.kernel >= kernel_version(min) {
                return false;
            }
        }
        true
    }
}

impl Profile {
    fn render(&self, caps: &BTreeSet<u32>, host: &HostFacts) -> LinuxSeccomp {
        let architectures = if !self.architectures.is_empty() {
            self.architectures.clone()
        } else {
            native_arch(host.arch)
                .and_then(|native| self.arch_map.iter().find(|e| e.architecture == native))
                .map(|e| {
                    std::iter::once(e.architecture)
                        .chain(e.sub_architectures.iter().copied())
                        .collect()
                })
                .unwrap_or_default()
        };
        let syscalls: Vec<LinuxSyscall> = self
            .syscalls
            .iter()
            .filter(|r| r.applies(caps, host))
            .filter_map(|r| {
                let names: Vec<String> = r.names.iter().chain(&r.name).cloned().collect();
                if names.is_empty() {
                    return None;
                }
                let mut syscall = LinuxSyscall::default();
                syscall.set_names(names);
                syscall.set_action(r.action);
                syscall.set_errno_ret(r.errno_ret);
                syscall.set_args(if r.args.is_empty() {
                    None
                } else {
                    Some(r.args.clone())
                });
                Some(syscall)
            })
            .collect();
        let mut seccomp = LinuxSeccomp::default();
        seccomp.set_default_action(self.default_action);
        seccomp.set_default_errno_ret(self.default_errno_ret);
        seccomp.set_architectures(if architectures.is_empty() {
            None
        } else {
            Some(architectures)
        });
        seccomp.set_flags(if self.flags.is_empty() {
            None
        } else {
            Some(self.flags.clone())
        });
        seccomp.set_listener_path(self.listener_path.clone());
        seccomp.set_listener_metadata(self.listener_metadata.clone());
        seccomp.set_syscalls(Some(syscalls));
        seccomp
    }
}

const DEFAULT_PROFILE_JSON: &str = include_str!("seccomp_default.json");

fn default_profile() -> &'static Profile {
    static PROFILE: OnceLock<Profile> = OnceLock::new();
    PROFILE.get_or_init(|| {
        serde_json::from_str(DEFAULT_PROFILE_JSON).expect("the built-in seccomp profile parses")
    })
}

/// The OCI seccomp section for `choice`, given the process's bounding
/// capabilities (bit numbers).
pub(crate) fn render(
    choice: &SeccompChoice,
    caps: &BTreeSet<u32>,
    host: &HostFacts,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    match choice {
        SeccompChoice::Unconfined => Ok(None),
        SeccompChoice::RuntimeDefault => Ok(Some(default_profile().render(caps, host))),
        SeccompChoice::Localhost { path, field } => {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(SpecError::not_found(
                        field,
                        format!("seccomp profile {} does not exist", path.display()),
                    ))
                }
                Err(e) => {
                    return Err(SpecError::io(
                        format!("reading seccomp profile {}", path.display()),
                        e,
                    ))
                }
            };
            let profile: Profile = serde_json::from_str(&text).map_err(|e| {
                SpecError::invalid(
                    field,
                    format!("seccomp profile {} is not valid: {e}", path.display()),
                )
            })?;
            Ok(Some(profile.render(caps, host)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::capabilities;

    fn profile(t: ProfileType, r: &str) -> cri::SecurityProfile {
        cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        }
    }

    #[test]
    fn choice_table() {
        let lh = |p: &str, f: &str| SeccompChoice::Localhost {
            path: p.into(),
            field: f.into(),
        };
        let cases: Vec<(Option<cri::SecurityProfile>, &str, SeccompChoice)> = vec![
            (None, "", SeccompChoice::Unconfined),
            (None, "unconfined", SeccompChoice::Unconfined),
            (None, "runtime/default", SeccompChoice::RuntimeDefault),
            (None, "docker/default", SeccompChoice::RuntimeDefault),
            (
                None,
                "localhost//etc/p.json",
                lh("/etc/p.json", "sc.seccomp_profile_path"),
            ),
            (
                Some(profile(ProfileType::RuntimeDefault, "")),
                "unconfined",
                SeccompChoice::RuntimeDefault,
            ),
            (
                Some(profile(ProfileType::Unconfined, "")),
                "runtime/default",
                SeccompChoice::Unconfined,
            ),
            (
                Some(profile(ProfileType::Localhost, "/p.json")),
                "",
                lh("/p.json", "sc.seccomp.localhost_ref"),
            ),
        ];
        for (p, legacy, want) in cases {
            assert_eq!(
                choice(p.as_ref(), legacy, "sc").unwrap(),
                want,
                "{p:?} {legacy:?}"
            );
        }
        for (p, legacy, field) in [
            (
                Some(profile(ProfileType::Localhost, "rel.json")),
                "",
                "sc.seccomp.localhost_ref",
            ),
            (
                Some(profile(ProfileType::Localhost, "")),
                "",
                "sc.seccomp.localhost_ref",
            ),
            (
                Some(cri::SecurityProfile {
                    profile_type: 9,
                    localhost_ref: String::new(),
                }),
                "",
                "sc.seccomp.profile_type",
            ),
            (None, "localhost/rel", "sc.seccomp_profile_path"),
            (None, "bogus", "sc.seccomp_profile_path"),
        ] {
            let err = choice(p.as_ref(), legacy, "sc").unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    fn default_caps() -> BTreeSet<u32> {
        capabilities::from_request(None, &HostFacts::for_tests(), "sc")
            .unwrap()
            .bounding
    }

    fn rules_for<'a>(seccomp: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        seccomp
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.names().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn built_in_profile_renders() {
        let host = HostFacts::for_tests();
        let seccomp = render(&SeccompChoice::RuntimeDefault, &default_caps(), &host)
            .unwrap()
            .unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(seccomp.default_errno_ret(), Some(1));
        assert_eq!(
            seccomp.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        for allowed in [
            "read",
            "execve",
            "openat",
            "arch_prctl",
            "chroot",
            "ptrace",
            "socket",
        ] {
            let rules = rules_for(&seccomp, allowed);
            assert!(
                rules
                    .iter()
                    .any(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none()),
                "{allowed} allowed"
            );
        }
        for denied in [
            "mount",
            "unshare",
            "setns",
            "reboot",
            "init_module",
            "kexec_load",
            "keyctl",
            "io_uring_setup",
            "bpf",
            "open_by_handle_at",
        ] {
            assert!(rules_for(&seccomp, denied).is_empty(), "{denied} denied");
        }
        // Without CAP_SYS_ADMIN: clone without namespace flags, clone3 ENOSYS.
        let clone = rules_for(&seccomp, "clone");
        assert_eq!(clone.len(), 1);
        let arg = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(arg.value(), 0x7E02_0000);
        let clone3 = rules_for(&seccomp, "clone3");
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(38));
        assert_eq!(rules_for(&seccomp, "personality").len(), 5);
        assert!(rules_for(&seccomp, "arm_fadvise64_64").is_empty());
        // Valid OCI: it round-trips through oci-spec's own type.
        let json = serde_json::to_string(&seccomp).unwrap();
        let back: LinuxSeccomp = serde_json::from_str(&json).unwrap();
        assert_eq!(back, seccomp);
    }

    #[test]
    fn capabilities_widen_the_profile() {
        let host = HostFacts::for_tests();
        let mut caps = default_caps();
        caps.insert(21); // CAP_SYS_ADMIN
        caps.insert(16); // CAP_SYS_MODULE
        let seccomp = render(&SeccompChoice::RuntimeDefault, &caps, &host)
            .unwrap()
            .unwrap();
        for allowed in ["mount", "unshare", "setns", "bpf", "init_module"] {
            assert!(!rules_for(&seccomp, allowed).is_empty(), "{allowed}");
        }
        let clone = rules_for(&seccomp, "clone");
        assert_eq!(clone.len(), 1);
        assert!(
            clone[0].args().is_none(),
            "unrestricted clone with CAP_SYS_ADMIN"
        );
        assert!(rules_for(&seccomp, "clone3")
            .iter()
            .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
    }

    #[test]
    fn conditions_follow_the_node() {
        let old_arm = HostFacts {
            arch: "arm64",
            kernel: (4, 4),
            ..HostFacts::for_tests()
        };
        let seccomp = render(&SeccompChoice::RuntimeDefault, &BTreeSet::new(), &old_arm)
            .unwrap()
            .unwrap();
        assert_eq!(
            seccomp.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        assert!(rules_for(&seccomp, "ptrace").is_empty(), "ptrace needs 4.8");
        assert!(rules_for(&seccomp, "arch_prctl").is_empty());
        assert!(!rules_for(&seccomp, "arm_fadvise64_64").is_empty());
    }

    #[test]
    fn localhost_profiles() {
        let host = HostFacts::for_tests();
        let dir = tempfile::tempdir().unwrap();
        let oci = dir.path().join("oci.json");
        std::fs::write(
            &oci,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
               "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1,
                            "args":[{"index":1,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        let lh = |p: &std::path::Path| SeccompChoice::Localhost {
            path: p.to_path_buf(),
            field: "sc.seccomp.localhost_ref".into(),
        };
        let got = render(&lh(&oci), &BTreeSet::new(), &host).unwrap().unwrap();
        assert_eq!(got.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(rules_for(&got, "mkdir")[0].errno_ret(), Some(1));

        // Docker's format, conditions and all.
        let docker = dir.path().join("docker.json");
        std::fs::write(
            &docker,
            r#"{"defaultAction":"SCMP_ACT_ERRNO",
               "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
               "syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","comment":"x"},
                           {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}}]}"#,
        )
        .unwrap();
        let got = render(&lh(&docker), &BTreeSet::new(), &host)
            .unwrap()
            .unwrap();
        assert_eq!(got.architectures().as_ref().unwrap().len(), 2);
        assert!(rules_for(&got, "mount").is_empty());

        let err = render(
            &lh(&dir.path().join("missing.json")),
            &BTreeSet::new(),
            &host,
        )
        .unwrap_err();
        assert!(matches!(err, SpecError::NotFound { .. }), "{err}");
        assert_eq!(err.field(), Some("sc.seccomp.localhost_ref"));

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let err = render(&lh(&bad), &BTreeSet::new(), &host).unwrap_err();
        assert!(matches!(err, SpecError::InvalidArgument { .. }), "{err}");
        assert_eq!(err.field(), Some("sc.seccomp.localhost_ref"));
    }

    #[test]
    fn unconfined_is_none() {
        let host = HostFacts::for_tests();
        assert!(render(&SeccompChoice::Unconfined, &BTreeSet::new(), &host)
            .unwrap()
            .is_none());
    }
}
