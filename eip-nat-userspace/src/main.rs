//! `eip-nat`: the agent and its CLI.

use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use eip_nat::{
    agent::{self, AgentConfig},
    control::{self, Reply, Request, Response, Stats},
    datapath::{AttachMode, LoadOptions},
};
use eip_nat_common::maps::DEFAULT_MAX_ASSOCIATIONS;

#[derive(Parser)]
#[command(
    name = "eip-nat",
    version,
    about = "EIP ↔ private IP translation in XDP"
)]
struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground until SIGINT/SIGTERM.
    Agent {
        /// Interface towards the Internet: EIP → private IP on its ingress.
        #[arg(long)]
        public_if: String,
        /// Interface towards the instances: private IP → EIP on its ingress.
        #[arg(long)]
        private_if: String,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t)]
        xdp_mode: AttachMode,
        /// Pass translated packets to the kernel's stack instead of
        /// forwarding them with XDP_REDIRECT (slower; lets netfilter see them).
        #[arg(long)]
        no_fast_path: bool,
        /// Capacity of the association tables.
        #[arg(long, default_value_t = DEFAULT_MAX_ASSOCIATIONS)]
        max_associations: u32,
        /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
        #[arg(long, default_value = "info")]
        log_level: log::LevelFilter,
    },
    /// Associate an EIP with a private IP (NAT mode).
    Associate {
        #[arg(long)]
        eip: Ipv4Addr,
        #[arg(long)]
        private_ip: Ipv4Addr,
    },
    /// Remove an EIP's association; it stops translating at once.
    Disassociate {
        #[arg(long)]
        eip: Ipv4Addr,
    },
    /// Show the associations.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show the counters: per verdict and per EIP.
    Stats {
        #[arg(long)]
        json: bool,
    },
}

fn print_stats(s: &Stats) {
    println!(
        "{:<10} {:<26} {:>12} {:>14}",
        "DIRECTION", "VERDICT", "PACKETS", "BYTES"
    );
    for v in s.verdicts.iter().filter(|v| v.packets > 0) {
        println!(
            "{:<10} {:<26} {:>12} {:>14}",
            v.direction, v.verdict, v.packets, v.bytes
        );
    }
    println!();
    println!(
        "{:<16} {:<16} {:>10} {:>12} {:>10} {:>12}",
        "EIP", "PRIVATE IP", "IN PKTS", "IN BYTES", "OUT PKTS", "OUT BYTES"
    );
    for e in &s.eips {
        println!(
            "{:<16} {:<16} {:>10} {:>12} {:>10} {:>12}",
            e.eip, e.private_ip, e.in_packets, e.in_bytes, e.out_packets, e.out_bytes
        );
    }
}

fn client(socket: &std::path::Path, request: Request, json: bool) -> Result<ExitCode> {
    match control::call(socket, &request)? {
        Response::Ok(reply) => {
            match (&reply, json) {
                (Reply::List(l), true) => println!("{}", serde_json::to_string_pretty(l)?),
                (Reply::Stats(s), true) => println!("{}", serde_json::to_string_pretty(s)?),
                (Reply::List(l), false) => {
                    println!("{:<16} {:<16}", "EIP", "PRIVATE IP");
                    for a in l {
                        println!("{:<16} {:<16}", a.eip, a.private_ip);
                    }
                }
                (Reply::Stats(s), false) => print_stats(s),
                (Reply::Associated(a), _) => println!("associated {} -> {}", a.eip, a.private_ip),
                (Reply::Disassociated(a), _) => {
                    println!("disassociated {} (was {})", a.eip, a.private_ip)
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Refused(why) => {
            eprintln!("refused: {why}");
            Ok(ExitCode::FAILURE)
        }
        Response::Failed(why) => {
            eprintln!("failed: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent {
            public_if,
            private_if,
            xdp_mode,
            no_fast_path,
            max_associations,
            log_level,
        } => {
            env_logger::Builder::new()
                .filter_level(log_level)
                .parse_env("RUST_LOG")
                .init();
            let cfg = AgentConfig {
                public_if,
                private_if,
                mode: xdp_mode,
                fast_path: !no_fast_path,
                socket: cli.socket,
                load: LoadOptions {
                    max_associations,
                    kernel_log_level: log::max_level(),
                },
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(agent::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Associate { eip, private_ip } => {
            client(&cli.socket, Request::Associate { eip, private_ip }, false)
        }
        Command::Disassociate { eip } => client(&cli.socket, Request::Disassociate { eip }, false),
        Command::List { json } => client(&cli.socket, Request::List, json),
        Command::Stats { json } => client(&cli.socket, Request::Stats, json),
    }
}
