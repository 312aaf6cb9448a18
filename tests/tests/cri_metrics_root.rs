//! Pod network counters (PodSandboxStats) and the CRI metrics RPCs
//! (ListMetricDescriptors, ListPodSandboxMetrics) against a real caissond:
//! counters follow traffic the test sends through a CNI bridge of its own,
//! CPU and memory metrics follow a busy loop and a tmpfs fill and agree with
//! the container's cgroup files, and every emitted metric is described with
//! matching label keys. Needs root and containernetworking-plugins.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use caisson_tests::cni::TestNetwork;
use caisson_tests::daemon::{container_config, read_u64, wait_until, with_host_network, Caissond};
use k8s_cri::v1 as cri;

const MI: u64 = 1 << 20;

fn descriptors(d: &Caissond) -> BTreeMap<String, Vec<String>> {
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.list_metric_descriptors(cri::ListMetricDescriptorsRequest {}));
    let mut out = BTreeMap::new();
    for desc in d.ok("ListMetricDescriptors", r).descriptors {
        assert!(!desc.help.is_empty(), "{} has no help", desc.name);
        assert!(
            out.insert(desc.name.clone(), desc.label_keys).is_none(),
            "{} described twice",
            desc.name
        );
    }
    out
}

fn pod_metrics(d: &Caissond, pod: &str) -> cri::PodSandboxMetrics {
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}));
    d.ok("ListPodSandboxMetrics", r)
        .pod_metrics
        .into_iter()
        .find(|m| m.pod_sandbox_id == pod)
        .unwrap_or_else(|| panic!("no metrics for pod {pod}"))
}

/// The value of `name` whose labels after `id, name, image` are `extra`.
fn metric(metrics: &[cri::Metric], name: &str, extra: &[&str]) -> Option<u64> {
    metrics
        .iter()
        .find(|m| m.name == name && m.label_values[3..] == *extra)
        .map(|m| m.value.as_ref().expect("metric without a value").value)
}

fn container_metrics<'a>(pm: &'a cri::PodSandboxMetrics, id: &str) -> &'a [cri::Metric] {
    &pm.container_metrics
        .iter()
        .find(|c| c.container_id == id)
        .unwrap_or_else(|| panic!("no metrics for container {id}"))
        .metrics
}

/// eth0's `(rx bytes, tx bytes)` in PodSandboxStats.
fn eth0_bytes(stats: &cri::PodSandboxStats) -> (u64, u64) {
    let network = stats
        .linux
        .as_ref()
        .unwrap()
        .network
        .as_ref()
        .expect("a CNI pod without network stats");
    assert!(network.timestamp > 0);
    let eth0 = network.default_interface.as_ref().unwrap();
    assert_eq!(eth0.name, "eth0");
    assert!(
        network.interfaces.iter().all(|i| i.name != "lo"),
        "lo reported: {network:?}"
    );
    (
        eth0.rx_bytes.as_ref().unwrap().value,
        eth0.tx_bytes.as_ref().unwrap().value,
    )
}

