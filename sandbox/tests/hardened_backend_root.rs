//! The hardened backend against the real kernel: needs root. Busybox
//! bundles in temp dirs (as in native_backend_root.rs); each test asserts what
//! the kernel shows: /proc/self/status (Seccomp, NoNewPrivs, CapEff) and the
//! errors denied syscalls return inside the container.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use caisson_sandbox::backend::hardened::policy::ADDED_CAPABILITIES_ANNOTATION;
use caisson_sandbox::backend::hardened::{HardenedBackend, HardenedOptions};
use caisson_sandbox::backend::{Backend, BackendError, ExecSpec, Stdio, TaskKind};
use caisson_sandbox::host::mountinfo::{self, MountEntry};
use caisson_tests::daemon::{id_map, proc_status_field, proc_status_id};
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, LinuxSeccompAction,
    LinuxSeccompBuilder, LinuxSyscallBuilder, MountBuilder, Spec,
};

mod support;

use support::{cgroup_of, file_uri, process, unique};

// ---------------------------------------------------------------- harness

type Harness = support::Harness<HardenedBackend>;

/// The tests' pools: clear of the default range (uids 1,000,000 onwards) a
/// real hardened handler on this host may use, since pools in different
/// directories must not overlap. Each call gets a range of its own, 64
/// pods wide from 400,000,000 on: the tests of this file run in parallel,
/// each with its own pool directory.
fn test_options() -> HardenedOptions {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    HardenedOptions {
        userns_first_id: 400_000_000 + n * 64 * 65_536,
        userns_pods: 64,
        ..HardenedOptions::default()
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with_options(&test_options())
    }

    fn with_options(options: &HardenedOptions) -> Harness {
        let h = Harness::start(
            "the hardened backend makes namespaces, cgroups, mounts and seccomp filters",
            |state, sink| {
                HardenedBackend::with_options(
                    state,
                    sink,
                    env!("CARGO_BIN_EXE_containerd-shim-caisson-v2").into(),
                    options,
                )
                .expect("starting the backend")
            },
        );
        // The pod's mapped root must be able to reach the bundles' rootfs.
        fs::set_permissions(h.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        h
    }

    /// Deletes an exited task and checks nothing of it is left.
    fn delete_and_check(&self, id: &str, pid: u32, cgroup: &str) {
        let state = self.backend.native().state_root().join(id);
        self.delete_and_check_state(id, pid, cgroup, Some(&state));
    }
}

/// Runs `script` in a hardened busybox container (after `adjust`), returns
/// its exit status and combined output.
fn run_script(
    h: &Harness,
    name: &str,
    script: &str,
    adjust: impl FnOnce(&mut Spec),
) -> (u32, String) {
    let bundle = h.bundle(name, &["sh", "-c", script], adjust);
    let out = h.path(&format!("{name}.out"));
    let id = unique(name);
    let stdio = Stdio {
        stdout: file_uri(&out),
        stderr: file_uri(&out),
        ..Stdio::default()
    };
    let pid = h.run(&id, &bundle, stdio);
    let exit = h.wait_exit(&id, None);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
    (exit.status, fs::read_to_string(&out).unwrap_or_default())
}

const PROBE: &str = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
    ls / >/dev/null && echo ls-ok; sleep 0.1 && echo sleep-ok; \
    ip link show lo >/dev/null && echo netlink-ok; \
    unshare -m true 2>&1; mount -t tmpfs none /tmp 2>&1; echo done";

#[test]
fn denied_syscalls_fail_with_eperm_and_ordinary_tools_work() {
    let h = Harness::new();
    let (status, out) = run_script(&h, "probe", PROBE, |_| {});
    assert_eq!(status, 0, "{out}");
    for want in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "ls-ok",
        "sleep-ok",
        "netlink-ok",
        "done",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    // unshare and mount are denied by the filter with EPERM, not a crash
    // (busybox words mount's EPERM as "permission denied").
    assert!(
        out.contains("unshare(0x20000): Operation not permitted"),
        "{out}"
    );
    assert!(out.contains("mount: permission denied"), "{out}");
}

#[test]
fn exec_processes_are_filtered_too() {
    let h = Harness::new();
    let bundle = h.bundle("sleeper", &["sleep", "1000"], |_| {});
    let id = unique("sleeper");
    let pid = h.run(&id, &bundle, Stdio::default());
    let out = h.path("exec.out");
    let mut p = process(&["sh", "-c", PROBE]);
    // The exec asks for everything; the policy leaves nothing.
    let all: std::collections::HashSet<Capability> = [
        Capability::SysAdmin,
        Capability::NetAdmin,
        Capability::Chown,
    ]
    .into();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(all.clone()));
    caps.set_effective(Some(all.clone()));
    caps.set_permitted(Some(all));
    p.set_capabilities(Some(caps));
    let exec = ExecSpec {
        container_id: id.clone(),
        exec_id: "e1".into(),
        process: p,
        stdio: Stdio {
            stdout: file_uri(&out),
            stderr: file_uri(&out),
            ..Stdio::default()
        },
    };
    h.backend.exec(&exec).unwrap();
    h.backend.start_exec(&id, "e1").unwrap();
    let exit = h.wait_exit(&id, Some("e1"));
    let out = fs::read_to_string(&out).unwrap();
    assert_eq!(exit.status, 0, "{out}");
    for want in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "ls-ok",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    h.backend.delete(&id, Some("e1")).unwrap();
    h.backend
        .kill(&id, None, libc::SIGKILL as u32, false)
        .unwrap();
    assert_eq!(h.wait_exit(&id, None).status, 137);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
}

#[test]
fn an_added_permitted_capability_is_kept() {
    let h = Harness::new();
    let (status, out) = run_script(&h, "netbind", "grep CapEff /proc/self/status", |spec| {
        spec.set_annotations(Some(
            [(
                ADDED_CAPABILITIES_ANNOTATION.to_string(),
                "NET_BIND_SERVICE,SYS_ADMIN".to_string(),
            )]
            .into(),
        ));
        let mut process = spec.process().clone().unwrap();
        let mut caps = process.capabilities().clone().unwrap();
        let mut set = caps.bounding().clone().unwrap_or_default();
        set.insert(Capability::NetBindService);
        set.insert(Capability::SysAdmin);
        caps.set_bounding(Some(set.clone()));
        caps.set_effective(Some(set.clone()));
        caps.set_permitted(Some(set));
        process.set_capabilities(Some(caps));
        spec.set_process(Some(process));
    });
    assert_eq!(status, 0, "{out}");
    // NET_BIND_SERVICE (bit 10) only: SYS_ADMIN is not permitted.
    assert!(out.contains("CapEff:\t0000000000000400"), "{out}");
}

