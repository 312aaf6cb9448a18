//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status
//! and listing. A pod is a directory under `run_dir/pods/<id>/` (its
//! `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`, a pod-shared `/dev/shm`
//! and the pause bundle), a shim, and the pause task in it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use caisson_proto::cri;
use caisson_sandbox::host::pidfd::Pidfd;
use containerd_shim_protos::api;

use super::{new_id, now_ns, sorted, ChangeKind, Runtime};
use crate::metrics_http::phase;
use crate::spec::{self, PodContext};
use crate::status::{CriError, CriResult};
use crate::store::{encode, pod_name_key, ContainerState, PodRecord, PodState};

/// Size of a pod's /dev/shm, as containerd and Docker default it.
const SHM_SIZE: &str = "size=65536k";
/// How long the pause process gets to exit on SIGTERM before SIGKILL.
const PAUSE_STOP_GRACE: Duration = Duration::from_secs(2);

/// How long RemovePodSandbox waits for a pod's shim to exit after Shutdown
/// (it removes its socket, lock and log on the way out).
const SHIM_EXIT_GRACE: Duration = Duration::from_secs(10);

/// The pod's shim process, from the pid it gives over its Task API
/// (`Connect`), as a pidfd (a reused pid is not waited on); `None` when the
/// shim does not answer or is already gone.
async fn shim_process(client: &crate::shims::ShimClient, pod_id: &str) -> Option<Pidfd> {
    let pid = client.shim_pid(pod_id).await.ok().filter(|&pid| pid > 0)?;
    Pidfd::open(pid).ok()
}

/// Waits, up to [`SHIM_EXIT_GRACE`], for a shim told to shut down to exit,
/// so that what it removes on its way out (socket, lock, log) is gone when
/// RemovePodSandbox returns. A shim that outlives the wait is logged, not an
/// error: the pod is removed all the same.
async fn wait_shim_gone(pod_id: &str, shim: Pidfd) {
    let pid = shim.pid();
    let exited = tokio::task::spawn_blocking(move || shim.wait_exited(SHIM_EXIT_GRACE))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match exited {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            pod_id = %pod_id,
            shim_pid = pid,
            "the pod's shim is still running {}s after Shutdown",
            SHIM_EXIT_GRACE.as_secs()
        ),
        Err(e) => {
            tracing::warn!(pod_id = %pod_id, shim_pid = pid, error = %e, "waiting for the pod's shim to exit")
        }
    }
}

/// The pod's own dir.
pub fn pod_dir(rt: &Runtime, id: &str) -> PathBuf {
    rt.config.pods_dir().join(id)
}

/// The context spec building needs for this pod.
pub fn pod_context(rt: &Runtime, pod: &PodRecord) -> PodContext {
    let dir = pod_dir(rt, &pod.id);
    PodContext {
        pod_id: pod.id.clone(),
        pause_pid: (pod.pause_pid != 0).then_some(pod.pause_pid),
        hostname: std::fs::read_to_string(dir.join("hostname"))
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        hostname_path: dir.join("hostname"),
        hosts_path: dir.join("hosts"),
        resolv_conf_path: dir.join("resolv.conf"),
        shm_path: pod.shm.clone(),
        cgroup_parent: pod.cgroup_parent.clone(),
        netns_path: pod.netns.clone(),
    }
}

fn validate(config: &cri::PodSandboxConfig) -> CriResult<&cri::PodSandboxMetadata> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| CriError::invalid("config.metadata", "is required"))?;
    for (field, value) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        if value.is_empty() {
            return Err(CriError::invalid(
                format!("config.metadata.{field}"),
                "must not be empty",
            ));
        }
    }
    spec::limits::check_metadata(&config.labels, &config.annotations, "config")?;
    if !config.log_directory.is_empty() && !Path::new(&config.log_directory).is_absolute() {
        return Err(CriError::invalid(
            "config.log_directory",
            "must be an absolute path",
        ));
    }
    if config.hostname.len() > 64 || config.hostname.contains(['/', '\0']) {
        return Err(CriError::invalid(
            "config.hostname",
            "must be at most 64 characters, without '/'",
        ));
    }
    Ok(meta)
}

/// cgroupfs form of the pod's parent cgroup: kubelet's (a systemd slice is
/// converted), else the pod's place in Caisson's QoS hierarchy under the
/// configured `cgroup_parent`, by its class.
fn cgroup_parent(rt: &Runtime, config: &cri::PodSandboxConfig, uid: &str) -> CriResult<String> {
    let requested = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    if requested.is_empty() {
        return Ok(rt.qos.pod_cgroup(pod_resources(config).class(), uid));
    }
    caisson_cgroups::path::cgroupfs_parent(&requested)
        .map_err(|e| CriError::invalid("config.linux.cgroup_parent", e.to_string()))
}

