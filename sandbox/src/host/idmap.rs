//! Idmapped rootfs mounts: the image's files, owned by host root, appear
//! owned by root inside the pod's user namespace, without copying or
//! chowning a layer.
//!
//! `open_tree(OPEN_TREE_CLONE)` makes a detached copy of the rootfs mount
//! (the overlay the shim or caissond mounted, or a plain directory),
//! `mount_setattr(MOUNT_ATTR_IDMAP)` maps it through the pod's user
//! namespace, and `move_mount` stacks it on the rootfs path, where
//! libcontainer's bind of the rootfs finds it: a file with on-disk uid 0 is
//! seen as the pod's first host id (root inside), and one the pod's root
//! creates is written as on-disk uid 0. An overlay cannot be idmapped as a
//! whole on this kernel (`EINVAL`), but its lower layers can: an overlay
//! rootfs gets a new overlay of idmapped clones of its lower layers, with
//! the same upper and work dirs, stacked on it ([`mount_idmapped`]); what
//! the pod writes lands in the upper dir as its mapped host ids. The image
//! layers stay shared and untouched. The backend unmounts what it stacked
//! when the task is deleted, before the rootfs itself goes.
//!
//! Mounts from the request (hostPath volumes) are not idmapped: a file the
//! pod's root creates there belongs to its mapped host uid.
//!
//! **Fallback**: kernels before 5.12 have no `mount_setattr`, and a
//! filesystem may not support idmapping (overlayfs layers can be idmapped
//! since 5.19). Then
//! the task is refused with an error naming the rootfs and the kernel's
//! answer; no chowned copy is made (it would cost a full copy of the image
//! per pod and break layer sharing). An operator on such a kernel uses the
//! `native` handler.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::host::mount_fd::{self, clone_tree, cpath};
use crate::host::mountinfo::{self, MountEntry};

const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (<linux/mount.h>).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// Makes the mount at `path` and every mount below it read-only
/// (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`): a remount with
/// `MS_RDONLY` changes only the top one.
pub fn make_read_only_recursive(path: &Path) -> io::Result<()> {
    let path = cpath(path)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a NUL-terminated path and a valid mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why idmapping failed, for the error the task gets.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: String,
        source: io::Error,
    },
    #[error(
        "this kernel cannot idmap the rootfs {path} ({source}); a pod in a user namespace \
         of its own (every hardened pod, a hostUsers: false one) needs idmapped mounts \
         (Linux 5.12+, overlayfs 5.19+, tmpfs 6.3+): run it with the native handler and \
         the host's users on this node"
    )]
    Unsupported { path: String, source: io::Error },
}

/// A detached, idmapped copy of the mount tree at `path`, with `extra`
/// mount attributes set too.
fn clone_idmapped(path: &Path, userns: &OwnedFd, extra: u64) -> Result<OwnedFd, IdmapError> {
    let c = cpath(path).map_err(|source| IdmapError::Io {
        step: "open_tree",
        path: path.display().to_string(),
        source,
    })?;
    clone_idmapped_at(libc::AT_FDCWD, &c, 0, path, userns, extra, true)
}

/// [`clone_idmapped`] of `dirfd`+`c_path` (`flags` for open_tree besides
/// the clone), the whole tree below when `recursive`; `shown` names it in
/// errors.
fn clone_idmapped_at(
    dirfd: libc::c_int,
    c_path: &std::ffi::CStr,
    flags: libc::c_uint,
    shown: &Path,
    userns: &OwnedFd,
    extra: u64,
    recursive: bool,
) -> Result<OwnedFd, IdmapError> {
    let shown = shown.display().to_string();
    let io_err = |step: &'static str, source: io::Error| IdmapError::Io {
        step,
        path: shown.clone(),
        source,
    };
    let tree = clone_tree(dirfd, c_path, flags, recursive).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOSYS) {
            IdmapError::Unsupported {
                path: shown.clone(),
                source: e,
            }
        } else {
            io_err("open_tree", e)
        }
    })?;
    let recursive = if recursive { AT_RECURSIVE } else { 0 };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | extra,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: attr is a valid mount_attr of the size passed.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | recursive,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if set < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => IdmapError::Unsupported {
                path: shown,
                source: e,
            },
            _ => io_err("mount_setattr(MOUNT_ATTR_IDMAP)", e),
        });
    }
    Ok(tree)
}

/// Bind-mounts what `source` (an `O_PATH` fd) holds onto `target` (an
/// existing file or directory, to match), idmapped through `userns`: the
/// whole tree below when `recursive` (`rbind`). `Unsupported` when a
/// filesystem there cannot be idmapped (nothing is mounted then).
pub fn bind_idmapped(
    source: &OwnedFd,
    userns: &OwnedFd,
    target: &Path,
    recursive: bool,
) -> Result<(), IdmapError> {
    let tree = clone_idmapped_at(
        source.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH as libc::c_uint,
        target,
        userns,
        0,
        recursive,
    )?;
    attach(&tree, target)
}

