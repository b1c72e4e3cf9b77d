//! The fast path: forward a translated packet ourselves, as the kernel's
//! router would, and hand it to the kernel only for what XDP cannot do.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use eip_nat_common::{csum, maps::NextHop, Verdict};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    maps::{NEXTHOPS, TX_PORTS},
    packet::{copy_bytes, ptr_at, zero_in_place},
};

const AF_INET: u8 = 2;

/// Does a router's work for an already translated packet: TTL − 1 with
/// the header checksum patched, new MACs, and `XDP_REDIRECT` through
/// `TX_PORTS`. The next hop is the one the agent programmed (`nexthop`,
/// resolved from the kernel's routes and neighbours ahead of time); only
/// when there is none, or it is not usable, does the packet pay for a
/// `bpf_fib_lookup` (which also checks the egress MTU against `tot_len`).
#[inline(always)]
pub fn forward(ctx: &XdpContext, ip: &mut Ipv4Hdr, tot_len: u16, nexthop: u32) -> Verdict {
    // RFC 1812 §5.3.1: a packet whose TTL would reach 0 is not forwarded;
    // the kernel sends the ICMP time exceeded.
    if ip.ttl <= 1 {
        return Verdict::FallbackTtlExceeded;
    }
    if let Some(hop) = programmed(nexthop) {
        // Larger than the egress takes: the kernel fragments it or answers
        // "fragmentation needed" (RFC 1191), as after a FIB lookup.
        if tot_len > hop.mtu {
            return Verdict::FallbackFragNeeded;
        }
        // The agent programs next hops only on interfaces in TX_PORTS.
        return emit(
            ctx,
            ip,
            hop.ifindex,
            &hop.dmac,
            &hop.smac,
            Verdict::Redirected,
        );
    }
    let mut params = core::mem::MaybeUninit::<FibParams>::uninit();
    let fib = zero_in_place(&mut params);
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    fib.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the helper reads and writes `fib`, whose size we pass.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Verdict::FallbackNoNeighbour,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Verdict::FallbackFragNeeded,
        _ => return Verdict::FallbackNotForwarded,
    }
    // Checked before anything changes: a packet we cannot redirect goes to
    // the kernel exactly as a fallback, TTL and MACs untouched.
    if TX_PORTS.get(fib.ifindex).is_none() {
        return Verdict::FallbackNoTxPort;
    }
    emit(
        ctx,
        ip,
        fib.ifindex,
        &fib.dmac,
        &fib.smac,
        Verdict::RedirectedFib,
    )
}

/// The programmed next hop `id`, if there is one and it is usable.
#[inline(always)]
fn programmed(id: u32) -> Option<&'static NextHop> {
    if id == 0 {
        return None;
    }
    NEXTHOPS.get(id).filter(|hop| hop.is_valid())
}

#[inline(always)]
fn emit(
    ctx: &XdpContext,
    ip: &mut Ipv4Hdr,
    ifindex: u32,
    dmac: &[u8; 6],
    smac: &[u8; 6],
    verdict: Verdict,
) -> Verdict {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::EthernetTruncated;
    };
    let check = u16::from_be_bytes(ip.check);
    ip.check = csum::decrement_ttl(check, ip.ttl, ip.proto).to_be_bytes();
    ip.ttl -= 1;
    // SAFETY: ptr_at checked the Ethernet header is inside the packet.
    unsafe {
        copy_bytes(&mut (*eth).dst_addr, dmac);
        copy_bytes(&mut (*eth).src_addr, smac);
    }
    match TX_PORTS.redirect(ifindex, 0) {
        Ok(_) => verdict,
        // Unreachable while the agent keeps the port, unless it removed it
        // in between; the packet then goes up already forwarded.
        Err(_) => Verdict::FallbackNoTxPort,
    }
}
