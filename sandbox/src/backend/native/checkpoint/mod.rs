//! Checkpoint and restore of native tasks with the CRIU command line.
//!
//! **Dump** (`criu dump --tree <init> --leave-running`): the task's
//! namespaces shared with the pod's pause (a spec namespace with a path:
//! network, and PID when the pod shares one) are *external*
//! (`--external net[<inode>]:extRootNetNS`, as runc names them); UTS and IPC
//! are dumped and joined again on restore (`--join-ns`). Bind mounts (the
//! pod's hosts, hostname, resolv.conf and `/dev/shm`, volumes) and the
//! cgroup v1 hierarchies bound into the container are external mounts keyed
//! by their destination. What restore needs to know besides CRIU's images is
//! written beside them: runc's `descriptors.json` (what fds 0-2 were) and
//! `caisson-externals.json` (the external mounts and namespaces).
//!
//! **Restore** (`criu restore --restore-detached --restore-sibling`): a
//! task created with [`crate::backend::TaskSpec::checkpoint`] gets its
//! spec prepared, its stdio opened and libcontainer's state written, but no
//! process; at start CRIU restores the tree from the images over the
//! bundle's rootfs, joining the new pod's namespaces and mapping each
//! external mount to the new spec's source. The restored init is the shim's
//! child (CRIU clones it as its own sibling while the fork lock is held, and
//! it is watched before the lock is released), placed in the new task's
//! cgroup (`--cgroup-root`), its output pipes replaced by the new task's
//! (`--inherit-fd fd[N]:pipe:[inode]`), so it writes to the new CRI log.
//!
//! A task with a terminal, or with stdin, cannot be checkpointed: its fds
//! lead outside the container in ways CRIU cannot restore here.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use libcontainer::container::{Container, ContainerStatus};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::Serialize;

mod criu_args;

use criu_args::{
    cgroup_root_args, dump_external_args, externals_of, has_path, parse_mountinfo,
    restore_mount_args, Externals, NET_KEY, PID_KEY,
};

use super::errors::{failed, invalid_state, not_found};
use super::process_io::prepare_stdio;
use super::spec::{self, SpecOrigin};
use super::state::{Phase, Started, Task};
use super::NativeBackend;
use crate::backend::{locked, BackendError, CheckpointSpec, Result, TaskKind, TaskSpec};
use crate::host::cgroups;
use crate::host::pidfd::Pidfd;
use crate::host::stdio::{ChildStdio, HeldStdio, PendingStdio};

/// runc's list of what the init's fds 0, 1 and 2 were.
const DESCRIPTORS: &str = "descriptors.json";
/// What else restore needs to know about the dump ([`Externals`]).
const EXTERNALS: &str = "caisson-externals.json";
/// How long a restore may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// Where restore hands CRIU the fds it inherits: stdio first, then the
/// namespaces.
const FIRST_INHERITED_FD: RawFd = 10;

/// A restoring task between create and start.
pub(super) struct PendingRestore {
    images: PathBuf,
    bundle: PathBuf,
    kind: TaskKind,
    cgroup_path: PathBuf,
    oom_score_adj: Option<i32>,
    /// The ceiling of its execs' capabilities ([`spec::OwnCaps`]).
    exec_caps_ceiling: Option<oci_spec::runtime::LinuxCapabilities>,
    /// The new process's stdio, handed to CRIU in place of the old pipes.
    child: ChildStdio,
    held: HeldStdio,
}

/// The restores created and not yet started, by task id.
#[derive(Default)]
pub(super) struct Restores(std::sync::Mutex<HashMap<String, PendingRestore>>);

impl Restores {
    pub(super) fn contains(&self, id: &str) -> bool {
        locked(&self.0).contains_key(id)
    }

    fn take(&self, id: &str) -> Option<PendingRestore> {
        locked(&self.0).remove(id)
    }

    fn put(&self, id: &str, pending: PendingRestore) {
        locked(&self.0).insert(id.to_string(), pending);
    }
}

/// What fds 0-2 of `pid` are; only `/dev/null` and pipes can be restored.
fn stdio_descriptors(id: &str, pid: u32) -> Result<Vec<String>> {
    (0..3)
        .map(|fd| {
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map_err(|e| failed("checkpoint", id, format!("fd {fd} of {pid}: {e}")))?
                .display()
                .to_string();
            if link == "/dev/null" || link.starts_with("pipe:[") {
                Ok(link)
            } else {
                Err(invalid_state(id, "reading stdin", "checkpoint"))
            }
        })
        .collect()
}

