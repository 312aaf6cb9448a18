//! The results of both daemons: percentiles, the table and the JSON.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::daemon::{StartTimes, StopTimes};
use super::procfs::Memory;
use super::Options;
use crate::measure::{percentile, ratio};

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50/p90/p99 of one series of runs, which keeps its order.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub runs: Vec<Duration>,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
}

impl Latency {
    pub fn of(runs: Vec<Duration>) -> Latency {
        let mut sorted = runs.clone();
        sorted.sort();
        Latency {
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            runs,
        }
    }

    /// The mean, in ms (what a per-phase breakdown of the same runs adds up to).
    pub fn mean_ms(&self) -> f64 {
        self.runs.iter().map(|d| ms(*d)).sum::<f64>() / self.runs.len().max(1) as f64
    }

    /// p50, p90, p99 in ms.
    pub(crate) fn ms(&self) -> [f64; 3] {
        [ms(self.p50), ms(self.p90), ms(self.p99)]
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "runs_ms": self.runs.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
        })
    }
}

/// Every timed call, one series each.
#[derive(Debug, Clone, Default)]
pub struct Phases {
    pub run_pod: Latency,
    pub create: Latency,
    pub start: Latency,
    pub total: Latency,
    pub stop: Latency,
    pub remove: Latency,
    pub teardown: Latency,
}

impl Phases {
    pub fn of(starts: &[StartTimes], stops: &[StopTimes]) -> Phases {
        let start = |f: fn(&StartTimes) -> Duration| Latency::of(starts.iter().map(f).collect());
        let stop = |f: fn(&StopTimes) -> Duration| Latency::of(stops.iter().map(f).collect());
        Phases {
            run_pod: start(|t| t.run_pod),
            create: start(|t| t.create),
            start: start(|t| t.start),
            total: start(|t| t.total),
            stop: stop(|t| t.stop),
            remove: stop(|t| t.remove),
            teardown: stop(|t| t.total),
        }
    }

    /// Each series by its JSON key.
    pub(crate) fn json(&self) -> Value {
        let mut latency = json!({});
        for (_, key, series) in self.rows() {
            latency[key] = series.json();
        }
        latency
    }

    /// (row name, JSON key, series), in table order.
    pub(crate) fn rows(&self) -> [(&'static str, &'static str, &Latency); 7] {
        [
            ("RunPodSandbox", "run_pod_sandbox", &self.run_pod),
            ("CreateContainer", "create_container", &self.create),
            ("StartContainer", "start_container", &self.start),
            ("total: run+create+start", "total", &self.total),
            ("StopPodSandbox", "stop_pod_sandbox", &self.stop),
            ("RemovePodSandbox", "remove_pod_sandbox", &self.remove),
            ("teardown: stop+remove", "teardown", &self.teardown),
        ]
    }
}

/// Memory of a daemon and of its pods' processes.
#[derive(Debug, Clone, Default)]
pub struct MemoryReport {
    /// The daemon after startup and image import, before any pod.
    pub daemon_idle: Memory,
    /// The daemon with `pods` pods, each with one running container.
    pub daemon_with_pods: Memory,
    /// The daemon after every run, with no pod left.
    pub daemon_after: Memory,
    pub pods: usize,
    /// Summed over the pods: each shim with its helper processes.
    pub shims: Memory,
    /// How many helper processes were counted in `shims`.
    pub helpers: usize,
    pub pauses: Memory,
    /// Cgroups below the daemon's cgroup parent (all hierarchies) while
    /// the pods run.
    pub cgroups_with_pods: Vec<PathBuf>,
    /// The same pods' bring-up, one after another (RunPodSandbox to StartContainer).
    pub pods_total: Latency,
    /// Those bring-up times in the order the pods came up.
    pub pods_in_order: Vec<Duration>,
    /// The daemon's CPU time over a window with the pods running and no
    /// calls, in % of one CPU (`--density`).
    pub idle_cpu: Option<f64>,
    /// ListContainerStats over the running pods (`--density`).
    pub stats_calls: Option<StatsCalls>,
}

