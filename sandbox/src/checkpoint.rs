//! Checkpoint and restore at the task API, and finding CRIU.
//!
//! * `Checkpoint(id, path, options)`: `path` is the directory CRIU writes
//!   its images to; `options` may be containerd's runc
//!   `containerd.runc.v1.CheckpointOptions` (decoded by hand here, as
//!   `ProcessDetails` is in [`crate::service`]): `exit` stops the task
//!   after the dump, `image_path` / `work_path` override where the images and
//!   CRIU's log go. Options this shim cannot honour (TCP connections, external
//!   unix sockets, terminals, file locks, empty namespaces, a cgroups mode)
//!   are refused, not ignored. The caller's ttrpc deadline bounds the dump.
//! * `Create(checkpoint = <images dir>)`: the task is restored from those
//!   images when it starts, by a backend that can ([`Backend::can_restore`]).
//! * CRIU is found at `CAISSON_CRIU_PATH` (caissond sets it from its
//!   `[checkpoint] criu_path`), else the version-keyed build `make criu`
//!   leaves at [`CRIU_CACHE_PATH`], else `criu` on `PATH`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api;
use ttrpc::Code;

use crate::backend::{Backend, CheckpointSpec};

/// The environment variable naming the CRIU binary.
pub const CRIU_PATH_ENV: &str = "CAISSON_CRIU_PATH";
/// Where `make criu` builds CRIU (Debian bookworm's 3.17 cannot dump on
/// kernels with a `[vvar_vclock]` mapping, 6.13 and later).
pub const CRIU_CACHE_PATH: &str = "/var/cache/caisson-test/criu-4.1.1/criu";
/// The oldest CRIU that takes an external PID namespace (runc's minimum
/// for what this shim asks).
pub const MIN_CRIU_VERSION: (u32, u32, u32) = (3, 15, 0);
/// How long a checkpoint may take when the caller set no deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// containerd's runc checkpoint options.
const RUNC_CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";

/// The CRIU to run: `configured`, else [`CRIU_PATH_ENV`], else the cache
/// build if present, else `criu` (looked up on `PATH`).
pub fn criu_path(configured: Option<&Path>) -> PathBuf {
    if let Some(path) = configured.filter(|p| !p.as_os_str().is_empty()) {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os(CRIU_PATH_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if Path::new(CRIU_CACHE_PATH).is_file() {
        return PathBuf::from(CRIU_CACHE_PATH);
    }
    PathBuf::from("criu")
}

/// The version in `criu --version`'s output (`Version: 4.1.1`, or `4.1`).
pub fn parse_criu_version(output: &str) -> Option<(u32, u32, u32)> {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))?;
    let mut parts = line.trim().split('.');
    let major = parts.next()?.trim().parse().ok()?;
    let minor = parts.next()?.trim().parse().ok()?;
    let patch = match parts.next() {
        Some(p) => p.trim().parse().ok()?,
        None => 0,
    };
    Some((major, minor, patch))
}

/// `criu --version`'s output checked against [`MIN_CRIU_VERSION`]: the
/// version as `x.y.z`, or why this CRIU cannot be used.
pub fn check_criu_version(path: &Path, output: &str) -> Result<String, String> {
    let Some(v) = parse_criu_version(output) else {
        return Err(format!(
            "CRIU {} printed no version ({:?})",
            path.display(),
            output.trim()
        ));
    };
    let shown = format!("{}.{}.{}", v.0, v.1, v.2);
    if v < MIN_CRIU_VERSION {
        let (a, b, c) = MIN_CRIU_VERSION;
        return Err(format!(
            "CRIU {} is version {shown}; checkpointing needs {a}.{b}.{c} or later \
             (`make criu` builds 4.1.1)",
            path.display()
        ));
    }
    Ok(shown)
}

fn invalid(msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INVALID_ARGUMENT, msg.into()))
}

/// The fields of containerd's `CheckpointOptions` this shim reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuncCheckpointOptions {
    pub exit: bool,
    pub image_path: String,
    pub work_path: String,
    /// Set options this shim does not implement, by name.
    pub unsupported: Vec<&'static str>,
}

