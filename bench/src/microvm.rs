//! `microvm`: what a pod in its own virtual machine costs (the `microvm`
//! handler: one QEMU per pod, `caisson-agent` in the guest running its
//! containers), against the native handler in the same caissond
//! ([`crate::caissond`] with [`handler_config`]: `runc` → native, `microvm`
//! → microvm as `shim/caisson.toml` sets it), beside the figures Kata
//! Containers publishes for QEMU on KVM.
//!
//! 1. Start latency: one warm-up, then `--runs` runs, handlers alternating:
//!    RunPodSandbox + CreateContainer + StartContainer of a busybox `sleep
//!    3600` (pod network, no CNI: loopback only), each call timed; for a
//!    microvm pod, its VM's `boot.json` (written by the host side when the
//!    guest's agent is ready) gives QEMU spawn → agent Ready on the host's
//!    clock and the guest's CLOCK_BOOTTIME at Ready; Caisson's own work is
//!    the total less spawn → Ready. Then StopPodSandbox + RemovePodSandbox,
//!    timed. p50 and p90.
//! 2. Memory: `--pods` microvm pods, each with a sleeping container, left
//!    idle for [`IDLE`] (QEMU's CPU time over that window), then per pod the
//!    VmRSS and Pss of its QEMU and of its shim with the shim's helpers.
//! 3. Teardown: the daemon's drop removes pods, processes, mounts, cgroups.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;
use serde_json::{json, Value};

use crate::caissond::{Caissond, Dir, Setup, SHIM};
use crate::cri::daemon::{StartTimes, StopTimes};
use crate::cri::procfs::{self, Memory};
use crate::cri::report::{Latency, Phases};
use crate::cri::{workload, Result};
use crate::measure::ratio;

/// The guest's size, as `shim/caisson.toml`'s microvm handler has it.
const GUEST_VCPUS: u32 = 1;
const GUEST_MEMORY_MIB: u32 = 512;
/// How long the memory pods sit idle before they are read.
const IDLE: Duration = Duration::from_secs(10);
const CGROUP_PARENT: &str = "/caisson-bench-microvm";
/// Kata Containers' published figures for QEMU on KVM, the issue's
/// reference: boot to a running container, and the memory a pod adds.
const KATA_BOOT_TO_CONTAINER_MS: f64 = 600.0;
const KATA_OVERHEAD_MIB: [f64; 2] = [130.0, 160.0];

/// The columns: (name, runtime handler); native first, the ratios' base.
const HANDLERS: [(&str, &str); 2] = [("native", "runc"), ("microvm", "microvm")];

/// Command-line options of `microvm`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timed pod starts per handler.
    pub runs: usize,
    /// microvm pods for the memory reading.
    pub pods: usize,
    pub json: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 10,
            pods: 3,
            json: None,
        }
    }
}

/// The handler beside caissond's `runc` → native: the embedded default's
/// `microvm` (its pod overhead, the guest's size; the guest kernel and
/// initramfs at their default paths, accelerator `auto`).
fn handler_config() -> String {
    format!(
        r#"[runtimes.handlers.microvm]
backend = "microvm"
pod_overhead = {{ memory_mib = 1024, cpu_millicores = 250 }}
[runtimes.handlers.microvm.options]
vcpus = {GUEST_VCPUS}
memory_mib = {GUEST_MEMORY_MIB}
"#
    )
}

/// A microvm pod's `boot.json`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Boot {
    accelerator: String,
    accelerator_reason: String,
    kernel_release: String,
    /// The guest's CLOCK_BOOTTIME when its agent was ready.
    guest_boot: Duration,
    /// From QEMU's spawn to the agent's Ready, on the host.
    spawn_to_ready: Duration,
}

impl Boot {
    fn parse(text: &str) -> Result<Boot> {
        let v: Value = serde_json::from_str(text)?;
        let text_of = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        let ms_of = |key: &str| {
            v[key]
                .as_u64()
                .map(Duration::from_millis)
                .ok_or_else(|| format!("no {key} in {text}"))
        };
        Ok(Boot {
            accelerator: text_of("accelerator"),
            accelerator_reason: text_of("accelerator_reason"),
            kernel_release: text_of("kernel_release"),
            guest_boot: ms_of("guest_boot_ms")?,
            spawn_to_ready: ms_of("spawn_to_ready_ms")?,
        })
    }

