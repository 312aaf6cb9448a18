//! Bind-mount sources the pod's mapped root cannot reach, relayed through
//! the task's bundle.
//!
//! libcontainer makes a task's bind mounts from inside the pod's user
//! namespace, so it looks their sources up as the pod's root: an
//! unprivileged host uid, which cannot pass a directory that is not
//! searchable by others. containerd 1.6 keeps the pods' `resolv.conf`,
//! `hosts`, `hostname` and `/dev/shm` under its root and its CRI plugin's
//! state dir, both 0700. Rather than loosen those host directories, the
//! shim (host root, in the host's user namespace, as runc opens bind
//! sources from the host's) bind-mounts each such source onto
//! `<bundle>/.caisson-binds/<n>` and points the spec's mount at it. The
//! bundle is 0710 to the pod's root group (see
//! [`super::userns_spec::make_rootfs_reachable`]), so that path is open to
//! host root and the pod only; nothing else on the host gets a new way in.
//! For the hardened backend the relay is not idmapped, like every volume;
//! for a native `hostUsers: false` pod every bind source that can be is
//! relayed idmapped ([`relay_sources_idmapped`]).
//!
//! * **Only while the task is created.** libcontainer has made the
//!   container's own bind mounts by the time `create` returns (its init
//!   reports ready after mounting and `pivot_root`), so the relays are
//!   unmounted and removed right then, whether the create worked or not.
//!   A record under the state root names the relay directory meanwhile, so
//!   the cleanup of a shim that died mid-create finds it
//!   ([`remove_recorded`]).
//! * **Nothing the pod could redirect is followed.** A relayed source is
//!   opened with `openat2(RESOLVE_NO_SYMLINKS)`, so the shim follows no
//!   symlink the pod might have planted in a directory it can write, and
//!   the mount is made from that fd: what was checked is what is mounted.
//!   A source with a symlink or `..` on the way, a relative one, and one in
//!   the shims' own state (their libcontainer state, idmapped layers, the
//!   user namespace pool) stay refused, as every unreachable source was.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};

use super::userns_spec::first_unsearchable;
use crate::backend::BackendError;

/// The relay directory's name in the bundle.
pub const RELAY_DIR: &str = ".caisson-binds";

/// Where the relay of task `id` is recorded while it exists.
pub fn record_path(state_root: &Path, id: &str) -> PathBuf {
    state_root.join(".bind-relays").join(id)
}

/// Whether `mount` is a bind mount (by type or option).
fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn is_recursive(mount: &Mount) -> bool {
    mount.options().iter().flatten().any(|o| o == "rbind")
}

/// The relay mounts of one task, removed by [`BindRelay::remove`].
#[derive(Debug)]
pub struct BindRelay {
    dir: PathBuf,
    record: PathBuf,
}

/// Points every bind mount of `spec` whose source the pod's mapped root
/// (host gid `pod_gid`) cannot reach at a relay in `bundle`, recorded at
/// `record`. `private` are the shims' own directories, never relayed.
/// `None` when every source is reachable (nothing is made). On error,
/// whatever was made is gone.
pub fn relay_unreachable_sources(
    spec: &mut Spec,
    bundle: &Path,
    pod_gid: u32,
    record: &Path,
    private: &[&Path],
) -> Result<Option<BindRelay>, BackendError> {
    relay_sources(spec, bundle, pod_gid, record, private, None)
}

/// Like [`relay_unreachable_sources`], and every bind source (reachable or
/// not) whose filesystem can be idmapped is relayed **idmapped through
/// `userns`** (the pod's user namespace): its files owned by host root are
/// root's inside the pod, and what the pod's root writes there is written
/// as host root, as containerd 2.x does for a `hostUsers: false` pod's
/// volumes. A source on a filesystem that cannot be idmapped (sysfs, an
/// overlay, a kernel before 5.12, tmpfs before 6.3) is bound as it is:
/// relayed plainly when the pod cannot reach it, else left alone.
pub fn relay_sources_idmapped(
    spec: &mut Spec,
    bundle: &Path,
    pod_gid: u32,
    record: &Path,
    private: &[&Path],
    userns: &OwnedFd,
) -> Result<Option<BindRelay>, BackendError> {
    relay_sources(spec, bundle, pod_gid, record, private, Some(userns))
}

/// A bind source worth an idmapped relay: not the kernel's own
/// filesystems (the `/sys` bind in place of sysfs), which never take one.
fn may_idmap(source: &Path) -> bool {
    !(source.starts_with("/sys") || source.starts_with("/proc"))
}

