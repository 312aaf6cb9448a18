//! The admin `Runtime` service (`caisson.admin.v1.Runtime/Info`), which
//! `caissond status` reads: the config file in use, each handler with its
//! backend's readiness, and the pods and containers each handler runs.
//!
//! Readiness is what a pod on the handler needs before its first call can
//! succeed, checked afresh on each Info (cheap probes only):
//!
//! | backend | checks |
//! |---|---|
//! | every one | the shim binary and the pause binary are executable files |
//! | `hardened` | user namespaces (`/proc/sys/user/max_user_namespaces` > 0), idmapped mounts (`mount_setattr(2)`), seccomp filters |
//! | `oci` | `runtime_path` exists and answers `--version` within 5 s |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use caisson_proto::admin;
use caisson_proto::cri;
use tonic::{Request, Response, Status};

use crate::config::Handler;
use crate::runtime::Runtime;

/// The config file caissond loaded, set once by `caissond` before it
/// serves (unset: the embedded default).
static CONFIG_PATH: OnceLock<PathBuf> = OnceLock::new();

/// Records the config file in use, made absolute, for Info.
pub fn set_config_path(path: &Path) {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let _ = CONFIG_PATH.set(path);
}

/// How long an oci runtime gets to answer `--version`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin Runtime service.
#[derive(Clone)]
pub struct AdminRuntime {
    rt: Arc<Runtime>,
}

impl AdminRuntime {
    pub fn new(rt: Arc<Runtime>) -> AdminRuntime {
        AdminRuntime { rt }
    }
}

#[tonic::async_trait]
impl admin::runtime_server::Runtime for AdminRuntime {
    async fn info(
        &self,
        _r: Request<admin::InfoRequest>,
    ) -> Result<Response<admin::InfoResponse>, Status> {
        let rt = self.rt.clone();
        // The probes run programs and read /proc: off the async workers.
        let info = tokio::task::spawn_blocking(move || runtime_info(&rt))
            .await
            .map_err(|e| Status::internal(format!("probing the handlers: {e}")))?;
        Ok(Response::new(info))
    }
}

fn runtime_info(rt: &Runtime) -> admin::InfoResponse {
    let config = &rt.config;
    let pods = rt.list_pods(None);
    let containers = rt.list_containers(None);
    let counts = Counts::of(&pods, &containers);
    let helpers = [
        ("shim binary", rt.shims.binary.as_path()),
        ("pause binary", rt.pause_binary.as_path()),
    ];
    let mut handlers: Vec<admin::HandlerInfo> = config
        .runtimes
        .handlers
        .iter()
        .map(|(name, handler)| {
            let mut checks: Vec<admin::ReadinessCheck> = helpers
                .iter()
                .map(|(what, path)| executable_check(what, path))
                .collect();
            checks.extend(backend_checks(handler));
            handler_info(name, &handler.backend, checks, &counts)
        })
        .collect();
    // Pods recorded under a handler the config no longer has.
    for name in counts.handlers() {
        if !config.runtimes.handlers.contains_key(name) {
            let check = admin::ReadinessCheck {
                name: "configured".into(),
                ok: false,
                detail: format!("no runtime handler {name:?} in the config"),
            };
            handlers.push(handler_info(name, "", vec![check], &counts));
        }
    }
    admin::InfoResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        config_path: CONFIG_PATH
            .get()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        socket: config.socket.display().to_string(),
        default_handler: config.runtimes.default_handler.clone(),
        handlers,
    }
}

fn handler_info(
    name: &str,
    backend: &str,
    checks: Vec<admin::ReadinessCheck>,
    counts: &Counts,
) -> admin::HandlerInfo {
    let failed = checks.iter().find(|c| !c.ok);
    admin::HandlerInfo {
        name: name.into(),
        backend: backend.into(),
        ready: failed.is_none(),
        reason: failed
            .map(|c| format!("{}: {}", c.name, c.detail))
            .unwrap_or_default(),
        pods: counts.pods(name),
        containers: counts.containers(name),
        checks,
    }
}

/// Pods and containers by handler, then state.
#[derive(Default)]
struct Counts {
    pods: BTreeMap<String, BTreeMap<&'static str, u32>>,
    containers: BTreeMap<String, BTreeMap<&'static str, u32>>,
}

