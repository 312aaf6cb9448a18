//! The test harness's own network cleanup: portmap's per-pod chains that a
//! pod killed mid-CNI leaves behind are removed with the test's network.
//! Needs root and iptables.

use std::process::Command;

fn nat() -> String {
    let out = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn iptables(args: &[&str]) {
    let status = Command::new("iptables")
        .args(["-w", "-t", "nat"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "iptables {args:?}");
}

#[test]
fn a_subnets_leftover_portmap_chains_are_removed_and_others_kept() {
    caisson_tests::require::root("iptables");
    // A per-pod chain for our subnet and one for another, each jumped to
    // from a chain standing in for CNI-HOSTPORT-DNAT, with portmap's quoted
    // comment.
    let (ours, theirs, from) = (
        "CNI-DN-cst0test0ours",
        "CNI-DN-cst0test0theirs",
        "CST-TEST-HOSTPORT",
    );
    for chain in [ours, theirs, from] {
        iptables(&["-N", chain]);
    }
    iptables(&[
        "-A",
        ours,
        "-p",
        "tcp",
        "--dport",
        "32001",
        "-j",
        "DNAT",
        "--to-destination",
        "10.231.88.7:80",
    ]);
    iptables(&[
        "-A",
        theirs,
        "-p",
        "tcp",
        "--dport",
        "32002",
        "-j",
        "DNAT",
        "--to-destination",
        "10.231.89.7:80",
    ]);
    for (chain, id) in [(ours, "pod-a"), (theirs, "pod-b")] {
        let comment = format!("dnat name: \"cst-net\" id: \"{id}\"");
        iptables(&[
            "-A",
            from,
            "-p",
            "tcp",
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            chain,
        ]);
    }

    caisson_tests::cni::remove_subnet_portmap_chains("10.231.88");
    let left = nat();
    let gone = !left.contains(ours);
    let kept = left.contains(&format!("-j {theirs}"));
    // Our own chains go whatever happened.
    for chain in [from, theirs] {
        let _ = Command::new("iptables")
            .args(["-w", "-t", "nat", "-F", chain])
            .status();
        let _ = Command::new("iptables")
            .args(["-w", "-t", "nat", "-X", chain])
            .status();
    }
    assert!(gone, "the subnet's chain or a jump to it is left:\n{left}");
    assert!(kept, "another subnet's chain was touched:\n{left}");
}
