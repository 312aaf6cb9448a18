//! User namespaces for pods (`hostUsers: false`, KEP-127) under the
//! native handler, through caissond and the `k8s-cri` client: the pod runs
//! in a user namespace with exactly the mappings kubelet sent, its rootfs,
//! pod files, `/dev/shm` and hostPath volumes are idmapped, and removing it
//! leaves nothing behind. Malformed options are INVALID_ARGUMENT naming the
//! field. Needs root.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caisson_tests::daemon::{container_config, id_map, ns_inode, proc_status_id, Caissond};
use k8s_cri::v1 as cri;

/// The host ids the tests' pods get (kubelet would allocate them).
const HOST_ID: u32 = 3_000_000;
const IDS: u32 = 65_536;

fn mapping(host_id: u32, container_id: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping {
        host_id,
        container_id,
        length,
    }
}

/// What kubelet sends for a `hostUsers: false` pod (and each container).
fn userns_options(uids: Vec<cri::IdMapping>, gids: Vec<cri::IdMapping>) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        target_id: String::new(),
        userns_options: Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids,
            gids,
        }),
    }
}

fn good_options() -> cri::NamespaceOption {
    userns_options(
        vec![mapping(HOST_ID, 0, IDS)],
        vec![mapping(HOST_ID, 0, IDS)],
    )
}

fn pod_with(d: &Caissond, name: &str, options: cri::NamespaceOption) -> cri::PodSandboxConfig {
    let mut config = d.pod_config(name);
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(options),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

fn container_with(name: &str, cmd: &[&str], options: cri::NamespaceOption) -> cri::ContainerConfig {
    let mut config = container_config(name, cmd);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(options),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// The container's bundle (ContainerStatus verbose info).
fn bundle_of(d: &Caissond, id: &str) -> PathBuf {
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        }));
    let info = d.ok("ContainerStatus", r).info;
    let json: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    PathBuf::from(json["bundle"].as_str().expect("bundle in the verbose info"))
}

/// `/proc/self/mountinfo` lines: (mount point, options, fs type, super options).
fn mounts() -> Vec<(String, String, String, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some((
                left.get(4)?.to_string(),
                left.get(5)?.to_string(),
                right.first()?.to_string(),
                right.get(2).unwrap_or(&"").to_string(),
            ))
        })
        .collect()
}

/// The upper dir of the overlay rootfs at `rootfs`.
fn upper_dir(rootfs: &Path) -> PathBuf {
    let rootfs = rootfs.display().to_string();
    let (_, _, _, options) = mounts()
        .into_iter()
        .find(|(at, _, fstype, _)| *at == rootfs && fstype == "overlay")
        .expect("an overlay rootfs");
    PathBuf::from(
        options
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir="))
            .expect("an upper dir"),
    )
}

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    mounts()
        .into_iter()
        .filter(|(at, ..)| at.starts_with(&prefix))
        .map(|(at, ..)| at)
        .collect()
}

/// Processes whose user namespace, or an open fd, is `userns` (`user:[n]`).
fn holders_of(userns: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let in_it = std::fs::read_link(entry.path().join("ns/user"))
            .is_ok_and(|l| l.to_string_lossy() == userns);
        let holds = std::fs::read_dir(entry.path().join("fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == userns)
            })
        });
        if in_it || holds {
            found.push(pid);
        }
    }
    found
}

fn run_pod_timed(d: &Caissond, config: &cri::PodSandboxConfig) -> (String, Duration) {
    let started = Instant::now();
    let pod = d.run_pod(config);
    (pod, started.elapsed())
}

