//! A container's `/sys/fs/cgroup` on a cgroup v1 host, as plain mounts.
//!
//! libcontainer 0.7 builds a `cgroup` mount on v1 itself, and that has two
//! faults. It looks up the cgroups of `/proc/<its own pid>` in the host's
//! `/proc` while already in the container's PID namespace: in a pod whose
//! containers share the pause's namespace the pid is the namespace's (11,
//! 12, ...), so once the namespace has used about ten pids the host has no
//! such process and the container fails ("failed to prepare rootfs",
//! `Procfs(NotFound("/proc/11"))`), and before that it reads whatever host
//! process has that pid. And it binds every hierarchy read-write whatever
//! the mount's options say, so a container's root could raise its own
//! memory or pids limit.
//!
//! So the native backend hands libcontainer what runc mounts instead: a
//! tmpfs at the destination and, for every v1 hierarchy the host mounts
//! under `/sys/fs/cgroup`, a bind of the container's own cgroup there with
//! the `cgroup` mount's options (read-only unless the container is
//! privileged). The container's cgroup of a controller libcontainer manages
//! is the spec's `cgroupsPath`; of any other hierarchy (`name=systemd`), the
//! shim's own, which the container inherits.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder, Spec};

use crate::host::mountinfo::MountEntry;

/// The v1 controllers libcontainer's cgroup manager puts a task in (its
/// `CONTROLLERS`): a hierarchy with one of them has the container's cgroup.
const MANAGED: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "pids",
    "perf_event",
    "memory",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// The root of the v1 hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One v1 hierarchy mounted on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    /// `/sys/fs/cgroup/cpu,cpuacct`.
    mount_point: PathBuf,
    /// `cpu`, `cpuacct`; `name=systemd` for a named one.
    controllers: Vec<String>,
}

fn hierarchies(mounts: &[MountEntry]) -> Vec<Hierarchy> {
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" && m.mount_point.parent() == Some(Path::new(CGROUP_ROOT)))
        .map(|m| Hierarchy {
            mount_point: m.mount_point.clone(),
            controllers: m
                .super_options
                .split(',')
                .filter(|o| o.starts_with("name=") || is_controller(o))
                .map(String::from)
                .collect(),
        })
        .collect()
}

/// Superblock options that are not controllers.
fn is_controller(option: &str) -> bool {
    !matches!(
        option,
        "rw" | "ro" | "noprefix" | "xattr" | "clone_children" | "cpuset_v2_mode" | "favordynmods"
    ) && !option.contains('=')
}

/// `/proc/self/cgroup`'s lines of v1 hierarchies: their controllers and
/// this process's path in each.
fn own_cgroups(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            (!controllers.is_empty()).then(|| {
                (
                    controllers.split(',').map(String::from).collect(),
                    path.to_string(),
                )
            })
        })
        .collect()
}

/// The container's cgroup directory in `h`: `cgroup_path` for a managed
/// hierarchy (under this process's own cgroup when relative, as
/// libcontainer places it), else this process's own.
fn container_dir(h: &Hierarchy, cgroup_path: &Path, own: &[(Vec<String>, String)]) -> PathBuf {
    let own_path = own
        .iter()
        .find(|(controllers, _)| controllers.iter().any(|c| h.controllers.contains(c)))
        .map(|(_, p)| p.as_str())
        .unwrap_or("/");
    let managed = h.controllers.iter().any(|c| MANAGED.contains(&c.as_str()));
    let rel = |p: &Path| p.strip_prefix("/").unwrap_or(p).to_path_buf();
    let path = match (managed, cgroup_path.is_absolute()) {
        (true, true) => rel(cgroup_path),
        (true, false) => rel(Path::new(own_path)).join(cgroup_path),
        (false, _) => rel(Path::new(own_path)),
    };
    h.mount_point.join(path)
}

