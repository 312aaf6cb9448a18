//! UpdateContainerResources: a running container's cgroup limits changed in
//! place through its shim's Task `Update` (OCI `LinuxResources` as JSON).

use std::sync::Arc;

use caisson_proto::cri;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

use super::Runtime;
use crate::status::{CriError, CriResult};
use crate::store::ContainerState;

impl Runtime {
    /// Applies `resources` to container `id`'s live cgroup.
    pub async fn update_container_resources(
        self: &Arc<Self>,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> CriResult<()> {
        let c = self.container(id)?;
        let span = tracing::info_span!("update_container_resources", container_id = %c.id, pod_id = %c.pod_id);
        let _enter = span.enter();
        if !matches!(c.state, ContainerState::Running | ContainerState::Created) {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running",
                c.id
            )));
        }
        let resources = resources.ok_or_else(|| CriError::invalid("linux", "must be set"))?;
        let oci = crate::spec::update_resources(&resources)?;
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = serde_json::to_vec(&oci)
            .map_err(|e| CriError::internal("encoding the resources", e))?;
        let pod = self.pod(&c.pod_id)?;
        let client = self.client(&pod)?;
        drop(_enter);
        client
            .update(api::UpdateTaskRequest {
                id: c.id.clone(),
                resources: Some(any).into(),
                ..Default::default()
            })
            .await?;
        tracing::info!(container_id = %c.id, "container resources updated");
        Ok(())
    }
}
