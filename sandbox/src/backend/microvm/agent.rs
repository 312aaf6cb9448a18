//! The host's end of the agent channel: the unix socket QEMU serves for the
//! guest's virtio-serial port, speaking `caisson-agent-proto` frames.
//!
//! One reader thread decodes every frame: a response goes to the caller
//! waiting on its id, an event to the backend's handler (in order, so a
//! process's output is handled before its exit). Writers take one lock
//! per frame. When the stream ends (the VM died, or the agent closed it),
//! every waiting call fails and the close handler runs once.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use caisson_agent_proto::{
    self as proto, code, encode_frame, event, frame, read_frame, request, Frame, Response,
};

use crate::backend::locked;

/// Called with each event, in the order the agent sent them.
pub type EventHandler = Box<dyn Fn(event::Kind) + Send + Sync>;
/// Called once when the channel ends, with why.
pub type CloseHandler = Box<dyn FnOnce(String) + Send>;

/// Why a call failed: the agent's own answer, or the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The agent answered with this code (not OK) and message.
    Agent { code: u32, message: String },
    /// No answer: the channel is closed, or the call timed out.
    Channel(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Agent { code, message } => write!(f, "agent (code {code}): {message}"),
            CallError::Channel(why) => write!(f, "agent channel: {why}"),
        }
    }
}

pub struct AgentConn {
    writer: Mutex<UnixStream>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, mpsc::Sender<Response>>,
    /// Set once the stream ended: why.
    closed: Option<String>,
}

impl AgentConn {
    /// Connects to the socket QEMU listens on (retrying until `deadline`
    /// while QEMU starts), then waits until the agent says it is ready.
    /// `alive` is polled while waiting: false (QEMU exited) ends the wait.
    pub fn connect(
        socket: &Path,
        deadline: Instant,
        alive: &dyn Fn() -> bool,
        on_event: EventHandler,
        on_close: CloseHandler,
    ) -> Result<(Arc<AgentConn>, proto::Ready), String> {
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) => {
                    if Instant::now() >= deadline || !alive() {
                        return Err(format!("connecting to {}: {e}", socket.display()));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        let reader = stream
            .try_clone()
            .map_err(|e| format!("agent socket: {e}"))?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let conn = Arc::new(AgentConn {
            writer: Mutex::new(stream),
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
        });
        let pending = conn.pending.clone();
        std::thread::Builder::new()
            .name("agent-reader".into())
            .spawn(move || read_loop(reader, pending, ready_tx, on_event, on_close))
            .map_err(|e| format!("starting the agent reader: {e}"))?;
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(ready)) => return Ok((conn, ready)),
                Ok(Err(why)) => return Err(why),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !alive() {
                        return Err("the VM exited before its agent was ready".into());
                    }
                    if Instant::now() >= deadline {
                        conn.close();
                        return Err("the agent did not say it was ready in time".into());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the agent channel closed before the agent was ready".into())
                }
            }
        }
    }

    /// Sends a request and waits up to `timeout` for its response.
    pub fn call(&self, op: request::Op, timeout: Duration) -> Result<Response, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        {
            let mut pending = locked(&self.pending);
            if let Some(why) = &pending.closed {
                return Err(CallError::Channel(why.clone()));
            }
            pending.waiting.insert(id, tx);
        }
        if let Err(e) = self.send(&Frame::request(id, op)) {
            locked(&self.pending).waiting.remove(&id);
            return Err(CallError::Channel(e));
        }
        let response = match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                locked(&self.pending).waiting.remove(&id);
                return Err(CallError::Channel(format!(
                    "no answer in {} s",
                    timeout.as_secs()
                )));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let why = locked(&self.pending).closed.clone();
                return Err(CallError::Channel(
                    why.unwrap_or_else(|| "closed".to_string()),
                ));
            }
        };
        if response.code != code::OK {
            return Err(CallError::Agent {
                code: response.code,
                message: response.message,
            });
        }
        Ok(response)
    }

    /// Sends a one-way request (no response).
    pub fn send_oneway(&self, op: request::Op) -> Result<(), String> {
        self.send(&Frame::request(0, op))
    }

    fn send(&self, frame: &Frame) -> Result<(), String> {
        let bytes = encode_frame(frame);
        locked(&self.writer)
            .write_all(&bytes)
            .map_err(|e| format!("writing to the agent: {e}"))
    }

    /// Closes the channel (the reader thread then ends).
    pub fn close(&self) {
        let _ = locked(&self.writer).shutdown(std::net::Shutdown::Both);
    }
}

