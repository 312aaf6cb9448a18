//! A container process's stdio, from the names containerd gives.
//!
//! Each stream is named by a string ([`StdioTarget::parse`]): a FIFO path
//! (containerd made the FIFO and connects its own end when it likes), a
//! `file://<absolute path>` URI (append, created if missing), a
//! `crilog://<absolute path>` URI (CRI-format log records written by the
//! shim, see [`super::crilog`]), or `""` for none (`/dev/null`).
//!
//! FIFOs are opened so that the container never depends on when the caller
//! connects (containerd's runc shim does the same):
//! * stdout/stderr: the shim first opens the FIFO `O_RDONLY|O_NONBLOCK` and
//!   keeps that reader while the process lives, then opens `O_WRONLY` (which
//!   no longer blocks) for the container. The container thus never gets
//!   SIGPIPE/EPIPE before, or between, the caller's readers.
//! * stdin: the shim opens the FIFO `O_RDWR` and keeps it as a keep-alive
//!   writer, then opens `O_RDONLY` for the container. The process does not
//!   see EOF before the caller's writer connects; dropping the keep-alive
//!   ([`HeldStdio::close_stdin`]) lets it see EOF once the caller's writer
//!   closes too.
//!
//! With a terminal the container gets a pty instead (see
//! [`super::console`]); the shim then pumps stdin FIFO → pty master →
//! stdout FIFO, with the same FIFO rules ([`TerminalStdio`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use super::attach::AttachListener;
use super::console::ConsoleSocket;
use super::crilog::{spawn_reader, CriLog};
use crate::backend::Stdio;

/// Where one stdio stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdioTarget {
    /// `""`: `/dev/null`.
    Null,
    /// `file://<path>`: a regular file, appended to.
    File(PathBuf),
    /// Any other absolute path: a FIFO (or an existing file).
    Fifo(PathBuf),
    /// `crilog://<path>`: CRI log records, written by the shim.
    CriLog(PathBuf),
}

fn invalid(what: &str, reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {reason}"))
}

fn context(what: &str, path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

impl StdioTarget {
    /// Parses a containerd stdio name; `what` names the stream in errors.
    pub fn parse(what: &str, name: &str) -> io::Result<StdioTarget> {
        if name.is_empty() {
            return Ok(StdioTarget::Null);
        }
        if let Some(path) = name.strip_prefix("file://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(invalid(
                    what,
                    format!("{name:?} is not an absolute file:// URI"),
                ));
            }
            return Ok(StdioTarget::File(path));
        }
        if let Some(path) = name.strip_prefix("crilog://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(invalid(
                    what,
                    format!("{name:?} is not an absolute crilog:// URI"),
                ));
            }
            return Ok(StdioTarget::CriLog(path));
        }
        if let Some((scheme, _)) = name.split_once("://") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{what}: {scheme}:// stdio ({name:?}) is not supported"),
            ));
        }
        let path = PathBuf::from(name);
        if !path.is_absolute() {
            return Err(invalid(what, format!("{name:?} is not an absolute path")));
        }
        Ok(StdioTarget::Fifo(path))
    }
}

/// The fds a process is given as its stdin, stdout and stderr.
#[derive(Debug)]
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What the shim holds for a process's stdio while the process lives:
/// FIFO readers, the stdin keep-alive, and for a terminal the pumps and the
/// pty master. Dropping it releases everything (and stops the pumps).
#[derive(Debug, Default)]
pub struct HeldStdio {
    stdin_keepalive: Option<OwnedFd>,
    fifo_readers: Vec<OwnedFd>,
    terminal: Option<TerminalPumps>,
    /// CRI log files this process writes (through reader threads).
    logs: Vec<Arc<CriLog>>,
    /// The attach socket serving that output live.
    attach: Option<AttachListener>,
}

impl HeldStdio {
    /// Drops the stdin keep-alive writer: the process sees EOF once the
    /// caller's writer (if any) closes too.
    pub fn close_stdin(&mut self) {
        self.stdin_keepalive = None;
        if let Some(terminal) = &mut self.terminal {
            terminal.stdin_keepalive = None;
        }
    }

    /// Starts new log files at the CRI log paths (after kubelet rotated them).
    pub fn reopen_logs(&self) -> io::Result<()> {
        for log in &self.logs {
            log.reopen()?;
        }
        Ok(())
    }

    /// The pty master, when the process has a terminal.
    pub fn pty_master(&self) -> Option<BorrowedFd<'_>> {
        self.terminal.as_ref().map(|t| t.master.as_fd())
    }
}

