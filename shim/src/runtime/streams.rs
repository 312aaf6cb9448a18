//! Exec, Attach and PortForward: the CRI calls' checks, and the sessions
//! the streaming server runs when their URL is opened.
//!
//! Everything goes through the pod's shim and its task API, so the
//! sessions are the same for every backend:
//! * exec: FIFOs in a temp dir of the pod, `Exec` with them (and a
//!   terminal when asked), `Start`, copies between the FIFOs and the
//!   client, `ResizePty`, `CloseIO` when the client's stdin ends, `Wait`,
//!   `Delete`; a client that leaves gets its process killed (containerd's
//!   behaviour).
//! * attach: the init's live output from its attach socket
//!   (`<bundle>/attach.sock`, served by the shim while it writes the CRI
//!   log), its stdin FIFO, `ResizePty`, and `CloseIO` after the first
//!   client's stdin ends when the container is `stdin_once`.
//! * port-forward: a TCP connection to `localhost:<port>` made from a
//!   thread that joined the pod's network namespace (never the daemon).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use caisson_proto::cri;
use containerd_shim_protos::api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::exec::{exec_process, new_exec_id};
use super::pod::pod_dir;
use super::Runtime;
use crate::shims::ShimClient;
use crate::status::{CriError, CriResult};
use crate::store::decode;
use crate::streaming::server::{SessionFactory, StreamRequest};
use crate::streaming::{
    ByteReader, ByteWriter, Duplex, PortDialer, RemoteCommand, SessionEnd, SessionStreams,
    StreamOptions, TermSize,
};

/// How long an exec's output may still flow after its process exited
/// (a background child holding stdout would otherwise keep it open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// An exec waits for its process this long at most (kubelet's idle
/// timeout ends idle sessions well before).
const EXEC_WAIT: Duration = Duration::from_secs(24 * 3600);

fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> CriResult<()> {
    if !(stdin || stdout || stderr) {
        return Err(CriError::invalid(
            "stdin",
            "one of stdin, stdout or stderr must be set",
        ));
    }
    if tty && stderr {
        return Err(CriError::invalid(
            "stderr",
            "tty and stderr cannot both be set (a terminal has one output)",
        ));
    }
    Ok(())
}

