//! Counters: per-CPU, so no atomics; the agent sums the CPUs.

use aya_ebpf::programs::XdpContext;
use eip_nat_common::{maps::verdict_index, Direction, Verdict};

use crate::{
    maps::{EIP_COUNTERS, VERDICT_COUNTERS},
    packet,
};

/// Counts the packet under (direction, verdict) and returns its XDP action.
#[inline(always)]
pub fn record(ctx: &XdpContext, direction: Direction, verdict: Verdict) -> u32 {
    if let Some(c) = VERDICT_COUNTERS.get_ptr_mut(verdict_index(direction, verdict)) {
        // SAFETY: a per-CPU array slot, touched only by this CPU, and the
        // program cannot be preempted on it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += packet::len(ctx);
        }
    }
    verdict.action()
}

/// Counts one translated packet of `ip_bytes` for the association in `slot`.
#[inline(always)]
pub fn record_eip(slot: u32, direction: Direction, ip_bytes: u16) {
    if let Some(c) = EIP_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: as in `record`.
        unsafe {
            if direction == Direction::Inbound {
                (*c).in_packets += 1;
                (*c).in_bytes += ip_bytes as u64;
            } else {
                (*c).out_packets += 1;
                (*c).out_bytes += ip_bytes as u64;
            }
        }
    }
}
