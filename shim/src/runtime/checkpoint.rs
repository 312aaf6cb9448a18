//! CheckpointContainer, and CreateContainer from its archive (restore).
//!
//! The archive at `location` is an uncompressed tar laid out as CRI-O and
//! Podman write theirs (checkpointctl's names):
//!
//! | entry | what |
//! |---|---|
//! | `checkpoint/` | CRIU's images, with runc's `descriptors.json` and the shim's `caisson-externals.json` |
//! | `config.dump` | [`ConfigDump`]: id, name, the image (`rootfsImage*`), runtime, times |
//! | `spec.dump` | the container's OCI spec |
//! | `rootfs-diff.tar` | the writable layer's changes, as an OCI layer (deletions as `.wh.` whiteouts) |
//! | `deleted.files` | the deleted paths (JSON list), when there are any |
//! | `dump.log`, `stats-dump` | CRIU's log and statistics |
//!
//! It is written in a temp dir beside `location` and renamed into place,
//! so a failed or timed-out checkpoint leaves nothing at `location`.
//!
//! Restore follows CRI-O: CreateContainer whose `image.image` is the path of
//! such an archive makes the container from the image `config.dump` names
//! (which must be present), unpacks the archive into the bundle and
//! `rootfs-diff.tar` into the new writable layer with the image unpacker's
//! escape rules, and creates the task with the CRIU images; StartContainer
//! restores the processes. The request's metadata, labels, mounts and log
//! path are the new container's; its mounts must be at the destinations the
//! checkpointed container had.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caisson_proto::cri;
use caisson_sandbox::host::crilog::rfc3339_nano;
use serde::{Deserialize, Serialize};

use super::Runtime;
use crate::status::{CriError, CriResult};
use crate::store::ContainerState;

pub const CHECKPOINT_DIR: &str = "checkpoint";
pub const CONFIG_DUMP: &str = "config.dump";
pub const SPEC_DUMP: &str = "spec.dump";
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
pub const DELETED_FILES: &str = "deleted.files";
/// How long a checkpoint may take when the request gives no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Where the archive is unpacked in a restored container's bundle.
pub const RESTORE_DIR: &str = "restore";

/// `config.dump`: the fields checkpointctl reads from CRI-O's and Podman's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDump {
    pub id: String,
    pub name: String,
    /// The image id.
    #[serde(rename = "rootfsImage", default)]
    pub rootfs_image: String,
    /// The image's digest reference (or its id).
    #[serde(rename = "rootfsImageRef", default)]
    pub rootfs_image_ref: String,
    /// The image as the container's request named it.
    #[serde(rename = "rootfsImageName", default)]
    pub rootfs_image_name: String,
    /// The runtime handler.
    #[serde(rename = "runtime", default)]
    pub runtime: String,
    #[serde(rename = "createdTime", default)]
    pub created_time: String,
    #[serde(rename = "checkpointedTime", default)]
    pub checkpointed_time: String,
    #[serde(default)]
    pub restored: bool,
}

fn time_of_ns(ns: i64) -> String {
    rfc3339_nano(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64))
}

/// `location` checked: absolute, its parent an existing directory, not
/// itself a directory.
pub fn check_location(location: &str) -> CriResult<PathBuf> {
    let bad = |why: &str| CriError::invalid("location", format!("{location:?} {why}"));
    if location.is_empty() {
        return Err(CriError::invalid("location", "must not be empty"));
    }
    let path = PathBuf::from(location);
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(bad("must be an absolute path to a file"));
    }
    if !path.parent().is_some_and(Path::is_dir) {
        return Err(bad("is in a directory that does not exist"));
    }
    if path.is_dir() {
        return Err(bad("is a directory"));
    }
    Ok(path)
}

/// Whether a CreateContainer's image names a file (an archive to restore
/// from) rather than an image.
pub fn names_archive(image: &str) -> bool {
    let path = Path::new(image);
    path.is_absolute() && path.is_file()
}

