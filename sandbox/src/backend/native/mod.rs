//! The native backend: containers as host processes in Linux namespaces
//! and cgroups, made by libcontainer (youki), like runc or crun.
//!
//! The backend follows the OCI spec it is given: a sandbox is the pause
//! container with new UTS/IPC (and maybe PID) namespaces, a container joins
//! them by path; nothing here tells the two apart beyond bookkeeping.
//!
//! * **Processes**: libcontainer's builds (init and tenant), which `clone`
//!   children that run Rust code, never run in the multi-threaded shim: a
//!   single-threaded fork server does them ([`crate::host::forker`],
//!   [`process_io`]), with `as_sibling` so that the intermediate process and
//!   the init or exec process are the shim's own children. The shim reaps
//!   them itself ([`crate::host::reaper`]; it is also a child subreaper for
//!   whatever is orphaned below it). Every call that forks or waits (a fork
//!   server request, `start` and `delete`, which run hooks through
//!   `Command`) holds the reaper's fork lock, and each new pid is watched
//!   before the lock is released. Exits go to the [`ExitSink`] from the
//!   reaper thread.
//! * **Signals** to a single process go through a pidfd opened at creation,
//!   so a reused pid is never signalled; `all` goes through libcontainer
//!   (freeze, signal every process of the cgroup, thaw).
//! * **stdio**: [`crate::host::stdio`] (FIFOs, `file://`, none) and, with a
//!   terminal, a console socket and pty pumps ([`crate::host::console`]).
//! * **A process without `PATH`** in its environment has a bare program
//!   name looked up in containerd's default `PATH`, without adding one to
//!   its environment; runc takes such specs ([`default_path`]).
//! * **The spec** is first made grantable on this host ([`spec`]): no
//!   `CAP_SYS_RESOURCE` and no `oom_score_adj` below the shim's own when the
//!   shim's bounding set lacks that capability.
//! * **A pod in a user namespace of its own** (`hostUsers: false`): the
//!   sandbox's spec asks for a new one with the mappings kubelet sent; the
//!   backend makes it, idmaps the rootfs and bind sources through it, and
//!   every task and exec of the pod joins it ([`userns`]).
//! * libcontainer changes the *calling* process: it writes the container's
//!   `oom_score_adj` into its own `/proc/self/oom_score_adj` and marks itself
//!   non-dumpable. That is now the fork server, which restores both after
//!   each build.

mod cgroup_mount;
mod checkpoint;
mod default_path;
mod errors;
mod process_io;
mod spec;
mod state;
mod userns;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::LinuxResources;

use crate::backend::{
    Backend, BackendError, ExecSpec, Exit, ExitSink, ProcessInfo, Result, TaskSpec, TaskStats,
};
use crate::host::cgroups;
use crate::host::forker::{ForkError, ForkServer};
use crate::host::pidfd::Pidfd;
use crate::host::pod_view::PodView;
use crate::host::reaper::{ForkGuard, Reaped, Reaper};
use crate::host::stdio::HeldStdio;
use crate::host::userns::PendingExec;

pub use default_path::DEFAULT_PATH;
use errors::{
    chain, exec_not_found, failed, from_libcontainer, from_refusal, invalid_state, not_found,
    signal_number,
};
pub use process_io::serve_fork_requests;
pub(crate) use process_io::ExecUserns;
pub use spec::{strip_internal_annotations, INTERNAL_ANNOTATIONS};
pub(crate) use userns::{layers_dir, valid_task_id};

use process_io::{into_request, prepare_stdio, request_fds, write_process_file, ForkRequest};
/// Writes JSON to `path` atomically (for backends built on this one).
pub(crate) use spec::{raise_capabilities, replace_json, write_json_atomically};
use spec::{HostLimits, SpecOrigin};
use state::{ExecProcess, Phase, Started, Task, Tasks, REAP_DEADLINE};

const NAME: &str = "native";

