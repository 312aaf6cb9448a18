//! The virtual machine monitor behind a microvm pod, kept behind a small
//! trait ([`Vmm`]) so that the backend knows nothing of QEMU's command line.
//!
//! [`Qemu`] runs Debian's `qemu-system-x86_64`:
//! * direct kernel boot (`-kernel`/`-initrd`/`-append`) through qboot where
//!   QEMU ships it, no firmware disk, no display, `-nodefaults`, QEMU's own
//!   seccomp sandbox, a QMP socket;
//! * the agent's channel is a virtio-serial port named [`AGENT_PORT`] whose
//!   host end is a unix socket QEMU listens on; the pod's shared directory is
//!   a virtio-9p export tagged [`SHARE_TAG`];
//! * the accelerator is decided once per process ([`decide_accelerator`]):
//!   KVM only where hardware virtualisation really works (no PVM, `vmx` or
//!   `svm` in `/proc/cpuinfo`), TCG otherwise, with the reason logged.
//!
//! QEMU is a child of the shim with `PR_SET_PDEATHSIG = SIGKILL`, spawned by
//! a thread that lives as long as the VM (the death signal follows the
//! *thread* that forked), so a killed shim takes its VM with it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The virtio-serial port the agent serves on.
pub const AGENT_PORT: &str = "caisson.agent";
/// The 9p mount tag of the pod's shared directory.
pub const SHARE_TAG: &str = "caisson-shared";

/// Which accelerator runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// KVM where it really works, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// What one VM is made of.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_args: String,
    pub machine: String,
    pub accelerator: Accelerator,
    /// Where QEMU listens for the agent's channel.
    pub agent_socket: PathBuf,
    /// Where QEMU listens for QMP.
    pub qmp_socket: PathBuf,
    /// Shared into the guest over virtio-9p.
    pub shared_dir: PathBuf,
    /// The guest's serial console (and QEMU's own stderr).
    pub console_log: PathBuf,
    /// Its NICs: a tap's descriptor (inherited by QEMU) and the MAC
    /// address the guest's virtio-net device takes.
    pub nics: Vec<VmNic>,
}

/// A NIC of the VM.
#[derive(Debug, Clone)]
pub struct VmNic {
    pub tap_fd: std::os::fd::RawFd,
    pub mac: String,
}

