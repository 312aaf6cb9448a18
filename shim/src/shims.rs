//! Talking to per-pod shims: [`ShimManager::start`] spawns (or finds) a pod's
//! `containerd-shim-caisson-v2`, [`ShimClient`] calls its Task API (ttrpc's
//! tokio client: one connection per pod, no thread of its own), and
//! [`serve_events`] is the events service shims publish task exits to (their
//! `TTRPC_ADDRESS`).
//!
//! **Why the async client**: ttrpc's sync client reads replies on a thread
//! that polls its socket with a 10 ms timeout, so every connected pod woke
//! caissond 100 times a second while nothing happened (1.4 % of a core with
//! a dozen idle pods). The tokio client waits on the socket in the reactor.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::{create_events, Events};
use tokio::sync::mpsc::UnboundedSender;

use caisson_sandbox::host::pod_view::{roots_env, ROOTS_ENV};
use caisson_sandbox::shim;

use crate::status::{from_ttrpc, CriError, CriResult};

/// The containerd namespace caissond's tasks live in (shim state is per namespace).
pub const NAMESPACE: &str = "caisson";

#[derive(Debug, Clone)]
pub struct ShimManager {
    pub binary: PathBuf,
    pub run_dir: PathBuf,
    pub events_address: String,
    /// The CRIU shims run for checkpoints (`CAISSON_CRIU_PATH`).
    pub criu_path: PathBuf,
    /// The dirs holding the pods' mounts, each a mount point of its own
    /// (`CAISSON_POD_MOUNT_ROOTS`, see `caisson_sandbox::host::pod_view`):
    /// set by [`crate::runtime::Runtime::new`].
    pub pod_mount_roots: Vec<PathBuf>,
}

impl ShimManager {
    fn command(&self, backend: &str) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env("CAISSON_SHIM_RUN_DIR", &self.run_dir)
            .env("TTRPC_ADDRESS", &self.events_address)
            .env("CAISSON_BACKEND", backend)
            .env(caisson_sandbox::checkpoint::CRIU_PATH_ENV, &self.criu_path);
        if !self.pod_mount_roots.is_empty() {
            cmd.env(ROOTS_ENV, roots_env(&self.pod_mount_roots));
        }
        cmd
    }

    /// Starts the shim of pod `pod_id` (bundle `bundle`) with the handler's
    /// backend options (a JSON object, `CAISSON_BACKEND_OPTIONS` in the
    /// shim; empty for none), as the shim's `start` would, without an exec
    /// of it (`caisson_sandbox::shim::start_pod_shim`): returns its address.
    pub async fn start(
        &self,
        pod_id: &str,
        bundle: &Path,
        backend: &str,
        options: &str,
    ) -> CriResult<String> {
        let mut cmd = self.command(backend);
        if !options.is_empty() {
            cmd.env("CAISSON_BACKEND_OPTIONS", options);
        }
        let (run_dir, pod_id, bundle) = (
            self.run_dir.clone(),
            pod_id.to_string(),
            bundle.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || {
            shim::start_pod_shim(cmd, &run_dir, NAMESPACE, &pod_id, &bundle)
        })
        .await
        .map_err(|e| CriError::internal("starting shim", e))?
        .map_err(|e| CriError::Internal(format!("starting the pod's shim: {e}")))
    }

    /// The address [`ShimManager::start`] gives pod `pod_id`'s shim, known
    /// before it starts.
    pub fn address(&self, pod_id: &str) -> String {
        shim::address_of(&shim::socket_path_in(&self.run_dir, NAMESPACE, pod_id))
    }

    /// Runs `delete` for a task whose shim is gone (kills what is left, unmounts).
    pub async fn delete_orphan(&self, task_id: &str, bundle: &Path, backend: &str) {
        let mut cmd = self.command(backend);
        cmd.args([
            "-namespace",
            NAMESPACE,
            "-id",
            task_id,
            "-bundle",
            &bundle.display().to_string(),
            "delete",
        ]);
        if bundle.is_dir() {
            cmd.current_dir(bundle);
        }
        let _ = tokio::task::spawn_blocking(move || cmd.output()).await;
    }

    /// Connects to the shim at `address` (`unix:///…`). Connecting a Unix
    /// socket does not wait for the server, so this stays a plain function;
    /// it must run inside caissond's tokio runtime (the client's reader is a
    /// task).
    pub fn connect(&self, address: &str) -> CriResult<ShimClient> {
        let err =
            |e: std::io::Error| CriError::internal(&format!("connecting to shim {address}"), e);
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let stream = std::os::unix::net::UnixStream::connect(path).map_err(err)?;
        let socket = ttrpc::r#async::transport::Socket::try_from(stream).map_err(err)?;
        Ok(ShimClient {
            client: TaskClient::new(ttrpc::r#async::Client::new(socket)),
        })
    }
}

/// A pod's shim. Each call has a deadline.
#[derive(Clone)]
pub struct ShimClient {
    client: TaskClient,
}

fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos() as i64)
}

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

macro_rules! call {
    ($self:ident, $method:ident, $req:expr, $op:expr) => {{
        $self
            .client
            .$method(ctx(CALL_TIMEOUT), &$req)
            .await
            .map_err(|e| from_ttrpc($op, e))
    }};
}

