//! Pulls from a real registry: Debian's `docker-registry` on 127.0.0.1,
//! started by each test (plain HTTP, htpasswd auth, or TLS with a CA the
//! test makes), filled with `skopeo` from fixture archives. Store-level
//! pulls through `caisson_image::Puller`, then PullImage end to end through
//! `caissond`. Needs root (unpacking sets owners) and the Debian packages
//! docker-registry, skopeo, apache2-utils, openssl.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caisson_image::pull::HostConfig;
use caisson_image::{Credentials, ImageError, ImageStore, Puller, RegistriesConfig};
use caisson_tests::fixtures::{busybox_image, ImageSpec, LayerBuilder, OciArchive};
use caisson_tests::registry::{
    multi_platform_archive, Blackhole, CuttingProxy, DeadPort, Registry, Setup,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn new_store() -> (tempfile::TempDir, Arc<ImageStore>) {
    caisson_tests::require::root("unpacking layers sets owners and makes device nodes");
    let dir = tempfile::Builder::new()
        .prefix("pull-store-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = Arc::new(ImageStore::open(dir.path()).unwrap());
    (dir, store)
}

fn plain() -> HostConfig {
    HostConfig {
        plain_http: Some(true),
        ..Default::default()
    }
}

/// A config with short timeouts and the given host entries.
fn config(hosts: Vec<(String, HostConfig)>) -> RegistriesConfig {
    let c = RegistriesConfig {
        connect_timeout: 3,
        read_timeout: 3,
        hosts: hosts.into_iter().collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };
    c.validate().expect("test config is valid");
    c
}

fn anonymous() -> Credentials {
    Credentials::default()
}

/// A small image of its own: one layer with one file of `size` bytes of
/// seeded noise (`seed` makes it differ from others).
fn noise_image(name: &str, seed: u8, size: usize) -> ImageSpec {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let layer = LayerBuilder::new()
        .dir("data", 0o755)
        .file(&format!("data/noise-{seed}"), &data, 0o644)
        .build();
    ImageSpec::new(Some(name), vec![layer])
}

/// Nothing of a failed pull is left: no image, blob, layer or temp file.
fn assert_store_empty(store: &ImageStore) {
    assert!(store.list().is_empty(), "images: {:?}", store.list());
    assert!(
        store.content().list().unwrap().is_empty(),
        "blobs: {:?}",
        store.content().list().unwrap()
    );
    assert!(store.layers().list().unwrap().is_empty(), "layers left");
    let ingest: Vec<_> = std::fs::read_dir(store.root().join("content/ingest"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(ingest.is_empty(), "ingest: {ingest:?}");
    let layer_tmp: Vec<_> = std::fs::read_dir(store.root().join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(layer_tmp.is_empty(), "layers dir: {layer_tmp:?}");
}

#[test]
fn pulls_by_tag_and_by_digest_over_plain_http() {
    let rt = rt();
    let reg = Registry::start(Setup::PlainHttp);
    let built = reg.push_image(&busybox_image(), "library/busybox:1.36");
    let host = reg.host();
    let name = format!("{host}/library/busybox:1.36");

    let (_dir, store) = new_store();
    let puller = Puller::new(store.clone(), config(vec![(host.clone(), plain())]));
    let report = rt.block_on(puller.pull(&name, &anonymous())).unwrap();
    let image = &report.image;
    assert_eq!(image.id.to_string(), built.config.digest);
    assert_eq!(image.repo_tags, vec![name.clone()]);
    let repo_digest = format!("{host}/library/busybox@{}", built.manifest.digest);
    assert_eq!(image.repo_digests, vec![repo_digest.clone()]);
    assert_eq!(report.registry, host);
    assert_eq!(report.blobs_downloaded, 2, "config and one layer");
    let blob_bytes = built.config.size + built.layers.iter().map(|l| l.size).sum::<u64>();
    assert_eq!(report.bytes_downloaded, blob_bytes);
    assert_eq!(image.size, built.manifest.size + blob_bytes);
    assert_eq!(report.layers_unpacked, 1);
    let layer_fs = store.layers().fs_dir(&image.layers[0].chain_id);
    assert!(layer_fs.join("bin/busybox").is_file(), "unpacked busybox");
    assert!(store.content().contains(&image.manifest_digest));
    for name in [name.as_str(), repo_digest.as_str()] {
        assert_eq!(store.get(name).unwrap().id, image.id, "{name}");
    }

    // Again: resolved, found in the store, nothing downloaded.
    let again = rt.block_on(puller.pull(&name, &anonymous())).unwrap();
    assert_eq!(
        (again.image.id.clone(), again.bytes_downloaded),
        (image.id.clone(), 0)
    );

    // By digest into a fresh store: the same image, named by its digest only.
    let (_dir2, store2) = new_store();
    let puller2 = Puller::new(store2.clone(), config(vec![(host.clone(), plain())]));
    let by_digest = rt
        .block_on(puller2.pull(&repo_digest, &anonymous()))
        .unwrap();
    assert_eq!(by_digest.image.id, image.id);
    assert!(by_digest.image.repo_tags.is_empty());
    assert_eq!(by_digest.image.repo_digests, vec![repo_digest.clone()]);
    // A digest that is here needs no registry.
    let mut reg = reg;
    reg.stop();
    let offline = rt
        .block_on(puller2.pull(&repo_digest, &anonymous()))
        .unwrap();
    assert_eq!(offline.image.id, image.id);
}

#[test]
fn pulls_docker_schema2_manifests_and_manifest_lists() {
    let rt = rt();
    let reg = Registry::start(Setup::PlainHttp);
    let host = reg.host();
    let archive = reg.dir.path().join("multi.tar");
    let amd64 = noise_image("x/multi:1", 1, 64 * 1024);
    let arm64 = noise_image("x/multi:1", 2, 64 * 1024);
    let (_index, built_amd, _) = multi_platform_archive(&archive, &amd64, &arm64, "1");
    reg.push(&archive, None, "docker/multi:1", Some("v2s2"));

    let (_dir, store) = new_store();
    let puller = Puller::new(store.clone(), config(vec![(host.clone(), plain())]));
    let name = format!("{host}/docker/multi:1");
    let report = rt.block_on(puller.pull(&name, &anonymous())).unwrap();
    // skopeo rewrote the manifests (Docker media types): the config is the same.
    assert_eq!(report.image.id.to_string(), built_amd.config.digest);
    assert_eq!(
        report.image.layers[0].media_type,
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    assert_eq!(
        report.image.repo_digests.len(),
        2,
        "list and manifest digests"
    );
    let list_digest = &report.image.repo_digests[0];
    let raw = String::from_utf8(
        std::fs::read(store.content().path(&report.image.manifest_digest)).unwrap(),
    )
    .unwrap();
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw}"
    );
    assert!(store.get(list_digest).is_ok());
}

#[test]
fn resolves_a_multi_platform_index_to_linux_amd64() {
    let rt = rt();
    let reg = Registry::start(Setup::PlainHttp);
    let host = reg.host();
    let archive = reg.dir.path().join("multi.tar");
    let amd64 = busybox_image();
    let arm64 = noise_image("x/multi:1", 3, 32 * 1024);
    let (index, built_amd, built_arm) = multi_platform_archive(&archive, &amd64, &arm64, "v1");
    reg.push(&archive, None, "team/multi:v1", None);

    let (_dir, store) = new_store();
    let puller = Puller::new(store.clone(), config(vec![(host.clone(), plain())]));
    let report = rt
        .block_on(puller.pull(&format!("{host}/team/multi:v1"), &anonymous()))
        .unwrap();
    let image = &report.image;
    assert_eq!(image.id.to_string(), built_amd.config.digest);
    assert_eq!(image.architecture, "amd64");
    assert_eq!(image.manifest_digest.to_string(), built_amd.manifest.digest);
    assert_eq!(
        image.repo_digests,
        vec![
            format!("{host}/team/multi@{}", index.digest),
            format!("{host}/team/multi@{}", built_amd.manifest.digest),
        ]
    );
    // Nothing of the arm64 image was fetched.
    for blob in std::iter::once(&built_arm.config).chain(&built_arm.layers) {
        let d = blob.digest.parse().unwrap();
        assert!(!store.content().contains(&d), "arm64 blob {}", blob.digest);
    }
    assert_eq!(report.blobs_downloaded, 2);

    // By the index digest, from a fresh store: the same amd64 image.
    let (_dir2, store2) = new_store();
    let puller2 = Puller::new(store2, config(vec![(host.clone(), plain())]));
    let by_index = rt
        .block_on(puller2.pull(&format!("{host}/team/multi@{}", index.digest), &anonymous()))
        .unwrap();
    assert_eq!(by_index.image.id, image.id);
}

#[test]
fn pulls_docker_io_images_through_a_mirror() {
    let rt = rt();
    let reg = Registry::start(Setup::PlainHttp);
    let built = reg.push_image(&busybox_image(), "library/busybox:1.36");
    let dead = DeadPort::new();
    let (_dir, store) = new_store();
    let docker_io = HostConfig {
        // A mirror that is down is skipped; the next one serves.
        mirrors: vec![
            format!("http://{}", dead.address()),
            format!("http://{}", reg.host()),
        ],
        ..Default::default()
    };
    let puller = Puller::new(
        store.clone(),
        config(vec![("docker.io".to_string(), docker_io)]),
    );
    let report = rt
        .block_on(puller.pull("busybox:1.36", &anonymous()))
        .unwrap();
    assert_eq!(report.registry, reg.host());
    assert_eq!(report.image.id.to_string(), built.config.digest);
    assert_eq!(
        report.image.repo_tags,
        vec!["docker.io/library/busybox:1.36".to_string()]
    );
    assert_eq!(
        report.image.repo_digests,
        vec![format!(
            "docker.io/library/busybox@{}",
            built.manifest.digest
        )]
    );
    assert!(store.get("busybox:1.36").is_ok());
    // The mirror was asked on behalf of docker.io (containerd's `ns` parameter).
    assert!(reg.log().contains("ns=docker.io"), "{}", reg.log());
}

#[test]
fn htpasswd_auth_and_a_wrong_password_names_the_registry() {
    let rt = rt();
    let (user, password) = ("puller", "s3cret-pw");
    let reg = Registry::start(Setup::Htpasswd {
        user: user.into(),
        password: password.into(),
    });
    let built = reg.push_image(&busybox_image(), "private/app:1");
    let host = reg.host();
    let name = format!("{host}/private/app:1");

    let (_dir, store) = new_store();
    let puller = Puller::new(store.clone(), config(vec![(host.clone(), plain())]));
    for creds in [
        Credentials::new(user, "wrong", "", "", "").unwrap(),
        anonymous(),
    ] {
        let err = rt.block_on(puller.pull(&name, &creds)).unwrap_err();
        assert!(
            matches!(&err, ImageError::RegistryUnauthorized { registry, .. } if *registry == host),
            "{creds:?}: {err:?}"
        );
        assert!(err.to_string().contains(&host), "{err}");
    }
    assert_store_empty(&store);

    let right = Credentials::new(user, password, "", "", "").unwrap();
    let report = rt.block_on(puller.pull(&name, &right)).unwrap();
    assert_eq!(report.image.id.to_string(), built.config.digest);

    // Docker's `auth` (base64 user:password), and credentials from the config.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let (_dir2, store2) = new_store();
    let puller2 = Puller::new(store2, config(vec![(host.clone(), plain())]));
    let via_auth = Credentials::new("", "", &b64, "", "").unwrap();
    rt.block_on(puller2.pull(&name, &via_auth)).unwrap();
    let (_dir3, store3) = new_store();
    let with_creds = HostConfig {
        plain_http: Some(true),
        username: user.into(),
        password: password.into(),
        ..Default::default()
    };
    let puller3 = Puller::new(store3, config(vec![(host.clone(), with_creds)]));
    rt.block_on(puller3.pull(&name, &anonymous())).unwrap();
}

#[test]
fn tls_with_a_test_ca() {
    let rt = rt();
    let reg = Registry::start(Setup::Tls);
    let built = reg.push_image(&busybox_image(), "secure/app:1");
    let host = reg.host();
    let name = format!("{host}/secure/app:1");

    // Without the CA the system store does not trust the registry.
    let (_dir, store) = new_store();
    let puller = Puller::new(store.clone(), config(vec![]));
    let err = rt.block_on(puller.pull(&name, &anonymous())).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&host), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert_store_empty(&store);

    let with_ca = HostConfig {
        ca_file: reg.ca_file.clone(),
        ..Default::default()
    };
    let puller = Puller::new(store.clone(), config(vec![(host.clone(), with_ca)]));
    let report = rt.block_on(puller.pull(&name, &anonymous())).unwrap();
    assert_eq!(report.image.id.to_string(), built.config.digest);
}

#[test]
fn a_registry_that_is_down_fails_within_the_timeout() {
    let rt = rt();
    let (_dir, store) = new_store();
    // Nobody listening: refused at once.
    let dead_port = DeadPort::new();
    let dead = dead_port.address();
    let puller = Puller::new(store.clone(), config(vec![(dead.clone(), plain())]));
    let started = Instant::now();
    let err = rt
        .block_on(puller.pull(&format!("{dead}/x/y:1"), &anonymous()))
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::RegistryUnreachable { registry, .. } if *registry == dead),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Accepts and never answers: given up after the read timeout (3 s here).
    let hole = Blackhole::start();
    let hung = format!("127.0.0.1:{}", hole.port);
    let puller = Puller::new(store.clone(), config(vec![(hung.clone(), plain())]));
    let started = Instant::now();
    let err = rt
        .block_on(puller.pull(&format!("{hung}/x/y:1"), &anonymous()))
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(&err, ImageError::RegistryUnreachable { registry, .. } if *registry == hung),
        "{err:?}"
    );
    assert!(err.to_string().contains("timeout"), "{err}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert_store_empty(&store);
}

#[test]
fn a_corrupted_blob_is_a_digest_error_and_nothing_is_stored() {
    let rt = rt();
    let reg = Registry::start(Setup::PlainHttp);
    let built = reg.push_image(&busybox_image(), "bad/app:1");
    reg.corrupt_blob(&built.layers[0].digest);
    let (_dir, store) = new_store();
    let puller = Puller::new(store.clone(), config(vec![(reg.host(), plain())]));
    let err = rt
        .block_on(puller.pull(&format!("{}/bad/app:1", reg.host()), &anonymous()))
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&built.layers[0].digest), "{err}");
    assert_store_empty(&store);
}

