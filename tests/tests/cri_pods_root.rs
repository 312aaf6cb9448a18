//! Pods through caissond as the kernel sees them: containers share the
//! pause container's UTS, IPC and network namespaces (never its mount
//! namespace), the pod's /etc files and /dev/shm; the PID namespace modes;
//! RunPodSandbox's idempotence; and that RemovePodSandbox leaves nothing
//! behind. Needs root.

use std::time::Duration;

use caisson_tests::daemon::{
    container_config, ns_inode, pid_alive, proc_status_field, wait_until, with_pid_mode, Caissond,
};
use k8s_cri::v1 as cri;

#[test]
fn containers_share_the_pods_namespaces_files_and_shm() {
    let d = Caissond::start("");
    d.import_busybox();
    let mut config = d.pod_config("web");
    config.hostname = "web-host".into();
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
        searches: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
        options: vec!["ndots:5".into(), "timeout:2".into()],
    });
    let pod = d.run_pod(&config);
    let a = d.create_started_container(&pod, &config, container_config("a", &["sleep", "1000"]));
    let b = d.create_started_container(&pod, &config, container_config("b", &["sleep", "1001"]));
    let pause = d.pod_pid(&pod);
    let (pa, pb) = (d.container_pid(&a), d.container_pid(&b));
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pause}/cmdline")).unwrap(),
        "/pause\0"
    );

    for ns in ["uts", "ipc", "net"] {
        let want = ns_inode(pause, ns);
        assert_eq!(ns_inode(pa, ns), want, "container a's {ns} namespace");
        assert_eq!(ns_inode(pb, ns), want, "container b's {ns} namespace");
        assert_ne!(
            want,
            ns_inode(std::process::id(), ns),
            "the pod's {ns} namespace is the host's"
        );
    }
    let mnt = [
        ns_inode(pause, "mnt"),
        ns_inode(pa, "mnt"),
        ns_inode(pb, "mnt"),
    ];
    assert_ne!(mnt[0], mnt[1], "a shares pause's mount namespace");
    assert_ne!(mnt[0], mnt[2], "b shares pause's mount namespace");
    assert_ne!(mnt[1], mnt[2], "a and b share a mount namespace");

    // The pod's hostname and the /etc files caissond wrote for it.
    let pod_dir = d.pods_dir().join(&pod);
    for c in [&a, &b] {
        assert_eq!(d.exec(c, &["hostname"]), "web-host\n");
        assert_eq!(d.exec(c, &["cat", "/etc/hostname"]), "web-host\n");
        assert_eq!(
            d.exec(c, &["cat", "/etc/hosts"]),
            std::fs::read_to_string(pod_dir.join("hosts")).unwrap()
        );
        assert_eq!(
            d.exec(c, &["cat", "/etc/resolv.conf"]),
            "nameserver 10.96.0.10\nnameserver 10.96.0.11\n\
             search default.svc.cluster.local cluster.local\n\
             options ndots:5 timeout:2\n"
        );
    }
    let hosts = std::fs::read_to_string(pod_dir.join("hosts")).unwrap();
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(hosts.contains("\tweb-host\n"), "{hosts}");

    // /dev/shm is the pod's tmpfs: what a writes, b reads (and the host sees).
    d.exec(&a, &["sh", "-c", "echo shared-by-a > /dev/shm/note"]);
    assert_eq!(d.exec(&b, &["cat", "/dev/shm/note"]), "shared-by-a\n");
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("shm/note")).unwrap(),
        "shared-by-a\n"
    );
    // A POSIX message queue made in a exists in b: one IPC namespace.
    d.exec(&a, &["touch", "/dev/mqueue/pod-queue"]);
    assert_eq!(d.exec(&b, &["ls", "/dev/mqueue"]), "pod-queue\n");

    d.stop_pod(&pod);
    d.remove_pod(&pod);
}

