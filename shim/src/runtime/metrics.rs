//! ListMetricDescriptors / ListPodSandboxMetrics: cAdvisor's `container_*`
//! metrics for kubelet's `PodAndContainerStatsFromCRI` (its
//! `/metrics/cadvisor` endpoint then comes from the runtime, not cAdvisor).
//!
//! Names, types and label keys follow cAdvisor as CRI-O serves them over the
//! CRI: every metric starts with the labels `id`, `name`, `image` (kubelet
//! appends `namespace`, `pod` and `container` itself), then its own
//! (`cpu`, `failure_type`/`scope`, `interface`). Containers get CPU, memory,
//! OOM, process, spec and writable-layer metrics; the pod (`name="POD"`)
//! gets its network namespace's interface counters, labelled by interface.
//!
//! Every figure is read when asked (the metric's timestamp is 0, "gathered
//! live"): the container's cgroup usage from its shim's Task `Stats`
//! ([`Runtime::task_metrics`]), what that answer lacks (page cache, failcnt,
//! processes, CPU settings) from the container's cgroup on the host
//! ([`caisson_cgroups::stats::read_container_extras`]), network counters
//! from the pod's netns ([`super::stats::pod_interfaces`]). CRI metric values
//! are integers: the `_seconds` counters are whole seconds, as CRI-O's.

use std::sync::Arc;

use caisson_cgroups::stats::{read_container_extras, ContainerExtras};
use caisson_proto::cri;
use containerd_shim_protos::cgroups::metrics::Metrics;

use super::stats::{pod_interfaces, InterfaceCounters};
use super::{now_ns, Runtime};
use crate::status::CriResult;
use crate::store::{ContainerRecord, ContainerState, PodRecord};

/// The labels every metric starts with.
const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

/// Memory limits at or above this are "unlimited" and reported as 0 (as
/// cAdvisor and CRI-O do; v1 shows 2^63 − 4096 for no limit).
const UNLIMITED_MEMORY: u64 = 1 << 62;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

struct Descriptor {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// Labels after [`BASE_LABELS`].
    labels: &'static [&'static str],
}

const fn counter(name: &'static str, help: &'static str) -> Descriptor {
    Descriptor {
        name,
        help,
        kind: Kind::Counter,
        labels: &[],
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Descriptor {
    Descriptor {
        name,
        help,
        kind: Kind::Gauge,
        labels: &[],
    }
}

const fn interface_counter(name: &'static str, help: &'static str) -> Descriptor {
    Descriptor {
        name,
        help,
        kind: Kind::Counter,
        labels: &["interface"],
    }
}

/// Everything ListPodSandboxMetrics can emit (and nothing else).
const DESCRIPTORS: &[Descriptor] = &[
    // CPU (cgroup cpuacct / cpu.stat).
    Descriptor {
        name: "container_cpu_usage_seconds_total",
        help: "Cumulative cpu time consumed in seconds.",
        kind: Kind::Counter,
        labels: &["cpu"],
    },
    counter(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
    ),
    counter(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
    ),
    // Memory.
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
    ),
    gauge(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
    ),
    gauge("container_memory_rss", "Size of RSS in bytes."),
    gauge(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
    ),
    counter(
        "container_memory_failcnt",
        "Number of memory usage hits limits",
    ),
    Descriptor {
        name: "container_memory_failures_total",
        help: "Cumulative count of memory allocation failures.",
        kind: Kind::Counter,
        labels: &["failure_type", "scope"],
    },
    counter(
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
    ),
    // Processes.
    gauge(
        "container_processes",
        "Number of processes running inside the container.",
    ),
    gauge(
        "container_threads",
        "Number of threads running inside the container",
    ),
    gauge(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero",
    ),
    // Lifetime.
    gauge(
        "container_last_seen",
        "Last time a container was seen by the exporter",
    ),
    gauge(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
    ),
    // Spec (what the kernel applies now, so UpdateContainerResources shows).
    gauge(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
    ),
    gauge("container_spec_cpu_shares", "CPU share of the container."),
    gauge("container_spec_cpu_period", "CPU period of the container."),
    gauge("container_spec_cpu_quota", "CPU quota of the container."),
    // The writable layer and the filesystem holding it.
    gauge(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
    ),
    gauge(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
    ),
    gauge("container_fs_inodes_total", "Number of Inodes"),
    gauge("container_fs_inodes_free", "Number of available Inodes"),
    // The pod's network namespace.
    interface_counter(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
    ),
    interface_counter(
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
    ),
    interface_counter(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
    ),
    interface_counter(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
    ),
    interface_counter(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
    ),
    interface_counter(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
    ),
    interface_counter(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
    ),
    interface_counter(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
    ),
];

/// ListMetricDescriptors' answer.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_string(),
            help: d.help.to_string(),
            label_keys: BASE_LABELS
                .iter()
                .chain(d.labels)
                .map(|l| l.to_string())
                .collect(),
        })
        .collect()
}

