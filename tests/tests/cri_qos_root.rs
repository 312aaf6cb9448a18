//! QoS classes through caissond on the real cgroup v1 hierarchy: pods land
//! in their class's tier with the limits the kernel shows, containers get
//! their class's `oom_score_adj` (clamped on a node without
//! CAP_SYS_RESOURCE), a container over its memory limit is reported
//! OOMKilled, and removal leaves no pod cgroup. Needs root.

use std::time::Duration;

use caisson_tests::daemon::{container_config, read_trimmed, with_resources, Caissond, MI};
use k8s_cri::v1 as cri;

fn resources(cpu_shares: i64, cpu_quota: i64, memory: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_shares,
        cpu_quota,
        cpu_period: if cpu_quota > 0 { 100_000 } else { 0 },
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

#[test]
fn pods_land_in_their_qos_tier_with_their_limits_and_oom_scores() {
    let d = Caissond::start("");
    d.import_busybox();
    // This process's own score is the floor caissond can hand out (no
    // CAP_SYS_RESOURCE here).
    let floor: i32 = read_trimmed(std::path::Path::new("/proc/self/oom_score_adj"))
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
            read_trimmed(&cpu.join("cpu.shares")),
            *shares,
            "{name} cpu.shares\n{}",
            d.log_tail()
        );
        assert_eq!(
            read_trimmed(&cpu.join("cpu.cfs_quota_us")),
            *quota,
            "{name} quota"
        );
        let mem = d.pod_cgroup("memory", &format!("uid-{name}"));
        assert_eq!(
            read_trimmed(&mem.join("memory.limit_in_bytes")),
            *memory,
            "{name} memory"
        );

        let c = with_resources(container_config("c", &["sleep", "1000"]), res);
        let id = d.create_started_container(&pod, &config, c);
        let pid = d.container_pid(&id);
        let got: i32 = read_trimmed(std::path::Path::new(&format!("/proc/{pid}/oom_score_adj")))
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
    assert_eq!(read_trimmed(&top.join("burstable/cpu.shares")), "256");
    assert_eq!(read_trimmed(&top.join("besteffort/cpu.shares")), "2");

    for (name, pod, mem, cpu) in pods {
        d.stop_pod(&pod);
        d.remove_pod(&pod);
        assert!(!mem.exists(), "{name}: {} left behind", mem.display());
        assert!(!cpu.exists(), "{name}: {} left behind", cpu.display());
    }
    assert_eq!(read_trimmed(&top.join("burstable/cpu.shares")), "2");
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("oom");
    let pod = d.run_pod(&config);
    let c = with_resources(
        container_config(
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/shm/x", "bs=1M", "count=60"],
        ),
        &resources(0, 0, 16 * MI),
    );
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
    let c = with_resources(
        container_config("c", &["sleep", "1000"]),
        &resources(256, 0, 64 * MI),
    );
    let id = d.create_started_container(&pod, &config, c);
    let cpu = d.task_cgroup("cpu", "uid-update", &id);
    let mem = d.task_cgroup("memory", "uid-update", &id);
    assert_eq!(read_trimmed(&cpu.join("cpu.shares")), "256");
    assert_eq!(
        read_trimmed(&mem.join("memory.limit_in_bytes")),
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
    assert_eq!(read_trimmed(&cpu.join("cpu.shares")), "512");
    assert_eq!(read_trimmed(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(
        read_trimmed(&mem.join("memory.limit_in_bytes")),
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

#[test]
fn container_stats_grow_with_work() {
    let d = Caissond::start("");
    d.import_busybox();
    // Burstable with a full core's shares (1024), not BestEffort (2): the
    // busy loop must get CPU while parallel tests keep the node busy.
    let mut config = d.pod_config("stats");
    config.linux.get_or_insert_with(Default::default).resources = Some(resources(1024, 0, 0));
    let pod = d.run_pod(&config);
    let busy = with_resources(
        container_config("busy", &["sh", "-c", "while :; do :; done"]),
        &resources(1024, 0, 0),
    );
    let busy = d.create_started_container(&pod, &config, busy);
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
    let first = d.container_stats(&busy);
    assert_eq!(first.attributes.as_ref().unwrap().id, busy);
    let memory = first.memory.as_ref().unwrap();
    assert!(
        memory.working_set_bytes.as_ref().unwrap().value > 0,
        "{first:?}"
    );
    assert!(memory.usage_bytes.as_ref().unwrap().value > 0, "{first:?}");
    assert!(memory.page_faults.as_ref().unwrap().value > 0, "{first:?}");
    assert!(first.writable_layer.is_some(), "{first:?}");
    // nano-cores are over the window since the previous ContainerStats: wait
    // on the cgroup's own counter (not ContainerStats, which would restart
    // the window) until the loop used 200 ms of CPU, then sample again.
    let cpuacct = d
        .task_cgroup("cpuacct", "uid-stats", &busy)
        .join("cpuacct.usage");
    caisson_tests::daemon::wait_until("busy CPU to grow", Duration::from_secs(30), || {
        let used: u64 = read_trimmed(&cpuacct).parse().unwrap();
        (used > cpu(&first) + 200_000_000).then_some(())
    });
    let second = d.container_stats(&busy);
    let used = cpu(&second) - cpu(&first);
    assert!(used > 200_000_000, "{first:?}\n{second:?}");
    let usage = second.cpu.as_ref().unwrap();
    let nano = usage
        .usage_nano_cores
        .as_ref()
        .expect("no usage_nano_cores on the second sample")
        .value;
    let elapsed = (usage.timestamp - first.cpu.as_ref().unwrap().timestamp) as u128;
    let expected = (used as u128 * 1_000_000_000 / elapsed) as u64;
    assert!(
        nano > 0 && nano == expected,
        "nano-cores over the window: {nano}, expected {used} ns / {elapsed} ns = {expected}"
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

fn update(d: &Caissond, id: &str, r: cri::LinuxContainerResources) -> Result<(), tonic::Status> {
    let mut rt = d.runtime();
    d.rt.block_on(
        rt.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(r),
            ..Default::default()
        }),
    )
    .map(|_| ())
}

/// (cpu.shares, cpu.cfs_quota_us, memory.limit_in_bytes) of a pod cgroup.
fn pod_limits(d: &Caissond, uid: &str) -> (String, String, String) {
    let cpu = d.pod_cgroup("cpu", uid);
    let mem = d.pod_cgroup("memory", uid);
    (
        read_trimmed(&cpu.join("cpu.shares")),
        read_trimmed(&cpu.join("cpu.cfs_quota_us")),
        read_trimmed(&mem.join("memory.limit_in_bytes")),
    )
}

const UNLIMITED: &str = "9223372036854771712";

#[test]
fn pod_sums_follow_container_creates_updates_and_removals() {
    let d = Caissond::start("");
    d.import_busybox();
    // No pod-level resources (crictl): the pod is sized from its containers.
    let config = d.pod_config("sums");
    let pod = d.run_pod(&config);
    assert_eq!(
        pod_limits(&d, "uid-sums"),
        ("2".into(), "-1".into(), UNLIMITED.into())
    );
    let c1 = with_resources(
        container_config("c1", &["sleep", "1000"]),
        &resources(256, 50_000, 64 * MI),
    );
    let c1 = d.create_started_container(&pod, &config, c1);
    assert_eq!(
        pod_limits(&d, "uid-sums"),
        ("256".into(), "50000".into(), (64 * MI).to_string())
    );
    let c2 = with_resources(
        container_config("c2", &["sleep", "1000"]),
        &resources(512, 100_000, 32 * MI),
    );
    let c2 = d.create_started_container(&pod, &config, c2);
    assert_eq!(
        pod_limits(&d, "uid-sums"),
        ("768".into(), "150000".into(), (96 * MI).to_string())
    );
    // Growing a container grows the pod first (v1 refuses a child quota
    // above its parent's): the container gets its new quota.
    update(&d, &c1, resources(1024, 200_000, 128 * MI)).unwrap();
    assert_eq!(
        pod_limits(&d, "uid-sums"),
        ("1536".into(), "300000".into(), (160 * MI).to_string())
    );
    let c1_cpu = d.task_cgroup("cpu", "uid-sums", &c1);
    assert_eq!(read_trimmed(&c1_cpu.join("cpu.cfs_quota_us")), "200000");
    // ContainerStatus reports the live figures.
    let status = d.container_status(&c1);
    let live = status.resources.unwrap().linux.unwrap();
    assert_eq!((live.cpu_shares, live.cpu_quota), (1024, 200_000));
    // Shrinking.
    update(&d, &c1, resources(128, 20_000, 16 * MI)).unwrap();
    assert_eq!(
        pod_limits(&d, "uid-sums"),
        ("640".into(), "120000".into(), (48 * MI).to_string())
    );
    // A container without limits makes the pod's unlimited.
    update(&d, &c2, resources(512, 0, 0)).unwrap();
    assert_eq!(
        pod_limits(&d, "uid-sums"),
        ("640".into(), "-1".into(), UNLIMITED.into())
    );
    // Removal shrinks the pod back to what is left.
    d.stop_container(&c2, 0);
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.remove_container(cri::RemoveContainerRequest {
            container_id: c2.clone(),
        }));
    d.ok("RemoveContainer", r);
    assert_eq!(
        pod_limits(&d, "uid-sums"),
        ("128".into(), "20000".into(), (16 * MI).to_string()),
        "{}",
        d.log_tail()
    );
    assert!(!d.task_cgroup("cpu", "uid-sums", &c2).exists());

    // kubelet-style pod-level figures: moved by the container's change; the
    // burstable tier's shares follow.
    let mut config = d.pod_config("kubelet-sums");
    config.linux.get_or_insert_with(Default::default).resources = Some(resources(512, 0, 0));
    let kpod = d.run_pod(&config);
    let c = with_resources(
        container_config("c", &["sleep", "1000"]),
        &resources(512, 0, 0),
    );
    let c = d.create_started_container(&kpod, &config, c);
    let tier = std::path::Path::new("/sys/fs/cgroup/cpu")
        .join(d.cgroup_parent.trim_start_matches('/'))
        .join("burstable");
    assert_eq!(read_trimmed(&tier.join("cpu.shares")), "512");
    update(&d, &c, resources(1536, 0, 0)).unwrap();
    assert_eq!(pod_limits(&d, "uid-kubelet-sums").0, "1536");
    assert_eq!(read_trimmed(&tier.join("cpu.shares")), "1536");
    assert_eq!(
        d.pod_cgroup("cpu", "uid-kubelet-sums"),
        tier.join("poduid-kubelet-sums")
    );
    for p in [pod, kpod] {
        d.stop_pod(&p);
        d.remove_pod(&p);
    }
    assert_eq!(read_trimmed(&tier.join("cpu.shares")), "2");
}

/// Two updates at once, each to its own container of `pod`.
fn update_both(
    d: &Caissond,
    a: (&str, cri::LinuxContainerResources),
    b: (&str, cri::LinuxContainerResources),
) {
    let (mut ra, mut rb) = (d.runtime(), d.runtime());
    let req = |id: &str, r| cri::UpdateContainerResourcesRequest {
        container_id: id.into(),
        linux: Some(r),
        ..Default::default()
    };
    let (x, y) = d.rt.block_on(async {
        tokio::join!(
            ra.update_container_resources(req(a.0, a.1)),
            rb.update_container_resources(req(b.0, b.1)),
        )
    });
    d.ok("UpdateContainerResources", x);
    d.ok("UpdateContainerResources", y);
}

#[test]
fn pod_level_figures_survive_limitless_updates_concurrent_updates_and_restarts() {
    let d = Caissond::start("");
    d.import_busybox();
    // Guaranteed pod-level figures: a container dropping its limits leaves
    // the pod's cap in place, and the pod keeps being resized after it.
    let mut config = d.pod_config("capped");
    config.linux.get_or_insert_with(Default::default).resources =
        Some(resources(2048, 200_000, 128 * MI));
    let pod = d.run_pod(&config);
    let mut ids = vec![];
    for name in ["c1", "c2"] {
        let c = with_resources(
            container_config(name, &["sleep", "1000"]),
            &resources(1024, 100_000, 64 * MI),
        );
        ids.push(d.create_started_container(&pod, &config, c));
    }
    let capped = || pod_limits(&d, "uid-capped");
    assert_eq!(
        capped(),
        ("2048".into(), "200000".into(), (128 * MI).to_string())
    );
    update(&d, &ids[0], resources(1024, 0, 0)).unwrap();
    assert_eq!(
        capped(),
        ("2048".into(), "200000".into(), (128 * MI).to_string()),
        "a container without limits dropped the pod's"
    );
    update(&d, &ids[1], resources(512, 50_000, 32 * MI)).unwrap();
    assert_eq!(
        capped(),
        ("1536".into(), "150000".into(), (96 * MI).to_string()),
        "the pod stopped following its containers"
    );
    // Concurrent updates in one pod: each moves the pod from the other's
    // result, not from the figures both started with.
    let (a, b) = (ids[0].clone(), ids[1].clone());
    for (i, shares) in [2048, 256, 1024, 512].into_iter().enumerate() {
        update_both(
            &d,
            (&a, resources(shares, 0, 0)),
            (&b, resources(shares, 50_000, 32 * MI)),
        );
        assert_eq!(
            capped().0,
            (2 * shares).to_string(),
            "round {i}: concurrent updates lost one"
        );
    }
    d.stop_pod(&pod);
    d.remove_pod(&pod);

    // A restarted container counts once: its exited instance (kept until
    // kubelet removes it) does not add to the new one's.
    let config = d.pod_config("restarts");
    let pod = d.run_pod(&config);
    let mut c = with_resources(
        container_config("r", &["true"]),
        &resources(512, 50_000, 32 * MI),
    );
    let first = d.create_started_container(&pod, &config, c.clone());
    d.wait_exited(&first, Duration::from_secs(10));
    c.metadata.as_mut().unwrap().attempt = 1;
    c.command = vec!["sleep".into(), "1000".into()];
    let _second = d.create_started_container(&pod, &config, c);
    assert_eq!(
        pod_limits(&d, "uid-restarts"),
        ("512".into(), "50000".into(), (32 * MI).to_string())
    );
    d.stop_pod(&pod);
    d.remove_pod(&pod);
}

#[test]
fn pod_swap_and_unified_memory_follow_container_updates() {
    let d = Caissond::start("");
    d.import_busybox();
    // memory + swap = 96 MiB over a 64 MiB pod: 32 MiB of swap, which stays
    // on top of the pod's limit as it moves (v1 refuses a memory limit
    // above memory.memsw.limit_in_bytes).
    let mut config = d.pod_config("swap");
    config.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            memory_swap_limit_in_bytes: 96 * MI,
            ..resources(512, 0, 64 * MI)
        });
    let pod = d.run_pod(&config);
    let c = with_resources(
        container_config("c", &["sleep", "1000"]),
        &resources(512, 0, 64 * MI),
    );
    let id = d.create_started_container(&pod, &config, c);
    let mem = |file: &str| read_trimmed(&d.pod_cgroup("memory", "uid-swap").join(file));
    for (limit, want_pod) in [(128 * MI, 128 * MI), (16 * MI, 16 * MI), (64 * MI, 64 * MI)] {
        update(&d, &id, resources(512, 0, limit))
            .unwrap_or_else(|e| panic!("growing to {limit}: {}\n{}", e.message(), d.log_tail()));
        assert_eq!(mem("memory.limit_in_bytes"), want_pod.to_string());
        assert_eq!(
            mem("memory.memsw.limit_in_bytes"),
            (want_pod + 32 * MI).to_string()
        );
    }
    d.stop_pod(&pod);
    d.remove_pod(&pod);

    // A pod-level unified memory.max is written last at RunPodSandbox and
    // stays in force when a container update resizes the pod.
    let mut config = d.pod_config("unified-max");
    config.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            unified: [("memory.max".to_string(), (100 * MI).to_string())].into(),
            ..resources(512, 0, 64 * MI)
        });
    let pod = d.run_pod(&config);
    let mem = || {
        read_trimmed(
            &d.pod_cgroup("memory", "uid-unified-max")
                .join("memory.limit_in_bytes"),
        )
    };
    assert_eq!(mem(), (100 * MI).to_string());
    let c = with_resources(
        container_config("c", &["sleep", "1000"]),
        &resources(512, 0, 64 * MI),
    );
    let id = d.create_started_container(&pod, &config, c);
    update(&d, &id, resources(512, 0, 32 * MI)).unwrap();
    assert_eq!(
        mem(),
        (100 * MI).to_string(),
        "the resize overwrote memory.max"
    );
    d.stop_pod(&pod);
    d.remove_pod(&pod);
}

