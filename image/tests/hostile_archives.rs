//! Hostile and broken archives: each is imported into a fresh store and must
//! fail with the right error, naming what is wrong, and leave the store, and
//! everything around it, exactly as it was. Needs root (layers are unpacked
//! with their owners).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use caisson_image::archive::host_platform;
use caisson_image::{ImageError, ImageStore, ImportOptions};
use caisson_tests::fixtures::{
    docker_save_archive, gzip, sha256, zstd, ImageSpec, LayerBuilder, OciArchive, RawTar,
};
use caisson_tests::require;
use serde_json::json;

/// What an import of a hostile archive must fail with.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Unsafe,
    Malformed,
    DigestMismatch,
    SizeMismatch,
    MissingBlob,
}

impl Kind {
    fn matches(self, e: &ImageError) -> bool {
        matches!(
            (self, e),
            (Kind::Unsafe, ImageError::UnsafeEntry { .. })
                | (Kind::Malformed, ImageError::Malformed { .. })
                | (Kind::DigestMismatch, ImageError::DigestMismatch { .. })
                | (Kind::SizeMismatch, ImageError::SizeMismatch { .. })
                | (Kind::MissingBlob, ImageError::MissingBlob { .. })
        )
    }
}

struct Hostile {
    archive: Vec<u8>,
    kind: Kind,
    /// Text the error message must contain: the entry or blob at fault.
    mentions: String,
}

fn hostile(archive: Vec<u8>, kind: Kind, mentions: impl Into<String>) -> Hostile {
    Hostile {
        archive,
        kind,
        mentions: mentions.into(),
    }
}

/// An OCI archive (gzip layers) of one image with these uncompressed layers.
fn image_of(layers: Vec<Vec<u8>>) -> Vec<u8> {
    let mut archive = OciArchive::new();
    archive.add_image(&ImageSpec::new(Some("localhost/hostile:1"), layers));
    archive.to_tar()
}

/// An image of one (hostile) layer; the error must name `entry`.
fn layer_image(layer: Vec<u8>, kind: Kind, entry: &str) -> Hostile {
    hostile(image_of(vec![layer]), kind, entry)
}

fn good_layer() -> Vec<u8> {
    LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/os-release", b"ID=caisson\n", 0o644)
        .build()
}

/// Bytes that do not compress, so a truncated gzip stream is cut mid-data.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A manifest and config for `layers` (blob bytes and media type) with the
/// given diff ids, added to `archive` with an index entry; `tweak` may edit
/// the manifest JSON before it is stored.
fn custom_image(
    archive: &mut OciArchive,
    layers: &[(Vec<u8>, &str)],
    diff_ids: &[String],
    tweak: impl FnOnce(&mut serde_json::Value),
) {
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|(bytes, media)| archive.add_blob(media, bytes.clone()).json())
        .collect();
    let (os, arch) = host_platform();
    let config = json!({
        "architecture": arch,
        "os": os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = archive.add_blob(
        "application/vnd.oci.image.config.v1+json",
        serde_json::to_vec(&config).unwrap(),
    );
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.json(),
        "layers": layer_descs,
    });
    tweak(&mut manifest);
    let manifest = archive.add_blob(
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&manifest).unwrap(),
    );
    archive.manifests.push(manifest.json());
}

