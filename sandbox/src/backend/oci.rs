//! The `oci` backend: delegates containers to an external OCI runtime CLI
//! (`runc`, `crun`, gVisor's `runsc`), the shim still supervising them.
//!
//! * `create`: `RUNTIME --root R create --bundle B --pid-file P ID` with the
//!   container's stdio as the CLI's own (the runtime hands it to the init).
//!   The CLI exits; its init, orphaned, becomes the shim's child (the shim is
//!   a child subreaper) and is watched by the shim's reaper before it can
//!   run (it waits for `start`).
//! * `exec`: `RUNTIME exec --process F --pid-file P ID` in the foreground:
//!   the CLI stays the parent of the exec process and exits with its status,
//!   so the reaper watches the CLI. Signals go to the exec process itself
//!   (a pidfd opened once it is seen to be the CLI's child): the CLI cannot
//!   forward SIGKILL, and killing it alone would leave the process running.
//! * An exec with a terminal: `RUNTIME exec --detach --console-socket S
//!   ...`, because runc and crun only hand an exec's pty master to a socket
//!   when detached. The CLI exits and the exec process, orphaned, becomes the
//!   shim's child, possibly already dead. An adoption window
//!   ([`Reaper::adoption_window`]) keeps the exit of such an unwatched child,
//!   so once the start has succeeded the process is either watched or its
//!   kept exit reported; an exec that failed to start is killed and never
//!   reported.
//! * Every other CLI call (`start`, `kill`, `delete`, `ps`, `pause`,
//!   `resume`, `update`) runs to completion through `output`, which spawns
//!   the CLI with `spawn_with`: under the reaper's lock and watched from the
//!   start, so the reaper reports its exit status instead of stealing it.
//!
//! * A terminal for the init goes through a console socket
//!   (`create --console-socket`) too: the runtime sends the pty master, the
//!   shim pumps it like the native backend does.
//! * `update` is the runtime's `update --resources`; `stats` and the OOM
//!   check at exit read the cgroup the runtime made at the spec's
//!   `linux.cgroupsPath` (cgroupfs layout, as runc and crun use it).
//! * `hide_cgroup2`: every CLI call runs in a private mount namespace
//!   without the cgroup2 mounts under `/sys/fs/cgroup`, so a runtime that
//!   refuses hybrid hosts (crun 1.8 when cgroup2 holds a controller, as
//!   hugetlb here) sees a legacy v1 host and uses the v1 controllers.
//!   That namespace is a slave of the host's (`MS_REC | MS_SLAVE`): host
//!   mounts still reach it, but nothing mounted in it propagates back, so a
//!   spec mount with `rshared` propagation made by the runtime is not seen
//!   on the host (bidirectional mount propagation does not work with
//!   `hide_cgroup2`).
//! * Every CLI call has a deadline (60 s): past it the CLI is killed
//!   through a pidfd and the call fails (an exec's process too, if its pid
//!   file appeared).
//! * A runtime that runs a pod's containers in one process (gVisor's
//!   `runsc`): see `oci/shared_sandbox.rs`.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime};

use oci_spec::runtime::LinuxResources;

use crate::backend::{
    failed, locked, not_found, Backend, BackendError, ExecSpec, Exit, ExitSink, ProcessInfo,
    Result, TaskSpec, TaskStats,
};
use crate::host::cgroups;
use crate::host::pidfd::Pidfd;
use crate::host::reaper::{ForkGuard, Reaped, Reaper};
use crate::host::stdio::{null_stdio, open_stdio, ChildStdio, HeldStdio, PreparedStdio};
use hide_cgroup2::{cgroup2_mounts_below, hide_mounts};

mod hide_cgroup2;
mod shared_sandbox;

