//! The agent's copy of what the kernel forwards by: links, the main routing
//! table, the local addresses and the neighbour cache, kept from rtnetlink
//! dumps and notifications. From it the agent resolves an address to the
//! neighbour a packet for it is handed to, as `fib_table_lookup()` and the
//! neighbour lookup of `bpf_fib_lookup` would, but once per change instead
//! of once per packet.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    net::Ipv4Addr,
};

use netlink_packet_route::{
    link::{LinkAttribute, LinkFlags, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteType},
    AddressFamily, RouteNetlinkMessage,
};

use crate::{netlink::Netlink, routes::ipv4};

/// include/uapi/linux/rtnetlink.h
const RT_TABLE_LOCAL: u32 = 255;

/// A route prefix: length and network address (host bits zero).
pub type Prefix = (u8, u32);

pub fn prefix(len: u8, addr: Ipv4Addr) -> Prefix {
    (len, u32::from(addr) & mask(len))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// The addresses a prefix covers, first and last.
pub fn range(p: Prefix) -> (Ipv4Addr, Ipv4Addr) {
    (Ipv4Addr::from(p.1), Ipv4Addr::from(p.1 | !mask(p.0)))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up with carrier (IFF_UP and IFF_LOWER_UP).
    pub up: bool,
}

/// One route of the main table, as far as forwarding needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub priority: u32,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    /// The route's `mtu` metric, if set.
    pub mtu: Option<u32>,
    /// Unicast with one next hop: what a programmed next hop can stand
    /// for. Anything else (blackhole, unreachable, multipath, …) is left to
    /// the kernel through `bpf_fib_lookup`.
    pub simple: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: [u8; 6],
    /// NUD_VALID: a state in which the kernel itself sends to this MAC.
    pub usable: bool,
}

/// Where a packet for an address is handed over: to this neighbour through
/// this interface. Many addresses share one (every address behind a router).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHopKey {
    pub ifindex: u32,
    pub neighbour: Ipv4Addr,
    /// The route's `mtu` metric, 0 when none.
    pub route_mtu: u32,
}

/// What a notification changed, for the caller to follow up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Link { ifindex: u32, up_changed: bool },
    Route(Prefix),
    Neighbour(u32, Ipv4Addr),
    Nothing,
}

pub struct KernelView {
    links: HashMap<u32, Link>,
    routes: HashMap<Prefix, Vec<Route>>,
    /// Routes per prefix length, so a lookup skips lengths in no use.
    per_len: Vec<u32>,
    /// Local and broadcast addresses (the local table): never forwarded.
    local: HashSet<Ipv4Addr>,
    /// By (address, ifindex): ordered by address, so the neighbours inside
    /// a prefix are a range.
    neighbours: BTreeMap<(Ipv4Addr, u32), Neighbour>,
}

impl Default for KernelView {
    fn default() -> Self {
        Self {
            links: HashMap::new(),
            routes: HashMap::new(),
            per_len: vec![0; 33],
            local: HashSet::new(),
            neighbours: BTreeMap::new(),
        }
    }
}

