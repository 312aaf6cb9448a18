//! `cri`: the whole node runtime through CRI, caissond against containerd
//! 1.6 + runc (CRI plugin, cgroupfs), both started by the bench in temp dirs
//! and driven the same way with the `k8s-cri` client over their sockets.
//!
//! 1. Both daemons start; the pause and busybox images are imported
//!    (`caissond images import`, `ctr images import`); each daemon's memory
//!    is read (idle).
//! 2. For each daemon in turn, `--pods` host-network pods are brought up,
//!    each with a running busybox `sleep 3600`; the daemon's memory and its
//!    per-pod processes' (shim + pause) are read, then the pods are removed.
//! 3. One warm-up, then `--runs` timed runs, alternating daemons: RunPodSandbox,
//!    CreateContainer, StartContainer, then StopPodSandbox, RemovePodSandbox.
//! 4. Teardown: every pod removed through CRI, the daemons stopped, what
//!    they left (processes, mounts under the temp dir, cgroups under the
//!    bench's cgroup parents) recorded, then killed, unmounted, removed.
//!
//! * [`daemon`]: a daemon under test and its CRI client.
//! * [`caissond`], [`containerd`]: how each is configured and started.
//! * [`cni`]: `--cni`, the conflist both daemons wire their pods with.
//! * [`workload`]: the pod and container configs.
//! * [`procfs`]: memory, pod processes, mounts and cgroups.
//! * [`report`]: percentiles, the table and the JSON.

pub(crate) mod breakdown;
mod caissond;
mod cni;
mod containerd;
pub(crate) mod daemon;
pub(crate) mod procfs;
pub(crate) mod report;
pub(crate) mod workload;

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use daemon::Daemon;
use procfs::Memory;
use report::{Burst, Latency, MemoryReport, Phases, Side, StatsCalls};

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Command-line options of `cri`.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub pods: usize,
    pub json: Option<PathBuf>,
    /// Pods on a CNI bridge (the same conflist for both) instead of the host network.
    pub cni: bool,
    /// Where caissond's pod start time goes ([`breakdown`]).
    pub phases: bool,
    /// Pods started at once on each daemon (0: no burst).
    pub burst: usize,
    /// Bursts on each daemon, the daemons alternating (ABBA): the machine's
    /// pace drifts between bursts by more than a change moves them.
    pub burst_rounds: usize,
    /// Measure each daemon's idle CPU over this long with the `--pods` pods
    /// running (`--density N` sets `--pods N` and a 10 s window).
    pub idle_cpu_window: Option<std::time::Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 20,
            pods: 10,
            json: None,
            cni: false,
            phases: false,
            burst: 0,
            burst_rounds: 1,
            idle_cpu_window: None,
        }
    }
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the benchmark, prints the table and writes the JSON if asked.
pub fn bench(opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.pods == 0 {
        return Err("--runs and --pods must be at least 1".into());
    }
    if !is_root() {
        return Err(
            "the cri bench must run as root (both daemons make namespaces, mounts and cgroups)"
                .into(),
        );
    }
    let mut sides = Vec::new();
    let (config, leftovers) = in_work_dir("caisson-bench-cri-", opts.cni, |work_dir, pause| {
        measure(opts, work_dir, pause, &mut sides)
    })?;
    for (side, left) in sides.iter_mut().zip(leftovers) {
        side.processes_left = left.processes;
        side.mounts_left = left.mounts;
        side.cgroups_left = left.cgroups;
    }
    report::print(opts, &sides);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report::to_json(opts, &sides, &config))? + "\n";
        fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Names of the two daemons, in the order [`start_daemons`] starts them;
/// each one's dir is `<work dir>/<name>`.
pub const DAEMONS: [&str; 2] = ["caisson", "containerd"];

/// What one daemon left after it was stopped (or dropped).
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Processes running from its dir (shims).
    pub processes: Vec<(u32, String)>,
    pub mounts: Vec<PathBuf>,
    /// Cgroups below its cgroup parent.
    pub cgroups: Vec<PathBuf>,
}

