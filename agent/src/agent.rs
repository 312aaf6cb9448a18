//! The agent's state (its containers and their processes) and the thin
//! request handlers: each finds what the request names and calls one
//! function of [`crate::lifecycle`], [`crate::cgroup`] or [`crate::stdio`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use caisson_agent_proto::{code, request::Op, response, GuestStatus, Pids, ProcessInfo, Response};

use crate::cgroup;
use crate::channel::Channel;
use crate::stdio::ProcessIo;

/// The agent's version, sent in `Ready` and `GuestStatus`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A failed request: a `code::*` and why.
#[derive(Debug)]
pub struct Failure {
    pub code: u32,
    pub message: String,
}

pub type Outcome<T> = Result<T, Failure>;

pub fn fail(code: u32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

pub fn internal(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Failure {
    fail(code::INTERNAL, format!("{what}: {e}"))
}

pub struct Agent {
    pub channel: Arc<Channel>,
    /// Held across every libcontainer build/start/delete and by the reaper
    /// around each `waitpid(-1)` sweep: libcontainer waits for its own
    /// intermediate processes by pid, and a concurrent sweep would take
    /// their statuses.
    pub fork_guard: Mutex<()>,
    pub table: Mutex<Table>,
    /// Numbers console sockets and exec process files.
    pub serial: AtomicU64,
    /// PortForward's connections.
    pub ports: crate::port::Ports,
}

#[derive(Default)]
pub struct Table {
    pub containers: HashMap<String, Container>,
    /// Every live process the agent started: pid → (container, exec id).
    pub pids: HashMap<i32, (String, String)>,
}

pub struct Container {
    pub sandbox: bool,
    /// Its cgroup, relative to the cgroup2 root.
    pub cgroup: String,
    pub bundle: PathBuf,
    pub started: bool,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// `oom_kill` already reported as `Oom` events.
    pub oom_seen: u64,
}

pub struct Process {
    pub pid: i32,
    pub io: Arc<ProcessIo>,
    /// Its exit status once it exited (code, or 128 + signal).
    pub exit: Option<u32>,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Option<&Process> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }
}

impl Table {
    pub fn container(&self, id: &str) -> Outcome<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| fail(code::NOT_FOUND, format!("container {id} not found")))
    }

    pub fn process(&self, container_id: &str, exec_id: &str) -> Outcome<&Process> {
        self.container(container_id)?
            .process(exec_id)
            .ok_or_else(|| {
                fail(
                    code::NOT_FOUND,
                    format!("exec {exec_id} of container {container_id} not found"),
                )
            })
    }
}

impl Agent {
    pub fn new(channel: Arc<Channel>) -> Agent {
        Agent {
            channel,
            fork_guard: Mutex::new(()),
            table: Mutex::new(Table::default()),
            serial: AtomicU64::new(0),
            ports: Default::default(),
        }
    }

    pub fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fork_guard(&self) -> MutexGuard<'_, ()> {
        self.fork_guard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves one request (all but the one-way `WriteStdin`).
    pub fn handle(&self, op: Op) -> Response {
        let outcome = match op {
            Op::CreateContainer(r) => self.create_container(r).map(started),
            Op::StartContainer(r) => self.start_container(&r.container_id).map(started),
            Op::ExecProcess(r) => self.exec_process(r).map(started),
            Op::SignalProcess(r) => self
                .signal_process(&r.container_id, &r.exec_id, r.signal, r.all)
                .map(|()| Response::ok()),
            Op::DeleteProcess(r) => self
                .delete_process(&r.container_id, &r.exec_id)
                .map(|()| Response::ok()),
            Op::WriteStdin(r) => {
                self.write_stdin(&r.container_id, &r.exec_id, r.data);
                Ok(Response::ok())
            }
            Op::CloseStdin(r) => self
                .close_stdin(&r.container_id, &r.exec_id)
                .map(|()| Response::ok()),
            Op::ResizePty(r) => self
                .resize_pty(&r.container_id, &r.exec_id, r.width, r.height)
                .map(|()| Response::ok()),
            Op::GetStats(r) => self
                .stats(&r.container_id)
                .map(|s| with(response::Result::Stats(s))),
            Op::UpdateResources(r) => self
                .update_resources(&r.container_id, &r.resources_json)
                .map(|()| Response::ok()),
            Op::GetStatus(_) => Ok(with(response::Result::Status(self.status()))),
            Op::ListPids(r) => self
                .list_pids(&r.container_id)
                .map(|p| with(response::Result::Pids(p))),
            Op::PauseContainer(r) => self.pause(&r.container_id, true).map(|()| Response::ok()),
            Op::ResumeContainer(r) => self.pause(&r.container_id, false).map(|()| Response::ok()),
            Op::ConfigureNetwork(r) => self.configure_network(r).map(|()| Response::ok()),
            Op::OpenPort(r) => self.open_port(&r).map(|()| Response::ok()),
            Op::PortData(r) => {
                self.ports.data(r);
                Ok(Response::ok())
            }
            Op::ClosePort(r) => {
                self.ports.close(r.stream_id);
                Ok(Response::ok())
            }
            // Answered by the server itself (it powers the guest off).
            Op::Shutdown(_) => Ok(Response::ok()),
        };
        outcome.unwrap_or_else(|f| Response::error(f.code, f.message))
    }

