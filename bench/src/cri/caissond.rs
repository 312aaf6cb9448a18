//! caissond (release build, beside the bench) with a config whose every path
//! is under the bench's dir, and the busybox image imported through
//! `caissond images import`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use caisson_tests::fixtures::{busybox_image, OciArchive};

use super::daemon::{Daemon, Spec};
use super::Result;

/// Where caissond puts its pods' cgroups (its `cgroup_parent`; the pod
/// configs give none).
pub const CGROUP_PARENT: &str = "/caisson-bench-caisson";
const SHIM: &str = "containerd-shim-caisson-v2";
const BUILD: &str = "run `cargo build --release -p caisson-shim -p caisson-sandbox`";

/// `caissond` and its shim, beside this executable.
fn binaries() -> Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or("the bench's executable has no parent dir")?;
    let caissond = dir.join("caissond");
    let shim = dir.join(SHIM);
    for binary in [&caissond, &shim] {
        if !binary.is_file() {
            return Err(format!("{} not found: {BUILD}", binary.display()).into());
        }
    }
    Ok((caissond, shim))
}

/// The config: the defaults with every path moved under `dir`, logs as
/// text at `info` (as containerd logs).
fn config(dir: &Path, pause: &Path, shim: &Path) -> String {
    format!(
        r#"root_dir = "{root}"
run_dir = "{run}"
socket = "{socket}"
pause_image = ""
pause_binary = "{pause}"
shim_binary = "{shim}"
cgroup_parent = "{CGROUP_PARENT}"

[network]
cni_conf_dir = "{cni_conf}"
install_default_cni_config = false

[log]
level = "info"
format = "text"

[runtimes]
default_handler = "runc"

[runtimes.handlers.runc]
backend = "native"
"#,
        root = dir.join("root").display(),
        run = dir.join("run").display(),
        socket = socket(dir).display(),
        pause = pause.display(),
        shim = shim.display(),
        cni_conf = dir.join("cni/net.d").display(),
    )
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("run/caissond.sock")
}

/// Starts caissond under `dir` and imports busybox into it.
/// With `cni`, its pods join the bench's CNI network ([`super::cni`]).
pub fn start(dir: &Path, pause: &Path, cni: bool) -> Result<Daemon> {
    let (caissond, shim) = binaries()?;
    fs::create_dir_all(dir)?;
    let config_path = dir.join("caisson.toml");
    fs::write(&config_path, config(dir, pause, &shim))?;
    if cni {
        super::cni::install(&dir.join("cni/net.d"))?;
    }
    let mut command = Command::new(&caissond);
    command.arg("--config").arg(&config_path);
    let daemon = Daemon::start(Spec {
        name: "caisson",
        version: format!("caissond {}", env!("CARGO_PKG_VERSION")),
        binary: caissond.clone(),
        command,
        dir: dir.to_path_buf(),
        socket: socket(dir),
        log_path: dir.join("caissond.log"),
        pod_cgroup_parent: String::new(),
        cgroup_parent: CGROUP_PARENT,
        shim_name: SHIM,
        pod_network: cni,
    })?;

    let archive = dir.join("busybox.tar");
    let mut oci = OciArchive::new();
    oci.add_image(&super::fixture("the busybox image", busybox_image)?);
    oci.write(&archive, false);
    let out = Command::new(&caissond)
        .arg("--config")
        .arg(&config_path)
        .args(["images", "import"])
        .arg(&archive)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "caissond images import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(daemon)
}
