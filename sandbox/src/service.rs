//! The containerd Task service (task API v2 over ttrpc) for one pod.
//!
//! It keeps each task's and exec's state (created, running, paused, stopped,
//! exit status), answers `Wait` by blocking until the backend reports the
//! exit, publishes lifecycle events, and mounts the rootfs containerd hands to
//! `Create`. Everything about *how* a task runs is the [`Backend`]'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api;
use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message};
use containerd_shim_protos::Task;
use ttrpc::{Code, TtrpcContext};

use crate::backend::{Backend, BackendError, ExecSpec, Exit, Stdio, TaskKind, TaskSpec};
use crate::events::{timestamp, Publisher, TaskEvent};
use crate::mounts::{mount_rootfs, unmount_all, RootfsMount};

/// CRI annotation telling a pod's sandbox from its containers.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// CRI annotation naming the pod a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// The pod's limits from `LinuxPodSandboxConfig.resources` on a sandbox's
/// spec (containerd's names): CFS quota and period, memory in bytes. The
/// microvm backend sizes the pod's VM from them.
pub const SANDBOX_CPU_QUOTA_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_CPU_PERIOD_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const SANDBOX_CPU_SHARES_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-shares";
pub const SANDBOX_MEMORY_ANNOTATION: &str = "io.kubernetes.cri.sandbox-memory";
/// Annotation on an `Update` asking the shim to reopen the task's CRI log
/// files (caissond's ReopenContainerLog; the task API has no call for it).
pub const REOPEN_LOG_ANNOTATION: &str = "io.caisson.reopen-log";
/// A sandbox's port-forward socket in its bundle, for a backend whose
/// pods' `localhost` the host cannot dial from their network namespace
/// (microvm): see `backend::microvm::port_forward`.
pub const PORT_FORWARD_SOCKET: &str = "portforward.sock";
/// A task's attach socket in its bundle: its init's output, live
/// (`host::attach`), for CRI Attach.
pub const ATTACH_SOCKET: &str = "attach.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

impl State {
    fn status(self) -> Status {
        match self {
            State::Created => Status::CREATED,
            State::Running => Status::RUNNING,
            State::Paused => Status::PAUSED,
            State::Stopped => Status::STOPPED,
        }
    }

    fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
struct Process {
    pid: u32,
    state: State,
    stdio: Stdio,
    exit: Option<(u32, SystemTime)>,
}

impl Process {
    fn new(pid: u32, stdio: Stdio) -> Process {
        Process {
            pid,
            state: State::Created,
            stdio,
            exit: None,
        }
    }
}

#[derive(Debug)]
struct TaskEntry {
    bundle: PathBuf,
    init: Process,
    execs: HashMap<String, Process>,
    /// Where we mounted containerd's rootfs, to unmount on delete.
    mounted_rootfs: Option<PathBuf>,
}

/// What the shim's main loop is told when it should exit.
pub type ShutdownSignal = Sender<()>;

/// The Task service of one shim.
pub struct TaskService {
    backend: Arc<dyn Backend>,
    tasks: Mutex<HashMap<String, TaskEntry>>,
    exited: Condvar,
    publisher: Publisher,
    shutdown: Mutex<Option<ShutdownSignal>>,
}

type TtrpcResult<T> = ttrpc::Result<T>;

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn backend_status(e: BackendError) -> ttrpc::Error {
    let code = match &e {
        BackendError::NotFound(_) => Code::NOT_FOUND,
        BackendError::AlreadyExists { .. } => Code::ALREADY_EXISTS,
        BackendError::InvalidState { .. } => Code::FAILED_PRECONDITION,
        BackendError::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
        BackendError::Unsupported { .. } => Code::UNIMPLEMENTED,
        BackendError::Failed { .. } => Code::INTERNAL,
    };
    status(code, e.to_string())
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        status(Code::NOT_FOUND, format!("task {id:?} not found"))
    } else {
        status(
            Code::NOT_FOUND,
            format!("exec {exec_id:?} of task {id:?} not found"),
        )
    }
}

fn exec_opt(exec_id: &str) -> Option<&str> {
    (!exec_id.is_empty()).then_some(exec_id)
}

