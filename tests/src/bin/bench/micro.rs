//! Per-packet cost through BPF_PROG_TEST_RUN: eip-nat's cases, the
//! minimal hand-written NAT beside its translation, and an empty program.

use std::{fmt::Write as _, net::Ipv4Addr, time::Instant};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use eip_nat::{
    datapath::{Datapath, LoadOptions},
    trace::TraceRequest,
};
use eip_nat_common::{
    maps::{NextHop, TraceConfig, ADDR_IS_EIP, ADDR_IS_PRIVATE, FLAG_FAST_PATH, FLAG_TRACE},
    AddrEntry, Config, Direction, Verdict,
};
use eip_nat_rig_common::MinNatConfig;
use integration_tests::{
    packet::{udp, MAC_A, MAC_B},
    rig::{MinNat, PassProgram},
};
use serde::Serialize;

use crate::{associations::pairs, nth as addr};

const REPEAT: u32 = 1_000_000;

/// The Internet's side of every case.
const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// The measured associations: EIPs from here…
const EIPS: [u8; 4] = [11, 0, 0, 0];
/// …to private IPs from here.
const PRIVATES: [u8; 4] = [10, 1, 0, 0];

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub case: &'static str,
    pub mappings: u32,
    pub ns_per_packet: f64,
    pub ratio_to_noop: f64,
}

/// Rounds of [`per_packet`]'s cases.
const ROUNDS: usize = 7;

/// Repetitions of the express lane's case: test-run feeds the program its
/// own output, so a frame sent with TTL 255 takes the lane (TTL − 1 each
/// time) this many times before the TTL runs out.
const EXPRESS_REPEAT: u32 = 250;
/// Its rounds: short runs, so many more of them.
const EXPRESS_ROUNDS: usize = 2_000;

/// Average ns per run over `repeat` runs, as the kernel measures it.
fn ns_per_packet_over(program: &mut Xdp, frame: &[u8], repeat: u32) -> f64 {
    let r = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .expect("test run");
    r.duration.as_nanos() as f64
}

fn ns_per_packet(program: &mut Xdp, frame: &[u8]) -> f64 {
    ns_per_packet_over(program, frame, REPEAT)
}

/// Loads the datapath with `n` associations; the measured one, E0 ↔ P0, is
/// also installed backwards (P0 ↔ E0, written straight to the maps, which
/// the agent's rules would refuse) because test-run feeds the program its
/// own output on every repetition: the packet then flips E0 → P0 → E0 and
/// every repetition is a full translation.
fn loaded(n: u32) -> Datapath {
    let mut dp = Datapath::load(LoadOptions {
        max_associations: n + 1,
        ..Default::default()
    })
    .expect("load");
    // Each address has one role: the reverse pair would make P0 both an
    // EIP and a private IP, so E0 and P0 carry both halves instead.
    let mut put = |addr: Ipv4Addr, e: AddrEntry| dp.put_entry(addr, Some(e)).expect("insert");
    for k in 0..n {
        let (eip, private) = (addr(EIPS, k), addr(PRIVATES, k));
        let mut e = AddrEntry {
            flags: ADDR_IS_EIP,
            private_ip: private.octets(),
            eip_slot: k,
            ..Default::default()
        };
        let mut p = AddrEntry {
            flags: ADDR_IS_PRIVATE,
            eip: eip.octets(),
            private_slot: k,
            ..Default::default()
        };
        if k == 0 {
            // Backwards too: P0 → E0 inbound, E0 → P0 outbound; both
            // delivered through the programmed next hop (for the express
            // lane's case, the only one with the fast path on).
            e.flags |= ADDR_IS_PRIVATE;
            e.eip = private.octets();
            e.private_slot = n;
            e.nexthop = EXPRESS_NEXTHOP;
            p.flags |= ADDR_IS_EIP;
            p.private_ip = eip.octets();
            p.eip_slot = n;
            p.nexthop = EXPRESS_NEXTHOP;
        }
        put(eip, e);
        put(private, p);
    }
    // The next hop: out of the loopback (test-run does not transmit), as
    // the minimal NAT's redirect is.
    let lo = loopback();
    dp.add_tx_port(lo).expect("lo as a port");
    let slot = dp.tx_slot(lo).expect("lo's slot");
    dp.set_nexthop(
        EXPRESS_NEXTHOP,
        NextHop {
            ifindex: lo,
            mtu: 1500,
            flags: NextHop::flags_for(true, slot),
            dmac: MAC_B,
            smac: MAC_A,
            neighbour: [0; 4],
        },
    )
    .expect("the next hop");
    dp
}

