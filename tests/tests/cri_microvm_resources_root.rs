//! Resources, QoS and stats of microvm pods, seen inside the guest: the
//! guest's own kubepods tree (`/kubepods/<tier>/pod<uid>/<container>` on
//! its cgroup2), the limits a container asked for and the pod's sums of
//! them, UpdateContainerResources reaching the guest (and the VM's host
//! cgroup following), figures that grow with work, and the cgroups crate's
//! v2 tests run in a guest. Needs root, QEMU and the guest (`make
//! microvm-deps microvm-guest`); a missing one fails the test naming it.
//!
//! The tests take turns (one VM at a time): two cores run TCG guests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use caisson_tests::daemon::{container_config, read_u64, with_resources, Caissond, MI};
use caisson_tests::microvm::turn;
use caisson_tests::require;
use k8s_cri::v1 as cri;

/// What a container sees of its cgroup in the guest, in one exec: its
/// path (`/proc/self/cgroup`), then each of `files`, relative to its own
/// cgroup's directory (`../memory.max` is its pod's), one line each.
fn guest_cgroup(d: &Caissond, c: &str, files: &[&str]) -> (String, Vec<String>) {
    let script = format!(
        "cg=$(sed -n 's/^0:://p' /proc/self/cgroup); echo \"$cg\"; \
         for f in {}; do cat \"/sys/fs/cgroup$cg/$f\" || echo missing; done",
        files.join(" ")
    );
    let out = d.exec(c, &["sh", "-c", &script]);
    let mut lines = out.lines().map(str::to_string);
    let path = lines.next().expect("no cgroup path");
    let values: Vec<String> = lines.collect();
    assert_eq!(values.len(), files.len(), "{out}");
    (path, values)
}

fn limits(shares: i64, quota: i64, memory: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_shares: shares,
        cpu_period: if quota > 0 { 100_000 } else { 0 },
        cpu_quota: quota,
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

/// The `cpu.weight` libcontainer (libcgroups v2) writes for CPU shares:
/// runc's conversion since 1.3, which a v2 host's runc and crun use too.
fn weight_of(shares: u64) -> String {
    let l = (shares as f64).log2();
    let weight = 10f64.powf((l * l + 125.0 * l) / 612.0 - 7.0 / 34.0).ceil();
    (weight as u64).clamp(1, 10_000).to_string()
}

fn remove_container(d: &Caissond, id: &str) {
    d.stop_container(id, 0);
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        }));
    d.ok("RemoveContainer", r);
}

/// The containers' limits are the guest's cgroup v2 files, in the tier the
/// host gave the pod; the pod's cgroup holds their sums (not the pause's
/// nothing), and follows containers coming and going.
#[test]
fn containers_get_their_limits_in_the_guests_pod_tree() {
    require::microvm();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let mut config = d.pod_config("res1");
    // Pod-level figures (kubelet's sums) make it Burstable on the host.
    config.linux = Some(cri::LinuxPodSandboxConfig {
        resources: Some(limits(512, 0, 0)),
        ..Default::default()
    });
    let pod = d.run_pod_with_handler(&config, "microvm");
    let host_pod = d.pod_cgroup("cpu", "uid-res1");
    assert!(
        host_pod.to_string_lossy().contains("/burstable/"),
        "{}",
        host_pod.display()
    );
    let limited = d.create_started_container(
        &pod,
        &config,
        with_resources(
            container_config("limited", &["sleep", "100000"]),
            &limits(512, 50_000, 64 * MI),
        ),
    );
    let files = [
        "memory.max",
        "cpu.max",
        "cpu.weight",
        "../memory.max",
        "../cpu.max",
        "../cpu.weight",
        &format!("../{pod}/cgroup.procs"),
    ];
    let (path, got) = guest_cgroup(&d, &limited, &files);
    assert_eq!(path, format!("/kubepods/burstable/poduid-res1/{limited}"));
    assert_eq!(
        got[..3],
        [(64 * MI).to_string(), "50000 100000".into(), weight_of(512)]
    );
    // The pod: its one container's limits (the pause has none and does
    // not count), with the weight kubelet gives a pod cgroup for 512
    // shares; and the pause in a cgroup of its own.
    let kubelet_weight_of_512 = (1 + (512 - 2) * 9999 / 262_142).to_string();
    assert_eq!(
        got[3..6],
        [
            (64 * MI).to_string(),
            "50000 100000".to_string(),
            kubelet_weight_of_512
        ]
    );
    assert_ne!(got[6], "missing", "no cgroup for the pause");
    assert!(!got[6].is_empty(), "the pause is not in its cgroup");

    // A container without limits: the pod has none either.
    let free = d.create_started_container(
        &pod,
        &config,
        container_config("free", &["sleep", "100000"]),
    );
    let (path, got) = guest_cgroup(&d, &free, &["memory.max", "../memory.max", "../cpu.max"]);
    assert_eq!(path, format!("/kubepods/burstable/poduid-res1/{free}"));
    assert_eq!(got, ["max", "max", "max 100000"]);
    // Gone again: the pod's sums are the first container's again.
    remove_container(&d, &free);
    let (_, got) = guest_cgroup(&d, &limited, &["../memory.max", "../cpu.max"]);
    assert_eq!(got, [(64 * MI).to_string(), "50000 100000".to_string()]);
    d.remove_all_pods();
}

