//! Runtimes that run a pod's containers in one process: gVisor's `runsc`
//! reads the `io.kubernetes.cri.*` annotations, starts one sandbox (the
//! Sentry) for the pod's first task and runs every later container of the
//! pod inside it. Two things then differ from runc and crun:
//!
//! * runsc writes the sandbox's pid into every container's pid file, so a
//!   task whose pid is another task's init cannot be followed by that pid
//!   (the reaper would hear of the sandbox's exit, not the container's).
//!   Its exit comes from `RUNTIME wait ID`, started with the task, which
//!   exits when the container does and prints its status as JSON
//!   (`{"id":...,"exitStatus":N}`, N the exit code or 128 + signal).
//! * runsc hands such a container the stdio of its `start` CLI, not of
//!   `create`: the task's stdio is kept from `create` for `start`.
//!
//! Kill, exec, ps and delete go through the CLI by id as for any runtime.

use std::io::{Read, Seek};

use super::{failed, locked, not_found, null_stdio, ChildStdio, OciBackend, Result};

impl OciBackend {
    /// True when `pid` is the init of one of this backend's tasks.
    pub(super) fn is_an_init(&self, pid: u32) -> bool {
        locked(&self.tasks)
            .values()
            .any(|t| t.init.as_ref().is_some_and(|p| p.pidfd.pid() == pid))
    }

    /// Starts a task that shares another's init: `start` with its kept
    /// stdio, then follows it with `wait`. False (nothing done) for any
    /// other task.
    pub(super) fn start_in_shared_sandbox(&self, id: &str, pid: u32) -> Result<bool> {
        let (shares_init, stdio) = {
            let mut tasks = locked(&self.tasks);
            let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
            (task.shares_init, task.start_stdio.take())
        };
        if !shares_init {
            return Ok(false);
        }
        match stdio {
            Some(stdio) => self.start_with_stdio(id, stdio)?,
            None => self.run("start", id, &["start", id])?,
        }
        self.follow_with_wait(id, pid)?;
        Ok(true)
    }

    /// `RUNTIME start ID` with the container's stdio as the CLI's own
    /// (runsc's subcontainers), within the deadline; the runtime's errors
    /// go to its `--log`.
    fn start_with_stdio(&self, id: &str, stdio: ChildStdio) -> Result<()> {
        let work = tempfile::tempdir().map_err(|e| failed("start", id, e))?;
        let log = work.path().join("log");
        let mut cmd = self.cli();
        cmd.arg("--log").arg(&log).args(["start", id]);
        let (cli, rx) = self
            .spawn_with(&mut cmd, stdio.stdin, stdio.stdout, stdio.stderr)
            .map_err(|e| failed("start", id, e))?;
        let Ok(reaped) = rx.recv_timeout(self.cli_deadline) else {
            Self::kill_overdue(&cli, &rx, id);
            return Err(failed(
                "start",
                id,
                format!(
                    "the runtime's start did not finish within {:?} (killed)",
                    self.cli_deadline
                ),
            ));
        };
        if reaped.code() != 0 {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(failed(
                "start",
                id,
                format!(
                    "{} start: {}",
                    self.options.runtime_path.display(),
                    log.trim()
                ),
            ));
        }
        Ok(())
    }

    /// Follows a started task whose pid is another task's init through
    /// `RUNTIME wait ID` (runsc prints `{"id":...,"exitStatus":N}`, N the
    /// exit code or 128 + signal), reported as the task's exit with that
    /// pid. A wait that ends without a status (the sandbox died) reports 255.
    fn follow_with_wait(&self, id: &str, pid: u32) -> Result<()> {
        let io = |e: std::io::Error| {
            failed(
                "start",
                id,
                format!("{} wait: {e}", self.options.runtime_path.display()),
            )
        };
        let stdio = null_stdio().map_err(io)?;
        let mut stdout = tempfile::tempfile().map_err(io)?;
        let mut cmd = self.cli();
        cmd.args(["wait", id])
            .stdin(stdio.stdin)
            .stdout(stdout.try_clone().map_err(io)?)
            .stderr(stdio.stderr);
        let guard = self.reaper.lock();
        let cli = cmd.spawn().map_err(io)?;
        let this = self.clone_for_exit();
        let id2 = id.to_string();
        guard.watch(cli.id(), move |reaped| {
            let mut out = String::new();
            let _ = stdout
                .rewind()
                .and_then(|_| stdout.read_to_string(&mut out));
            let status = serde_json::from_str::<serde_json::Value>(&out)
                .ok()
                .and_then(|v| v["exitStatus"].as_u64())
                .map(|s| s as u32);
            let status = status.unwrap_or_else(|| {
                tracing::warn!(
                    id = id2,
                    wait_status = reaped.code(),
                    output = out.trim(),
                    "the runtime's wait gave no exit status"
                );
                255
            });
            this.report(&id2, None, pid, status, reaped.at)
        });
        Ok(())
    }
}

/// Duplicates of a process's stdio fds (`None` for a terminal, whose
/// pty the runtime hands over itself).
pub(super) fn clone_stdio(stdio: &Option<ChildStdio>) -> std::io::Result<Option<ChildStdio>> {
    let Some(stdio) = stdio else { return Ok(None) };
    Ok(Some(ChildStdio {
        stdin: stdio.stdin.try_clone()?,
        stdout: stdio.stdout.try_clone()?,
        stderr: stdio.stderr.try_clone()?,
    }))
}
