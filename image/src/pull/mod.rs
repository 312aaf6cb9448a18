//! Pulling images from OCI/Docker v2 registries into the [`ImageStore`].
//!
//! * [`config`]: per-registry settings (mirrors, plain HTTP, CA, credentials)
//!   and the pull's limits; [`auth`]: credentials; [`loopback`]: the
//!   HTTPS-then-HTTP rule for registries on this machine's loopback.
//! * [`manifest`]: indexes resolved to the node's platform, image manifests,
//!   accepted media types.
//! * [`registry`]: one endpoint through `oci-client`, its errors named.
//! * [`download`]: blobs streamed to disk in parallel, verified as written.
//!
//! A pull resolves the reference on the first endpoint that answers
//! (mirrors, then the registry), then downloads what the store lacks into a
//! staging area and commits it the way an archive import does: blobs,
//! unpacked layers and the index entry land together or not at all. Two
//! pulls of the same image (same platform manifest, whatever the tag) share
//! one download.
//!
//! An endpoint on loopback without configuration is tried over HTTPS; if it
//! does not speak TLS (or, named without a port, nothing listens on 443) it
//! is tried again over plain HTTP, and the puller remembers that host as
//! plain HTTP until a pull over HTTP fails there.

pub mod auth;
pub mod config;
mod download;
pub mod loopback;
pub mod manifest;
pub mod registry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};

pub use auth::Credentials;
pub use config::{Endpoint, HostConfig, RegistriesConfig};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::index::ImageRecord;
use crate::reference::Reference;
use crate::store::ImageStore;
use download::{Fetched, Resolved};
use manifest::Manifest;
use registry::RegistryClient;

/// What one pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub image: ImageRecord,
    /// The endpoint the image came from (empty when the store had it).
    pub registry: String,
    /// Blob bytes downloaded by the download this pull used (its own or a
    /// concurrent pull's of the same image).
    pub bytes_downloaded: u64,
    pub blobs_downloaded: usize,
    /// Blobs the store already had (layers shared with other images).
    pub blobs_present: usize,
    pub layers_unpacked: usize,
    /// Waited for a concurrent pull of the same image instead of downloading.
    pub shared: bool,
    pub elapsed: Duration,
}

type SharedFetch = Shared<BoxFuture<'static, std::result::Result<Fetched, Arc<ImageError>>>>;

/// Pulls images into a store; one per daemon.
pub struct Puller {
    store: Arc<ImageStore>,
    config: RegistriesConfig,
    /// Downloads in progress, by platform manifest digest.
    inflight: Arc<Mutex<HashMap<Digest, SharedFetch>>>,
    /// Loopback hosts that answered over plain HTTP after failing HTTPS:
    /// tried over HTTP first from then on (forgotten when that fails).
    plain_http_hosts: Mutex<HashSet<String>>,
}

impl Puller {
    pub fn new(store: Arc<ImageStore>, config: RegistriesConfig) -> Puller {
        Puller {
            store,
            config,
            inflight: Arc::default(),
            plain_http_hosts: Mutex::default(),
        }
    }

    pub fn config(&self) -> &RegistriesConfig {
        &self.config
    }

    /// Pulls `name` (a tag or digest reference, normalized like kubelet's)
    /// with the caller's credentials (empty: the config's, else anonymous).
    pub async fn pull(&self, name: &str, credentials: &Credentials) -> Result<PullReport> {
        let started = Instant::now();
        let reference: Reference = name.parse()?;
        let shown = reference.to_string();
        // A digest names one image for good: if it is here, no registry is needed.
        if reference.digest().is_some() {
            if let Ok(image) = self.store.get(&shown) {
                return Ok(local_report(image, started));
            }
        }
        let endpoints = self.config.endpoints(reference.domain());
        let mut last_error = None;
        for (n, endpoint) in endpoints.iter().enumerate() {
            match self
                .resolve_at(endpoint, &reference, credentials, &shown)
                .await
            {
                Ok((client, resolved)) => {
                    return self.fetch(client, reference, resolved, started).await
                }
                Err(e) => {
                    if n + 1 < endpoints.len() {
                        tracing::warn!(image = %shown, registry = %endpoint.host, error = %e,
                            "resolving on a mirror failed; trying the next endpoint");
                    }
                    last_error = Some(e);
                }
            }
        }
        let error = last_error.unwrap_or_else(|| ImageError::Registry {
            registry: reference.domain().to_string(),
            reason: "no endpoint to pull from".into(),
        });
        // A tag that is here (imported, or pulled before) still serves when
        // no registry can be reached: air-gapped nodes run imported images.
        if matches!(error, ImageError::RegistryUnreachable { .. }) {
            if let Ok(image) = self.store.get(&shown) {
                tracing::warn!(image = %shown, error = %error,
                    "registry unreachable: using the image already in the store");
                return Ok(local_report(image, started));
            }
        }
        Err(error)
    }

