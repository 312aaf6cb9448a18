//! `image-import`: import and unpack of an OCI-layout archive.
//!
//! * **caisson**: `ImageStore::open(fresh dir)` + `import_file(archive)`, in
//!   process: every blob streamed into staging with its digest verified and
//!   fsynced, each layer gunzipped, its diff id verified, and unpacked into its
//!   own overlay lower dir.
//! * **reference**: `skopeo copy oci-archive:… oci:…` (extract the archive,
//!   copy and verify its blobs into an OCI layout) followed by `umoci unpack`
//!   (gunzip, verify and apply every layer into one rootfs, plus an OCI bundle
//!   config and an mtree manifest): the path from an archive to a runnable
//!   bundle in the runc world.
//!
//! Both write to fresh directories on the same filesystem and read the same
//! archive from the page cache; after each run its output is `sync`ed
//! (untimed), so one run's writeback does not land in the next one's time, and
//! kept until the end (see [`flush`] for why nothing is deleted in between).

use std::error::Error;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use caisson_image::{ImageStore, ImportOptions};
use serde_json::json;

use crate::measure::{mb, timed, CpuOf, Sample, Summary, MB};
use crate::synthetic::{self, SyntheticImage};

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Command-line options of `image-import`.
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

/// The external tools, found on PATH.
struct Reference {
    skopeo: PathBuf,
    umoci: PathBuf,
    rootless: bool,
}

/// Finds `tool` on PATH or says which Debian package provides it.
fn require_tool(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("`{tool}` not found on PATH: install the Debian package `{tool}`").into()
        })
}