#[test]
fn pod_level_figures_are_checked_like_a_containers() {
    use caisson_tests::daemon::{rejection, Call};
    let d = Caissond::start("");
    let baseline = d.footprint();
    let pod_with = |name: &str, f: &dyn Fn(&mut cri::LinuxPodSandboxConfig)| -> Call {
        let mut config = d.pod_config(name);
        f(config.linux.get_or_insert_with(Default::default));
        Box::new(move |d, rt| {
            d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .map(drop)
        })
    };
    let code = tonic::Code::InvalidArgument;
    let cases = vec![
        rejection(
            "page size with a path",
            code,
            "config.linux.resources.hugepage_limits[0].page_size",
            pod_with("huge-path", &|l| {
                l.resources = Some(cri::LinuxContainerResources {
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "../2MB".into(),
                        limit: 1 << 21,
                    }],
                    ..Default::default()
                })
            }),
        ),
        rejection(
            "quota below -1",
            code,
            "config.linux.resources.cpu_quota",
            pod_with("quota", &|l| {
                l.resources = Some(resources(512, -5, 0));
            }),
        ),
        rejection(
            "quota above the kernel's",
            code,
            "config.linux.resources.cpu_quota",
            pod_with("quota-max", &|l| {
                l.resources = Some(resources(512, i64::MAX, 64 * MI));
            }),
        ),
        rejection(
            "negative shares in the overhead",
            code,
            "config.linux.overhead.cpu_shares",
            pod_with("overhead", &|l| {
                l.overhead = Some(resources(-1, 0, 0));
            }),
        ),
        rejection(
            "a period of 1 µs",
            code,
            "config.linux.resources.cpu_period",
            pod_with("period", &|l| {
                l.resources = Some(cri::LinuxContainerResources {
                    cpu_period: 1,
                    cpu_quota: 1000,
                    ..Default::default()
                });
            }),
        ),
    ];
    d.check_rejections(cases, &baseline);
}

