//! Attach: a container's live output, for CRI `Attach`, while its CRI log
//! keeps being written.
//!
//! The output of a task whose stdout is `crilog://` flows through the shim
//! ([`super::crilog`]). When the task is made with an attach socket
//! (`<bundle>/attach.sock`, 0600), every client connected to it gets a copy
//! of that output as it is read, before line splitting, so a prompt without
//! a newline shows at once. Each chunk is one frame:
//!
//! ```text
//! [1 byte: 1 stdout, 2 stderr] [4 bytes: length, big endian] [bytes]
//! ```
//!
//! Right after a client is subscribed it gets one empty frame of stream byte
//! [`ATTACHED`]: output written from then on reaches it, so a client that
//! feeds the container's stdin waits for that frame first and cannot lose
//! the answer to a race with the accept.
//!
//! The socket closes when the output ends (the process and everything that
//! held its stdout exited), so a reader sees EOF exactly then. A client that
//! stops reading is dropped after [`STALL_LIMIT`] rather than holding the
//! container's output (and its log) back. Stdin, resizes and `stdin_once`
//! go through the task's stdin FIFO, `ResizePty` and `CloseIO`, as for any
//! containerd client.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::crilog::CriLog;

/// How long a write to one attached client may block.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

/// The stream byte of the empty frame that tells a client it is
/// subscribed.
pub const ATTACHED: u8 = 0;

/// The frame stream byte of `stdout`/`stderr`.
pub fn stream_byte(stream: &str) -> u8 {
    if stream == "stderr" {
        2
    } else {
        1
    }
}

/// One frame of output.
pub fn frame(stream: &str, bytes: &[u8]) -> Vec<u8> {
    frame_of(stream_byte(stream), bytes)
}

fn frame_of(stream: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + bytes.len());
    out.push(stream);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The clients attached to one output, and whether that output still has
/// writers (reader threads) at all.
#[derive(Debug, Default)]
pub struct Tee {
    state: Mutex<TeeState>,
}

#[derive(Debug, Default)]
struct TeeState {
    clients: Vec<UnixStream>,
    /// Reader threads still running (stdout, stderr).
    readers: usize,
    /// Set once every reader ended: later clients get EOF at once.
    ended: bool,
}

impl Tee {
    /// A reader thread starts feeding this output.
    pub fn reader_started(&self) {
        self.lock().readers += 1;
    }

    /// A reader thread ended; the last one closes every client.
    pub fn reader_ended(&self) {
        let mut state = self.lock();
        state.readers = state.readers.saturating_sub(1);
        if state.readers == 0 {
            state.ended = true;
            state.clients.clear();
        }
    }

    /// Copies `bytes` of `stream` to every client, dropping those that fail
    /// or stall.
    pub fn send(&self, stream: &str, bytes: &[u8]) {
        let mut state = self.lock();
        if state.clients.is_empty() {
            return;
        }
        let frame = frame(stream, bytes);
        state.clients.retain_mut(|c| c.write_all(&frame).is_ok());
    }

    /// Adds a client (dropped at once, so it reads EOF, when the output
    /// already ended).
    pub fn subscribe(&self, client: UnixStream) {
        let mut state = self.lock();
        if state.ended {
            return;
        }
        state.clients.push(client);
    }

    /// Adds a client to every tee of `tees` and then sends it the
    /// [`ATTACHED`] frame, all under the first tee's lock so the frame is
    /// whole (a tee writing output meanwhile waits for it).
    fn subscribe_all(tees: &[Arc<Tee>], client: &UnixStream) {
        let Some(first) = tees.first() else { return };
        let mut state = first.lock();
        let mut subscribed = false;
        for tee in tees.iter().filter(|t| !Arc::ptr_eq(t, first)) {
            subscribed |= Tee::subscribe_clone(&mut tee.lock(), client);
        }
        subscribed |= Tee::subscribe_clone(&mut state, client);
        if subscribed {
            let _ = (&*client).write_all(&frame_of(ATTACHED, &[]));
        }
    }

