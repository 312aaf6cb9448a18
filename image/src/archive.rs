//! Reading image archives: OCI image-layout tarballs (plain or gzip, as
//! `skopeo copy … oci-archive:` and `ctr export` write them) and `docker save`
//! archives (legacy `<id>/layer.tar` and Docker 25's OCI-shaped ones).
//!
//! Every file of the archive is streamed into a [`Staging`] area, verified
//! against the digest its name claims; nothing reaches the store until the
//! caller has checked and unpacked the whole image.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use crate::content::{Staging, MAX_JSON_BLOB};
use crate::digest::{chain_ids, Digest};
use crate::error::{ImageError, Result};
use crate::index::{ImageRecord, LayerRecord, RunConfig};
use crate::reference::Reference;
use crate::unpack::clean_path;

/// containerd's full-name annotation on an index entry.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI's ref-name annotation (a tag, or a full reference as skopeo writes it).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const META_FILES: [&str; 4] = ["index.json", "oci-layout", "manifest.json", "repositories"];

/// How to name what an archive does not name.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Tag given to every image imported (like `ctr import --index-name`
    /// for a single image); when an OCI index entry carries only a tag in
    /// `org.opencontainers.image.ref.name`, that tag is put on this repository.
    pub name: Option<String>,
}

/// An image found in an archive, with its blobs staged and checked.
pub struct PendingImage {
    pub record: ImageRecord,
}

/// The node's platform, as image configs spell it.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

#[derive(Default)]
struct ArchiveFiles {
    /// Path in the archive → staged blob.
    files: HashMap<String, Digest>,
    meta: HashMap<String, Vec<u8>>,
}

/// Streams the archive into `staging` and returns the images it holds.
pub fn read_archive(
    reader: impl Read,
    staging: &mut Staging,
    opts: &ImportOptions,
) -> Result<Vec<PendingImage>> {
    let files = stage_files(reader, staging)?;
    let images = if files.meta.contains_key("manifest.json") {
        docker_images(&files, staging)?
    } else if files.meta.contains_key("index.json") {
        oci_images(&files, staging, opts)?
    } else {
        return Err(ImageError::malformed(
            "image archive",
            "it has neither index.json (OCI image layout) nor manifest.json (docker save)",
        ));
    };
    if images.is_empty() {
        let (os, arch) = host_platform();
        return Err(ImageError::malformed(
            "image archive",
            format!("no image for platform {os}/{arch}"),
        ));
    }
    let base = opts
        .name
        .as_deref()
        .map(str::parse::<Reference>)
        .transpose()?;
    images
        .into_iter()
        .map(|(found, mut names)| {
            if let Some(base) = &base {
                names.push(base.clone());
            }
            Ok(PendingImage {
                record: finish_record(found, names, staging)?,
            })
        })
        .collect()
}

fn stage_files(reader: impl Read, staging: &mut Staging) -> Result<ArchiveFiles> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let head = buffered
        .fill_buf()
        .map_err(|e| ImageError::malformed("image archive", e))?;
    let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = ArchiveFiles::default();
    let mut symlinks: Vec<(String, String)> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| ImageError::malformed("image archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::malformed("image archive", e))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean_path(&raw)
            .map_err(|r| ImageError::unsafe_entry(format!("archive: {shown}"), r))?;
        let path = String::from_utf8(comps.join(&b'/')).map_err(|_| {
            ImageError::unsafe_entry(format!("archive: {shown}"), "name is not UTF-8")
        })?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if META_FILES.contains(&path.as_str()) {
                    let mut bytes = Vec::new();
                    (&mut entry)
                        .take(MAX_JSON_BLOB + 1)
                        .read_to_end(&mut bytes)
                        .map_err(|e| ImageError::malformed(&path, e))?;
                    if bytes.len() as u64 > MAX_JSON_BLOB {
                        return Err(ImageError::malformed(&path, "file too large"));
                    }
                    out.meta.insert(path, bytes);
                    continue;
                }
                let expected = blob_path_digest(&path)?;
                let (digest, _) =
                    staging.add(&mut entry, expected, &format!("archive file {path}"))?;
                out.files.insert(path, digest);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_path =
                    resolve_link(&path, &target, entry.header().entry_type().is_symlink())
                        .ok_or_else(|| {
                            ImageError::unsafe_entry(
                                format!("archive: {shown}"),
                                "link leaves the archive",
                            )
                        })?;
                symlinks.push((path, target_path));
            }
            _ => {}
        }
    }
    // docker save writes a repeated layer once and links the others to it.
    for _ in 0..8 {
        let mut progressed = false;
        for (path, target) in &symlinks {
            if !out.files.contains_key(path) {
                if let Some(d) = out.files.get(target).cloned() {
                    out.files.insert(path.clone(), d);
                    progressed = true;
                }
            }
        }
        if !progressed {
            break;
        }
    }
    Ok(out)
}