impl Runtime {
    /// The checks of CRI `Exec`: what its URL will run.
    pub fn exec_request(&self, r: &cri::ExecRequest) -> CriResult<StreamRequest> {
        if r.cmd.is_empty() {
            return Err(CriError::invalid("cmd", "must not be empty"));
        }
        check_streams(r.stdin, r.stdout, r.stderr, r.tty)?;
        let c = self.running_container(&r.container_id)?;
        Ok(StreamRequest::Exec {
            container_id: c.id,
            cmd: r.cmd.clone(),
            opts: StreamOptions {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
        })
    }

    /// The checks of CRI `Attach`. The terminal is the container's: a tty
    /// container has no separate stderr.
    pub fn attach_request(&self, r: &cri::AttachRequest) -> CriResult<StreamRequest> {
        check_streams(r.stdin, r.stdout, r.stderr, r.tty)?;
        let c = self.running_container(&r.container_id)?;
        let config: cri::ContainerConfig = decode(&c.config).unwrap_or_default();
        if r.stdin && !config.stdin {
            return Err(CriError::invalid(
                "stdin",
                format!("container {} was not created with stdin", c.id),
            ));
        }
        if r.tty != config.tty {
            return Err(CriError::invalid(
                "tty",
                format!("must match the container's ({}: tty {})", c.id, config.tty),
            ));
        }
        Ok(StreamRequest::Attach {
            container_id: c.id,
            opts: StreamOptions {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr && !config.tty,
                tty: config.tty,
            },
        })
    }

    /// The checks of CRI `PortForward`.
    pub fn port_forward_request(&self, r: &cri::PortForwardRequest) -> CriResult<StreamRequest> {
        let mut ports = Vec::with_capacity(r.port.len());
        for (i, p) in r.port.iter().enumerate() {
            let port = u16::try_from(*p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| CriError::invalid(format!("port[{i}]"), "must be 1-65535"))?;
            ports.push(port);
        }
        let pod = self.pod(&r.pod_sandbox_id)?;
        if pod.state != crate::store::PodState::Ready {
            return Err(CriError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        Ok(StreamRequest::PortForward {
            pod_id: pod.id,
            ports,
        })
    }
}

/// The streaming server's sessions, made from the runtime.
pub struct RuntimeSessions(pub Arc<Runtime>);

impl SessionFactory for RuntimeSessions {
    fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        opts: StreamOptions,
    ) -> Box<dyn RemoteCommand> {
        Box::new(ExecSession {
            rt: self.0.clone(),
            container_id: container_id.to_owned(),
            cmd: cmd.to_vec(),
            opts,
        })
    }

    fn attach(&self, container_id: &str, opts: StreamOptions) -> Box<dyn RemoteCommand> {
        Box::new(AttachSession {
            rt: self.0.clone(),
            container_id: container_id.to_owned(),
            opts,
        })
    }

    fn port_dialer(&self, pod_id: &str) -> Result<Arc<dyn PortDialer>, String> {
        let pod = self.0.pod(pod_id).map_err(|e| e.to_string())?;
        if pod.state != crate::store::PodState::Ready {
            return Err(format!("pod sandbox {} is not ready", pod.id));
        }
        let socket = pod
            .bundle
            .join(caisson_sandbox::service::PORT_FORWARD_SOCKET);
        Ok(Arc::new(PodDialer {
            netns: if pod.host_network {
                None
            } else {
                pod.netns.clone()
            },
            // A pod whose localhost the host cannot reach (a microvm's is
            // its guest's) is dialed through its shim.
            shim_socket: socket.exists().then_some(socket),
        }))
    }
}

/// Copies `from` to `to` until either ends, then shuts `to` down.
async fn pump(mut from: impl tokio::io::AsyncRead + Unpin, mut to: ByteWriter) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

/// Forwards terminal sizes to the shim until the client's resize stream ends.
fn spawn_resizes(
    client: ShimClient,
    id: String,
    exec_id: String,
    resize: Option<tokio::sync::mpsc::Receiver<TermSize>>,
) {
    let Some(mut resize) = resize else { return };
    tokio::spawn(async move {
        while let Some(size) = resize.recv().await {
            if let Err(e) = client
                .resize_pty(&id, &exec_id, size.width.into(), size.height.into())
                .await
            {
                tracing::debug!(container_id = %id, exec_id, error = %e, "resizing a terminal");
            }
        }
    });
}

fn open_reader(path: &Path) -> io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new().open_receiver(path)
}

fn open_writer(path: &Path) -> io::Result<tokio::net::unix::pipe::Sender> {
    tokio::net::unix::pipe::OpenOptions::new().open_sender(path)
}

struct ExecSession {
    rt: Arc<Runtime>,
    container_id: String,
    cmd: Vec<String>,
    opts: StreamOptions,
}

#[tonic::async_trait]
impl RemoteCommand for ExecSession {
    async fn run(self: Box<Self>, streams: SessionStreams) -> SessionEnd {
        match self.exec(streams).await {
            Ok(0) => SessionEnd::Success,
            Ok(code) => SessionEnd::ExitCode(code),
            Err(e) => SessionEnd::Error(e.to_string()),
        }
    }
}

impl ExecSession {
    async fn exec(&self, streams: SessionStreams) -> CriResult<i32> {
        super::warm_cgroup_moves();
        let c = self.rt.running_container(&self.container_id)?;
        let pod = self.rt.pod(&c.pod_id)?;
        let client = self.rt.client(&pod)?;
        let tty = self.opts.tty;
        let dir = tempfile::Builder::new()
            .prefix("stream-")
            .tempdir_in(pod_dir(&self.rt, &pod.id))
            .map_err(|e| CriError::internal("creating the exec's FIFO dir", e))?;
        let fifo = |name: &str, wanted: bool| -> CriResult<Option<PathBuf>> {
            if !wanted {
                return Ok(None);
            }
            let path = dir.path().join(name);
            super::container::make_private_fifo(&path)
                .map_err(|e| CriError::internal("making an exec FIFO", e))?;
            Ok(Some(path))
        };
        let stdin = fifo("stdin", streams.stdin.is_some())?;
        let stdout = fifo("stdout", streams.stdout.is_some())?;
        let stderr = fifo("stderr", streams.stderr.is_some() && !tty)?;
        let name = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let exec_id = new_exec_id();
        client
            .exec(api::ExecProcessRequest {
                id: c.id.clone(),
                exec_id: exec_id.clone(),
                stdin: name(&stdin),
                stdout: name(&stdout),
                stderr: name(&stderr),
                terminal: tty,
                spec: Some(exec_process(&c, &self.cmd, tty)?).into(),
                ..Default::default()
            })
            .await?;
        let result = self
            .run_started(&client, &c.id, &exec_id, streams, [stdin, stdout, stderr])
            .await;
        if let Err(e) = client.delete(&c.id, &exec_id).await {
            tracing::debug!(container_id = %c.id, exec_id, error = %e, "deleting the exec");
        }
        result
    }

