//! The loaded XDP program, run on crafted frames with BPF_PROG_TEST_RUN.
//! Each case compares the whole output frame with one built independently
//! (so every checksum is covered) and checks the counter deltas.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use aya::programs::{TestRun, TestRunOptions};
use eip_nat::{
    datapath::{Datapath, LoadOptions},
    gateway::Gateway,
    model::{tables, EniKind, Event, Limits, Mode},
};
use eip_nat_common::{
    maps::{
        ArpConfig, NextHop, FLAG_ARP_ACTIVE, FLAG_FAST_PATH, FLAG_STANDBY, FLAG_TRACE, MAX_TX_PORTS,
    },
    verdict::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    Config, Direction, EipCounters, Verdict, VerdictCounter,
};
use integration_tests::{
    associate_nat,
    netns::{in_netns, ns_sh, Namespaces},
    packet::{ethernet, hex, icmp_echo, icmp_error, tcp, udp, Ipv4, MAC_A, MAC_B, TCP},
    require_root,
};

const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const EIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);

/// A freshly loaded program with one association, EIP ↔ PRIVATE.
struct Harness {
    gw: Gateway,
    /// Test-run frames arrive on the loopback of the caller's namespace
    /// (net/bpf/test_run.c), so roles are given to that ifindex.
    lo: u32,
    slot: u32,
    /// Run the program inside this namespace (its routes and neighbours
    /// are what the fast path's FIB lookup sees), with the fast path on.
    fast_path_ns: Option<String>,
    /// Further `Config` flags (the active/standby role).
    flags: u32,
}

impl Harness {
    fn new() -> Self {
        Self::with_fast_path(None)
    }

    fn with_fast_path(fast_path_ns: Option<String>) -> Self {
        require_root();
        let dp = Datapath::load(LoadOptions {
            max_associations: 64,
            ..Default::default()
        })
        .expect("load datapath");
        let mut gw = integration_tests::in_memory_gateway(
            dp,
            Limits {
                max_associations: 64,
                ..Default::default()
            },
        )
        .expect("gateway");
        let slot = integration_tests::associate_nat(&mut gw, EIP, PRIVATE).expect("associate");
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        assert_ne!(lo, 0);
        Self {
            gw,
            lo,
            slot,
            fast_path_ns,
            flags: 0,
        }
    }

    fn set_role(&mut self, direction: Direction) {
        let (public_ifindex, private_ifindex) = match direction {
            Direction::Inbound => (self.lo, 0),
            Direction::Outbound => (0, self.lo),
            Direction::Other => (0, 0),
        };
        let flags = self.flags
            | match self.fast_path_ns {
                Some(_) => FLAG_FAST_PATH,
                None => 0,
            };
        let cfg = Config {
            public_ifindex,
            private_ifindex,
            flags,
            ..Default::default()
        };
        self.gw.datapath_mut().set_config(cfg).unwrap();
    }

    fn verdicts(&mut self) -> Vec<(Direction, Verdict, VerdictCounter)> {
        self.gw.datapath_mut().verdict_counters().unwrap()
    }

    fn eip(&mut self) -> EipCounters {
        self.gw.datapath_mut().eip_counters(self.slot).unwrap()
    }

