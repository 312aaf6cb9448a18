//! Unpacking one layer tar into its own directory, the way an overlay lower
//! dir needs it: OCI whiteouts become overlay whiteouts (`.wh.name` → a 0/0
//! character device, `.wh..wh..opq` → `trusted.overlay.opaque=y`).
//!
//! Nothing in a layer may reach outside its directory: entries with `..` or
//! absolute names, hard links that leave the layer, and writes through a parent
//! symlink that leads outside are rejected with an error naming the entry. Every
//! parent directory is opened with `openat2(RESOLVE_BENEATH)`, so the kernel,
//! not string checks, guarantees that even a symlink planted by an earlier entry
//! cannot carry a write out of the layer; every final component is created with
//! `*at` calls that do not follow symlinks.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;

use crate::error::{ImageError, Result};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";
const COPY_BUF: usize = 128 * 1024;
static ZEROES: [u8; COPY_BUF] = [0; COPY_BUF];

/// What an unpack did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Bytes of regular-file content written (holes included).
    pub file_bytes: u64,
}

/// Unpacks the (uncompressed) layer tar `reader` into the existing, empty
/// directory `dest`. On error `dest` is left partly filled: the caller unpacks
/// into a temp dir and discards it.
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<UnpackStats> {
    let root = open_dir_path(dest)?;
    let mut unpacker = Unpacker {
        root,
        dirs: Vec::new(),
        stats: UnpackStats::default(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| ImageError::malformed("layer tar", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::malformed("layer tar", e))?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish_dirs()?;
    Ok(unpacker.stats)
}

fn open_dir_path(dest: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io("opening", dest, e.into()))
}

/// Metadata applied to what an entry creates.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(CString, Vec<u8>)>,
}

struct Unpacker {
    root: OwnedFd,
    /// Directories whose metadata is applied at the end (children change mtimes;
    /// a read-only mode must not stop later entries).
    dirs: Vec<(Vec<Vec<u8>>, Meta)>,
    stats: UnpackStats,
}