/// ListContainerStats calls, one after another, over every container.
#[derive(Debug, Clone, Default)]
pub struct StatsCalls {
    /// Containers in each answer.
    pub containers: usize,
    pub latency: Latency,
    /// The host's busy CPU time per call (every process).
    pub host_cpu_per_call: Duration,
}

impl StatsCalls {
    fn json(&self) -> Value {
        json!({
            "containers": self.containers,
            "latency": self.latency.json(),
            "host_cpu_per_call_ms": ms(self.host_cpu_per_call),
        })
    }
}

/// Everything measured for one daemon.
#[derive(Debug, Clone, Default)]
pub struct Side {
    pub name: &'static str,
    pub binary: PathBuf,
    pub version: String,
    pub phases: Phases,
    pub memory: MemoryReport,
    /// How long the daemon took to exit after SIGTERM, and whether it had to
    /// be killed.
    pub exit: Duration,
    pub killed: bool,
    /// Left once its pods were removed and it stopped (then cleaned up by the bench).
    pub mounts_left: Vec<PathBuf>,
    pub processes_left: Vec<(u32, String)>,
    pub cgroups_left: Vec<PathBuf>,
    /// caissond's own per-phase times (`--phases`).
    pub breakdown: Option<super::breakdown::Breakdown>,
    /// One per `--burst-rounds` round.
    pub bursts: Vec<Burst>,
}

/// `--burst N`: N pods started at once.
#[derive(Debug, Clone, Default)]
pub struct Burst {
    pub pods: usize,
    /// Each pod's RunPodSandbox to StartContainer.
    pub per_pod: Latency,
    /// From the start until every pod was running.
    pub all_running: Duration,
    /// The host's busy CPU time meanwhile (every process: daemon, shims,
    /// runtimes, CNI plugins, the bench's client).
    pub host_cpu: Duration,
}

impl Burst {
    /// Each figure's median over `rounds` (the upper one of an even count).
    fn median(rounds: &[Burst]) -> Option<Burst> {
        fn mid<T: Ord + Copy>(mut v: Vec<T>) -> T {
            v.sort();
            v[v.len() / 2]
        }
        let first = rounds.first()?;
        Some(Burst {
            pods: first.pods,
            per_pod: Latency {
                p50: mid(rounds.iter().map(|b| b.per_pod.p50).collect()),
                p90: mid(rounds.iter().map(|b| b.per_pod.p90).collect()),
                p99: mid(rounds.iter().map(|b| b.per_pod.p99).collect()),
                // Each round's own are in its entry.
                runs: Vec::new(),
            },
            all_running: mid(rounds.iter().map(|b| b.all_running).collect()),
            host_cpu: mid(rounds.iter().map(|b| b.host_cpu).collect()),
        })
    }

    fn json(&self) -> Value {
        json!({
            "pods": self.pods,
            "per_pod": self.per_pod.json(),
            "all_running_ms": ms(self.all_running),
            "host_cpu_ms": ms(self.host_cpu),
        })
    }
}

fn memory_rows(m: &MemoryReport) -> [(&'static str, &'static str, Memory); 9] {
    let per_pod = (m.shims + m.pauses).per(m.pods);
    [
        ("daemon idle", "daemon_idle", m.daemon_idle),
        (
            "daemon with the pods",
            "daemon_with_pods",
            m.daemon_with_pods,
        ),
        ("daemon after all runs", "daemon_after_runs", m.daemon_after),
        ("shims (+ helpers), sum", "shims_sum", m.shims),
        ("pauses, sum", "pauses_sum", m.pauses),
        (
            "shims + pauses, sum",
            "pod_processes_sum",
            m.shims + m.pauses,
        ),
        ("shim, per pod", "shim_per_pod", m.shims.per(m.pods)),
        ("pause, per pod", "pause_per_pod", m.pauses.per(m.pods)),
        ("shim + pause, per pod", "pod_processes_per_pod", per_pod),
    ]
}

