//! Mounts: the system filesystems every container gets, the pod's files
//! (`/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`, `/dev/shm`) and the
//! CRI request's bind mounts with their read-only and propagation settings,
//! and its image volumes (read-only binds of images caissond mounted).
//!
//! As in containerd: a CRI mount replaces a default one at the same path
//! (and a CRI `/dev` replaces every default under `/dev`); the pod's files
//! are read-only when the rootfs is; a missing bind source directory is
//! created; mounts are ordered parents first.

use std::path::{Component, Path, PathBuf};

use caisson_proto::cri;
use cri::MountPropagation;
use oci_spec::runtime::Mount;

use super::namespaces::NamespaceModes;
use super::{PodContext, SpecError};

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

fn bind(destination: &Path, source: &Path, options: Vec<String>) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.to_path_buf());
    m.set_typ(Some("bind".into()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options));
    m
}

/// `/proc`, `/dev`, `/dev/pts`, `/dev/mqueue`, `/sys`, `/sys/fs/cgroup`:
/// containerd's defaults (without `/run` and `/dev/shm`, which the pod
/// provides). `/sys` and the cgroup mount are read-write only when
/// privileged.
pub(crate) fn system_mounts(privileged: bool) -> Vec<Mount> {
    let ro = if privileged { "rw" } else { "ro" };
    vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", ro],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", ro],
        ),
    ]
}

/// The pod's `/dev/shm`: the shared tmpfs, the host's for IPC NODE, or (if
/// `caissond` made none) a private tmpfs like containerd's default.
fn shm_mount(ctx: &PodContext, modes: &NamespaceModes, readonly: bool) -> Mount {
    let rw = if readonly { "ro" } else { "rw" };
    let options = |_: ()| {
        ["rbind", "rprivate", "nosuid", "nodev", "noexec", rw]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    match (&ctx.shm_path, modes.ipc_is_host()) {
        (_, true) => bind(Path::new("/dev/shm"), Path::new("/dev/shm"), options(())),
        (Some(path), false) => bind(Path::new("/dev/shm"), path, options(())),
        (None, false) => mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
    }
}

fn pod_file(destination: &str, source: &Path, readonly: bool) -> Option<Mount> {
    if source.as_os_str().is_empty() {
        return None;
    }
    let rw = if readonly { "ro" } else { "rw" };
    Some(bind(
        Path::new(destination),
        source,
        vec!["rbind".into(), "rprivate".into(), rw.into()],
    ))
}

/// The pause container's mounts: the system ones, its `/dev/shm` (read-only:
/// it only holds it) and `/etc/resolv.conf` (for VM-based backends that set
/// up the pod's DNS from the sandbox, as containerd does for Kata).
pub(crate) fn sandbox_mounts(ctx: &PodContext, modes: &NamespaceModes) -> Vec<Mount> {
    let mut mounts = system_mounts(false);
    mounts.push(shm_mount(ctx, modes, true));
    mounts.extend(pod_file("/etc/resolv.conf", &ctx.resolv_conf_path, true));
    mounts
}

/// A container's mounts plus the rootfs propagation they need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerMounts {
    pub mounts: Vec<Mount>,
    /// `shared` for a BIDIRECTIONAL mount, `slave` for HOST_TO_CONTAINER
    /// (the OCI spellings; the runtime applies them recursively).
    pub rootfs_propagation: Option<String>,
}

/// An absolute, `..`-free container path, normalised (`/a/./b//c` → `/a/b/c`).
pub(crate) fn clean_container_path(path: &str, field: &str) -> Result<PathBuf, SpecError> {
    if path.contains('\0') {
        return Err(SpecError::invalid(field, "path contains a NUL byte"));
    }
    if !path.starts_with('/') {
        return Err(SpecError::invalid(
            field,
            format!("{path:?} is not an absolute path"),
        ));
    }
    let mut clean = PathBuf::from("/");
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(c) => clean.push(c),
            Component::ParentDir => {
                return Err(SpecError::invalid(field, format!("{path:?} contains '..'")))
            }
            Component::Prefix(_) => unreachable!("no prefixes on unix"),
        }
    }
    if clean == Path::new("/") {
        return Err(SpecError::invalid(
            field,
            "cannot mount over the container's root",
        ));
    }
    Ok(clean)
}

