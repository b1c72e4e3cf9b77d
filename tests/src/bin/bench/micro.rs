//! Per-packet cost through BPF_PROG_TEST_RUN, and the control plane.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use eip_nat::{
    api::Batch,
    client::Client,
    datapath::{Datapath, LoadOptions},
    model::{EniKind, Event, Mode},
};
use eip_nat_common::{
    maps::{ADDR_IS_EIP, ADDR_IS_PRIVATE},
    AddrEntry, Config,
};
use integration_tests::{
    agent::{Agent, AgentHome},
    netns::{in_netns, Topology},
    packet::udp,
};
use serde::Serialize;

const REPEAT: u32 = 1_000_000;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub case: &'static str,
    pub mappings: u32,
    pub ns_per_packet: f64,
    pub ratio_to_noop: f64,
}

fn addr(base: [u8; 4], k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes(base) + k)
}

/// Rounds of [`per_packet`]'s cases.
const ROUNDS: usize = 7;

/// Average ns per run over REPEAT runs, as the kernel measures it.
fn ns_per_packet(program: &mut Xdp, frame: &[u8]) -> f64 {
    let r = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..Default::default()
        })
        .expect("test run");
    r.duration.as_nanos() as f64
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
        let (eip, private) = (addr([11, 0, 0, 0], k), addr([10, 1, 0, 0], k));
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
            // Backwards too: P0 → E0 inbound, E0 → P0 outbound.
            e.flags |= ADDR_IS_PRIVATE;
            e.eip = private.octets();
            e.private_slot = n;
            p.flags |= ADDR_IS_EIP;
            p.private_ip = eip.octets();
            p.eip_slot = n;
        }
        put(eip, e);
        put(private, p);
    }
    dp
}