    /// Runs `input` as arriving in `direction`; returns action and output.
    fn run(&mut self, direction: Direction, input: &[u8]) -> (u32, Vec<u8>) {
        self.set_role(direction);
        let mut out = vec![0u8; input.len() + 256];
        let program = self.gw.datapath_mut().program_mut();
        let mut test_run = || {
            program
                .test_run(TestRunOptions {
                    data_in: Some(input),
                    data_out: Some(&mut out),
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN")
        };
        let result = match &self.fast_path_ns {
            Some(ns) => in_netns(ns, test_run),
            None => test_run(),
        };
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs one case and checks action, whole output and counter deltas.
    fn case(
        &mut self,
        name: &str,
        direction: Direction,
        input: &[u8],
        verdict: Verdict,
        expected: &[u8],
        eip_delta: EipCounters,
    ) {
        let verdicts_before = self.verdicts();
        let eip_before = self.eip();
        let (action, out) = self.run(direction, input);
        let want_action = if verdict.is_drop() {
            XDP_DROP
        } else if matches!(
            verdict,
            Verdict::TranslatedRedirect | Verdict::TranslatedRedirectFib
        ) {
            XDP_REDIRECT
        } else if verdict == Verdict::ArpReplySent {
            XDP_TX
        } else {
            XDP_PASS
        };
        assert_eq!(action, want_action, "{name}: action");
        assert_eq!(verdict.action(), action, "{name}: the verdict's own action");
        if !verdict.is_drop() {
            assert!(
                out == expected,
                "{name}: output differs\n got  {}\n want {}",
                hex(&out),
                hex(expected)
            );
        }
        // Exactly one counter moved, by one packet and the frame's bytes.
        for ((d, v, after), (_, _, before)) in self.verdicts().into_iter().zip(verdicts_before) {
            let (dp, db) = (after.packets - before.packets, after.bytes - before.bytes);
            if (d, v) == (direction, verdict) {
                assert_eq!(
                    (dp, db),
                    (1, input.len() as u64),
                    "{name}: counter {d:?}/{v:?}"
                );
            } else {
                assert_eq!((dp, db), (0, 0), "{name}: counter {d:?}/{v:?} moved");
            }
        }
        let got = counted_since(self.eip(), eip_before);
        assert_eq!(got, eip_delta, "{name}: per-EIP counters");
    }
}

/// What the per-EIP counters gained between two readings.
fn counted_since(after: EipCounters, before: EipCounters) -> EipCounters {
    EipCounters {
        in_packets: after.in_packets - before.in_packets,
        in_bytes: after.in_bytes - before.in_bytes,
        out_packets: after.out_packets - before.out_packets,
        out_bytes: after.out_bytes - before.out_bytes,
    }
}

impl Harness {
    /// A packet that must come out translated as `expected`, counted for the
    /// association in its direction.
    fn translated(&mut self, name: &str, direction: Direction, input: &Ipv4, expected: &Ipv4) {
        self.translated_as(
            name,
            direction,
            input,
            Verdict::Translated,
            &expected.frame(),
        );
    }

    /// The same for any translating verdict, with the whole expected frame
    /// (the fast path rewrites MACs).
    fn translated_as(
        &mut self,
        name: &str,
        direction: Direction,
        input: &Ipv4,
        verdict: Verdict,
        expected: &[u8],
    ) {
        let n = ip_len(input);
        let delta = match direction {
            Direction::Inbound => inbound(n),
            _ => outbound(n),
        };
        self.case(name, direction, &input.frame(), verdict, expected, delta);
    }

    /// A frame that must pass exactly as it came, under `verdict`.
    fn untouched(&mut self, name: &str, direction: Direction, frame: &[u8], verdict: Verdict) {
        self.case(name, direction, frame, verdict, frame, NONE);
    }

    /// A frame that must be dropped under `verdict`.
    fn dropped(&mut self, name: &str, frame: &[u8], verdict: Verdict) {
        self.case(name, Direction::Inbound, frame, verdict, &[], NONE);
    }
}

fn inbound(ip_bytes: usize) -> EipCounters {
    EipCounters {
        in_packets: 1,
        in_bytes: ip_bytes as u64,
        ..Default::default()
    }
}

fn outbound(ip_bytes: usize) -> EipCounters {
    EipCounters {
        out_packets: 1,
        out_bytes: ip_bytes as u64,
        ..Default::default()
    }
}

fn ip_len(p: &Ipv4) -> usize {
    p.header().len() + p.payload.len()
}

const NONE: EipCounters = EipCounters {
    in_packets: 0,
    in_bytes: 0,
    out_packets: 0,
    out_bytes: 0,
};

/// An ARP packet (RFC 826, Ethernet/IPv4) from `sha`/`spa` about `tpa`,
/// in a frame from `sha` to `to`.
fn arp(to: [u8; 6], op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(to, sha, 0x0806);
    f.extend([0, 1, 8, 0, 6, 4]);
    f.extend(op.to_be_bytes());
    f.extend(sha);
    f.extend(spa.octets());
    f.extend(tha);
    f.extend(tpa.octets());
    f
}

/// Active/standby on a shared L2 (docs/fleet.md): the active gateway
/// answers ARP for its EIPs, in place, from the public interface's MAC,
/// while its deadline lies ahead; a standby answers none and drops what
/// arrives for an EIP.
#[test]
fn the_active_answers_arp_for_its_eips_and_a_standby_drops_their_traffic() {
    const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    let mut h = Harness::new();
    let mut responder = h.gw.datapath_mut().take_arp_config().unwrap();
    let mut answer_until = |active_until_ns: u64| {
        let cfg = ArpConfig {
            mac: GW_MAC,
            reserved: 0,
            active_until_ns,
        };
        responder.set(0, cfg, 0).unwrap();
    };
    answer_until(u64::MAX);
    let request = |tpa: Ipv4Addr| arp([0xff; 6], 1, MAC_A, INTERNET, [0; 6], tpa);
    h.untouched(
        "no role",
        Direction::Inbound,
        &request(EIP),
        Verdict::PassNotIpv4,
    );

    h.flags = FLAG_ARP_ACTIVE;
    let reply = arp(MAC_A, 2, GW_MAC, EIP, MAC_A, INTERNET);
    h.case(
        "request for the EIP",
        Direction::Inbound,
        &request(EIP),
        Verdict::ArpReplySent,
        &reply,
        NONE,
    );
    for (name, dir, frame) in [
        ("another address", Direction::Inbound, request(OTHER)),
        ("the private IP", Direction::Inbound, request(PRIVATE)),
        ("on the private side", Direction::Outbound, request(EIP)),
        (
            "an announcement (RFC 5227)",
            Direction::Inbound,
            arp([0xff; 6], 1, MAC_B, EIP, [0; 6], EIP),
        ),
        (
            "a reply",
            Direction::Inbound,
            arp(MAC_B, 2, MAC_A, INTERNET, MAC_B, EIP),
        ),
        (
            "not Ethernet/IPv4",
            Direction::Inbound,
            arp([0xff; 6], 1, MAC_A, INTERNET, [0; 6], EIP)
                .into_iter()
                .enumerate()
                .map(|(i, b)| if i == 19 { 16 } else { b })
                .collect(),
        ),
    ] {
        h.untouched(name, dir, &frame, Verdict::PassNotIpv4);
    }
    let mut short = request(EIP);
    short.truncate(14 + 27);
    h.dropped("cut short", &short, Verdict::DropArpTruncated);
    // The lease ran out by the agent's clock: no answer, whatever the flag.
    answer_until(1);
    h.untouched(
        "past the deadline",
        Direction::Inbound,
        &request(EIP),
        Verdict::PassNotIpv4,
    );

    answer_until(u64::MAX);
    h.flags = FLAG_STANDBY;
    h.untouched(
        "on a standby",
        Direction::Inbound,
        &request(EIP),
        Verdict::PassNotIpv4,
    );
    let to_eip = udp(INTERNET, 40000, EIP, 53, b"flooded", true).frame();
    h.dropped("to the EIP on a standby", &to_eip, Verdict::DropStandby);
    // What is no EIP's is as on any gateway; the private side translates.
    let to_other = udp(INTERNET, 40000, OTHER, 53, b"x", true).frame();
    h.dropped(
        "unlisted on a standby",
        &to_other,
        Verdict::DropPublicUnlisted,
    );
    let out = udp(PRIVATE, 53, INTERNET, 40000, b"reply", true);
    let expected = udp(EIP, 53, INTERNET, 40000, b"reply", true);
    h.translated(
        "outbound on a standby",
        Direction::Outbound,
        &out,
        &expected,
    );
}

#[test]
fn udp_with_checksum_both_directions() {
    let mut h = Harness::new();
    let data = b"datagram payload, never touched: 203.0.113.10 10.200.0.10";
    let input = udp(INTERNET, 40000, EIP, 53, data, true);
    let expected = udp(INTERNET, 40000, PRIVATE, 53, data, true);
    h.translated("udp in", Direction::Inbound, &input, &expected);

    let input = udp(PRIVATE, 53, INTERNET, 40000, data, true);
    let expected = udp(EIP, 53, INTERNET, 40000, data, true);
    h.translated("udp out", Direction::Outbound, &input, &expected);
}

#[test]
fn udp_without_checksum_stays_without() {
    let mut h = Harness::new();
    let input = udp(INTERNET, 40000, EIP, 7, b"no checksum", false);
    let expected = udp(INTERNET, 40000, PRIVATE, 7, b"no checksum", false);
    assert_eq!(&expected.payload[6..8], &[0, 0]);
    h.translated("udp0 in", Direction::Inbound, &input, &expected);
    let input = udp(PRIVATE, 7, INTERNET, 40000, b"reply", false);
    let expected = udp(EIP, 7, INTERNET, 40000, b"reply", false);
    h.translated("udp0 out", Direction::Outbound, &input, &expected);
}

/// Finds a UDP payload whose translated checksum computes to 0, which must
/// be sent as 0xffff (RFC 768), and checks the datapath writes 0xffff.
#[test]
fn udp_computed_zero_is_sent_as_ffff() {
    let mut h = Harness::new();
    let (input, expected) = (0u16..=u16::MAX)
        .map(|n| {
            let data = n.to_be_bytes();
            (
                udp(INTERNET, 40000, EIP, 9, &data, true),
                udp(INTERNET, 40000, PRIVATE, 9, &data, true),
            )
        })
        .find(|(_, e)| e.payload[6..8] == [0xff, 0xff])
        .expect("some 2-byte payload gives a computed zero");
    h.translated("udp ffff", Direction::Inbound, &input, &expected);
}

#[test]
fn tcp_both_directions() {
    let mut h = Harness::new();
    let input = tcp(INTERNET, 50000, EIP, 443, 0x02, b"");
    let expected = tcp(INTERNET, 50000, PRIVATE, 443, 0x02, b"");
    h.translated("tcp syn in", Direction::Inbound, &input, &expected);
    let input = tcp(PRIVATE, 443, INTERNET, 50000, 0x18, b"HTTP/1.1 200 OK\r\n");
    let expected = tcp(EIP, 443, INTERNET, 50000, 0x18, b"HTTP/1.1 200 OK\r\n");
    h.translated("tcp data out", Direction::Outbound, &input, &expected);
}

#[test]
fn icmp_echo_both_directions() {
    let mut h = Harness::new();
    let input = icmp_echo(INTERNET, EIP, 8, 0x77, 1, b"ping payload");
    let expected = icmp_echo(INTERNET, PRIVATE, 8, 0x77, 1, b"ping payload");
    h.translated("echo request in", Direction::Inbound, &input, &expected);
    let input = icmp_echo(PRIVATE, INTERNET, 0, 0x77, 1, b"ping payload");
    let expected = icmp_echo(EIP, INTERNET, 0, 0x77, 1, b"ping payload");
    h.translated("echo reply out", Direction::Outbound, &input, &expected);
}

#[test]
fn ip_options_are_honoured() {
    let mut h = Harness::new();
    // Two NOPs and a 2-byte-long-padded End: IHL 6. A datapath that assumed
    // IHL 5 would patch the options instead of the UDP checksum.
    let opts = vec![0x01, 0x01, 0x01, 0x00];
    let mut input = udp(INTERNET, 1234, EIP, 5678, b"with options", true);
    input.options = opts.clone();
    let mut expected = udp(INTERNET, 1234, PRIVATE, 5678, b"with options", true);
    expected.options = opts;
    h.translated("options in", Direction::Inbound, &input, &expected);
    // A record-route option (type 7) with room for addresses, IHL 8.
    let rr = vec![0x07, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0x00];
    let mut input = tcp(PRIVATE, 22, INTERNET, 60000, 0x10, b"ssh");
    input.options = rr.clone();
    let mut expected = tcp(EIP, 22, INTERNET, 60000, 0x10, b"ssh");
    expected.options = rr;
    h.translated("options out", Direction::Outbound, &input, &expected);
}

#[test]
fn later_fragments_change_at_the_ip_layer_only() {
    let mut h = Harness::new();
    // Offset 185 (1480 bytes), no MF: the payload starts mid-datagram, so its
    // first bytes only look like a UDP header and must not be patched.
    let mut input = udp(INTERNET, 1, EIP, 2, b"fragment tail bytes", true);
    input.frags = 185;
    let mut expected = input.clone();
    expected.dst = PRIVATE;
    h.translated("fragment in", Direction::Inbound, &input, &expected);
    // The first fragment (MF set, offset 0) does carry the L4 checksum.
    let mut input = udp(INTERNET, 1, EIP, 2, b"first fragment", true);
    input.frags = 0x2000;
    let mut expected = udp(INTERNET, 1, PRIVATE, 2, b"first fragment", true);
    expected.frags = 0x2000;
    h.translated("first fragment in", Direction::Inbound, &input, &expected);
}

#[test]
fn link_padding_is_left_alone() {
    let mut h = Harness::new();
    let input = udp(INTERNET, 1, EIP, 2, b"x", true);
    let expected = udp(INTERNET, 1, PRIVATE, 2, b"x", true);
    // Pad to the 60-byte Ethernet minimum with non-zero junk.
    let pad = |mut f: Vec<u8>| {
        f.resize(60, 0xa5);
        f
    };
    h.case(
        "padded",
        Direction::Inbound,
        &pad(input.frame()),
        Verdict::Translated,
        &pad(expected.frame()),
        inbound(ip_len(&input)),
    );
}

#[test]
fn untranslatable_packets_pass_untouched() {
    let mut h = Harness::new();
    // The operator routes OTHER's prefix through, unchanged.
    h.gw.set_routed_prefixes(vec!["203.0.113.96/27".parse().unwrap()])
        .unwrap();
    // No mapping: a listed address inbound, another private IP outbound,
    // and an outbound packet *to* the private IP (the tables are per
    // direction).
    for (name, dir, p) in [
        (
            "no mapping in",
            Direction::Inbound,
            udp(INTERNET, 1, OTHER, 2, b"x", true),
        ),
        (
            "no mapping out",
            Direction::Outbound,
            udp(Ipv4Addr::new(10, 200, 0, 11), 1, INTERNET, 2, b"x", true),
        ),
        (
            "private as dest out",
            Direction::Outbound,
            udp(INTERNET, 1, PRIVATE, 2, b"x", true),
        ),
    ] {
        let f = p.frame();
        h.untouched(name, dir, &f, Verdict::PassNoMapping);
    }
    // ARP request: not IPv4.
    let mut arp = ethernet([0xff; 6], MAC_A, 0x0806);
    arp.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend(MAC_A);
    arp.extend(INTERNET.octets());
    arp.extend([0; 6]);
    arp.extend(EIP.octets());
    h.untouched("arp", Direction::Inbound, &arp, Verdict::PassNotIpv4);
    // 802.1Q-tagged IPv4 to the EIP: passed untouched, by decision (the
    // "VLAN" note in docs/behaviour.md), not translated behind the tag.
    let mut tagged = ethernet(MAC_B, MAC_A, 0x8100);
    tagged.extend([0x00, 0x64, 0x08, 0x00]);
    tagged.extend(&udp(INTERNET, 1, EIP, 2, b"tagged", true).frame()[14..]);
    h.untouched(
        "vlan tagged",
        Direction::Inbound,
        &tagged,
        Verdict::PassNotIpv4,
    );
    // IPv6 to anything.
    let mut v6 = ethernet(MAC_B, MAC_A, 0x86dd);
    v6.extend([0x60, 0, 0, 0, 0, 8, 17, 64]);
    v6.extend([0u8; 40]);
    h.untouched("ipv6", Direction::Inbound, &v6, Verdict::PassNotIpv4);
    // A packet for the EIP on an interface with no role.
    let f = udp(INTERNET, 1, EIP, 2, b"x", true).frame();
    h.untouched(
        "unknown iface",
        Direction::Other,
        &f,
        Verdict::PassUnknownInterface,
    );
}

/// The public side reaches the EIPs, the gateway's addresses, link
/// control and the operator's prefixes; an instance's private IP never.
#[test]
fn the_public_side_reaches_only_what_is_listed() {
    let mut h = Harness::new();
    let to = |dst| udp(INTERNET, 1, dst, 2, b"knock", true).frame();
    h.dropped("unlisted", &to(OTHER), Verdict::DropPublicUnlisted);
    h.dropped(
        "private IP, with an EIP",
        &to(PRIVATE),
        Verdict::DropPublicToPrivateIp,
    );
    // Listing the private IP's prefix routes the rest of it, not the
    // ENI's address.
    h.gw.set_routed_prefixes(vec!["10.200.0.0/24".parse().unwrap()])
        .unwrap();
    h.dropped(
        "private IP inside a listed prefix",
        &to(PRIVATE),
        Verdict::DropPublicToPrivateIp,
    );
    let neighbour = Ipv4Addr::new(10, 200, 0, 200);
    h.untouched(
        "listed",
        Direction::Inbound,
        &to(neighbour),
        Verdict::PassNoMapping,
    );
    for control in [Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 18)] {
        h.untouched(
            "link control",
            Direction::Inbound,
            &to(control),
            Verdict::PassNoMapping,
        );
    }
    // Unlisted again: the table follows the configuration.
    h.gw.set_routed_prefixes(Vec::new()).unwrap();
    h.dropped(
        "no longer listed",
        &to(neighbour),
        Verdict::DropPublicUnlisted,
    );
    // The private side is not filtered: an instance reaches anything.
    h.untouched(
        "outbound, unlisted",
        Direction::Outbound,
        &udp(Ipv4Addr::new(10, 200, 0, 11), 1, OTHER, 2, b"out", true).frame(),
        Verdict::PassNoMapping,
    );
}

#[test]
fn malformed_packets_are_dropped_with_their_reason() {
    let mut h = Harness::new();
    let good = udp(INTERNET, 1, EIP, 2, b"0123456789", true).frame();

    let cut = &good[..14 + 10];
    h.dropped("header cut", cut, Verdict::DropIpv4Truncated);

    let mut long = good.clone();
    long[16..18].copy_from_slice(&200u16.to_be_bytes()); // tot_len past the end
    h.dropped("tot_len too long", &long, Verdict::DropIpv4Truncated);

    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    h.dropped("ihl 4", &ihl4, Verdict::DropIpv4BadHeader);

    let mut v6hdr = good.clone();
    v6hdr[14] = 0x65;
    h.dropped("version 6 in ipv4", &v6hdr, Verdict::DropIpv4BadHeader);

    let mut short_tot = good.clone();
    short_tot[14] = 0x46;
    short_tot[16..18].copy_from_slice(&22u16.to_be_bytes()); // < 24-byte header
    h.dropped("tot_len < ihl", &short_tot, Verdict::DropIpv4BadHeader);

    // TCP to the EIP whose datagram ends inside the TCP header (before the
    // checksum): tiny first fragment.
    let t = tcp(INTERNET, 1, EIP, 2, 0x02, b"");
    let mut tiny = t.clone();
    tiny.payload.truncate(12);
    tiny.frags = 0x2000;
    assert_eq!(tiny.proto, TCP);
    h.dropped("tiny tcp fragment", &tiny.frame(), Verdict::DropL4Truncated);

    // The same lengths for an address the operator routes through still
    // pass as no-mapping: the L4 check is only needed where we would
    // rewrite.
    h.gw.set_routed_prefixes(vec![Ipv4Net::from(OTHER)])
        .unwrap();
    let mut tiny_other = tiny.clone();
    tiny_other.dst = OTHER;
    let f = tiny_other.frame();
    h.untouched(
        "tiny, no mapping",
        Direction::Inbound,
        &f,
        Verdict::PassNoMapping,
    );
}

#[test]
fn disassociated_eip_is_no_way_in_and_the_private_ip_leaves_untranslated() {
    let mut h = Harness::new();
    h.gw.apply(&Event::Disassociate { eip: EIP }).unwrap();
    let f = udp(INTERNET, 1, EIP, 2, b"late", true).frame();
    h.dropped("after disassociate in", &f, Verdict::DropPublicUnlisted);
    let f = udp(PRIVATE, 2, INTERNET, 1, b"late", true).frame();
    h.untouched(
        "after disassociate out",
        Direction::Outbound,
        &f,
        Verdict::PassNoMapping,
    );
}

#[test]
fn maps_agree_with_the_table() {
    let mut h = Harness::new();
    associate_nat(
        &mut h.gw,
        Ipv4Addr::new(203, 0, 113, 11),
        Ipv4Addr::new(10, 200, 0, 11),
    )
    .unwrap();
    associate_nat(
        &mut h.gw,
        Ipv4Addr::new(203, 0, 113, 11),
        Ipv4Addr::new(10, 200, 0, 12),
    )
    .unwrap_err();
    let entries: std::collections::HashMap<_, _> =
        h.gw.datapath_mut().entries().unwrap().into_iter().collect();
    assert_eq!(
        entries.len(),
        4,
        "two associations, two addresses each; a refused request left nothing"
    );
    assert!(!entries.contains_key(&Ipv4Addr::new(10, 200, 0, 12)));
    for (addr, e) in &entries {
        // Each address has exactly one role, and its partner points back.
        if e.is_eip() {
            assert!(!e.is_private(), "{addr}");
            let p = &entries[&Ipv4Addr::from(e.private_ip)];
            assert!(p.is_private() && p.eip == addr.octets() && p.private_slot == e.eip_slot);
        } else {
            assert!(e.is_private(), "{addr}");
            assert!(entries[&Ipv4Addr::from(e.eip)].is_eip());
        }
    }
    // Disassociating removes both addresses.
    h.gw.apply(&Event::Disassociate {
        eip: Ipv4Addr::new(203, 0, 113, 11),
    })
    .unwrap();
    assert_eq!(h.gw.datapath_mut().entries().unwrap().len(), 2);
}

// ---- The fast path: FIB lookup, TTL, MACs, redirect, and each fallback ----

/// The gateway's own interfaces in one namespace, each with a route and a
/// permanent neighbour, as `bpf_fib_lookup` will see them.
struct FibRig {
    ns: String,
    /// (interface, its MAC, the neighbour's MAC) per side.
    private: (String, [u8; 6], [u8; 6]),
    public: (String, [u8; 6], [u8; 6]),
    _namespaces: Namespaces,
}

const SMALL_MTU_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 10);
const NO_TX_PORT_IP: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 10);
const NO_NEIGH_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 11);
const NO_ROUTE_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 9, 9);

