//! QoS classes through caissond on the real cgroup v1 hierarchy: pods land
//! in their class's tier with the limits the kernel shows, containers get
//! their class's `oom_score_adj` (clamped on a node without
//! CAP_SYS_RESOURCE), a container over its memory limit is reported
//! OOMKilled, and removal leaves no pod cgroup. Needs root.

use std::time::Duration;

use caisson_tests::daemon::{container_config, Caissond};
use k8s_cri::v1 as cri;

const MI: i64 = 1 << 20;

fn resources(cpu_shares: i64, cpu_quota: i64, memory: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_shares,
        cpu_quota,
        cpu_period: if cpu_quota > 0 { 100_000 } else { 0 },
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn pods_land_in_their_qos_tier_with_their_limits_and_oom_scores() {
    let d = Caissond::start("");
    d.import_busybox();
    // This process's own score is the floor caissond can hand out (no
    // CAP_SYS_RESOURCE here).
    let floor: i32 = read(std::path::Path::new("/proc/self/oom_score_adj"))
        .parse()
        .unwrap();
    let cases = [
        // name, pod resources, tier, cpu.shares, cfs_quota_us, memory limit, oom_score_adj
        (
            "guaranteed",
            resources(512, 50_000, 64 * MI),
            "",
            "512",
            "50000",
            (64 * MI).to_string(),
            (-997).max(floor),
        ),
        (
            "burstable",
            resources(256, 0, 0),
            "burstable",
            "256",
            "-1",
            "9223372036854771712".to_string(),
            999,
        ),
        (
            "besteffort",
            resources(0, 0, 0),
            "besteffort",
            "2",
            "-1",
            "9223372036854771712".to_string(),
            1000,
        ),
    ];
    let top =
        std::path::Path::new("/sys/fs/cgroup/cpu").join(d.cgroup_parent.trim_start_matches('/'));
    let mut pods = vec![];
    for (name, res, tier, shares, quota, memory, oom) in &cases {
        let mut config = d.pod_config(name);
        config.linux.get_or_insert_with(Default::default).resources = Some(res.clone());
        let pod = d.run_pod(&config);
        let cpu = top.join(tier).join(format!("poduid-{name}"));
        assert!(
            cpu.is_dir(),
            "{name}: {} missing\n{}",
            cpu.display(),
            d.log_tail()
        );
        assert_eq!(d.pod_cgroup("cpu", &format!("uid-{name}")), cpu, "{name}");
        assert_eq!(
            read(&cpu.join("cpu.shares")),
            *shares,
            "{name} cpu.shares\n{}",
            d.log_tail()
        );
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), *quota, "{name} quota");
        let mem = d.pod_cgroup("memory", &format!("uid-{name}"));
        assert_eq!(
            read(&mem.join("memory.limit_in_bytes")),
            *memory,
            "{name} memory"
        );

        let mut c = container_config("c", &["sleep", "1000"]);
        c.linux.get_or_insert_with(Default::default).resources = Some(res.clone());
        let id = d.create_started_container(&pod, &config, c);
        let pid = d.container_pid(&id);
        let got: i32 = read(std::path::Path::new(&format!("/proc/{pid}/oom_score_adj")))
            .parse()
            .unwrap();
        assert_eq!(got, *oom, "{name} oom_score_adj");
        // The container's own cgroup sits in the pod's.
        assert!(
            mem.join(&id).is_dir(),
            "{name}: container cgroup not under the pod's"
        );
        pods.push((name.to_string(), pod, mem, cpu));
    }
    // The burstable tier is weighted by its pods' requests, besteffort minimal.
    assert_eq!(read(&top.join("burstable/cpu.shares")), "256");
    assert_eq!(read(&top.join("besteffort/cpu.shares")), "2");

    for (name, pod, mem, cpu) in pods {
        d.stop_pod(&pod);
        d.remove_pod(&pod);
        assert!(!mem.exists(), "{name}: {} left behind", mem.display());
        assert!(!cpu.exists(), "{name}: {} left behind", cpu.display());
    }
    assert_eq!(read(&top.join("burstable/cpu.shares")), "2");
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("oom");
    let pod = d.run_pod(&config);
    let mut c = container_config(
        "hog",
        &["dd", "if=/dev/zero", "of=/dev/shm/x", "bs=1M", "count=60"],
    );
    c.linux.get_or_insert_with(Default::default).resources = Some(resources(0, 0, 16 * MI));
    let id = d.create_started_container(&pod, &config, c);
    let status = d.wait_exited(&id, Duration::from_secs(30));
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{}",
        d.log_tail()
    );
    d.stop_pod(&pod);
    d.remove_pod(&pod);
}

