//! The **fork server**: a single-threaded helper process that makes the
//! calls which `clone` (libcontainer's builds), so that nothing is ever
//! cloned from the multi-threaded shim.
//!
//! Why: libcontainer `clone`s a child that runs Rust code and ends in
//! `std::process::exit`, whose runtime cleanup takes std-internal locks. A
//! lock another thread of the parent held at the moment of the clone is
//! held forever in the child, which then hangs (and the build waiting for it
//! with it). A mutex around our own forks cannot stop threads starting or
//! ending elsewhere; a process with one thread has nobody to hold a lock.
//!
//! * The server is this crate's binary run as `containerd-shim-caisson-v2
//!   fork-server` ([`FORK_SERVER_ACTION`]), spawned with
//!   `std::process::Command` (exec, safe from a threaded process) with one
//!   end of a `SOCK_SEQPACKET` socket pair as fd 3 ([`SERVER_FD`]). It must
//!   never start a thread: it logs to stderr synchronously and handles no
//!   signals.
//! * One request is one message: JSON plus its fds (`SCM_RIGHTS`). One
//!   reply is one message: `{"pid": N}` or `{"error": "…", "kind": "…"}`
//!   ([`Refused`]). Requests are serialised by the reaper's fork lock
//!   ([`ForkServer::call`] takes the guard), so one is in flight at a time.
//! * The server exits at EOF, i.e. when the backend that owns it is dropped
//!   or when it has had nothing to do for [`IDLE_EXIT`] (an idle pod then
//!   costs one process less: the next create or exec starts a new server,
//!   a few ms), and is SIGKILLed when the shim dies (`PR_SET_PDEATHSIG`, set
//!   from a thread that lasts as long as the shim), even in the middle of a
//!   build. If it dies, the next call starts a new one.
//! * A pod's shim needs a server at once (its pause's create), so
//!   `serve` forks its first one with [`prefork`] before it starts any
//!   thread: a fork of a process that has just started costs a fraction of
//!   an exec of the shim binary (loading and relocating it, ~2 ms of CPU in
//!   every pod). Later servers (after an idle exit or a death) are exec'd.
//!   Either way the server is named `fork-server` (its `comm`).
//! * Its pid is watched by the shim's reaper. What the server forks for the
//!   caller should be made a *sibling* of the server (`CLONE_PARENT`): then
//!   it is the shim's own child from the start, reaped by the shim.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError, TryLockError, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::level_filters::LevelFilter;

use super::pidfd::Pidfd;
use super::reaper::{ForkGuard, Reaper};

/// The shim binary's hidden action that runs [`serve`].
pub const FORK_SERVER_ACTION: &str = "fork-server";

/// The fd on which the server finds its end of the socket pair.
pub const SERVER_FD: RawFd = 3;

/// The shim binary's log filter variable (`tracing_subscriber::EnvFilter`).
const LOG_ENV: &str = "CAISSON_SHIM_LOG";

/// Largest message either side sends (requests name files, they do not
/// carry them).
const MAX_MESSAGE: usize = 64 * 1024;

/// Most fds one request carries.
const MAX_FDS: usize = 8;

/// The server [`prefork`] made (our end of its socket, its pid), for the
/// first [`spawn`].
static PREFORKED: Mutex<Option<(OwnedFd, u32)>> = Mutex::new(None);

