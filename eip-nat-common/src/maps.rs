//! Map names and the layout of their keys and values.
//!
//! Addresses are stored as `[u8; 4]` in network byte order, exactly as they sit
//! in the IPv4 header, so the datapath never byte-swaps to look one up.

/// `Array<Config>` with one entry: which interface is which, and options.
pub const CONFIG: &str = "CONFIG";
/// `DevMapHash` keyed by ifindex: the interfaces the fast path may redirect
/// to. An egress missing here falls back to the kernel.
pub const TX_PORTS: &str = "TX_PORTS";
/// `HashMap<[u8; 4], AddrEntry>`: every EIP and every associated private
/// IP, with what it is. One map, so that each address a packet carries is
/// one lookup: the destination (translate) and the source (translate, or
/// refuse as spoofed), in both directions.
pub const ADDRESSES: &str = "ADDRESSES";
/// `Array<u64>` of [`FILTER_WORDS`] words: one bit per /16, set when the
/// /16 may hold an address of `ADDRESSES`. Most addresses a packet carries
/// (the Internet's) are in no such /16: the program skips their hash
/// lookup for an array read and a bit test. A set bit only costs the
/// lookup, so the agent sets bits before it inserts entries and clears
/// them only when it rebuilds the filter whole.
pub const ADDRESS_FILTER: &str = "ADDRESS_FILTER";
/// 65,536 /16s, 64 to a word.
pub const FILTER_WORDS: u32 = 1024;

/// Word and bit of `addr`'s /16 in [`ADDRESS_FILTER`].
pub const fn filter_bit(addr: Ipv4Key) -> (u32, u64) {
    let slash16 = (addr[0] as u32) << 8 | addr[1] as u32;
    (slash16 >> 6, 1 << (slash16 & 63))
}

/// `PerCpuArray<VerdictCounter>` indexed by [`verdict_index`].
pub const VERDICT_COUNTERS: &str = "VERDICT_COUNTERS";
/// `PerCpuArray<EipCounters>` indexed by an association's slot.
pub const EIP_COUNTERS: &str = "EIP_COUNTERS";
/// `Array<NextHop>` indexed by a next-hop id: where a translated packet
/// goes (egress interface, MACs, MTU), resolved by the agent from the
/// kernel's routes, neighbours and links (docs/datapath.md, "Next hops").
/// Id 0 is never used: it means "not programmed, ask the FIB".
pub const NEXTHOPS: &str = "NEXTHOPS";
/// `LpmTrie<[u8; 4], u32>`: the gateway's main routing table (and its
/// local addresses), each prefix with the next-hop id of its route, for
/// destinations that are not ours (the Internet side of outbound packets).
/// An id of 0 sends the packet to `bpf_fib_lookup`.
pub const ROUTES: &str = "ROUTES";

/// `LpmTrie<[u8; 4], u32>`: what the public side may reach besides the
/// EIPs (docs/behaviour.md, "What the public side reaches"): the gateway's
/// own addresses, link-local control traffic and the prefixes the
/// operator lists as routed through unchanged. The value says which
/// ([`ACCEPT_LOCAL`], [`ACCEPT_LINK_CONTROL`], [`ACCEPT_ROUTED`]). A packet
/// from the Internet to anything else is dropped before the kernel sees it.
pub const PUBLIC_ACCEPT: &str = "PUBLIC_ACCEPT";
/// Capacity of [`PUBLIC_ACCEPT`]: the host's local and broadcast addresses
/// and the operator's prefixes.
pub const PUBLIC_ACCEPT_MAX: u32 = 4096;
/// A local or broadcast address of the gateway (its local table).
pub const ACCEPT_LOCAL: u32 = 1;
/// A prefix of the operator's `routed_prefixes`.
pub const ACCEPT_ROUTED: u32 = 2;
/// Limited broadcast and 224.0.0.0/24, the link-local control block that
/// routers never forward (RFC 919, RFC 5771 §4): ARP's IPv4 companions,
/// VRRP, OSPF hellos on the uplink.
pub const ACCEPT_LINK_CONTROL: u32 = 3;

