//! Caisson's QoS cgroups.
//!
//! - [`qos`]: the Kubernetes QoS class of a pod from what the CRI carries.
//! - [`cpu`]: milli-CPU ↔ shares ↔ weight and CFS quota, with Kubernetes' formulas.
//! - [`oom`]: kubelet's `oom_score_adj` policy, clamped to what this node allows.
//! - [`path`]: `cgroup_parent` forms (cgroupfs and systemd slices).
//! - [`mode`]: cgroup v1 / hybrid / unified detection.
//! - [`stats`]: a cgroup's usage read from cgroupfs.
//! - [`tree`]: the kubepods hierarchy Caisson builds when kubelet gives no parent.
//! - [`unified`]: the allow-list of CRI `unified` keys and their v1 equivalents.
//! - [`warm`]: starting the grace period a cgroup move waits for before it is needed.
//!
//! Writes are plain cgroupfs file writes behind the [`fs::CgroupFs`] trait
//! (a real root or a fake tree in tests): the hierarchy levels only need a
//! handful of files, and libcgroups' `apply` is built around one container's
//! full `LinuxResources`, which the shim already uses for container cgroups.
//! The same split holds in a microvm guest, whose agent builds the pod's
//! kubepods tree with this crate's v2 code.
//!
//! The unit tests run against fake trees; `tests/v2_guest_root.rs` runs the
//! v2 code against a real cgroup2 hierarchy, inside a microvm guest (the
//! hosts are cgroup v1; see that file).

pub mod cpu;
pub mod fs;
pub mod mode;
pub mod oom;
pub mod path;
pub mod qos;
pub mod stats;
pub mod tree;
pub mod unified;
pub mod warm;

mod error;

pub use error::CgroupError;
pub use fs::CgroupFs;
pub use mode::CgroupMode;
pub use oom::OomPolicy;
pub use qos::{PodResources, QosClass, Resources};
pub use tree::{Limits, NodeAllocatable, PodExtras, QosTree, UnifiedApplyError};
pub use unified::UnifiedError;
