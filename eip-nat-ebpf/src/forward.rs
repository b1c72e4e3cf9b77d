//! The fast path: forward a translated packet ourselves, as the kernel's
//! router would, and hand it to the kernel only for what XDP cannot do.
//!
//! Where the packet goes is decided before it is rewritten ([`plan`]), so
//! that a packet that cannot be forwarded (TTL expired, DF and too big) is
//! answered with an ICMP error built from the packet as the sender sent it.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use eip_nat_common::{bytes::copy_bytes, csum, maps::NextHop, Verdict};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    maps::{NEXTHOPS, TX_PORTS, TX_SLOTS},
    packet::{ptr_at, zero_in_place},
};

const AF_INET: u8 = 2;

/// What becomes of a translated packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Forwarded by XDP through `ifindex`, with `dmac`/`smac`.
    Hop,
    /// Passed to the kernel, translated (slow path, or a fallback).
    Pass,
    /// TTL ≤ 1 (RFC 1812 §5.3.1): the sender is owed a time exceeded.
    TimeExceeded,
    /// DF set and larger than the next hop's MTU (RFC 1191): the sender is
    /// owed a "fragmentation needed" with `mtu`.
    FragNeeded,
}

/// A forwarding decision. Every field is always set (absent pointers are
/// null): an enum with payloads held across the rewrite let LLVM copy its
/// uninitialised parts, which the verifier refuses ("!read_ok").
pub struct Plan {
    pub fate: Fate,
    /// The verdict if the plan is carried out as it is; for the two errors,
    /// the fallback when the error cannot be sent.
    pub verdict: Verdict,
    pub ifindex: u32,
    /// The egress's `TX_SLOTS` slot for a programmed hop; -1 after a FIB
    /// lookup, which redirects through `TX_PORTS` by ifindex.
    pub slot: i32,
    pub mtu: u16,
    pub dmac: *const [u8; 6],
    pub smac: *const [u8; 6],
}

impl Plan {
    #[inline(always)]
    fn pass(verdict: Verdict) -> Self {
        Self::of(Fate::Pass, verdict, 0)
    }

    #[inline(always)]
    fn of(fate: Fate, verdict: Verdict, mtu: u16) -> Self {
        Plan {
            fate,
            verdict,
            ifindex: 0,
            slot: -1,
            mtu,
            dmac: core::ptr::null(),
            smac: core::ptr::null(),
        }
    }

    #[inline(always)]
    fn hop(ifindex: u32, slot: i32, dmac: &[u8; 6], smac: &[u8; 6], verdict: Verdict) -> Self {
        Plan {
            fate: Fate::Hop,
            verdict,
            ifindex,
            slot,
            mtu: 0,
            dmac,
            smac,
        }
    }

    /// The ICMP error the sender is owed: (type, code, next-hop MTU).
    #[inline(always)]
    pub fn error(&self) -> Option<(u8, u8, u16)> {
        match self.fate {
            Fate::TimeExceeded => Some((11, 0, 0)),
            Fate::FragNeeded => Some((3, 4, self.mtu)),
            _ => None,
        }
    }
}

