//! `cargo xtask test`: every layer, in order, none skipped.

use std::{process::Command, time::Instant};

use anyhow::{bail, Result};

use crate::{
    bootstrap::is_root,
    build::{self, with_objects, EBPF_CRATES},
    cmd::{self, root},
};

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.args(args).current_dir(root());
    with_objects(&mut c);
    c
}

/// `cargo xtask fuzz`: the differential test with a chosen size and seed.
pub fn fuzz(packets: u64, seed: Option<u64>) -> Result<()> {
    if !is_root() {
        bail!("the differential test loads the BPF program: run it as root");
    }
    let mut c = cargo(&[
        "test",
        "--release",
        "--locked",
        "-p",
        "integration-tests",
        "--test",
        "differential",
        "--",
        "--nocapture",
    ]);
    c.env("EIP_NAT_FUZZ_PACKETS", packets.to_string());
    if let Some(seed) = seed {
        c.env("EIP_NAT_FUZZ_SEED", seed.to_string());
    }
    cmd::run(&mut c)
}

/// One of the root-only test binaries of the `tests` crate.
fn root_test(name: &str) -> Command {
    cargo(&[
        "test",
        "--locked",
        "-p",
        "integration-tests",
        "--test",
        name,
    ])
}

/// The lanes of `cargo xtask test`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    /// Lints and pure tests: any user, no BPF toolchain needed (an empty
    /// object stands in for the BPF one).
    Unprivileged,
    /// Both, the privileged one (BPF programs, network namespaces) as root.
    All,
}

/// The unprivileged lane: format, lints, unit and property tests.
fn unprivileged_lane() -> Vec<(&'static str, Vec<Command>)> {
    let mut clippy = vec![cargo(&[
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])];
    // Debian's clippy for its rustc is what lints the eBPF crates; the
    // bootstrap installs it (as root).
    if build::has_ebpf_clippy() {
        clippy.extend(build::ebpf_clippy());
    } else {
        eprintln!(
            "note: the eBPF crates are not linted: Debian's rust-web-clippy is not installed \
             (`cargo xtask bootstrap` as root installs it)"
        );
    }
    let mut format = vec![cargo(&["fmt", "--all", "--check"])];
    for k in &EBPF_CRATES {
        let manifest = k.manifest();
        format.push(cargo(&[
            "fmt",
            "--check",
            "--manifest-path",
            &manifest.to_string_lossy(),
        ]));
    }
    vec![
        ("format", format),
        (
            "clippy -D warnings (host crates, and the eBPF crates with Debian's clippy)",
            clippy,
        ),
        (
            "host unit tests (checksums, parsing, the association rules against an oracle, store, config, sysctls)",
            vec![
                cargo(&[
                    "test",
                    "--locked",
                    "--workspace",
                    "--exclude",
                    "integration-tests",
                ]),
                cargo(&["test", "--locked", "-p", "integration-tests", "--lib"]),
            ],
        ),
    ]
}

/// The privileged lane: the real program, through BPF_PROG_TEST_RUN and in
/// network namespaces with real agents. Root only.
fn privileged_lane() -> Vec<(&'static str, Vec<Command>)> {
    vec![
        (
            "datapath tests (BPF_PROG_TEST_RUN): fixtures, and 100,000 packets against the reference model",
            vec![root_test("datapath"), {
                // --nocapture: the seed is printed even when it passes.
                let mut c = root_test("differential");
                c.args(["--", "--nocapture"]);
                c
            }],
        ),
        (
            "netns integration tests (real agent, real traffic)",
            vec![root_test("netns")],
        ),
        (
            "next-hop netns tests (programmed next hops; neighbour, route and link changes followed)",
            vec![root_test("nexthops")],
        ),
        (
            "isolation netns tests (the public side reaches the EIPs and what is listed, each mode, fast path on and off)",
            vec![root_test("isolation")],
        ),
        (
            "control-plane netns tests (modes, ENI move, restarts under traffic, kill -9, API)",
            vec![root_test("control")],
        ),
        (
            "ownership netns tests (a refused agent touches nothing live; operators' routes are never replaced)",
            vec![root_test("ownership")],
        ),
        (
            "writer netns tests (group commit under 16 clients and kill -9; reads during a large batch and during the start's reconcile; a commit failing on a full disk undone in memory and in the datapath)",
            vec![root_test("writer")],
        ),
        (
            "trace netns tests (drops into a pcapng read back, sampled translations, one tracer, the flag cleared)",
            vec![root_test("trace")],
        ),
        (
            "usage netns test (records of ended periods under traffic: nothing lost, nothing counted twice)",
            vec![root_test("usage")],
        ),
        (
            "metrics netns tests (a real Prometheus scrapes the agent under traffic; GET /metrics; the log level changed live)",
            vec![root_test("metrics")],
        ),
        (
            "top netns tests (`eip-nat top --once` under real traffic: per-EIP packets and bits per second both ways, zero without traffic, a drop rate, the filter; the live view's keys in tmux; /v1/top at 100,000 associations)",
            vec![root_test("top")],
        ),
        (
            "fleet netns tests on a real etcd (a change through one gateway on all; racing writers; etcd down and back; restart after a compaction; a member of three failing)",
            vec![root_test("fleet")],
        ),
        (
            "fleet security netns test on a real etcd with TLS and authentication (an agent with a CA, a client certificate and a user writes and translates; a wrong password refused with 500, no client certificate with 503)",
            vec![root_test("fleet_security")],
        ),
        (
            "active/standby netns test on a real etcd (two gateways on one L2 uplink: only the active answers ARP; the active's host dies, the standby takes over with gratuitous ARP, the loss measured; a stopped active hands over at once; with etcd gone the active stops answering ARP)",
            vec![root_test("standby")],
        ),
    ]
}

pub fn run(lanes: Lanes) -> Result<()> {
    if lanes == Lanes::All && !is_root() {
        bail!(
            "the privileged lane loads BPF programs and creates network namespaces: run \
             `cargo xtask test` as root (nothing is skipped), or `cargo xtask test \
             --unprivileged` for the lints and pure tests"
        );
    }
    let mut layers = unprivileged_lane();
    if lanes == Lanes::All {
        layers.extend(privileged_lane());
    }
    let mut done = Vec::new();
    for (name, commands) in layers {
        eprintln!("\n=== {name} ===");
        let start = Instant::now();
        for mut c in commands {
            if lanes == Lanes::All {
                // Built just before: a test that finds an empty stand-in
                // object fails instead of skipping.
                c.env("EIP_NAT_REQUIRE_OBJECTS", "1");
            }
            if let Err(e) = cmd::run(&mut c) {
                bail!("layer \"{name}\" failed: {e:#}");
            }
        }
        done.push((name, start.elapsed()));
    }
    eprintln!("\n=== summary ===");
    for (name, t) in &done {
        eprintln!("ok  {name} ({:.1}s)", t.as_secs_f64());
    }
    Ok(())
}