/// [`emulate_in`] against this process's mounts and cgroups, read once: the
/// host's hierarchies and the shim's own cgroups do not change while it
/// runs, and every task create comes here. Only the hierarchies are kept:
/// the host's whole mount table (every pod's rootfs among it, overlay
/// options and all) was most of an idle shim's heap on a busy node.
pub(crate) fn emulate_here(spec: &mut Spec, cgroup_path: &Path) -> bool {
    static HERE: std::sync::OnceLock<(Vec<Hierarchy>, String)> = std::sync::OnceLock::new();
    let (hierarchies_here, own) = HERE.get_or_init(|| {
        (
            hierarchies(&crate::host::mountinfo::read().unwrap_or_default()),
            std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        )
    });
    emulate_in(spec, cgroup_path, hierarchies_here, own)
}

/// [`emulate_in`] with the hierarchies read from `mounts` (a mountinfo).
#[cfg(test)]
fn emulate(spec: &mut Spec, cgroup_path: &Path, mounts: &[MountEntry], own_cgroup: &str) -> bool {
    emulate_in(spec, cgroup_path, &hierarchies(mounts), own_cgroup)
}

/// Replaces `spec`'s `cgroup` mount by a tmpfs and binds of the container's
/// cgroups when the host's hierarchies (`hierarchies`, from this process's
/// mountinfo) are v1; `own_cgroup` is this process's `/proc/self/cgroup`.
/// Returns whether the spec changed.
fn emulate_in(
    spec: &mut Spec,
    cgroup_path: &Path,
    hierarchies: &[Hierarchy],
    own_cgroup: &str,
) -> bool {
    if hierarchies.is_empty() {
        return false;
    }
    let Some(spec_mounts) = spec.mounts().clone() else {
        return false;
    };
    if !spec_mounts
        .iter()
        .any(|m| m.typ().as_deref() == Some("cgroup"))
    {
        return false;
    }
    let own = own_cgroups(own_cgroup);
    let mut out = Vec::with_capacity(spec_mounts.len() + hierarchies.len() + 1);
    for m in spec_mounts {
        if m.typ().as_deref() != Some("cgroup") {
            out.push(m);
            continue;
        }
        out.extend(replacement(&m, hierarchies, cgroup_path, &own));
    }
    spec.set_mounts(Some(out));
    true
}

fn replacement(
    cgroup: &Mount,
    hierarchies: &[Hierarchy],
    cgroup_path: &Path,
    own: &[(Vec<String>, String)],
) -> Vec<Mount> {
    let dest = cgroup.destination();
    let options = cgroup.options().clone().unwrap_or_default();
    let ro = options.iter().any(|o| o == "ro");
    let mut out = vec![build(
        dest,
        "tmpfs",
        Path::new("tmpfs"),
        &["nosuid", "noexec", "nodev", "mode=755", "size=64k"],
    )];
    for h in hierarchies {
        let source = container_dir(h, cgroup_path, own);
        let Some(name) = h.mount_point.file_name() else {
            continue;
        };
        // A comounted hierarchy (`cpu,cpuacct`) is found under each of its
        // controllers' names too, as the host's symlinks make it.
        let mut names = vec![name.to_string_lossy().into_owned()];
        if names[0].contains(',') {
            names.extend(names[0].split(',').map(String::from).collect::<Vec<_>>());
        }
        for name in names {
            out.push(build(
                &dest.join(name),
                "bind",
                &source,
                &[
                    "rbind",
                    "nosuid",
                    "noexec",
                    "nodev",
                    if ro { "ro" } else { "rw" },
                ],
            ));
        }
    }
    out
}

