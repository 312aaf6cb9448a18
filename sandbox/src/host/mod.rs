//! Host-process plumbing for backends whose containers are host processes
//! (native and hardened): everything the shim must do *as the parent* of
//! the container processes that libcontainer forks.
//!
//! * [`reaper`]: the process-wide SIGCHLD reaper (the shim is a child
//!   subreaper) and the **fork lock** that keeps it from stealing the exit
//!   status of a process libcontainer (or anyone else) waits for itself.
//! * [`pidfd`]: signalling a process through a pidfd, immune to pid reuse.
//! * [`stdio`]: opening containerd's stdio names (FIFOs, `file://` URIs,
//!   none) for a container process, keeping FIFOs usable before the
//!   caller's end connects.
//! * [`attach`]: a task's live output for attached clients (CRI Attach),
//!   on a socket in its bundle.
//! * [`console`]: receiving a container's pty master from a console socket,
//!   pumping it to and from the stdio FIFOs, resizing it.
//! * [`executor`]: a libcontainer executor that gives the payload a clean
//!   signal state (the shim ignores SIGPIPE; an exec'd program would inherit
//!   that).
//! * [`forker`]: the single-threaded fork server that makes libcontainer's
//!   `clone` calls on the shim's behalf (a child cloned from a threaded
//!   process can deadlock on a lock another thread held).
//! * [`hugetlb`]: hugepage limits this node cannot enforce, skipped (0)
//!   or refused (positive) before libcontainer sees them.
//! * [`mountinfo`]: `/proc/self/mountinfo`, parsed and unescaped.
//! * A pod's **user namespace**, shared by the hardened backend (every pod,
//!   from its pool) and the native one (`hostUsers: false` pods, with
//!   kubelet's mappings): [`userns`] makes one from explicit mappings and
//!   holds it by fd, [`idmap`] makes a rootfs (and bind sources) appear
//!   through it, [`userns_spec`] rewrites a task's spec to join it, and
//!   [`bind_relay`] brings bind sources its root cannot reach into the
//!   bundle while the task is created.
//! * [`lock_exclusive`]: an exclusive `flock` on a lock file.
//! * `open_dir_nofollow`: a directory itself, never through a symlink.
//! * `proc_stat`: a process's `/proc/<pid>/stat` fields.

pub mod attach;
pub mod bind_relay;
pub mod cgroups;
pub mod console;
pub mod crilog;
pub mod executor;
pub mod forker;
pub mod hugetlb;
pub mod idmap;
pub mod mount_fd;
pub mod mountinfo;
pub mod pidfd;
pub mod pod_view;
pub mod reaper;
pub mod seccomp_cache;
pub mod stdio;
pub mod userns;
pub mod userns_spec;

/// Opens `path` (creating it 0600) and takes an exclusive `flock` on it,
/// held until the returned guard drops.
pub fn lock_exclusive(path: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("locking {}: {e}", path.display()))
}

/// Makes `dir` (or checks the one there is) a real directory owned by
/// host root with mode 0700: made 0700 from the start, an existing one
/// opened without following a symlink and repaired through its fd.
pub(crate) fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let file = crate::host::open_dir_nofollow(dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("not a directory of its own (a symlink?): {e}"),
        )
    })?;
    let meta = file.metadata()?;
    if meta.uid() != 0 || meta.gid() != 0 {
        std::os::unix::fs::fchown(&file, Some(0), Some(0))?;
    }
    if meta.mode() & 0o7777 != 0o700 {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Opens the directory `path` read-only, refusing a symlink as its last
/// component (`O_DIRECTORY | O_NOFOLLOW`; std adds `O_CLOEXEC`): changes
/// through the fd reach the directory checked, not one swapped in later.
pub(crate) fn open_dir_nofollow(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces and parentheses: everything up to the last `)` is skipped), so
/// `[0]` is field 3 (state), `[1]` the parent pid, `[19]` the start time.
pub(crate) fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_stat_fields_start_after_the_command_name() {
        let fields = super::proc_stat(std::process::id()).unwrap();
        assert_eq!(fields[1], std::os::unix::process::parent_id().to_string());
        assert!(fields[19].parse::<u64>().is_ok(), "{fields:?}");
        assert!(super::proc_stat(u32::MAX).is_none());
    }
}
