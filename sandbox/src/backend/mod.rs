//! The `Backend` trait: the one seam where isolation differs.
//!
//! A shim owns one pod. The pod's **sandbox** task is created first (native:
//! the pause container holding the pod's UTS/IPC/network namespaces; microvm:
//! the VM itself plus the pause process inside it); **containers** are then
//! created in it from OCI bundles. Everything after creation — start, exec,
//! kill, delete, pids, pause/resume, update, stats, pty resize, stdin close —
//! goes through the backend by task id, so nothing outside `backend/` knows how
//! a task is isolated.
//!
//! Written with the microvm case in mind:
//! * A task's `pid` is whatever the backend can signal and report: a host pid
//!   for native and hardened, the guest pid for microvm (the host sees only
//!   QEMU). Callers never `kill(2)` it themselves; they call [`Backend::kill`].
//! * Exits are *pushed* by the backend to the [`ExitSink`] it was given: native
//!   learns them from its SIGCHLD reaper, microvm from the agent's wait stream.
//!   No caller waits on a pid.
//! * stdio is named, not passed as fds ([`Stdio`]: FIFO paths or `file://`
//!   URIs as containerd gives them). Native opens them on the host; microvm
//!   would copy them over its agent channel.
//! * The bundle's `rootfs` is already mounted by the shim when `create` runs;
//!   native uses it directly, microvm would share it into the guest.
//! * Resources and stats use Caisson's own types ([`TaskStats`], OCI
//!   `LinuxResources`), not a cgroup API, since a VM's cgroups are in the guest.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use oci_spec::runtime::{LinuxResources, Process};

/// ResizePty on a process's held stdio: `InvalidArgument` when it has no
/// terminal. Shared by the backends that pump a pty themselves.
pub(crate) fn resize_held_pty(
    stdio: &crate::host::stdio::HeldStdio,
    id: &str,
    exec_id: Option<&str>,
    width: u16,
    height: u16,
) -> Result<()> {
    let master = stdio
        .pty_master()
        .ok_or_else(|| BackendError::InvalidArgument {
            what: "resize_pty".into(),
            reason: match exec_id {
                Some(exec_id) => format!("exec {id}/{exec_id} has no terminal"),
                None => format!("task {id} has no terminal"),
            },
        })?;
    crate::host::console::resize(master, width, height).map_err(|e| BackendError::Failed {
        op: "resize pty",
        id: id.to_string(),
        reason: e.to_string(),
    })
}

/// `Failed`: `op` on task `id` did not work, and why.
pub(crate) fn failed(op: &'static str, id: &str, reason: impl std::fmt::Display) -> BackendError {
    BackendError::Failed {
        op,
        id: id.to_string(),
        reason: reason.to_string(),
    }
}

/// `NotFound` for task `id`.
pub(crate) fn not_found(id: &str) -> BackendError {
    BackendError::NotFound(id.to_string())
}

/// Registers `exec` among a task's `execs` (run later by `start_exec`);
/// `AlreadyExists` for an exec id the task has. For the backends that keep
/// registered execs in a map of their own.
pub(crate) fn register_exec(
    execs: &mut std::collections::HashMap<String, ExecSpec>,
    exec: &ExecSpec,
) -> Result<()> {
    if execs.contains_key(&exec.exec_id) {
        return Err(BackendError::AlreadyExists {
            what: "exec",
            id: exec.exec_id.clone(),
        });
    }
    execs.insert(exec.exec_id.clone(), exec.clone());
    Ok(())
}

/// A backend's options from their JSON (blank: the defaults); `what` names
/// the source in the error.
pub(crate) fn options_from_json<T: serde::de::DeserializeOwned + Default>(
    json: &str,
    what: &str,
) -> Result<T> {
    if json.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(json).map_err(|e| BackendError::InvalidArgument {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// Locks `m`, taking over a poisoned lock (a panicked holder leaves the
/// maps consistent: every update is a single insert or remove).
pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub mod defaults;
pub mod hardened;
pub mod microvm;
pub mod native;
pub mod oci;

/// A file a backend may leave in a task's bundle when the task ended for a
/// reason its exit status cannot say (microvm: the pod's VM died): one line,
/// `<reason>\t<message>`, which caissond reports as the container's
/// `reason` and `message`.
pub const EXIT_REASON_FILE: &str = "caisson-exit-reason";

/// What a task is in its pod (from `io.kubernetes.cri.container-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskKind {
    /// The pod's infra task; created first, deleted last.
    Sandbox,
    /// An application container of the pod with this sandbox id.
    Container { sandbox_id: String },
}

/// Where a process's stdio goes, as containerd names it: a FIFO path, a
/// `file://` URI (append to a file), a `crilog://` URI (CRI log records the
/// shim writes; caissond's choice), or empty for none (`/dev/null`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    /// The process gets a pseudo-terminal; stdout carries it, stderr is unused.
    pub terminal: bool,
    /// Where to serve the output live to attached clients
    /// (`host::attach`); only a task's init has one.
    pub attach: Option<PathBuf>,
}

/// A task to create from an OCI bundle (`bundle/config.json`, `bundle/rootfs`).
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub id: String,
    pub bundle: PathBuf,
    pub kind: TaskKind,
    pub stdio: Stdio,
    /// CRIU images to restore the task's processes from when it starts,
    /// instead of running its init (the task API's
    /// `CreateTaskRequest.checkpoint`). Only backends whose
    /// [`Backend::can_restore`] is true accept it.
    pub checkpoint: Option<PathBuf>,
}