fn build(dest: &Path, typ: &str, source: &Path, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .expect("every field of the mount is set")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::mountinfo::parse;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN: &str = "9:name=systemd:/init.scope\n4:memory:/shim\n2:cpu,cpuacct:/\n0::/\n";

    fn spec_with_cgroup(options: &[&str]) -> Spec {
        let mut spec = Spec::default();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.retain(|m| m.typ().as_deref() != Some("cgroup"));
        mounts.push(build(
            Path::new("/sys/fs/cgroup"),
            "cgroup",
            Path::new("cgroup"),
            options,
        ));
        mounts.push(build(
            Path::new("/data"),
            "bind",
            Path::new("/srv"),
            &["rbind"],
        ));
        spec.set_mounts(Some(mounts));
        spec
    }

    fn described(spec: &Spec) -> Vec<String> {
        spec.mounts()
            .iter()
            .flatten()
            .skip_while(|m| m.destination() != Path::new("/sys/fs/cgroup"))
            .map(|m| {
                format!(
                    "{} {} {} {}",
                    m.destination().display(),
                    m.typ().as_deref().unwrap_or(""),
                    m.source().as_ref().unwrap().display(),
                    m.options().as_ref().unwrap().join(",")
                )
            })
            .collect()
    }

    #[test]
    fn each_v1_hierarchy_is_a_read_only_bind_of_the_containers_own_cgroup() {
        let mut spec = spec_with_cgroup(&["nosuid", "noexec", "nodev", "relatime", "ro"]);
        let path = Path::new("/kubepods/besteffort/podu/c1");
        assert!(emulate(&mut spec, path, &parse(MOUNTINFO), OWN));
        let opts = "rbind,nosuid,noexec,nodev,ro";
        let cpu = "/sys/fs/cgroup/cpu,cpuacct/kubepods/besteffort/podu/c1";
        assert_eq!(
            described(&spec),
            vec![
                "/sys/fs/cgroup tmpfs tmpfs nosuid,noexec,nodev,mode=755,size=64k".to_string(),
                format!("/sys/fs/cgroup/cpu,cpuacct bind {cpu} {opts}"),
                format!("/sys/fs/cgroup/cpu bind {cpu} {opts}"),
                format!("/sys/fs/cgroup/cpuacct bind {cpu} {opts}"),
                format!(
                    "/sys/fs/cgroup/memory bind /sys/fs/cgroup/memory/kubepods/besteffort/podu/c1 {opts}"
                ),
                // Not a controller libcontainer manages: the shim's own.
                format!("/sys/fs/cgroup/systemd bind /sys/fs/cgroup/systemd/init.scope {opts}"),
                "/data bind /srv rbind".to_string(),
            ]
        );
    }

    #[test]
    fn a_privileged_containers_binds_are_writable_and_relative_paths_nest_under_the_shims() {
        let mut spec = spec_with_cgroup(&["nosuid", "noexec", "nodev", "relatime", "rw"]);
        assert!(emulate(
            &mut spec,
            Path::new("pod/c1"),
            &parse(MOUNTINFO),
            OWN
        ));
        let memory = described(&spec)
            .into_iter()
            .find(|m| m.starts_with("/sys/fs/cgroup/memory "))
            .unwrap();
        assert_eq!(
            memory,
            "/sys/fs/cgroup/memory bind /sys/fs/cgroup/memory/shim/pod/c1 \
             rbind,nosuid,noexec,nodev,rw"
        );
    }

    #[test]
    fn a_cgroup2_host_or_a_spec_without_a_cgroup_mount_is_left_alone() {
        let v2 = "31 23 0:28 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let mut spec = spec_with_cgroup(&["ro"]);
        let before = spec.clone();
        assert!(!emulate(&mut spec, Path::new("/c"), &parse(v2), OWN));
        assert_eq!(spec, before);
        let mut plain = Spec::default();
        let mut mounts = plain.mounts().clone().unwrap();
        mounts.retain(|m| m.typ().as_deref() != Some("cgroup"));
        plain.set_mounts(Some(mounts));
        let before = plain.clone();
        assert!(!emulate(
            &mut plain,
            Path::new("/c"),
            &parse(MOUNTINFO),
            OWN
        ));
        assert_eq!(plain, before);
    }
}