fn not_checkpoint(path: &Path, why: impl std::fmt::Display) -> CriError {
    CriError::invalid(
        "config.image.image",
        format!("{} is not a checkpoint archive: {why}", path.display()),
    )
}

/// Reads `config.dump` from the archive at `path`, checking that it also
/// holds CRIU's `checkpoint/inventory.img`.
pub fn read_archive_config(path: &Path) -> CriResult<ConfigDump> {
    let file = File::open(path).map_err(|e| not_checkpoint(path, e))?;
    let mut archive = tar::Archive::new(file);
    let mut config = None;
    let mut inventory = false;
    for entry in archive.entries().map_err(|e| not_checkpoint(path, e))? {
        let mut entry = entry.map_err(|e| not_checkpoint(path, e))?;
        let name = entry
            .path()
            .map_err(|e| not_checkpoint(path, e))?
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect::<PathBuf>();
        if name == Path::new(CONFIG_DUMP) {
            let mut text = String::new();
            entry
                .by_ref()
                .take(1 << 20)
                .read_to_string(&mut text)
                .map_err(|e| not_checkpoint(path, e))?;
            config = Some(
                serde_json::from_str::<ConfigDump>(&text)
                    .map_err(|e| not_checkpoint(path, format!("{CONFIG_DUMP}: {e}")))?,
            );
        } else if name == Path::new(CHECKPOINT_DIR).join("inventory.img") {
            inventory = true;
        }
    }
    match (config, inventory) {
        (Some(config), true) => Ok(config),
        (None, _) => Err(not_checkpoint(path, format!("no {CONFIG_DUMP}"))),
        (_, false) => Err(not_checkpoint(path, "no checkpoint/inventory.img")),
    }
}

/// Unpacks the archive at `archive` into the empty `dest` and its
/// `rootfs-diff.tar` into the empty writable layer `upper`, with the image
/// unpacker's rules (nothing leaves its directory). Returns CRIU's images.
pub fn unpack_for_restore(archive: &Path, dest: &Path, upper: &Path) -> CriResult<PathBuf> {
    std::fs::create_dir_all(dest)
        .map_err(|e| CriError::internal(&format!("creating {}", dest.display()), e))?;
    let file = File::open(archive).map_err(|e| not_checkpoint(archive, e))?;
    caisson_image::unpack::unpack_layer(file, dest).map_err(|e| not_checkpoint(archive, e))?;
    let diff = dest.join(ROOTFS_DIFF);
    if diff.is_file() {
        let file = File::open(&diff).map_err(|e| not_checkpoint(archive, e))?;
        caisson_image::unpack::unpack_layer(file, upper)
            .map_err(|e| not_checkpoint(archive, format!("{ROOTFS_DIFF}: {e}")))?;
    }
    let images = dest.join(CHECKPOINT_DIR);
    if !images.join("inventory.img").is_file() {
        return Err(not_checkpoint(archive, "no checkpoint/inventory.img"));
    }
    Ok(images)
}

/// Writes the writable layer `upper` as an OCI layer tar: overlay
/// whiteouts (0/0 character devices) become `.wh.<name>`, opaque
/// directories get `.wh..wh..opq`. Returns the deleted paths.
pub fn write_rootfs_diff(upper: &Path, out: impl std::io::Write) -> std::io::Result<Vec<String>> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut deleted = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = upper.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        if is_opaque(&dir) && !rel.as_os_str().is_empty() {
            append_empty(&mut tar, &rel.join(".wh..wh..opq"))?;
        }
        for entry in entries {
            let name = rel.join(entry.file_name());
            let meta = entry.metadata()?;
            if meta.file_type().is_char_device() && meta.rdev() == 0 {
                let whiteout = rel.join(format!(".wh.{}", entry.file_name().to_string_lossy()));
                append_empty(&mut tar, &whiteout)?;
                deleted.push(format!("/{}", name.display()));
                continue;
            }
            tar.append_path_with_name(entry.path(), &name)?;
            if meta.is_dir() {
                stack.push(name);
            }
        }
    }
    tar.finish()?;
    deleted.sort();
    Ok(deleted)
}

