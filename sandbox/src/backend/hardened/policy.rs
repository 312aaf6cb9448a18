//! What the hardened backend does to a spec before the native backend runs
//! it: refuse privileged containers, force `no_new_privs`, keep only the
//! capabilities the pod added and the policy permits, mask more of `/proc`
//! and `/sys`, make `/sys` read-only, pass no host devices, and install the
//! syscall filter ([`super::seccomp`]).

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, Process, Spec};

use crate::backend::defaults::{
    KUBERNETES_MASKED_PATHS, KUBERNETES_READONLY_PATHS, RUNTIME_DEFAULT_CAPS,
};
use crate::backend::BackendError;

/// Annotation listing the capabilities the pod asked for (comma-separated,
/// `CAP_` prefix optional). Capabilities outside a runtime's default set are
/// taken as added even without it; the default set cannot be told apart
/// from an explicit request otherwise, so those are dropped unless named here.
pub const ADDED_CAPABILITIES_ANNOTATION: &str = "io.caisson.capabilities.added";

/// Capabilities a hardened container may hold when its pod adds them: the
/// file-ownership and identity ones ordinary images need, low ports, chroot,
/// signals. Never: `SYS_ADMIN`, `NET_ADMIN`, `NET_RAW` (raw and packet
/// sockets), `MKNOD` (devices), `SYS_PTRACE`, `SYS_MODULE`, `BPF`, ...
pub const PERMITTED_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::Setfcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::AuditWrite,
];

/// Paths masked beyond Kubernetes' defaults (kernel internals, hardware),
/// which are masked too (repeated so they hold even when the spec came
/// without them).
const EXTRA_MASKED: &[&str] = &[
    "/proc/kallsyms",
    "/proc/modules",
    "/proc/kmsg",
    "/proc/iomem",
    "/proc/ioports",
    "/proc/vmallocinfo",
    "/proc/slabinfo",
    "/proc/pagetypeinfo",
    "/proc/zoneinfo",
    "/proc/buddyinfo",
    "/proc/config.gz",
    "/sys/kernel",
    "/sys/module",
    "/sys/fs/bpf",
];

fn refused(what: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidArgument {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// A privileged CRI container: every capability and nothing masked.
fn is_privileged(spec: &Spec) -> bool {
    let sys_admin = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&Capability::SysAdmin));
    let masked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().as_ref())
        .is_some_and(|m| !m.is_empty());
    sys_admin && !masked
}

fn added_caps(spec: &Spec) -> Vec<Capability> {
    let named: Vec<Capability> = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ADDED_CAPABILITIES_ANNOTATION))
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .filter_map(|s| {
                    let upper = s.to_ascii_uppercase();
                    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
                    bare.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let held: Vec<Capability> = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().clone())
        .map(|b| b.into_iter().collect())
        .unwrap_or_default();
    held.into_iter()
        .filter(|c| named.contains(c) || !RUNTIME_DEFAULT_CAPS.contains(c))
        .collect()
}

/// The capabilities a hardened process keeps of those it `held` and the
/// pod `added`.
fn keep_caps(process: &mut Process, added: &[Capability]) {
    let Some(caps) = process.capabilities().clone() else {
        return;
    };
    let keep = |set: &Option<Capabilities>| -> Option<Capabilities> {
        Some(
            set.clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| added.contains(c) && PERMITTED_CAPS.contains(c))
                .collect(),
        )
    };
    let mut narrowed = LinuxCapabilities::default();
    narrowed.set_bounding(keep(caps.bounding()));
    narrowed.set_effective(keep(caps.effective()));
    narrowed.set_permitted(keep(caps.permitted()));
    narrowed.set_inheritable(keep(caps.inheritable()));
    narrowed.set_ambient(keep(caps.ambient()));
    process.set_capabilities(Some(narrowed));
}

/// Narrows an exec process of a container whose spec is `spec`.
pub fn harden_process(process: &mut Process, added: &[Capability]) {
    process.set_no_new_privileges(Some(true));
    keep_caps(process, added);
}

fn push_missing(list: &mut Vec<String>, paths: &[&str]) {
    for p in paths {
        if !list.iter().any(|l| l == p) {
            list.push(p.to_string());
        }
    }
}

