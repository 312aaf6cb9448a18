//! The microvm bench's results: one table with a column per handler
//! (native, then microvm with each kernel), and the JSON.

use std::time::Duration;

use serde_json::{json, Value};

use super::network::Pair;
use super::{Column, Options, Results, GUEST_MEMORY_MIB, GUEST_VCPUS, IDLE};
use crate::cri::daemon::StartTimes;
use crate::cri::report::Latency;
use crate::measure::ratio;

/// Kata Containers' published figures for QEMU on KVM, the issue's
/// reference: boot to a running container, and the memory a pod adds.
const KATA_BOOT_TO_CONTAINER_MS: f64 = 600.0;
const KATA_OVERHEAD_MIB: [f64; 2] = [130.0, 160.0];

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A microvm column's total split, one series per row: the VM's boot
/// (spawn → Ready) and its two parts (the guest's CLOCK_BOOTTIME at Ready;
/// before it, QEMU and the firmware), then Caisson's own work (the total
/// less the VM's boot) and the part of it in RunPodSandbox.
fn split(column: &Column) -> [(&'static str, &'static str, Latency); 5] {
    let runs = column.starts.iter().zip(&column.boots);
    let series = |f: fn(&StartTimes, &super::Boot) -> Duration| {
        Latency::of(runs.clone().map(|(s, b)| f(s, b)).collect())
    };
    [
        (
            "VM boot: QEMU spawn -> agent ready",
            "vm_spawn_to_agent_ready",
            series(|_, b| b.spawn_to_ready),
        ),
        (
            "  guest kernel to agent (BOOTTIME)",
            "guest_boottime_at_ready",
            series(|_, b| b.guest_boot),
        ),
        (
            "  QEMU + firmware before the kernel",
            "before_guest_kernel",
            series(|_, b| b.spawn_to_ready.saturating_sub(b.guest_boot)),
        ),
        (
            "Caisson's own: total - VM boot",
            "caisson_own_work",
            series(|s, b| s.total.saturating_sub(b.spawn_to_ready)),
        ),
        (
            "  of which in RunPodSandbox",
            "caisson_own_in_run_pod_sandbox",
            series(|s, b| s.run_pod.saturating_sub(b.spawn_to_ready)),
        ),
    ]
}

/// The pairs of a column: native's `native → native`; a kernel's `vm →
/// native` and `native → vm`.
fn pairs_of<'a>(results: &'a Results, column: &Column) -> Vec<(&'static str, &'a Pair)> {
    let Some(kernel) = &column.kernel else {
        return results
            .network
            .first()
            .map(|p| ("native -> native", p))
            .into_iter()
            .collect();
    };
    let label = kernel.label.as_str();
    let mut pairs = Vec::new();
    for pair in &results.network {
        if pair.from == label {
            pairs.push(("microvm -> native", pair));
        } else if pair.to == label {
            pairs.push(("native -> microvm", pair));
        }
    }
    pairs
}

fn native_p50(results: &Results) -> f64 {
    results.network.first().map_or(0.0, Pair::p50)
}

/// The table: one row of cells per figure, a cell per column.
struct Table {
    rows: Vec<(String, Vec<String>)>,
    width: usize,
}

impl Table {
    fn row(&mut self, name: &str, cells: Vec<String>) {
        self.rows.push((name.into(), cells));
    }

    fn heading(&mut self, name: &str) {
        self.row(name, vec![String::new(); self.width]);
    }

    fn print(&self) {
        for (name, cells) in &self.rows {
            if cells.iter().all(String::is_empty) {
                println!("  {name}");
                continue;
            }
            let cells: String = cells.iter().map(|c| format!("{c:>30}")).collect();
            println!("  {name:<40}{cells}");
        }
    }
}

/// One part of a pod's memory.
type PartOf = fn(&super::PodMemory) -> crate::cri::procfs::Memory;

fn pair_ms(v: [f64; 3]) -> String {
    format!("{:.1} / {:.1}", v[0], v[1])
}

