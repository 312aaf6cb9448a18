//! Every request against the kernel, in a network namespace of the test's
//! own (made by a thread that unshares it, so the host's is never touched),
//! checked with iproute2's `ip` and `tc`. Needs root and iproute2.

use std::net::IpAddr;
use std::process::Command;

use caisson_netlink::{Netlink, Route};

/// Runs `f` on a thread in a new network namespace, which goes away with
/// the thread (nothing else holds it).
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) needs root");
        f()
    })
    .join()
    .expect("the netns thread panicked")
}

/// Runs iproute2 in the calling thread's network namespace (a child
/// inherits its thread's namespaces).
fn ip(args: &[&str]) -> String {
    let program = args[0];
    let out = Command::new(program)
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{program} is required (iproute2): {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn links_are_configured_addressed_and_routed() {
    in_new_netns(|| {
        ip(&[
            "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ]);
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        assert!(
            links.iter().any(|l| l.loopback && l.name == "lo"),
            "{links:?}"
        );
        let d0 = links.iter().find(|l| l.name == "d0").expect("d0 listed");
        assert!(d0.mac.is_some() && !d0.up);

        nl.configure_link(d0.index, Some("eth7"), Some(1400))
            .unwrap();
        nl.set_up(d0.index).unwrap();
        let shown = ip(&["ip", "link", "show", "eth7"]);
        assert!(shown.contains("mtu 1400"), "{shown}");
        assert!(shown.contains(",UP"), "{shown}");

        let address: IpAddr = "10.77.0.5".parse().unwrap();
        nl.add_address(d0.index, address, 24).unwrap();
        nl.add_address(d0.index, "fd77::5".parse().unwrap(), 64)
            .unwrap();
        let err = nl.add_address(d0.index, address, 24).unwrap_err();
        assert!(err.to_string().contains("10.77.0.5/24"), "{err}");
        let shown = ip(&["ip", "addr", "show", "eth7"]);
        assert!(shown.contains("inet 10.77.0.5/24"), "{shown}");
        assert!(shown.contains("inet6 fd77::5/64"), "{shown}");
        let addresses = nl.addresses().unwrap();
        assert!(
            addresses
                .iter()
                .any(|a| a.index == d0.index && a.address == address && a.prefix_len == 24),
            "{addresses:?}"
        );

        nl.add_route(&Route {
            destination: "0.0.0.0".parse().unwrap(),
            prefix_len: 0,
            gateway: Some("10.77.0.1".parse().unwrap()),
            oif: Some(d0.index),
            metric: None,
            scope: 0,
            source: None,
            from_kernel: false,
        })
        .unwrap();
        let shown = ip(&["ip", "route", "show"]);
        assert!(shown.contains("default via 10.77.0.1 dev eth7"), "{shown}");
        let routes = nl.routes().unwrap();
        let default = routes
            .iter()
            .find(|r| r.prefix_len == 0 && r.destination.is_ipv4())
            .expect("the default route listed");
        assert_eq!(default.gateway, Some("10.77.0.1".parse().unwrap()));
        assert_eq!(default.oif, Some(d0.index));
        assert!(!default.from_kernel);
        let subnet = routes
            .iter()
            .find(|r| r.prefix_len == 24 && r.destination == "10.77.0.0".parse::<IpAddr>().unwrap())
            .expect("the subnet route listed");
        assert!(subnet.from_kernel && subnet.gateway.is_none(), "{subnet:?}");
    });
}

#[test]
fn ingress_is_redirected_both_ways() {
    in_new_netns(|| {
        ip(&[
            "ip", "link", "add", "a0", "type", "veth", "peer", "name", "b0",
        ]);
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        let index = |name: &str| links.iter().find(|l| l.name == name).unwrap().index;
        let (a, b) = (index("a0"), index("b0"));
        for (from, to) in [(a, b), (b, a)] {
            nl.add_ingress_qdisc(from).unwrap();
            nl.redirect_ingress(from, to).unwrap();
        }
        let err = nl.add_ingress_qdisc(a).unwrap_err();
        assert!(err.to_string().contains("ingress qdisc"), "{err}");
        for (dev, to) in [("a0", "b0"), ("b0", "a0")] {
            let shown = ip(&["tc", "filter", "show", "dev", dev, "ingress"]);
            assert!(shown.contains("u32"), "{shown}");
            assert!(
                shown.contains(&format!("Egress Redirect to device {to}")),
                "{dev}: {shown}"
            );
        }
    });
}
