//! The pod and container the bench runs on both daemons: a host-network pod
//! (as kubelet sends it for `hostNetwork: true`, so no CNI is involved) or,
//! with `--cni`, a pod on the CNI network, with one busybox `sleep 3600`.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;

/// The busybox fixture's name, imported into both daemons.
pub const BUSYBOX: &str = caisson_tests::fixtures::BUSYBOX_NAME;
/// The container's command.
pub const COMMAND: [&str; 2] = ["sleep", "3600"];
/// The container's log file, relative to the pod's log directory.
pub const LOG_PATH: &str = "sleeper/0.log";

/// Network NODE (POD with `pod_network`), PID CONTAINER, IPC POD: the pod
/// and its container use the same options, as kubelet sets them.
pub fn namespace_options(pod_network: bool) -> cri::NamespaceOption {
    let network = if pod_network {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Node
    };
    cri::NamespaceOption {
        network: network as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod named `name`, logging to `log_dir`, under `cgroup_parent` (empty:
/// the runtime's default), on the CNI network with `pod_network`.
pub fn pod_config(
    name: &str,
    log_dir: &Path,
    cgroup_parent: &str,
    pod_network: bool,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "caisson-bench".into(),
            attempt: 0,
        }),
        // kubelet sends no hostname for a host-network pod (runc refuses
        // one without a private UTS namespace).
        hostname: if pod_network {
            name.into()
        } else {
            String::new()
        },
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_string(), "caisson-bench".to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(pod_network)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// busybox running `command` ([`COMMAND`] in the `cri` bench), logging
/// to [`LOG_PATH`].
pub fn container_running(pod_network: bool, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "sleeper".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: LOG_PATH.into(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options(pod_network)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_and_container_share_namespace_options() {
        let pod = pod_config("p", Path::new("/logs/p"), "/parent", false);
        let linux = pod.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/parent");
        let pod_ns = linux.security_context.unwrap().namespace_options.unwrap();
        let ctr_ns = container_running(false, &COMMAND)
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(pod_ns, ctr_ns);
        assert_eq!(
            (pod_ns.network, pod_ns.pid, pod_ns.ipc),
            (
                cri::NamespaceMode::Node as i32,
                cri::NamespaceMode::Container as i32,
                cri::NamespaceMode::Pod as i32
            )
        );
    }
}
