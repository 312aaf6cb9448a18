//! The one CRI → OCI runtime spec builder.
//!
//! Two entry points, both pure translations apart from reading the
//! container's `/etc/passwd`/`/etc/group` (confined to its rootfs), stat-ing
//! devices and bind-mount sources, and reading a `Localhost` seccomp profile:
//!
//! * [`sandbox_spec`]: the pod's pause ("infra") container, which holds the
//!   pod's UTS, IPC, network (and, when the pod asks, PID) namespaces.
//! * [`container_spec`]: an application container, which joins the pause
//!   container's namespaces through `/proc/<pid>/ns/*`.
//!
//! The rules follow Kubernetes' and containerd's semantics (entrypoint/cmd,
//! env, user resolution, capabilities, masked paths, sysctls, seccomp); where
//! Caisson differs it is said beside the code. Every rejected input becomes a
//! [`SpecError`] that names the request field, for the gRPC layer to map to
//! `INVALID_ARGUMENT`/`NOT_FOUND`/`FAILED_PRECONDITION`/`INTERNAL`.
//!
//! Both specs use a bundle-relative root (`"rootfs"`) and carry containerd's
//! `io.kubernetes.cri.*` annotations, which is how the per-pod shim groups
//! tasks into pods.

mod capabilities;
pub mod cdi;
mod devices;
mod host;
pub mod limits;
mod mounts;
pub(crate) use mounts::check_vm_mounts;
mod namespaces;
mod process;
mod resources;
pub(crate) use resources::qos_resources;

/// A container's OCI resources for a live update (UpdateContainerResources):
/// the same translation and checks as at creation, on this node.
pub(crate) fn update_resources(
    r: &cri::LinuxContainerResources,
) -> Result<LinuxResources, SpecError> {
    resources::container_resources(r, host::facts(), "linux").map(|(res, _)| res)
}
mod seccomp;
mod security;
mod user;
mod userns;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use caisson_image::RunConfig;
use caisson_proto::cri;
use caisson_sandbox::backend::hardened::policy::ADDED_CAPABILITIES_ANNOTATION;
use oci_spec::runtime::{Linux, LinuxCapabilities, LinuxResources, Process, Root, Spec, User};

use host::HostFacts;
use namespaces::NamespaceModes;

/// CRI annotation telling a pod's sandbox from its containers.
pub const CONTAINER_TYPE_ANNOTATION: &str = caisson_sandbox::service::CONTAINER_TYPE_ANNOTATION;
/// CRI annotation naming the pod a task belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = caisson_sandbox::service::SANDBOX_ID_ANNOTATION;
/// The pod's name, namespace and UID, as containerd sets them.
pub const SANDBOX_NAME_ANNOTATION: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";
pub const SANDBOX_UID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-uid";
/// The pod's log directory (sandbox spec only).
pub const SANDBOX_LOG_DIR_ANNOTATION: &str = "io.kubernetes.cri.sandbox-log-directory";
/// The container's name and image (container specs only).
pub const CONTAINER_NAME_ANNOTATION: &str = "io.kubernetes.cri.container-name";
pub const IMAGE_NAME_ANNOTATION: &str = "io.kubernetes.cri.image-name";

/// `io.kubernetes.cri.container-type` values.
pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
pub const CONTAINER_TYPE_CONTAINER: &str = "container";

/// The bundle-relative root every spec uses.
pub const ROOTFS_DIR: &str = "rootfs";

/// The pause container's user when the pod names none (the pause image
/// convention: `65535:65535`).
pub const PAUSE_UID: u32 = 65535;

/// What `caissond` knows about a pod when it builds specs for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodContext {
    pub pod_id: String,
    /// The pause process, whose `/proc/<pid>/ns/*` containers join. Needed
    /// by [`container_spec`] for every POD-mode namespace.
    pub pause_pid: Option<u32>,
    /// The pod's hostname: the sandbox config's, or the node's for a
    /// host-network pod. Set in the sandbox's UTS namespace and as
    /// `HOSTNAME` in every container's environment.
    pub hostname: String,
    /// Files `caissond` wrote for the pod, bind-mounted into containers.
    pub hostname_path: PathBuf,
    pub hosts_path: PathBuf,
    pub resolv_conf_path: PathBuf,
    /// The pod-shared `/dev/shm` (a tmpfs `caissond` mounted); `None` when
    /// the pod's IPC mode is NODE, which uses the host's `/dev/shm`.
    pub shm_path: Option<PathBuf>,
    /// The pod's cgroupfs path, e.g. `/kubepods/burstable/pod<uid>`; the
    /// sandbox and each container get a child named by their id. Empty
    /// leaves `cgroupsPath` unset (the runtime's default).
    pub cgroup_parent: String,
    /// A network namespace made for the pod (CNI); the sandbox joins it
    /// instead of creating an empty one. Ignored for host-network pods.
    pub netns_path: Option<PathBuf>,
}

