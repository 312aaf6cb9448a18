//! One shim under test and the pod it runs: `start` the way containerd 1.6
//! runs it, a pause sandbox, busybox containers joining its namespaces, and
//! a teardown that checks nothing is left running.

use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use caisson_sandbox::host::pod_view::{roots_env, ROOTS_ENV};
use caisson_tests::bundle::Bundle;

use super::procfs::{self, Memory, CGROUP_PARENT};
use super::task_api::{EventsServer, TaskApi};
use super::Result;

/// The containerd namespace of every task.
pub const NAMESPACE: &str = "caisson-bench";
/// `-address`: containerd's gRPC socket. Nothing listens there; runc's shim
/// hashes it into its socket name and Caisson's ignores it.
pub const CONTAINERD_ADDRESS: &str = "/run/none.sock";
/// `-publish-binary`, as containerd 1.6 passes it (unused by both shims,
/// which publish over `TTRPC_ADDRESS`).
pub const PUBLISH_BINARY: &str = "/usr/bin/containerd";
/// How long a shim or a pause may take to exit once told to.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// Which shim: they differ only in where their logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Logs to `$CAISSON_SHIM_RUN_DIR/log/<hash>.log`.
    Caisson,
    /// Logs to the `log` fifo in its first bundle, which containerd creates
    /// and reads; the shim fails to start without it.
    Runc,
}

/// A shim binary with its own work dir and events server.
pub struct Shim {
    pub name: &'static str,
    pub flavor: Flavor,
    pub binary: PathBuf,
    work: PathBuf,
    events: EventsServer,
    /// Where its pods' dirs go (the [`super::node::Node`]'s).
    pods: PathBuf,
    /// `CAISSON_POD_MOUNT_ROOTS`, as caissond sets it: its builds see
    /// their pod's view of the node's mounts. None: every pod's.
    view_roots: Option<Vec<PathBuf>>,
}

impl Shim {
    pub fn new(
        name: &'static str,
        flavor: Flavor,
        binary: PathBuf,
        base: &Path,
        pods: &Path,
        view_roots: Option<Vec<PathBuf>>,
    ) -> Result<Shim> {
        let work = base.join(name);
        fs::create_dir_all(&work)?;
        let events = EventsServer::serve(&work.join("events.sock"))?;
        Ok(Shim {
            name,
            flavor,
            binary,
            work,
            events,
            pods: pods.to_path_buf(),
            view_roots,
        })
    }

    fn run_dir(&self) -> PathBuf {
        self.work.join("run")
    }

    fn log_path(&self) -> PathBuf {
        self.work.join("shim.log")
    }

    pub fn events_forwarded(&self) -> usize {
        self.events.count()
    }