fn create_err(
    d: &Caissond,
    pod: &str,
    config: &cri::PodSandboxConfig,
    c: cri::ContainerConfig,
) -> tonic::Status {
    let mut rt = d.runtime();
    d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(c),
        sandbox_config: Some(config.clone()),
    }))
    .expect_err("CreateContainer should fail")
}

fn with_unified(pairs: &[(&str, &str)]) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 * MI,
        unified: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn unified_keys_are_checked_and_mapped_to_cgroup_v1() {
    let d = Caissond::start("");
    d.import_busybox();
    // The cgroup mode is detected and logged with the driver at start.
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    // The mode as the mounts show it (CgroupMode::detect's names).
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let cgroup2_at = |dir: &str| {
        mounts
            .lines()
            .any(|l| l.contains(&format!(" {dir} cgroup2 ")))
    };
    let mode = if cgroup2_at("/sys/fs/cgroup") {
        "unified"
    } else if cgroup2_at("/sys/fs/cgroup/unified") {
        "hybrid"
    } else {
        "v1"
    };
    assert!(
        log.lines()
            .any(|l| l.contains("driver=\"cgroupfs\"") && l.contains(&format!("mode=\"{mode}\""))),
        "no cgroups line with mode {mode:?}:\n{}",
        d.log_tail()
    );
    let config = d.pod_config("unified");
    let pod = d.run_pod(&config);
    let baseline = d.footprint();
    for (key, want) in [
        ("memory.bogus", "not a cgroup v2 file"),
        ("cgroup.procs", "not a cgroup v2 file"),
        ("memory.high", "no cgroup v1 equivalent"),
    ] {
        let c = with_resources(
            container_config("c", &["sleep", "1000"]),
            &with_unified(&[(key, "1")]),
        );
        let err = create_err(&d, &pod, &config, c);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{key}: {err:?}");
        assert!(
            err.message()
                .contains(&format!("config.linux.resources.unified[{key}]"))
                && err.message().contains(want),
            "{key}: {}",
            err.message()
        );
    }
    let now = d.footprint();
    assert!(now == baseline, "{}", now.diff(&baseline));
    // Keys with a v1 equivalent land in the v1 files.
    let c = with_resources(
        container_config("c", &["sleep", "1000"]),
        &with_unified(&[
            ("pids.max", "50"),
            ("cpu.max", "20000 100000"),
            ("cpu.weight", "100"),
        ]),
    );
    let id = d.create_started_container(&pod, &config, c);
    let cg =
        |ctl: &str, file: &str| read_trimmed(&d.task_cgroup(ctl, "uid-unified", &id).join(file));
    assert_eq!(cg("pids", "pids.max"), "50");
    assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(cg("cpu", "cpu.shares"), "2597");
    update(&d, &id, with_unified(&[("pids.max", "60")])).unwrap();
    assert_eq!(cg("pids", "pids.max"), "60");
    let err = update(&d, &id, with_unified(&[("cgroup.procs", "1")])).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("linux.unified[cgroup.procs]"),
        "{}",
        err.message()
    );
    assert_eq!(cg("pids", "pids.max"), "60");

    // Pod-level keys: checked before anything is made.
    let before = d.footprint();
    let mut bad = d.pod_config("bad-unified");
    bad.linux.get_or_insert_with(Default::default).resources =
        Some(with_unified(&[("io.bogus", "1")]));
    let mut rt = d.runtime();
    let err =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        }))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("config.linux.resources.unified[io.bogus]"),
        "{}",
        err.message()
    );
    let now = d.footprint();
    assert!(now == before, "{}", now.diff(&before));
    d.stop_pod(&pod);
    d.remove_pod(&pod);
}

