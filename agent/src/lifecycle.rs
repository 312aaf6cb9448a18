//! Containers and processes through libcontainer: create, start, exec,
//! pause, delete, and what happens when one of their processes exits.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use caisson_agent_proto::{code, event, CreateContainer, ExecProcess, Exited, Oom, StdioConfig};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as LcContainer;
use libcontainer::syscall::syscall::SyscallType;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::Value;

use crate::agent::{fail, internal, Agent, Container, Outcome, Process};
use crate::cgroup;
use crate::executor::GuestExecutor;
use crate::guest_spec::{self, Role};
use crate::log::log;
use crate::stdio::{self, ChildStdio};

/// libcontainer's state directory.
const STATE_ROOT: &str = "/run/caisson/agent/state";
const BUNDLES: &str = "/run/caisson/agent/bundles";
/// Each pod's `/dev/shm`: a tmpfs per sandbox.
const SHM: &str = "/run/caisson/agent/shm";
const TTY: &str = "/run/caisson/agent/tty";
/// How long an exit waits for the process's output to drain.
const DRAIN: Duration = Duration::from_secs(2);

/// A container id libcontainer and the agent's paths accept.
fn check_id(id: &str) -> Outcome<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(fail(
            code::INVALID_ARGUMENT,
            format!("container_id: {id:?} is not a container id"),
        ))
    }
}

fn lc_error(what: impl std::fmt::Display, e: &dyn std::error::Error) -> crate::agent::Failure {
    let mut message = format!("{what}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    internal("libcontainer", message)
}

fn builder(id: &str, child: ChildStdio) -> Outcome<ContainerBuilder> {
    let builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_executor(GuestExecutor)
        .with_root_path(STATE_ROOT)
        .map_err(|e| lc_error("state root", &e))?;
    Ok(match child {
        ChildStdio::Fds {
            stdin,
            stdout,
            stderr,
        } => builder
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr),
        ChildStdio::Console(socket) => builder.with_console_socket(Some(socket)),
    })
}

/// Sets `terminal` in a process object to what the stdio asks:
/// libcontainer wants a console socket exactly when it is set.
fn set_terminal(process: &mut Value, stdio: &StdioConfig) {
    if let Some(p) = process.as_object_mut() {
        p.insert("terminal".into(), Value::Bool(stdio.terminal));
    }
}

impl Agent {
    fn console_path(&self) -> PathBuf {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        Path::new(TTY).join(format!("{n}.sock"))
    }

    pub fn create_container(&self, req: CreateContainer) -> Outcome<i32> {
        let id = req.container_id.as_str();
        check_id(id)?;
        let stdio = req.stdio.unwrap_or_default();
        let mut spec: Value = serde_json::from_slice(&req.spec_json)
            .map_err(|e| fail(code::INVALID_ARGUMENT, format!("spec_json: {e}")))?;
        let sandbox_id = if req.sandbox {
            id.to_string()
        } else {
            req.sandbox_id.clone()
        };
        // Every build, and so every create, runs under the fork guard: the
        // id checks below cannot race another create.
        let _guard = self.fork_guard();
        let (role, sandbox_pod) = {
            let table = self.table();
            if table.containers.contains_key(id) {
                return Err(fail(
                    code::ALREADY_EXISTS,
                    format!("container {id} already exists"),
                ));
            }
            if req.sandbox {
                (Role::Sandbox, None)
            } else {
                let sandbox = table.containers.get(&sandbox_id).ok_or_else(|| {
                    fail(
                        code::NOT_FOUND,
                        format!("sandbox_id: sandbox {sandbox_id:?} not found"),
                    )
                })?;
                if sandbox.init.exit.is_some() {
                    return Err(fail(
                        code::FAILED_PRECONDITION,
                        format!("sandbox {sandbox_id} has exited"),
                    ));
                }
                (
                    Role::Container {
                        sandbox_pid: sandbox.init.pid,
                    },
                    cgroup::pod_of(&sandbox.cgroup).map(str::to_string),
                )
            }
        };
        let shm = Path::new(SHM).join(&sandbox_id);
        if req.sandbox {
            make_shm(&shm)?;
        }
        guest_spec::rewrite(&mut spec, &role, &shm.to_string_lossy())
            .map_err(|e| fail(code::INVALID_ARGUMENT, e))?;
        if let Some(process) = spec.get_mut("process") {
            set_terminal(process, &stdio);
        }
        // The container's cgroup is in the guest's own tree, in the pod's
        // cgroup, which the sandbox makes (`cgroup` says who does what).
        let pod = if req.sandbox {
            match cgroup::create_pod(&cgroup::pod_place(&spec, id)) {
                Ok(pod) => Some(pod),
                Err(e) => {
                    remove_shm(&shm);
                    return Err(internal(format!("sandbox {id}"), e));
                }
            }
        } else {
            sandbox_pod
        };
        if let Some(pod) = &pod {
            cgroup::place(&mut spec, pod, id).map_err(|e| fail(code::INVALID_ARGUMENT, e))?;
        }
        let bundle = Path::new(BUNDLES).join(id);
        let created = self.build_init(id, &bundle, &spec, &stdio, req.sandbox);
        if req.sandbox && created.is_ok() {
            // The guest is the pod's: it takes the pod's name too (its
            // console and kernel messages then say which pod they are).
            if let Some(name) = spec.get("hostname").and_then(Value::as_str) {
                if let Err(e) = nix::unistd::sethostname(name) {
                    log!("setting the guest's hostname to {name:?}: {e}");
                }
            }
        }
        if created.is_err() {
            let _ = fs::remove_dir_all(&bundle);
            if req.sandbox {
                remove_shm(&shm);
                if let Some(pod) = &pod {
                    cgroup::remove_pod(pod);
                }
            }
        } else if let (false, Some(pod)) = (req.sandbox, &pod) {
            self.resize_pod(pod);
        }
        created
    }