fn tool_version(tool: &Path) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command to completion; an error carries its stderr.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().map_err(|e| format!("starting {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

impl Reference {
    fn find() -> Result<Reference> {
        Ok(Reference {
            skopeo: require_tool("skopeo")?,
            umoci: require_tool("umoci")?,
            rootless: !is_root(),
        })
    }

    fn skopeo_cmd(&self, archive: &Path, run_dir: &Path) -> Command {
        let mut dest = OsString::from("oci:");
        dest.push(run_dir.join("layout"));
        dest.push(":latest");
        let mut src = OsString::from("oci-archive:");
        src.push(archive);
        let mut cmd = Command::new(&self.skopeo);
        // The archive is extracted under TMPDIR: keep it in the run dir.
        cmd.env("TMPDIR", run_dir.join("tmp"))
            .args(["--insecure-policy", "copy", "--quiet"])
            .arg(src)
            .arg(dest);
        cmd
    }

    fn umoci_cmd(&self, run_dir: &Path) -> Command {
        let mut image = run_dir.join("layout").into_os_string();
        image.push(":latest");
        let mut cmd = Command::new(&self.umoci);
        cmd.arg("unpack");
        if self.rootless {
            cmd.arg("--rootless");
        }
        cmd.arg("--image").arg(image).arg(run_dir.join("bundle"));
        cmd
    }

    fn command_lines(&self, archive: &Path, run_dir: &Path) -> [String; 2] {
        let show = |c: &Command| {
            let args: Vec<String> = c
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            format!("{} {}", c.get_program().to_string_lossy(), args.join(" "))
        };
        [
            format!(
                "TMPDIR={} {}",
                run_dir.join("tmp").display(),
                show(&self.skopeo_cmd(archive, run_dir))
            ),
            show(&self.umoci_cmd(run_dir)),
        ]
    }

    /// One skopeo + umoci run into the fresh `run_dir`; samples of each step.
    fn once(&self, archive: &Path, run_dir: &Path) -> Result<(Sample, Sample)> {
        fs::create_dir_all(run_dir.join("tmp"))?;
        let (copied, skopeo) = timed(CpuOf::Children, || {
            run(&mut self.skopeo_cmd(archive, run_dir))
        });
        copied?;
        let (unpacked, umoci) = timed(CpuOf::Children, || run(&mut self.umoci_cmd(run_dir)));
        unpacked?;
        Ok((skopeo, umoci))
    }
}

/// One caisson import into a fresh store at `run_dir`.
fn caisson_once(archive: &Path, run_dir: &Path, image: &SyntheticImage) -> Result<Sample> {
    let (report, sample) = timed(CpuOf::SelfProcess, || {
        ImageStore::open(run_dir).and_then(|s| s.import_file(archive, &ImportOptions::default()))
    });
    let report = report?;
    if report.layers_unpacked != image.layers || report.bytes_unpacked != image.file_bytes {
        return Err(format!(
            "caisson unpacked {} layers / {} bytes, expected {} / {}",
            report.layers_unpacked, report.bytes_unpacked, image.layers, image.file_bytes
        )
        .into());
    }
    Ok(sample)
}

/// Regular-file bytes under `dir` (symlinks not followed).
fn file_bytes_under(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += file_bytes_under(&entry.path())?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Flushes a run's output, so its writeback is not timed in the next run.
///
/// Outputs are kept until the bench ends: on ext4 without a journal, every new
/// inode allocation skips over (and looks up) each inode deleted in the last
/// 60 s (360 s when its table block is dirty) in its group, so deleting one
/// run's ~5000 files would make the next run's unpack several times slower.
fn flush() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// Runs the benchmark, prints the table and writes the JSON if asked.
pub fn bench(opts: &Options) -> Result<()> {
    if opts.runs == 0 || opts.size_mb == 0 {
        return Err("--runs and --size-mb must be at least 1".into());
    }
    let reference = Reference::find()?;
    let base = opts
        .work_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    fs::create_dir_all(&base)?;
    let work = tempfile::Builder::new()
        .prefix("caisson-bench-")
        .tempdir_in(&base)?;
    let archive = work.path().join("synthetic-oci.tar");
    let zstd_archive = work.path().join("synthetic-oci-zstd.tar");

    eprintln!(
        "generating a {} MB synthetic image in {} …",
        opts.size_mb,
        work.path().display()
    );
    let (image, gen) = timed(CpuOf::SelfProcess, || {
        synthetic::write_archives(opts.size_mb * MB as u64, &archive, Some(&zstd_archive))
    });
    eprintln!("  done in {:.1} s", gen.wall.as_secs_f64());

    // Warm-up (also checks that both sides unpacked everything).
    eprintln!("warm-up …");
    let dir = work.path().join("caisson-warmup");
    caisson_once(&archive, &dir, &image)?;
    flush();
    let dir = work.path().join("reference-warmup");
    let command_lines = reference.command_lines(&archive, &dir);
    reference.once(&archive, &dir)?;
    let rootfs_bytes = file_bytes_under(&dir.join("bundle/rootfs"))?;
    if rootfs_bytes != image.file_bytes {
        return Err(format!(
            "umoci's rootfs holds {rootfs_bytes} file bytes, expected {}",
            image.file_bytes
        )
        .into());
    }
    flush();

    let dir = work.path().join("caisson-zstd-warmup");
    caisson_once(&zstd_archive, &dir, &image)?;
    flush();

    let (mut ours, mut skopeo, mut umoci, mut total) = (vec![], vec![], vec![], vec![]);
    let mut ours_zstd = vec![];
    for i in 0..opts.runs {
        eprintln!("run {}/{} …", i + 1, opts.runs);
        let dir = work.path().join(format!("caisson-{i}"));
        ours.push(caisson_once(&archive, &dir, &image)?);
        flush();
        let dir = work.path().join(format!("caisson-zstd-{i}"));
        ours_zstd.push(caisson_once(&zstd_archive, &dir, &image)?);
        flush();
        let dir = work.path().join(format!("reference-{i}"));
        let (s, u) = reference.once(&archive, &dir)?;
        flush();
        skopeo.push(s);
        umoci.push(u);
        total.push(s + u);
    }
    let results = Results {
        image,
        ours: Summary::of(ours),
        ours_zstd: Summary::of(ours_zstd),
        reference: Summary::of(total),
        skopeo: Summary::of(skopeo),
        umoci: Summary::of(umoci),
    };
    results.print(opts);
    if let Some(path) = &opts.json {
        let value = results.json(opts, &reference, &command_lines);
        let text = serde_json::to_string_pretty(&value)? + "\n";
        fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

struct Results {
    image: SyntheticImage,
    ours: Summary,
    /// The same image with zstd layers.
    ours_zstd: Summary,
    reference: Summary,
    skopeo: Summary,
    umoci: Summary,
}

impl Results {
    /// Throughput is computed on the image's regular-file content bytes.
    fn basis(&self) -> u64 {
        self.image.file_bytes
    }

    fn print(&self, opts: &Options) {
        let im = &self.image;
        println!();
        println!(
            "image-import: {} layers, {} files + {} dirs + {} symlinks",
            im.layers, im.files, im.dirs, im.symlinks
        );
        println!(
            "  file content {}, layer tars {}, gzip layers {}, zstd layers {}, archive {}",
            mb(im.file_bytes),
            mb(im.layer_tar_bytes),
            mb(im.layer_gzip_bytes),
            mb(im.layer_zstd_bytes),
            mb(im.archive_bytes)
        );
        println!(
            "  {} runs each after one warm-up, alternating; MB/s = file content MB / median wall;\n  user/sys = median CPU seconds",
            opts.runs
        );
        println!();
        println!(
            "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "min s", "median s", "MB/s", "user s", "sys s"
        );
        let row = |name: &str, s: &Summary| {
            println!(
                "  {:<22} {:>9.3} {:>9.3} {:>9.1} {:>9.3} {:>9.3}",
                name,
                s.min.as_secs_f64(),
                s.median.as_secs_f64(),
                s.throughput(self.basis()),
                s.median_user.as_secs_f64(),
                s.median_sys.as_secs_f64()
            );
        };
        row("caisson import", &self.ours);
        row("caisson, zstd layers", &self.ours_zstd);
        row("skopeo copy + umoci", &self.reference);
        row("  skopeo copy", &self.skopeo);
        row("  umoci unpack", &self.umoci);
        println!();
        let (ratio_med, ratio_min) = self.ratios();
        println!(
            "  caisson / reference wall time: {ratio_med:.2} (median), {ratio_min:.2} (min)  →  speedup {:.2}× (median)",
            1.0 / ratio_med
        );
        println!(
            "  caisson zstd / gzip wall time: {:.2} (median)",
            self.ours_zstd.median.as_secs_f64()
                / self.ours.median.as_secs_f64().max(f64::MIN_POSITIVE)
        );
    }

    /// caisson time / reference time, at the median and at the min.
    fn ratios(&self) -> (f64, f64) {
        let r = |a: std::time::Duration, b: std::time::Duration| {
            a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE)
        };
        (
            r(self.ours.median, self.reference.median),
            r(self.ours.min, self.reference.min),
        )
    }

    fn json(
        &self,
        opts: &Options,
        reference: &Reference,
        command_lines: &[String; 2],
    ) -> serde_json::Value {
        let im = &self.image;
        let (ratio_med, ratio_min) = self.ratios();
        let basis = self.basis();
        json!({
            "benchmark": "image-import",
            "machine": {
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            },
            "options": {"size_mb": opts.size_mb, "runs": opts.runs, "warmup_runs": 1},
            "image": {
                "name": synthetic::IMAGE_NAME,
                "layers": im.layers,
                "files": im.files,
                "dirs": im.dirs,
                "symlinks": im.symlinks,
                "file_bytes": im.file_bytes,
                "layer_tar_bytes": im.layer_tar_bytes,
                "layer_gzip_bytes": im.layer_gzip_bytes,
                "layer_zstd_bytes": im.layer_zstd_bytes,
                "archive_bytes": im.archive_bytes,
            },
            "throughput_basis": "regular-file content bytes of the image (image.file_bytes), decimal MB (10^6)",
            "caisson": {
                "what": "ImageStore::open(fresh dir) + import_file(archive, ImportOptions::default())",
                "result": self.ours.json(basis),
                "zstd_layers": self.ours_zstd.json(basis),
            },
            "reference": {
                "tools": {"skopeo": tool_version(&reference.skopeo), "umoci": tool_version(&reference.umoci)},
                "commands": command_lines,
                "result": self.reference.json(basis),
                "skopeo_copy": self.skopeo.json(basis),
                "umoci_unpack": self.umoci.json(basis),
            },
            "ratio": {
                "caisson_over_reference_median": ratio_med,
                "caisson_over_reference_min": ratio_min,
                "speedup_median": 1.0 / ratio_med,
                "speedup_min": 1.0 / ratio_min,
            },
        })
    }
}