/// How long `delete` waits for an exited task's cgroup to empty before
/// libcontainer removes it ([`cgroups::drain`]).
const CGROUP_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// How long the create or exec start after a task's start waits for the
/// init of that task, in a user namespace, to exec ([`PendingExec`]); past
/// it, the call goes on anyway, with a warning.
const EXEC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a backend built on this one asks of the fork server for a task.
#[derive(Debug, Clone, Default)]
pub(crate) struct CreateExtras {
    /// A network namespace the server enters before the task's builds
    /// (and its execs'), which then inherit it: a task in a user namespace
    /// of its own can no longer `setns` into one owned by the host's.
    pub fork_netns: Option<PathBuf>,
    /// Network sysctls the server writes in `fork_netns` before the build
    /// (the task's init, whose user namespace does not own that network
    /// namespace, could not).
    pub net_sysctls: BTreeMap<String, String>,
    /// The user namespace the task's execs join.
    pub exec_userns: Option<ExecUserns>,
}

/// The native backend. One per shim; see the module docs.
pub struct NativeBackend {
    state_root: PathBuf,
    /// Pods in a user namespace of their own (`hostUsers: false`).
    pod_userns: userns::PodNamespaces,
    exits: ExitSink,
    reaper: &'static Reaper,
    limits: HostLimits,
    tasks: Arc<Tasks>,
    forker: ForkServer,
    /// Tasks created from a checkpoint, restored at start.
    restores: checkpoint::Restores,
    /// Where caissond keeps its pods' mounts ([`PodView`]).
    pod_mount_roots: Vec<PathBuf>,
}

impl NativeBackend {
    /// A backend keeping libcontainer's state under `state_root` and
    /// reporting exits to `exits`. Makes this process a child subreaper and
    /// starts its reaper (once per process), and starts its fork server:
    /// `fork_server` is the shim binary (`/proc/self/exe` in the shim; in
    /// tests, the built `containerd-shim-caisson-v2`).
    pub fn new(
        state_root: PathBuf,
        exits: ExitSink,
        fork_server: PathBuf,
    ) -> Result<NativeBackend, BackendError> {
        let setup = |reason: String| failed("start backend", NAME, reason);
        std::fs::create_dir_all(&state_root)
            .map_err(|e| setup(format!("{}: {e}", state_root.display())))?;
        let state_root = state_root
            .canonicalize()
            .map_err(|e| setup(format!("{}: {e}", state_root.display())))?;
        let reaper = Reaper::global().map_err(|e| setup(format!("starting the reaper: {e}")))?;
        let forker = ForkServer::start(fork_server, reaper)
            .map_err(|e| setup(format!("starting the fork server: {e}")))?;
        let limits = HostLimits::measure();
        if !limits.sys_resource {
            tracing::info!(
                own_oom_score_adj = limits.own_oom_score_adj,
                "CAP_SYS_RESOURCE is not in the bounding set: containers get neither it nor a lower oom_score_adj"
            );
        }
        Ok(NativeBackend {
            state_root,
            pod_userns: userns::PodNamespaces::default(),
            exits,
            reaper,
            limits,
            tasks: Arc::new(Tasks::default()),
            forker,
            restores: checkpoint::Restores::default(),
            pod_mount_roots: crate::host::pod_view::roots_from_env(),
        })
    }

    /// Builds of tasks whose bundles are below `roots` see their pod's
    /// view of the node's mounts ([`PodView`]); the shim sets them from
    /// `CAISSON_POD_MOUNT_ROOTS`.
    pub fn set_pod_mount_roots(&mut self, roots: Vec<PathBuf>) {
        self.pod_mount_roots = roots;
    }

    /// Where libcontainer keeps its state (one directory per task).
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// Removes what a dead shim left of task `id` under `state_root`: kills
    /// every process of its cgroup, removes the cgroup and libcontainer's
    /// state. Nothing left is not an error. For the shim's `delete` command,
    /// which runs in a fresh process without a backend.
    pub fn force_delete(state_root: &Path, id: &str) -> Result<()> {
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .validate_id()
            .map_err(|e| from_libcontainer("delete", id, e))?;
        let dir = state_root.join(id);
        if !dir.exists() {
            return Ok(());
        }
        match Container::load(dir.clone()) {
            Ok(mut container) => container
                .delete(true)
                .map_err(|e| from_libcontainer("delete", id, e)),
            Err(e) => {
                tracing::warn!(id, error = %chain(&e), "unreadable container state; removing it");
                std::fs::remove_dir_all(&dir).map_err(|e| failed("delete", id, e))
            }
        }
    }

