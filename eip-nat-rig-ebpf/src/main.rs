//! Programs for veth rigs (tests, demo, benchmark): a pass-through
//! receiver, a no-op redirector, the minimal NAT the benchmark compares
//! with, a live-frame traffic generator and a counting sink. An object of
//! their own: the agent's (`eip-nat-ebpf`) holds only what a gateway runs.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    macros::{map, xdp},
    maps::{Array, DevMap, HashMap, PerCpuArray},
    programs::XdpContext,
};
use eip_nat_common::{
    bytes::copy_bytes,
    csum,
    ipv4::{self, ETH_HLEN, ETH_P_IP_BYTES, PROTO_UDP},
};
use eip_nat_rig_common::{
    GenConfig, Ipv4Key, MinNatConfig, SinkConfig, SinkCounters, GEN_HEADER_LEN,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// Pointer to a `T` at `offset`, if the whole `T` lies inside the packet
/// (the datapath's own, in `eip-nat-ebpf/src/packet.rs`, is the same).
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Does nothing but exist. A veth hands frames that another interface
/// redirected into it (`ndo_xdp_xmit`) to its peer only when the peer runs
/// NAPI, which an attached XDP program turns on (drivers/net/veth.c,
/// `veth_xdp_xmit`); without one those frames are dropped.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[map(name = "NOOP_PORT")]
static NOOP_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// The benchmark's ceiling: forward every frame, untouched, to one port.
#[xdp]
pub fn xdp_redirect_noop(_ctx: XdpContext) -> u32 {
    NOOP_PORT.redirect(0, 0).unwrap_or(XDP_ABORTED)
}

#[map(name = "GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

#[map(name = "GEN_SEQ")]
static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn sum_words(b: [u8; 4]) -> u32 {
    u16::from_be_bytes([b[0], b[1]]) as u32 + u16::from_be_bytes([b[2], b[3]]) as u32
}

/// Writes the next flow's whole Ethernet/IPv4/UDP header into the frame
/// (frames are recycled after the gateway and sink rewrote them): a
/// destination and source port per flow, from a per-CPU sequence number.
/// False for a frame too short, or before the rig is configured.
#[inline(always)]
fn write_next_flow(ctx: &XdpContext) -> bool {
    let (Some(cfg), Some(seq)) = (GEN_CONFIG.get(0), GEN_SEQ.get_ptr_mut(0)) else {
        return false;
    };
    let Some(hdr) = ptr_at::<[u8; GEN_HEADER_LEN]>(ctx, 0) else {
        return false;
    };
    // SAFETY: per-CPU slot; ptr_at checked the header bytes are in the frame.
    let flow = unsafe {
        let n = *seq;
        *seq = n + 1;
        copy_bytes(hdr, &cfg.header);
        n as u32 & cfg.flows_mask
    };
    let dst = (u32::from_be_bytes(cfg.dst_base) + (flow >> 8)).to_be_bytes();
    let sport = cfg.sport_base + (flow & 0xff) as u16;
    let ip_check = !csum::fold(cfg.ip_sum + sum_words(dst));
    let udp_check = match !csum::fold(cfg.udp_sum + sum_words(dst) + sport as u32) {
        0 => 0xffff,
        c => c,
    };
    // SAFETY: within the header checked above.
    unsafe {
        let h = &mut *hdr;
        h[24..26].copy_from_slice(&ip_check.to_be_bytes());
        h[30..34].copy_from_slice(&dst);
        h[34..36].copy_from_slice(&sport.to_be_bytes());
        h[40..42].copy_from_slice(&udp_check.to_be_bytes());
    }
    true
}

/// Traffic generator for `BPF_F_TEST_XDP_LIVE_FRAMES`: writes the next
/// flow into every frame and transmits it out of the generator's
/// interface.
#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    if write_next_flow(&ctx) {
        XDP_TX
    } else {
        XDP_ABORTED
    }
}

#[map(name = "GEN_PORT")]
static GEN_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// The generator where the kernel refuses live frames: the frames the
/// sink hands back (`xdp_sink_loop`) arrive here, get the next flow
/// written, and are redirected out of the generator's interface to the
/// gateway again, so a population of frames circulates. Dropped once the
/// rig sets `GenConfig::stop`, so that nothing runs between measurements.
#[xdp]
pub fn xdp_gen_loop(ctx: XdpContext) -> u32 {
    let running = GEN_CONFIG.get(0).is_some_and(|c| c.stop == 0);
    if running && write_next_flow(&ctx) {
        GEN_PORT.redirect(0, 0).unwrap_or(XDP_ABORTED)
    } else {
        XDP_DROP
    }
}

#[map(name = "SINK_CONFIG")]
static SINK_CONFIG: Array<SinkConfig> = Array::with_max_entries(1, 0);

#[map(name = "SINK_COUNTERS")]
static SINK_COUNTERS: PerCpuArray<SinkCounters> = PerCpuArray::with_max_entries(1, 0);