fn ns_inode(pid: u32, ns: &str) -> Result<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .map(|m| m.ino())
        .map_err(|e| {
            failed(
                "checkpoint",
                &pid.to_string(),
                format!("{ns} namespace: {e}"),
            )
        })
}

fn load_spec(id: &str, bundle: &Path) -> Result<Spec> {
    Spec::load(bundle.join("config.json"))
        .map_err(|e| failed("checkpoint", id, format!("loading the bundle's spec: {e}")))
}

fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> std::io::Result<()> {
    std::fs::write(dir.join(name), serde_json::to_vec(value)?)
}

fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> std::result::Result<T, String> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The `Error` lines of a CRIU log (at most the last five), for messages.
fn log_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") && !l.contains("RLIMIT_NOFILE"))
        .collect();
    let tail = &errors[errors.len().saturating_sub(5)..];
    if tail.is_empty() {
        format!("see {}", log.display())
    } else {
        format!("{} (log: {})", tail.join("; "), log.display())
    }
}

/// What a CRIU run ended with: its raw wait status, or a timeout.
enum CriuEnd {
    Exited(i32),
    TimedOut,
}

/// `criu --version` checked, for error messages: `<path> <version>`.
fn criu_identity(criu: &Path, reaper: &crate::host::reaper::Reaper) -> Result<String> {
    let out = reaper
        .run(Command::new(criu).arg("--version"))
        .map_err(|e| {
            failed(
                "run CRIU",
                &criu.display().to_string(),
                format!("{e} (build it with `make criu`, or set [checkpoint] criu_path)"),
            )
        })?;
    let version =
        crate::checkpoint::check_criu_version(criu, &String::from_utf8_lossy(&out.stdout))
            .map_err(|e| failed("run CRIU", &criu.display().to_string(), e))?;
    Ok(format!("{} {version}", criu.display()))
}

