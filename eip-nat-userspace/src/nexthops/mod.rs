//! Next hops programmed by the agent, so that the fast path forwards a
//! translated packet without asking the kernel's FIB (docs/datapath.md,
//! "Next hops").
//!
//! - Every EIP's `ADDRESSES` entry carries the next-hop id of the address
//!   it delivers to (a private IP, or a passthrough EIP itself).
//! - `ROUTES` mirrors the main routing table, each prefix with the id of its
//!   route's next hop, for destinations that are not ours. A connected
//!   route has no one neighbour: its prefix maps to 0 (ask the FIB), and
//!   each neighbour the kernel knows on it gets a /32 of its own, so a
//!   directly connected host is forwarded to without a lookup too.
//! - `NEXTHOPS[id]` holds the egress interface, both MACs and the MTU; the
//!   agent rewrites it when the neighbour, the link or the route changes,
//!   from rtnetlink notifications (`monitor.rs`). A slot that cannot be used
//!   (neighbour unresolved, link down, interface not a fast-path port) is
//!   marked so, and the program falls back to `bpf_fib_lookup`.

pub mod ids;
pub mod kernel;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
    net::Ipv4Addr,
};

use eip_nat_common::maps::NextHop;
use netlink_packet_route::RouteNetlinkMessage;

use crate::{
    datapath::{Datapath, DatapathError},
    netlink::Netlink,
};
use ids::Ids;
use kernel::{Change, KernelView, NextHopKey, Prefix};

pub struct NextHops {
    kernel: KernelView,
    netlink: Netlink,
    ids: Ids,
    /// Interfaces the program may redirect to, with their `TX_SLOTS` slot.
    tx_ports: BTreeMap<u32, u8>,
    /// EIP → (the address it delivers to, its next-hop id).
    bound: HashMap<Ipv4Addr, (Ipv4Addr, u32)>,
    /// Delivered address → the EIPs delivering to it (one, by the rules;
    /// a set so that the index never depends on that).
    by_dest: BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>>,
    /// `ROUTES` as written: prefix → next-hop id.
    routes: HashMap<Prefix, u32>,
    /// `ROUTES` /32s of neighbours on connected routes: prefix → id.
    neighbour_routes: HashMap<Prefix, u32>,
    /// `ROUTES` could not take the whole table: it is kept empty, so that
    /// outbound packets all go through `bpf_fib_lookup`, rather than match
    /// a less specific route than the kernel would.
    routes_overflow: bool,
}

/// Addresses whose `ADDRESSES` entry must be rewritten: their next hop
/// changed.
pub type Rebind = Vec<Ipv4Addr>;

impl NextHops {
    /// Reads the kernel's tables, and the ids the running program already
    /// uses (an earlier agent's), so that a restart keeps them.
    pub fn load(dp: &Datapath, tx_ports: BTreeMap<u32, u8>) -> io::Result<Self> {
        let mut netlink = Netlink::open()?;
        let kernel = KernelView::load(&mut netlink)?;
        let mut ids = Ids::new(dp.nexthop_capacity());
        for (id, hop) in dp.nexthops().unwrap_or_default() {
            if hop.ifindex != 0 {
                ids.adopt(
                    id,
                    NextHopKey {
                        ifindex: hop.ifindex,
                        neighbour: Ipv4Addr::from(hop.neighbour),
                        route_mtu: 0,
                    },
                );
            }
        }
        Ok(Self {
            kernel,
            netlink,
            ids,
            tx_ports,
            bound: HashMap::new(),
            by_dest: BTreeMap::new(),
            routes: HashMap::new(),
            neighbour_routes: HashMap::new(),
            routes_overflow: false,
        })
    }

    /// What `NEXTHOPS[id]` must hold for `key` now.
    fn value(&self, key: NextHopKey) -> NextHop {
        let link = self.kernel.link(key.ifindex);
        let neighbour = self.kernel.neighbour(key.ifindex, key.neighbour);
        let mut hop = NextHop {
            ifindex: key.ifindex,
            neighbour: key.neighbour.octets(),
            ..Default::default()
        };
        let (Some(link), Some(n)) = (link, neighbour) else {
            return hop;
        };
        let mtu = match key.route_mtu {
            0 => link.mtu,
            m => m.min(link.mtu),
        };
        hop.mtu = mtu.min(u16::MAX as u32) as u16;
        hop.dmac = n.mac;
        hop.smac = link.mac.unwrap_or_default();
        let usable = link.up && n.usable && link.mac.is_some() && mtu > 0;
        if let (true, Some(slot)) = (usable, self.tx_ports.get(&key.ifindex)) {
            hop.flags = NextHop::flags_for(true, *slot);
        }
        hop
    }

    fn write(&self, dp: &mut Datapath, id: u32, key: NextHopKey) -> Result<(), DatapathError> {
        let v = self.value(key);
        if dp.nexthop(id).ok() != Some(v) {
            dp.set_nexthop(id, v)?;
        }
        Ok(())
    }

