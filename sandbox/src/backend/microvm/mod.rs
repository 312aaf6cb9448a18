//! The `microvm` backend: each pod in its own QEMU virtual machine, its
//! containers made inside the guest by `caisson-agent` (Kata-style).
//!
//! * **Sandbox create** boots the VM ([`vmm`]), waits for the agent's
//!   `Ready` on the virtio-serial channel ([`agent`]), shares the pause
//!   container's rootfs into the guest ([`share`]) and has the agent create
//!   it. QEMU runs in the sandbox's cgroup on the host, so the pod's limits
//!   (and QoS tier) hold the whole VM.
//! * **Containers** are created, started, signalled, exec'd into and
//!   deleted by the agent from the same OCI spec the native backend gets,
//!   with host paths rewritten to the share. A task's pid is the guest's.
//! * **stdio**: the host ends are opened by the same code as native's
//!   (`host::stdio`: FIFOs, `file://`, CRI log files); the agent streams the
//!   output as `Output` events written to those ends, and the host feeds
//!   stdin back as `WriteStdin`. Every output of a process arrives before
//!   its `Exited`, so a log is complete when the exit is reported.
//! * **The VM dies** (QEMU killed or crashed): every process not yet exited
//!   is reported exited with 137, the share is unmounted and the VM's
//!   sockets removed; the sandbox's delete then removes its host cgroup.
//!   A killed shim takes QEMU with it (parent-death signal).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use caisson_agent_proto::{self as proto, code, event, request};
use oci_spec::runtime::{LinuxResources, Spec};
use sha2::{Digest, Sha256};

use crate::backend::{
    failed, locked, not_found, Backend, BackendError, ExecSpec, Exit, ExitSink, ProcessInfo,
    Result, Stdio, TaskKind, TaskSpec, TaskStats,
};
use crate::host::pidfd::Pidfd;
use crate::host::reaper::{Reaped, Reaper};
use crate::host::stdio::{open_stdio, HeldStdio, TerminalStdio};

pub mod agent;
pub mod network;
pub mod port_forward;
pub mod share;
pub mod sizing;
pub mod vmm;

use agent::{AgentConn, CallError};
use share::Share;
use vmm::{Accelerator, Qemu, VmConfig, Vmm};

const NAME: &str = "microvm";
/// How long one agent request may take (a create under TCG takes a while).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The shared filesystem between host and guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedFs {
    #[serde(rename = "9p")]
    NineP,
    Virtiofs,
}

/// The handler's options (as JSON in `CAISSON_BACKEND_OPTIONS`). Unknown
/// keys are ignored, as the other backends do: under containerd one
/// environment serves every shim, so it may hold another backend's options.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct MicrovmOptions {
    pub qemu_path: PathBuf,
    /// An uncompressed guest kernel (vmlinux): by default Caisson's minimal
    /// one; `make microvm-guest` installs Debian's as `vmlinux-debian`.
    pub kernel: PathBuf,
    /// The initramfs with `caisson-agent` as `/init`.
    pub initramfs: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accelerator: Accelerator,
    /// QEMU machine type (`q35`; `microvm` where it boots reliably).
    pub machine: String,
    pub shared_fs: SharedFs,
    /// Added to the kernel command line.
    pub kernel_args: String,
    /// How long the guest has to boot and its agent to answer.
    pub boot_timeout_secs: u64,
}

impl Default for MicrovmOptions {
    fn default() -> Self {
        MicrovmOptions {
            qemu_path: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            kernel: PathBuf::from("/var/lib/caisson/microvm/vmlinux"),
            initramfs: PathBuf::from("/var/lib/caisson/microvm/initramfs.cpio"),
            vcpus: 1,
            memory_mib: 512,
            accelerator: Accelerator::Auto,
            machine: "q35".into(),
            shared_fs: SharedFs::NineP,
            kernel_args: String::new(),
            boot_timeout_secs: 90,
        }
    }
}

/// The kernel command line every guest gets. `noreplace-smp tsc=reliable
/// no_timer_check`: no SMP alternatives patching, no clocksource watchdog,
/// no IO-APIC timer check (measured in bench/README.md, "microvm guest
/// kernel and boot options").
const BASE_KERNEL_ARGS: &str =
    "console=ttyS0 panic=-1 reboot=t quiet noreplace-smp tsc=reliable no_timer_check";

/// An agent error as the backend's own.
fn from_call(op: &'static str, id: &str, e: CallError) -> BackendError {
    match e {
        CallError::Agent { code: c, message } => match c {
            code::NOT_FOUND => not_found(id),
            code::ALREADY_EXISTS => BackendError::AlreadyExists {
                what: "task",
                id: id.to_string(),
            },
            code::INVALID_ARGUMENT => BackendError::InvalidArgument {
                what: op.to_string(),
                reason: message,
            },
            code::FAILED_PRECONDITION => BackendError::InvalidState {
                id: id.to_string(),
                state: message,
                op,
            },
            code::UNIMPLEMENTED => BackendError::Unsupported { op, backend: NAME },
            _ => failed(op, id, format!("in the guest: {message}")),
        },
        CallError::Channel(why) => failed(op, id, format!("the pod's VM: {why}")),
    }
}

/// Where one output stream of a process goes: a thread writes it, so a
/// reader that stops reading (a FIFO whose client went away) stalls only
/// this stream, never the agent channel that every task of the pod shares.
/// Past [`OUTPUT_QUEUE`] chunks waiting, output is dropped (with a warning).
struct OutputSink {
    /// None once the stream ended.
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    /// Disconnected once everything queued is written and the file closed.
    done: mpsc::Receiver<()>,
    dropped: bool,
}

/// Chunks (up to 64 KiB each, as the agent sends them) a stream may queue.
const OUTPUT_QUEUE: usize = 64;

