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
//!
//! Propagation over 9p: the guest sees the host's files, not its mounts.
//! * private (`rprivate`): the share's bind is private; mounts made on the
//!   host below the source later are not seen.
//! * host to container (`rslave`): the share's bind is a slave of the
//!   source's peer group, so mounts made on the host later (below a shared
//!   source mount) appear in it and the guest sees their files through 9p.
//!   Not with read-only: those later mounts would be writable through 9p.
//! * bidirectional (`rshared`): cannot work (the container's mounts are
//!   the guest kernel's, they never reach the host), so it is refused, as
//!   are sources 9p cannot carry (a unix socket or a FIFO would be the
//!   guest's own, connected to nothing on the host).
//!
//! Escapes: host paths are resolved on the host (caissond canonicalises
//! them), container paths in the guest by libcontainer inside the rootfs,
//! and symlinks the guest makes in a volume are resolved by the guest's
//! kernel: QEMU's 9p server never follows them on the host. Device nodes
//! in a volume do not open in the guest (the agent mounts the share
//! `nodev`).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{Mount, Spec};

use crate::backend::BackendError;

/// Where the agent mounts the share in the guest.
pub const GUEST_SHARE: &str = "/run/caisson/shared";

pub struct Share {
    dir: PathBuf,
}

fn is_bind(kind: Option<&str>, options: &[String]) -> bool {
    kind == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// How a bind's share follows the host's mounts below its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Propagation {
    Private,
    /// Host to container.
    Slave,
    /// Both ways: not possible into a VM.
    Shared,
}

/// The propagation a mount's options ask for (the last one wins, as in
/// runc); private when none.
fn propagation(options: &[String]) -> Propagation {
    options
        .iter()
        .rev()
        .find_map(|o| match o.as_str() {
            "shared" | "rshared" => Some(Propagation::Shared),
            "slave" | "rslave" => Some(Propagation::Slave),
            "private" | "rprivate" | "unbindable" | "runbindable" => Some(Propagation::Private),
            _ => None,
        })
        .unwrap_or(Propagation::Private)
}

/// Read-only anywhere in the options: the host side errs on the safe side.
fn is_read_only(options: &[String]) -> bool {
    options.iter().any(|o| o == "ro" || o == "rro")
}

/// Refuses, naming the mount, what a bind into the guest cannot do:
/// bidirectional propagation, host-to-container propagation of a
/// read-only mount, and sources 9p cannot carry (sockets, FIFOs).
pub fn check_mounts(spec: &Spec) -> Result<(), BackendError> {
    let Some(mounts) = spec.mounts() else {
        return Ok(());
    };
    for (n, m) in mounts.iter().enumerate() {
        check_mount(n, m)?;
    }
    Ok(())
}

