//! rtnetlink requests over a blocking socket, for a microvm pod's network.
//!
//! The host reads what CNI made in the pod's network namespace (its links,
//! addresses and routes) and joins the VM's tap device to the pod's
//! interface with `tc` redirection both ways; the guest gives its NIC the
//! pod's name, MTU, addresses and routes. Both sides use [`Netlink`]: a
//! `NETLINK_ROUTE` socket made in the calling thread's network namespace
//! (a socket keeps the namespace it was made in).
//!
//! Messages are netlink-packet-route's; this crate only sends one request at
//! a time and reads its replies up to the acknowledgement or the end of the
//! dump, so that every call is synchronous and its error names the request.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// What a request failed on.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: unreadable reply: {reason}")]
    Reply { what: String, reason: String },
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address of an Ethernet-like link.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
}

/// An address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
    /// rtnetlink's scope (0 universe, 253 link, 254 host).
    pub scope: u8,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// The outgoing interface's index.
    pub oif: Option<u32>,
    pub metric: Option<u32>,
    /// rtnetlink's scope (0 universe, 253 link).
    pub scope: u8,
    pub source: Option<IpAddr>,
    /// Made by the kernel for an address's subnet (or an IPv6 link-local
    /// prefix): it comes back by itself when the address is added.
    pub from_kernel: bool,
}

/// The main routing table.
const MAIN_TABLE: u8 = RouteHeader::RT_TABLE_MAIN;
/// `htons(ETH_P_ALL)`: a filter for every protocol.
const ALL_PROTOCOLS: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;

