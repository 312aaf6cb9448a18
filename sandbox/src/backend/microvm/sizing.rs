//! How big a pod's VM is: the handler's own figures for the guest (its
//! kernel, agent and page cache) plus the pod's limits, which kubelet sends
//! in `LinuxPodSandboxConfig.resources` and caissond (like containerd)
//! passes on as the sandbox spec's `io.kubernetes.cri.sandbox-*`
//! annotations. Kata sizes its VMs the same way (a default plus the pod's
//! limits); unlike Kata, nothing is hot-plugged: the VM is made at its
//! final size, since a TCG or KVM guest only uses the memory it touches.

use std::collections::HashMap;

use super::MicrovmOptions;

use crate::service::{
    SANDBOX_CPU_PERIOD_ANNOTATION as SANDBOX_CPU_PERIOD,
    SANDBOX_CPU_QUOTA_ANNOTATION as SANDBOX_CPU_QUOTA, SANDBOX_MEMORY_ANNOTATION as SANDBOX_MEMORY,
};

const MIB: u64 = 1024 * 1024;

/// A VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// The VM for a pod with these annotations: vCPUs from the CPU limit,
/// rounded up, never fewer than the handler's `vcpus` nor more than the
/// host has; memory the handler's `memory_mib` (the guest's own need) plus
/// the pod's memory limit. A pod without limits gets the handler's figures.
pub fn vm_size(options: &MicrovmOptions, annotations: Option<&HashMap<String, String>>) -> VmSize {
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    size(options, annotations, host_cpus)
}

fn size(
    options: &MicrovmOptions,
    annotations: Option<&HashMap<String, String>>,
    host_cpus: u32,
) -> VmSize {
    let number = |key: &str| -> Option<u64> {
        annotations?
            .get(key)?
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| n as u64)
    };
    let limit_cpus = match (number(SANDBOX_CPU_QUOTA), number(SANDBOX_CPU_PERIOD)) {
        (Some(quota), Some(period)) => quota.div_ceil(period).min(u32::MAX.into()) as u32,
        _ => 0,
    };
    let vcpus = options
        .vcpus
        .max(limit_cpus)
        .min(host_cpus.max(options.vcpus));
    let limit_mib = number(SANDBOX_MEMORY).map_or(0, |b| b.div_ceil(MIB));
    let memory_mib = (u64::from(options.memory_mib) + limit_mib).min(u32::MAX.into()) as u32;
    VmSize { vcpus, memory_mib }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_is_the_guests_own_need_plus_the_pods_limits() {
        let options = MicrovmOptions {
            vcpus: 1,
            memory_mib: 256,
            ..MicrovmOptions::default()
        };
        type Case<'a> = (&'a [(&'a str, &'a str)], u32, u32);
        let cases: &[Case] = &[
            (&[], 1, 256),
            // 1.5 CPUs → 2 vCPUs; 512 MiB + 256.
            (
                &[
                    (SANDBOX_CPU_QUOTA, "150000"),
                    (SANDBOX_CPU_PERIOD, "100000"),
                    (SANDBOX_MEMORY, "536870912"),
                ],
                2,
                768,
            ),
            // More CPUs than the host has: the host's.
            (
                &[
                    (SANDBOX_CPU_QUOTA, "800000"),
                    (SANDBOX_CPU_PERIOD, "100000"),
                ],
                4,
                256,
            ),
            // A partial MiB rounds up; no limit (-1, 0, garbage) adds nothing.
            (&[(SANDBOX_MEMORY, "1048577")], 1, 258),
            (
                &[
                    (SANDBOX_CPU_QUOTA, "-1"),
                    (SANDBOX_CPU_PERIOD, "100000"),
                    (SANDBOX_MEMORY, "0"),
                ],
                1,
                256,
            ),
            (&[(SANDBOX_MEMORY, "lots")], 1, 256),
        ];
        for (annotations, vcpus, memory_mib) in cases {
            let map: HashMap<String, String> = annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(
                size(&options, Some(&map), 4),
                VmSize {
                    vcpus: *vcpus,
                    memory_mib: *memory_mib
                },
                "{annotations:?}"
            );
        }
    }
}