/// A monitor that can start VMs.
pub trait Vmm: Send + Sync {
    /// The command that runs `vm`, ready to spawn.
    fn command(&self, vm: &VmConfig) -> Result<Command, String>;
    /// Asks a running VM to stop at once (QMP `quit`).
    fn quit(&self, vm: &VmConfig) -> Result<(), String>;
    /// Which accelerator `vm` runs with, and why.
    fn accelerator(&self, vm: &VmConfig) -> (Accelerator, &'static str);
}

/// QEMU (`qemu-system-x86_64`).
pub struct Qemu {
    pub binary: PathBuf,
}

/// Decides KVM or TCG for `asked`, once per process for `Auto` (logged
/// once, with the reason).
pub fn decide_accelerator(asked: Accelerator) -> (Accelerator, &'static str) {
    match asked {
        Accelerator::Kvm => (Accelerator::Kvm, "asked for"),
        Accelerator::Tcg => (Accelerator::Tcg, "asked for"),
        Accelerator::Auto => {
            static DECIDED: OnceLock<(Accelerator, &'static str)> = OnceLock::new();
            *DECIDED.get_or_init(|| {
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                let decided = probe_kvm(
                    Path::new("/dev/kvm").exists(),
                    Path::new("/sys/module/kvm_pvm").exists(),
                    &cpuinfo,
                );
                tracing::info!(accelerator = ?decided.0, reason = decided.1, "microvm accelerator");
                decided
            })
        }
    }
}

fn probe_kvm(dev_kvm: bool, pvm: bool, cpuinfo: &str) -> (Accelerator, &'static str) {
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !dev_kvm {
        (Accelerator::Tcg, "no /dev/kvm")
    } else if pvm {
        (
            Accelerator::Tcg,
            "/dev/kvm is PVM (kvm_pvm loaded): stock guest kernels do not boot under it",
        )
    } else if !hardware {
        (
            Accelerator::Tcg,
            "no vmx or svm in /proc/cpuinfo: no hardware virtualisation",
        )
    } else {
        (Accelerator::Kvm, "/dev/kvm with hardware virtualisation")
    }
}

impl Vmm for Qemu {
    fn accelerator(&self, vm: &VmConfig) -> (Accelerator, &'static str) {
        decide_accelerator(vm.accelerator)
    }

    fn command(&self, vm: &VmConfig) -> Result<Command, String> {
        for (what, path) in [
            ("qemu_path", &self.binary),
            ("kernel", &vm.kernel),
            ("initramfs", &vm.initramfs),
        ] {
            if !path.exists() {
                return Err(format!(
                    "{what} {} does not exist (`make microvm-guest` installs the guest; \
                     `make microvm-deps` installs QEMU)",
                    path.display()
                ));
            }
        }
        let (accel, _) = self.accelerator(vm);
        let (accel, cpu) = match accel {
            Accelerator::Kvm => ("kvm", "host"),
            _ => ("tcg", "max"),
        };
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-name")
            .arg(format!("caisson-{},debug-threads=on", vm.name))
            .args(["-machine", &format!("{},accel={accel}", vm.machine)])
            .args(["-cpu", cpu]);
        if let Some(qboot) = qboot(&self.binary) {
            cmd.arg("-bios").arg(qboot);
        }
        cmd.args(["-smp", &vm.vcpus.to_string()])
            .args(["-m", &format!("{}M", vm.memory_mib)])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .args([
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            ])
            .arg("-kernel")
            .arg(&vm.kernel)
            .arg("-initrd")
            .arg(&vm.initramfs)
            .args(["-append", &vm.kernel_args])
            .arg("-chardev")
            .arg(chardev_file("console", &vm.console_log)?)
            .args(["-serial", "chardev:console"])
            .args(["-device", "virtio-serial-pci,id=serial0"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                qemu_path(&vm.agent_socket)?
            ))
            .args([
                "-device",
                &format!("virtserialport,bus=serial0.0,chardev=agent,name={AGENT_PORT}"),
            ])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                qemu_path(&vm.qmp_socket)?
            ))
            .arg("-fsdev")
            .arg(format!(
                "local,id=shared,path={},security_model=passthrough,multidevs=remap",
                qemu_path(&vm.shared_dir)?
            ))
            .args([
                "-device",
                &format!("virtio-9p-pci,fsdev=shared,mount_tag={SHARE_TAG}"),
            ]);
        // virtio-net on the tap the backend opened in the pod's network
        // namespace; vhost=off (no /dev/vhost-net on these hosts), and no
        // option ROM (the kernel is booted directly: nothing PXE-boots).
        for (n, nic) in vm.nics.iter().enumerate() {
            cmd.arg("-netdev")
                .arg(format!("tap,id=net{n},fd={},vhost=off", nic.tap_fd))
                .arg("-device")
                .arg(format!(
                    "virtio-net-pci,netdev=net{n},mac={},romfile=",
                    nic.mac
                ));
        }
        let inherited: Vec<_> = vm.nics.iter().map(|n| n.tap_fd).collect();
        // SAFETY: prctl only sets this process's parent-death signal, and
        // fcntl only clears close-on-exec on descriptors the backend holds
        // open until QEMU has started; both are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &inherited {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The shim may already be gone (the signal is only sent on
                // a death after the prctl).
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("the shim is gone"));
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    fn quit(&self, vm: &VmConfig) -> Result<(), String> {
        qmp(&vm.qmp_socket, "quit")
    }
}

/// QEMU's minimal firmware (`qboot.rom`, beside the binary's other data:
/// `<prefix>/share/qemu/`), which jumps straight to the kernel QEMU loaded
/// where SeaBIOS first scans the machine; `None` (SeaBIOS) where QEMU ships
/// none. Measured in bench/README.md ("microvm guest kernel and boot
/// options").
fn qboot(binary: &Path) -> Option<PathBuf> {
    let rom = binary.parent()?.parent()?.join("share/qemu/qboot.rom");
    rom.is_file().then_some(rom)
}

