//! `microvm`: what a pod in its own virtual machine costs (the `microvm`
//! backend: one QEMU per pod, `caisson-agent` in the guest running its
//! containers), against the native handler in the same caissond
//! ([`crate::caissond`] with [`handler_config`]: `runc` → native, and one
//! `microvm-<kernel>` handler per guest kernel, as `shim/caisson.toml` sets
//! the microvm handler but for its `kernel`), beside the figures Kata
//! Containers publishes for QEMU on KVM.
//!
//! 1. Start latency: one warm-up, then `--runs` runs, the handlers' order
//!    rotating: RunPodSandbox + CreateContainer + StartContainer of a busybox
//!    `sleep 3600` (pod network, no CNI: loopback only), each call timed;
//!    for a microvm pod, its VM's `boot.json` ([`guest::Boot`]) gives QEMU
//!    spawn → agent Ready on the host's clock and the guest's
//!    CLOCK_BOOTTIME at Ready; Caisson's own work is the total less spawn →
//!    Ready. Then StopPodSandbox + RemovePodSandbox, timed. p50 and p90.
//! 2. Memory, one kernel after the other: `--pods` microvm pods, each with a
//!    sleeping container, left idle for [`IDLE`] (QEMU's CPU time over that
//!    window), then per pod the VmRSS and Pss of its QEMU and of its shim
//!    with the shim's helpers.
//! 3. TCP throughput ([`network`]), unless `--net-runs 0`: the bench's CNI
//!    bridge is put in caissond's CNI dir, two native pods and one microvm
//!    pod per kernel join it; native → native, microvm → native and native
//!    → microvm, `--net-runs` runs each.
//! 4. Teardown: the daemon's drop removes pods, processes, mounts, cgroups;
//!    then the network's drop removes the bridge and host-local's leases.

mod guest;
mod network;
mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1 as cri;

use crate::caissond::{Caissond, Dir, Setup};
use crate::cri::daemon::{StartTimes, StopTimes};
use crate::cri::report::Phases;
use crate::cri::{workload, Result};
use guest::{Boot, PodMemory, VmPodProcesses};

/// The guest's size, as `shim/caisson.toml`'s microvm handler has it.
const GUEST_VCPUS: u32 = 1;
const GUEST_MEMORY_MIB: u32 = 512;
/// How long the memory pods sit idle before they are read.
const IDLE: Duration = Duration::from_secs(10);
const CGROUP_PARENT: &str = "/caisson-bench-microvm";
/// Where `make microvm-guest` installs the kernels.
const GUEST_DIR: &str = caisson_tests::require::MICROVM_GUEST_DIR;
/// The native handler: the first column, the ratios' base.
const NATIVE: &str = "runc";

/// Command-line options of `microvm`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timed pod starts per handler.
    pub runs: usize,
    /// microvm pods for the memory reading, per kernel.
    pub pods: usize,
    /// The guest kernels, each `NAME` (`default` is `vmlinux`, another
    /// name `vmlinux-NAME` in [`GUEST_DIR`]) or `LABEL=PATH`.
    pub kernels: Vec<String>,
    /// TCP throughput runs per direction (0: none).
    pub net_runs: usize,
    pub json: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 10,
            pods: 3,
            kernels: vec!["default".into(), "debian".into()],
            net_runs: 5,
            json: None,
        }
    }
}

/// A guest kernel the bench boots, and the handler that boots it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    pub label: String,
    pub path: PathBuf,
}