/// Default capacity of the association tables; the agent can change it at
/// load time (`--max-associations`). The per-EIP counters are a per-CPU
/// array of this size, so memory grows with `capacity × CPUs × 32 bytes`.
pub const DEFAULT_MAX_ASSOCIATIONS: u32 = 65_536;

/// Address key of the translation maps: IPv4 address, network byte order.
pub type Ipv4Key = [u8; 4];

/// Which side of the gateway a packet arrived on. The role comes from the
/// ingress interface, never from the packet, so a packet cannot choose it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Arrived on the public interface: destination EIP → private IP.
    Inbound = 0,
    /// Arrived on the private interface: source private IP → EIP.
    Outbound = 1,
    /// Arrived on an interface the agent did not configure.
    Other = 2,
}

impl Direction {
    pub const COUNT: usize = 3;
    pub const ALL: [Direction; Self::COUNT] = [Self::Inbound, Self::Outbound, Self::Other];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Other => "other",
        }
    }
}

/// Counter slots per direction in [`VERDICT_COUNTERS`]: more than there are
/// verdicts, so that a newer program with new verdicts still fits the
/// pinned map an older agent created.
pub const VERDICT_SLOTS: u32 = 64;
const _: () = assert!(crate::Verdict::COUNT as u32 <= VERDICT_SLOTS);

/// Index into [`VERDICT_COUNTERS`].
pub const fn verdict_index(direction: Direction, verdict: crate::Verdict) -> u32 {
    direction as u32 * VERDICT_SLOTS + verdict as u32
}

/// Number of entries of [`VERDICT_COUNTERS`].
pub const VERDICT_COUNTERS_LEN: u32 = Direction::COUNT as u32 * VERDICT_SLOTS;

/// `DevMap` of [`MAX_TX_PORTS`] slots: the same interfaces as [`TX_PORTS`],
/// by a small slot number instead of their ifindex. A programmed next hop
/// names its slot, so its redirect is an array index, not the hash lookup
/// a `DevMapHash` costs per packet.
pub const TX_SLOTS: &str = "TX_SLOTS";

/// `Array<IcmpConfig>`, one entry: the addresses the datapath's own ICMP
/// errors come from, and their rate limit. Not pinned: the agent sets it
/// each time it loads the program.
pub const ICMP_CONFIG: &str = "ICMP_CONFIG";
/// `PerCpuArray<IcmpBucket>`, one entry: the rate limiter's state.
pub const ICMP_BUCKET: &str = "ICMP_BUCKET";

/// The only entry of [`ICMP_CONFIG`]. An address of 0 turns the datapath's
/// own errors off on that side: the packet goes to the kernel as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct IcmpConfig {
    /// Source of errors sent back out of the public / private interface:
    /// the gateway's own address there.
    pub public_addr: Ipv4Key,
    pub private_addr: Ipv4Key,
    /// One error per this many nanoseconds, per CPU, with bursts of up to
    /// `burst_ns / interval_ns` errors (a token bucket, as the kernel's
    /// icmp_global). Both in nanoseconds, so the program never multiplies.
    pub interval_ns: u64,
    pub burst_ns: u64,
}
const _: () = assert!(core::mem::size_of::<IcmpConfig>() == 24);

/// Token bucket state, in nanoseconds of credit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct IcmpBucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}

/// Next hops besides one per association (routes towards the Internet).
pub const EXTRA_NEXTHOPS: u32 = 4096;

/// Routes besides two per association (the agent's host routes).
pub const EXTRA_ROUTES: u32 = 65_536;

/// [`NextHop::flags`]: the entry is resolved (link up, neighbour known) and
/// may be used without a FIB lookup.
pub const NEXTHOP_VALID: u16 = 1;

/// Value of [`NEXTHOPS`]: what forwarding to one neighbour takes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NextHop {
    /// Egress interface; must be in [`TX_PORTS`].
    pub ifindex: u32,
    /// Largest IPv4 datagram the egress takes (link MTU, or the route's
    /// `mtu` metric when smaller).
    pub mtu: u16,
    /// `NEXTHOP_*` bits; the high byte is the egress's slot in
    /// [`TX_SLOTS`].
    pub flags: u16,
    /// Destination MAC (the neighbour's) and source MAC (the egress's).
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The neighbour's IPv4 address. The program never reads it; it lets a
    /// restarted agent recognise the ids the running program uses.
    pub neighbour: Ipv4Key,
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 24);

