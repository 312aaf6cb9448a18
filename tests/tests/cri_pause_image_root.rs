//! `pause_image` in caissond's config: pods run the image's entrypoint from
//! an overlay of that image instead of the built-in caisson-pause binary.

use caisson_tests::daemon::Caissond;
use caisson_tests::fixtures::PAUSE_NAME;
use k8s_cri::v1 as cri;

#[test]
fn pods_run_the_configured_pause_image() {
    let d = Caissond::start(&format!("pause_image = \"{PAUSE_NAME}\""));
    let config = d.pod_config("imaged");

    // Not imported yet: a clear error naming the key, and nothing left behind.
    let before = d.footprint();
    let mut rt = d.runtime();
    let err =
        d.rt.block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("pause_image"), "{err}");
    assert_eq!(
        d.footprint(),
        before,
        "a failed RunPodSandbox left something behind"
    );

    d.import_pause_image();
    let pod = d.run_pod(&config);
    let pid = d.pod_pid(&pod);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"/pause\0");
    let rootfs = d
        .pods_dir()
        .join(&pod)
        .join("bundle/rootfs")
        .display()
        .to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(rootfs.as_str()));
    assert!(
        line.is_some_and(|l| l.contains(" - overlay ")),
        "the pause rootfs must be an overlay of the image"
    );

    d.rt.block_on(rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .unwrap();
    d.rt.block_on(rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&rootfs), "pause rootfs still mounted");
    assert!(
        !d.dir.path().join("root/images/rootfs").join(&pod).exists(),
        "pause rootfs not removed"
    );
}