/// Builds the metrics of one container or pod: its base label values, each
/// metric's type and label count from [`DESCRIPTORS`].
struct Emitter {
    base: [String; 3],
    out: Vec<cri::Metric>,
}

impl Emitter {
    fn new(id: &str, name: &str, image: &str) -> Emitter {
        Emitter {
            base: [id.to_string(), name.to_string(), image.to_string()],
            out: Vec::new(),
        }
    }

    fn emit(&mut self, name: &'static str, value: u64, labels: &[&str]) {
        let Some(d) = DESCRIPTORS.iter().find(|d| d.name == name) else {
            tracing::error!(metric = name, "metric without a descriptor left out");
            return;
        };
        if d.labels.len() != labels.len() {
            tracing::error!(metric = name, "metric with the wrong labels left out");
            return;
        }
        let metric_type = match d.kind {
            Kind::Counter => cri::MetricType::Counter,
            Kind::Gauge => cri::MetricType::Gauge,
        };
        self.out.push(cri::Metric {
            name: name.to_string(),
            timestamp: 0,
            metric_type: metric_type as i32,
            label_values: self
                .base
                .iter()
                .cloned()
                .chain(labels.iter().map(|l| l.to_string()))
                .collect(),
            value: Some(cri::UInt64Value { value }),
        });
    }

    fn emit_some(&mut self, name: &'static str, value: Option<u64>) {
        if let Some(v) = value {
            self.emit(name, v, &[]);
        }
    }
}

/// Size of the filesystem at `dir` (statvfs); `None` when it cannot be read.
fn fs_capacity(dir: &std::path::Path) -> Option<FsCapacity> {
    nix::sys::statvfs::statvfs(dir).ok().map(|s| FsCapacity {
        bytes: s.blocks().saturating_mul(s.fragment_size()),
        inodes: s.files(),
        inodes_free: s.files_free(),
    })
}

/// Size of the filesystem holding the writable layers (statvfs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsCapacity {
    pub bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

/// What one container's metrics are made of.
#[derive(Debug, Clone, Default)]
pub struct ContainerSample {
    /// The shim's Task `Stats` answer.
    pub task: Metrics,
    /// Read from the container's cgroup on the host (empty when it is not
    /// there, e.g. a container inside a VM).
    pub extras: ContainerExtras,
    /// Bytes used by the writable layer.
    pub writable_layer_bytes: Option<u64>,
    pub filesystem: Option<FsCapacity>,
    pub started_at_ns: i64,
    pub now_ns: i64,
}

const NS_PER_SECOND: u64 = 1_000_000_000;

