//! Active/standby on a shared L2 uplink (docs/fleet.md, "Active/standby on
//! a shared L2"): the upstream router reaches an EIP by ARP, so the gateway
//! that owns the EIPs is the one that answers ARP for them.
//!
//! - The active gateway ([`FLAG_ARP_ACTIVE`]) answers an ARP request
//!   (RFC 826) whose target is an EIP: the request is turned into the reply
//!   in place and sent back out of the interface it came in on (`XDP_TX`),
//!   from the public interface's MAC ([`ArpConfig`]), while the deadline the
//!   agent moves on with each renewal of its etcd lease lies ahead.
//! - A standby ([`FLAG_STANDBY`]) answers no ARP and drops IPv4 packets to
//!   an EIP that arrive on its public interface: a switch that floods a
//!   frame sends it to both gateways, and only the active one delivers it.
//!   Its tables are kept as the active's, so taking over is setting a flag.
//!
//! Both run before the translation, on the public side only, and only
//! when one of the two flags is set: a gateway outside such a pair pays
//! one test of a value it has already read.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use eip_nat_common::{
    ipv4::{ETH_HLEN, ETH_P_IP_BYTES},
    maps::{Ipv4Key, FLAG_ARP_ACTIVE, FLAG_STANDBY},
    Verdict,
};

use crate::{
    maps::{ADDRESSES, ARP_CONFIG},
    packet::ptr_at,
};

const ETH_P_ARP_BYTES: [u8; 2] = 0x0806u16.to_be_bytes();
/// RFC 826's hardware type for Ethernet, and its operation codes.
const HTYPE_ETHERNET: [u8; 2] = 1u16.to_be_bytes();
const OP_REQUEST: [u8; 2] = 1u16.to_be_bytes();
const OP_REPLY: [u8; 2] = 2u16.to_be_bytes();
/// Offset of the destination address in the IPv4 header.
const IPV4_DST: usize = 16;

/// An ARP packet for IPv4 over Ethernet (RFC 826), 28 bytes.
#[repr(C)]
struct EthernetArp {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sha: [u8; 6],
    spa: Ipv4Key,
    tha: [u8; 6],
    tpa: Ipv4Key,
}

/// What the active/standby role decides for the frame, before the
/// translation; None leaves it to the translation. `flags` are the
/// role's bits of `Config::flags`, 0 on the private side.
#[inline(always)]
pub fn decide(ctx: &XdpContext, flags: u32) -> Option<Verdict> {
    if flags == 0 {
        return None;
    }
    // A frame too short for these is the translation's to name.
    let ether_type: *const [u8; 2] = ptr_at(ctx, 12)?;
    // SAFETY: ptr_at checked the bytes are inside the packet.
    let ether_type = unsafe { *ether_type };
    if ether_type == ETH_P_ARP_BYTES && flags & FLAG_ARP_ACTIVE != 0 {
        return Some(answer(ctx));
    }
    if ether_type == ETH_P_IP_BYTES && flags & FLAG_STANDBY != 0 {
        let dst: *const Ipv4Key = ptr_at(ctx, ETH_HLEN + IPV4_DST)?;
        // SAFETY: as above.
        if is_eip(unsafe { *dst }) {
            return Some(Verdict::DropStandby);
        }
    }
    None
}

/// True if `addr` is an EIP of ours.
#[inline(always)]
fn is_eip(addr: Ipv4Key) -> bool {
    // SAFETY: the map's values are plain integers, read only.
    unsafe { ADDRESSES.get(addr) }.is_some_and(|e| e.is_eip())
}

/// Answers an ARP request for an EIP; anything else ARP goes to the kernel
/// as before (`pass_not_ipv4`).
#[inline(always)]
fn answer(ctx: &XdpContext) -> Verdict {
    let Some(arp) = ptr_at::<EthernetArp>(ctx, ETH_HLEN) else {
        return Verdict::DropArpTruncated;
    };
    // SAFETY: ptr_at checked the whole ARP packet is inside the frame.
    let arp = unsafe { &mut *arp };
    if arp.htype != HTYPE_ETHERNET
        || arp.ptype != ETH_P_IP_BYTES
        || arp.hlen != 6
        || arp.plen != 4
        || arp.op != OP_REQUEST
        // An announcement (RFC 5227 §2.3: sender and target the same
        // address, another gateway taking over) asks nothing.
        || arp.spa == arp.tpa
    {
        return Verdict::PassNotIpv4;
    }
    let (requester_mac, requester_ip, eip) = (arp.sha, arp.spa, arp.tpa);
    if !is_eip(eip) {
        return Verdict::PassNotIpv4;
    }
    let Some(cfg) = ARP_CONFIG.get(0) else {
        return Verdict::PassNotIpv4;
    };
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() } >= cfg.active_until_ns {
        return Verdict::PassNotIpv4;
    }
    let mac = cfg.mac;
    arp.op = OP_REPLY;
    arp.tha = requester_mac;
    arp.tpa = requester_ip;
    arp.sha = mac;
    arp.spa = eip;
    let Some(eth) = ptr_at::<[[u8; 6]; 2]>(ctx, 0) else {
        return Verdict::DropArpTruncated;
    };
    // SAFETY: ptr_at checked both addresses are inside the frame.
    unsafe { *eth = [requester_mac, mac] };
    Verdict::ArpReplySent
}
