//! The streaming server: Exec, Attach and PortForward, as kubelet's
//! `cri/streaming` package serves them for containerd and CRI-O.
//!
//! The CRI calls answer with a URL on this server carrying a single-use
//! token (`server`); the client (kubelet's proxy, crictl, kubectl through
//! the API server) opens it with an HTTP upgrade to one of two protocols:
//!
//! * [`spdy`]: SPDY/3.1 with the remotecommand subprotocols
//!   `v4.channel.k8s.io` … `channel.k8s.io` and `portforward.k8s.io`;
//! * [`websocket`]: WebSocket with `v5`/`v4.channel.k8s.io`,
//!   `base64.channel.k8s.io` and the port-forward channel framing.
//!
//! Both turn their streams into the same [`SessionStreams`] and hand them
//! to a [`RemoteCommand`] (an exec or an attach, in `session.rs`) or dial
//! through a [`PortDialer`] (the pod's network namespace). So a protocol
//! knows nothing of containers, and a session nothing of framing.

pub mod config;
pub mod server;
pub mod spdy;
mod tls;
pub mod websocket;

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

/// Bytes from the client (stdin).
pub type ByteReader = Box<dyn AsyncRead + Send + Unpin>;
/// Bytes to the client (stdout, stderr).
pub type ByteWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A bidirectional byte stream (an upgraded connection, a TCP connection in
/// a pod).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A terminal size as the resize stream carries it:
/// `{"Width":80,"Height":24}` (Kubernetes' `remotecommand.TerminalSize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Which streams a session has, from the CRI request that made its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The client's side of one exec or attach, as a protocol delivers it.
/// A stream the options did not ask for is `None`; with a tty there is no
/// stderr (it goes to the terminal) and there may be resizes.
pub struct SessionStreams {
    pub stdin: Option<ByteReader>,
    pub stdout: Option<ByteWriter>,
    pub stderr: Option<ByteWriter>,
    /// Terminal sizes in the order the client sent them; closed when the
    /// client closes its resize stream or goes away.
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Resolves (with `Ok` or `Err`) once the client's connection is gone:
    /// the protocol keeps the sender in the task that reads the connection
    /// and drops it (or sends) when that read ends. An exec is killed then,
    /// as containerd does; an attach just detaches.
    pub client_gone: oneshot::Receiver<()>,
}

/// How an exec or attach ended, which the protocol reports to the client
/// on its error stream (v4/v5: a Kubernetes `Status` object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Exit code 0, or an attach that ended (the container exited or the
    /// client detached).
    Success,
    /// A process that exited with a non-zero code
    /// (`reason: NonZeroExitCode`, cause `ExitCode`).
    ExitCode(i32),
    /// The session could not run or broke (`Failure` with this message).
    Error(String),
}

/// An exec or an attach, ready to run once the protocol has its streams.
#[tonic::async_trait]
pub trait RemoteCommand: Send {
    /// Runs until the process (exec) ends, or the container exits or the
    /// client detaches (attach). Must not return before everything it
    /// wrote to `stdout`/`stderr` has been written (the protocol closes
    /// those streams after it returns). A client that goes away shows up
    /// as `client_gone`, as errors writing the output and as stdin's end.
    async fn run(self: Box<Self>, streams: SessionStreams) -> SessionEnd;
}

/// Connections to ports of one pod (`localhost:<port>` in its network
/// namespace).
#[tonic::async_trait]
pub trait PortDialer: Send + Sync {
    async fn dial(&self, port: u16) -> io::Result<Box<dyn Duplex>>;
}

/// Limits every protocol session follows.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// A connection with no traffic in either direction for this long is
    /// closed (kubelet's `streamingConnectionIdleTimeout`, default 4 h).
    pub idle_timeout: Duration,
    /// How long the client may take to open the streams it announced
    /// (kubelet: 30 s).
    pub stream_creation_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
        }
    }
}

impl SessionEnd {
    /// What `v4.channel.k8s.io` and later write on the error stream: a
    /// Kubernetes `Status` object, as kubelet's `remotecommand` server does.
    pub fn status_json(&self) -> Vec<u8> {
        let status = match self {
            SessionEnd::Success => serde_json::json!({"metadata": {}, "status": "Success"}),
            SessionEnd::ExitCode(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            SessionEnd::Error(message) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "code": 500,
                "details": {"causes": [{"message": message}]},
            }),
        };
        serde_json::to_vec(&status).expect("a JSON value encodes")
    }

    /// What the older protocols (`channel.k8s.io` v1, v2, v3) write on the
    /// error stream: nothing on success, else the error's text.
    pub fn legacy_error_text(&self) -> Option<Vec<u8>> {
        match self {
            SessionEnd::Success => None,
            SessionEnd::ExitCode(code) => Some(
                format!("command terminated with non-zero exit code: exit status {code}")
                    .into_bytes(),
            ),
            SessionEnd::Error(message) => Some(message.clone().into_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_kubernetes_status_objects() {
        let parse = |end: SessionEnd| -> serde_json::Value {
            serde_json::from_slice(&end.status_json()).unwrap()
        };
        assert_eq!(parse(SessionEnd::Success)["status"], "Success");
        let failed = parse(SessionEnd::ExitCode(3));
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        let broken = parse(SessionEnd::Error("no such container".into()));
        assert_eq!(broken["status"], "Failure");
        assert_eq!(broken["message"], "no such container");
        assert_eq!(SessionEnd::Success.legacy_error_text(), None);
        assert!(SessionEnd::ExitCode(2).legacy_error_text().is_some());
    }

    #[test]
    fn term_sizes_read_as_kubernetes_sends_them() {
        let size: TermSize = serde_json::from_str(r#"{"Width":100,"Height":30}"#).unwrap();
        assert_eq!(
            size,
            TermSize {
                width: 100,
                height: 30
            }
        );
    }
}