/// A request the builder cannot turn into a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request is wrong: `field` names it (`config.mounts[0].container_path`).
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// Something the request names does not exist (a user, a profile file).
    #[error("{field}: {reason}")]
    NotFound { field: String, reason: String },
    /// The request is fine but the pod is not in a state to serve it (no
    /// pause process to join, a target container that is not running).
    #[error("{reason}")]
    FailedPrecondition { reason: String },
    /// Reading the host or the rootfs failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl SpecError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
        SpecError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
        SpecError::NotFound {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn precondition(reason: impl Into<String>) -> SpecError {
        SpecError::FailedPrecondition {
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> SpecError {
        SpecError::Io {
            context: context.into(),
            source,
        }
    }

    /// The request field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            SpecError::InvalidArgument { field, .. } | SpecError::NotFound { field, .. } => {
                Some(field)
            }
            SpecError::FailedPrecondition { .. } | SpecError::Io { .. } => None,
        }
    }
}

/// The pod's namespace modes, validated (`None` is POD everywhere).
pub(crate) fn pod_namespace_modes(
    config: &cri::PodSandboxConfig,
) -> Result<NamespaceModes, SpecError> {
    let options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    NamespaceModes::from_option(options, &format!("{SANDBOX_SC}.namespace_options"))
}

/// The spec for the pod's pause container.
///
/// Rootfs `"rootfs"`, read-only; runs `pause_args` (e.g. `["/pause"]`) as
/// the pod's `run_as_user`/`run_as_group`, or [`PAUSE_UID`]; no
/// capabilities, `no_new_privs`, Kubernetes' masked and read-only paths, the
/// pod's seccomp profile and (validated) sysctls. Namespaces: new mount;
/// new UTS and network (joining `ctx.netns_path` when set) unless the pod's
/// network is NODE; new IPC unless NODE; new PID unless NODE (containerd
/// gives the sandbox its own PID namespace even when containers use
/// CONTAINER mode). `cgroupsPath` is `<cgroup_parent>/<pod_id>`.
pub fn sandbox_spec(
    config: &cri::PodSandboxConfig,
    ctx: &PodContext,
    pause_args: Vec<String>,
) -> Result<Spec, SpecError> {
    build_sandbox(config, ctx, pause_args, host::facts())
}

/// The spec for one container of a pod.
///
/// `image` is the image's run config, `rootfs` the host path of the
/// container's prepared rootfs (read for `/etc/passwd` and `/etc/group`; the
/// spec itself uses the bundle-relative `"rootfs"`), `target_pid` the
/// process of the container named by a TARGET PID namespace mode. Namespaces
/// follow the container's `NamespaceOption`: POD joins the pause
/// container's (`ctx.pause_pid`), CONTAINER makes a new one (PID only),
/// NODE uses the host's, TARGET joins `target_pid`'s; the container always
/// gets its own mount namespace and shares the pod's UTS namespace.
/// `cgroupsPath` is `<cgroup_parent>/<container_id>`.
pub fn container_spec(
    config: &cri::ContainerConfig,
    sandbox: &cri::PodSandboxConfig,
    image: &RunConfig,
    rootfs: &Path,
    ctx: &PodContext,
    container_id: &str,
    target_pid: Option<u32>,
) -> Result<Spec, SpecError> {
    build_container(
        config,
        sandbox,
        image,
        rootfs,
        ctx,
        container_id,
        target_pid,
        host::facts(),
    )
}

const SANDBOX_SC: &str = "config.linux.security_context";
const CONTAINER_SC: &str = "config.linux.security_context";

