//! `cargo xtask bench`: eip-nat beside its peers, same rig, same traffic,
//! same run; then the per-packet cost through BPF_PROG_TEST_RUN, and the
//! control plane. Results go to target/bench/ as Markdown and JSON.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use eip_nat::rig::{Generator, NoopRedirect, Sink, Traffic};
use integration_tests::{
    agent::Agent,
    netns::{ifindex, in_netns, ns_sh, veth, End, Namespaces},
    require_root,
};
use serde::Serialize;

mod micro;

const EIPS: u32 = 256;
const EIP_BASE: [u8; 4] = [198, 18, 1, 0];
const PRIVATE_BASE: [u8; 4] = [10, 200, 1, 0];

fn nth(base: [u8; 4], k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes(base) + k)
}

/// generator ── gateway ── sink, fixed MACs, permanent neighbours, IPv6 off,
/// rp_filter off, forwarding on.
struct Rig {
    gen: End,
    gw_public: End,
    gw_private: End,
    sink: End,
    /// Last: removed after everything in it.
    _namespaces: Namespaces,
}

fn rig(direct: bool) -> Rig {
    if direct {
        return direct_rig();
    }
    let mut namespaces = Namespaces::new();
    let gen_ns = namespaces.add("gen");
    let gw = namespaces.add("gw");
    let sink_ns = namespaces.add("sink");
    let end = |ns: &str, suffix: &str, last: u8, addr: [u8; 4]| {
        namespaces.end(ns, suffix, 0xbe, last, addr)
    };
    let gen = end(&gen_ns, "g", 1, [198, 51, 100, 2]);
    let gw_public = end(&gw, "gp", 2, [198, 51, 100, 1]);
    let gw_private = end(&gw, "gv", 3, [10, 199, 0, 1]);
    let sink = end(&sink_ns, "s", 4, [10, 199, 0, 2]);
    veth(&gen, &gw_public);
    veth(&gw_private, &sink);
    ns_sh(
        &gw,
        &["ip", "route", "add", "10.200.0.0/16", "via", "10.199.0.2"],
    );
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        ns_sh(&gw, &["sysctl", "-qw", s]);
    }
    for e in [&gw_public, &gw_private] {
        ns_sh(
            &gw,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{}.rp_filter=0", e.ifname),
            ],
        );
    }
    // GRO on every veth, so each runs NAPI and accepts XDP frames even
    // without an XDP program of its own.
    for e in [&gen, &gw_public, &gw_private, &sink] {
        ns_sh(&e.ns, &["ethtool", "-K", &e.ifname, "gro", "on"]);
    }
    Rig {
        gen,
        gw_public,
        gw_private,
        sink,
        _namespaces: namespaces,
    }
}

