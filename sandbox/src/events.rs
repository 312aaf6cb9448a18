//! Task lifecycle events, forwarded to the caller's events service at
//! `TTRPC_ADDRESS` (containerd, or `caissond` which serves the same API), so
//! the caller learns of exits without polling.
//!
//! Publishing never blocks a task operation: events go through a channel to
//! one thread that (re)connects and forwards them in order.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{CodedOutputStream, MessageDyn};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::topics;
use containerd_shim_protos::EventsClient;

/// A task event, in Caisson's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    Create {
        id: String,
        bundle: String,
        pid: u32,
        stdin: String,
        stdout: String,
        stderr: String,
        terminal: bool,
    },
    Start {
        id: String,
        pid: u32,
    },
    Exit {
        id: String,
        exec_id: String,
        pid: u32,
        status: u32,
        exited_at: SystemTime,
    },
    Oom {
        id: String,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
    Delete {
        id: String,
        pid: u32,
        status: u32,
        exited_at: SystemTime,
    },
}

impl TaskEvent {
    pub fn topic(&self) -> &'static str {
        match self {
            TaskEvent::Create { .. } => topics::TASK_CREATE_EVENT_TOPIC,
            TaskEvent::Start { .. } => topics::TASK_START_EVENT_TOPIC,
            TaskEvent::Exit { .. } => topics::TASK_EXIT_EVENT_TOPIC,
            TaskEvent::Oom { .. } => topics::TASK_OOM_EVENT_TOPIC,
            TaskEvent::ExecAdded { .. } => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskEvent::ExecStarted { .. } => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskEvent::Paused { .. } => topics::TASK_PAUSED_EVENT_TOPIC,
            TaskEvent::Resumed { .. } => topics::TASK_RESUMED_EVENT_TOPIC,
            TaskEvent::Delete { .. } => topics::TASK_DELETE_EVENT_TOPIC,
        }
    }

    /// The `Any` type URL of [`Self::message`]: its protobuf full name,
    /// spelt out because asking the message (`descriptor_dyn`) builds
    /// rust-protobuf's reflection of its file and of `descriptor.proto`,
    /// comments and all: most of an idle shim's heap (~0.5 MB) until then.
    fn type_url(&self) -> &'static str {
        match self {
            TaskEvent::Create { .. } => "containerd.events.TaskCreate",
            TaskEvent::Start { .. } => "containerd.events.TaskStart",
            TaskEvent::Exit { .. } => "containerd.events.TaskExit",
            TaskEvent::Oom { .. } => "containerd.events.TaskOOM",
            TaskEvent::ExecAdded { .. } => "containerd.events.TaskExecAdded",
            TaskEvent::ExecStarted { .. } => "containerd.events.TaskExecStarted",
            TaskEvent::Paused { .. } => "containerd.events.TaskPaused",
            TaskEvent::Resumed { .. } => "containerd.events.TaskResumed",
            TaskEvent::Delete { .. } => "containerd.events.TaskDelete",
        }
    }

    /// The containerd event message for this event.
    fn message(&self) -> Box<dyn MessageDyn> {
        match self.clone() {
            TaskEvent::Create {
                id,
                bundle,
                pid,
                stdin,
                stdout,
                stderr,
                terminal,
            } => Box::new(TaskCreate {
                container_id: id,
                bundle,
                pid,
                io: Some(TaskIO {
                    stdin,
                    stdout,
                    stderr,
                    terminal,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            }),
            TaskEvent::Start { id, pid } => Box::new(TaskStart {
                container_id: id,
                pid,
                ..Default::default()
            }),
            TaskEvent::Exit {
                id,
                exec_id,
                pid,
                status,
                exited_at,
            } => Box::new(TaskExit {
                // containerd names the process by exec id, or the container id for init.
                id: if exec_id.is_empty() {
                    id.clone()
                } else {
                    exec_id
                },
                container_id: id,
                pid,
                exit_status: status,
                exited_at: Some(timestamp(exited_at)).into(),
                ..Default::default()
            }),
            TaskEvent::Oom { id } => Box::new(TaskOOM {
                container_id: id,
                ..Default::default()
            }),
            TaskEvent::ExecAdded { id, exec_id } => Box::new(TaskExecAdded {
                container_id: id,
                exec_id,
                ..Default::default()
            }),
            TaskEvent::ExecStarted { id, exec_id, pid } => Box::new(TaskExecStarted {
                container_id: id,
                exec_id,
                pid,
                ..Default::default()
            }),
            TaskEvent::Paused { id } => Box::new(TaskPaused {
                container_id: id,
                ..Default::default()
            }),
            TaskEvent::Resumed { id } => Box::new(TaskResumed {
                container_id: id,
                ..Default::default()
            }),
            TaskEvent::Delete {
                id,
                pid,
                status,
                exited_at,
            } => Box::new(TaskDelete {
                id: id.clone(),
                container_id: id,
                pid,
                exit_status: status,
                exited_at: Some(timestamp(exited_at)).into(),
                ..Default::default()
            }),
        }
    }
}

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// How long the events connection stays open after the last event.
const IDLE_DISCONNECT: Duration = Duration::from_millis(500);

/// Sends events to the caller's events service from a background thread.
#[derive(Clone)]
pub struct Publisher {
    tx: Option<Sender<TaskEvent>>,
}

impl Publisher {
    /// Publishes to `address` (`unix:///…`) under `namespace`. An empty
    /// address (the shim run by hand) drops events with a debug log.
    pub fn new(address: &str, namespace: &str) -> Publisher {
        if address.is_empty() {
            tracing::debug!("no TTRPC_ADDRESS: task events are not published");
            return Publisher { tx: None };
        }
        let (tx, rx) = channel::<TaskEvent>();
        // containerd 1.6 passes a bare socket path; ttrpc wants a URI.
        let address = if address.contains("://") {
            address.to_string()
        } else {
            format!("unix://{address}")
        };
        let namespace = namespace.to_string();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let mut client: Option<EventsClient> = None;
                loop {
                    // The connection is dropped once no event came for a
                    // while: ttrpc's sync client reads replies on a thread
                    // that wakes every 10 ms, which an idle pod should not pay.
                    let event = match rx.recv_timeout(IDLE_DISCONNECT) {
                        Ok(event) => event,
                        Err(RecvTimeoutError::Timeout) => {
                            client = None;
                            // Every task operation publishes, so this is also
                            // when the shim has gone quiet: give back the
                            // heap pages its last operation freed.
                            // SAFETY: malloc_trim only walks malloc's own heap.
                            unsafe { libc::malloc_trim(0) };
                            match rx.recv() {
                                Ok(event) => event,
                                Err(_) => break,
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    let request = envelope(&namespace, &event);
                    for attempt in 0..3 {
                        if client.is_none() {
                            client = ttrpc::Client::connect(&address).ok().map(EventsClient::new);
                        }
                        let Some(c) = &client else {
                            std::thread::sleep(Duration::from_millis(50 << attempt));
                            continue;
                        };
                        match c.forward(ttrpc::context::with_timeout(5_000_000_000), &request) {
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!(topic = event.topic(), error = %e, "forwarding event failed");
                                client = None;
                            }
                        }
                    }
                }
            })
            .expect("spawning the events thread");
        Publisher { tx: Some(tx) }
    }

    pub fn publish(&self, event: TaskEvent) {
        tracing::debug!(?event, "task event");
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }
}

/// `message` in protobuf's wire format, by the generated code alone:
/// `write_to_bytes_dyn` asks the message for its descriptor (to name it in
/// a size error), which builds rust-protobuf's reflection (see
/// [`TaskEvent::type_url`]).
fn encode(message: &dyn MessageDyn) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(message.compute_size_dyn() as usize);
    let mut out = CodedOutputStream::vec(&mut bytes);
    let written = message
        .write_to_with_cached_sizes_dyn(&mut out)
        .and_then(|()| out.flush());
    drop(out);
    match written {
        Ok(()) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, "encoding a task event");
            Vec::new()
        }
    }
}

