//! `--cni`: both daemons wire their pods through the same CNI conflist
//! (bridge, host-local, portmap, loopback from Debian's
//! containernetworking-plugins), instead of host-network pods.

use std::fs;
use std::path::Path;
use std::process::Command;

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

/// Whether portmap's shared nat chains exist (made once per host, never
/// removed by the plugin).
pub fn portmap_chains_exist() -> bool {
    Command::new("iptables")
        .args(["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes what the plugins leave by design once the pods are gone: the
/// bridge, host-local's dir, and portmap's chains if the bench made them.
pub fn cleanup(remove_portmap_chains: bool) {
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    }
    let _ = fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(NETWORK));
    if remove_portmap_chains {
        let jumps: [(&str, &[&str]); 3] = [
            (
                "PREROUTING",
                &[
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    "CNI-HOSTPORT-DNAT",
                ],
            ),
            (
                "OUTPUT",
                &[
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    "CNI-HOSTPORT-DNAT",
                ],
            ),
            (
                "POSTROUTING",
                &[
                    "-m",
                    "comment",
                    "--comment",
                    "CNI portfwd requiring masquerade",
                    "-j",
                    "CNI-HOSTPORT-MASQ",
                ],
            ),
        ];
        for (chain, rule) in jumps {
            let _ = Command::new("iptables")
                .args(["-t", "nat", "-D", chain])
                .args(rule)
                .output();
        }
        for op in ["-F", "-X"] {
            for chain in [
                "CNI-HOSTPORT-DNAT",
                "CNI-HOSTPORT-MASQ",
                "CNI-HOSTPORT-SETMARK",
            ] {
                let _ = Command::new("iptables")
                    .args(["-t", "nat", op, chain])
                    .output();
            }
        }
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
