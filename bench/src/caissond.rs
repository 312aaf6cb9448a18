//! The one way a benchmark runs Caisson's daemon (`hardened`, `microvm`,
//! `pull` and the caissond side of `cri`): the release `caissond` and its
//! shim beside the bench binary, a config whose every path is under one
//! dir plus what the benchmark adds ([`Setup`]: runtime handlers,
//! registries; its cgroup parent), started and waited for as a
//! [`Process`], images fed to it with `caissond images import`.
//!
//! Dropping a [`Caissond`] removes its pods through CRI, stops it, and
//! removes what is left of its processes, mounts and cgroups (then its temp
//! dir, if it made one), after an error too. `cri`, which records what each
//! daemon leaves, takes the bare process instead ([`Caissond::into_process`])
//! and cleans up itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use caisson_tests::fixtures::{ImageSpec, OciArchive};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::cri::daemon::{StartTimes, StopTimes};
use crate::cri::Result;
use crate::daemon::Process;

/// File name of caissond's shim, beside it.
pub const SHIM: &str = "containerd-shim-caisson-v2";
const BUILD: &str = "run `make release` (the static release shim; `cargo build --release -p \
     caisson-shim -p caisson-sandbox` builds a dynamic one)";
/// How long one CRI call through [`Caissond::call`] may take.
const RPC_DEADLINE: Duration = Duration::from_secs(600);

/// What differs between the benchmarks' caissonds.
pub struct Setup<'a> {
    pub dir: Dir<'a>,
    /// The `caisson-pause` binary (`pause_binary`).
    pub pause: &'a Path,
    /// Its `cgroup_parent`; what is left below it is removed on drop.
    pub cgroup_parent: &'static str,
    /// TOML appended to the config (after the `runc` → native handler):
    /// more handlers, `[registries]`.
    pub extra_config: &'a str,
}

/// Where a caissond's root, run dir, socket, config and log go.
pub enum Dir<'a> {
    /// A new dir in /var/tmp named with this prefix, removed on drop.
    Temp(&'static str),
    /// This dir (made if missing), left in place.
    At(&'a Path),
}

/// A running caissond under its own dir.
pub struct Caissond {
    /// None once [`Caissond::into_process`] has taken it.
    process: Option<Process>,
    dir: PathBuf,
    /// Removed (by its own drop) after the cleanup in ours.
    _temp: Option<tempfile::TempDir>,
    binary: PathBuf,
    config_path: PathBuf,
    cgroup_parent: &'static str,
}

/// `caissond` and its shim, beside this executable.
pub fn binaries() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or("the bench's executable has no parent dir")?;
    let (caissond, shim) = (dir.join("caissond"), dir.join(SHIM));
    for binary in [&caissond, &shim] {
        if !binary.is_file() {
            return Err(format!("{} not found: {BUILD}", binary.display()).into());
        }
    }
    Ok((caissond, shim))
}

/// Where the config points CNI (empty unless the benchmark installs a
/// conflist there before starting).
pub fn cni_conf_dir(dir: &Path) -> PathBuf {
    dir.join("cni/net.d")
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("run/caissond.sock")
}

/// The defaults with every path under `dir`, logs as text at `info` (as
/// containerd logs), the `runc` handler on the native backend, then `extra`.
fn config(dir: &Path, pause: &Path, shim: &Path, cgroup_parent: &str, extra: &str) -> String {
    format!(
        r#"root_dir = "{root}"
run_dir = "{run}"
socket = "{socket}"
pause_image = ""
pause_binary = "{pause}"
shim_binary = "{shim}"
cgroup_parent = "{cgroup_parent}"

[network]
cni_conf_dir = "{cni_conf}"
install_default_cni_config = false

[log]
level = "info"
format = "text"

[runtimes]
default_handler = "runc"
[runtimes.handlers.runc]
backend = "native"
{extra}"#,
        root = dir.join("root").display(),
        run = dir.join("run").display(),
        socket = socket(dir).display(),
        pause = pause.display(),
        shim = shim.display(),
        cni_conf = cni_conf_dir(dir).display(),
    )
}

