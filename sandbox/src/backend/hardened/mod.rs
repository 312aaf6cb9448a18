//! The hardened backend: the native backend with a narrower spec.
//!
//! Containers are made exactly as [`NativeBackend`] makes them (libcontainer
//! in the fork server, the same reaper, stdio and cgroups); the only
//! difference is a transformation of the spec before `create` and of the
//! process before `exec` ([`policy`]): privileged containers refused,
//! `no_new_privs`, capabilities only when added and permitted, more of
//! `/proc` and `/sys` masked, `/sys` read-only, no host devices, and a
//! default-deny syscall filter ([`seccomp`], listed in [`allowlist`])
//! intersected with the pod's own profile. libcontainer loads that filter in
//! every container and exec process, after which it cannot be widened.
//!
//! Every pod also gets a user namespace of its own ([`userns`]): its root is
//! an unprivileged host uid/gid range from a pool, the sandbox and the
//! pod's containers join it, and their rootfs is an idmapped mount
//! ([`crate::host::idmap`]) so the image's root-owned files are root's
//! inside. Bind mount sources under directories that root only may search
//! (containerd 1.6 keeps the pods' `resolv.conf` and `/dev/shm` under 0700
//! dirs) are relayed through the task's bundle while it is created
//! ([`crate::host::bind_relay`]). A `hostUsers: false` pod is run the same
//! way: its user namespace is the pool's range, not the one kubelet sent
//! (kubelet's ranges are not coordinated with the pool's, and two pods
//! sharing host ids would share their files).

pub mod allowlist;
pub mod exec_userns;
pub mod policy;
pub mod seccomp;
pub mod userns;

use crate::host::{bind_relay, idmap, userns_spec};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::runtime::{Capability, LinuxResources, Spec};

use crate::backend::native::{layers_dir, valid_task_id, CreateExtras, ExecUserns, NativeBackend};
use crate::backend::{
    locked, Backend, BackendError, ExecSpec, ExitSink, ProcessInfo, Result, TaskKind, TaskSpec,
    TaskStats,
};
pub use userns::HardenedOptions;
use userns::{PodUserns, UsernsPool};

const NAME: &str = "hardened";

/// A pod's user namespace and the tasks in it: the range is freed when the
/// last of them (normally the sandbox) is deleted.
struct Pod {
    userns: PodUserns,
    tasks: HashSet<String>,
}

/// A task's spec as this backend rewrote it, and what it found in it.
struct HardenedSpec {
    spec: Spec,
    /// The capabilities the pod added (its execs get the same).
    added: Vec<Capability>,
    rootfs: PathBuf,
    fork_netns: Option<PathBuf>,
    net_sysctls: BTreeMap<String, String>,
    /// Bind sources relayed through the bundle, removed once the task is
    /// created (or not).
    relay: Option<bind_relay::BindRelay>,
}

/// The hardened backend. One per shim; see the module docs.
pub struct HardenedBackend {
    native: NativeBackend,
    /// Per task, the capabilities its pod added (exec processes get the same).
    added_caps: Mutex<HashMap<String, Vec<Capability>>>,
    pool: UsernsPool,
    /// Per sandbox id.
    pods: Mutex<HashMap<String, Pod>>,
    /// Per task, the rootfs it has an idmapped mount on.
    idmapped: Mutex<HashMap<String, idmap::IdmappedRootfs>>,
}

/// The pool's default directory: `.userns-pool` beside the state root,
/// shared by every shim of the host (whatever its namespace).
fn default_pool_dir(state_root: &Path) -> PathBuf {
    state_root
        .parent()
        .unwrap_or(state_root)
        .join(".userns-pool")
}

/// A task's pod: its sandbox id.
fn pod_of(task: &TaskSpec) -> &str {
    match &task.kind {
        TaskKind::Sandbox => &task.id,
        TaskKind::Container { sandbox_id } => sandbox_id,
    }
}

impl HardenedBackend {
    /// Like [`NativeBackend::new`], with the default options.
    pub fn new(state_root: PathBuf, exits: ExitSink, fork_server: PathBuf) -> Result<Self> {
        Self::with_options(state_root, exits, fork_server, &HardenedOptions::default())
    }