pub fn print(opts: &Options, sides: &[Side]) {
    let [caisson, containerd] = sides else {
        return;
    };
    println!();
    println!(
        "cri: {} runs of a {} with one busybox `sleep 3600`, after one warm-up, \
         alternating daemons; memory with {} such pods",
        opts.runs,
        if opts.cni {
            "pod on a CNI bridge (the same conflist on both)"
        } else {
            "host-network pod"
        },
        opts.pods
    );
    for side in sides {
        println!(
            "  {:<11} {} ({})",
            format!("{}:", side.name),
            side.binary.display(),
            side.version
        );
    }
    println!();
    println!(
        "  {:<24} {:>26}  {:>26}  {:>20}",
        "latency, ms", "caisson", "containerd", "caisson/containerd"
    );
    println!(
        "  {:<24} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8}  {:>6} {:>6} {:>6}",
        "", "p50", "p90", "p99", "p50", "p90", "p99", "p50", "p90", "p99"
    );
    for ((name, _, a), (_, _, b)) in caisson.phases.rows().iter().zip(containerd.phases.rows()) {
        let (a, b) = (a.ms(), b.ms());
        println!(
            "  {:<24} {:>8.1} {:>8.1} {:>8.1}  {:>8.1} {:>8.1} {:>8.1}  {:>6.2} {:>6.2} {:>6.2}",
            name,
            a[0],
            a[1],
            a[2],
            b[0],
            b[1],
            b[2],
            ratio(a[0], b[0]),
            ratio(a[1], b[1]),
            ratio(a[2], b[2]),
        );
    }
    if let Some(b) = &caisson.breakdown {
        let p = &caisson.phases;
        b.print(&[
            ("RunPodSandbox", p.run_pod.mean_ms()),
            ("CreateContainer", p.create.mean_ms()),
            ("StartContainer", p.start.mean_ms()),
        ]);
    }
    println!();
    println!(
        "  {:<24} {:>17}  {:>17}  {:>17}",
        "memory, KiB", "caisson", "containerd", "caisson/containerd"
    );
    println!(
        "  {:<24} {:>8} {:>8}  {:>8} {:>8}  {:>8} {:>8}",
        format!("({} pods)", opts.pods),
        "VmRSS",
        "Pss",
        "VmRSS",
        "Pss",
        "VmRSS",
        "Pss"
    );
    for ((name, _, a), (_, _, b)) in memory_rows(&caisson.memory)
        .iter()
        .zip(memory_rows(&containerd.memory))
    {
        println!(
            "  {:<24} {:>8} {:>8}  {:>8} {:>8}  {:>8.2} {:>8.2}",
            name,
            a.rss,
            a.pss,
            b.rss,
            b.pss,
            ratio(a.rss as f64, b.rss as f64),
            ratio(a.pss as f64, b.pss as f64),
        );
    }
    if let (Some(a), Some(b)) = (caisson.memory.idle_cpu, containerd.memory.idle_cpu) {
        println!(
            "  {:<24} {:>17.2}  {:>17.2}  {:>17.2}",
            "daemon CPU idle, %",
            a,
            b,
            ratio(a, b)
        );
    }
    if let (Some(a), Some(b)) = (&caisson.memory.stats_calls, &containerd.memory.stats_calls) {
        println!();
        println!(
            "  ListContainerStats of {} / {} containers  {:>10} {:>10} {:>8}",
            a.containers, b.containers, "caisson", "containerd", "ratio"
        );
        for (what, x, y) in [
            ("latency p50, ms", ms(a.latency.p50), ms(b.latency.p50)),
            ("latency p90, ms", ms(a.latency.p90), ms(b.latency.p90)),
            (
                "host CPU per call, ms",
                ms(a.host_cpu_per_call),
                ms(b.host_cpu_per_call),
            ),
        ] {
            println!("  {what:<30} {x:>10.1} {y:>10.1} {:>8.2}", ratio(x, y));
        }
    }
    if let (Some(a), Some(b)) = (
        Burst::median(&caisson.bursts),
        Burst::median(&containerd.bursts),
    ) {
        let (a, b) = (&a, &b);
        let rounds = caisson.bursts.len().min(containerd.bursts.len());
        println!();
        println!(
            "  {:<30} {:>10} {:>10} {:>8}",
            if rounds > 1 {
                format!("burst of {} pods at once, ms, median of {rounds}", a.pods)
            } else {
                format!("burst of {} pods at once, ms", a.pods)
            },
            "caisson",
            "containerd",
            "ratio"
        );
        for (name, x, y) in [
            ("all running", ms(a.all_running), ms(b.all_running)),
            ("per pod p50", ms(a.per_pod.p50), ms(b.per_pod.p50)),
            ("per pod p99", ms(a.per_pod.p99), ms(b.per_pod.p99)),
            (
                "host CPU per pod",
                ms(a.host_cpu) / a.pods.max(1) as f64,
                ms(b.host_cpu) / b.pods.max(1) as f64,
            ),
        ] {
            println!("  {name:<30} {x:>10.1} {y:>10.1} {:>8.2}", ratio(x, y));
        }
        if rounds > 1 {
            let each: Vec<String> = caisson
                .bursts
                .iter()
                .zip(&containerd.bursts)
                .map(|(x, y)| format!("{:.2}", ratio(ms(x.all_running), ms(y.all_running))))
                .collect();
            println!("  all running, each round's ratio: {}", each.join(" "));
        }
    }
    println!();
    for side in sides {
        let p = side.memory.pods_total.ms();
        println!(
            "  {}: {} pods brought up one after another, p50/p90/p99 {:.1}/{:.1}/{:.1} ms; \
             exit after SIGTERM {:.0} ms{}",
            side.name,
            side.memory.pods,
            p[0],
            p[1],
            p[2],
            ms(side.exit),
            if side.killed { " (killed)" } else { "" }
        );
        if let Some((k, first, last)) = first_and_last(&side.memory.pods_in_order) {
            println!(
                "    the first {k} pods' median {first:.1} ms, the last {k}'s {last:.1} ms \
                 (what the pods already running add to a pod's start)"
            );
        }
        println!(
            "    {} cgroups below its cgroup parent (all hierarchies) while the {} pods ran; \
             {} shim helper processes counted with the shims",
            side.memory.cgroups_with_pods.len(),
            side.memory.pods,
            side.memory.helpers
        );
        println!(
            "    left after its pods were removed and it stopped: {} mounts, {} processes, {} cgroups",
            side.mounts_left.len(),
            side.processes_left.len(),
            side.cgroups_left.len()
        );
        for (pid, argv) in &side.processes_left {
            println!("      process {pid}: {argv}");
        }
        for path in side.mounts_left.iter().chain(&side.cgroups_left) {
            println!("      {}", path.display());
        }
    }
}

