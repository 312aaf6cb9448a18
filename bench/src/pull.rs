//! `pull`: CRI PullImage of the same synthetic image (about 100 MB of files,
//! [`crate::synthetic`]) from the same local registry, by caissond and by
//! Debian's containerd 1.6 (its CRI plugin, overlayfs snapshotter), both
//! driven with the `k8s-cri` client over their sockets.
//!
//! The registry is Debian's `docker-registry` on 127.0.0.1 (plain HTTP),
//! filled once with `skopeo copy`. Every run starts the daemon on a fresh
//! root dir (not timed), resets its peak RSS (`clear_refs`), times one
//! PullImage (download, verify, unpack: the image is ready to run when it
//! answers), reads the daemon's peak RSS and CPU time, checks ImageStatus,
//! stops the daemon and `sync`s (not timed). One warm-up run of each side,
//! then `--runs` runs alternating sides. Roots are removed only when the
//! bench ends (see the README on ext4 and freed inodes).

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

mod daemon;

use crate::caissond::{self, Caissond, Dir, Setup};
use crate::daemon::Process;
use crate::measure::{mb_per_s, MB};
use crate::synthetic::{self, SyntheticImage};
use daemon::Daemon;

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

const CONTAINERD: &str = "/usr/bin/containerd";
/// The repository the image is pushed to.
const REPO: &str = "bench/synthetic:latest";

/// Command-line options of `pull`.
#[derive(Debug, Clone)]
pub struct Options {
    pub size_mb: u64,
    pub runs: usize,
    pub work_dir: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size_mb: 100,
            runs: 3,
            work_dir: None,
            json: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Caisson,
    Containerd,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Caisson => "caissond",
            Side::Containerd => "containerd",
        }
    }
}

/// One timed pull.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    wall: Duration,
    /// The daemon's CPU time during the pull.
    user: Duration,
    sys: Duration,
    /// The daemon's peak RSS during the pull (VmHWM after a reset), bytes.
    peak_rss: u64,
    /// Its RSS just before the pull, bytes.
    rss_before: u64,
}