fn fib_rig() -> FibRig {
    require_root();
    let mut namespaces = Namespaces::new();
    let ns = namespaces.add("fib");
    let p = namespaces.prefix.clone();
    let mac = |n: u8| [0x02, 0xfa, 0, 0, 0, n];
    let peer_mac = |n: u8| [0x02, 0xfb, 0, 0, 0, n];
    let hex_mac = |m: [u8; 6]| integration_tests::netns::mac_str(m);
    let side = |suffix: &str, n: u8, cidr: &str, neigh: &str, mtu: &str| {
        let dev = format!("{p}{suffix}");
        let peer = format!("{p}{suffix}x");
        ns_sh(
            &ns,
            &[
                "ip",
                "link",
                "add",
                &dev,
                "address",
                &hex_mac(mac(n)),
                "mtu",
                mtu,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
        );
        ns_sh(&ns, &["ip", "addr", "add", cidr, "dev", &dev]);
        ns_sh(&ns, &["ip", "link", "set", &peer, "up"]);
        ns_sh(&ns, &["ip", "link", "set", &dev, "up"]);
        if !neigh.is_empty() {
            ns_sh(
                &ns,
                &[
                    "ip",
                    "neigh",
                    "replace",
                    neigh,
                    "lladdr",
                    &hex_mac(peer_mac(n)),
                    "dev",
                    &dev,
                    "nud",
                    "permanent",
                ],
            );
        }
        (dev, mac(n), peer_mac(n))
    };
    let private = side("a", 1, "10.200.0.1/24", "10.200.0.10", "1500");
    let public = side("b", 2, "198.51.100.1/24", "198.51.100.2", "1500");
    side("c", 3, "10.201.0.1/24", "10.201.0.10", "1280");
    side("e", 4, "10.202.0.1/24", "10.202.0.10", "1500");
    ns_sh(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    FibRig {
        ns,
        private,
        public,
        _namespaces: namespaces,
    }
}

fn fast_harness(rig: &FibRig) -> Harness {
    let mut h = Harness::with_fast_path(Some(rig.ns.clone()));
    for dev in [
        &rig.private.0,
        &rig.public.0,
        &format!("{}c", &rig.private.0[..rig.private.0.len() - 1]),
    ] {
        let index = integration_tests::netns::ifindex(&rig.ns, dev);
        // A devmap resolves the ifindex in the caller's namespace.
        let dp = h.gw.datapath_mut();
        in_netns(&rig.ns, || dp.add_tx_port(index)).unwrap();
    }
    h
}

/// With no programmed next hop (this harness has no agent following the
/// kernel), the fast path asks the FIB: `translated_redirect_fib`.
#[test]
fn fast_path_forwards_like_a_router() {
    let rig = fib_rig();
    let mut h = fast_harness(&rig);
    let (_, priv_mac, instance_mac) = rig.private;
    let (_, pub_mac, internet_mac) = rig.public;

    // Inbound UDP: translated, TTL 64 → 63 (header checksum recomputed in
    // full by the builder), MACs from the egress and its neighbour.
    let input = udp(INTERNET, 40000, EIP, 53, b"fast path", true);
    let mut expected = udp(INTERNET, 40000, PRIVATE, 53, b"fast path", true);
    expected.ttl = 63;
    h.translated_as(
        "udp in",
        Direction::Inbound,
        &input,
        Verdict::TranslatedRedirectFib,
        &expected.frame_with(instance_mac, priv_mac),
    );

    // Outbound TCP, to the public side.
    let input = tcp(PRIVATE, 443, INTERNET, 50000, 0x18, b"response");
    let mut expected = tcp(EIP, 443, INTERNET, 50000, 0x18, b"response");
    expected.ttl = 63;
    h.translated_as(
        "tcp out",
        Direction::Outbound,
        &input,
        Verdict::TranslatedRedirectFib,
        &expected.frame_with(internet_mac, pub_mac),
    );

    // ICMP echo both ways, TTL 2 → 1 is still forwarded.
    let mut input = icmp_echo(INTERNET, EIP, 8, 9, 1, b"ping");
    input.ttl = 2;
    let mut expected = icmp_echo(INTERNET, PRIVATE, 8, 9, 1, b"ping");
    expected.ttl = 1;
    h.translated_as(
        "echo in, ttl 2",
        Direction::Inbound,
        &input,
        Verdict::TranslatedRedirectFib,
        &expected.frame_with(instance_mac, priv_mac),
    );
}

/// Points EIP's entry at next hop `id`, as the agent does for the address
/// it is delivered to.
fn deliver_eip_by(dp: &mut Datapath, id: u32) {
    let (_, mut entry) = dp
        .entries()
        .unwrap()
        .into_iter()
        .find(|(a, _)| *a == EIP)
        .unwrap();
    entry.nexthop = id;
    dp.put_entry(EIP, Some(entry)).unwrap();
}

/// A programmed next hop is used as it is, with no FIB lookup: its MACs
/// (here ones the FIB would never give) and its MTU; marked unusable, the
/// FIB takes over again.
#[test]
fn programmed_next_hop_is_used_without_the_fib() {
    let rig = fib_rig();
    let mut h = fast_harness(&rig);
    let (priv_dev, priv_mac, instance_mac) = rig.private.clone();
    let ifindex = integration_tests::netns::ifindex(&rig.ns, &priv_dev);
    let (dmac, smac) = ([0x02, 0xaa, 0, 0, 0, 1], [0x02, 0xaa, 0, 0, 0, 2]);
    let slot =
        h.gw.datapath_mut()
            .tx_slot(ifindex)
            .expect("a fast-path port");
    let mut hop = NextHop {
        ifindex,
        mtu: 1500,
        flags: NextHop::flags_for(true, slot),
        dmac,
        smac,
        neighbour: PRIVATE.octets(),
    };
    let dp = h.gw.datapath_mut();
    dp.set_nexthop(1, hop).unwrap();
    deliver_eip_by(dp, 1);

    let input = udp(INTERNET, 40000, EIP, 53, b"programmed", true);
    let mut expected = udp(INTERNET, 40000, PRIVATE, 53, b"programmed", true);
    expected.ttl = 63;
    h.translated_as(
        "programmed",
        Direction::Inbound,
        &input,
        Verdict::TranslatedRedirect,
        &expected.frame_with(dmac, smac),
    );

    // Its port gone from TX_SLOTS (the redirect fails): the kernel gets
    // the packet translated, TTL and MACs as they came, exactly as the
    // slow path would hand it over.
    let empty_slot = (MAX_TX_PORTS - 1) as u8;
    assert_ne!(empty_slot, slot);
    h.gw.datapath_mut()
        .set_nexthop(
            1,
            NextHop {
                flags: NextHop::flags_for(true, empty_slot),
                ..hop
            },
        )
        .unwrap();
    h.translated_as(
        "no port in the slot",
        Direction::Inbound,
        &input,
        Verdict::TranslatedPassNoTxPort,
        &udp(INTERNET, 40000, PRIVATE, 53, b"programmed", true).frame(),
    );

    // Over the next hop's MTU: passed, translated, for the kernel to
    // fragment or answer.
    hop.mtu = 100;
    h.gw.datapath_mut().set_nexthop(1, hop).unwrap();
    let big = udp(INTERNET, 40000, EIP, 53, &[7; 200], true);
    let translated = udp(INTERNET, 40000, PRIVATE, 53, &[7; 200], true);
    h.translated_as(
        "over the programmed MTU",
        Direction::Inbound,
        &big,
        Verdict::TranslatedPassFragNeeded,
        &translated.frame(),
    );

    // Unusable (neighbour gone, link down): the FIB answers.
    hop.flags = 0;
    h.gw.datapath_mut().set_nexthop(1, hop).unwrap();
    h.translated_as(
        "unusable: FIB",
        Direction::Inbound,
        &input,
        Verdict::TranslatedRedirectFib,
        &expected.frame_with(instance_mac, priv_mac),
    );
}

/// The express lane (eip-nat-ebpf/src/express.rs) takes the common packet
/// ahead of the full path and must decide it exactly as the full path
/// would. Tracing on sends every packet down the full path, so each frame
/// runs once each way, in both directions: action, whole output frame and
/// every counter must agree. The frames are the lane's packet and its near
/// misses (TTL at the edge, options, fragments, short and padded frames,
/// a zero UDP checksum, spoofed and unknown addresses, over the MTU, ICMP,
/// random bit flips in the headers), from a fixed seed.
#[test]
fn express_lane_decides_as_the_full_path() {
    let rig = fib_rig();
    let mut h = fast_harness(&rig);
    let hop = |(dev, mac, peer): &(String, [u8; 6], [u8; 6]), h: &mut Harness, mtu| {
        let ifindex = integration_tests::netns::ifindex(&rig.ns, dev);
        let slot = h.gw.datapath_mut().tx_slot(ifindex).expect("a port");
        NextHop {
            ifindex,
            mtu,
            flags: NextHop::flags_for(true, slot),
            dmac: *peer,
            smac: *mac,
            neighbour: [0; 4],
        }
    };
    let (to_private, to_public) = (
        hop(&rig.private, &mut h, 600),
        hop(&rig.public, &mut h, 1500),
    );
    let dp = h.gw.datapath_mut();
    dp.set_nexthop(1, to_private).unwrap();
    dp.set_nexthop(2, to_public).unwrap();
    dp.set_route((0, 0), 2).unwrap();
    deliver_eip_by(dp, 1);

    let addrs = [EIP, PRIVATE, INTERNET, OTHER];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut taken = std::collections::BTreeMap::<Verdict, u64>::new();
    for n in 0..4000 {
        let (src, dst) = (addrs[next(4) as usize], addrs[next(4) as usize]);
        let payload = vec![n as u8; [0, 4, 18, 700][next(4) as usize]];
        let mut p = match next(3) {
            0 => udp(src, 4000, dst, 53, &payload, next(4) != 0),
            1 => tcp(src, 443, dst, 50000, 0x18, &payload),
            _ => icmp_echo(src, dst, 8, 9, 1, &payload),
        };
        p.ttl = [0, 1, 2, 64, 255][next(5) as usize];
        let mut f = p.frame();
        match next(8) {
            0 => f[14] = 0x40 | next(16) as u8,
            1 => [f[20], f[21]] = [next(256) as u8, next(256) as u8],
            2 => f.truncate(14 + next(f.len() as u64 - 13) as usize),
            3 => f.extend([0u8; 6]),
            4 => [f[16], f[17]] = (next(120) as u16).to_be_bytes(),
            5 => {
                let i = next(f.len().min(64) as u64) as usize;
                f[i] ^= 1 << next(8);
            }
            _ => {}
        }
        for direction in [Direction::Inbound, Direction::Outbound] {
            let mut runs = [FLAG_TRACE, 0].map(|flags| {
                h.flags = flags;
                let (verdicts, eip) = (h.verdicts(), h.eip());
                let (action, out) = h.run(direction, &f);
                let moved: Vec<_> = h
                    .verdicts()
                    .into_iter()
                    .zip(verdicts)
                    .filter(|((_, _, a), (_, _, b))| a.packets != b.packets)
                    .map(|((d, v, a), (_, _, b))| (d, v, a.packets - b.packets, a.bytes - b.bytes))
                    .collect();
                (action, out, moved, counted_since(h.eip(), eip))
            });
            let [full, express] = &mut runs;
            assert_eq!(
                full,
                express,
                "frame {n} {direction:?}: the express lane decided otherwise\n frame {}",
                hex(&f)
            );
            if let [(_, v, ..)] = full.2[..] {
                *taken.entry(v).or_default() += 1;
            }
        }
    }
    // The lane's own packet was among them, both ways, and so were the
    // ones it leaves to the full path.
    println!("verdicts: {taken:?}");
    assert!(taken.get(&Verdict::TranslatedRedirect) > Some(&200));
    assert!(taken.len() > 8);
}

#[test]
fn fast_path_falls_back_to_the_kernel_translated() {
    let rig = fib_rig();
    let mut h = fast_harness(&rig);
    // Fallbacks leave TTL and MACs for the kernel: the frame is exactly the
    // slow path's.
    let mut input = udp(INTERNET, 1, EIP, 2, b"last hop", true);
    input.ttl = 1;
    let mut expected = udp(INTERNET, 1, PRIVATE, 2, b"last hop", true);
    expected.ttl = 1;
    h.translated_as(
        "ttl 1",
        Direction::Inbound,
        &input,
        Verdict::TranslatedPassTtlExceeded,
        &expected.frame(),
    );

    let fallback =
        |h: &mut Harness, name: &str, n: u8, private: Ipv4Addr, size: usize, verdict: Verdict| {
            let eip = Ipv4Addr::new(203, 0, 113, 100 + n);
            associate_nat(&mut h.gw, eip, private).unwrap();
            let data = vec![n; size];
            let input = udp(INTERNET, 1, eip, 2, &data, true);
            let f = udp(INTERNET, 1, private, 2, &data, true).frame();
            h.case(name, Direction::Inbound, &input.frame(), verdict, &f, NONE);
        };
    fallback(
        &mut h,
        "no neighbour",
        1,
        NO_NEIGH_IP,
        10,
        Verdict::TranslatedPassNoNeighbour,
    );
    // 1300 bytes of IPv4 over a 1280-byte MTU; the kernel fragments it or,
    // with DF (set by the builder), sends ICMP fragmentation needed.
    fallback(
        &mut h,
        "frag needed",
        2,
        SMALL_MTU_IP,
        1272,
        Verdict::TranslatedPassFragNeeded,
    );
    fallback(
        &mut h,
        "no route",
        3,
        NO_ROUTE_IP,
        10,
        Verdict::TranslatedPassNotForwarded,
    );
    fallback(
        &mut h,
        "egress not in TX_PORTS",
        4,
        NO_TX_PORT_IP,
        10,
        Verdict::TranslatedPassNoTxPort,
    );
    // Exactly the MTU still takes the fast path, out of the small-MTU side.
    let eip = Ipv4Addr::new(203, 0, 113, 102);
    let data = vec![7u8; 1280 - 28];
    let input = udp(INTERNET, 1, eip, 2, &data, true);
    let mut expected = udp(INTERNET, 1, SMALL_MTU_IP, 2, &data, true);
    expected.ttl = 63;
    let (c_mac, c_neigh) = ([0x02, 0xfa, 0, 0, 0, 3], [0x02, 0xfb, 0, 0, 0, 3]);
    h.case(
        "at the MTU",
        Direction::Inbound,
        &input.frame(),
        Verdict::TranslatedRedirectFib,
        &expected.frame_with(c_neigh, c_mac),
        NONE,
    );
}

// ---- The benchmark's own programs: what it measures must be right ----

/// What the benchmark's generators send: 65,536 flows, 256 source ports
/// per destination.
fn bench_traffic() -> integration_tests::rig::Traffic {
    integration_tests::rig::Traffic {
        src_mac: MAC_A,
        dst_mac: MAC_B,
        src: INTERNET.octets(),
        dst_base: [198, 18, 1, 0],
        sport_base: 1024,
        dport: 9,
        flows: 65_536,
        frame_len: 60,
    }
}

/// Flow `flow` as [`bench_traffic`] describes it, checksums verified.
fn assert_generated(frame: &[u8], flow: u32) {
    assert_eq!(frame.len(), 60);
    assert_eq!(&frame[..12], &[MAC_B, MAC_A].concat()[..]);
    let p = integration_tests::packet::parse_and_verify(frame)
        .unwrap_or_else(|e| panic!("flow {flow}: {e}"));
    assert_eq!(p.src, INTERNET);
    assert_eq!(
        p.dst,
        Ipv4Addr::from(u32::from_be_bytes([198, 18, 1, 0]) + flow / 256)
    );
    assert_eq!(p.ports(), Some((1024 + (flow % 256) as u16, 9)));
}

#[test]
fn generator_frames_are_valid_and_follow_the_flow_pattern() {
    require_root();
    let mut generator =
        integration_tests::rig::Generator::new(1, &bench_traffic()).expect("load xdp_gen");
    for flow in 0u32..300 {
        assert_generated(&generator.sample().expect("run xdp_gen"), flow);
    }
}

/// The looping generator rewrites whatever comes back (here a frame the
/// sink saw, already translated) into the next flow and sends it on; once
/// stopped it drops what comes back, so the loop empties.
#[test]
fn looping_generator_writes_the_next_flow_and_stops_when_told() {
    require_root();
    let mut generator =
        integration_tests::rig::LoopGenerator::new(1, &bench_traffic()).expect("load xdp_gen_loop");
    // A frame of the loop as the sink hands it back: the template's
    // payload (the generator writes only the headers), translated.
    let (mut returned, _) = bench_traffic().build();
    returned[30..34].copy_from_slice(&[10, 200, 1, 7]);
    let (action, _) = generator.run(&returned).unwrap();
    assert_eq!(action, XDP_DROP, "stopped until started");
    assert_eq!(generator.generated().unwrap(), 0);
    generator.start().unwrap();
    for flow in 0u32..300 {
        let (action, frame) = generator.run(&returned).unwrap();
        assert_eq!(action, XDP_REDIRECT, "flow {flow} goes out again");
        assert_generated(&frame, flow);
    }
    assert_eq!(generator.generated().unwrap(), 300);
    generator.stop().unwrap();
    assert_eq!(generator.run(&returned).unwrap().0, XDP_DROP);
}

/// A good frame, a wrong destination and a bad checksum, twice each as
/// good: what the sinks' tests feed them.
fn sink_frames() -> [Vec<u8>; 4] {
    let good = udp(INTERNET, 1, Ipv4Addr::new(10, 200, 1, 7), 9, b"x", true).frame();
    let wrong_dst = udp(INTERNET, 1, EIP, 9, b"x", true).frame();
    let mut bad_checksum = good.clone();
    bad_checksum[24] ^= 0x40;
    [good.clone(), good, wrong_dst, bad_checksum]
}

/// `sink` fed [`sink_frames`]: each gets `action`, and two count as good
/// and two as bad.
fn assert_sink_counts(mut sink: integration_tests::rig::Sink, action: u32, what: &str) {
    for f in sink_frames() {
        assert_eq!(sink.run(&f).unwrap(), action, "{what}");
    }
    let c = sink.counters().unwrap();
    assert_eq!((c.good, c.bad), (2, 2));
}

#[test]
fn sink_counts_only_the_expected_addresses_with_valid_checksums() {
    require_root();
    let sink = integration_tests::rig::Sink::detached([10, 200, 0, 0], 16).expect("load xdp_sink");
    assert_sink_counts(sink, XDP_DROP, "the sink drops everything");
}

#[test]
fn looping_sink_counts_as_the_sink_and_hands_every_frame_back() {
    require_root();
    let sink = integration_tests::rig::Sink::detached_looping([10, 200, 0, 0], 16, 1)
        .expect("load xdp_sink_loop");
    assert_sink_counts(sink, XDP_REDIRECT, "every frame goes back");
}

/// The benchmark's reference NAT must do a real NAT's work, correctly:
/// every output frame is compared whole with one built independently.
#[test]
fn min_nat_translates_and_forwards_like_a_router() {
    require_root();
    let (next_hop, own) = ([0x02, 0, 0, 0, 0, 0x0c], [0x02, 0, 0, 0, 0, 0x0d]);
    // SAFETY: a valid C string. Test-run does not transmit: the port is
    // only there for the redirect to find.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    let macs = eip_nat_rig_common::MinNatConfig {
        dst_mac: next_hop,
        src_mac: own,
    };
    let mut nat = integration_tests::rig::MinNat::load(macs, lo, 4).expect("load xdp_min_nat");
    nat.insert_all([(EIP, PRIVATE)]).unwrap();
    let later_fragment = |dst| {
        let mut p = Ipv4::new(INTERNET, dst, 17, b"not a UDP header".to_vec());
        p.frags = 0x00b9;
        p
    };
    // Each case, addressed to a destination.
    type Packet = fn(Ipv4Addr) -> Ipv4;
    let cases: [(&str, Packet); 5] = [
        ("UDP", |d| udp(INTERNET, 4000, d, 9, b"payload", true)),
        ("UDP without checksum", |d| {
            udp(INTERNET, 4000, d, 9, b"payload", false)
        }),
        ("TCP", |d| tcp(INTERNET, 4000, d, 80, 0x02, b"")),
        ("ICMP", |d| icmp_echo(INTERNET, d, 8, 1, 1, b"ping")),
        ("later fragment", later_fragment),
    ];
    for (name, packet) in cases {
        let mut expected = packet(PRIVATE);
        expected.ttl -= 1;
        let (action, out) = nat.run(&packet(EIP).frame()).unwrap();
        assert_eq!(action, XDP_REDIRECT, "{name}");
        assert_eq!(
            hex(&out),
            hex(&expected.frame_with(next_hop, own)),
            "{name}"
        );
    }
    // What it does not handle goes to the kernel untouched. (It forwards
    // TTL 1 on purpose: see its comment.)
    let mut options = udp(INTERNET, 4000, EIP, 9, b"x", true);
    options.options = vec![1, 1, 1, 0];
    let mut arp = udp(INTERNET, 4000, EIP, 9, b"x", true).frame();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    for (name, frame) in [
        (
            "no mapping",
            udp(INTERNET, 4000, OTHER, 9, b"x", true).frame(),
        ),
        ("IP options", options.frame()),
        ("not IPv4", arp),
    ] {
        assert_eq!(nat.run(&frame).unwrap(), (XDP_PASS, frame), "{name}");
    }
}

// ---- Anti-spoofing and hairpin ----

#[test]
fn spoofed_sources_are_dropped_with_their_reason() {
    let mut h = Harness::new();
    // From the Internet, claiming to be our EIP or an instance's private IP.
    h.dropped(
        "eip as source in",
        &udp(EIP, 1, INTERNET, 2, b"x", true).frame(),
        Verdict::DropSpoofedEip,
    );
    h.dropped(
        "eip to eip in",
        &udp(EIP, 1, EIP, 2, b"x", true).frame(),
        Verdict::DropSpoofedEip,
    );
    h.dropped(
        "private as source in",
        &udp(PRIVATE, 1, EIP, 2, b"x", true).frame(),
        Verdict::DropSpoofedPrivate,
    );
    // From an instance, claiming an EIP as its source.
    let f = udp(EIP, 1, INTERNET, 2, b"x", true).frame();
    h.case(
        "eip as source out",
        Direction::Outbound,
        &f,
        Verdict::DropSpoofedEip,
        &[],
        NONE,
    );
}

#[test]
fn hairpin_translates_both_addresses_in_one_pass() {
    let mut h = Harness::new();
    let (eip2, private2) = (
        Ipv4Addr::new(203, 0, 113, 20),
        Ipv4Addr::new(10, 200, 0, 20),
    );
    let slot2 = associate_nat(&mut h.gw, eip2, private2).unwrap();
    let counters = |h: &mut Harness| {
        let a = h.eip();
        let b = h.gw.datapath_mut().eip_counters(slot2).unwrap();
        (a.out_packets, b.in_packets, a.in_packets, b.out_packets)
    };

    // Instance 1 → instance 2's EIP: source becomes EIP 1, destination
    // private 2; checksums recomputed in full by the builder.
    let before = counters(&mut h);
    let input = tcp(PRIVATE, 40000, eip2, 443, 0x02, b"");
    let expected = tcp(EIP, 40000, private2, 443, 0x02, b"");
    h.case(
        "hairpin tcp",
        Direction::Outbound,
        &input.frame(),
        Verdict::Translated,
        &expected.frame(),
        outbound(ip_len(&input)),
    );
    let after = counters(&mut h);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 1),
        "sender out, target in"
    );

    // The reply comes back the same way.
    let input = tcp(private2, 443, EIP, 40000, 0x12, b"");
    let expected = tcp(eip2, 443, PRIVATE, 40000, 0x12, b"");
    h.case(
        "hairpin reply",
        Direction::Outbound,
        &input.frame(),
        Verdict::Translated,
        &expected.frame(),
        inbound(ip_len(&input)),
    );

    // UDP, and to its own EIP.
    let input = udp(PRIVATE, 5000, EIP, 5001, b"self", true);
    let expected = udp(EIP, 5000, PRIVATE, 5001, b"self", true);
    let n = ip_len(&input) as u64;
    h.case(
        "hairpin to itself",
        Direction::Outbound,
        &input.frame(),
        Verdict::Translated,
        &expected.frame(),
        EipCounters {
            in_packets: 1,
            in_bytes: n,
            out_packets: 1,
            out_bytes: n,
        },
    );

    // A sender without an EIP keeps its source; the destination is still
    // translated.
    let loner = Ipv4Addr::new(10, 200, 0, 30);
    let input = udp(loner, 5000, eip2, 53, b"q", false);
    let expected = udp(loner, 5000, private2, 53, b"q", false);
    h.case(
        "hairpin, sender without eip",
        Direction::Outbound,
        &input.frame(),
        Verdict::Translated,
        &expected.frame(),
        NONE,
    );
}

