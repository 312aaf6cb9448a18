//! The fuzz targets: each takes any byte string, feeds it to code that parses
//! what others send (image layers and archives, references, manifests, CRI
//! requests, caissond's config, CNI output, a container's log output), and
//! panics only when a property that must hold for every input is broken.
//! An `Err` is a fine answer to garbage; a panic, an escape from a temp
//! root or a wrong round trip is a bug. Each returns whether the input was
//! accepted, so the replay test can hold seeds named `ok-*` and `bad-*` to
//! that answer (a corpus that never reaches the success path proves little).
//!
//! `libfuzzer/` wraps each in a `cargo fuzz` target (`make fuzz`);
//! `tests/replay.rs` runs every file of `corpus/<target>/` and
//! `regressions/<target>/` through it as an ordinary test, so CI keeps every
//! case found.

use std::fs;
use std::path::{Path, PathBuf};

use caisson_image::{ImageStore, ImportOptions, Reference, RunConfig};
use caisson_sandbox::host::crilog::{LineSplitter, MAX_RECORD};
use caisson_shim::spec::{self, PodContext};
use k8s_cri::v1 as cri;
use prost::Message;

/// A fuzz target: its name (the corpus directory) and what it runs.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> bool,
}

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    Target {
        name: "layer_tar",
        run: layer_tar,
    },
    Target {
        name: "image_archive",
        run: image_archive,
    },
    Target {
        name: "reference",
        run: reference,
    },
    Target {
        name: "manifest",
        run: manifest,
    },
    Target {
        name: "cri_pod",
        run: cri_pod,
    },
    Target {
        name: "cri_container",
        run: cri_container,
    },
    Target {
        name: "caissond_config",
        run: caissond_config,
    },
    Target {
        name: "cni_result",
        run: cni_result,
    },
    Target {
        name: "cri_log",
        run: cri_log,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A temp dir nested two levels down, so that anything written outside the
/// directory a call was given shows up in `outer`.
struct Jail {
    outer: tempfile::TempDir,
    inner: PathBuf,
}

impl Jail {
    fn new() -> Jail {
        let outer = tempfile::Builder::new()
            .prefix("caisson-fuzz-")
            .tempdir()
            .expect("making a temp dir");
        let inner = outer.path().join("a/b/root");
        fs::create_dir_all(&inner).expect("making the jail's root");
        Jail { outer, inner }
    }

    /// Panics when anything but the path to the root exists in the jail.
    fn assert_nothing_escaped(&self) {
        for (dir, only) in [
            (self.outer.path().to_path_buf(), "a"),
            (self.outer.path().join("a"), "b"),
            (self.outer.path().join("a/b"), "root"),
        ] {
            let names: Vec<String> = fs::read_dir(&dir)
                .expect("reading the jail")
                .map(|e| {
                    e.expect("a jail entry")
                        .file_name()
                        .to_string_lossy()
                        .into()
                })
                .collect();
            assert_eq!(names, [only], "something escaped into {}", dir.display());
        }
    }
}

/// A layer tar (already decompressed) unpacked into a directory: errors are
/// fine, nothing may land outside it.
pub fn layer_tar(data: &[u8]) -> bool {
    let jail = Jail::new();
    let accepted = caisson_image::unpack::unpack_layer(data, &jail.inner).is_ok();
    jail.assert_nothing_escaped();
    accepted
}

/// An image archive (`docker save` or OCI layout tar, gzip/zstd layers)
/// imported into a fresh store: its manifests, index, config and layers are
/// all parsed from the input. Errors are fine; nothing may land outside the
/// store, and an image that imports can be turned into a rootfs.
pub fn image_archive(data: &[u8]) -> bool {
    let jail = Jail::new();
    let store = ImageStore::open(&jail.inner).expect("opening an empty store");
    let accepted = store.import(data, &ImportOptions::default()).is_ok();
    if accepted {
        for image in store.list() {
            store
                .create_rootfs("fuzz", &image.id.to_string())
                .unwrap_or_else(|e| panic!("an imported image gives no rootfs: {e}"));
            store.remove_rootfs("fuzz").expect("removing the rootfs");
        }
    }
    jail.assert_nothing_escaped();
    accepted
}

/// An image reference: if it parses, its normalized form parses to itself.
pub fn reference(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(parsed) = text.parse::<Reference>() else {
        return false;
    };
    let normal = parsed.to_string();
    let again: Reference = normal
        .parse()
        .unwrap_or_else(|e| panic!("{normal:?} (from {text:?}) does not parse: {e}"));
    assert_eq!(again, parsed, "{text:?} → {normal:?} → another reference");
    true
}

/// A registry's manifest or index.
pub fn manifest(data: &[u8]) -> bool {
    caisson_image::pull::manifest::parse(data, "manifest").is_ok()
}

fn pod_context(jail: &Path) -> PodContext {
    PodContext {
        pod_id: "f".repeat(64),
        pause_pid: Some(1),
        hostname: "fuzz".into(),
        hostname_path: jail.join("hostname"),
        hosts_path: jail.join("hosts"),
        resolv_conf_path: jail.join("resolv.conf"),
        shm_path: Some(jail.join("shm")),
        cgroup_parent: "/kubepods/besteffort/podfuzz".into(),
        netns_path: None,
    }
}

/// A RunPodSandbox request (any well-typed message protobuf can decode from
/// the bytes) through validation and the pause container's spec: an error
/// or a spec that serialises.
pub fn cri_pod(data: &[u8]) -> bool {
    let Ok(request) = cri::RunPodSandboxRequest::decode(data) else {
        return false;
    };
    let config = request.config.unwrap_or_default();
    let jail = Jail::new();
    let built = spec::sandbox_spec(&config, &pod_context(&jail.inner), vec!["/pause".into()]);
    if let Ok(spec) = &built {
        serde_json::to_vec(spec).expect("a built spec serialises");
    }
    jail.assert_nothing_escaped();
    built.is_ok()
}

/// A CreateContainer request through validation and CRI→OCI translation,
/// with a rootfs holding `/etc/passwd` and `/etc/group` for user lookups.
pub fn cri_container(data: &[u8]) -> bool {
    let Ok(request) = cri::CreateContainerRequest::decode(data) else {
        return false;
    };
    let config = request.config.unwrap_or_default();
    let sandbox = request.sandbox_config.unwrap_or_default();
    let jail = Jail::new();
    let rootfs = jail.inner.join("rootfs");
    fs::create_dir_all(rootfs.join("etc")).expect("making the rootfs");
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .expect("writing passwd");
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("writing group");
    let image = RunConfig::default();
    let ctx = pod_context(&jail.inner);
    let built = spec::container_spec(&config, &sandbox, &image, &rootfs, &ctx, "c", None);
    if let Ok(spec) = &built {
        serde_json::to_vec(spec).expect("a built spec serialises");
    }
    jail.assert_nothing_escaped();
    built.is_ok()
}

/// caissond's TOML config.
pub fn caissond_config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    caisson_shim::config::Config::parse(text, Path::new("/etc/caisson/config.toml")).is_ok()
}