fn mac(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

impl KernelView {
    /// Dumps links, routes and neighbours.
    pub fn load(netlink: &mut Netlink) -> io::Result<Self> {
        let mut view = Self::default();
        view.reload(netlink)?;
        Ok(view)
    }

    /// Replaces everything with a fresh dump. Needed after a link changes
    /// state: the kernel drops the routes through a link going down
    /// (fib_sync_down_dev()) without a notification for each.
    pub fn reload(&mut self, netlink: &mut Netlink) -> io::Result<()> {
        *self = Self::default();
        let mut link = LinkMessage::default();
        link.header.interface_family = AddressFamily::Unspec;
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        let mut neigh = NeighbourMessage::default();
        neigh.header.family = AddressFamily::Inet;
        for request in [
            RouteNetlinkMessage::GetLink(link),
            RouteNetlinkMessage::GetRoute(route),
            RouteNetlinkMessage::GetNeighbour(neigh),
        ] {
            for m in netlink.dump(request)? {
                self.apply(&m);
            }
        }
        Ok(())
    }

    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.get(&ifindex)
    }

    /// Every prefix of the main table with its route in use.
    pub fn routes(&self) -> impl Iterator<Item = (Prefix, &Route)> + '_ {
        self.routes
            .iter()
            .filter_map(|(p, rs)| best(rs).map(|r| (*p, r)))
    }

    /// Local addresses, as /32 prefixes that are never forwarded.
    pub fn locals(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.local.iter().copied()
    }

    pub fn route(&self, p: Prefix) -> Option<&Route> {
        self.routes.get(&p).and_then(|rs| best(rs))
    }

    /// Longest-prefix match in the main table; None for a local address.
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<(Prefix, &Route)> {
        if self.local.contains(&addr) {
            return None;
        }
        (0..=32u8)
            .rev()
            .filter(|len| self.per_len[*len as usize] > 0)
            .find_map(|len| {
                let p = prefix(len, addr);
                self.route(p).map(|r| (p, r))
            })
    }

    /// The neighbour a packet for `addr` is handed to through `route`.
    pub fn key_via(route: &Route, addr: Ipv4Addr) -> Option<NextHopKey> {
        if !route.simple {
            return None;
        }
        Some(NextHopKey {
            ifindex: route.oif?,
            neighbour: route.gateway.unwrap_or(addr),
            route_mtu: route.mtu.unwrap_or(0),
        })
    }

    /// The neighbour a packet for `addr` is handed to, if a programmed next
    /// hop can stand for the route; None leaves it to `bpf_fib_lookup`.
    pub fn resolve(&self, addr: Ipv4Addr) -> Option<NextHopKey> {
        let (_, route) = self.lookup(addr)?;
        Self::key_via(route, addr)
    }

    /// The neighbour entries inside `p`, as (ifindex, address).
    pub fn neighbours_in(&self, p: Prefix) -> impl Iterator<Item = (u32, Ipv4Addr)> + '_ {
        let (lo, hi) = range(p);
        self.neighbours
            .range((lo, 0)..=(hi, u32::MAX))
            .map(|((a, i), _)| (*i, *a))
    }

    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        self.local.contains(&addr)
    }

    pub fn neighbour(&self, ifindex: u32, addr: Ipv4Addr) -> Option<&Neighbour> {
        self.neighbours.get(&(addr, ifindex))
    }

    /// Takes one dump entry or notification into the view.
    pub fn apply(&mut self, m: &RouteNetlinkMessage) -> Change {
        match m {
            RouteNetlinkMessage::NewLink(l) => self.set_link(l, true),
            RouteNetlinkMessage::DelLink(l) => self.set_link(l, false),
            RouteNetlinkMessage::NewRoute(r) => self.set_route(r, true),
            RouteNetlinkMessage::DelRoute(r) => self.set_route(r, false),
            RouteNetlinkMessage::NewNeighbour(n) => self.set_neighbour(n, true),
            RouteNetlinkMessage::DelNeighbour(n) => self.set_neighbour(n, false),
            _ => Change::Nothing,
        }
    }

    fn set_link(&mut self, l: &LinkMessage, present: bool) -> Change {
        let ifindex = l.header.index;
        let was_up = self.links.get(&ifindex).is_some_and(|k| k.up);
        if !present {
            self.links.remove(&ifindex);
            return Change::Link {
                ifindex,
                up_changed: was_up,
            };
        }
        let flags = l.header.flags;
        let mut link = Link {
            mac: None,
            mtu: 0,
            up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::Address(b) => link.mac = mac(b),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                _ => {}
            }
        }
        let up_changed = was_up != link.up;
        self.links.insert(ifindex, link);
        Change::Link {
            ifindex,
            up_changed,
        }
    }

    fn set_route(&mut self, r: &RouteMessage, present: bool) -> Change {
        if r.header.address_family != AddressFamily::Inet {
            return Change::Nothing;
        }
        let mut table = r.header.table as u32;
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut route = Route {
            priority: 0,
            oif: None,
            gateway: None,
            mtu: None,
            simple: r.header.kind == RouteType::Unicast,
        };
        for a in &r.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(d) => dst = ipv4(d).unwrap_or(dst),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Gateway(g) => route.gateway = ipv4(g),
                RouteAttribute::Priority(p) => route.priority = *p,
                RouteAttribute::MultiPath(_) => route.simple = false,
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        if let RouteMetric::Mtu(v) = m {
                            route.mtu = Some(*v).filter(|v| *v > 0);
                        }
                    }
                }
                _ => {}
            }
        }
        let len = r.header.destination_prefix_length.min(32);
        if table == RT_TABLE_LOCAL {
            if matches!(r.header.kind, RouteType::Local | RouteType::Broadcast) && len == 32 {
                if present {
                    self.local.insert(dst);
                } else {
                    self.local.remove(&dst);
                }
                return Change::Route(prefix(32, dst));
            }
            return Change::Nothing;
        }
        if table != RouteHeader::RT_TABLE_MAIN as u32 || r.header.tos != 0 {
            // Only the main table is mirrored; a route by TOS is left to
            // the FIB by not being there (docs/datapath.md, "Next hops").
            return Change::Nothing;
        }
        let p = prefix(len, dst);
        let routes = self.routes.entry(p).or_default();
        let before = routes.len();
        // One route per (prefix, priority) in a table: a new one replaces.
        routes.retain(|x| x.priority != route.priority);
        if present {
            routes.push(route);
        }
        let after = routes.len();
        if after == 0 {
            self.routes.remove(&p);
        }
        let n = &mut self.per_len[len as usize];
        *n = (*n + after as u32).saturating_sub(before as u32);
        Change::Route(p)
    }

    fn set_neighbour(&mut self, n: &NeighbourMessage, present: bool) -> Change {
        if n.header.family != AddressFamily::Inet {
            return Change::Nothing;
        }
        let (mut addr, mut lladdr) = (None, None);
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => addr = Some(*v),
                NeighbourAttribute::LinkLayerAddress(b) => lladdr = mac(b),
                _ => {}
            }
        }
        let Some(addr) = addr else {
            return Change::Nothing;
        };
        let key = (addr, n.header.ifindex);
        // include/net/neighbour.h: NUD_VALID.
        let usable = matches!(
            n.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        match (present, lladdr) {
            (true, Some(mac)) => {
                self.neighbours.insert(key, Neighbour { mac, usable });
            }
            _ => {
                self.neighbours.remove(&key);
            }
        }
        Change::Neighbour(key.1, key.0)
    }
}