fn build_sandbox(
    config: &cri::PodSandboxConfig,
    ctx: &PodContext,
    pause_args: Vec<String>,
    host: &HostFacts,
) -> Result<Spec, SpecError> {
    let linux_config = config.linux.clone().unwrap_or_default();
    let sc = linux_config.security_context.clone().unwrap_or_default();
    let modes = pod_namespace_modes(config)?;
    if pause_args.is_empty() {
        return Err(SpecError::precondition("no pause command configured"));
    }

    let user = user::sandbox_user(&sc, SANDBOX_SC)?;
    if let Some(userns) = &modes.userns {
        userns::check_user_mapped(userns, &user, &format!("{SANDBOX_SC}.namespace_options"))?;
    }
    let mut process = base_process();
    process.set_args(Some(pause_args));
    process.set_env(Some(vec![process::default_path_env()]));
    process.set_cwd(PathBuf::from("/"));
    process.set_user(user);
    process.set_no_new_privileges(Some(true));
    process.set_capabilities(Some(capabilities::to_oci(&capabilities::CapSets::none())));
    process.set_oom_score_adj(Some(resources::clamp_oom_score_adj(
        resources::SANDBOX_OOM_SCORE_ADJ,
        host,
    )));

    let apparmor = security::apparmor_profile(sc.apparmor.as_ref(), "", SANDBOX_SC, host.apparmor)?;
    security::note_unenforced_selinux(
        "pod",
        &config.metadata.clone().unwrap_or_default().name,
        sc.selinux_options.as_ref(),
    );
    process.set_apparmor_profile(apparmor);

    let sysctls = security::sandbox_sysctls(&linux_config.sysctls, &modes, "config.linux")?;
    let seccomp = if sc.privileged {
        None
    } else {
        #[allow(deprecated)] // the CRI still sends the old string form
        let choice = seccomp::choice(sc.seccomp.as_ref(), &sc.seccomp_profile_path, SANDBOX_SC)?;
        seccomp::render(&choice, &capabilities::CapSets::none().bounding, host)?
    };

    let mut linux = Linux::default();
    linux.set_namespaces(Some(namespaces::sandbox_namespaces(&modes, ctx)));
    set_id_mappings(&mut linux, &modes);
    linux.set_masked_paths(Some(security::default_masked_paths()));
    linux.set_readonly_paths(Some(security::default_readonly_paths()));
    linux.set_sysctl(if sysctls.is_empty() {
        None
    } else {
        Some(sysctls)
    });
    linux.set_seccomp(seccomp);
    let mut sandbox_resources = resources::sandbox_resources();
    sandbox_resources.set_devices(Some(vec![devices::deny_all()]));
    linux.set_resources(Some(sandbox_resources));
    linux.set_devices(None);
    linux.set_cgroups_path(cgroups_path(&ctx.cgroup_parent, &ctx.pod_id));

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_root(Some(root(true)));
    spec.set_mounts(Some(mounts::sandbox_mounts(ctx, &modes)));
    spec.set_process(Some(process));
    spec.set_hostname(if modes.network_is_host() || ctx.hostname.is_empty() {
        None
    } else {
        Some(ctx.hostname.clone())
    });
    spec.set_annotations(Some(sandbox_annotations(config, ctx)));
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[allow(clippy::too_many_arguments)] // the public signature plus the host's facts
fn build_container(
    config: &cri::ContainerConfig,
    sandbox: &cri::PodSandboxConfig,
    image: &RunConfig,
    rootfs: &Path,
    ctx: &PodContext,
    container_id: &str,
    target_pid: Option<u32>,
    host: &HostFacts,
) -> Result<Spec, SpecError> {
    let linux_config = config.linux.clone().unwrap_or_default();
    let sc = linux_config.security_context.clone().unwrap_or_default();
    let sandbox_sc = sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let privileged = sc.privileged;
    if privileged && !sandbox_sc.privileged {
        return Err(SpecError::invalid(
            format!("{CONTAINER_SC}.privileged"),
            "privileged containers need a privileged pod (sandbox security_context.privileged)",
        ));
    }
    let modes = NamespaceModes::from_option(
        sc.namespace_options.as_ref(),
        &format!("{CONTAINER_SC}.namespace_options"),
    )?;
    userns::check_container_matches_pod(
        sc.namespace_options.as_ref(),
        sandbox_sc.namespace_options.as_ref(),
        &format!("{CONTAINER_SC}.namespace_options"),
    )?;

    // Process: args, env, cwd, terminal.
    let args = process::args(&config.command, &config.args, &image.entrypoint, &image.cmd)?;
    let env = process::env(&image.env, &config.envs, &ctx.hostname, config.tty);
    let cwd = process::working_dir(&config.working_dir, &image.working_dir)?;
    let user = user::container_user(&sc, &image.user, rootfs, CONTAINER_SC)?;
    if let Some(userns) = &modes.userns {
        userns::check_user_mapped(userns, &user, &format!("{CONTAINER_SC}.namespace_options"))?;
    }

    let caps = if privileged {
        capabilities::CapSets::all(host)
    } else {
        capabilities::from_request(sc.capabilities.as_ref(), host, CONTAINER_SC)?
    };

    #[allow(deprecated)] // the CRI still sends the old string form
    let apparmor = security::apparmor_profile(
        sc.apparmor.as_ref(),
        &sc.apparmor_profile,
        CONTAINER_SC,
        host.apparmor,
    )?;
    if !privileged {
        security::note_unenforced_selinux(
            "container",
            &config.metadata.clone().unwrap_or_default().name,
            sc.selinux_options.as_ref(),
        );
    }

    let seccomp = if privileged {
        None
    } else {
        #[allow(deprecated)] // the CRI still sends the old string form
        let choice = seccomp::choice(sc.seccomp.as_ref(), &sc.seccomp_profile_path, CONTAINER_SC)?;
        seccomp::render(&choice, &caps.bounding, host)?
    };

    let resources_request = linux_config.resources.clone().unwrap_or_default();
    let (mut linux_resources, oom_score_adj) =
        resources::container_resources(&resources_request, host, "config.linux.resources")?;

    let mut process = base_process();
    process.set_terminal(Some(config.tty));
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_user(user);
    process.set_capabilities(Some(capabilities::to_oci(&caps)));
    // Kubernetes' AllowPrivilegeEscalation defaults to true, i.e. no
    // no_new_privs; a privileged container never gets it.
    process.set_no_new_privileges(Some(sc.no_new_privs && !privileged));
    process.set_oom_score_adj(oom_score_adj);
    process.set_apparmor_profile(apparmor);

    // Mounts and devices.
    let built_mounts = mounts::container_mounts(config, ctx, &modes, &sc, privileged)?;
    let mut device_list = devices::from_request(&config.devices)?;
    let mut device_rules = vec![devices::deny_all()];
    if privileged {
        device_list = devices::merge(devices::host_devices(Path::new("/dev"))?, device_list);
        device_rules.push(devices::allow_all());
    } else {
        device_rules.extend(
            device_list
                .iter()
                .map(|(d, access)| devices::allow(d, access)),
        );
    }
    linux_resources.set_devices(Some(device_rules));

    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        security::container_path_lists(&sc)
    };

    let mut linux = Linux::default();
    linux.set_namespaces(Some(namespaces::container_namespaces(
        &modes,
        ctx,
        target_pid,
        privileged,
        host,
        CONTAINER_SC,
    )?));
    set_id_mappings(&mut linux, &modes);
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly));
    linux.set_sysctl(None);
    linux.set_seccomp(seccomp);
    linux.set_resources(Some(linux_resources));
    linux.set_devices(if device_list.is_empty() {
        None
    } else {
        Some(device_list.into_iter().map(|(d, _)| d).collect())
    });
    linux.set_rootfs_propagation(built_mounts.rootfs_propagation.clone());
    linux.set_cgroups_path(cgroups_path(&ctx.cgroup_parent, container_id));

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_root(Some(root(sc.readonly_rootfs)));
    spec.set_mounts(Some(built_mounts.mounts));
    spec.set_process(Some(process));
    // Containers share the pod's UTS namespace: the sandbox set the name.
    spec.set_hostname(None);
    let mut annotations = container_annotations(config, sandbox, ctx);
    // Which capabilities the pod asked for (the spec holds only the result):
    // the hardened backend keeps only those.
    if let Some(caps) = sc.capabilities.as_ref() {
        let added: Vec<&str> = caps
            .add_capabilities
            .iter()
            .chain(&caps.add_ambient_capabilities)
            .map(String::as_str)
            .collect();
        if !added.is_empty() {
            annotations.insert(ADDED_CAPABILITIES_ANNOTATION.to_string(), added.join(","));
        }
    }
    spec.set_annotations(Some(annotations));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The pod user namespace's `uidMappings`/`gidMappings` (containerd 2.x