/// Attaches a detached mount `tree` at `target`.
fn attach(tree: &OwnedFd, target: &Path) -> Result<(), IdmapError> {
    mount_fd::attach(tree, target).map_err(|source| IdmapError::Io {
        step: "move_mount",
        path: target.display().to_string(),
        source,
    })
}

/// The topmost mount at a path (`/proc/self/mountinfo`).
fn top_mount(path: &Path) -> Option<MountEntry> {
    let mounts = mountinfo::read().ok()?;
    // mountinfo shows canonical paths: a bundle reached through a symlink
    // or `..` would otherwise never match.
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    top_mount_in(&mounts, &path)
}

fn top_mount_in(mounts: &[MountEntry], path: &Path) -> Option<MountEntry> {
    mountinfo::top_at(mounts, path).cloned()
}

/// The layers of an overlay's super options.
fn overlay_layers(options: &str) -> Option<(Vec<PathBuf>, PathBuf, PathBuf)> {
    let get = |key: &str| {
        options
            .split(',')
            .find_map(|o| o.strip_prefix(key))
            .map(str::to_string)
    };
    let lowers = get("lowerdir=")?
        .split(':')
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect();
    Some((lowers, get("upperdir=")?.into(), get("workdir=")?.into()))
}

/// An idmapped rootfs: what [`mount_idmapped`] stacked and must remove.
#[derive(Debug)]
pub struct IdmappedRootfs {
    rootfs: PathBuf,
    /// For an overlay: the directory holding the idmapped layer mounts.
    layers: Option<PathBuf>,
}

/// Makes the rootfs at `rootfs` appear through the pod's user namespace.
///
/// * A plain filesystem (ext4, xfs, tmpfs, btrfs; the rootfs a directory or
///   a bind mount) is cloned, idmapped and stacked on `rootfs`.
/// * An overlay cannot be idmapped itself (`EINVAL`); its **lower layers**
///   can: each gets an idmapped clone under `scratch`, the upper dir's root
///   is chowned to the pod's root (`root`: its host uid and gid; the upper layer is the
///   container's own, and overlayfs works in it with the mounter's
///   credentials, so it cannot be idmapped too), and a new overlay of those
///   is stacked on `rootfs` with the same upper and work dirs. The
///   original, covered, is left for its owner to unmount (the kernel warns
///   that the two share an upper dir; nothing reaches the covered one).
pub fn mount_idmapped(
    rootfs: &Path,
    userns: &OwnedFd,
    root: (u32, u32),
    scratch: &Path,
) -> Result<IdmappedRootfs, IdmapError> {
    let top = top_mount(rootfs);
    match top.as_ref().filter(|t| t.fstype == "overlay") {
        None => {
            let tree = clone_idmapped(rootfs, userns, 0)?;
            attach(&tree, rootfs)?;
            Ok(IdmappedRootfs {
                rootfs: rootfs.to_path_buf(),
                layers: None,
            })
        }
        Some(overlay) => {
            let made = IdmappedRootfs {
                rootfs: rootfs.to_path_buf(),
                layers: Some(scratch.to_path_buf()),
            };
            match idmap_overlay(rootfs, overlay, userns, root, scratch) {
                Ok(()) => Ok(made),
                Err(e) => {
                    made.layers_cleanup();
                    Err(e)
                }
            }
        }
    }
}

fn idmap_overlay(
    rootfs: &Path,
    overlay: &MountEntry,
    userns: &OwnedFd,
    (root_uid, root_gid): (u32, u32),
    scratch: &Path,
) -> Result<(), IdmapError> {
    let io_err = |step: &'static str, path: &Path, source: io::Error| IdmapError::Io {
        step,
        path: path.display().to_string(),
        source,
    };
    let (lowers, upper, work) = overlay_layers(&overlay.super_options).ok_or_else(|| {
        io_err(
            "reading the overlay's layers",
            rootfs,
            io::Error::other(format!(
                "no lowerdir/upperdir/workdir in {:?}",
                overlay.super_options
            )),
        )
    })?;
    // Seen through the idmapped clones, every image file is owned by the
    // pod's host ids (a setuid-root binary is setuid to the pod's root):
    // only host root may reach them, and the clones are nosuid and nodev
    // besides. The container sees the layers only through the overlay
    // stacked on its rootfs, whose own mount flags govern it (exec's
    // nosuid check is on the overlay's mount, not the layers').
    if let Some(parent) = scratch.parent() {
        crate::host::private_dir(parent).map_err(|e| io_err("securing", parent, e))?;
    }
    crate::host::private_dir(scratch).map_err(|e| io_err("securing", scratch, e))?;
    let mut lower_dirs = Vec::new();
    for (i, lower) in lowers.iter().enumerate() {
        let target = scratch.join(format!("l{i}"));
        std::fs::create_dir(&target).map_err(|e| io_err("mkdir", &target, e))?;
        attach(
            &clone_idmapped(lower, userns, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)?,
            &target,
        )?;
        lower_dirs.push(target.display().to_string());
    }
    // The upper layer is the container's own: its root becomes the pod's
    // root's, and what the pod writes lands there as its mapped ids.
    std::os::unix::fs::chown(&upper, Some(root_uid), Some(root_gid))
        .map_err(|e| io_err("chown", &upper, e))?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower_dirs.join(":"),
        upper.display(),
        work.display()
    );
    let mut flags = nix::mount::MsFlags::empty();
    if overlay.mount_options.split(',').any(|o| o == "ro") {
        flags |= nix::mount::MsFlags::MS_RDONLY;
    }
    nix::mount::mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| IdmapError::Io {
        step: "mounting the overlay of idmapped layers on",
        path: rootfs.display().to_string(),
        source: e.into(),
    })
}

