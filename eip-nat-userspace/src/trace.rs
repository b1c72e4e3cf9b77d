//! `eip-nat trace`: what to trace (the request, checked), the events as
//! the API streams them, their one-line reading, and a pcapng capture of
//! them that tcpdump and Wireshark read.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use eip_nat_common::{
    maps::{TraceConfig, TraceEvent},
    Direction, Verdict,
};
use serde::{Deserialize, Serialize};

/// A trace request: the query of `GET /v1/trace`. Every field optional;
/// the default traces every drop, both sides, no translated packet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// Verdict names, comma-separated; default: every `drop_*` verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdicts: Option<String>,
    /// `inbound` or `outbound`; default: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Only packets with this address (an EIP, a private IP, a peer),
    /// before or after translation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Addr>,
    /// Trace one translated packet in `sample` (on average); default 0:
    /// none. Translated verdicts are added to `verdicts` when it is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<u32>,
}

impl TraceRequest {
    /// What the datapath is told to trace, or why the request is refused.
    pub fn config(&self) -> Result<TraceConfig, String> {
        let sample = self.sample.unwrap_or(0);
        let verdicts = match &self.verdicts {
            Some(list) => {
                let mut bits = 0u64;
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let v = Verdict::ALL
                        .into_iter()
                        .find(|v| v.name() == name)
                        .ok_or_else(|| format!("no verdict is called {name:?}"))?;
                    bits |= 1 << v as u32;
                }
                if bits == 0 {
                    return Err("verdicts names none".into());
                }
                bits
            }
            None => Verdict::ALL
                .into_iter()
                .filter(|v| v.is_drop() || (sample > 0 && v.is_translated()))
                .fold(0, |bits, v| bits | 1 << v as u32),
        };
        let directions = match self.direction.as_deref() {
            None => 1 << Direction::Inbound as u32 | 1 << Direction::Outbound as u32,
            Some(d) => match Direction::ALL.into_iter().find(|x| x.name() == d) {
                Some(x) => 1 << x as u32,
                None => return Err(format!("direction {d:?} is not inbound, outbound or other")),
            },
        };
        Ok(TraceConfig {
            verdicts,
            directions,
            sample,
            addr: self.addr.map_or([0; 4], |a| a.octets()),
            reserved: 0,
        })
    }
}

/// One traced packet, as the API streams it (one JSON object a line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub direction: String,
    pub verdict: String,
    pub ifindex: u32,
    pub frame_len: u32,
    /// The IPv4 addresses the packet arrived with.
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The frame's first bytes as it left the program, hex.
    pub data: String,
}

impl TraceRecord {
    /// From the datapath's event; `boot_offset_ns` turns its monotonic
    /// timestamp into wall-clock time.
    pub fn from_event(e: &TraceEvent, boot_offset_ns: u64) -> Self {
        let direction = Direction::ALL
            .into_iter()
            .find(|d| *d as u32 == e.direction)
            .map_or("unknown", |d| d.name());
        let verdict = Verdict::from_code(e.verdict).map_or("unknown", |v| v.name());
        let captured = (e.captured as usize).min(e.data.len());
        Self {
            time_ns: e.ts_ns.saturating_add(boot_offset_ns),
            direction: direction.into(),
            verdict: verdict.into(),
            ifindex: e.ifindex,
            frame_len: e.frame_len,
            src: Ipv4Addr::from(e.src),
            dst: Ipv4Addr::from(e.dst),
            data: e.data[..captured].iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            }),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        (0..self.data.len() / 2)
            .filter_map(|i| u8::from_str_radix(&self.data[2 * i..2 * i + 2], 16).ok())
            .collect()
    }

    /// One line: time, side, verdict, and what the frame is now.
    pub fn line(&self) -> String {
        let t = UNIX_EPOCH + Duration::from_nanos(self.time_ns);
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let arrived = if self.src.is_unspecified() && self.dst.is_unspecified() {
            String::new()
        } else {
            format!(" (arrived {} → {})", self.src, self.dst)
        };
        format!(
            "{secs:.6} {:<8} {:<32} {}{arrived}",
            self.direction,
            self.verdict,
            describe(&self.bytes(), self.frame_len)
        )
    }
}

/// The nanoseconds to add to CLOCK_MONOTONIC (what `bpf_ktime_get_ns`
/// reads) to get wall-clock time.
pub fn boot_offset_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    wall.saturating_sub(mono)
}

/// What a frame is, as far as its first bytes tell: IPv4 addresses,
/// protocol and ports, or the EtherType.
pub fn describe(f: &[u8], frame_len: u32) -> String {
    if f.len() < 14 {
        return format!("frame of {frame_len} bytes");
    }
    let ether_type = u16::from_be_bytes([f[12], f[13]]);
    if ether_type != 0x0800 || f.len() < 34 {
        return format!("ethertype {ether_type:#06x}, {frame_len} bytes");
    }
    let ip = &f[14..];
    let hlen = (ip[0] & 0x0f) as usize * 4;
    let (src, dst) = (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    );
    let l4 = ip.get(hlen..).unwrap_or(&[]);
    let ports = |name: &str| match l4 {
        [a, b, c, d, ..] => format!(
            "{name} {src}:{} → {dst}:{}",
            u16::from_be_bytes([*a, *b]),
            u16::from_be_bytes([*c, *d])
        ),
        _ => format!("{name} {src} → {dst}"),
    };
    let what = match ip[9] {
        6 => ports("TCP"),
        17 => ports("UDP"),
        1 => match l4 {
            [t, c, ..] => format!("ICMP {src} → {dst} type {t} code {c}"),
            _ => format!("ICMP {src} → {dst}"),
        },
        p => format!("proto {p} {src} → {dst}"),
    };
    format!("{what}, ttl {}, {frame_len} bytes", ip[8])
}

