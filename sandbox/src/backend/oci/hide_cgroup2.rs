//! `hide_cgroup2` (see the backend's docs): the cgroup2 mounts a hybrid
//! host has below `/sys/fs/cgroup`, and the CLI's private mount namespace
//! without them.

use std::ffi::CString;
use std::path::Path;

use crate::host::mountinfo::MountEntry;

/// cgroup2 mount points strictly below `root` (a hybrid host's
/// `/sys/fs/cgroup/unified`), from mountinfo's mount-point and
/// filesystem-type fields.
pub(super) fn cgroup2_mounts_below(mounts: &[MountEntry], root: &str) -> Vec<String> {
    let root = Path::new(root);
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2" && m.mount_point != root)
        .filter(|m| m.mount_point.starts_with(root))
        .map(|m| m.mount_point.display().to_string())
        .collect()
}

/// In the forked CLI before exec: a private mount namespace, slave to the
/// host's so the bundle's rootfs stays visible, without `mounts`. Being a
/// slave, it propagates nothing back: `rshared` mounts the runtime makes
/// stay in it.
pub(super) fn hide_mounts(mounts: &[CString]) -> std::io::Result<()> {
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        for mount in mounts {
            if libc::umount2(mount.as_ptr(), libc::MNT_DETACH) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cgroup2_mounts_below;
    use crate::host::mountinfo::parse;

    #[test]
    fn finds_the_hybrid_cgroup2_mount_only() {
        let mountinfo = "\
25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:30 / /mnt/cg2 rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mounts_below(&parse(mountinfo), "/sys/fs/cgroup"),
            vec!["/sys/fs/cgroup/unified".to_string()]
        );
        let unified = "25 30 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert!(cgroup2_mounts_below(&parse(unified), "/sys/fs/cgroup").is_empty());
    }
}
