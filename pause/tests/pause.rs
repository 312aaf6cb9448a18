//! Black-box tests of the `caisson-pause` binary: the real executable runs as
//! PID 1 of a fresh PID namespace, orphans are made inside that namespace and
//! must be re-parented to it and reaped, SIGINT/SIGTERM must end it with
//! status 0, and the binary must stay static and small.
//!
//! Tests that create namespaces need root and fail (never skip) without it.
//! Every process a test starts is owned by a [`Proc`] guard that kills and
//! reaps it on drop, so a failed assertion leaks nothing; killing the pause
//! (PID 1 of its namespace) also kills everything left inside the namespace.

use std::ffi::{c_int, c_void, CString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::ptr;
use std::time::{Duration, Instant};

const PAUSE: &str = env!("CARGO_BIN_EXE_caisson-pause");
const DEADLINE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(5);
const MAX_BINARY_BYTES: u64 = 128 * 1024;
const MAX_RSS_KIB: u64 = 256;

fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test must run as root (it needs {why}); run `cargo test` as root"
    );
}

/// Polls `probe` until it returns `Some`, failing the test after [`DEADLINE`]
/// with `what` and the last thing `describe` reports.
fn wait_for<T>(
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}; {}",
                describe()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn describe_status(status: c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("raw wait status {status:#x}")
    }
}

/// A child of this test process, killed with SIGKILL and reaped on drop
/// unless the test already reaped it.
struct Proc {
    pid: libc::pid_t,
    what: &'static str,
    reaped: bool,
}

impl Proc {
    /// Waits (with a deadline) for the process to end and returns its raw
    /// wait status.
    fn wait_exit(&mut self) -> c_int {
        let pid = self.pid;
        let mut status = 0;
        wait_for(
            &format!("{} (pid {pid}) to exit", self.what),
            || {
                // SAFETY: `status` is a valid out-pointer; pid is our child.
                let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                assert!(ret >= 0, "waitpid({pid}): {}", io::Error::last_os_error());
                (ret == pid).then_some(())
            },
            || brief_status(pid),
        );
        self.reaped = true;
        status
    }

    /// Waits for the process to end and asserts it exited with status 0.
    fn assert_exits_zero(&mut self) {
        let status = self.wait_exit();
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{} should exit with status 0, but it {}",
            self.what,
            describe_status(status)
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: plain syscalls on a pid that is our unreaped child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, ptr::null_mut(), 0);
            }
        }
    }
}

/// What the cloned child execs, prepared before the clone so that the child
/// only makes async-signal-safe calls.
struct ExecArgs {
    path: CString,
    argv: [*const libc::c_char; 2],
    envp: [*const libc::c_char; 1],
}

extern "C" fn exec_pause(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the ExecArgs the parent passed, still alive in this
    // copy of its memory; prctl, execve and _exit are async-signal-safe.
    unsafe {
        let args = &*(arg as *const ExecArgs);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::execve(args.path.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
        libc::_exit(127)
    }
}

/// Starts the pause binary with clone(2) and `extra_flags` (e.g.
/// CLONE_NEWPID, so that it is PID 1 of a new namespace), and waits until it
/// sleeps with its signal handlers installed.
fn spawn_pause(extra_flags: c_int) -> Proc {
    let path = CString::new(PAUSE).expect("binary path has no NUL");
    let mut args = ExecArgs {
        argv: [path.as_ptr(), ptr::null()],
        envp: [ptr::null()],
        path,
    };
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the stack is a live allocation (glibc aligns its top); without
    // CLONE_VM the child runs on its own copy of it and of `args`.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        libc::clone(
            exec_pause,
            top.cast(),
            extra_flags | libc::SIGCHLD,
            (&mut args as *mut ExecArgs).cast(),
        )
    };
    assert!(pid > 0, "clone: {}", io::Error::last_os_error());
    let pause = Proc {
        pid,
        what: "caisson-pause",
        reaped: false,
    };
    wait_until_ready(pid);
    pause
}

/// Signal numbers as bits of the masks in /proc/<pid>/status.
fn signal_bit(signal: c_int) -> u64 {
    1 << (signal - 1)
}