const NAME: &str = "oci";
/// How long a runtime CLI call may take.
const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// The backend's options (the handler's `options`, as JSON in
/// `CAISSON_BACKEND_OPTIONS`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct OciOptions {
    /// The runtime CLI, e.g. `/usr/sbin/runc`.
    #[serde(default = "default_runtime")]
    pub runtime_path: PathBuf,
    /// Global arguments put before every command (e.g. crun's
    /// `--cgroup-manager=disabled` where it cannot use hybrid cgroups).
    #[serde(default)]
    pub runtime_args: Vec<String>,
    /// Runs the runtime with the host's cgroup2 mounts hidden (see the
    /// module docs): for crun on hybrid hosts whose cgroup2 holds a
    /// controller.
    #[serde(default)]
    pub hide_cgroup2: bool,
}

fn default_runtime() -> PathBuf {
    PathBuf::from("/usr/sbin/runc")
}

impl Default for OciOptions {
    fn default() -> Self {
        OciOptions {
            runtime_path: default_runtime(),
            runtime_args: Vec::new(),
            hide_cgroup2: false,
        }
    }
}

struct Proc {
    pidfd: Pidfd,
    stdio: HeldStdio,
}

#[derive(Default)]
struct OciTask {
    init: Option<Proc>,
    /// The spec's `linux.cgroupsPath`, where the runtime made the cgroup.
    cgroup_path: Option<PathBuf>,
    exited: bool,
    /// The runtime's pid is another task's init (`oci/shared_sandbox.rs`).
    shares_init: bool,
    /// Such a task's stdio, kept for the `start` CLI.
    start_stdio: Option<ChildStdio>,
    execs: HashMap<String, ExecSpec>,
    running_execs: HashMap<String, Proc>,
}

/// The `oci` backend. One per shim.
pub struct OciBackend {
    options: OciOptions,
    root: PathBuf,
    exits: ExitSink,
    reaper: &'static Reaper,
    tasks: Arc<Mutex<HashMap<String, OciTask>>>,
    /// The cgroup2 mount points to hide from the runtime (`hide_cgroup2`).
    hidden_mounts: Arc<Vec<CString>>,
    /// How long a runtime CLI call may take before it is
    /// killed ([`CLI_DEADLINE`] unless [`OciBackend::with_cli_deadline`]).
    cli_deadline: Duration,
}

impl OciBackend {
    /// A backend keeping the runtime's state (`--root`) under `state_root`.
    pub fn new(state_root: PathBuf, exits: ExitSink, options: OciOptions) -> Result<Self> {
        let setup = |reason: String| failed("start backend", NAME, reason);
        let root = state_root.join("oci");
        std::fs::create_dir_all(&root).map_err(|e| setup(format!("{}: {e}", root.display())))?;
        if !options.runtime_path.exists() {
            return Err(BackendError::InvalidArgument {
                what: "runtime_path".into(),
                reason: format!("{} does not exist", options.runtime_path.display()),
            });
        }
        let reaper = Reaper::global().map_err(|e| setup(format!("starting the reaper: {e}")))?;
        let hidden_mounts = if options.hide_cgroup2 {
            let mounts = crate::host::mountinfo::read()
                .map_err(|e| setup(format!("/proc/self/mountinfo: {e}")))?;
            cgroup2_mounts_below(&mounts, "/sys/fs/cgroup")
                .into_iter()
                .map(|m| CString::new(m).map_err(|e| setup(e.to_string())))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok(OciBackend {
            options,
            root,
            exits,
            reaper,
            tasks: Arc::default(),
            hidden_mounts: Arc::new(hidden_mounts),
            cli_deadline: CLI_DEADLINE,
        })
    }

    /// Another deadline for every CLI call (create, exec and, through
    /// `output`, all the others), after which the CLI is killed and the call
    /// fails.
    pub fn with_cli_deadline(mut self, deadline: Duration) -> OciBackend {
        self.cli_deadline = deadline;
        self
    }

    fn cli(&self) -> Command {
        let mut cmd = Command::new(&self.options.runtime_path);
        cmd.args(&self.options.runtime_args)
            .arg("--root")
            .arg(&self.root);
        if !self.hidden_mounts.is_empty() {
            let hidden = self.hidden_mounts.clone();
            // SAFETY: only async-signal-safe syscalls on memory allocated
            // before the fork.
            unsafe {
                cmd.pre_exec(move || hide_mounts(&hidden));
            }
        }
        cmd
    }

    /// Runs a short CLI call to completion.
    fn run(&self, op: &'static str, id: &str, args: &[&str]) -> Result<()> {
        self.output(op, id, args).map(drop)
    }

    /// Runs a CLI call to completion within the deadline (past it the CLI
    /// is killed through its pidfd and the call fails) and returns its
    /// stdout; a failure carries its stderr. Output goes to unnamed temp
    /// files, so a CLI that hangs cannot also block on a full pipe.
    fn output(&self, op: &'static str, id: &str, args: &[&str]) -> Result<Vec<u8>> {
        use std::io::{Read, Seek};
        let io = |e: std::io::Error| failed(op, id, e);
        let stdin = std::fs::File::open("/dev/null").map_err(io)?;
        let mut stdout = tempfile::tempfile().map_err(io)?;
        let mut stderr = tempfile::tempfile().map_err(io)?;
        let (cli, rx) = self
            .spawn_with(
                self.cli().args(args),
                stdin.into(),
                stdout.try_clone().map_err(io)?.into(),
                stderr.try_clone().map_err(io)?.into(),
            )
            .map_err(io)?;
        let Ok(reaped) = rx.recv_timeout(self.cli_deadline) else {
            Self::kill_overdue(&cli, &rx, id);
            return Err(failed(
                op,
                id,
                format!(
                    "the runtime's {} did not finish within {:?} (killed)",
                    args.first().unwrap_or(&op),
                    self.cli_deadline
                ),
            ));
        };
        let read = |file: &mut std::fs::File| -> std::io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            file.rewind()?;
            file.read_to_end(&mut buf)?;
            Ok(buf)
        };
        if reaped.code() == 0 {
            read(&mut stdout).map_err(io)
        } else {
            let text = read(&mut stderr).unwrap_or_default();
            Err(failed(op, id, String::from_utf8_lossy(&text).trim()))
        }
    }

