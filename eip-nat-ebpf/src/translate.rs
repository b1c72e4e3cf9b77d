//! Stateless 1:1 NAT of one packet (the domain's "NAT mode"), and the
//! passthrough of cut-through and multi-EIP EIPs.
//!
//! Inbound (public ingress): destination EIP → private IP. Outbound (private
//! ingress): source private IP → EIP. Only the address and the checksums that
//! cover it change; the payload is never touched (no ALG).

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;
use eip_nat_common::{
    csum,
    ipv4::{self, ETH_HLEN, ETH_P_IP_BYTES, PROTO_ICMP, PROTO_UDP},
    Direction, Verdict,
};
use network_types::ip::Ipv4Hdr;

use eip_nat_common::{maps::Ipv4Key, AddrEntry, NatEntry};

use crate::{
    forward, icmp, icmp_reply,
    maps::{self, ADDRESSES},
    packet::{holds, ptr_at},
    stats,
};

/// `Ok` for the verdicts of a packet that was looked at to the end, `Err` for
/// an early exit; both are counted the same way.
#[inline(always)]
pub fn translate(
    ctx: &XdpContext,
    direction: Direction,
    fast_path: bool,
) -> Result<Verdict, Verdict> {
    if direction == Direction::Other {
        return Ok(Verdict::UnknownInterface);
    }
    let ether_type: *const [u8; 2] = ptr_at(ctx, 12).ok_or(Verdict::EthernetTruncated)?;
    // SAFETY: ptr_at checked the bytes are inside the packet.
    if unsafe { *ether_type } != ETH_P_IP_BYTES {
        return Ok(Verdict::NotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Verdict::Ipv4Truncated)?;
    // SAFETY: ptr_at checked the whole fixed header is inside the packet.
    let ip = unsafe { &mut *ip };
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let hlen = ipv4::check_header(ip.vihl, tot_len)?;
    if !holds(ctx, ETH_HLEN + tot_len as usize) {
        return Err(Verdict::Ipv4Truncated);
    }

    let rewrite = decide(direction, ip.src_addr, ip.dst_addr)?;
    if rewrite.src.is_none() && rewrite.dst.is_none() {
        return Ok(Verdict::NoMapping);
    }

    // Find the L4 checksum before writing anything, so a packet whose
    // checksum cannot be kept valid is dropped as it arrived. Only the first
    // fragment carries the L4 header; later ones change at the IP layer only.
    let mut l4_check: Option<*mut [u8; 2]> = None;
    if ipv4::is_first_fragment(ip.frags) {
        if let Some(off) = ipv4::pseudo_header_checksum_offset(ip.proto) {
            if hlen + off + 2 > tot_len as usize {
                debug!(ctx, "drop: L4 header cut short, proto {}", ip.proto);
                return Err(Verdict::L4Truncated);
            }
            l4_check = Some(ptr_at(ctx, ETH_HLEN + hlen + off).ok_or(Verdict::L4Truncated)?);
        }
    }

    // An ICMP error quotes the packet it is about; that copy is translated
    // too (below), after the same checks-before-writes.
    let quoted = if ip.proto == PROTO_ICMP && ipv4::is_first_fragment(ip.frags) {
        icmp::quoted_packet(ctx, hlen, tot_len)?
    } else {
        icmp::Quoted::NONE
    };

    // Where it goes, decided on the addresses it will have, before any
    // write: a packet that cannot be forwarded is answered as it came.
    let (old_src, old_dst) = (ip.src_addr, ip.dst_addr);
    let new_src = rewrite.src.map_or(old_src, |e| e.addr);
    let new_dst = rewrite.dst.map_or(old_dst, |e| e.addr);
    // Delivered to one of ours: the next hop of that address; anywhere
    // else: the one of the route that covers the destination.
    let nexthop = match (fast_path, rewrite.dst) {
        (false, _) => 0,
        (true, Some(_)) => rewrite.nexthop,
        (true, None) => maps::route_nexthop(new_dst),
    };
    let mut fib = core::mem::MaybeUninit::uninit();
    let plan = forward::plan(ctx, ip, fast_path, (new_src, new_dst), nexthop, &mut fib);
    if let Some((kind, code, mtu)) = plan.error() {
        if let Some(v) = icmp_reply::send(ctx, direction, kind, code, mtu) {
            return Ok(v);
        }
    }

    let udp = ip.proto == PROTO_UDP;
    let mut ip_check = u16::from_be_bytes(ip.check);
    // SAFETY: ptr_at checked both bytes are inside the packet.
    let mut l4 = l4_check.map(|p| (p, u16::from_be_bytes(unsafe { *p })));
    if let Some(e) = rewrite.src {
        patch(&mut ip.src_addr, e.addr, &mut ip_check, &mut l4, udp);
        stats::record_eip(e.slot, Direction::Outbound, tot_len);
    }
    if let Some(e) = rewrite.dst {
        patch(&mut ip.dst_addr, e.addr, &mut ip_check, &mut l4, udp);
        stats::record_eip(e.slot, Direction::Inbound, tot_len);
    }
    ip.check = ip_check.to_be_bytes();
    if let Some((p, check)) = l4 {
        // SAFETY: as above.
        unsafe { *p = check.to_be_bytes() };
    }
    if quoted.is_some() {
        let q = &quoted;
        // The quoted packet went the other way: an error arriving for an EIP
        // quotes a packet *from* that EIP; an error an instance sends quotes
        // a packet *to* its private IP.
        if let Some(e) = rewrite.dst.filter(|e| e.addr != old_dst) {
            q.translate_source(old_dst, e.addr);
        }
        if let Some(e) = rewrite.src.filter(|e| e.addr != old_src) {
            q.translate_destination(old_src, e.addr);
        }
    }
    Ok(forward::finish(ctx, ip, plan))
}

/// The addresses a packet gets: the association of its new source, of its
/// new destination, or both (hairpin).
struct Rewrite {
    src: Option<NatEntry>,
    dst: Option<NatEntry>,
    /// With `dst`: the programmed next hop of the new destination.
    nexthop: u32,
}

#[inline(always)]
fn lookup(addr: &Ipv4Key) -> Option<AddrEntry> {
    // Most addresses a packet carries (the Internet's) are in no /16 of
    // ours: an array read and a bit test instead of a hash lookup.
    if !maps::may_be_ours(*addr) {
        return None;
    }
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
fn decide(direction: Direction, src: Ipv4Key, dst: Ipv4Key) -> Result<Rewrite, Verdict> {
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

/// Rewrites one address and patches the IPv4 and L4 checksums for it.
#[inline(always)]
pub fn patch(
    field: &mut Ipv4Key,
    new: Ipv4Key,
    ip_check: &mut u16,
    l4: &mut Option<(*mut [u8; 2], u16)>,
    udp: bool,
) {
    let old = *field;
    if old == new {
        // A passthrough EIP: nothing to rewrite, and RFC 1624's update
        // could turn a checksum of 0xffff into 0x0000.
        return;
    }
    *field = new;
    *ip_check = csum::replace_u32(*ip_check, old, new);
    if let Some((_, check)) = l4 {
        *check = if udp {
            csum::udp_replace_u32(*check, old, new)
        } else {
            csum::replace_u32(*check, old, new)
        };
    }
}