#[test]
fn pid_namespace_modes() {
    let d = Caissond::start("");
    d.import_busybox();
    let own_pid_ns = ns_inode(std::process::id(), "pid");

    // POD (CRI's default): the pause process is PID 1.
    let config = d.pod_config("pid-pod");
    let pod = d.run_pod(&config);
    let c = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    let (pause, pid) = (d.pod_pid(&pod), d.container_pid(&c));
    assert_eq!(d.exec(&c, &["cat", "/proc/1/cmdline"]), "/pause\0");
    assert_eq!(ns_inode(pid, "pid"), ns_inode(pause, "pid"));
    assert_ne!(ns_inode(pid, "pid"), own_pid_ns);
    let nspid = proc_status_field(pid, "NSpid").unwrap();
    assert_eq!(nspid.split_whitespace().count(), 2, "NSpid {nspid}");
    assert_ne!(nspid.split_whitespace().last(), Some("1"), "NSpid {nspid}");

    // CONTAINER: the container's own process is PID 1 in a namespace of its
    // own; a TARGET container joins that namespace.
    let mut config = d.pod_config("pid-ctr");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = d.run_pod(&config);
    let own = with_pid_mode(
        container_config("own", &["sleep", "1002"]),
        cri::NamespaceMode::Container,
    );
    let own = d.create_started_container(&pod, &config, own);
    let (pause, pid) = (d.pod_pid(&pod), d.container_pid(&own));
    assert_eq!(d.exec(&own, &["cat", "/proc/1/cmdline"]), "sleep\x001002\0");
    assert_ne!(ns_inode(pid, "pid"), ns_inode(pause, "pid"));
    let nspid = proc_status_field(pid, "NSpid").unwrap();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "NSpid {nspid}");
    let mut target = with_pid_mode(
        container_config("debug", &["sleep", "1003"]),
        cri::NamespaceMode::Target,
    );
    target
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .unwrap()
        .target_id = own.clone();
    let target = d.create_started_container(&pod, &config, target);
    assert_eq!(
        ns_inode(d.container_pid(&target), "pid"),
        ns_inode(pid, "pid")
    );
    assert_eq!(
        d.exec(&target, &["cat", "/proc/1/cmdline"]),
        "sleep\x001002\0"
    );

    // NODE: the host's PID namespace; caissond itself is visible inside.
    let mut config = d.pod_config("pid-node");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = d.run_pod(&config);
    let host = with_pid_mode(
        container_config("host", &["sleep", "1004"]),
        cri::NamespaceMode::Node,
    );
    let host = d.create_started_container(&pod, &config, host);
    let pid = d.container_pid(&host);
    assert_eq!(ns_inode(pid, "pid"), own_pid_ns);
    assert_eq!(ns_inode(d.pod_pid(&pod), "pid"), own_pid_ns);
    assert_eq!(
        proc_status_field(pid, "NSpid").unwrap(),
        pid.to_string(),
        "one PID namespace level"
    );
    let caissond = d.pid();
    assert_eq!(
        d.exec(
            &host,
            &[
                "sh",
                "-c",
                &format!("tr '\\0' ' ' < /proc/{caissond}/cmdline")
            ]
        )
        .split_whitespace()
        .next()
        .map(|p| p.ends_with("caissond")),
        Some(true)
    );
}

fn expect_code<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    what: &str,
) -> String {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            s.message().to_string()
        }
    }
}

#[test]
fn run_pod_sandbox_is_idempotent_per_name_uid_and_attempt() {
    let d = Caissond::start("");
    let config = d.pod_config("idem");
    let first = d.run_pod(&config);
    assert_eq!(d.run_pod(&config), first, "a retried RunPodSandbox");

    // Concurrent retries (kubelet timed out and retried) get the same pod too.
    let (mut r1, mut r2) = (d.runtime(), d.runtime());
    let req = cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    };
    let (x, y) = d.rt.block_on(async {
        tokio::join!(
            r1.run_pod_sandbox(req.clone()),
            r2.run_pod_sandbox(req.clone())
        )
    });
    assert_eq!(d.ok("RunPodSandbox", x).pod_sandbox_id, first);
    assert_eq!(d.ok("RunPodSandbox", y).pod_sandbox_id, first);
    let mut rt = d.runtime();
    let pods = d.ok(
        "ListPodSandbox",
        d.rt.block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())),
    );
    assert_eq!(pods.items.len(), 1, "{:?}", pods.items);
    assert_eq!(pod_dirs(&d), vec![first.clone()]);

    // A stopped pod is not handed out again: the same attempt is refused
    // (kubelet makes attempt+1), a new attempt is a new pod.
    d.stop_pod(&first);
    let msg = expect_code(
        d.rt.block_on(rt.run_pod_sandbox(req.clone())),
        tonic::Code::AlreadyExists,
        "RunPodSandbox of a stopped pod's name and attempt",
    );
    assert!(msg.contains("idem_default_uid-idem_0"), "{msg}");
    let mut next = config.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    let second = d.run_pod(&next);
    assert_ne!(second, first);
    assert_eq!(
        d.pod_status(&first).state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        d.pod_status(&second).state,
        cri::PodSandboxState::SandboxReady as i32
    );
    // Another uid (another pod of the same name) is another pod as well.
    let mut other = config.clone();
    other.metadata.as_mut().unwrap().uid = "uid-idem-2".into();
    let third = d.run_pod(&other);
    assert!(third != first && third != second);

    // Once removed, the first name and attempt can be used again.
    d.remove_pod(&first);
    let again = d.run_pod(&config);
    assert!(![&first, &second, &third].contains(&&again));
    assert_eq!(
        d.pod_status(&again).state,
        cri::PodSandboxState::SandboxReady as i32
    );
}

