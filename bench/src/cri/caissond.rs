//! caissond ([`crate::caissond`], with no handler beyond `runc` → native)
//! under the bench's dir, and the busybox image imported into it.

use std::path::Path;

use caisson_tests::fixtures::busybox_image;

use super::daemon::{Daemon, Spec};
use super::Result;
use crate::caissond::{self, Caissond, Dir, Setup};

/// Where caissond puts its pods' cgroups (its `cgroup_parent`; the pod
/// configs give none).
pub const CGROUP_PARENT: &str = "/caisson-bench-caisson";

/// Starts caissond under `dir` and imports busybox into it.
/// With `cni`, its pods join the bench's CNI network ([`super::cni`]).
/// With `metrics_port`, its `[metrics]` endpoint listens there.
pub fn start(dir: &Path, pause: &Path, cni: bool, metrics_port: Option<u16>) -> Result<Daemon> {
    if cni {
        super::cni::install(&caissond::cni_conf_dir(dir))?;
    }
    let metrics = metrics_port
        .map(|port| format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"))
        .unwrap_or_default();
    let caissond = Caissond::start(Setup {
        dir: Dir::At(dir),
        pause,
        cgroup_parent: CGROUP_PARENT,
        extra_config: &metrics,
    })?;
    caissond.import_image(&crate::fixture(
        "building the busybox image",
        busybox_image,
    )?)?;
    let spec = Spec {
        name: "caisson",
        version: format!("caissond {}", env!("CARGO_PKG_VERSION")),
        binary: caissond.binary().to_path_buf(),
        dir: dir.to_path_buf(),
        pod_cgroup_parent: String::new(),
        cgroup_parent: CGROUP_PARENT,
        shim_name: caissond::SHIM,
        pod_network: cni,
    };
    // The bench records what each daemon leaves, then cleans up itself.
    Ok(Daemon::new(spec, caissond.into_process()))
}