    /// Like [`NativeBackend::new`]; `options` configure the user namespace
    /// pool (by default `.userns-pool` beside the state root).
    pub fn with_options(
        state_root: PathBuf,
        exits: ExitSink,
        fork_server: PathBuf,
        options: &HardenedOptions,
    ) -> Result<Self> {
        let native = NativeBackend::new(state_root, exits, fork_server)?;
        let pool = UsernsPool::new(options, default_pool_dir(native.state_root()))?;
        Ok(HardenedBackend {
            native,
            added_caps: Mutex::new(HashMap::new()),
            pool,
            pods: Mutex::new(HashMap::new()),
            idmapped: Mutex::new(HashMap::new()),
        })
    }

    /// Removes what a dead shim left of task `id` beyond the native
    /// backend's state: the idmapped layer mounts of an overlay rootfs (the
    /// rootfs itself is unmounted by the caller) and the bind relays of a
    /// create it died in, and the pod's user namespace range once nothing
    /// lives in it (else the next allocation reclaims it, once nothing does).
    ///
    /// Shims before the layers moved under the state root kept them in
    /// `<pool>/layers/<id>` (the pool dir from `options`), shared by every
    /// containerd namespace: those are removed too, unless a mounted
    /// overlay still stacks them (the same id's live task in another
    /// namespace).
    pub fn force_cleanup(state_root: &Path, id: &str, options: &HardenedOptions) {
        if !valid_task_id(id) {
            return;
        }
        NativeBackend::force_cleanup_userns(state_root, id);
        // As the backend saw it (NativeBackend canonicalises its root).
        let root = state_root
            .canonicalize()
            .unwrap_or_else(|_| state_root.to_path_buf());
        let pool = options
            .userns_pool_dir
            .clone()
            .unwrap_or_else(|| default_pool_dir(&root));
        let old = pool.join("layers").join(id);
        if old.exists() {
            if idmap::layers_in_use(&old) {
                tracing::warn!(id, dir = %old.display(), "leaving layer mounts an overlay still uses");
            } else {
                idmap::remove_layer_mounts(&old);
                let _ = std::fs::remove_dir(pool.join("layers"));
            }
        }
        userns::free_stale_slots(&pool, id);
    }

    /// The native backend underneath (state root, fork server pid).
    pub fn native(&self) -> &NativeBackend {
        &self.native
    }

    /// Where the user namespace pool keeps its slots.
    pub fn userns_pool_dir(&self) -> &Path {
        self.pool.dir()
    }

    /// The host uid range (first, count) of a pod's user namespace.
    pub fn pod_id_range(&self, sandbox_id: &str) -> Option<(u32, u32)> {
        locked(&self.pods)
            .get(sandbox_id)
            .map(|p| (p.userns.first_id(), p.userns.count()))
    }

    /// Loads the bundle's spec, hardens it and puts it in `pod`'s user
    /// namespace, in memory (the native backend writes it once when it
    /// creates the task); with it the added capabilities, the rootfs and the
    /// network namespace the fork server enters for the task.
    ///
    /// Bind sources the pod cannot reach are relayed through the bundle
    /// (the last step, so nothing is left mounted if an earlier one fails).
    fn harden_bundle(&self, task: &TaskSpec, pod: &PodUserns) -> Result<HardenedSpec> {
        let path = task.bundle.join("config.json");
        let invalid = |reason: String| BackendError::InvalidArgument {
            what: format!("OCI spec {}", path.display()),
            reason,
        };
        let mut spec = Spec::load(&path).map_err(|e| invalid(e.to_string()))?;
        // Only this backend sets them (the executor trusts them).
        let forged = crate::backend::native::strip_internal_annotations(&mut spec);
        if !forged.is_empty() {
            tracing::warn!(
                id = task.id,
                ?forged,
                "ignoring internal annotations in an incoming spec"
            );
        }
        userns_spec::check_proc_mounts(&spec)?;
        let added = policy::harden_spec(&mut spec)?;
        let ns = pod.namespace();
        let joined = userns_spec::join_pod_userns(
            &mut spec,
            &ns.path(),
            ns.uid_mappings(),
            ns.gid_mappings(),
        )?;
        let rootfs = userns_spec::rootfs_of(&task.bundle, &spec);
        userns_spec::make_rootfs_reachable(&task.bundle, &rootfs, pod.first_id())?;
        let state_root = self.native.state_root();
        let relay = bind_relay::relay_unreachable_sources(
            &mut spec,
            &task.bundle,
            pod.first_id(),
            &bind_relay::record_path(state_root, &task.id),
            &[state_root, self.pool.dir()],
        )?;
        Ok(HardenedSpec {
            spec,
            added,
            rootfs,
            fork_netns: joined.fork_netns,
            net_sysctls: joined.net_sysctls,
            relay,
        })
    }