    /// Spawns `cmd` with `stdio` as its own and returns a pidfd of it (to
    /// kill it past a deadline without hitting a reused pid) and a channel
    /// that receives its exit (the reaper watches it from the start).
    fn spawn_with(
        &self,
        cmd: &mut Command,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> std::io::Result<(Pidfd, mpsc::Receiver<Reaped>)> {
        let guard = self.reaper.lock();
        Self::spawn_locked(
            &guard,
            cmd,
            ChildStdio {
                stdin,
                stdout,
                stderr,
            },
        )
    }

    /// [`OciBackend::spawn_with`] under a fork lock the caller holds (and
    /// may go on holding: the CLI's exit is only reported once it is gone).
    fn spawn_locked(
        guard: &ForkGuard<'_>,
        cmd: &mut Command,
        stdio: ChildStdio,
    ) -> std::io::Result<(Pidfd, mpsc::Receiver<Reaped>)> {
        cmd.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        let (tx, rx) = mpsc::channel();
        let mut child = cmd.spawn()?;
        let pid = child.id();
        // Not reaped while the fork lock is held: the pid is still ours.
        let pidfd = match Pidfd::open(pid) {
            Ok(pidfd) => pidfd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        guard.watch(pid, move |reaped| {
            let _ = tx.send(reaped);
        });
        Ok((pidfd, rx))
    }

    /// Kills a CLI call that overran [`CLI_DEADLINE`] and waits (briefly)
    /// for the reaper to collect it.
    fn kill_overdue(cli: &Pidfd, rx: &mpsc::Receiver<Reaped>, id: &str) {
        tracing::warn!(
            id,
            pid = cli.pid(),
            "the runtime CLI overran its deadline: killing it"
        );
        if let Err(e) = cli.send_signal(libc::SIGKILL) {
            tracing::warn!(id, error = %e, "killing the runtime CLI");
        }
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }

    /// Writes an exec's process (with `terminal` as asked) where the CLI's
    /// `--process` reads it.
    fn write_process(
        dir: &Path,
        id: &str,
        process: &oci_spec::runtime::Process,
        terminal: bool,
    ) -> Result<PathBuf> {
        let mut process = process.clone();
        process.set_terminal(Some(terminal));
        let file = dir.join("process.json");
        let json = serde_json::to_vec(&process).map_err(|e| failed("start exec", id, e))?;
        std::fs::write(&file, json).map_err(|e| failed("start exec", id, e))?;
        Ok(file)
    }

    /// A pidfd of a foreground exec's process, once it is opened and the
    /// process is seen to be the CLI's child (so not a later process that
    /// reused the pid). `None` when it has exited already.
    fn open_exec_process(pid: u32, cli_pid: u32) -> Option<Pidfd> {
        let pidfd = Pidfd::open(pid).ok()?;
        let ppid: u32 = crate::host::proc_stat(pid)?.get(1)?.parse().ok()?;
        if ppid == cli_pid {
            Some(pidfd)
        } else {
            tracing::debug!(
                pid,
                ppid,
                cli_pid,
                "the exec's pid is no longer the CLI's child"
            );
            None
        }
    }

    fn read_pid(path: &Path) -> std::io::Result<u32> {
        std::fs::read_to_string(path)?
            .trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

impl Backend for OciBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, task: &TaskSpec) -> Result<u32> {
        let id = task.id.as_str();
        if locked(&self.tasks).contains_key(id) {
            return Err(BackendError::AlreadyExists {
                what: "task",
                id: id.to_string(),
            });
        }
        let cgroup_path = bundle_cgroup_path(&task.bundle);
        let stdio = PreparedStdio::open(&task.stdio)
            .map_err(|e| failed("create", id, format!("stdio: {e}")))?;
        let work = tempfile::tempdir().map_err(|e| failed("create", id, e))?;
        let pid_file = work.path().join("pid");
        let log = work.path().join("log");
        let mut cmd = self.cli();
        cmd.arg("--log")
            .arg(&log)
            .arg("create")
            .arg("--bundle")
            .arg(&task.bundle)
            .arg("--pid-file")
            .arg(&pid_file);
        if let Some(socket) = stdio.console_socket() {
            cmd.arg("--console-socket").arg(socket);
        }
        cmd.arg(id);
        // With a terminal the runtime hands the init the pty: the CLI gets
        // /dev/null.
        let (child, pending) = stdio.split();
        let kept_stdio =
            shared_sandbox::clone_stdio(&child).map_err(|e| failed("create", id, e))?;
        let child = match child {
            Some(child) => child,
            None => null_stdio().map_err(|e| failed("create", id, format!("/dev/null: {e}")))?,
        };
        let (cli, rx) = self
            .spawn_with(&mut cmd, child.stdin, child.stdout, child.stderr)
            .map_err(|e| failed("create", id, e))?;
        let Ok(reaped) = rx.recv_timeout(self.cli_deadline) else {
            Self::kill_overdue(&cli, &rx, id);
            let _ = self.run("delete", id, &["delete", "--force", id]);
            return Err(failed(
                "create",
                id,
                format!(
                    "the runtime did not finish within {:?} (killed)",
                    self.cli_deadline
                ),
            ));
        };
        if reaped.code() != 0 {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = self.run("delete", id, &["delete", "--force", id]);
            let hint = if log.contains("hybrid mode") && !self.options.hide_cgroup2 {
                " (set the handler option hide_cgroup2 = true on hybrid cgroup hosts)"
            } else {
                ""
            };
            return Err(failed(
                "create",
                id,
                format!(
                    "{} create: {}{hint}",
                    self.options.runtime_path.display(),
                    log.trim()
                ),
            ));
        }
        let created = Self::read_pid(&pid_file)
            .map_err(|e| failed("create", id, format!("pid file: {e}")))
            .and_then(|pid| {
                let pidfd = Pidfd::open(pid)
                    .map_err(|e| failed("create", id, format!("pidfd of {pid}: {e}")))?;
                let held = pending
                    .finish(id)
                    .map_err(|e| failed("create", id, format!("terminal: {e}")))?;
                Ok((pid, pidfd, held))
            });
        let (pid, pidfd, held) = match created {
            Ok(created) => created,
            Err(e) => {
                let _ = self.run("delete", id, &["delete", "--force", id]);
                return Err(e);
            }
        };
        let shares_init = self.is_an_init(pid);
        // The init waits for `start`: it cannot have exited yet.
        if !shares_init {
            let guard = self.reaper.lock();
            let this = self.clone_for_exit();
            let id2 = id.to_string();
            guard.watch(pid, move |reaped| {
                this.report(&id2, None, pid, reaped.code(), reaped.at)
            });
        }
        locked(&self.tasks).insert(
            id.to_string(),
            OciTask {
                init: Some(Proc { pidfd, stdio: held }),
                cgroup_path,
                shares_init,
                start_stdio: kept_stdio.filter(|_| shares_init),
                ..OciTask::default()
            },
        );
        tracing::info!(id, pid, runtime = %self.options.runtime_path.display(), "task created");
        Ok(pid)
    }

    fn start(&self, id: &str) -> Result<u32> {
        let pid = self.init_pid(id)?;
        if !self.start_in_shared_sandbox(id, pid)? {
            self.run("start", id, &["start", id])?;
        }
        Ok(pid)
    }

    fn exec(&self, exec: &ExecSpec) -> Result<()> {
        let mut tasks = locked(&self.tasks);
        let task = tasks
            .get_mut(&exec.container_id)
            .ok_or_else(|| not_found(&exec.container_id))?;
        crate::backend::register_exec(&mut task.execs, exec)
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        let exec = {
            let tasks = locked(&self.tasks);
            let task = tasks.get(id).ok_or_else(|| not_found(id))?;
            task.execs
                .get(exec_id)
                .cloned()
                .ok_or_else(|| not_found(&format!("{id}/{exec_id}")))?
        };
        if exec.stdio.terminal {
            return self.start_exec_terminal(id, exec_id, &exec);
        }
        let (child, held) =
            open_stdio(&exec.stdio).map_err(|e| failed("start exec", id, format!("stdio: {e}")))?;
        let work = tempfile::tempdir().map_err(|e| failed("start exec", id, e))?;
        let process_file = Self::write_process(work.path(), id, &exec.process, false)?;
        let pid_file = work.path().join("pid");
        let mut cmd = self.cli();
        cmd.arg("exec")
            .arg("--process")
            .arg(&process_file)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id);
        let (cli, rx) = self
            .spawn_with(&mut cmd, child.stdin, child.stdout, child.stderr)
            .map_err(|e| failed("start exec", id, e))?;
        let cli_pid = cli.pid();
        // The pid file appears once the process exists (or the CLI failed).
        let until = std::time::Instant::now() + self.cli_deadline;
        let pid = loop {
            if let Ok(pid) = Self::read_pid(&pid_file) {
                break pid;
            }
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(reaped) => {
                    // Exited before the pid file could be read: kept as
                    // started (CloseIO and Delete find it), and reported.
                    let pid = Self::read_pid(&pid_file).unwrap_or(cli_pid);
                    if let Some(task) = locked(&self.tasks).get_mut(id) {
                        task.running_execs.insert(
                            exec_id.to_string(),
                            Proc {
                                pidfd: cli,
                                stdio: held,
                            },
                        );
                    }
                    self.clone_for_exit()
                        .report(id, Some(exec_id), pid, reaped.code(), reaped.at);
                    return Ok(pid);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() < until => {}
                Err(_) => {
                    Self::kill_overdue(&cli, &rx, id);
                    // The process may exist by now (its pid file written
                    // as the CLI died): it must not run on untracked.
                    if let Ok(pid) = Self::read_pid(&pid_file) {
                        match Pidfd::open(pid) {
                            Ok(exec) => {
                                tracing::warn!(id, pid, "killing the overdue exec's process");
                                let _ = exec.send_signal(libc::SIGKILL);
                            }
                            Err(e) => {
                                tracing::debug!(id, pid, error = %e, "the overdue exec's process is gone")
                            }
                        }
                    }
                    return Err(failed(
                        "start exec",
                        id,
                        format!(
                            "the runtime did not start the process within {:?} (killed)",
                            self.cli_deadline
                        ),
                    ));
                }
            }
        };
        // Signals go to the exec process itself: the CLI cannot forward a
        // SIGKILL, and killing it would leave the process running on. The
        // CLI keeps reporting the exit (it exits with the process's status).
        let pidfd = match Self::open_exec_process(pid, cli.pid()) {
            Some(process) => process,
            None => cli,
        };
        if let Some(task) = locked(&self.tasks).get_mut(id) {
            task.running_execs
                .insert(exec_id.to_string(), Proc { pidfd, stdio: held });
        }
        let this = self.clone_for_exit();
        let (id2, exec2) = (id.to_string(), exec_id.to_string());
        std::thread::spawn(move || {
            if let Ok(reaped) = rx.recv() {
                this.report(&id2, Some(&exec2), pid, reaped.code(), reaped.at);
            }
        });
        Ok(pid)
    }

    fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        match exec_id {
            Some(exec_id) => {
                let tasks = locked(&self.tasks);
                let task = tasks.get(id).ok_or_else(|| not_found(id))?;
                let proc = task
                    .running_execs
                    .get(exec_id)
                    .ok_or_else(|| not_found(exec_id))?;
                proc.pidfd
                    .send_signal(signal as i32)
                    .map_err(|e| failed("kill", id, e))?;
                Ok(())
            }
            None => {
                let exited = {
                    let tasks = locked(&self.tasks);
                    tasks.get(id).ok_or_else(|| not_found(id))?.exited
                };
                if exited && !all {
                    return Ok(());
                }
                let signal = signal.to_string();
                let mut args = vec!["kill"];
                if all {
                    args.push("--all");
                }
                args.extend([id, signal.as_str()]);
                match self.run("kill", id, &args) {
                    Err(_) if exited => Ok(()),
                    other => other,
                }
            }
        }
    }