impl ShimClient {
    pub async fn create(&self, req: api::CreateTaskRequest) -> CriResult<u32> {
        Ok(call!(self, create, req, "creating task")?.pid)
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> CriResult<u32> {
        let req = api::StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        Ok(call!(self, start, req, "starting task")?.pid)
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> CriResult<()> {
        let req = api::KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        };
        call!(self, kill, req, "signalling task").map(|_: Empty| ())
    }

    /// Waits for a process to exit, up to `timeout`: None when it did not.
    pub async fn wait(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> CriResult<Option<api::WaitResponse>> {
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        // Our own deadline rather than parsing the client's timeout error;
        // the shim is given a second more so that it never answers first.
        let call = self
            .client
            .wait(ctx(timeout + Duration::from_secs(1)), &req);
        match tokio::time::timeout(timeout, call).await {
            Err(_elapsed) => Ok(None),
            Ok(Ok(r)) => Ok(Some(r)),
            Ok(Err(ttrpc::Error::RpcStatus(s))) if s.code() == ttrpc::Code::DEADLINE_EXCEEDED => {
                Ok(None)
            }
            Ok(Err(e)) => Err(from_ttrpc("waiting for task", e)),
        }
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> CriResult<api::DeleteResponse> {
        let req = api::DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        call!(self, delete, req, "deleting task")
    }

    pub async fn state(&self, id: &str) -> CriResult<api::StateResponse> {
        let req = api::StateRequest {
            id: id.into(),
            ..Default::default()
        };
        call!(self, state, req, "task state")
    }

    /// The task's cgroup metrics (`io.containerd.cgroups.v1.Metrics`).
    pub async fn stats(&self, id: &str) -> CriResult<api::StatsResponse> {
        let req = api::StatsRequest {
            id: id.into(),
            ..Default::default()
        };
        call!(self, stats, req, "task stats")
    }

    pub async fn exec(&self, req: api::ExecProcessRequest) -> CriResult<()> {
        call!(self, exec, req, "exec").map(|_: Empty| ())
    }

    /// Resizes the terminal of a process (`exec_id` "" for the init).
    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> CriResult<()> {
        let req = api::ResizePtyRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            width,
            height,
            ..Default::default()
        };
        call!(self, resize_pty, req, "resizing the terminal").map(|_: Empty| ())
    }

    /// Closes a process's stdin (`exec_id` "" for the init): it reads EOF
    /// once every writer of its stdin FIFO has closed too.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> CriResult<()> {
        let req = api::CloseIORequest {
            id: id.into(),
            exec_id: exec_id.into(),
            stdin: true,
            ..Default::default()
        };
        call!(self, close_io, req, "closing stdin").map(|_: Empty| ())
    }

    /// Checkpoints a task's processes into `images` (CRIU's log into
    /// `work`), leaving it running; the shim gives up after `timeout`.
    pub async fn checkpoint(
        &self,
        id: &str,
        images: &Path,
        work: &Path,
        timeout: Duration,
    ) -> CriResult<()> {
        let req = api::CheckpointTaskRequest {
            id: id.into(),
            path: images.display().to_string(),
            options: Some(runc_checkpoint_options(work)).into(),
            ..Default::default()
        };
        // The shim's own limit is this deadline less a second.
        let deadline = timeout + Duration::from_secs(1);
        self.client
            .checkpoint(ctx(deadline), &req)
            .await
            .map(|_: Empty| ())
            .map_err(|e| from_ttrpc("checkpointing task", e))
    }

    pub async fn update(&self, req: api::UpdateTaskRequest) -> CriResult<()> {
        call!(self, update, req, "updating task").map(|_: Empty| ())
    }

    /// The shim's own pid (`Connect`, as containerd asks it).
    pub async fn shim_pid(&self, id: &str) -> CriResult<u32> {
        let req = api::ConnectRequest {
            id: id.into(),
            ..Default::default()
        };
        call!(self, connect, req, "connecting to the shim")
            .map(|r: api::ConnectResponse| r.shim_pid)
    }

    pub async fn shutdown(&self, id: &str) -> CriResult<()> {
        let req = api::ShutdownRequest {
            id: id.into(),
            ..Default::default()
        };
        call!(self, shutdown, req, "shutting the shim down").map(|_: Empty| ())
    }
}

/// containerd's `CheckpointOptions` (runc shim types) with `work_path`
/// (field 9) set: CRIU's log beside, not among, the images.
fn runc_checkpoint_options(work: &Path) -> Any {
    let mut value = Vec::new();
    let mut out = containerd_shim_protos::protobuf::CodedOutputStream::vec(&mut value);
    out.write_string(9, &work.display().to_string())
        .and_then(|_| out.flush())
        .expect("writing to a Vec cannot fail");
    drop(out);
    Any {
        type_url: "containerd.runc.v1.CheckpointOptions".into(),
        value,
        ..Default::default()
    }
}

/// One event from a shim.
#[derive(Debug, Clone)]
pub struct ShimEvent {
    pub topic: String,
    pub event: Any,
}

struct EventSink {
    tx: UnboundedSender<ShimEvent>,
}

impl Events for EventSink {
    fn forward(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: api::ForwardRequest,
    ) -> ttrpc::Result<Empty> {
        let envelope = req.envelope.unwrap_or_default();
        let _ = self.tx.send(ShimEvent {
            topic: envelope.topic.clone(),
            event: envelope.event.unwrap_or_default(),
        });
        Ok(Empty::new())
    }
}

/// Serves the events API at `socket` (mode 0600); events go to `tx`.
pub fn serve_events(
    socket: &Path,
    tx: UnboundedSender<ShimEvent>,
) -> std::io::Result<ttrpc::Server> {
    let _ = std::fs::remove_file(socket);
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{}", socket.display()))
        .map_err(std::io::Error::other)?
        .register_service(create_events(Arc::new(EventSink { tx })));
    server.start().map_err(std::io::Error::other)?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(server)
}