/// The loopback's ifindex: test-run frames arrive there.
fn loopback() -> u32 {
    // SAFETY: a NUL-terminated name; no other precondition.
    unsafe { libc::if_nametoindex(c"lo".as_ptr()) }
}

const EXPRESS_NEXTHOP: u32 = 1;
const EXPRESS: &str = "express lane: translate inbound, programmed next hop, TTL, MACs, redirect";

/// The minimal NAT with the same `n` mappings (one direction: EIP →
/// private IP), and P0 → E0 for the same reason as in [`loaded`].
fn loaded_min_nat(n: u32, egress_ifindex: u32) -> MinNat {
    let macs = MinNatConfig {
        dst_mac: MAC_B,
        src_mac: MAC_A,
    };
    let mut nat = MinNat::load(macs, egress_ifindex, n + 1).expect("load xdp_min_nat");
    let (e0, p0) = (addr(EIPS, 0), addr(PRIVATES, 0));
    nat.insert_all(pairs(EIPS, PRIVATES, n).chain([(p0, e0)]))
        .expect("mappings");
    nat
}

/// (name, public ifindex, private ifindex, frame, tracing).
type Case<'a> = (&'static str, u32, u32, &'a [u8], Option<TraceConfig>);

const MIN_NAT: &str = "minimal hand-written NAT: lookup, both checksums, TTL, MACs, redirect";

pub fn per_packet() -> Vec<Row> {
    // One CPU for every case, so they are compared on the same core.
    crate::placement::pin_self(crate::placement::GENERATOR_CPU);
    let lo = loopback();
    let inet = INTERNET;
    let (e0, p0) = (addr(EIPS, 0), addr(PRIVATES, 0));
    let inbound = udp(inet, 40000, e0, 53, &[0u8; 18], true).frame();
    let fresh = express_frame();
    let outbound = udp(p0, 53, inet, 40000, &[0u8; 18], true).frame();
    let other = Ipv4Addr::new(203, 0, 113, 250);
    let unmapped = udp(inet, 40000, other, 53, &[0u8; 18], true).frame();
    let unmapped_out = udp(
        Ipv4Addr::new(10, 9, 0, 1),
        53,
        inet,
        40000,
        &[0u8; 18],
        true,
    )
    .frame();
    let mut arp = unmapped.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    // Tracing on, for other packets (every drop) or for this one too
    // (every translated packet sampled): the first costs the flag's test
    // and the selection's, the second an event in the ring buffer.
    let drops_only = TraceRequest::default().config().unwrap();
    let every_packet = TraceRequest {
        sample: Some(1),
        ..Default::default()
    }
    .config()
    .unwrap();
    let cases: [Case; 8] = [
        ("translate inbound (EIP → private)", lo, 0, &inbound, None),
        ("translate outbound (private → EIP)", 0, lo, &outbound, None),
        (
            "translate inbound, tracing drops (on, not selected)",
            lo,
            0,
            &inbound,
            Some(drops_only),
        ),
        (
            "translate inbound, tracing it (1 in 1; the unread ring fills after 4,096)",
            lo,
            0,
            &inbound,
            Some(every_packet),
        ),
        (
            "pass (no mapping, private side)",
            0,
            lo,
            &unmapped_out,
            None,
        ),
        (
            "drop (public side, no EIP: drop_public_unlisted)",
            lo,
            0,
            &unmapped,
            None,
        ),
        // Bisecting the pass path: each row below stops one step earlier.
        (
            "pass (not IPv4: role, Ethernet, counter)",
            lo,
            0,
            &arp,
            None,
        ),
        (
            "pass (unknown interface: role lookup, counter)",
            0,
            0,
            &unmapped,
            None,
        ),
    ];
    let mut rows = Vec::new();
    for n in [1u32, 1_000, 1_000_000] {
        eprintln!("micro: {n} mappings…");
        let t = Instant::now();
        let mut dp = loaded(n);
        eprintln!("  loaded in {:.1} s", t.elapsed().as_secs_f64());
        let mut min_nat = loaded_min_nat(n, lo);
        eprintln!("  and the minimal NAT, {:.1} s", t.elapsed().as_secs_f64());
        let mut pass = PassProgram::load_only().expect("xdp_pass");
        // Rounds over all cases, so a slow spell of this virtual CPU hits
        // every case alike; each case keeps its fastest round.
        let (noop_at, min_nat_at) = (cases.len(), cases.len() + 1);
        let mut best = [f64::MAX; 10];
        for _ in 0..ROUNDS {
            for (i, (_, public, private, frame, trace)) in cases.iter().enumerate() {
                if let Some(t) = trace {
                    dp.set_trace_config(*t).unwrap();
                }
                dp.set_config(Config {
                    generation: 0,
                    public_ifindex: *public,
                    private_ifindex: *private,
                    flags: if trace.is_some() { FLAG_TRACE } else { 0 },
                    reserved: 0,
                })
                .unwrap();
                best[i] = best[i].min(ns_per_packet(dp.program_mut(), frame));
            }
            best[noop_at] = best[noop_at].min(ns_per_packet(pass.program(), &inbound));
            best[min_nat_at] = best[min_nat_at].min(ns_per_packet(min_nat.program(), &inbound));
        }
        let (express, min_nat_short) = express_lane(&mut dp, &mut min_nat, lo, &fresh);
        let noop = best[noop_at];
        for (i, (name, ..)) in cases.iter().enumerate() {
            rows.push(Row {
                case: name,
                mappings: n,
                ns_per_packet: best[i],
                ratio_to_noop: best[i] / noop,
            });
        }
        rows.push(Row {
            case: MIN_NAT,
            mappings: n,
            ns_per_packet: best[min_nat_at],
            ratio_to_noop: best[min_nat_at] / noop,
        });
        rows.push(Row {
            case: "no-op XDP program",
            mappings: n,
            ns_per_packet: noop,
            ratio_to_noop: 1.0,
        });
        for (case, ns) in [(EXPRESS, express), (MIN_NAT_SHORT, min_nat_short)] {
            rows.push(Row {
                case,
                mappings: n,
                ns_per_packet: ns,
                ratio_to_noop: ns / noop,
            });
        }
    }
    rows
}