#[test]
fn pod_network_counters_follow_traffic() {
    let net = TestNetwork::new("cst-netstats", "cst-nstat0", "10.231.61");
    let d = Caissond::start("");
    d.import_busybox();
    net.install(&d, r#", {"type": "loopback"}"#);
    let config = d.pod_config("netstats-pod");
    let pod = d.run_pod(&config);
    let c = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    let ip = d.pod_status(&pod).network.unwrap().ip;
    assert!(ip.starts_with("10.231.61."), "{ip}");

    let before = d.pod_stats(&pod);
    let (rx0, tx0) = eth0_bytes(&before);
    let packets = |pm: &cri::PodSandboxMetrics, name: &str| {
        metric(&pm.metrics, name, &["eth0"]).unwrap_or_else(|| panic!("no {name}: {pm:?}"))
    };
    let m0 = pod_metrics(&d, &pod);
    // 20 echo requests of 1000 bytes to the bridge's address, 20 replies:
    // each frame is at least 1000 + 8 (ICMP) + 20 (IP) bytes.
    const COUNT: u64 = 20;
    const FRAME: u64 = 1028;
    let out = d.exec(
        &c,
        &[
            "ping",
            "-c",
            &COUNT.to_string(),
            "-i",
            "0.05",
            "-s",
            "1000",
            "-W",
            "5",
            &net.gateway(),
        ],
    );
    assert!(out.contains(&format!("{COUNT} packets received")), "{out}");

    let after = d.pod_stats(&pod);
    let (rx1, tx1) = eth0_bytes(&after);
    assert!(
        rx1 - rx0 >= COUNT * FRAME,
        "rx grew by {} for {COUNT} replies",
        rx1 - rx0
    );
    assert!(
        tx1 - tx0 >= COUNT * FRAME,
        "tx grew by {} for {COUNT} requests",
        tx1 - tx0
    );
    let m1 = pod_metrics(&d, &pod);
    for name in [
        "container_network_receive_packets_total",
        "container_network_transmit_packets_total",
    ] {
        let grew = packets(&m1, name) - packets(&m0, name);
        assert!(grew >= COUNT, "{name} grew by {grew}");
    }
    let bytes = packets(&m1, "container_network_receive_bytes_total");
    assert!(bytes >= rx1, "metrics rx {bytes} behind the stats' {rx1}");
    assert!(
        metric(
            &m1.metrics,
            "container_network_receive_bytes_total",
            &["lo"]
        )
        .is_none(),
        "lo reported"
    );
    let process = after.linux.as_ref().unwrap().process.as_ref().unwrap();
    assert!(process.process_count.as_ref().unwrap().value >= 2);

    // ListPodSandboxStats carries the same network figures.
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: pod.clone(),
                ..Default::default()
            }),
        }));
    let listed = d.ok("ListPodSandboxStats", r).stats;
    assert_eq!(listed.len(), 1);
    assert!(eth0_bytes(&listed[0]).0 >= rx1);

    // A hostNetwork pod reports no per-pod network, but its processes.
    let host_config = with_host_network(d.pod_config("netstats-hostnet"));
    let host_pod = d.run_pod(&host_config);
    let host_stats = d.pod_stats(&host_pod);
    let linux = host_stats.linux.unwrap();
    assert!(linux.network.is_none(), "{:?}", linux.network);
    assert!(linux.process.unwrap().process_count.unwrap().value >= 1);
    assert!(pod_metrics(&d, &host_pod).metrics.is_empty());

    // Once stopped, the pod reports no network.
    d.stop_pod(&pod);
    let stopped = d.pod_stats(&pod);
    assert!(stopped.linux.unwrap().network.is_none());
    d.remove_pod(&pod);
    d.stop_pod(&host_pod);
    d.remove_pod(&host_pod);
}

