//! Manifests as registries serve them: OCI image indexes and Docker manifest
//! lists (resolved to the node's platform), OCI image manifests and Docker
//! schema 2 manifests; which layer and config media types a pull accepts.

use serde::Deserialize;

use crate::archive::host_platform;
use crate::digest::Digest;
use crate::error::{ImageError, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The `Accept` of a manifest request.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Layers Caisson's unpacker reads (gzip, zstd or plain tar; zstd:chunked
/// layers carry the zstd type and read as plain zstd).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
];

/// A descriptor: what a manifest says about a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An OCI index or Docker manifest list: the manifest for this node.
    Index { platform_manifest: Blob },
    /// An image manifest.
    Image { config: Blob, layers: Vec<Blob> },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl RawDescriptor {
    fn blob(&self, what: &str) -> Result<Blob> {
        let size = u64::try_from(self.size).map_err(|_| {
            ImageError::malformed(what.to_string(), format!("negative size {}", self.size))
        })?;
        Ok(Blob {
            digest: self.digest.parse()?,
            media_type: self.media_type.clone(),
            size,
        })
    }
}

/// Parses a manifest and, for an index, picks this node's platform.
pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| ImageError::malformed(what.to_string(), e))?;
    if raw.schema_version != 2 {
        return Err(ImageError::Unsupported {
            what: "manifest schema version",
            value: format!(
                "{} ({what}; Docker schema 1 manifests are not supported)",
                raw.schema_version
            ),
        });
    }
    let media = raw.media_type.clone().unwrap_or_default();
    let is_index = match media.as_str() {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        "" => raw.manifests.is_some(),
        other => {
            return Err(ImageError::Unsupported {
                what: "manifest media type",
                value: format!("{other} ({what})"),
            })
        }
    };
    if is_index {
        let entries = raw.manifests.unwrap_or_default();
        let (os, arch) = host_platform();
        let wanted = |d: &&RawDescriptor| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        };
        // An entry without a variant first, then any variant.
        let chosen = entries
            .iter()
            .filter(wanted)
            .find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_none()))
            .or_else(|| entries.iter().find(wanted))
            .ok_or_else(|| {
                let offered: Vec<String> = entries
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                ImageError::Unsupported {
                    what: "image platform",
                    value: format!(
                        "{what} has no manifest for {os}/{arch} (it has: {})",
                        offered.join(", ")
                    ),
                }
            })?;
        let blob = chosen.blob(what)?;
        if !matches!(blob.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST) {
            return Err(ImageError::Unsupported {
                what: "platform manifest media type",
                value: format!("{} ({what})", blob.media_type),
            });
        }
        return Ok(Manifest::Index {
            platform_manifest: blob,
        });
    }
    let config = raw
        .config
        .ok_or_else(|| ImageError::malformed(what.to_string(), "no config descriptor"))?
        .blob(&format!("{what} config"))?;
    if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(ImageError::Unsupported {
            what: "config media type",
            value: format!("{} ({what} is not a container image)", config.media_type),
        });
    }
    if config.size > crate::content::MAX_JSON_BLOB {
        return Err(ImageError::malformed(
            format!("{what} config"),
            format!("{} bytes is too large for an image config", config.size),
        ));
    }
    let mut layers = Vec::new();
    for raw in raw.layers.unwrap_or_default() {
        let layer = raw.blob(&format!("{what} layer"))?;
        check_layer_type(&layer)?;
        layers.push(layer);
    }
    Ok(Manifest::Image { config, layers })
}

