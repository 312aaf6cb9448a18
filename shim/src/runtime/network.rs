//! A pod's network: a pinned network namespace and CNI ADD before the pause
//! starts; CNI DEL on StopPodSandbox, retried by RemovePodSandbox (from the
//! record, so it works after a restart and a config change).

use caisson_proto::cri;
use serde_json::{json, Map, Value};

use super::pod::RUN;
use super::Runtime;
use crate::metrics_http::phase;
use crate::network::{cni, netns};
use crate::status::{CriError, CriResult};
use crate::store::PodRecord;

impl Runtime {
    /// For a pod that is not hostNetwork: pins its netns (lo up), recorded
    /// in `pod` first so that `teardown_pod` undoes a failure.
    pub(super) async fn pin_pod_netns(&self, pod: &mut PodRecord) -> CriResult<()> {
        if pod.host_network {
            return Ok(());
        }
        let path = self.config.netns_dir().join(&pod.id);
        // Recorded before it is pinned: a caissond killed in between leaves
        // a record whose teardown removes the pin (found by the chaos run).
        pod.netns = Some(path.clone());
        {
            let _p = phase(RUN, "record");
            self.save_pod(pod.clone())?;
        }
        let phase_netns = phase(RUN, "netns");
        tokio::task::spawn_blocking(move || netns::create(&path))
            .await
            .map_err(|e| CriError::internal("creating the pod's netns", e))?
            .map_err(|e| CriError::Internal(e.to_string()))?;
        drop(phase_netns);
        Ok(())
    }

    /// CNI ADD into the netns [`Runtime::pin_pod_netns`] pinned. Each
    /// resource is recorded in `pod` as soon as it exists, so
    /// [`Runtime::release_pod_network`] and `teardown_pod` undo a failure.
    /// Without a loadable CNI config the pod keeps a netns with only lo
    /// (NetworkReady is false meanwhile, so kubelet schedules no pods).
    pub(super) async fn add_pod_network(
        &self,
        pod: &mut PodRecord,
        config: &cri::PodSandboxConfig,
    ) -> CriResult<()> {
        if pod.host_network {
            return Ok(());
        }
        let list = match cni::load(&self.config.network.cni_conf_dir) {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(pod_id = %pod.id, error = %e, "no CNI network: the pod gets loopback only");
                pod.network_released = true;
                return Ok(());
            }
        };
        tracing::debug!(pod_id = %pod.id, network = list.name(), config = %list.path.display(), "CNI ADD");
        pod.cni_config = Some(list.config.to_string());
        // DEL runs from the record: it must name the network before ADD.
        {
            let _p = phase(RUN, "record");
            self.save_pod(pod.clone())?;
        }
        let att = self.attachment(pod, config);
        let bin_dirs = self.config.network.cni_bin_dirs.clone();
        let conf = list.config.clone();
        let result = tokio::task::spawn_blocking(move || cni::add(&conf, &bin_dirs, &att))
            .await
            .map_err(|e| CriError::internal("running CNI ADD", e))?
            .map_err(|e| CriError::Internal(format!("setting up the pod network: {e}")))?;
        pod.ips = cni::result_ips(&result);
        pod.cni_result = Some(result.to_string());
        tracing::info!(pod_id = %pod.id, network = list.name(), ips = ?pod.ips, "pod network ready");
        Ok(())
    }

    /// CNI DEL with the network list and result recorded at ADD. Idempotent:
    /// nothing to do once it has succeeded (the caller records that).
    pub(super) async fn release_pod_network(&self, pod: &PodRecord) -> CriResult<()> {
        if pod.network_released {
            return Ok(());
        }
        let Some(conf) = pod.cni_config.as_deref() else {
            return Ok(());
        };
        let conf: Value = serde_json::from_str(conf)
            .map_err(|e| CriError::internal("decoding the pod's CNI config", e))?;
        let result: Option<Value> = pod
            .cni_result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        let config: cri::PodSandboxConfig = crate::store::decode(&pod.config).unwrap_or_default();
        let mut att = self.attachment(pod, &config);
        if !pod.netns.as_ref().is_some_and(|p| p.exists()) {
            att.netns.clear();
        }
        let bin_dirs = self.config.network.cni_bin_dirs.clone();
        tokio::task::spawn_blocking(move || cni::del(&conf, &bin_dirs, &att, result.as_ref()))
            .await
            .map_err(|e| CriError::internal("running CNI DEL", e))?
            .map_err(|e| CriError::Internal(format!("tearing down the pod network: {e}")))?;
        tracing::info!(pod_id = %pod.id, "pod network released");
        Ok(())
    }

    /// DEL (errors logged) and the netns removed: for teardown.
    pub(super) async fn remove_pod_network(&self, pod: &PodRecord) {
        if let Err(e) = self.release_pod_network(pod).await {
            tracing::warn!(pod_id = %pod.id, error = %e, "CNI DEL failed while removing the pod");
        }
        if let Some(path) = &pod.netns {
            netns::remove(path);
        }
    }

    fn attachment(&self, pod: &PodRecord, config: &cri::PodSandboxConfig) -> cni::Attachment {
        let pod_cidr = self
            .pod_cidr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        cni::Attachment {
            container_id: pod.id.clone(),
            netns: pod
                .netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
                ("K8S_POD_NAME".into(), pod.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), pod.id.clone()),
                ("K8S_POD_UID".into(), pod.uid.clone()),
            ],
            capabilities: capability_args(config, &pod_cidr),
            // `pin_pod_netns` made it with `lo` up; `remove_pod_network` removes it.
            loopback_up: pod.netns.is_some(),
        }
    }
}