pub fn print(opts: &Options, results: &Results) {
    let columns = &results.columns;
    let microvm = || columns.iter().filter(|c| c.kernel.is_some());
    let guest = microvm().next_back().map(Column::guest).unwrap_or_default();
    println!(
        "\nmicrovm bench: {} runs per handler after one warm-up, handlers' order rotating; \
         a busybox `sleep 3600` in a pod on loopback only",
        opts.runs
    );
    println!(
        "VM: QEMU, accelerator {} ({}), {GUEST_VCPUS} vCPU, {GUEST_MEMORY_MIB} MiB guest memory",
        guest.accelerator, guest.accelerator_reason
    );
    println!();
    let mut t = Table {
        rows: Vec::new(),
        width: columns.len(),
    };
    t.row(
        "",
        columns
            .iter()
            .map(|c| match &c.kernel {
                None => "native".to_string(),
                Some(k) => format!("microvm {}", k.label),
            })
            .collect(),
    );
    t.row(
        "guest kernel",
        columns.iter().map(|c| c.guest().kernel_release).collect(),
    );
    t.heading("latency, ms, p50 / p90");
    let phases: Vec<_> = columns.iter().map(Column::phases).collect();
    for (i, (name, _, _)) in phases[0].rows().iter().enumerate() {
        let cells = phases.iter().map(|p| pair_ms(p.rows()[i].2.ms())).collect();
        t.row(&format!("  {name}"), cells);
    }
    let native_total = phases[0].total.ms();
    t.row(
        "  total: microvm / native",
        phases
            .iter()
            .enumerate()
            .map(|(i, p)| match i {
                0 => String::new(),
                _ => {
                    let v = p.total.ms();
                    format!(
                        "{:.0}x / {:.0}x",
                        ratio(v[0], native_total[0]),
                        ratio(v[1], native_total[1])
                    )
                }
            })
            .collect(),
    );
    let splits: Vec<_> = columns.iter().map(split).collect();
    for (i, (name, _, _)) in splits[0].iter().enumerate() {
        let cells = columns
            .iter()
            .zip(&splits)
            .map(|(c, s)| match c.kernel {
                None => String::new(),
                Some(_) => pair_ms(s[i].2.ms()),
            })
            .collect();
        t.row(&format!("  {name}"), cells);
    }
    let pods = opts.pods;
    t.heading(&format!(
        "memory per idle pod, MiB, VmRSS / Pss ({pods} pods, {} s idle)",
        IDLE.as_secs()
    ));
    let memory_rows: [(&str, PartOf); 3] = [
        ("  QEMU", |m| m.qemu),
        ("  shim (+ its helpers)", |m| m.shim),
        ("  QEMU + shim", |m| m.total()),
    ];
    for (name, of) in memory_rows {
        let cells = columns
            .iter()
            .map(|c| match c.kernel {
                None => String::new(),
                Some(_) => {
                    let m = of(&c.memory_sum()).per(c.memory.len());
                    format!("{:.1} / {:.1}", mib(m.rss), mib(m.pss))
                }
            })
            .collect();
        t.row(name, cells);
    }
    t.row(
        "  QEMU CPU idle, % of one CPU per pod",
        columns
            .iter()
            .map(|c| match c.kernel {
                None => String::new(),
                Some(_) => format!("{:.1}", c.qemu_idle_cpu / c.memory.len().max(1) as f64),
            })
            .collect(),
    );
    if !results.network.is_empty() {
        let runs = results.network[0].runs.len();
        t.heading(&format!("TCP pod to pod, MB/s, p50 (min-max), {runs} runs"));
        let base = native_p50(results);
        for name in ["native -> native", "microvm -> native", "native -> microvm"] {
            let mut cells = Vec::new();
            let mut ratios = Vec::new();
            for c in columns {
                let pair = pairs_of(results, c).into_iter().find(|(n, _)| *n == name);
                let Some((_, pair)) = pair else {
                    cells.push(String::new());
                    ratios.push(String::new());
                    continue;
                };
                let (min, max) = pair.range();
                cells.push(format!("{:.1} ({min:.1}-{max:.1})", pair.p50()));
                ratios.push(match c.kernel {
                    None => String::new(),
                    Some(_) => format!("{:.3}", ratio(pair.p50(), base)),
                });
            }
            t.row(&format!("  {name}"), cells);
            if name != "native -> native" {
                t.row("    / native -> native", ratios);
            }
        }
    }
    t.print();
    for c in microvm() {
        let total = c.phases().total.ms()[0];
        let per_pod = c.memory_sum().total().per(c.memory.len());
        println!(
            "  microvm {}: p50 {total:.0} ms to a running container, {:.2}x Kata's published \
             ~{KATA_BOOT_TO_CONTAINER_MS:.0} ms (QEMU on KVM); Pss {:.0} MiB per pod against \
             Kata's {:.0}-{:.0} MiB",
            c.kernel.as_ref().map_or("", |k| k.label.as_str()),
            ratio(total, KATA_BOOT_TO_CONTAINER_MS),
            mib(per_pod.pss),
            KATA_OVERHEAD_MIB[0],
            KATA_OVERHEAD_MIB[1],
        );
    }
    println!(
        "  guest memory configured: {GUEST_MEMORY_MIB} MiB per pod; QEMU's RSS holds the guest \
         pages touched so far, QEMU itself{}",
        if guest.accelerator == "tcg" {
            " and TCG's translation cache"
        } else {
            ""
        }
    );
}