    /// Removes what a dead shim left of task `id` in a pod user namespace
    /// (idmapped layer mounts, bind relays) under `state_root`; see
    /// [`userns`].
    pub fn force_cleanup_userns(state_root: &Path, id: &str) {
        userns::force_cleanup(state_root, id)
    }

    /// libcontainer's `delete` for a task whose processes are gone, with the
    /// cgroup removed through the manager the shim keeps for it
    /// ([`cgroups::manager`]): libcontainer's makes a new one, which reads
    /// the mount table once per v1 controller. The rest is libcontainer's
    /// own: its state and config, the poststop hooks (after the cgroup is
    /// removed, as there), the state directory. Anything else (a process
    /// still there, Intel RDT) goes to libcontainer's `delete`.
    fn delete_stopped(&self, id: &str) -> Result<()> {
        use libcontainer::config::YoukiConfig;
        use libcontainer::container::ContainerStatus;
        let dir = self.container_dir(id);
        let Ok(mut container) = Container::load(dir.clone()) else {
            return Self::force_delete(&self.state_root, id);
        };
        container
            .refresh_status()
            .map_err(|e| from_libcontainer("delete", id, e))?;
        if container.status() != ContainerStatus::Stopped
            || container.intel_rdt_dir().is_some()
            || container.intel_rdt_monitoring_dir().is_some()
            || container.clean_up_intel_rdt_subdirectory().is_some()
        {
            return Self::force_delete(&self.state_root, id);
        }
        // As libcontainer: no config yet (a build that failed early) is no
        // cgroup and no hooks.
        if let Ok(config) = YoukiConfig::load(&dir) {
            let manager =
                cgroups::manager(id, &config.cgroup_path).map_err(|e| failed("delete", id, e))?;
            {
                use libcgroups::common::CgroupManager;
                manager
                    .remove()
                    .map_err(|e| failed("delete", id, format!("removing cgroup: {e}")))?;
            }
            // The task's path, as a rule; forgotten here in case it is not.
            cgroups::forget(&config.cgroup_path);
            let poststop = config.hooks.as_ref().and_then(|h| h.poststop().as_ref());
            libcontainer::hooks::run_hooks(poststop, Some(&container.state), None, None, None)
                .map_err(|e| failed("delete", id, format!("poststop hooks: {e}")))?;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| failed("delete", id, e))
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.state_root.join(id)
    }

    fn load(&self, op: &'static str, id: &str) -> Result<Container> {
        Container::load(self.container_dir(id)).map_err(|e| from_libcontainer(op, id, e))
    }

    fn validate_id(op: &'static str, id: &str) -> Result<()> {
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .validate_id()
            .map(|_| ())
            .map_err(|e| from_libcontainer(op, id, e))
    }

    /// [`Backend::create`] for a backend built on this one (hardened): `spec`
    /// is its rewrite of the bundle's spec (written to the bundle here),
    /// trusted to carry the internal annotations it set itself, and
    /// `extras` say what the fork server does for the task's builds.
    pub(crate) fn create_with(
        &self,
        task: &TaskSpec,
        spec: oci_spec::runtime::Spec,
        extras: CreateExtras,
    ) -> Result<u32> {
        self.create_task(task, SpecOrigin::Backend(Box::new(spec)), extras)
    }