    fn delete(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        let mut tasks = locked(&self.tasks);
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
        if let Some(exec_id) = exec_id {
            task.execs
                .remove(exec_id)
                .ok_or_else(|| not_found(exec_id))?;
            task.running_execs.remove(exec_id);
            return Ok(());
        }
        drop(tasks);
        self.run("delete", id, &["delete", "--force", id])?;
        if let Some(cgroup) = locked(&self.tasks).remove(id).and_then(|t| t.cgroup_path) {
            cgroups::forget(&cgroup);
        }
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        // An exited init leaves no process (crun's `ps` then fails).
        if locked(&self.tasks)
            .get(id)
            .ok_or_else(|| not_found(id))?
            .exited
        {
            return Ok(Vec::new());
        }
        let out = self.output("pids", id, &["ps", "--format", "json", id])?;
        // runc prints `null` for a container with no process left.
        let pids: Vec<u32> = serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map_err(|e| failed("pids", id, format!("the runtime's ps output: {e}")))?
            .unwrap_or_default();
        let execs: HashMap<u32, String> = locked(&self.tasks)
            .get(id)
            .map(|task| {
                task.running_execs
                    .iter()
                    .map(|(exec_id, proc)| (proc.pidfd.pid(), exec_id.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                exec_id: execs.get(&pid).cloned(),
            })
            .collect())
    }

    fn pause(&self, id: &str) -> Result<()> {
        self.run("pause", id, &["pause", id])
    }

    fn resume(&self, id: &str) -> Result<()> {
        self.run("resume", id, &["resume", id])
    }

    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        self.init_pid(id)?;
        let work = tempfile::tempdir().map_err(|e| failed("update", id, e))?;
        let file = work.path().join("resources.json");
        let json = serde_json::to_vec(resources).map_err(|e| failed("update", id, e))?;
        std::fs::write(&file, json).map_err(|e| failed("update", id, e))?;
        let file = file.to_string_lossy();
        self.run("update", id, &["update", "--resources", &file, id])
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
            stdio
                .reopen_logs()
                .map_err(|e| failed("reopen logs", id, e))
        })
    }
}

