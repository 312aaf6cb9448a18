//! Image volumes (KEP-4639) through caissond: a CRI mount with `image` set
//! gets that image's filesystem, read-only, at its container path; the
//! mount goes from the host when the container is removed; an image removed
//! while mounted keeps its layers until then; a missing image is NOT_FOUND
//! naming the field and leaves nothing mounted. On native, hardened and
//! runc through the oci handler. Needs root.

use caisson_tests::daemon::{container_config, rejection, Caissond};
use caisson_tests::fixtures::{ImageSpec, LayerBuilder};
use caisson_tests::require;
use k8s_cri::v1 as cri;

const DATA_IMAGE: &str = "example.com/caisson/data:1";

/// Two layers: `/data/hello.txt` in the first, `/data/second.txt` in the second.
fn data_image() -> ImageSpec {
    let first = LayerBuilder::new()
        .dir("data", 0o755)
        .file("data/hello.txt", b"hello from an image\n", 0o644)
        .build();
    let second = LayerBuilder::new()
        .dir("data", 0o755)
        .file("data/second.txt", b"second layer\n", 0o644)
        .build();
    ImageSpec::new(Some(DATA_IMAGE), vec![first, second])
}

fn image_mount(container_path: &str, image: &str) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The host's mountinfo lines of this daemon's image volumes.
fn image_volume_mounts(d: &Caissond) -> Vec<String> {
    let pods = d.pods_dir().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&pods) && l.contains("/image-volumes/"))
        .map(str::to_string)
        .collect()
}

fn remove_container(d: &Caissond, id: &str) {
    let mut rt = d.runtime();
    let r =
        d.rt.block_on(rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        }));
    d.ok("RemoveContainer", r);
}

fn remove_image(d: &Caissond, image: &str) {
    let mut images = d.images();
    let r = d.rt.block_on(images.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
    }));
    d.ok(&format!("RemoveImage {image}"), r);
}

/// A plain container made and removed, so that what the first container of
/// a pod makes for good (the pod's `containers` dir, the hardened backend's
/// idmapped layer cache) is in the baseline.
fn warm_up(d: &Caissond, pod: &str, config: &cri::PodSandboxConfig) {
    let c = d.create_container(pod, config, container_config("warm-up", &["true"]));
    remove_container(d, &c);
}

fn image_volume_is_readable_and_read_only(handler: &str) {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("imgvol");
    let pod = d.run_pod_with_handler(&config, handler);
    warm_up(&d, &pod, &config);
    // Everything the data image adds must be gone once the container is.
    let baseline = d.footprint();
    d.import_image(&data_image());

    let mut request = container_config("c", &["sleep", "1000"]);
    request.mounts = vec![
        // `readonly: false` is overridden: image volumes are read-only.
        image_mount("/mnt/img", DATA_IMAGE),
        // A one-layer image (the kernel wants two lower dirs without an upper).
        image_mount("/mnt/bb/", "busybox"),
    ];
    let c = d.create_started_container(&pod, &config, request);

    assert_eq!(
        d.exec(&c, &["cat", "/mnt/img/data/hello.txt"]),
        "hello from an image\n"
    );
    assert_eq!(
        d.exec(&c, &["cat", "/mnt/img/data/second.txt"]),
        "second layer\n"
    );
    d.exec(&c, &["test", "-x", "/mnt/bb/bin/busybox"]);
    for write in [
        "echo x > /mnt/img/data/new.txt",
        "echo x >> /mnt/img/data/hello.txt",
        "rm /mnt/img/data/hello.txt",
        "mkdir /mnt/bb/new",
    ] {
        let out = d.try_exec(&c, &["sh", "-c", write], 10).unwrap();
        assert_ne!(out.exit_code, 0, "{write:?} succeeded on an image volume");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Read-only file system"),
            "{write:?}: {stderr}"
        );
    }
    // In the container: read-only, nosuid, nodev.
    let mounts = d.exec(&c, &["cat", "/proc/self/mounts"]);
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/mnt/img"))
        .unwrap_or_else(|| panic!("no /mnt/img in the container's mounts:\n{mounts}"));
    let options: Vec<&str> = line.split(' ').nth(3).unwrap().split(',').collect();
    for want in ["ro", "nosuid", "nodev"] {
        assert!(options.contains(&want), "{want} missing: {line}");
    }
    // On the host, under the container's bundle.
    let host = image_volume_mounts(&d);
    assert_eq!(host.len(), 2, "{host:#?}");
    assert!(
        host.iter()
            .all(|l| l.contains(&format!("/{c}/image-volumes/"))),
        "{host:#?}"
    );

    // Removing the image while mounted keeps the volume working.
    remove_image(&d, DATA_IMAGE);
    assert_eq!(
        d.exec(&c, &["cat", "/mnt/img/data/hello.txt"]),
        "hello from an image\n"
    );

    remove_container(&d, &c);
    assert_eq!(image_volume_mounts(&d), Vec::<String>::new());
    let after = d.footprint();
    assert!(
        after == baseline,
        "left after RemoveContainer:\n{}\n{}",
        after.diff(&baseline),
        d.log_tail()
    );
}

#[test]
fn image_volume_is_readable_and_read_only_native() {
    image_volume_is_readable_and_read_only("");
}

#[test]
fn image_volume_is_readable_and_read_only_hardened() {
    image_volume_is_readable_and_read_only("hardened");
}

/// The oci handler hands runc a plain bind of the host mount point.
#[test]
fn image_volume_is_readable_and_read_only_runc_oci() {
    require::program("/usr/sbin/runc", "runc");
    image_volume_is_readable_and_read_only("runc-oci");
}

#[test]
fn bad_image_volumes_are_refused_and_leave_nothing_mounted() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("imgvol-bad");
    let pod = d.run_pod(&config);
    warm_up(&d, &pod, &config);
    let baseline = d.footprint();
    let case = |what: &'static str, code: tonic::Code, names: &str, mounts: Vec<cri::Mount>| {
        let (pod, sandbox) = (pod.clone(), config.clone());
        let mut request = container_config("c", &["sleep", "1000"]);
        request.mounts = mounts;
        rejection(
            what,
            code,
            names,
            Box::new(move |d, rt| {
                d.rt.block_on(rt.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(request.clone()),
                    sandbox_config: Some(sandbox.clone()),
                }))
                .map(drop)
            }),
        )
    };
    d.check_rejections(
        vec![
            // The first volume is mounted before the second is found missing.
            case(
                "missing image",
                tonic::Code::NotFound,
                "config.mounts[1].image",
                vec![
                    image_mount("/mnt/bb", "busybox"),
                    image_mount("/mnt/x", "example.com/no/such:image"),
                ],
            ),
            case(
                "shared propagation",
                tonic::Code::InvalidArgument,
                "config.mounts[0].propagation",
                vec![cri::Mount {
                    propagation: cri::MountPropagation::PropagationBidirectional as i32,
                    ..image_mount("/mnt/bb", "busybox")
                }],
            ),
            case(
                "over the root",
                tonic::Code::InvalidArgument,
                "config.mounts[0].container_path",
                vec![image_mount("/", "busybox")],
            ),
        ],
        &baseline,
    );
    assert_eq!(image_volume_mounts(&d), Vec::<String>::new());
}
