//! Volumes and the pod's files in `microvm` pods: the host shim shares
//! each bind source into the guest over virtio-9p and the agent mounts it
//! at the container's path. Needs root, QEMU and the guest (`make
//! microvm-deps microvm-guest`); a missing one fails the test naming it.
//!
//! The tests take turns (one test's VMs at a time): two cores run TCG
//! guests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use caisson_tests::daemon::{container_config, wait_until, Caissond};
use caisson_tests::fixtures::{busybox_layer, ImageSpec, LayerBuilder};
use caisson_tests::microvm::{mounts_under, pod_mounts, qemus_with, run_dir, turn, vm_dirs};
use caisson_tests::require;
use k8s_cri::v1 as cri;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A host directory for a test's volumes, under `/var/tmp` (not a tmpfs:
/// the shim binds it, QEMU exports it).
fn host_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("caisson-vmvol-{name}-"))
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn volume(container_path: &str, host_path: &Path, readonly: bool) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        host_path: host_path.display().to_string(),
        readonly,
        ..Default::default()
    }
}

fn with_mounts(mut c: cri::ContainerConfig, mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
    c.mounts = mounts;
    c
}

/// Removes every pod, then checks that no QEMU, mount (under the run dir
/// or below the test's host dir) or VM dir is left, and that the volumes'
/// contents on the host were not touched by the teardown.
fn remove_all_and_check_nothing_left(d: &Caissond, host: &Path, kept: &[&str]) {
    d.remove_all_pods();
    let run = run_dir(d);
    wait_until(
        "the pods' QEMUs to be gone",
        Duration::from_secs(30),
        || {
            qemus_with(&run.display().to_string())
                .is_empty()
                .then_some(())
        },
    );
    assert_eq!(pod_mounts(d), Vec::<String>::new(), "mounts left");
    assert_eq!(vm_dirs(&run), Vec::<PathBuf>::new(), "VM dirs left");
    let host_mounts: Vec<String> = mounts_under(host)
        .into_iter()
        .filter(|m| Path::new(m) != host)
        .collect();
    assert_eq!(host_mounts, Vec::<String>::new(), "host mounts left");
    for file in kept {
        assert!(
            host.join(file).exists(),
            "the teardown removed the volume's {file}"
        );
    }
}

