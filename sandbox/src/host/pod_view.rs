//! A build's view of the node's mounts: the node's own, without the other
//! pods'.
//!
//! Why: libcontainer's build reads `/proc/self/mountinfo` about fourteen
//! times (libcgroups 0.7 makes a v1 manager with one read per controller,
//! to the end for each controller the host has not mounted, parsing every
//! line), its init copies the whole mount table into the container's
//! namespace and detaches it again after `pivot_root`. Every pod on the
//! node adds three or four mounts (its `/dev/shm`, its pause's rootfs, its
//! network namespace pin, a rootfs per container), so a pod's start grew
//! with the pods already running: with 300 such mounts, pause create took
//! 20 ms instead of 12 and task create 14.5 instead of 8.
//!
//! How: caissond keeps its pods' mounts below a few dirs of its own
//! (`<run_dir>/pods`, `<run_dir>/netns`), each made a mount point of its
//! own ([`pin_roots`]), and names them to its shims
//! ([`ROOTS_ENV`]). For a build the fork server enters a new mount
//! namespace, a copy of the node's, made a slave of it (nothing done in it
//! reaches the node); there it clones what each root holds of the pod (its
//! dir with everything mounted below it, its network namespace's pin,
//! both named by the pod's id), detaches every root (one
//! `umount2(MNT_DETACH)` each, whatever is below) and puts the clones back
//! where they were. The
//! build's processes inherit that namespace; the server goes back to the
//! node's afterwards. A mount the node makes later (a volume kubelet mounts
//! after the pod started) is in the next build's copy, since each build
//! copies the node's table as it is then.
//!
//! Not used for a task whose spec asks for shared rootfs propagation (a
//! BIDIRECTIONAL volume): its mounts must reach the node's, and this
//! namespace is a slave.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::mount_fd;
use super::mountinfo::MountEntry;

/// The shim's environment variable naming, `:`-separated, the dirs below
/// which caissond keeps its pods' mounts (each a mount point of its own).
pub const ROOTS_ENV: &str = "CAISSON_POD_MOUNT_ROOTS";

/// What a build does not see: every mount below `hide`'s dirs, but for
/// those at or below `keep`'s paths (the task's pod's, in them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodView {
    pub hide: Vec<PathBuf>,
    pub keep: Vec<PathBuf>,
}

impl PodView {
    /// The view for a task whose bundle is `bundle`, with the pods' mounts
    /// below `roots`: the pod is `bundle`'s first component below the root
    /// that holds it, and what every root has by that name is kept. None
    /// when no root holds the bundle (one containerd made): the build then
    /// sees the node's mounts.
    pub fn for_bundle(roots: &[PathBuf], bundle: &Path) -> Option<PodView> {
        let pod = roots.iter().find_map(|root| {
            match bundle.strip_prefix(root).ok()?.components().next()? {
                Component::Normal(pod) => Some(pod),
                _ => None,
            }
        })?;
        Some(PodView {
            hide: roots.to_vec(),
            keep: roots.iter().map(|root| root.join(pod)).collect(),
        })
    }

    /// Runs `f` in this view (see the module's doc) and comes back to this
    /// thread's mount namespace and working directory. A view that cannot
    /// be made is logged and `f` runs in the node's. Exits the process if
    /// it cannot come back: a fork server left in a pod's view must not
    /// serve another build.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let entered = match Entered::enter(self) {
            Ok(entered) => Some(entered),
            Err(e) => {
                tracing::warn!(keep = ?self.keep, error = %e, "the build sees every pod's mounts");
                None
            }
        };
        let out = f();
        if let Some(entered) = entered {
            if let Err(e) = entered.leave() {
                tracing::error!(error = %e, "could not return to the node's mount namespace");
                std::process::exit(1);
            }
        }
        out
    }
}

/// This thread in a pod's view, and what it came from.
struct Entered {
    node: File,
    cwd: OwnedFd,
}

impl Entered {
    fn enter(view: &PodView) -> io::Result<Entered> {
        let node = File::open("/proc/thread-self/ns/mnt")?;
        let cwd = OwnedFd::from(File::open(".")?);
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
        let entered = Entered { node, cwd };
        match entered.trim(view) {
            Ok(()) => Ok(entered),
            Err(e) => {
                entered.leave()?;
                Err(e)
            }
        }
    }