/// The bind source on the host: absolute, created as a directory when
/// missing (containerd, CRI-O), symlinks resolved (the CRI asks to mount
/// the link's target).
fn host_source(path: &str, field: &str) -> Result<PathBuf, SpecError> {
    if path.contains('\0') {
        return Err(SpecError::invalid(field, "path contains a NUL byte"));
    }
    if !path.starts_with('/') {
        return Err(SpecError::invalid(
            field,
            format!("{path:?} is not an absolute path"),
        ));
    }
    let source = Path::new(path);
    match std::fs::symlink_metadata(source) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(
                path,
                "bind mount source is missing; creating it as a directory"
            );
            std::fs::create_dir_all(source)
                .map_err(|e| SpecError::io(format!("creating {field} {path}"), e))?;
        }
        Err(e) => return Err(SpecError::io(format!("stat {field} {path}"), e)),
    }
    std::fs::canonicalize(source).map_err(|e| SpecError::io(format!("resolving {field} {path}"), e))
}

fn propagation_option(
    value: i32,
    field: &str,
) -> Result<(MountPropagation, &'static str), SpecError> {
    let propagation = MountPropagation::try_from(value)
        .map_err(|_| SpecError::invalid(field, format!("unknown propagation {value}")))?;
    Ok(match propagation {
        MountPropagation::PropagationPrivate => (propagation, "rprivate"),
        MountPropagation::PropagationHostToContainer => (propagation, "rslave"),
        MountPropagation::PropagationBidirectional => (propagation, "rshared"),
    })
}

/// One CRI mount, validated; `i` is its index in `config.mounts`.
fn cri_mount(m: &cri::Mount, i: usize) -> Result<(Mount, MountPropagation), SpecError> {
    let field = |name: &str| format!("config.mounts[{i}].{name}");
    let destination = clean_container_path(&m.container_path, &field("container_path"))?;
    if let Some(image) = m.image.as_ref().filter(|img| !img.image.is_empty()) {
        return image_volume_mount(m, &image.image, destination, &field);
    }
    if m.host_path.is_empty() {
        return Err(SpecError::invalid(field("host_path"), "empty host path"));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::invalid(
            field("uidMappings"),
            "id-mapped mounts need user namespaces, which are not supported",
        ));
    }
    let (propagation, propagation_opt) = propagation_option(m.propagation, &field("propagation"))?;
    let mut options = vec!["rbind".to_string(), propagation_opt.to_string()];
    if m.recursive_read_only {
        if !m.readonly {
            return Err(SpecError::invalid(
                field("recursive_read_only"),
                "recursive read-only needs readonly to be set too",
            ));
        }
        if propagation != MountPropagation::PropagationPrivate {
            return Err(SpecError::invalid(
                field("recursive_read_only"),
                "recursive read-only needs PROPAGATION_PRIVATE",
            ));
        }
        options.push("rro".into());
    }
    options.push(if m.readonly { "ro" } else { "rw" }.into());
    let source = host_source(&m.host_path, &field("host_path"))?;
    Ok((bind(&destination, &source, options), propagation))
}

/// An image volume (KEP-4639): caissond has mounted the image read-only
/// and put the mount point in `host_path` (anything a client sent there is
/// overwritten first). Always read-only, nosuid, nodev and private, as in
/// containerd and CRI-O.
fn image_volume_mount(
    m: &cri::Mount,
    image: &str,
    destination: PathBuf,
    field: &dyn Fn(&str) -> String,
) -> Result<(Mount, MountPropagation), SpecError> {
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::invalid(
            field("uidMappings"),
            "id-mapped image volumes are not supported",
        ));
    }
    let (propagation, _) = propagation_option(m.propagation, &field("propagation"))?;
    if propagation != MountPropagation::PropagationPrivate {
        return Err(SpecError::invalid(
            field("propagation"),
            "image volumes are read-only images: only PROPAGATION_PRIVATE",
        ));
    }
    if m.host_path.is_empty() || !m.host_path.starts_with('/') {
        return Err(SpecError::invalid(
            field("image"),
            format!("image {image:?} was not mounted for this container"),
        ));
    }
    let options = ["rbind", "rprivate", "nosuid", "nodev", "ro"]
        .iter()
        .map(|o| o.to_string())
        .collect();
    Ok((
        bind(&destination, Path::new(&m.host_path), options),
        propagation,
    ))
}

