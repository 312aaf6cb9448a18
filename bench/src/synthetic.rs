//! A deterministic synthetic image: several gzip layers of many files of mixed
//! sizes, written as an OCI-layout archive with `caisson_tests::fixtures`.
//!
//! The same `size_bytes` always gives the same archive, byte for byte. Content
//! comes from a fixed-seed xorshift PRNG: binary files are incompressible (so
//! gzip cannot shrink the work away) and text files are random words (which
//! gzip compresses roughly 3:1, like real documentation and scripts).

use std::path::Path;

use caisson_tests::fixtures::{ImageSpec, LayerBuilder, OciArchive};

/// The name the archive carries (`io.containerd.image.name`).
pub const IMAGE_NAME: &str = "localhost/bench/synthetic:latest";

const LAYERS: usize = 5;
const SEED: u64 = 0x00ca_1550_b3c4_0001;
const FILES_PER_DIR: usize = 64;

/// One class of files: its share of the bytes, size range, share of text files.
struct FileClass {
    name: &'static str,
    share_percent: u64,
    min_size: u64,
    max_size: u64,
    text_percent: u64,
}

/// Small config/docs/scripts, medium libraries, a few large blobs.
const CLASSES: [FileClass; 3] = [
    FileClass {
        name: "small",
        share_percent: 20,
        min_size: 64,
        max_size: 8 * 1024,
        text_percent: 70,
    },
    FileClass {
        name: "medium",
        share_percent: 35,
        min_size: 32 * 1024,
        max_size: 1024 * 1024,
        text_percent: 40,
    },
    FileClass {
        name: "large",
        share_percent: 45,
        min_size: 2 * 1024 * 1024,
        max_size: 8 * 1024 * 1024,
        text_percent: 10,
    },
];

/// What was generated, for the report.
#[derive(Debug, Clone, Default)]
pub struct SyntheticImage {
    pub layers: usize,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Regular-file content bytes, all layers.
    pub file_bytes: u64,
    /// Uncompressed layer tars, all layers (what is gunzipped and parsed).
    pub layer_tar_bytes: u64,
    /// Gzip-compressed layer blobs, all layers.
    pub layer_gzip_bytes: u64,
    /// zstd-compressed layer blobs, all layers (when a zstd twin was asked).
    pub layer_zstd_bytes: u64,
    /// The archive file.
    pub archive_bytes: u64,
}

/// xorshift64*: fast, deterministic, good enough to defeat gzip.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        out.reserve(len);
        while out.len() + 8 <= len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        let rest = len - out.len();
        out.extend_from_slice(&self.next().to_le_bytes()[..rest]);
    }
}

const WORDS: [&str; 32] = [
    "container",
    "runtime",
    "layer",
    "image",
    "overlay",
    "digest",
    "manifest",
    "config",
    "kernel",
    "namespace",
    "cgroup",
    "pod",
    "sandbox",
    "mount",
    "process",
    "signal",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "from",
    "by",
    "each",
    "when",
    "unless",
    "returns",
    "error",
    "value",
];

/// Random words, ten to a line.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut on_line = 0;
    while out.len() < len {
        let bits = rng.next();
        for shift in (0..64).step_by(5) {
            out.extend_from_slice(WORDS[((bits >> shift) & 31) as usize].as_bytes());
            on_line += 1;
            if on_line == 10 {
                out.push(b'\n');
                on_line = 0;
            } else {
                out.push(b' ');
            }
        }
    }
    out.truncate(len);
    out
}