/// `blobs/sha256/<hex>` names its own digest, which the content must match.
fn blob_path_digest(path: &str) -> Result<Option<Digest>> {
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("blobs"), Some(alg), Some(hex), None) => Ok(Some(format!("{alg}:{hex}").parse()?)),
        _ => Ok(None),
    }
}

/// Resolves a link target inside the archive (symlinks relative to their
/// directory, hard links relative to the root). None if it leaves the archive.
fn resolve_link(path: &str, target: &[u8], relative_to_dir: bool) -> Option<String> {
    let mut comps: Vec<&[u8]> = Vec::new();
    if relative_to_dir && target.first() != Some(&b'/') {
        comps.extend(path.as_bytes().split(|&b| b == b'/'));
        comps.pop();
    }
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                comps.pop()?;
            }
            c => comps.push(c),
        }
    }
    String::from_utf8(comps.join(&b'/')).ok()
}

/// An image located in an archive or a registry: manifest and config
/// digests plus layers (digest, media type, size).
pub(crate) struct FoundImage {
    pub(crate) manifest: Digest,
    pub(crate) config: Digest,
    pub(crate) layers: Vec<(Digest, String, u64)>,
}

fn docker_images(
    files: &ArchiveFiles,
    staging: &mut Staging,
) -> Result<Vec<(FoundImage, Vec<Reference>)>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_slice(&files.meta["manifest.json"])
        .map_err(|e| ImageError::malformed("manifest.json", e))?;
    let file = |path: &str, what: &str| -> Result<Digest> {
        files
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| ImageError::MissingBlob {
                digest: format!("file {path}"),
                what: what.to_string(),
            })
    };
    let mut out = Vec::new();
    for entry in entries {
        let config = file(&entry.config, "image config named by manifest.json")?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let digest = file(layer, "layer named by manifest.json")?;
            let mut head = [0u8; 4];
            let n = staging
                .open(&digest, layer)?
                .read(&mut head)
                .map_err(|e| ImageError::malformed(layer.as_str(), e))?;
            let media_type = if n >= 2 && head[..2] == [0x1f, 0x8b] {
                OCI_LAYER_GZIP
            } else if n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
                OCI_LAYER_ZSTD
            } else {
                OCI_LAYER
            };
            layers.push((
                digest.clone(),
                media_type.to_string(),
                staging.size(&digest, layer)?,
            ));
        }
        // docker save carries no manifest: write the OCI one it stands for.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.to_string(), "size": staging.size(&config, "config")?},
            "layers": layers.iter().map(|(d, m, s)| serde_json::json!({"mediaType": m, "digest": d.to_string(), "size": s})).collect::<Vec<_>>(),
        });
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| ImageError::malformed("manifest", e))?;
        let manifest = staging.add_bytes(&manifest_bytes, "synthesized manifest")?;
        let names = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| t.parse::<Reference>())
            .collect::<Result<Vec<_>>>()?;
        out.push((
            FoundImage {
                manifest,
                config,
                layers,
            },
            names,
        ));
    }
    Ok(out)
}

