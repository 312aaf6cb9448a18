//! The pod's shared directory: what the guest sees of the host, over
//! virtio-9p, mounted by the agent at [`GUEST_SHARE`].
//!
//! Only this pod's files are in it (Kata's `kataShared` is the same idea):
//! each container's rootfs (the overlay the shim already mounted at
//! `<bundle>/rootfs`) is bound at `<share>/<id>/rootfs`, and each bind
//! mount of its spec (the pod's `/etc/hosts`, `resolv.conf`, hostname, the
//! CRI's volumes) at `<share>/<id>/mounts/<n>`; the spec sent to the guest
//! names those paths instead of the host's. A read-only bind is made
//! read-only on the host too, so the guest cannot write through 9p even if
//! it ignored the flag. `/dev/shm` is not shared: the agent gives the pod a
//! tmpfs of the guest's own (memory shared through 9p would not be shared).
//!
//! QEMU is the shim's child in the shim's mount namespace, so binds made
//! after the VM started are seen through the export at once.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

/// Where the agent mounts the share in the guest.
pub const GUEST_SHARE: &str = "/run/caisson/shared";

pub struct Share {
    dir: PathBuf,
}

fn is_bind(kind: Option<&str>, options: &[String]) -> bool {
    kind == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// A task id usable as one path component.
fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "task id {id:?} must be letters, digits, '-', '_' or '.'"
        ))
    }
}

impl Share {
    /// Makes the (empty, root-only) shared directory, as a private mount of
    /// its own: binds made below it then never propagate into other mount
    /// namespaces (`/run` is usually shared), where detaching them here
    /// would not reach.
    pub fn create(dir: &Path) -> Result<Share, String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("making {}: {e}", dir.display()))?;
        let fail = |e: nix::Error| format!("making {} a private mount: {e}", dir.display());
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(fail)?;
        if let Err(e) = mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        ) {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
            return Err(fail(e));
        }
        Ok(Share {
            dir: dir.to_path_buf(),
        })
    }

    /// An existing share (to clean up after a shim that died).
    pub fn at(dir: &Path) -> Share {
        Share {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Binds task `id`'s rootfs and bind-mount sources into the share and
    /// rewrites `spec` to the guest's paths. On failure, nothing is left.
    pub fn add_task(&self, id: &str, bundle: &Path, spec: &mut Spec) -> Result<(), String> {
        check_id(id)?;
        let task_dir = self.dir.join(id);
        if task_dir.exists() {
            return Err(format!("{} is already shared", task_dir.display()));
        }
        let result = self.bind_task(id, bundle, spec);
        if result.is_err() {
            self.remove_task(id);
        }
        result
    }

    fn bind_task(&self, id: &str, bundle: &Path, spec: &mut Spec) -> Result<(), String> {
        let task_dir = self.dir.join(id);
        let guest_dir = Path::new(GUEST_SHARE).join(id);
        let mut root = spec
            .root()
            .clone()
            .ok_or_else(|| "the spec has no root".to_string())?;
        let host_rootfs = bundle.join(root.path());
        let shared_rootfs = task_dir.join("rootfs");
        make_dir(&shared_rootfs)?;
        bind(&host_rootfs, &shared_rootfs, true, false)?;
        root.set_path(guest_dir.join("rootfs"));
        spec.set_root(Some(root));

        let Some(mut mounts) = spec.mounts().clone() else {
            return Ok(());
        };
        for (n, m) in mounts.iter_mut().enumerate() {
            let options = m.options().clone().unwrap_or_default();
            if !is_bind(m.typ().as_deref(), &options) || m.destination() == Path::new("/dev/shm") {
                continue;
            }
            let Some(source) = m.source().clone() else {
                continue;
            };
            let meta = fs::metadata(&source)
                .map_err(|e| format!("bind mount source {}: {e}", source.display()))?;
            let target = task_dir.join("mounts").join(n.to_string());
            if meta.is_dir() {
                make_dir(&target)?;
            } else {
                make_dir(target.parent().unwrap_or(&task_dir))?;
                fs::write(&target, b"").map_err(|e| format!("{}: {e}", target.display()))?;
            }
            let recursive = options.iter().any(|o| o == "rbind");
            let read_only = options.iter().any(|o| o == "ro");
            bind(&source, &target, recursive, read_only)?;
            m.set_source(Some(guest_dir.join("mounts").join(n.to_string())));
        }
        spec.set_mounts(Some(mounts));
        Ok(())
    }

    /// Unmounts and removes everything shared for task `id`.
    pub fn remove_task(&self, id: &str) {
        if check_id(id).is_err() {
            return;
        }
        let task_dir = self.dir.join(id);
        detach_below(&task_dir);
        remove_tree(&task_dir);
    }

    /// Unmounts and removes the whole share.
    pub fn remove(&self) {
        detach_below(&self.dir);
        remove_tree(&self.dir);
    }
}

fn make_dir(path: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("making {}: {e}", path.display()))?;
    // The rootfs mount point keeps root's own mode once bound over.
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    Ok(())
}

