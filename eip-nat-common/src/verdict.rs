//! Verdicts: what the datapath decided for a packet, and why.
//!
//! Codes are stable: they index counters and are shown by name in `eip-nat
//! stats`. A retired code is never reused; add new ones at the end.

/// XDP action codes (`enum xdp_action`, include/uapi/linux/bpf.h).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Address rewritten; passed to the kernel to route.
    Translated = 0,
    /// IPv4, but the address is in no table: passed untouched.
    PassNoMapping = 1,
    /// Not IPv4 (ARP, IPv6, VLAN-tagged, …): passed untouched.
    PassNotIpv4 = 2,
    /// Ingress interface is neither the public nor the private one.
    PassUnknownInterface = 3,
    /// Shorter than an Ethernet header.
    DropEthernetTruncated = 4,
    /// IPv4 header, or the datagram its total length announces, runs past the
    /// end of the frame.
    DropIpv4Truncated = 5,
    /// Version is not 4, IHL < 5, or total length shorter than the header.
    DropIpv4BadHeader = 6,
    /// A translated TCP/UDP first fragment too short to hold the L4 checksum
    /// (RFC 1858 tiny fragment): its checksum could not be kept valid.
    DropL4Truncated = 7,
    /// Translated and forwarded by the fast path through the next hop the
    /// agent programmed: no FIB lookup, TTL decrement, MACs rewritten,
    /// `XDP_REDIRECT` to the egress interface.
    TranslatedRedirect = 8,
    // Fast-path fallbacks: translated, then passed to the kernel (TTL and
    // MACs untouched), because it must do what XDP cannot.
    /// The next hop has no resolved neighbour entry: the kernel resolves it.
    TranslatedPassNoNeighbour = 9,
    /// Larger than the egress MTU: the kernel fragments it, or sends ICMP
    /// "fragmentation needed" when DF is set (RFC 1191).
    TranslatedPassFragNeeded = 10,
    /// TTL ≤ 1: the kernel sends ICMP "time exceeded" (RFC 1812 §5.3.1).
    TranslatedPassTtlExceeded = 11,
    /// No forwarding route (unreachable, blackhole, prohibit, local,
    /// forwarding disabled): the kernel answers as it would.
    TranslatedPassNotForwarded = 12,
    /// The egress interface is not in `TX_PORTS`.
    TranslatedPassNoTxPort = 13,
    /// Source is one of our EIPs, arriving from the Internet (public side)
    /// or from an instance (private side): spoofed.
    DropSpoofedEip = 14,
    /// Source is an associated private IP, arriving from the Internet.
    DropSpoofedPrivate = 15,
    /// An ICMP message to translate shorter than its 4-byte header, or an
    /// ICMP error whose quoted packet is missing, cut short (less than its
    /// IPv4 header and 8 bytes, RFC 792) or not IPv4.
    DropIcmpErrorTruncated = 16,
    /// An ICMP error quoting a non-first fragment: no ports to match.
    DropIcmpErrorInnerFragment = 17,
    /// To or from the primary private IP of a cut-through ENI: the EIP took
    /// its place, so the private network no longer reaches it.
    DropPrivateDisabled = 18,
    /// To or from an address of a detached ENI: it lives nowhere.
    DropEniDetached = 19,
    /// Translated and forwarded by the fast path after a `bpf_fib_lookup`,
    /// because no next hop was programmed for it or the programmed one is
    /// not usable (neighbour unresolved, link down).
    TranslatedRedirectFib = 20,
    /// TTL ≤ 1: the datapath sent the sender an ICMP time exceeded built
    /// from the packet as it arrived, untranslated, so that it quotes the
    /// addresses the sender used (RFC 1812 §5.3.1, RFC 5508 §4.2).
    IcmpTimeExceededSent = 21,
    /// DF set and larger than the next hop's MTU: the datapath sent the
    /// sender an ICMP "fragmentation needed" with that MTU (RFC 1191),
    /// quoting the untranslated packet.
    IcmpFragNeededSent = 22,
    /// An ICMP error was due (as the two above) but over the rate limit:
    /// the packet, which cannot be forwarded, is dropped.
    DropIcmpRateLimited = 23,
    /// An ICMP error was due, but the frame could not be reshaped into it
    /// (the driver refused to move its bounds): dropped.
    DropIcmpNotBuilt = 24,
    /// From the Internet to the private IP of an ENI (NAT, cut-through or
    /// multi-EIP), not through an EIP: an instance is reached only by its
    /// EIP.
    DropPublicToPrivateIp = 25,
    /// From the Internet to an address that is no EIP, no address of the
    /// gateway's and in no prefix the operator routes through: dropped
    /// before the kernel could route it.
    DropPublicUnlisted = 26,
    /// An ARP request (RFC 826) for an EIP, on the public interface of the
    /// active gateway of an active/standby pair: answered in place with
    /// the interface's MAC and sent back (`XDP_TX`).
    ArpReplySent = 27,
    /// An ARP frame shorter than an Ethernet/IPv4 ARP packet (28 bytes),
    /// seen by the active gateway's responder.
    DropArpTruncated = 28,
    /// To an EIP, on the public interface of a standby gateway: only the
    /// active one delivers it (a frame a switch floods reaches both).
    DropStandby = 29,
}