    /// Resolves the image at one endpoint; for an `http_fallback` endpoint,
    /// over HTTPS then plain HTTP (containerd's HTTP fallback for loopback
    /// registries). Returns the client that answered, for the download.
    async fn resolve_at(
        &self,
        endpoint: &Endpoint,
        reference: &Reference,
        credentials: &Credentials,
        shown: &str,
    ) -> Result<(RegistryClient, Resolved)> {
        if !endpoint.http_fallback {
            let client = RegistryClient::new(endpoint, reference, credentials, &self.config)?;
            let resolved = resolve(&client, reference, shown).await?;
            return Ok((client, resolved));
        }
        let plain = endpoint.over_http();
        if self.known_plain(&endpoint.host) {
            let client = RegistryClient::new(&plain, reference, credentials, &self.config)?;
            match resolve(&client, reference, shown).await {
                Ok(resolved) => return Ok((client, resolved)),
                Err(e) if registry_answered(&e) => return Err(e),
                Err(e) => {
                    tracing::info!(registry = %endpoint.host, error = %e,
                        "a loopback registry that spoke plain HTTP failed over it; trying HTTPS first again");
                    self.set_plain(&endpoint.host, false);
                }
            }
        }
        let client = RegistryClient::new(endpoint, reference, credentials, &self.config)?;
        let https_error = match resolve(&client, reference, shown).await {
            Ok(resolved) => return Ok((client, resolved)),
            Err(e) if falls_back_to_http(&e, &endpoint.host) => e,
            Err(e) => return Err(e),
        };
        tracing::info!(registry = %endpoint.host, error = %https_error,
            "loopback registry: HTTPS failed, trying plain HTTP");
        let client = RegistryClient::new(&plain, reference, credentials, &self.config)?;
        match resolve(&client, reference, shown).await {
            Ok(resolved) => {
                self.set_plain(&endpoint.host, true);
                Ok((client, resolved))
            }
            Err(e) if registry_answered(&e) => {
                self.set_plain(&endpoint.host, true);
                Err(e)
            }
            Err(ImageError::RegistryUnreachable { registry, reason }) => {
                // Nothing speaks HTTP there either: say what HTTPS met too.
                Err(ImageError::RegistryUnreachable {
                    registry,
                    reason: format!("{reason} (over plain HTTP; over HTTPS: {https_error})"),
                })
            }
            Err(e) => Err(e),
        }
    }

    fn known_plain(&self, host: &str) -> bool {
        self.plain_http_hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(host)
    }

    fn set_plain(&self, host: &str, plain: bool) {
        let mut hosts = self
            .plain_http_hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if plain {
            hosts.insert(host.to_string());
        } else {
            hosts.remove(host);
        }
    }

    /// Downloads (or joins the download of) a resolved image, then names it.
    async fn fetch(
        &self,
        client: RegistryClient,
        reference: Reference,
        resolved: Resolved,
        started: Instant,
    ) -> Result<PullReport> {
        let shown = reference.to_string();
        let registry = client.host.clone();
        let repo_tags: Vec<String> = reference.tagged().into_iter().collect();
        let mut repo_digests = vec![reference.with_digest(&resolved.top_digest)];
        if resolved.manifest_digest != resolved.top_digest {
            repo_digests.push(reference.with_digest(&resolved.manifest_digest));
        }

        let (fetched, shared) = match self.store.find_by_manifest(&resolved.manifest_digest) {
            Some(image) => (Fetched::present(image), false),
            None => {
                let (fut, leader) = self.join_or_start(client, resolved, &shown);
                if !leader {
                    tracing::info!(image = %shown, "waiting for a pull of the same image in progress");
                }
                (fut.await.map_err(|e| e.duplicate())?, !leader)
            }
        };
        let store = self.store.clone();
        let id = fetched.image.id.clone();
        let image =
            tokio::task::spawn_blocking(move || store.add_names(&id, repo_tags, repo_digests))
                .await
                .map_err(|e| ImageError::Registry {
                    registry: registry.clone(),
                    reason: format!("naming the pulled image: {e}"),
                })??;
        let elapsed = started.elapsed();
        tracing::info!(
            image = %shown,
            id = %image.id,
            registry = %registry,
            downloaded_mb = format!("{:.1}", fetched.bytes_downloaded as f64 / 1e6),
            seconds = format!("{:.2}", elapsed.as_secs_f64()),
            rate_mb_s = format!("{:.1}", download::rate(fetched.bytes_downloaded, elapsed)),
            blobs_downloaded = fetched.blobs_downloaded,
            blobs_present = fetched.blobs_present,
            shared,
            "pulled image"
        );
        Ok(PullReport {
            image,
            registry,
            bytes_downloaded: fetched.bytes_downloaded,
            blobs_downloaded: fetched.blobs_downloaded,
            blobs_present: fetched.blobs_present,
            layers_unpacked: fetched.layers_unpacked,
            shared,
            elapsed,
        })
    }

