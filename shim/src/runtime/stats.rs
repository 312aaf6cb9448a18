//! ContainerStats / ListContainerStats: a running container's cgroup
//! metrics from its shim's Task `Stats` (cgroups v1 `Metrics`), turned into
//! the CRI's figures, plus its writable layer's disk usage. PodSandboxStats:
//! the pod cgroup read from cgroupfs (`caisson_cgroups::stats`) and the
//! interface counters of the pod's network namespace (`/proc/<pause>/net/dev`).

use std::sync::Arc;

use caisson_proto::cri;
use containerd_shim_protos::cgroups::metrics::Metrics;
use containerd_shim_protos::protobuf::Message;

use super::{now_ns, Runtime};
use crate::status::{CriError, CriResult};
use crate::store::{ContainerRecord, ContainerState, PodRecord};

/// The CRI's view of one metrics sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub cpu_usage_ns: u64,
    pub memory_usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

impl Sample {
    /// Working set = usage − inactive_file (as cAdvisor and kubelet).
    pub fn from_metrics(m: &Metrics) -> Sample {
        let usage = m.memory.usage.usage;
        Sample {
            cpu_usage_ns: m.cpu.usage.total,
            memory_usage: usage,
            working_set: usage.saturating_sub(m.memory.total_inactive_file),
            rss: m.memory.total_rss,
            page_faults: m.memory.total_pg_fault,
            major_page_faults: m.memory.total_pg_maj_fault,
        }
    }
}

/// Counters of one network interface, as `/proc/net/dev` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The interfaces of a `/proc/net/dev` listing, without `lo` (as cAdvisor
/// and containerd leave it out). Lines that do not parse are skipped.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            // rx: bytes packets errs drop fifo frame compressed multicast,
            // then tx: bytes packets errs drop fifo colls carrier compressed.
            (n.len() >= 16 && name != "lo").then(|| InterfaceCounters {
                name: name.to_string(),
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            })
        })
        .collect()
}

/// The interfaces of the pod's own network namespace, read through its
/// pause process (`/proc/<pid>/net/dev` shows that process's netns, no
/// setns needed). `None` for hostNetwork pods: their interfaces are the
/// node's, not the pod's, so (like containerd, which only reads a pod's
/// netns when it has one) no per-pod network is reported. Also `None`
/// once the pause is gone, or if its pid no longer holds the pod's pinned
/// netns (a reused pid). `/proc/<pid>` is opened once and both the netns
/// check and the read go through that directory: it stays the process
/// it was opened for (reads fail once it exits), so a pid reused between
/// the two cannot slip in.
pub fn pod_interfaces(pod: &PodRecord) -> Option<Vec<InterfaceCounters>> {
    use nix::fcntl::{open, openat, AtFlags, OFlag};
    use nix::sys::stat::{fstatat, Mode};
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    if pod.host_network || pod.pause_exited || pod.pause_pid == 0 {
        return None;
    }
    let netns = pod.netns.as_ref()?;
    let pinned = std::fs::metadata(netns).ok()?;
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let proc_dir = open(
        format!("/proc/{}", pod.pause_pid).as_str(),
        flags | OFlag::O_DIRECTORY,
        Mode::empty(),
    );
    let Some(proc_dir) = proc_dir.ok().filter(|dir| {
        fstatat(dir, "ns/net", AtFlags::empty())
            .is_ok_and(|ns| (ns.st_dev, ns.st_ino) == (pinned.dev(), pinned.ino()))
    }) else {
        // The pause is not a host process in the pod's netns (a microvm
        // pod's runs in its guest, its pid the guest's): the pinned netns
        // is read from a thread that enters it.
        return interfaces_in(netns);
    };
    let dev = openat(&proc_dir, "net/dev", flags, Mode::empty()).ok()?;
    let mut text = String::new();
    std::fs::File::from(dev).read_to_string(&mut text).ok()?;
    Some(parse_net_dev(&text))
}

/// The interfaces of the network namespace pinned at `netns`, read by a
/// thread that enters it (`/proc/thread-self/net/dev` is the calling
/// thread's namespace's) and ends.
fn interfaces_in(netns: &std::path::Path) -> Option<Vec<InterfaceCounters>> {
    let ns = std::fs::File::open(netns).ok()?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
        Some(parse_net_dev(&text))
    })
    .join()
    .ok()?
}

/// The CRI's NetworkUsage: the CNI interface (`eth0`) as the default, the
/// others in `interfaces`. `None` without any interface but `lo`.
pub fn network_usage(
    interfaces: &[InterfaceCounters],
    timestamp: i64,
) -> Option<cri::NetworkUsage> {
    let usage = |i: &InterfaceCounters| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    };
    let default = interfaces
        .iter()
        .position(|i| i.name == crate::network::cni::IFNAME)
        .or((!interfaces.is_empty()).then_some(0))?;
    Some(cri::NetworkUsage {
        timestamp,
        default_interface: Some(usage(&interfaces[default])),
        interfaces: interfaces
            .iter()
            .enumerate()
            .filter(|(n, _)| *n != default)
            .map(|(_, i)| usage(i))
            .collect(),
    })
}