fn check_layer_type(layer: &Blob) -> Result<()> {
    let media = layer.media_type.as_str();
    if LAYER_TYPES.contains(&media) {
        return Ok(());
    }
    let value = if media.contains("foreign") {
        format!("{media} (layer {}): foreign (Windows) layers", layer.digest)
    } else {
        format!("{media} (layer {})", layer.digest)
    };
    Err(ImageError::Unsupported {
        what: "layer media type",
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn bytes(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn image(media: Option<&str>, layer_type: &str) -> Vec<u8> {
        let mut m = json!({
            "schemaVersion": 2,
            "config": {"mediaType": CONFIG_TYPES[0], "digest": d(1), "size": 10},
            "layers": [{"mediaType": layer_type, "digest": d(2), "size": 20}],
        });
        if let Some(media) = media {
            m["mediaType"] = json!(media);
        }
        bytes(m)
    }

    fn index(media: &str, platforms: &[(&str, &str, Option<&str>, u8)]) -> Vec<u8> {
        let manifests: Vec<_> = platforms
            .iter()
            .map(|(os, arch, variant, n)| {
                let mut p = json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    p["variant"] = json!(v);
                }
                json!({"mediaType": OCI_MANIFEST, "digest": d(*n), "size": 5, "platform": p})
            })
            .collect();
        bytes(json!({"schemaVersion": 2, "mediaType": media, "manifests": manifests}))
    }

    #[test]
    fn image_manifests_of_every_flavour() {
        let cases = [
            (image(Some(OCI_MANIFEST), LAYER_TYPES[0]), true),
            (image(None, LAYER_TYPES[2]), true),
            (image(Some(DOCKER_MANIFEST), LAYER_TYPES[3]), true),
            (
                image(
                    Some(OCI_MANIFEST),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
                true,
            ),
            (
                image(
                    Some(DOCKER_MANIFEST),
                    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                ),
                false,
            ),
            (image(Some("application/x-unknown"), LAYER_TYPES[0]), false),
        ];
        for (i, (manifest, ok)) in cases.iter().enumerate() {
            let got = parse(manifest, "manifest");
            assert_eq!(got.is_ok(), *ok, "case {i}: {got:?}");
            if let Ok(Manifest::Image { config, layers }) = got {
                assert_eq!(config.digest.to_string(), d(1));
                assert_eq!(layers[0].size, 20);
            }
        }
        let foreign = parse(
            &image(
                Some(DOCKER_MANIFEST),
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            ),
            "m",
        )
        .unwrap_err();
        assert!(foreign.to_string().contains("foreign"), "{foreign}");
    }

    #[test]
    fn indexes_resolve_to_linux_amd64() {
        let amd64 = Some(d(3));
        let cases: Vec<(Vec<u8>, Option<String>)> = vec![
            (
                index(
                    OCI_INDEX,
                    &[
                        ("linux", "arm64", Some("v8"), 2),
                        ("linux", "amd64", None, 3),
                    ],
                ),
                amd64.clone(),
            ),
            (
                index(
                    DOCKER_LIST,
                    &[("linux", "amd64", None, 3), ("windows", "amd64", None, 4)],
                ),
                amd64.clone(),
            ),
            (
                index(
                    OCI_INDEX,
                    &[
                        ("linux", "amd64", Some("v3"), 5),
                        ("linux", "amd64", None, 3),
                    ],
                ),
                amd64.clone(),
            ),
            (
                index(OCI_INDEX, &[("linux", "amd64", Some("v2"), 6)]),
                Some(d(6)),
            ),
            (
                index(
                    OCI_INDEX,
                    &[
                        ("unknown", "unknown", None, 7),
                        ("linux", "arm", Some("v7"), 8),
                    ],
                ),
                None,
            ),
        ];
        for (i, (bytes, want)) in cases.into_iter().enumerate() {
            let got = parse(&bytes, "index");
            match want {
                Some(want) => match got {
                    Ok(Manifest::Index { platform_manifest }) => {
                        assert_eq!(platform_manifest.digest.to_string(), want, "case {i}")
                    }
                    other => panic!("case {i}: {other:?}"),
                },
                None => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains("linux/arm"), "case {i}: {e}");
                }
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_pull() {
        let cases = [
            bytes(json!({"schemaVersion": 1, "name": "x", "fsLayers": []})),
            bytes(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST})),
            bytes(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": d(1), "size": 1},
                "layers": []})),
            bytes(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": CONFIG_TYPES[0], "digest": d(1), "size": 1u64 << 40},
                "layers": []})),
            bytes(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": CONFIG_TYPES[0], "digest": "md5:abc", "size": 1},
                "layers": []})),
            b"not json".to_vec(),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            assert!(parse(bytes, "m").is_err(), "case {i}");
        }
    }
}