impl Kernel {
    /// `NAME` or `LABEL=PATH` (see [`Options::kernels`]).
    fn parse(spec: &str, guest_dir: &Path) -> std::result::Result<Kernel, String> {
        let (label, path) = match spec.split_once('=') {
            Some((label, path)) => (label.to_string(), PathBuf::from(path)),
            None if spec == "default" => (spec.to_string(), guest_dir.join("vmlinux")),
            None => (spec.to_string(), guest_dir.join(format!("vmlinux-{spec}"))),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if label.is_empty() || !label.chars().all(valid) || path.as_os_str().is_empty() {
            return Err(format!(
                "--kernels: {spec:?} is not NAME or LABEL=PATH (labels: letters, digits, - and _)"
            ));
        }
        Ok(Kernel { label, path })
    }

    /// Its runtime handler's name.
    fn handler(&self) -> String {
        format!("microvm-{}", self.label)
    }
}

/// The kernels of `--kernels`, each file there.
fn kernels(opts: &Options) -> Result<Vec<Kernel>> {
    let mut kernels: Vec<Kernel> = Vec::new();
    for spec in &opts.kernels {
        let kernel = Kernel::parse(spec, Path::new(GUEST_DIR))?;
        if !kernel.path.is_file() {
            return Err(format!(
                "guest kernel {}: {} not found (`make microvm-guest` installs `default` and `debian`)",
                kernel.label,
                kernel.path.display()
            )
            .into());
        }
        if kernels.iter().any(|k| k.label == kernel.label) {
            return Err(format!("--kernels: {} twice", kernel.label).into());
        }
        kernels.push(kernel);
    }
    if kernels.is_empty() {
        return Err("--kernels names no kernel".into());
    }
    Ok(kernels)
}

/// The handlers beside caissond's `runc` → native: one per kernel, each the
/// embedded default's `microvm` (its pod overhead, the guest's size, the
/// initramfs at its default path, accelerator `auto`) but for its kernel.
fn handler_config(kernels: &[Kernel]) -> String {
    kernels
        .iter()
        .map(|k| {
            format!(
                r#"[runtimes.handlers."{handler}"]
backend = "microvm"
pod_overhead = {{ memory_mib = 1024, cpu_millicores = 250 }}
[runtimes.handlers."{handler}".options]
kernel = "{kernel}"
vcpus = {GUEST_VCPUS}
memory_mib = {GUEST_MEMORY_MIB}
"#,
                handler = k.handler(),
                kernel = k.path.display(),
            )
        })
        .collect()
}

/// One handler's runs: native, or microvm with one kernel.
#[derive(Debug, Default)]
struct Column {
    /// None for native.
    kernel: Option<Kernel>,
    starts: Vec<StartTimes>,
    stops: Vec<StopTimes>,
    /// A microvm column's runs' `boot.json`, in run order.
    boots: Vec<Boot>,
    memory: Vec<PodMemory>,
    /// QEMU's CPU time over [`IDLE`], the memory pods together, in % of
    /// one CPU.
    qemu_idle_cpu: f64,
}

impl Column {
    fn handler(&self) -> String {
        self.kernel
            .as_ref()
            .map_or(NATIVE.to_string(), Kernel::handler)
    }

    fn phases(&self) -> Phases {
        Phases::of(&self.starts, &self.stops)
    }

    fn memory_sum(&self) -> PodMemory {
        self.memory
            .iter()
            .fold(PodMemory::default(), |sum, m| sum + *m)
    }

