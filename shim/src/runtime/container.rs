//! Containers: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, status and listing. A container is an overlay rootfs
//! mounted in its bundle (`pods/<pod>/containers/<id>/`), an OCI spec built by
//! [`crate::spec`], and a task in its pod's shim whose stdout and stderr the
//! shim writes to the CRI log file (and, for `stdin: true`, whose stdin is a
//! FIFO in the bundle that stays open).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use caisson_proto::cri;
use containerd_shim_protos::api;

pub(crate) mod image_volumes;

use super::pod::{pod_context, pod_dir};
use super::{new_id, now_ns, sorted, ChangeKind, Runtime};
use crate::metrics_http::phase;
use crate::spec;
use crate::status::{CriError, CriResult};
use crate::store::{decode, encode, ContainerRecord, ContainerState, PodState};

/// How long to wait for a SIGKILLed process to be reported gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The shim's stdio URI for a CRI log file: it writes
/// `<RFC3339Nano> <stream> <P|F> <line>` records there itself.
pub fn crilog_uri(path: &Path) -> String {
    format!("crilog://{}", path.display())
}

/// The FIFO a `stdin: true` container reads, in its bundle (removed with it).
pub(crate) const STDIN_FIFO: &str = "stdin";

/// A FIFO only root can open (0600).
pub(crate) fn make_private_fifo(path: &Path) -> std::io::Result<()> {
    nix::unistd::mkfifo(
        path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .map_err(std::io::Error::from)
}

/// Makes the container's stdin FIFO (root-only) and returns its name for
/// the task. The shim holds a writer on it for the task's life, so the
/// container's reads block (as with containerd or CRI-O) instead of seeing
/// EOF; Attach writes the client's input into it (`streams.rs`).
fn open_stdin_fifo(bundle: &Path) -> CriResult<String> {
    let path = bundle.join(STDIN_FIFO);
    make_private_fifo(&path)
        .map_err(|e| CriError::internal(&format!("making {}", path.display()), e))?;
    Ok(path.display().to_string())
}

/// `log_directory` + `log_path`, refusing anything that could leave the directory.
fn log_file(pod_config: &cri::PodSandboxConfig, log_path: &str) -> CriResult<Option<PathBuf>> {
    if log_path.is_empty() {
        return Ok(None);
    }
    if pod_config.log_directory.is_empty() {
        return Err(CriError::invalid(
            "config.log_path",
            "is set but the pod has no log_directory",
        ));
    }
    let rel = Path::new(log_path);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(CriError::invalid(
            "config.log_path",
            format!("{log_path:?} must be relative, without '..'"),
        ));
    }
    Ok(Some(Path::new(&pod_config.log_directory).join(rel)))
}

/// A signal name or number from an image's StopSignal.
pub fn parse_signal(name: &str) -> Option<u32> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    if let Ok(n) = name.parse::<u32>() {
        return Some(n);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    nix::sys::signal::Signal::iterator()
        .find(|s| s.as_str().strip_prefix("SIG") == Some(bare))
        .map(|s| s as i32 as u32)
}

/// The process user a container was created with, as its record keeps it:
/// `uid:gid:g1,g2,...` (the supplemental groups, primary group first).
fn user_record(user: &oci_spec::runtime::User) -> String {
    let groups: Vec<String> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(u32::to_string)
        .collect();
    format!("{}:{}:{}", user.uid(), user.gid(), groups.join(","))
}

/// ContainerStatus.user from [`user_record`]'s form (records written
/// before the groups were kept hold `uid:gid`).
fn container_user(record: &str) -> Option<cri::ContainerUser> {
    let mut parts = record.splitn(3, ':');
    let uid = parts.next()?.parse().ok()?;
    let gid = parts.next()?.parse().ok()?;
    let supplemental_groups = parts
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|g| !g.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid,
            gid,
            supplemental_groups,
        }),
    })
}