fn envelope(namespace: &str, event: &TaskEvent) -> ForwardRequest {
    let message = event.message();
    let mut any = Any::new();
    any.type_url = event.type_url().to_string();
    any.value = encode(message.as_ref());
    let envelope = Envelope {
        timestamp: Some(timestamp(SystemTime::now())).into(),
        namespace: namespace.to_string(),
        topic: event.topic().to_string(),
        event: Some(any).into(),
        ..Default::default()
    };
    ForwardRequest {
        envelope: Some(envelope).into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spelt-out type URLs are the messages' protobuf full names.
    #[test]
    fn type_urls_are_the_messages_full_names() {
        let at = SystemTime::now();
        let id = || "c".to_string();
        let events = [
            TaskEvent::Create {
                id: id(),
                bundle: id(),
                pid: 1,
                stdin: id(),
                stdout: id(),
                stderr: id(),
                terminal: false,
            },
            TaskEvent::Start { id: id(), pid: 1 },
            TaskEvent::Exit {
                id: id(),
                exec_id: id(),
                pid: 1,
                status: 0,
                exited_at: at,
            },
            TaskEvent::Oom { id: id() },
            TaskEvent::ExecAdded {
                id: id(),
                exec_id: id(),
            },
            TaskEvent::ExecStarted {
                id: id(),
                exec_id: id(),
                pid: 1,
            },
            TaskEvent::Paused { id: id() },
            TaskEvent::Resumed { id: id() },
            TaskEvent::Delete {
                id: id(),
                pid: 1,
                status: 0,
                exited_at: at,
            },
        ];
        for event in &events {
            assert_eq!(
                event.type_url(),
                event.message().descriptor_dyn().full_name(),
                "{event:?}"
            );
            let request = envelope("ns", event);
            let any = request.envelope.event.as_ref().unwrap();
            assert_eq!(any.type_url, event.type_url());
            let message = event.message();
            assert_eq!(any.value, message.write_to_bytes_dyn().unwrap());
            assert!(!any.value.is_empty(), "{event:?} encodes its fields");
        }
    }
}