/// Waits until `pid` runs the pause binary, sleeps, and catches SIGINT,
/// SIGTERM and SIGCHLD: before that a signal could hit the default action.
fn wait_until_ready(pid: libc::pid_t) {
    let wanted = signal_bit(libc::SIGINT) | signal_bit(libc::SIGTERM) | signal_bit(libc::SIGCHLD);
    wait_for(
        "caisson-pause to sleep with its signal handlers installed",
        || {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let caught = u64::from_str_radix(&status_field(pid, "SigCgt")?, 16).ok()?;
            let sleeping = status_field(pid, "State")?.starts_with('S');
            (comm.trim() == "caisson-pause" && caught & wanted == wanted && sleeping).then_some(())
        },
        || brief_status(pid),
    );
}

/// The lines of /proc/<pid>/status that tell what a process is doing.
fn brief_status(pid: libc::pid_t) -> String {
    let Some(status) = proc_status(pid) else {
        return format!("pid {pid} is gone");
    };
    let wanted = ["Name", "State", "PPid", "NSpid", "SigCgt"];
    let lines: Vec<&str> = status
        .lines()
        .filter(|line| {
            line.split_once(':')
                .is_some_and(|(key, _)| wanted.contains(&key))
        })
        .collect();
    format!("pid {pid}: {}", lines.join(", "))
}

fn proc_status(pid: libc::pid_t) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The value of one `Name:\tvalue` line of /proc/<pid>/status.
fn status_field(pid: libc::pid_t, name: &str) -> Option<String> {
    proc_status(pid)?.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_string())
    })
}

/// The pid of `pid` in each PID namespace it is in, outermost first.
fn ns_pids(pid: libc::pid_t) -> Vec<libc::pid_t> {
    status_field(pid, "NSpid")
        .expect("NSpid in /proc/<pid>/status")
        .split_whitespace()
        .map(|p| p.parse().expect("numeric NSpid"))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcEntry {
    pid: libc::pid_t,
    state: char,
}

/// Every process whose parent is `parent`, from a scan of /proc.
fn children_of(parent: libc::pid_t) -> Vec<ProcEntry> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // The process may be gone by now; that is fine.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: libc::pid_t = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent {
            children.push(ProcEntry { pid, state });
        }
    }
    children
}

/// How the helper that entered the namespace reports what its child did.
const HELPER_CHILD_EXITED_0: c_int = 0;
const HELPER_CHILD_SIGKILLED: c_int = 13;

/// Runs `body` in a process inside `pause`'s PID namespace, and returns the
/// helper's exit status: [`HELPER_CHILD_EXITED_0`] if `body`'s process exited
/// 0, [`HELPER_CHILD_SIGKILLED`] if it was killed by SIGKILL (as everything
/// in the namespace is when its PID 1 exits).
///
/// setns(CLONE_NEWPID) only moves the caller's future children, and changing
/// this multi-threaded test process is not wanted, so a forked helper enters
/// the namespace and forks `body`'s process into it. `body` runs in a forked
/// child of a multi-threaded process: it may only make async-signal-safe
/// calls and must end with `_exit`.
fn run_in_namespace_of(pause: &Proc, body: impl Fn()) -> c_int {
    let ns = File::open(format!("/proc/{}/ns/pid", pause.pid)).expect("open pause's pid ns");
    let ns_fd = ns.as_raw_fd();
    // SAFETY: the child only makes async-signal-safe calls and ends in _exit.
    let helper = unsafe { libc::fork() };
    assert!(helper >= 0, "fork: {}", io::Error::last_os_error());
    if helper == 0 {
        // SAFETY: as above; all of these are async-signal-safe.
        unsafe {
            if libc::setns(ns_fd, libc::CLONE_NEWPID) != 0 {
                libc::_exit(10);
            }
            let inside = libc::fork();
            if inside < 0 {
                libc::_exit(11);
            }
            if inside == 0 {
                body();
                libc::_exit(0);
            }
            let mut status = 0;
            if libc::waitpid(inside, &mut status, 0) != inside {
                libc::_exit(12);
            }
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                libc::_exit(HELPER_CHILD_EXITED_0);
            }
            if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
                libc::_exit(HELPER_CHILD_SIGKILLED);
            }
            libc::_exit(14);
        }
    }
    let mut helper = Proc {
        pid: helper,
        what: "the helper that enters the pause's namespace",
        reaped: false,
    };
    let status = helper.wait_exit();
    assert!(
        libc::WIFEXITED(status),
        "namespace helper {}",
        describe_status(status)
    );
    libc::WEXITSTATUS(status)
}

