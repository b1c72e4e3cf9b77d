//! What the rig's BPF object (`eip-nat-rig-ebpf`) and the test harness
//! (`integration-tests`' `rig` module) must agree on: map names and the
//! layout of map values. The rig programs drive veth rigs for the tests,
//! the demo and the benchmark; the agent never loads them, so none of this
//! is part of the gateway's ABI (`eip-nat-common`).
//!
//! `no_std` so the rig's BPF crate can use it; every map value is
//! `#[repr(C)]` without padding.
#![no_std]

/// Address key of [`MIN_NAT_TABLE`]: IPv4 address, network byte order.
pub type Ipv4Key = [u8; 4];

/// `Array<GenConfig>`, one entry: what `xdp_gen` sends.
pub const GEN_CONFIG: &str = "GEN_CONFIG";
/// `PerCpuArray<u64>`, one entry: frames generated on this CPU.
pub const GEN_SEQ: &str = "GEN_SEQ";
/// `Array<SinkConfig>`, one entry: what `xdp_sink` accepts.
pub const SINK_CONFIG: &str = "SINK_CONFIG";
/// `PerCpuArray<SinkCounters>`, one entry.
pub const SINK_COUNTERS: &str = "SINK_COUNTERS";
/// `DevMap`, one entry: the generator's interface, where `xdp_gen_loop`
/// sends the frames the sink handed back.
pub const GEN_PORT: &str = "GEN_PORT";
/// `DevMap`, one entry: the return veth, where `xdp_sink_loop` hands every
/// frame back to the generator.
pub const SINK_PORT: &str = "SINK_PORT";
/// `DevMap`, one entry: where `xdp_redirect_noop` sends everything.
pub const NOOP_PORT: &str = "NOOP_PORT";

/// Length of the Ethernet + IPv4 + UDP headers `xdp_gen` writes.
pub const GEN_HEADER_LEN: usize = 42;

/// A UDP flow generator: each frame gets the template headers, then a
/// destination and source port picked by a per-CPU sequence number:
/// flow = seq & flows_mask, destination = dst_base + (flow >> 8),
/// source port = sport_base + (flow & 0xff).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct GenConfig {
    /// Ethernet, IPv4 (checksum 0) and UDP (checksum 0) headers, with the
    /// destination address and source port 0.
    pub header: [u8; GEN_HEADER_LEN],
    pub sport_base: u16,
    pub dst_base: [u8; 4],
    pub flows_mask: u32,
    /// One's-complement sums of the template's IPv4 header and of the UDP
    /// pseudo-header + header + payload, with destination and source port 0.
    pub ip_sum: u32,
    pub udp_sum: u32,
    /// Non-zero: `xdp_gen_loop` drops what comes back (the loop stops).
    pub stop: u32,
}
const _: () = assert!(core::mem::size_of::<GenConfig>() == 64);

/// `xdp_sink` counts a frame as good when (destination & mask) == prefix
/// and its IPv4 header checksum is valid; anything else is bad.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SinkConfig {
    pub prefix: [u8; 4],
    pub mask: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SinkCounters {
    pub good: u64,
    pub bad: u64,
}

/// `HashMap<[u8; 4], [u8; 4]>`: destination → new destination, the one
/// lookup `xdp_min_nat` makes. The loader sizes it to the mappings.
pub const MIN_NAT_TABLE: &str = "MIN_NAT_TABLE";
/// `Array<MinNatConfig>`, one entry: the MACs `xdp_min_nat` writes.
pub const MIN_NAT_CONFIG: &str = "MIN_NAT_CONFIG";
/// `DevMap`, one entry: where `xdp_min_nat` redirects every frame.
pub const MIN_NAT_PORT: &str = "MIN_NAT_PORT";

/// The next hop's MAC and the egress's own, fixed: the minimal NAT has no
/// FIB lookup, so the rig tells it what a router would have found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct MinNatConfig {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<MinNatConfig>() == 12);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers and byte arrays only, no padding (the
    // bytemuck derives refuse any type with padding).
    unsafe impl aya::Pod for super::GenConfig {}
    unsafe impl aya::Pod for super::SinkConfig {}
    unsafe impl aya::Pod for super::SinkCounters {}
    unsafe impl aya::Pod for super::MinNatConfig {}
}
