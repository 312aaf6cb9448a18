//! What kubelet (1.26–1.34) sends on RunPodSandbox, CreateContainer and
//! UpdateContainerResources, sent to a real caissond on this node: pod-level
//! `linux.resources` and an empty `overhead`, container resources with CPU
//! shares, a CFS quota and period, a memory limit, the swap limit kubelet
//! sets on cgroup v1 (equal to the memory limit: no swap), an
//! `oom_score_adj`, an empty `unified` map, and a hugepage limit of 0 for
//! every page size the node lists (2MB and 1GB).
//!
//! On this node the hugetlb controller is not usable for containers (it is
//! bound to the cgroup2 tree at /sys/fs/cgroup/unified, every other
//! controller is v1): the zeros are skipped with one warning in caissond's
//! log for the whole run, the containers run with their CPU and memory
//! limits on every handler (native, hardened, oci with runc), updates with
//! the zeros succeed, and a positive hugepage limit is refused with
//! FAILED_PRECONDITION naming it. On a node where hugetlb is usable the
//! limits are written instead and nothing is skipped. Needs root.

use std::path::Path;

use caisson_sandbox::backend::defaults::{KUBERNETES_MASKED_PATHS, KUBERNETES_READONLY_PATHS};
use caisson_tests::daemon::{container_config, read_trimmed, with_resources, Caissond, MI};
use k8s_cri::v1 as cri;

/// The line caissond logs, once, when it skips hugepage limits.
const SKIPPED: &str = "cgroup controller hugetlb is not usable on this node";

fn hugepages(limits: &[(&str, u64)]) -> Vec<cri::HugepageLimit> {
    limits
        .iter()
        .map(|(page_size, limit)| cri::HugepageLimit {
            page_size: page_size.to_string(),
            limit: *limit,
        })
        .collect()
}

/// kubelet's resources for a Burstable container with a CPU limit of
/// `quota`/100000 and a memory limit: on cgroup v1 it sets the swap limit
/// to the memory limit, and a 0 for every hugepage size it found.
fn kubelet_resources(
    quota: i64,
    memory: i64,
    huge: &[(&str, u64)],
) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_shares: 256,
        cpu_quota: quota,
        cpu_period: 100_000,
        memory_limit_in_bytes: memory,
        memory_swap_limit_in_bytes: memory,
        oom_score_adj: 999,
        hugepage_limits: hugepages(huge),
        unified: Default::default(),
        ..Default::default()
    }
}

const ZEROS: &[(&str, u64)] = &[("2MB", 0), ("1GB", 0)];

fn kubelet_pod(d: &Caissond, name: &str, huge: &[(&str, u64)]) -> cri::PodSandboxConfig {
    let mut config = d.pod_config(name);
    let linux = config.linux.get_or_insert_with(Default::default);
    // calculateSandboxResources: the sums of the containers' figures.
    linux.resources = Some(cri::LinuxContainerResources {
        hugepage_limits: hugepages(huge),
        ..kubelet_resources(50_000, 64 * MI, &[])
    });
    // convertOverheadToLinuxResources without a RuntimeClass overhead.
    linux.overhead = Some(cri::LinuxContainerResources::default());
    linux.security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Pod as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        }),
        ..Default::default()
    });
    config
}

fn kubelet_container(name: &str, resources: &cri::LinuxContainerResources) -> cri::ContainerConfig {
    let mut config = with_resources(container_config(name, &["sleep", "1000"]), resources);
    config.log_path = format!("{name}.log");
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Pod as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        }),
        masked_paths: KUBERNETES_MASKED_PATHS.map(String::from).to_vec(),
        readonly_paths: KUBERNETES_READONLY_PATHS.map(String::from).to_vec(),
        ..Default::default()
    });
    config
}

fn update(
    d: &Caissond,
    id: &str,
    resources: cri::LinuxContainerResources,
) -> Result<tonic::Response<cri::UpdateContainerResourcesResponse>, tonic::Status> {
    let mut rt = d.runtime();
    d.rt.block_on(
        rt.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        }),
    )
}

fn skipped_lines(d: &Caissond) -> usize {
    std::fs::read_to_string(&d.log_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(SKIPPED))
        .count()
}

fn cgroup_file(dir: &Path, file: &str) -> String {
    read_trimmed(&dir.join(file))
}

/// A refusal: FAILED_PRECONDITION whose message names `field` and hugetlb.
fn assert_refused<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, field: &str) {
    match r {
        Err(s) if s.code() == tonic::Code::FailedPrecondition => assert!(
            s.message().contains(field) && s.message().contains("hugetlb"),
            "{what}: {}",
            s.message()
        ),
        other => panic!("{what}: expected FAILED_PRECONDITION naming {field}, got {other:?}"),
    }
}