// ---- ICMP errors: the quoted packet is translated too (RFC 5508 §4.2) ----

const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);

#[test]
fn icmp_errors_from_the_internet_reach_the_instance_translated() {
    let mut h = Harness::new();
    // Port unreachable about a UDP datagram the instance sent (it left with
    // source EIP): whole datagram quoted, so the quoted UDP checksum is
    // fixed too. Expected: built from scratch with the private IP.
    let sent = udp(EIP, 5000, REMOTE, 53, b"query", true);
    let original = udp(PRIVATE, 5000, REMOTE, 53, b"query", true);
    let input = icmp_error(ROUTER, EIP, 3, 3, [0; 4], &sent.datagram());
    let expected = icmp_error(ROUTER, PRIVATE, 3, 3, [0; 4], &original.datagram());
    h.translated("port unreachable in", Direction::Inbound, &input, &expected);

    // Fragmentation needed (MTU 1280) about a TCP segment, quoting only the
    // IPv4 header and 8 bytes: no TCP checksum in the quote, so those 8
    // bytes (ports, sequence number) stay as they are.
    let sent = tcp(EIP, 443, REMOTE, 50000, 0x18, &[0x61; 1400]);
    let original = tcp(PRIVATE, 443, REMOTE, 50000, 0x18, &[0x61; 1400]);
    let cut = |p: &Ipv4| p.datagram()[..28].to_vec();
    assert_eq!(cut(&sent)[20..], cut(&original)[20..]);
    let mtu = [0, 0, 0x05, 0x00];
    let input = icmp_error(ROUTER, EIP, 3, 4, mtu, &cut(&sent));
    let expected = icmp_error(ROUTER, PRIVATE, 3, 4, mtu, &cut(&original));
    h.translated(
        "frag needed in, 8 bytes quoted",
        Direction::Inbound,
        &input,
        &expected,
    );

    // Time exceeded quoting a full TCP header (checksum included).
    let quote = |p: &Ipv4| p.datagram()[..40].to_vec();
    let input = icmp_error(ROUTER, EIP, 11, 0, [0; 4], &quote(&sent));
    let expected = icmp_error(ROUTER, PRIVATE, 11, 0, [0; 4], &quote(&original));
    assert_ne!(
        quote(&sent)[36..38],
        quote(&original)[36..38],
        "the quoted TCP checksum differs"
    );
    h.translated(
        "time exceeded in, tcp header quoted",
        Direction::Inbound,
        &input,
        &expected,
    );
}

