//! ICMP errors: the packet quoted inside is translated with the outer one
//! (RFC 5508 §4.2, RFC 3022 §4.3), so the error reaches the socket it is
//! about. Ports are not rewritten by a 1:1 NAT, so only an address, the
//! quoted IPv4 checksum, the quoted TCP/UDP checksum (when quoted), and the
//! outer ICMP checksum that covers all of them change.

use aya_ebpf::programs::XdpContext;
use eip_nat_common::{
    csum,
    ipv4::{self, ETH_HLEN, PROTO_UDP},
    Verdict,
};
use network_types::ip::Ipv4Hdr;

use crate::{packet::ptr_at, rewrite::patch};

/// Destination unreachable (incl. fragmentation needed), time exceeded and
/// parameter problem: the errors that quote a packet (RFC 792, RFC 1812).
#[inline(always)]
const fn is_error(kind: u8) -> bool {
    matches!(kind, 3 | 11 | 12)
}

/// The quoted packet of an ICMP error, located and checked, not yet changed.
///
/// Absent parts are null pointers rather than `Option`s: an `Option` held
/// across the outer rewrite let LLVM spill its uninitialised payload, which
/// the verifier refuses ("!read_ok").
pub struct Quoted {
    icmp_check: *mut [u8; 2],
    /// Null when the packet is not an ICMP error.
    ip: *mut Ipv4Hdr,
    /// Null when the quote holds no TCP/UDP checksum.
    l4_check: *mut [u8; 2],
    udp: bool,
}

/// Finds the packet an ICMP error quotes; [`Quoted::NONE`] for ICMP
/// messages that quote nothing (echo and the like). Errors whose quote
/// cannot be translated are dropped with their reason.
#[inline(always)]
pub fn quoted_packet(ctx: &XdpContext, hlen: usize, tot_len: u16) -> Result<Quoted, Verdict> {
    let at = ETH_HLEN + hlen;
    // Within the datagram, not just the frame: link padding is not ICMP.
    if hlen + 4 > tot_len as usize {
        return Err(Verdict::DropIcmpErrorTruncated);
    }
    let Some(head) = ptr_at::<[u8; 4]>(ctx, at) else {
        return Err(Verdict::DropIcmpErrorTruncated);
    };
    // SAFETY: ptr_at checked the 4 bytes (type, code, checksum).
    if !is_error(unsafe { (*head)[0] }) {
        return Ok(Quoted::NONE);
    }
    // RFC 792: the quote is the IPv4 header and at least 8 bytes after it.
    let inner_at = at + 8;
    let inner: *mut Ipv4Hdr = ptr_at(ctx, inner_at).ok_or(Verdict::DropIcmpErrorTruncated)?;
    // SAFETY: ptr_at checked the fixed header.
    let (vihl, frags, proto) = unsafe { ((*inner).vihl, (*inner).frags, (*inner).proto) };
    let inner_hlen = ipv4::header_len(vihl);
    let quoted_end = hlen + 8 + inner_hlen + 8;
    if vihl >> 4 != 4 || inner_hlen < ipv4::MIN_HEADER_LEN || quoted_end > tot_len as usize {
        return Err(Verdict::DropIcmpErrorTruncated);
    }
    // A later fragment carries no ports: the error cannot be matched to a
    // flow, and a NAT should not guess (RFC 5508 §4.2).
    if !ipv4::is_first_fragment(frags) {
        return Err(Verdict::DropIcmpErrorInnerFragment);
    }
    // The quoted TCP/UDP checksum is fixed when it is in the quote (a full
    // TCP header, or any UDP one), and left alone when only the 8 bytes
    // RFC 792 asks for hold no checksum (TCP).
    let mut l4_check = core::ptr::null_mut();
    if let Some(off) = ipv4::pseudo_header_checksum_offset(proto) {
        let field = hlen + 8 + inner_hlen + off;
        if field + 2 <= tot_len as usize {
            if let Some(p) = ptr_at::<[u8; 2]>(ctx, ETH_HLEN + field) {
                l4_check = p;
            }
        }
    }
    Ok(Quoted {
        // Inside the 4 bytes checked above (a fresh bounds check on a
        // variable offset is one the verifier may not tie to the pointer).
        icmp_check: (head as *mut u8).wrapping_add(2) as *mut [u8; 2],
        ip: inner,
        l4_check,
        udp: proto == PROTO_UDP,
    })
}

impl Quoted {
    pub const NONE: Quoted = Quoted {
        icmp_check: core::ptr::null_mut(),
        ip: core::ptr::null_mut(),
        l4_check: core::ptr::null_mut(),
        udp: false,
    };

    pub fn is_some(&self) -> bool {
        !self.ip.is_null()
    }

    /// The error is about a packet that left with source `old`.
    #[inline(always)]
    pub fn translate_source(&self, old: [u8; 4], new: [u8; 4]) {
        // SAFETY: ptr_at checked the quoted header in quoted_packet.
        let ip = unsafe { &mut *self.ip };
        if ip.src_addr == old {
            self.rewrite(&mut ip.src_addr, new);
        }
    }

    /// The error is about a packet that arrived with destination `old`.
    #[inline(always)]
    pub fn translate_destination(&self, old: [u8; 4], new: [u8; 4]) {
        // SAFETY: as above.
        let ip = unsafe { &mut *self.ip };
        if ip.dst_addr == old {
            self.rewrite(&mut ip.dst_addr, new);
        }
    }

    #[inline(always)]
    fn rewrite(&self, field: &mut [u8; 4], new: [u8; 4]) {
        // SAFETY: every pointer was checked by ptr_at in quoted_packet.
        unsafe {
            let ip = &mut *self.ip;
            let old = *field;
            let old_ip_check = u16::from_be_bytes(ip.check);
            let mut ip_check = old_ip_check;
            // The quoted L4 checksum is patched below, where the ICMP
            // checksum follows it.
            let mut unused = 0;
            patch(
                field,
                new,
                &mut ip_check,
                (core::ptr::null_mut(), &mut unused),
                self.udp,
            );
            ip.check = ip_check.to_be_bytes();
            // The ICMP checksum covers the quote: the address and both
            // checksums inside it changed.
            let mut icmp = u16::from_be_bytes(*self.icmp_check);
            icmp = csum::replace_u32(icmp, old, new);
            icmp = csum::replace_u16(icmp, old_ip_check, ip_check);
            if !self.l4_check.is_null() {
                let before = u16::from_be_bytes(*self.l4_check);
                let after = if self.udp {
                    csum::udp_replace_u32(before, old, new)
                } else {
                    csum::replace_u32(before, old, new)
                };
                *self.l4_check = after.to_be_bytes();
                icmp = csum::replace_u16(icmp, before, after);
            }
            *self.icmp_check = icmp.to_be_bytes();
        }
    }
}
