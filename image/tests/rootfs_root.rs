//! Container root filesystems: a real overlay mount of imported layers,
//! whiteouts honoured, writes going to the container's upper dir, busybox
//! running inside it, and nothing left after removal. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

use caisson_image::{ImageError, ImageStore, ImportOptions};
use caisson_tests::fixtures::{busybox_layer, ImageSpec, LayerBuilder, OciArchive};
use caisson_tests::require;

/// Unmounts whatever a failed test left mounted.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn is_mounted(target: &Path) -> bool {
    let target = target.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// busybox with a second layer that hides `/bin/ls`, makes `/etc` opaque
/// (replacing passwd) and adds a file.
fn import_layered_busybox(store: &ImageStore, dir: &Path) -> String {
    let top = LayerBuilder::new()
        .whiteout("bin/ls")
        .opaque("etc")
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("hello.txt", b"hello from the top layer\n", 0o644)
        .build();
    let mut archive = OciArchive::new();
    archive.add_image(&ImageSpec::new(
        Some("localhost/layered:1"),
        vec![busybox_layer(), top],
    ));
    archive.write(&dir.join("layered.tar"), true);
    store
        .import_file(&dir.join("layered.tar"), &ImportOptions::default())
        .unwrap();
    "localhost/layered:1".to_string()
}

#[test]
fn overlay_rootfs_runs_busybox_and_honours_whiteouts() {
    require::root("overlay mounts");
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let image = import_layered_busybox(&store, tmp.path());

    let rootfs = store.create_rootfs("ctr-1", &image).unwrap();
    assert_eq!(rootfs.lowers.len(), 2);
    assert!(matches!(
        store.create_rootfs("ctr-1", &image),
        Err(ImageError::RootfsExists { .. })
    ));
    let target = tmp.path().join("bundle/rootfs");
    let _guard = MountGuard(target.clone());
    assert_eq!(store.mount_rootfs("ctr-1", Some(&target)).unwrap(), target);
    assert!(is_mounted(&target));

    // Lower layers, whiteout and opaque dir as the kernel shows them.
    assert!(target.join("bin/busybox").is_file());
    assert!(target.join("bin/cat").is_file(), "other applets stay");
    assert!(
        !target.join("bin/ls").exists(),
        "whited-out /bin/ls must be hidden"
    );
    assert!(
        !target.join("etc/group").exists(),
        "opaque /etc hides the lower /etc/group"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("etc/passwd")).unwrap(),
        "root:x:0:0:root:/root:/bin/sh\n"
    );

    // busybox runs from the merged tree; masking ls did not mask busybox.
    let out = Command::new("chroot")
        .arg(&target)
        .args([
            "/bin/sh",
            "-c",
            "cat /hello.txt && echo written > /tmp/new && test -e /bin/ls; echo ls=$?",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the top layer\nls=1\n"
    );

    // Writes land in the container's upper dir, never in a shared layer.
    assert_eq!(
        std::fs::read_to_string(rootfs.upper.join("tmp/new")).unwrap(),
        "written\n"
    );
    for lower in &rootfs.lowers {
        assert!(!lower.join("tmp/new").exists());
    }
    let usage = store.rootfs_usage("ctr-1").unwrap();
    assert!(usage.inodes_used >= 3, "{usage:?}");

    store.unmount_rootfs("ctr-1").unwrap();
    assert!(!is_mounted(&target));
    store.mount_rootfs("ctr-1", Some(&target)).unwrap();
    assert_eq!(
        std::fs::read_to_string(target.join("tmp/new")).unwrap(),
        "written\n",
        "upper survives remounts"
    );
    store.remove_rootfs("ctr-1").unwrap();
    assert!(!is_mounted(&target), "remove unmounts");
    assert!(matches!(
        store.rootfs("ctr-1"),
        Err(ImageError::RootfsNotFound { .. })
    ));
    assert!(!tmp.path().join("images/rootfs/ctr-1").exists());
}

#[test]
fn a_rootfs_pins_its_layers_until_removed() {
    require::root("unpacking layers with owners");
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let image = import_layered_busybox(&store, tmp.path());
    let chains = store.get(&image).unwrap().chain_ids();
    store.create_rootfs("pinned", &image).unwrap();

    store.remove(&image).unwrap();
    assert!(store.get(&image).is_err());
    for chain in &chains {
        assert!(
            store.layers().contains(chain),
            "a layer a container uses was removed"
        );
    }
    store.remove_rootfs("pinned").unwrap();
    let report = store.gc().unwrap();
    assert_eq!(report.layers_removed, chains.len());
    assert!(store.layers().list().unwrap().is_empty());
    assert!(store.content().list().unwrap().is_empty());
}

#[test]
fn rootfs_ids_and_missing_images_are_rejected() {
    require::root("unpacking layers with owners");
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let layer = LayerBuilder::new().file("x", b"x", 0o644).build();
    let mut archive = OciArchive::new();
    archive.add_image(&ImageSpec::new(Some("localhost/x:1"), vec![layer]));
    archive.write(&tmp.path().join("x.tar"), false);
    store
        .import_file(&tmp.path().join("x.tar"), &ImportOptions::default())
        .unwrap();
    for bad in ["", ".", "..", "a/b", "../x", "x y"] {
        let err = store.create_rootfs(bad, "localhost/x:1").unwrap_err();
        assert!(err.to_string().contains("rootfs id"), "{bad:?}: {err}");
    }
    assert!(store
        .create_rootfs("ok", "localhost/missing:1")
        .unwrap_err()
        .is_not_found());
    assert!(!tmp.path().join("images/rootfs/ok").exists());
}