impl Verdict {
    pub const COUNT: usize = 30;
    pub const ALL: [Verdict; Self::COUNT] = [
        Self::Translated,
        Self::PassNoMapping,
        Self::PassNotIpv4,
        Self::PassUnknownInterface,
        Self::DropEthernetTruncated,
        Self::DropIpv4Truncated,
        Self::DropIpv4BadHeader,
        Self::DropL4Truncated,
        Self::TranslatedRedirect,
        Self::TranslatedPassNoNeighbour,
        Self::TranslatedPassFragNeeded,
        Self::TranslatedPassTtlExceeded,
        Self::TranslatedPassNotForwarded,
        Self::TranslatedPassNoTxPort,
        Self::DropSpoofedEip,
        Self::DropSpoofedPrivate,
        Self::DropIcmpErrorTruncated,
        Self::DropIcmpErrorInnerFragment,
        Self::DropPrivateDisabled,
        Self::DropEniDetached,
        Self::TranslatedRedirectFib,
        Self::IcmpTimeExceededSent,
        Self::IcmpFragNeededSent,
        Self::DropIcmpRateLimited,
        Self::DropIcmpNotBuilt,
        Self::DropPublicToPrivateIp,
        Self::DropPublicUnlisted,
        Self::ArpReplySent,
        Self::DropArpTruncated,
        Self::DropStandby,
    ];