#[test]
fn an_interrupted_download_leaves_nothing_and_a_retry_works() {
    let rt = rt();
    let reg = Registry::start(Setup::PlainHttp);
    let built = reg.push_image(&noise_image("cut/app:1", 4, 2 << 20), "cut/app:1");
    // Manifests and config get through; the 2 MB layer is cut after 256 KiB.
    let proxy = CuttingProxy::start(reg.port, 256 * 1024);
    let via_proxy = format!("127.0.0.1:{}", proxy.port);
    let (_dir, store) = new_store();
    let puller = Puller::new(
        store.clone(),
        config(vec![(via_proxy.clone(), plain()), (reg.host(), plain())]),
    );
    let err = rt
        .block_on(puller.pull(&format!("{via_proxy}/cut/app:1"), &anonymous()))
        .unwrap_err();
    assert!(err.to_string().contains(&via_proxy), "{err}");
    assert_store_empty(&store);
    let report = rt
        .block_on(puller.pull(&format!("{}/cut/app:1", reg.host()), &anonymous()))
        .unwrap();
    assert_eq!(report.image.id.to_string(), built.config.digest);
}

#[test]
fn leftovers_of_a_crashed_pull_are_removed_when_the_store_opens() {
    let (dir, store) = new_store();
    let mut staging = store.content().staging().unwrap();
    staging.add_bytes(b"half a pull", "blob").unwrap();
    let mut w = staging.writer(None, "partial").unwrap();
    std::io::Write::write_all(&mut w, b"partial").unwrap();
    // A crash: neither is dropped.
    std::mem::forget(w);
    std::mem::forget(staging);
    drop(store);
    let ingest = dir.path().join("content/ingest");
    assert_eq!(std::fs::read_dir(&ingest).unwrap().count(), 1);
    let reopened = ImageStore::open(dir.path()).unwrap();
    assert_store_empty(&reopened);
}

