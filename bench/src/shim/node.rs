//! The node the shims run on, as caissond lays it out: every pod's dir
//! below `pods/`, every pod's network namespace pin below `netns/`, both
//! mount points of their own, and (`--node-pods N`) N other pods' mounts
//! already there: each a `/dev/shm` tmpfs, a rootfs (a tmpfs standing in
//! for its overlay) and a netns pin, the three or four mounts a running
//! pod adds to the node's table.

use std::fs;
use std::path::{Path, PathBuf};

use caisson_sandbox::host::pod_view::{pin_roots, unpin_roots};
use nix::mount::{MntFlags, MsFlags};

use super::Result;

pub struct Node {
    /// `pods/` and `netns/`, mount points of their own.
    pub roots: Vec<PathBuf>,
    /// What [`Node::make`] mounted below them, in order.
    mounted: Vec<PathBuf>,
}

impl Node {
    /// Pins `dir/pods` and `dir/netns` and mounts `others` pods' mounts
    /// below them.
    pub fn make(dir: &Path, others: usize) -> Result<Node> {
        let roots = vec![dir.join("pods"), dir.join("netns")];
        for root in &roots {
            fs::create_dir_all(root)?;
        }
        // Whatever was pinned is unpinned when `node` is dropped, an error
        // here included.
        let mut node = Node {
            roots: pin_roots(&roots),
            mounted: Vec::new(),
        };
        if node.roots != roots {
            return Err(format!("could not make {roots:?} mount points").into());
        }
        for i in 0..others {
            let pod = node.roots[0].join(format!("other-{i}"));
            for dir in ["shm", "bundle/rootfs"] {
                node.mount(
                    Some("tmpfs"),
                    &pod.join(dir),
                    Some("tmpfs"),
                    MsFlags::empty(),
                )?;
            }
            let pin = node.roots[1].join(format!("other-{i}"));
            fs::write(&pin, "")?;
            node.mount(Some("/proc/self/ns/net"), &pin, None, MsFlags::MS_BIND)?;
        }
        Ok(node)
    }

    /// The pods' dir: a pod's bundle is `<pods>/<pod id>/bundle`, its
    /// containers' `<pods>/<pod id>/containers/<id>`.
    pub fn pods(&self) -> &Path {
        &self.roots[0]
    }

    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
    ) -> Result<()> {
        if fstype.is_some() {
            fs::create_dir_all(target)?;
        }
        nix::mount::mount(source, target, fstype, flags, Some("size=1m"))
            .map_err(|e| format!("mounting {}: {e}", target.display()))?;
        self.mounted.push(target.to_path_buf());
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            let _ = nix::mount::umount2(m, MntFlags::MNT_DETACH);
        }
        unpin_roots(&self.roots);
    }
}