/// Decodes `containerd.runc.v1.CheckpointOptions` (fields 1-9).
pub fn decode_runc_options(bytes: &[u8]) -> Result<RuncCheckpointOptions, String> {
    use containerd_shim_protos::protobuf::CodedInputStream;
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut out = RuncCheckpointOptions::default();
    let err = |e: containerd_shim_protos::protobuf::Error| e.to_string();
    while !input.eof().map_err(err)? {
        let tag = input.read_raw_varint32().map_err(err)?;
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (1..=5, 0) => {
                let set = input.read_bool().map_err(err)?;
                match field {
                    1 => out.exit = set,
                    2 if set => out.unsupported.push("open_tcp"),
                    3 if set => out.unsupported.push("external_unix_sockets"),
                    4 if set => out.unsupported.push("terminal"),
                    5 if set => out.unsupported.push("file_locks"),
                    _ => {}
                }
            }
            (6..=9, 2) => {
                let value = input.read_string().map_err(err)?;
                match field {
                    6 => out.unsupported.push("empty_namespaces"),
                    7 if !value.is_empty() => out.unsupported.push("cgroups_mode"),
                    8 => out.image_path = value,
                    9 => out.work_path = value,
                    _ => {}
                }
            }
            _ => return Err(format!("unexpected field {field} (wire type {wire})")),
        }
    }
    Ok(out)
}

/// An absolute directory from a request, made if missing; `what` names it.
fn request_dir(path: &str, what: &str) -> Result<PathBuf, ttrpc::Error> {
    let dir = PathBuf::from(path);
    if !dir.is_absolute() {
        return Err(invalid(format!("{what} {path:?} must be an absolute path")));
    }
    std::fs::create_dir_all(&dir).map_err(|e| invalid(format!("{what} {}: {e}", dir.display())))?;
    Ok(dir)
}

/// What a `Checkpoint` request asks, with `timeout_nano` the caller's ttrpc
/// deadline (0: none).
pub fn checkpoint_spec(
    req: &api::CheckpointTaskRequest,
    timeout_nano: i64,
) -> Result<CheckpointSpec, ttrpc::Error> {
    let options = match req.options.as_ref() {
        None => RuncCheckpointOptions::default(),
        Some(any) if any.type_url.ends_with(RUNC_CHECKPOINT_OPTIONS) => {
            decode_runc_options(&any.value).map_err(|e| invalid(format!("options: {e}")))?
        }
        Some(any) => {
            return Err(invalid(format!(
                "options of type {:?}: only {RUNC_CHECKPOINT_OPTIONS} is understood",
                any.type_url
            )))
        }
    };
    if !options.unsupported.is_empty() {
        return Err(invalid(format!(
            "options {} are not supported by containerd-shim-caisson-v2",
            options.unsupported.join(", ")
        )));
    }
    let images = if options.image_path.is_empty() {
        req.path.as_str()
    } else {
        options.image_path.as_str()
    };
    if images.is_empty() {
        return Err(invalid(
            "path (the CRIU images directory) must not be empty",
        ));
    }
    let images_dir = request_dir(images, "path")?;
    if std::fs::read_dir(&images_dir).map_or(true, |mut d| d.next().is_some()) {
        return Err(invalid(format!(
            "path {}: the images directory must be empty",
            images_dir.display()
        )));
    }
    let work_dir = (!options.work_path.is_empty())
        .then(|| request_dir(&options.work_path, "work_path"))
        .transpose()?;
    Ok(CheckpointSpec {
        images_dir,
        work_dir,
        exit: options.exit,
        timeout: timeout_of(timeout_nano),
    })
}

/// The time a dump may take: the caller's deadline less a second to
/// answer in, or [`DEFAULT_TIMEOUT`].
pub fn timeout_of(timeout_nano: i64) -> Duration {
    if timeout_nano <= 0 {
        return DEFAULT_TIMEOUT;
    }
    let deadline = Duration::from_nanos(timeout_nano as u64);
    deadline
        .checked_sub(Duration::from_secs(1))
        .filter(|d| !d.is_zero())
        .unwrap_or(deadline)
}

