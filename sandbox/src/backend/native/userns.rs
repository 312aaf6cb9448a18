//! Pods in a user namespace of their own (`hostUsers: false`, KEP-127).
//!
//! A sandbox spec with a new user namespace and its `uidMappings` and
//! `gidMappings` (caissond writes kubelet's; containerd 2.x does the same)
//! makes the pod's namespace with **exactly those mappings** before the
//! pause container ([`crate::host::userns`]), held by the shim for the
//! pod's life. The pause and every container of the pod join it; a
//! container's spec must ask for it (joining the pause's, or any path to
//! the same namespace) and carry the same mappings when it carries any.
//! From there a task is made as the hardened backend makes every task
//! (the shared machinery in `crate::host`):
//!
//! * the spec joins the namespace by the shim's fd, the pod's network
//!   namespace is entered by the fork server (it belongs to the host's
//!   user namespace), `net.*` sysctls are written from the host, and sysfs
//!   becomes a read-only bind of the host's `/sys` (it cannot be mounted
//!   for a network namespace the pod does not own; runc does the same);
//!   `/proc`, `/dev/mqueue` and the rest mount in namespaces the pod owns
//!   ([`crate::host::userns_spec`]);
//! * the rootfs is idmapped through the namespace (an overlay through its
//!   lower layers; what the pod writes lands in the upper dir as its
//!   mapped host ids) ([`crate::host::idmap`]);
//! * every bind source whose filesystem can be idmapped — the pod's
//!   `/etc/hosts`, `hostname`, `resolv.conf`, its `/dev/shm` tmpfs,
//!   hostPath volumes — is relayed idmapped through the bundle while the
//!   task is created, so host root's files are root's inside; others are
//!   bound as they are ([`crate::host::bind_relay`]);
//! * exec processes join the namespace themselves
//!   ([`crate::backend::hardened::exec_userns`]);
//! * cgroups are applied from the host by the fork server, as for any task.
//!
//! Deleting a task unmounts its idmapped rootfs; the namespace's fd is
//! closed when the pod's last task (its sandbox) is deleted. A shim that
//! died leaves idmapped layer mounts and relays under the state root, which
//! `NativeBackend::force_cleanup_userns` removes.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespace, LinuxNamespaceType, Spec};

use super::spec::SpecOrigin;
use super::{strip_internal_annotations, CreateExtras, ExecUserns, NativeBackend};
use crate::backend::{locked, BackendError, Result, TaskKind, TaskSpec};
use crate::host::idmap::{self, IdmappedRootfs};
use crate::host::userns::{leave_pod, UserNamespace};
use crate::host::{bind_relay, userns_spec};

/// The pods of this shim that have a user namespace, and the idmapped
/// rootfs of each of their tasks.
#[derive(Debug, Default)]
pub(super) struct PodNamespaces {
    /// Per sandbox id.
    pods: Mutex<HashMap<String, Pod>>,
    /// Per task id.
    rootfs: Mutex<HashMap<String, IdmappedRootfs>>,
}

#[derive(Debug)]
struct Pod {
    ns: UserNamespace,
    tasks: HashSet<String>,
}

/// Where the idmapped layer mounts of task `id`'s overlay rootfs live:
/// under the (per-namespace) state root, so the same task id in two
/// containerd namespaces never shares (nor cleans up) the other's.
pub(crate) fn layers_dir(state_root: &Path, id: &str) -> PathBuf {
    state_root.join(".idmap-layers").join(id)
}

/// A task id that can name a directory: checked before anything touches
/// the bundle or mounts (libcontainer checks it again).
pub(crate) fn valid_task_id(id: &str) -> bool {
    !(id.is_empty() || id.contains('/') || id.starts_with('.'))
}