fn append_empty<W: std::io::Write>(tar: &mut tar::Builder<W>, name: &Path) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, std::io::empty())
}

fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut value = [0u8; 2];
    // SAFETY: a NUL-terminated path and name, a 2-byte buffer.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

/// Writes the archive's top level from the work dir (CRIU's images in
/// `checkpoint/`, its log beside) into `location`, through a temp file
/// renamed into place.
fn write_archive(work: &Path, location: &Path, deadline: Instant) -> CriResult<()> {
    let parent = location.parent().unwrap_or(Path::new("/"));
    let tmp = tempfile::Builder::new()
        .prefix(".caisson-checkpoint-")
        .suffix(".tar")
        .tempfile_in(parent)
        .map_err(|e| CriError::internal("creating the archive", e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
    tar.follow_symlinks(false);
    let mut names: Vec<_> = std::fs::read_dir(work)
        .and_then(|d| {
            d.map(|e| e.map(|e| e.file_name()))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| CriError::internal("listing the checkpoint", e))?;
    names.sort();
    for name in names {
        if Instant::now() > deadline {
            return Err(CriError::DeadlineExceeded(
                "CheckpointContainer: the timeout passed while writing the archive".into(),
            ));
        }
        let path = work.join(&name);
        let result = if path.is_dir() {
            tar.append_dir_all(&name, &path)
        } else {
            tar.append_path_with_name(&path, &name)
        };
        result.map_err(|e| CriError::internal("writing the archive", e))?;
    }
    tar.into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .map_err(|e| CriError::internal("writing the archive", e))?;
    tmp.persist(location)
        .map_err(|e| CriError::internal(&format!("renaming to {}", location.display()), e))?;
    Ok(())
}

impl Runtime {
    /// CRI CheckpointContainer: see the module docs.
    pub async fn checkpoint_container(
        self: &Arc<Self>,
        req: cri::CheckpointContainerRequest,
    ) -> CriResult<()> {
        if req.container_id.is_empty() {
            return Err(CriError::invalid("container_id", "must not be empty"));
        }
        let location = check_location(&req.location)?;
        let timeout = match req.timeout {
            t if t > 0 => Duration::from_secs(t as u64),
            _ => DEFAULT_TIMEOUT,
        };
        let deadline = Instant::now() + timeout;
        let c = self.container(&req.container_id)?;
        let lock = self.lock_for(&c.pod_id);
        let _guard = lock.lock().await;
        let c = self.container(&c.id)?;
        let pod = self.pod(&c.pod_id)?;
        if c.state != ContainerState::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is {:?}: only a running container can be checkpointed",
                c.id, c.state
            )));
        }
        if pod.backend != "native" {
            return Err(CriError::Unimplemented(format!(
                "CheckpointContainer: the {:?} handler ({} backend) cannot checkpoint \
                 containers; handlers with the native backend can",
                pod.handler, pod.backend
            )));
        }
        let pod_config: cri::PodSandboxConfig =
            crate::store::decode(&pod.config).unwrap_or_default();
        let userns_mode = pod_config
            .linux
            .and_then(|l| l.security_context)
            .and_then(|sc| sc.namespace_options)
            .and_then(|ns| ns.userns_options)
            .map(|u| u.mode);
        if userns_mode == Some(cri::NamespaceMode::Pod as i32) {
            return Err(CriError::Unimplemented(format!(
                "CheckpointContainer: pod {} runs in a user namespace of its own                  (hostUsers: false); checkpointing such pods is not supported",
                pod.id
            )));
        }
        self.check_criu().await?;
        let parent = location.parent().unwrap_or(Path::new("/"));
        let work = tempfile::Builder::new()
            .prefix(".caisson-checkpoint-")
            .tempdir_in(parent)
            .map_err(|e| CriError::internal("creating the checkpoint work dir", e))?;
        let images = work.path().join(CHECKPOINT_DIR);
        std::fs::create_dir(&images)
            .map_err(|e| CriError::internal("creating the images dir", e))?;
        let started = Instant::now();
        let client = self.client(&pod)?;
        let left = deadline.saturating_duration_since(Instant::now());
        client
            .checkpoint(&c.id, &images, work.path(), left)
            .await
            .map_err(|e| match e {
                CriError::DeadlineExceeded(m) => CriError::DeadlineExceeded(m),
                CriError::Internal(m) if m.contains("did not finish within") => {
                    CriError::DeadlineExceeded(m)
                }
                other => other,
            })?;
        let dumped = started.elapsed();
        let config = ConfigDump {
            id: c.id.clone(),
            name: c.name.clone(),
            rootfs_image: c.image_id.clone(),
            rootfs_image_ref: c.image_ref.clone(),
            rootfs_image_name: c.image.clone(),
            runtime: pod.handler.clone(),
            created_time: time_of_ns(c.created_at),
            checkpointed_time: rfc3339_nano(SystemTime::now()),
            restored: false,
        };
        let upper = self.images.rootfs(&c.id)?.upper;
        let bundle = c.bundle.clone();
        let work_dir = work.path().to_path_buf();
        let location_copy = location.clone();
        tokio::task::spawn_blocking(move || -> CriResult<()> {
            let io = |what: &'static str| move |e: std::io::Error| CriError::internal(what, e);
            std::fs::write(
                work_dir.join(CONFIG_DUMP),
                serde_json::to_vec_pretty(&config)
                    .map_err(|e| CriError::internal("config.dump", e))?,
            )
            .map_err(io("writing config.dump"))?;
            std::fs::copy(bundle.join("config.json"), work_dir.join(SPEC_DUMP))
                .map_err(io("writing spec.dump"))?;
            let diff = File::create(work_dir.join(ROOTFS_DIFF)).map_err(io("rootfs-diff.tar"))?;
            let deleted = write_rootfs_diff(&upper, std::io::BufWriter::new(diff))
                .map_err(io("writing rootfs-diff.tar"))?;
            if !deleted.is_empty() {
                std::fs::write(
                    work_dir.join(DELETED_FILES),
                    serde_json::to_vec(&deleted)
                        .map_err(|e| CriError::internal("deleted.files", e))?,
                )
                .map_err(io("writing deleted.files"))?;
            }
            write_archive(&work_dir, &location_copy, deadline)
        })
        .await
        .map_err(|e| CriError::internal("writing the archive", e))??;
        let size = std::fs::metadata(&location).map(|m| m.len()).unwrap_or(0);
        tracing::info!(
            container_id = %c.id,
            location = %location.display(),
            size,
            dump_ms = dumped.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "container checkpointed"
        );
        Ok(())
    }

    /// The configured CRIU runs and is recent enough (FAILED_PRECONDITION
    /// naming its path and version otherwise).
    pub async fn check_criu(&self) -> CriResult<String> {
        let criu = caisson_sandbox::checkpoint::criu_path(Some(&self.config.checkpoint.criu_path));
        let run = criu.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&run).arg("--version").output()
        })
        .await
        .map_err(|e| CriError::internal("running CRIU", e))?
        .map_err(|e| {
            CriError::FailedPrecondition(format!(
                "CRIU {} cannot run ({e}): build it with `make criu` or set [checkpoint] criu_path",
                criu.display()
            ))
        })?;
        caisson_sandbox::checkpoint::check_criu_version(
            &criu,
            &String::from_utf8_lossy(&out.stdout),
        )
        .map_err(CriError::FailedPrecondition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_must_be_files_in_existing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("c.tar");
        assert_eq!(check_location(ok.to_str().unwrap()).unwrap(), ok);
        let missing = dir.path().join("nope/c.tar");
        for bad in [
            "",
            "relative.tar",
            "/",
            dir.path().to_str().unwrap(),
            missing.to_str().unwrap(),
        ] {
            let err = check_location(bad).unwrap_err().to_string();
            assert!(err.contains("location"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn config_dump_uses_checkpointctls_names() {
        let config = ConfigDump {
            id: "abc".into(),
            name: "counter".into(),
            rootfs_image: "sha256:1".into(),
            rootfs_image_ref: "busybox@sha256:2".into(),
            rootfs_image_name: "busybox".into(),
            runtime: "runc".into(),
            created_time: time_of_ns(0),
            checkpointed_time: time_of_ns(1_500_000_000),
            restored: false,
        };
        let json = serde_json::to_value(&config).unwrap();
        for key in [
            "id",
            "name",
            "rootfsImage",
            "rootfsImageRef",
            "rootfsImageName",
            "runtime",
            "createdTime",
            "checkpointedTime",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
        assert_eq!(json["createdTime"], "1970-01-01T00:00:00.000000000Z");
        let back: ConfigDump = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);
        // CRI-O's and Podman's have more fields, and may lack ours.
        let foreign: ConfigDump =
            serde_json::from_str(r#"{"id":"x","name":"y","rootfsImageName":"img","other":1}"#)
                .unwrap();
        assert_eq!(foreign.rootfs_image_name, "img");
    }

    #[test]
    fn rootfs_diff_turns_overlay_whiteouts_into_oci_ones() {
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir(upper.path().join("etc")).unwrap();
        std::fs::write(upper.path().join("written"), b"hi\n").unwrap();
        nix::sys::stat::mknod(
            &upper.path().join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let mut out = Vec::new();
        let deleted = write_rootfs_diff(upper.path(), &mut out).unwrap();
        assert_eq!(deleted, vec!["/etc/passwd".to_string()]);
        let mut names: Vec<String> = tar::Archive::new(out.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["etc", "etc/.wh.passwd", "written"]);
        // And back through the image unpacker: a whiteout again.
        let dest = tempfile::tempdir().unwrap();
        caisson_image::unpack::unpack_layer(out.as_slice(), dest.path()).unwrap();
        assert_eq!(std::fs::read(dest.path().join("written")).unwrap(), b"hi\n");
        let meta = std::fs::symlink_metadata(dest.path().join("etc/passwd")).unwrap();
        assert!(meta.file_type().is_char_device() && meta.rdev() == 0);
    }

    #[test]
    fn archives_without_config_or_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let write = |entries: &[(&str, &[u8])]| {
            let mut tar = tar::Builder::new(File::create(&path).unwrap());
            for (name, data) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                tar.append_data(&mut h, name, *data).unwrap();
            }
            tar.finish().unwrap();
        };
        write(&[(
            "config.dump",
            br#"{"id":"x","name":"c","rootfsImageName":"busybox"}"#,
        )]);
        let err = read_archive_config(&path).unwrap_err().to_string();
        assert!(
            err.contains("inventory.img") && err.contains("config.image.image"),
            "{err}"
        );
        write(&[("checkpoint/inventory.img", b"x")]);
        assert!(read_archive_config(&path)
            .unwrap_err()
            .to_string()
            .contains("config.dump"));
        write(&[
            (
                "config.dump",
                br#"{"id":"x","name":"c","rootfsImageName":"busybox"}"#,
            ),
            ("checkpoint/inventory.img", b"x"),
        ]);
        assert_eq!(
            read_archive_config(&path).unwrap().rootfs_image_name,
            "busybox"
        );
        std::fs::write(&path, b"not a tar at all, just text").unwrap();
        assert!(read_archive_config(&path).is_err());
    }
}