#[test]
fn a_pod_profile_narrows_the_policy() {
    let h = Harness::new();
    let (status, out) = run_script(
        &h,
        "narrow",
        "mkdir /tmp/x 2>&1 || echo mkdir-denied; ls / >/dev/null && echo ls-ok",
        |spec| {
            let deny_mkdir = LinuxSyscallBuilder::default()
                .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .build()
                .unwrap();
            let profile = LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActAllow)
                .syscalls(vec![deny_mkdir])
                .build()
                .unwrap();
            let mut linux = spec.linux().clone().unwrap();
            linux.set_seccomp(Some(profile));
            spec.set_linux(Some(linux));
        },
    );
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains("mkdir-denied") && out.contains("Operation not permitted"),
        "{out}"
    );
    assert!(out.contains("ls-ok"), "{out}");
}

#[test]
fn privileged_containers_are_refused() {
    let h = Harness::new();
    let bundle = h.bundle("privileged", &["true"], |spec| {
        let mut process = spec.process().clone().unwrap();
        let mut caps = process.capabilities().clone().unwrap();
        caps.set_bounding(Some([Capability::SysAdmin].into()));
        process.set_capabilities(Some(caps));
        spec.set_process(Some(process));
        let mut linux = spec.linux().clone().unwrap();
        linux.set_masked_paths(None);
        spec.set_linux(Some(linux));
    });
    let err = h
        .try_create(
            &unique("privileged"),
            &bundle,
            TaskKind::Sandbox,
            Stdio::default(),
        )
        .unwrap_err();
    match err {
        BackendError::InvalidArgument { what, .. } => assert_eq!(what, "privileged"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn landlock_keeps_the_process_beneath_its_root() {
    let h = Harness::new();
    // stdout is a host file outside the rootfs: writing to the open fd works,
    // reopening it by path (/proc/self/fd/1) is outside the Landlock domain.
    let (status, out) = run_script(
        &h,
        "landlock",
        "echo via-fd; (echo via-path >> /proc/self/fd/1) 2>/dev/null || echo reopen-denied; \
         echo x > /dev/shm/inside && cat /dev/shm/inside",
        |_| {},
    );
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("via-fd"), "{out}");
    assert!(!out.contains("via-path"), "{out}");
    assert!(out.contains("reopen-denied"), "{out}");
    assert!(out.contains("x\n"), "{out}");
}

// ------------------------------------------------- per-pod user namespaces

/// The inode of /proc/<pid>/ns/<name> (`self` for this process).
fn ns_inode(pid: &str, name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/ns/{name}"))
        .unwrap()
        .ino()
}

/// Runs a host command to its end through the shim's reaper (a plain
/// `status()` would race with the reaper, which collects every child of
/// this process, and fail with ECHILD).
fn succeeds(cmd: &mut std::process::Command) -> bool {
    caisson_sandbox::host::reaper::Reaper::global()
        .expect("the reaper")
        .run(cmd)
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
        .status
        .success()
}

/// A network namespace made by `ip netns add` (as caissond or containerd
/// make a pod's), removed on drop.
struct HostNetns(String);

impl HostNetns {
    fn new() -> HostNetns {
        let name = unique("caisson-userns");
        let ok = succeeds(std::process::Command::new("ip").args(["netns", "add", &name]));
        assert!(ok, "ip netns add {name}");
        HostNetns(name)
    }

    fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for HostNetns {
    fn drop(&mut self) {
        succeeds(std::process::Command::new("ip").args(["netns", "del", &self.0]));
    }
}

fn namespace(typ: LinuxNamespaceType, path: Option<String>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.map(Into::into));
    ns
}

/// A pause-like sandbox joining `netns` by path, as the CRI layer makes it.
/// A container of the pod whose sandbox is `pause`: its own mount
/// namespace, the pause's network, UTS, IPC and PID namespaces by path.
fn join_pod_namespaces(spec: &mut Spec, pause: u32) {
    let ns_of = |name: &str| Some(format!("/proc/{pause}/ns/{name}"));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_namespaces(Some(vec![
        namespace(LinuxNamespaceType::Mount, None),
        namespace(LinuxNamespaceType::Network, ns_of("net")),
        namespace(LinuxNamespaceType::Uts, ns_of("uts")),
        namespace(LinuxNamespaceType::Ipc, ns_of("ipc")),
        namespace(LinuxNamespaceType::Pid, ns_of("pid")),
    ]));
    spec.set_linux(Some(linux));
}

fn sandbox_bundle(h: &Harness, name: &str, netns: &HostNetns) -> std::path::PathBuf {
    let netns = netns.path().display().to_string();
    h.bundle(name, &["sleep", "1000"], |spec| {
        let mut linux = spec.linux().clone().unwrap();
        linux.set_namespaces(Some(vec![
            namespace(LinuxNamespaceType::Mount, None),
            namespace(LinuxNamespaceType::Network, Some(netns)),
            namespace(LinuxNamespaceType::Uts, None),
            namespace(LinuxNamespaceType::Ipc, None),
            namespace(LinuxNamespaceType::Pid, None),
        ]));
        // As caissond asks for every pod (containerd's defaults too); the
        // pod's own user namespace does not own its network namespace, so
        // the fork server writes them from the host's.
        linux.set_sysctl(Some(
            [
                ("net.ipv4.ping_group_range", "0 2147483647"),
                ("net.ipv4.ip_unprivileged_port_start", "0"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        ));
        spec.set_linux(Some(linux));
    })
}

/// Runs `args` as an exec in task `id`; returns its exit status and output.
fn exec_in(h: &Harness, id: &str, exec_id: &str, args: &[&str]) -> (u32, String) {
    let out = h.path(&format!("{id}-{exec_id}.out"));
    let exec = ExecSpec {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        process: process(args),
        stdio: Stdio {
            stdout: file_uri(&out),
            stderr: file_uri(&out),
            ..Stdio::default()
        },
    };
    h.backend.exec(&exec).unwrap();
    h.backend.start_exec(id, exec_id).unwrap();
    let exit = h.wait_exit(id, Some(exec_id));
    h.backend.delete(id, Some(exec_id)).unwrap();
    (exit.status, fs::read_to_string(&out).unwrap_or_default())
}

fn kill_and_delete(h: &Harness, id: &str, pid: u32, bundle: &std::path::Path) {
    h.backend
        .kill(id, None, libc::SIGKILL as u32, false)
        .unwrap();
    h.wait_exit(id, None);
    h.delete_and_check(id, pid, &cgroup_of(bundle));
}

fn idmapped_mounts_under(dir: &std::path::Path) -> Vec<MountEntry> {
    mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|m| {
            m.mount_point.starts_with(dir) && m.mount_options.split(',').any(|o| o == "idmapped")
        })
        .collect()
}

fn slots(h: &Harness) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(h.backend.userns_pool_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("slot-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn pod_root_is_an_unprivileged_host_range_shared_by_the_pods_containers() {
    let h = Harness::new();
    let netns = HostNetns::new();
    let pod = unique("pod");
    let sandbox = sandbox_bundle(&h, "pause", &netns);
    let pause = h.run(&pod, &sandbox, Stdio::default());
    let (first, count) = h.backend.pod_id_range(&pod).expect("the pod has a range");
    assert!(first >= 400_000_000 && count == 65_536, "{first} {count}");
    // The pod's network sysctls, in its network namespace only.
    let sysctl_in = |netns: &str, key: &str| {
        let out = caisson_sandbox::host::reaper::Reaper::global()
            .expect("the reaper")
            .run(std::process::Command::new("nsenter").args([
                &format!("--net={netns}"),
                "cat",
                &format!("/proc/sys/net/ipv4/{key}"),
            ]))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let pod_netns = netns.path().display().to_string();
    assert_eq!(sysctl_in(&pod_netns, "ping_group_range"), "0\t2147483647");
    assert_eq!(sysctl_in(&pod_netns, "ip_unprivileged_port_start"), "0");
    assert_ne!(
        sysctl_in("/proc/self/ns/net", "ip_unprivileged_port_start"),
        "0",
        "the host's own"
    );

    // From the host: the pause process runs as the pod's first id, in a
    // user namespace mapping root to the range, in the pod's netns.
    assert_eq!(proc_status_id(pause, "Uid"), first);
    assert_eq!(proc_status_id(pause, "Gid"), first);
    assert_eq!(id_map(pause, "uid_map"), vec![(0, first, count)]);
    assert_eq!(id_map(pause, "gid_map"), vec![(0, first, count)]);
    let host_userns = ns_inode("self", "user");
    let pod_userns = ns_inode(&pause.to_string(), "user");
    assert_ne!(pod_userns, host_userns);
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            ns_inode(&pause.to_string(), "net"),
            fs::metadata(netns.path()).unwrap().ino(),
            "the sandbox is in the pod's network namespace"
        );
    }

    // A container of the pod joins its namespaces by path and writes to a
    // hostPath volume (a world-writable host dir, not idmapped).
    let volume = tempfile::tempdir().unwrap();
    fs::set_permissions(volume.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let volume_path = volume.path().to_path_buf();
    let script = "id -u; id -g; stat -c 'busybox-owner=%u' /bin/busybox; \
        echo made > /made-inside && stat -c 'made-owner=%u' /made-inside; \
        touch /data/from-pod && echo volume-ok; ls /sys/class/net >/dev/null && echo sys-ok; \
        sleep 1000";
    let ctr_bundle = h.bundle("ctr", &["sh", "-c", script], |spec| {
        join_pod_namespaces(spec, pause);
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/data")
                .typ("bind")
                .source(volume_path.clone())
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        let mut root = spec.root().clone().unwrap();
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
    });
    let ctr = unique("ctr");
    let out = h.path("ctr.out");
    let ctr_pid = h.create(
        &ctr,
        &ctr_bundle,
        TaskKind::Container {
            sandbox_id: pod.clone(),
        },
        Stdio {
            stdout: file_uri(&out),
            stderr: file_uri(&out),
            ..Stdio::default()
        },
    );
    // The create waited until the pause had exec'd: until then the kernel
    // refuses its namespaces to the pod's other processes (EACCES).
    {
        use std::os::unix::fs::MetadataExt;
        let exe = fs::metadata(format!("/proc/{pause}/exe")).unwrap();
        let shim = fs::metadata(env!("CARGO_BIN_EXE_containerd-shim-caisson-v2")).unwrap();
        assert_ne!(
            (exe.dev(), exe.ino()),
            (shim.dev(), shim.ino()),
            "a container of the pod was created before the sandbox's init exec'd its program"
        );
    }
    // Through the reaper: a plain `output()` races with it (ECHILD).
    let opened = caisson_sandbox::host::reaper::Reaper::global()
        .expect("the reaper")
        .run(
            std::process::Command::new("nsenter")
                .arg(format!("--user=/proc/{pause}/ns/user"))
                .args(["--setuid=0", "--setgid=0", "--", "sh", "-c"])
                .arg(format!("exec 3< /proc/{pause}/ns/uts && echo opened")),
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&opened.stdout),
        "opened\n",
        "the pod's root opening the pause's uts namespace: {}",
        String::from_utf8_lossy(&opened.stderr)
    );

    h.backend.start(&ctr).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = fs::read_to_string(&out).unwrap_or_default();
        if text.contains("sys-ok") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Inside: root, image files root's, the rootfs writable.
    for want in [
        "0\n0\n",
        "busybox-owner=0",
        "made-owner=0",
        "volume-ok",
        "sys-ok",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    // From the host: the container's process has the mapped ids, the
    // pod's user namespace, and its hostPath file is owned by the mapped uid.
    assert_eq!(proc_status_id(ctr_pid, "Uid"), first);
    assert_eq!(ns_inode(&ctr_pid.to_string(), "user"), pod_userns);
    assert_eq!(
        ns_inode(&ctr_pid.to_string(), "net"),
        ns_inode(&pause.to_string(), "net")
    );
    {
        use std::os::unix::fs::MetadataExt;
        let made = fs::metadata(volume.path().join("from-pod")).unwrap();
        assert_eq!((made.uid(), made.gid()), (first, first));
        // Through the idmapped rootfs the host sees the pod's file as the
        // pod's root.
        let inside = fs::metadata(ctr_bundle.join("rootfs/made-inside")).unwrap();
        assert_eq!(inside.uid(), first);
    }
    assert_eq!(idmapped_mounts_under(h.dir.path()).len(), 2);

    // An exec joins the same user and network namespaces.
    let (status, text) = exec_in(
        &h,
        &ctr,
        "e1",
        &[
            "sh",
            "-c",
            "id -u; readlink /proc/self/ns/user; readlink /proc/self/ns/net",
        ],
    );
    assert_eq!(status, 0, "{text}");
    assert!(text.starts_with("0\n"), "{text}");
    assert!(text.contains(&format!("user:[{pod_userns}]")), "{text}");
    assert!(
        text.contains(&format!("net:[{}]", ns_inode(&pause.to_string(), "net"))),
        "{text}"
    );

    kill_and_delete(&h, &ctr, ctr_pid, &ctr_bundle);
    assert_eq!(
        slots(&h).len(),
        1,
        "the range is held while the sandbox lives"
    );
    kill_and_delete(&h, &pod, pause, &sandbox);
    assert!(slots(&h).is_empty(), "the range is freed with the sandbox");
    assert!(idmapped_mounts_under(h.dir.path()).is_empty());
    {
        use std::os::unix::fs::MetadataExt;
        // On disk (the idmapped mount gone) the pod's file is root's: the
        // layer is shared, not chowned.
        let on_disk = fs::metadata(ctr_bundle.join("rootfs/made-inside")).unwrap();
        assert_eq!(on_disk.uid(), 0);
    }
}

/// Start returns before the init exec'd; a container created meanwhile
/// waits for the pause's exec, or its init could not open the pause's
/// namespaces (EACCES). The pause is held stopped before its exec, so the
/// container's create comes first every time.
#[test]
fn a_container_created_before_the_pause_has_execd_waits_for_it() {
    let h = Harness::new();
    let netns = HostNetns::new();
    let pod = unique("pod");
    let sandbox = sandbox_bundle(&h, "pause", &netns);
    let pause = h.create(&pod, &sandbox, TaskKind::Sandbox, Stdio::default());
    let shim_exe = fs::read_link(format!("/proc/{pause}/exe")).unwrap();
    // SAFETY: a signal to our own task's init.
    assert_eq!(unsafe { libc::kill(pause as i32, libc::SIGSTOP) }, 0);
    assert_eq!(h.backend.start(&pod).unwrap(), pause);
    assert_eq!(
        fs::read_link(format!("/proc/{pause}/exe")).unwrap(),
        shim_exe,
        "stopped, it has not exec'd"
    );
    let held = std::time::Duration::from_millis(300);
    let resume = std::thread::spawn(move || {
        std::thread::sleep(held);
        // SAFETY: as above.
        unsafe { libc::kill(pause as i32, libc::SIGCONT) };
    });
    let ctr_bundle = h.bundle("ctr", &["sleep", "1000"], |spec| {
        join_pod_namespaces(spec, pause);
    });
    let ctr = unique("ctr");
    let began = std::time::Instant::now();
    let ctr_pid = h.create(
        &ctr,
        &ctr_bundle,
        TaskKind::Container {
            sandbox_id: pod.clone(),
        },
        Stdio::default(),
    );
    let took = began.elapsed();
    resume.join().unwrap();
    assert!(took >= held / 2, "the create did not wait: {took:?}");
    assert_ne!(
        fs::read_link(format!("/proc/{pause}/exe")).unwrap(),
        shim_exe
    );
    assert_eq!(
        ns_inode(&ctr_pid.to_string(), "uts"),
        ns_inode(&pause.to_string(), "uts")
    );
    kill_and_delete(&h, &ctr, ctr_pid, &ctr_bundle);
    kill_and_delete(&h, &pod, pause, &sandbox);
}

#[test]
fn pods_get_disjoint_ranges_freed_on_delete_and_never_shared() {
    let h = Harness::with_options(&HardenedOptions {
        userns_pods: 2,
        userns_first_id: 310_000_000,
        ..HardenedOptions::default()
    });
    let start = |name: &str| {
        let bundle = h.bundle(name, &["sleep", "1000"], |_| {});
        let id = unique(name);
        let pid = h.run(&id, &bundle, Stdio::default());
        (id, pid, bundle)
    };
    let (a, a_pid, a_bundle) = start("a");
    let (b, b_pid, b_bundle) = start("b");
    let range_a = h.backend.pod_id_range(&a).unwrap();
    let range_b = h.backend.pod_id_range(&b).unwrap();
    assert_eq!(proc_status_id(a_pid, "Uid"), range_a.0);
    assert_eq!(proc_status_id(b_pid, "Uid"), range_b.0);
    assert!(
        range_a.0 + range_a.1 <= range_b.0 || range_b.0 + range_b.1 <= range_a.0,
        "{range_a:?} and {range_b:?} overlap"
    );
    assert_ne!(
        ns_inode(&a_pid.to_string(), "user"),
        ns_inode(&b_pid.to_string(), "user")
    );
    assert_eq!(slots(&h).len(), 2);

    // The pool is exhausted: a third pod fails clearly, leaving nothing.
    let c_bundle = h.bundle("c", &["sleep", "1000"], |_| {});
    let c = unique("c");
    let err = h
        .try_create(&c, &c_bundle, TaskKind::Sandbox, Stdio::default())
        .unwrap_err();
    assert!(err.to_string().contains("exhausted"), "{err}");
    assert_eq!(slots(&h).len(), 2);
    assert!(!h.backend.native().state_root().join(&c).exists());
    assert_eq!(idmapped_mounts_under(h.dir.path()).len(), 2);

    // Once a is removed its range is free again; b's stays b's.
    kill_and_delete(&h, &a, a_pid, &a_bundle);
    assert_eq!(slots(&h).len(), 1);
    let c_pid = h.create(&c, &c_bundle, TaskKind::Sandbox, Stdio::default());
    h.backend.start(&c).unwrap();
    let range_c = h.backend.pod_id_range(&c).unwrap();
    assert_eq!(range_c, range_a, "a's range is reused only after a is gone");
    assert_eq!(proc_status_id(c_pid, "Uid"), range_c.0);
    assert_eq!(h.backend.pod_id_range(&b), Some(range_b));
    kill_and_delete(&h, &b, b_pid, &b_bundle);
    kill_and_delete(&h, &c, c_pid, &c_bundle);
    assert!(slots(&h).is_empty());
    assert!(idmapped_mounts_under(h.dir.path()).is_empty());
}

/// Unmounts an overlay the test mounted (and whatever is stacked on it),
/// even when the test fails.
struct OverlayGuard(std::path::PathBuf);

impl Drop for OverlayGuard {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}

/// A bundle whose rootfs is an overlay (what caissond and containerd
/// mount): busybox as the lower layer, an empty upper. Returns the bundle,
/// the guard unmounting it, the upper and the lower dir.
fn overlay_bundle(
    h: &Harness,
    name: &str,
) -> (
    std::path::PathBuf,
    OverlayGuard,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let bundle = h.bundle(name, &["sh", "-c", "sleep 1000"], |spec| {
        let mut root = spec.root().clone().unwrap();
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
    });
    let rootfs = bundle.join("rootfs");
    let lower = h.path(&format!("{name}-lower"));
    fs::rename(&rootfs, &lower).unwrap();
    let snap = h.path(&format!("{name}-snap"));
    let (upper, work) = (snap.join("fs"), snap.join("work"));
    for dir in [&rootfs, &upper, &work] {
        fs::create_dir_all(dir).unwrap();
    }
    fs::set_permissions(&snap, fs::Permissions::from_mode(0o700)).unwrap();
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(
            format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            )
            .as_str(),
        ),
    )
    .unwrap();
    (bundle, OverlayGuard(rootfs), upper, lower)
}

#[test]
fn an_overlay_rootfs_is_idmapped_through_its_layers() {
    let h = Harness::new();
    let (bundle, _overlay, upper, lower) = overlay_bundle(&h, "overlay");
    let id = unique("overlay");
    // One left world-readable (by older code) is repaired.
    let layers = h.backend.native().state_root().join(".idmap-layers");
    fs::create_dir_all(&layers).unwrap();
    fs::set_permissions(&layers, fs::Permissions::from_mode(0o755)).unwrap();
    let pid = h.run(&id, &bundle, Stdio::default());
    let (first, _) = h.backend.pod_id_range(&id).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        // Through the idmapped layers busybox is owned by the pod's root:
        // only host root may reach them.
        for dir in [layers.clone(), layers.join(&id)] {
            let meta = fs::symlink_metadata(&dir).unwrap();
            assert!(meta.is_dir(), "{}", dir.display());
            assert_eq!(
                (meta.mode() & 0o7777, meta.uid()),
                (0o700, 0),
                "{}",
                dir.display()
            );
        }
        let busybox = layers.join(&id).join("l0/bin/busybox");
        assert_eq!(fs::metadata(&busybox).unwrap().uid(), first);
        let stat_as = |uid: u32| {
            succeeds(
                std::process::Command::new("stat")
                    .arg(&busybox)
                    .uid(uid)
                    .gid(uid)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null()),
            )
        };
        assert!(stat_as(0), "host root reaches the layers");
        assert!(
            !stat_as(12_345),
            "an unrelated host user reaches the layers"
        );
        let opts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let l0 = layers.join(&id).join("l0");
        let line = opts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(l0.to_str().unwrap()))
            .unwrap_or_else(|| panic!("{} not mounted", l0.display()));
        let flags = line.split(' ').nth(5).unwrap();
        assert!(
            flags.split(',').any(|f| f == "nosuid") && flags.split(',').any(|f| f == "nodev"),
            "{line}"
        );
    }
    let (status, out) = exec_in(
        &h,
        &id,
        "e1",
        &[
            "sh",
            "-c",
            "id -u; stat -c 'busybox-owner=%u' /bin/busybox; \
             echo x > /new && stat -c 'new-owner=%u' /new",
        ],
    );
    assert_eq!(status, 0, "{out}");
    for want in ["0\n", "busybox-owner=0", "new-owner=0"] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    assert_eq!(proc_status_id(pid, "Uid"), first);
    {
        use std::os::unix::fs::MetadataExt;
        // The new file is in the upper dir as the pod's mapped uid; the
        // lower layer is untouched (idmapped, not chowned).
        assert_eq!(fs::metadata(upper.join("new")).unwrap().uid(), first);
        assert_eq!(fs::metadata(lower.join("bin/busybox")).unwrap().uid(), 0);
    }
    kill_and_delete(&h, &id, pid, &bundle);
    assert!(
        idmapped_mounts_under(h.dir.path()).is_empty(),
        "idmapped layer mounts left"
    );
}