fn oci_images(
    files: &ArchiveFiles,
    staging: &mut Staging,
    opts: &ImportOptions,
) -> Result<Vec<(FoundImage, Vec<Reference>)>> {
    let layout = files.meta.get("oci-layout").ok_or_else(|| {
        ImageError::malformed("OCI image layout", "the oci-layout file is missing")
    })?;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Layout {
        image_layout_version: String,
    }
    let layout: Layout =
        serde_json::from_slice(layout).map_err(|e| ImageError::malformed("oci-layout", e))?;
    if layout.image_layout_version != "1.0.0" {
        return Err(ImageError::Unsupported {
            what: "OCI image layout version",
            value: layout.image_layout_version,
        });
    }
    let index: ImageIndex = serde_json::from_slice(&files.meta["index.json"])
        .map_err(|e| ImageError::malformed("index.json", e))?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        let names = descriptor_names(desc.annotations().as_ref(), opts)?;
        if let Some(found) = resolve_descriptor(desc, staging, 0)? {
            out.push((found, names));
        }
    }
    Ok(out)
}

fn descriptor_names(
    annotations: Option<&HashMap<String, String>>,
    opts: &ImportOptions,
) -> Result<Vec<Reference>> {
    let Some(a) = annotations else {
        return Ok(Vec::new());
    };
    if let Some(full) = a.get(ANNOTATION_IMAGE_NAME) {
        return Ok(vec![full.parse()?]);
    }
    match a.get(ANNOTATION_REF_NAME) {
        Some(name) if name.contains(['/', ':', '@']) => Ok(vec![name.parse()?]),
        Some(tag) => match &opts.name {
            Some(base) => Ok(vec![base.parse::<Reference>()?.with_tag(tag)?]),
            None => {
                tracing::warn!(tag = %tag, "archive names only a tag and no --name was given: importing untagged");
                Ok(Vec::new())
            }
        },
        None => Ok(Vec::new()),
    }
}

fn descriptor_digest(desc: &oci_spec::image::Descriptor) -> Result<Digest> {
    desc.digest().to_string().parse()
}

fn check_size(staging: &Staging, digest: &Digest, expected: u64, what: &str) -> Result<()> {
    let actual = staging.size(digest, what)?;
    if actual != expected {
        return Err(ImageError::SizeMismatch {
            what: format!("{what} {digest}"),
            expected,
            actual,
        });
    }
    Ok(())
}

/// Follows an index entry to the manifest for this platform.
fn resolve_descriptor(
    desc: &oci_spec::image::Descriptor,
    staging: &mut Staging,
    depth: u8,
) -> Result<Option<FoundImage>> {
    let digest = descriptor_digest(desc)?;
    let media = desc.media_type().to_string();
    if depth > 4 {
        return Err(ImageError::malformed(
            "image index",
            "nested more than 4 levels",
        ));
    }
    let (os, arch) = host_platform();
    if let Some(p) = desc.platform() {
        if p.os().to_string() != os || p.architecture().to_string() != arch {
            return Ok(None);
        }
    }
    check_size(staging, &digest, desc.size(), "manifest")?;
    let bytes = staging.read_json(&digest, &format!("manifest {digest}"))?;
    let is_index =
        matches!(desc.media_type(), MediaType::ImageIndex) || media == DOCKER_MANIFEST_LIST;
    if is_index {
        let nested: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::malformed(format!("image index {digest}"), e))?;
        for child in nested.manifests() {
            if child.platform().is_none() {
                continue;
            }
            if let Some(found) = resolve_descriptor(child, staging, depth + 1)? {
                return Ok(Some(found));
            }
        }
        return Ok(None);
    }
    if !matches!(desc.media_type(), MediaType::ImageManifest) && media != DOCKER_MANIFEST {
        return Err(ImageError::Unsupported {
            what: "manifest media type",
            value: media,
        });
    }
    let manifest: ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::malformed(format!("manifest {digest}"), e))?;
    let config = descriptor_digest(manifest.config())?;
    check_size(staging, &config, manifest.config().size(), "config")?;
    let mut layers = Vec::new();
    for layer in manifest.layers() {
        let d = descriptor_digest(layer)?;
        check_size(staging, &d, layer.size(), "layer")?;
        layers.push((d, layer.media_type().to_string(), layer.size()));
    }
    Ok(Some(FoundImage {
        manifest: digest,
        config,
        layers,
    }))
}