#[test]
fn icmp_errors_from_the_instance_leave_translated() {
    let mut h = Harness::new();
    // The instance answers a datagram it received (destination was its
    // private IP) with port unreachable: the outer source and the quoted
    // destination become the EIP.
    let received = udp(REMOTE, 40000, PRIVATE, 9, b"probe", true);
    let as_sent = udp(REMOTE, 40000, EIP, 9, b"probe", true);
    let input = icmp_error(PRIVATE, REMOTE, 3, 3, [0; 4], &received.datagram());
    let expected = icmp_error(EIP, REMOTE, 3, 3, [0; 4], &as_sent.datagram());
    h.translated(
        "port unreachable out",
        Direction::Outbound,
        &input,
        &expected,
    );
}

#[test]
fn icmp_errors_that_cannot_be_translated_are_dropped() {
    let mut h = Harness::new();
    let sent = udp(EIP, 5000, REMOTE, 53, b"query", true);
    // Quote shorter than an IPv4 header + 8 bytes.
    let short = icmp_error(ROUTER, EIP, 3, 3, [0; 4], &sent.datagram()[..24]);
    h.dropped(
        "quote cut short",
        &short.frame(),
        Verdict::DropIcmpErrorTruncated,
    );
    // Quote that is not IPv4.
    let mut not_v4 = sent.datagram();
    not_v4[0] = 0x65;
    let bad = icmp_error(ROUTER, EIP, 3, 3, [0; 4], &not_v4);
    h.dropped(
        "quote not ipv4",
        &bad.frame(),
        Verdict::DropIcmpErrorTruncated,
    );
    // Quote of a later fragment: no ports to go by.
    let mut frag = sent.clone();
    frag.frags = 100;
    let err = icmp_error(ROUTER, EIP, 11, 1, [0; 4], &frag.datagram());
    h.dropped(
        "quote is a later fragment",
        &err.frame(),
        Verdict::DropIcmpErrorInnerFragment,
    );
    // An error about a packet from someone else: only the outer header is
    // translated.
    let other = udp(
        Ipv4Addr::new(203, 0, 113, 77),
        5000,
        REMOTE,
        53,
        b"query",
        true,
    );
    let input = icmp_error(ROUTER, EIP, 3, 3, [0; 4], &other.datagram());
    let expected = icmp_error(ROUTER, PRIVATE, 3, 3, [0; 4], &other.datagram());
    h.translated(
        "quote of another source",
        Direction::Inbound,
        &input,
        &expected,
    );
}

