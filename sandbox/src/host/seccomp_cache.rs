//! Seccomp filters compiled once and loaded as BPF.
//!
//! libcontainer compiles a container's `linux.seccomp` with libseccomp in
//! the container's own process, every time. For Kubernetes' RuntimeDefault
//! profile (three architectures: x86-64, x86 and x32) that compile takes
//! 13 ms on these hosts (2 ms for x86-64 alone), for the hardened allow-list
//! 2 ms: paid again by every container and every exec. Here a filter is
//! compiled with libseccomp into the BPF program the kernel gets
//! (`seccomp_export_bpf`, the program `seccomp_load` would install) and kept
//! by its JSON text in this process. The fork server compiles the filter of
//! each task it builds before it builds it ([`prepare`]); the task's
//! processes are copies of the fork server, so they find the program ready
//! and only [`load`] it.
//!
//! The fork server also keeps each program as a file named by the filter's
//! hash ([`prepare_in`]), so that the next pod's shim finds it compiled.
//!
//! Only filters without `SCMP_ACT_NOTIFY` are handled here (a listener
//! needs libcontainer's hand-over of the notify fd); the translation of
//! actions, architectures, operators and flags is the OCI runtime spec's, as
//! libcontainer applies it: rules equal to the default action are skipped,
//! syscalls the kernel does not know are skipped, and comparisons of one
//! argument index repeated in a rule become rules of their own.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use sha2::{Digest, Sha256};

/// At most this many programs are kept (a pod's tasks share one or two).
const CAPACITY: usize = 16;