/// A checkpoint of a running task's processes (the task API's `Checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSpec {
    /// Where CRIU writes its images (an existing, empty directory).
    pub images_dir: PathBuf,
    /// Where CRIU writes `dump.log` and `stats-dump` (the images dir when
    /// none is given).
    pub work_dir: Option<PathBuf>,
    /// Stop the task after the dump (containerd's `exit` option); by
    /// default it keeps running.
    pub exit: bool,
    /// CRIU is killed, and the checkpoint fails, after this long.
    pub timeout: Duration,
}

/// An additional process in a running task (`Exec`).
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub container_id: String,
    pub exec_id: String,
    pub process: Process,
    pub stdio: Stdio,
}

/// A process that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub container_id: String,
    /// None for the task's init process.
    pub exec_id: Option<String>,
    pub pid: u32,
    /// Exit code, or 128 + signal number when killed by a signal.
    pub status: u32,
    pub exited_at: SystemTime,
    /// The kernel's OOM killer killed a process of the task (init exits only).
    pub oom_killed: bool,
}

/// Receives every exit a backend observes. Called from the backend's own
/// threads; must not block for long.
pub type ExitSink = Arc<dyn Fn(Exit) + Send + Sync>;

/// One process of a task (`Pids`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The exec id when the process is an exec's init.
    pub exec_id: Option<String>,
}

/// Resource usage of a task, in the units containerd's metrics use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Total CPU time consumed, nanoseconds.
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    /// Usage minus inactive file cache (what kubelet calls working set).
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub oom_events: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub memory_cache_bytes: u64,
    /// Times the memory limit was hit (v1 `memory.failcnt`, v2 `max` of
    /// memory.events).
    pub memory_failcnt: u64,
}

/// Errors a backend reports; the task service maps them to ttrpc codes.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("task {0:?} not found")]
    NotFound(String),
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    #[error("task {id:?} is {state}: cannot {op}")]
    InvalidState {
        id: String,
        state: String,
        op: &'static str,
    },
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: String, reason: String },
    #[error("{op} is not supported by the {backend} backend")]
    Unsupported {
        op: &'static str,
        backend: &'static str,
    },
    #[error("{op} {id:?}: {reason}")]
    Failed {
        op: &'static str,
        id: String,
        reason: String,
    },
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// How a pod's tasks are isolated. One instance serves one shim (one pod).
pub trait Backend: Send + Sync {
    /// Short name for logs and errors (`native`, `hardened`, `microvm`).
    fn name(&self) -> &'static str;

    /// Creates a task (its init process exists but has not run the user's
    /// program yet). Returns its pid.
    fn create(&self, task: &TaskSpec) -> Result<u32>;

    /// Starts a created task's init process. Returns its pid.
    fn start(&self, id: &str) -> Result<u32>;

    /// Registers an exec process in a running task; it runs on `start_exec`.
    fn exec(&self, exec: &ExecSpec) -> Result<()>;

    /// Runs a registered exec process. Returns its pid.
    fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32>;

    /// Sends `signal` to the task's init (or an exec's process); with `all`,
    /// to every process of the task.
    fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()>;

    /// Removes an exited task (or exec) and everything the backend made for it.
    fn delete(&self, id: &str, exec_id: Option<&str>) -> Result<()>;

    /// Every process of the task.
    fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>>;

    /// Freezes every process of the task.
    fn pause(&self, id: &str) -> Result<()>;

    /// Thaws a paused task.
    fn resume(&self, id: &str) -> Result<()>;

    /// Changes a running task's resource limits.
    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()>;

    /// Resource usage of the task.
    fn stats(&self, id: &str) -> Result<TaskStats>;

    /// Resizes the pseudo-terminal of a task's init or exec process.
    fn resize_pty(&self, id: &str, exec_id: Option<&str>, width: u16, height: u16) -> Result<()>;

    /// Closes the stdin of a task's init or exec process (the process sees EOF).
    fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<()>;

    /// Starts new files at a task's `crilog://` log paths (kubelet rotated
    /// the old ones: CRI ReopenContainerLog).
    fn reopen_logs(&self, id: &str) -> Result<()>;

    /// Writes a checkpoint of a running task's processes with CRIU.
    fn checkpoint(&self, id: &str, spec: &CheckpointSpec) -> Result<()> {
        let _ = (id, spec);
        Err(BackendError::Unsupported {
            op: "checkpoint",
            backend: self.name(),
        })
    }

    /// Whether [`Backend::create`] takes a [`TaskSpec::checkpoint`] to
    /// restore from.
    fn can_restore(&self) -> bool {
        false
    }

    /// The shim is exiting: release what the backend holds for the pod
    /// beyond its tasks (microvm: the VM). Tasks left are not reported.
    fn shutdown(&self) {}
}