// ---- Association modes: cut-through, multi-EIP, detached ENIs ----

const SECONDARY: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 30);
const EIP_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
const EIP_C: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 31);

/// The harness plus a secondary ENI `eni-s` (primary IP SECONDARY),
/// attached to the instance of PRIVATE, with `eips` associated in `mode`.
/// Per-EIP counters are then those of the first of `eips`.
fn with_secondary(mode: Mode, eips: &[Ipv4Addr]) -> Harness {
    let mut h = Harness::new();
    for ev in [
        Event::CreateEni {
            eni: "eni-s".into(),
            kind: EniKind::Secondary,
            primary_ip: SECONDARY,
            instance: None,
            location: Default::default(),
        },
        Event::AttachEni {
            eni: "eni-s".into(),
            instance: format!("i-{PRIVATE}"),
            location: Default::default(),
        },
    ] {
        h.gw.apply(&ev).unwrap();
    }
    for eip in eips {
        h.gw.apply(&Event::Associate {
            eip: *eip,
            eni: "eni-s".into(),
            private_ip: None,
            mode,
        })
        .unwrap();
    }
    h.slot = h.gw.state().association(eips[0]).unwrap().slot;
    h
}

#[test]
fn cut_through_eip_travels_unchanged_and_replaces_the_private_ip() {
    let mut h = with_secondary(Mode::CutThrough, &[EIP_B]);
    // Inbound and outbound alike: the frame leaves as it came (checksums
    // included), counted for the EIP.
    let inbound_pkt = tcp(INTERNET, 40000, EIP_B, 443, 0x02, b"hello");
    h.translated(
        "cut-through in",
        Direction::Inbound,
        &inbound_pkt,
        &inbound_pkt,
    );
    let outbound_pkt = udp(EIP_B, 443, INTERNET, 40000, b"reply", true);
    h.translated(
        "cut-through out, EIP as source is not spoofing",
        Direction::Outbound,
        &outbound_pkt,
        &outbound_pkt,
    );
    // The ENI's private IP is gone, both ways.
    let to_private = udp(INTERNET, 1, SECONDARY, 2, b"x", true).frame();
    h.dropped(
        "to the replaced private IP",
        &to_private,
        Verdict::DropPrivateDisabled,
    );
    let from_private = udp(SECONDARY, 2, INTERNET, 1, b"x", true).frame();
    h.case(
        "from the replaced private IP",
        Direction::Outbound,
        &from_private,
        Verdict::DropPrivateDisabled,
        &[],
        NONE,
    );
    // From the Internet, the EIP as a source is still spoofing.
    let spoof = udp(EIP_B, 1, EIP_B, 2, b"x", true).frame();
    h.dropped(
        "EIP as source from outside",
        &spoof,
        Verdict::DropSpoofedEip,
    );
}