#[test]
fn a_rootfs_that_cannot_be_idmapped_is_refused_clearly_leaving_nothing() {
    let h = Harness::new();
    // ramfs has no idmapped mounts (as an old kernel would have none).
    let bundle = h.bundle("ramfs", &["true"], |_| {});
    let rootfs = bundle.join("rootfs");
    nix::mount::mount(
        Some("none"),
        &rootfs,
        Some("ramfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _ramfs = OverlayGuard(rootfs.clone());
    let id = unique("ramfs");
    let err = h
        .try_create(&id, &bundle, TaskKind::Sandbox, Stdio::default())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cannot idmap the rootfs") && text.contains("native handler"),
        "{text}"
    );
    assert!(slots(&h).is_empty(), "the range is given back");
    assert!(h.backend.pod_id_range(&id).is_none());
    assert!(!h.backend.native().state_root().join(&id).exists());
    assert!(idmapped_mounts_under(h.dir.path()).is_empty());
}

/// A rootfs outside its bundle would hold the pod's idmapped files where
/// any host user can reach them; a bundle not root's is not taken over.
#[test]
fn a_rootfs_outside_the_bundle_and_a_foreign_bundle_are_refused() {
    use std::os::unix::fs::MetadataExt;
    let h = Harness::new();
    let outside = h.bundle("outside", &["true"], |_| {});
    let bundle = h.bundle("elsewhere", &["true"], |spec| {
        let mut root = spec.root().clone().unwrap();
        root.set_path(outside.join("rootfs"));
        spec.set_root(Some(root));
    });
    let id = unique("elsewhere");
    let err = h
        .try_create(&id, &bundle, TaskKind::Sandbox, Stdio::default())
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::InvalidArgument { what, .. } if what == "root.path"),
        "{err:?}"
    );
    assert!(err.to_string().contains("not inside the bundle"), "{err}");
    assert!(slots(&h).is_empty(), "the range is given back");
    assert!(!h.backend.native().state_root().join(&id).exists());
    assert!(idmapped_mounts_under(h.dir.path()).is_empty());
    // `..` out of the bundle is the same.
    let dotdot = h.bundle("dotdot", &["true"], |spec| {
        let mut root = spec.root().clone().unwrap();
        root.set_path("../outside/rootfs".into());
        spec.set_root(Some(root));
    });
    let err = h
        .try_create(
            &unique("dotdot"),
            &dotdot,
            TaskKind::Sandbox,
            Stdio::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("root.path"), "{err}");

    let foreign = h.bundle("foreign", &["true"], |_| {});
    std::os::unix::fs::chown(&foreign, Some(1234), None).unwrap();
    let mode = fs::metadata(&foreign).unwrap().mode();
    let err = h
        .try_create(
            &unique("foreign"),
            &foreign,
            TaskKind::Sandbox,
            Stdio::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("must be root's"), "{err}");
    let meta = fs::metadata(&foreign).unwrap();
    assert_eq!((meta.uid(), meta.mode()), (1234, mode), "left as it was");
    assert!(slots(&h).is_empty());
}