/// UpdateContainerResources changes the container's cgroup in the guest
/// and the pod's sums there; on the host, the pod's cgroup (which holds
/// the VM's) moves by the same amount.
#[test]
fn updated_resources_reach_the_guest_and_the_vms_host_cgroup() {
    require::microvm();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("res2");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let c = d.create_started_container(
        &pod,
        &config,
        with_resources(
            container_config("grows", &["sleep", "100000"]),
            &limits(512, 50_000, 64 * MI),
        ),
    );
    // The VM's host cgroup is in the pod's, sized with the handler's
    // overhead (1024 MiB for the VM) on top of the containers' sums.
    let host_limit = || {
        read_u64(
            &d.pod_cgroup("memory", "uid-res2")
                .join("memory.limit_in_bytes"),
        )
    };
    assert_eq!(host_limit(), (64 + 1024) * MI as u64);
    let files = [
        "memory.max",
        "cpu.max",
        "cpu.weight",
        "../memory.max",
        "../cpu.max",
    ];
    let (path, before) = guest_cgroup(&d, &c, &files);
    assert_eq!(path, format!("/kubepods/besteffort/poduid-res2/{c}"));
    assert_eq!(before[0], (64 * MI).to_string());

    d.update_resources(&c, &limits(256, 20_000, 128 * MI));
    let (_, after) = guest_cgroup(&d, &c, &files);
    assert_eq!(
        after,
        [
            (128 * MI).to_string(),
            "20000 100000".to_string(),
            weight_of(256),
            (128 * MI).to_string(),
            "20000 100000".to_string(),
        ]
    );
    assert_eq!(host_limit(), (128 + 1024) * MI as u64);
    // The new limit holds: a 100 MiB buffer (dd's, all of it touched)
    // fits now, where 64 MiB did not.
    d.exec(
        &c,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"],
    );
    d.remove_all_pods();
}

fn cpu_ns(s: &cri::ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .unwrap()
        .usage_core_nano_seconds
        .as_ref()
        .unwrap()
        .value
}

fn working_set(s: &cri::ContainerStats) -> u64 {
    s.memory
        .as_ref()
        .unwrap()
        .working_set_bytes
        .as_ref()
        .unwrap()
        .value
}

/// A container's metric `name` whose labels after `id, name, image` are
/// `extra`, from ListPodSandboxMetrics.
fn metric(d: &Caissond, pod: &str, c: &str, name: &str, extra: &[&str]) -> u64 {
    let pm = d.pod_metrics(pod);
    let metrics = &pm
        .container_metrics
        .iter()
        .find(|m| m.container_id == c)
        .unwrap_or_else(|| panic!("no metrics for container {c}"))
        .metrics;
    metrics
        .iter()
        .find(|m| m.name == name && m.label_values[3..] == *extra)
        .and_then(|m| m.value.as_ref())
        .unwrap_or_else(|| panic!("no {name} for {c}: {metrics:?}"))
        .value
}