/// The CNI capability args a pod brings: `portMappings`, `dns`,
/// `ipRanges` (the node's pod CIDR) and `bandwidth` (the pod's
/// `kubernetes.io/{ingress,egress}-bandwidth` annotations).
pub fn capability_args(config: &cri::PodSandboxConfig, pod_cidr: &str) -> Map<String, Value> {
    let mut caps = Map::new();
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            let mut m = json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": protocol});
            if !p.host_ip.is_empty() {
                m["hostIP"] = json!(p.host_ip);
            }
            m
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(dns) = &config.dns_config {
        caps.insert(
            "dns".into(),
            json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
        );
    }
    if !pod_cidr.is_empty() {
        let ranges: Vec<Value> = pod_cidr
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| json!([{"subnet": c}]))
            .collect();
        caps.insert("ipRanges".into(), Value::Array(ranges));
    }
    let mut bandwidth = Map::new();
    for (annotation, rate, burst) in [
        (
            "kubernetes.io/ingress-bandwidth",
            "ingressRate",
            "ingressBurst",
        ),
        (
            "kubernetes.io/egress-bandwidth",
            "egressRate",
            "egressBurst",
        ),
    ] {
        if let Some(bits) = config
            .annotations
            .get(annotation)
            .and_then(|q| bits_per_second(q))
        {
            bandwidth.insert(rate.into(), json!(bits));
            // As kubelet's dockershim did: an effectively unlimited burst.
            bandwidth.insert(burst.into(), json!(i32::MAX));
        }
    }
    if !bandwidth.is_empty() {
        caps.insert("bandwidth".into(), Value::Object(bandwidth));
    }
    caps
}

/// A Kubernetes quantity (`10M`, `1Gi`, `500k`) as bits per second.
fn bits_per_second(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, suffix) = q.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_per_second_parses_quantities() {
        for (q, want) in [
            ("10M", Some(10_000_000)),
            ("1Ki", Some(1024)),
            ("5", Some(5)),
            ("x", None),
            ("1Q", None),
        ] {
            assert_eq!(bits_per_second(q), want, "{q}");
        }
    }

    #[test]
    fn capability_args_from_the_pod_config() {
        let config = cri::PodSandboxConfig {
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                cri::PortMapping {
                    protocol: 0,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            annotations: [(
                "kubernetes.io/ingress-bandwidth".to_string(),
                "1M".to_string(),
            )]
            .into(),
            ..Default::default()
        };
        let caps = capability_args(&config, "10.9.0.0/24");
        assert_eq!(
            caps["portMappings"],
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}])
        );
        assert_eq!(caps["ipRanges"], json!([[{"subnet": "10.9.0.0/24"}]]));
        assert_eq!(caps["bandwidth"]["ingressRate"], json!(1_000_000));
        assert!(!caps.contains_key("dns"));
        assert!(capability_args(&cri::PodSandboxConfig::default(), "").is_empty());
    }
}