#[test]
fn pod_level_pids_cpuset_and_swap_reach_the_pod_cgroup() {
    let d = Caissond::start("cgroups.pod_pids_limit = 100");
    d.import_busybox();
    let mut config = d.pod_config("extras");
    config.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 64 * MI,
            memory_swap_limit_in_bytes: 96 * MI,
            cpuset_cpus: "0".into(),
            cpuset_mems: "0".into(),
            unified: [("pids.max".to_string(), "80".to_string())].into(),
            ..Default::default()
        });
    let pod = d.run_pod(&config);
    let cg = |ctl: &str, file: &str| read_trimmed(&d.pod_cgroup(ctl, "uid-extras").join(file));
    // unified is applied last: its pids.max wins over the config's.
    assert_eq!(cg("pids", "pids.max"), "80");
    assert_eq!(cg("cpuset", "cpuset.cpus"), "0");
    assert_eq!(cg("cpuset", "cpuset.mems"), "0");
    assert_eq!(cg("memory", "memory.limit_in_bytes"), (64 * MI).to_string());
    assert_eq!(
        cg("memory", "memory.memsw.limit_in_bytes"),
        (96 * MI).to_string()
    );
    // A container without a cpuset of its own runs on the pod's.
    let id = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    let pid = d.container_pid(&id);
    assert_eq!(
        caisson_tests::daemon::proc_status_field(pid, "Cpus_allowed_list").as_deref(),
        Some("0")
    );
    d.stop_pod(&pod);
    d.remove_pod(&pod);

    // The config's limit alone, on a pod without pod-level figures.
    let plain = d.pod_config("plain");
    let p = d.run_pod(&plain);
    assert_eq!(
        read_trimmed(&d.pod_cgroup("pids", "uid-plain").join("pids.max")),
        "100"
    );
    d.stop_pod(&p);
    d.remove_pod(&p);

    // hugetlb is not mounted here: refused clearly, nothing left.
    let before = d.footprint();
    let mut huge = d.pod_config("huge");
    huge.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        });
    let mut rt = d.runtime();
    let r = d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(huge),
        runtime_handler: String::new(),
    }));
    if std::path::Path::new("/sys/fs/cgroup/hugetlb").is_dir() {
        let id = d.ok("RunPodSandbox (hugetlb)", r).pod_sandbox_id;
        assert_eq!(
            read_trimmed(
                &d.pod_cgroup("hugetlb", "uid-huge")
                    .join("hugetlb.2MB.limit_in_bytes")
            ),
            (4 << 20).to_string()
        );
        d.stop_pod(&id);
        d.remove_pod(&id);
    } else {
        let err = r.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("hugetlb"), "{}", err.message());
    }
    let now = d.footprint();
    assert!(now == before, "{}", now.diff(&before));
}

