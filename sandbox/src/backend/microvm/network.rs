//! A microvm pod's network: CNI made it in the pod's network namespace on
//! the host, exactly as for the other handlers; the VM gets it whole.
//!
//! In that namespace, each interface CNI made (`eth0`) gets a tap device,
//! and `tc` joins the two: every frame arriving on the interface is
//! redirected out of the tap (into the guest), every frame the guest sends
//! is redirected out of the interface (what Kata calls `tcfilter`). No
//! bridge is added, and the pod's IP belongs to the guest: its NIC takes
//! the interface's MAC address, name, MTU, addresses and routes, which the
//! agent sets from [`PodNetwork::config`]. QEMU's virtio-net device opens
//! nothing itself: it is handed the tap's file descriptor (no
//! `/dev/vhost-net` here, so `vhost=off`).
//!
//! The taps live as long as their descriptors: once QEMU (which holds the
//! last copy) exits, they are gone, and their `tc` filters with them; the
//! interface's ingress qdisc goes with the namespace CNI made.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use caisson_agent_proto as proto;
use caisson_netlink::{format_mac, Netlink, Route};

/// One NIC of the VM: a tap device in the pod's network namespace.
#[derive(Debug)]
pub struct Nic {
    /// The tap's descriptor, for QEMU's `-netdev tap,fd=`.
    pub tap: OwnedFd,
    /// The pod interface's MAC address, which the guest's NIC takes.
    pub mac: [u8; 6],
    /// The tap's name in the pod's namespace.
    pub tap_name: String,
}

/// What the VM is given of the pod's network.
#[derive(Debug, Default)]
pub struct PodNetwork {
    pub nics: Vec<Nic>,
    /// For the agent's `ConfigureNetwork`.
    pub config: proto::ConfigureNetwork,
}

/// The network namespace `spec` joins, if it names one.
pub fn netns_of(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// Prepares the pod's network in the namespace at `netns`: a tap for each
/// interface CNI made, joined to it. A namespace with only `lo` (no CNI
/// configured) gives a VM with no NIC.
pub fn prepare(netns: &Path) -> Result<PodNetwork, String> {
    let ns = File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    let shown = netns.display().to_string();
    // setns applies to the calling thread only: a thread of its own enters
    // the namespace and ends with it (the netlink socket and the taps keep
    // the namespace they were made in).
    std::thread::Builder::new()
        .name("pod-netns".into())
        .spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering {shown}: {e}"))?;
            prepare_here()
        })
        .map_err(|e| format!("starting the netns thread: {e}"))?
        .join()
        .map_err(|_| "the netns thread panicked".to_string())?
}

fn prepare_here() -> Result<PodNetwork, String> {
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    let links = nl.links().map_err(|e| e.to_string())?;
    let addresses = nl.addresses().map_err(|e| e.to_string())?;
    let routes = nl.routes().map_err(|e| e.to_string())?;
    let mut network = PodNetwork::default();
    let pod_links: Vec<_> = links
        .iter()
        .filter(|l| !l.loopback && l.mac.is_some())
        .collect();
    for (n, link) in pod_links.iter().enumerate() {
        let mac = link.mac.expect("filtered");
        let tap_name = format!("tap{n}_caisson");
        let (tap, tap_index) = open_tap(&tap_name)?;
        nl.configure_link(tap_index, None, Some(link.mtu))
            .map_err(|e| e.to_string())?;
        nl.set_up(tap_index).map_err(|e| e.to_string())?;
        for (from, to) in [(link.index, tap_index), (tap_index, link.index)] {
            nl.add_ingress_qdisc(from).map_err(|e| e.to_string())?;
            nl.redirect_ingress(from, to).map_err(|e| e.to_string())?;
        }
        network.config.interfaces.push(proto::Interface {
            mac: format_mac(&mac),
            name: link.name.clone(),
            mtu: link.mtu,
            addresses: addresses
                .iter()
                .filter(|a| a.index == link.index && is_pod_address(a.address, a.scope))
                .map(|a| proto::IpAddress {
                    address: a.address.to_string(),
                    prefix_len: a.prefix_len.into(),
                })
                .collect(),
        });
        network.nics.push(Nic { tap, mac, tap_name });
    }
    network.config.routes = guest_routes(&routes, &pod_links);
    Ok(network)
}

