//! The shim's SIGCHLD reaper and its fork lock.
//!
//! Container inits and exec processes are the shim's children: libcontainer
//! builds them in the single-threaded fork server ([`super::forker`]) as
//! siblings of its intermediate process (`CLONE_PARENT`), so they are born
//! children of the shim. The shim is also a **child subreaper**
//! (`PR_SET_CHILD_SUBREAPER`), so anything orphaned below it comes back to it.
//! It must reap all of them.
//!
//! The trap: code in the shim that forks a child and waits for it itself
//! (`Container::start`/`delete`, which run hooks with `Command`, and
//! [`Reaper::run`]) would have its status stolen by a reaper looping on
//! `waitpid(-1)`. Hence one process-wide **fork lock**:
//!
//! * every such call, and every fork-server request, holds the lock for its
//!   whole duration;
//! * the reaper thread, woken by SIGCHLD through a self-pipe (`signal-hook`;
//!   SIGCHLD is never blocked process-wide, since container processes would
//!   inherit the mask), takes the same lock and then loops
//!   `waitpid(-1, WNOHANG)`.
//!
//! A pid whose exit matters is registered with [`ForkGuard::watch`] while the
//! lock that covered its creation is still held, so even a process that exits
//! at once cannot be reaped before its handler exists. Unknown pids (orphans)
//! are reaped silently, except while an [`AdoptionWindow`] is open: a
//! process started by a runtime CLI that detaches (`runc exec --detach`)
//! becomes the shim's child only when the CLI exits, with no lock covering
//! it, so its exit is kept until it is claimed ([`ForkGuard::claim`]).
//!
//! There is one reaper per process ([`Reaper::global`]): several backends in
//! one process (tests) share it, because any `waitpid(-1)` reaps everyone's
//! children.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::SystemTime;

use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::Signals;

/// What the reaper learnt about a process it reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    pub pid: u32,
    /// The raw `waitpid` status.
    pub raw_status: i32,
    pub at: SystemTime,
}

impl Reaped {
    /// Exit code, or 128 + signal number when killed by a signal (the
    /// convention containerd and shells use).
    pub fn code(&self) -> u32 {
        exit_code(self.raw_status)
    }
}

/// Exit code, or 128 + signal number, of a raw wait status.
pub fn exit_code(raw_status: i32) -> u32 {
    if libc::WIFEXITED(raw_status) {
        libc::WEXITSTATUS(raw_status) as u32
    } else if libc::WIFSIGNALED(raw_status) {
        128 + libc::WTERMSIG(raw_status) as u32
    } else {
        // Only exits and deaths are ever reported (no WUNTRACED/WCONTINUED).
        255
    }
}

type ExitHandler = Box<dyn FnOnce(Reaped) + Send>;

/// The process-wide reaper. See the module docs.
pub struct Reaper {
    fork_lock: Mutex<()>,
    watched: Mutex<HashMap<u32, ExitHandler>>,
    adoption: Mutex<Adoption>,
}

/// Exits of unwatched children kept while adoption windows are open.
#[derive(Default)]
struct Adoption {
    windows: usize,
    unclaimed: HashMap<u32, Reaped>,
}

/// While one lives, the exit of a child nobody watches is kept rather than
/// dropped, so that an orphan the shim adopts (a detached CLI's process) can
/// be claimed after the fact. Open it before starting the CLI; what nobody
/// claimed is forgotten when the last window closes.
pub struct AdoptionWindow<'a> {
    reaper: &'a Reaper,
}

impl Drop for AdoptionWindow<'_> {
    fn drop(&mut self) {
        let mut adoption = lock(&self.reaper.adoption);
        adoption.windows -= 1;
        if adoption.windows == 0 {
            adoption.unclaimed.clear();
        }
    }
}

/// Proof that the fork lock is held: no child is reaped while it lives.
pub struct ForkGuard<'a> {
    reaper: &'a Reaper,
    _lock: MutexGuard<'a, ()>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();
