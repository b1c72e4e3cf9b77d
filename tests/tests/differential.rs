//! Differential testing: random and mutated packets through the loaded
//! program (BPF_PROG_TEST_RUN) and through the reference model
//! (`integration_tests::model`); verdicts, whole output frames and counters
//! must be identical.
//!
//! `EIP_NAT_FUZZ_PACKETS` (default 100,000) and `EIP_NAT_FUZZ_SEED`
//! (default: from the clock, printed) set the run; `cargo xtask fuzz
//! --packets N [--seed S]` sets both. A failing seed reproduces its failure.

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use eip_nat::{
    datapath::{Datapath, LoadOptions},
    model::{EniKind, Event, Limits, Mode},
};
use eip_nat_common::{Config, Direction, EipCounters, Verdict};
use integration_tests::{
    model::{self, Tables},
    packet::{hex, icmp_echo, icmp_error, tcp, udp, Ipv4},
    require_root,
};

/// xorshift64*: reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// NAT EIPs and their private IPs, pairwise.
const EIPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(203, 0, 113, 1),
    Ipv4Addr::new(203, 0, 113, 2),
    Ipv4Addr::new(203, 0, 113, 3),
];
const PRIVATES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 0, 0, 1),
    Ipv4Addr::new(10, 0, 0, 2),
    Ipv4Addr::new(10, 0, 0, 3),
];
/// The other modes, each on a secondary ENI: cut-through (EIP, replaced
/// private IP), multi-EIP (EIP, private IP still usable), and a NAT pair on
/// a detached ENI.
const CUT_THROUGH: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(203, 0, 113, 4), Ipv4Addr::new(10, 0, 0, 4));
const MULTI_EIP: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(203, 0, 113, 5), Ipv4Addr::new(10, 0, 0, 5));
const DETACHED: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(203, 0, 113, 6), Ipv4Addr::new(10, 0, 0, 6));
const MODES: [(Ipv4Addr, Ipv4Addr); 3] = [CUT_THROUGH, MULTI_EIP, DETACHED];
const OTHERS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(10, 0, 0, 99),
    Ipv4Addr::new(203, 0, 113, 99),
];

fn address(r: &mut Rng) -> Ipv4Addr {
    match r.below(4) {
        0 => r.pick(&EIPS),
        1 => r.pick(&PRIVATES),
        2 => {
            let (eip, private) = r.pick(&MODES);
            if r.below(2) == 0 {
                eip
            } else {
                private
            }
        }
        _ => r.pick(&OTHERS),
    }
}

/// A well-formed packet of some kind the datapath handles.
fn valid(r: &mut Rng) -> Ipv4 {
    let (s, d) = (address(r), address(r));
    let len = r.below(64) as usize;
    let payload = r.bytes(len);
    let (sp, dp) = (r.next() as u16, r.next() as u16);
    let mut p = match r.below(7) {
        0 => udp(s, sp, d, dp, &payload, true),
        1 => udp(s, sp, d, dp, &payload, false),
        2 => tcp(s, sp, d, dp, r.next() as u8, &payload),
        3 => icmp_echo(s, d, r.pick(&[0, 8]), sp, dp, &payload),
        4 | 5 => {
            // An ICMP error quoting a packet that went the other way,
            // quoted in full or cut to 8 bytes after its header, or less.
            let quoted_kind = r.below(3);
            let inner = match quoted_kind {
                0 => udp(d, dp, address(r), sp, &payload, r.chance(80)),
                1 => tcp(d, dp, address(r), sp, 0x18, &payload),
                _ => icmp_echo(d, address(r), 8, sp, dp, &payload),
            };
            let mut q = inner.datagram();
            let cut = match r.below(4) {
                0 => q.len(),
                1 => 28.min(q.len()),
                2 => 40.min(q.len()),
                _ => r.below(q.len() as u64 + 1) as usize,
            };
            q.truncate(cut);
            let kind = r.pick(&[3, 11, 12, 5]);
            icmp_error(s, d, kind, r.below(16) as u8, [0, 0, 5, 0], &q)
        }
        _ => Ipv4::new(s, d, r.pick(&[47, 50, 132]), payload),
    };
    if r.chance(20) {
        let words = 1 + r.below(3) as usize;
        p.options = r.bytes(4 * words);
    }
    if r.chance(15) {
        p.frags = r.pick(&[0x2000, 0x0001, 0x20b9, 0x4000 | 0x0010]);
    }
    p.ttl = r.pick(&[64, 1, 0, 255]);
    p
}