/// The pod's QoS figures: its pod-level resources (the sums of its
/// containers' as kubelet sends them) and its overhead.
pub(super) fn pod_resources(config: &cri::PodSandboxConfig) -> caisson_cgroups::PodResources {
    let linux = config.linux.as_ref();
    let view = |r: Option<&cri::LinuxContainerResources>| {
        r.map(crate::spec::qos_resources).unwrap_or_default()
    };
    caisson_cgroups::PodResources {
        resources: view(linux.and_then(|l| l.resources.as_ref())),
        overhead: view(linux.and_then(|l| l.overhead.as_ref())),
    }
}

/// The pod-level limits besides CPU and memory: cpuset, swap, hugetlb and
/// `unified` from `linux.resources` (checked here, before anything is
/// made), pids from `[cgroups] pod_pids_limit`.
fn pod_extras(
    rt: &Runtime,
    config: &cri::PodSandboxConfig,
) -> CriResult<caisson_cgroups::PodExtras> {
    let r = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .unwrap_or_default();
    let field = "config.linux.resources";
    caisson_cgroups::unified::check_all(&r.unified)
        .map_err(|e| super::update::unified_refused(field, &e))?;
    // The container checks (ranges, cpuset lists, page sizes), named as
    // the pod's fields; the overhead too.
    for (name, resources) in [
        (
            "resources",
            config.linux.as_ref().and_then(|l| l.resources.as_ref()),
        ),
        (
            "overhead",
            config.linux.as_ref().and_then(|l| l.overhead.as_ref()),
        ),
    ] {
        let Some(resources) = resources else {
            continue;
        };
        crate::spec::update_resources(resources).map_err(|e| match CriError::from(e) {
            CriError::InvalidArgument { field, reason } => CriError::InvalidArgument {
                field: format!(
                    "config.linux.{name}{}",
                    field.strip_prefix("linux").unwrap_or(&field)
                ),
                reason,
            },
            other => other,
        })?;
    }
    let mut unified: Vec<(String, String)> = r
        .unified
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    unified.sort();
    let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let hugepages = pod_hugepages(rt, &r, field)?;
    Ok(caisson_cgroups::PodExtras {
        pids_limit: (rt.config.cgroups.pod_pids_limit != 0)
            .then_some(rt.config.cgroups.pod_pids_limit),
        cpuset_cpus: nonempty(&r.cpuset_cpus),
        cpuset_mems: nonempty(&r.cpuset_mems),
        memory_swap: (r.memory_swap_limit_in_bytes != 0).then_some(r.memory_swap_limit_in_bytes),
        hugepages,
        unified,
    })
}

/// The pod's hugepage limits (page size, bytes) as its cgroup gets them:
/// all of them where the hugetlb controller is usable; none where it is
/// not and they are all 0 (skipped, as for containers); refused, naming
/// the limit, where one is positive.
fn pod_hugepages(
    rt: &Runtime,
    r: &cri::LinuxContainerResources,
    field: &str,
) -> CriResult<Vec<(String, u64)>> {
    use caisson_sandbox::host::hugetlb;
    let pairs: Vec<(&str, i64)> = r
        .hugepage_limits
        .iter()
        .map(|h| {
            (
                h.page_size.as_str(),
                i64::try_from(h.limit).unwrap_or(i64::MAX),
            )
        })
        .collect();
    match hugetlb::fit(rt.hugetlb_usable(), &pairs)
        .map_err(|e| super::update::hugetlb_refused(field, &e))?
    {
        hugetlb::Fit::Keep => Ok(r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect()),
        hugetlb::Fit::Skip(page_sizes) => {
            hugetlb::warn_skipped_once(&page_sizes);
            Ok(vec![])
        }
    }
}

/// Creates and sizes the pod's cgroup when it is in Caisson's QoS hierarchy
/// (kubelet makes its own); teardown removes it.
fn create_pod_cgroup(
    rt: &Runtime,
    pod: &PodRecord,
    config: &cri::PodSandboxConfig,
) -> CriResult<()> {
    let tree = &rt.qos;
    let resources = pod_resources(config);
    if pod.cgroup_parent != tree.pod_cgroup(resources.class(), &pod.uid) {
        return Ok(());
    }
    let extras = pod_extras(rt, config)?;
    tree.create_pod(&pod.uid, &resources, &extras)
        .map_err(|e| match e {
            caisson_cgroups::UnifiedApplyError::Unified(e) => {
                super::update::unified_refused("config.linux.resources", &e)
            }
            caisson_cgroups::UnifiedApplyError::Invalid { field, reason } => {
                CriError::invalid(format!("config.linux.resources.{field}"), reason)
            }
            caisson_cgroups::UnifiedApplyError::Cgroup(
                e @ caisson_cgroups::CgroupError::ControllerMissing { .. },
            ) => CriError::FailedPrecondition(format!("config.linux.resources: {e}")),
            e => CriError::internal("creating the pod cgroup", e),
        })?;
    if let Err(e) = tree.refresh_burstable() {
        tracing::warn!(error = %e, "updating the burstable tier's cpu shares");
    }
    tracing::info!(pod_id = %pod.id, cgroup = %pod.cgroup_parent, class = resources.class().as_str(), "pod cgroup created");
    Ok(())
}

