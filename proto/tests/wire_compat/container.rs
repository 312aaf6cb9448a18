//! Container messages: config, status, listing, updates, exec.

use k8s_cri::v1::{
    Capability, CdiDevice, Container, ContainerConfig, ContainerFilter, ContainerMetadata,
    ContainerResources, ContainerState, ContainerStateValue, ContainerStatus,
    ContainerStatusResponse, ContainerUser, CreateContainerRequest, Device, ExecSyncRequest,
    ExecSyncResponse, HugepageLimit, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxContainerUser,
    ListContainersRequest, ListContainersResponse, Mount, MountPropagation,
    SupplementalGroupsPolicy, UpdateContainerResourcesRequest, WindowsContainerConfig,
    WindowsContainerResources, WindowsContainerSecurityContext, WindowsCpuGroupAffinity,
};

use super::pod::pod_sandbox_config;
use super::security::{id_mappings, localhost_profile, namespace_options, selinux_options};
use super::values::Distinct;

pub fn image_spec(v: &mut Distinct) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: v.text("registry.example/app@sha256"),
        annotations: v.map("image-annotation"),
        user_specified_image: v.text("app:latest"),
        runtime_handler: v.text("image-runtime-handler"),
    })
}

pub fn container_metadata(v: &mut Distinct) -> Option<ContainerMetadata> {
    Some(ContainerMetadata {
        name: v.text("container-name"),
        attempt: v.num(),
    })
}

pub fn linux_container_resources(v: &mut Distinct) -> Option<LinuxContainerResources> {
    Some(LinuxContainerResources {
        cpu_period: v.num(),
        cpu_quota: v.num(),
        cpu_shares: v.num(),
        memory_limit_in_bytes: v.num(),
        oom_score_adj: v.negative(),
        cpuset_cpus: v.text("0-3"),
        cpuset_mems: v.text("0"),
        hugepage_limits: vec![
            HugepageLimit {
                page_size: v.text("2MB"),
                limit: v.num(),
            },
            HugepageLimit {
                page_size: v.text("1GB"),
                limit: v.num(),
            },
        ],
        unified: v.map("memory.high"),
        memory_swap_limit_in_bytes: v.num(),
    })
}

pub fn windows_container_resources(v: &mut Distinct) -> Option<WindowsContainerResources> {
    Some(WindowsContainerResources {
        cpu_shares: v.num(),
        cpu_count: v.num(),
        cpu_maximum: v.num(),
        memory_limit_in_bytes: v.num(),
        rootfs_size_in_bytes: v.num(),
        affinity_cpus: vec![WindowsCpuGroupAffinity {
            cpu_mask: v.num(),
            cpu_group: v.num(),
        }],
    })
}

/// Two mounts with different propagation, each with every field set.
fn mounts(v: &mut Distinct) -> Vec<Mount> {
    [
        MountPropagation::PropagationBidirectional,
        MountPropagation::PropagationHostToContainer,
    ]
    .into_iter()
    .map(|propagation| Mount {
        container_path: v.text("/container/path"),
        host_path: v.text("/host/path"),
        readonly: true,
        selinux_relabel: true,
        propagation: propagation as i32,
        uid_mappings: id_mappings(v),
        gid_mappings: id_mappings(v),
        recursive_read_only: true,
        image: image_spec(v),
    })
    .collect()
}

// The deprecated profile fields are still part of CRI v1 and still sent.
#[allow(deprecated)]
fn linux_container_security_context(v: &mut Distinct) -> Option<LinuxContainerSecurityContext> {
    Some(LinuxContainerSecurityContext {
        capabilities: Some(Capability {
            add_capabilities: v.texts("CAP_NET_ADMIN", 2),
            drop_capabilities: v.texts("CAP_SYS_ADMIN", 2),
            add_ambient_capabilities: v.texts("CAP_NET_BIND_SERVICE", 2),
        }),
        privileged: true,
        namespace_options: namespace_options(v),
        selinux_options: selinux_options(v),
        run_as_user: v.i64_value(),
        run_as_group: v.i64_value(),
        run_as_username: v.text("run-as-username"),
        readonly_rootfs: true,
        supplemental_groups: vec![v.num(), v.num()],
        supplemental_groups_policy: SupplementalGroupsPolicy::Strict as i32,
        no_new_privs: true,
        masked_paths: v.texts("/proc/masked", 2),
        readonly_paths: v.texts("/proc/readonly", 2),
        seccomp: localhost_profile(v, "seccomp"),
        apparmor: localhost_profile(v, "apparmor"),
        apparmor_profile: v.text("deprecated-apparmor-profile"),
        seccomp_profile_path: v.text("deprecated-seccomp-profile-path"),
    })
}

