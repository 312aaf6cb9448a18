//! The CRIU command-line arguments a checkpoint and a restore need, from
//! the task's spec and mountinfo: pure functions, tested here.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::host::mountinfo::unescape;

pub(super) const NET_KEY: &str = "extRootNetNS";
pub(super) const PID_KEY: &str = "extRootPidNS";
/// The external parts of a dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Externals {
    /// Bind mounts, by destination in the container (the CRIU key).
    pub(super) binds: Vec<PathBuf>,
    /// cgroup hierarchies bound into the container.
    pub(super) cgroups: Vec<CgroupMount>,
    /// The network namespace was the pod's (`extRootNetNS`).
    pub(super) net: bool,
    /// The PID namespace was the pod's (`extRootPidNS`).
    pub(super) pid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CgroupMount {
    /// Where it is in the container (the CRIU key).
    pub(super) key: PathBuf,
    /// The hierarchy's mount point on the host.
    pub(super) host_mount: PathBuf,
    /// The bound directory in the hierarchy; none when it was the task's
    /// own cgroup (the new task's is bound on restore).
    pub(super) root: Option<PathBuf>,
}

/// One mountinfo line, the fields CRIU's keys need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MountLine {
    pub(super) dev: String,
    pub(super) root: PathBuf,
    pub(super) mount_point: PathBuf,
    pub(super) fstype: String,
}

pub(super) fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            Some(MountLine {
                dev: f.get(2)?.to_string(),
                root: PathBuf::from(unescape(f.get(3)?)),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                fstype: right.split(' ').next()?.to_string(),
            })
        })
        .collect()
}

pub(super) fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

pub(super) fn has_path(spec: &Spec, typ: LinuxNamespaceType) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == typ)?
        .path()
        .clone()
}

/// The external mounts and namespaces of a task from its spec, its
/// mountinfo and the host's (`host`), its cgroup being `cgroup_path`.
pub(super) fn externals_of(
    spec: &Spec,
    task_mounts: &[MountLine],
    host_mounts: &[MountLine],
    cgroup_path: &Path,
) -> Externals {
    let mounted = |dst: &Path| task_mounts.iter().any(|m| m.mount_point == dst);
    let binds = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| is_bind(m) && mounted(m.destination()))
        .map(|m| m.destination().clone())
        .collect();
    let cgroups = task_mounts
        .iter()
        .filter(|m| {
            matches!(m.fstype.as_str(), "cgroup" | "cgroup2")
                && m.mount_point.starts_with("/sys/fs/cgroup")
        })
        .filter_map(|m| {
            let host = host_mounts
                .iter()
                .find(|h| h.dev == m.dev && h.root == Path::new("/"))?;
            Some(CgroupMount {
                key: m.mount_point.clone(),
                host_mount: host.mount_point.clone(),
                root: (m.root != cgroup_path).then(|| m.root.clone()),
            })
        })
        .collect();
    Externals {
        binds,
        cgroups,
        net: has_path(spec, LinuxNamespaceType::Network).is_some(),
        pid: has_path(spec, LinuxNamespaceType::Pid).is_some(),
    }
}

/// `criu dump`'s arguments for the externals (`net_inode`/`pid_inode`: the
/// task's namespaces).
pub(super) fn dump_external_args(ext: &Externals, net_inode: u64, pid_inode: u64) -> Vec<String> {
    let mut args = Vec::new();
    for key in ext.binds.iter().chain(ext.cgroups.iter().map(|c| &c.key)) {
        args.push("--external".into());
        args.push(format!("mnt[{}]:{}", key.display(), key.display()));
    }
    if ext.net {
        args.push("--external".into());
        args.push(format!("net[{net_inode}]:{NET_KEY}"));
    }
    if ext.pid {
        args.push("--external".into());
        args.push(format!("pid[{pid_inode}]:{PID_KEY}"));
    }
    args
}

/// `criu restore`'s external mount arguments: each dumped key mapped to
/// the new spec's source (or the new task's cgroup).
pub(super) fn restore_mount_args(
    ext: &Externals,
    spec: &Spec,
    cgroup_path: &Path,
) -> std::result::Result<Vec<String>, String> {
    let mut args = Vec::new();
    for key in &ext.binds {
        let source = spec
            .mounts()
            .iter()
            .flatten()
            .find(|m| is_bind(m) && m.destination() == key)
            .and_then(|m| m.source().clone())
            .ok_or_else(|| {
                format!(
                    "the checkpoint has a bind mount at {} that the new container does not",
                    key.display()
                )
            })?;
        args.push("--external".into());
        args.push(format!("mnt[{}]:{}", key.display(), source.display()));
    }
    for c in &ext.cgroups {
        let within = c.root.as_deref().unwrap_or(cgroup_path);
        let source = match within.strip_prefix("/") {
            Ok(rel) if !rel.as_os_str().is_empty() => c.host_mount.join(rel),
            _ => c.host_mount.clone(),
        };
        args.push("--external".into());
        args.push(format!("mnt[{}]:{}", c.key.display(), source.display()));
    }
    Ok(args)
}

