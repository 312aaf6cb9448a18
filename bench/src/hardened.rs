//! `hardened`: what the hardened backend costs, against the native backend,
//! gVisor (Debian's `runsc` through the `oci` backend, [`runsc`]) and runc
//! run through the `oci` delegation backend, in one run of one caissond
//! ([`crate::caissond`] with [`HANDLERS_CONFIG`] and
//! [`runsc::HANDLER_CONFIG`]: handlers `runc` → native, `hardened` →
//! hardened, `runsc` → oci with `runtime_path = "/usr/bin/runsc"` and
//! `runc-oci` → oci with `runtime_path = "/usr/sbin/runc"`).
//!
//! 1. One pod per handler, each with a busybox + `caisson-probe` container
//!    sleeping; in each, by ExecSync, `--reps` times round-robin over the
//!    handlers: `caisson-probe bench getpid`, `bench openread` (open, read
//!    4 KiB, close `/etc/passwd`), and a busybox `tar` of a tree of small
//!    files (create an archive, extract it elsewhere), timed inside the
//!    container by `caisson-probe bench run`. Medians; ratios to native.
//!    Under runsc the two loops run [`runsc::ITERATION_DIVISOR`] times
//!    fewer iterations (ns/op is per iteration whatever their number). In
//!    the native pod also `bench getpid-allow-all`: the getpid loop under a
//!    one-instruction filter that allows everything, i.e. what having any
//!    seccomp filter costs a syscall, however the filter is written.
//! 2. Pod start latency: `--runs` times, handlers alternating,
//!    RunPodSandbox + CreateContainer + StartContainer; p50 and p90. With
//!    `--phases`, caissond's own phase timings (its metrics endpoint,
//!    scraped around each start, as `cri --phases` does) per handler: which
//!    step a handler's extra time is in.
//! 3. Memory: `--pods` pods of one handler at a time, each with a sleeping
//!    container; the Pss of every process they add (shims, pause, container
//!    processes; runsc's Sentry, Gofers and ptrace stubs) from
//!    `/proc/<pid>/smaps_rollup`, per pod, and by kind of process.
//! 4. The allow-list's coverage of the x86-64 syscall table: the names the
//!    hardened filter allows (from `hardened_profile`, the filter the backend
//!    installs) against `__NR_*` in the installed kernel headers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use caisson_tests::fixtures::{probe_binary, probe_image, PROBE_NAME, PROBE_PATH};
use k8s_cri::v1 as cri;
use oci_spec::runtime::LinuxSeccompAction;
use serde_json::json;

use crate::caissond::{Caissond, Dir, Setup};
use crate::cri::breakdown::{self, Breakdown, Sums};
use crate::cri::Result;

mod runsc;

/// The handlers beside caissond's `runc` → native.
const HANDLERS_CONFIG: &str = r#"[runtimes.handlers.hardened]
backend = "hardened"
[runtimes.handlers.runc-oci]
backend = "oci"
[runtimes.handlers.runc-oci.options]
runtime_path = "/usr/sbin/runc"
"#;

/// Command-line options of `hardened`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timed pod starts per handler.
    pub runs: usize,
    /// Pods per handler for the memory reading.
    pub pods: usize,
    /// Repetitions of each in-container benchmark per handler.
    pub reps: usize,
    /// Scrape caissond's phase timings around each timed pod start.
    pub phases: bool,
    pub json: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 20,
            pods: 5,
            reps: 5,
            phases: false,
            json: None,
        }
    }
}

/// One column of the table: a runtime handler, and whether the container
/// asks for the RuntimeDefault seccomp profile (kubelet's default pod asks
/// for none; `--seccomp-default` or a pod's securityContext adds it).
struct Variant {
    name: &'static str,
    handler: &'static str,
    runtime_default: bool,
    /// `allowPrivilegeEscalation: false` (the restricted Pod Security
    /// Standard): the container asks for no_new_privs.
    no_new_privs: bool,
    /// Divides the syscall loops' iterations (gVisor's ptrace platform
    /// is hundreds of times slower per syscall).
    iteration_divisor: u64,
}

