//! Escape attempts: the first steps of the container escapes people have
//! published, each made so that success really means the capability is
//! there and nothing on the host changes.
//!
//! Every attempt is classified by what the kernel answered:
//! * `allowed`: the call succeeded, or failed only *after* the permission
//!   check (an argument error that the kernel checks later, e.g. `EINVAL`
//!   from `kexec_load` with a bad flag: the caller had `CAP_SYS_BOOT`).
//! * `blocked`: refused (`EPERM`/`EACCES` from seccomp, a missing
//!   capability, an LSM; `EROFS`; the host file not reachable).
//! * `error`: the attempt could not be set up (the test fails on it).
//!
//! Nothing is left behind: made descriptors are closed, the tmpfs is
//! unmounted, the traced child killed, namespaces made in a child that exits.
//! Nothing is ever written to `/proc/sysrq-trigger`: opening it for writing is
//! the signal.

use std::io::Read;

use crate::sys::{check, close, cstr, errno, errno_name, in_child};

/// What one attempt found.
enum Outcome {
    Allowed(String),
    Blocked(String),
    Error(String),
}

use Outcome::{Allowed, Blocked, Error};

/// One named attempt.
type Attempt<'a> = (&'static str, Box<dyn Fn() -> Outcome + 'a>);

/// Where the host marker is (outside the container's rootfs) and what it holds.
struct Marker {
    path: String,
    token: String,
}

/// `escape [--marker PATH --token TEXT]`: runs every attempt, prints the table.
/// `Ok(false)` when an attempt could not be made.
pub fn main(args: &[String]) -> Result<bool, String> {
    let mut marker_path = None;
    let mut token = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--marker" => marker_path = Some(value.clone()),
            "--token" => token = Some(value.clone()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let marker = match (marker_path, token) {
        (Some(path), Some(token)) => Some(Marker { path, token }),
        (None, None) => None,
        _ => return Err("--marker and --token go together".into()),
    };
    let attempts: Vec<Attempt> = vec![
        ("mount", Box::new(mount)),
        ("umount2", Box::new(umount2)),
        ("unshare_user_mount", Box::new(unshare)),
        ("setns", Box::new(setns)),
        ("ptrace", Box::new(ptrace)),
        ("bpf", Box::new(bpf)),
        ("keyctl", Box::new(keyctl)),
        ("add_key", Box::new(add_key)),
        ("init_module", Box::new(init_module)),
        ("finit_module", Box::new(finit_module)),
        ("kexec_load", Box::new(kexec_load)),
        ("perf_event_open", Box::new(perf_event_open)),
        ("userfaultfd", Box::new(userfaultfd)),
        ("io_uring_setup", Box::new(io_uring_setup)),
        ("open_by_handle_at", Box::new(open_by_handle_at)),
        ("raw_socket", Box::new(raw_socket)),
        ("packet_socket", Box::new(packet_socket)),
        ("sysrq_trigger", Box::new(sysrq_trigger)),
        (
            "host_file_proc1_root",
            Box::new(|| host_file(marker.as_ref(), "/proc/1/root")),
        ),
        (
            "host_file_dotdot",
            Box::new(|| host_file(marker.as_ref(), "/../../../../../../../..")),
        ),
        (
            "host_file_chroot_dotdot",
            Box::new(|| chroot_dotdot(marker.as_ref())),
        ),
    ];
    let mut all_made = true;
    for (name, attempt) in attempts {
        let (verdict, detail) = match attempt() {
            Allowed(d) => ("allowed", d),
            Blocked(d) => ("blocked", d),
            Error(d) => {
                all_made = false;
                ("error", d)
            }
        };
        println!("{name}\t{verdict}\t{detail}");
    }
    Ok(all_made)
}

/// `EPERM`/`EACCES` block, `ENOSYS` means the syscall is not there (not
/// built into this kernel, or filtered that way); any other errno means the
/// kernel got past its permission checks (`what` says what that shows).
fn past_permission_check(e: i32, what: &str) -> Outcome {
    match e {
        libc::EPERM | libc::EACCES => Blocked(errno_name(e)),
        libc::ENOSYS => Blocked("ENOSYS (no such syscall here)".into()),
        _ => Allowed(format!("{} ({what})", errno_name(e))),
    }
}

fn mkdir(path: &str) -> Result<(), Outcome> {
    // SAFETY: mkdir on a NUL-terminated path.
    let r = unsafe { libc::mkdir(cstr(path).as_ptr(), 0o700) };
    if r < 0 && errno() != libc::EEXIST {
        return Err(Error(format!("mkdir {path}: {}", errno_name(errno()))));
    }
    Ok(())
}

/// A tmpfs on a private dir in the container's /tmp, unmounted again.
fn mount() -> Outcome {
    let dir = "/tmp/caisson-probe-mount";
    if let Err(o) = mkdir(dir) {
        return o;
    }
    let (src, fstype, target, data) = (cstr("none"), cstr("tmpfs"), cstr(dir), cstr("size=4k"));
    // SAFETY: mount with NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    match check(r as i64) {
        Ok(_) => {
            // SAFETY: unmounting what was just mounted.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            Allowed(format!("mounted a tmpfs on {dir}"))
        }
        Err(e) => Blocked(errno_name(e)),
    }
}

