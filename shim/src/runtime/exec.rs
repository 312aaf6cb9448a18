//! ExecSync and ReopenContainerLog.

use std::sync::Arc;
use std::time::Duration;

use caisson_proto::cri;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

use super::pod::pod_dir;
use super::Runtime;
use crate::status::{CriError, CriResult};
use crate::store::{ContainerRecord, ContainerState};

/// Output kept per stream, like kubelet's own cap for exec probes.
const MAX_EXEC_OUTPUT: u64 = 16 << 20;
/// ExecSync without a timeout still ends eventually.
const NO_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long a failed exec waits for its container's init to be reaped
/// before the failure counts as the shim's own.
const STOPPED_GRACE: Duration = Duration::from_secs(2);
pub use caisson_sandbox::service::REOPEN_LOG_ANNOTATION;

fn read_capped(path: &std::path::Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_EXEC_OUTPUT).read_to_end(&mut out);
    }
    out
}

/// A new exec id.
pub fn new_exec_id() -> String {
    format!("exec-{}", &super::new_id()[..16])
}

/// The process of an exec in `c`: the container's own process (user,
/// environment, capabilities, cwd…) with another command, as the task
/// API's Exec takes it.
pub fn exec_process(c: &ContainerRecord, cmd: &[String], terminal: bool) -> CriResult<Any> {
    let spec: serde_json::Value = std::fs::read(c.bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| CriError::Internal(format!("container {} has no readable spec", c.id)))?;
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(terminal);
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    any.value = serde_json::to_vec(&process)
        .map_err(|e| CriError::internal("encoding the exec spec", e))?;
    Ok(any)
}

/// An exec that could not be added or started because its container
/// stopped meanwhile (a StopContainer racing the ExecSync, its init
/// exiting): FAILED_PRECONDITION, as if the container had been seen
/// stopped, rather than the shim's INTERNAL (e.g. ENOENT entering the
/// namespaces of an init that is gone).
async fn stopped_meanwhile(
    client: &crate::shims::ShimClient,
    container_id: &str,
    e: CriError,
) -> CriError {
    if !matches!(e, CriError::Internal(_)) {
        return e;
    }
    // The init may be dying still (a zombie has no namespaces to enter,
    // but the shim has not reaped it yet): wait a moment for its exit.
    let stopped = match client.wait(container_id, "", STOPPED_GRACE).await {
        Ok(exited) => exited.is_some(),
        Err(e) => matches!(e, CriError::NotFound { .. }),
    };
    if !stopped {
        e
    } else {
        CriError::FailedPrecondition(format!(
            "container {container_id} stopped while the exec was starting: {e}"
        ))
    }
}

impl Runtime {
    /// The container `id`, FAILED_PRECONDITION unless it is running.
    pub fn running_container(&self, id: &str) -> CriResult<ContainerRecord> {
        let c = self.container(id)?;
        if c.state != ContainerState::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        Ok(c)
    }

    pub async fn exec_sync(
        self: &Arc<Self>,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> CriResult<cri::ExecSyncResponse> {
        // The exec will be moved into the container's cgroup in a few ms.
        super::warm_cgroup_moves();
        if cmd.is_empty() {
            return Err(CriError::invalid("cmd", "must not be empty"));
        }
        if timeout < 0 {
            return Err(CriError::invalid("timeout", "must not be negative"));
        }
        let c = self.running_container(id)?;
        let pod = self.pod(&c.pod_id)?;
        let client = self.client(&pod)?;
        let any = exec_process(&c, &cmd, false)?;
        let exec_id = new_exec_id();
        let dir = tempfile::Builder::new()
            .prefix("exec-")
            .tempdir_in(pod_dir(self, &pod.id))
            .map_err(|e| CriError::internal("creating the exec output dir", e))?;
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let added = client
            .exec(api::ExecProcessRequest {
                id: c.id.clone(),
                exec_id: exec_id.clone(),
                stdout: format!("file://{}", out.display()),
                stderr: format!("file://{}", err.display()),
                spec: Some(any).into(),
                ..Default::default()
            })
            .await;
        if let Err(e) = added {
            return Err(stopped_meanwhile(&client, &c.id, e).await);
        }
        let limit = if timeout == 0 {
            NO_TIMEOUT
        } else {
            Duration::from_secs(timeout as u64)
        };
        let started = client.start(&c.id, &exec_id).await;
        let waited = match started {
            Ok(_) => client.wait(&c.id, &exec_id, limit).await,
            Err(e) => Err(stopped_meanwhile(&client, &c.id, e).await),
        };
        let result = match waited {
            Ok(Some(w)) => Ok(cri::ExecSyncResponse {
                stdout: read_capped(&out),
                stderr: read_capped(&err),
                exit_code: w.exit_status as i32,
            }),
            Ok(None) => {
                let _ = client
                    .kill(&c.id, &exec_id, libc::SIGKILL as u32, false)
                    .await;
                let _ = client.wait(&c.id, &exec_id, Duration::from_secs(10)).await;
                Err(CriError::DeadlineExceeded(format!(
                    "command {cmd:?} timed out after {timeout}s"
                )))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = client.delete(&c.id, &exec_id).await {
            tracing::debug!(container_id = %c.id, exec_id, error = %e, "deleting the exec");
        }
        result
    }

    /// Asks the shim to start a new log file at the container's log path
    /// (kubelet has renamed the old one).
    pub async fn reopen_container_log(self: &Arc<Self>, id: &str) -> CriResult<()> {
        let c = self.running_container(id)?;
        if c.log_path.as_os_str().is_empty() {
            return Err(CriError::FailedPrecondition(format!(
                "container {} has no log path",
                c.id
            )));
        }
        let pod = self.pod(&c.pod_id)?;
        let client = self.client(&pod)?;
        client
            .update(api::UpdateTaskRequest {
                id: c.id.clone(),
                annotations: [(REOPEN_LOG_ANNOTATION.to_string(), "true".to_string())].into(),
                ..Default::default()
            })
            .await
    }
}
