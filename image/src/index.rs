//! The image index: what images exist, their tags and repo digests, and how to
//! find one by id, id prefix, tag or repo digest. Persisted as one JSON file,
//! replaced atomically (temp file, fsync, rename) on every change.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed or not).
    pub digest: Digest,
    pub media_type: String,
    /// Size of the blob.
    pub size: u64,
    /// Digest of the uncompressed tar (from the config's rootfs.diff_ids).
    pub diff_id: Digest,
    /// The layer's directory key in the layer store.
    pub chain_id: Digest,
}

/// The parts of an image config that running a container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub stop_signal: String,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// An image: its id is the digest of its config, as in containerd and CRI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: Digest,
    /// Normalized `repository:tag` names.
    pub repo_tags: Vec<String>,
    /// `repository@manifest-digest` names.
    pub repo_digests: Vec<String>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: Vec<LayerRecord>,
    /// Manifest + config + layer blob sizes: what the image occupies as content.
    pub size: u64,
    pub os: String,
    pub architecture: String,
    pub created: Option<String>,
    pub config: RunConfig,
}

impl ImageRecord {
    pub fn chain_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }

    /// Every blob the image needs.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut out = vec![self.manifest_digest.clone(), self.config_digest.clone()];
        out.extend(self.layers.iter().map(|l| l.digest.clone()));
        out
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    images: Vec<ImageRecord>,
}

/// In-memory index backed by `index.json`.
#[derive(Debug)]
pub struct ImageIndex {
    path: PathBuf,
    images: Vec<ImageRecord>,
}