#[test]
fn a_host_users_false_pod_runs_in_kubelets_user_namespace_and_leaves_nothing() {
    let mut d = Caissond::start("");
    d.import_busybox();
    let volume = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::write(volume.path().join("host-file"), "from the host\n").unwrap();

    // For the record: a pod without and with a user namespace.
    let (plain, plain_took) = run_pod_timed(&d, &d.pod_config("plain"));
    let config = pod_with(&d, "userns", good_options());
    let (pod, userns_took) = run_pod_timed(&d, &config);
    eprintln!("RunPodSandbox: {plain_took:?} with the host's users, {userns_took:?} with hostUsers: false");
    d.stop_pod(&plain);
    d.remove_pod(&plain);

    let mut ctr_config = container_with("sleeper", &["sleep", "1000"], good_options());
    ctr_config.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: volume.path().display().to_string(),
        ..Default::default()
    }];
    let ctr = d.create_started_container(&pod, &config, ctr_config);
    let pause = d.pod_pid(&pod);
    let ctr_pid = d.container_pid(&ctr);

    // From the host: exactly kubelet's mappings, the mapped uid, one user
    // namespace for the pause and the container, not the host's.
    for pid in [pause, ctr_pid] {
        assert_eq!(id_map(pid, "uid_map"), vec![(0, HOST_ID, IDS)], "pid {pid}");
        assert_eq!(id_map(pid, "gid_map"), vec![(0, HOST_ID, IDS)], "pid {pid}");
    }
    assert_eq!(proc_status_id(ctr_pid, "Uid"), HOST_ID);
    assert_eq!(proc_status_id(ctr_pid, "Gid"), HOST_ID);
    assert_eq!(
        proc_status_id(pause, "Uid"),
        HOST_ID + 65_535,
        "pause runs as 65535"
    );
    let userns = ns_inode(ctr_pid, "user");
    assert_eq!(userns, ns_inode(pause, "user"));
    assert_ne!(userns, ns_inode(std::process::id(), "user"));
    assert_eq!(ns_inode(ctr_pid, "net"), ns_inode(pause, "net"));
    // The container's process is in its cgroup, applied from the host.
    let cgroup = std::fs::read_to_string(format!("/proc/{ctr_pid}/cgroup")).unwrap();
    assert!(cgroup.contains(&ctr), "{cgroup}");

    // Inside: root, the mapping, the image's files root's, the pod's files,
    // /dev/shm, the volume and the system mounts usable.
    let out = d.exec(
        &ctr,
        &[
            "sh",
            "-c",
            "id -u; id -g; cat /proc/self/uid_map; \
             stat -c 'passwd=%u:%g' /etc/passwd; stat -c 'busybox=%u' /bin/busybox; \
             echo x > /made && stat -c 'made=%u' /made; \
             grep -q userns /etc/hosts && stat -c 'hosts=%u' /etc/hosts; \
             stat -c 'resolv=%u' /etc/resolv.conf; \
             touch /dev/shm/from-pod && stat -c 'shm=%u' /dev/shm/from-pod; \
             stat -c 'volume=%u' /data/host-file; touch /data/from-pod && echo volume-ok; \
             ls /sys/class/net >/dev/null && echo sys-ok; \
             test -r /proc/1/status && echo proc-ok; \
             readlink /proc/self/ns/user",
        ],
    );
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "0", "{out}");
    assert_eq!(lines[1], "0", "{out}");
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(map, ["0", &HOST_ID.to_string(), &IDS.to_string()], "{out}");
    for want in [
        "passwd=0:0",
        "busybox=0",
        "made=0",
        "hosts=0",
        "resolv=0",
        "shm=0",
        "volume=0",
        "volume-ok",
        "sys-ok",
        "proc-ok",
    ] {
        assert!(lines.contains(&want), "{want:?} missing in:\n{out}");
    }
    assert_eq!(
        lines.last().copied(),
        Some(userns.as_str()),
        "the exec's userns"
    );

    // On the host: the rootfs write is in the upper dir as the mapped uid;
    // the idmapped volume and /dev/shm got host root's files.
    let bundle = bundle_of(&d, &ctr);
    let upper = upper_dir(&bundle.join("rootfs"));
    let made = std::fs::metadata(upper.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (HOST_ID, HOST_ID));
    let from_pod = std::fs::metadata(volume.path().join("from-pod")).unwrap();
    assert_eq!(
        (from_pod.uid(), from_pod.gid()),
        (0, 0),
        "the volume is idmapped"
    );
    let shm = d.pods_dir().join(&pod).join("shm/from-pod");
    assert_eq!(
        std::fs::metadata(&shm).unwrap().uid(),
        0,
        "/dev/shm is idmapped"
    );

    // A second container shares the user namespace; its output reaches
    // its log.
    let mut second = container_with(
        "second",
        &["sh", "-c", "id -u; echo logged-from-userns; sleep 1000"],
        good_options(),
    );
    second.log_path = "second.log".into();
    let second = d.create_started_container(&pod, &config, second);
    let second_pid = d.container_pid(&second);
    assert_eq!(ns_inode(second_pid, "user"), userns);
    let log = d.log_dir().join("userns/second.log");
    caisson_tests::daemon::wait_until(
        "the second container's log",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("logged-from-userns"))
        },
    );

    // caissond restarts: the shims keep the namespace; exec and stop work.
    d.restart_after_sigkill();
    assert_eq!(d.exec(&ctr, &["id", "-u"]).trim(), "0");
    d.stop_container(&second, 5);

    // RemovePodSandbox: no process left in (or holding) the namespace, no
    // mount left under caissond's dirs (idmapped layers, relays, rootfs).
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    assert_eq!(
        holders_of(&userns),
        Vec::<u32>::new(),
        "the user namespace is released"
    );
    let left: Vec<String> = mounts_under(d.dir.path())
        .into_iter()
        .filter(|m| !d.is_standing_mount(m))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:#?}");
    let idmapped: Vec<_> = mounts()
        .into_iter()
        .filter(|(at, options, ..)| {
            options.split(',').any(|o| o == "idmapped") && at.contains("caissond-")
        })
        .collect();
    assert!(idmapped.is_empty(), "idmapped mounts left: {idmapped:#?}");
}

