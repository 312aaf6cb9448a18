//! What a pod's user namespace changes in a task's spec, and what it needs
//! of the host's paths.
//!
//! * The task joins the pod's user namespace by path; the namespaces it
//!   makes after that (mount, UTS, IPC, PID, cgroup — the pause container's,
//!   which the pod's containers join) are owned by it.
//! * A network namespace joined by path (the pod's, made by caissond or
//!   containerd in the host's user namespace) cannot be entered from inside
//!   the pod's user namespace: the fork server enters it before the build
//!   and the task inherits it ([`Joined::fork_netns`], handed to the native
//!   backend out of band).
//! * sysfs cannot be mounted for a network namespace the pod does not own:
//!   `/sys` becomes a read-only recursive bind of the host's, as runc does.
//! * Host PID, IPC and network namespaces are refused, as Kubernetes
//!   refuses them for pods with `hostUsers: false`: /proc cannot be mounted
//!   for a PID namespace the pod does not own, and sharing the host's
//!   namespaces defeats the point.
//! * Exec processes carry the container's capabilities in
//!   [`EXEC_USERNS_ANNOTATION`] ([`crate::backend::hardened::exec_userns`]).
//! * The pod's mapped root must be able to reach the rootfs: the bundle
//!   directory (the task's own) is given to the pod's root group with mode
//!   0710 (no other host user may enter it: the rootfs holds files of the
//!   pod's uids, setuid ones among them); every directory above it must be
//!   searchable by others (root's 0711 is enough), which is checked and
//!   reported. Bind-mount sources it cannot reach are relayed through the
//!   bundle instead ([`super::bind_relay`]).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespace, LinuxNamespaceType, Mount, Spec};

use crate::backend::hardened::exec_userns::EXEC_USERNS_ANNOTATION;
use crate::backend::BackendError;

fn refused(what: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidArgument {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// What [`join_pod_userns`] leaves for the backend to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Joined {
    /// The network namespace the task inherits from the fork server.
    pub fork_netns: Option<PathBuf>,
    /// `net.*` sysctls taken out of the spec: the pod's root cannot write
    /// them in a network namespace owned by the host's user namespace (and
    /// libcontainer would refuse them without a network namespace entry),
    /// so the fork server writes them there ([`write_net_sysctls`]).
    pub net_sysctls: BTreeMap<String, String>,
}

/// Puts `spec` in the user namespace at `userns_path`, whose mappings are
/// `uid_mappings` and `gid_mappings`. Refuses host PID/IPC/network
/// namespaces.
pub fn join_pod_userns(
    spec: &mut Spec,
    userns_path: &Path,
    uid_mappings: &[LinuxIdMapping],
    gid_mappings: &[LinuxIdMapping],
) -> Result<Joined, BackendError> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
    for (typ, name) in [
        (LinuxNamespaceType::Pid, "PID"),
        (LinuxNamespaceType::Ipc, "IPC"),
        (LinuxNamespaceType::Network, "network"),
    ] {
        if !namespaces.iter().any(|ns| ns.typ() == typ) {
            return Err(refused(
                "namespace_options",
                format!(
                    "a pod in a user namespace of its own (every hardened pod, a \
                     hostUsers: false one) cannot share the host's {name} namespace"
                ),
            ));
        }
    }
    let mut fork_netns: Option<PathBuf> = None;
    namespaces.retain(|ns| match ns.typ() {
        LinuxNamespaceType::User => false,
        LinuxNamespaceType::Network if ns.path().is_some() => {
            fork_netns = ns.path().clone();
            false
        }
        _ => true,
    });
    let mut user = LinuxNamespace::default();
    user.set_typ(LinuxNamespaceType::User);
    user.set_path(Some(userns_path.to_path_buf()));
    // First: libcontainer enters it before anything else anyway.
    namespaces.insert(0, user);
    linux.set_namespaces(Some(namespaces));
    let mut net_sysctls = BTreeMap::new();
    if fork_netns.is_some() {
        if let Some(mut sysctls) = linux.sysctl().clone() {
            sysctls.retain(|key, value| {
                let net = key.starts_with("net.") || key.starts_with("net/");
                if net {
                    net_sysctls.insert(key.clone(), value.clone());
                }
                !net
            });
            linux.set_sysctl(Some(sysctls));
        }
    }
    linux.set_uid_mappings(Some(uid_mappings.to_vec()));
    linux.set_gid_mappings(Some(gid_mappings.to_vec()));
    spec.set_linux(Some(linux));

    let mut annotations = spec.annotations().clone().unwrap_or_default();
    let exec_caps = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().clone())
        .unwrap_or_default();
    annotations.insert(
        EXEC_USERNS_ANNOTATION.to_string(),
        serde_json::to_string(&exec_caps).expect("capabilities serialise"),
    );
    spec.set_annotations(Some(annotations));

    if let Some(mut mounts) = spec.mounts().clone() {
        for mount in &mut mounts {
            if mount.typ().as_deref() == Some("sysfs") {
                *mount = sys_bind(mount);
            }
        }
        spec.set_mounts(Some(mounts));
    }
    Ok(Joined {
        fork_netns,
        net_sysctls,
    })
}

