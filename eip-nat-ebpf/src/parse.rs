//! Parsing: the Ethernet and IPv4 headers of a frame, checked, before
//! anything is looked up or written.

use aya_ebpf::programs::XdpContext;
use eip_nat_common::{
    ipv4::{self, ETH_HLEN, ETH_P_IP_BYTES},
    Verdict,
};
use network_types::ip::Ipv4Hdr;

use crate::packet::{holds, ptr_at};

/// An IPv4 packet whose fixed header, options and whole datagram (as its
/// total length announces) lie inside the frame.
pub struct Ipv4Packet {
    pub ip: *mut Ipv4Hdr,
    /// Header length, options included.
    pub hlen: usize,
    pub tot_len: u16,
}

/// The IPv4 packet in the frame; `Ok(None)` for a frame that is not IPv4
/// (ARP, IPv6, VLAN-tagged), which is none of our business; `Err` for a
/// malformed one.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<Option<Ipv4Packet>, Verdict> {
    let ether_type: *const [u8; 2] = ptr_at(ctx, 12).ok_or(Verdict::DropEthernetTruncated)?;
    // SAFETY: ptr_at checked the bytes are inside the packet.
    if unsafe { *ether_type } != ETH_P_IP_BYTES {
        return Ok(None);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Verdict::DropIpv4Truncated)?;
    // SAFETY: ptr_at checked the whole fixed header is inside the packet.
    let (vihl, tot_len) = unsafe { ((*ip).vihl, u16::from_be_bytes((*ip).tot_len)) };
    let hlen = ipv4::check_header(vihl, tot_len)?;
    if !holds(ctx, ETH_HLEN + tot_len as usize) {
        return Err(Verdict::DropIpv4Truncated);
    }
    Ok(Some(Ipv4Packet { ip, hlen, tot_len }))
}