fn cri_state(s: ContainerState) -> cri::ContainerState {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

/// The call label of CreateContainer's phases.
const CREATE: &str = "CreateContainer";

impl Runtime {
    pub async fn create_container(
        self: &Arc<Self>,
        pod_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> CriResult<String> {
        // The container's init will be moved into its cgroup in a few ms.
        super::warm_cgroup_moves();
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| CriError::invalid("config.metadata", "is required"))?;
        if meta.name.is_empty() {
            return Err(CriError::invalid(
                "config.metadata.name",
                "must not be empty",
            ));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(CriError::invalid("config.image.image", "must not be empty"));
        }
        if pod_id.is_empty() {
            return Err(CriError::invalid("pod_sandbox_id", "must not be empty"));
        }
        spec::limits::check_metadata(&config.labels, &config.annotations, "config")?;
        let cdi = self.resolve_cdi_devices(&config)?;
        let pod = self.pod(pod_id)?;
        let lock = self.lock_for(&pod.id);
        let _guard = lock.lock().await;
        let pod = self.pod(&pod.id)?;
        // A VM's guest sees the host's files over 9p, not its mounts.
        if pod.backend == "microvm" {
            spec::check_vm_mounts(&config)?;
        }
        if pod.state != PodState::Ready || pod.pause_exited {
            return Err(CriError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let pod_config: cri::PodSandboxConfig = sandbox_config
            .filter(|c| c.metadata.is_some())
            .or_else(|| decode(&pod.config))
            .unwrap_or_default();
        if self
            .records()
            .containers
            .values()
            .any(|c| c.pod_id == pod.id && c.name == meta.name && c.attempt == meta.attempt)
        {
            return Err(CriError::AlreadyExists {
                what: "container",
                id: format!("{} (attempt {}) in pod {}", meta.name, meta.attempt, pod.id),
            });
        }
        let log_path = log_file(&pod_config, &config.log_path)?;
        // `unified` keys are checked (and on v1 translated) before anything is made.
        super::update::check_unified(
            &config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .unwrap_or_default(),
            "config.linux.resources",
            caisson_cgroups::CgroupFs::mode(self.qos.fs()),
        )?;
        // CRI-O's rule: an image that is a file is a checkpoint to restore.
        let restore_from =
            super::checkpoint::names_archive(&image_name).then(|| PathBuf::from(&image_name));
        let image_name = match &restore_from {
            Some(archive) => {
                let dump = super::checkpoint::read_archive_config(archive)?;
                let name = [
                    &dump.rootfs_image_name,
                    &dump.rootfs_image_ref,
                    &dump.rootfs_image,
                ]
                .into_iter()
                .find(|n| !n.is_empty())
                .cloned()
                .ok_or_else(|| {
                    CriError::invalid(
                        "config.image.image",
                        format!("{}: config.dump names no image", archive.display()),
                    )
                })?;
                if self.images.get(&name).is_err() {
                    return Err(CriError::FieldNotFound {
                        field: "config.image.image".into(),
                        reason: format!(
                            "checkpoint {} was made from image {name:?}, which is not present: pull it first",
                            archive.display()
                        ),
                    });
                }
                name
            }
            None => image_name,
        };
        let phase_image = phase(CREATE, "image");
        let image = self.images.get(&image_name).map_err(|e| match e {
            caisson_image::ImageError::NotFound(_) => CriError::NotFound {
                what: "image",
                id: image_name.clone(),
            },
            other => other.into(),
        })?;
        drop(phase_image);

        let id = new_id();
        crate::call_log::record_id("container_id", &id);
        let bundle = pod_dir(self, &pod.id).join("containers").join(&id);
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name: meta.name.clone(),
            attempt: meta.attempt,
            image: image_name.clone(),
            image_id: image.id.to_string(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.to_string()),
            labels: sorted(&config.labels),
            annotations: sorted(&config.annotations),
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            state: ContainerState::Created,
            pid: 0,
            log_path: log_path.clone().unwrap_or_default(),
            config: encode(&config),
            bundle: bundle.clone(),
            stop_signal: image.config.stop_signal.clone(),
            user: String::new(),
        };
        let result = self
            .create_task(
                &pod,
                &pod_config,
                &config,
                (&image, restore_from.as_deref()),
                &cdi,
                record,
            )
            .await;
        if result.is_err() {
            // The shim may have made the task before the call failed.
            let answered = self.delete_task(&pod, &id, &bundle).await;
            image_volumes::unmount_image_volumes(&bundle);
            let _ = self.images.remove_rootfs(&id);
            let _ = std::fs::remove_dir_all(&bundle);
            let _ = self.store.remove_container(&id);
            self.records().containers.remove(&id);
            self.remove_task_cgroup(&pod, &id).await;
            if !answered {
                self.sweep_late_task_cgroup(pod.clone(), id.clone(), false);
            }
            if let Err(e) = self.resize_pod_from_containers(&pod.id).await {
                tracing::warn!(pod_id = %pod.id, error = %e, "re-sizing the pod cgroup");
            }
        }
        result
    }

    /// Deletes task `id` of `pod` through its shim; a shim that cannot
    /// answer (killed, perhaps in the middle of building the task) has its
    /// binary's `delete` run instead, which kills the task's processes and
    /// unmounts what its build mounted. Found by the chaos run: a task whose
    /// shim died between building it and answering (an init waiting for a
    /// start, a hardened build's idmapped layers) outlived its pod. Answers
    /// whether the shim answered.
    pub(super) async fn delete_task(
        &self,
        pod: &crate::store::PodRecord,
        id: &str,
        bundle: &Path,
    ) -> bool {
        let answered = match self.client(pod) {
            Ok(client) => match client.delete(id, "").await {
                Ok(_) | Err(CriError::NotFound { .. }) => true,
                Err(e) => {
                    tracing::warn!(task_id = %id, pod_id = %pod.id, error = %e, "deleting the task: cleaning up without the pod's shim");
                    false
                }
            },
            // A shim known to be gone had its tasks deleted without it
            // then ([`Runtime::mark_shim_lost`]): nothing is left to do.
            Err(_) => self.shim_lost(&pod.id),
        };
        if !answered {
            self.shims.delete_orphan(id, bundle, &pod.backend).await;
        }
        answered
    }

    /// The CDI devices `config` asks for (`CDI_devices`, `cdi.k8s.io/*`
    /// annotations), resolved against `[cdi] spec_dirs` before anything is
    /// made; the spec files are read only when a device is asked for.
    fn resolve_cdi_devices(&self, config: &cri::ContainerConfig) -> CriResult<spec::cdi::Resolved> {
        let names: Vec<String> = config.cdi_devices.iter().map(|d| d.name.clone()).collect();
        let requests = spec::cdi::requests(&names, &config.annotations)?;
        if requests.is_empty() {
            return Ok(spec::cdi::Resolved::default());
        }
        Ok(spec::cdi::Registry::load(&self.config.cdi.spec_dirs).resolve(&requests)?)
    }

    /// `source`: the image, and the checkpoint archive to restore from
    /// (made from that image), if any.
    async fn create_task(
        &self,
        pod: &crate::store::PodRecord,
        pod_config: &cri::PodSandboxConfig,
        config: &cri::ContainerConfig,
        source: (&caisson_image::ImageRecord, Option<&Path>),
        cdi: &spec::cdi::Resolved,
        mut record: ContainerRecord,
    ) -> CriResult<String> {
        let (image, restore_from) = source;
        let id = record.id.clone();
        std::fs::create_dir_all(&record.bundle)
            .map_err(|e| CriError::internal("creating the bundle", e))?;
        let rootfs = record.bundle.join(spec::ROOTFS_DIR);
        let phase_rootfs = phase(CREATE, "rootfs");
        let created = self.images.create_rootfs(&id, &image.id.to_string())?;
        let checkpoint = match restore_from {
            Some(archive) => {
                let (archive, dest, upper) = (
                    archive.to_path_buf(),
                    record.bundle.join(super::checkpoint::RESTORE_DIR),
                    created.upper.clone(),
                );
                let images = tokio::task::spawn_blocking(move || {
                    super::checkpoint::unpack_for_restore(&archive, &dest, &upper)
                })
                .await
                .map_err(|e| CriError::internal("unpacking the checkpoint", e))??;
                images.display().to_string()
            }
            None => String::new(),
        };
        self.images.mount_rootfs(&id, Some(&rootfs))?;
        drop(phase_rootfs);
        let phase_spec = phase(CREATE, "spec");
        let volumes_config =
            image_volumes::mount_image_volumes(&self.images, &id, &record.bundle, config)?;
        let target_pid = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .filter(|n| !n.target_id.is_empty())
            .map(|n| {
                self.find_container(&n.target_id)
                    .filter(|c| c.pod_id == pod.id && c.state == ContainerState::Running)
                    .map(|c| c.pid)
                    .ok_or_else(|| {
                        CriError::FailedPrecondition(format!(
                            "target container {} is not running in this pod",
                            n.target_id
                        ))
                    })
            })
            .transpose()?;
        let ctx = pod_context(self, pod);
        let mut oci = spec::container_spec(
            &volumes_config,
            pod_config,
            &image.config,
            &rootfs,
            &ctx,
            &id,
            target_pid,
        )?;
        cdi.apply(&mut oci)?;
        self.finish_container_spec(config, &mut oci)?;
        record.user = oci
            .process()
            .as_ref()
            .map(|p| user_record(p.user()))
            .unwrap_or_default();
        std::fs::write(
            record.bundle.join("config.json"),
            serde_json::to_vec_pretty(&oci)
                .map_err(|e| CriError::internal("encoding the spec", e))?,
        )
        .map_err(|e| CriError::internal("writing config.json", e))?;
        drop(phase_spec);
        if let Some(log) = record
            .log_path
            .parent()
            .filter(|_| !record.log_path.as_os_str().is_empty())
        {
            std::fs::create_dir_all(log)
                .map_err(|e| CriError::internal("creating the log directory", e))?;
        }
        // Without a log path the output still flows through the shim (to
        // /dev/null), so Attach can follow it.
        let log = if record.log_path.as_os_str().is_empty() {
            Path::new("/dev/null")
        } else {
            record.log_path.as_path()
        };
        let uri = crilog_uri(log);
        let (stdout, stderr) = (uri.clone(), if config.tty { String::new() } else { uri });
        let stdin = if config.stdin {
            open_stdin_fifo(&record.bundle)?
        } else {
            String::new()
        };
        {
            let _p = phase(CREATE, "record");
            self.save_container(record.clone())?;
        }
        // A pod sized from its containers grows before this one starts.
        {
            let _p = phase(CREATE, "pod cgroup");
            self.resize_pod_from_containers(&pod.id).await?;
        }
        let client = self.client(pod)?;
        let req = api::CreateTaskRequest {
            id: id.clone(),
            bundle: record.bundle.display().to_string(),
            stdin,
            stdout,
            stderr,
            terminal: config.tty,
            checkpoint,
            ..Default::default()
        };
        let phase_create = phase(CREATE, "task create");
        let pid = client.create(req).await?;
        drop(phase_create);
        self.update_container(&id, |c| c.pid = pid);
        tracing::info!(container_id = %id, pod_id = %pod.id, name = %record.name, "container created");
        self.notify(&id, &pod.id, ChangeKind::Created);
        Ok(id)
    }

    pub async fn start_container(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let c = self.container(id)?;
        let pod = self.pod(&c.pod_id)?;
        let lock = self.lock_for(&pod.id);
        let _guard = lock.lock().await;
        let c = self.container(&c.id)?;
        if c.state != ContainerState::Created {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                c.id, c.state
            )));
        }
        let client = self.client(&pod)?;
        let phase_start = phase("StartContainer", "task start");
        let started = client.start(&c.id, "").await;
        drop(phase_start);
        match started {
            Ok(pid) => {
                self.update_container(&c.id, |r| {
                    r.pid = pid;
                    r.started_at = now_ns();
                    if r.state == ContainerState::Created {
                        r.state = ContainerState::Running;
                    }
                });
                tracing::info!(container_id = %c.id, pid, "container started");
                self.notify(&c.id, &pod.id, ChangeKind::Started);
                Ok(())
            }
            Err(e) => {
                self.update_container(&c.id, |r| {
                    r.state = ContainerState::Exited;
                    r.exit_code = 128;
                    r.finished_at = now_ns();
                    r.reason = "StartError".into();
                    r.message = e.to_string();
                });
                Err(e)
            }
        }
    }

    pub async fn stop_container(self: &Arc<Self>, id: &str, timeout: i64) -> CriResult<()> {
        let c = self.container(id)?;
        let lock = self.lock_for(&c.pod_id);
        let _guard = lock.lock().await;
        self.stop_container_inner(&c.id, timeout).await
    }

    /// SIGTERM (or the image's stop signal), SIGKILL after `timeout` seconds.
    pub(super) async fn stop_container_inner(&self, id: &str, timeout: i64) -> CriResult<()> {
        let c = self.container(id)?;
        if !matches!(c.state, ContainerState::Running | ContainerState::Created) {
            return Ok(());
        }
        let pod = self.pod(&c.pod_id)?;
        let client = self.client(&pod)?;
        if c.state == ContainerState::Running && timeout > 0 {
            let signal = parse_signal(&c.stop_signal).unwrap_or(libc::SIGTERM as u32);
            match client.kill(&c.id, "", signal, false).await {
                Ok(()) => {
                    if let Some(w) = client
                        .wait(&c.id, "", Duration::from_secs(timeout as u64))
                        .await?
                    {
                        self.on_exit(&c.id, w.exit_status as i32, now_ns());
                        return Ok(());
                    }
                    tracing::info!(container_id = %c.id, timeout, "container ignored its stop signal: SIGKILL");
                }
                Err(CriError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        match client.kill(&c.id, "", libc::SIGKILL as u32, true).await {
            Ok(()) | Err(CriError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        if c.state == ContainerState::Running {
            match client.wait(&c.id, "", KILL_WAIT).await? {
                Some(w) => self.on_exit(&c.id, w.exit_status as i32, now_ns()),
                None => {
                    return Err(CriError::Internal(format!(
                        "container {} did not exit after SIGKILL",
                        c.id
                    )))
                }
            }
        } else {
            // Never started: it is gone once deleted.
            self.on_exit(&c.id, 137, now_ns());
        }
        Ok(())
    }

    pub async fn remove_container(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let Some(c) = self.find_container(id) else {
            return Ok(());
        };
        let lock = self.lock_for(&c.pod_id);
        let _guard = lock.lock().await;
        self.remove_container_inner(&c.id, true).await?;
        self.notify(&c.id, &c.pod_id, ChangeKind::Deleted);
        Ok(())
    }

    /// Kills (if needed), deletes the task, removes rootfs, bundle and record.
    pub(super) async fn remove_container_inner(&self, id: &str, force: bool) -> CriResult<()> {
        let c = self.container(id)?;
        if matches!(c.state, ContainerState::Running | ContainerState::Created) {
            if !force {
                return Err(CriError::FailedPrecondition(format!(
                    "container {id} is running"
                )));
            }
            if let Err(e) = self.stop_container_inner(id, 0).await {
                tracing::warn!(container_id = %id, error = %e, "stopping a container being removed");
            }
        }
        if let Some(pod) = self.find_pod(&c.pod_id) {
            let _ = self.delete_task(&pod, id, &c.bundle).await;
        }
        image_volumes::unmount_image_volumes(&c.bundle);
        if let Err(e) = self.images.remove_rootfs(id) {
            if !e.is_not_found() {
                tracing::warn!(container_id = %id, error = %e, "removing the rootfs");
            }
        }
        // An image removed while this container ran (its own or one it
        // mounted as a volume) kept its layers for the rootfs; nothing else
        // would collect them once the container goes.
        let config: cri::ContainerConfig = decode(&c.config).unwrap_or_default();
        let gone = |image: &str| self.images.get(image).is_err_and(|e| e.is_not_found());
        if gone(&c.image_id) || image_volumes::volume_images(&config).into_iter().any(gone) {
            let images = self.images.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || images.gc()).await {
                tracing::warn!(container_id = %id, error = %e, "collecting a removed image's layers");
            }
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.store
            .remove_container(id)
            .map_err(|e| CriError::internal("removing the container record", e))?;
        self.records().containers.remove(id);
        self.forget_cpu_sample(id);
        if let Some(pod) = self.find_pod(&c.pod_id) {
            self.remove_task_cgroup(&pod, id).await;
            if let Err(e) = self.resize_pod_from_containers(&pod.id).await {
                tracing::warn!(pod_id = %pod.id, error = %e, "re-sizing the pod cgroup");
            }
        }
        tracing::info!(container_id = %id, "container removed");
        Ok(())
    }

    pub fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> CriResult<cri::ContainerStatusResponse> {
        let c = self.container(id)?;
        let config: cri::ContainerConfig = decode(&c.config).unwrap_or_default();
        let status = cri::ContainerStatus {
            id: c.id.clone(),
            metadata: config.metadata.clone(),
            state: cri_state(c.state) as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: Some(cri::ImageSpec {
                image: c.image.clone(),
                ..config.image.clone().unwrap_or_default()
            }),
            image_ref: c.image_ref.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: super::unsorted(&c.labels),
            annotations: super::unsorted(&c.annotations),
            mounts: config.mounts.clone(),
            log_path: c.log_path.display().to_string(),
            resources: config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|r| cri::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
            image_id: c.image_id.clone(),
            user: container_user(&c.user),
        };
        let mut info = std::collections::HashMap::new();
        if verbose {
            let detail = serde_json::json!({
                "sandboxID": c.pod_id,
                "pid": c.pid,
                "bundle": c.bundle,
                "user": c.user,
                "runtimeSpec": std::fs::read_to_string(c.bundle.join("config.json")).ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()),
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    pub fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        let records = self.records();
        let mut out: Vec<cri::Container> = records
            .containers
            .values()
            .filter(|c| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
                        && f.state
                            .as_ref()
                            .is_none_or(|s| s.state == cri_state(c.state) as i32)
                        && super::labels_match(&f.label_selector, &c.labels)
                }
            })
            .map(|c| {
                let config: cri::ContainerConfig = decode(&c.config).unwrap_or_default();
                cri::Container {
                    id: c.id.clone(),
                    pod_sandbox_id: c.pod_id.clone(),
                    metadata: config.metadata,
                    image: Some(cri::ImageSpec {
                        image: c.image.clone(),
                        ..Default::default()
                    }),
                    image_ref: c.image_ref.clone(),
                    state: cri_state(c.state) as i32,
                    created_at: c.created_at,
                    labels: super::unsorted(&c.labels),
                    annotations: super::unsorted(&c.annotations),
                    image_id: c.image_id.clone(),
                }
            })
            .collect();
        out.sort_by_key(|c| c.created_at);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse() {
        for (input, want) in [
            ("SIGTERM", Some(15)),
            ("TERM", Some(15)),
            ("sigquit", Some(3)),
            ("9", Some(9)),
            ("", None),
            ("SIGBOGUS", None),
        ] {
            assert_eq!(parse_signal(input), want, "{input}");
        }
    }

    #[test]
    fn users_round_trip_through_the_record() {
        let mut user = oci_spec::runtime::User::default();
        user.set_uid(1000);
        user.set_gid(2000);
        user.set_additional_gids(Some(vec![2000, 3000]));
        assert_eq!(user_record(&user), "1000:2000:2000,3000");
        let linux = |uid, gid, groups: &[i64]| {
            Some(cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid,
                    gid,
                    supplemental_groups: groups.to_vec(),
                }),
            })
        };
        assert_eq!(
            container_user(&user_record(&user)),
            linux(1000, 2000, &[2000, 3000])
        );
        user.set_additional_gids(None);
        assert_eq!(container_user(&user_record(&user)), linux(1000, 2000, &[]));
        assert_eq!(container_user("0:0"), linux(0, 0, &[]));
        for bad in ["", "x:0", "0", "0:0:a"] {
            assert_eq!(container_user(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn log_paths_stay_in_the_log_directory() {
        let pod = cri::PodSandboxConfig {
            log_directory: "/var/log/pods/x".into(),
            ..Default::default()
        };
        assert_eq!(
            log_file(&pod, "c/0.log").unwrap(),
            Some(PathBuf::from("/var/log/pods/x/c/0.log"))
        );
        assert_eq!(log_file(&pod, "").unwrap(), None);
        for bad in ["/etc/passwd", "../escape.log", "c/../../x", "./c/0.log"] {
            let err = log_file(&pod, bad).unwrap_err();
            assert!(err.to_string().contains("config.log_path"), "{bad}: {err}");
        }
        let no_dir = cri::PodSandboxConfig::default();
        assert!(log_file(&no_dir, "c.log").is_err());
    }
}