fn relay_sources(
    spec: &mut Spec,
    bundle: &Path,
    pod_gid: u32,
    record: &Path,
    private: &[&Path],
    userns: Option<&OwnedFd>,
) -> Result<Option<BindRelay>, BackendError> {
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(None);
    };
    // (mount index, the source's fd, whether the pod cannot reach it)
    let mut wanted = Vec::new();
    for (index, mount) in mounts.iter().enumerate() {
        let Some(source) = mount.source().as_ref().filter(|_| is_bind(mount)) else {
            continue;
        };
        // Along the path as written and along where it really leads (a
        // symlink on the way may lead under a root-only directory).
        let blocked = first_unsearchable(source, pod_gid).or_else(|| {
            let real = source.canonicalize().ok()?;
            first_unsearchable(&real, pod_gid)
        });
        match (&blocked, userns.is_some() && may_idmap(source)) {
            (Some(blocked), _) => {
                let fd = open_relayable(source, private)
                    .map_err(|why| not_relayed(mount, source, blocked, &why))?;
                wanted.push((index, fd, true));
            }
            // Reachable: idmapped if it can be, else left as it is.
            (None, true) => {
                if let Ok(fd) = open_relayable(source, private) {
                    wanted.push((index, fd, false));
                }
            }
            (None, false) => {}
        }
    }
    if wanted.is_empty() {
        return Ok(None);
    }
    let failed = |reason: String| BackendError::Failed {
        op: "relay a bind mount source into the bundle",
        id: bundle.display().to_string(),
        reason,
    };
    let dir = bundle.join(RELAY_DIR);
    write_record(record, &dir).map_err(|e| failed(format!("{}: {e}", record.display())))?;
    let relay = BindRelay {
        dir: dir.clone(),
        record: record.to_path_buf(),
    };
    let made = (|| -> Result<(), String> {
        // Left by a create that died before its cleanup: start afresh.
        remove_relay_dir(&dir);
        make_relay_dir(&dir, pod_gid).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (index, fd, unreachable) in &wanted {
            let mount = &mut mounts[*index];
            let target = dir.join(index.to_string());
            let source = mount
                .source()
                .clone()
                .unwrap_or_default()
                .display()
                .to_string();
            let how = relay_one(fd, &target, is_recursive(mount), userns, *unreachable)
                .map_err(|e| format!("{source} onto {}: {e}", target.display()))?;
            let Some(how) = how else {
                continue;
            };
            tracing::debug!(source, relay = %target.display(), how, "relaying a bind mount source");
            mount.set_source(Some(target));
        }
        Ok(())
    })();
    match made {
        Ok(()) => {
            spec.set_mounts(Some(mounts));
            Ok(Some(relay))
        }
        Err(reason) => {
            relay.remove();
            Err(failed(reason))
        }
    }
}

impl BindRelay {
    /// Unmounts the relays and removes them, their directory and the record.
    pub fn remove(self) {
        remove_relay_dir(&self.dir);
        if let Err(e) = std::fs::remove_file(&self.record) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(record = %self.record.display(), error = %e, "removing a bind relay record");
            }
        }
    }
}

/// What a dead shim left of a relay recorded at `record`: unmounted and
/// removed (nothing recorded is not an error).
pub fn remove_recorded(record: &Path) {
    let Ok(dir) = std::fs::read_to_string(record) else {
        return;
    };
    let dir = PathBuf::from(dir);
    // Only ever a relay directory this module named.
    if dir.is_absolute() && dir.file_name() == Some(RELAY_DIR.as_ref()) {
        remove_relay_dir(&dir);
    }
    let _ = std::fs::remove_file(record);
}

/// The error for a source the pod cannot reach and the shim does not
/// relay, naming the mount, the directory in the way and why.
fn not_relayed(mount: &Mount, source: &Path, blocked: &Path, why: &str) -> BackendError {
    BackendError::InvalidArgument {
        what: format!("mount {}", mount.destination().display()),
        reason: format!(
            "its source {} is not reachable from the pod's user namespace ({} is not \
             searchable by others: the pod's root is an unprivileged host uid), and the \
             shim does not relay it: {why}",
            source.display(),
            blocked.display()
        ),
    }
}

/// Opens `source` for relaying: absolute, no `..`, no symlink anywhere on
/// the way, not inside one of `private`. The reason it is not, otherwise.
fn open_relayable(source: &Path, private: &[&Path]) -> Result<OwnedFd, String> {
    if !source.is_absolute() {
        return Err("the source is a relative path".into());
    }
    if source.components().any(|c| c == Component::ParentDir) {
        return Err("the source has `..` in it".into());
    }
    if let Some(dir) = private.iter().find(|p| source.starts_with(p)) {
        return Err(format!(
            "it is inside the shims' own state ({})",
            dir.display()
        ));
    }
    open_no_symlinks(source).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => {
            "the shim relays a source only along a path without symlinks (it would follow \
             them as host root)"
                .to_string()
        }
        _ => e.to_string(),
    })
}