/// containerd's `ProcessDetails { exec_id }` (runc's shim types,
/// `containerd.runc.v1.ProcessDetails`), which `ctr task ps` shows beside an
/// exec's pid. One string field, encoded by hand: the shim protos crate does
/// not generate the runc option types.
fn process_details(exec_id: &str) -> Any {
    let mut value = Vec::new();
    let mut out = containerd_shim_protos::protobuf::CodedOutputStream::vec(&mut value);
    out.write_string(1, exec_id)
        .and_then(|_| out.flush())
        .expect("writing to a Vec cannot fail");
    drop(out);
    Any {
        type_url: "containerd.runc.v1.ProcessDetails".into(),
        value,
        ..Default::default()
    }
}

/// Reads `io.kubernetes.cri.*` annotations from `<bundle>/config.json`.
pub fn task_kind(bundle: &Path) -> Result<TaskKind, String> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("parsing {}: {e}", path.display()))?;
    let annotation = |key: &str| spec["annotations"][key].as_str().map(str::to_string);
    match (
        annotation(CONTAINER_TYPE_ANNOTATION).as_deref(),
        annotation(SANDBOX_ID_ANNOTATION),
    ) {
        (Some("container"), Some(sandbox_id)) if !sandbox_id.is_empty() => {
            Ok(TaskKind::Container { sandbox_id })
        }
        (Some("container"), _) => Err(format!(
            "{CONTAINER_TYPE_ANNOTATION}=container without {SANDBOX_ID_ANNOTATION}"
        )),
        _ => Ok(TaskKind::Sandbox),
    }
}

impl TaskService {
    pub fn new(
        backend: Arc<dyn Backend>,
        publisher: Publisher,
        shutdown: ShutdownSignal,
    ) -> Arc<TaskService> {
        Arc::new(TaskService {
            backend,
            tasks: Mutex::new(HashMap::new()),
            exited: Condvar::new(),
            publisher,
            shutdown: Mutex::new(Some(shutdown)),
        })
    }

    /// Called by the backend (through its [`crate::backend::ExitSink`]) for every exit.
    pub fn on_exit(&self, exit: Exit) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let Some(task) = tasks.get_mut(&exit.container_id) else {
            tracing::debug!(?exit, "exit of a task this shim no longer tracks");
            return;
        };
        let process = match &exit.exec_id {
            None => &mut task.init,
            Some(exec_id) => match task.execs.get_mut(exec_id) {
                Some(p) => p,
                None => return,
            },
        };
        process.state = State::Stopped;
        process.exit = Some((exit.status, exit.exited_at));
        tracing::info!(id = %exit.container_id, exec = ?exit.exec_id, pid = exit.pid, status = exit.status, "process exited");
        drop(tasks);
        self.exited.notify_all();
        if exit.oom_killed {
            tracing::warn!(id = %exit.container_id, "task was OOM-killed");
            self.publisher.publish(TaskEvent::Oom {
                id: exit.container_id.clone(),
            });
        }
        self.publisher.publish(TaskEvent::Exit {
            id: exit.container_id,
            exec_id: exit.exec_id.unwrap_or_default(),
            pid: exit.pid,
            status: exit.status,
            exited_at: exit.exited_at,
        });
    }

    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut TaskEntry, &mut Process) -> T,
    ) -> TtrpcResult<T> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id, ""))?;
        let mut process = match exec_opt(exec_id) {
            None => task.init.clone(),
            Some(e) => task
                .execs
                .get(e)
                .cloned()
                .ok_or_else(|| not_found(id, exec_id))?,
        };
        let out = f(task, &mut process);
        match exec_opt(exec_id) {
            None => task.init = process,
            Some(e) => {
                task.execs.insert(e.to_string(), process);
            }
        }
        Ok(out)
    }

    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<(Process, PathBuf)> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let task = tasks.get(id).ok_or_else(|| not_found(id, ""))?;
        let process = match exec_opt(exec_id) {
            None => task.init.clone(),
            Some(e) => task
                .execs
                .get(e)
                .cloned()
                .ok_or_else(|| not_found(id, exec_id))?,
        };
        Ok((process, task.bundle.clone()))
    }

    /// Tells the backend the shim is exiting (microvm: stops the VM).
    pub fn backend_shutdown(&self) {
        self.backend.shutdown();
    }

    /// Number of tasks this shim still holds.
    pub fn task_count(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn request_shutdown(&self) {
        if let Some(tx) = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
    }
}

