//! Image volumes (KEP-4639): a CRI mount with `image` set gets that image's
//! filesystem, read-only. Each is a read-only overlay of the image's layers
//! (no upper dir) at `<bundle>/image-volumes/<i>`, `i` its index in
//! `config.mounts`; the spec builder binds it into the container.
//!
//! The layers stay pinned while the container exists: their chain ids are
//! added to the container's rootfs record, which garbage collection reads,
//! so a RemoveImage of a mounted image removes the image's name but keeps
//! its layers until the container is removed (as with the container's own
//! image). Pinning goes through a short-lived rootfs record made under the
//! store's garbage-collection lock, so a collection running meanwhile cannot
//! remove a layer between the image lookup and the pin.

use std::path::{Path, PathBuf};

use caisson_image::rootfs::{mount_read_only_overlay, unmount_path};
use caisson_image::{ImageError, ImageStore};
use caisson_proto::cri;

use crate::status::{CriError, CriResult};

/// The bundle's directory of image volume mount points.
pub(crate) const IMAGE_VOLUMES_DIR: &str = "image-volumes";

/// The image a CRI mount asks for, if it is an image volume.
fn volume_image(m: &cri::Mount) -> Option<&str> {
    m.image
        .as_ref()
        .map(|i| i.image.as_str())
        .filter(|i| !i.is_empty())
}

/// The names of the images `config` mounts as volumes.
pub(crate) fn volume_images(config: &cri::ContainerConfig) -> Vec<&str> {
    config.mounts.iter().filter_map(volume_image).collect()
}

/// Mounts every image volume of `config` under `bundle`, pins its layers in
/// container `id`'s rootfs record (which must exist), and returns the config
/// the spec builder gets: each image mount's `host_path` set to its mount
/// point. On error nothing it made is left mounted.
pub(crate) fn mount_image_volumes(
    images: &ImageStore,
    id: &str,
    bundle: &Path,
    config: &cri::ContainerConfig,
) -> CriResult<cri::ContainerConfig> {
    let mut translated = config.clone();
    let made = (|| {
        for (i, m) in translated.mounts.iter_mut().enumerate() {
            let Some(image) = volume_image(m).map(str::to_string) else {
                continue;
            };
            m.host_path = mount_one(images, id, bundle, i, &image)?
                .display()
                .to_string();
        }
        Ok(())
    })();
    match made {
        Ok(()) => Ok(translated),
        Err(e) => {
            unmount_image_volumes(bundle);
            Err(e)
        }
    }
}

fn mount_one(
    images: &ImageStore,
    id: &str,
    bundle: &Path,
    i: usize,
    image: &str,
) -> CriResult<PathBuf> {
    let field = format!("config.mounts[{i}].image");
    // The container's rootfs record pins the layers (under the store's
    // GC lock, so no collection can take them in between).
    let lowers = images.pin_image_layers(id, image).map_err(|e| match e {
        ImageError::NotFound(_) => CriError::FieldNotFound {
            field: field.clone(),
            reason: format!("image {image:?} not found (pull it first)"),
        },
        other => CriError::internal(&format!("resolving {field} {image:?}"), other),
    })?;
    if lowers.is_empty() {
        return Err(CriError::invalid(
            field,
            format!("image {image:?} has no layers"),
        ));
    }
    let dir = bundle.join(IMAGE_VOLUMES_DIR);
    let target = dir.join(i.to_string());
    mount_read_only_overlay(&lowers, &dir.join(format!(".{i}.empty")), &target)
        .map_err(|e| CriError::internal(&format!("mounting {field} {image:?}"), e))?;
    tracing::info!(container_id = %id, image, target = %target.display(), "image volume mounted");
    Ok(target)
}

/// Unmounts and deletes every image volume under `bundle` (idempotent;
/// failures are logged: a busy mount is detached).
pub(crate) fn unmount_image_volumes(bundle: &Path) {
    let dir = bundle.join(IMAGE_VOLUMES_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if let Err(e) = unmount_path(&path) {
            tracing::warn!(path = %path.display(), error = %e, "unmounting an image volume");
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!(path = %dir.display(), error = %e, "removing the image volumes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mounts_naming_an_image_are_volumes() {
        let config = cri::ContainerConfig {
            mounts: vec![
                cri::Mount {
                    host_path: "/data".into(),
                    ..Default::default()
                },
                cri::Mount {
                    image: Some(cri::ImageSpec::default()),
                    ..Default::default()
                },
                cri::Mount {
                    image: Some(cri::ImageSpec {
                        image: "data:1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(volume_images(&config), ["data:1"]);
    }
}