    fn create_task(
        &self,
        task: &TaskSpec,
        origin: SpecOrigin,
        extras: CreateExtras,
    ) -> Result<u32> {
        // Its init may join a started task's namespaces.
        self.settle_execs();
        let id = task.id.as_str();
        if self.tasks.lock().contains_key(id) {
            return Err(BackendError::AlreadyExists {
                what: "task",
                id: id.to_string(),
            });
        }
        Self::validate_id("create", id)?;
        let began = std::time::Instant::now();
        let prepared =
            spec::prepare_bundle(id, &task.bundle, task.stdio.terminal, self.limits, origin)?;
        let spec_written = began.elapsed();
        // The stdio is opened under the fork lock, and handed over and closed
        // within it (the fork server gets its own copies for one request).
        let guard = self.reaper.lock();
        let stdio = prepare_stdio(id, &task.stdio)?;
        let (request_stdio, child_stdio, pending) = into_request(stdio);
        // The server resolves paths from the directory it started in.
        let bundle = std::path::absolute(&task.bundle)
            .map_err(|e| failed("create", id, format!("bundle path: {e}")))?;
        let view = (!prepared.shared_rootfs)
            .then(|| PodView::for_bundle(&self.pod_mount_roots, &bundle))
            .flatten()
            .filter(|view| view.keeps_all(&prepared.bind_sources));
        let request = ForkRequest::CreateInit {
            id: id.to_string(),
            state_root: self.state_root.clone(),
            bundle,
            stdio: request_stdio,
            netns: extras.fork_netns.clone(),
            net_sysctls: extras.net_sysctls,
            view: view.clone(),
        };
        // The returned pid is this process's child, not reaped while the
        // guard is held.
        let building = std::time::Instant::now();
        let built = self
            .forker
            .call(&guard, &request, &request_fds(child_stdio.as_ref()));
        drop(child_stdio);
        tracing::debug!(
            id,
            spec_ms = spec_written.as_secs_f64() * 1e3,
            build_ms = building.elapsed().as_secs_f64() * 1e3,
            "task built"
        );
        let pid = match built {
            Ok(pid) => pid,
            Err(ForkError::Refused(refused)) => return Err(from_refusal("create", id, refused)),
            Err(lost) => {
                // The server may have died half-way: remove what it made.
                self.discard(id);
                return Err(failed("create", id, lost));
            }
        };
        let started = Pidfd::open(pid)
            .map_err(|e| format!("pidfd of {pid}: {e}"))
            .and_then(|pidfd| {
                let stdio = pending.finish(id).map_err(|e| format!("terminal: {e}"))?;
                Ok(Started { pidfd, stdio })
            });
        let started = match started {
            Ok(started) => started,
            Err(reason) => {
                self.discard(id);
                return Err(failed("create", id, reason));
            }
        };
        // Built: what reads the bundle from now on sees the init's own
        // capabilities.
        if let Some(own) = &prepared.own_caps {
            if let Err(e) = own.write_back(id, &task.bundle) {
                self.discard(id);
                return Err(e);
            }
        }
        let pid = started.pidfd.pid();
        self.watch(&guard, id, None, pid);
        self.tasks.lock().insert(
            id.to_string(),
            Task {
                kind: task.kind.clone(),
                phase: Phase::Created,
                paused: false,
                init: started,
                cgroup_path: prepared.cgroup_path,
                oom_score_adj: prepared.oom_score_adj,
                exec_caps_ceiling: prepared.own_caps.map(|own| own.caps),
                fork_netns: extras.fork_netns,
                exec_userns: extras.exec_userns,
                view,
                pending_exec: None,
                execs: HashMap::new(),
            },
        );
        drop(guard);
        tracing::info!(id, pid, kind = ?task.kind, "task created");
        Ok(pid)
    }

    /// Waits until every started init in a user namespace of its own has
    /// exec'd. Until then its memory is still the host user namespace's (a
    /// copy of the fork server) and it is not dumpable (it has switched to
    /// its uid), so the kernel refuses its `/proc/<pid>/ns/*` to anything
    /// without `CAP_SYS_PTRACE` over the host: to the next container of its
    /// pod, whose init joins the pod's user namespace before it opens the
    /// other namespaces by path (`EACCES`). Called before anything that
    /// may join a task's namespaces; usually the inits exec'd long before
    /// and this is one `stat` each, once.
    pub(super) fn settle_execs(&self) {
        let pending: Vec<(String, PendingExec)> = self
            .tasks
            .lock()
            .iter_mut()
            .filter_map(|(id, t)| Some((id.clone(), t.pending_exec.take()?)))
            .collect();
        for (id, pending) in pending {
            let began = std::time::Instant::now();
            if !pending.wait(EXEC_WAIT) {
                tracing::warn!(id, limit = ?EXEC_WAIT, "a started init has not exec'd yet: going on");
            }
            tracing::debug!(
                id,
                waited_us = began.elapsed().as_micros() as u64,
                "init exec'd"
            );
        }
    }