/// A frame to test: valid, or valid and then damaged, or noise.
fn frame(r: &mut Rng) -> Vec<u8> {
    let mut f = valid(r).frame();
    match r.below(12) {
        0..=4 => {}
        // 802.1Q tag in front of the IPv4 header: passed untouched.
        10 => {
            let inner = f.split_off(12);
            f.extend([0x81, 0x00, 0x00, r.next() as u8]);
            f.extend(inner);
        }
        // A wrong IPv4 header checksum, or a wrong TCP/UDP/ICMP one: the
        // incremental updates must carry the error, not repair it.
        11 => {
            let at = if r.chance(50) {
                24
            } else {
                14 + 20 + r.below(20) as usize
            };
            if at + 1 < f.len() {
                f[at] ^= 0x5a;
            }
        }
        5 => f.truncate(14 + r.below(f.len() as u64 - 13) as usize),
        6 => {
            for _ in 0..1 + r.below(4) {
                let i = r.below(f.len() as u64) as usize;
                f[i] ^= 1 << r.below(8);
            }
        }
        7 => f[14] = 0x40 | r.below(16) as u8,
        8 => {
            let len = r.below(f.len() as u64 + 40) as u16;
            f[16..18].copy_from_slice(&len.to_be_bytes());
        }
        _ => {
            let n = 14 + r.below(120) as usize;
            f = r.bytes(n);
            if r.chance(70) {
                f[12..14].copy_from_slice(&[0x08, 0x00]);
            }
        }
    }
    if r.chance(10) {
        let pad = r.below(30) as usize;
        let junk = r.bytes(pad);
        f.extend(junk);
    }
    f
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}")))
}