/// Decodes a `typeurl`-wrapped OCI JSON value (containerd marshals runtime-spec
/// types as JSON inside `Any`).
fn decode_json_any<T: serde::de::DeserializeOwned>(any: &Any, what: &str) -> TtrpcResult<T> {
    serde_json::from_slice(&any.value)
        .map_err(|e| status(Code::INVALID_ARGUMENT, format!("{what}: {e}")))
}

/// Runs `call` on a thread of its own and returns what it returns. For the
/// calls that go deep (a task's create, start, exec and delete load specs
/// and libcontainer state): a thread's stack keeps every page it ever
/// touched, and ttrpc's handler threads live as long as their connection,
/// so each one that once served a create kept ~70 KiB; a short-lived thread's
/// stack is given back when it ends.
fn on_own_thread<T: Send>(call: impl FnOnce() -> TtrpcResult<T> + Send) -> TtrpcResult<T> {
    std::thread::scope(
        |s| match std::thread::Builder::new().spawn_scoped(s, call) {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(status(Code::INTERNAL, "the call panicked"))),
            Err(e) => Err(status(Code::INTERNAL, format!("starting a thread: {e}"))),
        },
    )
}

impl Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        on_own_thread(|| self.create_task(req))
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        on_own_thread(|| self.start_task(req))
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        on_own_thread(|| self.delete_task(req))
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        on_own_thread(|| self.exec_task(req))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.process(&req.id, "")?;
        let processes = self
            .backend
            .pids(&req.id)
            .map_err(backend_status)?
            .into_iter()
            .map(|p| api::ProcessInfo {
                pid: p.pid,
                info: p.exec_id.as_deref().map(process_details).into(),
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        let (process, _) = self.process(&req.id, "")?;
        if process.state != State::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {:?} is {}, not running", req.id, process.state.name()),
            ));
        }
        self.backend.pause(&req.id).map_err(backend_status)?;
        self.with_process(&req.id, "", |_, p| p.state = State::Paused)?;
        self.publisher.publish(TaskEvent::Paused { id: req.id });
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        let (process, _) = self.process(&req.id, "")?;
        if process.state != State::Paused {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {:?} is {}, not paused", req.id, process.state.name()),
            ));
        }
        self.backend.resume(&req.id).map_err(backend_status)?;
        self.with_process(&req.id, "", |_, p| {
            if p.exit.is_none() {
                p.state = State::Running
            }
        })?;
        self.publisher.publish(TaskEvent::Resumed { id: req.id });
        Ok(Empty::new())
    }

    fn checkpoint(
        &self,
        ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        let _span = tracing::info_span!("checkpoint", id = %req.id).entered();
        let (process, _) = self.process(&req.id, "")?;
        if process.state != State::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {:?} is {}, not running", req.id, process.state.name()),
            ));
        }
        let spec = crate::checkpoint::checkpoint_spec(&req, ctx.timeout_nano)?;
        self.backend
            .checkpoint(&req.id, &spec)
            .map_err(backend_status)?;
        tracing::info!(images = %spec.images_dir.display(), exit = spec.exit, "task checkpointed");
        Ok(Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let (process, _) = self.process(&req.id, &req.exec_id)?;
        if process.state == State::Stopped && !req.all {
            return Err(status(
                Code::NOT_FOUND,
                format!("process of task {:?} already finished", req.id),
            ));
        }
        self.backend
            .kill(&req.id, exec_opt(&req.exec_id), req.signal, req.all)
            .map_err(backend_status)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        self.process(&req.id, &req.exec_id)?;
        let (w, h) = (u16::try_from(req.width), u16::try_from(req.height));
        let (Ok(width), Ok(height)) = (w, h) else {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "width and height must fit in 16 bits",
            ));
        };
        self.backend
            .resize_pty(&req.id, exec_opt(&req.exec_id), width, height)
            .map_err(backend_status)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            self.backend
                .close_stdin(&req.id, exec_opt(&req.exec_id))
                .map_err(backend_status)?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.process(&req.id, "")?;
        if req
            .annotations
            .get(REOPEN_LOG_ANNOTATION)
            .is_some_and(|v| v == "true")
        {
            self.backend.reopen_logs(&req.id).map_err(backend_status)?;
            if req.resources.is_none() {
                return Ok(Empty::new());
            }
        }
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "resources are missing"))?;
        let resources: oci_spec::runtime::LinuxResources = decode_json_any(any, "resources")?;
        self.backend
            .update(&req.id, &resources)
            .map_err(backend_status)?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let task = tasks.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            let process = match exec_opt(&req.exec_id) {
                None => &task.init,
                Some(e) => task
                    .execs
                    .get(e)
                    .ok_or_else(|| not_found(&req.id, &req.exec_id))?,
            };
            if let Some((exit_status, exited_at)) = process.exit {
                return Ok(api::WaitResponse {
                    exit_status,
                    exited_at: Some(timestamp(exited_at)).into(),
                    ..Default::default()
                });
            }
            tasks = self
                .exited
                .wait_timeout(tasks, Duration::from_secs(60))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let (process, bundle) = self.process(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = match process.exit {
            Some((s, t)) => (s, Some(timestamp(t))),
            None => (0, None),
        };
        Ok(api::StateResponse {
            id: req.id,
            bundle: bundle.display().to_string(),
            pid: process.pid,
            status: EnumOrUnknown::new(process.state.status()),
            stdin: process.stdio.stdin,
            stdout: process.stdio.stdout,
            stderr: process.stdio.stderr,
            terminal: process.stdio.terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        self.process(&req.id, "")?;
        let stats = self.backend.stats(&req.id).map_err(backend_status)?;
        let metrics = crate::metrics::to_cgroup_v1_metrics(&stats);
        let mut any = Any::new();
        any.type_url = "io.containerd.cgroups.v1.Metrics".to_string();
        any.value = metrics
            .write_to_bytes()
            .map_err(|e| status(Code::INTERNAL, e.to_string()))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.process(&req.id, "").map(|(p, _)| p.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        let remaining = self.task_count();
        if remaining > 0 && !req.now {
            tracing::debug!(
                remaining,
                "shutdown requested while tasks remain: staying up"
            );
            return Ok(Empty::new());
        }
        tracing::info!("shutting down");
        self.request_shutdown();
        Ok(Empty::new())
    }
}

impl TaskService {
    fn create_task(&self, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        let _span = tracing::info_span!("create", id = %req.id).entered();
        if req.id.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "id must not be empty"));
        }
        let checkpoint = crate::checkpoint::restore_images(&req.checkpoint, self.backend.as_ref())?;
        if let Some(options) = req.options.as_ref() {
            // containerd's `[runtimes.<name>.options]`: this shim's backend
            // was configured before the task existed, so they cannot apply.
            tracing::warn!(
                type_url = %options.type_url,
                "ignoring the task's runtime options: set the backend's options in \
                 CAISSON_BACKEND_OPTIONS (see integration/containerd/README.md)"
            );
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("bundle {:?} must be an absolute path", req.bundle),
            ));
        }
        let kind = task_kind(&bundle).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        if self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&req.id)
        {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("task {:?} already exists", req.id),
            ));
        }
        let mounts: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let mounted_rootfs =
            mount_rootfs(&bundle, &mounts).map_err(|e| status(Code::INTERNAL, e.to_string()))?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            // CRI Attach reads the init's output here (served only when
            // the output goes to a CRI log, which the shim writes).
            attach: Some(bundle.join(ATTACH_SOCKET)),
        };
        let spec = TaskSpec {
            id: req.id.clone(),
            bundle: bundle.clone(),
            kind: kind.clone(),
            stdio: stdio.clone(),
            checkpoint,
        };
        let pid = match self.backend.create(&spec) {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(rootfs) = &mounted_rootfs {
                    let _ = unmount_all(rootfs);
                }
                return Err(backend_status(e));
            }
        };
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(
            req.id.clone(),
            TaskEntry {
                bundle,
                init: Process::new(pid, stdio),
                execs: HashMap::new(),
                mounted_rootfs,
            },
        );
        tracing::info!(pid, "task created");
        self.publisher.publish(TaskEvent::Create {
            id: req.id,
            bundle: req.bundle,
            pid,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        });
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start_task(&self, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let (process, _) = self.process(&req.id, &req.exec_id)?;
        if process.state != State::Created {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("process is {}, not created", process.state.name()),
            ));
        }
        let pid = match exec_opt(&req.exec_id) {
            None => self.backend.start(&req.id),
            Some(exec_id) => self.backend.start_exec(&req.id, exec_id),
        }
        .map_err(backend_status)?;
        self.with_process(&req.id, &req.exec_id, |_, p| {
            p.pid = pid;
            // A fast process may already have been reported as exited.
            if p.exit.is_none() {
                p.state = State::Running;
            }
        })?;
        match exec_opt(&req.exec_id) {
            None => self.publisher.publish(TaskEvent::Start { id: req.id, pid }),
            Some(_) => self.publisher.publish(TaskEvent::ExecStarted {
                id: req.id,
                exec_id: req.exec_id,
                pid,
            }),
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete_task(&self, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        let (process, _) = self.process(&req.id, &req.exec_id)?;
        if matches!(process.state, State::Running | State::Paused) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "process of task {:?} is {}: kill it before deleting",
                    req.id,
                    process.state.name()
                ),
            ));
        }
        self.backend
            .delete(&req.id, exec_opt(&req.exec_id))
            .map_err(backend_status)?;
        let (exit_status, exited_at) = process.exit.unwrap_or((0, SystemTime::now()));
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        match exec_opt(&req.exec_id) {
            Some(exec_id) => {
                if let Some(task) = tasks.get_mut(&req.id) {
                    task.execs.remove(exec_id);
                }
            }
            None => {
                if let Some(task) = tasks.remove(&req.id) {
                    if let Some(rootfs) = &task.mounted_rootfs {
                        if let Err(e) = unmount_all(rootfs) {
                            tracing::warn!(id = %req.id, error = %e, "unmounting rootfs");
                        }
                    }
                }
                drop(tasks);
                tracing::info!(id = %req.id, "task deleted");
                self.publisher.publish(TaskEvent::Delete {
                    id: req.id.clone(),
                    pid: process.pid,
                    status: exit_status,
                    exited_at,
                });
            }
        }
        Ok(api::DeleteResponse {
            pid: process.pid,
            exit_status,
            exited_at: Some(timestamp(exited_at)).into(),
            ..Default::default()
        })
    }

    fn exec_task(&self, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        if req.exec_id.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "exec_id must not be empty"));
        }
        let (init, _) = self.process(&req.id, "")?;
        if init.state != State::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {:?} is {}, not running", req.id, init.state.name()),
            ));
        }
        {
            let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            if tasks
                .get(&req.id)
                .is_some_and(|t| t.execs.contains_key(&req.exec_id))
            {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {:?} already exists", req.exec_id),
                ));
            }
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec spec is missing"))?;
        let process: oci_spec::runtime::Process = decode_json_any(spec, "exec spec")?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            attach: None,
        };
        self.backend
            .exec(&ExecSpec {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process,
                stdio: stdio.clone(),
            })
            .map_err(backend_status)?;
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = tasks.get_mut(&req.id) {
            task.execs
                .insert(req.exec_id.clone(), Process::new(0, stdio));
        }
        drop(tasks);
        self.publisher.publish(TaskEvent::ExecAdded {
            id: req.id,
            exec_id: req.exec_id,
        });
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_details_is_runc_shims_message() {
        let any = process_details("exec-1");
        assert_eq!(any.type_url, "containerd.runc.v1.ProcessDetails");
        // Field 1, length-delimited (tag 0x0a), 6 bytes: "exec-1".
        assert_eq!(any.value, b"\x0a\x06exec-1");
    }
}
