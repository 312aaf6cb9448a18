//! The shortest real path through caissond: a pod, a busybox container,
//! ExecSync, stop, remove. Needs root.

use caisson_tests::daemon::Caissond;
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