impl OutputSink {
    fn spawn(file: File) -> std::io::Result<OutputSink> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(OUTPUT_QUEUE);
        let (done_tx, done) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("vm-output".into())
            .spawn(move || {
                let _done = done_tx;
                let mut file = file;
                for chunk in rx {
                    if file.write_all(&chunk).is_err() {
                        break;
                    }
                }
            })?;
        Ok(OutputSink {
            tx: Some(tx),
            done,
            dropped: false,
        })
    }

    /// Queues a chunk without blocking.
    fn send(&mut self, data: Vec<u8>, id: &str) {
        let Some(tx) = &self.tx else { return };
        if let Err(mpsc::TrySendError::Full(_)) = tx.try_send(data) {
            if !self.dropped {
                tracing::warn!(id, "a process's output is not being read: dropping it");
                self.dropped = true;
            }
        }
    }

    /// Ends the stream and waits (up to `wait`) until what was queued is
    /// written.
    fn finish(mut self, wait: Duration) {
        self.tx = None;
        let _ = self.done.recv_timeout(wait);
    }
}

/// The host side of one process in the guest.
struct Proc {
    pid: u32,
    /// Where its output goes (ended at its end of stream).
    stdout: Option<OutputSink>,
    stderr: Option<OutputSink>,
    /// Streams that ended, still writing what they queued.
    ended_streams: Vec<OutputSink>,
    held: HeldStdio,
    /// A terminal's host end (shut down when the process ends, which ends
    /// its pumps).
    terminal: Option<UnixStream>,
    exited: bool,
}

impl Proc {
    /// The process ended: no more output. What is queued is still
    /// written; then a terminal's host end is shut (its pumps stop).
    fn end(&mut self) -> Ended {
        self.exited = true;
        Ended {
            sinks: std::mem::take(&mut self.ended_streams)
                .into_iter()
                .chain(self.stdout.take())
                .chain(self.stderr.take())
                .collect(),
            terminal: self.terminal.take(),
        }
    }
}

/// What is left of a process that ended: its output streams, still
/// writing, and its terminal's host end.
struct Ended {
    sinks: Vec<OutputSink>,
    terminal: Option<UnixStream>,
}

impl Ended {
    /// Waits (up to `wait` per stream) for the output, then shuts the
    /// terminal.
    fn finish(self, wait: Duration) {
        for sink in self.sinks {
            sink.finish(wait);
        }
        if let Some(t) = self.terminal {
            let _ = t.shutdown(std::net::Shutdown::Both);
        }
    }
}

struct Task {
    kind: TaskKind,
    bundle: PathBuf,
    init: Proc,
    /// Registered execs, and those started.
    execs: HashMap<String, ExecSpec>,
    running_execs: HashMap<String, Proc>,
}

/// The pod's VM.
struct Vm {
    config: VmConfig,
    dir: PathBuf,
    conn: Arc<AgentConn>,
    share: Share,
    qemu: Arc<Pidfd>,
    /// Receives QEMU's exit (once).
    exited_rx: Mutex<Option<mpsc::Receiver<Reaped>>>,
    /// The sandbox's cgroup on the host, holding QEMU.
    host_cgroup: Option<PathBuf>,
    sandbox_id: String,
}

#[derive(Default)]
struct State {
    vm: Option<Arc<Vm>>,
    /// Set when the VM died: why.
    vm_gone: Option<String>,
    /// Set once the host side of a gone VM is cleaned up.
    vm_cleaned: bool,
    tasks: HashMap<String, Task>,
    /// The pod's port-forward socket, once its sandbox exists.
    forwarder: Option<Arc<port_forward::Forwarder>>,
}

/// The `microvm` backend. One per shim (one pod, one VM).
pub struct MicrovmBackend {
    options: MicrovmOptions,
    state_root: PathBuf,
    vmm: Arc<dyn Vmm>,
    reaper: &'static Reaper,
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    exits: ExitSink,
}

impl MicrovmBackend {
    pub fn new(state_root: PathBuf, exits: ExitSink, options: MicrovmOptions) -> Result<Self> {
        if options.shared_fs != SharedFs::NineP {
            return Err(BackendError::InvalidArgument {
                what: "shared_fs".into(),
                reason: "only \"9p\" is implemented (virtiofs is not yet)".into(),
            });
        }
        // The devices are PCI ones (virtio-serial-pci, virtio-9p-pci): the
        // `microvm` machine, which has no PCI bus, would need their MMIO
        // variants and has not been made to work here.
        let machine = options.machine.split(',').next().unwrap_or_default();
        if !matches!(machine, "q35" | "pc") && !machine.starts_with("pc-") {
            return Err(BackendError::InvalidArgument {
                what: "machine".into(),
                reason: format!("{machine:?}: q35 or pc (the guest's devices are PCI)"),
            });
        }
        if options.vcpus == 0 || options.memory_mib < 64 {
            return Err(BackendError::InvalidArgument {
                what: "vcpus/memory_mib".into(),
                reason: "at least 1 vCPU and 64 MiB".into(),
            });
        }
        let reaper = Reaper::global()
            .map_err(|e| failed("start backend", NAME, format!("starting the reaper: {e}")))?;
        let vmm: Arc<dyn Vmm> = Arc::new(Qemu {
            binary: options.qemu_path.clone(),
        });
        Ok(MicrovmBackend {
            options,
            state_root,
            vmm,
            reaper,
            inner: Arc::new(Inner {
                state: Mutex::default(),
                exits,
            }),
        })
    }

    fn vm_dir(&self, sandbox_id: &str) -> PathBuf {
        vm_dir(&self.state_root, sandbox_id)
    }

    /// The shim of task `id` died (containerd or caissond runs the shim's
    /// `delete`): unmounts and removes what it shared into its VM, and for
    /// the sandbox the VM's whole directory. QEMU itself died with the shim
    /// (parent-death signal).
    pub fn force_cleanup(state_root: &Path, id: &str, bundle: &Path) {
        let sandbox_id = match crate::service::task_kind(bundle) {
            Ok(TaskKind::Container { sandbox_id }) => sandbox_id,
            _ => id.to_string(),
        };
        let dir = vm_dir(state_root, &sandbox_id);
        let share = Share::at(&dir.join("shared"));
        if sandbox_id == id {
            share.remove();
            share::remove_tree(&dir);
        } else {
            share.remove_task(id);
        }
    }