impl ImageIndex {
    pub fn load(path: &Path) -> Result<ImageIndex> {
        let images = match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<IndexFile>(&bytes)
                    .map_err(|e| {
                        ImageError::malformed(format!("image index {}", path.display()), e)
                    })?
                    .images
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ImageError::io("reading", path, e)),
        };
        Ok(ImageIndex {
            path: path.to_path_buf(),
            images,
        })
    }

    pub fn images(&self) -> &[ImageRecord] {
        &self.images
    }

    /// Adds an image or merges it into the record with the same id. Each tag it
    /// carries moves to it from whatever image had it (that image stays, like
    /// containerd's untagged images, until removed).
    pub fn add(&mut self, record: ImageRecord) -> Result<ImageRecord> {
        for other in self.images.iter_mut().filter(|i| i.id != record.id) {
            other.repo_tags.retain(|t| !record.repo_tags.contains(t));
        }
        let merged = match self.images.iter_mut().find(|i| i.id == record.id) {
            Some(existing) => {
                for tag in &record.repo_tags {
                    if !existing.repo_tags.contains(tag) {
                        existing.repo_tags.push(tag.clone());
                    }
                }
                for d in &record.repo_digests {
                    if !existing.repo_digests.contains(d) {
                        existing.repo_digests.push(d.clone());
                    }
                }
                existing.clone()
            }
            None => {
                self.images.push(record.clone());
                record
            }
        };
        self.save()?;
        Ok(merged)
    }

    /// Removes an image by id; returns it.
    pub fn remove(&mut self, id: &Digest) -> Result<Option<ImageRecord>> {
        let Some(pos) = self.images.iter().position(|i| &i.id == id) else {
            return Ok(None);
        };
        let removed = self.images.remove(pos);
        self.save()?;
        Ok(Some(removed))
    }

    /// Finds an image the way CRI callers name them: full id (`sha256:…` or
    /// bare hex), a tag or repo digest (normalized: `busybox` finds
    /// `docker.io/library/busybox:latest`), or a unique id prefix.
    pub fn find(&self, name: &str) -> Result<&ImageRecord> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ImageError::NotFound(String::new()));
        }
        if let Ok(d) = name.parse::<Digest>() {
            if let Some(i) = self.images.iter().find(|i| i.id == d) {
                return Ok(i);
            }
        }
        if let Some(i) = self.images.iter().find(|i| i.id.hex() == name) {
            return Ok(i);
        }
        if let Ok(r) = name.parse::<Reference>() {
            let hit = match r.digest() {
                Some(d) => {
                    let wanted = r.with_digest(d);
                    self.images
                        .iter()
                        .find(|i| i.repo_digests.contains(&wanted))
                }
                None => {
                    let wanted = r.tagged().unwrap_or_default();
                    self.images.iter().find(|i| i.repo_tags.contains(&wanted))
                }
            };
            if let Some(i) = hit {
                return Ok(i);
            }
        }
        let prefix = name.strip_prefix("sha256:").unwrap_or(name);
        if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageRecord> = self
                .images
                .iter()
                .filter(|i| i.id.hex().starts_with(prefix))
                .collect();
            match hits.len() {
                0 => {}
                1 => return Ok(hits[0]),
                count => {
                    return Err(ImageError::Ambiguous {
                        reference: name.to_string(),
                        count,
                    })
                }
            }
        }
        Err(ImageError::NotFound(name.to_string()))
    }

    fn save(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let bytes = serde_json::to_vec_pretty(&IndexFile {
            images: self.images.clone(),
        })
        .map_err(|e| ImageError::malformed("image index", e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".index-")
            .tempfile_in(dir)
            .map_err(|e| ImageError::io("creating temp index in", dir, e))?;
        tmp.write_all(&bytes)
            .map_err(|e| ImageError::io("writing", tmp.path().to_path_buf(), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io("syncing", tmp.path().to_path_buf(), e))?;
        tmp.persist(&self.path)
            .map_err(|e| ImageError::io("renaming index to", &self.path, e.error))?;
        crate::content::sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seed: &str, tags: &[&str]) -> ImageRecord {
        let id = Digest::of(seed.as_bytes());
        ImageRecord {
            id: id.clone(),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: vec![format!(
                "docker.io/library/busybox@{}",
                Digest::of(format!("m{seed}").as_bytes())
            )],
            manifest_digest: Digest::of(format!("m{seed}").as_bytes()),
            config_digest: id,
            layers: vec![],
            size: 1,
            os: "linux".into(),
            architecture: "amd64".into(),
            created: None,
            config: RunConfig::default(),
        }
    }

    #[test]
    fn lookups_tags_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.json");
        let mut index = ImageIndex::load(&path).unwrap();
        let a = record("a", &["docker.io/library/busybox:latest"]);
        let b = record(
            "b",
            &["docker.io/library/busybox:1.36", "localhost/x:latest"],
        );
        index.add(a.clone()).unwrap();
        index.add(b.clone()).unwrap();

        let cases: Vec<(String, Option<&Digest>)> = vec![
            ("busybox".into(), Some(&a.id)),
            ("docker.io/library/busybox:latest".into(), Some(&a.id)),
            ("busybox:1.36".into(), Some(&b.id)),
            ("localhost/x".into(), Some(&b.id)),
            (a.id.to_string(), Some(&a.id)),
            (a.id.hex().to_string(), Some(&a.id)),
            (a.id.hex()[..12].to_string(), Some(&a.id)),
            (format!("sha256:{}", &b.id.hex()[..8]), Some(&b.id)),
            (format!("busybox@{}", b.manifest_digest), Some(&b.id)),
            ("busybox:nope".into(), None),
            ("nginx".into(), None),
            ("".into(), None),
        ];
        for (name, want) in &cases {
            let got = index.find(name).ok().map(|r| &r.id);
            assert_eq!(got, *want, "lookup {name:?}");
        }

        // A tag moves to the newest image that carries it; the old one stays.
        let c = record("c", &["docker.io/library/busybox:latest"]);
        index.add(c.clone()).unwrap();
        assert_eq!(index.find("busybox").unwrap().id, c.id);
        assert!(index.find(&a.id.to_string()).unwrap().repo_tags.is_empty());

        // Re-adding an image merges tags rather than duplicating it.
        index.add(record("c", &["localhost/y:1"])).unwrap();
        assert_eq!(index.images().len(), 3);
        assert_eq!(index.find("localhost/y:1").unwrap().repo_tags.len(), 2);

        let reloaded = ImageIndex::load(&path).unwrap();
        assert_eq!(reloaded.images(), index.images());
        assert!(index.remove(&a.id).unwrap().is_some());
        assert!(ImageIndex::load(&path)
            .unwrap()
            .find(&a.id.to_string())
            .is_err());
    }

    #[test]
    fn ambiguous_prefix_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ImageIndex::load(&dir.path().join("i.json")).unwrap();
        // Find two seeds whose ids share a first hex digit.
        let mut seen = std::collections::HashMap::new();
        for n in 0.. {
            let r = record(&n.to_string(), &[]);
            let first = r.id.hex()[..1].to_string();
            if let Some(prev) = seen.insert(first.clone(), r.clone()) {
                index.add(prev).unwrap();
                index.add(r).unwrap();
                let err = index.find(&first).unwrap_err();
                assert!(
                    matches!(err, ImageError::Ambiguous { count: 2, .. }),
                    "{err}"
                );
                break;
            }
        }
    }
}