/// Writes the pod's /etc files and mounts its /dev/shm.
fn prepare_pod_files(
    dir: &Path,
    config: &cri::PodSandboxConfig,
    host_net: bool,
    shm: bool,
) -> std::io::Result<(String, Option<PathBuf>)> {
    std::fs::create_dir_all(dir)?;
    let hostname = if host_net {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else if config.hostname.is_empty() {
        config
            .metadata
            .as_ref()
            .map(|m| m.name.chars().take(63).collect())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    std::fs::write(dir.join("hosts"), hosts_file(host_net, &hostname, None))?;
    let resolv = match &config.dns_config {
        Some(dns)
            if !(dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty()) =>
        {
            let mut out = String::new();
            for s in &dns.servers {
                out.push_str(&format!("nameserver {s}\n"));
            }
            if !dns.searches.is_empty() {
                out.push_str(&format!("search {}\n", dns.searches.join(" ")));
            }
            if !dns.options.is_empty() {
                out.push_str(&format!("options {}\n", dns.options.join(" ")));
            }
            out
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    let shm_path = if shm {
        let p = dir.join("shm");
        std::fs::create_dir_all(&p)?;
        nix::mount::mount(
            Some("shm"),
            &p,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(format!("mode=1777,{SHM_SIZE}").as_str()),
        )
        .map_err(std::io::Error::from)?;
        Some(p)
    } else {
        None
    };
    Ok((hostname, shm_path))
}

/// The pod's /etc/hosts: the host's for a hostNetwork pod, else localhost
/// and the pod's hostname on its IP (127.0.1.1 until it has one).
fn hosts_file(host_net: bool, hostname: &str, pod_ip: Option<&str>) -> String {
    if host_net {
        return std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    }
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n{}\t{hostname}\n",
        pod_ip.unwrap_or("127.0.1.1")
    )
}

/// Lays out the pause bundle: `config.json`, and for the built-in pause
/// `rootfs`, a read-only bind of the node's [`shared_pause_rootfs`]; for a
/// native pod, the spec's root is that dir itself instead when it already
/// has every mount point the spec needs ([`uses_shared_root`]).
fn write_pause_bundle(
    bundle: &Path,
    spec: &mut oci_spec::runtime::Spec,
    shared_rootfs: Option<&Path>,
    backend: &str,
) -> std::io::Result<()> {
    if let Some(shared) = shared_rootfs {
        if uses_shared_root(spec, shared, backend) {
            std::fs::create_dir_all(bundle)?;
            if let Some(root) = spec.root_mut() {
                root.set_path(shared.to_path_buf());
            }
        } else {
            let rootfs = bundle.join(spec::ROOTFS_DIR);
            std::fs::create_dir_all(&rootfs)?;
            bind_read_only(shared, &rootfs)?;
        }
    }
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?,
    )
}

/// Whether a pod's pause runs on the shared pause rootfs itself rather than
/// a bind of it in its bundle: one host mount fewer per pod (each is a line
/// every libcontainer build reads in `/proc/self/mountinfo`, several times)
/// and a mount and an unmount fewer per pod. Native pods only: the
/// hardened and user-namespace pods idmap their rootfs (a mount of their
/// own), an `oci` runtime or a guest gets the bundle as containerd would
/// give it. And only when every mount point of the spec is there already,
/// in the shared dir or in an earlier mount of the spec (`/sys/fs/cgroup`
/// in `/sys`'s sysfs): libcontainer makes a missing one in the rootfs,
/// which must never be the dir all pods share (a bind is read-only; the
/// shared dir is not, on the host); the pause's own root is read-only
/// inside it.
fn uses_shared_root(spec: &oci_spec::runtime::Spec, shared: &Path, backend: &str) -> bool {
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    // A pod in a user namespace (`hostUsers: false`) has its rootfs
    // idmapped and made reachable by its ids, in place.
    let userns = spec.linux().as_ref().is_some_and(|l| {
        l.uid_mappings().is_some()
            || l.namespaces()
                .iter()
                .flatten()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
    });
    backend == "native"
        && !userns
        && spec.root().as_ref().and_then(|r| r.readonly()) == Some(true)
        && mounts.iter().enumerate().all(|(i, m)| {
            let dest = m.destination();
            let clean = dest.is_absolute()
                && !dest
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            let in_earlier_mount = mounts[..i].iter().any(|earlier| {
                dest != earlier.destination() && dest.starts_with(earlier.destination())
            });
            clean
                && (in_earlier_mount
                    || shared
                        .join(dest.strip_prefix("/").unwrap_or(dest))
                        .symlink_metadata()
                        .is_ok())
        })
}

/// Binds `source` on `target` read-only (and nosuid, nodev).
fn bind_read_only(source: &Path, target: &Path) -> std::io::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(e.into());
    }
    Ok(())
}