impl Counts {
    fn of(pods: &[cri::PodSandbox], containers: &[cri::Container]) -> Counts {
        let mut counts = Counts::default();
        let mut handler_of = BTreeMap::new();
        for pod in pods {
            handler_of.insert(pod.id.as_str(), pod.runtime_handler.as_str());
            *counts
                .pods
                .entry(pod.runtime_handler.clone())
                .or_default()
                .entry(pod_state_name(pod.state))
                .or_default() += 1;
        }
        for c in containers {
            let handler = handler_of.get(c.pod_sandbox_id.as_str()).unwrap_or(&"");
            *counts
                .containers
                .entry(handler.to_string())
                .or_default()
                .entry(container_state_name(c.state))
                .or_default() += 1;
        }
        counts
    }

    /// Every handler some pod names.
    fn handlers(&self) -> impl Iterator<Item = &str> {
        self.pods.keys().map(String::as_str)
    }

    fn pods(&self, handler: &str) -> Vec<admin::StateCount> {
        state_counts(self.pods.get(handler))
    }

    fn containers(&self, handler: &str) -> Vec<admin::StateCount> {
        state_counts(self.containers.get(handler))
    }
}

fn state_counts(by_state: Option<&BTreeMap<&'static str, u32>>) -> Vec<admin::StateCount> {
    by_state
        .into_iter()
        .flatten()
        .map(|(state, count)| admin::StateCount {
            state: state.to_string(),
            count: *count,
        })
        .collect()
}

fn pod_state_name(state: i32) -> &'static str {
    match cri::PodSandboxState::try_from(state) {
        Ok(cri::PodSandboxState::SandboxReady) => "ready",
        _ => "notready",
    }
}

fn container_state_name(state: i32) -> &'static str {
    match cri::ContainerState::try_from(state) {
        Ok(cri::ContainerState::ContainerCreated) => "created",
        Ok(cri::ContainerState::ContainerRunning) => "running",
        Ok(cri::ContainerState::ContainerExited) => "exited",
        _ => "unknown",
    }
}

fn check(name: &str, result: Result<String, String>) -> admin::ReadinessCheck {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    admin::ReadinessCheck {
        name: name.into(),
        ok,
        detail,
    }
}

/// `path` is a regular file with an execute bit.
fn executable_check(name: &str, path: &Path) -> admin::ReadinessCheck {
    use std::os::unix::fs::PermissionsExt;
    let result = match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
            Ok(path.display().to_string())
        }
        Ok(_) => Err(format!("{} is not an executable file", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    };
    check(name, result)
}

/// What the handler's backend needs beyond the shim and pause.
fn backend_checks(handler: &Handler) -> Vec<admin::ReadinessCheck> {
    match handler.backend.as_str() {
        "hardened" => vec![
            check("user namespaces", user_namespaces()),
            check("idmapped mounts", idmapped_mounts()),
            check("seccomp", seccomp_filters()),
        ],
        "oci" => {
            let options: caisson_sandbox::backend::oci::OciOptions = match toml::Value::Table(
                handler.options.clone().into_iter().collect(),
            )
            .try_into()
            {
                Ok(o) => o,
                Err(e) => return vec![check("options", Err(e.to_string()))],
            };
            vec![check(
                "oci runtime",
                runtime_version(&options.runtime_path, VERSION_TIMEOUT),
            )]
        }
        "microvm" => {
            use caisson_sandbox::backend::microvm::{vmm, MicrovmOptions};
            let options: MicrovmOptions = match toml::Value::Table(
                handler.options.clone().into_iter().collect(),
            )
            .try_into()
            {
                Ok(o) => o,
                Err(e) => return vec![check("options", Err(e.to_string()))],
            };
            let file = |path: &Path| {
                std::fs::metadata(path)
                    .map(|m| format!("{} ({} bytes)", path.display(), m.len()))
                    .map_err(|e| {
                        format!("{}: {e} (`make microvm-guest` installs it)", path.display())
                    })
            };
            let (accel, why) = vmm::decide_accelerator(options.accelerator);
            vec![
                executable_check("qemu", &options.qemu_path),
                check("guest kernel", file(&options.kernel)),
                check("guest initramfs", file(&options.initramfs)),
                check("accelerator", Ok(format!("{accel:?}: {why}"))),
            ]
        }
        _ => Vec::new(),
    }
}

/// The kernel lets processes make user namespaces.
fn user_namespaces() -> Result<String, String> {
    let file = "/proc/sys/user/max_user_namespaces";
    if !Path::new("/proc/self/ns/user").exists() {
        return Err("the kernel has no user namespaces (CONFIG_USER_NS)".into());
    }
    let max: u64 = std::fs::read_to_string(file)
        .map_err(|e| format!("{file}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{file}: {e}"))?;
    if max == 0 {
        return Err(format!("{file} is 0"));
    }
    Ok(format!("max_user_namespaces {max}"))
}