type ReadySender = mpsc::Sender<Result<proto::Ready, String>>;

fn read_loop(
    mut stream: UnixStream,
    pending: Arc<Mutex<Pending>>,
    ready: ReadySender,
    on_event: EventHandler,
    on_close: CloseHandler,
) {
    let mut ready = Some(ready);
    let why = loop {
        let frame = match read_frame(&mut stream) {
            Ok(Some(f)) => f,
            Ok(None) => break "the agent channel closed".to_string(),
            Err(e) => break format!("reading the agent channel: {e}"),
        };
        match frame.body {
            Some(frame::Body::Response(r)) => {
                if let Some(tx) = locked(&pending).waiting.remove(&frame.id) {
                    let _ = tx.send(r);
                }
            }
            Some(frame::Body::Event(proto::Event {
                kind: Some(event::Kind::Ready(r)),
            })) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Ok(r));
                }
            }
            Some(frame::Body::Event(proto::Event { kind: Some(kind) })) => on_event(kind),
            other => tracing::warn!(?other, "unexpected frame from the agent"),
        }
    };
    tracing::info!(reason = %why, "agent channel ended");
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err(why.clone()));
    }
    {
        let mut pending = locked(&pending);
        pending.closed = Some(why.clone());
        pending.waiting.clear();
    }
    on_close(why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use caisson_agent_proto::write_frame;
    use std::os::unix::net::UnixListener;

    /// A fake agent on a socket: says Ready, answers GetStatus, fails
    /// everything else with NOT_FOUND, then emits an event and hangs up.
    #[test]
    fn calls_get_their_own_answers_events_flow_and_a_closed_channel_fails_calls() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let agent = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let ready = proto::Ready {
                agent_version: "t".into(),
                kernel_release: "6.1.0-test".into(),
                boot_ms: 1,
            };
            write_frame(&mut s, &Frame::event(event::Kind::Ready(ready))).unwrap();
            for _ in 0..2 {
                let f = read_frame(&mut s).unwrap().unwrap();
                let Some(frame::Body::Request(proto::Request { op: Some(op) })) = f.body else {
                    panic!("not a request: {f:?}");
                };
                let answer = match op {
                    request::Op::GetStatus(_) => Response {
                        result: Some(proto::response::Result::Status(proto::GuestStatus {
                            containers: 2,
                            ..Default::default()
                        })),
                        ..Response::ok()
                    },
                    _ => Response::error(code::NOT_FOUND, "no such container"),
                };
                write_frame(&mut s, &Frame::response(f.id, answer)).unwrap();
            }
            write_frame(
                &mut s,
                &Frame::event(event::Kind::Oom(proto::Oom {
                    container_id: "c1".into(),
                })),
            )
            .unwrap();
        });
        let (events_tx, events_rx) = mpsc::channel();
        let (closed_tx, closed_rx) = mpsc::channel();
        let events_tx = Mutex::new(events_tx);
        let (conn, ready) = AgentConn::connect(
            &socket,
            Instant::now() + Duration::from_secs(10),
            &|| true,
            Box::new(move |e| {
                let _ = locked(&events_tx).send(e);
            }),
            Box::new(move |why| {
                let _ = closed_tx.send(why);
            }),
        )
        .unwrap();
        assert_eq!(ready.kernel_release, "6.1.0-test");
        let status = conn
            .call(
                request::Op::GetStatus(proto::GetStatus {}),
                Duration::from_secs(10),
            )
            .unwrap();
        assert!(matches!(
            status.result,
            Some(proto::response::Result::Status(proto::GuestStatus {
                containers: 2,
                ..
            }))
        ));
        let err = conn
            .call(
                request::Op::StartContainer(proto::StartContainer {
                    container_id: "x".into(),
                }),
                Duration::from_secs(10),
            )
            .unwrap_err();
        assert_eq!(
            err,
            CallError::Agent {
                code: code::NOT_FOUND,
                message: "no such container".into()
            }
        );
        let event = events_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(event, event::Kind::Oom(o) if o.container_id == "c1"));
        agent.join().unwrap();
        let why = closed_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(why.contains("closed"), "{why}");
        let err = conn
            .call(
                request::Op::GetStatus(proto::GetStatus {}),
                Duration::from_secs(10),
            )
            .unwrap_err();
        assert!(matches!(err, CallError::Channel(_)), "{err:?}");
    }
}
