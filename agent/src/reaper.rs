//! PID 1's duty: reap every child and orphan. SIGCHLD is blocked in every
//! thread (before any starts) and read from a signalfd; each sweep of
//! `waitpid(-1, WNOHANG)` runs under the fork guard so that it never takes
//! the status of a process libcontainer is waiting for.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::agent::Agent;
use crate::log::log;

/// Blocks SIGCHLD in the calling thread, and so in every thread it starts.
pub fn block_sigchld() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    if let Err(e) = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        log!("blocking SIGCHLD: {e}");
    }
}

/// Reaps until the guest powers off; `on_exit` gets the agent's processes.
pub fn run(agent: Arc<Agent>) {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC);
    if let Err(e) = &sfd {
        log!("signalfd: {e}; reaping every 100 ms instead");
    }
    loop {
        match &sfd {
            Ok(sfd) => {
                let mut pfd = libc::pollfd {
                    fd: sfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one valid pollfd. The timeout is a backstop.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
                while let Ok(Some(_)) = sfd.read_signal() {}
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
        let exits = {
            let _guard = agent.fork_guard();
            sweep()
        };
        for (pid, status) in exits {
            agent.on_exit(pid, status);
        }
    }
}

/// Every exited child's pid and status (code, or 128 + signal).
fn sweep() -> Vec<(i32, u32)> {
    let mut exits = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exits.push((pid.as_raw(), code as u32)),
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                exits.push((pid.as_raw(), 128 + signal as u32))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return exits,
            Ok(_) => {}
        }
    }
}