/// Counts one frame: good when it is IPv4 with a valid header checksum and
/// a destination in the expected prefix, bad otherwise. False before the
/// rig is configured.
#[inline(always)]
fn count(ctx: &XdpContext) -> bool {
    let (Some(cfg), Some(c)) = (SINK_CONFIG.get(0), SINK_COUNTERS.get_ptr_mut(0)) else {
        return false;
    };
    let good = match ptr_at::<[u8; ETH_HLEN + 20]>(ctx, 0) {
        // SAFETY: ptr_at checked the bytes are in the frame.
        Some(h) => unsafe {
            let h = &*h;
            let mut sum = 0u32;
            let mut i = ETH_HLEN;
            while i < ETH_HLEN + 20 {
                sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
                i += 2;
            }
            let mut ok = h[12..14] == ETH_P_IP_BYTES && h[14] == 0x45 && csum::fold(sum) == 0xffff;
            let mut k = 0;
            while k < 4 {
                ok &= h[30 + k] & cfg.mask[k] == cfg.prefix[k];
                k += 1;
            }
            ok
        },
        None => false,
    };
    // SAFETY: per-CPU slot.
    unsafe {
        if good {
            (*c).good += 1;
        } else {
            (*c).bad += 1;
        }
    }
    true
}

/// The benchmark's receiver: counts every frame (`count`) and drops it.
#[xdp]
pub fn xdp_sink(ctx: XdpContext) -> u32 {
    if count(&ctx) {
        XDP_DROP
    } else {
        XDP_ABORTED
    }
}

#[map(name = "SINK_PORT")]
static SINK_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// The receiver of the looping rig: counts every frame as `xdp_sink`
/// does, then hands it back to the generator (`xdp_gen_loop`) over the
/// return veth instead of dropping it.
#[xdp]
pub fn xdp_sink_loop(ctx: XdpContext) -> u32 {
    if count(&ctx) {
        SINK_PORT.redirect(0, 0).unwrap_or(XDP_ABORTED)
    } else {
        XDP_ABORTED
    }
}

// Sized by the loader (`EbpfLoader::map_max_entries`) to the mappings.
#[map(name = "MIN_NAT_TABLE")]
static MIN_NAT_TABLE: HashMap<Ipv4Key, Ipv4Key> = HashMap::with_max_entries(1, 0);

#[map(name = "MIN_NAT_CONFIG")]
static MIN_NAT_CONFIG: Array<MinNatConfig> = Array::with_max_entries(1, 0);

#[map(name = "MIN_NAT_PORT")]
static MIN_NAT_PORT: DevMap = DevMap::with_max_entries(1, 0);

/// The benchmark's reference peer: the least an XDP 1:1 NAT does to
/// forward a packet to a translated destination. One hash lookup, the new
/// destination with both checksums patched, a router's TTL decrement,
/// fixed MACs, and a redirect; no counters, no FIB lookup. What it cannot
/// translate (not IPv4, IP options, no mapping) goes to the kernel.
///
/// It does not hand TTL ≤ 1 to the kernel, as a deployable router must
/// (eip-nat does): the rig's traffic never has it, and BPF_PROG_TEST_RUN,
/// which feeds a program its own output, then does the whole work on every
/// one of a million repetitions, the TTL wrapping around. One compare less
/// only makes the reference harder to match.
#[xdp]
pub fn xdp_min_nat(ctx: XdpContext) -> u32 {
    min_nat(&ctx).unwrap_or(XDP_PASS)
}

#[inline(always)]
fn min_nat(ctx: &XdpContext) -> Option<u32> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ether_type = ptr_at::<[u8; 2]>(ctx, 12)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: ptr_at checked the bytes are in the frame.
    let (ether_type, ip) = unsafe { (*ether_type, &mut *ip) };
    // IHL 5 only: options would move the L4 header.
    if ether_type != ETH_P_IP_BYTES || ip.vihl != 0x45 {
        return None;
    }
    // SAFETY: copied out at once.
    let new = *unsafe { MIN_NAT_TABLE.get(ip.dst_addr) }?;
    let cfg = MIN_NAT_CONFIG.get(0)?;
    // Found before anything is written, so a frame too short for its L4
    // checksum goes to the kernel as it came. Only a first fragment
    // carries the L4 header.
    let l4_check = match ipv4::pseudo_header_checksum_offset(ip.proto) {
        Some(off) if ipv4::is_first_fragment(ip.frags) => Some(ptr_at::<[u8; 2]>(
            ctx,
            ETH_HLEN + ipv4::MIN_HEADER_LEN + off,
        )?),
        _ => None,
    };
    let old = ip.dst_addr;
    ip.dst_addr = new;
    let check = csum::replace_u32(u16::from_be_bytes(ip.check), old, new);
    ip.check = csum::decrement_ttl(check, ip.ttl, ip.proto).to_be_bytes();
    ip.ttl = ip.ttl.wrapping_sub(1);
    if let Some(p) = l4_check {
        // SAFETY: ptr_at checked both bytes are in the frame.
        unsafe {
            let c = u16::from_be_bytes(*p);
            *p = if ip.proto == PROTO_UDP {
                csum::udp_replace_u32(c, old, new)
            } else {
                csum::replace_u32(c, old, new)
            }
            .to_be_bytes();
        }
    }
    // SAFETY: ptr_at checked the Ethernet header is in the frame.
    unsafe {
        copy_bytes(&mut (*eth).dst_addr, &cfg.dst_mac);
        copy_bytes(&mut (*eth).src_addr, &cfg.src_mac);
    }
    Some(MIN_NAT_PORT.redirect(0, 0).unwrap_or(XDP_ABORTED))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as the datapath's, so the kernel lets the programs use
/// every helper they need.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