/// An address the guest takes: not a link-local one (the guest's NIC makes
/// its own) and not host-scoped.
fn is_pod_address(address: IpAddr, scope: u8) -> bool {
    const HOST_SCOPE: u8 = 254;
    let link_local = match address {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    };
    !link_local && scope != HOST_SCOPE
}

/// The routes the guest adds: those through the pod's interfaces that the
/// kernel does not make by itself when an address is added, link-scoped
/// ones first (a gateway must be reachable when its route is added).
fn guest_routes(routes: &[Route], links: &[&caisson_netlink::Link]) -> Vec<proto::Route> {
    let mut kept: Vec<proto::Route> = routes
        .iter()
        .filter(|r| !r.from_kernel)
        .filter(|r| !matches!(r.destination, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80))
        .filter_map(|r| {
            let device = links.iter().find(|l| Some(l.index) == r.oif)?;
            Some(proto::Route {
                destination: format!("{}/{}", r.destination, r.prefix_len),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: device.name.clone(),
                metric: r.metric.unwrap_or(0),
                scope: r.scope.into(),
                source: r.source.map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    kept.sort_by_key(|r| !r.gateway.is_empty());
    kept
}

/// Opens `/dev/net/tun` as a tap named `name` in the calling thread's
/// network namespace: no packet-information header, virtio-net headers on
/// (QEMU finds them and offloads checksums). Returns it with its index.
fn open_tap(name: &str) -> Result<(OwnedFd, u32), String> {
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    // SAFETY: an all-zero ifreq is valid; the name fits (checked) and the
    // ioctl reads the name and flags only.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        if name.len() >= ifr.ifr_name.len() {
            return Err(format!("tap name {name:?} is too long"));
        }
        for (i, b) in name.bytes().enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        if libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &ifr) != 0 {
            return Err(format!(
                "making tap {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // The name was checked above: no NUL inside.
    let c_name = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated name; the lookup runs in this thread's
    // network namespace, where the tap was just made.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(format!(
            "{name} was made but has no index: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((OwnedFd::from(tun), index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use caisson_netlink::Link;

    fn route(dest: &str, prefix: u8, gw: Option<&str>, oif: u32, kernel: bool) -> Route {
        Route {
            destination: dest.parse().unwrap(),
            prefix_len: prefix,
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: Some(oif),
            metric: None,
            scope: if gw.is_some() { 0 } else { 253 },
            source: None,
            from_kernel: kernel,
        }
    }

    #[test]
    fn the_guest_gets_the_routes_the_kernel_does_not_make_gateways_last() {
        let eth0 = Link {
            index: 2,
            name: "eth0".into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            mtu: 1500,
            up: true,
            loopback: false,
        };
        let routes = [
            route("0.0.0.0", 0, Some("10.88.0.1"), 2, false),
            route("10.88.0.0", 16, None, 2, true),
            route("10.99.0.0", 16, None, 2, false),
            route("fe80::", 64, None, 2, true),
            route("192.168.0.0", 24, Some("10.88.0.1"), 9, false),
        ];
        let got = guest_routes(&routes, &[&eth0]);
        let shown: Vec<_> = got
            .iter()
            .map(|r| format!("{} {} {}", r.destination, r.gateway, r.device))
            .collect();
        assert_eq!(shown, ["10.99.0.0/16  eth0", "0.0.0.0/0 10.88.0.1 eth0"]);
    }

    #[test]
    fn link_local_and_host_addresses_stay_on_the_host() {
        for (addr, scope, kept) in [
            ("10.88.0.5", 0, true),
            ("fd00::5", 0, true),
            ("169.254.1.1", 253, false),
            ("fe80::1", 253, false),
            ("127.0.0.1", 254, false),
        ] {
            assert_eq!(is_pod_address(addr.parse().unwrap(), scope), kept, "{addr}");
        }
    }
}