fn set_oom_score_adj(pid: u32, score: i32) {
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), score.to_string())
        .unwrap_or_else(|e| panic!("raising {pid}'s oom_score_adj: {e}"));
}

fn container_oom_score(
    d: &Caissond,
    pod: &str,
    config: &cri::PodSandboxConfig,
    name: &str,
    r: cri::LinuxContainerResources,
) -> i32 {
    let c = with_resources(container_config(name, &["sleep", "1000"]), &r);
    let id = d.create_started_container(pod, config, c);
    read_trimmed(std::path::Path::new(&format!(
        "/proc/{}/oom_score_adj",
        d.container_pid(&id)
    )))
    .parse()
    .unwrap()
}

/// caissond's own score is raised after the pod's shim started (the shim
/// keeps the score it inherited, 0): only `restrict_oom_score_adj` makes
/// caissond's own the floor.
#[test]
fn restrict_oom_score_adj_keeps_scores_at_or_above_caissonds_own() {
    let with_score = |oom_score_adj| cri::LinuxContainerResources {
        oom_score_adj,
        ..resources(512, 0, 0)
    };
    let guaranteed = resources(1024, 100_000, 64 * MI);
    let floor: i32 = read_trimmed(std::path::Path::new("/proc/self/oom_score_adj"))
        .parse()
        .unwrap();

    let restricted = Caissond::start("cgroups.restrict_oom_score_adj = true");
    restricted.import_busybox();
    let config = restricted.pod_config("restricted");
    set_oom_score_adj(restricted.pid(), 200);
    let pod = restricted.run_pod(&config);
    // The pause (kubelet's -998) too.
    let pause: i32 = read_trimmed(std::path::Path::new(&format!(
        "/proc/{}/oom_score_adj",
        restricted.pod_pid(&pod)
    )))
    .parse()
    .unwrap();
    assert_eq!(pause, 200, "restricted pause");
    set_oom_score_adj(restricted.pid(), 300);
    for (name, r, want) in [
        ("low", with_score(100), 300),
        ("high", with_score(700), 700),
        ("g", guaranteed.clone(), 300),
    ] {
        assert_eq!(
            container_oom_score(&restricted, &pod, &config, name, r),
            want,
            "restricted {name}"
        );
    }
    restricted.stop_pod(&pod);
    restricted.remove_pod(&pod);
    drop(restricted);

    // Off (the default): only what the kernel refuses is raised, once warned.
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("unrestricted");
    let pod = d.run_pod(&config);
    set_oom_score_adj(d.pid(), 300);
    assert_eq!(
        container_oom_score(&d, &pod, &config, "low", with_score(100)),
        100.max(floor)
    );
    for name in ["g1", "g2"] {
        assert_eq!(
            container_oom_score(&d, &pod, &config, name, guaranteed.clone()),
            (-997).max(floor),
            "{name}"
        );
    }
    if floor > -997 {
        let log = std::fs::read_to_string(&d.log_path).unwrap();
        let warnings = log
            .lines()
            .filter(|l| l.contains("oom_score_adj below what this node allows"))
            .collect::<Vec<_>>();
        assert_eq!(warnings.len(), 1, "one warning:\n{}", d.log_tail());
        assert!(
            warnings[0].contains("CAP_SYS_RESOURCE"),
            "saying why: {}",
            warnings[0]
        );
    }
    d.stop_pod(&pod);
    d.remove_pod(&pod);
}

