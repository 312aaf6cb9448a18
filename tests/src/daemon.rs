//! A real `caissond` for end-to-end tests: its own temp root, run dir and
//! socket, driven through the `k8s-cri` client (an independent build of the
//! CRI wire format). Dropping it stops every pod it ran and the daemon,
//! kills what is left of its processes, unmounts whatever is left under its
//! dirs and removes its cgroups, even after a failed test.
//!
//! Also here, for the `cri_*_root` tests: CRI call helpers that fail with
//! the daemon's log (`run_pod`, `create_started_container`, `exec`,
//! `pod_pid`, `container_pid`, ...), `/proc` readers (`ns_inode`,
//! `pid_alive`, `signal_in_mask`, ...), `wait_until` (poll with a
//! deadline), and [`Footprint`]: what a daemon has made on the host, to
//! prove that nothing is left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
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
        // `make test` runs some tests again with the release shim (a static
        // build, which the debug tests never run): CAISSON_TEST_SHIM names it.
        let shim = std::env::var_os("CAISSON_TEST_SHIM")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin.join("containerd-shim-caisson-v2"));
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
            "{extra}\nroot_dir = \"{root}\"\nrun_dir = \"{run}\"\nsocket = \"{socket}\"\npause_binary = \"{pause}\"\nshim_binary = \"{shim}\"\ncgroup_parent = \"{cg}\"\n\n[network]\ncni_conf_dir = \"{cni}/net.d\"\ncni_bin_dirs = [\"{cni}/bin\", \"/opt/cni/bin\", \"/usr/lib/cni\"]\ninstall_default_cni_config = false\n\n[log]\nlevel = \"debug\"\nformat = \"text\"\n\n[runtimes]\ndefault_handler = \"runc\"\n[runtimes.handlers.runc]\nbackend = \"native\"\n[runtimes.handlers.hardened]\nbackend = \"hardened\"\n[runtimes.handlers.hardened.options]\nuserns_first_id = {userns_first_id}\nuserns_pods = 64\n[runtimes.handlers.runc-oci]\nbackend = \"oci\"\n[runtimes.handlers.runc-oci.options]\nruntime_path = \"/usr/sbin/runc\"\n[runtimes.handlers.crun-oci]\nbackend = \"oci\"\n[runtimes.handlers.crun-oci.options]\nruntime_path = \"/usr/bin/crun\"\nhide_cgroup2 = true\n[runtimes.handlers.microvm]\nbackend = \"microvm\"\npod_overhead = {{ memory_mib = 1024, cpu_millicores = 250 }}\n",
            userns_first_id = userns_first_id(),
            root = dir.path().join("root").display(),
            run = dir.path().join("run").display(),
            socket = socket.display(),
            pause = crate::fixtures::pause_binary().display(),
            shim = shim.display(),
            cg = cgroup_parent,
            cni = dir.path().join("cni").display(),
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
        self.sigkill();
        self.respawn();
    }

    /// Kills caissond with SIGKILL and reaps it; its shims and pods keep
    /// running. [`Caissond::respawn`] starts it again (Drop cleans up even
    /// if that never happens).
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts caissond again on the same config and state (after [`Caissond::sigkill`]).
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "caissond is still running");
        self.spawn();
    }

    /// The CNI config dir caissond reads (empty at start: no pod network).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("cni/net.d")
    }

    /// A CNI plugin dir searched before the system's (for test plugins).
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.path().join("cni/bin")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        channel_to(self.socket.clone()).await
    }

    /// The pods caissond lists.
    pub fn list_pods(&self) -> Vec<cri::PodSandbox> {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()));
        self.ok("ListPodSandbox", r).items
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
        self.import_image(&busybox_image());
    }

    /// Imports the pause image built from `caisson-pause`
    /// ([`crate::fixtures::PAUSE_NAME`]).
    pub fn import_pause_image(&self) {
        let spec = crate::fixtures::pause_image(&crate::fixtures::pause_binary());
        self.import_image(&spec);
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The last `max` lines of caissond's log (across restarts) that name
    /// one of `ids`: what a failing check prints about the objects it names.
    pub fn log_lines_naming(&self, ids: &[String], max: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
            .collect();
        lines[lines.len().saturating_sub(max)..].join("\n")
    }

    /// Every pod, stopped and removed through CRI (what kubelet would do).
    pub fn remove_all_pods(&self) {
        // Not `runtime()`: this runs in Drop, where a panic would abort.
        let Ok(channel) = self.rt.block_on(self.channel()) else {
            return;
        };
        let mut rt = RuntimeServiceClient::new(channel);
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
        self.terminate();
        // Shims, pause and container processes a failed test left behind.
        for pid in self.processes().into_keys() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !self.processes().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
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

// ---------------------------------------------------------------------------
// CRI helpers shared by the end-to-end tests: each panics with the daemon's
// log tail when the call fails, so a failing test says why.

/// A pod config as kubelet sends it: metadata (`uid-<name>`, namespace
/// `default`, attempt 0) and the pod's hostname.
/// A gRPC channel to the CRI socket at `socket`.
pub async fn channel_to(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
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

pub fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

/// A busybox container running `cmd` (attempt 0).
pub fn container_config(name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Sets the container's PID namespace mode.
pub fn with_pid_mode(
    mut config: cri::ContainerConfig,
    mode: cri::NamespaceMode,
) -> cri::ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options
        .get_or_insert_with(Default::default)
        .pid = mode as i32;
    config
}

/// The first host uid of this daemon's hardened pods: a range of its own
/// (64 pods wide, from 500,000,000 on) for each daemon a test process
/// starts, since the tests of one binary run in parallel with their own
/// pool directories, and pools in different directories must not overlap.
/// Each test process takes one of 13 regions of 64 such ranges by its pid,
/// so two test binaries run at once (a developer's beside CI's) rarely
/// meet; 13 × 64 ranges of 64 × 65,536 ids end below `u32::MAX`.
fn userns_first_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let region = std::process::id() % 13;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 64;
    500_000_000 + (region * 64 + n) * 64 * 65_536
}

/// Puts the pod in the node's network namespace (hostNetwork).
pub fn with_host_network(mut config: cri::PodSandboxConfig) -> cri::PodSandboxConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options
        .get_or_insert_with(Default::default)
        .network = cri::NamespaceMode::Node as i32;
    config
}

/// Sets the container's resources.
pub fn with_resources(
    mut config: cri::ContainerConfig,
    resources: &cri::LinuxContainerResources,
) -> cri::ContainerConfig {
    config.linux.get_or_insert_with(Default::default).resources = Some(resources.clone());
    config
}

/// One MiB, in the CRI's (signed) byte counts.
pub const MI: i64 = 1 << 20;

/// A file's content, trimmed (panics naming the file when unreadable).
pub fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// A file holding one number, e.g. a cgroup counter.
pub fn read_u64(path: &Path) -> u64 {
    read_trimmed(path)
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Polls `f` every 20 ms until it returns `Some`, failing after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/proc/<pid>/ns/<ns>` as the kernel names it, e.g. `uts:[4026532301]`.
pub fn ns_inode(pid: u32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{ns}: {e}"))
        .display()
        .to_string()
}

/// A field of `/proc/<pid>/status` (`None` once the process is gone).
pub fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// The first (real) id of the `Uid`/`Gid` line of `/proc/<pid>/status`.
pub fn proc_status_id(pid: u32, field: &str) -> u32 {
    proc_status_field(pid, field)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// `/proc/<pid>/uid_map` (or `gid_map`) as (inside, outside, count) rows.
pub fn id_map(pid: u32, file: &str) -> Vec<(u32, u32, u32)> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| {
            let v: Vec<u32> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    proc_status_field(pid, "State").is_some_and(|s| !s.starts_with('Z'))
}

/// `/proc/<pid>/cmdline` with NULs as spaces (`None` once gone).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .trim_end_matches('\0')
            .replace('\0', " "),
    )
}

fn live_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| pid_alive(*p))
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes (with their command lines) in cgroups below
/// `cgroup_parent` or naming `dir` on their command line (a daemon's pods
/// and shims), but `own` (the daemon) and this process.
pub fn daemon_processes(dir: &Path, cgroup_parent: &str, own: u32) -> BTreeMap<u32, String> {
    let dir = dir.display().to_string();
    let below = format!("{cgroup_parent}/");
    let mut out = BTreeMap::new();
    for pid in live_pids() {
        if pid == own || pid == std::process::id() {
            continue;
        }
        let Some(cmd) = cmdline(pid) else { continue };
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let in_cgroup = cgroup
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|p| p.starts_with(&below));
        if in_cgroup || cmd.contains(&dir) {
            out.insert(pid, cmd);
        }
    }
    out
}

/// True when the signal's bit is set in a `/proc/<pid>/status` mask
/// (`SigIgn`, `SigCgt`, ...).
pub fn signal_in_mask(pid: u32, mask: &str, signal: i32) -> bool {
    proc_status_field(pid, mask)
        .and_then(|m| u64::from_str_radix(&m, 16).ok())
        .is_some_and(|m| m & (1 << (signal - 1)) != 0)
}

/// What a daemon has made on the host, to compare before and after: paths
/// under its temp dir (not crossing into mounts; container logs, which are
/// kubelet's, and records being written left out), mounts under it, cgroups below its cgroup parent,
/// and processes that belong to it (shims, pause, containers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    pub paths: BTreeSet<String>,
    pub mounts: BTreeSet<String>,
    pub cgroups: BTreeSet<String>,
    pub processes: BTreeSet<String>,
}

impl Footprint {
    /// What `self` has that `before` had not, and what went missing, for messages.
    pub fn diff(&self, before: &Footprint) -> String {
        let mut out = String::new();
        for (what, a, b) in [
            ("path", &before.paths, &self.paths),
            ("mount", &before.mounts, &self.mounts),
            ("cgroup", &before.cgroups, &self.cgroups),
            ("process", &before.processes, &self.processes),
        ] {
            for extra in b.difference(a) {
                out.push_str(&format!("  + {what} {extra}\n"));
            }
            for missing in a.difference(b) {
                out.push_str(&format!("  - {what} {missing}\n"));
            }
        }
        out
    }
}

fn walk_same_fs(dir: &Path, root: &Path, skip: &Path, out: &mut BTreeSet<String>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(dev) = std::fs::symlink_metadata(dir).map(|m| m.dev()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.starts_with(skip) {
            continue;
        }
        out.insert(
            path.strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string(),
        );
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if meta.is_dir() && meta.dev() == dev {
                walk_same_fs(&path, root, skip, out);
            }
        }
    }
}

fn walk_dirs(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.insert(
                e.path()
                    .strip_prefix(root)
                    .unwrap_or(&e.path())
                    .display()
                    .to_string(),
            );
            walk_dirs(&e.path(), root, out);
        }
    }
}

impl Caissond {
    /// The result of a CRI call, or a panic naming it with the daemon's log.
    pub fn ok<T>(&self, what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> T {
        match r {
            Ok(r) => r.into_inner(),
            Err(e) => panic!(
                "{what}: {:?}: {}\n--- caissond log ---\n{}",
                e.code(),
                e.message(),
                self.log_tail()
            ),
        }
    }

    /// Where pods' container logs go: `<dir>/logs/<pod name>`.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// [`pod_config`] with a log directory of its own under [`Caissond::log_dir`].
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            log_directory: self.log_dir().join(name).display().to_string(),
            ..pod_config(name)
        }
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.dir.path().join("run/pods")
    }

    /// The dirs caissond keeps its pods' mounts below, each a mount point
    /// of its own while it runs (no pod's: [`Caissond::footprint`] leaves
    /// them out).
    pub fn standing_mounts(&self) -> [PathBuf; 2] {
        [self.pods_dir(), self.dir.path().join("run/netns")]
    }

    /// Whether `mount_point` is one of [`Caissond::standing_mounts`].
    pub fn is_standing_mount(&self, mount_point: &str) -> bool {
        self.standing_mounts()
            .iter()
            .any(|s| Path::new(mount_point) == s)
    }

    /// How many mounts are stacked at `path` (the mount table's lines
    /// naming it as their mount point).
    pub fn mounts_at(path: &Path) -> usize {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(&*path.display().to_string()))
            .count()
    }

    /// Stops caissond with SIGTERM, as an operator would, and reaps it; its
    /// pods keep running. [`Caissond::respawn`] starts it again.
    pub fn terminate(&mut self) {
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
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("root/state")
    }

    pub fn run_pod(&self, config: &cri::PodSandboxConfig) -> String {
        self.run_pod_with_handler(config, "")
    }

    /// RunPodSandbox under a RuntimeClass handler ("" is the default).
    pub fn run_pod_with_handler(&self, config: &cri::PodSandboxConfig, handler: &str) -> String {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            }));
        let what = if handler.is_empty() {
            "RunPodSandbox".to_string()
        } else {
            format!("RunPodSandbox ({handler})")
        };
        self.ok(&what, r).pod_sandbox_id
    }

    pub fn create_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            }));
        self.ok("CreateContainer", r).container_id
    }

    pub fn start_container(&self, id: &str) {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.start_container(cri::StartContainerRequest {
                container_id: id.into(),
            }));
        self.ok("StartContainer", r);
    }

    /// CreateContainer + StartContainer.
    pub fn create_started_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self.create_container(pod, pod_config, config);
        self.start_container(&id);
        id
    }

    /// ExecSync as the CRI answers it (`Err` is the gRPC status).
    pub fn try_exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let mut rt = self.runtime();
        self.rt
            .block_on(rt.exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            }))
            .map(tonic::Response::into_inner)
    }

    /// ExecSync that must exit 0: its stdout.
    pub fn exec(&self, id: &str, cmd: &[&str]) -> String {
        let out = self
            .try_exec(id, cmd, 30)
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}\n{}", self.log_tail()));
        assert_eq!(
            out.exit_code,
            0,
            "ExecSync {cmd:?} exited {}: stdout {:?} stderr {:?}",
            out.exit_code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// ContainerStats of `id`, which must answer.
    pub fn container_stats(&self, id: &str) -> cri::ContainerStats {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.container_stats(cri::ContainerStatsRequest {
                container_id: id.into(),
            }));
        self.ok("ContainerStats", r).stats.expect("no stats")
    }

    /// PodSandboxStats of `pod`, which must answer.
    pub fn pod_stats(&self, pod: &str) -> cri::PodSandboxStats {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
                pod_sandbox_id: pod.into(),
            }));
        self.ok("PodSandboxStats", r).stats.expect("no stats")
    }

    /// UpdateContainerResources, which must succeed.
    pub fn update_resources(&self, id: &str, resources: &cri::LinuxContainerResources) {
        let mut rt = self.runtime();
        let r = self.rt.block_on(rt.update_container_resources(
            cri::UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(resources.clone()),
                ..Default::default()
            },
        ));
        self.ok("UpdateContainerResources", r);
    }

    /// ListPodSandboxMetrics' entry for `pod`, which must be there.
    pub fn pod_metrics(&self, pod: &str) -> cri::PodSandboxMetrics {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}));
        self.ok("ListPodSandboxMetrics", r)
            .pod_metrics
            .into_iter()
            .find(|m| m.pod_sandbox_id == pod)
            .unwrap_or_else(|| panic!("no metrics for pod {pod}"))
    }

    pub fn container_status(&self, id: &str) -> cri::ContainerStatus {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }));
        self.ok("ContainerStatus", r)
            .status
            .expect("ContainerStatus without a status")
    }

    pub fn pod_status(&self, id: &str) -> cri::PodSandboxStatus {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            }));
        self.ok("PodSandboxStatus", r)
            .status
            .expect("PodSandboxStatus without a status")
    }

    /// The pause process of a pod (PodSandboxStatus verbose info `pid`).
    pub fn pod_pid(&self, id: &str) -> u32 {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }));
        let info = self.ok("PodSandboxStatus", r).info;
        verbose_pid(&info)
    }

    /// A container's init process (ContainerStatus verbose info `pid`).
    pub fn container_pid(&self, id: &str) -> u32 {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            }));
        let info = self.ok("ContainerStatus", r).info;
        verbose_pid(&info)
    }

    /// Waits for a container to be EXITED; its status.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        wait_until(&format!("container {id} to exit"), timeout, || {
            let s = self.container_status(id);
            (s.state == cri::ContainerState::ContainerExited as i32).then_some(s)
        })
    }

    pub fn stop_container(&self, id: &str, timeout: i64) {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout,
            }));
        self.ok("StopContainer", r);
    }

    pub fn stop_pod(&self, id: &str) {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }));
        self.ok("StopPodSandbox", r);
    }

    pub fn remove_pod(&self, id: &str) {
        let mut rt = self.runtime();
        let r = self
            .rt
            .block_on(rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }));
        self.ok("RemovePodSandbox", r);
    }

    /// The cgroup dir of a pod's task (`pod_or_container` is the pause's or
    /// a container's id) under one controller.
    pub fn task_cgroup(&self, controller: &str, pod_uid: &str, task: &str) -> PathBuf {
        self.pod_cgroup(controller, pod_uid).join(task)
    }

    /// The cgroup dir of a pod under one controller, in whichever QoS tier
    /// (`besteffort/`, `burstable/`, or the top for Guaranteed) it is.
    pub fn pod_cgroup(&self, controller: &str, pod_uid: &str) -> PathBuf {
        let top = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(self.cgroup_parent.trim_start_matches('/'));
        let pod = format!("pod{pod_uid}");
        ["besteffort", "burstable", ""]
            .iter()
            .map(|tier| top.join(tier).join(&pod))
            .find(|dir| dir.exists())
            .unwrap_or_else(|| top.join("besteffort").join(&pod))
    }

    /// Processes that belong to this daemon's pods: in its cgroups, or
    /// naming its dirs on their command line (shims). Not caissond itself.
    pub fn processes(&self) -> BTreeMap<u32, String> {
        daemon_processes(self.dir.path(), &self.cgroup_parent, self.pid())
    }

    /// This daemon's processes whose command line is exactly `wanted`.
    pub fn pids_with_cmdline(&self, wanted: &str) -> Vec<u32> {
        self.processes()
            .into_iter()
            .filter(|(_, cmd)| cmd == wanted)
            .map(|(pid, _)| pid)
            .collect()
    }

    /// The shims of this daemon's pods: its processes running the shim
    /// binary that are not children of another of its processes (a created,
    /// not yet started container is a fork of its shim).
    pub fn shim_pids(&self) -> Vec<u32> {
        let ours = self.processes();
        ours.iter()
            .filter(|(pid, cmd)| {
                cmd.contains("containerd-shim-caisson-v2")
                    && proc_status_field(**pid, "PPid")
                        .and_then(|p| p.parse::<u32>().ok())
                        .is_some_and(|ppid| !ours.contains_key(&ppid))
            })
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// What the daemon has made on the host right now (see [`Footprint`]).
    pub fn footprint(&self) -> Footprint {
        let root = self.dir.path();
        let mut paths = BTreeSet::new();
        walk_same_fs(root, root, &self.log_dir(), &mut paths);
        // Records are written temp-then-rename, some of them by caissond's
        // event loop at any moment: a temp file is not a leftover.
        paths.retain(|p| !(p.starts_with("root/state/") && p.contains("/.tmp-")));
        let prefix = root.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix) && !self.is_standing_mount(m))
            .map(String::from)
            .collect();
        let mut cgroups = BTreeSet::new();
        if let Ok(ctls) = std::fs::read_dir("/sys/fs/cgroup") {
            for ctl in ctls.flatten() {
                let base = ctl.path().join(self.cgroup_parent.trim_start_matches('/'));
                walk_dirs(&base, Path::new("/sys/fs/cgroup"), &mut cgroups);
                // The QoS tiers are the node's standing hierarchy (as
                // kubelet's), not a pod's: only what is inside them counts.
                for tier in ["besteffort", "burstable"] {
                    if let Ok(rel) = base.join(tier).strip_prefix("/sys/fs/cgroup") {
                        cgroups.remove(&rel.display().to_string());
                    }
                }
            }
        }
        let processes = self
            .processes()
            .into_iter()
            .map(|(pid, cmd)| format!("{pid} {cmd}"))
            .collect();
        Footprint {
            paths,
            mounts,
            cgroups,
            processes,
        }
    }

    /// Imports any image built by the fixtures through `caissond images import`.
    pub fn import_image(&self, image: &crate::fixtures::ImageSpec) {
        let archive = self.dir.path().join("image.tar");
        let mut a = OciArchive::new();
        a.add_image(image);
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
        let _ = std::fs::remove_file(&archive);
        assert!(
            out.status.success(),
            "images import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn verbose_pid(info: &std::collections::HashMap<String, String>) -> u32 {
    let json = info
        .get("info")
        .unwrap_or_else(|| panic!("verbose status without info: {info:?}"));
    let v: serde_json::Value = serde_json::from_str(json).expect("verbose info is JSON");
    let pid = v["pid"].as_u64().unwrap_or(0) as u32;
    assert_ne!(pid, 0, "verbose info without a pid: {json}");
    pid
}

/// A CRI call for [`Caissond::check_rejections`].
pub type Call =
    Box<dyn Fn(&Caissond, &mut RuntimeServiceClient<Channel>) -> Result<(), tonic::Status>>;

/// A request that must be answered with `code` (`Ok` for calls that are
/// idempotent no-ops), with a message naming `names` (the field, or the
/// missing object), and that must leave nothing behind.
pub struct Rejection {
    pub name: &'static str,
    pub code: tonic::Code,
    pub names: String,
    pub call: Call,
}

pub fn rejection(name: &'static str, code: tonic::Code, names: &str, call: Call) -> Rejection {
    Rejection {
        name,
        code,
        names: names.to_string(),
        call,
    }
}

impl Caissond {
    /// Runs every case and fails with all that went wrong: a wrong code, a
    /// message that does not name what it should, or a [`Footprint`] that
    /// differs from `baseline` afterwards.
    pub fn check_rejections(&self, cases: Vec<Rejection>, baseline: &Footprint) {
        let mut rt = self.runtime();
        let mut failures = Vec::new();
        for c in cases {
            match (c.call)(self, &mut rt) {
                Ok(()) if c.code == tonic::Code::Ok => {}
                Ok(()) => failures.push(format!("{}: succeeded, expected {:?}", c.name, c.code)),
                Err(s) if s.code() != c.code => failures.push(format!(
                    "{}: {:?} ({}), expected {:?}",
                    c.name,
                    s.code(),
                    s.message(),
                    c.code
                )),
                Err(s) if !s.message().contains(&c.names) => failures.push(format!(
                    "{}: message {:?} does not name {:?}",
                    c.name,
                    s.message(),
                    c.names
                )),
                Err(_) => {}
            }
            let now = self.footprint();
            if &now != baseline {
                failures.push(format!("{}: left behind:\n{}", c.name, now.diff(baseline)));
            }
        }
        assert!(
            failures.is_empty(),
            "{}\n--- caissond log ---\n{}",
            failures.join("\n"),
            self.log_tail()
        );
    }
}

impl Caissond {
    /// [`Caissond::start`] on the harness's config as `edit` rewrites it
    /// (another `[log]` format, a handler appended, ...): the daemon starts
    /// once on the harness's config, is killed before it runs anything, and
    /// starts again on the edited config with an empty log.
    pub fn start_edited(extra: &str, edit: impl FnOnce(&str) -> String) -> Caissond {
        let mut d = Caissond::start(extra);
        d.sigkill();
        let text = std::fs::read_to_string(&d.config_path).unwrap();
        std::fs::write(&d.config_path, edit(&text)).unwrap();
        std::fs::write(&d.log_path, "").unwrap();
        d.respawn();
        d
    }

    /// [`Caissond::start`] with `[log] format` set to `format` (`"json"`
    /// or `"text"`, the harness's own).
    pub fn start_with_log_format(extra: &str, format: &str) -> Caissond {
        Caissond::start_edited(extra, |text| {
            assert!(text.contains("\n[log]\nlevel = \"debug\"\nformat = \"text\"\n"));
            text.replace(
                "\n[log]\nlevel = \"debug\"\nformat = \"text\"\n",
                &format!("\n[log]\nlevel = \"debug\"\nformat = {format:?}\n"),
            )
        })
    }
}