/// `umount2` of a directory that is not a mount point: the kernel checks
/// `CAP_SYS_ADMIN` first (`EPERM`), then the mount (`EINVAL`); nothing is
/// unmounted either way.
fn umount2() -> Outcome {
    let dir = "/tmp/caisson-probe-umount";
    if let Err(o) = mkdir(dir) {
        return o;
    }
    // SAFETY: umount2 on a NUL-terminated path.
    let r = unsafe { libc::umount2(cstr(dir).as_ptr(), 0) };
    match check(r as i64) {
        Ok(_) => Allowed(format!("unmounted {dir}")),
        Err(libc::EINVAL) => Allowed("EINVAL (passed the CAP_SYS_ADMIN check)".into()),
        Err(e) => Blocked(errno_name(e)),
    }
}

/// A child makes a new user and mount namespace, then exits.
fn unshare() -> Outcome {
    let r = in_child(|| {
        // SAFETY: unshare in a forked, single-threaded child.
        let r = unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) };
        if r == 0 {
            0
        } else {
            errno()
        }
    });
    match r {
        Ok(0) => Allowed("made a user and a mount namespace".into()),
        Ok(e) if e > 0 => Blocked(errno_name(e)),
        Ok(sig) => Blocked(format!("child killed by signal {}", -sig)),
        Err(e) => Error(format!("fork: {}", errno_name(e))),
    }
}

/// A child joins a network namespace (its own: needs `CAP_SYS_ADMIN` all
/// the same), then exits.
fn setns() -> Outcome {
    let r = in_child(|| {
        // SAFETY: open and setns with a NUL-terminated path, in a child.
        unsafe {
            let fd = libc::open(c"/proc/self/ns/net".as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                return 200;
            }
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                0
            } else {
                errno()
            }
        }
    });
    match r {
        Ok(0) => Allowed("joined a network namespace".into()),
        Ok(200) => Error("cannot open /proc/self/ns/net".into()),
        Ok(e) if e > 0 => Blocked(errno_name(e)),
        Ok(sig) => Blocked(format!("child killed by signal {}", -sig)),
        Err(e) => Error(format!("fork: {}", errno_name(e))),
    }
}

/// `PTRACE_SEIZE` of the probe's own child (which the default Yama and
/// uid rules permit), then the child is killed.
fn ptrace() -> Outcome {
    // SAFETY: fork in a single-threaded process; the child only pauses.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Error(format!("fork: {}", errno_name(errno())));
    }
    if pid == 0 {
        loop {
            // SAFETY: waits for a signal; the parent kills it.
            unsafe { libc::pause() };
        }
    }
    // SAFETY: ptrace on our own child.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
    let outcome = match check(r) {
        Ok(_) => Allowed(format!("seized pid {pid}")),
        Err(e) => Blocked(errno_name(e)),
    };
    // SAFETY: killing and reaping our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = crate::sys::wait_child(pid);
    outcome
}