impl Leftovers {
    /// Whether anything was left.
    pub fn any(&self) -> bool {
        !(self.processes.is_empty() && self.mounts.is_empty() && self.cgroups.is_empty())
    }
}

/// Runs `body` with a fresh work dir in /var/tmp (named with `prefix`) and
/// the `caisson-pause` binary, for benchmarks that run both daemons there
/// ([`start_daemons`]). Whatever `body` returns, its daemons are stopped by
/// then (or dropped, which removes their pods and stops them); this then
/// records what each left ([`DAEMONS`] order), kills, unmounts and removes
/// it, the bench's cgroup parents and, with `cni`, the CNI network's
/// leftovers, and removes the work dir unless something is still mounted
/// there. An error of `body` comes first; then any cleanup that failed.
pub fn in_work_dir<T>(
    prefix: &str,
    cni: bool,
    body: impl FnOnce(&Path, &Path) -> Result<T>,
) -> Result<(T, Vec<Leftovers>)> {
    let pause = crate::fixture(
        "building caisson-pause",
        caisson_tests::fixtures::pause_binary,
    )?;
    let parents = [caissond::CGROUP_PARENT, containerd::CGROUP_PARENT];
    // What an interrupted run may have left.
    crate::host::remove_cgroup_parents(&parents)?;
    let work = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")?;
    let work_dir = work.path().to_path_buf();
    let portmap_chains_existed = cni::portmap_chains_exist();
    let result = body(&work_dir, &pause);
    let mut cleanup_errors = Vec::new();
    let leftovers: Vec<Leftovers> = DAEMONS
        .iter()
        .zip(parents)
        .map(|(name, parent)| {
            let dir = work_dir.join(name);
            Leftovers {
                processes: procfs::processes_under(&dir),
                mounts: crate::host::mounts_under(&dir),
                cgroups: crate::host::cgroups_below_parent(parent),
            }
        })
        .collect();
    for (pid, argv) in procfs::processes_under(&work_dir) {
        eprintln!("killing a process left by the bench: {pid} {argv}");
        // SAFETY: kill on a process running from the bench's temp dir.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    if let Err(e) = crate::host::remove_cgroup_parents(&parents) {
        cleanup_errors.push(format!("removing the bench's cgroups: {e}"));
    }
    crate::host::unmount_under(&work_dir);
    if cni {
        cni::cleanup(!portmap_chains_existed);
    }
    let still_mounted = crate::host::mounts_under(&work_dir);
    if !still_mounted.is_empty() {
        // Removing the dir would recurse into what is mounted there.
        let kept = work.keep();
        cleanup_errors.push(format!(
            "still mounted under {}, not removing it: {still_mounted:?}",
            kept.display()
        ));
    }
    for e in &cleanup_errors {
        eprintln!("{e}");
    }
    let value = result?;
    if !cleanup_errors.is_empty() {
        return Err(cleanup_errors.join("; ").into());
    }
    Ok((value, leftovers))
}

/// Starts caissond and containerd, each under `<work>/<name>` ([`DAEMONS`]),
/// with the busybox image (and, for containerd, the pause image) imported.
/// If containerd fails to start, the caissond already started is dropped
/// (its pods removed, stopped).
pub fn start_daemons(work: &Path, pause: &Path, cni: bool) -> Result<Vec<Daemon>> {
    start_daemons_with_metrics(work, pause, cni, None)
}

/// [`start_daemons`], caissond's metrics endpoint on `metrics_port`.
fn start_daemons_with_metrics(
    work: &Path,
    pause: &Path,
    cni: bool,
    metrics_port: Option<u16>,
) -> Result<Vec<Daemon>> {
    eprintln!("starting caissond and containerd under {}", work.display());
    let caisson = caissond::start(&work.join(DAEMONS[0]), pause, cni, metrics_port)?;
    let containerd = containerd::start(&work.join(DAEMONS[1]), pause, cni)?;
    Ok(vec![caisson, containerd])
}

