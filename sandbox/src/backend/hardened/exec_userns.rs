//! Exec processes of a hardened pod enter its user namespace themselves.
//!
//! libcontainer 0.7's tenant (exec) builder joins the container's
//! namespaces except the user namespace (its list has no `user`), so an exec
//! would run as the *host's* uid 0. The hardened backend therefore lets the
//! exec process reach the executor with `CAP_SYS_ADMIN` (and nothing of the
//! user's program has run yet), and the executor calls [`enter_for_exec`]
//! first: it joins the pod's user namespace, becomes the process's user
//! inside it, and drops to the container's hardened capabilities, carried
//! in [`EXEC_USERNS_ANNOTATION`]. The seccomp filter and Landlock follow,
//! as for every exec.
//!
//! Nothing of this reads the container's files: by the time the executor
//! runs, the process is in the container's mount namespace, whose `/proc`
//! the pod controls (a volume may be mounted over it). The fork server
//! opens the pod's user namespace from the host's `/proc` before the build
//! ([`BuildScope::exec`]), checks its inode against the one the backend
//! recorded, and leaves the fd in a static the exec process inherits (it is
//! a copy of the fork server); the executor joins that fd unconditionally,
//! checks its inode again and closes it. An exec of a hardened container
//! without that fd, or a failure of any step, aborts the exec before the
//! user's program runs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};

use libcontainer::oci_spec::runtime::{LinuxCapabilities, Spec};

/// Annotation (on a container's spec) with the capabilities, as JSON
/// `LinuxCapabilities`, its exec processes end with after entering the
/// pod's user namespace. Set only by the hardened backend: incoming specs
/// have it removed ([`crate::backend::native::INTERNAL_ANNOTATIONS`]).
pub const EXEC_USERNS_ANNOTATION: &str = "io.caisson.exec-userns-caps";

const BUILD_NONE: u8 = 0;
const BUILD_INIT: u8 = 1;
const BUILD_EXEC: u8 = 2;

/// What the fork server is building right now, read by the executor in the
/// built process (a copy of the single-threaded server, so it sees the
/// values set before the build).
static BUILD_KIND: AtomicU8 = AtomicU8::new(BUILD_NONE);
/// For an exec of a hardened container: an fd of the pod's user namespace
/// (-1: none) and its inode.
static EXEC_USERNS_FD: AtomicI32 = AtomicI32::new(-1);
static EXEC_USERNS_INODE: AtomicU64 = AtomicU64::new(0);

/// Whether the process running this is an exec process the fork server
/// built (not an init, nor anything outside a build).
pub(crate) fn building_exec() -> bool {
    BUILD_KIND.load(Ordering::SeqCst) == BUILD_EXEC
}

/// Marks the fork server's current build (init or exec, with the pod's
/// user namespace for a hardened exec) until dropped.
pub(crate) struct BuildScope {
    _userns: Option<OwnedFd>,
}

impl BuildScope {
    /// An init process: libcontainer puts it in the spec's user namespace.
    pub(crate) fn init() -> BuildScope {
        // No exec's namespace lingers into an init build.
        EXEC_USERNS_FD.store(-1, Ordering::SeqCst);
        EXEC_USERNS_INODE.store(0, Ordering::SeqCst);
        BUILD_KIND.store(BUILD_INIT, Ordering::SeqCst);
        BuildScope { _userns: None }
    }

    /// An exec process; `userns` (an fd of the pod's user namespace, opened
    /// close-on-exec, and its inode) for a hardened container.
    pub(crate) fn exec(userns: Option<(OwnedFd, u64)>) -> BuildScope {
        let (fd, inode) = match &userns {
            Some((fd, inode)) => (fd.as_raw_fd(), *inode),
            None => (-1, 0),
        };
        EXEC_USERNS_FD.store(fd, Ordering::SeqCst);
        EXEC_USERNS_INODE.store(inode, Ordering::SeqCst);
        BUILD_KIND.store(BUILD_EXEC, Ordering::SeqCst);
        BuildScope {
            _userns: userns.map(|(fd, _)| fd),
        }
    }
}

impl Drop for BuildScope {
    fn drop(&mut self) {
        BUILD_KIND.store(BUILD_NONE, Ordering::SeqCst);
        EXEC_USERNS_FD.store(-1, Ordering::SeqCst);
        EXEC_USERNS_INODE.store(0, Ordering::SeqCst);
    }
}

/// Lets an exec process reach the executor able to join the pod's user
/// namespace: `CAP_SYS_ADMIN` added to its bounding, effective and
/// permitted sets (it drops to the container's own, annotated, right after
/// joining, before the user's program runs).
pub(crate) fn allow_joining(process: &mut libcontainer::oci_spec::runtime::Process) {
    use libcontainer::oci_spec::runtime::Capability;
    crate::backend::native::raise_capabilities(process, &[Capability::SysAdmin]);
}

