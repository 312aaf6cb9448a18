//! A pod under the `hardened` runtime handler through caissond: it runs,
//! and an ExecSync in its container sees the syscall filter, no_new_privs
//! and no capabilities in /proc/self/status. Needs root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use caisson_tests::daemon::{
    container_config, id_map, ns_inode, proc_status_field, proc_status_id, Caissond,
};
use k8s_cri::v1 as cri;

#[test]
fn a_hardened_pod_runs_with_seccomp_and_no_capabilities() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("hardened");
    let pod = d.run_pod_with_handler(&config, "hardened");
    let ctr = d.create_started_container(
        &pod,
        &config,
        container_config("sleeper", &["sleep", "1000"]),
    );
    let status = d.exec(&ctr, &["cat", "/proc/self/status"]);
    for want in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t0000000000000000"] {
        assert!(status.contains(want), "{want:?} missing in:\n{status}");
    }
    // A denied syscall fails with EPERM inside the pod.
    let out = d.try_exec(&ctr, &["unshare", "-m", "true"], 10).unwrap();
    assert_ne!(out.exit_code, 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.remove_all_pods();
}

// ------------------------------------------------- per-pod user namespaces

fn slots(d: &Caissond) -> usize {
    std::fs::read_dir(d.dir.path().join("run/shim/state/.userns-pool"))
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("slot-"))
                .count()
        })
        .unwrap_or(0)
}

fn run_hardened_pod(d: &Caissond, name: &str) -> (String, cri::PodSandboxConfig) {
    let config = d.pod_config(name);
    let pod = d.run_pod_with_handler(&config, "hardened");
    (pod, config)
}

#[test]
fn a_hardened_pods_root_is_an_unprivileged_range_of_its_own() {
    let d = Caissond::start("");
    d.import_busybox();
    let volume = tempfile::tempdir().unwrap();
    std::fs::set_permissions(volume.path(), std::fs::Permissions::from_mode(0o777)).unwrap();

    let (pod_a, config_a) = run_hardened_pod(&d, "userns-a");
    let mut ctr_config = container_config("sleeper", &["sleep", "1000"]);
    ctr_config.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: volume.path().display().to_string(),
        ..Default::default()
    }];
    let ctr = d.create_started_container(&pod_a, &config_a, ctr_config);
    let pause_a = d.pod_pid(&pod_a);
    let ctr_pid = d.container_pid(&ctr);

    // From the host: the pod's processes run as its first mapped id, in one
    // user namespace (not the host's) mapping root to 65,536 ids.
    let first_a = id_map(pause_a, "uid_map")[0].1;
    assert!(first_a >= 1_000_000, "pod root is host uid {first_a}");
    assert_eq!(
        proc_status_id(ctr_pid, "Uid"),
        first_a,
        "the container's root"
    );
    // The pause process runs as its image's user (65535), mapped as well.
    let pause_uid = proc_status_id(pause_a, "Uid");
    assert!(
        (first_a..first_a + 65_536).contains(&pause_uid),
        "pause uid {pause_uid}"
    );
    // (its group is whatever the image and the runtime chose, mapped too)
    let gid = proc_status_id(ctr_pid, "Gid");
    assert!((first_a..first_a + 65_536).contains(&gid), "gid {gid}");
    assert_eq!(id_map(ctr_pid, "uid_map"), vec![(0, first_a, 65_536)]);
    let userns = ns_inode(ctr_pid, "user");
    assert_eq!(userns, ns_inode(pause_a, "user"));
    assert_ne!(userns, ns_inode(std::process::id(), "user"));
    assert_eq!(ns_inode(ctr_pid, "net"), ns_inode(pause_a, "net"));

    // Inside: root, the image's files root's, the rootfs writable; an exec
    // is in the same user namespace.
    let out = d.exec(
        &ctr,
        &[
            "sh",
            "-c",
            "id -u; stat -c %u /bin/busybox; echo x > /made && stat -c %u /made; \
             readlink /proc/self/ns/user; touch /data/from-pod && echo volume-ok",
        ],
    );
    assert_eq!(
        out,
        format!("0\n0\n0\n{userns}\nvolume-ok\n"),
        "inside the pod"
    );
    // A hostPath volume is not idmapped: the file is the mapped uid's.
    let made = std::fs::metadata(volume.path().join("from-pod")).unwrap();
    assert_eq!((made.uid(), made.gid()), (first_a, first_a));

    // A second pod gets a disjoint range, and its own namespace.
    let (pod_b, _) = run_hardened_pod(&d, "userns-b");
    let pause_b = d.pod_pid(&pod_b);
    let first_b = id_map(pause_b, "uid_map")[0].1;
    assert!(
        first_b >= first_a + 65_536 || first_a >= first_b + 65_536,
        "{first_a} and {first_b} overlap"
    );
    assert_ne!(ns_inode(pause_b, "user"), userns);
    assert_eq!(slots(&d), 2);

    // Removing pod a frees its range (and only then is it reused); pod b
    // keeps its own.
    d.stop_pod(&pod_a);
    d.remove_pod(&pod_a);
    assert_eq!(slots(&d), 1, "pod a's range is freed");
    let (pod_c, _) = run_hardened_pod(&d, "userns-c");
    let first_c = id_map(d.pod_pid(&pod_c), "uid_map")[0].1;
    assert_eq!(first_c, first_a, "the freed range is reused");
    assert_eq!(id_map(pause_b, "uid_map")[0].1, first_b);
    d.remove_all_pods();
    assert_eq!(slots(&d), 0, "every range is freed");
}

