//! Tracing (`eip-nat trace`): the packets an operator asked about, copied
//! into a ring buffer with their verdict. Off, it costs a bit test of the
//! configuration the program has already read.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use eip_nat_common::{
    ipv4::{ETH_HLEN, ETH_P_IP_BYTES},
    maps::{Ipv4Key, TraceEvent, TRACE_CAPTURE},
    Direction, Verdict,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    maps::{TRACE_CONFIG, TRACE_EVENTS},
    packet::{self, ptr_at},
};

/// The IPv4 source and destination of the frame, zeroes if it has none.
#[inline(always)]
pub fn addresses(ctx: &XdpContext) -> (Ipv4Key, Ipv4Key) {
    let (Some(ether_type), Some(ip)) =
        (ptr_at::<[u8; 2]>(ctx, 12), ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN))
    else {
        return ([0; 4], [0; 4]);
    };
    // SAFETY: ptr_at checked both are inside the packet.
    unsafe {
        if *ether_type != ETH_P_IP_BYTES {
            return ([0; 4], [0; 4]);
        }
        ((*ip).src_addr, (*ip).dst_addr)
    }
}

/// Copies the packet into `TRACE_EVENTS` if the trace selects it; the
/// addresses are the ones it arrived with.
#[inline(always)]
pub fn emit(ctx: &XdpContext, direction: Direction, verdict: Verdict, arrived: (Ipv4Key, Ipv4Key)) {
    let Some(cfg) = TRACE_CONFIG.get(0) else {
        return;
    };
    if cfg.directions & (1 << direction as u32) == 0 || cfg.verdicts & (1 << verdict as u32) == 0 {
        return;
    }
    if verdict.is_translated() {
        // SAFETY: a helper without arguments.
        if cfg.sample == 0 || unsafe { bpf_get_prandom_u32() } % cfg.sample != 0 {
            return;
        }
    }
    if cfg.addr != [0; 4] {
        let now = addresses(ctx);
        if ![arrived.0, arrived.1, now.0, now.1].contains(&cfg.addr) {
            return;
        }
    }
    let Some(mut entry) = TRACE_EVENTS.reserve::<TraceEvent>(0) else {
        // The ring is full: the reader is behind; this one is lost.
        return;
    };
    let frame_len = packet::len(ctx) as u32;
    // Bounded for the verifier: 1..=TRACE_CAPTURE bytes (an XDP frame is
    // never empty, but the helper's size must be proven non-zero).
    let mut captured = frame_len;
    if captured > TRACE_CAPTURE as u32 {
        captured = TRACE_CAPTURE as u32;
    }
    if captured == 0 {
        entry.discard(0);
        return;
    }
    // The same value, in a form whose bounds the verifier sees at the
    // call (LLVM otherwise carries the value spilled, bounds lost); opaque
    // so that LLVM keeps the mask it would know to be a no-op.
    let captured =
        (core::hint::black_box(captured).wrapping_sub(1) & (TRACE_CAPTURE as u32 - 1)) + 1;
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved entry, ours until submitted; the helper
    // copies `captured` ≤ TRACE_CAPTURE bytes into `data`.
    unsafe {
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).ifindex = ctx.ingress_ifindex() as u32;
        (*e).direction = direction as u32;
        (*e).verdict = verdict as u32;
        (*e).frame_len = frame_len;
        (*e).src = arrived.0;
        (*e).dst = arrived.1;
        (*e).reserved = 0;
        let copied = bpf_xdp_load_bytes(ctx.ctx, 0, (*e).data.as_mut_ptr() as *mut _, captured);
        (*e).captured = if copied == 0 { captured } else { 0 };
    }
    entry.submit(0);
}
