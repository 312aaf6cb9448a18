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
//! Execs are built in the view too (libcontainer's tenant build reads the
//! mount table as its init build does).
//!
//! Not used for a task whose spec asks for shared rootfs propagation (a
//! BIDIRECTIONAL volume): its mounts must reach the node's, and this
//! namespace is a slave; nor for one that binds a dir the view changes (a
//! hostPath of `/run`, of a root, of another pod's dir: a CNI daemon's or a
//! node agent's view of the netns pins): it sees what it would have seen.

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

    /// Whether every one of `sources` (bind mounts' sources) shows the same
    /// in this view as on the node: none is a hidden root or above one, and
    /// none is below a root but outside what is kept.
    pub fn keeps_all(&self, sources: &[PathBuf]) -> bool {
        sources.iter().all(|source| {
            self.hide.iter().all(|root| {
                !root.starts_with(source)
                    && (!source.starts_with(root)
                        || self.keep.iter().any(|k| source.starts_with(k)))
            })
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
            entered.leave_or_exit();
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
                entered.leave_or_exit();
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

    /// Back to the node's namespace and the old working directory, or the
    /// process exits.
    fn leave_or_exit(self) {
        let left = nix::sched::setns(&self.node, CloneFlags::CLONE_NEWNS)
            .and_then(|()| nix::unistd::fchdir(&self.cwd));
        if let Err(e) = left {
            tracing::error!(error = %e, "could not return to the node's mount namespace");
            std::process::exit(1);
        }
    }
}

/// Makes each of `dirs` (existing dirs) a mount point of its own (a bind
/// mount onto itself), unless it is one already, and returns those that
/// are, as named in `dirs`: the roots a [`PodView`] hides. Left alone, and
/// not returned: a dir that is the mount point of something else (an
/// operator's tmpfs: not caissond's to unmount, and the pods' dirs would
/// not be found below it when put back), and one with mounts below it that
/// is not a mount point (pods of a caissond from before this: a bind now
/// would cover their mounts, not hold them). Nothing is pinned when the
/// mount table cannot be read.
pub fn pin_roots(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mounts = match super::mountinfo::read() {
        Ok(mounts) => mounts,
        Err(e) => {
            tracing::warn!(error = %e, "reading the mount table: builds see every pod's mounts");
            return Vec::new();
        }
    };
    dirs.iter()
        .filter(|dir| {
            // The mount table names canonical paths.
            let Ok(canonical) = dir.canonicalize() else {
                return false;
            };
            if mounts.iter().any(|m| m.mount_point == canonical) {
                let ours = is_self_bind(&mounts, &canonical);
                if !ours {
                    tracing::info!(dir = %dir.display(), "a mount of its own, not a bind of itself: builds see every pod's mounts");
                }
                return ours;
            }
            if mounts.iter().any(|m| m.mount_point.starts_with(&canonical)) {
                tracing::info!(dir = %dir.display(), "mounts below, not a mount point: builds see every pod's mounts");
                return false;
            }
            match pin(dir) {
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

/// Binds `dir` onto itself, in a peer group of its own: not /run's on a
/// node where /run is shared (systemd's), where every pod mount below it
/// would be copied onto the dir it covers; shared, so that a pod's
/// HOST_TO_CONTAINER volume of it (a CNI daemon's view of the netns pins)
/// still receives new mounts.
fn pin(dir: &Path) -> nix::Result<()> {
    nix::mount::mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    let peer_group = [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED]
        .into_iter()
        .try_for_each(|flag| {
            nix::mount::mount(None::<&str>, dir, None::<&str>, flag, None::<&str>)
        });
    if peer_group.is_err() {
        let _ = nix::mount::umount2(dir, MntFlags::MNT_DETACH);
    }
    peer_group
}

/// Whether the topmost mount at `dir` (canonical) binds `dir` itself: the
/// same filesystem, and the same directory of it, as the mount below it.
fn is_self_bind(mounts: &[MountEntry], dir: &Path) -> bool {
    let Some(top) = mounts.iter().rposition(|m| m.mount_point == dir) else {
        return false;
    };
    let below = mounts[..top]
        .iter()
        .rev()
        .find(|m| dir.starts_with(&m.mount_point));
    below.is_some_and(|below| {
        let Ok(rel) = dir.strip_prefix(&below.mount_point) else {
            return false;
        };
        mounts[top].device == below.device && mounts[top].root == below.root.join(rel)
    })
}

/// Unmounts each of `roots` (what [`pin_roots`] returned) that has nothing
/// mounted below it (no pod left), at caissond's exit: a plain unmount,
/// which the kernel refuses while a mount is below (`EBUSY`), so one with a
/// pod's mounts below stays for the next caissond, however they came.
pub fn unpin_roots(roots: &[PathBuf]) {
    for root in roots {
        match nix::mount::umount2(root, MntFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => tracing::warn!(dir = %root.display(), error = %e, "unmounting"),
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

    #[test]
    fn a_bind_of_what_the_view_changes_is_seen_as_on_the_node() {
        let roots = vec![PathBuf::from("/run/c/pods"), PathBuf::from("/run/c/netns")];
        let view = PodView::for_bundle(&roots, Path::new("/run/c/pods/p1/bundle")).unwrap();
        let sources = |s: &[&str]| s.iter().map(PathBuf::from).collect::<Vec<_>>();
        // The pod's own files, and anything outside the roots.
        assert!(view.keeps_all(&sources(&[
            "/run/c/pods/p1/hosts",
            "/run/c/pods/p1/shm",
            "/var/lib/kubelet/pods/u/volumes/v",
            "/run/c/netns/p1"
        ])));
        assert!(view.keeps_all(&[]));
        // A root, what holds one, another pod's dir.
        for hidden in [
            "/run/c/netns",
            "/run/c/pods",
            "/run",
            "/",
            "/run/c/pods/p2/shm",
            "/run/c/netns/p2",
        ] {
            assert!(!view.keeps_all(&sources(&[hidden])), "{hidden}");
        }
    }
}