    /// The pid of the running fork server (none between its death and the
    /// next request).
    pub fn fork_server_pid(&self) -> Option<u32> {
        self.forker.pid()
    }

    /// Watches `pid` so its exit updates the task and reaches the sink.
    fn watch(&self, guard: &ForkGuard<'_>, id: &str, exec_id: Option<&str>, pid: u32) {
        let tasks: Weak<Tasks> = Arc::downgrade(&self.tasks);
        let exits = self.exits.clone();
        let id = id.to_string();
        let exec_id = exec_id.map(str::to_string);
        guard.watch(pid, move |reaped: Reaped| {
            let Some(tasks) = tasks.upgrade() else { return };
            let status = reaped.code();
            if !tasks.record_exit(&id, exec_id.as_deref(), pid, status) {
                tracing::debug!(id, ?exec_id, pid, "exit of a process whose task is gone");
                return;
            }
            let cgroup = tasks.lock().get(&id).map(|t| t.cgroup_path.clone());
            if let (None, Some(cg)) = (&exec_id, &cgroup) {
                // What the init leaves behind goes with it, as containerd's
                // runc shim does for a container in its pod's PID namespace
                // (in one of its own, the kernel already killed them).
                cgroups::drain(&id, cg, std::time::Duration::ZERO);
            }
            // Read before delete removes the cgroup: did the OOM killer act?
            let oom_killed =
                exec_id.is_none() && cgroup.is_some_and(|cg| cgroups::oom_kills(&cg) > 0);
            tracing::info!(id, ?exec_id, pid, status, oom_killed, "process exited");
            exits(Exit {
                container_id: id,
                exec_id,
                pid,
                status,
                exited_at: reaped.at,
                oom_killed,
            });
        });
    }

    /// Deletes a container libcontainer (may have) made but the backend will
    /// not keep.
    fn discard(&self, id: &str) {
        if let Err(e) = Self::force_delete(&self.state_root, id) {
            tracing::warn!(id, error = %e, "could not remove a half-made container");
        }
    }

    fn task_cgroup(&self, id: &str) -> Result<PathBuf> {
        let tasks = self.tasks.lock();
        let task = tasks.get(id).ok_or_else(|| not_found(id))?;
        Ok(task.cgroup_path.clone())
    }

    fn with_stdio<T>(
        &self,
        id: &str,
        exec_id: Option<&str>,
        f: impl FnOnce(&mut HeldStdio) -> Result<T>,
    ) -> Result<T> {
        let mut tasks = self.tasks.lock();
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
        match exec_id {
            None => f(&mut task.init.stdio),
            Some(exec_id) => {
                let exec = task
                    .execs
                    .get_mut(exec_id)
                    .ok_or_else(|| exec_not_found(id, exec_id))?;
                match exec.started.as_mut() {
                    Some(started) => f(&mut started.stdio),
                    None => Err(invalid_state(
                        id,
                        "created",
                        "use the stdio of an exec not started",
                    )),
                }
            }
        }
    }
}

impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, task: &TaskSpec) -> Result<u32> {
        if let Some(images) = &task.checkpoint {
            return self.create_restored(task, images);
        }
        if let Some(spec) = self.userns_spec(task) {
            return self.create_in_userns(task, spec);
        }
        self.create_task(task, SpecOrigin::Incoming, CreateExtras::default())
    }

    fn start(&self, id: &str) -> Result<u32> {
        if self.is_pending_restore(id) {
            return self.start_restored(id);
        }
        let pending = {
            let tasks = self.tasks.lock();
            let task = tasks.get(id).ok_or_else(|| not_found(id))?;
            if task.phase != Phase::Created {
                return Err(invalid_state(id, task.phase.name(), "start"));
            }
            PendingExec::observe(task.init.pidfd.pid())
        };
        {
            // start runs poststart hooks, which fork and wait.
            let _guard = self.reaper.lock();
            let mut container = self.load("start", id)?;
            container
                .start()
                .map_err(|e| from_libcontainer("start", id, e))?;
        }
        let mut tasks = self.tasks.lock();
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
        if task.phase == Phase::Created {
            task.phase = Phase::Running;
        }
        // Not waited for here (runc's start does not wait for the exec
        // either): the next create or exec start does ([`Self::settle_execs`]).
        task.pending_exec = pending;
        let pid = task.init.pidfd.pid();
        tracing::info!(id, pid, "task started");
        Ok(pid)
    }

    fn exec(&self, exec: &ExecSpec) -> Result<()> {
        let id = exec.container_id.as_str();
        spec::check_args(&exec.process).map_err(|reason| BackendError::InvalidArgument {
            what: format!("process of exec {}", exec.exec_id),
            reason: reason.into(),
        })?;
        let mut tasks = self.tasks.lock();
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
        if let Phase::Exited { .. } = task.phase {
            return Err(invalid_state(id, task.phase.name(), "exec"));
        }
        if task.execs.contains_key(&exec.exec_id) {
            return Err(BackendError::AlreadyExists {
                what: "exec",
                id: exec.exec_id.clone(),
            });
        }
        task.execs.insert(
            exec.exec_id.clone(),
            ExecProcess {
                spec: exec.clone(),
                phase: Phase::Created,
                started: None,
            },
        );
        Ok(())
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.settle_execs();
        let (exec, default_oom, caps_ceiling, fork_netns, exec_userns, view) = {
            let tasks = self.tasks.lock();
            let task = tasks.get(id).ok_or_else(|| not_found(id))?;
            let exec = task
                .execs
                .get(exec_id)
                .ok_or_else(|| exec_not_found(id, exec_id))?;
            if exec.phase != Phase::Created {
                return Err(invalid_state(
                    &format!("{id}/{exec_id}"),
                    exec.phase.name(),
                    "start exec",
                ));
            }
            if task.phase != Phase::Running {
                return Err(invalid_state(id, task.phase.name(), "exec in it"));
            }
            (
                exec.spec.clone(),
                task.oom_score_adj,
                task.exec_caps_ceiling.clone(),
                task.fork_netns.clone(),
                task.exec_userns.clone(),
                task.view.clone(),
            )
        };
        let mut process = exec.process.clone();
        spec::sanitize_process(
            &format!("exec {id}/{exec_id}"),
            &mut process,
            self.limits,
            default_oom,
        );
        if let Some(ceiling) = &caps_ceiling {
            spec::clamp_capabilities(&mut process, ceiling);
        }
        process.set_terminal(Some(exec.stdio.terminal));
        if exec_userns.is_some() {
            // The executor joins the pod's user namespace, then drops to
            // the container's capabilities.
            crate::backend::hardened::exec_userns::allow_joining(&mut process);
        }
        let process_file = write_process_file(&process)
            .map_err(|e| failed("start exec", id, format!("writing process.json: {e}")))?;

        let guard = self.reaper.lock();
        let stdio = prepare_stdio(id, &exec.stdio)?;
        let (request_stdio, child_stdio, pending) = into_request(stdio);
        let request = ForkRequest::Exec {
            id: id.to_string(),
            state_root: self.state_root.clone(),
            process_json: process_file.path().to_path_buf(),
            stdio: request_stdio,
            netns: fork_netns,
            userns: exec_userns,
            view,
        };
        let built = self
            .forker
            .call(&guard, &request, &request_fds(child_stdio.as_ref()));
        drop(child_stdio);
        // An exec process a dying server may have made is killed with its
        // container.
        let pid = built.map_err(|e| match e {
            ForkError::Refused(refused) => from_refusal("start exec", id, refused),
            lost => failed("start exec", id, lost),
        })?;
        let started = Pidfd::open(pid)
            .map_err(|e| format!("pidfd of {pid}: {e}"))
            .and_then(|pidfd| {
                let stdio = pending
                    .finish(&format!("{id}-{exec_id}"))
                    .map_err(|e| format!("terminal: {e}"))?;
                Ok(Started { pidfd, stdio })
            });
        let started = match started {
            Ok(started) => started,
            Err(reason) => {
                // SAFETY: the process is our unreaped descendant (fork lock).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                return Err(failed("start exec", id, reason));
            }
        };
        self.watch(&guard, id, Some(exec_id), pid);
        let mut tasks = self.tasks.lock();
        let registered = tasks
            .get_mut(id)
            .and_then(|task| task.execs.get_mut(exec_id))
            .filter(|exec| exec.phase == Phase::Created);
        let Some(exec) = registered else {
            // Deleted (or started) concurrently: this process has no owner.
            let _ = started.pidfd.send_signal(libc::SIGKILL);
            return Err(invalid_state(
                &format!("{id}/{exec_id}"),
                "gone",
                "start exec",
            ));
        };
        exec.phase = Phase::Running;
        exec.started = Some(started);
        drop(tasks);
        drop(guard);
        tracing::info!(id, exec_id, pid, "exec started");
        Ok(pid)
    }

    fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        let signal = signal_number(signal)?;
        let mut tasks = self.tasks.lock();
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
        if let Some(exec_id) = exec_id {
            let exec = task
                .execs
                .get(exec_id)
                .ok_or_else(|| exec_not_found(id, exec_id))?;
            return match (&exec.phase, &exec.started) {
                (Phase::Exited { .. }, _) => Ok(()),
                (_, Some(started)) => started
                    .pidfd
                    .send_signal(signal)
                    .map(|_| ())
                    .map_err(|e| failed("kill", &format!("{id}/{exec_id}"), e)),
                (_, None) => Err(invalid_state(&format!("{id}/{exec_id}"), "created", "kill")),
            };
        }
        if !all {
            if let Phase::Exited { .. } = task.phase {
                return Ok(());
            }
            task.init
                .pidfd
                .send_signal(signal)
                .map_err(|e| failed("kill", id, e))?;
            if signal == libc::SIGKILL && task.paused {
                // A frozen process cannot die: thaw it (as runc does).
                let cgroup = task.cgroup_path.clone();
                task.paused = false;
                drop(tasks);
                if let Err(e) = cgroups::manager(id, &cgroup).and_then(|m| {
                    use libcgroups::common::{CgroupManager, FreezerState};
                    m.freeze(FreezerState::Thawed).map_err(|e| e.to_string())
                }) {
                    tracing::warn!(id, error = %e, "could not thaw a killed paused task");
                }
            }
            return Ok(());
        }
        if signal > 31 {
            return Err(BackendError::InvalidArgument {
                what: "signal".into(),
                reason: format!("real-time signal {signal} cannot be sent to all processes"),
            });
        }
        // A paused task stays paused, unless killed (a frozen process
        // cannot die).
        let stay_frozen = task.paused && signal != libc::SIGKILL;
        task.paused = stay_frozen;
        let cgroup = task.cgroup_path.clone();
        drop(tasks);
        cgroups::signal_all(id, &cgroup, signal, stay_frozen).map_err(|e| failed("kill", id, e))
    }

    fn delete(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        if let Some(exec_id) = exec_id {
            let mut tasks = self.tasks.lock();
            let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
            let exec = task
                .execs
                .get(exec_id)
                .ok_or_else(|| exec_not_found(id, exec_id))?;
            if exec.phase == Phase::Running {
                return Err(invalid_state(
                    &format!("{id}/{exec_id}"),
                    "running",
                    "delete",
                ));
            }
            task.execs.remove(exec_id);
            return Ok(());
        }
        if self.is_pending_restore(id) {
            return self.delete_pending_restore(id);
        }
        let (never_started, cgroup) = {
            let tasks = self.tasks.lock();
            let task = tasks.get(id).ok_or_else(|| not_found(id))?;
            if task.phase == Phase::Running {
                return Err(invalid_state(id, "running", "delete"));
            }
            (task.phase == Phase::Created, task.cgroup_path.clone())
        };
        if !never_started && !cgroups::drain(id, &cgroup, CGROUP_DRAIN) {
            tracing::warn!(id, limit = ?CGROUP_DRAIN, "processes left in an exited task's cgroup");
        }
        {
            // delete runs poststop hooks, which fork and wait.
            let _guard = self.reaper.lock();
            if never_started {
                Self::force_delete(&self.state_root, id)?;
            } else {
                self.delete_stopped(id)?;
            }
        }
        if never_started {
            // libcontainer killed the waiting init: see it reaped (and its
            // exit reported) before the task is forgotten.
            self.tasks.wait_exited(id, REAP_DEADLINE);
        }
        let task = self.tasks.lock().remove(id);
        if let Some(task) = task {
            cgroups::forget(&task.cgroup_path);
            tracing::info!(id, kind = ?task.kind, "task deleted");
        }
        self.userns_task_deleted(id);
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let (cgroup, execs) = {
            let tasks = self.tasks.lock();
            let task = tasks.get(id).ok_or_else(|| not_found(id))?;
            let execs: HashMap<u32, String> = task
                .execs
                .iter()
                .filter_map(|(exec_id, e)| Some((e.started.as_ref()?.pidfd.pid(), exec_id.clone())))
                .collect();
            (task.cgroup_path.clone(), execs)
        };
        let pids = cgroups::pids(id, &cgroup).map_err(|e| failed("pids", id, e))?;
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                exec_id: execs.get(&pid).cloned(),
            })
            .collect())
    }

    fn pause(&self, id: &str) -> Result<()> {
        self.task_cgroup(id)?;
        let mut container = self.load("pause", id)?;
        container
            .pause()
            .map_err(|e| from_libcontainer("pause", id, e))?;
        if let Some(task) = self.tasks.lock().get_mut(id) {
            task.paused = true;
        }
        tracing::info!(id, "task paused");
        Ok(())
    }

    fn resume(&self, id: &str) -> Result<()> {
        self.task_cgroup(id)?;
        let mut container = self.load("resume", id)?;
        container
            .resume()
            .map_err(|e| from_libcontainer("resume", id, e))?;
        if let Some(task) = self.tasks.lock().get_mut(id) {
            task.paused = false;
        }
        tracing::info!(id, "task resumed");
        Ok(())
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let cgroup = self.task_cgroup(id)?;
        // Hugepage limits this node cannot enforce: skipped (0) or refused,
        // as at create.
        let mut resources = resources.clone();
        crate::host::hugetlb::fit_resources(&mut resources, self.limits.hugetlb)
            .map_err(|e| spec::hugetlb_refused("resources", &e, None))?;
        cgroups::update(id, &cgroup, &resources).map_err(|e| failed("update", id, e))
    }

    fn stats(&self, id: &str) -> Result<TaskStats> {
        let cgroup = self.task_cgroup(id)?;
        cgroups::stats(id, &cgroup).map_err(|e| failed("stats", id, e))
    }

    fn resize_pty(&self, id: &str, exec_id: Option<&str>, width: u16, height: u16) -> Result<()> {
        self.with_stdio(id, exec_id, |stdio| {
            super::resize_held_pty(stdio, id, exec_id, width, height)
        })
    }

    fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        self.with_stdio(id, exec_id, |stdio| {
            stdio.close_stdin();
            Ok(())
        })
    }

    fn reopen_logs(&self, id: &str) -> Result<()> {
        self.with_stdio(id, None, |stdio| {
            stdio.reopen_logs().map_err(|e| BackendError::Failed {
                op: "reopen logs",
                id: id.to_string(),
                reason: e.to_string(),
            })
        })
    }

    fn checkpoint(&self, id: &str, spec: &crate::backend::CheckpointSpec) -> Result<()> {
        self.checkpoint_task(id, spec)
    }

    fn can_restore(&self) -> bool {
        true
    }
}