pub fn per_packet() -> Vec<Row> {
    // One CPU for every case, so they are compared on the same core.
    crate::pin_self(0);
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    let inet = Ipv4Addr::new(198, 51, 100, 2);
    let (e0, p0) = (addr([11, 0, 0, 0], 0), addr([10, 1, 0, 0], 0));
    let inbound = udp(inet, 40000, e0, 53, &[0u8; 18], true).frame();
    let outbound = udp(p0, 53, inet, 40000, &[0u8; 18], true).frame();
    let other = Ipv4Addr::new(203, 0, 113, 250);
    let unmapped = udp(inet, 40000, other, 53, &[0u8; 18], true).frame();
    let mut arp = unmapped.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    // (name, public ifindex, private ifindex, frame); None = the no-op.
    let cases: [(&'static str, u32, u32, &[u8]); 5] = [
        ("translate inbound (EIP → private)", lo, 0, &inbound),
        ("translate outbound (private → EIP)", 0, lo, &outbound),
        ("pass (no mapping)", lo, 0, &unmapped),
        // Bisecting the pass path: each row below stops one step earlier.
        ("pass (not IPv4: role, Ethernet, counter)", lo, 0, &arp),
        (
            "pass (unknown interface: role lookup, counter)",
            0,
            0,
            &unmapped,
        ),
    ];
    let mut rows = Vec::new();
    for n in [1u32, 1_000, 1_000_000] {
        eprintln!("micro: {n} mappings…");
        let t = Instant::now();
        let mut dp = loaded(n);
        eprintln!("  loaded in {:.1} s", t.elapsed().as_secs_f64());
        let mut pass = eip_nat::rig::PassProgram::load_only().expect("xdp_pass");
        // Rounds over all cases, so a slow spell of this virtual CPU hits
        // every case alike; each case keeps its fastest round.
        let mut best = [f64::MAX; 6];
        for _ in 0..ROUNDS {
            for (i, (_, public, private, frame)) in cases.iter().enumerate() {
                dp.set_config(Config {
                    generation: 0,
                    public_ifindex: *public,
                    private_ifindex: *private,
                    flags: 0,
                    reserved: 0,
                })
                .unwrap();
                best[i] = best[i].min(ns_per_packet(dp.program_mut(), frame));
            }
            best[5] = best[5].min(ns_per_packet(pass.program(), &inbound));
        }
        let noop = best[5];
        for (i, (name, ..)) in cases.iter().enumerate() {
            rows.push(Row {
                case: name,
                mappings: n,
                ns_per_packet: best[i],
                ratio_to_noop: best[i] / noop,
            });
        }
        rows.push(Row {
            case: "no-op XDP program",
            mappings: n,
            ns_per_packet: noop,
            ratio_to_noop: 1.0,
        });
    }
    rows
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
    md
}

#[derive(Clone, Debug, Serialize)]
pub struct ControlPlane {
    pub associations: u32,
    pub load_seconds: f64,
    pub associations_per_second: f64,
    pub latency_samples: usize,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    /// Agent restart with the tables loaded: stop, start, API answering
    /// (the reconcile finds nothing to change).
    pub warm_restart_seconds: f64,
    /// The same after `eip-nat teardown` (a reboot, say): every entry is
    /// written again from the store.
    pub cold_start_seconds: f64,
}

/// Loads `n` associations in batches (a primary ENI and an association
/// each), as a cloud control plane resyncing a gateway would.
fn bulk_load(client: &Client, n: u32) -> Duration {
    const PER_BATCH: u32 = 25_000;
    let start = Instant::now();
    for first in (0..n).step_by(PER_BATCH as usize) {
        let mut events = Vec::new();
        for k in first..n.min(first + PER_BATCH) {
            let private_ip = addr([10, 1, 0, 0], k);
            events.push(Event::CreateEni {
                eni: format!("eni-{k}"),
                kind: EniKind::Primary,
                primary_ip: private_ip,
                instance: Some(format!("i-{k}")),
                location: Default::default(),
            });
            events.push(Event::Associate {
                eip: addr([11, 0, 0, 0], k),
                eni: format!("eni-{k}"),
                private_ip: None,
                mode: Mode::Nat,
            });
        }
        client
            .batch(&Batch {
                events,
                if_generation: None,
            })
            .expect("batch");
    }
    start.elapsed()
}

pub fn control_plane(quick: bool) -> ControlPlane {
    let n: u32 = if quick { 100_000 } else { 1_000_000 };
    let t = Topology::new();
    let max = (n + 1024).to_string();
    let home = AgentHome::new(&t.gw_public.ns);
    let args = ["--max-associations", &max, "--log-level", "info"];
    let start = || Agent::on_in(&home, &t, &args);
    let agent = start();
    eprintln!("control plane: loading {n} associations…");
    let load = bulk_load(&agent.client(), n);
    eprintln!("  {:.1} s; restarting the agent", load.as_secs_f64());
    assert!(agent.stop().success());
    let t0 = Instant::now();
    let agent = start();
    let warm = t0.elapsed();
    assert!(agent.log_text().contains("0 entries written"));
    assert!(agent.stop().success());
    assert!(home.teardown(&t.gw_public.ns).status.success());
    let t0 = Instant::now();
    let agent = start();
    let cold = t0.elapsed();
    let written = format!("{} entries written", 2 * n);
    assert!(agent.log_text().contains(&written), "{}", agent.log_text());
    eprintln!(
        "  warm restart {:.1} s, cold start {:.1} s",
        warm.as_secs_f64(),
        cold.as_secs_f64()
    );
    let api = agent.client();
    api.event(&Event::CreateEni {
        eni: "eni-instance".into(),
        kind: EniKind::Primary,
        primary_ip: t.instance.addr,
        instance: Some("i-instance".into()),
        location: Default::default(),
    })
    .expect("instance ENI");

    // Latency: associate a fresh EIP while the internet sends to it; time
    // from the associate call returning to the first datagram arriving.
    let server = in_netns(&t.instance.ns, || UdpSocket::bind("0.0.0.0:7000").unwrap());
    server.set_nonblocking(true).unwrap();
    let client = in_netns(&t.internet.ns, || {
        UdpSocket::bind("198.51.100.2:0").unwrap()
    });
    let mut lat = Vec::new();
    let mut buf = [0u8; 64];
    let samples = if quick { 50 } else { 200 };
    for i in 0..samples {
        let eip = Ipv4Addr::new(203, 0, 113, 20 + i as u8);
        api.event(&Event::Associate {
            eip,
            eni: "eni-instance".into(),
            private_ip: None,
            mode: Mode::Nat,
        })
        .expect("associate");
        let t0 = Instant::now();
        let arrived = loop {
            client
                .send_to(b"probe", SocketAddrV4::new(eip, 7000))
                .unwrap();
            if server.recv_from(&mut buf).is_ok() {
                break Some(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(1) {
                break None;
            }
        };
        lat.push(
            arrived
                .expect("translation took effect within 1 s")
                .as_secs_f64()
                * 1e6,
        );
        api.event(&Event::Disassociate { eip })
            .expect("disassociate");
        while server.recv_from(&mut buf).is_ok() {}
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    ControlPlane {
        associations: n,
        load_seconds: load.as_secs_f64(),
        associations_per_second: n as f64 / load.as_secs_f64(),
        latency_samples: lat.len(),
        latency_us_p50: pct(0.5),
        latency_us_p99: pct(0.99),
        warm_restart_seconds: warm.as_secs_f64(),
        cold_start_seconds: cold.as_secs_f64(),
    }
}

pub fn control_table(c: &ControlPlane) -> String {
    format!(
        "Control plane: {} associations (a primary ENI and an association each) loaded in batches of \
         12,500 in {:.1} s ({:.0}/s); agent restart with them loaded {:.1} s (warm: pinned maps, nothing \
         to write), {:.1} s cold (after teardown: every entry written from the store); from `associate` \
         returning to the first translated datagram arriving: p50 {:.0} µs, p99 {:.0} µs ({} samples).\n",
        c.associations,
        c.load_seconds,
        c.associations_per_second,
        c.warm_restart_seconds,
        c.cold_start_seconds,
        c.latency_us_p50,
        c.latency_us_p99,
        c.latency_samples
    )
}
