//! A CRI daemon under test (caissond or containerd), started by the bench
//! with everything under its own dir, and driven with the `k8s-cri` client
//! over its unix socket. Dropping it removes its pods through CRI and stops
//! it, so an early error cannot leave a daemon running.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::workload;
use super::Result;

/// How long a daemon may take to serve CRI after it is spawned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long one CRI call may take before the bench gives up.
const RPC_DEADLINE: Duration = Duration::from_secs(120);
/// How long a daemon may take to exit after SIGTERM.
const EXIT_DEADLINE: Duration = Duration::from_secs(15);

/// What a daemon is and where its things are.
pub struct Spec {
    /// `caisson` or `containerd`: the name in the table.
    pub name: &'static str,
    pub binary: PathBuf,
    pub version: String,
    /// The daemon's command line; stdout and stderr are redirected by [`Daemon::start`].
    pub command: Command,
    /// Everything the daemon makes is under this dir.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
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
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
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

/// `status` as "CODE: message".
fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn connect(socket: PathBuf) -> std::result::Result<Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Daemon {
    /// Spawns the daemon (stderr and stdout to its log) and waits until CRI
    /// `Version` answers on its socket.
    pub fn start(mut spec: Spec) -> Result<Daemon> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .map_err(|e| format!("opening {}: {e}", spec.log_path.display()))?;
        let mut child = spec
            .command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", spec.binary.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let client = loop {
            if spec.socket.exists() {
                if let Ok(channel) = rt.block_on(connect(spec.socket.clone())) {
                    let mut client = RuntimeServiceClient::new(channel);
                    let version = rt.block_on(client.version(cri::VersionRequest::default()));
                    if version.is_ok() {
                        break client;
                    }
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} exited with {status} at startup; its log ({}) ends with:\n{}",
                    spec.name,
                    spec.log_path.display(),
                    log_tail(&spec.log_path, 40)
                )
                .into());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not serve CRI on {} within {STARTUP_DEADLINE:?}; its log ends with:\n{}",
                    spec.name,
                    spec.socket.display(),
                    log_tail(&spec.log_path, 40)
                )
                .into());
            }
            // Polling for a socket another process makes: there is no event to wait on.
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Daemon {
            spec,
            child: Some(child),
            rt,
            client,
            pods_made: 0,
        })
    }

    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// A client for one call (tonic clients are cheap handles on one channel).
    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone()
    }

    /// Runs one CRI call with a deadline and times it; a failure names the
    /// call and carries the end of the daemon's log.
    fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<(T, Duration)> {
        let start = Instant::now();
        let reply = self
            .rt
            .block_on(async { tokio::time::timeout(RPC_DEADLINE, call).await });
        let took = start.elapsed();
        match reply {
            Ok(Ok(reply)) => Ok((reply.into_inner(), took)),
            Ok(Err(status)) => Err(format!(
                "{} {what}: {}\n{}'s log ({}) ends with:\n{}",
                self.spec.name,
                describe(&status),
                self.spec.name,
                self.spec.log_path.display(),
                log_tail(&self.spec.log_path, 40)
            )
            .into()),
            Err(_) => Err(format!(
                "{} {what}: no answer within {RPC_DEADLINE:?}; its log ({}) ends with:\n{}",
                self.spec.name,
                self.spec.log_path.display(),
                log_tail(&self.spec.log_path, 40)
            )
            .into()),
        }
    }

    /// RunPodSandbox, CreateContainer (busybox `sleep 3600`), StartContainer,
    /// each timed. Returns the pod's id.
    pub fn start_pod(&mut self) -> Result<(String, StartTimes)> {
        self.pods_made += 1;
        let name = format!("bench-{}", self.pods_made);
        let log_dir = self.spec.dir.join("pod-logs").join(&name);
        // kubelet makes the container's log dir before CreateContainer.
        let container_log = log_dir.join(workload::LOG_PATH);
        if let Some(dir) = container_log.parent() {
            fs::create_dir_all(dir)?;
        }
        let pod_config = workload::pod_config(
            &name,
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
            config: Some(workload::container_config(self.spec.pod_network)),
            sandbox_config: Some(pod_config),
        };
        let (reply, create) = self.call("CreateContainer", async move {
            c.create_container(request).await
        })?;

        let mut c = self.client();
        let request = cri::StartContainerRequest {
            container_id: reply.container_id,
        };
        let (_, start) = self.call(
            "StartContainer",
            async move { c.start_container(request).await },
        )?;
        let times = StartTimes {
            run_pod,
            create,
            start,
            total: run_pod + create + start,
        };
        Ok((pod_id, times))
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
        Ok(StopTimes {
            stop,
            remove,
            total: stop + remove,
        })
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
        let Some(mut child) = self.child.take() else {
            return Ok((Duration::ZERO, false));
        };
        let start = Instant::now();
        // SAFETY: kill on the pid of our own child, not yet waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        while start.elapsed() < EXIT_DEADLINE {
            if child.try_wait()?.is_some() {
                return Ok((start.elapsed(), false));
            }
            // Waiting on the runtime, not the thread: its connection task must
            // run to answer the server's GOAWAY, or a graceful shutdown waits
            // for this client forever.
            self.rt
                .block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        }
        child.kill()?;
        child.wait()?;
        Ok((start.elapsed(), true))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.remove_all_pods() {
                eprintln!("removing {}'s pods: {e}", self.name());
            }
            if let Err(e) = self.stop() {
                eprintln!("stopping {}: {e}", self.name());
            }
        }
    }
}
