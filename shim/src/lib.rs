//! `caissond`: Caisson's CRI v1 server.
//!
//! * [`config`]: TOML configuration with an embedded default.
//! * [`admin`]: the admin Runtime service (`caissond status`): config in
//!   use, handlers and their readiness, pods and containers per handler.
//! * [`server`]: the gRPC surface (CRI RuntimeService and ImageService, the
//!   admin Images service) on one unix socket; [`image`]: ImageService.
//! * [`authority`]: HTTP/2 `:authority` normalisation, so Go gRPC clients
//!   that send the socket path (kubelet, crictl) are answered;
//!   [`call_log`]: a span per call and a log line per failed call.
//! * [`runtime`]: pods, containers, exec, logs, recovery.
//! * [`spec`]: the one CRI → OCI runtime spec builder.
//! * [`network`]: pod network namespaces and CNI.
//! * [`shims`]: per-pod shims (`containerd-shim-caisson-v2`) and their events.
//! * [`store`]: crash-safe pod and container records.
//! * [`streaming`]: the Exec/Attach/PortForward server (SPDY and WebSocket).
//! * [`metrics_http`]: Prometheus metrics on the opt-in `[metrics] address`.
//! * [`status`]: errors → gRPC statuses, in one place.

pub mod admin;
pub mod authority;
pub mod call_log;
pub mod client;
pub mod config;
pub mod image;
pub mod metrics_http;
pub mod network;
pub mod runtime;
pub mod server;
pub mod shims;
pub mod spec;
pub mod status;
pub mod store;
pub mod streaming;
