//! The CRI ImageService of caissond on imported images: listing, status by
//! every name an image has, filesystem usage, removal (idempotent, and
//! under a running container). Registry pulls are tested with a local
//! registry elsewhere. Needs root (caissond makes mounts and cgroups).

use caisson_tests::daemon::{container_config, Caissond};
use caisson_tests::fixtures::BUSYBOX_NAME;
use k8s_cri::v1 as cri;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

fn image_status(d: &Caissond, image: &str, verbose: bool) -> cri::ImageStatusResponse {
    let mut images = d.images();
    let r = d.rt.block_on(images.image_status(cri::ImageStatusRequest {
        image: spec(image),
        verbose,
    }));
    d.ok(&format!("ImageStatus {image}"), r)
}

fn list_images(d: &Caissond, filter: Option<&str>) -> Vec<cri::Image> {
    let mut images = d.images();
    let r = d.rt.block_on(images.list_images(cri::ListImagesRequest {
        filter: filter.map(|f| cri::ImageFilter { image: spec(f) }),
    }));
    d.ok("ListImages", r).images
}

fn fs_usage(d: &Caissond) -> (u64, u64, String) {
    let mut images = d.images();
    let r =
        d.rt.block_on(images.image_fs_info(cri::ImageFsInfoRequest {}));
    let info = d.ok("ImageFsInfo", r);
    let fs = info
        .image_filesystems
        .first()
        .cloned()
        .expect("ImageFsInfo without an image filesystem");
    (
        fs.used_bytes.map(|v| v.value).unwrap_or(0),
        fs.inodes_used.map(|v| v.value).unwrap_or(0),
        fs.fs_id.map(|f| f.mountpoint).unwrap_or_default(),
    )
}

fn remove_image(d: &Caissond, image: &str) {
    let mut images = d.images();
    let r =
        d.rt.block_on(images.remove_image(cri::RemoveImageRequest { image: spec(image) }));
    d.ok(&format!("RemoveImage {image}"), r);
}

#[test]
fn image_service_lists_finds_measures_and_removes_images() {
    let d = Caissond::start("");
    assert!(list_images(&d, None).is_empty());
    let (bytes_before, inodes_before, mountpoint) = fs_usage(&d);
    assert!(
        mountpoint.starts_with(&d.dir.path().display().to_string()),
        "image fs {mountpoint:?} is not under the daemon's root"
    );

    d.import_busybox();
    let listed = list_images(&d, None);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let busybox = listed[0].clone();
    assert_eq!(busybox.repo_tags, vec![BUSYBOX_NAME.to_string()]);
    assert!(
        busybox.id.starts_with("sha256:") && busybox.id.len() == 71,
        "{busybox:?}"
    );
    assert!(
        busybox
            .repo_digests
            .iter()
            .all(|d| d.starts_with("docker.io/library/busybox@sha256:")),
        "{busybox:?}"
    );
    assert!(busybox.size > 100_000, "busybox is {} bytes", busybox.size);

    // Grows after the import, by about the image's size.
    let (bytes, inodes, _) = fs_usage(&d);
    assert!(bytes > bytes_before && inodes > inodes_before);
    assert!(
        bytes - bytes_before >= busybox.size,
        "{bytes} - {bytes_before} < {}",
        busybox.size
    );

    // Every name an image has finds it: short and full tag, id, bare hex,
    // a unique prefix, a repo digest.
    let hex = busybox.id.trim_start_matches("sha256:").to_string();
    let mut names = vec![
        "busybox".to_string(),
        "busybox:latest".to_string(),
        "docker.io/library/busybox:latest".to_string(),
        busybox.id.clone(),
        hex.clone(),
        hex[..12].to_string(),
    ];
    names.extend(busybox.repo_digests.iter().cloned());
    for name in &names {
        let status = image_status(&d, name, false);
        assert_eq!(
            status.image.as_ref().map(|i| &i.id),
            Some(&busybox.id),
            "{name}"
        );
        assert!(status.info.is_empty());
        assert_eq!(
            list_images(&d, Some(name)).len(),
            1,
            "ListImages filter {name}"
        );
    }
    let verbose = image_status(&d, "busybox", true);
    let info: serde_json::Value = serde_json::from_str(
        verbose
            .info
            .get("info")
            .expect("verbose ImageStatus without info"),
    )
    .expect("verbose info is JSON");
    assert_eq!(
        info["imageSpec"]["config"]["Cmd"],
        serde_json::json!(["sh"])
    );
    assert!(
        info["chainIDs"].as_array().is_some_and(|c| c.len() == 1),
        "{info}"
    );
    assert!(
        info["manifestDigest"]
            .as_str()
            .is_some_and(|m| m.starts_with("sha256:")),
        "{info}"
    );

    // Unknown images are an empty answer, not an error.
    for name in ["nosuch", "docker.io/library/busybox:1.0", "sha256:0000"] {
        let status = image_status(&d, name, true);
        assert!(
            status.image.is_none() && status.info.is_empty(),
            "{name}: {status:?}"
        );
        assert!(list_images(&d, Some(name)).is_empty(), "{name}");
    }

    let mut images = d.images();
    let empty = d.rt.block_on(images.image_status(cri::ImageStatusRequest {
        image: spec(""),
        verbose: false,
    }));
    let status = empty.expect_err("ImageStatus of an empty name");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("image.image"), "{status:?}");

    // Removed by tag: gone by every name, its space given back; removing
    // again (or anything unknown) is fine.
    remove_image(&d, "busybox");
    for name in &names {
        assert!(
            image_status(&d, name, false).image.is_none(),
            "{name} after removal"
        );
    }
    assert!(list_images(&d, None).is_empty());
    let (bytes_after, inodes_after, _) = fs_usage(&d);
    assert!(bytes_after < bytes && inodes_after < inodes);
    remove_image(&d, "busybox");
    remove_image(&d, &busybox.id);
    remove_image(&d, "docker.io/library/nosuch:1");
}

#[test]
fn an_image_removed_under_a_running_container_keeps_the_container_going() {
    let d = Caissond::start("");
    d.import_busybox();
    let config = d.pod_config("user");
    let pod = d.run_pod(&config);
    let c = d.create_started_container(&pod, &config, container_config("c", &["sleep", "1000"]));
    remove_image(&d, "busybox");
    assert!(image_status(&d, "busybox", false).image.is_none());
    // The container's rootfs keeps its layers: it still runs programs.
    assert_eq!(d.exec(&c, &["echo", "alive"]), "alive\n");
    d.stop_pod(&pod);
    d.remove_pod(&pod);
    // With the container gone, nothing of the image is left.
    let store = d.dir.path().join("root/images");
    for dir in ["layers", "content/blobs/sha256", "rootfs"] {
        let left: Vec<_> = std::fs::read_dir(store.join(dir))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "{dir} keeps {left:?} after the image and its container went"
        );
    }
    // And it can come back.
    d.import_busybox();
    assert!(image_status(&d, "busybox", false).image.is_some());
}