/// `CapEff` of `/proc/<pid>/status`, read from the host.
fn cap_eff(pid: u32) -> u64 {
    u64::from_str_radix(&proc_status_field(pid, "CapEff").unwrap(), 16).unwrap()
}

#[test]
fn an_exec_runs_in_the_pods_user_namespace_without_capabilities_seen_from_the_host() {
    let h = Harness::new();
    let netns = HostNetns::new();
    let pod = unique("pod");
    let sandbox = sandbox_bundle(&h, "pause", &netns);
    let pause = h.run(&pod, &sandbox, Stdio::default());
    let (first, count) = h.backend.pod_id_range(&pod).unwrap();
    let exec = ExecSpec {
        container_id: pod.clone(),
        exec_id: "long".into(),
        process: process(&["sleep", "1000"]),
        stdio: Stdio::default(),
    };
    h.backend.exec(&exec).unwrap();
    let pid = h.backend.start_exec(&pod, "long").unwrap();
    // All read from the host's /proc, which the pod cannot touch.
    assert_eq!(id_map(pid, "uid_map"), vec![(0, first, count)]);
    assert_eq!(id_map(pid, "gid_map"), vec![(0, first, count)]);
    assert_eq!(
        ns_inode(&pid.to_string(), "user"),
        ns_inode(&pause.to_string(), "user")
    );
    assert_eq!(proc_status_id(pid, "Uid"), first);
    assert_eq!(proc_status_id(pid, "Gid"), first);
    assert_eq!(
        cap_eff(pid),
        0,
        "no capability, not even the CAP_SYS_ADMIN it joined with"
    );
    h.backend
        .kill(&pod, Some("long"), libc::SIGKILL as u32, false)
        .unwrap();
    h.wait_exit(&pod, Some("long"));
    h.backend.delete(&pod, Some("long")).unwrap();
    kill_and_delete(&h, &pod, pause, &sandbox);
}