#[test]
fn datapath_and_model_agree_on_random_and_mutated_packets() {
    require_root();
    let packets = env_u64("EIP_NAT_FUZZ_PACKETS").unwrap_or(100_000);
    let seed = env_u64("EIP_NAT_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!(
        "differential: {packets} packets, seed {seed} (EIP_NAT_FUZZ_SEED={seed} reproduces it)"
    );

    let dp = Datapath::load(LoadOptions {
        max_associations: 16,
        ..Default::default()
    })
    .expect("load");
    let mut gw = integration_tests::in_memory_gateway(
        dp,
        Limits {
            max_associations: 16,
            ..Default::default()
        },
    )
    .unwrap();
    for (e, p) in EIPS.iter().zip(PRIVATES) {
        integration_tests::associate_nat(&mut gw, *e, p).unwrap();
    }
    let instance = format!("i-{}", PRIVATES[0]);
    for (n, ((eip, private), mode)) in MODES
        .iter()
        .zip([Mode::CutThrough, Mode::MultiEip, Mode::Nat])
        .enumerate()
    {
        let eni = format!("eni-s{n}");
        let mut events = vec![Event::CreateEni {
            eni: eni.clone(),
            kind: EniKind::Secondary,
            primary_ip: *private,
            instance: None,
            location: Default::default(),
        }];
        if (*eip, *private) != DETACHED {
            events.push(Event::AttachEni {
                eni: eni.clone(),
                instance: instance.clone(),
                location: Default::default(),
            });
        }
        events.push(Event::Associate {
            eip: *eip,
            eni,
            private_ip: None,
            mode,
        });
        gw.apply_batch(&events, None).unwrap();
    }
    // The model reads the same tables the datapath holds.
    // The public side reaches part of OTHERS (a listed prefix that also
    // holds private IPs, which stay unreachable) and not the rest.
    let routed = ["10.0.0.0/24", "198.51.100.0/25"].map(|p| p.parse().unwrap());
    gw.set_routed_prefixes(routed.into()).unwrap();
    let tables = Tables {
        addresses: gw.datapath_mut().entries().unwrap().into_iter().collect(),
        public_accept: gw
            .datapath()
            .public_accept()
            .unwrap()
            .into_keys()
            .map(|n| (n.network(), n.prefix_len()))
            .collect(),
    };
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    let mut r = Rng(seed);
    let mut expected_verdicts =
        std::collections::HashMap::<(Direction, Verdict), (u64, u64)>::new();
    let mut expected_eips = std::collections::HashMap::<u32, EipCounters>::new();
    let verdicts_before = gw.datapath_mut().verdict_counters().unwrap();
    let mut seen = std::collections::BTreeMap::<&str, u64>::new();
    let mut current = None;
    for n in 0..packets {
        let input = frame(&mut r);
        let direction = match r.below(10) {
            0 => Direction::Other,
            1..=5 => Direction::Inbound,
            _ => Direction::Outbound,
        };
        if current != Some(direction) {
            let (public_ifindex, private_ifindex) = match direction {
                Direction::Inbound => (lo, 0),
                Direction::Outbound => (0, lo),
                Direction::Other => (0, 0),
            };
            gw.datapath_mut()
                .set_config(Config {
                    public_ifindex,
                    private_ifindex,
                    ..Default::default()
                })
                .unwrap();
            current = Some(direction);
        }
        let mut out = vec![0u8; input.len() + 64];
        let result = gw
            .datapath_mut()
            .program_mut()
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("test run");
        out.truncate(result.data_size_out as usize);
        let want = model::run(&tables, direction, &input);
        if result.return_value != want.verdict.action() || out != want.frame {
            panic!(
                "packet {n} (seed {seed}), {direction:?}: datapath action {} vs model {:?} ({})\n input {}\n datapath {}\n model    {}",
                result.return_value,
                want.verdict,
                want.verdict.action(),
                hex(&input),
                hex(&out),
                hex(&want.frame)
            );
        }
        *seen.entry(want.verdict.name()).or_default() += 1;
        let c = expected_verdicts
            .entry((direction, want.verdict))
            .or_default();
        c.0 += 1;
        c.1 += input.len() as u64;
        for (slot, inbound, bytes) in want.eip_counts {
            let e = expected_eips.entry(slot).or_default();
            if inbound {
                e.in_packets += 1;
                e.in_bytes += bytes as u64;
            } else {
                e.out_packets += 1;
                e.out_bytes += bytes as u64;
            }
        }
    }
    // Counters: every (direction, verdict) and every association.
    let after = gw.datapath_mut().verdict_counters().unwrap();
    for ((d, v, a), (_, _, b)) in after.into_iter().zip(verdicts_before) {
        let want = expected_verdicts.get(&(d, v)).copied().unwrap_or_default();
        assert_eq!(
            (a.packets - b.packets, a.bytes - b.bytes),
            want,
            "counter {d:?}/{v:?} (seed {seed})"
        );
    }
    for slot in 0..(EIPS.len() + MODES.len()) as u32 {
        let got = gw.datapath_mut().eip_counters(slot).unwrap();
        assert_eq!(
            got,
            expected_eips.get(&slot).copied().unwrap_or_default(),
            "slot {slot} (seed {seed})"
        );
    }
    println!("differential: 0 mismatches; verdicts seen: {seen:?}");
    // The generator must reach every kind of outcome it was written for.
    for v in [
        "translated",
        "pass_no_mapping",
        "drop_spoofed_eip",
        "drop_spoofed_private",
        "drop_icmp_error_truncated",
        "drop_icmp_error_inner_fragment",
        "drop_l4_truncated",
        "drop_ipv4_bad_header",
        "drop_ipv4_truncated",
        "pass_not_ipv4",
        "pass_unknown_interface",
        "drop_private_disabled",
        "drop_eni_detached",
        "drop_public_to_private_ip",
        "drop_public_unlisted",
    ] {
        assert!(
            packets < 10_000 || seen.get(v).copied().unwrap_or(0) > 0,
            "no packet reached {v}: {seen:?}"
        );
    }
}