/// A CNI plugin's output (the pod's IPs) and a network config list.
pub fn cni_result(data: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return false;
    };
    let ips = caisson_shim::network::cni::result_ips(&value);
    for ip in &ips {
        ip.parse::<std::net::IpAddr>()
            .unwrap_or_else(|e| panic!("result_ips gave {ip:?}: {e}"));
    }
    caisson_shim::network::cni::normalise(value).is_ok() || !ips.is_empty()
}

/// A container's output, cut into reads where the first byte says, through
/// the CRI log writer's line splitter: every record is at most
/// [`MAX_RECORD`] bytes with no newline, and the records put back together
/// (a full record ends a line, a partial one does not) are the output.
pub fn cri_log(data: &[u8]) -> bool {
    let Some((&cut, output)) = data.split_first() else {
        return false;
    };
    let chunk = usize::from(cut).max(1) * 97;
    let mut splitter = LineSplitter::default();
    let mut rebuilt = Vec::with_capacity(output.len());
    let mut check = |partial: bool, content: &[u8]| {
        assert!(content.len() <= MAX_RECORD, "a record of {}", content.len());
        assert!(!content.contains(&b'\n'), "a record holds a newline");
        rebuilt.extend_from_slice(content);
        if !partial {
            rebuilt.push(b'\n');
        }
    };
    for piece in output.chunks(chunk) {
        splitter.feed(piece, &mut check);
    }
    splitter.finish(&mut check);
    // A last line without a newline is written as a full record.
    let expected_len = output.len() + usize::from(!output.is_empty() && !output.ends_with(b"\n"));
    assert_eq!(rebuilt.len(), expected_len, "records lost or added bytes");
    assert_eq!(
        &rebuilt[..output.len()],
        output,
        "records changed the output"
    );
    true
}