impl OciBackend {
    /// Runs `f` on the held stdio of the init (`exec_id` None) or of a
    /// started exec.
    fn with_stdio<T>(
        &self,
        id: &str,
        exec_id: Option<&str>,
        f: impl FnOnce(&mut HeldStdio) -> Result<T>,
    ) -> Result<T> {
        let mut tasks = locked(&self.tasks);
        let task = tasks.get_mut(id).ok_or_else(|| not_found(id))?;
        let proc = match exec_id {
            None => task.init.as_mut(),
            Some(exec_id) => match task.running_execs.get_mut(exec_id) {
                Some(proc) => Some(proc),
                None if task.execs.contains_key(exec_id) => {
                    return Err(BackendError::InvalidState {
                        id: format!("{id}/{exec_id}"),
                        state: "created".into(),
                        op: "use the stdio of an exec not started",
                    })
                }
                None => None,
            },
        };
        let proc = proc.ok_or_else(|| not_found(&format!("{id}/{}", exec_id.unwrap_or(""))))?;
        f(&mut proc.stdio)
    }

    /// An exec with a terminal (see the module docs): `exec --detach` with a
    /// console socket. The process becomes the shim's child when the CLI
    /// exits, with no lock held, so an adoption window keeps its exit should
    /// it be reaped before it is watched; it is watched (or its kept exit
    /// reported) only once the start has succeeded.
    fn start_exec_terminal(&self, id: &str, exec_id: &str, exec: &ExecSpec) -> Result<u32> {
        const OP: &str = "start exec";
        let io = |e: std::io::Error| failed(OP, id, format!("terminal: {e}"));
        let stdio = PreparedStdio::open(&exec.stdio)
            .map_err(|e| failed(OP, id, format!("terminal: {e}")))?;
        let Some(socket) = stdio.console_socket().map(Path::to_path_buf) else {
            return Err(failed(OP, id, "terminal: no console socket"));
        };
        let work = tempfile::tempdir().map_err(io)?;
        let process_file = Self::write_process(work.path(), id, &exec.process, true)?;
        let (pid_file, log) = (work.path().join("pid"), work.path().join("log"));
        let mut cmd = self.cli();
        cmd.arg("--log")
            .arg(&log)
            .arg("exec")
            .arg("--detach")
            .arg("--console-socket")
            .arg(&socket)
            .arg("--process")
            .arg(&process_file)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id);
        let window = self.reaper.adoption_window();
        let null = null_stdio().map_err(io)?;
        let (cli, rx) = self
            .spawn_with(&mut cmd, null.stdin, null.stdout, null.stderr)
            .map_err(io)?;
        // Kills what the CLI may have started, on any failure below: the
        // process must neither run on untracked nor have its exit reported.
        let abandon = |reason: String| -> BackendError {
            match Self::read_pid(&pid_file) {
                Ok(pid) => {
                    let guard = self.reaper.lock();
                    if guard.claim(pid).is_none() {
                        // Not reaped while the lock is held: still that process.
                        if let Ok(process) = Pidfd::open(pid) {
                            tracing::warn!(
                                id,
                                exec_id,
                                pid,
                                "killing the exec that failed to start"
                            );
                            let _ = process.send_signal(libc::SIGKILL);
                        }
                    }
                }
                Err(_) => tracing::warn!(
                    id,
                    exec_id,
                    "the runtime gave no pid: a process it started would be reaped unreported"
                ),
            }
            failed(OP, id, reason)
        };
        let code = match rx.recv_timeout(self.cli_deadline) {
            Ok(reaped) => reaped.code(),
            Err(_) => {
                Self::kill_overdue(&cli, &rx, id);
                return Err(abandon(format!(
                    "the runtime did not start the process within {:?} (killed)",
                    self.cli_deadline
                )));
            }
        };
        let runtime = self.options.runtime_path.display();
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        if code != 0 {
            return Err(abandon(format!(
                "{runtime} exec exited with {code}: {}",
                log_text().trim()
            )));
        }
        let pid = Self::read_pid(&pid_file).map_err(|e| {
            failed(
                OP,
                id,
                format!("{runtime} exec: no pid file ({e}): {}", log_text().trim()),
            )
        })?;
        let (_, pending) = stdio.split();
        let held = match pending.finish(&format!("{id}-{exec_id}")) {
            Ok(held) => held,
            Err(e) => return Err(abandon(format!("terminal: {e}"))),
        };
        let mut tasks = locked(&self.tasks);
        let Some(task) = tasks.get_mut(id) else {
            drop(tasks);
            return Err(abandon(format!("task {id} was deleted meanwhile")));
        };
        // The CLI is gone: its pidfd only ever answers ESRCH, so a kill of an
        // exec that already exited is a no-op, never a stranger's.
        let mut pidfd = cli;
        let guard = self.reaper.lock();
        let exited = guard.claim(pid);
        if exited.is_none() {
            pidfd = Pidfd::open(pid).map_err(|e| failed(OP, id, format!("pidfd of {pid}: {e}")))?;
            let this = self.clone_for_exit();
            let (id2, exec2) = (id.to_string(), exec_id.to_string());
            guard.watch(pid, move |reaped| {
                this.report(&id2, Some(&exec2), pid, reaped.code(), reaped.at)
            });
        }
        drop(guard);
        task.running_execs
            .insert(exec_id.to_string(), Proc { pidfd, stdio: held });
        drop(tasks);
        drop(window);
        if let Some(reaped) = exited {
            self.clone_for_exit()
                .report(id, Some(exec_id), pid, reaped.code(), reaped.at);
        }
        tracing::info!(id, exec_id, pid, "exec with a terminal started");
        Ok(pid)
    }

    fn task_cgroup(&self, id: &str) -> Result<PathBuf> {
        let tasks = locked(&self.tasks);
        let task = tasks.get(id).ok_or_else(|| not_found(id))?;
        task.cgroup_path.clone().ok_or(BackendError::Unsupported {
            op: "stats without linux.cgroupsPath",
            backend: NAME,
        })
    }

    fn init_pid(&self, id: &str) -> Result<u32> {
        let tasks = locked(&self.tasks);
        let task = tasks.get(id).ok_or_else(|| not_found(id))?;
        task.init
            .as_ref()
            .map(|p| p.pidfd.pid())
            .ok_or_else(|| not_found(id))
    }

    /// What an exit callback needs, without borrowing the backend.
    fn clone_for_exit(&self) -> ExitReporter {
        ExitReporter {
            tasks: Arc::downgrade(&self.tasks),
            exits: self.exits.clone(),
        }
    }
}