/// A path for QEMU's comma-separated options (a comma would be doubled, but
/// Caisson's own paths never have one: refuse rather than escape).
fn qemu_path(path: &Path) -> Result<String, String> {
    let s = path
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    if s.contains(',') {
        return Err(format!("{s:?}: QEMU options cannot hold a comma"));
    }
    Ok(s.to_string())
}

fn chardev_file(id: &str, path: &Path) -> Result<String, String> {
    Ok(format!("file,id={id},path={}", qemu_path(path)?))
}

/// Runs one QMP command (after the capabilities handshake).
fn qmp(socket: &Path, command: &str) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("QMP {}: {e}", socket.display());
    let stream = UnixStream::connect(socket).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(fail)?;
    let mut writer = stream.try_clone().map_err(fail)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(fail)?; // the greeting
    for execute in ["qmp_capabilities", command] {
        writeln!(writer, "{{\"execute\":\"{execute}\"}}").map_err(fail)?;
        line.clear();
        reader.read_line(&mut line).map_err(fail)?;
        if line.contains("\"error\"") {
            return Err(format!("QMP {execute}: {}", line.trim()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_only_with_hardware_virtualisation_and_no_pvm() {
        let vmx = "processor: 0\nflags\t\t: fpu vme vmx sse\n";
        let plain = "processor: 0\nflags\t\t: fpu vme sse\n";
        assert_eq!(probe_kvm(true, false, vmx).0, Accelerator::Kvm);
        assert_eq!(probe_kvm(true, true, vmx).0, Accelerator::Tcg);
        assert_eq!(probe_kvm(true, false, plain).0, Accelerator::Tcg);
        assert_eq!(probe_kvm(false, false, vmx).0, Accelerator::Tcg);
        assert!(probe_kvm(true, true, vmx).1.contains("PVM"));
    }

    #[test]
    fn the_command_line_boots_the_kernel_directly_with_qemus_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"").unwrap();
            p
        };
        let qemu = Qemu {
            binary: file("qemu"),
        };
        let vm = VmConfig {
            name: "pod1".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel: file("vmlinux"),
            initramfs: file("initramfs.cpio"),
            kernel_args: "console=ttyS0".into(),
            machine: "q35".into(),
            accelerator: Accelerator::Tcg,
            agent_socket: dir.path().join("agent.sock"),
            qmp_socket: dir.path().join("qmp.sock"),
            shared_dir: dir.path().join("shared"),
            console_log: dir.path().join("console.log"),
            nics: vec![VmNic {
                tap_fd: 7,
                mac: "02:42:0a:58:00:05".into(),
            }],
        };
        let cmd = qemu.command(&vm).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-machine q35,accel=tcg",
            "-nodefaults",
            "-smp 2",
            "-m 256M",
            "-append console=ttyS0",
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "name=caisson.agent",
            "mount_tag=caisson-shared",
            "-netdev tap,id=net0,fd=7,vhost=off",
            "-device virtio-net-pci,netdev=net0,mac=02:42:0a:58:00:05,romfile=",
        ] {
            assert!(joined.contains(want), "{want:?} missing from {joined}");
        }
        let mut missing = vm.clone();
        missing.kernel = dir.path().join("nope");
        let err = qemu.command(&missing).unwrap_err();
        assert!(err.contains("kernel") && err.contains("nope"), "{err}");
        let mut comma = vm;
        comma.shared_dir = dir.path().join("a,b");
        assert!(qemu.command(&comma).unwrap_err().contains("comma"));
    }

    #[test]
    fn qboot_is_the_firmware_where_qemu_ships_it() {
        let prefix = tempfile::tempdir().unwrap();
        let binary = prefix.path().join("bin/qemu-system-x86_64");
        assert_eq!(qboot(&binary), None);
        let rom = prefix.path().join("share/qemu/qboot.rom");
        std::fs::create_dir_all(rom.parent().unwrap()).unwrap();
        std::fs::write(&rom, b"").unwrap();
        assert_eq!(qboot(&binary), Some(rom));
    }
}