/// What a pod in a VM cannot mount, refused naming the field before
/// anything is made: its bind sources reach the guest as files over 9p, so
/// mounts made in the guest cannot propagate to the host (BIDIRECTIONAL),
/// a read-only HOST_TO_CONTAINER volume would let the host's later mounts
/// be written through the share, and a unix socket or FIFO would be the
/// guest's own, connected to nothing on the host.
pub(crate) fn check_vm_mounts(config: &cri::ContainerConfig) -> Result<(), SpecError> {
    use std::os::unix::fs::FileTypeExt;
    for (i, m) in config.mounts.iter().enumerate() {
        let field = |name: &str| format!("config.mounts[{i}].{name}");
        match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationBidirectional) => {
                return Err(SpecError::invalid(
                    field("propagation"),
                    "PROPAGATION_BIDIRECTIONAL cannot work in a VM: the container's \
                     mounts are the guest's and never reach the host",
                ))
            }
            Ok(MountPropagation::PropagationHostToContainer) if m.readonly => {
                return Err(SpecError::invalid(
                    field("propagation"),
                    "PROPAGATION_HOST_TO_CONTAINER of a read-only mount is not supported \
                     in a VM (the host's later mounts could be written through its share): \
                     make it read-write or PROPAGATION_PRIVATE",
                ))
            }
            _ => {}
        }
        let is_image = m.image.as_ref().is_some_and(|i| !i.image.is_empty());
        if is_image || m.host_path.is_empty() {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(&m.host_path) {
            let kind = meta.file_type();
            let what = if kind.is_socket() {
                "a unix socket"
            } else if kind.is_fifo() {
                "a FIFO"
            } else {
                continue;
            };
            return Err(SpecError::invalid(
                field("host_path"),
                format!(
                    "{:?} is {what}, which cannot be shared into a VM (it would be the \
                     guest's own, connected to nothing on the host)",
                    m.host_path
                ),
            ));
        }
    }
    Ok(())
}

fn depth(m: &Mount) -> usize {
    m.destination().components().count()
}

