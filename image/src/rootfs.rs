//! Container root filesystems: an overlay mount of an image's layers
//! (read-only lower dirs, topmost first) with a per-container upper and work
//! dir under `rootfs/<id>/`. `meta.json` records the image and layers a rootfs
//! pins, so garbage collection never removes a layer a container still uses.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ImageError, Result};

/// The kernel copies mount options into one page.
const MAX_MOUNT_DATA: usize = 4095;

/// A container's writable root: where its layers are and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    pub id: String,
    pub image_id: Digest,
    pub chain_ids: Vec<Digest>,
    /// Lower dirs, bottom layer first.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where it is mounted, once mounted.
    pub mounted_at: Option<PathBuf>,
}

impl Rootfs {
    /// The overlay mount options: lowers topmost first.
    pub fn overlay_options(&self) -> Result<String> {
        let mut paths: Vec<&Path> = self.lowers.iter().rev().map(PathBuf::as_path).collect();
        paths.extend([self.upper.as_path(), self.work.as_path()]);
        for p in &paths {
            let s = p.to_string_lossy();
            if s.contains([',', ':']) || p.to_str().is_none() {
                return Err(ImageError::MountFailed {
                    target: p.to_path_buf(),
                    reason: "overlay paths must be UTF-8 without ',' or ':'".into(),
                });
            }
        }
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        Ok(format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        ))
    }
}

#[derive(Debug, Clone)]
pub struct RootfsStore {
    root: PathBuf,
}

/// Container ids become directory names: keep them plain.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::malformed(
            "rootfs id",
            format!("{id:?} must be 1-128 of [A-Za-z0-9._-]"),
        ))
    }
}

impl RootfsStore {
    pub fn open(root: &Path) -> Result<RootfsStore> {
        fs::create_dir_all(root).map_err(|e| ImageError::io("creating", root, e))?;
        Ok(RootfsStore {
            root: root.to_path_buf(),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Makes the upper and work dirs of a new rootfs over `lowers`.
    pub fn create(
        &self,
        id: &str,
        image_id: &Digest,
        chain_ids: Vec<Digest>,
        lowers: Vec<PathBuf>,
    ) -> Result<Rootfs> {
        validate_id(id)?;
        let dir = self.dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ImageError::RootfsExists { id: id.to_string() })
            }
            Err(e) => return Err(ImageError::io("creating", &dir, e)),
        }
        let rootfs = Rootfs {
            id: id.to_string(),
            image_id: image_id.clone(),
            chain_ids,
            lowers,
            upper: dir.join("upper"),
            work: dir.join("work"),
            mounted_at: None,
        };
        let made = (|| {
            for d in [&rootfs.upper, &rootfs.work] {
                fs::create_dir(d).map_err(|e| ImageError::io("creating", d, e))?;
            }
            rootfs.overlay_options()?;
            self.save(&rootfs)
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(rootfs)
    }

    pub fn get(&self, id: &str) -> Result<Rootfs> {
        validate_id(id)?;
        let path = self.dir(id).join("meta.json");
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::RootfsNotFound { id: id.to_string() }
            } else {
                ImageError::io("reading", &path, e)
            }
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::malformed(path.display().to_string(), e))
    }