#[test]
fn runs_as_pid_1_of_a_new_pid_namespace() {
    require_root("CLONE_NEWPID");
    let pause = spawn_pause(libc::CLONE_NEWPID);
    assert_eq!(
        ns_pids(pause.pid),
        vec![pause.pid, 1],
        "NSpid should show the host pid and then 1 in the new namespace"
    );
    let ours = fs::read_link("/proc/self/ns/pid").expect("our pid ns");
    let its = fs::read_link(format!("/proc/{}/ns/pid", pause.pid)).expect("pause's pid ns");
    assert_ne!(ours, its, "pause should be in a PID namespace of its own");
}

#[test]
fn reaps_orphans_reparented_to_it() {
    require_root("CLONE_NEWPID and setns");
    const BLOCKED_ORPHANS: usize = 3;
    let pause = spawn_pause(libc::CLONE_NEWPID);

    // Orphans block reading this pipe until the test closes its write end.
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(ret, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 just returned these descriptors and nothing else owns them.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (read_fd, write_fd) = (read_end.as_raw_fd(), write_end.as_raw_fd());

    // Inside the namespace, a parent forks the orphans and exits at once, so
    // the kernel re-parents them to the namespace's PID 1: the pause. One
    // orphan exits immediately (it is a zombie when re-parented, or becomes
    // one right after); the others wait for EOF on the pipe.
    let helper = run_in_namespace_of(&pause, || {
        // SAFETY: async-signal-safe calls only, each child ends in _exit.
        unsafe {
            for _ in 0..BLOCKED_ORPHANS {
                if libc::fork() == 0 {
                    libc::close(write_fd);
                    let mut byte = 0u8;
                    while libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) < 0
                        && *libc::__errno_location() == libc::EINTR
                    {}
                    libc::_exit(0);
                }
            }
            if libc::fork() == 0 {
                libc::_exit(0);
            }
            libc::_exit(0);
        }
    });
    assert_eq!(helper, HELPER_CHILD_EXITED_0, "orphan maker failed");
    drop(read_end);

    let orphans = wait_for(
        "the blocked orphans to be re-parented to the pause and the quick one reaped",
        || {
            let children = children_of(pause.pid);
            (children.len() == BLOCKED_ORPHANS && children.iter().all(|c| c.state != 'Z'))
                .then_some(children)
        },
        || format!("children of the pause: {:?}", children_of(pause.pid)),
    );
    for orphan in &orphans {
        assert_eq!(
            ns_pids(orphan.pid).len(),
            2,
            "orphan {} should be in the pause's namespace",
            orphan.pid
        );
    }

    // Let the orphans exit: each must be reaped, not left a zombie.
    drop(write_end);
    wait_for(
        "the pause to reap every orphan (none left, none a zombie)",
        || children_of(pause.pid).is_empty().then_some(()),
        || format!("children of the pause: {:?}", children_of(pause.pid)),
    );
    let state = status_field(pause.pid, "State").unwrap_or_default();
    assert!(
        state.starts_with('S'),
        "pause should still sleep, is {state}"
    );
}

fn assert_signal_from_parent_namespace_exits_zero(signal: c_int) {
    require_root("CLONE_NEWPID");
    let mut pause = spawn_pause(libc::CLONE_NEWPID);
    // SAFETY: kill has no memory preconditions; pid is our live child.
    let ret = unsafe { libc::kill(pause.pid, signal) };
    assert_eq!(ret, 0, "kill: {}", io::Error::last_os_error());
    pause.assert_exits_zero();
}

