//! The results of `streaming` on both daemons: percentiles, medians,
//! the table and the JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::session::Forward;
use super::Options;
use crate::cri::report::Latency;
use crate::cri::Leftovers;
use crate::measure::{mb_per_s, percentile, ratio};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One timed exec round trip (and the ExecSync after it).
#[derive(Debug, Clone, Default)]
pub struct ExecRun {
    /// The CRI Exec call, up to its URL.
    pub cri_call: Duration,
    /// Connect, upgrade, streams, up to the Status.
    pub session: Duration,
    /// From before Exec to the Status.
    pub total: Duration,
    pub exec_sync: Duration,
    /// The Exec URL's form (its token hidden).
    pub url: String,
}

/// One timed run of forwards of the file.
#[derive(Debug, Clone, Default)]
pub struct ForwardRun {
    /// The GET over plain TCP from the host.
    pub direct: Duration,
    /// The CRI PortForward call of the first forward.
    pub cri_call: Duration,
    /// As client-go: no WINDOW_UPDATE.
    pub plain: Forward,
    /// The daemon's CPU time during `plain` (10 ms ticks).
    pub plain_cpu: Duration,
    /// Granting SPDY/3.1 windows after every data frame.
    pub windowed: Forward,
    pub windowed_cpu: Duration,
}

/// Everything measured on one daemon.
#[derive(Debug, Default)]
pub struct Side {
    pub name: &'static str,
    pub binary: PathBuf,
    pub version: String,
    pub url: String,
    pub execs: Vec<ExecRun>,
    pub forwards: Vec<ForwardRun>,
    pub pods_removed: usize,
    /// How long it took to exit after SIGTERM; whether it was killed.
    pub exit: Duration,
    pub killed: bool,
}

/// The QoS-level cgroups caissond makes below its parent and keeps, as
/// kubelet keeps `kubepods/besteffort` and `kubepods/burstable`.
const QOS_LEVELS: [&str; 3] = ["besteffort", "burstable", "guaranteed"];

fn is_qos_level(cgroup: &Path) -> bool {
    let parent_is_the_bench_s = cgroup
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name.to_string_lossy().starts_with("caisson-bench-"));
    let name = cgroup.file_name().map(|n| n.to_string_lossy().into_owned());
    parent_is_the_bench_s && name.is_some_and(|n| QOS_LEVELS.contains(&n.as_str()))
}

/// What a daemon left that it should not have: its processes, mounts and
/// cgroups but the QoS levels.
pub fn leaked(left: &Leftovers) -> Leftovers {
    Leftovers {
        processes: left.processes.clone(),
        mounts: left.mounts.clone(),
        cgroups: left
            .cgroups
            .iter()
            .filter(|c| !is_qos_level(c))
            .cloned()
            .collect(),
    }
}

/// Exec rows: (name, JSON key, what of a run).
type ExecRow = (&'static str, &'static str, fn(&ExecRun) -> Duration);
const EXEC_ROWS: [ExecRow; 4] = [
    ("CRI Exec (→ URL)", "cri_exec", |r| r.cri_call),
    ("SPDY session (→ Status)", "spdy_session", |r| r.session),
    ("exec round trip", "round_trip", |r| r.total),
    ("ExecSync `true`", "exec_sync", |r| r.exec_sync),
];

/// Transfer rows: (name, JSON key, time of the body of a run).
type TransferRow = (&'static str, &'static str, fn(&ForwardRun) -> Duration);
const TRANSFER_ROWS: [TransferRow; 3] = [
    ("port-forward, as client-go", "port_forward", |r| {
        r.plain.transfer
    }),
    (
        "  with WINDOW_UPDATEs",
        "port_forward_window_updates",
        |r| r.windowed.transfer,
    ),
    ("direct TCP (reference)", "direct_tcp", |r| r.direct),
];

/// Forward setup rows, ms.
const SETUP_ROWS: [TransferRow; 2] = [
    ("CRI PortForward (→ URL)", "cri_port_forward", |r| {
        r.cri_call
    }),
    ("upgrade + stream pair", "stream_pair", |r| r.plain.setup),
];