    fn save(&self, rootfs: &Rootfs) -> Result<()> {
        let path = self.dir(&rootfs.id).join("meta.json");
        let tmp = self.dir(&rootfs.id).join(".meta.json.tmp");
        let bytes = serde_json::to_vec_pretty(rootfs)
            .map_err(|e| ImageError::malformed("rootfs meta", e))?;
        fs::write(&tmp, bytes).map_err(|e| ImageError::io("writing", &tmp, e))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| ImageError::io("syncing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| ImageError::io("renaming", &path, e))
    }

    /// Mounts the overlay at `target` (created if missing; default
    /// `rootfs/<id>/merged`). Returns the mount point.
    pub fn mount(&self, id: &str, target: Option<&Path>) -> Result<PathBuf> {
        let mut rootfs = self.get(id)?;
        let target = target
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.dir(id).join("merged"));
        if let Some(existing) = &rootfs.mounted_at {
            return Err(ImageError::MountFailed {
                target,
                reason: format!("rootfs {id} is already mounted at {}", existing.display()),
            });
        }
        let options = rootfs.overlay_options()?;
        if options.len() > MAX_MOUNT_DATA {
            return Err(ImageError::MountFailed {
                target,
                reason: format!(
                    "{} layers make overlay options longer than a page ({} bytes)",
                    rootfs.lowers.len(),
                    options.len()
                ),
            });
        }
        fs::create_dir_all(&target).map_err(|e| ImageError::io("creating", &target, e))?;
        mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| ImageError::MountFailed {
            target: target.clone(),
            reason: format!("overlay: {e}"),
        })?;
        rootfs.mounted_at = Some(target.clone());
        if let Err(e) = self.save(&rootfs) {
            let _ = umount2(&target, MntFlags::MNT_DETACH);
            return Err(e);
        }
        Ok(target)
    }

    /// Adds `chains` to the layers rootfs `id` pins: the layers of images
    /// its container mounts as image volumes, kept by garbage collection
    /// (even if their image is removed) until the rootfs is removed.
    pub fn pin_chain_ids(&self, id: &str, chains: &[Digest]) -> Result<()> {
        let mut rootfs = self.get(id)?;
        for chain in chains {
            if !rootfs.chain_ids.contains(chain) {
                rootfs.chain_ids.push(chain.clone());
            }
        }
        self.save(&rootfs)
    }

    /// Unmounts the rootfs if it is mounted.
    pub fn unmount(&self, id: &str) -> Result<()> {
        let mut rootfs = self.get(id)?;
        if let Some(target) = rootfs.mounted_at.take() {
            unmount_path(&target)?;
            self.save(&rootfs)?;
        }
        Ok(())
    }

    /// Unmounts and deletes a rootfs with its upper layer.
    pub fn remove(&self, id: &str) -> Result<()> {
        match self.get(id) {
            Ok(rootfs) => {
                if let Some(target) = &rootfs.mounted_at {
                    unmount_path(target)?;
                }
            }
            Err(ImageError::RootfsNotFound { .. }) if self.dir(id).exists() => {}
            Err(e) => return Err(e),
        }
        let dir = self.dir(id);
        fs::remove_dir_all(&dir).map_err(|e| ImageError::io("removing", dir, e))
    }

    /// Every rootfs (for garbage collection and recovery).
    pub fn list(&self) -> Result<Vec<Rootfs>> {
        let entries =
            fs::read_dir(&self.root).map_err(|e| ImageError::io("listing", &self.root, e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match self.get(&name) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(rootfs = %name, error = %e, "unreadable rootfs record"),
            }
        }
        Ok(out)
    }
}

/// The options of a read-only overlay of `lowers` (bottom layer first) over
/// an empty directory `empty`: without an upper dir the kernel wants at
/// least two lower dirs, and a one-layer image has one.
pub fn read_only_overlay_options(lowers: &[PathBuf], empty: &Path) -> Result<String> {
    let mut paths: Vec<&Path> = lowers.iter().rev().map(PathBuf::as_path).collect();
    paths.push(empty);
    let mut parts = Vec::with_capacity(paths.len());
    for p in paths {
        match p.to_str() {
            Some(s) if !s.contains([',', ':']) => parts.push(s),
            _ => {
                return Err(ImageError::MountFailed {
                    target: p.to_path_buf(),
                    reason: "overlay paths must be UTF-8 without ',' or ':'".into(),
                })
            }
        }
    }
    let options = format!("lowerdir={}", parts.join(":"));
    if options.len() > MAX_MOUNT_DATA {
        return Err(ImageError::MountFailed {
            target: empty.to_path_buf(),
            reason: format!(
                "{} layers make overlay options longer than a page ({} bytes)",
                lowers.len(),
                options.len()
            ),
        });
    }
    Ok(options)
}

/// Mounts a read-only, nosuid, nodev overlay of `lowers` (bottom layer
/// first, no upper dir) at `target`, making `target` and the empty bottom
/// dir `empty` if missing.
pub fn mount_read_only_overlay(lowers: &[PathBuf], empty: &Path, target: &Path) -> Result<()> {
    let options = read_only_overlay_options(lowers, empty)?;
    for dir in [empty, target] {
        fs::create_dir_all(dir).map_err(|e| ImageError::io("creating", dir, e))?;
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| ImageError::MountFailed {
        target: target.to_path_buf(),
        reason: format!("read-only overlay: {e}"),
    })
}

/// Unmounts `target`; not being mounted is fine. A busy mount is detached.
pub fn unmount_path(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!(target = %target.display(), "rootfs busy: detaching the mount");
            umount2(target, MntFlags::MNT_DETACH).map_err(|e| ImageError::MountFailed {
                target: target.to_path_buf(),
                reason: format!("unmount: {e}"),
            })
        }
        Err(e) => Err(ImageError::MountFailed {
            target: target.to_path_buf(),
            reason: format!("unmount: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_overlays_stack_topmost_first_over_the_empty_dir() {
        let lowers = [PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
        assert_eq!(
            read_only_overlay_options(&lowers, Path::new("/v/empty")).unwrap(),
            "lowerdir=/l/top:/l/bottom:/v/empty"
        );
        assert_eq!(
            read_only_overlay_options(&lowers[..1], Path::new("/v/empty")).unwrap(),
            "lowerdir=/l/bottom:/v/empty"
        );
        for bad in ["/l/a,b", "/l/a:b"] {
            assert!(read_only_overlay_options(&[PathBuf::from(bad)], Path::new("/e")).is_err());
        }
        let many: Vec<PathBuf> = (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/caisson/images/layers/{i:040}")))
            .collect();
        assert!(read_only_overlay_options(&many, Path::new("/e")).is_err());
    }
}