    async fn run_started(
        &self,
        client: &ShimClient,
        id: &str,
        exec_id: &str,
        streams: SessionStreams,
        [stdin, stdout, stderr]: [Option<PathBuf>; 3],
    ) -> CriResult<i32> {
        let SessionStreams {
            stdin: client_stdin,
            stdout: client_stdout,
            stderr: client_stderr,
            resize,
            mut client_gone,
        } = streams;
        // The shim holds its own ends of each FIFO: ours open at once.
        let open = |what: &str, e: io::Error| CriError::internal(what, e);
        let mut outputs = Vec::new();
        if let (Some(path), Some(to)) = (&stdout, client_stdout) {
            let from = open_reader(path).map_err(|e| open("opening the exec's stdout", e))?;
            outputs.push(tokio::spawn(pump(from, to)));
        }
        if let (Some(path), Some(to)) = (&stderr, client_stderr) {
            let from = open_reader(path).map_err(|e| open("opening the exec's stderr", e))?;
            outputs.push(tokio::spawn(pump(from, to)));
        }
        if let Err(e) = client.start(id, exec_id).await {
            outputs.iter().for_each(|t| t.abort());
            return Err(e);
        }
        // The shim opens its ends (the stdin keep-alive among them) when it
        // starts the process: only then has stdin a reader for ours.
        let stdin_writer = match stdin.as_deref().map(open_writer).transpose() {
            Ok(w) => w,
            Err(e) => {
                let _ = client.kill(id, exec_id, libc::SIGKILL as u32, false).await;
                let _ = client.wait(id, exec_id, Duration::from_secs(10)).await;
                return Err(open("opening the exec's stdin", e));
            }
        };
        spawn_resizes(client.clone(), id.to_owned(), exec_id.to_owned(), resize);
        if let (Some(mut writer), Some(mut from)) = (stdin_writer, client_stdin) {
            let (client, id, exec_id) = (client.clone(), id.to_owned(), exec_id.to_owned());
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut writer).await;
                drop(writer);
                // The process reads EOF once the shim's keep-alive goes too.
                let _ = client.close_stdin(&id, &exec_id).await;
            });
        }
        let waited = tokio::select! {
            w = client.wait(id, exec_id, EXEC_WAIT) => w,
            _ = &mut client_gone => {
                tracing::info!(container_id = %id, exec_id, "exec client went away: killing its process");
                Ok(None)
            }
        };
        // Gone client, a wait past EXEC_WAIT, or a failed wait: the
        // process is killed and reaped, never left behind.
        let waited = match waited {
            Ok(Some(w)) => Ok(Some(w)),
            _ => {
                let _ = client.kill(id, exec_id, libc::SIGKILL as u32, false).await;
                client.wait(id, exec_id, Duration::from_secs(10)).await
            }
        };
        // Output written before the exit is still in the FIFOs; on an
        // error the pumps are stopped all the same.
        let drain = matches!(waited, Ok(Some(_)));
        for task in outputs {
            let abort = task.abort_handle();
            if !drain || tokio::time::timeout(OUTPUT_DRAIN, task).await.is_err() {
                abort.abort();
            }
        }
        waited?
            .map(|w| w.exit_status as i32)
            .ok_or_else(|| CriError::Internal(format!("exec {exec_id} in {id} did not end")))
    }
}