/// The median of some durations.
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    percentile(&values, 50.0)
}

fn exec_latency(side: &Side, of: fn(&ExecRun) -> Duration) -> Latency {
    Latency::of(side.execs.iter().map(of).collect())
}

/// (median MB/s, slowest run's MB/s, fastest run's MB/s).
fn throughput(side: &Side, size: u64, of: fn(&ForwardRun) -> Duration) -> [f64; 3] {
    let times: Vec<Duration> = side.forwards.iter().map(of).collect();
    let slowest = times.iter().max().copied().unwrap_or_default();
    let fastest = times.iter().min().copied().unwrap_or_default();
    [
        mb_per_s(size, median(times)),
        mb_per_s(size, slowest),
        mb_per_s(size, fastest),
    ]
}

fn cpu_median(side: &Side, of: fn(&ForwardRun) -> Duration) -> Duration {
    median(side.forwards.iter().map(of).collect())
}

pub fn print(opts: &Options, sides: &[Side], leftovers: &[Leftovers]) {
    let [caisson, containerd] = sides else {
        return;
    };
    println!(
        "streaming: exec of `true` ({} runs after {} warm-ups) and port-forward of {} MB \
         ({} runs after one warm-up), alternating daemons, host-network pods",
        opts.runs,
        super::EXEC_WARMUPS,
        opts.size_mb,
        opts.forwards
    );
    for side in sides {
        println!(
            "  {:<11} {} ({}); exec URL {}",
            format!("{}:", side.name),
            side.binary.display(),
            side.version,
            side.url
        );
    }
    println!();
    println!(
        "  {:<28} {:>26}  {:>26}  {:>20}",
        "exec, ms", "caisson", "containerd", "caisson/containerd"
    );
    println!(
        "  {:<28} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8}  {:>6} {:>6} {:>6}",
        "", "p50", "p90", "p99", "p50", "p90", "p99", "p50", "p90", "p99"
    );
    for (name, _, of) in EXEC_ROWS {
        let (a, b) = (exec_latency(caisson, of), exec_latency(containerd, of));
        let (a, b) = (
            [ms(a.p50), ms(a.p90), ms(a.p99)],
            [ms(b.p50), ms(b.p90), ms(b.p99)],
        );
        println!(
            "  {:<28} {:>8.2} {:>8.2} {:>8.2}  {:>8.2} {:>8.2} {:>8.2}  {:>6.2} {:>6.2} {:>6.2}",
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
    println!();
    let size = opts.size();
    println!(
        "  {:<28} {:>24}  {:>24}  {:>10}",
        format!("{} MB, MB/s", opts.size_mb),
        "caisson",
        "containerd",
        "caisson/"
    );
    println!(
        "  {:<28} {:>8} {:>15}  {:>8} {:>15}  {:>10}",
        "", "median", "slowest-fastest", "median", "slowest-fastest", "containerd"
    );
    for (name, _, of) in TRANSFER_ROWS {
        let (a, b) = (
            throughput(caisson, size, of),
            throughput(containerd, size, of),
        );
        println!(
            "  {:<28} {:>8.1} {:>15}  {:>8.1} {:>15}  {:>10.2}",
            name,
            a[0],
            format!("{:.0}-{:.0}", a[1], a[2]),
            b[0],
            format!("{:.0}-{:.0}", b[1], b[2]),
            ratio(a[0], b[0]),
        );
    }
    for (name, of) in [
        (
            "daemon CPU s, as client-go",
            (|r: &ForwardRun| r.plain_cpu) as fn(&ForwardRun) -> Duration,
        ),
        ("  with WINDOW_UPDATEs", |r| r.windowed_cpu),
    ] {
        let (a, b) = (cpu_median(caisson, of), cpu_median(containerd, of));
        println!(
            "  {:<28} {:>8.2} {:>15}  {:>8.2} {:>15}  {:>10.2}",
            name,
            a.as_secs_f64(),
            "",
            b.as_secs_f64(),
            "",
            ratio(a.as_secs_f64(), b.as_secs_f64()),
        );
    }
    for (name, _, of) in SETUP_ROWS {
        let (a, b) = (ms(cpu_median(caisson, of)), ms(cpu_median(containerd, of)));
        println!(
            "  {:<28} {:>8.2} {:>15}  {:>8.2} {:>15}  {:>10.2}",
            format!("{name}, ms"),
            a,
            "",
            b,
            "",
            ratio(a, b),
        );
    }
    println!();
    for (side, left) in sides.iter().zip(leftovers) {
        let qos = left.cgroups.iter().filter(|c| is_qos_level(c)).count();
        let left = leaked(left);
        println!(
            "  {}: {} pods removed at teardown, exited {:.0} ms after SIGTERM{}; left: {}{}",
            side.name,
            side.pods_removed,
            ms(side.exit),
            if side.killed { " (killed)" } else { "" },
            if qos > 0 {
                format!("{qos} QoS-level cgroups (kept by design), ")
            } else {
                String::new()
            },
            if left.any() {
                format!(
                    "processes {:?}, mounts {:?}, cgroups {:?}",
                    left.processes, left.mounts, left.cgroups
                )
            } else {
                "nothing".into()
            }
        );
    }
}

fn exec_json(side: &Side) -> Value {
    let mut rows = serde_json::Map::new();
    for (_, key, of) in EXEC_ROWS {
        let l = exec_latency(side, of);
        rows.insert(
            key.into(),
            json!({
                "runs_ms": l.runs.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "p50_ms": ms(l.p50),
                "p90_ms": ms(l.p90),
                "p99_ms": ms(l.p99),
            }),
        );
    }
    Value::Object(rows)
}

fn forward_json(side: &Side, size: u64) -> Value {
    let mut rows = serde_json::Map::new();
    for (_, key, of) in TRANSFER_ROWS {
        let [median, slowest, fastest] = throughput(side, size, of);
        rows.insert(
            key.into(),
            json!({
                "runs_s": side.forwards.iter().map(|r| of(r).as_secs_f64()).collect::<Vec<_>>(),
                "median_mb_per_s": median,
                "slowest_mb_per_s": slowest,
                "fastest_mb_per_s": fastest,
            }),
        );
    }
    for (_, key, of) in SETUP_ROWS {
        rows.insert(
            format!("{key}_ms"),
            json!(side.forwards.iter().map(|r| ms(of(r))).collect::<Vec<_>>()),
        );
    }
    rows.insert(
        "daemon_cpu_s".into(),
        json!({
            "port_forward": side.forwards.iter().map(|r| r.plain_cpu.as_secs_f64()).collect::<Vec<_>>(),
            "port_forward_window_updates":
                side.forwards.iter().map(|r| r.windowed_cpu.as_secs_f64()).collect::<Vec<_>>(),
        }),
    );
    Value::Object(rows)
}

pub fn to_json(opts: &Options, sides: &[Side], leftovers: &[Leftovers], config: Value) -> Value {
    let daemons: Vec<Value> = sides
        .iter()
        .zip(leftovers)
        .map(|(side, left)| {
            json!({
                "name": side.name,
                "binary": side.binary,
                "version": side.version,
                "exec_url": side.url,
                "exec": exec_json(side),
                "forward": forward_json(side, opts.size()),
                "pods_removed_at_teardown": side.pods_removed,
                "exit_after_sigterm_ms": ms(side.exit),
                "killed": side.killed,
                "left": {
                    "processes": left.processes,
                    "mounts": left.mounts,
                    "cgroups": left.cgroups,
                },
            })
        })
        .collect();
    json!({
        "benchmark": "streaming",
        "runs": opts.runs,
        "exec_warmups": super::EXEC_WARMUPS,
        "forwards": opts.forwards,
        "size_bytes": opts.size(),
        "daemons": daemons,
        "config": config,
    })
}
