//! The gRPC surface: CRI v1 RuntimeService and ImageService, and Caisson's
//! admin Images service (archive import), all on one unix socket (0660,
//! owner root). Handlers are thin: they name the request in a span and call
//! the [`Runtime`] or the image store; errors become statuses in `status.rs`.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use caisson_image::{ImageStore, ImportOptions};
use caisson_proto::admin;
use caisson_proto::cri::{self, runtime_service_server::RuntimeService};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::authority::AuthorityFix;
use crate::call_log::{record_id, CallLogLayer};
use crate::image::ImageApi;
use crate::runtime::{ChangeKind, ContainerChange, Runtime};
use crate::spec::limits::MAX_MESSAGE;
use crate::status::CriError;
use crate::streaming::server::{StreamRequest, StreamingError, StreamingServer};

pub const RUNTIME_NAME: &str = "caisson";
pub const CRI_VERSION: &str = "v1";

type Rsp<T> = Result<Response<T>, Status>;

/// INVALID_ARGUMENT naming `field` when a required id is empty (an empty id
/// must not read as "not found").
/// The id also names the call in its span and failure line.
fn required<'a>(field: &str, id: &'a str) -> Result<&'a str, Status> {
    if id.is_empty() {
        return Err(CriError::invalid(field, "must not be empty").into());
    }
    record_id(field, id);
    Ok(id)
}

#[derive(Clone)]
pub struct RuntimeApi {
    pub rt: Arc<Runtime>,
    /// Where Exec, Attach and PortForward URLs point.
    streaming: Arc<StreamingServer>,
    /// The handlers Status lists with their features, computed on the
    /// first Status (the config does not change while caissond runs).
    handlers: Arc<tokio::sync::OnceCell<Vec<cri::RuntimeHandler>>>,
}

impl RuntimeApi {
    pub fn new(rt: Arc<Runtime>, streaming: Arc<StreamingServer>) -> RuntimeApi {
        RuntimeApi {
            rt,
            streaming,
            handlers: Default::default(),
        }
    }

    /// The configured handlers and their features (an `oci` handler's
    /// runtime CLI is asked once, off the async workers).
    async fn runtime_handlers(&self) -> Result<Vec<cri::RuntimeHandler>, Status> {
        let handlers = self
            .handlers
            .get_or_try_init(|| {
                let rt = self.rt.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        rt.config
                            .runtimes
                            .handlers
                            .iter()
                            .map(|(name, handler)| cri::RuntimeHandler {
                                name: name.clone(),
                                features: Some(cri::RuntimeHandlerFeatures {
                                    recursive_read_only_mounts: recursive_read_only_mounts(handler),
                                    user_namespaces: user_namespaces(handler),
                                }),
                            })
                            .collect()
                    })
                    .await
                    .map_err(|e| Status::internal(format!("reading the handlers' features: {e}")))
                }
            })
            .await?;
        Ok(handlers.clone())
    }
}

