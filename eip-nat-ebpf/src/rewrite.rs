//! Rewriting: an address replaced, and the checksums that cover it patched
//! incrementally (RFC 1624), the IPv4 header's and the TCP/UDP one's.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;
use eip_nat_common::{
    csum,
    ipv4::{self, ETH_HLEN},
    maps::Ipv4Key,
    Verdict,
};

use crate::{packet::ptr_at, parse::Ipv4Packet};

/// Where the packet's TCP/UDP checksum is, found before anything is
/// written, so that a packet whose checksum could not be kept valid is
/// dropped as it arrived. Null when there is none to keep: a protocol
/// without a pseudo-header checksum, or a later fragment (only the first
/// carries the L4 header).
#[inline(always)]
pub fn l4_checksum(ctx: &XdpContext, p: &Ipv4Packet) -> Result<*mut [u8; 2], Verdict> {
    // SAFETY: parse checked the fixed header is inside the packet.
    let (frags, proto) = unsafe { ((*p.ip).frags, (*p.ip).proto) };
    if !ipv4::is_first_fragment(frags) {
        return Ok(core::ptr::null_mut());
    }
    let Some(off) = ipv4::pseudo_header_checksum_offset(proto) else {
        return Ok(core::ptr::null_mut());
    };
    if p.hlen + off + 2 > p.tot_len as usize {
        debug!(ctx, "drop: L4 header cut short, proto {}", proto);
        return Err(Verdict::DropL4Truncated);
    }
    ptr_at(ctx, ETH_HLEN + p.hlen + off).ok_or(Verdict::DropL4Truncated)
}

/// Rewrites one address and patches the IPv4 checksum for it, and the L4
/// one (`l4_sum`, written back by the caller) unless `l4` is null. A null
/// pointer rather than an `Option`: an `Option` of a pointer held across
/// the rewrite let LLVM copy an unset register, which the verifier refuses
/// ("!read_ok").
#[inline(always)]
pub fn patch(
    field: &mut Ipv4Key,
    new: Ipv4Key,
    ip_check: &mut u16,
    (l4, l4_sum): (*mut [u8; 2], &mut u16),
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
    if !l4.is_null() {
        *l4_sum = if udp {
            csum::udp_replace_u32(*l4_sum, old, new)
        } else {
            csum::replace_u32(*l4_sum, old, new)
        };
    }
}