/// `BPF_MAP_CREATE` of a one-entry array map.
fn bpf() -> Outcome {
    // union bpf_attr, map create: map_type, key_size, value_size, max_entries.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: bpf with a zeroed attr of the size given.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), 128) };
    match check(r) {
        Ok(fd) => {
            close(fd);
            Allowed("created a BPF map".into())
        }
        Err(e) => Blocked(errno_name(e)),
    }
}

/// `KEYCTL_GET_KEYRING_ID` of the session keyring (no create): reading the
/// kernel keyring, which is not namespaced.
fn keyctl() -> Outcome {
    const KEYCTL_GET_KEYRING_ID: i64 = 0;
    const KEY_SPEC_SESSION_KEYRING: i64 = -3;
    // SAFETY: keyctl with integer arguments only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_SESSION_KEYRING,
            0,
        )
    };
    match check(r) {
        Ok(id) => Allowed(format!("session keyring {id}")),
        Err(e) => past_permission_check(e, "keyctl reached the keyring code"),
    }
}

/// `add_key` of a user key into the probe's own process keyring (gone when
/// the probe exits; never the user keyring, which the host's root shares).
fn add_key() -> Outcome {
    const KEY_SPEC_PROCESS_KEYRING: i64 = -2;
    let (kind, desc) = (cstr("user"), cstr("caisson-probe"));
    let payload = b"x";
    // SAFETY: add_key with NUL-terminated strings and a 1-byte payload.
    let r = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            kind.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            KEY_SPEC_PROCESS_KEYRING,
        )
    };
    match check(r) {
        Ok(id) => Allowed(format!("added key {id} to the process keyring")),
        Err(e) => past_permission_check(e, "add_key reached the keyring code"),
    }
}

/// `init_module` of an empty image: `EPERM` without `CAP_SYS_MODULE`,
/// otherwise the empty image is rejected (`ENOEXEC`/`EINVAL`).
fn init_module() -> Outcome {
    let image = [0u8; 1];
    let params = cstr("");
    // SAFETY: init_module with a valid 0-length buffer and empty params.
    let r = unsafe { libc::syscall(libc::SYS_init_module, image.as_ptr(), 0, params.as_ptr()) };
    match check(r) {
        Ok(_) => Allowed("loaded a module".into()),
        Err(e) => past_permission_check(e, "passed the CAP_SYS_MODULE check"),
    }
}

/// `finit_module` of `/dev/null`: `EPERM` without `CAP_SYS_MODULE`, then
/// `EINVAL`/`EBADF` for a file that is no module.
fn finit_module() -> Outcome {
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Error(format!("open /dev/null: {}", errno_name(errno())));
    }
    let params = cstr("");
    // SAFETY: finit_module on a descriptor we own.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, fd, params.as_ptr(), 0) };
    let outcome = match check(r) {
        Ok(_) => Allowed("loaded a module".into()),
        Err(e) => past_permission_check(e, "passed the CAP_SYS_MODULE check"),
    };
    close(fd as i64);
    outcome
}

/// `kexec_load` with more segments than allowed and an unknown flag: `EPERM`
/// without `CAP_SYS_BOOT`, `EINVAL` with it; nothing can be loaded.
fn kexec_load() -> Outcome {
    const KEXEC_SEGMENT_MAX_PLUS_ONE: u64 = 17;
    const UNKNOWN_FLAG: u64 = 0x8000;
    // SAFETY: kexec_load with a null segment list the kernel never reads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_load,
            0u64,
            KEXEC_SEGMENT_MAX_PLUS_ONE,
            std::ptr::null::<u8>(),
            UNKNOWN_FLAG,
        )
    };
    match check(r) {
        Ok(_) => Allowed("loaded a kexec image".into()),
        Err(e) => past_permission_check(e, "passed the CAP_SYS_BOOT check"),
    }
}