/// Brings up `n` pods, reads the daemon's and their processes' memory
/// (and, over `idle_cpu_window`, the daemon's CPU time), removes them.
fn memory_with_pods(
    daemon: &mut Daemon,
    n: usize,
    idle_cpu_window: Option<std::time::Duration>,
) -> Result<MemoryReport> {
    let mut pods = Vec::new();
    let mut bring_up = Vec::new();
    for _ in 0..n {
        let (id, times) = daemon.start_pod()?;
        pods.push(id);
        bring_up.push(times.total);
    }
    // The idle window first: memory is then read from pods that have
    // settled (a shim lets its idle helpers go).
    let idle_cpu = match idle_cpu_window {
        Some(window) => Some(procfs::cpu_share(&[daemon.pid()], window)?),
        None => None,
    };
    // What kubelet's stats loop costs the node: ListContainerStats over
    // every pod's container, as kubelet's CRI stats provider calls it.
    let stats_calls = match idle_cpu_window {
        Some(_) => Some(stats_calls(daemon, STATS_CALLS)?),
        None => None,
    };
    let mut shims = Memory::default();
    let mut pauses = Memory::default();
    let mut helpers = 0;
    for id in &pods {
        let procs = procfs::pod_processes(daemon.spec.shim_name, &daemon.spec.dir, id)?;
        shims = shims + Memory::of(procs.shim)?;
        for helper in &procs.helpers {
            // A helper may exit between the listing and the read.
            if let Ok(m) = Memory::of(*helper) {
                shims = shims + m;
                helpers += 1;
            }
        }
        pauses = pauses + Memory::of(procs.pause)?;
    }
    let daemon_with_pods = Memory::of(daemon.pid())?;
    let cgroups_with_pods = crate::host::cgroups_below_parent(daemon.spec.cgroup_parent);
    for id in &pods {
        daemon.remove_pod(id)?;
    }
    Ok(MemoryReport {
        daemon_with_pods,
        pods: n,
        shims,
        helpers,
        pauses,
        pods_total: Latency::of(bring_up.clone()),
        pods_in_order: bring_up,
        cgroups_with_pods,
        idle_cpu,
        stats_calls,
        ..Default::default()
    })
}

/// How many ListContainerStats calls `--density` times.
const STATS_CALLS: usize = 10;

/// `calls` ListContainerStats calls (no filter: every container), one after
/// another: their latency and the host's CPU time they took (all processes:
/// the daemon, its shims, what they run), per call.
fn stats_calls(daemon: &Daemon, calls: usize) -> Result<StatsCalls> {
    let busy_before = procfs::host_busy()?;
    let mut latencies = Vec::with_capacity(calls);
    let mut containers = 0;
    for _ in 0..calls {
        let mut c = daemon.client();
        let (reply, took) = daemon.call("ListContainerStats", async move {
            c.list_container_stats(k8s_cri::v1::ListContainerStatsRequest::default())
                .await
        })?;
        containers = reply.stats.len();
        latencies.push(took);
    }
    let cpu = procfs::host_busy()?.saturating_sub(busy_before);
    Ok(StatsCalls {
        containers,
        latency: Latency::of(latencies),
        host_cpu_per_call: cpu / calls as u32,
    })
}