/// writes them for the sandbox, which makes the namespace, and for each
/// container, which joins it).
fn set_id_mappings(linux: &mut Linux, modes: &NamespaceModes) {
    if let Some(userns) = &modes.userns {
        linux.set_uid_mappings(Some(vec![userns.uids.to_oci()]));
        linux.set_gid_mappings(Some(vec![userns.gids.to_oci()]));
    }
}

/// The runtime-spec version the builder writes.
const OCI_VERSION: &str = "1.0.2";

/// A process with nothing from `Process::default()`'s youki-flavoured
/// defaults (shell args, rlimits, a default capability set) left in.
fn base_process() -> Process {
    let mut process = Process::default();
    process.set_terminal(Some(false));
    process.set_args(None);
    process.set_env(None);
    process.set_user(User::default());
    process.set_capabilities(Some(LinuxCapabilities::default()));
    // Rlimits are inherited from the shim, as with containerd's CRI plugin.
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(false));
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);
    process.set_oom_score_adj(None);
    process
}

fn root(readonly: bool) -> Root {
    let mut root = Root::default();
    root.set_path(PathBuf::from(ROOTFS_DIR));
    root.set_readonly(Some(readonly));
    root
}

/// `<parent>/<id>` (cgroupfs style), or unset when the pod has no parent.
fn cgroups_path(parent: &str, id: &str) -> Option<PathBuf> {
    if parent.is_empty() {
        return None;
    }
    Some(PathBuf::from(format!(
        "{}/{}",
        parent.trim_end_matches('/'),
        id
    )))
}