/// Removes what a dead shim left of task `id` in a pod user namespace:
/// the idmapped layer mounts of its overlay rootfs (the rootfs itself is
/// unmounted by the caller) and the bind relays of a create it died in.
pub(super) fn force_cleanup(state_root: &Path, id: &str) {
    if !valid_task_id(id) {
        return;
    }
    // As the backend saw it (NativeBackend canonicalises its root).
    let root = state_root
        .canonicalize()
        .unwrap_or_else(|_| state_root.to_path_buf());
    idmap::remove_layer_mounts(&layers_dir(&root, id));
    bind_relay::remove_recorded(&bind_relay::record_path(&root, id));
}

fn invalid(what: &str, reason: impl Into<String>) -> BackendError {
    BackendError::InvalidArgument {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// The spec's user namespace entry, if any.
fn user_namespace(spec: &Spec) -> Option<LinuxNamespace> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::User)
        .cloned()
}

fn mappings(spec: &Spec) -> (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>) {
    let linux = spec.linux().clone().unwrap_or_default();
    (
        linux.uid_mappings().clone().unwrap_or_default(),
        linux.gid_mappings().clone().unwrap_or_default(),
    )
}

impl NativeBackend {
    /// The bundle's spec when task `task` is to run in a pod user
    /// namespace: its spec asks for one, or its pod has one. `None` for
    /// everything else (and for a spec that does not load: the ordinary
    /// create reports that).
    pub(super) fn userns_spec(&self, task: &TaskSpec) -> Option<Spec> {
        let spec = Spec::load(task.bundle.join("config.json")).ok()?;
        let pod_has_one = match &task.kind {
            TaskKind::Sandbox => false,
            TaskKind::Container { sandbox_id } => {
                locked(&self.pod_userns.pods).contains_key(sandbox_id)
            }
        };
        (pod_has_one || user_namespace(&spec).is_some()).then_some(spec)
    }

    /// Creates `task` in its pod's user namespace (making it for a sandbox).
    pub(super) fn create_in_userns(&self, task: &TaskSpec, mut spec: Spec) -> Result<u32> {
        let id = task.id.as_str();
        // Before anything touches the bundle or mounts (the id names a
        // directory).
        if !valid_task_id(id) {
            return Err(invalid(
                "task id",
                format!("{id:?} is not a valid container id"),
            ));
        }
        Self::validate_id("create", id)?;
        if self.tasks.lock().contains_key(id) {
            return Err(BackendError::AlreadyExists {
                what: "task",
                id: id.to_string(),
            });
        }
        let forged = strip_internal_annotations(&mut spec);
        if !forged.is_empty() {
            tracing::warn!(
                id,
                ?forged,
                "ignoring internal annotations in an incoming spec"
            );
        }
        // Held across the create: a pod's tasks are created one at a time.
        let mut pods = locked(&self.pod_userns.pods);
        let pod_id = match &task.kind {
            TaskKind::Sandbox => {
                if pods.contains_key(id) {
                    return Err(BackendError::AlreadyExists {
                        what: "pod",
                        id: id.to_string(),
                    });
                }
                let ns = make_pod_userns(id, &spec)?;
                pods.insert(
                    id.to_string(),
                    Pod {
                        ns,
                        tasks: HashSet::new(),
                    },
                );
                id
            }
            TaskKind::Container { sandbox_id } => {
                check_joins_pod(&spec, pods.get(sandbox_id), sandbox_id)?;
                sandbox_id.as_str()
            }
        };
        let pod = pods.get(pod_id).expect("made or checked above");
        match self.create_joined(task, spec, &pod.ns) {
            Ok(pid) => {
                let pod = pods.get_mut(pod_id).expect("made or checked above");
                pod.tasks.insert(id.to_string());
                let (uids, gids) = (pod.ns.uid_mappings(), pod.ns.gid_mappings());
                tracing::info!(id, ?uids, ?gids, "task created in the pod's user namespace");
                Ok(pid)
            }
            Err(e) => {
                if task.kind == TaskKind::Sandbox {
                    // Closes the namespace's fd.
                    pods.remove(id);
                }
                Err(e)
            }
        }
    }