/// The images directory of a `Create` that restores (`checkpoint`, empty
/// for none), checked against what `backend` can do.
pub fn restore_images(
    checkpoint: &str,
    backend: &dyn Backend,
) -> Result<Option<PathBuf>, ttrpc::Error> {
    if checkpoint.is_empty() {
        return Ok(None);
    }
    if !backend.can_restore() {
        return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            Code::UNIMPLEMENTED,
            format!(
                "restoring from a checkpoint is not supported by the {} backend",
                backend.name()
            ),
        )));
    }
    let dir = PathBuf::from(checkpoint);
    if !dir.is_absolute() || !dir.join("inventory.img").is_file() {
        return Err(invalid(format!(
            "checkpoint {checkpoint:?} is not a directory of CRIU images (no inventory.img)"
        )));
    }
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_versions_parse_and_are_checked() {
        for (out, want) in [
            ("Version: 4.1.1\n", Some((4, 1, 1))),
            ("Version: 3.17\nGitID: v3.17\n", Some((3, 17, 0))),
            ("criu: command not found", None),
            ("Version: x.y", None),
        ] {
            assert_eq!(parse_criu_version(out), want, "{out:?}");
        }
        let criu = Path::new("/usr/sbin/criu");
        assert_eq!(check_criu_version(criu, "Version: 4.1.1").unwrap(), "4.1.1");
        let old = check_criu_version(criu, "Version: 3.14").unwrap_err();
        assert!(
            old.contains("/usr/sbin/criu") && old.contains("3.14.0"),
            "{old}"
        );
        assert!(check_criu_version(criu, "")
            .unwrap_err()
            .contains("no version"));
    }

    /// containerd's encoding: varint bools, length-delimited strings.
    fn encode(fields: &[(u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, value) in fields {
            if *field <= 5 {
                out.push((field << 3) as u8);
                out.push(value[0]);
            } else {
                out.push(((field << 3) | 2) as u8);
                out.push(value.len() as u8);
                out.extend_from_slice(value);
            }
        }
        out
    }

    #[test]
    fn runc_checkpoint_options_decode() {
        let opts = decode_runc_options(&encode(&[
            (1, &[1]),
            (8, b"/images"),
            (9, b"/work"),
            (7, b""),
        ]))
        .unwrap();
        assert_eq!(
            opts,
            RuncCheckpointOptions {
                exit: true,
                image_path: "/images".into(),
                work_path: "/work".into(),
                unsupported: vec![],
            }
        );
        let opts = decode_runc_options(&encode(&[
            (2, &[1]),
            (4, &[0]),
            (5, &[1]),
            (6, b"net"),
            (7, b"full"),
        ]))
        .unwrap();
        assert_eq!(
            opts.unsupported,
            vec!["open_tcp", "file_locks", "empty_namespaces", "cgroups_mode"]
        );
        assert!(decode_runc_options(&[0x50, 1]).is_err(), "field 10");
        assert!(decode_runc_options(&[0x0a]).is_err(), "truncated");
    }

    #[test]
    fn deadlines_leave_a_second_to_answer() {
        assert_eq!(timeout_of(0), DEFAULT_TIMEOUT);
        assert_eq!(timeout_of(-1), DEFAULT_TIMEOUT);
        assert_eq!(timeout_of(10_000_000_000), Duration::from_secs(9));
        assert_eq!(timeout_of(500_000_000), Duration::from_millis(500));
    }

    #[test]
    fn checkpoint_requests_need_an_empty_absolute_images_dir() {
        let dir = tempfile::tempdir().unwrap();
        let req = |path: &str| api::CheckpointTaskRequest {
            id: "c".into(),
            path: path.into(),
            ..Default::default()
        };
        let images = dir.path().join("images");
        let spec = checkpoint_spec(&req(images.to_str().unwrap()), 0).unwrap();
        assert_eq!(spec.images_dir, images);
        assert!(!spec.exit);
        std::fs::write(images.join("x"), b"").unwrap();
        for bad in ["", "relative/dir", images.to_str().unwrap()] {
            assert!(checkpoint_spec(&req(bad), 0).is_err(), "{bad:?}");
        }
    }
}