fn pod_annotations(sandbox: &cri::PodSandboxConfig, ctx: &PodContext) -> HashMap<String, String> {
    let metadata = sandbox.metadata.clone().unwrap_or_default();
    HashMap::from([
        (SANDBOX_ID_ANNOTATION.to_string(), ctx.pod_id.clone()),
        (SANDBOX_NAME_ANNOTATION.to_string(), metadata.name),
        (SANDBOX_NAMESPACE_ANNOTATION.to_string(), metadata.namespace),
        (SANDBOX_UID_ANNOTATION.to_string(), metadata.uid),
    ])
}

fn sandbox_annotations(
    config: &cri::PodSandboxConfig,
    ctx: &PodContext,
) -> HashMap<String, String> {
    let mut annotations = pod_annotations(config, ctx);
    annotations.insert(
        CONTAINER_TYPE_ANNOTATION.to_string(),
        CONTAINER_TYPE_SANDBOX.to_string(),
    );
    annotations.insert(
        SANDBOX_LOG_DIR_ANNOTATION.to_string(),
        config.log_directory.clone(),
    );
    // The pod's limits, as containerd passes them on (a VM-based runtime
    // sizes its VM from them).
    if let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        use caisson_sandbox::service as s;
        for (key, value) in [
            (s::SANDBOX_CPU_PERIOD_ANNOTATION, r.cpu_period),
            (s::SANDBOX_CPU_QUOTA_ANNOTATION, r.cpu_quota),
            (s::SANDBOX_CPU_SHARES_ANNOTATION, r.cpu_shares),
            (s::SANDBOX_MEMORY_ANNOTATION, r.memory_limit_in_bytes),
        ] {
            if value > 0 {
                annotations.insert(key.to_string(), value.to_string());
            }
        }
    }
    annotations
}

fn container_annotations(
    config: &cri::ContainerConfig,
    sandbox: &cri::PodSandboxConfig,
    ctx: &PodContext,
) -> HashMap<String, String> {
    let mut annotations = pod_annotations(sandbox, ctx);
    annotations.insert(
        CONTAINER_TYPE_ANNOTATION.to_string(),
        CONTAINER_TYPE_CONTAINER.to_string(),
    );
    annotations.insert(
        CONTAINER_NAME_ANNOTATION.to_string(),
        config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
    );
    annotations.insert(
        IMAGE_NAME_ANNOTATION.to_string(),
        config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default(),
    );
    annotations
}

/// Resources with no limits: a starting point for both specs.
fn empty_resources() -> LinuxResources {
    let mut resources = LinuxResources::default();
    resources.set_devices(None);
    resources
}

#[cfg(test)]
mod tests;
