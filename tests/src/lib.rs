//! Caisson's end-to-end test support.
//!
//! * [`bundle`]: OCI bundles (busybox or pause rootfs, runc-like spec) for shim tests.
//! * [`chaos`]: a seeded chaos harness: kubelet-like clients while caissond,
//!   shims and container inits are SIGKILLed and the state disk fills,
//!   checked against the kernel after every fault.
//! * [`cni`]: CNI networks of a test's own, and the removal of what the
//!   plugins leave behind.
//! * [`daemon`]: a real `caissond` in temp dirs, driven with the `k8s-cri` client.
//! * [`fixtures`]: images built with no network — busybox from Debian's
//!   `busybox-static` (applets as hard links), the pause image from
//!   `caisson-pause` — plus builders for layers, OCI and `docker save`
//!   archives, and raw (hostile) tar entries.
//! * [`leaks`]: what a daemon made on the host as the kernel shows it
//!   (mounts, cgroups, netns pins, processes, CNI IPs, iptables rules,
//!   state records), checked against the pods and containers it lists.
//! * [`http2`]: a raw HTTP/2 client, frame by frame, that sends any
//!   `:authority` bytes (as Go's gRPC does on unix sockets).
//! * [`registry`]: Debian's `docker-registry` on 127.0.0.1 (plain HTTP,
//!   htpasswd or TLS), filled with `skopeo`, for pull tests.
//! * [`require`]: prerequisites (root, Debian packages) that fail a test with a
//!   message naming what is missing, instead of skipping it.
//! * [`spdy`]: a SPDY/3.1 client, frame by frame, for Kubernetes'
//!   remotecommand (exec/attach) and portforward protocols.

pub mod bundle;
pub mod chaos;
pub mod cni;
pub mod daemon;
pub mod fixtures;
pub mod http2;
pub mod leaks;
pub mod microvm;
pub mod registry;
pub mod require;
pub mod spdy;