/// A `NETLINK_ROUTE` socket in the network namespace of the thread that
/// opened it.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    pub fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        Ok(Netlink {
            socket,
            sequence: 0,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and collects its replies: up to the end of a dump
    /// (`NLM_F_DUMP`), or up to the kernel's acknowledgement.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | flags;
        request.header.sequence_number = self.sequence;
        request.finalize();
        let mut bytes = vec![0; request.header.length as usize];
        request.serialize(&mut bytes);
        let refused = |source: io::Error| NetlinkError::Refused {
            what: what.to_string(),
            source,
        };
        self.socket.send(&bytes, 0).map_err(refused)?;
        let mut replies = Vec::new();
        loop {
            let received = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(refused)?;
            let mut offset = 0;
            while offset < received {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                    &self.buffer[offset..received],
                )
                .map_err(|e| NetlinkError::Reply {
                    what: what.to_string(),
                    reason: e.to_string(),
                })?;
                let length = reply.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(refused(io::Error::from_raw_os_error(-code.get()))),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Every interface.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.request(
            "listing links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// Every address of every interface.
    pub fn addresses(&mut self) -> Result<Vec<Address>> {
        let replies = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => address_of(a),
                _ => None,
            })
            .collect())
    }

    /// The unicast routes of the main table, IPv4 then IPv6.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = RouteMessage::default();
            message.header.address_family = family;
            let replies = self.request(
                "listing routes",
                RouteNetlinkMessage::GetRoute(message),
                NLM_F_DUMP,
            )?;
            routes.extend(replies.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_of(r),
                _ => None,
            }));
        }
        Ok(routes)
    }

    /// Renames the link and sets its MTU (the link must be down to be
    /// renamed); `None` leaves either as it is.
    pub fn configure_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        if let Some(name) = name {
            message.attributes.push(LinkAttribute::IfName(name.into()));
        }
        if let Some(mtu) = mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(
            &format!("configuring link {index} (name {name:?}, mtu {mtu:?})"),
            RouteNetlinkMessage::SetLink(message),
            NLM_F_ACK,
        )
        .map(drop)
    }

    /// Moves the link into the network namespace open at `netns`.
    pub fn move_to_netns(&mut self, index: u32, netns: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mut message = LinkMessage::default();
        message.header.index = index;
        message
            .attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        self.request(
            &format!("moving link {index} to another network namespace"),
            RouteNetlinkMessage::SetLink(message),
            NLM_F_ACK,
        )
        .map(drop)
    }

    /// Brings the link up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.request(
            &format!("bringing link {index} up"),
            RouteNetlinkMessage::SetLink(message),
            NLM_F_ACK,
        )
        .map(drop)
    }

    /// Adds `address/prefix_len` to the link (IPv6 without duplicate
    /// address detection: the pod's address is its own).
    pub fn add_address(&mut self, index: u32, address: IpAddr, prefix_len: u8) -> Result<()> {
        let mut message = AddressMessage::default();
        message.header.index = index;
        message.header.prefix_len = prefix_len;
        message.header.family = family_of(address);
        message.attributes.push(AddressAttribute::Local(address));
        message.attributes.push(AddressAttribute::Address(address));
        if address.is_ipv6() {
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            &format!("adding {address}/{prefix_len} to link {index}"),
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds the route to the main table, replacing one to the same
    /// destination.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = family_of(route.destination);
        message.header.destination_prefix_length = route.prefix_len;
        message.header.table = MAIN_TABLE;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::from(route.scope);
        message.header.kind = RouteType::Unicast;
        if route.prefix_len > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(route.destination.into()));
        }
        if let Some(gateway) = route.gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(gateway.into()));
        }
        if let Some(oif) = route.oif {
            message.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(metric) = route.metric {
            message.attributes.push(RouteAttribute::Priority(metric));
        }
        if let Some(source) = route.source {
            message
                .attributes
                .push(RouteAttribute::PrefSource(source.into()));
        }
        let via = route
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default();
        self.request(
            &format!(
                "adding the route to {}/{}{via}",
                route.destination, route.prefix_len
            ),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Adds the `ingress` qdisc (`tc qdisc add dev <index> ingress`).
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = TcHandle::INGRESS;
        message.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        message.attributes.push(TcAttribute::Kind("ingress".into()));
        self.request(
            &format!("adding an ingress qdisc to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Sends every frame arriving on `from` out of `to` (`tc filter add dev
    /// <from> parent ffff: protocol all u32 match u8 0 0 action mirred
    /// egress redirect dev <to>`, as Kata does: u32 is in every kernel that
    /// has tc, `matchall` is not); `from` needs its ingress qdisc.
    pub fn redirect_ingress(&mut self, from: u32, to: u32) -> Result<()> {
        let mut mirror = TcMirror::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        let mut message = TcMessage::with_index(from as i32);
        message.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        // Priority 1, every protocol.
        message.header.info = (1 << 16) | ALL_PROTOCOLS;
        // One key that matches every frame (mask 0).
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![TcU32Key::default()];
        message.attributes = vec![
            TcAttribute::Kind("u32".into()),
            TcAttribute::Options(vec![
                TcOption::U32(TcFilterU32Option::Selector(selector)),
                TcOption::U32(TcFilterU32Option::Action(vec![action])),
            ]),
        ];
        self.request(
            &format!("redirecting link {from}'s ingress to link {to}"),
            RouteNetlinkMessage::NewTrafficFilter(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}

fn family_of(address: IpAddr) -> AddressFamily {
    if address.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn link_of(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        loopback: message.header.flags.contains(LinkFlags::Loopback),
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    link
}

fn address_of(message: AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    for attribute in message.attributes {
        match attribute {
            AddressAttribute::Local(a) => local = Some(a),
            AddressAttribute::Address(a) => address = Some(a),
            _ => {}
        }
    }
    Some(Address {
        index: message.header.index,
        address: local.or(address)?,
        prefix_len: message.header.prefix_len,
        scope: message.header.scope.into(),
    })
}

fn ip_of(address: RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(a.into()),
        RouteAddress::Inet6(a) => Some(a.into()),
        _ => None,
    }
}

fn route_of(message: RouteMessage) -> Option<Route> {
    let header = &message.header;
    if header.table != MAIN_TABLE || header.kind != RouteType::Unicast {
        return None;
    }
    let mut route = Route {
        destination: match header.address_family {
            AddressFamily::Inet => IpAddr::from([0u8; 4]),
            AddressFamily::Inet6 => IpAddr::from([0u8; 16]),
            _ => return None,
        },
        prefix_len: header.destination_prefix_length,
        gateway: None,
        oif: None,
        metric: None,
        scope: header.scope.into(),
        source: None,
        from_kernel: header.protocol == RouteProtocol::Kernel,
    };
    for attribute in message.attributes {
        match attribute {
            RouteAttribute::Table(t) if t != u32::from(MAIN_TABLE) => return None,
            RouteAttribute::Destination(a) => route.destination = ip_of(a)?,
            RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
            RouteAttribute::Oif(i) => route.oif = Some(i),
            RouteAttribute::Priority(p) => route.metric = Some(p),
            RouteAttribute::PrefSource(a) => route.source = ip_of(a),
            _ => {}
        }
    }
    Some(route)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0xff];
        assert_eq!(format_mac(&mac), "02:42:ac:11:00:ff");
        assert_eq!(parse_mac("02:42:ac:11:00:ff"), Some(mac));
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:ff:01",
            "2:42:ac:11:00:ff",
            "zz:42:ac:11:00:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_protocol_is_eth_p_all_in_network_order() {
        assert_eq!(ALL_PROTOCOLS, 0x0300);
    }
}
