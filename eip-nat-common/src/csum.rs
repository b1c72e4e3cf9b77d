//! Internet checksum arithmetic (RFC 1071), all of it, as pure functions.
//!
//! The datapath never recomputes a checksum over a packet: it patches the
//! existing one when it rewrites a 32-bit address, using RFC 1624 eqn. 3,
//! `HC' = ~(~HC + ~m + m')`, which (unlike RFC 1141's eqn. 2) gives the same
//! result as a full recomputation, including the ±0 case.
//!
//! Values are the 16-bit words as they read in network byte order
//! (`u16::from_be_bytes`).

/// Folds a 32-bit accumulator of 16-bit words with end-around carry. Two
/// rounds suffice for any sum of fewer than 65,536 words.
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
const fn word(b: [u8; 4], i: usize) -> u32 {
    u16::from_be_bytes([b[2 * i], b[2 * i + 1]]) as u32
}

/// New checksum after a 32-bit field covered by it changed from `old` to
/// `new` (an IPv4 address in the IPv4 header, or in the TCP/UDP
/// pseudo-header, RFC 793 §3.1 / RFC 768).
#[inline(always)]
pub const fn replace_u32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let sum = (!check) as u32
        + (!word(old, 0) & 0xffff)
        + (!word(old, 1) & 0xffff)
        + word(new, 0)
        + word(new, 1);
    !fold(sum)
}

/// New checksum after one 16-bit word covered by it changed.
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// A router's TTL decrement (RFC 1812 §5.3.1): the IPv4 header checksum
/// after the (TTL, protocol) word goes from `ttl` to `ttl - 1`.
#[inline(always)]
pub const fn decrement_ttl(check: u16, ttl: u8, proto: u8) -> u16 {
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl.wrapping_sub(1), proto]);
    replace_u16(check, old, new)
}

/// [`replace_u32`] with UDP's rule (RFC 768): a checksum of 0 means "not
/// computed" and stays 0; a computed 0 is sent as all ones.
#[inline(always)]
pub const fn udp_replace_u32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace_u32(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// Full checksum of `data` (odd length padded with a zero byte). The
/// datapath does not use it; it is the oracle for the incremental functions.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 header example of RFC 1071's companion literature: a real
    /// header whose checksum is 0xb861.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn full_checksum_of_known_header() {
        let mut h = HEADER;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(&HEADER), 0);
    }

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_is_zero_padded() {
        assert_eq!(checksum(&[0xab]), checksum(&[0xab, 0x00]));
    }

    fn with_addr(h: &[u8; 20], at: usize, addr: [u8; 4]) -> [u8; 20] {
        let mut h = *h;
        h[at..at + 4].copy_from_slice(&addr);
        h
    }

    #[test]
    fn replacing_an_address_matches_recomputation() {
        let new = [203, 0, 113, 7];
        for at in [12, 16] {
            let old: [u8; 4] = HEADER[at..at + 4].try_into().unwrap();
            let patched = replace_u32(0xb861, old, new);
            let mut expect = with_addr(&HEADER, at, new);
            expect[10] = 0;
            expect[11] = 0;
            assert_eq!(patched, checksum(&expect), "field at {at}");
        }
    }

    /// xorshift64*: deterministic, dependency-free randomness for tests.
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn incremental_equals_full_on_random_data() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = 8 + (rng(&mut seed) % 56) as usize;
            let mut data: [u8; 64] = [0; 64];
            for b in data.iter_mut().take(len) {
                *b = rng(&mut seed) as u8;
            }
            let data = &mut data[..len];
            // Field at an even offset, like every address field we patch.
            let at = 2 * (rng(&mut seed) as usize % ((len - 4) / 2));
            let old: [u8; 4] = data[at..at + 4].try_into().unwrap();
            let before = checksum(data);
            let new = (rng(&mut seed) as u32).to_be_bytes();
            data[at..at + 4].copy_from_slice(&new);
            assert_eq!(replace_u32(before, old, new), checksum(data));
        }
    }

    #[test]
    fn udp_zero_stays_zero_and_computed_zero_becomes_ffff() {
        assert_eq!(udp_replace_u32(0, [1, 2, 3, 4], [5, 6, 7, 8]), 0);
        // Pick `new` so that the patched checksum is exactly 0: with check
        // 0xffff (sum 0) and old = 0, the result is !(new words sum); new
        // words summing to 0xffff give 0.
        assert_eq!(
            replace_u32(0xffff, [0, 0, 0, 0], [0xff, 0x00, 0x00, 0xff]),
            0
        );
        assert_eq!(
            udp_replace_u32(0xffff, [0, 0, 0, 0], [0xff, 0x00, 0x00, 0xff]),
            0xffff
        );
        // Otherwise UDP and plain agree.
        assert_eq!(
            udp_replace_u32(0x1234, [10, 0, 0, 1], [203, 0, 113, 9]),
            replace_u32(0x1234, [10, 0, 0, 1], [203, 0, 113, 9])
        );
    }

    #[test]
    fn ttl_decrement_matches_recomputation() {
        let mut seed = 0x1234_5678_9abc_def1;
        for _ in 0..5_000 {
            let mut h = HEADER;
            for b in h.iter_mut().skip(12) {
                *b = rng(&mut seed) as u8;
            }
            h[8] = 2 + (rng(&mut seed) % 254) as u8;
            h[10] = 0;
            h[11] = 0;
            let check = checksum(&h);
            let (ttl, proto) = (h[8], h[9]);
            h[8] -= 1;
            assert_eq!(decrement_ttl(check, ttl, proto), checksum(&h), "ttl {ttl}");
        }
    }

    #[test]
    fn replace_is_reversible() {
        let (a, b) = ([10, 1, 2, 3], [198, 51, 100, 200]);
        // 0xffff (a sum of +0) only comes from all-zero data; the arithmetic
        // normalises it to 0x0000 (-0), the same value in one's complement.
        for check in [0x0001, 0x1234, 0x8000, 0xfffe] {
            let there = replace_u32(check, a, b);
            assert_eq!(replace_u32(there, b, a), check);
        }
    }
}
