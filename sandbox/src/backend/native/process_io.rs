//! Handing a process to libcontainer: its stdio (plain fds, or a console
//! socket whose pty master is collected after the build) and, for an exec,
//! its `process.json`.

use std::io::Write;
use std::os::fd::OwnedFd;

use libcontainer::container::builder::ContainerBuilder;
use oci_spec::runtime::Process;

use super::errors::{failed, stdio_error};
use crate::backend::{Result, Stdio};
use crate::host::console::ConsoleSocket;
use crate::host::stdio::{self, ChildStdio, HeldStdio, TerminalStdio};

/// A process's stdio, opened before libcontainer forks it.
pub(super) enum PreparedStdio {
    Plain(ChildStdio, HeldStdio),
    Terminal(TerminalStdio, ConsoleSocket),
}

impl PreparedStdio {
    pub(super) fn open(id: &str, stdio: &Stdio) -> Result<PreparedStdio> {
        if stdio.terminal {
            let host = TerminalStdio::open(stdio).map_err(|e| stdio_error(id, e))?;
            let socket = ConsoleSocket::new().map_err(|e| failed("make console socket", id, e))?;
            Ok(PreparedStdio::Terminal(host, socket))
        } else {
            let (child, held) = stdio::open_stdio(stdio).map_err(|e| stdio_error(id, e))?;
            Ok(PreparedStdio::Plain(child, held))
        }
    }

    /// Hands the process's side to the builder; returns what the shim keeps
    /// until [`Self::finish`].
    pub(super) fn attach(self, builder: ContainerBuilder) -> (ContainerBuilder, PendingStdio) {
        match self {
            PreparedStdio::Plain(child, held) => (
                builder
                    .with_stdin(child.stdin)
                    .with_stdout(child.stdout)
                    .with_stderr(child.stderr),
                PendingStdio::Plain(held),
            ),
            PreparedStdio::Terminal(host, socket) => (
                builder.with_console_socket(Some(socket.path())),
                PendingStdio::Terminal(host, socket),
            ),
        }
    }
}

pub(super) enum PendingStdio {
    Plain(HeldStdio),
    Terminal(TerminalStdio, ConsoleSocket),
}

impl PendingStdio {
    /// After the build: for a terminal, receives the pty master and starts
    /// the pumps.
    pub(super) fn finish(self, name: &str) -> std::io::Result<HeldStdio> {
        match self {
            PendingStdio::Plain(held) => Ok(held),
            PendingStdio::Terminal(host, socket) => {
                let master: OwnedFd = socket.receive_master()?;
                host.start(name, master)
            }
        }
    }
}

/// Writes an exec's process to a temp `process.json` for the tenant builder
/// (removed when the returned file is dropped).
pub(super) fn write_process_file(process: &Process) -> std::io::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("caisson-exec-")
        .suffix(".json")
        .tempfile()?;
    serde_json::to_writer(file.as_file_mut(), process)?;
    file.as_file_mut().flush()?;
    Ok(file)
}