    fn vm(&self, op: &'static str, id: &str) -> Result<Arc<Vm>> {
        let state = locked(&self.inner.state);
        if let Some(why) = &state.vm_gone {
            return Err(BackendError::InvalidState {
                id: id.to_string(),
                state: format!("gone with its VM ({why})"),
                op,
            });
        }
        state.vm.clone().ok_or_else(|| BackendError::InvalidState {
            id: id.to_string(),
            state: "without a VM (the sandbox task is created first)".into(),
            op,
        })
    }

    fn call(&self, op: &'static str, id: &str, req: request::Op) -> Result<proto::Response> {
        let vm = self.vm(op, id)?;
        vm.conn
            .call(req, CALL_TIMEOUT)
            .map_err(|e| from_call(op, id, e))
    }

    fn read_spec(bundle: &Path) -> Result<Spec> {
        Spec::load(bundle.join("config.json")).map_err(|e| BackendError::InvalidArgument {
            what: "bundle".into(),
            reason: format!("{}/config.json: {e}", bundle.display()),
        })
    }

    /// Boots the pod's VM with the pod's network (its taps) and waits for
    /// its agent; returns what the agent is to make of the network.
    fn boot(&self, sandbox_id: &str, spec: &Spec) -> Result<(Arc<Vm>, proto::ConfigureNetwork)> {
        let started = Instant::now();
        let dir = self.vm_dir(sandbox_id);
        let fail = |reason: String| failed("boot VM", sandbox_id, reason);
        if dir.exists() {
            // Left by a shim that was killed: nothing in it is live.
            Share::at(&dir.join("shared")).remove();
            share::remove_tree(&dir);
        }
        let network = match network::netns_of(spec) {
            Some(netns) => {
                network::prepare(&netns).map_err(|e| fail(format!("the pod's network: {e}")))?
            }
            None => network::PodNetwork::default(),
        };
        let size = sizing::vm_size(&self.options, spec.annotations().as_ref());
        let share = Share::create(&dir.join("shared")).map_err(&fail)?;
        let console_log = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get("io.kubernetes.cri.sandbox-log-directory"))
            .filter(|d| Path::new(d).is_absolute() && Path::new(d).is_dir())
            .map(|d| Path::new(d).join("microvm-console.log"))
            .unwrap_or_else(|| dir.join("console.log"));
        let config = VmConfig {
            name: sandbox_id.chars().take(12).collect(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            kernel: self.options.kernel.clone(),
            initramfs: self.options.initramfs.clone(),
            kernel_args: format!("{BASE_KERNEL_ARGS} {}", self.options.kernel_args)
                .trim()
                .to_string(),
            machine: self.options.machine.clone(),
            accelerator: self.options.accelerator,
            agent_socket: dir.join("agent.sock"),
            qmp_socket: dir.join("qmp.sock"),
            shared_dir: share.dir().to_path_buf(),
            console_log,
            nics: network
                .nics
                .iter()
                .map(|n| vmm::VmNic {
                    tap_fd: n.tap.as_raw_fd(),
                    mac: caisson_netlink::format_mac(&n.mac),
                })
                .collect(),
        };
        let host_cgroup = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let cleanup = |share: &Share| {
            share.remove();
            share::remove_tree(&dir);
        };
        let spawned = self.spawn_qemu(&config, host_cgroup.as_deref(), sandbox_id);
        // QEMU holds the taps now (or they go, with a failed spawn).
        let network_config = network.config;
        drop(network.nics);
        let (qemu, exited_rx) = match spawned {
            Ok(x) => x,
            Err(e) => {
                cleanup(&share);
                return Err(fail(e));
            }
        };
        let (accel, reason) = self.vmm.accelerator(&config);
        tracing::info!(
            pid = qemu.pid(),
            ?accel,
            reason,
            vcpus = config.vcpus,
            memory_mib = config.memory_mib,
            nics = config.nics.len(),
            "VM started"
        );
        let weak = Arc::downgrade(&self.inner);
        let exited_cell: Mutex<Option<Reaped>> = Mutex::new(None);
        let alive = || {
            let mut cell = locked(&exited_cell);
            if cell.is_none() {
                *cell = exited_rx.try_recv().ok();
            }
            cell.is_none()
        };
        let connected = AgentConn::connect(
            &config.agent_socket,
            started + Duration::from_secs(self.options.boot_timeout_secs),
            &alive,
            Box::new(move |event| {
                if let Some(inner) = weak.upgrade() {
                    inner.on_event(event);
                }
            }),
            // The channel is the only way to the guest: once it is gone
            // (QEMU died, or a frame could not be read), the VM is stopped,
            // so that its tasks are reported exited rather than hang.
            Box::new({
                let qemu = qemu.clone();
                move |why| {
                    tracing::info!(reason = %why, "agent channel closed: stopping the VM");
                    let _ = qemu.send_signal(libc::SIGKILL);
                }
            }),
        );
        let (conn, ready) = match connected {
            Ok(x) => x,
            Err(e) => {
                let _ = qemu.send_signal(libc::SIGKILL);
                let reaped = locked(&exited_cell)
                    .take()
                    .or_else(|| exited_rx.recv_timeout(Duration::from_secs(10)).ok());
                let tail = console_tail(&config.console_log);
                cleanup(&share);
                remove_host_cgroup(sandbox_id, host_cgroup.as_deref());
                let status = reaped
                    .map(|r| format!(" (QEMU exited {})", r.code()))
                    .unwrap_or_default();
                return Err(fail(format!(
                    "{e}{status}; console ({}):\n{tail}",
                    config.console_log.display()
                )));
            }
        };
        let ready_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            kernel = %ready.kernel_release,
            guest_boot_ms = ready.boot_ms,
            ms = ready_ms,
            "agent ready"
        );
        // For operators and the bench: how long the VM took, and on what.
        let boot = serde_json::json!({
            "accelerator": format!("{accel:?}").to_lowercase(),
            "accelerator_reason": reason,
            "kernel_release": ready.kernel_release,
            "guest_boot_ms": ready.boot_ms,
            "spawn_to_ready_ms": ready_ms,
        });
        if let Err(e) = std::fs::write(dir.join("boot.json"), boot.to_string()) {
            tracing::debug!(error = %e, "writing boot.json");
        }
        let already = locked(&exited_cell).take();
        let vm = Arc::new(Vm {
            config,
            dir: dir.clone(),
            conn,
            share,
            qemu,
            exited_rx: Mutex::new(Some(exited_rx)),
            host_cgroup,
            sandbox_id: sandbox_id.to_string(),
        });
        self.watch_vm(&vm, already);
        Ok((vm, network_config))
    }

    /// Spawns QEMU from a thread that lives as long as QEMU (its
    /// parent-death signal follows that thread), in the sandbox's host
    /// cgroup.
    fn spawn_qemu(
        &self,
        config: &VmConfig,
        host_cgroup: Option<&Path>,
        sandbox_id: &str,
    ) -> std::result::Result<(Arc<Pidfd>, mpsc::Receiver<Reaped>), String> {
        let mut cmd = self.vmm.command(config)?;
        let console = File::options()
            .create(true)
            .append(true)
            .open(&config.console_log)
            .map_err(|e| format!("{}: {e}", config.console_log.display()))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(
                console
                    .try_clone()
                    .map_err(|e| format!("console log: {e}"))?,
            )
            .stderr(console);
        let reaper = self.reaper;
        let (spawned_tx, spawned_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel();
        let (gone_tx, gone_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("vm-parent".into())
            .spawn(move || {
                let spawned = {
                    let guard = reaper.lock();
                    match cmd.spawn() {
                        Ok(child) => {
                            let pid = child.id();
                            match Pidfd::open(pid) {
                                Ok(pidfd) => {
                                    guard.watch(pid, move |reaped| {
                                        let _ = exit_tx.send(reaped);
                                        let _ = gone_tx.send(());
                                    });
                                    Ok(pidfd)
                                }
                                Err(e) => Err(format!("pidfd of QEMU: {e}")),
                            }
                        }
                        Err(e) => Err(format!("spawning QEMU: {e}")),
                    }
                };
                let ok = spawned.is_ok();
                let _ = spawned_tx.send(spawned);
                if ok {
                    // Lives as long as QEMU: its death signal is tied to us.
                    let _ = gone_rx.recv();
                }
            })
            .map_err(|e| format!("starting the VM thread: {e}"))?;
        let qemu = spawned_rx
            .recv()
            .map_err(|_| "the VM thread ended".to_string())??;
        if let Some(path) = host_cgroup {
            let placed = crate::host::cgroups::manager(sandbox_id, path).and_then(|m| {
                use libcgroups::common::CgroupManager;
                m.add_task(nix029::unistd::Pid::from_raw(qemu.pid() as i32))
                    .map_err(|e| format!("cgroup {}: {e}", path.display()))
            });
            if let Err(e) = placed {
                let _ = qemu.send_signal(libc::SIGKILL);
                let _ = exit_rx.recv_timeout(Duration::from_secs(10));
                return Err(format!("placing QEMU in the pod's cgroup: {e}"));
            }
        }
        Ok((Arc::new(qemu), exit_rx))
    }

    /// Watches QEMU's exit: then every live process is reported exited.
    fn watch_vm(&self, vm: &Arc<Vm>, already: Option<Reaped>) {
        let rx = locked(&vm.exited_rx).take();
        let weak = Arc::downgrade(&self.inner);
        let vm = vm.clone();
        let _ = std::thread::Builder::new()
            .name("vm-watch".into())
            .spawn(move || {
                let reaped = match already {
                    Some(r) => Some(r),
                    None => rx.and_then(|rx| rx.recv().ok()),
                };
                let status = reaped.map(|r| r.code()).unwrap_or(255);
                if let Some(inner) = weak.upgrade() {
                    inner.on_vm_exit(&vm, status);
                }
            });
    }

    /// Opens a process's stdio on the host and, when it has a stdin, pumps
    /// it to the agent. A terminal's pty is the guest's: the host end is a
    /// socket pair standing in for its master (no second line discipline),
    /// pumped by the same code as a native terminal's.
    fn open_proc_stdio(
        &self,
        vm: &Arc<Vm>,
        id: &str,
        exec_id: &str,
        stdio: &Stdio,
    ) -> Result<(Proc, proto::StdioConfig)> {
        let invalid = |e: std::io::Error| BackendError::InvalidArgument {
            what: "stdio".into(),
            reason: e.to_string(),
        };
        let has_stdin = !stdio.stdin.is_empty();
        if stdio.terminal {
            let opened = TerminalStdio::open(stdio).map_err(invalid)?;
            let (ours, theirs) = UnixStream::pair().map_err(|e| failed("terminal", id, e))?;
            let name = format!("vm-{}", id.chars().take(12).collect::<String>());
            let held = opened
                .start(&name, OwnedFd::from(theirs))
                .map_err(|e| failed("terminal", id, e))?;
            let reader = ours.try_clone().map_err(|e| failed("terminal", id, e))?;
            let output = ours.try_clone().map_err(|e| failed("terminal", id, e))?;
            pump_stdin(vm.conn.clone(), id, exec_id, OwnedFd::from(reader));
            return Ok((
                Proc {
                    pid: 0,
                    stdout: Some(
                        OutputSink::spawn(File::from(OwnedFd::from(output)))
                            .map_err(|e| failed("terminal", id, e))?,
                    ),
                    stderr: None,
                    ended_streams: Vec::new(),
                    held,
                    terminal: Some(ours),
                    exited: false,
                },
                proto::StdioConfig {
                    stdin: true,
                    terminal: true,
                },
            ));
        }
        let (child, held) = open_stdio(stdio).map_err(invalid)?;
        if has_stdin {
            pump_stdin(vm.conn.clone(), id, exec_id, child.stdin);
        }
        Ok((
            Proc {
                pid: 0,
                stdout: Some(
                    OutputSink::spawn(File::from(child.stdout))
                        .map_err(|e| failed("stdio", id, e))?,
                ),
                stderr: Some(
                    OutputSink::spawn(File::from(child.stderr))
                        .map_err(|e| failed("stdio", id, e))?,
                ),
                ended_streams: Vec::new(),
                held,
                terminal: None,
                exited: false,
            },
            proto::StdioConfig {
                stdin: has_stdin,
                terminal: false,
            },
        ))
    }

    fn create_sandbox(&self, task: &TaskSpec, mut spec: Spec) -> Result<u32> {
        // The same refusal caissond makes, for containerd's specs: a pod
        // with the node's network has no network namespace in its spec.
        let has_netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            });
        if !has_netns {
            return Err(BackendError::InvalidArgument {
                what: "linux.namespaces".into(),
                reason: "a microvm pod cannot use the node's network namespace (hostNetwork): \
                         its network is its VM's"
                    .into(),
            });
        }
        if locked(&self.inner.state).vm.is_some() {
            return Err(BackendError::AlreadyExists {
                what: "sandbox VM",
                id: task.id.clone(),
            });
        }
        let (vm, network) = self.boot(&task.id, &spec)?;
        locked(&self.inner.state).vm = Some(vm.clone());
        let made = self
            .create_in_guest(&vm, task, &mut spec, true, "")
            .and_then(|pid| self.configure_network(&vm, &task.id, network).map(|()| pid));
        match made {
            Ok(pid) => {
                let socket = task.bundle.join(crate::service::PORT_FORWARD_SOCKET);
                match port_forward::Forwarder::listen(&socket, vm.conn.clone(), &task.id) {
                    Ok(f) => locked(&self.inner.state).forwarder = Some(f),
                    // The pod runs; only PortForward into it fails.
                    Err(e) => {
                        tracing::warn!(socket = %socket.display(), error = %e, "port-forward socket")
                    }
                }
                Ok(pid)
            }
            Err(e) => {
                let tail = console_tail(&vm.config.console_log);
                self.stop_vm(&vm);
                remove_host_cgroup(&vm.sandbox_id, vm.host_cgroup.as_deref());
                locked(&self.inner.state).vm = None;
                Err(match e {
                    BackendError::Failed { op, id, reason } => BackendError::Failed {
                        op,
                        id,
                        reason: format!("{reason}; guest console:\n{tail}"),
                    },
                    e => e,
                })
            }
        }
    }

    /// Has the agent give the created sandbox the pod's network (its
    /// loopback at least), before it starts.
    fn configure_network(
        &self,
        vm: &Arc<Vm>,
        id: &str,
        mut network: proto::ConfigureNetwork,
    ) -> Result<()> {
        network.sandbox_id = id.to_string();
        vm.conn
            .call(request::Op::ConfigureNetwork(network), CALL_TIMEOUT)
            .map(drop)
            .map_err(|e| from_call("configure network", id, e))
    }

    fn create_in_guest(
        &self,
        vm: &Arc<Vm>,
        task: &TaskSpec,
        spec: &mut Spec,
        sandbox: bool,
        sandbox_id: &str,
    ) -> Result<u32> {
        let id = task.id.as_str();
        // Host hooks cannot run in the guest.
        spec.set_hooks(None);
        vm.share
            .add_task(id, &task.bundle, spec)
            .map_err(|e| failed("create", id, e))?;
        let undo = |e: BackendError| {
            vm.share.remove_task(id);
            e
        };
        let spec_json = serde_json::to_vec(spec).map_err(|e| undo(failed("create", id, e)))?;
        let (proc, stdio) = self
            .open_proc_stdio(vm, id, "", &task.stdio)
            .map_err(undo)?;
        // Registered before the agent can report anything of it.
        locked(&self.inner.state).tasks.insert(
            id.to_string(),
            Task {
                kind: task.kind.clone(),
                bundle: task.bundle.clone(),
                init: proc,
                execs: HashMap::new(),
                running_execs: HashMap::new(),
            },
        );
        let created = vm.conn.call(
            request::Op::CreateContainer(proto::CreateContainer {
                container_id: id.to_string(),
                sandbox,
                sandbox_id: sandbox_id.to_string(),
                spec_json,
                stdio: Some(stdio),
            }),
            CALL_TIMEOUT,
        );
        let pid = match created {
            Ok(r) => started_pid(&r),
            Err(e) => {
                locked(&self.inner.state).tasks.remove(id);
                if matches!(e, CallError::Channel(_)) {
                    // No answer in time: the guest may still make it.
                    forget_in_guest(&vm.conn, id, "");
                }
                return Err(undo(from_call("create", id, e)));
            }
        };
        if let Some(t) = locked(&self.inner.state).tasks.get_mut(id) {
            t.init.pid = pid;
        }
        tracing::info!(id, pid, "task created in the guest");
        Ok(pid)
    }

    /// Stops the VM (agent shutdown, then QMP quit, then SIGKILL) and waits
    /// for QEMU to be reaped; the watcher then cleans up.
    fn stop_vm(&self, vm: &Arc<Vm>) {
        let _ = vm.conn.call(
            request::Op::Shutdown(proto::Shutdown {}),
            Duration::from_secs(5),
        );
        if vm.qemu.wait_exited(Duration::from_secs(5)).unwrap_or(false) {
            return self.wait_cleaned(vm);
        }
        if let Err(e) = self.vmm.quit(&vm.config) {
            tracing::debug!(error = %e, "QMP quit");
        }
        if !vm.qemu.wait_exited(Duration::from_secs(5)).unwrap_or(false) {
            let _ = vm.qemu.send_signal(libc::SIGKILL);
        }
        self.wait_cleaned(vm);
    }

    /// Waits until the watcher has handled QEMU's exit.
    fn wait_cleaned(&self, vm: &Arc<Vm>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if locked(&self.inner.state).vm_cleaned {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(dir = %vm.dir.display(), "the VM's cleanup did not finish in time");
    }
}

