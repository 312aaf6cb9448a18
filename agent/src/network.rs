//! The pod's network in the guest (`ConfigureNetwork`): the host made the
//! pod's interfaces with CNI and joined each to a tap this guest's NICs sit
//! on. Each NIC (found by the MAC address the host gave it) moves into the
//! sandbox's network namespace, which the pod's containers join, and takes
//! its interface's name, MTU and addresses; `lo` comes up there (CNI's
//! loopback plugin does that on the host); then the pod's routes are added.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use caisson_agent_proto::{code, ConfigureNetwork};
use caisson_netlink::{parse_mac, Netlink, Route};

use crate::agent::{fail, Failure, Outcome};

/// How long a NIC may take to appear (its driver probes at boot).
const NIC_WAIT: Duration = Duration::from_secs(10);

fn invalid(what: String) -> Failure {
    fail(code::INVALID_ARGUMENT, what)
}

fn internal(e: impl std::fmt::Display) -> Failure {
    fail(code::INTERNAL, e.to_string())
}

/// Configures the network of the sandbox whose init is `sandbox_pid`.
pub fn configure(request: ConfigureNetwork, sandbox_pid: i32) -> Outcome<()> {
    let netns_path = format!("/proc/{sandbox_pid}/ns/net");
    let netns = File::open(&netns_path).map_err(|e| internal(format!("{netns_path}: {e}")))?;
    let mut macs = Vec::new();
    for (n, interface) in request.interfaces.iter().enumerate() {
        macs.push(
            parse_mac(&interface.mac)
                .ok_or_else(|| invalid(format!("interfaces[{n}].mac: {:?}", interface.mac)))?,
        );
    }
    // The NICs appear in the guest's own namespace.
    let mut nl = Netlink::open().map_err(internal)?;
    for (mac, interface) in macs.iter().zip(&request.interfaces) {
        let deadline = Instant::now() + NIC_WAIT;
        let index = loop {
            let links = nl.links().map_err(internal)?;
            if let Some(link) = links.into_iter().find(|l| l.mac == Some(*mac)) {
                break link.index;
            }
            if Instant::now() > deadline {
                return Err(fail(
                    code::FAILED_PRECONDITION,
                    format!("no NIC with MAC {} in the guest", interface.mac),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        nl.move_to_netns(index, netns.as_fd()).map_err(internal)?;
    }
    // The rest happens in the pod's namespace, from a thread that enters it
    // and ends.
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| internal(format!("entering {netns_path}: {e}")))?;
        configure_here(&request, &macs)
    })
    .join()
    .map_err(|_| internal("the network thread panicked"))?
}

fn configure_here(request: &ConfigureNetwork, macs: &[[u8; 6]]) -> Outcome<()> {
    let mut nl = Netlink::open().map_err(internal)?;
    let links = nl.links().map_err(internal)?;
    for lo in links.iter().filter(|l| l.loopback) {
        nl.set_up(lo.index).map_err(internal)?;
    }
    let mut indexes = Vec::new();
    for (n, (interface, mac)) in request.interfaces.iter().zip(macs).enumerate() {
        let link = links
            .iter()
            .find(|l| l.mac == Some(*mac))
            .ok_or_else(|| internal(format!("the NIC {} did not move", interface.mac)))?;
        let name = (!interface.name.is_empty() && interface.name != link.name)
            .then_some(interface.name.as_str());
        let mtu = (interface.mtu != 0).then_some(interface.mtu);
        nl.configure_link(link.index, name, mtu).map_err(internal)?;
        for (m, address) in interface.addresses.iter().enumerate() {
            let ip: IpAddr = address.address.parse().map_err(|_| {
                invalid(format!(
                    "interfaces[{n}].addresses[{m}].address: {:?}",
                    address.address
                ))
            })?;
            let prefix = prefix_len(ip, address.prefix_len).ok_or_else(|| {
                invalid(format!(
                    "interfaces[{n}].addresses[{m}].prefix_len: {}",
                    address.prefix_len
                ))
            })?;
            nl.add_address(link.index, ip, prefix).map_err(internal)?;
        }
        nl.set_up(link.index).map_err(internal)?;
        indexes.push((interface.name.clone(), link.index));
    }
    for (n, route) in request.routes.iter().enumerate() {
        let field = |what: &str| format!("routes[{n}].{what}");
        let (destination, prefix) = parse_cidr(&route.destination)
            .ok_or_else(|| invalid(format!("{}: {:?}", field("destination"), route.destination)))?;
        let ip = |text: &str, what: &str| -> Outcome<Option<IpAddr>> {
            if text.is_empty() {
                return Ok(None);
            }
            text.parse()
                .map(Some)
                .map_err(|_| invalid(format!("{}: {text:?}", field(what))))
        };
        let oif = indexes
            .iter()
            .find(|(name, _)| *name == route.device)
            .map(|(_, index)| *index)
            .ok_or_else(|| {
                invalid(format!(
                    "{}: no interface {:?}",
                    field("device"),
                    route.device
                ))
            })?;
        nl.add_route(&Route {
            destination,
            prefix_len: prefix,
            gateway: ip(&route.gateway, "gateway")?,
            oif: Some(oif),
            metric: (route.metric != 0).then_some(route.metric),
            scope: u8::try_from(route.scope)
                .map_err(|_| invalid(format!("{}: {}", field("scope"), route.scope)))?,
            source: ip(&route.source, "source")?,
            from_kernel: false,
        })
        .map_err(internal)?;
    }
    Ok(())
}

fn prefix_len(ip: IpAddr, prefix: u32) -> Option<u8> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(prefix as u8)
}

/// `10.88.0.0/16` → the address and the prefix length.
fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    Some((ip, prefix_len(ip, prefix.parse().ok()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_cidr("10.88.0.0/16"),
            Some(("10.88.0.0".parse().unwrap(), 16))
        );
        assert_eq!(parse_cidr("::/0"), Some(("::".parse().unwrap(), 0)));
        for bad in [
            "10.88.0.0",
            "10.88.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }
}
