//! Frames built from scratch, with checksums computed in full here, so an
//! expected packet never shares code with the datapath it checks.

use std::net::Ipv4Addr;

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// RFC 1071 sum, written independently of `eip_nat_common::csum`.
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    for (i, b) in data.iter().enumerate() {
        acc += if i % 2 == 0 {
            (*b as u32) << 8
        } else {
            *b as u32
        };
    }
    acc
}

fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc >> 16) + (acc & 0xffff);
    }
    !(acc as u16)
}

pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(sum16(0, data))
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut acc = sum16(0, &src.octets());
    acc = sum16(acc, &dst.octets());
    acc + proto as u32 + len as u32
}

/// An IPv4 datagram to assemble into a frame.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset, as in the header.
    pub frags: u16,
    /// Options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Everything after the IPv4 header.
    pub payload: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: Vec<u8>) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            id: 0x1234,
            frags: 0x4000,
            options: Vec::new(),
            payload,
        }
    }

    pub fn header(&self) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let hlen = 20 + self.options.len();
        let tot = (hlen + self.payload.len()) as u16;
        let mut h = vec![0x40 | (hlen / 4) as u8, 0];
        h.extend(tot.to_be_bytes());
        h.extend(self.id.to_be_bytes());
        h.extend(self.frags.to_be_bytes());
        h.extend([self.ttl, self.proto, 0, 0]);
        h.extend(self.src.octets());
        h.extend(self.dst.octets());
        h.extend(&self.options);
        let c = internet_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    /// Ethernet II frame carrying the datagram, MAC_A → MAC_B.
    pub fn frame(&self) -> Vec<u8> {
        self.frame_with(MAC_B, MAC_A)
    }

    /// Ethernet II frame with the given destination and source MACs.
    pub fn frame_with(&self, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = ethernet(dst, src, 0x0800);
        f.extend(self.header());
        f.extend(&self.payload);
        f
    }
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend(dst);
    f.extend(src);
    f.extend(ether_type.to_be_bytes());
    f
}

/// UDP datagram with a full checksum, or 0 ("none") when `checksum` is off.
pub fn udp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    data: &[u8],
    checksum: bool,
) -> Ipv4 {
    let len = 8 + data.len();
    let mut u = Vec::with_capacity(len);
    u.extend(sport.to_be_bytes());
    u.extend(dport.to_be_bytes());
    u.extend((len as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(data);
    if checksum {
        let c = finish(sum16(pseudo_header(src, dst, UDP, len), &u));
        let c = if c == 0 { 0xffff } else { c };
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    Ipv4::new(src, dst, UDP, u)
}

pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8, data: &[u8]) -> Ipv4 {
    let mut t = Vec::with_capacity(20 + data.len());
    t.extend(sport.to_be_bytes());
    t.extend(dport.to_be_bytes());
    t.extend(0x0102_0304u32.to_be_bytes()); // seq
    t.extend(0x0506_0708u32.to_be_bytes()); // ack
    t.extend([0x50, flags]);
    t.extend(64240u16.to_be_bytes());
    t.extend([0, 0, 0, 0]); // checksum, urgent
    t.extend(data);
    let c = finish(sum16(pseudo_header(src, dst, TCP, t.len()), &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Ipv4::new(src, dst, TCP, t)
}

/// ICMP echo request (type 8) or reply (type 0).
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, id: u16, seq: u16, data: &[u8]) -> Ipv4 {
    let mut m = vec![kind, 0, 0, 0];
    m.extend(id.to_be_bytes());
    m.extend(seq.to_be_bytes());
    m.extend(data);
    let c = internet_checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Ipv4::new(src, dst, ICMP, m)
}

/// ICMP error (destination unreachable 3, time exceeded 11, parameter
/// problem 12) quoting `quoted` (an IPv4 packet, often cut short); `rest`
/// is the second word (e.g. the next-hop MTU of "fragmentation needed").
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Ipv4 {
    let mut m = vec![kind, code, 0, 0];
    m.extend(rest);
    m.extend(quoted);
    let c = internet_checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = Ipv4::new(src, dst, ICMP, m);
    p.frags = 0;
    p
}

impl Ipv4 {
    /// The datagram's bytes (header and payload), as an ICMP error quotes it.
    pub fn datagram(&self) -> Vec<u8> {
        let mut d = self.header();
        d.extend(&self.payload);
        d
    }
}

/// A parsed IPv4 frame, for assertions on captured traffic.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub l4: Vec<u8>,
}

impl Parsed {
    pub fn ports(&self) -> Option<(u16, u16)> {
        (matches!(self.proto, TCP | UDP) && self.l4.len() >= 4).then(|| {
            (
                u16::from_be_bytes([self.l4[0], self.l4[1]]),
                u16::from_be_bytes([self.l4[2], self.l4[3]]),
            )
        })
    }
}

/// Parses an Ethernet/IPv4 frame and verifies every checksum in it in full:
/// IPv4 header, and TCP/UDP (with pseudo-header) or ICMP. Veth marks packets
/// checksum-good, so the receiving kernel would not notice a wrong one.
pub fn parse_and_verify(frame: &[u8]) -> Result<Parsed, String> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return Err("not an IPv4 frame".into());
    }
    let ip = &frame[14..];
    let hlen = ((ip[0] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ip[0] >> 4 != 4 || hlen < 20 || tot < hlen || tot > ip.len() {
        return Err(format!(
            "bad IPv4 lengths: ihl {hlen} tot {tot} have {}",
            ip.len()
        ));
    }
    if internet_checksum(&ip[..hlen]) != 0 {
        return Err(format!("bad IPv4 header checksum in {}", hex(frame)));
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let l4 = &ip[hlen..tot];
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    let more_fragments = ip[6] & 0x20 != 0;
    if first_fragment && !more_fragments {
        let ok = match proto {
            TCP => finish(sum16(pseudo_header(src, dst, TCP, l4.len()), l4)) == 0,
            UDP => {
                l4.len() >= 8
                    && (l4[6..8] == [0, 0]
                        || finish(sum16(pseudo_header(src, dst, UDP, l4.len()), l4)) == 0)
            }
            ICMP => internet_checksum(l4) == 0,
            _ => true,
        };
        if !ok {
            return Err(format!(
                "bad L4 checksum (proto {proto}) {src} -> {dst} in {}",
                hex(frame)
            ));
        }
    }
    Ok(Parsed {
        src,
        dst,
        proto,
        ttl: ip[8],
        l4: l4.to_vec(),
    })
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_verify() {
        let a = Ipv4Addr::new(198, 51, 100, 2);
        let b = Ipv4Addr::new(203, 0, 113, 10);
        for p in [
            udp(a, 1, b, 2, b"hello", true),
            udp(a, 1, b, 2, b"hello", false),
            tcp(a, 1, b, 2, 0x02, b""),
            icmp_echo(a, b, 8, 7, 1, b"ping"),
        ] {
            let parsed = parse_and_verify(&p.frame()).unwrap();
            assert_eq!((parsed.src, parsed.dst), (a, b));
        }
        let mut bad = udp(a, 1, b, 2, b"hello", true).frame();
        *bad.last_mut().unwrap() ^= 1;
        assert!(parse_and_verify(&bad).is_err());
    }
}
