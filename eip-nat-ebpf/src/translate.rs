//! Stateless 1:1 NAT of one packet (the domain's "NAT mode").
//!
//! Inbound (public ingress): destination EIP → private IP. Outbound (private
//! ingress): source private IP → EIP. Only the address and the checksums that
//! cover it change; the payload is never touched (no ALG).

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;
use eip_nat_common::{
    csum,
    ipv4::{self, ETH_HLEN, ETH_P_IP_BYTES, PROTO_UDP},
    Direction, Verdict,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    forward,
    maps::{EIP_TO_PRIVATE, PRIVATE_TO_EIP},
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

    let (field, table) = match direction {
        Direction::Inbound => (&mut ip.dst_addr, &EIP_TO_PRIVATE),
        _ => (&mut ip.src_addr, &PRIVATE_TO_EIP),
    };
    let old = *field;
    // SAFETY: the value is copied out at once; the agent only replaces
    // entries whole, through the syscall.
    let Some(entry) = (unsafe { table.get(&old) }).copied() else {
        return Ok(Verdict::NoMapping);
    };

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

    *field = entry.addr;
    let check = u16::from_be_bytes(ip.check);
    ip.check = csum::replace_u32(check, old, entry.addr).to_be_bytes();
    if let Some(l4) = l4_check {
        // SAFETY: ptr_at checked both bytes are inside the packet.
        let l4 = unsafe { &mut *l4 };
        let check = u16::from_be_bytes(*l4);
        let new = if ip.proto == PROTO_UDP {
            csum::udp_replace_u32(check, old, entry.addr)
        } else {
            csum::replace_u32(check, old, entry.addr)
        };
        *l4 = new.to_be_bytes();
    }
    stats::record_eip(entry.slot, direction, tot_len);
    if fast_path {
        Ok(forward::forward(ctx, ip, tot_len))
    } else {
        Ok(Verdict::Translated)
    }
}