/// The container metrics of one sample.
fn container_metrics(id: &str, name: &str, image: &str, s: &ContainerSample) -> Vec<cri::Metric> {
    let mut e = Emitter::new(id, name, image);
    let cpu = &s.task.cpu.usage;
    e.emit(
        "container_cpu_usage_seconds_total",
        cpu.total / NS_PER_SECOND,
        &["total"],
    );
    e.emit(
        "container_cpu_user_seconds_total",
        cpu.user / NS_PER_SECOND,
        &[],
    );
    e.emit(
        "container_cpu_system_seconds_total",
        cpu.kernel / NS_PER_SECOND,
        &[],
    );

    let memory = &s.task.memory;
    let sample = super::stats::Sample::from_metrics(&s.task);
    e.emit("container_memory_usage_bytes", sample.memory_usage, &[]);
    e.emit(
        "container_memory_working_set_bytes",
        sample.working_set,
        &[],
    );
    e.emit("container_memory_rss", sample.rss, &[]);
    // The host's cgroup when there is one; else the backend's own figures
    // (a microvm container's cgroup is in its guest).
    e.emit_some(
        "container_memory_cache",
        s.extras.cache.or(Some(memory.total_cache)),
    );
    e.emit_some(
        "container_memory_failcnt",
        s.extras.failcnt.or(Some(memory.usage.failcnt)),
    );
    for (failure_type, scope, v) in [
        ("pgfault", "container", memory.pg_fault),
        ("pgfault", "hierarchy", memory.total_pg_fault),
        ("pgmajfault", "container", memory.pg_maj_fault),
        ("pgmajfault", "hierarchy", memory.total_pg_maj_fault),
    ] {
        e.emit("container_memory_failures_total", v, &[failure_type, scope]);
    }
    e.emit(
        "container_oom_events_total",
        s.task.memory_oom_control.oom_kill,
        &[],
    );

    e.emit_some("container_processes", s.extras.process_count);
    e.emit("container_threads", s.task.pids.current, &[]);
    e.emit("container_threads_max", s.task.pids.limit, &[]);

    e.emit(
        "container_last_seen",
        s.now_ns.max(0) as u64 / NS_PER_SECOND,
        &[],
    );
    e.emit(
        "container_start_time_seconds",
        s.started_at_ns.max(0) as u64 / NS_PER_SECOND,
        &[],
    );

    let limit = memory.usage.limit;
    e.emit(
        "container_spec_memory_limit_bytes",
        if limit >= UNLIMITED_MEMORY { 0 } else { limit },
        &[],
    );
    e.emit_some("container_spec_cpu_shares", s.extras.cpu_shares);
    e.emit_some("container_spec_cpu_period", s.extras.cpu_period_us);
    e.emit_some("container_spec_cpu_quota", s.extras.cpu_quota_us);

    e.emit_some("container_fs_usage_bytes", s.writable_layer_bytes);
    if let Some(fs) = s.filesystem {
        e.emit("container_fs_limit_bytes", fs.bytes, &[]);
        e.emit("container_fs_inodes_total", fs.inodes, &[]);
        e.emit("container_fs_inodes_free", fs.inodes_free, &[]);
    }
    e.out
}

/// CPU settings of a container with no cgroup on the host (microvm: its
/// cgroup is in the guest) from what its CRI config (`encoded`, as the
/// record keeps it) asked for.
fn with_spec_cpu(mut extras: ContainerExtras, encoded: &str) -> ContainerExtras {
    if extras.cpu_shares.is_some() {
        return extras;
    }
    let Some(config) = crate::store::decode::<cri::ContainerConfig>(encoded) else {
        return extras;
    };
    let r = super::update::resources_of(&config);
    extras.cpu_shares = (r.cpu_shares > 0).then_some(r.cpu_shares as u64);
    if r.cpu_quota > 0 {
        extras.cpu_quota_us = Some(r.cpu_quota as u64);
        extras.cpu_period_us = Some(if r.cpu_period > 0 {
            r.cpu_period as u64
        } else {
            100_000
        });
    }
    extras
}

/// The pod-level metrics: its network namespace's counters per interface.
fn pod_metrics(pod_id: &str, interfaces: &[InterfaceCounters]) -> Vec<cri::Metric> {
    let mut e = Emitter::new(pod_id, "POD", "");
    for i in interfaces {
        let name = i.name.as_str();
        for (metric, v) in [
            ("container_network_receive_bytes_total", i.rx_bytes),
            ("container_network_receive_packets_total", i.rx_packets),
            ("container_network_receive_errors_total", i.rx_errors),
            (
                "container_network_receive_packets_dropped_total",
                i.rx_dropped,
            ),
            ("container_network_transmit_bytes_total", i.tx_bytes),
            ("container_network_transmit_packets_total", i.tx_packets),
            ("container_network_transmit_errors_total", i.tx_errors),
            (
                "container_network_transmit_packets_dropped_total",
                i.tx_dropped,
            ),
        ] {
            e.emit(metric, v, &[name]);
        }
    }
    e.out
}

/// The `name` label: the container's name as kubelet's dockershim (and
/// CRI-O) spelled it, `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`.
fn container_name_label(pod: &PodRecord, c: &ContainerRecord) -> String {
    format!(
        "k8s_{}_{}_{}_{}_{}",
        c.name, pod.name, pod.namespace, pod.uid, c.attempt
    )
}