fn pod_dirs(d: &Caissond) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.pods_dir())
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A pod's life on the host, end to end: what it makes exists while it
/// runs, and every bit of it is gone after RemovePodSandbox.
#[test]
fn remove_pod_sandbox_leaves_nothing_behind() {
    let d = Caissond::start("");
    d.import_busybox();
    // A first pod's life creates what caissond and the shims keep for good
    // (their run dirs); the baseline is taken after it.
    let warmup = d.pod_config("warmup");
    let pod = d.run_pod(&warmup);
    d.create_started_container(&pod, &warmup, container_config("w", &["sleep", "1000"]));
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    let before = d.footprint();

    let config = d.pod_config("doomed");
    let pod = d.run_pod(&config);
    let runner =
        d.create_started_container(&pod, &config, container_config("r", &["sleep", "1000"]));
    let quitter = d.create_started_container(&pod, &config, container_config("q", &["true"]));
    let created = d.create_container(&pod, &config, container_config("never", &["sleep", "1"]));
    d.wait_exited(&quitter, Duration::from_secs(20));
    assert_eq!(d.exec(&runner, &["echo", "hi"]), "hi\n");
    let pause = d.pod_pid(&pod);
    let runner_pid = d.container_pid(&runner);
    let shims = d.shim_pids();
    assert_eq!(shims.len(), 1, "one shim per pod: {:?}", d.processes());
    // Detached, as containerd's shims are: caissond spawns it through an
    // intermediate that exits at once, so it is nobody's child but init's.
    let caissond = d.pid().to_string();
    for shim in &shims {
        assert_ne!(
            proc_status_field(*shim, "PPid").as_deref(),
            Some(caissond.as_str()),
            "the shim {shim} is caissond's child"
        );
    }

    // While the pod runs, everything we will check for is there.
    let during = d.footprint();
    let pod_dir = d.pods_dir().join(&pod);
    let records = [
        d.state_dir().join(format!("pods/{pod}.json")),
        d.state_dir().join(format!("containers/{runner}.json")),
        d.state_dir().join(format!("containers/{quitter}.json")),
        d.state_dir().join(format!("containers/{created}.json")),
    ];
    let cgroups: Vec<_> = ["memory", "pids", "cpu", "freezer"]
        .iter()
        .flat_map(|ctl| {
            [&pod, &runner]
                .map(|task| d.task_cgroup(ctl, "uid-doomed", task))
                .into_iter()
        })
        .collect();
    assert!(pod_dir.join("shm").is_dir() && pod_dir.join("hosts").is_file());
    // The built-in pause's rootfs is the node's one copy: a native pod's
    // pause runs on it directly (no mount of its own), read-only inside.
    let pause_rootfs = std::fs::read_dir(d.dir.path().join("run/pause-rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .expect("the shared pause rootfs");
    use std::os::unix::fs::MetadataExt;
    let pause_root = std::path::PathBuf::from(format!("/proc/{pause}/root"));
    assert_eq!(
        std::fs::metadata(pause_root.join("pause")).unwrap().ino(),
        std::fs::metadata(pause_rootfs.join("pause")).unwrap().ino(),
        "the pod's pause is not the shared one"
    );
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pod_dir.join("bundle/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        spec["root"]["path"].as_str(),
        Some(pause_rootfs.to_str().unwrap())
    );
    assert!(
        !pod_dir.join("bundle/rootfs").exists(),
        "a native pod binds no rootfs of its own"
    );
    assert_eq!(
        std::fs::write(pause_root.join("x"), b"").map_err(|e| e.raw_os_error()),
        Err(Some(libc::EROFS))
    );
    assert!(!pause_rootfs.join("x").exists());
    for p in records.iter().chain(&cgroups) {
        assert!(p.exists(), "{} missing while the pod runs", p.display());
    }
    assert!(pid_alive(pause) && pid_alive(runner_pid));
    let pod_dir_s = pod_dir.display().to_string();
    assert!(
        during.mounts.iter().any(|m| m.starts_with(&pod_dir_s)),
        "no mounts under {pod_dir_s}: {:?}",
        during.mounts
    );
    assert_ne!(during, before);

    d.stop_pod(&pod);
    assert!(!pid_alive(pause), "pause survived StopPodSandbox");
    assert!(
        !pid_alive(runner_pid),
        "the container survived StopPodSandbox"
    );
    d.remove_pod(&pod);

    for pid in shims.iter().chain([&pause, &runner_pid]) {
        wait_until(&format!("pid {pid} to go"), Duration::from_secs(10), || {
            (!pid_alive(*pid)).then_some(())
        });
    }
    assert!(!pod_dir.exists(), "{} still there", pod_dir.display());
    for p in records.iter().chain(&cgroups) {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    let after = d.footprint();
    assert!(
        after == before,
        "RemovePodSandbox left things behind:\n{}",
        after.diff(&before)
    );
    let mut rt = d.runtime();
    let left = d.ok(
        "ListContainers",
        d.rt.block_on(rt.list_containers(cri::ListContainersRequest::default())),
    );
    assert!(left.containers.is_empty(), "{:?}", left.containers);
    let zombies: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_status_field(*pid, "PPid").as_deref() == Some(caissond.as_str()))
        .filter(|pid| proc_status_field(*pid, "State").is_some_and(|s| s.starts_with('Z')))
        .collect();
    assert!(
        zombies.is_empty(),
        "caissond's unreaped children: {zombies:?}"
    );
    // Removing again is fine (kubelet retries).
    d.remove_pod(&pod);
}

/// Each pod's shim writes `run/shim/log/<hash>.log`; a shim that exits
/// cleanly removes it, so a node does not accumulate one file per pod.
#[test]
fn shim_log_is_removed_with_its_pod() {
    let d = Caissond::start("");
    let config = d.pod_config("logged");
    let pod = d.run_pod(&config);
    let shim_logs = || -> Vec<String> {
        std::fs::read_dir(d.dir.path().join("run/shim/log"))
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(shim_logs().len(), 1, "the running pod's shim log");
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    assert_eq!(
        shim_logs(),
        Vec::<String>::new(),
        "shim logs after RemovePodSandbox"
    );
}

/// RemovePodSandbox takes its containers with it: GetContainerEvents
/// reports each of them CONTAINER_DELETED (as containerd does), whether it
/// was still running or had stopped.
#[test]
fn remove_pod_sandbox_reports_its_containers_deleted() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("events");
    let pod = d.run_pod(&config);
    let running =
        d.create_started_container(&pod, &config, container_config("run", &["sleep", "1000"]));
    let stopped =
        d.create_started_container(&pod, &config, container_config("stop", &["sleep", "1001"]));
    d.stop_container(&stopped, 0);

    let mut rt = d.runtime();
    let mut events = d.ok(
        "GetContainerEvents",
        d.rt.block_on(rt.get_container_events(cri::GetEventsRequest {})),
    );
    // No StopPodSandbox first: `running` is still running.
    d.remove_pod(&pod);

    let deleted = cri::ContainerEventType::ContainerDeletedEvent as i32;
    let mut missing = vec![running.clone(), stopped.clone()];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !missing.is_empty() {
        let next = d.rt.block_on(async {
            let deadline = tokio::time::Instant::from_std(deadline);
            tokio::time::timeout_at(deadline, events.message()).await
        });
        let event = match next {
            Ok(Ok(Some(e))) => e,
            Ok(Ok(None)) => panic!("the event stream ended; still expecting {missing:?} DELETED"),
            Ok(Err(s)) => panic!("the event stream failed: {s}"),
            Err(_) => panic!(
                "no CONTAINER_DELETED_EVENT for {missing:?} after RemovePodSandbox\n{}",
                d.log_tail()
            ),
        };
        if event.container_event_type == deleted {
            missing.retain(|id| *id != event.container_id);
        }
    }
}
