//! `eip-nat`: the agent, and a CLI client of its API with one subcommand
//! per event.

use std::{
    io::Read,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use eip_nat::{
    agent,
    api::{self, Batch, Generation, Stats},
    client::{Client, ClientError},
    config::{self, AgentConfig, FileConfig},
    datapath::AttachMode,
    model::{EniKind, Event, Location, Mode},
};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "eip-nat", version, about = "EIP ↔ ENI association in XDP")]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Default)]
struct AgentArgs {
    /// TOML configuration file (see docs/operating.md); flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Interface towards the Internet: EIP → private IP on its ingress.
    #[arg(long)]
    public_if: Option<String>,
    /// Interface towards the instances: private IP → EIP on its ingress.
    #[arg(long)]
    private_if: Option<String>,
    /// XDP attach mode (auto, native, generic).
    #[arg(long, value_enum)]
    xdp_mode: Option<AttachMode>,
    /// Pass translated packets to the kernel's stack instead of
    /// forwarding them with XDP_REDIRECT (slower; lets netfilter see them).
    #[arg(long)]
    no_fast_path: bool,
    /// Directory of the durable desired state.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// bpffs directory for the pinned maps and links.
    #[arg(long)]
    bpffs_dir: Option<PathBuf>,
    /// Capacity of the association tables.
    #[arg(long)]
    max_associations: Option<u32>,
    /// EIPs one ENI may carry in multi-EIP mode.
    #[arg(long)]
    multi_eip_quota: Option<u32>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
    #[arg(long)]
    log_level: Option<String>,
    /// Remove the datapath when the agent stops (default: leave it running
    /// for the next agent, a hitless restart).
    #[arg(long)]
    detach_on_exit: bool,
    /// Also serve the API on this TCP address (needs --token-file).
    #[arg(long)]
    tcp_listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token the TCP listener requires.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A prefix the public side may reach unchanged, routed through by the
    /// kernel (repeat for more). Everything else that is no EIP and no
    /// address of the gateway's is dropped on the public side.
    #[arg(long = "routed-prefix", value_name = "CIDR")]
    routed_prefixes: Vec<ipnet::Ipv4Net>,
    /// Print the configuration in effect and exit.
    #[arg(long)]
    print_config: bool,
}

impl AgentArgs {
    fn resolve(&self, socket: &Path) -> Result<AgentConfig> {
        let (path, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(config::DEFAULT_CONFIG), false),
        };
        let file = FileConfig::read(&path, explicit)?;
        let flags = FileConfig {
            public_if: self.public_if.clone(),
            private_if: self.private_if.clone(),
            xdp_mode: self.xdp_mode,
            fast_path: self.no_fast_path.then_some(false),
            socket: (socket != Path::new(api::DEFAULT_SOCKET)).then(|| socket.to_path_buf()),
            state_dir: self.state_dir.clone(),
            bpffs_dir: self.bpffs_dir.clone(),
            max_associations: self.max_associations,
            multi_eip_quota: self.multi_eip_quota,
            log_level: self.log_level.clone(),
            detach_on_exit: self.detach_on_exit.then_some(true),
            tcp_listen: self.tcp_listen,
            token_file: self.token_file.clone(),
            routed_prefixes: (!self.routed_prefixes.is_empty())
                .then(|| self.routed_prefixes.clone()),
        };
        Ok(AgentConfig::try_from(file.overridden_by(flags))?)
    }
}

/// Where an ENI lives, as flags.
#[derive(Args, Clone, Default)]
struct LocationArgs {
    /// Next hop through which the gateway reaches the ENI.
    #[arg(long)]
    via: Option<Ipv4Addr>,
    /// Interface through which the gateway reaches the ENI.
    #[arg(long)]
    dev: Option<String>,
}