struct AttachSession {
    rt: Arc<Runtime>,
    container_id: String,
    opts: StreamOptions,
}

#[tonic::async_trait]
impl RemoteCommand for AttachSession {
    async fn run(self: Box<Self>, streams: SessionStreams) -> SessionEnd {
        match self.attach(streams).await {
            Ok(()) => SessionEnd::Success,
            Err(e) => SessionEnd::Error(e.to_string()),
        }
    }
}

/// Connects to a unix socket whose path may be longer than `sun_path`.
async fn connect_long(path: &Path) -> io::Result<tokio::net::UnixStream> {
    let short = caisson_sandbox::host::attach::ShortPath::of(path)?;
    tokio::net::UnixStream::connect(&short.path).await
}

impl AttachSession {
    async fn attach(&self, streams: SessionStreams) -> CriResult<()> {
        let c = self.rt.running_container(&self.container_id)?;
        let pod = self.rt.pod(&c.pod_id)?;
        let client = self.rt.client(&pod)?;
        let config: cri::ContainerConfig = decode(&c.config).unwrap_or_default();
        let socket = c.bundle.join(caisson_sandbox::service::ATTACH_SOCKET);
        let mut output = connect_long(&socket).await.map_err(|e| {
            CriError::FailedPrecondition(format!(
                "container {} has no attachable output ({}): {e}",
                c.id,
                socket.display()
            ))
        })?;
        let SessionStreams {
            stdin: client_stdin,
            stdout: mut client_stdout,
            stderr: mut client_stderr,
            resize,
            mut client_gone,
        } = streams;
        spawn_resizes(client.clone(), c.id.clone(), String::new(), resize);
        // Stdin is fed once the output is subscribed (the ATTACHED frame),
        // so the container's answer to it cannot be lost.
        let mut feed = None;
        if let Some(from) = client_stdin.filter(|_| config.stdin) {
            let fifo = c.bundle.join(super::container::STDIN_FIFO);
            let writer = open_writer(&fifo)
                .map_err(|e| CriError::internal("opening the container's stdin", e))?;
            let once = config.stdin_once;
            let (client, id) = (client.clone(), c.id.clone());
            feed = Some(feed_stdin(from, writer, once, client, id));
        }
        let tty = self.opts.tty;
        let copy = async {
            // Frames: stream byte, length (u32 BE), bytes; EOF when the
            // container's output ends.
            let mut head = [0u8; 5];
            let mut buf = Vec::new();
            while output.read_exact(&mut head).await.is_ok() {
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                buf.resize(len, 0);
                if output.read_exact(&mut buf).await.is_err() {
                    break;
                }
                if head[0] == caisson_sandbox::host::attach::ATTACHED {
                    if let Some(feed) = feed.take() {
                        tokio::spawn(feed);
                    }
                    continue;
                }
                let to = if head[0] == 2 && !tty {
                    client_stderr.as_mut()
                } else {
                    client_stdout.as_mut()
                };
                if let Some(to) = to {
                    if to.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            }
        };
        tokio::select! {
            _ = copy => {},
            _ = &mut client_gone => {},
        }
        for w in [client_stdout.as_mut(), client_stderr.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = w.shutdown().await;
        }
        Ok(())
    }
}

/// The attached client's stdin into the container's stdin FIFO; with
/// `stdin_once`, the container's stdin is closed when it ends.
async fn feed_stdin(
    mut from: ByteReader,
    mut writer: tokio::net::unix::pipe::Sender,
    once: bool,
    client: ShimClient,
    id: String,
) {
    let _ = tokio::io::copy(&mut from, &mut writer).await;
    drop(writer);
    if once {
        tracing::info!(container_id = %id, "stdin_once: closing the container's stdin after its first attach");
        if let Err(e) = client.close_stdin(&id, "").await {
            tracing::warn!(container_id = %id, error = %e, "closing the container's stdin");
        }
    }
}

/// Dials ports of one pod, from a thread in its network namespace, or
/// through its shim's port-forward socket when it has one.
struct PodDialer {
    /// None: the host's namespace (a hostNetwork pod).
    netns: Option<PathBuf>,
    shim_socket: Option<PathBuf>,
}

/// `port` through a shim's port-forward socket: the port (2 bytes, big
/// endian), then one status byte, 0 or an error message up to EOF.
async fn dial_through_shim(socket: &Path, port: u16) -> io::Result<Box<dyn Duplex>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_long(socket).await?;
    stream.write_all(&port.to_be_bytes()).await?;
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).await?;
    if status[0] != 0 {
        let mut why = String::new();
        let _ = stream.take(4096).read_to_string(&mut why).await;
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("connecting to localhost:{port} in the pod: {why}"),
        ));
    }
    Ok(Box::new(stream))
}