    /// Slaves the new namespace to the node's, then hides the roots and
    /// puts the pod's own dir back.
    fn trim(&self, view: &PodView) -> io::Result<()> {
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )?;
        let mut kept = Vec::new();
        for keep in &view.keep {
            let tree = mount_fd::clone_tree(libc::AT_FDCWD, &mount_fd::cpath(keep)?, 0, true);
            match tree {
                Ok(tree) => kept.push((keep, tree)),
                // The pod has none here (a hostNetwork pod's netns pin).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::other(format!("{}: {e}", keep.display()))),
            }
        }
        let mut hidden = Vec::new();
        for root in &view.hide {
            match nix::mount::umount2(root, MntFlags::MNT_DETACH) {
                Ok(()) => hidden.push(root),
                // Not a mount point (caissond did not pin it): nothing of it
                // is hidden.
                Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => return Err(io::Error::other(format!("{}: {e}", root.display()))),
            }
        }
        for (keep, tree) in kept {
            if hidden.iter().any(|root| keep.starts_with(root)) {
                mount_fd::attach(&tree, keep)
                    .map_err(|e| io::Error::other(format!("{}: {e}", keep.display())))?;
            }
        }
        Ok(())
    }

    fn leave(self) -> io::Result<()> {
        nix::sched::setns(&self.node, CloneFlags::CLONE_NEWNS)?;
        nix::unistd::fchdir(&self.cwd)?;
        Ok(())
    }
}

/// Makes each of `dirs` (existing dirs) a mount point of its own (a bind
/// mount onto itself), unless it is one already, and returns those that
/// are, as named in `dirs`: the roots a [`PodView`] hides. A dir with
/// mounts below it that is not a mount point (pods of a caissond from
/// before this) is left alone: a bind now would cover those mounts, not
/// hold them. `mounts` is this process's mount table.
pub fn pin_roots(dirs: &[PathBuf], mounts: &[MountEntry]) -> Vec<PathBuf> {
    dirs.iter()
        .filter(|dir| {
            // The mount table names canonical paths.
            let Ok(canonical) = dir.canonicalize() else {
                return false;
            };
            if mounts.iter().any(|m| m.mount_point == canonical) {
                return true;
            }
            if mounts.iter().any(|m| m.mount_point.starts_with(&canonical)) {
                tracing::info!(dir = %dir.display(), "mounts below, not a mount point: builds see every pod's mounts");
                return false;
            }
            // Private: on a node whose /run is shared (systemd's), a bind
            // there joins /run's peer group, and every pod mount below it
            // would be copied onto the dir it covers.
            let pinned = nix::mount::mount(
                Some(dir.as_path()),
                dir.as_path(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .and_then(|()| {
                nix::mount::mount(
                    None::<&str>,
                    dir.as_path(),
                    None::<&str>,
                    MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .inspect_err(|_| {
                    let _ = nix::mount::umount2(dir.as_path(), MntFlags::MNT_DETACH);
                })
            });
            match pinned {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "making a mount point");
                    false
                }
            }
        })
        .cloned()
        .collect()
}

/// Unmounts each of `roots` that has nothing mounted below it (no pod
/// left): what [`pin_roots`] made, at caissond's exit. One with pods'
/// mounts below stays for the next caissond.
pub fn unpin_roots(roots: &[PathBuf], mounts: &[MountEntry]) {
    for root in roots {
        let Ok(canonical) = root.canonicalize() else {
            continue;
        };
        let busy = mounts
            .iter()
            .any(|m| m.mount_point.starts_with(&canonical) && m.mount_point != canonical);
        if busy {
            continue;
        }
        if let Err(e) = nix::mount::umount2(root, MntFlags::MNT_DETACH) {
            tracing::warn!(dir = %root.display(), error = %e, "unmounting");
        }
    }
}

/// [`ROOTS_ENV`]'s value for `roots`.
pub fn roots_env(roots: &[PathBuf]) -> std::ffi::OsString {
    std::env::join_paths(roots).unwrap_or_default()
}

/// The roots [`ROOTS_ENV`] names in this process's environment (absolute
/// paths only).
pub fn roots_from_env() -> Vec<PathBuf> {
    std::env::var_os(ROOTS_ENV)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| p.is_absolute())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_dir_is_the_bundles_first_component_below_its_root() {
        let roots = vec![PathBuf::from("/run/c/pods"), PathBuf::from("/run/c/netns")];
        let view = PodView::for_bundle(&roots, Path::new("/run/c/pods/p1/containers/c1")).unwrap();
        let p1 = vec![
            PathBuf::from("/run/c/pods/p1"),
            PathBuf::from("/run/c/netns/p1"),
        ];
        assert_eq!(view.keep, p1);
        assert_eq!(view.hide, roots);
        let pause = PodView::for_bundle(&roots, Path::new("/run/c/pods/p1/bundle")).unwrap();
        assert_eq!(pause.keep, p1);
        // containerd's bundles, the root itself, a sibling dir's prefix.
        for bundle in [
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1",
            "/run/c/pods",
            "/run/c/podsx/p1",
        ] {
            assert_eq!(
                PodView::for_bundle(&roots, Path::new(bundle)),
                None,
                "{bundle}"
            );
        }
        assert_eq!(PodView::for_bundle(&[], Path::new("/run/c/pods/p1")), None);
    }
}
