//! Task stats in the form containerd's `Stats` answers carry them:
//! `io.containerd.cgroups.v1.Metrics` (what `ctr task metrics` and
//! containerd's CRI decode).

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat,
};

use crate::backend::TaskStats;

pub fn to_cgroup_v1_metrics(s: &TaskStats) -> Metrics {
    let inactive_file = s
        .memory_usage_bytes
        .saturating_sub(s.memory_working_set_bytes);
    Metrics {
        pids: Some(PidsStat {
            current: s.pids_current,
            limit: s.pids_limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(CPUStat {
            usage: Some(CPUUsage {
                total: s.cpu_usage_ns,
                user: s.cpu_user_ns,
                kernel: s.cpu_system_ns,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStat {
            rss: s.memory_rss_bytes,
            total_rss: s.memory_rss_bytes,
            cache: s.memory_cache_bytes,
            total_cache: s.memory_cache_bytes,
            pg_fault: s.page_faults,
            total_pg_fault: s.page_faults,
            pg_maj_fault: s.major_page_faults,
            total_pg_maj_fault: s.major_page_faults,
            inactive_file,
            total_inactive_file: inactive_file,
            usage: Some(MemoryEntry {
                usage: s.memory_usage_bytes,
                limit: s.memory_limit_bytes,
                failcnt: s.memory_failcnt,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory_oom_control: Some(MemoryOomControl {
            oom_kill: s.oom_events,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_becomes_usage_minus_inactive_file() {
        let m = to_cgroup_v1_metrics(&TaskStats {
            memory_usage_bytes: 100,
            memory_working_set_bytes: 60,
            cpu_usage_ns: 7,
            ..Default::default()
        });
        assert_eq!(m.memory.total_inactive_file, 40);
        assert_eq!(m.memory.usage.usage, 100);
        assert_eq!(m.cpu.usage.total, 7);
    }
}