/// `openat2(O_PATH, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`.
fn open_no_symlinks(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path has a NUL byte"))?;
    // SAFETY: open_how is plain data; all-zero is its empty value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just returned by openat2.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn write_record(record: &Path, dir: &Path) -> io::Result<()> {
    if let Some(parent) = record.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    std::fs::write(record, dir.as_os_str().as_bytes())
}

/// `dir`, made 0710 root:`pod_gid` (a real directory, not a symlink).
fn make_relay_dir(dir: &Path, pod_gid: u32) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let file = crate::host::open_dir_nofollow(dir)?;
    std::os::unix::fs::fchown(&file, Some(0), Some(pod_gid))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o710))
}

/// Bind-mounts what `fd` holds onto `target` (made as a directory or an
/// empty file to match), recursively if `recursive`: idmapped through
/// `userns` when given and the filesystem takes it, else plainly if
/// `required` (the pod cannot reach the source). How it was relayed, or
/// `None` when it was not (and `target` is gone again).
fn relay_one(
    fd: &OwnedFd,
    target: &Path,
    recursive: bool,
    userns: Option<&OwnedFd>,
    required: bool,
) -> io::Result<Option<&'static str>> {
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let is_dir = std::fs::metadata(&proc_path)?.is_dir();
    if is_dir {
        std::fs::DirBuilder::new().mode(0o700).create(target)?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(target)?;
    }
    if let Some(userns) = userns {
        match crate::host::idmap::bind_idmapped(fd, userns, target, recursive) {
            Ok(()) => return Ok(Some("idmapped")),
            Err(crate::host::idmap::IdmapError::Unsupported { source, .. }) => {
                tracing::debug!(target = %target.display(), error = %source, "this bind source cannot be idmapped");
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
        if !required {
            let removed = if is_dir {
                std::fs::remove_dir(target)
            } else {
                std::fs::remove_file(target)
            };
            removed?;
            return Ok(None);
        }
    }
    let mut flags = nix::mount::MsFlags::MS_BIND;
    if recursive {
        flags |= nix::mount::MsFlags::MS_REC;
    }
    nix::mount::mount(Some(&proc_path), target, None::<&str>, flags, None::<&str>)
        .map_err(io::Error::from)?;
    Ok(Some("bind"))
}

/// Unmounts every entry of a relay directory and removes them and it.
fn remove_relay_dir(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() || meta.uid() != 0 {
        tracing::warn!(dir = %dir.display(), "not a relay directory of root's; leaving it");
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            // Stacked relays (a retried mount) come off one by one.
            while nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
            let removed = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!(relay = %path.display(), error = %e, "removing a bind relay");
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "removing the bind relay directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_relayed_and_what_stays_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(real.join("file"), real.join("file-link")).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("secret"), b"x").unwrap();
        let private = [state.as_path()];
        let refused = |path: PathBuf, why: &str| {
            let err = open_relayable(&path, &private).unwrap_err();
            assert!(err.contains(why), "{}: {err}", path.display());
        };
        assert!(open_relayable(&real.join("file"), &private).is_ok());
        assert!(open_relayable(&real, &private).is_ok());
        refused(dir.path().join("link/file"), "without symlinks");
        refused(real.join("file-link"), "without symlinks");
        refused(real.join("../real/file"), "`..`");
        refused(PathBuf::from("real/file"), "relative");
        refused(state.join("secret"), "shims' own state");
        refused(real.join("missing"), "No such file");
    }

    #[test]
    fn only_bind_mounts_are_relayed_and_rbind_stays_recursive() {
        let mount = |typ: Option<&str>, options: &[&str]| {
            let mut m = Mount::default();
            m.set_typ(typ.map(String::from));
            m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
            m
        };
        let cases = [
            (mount(Some("bind"), &["ro"]), true, false),
            (mount(None, &["rbind", "ro"]), true, true),
            (mount(Some("none"), &["bind"]), true, false),
            (mount(Some("tmpfs"), &["nosuid"]), false, false),
            (mount(Some("proc"), &[]), false, false),
        ];
        for (m, bind, recursive) in cases {
            assert_eq!((is_bind(&m), is_recursive(&m)), (bind, recursive), "{m:?}");
        }
    }

    #[test]
    fn a_record_names_only_a_relay_directory() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let record = record_path(dir.path(), "t");
        write_record(&record, &victim).unwrap();
        remove_recorded(&record);
        assert!(
            victim.exists(),
            "a directory not named {RELAY_DIR} is left alone"
        );
        assert!(!record.exists());
        remove_recorded(&record);
    }
}
