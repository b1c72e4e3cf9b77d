//! Host routes to where each ENI lives, in the gateway's main routing table
//! over rtnetlink (rtnetlink(7)). They are what makes traffic follow an ENI:
//! the agent's programmed next hops (`nexthops.rs`) are resolved from this
//! table, and the kernel's own forwarding and `bpf_fib_lookup` read it too,
//! so once a replace is acknowledged no packet for the address is routed
//! to the old place.
//!
//! The agent's routes carry their own protocol number, [`RTPROT_EIP_NAT`],
//! so it can list and remove exactly its own (`ip route show proto 234`).

use std::{collections::BTreeMap, ffi::CString, io, net::Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
        RouteScope, RouteType,
    },
    AddressFamily, RouteNetlinkMessage,
};
use thiserror::Error;

use crate::{model::Location, netlink::Netlink};

/// Route protocol of the agent's routes (include/uapi/linux/rtnetlink.h
/// leaves values above RTPROT_STATIC to routing daemons; 234 is unused).
pub const RTPROT_EIP_NAT: u8 = 234;

#[derive(Debug, Error)]
pub enum RouteError {
    #[error("interface {0} does not exist on this gateway")]
    NoSuchInterface(String),
    #[error("rtnetlink: {op} {addr}")]
    Kernel {
        op: &'static str,
        addr: Ipv4Addr,
        #[source]
        source: io::Error,
    },
    #[error("rtnetlink socket")]
    Socket(#[source] io::Error),
}

pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The agent's routes, over a blocking rtnetlink socket.
pub struct Routes {
    netlink: Netlink,
}

/// A route message for `addr/32` in the main table, with our protocol.
pub(crate) fn host_route(addr: Ipv4Addr, scope: RouteScope) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 32;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Other(RTPROT_EIP_NAT);
    m.header.scope = scope;
    m.header.kind = RouteType::Unicast;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(addr)));
    m
}

pub(crate) fn ipv4(a: &RouteAddress) -> Option<Ipv4Addr> {
    match a {
        RouteAddress::Inet(v) => Some(*v),
        _ => None,
    }
}

/// The first IPv4 address of interface `ifindex`: where the gateway's own
/// ICMP errors out of that interface come from.
pub fn interface_address(ifindex: u32) -> io::Result<Option<Ipv4Addr>> {
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    let replies = Netlink::open()?.dump(RouteNetlinkMessage::GetAddress(m))?;
    Ok(replies.into_iter().find_map(|r| match r {
        RouteNetlinkMessage::NewAddress(a) if a.header.index == ifindex => {
            a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(std::net::IpAddr::V4(v))
                | AddressAttribute::Address(std::net::IpAddr::V4(v)) => Some(*v),
                _ => None,
            })
        }
        _ => None,
    }))
}