/// Builds one layer of about `budget` file bytes under `usr/lib/layer<n>/`.
fn build_layer(index: usize, budget: u64, rng: &mut Rng, stats: &mut SyntheticImage) -> Vec<u8> {
    let top = format!("usr/lib/layer{index}");
    let mut layer = LayerBuilder::new()
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .dir(&top, 0o755);
    stats.dirs += 3;
    let mut file_no = 0usize;
    let mut data = Vec::new();
    for class in &CLASSES {
        let mut left = budget * class.share_percent / 100;
        while left > 0 {
            let size = rng.range(class.min_size, class.max_size).min(left);
            left -= size;
            if file_no % FILES_PER_DIR == 0 {
                layer = layer.dir(&format!("{top}/d{:03}", file_no / FILES_PER_DIR), 0o755);
                stats.dirs += 1;
            }
            let dir = format!("{top}/d{:03}", file_no / FILES_PER_DIR);
            let (suffix, mode) = if rng.percent(class.text_percent) {
                data = text(rng, size as usize);
                ("txt", 0o644)
            } else {
                data.clear();
                rng.fill(&mut data, size as usize);
                ("bin", 0o755)
            };
            let path = format!("{dir}/{}-{file_no:05}.{suffix}", class.name);
            layer = layer.file(&path, &data, mode);
            stats.files += 1;
            stats.file_bytes += size;
            // Now and then a symlink to it, as packages ship `libfoo.so -> libfoo.so.1`.
            if file_no % 50 == 0 {
                let link = format!("{dir}/link-{file_no:05}");
                let target = path.rsplit('/').next().unwrap_or(&path);
                layer = layer.symlink(&link, target);
                stats.symlinks += 1;
            }
            file_no += 1;
        }
    }
    layer.build()
}

/// Generates the image for about `size_bytes` of file content and writes it
/// as an (uncompressed) OCI-layout archive at `archive`.
pub fn write_archive(size_bytes: u64, archive: &Path) -> SyntheticImage {
    write_archives(size_bytes, archive, None)
}

/// [`write_archive`], and with `zstd_archive` the same image with zstd
/// layers instead of gzip ones (same layer tars, so the same unpack work).
pub fn write_archives(
    size_bytes: u64,
    archive: &Path,
    zstd_archive: Option<&Path>,
) -> SyntheticImage {
    let mut rng = Rng(SEED);
    let mut stats = SyntheticImage {
        layers: LAYERS,
        ..SyntheticImage::default()
    };
    let per_layer = size_bytes / LAYERS as u64;
    let layers: Vec<Vec<u8>> = (0..LAYERS)
        .map(|i| build_layer(i, per_layer, &mut rng, &mut stats))
        .collect();
    stats.layer_tar_bytes = layers.iter().map(|l| l.len() as u64).sum();

    let mut spec = ImageSpec::new(Some(IMAGE_NAME), layers);
    spec.architecture = caisson_image::archive::host_platform().1.to_string();
    spec.config = serde_json::json!({"Cmd": ["/bin/true"], "WorkingDir": "/"});
    let mut oci = OciArchive::new();
    let built = oci.add_image(&spec);
    stats.layer_gzip_bytes = built.layers.iter().map(|d| d.size).sum();
    oci.write(archive, false);
    if let Some(path) = zstd_archive {
        spec.compression = caisson_tests::fixtures::LayerCompression::Zstd;
        let mut oci = OciArchive::new();
        let built = oci.add_image(&spec);
        stats.layer_zstd_bytes = built.layers.iter().map(|d| d.size).sum();
        oci.write(path, false);
    }
    drop(spec);
    stats.archive_bytes = std::fs::metadata(archive).map(|m| m.len()).unwrap_or(0);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_gives_same_archive() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
        let sa = write_archive(2_000_000, &a);
        let sb = write_archive(2_000_000, &b);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(sa.file_bytes, sb.file_bytes);
        assert!(sa.file_bytes <= 2_000_000 && sa.file_bytes > 1_900_000);
        assert!(sa.files > 100, "{sa:?}");
    }

    #[test]
    fn binary_content_does_not_compress() {
        let mut rng = Rng(SEED);
        let mut random = Vec::new();
        rng.fill(&mut random, 1 << 20);
        let words = text(&mut rng, 1 << 20);
        let gz_random = caisson_tests::fixtures::gzip(&random).len();
        let gz_text = caisson_tests::fixtures::gzip(&words).len();
        assert!(gz_random > (1 << 20) * 99 / 100, "{gz_random}");
        assert!(gz_text < (1 << 20) / 2, "{gz_text}");
    }
}