    /// Gives the created (not yet started) sandbox the pod's network.
    fn configure_network(&self, request: caisson_agent_proto::ConfigureNetwork) -> Outcome<()> {
        let pid = self.table().container(&request.sandbox_id)?.init.pid;
        crate::network::configure(request, pid)
    }

    /// PortForward: a connection to the port in the sandbox's namespace.
    fn open_port(&self, request: &caisson_agent_proto::OpenPort) -> Outcome<()> {
        let pid = self.table().container(&request.sandbox_id)?.init.pid;
        self.ports.connect(&self.channel, request, pid)
    }

    pub fn write_stdin(&self, container_id: &str, exec_id: &str, data: Vec<u8>) {
        let table = self.table();
        if let Ok(p) = table.process(container_id, exec_id) {
            if let Some(tx) =
                p.io.stdin
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
            {
                let _ = tx.send(data);
            }
        }
    }

    pub fn close_stdin(&self, container_id: &str, exec_id: &str) -> Outcome<()> {
        let table = self.table();
        let p = table.process(container_id, exec_id)?;
        // The feeding thread writes what is queued, then closes the pipe.
        p.io.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }

    fn resize_pty(
        &self,
        container_id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Outcome<()> {
        let pty = {
            let table = self.table();
            table.process(container_id, exec_id)?.io.pty.clone()
        };
        let pty = pty.ok_or_else(|| {
            fail(
                code::FAILED_PRECONDITION,
                format!("process {container_id}/{exec_id} has no terminal"),
            )
        })?;
        crate::stdio::resize(&pty, width, height).map_err(|e| internal("TIOCSWINSZ", e))
    }

    fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Outcome<()> {
        if signal == 0 || signal > 64 {
            return Err(fail(
                code::INVALID_ARGUMENT,
                format!("signal: {signal} is not a signal number"),
            ));
        }
        let pids = {
            let table = self.table();
            let c = table.container(container_id)?;
            if all {
                cgroup::procs(&cgroup::dir(&c.cgroup))
            } else {
                let p = table.process(container_id, exec_id)?;
                if p.exit.is_some() {
                    return Err(fail(
                        code::NOT_FOUND,
                        format!("process {container_id}/{exec_id} has exited"),
                    ));
                }
                vec![p.pid]
            }
        };
        for pid in pids {
            // SAFETY: kill(2) with a pid and a signal number.
            if unsafe { libc::kill(pid, signal as i32) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(internal(format!("signal {signal} to pid {pid}"), e));
                }
            }
        }
        Ok(())
    }

    fn cgroup_of(&self, container_id: &str) -> Outcome<String> {
        Ok(self.table().container(container_id)?.cgroup.clone())
    }

    fn stats(&self, container_id: &str) -> Outcome<caisson_agent_proto::Stats> {
        let path = self.cgroup_of(container_id)?;
        Ok(cgroup::stats(&cgroup::dir(&path)))
    }

    fn update_resources(&self, container_id: &str, json: &[u8]) -> Outcome<()> {
        let path = self.cgroup_of(container_id)?;
        cgroup::update(&path, container_id, json).map_err(|e| {
            let code = if e.starts_with("resources_json") {
                code::INVALID_ARGUMENT
            } else {
                code::INTERNAL
            };
            fail(code, e)
        })?;
        // The pod's sums follow the container's new limits.
        if let Some(pod) = cgroup::pod_of(&path) {
            self.resize_pod(pod);
        }
        Ok(())
    }

    fn list_pids(&self, container_id: &str) -> Outcome<Pids> {
        let table = self.table();
        let c = table.container(container_id)?;
        let processes = cgroup::procs(&cgroup::dir(&c.cgroup))
            .into_iter()
            .map(|pid| ProcessInfo {
                pid: pid as u32,
                exec_id: c
                    .execs
                    .iter()
                    .find(|(_, p)| p.pid == pid && p.exit.is_none())
                    .map(|(id, _)| id.clone())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Pids { processes })
    }

    fn status(&self) -> GuestStatus {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        GuestStatus {
            agent_version: VERSION.into(),
            kernel_release: kernel_release(),
            uptime_ms: crate::log::boot_ms(),
            memory_total_bytes: kib("MemTotal:"),
            memory_available_bytes: kib("MemAvailable:"),
            containers: self.table().containers.len() as u32,
        }
    }
}

fn started(pid: i32) -> Response {
    with(response::Result::Started(
        caisson_agent_proto::ProcessStarted { pid: pid as u32 },
    ))
}

fn with(result: response::Result) -> Response {
    Response {
        result: Some(result),
        ..Response::ok()
    }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}
