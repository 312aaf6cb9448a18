//! The caissond the `hardened` bench drives: release build beside the
//! bench, every path under a temp dir, three runtime handlers (`runc` →
//! native, `hardened`, `runc-oci` → oci delegating to `/usr/sbin/runc`).
//! Dropping it removes its pods through CRI, stops it, and removes what is
//! left of its processes, mounts and cgroups, after an error too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caisson_tests::fixtures::{ImageSpec, OciArchive};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::cri::Result;

/// Where the bench's caissond puts its pods' cgroups.
const CGROUP_PARENT: &str = "/caisson-bench-hardened";
const SHIM: &str = "containerd-shim-caisson-v2";
const BUILD: &str =
    "run `make release` (or `cargo build --release -p caisson-shim -p caisson-sandbox`)";
/// How long one CRI call may take before the bench gives up.
const RPC_DEADLINE: Duration = Duration::from_secs(600);

pub struct Daemon {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    caissond: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
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

fn config(dir: &Path, pause: &Path, shim: &Path) -> String {
    format!(
        r#"root_dir = "{root}"
run_dir = "{run}"
socket = "{run}/caissond.sock"
pause_image = ""
pause_binary = "{pause}"
shim_binary = "{shim}"
cgroup_parent = "{CGROUP_PARENT}"

[network]
cni_conf_dir = "{dir}/cni/net.d"
install_default_cni_config = false

[log]
level = "info"
format = "text"

[runtimes]
default_handler = "runc"
[runtimes.handlers.runc]
backend = "native"
[runtimes.handlers.hardened]
backend = "hardened"
[runtimes.handlers.runc-oci]
backend = "oci"
[runtimes.handlers.runc-oci.options]
runtime_path = "/usr/sbin/runc"
"#,
        root = dir.join("root").display(),
        run = dir.join("run").display(),
        pause = pause.display(),
        shim = shim.display(),
        dir = dir.display(),
    )
}

impl Daemon {
    /// Starts caissond and waits until it answers CRI `Version`.
    pub fn start(pause: &Path) -> Result<Daemon> {
        let exe = std::env::current_exe()?;
        let bin = exe.parent().ok_or("the bench's executable has no dir")?;
        let caissond = bin.join("caissond");
        let shim = bin.join(SHIM);
        for b in [&caissond, &shim] {
            if !b.is_file() {
                return Err(format!("{} not found: {BUILD}", b.display()).into());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("caisson-bench-hardened-")
            .tempdir_in("/var/tmp")?;
        let config_path = dir.path().join("caisson.toml");
        std::fs::write(&config_path, config(dir.path(), pause, &shim))?;
        let log_path = dir.path().join("caissond.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&caissond)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", caissond.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut d = Daemon {
            dir,
            config_path,
            log_path,
            caissond,
            child: Some(child),
            rt,
            client: None,
        };
        let socket = d.dir.path().join("run/caissond.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while d.client.is_none() {
            if socket.exists() {
                if let Ok(ch) = d.rt.block_on(connect(socket.clone())) {
                    let mut c = RuntimeServiceClient::new(ch);
                    if d.rt
                        .block_on(c.version(cri::VersionRequest::default()))
                        .is_ok()
                    {
                        d.client = Some(c);
                        break;
                    }
                }
            }
            if let Some(Ok(Some(status))) = d.child.as_mut().map(Child::try_wait) {
                return Err(format!("caissond exited with {status}:\n{}", d.log_tail()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("caissond did not serve CRI:\n{}", d.log_tail()).into());
            }
            // Polling for a socket another process makes: no event to wait on.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone().expect("connected at start")
    }

    /// One CRI call with a deadline; an error names it and carries the log.
    pub fn call<T, F>(
        &self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client());
        match self
            .rt
            .block_on(async { tokio::time::timeout(RPC_DEADLINE, fut).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(format!(
                "{what}: {:?}: {}\n--- caissond log ---\n{}",
                s.code(),
                s.message(),
                self.log_tail()
            )
            .into()),
            Err(_) => Err(format!("{what}: no answer within {RPC_DEADLINE:?}").into()),
        }
    }

    /// Imports an image through `caissond images import`.
    pub fn import_image(&self, image: &ImageSpec) -> Result<()> {
        let archive = self.dir().join("image.tar");
        let mut a = OciArchive::new();
        a.add_image(image);
        a.write(&archive, false);
        let out = Command::new(&self.caissond)
            .arg("--config")
            .arg(&self.config_path)
            .args(["images", "import"])
            .arg(&archive)
            .output()?;
        let _ = std::fs::remove_file(&archive);
        if !out.status.success() {
            return Err(format!(
                "images import: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(())
    }

    /// A pod config with its own log dir (made, as kubelet makes it).
    pub fn pod_config(&self, name: &str) -> Result<cri::PodSandboxConfig> {
        let logs = self.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs)?;
        Ok(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            ..Default::default()
        })
    }

    pub fn stop_and_remove_pod(&self, pod: &str) -> Result<()> {
        let id = pod.to_string();
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        let id = pod.to_string();
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        Ok(())
    }

    pub fn remove_all_pods(&self) -> Result<()> {
        let pods = self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
        })?;
        for p in pods.items {
            self.stop_and_remove_pod(&p.id)?;
        }
        Ok(())
    }

    /// Processes of this daemon's pods: in its cgroups, or naming its dir
    /// on their command line (shims). Not caissond itself.
    pub fn processes(&self) -> Vec<u32> {
        let dir = self.dir().display().to_string();
        let own = self.child.as_ref().map_or(0, Child::id);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != own && pid != std::process::id())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cgroup =
                    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                String::from_utf8_lossy(&cmd).contains(&dir)
                    || cgroup
                        .lines()
                        .filter_map(|l| l.splitn(3, ':').nth(2))
                        .any(|p| p.starts_with(&format!("{CGROUP_PARENT}/")))
            })
            .collect()
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all_pods() {
            eprintln!("removing the bench's pods: {e}");
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: SIGTERM to our own child, not yet waited for.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let left = self.processes();
        for pid in &left {
            eprintln!("killing a process the bench's pods left: {pid}");
            // SAFETY: SIGKILL to a process of the bench's pods.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !self.processes().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let prefix = self.dir().display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.reverse();
        for m in mounts {
            eprintln!("unmounting what the bench left: {m}");
            let target = std::ffi::CString::new(m).expect("a mount point without NUL");
            // SAFETY: umount2 on a NUL-terminated path under our temp dir.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        if let Ok(ctls) = std::fs::read_dir("/sys/fs/cgroup") {
            for ctl in ctls.flatten() {
                remove_cgroup_tree(&ctl.path().join(CGROUP_PARENT.trim_start_matches('/')));
            }
        }
    }
}
