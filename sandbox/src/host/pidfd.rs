//! A process handle that cannot be confused with a later process reusing
//! its pid (`pidfd_open(2)`, `pidfd_send_signal(2)`, Linux ≥ 5.3).
//!
//! Open it while the process cannot have been reaped yet (under the
//! reaper's fork lock, right after creation); from then on a signal sent
//! through it reaches that process or fails with `ESRCH`, never a stranger.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

#[derive(Debug)]
pub struct Pidfd {
    pid: u32,
    fd: OwnedFd,
}

impl Pidfd {
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        let raw_pid =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Pidfd { pid, fd })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal`. `Ok(false)` when the process has already exited
    /// (`ESRCH`): signalling the dead is not an error for a runtime.
    pub fn send_signal(&self, signal: i32) -> io::Result<bool> {
        // SAFETY: the fd is a pidfd owned by self; no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(false)
        } else {
            Err(err)
        }
    }
}

impl Pidfd {
    /// Waits up to `timeout` for the process to exit, without reaping it
    /// (its exit status stays for whoever waits for it). `Ok(true)` once it
    /// has exited.
    pub fn wait_exited(&self, timeout: std::time::Duration) -> io::Result<bool> {
        let until = std::time::Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd, for the duration of the call.
            match unsafe { libc::poll(&mut poll, 1, ms) } {
                n if n > 0 => return Ok(true),
                0 => return Ok(false),
                _ => {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EINTR) {
                        return Err(err);
                    }
                }
            }
        }
    }
}

/// Readable (`poll`) once the process has exited.
impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// For a reactor (tokio's `AsyncFd`) to wait on the exit.
impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_zero_reaches_this_process() {
        let me = Pidfd::open(std::process::id()).expect("pidfd_open of self");
        assert_eq!(me.pid(), std::process::id());
        assert!(me.send_signal(0).expect("signal 0"));
    }

    #[test]
    fn waits_for_an_exit_without_reaping_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawning sleep");
        let pidfd = Pidfd::open(child.id()).expect("pidfd_open");
        let short = std::time::Duration::from_millis(20);
        assert!(!pidfd.wait_exited(short).unwrap(), "sleep 1000 exited");
        child.kill().unwrap();
        assert!(pidfd
            .wait_exited(std::time::Duration::from_secs(10))
            .unwrap());
        // Still unreaped: its status is there for wait().
        let status = child.wait().expect("the exit status was kept");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }

    #[test]
    fn invalid_signal_is_an_error() {
        let me = Pidfd::open(std::process::id()).expect("pidfd_open of self");
        assert!(me.send_signal(1000).is_err());
    }
}
