//! The content store: blobs under `blobs/sha256/<hex>`, each verified against
//! its digest while it is written and made visible only by an atomic rename.
//!
//! Two writers of the same blob are safe: each writes its own temp file under
//! `ingest/` and the second rename replaces identical bytes. A writer dropped
//! before `commit` (an interrupted pull or a rejected import) leaves nothing.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::error::{ImageError, Result};

/// Manifests, indexes and configs are small; anything bigger is refused
/// before it is read into memory.
pub const MAX_JSON_BLOB: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) a content store rooted at `root`.
    pub fn open(root: &Path) -> Result<ContentStore> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        for dir in [&blobs, &ingest] {
            fs::create_dir_all(dir).map_err(|e| ImageError::io("creating", dir, e))?;
        }
        let store = ContentStore { blobs, ingest };
        store.remove_leftovers();
        Ok(store)
    }

    /// Staging dirs and temp blobs of imports and pulls that a crash
    /// interrupted (a dropped writer or staging area removes its own).
    fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.ingest) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("stage-") || name.starts_with(".blob-") {
                tracing::info!(path = %entry.path().display(), "removing an interrupted import or pull");
                let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
            }
        }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    pub fn size(&self, digest: &Digest) -> Result<u64> {
        let path = self.path(digest);
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| missing_or_io(e, digest, &path))
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.path(digest);
        File::open(&path).map_err(|e| missing_or_io(e, digest, &path))
    }

    /// A writer that verifies `expected` (when given) and commits into the store.
    pub fn writer(&self, expected: Option<Digest>, what: &str) -> Result<BlobWriter> {
        BlobWriter::new(&self.ingest, self.blobs.clone(), expected, what)
    }

    /// Writes a whole in-memory blob (manifests and configs made here).
    pub fn put(&self, bytes: &[u8], what: &str) -> Result<Digest> {
        let mut w = self.writer(None, what)?;
        w.write_all(bytes)
            .map_err(|e| ImageError::io("writing", &self.ingest, e))?;
        Ok(w.commit()?.0)
    }

    /// Removes a blob; false when it was not there.
    pub fn delete(&self, digest: &Digest) -> Result<bool> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io("removing", path, e)),
        }
    }

    /// Every blob in the store.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let entries =
            fs::read_dir(&self.blobs).map_err(|e| ImageError::io("listing", &self.blobs, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io("listing", &self.blobs, e))?;
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

    /// A staging area for an import: blobs land there first and move into the
    /// store only when the whole import has been verified.
    pub fn staging(&self) -> Result<Staging> {
        let dir = tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(&self.ingest)
            .map_err(|e| ImageError::io("creating staging dir in", &self.ingest, e))?;
        Ok(Staging {
            dir,
            blobs: HashMap::new(),
            store: self.clone(),
        })
    }
}

fn missing_or_io(e: io::Error, digest: &Digest, path: &Path) -> ImageError {
    if e.kind() == io::ErrorKind::NotFound {
        ImageError::MissingBlob {
            digest: digest.to_string(),
            what: "content store".into(),
        }
    } else {
        ImageError::io("opening", path, e)
    }
}

/// Writes one blob to a temp file while hashing it; `commit` verifies and renames.
pub struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: Hasher,
    expected: Option<Digest>,
    dest_dir: PathBuf,
    what: String,
}

