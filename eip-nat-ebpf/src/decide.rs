//! Deciding: which addresses of a packet change, from the association
//! table, or why it is dropped. Reads the maps, writes nothing.

use eip_nat_common::{maps::Ipv4Key, AddrEntry, Direction, Verdict};

use crate::maps::{self, ADDRESSES};

/// One rewrite: the new address, and whose counters it is counted in.
#[derive(Clone, Copy)]
pub struct NatEntry {
    pub addr: Ipv4Key,
    pub slot: u32,
}

/// The addresses a packet gets: the association of its new source, of its
/// new destination, or both (hairpin).
pub struct Rewrite {
    pub src: Option<NatEntry>,
    pub dst: Option<NatEntry>,
    /// With `dst`: the programmed next hop of the new destination.
    pub nexthop: u32,
}

#[inline(always)]
pub fn lookup(addr: &Ipv4Key) -> Option<AddrEntry> {
    // Most addresses a packet carries (the Internet's) are in no /16 of
    // ours: an array read and a bit test instead of a hash lookup.
    if !maps::may_be_ours(*addr) {
        return None;
    }
    entry(addr)
}

/// [`lookup`] without the filter: for the address a packet is expected
/// to carry (an inbound packet's EIP, an outbound one's private IP), whose
/// /16 is ours nearly always, so the filter's read would only add to it.
#[inline(always)]
pub fn entry(addr: &Ipv4Key) -> Option<AddrEntry> {
    // SAFETY: copied out at once; the agent replaces entries whole.
    unsafe { ADDRESSES.get(addr) }.copied()
}

/// What to rewrite, or why the packet is dropped: one lookup for the
/// source, one for the destination.
///
/// Public side: destination EIP → private IP. A source that is one of our
/// EIPs or private IPs cannot come from the Internet: dropped as spoofed
/// (RFC 2827 ingress filtering).
///
/// Private side: source private IP → its EIP; a destination that is an EIP
/// is translated too, in the same pass (hairpin, RFC 4787 §6), so an
/// instance reaching another's (or its own) EIP is seen from its EIP and
/// the reply takes the same way back. A source that is a NAT EIP is
/// spoofed; a passthrough EIP (cut-through, multi-EIP) is its own private
/// IP and "translates" to itself.
///
/// Addresses of a detached ENI, and a cut-through ENI's primary private IP,
/// are dropped with their own verdicts.
///
/// The public side reaches EIPs, and otherwise only what `PUBLIC_ACCEPT`
/// lists (the gateway's own addresses, the operator's routed prefixes);
/// an ENI's private IP never, listed or not.
#[inline(always)]
pub fn decide(direction: Direction, src: Ipv4Key, dst: Ipv4Key) -> Result<Rewrite, Verdict> {
    let mut rewrite = Rewrite {
        src: None,
        dst: None,
        nexthop: 0,
    };
    if let Some(s) = lookup(&src) {
        if direction == Direction::Outbound && s.is_private() {
            if let Some(v) = s.blocked() {
                return Err(v);
            }
            rewrite.src = Some(NatEntry {
                addr: s.eip,
                slot: s.private_slot,
            });
        } else if s.is_eip() {
            return Err(Verdict::DropSpoofedEip);
        } else if direction == Direction::Inbound {
            return Err(Verdict::DropSpoofedPrivate);
        } else if let Some(v) = s.blocked() {
            return Err(v);
        }
    }
    if let Some(d) = lookup(&dst) {
        // A NAT private IP as destination is not ours to judge; an EIP or
        // a disabled private IP is.
        if d.is_eip() || !d.is_private() {
            if let Some(v) = d.blocked() {
                return Err(v);
            }
        }
        if d.is_eip() {
            rewrite.dst = Some(NatEntry {
                addr: d.private_ip,
                slot: d.eip_slot,
            });
            rewrite.nexthop = d.nexthop;
        } else if direction == Direction::Inbound {
            // An instance is reached from the Internet by its EIP only.
            return Err(Verdict::DropPublicToPrivateIp);
        }
    } else if direction == Direction::Inbound && !maps::public_accepts(dst) {
        return Err(Verdict::DropPublicUnlisted);
    }
    Ok(rewrite)
}
