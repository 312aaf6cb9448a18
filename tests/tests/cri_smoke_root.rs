//! The shortest real path through caissond: a pod, a busybox container,
//! ExecSync, stop, remove; and the features Status announces, each checked
//! against what a container gets. Needs root.

use caisson_tests::daemon::{container_config, Caissond};
use k8s_cri::v1 as cri;

fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

#[test]
fn pod_container_exec_stop_remove() {
    let d = Caissond::start("");
    d.import_busybox();
    let mut rt = d.runtime();
    let config = pod_config("smoke");
    let pod =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", d.log_tail()))
        .into_inner()
        .pod_sandbox_id;
    let ctr =
        d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "sleeper".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "1000".into()],
                ..Default::default()
            }),
            sandbox_config: Some(config),
        }))
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", d.log_tail()))
        .into_inner()
        .container_id;
    d.rt.block_on(rt.start_container(cri::StartContainerRequest {
        container_id: ctr.clone(),
    }))
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", d.log_tail()));
    let out =
        d.rt.block_on(rt.exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; hostname; exit 3".into(),
            ],
            timeout: 10,
        }))
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", d.log_tail()))
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\nsmoke\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.exit_code, 3);
    d.rt.block_on(rt.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 1,
    }))
    .unwrap();
    let status =
        d.rt.block_on(rt.container_status(cri::ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        }))
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    // CRI's default PID mode is POD (0): pause is PID 1, so SIGTERM kills sleep.
    assert_eq!(status.exit_code, 143);
    d.rt.block_on(rt.remove_container(cri::RemoveContainerRequest { container_id: ctr }))
        .unwrap();
    d.rt.block_on(rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .unwrap();
    d.rt.block_on(rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    }))
    .unwrap();
}

/// A tmpfs mounted on `dir/sub` for the life of the guard.
struct Submount(std::path::PathBuf);

impl Submount {
    fn new(dir: &std::path::Path) -> Submount {
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", sub.display()));
        Submount(sub)
    }
}

impl Drop for Submount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Status announces recursive read-only mounts for the native handlers
/// and for an `oci` handler whose runtime's `features` lists `rro` (runc
/// 1.1, not crun 1.8, which has no `features` command), and the Strict
/// supplemental groups policy; a `recursive_read_only` mount is read-only
/// down into its submounts, where a plain `readonly` one is not. (Needs a
/// kernel with mount_setattr(2), 5.12+, as every machine this runs on.)
#[test]
fn status_features_and_recursive_read_only_mounts() {
    let d = Caissond::start("");
    d.import_busybox();
    let mut rt = d.runtime();
    let status = d.ok(
        "Status",
        d.rt.block_on(rt.status(cri::StatusRequest { verbose: false })),
    );
    assert_eq!(
        status.features.map(|f| f.supplemental_groups_policy),
        Some(true),
        "supplemental_groups_policy"
    );
    let rro = |name: &str| {
        status
            .runtime_handlers
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.features.as_ref())
            .map(|f| f.recursive_read_only_mounts)
    };
    for (handler, want) in [
        ("runc", true),
        ("hardened", true),
        ("runc-oci", true),
        ("crun-oci", false),
    ] {
        assert_eq!(
            rro(handler),
            Some(want),
            "recursive_read_only_mounts of {handler}: {:?}",
            status.runtime_handlers
        );
    }

    let host = tempfile::Builder::new()
        .prefix("caisson-rro-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let submount = Submount::new(host.path());
    let config = d.pod_config("rro");
    let pod = d.run_pod(&config);
    // The same claim for runc, through the oci handler.
    let runc_config = d.pod_config("rro-runc");
    let runc_pod = d.run_pod_with_handler(&runc_config, "runc-oci");
    let with_mount = |name: &str, recursive: bool| {
        let mut c = container_config(name, &["sleep", "1000"]);
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: host.path().display().to_string(),
            readonly: true,
            recursive_read_only: recursive,
            ..Default::default()
        }];
        c
    };
    let rro = d.create_started_container(&pod, &config, with_mount("rro", true));
    let ro = d.create_started_container(&pod, &config, with_mount("ro", false));
    let write = ["sh", "-c", "echo x > /data/sub/file"];

    let runc_rro = d.create_started_container(&runc_pod, &runc_config, with_mount("rro", true));
    for container in [&rro, &runc_rro] {
        let out = d.try_exec(container, &write, 10).unwrap();
        assert_ne!(out.exit_code, 0, "wrote into a submount of an rro mount");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Read-only file system"), "{err}");
        assert!(!submount.0.join("file").exists());
    }
    // Plain readonly: the top is read-only, its submount is not.
    let out = d
        .try_exec(&ro, &["sh", "-c", "echo x > /data/top"], 10)
        .unwrap();
    assert_ne!(out.exit_code, 0, "wrote into a readonly mount");
    d.exec(&ro, &write);
    assert!(submount.0.join("file").exists());

    for pod in [&pod, &runc_pod] {
        d.stop_pod(pod);
        d.remove_pod(pod);
    }
    drop(submount);
}