    /// The spec joins `ns`, the rootfs is idmapped through it, bind
    /// sources relayed (idmapped where they can be), then the ordinary
    /// create. Undoes the rootfs mount if the create fails; removes the
    /// relays either way (the container has its own mounts once created).
    fn create_joined(&self, task: &TaskSpec, mut spec: Spec, ns: &UserNamespace) -> Result<u32> {
        let id = task.id.as_str();
        let (root_uid, root_gid) = ns.root_ids().ok_or_else(|| {
            invalid(
                "linux.uidMappings",
                "the pod's user namespace maps no root (container id 0)",
            )
        })?;
        let joined = userns_spec::join_pod_userns(
            &mut spec,
            &ns.path(),
            ns.uid_mappings(),
            ns.gid_mappings(),
        )?;
        let rootfs = userns_spec::rootfs_of(&task.bundle, &spec);
        userns_spec::make_rootfs_reachable(&task.bundle, &rootfs, root_gid)?;
        let state_root = self.state_root.clone();
        let relay = bind_relay::relay_sources_idmapped(
            &mut spec,
            &task.bundle,
            root_gid,
            &bind_relay::record_path(&state_root, id),
            &[&state_root],
            ns.fd(),
        )?;
        let made = (|| {
            let mounted = idmap::mount_idmapped(
                &rootfs,
                ns.fd(),
                (root_uid, root_gid),
                &layers_dir(&state_root, id),
            )
            .map_err(|e| BackendError::Failed {
                op: "idmap the rootfs",
                id: id.to_string(),
                reason: e.to_string(),
            })?;
            let extras = CreateExtras {
                fork_netns: joined.fork_netns.clone(),
                net_sysctls: joined.net_sysctls.clone(),
                exec_userns: Some(ExecUserns {
                    path: ns.path(),
                    inode: ns.inode(),
                }),
            };
            match self.create_task(task, SpecOrigin::Backend(Box::new(spec)), extras) {
                Ok(pid) => {
                    locked(&self.pod_userns.rootfs).insert(id.to_string(), mounted);
                    Ok(pid)
                }
                Err(e) => {
                    if let Err(u) = mounted.unmount() {
                        tracing::warn!(id, error = %u, "unmounting the idmapped rootfs");
                    }
                    Err(e)
                }
            }
        })();
        if let Some(relay) = relay {
            relay.remove();
        }
        made
    }

    /// After task `id` is deleted: unmounts its idmapped rootfs and, when
    /// it was its pod's last task, closes the pod's user namespace.
    pub(super) fn userns_task_deleted(&self, id: &str) {
        if let Some(mounted) = locked(&self.pod_userns.rootfs).remove(id) {
            if let Err(e) = mounted.unmount() {
                tracing::warn!(id, error = %e, "unmounting the idmapped rootfs");
            }
        }
        let left = leave_pod(&mut locked(&self.pod_userns.pods), id, |p| &mut p.tasks);
        if let Some((sandbox, _pod)) = left {
            tracing::info!(pod = sandbox, "the pod's user namespace is released");
        }
    }
}

/// Makes sandbox `id`'s user namespace from its spec: a new one (no path)
/// with the spec's mappings, which must map root.
fn make_pod_userns(id: &str, spec: &Spec) -> Result<UserNamespace> {
    let user = user_namespace(spec).ok_or_else(|| {
        invalid(
            "linux.namespaces",
            "a pod sandbox without a user namespace has none to share",
        )
    })?;
    if let Some(path) = user.path() {
        return Err(invalid(
            "linux.namespaces",
            format!(
                "the sandbox joins the user namespace at {}: a pod's sandbox makes its own \
                 (no path), with uidMappings and gidMappings",
                path.display()
            ),
        ));
    }
    let (uids, gids) = mappings(spec);
    if uids.is_empty() || gids.is_empty() {
        return Err(invalid(
            "linux.uidMappings",
            "a new user namespace needs uidMappings and gidMappings",
        ));
    }
    if crate::host::userns::host_id_of(&uids, 0).is_none()
        || crate::host::userns::host_id_of(&gids, 0).is_none()
    {
        return Err(invalid(
            "linux.uidMappings",
            "the pod's user namespace must map its root (container id 0)",
        ));
    }
    UserNamespace::create(&uids, &gids).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            invalid("linux.uidMappings", e.to_string())
        } else {
            BackendError::Failed {
                op: "create the pod's user namespace",
                id: id.to_string(),
                reason: e.to_string(),
            }
        }
    })
}