impl Caissond {
    /// Writes the config, starts caissond and waits until it serves CRI.
    pub fn start(setup: Setup) -> Result<Caissond> {
        let (binary, shim) = binaries()?;
        let (temp, dir) = match setup.dir {
            Dir::Temp(prefix) => {
                let temp = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir_in("/var/tmp")?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
            Dir::At(dir) => {
                fs::create_dir_all(dir)?;
                (None, dir.to_path_buf())
            }
        };
        let config_path = dir.join("caisson.toml");
        let text = config(
            &dir,
            setup.pause,
            &shim,
            setup.cgroup_parent,
            setup.extra_config,
        );
        fs::write(&config_path, text)?;
        let mut command = Command::new(&binary);
        command.arg("--config").arg(&config_path);
        let process =
            match Process::start("caissond", command, &socket(&dir), dir.join("caissond.log")) {
                Ok(process) => process,
                Err(e) => {
                    // It may have made its cgroups before failing.
                    clean_up(&dir, setup.cgroup_parent);
                    return Err(e);
                }
            };
        Ok(Caissond {
            process: Some(process),
            dir,
            _temp: temp,
            binary,
            config_path,
            cgroup_parent: setup.cgroup_parent,
        })
    }

    /// The running daemon (its pid, clients, calls).
    pub fn process(&self) -> &Process {
        self.process
            .as_ref()
            .expect("taken only by into_process, which consumes self")
    }

    /// The daemon alone: the caller stops it and cleans up after it.
    pub fn into_process(mut self) -> Process {
        self.process
            .take()
            .expect("taken only here, which consumes self")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `caissond` binary it runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// One RuntimeService call with a deadline; an error names it and
    /// carries the end of caissond's log.
    pub fn call<T, F>(
        &self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let process = self.process();
        process.call(what, RPC_DEADLINE, f(process.runtime()))
    }

    /// [`Caissond::call`] and how long it took.
    fn timed_call<T, F>(
        &self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<(T, Duration)>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let reply = self.call(what, f)?;
        Ok((reply, started.elapsed()))
    }

    /// RunPodSandbox (under `handler`, "" for the default) + CreateContainer
    /// + StartContainer: the pod's and the container's ids.
    pub fn run_pod_with_container(
        &self,
        config: cri::PodSandboxConfig,
        handler: &str,
        container: cri::ContainerConfig,
    ) -> Result<(String, String)> {
        let (pod, ctr, _) = self.run_pod_with_container_timed(config, handler, container)?;
        Ok((pod, ctr))
    }

    /// [`Caissond::run_pod_with_container`], each call timed.
    pub fn run_pod_with_container_timed(
        &self,
        config: cri::PodSandboxConfig,
        handler: &str,
        container: cri::ContainerConfig,
    ) -> Result<(String, String, StartTimes)> {
        let request = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let what = match handler {
            "" => "RunPodSandbox".to_string(),
            _ => format!("RunPodSandbox ({handler})"),
        };
        let (reply, run_pod) =
            self.timed_call(
                &what,
                |mut c| async move { c.run_pod_sandbox(request).await },
            )?;
        let pod = reply.pod_sandbox_id;
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container),
            sandbox_config: Some(config),
        };
        let (reply, create) = self.timed_call("CreateContainer", |mut c| async move {
            c.create_container(request).await
        })?;
        let ctr = reply.container_id;
        let request = cri::StartContainerRequest {
            container_id: ctr.clone(),
        };
        let (_, start) = self.timed_call("StartContainer", |mut c| async move {
            c.start_container(request).await
        })?;
        Ok((pod, ctr, StartTimes::of(run_pod, create, start)))
    }