/// Waits up to `deadline` for `pid` (a child this process holds the fork
/// lock for) to exit; kills it past the deadline.
fn wait_child(pid: u32, deadline: Instant) -> CriuEnd {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, status into a valid i32.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if r == pid as i32 {
            return CriuEnd::Exited(status);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return CriuEnd::Exited(-1);
        }
        if Instant::now() >= deadline {
            // SAFETY: our unreaped child (the fork lock is held).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, &mut status, 0);
            }
            return CriuEnd::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl NativeBackend {
    /// Runs `cmd` (CRIU dumping: it forks nothing this process must reap)
    /// to its end or `deadline`, its exit collected by the reaper, without
    /// holding the fork lock while it runs.
    fn run_watched(&self, cmd: &mut Command, deadline: Instant) -> std::io::Result<CriuEnd> {
        let (tx, rx) = std::sync::mpsc::channel();
        let pidfd = {
            let guard = self.reaper.lock();
            let child = cmd.spawn()?;
            let pidfd = Pidfd::open(child.id());
            guard.watch(child.id(), move |reaped| {
                let _ = tx.send(reaped.raw_status);
            });
            pidfd
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(status) => Ok(CriuEnd::Exited(status)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(pidfd) = &pidfd {
                    let _ = pidfd.send_signal(libc::SIGKILL);
                }
                let _ = rx.recv_timeout(Duration::from_secs(10));
                Ok(CriuEnd::TimedOut)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Ok(CriuEnd::Exited(-1)),
        }
    }

    /// [`crate::backend::Backend::checkpoint`] for native tasks.
    pub(super) fn checkpoint_task(&self, id: &str, req: &CheckpointSpec) -> Result<()> {
        let (pid, cgroup_path) = {
            let tasks = self.tasks.lock();
            let task = tasks.get(id).ok_or_else(|| not_found(id))?;
            if task.kind == TaskKind::Sandbox {
                return Err(invalid_state(id, "the pod's sandbox", "checkpoint"));
            }
            if task.phase != Phase::Running {
                return Err(invalid_state(id, task.phase.name(), "checkpoint"));
            }
            if task.paused {
                return Err(invalid_state(id, "paused", "checkpoint"));
            }
            if task.init.stdio.pty_master().is_some() {
                return Err(invalid_state(id, "attached to a terminal", "checkpoint"));
            }
            (task.init.pidfd.pid(), task.cgroup_path.clone())
        };
        let criu = crate::checkpoint::criu_path(None);
        let identity = criu_identity(&criu, self.reaper)?;
        let bundle = self.load("checkpoint", id)?.bundle().clone();
        let oci = load_spec(id, &bundle)?;
        let descriptors = stdio_descriptors(id, pid)?;
        let read = |path: String| std::fs::read_to_string(&path).unwrap_or_default();
        let externals = externals_of(
            &oci,
            &parse_mountinfo(&read(format!("/proc/{pid}/mountinfo"))),
            &parse_mountinfo(&read("/proc/self/mountinfo".into())),
            &cgroup_path,
        );
        let images = &req.images_dir;
        write_json(images, DESCRIPTORS, &descriptors)
            .and_then(|_| write_json(images, EXTERNALS, &externals))
            .map_err(|e| failed("checkpoint", id, format!("{}: {e}", images.display())))?;
        let work = req.work_dir.clone().unwrap_or_else(|| images.clone());
        let mut cmd = Command::new(&criu);
        cmd.args([
            "dump",
            "--no-default-config",
            "-v4",
            "--log-file",
            "dump.log",
        ])
        .args(["--tree", &pid.to_string(), "--manage-cgroups"])
        .arg("--images-dir")
        .arg(images)
        .arg("--work-dir")
        .arg(&work)
        // CRIU's own limit on freezing the tree.
        .args(["--timeout", &req.timeout.as_secs().max(1).to_string()])
        .args(dump_external_args(
            &externals,
            ns_inode(pid, "net")?,
            ns_inode(pid, "pid")?,
        ));
        if !req.exit {
            cmd.arg("--leave-running");
        }
        let started = Instant::now();
        let mut stderr = tempfile::tempfile()
            .map_err(|e| failed("checkpoint", id, format!("temp file: {e}")))?;
        let stderr_copy = stderr
            .try_clone()
            .map_err(|e| failed("checkpoint", id, e))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr_copy);
        let end = self
            .run_watched(&mut cmd, started + req.timeout)
            .map_err(|e| failed("checkpoint", id, format!("running {identity}: {e}")))?;
        let mut text = String::new();
        let _ = stderr.rewind();
        let _ = stderr.read_to_string(&mut text);
        let end = (end, text);
        match end {
            (CriuEnd::Exited(0), _) => {
                tracing::info!(id, pid, criu = %identity, took = ?started.elapsed(), "task dumped");
                Ok(())
            }
            (CriuEnd::TimedOut, _) => Err(BackendError::Failed {
                op: "checkpoint",
                id: id.to_string(),
                reason: format!(
                    "{identity} did not finish within {:?}: killed ({})",
                    req.timeout,
                    log_errors(&work.join("dump.log"))
                ),
            }),
            (CriuEnd::Exited(status), stderr) => Err(failed(
                "checkpoint",
                id,
                format!(
                    "{identity} dump failed (status {}): {} {}",
                    crate::host::reaper::exit_code(status),
                    log_errors(&work.join("dump.log")),
                    stderr.trim()
                ),
            )),
        }
    }

    /// [`crate::backend::Backend::create`] for a task restored at start.
    pub(super) fn create_restored(&self, task: &TaskSpec, images: &Path) -> Result<u32> {
        // It may join a started task's namespaces, as a create does.
        self.settle_execs();
        let id = task.id.as_str();
        if self.tasks.lock().contains_key(id) || self.restores.contains(id) {
            return Err(BackendError::AlreadyExists {
                what: "task",
                id: id.to_string(),
            });
        }
        Self::validate_id("create", id)?;
        if task.stdio.terminal || !task.stdio.stdin.is_empty() {
            return Err(BackendError::InvalidArgument {
                what: "checkpoint".into(),
                reason: "a task restored from a checkpoint can have neither a terminal nor stdin"
                    .into(),
            });
        }
        for name in [DESCRIPTORS, EXTERNALS] {
            if !images.join(name).is_file() {
                return Err(BackendError::InvalidArgument {
                    what: "checkpoint".into(),
                    reason: format!(
                        "{} has no {name}: not a checkpoint this shim wrote",
                        images.display()
                    ),
                });
            }
        }
        let prepared =
            spec::prepare_bundle(id, &task.bundle, false, self.limits, SpecOrigin::Incoming)?;
        // CRIU restores the processes' own capabilities and filter.
        if let Some(own) = &prepared.own_caps {
            own.write_back(id, &task.bundle)?;
        }
        let stdio = prepare_stdio(id, &task.stdio)?;
        let (child, pending) = stdio.split();
        let (Some(child), PendingStdio::Plain(held)) = (child, pending) else {
            return Err(failed("create", id, "a terminal where none was asked"));
        };
        let oci = load_spec(id, &task.bundle)?;
        let dir = self.container_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| failed("create", id, e))?;
        let state = Container::new(id, ContainerStatus::Created, None, &task.bundle, &dir)
            .and_then(|c| c.save())
            .map_err(|e| e.to_string())
            .and_then(|_| {
                libcontainer::config::YoukiConfig::from_spec(&oci, id)
                    .and_then(|c| c.save(&dir))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = state {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(failed("create", id, format!("container state: {e}")));
        }
        self.restores.put(
            id,
            PendingRestore {
                images: images.to_path_buf(),
                bundle: task.bundle.clone(),
                kind: task.kind.clone(),
                cgroup_path: prepared.cgroup_path,
                oom_score_adj: prepared.oom_score_adj,
                exec_caps_ceiling: prepared.own_caps.map(|own| own.caps),
                child,
                held,
            },
        );
        tracing::info!(id, images = %images.display(), "task created, to be restored at start");
        Ok(0)
    }

    /// Whether `id` is a restore not yet started.
    pub(super) fn is_pending_restore(&self, id: &str) -> bool {
        self.restores.contains(id)
    }

    /// Deletes a restore that never started: its state and cgroup.
    pub(super) fn delete_pending_restore(&self, id: &str) -> Result<()> {
        let Some(pending) = self.restores.take(id) else {
            return Err(not_found(id));
        };
        if let Ok(m) = cgroups::manager(id, &pending.cgroup_path) {
            use libcgroups::common::CgroupManager;
            if let Err(e) = m.remove() {
                tracing::debug!(id, error = %e, "removing the cgroup of an unstarted restore");
            }
        }
        cgroups::forget(&pending.cgroup_path);
        let _ = std::fs::remove_dir_all(self.container_dir(id));
        tracing::info!(id, "unstarted restore deleted");
        Ok(())
    }

    /// [`crate::backend::Backend::start`] for a task created to be restored.
    pub(super) fn start_restored(&self, id: &str) -> Result<u32> {
        let pending = self.restores.take(id).ok_or_else(|| not_found(id))?;
        match self.restore(id, &pending) {
            Ok(pid) => {
                let PendingRestore {
                    kind,
                    cgroup_path,
                    oom_score_adj,
                    exec_caps_ceiling,
                    held,
                    ..
                } = pending;
                let mut tasks = self.tasks.lock();
                let pidfd = match Pidfd::open(pid) {
                    Ok(p) => p,
                    Err(e) => return Err(failed("restore", id, format!("pidfd of {pid}: {e}"))),
                };
                tasks.insert(
                    id.to_string(),
                    Task {
                        kind,
                        phase: Phase::Running,
                        paused: false,
                        init: Started { pidfd, stdio: held },
                        cgroup_path,
                        oom_score_adj,
                        exec_caps_ceiling,
                        fork_netns: None,
                        exec_userns: None,
                        view: None,
                        pending_exec: None,
                        execs: HashMap::new(),
                    },
                );
                Ok(pid)
            }
            Err(e) => {
                // Kept, so that delete removes its state and cgroup.
                self.restores.put(id, pending);
                Err(e)
            }
        }
    }

    /// Runs `criu restore` for `pending`; the restored init's pid, watched.
    fn restore(&self, id: &str, pending: &PendingRestore) -> Result<u32> {
        let fail = |reason: String| failed("restore", id, reason);
        let criu = crate::checkpoint::criu_path(None);
        let identity = criu_identity(&criu, self.reaper)?;
        let oci = load_spec(id, &pending.bundle)?;
        let images = &pending.images;
        let descriptors: Vec<String> = read_json(images, DESCRIPTORS).map_err(fail)?;
        let externals: Externals = read_json(images, EXTERNALS).map_err(fail)?;
        let mut args = restore_mount_args(&externals, &oci, &pending.cgroup_path).map_err(|e| {
            BackendError::InvalidArgument {
                what: "checkpoint".into(),
                reason: e,
            }
        })?;
        let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        args.extend(cgroup_root_args(&self_cgroup, &pending.cgroup_path));
        // fds CRIU inherits: the new stdio in place of the dumped pipes,
        // then the pod's namespaces.
        let mut inherited: Vec<(RawFd, RawFd)> = Vec::new();
        let stdio = [
            &pending.child.stdin,
            &pending.child.stdout,
            &pending.child.stderr,
        ];
        for (i, desc) in descriptors.iter().enumerate().take(3) {
            if desc.starts_with("pipe:[") {
                let target = FIRST_INHERITED_FD + i as RawFd;
                inherited.push((stdio[i].as_raw_fd(), target));
                args.push("--inherit-fd".into());
                args.push(format!("fd[{target}]:{desc}"));
            }
        }
        let mut ns_files: Vec<OwnedFd> = Vec::new();
        for (wanted, typ, key) in [
            (externals.net, LinuxNamespaceType::Network, NET_KEY),
            (externals.pid, LinuxNamespaceType::Pid, PID_KEY),
        ] {
            if !wanted {
                continue;
            }
            let path = has_path(&oci, typ).ok_or_else(|| BackendError::InvalidArgument {
                what: "checkpoint".into(),
                reason: format!(
                    "the checkpoint shares the pod's {typ:?} namespace but the new container \
                     does not join one"
                ),
            })?;
            let file = std::fs::File::open(&path)
                .map_err(|e| fail(format!("namespace {}: {e}", path.display())))?;
            let target = FIRST_INHERITED_FD + 3 + ns_files.len() as RawFd;
            inherited.push((file.as_raw_fd(), target));
            ns_files.push(file.into());
            args.push("--inherit-fd".into());
            args.push(format!("fd[{target}]:{key}"));
        }
        for (typ, name) in [
            (LinuxNamespaceType::Uts, "uts"),
            (LinuxNamespaceType::Ipc, "ipc"),
        ] {
            if let Some(path) = has_path(&oci, typ) {
                args.push("--join-ns".into());
                args.push(format!("{name}:{}", path.display()));
            }
        }
        // CRIU's root must be a mount point whose parent is not
        // over-mounted: a bind of the rootfs in the task's state dir.
        let root = self.container_dir(id).join("criu-root");
        let _ = std::fs::create_dir_all(&root);
        let rootfs = pending.bundle.join("rootfs");
        nix::mount::mount(
            Some(&rootfs),
            &root,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| fail(format!("binding {} for CRIU: {e}", rootfs.display())))?;
        let unbind = scopeguard(&root);
        let work = self.container_dir(id);
        let pidfile = work.join("restored.pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut cmd = Command::new(&criu);
        cmd.args([
            "restore",
            "--no-default-config",
            "-v4",
            "--log-file",
            "restore.log",
        ])
        .args([
            "--restore-detached",
            "--restore-sibling",
            "--manage-cgroups=soft",
        ])
        .arg("--images-dir")
        .arg(images)
        .arg("--work-dir")
        .arg(&work)
        .arg("--root")
        .arg(&root)
        .arg("--pidfile")
        .arg(&pidfile)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        let moves = inherited.clone();
        // SAFETY: only dup/dup2 (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut temps = Vec::with_capacity(moves.len());
                for (src, _) in &moves {
                    let t = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 1000);
                    if t < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    temps.push(t);
                }
                for (t, (_, target)) in temps.iter().zip(&moves) {
                    if libc::dup2(*t, *target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let started = Instant::now();
        // Held until the restored init is watched: it is born this
        // process's child and must not be reaped unseen.
        let guard = self.reaper.lock();
        let child = cmd
            .spawn()
            .map_err(|e| fail(format!("running {identity}: {e}")))?;
        let end = wait_child(child.id(), started + RESTORE_TIMEOUT);
        drop(ns_files);
        drop(unbind);
        let log = work.join("restore.log");
        let killed = |why: String| {
            // Whatever CRIU restored before it failed goes with it.
            if let Ok(pids) = cgroups::pids(id, &pending.cgroup_path) {
                for pid in pids {
                    // SAFETY: plain kill of processes in the task's cgroup.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
            fail(why)
        };
        match end {
            CriuEnd::Exited(0) => {}
            CriuEnd::TimedOut => {
                return Err(killed(format!(
                    "{identity} did not finish within {RESTORE_TIMEOUT:?}: killed ({})",
                    log_errors(&log)
                )))
            }
            CriuEnd::Exited(status) => {
                return Err(killed(format!(
                    "{identity} restore failed (status {}): {}",
                    crate::host::reaper::exit_code(status),
                    log_errors(&log)
                )))
            }
        }
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| killed(format!("{} holds no pid", pidfile.display())))?;
        self.watch(&guard, id, None, pid);
        drop(guard);
        if let Some(resources) = oci.linux().as_ref().and_then(|l| l.resources().clone()) {
            if let Err(e) = cgroups::update(id, &pending.cgroup_path, &resources) {
                tracing::warn!(id, error = %e, "applying the new spec's limits to the restored task");
            }
        }
        let mut container = self.load("restore", id)?;
        container
            .set_pid(pid as i32)
            .set_status(ContainerStatus::Running);
        container
            .save()
            .map_err(|e| fail(format!("container state: {e}")))?;
        tracing::info!(id, pid, criu = %identity, took = ?started.elapsed(), "task restored");
        Ok(pid)
    }
}

/// Unmounts (lazily) and removes CRIU's root bind when dropped.
struct RootBind(PathBuf);

impl Drop for RootBind {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn scopeguard(root: &Path) -> RootBind {
    RootBind(root.to_path_buf())
}