/// Splits a tar name into safe components: no absolute names, no `..`.
pub(crate) fn clean_path(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("path contains '..'"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn beneath(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let comps = clean_path(&raw).map_err(|reason| ImageError::unsafe_entry(&name, reason))?;
        self.stats.entries += 1;
        let failed = |source: io::Error| ImageError::EntryFailed {
            entry: name.clone(),
            source,
        };

        let Some((base, parent)) = comps.split_last() else {
            // "./": the layer root itself.
            if kind.is_dir() {
                let meta = self.meta(entry, &name)?;
                self.dirs.push((Vec::new(), meta));
                return Ok(());
            }
            return Err(ImageError::unsafe_entry(
                &name,
                "a non-directory entry names the layer root",
            ));
        };

        if base.as_slice() == OPAQUE_WHITEOUT {
            let dir = self.ensure_dir(parent, &name)?;
            return set_xattr(&dir, OVERLAY_OPAQUE_XATTR, b"y").map_err(failed);
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // aufs bookkeeping (.wh..wh.plnk and friends): not content.
                tracing::debug!(entry = %name, "skipping aufs metadata entry");
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(ImageError::unsafe_entry(
                    &name,
                    "whiteout of '.', '..' or nothing",
                ));
            }
            let dir = self.ensure_dir(parent, &name)?;
            remove_existing(&dir, hidden, false).map_err(failed)?;
            mknodat(
                &dir,
                os(hidden),
                SFlag::S_IFCHR,
                Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| failed(errno_io(e)))?;
            return Ok(());
        }

        let dir = self.ensure_dir(parent, &name)?;
        let base = os(base);
        match kind {
            EntryType::Directory => {
                remove_existing(&dir, base.as_bytes(), true).map_err(failed)?;
                match mkdirat(&dir, base, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(failed(errno_io(e))),
                }
                let meta = self.meta(entry, &name)?;
                self.dirs.push((comps.clone(), meta));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let meta = self.meta(entry, &name)?;
                remove_existing(&dir, base.as_bytes(), false).map_err(failed)?;
                let fd = openat(
                    &dir,
                    base,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| failed(errno_io(e)))?;
                let mut file = File::from(fd);
                let size = entry.size();
                let written = copy_sparse(entry, &mut file).map_err(|e| {
                    if matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                    ) {
                        ImageError::malformed("layer tar", format!("entry {name:?}: {e}"))
                    } else {
                        failed(e)
                    }
                })?;
                if written != size {
                    // The tar reader ends an entry quietly at end of input.
                    return Err(ImageError::malformed(
                        "layer tar",
                        format!("entry {name:?} is truncated: {written} of {size} bytes"),
                    ));
                }
                self.stats.file_bytes += written;
                apply_fd_meta(file.as_fd(), &meta).map_err(failed)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        ImageError::malformed(
                            "layer tar",
                            format!("symlink {name:?} has no target"),
                        )
                    })?
                    .into_owned();
                let meta = self.meta(entry, &name)?;
                remove_existing(&dir, base.as_bytes(), false).map_err(failed)?;
                symlinkat(os(&target), &dir, base).map_err(|e| failed(errno_io(e)))?;
                apply_at_meta(&dir, base, &meta, false).map_err(failed)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        ImageError::malformed(
                            "layer tar",
                            format!("hard link {name:?} has no target"),
                        )
                    })?
                    .into_owned();
                let shown = String::from_utf8_lossy(&target).into_owned();
                let tcomps = clean_path(&target).map_err(|reason| {
                    ImageError::unsafe_entry(
                        &name,
                        format!("hard link target {shown:?} leaves the layer ({reason})"),
                    )
                })?;
                let Some((tbase, tparent)) = tcomps.split_last() else {
                    return Err(ImageError::unsafe_entry(
                        &name,
                        "hard link to the layer root",
                    ));
                };
                let tdir = self.open_dir(tparent, &name)?.ok_or_else(|| {
                    failed(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("hard link target {shown:?} does not exist"),
                    ))
                })?;
                remove_existing(&dir, base.as_bytes(), false).map_err(failed)?;
                linkat(&tdir, os(tbase), &dir, base, AtFlags::empty()).map_err(|e| {
                    failed(io::Error::new(
                        errno_io(e).kind(),
                        format!("linking to {shown:?}: {e}"),
                    ))
                })?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let meta = self.meta(entry, &name)?;
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                remove_existing(&dir, base.as_bytes(), false).map_err(failed)?;
                mknodat(
                    &dir,
                    base,
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(major.into(), minor.into()),
                )
                .map_err(|e| failed(errno_io(e)))?;
                apply_at_meta(&dir, base, &meta, true).map_err(failed)?;
            }
            other => {
                return Err(ImageError::Unsupported {
                    what: "tar entry type",
                    value: format!("{other:?} ({name})"),
                });
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<R>, name: &str) -> Result<Meta> {
        let bad = |field: &str, e: io::Error| {
            ImageError::malformed("layer tar", format!("entry {name:?} {field}: {e}"))
        };
        let header = entry.header();
        let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let uid = u32::try_from(header.uid().map_err(|e| bad("uid", e))?).map_err(|_| {
            ImageError::malformed("layer tar", format!("entry {name:?} uid out of range"))
        })?;
        let gid = u32::try_from(header.gid().map_err(|e| bad("gid", e))?).map_err(|_| {
            ImageError::malformed("layer tar", format!("entry {name:?} gid out of range"))
        })?;
        let mtime = header.mtime().map_err(|e| bad("mtime", e))? as i64;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("pax header", e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("pax header", e))?;
                let Ok(key) = ext.key() else { continue };
                let Some(attr) = key.strip_prefix(PAX_XATTR_PREFIX) else {
                    continue;
                };
                if attr.starts_with("trusted.overlay.") {
                    // Overlay metadata is derived from whiteout files only; an
                    // image must not forge opaque dirs or redirects.
                    tracing::warn!(entry = %name, xattr = attr, "ignoring overlay xattr carried by a layer");
                    continue;
                }
                let Ok(attr) = CString::new(attr) else {
                    continue;
                };
                xattrs.push((attr, ext.value_bytes().to_vec()));
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Opens a directory below the root (None when it does not exist).
    fn open_dir(&self, comps: &[Vec<u8>], entry: &str) -> Result<Option<OwnedFd>> {
        let path = if comps.is_empty() {
            b".".to_vec()
        } else {
            join(comps)
        };
        match openat2(
            &self.root,
            os(&path),
            beneath(OFlag::O_RDONLY | OFlag::O_DIRECTORY),
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(resolve_error(e, entry)),
        }
    }

    /// Opens a parent directory, creating missing components (0755, like tar).
    fn ensure_dir(&self, comps: &[Vec<u8>], entry: &str) -> Result<OwnedFd> {
        if let Some(fd) = self.open_dir(comps, entry)? {
            return Ok(fd);
        }
        let mut dir = self.open_dir(&[], entry)?.expect("layer root exists");
        for i in 0..comps.len() {
            dir = match self.open_dir(&comps[..=i], entry)? {
                Some(fd) => fd,
                None => {
                    match mkdirat(&dir, os(&comps[i]), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(ImageError::EntryFailed {
                                entry: entry.to_string(),
                                source: errno_io(e),
                            })
                        }
                    }
                    self.open_dir(&comps[..=i], entry)?
                        .ok_or_else(|| ImageError::EntryFailed {
                            entry: entry.to_string(),
                            source: io::Error::new(
                                io::ErrorKind::NotFound,
                                "parent is a dangling symlink",
                            ),
                        })?
                }
            };
        }
        Ok(dir)
    }

    /// Applies directory metadata, deepest last-seen first. A directory named
    /// by several entries (directly or through a symlinked parent) takes the
    /// metadata of the last one only.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut done = std::collections::HashSet::new();
        for (comps, meta) in self.dirs.drain(..).rev() {
            let path = if comps.is_empty() {
                b".".to_vec()
            } else {
                join(&comps)
            };
            let name = String::from_utf8_lossy(&path).into_owned();
            let how = beneath(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW);
            let fd = match openat2(&self.root, os(&path), how) {
                Ok(fd) => fd,
                // Replaced by a later non-directory entry: nothing to apply.
                Err(Errno::ENOTDIR | Errno::ELOOP | Errno::ENOENT) => continue,
                Err(e) => return Err(resolve_error(e, &name)),
            };
            let st = nix::sys::stat::fstat(&fd).map_err(|e| ImageError::EntryFailed {
                entry: name.clone(),
                source: errno_io(e),
            })?;
            if !done.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            apply_fd_meta(fd.as_fd(), &meta).map_err(|source| ImageError::EntryFailed {
                entry: name,
                source,
            })?;
        }
        Ok(())
    }
}

