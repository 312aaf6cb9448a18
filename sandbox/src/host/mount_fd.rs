//! The two calls of the new mount API the host code makes:
//! `open_tree(OPEN_TREE_CLONE)` (a detached copy of a mount tree, held by an
//! fd) and `move_mount` (attaching such a copy at a path). Used for idmapped
//! rootfs clones ([`super::idmap`]) and a build's view of the node's mounts
//! ([`super::pod_view`]).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `path` as a C string.
pub(crate) fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("path has a NUL byte"))
}

/// A detached copy of the mount at `dirfd` + `c_path` (`flags` for
/// open_tree besides the clone, e.g. `AT_EMPTY_PATH`), with every mount
/// below it when `recursive`. The copy is gone when the fd is closed
/// unless it was attached ([`attach`]).
pub(crate) fn clone_tree(
    dirfd: libc::c_int,
    c_path: &CStr,
    flags: libc::c_uint,
    recursive: bool,
) -> io::Result<OwnedFd> {
    let recursive = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: a valid C string; returns a new fd or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dirfd,
            c_path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | recursive | flags,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just returned by open_tree, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as i32) })
}

/// Attaches a detached mount `tree` at `target`.
pub(crate) fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let c = cpath(target)?;
    // SAFETY: valid fds and C strings.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