/// The columns; native first (the ratios' base), hardened second.
const HANDLERS: [Variant; 6] = [
    Variant {
        name: "native",
        handler: "runc",
        runtime_default: false,
        no_new_privs: false,
        iteration_divisor: 1,
    },
    Variant {
        name: "hardened",
        handler: "hardened",
        runtime_default: false,
        no_new_privs: false,
        iteration_divisor: 1,
    },
    Variant {
        name: "runsc (gVisor)",
        handler: "runsc",
        runtime_default: false,
        no_new_privs: false,
        iteration_divisor: runsc::ITERATION_DIVISOR,
    },
    Variant {
        name: "runc (oci)",
        handler: "runc-oci",
        runtime_default: false,
        no_new_privs: false,
        iteration_divisor: 1,
    },
    // Any seccomp filter sends every syscall through the kernel's slower
    // entry path: this column separates that cost from the allow-list's.
    Variant {
        name: "native+RuntimeDefault",
        handler: "runc",
        runtime_default: true,
        no_new_privs: false,
        iteration_divisor: 1,
    },
    // With no_new_privs the filter is loaded by the shim's executor from a
    // program compiled once per node; without it libcontainer compiles it
    // in every container (13 ms for RuntimeDefault's three architectures).
    Variant {
        name: "RuntimeDefault+nnp",
        handler: "runc",
        runtime_default: true,
        no_new_privs: true,
        iteration_divisor: 1,
    },
];
const GETPID_ITERATIONS: u64 = 2_000_000;
const OPENREAD_ITERATIONS: u64 = 200_000;
const TREE_FILES: &str = "2000";
const TAR_RUNS: &str = "3";
/// In the pod's /dev/shm (tmpfs): the disk under the rootfs made the same
/// tar on overlay vary by 2× between containers of one run, hiding what the
/// handlers cost; in memory it measures the syscalls and the kernel work.
const TAR_SCRIPT: &str = "rm -rf /dev/shm/x /dev/shm/tree.tar && mkdir /dev/shm/x \
    && tar -cf /dev/shm/tree.tar -C /dev/shm tree && tar -xf /dev/shm/tree.tar -C /dev/shm/x";
/// The kernel's x86-64 syscall table as the installed uapi headers give it.
const UNISTD_64: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";

/// Medians of one handler's measurements.
#[derive(Debug, Clone, Default)]
struct Results {
    getpid_ns: Vec<f64>,
    /// getpid under a one-instruction allow-all filter (native only).
    getpid_allow_all_ns: Vec<f64>,
    openread_ns: Vec<f64>,
    tar_ms: Vec<f64>,
    start_ms: Vec<f64>,
    pss_kib_per_pod: f64,
    processes_per_pod: f64,
    /// Pss per pod by kind of process ([`runsc::process_kind`]).
    pss_kib_by_kind: BTreeMap<String, f64>,
    /// `--phases`: caissond's phase time over the timed starts.
    phase_sums: Sums,
}

impl Results {
    /// Milliseconds per timed start of each of caissond's phases.
    fn phases(&self) -> Breakdown {
        Breakdown::between(&Sums::new(), &self.phase_sums, self.start_ms.len())
    }
}

/// Nearest-rank percentile `p` of unsorted values (0 when there is none).
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    crate::measure::percentile(&v, p)
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

fn probe_container(name: &str, runtime_default: bool, no_new_privs: bool) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: PROBE_NAME.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: format!("{name}.log"),
        // What kubelet sends for a pod without shareProcessNamespace.
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                seccomp: runtime_default.then(|| cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    ..Default::default()
                }),
                no_new_privs,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod config with its own log dir (made, as kubelet makes it).
fn pod_config(d: &Caissond, name: &str) -> Result<cri::PodSandboxConfig> {
    let logs = d.dir().join("logs").join(name);
    std::fs::create_dir_all(&logs)?;
    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        ..Default::default()
    })
}

/// RunPodSandbox + CreateContainer + StartContainer: the pod's and the
/// container's ids and how long the three calls took.
fn start_pod(d: &Caissond, name: &str, variant: &Variant) -> Result<(String, String, Duration)> {
    let config = pod_config(d, name)?;
    let started = Instant::now();
    let (pod, ctr) = d.run_pod_with_container(
        config,
        variant.handler,
        probe_container("probe", variant.runtime_default, variant.no_new_privs),
    )?;
    Ok((pod, ctr, started.elapsed()))
}