const MIN_NAT_SHORT: &str = "minimal hand-written NAT, the express lane's short runs";

/// The express lane's case alone, with 1,000 mappings: quick enough to
/// measure each change to the lane (`cargo xtask bench --only=express`).
pub fn express_only() -> Vec<Row> {
    crate::placement::pin_self(crate::placement::GENERATOR_CPU);
    let lo = loopback();
    let n = 1_000;
    let (mut dp, mut min_nat) = (loaded(n), loaded_min_nat(n, lo));
    let frame = express_frame();
    let (express, min) = express_lane(&mut dp, &mut min_nat, lo, &frame);
    let mut pass = PassProgram::load_only().expect("xdp_pass");
    let noop = (0..EXPRESS_ROUNDS)
        .map(|_| ns_per_packet_over(pass.program(), &frame, EXPRESS_REPEAT))
        .fold(f64::MAX, f64::min);
    [
        (EXPRESS, express),
        (MIN_NAT_SHORT, min),
        ("no-op XDP program, the same short runs", noop),
    ]
    .into_iter()
    .map(|(case, ns)| Row {
        case,
        mappings: n,
        ns_per_packet: ns,
        ratio_to_noop: ns / noop,
    })
    .collect()
}

/// Inbound to E0, with TTL to spare for the express lane's runs.
fn express_frame() -> Vec<u8> {
    let mut p = udp(INTERNET, 40000, addr(EIPS, 0), 53, &[0u8; 18], true);
    p.ttl = 255;
    p.frame()
}

