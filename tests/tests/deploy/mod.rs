//! What the installer tests share: running `caisson-deploy.sh` (from the
//! repo under dash, or as the image does under busybox), its build context,
//! snapshots of a node's tree, and containerd's view of a config.
//! (`containerd_cri.rs` beside it is deploy_root's alone.)

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use caisson_tests::daemon::target_dir;
use caisson_tests::fixtures::pause_binary;
use caisson_tests::require;
use sha2::{Digest, Sha256};

pub const DEPLOY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../integration/deploy");
/// containerd's config, under a node's root.
pub const CONFIG: &str = "etc/containerd/config.toml";

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("caisson-deploy-")
        .tempdir()
        .unwrap()
}

/// A directory holding the binaries as a release puts them side by side
/// (links to this build's caissond and shim, and caisson-pause).
pub fn release_dir(tmp: &Path) -> PathBuf {
    let from = tmp.join("release");
    std::fs::create_dir_all(&from).unwrap();
    let bin = target_dir();
    for (name, path) in [
        ("caissond", bin.join("caissond")),
        (
            "containerd-shim-caisson-v2",
            bin.join("containerd-shim-caisson-v2"),
        ),
        ("caisson-pause", pause_binary()),
    ] {
        assert!(
            path.is_file(),
            "{} is not built: run `make build`",
            path.display()
        );
        std::os::unix::fs::symlink(&path, from.join(name)).unwrap();
    }
    from
}

/// The Containerfile's build context, made by `make-context.sh` from this
/// build; checks it holds every file the Containerfile copies.
pub fn build_context(tmp: &Path) -> PathBuf {
    let ctx = tmp.join("context");
    let bin = target_dir();
    let out = Command::new("sh")
        .arg(Path::new(DEPLOY_DIR).join("make-context.sh"))
        .arg(&ctx)
        .arg(&bin)
        .arg(pause_binary())
        .output()
        .unwrap();
    expect_ok(&out, "make-context.sh");
    let containerfile =
        std::fs::read_to_string(Path::new(DEPLOY_DIR).join("Containerfile")).unwrap();
    for line in containerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            assert!(
                ctx.join(src).exists(),
                "the Containerfile copies {src}, which make-context.sh did not make"
            );
        }
    }
    ctx
}

/// Runs the script from the repo with Debian's /bin/sh (dash).
pub fn script(args: &[&str]) -> Output {
    Command::new("/bin/sh")
        .arg(Path::new(DEPLOY_DIR).join("caisson-deploy.sh"))
        .args(args)
        .env_remove("NODE_NAME")
        .output()
        .unwrap()
}

/// Runs the script as the image does: from the build context, under
/// Debian's static busybox shell with nothing on `PATH` (busybox runs its
/// own applets), binaries from the context's `bin/`.
pub fn image_script(ctx: &Path, node: &Path, args: &[&str]) -> Output {
    let busybox = require::program("busybox", "busybox-static");
    Command::new(busybox)
        .arg("sh")
        .arg(ctx.join("caisson-deploy.sh"))
        .args(&args[..1])
        .arg("--root")
        .arg(node)
        .args(&args[1..])
        .env_clear()
        .env("PATH", "/nonexistent")
        .output()
        .unwrap()
}

pub fn expect_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every path under `root`: its type, mode, owner and content digest (a
/// link's target).
pub fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let head = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("{head} -> {}", target.display()));
            } else if meta.is_dir() {
                out.insert(rel, format!("{head} dir"));
                walk(root, &path, out);
            } else {
                let digest = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
                out.insert(rel, format!("{head} {digest}"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `containerd --config <file> config dump`: the config containerd reads.
pub fn config_dump(containerd: &Path, config: &Path) -> String {
    let out = Command::new(containerd)
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    expect_ok(&out, "containerd config dump");
    String::from_utf8(out.stdout).unwrap()
}

/// The `runtime_type` of each runtime of `plugin` in a version 3 config,
/// parsed by Python's `tomllib` (an independent TOML parser).
pub fn toml_runtimes(config: &Path, plugin: &str) -> BTreeMap<String, String> {
    let program = format!(
        "import json, sys, tomllib\n\
         c = tomllib.load(open(sys.argv[1], 'rb'))\n\
         r = c['plugins']['{plugin}']['containerd']['runtimes']\n\
         print(json.dumps({{k: v['runtime_type'] for k, v in r.items()}}))"
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .arg(config)
        .output()
        .unwrap();
    expect_ok(&out, "python3 tomllib");
    serde_json::from_slice(&out.stdout).unwrap()
}
