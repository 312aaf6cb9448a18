//! Caisson's per-pod supervisor, `containerd-shim-caisson-v2`.
//!
//! * [`shim`]: the runtime v2 shim protocol's command line (`start`,
//!   `delete`, serving), one shim per pod, socket addresses.
//! * [`service`]: the containerd Task service over ttrpc, task state, waits.
//! * [`events`]: task lifecycle events published to the caller.
//! * [`backend`]: the [`backend::Backend`] trait and its implementations.
//! * [`mounts`]: mounting the rootfs containerd hands over.
//! * [`checkpoint`]: the task API's checkpoint/restore requests, finding CRIU.

pub mod backend;
pub mod checkpoint;
pub mod events;
pub mod host;
pub mod metrics;
pub mod mounts;
pub mod service;
pub mod shim;
