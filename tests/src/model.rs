//! A reference model of the datapath's translation, written from the
//! behaviour docs/behaviour.md specifies and sharing only the types (verdicts,
//! address entries) with the kernel program: none of its code, not even the
//! checksum helpers. Differential tests feed the same packets to both.
//!
//! It models the slow-path configuration (no FIB lookup): the verdict, the
//! output frame, and the counters.

use std::{collections::HashMap, net::Ipv4Addr};

use eip_nat_common::{
    maps::{ADDR_DETACHED, ADDR_PRIVATE_DISABLED},
    AddrEntry, Direction, Verdict,
};

/// Why packets to or from an address are dropped whatever else it is: a
/// cut-through ENI's replaced private IP, a detached ENI's address.
fn blocked(e: &AddrEntry) -> Option<Verdict> {
    if e.flags & ADDR_PRIVATE_DISABLED != 0 {
        Some(Verdict::DropPrivateDisabled)
    } else if e.flags & ADDR_DETACHED != 0 {
        Some(Verdict::DropEniDetached)
    } else {
        None
    }
}

/// One's-complement arithmetic, again, on its own (RFC 1071, RFC 1624 eqn 3).
mod ones {
    fn fold(mut s: u64) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// Checksum after the covered 16-bit words `old` became `new`.
    pub fn update(check: u16, old: &[u16], new: &[u16]) -> u16 {
        let mut s = (!check) as u64;
        for w in old {
            s += (!*w) as u64;
        }
        for w in new {
            s += *w as u64;
        }
        !fold(s)
    }

    pub fn words(b: [u8; 4]) -> [u16; 2] {
        [
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ]
    }
}

/// What the model says about one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub frame: Vec<u8>,
    /// (slot, inbound?, IPv4 bytes) per association counter touched.
    pub eip_counts: Vec<(u32, bool, u16)>,
}

/// The tables, as the agent writes them.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub addresses: HashMap<Ipv4Addr, AddrEntry>,
    /// What the public side reaches besides the EIPs: (network, length).
    pub public_accept: Vec<(Ipv4Addr, u8)>,
}

