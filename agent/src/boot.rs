//! What the agent does as the guest's `/init` before it serves: the
//! kernel's filesystems, cgroup v2 with every controller delegated, the
//! kernel modules the initramfs carries for the running kernel, and the
//! host's shared directory.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

use crate::log::log;

/// Where the host's shared directory (virtio-9p) is mounted.
pub const SHARED_DIR: &str = "/run/caisson/shared";
/// The 9p mount tag the host gives the shared directory.
const SHARED_TAG: &str = "caisson-shared";
/// Where the initramfs keeps each kernel release's modules:
/// `<MODULES_DIR>/<release>/` holds them and their list, `caisson.order`
/// (one file name per line, in dependency order). One initramfs serves
/// several kernels: a kernel with its drivers built in has no list.
const MODULES_DIR: &str = "/lib/modules";
const MODULE_ORDER: &str = "caisson.order";

/// `/dev`, then stdin/stdout/stderr on the console: the kernel starts
/// `/init` without them when the initramfs has no `/dev/console`, and every
/// later open would otherwise land on fds 0-2.
pub fn early() {
    let _ = fs::create_dir_all("/dev");
    let _ = mount(
        Some("devtmpfs"),
        "/dev",
        Some("devtmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
    for fd in 0..=2 {
        // SAFETY: F_GETFD on a number only queries it.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let console = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
            .or_else(|_| {
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
            });
        if let Ok(file) = console {
            // SAFETY: dup2 onto a free standard fd; `file` closes its own.
            unsafe { libc::dup2(file.as_raw_fd(), fd) };
        }
    }
}

/// The filesystems every container setup needs.
pub fn mount_filesystems() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", "proc", nodev, None),
        ("sysfs", "/sys", "sysfs", nodev, None),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, None),
    ];
    for (source, target, fstype, flags, data) in table {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
            log!("mount {fstype} on {target}: {e}");
        }
    }
    // /dev/ptmx must be the new devpts instance's.
    let _ = fs::remove_file("/dev/ptmx");
    if let Err(e) = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx") {
        log!("/dev/ptmx: {e}");
    }
    enable_controllers(Path::new("/sys/fs/cgroup"));
}

/// Delegates every available controller from the cgroup root.
fn enable_controllers(root: &Path) {
    let Ok(available) = fs::read_to_string(root.join("cgroup.controllers")) else {
        log!("no cgroup.controllers under {}", root.display());
        return;
    };
    for controller in available.split_whitespace() {
        if let Err(e) = fs::write(
            root.join("cgroup.subtree_control"),
            format!("+{controller}"),
        ) {
            log!("enabling cgroup controller {controller}: {e}");
        }
    }
}

/// Loads the modules the running kernel's [`MODULE_ORDER`] lists, in
/// order. A module already there (EEXIST) is fine; a failure is logged and
/// the rest still load. No list for this release: nothing to load (its
/// drivers are built in).
pub fn load_modules() {
    let release = crate::agent::kernel_release();
    let dir = Path::new(MODULES_DIR).join(&release);
    let Ok(order) = fs::read_to_string(dir.join(MODULE_ORDER)) else {
        log!("no module list for kernel {release}: loading no modules");
        return;
    };
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                log!("module {}: {e}", path.display());
                continue;
            }
        };
        // SAFETY: finit_module with an open fd and an empty, NUL-terminated
        // parameter string.
        let r = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                c"".as_ptr(),
                0 as libc::c_int,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                log!("loading module {name}: {e}");
            }
        }
    }
}

/// Mounts the host's shared directory (virtio-9p) at [`SHARED_DIR`],
/// retrying for a few seconds while the 9p transport's device probes.
pub fn mount_shared() {
    if let Err(e) = fs::create_dir_all(SHARED_DIR) {
        log!("{SHARED_DIR}: {e}");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match mount(
            Some(SHARED_TAG),
            SHARED_DIR,
            Some("9p"),
            // Not nosuid: a container's setuid binaries work as on the host.
            // cache=mmap: shared writable mappings (SQLite's WAL, LMDB) need
            // it, and it stays coherent with the host (measured: no slower
            // than cache=none; see the README's microvm section).
            MsFlags::MS_NODEV,
            Some("trans=virtio,version=9p2000.L,msize=524288,cache=mmap"),
        ) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                log!("mounting the shared directory ({SHARED_TAG}, 9p): {e}");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Brings `lo` up in the calling thread's network namespace (at boot, the
/// guest's own).
pub fn bring_up_loopback() {
    // SAFETY: a datagram socket for the interface ioctls, closed below;
    // the ifreq is zeroed, named "lo", and only its flags are used.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            log!("socket for lo: {}", std::io::Error::last_os_error());
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr) != 0 {
                log!("bringing lo up: {}", std::io::Error::last_os_error());
            }
        }
        libc::close(sock);
    }
}

/// Leaves the initramfs: its root is the kernel's `rootfs`, which
/// `pivot_root(2)` refuses to put away (EINVAL), and libcontainer jails each
/// container with `pivot_root` (`no_pivot`'s chroot would be escapable).
/// So the agent moves itself onto a tmpfs, as `switch_root` does: a tmpfs
/// at `/.root`, every mount made so far moved under it (submounts follow),
/// then the tmpfs moved onto `/` and made the root with `chroot`. Call it
/// once the modules are loaded (their files stay behind, unreachable).
pub fn switch_root() {
    const NEW_ROOT: &str = "/.root";
    let result = (|| -> Result<(), String> {
        fs::create_dir_all(NEW_ROOT).map_err(|e| format!("{NEW_ROOT}: {e}"))?;
        mount(
            Some("rootfs"),
            NEW_ROOT,
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        )
        .map_err(|e| format!("tmpfs at {NEW_ROOT}: {e}"))?;
        for dir in ["/dev", "/proc", "/sys", "/run", "/tmp", "/etc", "/lib"] {
            let target = format!("{NEW_ROOT}{dir}");
            fs::create_dir_all(&target).map_err(|e| format!("{target}: {e}"))?;
            if is_mount_point(dir) {
                mount(
                    Some(dir),
                    target.as_str(),
                    None::<&str>,
                    MsFlags::MS_MOVE,
                    None::<&str>,
                )
                .map_err(|e| format!("moving {dir}: {e}"))?;
            }
        }
        std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| format!("moving {NEW_ROOT} onto /: {e}"))?;
        nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
        std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
        Ok(())
    })();
    if let Err(e) = result {
        log!("leaving the initramfs: {e}; containers will not start (pivot_root)");
    }
}

/// `path` is the root of a mount (its device differs from its parent's).
fn is_mount_point(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(m), Ok(p)) => m.dev() != p.dev(),
        _ => false,
    }
}
