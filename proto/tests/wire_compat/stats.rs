//! Stats messages: container and pod sandbox usage, filesystems.

use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, CpuUsage, FilesystemIdentifier, FilesystemUsage,
    ImageFsInfoResponse, LinuxPodSandboxStats, ListContainerStatsResponse, MemoryUsage,
    NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes, PodSandboxStats,
    PodSandboxStatsResponse, ProcessUsage, SwapUsage, WindowsContainerStats, WindowsCpuUsage,
    WindowsFilesystemUsage, WindowsMemoryUsage, WindowsNetworkInterfaceUsage, WindowsNetworkUsage,
    WindowsPodSandboxStats, WindowsProcessUsage,
};

use super::container::container_metadata;
use super::pod::pod_sandbox_metadata;
use super::values::Distinct;

fn container_attributes(v: &mut Distinct) -> Option<ContainerAttributes> {
    Some(ContainerAttributes {
        id: v.text("container-id"),
        metadata: container_metadata(v),
        labels: v.map("label"),
        annotations: v.map("annotation"),
    })
}

fn cpu_usage(v: &mut Distinct) -> Option<CpuUsage> {
    Some(CpuUsage {
        timestamp: v.timestamp(),
        usage_core_nano_seconds: v.u64_value(),
        usage_nano_cores: v.u64_value(),
    })
}

fn memory_usage(v: &mut Distinct) -> Option<MemoryUsage> {
    Some(MemoryUsage {
        timestamp: v.timestamp(),
        working_set_bytes: v.u64_value(),
        available_bytes: v.u64_value(),
        usage_bytes: v.u64_value(),
        rss_bytes: v.u64_value(),
        page_faults: v.u64_value(),
        major_page_faults: v.u64_value(),
    })
}

fn filesystem_usage(v: &mut Distinct) -> FilesystemUsage {
    FilesystemUsage {
        timestamp: v.timestamp(),
        fs_id: Some(FilesystemIdentifier {
            mountpoint: v.text("/var/lib/caisson"),
        }),
        used_bytes: v.u64_value(),
        inodes_used: v.u64_value(),
    }
}

pub fn container_stats(v: &mut Distinct) -> ContainerStats {
    ContainerStats {
        attributes: container_attributes(v),
        cpu: cpu_usage(v),
        memory: memory_usage(v),
        writable_layer: Some(filesystem_usage(v)),
        swap: Some(SwapUsage {
            timestamp: v.timestamp(),
            swap_available_bytes: v.u64_value(),
            swap_usage_bytes: v.u64_value(),
        }),
    }
}

pub fn list_container_stats_response(v: &mut Distinct) -> ListContainerStatsResponse {
    ListContainerStatsResponse {
        stats: vec![container_stats(v), container_stats(v)],
    }
}

fn network_interface_usage(v: &mut Distinct) -> NetworkInterfaceUsage {
    NetworkInterfaceUsage {
        name: v.text("eth"),
        rx_bytes: v.u64_value(),
        rx_errors: v.u64_value(),
        tx_bytes: v.u64_value(),
        tx_errors: v.u64_value(),
    }
}

fn windows_network_interface_usage(v: &mut Distinct) -> WindowsNetworkInterfaceUsage {
    WindowsNetworkInterfaceUsage {
        name: v.text("Ethernet"),
        rx_bytes: v.u64_value(),
        rx_packets_dropped: v.u64_value(),
        tx_bytes: v.u64_value(),
        tx_packets_dropped: v.u64_value(),
    }
}

fn windows_container_stats(v: &mut Distinct) -> WindowsContainerStats {
    WindowsContainerStats {
        attributes: container_attributes(v),
        cpu: windows_cpu_usage(v),
        memory: windows_memory_usage(v),
        writable_layer: Some(WindowsFilesystemUsage {
            timestamp: v.timestamp(),
            fs_id: Some(FilesystemIdentifier {
                mountpoint: v.text("C:\\layers"),
            }),
            used_bytes: v.u64_value(),
        }),
    }
}

fn windows_cpu_usage(v: &mut Distinct) -> Option<WindowsCpuUsage> {
    Some(WindowsCpuUsage {
        timestamp: v.timestamp(),
        usage_core_nano_seconds: v.u64_value(),
        usage_nano_cores: v.u64_value(),
    })
}

fn windows_memory_usage(v: &mut Distinct) -> Option<WindowsMemoryUsage> {
    Some(WindowsMemoryUsage {
        timestamp: v.timestamp(),
        working_set_bytes: v.u64_value(),
        available_bytes: v.u64_value(),
        page_faults: v.u64_value(),
        commit_memory_bytes: v.u64_value(),
    })
}

pub fn pod_sandbox_stats_response(v: &mut Distinct) -> PodSandboxStatsResponse {
    PodSandboxStatsResponse {
        stats: Some(PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: v.text("pod-sandbox-id"),
                metadata: pod_sandbox_metadata(v),
                labels: v.map("label"),
                annotations: v.map("annotation"),
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu: cpu_usage(v),
                memory: memory_usage(v),
                network: Some(NetworkUsage {
                    timestamp: v.timestamp(),
                    default_interface: Some(network_interface_usage(v)),
                    interfaces: vec![network_interface_usage(v), network_interface_usage(v)],
                }),
                process: Some(ProcessUsage {
                    timestamp: v.timestamp(),
                    process_count: v.u64_value(),
                }),
                containers: vec![container_stats(v)],
            }),
            windows: Some(WindowsPodSandboxStats {
                cpu: windows_cpu_usage(v),
                memory: windows_memory_usage(v),
                network: Some(WindowsNetworkUsage {
                    timestamp: v.timestamp(),
                    default_interface: Some(windows_network_interface_usage(v)),
                    interfaces: vec![windows_network_interface_usage(v)],
                }),
                process: Some(WindowsProcessUsage {
                    timestamp: v.timestamp(),
                    process_count: v.u64_value(),
                }),
                containers: vec![windows_container_stats(v)],
            }),
        }),
    }
}

pub fn image_fs_info_response(v: &mut Distinct) -> ImageFsInfoResponse {
    ImageFsInfoResponse {
        image_filesystems: vec![filesystem_usage(v), filesystem_usage(v)],
        container_filesystems: vec![filesystem_usage(v)],
    }
}
