//! CRI ImageService over the image store. Images arrive by registry pull
//! (PullImage, with the `[registries]` config) or archive import
//! (`caissond images import`).

use std::sync::Arc;

use caisson_image::{Credentials, Digest, ImageRecord, ImageStore, Puller, RegistriesConfig};
use caisson_proto::cri::{self, image_service_server::ImageService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::runtime::now_ns;
use crate::status::CriError;

#[derive(Clone)]
pub struct ImageApi {
    pub images: Arc<ImageStore>,
    pub puller: Arc<Puller>,
    /// The configured `pause_image` (empty: the built-in pause binary).
    pub pause_image: String,
}

impl ImageApi {
    pub fn new(
        images: Arc<ImageStore>,
        registries: RegistriesConfig,
        pause_image: String,
    ) -> ImageApi {
        ImageApi {
            puller: Arc::new(Puller::new(images.clone(), registries)),
            images,
            pause_image,
        }
    }

    /// The id of the pause image if it is in the store: it is reported
    /// pinned, as containerd pins its sandbox image, so that kubelet's image
    /// garbage collection leaves it alone.
    fn pinned_id(&self) -> Option<Digest> {
        if self.pause_image.is_empty() {
            return None;
        }
        self.images.get(&self.pause_image).ok().map(|i| i.id)
    }
}

/// CRI's AuthConfig as the image crate's credentials (`auth` decoded;
/// `server_address` is only kubelet's note of which registry they are for).
fn credentials(auth: Option<cri::AuthConfig>) -> Result<Credentials, Status> {
    let Some(a) = auth else {
        return Ok(Credentials::default());
    };
    Credentials::new(
        &a.username,
        &a.password,
        &a.auth,
        &a.identity_token,
        &a.registry_token,
    )
    .map_err(|e| CriError::invalid("auth", e.to_string()).into())
}

/// The image's USER as CRI reports it: a numeric uid, or a user name.
fn image_user(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or_default();
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

pub fn to_cri(image: &ImageRecord, pinned: bool) -> cri::Image {
    let (uid, username) = image_user(&image.config.user);
    cri::Image {
        id: image.id.to_string(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.to_string(),
            ..Default::default()
        }),
        pinned,
    }
}

fn image_name(spec: Option<cri::ImageSpec>, field: &str) -> Result<String, Status> {
    let name = spec.map(|s| s.image).unwrap_or_default();
    if name.is_empty() {
        return Err(CriError::invalid(field, "must not be empty").into());
    }
    Ok(name)
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let wanted = r
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .unwrap_or_default();
        let pinned = self.pinned_id();
        let images = if wanted.is_empty() {
            self.images
                .list()
                .iter()
                .map(|i| to_cri(i, pinned.as_ref() == Some(&i.id)))
                .collect()
        } else {
            match self.images.get(&wanted) {
                Ok(image) => vec![to_cri(&image, pinned.as_ref() == Some(&image.id))],
                Err(e) if e.is_not_found() => vec![],
                Err(e) => return Err(CriError::from(e).into()),
            }
        };
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let r = r.into_inner();
        let name = image_name(r.image, "image.image")?;
        // CRI: an unknown image is not an error, just no image.
        let image = match self.images.get(&name) {
            Ok(image) => image,
            Err(e) if e.is_not_found() => {
                return Ok(Response::new(cri::ImageStatusResponse::default()))
            }
            Err(e) => return Err(CriError::from(e).into()),
        };
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            let detail = serde_json::json!({
                "manifestDigest": image.manifest_digest.to_string(),
                "chainIDs": image.chain_ids().iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                "os": image.os, "architecture": image.architecture, "created": image.created,
                "imageSpec": {"config": {
                    "User": image.config.user, "Env": image.config.env, "Entrypoint": image.config.entrypoint,
                    "Cmd": image.config.cmd, "WorkingDir": image.config.working_dir, "StopSignal": image.config.stop_signal,
                    "Labels": image.config.labels,
                }},
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri(&image, self.pinned_id().as_ref() == Some(&image.id))),
            info,
        }))
    }

    async fn pull_image(
        &self,
        r: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let r = r.into_inner();
        let name = image_name(r.image, "image.image")?;
        let credentials = credentials(r.auth)?;
        let span = tracing::info_span!("pull_image", image = %name);
        let started = std::time::Instant::now();
        let pulled = self.puller.pull(&name, &credentials).instrument(span).await;
        // Bytes of a download shared with a concurrent pull count once.
        let bytes = |r: &caisson_image::PullReport| if r.shared { 0 } else { r.bytes_downloaded };
        crate::metrics_http::metrics().record_pull(pulled.as_ref().map(bytes), started.elapsed());
        let report = pulled.map_err(CriError::from)?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: report.image.id.to_string(),
        }))
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = image_name(r.into_inner().image, "image.image")?;
        let images = self.images.clone();
        let result = tokio::task::spawn_blocking(move || images.remove(&name))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match result {
            // Removing what is not there succeeds (CRI is idempotent here).
            Ok(_) => Ok(Response::new(cri::RemoveImageResponse {})),
            Err(e) if e.is_not_found() => Ok(Response::new(cri::RemoveImageResponse {})),
            Err(e) => Err(CriError::from(e).into()),
        }
    }

    async fn image_fs_info(
        &self,
        _r: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let images = self.images.clone();
        let usage = tokio::task::spawn_blocking(move || images.usage())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let fs = cri::FilesystemUsage {
            timestamp: now_ns(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.images.root().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: usage.inodes_used,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        }))
    }
}
