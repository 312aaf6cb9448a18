//! The loopback registry convention (containerd's and Docker's): a registry
//! on `localhost`, 127.0.0.0/8 or ::1 is pulled from over plain HTTP with no
//! configuration, after HTTPS is tried; a TLS one there keeps HTTPS; a
//! registry elsewhere still needs `plain_http = true`. Against Debian's
//! `docker-registry` (on 127.0.0.1, or on an address of a veth pair the test
//! adds and removes), store-level through `Puller` and end to end through
//! `caissond`'s PullImage. Needs root and the Debian packages
//! docker-registry, skopeo, openssl, iproute2.

use std::sync::Arc;

use caisson_image::pull::HostConfig;
use caisson_image::{Credentials, ImageError, ImageStore, Puller, RegistriesConfig};
use caisson_tests::fixtures::{busybox_image, ImageSpec};
use caisson_tests::registry::{LocalAddress, Registry, Setup};

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

/// Short timeouts and the given host entries (none: no registry configuration).
fn config(hosts: Vec<(String, HostConfig)>) -> RegistriesConfig {
    let c = RegistriesConfig {
        connect_timeout: 3,
        read_timeout: 3,
        hosts: hosts.into_iter().collect(),
        ..Default::default()
    };
    c.validate().expect("test config is valid");
    c
}

fn anonymous() -> Credentials {
    Credentials::default()
}

/// Access-log lines for a manifest of `repo` (each one a plain HTTP
/// request to a plain registry).
fn manifest_requests(reg: &Registry, repo: &str) -> Vec<String> {
    reg.requests()
        .into_iter()
        .filter(|r| r.contains(&format!("/v2/{repo}/manifests/")))
        .collect()
}

/// What a TLS registry logs when it is spoken to in plain HTTP.
const PLAIN_HTTP_AT_TLS: &str = "client sent an HTTP request to an HTTPS server";

