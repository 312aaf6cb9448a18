//! What the native backend knows about its tasks and their processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::backend::{ExecSpec, TaskKind};
use crate::host::pidfd::Pidfd;
use crate::host::stdio::HeldStdio;

/// Where a task's init or an exec process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Made, not yet running the user's program (init only) / registered
    /// but not started (exec).
    Created,
    Running,
    Exited {
        status: u32,
    },
}

impl Phase {
    pub(super) fn name(self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Running => "running",
            Phase::Exited { .. } => "stopped",
        }
    }
}

/// A started process: its pid, a pidfd for signals, its stdio.
#[derive(Debug)]
pub(super) struct Started {
    pub(super) pidfd: Pidfd,
    pub(super) stdio: HeldStdio,
}

#[derive(Debug)]
pub(super) struct ExecProcess {
    pub(super) spec: ExecSpec,
    pub(super) phase: Phase,
    pub(super) started: Option<Started>,
}

#[derive(Debug)]
pub(super) struct Task {
    pub(super) kind: TaskKind,
    pub(super) phase: Phase,
    pub(super) paused: bool,
    pub(super) init: Started,
    pub(super) cgroup_path: PathBuf,
    /// The init's `oomScoreAdj` (after sanitising), inherited by execs.
    pub(super) oom_score_adj: Option<i32>,
    /// The init's own capabilities where its spec raised them for its
    /// build: no exec of the task gets more ([`super::spec::OwnCaps`]).
    pub(super) exec_caps_ceiling: Option<oci_spec::runtime::LinuxCapabilities>,
    /// The network namespace the fork server enters for this task's
    /// builds ([`super::CreateExtras`]); none for native.
    pub(super) fork_netns: Option<PathBuf>,
    /// The user namespace this task's execs join (hardened).
    pub(super) exec_userns: Option<super::ExecUserns>,
    /// The node's mounts this task's builds see (its pod's view).
    pub(super) view: Option<crate::host::pod_view::PodView>,
    /// Started, in a user namespace of its own, and maybe not exec'd yet
    /// (until then the kernel refuses its namespaces to its pod's other
    /// processes): the next create or exec start waits for it first.
    pub(super) pending_exec: Option<crate::host::userns::PendingExec>,
    pub(super) execs: HashMap<String, ExecProcess>,
}

/// The backend's tasks, and a condvar signalled whenever a process exits.
#[derive(Default)]
pub(super) struct Tasks {
    pub(super) map: Mutex<HashMap<String, Task>>,
    pub(super) exited: Condvar,
}

impl Tasks {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, Task>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `pid` (task `id`'s init, or its exec `exec_id`) exited
    /// and wakes waiters. False when no such process is known any more
    /// (its task or exec was deleted).
    pub(super) fn record_exit(
        &self,
        id: &str,
        exec_id: Option<&str>,
        pid: u32,
        status: u32,
    ) -> bool {
        let known = {
            let mut map = self.lock();
            match (map.get_mut(id), exec_id) {
                (Some(task), None) if task.init.pidfd.pid() == pid => {
                    task.phase = Phase::Exited { status };
                    true
                }
                (Some(task), Some(exec_id)) => match task.execs.get_mut(exec_id) {
                    Some(exec) if exec.started.as_ref().map(|s| s.pidfd.pid()) == Some(pid) => {
                        exec.phase = Phase::Exited { status };
                        true
                    }
                    _ => false,
                },
                _ => false,
            }
        };
        self.exited.notify_all();
        known
    }

    /// Waits until task `id`'s init has exited (or is gone, or `deadline`
    /// passed).
    pub(super) fn wait_exited(&self, id: &str, deadline: Duration) {
        let until = Instant::now() + deadline;
        let mut map = self.lock();
        loop {
            match map.get(id) {
                Some(task) if !matches!(task.phase, Phase::Exited { .. }) => {}
                _ => return,
            }
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                tracing::warn!(id, "the killed init was not reaped in time");
                return;
            };
            map = self
                .exited
                .wait_timeout(map, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// How long deleting a created (never started) task waits for its killed
/// init to be reaped.
pub(super) const REAP_DEADLINE: Duration = Duration::from_secs(10);