/// A software counter (task clock) on the probe itself, user space only:
/// what `perf_event_paranoid` = 2 lets anyone open.
fn perf_event_open() -> Outcome {
    let mut attr = [0u64; 16];
    // type = PERF_TYPE_SOFTWARE (1), size = PERF_ATTR_SIZE_VER0 (64).
    attr[0] = 1 | (64 << 32);
    attr[1] = 1; // PERF_COUNT_SW_TASK_CLOCK
    attr[5] = 1 | (1 << 5) | (1 << 6); // disabled, exclude_kernel, exclude_hv
    const PERF_FLAG_FD_CLOEXEC: u64 = 8;
    // SAFETY: perf_event_open with a zeroed attr larger than the size given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_mut_ptr(),
            0,
            -1,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    match check(r) {
        Ok(fd) => {
            close(fd);
            Allowed("opened a perf event".into())
        }
        Err(e) => Blocked(errno_name(e)),
    }
}

/// A user-mode-only userfaultfd: the form unprivileged exploits use.
fn userfaultfd() -> Outcome {
    const UFFD_USER_MODE_ONLY: i64 = 1;
    // SAFETY: userfaultfd with flags only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC as i64 | UFFD_USER_MODE_ONLY,
        )
    };
    match check(r) {
        Ok(fd) => {
            close(fd);
            Allowed("made a userfaultfd".into())
        }
        Err(e) => Blocked(errno_name(e)),
    }
}

/// An io_uring with one entry.
fn io_uring_setup() -> Outcome {
    // struct io_uring_params is 120 bytes; zeroed asks for defaults.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup with a zeroed params struct of the right size.
    let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
    match check(r) {
        Ok(fd) => {
            close(fd);
            Allowed("made an io_uring".into())
        }
        Err(e) => Blocked(errno_name(e)),
    }
}

/// `open_by_handle_at` (the "shocker" escape): a real handle of /etc/passwd
/// when `name_to_handle_at` gives one, a made-up one otherwise. The kernel
/// checks `CAP_DAC_READ_SEARCH` before it looks at the handle.
fn open_by_handle_at() -> Outcome {
    // struct file_handle: handle_bytes, handle_type, f_handle[128].
    #[repr(C)]
    struct FileHandle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 128],
    }
    let mut handle = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id = 0i32;
    let path = cstr("/etc/passwd");
    // SAFETY: name_to_handle_at filling our handle and mount id.
    let named = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut handle as *mut FileHandle,
            &mut mount_id as *mut i32,
            0,
        )
    };
    let source = if named == 0 {
        "a real handle of /etc/passwd".to_string()
    } else {
        let why = errno_name(errno());
        handle.handle_bytes = 8;
        handle.handle_type = 1; // FILEID_INO32_GEN
        handle.f_handle = [0; 128];
        handle.f_handle[0] = 2; // inode 2: a root directory on most filesystems
        format!("a made-up handle (name_to_handle_at: {why})")
    };
    // SAFETY: open with a NUL-terminated path.
    let root = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    if root < 0 {
        return Error(format!("open /: {}", errno_name(errno())));
    }
    // SAFETY: open_by_handle_at with our handle and a descriptor we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            root,
            &mut handle as *mut FileHandle,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    let outcome = match check(r) {
        Ok(fd) => {
            close(fd);
            Allowed(format!("opened {source}"))
        }
        Err(e) => past_permission_check(
            e,
            &format!("passed the CAP_DAC_READ_SEARCH check with {source}"),
        ),
    };
    close(root as i64);
    outcome
}