/// Starts `n` pods (each with its container) at once on `daemon`, one
/// thread each, and removes them: each pod's time to running and the time
/// until all were running.
fn burst(daemon: &mut Daemon, n: usize) -> Result<Burst> {
    let barrier = std::sync::Barrier::new(n);
    let busy_before = procfs::host_busy()?;
    let started = std::time::Instant::now();
    let shared: &Daemon = daemon;
    // Errors cross the threads as text (the bench's error type is not Send).
    type Started = std::result::Result<(String, std::time::Duration), String>;
    let results: Vec<Started> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || -> Started {
                    barrier.wait();
                    let t = std::time::Instant::now();
                    let (pod, _, _) = shared
                        .start_named_pod(&format!("burst-{i}"), &workload::COMMAND)
                        .map_err(|e| e.to_string())?;
                    Ok((pod, t.elapsed()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a burst thread panicked".into()))
            })
            .collect()
    });
    let all_running = started.elapsed();
    let host_cpu = procfs::host_busy()?.saturating_sub(busy_before);
    let mut per_pod = Vec::new();
    let mut first_error = None;
    for r in results {
        match r {
            Ok((pod, took)) => {
                per_pod.push(took);
                daemon.remove_pod(&pod)?;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    Ok(Burst {
        pods: n,
        per_pod: Latency::of(per_pod),
        all_running,
        host_cpu,
    })
}

/// Starts both daemons, measures, and stops them; fills `sides` as it goes
/// so that the caller can report what was left even after an error.
/// Returns both daemons' configs, for the JSON.
fn measure(
    opts: &Options,
    work: &Path,
    pause: &Path,
    sides: &mut Vec<Side>,
) -> Result<serde_json::Value> {
    let metrics_port = opts.phases.then(breakdown::free_port).transpose()?;
    let mut daemons = start_daemons_with_metrics(work, pause, opts.cni, metrics_port)?;
    let config = json!({
        "caissond": fs::read_to_string(work.join(DAEMONS[0]).join("caisson.toml"))?,
        "containerd": fs::read_to_string(work.join(DAEMONS[1]).join("config.toml"))?,
    });
    for d in &daemons {
        sides.push(Side {
            name: d.name(),
            binary: d.spec.binary.clone(),
            version: d.spec.version.clone(),
            ..Default::default()
        });
    }
    for (d, side) in daemons.iter().zip(sides.iter_mut()) {
        side.memory.daemon_idle = Memory::of(d.pid())?;
    }

    for (d, side) in daemons.iter_mut().zip(sides.iter_mut()) {
        eprintln!(
            "{}: {} pods, each with a running container",
            d.name(),
            opts.pods
        );
        let idle = side.memory.daemon_idle;
        side.memory = memory_with_pods(d, opts.pods, opts.idle_cpu_window)?;
        side.memory.daemon_idle = idle;
    }

    let mut starts = vec![Vec::new(); daemons.len()];
    let mut stops = vec![Vec::new(); daemons.len()];
    let mut phase_sums = None;
    for run in 0..=opts.runs {
        if run == 0 {
            eprintln!("warm-up: one pod on each daemon");
        } else {
            if let (1, Some(port)) = (run, metrics_port) {
                phase_sums = Some(breakdown::scrape(port)?);
            }
            eprintln!("run {run}/{}", opts.runs);
        }
        // Alternate which daemon goes first.
        let mut order: Vec<usize> = (0..daemons.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (pod, start) = daemons[i].start_pod()?;
            let stop = daemons[i].remove_pod(&pod)?;
            if run > 0 {
                starts[i].push(start);
                stops[i].push(stop);
            }
        }
    }

    if let (Some(before), Some(port)) = (&phase_sums, metrics_port) {
        let after = breakdown::scrape(port)?;
        sides[0].breakdown = Some(breakdown::Breakdown::between(before, &after, opts.runs));
    }

    if opts.burst > 0 {
        let rounds = opts.burst_rounds.max(1);
        for round in 0..rounds {
            // ABBA: each daemon goes first as often as second.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let d = &mut daemons[i];
                eprintln!(
                    "{}: a burst of {} pods at once ({}/{rounds})",
                    d.name(),
                    opts.burst,
                    round + 1
                );
                let b = burst(d, opts.burst)?;
                sides[i].bursts.push(b);
            }
        }
    }

    eprintln!("teardown");
    for (i, (d, side)) in daemons.iter_mut().zip(sides.iter_mut()).enumerate() {
        side.phases = Phases::of(&starts[i], &stops[i]);
        side.memory.daemon_after = Memory::of(d.pid())?;
        let removed = d.remove_all_pods()?;
        if removed > 0 {
            eprintln!("{}: removed {removed} pods left listed", d.name());
        }
        let (exit, killed) = d.stop()?;
        side.exit = exit;
        side.killed = killed;
    }
    Ok(config)
}