fn resolve_error(e: Errno, entry: &str) -> ImageError {
    match e {
        Errno::EXDEV | Errno::ELOOP => ImageError::unsafe_entry(
            entry,
            "a parent directory is a symlink that leads outside the layer",
        ),
        Errno::ENOTDIR => ImageError::EntryFailed {
            entry: entry.to_string(),
            source: io::Error::new(
                io::ErrorKind::NotADirectory,
                "a parent path component is not a directory",
            ),
        },
        e => ImageError::EntryFailed {
            entry: entry.to_string(),
            source: errno_io(e),
        },
    }
}

/// Clears the way for a new entry: a later entry replaces an earlier one of the
/// same name, except that a directory over a directory only updates metadata.
fn remove_existing(dir: &OwnedFd, name: &[u8], new_is_dir: bool) -> io::Result<()> {
    let st = match fstatat(dir, os(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(errno_io(e)),
    };
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if is_dir && new_is_dir {
        return Ok(());
    }
    if is_dir {
        // std's remove_dir_all never follows symlinks inside the tree; the
        // parent is reached through our already-resolved fd.
        let path = Path::new("/proc/self/fd")
            .join(dir.as_raw_fd().to_string())
            .join(os(name));
        std::fs::remove_dir_all(path)
    } else {
        unlinkat(dir, os(name), UnlinkatFlags::NoRemoveDir).map_err(errno_io)
    }
}

/// Copies file data, seeking over all-zero chunks so holes stay holes.
fn copy_sparse(src: &mut impl Read, file: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    let mut pending_hole = false;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf[..n] == ZEROES[..n] {
            file.seek(SeekFrom::Current(n as i64))?;
            pending_hole = true;
        } else {
            file.write_all(&buf[..n])?;
            pending_hole = false;
        }
        total += n as u64;
    }
    if pending_hole {
        file.set_len(total)?;
    }
    Ok(total)
}

fn set_xattr(fd: &impl AsRawFd, name: &str, value: &[u8]) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    set_xattr_c(fd, &cname, value)
}

fn set_xattr_c(fd: &impl AsRawFd, name: &CString, value: &[u8]) -> io::Result<()> {
    // SAFETY: valid fd, NUL-terminated name, value slice with its length.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn timespec(secs: i64) -> TimeSpec {
    TimeSpec::new(secs, 0)
}

/// Owner, then mode (chown clears set-id bits), then xattrs (chown clears
/// security.capability), then times.
fn apply_fd_meta(fd: std::os::fd::BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(errno_io)?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(errno_io)?;
    for (name, value) in &meta.xattrs {
        set_xattr_c(&fd.as_raw_fd(), name, value)
            .map_err(|e| io::Error::new(e.kind(), format!("xattr {name:?}: {e}")))?;
    }
    futimens(fd, &timespec(meta.mtime), &timespec(meta.mtime)).map_err(errno_io)
}

/// Metadata for entries that cannot be opened (symlinks, devices, fifos).
fn apply_at_meta(dir: &OwnedFd, name: &OsStr, meta: &Meta, chmod: bool) -> io::Result<()> {
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(errno_io)?;
    if chmod {
        // Only for nodes we just made (never symlinks): fchmodat follows.
        fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(errno_io)?;
    }
    if !meta.xattrs.is_empty() {
        tracing::debug!(entry = ?name, "xattrs on symlinks and device nodes are not applied");
    }
    utimensat(
        dir,
        name,
        &timespec(meta.mtime),
        &timespec(meta.mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(errno_io)
}

#[cfg(test)]
mod tests {
    use super::clean_path;

    #[test]
    fn cleans_and_rejects_paths() {
        let ok: &[(&str, &[&str])] = &[
            ("a/b", &["a", "b"]),
            ("./a//b/", &["a", "b"]),
            ("./", &[]),
            ("a/./b", &["a", "b"]),
            ("..a/b..", &["..a", "b.."]),
        ];
        for (input, want) in ok {
            let got = clean_path(input.as_bytes()).unwrap();
            let want: Vec<Vec<u8>> = want.iter().map(|s| s.as_bytes().to_vec()).collect();
            assert_eq!(got, want, "{input}");
        }
        for bad in ["/etc/passwd", "../x", "a/../../x", "a/.."] {
            assert!(clean_path(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