/// The built-in pause's rootfs, made once per pause binary under `run_dir`
/// and bound read-only into every pod's bundle: `pause`, the mount points
/// of the pause's mounts (`proc`, `dev/…`, `sys`, `etc/resolv.conf`), nothing
/// else. Each pod had its own copy, four directories and a file made on the
/// run dir's filesystem in every RunPodSandbox (about 1.5 ms of CPU on an
/// ext4 `/run`). Named by the binary's digest: a new binary gets a new dir,
/// and one that pods of an earlier caissond still use stays as it is.
pub(super) fn shared_pause_rootfs(run_dir: &Path, pause_binary: &Path) -> std::io::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let binary = std::fs::read(pause_binary)?;
    let digest = hex::encode(Sha256::digest(&binary));
    let parent = run_dir.join("pause-rootfs");
    // The layout's version goes in the name too.
    let dir = parent.join(format!("{}-1", &digest[..16]));
    if dir.join("pause").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(&parent)?;
    // Every mount point, those under /dev included: runc and libcontainer
    // put a tmpfs on /dev first, runsc makes them in the rootfs.
    for d in ["proc", "sys", "etc", "dev/pts", "dev/shm", "dev/mqueue"] {
        std::fs::create_dir_all(tmp.path().join(d))?;
    }
    std::fs::write(tmp.path().join("etc/resolv.conf"), b"")?;
    let pause = tmp.path().join("pause");
    std::fs::write(&pause, &binary)?;
    std::fs::set_permissions(&pause, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(tmp.keep(), &dir)?;
    Ok(dir)
}

/// Unmounts and deletes a pod dir (idempotent; used for cleanup and recovery).
pub fn remove_pod_dir(dir: &Path) {
    for sub in ["shm", "bundle/rootfs"] {
        let p = dir.join(sub);
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "removing pod dir");
        }
    }
}

/// Marks, in the pod's dir, a pod cgroup that kubelet named but had not
/// made (crictl, a standalone node): libcontainer makes it with the pause's
/// cgroup, and teardown removes it. One kubelet made is kubelet's to
/// remove, as with containerd and CRI-O (it may already hold a replacement
/// sandbox's pause).
const PARENT_MADE_MARKER: &str = "cgroup-parent-made";

/// Whether caissond (or the shim for it) made the pod's cgroup: its own
/// QoS hierarchy's, or a `cgroup_parent` marked at RunPodSandbox.
fn made_pod_cgroup(rt: &Runtime, pod: &PodRecord) -> bool {
    rt.qos.holds_pod_cgroup(&pod.cgroup_parent, &pod.uid)
        || pod_dir(rt, &pod.id).join(PARENT_MADE_MARKER).exists()
}

/// Marks the pod's `cgroup_parent` as caissond's when it does not exist
/// yet (before anything makes it).
fn mark_new_cgroup_parent(rt: &Runtime, pod: &PodRecord) -> CriResult<()> {
    use caisson_cgroups::CgroupFs;
    if pod.cgroup_parent.trim_matches('/').is_empty() || made_pod_cgroup(rt, pod) {
        return Ok(());
    }
    let root = rt.qos.fs();
    let controller = if root.mode().is_v1() { "memory" } else { "" };
    if root.dir(controller, &pod.cgroup_parent).exists() {
        return Ok(());
    }
    let dir = pod_dir(rt, &pod.id);
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join(PARENT_MADE_MARKER), &pod.cgroup_parent))
        .map_err(|e| CriError::internal("writing the pod dir", e))
}

/// Removes the pause's cgroup and then, when caissond made it
/// (`remove_parent`), the pod's own, from every hierarchy (the shim
/// removes a task's when it deletes the task; a failed create or a lost
/// shim can leave one; containers' go with RemoveContainer). The pod
/// cgroup is removed only once empty.
async fn remove_pod_cgroups(
    root: &caisson_cgroups::fs::CgroupRoot,
    parent: &str,
    pod_id: &str,
    remove_parent: bool,
) {
    use caisson_cgroups::CgroupFs;
    let pause = format!("{}/{pod_id}", parent.trim_end_matches('/'));
    if let Err(e) = super::update::remove_cgroup_tree(root, &pause).await {
        tracing::warn!(cgroup = pause, error = %e, "pause cgroup not removed");
    }
    if !remove_parent || parent.trim_matches('/').is_empty() {
        return;
    }
    if let Err(e) = root.remove_one(parent) {
        tracing::debug!(cgroup = parent, error = %e, "pod cgroup not removed");
    }
}

/// The call label of RunPodSandbox's phases.
pub(super) const RUN: &str = "RunPodSandbox";