/// The route the kernel uses among those of one prefix: lowest priority.
fn best(rs: &[Route]) -> Option<&Route> {
    rs.iter().min_by_key(|r| r.priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        len: u8,
        dst: [u8; 4],
        via: Option<[u8; 4]>,
        oif: u32,
        prio: u32,
    ) -> RouteNetlinkMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        use netlink_packet_route::route::RouteAddress;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst.into())));
        if let Some(v) = via {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(v.into())));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        m.attributes.push(RouteAttribute::Priority(prio));
        RouteNetlinkMessage::NewRoute(m)
    }

    #[test]
    fn longest_prefix_then_lowest_priority_wins() {
        let mut v = KernelView::default();
        v.apply(&route(0, [0, 0, 0, 0], Some([198, 51, 100, 2]), 2, 0));
        v.apply(&route(16, [10, 200, 0, 0], Some([10, 199, 0, 2]), 3, 100));
        v.apply(&route(16, [10, 200, 0, 0], Some([10, 199, 0, 3]), 3, 50));
        let key =
            |v: &KernelView, a: [u8; 4]| v.resolve(a.into()).map(|k| (k.ifindex, k.neighbour));
        assert_eq!(
            key(&v, [10, 200, 1, 1]),
            Some((3, Ipv4Addr::new(10, 199, 0, 3)))
        );
        assert_eq!(
            key(&v, [8, 8, 8, 8]),
            Some((2, Ipv4Addr::new(198, 51, 100, 2)))
        );
        let RouteNetlinkMessage::NewRoute(m) =
            route(16, [10, 200, 0, 0], Some([10, 199, 0, 3]), 3, 50)
        else {
            unreachable!()
        };
        assert_eq!(
            v.apply(&RouteNetlinkMessage::DelRoute(m)),
            Change::Route((16, u32::from(Ipv4Addr::new(10, 200, 0, 0))))
        );
        assert_eq!(
            key(&v, [10, 200, 1, 1]),
            Some((3, Ipv4Addr::new(10, 199, 0, 2)))
        );
    }

    #[test]
    fn a_connected_route_hands_over_to_the_address_itself() {
        let mut v = KernelView::default();
        v.apply(&route(24, [10, 199, 0, 0], None, 3, 0));
        let k = v.resolve(Ipv4Addr::new(10, 199, 0, 7)).unwrap();
        assert_eq!((k.ifindex, k.neighbour), (3, Ipv4Addr::new(10, 199, 0, 7)));
        assert_eq!(v.resolve(Ipv4Addr::new(10, 198, 0, 7)), None, "no route");
    }

    #[test]
    fn ranges_cover_the_prefix() {
        assert_eq!(
            range(prefix(16, Ipv4Addr::new(10, 200, 3, 4))),
            (
                Ipv4Addr::new(10, 200, 0, 0),
                Ipv4Addr::new(10, 200, 255, 255)
            )
        );
        assert_eq!(
            range(prefix(0, Ipv4Addr::new(1, 2, 3, 4))),
            (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)
        );
    }
}