/// mount_setattr(2) (Linux 5.12), which idmaps the pods' rootfs (probed
/// once, by the same probe Status's features use).
fn idmapped_mounts() -> Result<String, String> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    if crate::server::kernel_has_mount_setattr() {
        Ok(format!("mount_setattr(2) on Linux {release}"))
    } else {
        Err(format!(
            "mount_setattr(2) is not available on Linux {release}"
        ))
    }
}

/// The kernel filters syscalls (CONFIG_SECCOMP_FILTER shows as a
/// `Seccomp:` line in /proc/self/status).
fn seccomp_filters() -> Result<String, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    if status.lines().any(|l| l.starts_with("Seccomp:")) {
        Ok("seccomp filters".into())
    } else {
        Err("the kernel has no seccomp (no Seccomp: in /proc/self/status)".into())
    }
}

/// The first line of `runtime --version`, within `timeout` (killed after).
fn runtime_version(runtime: &Path, timeout: Duration) -> Result<String, String> {
    let shown = runtime.display();
    let (status, out) = crate::server::run_with_deadline(runtime, "--version", timeout)?;
    if !status.success() {
        return Err(format!("{shown} --version: {status}"));
    }
    let out = String::from_utf8_lossy(&out);
    let first = out.lines().next().unwrap_or("").trim();
    Ok(format!("{shown}: {first}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_handler_and_state() {
        let pod = |id: &str, handler: &str, state: cri::PodSandboxState| cri::PodSandbox {
            id: id.into(),
            runtime_handler: handler.into(),
            state: state as i32,
            ..Default::default()
        };
        let container = |pod: &str, state: cri::ContainerState| cri::Container {
            pod_sandbox_id: pod.into(),
            state: state as i32,
            ..Default::default()
        };
        let pods = [
            pod("a", "runc", cri::PodSandboxState::SandboxReady),
            pod("b", "runc", cri::PodSandboxState::SandboxNotready),
            pod("c", "hardened", cri::PodSandboxState::SandboxReady),
            pod("d", "gone", cri::PodSandboxState::SandboxReady),
        ];
        let containers = [
            container("a", cri::ContainerState::ContainerRunning),
            container("a", cri::ContainerState::ContainerRunning),
            container("b", cri::ContainerState::ContainerExited),
            container("c", cri::ContainerState::ContainerCreated),
        ];
        let counts = Counts::of(&pods, &containers);
        let flat = |v: Vec<admin::StateCount>| -> Vec<(String, u32)> {
            v.into_iter().map(|c| (c.state, c.count)).collect()
        };
        let s = |state: &str, n: u32| (state.to_string(), n);
        assert_eq!(flat(counts.pods("runc")), [s("notready", 1), s("ready", 1)]);
        assert_eq!(
            flat(counts.containers("runc")),
            [s("exited", 1), s("running", 2)]
        );
        assert_eq!(flat(counts.containers("hardened")), [s("created", 1)]);
        assert!(counts.pods("runc-oci").is_empty());
        assert_eq!(
            counts.handlers().collect::<Vec<_>>(),
            ["gone", "hardened", "runc"]
        );
    }

    #[test]
    fn checks_name_what_is_missing() {
        let c = executable_check("shim binary", Path::new("/nonexistent/shim"));
        assert!(!c.ok && c.detail.contains("/nonexistent/shim"), "{c:?}");
        let c = executable_check("sh", Path::new("/bin/sh"));
        assert!(c.ok, "{c:?}");
        let c = executable_check("passwd", Path::new("/etc/passwd"));
        assert!(!c.ok && c.detail.contains("not an executable"), "{c:?}");
        let err = runtime_version(Path::new("/nonexistent/runc"), VERSION_TIMEOUT).unwrap_err();
        assert!(err.contains("/nonexistent/runc"), "{err}");
        // coreutils' `true --version` answers with its version line.
        let version = runtime_version(Path::new("/bin/true"), VERSION_TIMEOUT).unwrap();
        assert!(version.contains("coreutils"), "{version}");
    }

    #[test]
    fn a_handler_is_ready_when_every_check_passes() {
        let ok = check("a", Ok("fine".into()));
        let bad = check("b", Err("missing".into()));
        let info = handler_info("h", "oci", vec![ok.clone()], &Counts::default());
        assert!(info.ready && info.reason.is_empty());
        let info = handler_info("h", "oci", vec![ok, bad], &Counts::default());
        assert!(!info.ready);
        assert_eq!(info.reason, "b: missing");
    }
}
