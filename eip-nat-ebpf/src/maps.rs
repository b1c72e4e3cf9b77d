//! The maps, named by the constants in `eip_nat_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, DevMap, DevMapHash, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use eip_nat_common::maps::{
    filter_bit, ArpConfig, IcmpBucket, IcmpConfig, TraceConfig, FILTER_WORDS, FLAG_ARP_ACTIVE,
    FLAG_STANDBY, FLAG_TRACE, TRACE_RING_BYTES,
};
use eip_nat_common::{
    maps::{
        Ipv4Key, NextHop, DEFAULT_MAX_ASSOCIATIONS, EXTRA_NEXTHOPS, EXTRA_ROUTES, MAX_TX_PORTS,
        PUBLIC_ACCEPT_MAX, VERDICT_COUNTERS_LEN,
    },
    AddrEntry, Config, Direction, EipCounters, VerdictCounter,
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

#[map(name = "TX_SLOTS")]
pub static TX_SLOTS: DevMap = DevMap::with_max_entries(MAX_TX_PORTS, 0);

// Sizes below are defaults; the agent resizes the association maps at load.
#[map(name = "ADDRESSES")]
pub static ADDRESSES: HashMap<Ipv4Key, AddrEntry> =
    HashMap::with_max_entries(2 * DEFAULT_MAX_ASSOCIATIONS, 0);

#[map(name = "VERDICT_COUNTERS")]
pub static VERDICT_COUNTERS: PerCpuArray<VerdictCounter> =
    PerCpuArray::with_max_entries(VERDICT_COUNTERS_LEN, 0);

#[map(name = "EIP_COUNTERS")]
pub static EIP_COUNTERS: PerCpuArray<EipCounters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_ASSOCIATIONS, 0);

#[map(name = "ADDRESS_FILTER")]
pub static ADDRESS_FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, 0);

/// False when no address of ours is in `addr`'s /16: no need to look.
#[inline(always)]
pub fn may_be_ours(addr: Ipv4Key) -> bool {
    let (word, bit) = filter_bit(addr);
    ADDRESS_FILTER.get(word).is_none_or(|w| w & bit != 0)
}

#[map(name = "ICMP_CONFIG")]
pub static ICMP_CONFIG: Array<IcmpConfig> = Array::with_max_entries(1, 0);

#[map(name = "ICMP_BUCKET")]
pub static ICMP_BUCKET: PerCpuArray<IcmpBucket> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "ARP_CONFIG")]
pub static ARP_CONFIG: Array<ArpConfig> = Array::with_max_entries(1, 0);

#[map(name = "NEXTHOPS")]
pub static NEXTHOPS: Array<NextHop> =
    Array::with_max_entries(DEFAULT_MAX_ASSOCIATIONS + EXTRA_NEXTHOPS, 0);

#[map(name = "ROUTES")]
pub static ROUTES: LpmTrie<Ipv4Key, u32> =
    LpmTrie::with_max_entries(2 * DEFAULT_MAX_ASSOCIATIONS + EXTRA_ROUTES, 0);

/// The next hop the agent programmed for `addr`, a destination that is
/// not one of ours, from the mirror of the routing table; 0 if none.
#[inline(always)]
pub fn route_nexthop(addr: Ipv4Key) -> u32 {
    ROUTES.get(Key::new(32, addr)).copied().unwrap_or(0)
}

#[map(name = "PUBLIC_ACCEPT")]
pub static PUBLIC_ACCEPT: LpmTrie<Ipv4Key, u32> = LpmTrie::with_max_entries(PUBLIC_ACCEPT_MAX, 0);

/// True if the public side may reach `addr` though it is no EIP: one of
/// the gateway's addresses, link-local control, or a prefix the operator
/// routes through.
#[inline(always)]
pub fn public_accepts(addr: Ipv4Key) -> bool {
    PUBLIC_ACCEPT.get(Key::new(32, addr)).is_some()
}

#[map(name = "TRACE_CONFIG")]
pub static TRACE_CONFIG: Array<TraceConfig> = Array::with_max_entries(1, 0);

#[map(name = "TRACE_EVENTS")]
pub static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

/// The interface's role, from the ifindex the packet arrived on.
pub struct Role {
    pub direction: Direction,
    pub fast_path: bool,
    /// Someone traces: see `trace`.
    pub trace: bool,
    /// Active/standby bits of the flags on the public side, else 0: see
    /// `arp`.
    pub l2: u32,
}

#[inline(always)]
pub fn role(ctx: &XdpContext) -> Role {
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(c) = CONFIG.get(0) else {
        return Role {
            direction: Direction::Other,
            fast_path: false,
            trace: false,
            l2: 0,
        };
    };
    let direction = if ifindex != 0 && ifindex == c.public_ifindex {
        Direction::Inbound
    } else if ifindex != 0 && ifindex == c.private_ifindex {
        Direction::Outbound
    } else {
        Direction::Other
    };
    Role {
        direction,
        fast_path: direction != Direction::Other && c.fast_path(),
        trace: c.flags & FLAG_TRACE != 0,
        l2: if direction == Direction::Inbound {
            c.flags & (FLAG_ARP_ACTIVE | FLAG_STANDBY)
        } else {
            0
        },
    }
}