impl NextHop {
    pub const fn is_valid(&self) -> bool {
        self.flags & NEXTHOP_VALID != 0
    }

    /// The egress's slot in [`TX_SLOTS`], kept in the flags' high byte.
    pub const fn slot(&self) -> u32 {
        (self.flags >> 8) as u32
    }

    pub const fn flags_for(valid: bool, slot: u8) -> u16 {
        (slot as u16) << 8 | if valid { NEXTHOP_VALID } else { 0 }
    }
}

/// Maximum entries of [`TX_PORTS`].
pub const MAX_TX_PORTS: u32 = 64;

/// [`Config::flags`]: after translation, forward with `bpf_fib_lookup` and
/// `XDP_REDIRECT` instead of handing the packet to the kernel.
pub const FLAG_FAST_PATH: u32 = 1;
/// [`Config::flags`]: someone traces (`eip-nat trace`): the program reads
/// [`TRACE_CONFIG`] and copies the packets it selects into
/// [`TRACE_EVENTS`]. Off, tracing costs one bit test of a value the program
/// has already read.
pub const FLAG_TRACE: u32 = 2;

/// [`Config::flags`]: active/standby on a shared L2 (docs/fleet.md), this
/// gateway is the active one: on the public interface it answers ARP
/// requests for the EIPs (RFC 826) while [`ArpConfig::active_until_ns`]
/// lies ahead.
pub const FLAG_ARP_ACTIVE: u32 = 4;
/// [`Config::flags`]: active/standby on a shared L2, this gateway is a
/// standby: it answers no ARP, and an IPv4 packet to an EIP arriving on
/// the public interface is dropped (`drop_standby`), so a frame a switch
/// floods to every port reaches the instance once, through the active.
pub const FLAG_STANDBY: u32 = 8;

/// `Array<ArpConfig>`, one entry: what the ARP responder answers with.
/// Not pinned: the agent sets it each time it loads the program, and a
/// new program starts with it zeroed (answering nothing).
pub const ARP_CONFIG: &str = "ARP_CONFIG";

/// The only entry of [`ARP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ArpConfig {
    /// The public interface's MAC: the sender of every reply.
    pub mac: [u8; 6],
    pub reserved: u16,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) after which no reply is sent:
    /// the agent moves it on with each renewal of its etcd lease, so a
    /// datapath whose agent died or lost etcd stops answering by itself
    /// when its lease runs out, before another gateway can take over.
    pub active_until_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ArpConfig>() == 16);

/// `Array<TraceConfig>` with one entry: what to trace, read only while
/// [`FLAG_TRACE`] is set.
pub const TRACE_CONFIG: &str = "TRACE_CONFIG";
/// `RingBuf` of [`TraceEvent`]s.
pub const TRACE_EVENTS: &str = "TRACE_EVENTS";
/// Size of [`TRACE_EVENTS`]: 4,096 events of 168 bytes.
pub const TRACE_RING_BYTES: u32 = 1 << 20;
/// Bytes of each traced frame copied into its event: every header the
/// datapath reads (Ethernet, IPv4 with options, an ICMP error's quote).
pub const TRACE_CAPTURE: usize = 128;

/// What to trace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TraceConfig {
    /// Bit `code` set: trace packets of that verdict.
    pub verdicts: u64,
    /// Bit `direction` set: trace packets arriving on that side.
    pub directions: u32,
    /// Translated packets (verdicts that forward) are sampled, one in
    /// `sample` on average; 0 traces none of them, 1 all.
    pub sample: u32,
    /// Only packets with this address as source or destination, before or
    /// after translation; all zeroes for any.
    pub addr: Ipv4Key,
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<TraceConfig>() == 24);

/// One traced packet: what the datapath decided and the frame's first
/// [`TRACE_CAPTURE`] bytes as it left the program (translated, or as it
/// came for a drop).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub direction: u32,
    pub verdict: u32,
    /// The frame's length, and how much of it is in `data`.
    pub frame_len: u32,
    pub captured: u32,
    /// The IPv4 source and destination as the packet arrived (zeroes for
    /// a frame that is not IPv4).
    pub src: Ipv4Key,
    pub dst: Ipv4Key,
    pub reserved: u32,
    pub data: [u8; TRACE_CAPTURE],
}
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 168);