    fn subscribe_clone(state: &mut TeeState, client: &UnixStream) -> bool {
        if state.ended {
            return false;
        }
        match client.try_clone() {
            Ok(c) => {
                state.clients.push(c);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "attaching a client");
                false
            }
        }
    }

    /// Clients attached now.
    pub fn clients(&self) -> usize {
        self.lock().clients.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TeeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The attach socket of one task: a thread accepting clients until dropped.
#[derive(Debug)]
pub struct AttachListener {
    path: PathBuf,
    /// Dropping the write end of this pipe stops the accept thread.
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AttachListener {
    /// Listens on `path` (replacing a stale socket), handing each client to
    /// the tee of every log in `logs`.
    pub fn start(path: &Path, logs: &[Arc<CriLog>]) -> io::Result<AttachListener> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = bind_long(path).map_err(|e| {
            io::Error::new(e.kind(), format!("attach socket {}: {e}", path.display()))
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let (stop_rx, stop_tx) = super::stdio::pipe()?;
        let tees: Vec<Arc<Tee>> = logs.iter().map(|l| l.tee().clone()).collect();
        let thread = std::thread::Builder::new()
            .name("attach".into())
            .spawn(move || accept_loop(listener, tees, stop_rx))?;
        Ok(AttachListener {
            path: path.to_path_buf(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A socket path usable past `sun_path`'s 108 bytes (a bundle under
/// `/run/caisson/pods/<id>/containers/<id>/` is longer): the parent
/// directory held open, and `/proc/self/fd/<dir>/<name>` naming the path
/// through it while the returned `File` lives.
pub struct ShortPath {
    _dir: Option<std::fs::File>,
    pub path: PathBuf,
}

impl ShortPath {
    pub fn of(path: &Path) -> io::Result<ShortPath> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(ShortPath {
                _dir: None,
                path: path.to_path_buf(),
            });
        };
        let dir = std::fs::File::open(dir)?;
        let path = Path::new("/proc/self/fd")
            .join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string())
            .join(name);
        Ok(ShortPath {
            _dir: Some(dir),
            path,
        })
    }
}

/// Binds `path` through a [`ShortPath`].
pub fn bind_long(path: &Path) -> io::Result<UnixListener> {
    UnixListener::bind(&ShortPath::of(path)?.path)
}

fn accept_loop(listener: UnixListener, tees: Vec<Arc<Tee>>, stop: OwnedFd) {
    while super::stdio::wait_ready(listener.as_fd(), libc::POLLIN, stop.as_fd()) {
        match listener.accept() {
            Ok((client, _)) => {
                if client.set_nonblocking(false).is_err()
                    || client.set_write_timeout(Some(STALL_LIMIT)).is_err()
                {
                    continue;
                }
                Tee::subscribe_all(&tees, &client);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an attach client");
                break;
            }
        }
    }
}

impl Drop for AttachListener {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_frame(c: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        c.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).ok()?;
        Some((head[0], body))
    }

    #[test]
    fn clients_get_frames_until_the_last_reader_ends() {
        let tee = Tee::default();
        tee.reader_started();
        tee.reader_started();
        let (mut a, a_end) = UnixStream::pair().unwrap();
        tee.subscribe(a_end);
        tee.send("stdout", b"prompt$ ");
        tee.send("stderr", b"oops\n");
        assert_eq!(read_frame(&mut a), Some((1, b"prompt$ ".to_vec())));
        assert_eq!(read_frame(&mut a), Some((2, b"oops\n".to_vec())));
        tee.reader_ended();
        assert_eq!(tee.clients(), 1, "stderr still has a reader");
        tee.reader_ended();
        assert_eq!(read_frame(&mut a), None, "EOF once the output ended");
        // A client that comes after the end reads EOF at once.
        let (mut b, b_end) = UnixStream::pair().unwrap();
        tee.subscribe(b_end);
        assert_eq!(read_frame(&mut b), None);
    }

    #[test]
    fn a_client_that_went_away_is_dropped() {
        let tee = Tee::default();
        tee.reader_started();
        let (a, a_end) = UnixStream::pair().unwrap();
        tee.subscribe(a_end);
        drop(a);
        tee.send("stdout", b"x");
        assert_eq!(tee.clients(), 0);
    }

    #[test]
    fn the_listener_hands_clients_to_the_logs_and_removes_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let log = CriLog::open(&dir.path().join("c.log")).unwrap();
        log.tee().reader_started();
        // Longer than sun_path allows, as a real bundle's is.
        let deep = dir.path().join("x".repeat(60)).join("y".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("attach.sock");
        let listener = AttachListener::start(&path, std::slice::from_ref(&log)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let short = ShortPath::of(&path).unwrap();
        let mut client = UnixStream::connect(&short.path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The ATTACHED frame comes once the client is subscribed: output
        // sent after it is never lost.
        assert_eq!(read_frame(&mut client), Some((ATTACHED, Vec::new())));
        assert_eq!(log.tee().clients(), 1);
        log.tee().send("stdout", b"hello");
        assert_eq!(read_frame(&mut client), Some((1, b"hello".to_vec())));
        drop(listener);
        assert!(!path.exists());
    }
}
