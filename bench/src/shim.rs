//! `shim`: one pod's shim, `containerd-shim-caisson-v2` against containerd
//! 1.6's `containerd-shim-runc-v2`, driven the same way: the `start`
//! subcommand as containerd runs it, then raw ttrpc requests to
//! `containerd.task.v2.Task`.
//!
//! For each shim: a pause sandbox is started, then every run writes a
//! busybox bundle (untimed), times `start` + connect + `Create` + `Start` of a
//! container joining the pod's namespaces, and (untimed) kills, waits for and
//! deletes it. Runs alternate between the shims. Then one container is left
//! running in each pod and the shim's and pause's memory is read from /proc.
//! Teardown checks that shims, pauses and sockets are gone, and removes the
//! bench's cgroups.
//!
//! The pods' dirs are laid out as caissond lays them out ([`node`]), and
//! Caisson's shim is told so, as caissond tells it: its builds see their
//! pod's view of the node's mounts. With `--node-pods N`, N other pods'
//! mounts are on the node, and a third side runs Caisson's shim without
//! the view (every build sees every pod's mounts), as it was before.
//!
//! * [`pod`]: a shim under test and its pod.
//! * [`node`]: the pods' dirs and other pods' mounts.
//! * [`task_api`]: the Task API over raw ttrpc, and a fake events service.
//! * [`procfs`]: memory, process exit and cgroups, from /proc and /sys.

mod node;
mod pod;
mod procfs;
mod task_api;

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::measure::{percentile, ratio};
use pod::{Flavor, Pod, Shim, Timing};
use procfs::Memory;

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

const CAISSON_SHIM: &str = "containerd-shim-caisson-v2";
const RUNC_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

/// Command-line options of `shim`.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub json: Option<PathBuf>,
    /// Other pods' mounts on the node (three each).
    pub node_pods: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 20,
            json: None,
            node_pods: 0,
        }
    }
}

/// The third side's name: Caisson's shim without the pod's view.
const ALL_MOUNTS: &str = "caisson-all-mounts";

/// Caisson's release shim, beside this executable.
fn caisson_shim() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or("the bench's executable has no parent dir")?;
    let shim = dir.join(CAISSON_SHIM);
    if !shim.is_file() {
        return Err(format!(
            "{} not found: run `make release` (the static release shim; `cargo build \
             --release -p caisson-sandbox` builds a dynamic one)",
            shim.display()
        )
        .into());
    }
    Ok(shim)
}

