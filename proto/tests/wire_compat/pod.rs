//! Pod sandbox messages: config, run, status, listing.

use k8s_cri::v1::{
    DnsConfig, LinuxPodSandboxConfig, LinuxPodSandboxStatus, LinuxSandboxSecurityContext,
    ListPodSandboxResponse, Namespace, NamespaceMode, PodIp, PodSandbox, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
    PodSandboxStatusResponse, PortMapping, Protocol, RunPodSandboxRequest, RunPodSandboxResponse,
    SupplementalGroupsPolicy, WindowsNamespaceOption, WindowsPodSandboxConfig,
    WindowsSandboxSecurityContext,
};

use super::container::{container_status, linux_container_resources};
use super::security::{localhost_profile, namespace_options, selinux_options};
use super::values::Distinct;

pub fn pod_sandbox_metadata(v: &mut Distinct) -> Option<PodSandboxMetadata> {
    Some(PodSandboxMetadata {
        name: v.text("pod-name"),
        uid: v.text("pod-uid"),
        namespace: v.text("pod-namespace"),
        attempt: v.num(),
    })
}

/// UDP and SCTP mappings; TCP is 0 and travels as absence (see the
/// `default_values_travel_as_absence` test).
fn port_mappings(v: &mut Distinct) -> Vec<PortMapping> {
    [Protocol::Udp, Protocol::Sctp, Protocol::Udp]
        .into_iter()
        .map(|protocol| PortMapping {
            protocol: protocol as i32,
            container_port: v.num(),
            host_port: v.num(),
            host_ip: v.text("192.0.2.1"),
        })
        .collect()
}

// The deprecated `seccomp_profile_path` is still part of CRI v1.
#[allow(deprecated)]
pub fn pod_sandbox_config(v: &mut Distinct) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: pod_sandbox_metadata(v),
        hostname: v.text("hostname"),
        log_directory: v.text("/var/log/pods/log-directory"),
        dns_config: Some(DnsConfig {
            servers: v.texts("198.51.100.53", 2),
            searches: v.texts("svc.cluster.local", 3),
            options: v.texts("ndots:5", 2),
        }),
        port_mappings: port_mappings(v),
        labels: v.map("pod-label"),
        annotations: v.map("pod-annotation"),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: v.text("/kubepods/burstable/pod"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: namespace_options(v),
                selinux_options: selinux_options(v),
                run_as_user: v.i64_value(),
                run_as_group: v.i64_value(),
                readonly_rootfs: true,
                supplemental_groups: vec![v.num(), v.num(), v.num()],
                supplemental_groups_policy: SupplementalGroupsPolicy::Strict as i32,
                privileged: true,
                seccomp: localhost_profile(v, "pod-seccomp"),
                apparmor: localhost_profile(v, "pod-apparmor"),
                seccomp_profile_path: v.text("deprecated-pod-seccomp-profile-path"),
            }),
            sysctls: v.map("net.ipv4.ip_unprivileged_port_start"),
            overhead: linux_container_resources(v),
            resources: linux_container_resources(v),
        }),
        windows: Some(WindowsPodSandboxConfig {
            security_context: Some(WindowsSandboxSecurityContext {
                run_as_username: v.text("PodUser"),
                credential_spec: v.text("pod-credential-spec"),
                host_process: true,
                namespace_options: Some(WindowsNamespaceOption {
                    network: NamespaceMode::Node as i32,
                }),
            }),
        }),
    }
}

pub fn run_pod_sandbox_request(v: &mut Distinct) -> RunPodSandboxRequest {
    RunPodSandboxRequest {
        config: Some(pod_sandbox_config(v)),
        runtime_handler: v.text("runtime-handler"),
    }
}

pub fn run_pod_sandbox_response(v: &mut Distinct) -> RunPodSandboxResponse {
    RunPodSandboxResponse {
        pod_sandbox_id: v.text("pod-sandbox-id"),
    }
}

pub fn pod_sandbox_status(v: &mut Distinct) -> PodSandboxStatus {
    PodSandboxStatus {
        id: v.text("pod-sandbox-id"),
        metadata: pod_sandbox_metadata(v),
        state: PodSandboxState::SandboxNotready as i32,
        created_at: v.timestamp(),
        network: Some(PodSandboxNetworkStatus {
            ip: v.text("10.0.0.1"),
            additional_ips: vec![
                PodIp {
                    ip: v.text("fd00::1"),
                },
                PodIp {
                    ip: v.text("10.0.1.1"),
                },
            ],
        }),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: namespace_options(v),
            }),
        }),
        labels: v.map("label"),
        annotations: v.map("annotation"),
        runtime_handler: v.text("runtime-handler"),
    }
}

pub fn pod_sandbox_status_response(v: &mut Distinct) -> PodSandboxStatusResponse {
    PodSandboxStatusResponse {
        status: Some(pod_sandbox_status(v)),
        info: v.map("info"),
        containers_statuses: vec![container_status(v), container_status(v)],
        timestamp: v.timestamp(),
    }
}

pub fn list_pod_sandbox_response(v: &mut Distinct) -> ListPodSandboxResponse {
    let mut pod = |state: PodSandboxState| PodSandbox {
        id: v.text("pod-sandbox-id"),
        metadata: pod_sandbox_metadata(v),
        state: state as i32,
        created_at: v.timestamp(),
        labels: v.map("label"),
        annotations: v.map("annotation"),
        runtime_handler: v.text("runtime-handler"),
    };
    ListPodSandboxResponse {
        // SANDBOX_READY is 0 and would be off the wire.
        items: vec![
            pod(PodSandboxState::SandboxNotready),
            pod(PodSandboxState::SandboxNotready),
        ],
    }
}