/// `--cgroup-root` for every controller the shim's `/proc/self/cgroup`
/// lists (v1), or the one unified hierarchy (v2).
pub(super) fn cgroup_root_args(self_cgroup: &str, cgroup_path: &Path) -> Vec<String> {
    let lines: Vec<(&str, &str)> = self_cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _ = f.next()?;
            Some((f.next()?, f.next()?))
        })
        .collect();
    let v1: Vec<&str> = lines
        .iter()
        .filter(|(c, _)| !c.is_empty() && !c.starts_with("name="))
        .map(|(c, _)| *c)
        .collect();
    let mut args = Vec::new();
    if v1.is_empty() {
        args.push("--cgroup-root".into());
        args.push(cgroup_path.display().to_string());
    }
    for c in v1 {
        args.push("--cgroup-root".into());
        args.push(format!("{c}:{}", cgroup_path.display()));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK_MOUNTINFO: &str = "\
106 63 0:42 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
108 106 0:54 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
113 112 0:29 /pods/c1 /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
116 112 0:32 /pods/c1 /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
121 112 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
122 106 254:0 /run/pods/p/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw
125 108 0:40 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
";
    const HOST_MOUNTINFO: &str = "\
30 25 0:29 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
33 25 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
38 25 0:37 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,name=systemd
";

    fn spec() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hostname", "type": "bind", "source": "/run/pods/p/hostname", "options": ["rbind", "ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/pods/p/shm", "options": ["rbind"]},
                {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]}
            ],
            "linux": {"namespaces": [
                {"type": "mount"},
                {"type": "network", "path": "/proc/42/ns/net"},
                {"type": "uts", "path": "/proc/42/ns/uts"},
                {"type": "pid"}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn externals_are_the_mounted_binds_cgroups_and_joined_namespaces() {
        let ext = externals_of(
            &spec(),
            &parse_mountinfo(TASK_MOUNTINFO),
            &parse_mountinfo(HOST_MOUNTINFO),
            Path::new("/pods/c1"),
        );
        assert_eq!(
            ext.binds,
            vec![PathBuf::from("/etc/hostname"), PathBuf::from("/dev/shm")],
            "/data is not mounted in the task"
        );
        let cg: Vec<(&str, &str, Option<&str>)> = ext
            .cgroups
            .iter()
            .map(|c| {
                (
                    c.key.to_str().unwrap(),
                    c.host_mount.to_str().unwrap(),
                    c.root.as_deref().and_then(Path::to_str),
                )
            })
            .collect();
        assert_eq!(
            cg,
            vec![
                ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu", None),
                ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory", None),
                (
                    "/sys/fs/cgroup/systemd",
                    "/sys/fs/cgroup/systemd",
                    Some("/")
                ),
            ]
        );
        assert!(ext.net && !ext.pid);
        assert_eq!(
            dump_external_args(&ext, 7, 8),
            [
                "--external",
                "mnt[/etc/hostname]:/etc/hostname",
                "--external",
                "mnt[/dev/shm]:/dev/shm",
                "--external",
                "mnt[/sys/fs/cgroup/cpu]:/sys/fs/cgroup/cpu",
                "--external",
                "mnt[/sys/fs/cgroup/memory]:/sys/fs/cgroup/memory",
                "--external",
                "mnt[/sys/fs/cgroup/systemd]:/sys/fs/cgroup/systemd",
                "--external",
                "net[7]:extRootNetNS",
            ]
        );
    }

    #[test]
    fn restore_maps_keys_to_the_new_sources_and_cgroup() {
        let ext = externals_of(
            &spec(),
            &parse_mountinfo(TASK_MOUNTINFO),
            &parse_mountinfo(HOST_MOUNTINFO),
            Path::new("/pods/c1"),
        );
        let mut new = spec();
        let mut mounts = new.mounts().clone().unwrap();
        mounts[1].set_source(Some("/run/pods/q/hostname".into()));
        new.set_mounts(Some(mounts));
        let args = restore_mount_args(&ext, &new, Path::new("/pods/c2")).unwrap();
        assert!(args.contains(&"mnt[/etc/hostname]:/run/pods/q/hostname".to_string()));
        assert!(args.contains(&"mnt[/sys/fs/cgroup/cpu]:/sys/fs/cgroup/cpu/pods/c2".to_string()));
        assert!(args.contains(&"mnt[/sys/fs/cgroup/systemd]:/sys/fs/cgroup/systemd".to_string()));
        let mut without_shm = spec();
        let mut mounts = without_shm.mounts().clone().unwrap();
        mounts.retain(|m| m.destination() != Path::new("/dev/shm"));
        without_shm.set_mounts(Some(mounts));
        let err = restore_mount_args(&ext, &without_shm, Path::new("/pods/c2")).unwrap_err();
        assert!(err.contains("/dev/shm"), "{err}");
    }

    #[test]
    fn cgroup_roots_name_each_v1_controller_or_the_unified_tree() {
        let v1 = "9:name=systemd:/\n8:pids:/x\n2:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            cgroup_root_args(v1, Path::new("/pods/c2")),
            [
                "--cgroup-root",
                "pids:/pods/c2",
                "--cgroup-root",
                "cpu,cpuacct:/pods/c2"
            ]
        );
        assert_eq!(
            cgroup_root_args("0::/user.slice\n", Path::new("/pods/c2")),
            ["--cgroup-root", "/pods/c2"]
        );
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let lines = parse_mountinfo("1 0 0:1 /a\\040b /mnt/x\\040y rw - tmpfs t rw\n");
        assert_eq!(lines[0].root, Path::new("/a b"));
        assert_eq!(lines[0].mount_point, Path::new("/mnt/x y"));
    }
}