#[test]
fn a_volume_over_proc_is_refused() {
    let h = Harness::new();
    let netns = HostNetns::new();
    let fake = tempfile::tempdir().unwrap();
    fs::set_permissions(fake.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(fake.path().join("self")).unwrap();
    fs::write(fake.path().join("self/uid_map"), "0 0 4294967295\n").unwrap();
    for (name, dest, typ) in [
        ("tmpfs", "/proc", "tmpfs"),
        ("bind", "/proc", "bind"),
        ("under", "/proc/self", "bind"),
    ] {
        let bundle = h.bundle(name, &["sleep", "1000"], |spec| {
            let mut linux = spec.linux().clone().unwrap();
            linux.set_namespaces(Some(vec![
                namespace(LinuxNamespaceType::Mount, None),
                namespace(
                    LinuxNamespaceType::Network,
                    Some(netns.path().display().to_string()),
                ),
                namespace(LinuxNamespaceType::Uts, None),
                namespace(LinuxNamespaceType::Ipc, None),
                namespace(LinuxNamespaceType::Pid, None),
            ]));
            spec.set_linux(Some(linux));
            // As the CRI layer puts a requested volume: in place of the
            // default mount at the same destination.
            let mut mounts: Vec<_> = spec
                .mounts()
                .clone()
                .unwrap()
                .into_iter()
                .filter(|m| m.destination() != std::path::Path::new(dest))
                .collect();
            let source = if typ == "bind" {
                fake.path().to_path_buf()
            } else {
                "tmpfs".into()
            };
            mounts.push(
                MountBuilder::default()
                    .destination(dest)
                    .typ(typ)
                    .source(source)
                    .options(vec!["rbind".to_string()])
                    .build()
                    .unwrap(),
            );
            spec.set_mounts(Some(mounts));
        });
        let id = unique(name);
        let err = h
            .try_create(&id, &bundle, TaskKind::Sandbox, Stdio::default())
            .unwrap_err();
        match &err {
            BackendError::InvalidArgument { what, reason } => {
                assert_eq!(what, &format!("mount {dest}"), "{err}");
                assert!(reason.contains("/proc"), "{reason}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(slots(&h).is_empty(), "{name}: the range is given back");
        assert!(!h.backend.native().state_root().join(&id).exists());
    }
    assert!(idmapped_mounts_under(h.dir.path()).is_empty());
}

#[test]
fn a_forged_fork_netns_annotation_is_ignored() {
    use std::os::unix::fs::MetadataExt;
    let h = Harness::new();
    let forged = HostNetns::new();
    let bundle = h.bundle("forged", &["sleep", "1000"], |spec| {
        let mut linux = spec.linux().clone().unwrap();
        linux.set_namespaces(Some(vec![
            namespace(LinuxNamespaceType::Mount, None),
            // A new one, not joined by path: nothing for the server to enter.
            namespace(LinuxNamespaceType::Network, None),
            namespace(LinuxNamespaceType::Uts, None),
            namespace(LinuxNamespaceType::Ipc, None),
            namespace(LinuxNamespaceType::Pid, None),
        ]));
        spec.set_linux(Some(linux));
        spec.set_annotations(Some(
            [(
                "io.caisson.fork-netns".to_string(),
                forged.path().display().to_string(),
            )]
            .into(),
        ));
    });
    let id = unique("forged");
    let pid = h.run(&id, &bundle, Stdio::default());
    let forged_ino = fs::metadata(forged.path()).unwrap().ino();
    assert_ne!(ns_inode(&pid.to_string(), "net"), forged_ino);
    assert_ne!(ns_inode(&pid.to_string(), "net"), ns_inode("self", "net"));
    let config = fs::read_to_string(bundle.join("config.json")).unwrap();
    assert!(!config.contains("io.caisson.fork-netns"), "{config}");
    kill_and_delete(&h, &id, pid, &bundle);
}

#[test]
fn only_root_and_the_pod_can_enter_a_hardened_bundle() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let h = Harness::new();
    let netns = HostNetns::new();
    let pod = unique("pod");
    let bundle = sandbox_bundle(&h, "pause", &netns);
    let pid = h.run(&pod, &bundle, Stdio::default());
    let (first, _) = h.backend.pod_id_range(&pod).unwrap();
    let meta = fs::metadata(&bundle).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o710, first));
    // Another host user reaches neither the rootfs nor its setuid-able
    // files; the pod's root group can traverse.
    let busybox = bundle.join("rootfs/bin/busybox");
    let stat_as = |uid: u32, gid: u32| {
        succeeds(
            std::process::Command::new("stat")
                .arg(&busybox)
                .uid(uid)
                .gid(gid)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
    };
    assert!(!stat_as(12_345, 12_345), "an unrelated host user");
    assert!(stat_as(first, first), "the pod's root");
    kill_and_delete(&h, &pod, pid, &bundle);
}

#[test]
fn every_mount_under_sys_is_read_only_inside() {
    let h = Harness::new();
    let netns = HostNetns::new();
    let pod = unique("pod");
    let sandbox = sandbox_bundle(&h, "pause", &netns);
    let pause = h.run(&pod, &sandbox, Stdio::default());
    let script = "awk '$5 ~ /^\\/sys/ {print $5, $6}' /proc/self/mountinfo; \
        mkdir /sys/fs/cgroup/memory/escape 2>/dev/null && echo mkdir-ok; \
        touch /sys/kernel/x 2>/dev/null && echo touch-ok; echo done";
    let bundle = h.bundle("sys", &["sh", "-c", script], |spec| {
        join_pod_namespaces(spec, pause);
    });
    let id = unique("sys");
    let out = h.path("sys.out");
    let stdio = Stdio {
        stdout: file_uri(&out),
        stderr: file_uri(&out),
        ..Stdio::default()
    };
    let pid = h.create(
        &id,
        &bundle,
        TaskKind::Container {
            sandbox_id: pod.clone(),
        },
        stdio,
    );
    h.backend.start(&id).unwrap();
    let exit = h.wait_exit(&id, None);
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
    let text = fs::read_to_string(&out).unwrap();
    assert_eq!(exit.status, 0, "{text}");
    let mounts: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(m, _)| m.starts_with("/sys"))
        .collect();
    assert!(
        mounts.iter().any(|(m, _)| m.starts_with("/sys/fs/cgroup/")),
        "the host's cgroup submounts come along: {text}"
    );
    // The host's sysfs and its submounts, as the /sys bind brings them (the
    // first time each mount point shows; libcontainer stacks the
    // container's own cgroup v1 hierarchies on top afterwards).
    let mut seen = std::collections::HashSet::new();
    for (mount, options) in &mounts {
        if !seen.insert(*mount) {
            continue;
        }
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{mount} is not read-only ({options}):\n{text}"
        );
    }
    assert!(
        !text.contains("mkdir-ok") && !text.contains("touch-ok"),
        "{text}"
    );
    kill_and_delete(&h, &pod, pause, &sandbox);
}