/// The CPUs and kernel the figures come from.
pub(crate) fn machine() -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

pub fn to_json(opts: &Options, sides: &[Side], config: &Value) -> Value {
    let side_json = |s: &Side| {
        let mut memory = json!({"pods": s.memory.pods, "shim_helpers": s.memory.helpers});
        for (_, key, m) in memory_rows(&s.memory) {
            memory[key] = m.json();
        }
        json!({
            "binary": s.binary.display().to_string(),
            "version": s.version,
            "latency": s.phases.json(),
            "memory_kib": memory,
            "pods_bring_up": s.memory.pods_total.json(),
            "pods_bring_up_in_order_ms": s.memory.pods_in_order.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "cgroups_while_pods_ran": s.memory.cgroups_with_pods.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "phases": s.breakdown.as_ref().map(|b| b.json()),
            "burst": Burst::median(&s.bursts).as_ref().map(Burst::json),
            "bursts": s.bursts.iter().map(Burst::json).collect::<Vec<_>>(),
            "daemon_idle_cpu_percent_with_pods": s.memory.idle_cpu,
            "list_container_stats": s.memory.stats_calls.as_ref().map(StatsCalls::json),
            "exit_after_sigterm_ms": ms(s.exit),
            "killed": s.killed,
            "left_after_teardown": {
                "mounts": s.mounts_left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "processes": s.processes_left.iter().map(|(pid, argv)| format!("{pid} {argv}")).collect::<Vec<_>>(),
                "cgroups": s.cgroups_left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            },
        })
    };
    let mut out = json!({
        "benchmark": "cri",
        "machine": machine(),
        "options": {"runs": opts.runs, "warmup_runs": 1, "pods": opts.pods, "cni": opts.cni},
        "percentiles": "nearest rank",
        "config": config,
    });
    for s in sides {
        out[s.name] = side_json(s);
    }
    if let [c, d] = sides {
        let mut latency = json!({});
        for ((_, key, a), (_, _, b)) in c.phases.rows().iter().zip(d.phases.rows()) {
            let (a, b) = (a.ms(), b.ms());
            latency[key] = json!({
                "p50": ratio(a[0], b[0]),
                "p90": ratio(a[1], b[1]),
                "p99": ratio(a[2], b[2]),
            });
        }
        let mut memory = json!({});
        for ((_, key, a), (_, _, b)) in memory_rows(&c.memory).iter().zip(memory_rows(&d.memory)) {
            memory[key] = json!({
                "vm_rss": ratio(a.rss as f64, b.rss as f64),
                "pss": ratio(a.pss as f64, b.pss as f64),
            });
        }
        out["ratio_caisson_over_containerd"] = json!({"latency": latency, "memory": memory});
    }
    out
}