#[test]
fn multi_eip_travels_unchanged_and_the_private_ip_keeps_working() {
    let mut h = with_secondary(Mode::MultiEip, &[EIP_B, EIP_C]);
    for eip in [EIP_B, EIP_C] {
        h.slot = h.gw.state().association(eip).unwrap().slot;
        let p = udp(INTERNET, 1000, eip, 53, b"query", true);
        h.translated("multi-EIP in", Direction::Inbound, &p, &p);
        let p = udp(eip, 53, INTERNET, 1000, b"answer", false);
        h.translated("multi-EIP out", Direction::Outbound, &p, &p);
    }
    let from_private = udp(SECONDARY, 2, INTERNET, 1, b"x", true).frame();
    h.untouched(
        "the ENI's private IP is not touched",
        Direction::Outbound,
        &from_private,
        Verdict::PassNoMapping,
    );
}

#[test]
fn hairpin_from_nat_to_a_passthrough_eip() {
    let mut h = with_secondary(Mode::MultiEip, &[EIP_B]);
    // The NAT instance reaches the multi-EIP ENI by its EIP: source
    // translated, destination left as the ENI owns it.
    let input = udp(PRIVATE, 5000, EIP_B, 80, b"hi", true);
    let expected = udp(EIP, 5000, EIP_B, 80, b"hi", true).frame();
    let n = ip_len(&input) as u64;
    let before = (h.eip(), h.gw.datapath_mut().eip_counters(h.slot).unwrap());
    let nat_slot = h.gw.state().association(EIP).unwrap().slot;
    h.slot = nat_slot;
    h.case(
        "hairpin NAT → multi-EIP",
        Direction::Outbound,
        &input.frame(),
        Verdict::Translated,
        &expected,
        outbound(n as usize),
    );
    let b = h.gw.state().association(EIP_B).unwrap().slot;
    let after = h.gw.datapath_mut().eip_counters(b).unwrap();
    assert_eq!(after.in_packets - before.1.in_packets, 1);
}