/// Two containerd namespaces (two state roots) share the pool, and may
/// reuse a task id: each task's idmapped layers are its own namespace's.
#[test]
fn the_same_task_id_in_two_namespaces_keeps_its_own_layer_mounts() {
    let pool = tempfile::tempdir().unwrap();
    let options = HardenedOptions {
        userns_pool_dir: Some(pool.path().join("pool")),
        ..test_options()
    };
    let (a, b) = (
        Harness::with_options(&options),
        Harness::with_options(&options),
    );
    let id = unique("same");
    let (bundle_a, _overlay_a, ..) = overlay_bundle(&a, "overlay");
    let (bundle_b, _overlay_b, ..) = overlay_bundle(&b, "overlay");
    let pid_a = a.run(&id, &bundle_a, Stdio::default());
    let pid_b = b.run(&id, &bundle_b, Stdio::default());
    let layers_of = |h: &Harness| idmapped_mounts_under(h.backend.native().state_root()).len();
    let (before_a, before_b) = (layers_of(&a), layers_of(&b));
    assert!(before_a > 0 && before_b > 0, "{before_a} {before_b}");
    // What `shim delete` does after namespace a's shim died.
    HardenedBackend::force_cleanup(a.backend.native().state_root(), &id, &options);
    assert_eq!(layers_of(&b), before_b, "b's layers untouched");
    let (status, out) = exec_in(&b, &id, "e1", &["ls", "/bin/busybox"]);
    assert_eq!(status, 0, "{out}");
    kill_and_delete(&a, &id, pid_a, &bundle_a);
    kill_and_delete(&b, &id, pid_b, &bundle_b);
    assert!(idmapped_mounts_under(a.dir.path()).is_empty());
    assert!(idmapped_mounts_under(b.dir.path()).is_empty());
}

