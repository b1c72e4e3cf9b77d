//! The express lane: the packet that makes up nearly all of a gateway's
//! traffic, done in one straight pass, as a hand-written NAT would.
//!
//! That packet is TCP or UDP over IPv4 without options, not a later
//! fragment, with TTL to spare, translated one way (inbound: to an EIP,
//! from an address not ours; outbound: from a private IP, to an address
//! not ours) to a next hop the agent programmed and that takes its size.
//! For it the lane reads the headers once, checks everything before the
//! first write, and rewrites the address, both checksums, the TTL and the
//! MACs together.
//!
//! Anything else, and anything in doubt, returns `None` before a single
//! write, and the full path ([`crate::translate`]) decides the packet from
//! scratch. So the lane never decides differently from the full path: it
//! takes only packets whose verdict there is `translated_redirect`, and
//! counts them under it (docs/behaviour.md). A test runs the lane's
//! packet and its near misses both ways and compares every byte and
//! counter (`express_lane_decides_as_the_full_path` in
//! tests/tests/datapath.rs).

use aya_ebpf::programs::XdpContext;
use eip_nat_common::{
    bytes::copy_bytes,
    csum,
    ipv4::{ETH_HLEN, ETH_P_IP_BYTES, MIN_HEADER_LEN, PROTO_TCP, PROTO_UDP},
    maps::{Ipv4Key, FLAG_STANDBY},
    AddrEntry, Direction, Verdict,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    decide::{self, NatEntry},
    maps::{self, Role, NEXTHOPS, TX_SLOTS},
    stats,
};

/// The Ethernet and IPv4 headers and the first 18 bytes after them, which
/// hold the L4 checksum (UDP's at 6, TCP's at 16): one bounds check for
/// all the lane reads and writes. Any Ethernet frame is that long (60
/// bytes at least, IEEE 802.3 §3.2.8); a shorter one takes the full path.
#[repr(C)]
struct Headers {
    eth: EthHdr,
    ip: Ipv4Hdr,
    l4: [u8; 18],
}

/// The XDP action for a packet the lane forwarded, or `None` for the full
/// path, with nothing written.
#[inline(always)]
pub fn forward(ctx: &XdpContext, role: &Role) -> Option<u32> {
    if !role.fast_path || role.trace || role.l2 & FLAG_STANDBY != 0 {
        return None;
    }
    let direction = role.direction;
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + core::mem::size_of::<Headers>() > end {
        return None;
    }
    // SAFETY: the whole of Headers is inside the packet (checked above).
    let h = unsafe { &mut *(start as *mut Headers) };
    let ip = &mut h.ip;
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let check_at = match ip.proto {
        PROTO_UDP => 6,
        PROTO_TCP => 16,
        _ => return None,
    };
    // No options, no later fragment (offset 0; MF may be set), TTL to
    // spare, the L4 checksum inside the datagram and the datagram inside
    // the frame.
    if h.eth.ether_type != ETH_P_IP_BYTES_U16
        || ip.vihl != 0x45
        || ip.frags[0] & 0x1f != 0
        || ip.frags[1] != 0
        || ip.ttl <= 1
        || (tot_len as usize) < MIN_HEADER_LEN + check_at + 2
        || start + ETH_HLEN + tot_len as usize > end
    {
        return None;
    }
    let (entry, nexthop) = match direction {
        Direction::Inbound => inbound(ip.src_addr, ip.dst_addr)?,
        Direction::Outbound => outbound(ip.src_addr, ip.dst_addr)?,
        Direction::Other => return None,
    };
    let hop = NEXTHOPS.get(nexthop).filter(|hop| hop.is_valid())?;
    if tot_len > hop.mtu {
        return None;
    }
    // The redirect is recorded before anything is written: an egress that
    // vanished leaves the packet untouched for the full path.
    TX_SLOTS.redirect(hop.slot(), 0).ok()?;

    let (new, slot) = (entry.addr, entry.slot);
    let field = if direction == Direction::Inbound {
        &mut ip.dst_addr
    } else {
        &mut ip.src_addr
    };
    let old = *field;
    *field = new;
    let check = csum::replace_u32(u16::from_be_bytes(ip.check), old, new);
    ip.check = csum::decrement_ttl(check, ip.ttl, ip.proto).to_be_bytes();
    ip.ttl -= 1;
    let l4 = &mut h.l4;
    if check_at == 6 {
        let sum = u16::from_be_bytes([l4[6], l4[7]]);
        [l4[6], l4[7]] = csum::udp_replace_u32(sum, old, new).to_be_bytes();
    } else {
        let sum = u16::from_be_bytes([l4[16], l4[17]]);
        [l4[16], l4[17]] = csum::replace_u32(sum, old, new).to_be_bytes();
    }
    copy_bytes(&mut h.eth.dst_addr, &hop.dmac);
    copy_bytes(&mut h.eth.src_addr, &hop.smac);

    stats::record_eip(slot, direction, tot_len);
    Some(stats::record(ctx, direction, Verdict::TranslatedRedirect))
}

/// EtherType IPv4 as the header holds it (network order, read as a u16).
const ETH_P_IP_BYTES_U16: u16 = u16::from_ne_bytes(ETH_P_IP_BYTES);

/// Public side: a destination EIP that translates to another address, not
/// blocked, with a programmed next hop, from a source that is not ours.
#[inline(always)]
fn inbound(src: Ipv4Key, dst: Ipv4Key) -> Option<(NatEntry, u32)> {
    if decide::lookup(&src).is_some() {
        return None;
    }
    let d: AddrEntry = decide::entry(&dst)?;
    if !d.is_eip() || d.blocked().is_some() || d.private_ip == dst || d.nexthop == 0 {
        return None;
    }
    let entry = NatEntry {
        addr: d.private_ip,
        slot: d.eip_slot,
    };
    Some((entry, d.nexthop))
}

/// Private side: a source private IP with an EIP other than itself, not
/// blocked, to a destination that is not ours (not a hairpin), by a route
/// whose next hop is programmed.
#[inline(always)]
fn outbound(src: Ipv4Key, dst: Ipv4Key) -> Option<(NatEntry, u32)> {
    let s: AddrEntry = decide::entry(&src)?;
    if !s.is_private() || s.blocked().is_some() || s.eip == src {
        return None;
    }
    if decide::lookup(&dst).is_some() {
        return None;
    }
    let nexthop = maps::route_nexthop(dst);
    if nexthop == 0 {
        return None;
    }
    let entry = NatEntry {
        addr: s.eip,
        slot: s.private_slot,
    };
    Some((entry, nexthop))
}