/// A filter compiled to the kernel's form.
#[derive(Debug)]
pub struct Program {
    insns: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*` for `seccomp(SECCOMP_SET_MODE_FILTER)`.
    flags: libc::c_ulong,
}

impl Program {
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }
}

fn cache() -> &'static Mutex<HashMap<String, Arc<Program>>> {
    static CACHE: std::sync::OnceLock<Mutex<HashMap<String, Arc<Program>>>> =
        std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The compiled program of the filter whose JSON is `json`, compiled now
/// unless this process has it already. `Ok(None)`: a filter this module
/// does not handle (a notify action), for libcontainer to load.
pub fn prepare(json: &str) -> Result<Option<Arc<Program>>, String> {
    prepare_in(json, None)
}

/// [`prepare`], also keeping programs as files in `dir` (root's, 0700),
/// named by the SHA-256 of the filter's JSON: the shims of a node share
/// them, so a filter is compiled once per node rather than once per pod.
pub fn prepare_in(json: &str, dir: Option<&Path>) -> Result<Option<Arc<Program>>, String> {
    if let Some(program) = cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(json)
    {
        return Ok(Some(program.clone()));
    }
    let filter: LinuxSeccomp =
        serde_json::from_str(json).map_err(|e| format!("the seccomp filter's JSON: {e}"))?;
    if !compilable(&filter) {
        return Ok(None);
    }
    // A program found in the directory is installed as it is: only one in
    // a private directory of root's, in a file of root's nobody else may
    // write, is trusted.
    let dir = dir.filter(|d| match crate::host::private_dir(d) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(dir = %d.display(), error = %e, "not keeping compiled seccomp filters there");
            false
        }
    });
    let file = dir.map(|d| d.join(format!("{}.bpf", hex::encode(Sha256::digest(json)))));
    let insns = match file.as_deref().and_then(read_program) {
        Some(insns) => insns,
        None => {
            let bytes = compile(&filter)?;
            if let (Some(dir), Some(file)) = (dir, &file) {
                if let Err(e) = write_program(dir, file, &bytes) {
                    tracing::debug!(file = %file.display(), error = %e, "keeping a compiled seccomp filter");
                }
            }
            from_bytes(&bytes)?
        }
    };
    let program = Arc::new(Program {
        insns,
        flags: flags(filter.flags().as_deref().unwrap_or_default()),
    });
    let mut cache = cache().lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= CAPACITY {
        cache.clear();
    }
    cache.insert(json.to_string(), program.clone());
    Ok(Some(program))
}

/// A kept program, if the file is a regular file of root's that only root
/// may write (and not a symlink) and holds whole instructions.
fn read_program(file: &Path) -> Option<Vec<libc::sock_filter>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return None;
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    from_bytes(&bytes).ok()
}

/// Keeps `bytes` as `file` in `dir` (a private directory), renamed into
/// place whole.
fn write_program(dir: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new().prefix(".bpf-").tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}

/// Whether [`compile`] handles `filter`: no notify action, no listener.
pub fn compilable(filter: &LinuxSeccomp) -> bool {
    let notify = |a: LinuxSeccompAction| a == LinuxSeccompAction::ScmpActNotify;
    !notify(filter.default_action())
        && filter.listener_path().is_none()
        && filter
            .syscalls()
            .iter()
            .flatten()
            .all(|s| !notify(s.action()))
}

/// Installs `program` on the calling thread (the caller has set
/// `no_new_privs` or holds CAP_SYS_ADMIN).
pub fn load(program: &Program) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.insns.len() as u16,
        filter: program.insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the program outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            program.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Compiles `filter` with libseccomp and exports the program: instructions
/// in the kernel's layout (8 bytes each, native endian).
pub fn compile(filter: &LinuxSeccomp) -> Result<Vec<u8>, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("seccomp: {what}: {e}");
    let default = action(filter.default_action(), filter.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| err("new filter", &e))?;
    // What seccomp_load would do itself is done by load(): no_new_privs is
    // the caller's, the flags are passed to the kernel.
    ctx.set_ctl_nnp(false).map_err(|e| err("nnp", &e))?;
    for &a in filter.architectures().iter().flatten() {
        ctx.add_arch(arch(a)).map_err(|e| err("architecture", &e))?;
    }
    for rule in filter.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let args = rule.args().as_deref().unwrap_or_default();
            let compares: Vec<ScmpArgCompare> = args
                .iter()
                .map(|a| {
                    ScmpArgCompare::new(a.index() as u32, op(a.op(), a.value_two()), a.value())
                })
                .collect();
            let mut seen = HashSet::new();
            let repeated = args.iter().any(|a| !seen.insert(a.index()));
            let added = if compares.is_empty() {
                ctx.add_rule(act, syscall)
            } else if repeated {
                compares
                    .iter()
                    .try_for_each(|c| {
                        ctx.add_rule_conditional(act, syscall, std::slice::from_ref(c))
                            .map(|_| ())
                    })
                    .map(|()| &mut ctx)
            } else {
                ctx.add_rule_conditional(act, syscall, &compares)
            };
            added.map_err(|e| err(&format!("rule for {name}"), &e))?;
        }
    }
    let memfd =
        nix::sys::memfd::memfd_create(c"seccomp-bpf", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| err("memfd", &e))?;
    ctx.export_bpf(&memfd).map_err(|e| err("export", &e))?;
    let mut file = std::fs::File::from(memfd);
    file.rewind().map_err(|e| err("rewind", &e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| err("read back", &e))?;
    Ok(bytes)
}

/// Instructions from their kernel layout (8 bytes each, native endian).
fn from_bytes(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, String> {
    const SIZE: usize = std::mem::size_of::<libc::sock_filter>();
    let chunks = bytes.chunks_exact(SIZE);
    if bytes.is_empty() || !chunks.remainder().is_empty() || chunks.len() > u16::MAX as usize {
        return Err(format!("seccomp: a program of {} bytes", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(SIZE)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

fn flags(flags: &[LinuxSeccompFilterFlag]) -> libc::c_ulong {
    flags.iter().fold(0, |all, f| {
        all | match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (Linux 5.19).
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 1 << 5,
        }
    })
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, String> {
    let errno = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno).map_err(|_| format!("seccomp: trace value {errno}"))?,
        ),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn op(op: LinuxSeccompOperator, value_two: Option<u64>) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value_two.unwrap_or(0)),
    }
}

fn arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(json: serde_json::Value) -> String {
        json.to_string()
    }

    /// Allows everything but uname (EACCES) and, on its first argument
    /// being 12345, getpgid (ESRCH is what the kernel says otherwise).
    fn sample() -> String {
        filter(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [
                {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES},
                {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
                 "args": [{"index": 0, "value": 12345, "op": "SCMP_CMP_EQ"}]},
                {"names": ["no_such_syscall"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}
            ]
        }))
    }

    /// Runs `check` in a child after loading `program` there: its exit code.
    fn in_child(program: &Program, check: fn() -> i32) -> i32 {
        // SAFETY: the child only makes syscalls and exits.
        match unsafe { libc::fork() } {
            0 => unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if load(program).is_err() {
                    libc::_exit(100);
                }
                libc::_exit(check())
            },
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                libc::WEXITSTATUS(status)
            }
        }
    }

    #[test]
    fn a_compiled_program_denies_what_the_filter_denies() {
        let program = prepare(&sample()).unwrap().expect("compilable");
        assert!(!program.is_empty());
        let code = in_child(&program, || {
            // SAFETY: plain syscalls with valid arguments.
            unsafe {
                let mut u: libc::utsname = std::mem::zeroed();
                let uname_errno = if libc::uname(&mut u) == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                let denied = libc::getpgid(12345) == -1 && *libc::__errno_location() == libc::EPERM;
                let allowed = libc::getpgid(0) > 0 && libc::getpid() > 0;
                if uname_errno == libc::EACCES && denied && allowed {
                    0
                } else {
                    1
                }
            }
        });
        assert_eq!(
            code, 0,
            "uname EACCES, getpgid(12345) EPERM, the rest allowed"
        );
        // Asked again: the same program, not compiled anew.
        let again = prepare(&sample()).unwrap().unwrap();
        assert!(Arc::ptr_eq(&program, &again));
    }

    #[test]
    fn programs_are_kept_as_files_and_read_back_alike() {
        let dir = tempfile::tempdir().unwrap();
        let programs = dir.path().join("bpf");
        let json = filter(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"]
        }));
        let made = prepare_in(&json, Some(&programs)).unwrap().unwrap();
        let file = programs.join(format!("{}.bpf", hex::encode(Sha256::digest(&json))));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&programs).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let read = read_program(&file).expect("the kept program");
        assert_eq!(made.flags, libc::SECCOMP_FILTER_FLAG_LOG);
        assert_eq!(read.len(), made.len());
        let same = read
            .iter()
            .zip(&made.insns)
            .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k));
        assert!(same, "the file holds the compiled program");
        // A torn or foreign file is not a program.
        std::fs::write(&file, [1, 2, 3]).unwrap();
        assert!(read_program(&file).is_none());
    }

    #[test]
    fn notify_filters_are_left_to_libcontainer() {
        let json = filter(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/agent.sock",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(prepare(&json).unwrap().is_none());
    }
}
