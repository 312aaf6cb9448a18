//! `--cni`: both daemons wire their pods through the same CNI conflist
//! (bridge, host-local, portmap, loopback from Debian's
//! containernetworking-plugins), instead of host-network pods.

use std::fs;
use std::path::Path;

use super::Result;

/// The network's name: host-local keeps its IPs in /var/lib/cni/networks/<name>.
pub const NETWORK: &str = "caisson-bench";
pub const BRIDGE: &str = "cbench0";
/// Where the plugins are (Debian's containernetworking-plugins).
pub const BIN_DIR: &str = "/usr/lib/cni";
/// A subnet the bench owns while it runs.
const SUBNET: &str = "10.232.0.0/16";

/// The conflist both daemons load.
pub fn conflist() -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "{NETWORK}",
  "plugins": [
    {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false,
      "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{SUBNET}"}}]]}}}},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}},
    {{"type": "loopback"}}
  ]
}}
"#
    )
}

/// Writes [`conflist`] into `conf_dir`.
pub fn install(conf_dir: &Path) -> Result<()> {
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        if !Path::new(BIN_DIR).join(plugin).is_file() {
            return Err(format!(
                "{BIN_DIR}/{plugin} not found: install the Debian package `containernetworking-plugins`"
            )
            .into());
        }
    }
    fs::create_dir_all(conf_dir)?;
    fs::write(conf_dir.join("10-caisson-bench.conflist"), conflist())?;
    Ok(())
}

pub use caisson_tests::cni::portmap_chains_exist;

/// Removes what the plugins leave by design once the pods are gone: the
/// bridge, host-local's dir, and portmap's chains if the bench made them.
pub fn cleanup(remove_portmap_chains: bool) {
    caisson_tests::cni::remove_network_leftovers(NETWORK, BRIDGE);
    if remove_portmap_chains {
        caisson_tests::cni::remove_portmap_chains();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conflist_is_json_with_the_bench_bridge() {
        let v: serde_json::Value = serde_json::from_str(&super::conflist()).unwrap();
        assert_eq!(v["plugins"][0]["bridge"], super::BRIDGE);
        assert_eq!(v["name"], super::NETWORK);
    }
}