    /// The download of `resolved`'s manifest: the one in progress, or a new
    /// one (true: this caller started it). The download runs in its own task,
    /// so a caller that goes away does not cancel it for the others.
    fn join_or_start(
        &self,
        client: RegistryClient,
        resolved: Resolved,
        shown: &str,
    ) -> (SharedFetch, bool) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fut) = inflight.get(&resolved.manifest_digest) {
            return (fut.clone(), false);
        }
        let key = resolved.manifest_digest.clone();
        let guard = InflightGuard {
            map: self.inflight.clone(),
            key: key.clone(),
        };
        let store = self.store.clone();
        let max = self.config.max_concurrent_downloads;
        let shown = shown.to_string();
        let task = tokio::spawn(async move {
            let _guard = guard;
            download::download(store, client, resolved, max, &shown)
                .await
                .map_err(Arc::new)
        });
        let fut = async move {
            task.await.unwrap_or_else(|e| {
                Err(Arc::new(ImageError::Registry {
                    registry: String::new(),
                    reason: format!("the download task failed: {e}"),
                }))
            })
        }
        .boxed()
        .shared();
        inflight.insert(key, fut.clone());
        (fut, true)
    }
}

/// Removes a finished (or failed, or panicked) download from the in-flight map.
struct InflightGuard {
    map: Arc<Mutex<HashMap<Digest, SharedFetch>>>,
    key: Digest,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Whether an HTTPS failure at an `http_fallback` endpoint sends the pull to
/// plain HTTP: the host does not speak TLS (containerd's `isTLSError`), or,
/// named without a port, could not be reached on 443 (plain HTTP goes to
/// port 80 instead: containerd's `isPortError`).
fn falls_back_to_http(e: &ImageError, host: &str) -> bool {
    match e {
        ImageError::RegistryNotTls { .. } => true,
        ImageError::RegistryUnreachable { .. } => loopback::split_port(host).1.is_none(),
        _ => false,
    }
}

/// The registry answered in its protocol (the image is not there, or the
/// credentials are refused): the transport that carried it works.
fn registry_answered(e: &ImageError) -> bool {
    matches!(
        e,
        ImageError::NotInRegistry { .. } | ImageError::RegistryUnauthorized { .. }
    )
}

fn local_report(image: ImageRecord, started: Instant) -> PullReport {
    PullReport {
        image,
        registry: String::new(),
        bytes_downloaded: 0,
        blobs_downloaded: 0,
        blobs_present: 0,
        layers_unpacked: 0,
        shared: false,
        elapsed: started.elapsed(),
    }
}

/// Fetches the manifest the reference names and, for an index, this
/// platform's manifest.
async fn resolve(client: &RegistryClient, reference: &Reference, shown: &str) -> Result<Resolved> {
    let target = match (reference.digest(), reference.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".to_string(),
    };
    let (bytes, top_digest) = client.manifest(&target, shown).await?;
    let what = format!("manifest {top_digest} of {shown}");
    let (manifest_digest, manifest_bytes, parsed) = match manifest::parse(&bytes, &what)? {
        Manifest::Index { platform_manifest } => {
            let (bytes, digest) = client
                .manifest(&platform_manifest.digest.to_string(), shown)
                .await?;
            if bytes.len() as u64 != platform_manifest.size {
                return Err(ImageError::SizeMismatch {
                    what: format!("platform manifest {digest} of {shown}"),
                    expected: platform_manifest.size,
                    actual: bytes.len() as u64,
                });
            }
            let what = format!("platform manifest {digest} of {shown}");
            let parsed = manifest::parse(&bytes, &what)?;
            if matches!(parsed, Manifest::Index { .. }) {
                return Err(ImageError::Unsupported {
                    what: "nested image index",
                    value: what,
                });
            }
            (digest, bytes, parsed)
        }
        image => (top_digest.clone(), bytes, image),
    };
    let Manifest::Image { config, layers } = parsed else {
        unreachable!("indexes were resolved above");
    };
    tracing::debug!(image = %shown, registry = %client.host, manifest = %manifest_digest,
        layers = layers.len(), "resolved image");
    Ok(Resolved {
        top_digest,
        manifest_digest,
        manifest_bytes,
        config,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls_not_spoken_or_no_port_falls_back() {
        let not_tls = || ImageError::RegistryNotTls {
            registry: "x".into(),
            reason: "y".into(),
        };
        let unreachable = || ImageError::RegistryUnreachable {
            registry: "x".into(),
            reason: "refused".into(),
        };
        let certificate = || ImageError::Registry {
            registry: "x".into(),
            reason: "TLS: the registry's certificate is not trusted".into(),
        };
        let cases = [
            (not_tls(), "127.0.0.1:5000", true),
            (not_tls(), "localhost", true),
            // Refused on 443 with no port named: port 80 may serve HTTP.
            (unreachable(), "localhost", true),
            (unreachable(), "[::1]", true),
            // A port named is the same port over HTTP: nothing to gain.
            (unreachable(), "localhost:5000", false),
            (certificate(), "localhost:5000", false),
            (certificate(), "localhost", false),
        ];
        for (error, host, want) in cases {
            assert_eq!(falls_back_to_http(&error, host), want, "{host}: {error}");
        }
    }
}
