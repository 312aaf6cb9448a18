//! containerd with its CRI plugin, started on a node's config (the
//! installed `bin` first on its `PATH`), driven with the `k8s-cri` client;
//! torn down on drop (pods, containerd, leftover shims, mounts, cgroups).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caisson_tests::bundle::unique;
use caisson_tests::daemon::{container_config, pod_config};
use caisson_tests::fixtures::{busybox_image, pause_binary, pause_image, OciArchive};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::deploy::{expect_ok, CONFIG};

const RUN_DIR_ENV: &str = "CAISSON_SHIM_RUN_DIR";
/// The hardened shims' uids: clear of containerd_root's (600,000,000) and
/// of the caissond tests' pools.
const BACKEND_OPTIONS: &str = r#"{"userns_first_id": 620000000, "userns_pods": 64}"#;

/// A pod this test made through containerd's CRI.
pub struct Pod {
    pub id: String,
    pub container: String,
}

/// containerd with the node's config, its shims found on the installed
/// `bin` first; torn down on drop (pods, containerd, leftover shims, mounts,
/// cgroups), also when a check panics.
pub struct Containerd {
    ctrd: PathBuf,
    ctr: PathBuf,
    socket: PathBuf,
    shim_run_dir: PathBuf,
    log: PathBuf,
    cgroup_parent: String,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    pods: std::cell::RefCell<Vec<String>>,
}