impl IdmappedRootfs {
    /// Removes what [`mount_idmapped`] stacked (the mount below stays).
    pub fn unmount(self) -> io::Result<()> {
        let ours = match &self.layers {
            None => top_mount_is_idmapped(&self.rootfs),
            Some(scratch) => top_mount(&self.rootfs)
                .filter(|t| t.fstype == "overlay")
                .and_then(|t| overlay_layers(&t.super_options))
                .is_some_and(|(lowers, _, _)| lowers.iter().all(|l| l.starts_with(scratch))),
        };
        let top = if ours {
            match nix::mount::umount2(&self.rootfs, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        } else {
            Ok(())
        };
        self.layers_cleanup();
        top
    }

    fn layers_cleanup(&self) {
        if let Some(scratch) = &self.layers {
            remove_layer_mounts(scratch);
        }
    }
}

/// Unmounts and removes the idmapped layer mounts under `scratch`.
pub fn remove_layer_mounts(scratch: &Path) {
    if let Ok(entries) = std::fs::read_dir(scratch) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&path);
        }
    }
    let _ = std::fs::remove_dir(scratch);
}

/// Whether a mounted overlay still has a lower layer under `scratch`
/// (`/proc/self/mountinfo`): its layer mounts belong to a live task.
pub fn layers_in_use(scratch: &Path) -> bool {
    let Ok(mounts) = mountinfo::read() else {
        return true;
    };
    layers_in_use_in(&mounts, scratch)
}

fn layers_in_use_in(mounts: &[MountEntry], scratch: &Path) -> bool {
    mounts
        .iter()
        .filter(|m| m.fstype == "overlay")
        .filter_map(|m| overlay_layers(&m.super_options))
        .any(|(lowers, _, _)| lowers.iter().any(|l| l.starts_with(scratch)))
}

/// Whether the topmost mount at `path` is idmapped (`/proc/self/mountinfo`).
fn top_mount_is_idmapped(path: &Path) -> bool {
    top_mount(path).is_some_and(|t| t.mount_options.split(',').any(|o| o == "idmapped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_mount_and_overlay_layers_are_read_from_mountinfo() {
        let info = "\
22 1 8:1 / /b/rootfs rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:50 / /b/rootfs rw,relatime - overlay overlay rw,lowerdir=/l/2:/l/1,upperdir=/s/fs,workdir=/s/work,uuid=on
";
        let mounts = mountinfo::parse(info);
        let top = top_mount_in(&mounts, Path::new("/b/rootfs")).unwrap();
        assert_eq!(top.fstype, "overlay");
        let (lowers, upper, work) = overlay_layers(&top.super_options).unwrap();
        assert_eq!(lowers, [PathBuf::from("/l/2"), PathBuf::from("/l/1")]);
        assert_eq!((upper, work), ("/s/fs".into(), "/s/work".into()));
        assert!(top_mount_in(&mounts, Path::new("/elsewhere")).is_none());
    }

    #[test]
    fn layers_in_use_are_those_an_overlay_still_stacks() {
        let info = "\
40 22 0:50 / /b/rootfs rw - overlay overlay rw,lowerdir=/p/layers/t1/l0:/p/layers/t1/l1,upperdir=/s/fs,workdir=/s/work
41 22 0:51 / /p/layers/t2/l0 rw,idmapped - ext4 /dev/vda rw
";
        let mounts = mountinfo::parse(info);
        assert!(layers_in_use_in(&mounts, Path::new("/p/layers/t1")));
        assert!(!layers_in_use_in(&mounts, Path::new("/p/layers/t2")));
        assert!(!layers_in_use_in(&mounts, Path::new("/p/layers/t")));
    }
}
