//! A process's stdio in the guest: pipes (or a pty whose master libcontainer
//! sends over a console socket), a thread per output stream forwarding
//! `Output` events to the host, and a thread feeding stdin from the host's
//! `WriteStdin` frames in order.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use caisson_agent_proto::{event, Output, StdioConfig, Stream};
use nix::fcntl::OFlag;

use crate::channel::Channel;

/// The largest `Output` chunk.
const CHUNK: usize = 64 << 10;

/// The child's ends, for libcontainer's builder.
pub enum ChildStdio {
    Fds {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Console(PathBuf),
}

/// The agent's ends, before the build.
pub enum Prepared {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Console {
        listener: UnixListener,
        path: PathBuf,
    },
}

/// Opens a process's stdio; `console` is where a terminal's console socket
/// goes. Call it under the fork guard: a build running meanwhile would
/// otherwise inherit these fds until its process execs.
pub fn prepare(config: &StdioConfig, console: &Path) -> io::Result<(ChildStdio, Prepared)> {
    if config.terminal {
        let _ = std::fs::remove_file(console);
        if let Some(dir) = console.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(console)?;
        return Ok((
            ChildStdio::Console(console.to_path_buf()),
            Prepared::Console {
                listener,
                path: console.to_path_buf(),
            },
        ));
    }
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from);
    let (child_stdin, agent_stdin) = if config.stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (File::open("/dev/null")?.into(), None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok((
        ChildStdio::Fds {
            stdin: child_stdin,
            stdout: out_w,
            stderr: err_w,
        },
        Prepared::Pipes {
            stdin: agent_stdin,
            stdout: out_r,
            stderr: err_r,
        },
    ))
}

/// A process's forwarded stdio, once it runs.
pub struct ProcessIo {
    /// Feeds stdin, in order; `None` once closed or when never open.
    pub stdin: Mutex<Option<Sender<Vec<u8>>>>,
    /// The pty master, for resizing.
    pub pty: Option<Arc<OwnedFd>>,
    pub streams: Arc<OpenStreams>,
}

/// How many of a process's output streams have not reached EOF.
pub struct OpenStreams {
    open: Mutex<usize>,
    closed: Condvar,
}

impl OpenStreams {
    fn new(n: usize) -> Arc<OpenStreams> {
        Arc::new(OpenStreams {
            open: Mutex::new(n),
            closed: Condvar::new(),
        })
    }

    fn one_closed(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open = open.saturating_sub(1);
        self.closed.notify_all();
    }

    /// Waits until every stream reached EOF, at most `limit`.
    pub fn wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while *open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            open = self
                .closed
                .wait_timeout(open, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Prepared {
    /// After the build: collects the pty master (if any) and starts the
    /// forwarding threads.
    pub fn start(
        self,
        channel: &Arc<Channel>,
        container_id: &str,
        exec_id: &str,
    ) -> io::Result<ProcessIo> {
        let (stdin, outputs, pty) = match self {
            Prepared::Pipes {
                stdin,
                stdout,
                stderr,
            } => (
                stdin.map(File::from),
                vec![
                    (Stream::Stdout, File::from(stdout)),
                    (Stream::Stderr, File::from(stderr)),
                ],
                None,
            ),
            Prepared::Console { listener, path } => {
                let master = receive_master(&listener);
                let _ = std::fs::remove_file(&path);
                let master = Arc::new(master?);
                let reader = File::from(master.try_clone()?);
                let writer = File::from(master.try_clone()?);
                (Some(writer), vec![(Stream::Stdout, reader)], Some(master))
            }
        };
        let streams = OpenStreams::new(outputs.len());
        for (stream, file) in outputs {
            let channel = Arc::clone(channel);
            let streams = Arc::clone(&streams);
            let (cid, eid) = (container_id.to_string(), exec_id.to_string());
            std::thread::spawn(move || {
                forward_output(&channel, &cid, &eid, stream, file);
                streams.one_closed();
            });
        }
        let stdin = stdin.map(|mut file| {
            let (tx, rx) = mpsc::channel::<Vec<u8>>();
            std::thread::spawn(move || {
                for data in rx {
                    if file.write_all(&data).is_err() {
                        break;
                    }
                }
            });
            tx
        });
        Ok(ProcessIo {
            stdin: Mutex::new(stdin),
            pty,
            streams,
        })
    }
}

fn forward_output(
    channel: &Channel,
    container_id: &str,
    exec_id: &str,
    stream: Stream,
    mut file: File,
) {
    let mut buf = vec![0u8; CHUNK];
    let output = |data: Vec<u8>, eof: bool| {
        event::Kind::Output(Output {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stream: stream as i32,
            data,
            eof,
        })
    };
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => channel.event(output(buf[..n].to_vec(), false)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO: a pty whose last slave closed.
            Err(_) => break,
        }
    }
    channel.event(output(Vec::new(), true));
}

/// Accepts libcontainer's connection on the console socket (made during the
/// build, so it is waiting in the backlog) and takes the pty master it sends.
fn receive_master(listener: &UnixListener) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut data = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just gave this process the fd.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::other("the console socket carried no pty master"))
}

/// TIOCSWINSZ on a pty master.
pub fn resize(master: &OwnedFd, width: u32, height: u32) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
