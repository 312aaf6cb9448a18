//! Pulls from registries that misbehave on purpose ([`HostileRegistry`]):
//! an endless or oversized manifest, a redirect loop, a slow-loris body.
//! Each pull must fail with an error naming the registry, within a bounded
//! time and memory, and leave nothing in the store. Needs root (the store
//! unpacks as root).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caisson_image::pull::HostConfig;
use caisson_image::{Credentials, ImageError, ImageStore, Puller, RegistriesConfig};
use caisson_tests::registry::{HostileRegistry, Hostility};

/// Read timeout of these pulls: every hostile answer here keeps each read
/// within it, so only the pull's own limits can end them.
const READ_TIMEOUT: u64 = 3;

/// Peak RSS of this process so far (`VmHWM`), bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

/// Pulls `app:1` from a registry that answers as `how`; returns the error,
/// how long it took and how much the process's peak RSS grew.
fn hostile_pull(how: Hostility) -> (ImageError, Duration, u64, HostileRegistry) {
    caisson_tests::require::root("the store unpacks layers as root");
    let dir = tempfile::Builder::new()
        .prefix("hostile-pull-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = Arc::new(ImageStore::open(dir.path()).unwrap());
    let registry = HostileRegistry::start(how);
    let host = registry.host();
    let config = RegistriesConfig {
        connect_timeout: 3,
        read_timeout: READ_TIMEOUT,
        hosts: BTreeMap::from([(
            host.clone(),
            HostConfig {
                plain_http: Some(true),
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    config.validate().unwrap();
    let puller = Puller::new(store.clone(), config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = peak_rss();
    let started = Instant::now();
    let outcome = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(90),
            puller.pull(&format!("{host}/hostile/app:1"), &Credentials::default()),
        )
        .await
    });
    let elapsed = started.elapsed();
    let err = match outcome {
        Err(_) => panic!("{how:?}: the pull was still going after 90 s"),
        Ok(Ok(report)) => panic!("{how:?}: the pull succeeded: {:?}", report.image),
        Ok(Err(e)) => e,
    };
    let grown = peak_rss().saturating_sub(before);
    assert!(store.list().is_empty(), "{how:?}: an image was stored");
    assert!(
        store.content().list().unwrap().is_empty(),
        "{how:?}: blobs were stored"
    );
    let ingest: Vec<_> = std::fs::read_dir(store.root().join("content/ingest"))
        .unwrap()
        .flatten()
        .collect();
    assert!(ingest.is_empty(), "{how:?}: ingest files left: {ingest:?}");
    (err, elapsed, grown, registry)
}

#[test]
fn an_endless_manifest_is_cut_at_the_manifest_limit() {
    let (err, elapsed, grown, registry) = hostile_pull(Hostility::EndlessManifest);
    let text = err.to_string();
    assert!(
        text.contains(&registry.host()) || text.contains("manifest"),
        "{text}"
    );
    assert!(text.contains("16 MiB"), "{text}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    assert!(grown < 128 << 20, "peak RSS grew by {} MiB", grown >> 20);
}

#[test]
fn a_manifest_declared_larger_than_the_limit_is_refused_unread() {
    let (err, elapsed, grown, _registry) = hostile_pull(Hostility::HugeManifest);
    assert!(err.to_string().contains("16 MiB"), "{err}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    assert!(grown < 128 << 20, "peak RSS grew by {} MiB", grown >> 20);
}

#[test]
fn a_redirect_loop_is_given_up() {
    let (err, elapsed, _grown, registry) = hostile_pull(Hostility::RedirectLoop);
    let text = err.to_string();
    assert!(text.contains(&registry.host()), "{text}");
    assert!(text.contains("redirect"), "{text}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    let requests = registry
        .manifest_requests
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (2..=40).contains(&requests),
        "{requests} manifest requests for one pull"
    );
}

#[test]
fn a_slow_loris_manifest_times_out() {
    let (err, elapsed, _grown, registry) = hostile_pull(Hostility::SlowLoris);
    let text = err.to_string();
    assert!(text.contains(&registry.host()), "{text}");
    assert!(
        matches!(err, ImageError::RegistryUnreachable { .. }),
        "{err:?}"
    );
    // Each byte comes within the read timeout: only a deadline for the
    // whole manifest ends this.
    assert!(
        elapsed >= Duration::from_secs(READ_TIMEOUT) && elapsed < Duration::from_secs(60),
        "{elapsed:?}"
    );
}