impl Runtime {
    pub async fn run_pod_sandbox(
        self: &Arc<Self>,
        mut config: cri::PodSandboxConfig,
        handler: &str,
    ) -> CriResult<String> {
        let meta = validate(&config)?.clone();
        let (handler_name, handler_cfg) = self.config.handler(handler).ok_or_else(|| {
            CriError::invalid(
                "runtime_handler",
                format!("no runtime handler {handler:?} is configured"),
            )
        })?;
        // A VM has a network stack of its own: it cannot be the node's.
        if handler_cfg.backend == "microvm" && spec::pod_namespace_modes(&config)?.network_is_host()
        {
            return Err(CriError::invalid(
                "config.linux.security_context.namespace_options.network",
                format!(
                    "handler {handler:?} runs the pod in its own VM, which cannot use the \
                     node's network namespace (hostNetwork)"
                ),
            ));
        }
        // The handler's own cost, unless the pod brings its RuntimeClass's.
        if let Some(overhead) = &handler_cfg.pod_overhead {
            let linux = config.linux.get_or_insert_with(Default::default);
            if linux.overhead.is_none() {
                linux.overhead = Some(overhead.as_cri());
            }
        }
        let (handler_name, backend) = (handler_name.to_string(), handler_cfg.backend.clone());
        let key = pod_name_key(&meta.name, &meta.namespace, &meta.uid, meta.attempt);
        let lock = self.lock_for(&key);
        let _guard = lock.lock().await;
        // kubelet retries a RunPodSandbox that timed out: answer with the same pod.
        let existing = self
            .records()
            .pods
            .values()
            .find(|p| p.name_key() == key)
            .cloned();
        if let Some(p) = existing {
            if p.state == PodState::Ready {
                tracing::info!(pod_id = %p.id, "RunPodSandbox retried: returning the existing pod");
                return Ok(p.id);
            }
            return Err(CriError::AlreadyExists {
                what: "pod sandbox (not ready; remove it first)",
                id: key,
            });
        }
        let id = new_id();
        let span = tracing::info_span!("run_pod_sandbox", pod_id = %id, name = %meta.name);
        let _enter = span.enter();
        let mut pod = PodRecord {
            id: id.clone(),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            attempt: meta.attempt,
            labels: sorted(&config.labels),
            annotations: sorted(&config.annotations),
            created_at: now_ns(),
            state: PodState::NotReady,
            handler: handler_name,
            backend,
            config: encode(&config),
            pause_pid: 0,
            shim_address: String::new(),
            bundle: pod_dir(self, &id).join("bundle"),
            shm: None,
            cgroup_parent: cgroup_parent(self, &config, &meta.uid)?,
            host_network: spec::pod_namespace_modes(&config)?.network_is_host(),
            pause_exited: false,
            netns: None,
            cni_config: None,
            cni_result: None,
            ips: vec![],
            network_released: false,
        };
        drop(_enter);
        // Recorded (NOTREADY) before anything is made, and again as each
        // resource comes to exist (netns, CNI config, shim address): a
        // caissond killed half-way leaves a record that recovery marks
        // exited and RemovePodSandbox tears down, never an orphan.
        pod.shim_address = self.shims.address(&pod.id);
        {
            let _p = phase(RUN, "record");
            self.save_pod(pod.clone())?;
        }
        let cgroup = {
            let _p = phase(RUN, "cgroup");
            mark_new_cgroup_parent(self, &pod).and_then(|()| create_pod_cgroup(self, &pod, &config))
        };
        let started = match cgroup {
            Ok(()) => {
                // The pause will be moved into its cgroup in a few ms. Not
                // earlier: the warm-up holds the kernel's cgroup_mutex while
                // it waits, which the pod cgroup's mkdirs need.
                super::warm_cgroup_moves();
                self.start_pod(&mut pod, &config).await
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(()) => {
                tracing::info!(pod_id = %id, name = %meta.name, namespace = %meta.namespace, "pod sandbox ready");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(pod_id = %id, error = %e, "RunPodSandbox failed: cleaning up");
                let made_parent = made_pod_cgroup(self, &pod);
                self.teardown_pod(&pod).await;
                self.sweep_late_task_cgroup(pod, id, made_parent);
                Err(e)
            }
        }
    }

    /// The pause rootfs: the built-in `caisson-pause` (copied into the bundle)
    /// or, when `pause_image` is set, an overlay of that imported image.
    /// Returns the command to run.
    fn prepare_pause_rootfs(&self, pod: &PodRecord) -> CriResult<Vec<String>> {
        if self.config.pause_image.is_empty() {
            return Ok(vec!["/pause".to_string()]);
        }
        let image = self.images.get(&self.config.pause_image).map_err(|e| {
            if e.is_not_found() {
                CriError::FailedPrecondition(format!(
                    "pause_image {:?} is not in the image store: import it with `caissond images import`",
                    self.config.pause_image
                ))
            } else {
                e.into()
            }
        })?;
        let args: Vec<String> = image
            .config
            .entrypoint
            .iter()
            .chain(&image.config.cmd)
            .cloned()
            .collect();
        if args.is_empty() {
            return Err(CriError::FailedPrecondition(format!(
                "pause_image {:?} has neither Entrypoint nor Cmd",
                self.config.pause_image
            )));
        }
        self.images.create_rootfs(&pod.id, &image.id.to_string())?;
        self.images
            .mount_rootfs(&pod.id, Some(&pod.bundle.join(spec::ROOTFS_DIR)))?;
        Ok(args)
    }

    async fn start_pod(
        self: &Arc<Self>,
        pod: &mut PodRecord,
        config: &cri::PodSandboxConfig,
    ) -> CriResult<()> {
        self.pin_pod_netns(pod).await?;
        // CNI ADD runs while the pod's files, the pause bundle, the shim and
        // the pause itself are made and started: none of them needs the
        // pod's IP but /etc/hosts, written again once it is known (the pause
        // joins the pinned netns, whatever CNI does in it). Both run to their
        // end (a failure of one never abandons the other half-way), and the
        // pod takes what the network half recorded before either error is
        // answered, so that teardown releases all of it.
        let mut network = pod.clone();
        let (added, started) = if pod.backend == "microvm" {
            // Except for a VM: it takes the pod's interfaces, with their
            // addresses and routes, from the netns when it boots, so CNI ADD
            // must be over before its sandbox is made (run together, a VM
            // could boot with an interface that has no address yet, or none).
            let added = self.add_pod_network(&mut network, config).await;
            let started = match added {
                Ok(()) => self.start_pause(pod, config).await,
                Err(_) => Err(CriError::FailedPrecondition(
                    "the pod's network failed: no VM was started".into(),
                )),
            };
            (added, started)
        } else {
            tokio::join!(
                self.add_pod_network(&mut network, config),
                self.start_pause(pod, config)
            )
        };
        pod.cni_config = network.cni_config;
        pod.cni_result = network.cni_result;
        pod.ips = network.ips;
        pod.network_released = network.network_released;
        added?;
        let (hostname, client) = started?;
        if let Some(ip) = pod.ips.first().filter(|_| !pod.host_network) {
            let hosts = hosts_file(false, &hostname, Some(ip));
            std::fs::write(pod_dir(self, &pod.id).join("hosts"), hosts)
                .map_err(|e| CriError::internal("writing the pod's /etc/hosts", e))?;
        }
        pod.state = PodState::Ready;
        {
            let _p = phase(RUN, "record");
            self.save_pod(pod.clone())?;
        }
        // From now on a shim that dies is noticed ([`super::lost_shim`]).
        let _p = phase(RUN, "shim watch");
        self.watch_pod_shim(&client, pod).await;
        Ok(())
    }

    /// [`Self::prepare_pause`], then the pause task created and started.
    /// Its shim's address was recorded before the shim existed, so a crash
    /// from here on is cleaned up by recovery. Answers the pod's hostname
    /// and a client of its shim.
    async fn start_pause(
        &self,
        pod: &mut PodRecord,
        config: &cri::PodSandboxConfig,
    ) -> CriResult<(String, crate::shims::ShimClient)> {
        let hostname = self.prepare_pause(pod, config).await?;
        let client = self.client(pod)?;
        let req = api::CreateTaskRequest {
            id: pod.id.clone(),
            bundle: pod.bundle.display().to_string(),
            ..Default::default()
        };
        let phase_create = phase(RUN, "pause create");
        pod.pause_pid = client.create(req).await?;
        drop(phase_create);
        let _p = phase(RUN, "pause start");
        client.start(&pod.id, "").await?;
        Ok((hostname, client))
    }

    /// The pod's files (hostname, /etc/hosts without its IP yet,
    /// resolv.conf, /dev/shm), the pause bundle and the pod's shim; records
    /// nothing (the caller does, once the network half is in). Answers the
    /// pod's hostname.
    async fn prepare_pause(
        &self,
        pod: &mut PodRecord,
        config: &cri::PodSandboxConfig,
    ) -> CriResult<String> {
        let dir = pod_dir(self, &pod.id);
        let host_ipc = spec::pod_namespace_modes(config)?.ipc_is_host();
        let phase_files = phase(RUN, "pod files");
        let (hostname, shm) = prepare_pod_files(&dir, config, pod.host_network, !host_ipc)
            .map_err(|e| CriError::internal("preparing the pod's files", e))?;
        drop(phase_files);
        pod.shm = shm;
        let ctx = pod_context(self, pod);
        let phase_rootfs = phase(RUN, "pause rootfs");
        let pause_args = self.prepare_pause_rootfs(pod)?;
        drop(phase_rootfs);
        let phase_spec = phase(RUN, "spec");
        let mut spec = spec::sandbox_spec(config, &ctx, pause_args)?;
        if let Some(process) = spec.process_mut().as_mut() {
            self.restrict_oom_score_adj(process);
        }
        write_pause_bundle(
            &pod.bundle,
            &mut spec,
            self.pause_rootfs.as_deref(),
            &pod.backend,
        )
        .map_err(|e| CriError::internal("writing the pause bundle", e))?;
        drop(phase_spec);
        // The handler's options (e.g. the oci backend's runtime_path) go to the shim.
        let options = self
            .config
            .handler(&pod.handler)
            .filter(|(_, h)| !h.options.is_empty())
            .map(|(_, h)| serde_json::to_string(&h.options).unwrap_or_default())
            .unwrap_or_default();
        let _p = phase(RUN, "shim start");
        pod.shim_address = self
            .shims
            .start(&pod.id, &pod.bundle, &pod.backend, &options)
            .await?;
        Ok(hostname)
    }

    /// Stops everything a pod runs and releases what it holds, whatever state
    /// it is in. Idempotent; errors are logged, never returned. Answers the
    /// ids of the containers it removed.
    async fn teardown_pod(&self, pod: &PodRecord) -> Vec<String> {
        let containers: Vec<String> = self
            .records()
            .containers
            .values()
            .filter(|c| c.pod_id == pod.id)
            .map(|c| c.id.clone())
            .collect();
        let mut removed = Vec::with_capacity(containers.len());
        // Whether every task went: a shim with a task left ignores Shutdown.
        let mut all_deleted = true;
        for cid in containers {
            match self.remove_container_inner(&cid, true).await {
                Ok(()) => removed.push(cid),
                Err(e) => {
                    all_deleted = false;
                    tracing::warn!(container_id = %cid, error = %e, "removing a container of a removed pod")
                }
            }
        }
        if !pod.shim_address.is_empty() {
            match self.client(pod) {
                Ok(client) => {
                    if !pod.pause_exited {
                        self.stop_pause(&client, pod).await;
                    }
                    if let Err(e) = client.delete(&pod.id, "").await {
                        if !matches!(e, CriError::NotFound { .. }) {
                            all_deleted = false;
                            tracing::warn!(pod_id = %pod.id, error = %e, "deleting the pause task: cleaning up without the pod's shim");
                            // A shim killed between building the pause and
                            // answering left it waiting for a start.
                            self.shims
                                .delete_orphan(&pod.id, &pod.bundle, &pod.backend)
                                .await;
                        }
                    }
                    let shim = shim_process(&client, &pod.id).await;
                    let _ = client.shutdown(&pod.id).await;
                    match shim {
                        Some(shim) if all_deleted => wait_shim_gone(&pod.id, shim).await,
                        Some(shim) => tracing::warn!(
                            pod_id = %pod.id,
                            shim_pid = shim.pid(),
                            "a task of the removed pod could not be deleted: its shim stays up \
                             with it"
                        ),
                        None => {}
                    }
                }
                Err(_) => {
                    self.shims
                        .delete_orphan(&pod.id, &pod.bundle, &pod.backend)
                        .await
                }
            }
            self.drop_client(&pod.id);
        }
        if let Err(e) = self.images.remove_rootfs(&pod.id) {
            if !e.is_not_found() {
                tracing::warn!(pod_id = %pod.id, error = %e, "removing the pause image rootfs");
            }
        }
        self.remove_pod_network(pod).await;
        let made_parent = made_pod_cgroup(self, pod);
        remove_pod_dir(&pod_dir(self, &pod.id));
        remove_pod_cgroups(self.qos.fs(), &pod.cgroup_parent, &pod.id, made_parent).await;
        if let Err(e) = self.qos.refresh_burstable() {
            tracing::debug!(error = %e, "updating the burstable tier's cpu shares");
        }
        let _ = self.store.remove_pod(&pod.id);
        self.forget_pod_record(&pod.id);
        self.forget_lost_shim(&pod.id);
        self.forget_cpu_sample(&super::stats::pod_sample_key(&pod.id));
        removed
    }

    async fn stop_pause(&self, client: &crate::shims::ShimClient, pod: &PodRecord) {
        if client
            .kill(&pod.id, "", libc::SIGTERM as u32, false)
            .await
            .is_err()
        {
            return;
        }
        if let Ok(None) = client.wait(&pod.id, "", PAUSE_STOP_GRACE).await {
            let _ = client.kill(&pod.id, "", libc::SIGKILL as u32, true).await;
            let _ = client.wait(&pod.id, "", Duration::from_secs(10)).await;
        }
    }

    /// Stops every container (no grace: kubelet stopped them already) and the
    /// pause task; the pod becomes NOTREADY. Idempotent.
    pub async fn stop_pod_sandbox(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let Some(pod) = self.find_pod(id) else {
            // kubelet may call again after removal: not an error.
            return Ok(());
        };
        let lock = self.lock_for(&pod.id);
        let _guard = lock.lock().await;
        let running: Vec<String> = self
            .records()
            .containers
            .values()
            .filter(|c| {
                c.pod_id == pod.id
                    && matches!(c.state, ContainerState::Running | ContainerState::Created)
            })
            .map(|c| c.id.clone())
            .collect();
        for cid in running {
            self.stop_container_inner(&cid, 0).await?;
        }
        if !pod.pause_exited {
            if let Ok(client) = self.client(&pod) {
                self.stop_pause(&client, &pod).await;
            }
        }
        let mut updated = self.pod(&pod.id)?;
        updated.state = PodState::NotReady;
        updated.pause_exited = true;
        self.save_pod(updated.clone())?;
        // Like containerd: a failed DEL fails StopPodSandbox (kubelet retries).
        self.release_pod_network(&updated).await?;
        updated.network_released = true;
        self.save_pod(updated)?;
        tracing::info!(pod_id = %pod.id, "pod sandbox stopped");
        Ok(())
    }

    pub async fn remove_pod_sandbox(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let Some(pod) = self.find_pod(id) else {
            return Ok(());
        };
        let lock = self.lock_for(&pod.id);
        let guard = lock.lock().await;
        // Like containerd, each container the pod took with it is DELETED.
        for cid in self.teardown_pod(&pod).await {
            self.notify(&cid, &pod.id, ChangeKind::Deleted);
        }
        drop(guard);
        self.forget_lock(&pod.id);
        self.forget_lock(&pod.name_key());
        tracing::info!(pod_id = %pod.id, "pod sandbox removed");
        Ok(())
    }

    pub fn pod_status(&self, id: &str, verbose: bool) -> CriResult<cri::PodSandboxStatusResponse> {
        let pod = self.pod(id)?;
        let config: cri::PodSandboxConfig = crate::store::decode(&pod.config).unwrap_or_default();
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let status = cri::PodSandboxStatus {
            id: pod.id.clone(),
            metadata: config.metadata.clone(),
            state: pod_state(&pod) as i32,
            created_at: pod.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: pod.ips.first().cloned().unwrap_or_default(),
                additional_ips: pod
                    .ips
                    .iter()
                    .skip(1)
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options: ns }),
            }),
            labels: super::unsorted(&pod.labels),
            annotations: super::unsorted(&pod.annotations),
            runtime_handler: pod.handler.clone(),
        };
        let mut info = std::collections::HashMap::new();
        if verbose {
            let detail = serde_json::json!({
                "pid": pod.pause_pid,
                "runtimeHandler": pod.handler,
                "backend": pod.backend,
                "shimAddress": pod.shim_address,
                "bundle": pod.bundle,
                "cgroupParent": pod.cgroup_parent,
                "hostNetwork": pod.host_network,
                "shm": pod.shm,
                "netns": pod.netns,
                "cniResult": pod.cni_result.as_deref().and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()),
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: vec![],
            timestamp: now_ns(),
        })
    }

    pub fn list_pods(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let records = self.records();
        let mut out: Vec<cri::PodSandbox> = records
            .pods
            .values()
            .filter(|p| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || p.id.starts_with(&f.id))
                        && f.state
                            .as_ref()
                            .is_none_or(|s| s.state == pod_state(p) as i32)
                        && super::labels_match(&f.label_selector, &p.labels)
                }
            })
            .map(|p| {
                let config: cri::PodSandboxConfig =
                    crate::store::decode(&p.config).unwrap_or_default();
                cri::PodSandbox {
                    id: p.id.clone(),
                    metadata: config.metadata,
                    state: pod_state(p) as i32,
                    created_at: p.created_at,
                    labels: super::unsorted(&p.labels),
                    annotations: super::unsorted(&p.annotations),
                    runtime_handler: p.handler.clone(),
                }
            })
            .collect();
        out.sort_by_key(|p| p.created_at);
        out
    }
}