/// In the process libcontainer is about to `execve`: for an exec of a
/// hardened container, enters the pod's user namespace (the fd the fork
/// server opened), takes the process's ids inside it and drops to the
/// annotated capabilities. Does nothing for an init process or an exec of
/// a container without [`EXEC_USERNS_ANNOTATION`]; fails (and the exec
/// with it) when the two disagree.
pub fn enter_for_exec(spec: &Spec) -> Result<(), String> {
    let annotated = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(EXEC_USERNS_ANNOTATION));
    let kind = BUILD_KIND.load(Ordering::SeqCst);
    let fd = EXEC_USERNS_FD.load(Ordering::SeqCst);
    let json = match (kind, annotated, fd) {
        (BUILD_INIT, _, _) | (BUILD_EXEC | BUILD_NONE, None, -1) => return Ok(()),
        (BUILD_EXEC, Some(json), fd) if fd >= 0 => json,
        (_, Some(_), _) => {
            return Err(
                "an exec of a hardened container without the pod's user namespace: \
                 refusing to run it in the host's"
                    .into(),
            )
        }
        (_, None, _) => {
            return Err(format!(
            "the pod's user namespace was given for a container without {EXEC_USERNS_ANNOTATION}"
        ))
        }
    };
    let caps: LinuxCapabilities =
        serde_json::from_str(json).map_err(|e| format!("{EXEC_USERNS_ANNOTATION}: {e}"))?;
    let inode = EXEC_USERNS_INODE.load(Ordering::SeqCst);
    let joined = join_userns_fd(fd, inode);
    // SAFETY: this process's copy of the server's fd, not used again.
    unsafe { libc::close(fd) };
    joined?;
    let user = spec
        .process()
        .as_ref()
        .map(|p| p.user().clone())
        .unwrap_or_default();
    let groups: Vec<libc::gid_t> = user.additional_gids().clone().unwrap_or_default();
    let os_error = |what: &str| {
        format!(
            "{what} in the pod's user namespace: {}",
            std::io::Error::last_os_error()
        )
    };
    // SAFETY: plain syscalls on integers and a valid slice, in the
    // single-threaded exec process.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return Err(os_error("setgroups"));
        }
        // Keep the (full, namespaced) capabilities across the uid change;
        // they are dropped to the container's right after.
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        if libc::syscall(libc::SYS_setresgid, user.gid(), user.gid(), user.gid()) != 0 {
            return Err(os_error(&format!("setresgid({})", user.gid())));
        }
        if libc::syscall(libc::SYS_setresuid, user.uid(), user.uid(), user.uid()) != 0 {
            return Err(os_error(&format!("setresuid({})", user.uid())));
        }
    }
    let syscall = libcontainer::syscall::syscall::create_syscall();
    libcontainer::capabilities::drop_privileges(&caps, syscall.as_ref())
        .map_err(|e| format!("dropping capabilities: {e}"))?;
    Ok(())
}

/// `setns` into the user namespace of `fd` after checking it is the one
/// with `inode`.
fn join_userns_fd(fd: libc::c_int, inode: u64) -> Result<(), String> {
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(format!(
            "the pod's user namespace (fd {fd}): {}",
            std::io::Error::last_os_error()
        ));
    }
    if st.st_ino != inode {
        return Err(format!(
            "fd {fd} is not the pod's user namespace (inode {} instead of {inode})",
            st.st_ino
        ));
    }
    // SAFETY: setns on an fd this process holds.
    if unsafe { libc::setns(fd, libc::CLONE_NEWUSER) } != 0 {
        return Err(format!(
            "entering the pod's user namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotated: bool) -> Spec {
        let mut spec = Spec::default();
        if annotated {
            spec.set_annotations(Some(
                [(EXEC_USERNS_ANNOTATION.to_string(), "{}".to_string())].into(),
            ));
        }
        spec
    }

    /// Without the fork server's fd an annotated exec fails before touching
    /// anything: it never falls back to reading the container's /proc.
    #[test]
    fn an_exec_of_a_hardened_container_fails_closed_without_the_pods_userns() {
        {
            let _scope = BuildScope::exec(None);
            let err = enter_for_exec(&spec(true)).unwrap_err();
            assert!(err.contains("without the pod's user namespace"), "{err}");
            enter_for_exec(&spec(false)).expect("a native exec");
        }
        // Outside any build (not the fork server): annotated is refused too.
        assert!(enter_for_exec(&spec(true)).is_err());
        {
            let _scope = BuildScope::init();
            enter_for_exec(&spec(true)).expect("an init is put in the userns by libcontainer");
        }
        // An fd whose inode is not the recorded one is never joined.
        // (As in the exec process, the fd is the process's own copy, which
        // enter_for_exec closes: a raw one here.)
        let fd =
            std::os::fd::IntoRawFd::into_raw_fd(std::fs::File::open("/proc/self/ns/user").unwrap());
        {
            EXEC_USERNS_FD.store(fd, Ordering::SeqCst);
            EXEC_USERNS_INODE.store(1, Ordering::SeqCst);
            BUILD_KIND.store(BUILD_EXEC, Ordering::SeqCst);
            let _scope = BuildScope { _userns: None };
            let err = enter_for_exec(&spec(true)).unwrap_err();
            assert!(err.contains("is not the pod's user namespace"), "{err}");
        }
        assert_eq!(EXEC_USERNS_FD.load(Ordering::SeqCst), -1);
    }
}
