//! Devices: the CRI request's host devices (stat-ed for type, numbers,
//! mode and owner), the device cgroup rules that allow exactly them, and a
//! privileged container's whole host `/dev`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use caisson_proto::cri;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::mounts::clean_container_path;
use super::SpecError;

/// A device node for the container and the cgroup access (`rwm`) it gets.
pub(crate) type DeviceGrant = (LinuxDevice, String);

fn device_from(meta: &std::fs::Metadata, container_path: PathBuf) -> Option<LinuxDevice> {
    let typ = if meta.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if meta.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let mut device = LinuxDevice::default();
    device.set_path(container_path);
    device.set_typ(typ);
    device.set_major(nix::sys::stat::major(rdev) as i64);
    device.set_minor(nix::sys::stat::minor(rdev) as i64);
    device.set_file_mode(Some(meta.mode() & 0o7777));
    device.set_uid(Some(meta.uid()));
    device.set_gid(Some(meta.gid()));
    Some(device)
}

/// Every device under `dir` (recursively), at `container_dir` + the same
/// relative path. Symlinks are not followed; containerd's skip list applies.
fn devices_under(dir: &Path, container_dir: &Path) -> std::io::Result<Vec<LinuxDevice>> {
    let mut found = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(meta) => meta,
            // Devices come and go; one vanishing is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            let skip = matches!(
                name.to_str(),
                Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            );
            if !skip {
                found.extend(devices_under(&entry.path(), &container_dir.join(&name))?);
            }
            continue;
        }
        if name == "console" {
            continue;
        }
        found.extend(device_from(&meta, container_dir.join(&name)));
    }
    Ok(found)
}

fn validate_permissions(permissions: &str, field: &str) -> Result<String, SpecError> {
    if permissions.is_empty() {
        return Ok("rwm".into());
    }
    if let Some(bad) = permissions.chars().find(|c| !matches!(c, 'r' | 'w' | 'm')) {
        return Err(SpecError::invalid(
            field,
            format!("{permissions:?} has {bad:?}; only r, w and m are allowed"),
        ));
    }
    Ok(permissions.to_string())
}

/// The request's devices. A host directory brings every device under it.
pub(crate) fn from_request(devices: &[cri::Device]) -> Result<Vec<DeviceGrant>, SpecError> {
    let mut out: Vec<DeviceGrant> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let field = |name: &str| format!("config.devices[{i}].{name}");
        let container_path = clean_container_path(&d.container_path, &field("container_path"))?;
        let access = validate_permissions(&d.permissions, &field("permissions"))?;
        if !d.host_path.starts_with('/') || d.host_path.contains('\0') {
            return Err(SpecError::invalid(
                field("host_path"),
                format!("{:?} is not an absolute path", d.host_path),
            ));
        }
        let host_path = Path::new(&d.host_path);
        let meta = match std::fs::metadata(host_path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpecError::not_found(
                    field("host_path"),
                    format!("no device at {}", d.host_path),
                ))
            }
            Err(e) => return Err(SpecError::io(format!("stat {}", field("host_path")), e)),
        };
        let found = if meta.is_dir() {
            devices_under(host_path, &container_path)
                .map_err(|e| SpecError::io(format!("listing {}", d.host_path), e))?
        } else {
            let device = device_from(&meta, container_path).ok_or_else(|| {
                SpecError::invalid(
                    field("host_path"),
                    format!("{} is not a character or block device", d.host_path),
                )
            })?;
            vec![device]
        };
        for device in found {
            out = merge(out, vec![(device, access.clone())]);
        }
    }
    Ok(out)
}

/// The host's `/dev` for a privileged container, each with `rwm`.
pub(crate) fn host_devices(dev: &Path) -> Result<Vec<DeviceGrant>, SpecError> {
    let found = devices_under(dev, Path::new("/dev"))
        .map_err(|e| SpecError::io(format!("listing host devices in {}", dev.display()), e))?;
    Ok(found.into_iter().map(|d| (d, "rwm".to_string())).collect())
}