/// Refuses mounts over `/proc` or beneath it other than the spec's own
/// procfs: the pod would control what its processes (and anything run in
/// them before `execve`) read there.
pub fn check_proc_mounts(spec: &Spec) -> Result<(), BackendError> {
    for mount in spec.mounts().iter().flatten() {
        // As the runtime resolves it: rooted at the container's `/`
        // whether written relative or not, `.` dropped; a `..` (which
        // could climb back into /proc) is refused outright.
        let mut dest = PathBuf::from("/");
        for component in mount.destination().components() {
            match component {
                std::path::Component::Normal(name) => dest.push(name),
                std::path::Component::ParentDir => {
                    return Err(refused(
                        &format!("mount {}", mount.destination().display()),
                        "the hardened runtime handler does not take `..` in a mount destination",
                    ))
                }
                _ => {}
            }
        }
        let under_proc = dest.starts_with("/proc");
        let own_procfs = dest == Path::new("/proc") && mount.typ().as_deref() == Some("proc");
        if under_proc && !own_procfs {
            return Err(refused(
                &format!("mount {}", mount.destination().display()),
                "the hardened runtime handler does not mount volumes over /proc or beneath it",
            ));
        }
    }
    Ok(())
}

/// Writes network `sysctls` in the calling thread's network namespace: the
/// fork server's, entered for a task's build ([`Joined::fork_netns`]),
/// where a task in a user namespace of its own could not write them.
pub fn write_net_sysctls(sysctls: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in sysctls {
        if key.contains("..") {
            return Err(format!("sysctl {key:?}: invalid name"));
        }
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("sysctl {key}={value}: {e}"))?;
    }
    Ok(())
}

/// A recursively read-only recursive bind of the host's /sys in place of a
/// sysfs mount.
fn sys_bind(sysfs: &Mount) -> Mount {
    let mut bind = sysfs.clone();
    bind.set_typ(Some("bind".to_string()));
    bind.set_source(Some(PathBuf::from("/sys")));
    bind.set_options(Some(
        // `rro`: read-only recursively (mount_setattr AT_RECURSIVE), not
        // only the top mount: the host's sysfs submounts (cgroups,
        // debugfs, ...) come along with `rbind`.
        ["rbind", "nosuid", "noexec", "nodev", "ro", "rro"]
            .map(String::from)
            .to_vec(),
    ));
    bind
}

/// The rootfs path of a bundle's spec.
pub fn rootfs_of(bundle: &Path, spec: &Spec) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