/// `/dev/null` as a process's stdin, stdout and stderr (a runtime CLI's,
/// when the runtime hands the container a pty instead).
pub fn null_stdio() -> io::Result<ChildStdio> {
    let null = || -> io::Result<OwnedFd> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
    };
    Ok(ChildStdio {
        stdin: null()?,
        stdout: null()?,
        stderr: null()?,
    })
}

/// What [`PreparedStdio::open`] failed at.
#[derive(Debug)]
pub enum PrepareError {
    /// Opening the names containerd gave.
    Streams(io::Error),
    /// Making the console socket a terminal's pty master comes through.
    ConsoleSocket(io::Error),
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Streams(e) | PrepareError::ConsoleSocket(e) => e.fmt(f),
        }
    }
}

/// A process's stdio, opened before the process is forked: its own fds
/// and what the shim holds, or for a terminal the host ends and a console
/// socket the pty master is sent to.
pub enum PreparedStdio {
    Plain(ChildStdio, HeldStdio),
    Terminal(TerminalStdio, ConsoleSocket),
}

impl PreparedStdio {
    pub fn open(stdio: &Stdio) -> Result<PreparedStdio, PrepareError> {
        if stdio.terminal {
            let host = TerminalStdio::open(stdio).map_err(PrepareError::Streams)?;
            let socket = ConsoleSocket::new().map_err(PrepareError::ConsoleSocket)?;
            Ok(PreparedStdio::Terminal(host, socket))
        } else {
            let (child, held) = open_stdio(stdio).map_err(PrepareError::Streams)?;
            Ok(PreparedStdio::Plain(child, held))
        }
    }

    /// The console socket, for a terminal.
    pub fn console_socket(&self) -> Option<&Path> {
        match self {
            PreparedStdio::Plain(..) => None,
            PreparedStdio::Terminal(_, socket) => Some(socket.path()),
        }
    }

    /// Splits into the process's own fds (none for a terminal: it gets the
    /// pty) and what the shim keeps until [`PendingStdio::finish`].
    pub fn split(self) -> (Option<ChildStdio>, PendingStdio) {
        match self {
            PreparedStdio::Plain(child, held) => (Some(child), PendingStdio::Plain(held)),
            PreparedStdio::Terminal(host, socket) => (None, PendingStdio::Terminal(host, socket)),
        }
    }
}

/// What the shim keeps of a [`PreparedStdio`] while the process is forked.
pub enum PendingStdio {
    Plain(HeldStdio),
    Terminal(TerminalStdio, ConsoleSocket),
}

impl PendingStdio {
    /// Once the process exists: for a terminal, receives the pty master and
    /// starts the pumps (threads named after `name`).
    pub fn finish(self, name: &str) -> io::Result<HeldStdio> {
        match self {
            PendingStdio::Plain(held) => Ok(held),
            PendingStdio::Terminal(host, socket) => {
                let master: OwnedFd = socket.receive_master()?;
                host.start(name, master)
            }
        }
    }
}

fn open_null(write: bool) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    Ok(file.into())
}

fn is_fifo(path: &Path) -> io::Result<bool> {
    Ok(std::fs::metadata(path)?.file_type().is_fifo())
}

/// Opens `path` for appending (mode 0640), creating it and its parents.
pub(super) fn open_append(what: &str, path: &Path) -> io::Result<OwnedFd> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| context(what, parent, e))?;
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| context(what, path, e))?;
    Ok(file.into())
}

/// Opens an output stream: the fd for the process, and what the shim must
/// keep (a FIFO's reader). `logs` collects the CRI log files (shared by
/// stdout and stderr when they name the same path).
fn open_output_logged(
    what: &'static str,
    name: &str,
    logs: &mut Vec<Arc<CriLog>>,
) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    if let StdioTarget::CriLog(path) = StdioTarget::parse(what, name)? {
        let log = match logs.iter().find(|l| l.path() == path) {
            Some(l) => l.clone(),
            None => {
                let l = CriLog::open(&path)?;
                logs.push(l.clone());
                l
            }
        };
        let (read, write) = pipe()?;
        spawn_reader(log, what, read)?;
        return Ok((write, None));
    }
    open_output(what, name)
}

fn open_output(what: &str, name: &str) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    match StdioTarget::parse(what, name)? {
        StdioTarget::CriLog(_) => Err(invalid(what, "crilog:// needs a log registry")),
        StdioTarget::Null => Ok((open_null(true)?, None)),
        StdioTarget::File(path) => Ok((open_append(what, &path)?, None)),
        StdioTarget::Fifo(path) => {
            if !is_fifo(&path).map_err(|e| context(what, &path, e))? {
                return Ok((open_append(what, &path)?, None));
            }
            let reader: OwnedFd = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .map_err(|e| context(what, &path, e))?
                .into();
            let writer: OwnedFd = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| context(what, &path, e))?
                .into();
            Ok((writer, Some(reader)))
        }
    }
}