    /// Makes the task: spec, idmapped rootfs, native create. Undoes the
    /// mount if a later step fails; removes the bind relays either way
    /// (the container has its own mounts once created).
    fn create_in_pod(
        &self,
        task: &TaskSpec,
        pods: &HashMap<String, Pod>,
    ) -> Result<(u32, Vec<Capability>)> {
        let pod = pods.get(pod_of(task)).ok_or_else(|| BackendError::Failed {
            op: "create",
            id: task.id.clone(),
            reason: format!(
                "pod {} has no user namespace in this shim (its sandbox was not created here)",
                pod_of(task)
            ),
        })?;
        let began = std::time::Instant::now();
        let HardenedSpec {
            spec,
            added,
            rootfs,
            fork_netns,
            net_sysctls,
            relay,
        } = self.harden_bundle(task, &pod.userns)?;
        tracing::debug!(
            id = task.id,
            harden_ms = began.elapsed().as_secs_f64() * 1e3,
            "spec hardened"
        );
        let extras = CreateExtras {
            fork_netns,
            net_sysctls,
            exec_userns: Some(ExecUserns {
                path: pod.userns.path(),
                inode: pod.userns.inode(),
            }),
        };
        let made = self.create_hardened(task, pod, spec, rootfs, extras);
        if let Some(relay) = relay {
            relay.remove();
        }
        made.map(|pid| (pid, added))
    }

    /// [`Self::create_in_pod`] once the spec is ready: the idmapped rootfs
    /// and the native create.
    fn create_hardened(
        &self,
        task: &TaskSpec,
        pod: &Pod,
        spec: Spec,
        rootfs: PathBuf,
        extras: CreateExtras,
    ) -> Result<u32> {
        let scratch = layers_dir(self.native.state_root(), &task.id);
        let root = (pod.userns.first_id(), pod.userns.first_id());
        let began = std::time::Instant::now();
        let mounted =
            idmap::mount_idmapped(&rootfs, pod.userns.fd(), root, &scratch).map_err(|e| {
                BackendError::Failed {
                    op: "idmap the rootfs",
                    id: task.id.clone(),
                    reason: e.to_string(),
                }
            })?;
        tracing::debug!(
            id = task.id,
            idmap_ms = began.elapsed().as_secs_f64() * 1e3,
            "rootfs idmapped"
        );
        match self.native.create_with(task, spec, extras) {
            Ok(pid) => {
                locked(&self.idmapped).insert(task.id.clone(), mounted);
                Ok(pid)
            }
            Err(e) => {
                if let Err(u) = mounted.unmount() {
                    tracing::warn!(id = task.id, error = %u, "unmounting the idmapped rootfs");
                }
                Err(e)
            }
        }
    }

    /// Forgets `id`; frees its pod's range when it was the pod's last task.
    fn leave_pod(&self, id: &str) {
        let mut pods = locked(&self.pods);
        if let Some((_, pod)) = crate::host::userns::leave_pod(&mut pods, id, |p| &mut p.tasks) {
            pod.userns.release();
        }
    }
}