/// A VM's directory: short, since it holds unix sockets.
fn vm_dir(state_root: &Path, sandbox_id: &str) -> PathBuf {
    let hash = hex::encode(Sha256::digest(sandbox_id.as_bytes()));
    state_root.join("vm").join(&hash[..16])
}

fn started_pid(r: &proto::Response) -> u32 {
    match &r.result {
        Some(proto::response::Result::Started(s)) => s.pid,
        _ => 0,
    }
}

/// The last lines of the guest's console, for an error.
fn console_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn remove_host_cgroup(id: &str, path: Option<&Path>) {
    let Some(path) = path else { return };
    if let Ok(m) = crate::host::cgroups::manager(id, path) {
        use libcgroups::common::CgroupManager;
        if let Err(e) = m.remove() {
            tracing::debug!(cgroup = %path.display(), error = %e, "removing the VM's cgroup");
        }
    }
    crate::host::cgroups::forget(path);
}

/// After a create or exec the agent did not answer in time (it may still
/// carry it out): kills and forgets that process in the guest, from a
/// thread of its own, so that no container or exec runs there unknown to
/// the host.
fn forget_in_guest(conn: &Arc<AgentConn>, id: &str, exec_id: &str) {
    let (conn, id, exec_id) = (conn.clone(), id.to_string(), exec_id.to_string());
    let _ = std::thread::Builder::new()
        .name("vm-forget".into())
        .spawn(move || {
            let signal = request::Op::SignalProcess(proto::SignalProcess {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
                signal: libc::SIGKILL as u32,
                all: exec_id.is_empty(),
            });
            let _ = conn.call(signal, CALL_TIMEOUT);
            let delete = request::Op::DeleteProcess(proto::DeleteProcess {
                container_id: id,
                exec_id,
            });
            let _ = conn.call(delete, CALL_TIMEOUT);
        });
}