/// Hardens `spec` in place, or refuses it; returns the capabilities the pod
/// added to the container (kept for its exec processes).
pub fn harden_spec(spec: &mut Spec) -> Result<Vec<Capability>, BackendError> {
    if is_privileged(spec) {
        return Err(refused(
            "privileged",
            "privileged containers are not allowed by the hardened runtime handler",
        ));
    }
    let added = added_caps(spec);
    if let Some(mut process) = spec.process().clone() {
        harden_process(&mut process, &added);
        spec.set_process(Some(process));
    }
    // Host device nodes: none passed in, none bind-mounted.
    for mount in spec.mounts().iter().flatten() {
        if let Some(source) = mount.source() {
            let is_device = std::fs::metadata(source)
                .map(|m| m.file_type().is_block_device() || m.file_type().is_char_device())
                .unwrap_or(false);
            if is_device && !is_harmless_device(source) {
                return Err(refused(
                    &format!("mount {}", mount.destination().display()),
                    format!(
                        "host device {} is not allowed by the hardened runtime handler",
                        source.display()
                    ),
                ));
            }
        }
    }
    if let Some(mut mounts) = spec.mounts().clone() {
        for mount in &mut mounts {
            let dest = mount.destination().to_string_lossy().to_string();
            if dest == "/sys" || dest.starts_with("/sys/") {
                let mut options = mount.options().clone().unwrap_or_default();
                options.retain(|o| o != "rw");
                if !options.iter().any(|o| o == "ro") {
                    options.push("ro".into());
                }
                mount.set_options(Some(options));
            }
        }
        spec.set_mounts(Some(mounts));
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_devices(None);
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    push_missing(&mut masked, &KUBERNETES_MASKED_PATHS);
    push_missing(&mut masked, EXTRA_MASKED);
    linux.set_masked_paths(Some(masked));
    let mut readonly = linux.readonly_paths().clone().unwrap_or_default();
    push_missing(&mut readonly, &KUBERNETES_READONLY_PATHS);
    linux.set_readonly_paths(Some(readonly));
    let (filter, json) = super::seccomp::hardened_profile_and_json(linux.seccomp().as_ref());
    // Exec processes get the same filter (libcontainer drops it for them).
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    annotations.insert(
        crate::host::executor::EXEC_SECCOMP_ANNOTATION.to_string(),
        json.to_string(),
    );
    annotations.insert(
        crate::host::executor::LANDLOCK_ANNOTATION.to_string(),
        "rootfs".to_string(),
    );
    spec.set_annotations(Some(annotations));
    linux.set_seccomp(Some(filter));
    spec.set_linux(Some(linux));
    Ok(added)
}

/// /dev/null and friends, which every container gets anyway.
fn is_harmless_device(path: &Path) -> bool {
    matches!(
        path.to_str(),
        Some("/dev/null" | "/dev/zero" | "/dev/full" | "/dev/random" | "/dev/urandom" | "/dev/tty")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, ProcessBuilder, SpecBuilder};
    use std::collections::HashMap;

    fn spec_with(caps: &[Capability], annotation: Option<&str>, masked: bool) -> Spec {
        let set: Capabilities = caps.iter().copied().collect();
        let process = ProcessBuilder::default()
            .args(vec!["sh".to_string()])
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(set.clone())
                    .effective(set.clone())
                    .permitted(set)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let mut spec = SpecBuilder::default().process(process).build().unwrap();
        if !masked {
            let mut linux = spec.linux().clone().unwrap();
            linux.set_masked_paths(None);
            spec.set_linux(Some(linux));
        }
        if let Some(a) = annotation {
            spec.set_annotations(Some(HashMap::from([(
                ADDED_CAPABILITIES_ANNOTATION.to_string(),
                a.to_string(),
            )])));
        }
        spec
    }

    fn effective(spec: &Spec) -> Vec<Capability> {
        let mut v: Vec<_> = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap()
            .effective()
            .clone()
            .unwrap()
            .into_iter()
            .collect();
        v.sort_by_key(|c| c.to_string());
        v
    }

    #[test]
    fn capabilities_are_kept_only_when_added_and_permitted() {
        use Capability::*;
        type Case<'a> = (&'a str, Vec<Capability>, Option<&'a str>, Vec<Capability>);
        let cases: Vec<Case> = vec![
            (
                "runtime defaults only",
                RUNTIME_DEFAULT_CAPS.to_vec(),
                None,
                vec![],
            ),
            (
                "a default named as added",
                RUNTIME_DEFAULT_CAPS.to_vec(),
                Some("NET_BIND_SERVICE"),
                vec![NetBindService],
            ),
            (
                "added but not permitted",
                vec![SysAdmin, Chown],
                Some("SYS_ADMIN"),
                vec![],
            ),
            (
                "non-default permitted",
                vec![DacReadSearch],
                None,
                vec![DacReadSearch],
            ),
            (
                "added NET_RAW is not permitted",
                vec![NetRaw],
                Some("CAP_NET_RAW"),
                vec![],
            ),
        ];
        for (name, held, annotation, want) in cases {
            let mut spec = spec_with(&held, annotation, true);
            harden_spec(&mut spec).unwrap();
            assert_eq!(effective(&spec), want, "{name}");
            assert_eq!(
                spec.process().as_ref().unwrap().no_new_privileges(),
                Some(true),
                "{name}"
            );
        }
    }

    #[test]
    fn privileged_is_refused_naming_privileged() {
        let mut spec = spec_with(&[Capability::SysAdmin], None, false);
        match harden_spec(&mut spec) {
            Err(BackendError::InvalidArgument { what, .. }) => assert_eq!(what, "privileged"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sys_is_read_only_and_more_is_masked() {
        let mut spec = spec_with(&[], None, true);
        harden_spec(&mut spec).unwrap();
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kallsyms".to_string()));
        assert!(linux.seccomp().is_some());
        assert!(linux.devices().is_none());
    }
}
