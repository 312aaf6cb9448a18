//! The rootfs containerd hands to `Create` as a list of mounts (usually one
//! overlay), mounted at `<bundle>/rootfs` and unmounted when the task is
//! deleted. `caissond` mounts rootfs itself and passes none.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A mount as containerd describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Splits mount(8)-style options into flags and the data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "private" => flags |= MsFlags::MS_PRIVATE,
            "rprivate" => flags |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// Mounts `mounts` in order at `<bundle>/rootfs`. On failure, what was
/// mounted is unmounted again. Returns the rootfs path when anything was mounted.
pub fn mount_rootfs(bundle: &Path, mounts: &[RootfsMount]) -> std::io::Result<Option<PathBuf>> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)?;
    for (done, m) in mounts.iter().enumerate() {
        let (flags, data) = parse_options(&m.options);
        let kind = if m.kind.is_empty() || flags.contains(MsFlags::MS_BIND) {
            None
        } else {
            Some(m.kind.as_str())
        };
        let result = mount(
            Some(m.source.as_str()),
            &target,
            kind,
            flags,
            if data.is_empty() {
                None
            } else {
                Some(data.as_str())
            },
        );
        if let Err(e) = result {
            for _ in 0..done {
                let _ = umount2(&target, MntFlags::MNT_DETACH);
            }
            return Err(std::io::Error::other(format!(
                "mounting {} ({}) at {}: {e}",
                m.source,
                m.kind,
                target.display()
            )));
        }
    }
    Ok(Some(target))
}

/// Unmounts everything stacked at `target`; not being mounted is fine.
pub fn unmount_all(target: &Path) -> std::io::Result<()> {
    for _ in 0..16 {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH).map_err(std::io::Error::from)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "rbind", "lowerdir=/a:/b", "upperdir=/u", "index=off"]
            .map(String::from)
            .into();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(data, "lowerdir=/a:/b,upperdir=/u,index=off");
    }
}
