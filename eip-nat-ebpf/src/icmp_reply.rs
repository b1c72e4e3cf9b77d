//! The gateway's own ICMP errors (time exceeded, fragmentation needed),
//! built in the datapath from the packet as it arrived, before it is
//! translated, and sent back out of the interface it came in on.
//!
//! Left to the kernel, these errors would quote the packet already
//! translated: the Internet sender would see its EIP replaced by a private
//! address and could not match the error to its socket, and an instance's
//! error would be addressed to its EIP and never reach it: a path-MTU black
//! hole (RFC 2923) wherever the private side's MTU is the smaller. Built
//! here, each side sees the addresses it used (RFC 5508 §4.2's intent).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use eip_nat_common::{
    bytes::copy_bytes,
    csum,
    ipv4::{self, ETH_HLEN, PROTO_ICMP},
    Direction, Verdict,
};

use crate::{
    maps::{ICMP_BUCKET, ICMP_CONFIG},
    packet::ptr_at,
};

/// IPv4 header (no options) and ICMP header of the error.
const NEW_HEADERS: usize = 20 + 8;
/// The quote: the offending packet's IPv4 header (up to 60 bytes with
/// options) and the first 8 bytes of its payload (RFC 792), which hold the
/// ports and, for TCP, the sequence number the sender checks.
const QUOTE_MAX: usize = 60 + 8;
/// RFC 1812 §4.3.2.5: errors go with precedence "internetwork control".
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// Sends the sender of the packet in `ctx` ICMP `kind`/`code` (with
/// `mtu` for "fragmentation needed") and returns its verdict; or `None`
/// when no error may or can be sent (the caller then hands the packet to
/// the kernel as before): an ICMP error about an ICMP error, a later
/// fragment, or a non-unicast source (RFC 1812 §4.3.2.7), or no source
/// address configured for this side.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    direction: Direction,
    kind: u8,
    code: u8,
    mtu: u16,
) -> Option<Verdict> {
    let cfg = ICMP_CONFIG.get(0)?;
    let from = match direction {
        Direction::Inbound => cfg.public_addr,
        _ => cfg.private_addr,
    };
    if from == [0; 4] {
        return None;
    }
    let ip = ptr_at::<[u8; 20]>(ctx, ETH_HLEN)?;
    // SAFETY: ptr_at checked the 20 bytes are inside the packet.
    let head = unsafe { *ip };
    let hlen = ipv4::header_len(head[0]);
    let tot_len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let to = [head[12], head[13], head[14], head[15]];
    if !ipv4::is_first_fragment([head[6], head[7]]) || !unicast(to) {
        return None;
    }
    if head[9] == PROTO_ICMP {
        let t = ptr_at::<u8>(ctx, ETH_HLEN + hlen)?;
        // SAFETY: ptr_at checked the byte.
        if matches!(unsafe { *t }, 3 | 4 | 5 | 11 | 12) {
            return None;
        }
    }
    if !allowed(cfg.interval_ns, cfg.burst_ns) {
        return Some(Verdict::DropIcmpRateLimited);
    }
    let quote = hlen + tot_len.saturating_sub(hlen).min(8);
    let eth = ptr_at::<[u8; 12]>(ctx, 0)?;
    // SAFETY: ptr_at checked the 12 bytes.
    let macs = unsafe { *eth };

    Some(build(ctx, (macs, from, to), quote, (kind, code, mtu)))
}

/// Reshapes the frame into the error. Once the packet's bounds moved,
/// every earlier packet pointer is void (the verifier says so), so every
/// way out of here is a verdict of its own.
#[inline(always)]
fn build(
    ctx: &XdpContext,
    (macs, from, to): ([u8; 12], [u8; 4], [u8; 4]),
    quote: usize,
    (kind, code, mtu): (u8, u8, u16),
) -> Verdict {
    // Keep the Ethernet header and the quote, then make room in front for
    // the new IPv4 and ICMP headers; the old Ethernet header ends up where
    // they go and is written over.
    let keep = (ETH_HLEN + quote) as i32;
    let len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: both helpers only move the packet's bounds; every pointer
    // below is taken afresh from the context and checked.
    unsafe {
        if keep < len && bpf_xdp_adjust_tail(ctx.ctx, keep - len) != 0 {
            return Verdict::DropIcmpNotBuilt;
        }
        if bpf_xdp_adjust_head(ctx.ctx, -(NEW_HEADERS as i32)) != 0 {
            return Verdict::DropIcmpNotBuilt;
        }
    }
    // Back to where it came from, from the MAC it was sent to.
    let mut out = [0u8; ETH_HLEN + NEW_HEADERS];
    let mut i = 0;
    while i < 6 {
        out[i] = macs[6 + i];
        out[6 + i] = macs[i];
        i += 1;
    }
    out[12] = 0x08;
    let total = (NEW_HEADERS + quote) as u16;
    out[14] = 0x45;
    out[15] = TOS_INTERNETWORK_CONTROL;
    [out[16], out[17]] = total.to_be_bytes();
    out[22] = 64;
    out[23] = PROTO_ICMP;
    [out[26], out[27], out[28], out[29]] = from;
    [out[30], out[31], out[32], out[33]] = to;
    let mut sum = 0u32;
    let mut i = ETH_HLEN;
    while i < ETH_HLEN + 20 {
        sum += u16::from_be_bytes([out[i], out[i + 1]]) as u32;
        i += 2;
    }
    [out[24], out[25]] = (!csum::fold(sum)).to_be_bytes();
    out[34] = kind;
    out[35] = code;
    [out[40], out[41]] = mtu.to_be_bytes();
    let mut sum = kind as u32 * 256 + code as u32 + mtu as u32;
    // The quote, word by word, each bounds-checked (its length varies
    // with the IPv4 options).
    let at = ETH_HLEN + NEW_HEADERS;
    let mut i = 0;
    while i < QUOTE_MAX {
        if i < quote {
            let Some(w) = ptr_at::<[u8; 2]>(ctx, at + i) else {
                return Verdict::DropIcmpNotBuilt;
            };
            // SAFETY: ptr_at checked both bytes.
            sum += u16::from_be_bytes(unsafe { *w }) as u32;
        }
        i += 2;
    }
    [out[36], out[37]] = (!csum::fold(sum)).to_be_bytes();
    let Some(hdr) = ptr_at::<[u8; ETH_HLEN + NEW_HEADERS]>(ctx, 0) else {
        return Verdict::DropIcmpNotBuilt;
    };
    copy_bytes(hdr, &out);
    match kind {
        11 => Verdict::IcmpTimeExceededSent,
        _ => Verdict::IcmpFragNeededSent,
    }
}
/// Not 0.0.0.0, not multicast or reserved (224/3), not broadcast.
#[inline(always)]
fn unicast(a: [u8; 4]) -> bool {
    a != [0; 4] && a[0] < 224
}

/// A token bucket per CPU: one error per `interval_ns`, up to `cap`
/// nanoseconds of credit saved.
#[inline(always)]
fn allowed(interval_ns: u64, cap: u64) -> bool {
    let Some(b) = ICMP_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot, touched only by this CPU.
    unsafe {
        let now = bpf_ktime_get_ns();
        let credit = ((*b).credit_ns + now.saturating_sub((*b).last_ns)).min(cap);
        (*b).last_ns = now;
        if credit < interval_ns {
            (*b).credit_ns = credit;
            return false;
        }
        (*b).credit_ns = credit - interval_ns;
        true
    }
}
