//! Stateless 1:1 NAT of one packet (the NAT mode of docs/behaviour.md), and
//! the passthrough of cut-through and multi-EIP EIPs: the stages in order.
//!
//! Inbound (public ingress): destination EIP → private IP. Outbound (private
//! ingress): source private IP → EIP. Only the address and the checksums that
//! cover it change; the payload is never touched (no ALG).
//!
//! [`parse`] checks the headers, [`decide`] reads the tables, and every
//! check that can refuse the packet ([`rewrite::l4_checksum`],
//! [`icmp::quoted_packet`], [`forward::plan`]) runs before the first write,
//! so a refused packet leaves as it came.

use aya_ebpf::programs::XdpContext;
use eip_nat_common::{
    ipv4::is_first_fragment, ipv4::PROTO_ICMP, ipv4::PROTO_UDP, Direction, Verdict,
};

use crate::{
    decide::decide,
    forward, icmp, icmp_reply, maps, parse,
    rewrite::{self, patch},
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
        return Ok(Verdict::PassUnknownInterface);
    }
    let Some(packet) = parse::ipv4(ctx)? else {
        return Ok(Verdict::PassNotIpv4);
    };
    // SAFETY: parse checked the whole header is inside the packet.
    let ip = unsafe { &mut *packet.ip };

    let rewrite = decide(direction, ip.src_addr, ip.dst_addr)?;
    if rewrite.src.is_none() && rewrite.dst.is_none() {
        return Ok(Verdict::PassNoMapping);
    }
    let l4_check = rewrite::l4_checksum(ctx, &packet)?;
    // An ICMP error quotes the packet it is about; that copy is translated
    // too (below), after the same checks-before-writes.
    let quoted = if ip.proto == PROTO_ICMP && is_first_fragment(ip.frags) {
        icmp::quoted_packet(ctx, packet.hlen, packet.tot_len)?
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
    let mut l4_sum = if l4_check.is_null() {
        0
    } else {
        // SAFETY: l4_checksum checked both bytes are inside the packet.
        u16::from_be_bytes(unsafe { *l4_check })
    };
    if let Some(e) = rewrite.src {
        patch(
            &mut ip.src_addr,
            e.addr,
            &mut ip_check,
            (l4_check, &mut l4_sum),
            udp,
        );
        stats::record_eip(e.slot, Direction::Outbound, packet.tot_len);
    }
    if let Some(e) = rewrite.dst {
        patch(
            &mut ip.dst_addr,
            e.addr,
            &mut ip_check,
            (l4_check, &mut l4_sum),
            udp,
        );
        stats::record_eip(e.slot, Direction::Inbound, packet.tot_len);
    }
    ip.check = ip_check.to_be_bytes();
    if !l4_check.is_null() {
        // SAFETY: as above.
        unsafe { *l4_check = l4_sum.to_be_bytes() };
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