/// runc's shim and runc itself, from Debian's packages.
fn runc_shim() -> Result<PathBuf> {
    let shim = PathBuf::from(RUNC_SHIM);
    if !shim.is_file() {
        return Err(
            format!("{RUNC_SHIM} not found: install the Debian package `containerd`").into(),
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|d| d.join("runc").is_file()) {
        return Err(
            "`runc` not found on PATH (runc's shim runs it): install the Debian package `runc`"
                .into(),
        );
    }
    Ok(shim)
}

/// What `<shim> -v` says: its `Version:` line (runc's shim) or its first line.
fn version(binary: &Path) -> String {
    let out = std::process::Command::new(binary).arg("-v").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .iter()
        .find(|l| l.starts_with("Version:"))
        .or(lines.first())
        .map(|l| l.to_string())
        .unwrap_or_default()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// p50/p90/p99/min of one series.
#[derive(Debug, Clone)]
struct Latency {
    runs: Vec<Duration>,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    min: Duration,
}

impl Latency {
    fn of(runs: Vec<Duration>) -> Latency {
        let mut sorted = runs.clone();
        sorted.sort();
        Latency {
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            min: sorted.first().copied().unwrap_or_default(),
            runs,
        }
    }

    fn json(&self) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        json!({
            "runs_ms": self.runs.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
            "min_ms": ms(self.min),
        })
    }
}

/// Everything measured for one shim.
struct Side {
    name: &'static str,
    binary: PathBuf,
    version: String,
    start_cmd: Latency,
    rpcs: Latency,
    total: Latency,
    shim_pod_only: Memory,
    shim: Memory,
    /// The shim's RSS by mapping (pod + 1 container), largest first.
    shim_mappings: Vec<(String, u64)>,
    pause: Memory,
    events: usize,
    /// Cgroup hierarchies the running container was placed in.
    hierarchies: Vec<String>,
    shim_exit: Duration,
}

/// How many of a shim's largest mappings the table lists (the JSON has all).
const MAPPINGS_SHOWN: usize = 12;

/// Runs the benchmark, prints the table and writes the JSON if asked.
pub fn bench(opts: &Options) -> Result<()> {
    if opts.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if !is_root() {
        return Err(
            "the shim bench must run as root (shims create namespaces, cgroups and mounts)".into(),
        );
    }
    let mut binaries = vec![
        ("caisson", Flavor::Caisson, caisson_shim()?),
        ("runc", Flavor::Runc, runc_shim()?),
    ];
    if opts.node_pods > 0 {
        binaries.push((ALL_MOUNTS, Flavor::Caisson, caisson_shim()?));
    }
    // What an earlier, interrupted run may have left.
    crate::host::remove_cgroup_parents(&[procfs::CGROUP_PARENT])?;
    let work = tempfile::Builder::new()
        .prefix("caisson-bench-shim-")
        .tempdir()?;
    let result = measure(opts, &binaries, work.path());
    let cleanup = crate::host::remove_cgroup_parents(&[procfs::CGROUP_PARENT]);
    match (&result, &cleanup) {
        (_, Ok(found)) if !found.killed.is_empty() => {
            eprintln!(
                "killed processes left in the bench's cgroups: {:?}",
                found.killed
            )
        }
        (Err(_), Err(e)) => eprintln!("cleaning up the bench's cgroups: {e}"),
        _ => {}
    }
    // runc's state root for the namespace: empty once its tasks are deleted.
    let _ = fs::remove_dir(Path::new("/run/containerd/runc").join(pod::NAMESPACE));
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts.contains(&work.path().display().to_string()) {
        // Removing the dir would recurse into what is mounted there.
        let kept = work.keep();
        eprintln!("a mount under {} is left: not removing it", kept.display());
    }
    let sides = result?;
    let leftovers = cleanup?;
    print(opts, &sides, &leftovers);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&to_json(opts, &sides, &leftovers))? + "\n";
        fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Starts both pods, runs the containers, reads memory, tears down.
fn measure(
    opts: &Options,
    binaries: &[(&'static str, Flavor, PathBuf)],
    work: &Path,
) -> Result<Vec<Side>> {
    let node = node::Node::make(work, opts.node_pods)?;
    let shims = binaries
        .iter()
        .map(|(name, flavor, binary)| {
            let view = (*name == "caisson").then(|| node.roots.clone());
            Shim::new(name, *flavor, binary.clone(), work, node.pods(), view)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut pods = Vec::new();
    for shim in &shims {
        eprintln!(
            "{}: starting a pause pod with {}",
            shim.name,
            shim.binary.display()
        );
        pods.push(Pod::start(shim)?);
    }
    let pod_only = pods
        .iter()
        .map(|p| Memory::of(p.shim_pid))
        .collect::<Result<Vec<_>>>()?;

    eprintln!("warm-up: one container in each pod");
    for pod in &mut pods {
        let (id, dir) = pod.container_bundle()?;
        let (container, _) = pod.start_container(&id, &dir)?;
        pod.stop_container(container)?;
    }
    let mut timings: Vec<Vec<Timing>> = vec![Vec::new(); pods.len()];
    for run in 0..opts.runs {
        eprintln!("run {}/{}", run + 1, opts.runs);
        // Alternate which shim goes first.
        let mut order: Vec<usize> = (0..pods.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let pod = &mut pods[i];
            let (id, dir) = pod.container_bundle()?;
            let (container, timing) = pod.start_container(&id, &dir)?;
            pod.stop_container(container)?;
            timings[i].push(timing);
        }
    }

    eprintln!("memory: each pod with one running container");
    let mut running = Vec::new();
    for pod in &mut pods {
        let (id, dir) = pod.container_bundle()?;
        running.push(pod.start_container(&id, &dir)?.0);
    }
    let memory = pods.iter().map(Pod::memory).collect::<Result<Vec<_>>>()?;
    let mappings = pods
        .iter()
        .map(|pod| procfs::rss_by_mapping(pod.shim_pid))
        .collect::<Result<Vec<_>>>()?;
    let hierarchies = pods
        .iter()
        .zip(&running)
        .map(|(pod, c)| pod.container_hierarchies(c))
        .collect::<Result<Vec<_>>>()?;
    for (pod, container) in pods.iter_mut().zip(running) {
        pod.stop_container(container)?;
    }

    eprintln!("teardown");
    let mut sides = Vec::new();
    let all = pods
        .into_iter()
        .zip(timings)
        .zip(pod_only)
        .zip(memory)
        .zip(mappings)
        .zip(hierarchies);
    for (((((pod, timings), pod_only), (shim_mem, pause_mem)), shim_mappings), hierarchies) in all {
        let shim = pod.shim;
        let teardown = pod.close()?;
        let series = |f: fn(&Timing) -> Duration| Latency::of(timings.iter().map(f).collect());
        sides.push(Side {
            name: shim.name,
            binary: shim.binary.clone(),
            version: version(&shim.binary),
            start_cmd: series(|t| t.start_cmd),
            rpcs: series(|t| t.rpcs),
            total: series(|t| t.total),
            shim_pod_only: pod_only,
            shim: shim_mem,
            shim_mappings,
            pause: pause_mem,
            events: shim.events_forwarded(),
            hierarchies,
            shim_exit: teardown.shim_exit,
        });
    }
    Ok(sides)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print(opts: &Options, sides: &[Side], leftovers: &crate::host::CgroupCleanup) {
    let [caisson, runc, others @ ..] = sides else {
        return;
    };
    println!();
    println!(
        "shim: one pause pod per shim; {} busybox containers each after one warm-up, alternating; \
         {} other pods' mounts on the node ({} mounts)",
        opts.runs,
        opts.node_pods,
        3 * opts.node_pods
    );
    println!(
        "  caisson: {} {}",
        caisson.binary.display(),
        caisson.version
    );
    println!("  runc:    {} {}", runc.binary.display(), runc.version);
    println!();
    println!(
        "  {:<32} {:>8} {:>8} {:>8} {:>8}",
        "container create+start, ms", "p50", "p90", "p99", "min"
    );
    let row = |name: &str, l: &Latency| {
        println!(
            "  {:<32} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name,
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.min)
        );
    };
    for side in sides {
        row(&format!("{} start+Create+Start", side.name), &side.total);
        row("  `start` subcommand", &side.start_cmd);
        row("  connect+Create+Start", &side.rpcs);
    }
    println!();
    for side in std::iter::once(caisson).chain(others) {
        println!(
            "  {} / runc at p50: total {:.2}, `start` {:.2}, Create+Start {:.2}",
            side.name,
            ratio(ms(side.total.p50), ms(runc.total.p50)),
            ratio(ms(side.start_cmd.p50), ms(runc.start_cmd.p50)),
            ratio(ms(side.rpcs.p50), ms(runc.rpcs.p50)),
        );
    }
    if let Some(all) = others.iter().find(|s| s.name == ALL_MOUNTS) {
        println!(
            "  caisson (its pod's view) / {ALL_MOUNTS} at p50: Create+Start {:.2}",
            ratio(ms(caisson.rpcs.p50), ms(all.rpcs.p50)),
        );
    }
    println!();
    println!(
        "  {:<32} {:>9} {:>9} {:>13}",
        "memory, KiB (pod + 1 container)", "caisson", "runc", "caisson/runc"
    );
    let mem_row = |name: &str, a: Option<u64>, b: Option<u64>| {
        let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let r = match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", ratio(a as f64, b as f64)),
            _ => "-".to_string(),
        };
        println!("  {:<32} {:>9} {:>9} {:>13}", name, show(a), show(b), r);
    };
    let (c, r) = (&caisson.shim, &runc.shim);
    mem_row("shim VmRSS", Some(c.vm_rss), Some(r.vm_rss));
    mem_row("  RssAnon", Some(c.rss_anon), Some(r.rss_anon));
    mem_row("  RssFile", Some(c.rss_file), Some(r.rss_file));
    mem_row("shim Pss", c.pss, r.pss);
    mem_row("shim threads", Some(c.threads), Some(r.threads));
    mem_row(
        "shim VmRSS, pod only (start)",
        Some(caisson.shim_pod_only.vm_rss),
        Some(runc.shim_pod_only.vm_rss),
    );
    mem_row(
        "pause VmRSS",
        Some(caisson.pause.vm_rss),
        Some(runc.pause.vm_rss),
    );
    for side in sides {
        let shown: Vec<String> = side
            .shim_mappings
            .iter()
            .take(MAPPINGS_SHOWN)
            .map(|(object, kib)| format!("{object} {kib}"))
            .collect();
        println!(
            "  {} shim's RSS by mapping, KiB: {}",
            side.name,
            shown.join(", ")
        );
    }
    println!();
    println!(
        "  events forwarded: caisson {}, runc {}; shim exit after Shutdown: caisson {:.1} ms, runc {:.1} ms",
        caisson.events,
        runc.events,
        ms(caisson.shim_exit),
        ms(runc.shim_exit)
    );
    for side in sides {
        println!(
            "  {} container's cgroup /{}/<id> in {} hierarchies: {}",
            side.name,
            procfs::CGROUP_PARENT,
            side.hierarchies.len(),
            side.hierarchies.join(" ")
        );
    }
    println!(
        "  cgroups left under /sys/fs/cgroup/*/{} (removed): {}; processes left in them: {}",
        procfs::CGROUP_PARENT,
        leftovers.left.len(),
        leftovers.killed.len()
    );
}

fn to_json(opts: &Options, sides: &[Side], leftovers: &crate::host::CgroupCleanup) -> Value {
    let side_json = |s: &Side| {
        json!({
            "binary": s.binary.display().to_string(),
            "version": s.version,
            "create_start": {
                "total": s.total.json(),
                "start_subcommand": s.start_cmd.json(),
                "connect_create_start": s.rpcs.json(),
            },
            "memory": {
                "shim_pod_only": s.shim_pod_only.json(),
                "shim_pod_and_one_container": s.shim.json(),
                "shim_rss_kib_by_mapping": s.shim_mappings.iter().map(|(o, k)| json!([o, k])).collect::<Vec<_>>(),
                "pause": s.pause.json(),
            },
            "events_forwarded": s.events,
            "container_cgroup_hierarchies": s.hierarchies,
            "shim_exit_after_shutdown_ms": ms(s.shim_exit),
        })
    };
    let mut out = json!({
        "benchmark": "shim",
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        },
        "options": {"runs": opts.runs, "warmup_runs": 1, "node_pods": opts.node_pods},
        "percentiles": "nearest rank",
        "start_command": format!(
            "TTRPC_ADDRESS=unix://<events.sock> GOMAXPROCS=2 CAISSON_SHIM_RUN_DIR=<dir> <shim> -namespace {} -address {} -publish-binary {} -id <id> start  (cwd = bundle)",
            pod::NAMESPACE, pod::CONTAINERD_ADDRESS, pod::PUBLISH_BINARY
        ),
        "cgroups_left_and_removed": leftovers.left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "processes_left_and_killed": leftovers.killed,
    });
    for s in sides {
        out[s.name] = side_json(s);
    }
    if let [c, r, ..] = sides {
        out["ratio_caisson_over_runc"] = json!({
            "total_p50": ratio(ms(c.total.p50), ms(r.total.p50)),
            "start_subcommand_p50": ratio(ms(c.start_cmd.p50), ms(r.start_cmd.p50)),
            "connect_create_start_p50": ratio(ms(c.rpcs.p50), ms(r.rpcs.p50)),
            "shim_vm_rss": ratio(c.shim.vm_rss as f64, r.shim.vm_rss as f64),
            "shim_pss": match (c.shim.pss, r.shim.pss) {
                (Some(a), Some(b)) => json!(ratio(a as f64, b as f64)),
                _ => Value::Null,
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary() {
        let l = Latency::of([5, 1, 3].map(Duration::from_millis).to_vec());
        assert_eq!(
            (l.min, l.p50, l.p99),
            (
                Duration::from_millis(1),
                Duration::from_millis(3),
                Duration::from_millis(5)
            )
        );
        assert_eq!(l.runs[0], Duration::from_millis(5), "runs keep their order");
    }
}
