//! CNI networks of a test's own: a bridge + host-local conflist in a
//! `caissond`'s CNI dir, and the removal of what the plugins leave on the
//! host by design (the bridge, host-local's allocations, portmap's shared
//! nat chains). Used by the network and metrics tests and the `cri --cni`
//! benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::daemon::Caissond;
use crate::require;

/// A test's CNI network: its conflist and, on drop, the removal of what the
/// plugins leave on the host by design (the bridge, host-local's dir).
/// Declare it before the [`Caissond`] so the pods go first.
pub struct TestNetwork {
    pub name: String,
    pub bridge: String,
    /// The /24 prefix, e.g. "10.231.1".
    pub prefix: String,
    /// portmap's shared nat chains did not exist before this test: remove them.
    remove_portmap_chains: bool,
}

/// The nat chains portmap makes once per host (and never removes), with
/// the jumps to them.
const PORTMAP_JUMPS: &[(&str, &[&str])] = &[
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
const PORTMAP_CHAINS: &[&str] = &[
    "CNI-HOSTPORT-DNAT",
    "CNI-HOSTPORT-MASQ",
    "CNI-HOSTPORT-SETMARK",
];

fn nat_chain_exists(chain: &str) -> bool {
    Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", chain])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl TestNetwork {
    pub fn new(name: &str, bridge: &str, prefix: &str) -> TestNetwork {
        require::program("ip", "iproute2");
        require::program("iptables", "iptables");
        assert!(
            Path::new("/usr/lib/cni/bridge").is_file(),
            "the CNI plugins are required: install Debian's containernetworking-plugins package (`make deps` does)"
        );
        let net = TestNetwork {
            name: name.into(),
            bridge: bridge.into(),
            prefix: prefix.into(),
            remove_portmap_chains: false,
        };
        net.cleanup();
        net
    }

    /// This test uses portmap: its shared chains go afterwards if they are new.
    pub fn with_portmap(mut self) -> TestNetwork {
        self.remove_portmap_chains = !portmap_chains_exist();
        self
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// bridge + host-local (+ `extra` plugins) as a 1.0.0 conflist.
    pub fn conflist(&self, extra: &str) -> String {
        format!(
            r#"{{"cniVersion": "1.0.0", "name": "{name}", "plugins": [
  {{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{prefix}.0/24"}}]]}}}}{extra}
]}}"#,
            name = self.name,
            bridge = self.bridge,
            prefix = self.prefix,
        )
    }

    pub fn install(&self, d: &Caissond, extra: &str) -> PathBuf {
        std::fs::create_dir_all(d.cni_conf_dir()).unwrap();
        let path = d.cni_conf_dir().join(format!("10-{}.conflist", self.name));
        std::fs::write(&path, self.conflist(extra)).unwrap();
        path
    }

    /// IPs host-local holds for this network.
    pub fn allocations(&self) -> Vec<String> {
        let dir = Path::new("/var/lib/cni/networks").join(&self.name);
        let mut ips: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        ips
    }

    /// Interfaces (veths) attached to the bridge.
    pub fn ports(&self) -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// iptables rules (filter and nat) that mention this network's subnet.
    pub fn iptables_rules(&self) -> Vec<String> {
        let out = Command::new("iptables-save").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("{}.", self.prefix)))
            .map(String::from)
            .collect()
    }

    pub fn cleanup(&self) {
        remove_network_leftovers(&self.name, &self.bridge);
        remove_subnet_portmap_chains(&self.prefix);
        if self.remove_portmap_chains {
            remove_portmap_chains();
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Removes the bridge `bridge` and host-local's allocations of network
/// `name`.
pub fn remove_network_leftovers(name: &str, bridge: &str) {
    if Path::new("/sys/class/net").join(bridge).exists() {
        let _ = Command::new("ip").args(["link", "del", bridge]).status();
    }
    let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(name));
}

/// Removes portmap's per-pod chains (`CNI-DN-*`) that forward to subnet
/// `prefix` (`10.231.92`) and the rules jumping to them: what a pod whose
/// CNI DEL never ran (a test killed mid-ADD) leaves.
pub fn remove_subnet_portmap_chains(prefix: &str) {
    let Ok(out) = Command::new("iptables-save").args(["-t", "nat"]).output() else {
        return;
    };
    let save = String::from_utf8_lossy(&out.stdout);
    let rule = |line: &str| -> Option<(String, String)> {
        let rest = line.strip_prefix("-A ")?;
        let (chain, spec) = rest.split_once(' ')?;
        Some((chain.to_string(), spec.to_string()))
    };
    let needle = format!("{prefix}.");
    let chains: std::collections::BTreeSet<String> = save
        .lines()
        .filter_map(rule)
        .filter(|(chain, spec)| chain.starts_with("CNI-DN-") && spec.contains(&needle))
        .map(|(chain, _)| chain)
        .collect();
    for (chain, spec) in save.lines().filter_map(rule) {
        let target = spec.rsplit(" -j ").next().unwrap_or_default();
        if chains.contains(target.trim()) {
            // iptables-save quotes as a shell would read it back.
            let _ = Command::new("sh")
                .args(["-c", &format!("iptables -w -t nat -D {chain} {spec}")])
                .output();
        }
    }
    for chain in &chains {
        for op in ["-F", "-X"] {
            let _ = Command::new("iptables")
                .args(["-w", "-t", "nat", op, chain])
                .output();
        }
    }
}

/// Removes portmap's shared nat chains and the jumps to them.
pub fn remove_portmap_chains() {
    for (chain, rule) in PORTMAP_JUMPS {
        let _ = Command::new("iptables")
            .args(["-w", "-t", "nat", "-D", chain])
            .args(*rule)
            .output();
    }
    for op in ["-F", "-X"] {
        for chain in PORTMAP_CHAINS {
            let _ = Command::new("iptables")
                .args(["-w", "-t", "nat", op, chain])
                .output();
        }
    }
}

/// Whether portmap's shared chains exist (then a test or bench must leave
/// them).
pub fn portmap_chains_exist() -> bool {
    nat_chain_exists("CNI-HOSTPORT-DNAT")
}