struct ExitReporter {
    tasks: std::sync::Weak<Mutex<HashMap<String, OciTask>>>,
    exits: ExitSink,
}

impl ExitReporter {
    fn report(&self, id: &str, exec_id: Option<&str>, pid: u32, status: u32, at: SystemTime) {
        let Some(tasks) = self.tasks.upgrade() else {
            return;
        };
        let mut oom_killed = false;
        if let Some(task) = locked(&tasks).get_mut(id) {
            if exec_id.is_none() {
                task.exited = true;
                // Read before delete removes the cgroup: did the OOM killer act?
                oom_killed = task
                    .cgroup_path
                    .as_deref()
                    .is_some_and(|cg| cgroups::oom_kills(cg) > 0);
            }
        }
        tracing::info!(id, ?exec_id, pid, status, oom_killed, "process exited");
        (self.exits)(Exit {
            container_id: id.to_string(),
            exec_id: exec_id.map(str::to_string),
            pid,
            status,
            exited_at: at,
            oom_killed,
        });
    }
}

/// The spec's `linux.cgroupsPath` in the bundle's `config.json`, if any.
fn bundle_cgroup_path(bundle: &Path) -> Option<PathBuf> {
    oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()?
        .linux()
        .as_ref()?
        .cgroups_path()
        .clone()
}