    /// Stable label for metrics and `eip-nat stats`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Translated => "translated",
            Self::PassNoMapping => "pass_no_mapping",
            Self::PassNotIpv4 => "pass_not_ipv4",
            Self::PassUnknownInterface => "pass_unknown_interface",
            Self::DropEthernetTruncated => "drop_ethernet_truncated",
            Self::DropIpv4Truncated => "drop_ipv4_truncated",
            Self::DropIpv4BadHeader => "drop_ipv4_bad_header",
            Self::DropL4Truncated => "drop_l4_truncated",
            Self::TranslatedRedirect => "translated_redirect",
            Self::TranslatedPassNoNeighbour => "translated_pass_no_neighbour",
            Self::TranslatedPassFragNeeded => "translated_pass_frag_needed",
            Self::TranslatedPassTtlExceeded => "translated_pass_ttl_exceeded",
            Self::TranslatedPassNotForwarded => "translated_pass_not_forwarded",
            Self::TranslatedPassNoTxPort => "translated_pass_no_tx_port",
            Self::DropSpoofedEip => "drop_spoofed_eip",
            Self::DropSpoofedPrivate => "drop_spoofed_private",
            Self::DropIcmpErrorTruncated => "drop_icmp_error_truncated",
            Self::DropIcmpErrorInnerFragment => "drop_icmp_error_inner_fragment",
            Self::DropPrivateDisabled => "drop_private_disabled",
            Self::DropEniDetached => "drop_eni_detached",
            Self::TranslatedRedirectFib => "translated_redirect_fib",
            Self::IcmpTimeExceededSent => "icmp_time_exceeded_sent",
            Self::IcmpFragNeededSent => "icmp_frag_needed_sent",
            Self::DropIcmpRateLimited => "drop_icmp_rate_limited",
            Self::DropIcmpNotBuilt => "drop_icmp_not_built",
            Self::DropPublicToPrivateIp => "drop_public_to_private_ip",
            Self::DropPublicUnlisted => "drop_public_unlisted",
            Self::ArpReplySent => "arp_reply_sent",
            Self::DropArpTruncated => "drop_arp_truncated",
            Self::DropStandby => "drop_standby",
        }
    }

    /// The XDP action this verdict takes.
    pub const fn action(self) -> u32 {
        if self.is_drop() {
            XDP_DROP
        } else if matches!(self, Self::TranslatedRedirect | Self::TranslatedRedirectFib) {
            XDP_REDIRECT
        } else if matches!(
            self,
            Self::IcmpTimeExceededSent | Self::IcmpFragNeededSent | Self::ArpReplySent
        ) {
            XDP_TX
        } else {
            XDP_PASS
        }
    }

    /// True when the packet was rewritten (by either path).
    pub const fn is_translated(self) -> bool {
        matches!(
            self,
            Self::Translated
                | Self::TranslatedRedirect
                | Self::TranslatedRedirectFib
                | Self::TranslatedPassNoNeighbour
                | Self::TranslatedPassFragNeeded
                | Self::TranslatedPassTtlExceeded
                | Self::TranslatedPassNotForwarded
                | Self::TranslatedPassNoTxPort
        )
    }

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Self::DropEthernetTruncated
                | Self::DropIpv4Truncated
                | Self::DropIpv4BadHeader
                | Self::DropL4Truncated
                | Self::DropSpoofedEip
                | Self::DropSpoofedPrivate
                | Self::DropIcmpErrorTruncated
                | Self::DropIcmpErrorInnerFragment
                | Self::DropPrivateDisabled
                | Self::DropEniDetached
                | Self::DropIcmpRateLimited
                | Self::DropIcmpNotBuilt
                | Self::DropPublicToPrivateIp
                | Self::DropPublicUnlisted
                | Self::DropArpTruncated
                | Self::DropStandby
        )
    }

    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|v| *v as u32 == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_stable() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{v:?} is out of place in ALL");
            assert_eq!(Verdict::from_code(i as u32), Some(*v));
        }
        assert_eq!(Verdict::from_code(Verdict::COUNT as u32), None);
        // Pinned codes: changing one breaks dashboards and saved stats.
        assert_eq!(Verdict::Translated as u32, 0);
        assert_eq!(Verdict::DropL4Truncated as u32, 7);
        assert_eq!(Verdict::TranslatedPassNoTxPort as u32, 13);
        assert_eq!(Verdict::DropSpoofedPrivate as u32, 15);
    }

    extern crate std;
    use std::string::String;

    /// `DropIpv4Truncated` → `drop_ipv4_truncated`.
    fn snake(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }

    #[test]
    fn variants_are_named_after_their_stable_names() {
        for v in Verdict::ALL {
            assert_eq!(snake(&std::format!("{v:?}")), v.name());
        }
    }

    #[test]
    fn names_are_unique_and_drops_say_so() {
        for a in Verdict::ALL {
            for b in Verdict::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
            assert_eq!(a.is_drop(), a.name().starts_with("drop_"), "{a:?}");
            assert_eq!(a.action() == XDP_DROP, a.is_drop());
            assert_eq!(
                a.is_translated(),
                a.name().starts_with("translated"),
                "{a:?}"
            );
            assert_eq!(
                a.action() == XDP_REDIRECT,
                a.name().starts_with("translated_redirect")
            );
            assert_eq!(a.action() == XDP_TX, a.name().ends_with("_sent"));
        }
    }
}
