//! [`ImageStore`]: the image store as `caissond` uses it: import archives,
//! find and remove images, make container root filesystems, report usage.
//!
//! Layout under the root (default `/var/lib/caisson/images`):
//! `content/blobs/sha256/…` (content store), `layers/<chain>/fs` (unpacked
//! layers), `rootfs/<container>/` (upper/work dirs), `index.json`.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use crate::archive::{read_archive, ImportOptions};
use crate::content::{ContentStore, Staging};
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::index::{ImageIndex, ImageRecord};
use crate::layers::LayerStore;
use crate::rootfs::{Rootfs, RootfsStore};
use crate::usage::{disk_usage, FsUsage};

/// What one import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub images: Vec<ImageRecord>,
    /// Layers unpacked by this import (shared layers already present are not).
    pub layers_unpacked: usize,
    /// Regular-file bytes written while unpacking.
    pub bytes_unpacked: u64,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
}

pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    layers: LayerStore,
    rootfs: RootfsStore,
    index: Mutex<ImageIndex>,
    /// Imports and rootfs creation hold it shared; garbage collection holds it
    /// exclusively, so it never removes a layer an import is about to use.
    gc_lock: RwLock<()>,
}

impl ImageStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<ImageStore> {
        fs::create_dir_all(root).map_err(|e| ImageError::io("creating", root, e))?;
        let root = fs::canonicalize(root).map_err(|e| ImageError::io("resolving", root, e))?;
        Ok(ImageStore {
            content: ContentStore::open(&root.join("content"))?,
            layers: LayerStore::open(&root.join("layers"))?,
            rootfs: RootfsStore::open(&root.join("rootfs"))?,
            index: Mutex::new(ImageIndex::load(&root.join("index.json"))?),
            gc_lock: RwLock::new(()),
            root,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    pub fn layers(&self) -> &LayerStore {
        &self.layers
    }

    /// See [`LayerStore::set_max_unpacked`].
    pub fn set_max_unpacked_layer_size(&mut self, bytes: u64) {
        self.layers.set_max_unpacked(bytes);
    }

    /// Imports every image of an OCI-layout or `docker save` archive (plain or
    /// gzip). Either the whole archive lands or nothing does.
    pub fn import(&self, reader: impl Read, opts: &ImportOptions) -> Result<ImportReport> {
        let _shared = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let mut staging = self.content.staging()?;
        let pending = read_archive(reader, &mut staging, opts)?;
        let records = pending.into_iter().map(|p| p.record).collect();
        self.commit_images(staging, records, "imported image")
    }

    /// Commits a pulled image whose blobs are all in `staging` (downloaded,
    /// or adopted from the store): unpacks the layers not yet unpacked,
    /// moves the blobs into the store and adds the record. All or nothing,
    /// like [`ImageStore::import`].
    pub fn commit_pulled(&self, staging: Staging, record: ImageRecord) -> Result<ImportReport> {
        let _shared = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        self.commit_images(staging, vec![record], "pulled image")
    }

    /// The image whose (platform) manifest is `manifest`, if the store has it.
    pub fn find_by_manifest(&self, manifest: &Digest) -> Option<ImageRecord> {
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .images()
            .iter()
            .find(|i| &i.manifest_digest == manifest)
            .cloned()
    }

    /// Adds tags and repo digests to an image (a tag moves from whatever
    /// image had it, as with an import).
    pub fn add_names(
        &self,
        id: &Digest,
        repo_tags: Vec<String>,
        repo_digests: Vec<String>,
    ) -> Result<ImageRecord> {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let mut record = index.find(&id.to_string())?.clone();
        if repo_tags.iter().all(|t| record.repo_tags.contains(t))
            && repo_digests.iter().all(|d| record.repo_digests.contains(d))
        {
            return Ok(record);
        }
        record.repo_tags = repo_tags;
        record.repo_digests = repo_digests;
        index.add(record)
    }

    /// Unpacks, commits blobs and layers, and indexes `records`; the caller
    /// holds the gc lock shared.
    fn commit_images(
        &self,
        staging: Staging,
        records: Vec<ImageRecord>,
        what: &str,
    ) -> Result<ImportReport> {
        let mut unpacked = Vec::new();
        let mut seen = HashSet::new();
        let mut bytes_unpacked = 0;
        for record in &records {
            for layer in &record.layers {
                if self.layers.contains(&layer.chain_id) || !seen.insert(layer.chain_id.clone()) {
                    continue;
                }
                let what = format!("layer {}", layer.digest);
                let blob = staging.open(&layer.digest, &what)?;
                let done = self.layers.unpack(blob, &layer.diff_id, &what)?;
                bytes_unpacked += done.stats.file_bytes;
                unpacked.push((layer.chain_id.clone(), done));
            }
        }

        let keep: Vec<Digest> = records.iter().flat_map(|r| r.blobs()).collect();
        staging.commit(&keep)?;
        let layers_unpacked = unpacked.len();
        for (chain, layer) in unpacked {
            self.layers.commit(layer, &chain)?;
        }
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let mut images = Vec::new();
        for record in records {
            let record = index.add(record)?;
            tracing::info!(image = %record.id, tags = ?record.repo_tags, "{what}");
            images.push(record);
        }
        Ok(ImportReport {
            images,
            layers_unpacked,
            bytes_unpacked,
        })
    }

    /// Imports an archive file.
    pub fn import_file(&self, path: &Path, opts: &ImportOptions) -> Result<ImportReport> {
        let file = fs::File::open(path).map_err(|e| ImageError::io("opening", path, e))?;
        self.import(file, opts)
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .images()
            .to_vec()
    }

    /// Finds an image by id, id prefix, tag or repo digest.
    pub fn get(&self, name: &str) -> Result<ImageRecord> {
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .find(name)
            .cloned()
    }

    /// Removes an image (all its tags) and then whatever nothing else uses.
    pub fn remove(&self, name: &str) -> Result<ImageRecord> {
        let removed = {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            let id = index.find(name)?.id.clone();
            index
                .remove(&id)?
                .ok_or_else(|| ImageError::NotFound(name.to_string()))?
        };
        tracing::info!(image = %removed.id, "removed image");
        self.gc()?;
        Ok(removed)
    }

    /// Removes blobs and layers that no image and no container rootfs uses.
    pub fn gc(&self) -> Result<GcReport> {
        let _exclusive = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let images = self.list();
        let mut blobs: HashSet<Digest> = images.iter().flat_map(|i| i.blobs()).collect();
        let mut chains: HashSet<Digest> = images.iter().flat_map(|i| i.chain_ids()).collect();
        for rootfs in self.rootfs.list()? {
            chains.extend(rootfs.chain_ids);
            blobs.insert(rootfs.image_id);
        }
        let mut report = GcReport::default();
        for chain in self.layers.list()? {
            if !chains.contains(&chain) {
                self.layers.remove(&chain)?;
                report.layers_removed += 1;
            }
        }
        for blob in self.content.list()? {
            if !blobs.contains(&blob) && self.content.delete(&blob)? {
                report.blobs_removed += 1;
            }
        }
        Ok(report)
    }

    /// Makes a container rootfs (upper and work dirs) over an image's layers.
    pub fn create_rootfs(&self, id: &str, image: &str) -> Result<Rootfs> {
        let _shared = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let record = self.get(image)?;
        let lowers = self.unpacked_layers(&record)?;
        self.rootfs
            .create(id, &record.id, record.chain_ids(), lowers)
    }

    /// Pins `image`'s layers to rootfs `id` (an image volume of its
    /// container) and returns their directories, topmost last; garbage
    /// collection keeps them until that rootfs is removed.
    pub fn pin_image_layers(&self, id: &str, image: &str) -> Result<Vec<PathBuf>> {
        let _shared = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let record = self.get(image)?;
        let lowers = self.unpacked_layers(&record)?;
        self.rootfs.pin_chain_ids(id, &record.chain_ids())?;
        Ok(lowers)
    }

    /// The unpacked directory of each of `record`'s layers, all present.
    fn unpacked_layers(&self, record: &ImageRecord) -> Result<Vec<PathBuf>> {
        let lowers = record
            .layers
            .iter()
            .map(|l| self.layers.fs_dir(&l.chain_id))
            .collect::<Vec<_>>();
        for (layer, dir) in record.layers.iter().zip(&lowers) {
            if !dir.is_dir() {
                return Err(ImageError::MissingBlob {
                    digest: layer.chain_id.to_string(),
                    what: "unpacked layer".into(),
                });
            }
        }
        Ok(lowers)
    }

    /// Mounts a rootfs at `target` (default `rootfs/<id>/merged`).
    pub fn mount_rootfs(&self, id: &str, target: Option<&Path>) -> Result<PathBuf> {
        self.rootfs.mount(id, target)
    }

    pub fn unmount_rootfs(&self, id: &str) -> Result<()> {
        self.rootfs.unmount(id)
    }

    pub fn rootfs(&self, id: &str) -> Result<Rootfs> {
        self.rootfs.get(id)
    }

    pub fn list_rootfs(&self) -> Result<Vec<Rootfs>> {
        self.rootfs.list()
    }

    /// Unmounts (if mounted) and deletes a rootfs and its writable layer.
    pub fn remove_rootfs(&self, id: &str) -> Result<()> {
        self.rootfs.remove(id)
    }

    /// Disk usage of a container's writable layer.
    pub fn rootfs_usage(&self, id: &str) -> Result<FsUsage> {
        Ok(disk_usage(&self.rootfs.get(id)?.upper))
    }

    /// Disk usage of the whole store (ImageFsInfo).
    pub fn usage(&self) -> FsUsage {
        disk_usage(&self.root)
    }
}
