//! What the state means for the datapath's `ADDRESSES` map and for the
//! gateway's routing table, address by address. The agent applies these
//! for the addresses an event touched, and for all of them when it
//! reconciles at start.

use std::{collections::BTreeMap, net::Ipv4Addr};

use eip_nat_common::{
    maps::{ADDR_DETACHED, ADDR_IS_EIP, ADDR_IS_PRIVATE, ADDR_PRIVATE_DISABLED},
    AddrEntry,
};

use super::{Location, Mode, State};

/// The `ADDRESSES` entry `addr` must have, if any.
///
/// - NAT: the EIP's entry points at the private IP and the private IP's at
///   the EIP; the datapath rewrites one into the other.
/// - Cut-through and multi-EIP: the EIP's entry points at itself in both
///   roles, so it is "translated" to itself: counted, not spoofing, not
///   rewritten. Cut-through also disables the ENI's primary private IP.
/// - A detached ENI's addresses are marked: there is nowhere to send them.
pub fn entry_for(state: &State, addr: Ipv4Addr) -> Option<AddrEntry> {
    let key = addr.octets();
    if let Some(a) = state.association(addr) {
        let detached = state.eni(&a.eni)?.attachment.is_none();
        let mut e = match (a.mode, a.private_ip) {
            (Mode::Nat, Some(p)) => AddrEntry {
                flags: ADDR_IS_EIP,
                private_ip: p.octets(),
                eip_slot: a.slot,
                ..Default::default()
            },
            _ => AddrEntry {
                flags: ADDR_IS_EIP | ADDR_IS_PRIVATE,
                private_ip: key,
                eip_slot: a.slot,
                eip: key,
                private_slot: a.slot,
                nexthop: 0,
            },
        };
        if detached {
            e.flags |= ADDR_DETACHED;
        }
        return Some(e);
    }
    let a = state.eip_of(addr)?;
    let detached = state.eni(&a.eni)?.attachment.is_none();
    let mut e = match a.mode {
        Mode::Nat => AddrEntry {
            flags: ADDR_IS_PRIVATE,
            eip: a.eip.octets(),
            private_slot: a.slot,
            ..Default::default()
        },
        // The EIP took this address's place (docs/domain.md: the private
        // network is no longer usable on a cut-through ENI).
        Mode::CutThrough => {
            return Some(AddrEntry {
                flags: ADDR_PRIVATE_DISABLED,
                ..Default::default()
            })
        }
        Mode::MultiEip => return None,
    };
    if detached {
        e.flags |= ADDR_DETACHED;
    }
    Some(e)
}

/// The host route `addr/32` must have, if any: the addresses the gateway
/// delivers to an ENI (a NAT private IP, a passthrough EIP) are routed to
/// where the ENI lives, so that traffic follows the ENI when it moves.
pub fn route_for(state: &State, addr: Ipv4Addr) -> Option<Location> {
    let a = match state.association(addr) {
        Some(a) if a.mode.passthrough() => a,
        Some(_) => return None,
        None => state.eip_of(addr).filter(|a| a.mode == Mode::Nat)?,
    };
    let location = &state.eni(&a.eni)?.attachment.as_ref()?.location;
    (!location.is_routed()).then(|| location.clone())
}

/// Every address the datapath must know.
pub fn all_entries(state: &State) -> BTreeMap<Ipv4Addr, AddrEntry> {
    addresses(state)
        .filter_map(|addr| entry_for(state, addr).map(|e| (addr, e)))
        .collect()
}

/// Every host route the gateway must have.
pub fn all_routes(state: &State) -> BTreeMap<Ipv4Addr, Location> {
    addresses(state)
        .filter_map(|addr| route_for(state, addr).map(|l| (addr, l)))
        .collect()
}

fn addresses(state: &State) -> impl Iterator<Item = Ipv4Addr> + '_ {
    state
        .associations()
        .flat_map(|a| [a.eip].into_iter().chain(a.private_ip))
}