/// Layer mounts an older shim left under `<pool>/layers/<id>` are removed
/// by `shim delete`, unless an overlay still stacks them.
#[test]
fn force_cleanup_removes_layer_mounts_left_in_the_old_pool_location() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let options = HardenedOptions {
        userns_pool_dir: Some(pool.clone()),
        ..test_options()
    };
    let tmpfs_at = |path: &std::path::Path| {
        fs::create_dir_all(path).unwrap();
        nix::mount::mount(
            Some("none"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        OverlayGuard(path.to_path_buf())
    };
    let mounted = |path: &std::path::Path| {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
    };
    // Left by a dead shim: removed.
    let stale = pool.join("layers/dead/l0");
    let _stale = tmpfs_at(&stale);
    HardenedBackend::force_cleanup(&state, "dead", &options);
    assert!(!mounted(&stale), "the stale layer mount is gone");
    assert!(!pool.join("layers/dead").exists());

    // Still the lower layer of a mounted overlay: kept.
    let live = pool.join("layers/live/l0");
    let _live = tmpfs_at(&live);
    let (upper, work, merged) = (
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir_all(d).unwrap();
    }
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(
            format!(
                "lowerdir={},upperdir={},workdir={}",
                live.display(),
                upper.display(),
                work.display()
            )
            .as_str(),
        ),
    )
    .unwrap();
    let _merged = OverlayGuard(merged.clone());
    HardenedBackend::force_cleanup(&state, "live", &options);
    assert!(mounted(&live), "an overlay's layer is left alone");
}