fn pod_state(p: &PodRecord) -> cri::PodSandboxState {
    if p.state == PodState::Ready && !p.pause_exited {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxIdMappingBuilder, MountBuilder, RootBuilder, Spec, SpecBuilder,
    };

    fn spec(destinations: &[&str], readonly: bool, mapped: bool) -> Spec {
        let mounts = destinations
            .iter()
            .map(|d| MountBuilder::default().destination(d).build().unwrap())
            .collect::<Vec<_>>();
        let mut linux = LinuxBuilder::default();
        if mapped {
            let map = LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(100_000u32)
                .size(65_536u32)
                .build()
                .unwrap();
            linux = linux.uid_mappings(vec![map]).gid_mappings(vec![map]);
        }
        SpecBuilder::default()
            .root(
                RootBuilder::default()
                    .path("rootfs")
                    .readonly(readonly)
                    .build()
                    .unwrap(),
            )
            .mounts(mounts)
            .linux(linux.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn only_a_native_pod_whose_mount_points_are_all_there_runs_on_the_shared_rootfs() {
        let shared = tempfile::tempdir().unwrap();
        for d in ["proc", "sys", "dev", "etc"] {
            std::fs::create_dir(shared.path().join(d)).unwrap();
        }
        std::fs::write(shared.path().join("etc/resolv.conf"), b"").unwrap();
        // /sys/fs/cgroup is in /sys's mount, /dev/pts in /dev's.
        let usual = [
            "/proc",
            "/dev",
            "/dev/pts",
            "/sys",
            "/sys/fs/cgroup",
            "/etc/resolv.conf",
        ];
        let yes = |s: &Spec, backend: &str| uses_shared_root(s, shared.path(), backend);
        assert!(yes(&spec(&usual, true, false), "native"));
        for backend in ["hardened", "oci", "microvm"] {
            assert!(!yes(&spec(&usual, true, false), backend), "{backend}");
        }
        assert!(
            !yes(&spec(&usual, false, false), "native"),
            "a writable root"
        );
        assert!(
            !yes(&spec(&usual, true, true), "native"),
            "hostUsers: false"
        );
        // A mount point libcontainer would have to make in the shared dir.
        assert!(!yes(
            &spec(&["/proc", "/etc/hostname"], true, false),
            "native"
        ));
        assert!(!yes(&spec(&["/proc", "/proc/../x"], true, false), "native"));
        // Not beneath itself: the same destination twice must exist.
        assert!(!yes(&spec(&["/var", "/var"], true, false), "native"));
    }
}
