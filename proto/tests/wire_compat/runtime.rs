//! Runtime-wide messages: version, status, configuration, events.

use k8s_cri::v1::{
    CgroupDriver, ContainerEventResponse, ContainerEventType, LinuxRuntimeConfiguration,
    NetworkConfig, RuntimeCondition, RuntimeConfig, RuntimeConfigResponse, RuntimeFeatures,
    RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusResponse,
    UpdateRuntimeConfigRequest, VersionRequest, VersionResponse,
};

use super::container::container_status;
use super::pod::pod_sandbox_status;
use super::values::Distinct;

pub fn version_request(v: &mut Distinct) -> VersionRequest {
    VersionRequest {
        version: v.text("0.1.0"),
    }
}

pub fn version_response(v: &mut Distinct) -> VersionResponse {
    VersionResponse {
        version: v.text("0.1.0"),
        runtime_name: v.text("caisson"),
        runtime_version: v.text("0.1.0-dev"),
        runtime_api_version: v.text("v1"),
    }
}

pub fn status_response(v: &mut Distinct) -> StatusResponse {
    let mut condition = |kind: &str| RuntimeCondition {
        r#type: v.text(kind),
        status: true,
        reason: v.text("Reason"),
        message: v.text("message"),
    };
    let conditions = vec![condition("RuntimeReady"), condition("NetworkReady")];
    StatusResponse {
        status: Some(RuntimeStatus { conditions }),
        info: v.map("info"),
        runtime_handlers: (0..2)
            .map(|_| RuntimeHandler {
                name: v.text("handler"),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: true,
                    user_namespaces: true,
                }),
            })
            .collect(),
        features: Some(RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    }
}

pub fn runtime_config_response(_: &mut Distinct) -> RuntimeConfigResponse {
    RuntimeConfigResponse {
        // SYSTEMD is 0; CGROUPFS is the one value that is on the wire.
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: CgroupDriver::Cgroupfs as i32,
        }),
    }
}

pub fn update_runtime_config_request(v: &mut Distinct) -> UpdateRuntimeConfigRequest {
    UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: v.text("10.244.0.0/16"),
            }),
        }),
    }
}

pub fn container_event_response(v: &mut Distinct) -> ContainerEventResponse {
    ContainerEventResponse {
        container_id: v.text("container-id"),
        container_event_type: ContainerEventType::ContainerStoppedEvent as i32,
        created_at: v.timestamp(),
        pod_sandbox_status: Some(pod_sandbox_status(v)),
        containers_statuses: vec![container_status(v), container_status(v)],
    }
}