/// ns/op from a `caisson-probe bench` line, run by ExecSync.
fn probe_bench(d: &Caissond, ctr: &str, args: &[&str]) -> Result<f64> {
    let mut cmd = vec![PROBE_PATH.to_string(), "bench".into()];
    cmd.extend(args.iter().map(|s| s.to_string()));
    let request = cri::ExecSyncRequest {
        container_id: ctr.into(),
        cmd: cmd.clone(),
        timeout: 600,
    };
    let out = d.call(
        "ExecSync",
        |mut c| async move { c.exec_sync(request).await },
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.exit_code != 0 {
        return Err(format!(
            "{cmd:?} exited {}: {stdout} {}",
            out.exit_code,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    stdout
        .lines()
        .last()
        .and_then(|l| l.split('\t').nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{cmd:?}: no ns/op in {stdout:?}").into())
}

/// Pss (KiB) of a process, 0 if it is gone.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| crate::measure::proc_field(&t, "Pss"))
        .unwrap_or(0)
}

fn syscall_costs(d: &Caissond, opts: &Options, results: &mut [Results]) -> Result<()> {
    let mut pods = Vec::new();
    for (i, variant) in HANDLERS.iter().enumerate() {
        let name = format!("syscalls-{}-{i}", variant.handler);
        let (pod, ctr, _) = start_pod(d, &name, variant)?;
        probe_bench(d, &ctr, &["mktree", "/dev/shm/tree", TREE_FILES]).map_err(|e| {
            let log = d.dir().join("logs").join(&name).join("probe.log");
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            format!(
                "{e}\n--- the container's output ({}) ---\n{output}",
                log.display()
            )
        })?;
        pods.push((pod, ctr));
    }
    for rep in 0..opts.reps {
        eprintln!("syscall costs: repetition {}/{}", rep + 1, opts.reps);
        // Rotate which handler goes first: the page cache and the
        // writeback one tar leaves behind land on whoever runs next.
        for k in 0..pods.len() {
            let i = (rep + k) % pods.len();
            let ctr = &pods[i].1;
            let r = &mut results[i];
            let divisor = HANDLERS[i].iteration_divisor;
            let getpid = (GETPID_ITERATIONS / divisor).to_string();
            let openread = (OPENREAD_ITERATIONS / divisor).to_string();
            r.getpid_ns.push(probe_bench(d, ctr, &["getpid", &getpid])?);
            // What any filter costs, whatever its length: the same loop in
            // the filterless native pod after loading a filter that allows
            // everything.
            if i == 0 {
                r.getpid_allow_all_ns
                    .push(probe_bench(d, ctr, &["getpid-allow-all", &getpid])?);
            }
            r.openread_ns.push(probe_bench(
                d,
                ctr,
                &["openread", &openread, "/etc/passwd"],
            )?);
            // Start from clean pages: what the last run wrote is on disk.
            probe_bench(d, ctr, &["run", "1", "--", "sync"])?;
            let ns = probe_bench(d, ctr, &["run", TAR_RUNS, "--", "sh", "-c", TAR_SCRIPT])?;
            r.tar_ms.push(ns / 1e6);
        }
    }
    for (pod, _) in &pods {
        d.stop_and_remove_pod(pod)?;
    }
    Ok(())
}

fn start_latency(
    d: &Caissond,
    opts: &Options,
    metrics_port: Option<u16>,
    results: &mut [Results],
) -> Result<()> {
    let scrape = || metrics_port.map(breakdown::scrape).transpose();
    for run in 0..=opts.runs {
        let mut order: Vec<usize> = (0..HANDLERS.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let variant = &HANDLERS[i];
            let name = format!("start-{}-{i}-{run}", variant.handler);
            let before = scrape()?;
            let (pod, _, took) = start_pod(d, &name, variant)?;
            let after = scrape()?;
            d.stop_and_remove_pod(&pod)?;
            // Run 0 is the warm-up.
            if run > 0 {
                results[i].start_ms.push(took.as_secs_f64() * 1e3);
                if let (Some(before), Some(after)) = (before, after) {
                    let sums = &mut results[i].phase_sums;
                    for (call, phase, ms) in Breakdown::between(&before, &after, 1).rows {
                        *sums.entry((call, phase)).or_default() += ms / 1e3;
                    }
                }
            }
        }
    }
    Ok(())
}

fn memory(d: &Caissond, opts: &Options, results: &mut [Results]) -> Result<()> {
    for (i, variant) in HANDLERS.iter().enumerate() {
        let (name, handler) = (variant.name, variant.handler);
        eprintln!("memory: {} {name} pods", opts.pods);
        let before: BTreeSet<u32> = d.processes().into_iter().collect();
        let mut pods = Vec::new();
        for n in 0..opts.pods {
            pods.push(start_pod(d, &format!("memory-{handler}-{i}-{n}"), variant)?.0);
        }
        let added: Vec<u32> = d
            .processes()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        let mut pss = 0;
        for pid in &added {
            let kib = pss_kib(*pid);
            pss += kib;
            let cmdline = caisson_tests::daemon::cmdline(*pid).unwrap_or_default();
            *results[i]
                .pss_kib_by_kind
                .entry(runsc::process_kind(&cmdline))
                .or_default() += kib as f64 / opts.pods as f64;
        }
        results[i].pss_kib_per_pod = pss as f64 / opts.pods as f64;
        results[i].processes_per_pod = added.len() as f64 / opts.pods as f64;
        for pod in &pods {
            d.stop_and_remove_pod(pod)?;
        }
    }
    Ok(())
}

/// How much of the syscall table the hardened filter denies.
#[derive(Debug, Clone, Default)]
struct Coverage {
    table: usize,
    unconditional: usize,
    with_arguments: usize,
    denied: usize,
    /// Allowed names the header does not know (newer syscalls).
    not_in_table: Vec<String>,
}

fn coverage() -> Result<Coverage> {
    let header = std::fs::read_to_string(UNISTD_64)
        .map_err(|e| format!("{UNISTD_64}: {e} (linux-libc-dev)"))?;
    let table: BTreeSet<String> = header
        .lines()
        .filter_map(|l| l.strip_prefix("#define __NR_"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    if table.len() < 300 {
        return Err(format!("{UNISTD_64} names only {} syscalls", table.len()).into());
    }
    let profile = caisson_sandbox::backend::hardened::seccomp::hardened_profile(None);
    let mut allowed: BTreeMap<String, bool> = BTreeMap::new();
    for rule in profile.syscalls().clone().unwrap_or_default() {
        if !matches!(
            rule.action(),
            LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog
        ) {
            continue;
        }
        let conditional = rule.args().as_ref().is_some_and(|a| !a.is_empty());
        for name in rule.names() {
            let entry = allowed.entry(name.clone()).or_insert(conditional);
            *entry = *entry && conditional;
        }
    }
    let in_table = |n: &String| table.contains(n);
    Ok(Coverage {
        table: table.len(),
        unconditional: allowed.iter().filter(|(n, c)| in_table(n) && !**c).count(),
        with_arguments: allowed.iter().filter(|(n, c)| in_table(n) && **c).count(),
        denied: table.iter().filter(|n| !allowed.contains_key(*n)).count(),
        not_in_table: allowed.keys().filter(|n| !in_table(n)).cloned().collect(),
    })
}

/// Runs the benchmark, prints the table and writes the JSON if asked.
pub fn bench(opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.pods == 0 || opts.reps == 0 {
        return Err("--runs, --pods and --reps must be at least 1".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the hardened bench must run as root (it runs pods)".into());
    }
    if !std::path::Path::new("/usr/sbin/runc").is_file() {
        return Err("/usr/sbin/runc not found: install Debian's runc (`make deps`)".into());
    }
    if !std::path::Path::new(runsc::RUNSC).is_file() {
        return Err(format!(
            "{} not found: install Debian's runsc (`make deps`)",
            runsc::RUNSC
        )
        .into());
    }
    let coverage = coverage()?;
    let pause = crate::fixture("caisson-pause", caisson_tests::fixtures::pause_binary)?;
    let image = crate::fixture("the probe image", || probe_image(&probe_binary()))?;
    let mut results = vec![Results::default(); HANDLERS.len()];
    // Dropping the daemon removes every pod, process, mount and cgroup it
    // made, after an error too.
    let metrics_port = opts.phases.then(breakdown::free_port).transpose()?;
    let mut config = format!("{HANDLERS_CONFIG}{}", runsc::HANDLER_CONFIG);
    if let Some(port) = metrics_port {
        config.push_str(&format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"));
    }
    let d = Caissond::start(Setup {
        dir: Dir::Temp("caisson-bench-hardened-"),
        pause: &pause,
        cgroup_parent: "/caisson-bench-hardened",
        extra_config: &config,
    })?;
    eprintln!("caissond under {}", d.dir().display());
    d.import_image(&image)?;
    syscall_costs(&d, opts, &mut results)?;
    eprintln!("pod start latency: {} pods per handler", opts.runs);
    start_latency(&d, opts, metrics_port, &mut results)?;
    memory(&d, opts, &mut results)?;
    drop(d);
    print(opts, &results, &coverage);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&to_json(opts, &results, &coverage))? + "\n";
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn ratio(value: f64, native: f64) -> String {
    if native == 0.0 {
        return "-".into();
    }
    format!("{:.2}x", value / native)
}

fn print(opts: &Options, results: &[Results], coverage: &Coverage) {
    type Metric = fn(&Results) -> f64;
    // The fastest repetition is the least disturbed by this VM's noise
    // (repetitions of one loop vary by ±15 %); the median is shown too.
    let rows: [(&str, Metric, bool); 9] = [
        (
            "getpid, ns/op, min",
            |r| percentile(&r.getpid_ns, 0.0),
            true,
        ),
        ("getpid, ns/op, median", |r| median(&r.getpid_ns), true),
        (
            "open+read+close, min",
            |r| percentile(&r.openread_ns, 0.0),
            true,
        ),
        ("open+read+close, median", |r| median(&r.openread_ns), true),
        (
            "tar c+x 2000 files, ms, min",
            |r| percentile(&r.tar_ms, 0.0),
            true,
        ),
        ("tar c+x, ms, median", |r| median(&r.tar_ms), true),
        ("pod start p50, ms", |r| median(&r.start_ms), true),
        ("pod start p90, ms", |r| percentile(&r.start_ms, 90.0), true),
        ("Pss per pod, KiB", |r| r.pss_kib_per_pod, false),
    ];
    println!(
        "\nhardened bench: {} repetitions, {} pod starts and {} pods per handler",
        opts.reps, opts.runs, opts.pods
    );
    print!("{:<30}", "");
    for variant in &HANDLERS {
        print!("{:>24}", variant.name);
    }
    println!();
    for (label, metric, with_ratio) in rows {
        print!("{label:<30}");
        let native = metric(&results[0]);
        for r in results {
            let v = metric(r);
            let cell = if with_ratio {
                format!("{v:.1} ({})", ratio(v, native))
            } else {
                format!("{v:.0}")
            };
            print!("{cell:>24}");
        }
        println!();
    }
    if opts.phases {
        print_phases(results);
    }
    print!("{:<30}", "processes per pod");
    for r in results {
        print!("{:>24}", r.processes_per_pod);
    }
    println!();
    let floor = &results[0].getpid_allow_all_ns;
    println!(
        "seccomp's floor: getpid in the native pod under a one-instruction allow-all filter, \
         min / median {:.1} ({}) / {:.1} ({}) ns/op",
        percentile(floor, 0.0),
        ratio(
            percentile(floor, 0.0),
            percentile(&results[0].getpid_ns, 0.0)
        ),
        median(floor),
        ratio(median(floor), median(&results[0].getpid_ns)),
    );
    println!(
        "extra Pss per pod, hardened - native: {:.0} KiB",
        results[1].pss_kib_per_pod - results[0].pss_kib_per_pod
    );
    println!("Pss per pod by process, KiB:");
    for (variant, r) in HANDLERS.iter().zip(results) {
        let kinds: Vec<String> = r
            .pss_kib_by_kind
            .iter()
            .map(|(kind, kib)| format!("{kind} {kib:.0}"))
            .collect();
        println!("  {:<24}{}", variant.name, kinds.join(", "));
    }
    println!(
        "runsc: {}, --platform={}; its syscall loops ran 1/{} of the iterations",
        runsc::version(),
        runsc::PLATFORM,
        runsc::ITERATION_DIVISOR
    );
    println!(
        "syscall table ({UNISTD_64}): {} syscalls; hardened allows {} unconditionally, {} with argument filters; denies {} ({:.1}%)",
        coverage.table,
        coverage.unconditional,
        coverage.with_arguments,
        coverage.denied,
        100.0 * coverage.denied as f64 / coverage.table as f64
    );
    if !coverage.not_in_table.is_empty() {
        println!(
            "allowed names newer than the header: {}",
            coverage.not_in_table.join(", ")
        );
    }
}

/// `--phases`: caissond's phases, ms per timed start, one column per
/// handler, with hardened's ratio to native.
fn print_phases(results: &[Results]) {
    let phases: Vec<Breakdown> = results.iter().map(Results::phases).collect();
    let keys: BTreeSet<(String, String)> = phases
        .iter()
        .flat_map(|b| b.rows.iter().map(|(c, p, _)| (c.clone(), p.clone())))
        .collect();
    let ms = |b: &Breakdown, call: &str, phase: &str| {
        b.rows
            .iter()
            .find(|(c, p, _)| c == call && p == phase)
            .map_or(0.0, |(_, _, ms)| *ms)
    };
    println!("caissond's phases, ms per timed pod start (its metrics endpoint):");
    for (call, phase) in &keys {
        print!("  {:<28}", format!("{call} {phase}"));
        for b in &phases {
            print!("{:>24.2}", ms(b, call, phase));
        }
        let (native, hardened) = (ms(&phases[0], call, phase), ms(&phases[1], call, phase));
        println!(
            "   hardened {:+.2} ({})",
            hardened - native,
            ratio(hardened, native)
        );
    }
}

fn to_json(opts: &Options, results: &[Results], coverage: &Coverage) -> serde_json::Value {
    let handlers: Vec<serde_json::Value> = HANDLERS
        .iter()
        .zip(results)
        .map(|(variant, r)| {
            json!({
                "name": variant.name,
                "runtime_handler": variant.handler,
                "runtime_default_seccomp": variant.runtime_default,
                "no_new_privs": variant.no_new_privs,
                "iteration_divisor": variant.iteration_divisor,
                "getpid_ns_per_op": r.getpid_ns,
                "getpid_allow_all_filter_ns_per_op": r.getpid_allow_all_ns,
                "openread_ns_per_op": r.openread_ns,
                "tar_ms": r.tar_ms,
                "pod_start_ms": r.start_ms,
                "pod_start_p50_ms": median(&r.start_ms),
                "pod_start_p90_ms": percentile(&r.start_ms, 90.0),
                "pss_kib_per_pod": r.pss_kib_per_pod,
                "processes_per_pod": r.processes_per_pod,
                "pss_kib_per_pod_by_process": r.pss_kib_by_kind,
                "phases": opts.phases.then(|| r.phases().json()),
            })
        })
        .collect();
    json!({
        "options": {"runs": opts.runs, "pods": opts.pods, "reps": opts.reps, "phases": opts.phases},
        "runsc": {"version": runsc::version(), "platform": runsc::PLATFORM},
        "handlers": handlers,
        "syscall_table": {
            "source": UNISTD_64,
            "syscalls": coverage.table,
            "allowed_unconditionally": coverage.unconditional,
            "allowed_with_argument_filters": coverage.with_arguments,
            "denied": coverage.denied,
            "allowed_names_not_in_table": coverage.not_in_table,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(median(&v), 10.0);
        assert_eq!(percentile(&v, 90.0), 18.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.0), 1.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn the_allow_list_denies_part_of_the_table() {
        let c = coverage().expect("the x86-64 syscall header (linux-libc-dev)");
        assert!(c.table > 300, "{c:?}");
        assert!(c.denied > 0 && c.unconditional > 100, "{c:?}");
        assert_eq!(c.unconditional + c.with_arguments + c.denied, c.table);
    }
}