/// ExecSync that must fail: its stderr.
fn exec_fails(d: &Caissond, id: &str, cmd: &[&str]) -> String {
    let out = d.try_exec(id, cmd, 30).unwrap();
    assert_ne!(
        out.exit_code,
        0,
        "{cmd:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The mount options of `path` in the container (`/proc/mounts`).
fn mount_options(d: &Caissond, id: &str, path: &str) -> String {
    let mounts = d.exec(id, &["cat", "/proc/mounts"]);
    mounts
        .lines()
        .rfind(|l| l.split(' ').nth(1) == Some(path))
        .and_then(|l| l.split(' ').nth(3))
        .unwrap_or_else(|| panic!("{path} is not a mount point: {mounts}"))
        .to_string()
}

#[test]
fn host_path_volumes_are_shared_both_ways_and_read_only_ones_refuse_writes() {
    require::microvm();
    let _turn = turn();
    let host = host_dir("rw");
    let h = host.path();
    std::fs::create_dir(h.join("data")).unwrap();
    std::fs::write(h.join("data/from-host"), "host\n").unwrap();
    std::fs::write(h.join("single.conf"), "single\n").unwrap();
    std::fs::create_dir(h.join("ro")).unwrap();
    std::fs::write(h.join("ro/kept"), "kept\n").unwrap();
    std::fs::create_dir(h.join("empty-dir")).unwrap();

    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("vmvol1");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let writer = d.create_started_container(
        &pod,
        &config,
        with_mounts(
            container_config("writer", &["sleep", "100000"]),
            vec![
                volume("/data", &h.join("data"), false),
                volume("/etc/single.conf", &h.join("single.conf"), false),
                volume("/ro", &h.join("ro"), true),
                volume("/scratch", &h.join("empty-dir"), false),
            ],
        ),
    );

    // A directory, both ways.
    assert_eq!(d.exec(&writer, &["cat", "/data/from-host"]), "host\n");
    d.exec(&writer, &["sh", "-c", "echo guest > /data/from-guest"]);
    assert_eq!(
        std::fs::read_to_string(h.join("data/from-guest")).unwrap(),
        "guest\n"
    );
    std::fs::write(h.join("data/later"), "later\n").unwrap();
    assert_eq!(d.exec(&writer, &["cat", "/data/later"]), "later\n");
    d.exec(&writer, &["mkdir", "-p", "/data/sub/dir"]);
    assert!(h.join("data/sub/dir").is_dir());

    // A single file, both ways (written in place: the same inode).
    assert_eq!(d.exec(&writer, &["cat", "/etc/single.conf"]), "single\n");
    d.exec(
        &writer,
        &["sh", "-c", "echo from-guest >> /etc/single.conf"],
    );
    assert_eq!(
        std::fs::read_to_string(h.join("single.conf")).unwrap(),
        "single\nfrom-guest\n"
    );
    std::fs::write(h.join("single.conf"), "rewritten\n").unwrap();
    assert_eq!(d.exec(&writer, &["cat", "/etc/single.conf"]), "rewritten\n");

    // Read-only: readable, and every write is EROFS.
    assert_eq!(d.exec(&writer, &["cat", "/ro/kept"]), "kept\n");
    assert!(
        mount_options(&d, &writer, "/ro")
            .split(',')
            .any(|o| o == "ro"),
        "/ro is not mounted read-only"
    );
    for write in [
        "echo x > /ro/new",
        "echo x >> /ro/kept",
        "rm /ro/kept",
        "mkdir /ro/dir",
    ] {
        let err = exec_fails(&d, &writer, &["sh", "-c", write]);
        assert!(err.contains("Read-only file system"), "{write}: {err}");
    }
    assert!(!h.join("ro/new").exists() && !h.join("ro/dir").exists());
    assert_eq!(
        std::fs::read_to_string(h.join("ro/kept")).unwrap(),
        "kept\n"
    );

    // A second container of the pod: the emptyDir-like directory, /dev/shm.
    let reader = d.create_started_container(
        &pod,
        &config,
        with_mounts(
            container_config("reader", &["sleep", "100000"]),
            vec![volume("/scratch", &h.join("empty-dir"), false)],
        ),
    );
    d.exec(&writer, &["sh", "-c", "echo from-writer > /scratch/note"]);
    assert_eq!(d.exec(&reader, &["cat", "/scratch/note"]), "from-writer\n");
    d.exec(&reader, &["sh", "-c", "echo from-reader > /scratch/reply"]);
    assert_eq!(d.exec(&writer, &["cat", "/scratch/reply"]), "from-reader\n");
    assert_eq!(
        std::fs::read_to_string(h.join("empty-dir/reply")).unwrap(),
        "from-reader\n"
    );
    d.exec(&writer, &["sh", "-c", "echo shm-of-pod1 > /dev/shm/seg"]);
    assert_eq!(d.exec(&reader, &["cat", "/dev/shm/seg"]), "shm-of-pod1\n");
    assert!(
        d.exec(&reader, &["cat", "/proc/mounts"])
            .lines()
            .any(|l| l.starts_with("shm /dev/shm tmpfs ") || l.contains(" /dev/shm tmpfs ")),
        "/dev/shm is not a tmpfs"
    );

    // The pod's files: what caissond wrote on the host.
    let pod_dir = d.pods_dir().join(&pod);
    for (file, path) in [
        ("hostname", "/etc/hostname"),
        ("hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        let on_host = std::fs::read_to_string(pod_dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", pod_dir.join(file).display()));
        for c in [&writer, &reader] {
            assert_eq!(d.exec(c, &["cat", path]), on_host, "{path} differs");
        }
    }
    assert_eq!(d.exec(&reader, &["hostname"]).trim(), "vmvol1");

    // Another pod has a /dev/shm of its own.
    let other_config = d.pod_config("vmvol2");
    let other = d.run_pod_with_handler(&other_config, "microvm");
    let stranger = d.create_started_container(
        &other,
        &other_config,
        container_config("stranger", &["sleep", "100000"]),
    );
    assert_eq!(d.exec(&stranger, &["ls", "-A", "/dev/shm"]), "");
    d.stop_pod(&other);
    d.remove_pod(&other);

    remove_all_and_check_nothing_left(
        &d,
        h,
        &[
            "data/from-host",
            "data/from-guest",
            "data/sub/dir",
            "single.conf",
            "ro/kept",
            "empty-dir/note",
        ],
    );
}

/// A bind of `dir` on itself, made a shared mount (as `/` is under
/// systemd), unmounted with what is below it when dropped.
struct SharedMount(PathBuf);

impl SharedMount {
    fn new(dir: &Path) -> SharedMount {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        let m = SharedMount(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap();
        m
    }

    fn tmpfs_at(&self, sub: &str) {
        let target = self.0.join(sub);
        std::fs::create_dir_all(&target).unwrap();
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        std::fs::write(target.join("on-tmpfs"), "mounted later\n").unwrap();
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let mut points = mounts_under(&self.0);
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = umount2(Path::new(&p), MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn host_to_container_propagation_reaches_the_guest_and_what_cannot_work_is_refused() {
    require::microvm();
    let _turn = turn();
    let host = host_dir("prop");
    let h = host.path();
    for sub in ["slave", "private"] {
        std::fs::create_dir(h.join(sub)).unwrap();
    }
    let shared = SharedMount::new(h);

    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("vmprop");
    let pod = d.run_pod_with_handler(&config, "microvm");

    // What cannot work in a VM is refused naming the field, and nothing
    // is made: Bidirectional (the container's mounts are the guest's), a
    // read-only HostToContainer volume (the host's later mounts would be
    // writable through the share), a unix socket (it would be the guest's).
    let socket = h.join("private/sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let with_propagation = |p: cri::MountPropagation, m: cri::Mount| cri::Mount {
        propagation: p as i32,
        ..m
    };
    for (what, refused, field) in [
        (
            "Bidirectional",
            with_propagation(
                cri::MountPropagation::PropagationBidirectional,
                volume("/bidi", &h.join("slave"), false),
            ),
            "config.mounts[1].propagation",
        ),
        (
            "read-only HostToContainer",
            with_propagation(
                cri::MountPropagation::PropagationHostToContainer,
                volume("/slave", &h.join("slave"), true),
            ),
            "config.mounts[1].propagation",
        ),
        (
            "a unix socket",
            volume("/run/app.sock", &socket, false),
            "config.mounts[1].host_path",
        ),
    ] {
        let mut rt = d.runtime();
        let refused = with_mounts(
            container_config("refused", &["sleep", "100000"]),
            vec![volume("/fine", &h.join("private"), false), refused],
        );
        let err =
            d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(refused),
                sandbox_config: Some(config.clone()),
            }))
            .expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(field),
            "{what}: the error does not name {field}: {}",
            err.message()
        );
    }
    let mut rt = d.runtime();
    let listed =
        d.rt.block_on(rt.list_containers(cri::ListContainersRequest::default()))
            .unwrap()
            .into_inner()
            .containers;
    assert!(
        listed.is_empty(),
        "a refused container is listed: {listed:?}"
    );
    std::fs::remove_file(&socket).unwrap();

    let c = d.create_started_container(
        &pod,
        &config,
        with_mounts(
            container_config("prop", &["sleep", "100000"]),
            vec![
                cri::Mount {
                    propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                    ..volume("/slave", &h.join("slave"), false)
                },
                volume("/private", &h.join("private"), false),
            ],
        ),
    );
    // Mounted on the host after the container started: seen through the
    // HOST_TO_CONTAINER volume, not through the private one.
    shared.tmpfs_at("slave/later");
    shared.tmpfs_at("private/later");
    assert_eq!(
        d.exec(&c, &["cat", "/slave/later/on-tmpfs"]),
        "mounted later\n"
    );
    assert_eq!(d.exec(&c, &["ls", "-A", "/private/later"]), "");
    // Unmounted on the host: gone in the guest too.
    umount2(&h.join("slave/later"), MntFlags::MNT_DETACH).unwrap();
    assert_eq!(d.exec(&c, &["ls", "-A", "/slave/later"]), "");

    umount2(&h.join("private/later"), MntFlags::MNT_DETACH).unwrap();
    remove_all_and_check_nothing_left(&d, h, &[]);
    drop(shared);
    assert_eq!(mounts_under(h), Vec::<String>::new());
}

/// Busybox plus symlinks that point out of the rootfs: to its root, above
/// it, and to the path of the guest's share (which the image has too, so
/// that the link resolves in either root).
fn links_image() -> ImageSpec {
    let links = LayerBuilder::new()
        .dir("run", 0o755)
        .dir("run/caisson", 0o755)
        .dir("run/caisson/shared", 0o755)
        .symlink("abs", "/")
        .symlink("up", "../../../../../../../..")
        .symlink("share", "/run/caisson/shared")
        .build();
    ImageSpec::new(
        Some("docker.io/library/busybox-links:latest"),
        vec![busybox_layer(), links],
    )
}

#[test]
fn mount_paths_cannot_escape_through_symlinks() {
    require::microvm();
    let _turn = turn();
    let host = host_dir("esc");
    let h = host.path();
    std::fs::create_dir(h.join("vol")).unwrap();
    std::fs::write(h.join("vol/marker"), "in the volume\n").unwrap();
    // Outside the volume: nothing in the guest may reach it.
    std::fs::write(h.join("secret"), "host secret\n").unwrap();
    std::os::unix::fs::symlink(h.join("vol"), h.join("link-to-vol")).unwrap();

    let d = Caissond::start("");
    d.import_busybox();
    d.import_image(&links_image());
    let config = d.pod_config("vmesc");
    let pod = d.run_pod_with_handler(&config, "microvm");
    let mut cfg = with_mounts(
        container_config("esc", &["sleep", "100000"]),
        vec![
            // A host path through a symlink: the link's target, as on the
            // node (caissond resolves it on the host).
            volume("/vol", &h.join("link-to-vol"), false),
            // Container paths through the image's symlinks: inside the
            // container's root, never the guest's.
            volume("/abs/via-abs", &h.join("vol"), true),
            volume("/up/via-up", &h.join("vol"), true),
            volume("/share/via-share", &h.join("vol"), true),
        ],
    );
    cfg.image.as_mut().unwrap().image = "busybox-links".into();
    let c = d.create_started_container(&pod, &config, cfg);
    assert_eq!(d.exec(&c, &["cat", "/vol/marker"]), "in the volume\n");
    for path in [
        "/via-abs/marker",
        "/via-up/marker",
        "/run/caisson/shared/via-share/marker",
    ] {
        assert_eq!(d.exec(&c, &["cat", path]), "in the volume\n", "{path}");
    }
    // Nothing was made in the guest's share (on the host, the VM's
    // shared dir) but the tasks' own directories.
    let run = run_dir(&d);
    let vms = vm_dirs(&run);
    assert_eq!(vms.len(), 1, "{vms:?}");
    let mut top: Vec<String> = std::fs::read_dir(vms[0].join("shared"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let mut tasks = vec![pod.clone(), c.clone()];
    tasks.sort();
    assert_eq!(top, tasks, "the share holds more than the pod's tasks");

    // Symlinks the container makes in a volume are resolved in the guest:
    // the host's files outside the volume stay out of reach.
    let secret = h.join("secret").display().to_string();
    d.exec(
        &c,
        &[
            "sh",
            "-c",
            &format!("ln -s {secret} /vol/abs-link && ln -s ../secret /vol/rel-link && ln -s / /vol/root-link"),
        ],
    );
    for path in [
        "/vol/abs-link".to_string(),
        "/vol/rel-link".to_string(),
        format!("/vol/root-link{secret}"),
        format!("/vol/../..{secret}"),
    ] {
        let out = d.try_exec(&c, &["cat", &path], 30).unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("host secret"),
            "{path} reached the host's file"
        );
    }
    // The links are on the host as the guest made them, not followed.
    assert_eq!(
        std::fs::read_link(h.join("vol/abs-link")).unwrap(),
        h.join("secret")
    );
    assert_eq!(
        std::fs::read_to_string(h.join("secret")).unwrap(),
        "host secret\n"
    );

    remove_all_and_check_nothing_left(&d, h, &["vol/marker", "secret"]);
}