#[test]
fn every_cgroup_goes_after_failures_and_a_restart() {
    let mut d = Caissond::start("");
    d.import_busybox();
    let empty = d.footprint();
    assert!(empty.cgroups.is_empty(), "{:?}", empty.cgroups);

    // CreateContainer that fails after libcontainer made its cgroup (the
    // container's init looks up its binary inside it).
    let config = d.pod_config("failures");
    let pod = d.run_pod(&config);
    let with_pod = d.footprint();
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("bad", &["/no/such/binary"])),
            sandbox_config: Some(config.clone()),
        }));
    let err = r.expect_err("CreateContainer of a missing binary succeeded");
    assert!(err.message().contains("not found"), "{}", err.message());
    assert_eq!(
        d.footprint().cgroups,
        with_pod.cgroups,
        "{}",
        d.footprint().diff(&with_pod)
    );

    // RunPodSandbox that fails after the pause's cgroup was made: a
    // sysctl the kernel does not have fails the pause's init.
    let mut bad = d.pod_config("bad-sysctl");
    bad.linux
        .get_or_insert_with(Default::default)
        .sysctls
        .insert("net.ipv4.caisson_no_such_sysctl".into(), "1".into());
    let mut rt = d.runtime();
    let r = d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(bad),
        runtime_handler: String::new(),
    }));
    assert!(r.is_err(), "RunPodSandbox with a missing sysctl succeeded");
    assert_eq!(
        d.footprint().cgroups,
        with_pod.cgroups,
        "{}",
        d.footprint().diff(&with_pod)
    );

    // After caissond is SIGKILLed and restarted, stop + remove leave nothing.
    let id = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    assert!(d.task_cgroup("memory", "uid-failures", &id).is_dir());
    d.restart_after_sigkill();
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    let after = d.footprint();
    assert!(after.cgroups.is_empty(), "{}", after.diff(&empty));
}