    /// Sizes the pod's cgroup `pod` to its containers' limits, after one
    /// of them was made, updated or deleted. A failure is logged: the
    /// container's own limits hold whatever the pod's are.
    pub fn resize_pod(&self, pod: &str) {
        let sandbox = self
            .table()
            .containers
            .iter()
            .find(|(_, c)| c.sandbox && cgroup::pod_of(&c.cgroup) == Some(pod))
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        if let Err(e) = cgroup::resize_pod(pod, &sandbox) {
            log!("{e}");
        }
    }

    /// The build itself; the caller holds the fork guard.
    fn build_init(
        &self,
        id: &str,
        bundle: &Path,
        spec: &Value,
        stdio: &StdioConfig,
        sandbox: bool,
    ) -> Outcome<i32> {
        fs::create_dir_all(bundle).map_err(|e| internal(bundle.display(), e))?;
        let config = serde_json::to_vec(spec).map_err(|e| internal("config.json", e))?;
        fs::write(bundle.join("config.json"), config).map_err(|e| internal("config.json", e))?;
        let (child, prepared) =
            stdio::prepare(stdio, &self.console_path()).map_err(|e| internal("stdio", e))?;
        let built = builder(id, child)?
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build();
        restore_own_state();
        let container = match built {
            Ok(c) => c,
            Err(e) => {
                // A half-made container leaves state behind; remove it.
                if let Ok(mut c) = LcContainer::load(Path::new(STATE_ROOT).join(id)) {
                    let _ = c.delete(true);
                }
                return Err(lc_error(format!("creating container {id}"), &e));
            }
        };
        let pid = container
            .pid()
            .map(|p| p.as_raw())
            .ok_or_else(|| internal(id, "libcontainer recorded no pid"))?;
        let io = match prepared.start(&self.channel, id, "") {
            Ok(io) => io,
            Err(e) => {
                if let Ok(mut c) = LcContainer::load(Path::new(STATE_ROOT).join(id)) {
                    let _ = c.delete(true);
                }
                return Err(internal("container stdio", e));
            }
        };
        let cgroup = cgroup::of_pid(pid)
            .or_else(|| {
                spec.get("linux")
                    .and_then(|l| l.get("cgroupsPath"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let mut table = self.table();
        table.pids.insert(pid, (id.to_string(), String::new()));
        table.containers.insert(
            id.to_string(),
            Container {
                sandbox,
                cgroup,
                bundle: bundle.to_path_buf(),
                started: false,
                init: Process {
                    pid,
                    io: Arc::new(io),
                    exit: None,
                },
                execs: HashMap::new(),
                oom_seen: 0,
            },
        );
        log!("created container {id} (pid {pid})");
        Ok(pid)
    }

    pub fn start_container(&self, id: &str) -> Outcome<i32> {
        let _guard = self.fork_guard();
        let pid = {
            let table = self.table();
            let c = table.container(id)?;
            if c.started {
                return Err(fail(
                    code::FAILED_PRECONDITION,
                    format!("container {id} is already started"),
                ));
            }
            c.init.pid
        };
        let mut container = LcContainer::load(Path::new(STATE_ROOT).join(id))
            .map_err(|e| lc_error(format!("loading container {id}"), &e))?;
        container
            .start()
            .map_err(|e| lc_error(format!("starting container {id}"), &e))?;
        if let Some(c) = self.table().containers.get_mut(id) {
            c.started = true;
        }
        Ok(pid)
    }

    pub fn exec_process(&self, req: ExecProcess) -> Outcome<i32> {
        let (cid, eid) = (req.container_id.as_str(), req.exec_id.as_str());
        if eid.is_empty() {
            return Err(fail(code::INVALID_ARGUMENT, "exec_id: empty"));
        }
        let stdio = req.stdio.unwrap_or_default();
        let mut process: Value = serde_json::from_slice(&req.process_json)
            .map_err(|e| fail(code::INVALID_ARGUMENT, format!("process_json: {e}")))?;
        set_terminal(&mut process, &stdio);
        serde_json::from_value::<oci_spec::runtime::Process>(process.clone())
            .map_err(|e| fail(code::INVALID_ARGUMENT, format!("process_json: {e}")))?;
        let _guard = self.fork_guard();
        let bundle = {
            let table = self.table();
            let c = table.container(cid)?;
            if !c.started || c.init.exit.is_some() {
                return Err(fail(
                    code::FAILED_PRECONDITION,
                    format!("container {cid} is not running"),
                ));
            }
            if c.execs.contains_key(eid) {
                return Err(fail(
                    code::ALREADY_EXISTS,
                    format!("exec {eid} of container {cid} already exists"),
                ));
            }
            c.bundle.clone()
        };
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let file = bundle.join(format!("exec-{n}.json"));
        let json = serde_json::to_vec(&process).map_err(|e| internal("process.json", e))?;
        fs::write(&file, json).map_err(|e| internal(file.display(), e))?;
        let built = stdio::prepare(&stdio, &self.console_path())
            .map_err(|e| internal("stdio", e))
            .and_then(|(child, prepared)| {
                let pid = builder(cid, child)?
                    .as_tenant()
                    .with_process(Some(&file))
                    .with_detach(true)
                    .build();
                restore_own_state();
                let pid = pid.map_err(|e| lc_error(format!("exec {eid} in {cid}"), &e))?;
                Ok((pid.as_raw(), prepared))
            });
        let _ = fs::remove_file(&file);
        remove_tenant_sockets(&Path::new(STATE_ROOT).join(cid));
        let (pid, prepared) = built?;
        let io = match prepared.start(&self.channel, cid, eid) {
            Ok(io) => io,
            Err(e) => {
                // It runs already: do not leave it running unreported.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(internal("exec stdio", e));
            }
        };
        let mut table = self.table();
        table.pids.insert(pid, (cid.to_string(), eid.to_string()));
        if let Some(c) = table.containers.get_mut(cid) {
            c.execs.insert(
                eid.to_string(),
                Process {
                    pid,
                    io: Arc::new(io),
                    exit: None,
                },
            );
        }
        Ok(pid)
    }

    pub fn delete_process(&self, cid: &str, eid: &str) -> Outcome<()> {
        if !eid.is_empty() {
            let mut table = self.table();
            let c = table
                .containers
                .get_mut(cid)
                .ok_or_else(|| fail(code::NOT_FOUND, format!("container {cid} not found")))?;
            return match c.execs.remove(eid) {
                Some(p) => {
                    if p.exit.is_none() {
                        table.pids.remove(&p.pid);
                    }
                    Ok(())
                }
                None => Err(fail(
                    code::NOT_FOUND,
                    format!("exec {eid} of container {cid} not found"),
                )),
            };
        }
        let _guard = self.fork_guard();
        let (bundle, sandbox, its_cgroup) = {
            let table = self.table();
            let c = table.container(cid)?;
            (c.bundle.clone(), c.sandbox, c.cgroup.clone())
        };
        match LcContainer::load(Path::new(STATE_ROOT).join(cid)) {
            Ok(mut container) => container
                .delete(true)
                .map_err(|e| lc_error(format!("deleting container {cid}"), &e))?,
            Err(e) => log!("container {cid} has no libcontainer state: {e}"),
        }
        let _ = fs::remove_dir_all(&bundle);
        if sandbox {
            remove_shm(&Path::new(SHM).join(cid));
        }
        {
            let mut table = self.table();
            if let Some(c) = table.containers.remove(cid) {
                for p in std::iter::once(&c.init).chain(c.execs.values()) {
                    if p.exit.is_none() {
                        table.pids.remove(&p.pid);
                    }
                }
            }
        }
        match (cgroup::pod_of(&its_cgroup), sandbox) {
            (Some(pod), true) => cgroup::remove_pod(pod),
            (Some(pod), false) => self.resize_pod(pod),
            (None, _) => {}
        }
        log!("deleted container {cid}");
        Ok(())
    }

    pub fn pause(&self, id: &str, pause: bool) -> Outcome<()> {
        self.table().container(id)?;
        let mut container = LcContainer::load(Path::new(STATE_ROOT).join(id))
            .map_err(|e| lc_error(format!("loading container {id}"), &e))?;
        let done = if pause {
            container.pause()
        } else {
            container.resume()
        };
        done.map_err(|e| {
            use libcontainer::error::LibcontainerError;
            match e {
                LibcontainerError::IncorrectStatus(s) => fail(
                    code::FAILED_PRECONDITION,
                    format!("container {id} is {s:?}"),
                ),
                e => lc_error(format!("pausing/resuming container {id}"), &e),
            }
        })
    }

    /// A process the agent reaped. A container's or exec's: once its
    /// output has drained (at most [`DRAIN`]), `Exited` goes to the host.
    pub fn on_exit(self: &Arc<Self>, pid: i32, status: u32) {
        let found = {
            let mut table = self.table();
            let Some((cid, eid)) = table.pids.remove(&pid) else {
                return;
            };
            let Some(c) = table.containers.get_mut(&cid) else {
                return;
            };
            let cgroup = c.cgroup.clone();
            let p = if eid.is_empty() {
                Some(&mut c.init)
            } else {
                c.execs.get_mut(&eid)
            };
            p.map(|p| {
                p.exit = Some(status);
                (cid, eid, Arc::clone(&p.io.streams), cgroup)
            })
        };
        let Some((cid, eid, streams, cgroup)) = found else {
            return;
        };
        if eid.is_empty() {
            // What the init leaves behind goes with it, as containerd's runc
            // shim does for a container in its pod's PID namespace (in one
            // of its own, the kernel already killed them): a child holding
            // the container's stdout would otherwise keep it open.
            for pid in cgroup::procs(&cgroup::dir(&cgroup)) {
                // SAFETY: kill(2) with a pid and a signal number.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let agent = Arc::clone(self);
        std::thread::spawn(move || {
            streams.wait(DRAIN);
            let kills = if eid.is_empty() {
                cgroup::oom_kills(&cgroup::dir(&cgroup))
            } else {
                0
            };
            // An OOM kill that ended the container is reported before its
            // exit, even if the once-a-second check has not seen it yet.
            let unreported = {
                let mut table = agent.table();
                match table.containers.get_mut(&cid) {
                    Some(c) if kills > c.oom_seen => {
                        c.oom_seen = kills;
                        true
                    }
                    _ => false,
                }
            };
            if unreported {
                agent.channel.event(event::Kind::Oom(Oom {
                    container_id: cid.clone(),
                }));
            }
            let oom_killed = kills > 0;
            agent.channel.event(event::Kind::Exited(Exited {
                container_id: cid,
                exec_id: eid,
                pid: pid as u32,
                status,
                oom_killed,
            }));
        });
    }

    /// Sends an `Oom` event for each new `oom_kill` in a running
    /// container's cgroup; called about once a second.
    pub fn check_oom(&self) {
        let mut events = Vec::new();
        {
            let mut table = self.table();
            for (id, c) in table.containers.iter_mut() {
                if !c.started || c.cgroup.is_empty() {
                    continue;
                }
                let kills = cgroup::oom_kills(&cgroup::dir(&c.cgroup));
                if kills > c.oom_seen {
                    c.oom_seen = kills;
                    events.push(id.clone());
                }
            }
        }
        for container_id in events {
            self.channel.event(event::Kind::Oom(Oom { container_id }));
        }
    }
}

/// Undoes what a libcontainer build changes in the calling process: it
/// writes the container's `oom_score_adj` to `/proc/self` (the whole agent)
/// and makes the process non-dumpable.
fn restore_own_state() {
    if fs::read_to_string("/proc/self/oom_score_adj").is_ok_and(|v| v.trim() != "0") {
        if let Err(e) = fs::write("/proc/self/oom_score_adj", "0") {
            log!("restoring the agent's oom_score_adj: {e}");
        }
    }
    // SAFETY: PR_SET_DUMPABLE takes 0 or 1.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
}

/// The pod's shm: a tmpfs of 64 MiB (containerd's and Docker's default).
fn make_shm(dir: &Path) -> Outcome<()> {
    fs::create_dir_all(dir).map_err(|e| internal(dir.display(), e))?;
    mount(
        Some("shm"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| internal(format!("mounting the pod's shm at {}", dir.display()), e))
}

fn remove_shm(dir: &Path) {
    let _ = umount2(dir, MntFlags::MNT_DETACH);
    let _ = fs::remove_dir(dir);
}

/// libcontainer leaves a `tenant-notify-*`/`tenant-tty-*` socket per exec
/// in the container's state dir; the build is done with them once it
/// returns (and builds are serialised).
fn remove_tenant_sockets(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tenant-notify-") || name.starts_with("tenant-tty-") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_become_paths() {
        for ok in ["c1", "a-b_c.d", &"f".repeat(64)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a b", ".hidden"] {
            let e = check_id(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_ARGUMENT, "{bad}");
        }
    }
}