/// Copies a process's stdin to the agent until EOF, then closes the
/// guest's end.
fn pump_stdin(conn: Arc<AgentConn>, id: &str, exec_id: &str, stdin: OwnedFd) {
    let (id, exec_id) = (id.to_string(), exec_id.to_string());
    let _ = std::thread::Builder::new()
        .name("vm-stdin".into())
        .spawn(move || {
            let mut stdin = File::from(stdin);
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let write = request::Op::WriteStdin(proto::WriteStdin {
                            container_id: id.clone(),
                            exec_id: exec_id.clone(),
                            data: buf[..n].to_vec(),
                        });
                        if conn.send_oneway(write).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = conn.call(
                request::Op::CloseStdin(proto::CloseStdin {
                    container_id: id,
                    exec_id,
                }),
                CALL_TIMEOUT,
            );
        });
}

impl Inner {
    fn proc_mut<'a>(state: &'a mut State, id: &str, exec_id: &str) -> Option<&'a mut Proc> {
        let task = state.tasks.get_mut(id)?;
        if exec_id.is_empty() {
            Some(&mut task.init)
        } else {
            task.running_execs.get_mut(exec_id)
        }
    }

    fn on_event(&self, event: event::Kind) {
        match event {
            event::Kind::Output(out) => {
                let mut state = locked(&self.state);
                let Some(p) = Self::proc_mut(&mut state, &out.container_id, &out.exec_id) else {
                    return;
                };
                let slot = if out.stream == proto::Stream::Stderr as i32 {
                    &mut p.stderr
                } else {
                    &mut p.stdout
                };
                if out.eof {
                    // Its thread writes what is queued, then closes the file.
                    if let Some(mut sink) = slot.take() {
                        sink.tx = None;
                        p.ended_streams.push(sink);
                    }
                } else if let Some(sink) = slot {
                    sink.send(out.data, &out.container_id);
                }
            }
            event::Kind::Exited(exited) => {
                let exec_id = (!exited.exec_id.is_empty()).then(|| exited.exec_id.clone());
                let ended = {
                    let mut state = locked(&self.state);
                    let Some(p) = Self::proc_mut(&mut state, &exited.container_id, &exited.exec_id)
                    else {
                        return;
                    };
                    if p.exited {
                        return;
                    }
                    p.end()
                };
                // Its output is in its log before its exit is reported.
                ended.finish(Duration::from_secs(2));
                (self.exits)(Exit {
                    container_id: exited.container_id,
                    exec_id,
                    pid: exited.pid,
                    status: exited.status,
                    exited_at: SystemTime::now(),
                    oom_killed: exited.oom_killed,
                });
            }
            event::Kind::Oom(oom) => {
                tracing::warn!(id = %oom.container_id, "OOM kill in the guest");
            }
            event::Kind::PortData(data) => {
                let forwarder = locked(&self.state).forwarder.clone();
                if let Some(f) = forwarder {
                    f.on_data(data);
                }
            }
            event::Kind::Ready(_) => {}
        }
    }

    /// QEMU exited: every process still running is reported killed, and
    /// the host side of the VM removed.
    fn on_vm_exit(&self, vm: &Vm, status: u32) {
        let why = format!(
            "the pod's VM (QEMU pid {}) exited with {status}",
            vm.qemu.pid()
        );
        tracing::warn!(reason = %why, "VM gone");
        vm.conn.close();
        if let Some(f) = locked(&self.state).forwarder.take() {
            f.stop();
        }
        let mut exits = Vec::new();
        {
            let mut state = locked(&self.state);
            state.vm_gone = Some(why.clone());
            for (id, task) in state.tasks.iter_mut() {
                if !task.init.exited && task.init.pid != 0 {
                    let reason = format!("VMExited\t{why}\n");
                    let file = task.bundle.join(crate::backend::EXIT_REASON_FILE);
                    if let Err(e) = std::fs::write(&file, reason) {
                        tracing::debug!(file = %file.display(), error = %e, "writing the exit reason");
                    }
                }
                let procs = std::iter::once((None, &mut task.init)).chain(
                    task.running_execs
                        .iter_mut()
                        .map(|(e, p)| (Some(e.clone()), p)),
                );
                for (exec_id, p) in procs {
                    // An exec whose start is in flight (pid 0) ends too.
                    if !p.exited && (p.pid != 0 || exec_id.is_some()) {
                        p.end().finish(Duration::ZERO);
                        exits.push(Exit {
                            container_id: id.clone(),
                            exec_id,
                            pid: p.pid,
                            status: 128 + libc::SIGKILL as u32,
                            exited_at: SystemTime::now(),
                            oom_killed: false,
                        });
                    }
                }
            }
        }
        for exit in exits {
            tracing::warn!(id = %exit.container_id, exec = ?exit.exec_id, reason = %why, "process lost with the VM");
            (self.exits)(exit);
        }
        vm.share.remove();
        share::remove_tree(&vm.dir);
        locked(&self.state).vm_cleaned = true;
    }
}

