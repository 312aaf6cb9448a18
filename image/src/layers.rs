//! Unpacked layers, one directory per chain id (`layers/<hex>/fs`), shared by
//! every image whose stack starts with the same layers. A layer is unpacked
//! into a temp dir, checked against its diff id, and renamed into place, so a
//! layer dir that exists is always complete.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};
use crate::unpack::{unpack_layer, UnpackStats};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// The default of [`LayerStore::set_max_unpacked`]: 32 GiB of tar (file
/// contents, holes included) per layer.
pub const DEFAULT_MAX_UNPACKED: u64 = 32 << 30;

#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
    max_unpacked: u64,
}

/// A verified layer waiting to be renamed into the store.
pub struct UnpackedLayer {
    dir: tempfile::TempDir,
    pub stats: UnpackStats,
}

impl LayerStore {
    pub fn open(root: &Path) -> Result<LayerStore> {
        fs::create_dir_all(root).map_err(|e| ImageError::io("creating", root, e))?;
        let store = LayerStore {
            root: root.to_path_buf(),
            max_unpacked: DEFAULT_MAX_UNPACKED,
        };
        store.remove_leftovers();
        Ok(store)
    }

    /// The most bytes of uncompressed tar one layer may have: a gzip or
    /// zstd bomb stops there, in bounded time, and leaves nothing.
    pub fn set_max_unpacked(&mut self, bytes: u64) {
        self.max_unpacked = bytes;
    }

    /// `layers/<hex>`.
    pub fn dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join(chain_id.hex())
    }

    /// The unpacked tree of a layer: an overlay lower dir.
    pub fn fs_dir(&self, chain_id: &Digest) -> PathBuf {
        self.dir(chain_id).join("fs")
    }

    pub fn contains(&self, chain_id: &Digest) -> bool {
        self.fs_dir(chain_id).is_dir()
    }

    /// Unpacks a layer blob (gzip, zstd or plain tar, told apart by its
    /// magic number) into a temp dir and checks the uncompressed digest against
    /// `diff_id`.
    pub fn unpack(&self, blob: impl Read, diff_id: &Digest, what: &str) -> Result<UnpackedLayer> {
        let dir = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.root)
            .map_err(|e| ImageError::io("creating temp layer dir in", &self.root, e))?;
        let fs_dir = dir.path().join("fs");
        fs::create_dir(&fs_dir).map_err(|e| ImageError::io("creating", &fs_dir, e))?;

        let mut buffered = BufReader::with_capacity(256 * 1024, blob);
        let head = buffered
            .fill_buf()
            .map_err(|e| ImageError::io("reading", what, e))?;
        let decompressed: Box<dyn Read> = if head.starts_with(GZIP_MAGIC) {
            Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
        } else if head.starts_with(ZSTD_MAGIC) {
            // Every frame in turn (zstd:chunked is a series of frames).
            Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| ImageError::malformed(format!("{what} (zstd)"), e))?,
            )
        } else {
            Box::new(buffered)
        };
        let capped = Capped::new(decompressed, self.max_unpacked);
        let over = capped.over.clone();
        let mut hashing = HashingReader::new(capped);
        let too_large = || ImageError::LayerTooLarge {
            what: what.to_string(),
            limit: self.max_unpacked,
        };
        let stats = match unpack_layer(&mut hashing, &fs_dir) {
            Err(_) if over.load(Ordering::Relaxed) => return Err(too_large()),
            other => other?,
        };
        let finished = hashing.finish();
        if over.load(Ordering::Relaxed) {
            return Err(too_large());
        }
        let (actual, _) = finished.map_err(|e| ImageError::malformed(what.to_string(), e))?;
        if actual != *diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("{what} (uncompressed, diff id)"),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(UnpackedLayer { dir, stats })
    }

    /// Moves an unpacked layer into place. False when another import put the
    /// same chain there first (ours is discarded).
    pub fn commit(&self, layer: UnpackedLayer, chain_id: &Digest) -> Result<bool> {
        let dest = self.dir(chain_id);
        if dest.exists() {
            return Ok(false);
        }
        let tmp = layer.dir.keep();
        match fs::rename(&tmp, &dest) {
            Ok(()) => {
                crate::content::sync_dir(&self.root)?;
                Ok(true)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                if dest.is_dir() {
                    Ok(false)
                } else {
                    Err(ImageError::io("renaming layer to", dest, e))
                }
            }
        }
    }

    pub fn remove(&self, chain_id: &Digest) -> Result<()> {
        let dir = self.dir(chain_id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io("removing", dir, e)),
        }
    }

    /// Every committed layer.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let entries =
            fs::read_dir(&self.root).map_err(|e| ImageError::io("listing", &self.root, e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Temp dirs of unpacks that a crash interrupted.
    fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                tracing::info!(path = %entry.path().display(), "removing an interrupted layer unpack");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// A reader that fails once more than `limit` bytes came through it, and
/// says so in `over` (the error itself reaches the caller wrapped by the tar
/// reader).
struct Capped<R> {
    inner: R,
    left: u64,
    over: Arc<AtomicBool>,
}

impl<R: Read> Capped<R> {
    fn new(inner: R, limit: u64) -> Capped<R> {
        Capped {
            inner,
            left: limit,
            over: Arc::default(),
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte past the limit tells "exactly the limit" from "more".
        let want = buf.len().min(self.left.saturating_add(1) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.over.store(true, Ordering::Relaxed);
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "the layer is larger than the store allows",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_passes_the_limit_exactly_and_fails_past_it() {
        let data = vec![7u8; 1000];
        let mut exact = Capped::new(&data[..], 1000);
        let mut out = Vec::new();
        assert_eq!(exact.read_to_end(&mut out).unwrap(), 1000);
        assert!(!exact.over.load(Ordering::Relaxed));
        let mut short = Capped::new(&data[..], 999);
        let e = short.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(short.over.load(Ordering::Relaxed));
    }
}