#[test]
fn a_detached_enis_addresses_are_dropped_until_it_is_attached_again() {
    let mut h = with_secondary(Mode::Nat, &[EIP_B]);
    h.gw.apply(&Event::DetachEni {
        eni: "eni-s".into(),
    })
    .unwrap();
    let to_eip = udp(INTERNET, 1, EIP_B, 2, b"x", true).frame();
    h.dropped("to a detached ENI's EIP", &to_eip, Verdict::DropEniDetached);
    let from_private = udp(SECONDARY, 2, INTERNET, 1, b"x", true).frame();
    h.case(
        "from a detached ENI's private IP",
        Direction::Outbound,
        &from_private,
        Verdict::DropEniDetached,
        &[],
        NONE,
    );
    h.gw.apply(&Event::AttachEni {
        eni: "eni-s".into(),
        instance: format!("i-{PRIVATE}"),
        location: Default::default(),
    })
    .unwrap();
    let p = udp(INTERNET, 1, EIP_B, 2, b"x", true);
    let q = udp(INTERNET, 1, SECONDARY, 2, b"x", true);
    h.translated("attached again", Direction::Inbound, &p, &q);
}

/// Random events through the real gateway into the real maps: after each
/// one, the maps hold exactly what the model says (the property test in
/// `model/oracle.rs` checks the model against an oracle of the rules).
#[test]
fn the_maps_follow_random_events() {
    let mut h = Harness::new();
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut accepted, mut refused, mut most) = (0, 0, 0);
    for _ in 0..3000 {
        let eni = format!("eni-{}", next(4));
        let ip = |k: u64| Ipv4Addr::new(10, 9, 0, k as u8 + 1);
        let eip = |k: u64| Ipv4Addr::new(203, 0, 113, 100 + k as u8);
        let ev = match next(9) {
            0 => Event::CreateEni {
                eni,
                kind: if next(3) == 0 {
                    EniKind::Primary
                } else {
                    EniKind::Secondary
                },
                primary_ip: ip(next(8)),
                instance: (next(2) == 0).then(|| format!("i-{}", next(3))),
                location: Default::default(),
            },
            1 => Event::AttachEni {
                eni,
                instance: format!("i-{}", next(3)),
                location: Default::default(),
            },
            2 => Event::DetachEni { eni },
            3 => Event::AssignIp {
                eni,
                ip: ip(next(8)),
            },
            4 | 5 => Event::Associate {
                eip: eip(next(6)),
                eni,
                private_ip: (next(2) == 0).then(|| ip(next(8))),
                mode: [Mode::Nat, Mode::CutThrough, Mode::MultiEip][next(3) as usize],
            },
            6 => Event::Disassociate { eip: eip(next(6)) },
            7 => Event::DeleteEni { eni },
            _ => Event::RevokeIp {
                eni,
                ip: ip(next(8)),
            },
        };
        match h.gw.apply(&ev) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
        let maps: std::collections::BTreeMap<_, _> =
            h.gw.datapath_mut().entries().unwrap().into_iter().collect();
        assert_eq!(maps, tables::all_entries(h.gw.state()), "after {ev:?}");
        most = most.max(h.gw.state().associations().count());
    }
    // The walk went somewhere: both answers, several associations at once.
    assert!(
        accepted > 100 && refused > 100 && most >= 4,
        "{accepted} accepted, {refused} refused, at most {most} associations"
    );
}