#[test]
fn shared_layers_download_once_and_concurrent_pulls_share_one_download() {
    let rt = rt();
    let reg = Registry::start(Setup::PlainHttp);
    let host = reg.host();
    let base = busybox_image();
    let built_a = reg.push_image(&base, "shared/a:1");
    let mut b = base.clone();
    b.layers.push(
        LayerBuilder::new()
            .file("etc/b.conf", b"b=1\n", 0o644)
            .build(),
    );
    let built_b = reg.push_image(&b, "shared/b:1");
    assert_eq!(built_a.layers[0], built_b.layers[0]);

    let (_dir, store) = new_store();
    let puller = Arc::new(Puller::new(
        store.clone(),
        config(vec![(host.clone(), plain())]),
    ));
    rt.block_on(puller.pull(&format!("{host}/shared/a:1"), &anonymous()))
        .unwrap();
    let report_b = rt
        .block_on(puller.pull(&format!("{host}/shared/b:1"), &anonymous()))
        .unwrap();
    assert_eq!(report_b.blobs_present, 1, "busybox layer already here");
    assert_eq!(report_b.blobs_downloaded, 2, "config and the new layer");
    assert_eq!(report_b.layers_unpacked, 1);
    let base_layer = format!("/blobs/{}", built_a.layers[0].digest);
    assert_eq!(reg.gets(&base_layer), 1, "{}", reg.log());

    // Four concurrent pulls of one image under two tags: one download.
    let big = ImageSpec::new(
        Some("shared/big:1"),
        (0..3)
            .map(|n| noise_image("x", 10 + n, 3 << 20).layers.remove(0))
            .collect(),
    );
    let mut archive = OciArchive::new();
    let built_big = archive.add_image(&big);
    let path = reg.dir.path().join("big.tar");
    archive.write(&path, false);
    reg.push(&path, None, "shared/big:1", None);
    reg.push(&path, None, "shared/big:2", None);
    let before: Vec<usize> = built_big
        .layers
        .iter()
        .map(|l| reg.gets(&format!("/blobs/{}", l.digest)))
        .collect();
    let names = [
        format!("{host}/shared/big:1"),
        format!("{host}/shared/big:2"),
        format!("{host}/shared/big:1"),
        format!("{host}/shared/big:2"),
    ];
    let reports = rt.block_on(async {
        let tasks: Vec<_> = names
            .iter()
            .map(|n| {
                let puller = puller.clone();
                let n = n.clone();
                tokio::spawn(async move { puller.pull(&n, &Credentials::default()).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    });
    for r in &reports {
        assert_eq!(r.image.id.to_string(), built_big.config.digest);
    }
    // One pull downloaded; the others waited for it (or found it done).
    let downloaders = reports
        .iter()
        .filter(|r| !r.shared && r.bytes_downloaded > 0)
        .count();
    assert_eq!(downloaders, 1, "{reports:?}");
    for (layer, before) in built_big.layers.iter().zip(before) {
        let gets = reg.gets(&format!("/blobs/{}", layer.digest)) - before;
        assert_eq!(gets, 1, "layer {} fetched {gets} times", layer.digest);
    }
    let image = store.get(&names[0]).unwrap();
    let mut tags = image.repo_tags.clone();
    tags.sort();
    assert_eq!(tags, vec![names[0].clone(), names[1].clone()]);
}

// ---- end to end: PullImage through caissond ----

mod through_caissond {
    use super::*;
    use caisson_tests::daemon::{container_config, Caissond};
    use k8s_cri::v1 as cri;

    fn spec(name: &str) -> Option<cri::ImageSpec> {
        Some(cri::ImageSpec {
            image: name.into(),
            ..Default::default()
        })
    }

    fn pull(
        d: &Caissond,
        name: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let mut images = d.images();
        d.rt.block_on(images.pull_image(cri::PullImageRequest {
            image: spec(name),
            auth,
            sandbox_config: None,
        }))
        .map(|r| r.into_inner().image_ref)
    }

    fn status(d: &Caissond, name: &str) -> Option<cri::Image> {
        let mut images = d.images();
        d.ok(
            "ImageStatus",
            d.rt.block_on(images.image_status(cri::ImageStatusRequest {
                image: spec(name),
                verbose: false,
            })),
        )
        .image
    }

    /// caissond's `[registries]`, as dotted keys (the harness puts them first).
    fn registries(plain_hosts: &[&str]) -> String {
        let mut out = "registries.connect_timeout = 3\nregistries.read_timeout = 3\n".to_string();
        for host in plain_hosts {
            out.push_str(&format!("registries.hosts.\"{host}\".plain_http = true\n"));
        }
        out
    }

    fn layer_dirs(d: &Caissond) -> Vec<String> {
        std::fs::read_dir(d.dir.path().join("root/images/layers"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn pull_run_and_remove_while_a_container_uses_the_image() {
        let reg = Registry::start(Setup::PlainHttp);
        let mut busybox = busybox_image();
        busybox.config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"], "User": "0"});
        let built = reg.push_image(&busybox, "library/busybox:pulled");
        let host = reg.host();
        let name = format!("{host}/library/busybox:pulled");
        let d = Caissond::start(&registries(&[&host]));

        let image_ref = pull(&d, &name, None).unwrap_or_else(|e| panic!("{e}\n{}", d.log_tail()));
        assert_eq!(image_ref, built.config.digest);
        let image = status(&d, &name).expect("ImageStatus of the pulled image");
        assert_eq!(image.id, built.config.digest);
        assert_eq!(image.repo_tags, vec![name.clone()]);
        assert_eq!(
            image.repo_digests,
            vec![format!("{host}/library/busybox@{}", built.manifest.digest)]
        );
        let blob_bytes = built.config.size + built.layers.iter().map(|l| l.size).sum::<u64>();
        assert_eq!(image.size, built.manifest.size + blob_bytes);
        assert_eq!(image.uid.map(|u| u.value), Some(0));
        assert!(d.log_tail().contains("pulled image"), "{}", d.log_tail());

        let mut images = d.images();
        let fs = d.ok(
            "ImageFsInfo",
            d.rt.block_on(images.image_fs_info(cri::ImageFsInfoRequest {})),
        );
        let used = fs.image_filesystems[0].used_bytes.as_ref().unwrap().value;
        assert!(used >= blob_bytes, "ImageFsInfo used {used} < {blob_bytes}");

        // A container from the pulled image, then the image removed under it.
        let pod_config = d.pod_config("pulled");
        let pod = d.run_pod(&pod_config);
        let mut cc = container_config("app", &["sleep", "3600"]);
        cc.image = spec(&name);
        let ctr = d.create_started_container(&pod, &pod_config, cc);
        assert!(d.exec(&ctr, &["ls", "/bin"]).contains("busybox"));
        let layers_before = layer_dirs(&d);
        assert_eq!(layers_before.len(), 1);

        let mut images = d.images();
        d.ok(
            "RemoveImage",
            d.rt.block_on(images.remove_image(cri::RemoveImageRequest { image: spec(&name) })),
        );
        assert!(status(&d, &name).is_none());
        assert_eq!(
            layer_dirs(&d),
            layers_before,
            "the container's layer survives"
        );
        assert!(d.exec(&ctr, &["cat", "/bin/busybox"]).len() > 100_000);

        // Pulled again while the container still runs: the layer is reused.
        assert_eq!(pull(&d, &name, None).unwrap(), built.config.digest);
        assert_eq!(layer_dirs(&d), layers_before);
        d.stop_pod(&pod);
        d.remove_pod(&pod);
    }

    #[test]
    fn registry_errors_become_grpc_codes_naming_the_registry() {
        let (user, password) = ("kube", "letmein");
        let reg = Registry::start(Setup::Htpasswd {
            user: user.into(),
            password: password.into(),
        });
        let built = reg.push_image(&busybox_image(), "private/app:1");
        let host = reg.host();
        let name = format!("{host}/private/app:1");
        let dead_port = DeadPort::new();
        let dead = dead_port.address();
        let d = Caissond::start(&registries(&[&host, &dead]));

        let wrong = cri::AuthConfig {
            username: user.into(),
            password: "nope".into(),
            ..Default::default()
        };
        let err = pull(&d, &name, Some(wrong)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains(&host), "{err:?}");
        let err = pull(&d, &name, None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

        let right = cri::AuthConfig {
            username: user.into(),
            password: password.into(),
            ..Default::default()
        };
        assert_eq!(
            pull(&d, &name, Some(right.clone())).unwrap(),
            built.config.digest
        );
        let missing = pull(&d, &format!("{host}/private/nosuch:1"), Some(right)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

        let started = Instant::now();
        let down = pull(&d, &format!("{dead}/x/y:1"), None).unwrap_err();
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
        assert!(down.message().contains(&dead), "{down:?}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let bad_auth = cri::AuthConfig {
            auth: "!!not base64".into(),
            ..Default::default()
        };
        let err = pull(&d, &name, Some(bad_auth)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
}