/// One kubelet pod on `handler`: runs, shows its limits, updates, goes.
fn kubelet_pod_lifecycle(d: &Caissond, handler: &str, usable: bool) {
    let name = format!(
        "kubelet-{}",
        if handler.is_empty() {
            "native"
        } else {
            handler
        }
    );
    let pod_config = kubelet_pod(d, &name, ZEROS);
    let pod = d.run_pod_with_handler(&pod_config, handler);
    let uid = format!("uid-{name}");
    let resources = kubelet_resources(50_000, 64 * MI, ZEROS);
    let id = d.create_started_container(&pod, &pod_config, kubelet_container("app", &resources));
    let status = d.container_status(&id);
    assert_eq!(
        status.state,
        cri::ContainerState::ContainerRunning as i32,
        "{name}: {status:?}"
    );
    let cpu = d.task_cgroup("cpu", &uid, &id);
    let memory = d.task_cgroup("memory", &uid, &id);
    for (dir, file, want) in [
        (&cpu, "cpu.shares", "256".to_string()),
        (&cpu, "cpu.cfs_quota_us", "50000".to_string()),
        (&cpu, "cpu.cfs_period_us", "100000".to_string()),
        (&memory, "memory.limit_in_bytes", (64 * MI).to_string()),
    ] {
        assert_eq!(
            cgroup_file(dir, file),
            want,
            "{name}: {file}\n{}",
            d.log_tail()
        );
    }
    let pod_cpu = d.pod_cgroup("cpu", &uid);
    assert_eq!(cgroup_file(&pod_cpu, "cpu.cfs_quota_us"), "50000", "{name}");
    if usable {
        let huge = d.task_cgroup("hugetlb", &uid, &id);
        assert_eq!(
            cgroup_file(&huge, "hugetlb.2MB.limit_in_bytes"),
            "0",
            "{name}"
        );
    }

    // UpdateContainerResources as kubelet sends it (in-place resize, CPU
    // manager): the zeros again with new CPU and memory figures.
    let resized = kubelet_resources(30_000, 48 * MI, ZEROS);
    d.ok("UpdateContainerResources", update(d, &id, resized));
    assert_eq!(cgroup_file(&cpu, "cpu.cfs_quota_us"), "30000", "{name}");
    assert_eq!(
        cgroup_file(&memory, "memory.limit_in_bytes"),
        (48 * MI).to_string(),
        "{name}"
    );

    // kubelet's static CPU manager pins a container with an update that
    // carries only cpuset_cpus: the other figures stay, in the cgroup and
    // in what ContainerStatus reports.
    let pin = cri::LinuxContainerResources {
        cpuset_cpus: "0".into(),
        ..Default::default()
    };
    d.ok("UpdateContainerResources (cpuset)", update(d, &id, pin));
    let cpuset = d.task_cgroup("cpuset", &uid, &id);
    assert_eq!(cgroup_file(&cpuset, "cpuset.cpus"), "0", "{name}");
    assert_eq!(cgroup_file(&cpu, "cpu.cfs_quota_us"), "30000", "{name}");
    let reported = d
        .container_status(&id)
        .resources
        .and_then(|r| r.linux)
        .unwrap_or_default();
    assert_eq!(
        (
            reported.cpuset_cpus.as_str(),
            reported.cpu_quota,
            reported.memory_limit_in_bytes
        ),
        ("0", 30_000, 48 * MI),
        "{name}: {reported:?}"
    );

    if !usable {
        // A container that asked for hugepages the node cannot account.
        let asked = kubelet_resources(50_000, 64 * MI, &[("2MB", 2 << 20), ("1GB", 0)]);
        let mut rt = d.runtime();
        let created =
            d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(kubelet_container("asked", &asked)),
                sandbox_config: Some(pod_config.clone()),
            }));
        assert_refused(
            "CreateContainer",
            created,
            "config.linux.resources.hugepage_limits[0]",
        );
        let asked = kubelet_resources(30_000, 48 * MI, &[("2MB", 0), ("1GB", 1 << 30)]);
        assert_refused(
            "UpdateContainerResources",
            update(d, &id, asked),
            "linux.hugepage_limits[1]",
        );
        // The refused update changed nothing.
        assert_eq!(cgroup_file(&cpu, "cpu.cfs_quota_us"), "30000", "{name}");
    }

    d.stop_pod(&pod);
    d.remove_pod(&pod);
    assert!(!pod_cpu.exists(), "{name}: {} left", pod_cpu.display());
}

#[test]
fn kubelet_resources_run_on_every_handler_with_unenforceable_hugepages_skipped_once() {
    let d = Caissond::start("");
    d.import_busybox();
    let usable = caisson_sandbox::host::hugetlb::usable();
    for handler in ["", "hardened", "runc-oci"] {
        kubelet_pod_lifecycle(&d, handler, usable);
    }
    let lines = skipped_lines(&d);
    if usable {
        assert_eq!(lines, 0, "hugetlb is usable here: nothing is skipped");
    } else {
        assert_eq!(
            lines,
            1,
            "the skipped controller is logged once per caissond:\n{}",
            d.log_tail()
        );
    }
}

#[test]
fn a_pod_level_hugepage_limit_is_skipped_or_refused_like_a_containers() {
    let d = Caissond::start("");
    d.import_busybox();
    let usable = caisson_sandbox::host::hugetlb::usable();
    let config = kubelet_pod(&d, "pod-zeros", ZEROS);
    let pod = d.run_pod(&config);
    if usable {
        let huge = d.pod_cgroup("hugetlb", "uid-pod-zeros");
        assert_eq!(cgroup_file(&huge, "hugetlb.2MB.limit_in_bytes"), "0");
        assert_eq!(skipped_lines(&d), 0);
    } else {
        assert_eq!(skipped_lines(&d), 1, "{}", d.log_tail());
    }
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    if usable {
        return;
    }

    let config = kubelet_pod(&d, "pod-asked", &[("2MB", 0), ("1GB", 1 << 30)]);
    let mut rt = d.runtime();
    let r = d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    }));
    assert_refused(
        "RunPodSandbox",
        r,
        "config.linux.resources.hugepage_limits[1]",
    );
}