/// generator ── sink, no gateway: what the rig itself costs per frame.
/// The gateway fields name the sink, the generator's only neighbour.
fn direct_rig() -> Rig {
    let mut namespaces = Namespaces::new();
    let gen_ns = namespaces.add("gen");
    let sink_ns = namespaces.add("sink");
    let end = |ns: &str, suffix: &str, last: u8, addr: [u8; 4]| {
        namespaces.end(ns, suffix, 0xbe, last, addr)
    };
    let gen = end(&gen_ns, "g", 1, [198, 51, 100, 2]);
    let sink = end(&sink_ns, "s", 4, [198, 51, 100, 1]);
    veth(&gen, &sink);
    for e in [&gen, &sink] {
        ns_sh(&e.ns, &["ethtool", "-K", &e.ifname, "gro", "on"]);
    }
    Rig {
        gw_public: sink.clone(),
        gw_private: sink.clone(),
        gen,
        sink,
        _namespaces: namespaces,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum Peer {
    /// No gateway at all: the rig's own cost per frame.
    Direct,
    NoopRedirect,
    KernelForwarding,
    NftStateless,
    NftConntrack,
    EipNatFast,
    EipNatFallback,
}

impl Peer {
    const ALL: [Peer; 7] = [
        Self::Direct,
        Self::NoopRedirect,
        Self::KernelForwarding,
        Self::NftStateless,
        Self::NftConntrack,
        Self::EipNatFast,
        Self::EipNatFallback,
    ];

    fn key(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::NoopRedirect => "noop",
            Self::KernelForwarding => "kernel",
            Self::NftStateless => "nft-stateless",
            Self::NftConntrack => "nft-conntrack",
            Self::EipNatFast => "fast",
            Self::EipNatFallback => "fallback",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "(0) no gateway: generator → sink (the rig's own cost)",
            Self::NoopRedirect => "(a) XDP no-op redirect (ceiling)",
            Self::KernelForwarding => "(b) kernel IPv4 forwarding, no NAT",
            Self::NftStateless => "(c) nftables stateless NAT (notrack)",
            Self::NftConntrack => "(d) nftables conntrack DNAT+SNAT",
            Self::EipNatFast => "(e) eip-nat, fast path",
            Self::EipNatFallback => "(f) eip-nat, fallback only",
        }
    }

    /// Where the generator aims: the EIPs, except for plain forwarding,
    /// which has nothing to translate and is sent the private IPs.
    fn dst_base(self) -> [u8; 4] {
        match self {
            Self::KernelForwarding | Self::Direct => PRIVATE_BASE,
            _ => EIP_BASE,
        }
    }

    /// What the sink must see: translated private IPs, except for the
    /// no-op, which does not translate.
    fn sink_expects(self) -> ([u8; 4], u8) {
        match self {
            Self::NoopRedirect => ([198, 18, 0, 0], 16),
            _ => ([10, 200, 0, 0], 16),
        }
    }
}

/// `a0 : b0, a1 : b1, …` for an nftables map.
fn pairs(from: [u8; 4], to: [u8; 4]) -> String {
    (0..EIPS)
        .map(|k| format!("{} : {}", nth(from, k), nth(to, k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whatever keeps a peer's gateway running until dropped.
#[expect(
    dead_code,
    reason = "the values are held for their Drop, which detaches"
)]
enum Gateway {
    Noop(NoopRedirect),
    Kernel,
    Agent(Agent),
}

fn start_peer(peer: Peer, r: &Rig) -> Gateway {
    let gw = &r.gw_public.ns;
    match peer {
        Peer::NoopRedirect => {
            let egress = ifindex(gw, &r.gw_private.ifname);
            Gateway::Noop(
                in_netns(gw, || NoopRedirect::attach(&r.gw_public.ifname, egress))
                    .expect("attach no-op"),
            )
        }
        Peer::KernelForwarding | Peer::Direct => Gateway::Kernel,
        Peer::NftStateless => {
            // Stateless: rewrite by map in prerouting, conntrack off.
            nft(
                gw,
                &format!(
                    "table ip eipnat {{\n map eip2priv {{ type ipv4_addr : ipv4_addr; elements = {{ {} }} }}\n \
                     map priv2eip {{ type ipv4_addr : ipv4_addr; elements = {{ {} }} }}\n \
                     chain pre {{\n type filter hook prerouting priority raw; policy accept;\n notrack\n \
                     ip daddr set ip daddr map @eip2priv\n ip saddr set ip saddr map @priv2eip\n }}\n}}\n",
                    pairs(EIP_BASE, PRIVATE_BASE),
                    pairs(PRIVATE_BASE, EIP_BASE)
                ),
            );
            Gateway::Kernel
        }
        Peer::NftConntrack => {
            nft(
                gw,
                &format!(
                    "table ip eipnat {{\n map eip2priv {{ type ipv4_addr : ipv4_addr; elements = {{ {} }} }}\n \
                     map priv2eip {{ type ipv4_addr : ipv4_addr; elements = {{ {} }} }}\n \
                     chain pre {{\n type nat hook prerouting priority dstnat; policy accept;\n \
                     dnat to ip daddr map @eip2priv\n }}\n \
                     chain post {{\n type nat hook postrouting priority srcnat; policy accept;\n \
                     snat to ip saddr map @priv2eip\n }}\n}}\n",
                    pairs(EIP_BASE, PRIVATE_BASE),
                    pairs(PRIVATE_BASE, EIP_BASE)
                ),
            );
            Gateway::Kernel
        }
        Peer::EipNatFast | Peer::EipNatFallback => {
            let extra: &[&str] = if peer == Peer::EipNatFast {
                &["--xdp-mode", "native"]
            } else {
                &["--xdp-mode", "native", "--no-fast-path"]
            };
            let agent = Agent::start(gw, &r.gw_public.ifname, &r.gw_private.ifname, extra);
            for k in 0..EIPS {
                agent.nat(
                    &nth(EIP_BASE, k).to_string(),
                    &nth(PRIVATE_BASE, k).to_string(),
                );
            }
            Gateway::Agent(agent)
        }
    }
}

fn nft(ns: &str, rules: &str) {
    let path = std::env::temp_dir().join(format!("{ns}.nft"));
    std::fs::write(&path, rules).unwrap();
    ns_sh(ns, &["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

#[derive(Clone, Debug, Serialize)]
struct Measurement {
    peer: Peer,
    flows: u32,
    /// Packets per second delivered to the sink, one per repetition.
    pps: Vec<f64>,
    /// Packets per second the generator offered, per repetition.
    offered_pps: Vec<f64>,
    bad: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> f64 {
    let m = median(v);
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
    if m > 0.0 {
        (hi - lo) / m * 100.0
    } else {
        0.0
    }
}

/// Pins the calling thread to `cpu`. The generator is pinned so that it,
/// the gateway and the sink share one core: a veth delivers a frame in the
/// sender's softirq, so each frame is generated, translated and counted on
/// the same CPU, and the rate is 1 / (their summed cost). Moving the
/// gateway to the other core with threaded NAPI was tried: cross-core
/// wake-ups on these virtual CPUs cost more than the work itself.
fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn measure(peer: Peer, flows: u32, reps: usize, secs: f64) -> Measurement {
    let r = rig(peer == Peer::Direct);
    let _gateway = start_peer(peer, &r);
    let (prefix, len) = peer.sink_expects();
    let sink = in_netns(&r.sink.ns, || Sink::attach(&r.sink.ifname, prefix, len)).expect("sink");
    let traffic = Traffic {
        src_mac: r.gen.mac,
        dst_mac: r.gw_public.mac,
        src: r.gen.addr.octets(),
        dst_base: peer.dst_base(),
        sport_base: 1024,
        dport: 9,
        flows,
        frame_len: 60,
    };
    let gen_if = ifindex(&r.gen.ns, &r.gen.ifname);
    let mut out = Measurement {
        peer,
        flows,
        pps: vec![],
        offered_pps: vec![],
        bad: 0,
    };
    for _ in 0..reps {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = std::thread::scope(|scope| {
            let stop2 = Arc::clone(&stop);
            let gen_ns = r.gen.ns.clone();
            let generator = scope.spawn(move || {
                in_netns(&gen_ns, || {
                    pin_self(0);
                    let mut g = Generator::new(gen_if, &traffic).expect("generator");
                    let (mut frames, start) = (0u64, Instant::now());
                    while !stop2.load(Ordering::Relaxed)
                        && start.elapsed() < Duration::from_secs_f64(secs + 5.0)
                    {
                        g.send(100_000).expect("live frames");
                        frames += 100_000;
                    }
                    (frames, start.elapsed())
                })
            });
            std::thread::sleep(Duration::from_millis(500));
            let c0 = sink.counters().unwrap();
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(secs));
            let c1 = sink.counters().unwrap();
            let dt = t0.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let (frames, gen_time) = generator.join().unwrap();
            out.pps.push((c1.good - c0.good) as f64 / dt);
            out.bad += c1.bad - c0.bad;
            frames as f64 / gen_time.as_secs_f64()
        });
        out.offered_pps.push(sent);
    }
    drop(sink);
    out
}

/// The rate table, and the gateway's own cost per frame: on this rig every
/// frame's costs add up on one core, so a peer's cost is its time per frame
/// minus the time per frame with no gateway at all (row 0).
fn throughput_table(rows: &[Measurement]) -> String {
    let mut md = String::new();
    writeln!(
        md,
        "| peer | flows | Mpps (median) | spread | eip-nat rate ÷ peer's | gateway ns/frame | peer's cost ÷ eip-nat's |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    .unwrap();
    for flows in [1u32, 65_536] {
        let rate = |p: Peer| {
            rows.iter()
                .find(|m| m.flows == flows && m.peer == p)
                .map(|m| median(&m.pps))
        };
        let (fast, direct) = (rate(Peer::EipNatFast), rate(Peer::Direct));
        let cost = |pps: f64| direct.filter(|_| pps > 0.0).map(|d| 1e9 / pps - 1e9 / d);
        let fast_cost = fast.and_then(cost);
        for m in rows.iter().filter(|m| m.flows == flows) {
            let med = median(&m.pps);
            let ratio = match fast {
                Some(f) if med > 0.0 => format!("{:.2}×", f / med),
                _ => "–".into(),
            };
            let (own, rel) = match (m.peer, cost(med), fast_cost) {
                (Peer::Direct, ..) => ("–".into(), "–".into()),
                (_, Some(c), Some(f)) => (format!("{c:.0}"), format!("{:.2}×", c / f)),
                _ => ("–".into(), "–".into()),
            };
            writeln!(
                md,
                "| {} | {} | {} | {:.1} % | {} | {} | {} |",
                m.peer.label(),
                flows,
                mpps(med),
                spread(&m.pps),
                ratio,
                own,
                rel
            )
            .unwrap();
        }
    }
    md.push('\n');
    md
}

fn mpps(x: f64) -> String {
    format!("{:.3}", x / 1e6)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpus} × {cpu}, Linux {kernel}")
}

fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Serialize)]
struct Report {
    machine: String,
    seconds_per_repetition: f64,
    repetitions: usize,
    throughput: Vec<Measurement>,
    micro: Vec<micro::Row>,
    control: Option<micro::ControlPlane>,
}

fn main() {
    require_root();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let (reps, secs) = if quick { (3, 1.0) } else { (3, 4.0) };
    let only = |what: &str| {
        !args.iter().any(|a| a.starts_with("--only"))
            || args.iter().any(|a| a == &format!("--only={what}"))
    };
    let mut report = Report {
        machine: machine(),
        seconds_per_repetition: secs,
        repetitions: reps,
        throughput: vec![],
        micro: vec![],
        control: None,
    };
    let mut md = String::new();
    writeln!(md, "Machine: {}. 64-byte UDP frames, {reps} repetitions of {secs} s each; packets per second delivered to the sink (median, and spread = (max − min) / median).\n", report.machine).unwrap();

    if only("throughput") {
        // `--peers=fast,noop` runs only those (for profiling one peer).
        let chosen: Vec<Peer> = match args.iter().find_map(|a| a.strip_prefix("--peers=")) {
            Some(list) => Peer::ALL
                .into_iter()
                .filter(|p| list.split(',').any(|k| k == p.key()))
                .collect(),
            None => Peer::ALL.to_vec(),
        };
        for flows in [1u32, 65_536] {
            for &peer in &chosen {
                eprintln!("throughput: {} with {flows} flow(s)…", peer.label());
                let m = measure(peer, flows, reps, secs);
                eprintln!(
                    "  median {} Mpps (spread {:.1} %, offered {} Mpps, bad {})",
                    mpps(median(&m.pps)),
                    spread(&m.pps),
                    mpps(median(&m.offered_pps)),
                    m.bad
                );
                report.throughput.push(m);
            }
        }
        md.push_str(&throughput_table(&report.throughput));
    }
    if only("micro") {
        report.micro = micro::per_packet();
        md.push_str(&micro::table(&report.micro));
    }
    if only("control") {
        let c = micro::control_plane(quick);
        md.push_str(&micro::control_table(&c));
        report.control = Some(c);
    }
    let dir = out_dir();
    std::fs::write(dir.join("results.md"), &md).unwrap();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("{md}");
    println!("written to {}", dir.display());
    let bad: u64 = report.throughput.iter().map(|m| m.bad).sum();
    if bad > 0 {
        eprintln!("error: the sink saw {bad} packets with a wrong address or checksum");
        std::process::exit(1);
    }
}