#[tonic::async_trait]
impl PortDialer for PodDialer {
    async fn dial(&self, port: u16) -> io::Result<Box<dyn Duplex>> {
        if let Some(socket) = &self.shim_socket {
            return dial_through_shim(socket, port).await;
        }
        let netns = self.netns.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own that never returns to a pool: it leaves the
        // daemon's namespace for the pod's.
        std::thread::Builder::new()
            .name(format!("port-forward-{port}"))
            .spawn(move || {
                let _ = tx.send(connect_in(netns.as_deref(), port));
            })?;
        let stream = rx
            .await
            .map_err(|_| io::Error::other("the port-forward thread died"))??;
        stream.set_nonblocking(true)?;
        Ok(Box::new(tokio::net::TcpStream::from_std(stream)?))
    }
}

/// `localhost:<port>` (IPv4, then IPv6) from the namespace at `netns`.
fn connect_in(netns: Option<&Path>, port: u16) -> io::Result<std::net::TcpStream> {
    if let Some(netns) = netns {
        let ns = std::fs::File::open(netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    }
    let timeout = Duration::from_secs(10);
    let v4 = std::net::TcpStream::connect_timeout(
        &(std::net::Ipv4Addr::LOCALHOST, port).into(),
        timeout,
    );
    match v4 {
        Ok(s) => Ok(s),
        Err(e4) => std::net::TcpStream::connect_timeout(
            &(std::net::Ipv6Addr::LOCALHOST, port).into(),
            timeout,
        )
        .map_err(|_| {
            io::Error::new(
                e4.kind(),
                format!("connecting to localhost:{port} in the pod: {e4}"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_combinations_as_kubelet_allows() {
        for (stdin, stdout, stderr, tty, ok) in [
            (true, true, true, false, true),
            (false, true, false, true, true),
            (true, false, false, false, true),
            (false, false, false, false, false),
            (false, true, true, true, false),
        ] {
            assert_eq!(
                check_streams(stdin, stdout, stderr, tty).is_ok(),
                ok,
                "{stdin} {stdout} {stderr} {tty}"
            );
        }
    }
}