/// A pcapng capture of traced packets: one Ethernet interface, each packet
/// with a comment naming its side and verdict.
pub struct Pcapng<W: std::io::Write> {
    writer: pcap_file::pcapng::PcapNgWriter<W>,
}

impl<W: std::io::Write> Pcapng<W> {
    pub fn new(out: W) -> Result<Self, pcap_file::PcapError> {
        use pcap_file::{
            pcapng::blocks::interface_description::{
                InterfaceDescriptionBlock, InterfaceDescriptionOption,
            },
            DataLink,
        };
        let mut writer = pcap_file::pcapng::PcapNgWriter::new(out)?;
        let mut idb = InterfaceDescriptionBlock::new(
            DataLink::ETHERNET,
            eip_nat_common::maps::TRACE_CAPTURE as u32,
        );
        // pcap-file writes timestamps in nanoseconds: say so (pcapng
        // if_tsresol 9), or readers take them for microseconds.
        idb.options.push(InterfaceDescriptionOption::IfTsResol(9));
        writer.write_pcapng_block(idb)?;
        Ok(Self { writer })
    }

    pub fn write(&mut self, r: &TraceRecord) -> Result<(), pcap_file::PcapError> {
        use pcap_file::pcapng::blocks::enhanced_packet::{
            EnhancedPacketBlock, EnhancedPacketOption,
        };
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(r.time_ns),
            original_len: r.frame_len,
            data: r.bytes().into(),
            options: vec![EnhancedPacketOption::Comment(
                format!("{} {}", r.direction, r.verdict).into(),
            )],
        };
        self.writer.write_pcapng_block(block)?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.writer.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_traces_every_drop_and_no_translation() {
        let c = TraceRequest::default().config().unwrap();
        for v in Verdict::ALL {
            assert_eq!(c.verdicts & (1 << v as u32) != 0, v.is_drop(), "{v:?}");
        }
        assert_eq!(c.sample, 0);
        assert_eq!(c.addr, [0; 4]);
        let sampled = TraceRequest {
            sample: Some(100),
            ..Default::default()
        }
        .config()
        .unwrap();
        assert_ne!(
            sampled.verdicts & 1 << Verdict::TranslatedRedirect as u32,
            0
        );
    }

    #[test]
    fn bad_requests_say_why() {
        let e = TraceRequest {
            verdicts: Some("drop_public_unlisted,drop_nonsense".into()),
            ..Default::default()
        }
        .config()
        .unwrap_err();
        assert!(e.contains("drop_nonsense"), "{e}");
        let e = TraceRequest {
            direction: Some("sideways".into()),
            ..Default::default()
        }
        .config()
        .unwrap_err();
        assert!(e.contains("sideways"), "{e}");
    }

    #[test]
    fn events_read_as_lines_and_pcapng() {
        let mut data = [0u8; 128];
        let frame = [
            &[0u8; 12][..],
            &[0x08, 0x00, 0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0],
            &[198, 51, 100, 2, 10, 200, 0, 50],
            &[0x9c, 0x40, 0x1b, 0x58, 0, 12, 0, 0],
        ]
        .concat();
        data[..frame.len()].copy_from_slice(&frame);
        let e = TraceEvent {
            ts_ns: 5,
            ifindex: 3,
            direction: Direction::Inbound as u32,
            verdict: Verdict::DropPublicUnlisted as u32,
            frame_len: 60,
            captured: frame.len() as u32,
            src: [198, 51, 100, 2],
            dst: [10, 200, 0, 50],
            reserved: 0,
            data,
        };
        let r = TraceRecord::from_event(&e, 1_000_000_000);
        assert_eq!(r.bytes(), frame);
        let line = r.line();
        assert!(line.contains("inbound"), "{line}");
        assert!(line.contains("drop_public_unlisted"), "{line}");
        assert!(
            line.contains("UDP 198.51.100.2:40000 → 10.200.0.50:7000"),
            "{line}"
        );

        let mut out = Pcapng::new(Vec::new()).unwrap();
        out.write(&r).unwrap();
        let bytes = out.into_inner();
        let mut reader = pcap_file::pcapng::PcapNgReader::new(&bytes[..]).unwrap();
        // The interface block first, then the packet.
        let mut packets = Vec::new();
        while let Some(block) = reader.next_block() {
            if let Some(p) = block.unwrap().into_enhanced_packet() {
                packets.push((p.data.to_vec(), p.original_len));
            }
        }
        assert_eq!(packets, vec![(frame, 60)]);
    }
}