/// Every malformed `userns_options`, sent over the real gRPC, is
/// INVALID_ARGUMENT naming the field; nothing is left of the refused pod.
#[test]
fn malformed_user_namespace_options_are_invalid_arguments_naming_the_field() {
    let d = Caissond::start("");
    d.import_busybox();
    let sc = "config.linux.security_context.namespace_options";
    let good = || vec![mapping(HOST_ID, 0, IDS)];
    let with_mode = |mode: cri::NamespaceMode| {
        let mut o = good_options();
        o.userns_options.as_mut().unwrap().mode = mode as i32;
        o
    };
    let mut host_network = good_options();
    host_network.network = cri::NamespaceMode::Node as i32;
    let cases: Vec<(&str, cri::NamespaceOption, String)> = vec![
        (
            "target",
            with_mode(cri::NamespaceMode::Target),
            format!("{sc}.userns_options.mode"),
        ),
        (
            "container",
            with_mode(cri::NamespaceMode::Container),
            format!("{sc}.userns_options.mode"),
        ),
        (
            "no-uids",
            userns_options(vec![], good()),
            format!("{sc}.userns_options.uids"),
        ),
        (
            "two-uids",
            userns_options(
                vec![mapping(HOST_ID, 0, 10), mapping(HOST_ID + 100, 10, 10)],
                good(),
            ),
            format!("{sc}.userns_options.uids"),
        ),
        (
            "two-gids",
            userns_options(
                good(),
                vec![mapping(HOST_ID, 0, 10), mapping(HOST_ID + 100, 10, 10)],
            ),
            format!("{sc}.userns_options.gids"),
        ),
        (
            "container-id",
            userns_options(vec![mapping(HOST_ID, 1, IDS)], good()),
            format!("{sc}.userns_options.uids[0].container_id"),
        ),
        (
            "length-0",
            userns_options(good(), vec![mapping(HOST_ID, 0, 0)]),
            format!("{sc}.userns_options.gids[0].length"),
        ),
        (
            "overflow",
            userns_options(vec![mapping(u32::MAX - 1000, 0, IDS)], good()),
            format!("{sc}.userns_options.uids[0].length"),
        ),
        (
            "host-root",
            userns_options(vec![mapping(0, 0, IDS)], good()),
            format!("{sc}.userns_options.uids[0].host_id"),
        ),
        (
            "host-reserved",
            userns_options(good(), vec![mapping(1000, 0, IDS)]),
            format!("{sc}.userns_options.gids[0].host_id"),
        ),
        ("host-network", host_network, format!("{sc}.network")),
    ];
    let mut rt = d.runtime();
    for (name, options, field) in cases {
        let config = pod_with(&d, &format!("bad-{name}"), options);
        let err =
            d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }))
            .expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err}");
        assert!(
            err.message().contains(&field),
            "{name}: {field} not in {err}"
        );
    }
    let pods =
        d.rt.block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()))
            .unwrap()
            .into_inner()
            .items;
    assert!(pods.is_empty(), "refused pods left: {pods:?}");

    // A container whose options are not its pod's.
    let config = pod_with(&d, "good", good_options());
    let pod = d.run_pod(&config);
    let other = userns_options(vec![mapping(HOST_ID + IDS, 0, IDS)], good());
    let no_userns = cri::NamespaceOption::default();
    for (name, options) in [("other-mappings", other), ("host-users", no_userns)] {
        let err =
            d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_with(name, &["true"], options)),
                sandbox_config: Some(config.clone()),
            }))
            .expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err}");
        assert!(
            err.message().contains(&format!("{sc}.userns_options")),
            "{name}: {err}"
        );
    }
    d.remove_all_pods();
}

/// The hardened handler takes `hostUsers: false` pods too: every hardened
/// pod has a user namespace already, from its pool (kubelet's ranges are
/// not coordinated with the pool's, so the pool's range is used).
#[test]
fn a_hardened_host_users_false_pod_gets_its_pools_range() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = pod_with(&d, "hardened-userns", good_options());
    let pod = d.run_pod_with_handler(&config, "hardened");
    let ctr = d.create_started_container(
        &pod,
        &config,
        container_with("sleeper", &["sleep", "1000"], good_options()),
    );
    let ctr_pid = d.container_pid(&ctr);
    let first = id_map(ctr_pid, "uid_map")[0].1;
    assert_ne!(first, HOST_ID, "the pool's range, not kubelet's");
    assert_eq!(proc_status_id(ctr_pid, "Uid"), first);
    assert_eq!(ns_inode(ctr_pid, "user"), ns_inode(d.pod_pid(&pod), "user"));
    assert_eq!(d.exec(&ctr, &["id", "-u"]).trim(), "0");
    d.remove_all_pods();
}