/// Lets the pod's mapped root (host gid `pod_gid`) reach `rootfs`: the
/// bundle (the task's own directory) is given to that group with mode
/// 0710, so no other host user can enter it (its rootfs holds files owned
/// by the pod's uids, setuid ones among them); every directory above is
/// checked to be searchable (root's 0711 is enough: traverse, not list).
///
/// The rootfs must therefore be inside the bundle: an absolute `root.path`
/// elsewhere (`ctr run --rootfs`, the raw task API) would put the pod's
/// idmapped files where any host user can reach them, and is refused.
pub fn make_rootfs_reachable(
    bundle: &Path,
    rootfs: &Path,
    pod_gid: u32,
) -> Result<(), BackendError> {
    use std::os::unix::fs::MetadataExt;
    let unreachable = |dir: &Path, reason: String| BackendError::Failed {
        op: "reach the rootfs from the pod's user namespace",
        id: rootfs.display().to_string(),
        reason: format!("{}: {reason}", dir.display()),
    };
    let canonical_bundle = bundle
        .canonicalize()
        .map_err(|e| unreachable(bundle, e.to_string()))?;
    let canonical_rootfs = rootfs
        .canonicalize()
        .map_err(|e| BackendError::InvalidArgument {
            what: "root.path".to_string(),
            reason: format!("{}: {e}", rootfs.display()),
        })?;
    if canonical_rootfs == canonical_bundle || !canonical_rootfs.starts_with(&canonical_bundle) {
        return Err(BackendError::InvalidArgument {
            what: "root.path".to_string(),
            reason: format!(
                "{} (really {}) is not inside the bundle {}: a pod in its own user \
                 namespace needs the rootfs in the bundle, which only root and the pod can enter",
                rootfs.display(),
                canonical_rootfs.display(),
                canonical_bundle.display()
            ),
        });
    }
    // Changed through an fd of the real directory (not a symlink swapped
    // in after the check), and only if it is root's.
    let dir = crate::host::open_dir_nofollow(&canonical_bundle)
        .map_err(|e| unreachable(bundle, e.to_string()))?;
    let meta = dir
        .metadata()
        .map_err(|e| unreachable(bundle, e.to_string()))?;
    if meta.uid() != 0 {
        return Err(unreachable(
            bundle,
            format!(
                "owned by uid {}: the bundle of a task in a pod user namespace must be root's",
                meta.uid()
            ),
        ));
    }
    if meta.gid() != pod_gid {
        std::os::unix::fs::fchown(&dir, None, Some(pod_gid))
            .map_err(|e| unreachable(bundle, format!("chgrp {pod_gid}: {e}")))?;
    }
    if meta.permissions().mode() & 0o7777 != 0o710 {
        dir.set_permissions(std::fs::Permissions::from_mode(0o710))
            .map_err(|e| unreachable(bundle, e.to_string()))?;
    }
    if let Some(dir) = first_unsearchable(&canonical_rootfs, pod_gid) {
        return Err(unreachable(
            &dir,
            "not searchable by the pod's mapped root; every directory above the bundle \
             of a pod in its own user namespace needs o+x (root's 0711 is enough)"
                .to_string(),
        ));
    }
    Ok(())
}