#[test]
fn a_plain_registry_on_loopback_needs_no_configuration() {
    let rt = rt();
    let reg = Registry::start(Setup::PlainHttp);
    let built = reg.push_image(&busybox_image(), "dev/app:1");
    let (_dir, store) = new_store();
    let puller = Puller::new(store.clone(), config(vec![]));

    for host in [reg.host(), reg.localhost()] {
        let before = manifest_requests(&reg, "dev/app").len();
        let name = format!("{host}/dev/app:1");
        let report = rt
            .block_on(puller.pull(&name, &anonymous()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.image.id.to_string(), built.config.digest, "{name}");
        assert_eq!(report.registry, host);
        // The registry saw the manifest asked for over plain HTTP.
        let seen = manifest_requests(&reg, "dev/app");
        assert!(
            seen.len() > before && seen[before..].iter().all(|r| r.ends_with("HTTP/1.1")),
            "{name}: {seen:?}"
        );
        assert!(store.get(&name).is_ok(), "{name} is not in the store");
    }
}

#[test]
fn https_written_for_a_loopback_registry_is_kept() {
    let rt = rt();
    let plain = Registry::start(Setup::PlainHttp);
    plain.push_image(&busybox_image(), "dev/app:1");
    let tls = Registry::start(Setup::Tls);
    let built = tls.push_image(&busybox_image(), "secure/app:1");
    let (_dir, store) = new_store();

    // A TLS registry on loopback with its CA: pulled over HTTPS, by
    // either name, and never spoken to in plain HTTP.
    let with_ca = HostConfig {
        ca_file: tls.ca_file.clone(),
        ..Default::default()
    };
    let puller = Puller::new(
        store.clone(),
        config(vec![
            (tls.host(), with_ca.clone()),
            (tls.localhost(), with_ca.clone()),
        ]),
    );
    for host in [tls.host(), tls.localhost()] {
        let name = format!("{host}/secure/app:1");
        let report = rt
            .block_on(puller.pull(&name, &anonymous()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.image.id.to_string(), built.config.digest);
    }
    assert!(tls.gets("/v2/secure/app/manifests/1") >= 2, "{}", tls.log());
    assert!(!tls.log().contains(PLAIN_HTTP_AT_TLS), "{}", tls.log());

    // Without its CA the certificate is refused, and that is not a reason
    // to try plain HTTP: TLS was spoken.
    let puller = Puller::new(store.clone(), config(vec![]));
    let err = rt
        .block_on(puller.pull(&format!("{}/secure/app:1", tls.host()), &anonymous()))
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(!tls.log().contains(PLAIN_HTTP_AT_TLS), "{}", tls.log());

    // A plain registry written HTTPS-only (plain_http = false, or a
    // ca_file) is refused, naming it and what asked for HTTPS.
    for (what, entry) in [
        (
            "plain_http = false",
            HostConfig {
                plain_http: Some(false),
                ..Default::default()
            },
        ),
        ("ca_file", with_ca),
    ] {
        let puller = Puller::new(store.clone(), config(vec![(plain.host(), entry)]));
        let err = rt
            .block_on(puller.pull(&format!("{}/dev/app:1", plain.host()), &anonymous()))
            .unwrap_err();
        match &err {
            ImageError::RegistryNotTls { registry, reason } => {
                assert_eq!(*registry, plain.host(), "{what}");
                assert!(reason.contains("plain_http = false"), "{what}: {reason}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(
            manifest_requests(&plain, "dev/app").is_empty(),
            "{what}: plain HTTP was used: {:?}",
            plain.requests()
        );
    }
}

#[test]
fn a_registry_off_loopback_still_needs_plain_http_written() {
    let rt = rt();
    let address = LocalAddress::add();
    let reg = Registry::start_on(Setup::PlainHttp, address.ip);
    let built = reg.push_image(&busybox_image(), "dev/app:1");
    let pushed = reg.requests().len();
    let host = reg.host();
    let name = format!("{host}/dev/app:1");
    let (_dir, store) = new_store();

    let puller = Puller::new(store.clone(), config(vec![]));
    let err = rt.block_on(puller.pull(&name, &anonymous())).unwrap_err();
    match &err {
        ImageError::RegistryNotTls { registry, reason } => {
            assert_eq!(*registry, host);
            assert!(
                reason.contains(&format!("registries.hosts.\"{host}\".plain_http = true")),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(&host), "{err}");
    assert_eq!(
        reg.requests().len(),
        pushed,
        "plain HTTP was used: {:?}",
        reg.requests()
    );
    assert!(store.list().is_empty());

    // Written plain_http, the same address serves.
    let plain = HostConfig {
        plain_http: Some(true),
        ..Default::default()
    };
    let puller = Puller::new(store.clone(), config(vec![(host.clone(), plain)]));
    let report = rt.block_on(puller.pull(&name, &anonymous())).unwrap();
    assert_eq!(report.image.id.to_string(), built.config.digest);
}

// ---- end to end: PullImage through caissond, as crictl pull does ----

mod through_caissond {
    use super::*;
    use caisson_tests::daemon::Caissond;
    use k8s_cri::v1 as cri;

    const NO_REGISTRY_CONFIG: &str =
        "registries.connect_timeout = 3\nregistries.read_timeout = 3\n";
    const FALLBACK_LINE: &str = "loopback registry: HTTPS failed, trying plain HTTP";

    fn pull(d: &Caissond, name: &str) -> Result<String, tonic::Status> {
        let mut images = d.images();
        d.rt.block_on(images.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: name.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        }))
        .map(|r| r.into_inner().image_ref)
    }

    fn log(d: &Caissond) -> String {
        std::fs::read_to_string(d.dir.path().join("caissond.log")).unwrap_or_default()
    }

    /// Lines of caissond's log saying `host` was retried over plain HTTP.
    fn fallbacks(d: &Caissond, host: &str) -> usize {
        log(d)
            .lines()
            .filter(|l| l.contains(FALLBACK_LINE) && l.contains(&format!("registry={host} ")))
            .count()
    }

    #[test]
    fn a_zstd_image_is_pulled_and_runs() {
        let reg = Registry::start(Setup::PlainHttp);
        let image = ImageSpec {
            compression: caisson_tests::fixtures::LayerCompression::Zstd,
            ..busybox_image()
        };
        let built = reg.push_image(&image, "dev/zstd:1");
        assert_eq!(
            built.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let d = Caissond::start(NO_REGISTRY_CONFIG);
        d.import_pause_image();
        let name = format!("{}/dev/zstd:1", reg.host());
        let image_ref = pull(&d, &name).unwrap_or_else(|e| panic!("{name}: {e}\n{}", d.log_tail()));
        assert_eq!(image_ref, built.config.digest);
        // The zstd blob itself was fetched from the registry.
        assert_eq!(reg.gets(&built.layers[0].digest), 1, "{}", reg.log());
        let config = d.pod_config("zstd");
        let pod = d.run_pod(&config);
        let id = d.create_started_container(
            &pod,
            &config,
            cri::ContainerConfig {
                image: Some(cri::ImageSpec {
                    image: name.clone(),
                    ..Default::default()
                }),
                ..caisson_tests::daemon::container_config("z", &["sleep", "600"])
            },
        );
        assert_eq!(
            d.exec(&id, &["sh", "-c", "echo zstd-ok; ls /bin/busybox"]),
            "zstd-ok\n/bin/busybox\n"
        );
    }

    #[test]
    fn pull_image_from_a_loopback_registry_without_configuration() {
        let reg = Registry::start(Setup::PlainHttp);
        let one = reg.push_image(&busybox_image(), "dev/app:1");
        let mut other = busybox_image();
        other.config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["true"]});
        let two = reg.push_image(&other, "dev/app:2");
        let d = Caissond::start(NO_REGISTRY_CONFIG);

        for host in [reg.host(), reg.localhost()] {
            for (tag, built) in [("1", &one), ("2", &two)] {
                let name = format!("{host}/dev/app:{tag}");
                let image_ref =
                    pull(&d, &name).unwrap_or_else(|e| panic!("{name}: {e}\n{}", d.log_tail()));
                assert_eq!(image_ref, built.config.digest, "{name}");
            }
            // HTTPS was tried once for the host; the second pull went
            // straight to plain HTTP.
            assert_eq!(fallbacks(&d, &host), 1, "{host}:\n{}", d.log_tail());
        }
        let manifests = manifest_requests(&reg, "dev/app");
        assert!(manifests.len() >= 4, "{manifests:?}");
        assert!(
            manifests.iter().all(|r| r.ends_with("HTTP/1.1")),
            "{manifests:?}"
        );
    }

    #[test]
    fn pull_image_keeps_https_for_a_tls_loopback_registry_and_refuses_plain_http_elsewhere() {
        let tls = Registry::start(Setup::Tls);
        let built = tls.push_image(&busybox_image(), "secure/app:1");
        let address = LocalAddress::add();
        let off = Registry::start_on(Setup::PlainHttp, address.ip);
        off.push_image(&busybox_image(), "dev/app:1");
        let pushed = off.requests().len();
        let d = Caissond::start(&format!(
            "{NO_REGISTRY_CONFIG}registries.hosts.\"{}\".ca_file = \"{}\"\n",
            tls.host(),
            tls.ca_file.as_ref().unwrap().display()
        ));

        let name = format!("{}/secure/app:1", tls.host());
        let image_ref = pull(&d, &name).unwrap_or_else(|e| panic!("{name}: {e}\n{}", d.log_tail()));
        assert_eq!(image_ref, built.config.digest);
        assert!(tls.gets("/v2/secure/app/manifests/1") >= 1, "{}", tls.log());
        assert!(!tls.log().contains(PLAIN_HTTP_AT_TLS), "{}", tls.log());

        let host = off.host();
        let err = pull(&d, &format!("{host}/dev/app:1")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message()
                .contains(&format!("registry {host} does not speak HTTPS"))
                && err.message().contains("plain_http = true"),
            "{err:?}"
        );
        assert_eq!(off.requests().len(), pushed, "{:?}", off.requests());
        assert_eq!(fallbacks(&d, &host), 0);
    }
}