/// Reads the config and builds the record: checks platform and diff ids.
fn finish_record(
    found: FoundImage,
    names: Vec<Reference>,
    staging: &Staging,
) -> Result<ImageRecord> {
    let config_bytes = staging.read_json(&found.config, &format!("config {}", found.config))?;
    let manifest_size = staging.size(&found.manifest, "manifest")?;
    build_record(found, names, manifest_size, &config_bytes)
}

/// Builds the record of an image from its config: checks platform and diff
/// ids. Archive imports and registry pulls make records the same way.
pub(crate) fn build_record(
    found: FoundImage,
    names: Vec<Reference>,
    manifest_size: u64,
    config_bytes: &[u8],
) -> Result<ImageRecord> {
    let config: ImageConfiguration = serde_json::from_slice(config_bytes)
        .map_err(|e| ImageError::malformed(format!("image config {}", found.config), e))?;
    let (os, arch) = host_platform();
    let (img_os, img_arch) = (config.os().to_string(), config.architecture().to_string());
    if img_os != os || img_arch != arch {
        return Err(ImageError::Unsupported {
            what: "image platform",
            value: format!("{img_os}/{img_arch} (node is {os}/{arch})"),
        });
    }
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse::<Digest>())
        .collect::<Result<Vec<_>>>()?;
    if diff_ids.len() != found.layers.len() {
        return Err(ImageError::malformed(
            format!("image config {}", found.config),
            format!(
                "{} diff ids for {} layers",
                diff_ids.len(),
                found.layers.len()
            ),
        ));
    }
    let chains = chain_ids(&diff_ids);
    let layers: Vec<LayerRecord> = found
        .layers
        .into_iter()
        .zip(diff_ids.into_iter().zip(chains))
        .map(
            |((digest, media_type, size), (diff_id, chain_id))| LayerRecord {
                digest,
                media_type,
                size,
                diff_id,
                chain_id,
            },
        )
        .collect();
    let size =
        manifest_size + config_bytes.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>();
    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    for name in &names {
        if let Some(t) = name.tagged() {
            if !repo_tags.contains(&t) {
                repo_tags.push(t);
            }
        }
        let d = name.with_digest(&found.manifest);
        if !repo_digests.contains(&d) {
            repo_digests.push(d);
        }
    }
    let run = config.config().as_ref().map(|c| RunConfig {
        user: c.user().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        stop_signal: c.stop_signal().clone().unwrap_or_default(),
        exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
        volumes: c.volumes().clone().unwrap_or_default(),
        labels: c
            .labels()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    });
    Ok(ImageRecord {
        id: found.config.clone(),
        repo_tags,
        repo_digests,
        manifest_digest: found.manifest,
        config_digest: found.config,
        layers,
        size,
        os: img_os,
        architecture: img_arch,
        created: config.created().clone(),
        config: run.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::resolve_link;

    #[test]
    fn links_resolve_inside_the_archive_only() {
        let cases: &[(&str, &str, bool, Option<&str>)] = &[
            ("a/layer.tar", "../b/layer.tar", true, Some("b/layer.tar")),
            ("a/layer.tar", "/b/layer.tar", true, Some("b/layer.tar")),
            ("a/layer.tar", "../../x", true, None),
            ("x", "y/z", false, Some("y/z")),
            ("x", "../y", false, None),
        ];
        for (path, target, sym, want) in cases {
            assert_eq!(
                resolve_link(path, target.as_bytes(), *sym).as_deref(),
                *want,
                "{path} -> {target}"
            );
        }
    }
}