/// The median bring-up of the first and of the last `k` pods of a series
/// (`k` a quarter of it, at most 10), in ms; `None` under 8 pods.
fn first_and_last(in_order: &[Duration]) -> Option<(usize, f64, f64)> {
    if in_order.len() < 8 {
        return None;
    }
    let k = (in_order.len() / 4).min(10);
    let median = |part: &[Duration]| ms(crate::measure::median(part.to_vec()));
    Some((
        k,
        median(&in_order[..k]),
        median(&in_order[in_order.len() - k..]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_pods_of_a_series() {
        let durations = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(first_and_last(&durations(&[1, 2, 3, 4, 5, 6, 7])), None);
        // 8 pods: the first and last two.
        assert_eq!(
            first_and_last(&durations(&[30, 32, 90, 90, 90, 90, 50, 60])),
            Some((2, 31.0, 55.0))
        );
        // 80 pods: ten at each end.
        let mut series = vec![35; 10];
        series.extend(vec![45; 60]);
        series.extend(vec![60; 10]);
        assert_eq!(first_and_last(&durations(&series)), Some((10, 35.0, 60.0)));
    }

    #[test]
    fn bursts_summarise_as_each_figures_median() {
        let b = |all: u64, p50: u64, cpu: u64| Burst {
            pods: 50,
            per_pod: Latency::of(vec![Duration::from_millis(p50)]),
            all_running: Duration::from_millis(all),
            host_cpu: Duration::from_millis(cpu),
        };
        assert!(Burst::median(&[]).is_none());
        let m = Burst::median(&[b(300, 10, 7), b(100, 30, 9), b(200, 20, 8)]).unwrap();
        assert_eq!(m.all_running, Duration::from_millis(200));
        assert_eq!(m.per_pod.p50, Duration::from_millis(20));
        assert_eq!(m.host_cpu, Duration::from_millis(8));
        assert_eq!(m.pods, 50);
    }

    #[test]
    fn phases_keep_run_order() {
        let t = |a: u64, b: u64, c: u64| StartTimes {
            run_pod: Duration::from_millis(a),
            create: Duration::from_millis(b),
            start: Duration::from_millis(c),
            total: Duration::from_millis(a + b + c),
        };
        let phases = Phases::of(&[t(5, 1, 1), t(1, 1, 1), t(3, 1, 1)], &[]);
        assert_eq!(phases.run_pod.p50, Duration::from_millis(3));
        assert_eq!(phases.total.p99, Duration::from_millis(7));
        assert_eq!(phases.run_pod.runs[0], Duration::from_millis(5));
        assert_eq!(phases.stop.p50, Duration::ZERO);
    }
}
