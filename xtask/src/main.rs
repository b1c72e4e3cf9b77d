//! `cargo xtask`: what cargo alone cannot do here. Installs the BPF
//! toolchain, builds the eBPF object with Debian's rustc, runs the root-only
//! tests and the demo.

mod bootstrap;
mod build;
mod cmd;
mod layout;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and tests need (apt packages, bpf-linker),
    /// idempotently; fast when everything is present.
    Bootstrap,
    /// Bootstrap, then build the BPF object and `target/release/eip-nat`.
    Build,
    /// Build, then run both lanes: the unprivileged one (lints, host unit
    /// and property tests) and, as root, the privileged one
    /// (BPF_PROG_TEST_RUN datapath tests, netns integration tests).
    Test {
        /// The unprivileged lane only: no root, no BPF toolchain, no build.
        #[arg(long)]
        unprivileged: bool,
    },
    /// Build, then show translation on a small namespace topology.
    Demo {
        /// Two gateways sharing one etcd instead (docs/fleet.md).
        #[arg(long)]
        fleet: bool,
    },
    /// Build, then run N random and mutated packets through the loaded
    /// program and the reference model; prints the seed, which reproduces.
    Fuzz {
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Build, then measure eip-nat beside its peers; writes
    /// target/bench/results.{md,json}.
    Bench {
        /// 1-second repetitions and 100,000 associations: a smoke run.
        #[arg(long)]
        quick: bool,
        /// Only one part: throughput, micro or control (or express: the
        /// express lane's per-packet case alone, for work on the lane).
        #[arg(long)]
        only: Option<String>,
        /// Throughput with the gateway in one placement only: one-core
        /// (everything on CPU 0) or own-cpu (the gateway on CPU 1).
        #[arg(long)]
        placement: Option<String>,
        /// Throughput of these peers only, by key, comma-separated (e.g.
        /// `direct,min-nat,fast`: the comparison and the rig's own cost).
        #[arg(long)]
        peers: Option<String>,
        /// Rounds of every throughput cell (default 3): more narrow the
        /// medians on a noisy machine.
        #[arg(long)]
        repetitions: Option<usize>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bootstrap => bootstrap::run(),
        Command::Build => {
            bootstrap::run()?;
            build::all()
        }
        Command::Test { unprivileged: true } => {
            bootstrap::protoc()?;
            test::run(test::Lanes::Unprivileged)
        }
        Command::Test {
            unprivileged: false,
        } => {
            bootstrap::run()?;
            build::all()?;
            test::run(test::Lanes::All)
        }
        Command::Demo { fleet } => {
            bootstrap::run()?;
            build::all()?;
            build::demo(fleet)
        }
        Command::Fuzz { packets, seed } => {
            bootstrap::run()?;
            build::all()?;
            test::fuzz(packets, seed)
        }
        Command::Bench {
            quick,
            only,
            placement,
            peers,
            repetitions,
        } => {
            bootstrap::run()?;
            build::all()?;
            build::bench(
                quick,
                only.as_deref(),
                placement.as_deref(),
                peers.as_deref(),
                repetitions,
            )
        }
    }
}
