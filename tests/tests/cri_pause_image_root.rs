//! `pause_image` in caissond's config: pods run the image's entrypoint from
//! an overlay of that image instead of the built-in caisson-pause binary,
//! and the image service reports that image pinned.

use caisson_tests::daemon::Caissond;
use caisson_tests::fixtures::{BUSYBOX_NAME, PAUSE_NAME};
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

/// The configured pause image is reported pinned (containerd pins its
/// sandbox image) so that kubelet's image garbage collection skips it;
/// other images are not.
#[test]
fn the_pause_image_is_pinned() {
    let d = Caissond::start(&format!("pause_image = \"{PAUSE_NAME}\""));
    d.import_pause_image();
    d.import_busybox();
    let mut images = d.images();
    let spec = |image: &str| {
        Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        })
    };
    let listed = d.ok(
        "ListImages",
        d.rt.block_on(images.list_images(cri::ListImagesRequest { filter: None })),
    );
    let pinned = |name: &str| -> Vec<bool> {
        listed
            .images
            .iter()
            .filter(|i| i.repo_tags.iter().any(|t| t == name))
            .map(|i| i.pinned)
            .collect()
    };
    assert_eq!(pinned(PAUSE_NAME), vec![true], "{:?}", listed.images);
    assert_eq!(pinned(BUSYBOX_NAME), vec![false], "{:?}", listed.images);

    for (name, want) in [(PAUSE_NAME, true), (BUSYBOX_NAME, false)] {
        let filtered = d.ok(
            "ListImages with a filter",
            d.rt.block_on(images.list_images(cri::ListImagesRequest {
                filter: Some(cri::ImageFilter { image: spec(name) }),
            })),
        );
        let got: Vec<bool> = filtered.images.iter().map(|i| i.pinned).collect();
        assert_eq!(got, vec![want], "ListImages filtered on {name}");
        let status = d.ok(
            "ImageStatus",
            d.rt.block_on(images.image_status(cri::ImageStatusRequest {
                image: spec(name),
                verbose: false,
            })),
        );
        assert_eq!(
            status.image.map(|i| i.pinned),
            Some(want),
            "ImageStatus of {name}"
        );
    }
}