impl RuntimeApi {
    /// A single-use URL on the streaming server.
    fn stream_url(&self, request: StreamRequest) -> Result<String, Status> {
        self.streaming.url_for(request).map_err(|e| match e {
            StreamingError::TooManyPending => Status::resource_exhausted(e.to_string()),
            other => Status::internal(other.to_string()),
        })
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeApi {
    async fn version(&self, _r: Request<cri::VersionRequest>) -> Rsp<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Rsp<cri::RunPodSandboxResponse> {
        let r = r.into_inner();
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("invalid config: is required"))?;
        let id = self.rt.run_pod_sandbox(config, &r.runtime_handler).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Rsp<cri::StopPodSandboxResponse> {
        let id = r.into_inner().pod_sandbox_id;
        self.rt
            .stop_pod_sandbox(required("pod_sandbox_id", &id)?)
            .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Rsp<cri::RemovePodSandboxResponse> {
        let id = r.into_inner().pod_sandbox_id;
        self.rt
            .remove_pod_sandbox(required("pod_sandbox_id", &id)?)
            .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Rsp<cri::PodSandboxStatusResponse> {
        let r = r.into_inner();
        let id = required("pod_sandbox_id", &r.pod_sandbox_id)?;
        Ok(Response::new(self.rt.pod_status(id, r.verbose)?))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Rsp<cri::ListPodSandboxResponse> {
        Ok(Response::new(cri::ListPodSandboxResponse {
            items: self.rt.list_pods(r.into_inner().filter),
        }))
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Rsp<cri::CreateContainerResponse> {
        let r = r.into_inner();
        record_id("pod_sandbox_id", &r.pod_sandbox_id);
        let config = r
            .config
            .ok_or_else(|| Status::invalid_argument("invalid config: is required"))?;
        let id = self
            .rt
            .create_container(&r.pod_sandbox_id, config, r.sandbox_config)
            .await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Rsp<cri::StartContainerResponse> {
        let id = r.into_inner().container_id;
        self.rt
            .start_container(required("container_id", &id)?)
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Rsp<cri::StopContainerResponse> {
        let r = r.into_inner();
        self.rt
            .stop_container(required("container_id", &r.container_id)?, r.timeout)
            .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Rsp<cri::RemoveContainerResponse> {
        let id = r.into_inner().container_id;
        self.rt
            .remove_container(required("container_id", &id)?)
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Rsp<cri::ListContainersResponse> {
        Ok(Response::new(cri::ListContainersResponse {
            containers: self.rt.list_containers(r.into_inner().filter),
        }))
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Rsp<cri::ContainerStatusResponse> {
        let r = r.into_inner();
        let id = required("container_id", &r.container_id)?;
        Ok(Response::new(self.rt.container_status(id, r.verbose)?))
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Rsp<cri::UpdateContainerResourcesResponse> {
        let r = r.into_inner();
        self.rt
            .update_container_resources(required("container_id", &r.container_id)?, r.linux)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Rsp<cri::ReopenContainerLogResponse> {
        let id = r.into_inner().container_id;
        self.rt
            .reopen_container_log(required("container_id", &id)?)
            .await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Rsp<cri::ExecSyncResponse> {
        let r = r.into_inner();
        Ok(Response::new(
            self.rt
                .exec_sync(required("container_id", &r.container_id)?, r.cmd, r.timeout)
                .await?,
        ))
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Rsp<cri::ExecResponse> {
        let r = r.into_inner();
        required("container_id", &r.container_id)?;
        let request = self.rt.exec_request(&r)?;
        Ok(Response::new(cri::ExecResponse {
            url: self.stream_url(request)?,
        }))
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Rsp<cri::AttachResponse> {
        let r = r.into_inner();
        required("container_id", &r.container_id)?;
        let request = self.rt.attach_request(&r)?;
        Ok(Response::new(cri::AttachResponse {
            url: self.stream_url(request)?,
        }))
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Rsp<cri::PortForwardResponse> {
        let r = r.into_inner();
        required("pod_sandbox_id", &r.pod_sandbox_id)?;
        let request = self.rt.port_forward_request(&r)?;
        Ok(Response::new(cri::PortForwardResponse {
            url: self.stream_url(request)?,
        }))
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Rsp<cri::ContainerStatsResponse> {
        let id = r.into_inner().container_id;
        let stats = self
            .rt
            .container_stats(required("container_id", &id)?)
            .await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Rsp<cri::ListContainerStatsResponse> {
        let stats = self.rt.list_container_stats(r.into_inner().filter).await;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Rsp<cri::PodSandboxStatsResponse> {
        let id = r.into_inner().pod_sandbox_id;
        let stats = self
            .rt
            .pod_sandbox_stats(required("pod_sandbox_id", &id)?)
            .await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Rsp<cri::ListPodSandboxStatsResponse> {
        let stats = self.rt.list_pod_sandbox_stats(r.into_inner().filter).await;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Rsp<cri::UpdateRuntimeConfigResponse> {
        let cidr = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        // Recorded for the CNI plugins (pod networking is a later issue).
        tracing::info!(pod_cidr = %cidr, "runtime config updated");
        *self.rt.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()) = cidr;
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Rsp<cri::StatusResponse> {
        let verbose = r.into_inner().verbose;
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            network_condition(&self.rt.config.network.cni_conf_dir),
        ];
        let handlers = self.runtime_handlers().await?;
        let mut info = std::collections::HashMap::new();
        if verbose {
            info.insert(
                "config".to_string(),
                serde_json::to_string(&self.rt.config).unwrap_or_default(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: handlers,
            // SupplementalGroupsPolicy Strict: the image's /etc/group is
            // not merged in (spec/user.rs).
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        r: Request<cri::CheckpointContainerRequest>,
    ) -> Rsp<cri::CheckpointContainerResponse> {
        self.rt.checkpoint_container(r.into_inner()).await?;
        Ok(Response::new(cri::CheckpointContainerResponse {}))
    }

    type GetContainerEventsStream =
        Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> Rsp<Self::GetContainerEventsStream> {
        let mut rx = self.rt.changes.subscribe();
        let rt = self.rt.clone();
        let stream = async_stream(move |tx| async move {
            while let Some(change) = next_change(&mut rx).await {
                let kind = match change.kind {
                    ChangeKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
                    ChangeKind::Started => cri::ContainerEventType::ContainerStartedEvent,
                    ChangeKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
                    ChangeKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
                };
                let status = rt
                    .container_status(&change.container_id, false)
                    .ok()
                    .and_then(|s| s.status);
                let event = cri::ContainerEventResponse {
                    container_id: change.container_id.clone(),
                    container_event_type: kind as i32,
                    created_at: change.at,
                    pod_sandbox_status: rt
                        .pod_status(&change.pod_id, false)
                        .ok()
                        .and_then(|s| s.status),
                    containers_statuses: status.into_iter().collect(),
                };
                if tx.send(Ok(event)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Rsp<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::runtime::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Rsp<cri::ListPodSandboxMetricsResponse> {
        let pod_metrics = self.rt.list_pod_sandbox_metrics().await;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    async fn runtime_config(
        &self,
        _r: Request<cri::RuntimeConfigRequest>,
    ) -> Rsp<cri::RuntimeConfigResponse> {
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}

/// The next container change; a subscriber that fell behind skips what it
/// missed (with a warning) rather than ending its stream. `None` once
/// the runtime is gone.
async fn next_change(
    rx: &mut tokio::sync::broadcast::Receiver<ContainerChange>,
) -> Option<ContainerChange> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match rx.recv().await {
            Ok(change) => return Some(change),
            Err(RecvError::Lagged(skipped)) => tracing::warn!(
                skipped,
                "GetContainerEvents subscriber fell behind: container events skipped"
            ),
            Err(RecvError::Closed) => return None,
        }
    }
}

/// Whether a handler's containers get recursively read-only mounts
/// (`rro`): the native and hardened backends (libcontainer) apply them with
/// mount_setattr(2) where the kernel has it. An `oci` handler's runtime CLI
/// is whatever `runtime_path` names: claimed only when its `features`
/// command lists `rro` among its mount options (runc 1.1 does; crun 1.8 has
/// no `features` command, so it is not claimed).
fn recursive_read_only_mounts(handler: &crate::config::Handler) -> bool {
    if !kernel_has_mount_setattr() {
        return false;
    }
    if handler.backend != "oci" {
        return true;
    }
    let options: caisson_sandbox::backend::oci::OciOptions =
        toml::Value::Table(handler.options.clone().into_iter().collect())
            .try_into()
            .unwrap_or_default();
    runtime_lists_rro(&options.runtime_path)
}

/// Whether `runtime features` (the OCI runtime features document) lists
/// `rro`; false for a runtime that fails, hangs (killed after 5 s) or
/// prints something else.
fn runtime_lists_rro(runtime: &Path) -> bool {
    let listed = runtime_features(runtime)
        .and_then(|doc| {
            Some(
                doc.get("mountOptions")?
                    .as_array()?
                    .iter()
                    .any(|o| o.as_str() == Some("rro")),
            )
        })
        .unwrap_or(false);
    tracing::debug!(runtime = %runtime.display(), listed, "rro among the runtime's mount options");
    listed
}

/// `runtime features` parsed as JSON, within 5 s.
fn runtime_features(runtime: &Path) -> Option<serde_json::Value> {
    let (status, out) =
        run_with_deadline(runtime, "features", std::time::Duration::from_secs(5)).ok()?;
    if !status.success() {
        return None;
    }
    serde_json::from_slice(&out).ok()
}

/// Runs `program arg` (no stdin, stderr dropped) and returns its status
/// and stdout, killing it past `timeout`; errors name the program.
pub(crate) fn run_with_deadline(
    program: &Path,
    arg: &str,
    timeout: std::time::Duration,
) -> Result<(std::process::ExitStatus, Vec<u8>), String> {
    use std::io::Read;
    let shown = program.display();
    let mut child = std::process::Command::new(program)
        .arg(arg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown} {arg} did not answer within {timeout:?}"));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{shown}: {e}"));
            }
        }
    };
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_end(&mut out);
    }
    Ok((status, out))
}

/// Whether a handler runs `hostUsers: false` pods (KEP-127): native makes
/// the pod's user namespace with kubelet's mappings, hardened runs every pod
/// in one (from its pool). Both idmap the rootfs's overlay lower layers
/// (Linux 5.19) and bind tmpfs sources such as the pod's `/dev/shm`
/// (tmpfs takes idmapped mounts from Linux 6.3): claimed where
/// mount_setattr(2) exists and the kernel is 6.3 or later. An `oci`
/// handler's runtime is not asked (caissond would hand it the mappings,
/// but nothing here checks it honours them).
fn user_namespaces(handler: &crate::config::Handler) -> bool {
    matches!(handler.backend.as_str(), "native" | "hardened")
        && kernel_has_mount_setattr()
        && kernel_at_least((6, 3))
}

/// Whether the running kernel's release (`/proc/sys/kernel/osrelease`,
/// read once) is at least `want` (major, minor).
fn kernel_at_least(want: (u32, u32)) -> bool {
    static RELEASE: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    let release = RELEASE.get_or_init(|| {
        parse_release(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
    });
    release.is_some_and(|r| r >= want)
}

/// `6.18.0-amd64` → (6, 18).
fn parse_release(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

/// mount_setattr(2) (Linux 5.12), probed once: with no valid arguments it
/// fails EINVAL or EBADF where it exists, ENOSYS (or EPERM under a
/// seccomp filter) where it does not.
pub(crate) fn kernel_has_mount_setattr() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: no pointer is dereferenced (NULL attr, size 0).
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                std::ptr::null::<libc::c_char>(),
                0,
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        r == 0 || !matches!(errno, Some(libc::ENOSYS) | Some(libc::EPERM))
    })
}

/// A stream fed by a task through a channel.
fn async_stream<T, F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Caisson's admin API: loading image archives into a running caissond.
#[derive(Clone)]
pub struct AdminApi {
    pub images: Arc<ImageStore>,
}

#[tonic::async_trait]
impl admin::images_server::Images for AdminApi {
    async fn import(&self, r: Request<admin::ImportRequest>) -> Rsp<admin::ImportResponse> {
        let r = r.into_inner();
        let path = std::path::PathBuf::from(&r.path);
        if !path.is_absolute() {
            return Err(CriError::invalid("path", "must be an absolute path on the node").into());
        }
        let images = self.images.clone();
        let opts = ImportOptions {
            name: (!r.name.is_empty()).then_some(r.name),
        };
        let report = tokio::task::spawn_blocking(move || images.import_file(&path, &opts))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(CriError::from)?;
        Ok(Response::new(admin::ImportResponse {
            images: report
                .images
                .into_iter()
                .map(|i| admin::ImportedImage {
                    id: i.id.to_string(),
                    repo_tags: i.repo_tags,
                })
                .collect(),
        }))
    }
}

/// Serves everything on `socket` until `shutdown` resolves.
pub async fn serve(
    socket: &Path,
    rt: Arc<Runtime>,
    images: Arc<ImageStore>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o660))?;
    nix::unistd::chown(
        socket,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    )?;
    let endpoint = format!("unix://{}", socket.display());
    tracing::info!(%endpoint, "caissond ready: serving CRI v1");
    println!("caissond is ready. Use it with:\n  crictl --runtime-endpoint {endpoint} --image-endpoint {endpoint} ps");
    // Every connection's client bytes go through the `:authority` fix, so
    // Go gRPC clients that send the socket path are answered.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |conn| conn.map(AuthorityFix::new),
    );
    let image_api = ImageApi::new(
        images.clone(),
        rt.config.registries.clone(),
        rt.config.pause_image.clone(),
    );
    let sessions = Arc::new(crate::runtime::streams::RuntimeSessions(rt.clone()));
    let streaming = StreamingServer::start(&rt.config.streaming, sessions).await?;
    crate::metrics_http::start(&rt.config.metrics, rt.clone()).await?;
    tonic::transport::Server::builder()
        .layer(CallLogLayer)
        .add_service(admin::runtime_server::RuntimeServer::new(
            crate::admin::AdminRuntime::new(rt.clone()),
        ))
        .add_service(
            cri::runtime_service_server::RuntimeServiceServer::new(RuntimeApi::new(rt, streaming))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            cri::image_service_server::ImageServiceServer::new(image_api)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(admin::images_server::ImagesServer::new(AdminApi { images }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// NetworkReady: true once a CNI config loads from `dir` (read at each call).
fn network_condition(dir: &std::path::Path) -> cri::RuntimeCondition {
    let (status, reason, message) = match crate::network::cni::load(dir) {
        Ok(_) => (true, String::new(), String::new()),
        Err(e) => (
            false,
            "NetworkPluginNotReady".to_string(),
            format!("cni config uninitialized: {e}"),
        ),
    };
    cri::RuntimeCondition {
        r#type: "NetworkReady".into(),
        status,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: &str) -> ContainerChange {
        ContainerChange {
            container_id: id.into(),
            pod_id: "pod".into(),
            kind: ChangeKind::Created,
            at: 0,
        }
    }

    #[tokio::test]
    async fn a_lagging_event_subscriber_skips_and_goes_on() {
        let (tx, mut rx) = tokio::sync::broadcast::channel(2);
        for id in ["a", "b", "c", "d"] {
            tx.send(change(id)).unwrap();
        }
        // "a" and "b" were overwritten: skipped, not the end of the stream.
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(next_change(&mut rx).await.unwrap().container_id);
        }
        tx.send(change("e")).unwrap();
        got.push(next_change(&mut rx).await.unwrap().container_id);
        assert_eq!(got, ["c", "d", "e"]);
        drop(tx);
        assert!(next_change(&mut rx).await.is_none());
    }

    #[test]
    fn user_namespaces_follow_backend_and_kernel() {
        assert_eq!(parse_release("6.18.0-1-amd64\n"), Some((6, 18)));
        assert_eq!(parse_release("5.10"), Some((5, 10)));
        assert_eq!(parse_release("6.3rc1"), Some((6, 3)));
        assert_eq!(parse_release("bogus"), None);
        let kernel = kernel_has_mount_setattr() && kernel_at_least((6, 3));
        let handler = |backend: &str| crate::config::Handler {
            pod_overhead: None,
            backend: backend.into(),
            options: Default::default(),
        };
        assert_eq!(user_namespaces(&handler("native")), kernel);
        assert_eq!(user_namespaces(&handler("hardened")), kernel);
        assert!(!user_namespaces(&handler("oci")));
        assert!(!user_namespaces(&handler("microvm")));
    }

    #[test]
    fn recursive_read_only_mounts_follow_backend_kernel_and_runtime() {
        let kernel = kernel_has_mount_setattr();
        let handler = |backend: &str, runtime: Option<&str>| crate::config::Handler {
            pod_overhead: None,
            backend: backend.into(),
            options: runtime
                .map(|r| ("runtime_path".to_string(), toml::Value::String(r.into())))
                .into_iter()
                .collect(),
        };
        // runc 1.1's `features` lists rro; crun 1.8 has no `features`; a
        // missing runtime lists nothing.
        let runc_lists_rro = std::path::Path::new("/usr/sbin/runc").exists();
        for (h, want) in [
            (handler("native", None), kernel),
            (handler("hardened", None), kernel),
            (handler("oci", None), kernel && runc_lists_rro),
            (handler("oci", Some("/usr/bin/crun")), false),
            (handler("oci", Some("/nonexistent/runtime")), false),
        ] {
            assert_eq!(recursive_read_only_mounts(&h), want, "{h:?}");
        }
    }

    #[test]
    fn empty_ids_are_invalid_arguments_naming_the_field() {
        let e = required("container_id", "").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("container_id"), "{}", e.message());
        assert_eq!(required("pod_sandbox_id", "abc").unwrap(), "abc");
    }
}
