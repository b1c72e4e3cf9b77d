//! Host routes to where each ENI lives, in the gateway's main routing table
//! over rtnetlink (rtnetlink(7)). They are what makes traffic follow an ENI:
//! the agent's programmed next hops (`nexthops.rs`) are resolved from this
//! table, and the kernel's own forwarding and `bpf_fib_lookup` read it too,
//! so once a replace is acknowledged no packet for the address is routed
//! to the old place.
//!
//! The agent's routes carry their own protocol number, [`RTPROT_EIP_NAT`],
//! so it can list and remove exactly its own (`ip route show proto 234`).
//! A host route with any other protocol is someone else's (an operator's,
//! a routing daemon's): the agent never replaces it ([`Routes::set`]).

use std::{collections::BTreeMap, ffi::CString, io, net::Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
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
    #[error("{0}")]
    Conflict(ForeignRoute),
}

/// A host route in the main table that is not the agent's, in the place of
/// one the agent would install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignRoute {
    pub addr: Ipv4Addr,
    /// As `ip route` names it ("static", "boot", or the number).
    pub protocol: String,
    pub location: Location,
}

impl std::fmt::Display for ForeignRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the gateway already has a route to {}/32 that is not the agent's (proto {}, {}); \
             it is left as it is",
            self.addr, self.protocol, self.location
        )
    }
}

/// The protocol's name as iproute2 spells it (rtnetlink.h's RTPROT_*).
fn protocol_name(p: RouteProtocol) -> String {
    match p {
        RouteProtocol::Other(n) => n.to_string(),
        RouteProtocol::IcmpRedirect => "redirect".into(),
        p => format!("{p:?}").to_lowercase(),
    }
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

/// `r`, a route to `addr/32` that is not ours, as the error shows it.
fn foreign(addr: Ipv4Addr, r: &RouteMessage) -> ForeignRoute {
    ForeignRoute {
        addr,
        protocol: protocol_name(r.header.protocol),
        location: location(r),
    }
}

/// The destination of `r` if it is a host route (a /32) in the main table.
fn main_host_route(r: &RouteMessage) -> Option<Ipv4Addr> {
    let (mut dst, mut table) = (None, r.header.table as u32);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ipv4(d),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    dst.filter(|_| {
        r.header.destination_prefix_length == 32 && table == RouteHeader::RT_TABLE_MAIN as u32
    })
}

/// Where route `r` sends its packets.
fn location(r: &RouteMessage) -> Location {
    let mut location = Location::default();
    for a in &r.attributes {
        match a {
            RouteAttribute::Gateway(g) => location.via = ipv4(g),
            RouteAttribute::Oif(i) => location.dev = ifname(*i),
            _ => {}
        }
    }
    location
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

    /// Points `addr/32` at `location`: creates the route, or replaces the
    /// one there if it is ours. Another's route to `addr/32` is left alone
    /// ([`RouteError::Conflict`]).
    pub fn set(&mut self, addr: Ipv4Addr, location: &Location) -> Result<(), RouteError> {
        let m = Self::message(addr, location)?;
        let kernel =
            |op: &'static str| move |source: io::Error| RouteError::Kernel { op, addr, source };
        // NLM_F_EXCL: fails if the table has a route with the same key
        // (prefix, TOS, metric), whoever's it is.
        match self.netlink.change(
            RouteNetlinkMessage::NewRoute(m.clone()),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            r => return r.map_err(kernel("creating the route to")),
        }
        // NLM_F_REPLACE takes the place of the first route with that key,
        // whatever its protocol: only once it is known to be ours.
        match self
            .route_to(addr)
            .map_err(kernel("reading the route to"))?
        {
            Some(r) if r.header.protocol == RouteProtocol::Other(RTPROT_EIP_NAT) => self
                .netlink
                .change(RouteNetlinkMessage::NewRoute(m), NLM_F_REPLACE)
                .map_err(kernel("replacing the route to")),
            Some(r) => Err(RouteError::Conflict(foreign(addr, &r))),
            // The lookup found another table's route (policy routing):
            // whose the one in the main table is cannot be told.
            None => Err(RouteError::Kernel {
                op: "creating the route to",
                addr,
                source: io::Error::from_raw_os_error(libc::EEXIST),
            }),
        }
    }

    /// Another's host route to `addr/32` in the main table, if there is
    /// one: the route the agent would have to take the place of.
    pub fn foreign(&mut self, addr: Ipv4Addr) -> Result<Option<ForeignRoute>, RouteError> {
        let route = self.route_to(addr).map_err(|source| RouteError::Kernel {
            op: "reading the route to",
            addr,
            source,
        })?;
        Ok(route
            .filter(|r| r.header.protocol != RouteProtocol::Other(RTPROT_EIP_NAT))
            .map(|r| foreign(addr, &r)))
    }

    /// The main table's route to exactly `addr/32`, as a lookup finds it:
    /// one round trip, where a dump would list every route.
    fn route_to(&mut self, addr: Ipv4Addr) -> io::Result<Option<RouteMessage>> {
        let route = fib_match(&mut self.netlink, addr)?;
        Ok(route.filter(|r| main_host_route(r) == Some(addr)))
    }

    /// Our route message for `addr/32` to `location`.
    fn message(addr: Ipv4Addr, location: &Location) -> Result<RouteMessage, RouteError> {
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
        Ok(m)
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
            if r.header.protocol != RouteProtocol::Other(RTPROT_EIP_NAT) {
                continue;
            }
            if let Some(dst) = main_host_route(&r) {
                out.insert(dst, location(&r));
            }
        }
        Ok(out)
    }
}