/// `base` with `overrides` added; an override replaces a device at the same
/// container path (a runtime cannot create one node twice).
pub(crate) fn merge(base: Vec<DeviceGrant>, overrides: Vec<DeviceGrant>) -> Vec<DeviceGrant> {
    let mut out: Vec<DeviceGrant> = base
        .into_iter()
        .filter(|(d, _)| !overrides.iter().any(|(o, _)| o.path() == d.path()))
        .collect();
    out.extend(overrides);
    out
}

/// The first device cgroup rule: deny everything (the runtime then allows
/// its own defaults, `/dev/null` and friends).
pub(crate) fn deny_all() -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(false);
    rule.set_typ(None);
    rule.set_access(Some("rwm".into()));
    rule
}

pub(crate) fn allow_all() -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true);
    rule.set_typ(Some(LinuxDeviceType::A));
    rule.set_access(Some("rwm".into()));
    rule
}

pub(crate) fn allow(device: &LinuxDevice, access: &str) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true);
    rule.set_typ(Some(device.typ()));
    rule.set_major(Some(device.major()));
    rule.set_minor(Some(device.minor()));
    rule.set_access(Some(access.to_string()));
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(container: &str, host: &str, permissions: &str) -> cri::Device {
        cri::Device {
            container_path: container.into(),
            host_path: host.into(),
            permissions: permissions.into(),
        }
    }

    #[test]
    fn host_devices_are_stat_ed() {
        let got = from_request(&[
            device("/dev/xnull", "/dev/null", "rw"),
            device("/dev/zero", "/dev/zero", ""),
        ])
        .unwrap();
        assert_eq!(got.len(), 2);
        let (null, access) = &got[0];
        assert_eq!(null.path(), Path::new("/dev/xnull"));
        assert_eq!(null.typ(), LinuxDeviceType::C);
        assert_eq!((null.major(), null.minor()), (1, 3));
        assert_eq!(access, "rw");
        assert_eq!(got[1].1, "rwm");
        assert_eq!((got[1].0.major(), got[1].0.minor()), (1, 5));
        let rule = allow(null, access);
        assert_eq!(rule.to_string(), "c 1:3 rw");
        assert_eq!(deny_all().to_string(), "a *:* rwm");
        assert!(!deny_all().allow());
    }

    #[test]
    fn same_container_path_once() {
        let got = from_request(&[
            device("/dev/x", "/dev/null", "r"),
            device("/dev/x", "/dev/zero", "w"),
        ])
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.minor(), 5);
    }

    #[test]
    fn invalid_devices_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "").unwrap();
        let cases = [
            (
                device("dev/x", "/dev/null", "r"),
                "config.devices[0].container_path",
                true,
            ),
            (
                device("/dev/../x", "/dev/null", "r"),
                "config.devices[0].container_path",
                true,
            ),
            (
                device("/dev/x", "null", "r"),
                "config.devices[0].host_path",
                true,
            ),
            (
                device("/dev/x", "/dev/null", "rx"),
                "config.devices[0].permissions",
                true,
            ),
            (
                device("/dev/x", &file.display().to_string(), "r"),
                "config.devices[0].host_path",
                true,
            ),
            (
                device("/dev/x", "/dev/no-such-device", "r"),
                "config.devices[0].host_path",
                false,
            ),
        ];
        for (d, field, invalid) in cases {
            let err = from_request(&[d]).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
            assert_eq!(
                matches!(err, SpecError::InvalidArgument { .. }),
                invalid,
                "{err}"
            );
        }
    }

    #[test]
    fn privileged_gets_host_dev() {
        let all = host_devices(Path::new("/dev")).unwrap();
        assert!(all.iter().any(|(d, _)| d.path() == Path::new("/dev/null")));
        assert!(all.iter().all(|(d, _)| !d.path().starts_with("/dev/pts")));
        assert!(all
            .iter()
            .all(|(d, _)| d.path() != Path::new("/dev/console")));
        let merged = merge(
            all.clone(),
            from_request(&[device("/dev/null", "/dev/zero", "r")]).unwrap(),
        );
        assert_eq!(merged.len(), all.len());
        let null = merged
            .iter()
            .find(|(d, _)| d.path() == Path::new("/dev/null"))
            .unwrap();
        assert_eq!(null.0.minor(), 5);
    }
}