/// A container of pod `sandbox_id` (whose user namespace is `pod`, if it
/// has one) joins that namespace and no other.
fn check_joins_pod(spec: &Spec, pod: Option<&Pod>, sandbox_id: &str) -> Result<()> {
    let user = user_namespace(spec);
    let pod = match (pod, &user) {
        (Some(pod), Some(_)) => pod,
        (Some(_), None) => {
            return Err(invalid(
                "linux.namespaces",
                format!(
                    "pod {sandbox_id} runs in a user namespace of its own: its containers \
                     must join it"
                ),
            ))
        }
        (None, _) => {
            return Err(invalid(
                "linux.namespaces",
                format!(
                    "the native runtime handler runs a container in a user namespace only \
                     within a pod whose sandbox made one (hostUsers: false); pod \
                     {sandbox_id} has none in this shim"
                ),
            ))
        }
    };
    if let Some(path) = user.as_ref().and_then(|u| u.path().clone()) {
        let inode = std::fs::metadata(&path).map(|m| m.ino()).map_err(|e| {
            invalid(
                "linux.namespaces",
                format!("the user namespace {}: {e}", path.display()),
            )
        })?;
        if inode != pod.ns.inode() {
            return Err(invalid(
                "linux.namespaces",
                format!(
                    "{} is not the user namespace of pod {sandbox_id}",
                    path.display()
                ),
            ));
        }
    }
    let (uids, gids) = mappings(spec);
    let differs =
        |given: &[LinuxIdMapping], pods: &[LinuxIdMapping]| !given.is_empty() && given != pods;
    if differs(&uids, pod.ns.uid_mappings()) || differs(&gids, pod.ns.gid_mappings()) {
        return Err(invalid(
            "linux.uidMappings",
            format!("the container's mappings are not those of pod {sandbox_id}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(user: Option<Option<&str>>, uids: Vec<LinuxIdMapping>) -> Spec {
        let mut spec = Spec::default();
        let mut linux = spec.linux().clone().unwrap();
        let mut nss = linux.namespaces().clone().unwrap();
        nss.retain(|n| n.typ() != LinuxNamespaceType::User);
        if let Some(path) = user {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(LinuxNamespaceType::User);
            ns.set_path(path.map(PathBuf::from));
            nss.push(ns);
        }
        linux.set_namespaces(Some(nss));
        linux.set_gid_mappings(Some(uids.clone()));
        linux.set_uid_mappings(Some(uids));
        spec.set_linux(Some(linux));
        spec
    }

    #[test]
    fn a_sandbox_makes_a_namespace_that_maps_root() {
        use crate::host::userns::mapping;
        let cases = [
            (spec_with(None, vec![]), "has none"),
            (
                spec_with(
                    Some(Some("/proc/1/ns/user")),
                    vec![mapping(0, 3_000_000, 10)],
                ),
                "makes its own",
            ),
            (spec_with(Some(None), vec![]), "needs uidMappings"),
            (
                spec_with(Some(None), vec![mapping(1, 3_000_000, 10)]),
                "must map its root",
            ),
        ];
        for (spec, why) in cases {
            let err = make_pod_userns("pod", &spec).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_container_joins_only_its_pods_namespace() {
        // Without a pod namespace: refused whatever the spec asks.
        let joining = spec_with(Some(Some("/proc/1/ns/user")), vec![]);
        let err = check_joins_pod(&joining, None, "pod").unwrap_err();
        assert!(err.to_string().contains("has none in this shim"), "{err}");
        assert!(valid_task_id("abc") && !valid_task_id(".x") && !valid_task_id("a/b"));
    }
}