/// Removes a test's own top cgroup (a unique `caissontest-<pid>`, so that
/// parallel runs and a real kubelet's `/kubepods` are never touched) with
/// everything below it, after the daemon (declared later, dropped first)
/// killed its processes.
struct TopGuard {
    top: String,
}

impl Drop for TopGuard {
    fn drop(&mut self) {
        fn remove_tree(dir: &std::path::Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        remove_tree(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        let Ok(ctls) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for ctl in ctls.flatten() {
            remove_tree(&ctl.path().join(&self.top));
        }
    }
}

const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "memory", "pids", "cpuset", "devices", "freezer", "blkio",
];

/// Makes `rel` in every controller as kubelet would (cpuset levels get
/// their parent's CPUs and nodes).
fn make_like_kubelet(rel: &str) {
    for controller in V1_CONTROLLERS {
        let root = std::path::Path::new("/sys/fs/cgroup").join(controller);
        let mut dir = root.clone();
        for component in rel.split('/') {
            let parent = dir.clone();
            dir.push(component);
            if dir.is_dir() {
                continue;
            }
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            if *controller == "cpuset" {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    std::fs::write(dir.join(file), read_trimmed(&parent.join(file))).unwrap();
                }
            }
        }
    }
}

#[test]
fn a_systemd_cgroup_parent_lands_under_its_slices_and_only_caissonds_own_goes() {
    let top = format!("caissontest-{}", std::process::id());
    let _guard = TopGuard { top: top.clone() };
    let d = Caissond::start("");
    d.import_busybox();
    // (pod name, whether kubelet made the pod cgroup before RunPodSandbox)
    for (name, kubelet_made) in [("kubeletmade", true), ("caissondmade", false)] {
        let uid = format!("caisson_sd_{name}");
        // `_` is systemd's escape for `-`: the conversion turns it back.
        let slice = format!("{}-burstable-pod{uid}.slice", top.replace('-', "_"));
        let rel = format!("{top}/burstable/pod{}", uid.replace('_', "-"));
        if kubelet_made {
            make_like_kubelet(&rel);
        }
        let mut config = d.pod_config(name);
        config
            .linux
            .get_or_insert_with(Default::default)
            .cgroup_parent = slice;
        let pod = d.run_pod(&config);
        let id =
            d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
        for controller in V1_CONTROLLERS {
            let dir = std::path::Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&rel);
            for task in [&pod, &id] {
                assert!(
                    dir.join(task).is_dir(),
                    "{}/{task} missing (pod {pod}, container {id}); there: {:?}\n{}",
                    dir.display(),
                    std::fs::read_dir(&dir)
                        .map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
                    d.log_tail()
                );
            }
        }
        let pid = d.container_pid(&id);
        let cgroups = read_trimmed(std::path::Path::new(&format!("/proc/{pid}/cgroup")));
        assert!(cgroups.contains(&format!("/{rel}/{id}")), "{cgroups}");
        d.stop_pod(&pod);
        d.remove_pod(&pod);
        for controller in V1_CONTROLLERS {
            let dir = std::path::Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&rel);
            for task in [&pod, &id] {
                assert!(!dir.join(task).exists(), "{}/{task} left", dir.display());
            }
            assert_eq!(
                dir.exists(),
                kubelet_made,
                "{name}: {} (kubelet's is kubelet's to remove; caissond's goes)",
                dir.display()
            );
        }
    }
}