    /// A user of the next hop for `addr` through the kernel's route: its
    /// id, written if new; 0 when it is left to the FIB.
    fn acquire(
        &mut self,
        dp: &mut Datapath,
        key: Option<NextHopKey>,
    ) -> Result<u32, DatapathError> {
        let Some(key) = key else {
            return Ok(0);
        };
        match self.ids.acquire(key) {
            Some((id, new)) => {
                if new {
                    self.write(dp, id, key)?;
                }
                Ok(id)
            }
            None => {
                log::warn!("no free next-hop slot for {key:?}; its packets use the FIB");
                Ok(0)
            }
        }
    }

    /// `eip` delivers to `dest`: returns the next-hop id for its entry.
    pub fn bind(
        &mut self,
        dp: &mut Datapath,
        eip: Ipv4Addr,
        dest: Ipv4Addr,
    ) -> Result<u32, DatapathError> {
        let id = self.acquire(dp, self.kernel.resolve(dest))?;
        self.unbind(eip);
        self.bound.insert(eip, (dest, id));
        self.by_dest.entry(dest).or_default().insert(eip);
        Ok(id)
    }

    /// `eip` delivers nowhere (any more).
    pub fn unbind(&mut self, eip: Ipv4Addr) {
        if let Some((dest, id)) = self.bound.remove(&eip) {
            self.ids.release(id);
            if let Some(set) = self.by_dest.get_mut(&dest) {
                set.remove(&eip);
                if set.is_empty() {
                    self.by_dest.remove(&dest);
                }
            }
        }
    }