/// Forks a fork server running `serve` (which takes its socket from
/// [`SERVER_FD`] like an exec'd one) and keeps it for the first
/// [`ForkServer`] to take. The child drops every other fd above stdio (the
/// shim's listening socket is replaced by its own).
///
/// # Safety
///
/// The calling process must have no other thread (the child runs Rust code
/// that may take locks another thread held at the fork), and the calling
/// thread must last as long as the process: the server dies with it
/// (`PR_SET_PDEATHSIG`).
pub unsafe fn prefork(serve: fn() -> Result<(), String>) -> io::Result<()> {
    let (ours, theirs) = server_socketpair()?;
    let parent = libc::getpid();
    match libc::fork() {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(ours);
            let raw = theirs.as_raw_fd();
            let ok = libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == 0
                && libc::getppid() == parent
                && libc::dup2(raw, SERVER_FD) == SERVER_FD;
            if !ok {
                libc::_exit(1);
            }
            if raw != SERVER_FD {
                drop(theirs);
            } else {
                std::mem::forget(theirs);
            }
            name_fork_server();
            let code = match serve() {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "fork server");
                    1
                }
            };
            // Nothing of the shim's to flush or run at exit.
            libc::_exit(code)
        }
        pid => {
            drop(theirs);
            *PREFORKED.lock().unwrap_or_else(PoisonError::into_inner) = Some((ours, pid as u32));
            Ok(())
        }
    }
}

/// The shim's and a server's ends of a new connection.
fn server_socketpair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Names this process `fork-server` (its `comm`, what `ps` and
/// `/proc/<pid>/status` show), exec'd or forked.
pub fn name_fork_server() {
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"fork-server".as_ptr(), 0, 0, 0) };
}

/// Why the server refused or failed a request, as a caller should treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The request (or the spec it names) is wrong.
    Invalid,
    /// What it would create exists.
    Exists,
    /// What it acts on is in the wrong state (`state` says which).
    State,
    /// Anything else.
    Failed,
}

/// A request the server could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    pub kind: RefusalKind,
    /// The cause, in words.
    pub error: String,
    /// For [`RefusalKind::State`]: the state it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl Refused {
    pub fn new(kind: RefusalKind, error: impl std::fmt::Display) -> Refused {
        Refused {
            kind,
            error: error.to_string(),
            state: None,
        }
    }
}

/// One reply: a pid, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Reply {
    Pid { pid: u32 },
    Refused(Refused),
}

/// Why [`ForkServer::call`] has no pid.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The server answered: it could not do it.
    #[error(transparent)]
    Refused(Refused),
    /// No answer: the server could not be started, died, or broke the
    /// protocol. Whether the request was carried out is unknown.
    #[error("fork server: {0}")]
    Lost(io::Error),
}

/// How long a server may wait for a request before the shim lets it go.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

/// The shim's handle on its fork server. See the module docs.
pub struct ForkServer {
    exe: PathBuf,
    slot: Arc<Mutex<Slot>>,
}

/// The running server, if any, and when it last answered.
struct Slot {
    connection: Option<Connection>,
    last_used: Instant,
}

/// A running server: our end of the socket, and its process.
struct Connection {
    socket: OwnedFd,
    process: Pidfd,
}

impl ForkServer {
    /// Starts `exe fork-server` now, so that a bad path fails here rather
    /// than at the first create.
    pub fn start(exe: PathBuf, reaper: &Reaper) -> io::Result<ForkServer> {
        let connection = spawn(&exe, &reaper.lock())?;
        let server = ForkServer {
            exe,
            slot: Arc::new(Mutex::new(Slot {
                connection: Some(connection),
                last_used: Instant::now(),
            })),
        };
        keeper_send(Job::Watch(Arc::downgrade(&server.slot)))?;
        Ok(server)
    }

    /// The pid of the running server, if one is running.
    pub fn pid(&self) -> Option<u32> {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.connection.as_ref().map(|c| c.process.pid())
    }