/// The route the kernel's FIB holds for `addr` (RTM_F_FIB_MATCH: the table
/// entry itself, not the result of a lookup), if any.
pub(crate) fn fib_match(netlink: &mut Netlink, addr: Ipv4Addr) -> io::Result<Option<RouteMessage>> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 32;
    m.header.flags = RouteFlags::FibMatch;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(addr)));
    match netlink.request(RouteNetlinkMessage::GetRoute(m)) {
        Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })),
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Routes {
    pub fn open() -> Result<Self, RouteError> {
        Ok(Self {
            netlink: Netlink::open().map_err(RouteError::Socket)?,
        })
    }

    /// Points `addr/32` at `location`, replacing any route of ours.
    pub fn replace(&mut self, addr: Ipv4Addr, location: &Location) -> Result<(), RouteError> {
        let oif = match &location.dev {
            Some(dev) => {
                Some(ifindex(dev).ok_or_else(|| RouteError::NoSuchInterface(dev.clone()))?)
            }
            None => None,
        };
        // With no next hop the address is on the link itself.
        let scope = match location.via {
            Some(_) => RouteScope::Universe,
            None => RouteScope::Link,
        };
        let mut m = host_route(addr, scope);
        if let Some(via) = location.via {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(via)));
        }
        if let Some(oif) = oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        self.netlink
            .change(
                RouteNetlinkMessage::NewRoute(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(|source| RouteError::Kernel {
                op: "replacing the route to",
                addr,
                source,
            })
    }

    /// Removes our route to `addr/32`; one that is not there is no error.
    pub fn delete(&mut self, addr: Ipv4Addr) -> Result<(), RouteError> {
        // Any scope: fib_table_delete() matches a route's scope only when
        // one other than RT_SCOPE_NOWHERE is given.
        let m = host_route(addr, RouteScope::NoWhere);
        match self.netlink.change(RouteNetlinkMessage::DelRoute(m), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r.map_err(|source| RouteError::Kernel {
                op: "deleting the route to",
                addr,
                source,
            }),
        }
    }

    /// Checks that `location` can carry a route, as the kernel will when the
    /// route is installed (fib_check_nh(): a next hop must be on a directly
    /// connected network), so that an event naming an unusable location is
    /// refused before anything is recorded. Returns why not.
    pub fn check(&mut self, location: &Location) -> Result<(), String> {
        let oif = match &location.dev {
            Some(dev) => {
                Some(ifindex(dev).ok_or_else(|| format!("interface {dev} does not exist"))?)
            }
            None => None,
        };
        let Some(via) = location.via else {
            return Ok(());
        };
        // RTM_GETROUTE for the next hop: how the gateway itself reaches it.
        // No RTA_OIF: with one, the kernel assumes an unrouted destination
        // is on that link (__ip_route_output_key_hash), which the route
        // itself will not accept; compare the interface afterwards.
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 32;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(via)));
        let answer = self.netlink.request(RouteNetlinkMessage::GetRoute(m));
        let route = match answer {
            Err(e) => return Err(format!("the gateway has no route to next hop {via} ({e})")),
            Ok(replies) => replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            }),
        };
        let Some(route) = route.filter(|r| r.header.kind == RouteType::Unicast) else {
            return Err(format!(
                "next hop {via} is not a unicast address reachable from the gateway"
            ));
        };
        let mut gateway = false;
        let mut out = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Gateway(_) => gateway = true,
                RouteAttribute::Oif(i) => out = Some(*i),
                _ => {}
            }
        }
        if gateway {
            return Err(format!(
                "next hop {via} is not on a network the gateway is directly connected to"
            ));
        }
        match (oif, &location.dev) {
            (Some(want), Some(dev)) if out != Some(want) => {
                Err(format!("next hop {via} is not reached through {dev}"))
            }
            _ => Ok(()),
        }
    }

    /// Every route of ours in the main table.
    pub fn list(&mut self) -> Result<BTreeMap<Ipv4Addr, Location>, RouteError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        let replies = self
            .netlink
            .dump(RouteNetlinkMessage::GetRoute(m))
            .map_err(|source| RouteError::Kernel {
                op: "listing routes, at",
                addr: Ipv4Addr::UNSPECIFIED,
                source,
            })?;
        let mut out = BTreeMap::new();
        for r in replies {
            let RouteNetlinkMessage::NewRoute(r) = r else {
                continue;
            };
            if r.header.destination_prefix_length != 32
                || r.header.protocol != RouteProtocol::Other(RTPROT_EIP_NAT)
            {
                continue;
            }
            let mut table = r.header.table as u32;
            let (mut dst, mut location) = (None, Location::default());
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = ipv4(d),
                    RouteAttribute::Gateway(g) => location.via = ipv4(g),
                    RouteAttribute::Oif(i) => location.dev = ifname(*i),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if let (Some(dst), true) = (dst, table == RouteHeader::RT_TABLE_MAIN as u32) {
                out.insert(dst, location);
            }
        }
        Ok(out)
    }
}