impl Tables {
    fn public_accepts(&self, addr: [u8; 4]) -> bool {
        let a = u32::from_be_bytes(addr);
        self.public_accept.iter().any(|(net, len)| {
            let mask = u32::MAX.checked_shl(32 - *len as u32).unwrap_or(0);
            a & mask == u32::from(*net) & mask
        })
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn addr_at(b: &[u8], at: usize) -> [u8; 4] {
    b[at..at + 4].try_into().unwrap()
}

/// Rewrites the address at `at` (in the outer or quoted IPv4 header whose
/// checksum is at `ip_check_at`), patches that checksum and, when given,
/// the TCP/UDP checksum at `l4_at`. Returns (old IPv4 checksum, new, old
/// L4 checksum, new) for a caller whose own checksum covers them.
fn rewrite(
    f: &mut [u8],
    at: usize,
    new: [u8; 4],
    ip_check_at: usize,
    l4_at: Option<(usize, bool)>,
) -> (u16, u16, Option<(u16, u16)>) {
    let old = addr_at(f, at);
    if old == new {
        let check = l4_at.map(|(l4_at, _)| (be16(f, l4_at), be16(f, l4_at)));
        return (be16(f, ip_check_at), be16(f, ip_check_at), check);
    }
    f[at..at + 4].copy_from_slice(&new);
    let (ow, nw) = (ones::words(old), ones::words(new));
    let ip_before = be16(f, ip_check_at);
    let ip_after = ones::update(ip_before, &ow, &nw);
    put16(f, ip_check_at, ip_after);
    let l4 = l4_at.map(|(l4_at, udp)| {
        let before = be16(f, l4_at);
        let after = if udp && before == 0 {
            0 // RFC 768: no checksum stays none
        } else {
            match ones::update(before, &ow, &nw) {
                0 if udp => 0xffff,
                c => c,
            }
        };
        put16(f, l4_at, after);
        (before, after)
    });
    (ip_before, ip_after, l4)
}

/// The checksum field of TCP (16) or UDP (6), if `proto` has one that
/// covers the pseudo-header.
fn l4_offset(proto: u8) -> Option<usize> {
    match proto {
        6 => Some(16),
        17 => Some(6),
        _ => None,
    }
}

fn first_fragment(f: &[u8], ip: usize) -> bool {
    be16(f, ip + 6) & 0x1fff == 0
}

pub fn run(tables: &Tables, direction: Direction, input: &[u8]) -> Outcome {
    let mut f = input.to_vec();
    let mut counts = Vec::new();
    let verdict = translate(tables, direction, &mut f, &mut counts);
    if verdict.is_drop() || !verdict.is_translated() {
        // Everything that does not translate leaves the frame as it came.
        assert_eq!(f, input, "model bug: changed a frame it did not translate");
    }
    Outcome {
        verdict,
        frame: f,
        eip_counts: counts,
    }
}

fn translate(
    tables: &Tables,
    direction: Direction,
    f: &mut Vec<u8>,
    counts: &mut Vec<(u32, bool, u16)>,
) -> Verdict {
    if direction == Direction::Other {
        return Verdict::PassUnknownInterface;
    }
    if f.len() < 14 {
        return Verdict::DropEthernetTruncated;
    }
    if f[12..14] != [0x08, 0x00] {
        return Verdict::PassNotIpv4;
    }
    if f.len() < 34 {
        return Verdict::DropIpv4Truncated;
    }
    let ip = 14;
    let hlen = ((f[ip] & 0x0f) as usize) * 4;
    let tot = be16(f, ip + 2) as usize;
    if f[ip] >> 4 != 4 || hlen < 20 || tot < hlen {
        return Verdict::DropIpv4BadHeader;
    }
    if 14 + tot > f.len() {
        return Verdict::DropIpv4Truncated;
    }
    let (src, dst) = (addr_at(f, ip + 12), addr_at(f, ip + 16));
    let look = |a: [u8; 4]| {
        tables
            .addresses
            .get(&Ipv4Addr::from(a))
            .filter(|e| e.flags != 0)
    };

    // Which addresses change: source (outbound private IP), destination (an
    // EIP, either side); spoofed sources dropped.
    // A passthrough EIP (cut-through, multi-EIP) "changes" to itself: it is
    // counted, and nothing in the packet moves.
    let mut new_src = None;
    if let Some(s) = look(src) {
        if direction == Direction::Outbound && s.is_private() {
            if let Some(v) = blocked(s) {
                return v;
            }
            new_src = Some((s.eip, s.private_slot));
        } else if s.is_eip() {
            return Verdict::DropSpoofedEip;
        } else if direction == Direction::Inbound {
            return Verdict::DropSpoofedPrivate;
        } else if let Some(v) = blocked(s) {
            return v;
        }
    }
    let d = look(dst);
    // A NAT private IP as destination is nobody's business here; an EIP or
    // a replaced private IP is.
    if let Some(v) = d
        .filter(|d| d.is_eip() || !d.is_private())
        .and_then(blocked)
    {
        return v;
    }
    let new_dst = d.filter(|d| d.is_eip()).map(|d| (d.private_ip, d.eip_slot));
    // The Internet reaches an EIP, or else only what is listed, and never
    // an ENI's private IP.
    if direction == Direction::Inbound && new_dst.is_none() {
        if d.is_some() {
            return Verdict::DropPublicToPrivateIp;
        }
        if !tables.public_accepts(dst) {
            return Verdict::DropPublicUnlisted;
        }
    }
    if new_src.is_none() && new_dst.is_none() {
        return Verdict::PassNoMapping;
    }

    let proto = f[ip + 9];
    let first = first_fragment(f, ip);
    let l4 = ip + hlen;
    let mut l4_check = None;
    if first {
        if let Some(off) = l4_offset(proto) {
            if hlen + off + 2 > tot {
                return Verdict::DropL4Truncated;
            }
            l4_check = Some((l4 + off, proto == 17));
        }
    }
    // ICMP errors: find and check the quote before changing anything.
    let mut quote = None;
    if proto == 1 && first {
        if hlen + 4 > tot {
            return Verdict::DropIcmpErrorTruncated;
        }
        if matches!(f[l4], 3 | 11 | 12) {
            let q = l4 + 8;
            if f.len() < q + 20 {
                return Verdict::DropIcmpErrorTruncated;
            }
            let qhlen = ((f[q] & 0x0f) as usize) * 4;
            if f[q] >> 4 != 4 || qhlen < 20 || hlen + 8 + qhlen + 8 > tot {
                return Verdict::DropIcmpErrorTruncated;
            }
            if !first_fragment(f, q) {
                return Verdict::DropIcmpErrorInnerFragment;
            }
            let q_l4 = l4_offset(f[q + 9])
                .map(|off| (hlen + 8 + qhlen + off, f[q + 9] == 17))
                .filter(|(field, _)| field + 2 <= tot)
                .map(|(field, udp)| (14 + field, udp));
            quote = Some((q, q_l4));
        }
    }

    let tot16 = tot as u16;
    if let Some((a, slot)) = new_src {
        rewrite(f, ip + 12, a, ip + 10, l4_check);
        counts.push((slot, false, tot16));
    }
    if let Some((a, slot)) = new_dst {
        rewrite(f, ip + 16, a, ip + 10, l4_check);
        counts.push((slot, true, tot16));
    }
    if let Some((q, q_l4)) = quote {
        // The quote travelled the other way: an error for an EIP quotes a
        // packet from it; an error from an instance quotes one to it.
        let fix = |f: &mut Vec<u8>, at: usize, new: [u8; 4]| {
            let old = addr_at(f, at);
            let (ipb, ipa, l4c) = rewrite(f, at, new, q + 10, q_l4);
            let icmp_at = l4 + 2;
            let mut c = ones::update(be16(f, icmp_at), &ones::words(old), &ones::words(new));
            c = ones::update(c, &[ipb], &[ipa]);
            if let Some((b, a)) = l4c {
                c = ones::update(c, &[b], &[a]);
            }
            put16(f, icmp_at, c);
        };
        if let Some((a, _)) = new_dst.filter(|(a, _)| *a != dst) {
            if addr_at(f, q + 12) == dst {
                fix(f, q + 12, a);
            }
        }
        if let Some((a, _)) = new_src.filter(|(a, _)| *a != src) {
            if addr_at(f, q + 16) == src {
                fix(f, q + 16, a);
            }
        }
    }
    Verdict::Translated
}
