//! A container's pseudo-terminal, as libcontainer hands it over.
//!
//! With `process.terminal`, libcontainer needs a *console socket*: a unix
//! socket path it connects to (from the shim process, during the build) and
//! through which the container's init sends the pty master fd (SCM_RIGHTS,
//! with the payload `/dev/ptmx`) before the build returns. The shim listens
//! on a socket in a private temp dir, passes the path, and after the build
//! takes the master with [`ConsoleSocket::receive_master`].

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

/// How long to wait for the master once the connection is there (the
/// container sends it before libcontainer's build returns, so this only
/// guards against a broken sender).
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listening console socket in its own temp dir (removed on drop).
#[derive(Debug)]
pub struct ConsoleSocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> io::Result<ConsoleSocket> {
        // A short path under the temp dir: sun_path holds 108 bytes.
        let dir = tempfile::Builder::new().prefix("caisson-tty-").tempdir()?;
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path)?;
        Ok(ConsoleSocket {
            _dir: dir,
            path,
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts libcontainer's connection (already queued once the build has
    /// returned) and receives the pty master from it.
    pub fn receive_master(&self) -> io::Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let (stream, _) = self.listener.accept().map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the container never connected to its console socket",
                )
            } else {
                e
            }
        })?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
        let mut payload = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut payload)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut received: Vec<OwnedFd> = Vec::new();
        for message in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = message {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS just installed this fd in our table.
                    received.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let mut received = received.into_iter();
        match (received.next(), received.next()) {
            (Some(master), None) => Ok(master),
            (None, _) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the console socket message carried no fd",
            )),
            (Some(_), Some(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the console socket message carried more than one fd",
            )),
        }
    }
}

/// Sets a pty's window size (`TIOCSWINSZ`); the foreground process group
/// gets SIGWINCH.
pub fn resize(master: BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::IoSlice;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn receives_a_master_sent_like_libcontainer_does_and_resizes_it() {
        let socket = ConsoleSocket::new().unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let sender = UnixStream::connect(socket.path()).unwrap();
        let fds = [pty.master.as_raw_fd()];
        sendmsg::<UnixAddr>(
            sender.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let master = socket.receive_master().unwrap();
        resize(master.as_fd(), 100, 30).unwrap();
        let size = nix::pty::Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let mut size = size;
        // SAFETY: TIOCGWINSZ writes one winsize struct.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_col, size.ws_row), (100, 30));
    }

    #[test]
    fn no_connection_is_an_error_not_a_hang() {
        let socket = ConsoleSocket::new().unwrap();
        let err = socket.receive_master().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    }
}