impl Containerd {
    pub fn start(containerd: &Path, ctr: &Path, node: &Path, ctrd: &Path) -> Containerd {
        let shim_run_dir = ctrd.join("shim");
        let log = ctrd.join("containerd.log");
        for d in [
            "root", "state", "opt", "runc", "cni/bin", "cni/conf", "certs.d", "logs",
        ] {
            std::fs::create_dir_all(ctrd.join(d)).unwrap();
        }
        std::fs::create_dir_all(&shim_run_dir).unwrap();
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            node.join("usr/local/bin").display()
        );
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(containerd);
        cmd.arg("--config")
            .arg(node.join(CONFIG))
            .env("PATH", path)
            .env(RUN_DIR_ENV, &shim_run_dir)
            .env("CAISSON_BACKEND_OPTIONS", BACKEND_OPTIONS)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe. containerd dies with this
        // test's thread if the test process is killed before teardown.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawning containerd");
        let cd = Containerd {
            ctrd: ctrd.to_path_buf(),
            ctr: ctr.to_path_buf(),
            socket: ctrd.join("containerd.sock"),
            shim_run_dir,
            log,
            cgroup_parent: format!("/{}", unique("caisson-deploy")),
            child: Some(child),
            rt: tokio::runtime::Runtime::new().unwrap(),
            pods: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if cd.socket.exists() && cd.ctr_ok(&["version"]).contains("Server:") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30s\n{}",
                cd.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cd
    }

    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::new()
        }
    }

    /// The pause and busybox images, into the CRI plugin's namespace. The
    /// pause image's config has no `Env`, so containerd's CRI gives its
    /// sandbox spec no `PATH` (runc and the shims run it all the same).
    pub fn import_images(&self) {
        let pause = pause_image(&pause_binary());
        for (file, image) in [("pause.tar", pause), ("busybox.tar", busybox_image())] {
            let archive = self.ctrd.join(file);
            let mut oci = OciArchive::new();
            oci.add_image(&image);
            oci.write(&archive, false);
            let out = Command::new(&self.ctr)
                .arg("--address")
                .arg(&self.socket)
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&archive)
                .output()
                .unwrap();
            expect_ok(&out, "ctr images import");
        }
    }

    /// The two dirs containerd 1.6 makes 0700 above the pods' mount
    /// sources (resolv.conf, hostname, /dev/shm): its root and the CRI
    /// plugin's state dir.
    pub fn cri_state_dirs(&self) -> [PathBuf; 2] {
        [
            self.ctrd.join("root"),
            self.ctrd.join("state/io.containerd.grpc.v1.cri"),
        ]
    }

    pub fn client(&self) -> RuntimeServiceClient<Channel> {
        let socket = self.socket.clone();
        let channel = self
            .rt
            .block_on(
                tonic::transport::Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    })),
            )
            .expect("connecting to containerd's CRI");
        RuntimeServiceClient::new(channel)
    }

    pub fn ok<T>(&self, what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> T {
        match r {
            Ok(r) => r.into_inner(),
            Err(e) => panic!("{what}: {e}\n{}", self.diagnostics()),
        }
    }

    /// A pod on the test's CNI network (hardened pods cannot share the
    /// node's) with one running busybox container, on `handler`.
    pub fn run_pod(&self, handler: &str) -> Pod {
        let name = unique(handler);
        let mut config = pod_config(&name);
        config.log_directory = self.ctrd.join("logs").join(&name).display().to_string();
        config
            .linux
            .get_or_insert_with(Default::default)
            .cgroup_parent = self.cgroup_parent.clone();
        let mut client = self.client();
        let id = self
            .ok(
                &format!("RunPodSandbox ({handler})"),
                self.rt
                    .block_on(client.run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: handler.into(),
                    })),
            )
            .pod_sandbox_id;
        self.pods.borrow_mut().push(id.clone());
        let mut container = container_config(
            "main",
            &["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"],
        );
        container.log_path = "main.log".into();
        let container = self
            .ok(
                &format!("CreateContainer ({handler})"),
                self.rt
                    .block_on(client.create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: id.clone(),
                        config: Some(container),
                        sandbox_config: Some(config),
                    })),
            )
            .container_id;
        self.ok(
            &format!("StartContainer ({handler})"),
            self.rt
                .block_on(client.start_container(cri::StartContainerRequest {
                    container_id: container.clone(),
                })),
        );
        let status = self
            .ok(
                "ContainerStatus",
                self.rt
                    .block_on(client.container_status(cri::ContainerStatusRequest {
                        container_id: container.clone(),
                        verbose: false,
                    })),
            )
            .status
            .unwrap_or_default();
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerRunning as i32,
            "container of the {handler} pod not running: {status:?}\n{}",
            self.diagnostics()
        );
        Pod { id, container }
    }

    /// ExecSync in the pod's container: its stdout.
    pub fn exec_in_pod(&self, pod: &Pod, cmd: &[&str]) -> String {
        let mut client = self.client();
        let out = self.ok(
            "ExecSync",
            self.rt.block_on(client.exec_sync(cri::ExecSyncRequest {
                container_id: pod.container.clone(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 20,
            })),
        );
        assert_eq!(
            out.exit_code,
            0,
            "exec {cmd:?}: stderr {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stop_and_remove(&self, pod: &str) {
        let mut client = self.client();
        self.ok(
            "StopPodSandbox",
            self.rt
                .block_on(client.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.into(),
                })),
        );
        self.ok(
            "RemovePodSandbox",
            self.rt
                .block_on(client.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.into(),
                })),
        );
        self.pods.borrow_mut().retain(|p| p != pod);
    }

    /// Executables of the shims this containerd started (they inherit our
    /// `CAISSON_SHIM_RUN_DIR`).
    pub fn shim_exes(&self) -> Vec<PathBuf> {
        self.shim_pids().into_iter().map(|(_, exe)| exe).collect()
    }

    pub fn shim_pids(&self) -> Vec<(i32, PathBuf)> {
        let marker = format!("{RUN_DIR_ENV}={}", self.shim_run_dir.display());
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
                continue;
            };
            if !exe
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"))
            {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
                found.push((pid, exe));
            }
        }
        found
    }

    /// Checks containerd has no pod left, then tears down.
    pub fn finish(mut self) {
        let mut client = self.client();
        let left = self
            .ok(
                "ListPodSandbox",
                self.rt
                    .block_on(client.list_pod_sandbox(cri::ListPodSandboxRequest::default())),
            )
            .items;
        assert!(left.is_empty(), "pods left: {left:?}");
        self.teardown();
    }

    pub fn teardown(&mut self) {
        if self.child.is_some() {
            for pod in self.pods.take() {
                let mut client = self.client();
                let _ = self
                    .rt
                    .block_on(client.stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    }));
                let _ = self
                    .rt
                    .block_on(client.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: pod,
                    }));
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for (pid, _) in self.shim_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for _ in 0..10 {
            let mounts: Vec<PathBuf> = caisson_sandbox::host::mountinfo::read()
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|p| p.starts_with(&self.ctrd))
                .collect();
            if mounts.is_empty() {
                break;
            }
            for m in mounts.iter().rev() {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        remove_cgroups(&self.cgroup_parent);
    }

    pub fn diagnostics(&self) -> String {
        let mut s = format!("--- containerd log (tail) ---\n{}\n", tail(&self.log, 60));
        if let Ok(dir) = std::fs::read_dir(self.shim_run_dir.join("log")) {
            for log in dir.flatten() {
                s.push_str(&format!(
                    "--- shim log {} (tail) ---\n{}\n",
                    log.path().display(),
                    tail(&log.path(), 30)
                ));
            }
        }
        s
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Removes the test's cgroup parent in every v1 hierarchy, children first,
/// killing what is left in them.
pub fn remove_cgroups(parent: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let dir = h.path().join(parent.trim_start_matches('/'));
        if dir.is_dir() {
            remove_tree(&dir);
        }
    }
}

pub fn remove_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&c.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}