/// The express lane (fast path on, next hop programmed) and the minimal
/// NAT, each over runs of [`EXPRESS_REPEAT`] from a TTL of 255: fastest of
/// [`EXPRESS_ROUNDS`] interleaved rounds, ns per packet.
fn express_lane(dp: &mut Datapath, min_nat: &mut MinNat, lo: u32, frame: &[u8]) -> (f64, f64) {
    dp.set_config(Config {
        generation: 0,
        public_ifindex: lo,
        private_ifindex: 0,
        flags: FLAG_FAST_PATH,
        reserved: 0,
    })
    .unwrap();
    // Packets counted inbound as translated_redirect, and under any other
    // (direction, verdict).
    let counted = |dp: &Datapath| {
        dp.verdict_counters()
            .unwrap()
            .iter()
            .fold((0u64, 0u64), |(lane, other), (d, v, c)| match (d, v) {
                (Direction::Inbound, Verdict::TranslatedRedirect) => (lane + c.packets, other),
                _ => (lane, other + c.packets),
            })
    };
    let before = counted(dp);
    let (mut express, mut min) = (f64::MAX, f64::MAX);
    for _ in 0..EXPRESS_ROUNDS {
        express = express.min(ns_per_packet_over(dp.program_mut(), frame, EXPRESS_REPEAT));
        min = min.min(ns_per_packet_over(min_nat.program(), frame, EXPRESS_REPEAT));
    }
    // Every run was translated and redirected, and nothing else counted.
    let after = counted(dp);
    let runs = EXPRESS_ROUNDS as u64 * EXPRESS_REPEAT as u64;
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (runs, 0),
        "the express lane's runs: translated_redirect, nothing else"
    );
    (express, min)
}

pub fn table(rows: &[Row]) -> String {
    let mut md = String::new();
    writeln!(md, "Per-packet cost, BPF_PROG_TEST_RUN, repeat {REPEAT}, fastest of {ROUNDS} interleaved rounds, slow-path configuration (translation without the FIB lookup):\n").unwrap();
    writeln!(
        md,
        "| case | mappings | ns/packet | ÷ no-op |\n|---|---:|---:|---:|"
    )
    .unwrap();
    for r in rows {
        writeln!(
            md,
            "| {} | {} | {:.1} | {:.2}× |",
            r.case, r.mappings, r.ns_per_packet, r.ratio_to_noop
        )
        .unwrap();
    }
    let at = |n: u32| {
        rows.iter()
            .find(|r| r.mappings == n && r.case.starts_with("translate inbound"))
            .map(|r| r.ns_per_packet)
    };
    if let (Some(a), Some(b)) = (at(1), at(1_000_000)) {
        writeln!(
            md,
            "\nTranslate inbound at 1,000,000 mappings ÷ at 1: {:.2}×\n",
            b / a
        )
        .unwrap();
    }
    md.push_str(&against_min_nat(rows));
    md
}

/// eip-nat's inbound translation ÷ the minimal NAT's whole work (the
/// target is ≤ 1.2×). eip-nat runs in its slow-path configuration here (no
/// FIB lookup, TTL or MACs), so this ratio understates its fast path.
fn against_min_nat(rows: &[Row]) -> String {
    let ns = |case: &str, n: u32| {
        rows.iter()
            .find(|r| r.case.starts_with(case) && r.mappings == n)
            .map(|r| r.ns_per_packet)
    };
    // `case` ÷ `reference`, for each number of mappings measured.
    let ratios = |case: &str, reference: &str| -> Vec<String> {
        [1u32, 1_000, 1_000_000]
            .into_iter()
            .filter_map(|n| {
                let (e, m) = (ns(case, n)?, ns(reference, n)?);
                Some(format!("{n} mappings {:.2}× ({e:.1} ÷ {m:.1} ns)", e / m))
            })
            .collect()
    };
    let (translation, express) = (
        ratios("translate inbound", MIN_NAT),
        ratios(EXPRESS, MIN_NAT_SHORT),
    );
    if translation.is_empty() {
        return String::new();
    }
    format!(
        "eip-nat's inbound translation ÷ the minimal NAT (eip-nat without its FIB lookup, TTL and MACs; \
         target ≤ 1.2×): {}\n\n\
         eip-nat's express lane (the fast path's common packet: programmed next hop, TTL, MACs, redirect) \
         ÷ the minimal NAT, both in runs of {EXPRESS_REPEAT} from TTL 255, fastest of {EXPRESS_ROUNDS}: {}\n\n",
        translation.join(", "),
        express.join(", ")
    )
}