/// An ExecSync's process, seen from the host: the pod's user namespace and
/// no capabilities. And a volume over /proc (which would let the pod feed
/// the runtime a fake /proc/self/uid_map) is refused.
#[test]
fn an_exec_is_in_the_pods_user_namespace_and_proc_cannot_be_replaced() {
    let d = Caissond::start("");
    d.import_busybox();
    let (pod, config) = run_hardened_pod(&d, "exec-userns");
    let ctr = d.create_started_container(
        &pod,
        &config,
        container_config("sleeper", &["sleep", "1000"]),
    );
    let first = id_map(d.pod_pid(&pod), "uid_map")[0].1;
    // The exec leaves a marked child behind (it has the exec's credentials).
    d.exec(&ctr, &["sh", "-c", "sleep 4242 >/dev/null 2>&1 &"]);
    let pid = caisson_tests::daemon::wait_until(
        "the exec's sleep",
        std::time::Duration::from_secs(10),
        || {
            d.processes()
                .into_iter()
                .find(|(_, cmd)| cmd == "sleep 4242")
                .map(|(pid, _)| pid)
        },
    );
    assert_eq!(id_map(pid, "uid_map"), vec![(0, first, 65_536)]);
    assert_eq!(proc_status_id(pid, "Uid"), first);
    assert_eq!(
        ns_inode(pid, "user"),
        ns_inode(d.container_pid(&ctr), "user")
    );
    assert_eq!(
        proc_status_field(pid, "CapEff").as_deref(),
        Some("0000000000000000")
    );

    let fake = tempfile::tempdir().unwrap();
    std::fs::set_permissions(fake.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(fake.path().join("self")).unwrap();
    std::fs::write(fake.path().join("self/uid_map"), "0 0 4294967295\n").unwrap();
    for container_path in ["/proc", "/proc/self"] {
        let mut ctr_config = container_config("fake-proc", &["sleep", "1000"]);
        ctr_config.mounts = vec![cri::Mount {
            container_path: container_path.into(),
            host_path: fake.path().display().to_string(),
            ..Default::default()
        }];
        let mut rt = d.runtime();
        let err =
            d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(ctr_config),
                sandbox_config: Some(config.clone()),
            }))
            .expect_err("a volume over /proc");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(
            err.message().contains(&format!("mount {container_path}")),
            "{err}"
        );
    }
    d.remove_all_pods();
}