#[test]
fn update_container_resources_changes_the_live_cgroup() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("update");
    let pod = d.run_pod(&config);
    let mut c = container_config("c", &["sleep", "1000"]);
    c.linux.get_or_insert_with(Default::default).resources = Some(resources(256, 0, 64 * MI));
    let id = d.create_started_container(&pod, &config, c);
    let cpu = d.task_cgroup("cpu", "uid-update", &id);
    let mem = d.task_cgroup("memory", "uid-update", &id);
    assert_eq!(read(&cpu.join("cpu.shares")), "256");
    assert_eq!(
        read(&mem.join("memory.limit_in_bytes")),
        (64 * MI).to_string()
    );

    let mut rt = d.runtime();
    let r = d.rt.block_on(
        rt.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(resources(512, 50_000, 32 * MI)),
            ..Default::default()
        }),
    );
    d.ok("UpdateContainerResources", r);
    assert_eq!(read(&cpu.join("cpu.shares")), "512");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(
        read(&mem.join("memory.limit_in_bytes")),
        (32 * MI).to_string()
    );
    // The container still runs.
    assert_eq!(d.exec(&id, &["echo", "ok"]), "ok\n");

    let mut rt = d.runtime();
    let r = d.rt.block_on(
        rt.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "nope".into(),
            linux: Some(resources(512, 0, 0)),
            ..Default::default()
        }),
    );
    assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
    d.stop_pod(&pod);
    d.remove_pod(&pod);
}

fn container_stats(d: &Caissond, id: &str) -> cri::ContainerStats {
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.container_stats(cri::ContainerStatsRequest {
            container_id: id.into(),
        }));
    d.ok("ContainerStats", r).stats.expect("no stats")
}

#[test]
fn container_stats_grow_with_work() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("stats");
    let pod = d.run_pod(&config);
    let busy = d.create_started_container(
        &pod,
        &config,
        container_config("busy", &["sh", "-c", "while :; do :; done"]),
    );
    let idle =
        d.create_started_container(&pod, &config, container_config("idle", &["sleep", "1000"]));
    let cpu = |s: &cri::ContainerStats| {
        s.cpu
            .as_ref()
            .unwrap()
            .usage_core_nano_seconds
            .as_ref()
            .unwrap()
            .value
    };
    let first = container_stats(&d, &busy);
    assert_eq!(first.attributes.as_ref().unwrap().id, busy);
    let memory = first.memory.as_ref().unwrap();
    assert!(
        memory.working_set_bytes.as_ref().unwrap().value > 0,
        "{first:?}"
    );
    assert!(memory.usage_bytes.as_ref().unwrap().value > 0, "{first:?}");
    assert!(memory.page_faults.as_ref().unwrap().value > 0, "{first:?}");
    assert!(first.writable_layer.is_some(), "{first:?}");
    // Wait on the counter itself (no fixed sleep): it must move by 200 ms.
    let second =
        caisson_tests::daemon::wait_until("busy CPU to grow", Duration::from_secs(10), || {
            let s = container_stats(&d, &busy);
            (cpu(&s) > cpu(&first) + 200_000_000).then_some(s)
        });
    let nano = second
        .cpu
        .as_ref()
        .unwrap()
        .usage_nano_cores
        .as_ref()
        .unwrap()
        .value;
    assert!(
        nano > 100_000_000,
        "a busy loop uses more than 0.1 core: {nano}"
    );

    // ListContainerStats with filters.
    let list = |filter: Option<cri::ContainerStatsFilter>| {
        let mut rt = d.runtime();
        let r =
            d.rt.block_on(rt.list_container_stats(cri::ListContainerStatsRequest { filter }));
        let mut ids: Vec<String> = d
            .ok("ListContainerStats", r)
            .stats
            .into_iter()
            .map(|s| s.attributes.unwrap().id)
            .collect();
        ids.sort();
        ids
    };
    let mut both = vec![busy.clone(), idle.clone()];
    both.sort();
    assert_eq!(list(None), both);
    assert_eq!(
        list(Some(cri::ContainerStatsFilter {
            id: idle.clone(),
            ..Default::default()
        })),
        vec![idle.clone()]
    );
    assert_eq!(
        list(Some(cri::ContainerStatsFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        })),
        both
    );
    assert_eq!(
        list(Some(cri::ContainerStatsFilter {
            label_selector: [("no".to_string(), "such".to_string())].into(),
            ..Default::default()
        })),
        Vec::<String>::new()
    );

    // PodSandboxStats: the pod cgroup (pause + both containers).
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        }));
    let stats = d.ok("PodSandboxStats", r).stats.unwrap();
    let linux = stats.linux.unwrap();
    assert_eq!(stats.attributes.unwrap().id, pod);
    let pod_cpu = linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value;
    assert!(
        pod_cpu >= cpu(&second),
        "pod cpu {pod_cpu} below the busy container's"
    );
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
    let processes = linux.process.unwrap().process_count.unwrap().value;
    assert!(processes >= 3, "pause, sh and sleep: {processes}");
    assert_eq!(linux.containers.len(), 2);
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod.clone(),
                ..Default::default()
            }),
        }));
    assert_eq!(d.ok("ListPodSandboxStats", r).stats.len(), 1);

    d.stop_pod(&pod);
    d.remove_pod(&pod);
}