fn column_json(results: &Results, column: &Column) -> Value {
    let guest = column.guest();
    let mut v = json!({
        "runtime_handler": column.handler(),
        "latency": column.phases().json(),
    });
    let Some(kernel) = &column.kernel else {
        return v;
    };
    let mut split_json = json!({});
    for (_, key, series) in split(column) {
        split_json[key] = series.json();
    }
    let n = column.memory.len();
    let sum = column.memory_sum();
    v["kernel"] = json!({
        "label": kernel.label,
        "path": kernel.path,
        "release": guest.kernel_release,
    });
    v["total_split"] = split_json;
    v["memory_kib"] = json!({
        "pods": n,
        "idle_s": IDLE.as_secs(),
        "per_pod": {
            "qemu": sum.qemu.per(n).json(),
            "shim_with_helpers": sum.shim.per(n).json(),
            "total": sum.total().per(n).json(),
        },
        "sum": sum.json(),
        "pods_each": column.memory.iter().map(super::PodMemory::json).collect::<Vec<_>>(),
    });
    v["qemu_idle_cpu_percent_per_pod"] = json!(column.qemu_idle_cpu / n.max(1) as f64);
    v["total_p50_over_kata"] = json!(ratio(
        column.phases().total.ms()[0],
        KATA_BOOT_TO_CONTAINER_MS
    ));
    v["tcp"] = pairs_of(results, column)
        .into_iter()
        .map(|(name, pair)| (name.to_string(), pair.json(native_p50(results))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    v
}

pub fn to_json(opts: &Options, results: &Results) -> Value {
    let guest = results
        .columns
        .last()
        .map(Column::guest)
        .unwrap_or_default();
    json!({
        "benchmark": "microvm",
        "machine": crate::cri::report::machine(),
        "options": {
            "runs": opts.runs,
            "warmup_runs": 1,
            "pods": opts.pods,
            "kernels": opts.kernels,
            "net_runs": opts.net_runs,
            "net_window_s": super::network::WINDOW.as_secs(),
        },
        "percentiles": "nearest rank",
        "guest": {
            "vcpus": GUEST_VCPUS,
            "memory_mib": GUEST_MEMORY_MIB,
            "accelerator": guest.accelerator,
            "accelerator_reason": guest.accelerator_reason,
        },
        "handlers": results.columns.iter().map(|c| column_json(results, c)).collect::<Vec<_>>(),
        "tcp_native_to_native": results.network.first().map(|p| p.json(p.p50())),
        "kata_published_qemu_kvm": {
            "boot_to_container_ms": KATA_BOOT_TO_CONTAINER_MS,
            "overhead_mib_per_pod": KATA_OVERHEAD_MIB,
        },
    })
}
