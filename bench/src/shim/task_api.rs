//! The containerd Task API, called the way containerd 1.6 calls it: raw ttrpc
//! requests to `containerd.task.v2.Task` (the only name runc's shim serves;
//! Caisson's serves it too), and a fake events service for the shims to
//! publish to.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::{create_events, Events};

use super::Result;

/// The service name containerd 1.6 calls.
const TASK_SERVICE: &str = "containerd.task.v2.Task";
/// Deadline of every request (containerd's own is 10–30 s per call).
const TIMEOUT: Duration = Duration::from_secs(30);

/// One ttrpc connection to a shim.
pub struct TaskApi {
    client: ttrpc::Client,
    address: String,
}

impl TaskApi {
    pub fn connect(address: &str) -> Result<TaskApi> {
        let client = ttrpc::Client::connect(address)
            .map_err(|e| format!("connecting to the shim at {address}: {e}"))?;
        Ok(TaskApi {
            client,
            address: address.to_string(),
        })
    }

    fn call<Req: Message, Resp: Message>(&self, method: &str, req: &Req) -> Result<Resp> {
        let mut request = ttrpc::Request::new();
        request.service = TASK_SERVICE.to_string();
        request.method = method.to_string();
        request.timeout_nano = TIMEOUT.as_nanos() as i64;
        request.payload = req.write_to_bytes()?;
        let response = self
            .client
            .request(request)
            .map_err(|e| format!("{TASK_SERVICE}/{method} at {}: {e}", self.address))?;
        Ok(Resp::parse_from_bytes(&response.payload)?)
    }

    /// `Connect`: the shim's pid.
    pub fn shim_pid(&self, id: &str) -> Result<u32> {
        let req = api::ConnectRequest {
            id: id.into(),
            ..Default::default()
        };
        let resp: api::ConnectResponse = self.call("Connect", &req)?;
        Ok(resp.shim_pid)
    }

    /// `Create` with no rootfs mounts (the bundle's `rootfs/` is used as is)
    /// and no stdio; returns the task's pid.
    pub fn create(&self, id: &str, bundle: &std::path::Path) -> Result<u32> {
        let req = api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        };
        let resp: api::CreateTaskResponse = self.call("Create", &req)?;
        Ok(resp.pid)
    }

    pub fn start(&self, id: &str) -> Result<u32> {
        let req = api::StartRequest {
            id: id.into(),
            ..Default::default()
        };
        let resp: api::StartResponse = self.call("Start", &req)?;
        Ok(resp.pid)
    }

    pub fn kill(&self, id: &str, signal: i32) -> Result<()> {
        let req = api::KillRequest {
            id: id.into(),
            signal: signal as u32,
            ..Default::default()
        };
        let _: Empty = self.call("Kill", &req)?;
        Ok(())
    }

    /// `Wait`: the exit status.
    pub fn wait(&self, id: &str) -> Result<u32> {
        let req = api::WaitRequest {
            id: id.into(),
            ..Default::default()
        };
        let resp: api::WaitResponse = self.call("Wait", &req)?;
        Ok(resp.exit_status)
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        let req = api::DeleteRequest {
            id: id.into(),
            ..Default::default()
        };
        let _: api::DeleteResponse = self.call("Delete", &req)?;
        Ok(())
    }

    /// `Kill` SIGKILL, `Wait`, `Delete`; checks the exit status is 128 + 9.
    pub fn kill_wait_delete(&self, id: &str) -> Result<()> {
        self.kill(id, libc::SIGKILL)?;
        let status = self.wait(id)?;
        if status != 128 + libc::SIGKILL as u32 {
            return Err(format!("{id} exited with {status} after SIGKILL, expected 137").into());
        }
        self.delete(id)
    }

    /// `Shutdown`. The shim may exit before it answers, so a closed
    /// connection is not an error; the caller checks the process is gone.
    pub fn shutdown(&self, id: &str) {
        let req = api::ShutdownRequest {
            id: id.into(),
            ..Default::default()
        };
        let _: Result<Empty> = self.call("Shutdown", &req);
    }
}

/// A fake `containerd.services.events.ttrpc.v1.Events` that counts what a
/// shim forwards, so that neither shim is spared the work of publishing.
pub struct EventsServer {
    pub address: String,
    counter: Arc<Counter>,
    _server: ttrpc::Server,
}

#[derive(Default)]
struct Counter {
    events: AtomicUsize,
}

impl Events for Counter {
    fn forward(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        _req: api::ForwardRequest,
    ) -> ttrpc::Result<Empty> {
        self.events.fetch_add(1, Ordering::Relaxed);
        Ok(Empty::new())
    }
}

impl EventsServer {
    /// Serves on `socket` (a path), reachable at `unix://<socket>`.
    pub fn serve(socket: &std::path::Path) -> Result<EventsServer> {
        let address = format!("unix://{}", socket.display());
        let counter = Arc::new(Counter::default());
        let mut server = ttrpc::Server::new()
            .bind(&address)
            .map_err(|e| format!("binding the events server at {address}: {e}"))?
            .register_service(create_events(counter.clone()));
        server
            .start()
            .map_err(|e| format!("starting the events server: {e}"))?;
        Ok(EventsServer {
            address,
            counter,
            _server: server,
        })
    }

    /// Events forwarded so far.
    pub fn count(&self) -> usize {
        self.counter.events.load(Ordering::Relaxed)
    }
}
