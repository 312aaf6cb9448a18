//! Thin helpers over raw syscalls: results as `Result<i64, errno>`, errno
//! names, C strings.

use std::ffi::CString;

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A libc return value (`-1` and `errno` on failure) as a result.
pub fn check(ret: i64) -> Result<i64, i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// `errno`'s symbolic name, e.g. `EPERM` (or `errno 123`).
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSUP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::ESTALE => "ESTALE",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENOKEY => "ENOKEY",
        libc::EDQUOT => "EDQUOT",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// `s` as a C string (the probe only passes its own literals and paths).
pub fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL inside a path")
}

/// Closes a descriptor the probe made.
pub fn close(fd: i64) {
    // SAFETY: closing a descriptor this process owns and no longer uses.
    unsafe { libc::close(fd as i32) };
}

/// Forks; the child runs `f` and exits with its return value (0..=255).
/// Returns the child's exit code, or the signal that killed it as `-sig`.
/// Only for a single-threaded caller, and `f` must only make syscalls.
pub fn in_child(f: impl FnOnce() -> i32) -> Result<i32, i32> {
    // SAFETY: fork in a single-threaded process; the child only makes raw
    // syscalls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(errno());
    }
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    wait_child(pid)
}

/// Waits for `pid`: its exit code, or `-signal`.
pub fn wait_child(pid: i32) -> Result<i32, i32> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && errno() != libc::EINTR {
            return Err(errno());
        }
    }
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Ok(-libc::WTERMSIG(status))
    }
}