    /// The `boot.json` of pod `pod`'s VM below caissond's run dir.
    fn of(d: &Caissond, pod: &str) -> Result<Boot> {
        let run = d.dir().join("run");
        let dir = vm_dir(&run, &vm_dir_name(pod))
            .ok_or_else(|| format!("no VM dir of pod {pod} below {}", run.display()))?;
        let path = dir.join("boot.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Boot::parse(&text)
    }
}

/// The name the backend gives pod `pod`'s VM dir: 16 hex digits of the
/// SHA-256 of its id.
fn vm_dir_name(pod: &str) -> String {
    let digest = caisson_tests::fixtures::sha256(pod.as_bytes());
    digest.trim_start_matches("sha256:")[..16].to_string()
}

/// The dir `vm/<name>` below `root` (not into the VMs' shared dirs, which
/// hold the pods' root filesystems).
fn vm_dir(root: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) || path.ends_with("shared") {
                continue;
            }
            if path.ends_with(name) && dir.ends_with("vm") {
                return Some(path);
            }
            stack.push(path);
        }
    }
    None
}

/// Whether `argv` is the QEMU of pod `pod`: `-name caisson-<12 chars of
/// the id>[,options]`.
fn is_qemu_of(argv: &[String], pod: &str) -> bool {
    let name = format!("caisson-{}", &pod[..pod.len().min(12)]);
    argv.windows(2)
        .any(|w| w[0] == "-name" && w[1].split(',').next() == Some(name.as_str()))
}

/// A microvm pod's host processes: its shim, the QEMU below it, and the
/// shim's other helpers.
struct VmPodProcesses {
    shim: u32,
    qemu: u32,
    helpers: Vec<u32>,
}

fn vm_pod_processes(d: &Caissond, pod: &str) -> Result<VmPodProcesses> {
    let all = procfs::processes();
    let below = procfs::shim_tree(&all, SHIM, d.dir(), pod)?;
    let qemus: Vec<u32> = all
        .iter()
        .filter(|p| below[1..].contains(&p.pid) && is_qemu_of(&p.argv, pod))
        .map(|p| p.pid)
        .collect();
    let [qemu] = qemus[..] else {
        return Err(procfs::tree_error(&all, &below, "one QEMU", qemus.len()));
    };
    Ok(VmPodProcesses {
        shim: below[0],
        qemu,
        helpers: below[1..].iter().copied().filter(|p| *p != qemu).collect(),
    })
}

/// One idle microvm pod's memory.
#[derive(Debug, Clone, Copy, Default)]
struct PodMemory {
    qemu: Memory,
    /// The shim and its helpers.
    shim: Memory,
    helpers: usize,
}

impl PodMemory {
    fn json(&self) -> Value {
        json!({
            "qemu": self.qemu.json(),
            "shim_with_helpers": self.shim.json(),
            "shim_helpers": self.helpers,
            "total": (self.qemu + self.shim).json(),
        })
    }
}

#[derive(Debug, Default)]
struct Results {
    /// Per handler, in [`HANDLERS`] order.
    starts: [Vec<StartTimes>; 2],
    stops: [Vec<StopTimes>; 2],
    /// The microvm runs' `boot.json`, in run order.
    boots: Vec<Boot>,
    memory: Vec<PodMemory>,
    /// QEMU's CPU time over [`IDLE`], all the memory pods together, in % of
    /// one CPU.
    qemu_idle_cpu: f64,
}

impl Results {
    fn phases(&self, handler: usize) -> Phases {
        Phases::of(&self.starts[handler], &self.stops[handler])
    }

