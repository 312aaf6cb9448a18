//! Caisson's wire contracts.
//!
//! * [`cri`]: the Kubernetes Container Runtime Interface, package `runtime.v1`
//!   (`cri/api.proto`, Kubernetes' own definition, field for field). Both the
//!   `RuntimeService` and `ImageService` servers and clients are generated.
//! * [`admin`]: Caisson's own admin API (`caisson.admin.v1`, `admin/admin.proto`):
//!   image archive import into a running `caissond`.

/// CRI v1 (`runtime.v1`): messages, enums, `runtime_service_*` and
/// `image_service_*` servers and clients.
#[allow(clippy::doc_lazy_continuation)] // upstream's doc comments, verbatim
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// Caisson's admin API (`caisson.admin.v1`).
pub mod admin {
    tonic::include_proto!("caisson.admin.v1");
}