fn check_mount(n: usize, m: &Mount) -> Result<(), BackendError> {
    let options = m.options().clone().unwrap_or_default();
    if !is_bind(m.typ().as_deref(), &options) || m.destination() == Path::new("/dev/shm") {
        return Ok(());
    }
    let dest = m.destination().display();
    let invalid = |field: &str, reason: String| BackendError::InvalidArgument {
        what: format!("mounts[{n}].{field}"),
        reason,
    };
    match propagation(&options) {
        Propagation::Shared => {
            return Err(invalid(
                "options",
                format!(
                    "{dest}: bidirectional (rshared) propagation cannot reach the host from \
                     a microvm pod's guest: use private or host-to-container"
                ),
            ))
        }
        Propagation::Slave if is_read_only(&options) => {
            return Err(invalid(
                "options",
                format!(
                    "{dest}: host-to-container (rslave) propagation of a read-only mount: \
                     mounts the host makes later could be written through the VM's share; \
                     make it read-write or private"
                ),
            ))
        }
        _ => {}
    }
    if let Some(source) = m.source() {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = fs::metadata(source) {
            let kind = meta.file_type();
            let what = if kind.is_socket() {
                Some("a unix socket")
            } else if kind.is_fifo() {
                Some("a FIFO")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(invalid(
                    "source",
                    format!(
                        "{dest}: {} is {what}, which cannot be shared into a microvm \
                         pod's guest (it would be the guest's own, connected to nothing \
                         on the host)",
                        source.display()
                    ),
                ));
            }
        }
    }
    Ok(())
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
        bind(&host_rootfs, &shared_rootfs, true, false, false)?;
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
            // Refused before anything is made (`check_mounts`); checked
            // again for callers that did not.
            check_mount(n, m).map_err(|e| e.to_string())?;
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
            let read_only = is_read_only(&options);
            let follow_host = propagation(&options) == Propagation::Slave;
            bind(&source, &target, recursive, read_only, follow_host)?;
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

/// Binds `source` at `target`; the bind never propagates anywhere (the
/// shim's namespace may be shared), and with `follow_host` it receives the
/// mounts made below `source` later (a slave of its peer group).
fn bind(
    source: &Path,
    target: &Path,
    recursive: bool,
    read_only: bool,
    follow_host: bool,
) -> Result<(), String> {
    let fail = |e: nix::Error| format!("binding {} at {}: {e}", source.display(), target.display());
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(fail)?;
    let propagation = if follow_host {
        MsFlags::MS_SLAVE
    } else {
        MsFlags::MS_PRIVATE
    };
    if let Err(e) = mount(
        None::<&str>,
        target,
        None::<&str>,
        propagation | MsFlags::MS_REC,
        None::<&str>,
    ) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(fail(e));
    }
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

    #[test]
    fn propagation_is_the_last_option_that_names_one() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (options, want) in [
            (opts(&["rbind", "ro"]), Propagation::Private),
            (opts(&["rbind", "rprivate"]), Propagation::Private),
            (opts(&["rbind", "rslave", "rw"]), Propagation::Slave),
            (opts(&["bind", "slave"]), Propagation::Slave),
            (opts(&["rbind", "rshared"]), Propagation::Shared),
            (opts(&["rshared", "rprivate"]), Propagation::Private),
        ] {
            assert_eq!(propagation(&options), want, "{options:?}");
        }
    }

    #[test]
    fn what_cannot_be_shared_is_refused_naming_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let bind = |source: &Path, options: &[&str]| {
            let mut m = Mount::default();
            m.set_destination(PathBuf::from("/m"));
            m.set_typ(Some("bind".into()));
            m.set_source(Some(source.to_path_buf()));
            m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
            m
        };
        let d = dir.path();
        for (m, want) in [
            (bind(d, &["rbind", "rprivate", "ro"]), None),
            (bind(d, &["rbind", "rslave", "rw"]), None),
            (
                bind(d, &["rbind", "rslave", "ro"]),
                Some("mounts[3].options"),
            ),
            (
                bind(d, &["rbind", "rshared", "rw"]),
                Some("mounts[3].options"),
            ),
            (
                bind(&socket, &["rbind", "rprivate"]),
                Some("mounts[3].source"),
            ),
        ] {
            match (check_mount(3, &m), want) {
                (Ok(()), None) => {}
                (Err(BackendError::InvalidArgument { what, .. }), Some(w)) => assert_eq!(what, w),
                (got, _) => panic!("{m:?}: {got:?}, want {want:?}"),
            }
        }
        // Not a bind, or the pod's /dev/shm (the guest's own): not checked.
        let mut proc = bind(&socket, &["rshared"]);
        proc.set_typ(Some("proc".into()));
        proc.set_options(Some(vec!["rshared".into()]));
        assert!(check_mount(0, &proc).is_ok());
        let mut shm = bind(&socket, &["rbind", "rshared"]);
        shm.set_destination(PathBuf::from("/dev/shm"));
        assert!(check_mount(0, &shm).is_ok());
    }
}