static START: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves nothing half-done that
    // the next holder could trip on (a map insert or nothing), so go on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reaper {
    /// The reaper of this process, started on first use: makes the process a
    /// child subreaper, installs the SIGCHLD handler and starts the reaper
    /// thread.
    pub fn global() -> io::Result<&'static Reaper> {
        if let Some(reaper) = REAPER.get() {
            return Ok(reaper);
        }
        let _start = lock(&START);
        if let Some(reaper) = REAPER.get() {
            return Ok(reaper);
        }
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut signals = Signals::new([SIGCHLD])?;
        let reaper = REAPER.get_or_init(|| Reaper {
            fork_lock: Mutex::new(()),
            watched: Mutex::new(HashMap::new()),
            adoption: Mutex::new(Adoption::default()),
        });
        thread::Builder::new()
            .name("caisson-reaper".into())
            .spawn(move || {
                // Children may have exited before the handler was installed.
                reaper.reap();
                for _ in signals.forever() {
                    reaper.reap();
                }
            })?;
        tracing::debug!("child subreaper and SIGCHLD reaper started");
        Ok(reaper)
    }

    /// Opens an [`AdoptionWindow`].
    pub fn adoption_window(&self) -> AdoptionWindow<'_> {
        lock(&self.adoption).windows += 1;
        AdoptionWindow { reaper: self }
    }

    /// Takes the fork lock. Hold it across anything that forks a child and
    /// waits for it by pid, and across writing files that containers being
    /// created could inherit open for writing (ETXTBSY). Keep it short: no
    /// exit is reported while it is held.
    pub fn lock(&self) -> ForkGuard<'_> {
        ForkGuard {
            reaper: self,
            _lock: lock(&self.fork_lock),
        }
    }

    /// Runs `cmd` to completion and collects its output, without racing the
    /// reaper for its exit status (use this instead of `Command::output` in a
    /// process that has a reaper).
    pub fn run(&self, cmd: &mut Command) -> io::Result<Output> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let (tx, rx) = mpsc::channel();
        let mut child = {
            let guard = self.lock();
            let child = cmd.spawn()?;
            guard.watch(child.id(), move |reaped| {
                let _ = tx.send(reaped);
            });
            child
        };
        let mut stderr_pipe = child.stderr.take();
        let stderr_reader = thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(pipe) = stderr_pipe.as_mut() {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        });
        let mut stdout = Vec::new();
        if let Some(pipe) = child.stdout.as_mut() {
            pipe.read_to_end(&mut stdout)?;
        }
        let stderr = stderr_reader.join().unwrap_or_default();
        let reaped = rx
            .recv()
            .map_err(|_| io::Error::other("reaper stopped before the command exited"))?;
        Ok(Output {
            status: ExitStatus::from_raw(reaped.raw_status),
            stdout,
            stderr,
        })
    }

    /// Reaps every child that has exited, then runs the handlers of the
    /// watched ones (outside the fork lock, so a handler may call back into
    /// code that takes it).
    fn reap(&self) {
        let mut done: Vec<(Reaped, Option<ExitHandler>)> = Vec::new();
        {
            let _fork = lock(&self.fork_lock);
            loop {
                let mut status = 0;
                // SAFETY: waitpid writes the status into a valid i32.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid == 0 {
                    break;
                }
                if pid < 0 {
                    if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    break; // ECHILD: no children left
                }
                let reaped = Reaped {
                    pid: pid as u32,
                    raw_status: status,
                    at: SystemTime::now(),
                };
                // Looked up under the fork lock: once it is released the pid
                // may be reused and watched again by a new fork.
                let handler = lock(&self.watched).remove(&reaped.pid);
                if handler.is_none() {
                    tracing::debug!(pid, status = reaped.code(), "reaped an unwatched process");
                    let mut adoption = lock(&self.adoption);
                    if adoption.windows > 0 {
                        adoption.unclaimed.insert(reaped.pid, reaped);
                    }
                }
                done.push((reaped, handler));
            }
        }
        for (reaped, handler) in done {
            if let Some(handler) = handler {
                handler(reaped);
            }
        }
    }
}

impl ForkGuard<'_> {
    /// Calls `on_exit` (from the reaper thread) when `pid` is reaped. `pid`
    /// must be a process created while this guard (or an earlier one that
    /// has not been released since) was held, so it cannot have been reaped
    /// yet.
    pub fn watch(&self, pid: u32, on_exit: impl FnOnce(Reaped) + Send + 'static) {
        // A kept exit under this pid belonged to an earlier process.
        lock(&self.reaper.adoption).unclaimed.remove(&pid);
        lock(&self.reaper.watched).insert(pid, Box::new(on_exit));
    }

    /// For a child adopted while an [`AdoptionWindow`] was open: its exit if
    /// it has been reaped already. `None` means it has not (it cannot be
    /// while this guard lives), so it can be opened by pid and watched.
    pub fn claim(&self, pid: u32) -> Option<Reaped> {
        lock(&self.reaper.adoption).unclaimed.remove(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        // Raw statuses as the kernel encodes them.
        let exited = |code: i32| code << 8;
        let signaled = |sig: i32| sig;
        for (raw, want) in [
            (exited(0), 0),
            (exited(7), 7),
            (exited(255), 255),
            (signaled(libc::SIGKILL), 137),
            (signaled(libc::SIGTERM), 143),
            (
                signaled(libc::SIGRTMIN() + 2),
                128 + libc::SIGRTMIN() as u32 + 2,
            ),
        ] {
            assert_eq!(exit_code(raw), want, "raw status {raw:#x}");
        }
    }
}