/// Nano-cores between two `(timestamp ns, cpu ns)` samples.
pub fn nano_cores(previous: (i64, u64), now: (i64, u64)) -> Option<u64> {
    let elapsed = now.0.checked_sub(previous.0).filter(|e| *e > 0)? as u128;
    let used = now.1.checked_sub(previous.1)? as u128;
    Some((used * 1_000_000_000 / elapsed) as u64)
}

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// The pod key of [`Runtime::record_cpu`]'s samples (a container's is its id).
pub(super) fn pod_sample_key(pod_id: &str) -> String {
    format!("pod/{pod_id}")
}

impl Runtime {
    /// Nano-cores since the previous sample under `key`, recording this one.
    fn record_cpu(&self, key: &str, timestamp: i64, cpu_ns: u64) -> Option<u64> {
        let previous = self
            .cpu_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), (timestamp, cpu_ns));
        previous.and_then(|p| nano_cores(p, (timestamp, cpu_ns)))
    }

    /// Drops the CPU sample under `key` (a removed container or pod).
    pub(super) fn forget_cpu_sample(&self, key: &str) {
        self.cpu_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Stats of one pod: its cgroup's usage (pause and containers), process
    /// count, and its containers' stats.
    pub async fn pod_sandbox_stats(self: &Arc<Self>, id: &str) -> CriResult<cri::PodSandboxStats> {
        let pod = self.pod(id)?;
        Ok(self.pod_stats_of(&pod).await)
    }

    /// Stats of the pods matching `filter`.
    pub async fn list_pod_sandbox_stats(
        self: &Arc<Self>,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        let pods: Vec<PodRecord> = self
            .records()
            .pods
            .values()
            .filter(|p| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || p.id.starts_with(&f.id))
                        && super::labels_match(&f.label_selector, &p.labels)
                }
            })
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(pods.len());
        for pod in pods {
            out.push(self.pod_stats_of(&pod).await);
        }
        out
    }

    async fn pod_stats_of(self: &Arc<Self>, pod: &PodRecord) -> cri::PodSandboxStats {
        let config: cri::PodSandboxConfig = crate::store::decode(&pod.config).unwrap_or_default();
        let timestamp = now_ns();
        let usage = caisson_cgroups::stats::read(self.qos.fs(), &pod.cgroup_parent);
        let nano = usage
            .cpu_usage_ns
            .and_then(|ns| self.record_cpu(&pod_sample_key(&pod.id), timestamp, ns));
        let containers = self
            .list_container_stats(Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            }))
            .await
            .into_iter()
            .collect();
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: config.metadata,
                labels: super::unsorted(&pod.labels),
                annotations: super::unsorted(&pod.annotations),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp,
                    usage_core_nano_seconds: usage.cpu_usage_ns.and_then(value),
                    usage_nano_cores: nano.and_then(value),
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp,
                    working_set_bytes: usage.working_set.and_then(value),
                    available_bytes: None,
                    usage_bytes: usage.memory_usage.and_then(value),
                    rss_bytes: usage.rss.and_then(value),
                    page_faults: usage.page_faults.and_then(value),
                    major_page_faults: usage.major_page_faults.and_then(value),
                }),
                network: pod_interfaces(pod).and_then(|i| network_usage(&i, timestamp)),
                process: Some(cri::ProcessUsage {
                    timestamp,
                    process_count: usage.processes.and_then(value),
                }),
                containers,
            }),
            windows: None,
        }
    }

    /// Stats of one container.
    pub async fn container_stats(self: &Arc<Self>, id: &str) -> CriResult<cri::ContainerStats> {
        let c = self.container(id)?;
        self.stats_of(&c).await
    }

    /// Stats of the containers matching `filter` (running ones; a container
    /// whose shim does not answer is left out).
    pub async fn list_container_stats(
        self: &Arc<Self>,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        let matching: Vec<ContainerRecord> = self
            .records()
            .containers
            .values()
            .filter(|c| match &filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&f.pod_sandbox_id))
                        && super::labels_match(&f.label_selector, &c.labels)
                }
            })
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(matching.len());
        for c in matching {
            match self.stats_of(&c).await {
                Ok(s) => out.push(s),
                Err(e) => tracing::debug!(container_id = %c.id, error = %e, "no stats"),
            }
        }
        out
    }

    /// A running container's cgroup metrics from its pod's shim (Task
    /// `Stats`, whatever the backend).
    pub async fn task_metrics(self: &Arc<Self>, c: &ContainerRecord) -> CriResult<Metrics> {
        let pod = self.pod(&c.pod_id)?;
        let client = self.client(&pod)?;
        let response = client.stats(&c.id).await?;
        let any = response
            .stats
            .as_ref()
            .ok_or_else(|| CriError::Internal("task stats: empty answer".into()))?;
        Metrics::parse_from_bytes(&any.value)
            .map_err(|e| CriError::internal("decoding task stats", e))
    }

    async fn stats_of(self: &Arc<Self>, c: &ContainerRecord) -> CriResult<cri::ContainerStats> {
        let config: cri::ContainerConfig = crate::store::decode(&c.config).unwrap_or_default();
        let attributes = Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: config.metadata,
            labels: super::unsorted(&c.labels),
            annotations: super::unsorted(&c.annotations),
        });
        let timestamp = now_ns();
        let writable_layer = self
            .images
            .rootfs_usage(&c.id)
            .ok()
            .map(|u| cri::FilesystemUsage {
                timestamp,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.config.root_dir.display().to_string(),
                }),
                used_bytes: value(u.used_bytes),
                inodes_used: value(u.inodes_used),
            });
        if c.state != ContainerState::Running {
            return Ok(cri::ContainerStats {
                attributes,
                writable_layer,
                ..Default::default()
            });
        }
        let metrics = self.task_metrics(c).await?;
        let sample = Sample::from_metrics(&metrics);
        let nano = self.record_cpu(&c.id, timestamp, sample.cpu_usage_ns);
        Ok(cri::ContainerStats {
            attributes,
            cpu: Some(cri::CpuUsage {
                timestamp,
                usage_core_nano_seconds: value(sample.cpu_usage_ns),
                usage_nano_cores: nano.and_then(value),
            }),
            memory: Some(cri::MemoryUsage {
                timestamp,
                working_set_bytes: value(sample.working_set),
                available_bytes: None,
                usage_bytes: value(sample.memory_usage),
                rss_bytes: value(sample.rss),
                page_faults: value(sample.page_faults),
                major_page_faults: value(sample.major_page_faults),
            }),
            writable_layer,
            swap: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_cores_between_samples() {
        for (previous, now, want) in [
            ((0, 0), (1_000_000_000, 500_000_000), Some(500_000_000)),
            ((0, 0), (500_000_000, 1_000_000_000), Some(2_000_000_000)),
            ((5, 10), (5, 20), None),
            ((0, 20), (1_000, 10), None),
        ] {
            assert_eq!(nano_cores(previous, now), want, "{previous:?} → {now:?}");
        }
    }

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    9182      77    1    2    0     0          0         0     3716      41    3    4    0     0       0          0
 net1: 18446744073709551615 5 0 0 0 0 0 0 7 8 0 0 0 0 0 0
  bad: 1 2 3
";

    #[test]
    fn net_dev_interfaces_without_lo() {
        let got = parse_net_dev(NET_DEV);
        let want = [
            InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 9182,
                rx_packets: 77,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 3716,
                tx_packets: 41,
                tx_errors: 3,
                tx_dropped: 4,
            },
            InterfaceCounters {
                name: "net1".into(),
                rx_bytes: u64::MAX,
                rx_packets: 5,
                tx_bytes: 7,
                tx_packets: 8,
                ..Default::default()
            },
        ];
        assert_eq!(got, want);
        assert_eq!(parse_net_dev(""), vec![]);
    }

    #[test]
    fn eth0_is_the_default_interface() {
        let all = parse_net_dev(NET_DEV);
        for (interfaces, default, others) in [
            (
                vec![all[1].clone(), all[0].clone()],
                Some("eth0"),
                vec!["net1"],
            ),
            (vec![all[1].clone()], Some("net1"), vec![]),
            (vec![], None, vec![]),
        ] {
            let usage = network_usage(&interfaces, 5);
            assert_eq!(
                usage
                    .as_ref()
                    .and_then(|u| u.default_interface.as_ref())
                    .map(|i| i.name.as_str()),
                default
            );
            let names: Vec<&str> = usage
                .as_ref()
                .map(|u| u.interfaces.iter().map(|i| i.name.as_str()).collect())
                .unwrap_or_default();
            assert_eq!(names, others);
        }
        let usage = network_usage(&all, 5).unwrap();
        let eth0 = usage.default_interface.unwrap();
        assert_eq!(
            (
                usage.timestamp,
                eth0.rx_bytes.unwrap().value,
                eth0.tx_errors.unwrap().value
            ),
            (5, 9182, 3)
        );
    }

    #[test]
    fn working_set_is_usage_minus_inactive_file() {
        let mut m = Metrics::new();
        let memory = m.memory.mut_or_insert_default();
        memory.mut_usage().usage = 100;
        memory.total_inactive_file = 30;
        memory.total_rss = 50;
        m.mut_cpu().mut_usage().total = 7;
        let s = Sample::from_metrics(&m);
        assert_eq!((s.working_set, s.rss, s.cpu_usage_ns), (70, 50, 7));
    }
}