impl Runtime {
    /// ListPodSandboxMetrics: every pod, with its running containers.
    pub async fn list_pod_sandbox_metrics(self: &Arc<Self>) -> Vec<cri::PodSandboxMetrics> {
        let pods: Vec<PodRecord> = self.records().pods.values().cloned().collect();
        // The writable layers' filesystem, once for every container.
        let root_dir = self.config.root_dir.clone();
        let filesystem = tokio::task::spawn_blocking(move || fs_capacity(&root_dir))
            .await
            .unwrap_or_default();
        let mut out = Vec::with_capacity(pods.len());
        for pod in pods {
            let running: Vec<ContainerRecord> = self
                .records()
                .containers
                .values()
                .filter(|c| c.pod_id == pod.id && c.state == ContainerState::Running)
                .cloned()
                .collect();
            let mut container_metrics = Vec::with_capacity(running.len());
            for c in running {
                match self.container_metrics(&pod, &c, filesystem).await {
                    Ok(m) => container_metrics.push(m),
                    Err(e) => tracing::debug!(container_id = %c.id, error = %e, "no metrics"),
                }
            }
            let interfaces = pod_interfaces(&pod).unwrap_or_default();
            out.push(cri::PodSandboxMetrics {
                pod_sandbox_id: pod.id.clone(),
                metrics: pod_metrics(&pod.id, &interfaces),
                container_metrics,
            });
        }
        out
    }