/// ContainerStats, the container metrics and PodSandboxStats are not zero,
/// and grow when the container works: CPU, memory, and its tasks.
#[test]
fn stats_are_the_guests_and_grow_with_work() {
    require::microvm();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("res3");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let c = d.create_started_container(
        &pod,
        &config,
        container_config("worker", &["sleep", "100000"]),
    );
    let s0 = d.container_stats(&c);
    let (cpu0, ws0) = (cpu_ns(&s0), working_set(&s0));
    assert!(cpu0 > 0 && ws0 > 0, "{s0:?}");
    assert_eq!(metric(&d, &pod, &c, "container_threads", &[]), 1);
    let p0 = d.pod_stats(&pod);
    let pod_cpu = |p: &cri::PodSandboxStats| {
        p.linux
            .as_ref()
            .unwrap()
            .cpu
            .as_ref()
            .unwrap()
            .usage_core_nano_seconds
            .as_ref()
            .unwrap()
            .value
    };
    let pod_memory = |p: &cri::PodSandboxStats| {
        p.linux
            .as_ref()
            .unwrap()
            .memory
            .as_ref()
            .unwrap()
            .working_set_bytes
            .as_ref()
            .unwrap()
            .value
    };
    assert!(pod_cpu(&p0) > 0 && pod_memory(&p0) > 0, "{p0:?}");

    // Work: 32 MiB in the pod's /dev/shm (charged to the writer), a
    // busy loop, and a process left running.
    d.exec(
        &c,
        &[
            "sh",
            "-c",
            "head -c 33554432 /dev/zero > /dev/shm/ballast; \
             i=0; while [ $i -lt 5000 ]; do i=$((i+1)); done; \
             sleep 100000 >/dev/null 2>&1 &",
        ],
    );
    let s1 = d.container_stats(&c);
    let (cpu1, ws1) = (cpu_ns(&s1), working_set(&s1));
    assert!(cpu1 >= cpu0 + 50_000_000, "CPU {cpu0} → {cpu1} ns");
    assert!(ws1 >= ws0 + 30 * MI as u64, "working set {ws0} → {ws1}");
    assert_eq!(metric(&d, &pod, &c, "container_threads", &[]), 2);
    assert!(metric(&d, &pod, &c, "container_memory_working_set_bytes", &[]) >= 32 * MI as u64);
    assert!(
        metric(
            &d,
            &pod,
            &c,
            "container_cpu_usage_seconds_total",
            &["total"]
        ) > 0
    );
    // The pod: the VM's figures on the host (what the pod costs the node),
    // and its containers' from the guest.
    let p1 = d.pod_stats(&pod);
    assert!(pod_cpu(&p1) > pod_cpu(&p0), "{p0:?}\n{p1:?}");
    let listed = &p1.linux.as_ref().unwrap().containers;
    let ours = listed
        .iter()
        .find(|s| s.attributes.as_ref().unwrap().id == c)
        .expect("the container in PodSandboxStats");
    assert!(working_set(ours) >= 32 * MI as u64, "{ours:?}");
    d.remove_all_pods();
}

/// The cgroups crate's real-cgroup2 tests (`cgroups/tests/v2_guest_root.rs`),
/// built static, run in a privileged container of a
/// microvm pod: every one of them passes in the guest.
#[test]
fn the_cgroups_crates_v2_tests_pass_inside_a_guest() {
    require::microvm();
    let binary = cgroups_v2_tests();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let dir = d.dir.path().join("cgroups-tests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&binary, dir.join("v2_guest_root")).unwrap();
    let mut config = d.pod_config("res4");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = d.run_pod_with_handler(&config, "microvm");
    let mut tests = container_config(
        "cgroups-v2",
        &["/cgroups-tests/v2_guest_root", "--test-threads=1"],
    );
    tests.log_path = "cgroups-v2/0.log".into();
    tests.mounts = vec![cri::Mount {
        container_path: "/cgroups-tests".into(),
        host_path: dir.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    tests.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = d.create_started_container(&pod, &config, tests);
    let status = d.wait_exited(&c, Duration::from_secs(120));
    let log =
        std::fs::read_to_string(d.log_dir().join("res4/cgroups-v2/0.log")).unwrap_or_default();
    let output: String = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let count = include_str!("../../cgroups/tests/v2_guest_root.rs")
        .matches("#[test]")
        .count();
    assert_eq!(
        status.exit_code, 0,
        "the tests failed in the guest:\n{output}"
    );
    let summary = format!("test result: ok. {count} passed; 0 failed; 0 ignored");
    assert!(output.contains(&summary), "no {summary:?} in:\n{output}");
    d.remove_all_pods();
}

/// `cgroups/tests/v2_guest_root.rs` built as a static executable (the
/// guest has no C library): its own target dir, since the running `cargo
/// test` holds the workspace's.
fn cgroups_v2_tests() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = "x86_64-unknown-linux-gnu";
    let out = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        // With --target, these flags reach the test's crates only, not
        // build scripts and proc-macros (which cannot be static).
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .args([
            "test",
            "-p",
            "caisson-cgroups",
            "--test",
            "v2_guest_root",
            "--no-run",
        ])
        .args(["--target", target, "--message-format=json"])
        .arg("--target-dir")
        .arg(workspace.join("target/guest-tests"))
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "building the cgroups crate's v2 tests statically:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let executable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "v2_guest_root")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo named no v2_guest_root executable");
    let binary = std::fs::read(&executable).unwrap();
    assert!(
        !caisson_tests::fixtures::has_interpreter(&binary),
        "{} is dynamically linked",
        executable.display()
    );
    executable
}