    /// Sends `request` with `fds` and waits for the reply. Holding the fork
    /// lock (`guard`) keeps what the server forks from being reaped before
    /// the caller watches the returned pid, and keeps requests one at a time.
    pub fn call<R: Serialize>(
        &self,
        guard: &ForkGuard<'_>,
        request: &R,
        fds: &[BorrowedFd<'_>],
    ) -> Result<u32, ForkError> {
        let message = serde_json::to_vec(request)
            .map_err(|e| ForkError::Lost(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(dead) = slot.connection.as_ref().filter(|c| c.exited()) {
            let pid = dead.process.pid();
            tracing::warn!(pid, "the fork server died; starting a new one");
            slot.connection = None;
        }
        let connection = match slot.connection.take() {
            Some(connection) => connection,
            None => {
                let connection = spawn(&self.exe, guard).map_err(ForkError::Lost)?;
                keeper_send(Job::Watch(Arc::downgrade(&self.slot))).map_err(ForkError::Lost)?;
                connection
            }
        };
        let reply = connection.exchange(&message, fds);
        slot.last_used = Instant::now();
        match reply {
            Ok(Reply::Pid { pid }) => {
                slot.connection = Some(connection);
                Ok(pid)
            }
            Ok(Reply::Refused(refused)) => {
                slot.connection = Some(connection);
                Err(ForkError::Refused(refused))
            }
            // The connection is dropped: the server, if alive, sees EOF and
            // exits; the next call starts a new one.
            Err(e) => Err(ForkError::Lost(e)),
        }
    }
}

/// What the keeper thread does: spawn a server, or watch a server's slot
/// to let the server go once idle.
enum Job {
    Spawn(Box<dyn FnOnce() + Send>),
    Watch(Weak<Mutex<Slot>>),
}

/// Hands `job` to the keeper: one thread that lives as long as the process
/// (`PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// and a call may come from a pool thread that ends when idle), spawns the
/// servers and closes the connection of a server idle for [`IDLE_EXIT`].
fn keeper_send(job: Job) -> io::Result<()> {
    static KEEPER: std::sync::OnceLock<Mutex<Sender<Job>>> = std::sync::OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("fork-server-keeper".into())
            .spawn(move || keep(rx))
            .expect("starting the fork server's keeper thread");
        Mutex::new(tx)
    });
    keeper
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(job)
        .map_err(|_| io::Error::other("the fork server's keeper thread is gone"))
}

/// The keeper's loop: sleeps until a job comes or the next watched server
/// may have been idle long enough.
fn keep(rx: Receiver<Job>) {
    let mut watched: Vec<Weak<Mutex<Slot>>> = Vec::new();
    let mut wake: Option<Instant> = None;
    loop {
        let job = match wake {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match job {
            Ok(Job::Spawn(spawn)) => spawn(),
            Ok(Job::Watch(slot)) => {
                if !watched.iter().any(|w| w.ptr_eq(&slot)) {
                    watched.push(slot);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        wake = close_idle(&mut watched, Instant::now());
    }
}

/// Drops the connection of every watched server idle for [`IDLE_EXIT`] (the
/// server reads EOF and exits) and stops watching it; returns when the next
/// one may be. A slot in use (a call holds it, maybe waiting for this very
/// thread to spawn its server) is never waited for.
fn close_idle(watched: &mut Vec<Weak<Mutex<Slot>>>, now: Instant) -> Option<Instant> {
    let mut next: Option<Instant> = None;
    let mut later = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
    watched.retain(|weak| {
        let Some(slot) = weak.upgrade() else {
            return false;
        };
        let mut slot = match slot.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                later(now + IDLE_EXIT);
                return true;
            }
        };
        let Some(connection) = &slot.connection else {
            return false;
        };
        let idle_until = slot.last_used + IDLE_EXIT;
        if idle_until > now {
            later(idle_until);
            return true;
        }
        tracing::debug!(
            pid = connection.process.pid(),
            "fork server idle: letting it go"
        );
        slot.connection = None;
        false
    });
    next
}

/// Spawns `cmd` on the keeper thread (see [`keeper_send`]).
fn spawn_from_lasting_thread(mut cmd: Command) -> io::Result<std::process::Child> {
    let (tx, rx) = std::sync::mpsc::channel();
    keeper_send(Job::Spawn(Box::new(move || {
        let _ = tx.send(cmd.spawn());
    })))?;
    rx.recv()
        .map_err(|_| io::Error::other("the fork server's keeper thread is gone"))?
}

/// Starts a server; its pid is watched (under `guard`) so its exit is
/// logged, not mistaken for anyone else's.
fn spawn(exe: &Path, guard: &ForkGuard<'_>) -> io::Result<Connection> {
    let preforked = PREFORKED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some((socket, pid)) = preforked {
        // Gone already (reaped before anybody watched it): exec one.
        if let Ok(process) = Pidfd::open(pid) {
            watch(guard, pid);
            tracing::debug!(pid, "fork server (forked at the shim's start) taken");
            return Ok(Connection { socket, process });
        }
    }
    let (ours, theirs) = server_socketpair()?;
    // Never on 0..=2, which the child's stdio setup overwrites before the
    // pre_exec hook runs.
    let theirs = if theirs.as_raw_fd() <= 2 {
        let raw = fcntl(&theirs, FcntlArg::F_DUPFD_CLOEXEC(SERVER_FD + 1))?;
        // SAFETY: fcntl just returned this new fd.
        unsafe { OwnedFd::from_raw_fd(raw) }
    } else {
        theirs
    };
    let mut cmd = Command::new(exe);
    cmd.arg(FORK_SERVER_ACTION)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // The server logs (to the shim's stderr) what the shim would log, unless
    // told otherwise.
    if std::env::var_os(LOG_ENV).is_none() {
        cmd.env(LOG_ENV, LevelFilter::current().to_string());
    }
    if exe == Path::new("/proc/self/exe") {
        if let Some(name) = std::env::args_os().next() {
            cmd.arg0(name);
        }
    }
    let raw = theirs.as_raw_fd();
    let shim = std::process::id() as libc::pid_t;
    // SAFETY: the hook only calls async-signal-safe prctl/getppid/fcntl/dup2.
    unsafe {
        cmd.pre_exec(move || {
            // The server dies with the shim, in the middle of a build too:
            // a server that went on building for a dead shim made a task
            // (cgroup, init) after the shim's cleanup had run, which nobody
            // then owned (found by the chaos run). What it was building
            // reads EOF from it and exits.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != shim {
                return Err(io::Error::other("the shim exited"));
            }
            if raw == SERVER_FD {
                let flags = libc::fcntl(raw, libc::F_GETFD);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, SERVER_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Spawned under the fork lock: Command waits for a child whose exec
    // failed, and the reaper must not take that status first.
    let child = spawn_from_lasting_thread(cmd)
        .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", exe.display())))?;
    drop(theirs);
    let pid = child.id();
    // Reaped by the reaper, never waited for here.
    drop(child);
    let process = Pidfd::open(pid)?;
    watch(guard, pid);
    tracing::debug!(pid, exe = %exe.display(), "fork server started");
    Ok(Connection {
        socket: ours,
        process,
    })
}

/// Has the reaper log the server's exit.
fn watch(guard: &ForkGuard<'_>, pid: u32) {
    guard.watch(pid, move |reaped| {
        let status = reaped.code();
        if status == 0 {
            tracing::debug!(pid, "fork server exited");
        } else {
            tracing::warn!(pid, status, "fork server died");
        }
    });
}

impl Connection {
    fn exited(&self) -> bool {
        let mut fds = [PollFd::new(self.process.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    fn exchange(&self, message: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<Reply> {
        send(self.socket.as_fd(), message, fds)?;
        // The server's end is also held by container inits it forked (they
        // keep inherited fds until they exec), so its death does not always
        // close the socket: watch the process too.
        loop {
            let mut poll_fds = [
                PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.process.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut poll_fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            if ready(&poll_fds[0]) {
                break;
            }
            if ready(&poll_fds[1]) {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("the server (pid {}) died", self.process.pid()),
                ));
            }
        }
        let Some((reply, extra)) = receive(self.socket.as_fd())? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed its socket",
            ));
        };
        if !extra.is_empty() {
            return Err(protocol("a reply carried fds"));
        }
        serde_json::from_slice(&reply).map_err(|e| protocol(format!("bad reply: {e}")))
    }
}

fn protocol(reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_string())
}

/// Sends one message with `fds`.
fn send(socket: BorrowedFd<'_>, message: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(message)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and its fds; `None` at EOF.
fn receive(socket: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, flags, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(msg) => {
                let mut fds = Vec::new();
                for message in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(received) = message {
                        // SAFETY: SCM_RIGHTS just installed these fds here.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                break (msg.bytes, msg.flags, fds);
            }
        }
    };
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(protocol("message or fds truncated"));
    }
    if len == 0 {
        return Ok(None);
    }
    buf.truncate(len);
    Ok(Some((buf, fds)))
}

/// The server's loop: takes its socket from fd [`SERVER_FD`], hands each
/// request and its fds to `handle`, replies with the pid it returns, and
/// returns at EOF. Runs in the single-threaded `fork-server` process.
pub fn serve<R: DeserializeOwned>(
    mut handle: impl FnMut(R, Vec<OwnedFd>) -> Result<u32, Refused>,
) -> Result<(), String> {
    // SAFETY: fstat only reads the fd's metadata.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(SERVER_FD, &mut stat) } != 0
        || stat.st_mode & libc::S_IFMT != libc::S_IFSOCK
    {
        return Err(format!(
            "fd {SERVER_FD} is not a socket: {FORK_SERVER_ACTION} is started by the shim"
        ));
    }
    // SAFETY: fd 3 is the socket the shim passed; nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(SERVER_FD) };
    // Hooks the server runs (exec'd) must not keep it.
    fcntl(&socket, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| e.to_string())?;
    tracing::debug!(pid = std::process::id(), "fork server ready");
    loop {
        let (message, fds) = match receive(socket.as_fd()) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("receiving a request: {e}")),
        };
        let reply = match serde_json::from_slice::<R>(&message) {
            Ok(request) => match handle(request, fds) {
                Ok(pid) => Reply::Pid { pid },
                Err(refused) => Reply::Refused(refused),
            },
            Err(e) => Reply::Refused(Refused::new(
                RefusalKind::Invalid,
                format!("bad request: {e}"),
            )),
        };
        let reply = serde_json::to_vec(&reply).map_err(|e| e.to_string())?;
        match send(socket.as_fd(), &reply, &[]) {
            Ok(()) => {}
            // The shim is gone.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => return Ok(()),
            Err(e) => return Err(format!("replying: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_the_documented_json() {
        for (reply, json) in [
            (Reply::Pid { pid: 42 }, r#"{"pid":42}"#),
            (
                Reply::Refused(Refused::new(RefusalKind::Exists, "container exists")),
                r#"{"kind":"exists","error":"container exists"}"#,
            ),
            (
                Reply::Refused(Refused {
                    kind: RefusalKind::State,
                    error: "incorrect status".into(),
                    state: Some("stopped".into()),
                }),
                r#"{"kind":"state","error":"incorrect status","state":"stopped"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&reply).unwrap(), json);
            assert_eq!(serde_json::from_str::<Reply>(json).unwrap(), reply);
        }
    }

    #[test]
    fn messages_keep_their_bounds_and_carry_fds() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send(a.as_fd(), b"one", &[w.as_fd(), r.as_fd()]).unwrap();
        send(a.as_fd(), b"two", &[]).unwrap();
        let (first, fds) = receive(b.as_fd()).unwrap().unwrap();
        assert_eq!((first.as_slice(), fds.len()), (&b"one"[..], 2));
        // The received write end feeds the original read end.
        nix::unistd::write(&fds[0], b"x").unwrap();
        let mut byte = [0u8; 1];
        nix::unistd::read(&r, &mut byte).unwrap();
        assert_eq!(&byte, b"x");
        let (second, fds) = receive(b.as_fd()).unwrap().unwrap();
        assert_eq!((second.as_slice(), fds.len()), (&b"two"[..], 0));
        drop(a);
        assert!(receive(b.as_fd()).unwrap().is_none());
    }
}