    /// How the VM ran, from the runs' `boot.json` (the last; every run sees
    /// the same host).
    fn guest(&self) -> Boot {
        self.boots.last().cloned().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Results {
    /// Native first, then one per kernel.
    columns: Vec<Column>,
    /// Native → native first.
    network: Vec<network::Pair>,
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
    let n = results.columns.len();
    for run in 0..=opts.runs {
        // Each handler goes first in turn.
        for i in (0..n).map(|k| (k + run) % n) {
            let column = &mut results.columns[i];
            let handler = column.handler();
            let (pod, start) = start_pod(d, &format!("start-{handler}-{run}"), &handler)?;
            // Read while the pod runs: its VM dir goes with it.
            let boot = match column.kernel {
                Some(_) => Some(Boot::of(d, &pod)?),
                None => None,
            };
            let stop = d.stop_and_remove_pod_timed(&pod)?;
            // Run 0 is the warm-up.
            if run == 0 {
                continue;
            }
            column.starts.push(start);
            column.stops.push(stop);
            column.boots.extend(boot);
        }
        if run > 0 {
            eprintln!("pod start: run {run}/{}", opts.runs);
        }
    }
    Ok(())
}

fn memory(d: &Caissond, opts: &Options, column: &mut Column) -> Result<()> {
    let handler = column.handler();
    eprintln!(
        "memory: {} {handler} pods, idle for {} s",
        opts.pods,
        IDLE.as_secs()
    );
    let mut pods = Vec::new();
    for n in 0..opts.pods {
        pods.push(start_pod(d, &format!("memory-{handler}-{n}"), &handler)?.0);
    }
    let processes = pods
        .iter()
        .map(|pod| VmPodProcesses::of(d, pod))
        .collect::<Result<Vec<_>>>()?;
    let qemus: Vec<u32> = processes.iter().map(|p| p.qemu).collect();
    column.qemu_idle_cpu = crate::cri::procfs::cpu_share(&qemus, IDLE)?;
    for p in &processes {
        column.memory.push(p.memory()?);
    }
    for pod in &pods {
        d.stop_and_remove_pod(pod)?;
    }
    Ok(())
}

/// Two native pods and one microvm pod per kernel on the bench's network,
/// the transfers between them, then the pods' removal.
fn throughput(
    d: &Caissond,
    net: &caisson_tests::cni::TestNetwork,
    opts: &Options,
    results: &mut Results,
) -> Result<()> {
    network::install(net, d)?;
    eprintln!(
        "tcp throughput: {} runs per direction, {} s each",
        opts.net_runs,
        network::WINDOW.as_secs()
    );
    let a = network::start_pod(d, "net-native-a", NATIVE, "native-a")?;
    let b = network::start_pod(d, "net-native-b", NATIVE, "native-b")?;
    let mut vms = Vec::new();
    for column in &results.columns {
        if let Some(kernel) = &column.kernel {
            let name = format!("net-{}", kernel.label);
            vms.push(network::start_pod(
                d,
                &name,
                &column.handler(),
                &kernel.label,
            )?);
        }
    }
    results.network = network::throughput(d, &a, &b, &vms, opts.net_runs)?;
    for pod in vms.iter().chain([&a, &b]) {
        d.stop_and_remove_pod(pod.id())?;
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
    let kernels = kernels(opts)?;
    let pause = crate::fixture("caisson-pause", caisson_tests::fixtures::pause_binary)?;
    let busybox = crate::fixture(
        "building the busybox image",
        caisson_tests::fixtures::busybox_image,
    )?;
    // Made before the daemon, dropped after it (its pods go first).
    let net = match opts.net_runs {
        0 => None,
        _ => Some(network::network()?),
    };
    // Dropping the daemon removes every pod, VM, mount and cgroup it made,
    // after an error too.
    let d = Caissond::start(Setup {
        dir: Dir::Temp("caisson-bench-microvm-"),
        pause: &pause,
        cgroup_parent: CGROUP_PARENT,
        extra_config: &handler_config(&kernels),
    })?;
    eprintln!("caissond under {}", d.dir().display());
    d.import_image(&busybox)?;
    let mut results = Results::default();
    results.columns.push(Column::default());
    for kernel in kernels {
        results.columns.push(Column {
            kernel: Some(kernel),
            ..Column::default()
        });
    }
    eprintln!(
        "pod start latency: {} pods per handler ({})",
        opts.runs,
        results
            .columns
            .iter()
            .map(Column::handler)
            .collect::<Vec<_>>()
            .join(", ")
    );
    start_latency(&d, opts, &mut results)?;
    for column in results.columns.iter_mut().skip(1) {
        memory(&d, opts, column)?;
    }
    if let Some(net) = &net {
        throughput(&d, net, opts, &mut results)?;
    }
    drop(d);
    drop(net);
    report::print(opts, &results);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report::to_json(opts, &results))? + "\n";
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_specs() {
        let dir = Path::new("/g");
        let cases = [
            ("default", "default", "/g/vmlinux"),
            ("debian", "debian", "/g/vmlinux-debian"),
            ("mine=/tmp/bzImage", "mine", "/tmp/bzImage"),
        ];
        for (spec, label, path) in cases {
            let want = Kernel {
                label: label.into(),
                path: path.into(),
            };
            assert_eq!(Kernel::parse(spec, dir), Ok(want), "{spec}");
        }
        for bad in ["", "a b", "x=", "=/p", "../x", "a.b=/p"] {
            assert!(Kernel::parse(bad, dir).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_handler_per_kernel() {
        let kernels = [
            Kernel::parse("default", Path::new("/g")).unwrap(),
            Kernel::parse("debian", Path::new("/g")).unwrap(),
        ];
        let text = handler_config(&kernels);
        for (handler, kernel) in [
            ("microvm-default", "/g/vmlinux"),
            ("microvm-debian", "/g/vmlinux-debian"),
        ] {
            assert!(
                text.contains(&format!(
                    "[runtimes.handlers.\"{handler}\".options]\nkernel = \"{kernel}\"\n"
                )),
                "{text}"
            );
        }
        assert_eq!(text.matches("backend = \"microvm\"").count(), 2);
    }
}
