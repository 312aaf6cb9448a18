//! Importing archives into a real store: OCI layouts (plain and gzip), docker
//! save archives, multi-platform indexes, shared layers, lookups, removal.
//! Needs root (layers carry root-owned files and device nodes).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use caisson_image::{ImageStore, ImportOptions};
use caisson_tests::fixtures::{
    busybox_image, docker_save_archive, gzip, ImageSpec, LayerBuilder, LayerCompression,
    OciArchive, BUSYBOX_NAME,
};
use caisson_tests::require;

fn store() -> (tempfile::TempDir, ImageStore) {
    require::root("layers are unpacked with their owners");
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    (dir, store)
}

fn write(dir: &Path, name: &str, bytes: Vec<u8>) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn busybox_oci_archive_imports_with_hard_linked_applets() {
    let (dir, store) = store();
    for gzipped in [false, true] {
        let mut archive = OciArchive::new();
        let built = archive.add_image(&busybox_image());
        let path = dir.path().join(format!("busybox-{gzipped}.tar"));
        archive.write(&path, gzipped);

        let report = store.import_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(report.images.len(), 1);
        let image = &report.images[0];
        assert_eq!(image.id.to_string(), built.config.digest);
        assert_eq!(image.manifest_digest.to_string(), built.manifest.digest);
        assert_eq!(image.repo_tags, vec![BUSYBOX_NAME.to_string()]);
        assert_eq!(
            image.repo_digests,
            vec![format!(
                "docker.io/library/busybox@{}",
                built.manifest.digest
            )]
        );
        assert_eq!(image.config.cmd, vec!["sh".to_string()]);
        let expected_size = built.manifest.size
            + built.config.size
            + built.layers.iter().map(|l| l.size).sum::<u64>();
        assert_eq!(image.size, expected_size);
        // The second import of the same image unpacks nothing new.
        assert_eq!(
            report.layers_unpacked,
            usize::from(!gzipped),
            "gzipped={gzipped}"
        );
    }
    let image = store.get("busybox").unwrap();
    let fs_dir = store.layers().fs_dir(&image.layers[0].chain_id);
    let busybox = std::fs::metadata(fs_dir.join("bin/busybox")).unwrap();
    let ls = std::fs::metadata(fs_dir.join("bin/ls")).unwrap();
    assert_eq!(
        busybox.ino(),
        ls.ino(),
        "applets must be hard links to /bin/busybox"
    );
    assert!(busybox.nlink() > 100);
    assert_eq!(
        std::fs::metadata(fs_dir.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let home = std::fs::metadata(fs_dir.join("home/user")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    let passwd = std::fs::read_to_string(fs_dir.join("etc/passwd")).unwrap();
    assert!(passwd.contains("user:x:1000:1000"));
}

#[test]
fn zstd_layers_unpack_as_gzip_ones_do() {
    let (dir, store) = store();
    let mut unpacked = Vec::new();
    for compression in [LayerCompression::Gzip, LayerCompression::Zstd] {
        let mut image = ImageSpec {
            name: Some(format!("localhost/busybox-{compression:?}:1").to_lowercase()),
            compression,
            ..busybox_image()
        };
        // Two images (two configs) sharing one uncompressed layer.
        image.config["Labels"] = serde_json::json!({"compression": format!("{compression:?}")});
        let mut archive = OciArchive::new();
        let built = archive.add_image(&image);
        let path = dir.path().join(format!("busybox-{compression:?}.tar"));
        archive.write(&path, false);
        let report = store.import_file(&path, &ImportOptions::default()).unwrap();
        let record = &report.images[0];
        assert_eq!(record.id.to_string(), built.config.digest);
        let media: Vec<&str> = record
            .layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect();
        let fs_dir = store.layers().fs_dir(&record.layers[0].chain_id);
        let busybox = std::fs::metadata(fs_dir.join("bin/busybox")).unwrap();
        let ls = std::fs::metadata(fs_dir.join("bin/ls")).unwrap();
        assert_eq!(busybox.ino(), ls.ino(), "{compression:?}: hard links kept");
        unpacked.push((
            media.join(","),
            report.layers_unpacked,
            record.layers[0].chain_id.clone(),
        ));
    }
    assert_eq!(unpacked[0].0, "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_eq!(unpacked[1].0, "application/vnd.oci.image.layer.v1.tar+zstd");
    // The same uncompressed layer: one chain id, unpacked once.
    assert_eq!(unpacked[0].2, unpacked[1].2);
    assert_eq!((unpacked[0].1, unpacked[1].1), (1, 0));
}

#[test]
fn lookups_by_tag_id_prefix_and_digest() {
    let (dir, store) = store();
    let mut archive = OciArchive::new();
    let built = archive.add_image(&busybox_image());
    archive.write(&dir.path().join("a.tar"), true);
    store
        .import_file(&dir.path().join("a.tar"), &ImportOptions::default())
        .unwrap();
    let id = built.config.digest.clone();
    let hex = id.trim_start_matches("sha256:");
    for name in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox",
        "docker.io/library/busybox:latest",
        id.as_str(),
        hex,
        &hex[..12],
        &format!("busybox@{}", built.manifest.digest),
    ] {
        assert_eq!(store.get(name).unwrap().id.to_string(), id, "lookup {name}");
    }
    for missing in [
        "busybox:1.0",
        "alpine",
        "localhost/busybox",
        &format!("busybox@sha256:{}", "0".repeat(64)),
    ] {
        let err = store.get(missing).unwrap_err();
        assert!(err.is_not_found(), "{missing}: {err}");
    }
}

#[test]
fn docker_save_archive_imports_and_shares_layers() {
    let (dir, store) = store();
    let base = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/os-release", b"ID=caisson\n", 0o644)
        .build();
    let top_a = LayerBuilder::new().file("a.txt", b"a\n", 0o644).build();
    let top_b = LayerBuilder::new().file("b.txt", b"b\n", 0o644).build();
    let a = ImageSpec::new(Some("localhost/app-a:1"), vec![base.clone(), top_a]);
    let b = ImageSpec::new(Some("localhost:5000/team/app-b:2"), vec![base, top_b]);
    let (tar, built) = docker_save_archive(&[a, b]);
    let path = write(dir.path(), "save.tar", tar);

    let report = store.import_file(&path, &ImportOptions::default()).unwrap();
    assert_eq!(report.images.len(), 2);
    // The shared base layer is unpacked once.
    assert_eq!(report.layers_unpacked, 3);
    assert_eq!(store.layers().list().unwrap().len(), 3);
    let a = store.get("localhost/app-a:1").unwrap();
    let b = store.get("localhost:5000/team/app-b:2").unwrap();
    assert_eq!(a.id.to_string(), built[0].config.digest);
    assert_eq!(b.id.to_string(), built[1].config.digest);
    assert_eq!(a.layers[0].chain_id, b.layers[0].chain_id);
    assert_ne!(a.layers[1].chain_id, b.layers[1].chain_id);
    assert_eq!(a.layers[0].diff_id.to_string(), built[0].diff_ids[0]);
    // docker save carries no manifest: one was written and stored.
    assert!(store.content().contains(&a.manifest_digest));

    // Removing one image keeps the shared layer for the other.
    store.remove("localhost/app-a:1").unwrap();
    assert!(store.layers().contains(&b.layers[0].chain_id));
    assert!(!store.layers().contains(&a.layers[1].chain_id));
    assert!(!store.content().contains(&a.config_digest));
    assert!(store.content().contains(&b.config_digest));
}

#[test]
fn multi_platform_index_resolves_to_the_node_platform() {
    let (dir, store) = store();
    let mut archive = OciArchive::new();
    let built = archive.add_multi_platform_image(&busybox_image());
    archive.write(&dir.path().join("multi.tar.gz"), true);
    let report = store
        .import_file(&dir.path().join("multi.tar.gz"), &ImportOptions::default())
        .unwrap();
    assert_eq!(
        report.images[0].manifest_digest.to_string(),
        built.manifest.digest
    );
    assert_eq!(report.images[0].architecture, "amd64");
    assert!(store.get("busybox").is_ok());
}

#[test]
fn tag_only_ref_names_need_a_name_option() {
    let (dir, store) = store();
    let layer = LayerBuilder::new().file("x", b"x", 0o644).build();
    let mut archive = OciArchive::new();
    let built = archive.add_image_blobs(&ImageSpec::new(None, vec![layer]));
    let mut entry = built.manifest.json();
    entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v3"});
    archive.manifests.push(entry);
    archive.write(&dir.path().join("x.tar"), false);

    let untagged = store
        .import_file(&dir.path().join("x.tar"), &ImportOptions::default())
        .unwrap();
    assert!(untagged.images[0].repo_tags.is_empty());
    let named = store
        .import_file(
            &dir.path().join("x.tar"),
            &ImportOptions {
                name: Some("localhost/tool".into()),
            },
        )
        .unwrap();
    assert!(
        named.images[0]
            .repo_tags
            .contains(&"localhost/tool:v3".to_string()),
        "{:?}",
        named.images[0].repo_tags
    );
    assert_eq!(
        store.get("localhost/tool:v3").unwrap().id.to_string(),
        built.config.digest
    );
}

#[test]
fn foreign_platform_image_is_refused() {
    let (dir, store) = store();
    let mut spec = ImageSpec::new(
        Some("localhost/arm:1"),
        vec![LayerBuilder::new().file("x", b"x", 0o644).build()],
    );
    spec.architecture = "arm64".into();
    let mut archive = OciArchive::new();
    archive.add_image(&spec);
    archive.write(&dir.path().join("arm.tar"), false);
    let err = store
        .import_file(&dir.path().join("arm.tar"), &ImportOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    assert!(store.list().is_empty());
    assert!(store.content().list().unwrap().is_empty());
}

#[test]
fn usage_counts_hard_links_once() {
    let (dir, store) = store();
    let empty = store.usage();
    let mut archive = OciArchive::new();
    archive.add_image(&busybox_image());
    archive.write(&dir.path().join("b.tar"), true);
    store
        .import_file(&dir.path().join("b.tar"), &ImportOptions::default())
        .unwrap();
    let used = store.usage();
    let busybox = std::fs::metadata("/bin/busybox").unwrap().len();
    let gz = gzip(&caisson_tests::fixtures::busybox_layer()).len() as u64;
    // One unpacked busybox plus its compressed blob, give or take metadata.
    assert!(
        used.used_bytes >= empty.used_bytes + busybox + gz,
        "{used:?}"
    );
    assert!(
        used.used_bytes < empty.used_bytes + 2 * (busybox + gz),
        "hard links counted more than once: {used:?}"
    );
    assert!(used.inodes_used > empty.inodes_used + 10);
}