pub fn bench(opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.size_mb == 0 {
        return Err("--runs and --size-mb must be at least 1".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the pull bench must run as root (both daemons unpack layers as root)".into());
    }
    if !Path::new(CONTAINERD).is_file() {
        return Err(
            format!("{CONTAINERD} not found: install the Debian package `containerd`").into(),
        );
    }
    caissond::binaries()?;
    let pause = crate::fixture("caisson-pause", caisson_tests::fixtures::pause_binary)?;
    let work = tempfile::Builder::new()
        .prefix("caisson-bench-pull-")
        .tempdir_in(opts.work_dir.as_deref().unwrap_or(Path::new("/var/tmp")))?;
    let dir = work.path();

    eprintln!(
        "building the synthetic image ({} MB of files)…",
        opts.size_mb
    );
    let archive = dir.join("synthetic.tar");
    let image = synthetic::write_archive(opts.size_mb * 1_000_000, &archive);
    eprintln!("starting docker-registry and pushing the image with skopeo…");
    let registry = crate::fixture("the registry", || {
        caisson_tests::registry::Registry::start(caisson_tests::registry::Setup::PlainHttp)
    })?;
    crate::fixture("skopeo copy", || registry.push(&archive, None, REPO, None))?;
    let reference = format!("{}/{REPO}", registry.host());
    let wire_bytes = registry_bytes(&registry)?;

    let mut runs: Vec<(Side, Run)> = Vec::new();
    let order: Vec<Side> = (0..=opts.runs)
        .flat_map(|_| [Side::Caisson, Side::Containerd])
        .collect();
    for (n, side) in order.into_iter().enumerate() {
        let warmup = n < 2;
        let run_dir = dir.join(format!("{}-{n}", side.name()));
        let daemon = match side {
            Side::Caisson => start_caissond(&run_dir, &pause, &registry.host())?,
            Side::Containerd => start_containerd(&run_dir, &registry.host())?,
        };
        let run = daemon.pull(&reference)?;
        daemon.stop()?;
        // The pull made the image runnable: its files are on disk (content
        // store plus unpacked layers or snapshots: more than the files alone).
        let on_disk = caisson_image::usage::disk_usage(&run_dir).used_bytes;
        if on_disk < image.file_bytes + image.layer_gzip_bytes {
            return Err(format!(
                "{} holds {:.1} MB on disk after the pull, less than the image's {:.1} MB of \
                 files plus {:.1} MB of layer blobs: it did not unpack everything",
                side.name(),
                on_disk as f64 / MB,
                image.file_bytes as f64 / MB,
                image.layer_gzip_bytes as f64 / MB
            )
            .into());
        }
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        eprintln!(
            "{} {}: {:.3} s, peak RSS {:.1} MiB, {:.1} MB on disk",
            side.name(),
            if warmup { "warm-up" } else { "run" },
            run.wall.as_secs_f64(),
            run.peak_rss as f64 / (1 << 20) as f64,
            on_disk as f64 / MB
        );
        if !warmup {
            runs.push((side, run));
        }
    }
    let versions = json!({
        "caissond": env!("CARGO_PKG_VERSION"),
        "containerd": command_output(CONTAINERD, &["--version"]),
        "docker-registry": command_output("docker-registry", &["--version"]),
    });
    let report = Report {
        image,
        wire_bytes,
        caisson: runs
            .iter()
            .filter(|(s, _)| *s == Side::Caisson)
            .map(|(_, r)| *r)
            .collect(),
        containerd: runs
            .iter()
            .filter(|(s, _)| *s == Side::Containerd)
            .map(|(_, r)| *r)
            .collect(),
    };
    report.print(opts);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report.json(opts, versions))? + "\n";
        fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Bytes a pull moves from the registry: the manifest, config and layer
/// blobs as the registry stores them.
fn registry_bytes(registry: &caisson_tests::registry::Registry) -> Result<u64> {
    let blobs = registry.dir.path().join("data/docker/registry/v2/blobs");
    let mut total = 0;
    let mut stack = vec![blobs];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)?.flatten() {
            let meta = e.metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else if e.file_name() == "data" {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// caissond with everything under `dir`, reaching the registry over plain
/// HTTP with 3 concurrent downloads (containerd's default).
fn start_caissond(dir: &Path, pause: &Path, registry: &str) -> Result<Daemon> {
    let registries = format!(
        r#"
[registries]
max_concurrent_downloads = 3
[registries.hosts."{registry}"]
plain_http = true
"#
    );
    Ok(Daemon::Caissond(Caissond::start(Setup {
        dir: Dir::At(dir),
        pause,
        cgroup_parent: "/caisson-bench-pull",
        extra_config: &registries,
    })?))
}

/// containerd 1.6 with everything under `dir`; the CRI plugin reaches the
/// registry over plain HTTP through a `registry.mirrors` entry, with its
/// default 3 concurrent downloads and the overlayfs snapshotter.
fn start_containerd(dir: &Path, registry: &str) -> Result<Daemon> {
    for sub in ["root", "state", "opt", "cni/bin", "cni/conf"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let socket = dir.join("containerd.sock");
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{ttrpc}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[{cri}]
  max_concurrent_downloads = 3

[{cri}.containerd]
  snapshotter = "overlayfs"

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"

[{cri}.registry.mirrors."{registry}"]
  endpoint = ["http://{registry}"]
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
        ttrpc = dir.join("containerd.sock.ttrpc").display(),
        opt = dir.join("opt").display(),
        cni_bin = dir.join("cni/bin").display(),
        cni_conf = dir.join("cni/conf").display(),
    );
    let config_path = dir.join("config.toml");
    fs::write(&config_path, config)?;
    let mut command = Command::new(CONTAINERD);
    command.arg("--config").arg(&config_path);
    let log = dir.join("containerd.log");
    Ok(Daemon::Containerd(Process::start(
        "containerd",
        command,
        &socket,
        log,
    )?))
}

struct Report {
    image: SyntheticImage,
    wire_bytes: u64,
    caisson: Vec<Run>,
    containerd: Vec<Run>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

impl Report {
    fn side_json(&self, runs: &[Run]) -> Value {
        let wall = median(runs.iter().map(|r| r.wall).collect());
        json!({
            "runs": runs.iter().map(|r| json!({
                "wall_s": r.wall.as_secs_f64(),
                "user_s": r.user.as_secs_f64(),
                "sys_s": r.sys.as_secs_f64(),
                "peak_rss_bytes": r.peak_rss,
                "rss_before_bytes": r.rss_before,
            })).collect::<Vec<_>>(),
            "min_s": runs.iter().map(|r| r.wall).min().unwrap_or_default().as_secs_f64(),
            "median_s": wall.as_secs_f64(),
            "median_mb_per_s": mb_per_s(self.wire_bytes, wall),
            "max_peak_rss_bytes": runs.iter().map(|r| r.peak_rss).max().unwrap_or(0),
        })
    }

    fn json(&self, opts: &Options, versions: Value) -> Value {
        json!({
            "benchmark": "pull",
            "size_mb": opts.size_mb,
            "runs": opts.runs,
            "image": {
                "layers": self.image.layers,
                "files": self.image.files,
                "file_bytes": self.image.file_bytes,
                "layer_tar_bytes": self.image.layer_tar_bytes,
                "layer_gzip_bytes": self.image.layer_gzip_bytes,
                "registry_bytes": self.wire_bytes,
            },
            "caissond": self.side_json(&self.caisson),
            "containerd": self.side_json(&self.containerd),
            "ratio_caissond_over_containerd_median_time":
                median(self.caisson.iter().map(|r| r.wall).collect()).as_secs_f64()
                / median(self.containerd.iter().map(|r| r.wall).collect()).as_secs_f64(),
            "versions": versions,
        })
    }

    fn print(&self, opts: &Options) {
        println!(
            "\npull: {} layers, {} files, {:.1} MB of files, {:.1} MB from the registry; {} runs after a warm-up\n",
            self.image.layers,
            self.image.files,
            self.image.file_bytes as f64 / MB,
            self.wire_bytes as f64 / MB,
            opts.runs
        );
        println!(
            "| | min s | median s | MB/s (median) | daemon user s | daemon sys s | peak RSS MiB |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (name, runs) in [
            ("caissond", &self.caisson),
            ("containerd 1.6 CRI", &self.containerd),
        ] {
            let wall = median(runs.iter().map(|r| r.wall).collect());
            println!(
                "| {name} | {:.3} | {:.3} | {:.1} | {:.3} | {:.3} | {:.1} |",
                runs.iter()
                    .map(|r| r.wall)
                    .min()
                    .unwrap_or_default()
                    .as_secs_f64(),
                wall.as_secs_f64(),
                mb_per_s(self.wire_bytes, wall),
                median(runs.iter().map(|r| r.user).collect()).as_secs_f64(),
                median(runs.iter().map(|r| r.sys).collect()).as_secs_f64(),
                mib(runs.iter().map(|r| r.peak_rss).max().unwrap_or(0)),
            );
        }
        let c = median(self.caisson.iter().map(|r| r.wall).collect()).as_secs_f64();
        let d = median(self.containerd.iter().map(|r| r.wall).collect()).as_secs_f64();
        println!(
            "\ncaissond ÷ containerd median time: {:.2} (throughput ratio caissond/containerd: {:.2})",
            c / d,
            d / c
        );
    }
}
