//! A CRI daemon under test (caissond or containerd), started by the bench
//! with everything under its own dir ([`crate::daemon::Process`]), and
//! driven with the `k8s-cri` client over its unix socket. Dropping it
//! removes its pods through CRI and stops it, so an early error cannot
//! leave a daemon running; what it leaves is for [`super::bench`] to record
//! and clean up.

use std::fs;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::workload;
use super::Result;
use crate::daemon::Process;

/// How long one CRI call may take before the bench gives up.
const RPC_DEADLINE: Duration = Duration::from_secs(120);

/// What a daemon is and where its things are.
pub struct Spec {
    /// `caisson` or `containerd`: the name in the table.
    pub name: &'static str,
    pub binary: PathBuf,
    pub version: String,
    /// Everything the daemon makes is under this dir.
    pub dir: PathBuf,
    /// `linux.cgroup_parent` in pod configs (empty: the daemon's own default).
    pub pod_cgroup_parent: String,
    /// The cgroupfs parent its pods' cgroups are made under.
    pub cgroup_parent: &'static str,
    /// File name of its per-pod shim binary.
    pub shim_name: &'static str,
    /// Pods on the CNI network (`--cni`) rather than the host's.
    pub pod_network: bool,
}

/// A running daemon and a CRI client connected to it.
pub struct Daemon {
    pub spec: Spec,
    process: Process,
    pods_made: usize,
}

/// Wall time of each call that brings up one pod with one running container.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimes {
    pub run_pod: Duration,
    pub create: Duration,
    pub start: Duration,
    /// From before RunPodSandbox to after StartContainer.
    pub total: Duration,
}

/// Wall time of the calls that tear a pod down.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopTimes {
    pub stop: Duration,
    pub remove: Duration,
    pub total: Duration,
}

impl StartTimes {
    /// The three calls' times and their sum.
    pub fn of(run_pod: Duration, create: Duration, start: Duration) -> StartTimes {
        StartTimes {
            run_pod,
            create,
            start,
            total: run_pod + create + start,
        }
    }
}

impl StopTimes {
    /// The two calls' times and their sum.
    pub fn of(stop: Duration, remove: Duration) -> StopTimes {
        StopTimes {
            stop,
            remove,
            total: stop + remove,
        }
    }
}

impl Daemon {
    /// The daemon `spec` describes, started as `process`.
    pub fn new(spec: Spec, process: Process) -> Daemon {
        Daemon {
            spec,
            process,
            pods_made: 0,
        }
    }

    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A client for one call (tonic clients are cheap handles on one channel).
    pub fn client(&self) -> RuntimeServiceClient<Channel> {
        self.process.runtime()
    }

    /// Runs one CRI call with a deadline and times it; a failure names the
    /// call and carries the end of the daemon's log.
    pub fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<(T, Duration)> {
        let start = Instant::now();
        let reply = self.process.call(what, RPC_DEADLINE, call)?;
        Ok((reply, start.elapsed()))
    }

    /// RunPodSandbox, CreateContainer (busybox `sleep 3600`), StartContainer,
    /// each timed. Returns the pod's id.
    pub fn start_pod(&mut self) -> Result<(String, StartTimes)> {
        let (pod_id, _, times) = self.start_pod_running(&workload::COMMAND)?;
        Ok((pod_id, times))
    }

    /// [`Daemon::start_pod`] with a container running `command`. Returns
    /// the pod's and the container's ids.
    pub fn start_pod_running(&mut self, command: &[&str]) -> Result<(String, String, StartTimes)> {
        self.pods_made += 1;
        let name = format!("bench-{}", self.pods_made);
        self.start_named_pod(&name, command)
    }

    /// [`Daemon::start_pod_running`] for a pod named `name` (unique among
    /// the daemon's pods), callable from several threads at once.
    pub fn start_named_pod(
        &self,
        name: &str,
        command: &[&str],
    ) -> Result<(String, String, StartTimes)> {
        let log_dir = self.spec.dir.join("pod-logs").join(name);
        // kubelet makes the container's log dir before CreateContainer.
        let container_log = log_dir.join(workload::LOG_PATH);
        if let Some(dir) = container_log.parent() {
            fs::create_dir_all(dir)?;
        }
        let pod_config = workload::pod_config(
            name,
            &log_dir,
            &self.spec.pod_cgroup_parent,
            self.spec.pod_network,
        );

        let mut c = self.client();
        let request = cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        };
        let (reply, run_pod) =
            self.call(
                "RunPodSandbox",
                async move { c.run_pod_sandbox(request).await },
            )?;
        let pod_id = reply.pod_sandbox_id;

        let mut c = self.client();
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(workload::container_running(self.spec.pod_network, command)),
            sandbox_config: Some(pod_config),
        };
        let (reply, create) = self.call("CreateContainer", async move {
            c.create_container(request).await
        })?;

        let container_id = reply.container_id;
        let mut c = self.client();
        let request = cri::StartContainerRequest {
            container_id: container_id.clone(),
        };
        let (_, start) = self.call(
            "StartContainer",
            async move { c.start_container(request).await },
        )?;
        Ok((pod_id, container_id, StartTimes::of(run_pod, create, start)))
    }

    /// StopPodSandbox + RemovePodSandbox, each timed.
    pub fn remove_pod(&mut self, pod_id: &str) -> Result<StopTimes> {
        let mut c = self.client();
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        };
        let (_, stop) = self.call("StopPodSandbox", async move {
            c.stop_pod_sandbox(request).await
        })?;
        let mut c = self.client();
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        };
        let (_, remove) = self.call("RemovePodSandbox", async move {
            c.remove_pod_sandbox(request).await
        })?;
        Ok(StopTimes::of(stop, remove))
    }

    /// Ids of the pods the daemon lists.
    pub fn list_pods(&mut self) -> Result<Vec<String>> {
        let mut c = self.client();
        let request = cri::ListPodSandboxRequest::default();
        let (reply, _) = self.call("ListPodSandbox", async move {
            c.list_pod_sandbox(request).await
        })?;
        Ok(reply.items.into_iter().map(|p| p.id).collect())
    }

    /// Every pod stopped and removed through CRI; returns how many there were.
    pub fn remove_all_pods(&mut self) -> Result<usize> {
        let pods = self.list_pods()?;
        for id in &pods {
            self.remove_pod(id)?;
        }
        let left = self.list_pods()?;
        if !left.is_empty() {
            return Err(format!("{} still lists pods after removal: {left:?}", self.name()).into());
        }
        Ok(pods.len())
    }

    /// SIGTERM, then SIGKILL if it is still running after a deadline.
    /// Returns how long it took to exit and whether it had to be killed.
    pub fn stop(&mut self) -> Result<(Duration, bool)> {
        self.process.stop()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.process.running() {
            if let Err(e) = self.remove_all_pods() {
                eprintln!("removing {}'s pods: {e}", self.name());
            }
            if let Err(e) = self.stop() {
                eprintln!("stopping {}: {e}", self.name());
            }
        }
    }
}
