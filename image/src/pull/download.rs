//! The download of one resolved image: blobs the store lacks are streamed
//! into a staging area, several at once, each hashed and size-checked as it
//! is written (never held in memory); then the image is committed like an
//! archive import. A failure or a crash leaves nothing but the blobs the
//! store already had.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio::sync::{mpsc, watch};

use super::manifest::Blob;
use super::registry::RegistryClient;
use crate::archive::{build_record, FoundImage};
use crate::content::{BlobWriter, Staging};
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::index::ImageRecord;
use crate::store::ImageStore;

/// How often progress is logged while blobs download.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Chunks (of the HTTP body, a few KiB to 64 KiB) queued between a
/// download's reader and its writer thread.
const CHUNKS_IN_FLIGHT: usize = 16;

/// A reference resolved to this platform's image manifest.
pub(crate) struct Resolved {
    /// What the reference points at (an index, or the manifest itself).
    pub top_digest: Digest,
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// The outcome of a download, shared by every pull that waited on it.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub image: ImageRecord,
    pub bytes_downloaded: u64,
    pub blobs_downloaded: usize,
    pub blobs_present: usize,
    pub layers_unpacked: usize,
}

impl Fetched {
    pub fn present(image: ImageRecord) -> Fetched {
        let blobs_present = image.blobs().len();
        Fetched {
            image,
            bytes_downloaded: 0,
            blobs_downloaded: 0,
            blobs_present,
            layers_unpacked: 0,
        }
    }
}

/// MB/s (decimal) of `bytes` over `elapsed`.
pub(crate) fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-6)
}

fn join_error(e: tokio::task::JoinError) -> ImageError {
    ImageError::Registry {
        registry: String::new(),
        reason: format!("a pull task failed: {e}"),
    }
}

/// Downloads what the store lacks of `resolved` and commits the image.
pub(crate) async fn download(
    store: Arc<ImageStore>,
    client: RegistryClient,
    resolved: Resolved,
    max_concurrent: usize,
    shown: &str,
) -> Result<Fetched> {
    // Another pull may have finished it between resolve and now.
    if let Some(image) = store.find_by_manifest(&resolved.manifest_digest) {
        return Ok(Fetched::present(image));
    }
    let started = Instant::now();
    let client = Arc::new(client);
    let mut wanted = vec![(resolved.config.clone(), "config".to_string())];
    for (n, layer) in resolved.layers.iter().enumerate() {
        wanted.push((
            layer.clone(),
            format!("layer {}/{}", n + 1, resolved.layers.len()),
        ));
    }

    // Stage the manifest and link in what the store has (a gc cannot take
    // those away from the staging area); make a writer for the rest.
    let manifest_bytes = resolved.manifest_bytes.clone();
    let content = store.content().clone();
    let (staging, missing, present) = tokio::task::spawn_blocking(move || {
        let mut staging = content.staging()?;
        staging.add_bytes(&manifest_bytes, "manifest")?;
        let mut missing: Vec<(Blob, String, BlobWriter)> = Vec::new();
        let mut present = 0;
        for (blob, what) in wanted {
            if missing.iter().any(|(b, _, _)| b.digest == blob.digest) {
                continue;
            }
            if staging.adopt(&blob.digest)? {
                present += 1;
                continue;
            }
            let writer = staging.writer(Some(blob.digest.clone()), &what)?;
            missing.push((blob, what, writer));
        }
        Ok::<_, ImageError>((staging, missing, present))
    })
    .await
    .map_err(join_error)??;

    let total: u64 = missing.iter().map(|(b, _, _)| b.size).sum();
    let blobs_downloaded = missing.len();
    tracing::info!(image = %shown, registry = %client.host, blobs = blobs_downloaded,
        already_present = present, total_mb = format!("{:.1}", total as f64 / 1e6),
        "pulling image");
    let progress = Arc::new(AtomicU64::new(0));
    let (cancel, cancelled) = watch::channel(false);
    let mut downloads = stream::iter(missing.into_iter().map(|(blob, what, writer)| {
        download_blob(
            client.clone(),
            blob,
            what,
            writer,
            progress.clone(),
            cancelled.clone(),
        )
    }))
    .buffer_unordered(max_concurrent);
    // On the first failure the others are told to stop, and all are waited
    // for before the staging area goes away.
    let all = async {
        let mut digests = Vec::new();
        let mut failure = None;
        while let Some(result) = downloads.next().await {
            match result {
                Ok(d) => digests.push(d),
                Err(e) => {
                    if failure.is_none() {
                        let _ = cancel.send(true);
                        failure = Some(e);
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(digests),
        }
    };
    let digests = with_progress(all, &progress, total, shown).await?;
    let bytes_downloaded = progress.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    tracing::info!(image = %shown, downloaded_mb = format!("{:.1}", bytes_downloaded as f64 / 1e6),
        seconds = format!("{:.2}", elapsed.as_secs_f64()),
        rate_mb_s = format!("{:.1}", rate(bytes_downloaded, elapsed)),
        "downloaded blobs; unpacking");

    let found = FoundImage {
        manifest: resolved.manifest_digest.clone(),
        config: resolved.config.digest.clone(),
        layers: resolved
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.media_type.clone(), l.size))
            .collect(),
    };
    let manifest_size = resolved.manifest_bytes.len() as u64;
    let config_digest = resolved.config.digest.clone();
    let commit_store = store.clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut staging: Staging = staging;
        for digest in &digests {
            staging.insert(digest)?;
        }
        let config = staging.read_json(&config_digest, &format!("config {config_digest}"))?;
        let record = build_record(found, Vec::new(), manifest_size, &config)?;
        commit_store.commit_pulled(staging, record)
    })
    .await
    .map_err(join_error)??;
    let image = report
        .images
        .into_iter()
        .next()
        .ok_or_else(|| ImageError::malformed(shown.to_string(), "commit made no image"))?;
    Ok(Fetched {
        image,
        bytes_downloaded,
        blobs_downloaded,
        blobs_present: present,
        layers_unpacked: report.layers_unpacked,
    })
}