pub fn container_config(v: &mut Distinct) -> ContainerConfig {
    ContainerConfig {
        metadata: container_metadata(v),
        image: image_spec(v),
        command: v.texts("/bin/command", 2),
        args: v.texts("arg", 3),
        working_dir: v.text("/working/dir"),
        envs: (0..2)
            .map(|_| KeyValue {
                key: v.text("ENV_KEY"),
                value: v.text("env-value"),
            })
            .collect(),
        mounts: mounts(v),
        devices: vec![Device {
            container_path: v.text("/dev/container-device"),
            host_path: v.text("/dev/host-device"),
            permissions: v.text("rwm"),
        }],
        labels: v.map("container-label"),
        annotations: v.map("container-annotation"),
        log_path: v.text("container/0.log"),
        stdin: true,
        stdin_once: true,
        tty: true,
        linux: Some(LinuxContainerConfig {
            resources: linux_container_resources(v),
            security_context: linux_container_security_context(v),
        }),
        windows: Some(WindowsContainerConfig {
            resources: windows_container_resources(v),
            security_context: Some(WindowsContainerSecurityContext {
                run_as_username: v.text("ContainerUser"),
                credential_spec: v.text("credential-spec"),
                host_process: true,
            }),
        }),
        cdi_devices: vec![
            CdiDevice {
                name: v.text("vendor.com/gpu=0"),
            },
            CdiDevice {
                name: v.text("vendor.com/gpu=1"),
            },
        ],
    }
}

pub fn create_container_request(v: &mut Distinct) -> CreateContainerRequest {
    CreateContainerRequest {
        pod_sandbox_id: v.text("pod-sandbox-id"),
        config: Some(container_config(v)),
        sandbox_config: Some(pod_sandbox_config(v)),
    }
}

pub fn container_status(v: &mut Distinct) -> ContainerStatus {
    ContainerStatus {
        id: v.text("container-id"),
        metadata: container_metadata(v),
        state: ContainerState::ContainerExited as i32,
        created_at: v.timestamp(),
        started_at: v.timestamp(),
        finished_at: v.timestamp(),
        exit_code: v.num(),
        image: image_spec(v),
        image_ref: v.text("image-ref"),
        reason: v.text("Error"),
        message: v.text("container exited"),
        labels: v.map("status-label"),
        annotations: v.map("status-annotation"),
        mounts: mounts(v),
        log_path: v.text("status/0.log"),
        resources: Some(ContainerResources {
            linux: linux_container_resources(v),
            windows: windows_container_resources(v),
        }),
        image_id: v.text("sha256:image-id"),
        user: Some(ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: v.num(),
                gid: v.num(),
                supplemental_groups: vec![v.num(), v.num()],
            }),
        }),
    }
}

pub fn container_status_response(v: &mut Distinct) -> ContainerStatusResponse {
    ContainerStatusResponse {
        status: Some(container_status(v)),
        info: v.map("info"),
    }
}

pub fn list_containers_request(v: &mut Distinct) -> ListContainersRequest {
    ListContainersRequest {
        filter: Some(ContainerFilter {
            id: v.text("container-id"),
            state: Some(ContainerStateValue {
                state: ContainerState::ContainerRunning as i32,
            }),
            pod_sandbox_id: v.text("pod-sandbox-id"),
            label_selector: v.map("selector"),
        }),
    }
}

pub fn list_containers_response(v: &mut Distinct) -> ListContainersResponse {
    let mut container = |state: ContainerState| Container {
        id: v.text("container-id"),
        pod_sandbox_id: v.text("pod-sandbox-id"),
        metadata: container_metadata(v),
        image: image_spec(v),
        image_ref: v.text("image-ref"),
        state: state as i32,
        created_at: v.timestamp(),
        labels: v.map("label"),
        annotations: v.map("annotation"),
        image_id: v.text("image-id"),
    };
    ListContainersResponse {
        containers: vec![
            container(ContainerState::ContainerRunning),
            container(ContainerState::ContainerUnknown),
        ],
    }
}

pub fn update_container_resources_request(v: &mut Distinct) -> UpdateContainerResourcesRequest {
    UpdateContainerResourcesRequest {
        container_id: v.text("container-id"),
        linux: linux_container_resources(v),
        windows: windows_container_resources(v),
        annotations: v.map("annotation"),
    }
}

pub fn exec_sync_request(v: &mut Distinct) -> ExecSyncRequest {
    ExecSyncRequest {
        container_id: v.text("container-id"),
        cmd: v.texts("cmd", 3),
        timeout: v.num(),
    }
}

pub fn exec_sync_response(v: &mut Distinct) -> ExecSyncResponse {
    ExecSyncResponse {
        // Not UTF-8, and larger than one varint byte of length.
        stdout: (1..=255).chain([0xff; 64]).collect(),
        stderr: v.text("stderr\n").into_bytes(),
        exit_code: v.num(),
    }
}