    /// The id `eip` is bound to, as its entry must carry it.
    /// The host's local and broadcast addresses, as the kernel has them now.
    pub fn local_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.kernel.locals()
    }

    pub fn id_of(&self, eip: Ipv4Addr) -> u32 {
        self.bound.get(&eip).map_or(0, |(_, id)| *id)
    }

    /// Ends a change: clears the slots nobody uses any more.
    pub fn settle(&mut self, dp: &mut Datapath) -> Result<(), DatapathError> {
        for id in self.ids.settle() {
            dp.set_nexthop(id, NextHop::default())?;
        }
        Ok(())
    }

    /// Writes `ROUTES` for the whole table, and every slot's value: after
    /// start-up (the slots were adopted) or a reload.
    pub fn sync_all(&mut self, dp: &mut Datapath) -> Result<(), DatapathError> {
        let prefixes: BTreeSet<Prefix> = self
            .kernel
            .routes()
            .map(|(p, _)| p)
            .chain(self.kernel.locals().map(|a| kernel::prefix(32, a)))
            .chain(self.routes.keys().copied())
            .collect();
        for p in prefixes {
            self.sync_route(dp, p)?;
        }
        self.sync_neighbour_routes(dp, (0, 0))?;
        let all: Vec<_> = self.ids.all().collect();
        for (id, key) in all {
            self.write(dp, id, key)?;
        }
        Ok(())
    }

    /// Brings `ROUTES[p]` in line with the kernel's route for `p`.
    fn sync_route(&mut self, dp: &mut Datapath, p: Prefix) -> Result<(), DatapathError> {
        let local = p.0 == 32 && self.kernel.is_local(Ipv4Addr::from(p.1));
        let key = match (local, self.kernel.route(p)) {
            (true, _) => Some(None),
            (false, Some(r)) => Some(
                KernelView::key_via(r, Ipv4Addr::from(p.1))
                    // A connected route's neighbour is each destination
                    // itself: one slot stands for it only for a /32.
                    .filter(|_| r.gateway.is_some() || p.0 == 32),
            ),
            (false, None) => None,
        };
        let old = self.routes.remove(&p);
        if let Some(id) = old {
            self.ids.release(id);
        }
        match key {
            None => {
                if old.is_some() {
                    dp.remove_route(p)?;
                }
            }
            Some(key) => {
                let id = self.acquire(dp, key)?;
                self.routes.insert(p, id);
                self.put_route(dp, p, id)?;
            }
        }
        Ok(())
    }

    /// Brings the neighbour /32s inside `p` in line with the kernel.
    fn sync_neighbour_routes(&mut self, dp: &mut Datapath, p: Prefix) -> Result<(), DatapathError> {
        let (lo, hi) = kernel::range(p);
        let inside = |a: &Ipv4Addr| (lo..=hi).contains(a);
        let mut wanted: HashMap<Prefix, NextHopKey> = HashMap::new();
        for (ifindex, addr) in self.kernel.neighbours_in(p) {
            let host = kernel::prefix(32, addr);
            // A route of the table's own for the /32 wins (sync_route).
            if self.kernel.route(host).is_some() || self.kernel.is_local(addr) {
                continue;
            }
            let Some((_, route)) = self.kernel.lookup(addr) else {
                continue;
            };
            if route.simple && route.gateway.is_none() && route.oif == Some(ifindex) {
                if let Some(key) = KernelView::key_via(route, addr) {
                    wanted.insert(host, key);
                }
            }
        }
        // A /32 (a neighbour's own change) is looked up, not scanned for.
        let candidates: Vec<Prefix> = if p.0 == 32 {
            self.neighbour_routes
                .get_key_value(&p)
                .map(|(k, _)| *k)
                .into_iter()
                .collect()
        } else {
            self.neighbour_routes
                .keys()
                .filter(|h| inside(&Ipv4Addr::from(h.1)))
                .copied()
                .collect()
        };
        let stale: Vec<Prefix> = candidates
            .iter()
            .filter(|h| {
                let keep = wanted
                    .get(h)
                    .and_then(|k| self.ids.key(self.neighbour_routes[h]).map(|x| x == *k));
                keep != Some(true)
            })
            .copied()
            .collect();
        for h in stale {
            if let Some(id) = self.neighbour_routes.remove(&h) {
                self.ids.release(id);
                if self.kernel.route(h).is_none() {
                    dp.remove_route(h)?;
                }
            }
        }
        for (h, key) in wanted {
            if self.neighbour_routes.contains_key(&h) {
                continue;
            }
            let id = self.acquire(dp, Some(key))?;
            self.neighbour_routes.insert(h, id);
            self.put_route(dp, h, id)?;
        }
        Ok(())
    }

    /// `ROUTES[p] = id`, unless the map overflowed.
    fn put_route(&mut self, dp: &mut Datapath, p: Prefix, id: u32) -> Result<(), DatapathError> {
        if self.routes_overflow {
            return Ok(());
        }
        if let Err(e) = dp.set_route(p, id) {
            log::warn!("ROUTES is full ({e}); outbound packets use the FIB until restart");
            self.routes_overflow = true;
            dp.clear_routes()?;
        }
        Ok(())
    }

    /// EIPs whose delivered address lies in `p`, rebound; those whose id
    /// changed are returned.
    fn rebind_in(&mut self, dp: &mut Datapath, p: Prefix) -> Result<Rebind, DatapathError> {
        let (lo, hi) = kernel::range(p);
        let pairs: Vec<(Ipv4Addr, Ipv4Addr)> = self
            .by_dest
            .range(lo..=hi)
            .flat_map(|(dest, eips)| eips.iter().map(move |e| (*e, *dest)))
            .collect();
        let mut changed = Vec::new();
        for (eip, dest) in pairs {
            let old = self.id_of(eip);
            if self.bind(dp, eip, dest)? != old {
                changed.push(eip);
            }
        }
        Ok(changed)
    }

    /// Follows one rtnetlink notification, or a route the agent itself just
    /// installed or removed (taken in before the kernel's notification of
    /// it, so the change is in the datapath before the event is answered).
    /// Returns the EIPs whose entries
    /// must be rewritten (their next hop is another slot now); the caller
    /// rewrites them, then calls [`Self::settle`].
    pub fn on_kernel(
        &mut self,
        dp: &mut Datapath,
        m: &RouteNetlinkMessage,
    ) -> Result<Rebind, DatapathError> {
        let rebind = match self.kernel.apply(m) {
            Change::Nothing => vec![],
            Change::Neighbour(ifindex, addr) => {
                let hit = self.ids.of_neighbour(ifindex, addr);
                for (id, key) in hit {
                    self.write(dp, id, key)?;
                }
                self.sync_neighbour_routes(dp, kernel::prefix(32, addr))?;
                vec![]
            }
            Change::Link {
                ifindex,
                up_changed,
            } => {
                // First what can be done at once: the slots on the link.
                let hit: Vec<_> = self
                    .ids
                    .all()
                    .filter(|(_, k)| k.ifindex == ifindex)
                    .collect();
                for (id, key) in hit {
                    self.write(dp, id, key)?;
                }
                if up_changed {
                    // The kernel added or dropped this link's routes
                    // without telling each: read them all again.
                    self.reload(dp)?
                } else {
                    vec![]
                }
            }
            Change::Route(p) => {
                self.sync_route(dp, p)?;
                self.sync_neighbour_routes(dp, p)?;
                self.rebind_in(dp, p)?
            }
        };
        Ok(rebind)
    }

    /// Asks the kernel for the route it now has for `addr/32` (the one the
    /// agent just installed) and takes it in.
    pub fn refresh_host_route(
        &mut self,
        dp: &mut Datapath,
        addr: Ipv4Addr,
    ) -> Result<Rebind, DatapathError> {
        match crate::routes::fib_match(&mut self.netlink, addr) {
            Ok(Some(m)) => self.on_kernel(dp, &RouteNetlinkMessage::NewRoute(m)),
            Ok(None) => Ok(vec![]),
            Err(e) => {
                log::warn!("reading back the route to {addr}: {e}; resynchronising");
                self.reload(dp)
            }
        }
    }

    /// Reads the kernel's tables again and rebinds everything.
    pub fn reload(&mut self, dp: &mut Datapath) -> Result<Rebind, DatapathError> {
        if let Err(e) = self.kernel.reload(&mut self.netlink) {
            log::warn!("re-reading the kernel's routes and neighbours failed: {e}");
        }
        self.sync_all(dp)?;
        self.rebind_in(dp, (0, 0))
    }
}