fn socket(domain: i32, kind: i32, protocol: i32, what: &str) -> Outcome {
    // SAFETY: socket with integer arguments; the descriptor is closed.
    let r = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    match check(r as i64) {
        Ok(fd) => {
            close(fd);
            Allowed(format!("opened {what}"))
        }
        Err(e) => Blocked(errno_name(e)),
    }
}

/// `socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)`: forged packets (CAP_NET_RAW).
fn raw_socket() -> Outcome {
    socket(
        libc::AF_INET,
        libc::SOCK_RAW,
        libc::IPPROTO_ICMP,
        "a raw ICMP socket",
    )
}

/// `socket(AF_PACKET, SOCK_RAW, ETH_P_ALL)`: link-level packets.
fn packet_socket() -> Outcome {
    socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        (libc::ETH_P_ALL as u16).to_be() as i32,
        "a packet socket",
    )
}

/// Opening `/proc/sysrq-trigger` for writing; nothing is written (a write
/// would reboot or crash the host).
fn sysrq_trigger() -> Outcome {
    // SAFETY: open with a NUL-terminated path; closed without writing.
    let fd = unsafe { libc::open(c"/proc/sysrq-trigger".as_ptr(), libc::O_WRONLY) };
    match check(fd as i64) {
        Ok(fd) => {
            close(fd);
            Allowed("opened for writing (nothing written)".into())
        }
        Err(e) => Blocked(errno_name(e)),
    }
}

/// Reads the host's marker through `prefix` (e.g. `/proc/1/root`): allowed
/// only if what is read there is the host's token.
fn host_file(marker: Option<&Marker>, prefix: &str) -> Outcome {
    let Some(marker) = marker else {
        return Error("no --marker given".into());
    };
    let path = format!("{prefix}{}", marker.path);
    let mut text = String::new();
    match std::fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut text)) {
        Ok(_) if text.trim() == marker.token => Allowed(format!("read the host's {path}")),
        Ok(_) => Blocked(format!("{path} is not the host's marker")),
        Err(e) => Blocked(format!(
            "{}: {}",
            path,
            e.raw_os_error().map_or_else(|| e.to_string(), errno_name)
        )),
    }
}

/// The classic chroot escape, in a child: chroot into a subdirectory while
/// the working directory stays outside it, climb with `..`, chroot there.
/// In a container that only reaches the root of its own mount namespace.
fn chroot_dotdot(marker: Option<&Marker>) -> Outcome {
    let Some(marker) = marker else {
        return Error("no --marker given".into());
    };
    let dir = "/tmp/caisson-probe-chroot";
    if let Err(o) = mkdir(dir) {
        return o;
    }
    let (jail, dot, dotdot) = (cstr(dir), cstr("."), cstr(".."));
    let target = cstr(&marker.path);
    let token = marker.token.clone();
    // Exit codes: 0 host marker read, 1 marker missing or not the host's,
    // 100 + errno of the first chroot.
    let r = in_child(move || {
        // SAFETY: chroot/chdir/open/read with NUL-terminated paths in a child.
        unsafe {
            if libc::chroot(jail.as_ptr()) != 0 {
                return 100 + errno();
            }
            for _ in 0..64 {
                libc::chdir(dotdot.as_ptr());
            }
            libc::chroot(dot.as_ptr());
            let fd = libc::open(target.as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                return 1;
            }
            let mut buf = [0u8; 256];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n > 0 && buf[..n as usize].trim_ascii() == token.as_bytes() {
                0
            } else {
                1
            }
        }
    });
    match r {
        Ok(0) => Allowed(format!(
            "read the host's {} after chroot and ..",
            marker.path
        )),
        Ok(1) => Blocked(format!(
            "chroot worked, but .. stops at the container's root ({} not reached)",
            marker.path
        )),
        Ok(e) if e >= 100 => Blocked(format!("chroot: {}", errno_name(e - 100))),
        Ok(other) => Error(format!("child ended with {other}")),
        Err(e) => Error(format!("fork: {}", errno_name(e))),
    }
}