/// Runs `work`, logging bytes and rate every few seconds until it ends.
async fn with_progress<T>(
    work: impl std::future::Future<Output = Result<T>>,
    done: &AtomicU64,
    total: u64,
    shown: &str,
) -> Result<T> {
    let started = Instant::now();
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticks.tick() => {
                let bytes = done.load(Ordering::Relaxed);
                tracing::info!(
                    image = %shown,
                    downloaded_mb = format!("{:.1}", bytes as f64 / 1e6),
                    total_mb = format!("{:.1}", total as f64 / 1e6),
                    rate_mb_s = format!("{:.1}", rate(bytes, started.elapsed())),
                    "pull progress"
                );
            }
        }
    }
}

/// Streams one blob into its staging writer: the async side reads the
/// registry's answer and checks its size, a blocking thread writes and
/// hashes it and commits it when whole. Returns only once that thread is
/// done, so nothing touches the staging area after a failed pull returns.
async fn download_blob(
    client: Arc<RegistryClient>,
    blob: Blob,
    what: String,
    mut writer: BlobWriter,
    progress: Arc<AtomicU64>,
    mut cancel: watch::Receiver<bool>,
) -> Result<Digest> {
    let abandoned = || ImageError::Registry {
        registry: client.host.clone(),
        reason: format!("download of {what} {} abandoned", blob.digest),
    };
    if *cancel.borrow() {
        return Err(abandoned());
    }
    let mut body = client.blob(&blob, &what).await?;
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(CHUNKS_IN_FLIGHT);
    let size = blob.size;
    let write_what = what.clone();
    let write_thread = tokio::task::spawn_blocking(move || {
        let mut written = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            writer
                .write_all(&chunk)
                .map_err(|e| ImageError::io("writing", format!("staged {write_what}"), e))?;
            written += chunk.len() as u64;
        }
        if written != size {
            // The reader stopped early and says why.
            return Ok(None);
        }
        writer.commit().map(|(digest, _)| Some(digest))
    });
    let read: Result<()> = async {
        let mut received = 0u64;
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.changed() => return Err(abandoned()),
                next = body.next() => next,
            };
            let chunk = match next {
                None if received == size => return Ok(()),
                None => {
                    return Err(ImageError::SizeMismatch {
                        what: format!("{what} {} from {}", blob.digest, client.host),
                        expected: size,
                        actual: received,
                    })
                }
                Some(Err(e)) => return Err(client.stream_error(e, &blob, &what)),
                Some(Ok(chunk)) => chunk,
            };
            received += chunk.len() as u64;
            if received > size {
                return Err(ImageError::SizeMismatch {
                    what: format!("{what} {} from {}", blob.digest, client.host),
                    expected: size,
                    actual: received,
                });
            }
            let len = chunk.len() as u64;
            if tx.send(chunk).await.is_err() {
                // The writer failed; its error is the one to report.
                return Ok(());
            }
            progress.fetch_add(len, Ordering::Relaxed);
        }
    }
    .await;
    drop(tx);
    let written = write_thread.await.map_err(join_error)?;
    match (read, written) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(Some(digest))) => Ok(digest),
        (Ok(()), Ok(None)) => Err(abandoned()),
    }
}