/// Everything mounted into a container, in mount order.
pub(crate) fn container_mounts(
    config: &cri::ContainerConfig,
    ctx: &PodContext,
    modes: &NamespaceModes,
    sc: &cri::LinuxContainerSecurityContext,
    privileged: bool,
) -> Result<ContainerMounts, SpecError> {
    let mut requested = Vec::with_capacity(config.mounts.len());
    let mut propagations = Vec::with_capacity(config.mounts.len());
    for (i, m) in config.mounts.iter().enumerate() {
        let (mount, propagation) = cri_mount(m, i)?;
        requested.push(mount);
        propagations.push(propagation);
    }
    let requested_at = |path: &str| requested.iter().any(|m| m.destination() == Path::new(path));
    let dev_replaced = requested_at("/dev");

    let mut mounts: Vec<Mount> = system_mounts(privileged)
        .into_iter()
        .filter(|m| !requested.iter().any(|r| r.destination() == m.destination()))
        .filter(|m| !(dev_replaced && m.destination().starts_with("/dev")))
        .collect();

    let mut extra = Vec::new();
    for (destination, source) in [
        ("/etc/hostname", &ctx.hostname_path),
        ("/etc/hosts", &ctx.hosts_path),
        ("/etc/resolv.conf", &ctx.resolv_conf_path),
    ] {
        if !requested_at(destination) {
            extra.extend(pod_file(destination, source, sc.readonly_rootfs));
        }
    }
    if !requested_at("/dev/shm") && !dev_replaced {
        extra.push(shm_mount(ctx, modes, false));
    }
    extra.extend(requested);
    extra.sort_by_key(depth);
    mounts.extend(extra);

    let rootfs_propagation = if propagations.contains(&MountPropagation::PropagationBidirectional) {
        Some("shared".to_string())
    } else if propagations.contains(&MountPropagation::PropagationHostToContainer) {
        Some("slave".to_string())
    } else {
        None
    };
    Ok(ContainerMounts {
        mounts,
        rootfs_propagation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> PodContext {
        PodContext {
            pod_id: "pod1".into(),
            pause_pid: Some(1),
            hostname: "pod".into(),
            hostname_path: "/run/caisson/pods/pod1/hostname".into(),
            hosts_path: "/run/caisson/pods/pod1/hosts".into(),
            resolv_conf_path: "/run/caisson/pods/pod1/resolv.conf".into(),
            shm_path: Some("/run/caisson/pods/pod1/shm".into()),
            cgroup_parent: String::new(),
            netns_path: None,
        }
    }

    fn cri_bind(container: &str, host: &Path) -> cri::Mount {
        cri::Mount {
            container_path: container.into(),
            host_path: host.display().to_string(),
            ..Default::default()
        }
    }

    fn find<'a>(mounts: &'a [Mount], destination: &str) -> Option<&'a Mount> {
        mounts
            .iter()
            .find(|m| m.destination() == Path::new(destination))
    }

    fn options(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    #[test]
    fn container_paths() {
        for (input, want) in [("/data", "/data"), ("/a/./b//c/", "/a/b/c"), ("//x", "/x")] {
            assert_eq!(clean_container_path(input, "f").unwrap(), Path::new(want));
        }
        for bad in ["", "data", "./x", "/a/../b", "/..", "/", "/a\0b"] {
            let err = clean_container_path(bad, "f").unwrap_err();
            assert_eq!(err.field(), Some("f"), "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_pod_files() {
        let modes = NamespaceModes::default();
        let config = cri::ContainerConfig::default();
        let sc = cri::LinuxContainerSecurityContext::default();
        let got = container_mounts(&config, &ctx(), &modes, &sc, false).unwrap();
        let destinations: Vec<String> = got
            .mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(
            destinations,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm"
            ]
        );
        assert!(options(find(&got.mounts, "/sys").unwrap()).contains(&"ro".to_string()));
        let hosts = find(&got.mounts, "/etc/hosts").unwrap();
        assert_eq!(
            hosts.source().as_deref(),
            Some(Path::new("/run/caisson/pods/pod1/hosts"))
        );
        assert_eq!(options(hosts), ["rbind", "rprivate", "rw"]);
        let shm = find(&got.mounts, "/dev/shm").unwrap();
        assert_eq!(
            shm.source().as_deref(),
            Some(Path::new("/run/caisson/pods/pod1/shm"))
        );
        assert!(options(shm).contains(&"rw".to_string()));
        assert_eq!(got.rootfs_propagation, None);

        // Read-only rootfs: the pod's files are read-only too; privileged: /sys rw.
        let ro = cri::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            ..sc
        };
        let got = container_mounts(&config, &ctx(), &modes, &ro, true).unwrap();
        assert!(options(find(&got.mounts, "/etc/resolv.conf").unwrap()).contains(&"ro".to_string()));
        assert!(options(find(&got.mounts, "/sys").unwrap()).contains(&"rw".to_string()));
        assert!(options(find(&got.mounts, "/sys/fs/cgroup").unwrap()).contains(&"rw".to_string()));
    }

    #[test]
    fn host_ipc_uses_host_shm() {
        let modes = NamespaceModes {
            ipc: cri::NamespaceMode::Node,
            ..NamespaceModes::default()
        };
        let pod = PodContext {
            shm_path: None,
            ..ctx()
        };
        let got = container_mounts(
            &cri::ContainerConfig::default(),
            &pod,
            &modes,
            &Default::default(),
            false,
        )
        .unwrap();
        let shm = find(&got.mounts, "/dev/shm").unwrap();
        assert_eq!(shm.source().as_deref(), Some(Path::new("/dev/shm")));
        assert_eq!(shm.typ().as_deref(), Some("bind"));
        // No shm from caissond and not host IPC: a private tmpfs.
        let got = container_mounts(
            &cri::ContainerConfig::default(),
            &pod,
            &NamespaceModes::default(),
            &Default::default(),
            false,
        )
        .unwrap();
        assert_eq!(
            find(&got.mounts, "/dev/shm").unwrap().typ().as_deref(),
            Some("tmpfs")
        );
    }

    #[test]
    fn cri_mounts_translate() {
        let host = tempfile::tempdir().unwrap();
        let data = host.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let link = host.path().join("link");
        std::os::unix::fs::symlink(&data, &link).unwrap();
        let missing = host.path().join("new/dir");

        let config = cri::ContainerConfig {
            mounts: vec![
                cri::Mount {
                    readonly: true,
                    ..cri_bind("/data/sub", &data)
                },
                cri::Mount {
                    propagation: MountPropagation::PropagationHostToContainer as i32,
                    ..cri_bind("/data", &link)
                },
                cri::Mount {
                    readonly: true,
                    recursive_read_only: true,
                    ..cri_bind("/etc/hosts", &data)
                },
                cri_bind("/created", &missing),
            ],
            ..Default::default()
        };
        let got = container_mounts(
            &config,
            &ctx(),
            &NamespaceModes::default(),
            &Default::default(),
            false,
        )
        .unwrap();
        // Parents before children; CRI /etc/hosts replaces the pod's.
        let order: Vec<String> = got.mounts[6..]
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "/data",
                "/created",
                "/etc/hostname",
                "/etc/resolv.conf",
                "/dev/shm",
                "/data/sub",
                "/etc/hosts"
            ]
        );
        let sub = find(&got.mounts, "/data/sub").unwrap();
        assert_eq!(options(sub), ["rbind", "rprivate", "ro"]);
        let parent = find(&got.mounts, "/data").unwrap();
        assert_eq!(options(parent), ["rbind", "rslave", "rw"]);
        // Symlinked source resolved to its target.
        assert_eq!(
            parent.source().as_deref(),
            Some(data.canonicalize().unwrap().as_path())
        );
        let hosts = find(&got.mounts, "/etc/hosts").unwrap();
        assert_eq!(options(hosts), ["rbind", "rprivate", "rro", "ro"]);
        assert!(missing.is_dir(), "missing source created");
        assert_eq!(got.rootfs_propagation.as_deref(), Some("slave"));

        let shared = cri::ContainerConfig {
            mounts: vec![
                cri::Mount {
                    propagation: MountPropagation::PropagationHostToContainer as i32,
                    ..cri_bind("/a", &data)
                },
                cri::Mount {
                    propagation: MountPropagation::PropagationBidirectional as i32,
                    ..cri_bind("/b", &data)
                },
            ],
            ..Default::default()
        };
        let got = container_mounts(
            &shared,
            &ctx(),
            &NamespaceModes::default(),
            &Default::default(),
            false,
        )
        .unwrap();
        assert_eq!(got.rootfs_propagation.as_deref(), Some("shared"));
        assert_eq!(options(find(&got.mounts, "/b").unwrap())[1], "rshared");
    }

    #[test]
    fn image_volumes_bind_read_only_private() {
        let image = |propagation: MountPropagation, readonly: bool| cri::Mount {
            container_path: "/mnt/img/".into(),
            host_path: "/run/caisson/pods/p/containers/c/image-volumes/0".into(),
            image: Some(cri::ImageSpec {
                image: "data:1".into(),
                ..Default::default()
            }),
            readonly,
            propagation: propagation as i32,
            ..Default::default()
        };
        // readonly is forced whatever the request says.
        for readonly in [false, true] {
            let config = cri::ContainerConfig {
                mounts: vec![image(MountPropagation::PropagationPrivate, readonly)],
                ..Default::default()
            };
            let got = container_mounts(
                &config,
                &ctx(),
                &NamespaceModes::default(),
                &Default::default(),
                false,
            )
            .unwrap();
            let m = find(&got.mounts, "/mnt/img").unwrap();
            assert_eq!(
                m.source().as_deref(),
                Some(Path::new(
                    "/run/caisson/pods/p/containers/c/image-volumes/0"
                ))
            );
            assert_eq!(m.typ().as_deref(), Some("bind"));
            assert_eq!(options(m), ["rbind", "rprivate", "nosuid", "nodev", "ro"]);
            assert_eq!(got.rootfs_propagation, None);
        }
        for (bad, field) in [
            (
                image(MountPropagation::PropagationHostToContainer, true),
                "config.mounts[0].propagation",
            ),
            (
                image(MountPropagation::PropagationBidirectional, true),
                "config.mounts[0].propagation",
            ),
            (
                cri::Mount {
                    host_path: String::new(),
                    ..image(MountPropagation::PropagationPrivate, true)
                },
                "config.mounts[0].image",
            ),
            (
                cri::Mount {
                    gid_mappings: vec![cri::IdMapping {
                        host_id: 1000,
                        container_id: 0,
                        length: 1,
                    }],
                    ..image(MountPropagation::PropagationPrivate, true)
                },
                "config.mounts[0].uidMappings",
            ),
        ] {
            let config = cri::ContainerConfig {
                mounts: vec![bad],
                ..Default::default()
            };
            let err = container_mounts(
                &config,
                &ctx(),
                &NamespaceModes::default(),
                &Default::default(),
                false,
            )
            .unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    #[test]
    fn cri_dev_replaces_default_dev_mounts() {
        let config = cri::ContainerConfig {
            mounts: vec![cri_bind("/dev", Path::new("/dev"))],
            ..Default::default()
        };
        let got = container_mounts(
            &config,
            &ctx(),
            &NamespaceModes::default(),
            &Default::default(),
            true,
        )
        .unwrap();
        let under_dev: Vec<&Mount> = got
            .mounts
            .iter()
            .filter(|m| m.destination().starts_with("/dev"))
            .collect();
        assert_eq!(under_dev.len(), 1);
        assert_eq!(under_dev[0].typ().as_deref(), Some("bind"));
    }

    #[test]
    fn invalid_mounts_name_the_field() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = |c: &str| cri_bind(c, tmp.path());
        let cases: Vec<(cri::Mount, &str)> = vec![
            (ok("relative"), "config.mounts[1].container_path"),
            (ok("/a/../../etc"), "config.mounts[1].container_path"),
            (ok("/"), "config.mounts[1].container_path"),
            (
                cri_bind("/x", Path::new("rel/path")),
                "config.mounts[1].host_path",
            ),
            (
                cri::Mount {
                    host_path: String::new(),
                    ..ok("/x")
                },
                "config.mounts[1].host_path",
            ),
            (
                cri::Mount {
                    propagation: 7,
                    ..ok("/x")
                },
                "config.mounts[1].propagation",
            ),
            (
                cri::Mount {
                    recursive_read_only: true,
                    ..ok("/x")
                },
                "config.mounts[1].recursive_read_only",
            ),
            (
                cri::Mount {
                    recursive_read_only: true,
                    readonly: true,
                    propagation: MountPropagation::PropagationBidirectional as i32,
                    ..ok("/x")
                },
                "config.mounts[1].recursive_read_only",
            ),
            (
                cri::Mount {
                    image: Some(cri::ImageSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    }),
                    host_path: String::new(),
                    ..ok("/x")
                },
                "config.mounts[1].image",
            ),
            (
                cri::Mount {
                    uid_mappings: vec![cri::IdMapping {
                        host_id: 1000,
                        container_id: 0,
                        length: 1,
                    }],
                    ..ok("/x")
                },
                "config.mounts[1].uidMappings",
            ),
        ];
        for (bad, field) in cases {
            let config = cri::ContainerConfig {
                mounts: vec![ok("/fine"), bad],
                ..Default::default()
            };
            let err = container_mounts(
                &config,
                &ctx(),
                &NamespaceModes::default(),
                &Default::default(),
                false,
            )
            .unwrap_err();
            assert!(matches!(err, SpecError::InvalidArgument { .. }), "{err}");
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    #[test]
    fn sandbox_mount_set() {
        let got = sandbox_mounts(&ctx(), &NamespaceModes::default());
        let shm = find(&got, "/dev/shm").unwrap();
        assert!(options(shm).contains(&"ro".to_string()));
        assert!(find(&got, "/etc/resolv.conf").is_some());
        assert!(find(&got, "/etc/hosts").is_none());
    }

    #[test]
    fn what_a_vm_cannot_mount_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let with = |propagation: MountPropagation, readonly: bool, host: &Path| cri::Mount {
            propagation: propagation as i32,
            readonly,
            ..cri_bind("/m", host)
        };
        use MountPropagation::*;
        let cases = [
            (with(PropagationPrivate, false, &data), None),
            (with(PropagationPrivate, true, &data), None),
            (with(PropagationHostToContainer, false, &data), None),
            (
                with(PropagationHostToContainer, true, &data),
                Some("propagation"),
            ),
            (
                with(PropagationBidirectional, false, &data),
                Some("propagation"),
            ),
            (with(PropagationPrivate, false, &socket), Some("host_path")),
            (with(PropagationPrivate, true, &fifo), Some("host_path")),
            // Missing: made a directory later, as for any handler.
            (
                with(PropagationPrivate, false, &dir.path().join("new")),
                None,
            ),
        ];
        for (m, want) in cases {
            let config = cri::ContainerConfig {
                mounts: vec![cri_bind("/ok", &data), m.clone()],
                ..Default::default()
            };
            match (check_vm_mounts(&config), want) {
                (Ok(()), None) => {}
                (Err(SpecError::InvalidArgument { field, .. }), Some(name)) => {
                    assert_eq!(field, format!("config.mounts[1].{name}"), "{m:?}")
                }
                (got, _) => panic!("{m:?}: {got:?}, want {want:?}"),
            }
        }
    }
}
