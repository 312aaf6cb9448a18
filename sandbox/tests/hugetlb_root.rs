//! Hugepage limits as containerd's CRI plugin hands them to the shim: a
//! bundle whose spec carries kubelet's limits of 0 for every page size the
//! node lists (2MB and 1GB) beside CPU and memory limits. On a node whose
//! hugetlb controller libcontainer cannot use (this one: hugetlb is bound to
//! the cgroup2 tree at /sys/fs/cgroup/unified, every other controller is
//! v1), the native and hardened backends skip them and run the container
//! with its other limits; a positive limit is refused, naming it, at create
//! and at update. Where the controller is usable, the limits are written.
//! Needs root.

use std::path::Path;

use caisson_sandbox::backend::hardened::{HardenedBackend, HardenedOptions};
use caisson_sandbox::backend::native::NativeBackend;
use caisson_sandbox::backend::{Backend, BackendError, Stdio, TaskKind};
use caisson_sandbox::host::hugetlb;
use caisson_tests::daemon::read_trimmed;
use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxResources, Spec};

mod support;

use support::{cgroup_of, unique, Harness};

const MI: i64 = 1 << 20;

/// kubelet's resources for a Burstable container: shares, a CFS quota, a
/// memory limit, and a hugepage limit per page size.
fn kubelet_resources(memory: i64, hugepages: &[(&str, i64)]) -> LinuxResources {
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(256))
        .set_quota(Some(50_000))
        .set_period(Some(100_000));
    let mut mem = LinuxMemory::default();
    mem.set_limit(Some(memory));
    let mut r = LinuxResources::default();
    r.set_cpu(Some(cpu)).set_memory(Some(mem));
    r.set_hugepage_limits(Some(
        hugepages
            .iter()
            .map(|(size, limit)| {
                let mut h = LinuxHugepageLimit::default();
                h.set_page_size(size.to_string()).set_limit(*limit);
                h
            })
            .collect(),
    ));
    r
}

fn with_resources(r: LinuxResources) -> impl FnOnce(&mut Spec) {
    move |spec: &mut Spec| {
        let mut linux = spec.linux().clone().unwrap();
        linux.set_resources(Some(r));
        spec.set_linux(Some(linux));
    }
}

fn cgroup_file(controller: &str, cgroup: &str, file: &str) -> String {
    read_trimmed(
        &Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(cgroup.trim_start_matches('/'))
            .join(file),
    )
}

const ZEROS: &[(&str, i64)] = &[("2MB", 0), ("1GB", 0)];

/// The same scenario on any backend built on libcontainer.
fn kubelet_limits_are_fitted_to_the_node<B: Backend>(h: &Harness<B>) {
    let usable = hugetlb::usable();
    let bundle = h.bundle(
        "zeros",
        &["sleep", "1000"],
        with_resources(kubelet_resources(64 * MI, ZEROS)),
    );
    let cgroup = cgroup_of(&bundle);
    let id = unique("zeros");
    h.run(&id, &bundle, Stdio::default());
    assert_eq!(
        cgroup_file("memory", &cgroup, "memory.limit_in_bytes"),
        (64 * MI).to_string()
    );
    assert_eq!(cgroup_file("cpu", &cgroup, "cpu.cfs_quota_us"), "50000");
    assert_eq!(cgroup_file("cpu", &cgroup, "cpu.shares"), "256");
    if usable {
        assert_eq!(
            cgroup_file("hugetlb", &cgroup, "hugetlb.2MB.limit_in_bytes"),
            "0"
        );
    }

    // UpdateContainerResources as containerd forwards kubelet's: the zeros
    // again, with a new memory limit.
    h.backend
        .update(&id, &kubelet_resources(32 * MI, ZEROS))
        .expect("update with hugepage limits 0");
    assert_eq!(
        cgroup_file("memory", &cgroup, "memory.limit_in_bytes"),
        (32 * MI).to_string()
    );

    // A pod that asked for hugepages: refused where they cannot be
    // accounted, naming the limit.
    let asked = kubelet_resources(32 * MI, &[("2MB", 4 * MI), ("1GB", 0)]);
    let updated = h.backend.update(&id, &asked);
    let bundle = h.bundle(
        "asked",
        &["sleep", "1000"],
        with_resources(kubelet_resources(64 * MI, &[("2MB", 0), ("1GB", 1 << 30)])),
    );
    let created = h.try_create(
        &unique("asked"),
        &bundle,
        TaskKind::Sandbox,
        Stdio::default(),
    );
    if usable {
        updated.expect("update with a positive hugepage limit");
        created.expect("create with a positive hugepage limit");
        return;
    }
    match updated {
        Err(BackendError::InvalidArgument { what, reason }) => {
            assert_eq!(what, "resources.hugepageLimits[0]");
            assert!(
                reason.contains("hugetlb") && reason.contains("2MB"),
                "{reason}"
            );
        }
        other => panic!("update with a positive limit: {other:?}"),
    }
    match created {
        Err(BackendError::InvalidArgument { what, reason }) => {
            assert!(
                what.starts_with("linux.resources.hugepageLimits[1] of OCI spec"),
                "{what}"
            );
            assert!(
                reason.contains("hugetlb") && reason.contains("1GB"),
                "{reason}"
            );
        }
        other => panic!("create with a positive limit: {other:?}"),
    }
    let refused_cgroup = cgroup_of(&bundle);
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(refused_cgroup.trim_start_matches('/'))
            .exists(),
        "a refused task left its cgroup"
    );
}

#[test]
fn native_skips_hugepage_limits_of_zero_the_node_cannot_enforce() {
    kubelet_limits_are_fitted_to_the_node(&Harness::<NativeBackend>::new());
}

#[test]
fn hardened_skips_hugepage_limits_of_zero_the_node_cannot_enforce() {
    let h = Harness::start(
        "the hardened backend makes namespaces, cgroups, mounts and seccomp filters",
        |state, sink| {
            HardenedBackend::with_options(
                state,
                sink,
                env!("CARGO_BIN_EXE_containerd-shim-caisson-v2").into(),
                &HardenedOptions {
                    userns_first_id: 900_000_000,
                    userns_pods: 4,
                    ..HardenedOptions::default()
                },
            )
            .expect("starting the backend")
        },
    );
    kubelet_limits_are_fitted_to_the_node(&h);
}
