//! Debian's containerd 1.6 with its CRI plugin and runc (cgroupfs), every
//! path of it under the bench's dir, and the pause and busybox images
//! imported into its `k8s.io` namespace with `ctr`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use caisson_tests::fixtures::{busybox_image, pause_image, OciArchive, PAUSE_NAME};

use super::daemon::{Daemon, Spec};
use super::Result;
use crate::daemon::Process;

/// The `linux.cgroup_parent` of the bench's pods on containerd.
pub const CGROUP_PARENT: &str = "/caisson-bench-ctrd";
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const RUNC_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
/// The CRI plugin's containerd namespace.
const NAMESPACE: &str = "k8s.io";

/// containerd, ctr, runc's shim and runc, from Debian's packages.
fn binaries() -> Result<()> {
    for binary in [CONTAINERD, CTR, RUNC_SHIM] {
        if !Path::new(binary).is_file() {
            return Err(
                format!("{binary} not found: install the Debian package `containerd`").into(),
            );
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|d| d.join("runc").is_file()) {
        return Err("`runc` not found on PATH: install the Debian package `runc`".into());
    }
    Ok(())
}

/// The config: version 2, the CRI plugin on, runc with cgroupfs, overlayfs,
/// and nothing outside `dir` (root, state, sockets, runc's state, the `opt`
/// plugin's dir, CNI dirs, which stay empty: the pods use the host network).
/// The streaming server (Exec/Attach/PortForward URLs) listens on a free
/// loopback port, as caissond's does by default (containerd 1.6's defaults
/// too, written out so the bench does not depend on them).
///
/// `restrict_oom_score_adj` is needed where root lacks CAP_SYS_RESOURCE:
/// without it, runc fails to lower the pause's oom_score_adj to -998.
pub fn config(dir: &Path, cni: bool) -> String {
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[{cri}]
  sandbox_image = "{PAUSE_NAME}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{runc_root}"

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket(dir).display(),
        ttrpc = dir.join("containerd.sock.ttrpc").display(),
        opt = dir.join("opt").display(),
        runc_root = dir.join("runc").display(),
        cni_bin = if cni {
            super::cni::BIN_DIR.into()
        } else {
            dir.join("cni/bin").display().to_string()
        },
        cni_conf = dir.join("cni/conf").display(),
    )
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("containerd.sock")
}

/// `containerd --version`'s version, e.g. `1.6.20~ds1`.
fn version() -> String {
    let out = Command::new(CONTAINERD).arg("--version").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.split_whitespace().nth(2).unwrap_or("").to_string()
}

/// `ctr -a <socket> -n k8s.io images import <archive>`.
fn import(dir: &Path, archive: &Path) -> Result<()> {
    let out = Command::new(CTR)
        .arg("-a")
        .arg(socket(dir))
        .args(["-n", NAMESPACE, "images", "import"])
        .arg(archive)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "ctr images import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Starts containerd under `dir` and imports the pause and busybox images.
/// With `cni`, its pods join the bench's CNI network ([`super::cni`]).
pub fn start(dir: &Path, pause: &Path, cni: bool) -> Result<Daemon> {
    binaries()?;
    for sub in ["root", "state", "runc", "opt", "cni/bin", "cni/conf"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let config_path = dir.join("config.toml");
    fs::write(&config_path, config(dir, cni))?;
    if cni {
        super::cni::install(&dir.join("cni/conf"))?;
    }
    let mut command = Command::new(CONTAINERD);
    command.arg("--config").arg(&config_path);
    let process = Process::start(
        "containerd",
        command,
        &socket(dir),
        dir.join("containerd.log"),
    )?;
    let daemon = Daemon::new(
        Spec {
            name: "containerd",
            version: format!("containerd {} + {}", version(), runc_version()),
            binary: CONTAINERD.into(),
            dir: dir.to_path_buf(),
            pod_cgroup_parent: CGROUP_PARENT.into(),
            cgroup_parent: CGROUP_PARENT,
            shim_name: "containerd-shim-runc-v2",
            pod_network: cni,
        },
        process,
    );

    let images = [
        (
            "pause.tar",
            crate::fixture("building the pause image", || pause_image(pause))?,
        ),
        (
            "busybox.tar",
            crate::fixture("building the busybox image", busybox_image)?,
        ),
    ];
    for (file, image) in images {
        let archive = dir.join(file);
        let mut oci = OciArchive::new();
        oci.add_image(&image);
        oci.write(&archive, false);
        import(dir, &archive)?;
    }
    Ok(daemon)
}

/// `runc --version`'s first line, e.g. `runc version 1.1.5+ds1`.
fn runc_version() -> String {
    let out = Command::new("runc").arg("--version").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines().next().unwrap_or("runc").to_string()
}