/// Decides where the packet goes once translated to `src` → `dst`, without
/// writing anything. The next hop is the one the agent programmed
/// (`nexthop`, resolved from the kernel's routes and neighbours ahead of
/// time); only when there is none, or it is not usable, does the packet pay
/// for a `bpf_fib_lookup` (which also checks the egress MTU), in `fib`.
#[inline(always)]
pub fn plan(
    ctx: &XdpContext,
    ip: &Ipv4Hdr,
    fast_path: bool,
    (src, dst): ([u8; 4], [u8; 4]),
    nexthop: u32,
    fib: &mut core::mem::MaybeUninit<FibParams>,
) -> Plan {
    if ip.ttl <= 1 {
        let fallback = if fast_path {
            Verdict::TranslatedPassTtlExceeded
        } else {
            Verdict::Translated
        };
        return Plan::of(Fate::TimeExceeded, fallback, 0);
    }
    if !fast_path {
        return Plan::pass(Verdict::Translated);
    }
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let df = ip.frags[0] & 0x40 != 0;
    if let Some(hop) = programmed(nexthop) {
        if tot_len > hop.mtu {
            return too_big(df, hop.mtu);
        }
        // The agent programs next hops only on interfaces in TX_PORTS.
        return Plan::hop(
            hop.ifindex,
            hop.slot() as i32,
            &hop.dmac,
            &hop.smac,
            Verdict::TranslatedRedirect,
        );
    }
    let fib = zero_in_place(fib);
    fib.family = AF_INET;
    fib.l4_protocol = ip.proto;
    fib.__bindgen_anon_1.tot_len = tot_len;
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
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
        BPF_FIB_LKUP_RET_NO_NEIGH => return Plan::pass(Verdict::TranslatedPassNoNeighbour),
        // SAFETY: on FRAG_NEEDED the helper wrote the MTU (bpf_ipv4_fib_lookup).
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            return too_big(df, unsafe { fib.__bindgen_anon_1.mtu_result })
        }
        _ => return Plan::pass(Verdict::TranslatedPassNotForwarded),
    }
    if TX_PORTS.get(fib.ifindex).is_none() {
        return Plan::pass(Verdict::TranslatedPassNoTxPort);
    }
    Plan::hop(
        fib.ifindex,
        -1,
        &fib.dmac,
        &fib.smac,
        Verdict::TranslatedRedirectFib,
    )
}

/// Over the egress MTU: with DF the sender is told; without, the kernel
/// fragments it.
#[inline(always)]
fn too_big(df: bool, mtu: u16) -> Plan {
    if df {
        Plan::of(Fate::FragNeeded, Verdict::TranslatedPassFragNeeded, mtu)
    } else {
        Plan::pass(Verdict::TranslatedPassFragNeeded)
    }
}

/// The programmed next hop `id`, if there is one and it is usable.
#[inline(always)]
fn programmed(id: u32) -> Option<&'static NextHop> {
    if id == 0 {
        return None;
    }
    NEXTHOPS.get(id).filter(|hop| hop.is_valid())
}

/// Carries out a plan on the translated packet. A plan whose ICMP error
/// could not be sent (the error may not be sent at all, or no source
/// address is configured) falls back to the kernel, as before the datapath
/// sent its own.
#[inline(always)]
pub fn finish(ctx: &XdpContext, ip: &mut Ipv4Hdr, plan: Plan) -> Verdict {
    if plan.fate != Fate::Hop {
        return plan.verdict;
    }
    // SAFETY: a Hop's MACs point into the map value or the FIB parameters,
    // both alive for the caller's whole run.
    let (dmac, smac) = unsafe { (&*plan.dmac, &*plan.smac) };
    emit(ctx, ip, (plan.ifindex, plan.slot), dmac, smac, plan.verdict)
}

/// A router's work: TTL − 1 with the header checksum patched, new MACs,
/// and `XDP_REDIRECT` through the egress's slot in `TX_SLOTS` (programmed)
/// or `TX_PORTS` (after a FIB lookup, which names an ifindex).
///
/// The redirect is asked for first: the helper only records the target
/// (`bpf_redirect_map` fills the per-CPU `bpf_redirect_info`; the frame
/// moves after the program returns), so a port that vanished leaves the
/// frame with its TTL and MACs as they came, and the kernel, which it goes
/// to instead, forwards it as it would any translated packet.
#[inline(always)]
fn emit(
    ctx: &XdpContext,
    ip: &mut Ipv4Hdr,
    (ifindex, slot): (u32, i32),
    dmac: &[u8; 6],
    smac: &[u8; 6],
    verdict: Verdict,
) -> Verdict {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::DropEthernetTruncated;
    };
    let sent = if slot >= 0 {
        TX_SLOTS.redirect(slot as u32, 0)
    } else {
        TX_PORTS.redirect(ifindex, 0)
    };
    if sent.is_err() {
        // Unreachable while the agent keeps the port, unless it removed
        // it in between.
        return Verdict::TranslatedPassNoTxPort;
    }
    let check = u16::from_be_bytes(ip.check);
    ip.check = csum::decrement_ttl(check, ip.ttl, ip.proto).to_be_bytes();
    ip.ttl -= 1;
    // SAFETY: ptr_at checked the Ethernet header is inside the packet.
    unsafe {
        copy_bytes(&mut (*eth).dst_addr, dmac);
        copy_bytes(&mut (*eth).src_addr, smac);
    }
    verdict
}