    /// Imports an image through `caissond images import`.
    pub fn import_image(&self, image: &ImageSpec) -> Result<()> {
        let archive = self.dir.join("image.tar");
        let mut oci = OciArchive::new();
        oci.add_image(image);
        oci.write(&archive, false);
        let out = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_path)
            .args(["images", "import"])
            .arg(&archive)
            .output()?;
        let _ = fs::remove_file(&archive);
        if !out.status.success() {
            return Err(format!(
                "caissond images import {}: {}",
                archive.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(())
    }

    pub fn stop_and_remove_pod(&self, pod: &str) -> Result<()> {
        self.stop_and_remove_pod_timed(pod).map(|_| ())
    }

    /// StopPodSandbox + RemovePodSandbox, each timed.
    pub fn stop_and_remove_pod_timed(&self, pod: &str) -> Result<StopTimes> {
        let id = pod.to_string();
        let (_, stop) = self.timed_call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        let id = pod.to_string();
        let (_, remove) = self.timed_call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        Ok(StopTimes::of(stop, remove))
    }

    fn remove_all_pods(&self) -> Result<()> {
        let pods = self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
        })?;
        for p in pods.items {
            self.stop_and_remove_pod(&p.id)?;
        }
        Ok(())
    }

    /// Processes of its pods: in its cgroups, or naming its dir on their
    /// command line (shims). Not caissond itself.
    pub fn processes(&self) -> Vec<u32> {
        processes(&self.dir, self.cgroup_parent, self.process().pid())
    }

    /// SIGTERM, then SIGKILL after a deadline: how long it took, whether
    /// it was killed. Dropping it still cleans up.
    pub fn stop(&mut self) -> Result<(Duration, bool)> {
        self.process
            .as_mut()
            .expect("taken only by into_process, which consumes self")
            .stop()
    }
}

impl Drop for Caissond {
    fn drop(&mut self) {
        let Some(process) = &self.process else {
            return;
        };
        if process.running() {
            if let Err(e) = self.remove_all_pods() {
                eprintln!("removing the bench's pods: {e}");
            }
            if let Err(e) = self.stop() {
                eprintln!("stopping caissond: {e}");
            }
        }
        self.process = None;
        clean_up(&self.dir, self.cgroup_parent);
    }
}

/// Processes in cgroups below `cgroup_parent` or naming `dir` on their
/// command line, but `own` and this one.
fn processes(dir: &Path, cgroup_parent: &str, own: u32) -> Vec<u32> {
    caisson_tests::daemon::daemon_processes(dir, cgroup_parent, own)
        .into_keys()
        .collect()
}

/// Kills what is left of a stopped caissond's pods, unmounts what is left
/// under `dir`, removes its cgroups.
fn clean_up(dir: &Path, cgroup_parent: &str) {
    for pid in processes(dir, cgroup_parent, 0) {
        eprintln!("killing a process the bench's pods left: {pid}");
        // SAFETY: SIGKILL to a process of the bench's pods.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !processes(dir, cgroup_parent, 0).is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for m in crate::host::unmount_under(dir) {
        eprintln!("unmounting what the bench left: {}", m.display());
    }
    if let Err(e) = crate::host::remove_cgroup_parents(&[cgroup_parent]) {
        eprintln!("removing the bench's cgroups: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_every_path_under_its_dir_and_ends_with_the_extras() {
        let dir = Path::new("/var/tmp/caisson-bench-x");
        let extra = "[runtimes.handlers.hardened]\nbackend = \"hardened\"\n";
        let text = config(
            dir,
            Path::new("/p/pause"),
            Path::new("/s/shim"),
            "/cg",
            extra,
        );
        for key in ["root_dir", "run_dir", "socket", "cni_conf_dir"] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("no {key} in\n{text}"));
            let value = line.split('"').nth(1).expect("a quoted value");
            assert!(Path::new(value).starts_with(dir), "{line}");
        }
        assert!(text.contains("cgroup_parent = \"/cg\"\n"), "{text}");
        assert!(
            text.ends_with(&format!("backend = \"native\"\n{extra}")),
            "{text}"
        );
    }
}