impl From<LocationArgs> for Location {
    fn from(l: LocationArgs) -> Self {
        Location {
            via: l.via,
            dev: l.dev,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground until SIGINT/SIGTERM.
    Agent(Box<AgentArgs>),
    /// Remove the datapath (pinned links and maps) and the agent's routes.
    /// The stored state stays; the next agent puts everything back.
    Teardown {
        #[arg(long, default_value = config::DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
    },
    /// ENI events.
    #[command(subcommand)]
    Eni(EniCommand),
    /// Secondary private IP events.
    #[command(subcommand)]
    Ip(IpCommand),
    /// Instance events.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Associate an EIP with an ENI.
    Associate {
        #[arg(long)]
        eip: Ipv4Addr,
        #[arg(long)]
        eni: String,
        /// NAT: which private IP (default: the ENI's primary). Cut-through:
        /// the primary, if given. Multi-EIP: none.
        #[arg(long)]
        private_ip: Option<Ipv4Addr>,
        #[arg(long, value_enum, default_value_t = Mode::Nat)]
        mode: Mode,
    },
    /// Remove an EIP's association; it stops reaching its ENI at once.
    Disassociate {
        #[arg(long)]
        eip: Ipv4Addr,
    },
    /// Apply a JSON file of events (`{"events": [...]}`, `-` for stdin) all
    /// or nothing.
    Batch {
        file: PathBuf,
        /// Refuse unless the current generation is this one.
        #[arg(long)]
        if_generation: Option<u64>,
    },
    /// Show the ENIs and associations.
    List,
    /// Show the counters: per verdict and per EIP.
    Stats,
    /// Show the desired generation and the one the datapath reflects.
    Generation,
}

#[derive(Subcommand)]
enum EniCommand {
    /// Create an ENI: a primary one with its instance, or a detached
    /// secondary one.
    Create {
        #[arg(long)]
        eni: String,
        #[arg(long, value_enum)]
        kind: EniKind,
        #[arg(long)]
        primary_ip: Ipv4Addr,
        /// The instance (primary ENIs only).
        #[arg(long)]
        instance: Option<String>,
        #[command(flatten)]
        location: LocationArgs,
    },
    /// Delete a detached secondary ENI without EIPs.
    Delete {
        #[arg(long)]
        eni: String,
    },
    /// Attach a secondary ENI to an instance.
    Attach {
        #[arg(long)]
        eni: String,
        #[arg(long)]
        instance: String,
        #[command(flatten)]
        location: LocationArgs,
    },
    /// Detach a secondary ENI; its EIPs stay associated but reach nothing.
    Detach {
        #[arg(long)]
        eni: String,
    },
    /// Move a secondary ENI (and its EIPs) to another instance.
    Move {
        #[arg(long)]
        eni: String,
        #[arg(long)]
        instance: String,
        #[command(flatten)]
        location: LocationArgs,
    },
    /// Record where an attached ENI now lives.
    Locate {
        #[arg(long)]
        eni: String,
        #[command(flatten)]
        location: LocationArgs,
    },
}

#[derive(Subcommand)]
enum IpCommand {
    /// Assign a secondary private IP to an ENI.
    Assign {
        #[arg(long)]
        eni: String,
        #[arg(long)]
        ip: Ipv4Addr,
    },
    /// Revoke a secondary private IP (refused while it carries an EIP).
    Revoke {
        #[arg(long)]
        eni: String,
        #[arg(long)]
        ip: Ipv4Addr,
    },
}

#[derive(Subcommand)]
enum InstanceCommand {
    /// The instance is gone, with its primary ENI.
    Terminate {
        #[arg(long)]
        instance: String,
    },
}

fn event_of(command: Command) -> std::result::Result<Event, Command> {
    Ok(match command {
        Command::Eni(EniCommand::Create {
            eni,
            kind,
            primary_ip,
            instance,
            location,
        }) => Event::CreateEni {
            eni,
            kind,
            primary_ip,
            instance,
            location: location.into(),
        },
        Command::Eni(EniCommand::Delete { eni }) => Event::DeleteEni { eni },
        Command::Eni(EniCommand::Attach {
            eni,
            instance,
            location,
        }) => Event::AttachEni {
            eni,
            instance,
            location: location.into(),
        },
        Command::Eni(EniCommand::Detach { eni }) => Event::DetachEni { eni },
        Command::Eni(EniCommand::Move {
            eni,
            instance,
            location,
        }) => Event::MoveEni {
            eni,
            instance,
            location: location.into(),
        },
        Command::Eni(EniCommand::Locate { eni, location }) => Event::LocateEni {
            eni,
            location: location.into(),
        },
        Command::Ip(IpCommand::Assign { eni, ip }) => Event::AssignIp { eni, ip },
        Command::Ip(IpCommand::Revoke { eni, ip }) => Event::RevokeIp { eni, ip },
        Command::Instance(InstanceCommand::Terminate { instance }) => {
            Event::TerminateInstance { instance }
        }
        Command::Associate {
            eip,
            eni,
            private_ip,
            mode,
        } => Event::Associate {
            eip,
            eni,
            private_ip,
            mode,
        },
        Command::Disassociate { eip } => Event::Disassociate { eip },
        other => return Err(other),
    })
}

fn print_json(v: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_generation(g: &Generation, json: bool) -> Result<()> {
    if json {
        return print_json(g);
    }
    println!(
        "generation {} (datapath at {})",
        g.generation, g.applied_generation
    );
    Ok(())
}

fn print_stats(s: &Stats) {
    println!(
        "{:<10} {:<30} {:>12} {:>14}",
        "DIRECTION", "VERDICT", "PACKETS", "BYTES"
    );
    for v in s.verdicts.iter().filter(|v| v.packets > 0) {
        println!(
            "{:<10} {:<30} {:>12} {:>14}",
            v.direction.name(),
            v.verdict.name(),
            v.packets,
            v.bytes
        );
    }
    println!();
    println!(
        "{:<16} {:<12} {:<16} {:>10} {:>12} {:>10} {:>12}",
        "EIP", "MODE", "PRIVATE IP", "IN PKTS", "IN BYTES", "OUT PKTS", "OUT BYTES"
    );
    for e in &s.eips {
        let private = e.private_ip.map_or("-".into(), |p| p.to_string());
        println!(
            "{:<16} {:<12} {:<16} {:>10} {:>12} {:>10} {:>12}",
            e.eip,
            e.mode.name(),
            private,
            e.in_packets,
            e.in_bytes,
            e.out_packets,
            e.out_bytes
        );
    }
}

fn print_state(client: &Client, json: bool) -> Result<()> {
    let s = client.state()?;
    if json {
        return print_json(&s);
    }
    println!(
        "{:<20} {:<10} {:<16} {:<16} {:<24} SECONDARY IPS",
        "ENI", "KIND", "PRIMARY IP", "INSTANCE", "LOCATION"
    );
    for e in &s.enis {
        let (instance, location) = match &e.eni.attachment {
            Some(a) => (a.instance.clone(), a.location.to_string()),
            None => ("(detached)".into(), "-".into()),
        };
        let secondary: Vec<String> = e.eni.secondary_ips.iter().map(|i| i.to_string()).collect();
        let kind = match e.eni.kind {
            EniKind::Primary => "primary",
            EniKind::Secondary => "secondary",
        };
        println!(
            "{:<20} {:<10} {:<16} {:<16} {:<24} {}",
            e.id,
            kind,
            e.eni.primary_ip,
            instance,
            location,
            secondary.join(",")
        );
    }
    println!();
    println!("{:<16} {:<12} {:<20} PRIVATE IP", "EIP", "MODE", "ENI");
    for a in &s.associations {
        let private = a.private_ip.map_or("-".into(), |p| p.to_string());
        println!(
            "{:<16} {:<12} {:<20} {}",
            a.eip,
            a.mode.name(),
            a.eni,
            private
        );
    }
    Ok(())
}

/// Refusals go to stderr with the rule, and exit 1.
fn report(e: ClientError, json: bool) -> Result<ExitCode> {
    match e.api() {
        Some(error) if json => {
            print_json(&api::ErrorBody {
                error: error.clone(),
            })?;
        }
        Some(error) => {
            let rule = error
                .rule
                .as_deref()
                .map_or(String::new(), |r| format!(" [{r}]"));
            eprintln!("{}{rule}: {}", error.kind, error.message);
        }
        None => return Err(e.into()),
    }
    Ok(ExitCode::FAILURE)
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let client = Client::new(&cli.socket);
    let json = cli.json;
    let command = match event_of(cli.command) {
        Ok(event) => {
            return match client.event(&event) {
                Ok(g) => print_generation(&g, json).map(|()| ExitCode::SUCCESS),
                Err(e) => report(e, json),
            }
        }
        Err(command) => command,
    };
    match command {
        Command::Agent(args) => {
            let cfg = args.resolve(&cli.socket)?;
            if args.print_config {
                print_json(&cfg)?;
                return Ok(ExitCode::SUCCESS);
            }
            env_logger::Builder::new()
                .filter_level(cfg.log_level.parse()?)
                .parse_env("RUST_LOG")
                .init();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(agent::run(cfg))?;
        }
        Command::Teardown { bpffs_dir } => {
            agent::teardown(&bpffs_dir)?;
            if json {
                print_json(&serde_json::json!({ "removed": bpffs_dir }))?;
            } else {
                println!("removed the datapath under {}", bpffs_dir.display());
            }
        }
        Command::Batch {
            file,
            if_generation,
        } => {
            let mut text = String::new();
            if file == Path::new("-") {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
            }
            let mut batch: Batch = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a batch of events", file.display()))?;
            batch.if_generation = if_generation.or(batch.if_generation);
            match client.batch(&batch) {
                Ok(g) => print_generation(&g, json)?,
                Err(e) => return report(e, json),
            }
        }
        Command::List => print_state(&client, json)?,
        Command::Stats => {
            let s = client.stats()?;
            if json {
                print_json(&s)?;
            } else {
                print_stats(&s);
            }
        }
        Command::Generation => print_generation(&client.generation()?, json)?,
        _ => unreachable!("events are handled above"),
    }
    Ok(ExitCode::SUCCESS)
}
