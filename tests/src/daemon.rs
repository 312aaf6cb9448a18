//! A real `caissond` for end-to-end tests: its own temp root, run dir and
//! socket, driven through the `k8s-cri` client (an independent build of the
//! CRI wire format). Dropping it stops every pod it ran and the daemon, and
//! unmounts whatever is left under its dirs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::fixtures::{busybox_image, OciArchive};

/// A running caissond.
pub struct Caissond {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub cgroup_parent: String,
    child: Option<Child>,
    pub rt: tokio::runtime::Runtime,
}

/// The workspace's target dir holding caissond and the shim (debug build).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/debug/deps/<test> → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

impl Caissond {
    /// Starts caissond with a config under a new temp dir (`extra` is
    /// appended to the config's top-level keys).
    pub fn start(extra: &str) -> Caissond {
        crate::require::root("caissond makes namespaces, mounts and cgroups");
        let dir = tempfile::Builder::new()
            .prefix("caissond-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let bin = target_dir();
        let caissond = bin.join("caissond");
        let shim = bin.join("containerd-shim-caisson-v2");
        for b in [&caissond, &shim] {
            assert!(
                b.is_file(),
                "{} is not built: run `cargo build --workspace` first",
                b.display()
            );
        }
        let socket = dir.path().join("run/caissond.sock");
        let cgroup_parent = format!(
            "/caisson-test-{}",
            dir.path().file_name().unwrap().to_string_lossy()
        );
        let config = format!(
            "{extra}\nroot_dir = \"{root}\"\nrun_dir = \"{run}\"\nsocket = \"{socket}\"\npause_binary = \"{pause}\"\nshim_binary = \"{shim}\"\ncgroup_parent = \"{cg}\"\n\n[log]\nlevel = \"debug\"\nformat = \"text\"\n\n[runtimes]\ndefault_handler = \"runc\"\n[runtimes.handlers.runc]\nbackend = \"native\"\n",
            root = dir.path().join("root").display(),
            run = dir.path().join("run").display(),
            socket = socket.display(),
            pause = crate::fixtures::pause_binary().display(),
            shim = shim.display(),
            cg = cgroup_parent,
        );
        let config_path = dir.path().join("caisson.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("caissond.log");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut d = Caissond {
            dir,
            socket,
            config_path,
            log_path,
            cgroup_parent,
            child: None,
            rt,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(target_dir().join("caissond"))
            .args(["--config", &self.config_path.display().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket.exists() && self.rt.block_on(self.try_version()) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("caissond exited with {status}:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("caissond did not come up:\n{}", self.log_tail());
    }

    async fn try_version(&self) -> bool {
        match self.channel().await {
            Ok(ch) => RuntimeServiceClient::new(ch)
                .version(k8s_cri::v1::VersionRequest::default())
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Kills caissond with SIGKILL (pods keep running) and starts it again.
    pub fn restart_after_sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let socket = self.socket.clone();
        tonic::transport::Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(
            self.rt
                .block_on(self.channel())
                .expect("connecting to caissond"),
        )
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(
            self.rt
                .block_on(self.channel())
                .expect("connecting to caissond"),
        )
    }

    /// Imports the busybox fixture through `caissond images import`.
    pub fn import_busybox(&self) {
        let archive = self.dir.path().join("busybox.tar");
        let mut a = OciArchive::new();
        a.add_image(&busybox_image());
        a.write(&archive, false);
        let out = Command::new(target_dir().join("caissond"))
            .args([
                "--config",
                &self.config_path.display().to_string(),
                "images",
                "import",
            ])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "images import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Every pod, stopped and removed through CRI (what kubelet would do).
    pub fn remove_all_pods(&self) {
        let mut rt = self.runtime();
        let pods = self
            .rt
            .block_on(rt.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default()));
        if let Ok(pods) = pods {
            for p in pods.into_inner().items {
                let _ = self
                    .rt
                    .block_on(rt.stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
                        pod_sandbox_id: p.id.clone(),
                    }));
                let _ =
                    self.rt
                        .block_on(rt.remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
                            pod_sandbox_id: p.id,
                        }));
            }
        }
    }
}

impl Drop for Caissond {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all_pods();
        }
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything still mounted under our dirs (a failed test), deepest first.
        let prefix = self.dir.path().display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(String::from)
            .collect();
        mounts.reverse();
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // Leftover cgroups of this daemon's pods.
        if let Ok(ctls) = std::fs::read_dir("/sys/fs/cgroup") {
            for ctl in ctls.flatten() {
                let dir = ctl.path().join(self.cgroup_parent.trim_start_matches('/'));
                remove_cgroup_tree(&dir);
            }
        }
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