fn assert_signal_from_inside_namespace_exits_zero(signal: c_int) {
    require_root("CLONE_NEWPID and setns");
    let mut pause = spawn_pause(libc::CLONE_NEWPID);
    // PID 1 of a namespace only gets signals from inside it for which it has
    // a handler, so this also checks that the handler is really installed.
    let helper = run_in_namespace_of(&pause, || {
        // SAFETY: async-signal-safe calls only.
        unsafe {
            let ret = libc::kill(1, signal);
            libc::_exit(if ret == 0 { 0 } else { 1 });
        }
    });
    // The sender may be killed by the kernel when PID 1 exits.
    assert!(
        helper == HELPER_CHILD_EXITED_0 || helper == HELPER_CHILD_SIGKILLED,
        "sending the signal from inside the namespace failed (helper status {helper})"
    );
    pause.assert_exits_zero();
}

#[test]
fn sigterm_from_parent_namespace_exits_zero() {
    assert_signal_from_parent_namespace_exits_zero(libc::SIGTERM);
}

#[test]
fn sigint_from_parent_namespace_exits_zero() {
    assert_signal_from_parent_namespace_exits_zero(libc::SIGINT);
}

#[test]
fn sigterm_from_inside_its_namespace_exits_zero() {
    assert_signal_from_inside_namespace_exits_zero(libc::SIGTERM);
}

#[test]
fn sigint_from_inside_its_namespace_exits_zero() {
    assert_signal_from_inside_namespace_exits_zero(libc::SIGINT);
}

#[test]
fn sigterm_without_a_namespace_exits_zero() {
    let mut pause = spawn_pause(0);
    // SAFETY: kill has no memory preconditions; pid is our live child.
    assert_eq!(unsafe { libc::kill(pause.pid, libc::SIGTERM) }, 0);
    pause.assert_exits_zero();
}

#[test]
fn version_flag_prints_version_and_exits_zero() {
    for flag in ["-v", "--version"] {
        let out = Command::new(PAUSE).arg(flag).output().expect("run pause");
        assert_eq!(out.status.code(), Some(0), "{flag}: {:?}", out);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("caisson-pause {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
        assert!(out.stderr.is_empty(), "{flag}: {:?}", out);
    }
}

#[test]
fn unknown_arguments_print_usage_and_exit_2() {
    for args in [&["--bogus"][..], &["v"], &["-v", "-v"], &[""]] {
        let out = Command::new(PAUSE).args(args).output().expect("run pause");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("usage: caisson-pause"),
            "{args:?}: {out:?}"
        );
    }
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

#[test]
fn binary_is_a_small_static_executable() {
    const ET_EXEC: u16 = 2;
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;

    let elf = fs::read(PAUSE).expect("read the pause binary");
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    assert_eq!(elf[5], 1, "not little-endian");
    // Its _start applies no relocations, so it must not be position-independent.
    assert_eq!(u16_at(&elf, 0x10), ET_EXEC, "e_type should be ET_EXEC");

    let phoff = u64_at(&elf, 0x20) as usize;
    let phentsize = u16_at(&elf, 0x36) as usize;
    let phnum = u16_at(&elf, 0x38) as usize;
    let mut loaded_bytes = 0;
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        let p_type = u32_at(&elf, header);
        assert_ne!(p_type, PT_INTERP, "has PT_INTERP: not statically linked");
        assert_ne!(p_type, PT_DYNAMIC, "has PT_DYNAMIC: not statically linked");
        if p_type == PT_LOAD {
            loaded_bytes += u64_at(&elf, header + 0x20); // p_filesz
        }
    }
    assert!(
        loaded_bytes <= MAX_BINARY_BYTES,
        "loadable segments are {loaded_bytes} bytes, over {MAX_BINARY_BYTES}"
    );
    // Debug builds carry debug info; the size limit is for the release binary.
    if !cfg!(debug_assertions) {
        let size = elf.len() as u64;
        assert!(
            size <= MAX_BINARY_BYTES,
            "release binary is {size} bytes, over {MAX_BINARY_BYTES}"
        );
    }
}

#[test]
fn resident_memory_is_small() {
    let pause = spawn_pause(0);
    let rss = status_field(pause.pid, "VmRSS").expect("VmRSS in /proc/<pid>/status");
    let kib: u64 = rss
        .strip_suffix(" kB")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected VmRSS {rss:?}"));
    eprintln!("caisson-pause VmRSS: {kib} KiB");
    assert!(
        kib <= MAX_RSS_KIB,
        "VmRSS is {kib} KiB, over {MAX_RSS_KIB} KiB"
    );
}