type Case = (&'static str, fn(&Path) -> Hostile);

/// Every case gets `outside`: an existing, empty directory next to the store
/// (under a fresh temp dir, so never a host path) that escapes aim at.
fn cases() -> Vec<Case> {
    vec![
        ("dotdot traversal", |_| {
            // <tmp>/store/layers/.tmp-*/fs/../../../../outside = <tmp>/outside
            let name = "../../../../outside/dotdot";
            layer_image(RawTar::new().file(name, b"x").finish(), Kind::Unsafe, name)
        }),
        ("dotdot inside a path", |_| {
            let name = "etc/../../../../../outside/inner-dotdot";
            let layer = RawTar::new().dir("etc/").file(name, b"x").finish();
            layer_image(layer, Kind::Unsafe, name)
        }),
        ("dotdot up to / then down", |outside| {
            let name = format!("{}{}/deep", "../".repeat(16), rel_to_root(outside));
            let layer = RawTar::new().file(&name, b"x").finish();
            layer_image(layer, Kind::Unsafe, &name)
        }),
        ("absolute path", |outside| {
            let name = format!("{}/absolute", outside.display());
            let layer = RawTar::new().file(&name, b"x").finish();
            layer_image(layer, Kind::Unsafe, &name)
        }),
        ("absolute directory", |outside| {
            let name = format!("{}/absdir/", outside.display());
            let layer = RawTar::new().dir(&name).finish();
            layer_image(layer, Kind::Unsafe, &name)
        }),
        ("symlink to / then a file through it", |outside| {
            let name = format!("evil/{}/via-root", rel_to_root(outside));
            let layer = RawTar::new()
                .symlink("evil", "/")
                .file(&name, b"x")
                .finish();
            layer_image(layer, Kind::Unsafe, &name)
        }),
        ("symlink to ../../../.. then a file through it", |_| {
            let name = "evil/outside/via-dotdot";
            let layer = RawTar::new()
                .symlink("evil", "../../../..")
                .file(name, b"x")
                .finish();
            layer_image(layer, Kind::Unsafe, name)
        }),
        (
            "symlink to outside then a directory through it",
            |outside| {
                let name = "evil/made-through-symlink/";
                let layer = RawTar::new()
                    .symlink("evil", &outside.display().to_string())
                    .dir(name)
                    .finish();
                layer_image(layer, Kind::Unsafe, "evil/made-through-symlink")
            },
        ),
        ("chain of relative symlinks", |_| {
            // Each link alone stays plausible; together they reach <tmp>.
            let name = "a/l1/outside/via-chain";
            let layer = RawTar::new()
                .dir("a/")
                .symlink("a/l1", "../l2")
                .symlink("l2", "l3")
                .symlink("l3", "../../../..")
                .file(name, b"x")
                .finish();
            layer_image(layer, Kind::Unsafe, name)
        }),
        ("hard link to ../../etc/passwd", |_| {
            let layer = RawTar::new()
                .hardlink("passwd", "../../etc/passwd")
                .finish();
            layer_image(layer, Kind::Unsafe, "passwd")
        }),
        ("hard link to /etc/passwd", |_| {
            let layer = RawTar::new().hardlink("passwd", "/etc/passwd").finish();
            layer_image(layer, Kind::Unsafe, "passwd")
        }),
        ("hard link through a symlink to /", |_| {
            let layer = RawTar::new()
                .symlink("evil", "/")
                .hardlink("passwd", "evil/etc/passwd")
                .finish();
            layer_image(layer, Kind::Unsafe, "passwd")
        }),
        ("hard link placed through a symlink to outside", |outside| {
            let layer = RawTar::new()
                .file("mine", b"x")
                .symlink("evil", &outside.display().to_string())
                .hardlink("evil/linked", "mine")
                .finish();
            layer_image(layer, Kind::Unsafe, "evil/linked")
        }),
        ("whiteout of ..", |_| {
            let name = "a/.wh...";
            layer_image(RawTar::new().file(name, b"").finish(), Kind::Unsafe, name)
        }),
        ("whiteout of .", |_| {
            let name = "a/.wh..";
            layer_image(RawTar::new().file(name, b"").finish(), Kind::Unsafe, name)
        }),
        ("whiteout of nothing", |_| {
            let name = ".wh.";
            layer_image(RawTar::new().file(name, b"").finish(), Kind::Unsafe, name)
        }),
        ("non-octal size field", |_| {
            let layer = RawTar::new()
                .file("fine", b"fine")
                .entry_with_size_field("bogus", b'0', "", b"zzzzzzzzzzz", b"data")
                .finish();
            layer_image(layer, Kind::Malformed, "bogus")
        }),
        ("size field larger than the data", |_| {
            let name = "truncated";
            let layer = RawTar::new()
                .entry_with_size_field(name, b'0', "", b"00000100000", &noise(1000))
                .finish();
            layer_image(layer, Kind::Malformed, name)
        }),
        ("bad header checksum", |_| {
            let mut layer = RawTar::new()
                .file("fine", b"fine")
                .file("corrupted", b"data")
                .finish();
            // The second header starts at 1024; change its name, not its sum.
            layer[1024] = b'C';
            layer_image(layer, Kind::Malformed, "checksum")
        }),
        ("truncated gzip layer", |_| {
            let layer = LayerBuilder::new()
                .file("big", &noise(256 * 1024), 0o644)
                .build();
            let mut blob = gzip(&layer);
            blob.truncate(blob.len() / 2);
            let mut archive = OciArchive::new();
            custom_image(
                &mut archive,
                &[(blob, "application/vnd.oci.image.layer.v1.tar+gzip")],
                &[sha256(&layer)],
                |_| {},
            );
            hostile(archive.to_tar(), Kind::Malformed, "\"big\"")
        }),
        ("dotdot traversal in a zstd layer", |_| {
            let name = "../../../../outside/zstd-dotdot";
            let layer = RawTar::new().file(name, b"x").finish();
            let mut archive = OciArchive::new();
            custom_image(
                &mut archive,
                &[(zstd(&layer), "application/vnd.oci.image.layer.v1.tar+zstd")],
                &[sha256(&layer)],
                |_| {},
            );
            hostile(archive.to_tar(), Kind::Unsafe, name)
        }),
        ("truncated zstd layer", |_| {
            let layer = LayerBuilder::new()
                .file("big", &noise(256 * 1024), 0o644)
                .build();
            let mut blob = zstd(&layer);
            blob.truncate(blob.len() / 2);
            let mut archive = OciArchive::new();
            custom_image(
                &mut archive,
                &[(blob, "application/vnd.oci.image.layer.v1.tar+zstd")],
                &[sha256(&layer)],
                |_| {},
            );
            hostile(archive.to_tar(), Kind::Malformed, "\"big\"")
        }),
        ("zstd layer whose content is not its diff id", |_| {
            let layer = good_layer();
            let other = LayerBuilder::new().file("other", b"y", 0o644).build();
            let mut archive = OciArchive::new();
            custom_image(
                &mut archive,
                &[(zstd(&layer), "application/vnd.oci.image.layer.v1.tar+zstd")],
                &[sha256(&other)],
                |_| {},
            );
            hostile(archive.to_tar(), Kind::DigestMismatch, "diff id")
        }),
        ("truncated gzip archive", |_| {
            let layer = LayerBuilder::new()
                .file("big", &noise(256 * 1024), 0o644)
                .build();
            let mut archive = gzip(&image_of(vec![layer]));
            archive.truncate(archive.len() / 2);
            hostile(archive, Kind::Malformed, "")
        }),
        ("blob content does not match its name", |_| {
            let mut archive = OciArchive::new();
            let built = archive.add_image(&ImageSpec::new(None, vec![good_layer()]));
            let hex = built.layers[0].hex().to_string();
            archive
                .blobs
                .insert(hex.clone(), gzip(b"not the layer that was named"));
            hostile(archive.to_tar(), Kind::DigestMismatch, hex)
        }),
        ("manifest names a missing layer", |_| {
            let mut archive = OciArchive::new();
            let built = archive.add_image(&ImageSpec::new(None, vec![good_layer()]));
            archive.blobs.remove(built.layers[0].hex());
            hostile(
                archive.to_tar(),
                Kind::MissingBlob,
                built.layers[0].digest.clone(),
            )
        }),
        ("manifest names a missing config", |_| {
            let mut archive = OciArchive::new();
            let built = archive.add_image(&ImageSpec::new(None, vec![good_layer()]));
            archive.blobs.remove(built.config.hex());
            hostile(
                archive.to_tar(),
                Kind::MissingBlob,
                built.config.digest.clone(),
            )
        }),
        ("index names a missing manifest", |_| {
            let mut archive = OciArchive::new();
            let built = archive.add_image(&ImageSpec::new(None, vec![good_layer()]));
            archive.blobs.remove(built.manifest.hex());
            hostile(
                archive.to_tar(),
                Kind::MissingBlob,
                built.manifest.digest.clone(),
            )
        }),
        ("layer descriptor size is wrong", |_| {
            let layer = good_layer();
            let blob = gzip(&layer);
            let digest = sha256(&blob);
            let mut archive = OciArchive::new();
            custom_image(
                &mut archive,
                &[(blob, "application/vnd.oci.image.layer.v1.tar+gzip")],
                &[sha256(&layer)],
                |m| {
                    let size = m["layers"][0]["size"].as_u64().unwrap();
                    m["layers"][0]["size"] = json!(size + 1);
                },
            );
            hostile(archive.to_tar(), Kind::SizeMismatch, digest)
        }),
        ("config diff id is wrong", |_| {
            let blob = gzip(&good_layer());
            let digest = sha256(&blob);
            let mut archive = OciArchive::new();
            custom_image(
                &mut archive,
                &[(blob, "application/vnd.oci.image.layer.v1.tar+gzip")],
                &[sha256(b"some other layer")],
                |_| {},
            );
            hostile(archive.to_tar(), Kind::DigestMismatch, digest)
        }),
        ("OCI layout without its oci-layout file", |_| {
            let mut archive = OciArchive::new();
            archive.add_image(&ImageSpec::new(None, vec![good_layer()]));
            archive.omit_layout_file = true;
            hostile(archive.to_tar(), Kind::Malformed, "oci-layout")
        }),
        ("tar that is neither format", |_| {
            let archive = RawTar::new().file("hello.txt", b"hello").finish();
            hostile(archive, Kind::Malformed, "index.json")
        }),
        ("not a tar at all", |_| {
            hostile(noise(4096), Kind::Malformed, "image archive")
        }),
        ("dotdot in the archive's own entry names", |_| {
            let name = "../outside/archive-dotdot";
            let mut good = OciArchive::new();
            good.add_image(&ImageSpec::new(None, vec![good_layer()]));
            let mut archive = RawTar::new().file(name, b"x").into_bytes();
            archive.extend(good.to_tar());
            hostile(archive, Kind::Unsafe, name)
        }),
        ("archive symlink leaving the archive", |_| {
            let archive = RawTar::new()
                .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
                .symlink("blobs/sha256/escape", "../../../../etc/passwd")
                .finish();
            hostile(archive, Kind::Unsafe, "blobs/sha256/escape")
        }),
        ("docker save naming a missing layer", |_| {
            let config = serde_json::to_vec(&json!({
                "architecture": host_platform().1, "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha256(b"x")]},
            }))
            .unwrap();
            let manifest =
                json!([{"Config": "config.json", "RepoTags": [], "Layers": ["abc/layer.tar"]}]);
            let archive = RawTar::new()
                .file("config.json", &config)
                .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
                .finish();
            hostile(archive, Kind::MissingBlob, "abc/layer.tar")
        }),
        ("good layer then a hostile one (OCI)", |_| {
            let name = "../../../../outside/second-layer";
            let evil = RawTar::new().file(name, b"x").finish();
            hostile(image_of(vec![good_layer(), evil]), Kind::Unsafe, name)
        }),
        ("good layer then a hostile one (docker save)", |_| {
            let evil = RawTar::new()
                .symlink("evil", "/")
                .file("evil/etc/caisson-hostile", b"x")
                .finish();
            let spec = ImageSpec::new(Some("localhost/hostile:1"), vec![good_layer(), evil]);
            let (archive, _) = docker_save_archive(&[spec]);
            hostile(archive, Kind::Unsafe, "evil/etc/caisson-hostile")
        }),
    ]
}

/// `/tmp/x/y` → `tmp/x/y`.
fn rel_to_root(path: &Path) -> String {
    path.display()
        .to_string()
        .trim_start_matches('/')
        .to_string()
}

/// Every path under `dir` (relative), with a type letter.
fn tree(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let ft = entry.file_type().unwrap();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else {
                'f'
            };
            out.insert(format!("{kind} {rel}"));
            if ft.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn hostile_archives_fail_and_leave_nothing_behind() {
    require::root("layers are unpacked with their owners");
    let mut failures = Vec::new();
    for (name, build) in cases() {
        let tmp = tempfile::tempdir().unwrap();
        let tmp_path = fs::canonicalize(tmp.path()).unwrap();
        let outside: PathBuf = tmp_path.join("outside");
        fs::create_dir(&outside).unwrap();
        let root = tmp_path.join("store");
        let store = ImageStore::open(&root).unwrap();
        let case = build(&outside);
        let before = tree(&tmp_path);

        let result = store.import(&case.archive[..], &ImportOptions::default());

        let mut problems = Vec::new();
        match &result {
            Ok(report) => problems.push(format!("imported {} image(s)", report.images.len())),
            Err(e) => {
                let msg = e.to_string();
                eprintln!("{name}: {msg}");
                if !case.kind.matches(e) {
                    problems.push(format!("expected {:?}, got {e:?}", case.kind));
                }
                if !msg.contains(&case.mentions) {
                    problems.push(format!(
                        "error {msg:?} does not mention {:?}",
                        case.mentions
                    ));
                }
            }
        }
        if !store.list().is_empty() {
            problems.push("an image was recorded".into());
        }
        if !store.content().list().unwrap().is_empty() {
            problems.push("blobs were left in the content store".into());
        }
        if !store.layers().list().unwrap().is_empty() {
            problems.push("layers were left in the layer store".into());
        }
        let ingest = entries(&root.join("content/ingest"));
        if !ingest.is_empty() {
            problems.push(format!("content/ingest holds {ingest:?}"));
        }
        let tmp_layers: Vec<_> = entries(&root.join("layers"))
            .into_iter()
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        if !tmp_layers.is_empty() {
            problems.push(format!("layers/ holds {tmp_layers:?}"));
        }
        let outside_now = entries(&outside);
        if !outside_now.is_empty() {
            problems.push(format!("written outside the store: {outside_now:?}"));
        }
        let after = tree(&tmp_path);
        if after != before {
            let added: Vec<_> = after.difference(&before).collect();
            let removed: Vec<_> = before.difference(&after).collect();
            problems.push(format!(
                "files changed: added {added:?}, removed {removed:?}"
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{name}: {}", problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