/// The only entry of [`CONFIG`]. An ifindex of 0 means "not configured".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Config {
    pub public_ifindex: u32,
    pub private_ifindex: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Explicit padding, always 0.
    pub reserved: u32,
    /// The control plane's generation that the maps reflect. The program
    /// never reads it; it lives here so that it is pinned with the tables
    /// it describes and survives the agent.
    pub generation: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 24);

impl Config {
    pub const fn fast_path(&self) -> bool {
        self.flags & FLAG_FAST_PATH != 0
    }
}

/// [`AddrEntry::flags`]: the address is an associated EIP.
pub const ADDR_IS_EIP: u32 = 1;
/// [`AddrEntry::flags`]: the address is a private IP that carries an EIP.
/// A passthrough EIP (cut-through, multi-EIP) has both flags and points at
/// itself: it is "translated" to itself, counted and never rewritten.
pub const ADDR_IS_PRIVATE: u32 = 2;
/// [`AddrEntry::flags`]: the address belongs to a detached ENI; packets to
/// or from it are dropped (`drop_eni_detached`).
pub const ADDR_DETACHED: u32 = 4;
/// [`AddrEntry::flags`]: the primary private IP of a cut-through ENI;
/// packets to or from it are dropped (`drop_private_disabled`).
pub const ADDR_PRIVATE_DISABLED: u32 = 8;

/// Value of [`ADDRESSES`]. The association rules keep an address in one
/// role; both halves exist so that a lookup answers either question.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct AddrEntry {
    /// `ADDR_IS_*` bits saying which halves below are valid.
    pub flags: u32,
    /// As an EIP: the private IP it translates to, and the counter slot.
    pub private_ip: Ipv4Key,
    pub eip_slot: u32,
    /// As a private IP: its EIP, and the counter slot.
    pub eip: Ipv4Key,
    pub private_slot: u32,
    /// As an EIP: the next-hop id ([`NEXTHOPS`]) of the address it is
    /// delivered to; 0 when not programmed. Unused (0) otherwise.
    pub nexthop: u32,
}
const _: () = assert!(core::mem::size_of::<AddrEntry>() == 24);

impl AddrEntry {
    pub const fn is_eip(&self) -> bool {
        self.flags & ADDR_IS_EIP != 0
    }
    pub const fn is_private(&self) -> bool {
        self.flags & ADDR_IS_PRIVATE != 0
    }
    /// Why packets to or from this address are dropped, if they are.
    pub const fn blocked(&self) -> Option<crate::Verdict> {
        if self.flags & ADDR_PRIVATE_DISABLED != 0 {
            Some(crate::Verdict::DropPrivateDisabled)
        } else if self.flags & ADDR_DETACHED != 0 {
            Some(crate::Verdict::DropEniDetached)
        } else {
            None
        }
    }
}

/// Packets and bytes (whole frames) per (direction, verdict).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct VerdictCounter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<VerdictCounter>() == 16);

/// Translated traffic of one association. Bytes are IPv4 bytes (the header's
/// total length), what an operator bills and what a socket test can predict,
/// independent of link-layer framing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct EipCounters {
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<EipCounters>() == 32);

impl core::ops::AddAssign for EipCounters {
    fn add_assign(&mut self, o: Self) {
        self.in_packets += o.in_packets;
        self.in_bytes += o.in_bytes;
        self.out_packets += o.out_packets;
        self.out_bytes += o.out_bytes;
    }
}

impl core::ops::AddAssign for VerdictCounter {
    fn add_assign(&mut self, o: Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are #[repr(C)], made only of integers and byte arrays,
    // and have no padding: sizes are asserted above and bytemuck's Pod
    // derive refuses any type with padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::AddrEntry {}
    unsafe impl aya::Pod for super::VerdictCounter {}
    unsafe impl aya::Pod for super::EipCounters {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::IcmpConfig {}
    unsafe impl aya::Pod for super::IcmpBucket {}
    unsafe impl aya::Pod for super::TraceConfig {}
    unsafe impl aya::Pod for super::TraceEvent {}
    unsafe impl aya::Pod for super::ArpConfig {}
}