    /// microvm's total split, one series per row: the VM's boot (spawn →
    /// Ready) and its two parts (the guest's CLOCK_BOOTTIME at Ready; before
    /// it, QEMU and the firmware), then Caisson's own work (the total less
    /// the VM's boot) and the part of it in RunPodSandbox.
    fn split(&self) -> [(&'static str, &'static str, Latency); 5] {
        let runs = self.starts[1].iter().zip(&self.boots);
        let series = |f: fn(&StartTimes, &Boot) -> Duration| {
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

    fn memory_sum(&self) -> PodMemory {
        self.memory
            .iter()
            .fold(PodMemory::default(), |a, m| PodMemory {
                qemu: a.qemu + m.qemu,
                shim: a.shim + m.shim,
                helpers: a.helpers + m.helpers,
            })
    }
}

/// A pod named `name` on the pod network, its log dirs made (as kubelet
/// makes them).
fn pod_config(d: &Caissond, name: &str) -> Result<cri::PodSandboxConfig> {
    let logs = d.dir().join("pod-logs").join(name);
    let container_log = logs.join(workload::LOG_PATH);
    std::fs::create_dir_all(container_log.parent().unwrap_or(&logs))?;
    Ok(workload::pod_config(name, &logs, "", true))
}

/// RunPodSandbox (under `handler`) + CreateContainer + StartContainer of
/// busybox `sleep 3600`, each timed.
fn start_pod(d: &Caissond, name: &str, handler: &str) -> Result<(String, StartTimes)> {
    let container = workload::container_running(true, &workload::COMMAND);
    let (pod, _, times) =
        d.run_pod_with_container_timed(pod_config(d, name)?, handler, container)?;
    Ok((pod, times))
}

fn start_latency(d: &Caissond, opts: &Options, results: &mut Results) -> Result<()> {
    for run in 0..=opts.runs {
        let mut order = [0, 1];
        if run % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let handler = HANDLERS[i].1;
            let (pod, start) = start_pod(d, &format!("start-{handler}-{run}"), handler)?;
            // Read while the pod runs: its VM dir goes with it.
            let boot = match handler {
                "microvm" => Some(Boot::of(d, &pod)?),
                _ => None,
            };
            let stop = d.stop_and_remove_pod_timed(&pod)?;
            // Run 0 is the warm-up.
            if run == 0 {
                continue;
            }
            results.starts[i].push(start);
            results.stops[i].push(stop);
            results.boots.extend(boot);
        }
        if run > 0 {
            eprintln!("pod start: run {run}/{}", opts.runs);
        }
    }
    Ok(())
}

fn memory(d: &Caissond, opts: &Options, results: &mut Results) -> Result<()> {
    eprintln!(
        "memory: {} microvm pods, idle for {} s",
        opts.pods,
        IDLE.as_secs()
    );
    let mut pods = Vec::new();
    for n in 0..opts.pods {
        pods.push(start_pod(d, &format!("memory-{n}"), "microvm")?.0);
    }
    let processes = pods
        .iter()
        .map(|pod| vm_pod_processes(d, pod))
        .collect::<Result<Vec<_>>>()?;
    let qemus: Vec<u32> = processes.iter().map(|p| p.qemu).collect();
    results.qemu_idle_cpu = procfs::cpu_share(&qemus, IDLE)?;
    for p in &processes {
        let mut shim = Memory::of(p.shim)?;
        let mut helpers = 0;
        for helper in &p.helpers {
            // A helper may exit between the listing and the read.
            if let Ok(m) = Memory::of(*helper) {
                shim = shim + m;
                helpers += 1;
            }
        }
        results.memory.push(PodMemory {
            qemu: Memory::of(p.qemu)?,
            shim,
            helpers,
        });
    }
    for pod in &pods {
        d.stop_and_remove_pod(pod)?;
    }
    Ok(())
}

/// Runs the benchmark, prints the table and writes the JSON if asked.
pub fn bench(opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.pods == 0 {
        return Err("--runs and --pods must be at least 1".into());
    }
    if !crate::cri::is_root() {
        return Err("the microvm bench must run as root (it runs pods and VMs)".into());
    }
    crate::fixture("the microvm guest", caisson_tests::require::microvm)?;
    let pause = crate::fixture("caisson-pause", caisson_tests::fixtures::pause_binary)?;
    let busybox = crate::fixture(
        "building the busybox image",
        caisson_tests::fixtures::busybox_image,
    )?;
    // Dropping the daemon removes every pod, VM, mount and cgroup it made,
    // after an error too.
    let d = Caissond::start(Setup {
        dir: Dir::Temp("caisson-bench-microvm-"),
        pause: &pause,
        cgroup_parent: CGROUP_PARENT,
        extra_config: &handler_config(),
    })?;
    eprintln!("caissond under {}", d.dir().display());
    d.import_image(&busybox)?;
    let mut results = Results::default();
    eprintln!("pod start latency: {} pods per handler", opts.runs);
    start_latency(&d, opts, &mut results)?;
    memory(&d, opts, &mut results)?;
    drop(d);
    print(opts, &results);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&to_json(opts, &results))? + "\n";
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// How the VM ran, from the runs' `boot.json` (the last; every run sees
/// the same host).
fn guest(results: &Results) -> Boot {
    results.boots.last().cloned().unwrap_or_default()
}

fn print(opts: &Options, results: &Results) {
    let guest = guest(results);
    println!(
        "\nmicrovm bench: {} runs per handler after one warm-up, handlers alternating; \
         a busybox `sleep 3600` in a pod on loopback only",
        opts.runs
    );
    println!(
        "VM: QEMU, accelerator {} ({}), {GUEST_VCPUS} vCPU, {GUEST_MEMORY_MIB} MiB guest \
         memory, guest kernel {}",
        guest.accelerator, guest.accelerator_reason, guest.kernel_release
    );
    println!();
    println!(
        "  {:<36} {:>17}  {:>17}  {:>15}",
        "latency, ms", "native", "microvm", "microvm/native"
    );
    println!(
        "  {:<36} {:>8} {:>8}  {:>8} {:>8}  {:>7} {:>7}",
        "", "p50", "p90", "p50", "p90", "p50", "p90"
    );
    let (native, microvm) = (results.phases(0), results.phases(1));
    for ((name, _, a), (_, _, b)) in native.rows().iter().zip(microvm.rows()) {
        let (a, b) = (a.ms(), b.ms());
        println!(
            "  {name:<36} {:>8.1} {:>8.1}  {:>8.1} {:>8.1}  {:>7.2} {:>7.2}",
            a[0],
            a[1],
            b[0],
            b[1],
            ratio(b[0], a[0]),
            ratio(b[1], a[1]),
        );
    }
    println!("  microvm's total, split (each row its own series' p50, p90):");
    for (name, _, series) in results.split() {
        let v = series.ms();
        println!(
            "  {name:<36} {:>8} {:>8}  {:>8.1} {:>8.1}",
            "", "", v[0], v[1]
        );
    }
    let total = microvm.total.ms()[0];
    println!(
        "  Kata Containers (published, QEMU on KVM): ~{KATA_BOOT_TO_CONTAINER_MS:.0} ms boot to \
         container; here p50 {total:.0} ms ({:.2}x) under {}",
        ratio(total, KATA_BOOT_TO_CONTAINER_MS),
        guest.accelerator
    );
    let n = results.memory.len();
    let sum = results.memory_sum();
    println!();
    println!(
        "  {:<36} {:>8} {:>8}",
        format!("memory per idle pod, MiB ({n} pods)"),
        "VmRSS",
        "Pss"
    );
    let shim = format!("shim (+ {} helpers in all)", sum.helpers);
    let rows = [
        ("QEMU", sum.qemu.per(n)),
        (shim.as_str(), sum.shim.per(n)),
        ("QEMU + shim", (sum.qemu + sum.shim).per(n)),
    ];
    for (name, m) in rows {
        println!("  {name:<36} {:>8.1} {:>8.1}", mib(m.rss), mib(m.pss));
    }
    for (i, m) in results.memory.iter().enumerate() {
        let total = m.qemu + m.shim;
        println!(
            "    pod {i}: QEMU {:.1} / {:.1}, shim {:.1} / {:.1}, total {:.1} / {:.1}",
            mib(m.qemu.rss),
            mib(m.qemu.pss),
            mib(m.shim.rss),
            mib(m.shim.pss),
            mib(total.rss),
            mib(total.pss)
        );
    }
    println!(
        "  Kata Containers (published): {:.0}-{:.0} MiB overhead per pod",
        KATA_OVERHEAD_MIB[0], KATA_OVERHEAD_MIB[1]
    );
    println!(
        "  guest memory configured: {GUEST_MEMORY_MIB} MiB per pod; QEMU's RSS holds the guest \
         pages touched so far, QEMU itself{}",
        if guest.accelerator == "tcg" {
            " and TCG's translation cache"
        } else {
            ""
        }
    );
    println!(
        "  QEMU CPU while idle ({} s): {:.1} % of one CPU per pod",
        IDLE.as_secs(),
        results.qemu_idle_cpu / n.max(1) as f64
    );
}

fn to_json(opts: &Options, results: &Results) -> Value {
    let guest = guest(results);
    let (native, microvm) = (results.phases(0), results.phases(1));
    let mut split = json!({});
    for (_, key, series) in results.split() {
        split[key] = series.json();
    }
    let [a, b] = [native.total.ms(), microvm.total.ms()];
    let n = results.memory.len();
    let sum = results.memory_sum();
    json!({
        "benchmark": "microvm",
        "machine": crate::cri::report::machine(),
        "options": {"runs": opts.runs, "warmup_runs": 1, "pods": opts.pods},
        "percentiles": "nearest rank",
        "guest": {
            "vcpus": GUEST_VCPUS,
            "memory_mib": GUEST_MEMORY_MIB,
            "accelerator": guest.accelerator,
            "accelerator_reason": guest.accelerator_reason,
            "kernel_release": guest.kernel_release,
        },
        "handlers": {
            HANDLERS[0].0: {"runtime_handler": HANDLERS[0].1, "latency": native.json()},
            HANDLERS[1].0: {
                "runtime_handler": HANDLERS[1].1,
                "latency": microvm.json(),
                "total_split": split,
            },
        },
        "ratio_microvm_over_native": {"total_p50": ratio(b[0], a[0]), "total_p90": ratio(b[1], a[1])},
        "memory_kib": {
            "pods": n,
            "idle_s": IDLE.as_secs(),
            "per_pod": {
                "qemu": sum.qemu.per(n).json(),
                "shim_with_helpers": sum.shim.per(n).json(),
                "total": (sum.qemu + sum.shim).per(n).json(),
            },
            "sum": sum.json(),
            "pods_each": results.memory.iter().map(PodMemory::json).collect::<Vec<_>>(),
        },
        "qemu_idle_cpu_percent_per_pod": results.qemu_idle_cpu / n.max(1) as f64,
        "kata_published_qemu_kvm": {
            "boot_to_container_ms": KATA_BOOT_TO_CONTAINER_MS,
            "overhead_mib_per_pod": KATA_OVERHEAD_MIB,
        },
        "total_p50_over_kata": ratio(b[0], KATA_BOOT_TO_CONTAINER_MS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_boot_json() {
        let text = r#"{"accelerator":"tcg","accelerator_reason":"PVM","kernel_release":"6.1.0-41-amd64","guest_boot_ms":812,"spawn_to_ready_ms":1530}"#;
        let boot = Boot::parse(text).unwrap();
        assert_eq!(
            boot,
            Boot {
                accelerator: "tcg".into(),
                accelerator_reason: "PVM".into(),
                kernel_release: "6.1.0-41-amd64".into(),
                guest_boot: Duration::from_millis(812),
                spawn_to_ready: Duration::from_millis(1530),
            }
        );
        for bad in ["", "{}", r#"{"guest_boot_ms":1}"#] {
            assert!(Boot::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recognises_a_pods_qemu() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let qemu =
            argv("/usr/bin/qemu-system-x86_64 -name caisson-0123456789ab,debug-threads=on -m 512M");
        let cases = [
            (&qemu, "0123456789abcdef", true),
            (&qemu, "0123456789abffff", true),
            (&qemu, "0123456789ac", false),
            (&argv("sleep 3600"), "0123456789abcdef", false),
        ];
        for (argv, pod, want) in cases {
            assert_eq!(is_qemu_of(argv, pod), want, "{pod}");
        }
    }

    #[test]
    fn finds_a_vm_dir_by_the_pods_hash() {
        let root = tempfile::tempdir().unwrap();
        let name = vm_dir_name("pod-a");
        assert_eq!(name.len(), 16);
        let dir = root.path().join("shim/state/k8s.io/vm").join(&name);
        std::fs::create_dir_all(dir.join("shared/x")).unwrap();
        assert_eq!(vm_dir(root.path(), &name), Some(dir));
        assert_eq!(vm_dir(root.path(), &vm_dir_name("pod-b")), None);
    }
}