#[test]
fn pod_sandbox_metrics_are_described_and_follow_the_containers() {
    let net = TestNetwork::new("cst-metrics", "cst-metr0", "10.231.62");
    let d = Caissond::start("");
    d.import_busybox();
    net.install(&d, r#", {"type": "loopback"}"#);
    let config = d.pod_config("metrics-pod");
    let uid = config.metadata.as_ref().unwrap().uid.clone();
    let pod = d.run_pod(&config);
    let mut busy = container_config("busy", &["sh", "-c", "while :; do :; done"]);
    busy.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_period: 100_000,
            cpu_quota: 100_000,
            memory_limit_in_bytes: 256 * MI as i64,
            ..Default::default()
        });
    let busy = d.create_started_container(&pod, &config, busy);
    let hog = d.create_started_container(
        &pod,
        &config,
        container_config(
            "hog",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/dev/shm/fill bs=1M count=40 && exec sleep 1000",
            ],
        ),
    );

    // Every emitted metric is described, with as many label values as
    // keys, and every description is used.
    let described = descriptors(&d);
    for (name, keys) in &described {
        assert!(name.starts_with("container_"), "{name}");
        assert_eq!(keys[..3], ["id", "name", "image"], "{name}");
        assert!(
            !keys[3..]
                .iter()
                .any(|k| ["namespace", "pod", "container"].contains(&k.as_str())),
            "{name}: kubelet adds {keys:?} itself"
        );
    }
    let first = pod_metrics(&d, &pod);
    let mut emitted = BTreeSet::new();
    let all = first.metrics.iter().map(|m| (pod.as_str(), m)).chain(
        first
            .container_metrics
            .iter()
            .flat_map(|c| c.metrics.iter().map(|m| (c.container_id.as_str(), m))),
    );
    for (id, m) in all {
        let keys = described
            .get(&m.name)
            .unwrap_or_else(|| panic!("{} is emitted but not described", m.name));
        assert_eq!(
            m.label_values.len(),
            keys.len(),
            "{}: values {:?} for keys {keys:?}",
            m.name,
            m.label_values
        );
        assert_eq!(m.label_values[0], id, "{}", m.name);
        emitted.insert(m.name.clone());
    }
    assert_eq!(
        emitted,
        described.keys().cloned().collect::<BTreeSet<_>>(),
        "described but never emitted"
    );
    let pod_names: BTreeSet<&str> = first.metrics.iter().map(|m| m.name.as_str()).collect();
    assert!(pod_names
        .iter()
        .all(|n| n.starts_with("container_network_")));
    assert!(
        metric(
            &first.metrics,
            "container_network_receive_bytes_total",
            &["eth0"]
        )
        .is_some(),
        "no eth0 counters for the pod"
    );
    assert!(first
        .metrics
        .iter()
        .all(|m| m.label_values[1..3] == ["POD", ""]));
    let busy_first = container_metrics(&first, &busy);
    assert_eq!(
        busy_first[0].label_values[1],
        format!("k8s_busy_metrics-pod_default_{uid}_0")
    );

    // CPU: the busy loop's counter grows between calls and agrees with its
    // cgroup's cpuacct.usage.
    let cpuacct = d.task_cgroup("cpuacct", &uid, &busy).join("cpuacct.usage");
    let cpu = |pm: &cri::PodSandboxMetrics| {
        metric(
            container_metrics(pm, &busy),
            "container_cpu_usage_seconds_total",
            &["total"],
        )
        .expect("no container_cpu_usage_seconds_total")
    };
    let start = cpu(&first);
    wait_until(
        "the busy CPU counter to grow",
        Duration::from_secs(20),
        || {
            let low = read_u64(&cpuacct) / 1_000_000_000;
            let pm = pod_metrics(&d, &pod);
            let high = read_u64(&cpuacct) / 1_000_000_000;
            let now = cpu(&pm);
            assert!(
                (low..=high).contains(&now),
                "{now} s outside cpuacct's {low}..={high}"
            );
            (now > start).then_some(())
        },
    );

    // Memory: 40 MiB of tmpfs is charged to the hog.
    let memory = d.task_cgroup("memory", &uid, &hog);
    let pm = wait_until(
        "the tmpfs fill to be charged",
        Duration::from_secs(20),
        || {
            let pm = pod_metrics(&d, &pod);
            let cache = metric(container_metrics(&pm, &hog), "container_memory_cache", &[])?;
            (cache >= 40 * MI).then_some(pm)
        },
    );
    let hog_metrics = container_metrics(&pm, &hog);
    let usage = metric(hog_metrics, "container_memory_usage_bytes", &[]).unwrap();
    assert!(usage >= 40 * MI, "usage {usage}");
    let working_set = metric(hog_metrics, "container_memory_working_set_bytes", &[]).unwrap();
    assert!(
        working_set >= 40 * MI,
        "tmpfs is not reclaimable: {working_set}"
    );
    let kernel_usage = read_u64(&memory.join("memory.usage_in_bytes"));
    assert!(
        kernel_usage.abs_diff(usage) < 8 * MI,
        "metric {usage} vs memory.usage_in_bytes {kernel_usage}"
    );
    let busy_metrics = container_metrics(&pm, &busy);
    assert!(metric(busy_metrics, "container_memory_usage_bytes", &[]).unwrap() < 40 * MI);

    // Spec, processes and lifetime, as the kernel and the CRI show them.
    for (name, want) in [
        ("container_spec_memory_limit_bytes", 256 * MI),
        ("container_spec_cpu_shares", 512),
        ("container_spec_cpu_quota", 100_000),
        ("container_spec_cpu_period", 100_000),
        ("container_processes", 1),
        ("container_oom_events_total", 0),
    ] {
        assert_eq!(metric(busy_metrics, name, &[]), Some(want), "{name}");
    }
    assert_eq!(
        metric(hog_metrics, "container_spec_memory_limit_bytes", &[]),
        Some(0),
        "no limit reads as 0"
    );
    assert!(metric(busy_metrics, "container_threads", &[]).unwrap() >= 1);
    let started = d.container_status(&busy).started_at / 1_000_000_000;
    assert_eq!(
        metric(busy_metrics, "container_start_time_seconds", &[]),
        Some(started as u64)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let last_seen = metric(busy_metrics, "container_last_seen", &[]).unwrap();
    assert!(now.abs_diff(last_seen) <= 60, "{last_seen} vs now {now}");
    let fs_limit = metric(busy_metrics, "container_fs_limit_bytes", &[]).unwrap();
    assert!(fs_limit > 0);
    assert!(metric(busy_metrics, "container_fs_usage_bytes", &[]).unwrap() < fs_limit);

    // A stopped container drops out; the pod's others stay.
    d.stop_container(&hog, 0);
    let pm = pod_metrics(&d, &pod);
    assert!(pm.container_metrics.iter().all(|c| c.container_id != hog));
    assert!(pm.container_metrics.iter().any(|c| c.container_id == busy));

    d.stop_pod(&pod);
    d.remove_pod(&pod);
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}));
    assert!(d.ok("ListPodSandboxMetrics", r).pod_metrics.is_empty());
}