/// Opens the input stream: the fd the process reads (None for none, i.e.
/// `/dev/null` or nothing to pump), and the FIFO keep-alive writer.
fn open_input(name: &str) -> io::Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    const WHAT: &str = "stdin";
    match StdioTarget::parse(WHAT, name)? {
        StdioTarget::Null => Ok((None, None)),
        StdioTarget::CriLog(_) => Err(invalid(WHAT, "crilog:// is for stdout and stderr")),
        StdioTarget::File(path) => {
            let file = File::open(&path).map_err(|e| context(WHAT, &path, e))?;
            Ok((Some(file.into()), None))
        }
        StdioTarget::Fifo(path) => {
            if !is_fifo(&path).map_err(|e| context(WHAT, &path, e))? {
                let file = File::open(&path).map_err(|e| context(WHAT, &path, e))?;
                return Ok((Some(file.into()), None));
            }
            let keepalive: OwnedFd = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| context(WHAT, &path, e))?
                .into();
            let reader: OwnedFd = File::open(&path)
                .map_err(|e| context(WHAT, &path, e))?
                .into();
            Ok((Some(reader), Some(keepalive)))
        }
    }
}

/// Opens a process's stdio without a terminal.
pub fn open_stdio(stdio: &Stdio) -> io::Result<(ChildStdio, HeldStdio)> {
    let mut held = HeldStdio::default();
    let (stdin, keepalive) = open_input(&stdio.stdin)?;
    held.stdin_keepalive = keepalive;
    let stdin = match stdin {
        Some(fd) => fd,
        None => open_null(false)?,
    };
    let (stdout, reader) = open_output_logged("stdout", &stdio.stdout, &mut held.logs)?;
    held.fifo_readers.extend(reader);
    let (stderr, reader) = open_output_logged("stderr", &stdio.stderr, &mut held.logs)?;
    held.fifo_readers.extend(reader);
    held.attach = start_attach(stdio, &held.logs)?;
    Ok((
        ChildStdio {
            stdin,
            stdout,
            stderr,
        },
        held,
    ))
}

/// The attach socket `stdio` asks for, over the logs its output goes to
/// (none without a CRI log: there is nothing of the output to tee).
fn start_attach(stdio: &Stdio, logs: &[Arc<CriLog>]) -> io::Result<Option<AttachListener>> {
    match &stdio.attach {
        Some(path) if !logs.is_empty() => AttachListener::start(path, logs).map(Some),
        _ => Ok(None),
    }
}

/// The host ends of a terminal process's stdio, opened before the process
/// exists; [`TerminalStdio::start`] connects them to its pty master.
#[derive(Debug)]
pub struct TerminalStdio {
    stdin: Option<OwnedFd>,
    stdin_keepalive: Option<OwnedFd>,
    stdout: OwnedFd,
    stdout_reader: Option<OwnedFd>,
    logs: Vec<Arc<CriLog>>,
    attach: Option<AttachListener>,
}

impl TerminalStdio {
    /// Opens the stdin and stdout names (stderr is unused with a terminal).
    pub fn open(stdio: &Stdio) -> io::Result<TerminalStdio> {
        let (stdin, stdin_keepalive) = open_input(&stdio.stdin)?;
        let mut logs = Vec::new();
        let (stdout, stdout_reader) = open_output_logged("stdout", &stdio.stdout, &mut logs)?;
        let attach = start_attach(stdio, &logs)?;
        Ok(TerminalStdio {
            stdin,
            stdin_keepalive,
            stdout,
            stdout_reader,
            logs,
            attach,
        })
    }

    /// Starts pumping stdin → `master` and `master` → stdout; `name` names
    /// the pump threads.
    pub fn start(self, name: &str, master: OwnedFd) -> io::Result<HeldStdio> {
        let master = Arc::new(master);
        set_nonblocking(master.as_fd())?;
        let (stop_rx, stop_tx) = pipe()?;
        let stop_rx = Arc::new(stop_rx);
        let stdout = Arc::new(self.stdout);
        set_nonblocking(stdout.as_fd())?;
        spawn_pump(
            format!("{name}-pty-out"),
            master.clone(),
            stdout,
            stop_rx.clone(),
        )?;
        if let Some(stdin) = self.stdin {
            let stdin = Arc::new(stdin);
            set_nonblocking(stdin.as_fd())?;
            spawn_pump(format!("{name}-pty-in"), stdin, master.clone(), stop_rx)?;
        }
        Ok(HeldStdio {
            stdin_keepalive: None,
            fifo_readers: self.stdout_reader.into_iter().collect(),
            terminal: Some(TerminalPumps {
                master,
                stdin_keepalive: self.stdin_keepalive,
                _stop: stop_tx,
            }),
            logs: self.logs,
            attach: self.attach,
        })
    }
}

