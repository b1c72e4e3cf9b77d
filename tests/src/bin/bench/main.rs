//! `cargo xtask bench`: eip-nat beside its peers, same rig, same traffic,
//! same run, with the gateway sharing one core with the generator and the
//! sink, and on a CPU of its own; then the per-packet cost through
//! BPF_PROG_TEST_RUN, and the control plane. Results go to target/bench/ as
//! Markdown and JSON.

use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf, process::Command};

use integration_tests::require_root;
use serde::Serialize;

mod associations;
mod control;
mod micro;
mod peers;
mod placement;
mod tables;
mod throughput;
mod topology;

use peers::Peer;
use placement::Placement;
use throughput::Plan;

/// The EIPs the traffic goes to, each with its private IP.
const EIPS: u32 = 256;
const EIP_BASE: [u8; 4] = [198, 18, 1, 0];
const PRIVATE_BASE: [u8; 4] = [10, 200, 1, 0];

fn nth(base: [u8; 4], k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes(base) + k)
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
    /// How the throughput rig made its traffic.
    generator: Option<throughput::GeneratorKind>,
    throughput: Vec<throughput::Measurement>,
    against_min_nat: Vec<tables::Comparison>,
    micro: Vec<micro::Row>,
    control: Option<control::ControlPlane>,
}

/// `--name=a,b`: the items whose key is listed, or all of them.
fn chosen<T: Copy>(args: &[String], name: &str, all: &[T], key: fn(T) -> &'static str) -> Vec<T> {
    let flag = format!("--{name}=");
    match args.iter().find_map(|a| a.strip_prefix(&flag)) {
        Some(list) => {
            let picked: Vec<T> = all
                .iter()
                .copied()
                .filter(|&x| list.split(',').any(|k| k == key(x)))
                .collect();
            assert!(
                !picked.is_empty(),
                "{flag}{list} names none of {:?}",
                all.iter().map(|&x| key(x)).collect::<Vec<_>>()
            );
            picked
        }
        None => all.to_vec(),
    }
}

fn main() {
    require_root();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let secs = if quick { 1.0 } else { 4.0 };
    // More repetitions narrow the medians on a noisy (shared, virtual)
    // machine; each adds one round of every cell.
    let reps = args
        .iter()
        .find_map(|a| a.strip_prefix("--repetitions="))
        .map_or(3, |n| {
            n.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("--repetitions={n}: not a positive count"))
        });
    let only = |what: &str| {
        !args.iter().any(|a| a.starts_with("--only"))
            || args.iter().any(|a| a == &format!("--only={what}"))
    };
    let mut report = Report {
        machine: machine(),
        seconds_per_repetition: secs,
        repetitions: reps,
        generator: None,
        throughput: vec![],
        against_min_nat: vec![],
        micro: vec![],
        control: None,
    };
    let mut md = String::new();
    writeln!(md, "Machine: {}. 64-byte UDP frames, {reps} repetitions of {secs} s each, every peer's interleaved; packets per second delivered to the sink (median, and spread = (max − min) / median).\n", report.machine).unwrap();

    if only("throughput") {
        let plan = Plan {
            repetitions: reps,
            seconds: secs,
            // `--placement=one-core|own-cpu` runs one; `--peers=fast,min-nat`
            // only those (for profiling one peer).
            placements: chosen(&args, "placement", &Placement::ALL, Placement::key),
            peers: chosen(&args, "peers", &Peer::ALL, Peer::key),
            // The smoke run loads a tenth: a million through the API takes
            // most of a minute.
            many: if quick { 100_000 } else { 1_000_000 },
            generator: throughput::GeneratorKind::detect(),
        };
        writeln!(md, "Traffic: {}.\n", plan.generator.label()).unwrap();
        report.generator = Some(plan.generator);
        report.throughput = throughput::run(&plan);
        for &p in &plan.placements {
            md.push_str(&tables::table(&report.throughput, p));
        }
        report.against_min_nat = tables::comparisons(&report.throughput);
        md.push_str(&tables::comparison_table(&report.against_min_nat));
    }
    if only("micro") {
        report.micro = micro::per_packet();
        md.push_str(&micro::table(&report.micro));
    } else if args.iter().any(|a| a == "--only=express") {
        report.micro = micro::express_only();
        md.push_str(&micro::table(&report.micro));
    }
    if only("control") {
        let c = control::control_plane(quick);
        md.push_str(&control::control_table(&c));
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