    /// The `start` command line, as containerd 1.6 runs it (plus
    /// `CAISSON_SHIM_RUN_DIR`, which runc's shim ignores).
    pub fn start_command(&self, id: &str, bundle: &Path) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "-namespace",
            NAMESPACE,
            "-address",
            CONTAINERD_ADDRESS,
            "-publish-binary",
            PUBLISH_BINARY,
            "-id",
            id,
            "start",
        ])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", &self.events.address)
        .env("GOMAXPROCS", "2")
        .env("CAISSON_SHIM_RUN_DIR", self.run_dir())
        .stdin(Stdio::null());
        if let Some(roots) = &self.view_roots {
            cmd.env(ROOTS_ENV, roots_env(roots));
        }
        cmd
    }

    /// Runs `start` for the task `id` in `bundle`: the address it printed.
    pub fn start(&self, id: &str, bundle: &Path) -> Result<String> {
        let out = self
            .start_command(id, bundle)
            .output()
            .map_err(|e| format!("running {}: {e}", self.binary.display()))?;
        let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || !address.starts_with("unix://") {
            return Err(self.with_log(format!(
                "{} start for {id} failed ({}): stdout {address:?}, stderr {:?}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(address)
    }

    /// `message` followed by the end of the shim's log.
    fn with_log(&self, message: String) -> Box<dyn std::error::Error> {
        let mut log = String::new();
        match self.flavor {
            Flavor::Runc => log = fs::read_to_string(self.log_path()).unwrap_or_default(),
            Flavor::Caisson => {
                for entry in fs::read_dir(self.run_dir().join("log"))
                    .into_iter()
                    .flatten()
                {
                    log += &fs::read_to_string(entry.map(|e| e.path()).unwrap_or_default())
                        .unwrap_or_default();
                }
            }
        }
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
        if tail.is_empty() {
            message.into()
        } else {
            format!("{message}\n{} shim log ends with:\n  {tail}", self.name).into()
        }
    }
}

/// Copies what runc's shim writes to its `log` fifo into `shim.log`, as
/// containerd does, until the shim closes it.
struct LogDrain {
    /// Our own write end, so the reader sees no EOF before the shim opens it.
    writer: Option<fs::File>,
    thread: Option<JoinHandle<()>>,
}

impl LogDrain {
    fn start(fifo: &Path, out: PathBuf) -> Result<LogDrain> {
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
        // SAFETY: a valid C string and a mode.
        if unsafe { libc::mkfifo(c_path.as_ptr(), 0o700) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(format!("mkfifo {}: {err}", fifo.display()).into());
        }
        let mut reader = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)?;
        let writer = fs::OpenOptions::new().write(true).open(fifo)?;
        // Back to blocking reads now that a writer exists.
        {
            use std::os::fd::AsRawFd;
            let fd = reader.as_raw_fd();
            // SAFETY: fcntl on an fd we own.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        let thread = std::thread::Builder::new()
            .name("runc-shim-log".into())
            .spawn(move || {
                let Ok(mut file) = fs::File::create(out) else {
                    return;
                };
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    let _ = std::io::Write::write_all(&mut file, &buf[..n]);
                }
            })?;
        Ok(LogDrain {
            writer: Some(writer),
            thread: Some(thread),
        })
    }

    /// Once the shim has exited: the copy reaches EOF and ends.
    fn finish(&mut self) {
        self.writer = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A running container and the connection that created it.
pub struct Container {
    pub id: String,
    pub pid: u32,
    api: TaskApi,
}

/// Time of one container's create+start.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The `start` subcommand (process spawn to exit).
    pub start_cmd: Duration,
    /// Connect + `Create` + `Start` over ttrpc.
    pub rpcs: Duration,
    pub total: Duration,
}

/// What a pod's teardown found.
#[derive(Debug, Clone, Copy)]
pub struct Teardown {
    /// From `Shutdown` to the shim process gone.
    pub shim_exit: Duration,
}

/// A pod: the shim serving it, its pause sandbox and live containers.
pub struct Pod<'a> {
    pub shim: &'a Shim,
    pub id: String,
    pub address: String,
    api: TaskApi,
    pub shim_pid: u32,
    pub pause_pid: u32,
    /// Tasks created and not yet deleted, the sandbox first.
    live: Vec<String>,
    containers_made: usize,
    log: Option<LogDrain>,
    closed: bool,
}

/// A bundle's `cgroupsPath`.
fn cgroups_path(id: &str) -> String {
    format!("/{CGROUP_PARENT}/{id}")
}

impl<'a> Pod<'a> {
    /// Starts the shim for a pause sandbox and creates and starts it.
    pub fn start(shim: &'a Shim) -> Result<Pod<'a>> {
        let id = format!("{}-pod-{}", shim.name, std::process::id());
        let dir = shim.pods.join(&id).join("bundle");
        let mut bundle = crate::fixture("building the pause bundle", || Bundle::pause(&dir))?;
        bundle = bundle.as_sandbox(&id);
        bundle.cgroups_path(&cgroups_path(&id));
        bundle.write();
        let log = match shim.flavor {
            Flavor::Runc => Some(LogDrain::start(&dir.join("log"), shim.log_path())?),
            Flavor::Caisson => None,
        };
        let address = shim.start(&id, &dir)?;
        let api = TaskApi::connect(&address)?;
        let mut pod = Pod {
            shim,
            id: id.clone(),
            address,
            api,
            shim_pid: 0,
            pause_pid: 0,
            live: Vec::new(),
            containers_made: 0,
            log,
            closed: false,
        };
        pod.shim_pid = pod.api.shim_pid(&id)?;
        pod.live.push(id.clone());
        pod.pause_pid = pod
            .api
            .create(&id, &dir)
            .map_err(|e| shim.with_log(e.to_string()))?;
        pod.api.start(&id)?;
        Ok(pod)
    }

    /// Writes the next container's bundle (busybox `sleep 1000` in the
    /// pod's uts, ipc and network namespaces); returns its id and dir.
    pub fn container_bundle(&mut self) -> Result<(String, PathBuf)> {
        self.containers_made += 1;
        let id = format!("{}-c{}", self.id, self.containers_made);
        let dir = self.shim.pods.join(&self.id).join("containers").join(&id);
        let mut bundle = crate::fixture("building the busybox bundle", || {
            Bundle::busybox(&dir, &["sleep", "1000"])
        })?;
        bundle = bundle.in_sandbox(&self.id);
        for (kind, file) in [("uts", "uts"), ("ipc", "ipc"), ("network", "net")] {
            let path = format!("/proc/{}/ns/{file}", self.pause_pid);
            bundle.namespace(kind, Some(&path));
        }
        bundle.cgroups_path(&cgroups_path(&id));
        bundle.write();
        Ok((id, dir))
    }

    /// The timed part: `start` (which must return this pod's address), a
    /// new connection to it, `Create` and `Start`.
    pub fn start_container(&mut self, id: &str, dir: &Path) -> Result<(Container, Timing)> {
        let t0 = Instant::now();
        let address = self.shim.start(id, dir)?;
        let t1 = Instant::now();
        if address != self.address {
            return Err(format!(
                "{} start for container {id} returned {address}, not its pod's {}",
                self.shim.name, self.address
            )
            .into());
        }
        let api = TaskApi::connect(&address)?;
        self.live.push(id.to_string());
        let pid = api
            .create(id, dir)
            .map_err(|e| self.shim.with_log(e.to_string()))?;
        api.start(id)?;
        let t2 = Instant::now();
        procfs::check_shares_namespaces(pid, self.pause_pid, &["uts", "ipc", "net"])
            .map_err(|e| format!("{} container {id}: {e}", self.shim.name))?;
        let timing = Timing {
            start_cmd: t1 - t0,
            rpcs: t2 - t1,
            total: t2 - t0,
        };
        let container = Container {
            id: id.to_string(),
            pid,
            api,
        };
        Ok((container, timing))
    }

    /// Kill SIGKILL, Wait, Delete.
    pub fn stop_container(&mut self, container: Container) -> Result<()> {
        container.api.kill_wait_delete(&container.id)?;
        self.live.retain(|id| *id != container.id);
        procfs::wait_exit(container.pid, EXIT_DEADLINE)
    }

    /// The cgroup hierarchies a container was placed in, under its
    /// `cgroupsPath`.
    pub fn container_hierarchies(&self, container: &Container) -> Result<Vec<String>> {
        procfs::hierarchies_in(container.pid, &cgroups_path(&container.id))
    }

    /// Memory of the shim and of the pause process.
    pub fn memory(&self) -> Result<(Memory, Memory)> {
        Ok((Memory::of(self.shim_pid)?, Memory::of(self.pause_pid)?))
    }

    /// Deletes every task, shuts the shim down and checks that it, the
    /// pause and the shim's socket are gone.
    pub fn close(mut self) -> Result<Teardown> {
        self.closed = true;
        while let Some(id) = self.live.pop() {
            self.api.kill_wait_delete(&id)?;
        }
        procfs::wait_exit(self.pause_pid, EXIT_DEADLINE)?;
        let t0 = Instant::now();
        self.api.shutdown(&self.id);
        procfs::wait_exit(self.shim_pid, EXIT_DEADLINE)
            .map_err(|e| format!("{} shim after Shutdown: {e}", self.shim.name))?;
        let shim_exit = t0.elapsed();
        if let Some(log) = &mut self.log {
            log.finish();
        }
        let socket = Path::new(self.address.trim_start_matches("unix://"));
        if socket.exists() {
            return Err(format!(
                "{} shim exited but left its socket {}",
                self.shim.name,
                socket.display()
            )
            .into());
        }
        Ok(Teardown { shim_exit })
    }
}

impl Drop for Pod<'_> {
    /// After an error: best effort, so no container or shim outlives the bench.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        while let Some(id) = self.live.pop() {
            let _ = self.api.kill_wait_delete(&id);
        }
        self.api.shutdown(&self.id);
        if self.shim_pid != 0
            && procfs::wait_exit(self.shim_pid, EXIT_DEADLINE).is_err()
            && procfs::alive(self.shim_pid)
        {
            // SAFETY: kill on the pid of the shim this bench started.
            unsafe { libc::kill(self.shim_pid as libc::pid_t, libc::SIGKILL) };
        }
        if let Some(log) = &mut self.log {
            if self.shim_pid != 0 && !procfs::alive(self.shim_pid) {
                log.finish();
            }
        }
    }
}