/// A running terminal: the pty master, the stdin keep-alive, and the write
/// end of the pumps' stop pipe (dropping it stops them).
#[derive(Debug)]
struct TerminalPumps {
    master: Arc<OwnedFd>,
    stdin_keepalive: Option<OwnedFd>,
    _stop: OwnedFd,
}

pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    Ok((rx, tx))
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a valid fd.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `fd` is ready for `events` or `stop` is readable/hung up.
/// Returns false when stopped.
pub(super) fn wait_ready(fd: BorrowedFd<'_>, events: libc::c_short, stop: BorrowedFd<'_>) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfd entries.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        return fds[1].revents == 0;
    }
}

fn spawn_pump(
    name: String,
    src: Arc<OwnedFd>,
    dst: Arc<OwnedFd>,
    stop: Arc<OwnedFd>,
) -> io::Result<()> {
    thread::Builder::new().name(name.clone()).spawn(move || {
        pump(src.as_fd(), dst.as_fd(), stop.as_fd());
        tracing::debug!(pump = name, "stdio pump finished");
    })?;
    Ok(())
}

/// Copies `src` to `dst` (both non-blocking) until EOF, an error (EIO on a
/// pty master whose slave side is closed), or `stop`.
fn pump(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, stop: BorrowedFd<'_>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if !wait_ready(src, libc::POLLIN, stop) {
            return;
        }
        let n = match nix::unistd::read(src, &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            match nix::unistd::write(dst, rest) {
                Ok(written) => rest = &rest[written..],
                Err(nix::errno::Errno::EAGAIN) => {
                    if !wait_ready(dst, libc::POLLOUT, stop) {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerd_stdio_names() {
        let fifo = |p: &str| StdioTarget::Fifo(PathBuf::from(p));
        let file = |p: &str| StdioTarget::File(PathBuf::from(p));
        for (name, want) in [
            ("", Some(StdioTarget::Null)),
            (
                "/run/containerd/fifo/abc-stdout",
                Some(fifo("/run/containerd/fifo/abc-stdout")),
            ),
            (
                "file:///var/log/pods/x/0.log",
                Some(file("/var/log/pods/x/0.log")),
            ),
            ("file://relative/log", None),
            ("binary:///usr/bin/logger?a=b", None),
            ("relative/fifo", None),
        ] {
            let got = StdioTarget::parse("stdout", name).ok();
            assert_eq!(got, want, "{name:?}");
        }
    }

    #[test]
    fn file_output_is_appended_and_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/out.log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"old\n").unwrap();
        let stdio = Stdio {
            stdout: format!("file://{}", path.display()),
            ..Stdio::default()
        };
        let (child, _held) = open_stdio(&stdio).unwrap();
        nix::unistd::write(&child.stdout, b"new\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old\nnew\n");
    }

    #[test]
    fn fifo_output_does_not_break_before_the_reader_connects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let stdio = Stdio {
            stdout: path.display().to_string(),
            ..Stdio::default()
        };
        let (child, held) = open_stdio(&stdio).unwrap();
        // No caller reader yet: the write succeeds thanks to the held reader.
        nix::unistd::write(&child.stdout, b"early\n").unwrap();
        let mut caller = File::open(&path).unwrap();
        drop(child);
        let mut got = String::new();
        io::Read::read_to_string(&mut caller, &mut got).unwrap();
        assert_eq!(got, "early\n");
        drop(held);
    }

    #[test]
    fn fifo_stdin_sees_eof_only_after_close_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let stdio = Stdio {
            stdin: path.display().to_string(),
            ..Stdio::default()
        };
        let (child, mut held) = open_stdio(&stdio).unwrap();
        set_nonblocking(child.stdin.as_fd()).unwrap();
        let mut buf = [0u8; 8];
        // The keep-alive writer is open: no data yet, but no EOF either.
        assert_eq!(
            nix::unistd::read(&child.stdin, &mut buf),
            Err(nix::errno::Errno::EAGAIN)
        );
        held.close_stdin();
        assert_eq!(nix::unistd::read(&child.stdin, &mut buf), Ok(0));
    }
}
