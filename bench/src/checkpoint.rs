//! `checkpoint`: CRI CheckpointContainer and restore through caissond (no
//! side-by-side: neither containerd 1.6 nor Debian's CRI-O checkpoint
//! here), for a busybox container holding `--mem-mb` of touched anonymous
//! memory (a shell variable filled from `/dev/zero`).
//!
//! 1. One pod, one container that fills its variable, prints `ready` and
//!    sleeps; its resident set read from the host's `/proc`.
//! 2. `--runs` checkpoints of it (it keeps running): CheckpointContainer's
//!    wall time and the archive's size.
//! 3. `--runs` restores, each in a new pod: CreateContainer with the
//!    archive as the image + StartContainer, timed; the restored process's
//!    resident set checked.
//! 4. Teardown: the daemon's drop removes pods, processes, mounts, cgroups.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;

use crate::caissond::{Caissond, Dir, Setup};
use crate::cri::Result;
use crate::measure::median;

/// CRIU as `make criu` builds it (caissond's default when present).
const CRIU: &str = "/var/cache/caisson-test/criu-4.1.1/criu";

/// Command-line options of `checkpoint`.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    /// Touched memory in the container, MiB.
    pub mem_mb: u64,
    pub json: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 3,
            mem_mb: 64,
            json: None,
        }
    }
}

fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        ..Default::default()
    }
}

fn container_config(image: &str, mem_mb: u64) -> cri::ContainerConfig {
    let script = format!(
        "x=$(head -c {} /dev/zero | tr '\\0' a); echo ready; while :; do sleep 1; done",
        mem_mb << 20
    );
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "holder".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script],
        log_path: "holder.log".into(),
        ..Default::default()
    }
}

/// Runs pod + container; the pod's and the container's ids.
fn run(d: &Caissond, name: &str, image: &str, mem_mb: u64) -> Result<(String, String)> {
    let config = pod_config(name, &d.dir().join("logs"));
    d.run_pod_with_container(config, "", container_config(image, mem_mb))
}

/// The host pid of a container's init (verbose ContainerStatus).
fn pid_of(d: &Caissond, ctr: &str) -> Result<u32> {
    let request = cri::ContainerStatusRequest {
        container_id: ctr.into(),
        verbose: true,
    };
    let info = d
        .call("ContainerStatus", |mut c| async move {
            c.container_status(request).await
        })?
        .info;
    let v: serde_json::Value = serde_json::from_str(info.get("info").map_or("{}", |s| s))?;
    Ok(v["pid"].as_u64().unwrap_or(0) as u32)
}

/// The resident set of `pid` and its children, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    crate::measure::proc_field(&status, "VmRSS").unwrap_or(0)
}

/// Waits until the container's shell holds `mem_mb` MiB.
fn wait_filled(d: &Caissond, ctr: &str, mem_mb: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rss = rss_kib(pid_of(d, ctr)?);
        if rss >= mem_mb * 1024 {
            return Ok(rss);
        }
        if Instant::now() > deadline {
            return Err(format!("container {ctr} holds {rss} KiB, not {mem_mb} MiB").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the benchmark and prints the table (and the JSON if asked).
pub fn bench(opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.mem_mb == 0 {
        return Err("--runs and --mem-mb must be at least 1".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the checkpoint bench must run as root (it runs pods)".into());
    }
    if !Path::new(CRIU).is_file() {
        return Err(format!("CRIU is missing at {CRIU}: run `make criu`").into());
    }
    let pause = crate::fixture("caisson-pause", caisson_tests::fixtures::pause_binary)?;
    let image = caisson_tests::fixtures::busybox_image();
    let d = Caissond::start(Setup {
        dir: Dir::Temp("caisson-bench-checkpoint-"),
        pause: &pause,
        cgroup_parent: "/caisson-bench-checkpoint",
        extra_config: "",
    })?;
    eprintln!("caissond under {}", d.dir().display());
    d.import_image(&image)?;
    let (_, ctr) = run(&d, "holder", "busybox", opts.mem_mb)?;
    let rss = wait_filled(&d, &ctr, opts.mem_mb)?;
    let (mut dumps, mut sizes, mut restores) = (Vec::new(), Vec::new(), Vec::new());
    let mut restored_rss = 0;
    for i in 0..opts.runs {
        let archive = d.dir().join(format!("holder-{i}.tar"));
        let request = cri::CheckpointContainerRequest {
            container_id: ctr.clone(),
            location: archive.display().to_string(),
            timeout: 120,
        };
        let started = Instant::now();
        d.call("CheckpointContainer", |mut c| async move {
            c.checkpoint_container(request).await
        })?;
        dumps.push(started.elapsed());
        sizes.push(std::fs::metadata(&archive)?.len());
        let started = Instant::now();
        let (pod, restored) = run(
            &d,
            &format!("restored-{i}"),
            &archive.display().to_string(),
            opts.mem_mb,
        )?;
        restores.push(started.elapsed());
        restored_rss = rss_kib(pid_of(&d, &restored)?);
        d.stop_and_remove_pod(&pod)?;
        std::fs::remove_file(&archive)?;
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "checkpoint of a busybox container holding {} MiB ({} runs)",
        opts.mem_mb, opts.runs
    );
    println!(
        "  resident set before       {:>10.1} MiB",
        rss as f64 / 1024.0
    );
    println!(
        "  archive size (median)     {:>10.1} MiB",
        mib(sizes[sizes.len() / 2])
    );
    println!(
        "  CheckpointContainer       {:>10.0} ms median, {:.0} ms min",
        median(dumps.clone()).as_secs_f64() * 1e3,
        dumps.iter().min().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  restore (Create+Start)    {:>10.0} ms median, {:.0} ms min",
        median(restores.clone()).as_secs_f64() * 1e3,
        restores.iter().min().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  restored resident set     {:>10.1} MiB",
        restored_rss as f64 / 1024.0
    );
    if let Some(path) = &opts.json {
        let json = serde_json::json!({
            "mem_mb": opts.mem_mb,
            "rss_kib": rss,
            "archive_bytes": sizes,
            "checkpoint_ms": dumps.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
            "restore_ms": restores.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
            "restored_rss_kib": restored_rss,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)?;
    }
    Ok(())
}