/// The first directory above `path` the pod's mapped root (whose host
/// gid is `pod_gid`) cannot search.
pub(super) fn first_unsearchable(path: &Path, pod_gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors().skip(1).find_map(|dir| {
        let meta = std::fs::metadata(dir).ok()?;
        let mode = meta.permissions().mode();
        let searchable = mode & 0o001 != 0 || (meta.gid() == pod_gid && mode & 0o010 != 0);
        (!searchable).then(|| dir.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let mut n = LinuxNamespace::default();
        n.set_typ(typ);
        n.set_path(path.map(PathBuf::from));
        n
    }

    #[test]
    fn the_spec_joins_the_userns_and_inherits_a_joined_netns() {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_namespaces(Some(vec![
            ns(LinuxNamespaceType::Mount, None),
            ns(LinuxNamespaceType::Network, Some("/run/netns/pod")),
            ns(LinuxNamespaceType::Ipc, Some("/proc/7/ns/ipc")),
            ns(LinuxNamespaceType::Pid, None),
        ]));
        spec.set_linux(Some(linux));
        let mut sysctls = std::collections::HashMap::new();
        sysctls.insert(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "0".to_string(),
        );
        sysctls.insert("kernel.shmmni".to_string(), "10".to_string());
        let mut linux = spec.linux().clone().unwrap();
        linux.set_sysctl(Some(sysctls));
        spec.set_linux(Some(linux));
        let map = [crate::host::userns::mapping(0, 1_000_000, 65_536)];
        let joined = join_pod_userns(&mut spec, Path::new("/proc/1/fd/9"), &map, &map).unwrap();
        assert_eq!(joined.fork_netns, Some(PathBuf::from("/run/netns/pod")));
        assert_eq!(
            joined.net_sysctls.keys().collect::<Vec<_>>(),
            ["net.ipv4.ip_unprivileged_port_start"]
        );
        let linux = spec.linux().as_ref().unwrap();
        let nss = linux.namespaces().as_ref().unwrap();
        assert_eq!(nss[0], ns(LinuxNamespaceType::User, Some("/proc/1/fd/9")));
        assert!(!nss.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(nss.contains(&ns(LinuxNamespaceType::Ipc, Some("/proc/7/ns/ipc"))));
        let left = linux.sysctl().as_ref().unwrap();
        assert!(left.contains_key("kernel.shmmni") && left.len() == 1);
        let map = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (map.container_id(), map.host_id(), map.size()),
            (0, 1_000_000, 65_536)
        );
        assert!(spec.annotations().as_ref().unwrap()[EXEC_USERNS_ANNOTATION].starts_with('{'));
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert_eq!(sys.typ().as_deref(), Some("bind"));
        assert_eq!(sys.source().as_deref(), Some(Path::new("/sys")));
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
        assert!(sys.options().as_ref().unwrap().contains(&"rro".to_string()));
    }

    #[test]
    fn host_namespaces_are_refused() {
        for missing in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Network,
        ] {
            let mut spec = Spec::default();
            let mut linux = spec.linux().clone().unwrap();
            let nss: Vec<_> = linux
                .namespaces()
                .clone()
                .unwrap()
                .into_iter()
                .filter(|n| n.typ() != missing)
                .collect();
            linux.set_namespaces(Some(nss));
            spec.set_linux(Some(linux));
            let map = [crate::host::userns::mapping(0, 1, 1)];
            let err = join_pod_userns(&mut spec, Path::new("/x"), &map, &map).unwrap_err();
            assert!(
                matches!(&err, BackendError::InvalidArgument { what, .. } if what == "namespace_options"),
                "{missing:?}: {err}"
            );
        }
    }

    #[test]
    fn mounts_over_proc_are_refused() {
        let mut spec = Spec::default();
        check_proc_mounts(&spec).expect("the default spec's procfs");
        for dest in [
            "/proc",
            "/proc/self",
            "//proc/./sys",
            "/proc/1/ns",
            // Relative destinations are rooted at the container's `/`.
            "proc",
            "./proc/sys",
            "proc/self/",
            // `..` is refused wherever it points.
            "/tmp/../proc",
            "/../proc",
            "/a/b/../../proc/sys",
            "/tmp/..",
        ] {
            let mut mounts = spec.mounts().clone().unwrap();
            let mut tmpfs = Mount::default();
            tmpfs.set_destination(PathBuf::from(dest));
            tmpfs.set_typ(Some("tmpfs".into()));
            mounts.push(tmpfs);
            let mut with = spec.clone();
            with.set_mounts(Some(mounts));
            let err = check_proc_mounts(&with).unwrap_err();
            assert!(err.to_string().contains(dest), "{dest}: {err}");
        }
        let mut mounts = spec.mounts().clone().unwrap();
        for dest in ["/procfoo", "procfoo", "/tmp/./proc", "tmp/proc"] {
            let mut elsewhere = Mount::default();
            elsewhere.set_destination(PathBuf::from(dest));
            mounts.push(elsewhere);
        }
        spec.set_mounts(Some(mounts));
        check_proc_mounts(&spec).unwrap();
    }
}
