//! IPv4 and Ethernet header facts the datapath decides on, as pure functions.

use crate::Verdict;

pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4, as the two bytes read off the wire.
pub const ETH_P_IP_BYTES: [u8; 2] = 0x0800u16.to_be_bytes();

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Minimum IPv4 header (IHL = 5).
pub const MIN_HEADER_LEN: usize = 20;

/// Header length in bytes, honouring IHL (RFC 791 §3.1): 20 to 60. The mask
/// keeps the value provably bounded for the verifier.
#[inline(always)]
pub const fn header_len(vihl: u8) -> usize {
    ((vihl & 0x0f) as usize) * 4
}

/// Checks the header fields that say where the datagram is and returns the
/// header length. Whether the frame really holds `tot_len` bytes is checked
/// against the packet's end by the caller.
#[inline(always)]
pub const fn check_header(vihl: u8, tot_len: u16) -> Result<usize, Verdict> {
    let hlen = header_len(vihl);
    if vihl >> 4 != 4 || hlen < MIN_HEADER_LEN || (tot_len as usize) < hlen {
        return Err(Verdict::DropIpv4BadHeader);
    }
    Ok(hlen)
}

/// True for an unfragmented datagram or the first fragment (offset 0), the
/// only one that carries the L4 header (RFC 791 §3.2).
#[inline(always)]
pub const fn is_first_fragment(frags: [u8; 2]) -> bool {
    frags[0] & 0x1f == 0 && frags[1] == 0
}

/// Offset, from the start of the L4 header, of a checksum that covers the
/// IPv4 pseudo-header (TCP: RFC 793; UDP: RFC 768), hence changes with an
/// address. ICMP's checksum covers only the ICMP message; other protocols
/// are translated at the IP layer only.
#[inline(always)]
pub const fn pseudo_header_checksum_offset(proto: u8) -> Option<usize> {
    match proto {
        PROTO_TCP => Some(16),
        PROTO_UDP => Some(6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_len_honours_ihl() {
        assert_eq!(header_len(0x45), 20);
        assert_eq!(header_len(0x46), 24);
        assert_eq!(header_len(0x4f), 60);
    }

    #[test]
    fn header_checks() {
        assert_eq!(check_header(0x45, 40), Ok(20));
        assert_eq!(check_header(0x46, 24), Ok(24), "options, no payload");
        assert_eq!(
            check_header(0x44, 40),
            Err(Verdict::DropIpv4BadHeader),
            "IHL 4"
        );
        assert_eq!(
            check_header(0x65, 40),
            Err(Verdict::DropIpv4BadHeader),
            "IPv6"
        );
        assert_eq!(
            check_header(0x46, 20),
            Err(Verdict::DropIpv4BadHeader),
            "tot_len < IHL"
        );
    }

    #[test]
    fn fragments() {
        assert!(is_first_fragment([0x00, 0x00]));
        assert!(is_first_fragment([0x40, 0x00]), "DF alone");
        assert!(is_first_fragment([0x20, 0x00]), "MF at offset 0");
        assert!(!is_first_fragment([0x20, 0xb9]));
        assert!(!is_first_fragment([0x01, 0x00]));
    }

    #[test]
    fn checksum_offsets() {
        assert_eq!(pseudo_header_checksum_offset(PROTO_TCP), Some(16));
        assert_eq!(pseudo_header_checksum_offset(PROTO_UDP), Some(6));
        assert_eq!(pseudo_header_checksum_offset(PROTO_ICMP), None);
        assert_eq!(pseudo_header_checksum_offset(47), None);
    }
}
