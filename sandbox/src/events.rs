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
use containerd_shim_protos::protobuf::MessageDyn;
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

fn envelope(namespace: &str, event: &TaskEvent) -> ForwardRequest {
    let message = event.message();
    let mut any = Any::new();
    any.type_url = message.descriptor_dyn().full_name().to_string();
    any.value = message.write_to_bytes_dyn().unwrap_or_default();
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