impl Backend for HardenedBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, task: &TaskSpec) -> Result<u32> {
        // Held across the create: a pod's tasks are created one at a time.
        let mut pods = locked(&self.pods);
        // Before anything touches its bundle or mounts (the id names a
        // directory).
        if !valid_task_id(&task.id) {
            return Err(BackendError::InvalidArgument {
                what: "task id".into(),
                reason: format!("{:?} is not a valid container id", task.id),
            });
        }
        if locked(&self.idmapped).contains_key(&task.id) {
            return Err(BackendError::AlreadyExists {
                what: "task",
                id: task.id.clone(),
            });
        }
        let new_pod = task.kind == TaskKind::Sandbox;
        let began = std::time::Instant::now();
        if new_pod {
            if pods.contains_key(&task.id) {
                return Err(BackendError::AlreadyExists {
                    what: "pod",
                    id: task.id.clone(),
                });
            }
            let slot = self.pool.allocate(&task.id)?;
            let allocated = began.elapsed();
            let userns = PodUserns::create(slot)?;
            tracing::debug!(
                id = task.id,
                allocate_ms = allocated.as_secs_f64() * 1e3,
                create_ms = (began.elapsed() - allocated).as_secs_f64() * 1e3,
                "pod user namespace made"
            );
            pods.insert(
                task.id.clone(),
                Pod {
                    userns,
                    tasks: HashSet::new(),
                },
            );
        }
        let userns_made = began.elapsed();
        let (pid, added) = match self.create_in_pod(task, &pods) {
            Ok(made) => made,
            Err(e) => {
                if new_pod {
                    if let Some(pod) = pods.remove(&task.id) {
                        pod.userns.release();
                    }
                }
                return Err(e);
            }
        };
        let pod = pods
            .get_mut(pod_of(task))
            .expect("checked in create_in_pod");
        pod.tasks.insert(task.id.clone());
        let (first_id, ids) = (pod.userns.first_id(), pod.userns.count());
        drop(pods);
        tracing::info!(
            id = task.id,
            ?added,
            first_id,
            ids,
            userns_ms = userns_made.as_secs_f64() * 1e3,
            total_ms = began.elapsed().as_secs_f64() * 1e3,
            "hardened task created"
        );
        locked(&self.added_caps).insert(task.id.clone(), added);
        Ok(pid)
    }

    fn start(&self, id: &str) -> Result<u32> {
        self.native.start(id)
    }

    fn exec(&self, exec: &ExecSpec) -> Result<()> {
        let added = locked(&self.added_caps)
            .get(&exec.container_id)
            .cloned()
            .unwrap_or_default();
        let mut exec = exec.clone();
        policy::harden_process(&mut exec.process, &added);
        // The native backend lets it join the pod's user namespace from the
        // executor, which then drops to the container's capabilities (see
        // [`exec_userns`]).
        self.native.exec(&exec)
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.native.start_exec(id, exec_id)
    }

    fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        self.native.kill(id, exec_id, signal, all)
    }

    fn delete(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        self.native.delete(id, exec_id)?;
        if exec_id.is_none() {
            locked(&self.added_caps).remove(id);
            if let Some(mounted) = locked(&self.idmapped).remove(id) {
                if let Err(e) = mounted.unmount() {
                    tracing::warn!(id, error = %e, "unmounting the idmapped rootfs");
                }
            }
            self.leave_pod(id);
        }
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        self.native.pids(id)
    }

    fn pause(&self, id: &str) -> Result<()> {
        self.native.pause(id)
    }

    fn resume(&self, id: &str) -> Result<()> {
        self.native.resume(id)
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.native.update(id, resources)
    }

    fn stats(&self, id: &str) -> Result<TaskStats> {
        self.native.stats(id)
    }

    fn resize_pty(&self, id: &str, exec_id: Option<&str>, width: u16, height: u16) -> Result<()> {
        self.native.resize_pty(id, exec_id, width, height)
    }

    fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        self.native.close_stdin(id, exec_id)
    }

    fn reopen_logs(&self, id: &str) -> Result<()> {
        self.native.reopen_logs(id)
    }
}