    async fn container_metrics(
        self: &Arc<Self>,
        pod: &PodRecord,
        c: &ContainerRecord,
        filesystem: Option<FsCapacity>,
    ) -> CriResult<cri::ContainerMetrics> {
        let task = self.task_metrics(c).await?;
        // The same path the spec builder gives the container's cgroup.
        let cgroup = (!pod.cgroup_parent.is_empty())
            .then(|| format!("{}/{}", pod.cgroup_parent.trim_end_matches('/'), c.id));
        let rt = self.clone();
        let id = c.id.clone();
        // Directory walks and cgroupfs reads: off the reactor.
        let (extras, writable_layer_bytes) = tokio::task::spawn_blocking(move || {
            let extras = cgroup
                .map(|cg| read_container_extras(rt.qos.fs(), &cg))
                .unwrap_or_default();
            let writable = rt.images.rootfs_usage(&id).ok().map(|u| u.used_bytes);
            (extras, writable)
        })
        .await
        .map_err(|e| crate::status::CriError::internal("reading container metrics", e))?;
        let extras = with_spec_cpu(extras, &c.config);
        let sample = ContainerSample {
            task,
            extras,
            writable_layer_bytes,
            filesystem,
            started_at_ns: c.started_at,
            now_ns: now_ns(),
        };
        let image = if c.image.is_empty() {
            &c.image_ref
        } else {
            &c.image
        };
        Ok(cri::ContainerMetrics {
            container_id: c.id.clone(),
            metrics: container_metrics(&c.id, &container_name_label(pod, c), image, &sample),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn full_sample() -> ContainerSample {
        let mut task = Metrics::new();
        let cpu = task
            .cpu
            .mut_or_insert_default()
            .usage
            .mut_or_insert_default();
        cpu.total = 3_500_000_000;
        cpu.user = 2_000_000_000;
        cpu.kernel = 1_000_000_000;
        let memory = task.memory.mut_or_insert_default();
        let usage = memory.usage.mut_or_insert_default();
        usage.usage = 1000;
        usage.limit = 9_223_372_036_854_771_712;
        memory.total_inactive_file = 300;
        memory.total_rss = 600;
        memory.pg_fault = 9;
        memory.total_pg_fault = 9;
        task.memory_oom_control.mut_or_insert_default().oom_kill = 2;
        task.pids.mut_or_insert_default().current = 4;
        ContainerSample {
            task,
            extras: ContainerExtras {
                cache: Some(50),
                failcnt: Some(1),
                process_count: Some(3),
                cpu_shares: Some(512),
                cpu_period_us: Some(100_000),
                cpu_quota_us: Some(50_000),
            },
            writable_layer_bytes: Some(4096),
            filesystem: Some(FsCapacity {
                bytes: 1 << 30,
                inodes: 1000,
                inodes_free: 900,
            }),
            started_at_ns: 1_700_000_000_900_000_000,
            now_ns: 1_700_000_100_000_000_000,
        }
    }

    fn eth0() -> InterfaceCounters {
        InterfaceCounters {
            name: "eth0".into(),
            rx_bytes: 10,
            tx_packets: 3,
            ..Default::default()
        }
    }

    /// Name → (type, label_values) of each emitted metric.
    fn by_name(metrics: &[cri::Metric]) -> BTreeMap<String, Vec<(i32, Vec<String>, u64)>> {
        let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for m in metrics {
            out.entry(m.name.clone()).or_default().push((
                m.metric_type,
                m.label_values.clone(),
                m.value.as_ref().unwrap().value,
            ));
        }
        out
    }

    #[test]
    fn descriptors_list_exactly_what_is_emitted() {
        let mut emitted = container_metrics("c1", "k8s_c", "busybox", &full_sample());
        emitted.extend(pod_metrics("p1", &[eth0()]));
        let described: BTreeMap<String, usize> = descriptors()
            .into_iter()
            .map(|d| (d.name, d.label_keys.len()))
            .collect();
        assert_eq!(described.len(), DESCRIPTORS.len(), "duplicate names");
        let names: BTreeSet<String> = emitted.iter().map(|m| m.name.clone()).collect();
        assert_eq!(
            names,
            described.keys().cloned().collect::<BTreeSet<_>>(),
            "emitted and described names differ"
        );
        for m in &emitted {
            assert_eq!(m.label_values.len(), described[&m.name], "{}", m.name);
            assert_eq!(m.timestamp, 0, "{}", m.name);
        }
        for d in descriptors() {
            assert_eq!(&d.label_keys[..3], &BASE_LABELS, "{}", d.name);
        }
    }

    #[test]
    fn values_types_and_labels() {
        let got = by_name(&container_metrics("c1", "k8s_c", "busybox", &full_sample()));
        let counter = cri::MetricType::Counter as i32;
        let gauge = cri::MetricType::Gauge as i32;
        let base = |extra: &[&str]| -> Vec<String> {
            ["c1", "k8s_c", "busybox"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect()
        };
        for (name, want) in [
            (
                "container_cpu_usage_seconds_total",
                vec![(counter, base(&["total"]), 3)],
            ),
            (
                "container_cpu_user_seconds_total",
                vec![(counter, base(&[]), 2)],
            ),
            (
                "container_memory_working_set_bytes",
                vec![(gauge, base(&[]), 700)],
            ),
            ("container_memory_cache", vec![(gauge, base(&[]), 50)]),
            ("container_oom_events_total", vec![(counter, base(&[]), 2)]),
            ("container_processes", vec![(gauge, base(&[]), 3)]),
            ("container_threads", vec![(gauge, base(&[]), 4)]),
            // 2^63 − 4096 is v1's "no limit".
            (
                "container_spec_memory_limit_bytes",
                vec![(gauge, base(&[]), 0)],
            ),
            (
                "container_start_time_seconds",
                vec![(gauge, base(&[]), 1_700_000_000)],
            ),
            (
                "container_last_seen",
                vec![(gauge, base(&[]), 1_700_000_100)],
            ),
            ("container_fs_usage_bytes", vec![(gauge, base(&[]), 4096)]),
        ] {
            assert_eq!(got[name], want, "{name}");
        }
        assert_eq!(got["container_memory_failures_total"].len(), 4);
        assert!(got["container_memory_failures_total"].contains(&(
            counter,
            base(&["pgfault", "hierarchy"]),
            9
        )));

        let pod = by_name(&pod_metrics("p1", &[eth0()]));
        assert_eq!(
            pod["container_network_receive_bytes_total"],
            vec![(
                counter,
                vec!["p1".into(), "POD".into(), "".into(), "eth0".into()],
                10
            )]
        );
        assert_eq!(pod["container_network_transmit_packets_total"][0].2, 3);
        assert!(pod_metrics("p1", &[]).is_empty());
    }

    #[test]
    fn cpu_settings_without_a_host_cgroup_come_from_the_config() {
        let config = cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    cpu_shares: 512,
                    cpu_quota: 50_000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let encoded = crate::store::encode(&config);
        let got = with_spec_cpu(ContainerExtras::default(), &encoded);
        assert_eq!(
            (got.cpu_shares, got.cpu_quota_us, got.cpu_period_us),
            (Some(512), Some(50_000), Some(100_000))
        );
        // A host cgroup's own figures win.
        let host = ContainerExtras {
            cpu_shares: Some(2),
            ..Default::default()
        };
        assert_eq!(with_spec_cpu(host, &encoded).cpu_shares, Some(2));
    }

    #[test]
    fn missing_host_figures_are_left_out() {
        let sample = ContainerSample {
            extras: ContainerExtras::default(),
            writable_layer_bytes: None,
            filesystem: None,
            ..full_sample()
        };
        let got = by_name(&container_metrics("c1", "n", "i", &sample));
        // The task's own figures stand in for the host's.
        assert!(got.contains_key("container_memory_cache"));
        assert!(got.contains_key("container_memory_failcnt"));
        for name in [
            "container_processes",
            "container_spec_cpu_shares",
            "container_fs_usage_bytes",
            "container_fs_limit_bytes",
        ] {
            assert!(!got.contains_key(name), "{name}");
        }
        assert!(got.contains_key("container_cpu_usage_seconds_total"));
    }
}