/// A bundle reached through a symlink: mountinfo shows the canonical path,
/// and the overlay must still be recognised (and everything unmounted).
#[test]
fn an_overlay_bundle_reached_through_a_symlink_is_idmapped_and_cleaned_up() {
    let h = Harness::new();
    let (bundle, _overlay, ..) = overlay_bundle(&h, "linked");
    let link = h.path("link");
    std::os::unix::fs::symlink(h.dir.path(), &link).unwrap();
    let via_link = link.join("linked");
    let id = unique("linked");
    let pid = h.run(&id, &via_link, Stdio::default());
    assert!(
        !idmapped_mounts_under(h.backend.native().state_root()).is_empty(),
        "the overlay's layers are idmapped"
    );
    kill_and_delete(&h, &id, pid, &bundle);
    assert!(
        idmapped_mounts_under(h.dir.path()).is_empty(),
        "idmapped mounts left"
    );
}

/// Mounts whose mount point is under `dir`.
fn mounts_under(dir: &std::path::Path) -> Vec<MountEntry> {
    mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect()
}

/// `spec` with bind mounts of `binds` (source, destination, options) in
/// place of whatever it had at those destinations.
fn with_binds(spec: &mut Spec, binds: &[(&std::path::Path, &str, &[&str])]) {
    let mut mounts: Vec<_> = spec
        .mounts()
        .clone()
        .unwrap()
        .into_iter()
        .filter(|m| {
            !binds
                .iter()
                .any(|(_, dest, _)| m.destination() == std::path::Path::new(dest))
        })
        .collect();
    for (source, dest, options) in binds {
        mounts.push(
            MountBuilder::default()
                .destination(*dest)
                .typ("bind")
                .source(*source)
                .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
                .unwrap(),
        );
    }
    spec.set_mounts(Some(mounts));
}

#[test]
fn bind_sources_under_root_only_dirs_reach_the_container_and_leave_nothing_mounted() {
    use std::os::unix::fs::MetadataExt;
    let h = Harness::new();
    // As containerd 1.6 keeps a pod's resolv.conf and /dev/shm: under its
    // root, 0700, which the pod's mapped root cannot traverse.
    let hidden = h.path("containerd-root");
    let sandbox = hidden.join("io.containerd.grpc.v1.cri/sandboxes/pod");
    let shm = sandbox.join("shm");
    fs::create_dir_all(&shm).unwrap();
    fs::write(sandbox.join("resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
    fs::write(shm.join("marker"), "in shm\n").unwrap();
    fs::set_permissions(&shm, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(&hidden, fs::Permissions::from_mode(0o700)).unwrap();
    let resolv = sandbox.join("resolv.conf");
    let bundle = h.bundle(
        "relay",
        &[
            "sh",
            "-c",
            "cat /etc/resolv.conf /dev/shm/marker && echo pod > /dev/shm/written && echo ok",
        ],
        |spec| {
            with_binds(
                spec,
                &[
                    (&resolv, "/etc/resolv.conf", &["rbind", "ro"]),
                    (&shm, "/dev/shm", &["rbind", "nosuid", "nodev"]),
                ],
            )
        },
    );
    let out = h.path("relay.out");
    let id = unique("relay");
    let stdio = Stdio {
        stdout: file_uri(&out),
        stderr: file_uri(&out),
        ..Stdio::default()
    };
    let pid = h.create(&id, &bundle, TaskKind::Sandbox, stdio);
    // Created: the container holds its own mounts; the relays are gone.
    assert!(
        !bundle.join(".caisson-binds").exists(),
        "the relay directory is removed once the task is created"
    );
    assert!(mounts_under(&bundle.join(".caisson-binds")).is_empty());
    assert!(!h
        .backend
        .native()
        .state_root()
        .join(".bind-relays")
        .join(&id)
        .exists());
    assert_eq!(h.backend.start(&id).unwrap(), pid);
    let exit = h.wait_exit(&id, None);
    let text = fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(exit.status, 0, "{text}");
    assert_eq!(text, "nameserver 192.0.2.53\nin shm\nok\n");
    assert_eq!(fs::read_to_string(shm.join("written")).unwrap(), "pod\n");
    h.delete_and_check(&id, pid, &cgroup_of(&bundle));
    // Nothing of it stays mounted, and the host dir was not loosened.
    assert!(
        mounts_under(&bundle).is_empty(),
        "{:?}",
        mounts_under(&bundle)
    );
    assert!(mounts_under(&hidden).is_empty());
    assert_eq!(fs::metadata(&hidden).unwrap().mode() & 0o7777, 0o700);
    assert!(slots(&h).is_empty());

    // A source the shim would reach only by following a symlink stays
    // refused (the pod might have planted it), leaving nothing behind.
    let link = h.path("link-to-hidden");
    std::os::unix::fs::symlink(&sandbox, &link).unwrap();
    let via_link = link.join("resolv.conf");
    let bundle = h.bundle("via-link", &["true"], |spec| {
        with_binds(spec, &[(&via_link, "/etc/resolv.conf", &["rbind", "ro"])])
    });
    let id = unique("via-link");
    let err = h
        .try_create(&id, &bundle, TaskKind::Sandbox, Stdio::default())
        .unwrap_err();
    match &err {
        BackendError::InvalidArgument { what, reason } => {
            assert_eq!(what, "mount /etc/resolv.conf", "{err}");
            assert!(
                reason.contains("not reachable") && reason.contains("symlinks"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!bundle.join(".caisson-binds").exists());
    assert!(mounts_under(&bundle).is_empty());
    assert!(slots(&h).is_empty(), "the range is given back");
    assert!(!h.backend.native().state_root().join(&id).exists());
}