impl Backend for MicrovmBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn create(&self, task: &TaskSpec) -> Result<u32> {
        if task.checkpoint.is_some() {
            return Err(BackendError::Unsupported {
                op: "restore from a checkpoint",
                backend: NAME,
            });
        }
        if locked(&self.inner.state).tasks.contains_key(&task.id) {
            return Err(BackendError::AlreadyExists {
                what: "task",
                id: task.id.clone(),
            });
        }
        let mut spec = Self::read_spec(&task.bundle)?;
        // What cannot be shared into the guest, before anything is made.
        share::check_mounts(&spec)?;
        match &task.kind {
            TaskKind::Sandbox => self.create_sandbox(task, spec),
            TaskKind::Container { sandbox_id } => {
                let vm = self.vm("create", &task.id)?;
                if vm.sandbox_id != *sandbox_id {
                    return Err(BackendError::InvalidArgument {
                        what: "sandbox id".into(),
                        reason: format!(
                            "this shim's VM holds sandbox {:?}, not {sandbox_id:?}",
                            vm.sandbox_id
                        ),
                    });
                }
                self.create_in_guest(&vm, task, &mut spec, false, sandbox_id)
            }
        }
    }

    fn start(&self, id: &str) -> Result<u32> {
        let r = self.call(
            "start",
            id,
            request::Op::StartContainer(proto::StartContainer {
                container_id: id.to_string(),
            }),
        )?;
        let pid = started_pid(&r);
        tracing::info!(id, pid, "task started in the guest");
        Ok(pid)
    }

    fn exec(&self, exec: &ExecSpec) -> Result<()> {
        let mut state = locked(&self.inner.state);
        let task = state
            .tasks
            .get_mut(&exec.container_id)
            .ok_or_else(|| not_found(&exec.container_id))?;
        crate::backend::register_exec(&mut task.execs, exec)
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        let exec = {
            let state = locked(&self.inner.state);
            let task = state.tasks.get(id).ok_or_else(|| not_found(id))?;
            task.execs
                .get(exec_id)
                .cloned()
                .ok_or_else(|| not_found(&format!("{id}/{exec_id}")))?
        };
        let vm = self.vm("exec", id)?;
        let process_json = serde_json::to_vec(&exec.process).map_err(|e| failed("exec", id, e))?;
        let (mut proc, stdio) = self.open_proc_stdio(&vm, id, exec_id, &exec.stdio)?;
        let held = std::mem::take(&mut proc.held);
        if let Some(task) = locked(&self.inner.state).tasks.get_mut(id) {
            task.running_execs.insert(exec_id.to_string(), proc);
        }
        let started = vm.conn.call(
            request::Op::ExecProcess(proto::ExecProcess {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                process_json,
                stdio: Some(stdio),
            }),
            CALL_TIMEOUT,
        );
        let mut state = locked(&self.inner.state);
        match started {
            Ok(r) => {
                let pid = started_pid(&r);
                if let Some(p) = Inner::proc_mut(&mut state, id, exec_id) {
                    p.pid = pid;
                    p.held = held;
                }
                Ok(pid)
            }
            Err(e) => {
                if let Some(task) = state.tasks.get_mut(id) {
                    task.running_execs.remove(exec_id);
                }
                if matches!(e, CallError::Channel(_)) {
                    forget_in_guest(&vm.conn, id, exec_id);
                }
                Err(from_call("exec", id, e))
            }
        }
    }

    fn kill(&self, id: &str, exec_id: Option<&str>, signal: u32, all: bool) -> Result<()> {
        {
            let state = locked(&self.inner.state);
            if !state.tasks.contains_key(id) {
                return Err(not_found(id));
            }
            if state.vm_gone.is_some() {
                // Everything in it is gone already (and reported).
                return Ok(());
            }
        }
        self.call(
            "kill",
            id,
            request::Op::SignalProcess(proto::SignalProcess {
                container_id: id.to_string(),
                exec_id: exec_id.unwrap_or_default().to_string(),
                signal,
                all,
            }),
        )
        .map(|_| ())
    }

    fn delete(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        let (kind, gone) = {
            let state = locked(&self.inner.state);
            let task = state.tasks.get(id).ok_or_else(|| not_found(id))?;
            (task.kind.clone(), state.vm_gone.is_some())
        };
        if let Some(exec_id) = exec_id {
            if !gone {
                let deleted = self.call(
                    "delete",
                    id,
                    request::Op::DeleteProcess(proto::DeleteProcess {
                        container_id: id.to_string(),
                        exec_id: exec_id.to_string(),
                    }),
                );
                match deleted {
                    Ok(_) | Err(BackendError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if let Some(task) = locked(&self.inner.state).tasks.get_mut(id) {
                task.execs.remove(exec_id);
                task.running_execs.remove(exec_id);
            }
            return Ok(());
        }
        if !gone {
            let deleted = self.call(
                "delete",
                id,
                request::Op::DeleteProcess(proto::DeleteProcess {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                }),
            );
            match deleted {
                Ok(_) | Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let vm = locked(&self.inner.state).vm.clone();
        if let Some(vm) = &vm {
            vm.share.remove_task(id);
        }
        locked(&self.inner.state).tasks.remove(id);
        if kind == TaskKind::Sandbox {
            if let Some(vm) = vm {
                if !gone {
                    self.stop_vm(&vm);
                }
                remove_host_cgroup(&vm.sandbox_id, vm.host_cgroup.as_deref());
                locked(&self.inner.state).vm = None;
            }
        }
        tracing::info!(id, "task deleted");
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let r = self.call(
            "pids",
            id,
            request::Op::ListPids(proto::ListPids {
                container_id: id.to_string(),
            }),
        )?;
        Ok(match r.result {
            Some(proto::response::Result::Pids(p)) => p
                .processes
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p.pid,
                    exec_id: (!p.exec_id.is_empty()).then_some(p.exec_id),
                })
                .collect(),
            _ => Vec::new(),
        })
    }

    fn pause(&self, id: &str) -> Result<()> {
        let op = request::Op::PauseContainer(proto::PauseContainer {
            container_id: id.to_string(),
        });
        self.call("pause", id, op).map(|_| ())
    }

    fn resume(&self, id: &str) -> Result<()> {
        let op = request::Op::ResumeContainer(proto::ResumeContainer {
            container_id: id.to_string(),
        });
        self.call("resume", id, op).map(|_| ())
    }

    /// The container's cgroup is in the guest: the agent applies the new
    /// limits there (and re-sums the guest's pod cgroup). The VM's host
    /// cgroup (the sandbox's) is left as it is: it sits in the pod's host
    /// cgroup, which whoever sized the pod resizes (caissond for its QoS
    /// tree, kubelet otherwise), and one container's limits are not the VM's.
    fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let resources_json = serde_json::to_vec(resources).map_err(|e| failed("update", id, e))?;
        self.call(
            "update",
            id,
            request::Op::UpdateResources(proto::UpdateResources {
                container_id: id.to_string(),
                resources_json,
            }),
        )
        .map(|_| ())
    }

    fn stats(&self, id: &str) -> Result<TaskStats> {
        let r = self.call(
            "stats",
            id,
            request::Op::GetStats(proto::GetStats {
                container_id: id.to_string(),
            }),
        )?;
        let Some(proto::response::Result::Stats(s)) = r.result else {
            return Err(failed("stats", id, "the agent sent no figures"));
        };
        Ok(TaskStats {
            cpu_usage_ns: s.cpu_usage_ns,
            cpu_user_ns: s.cpu_user_ns,
            cpu_system_ns: s.cpu_system_ns,
            memory_usage_bytes: s.memory_usage_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            memory_working_set_bytes: s.memory_working_set_bytes,
            memory_rss_bytes: s.memory_rss_bytes,
            page_faults: s.page_faults,
            major_page_faults: s.major_page_faults,
            oom_events: s.oom_events,
            pids_current: s.pids_current,
            pids_limit: s.pids_limit,
            memory_cache_bytes: s.memory_cache_bytes,
            memory_failcnt: s.memory_failcnt,
        })
    }

    fn resize_pty(&self, id: &str, exec_id: Option<&str>, width: u16, height: u16) -> Result<()> {
        self.call(
            "resize pty",
            id,
            request::Op::ResizePty(proto::ResizePty {
                container_id: id.to_string(),
                exec_id: exec_id.unwrap_or_default().to_string(),
                width: width.into(),
                height: height.into(),
            }),
        )
        .map(|_| ())
    }

    fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        let mut state = locked(&self.inner.state);
        let p = Inner::proc_mut(&mut state, id, exec_id.unwrap_or_default())
            .ok_or_else(|| not_found(id))?;
        // The pump sees EOF once the caller's writer is gone too, and then
        // closes the guest's end.
        p.held.close_stdin();
        Ok(())
    }

    fn reopen_logs(&self, id: &str) -> Result<()> {
        let state = locked(&self.inner.state);
        let task = state.tasks.get(id).ok_or_else(|| not_found(id))?;
        task.init
            .held
            .reopen_logs()
            .map_err(|e| failed("reopen logs", id, e))
    }

    fn shutdown(&self) {
        let vm = locked(&self.inner.state).vm.take();
        if let Some(vm) = vm {
            if locked(&self.inner.state).vm_gone.is_none() {
                self.stop_vm(&vm);
            }
            remove_host_cgroup(&vm.sandbox_id, vm.host_cgroup.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_the_backend_cannot_honour_are_refused_naming_them() {
        let exits: ExitSink = Arc::new(|_| {});
        let cases = [
            (
                MicrovmOptions {
                    shared_fs: SharedFs::Virtiofs,
                    ..Default::default()
                },
                "shared_fs",
            ),
            (
                MicrovmOptions {
                    machine: "microvm,acpi=off".into(),
                    ..Default::default()
                },
                "machine",
            ),
            (
                MicrovmOptions {
                    vcpus: 0,
                    ..Default::default()
                },
                "vcpus",
            ),
        ];
        for (options, field) in cases {
            match MicrovmBackend::new(PathBuf::from("/nonexistent"), exits.clone(), options) {
                Err(BackendError::InvalidArgument { what, .. }) => {
                    assert!(what.contains(field), "{what} does not name {field}")
                }
                Err(e) => panic!("{field}: {e}"),
                Ok(_) => panic!("{field}: accepted"),
            }
        }
        let parsed: MicrovmOptions = crate::backend::options_from_json(
            r#"{"memory_mib": 256, "userns_first_id": 1}"#,
            "options",
        )
        .unwrap();
        assert_eq!(parsed.memory_mib, 256, "another backend's key is ignored");
        assert_eq!(parsed.machine, "q35");
    }
}