fn bind(source: &Path, target: &Path, recursive: bool, read_only: bool) -> Result<(), String> {
    let fail = |e: nix::Error| format!("binding {} at {}: {e}", source.display(), target.display());
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(fail)?;
    // Not propagated anywhere: the shim's namespace may be shared.
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail)?;
    if read_only {
        // Every mount below too (an `rbind` brings the source's submounts).
        if let Err(e) = crate::host::idmap::make_read_only_recursive(target) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(format!("making {} read-only: {e}", target.display()));
        }
    }
    Ok(())
}

/// Removes `dir` and what is in it without ever entering a mount: one
/// left below it (not detached, or bound while this ran) keeps its contents
/// and its mount point. Mount points are mountinfo's, and also any change of
/// device (a bind of the same filesystem shows only in mountinfo). Without
/// mountinfo nothing is removed. Missing is fine.
pub fn remove_tree(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = fs::canonicalize(dir) else {
        return;
    };
    let mounts: std::collections::HashSet<PathBuf> = match crate::host::mountinfo::read() {
        Ok(m) => m.into_iter().map(|m| m.mount_point).collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "reading mountinfo: not removed");
            return;
        }
    };
    let Ok(top) = fs::symlink_metadata(&dir) else {
        return;
    };
    fn walk(path: &Path, dev: u64, mounts: &std::collections::HashSet<PathBuf>) {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        if meta.dev() != dev || mounts.contains(path) {
            tracing::warn!(path = %path.display(), "a mount is left here: not removed");
            return;
        }
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(path) {
                for entry in entries.flatten() {
                    walk(&entry.path(), dev, mounts);
                }
            }
            let _ = fs::remove_dir(path);
        } else {
            let _ = fs::remove_file(path);
        }
    }
    walk(&dir, top.dev(), &mounts);
}

/// Detaches every mount at or below `dir` (deepest first); `dir` is made
/// canonical first, as mountinfo's paths are.
fn detach_below(dir: &Path) {
    let dir = match fs::canonicalize(dir) {
        Ok(d) => d,
        Err(_) => return,
    };
    let dir = dir.as_path();
    let mounts = match crate::host::mountinfo::read() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "reading mountinfo: the share's binds are not detached");
            return;
        }
    };
    let mut points: Vec<PathBuf> = mounts
        .iter()
        .map(|m| PathBuf::from(&m.mount_point))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        if let Err(e) = umount2(&point, MntFlags::MNT_DETACH) {
            if e != nix::Error::EINVAL && e != nix::Error::ENOENT {
                tracing::warn!(mount = %point.display(), error = %e, "unmounting a shared path");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_single_path_components() {
        for good in ["abc", "0123abcd", "c-1_x.y"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_binds_are_shared() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_bind(Some("bind"), &[]));
        assert!(is_bind(None, &opts(&["rbind", "ro"])));
        assert!(is_bind(Some("none"), &opts(&["bind"])));
        assert!(!is_bind(Some("proc"), &opts(&["nosuid"])));
        assert!(!is_bind(Some("tmpfs"), &[]));
    }
}