impl BlobWriter {
    fn new(
        tmp_dir: &Path,
        dest_dir: PathBuf,
        expected: Option<Digest>,
        what: &str,
    ) -> Result<BlobWriter> {
        let file = tempfile::Builder::new()
            .prefix(".blob-")
            .tempfile_in(tmp_dir)
            .map_err(|e| ImageError::io("creating temp blob in", tmp_dir, e))?;
        Ok(BlobWriter {
            file,
            hasher: Hasher::default(),
            expected,
            dest_dir,
            what: what.to_string(),
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    /// Verifies the digest, syncs, and renames into place. Returns the digest and size.
    pub fn commit(self) -> Result<(Digest, u64)> {
        let size = self.hasher.len();
        let actual = self.hasher.finish();
        if let Some(expected) = &self.expected {
            if *expected != actual {
                return Err(ImageError::DigestMismatch {
                    what: self.what,
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        let tmp_path = self.file.path().to_path_buf();
        self.file
            .as_file()
            .sync_all()
            .map_err(|e| ImageError::io("syncing", &tmp_path, e))?;
        let dest = self.dest_dir.join(actual.hex());
        self.file
            .persist(&dest)
            .map_err(|e| ImageError::io("renaming blob to", &dest, e.error))?;
        sync_dir(&self.dest_dir)?;
        Ok((actual, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// fsync a directory so a rename in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ImageError::io("syncing", dir, e))
}

/// Blobs of one import, verified but not yet in the store. Dropping it
/// without `commit` removes them all.
pub struct Staging {
    dir: tempfile::TempDir,
    blobs: HashMap<Digest, PathBuf>,
    store: ContentStore,
}

impl Staging {
    /// Streams `reader` into the staging area, verifying `expected` if given.
    pub fn add(
        &mut self,
        reader: &mut dyn Read,
        expected: Option<Digest>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let mut w = BlobWriter::new(
            self.dir.path(),
            self.dir.path().to_path_buf(),
            expected,
            what,
        )?;
        io::copy(reader, &mut w).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::Other => {
                ImageError::malformed(what.to_string(), e)
            }
            _ => ImageError::io("writing", self.dir.path(), e),
        })?;
        let (digest, size) = w.commit()?;
        self.blobs
            .insert(digest.clone(), self.dir.path().join(digest.hex()));
        Ok((digest, size))
    }

    /// A writer into this staging area that can run on another thread while
    /// others write theirs (parallel downloads); hand what its `commit`
    /// returns to [`Staging::insert`].
    pub fn writer(&self, expected: Option<Digest>, what: &str) -> Result<BlobWriter> {
        BlobWriter::new(
            self.dir.path(),
            self.dir.path().to_path_buf(),
            expected,
            what,
        )
    }

    /// Records a blob that a [`Staging::writer`] committed.
    pub fn insert(&mut self, digest: &Digest) -> Result<()> {
        let path = self.dir.path().join(digest.hex());
        if !path.is_file() {
            return Err(ImageError::MissingBlob {
                digest: digest.to_string(),
                what: "staged blob".into(),
            });
        }
        self.blobs.insert(digest.clone(), path);
        Ok(())
    }

    /// Hard-links a blob the store already has into the staging area, so a
    /// garbage collection that runs before `commit` cannot take it away.
    /// False when the store does not have it.
    pub fn adopt(&mut self, digest: &Digest) -> Result<bool> {
        if self.blobs.contains_key(digest) {
            return Ok(true);
        }
        let path = self.dir.path().join(digest.hex());
        match fs::hard_link(self.store.path(digest), &path) {
            Ok(()) => {
                self.blobs.insert(digest.clone(), path);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io("linking blob into", path, e)),
        }
    }

    pub fn add_bytes(&mut self, bytes: &[u8], what: &str) -> Result<Digest> {
        Ok(self.add(&mut &bytes[..], None, what)?.0)
    }

    /// True when the blob is staged or already in the store.
    pub fn has(&self, digest: &Digest) -> bool {
        self.blobs.contains_key(digest) || self.store.contains(digest)
    }

    pub fn open(&self, digest: &Digest, what: &str) -> Result<File> {
        let path = self
            .blobs
            .get(digest)
            .cloned()
            .unwrap_or_else(|| self.store.path(digest));
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::MissingBlob {
                    digest: digest.to_string(),
                    what: what.to_string(),
                }
            } else {
                ImageError::io("opening", &path, e)
            }
        })
    }

    pub fn size(&self, digest: &Digest, what: &str) -> Result<u64> {
        let f = self.open(digest, what)?;
        f.metadata()
            .map(|m| m.len())
            .map_err(|e| ImageError::io("stat", self.dir.path(), e))
    }

    /// Reads a small JSON blob (manifest, index, config) into memory.
    pub fn read_json(&self, digest: &Digest, what: &str) -> Result<Vec<u8>> {
        let f = self.open(digest, what)?;
        let mut out = Vec::new();
        f.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut out)
            .map_err(|e| ImageError::io("reading", self.dir.path(), e))?;
        if out.len() as u64 > MAX_JSON_BLOB {
            return Err(ImageError::malformed(
                what.to_string(),
                format!("larger than {MAX_JSON_BLOB} bytes"),
            ));
        }
        Ok(out)
    }

    /// Moves the given staged blobs into the store (others are dropped with the
    /// staging dir). Returns the digests that were new to the store.
    pub fn commit(self, keep: &[Digest]) -> Result<Vec<Digest>> {
        let mut added = Vec::new();
        for digest in keep {
            let Some(src) = self.blobs.get(digest) else {
                continue;
            };
            let dest = self.store.path(digest);
            if dest.exists() {
                continue;
            }
            fs::rename(src, &dest).map_err(|e| ImageError::io("renaming blob to", &dest, e))?;
            added.push(digest.clone());
        }
        sync_dir(&self.store.blobs)?;
        Ok(added)
    }
}
