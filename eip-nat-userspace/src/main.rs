//! `eip-nat`: the agent, and a CLI client of its API with one subcommand
//! per event.

use std::{
    io::Read,
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
    model::EniKind,
};
use event_cli::EventCommand;
use serde::Serialize;

mod event_cli;

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
    #[arg(long)]
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
    /// Log level (error, warn, info, debug, trace, or directives such as
    /// `info,eip_nat::server=debug`); RUST_LOG overrides; `eip-nat
    /// log-level` changes it while the agent runs.
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
    /// Also serve `GET /metrics` (only that, read-only, no token) on this
    /// TCP address, for Prometheus.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Per-EIP metrics for the N EIPs with the most bytes (0: all).
    #[arg(long)]
    metrics_top_eips: Option<usize>,
    /// Where the desired state lives: this gateway's own store, or etcd,
    /// shared by a fleet (docs/fleet.md).
    #[arg(long)]
    store: Option<config::StoreKind>,
    /// An etcd endpoint, e.g. http://10.0.0.1:2379 (repeat for more).
    #[arg(long = "etcd-endpoint", value_name = "URL")]
    etcd_endpoints: Vec<String>,
    /// The etcd key prefix of the fleet's state (default /eip-nat).
    #[arg(long)]
    etcd_prefix: Option<String>,
    /// TLS: the CA certificate etcd's certificates are checked against.
    #[arg(long)]
    etcd_ca_file: Option<PathBuf>,
    /// TLS: this agent's client certificate (with --etcd-key-file).
    #[arg(long)]
    etcd_cert_file: Option<PathBuf>,
    /// TLS: the key of the client certificate.
    #[arg(long)]
    etcd_key_file: Option<PathBuf>,
    /// etcd authentication: the user (with --etcd-password-file).
    #[arg(long)]
    etcd_user: Option<String>,
    /// etcd authentication: a file holding the password.
    #[arg(long)]
    etcd_password_file: Option<PathBuf>,
    /// active-active (default; ECMP in front), or active-standby: gateways
    /// on one L2 uplink, one of which answers ARP for the EIPs (docs/fleet.md).
    #[arg(long)]
    fleet_mode: Option<config::FleetMode>,
    /// active-standby: the group of gateways sharing one L2 segment.
    #[arg(long)]
    standby_group: Option<String>,
    /// active-standby: this gateway's name in its group (default: the host's name).
    #[arg(long)]
    node_name: Option<String>,
    /// active-standby: the leadership lease's TTL in seconds (default 2).
    #[arg(long)]
    lease_ttl_secs: Option<u32>,
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
            metrics_listen: self.metrics_listen,
            metrics_top_eips: self.metrics_top_eips,
            store: self.store,
            etcd_endpoints: (!self.etcd_endpoints.is_empty()).then(|| self.etcd_endpoints.clone()),
            etcd_prefix: self.etcd_prefix.clone(),
            etcd_ca_file: self.etcd_ca_file.clone(),
            etcd_cert_file: self.etcd_cert_file.clone(),
            etcd_key_file: self.etcd_key_file.clone(),
            etcd_user: self.etcd_user.clone(),
            etcd_password_file: self.etcd_password_file.clone(),
            fleet_mode: self.fleet_mode,
            standby_group: self.standby_group.clone(),
            node_name: self.node_name.clone(),
            lease_ttl_secs: self.lease_ttl_secs,
        };
        Ok(AgentConfig::try_from(file.overridden_by(flags))?)
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
    /// The events: `eni create`, `associate`, … (see `event_cli.rs`).
    #[command(flatten)]
    Event(EventCommand),
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
    /// Show packets as the datapath decides on them: every drop by
    /// default, translations when sampled. One tracer at a time; tracing
    /// stops when this command does.
    Trace(TraceArgs),
    /// Show what associations carried, per usage period that ended
    /// (disassociated, or the ENI detached, moved or relocated).
    Usage {
        /// Periods that ended since: a Unix time in seconds, or a time ago
        /// (`90s`, `15m`, `24h`, `7d`); default: all.
        #[arg(long)]
        since: Option<String>,
        /// This EIP's only.
        #[arg(long)]
        eip: Option<std::net::Ipv4Addr>,
    },
    /// Show the agent's log level, or set it (error, warn, info, debug,
    /// trace, or directives such as `info,eip_nat::server=debug`).
    LogLevel { level: Option<String> },
    /// Print the metrics, as Prometheus scrapes them.
    Metrics,
    /// A live view: packets and bits per second per EIP, in and out, drops
    /// by verdict, the generation lag. Keys: `s` sorts by the next column,
    /// `/` types a filter (on the EIP or the ENI), `q` or Esc quits.
    Top(TopArgs),
}

#[derive(clap::Args, Debug)]
struct TopArgs {
    /// Time between samples: `1s`, `500ms`, `2m`, or seconds.
    #[arg(long, default_value = "1s", value_parser = interval)]
    interval: std::time::Duration,
    /// Only EIPs whose address or ENI contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// The column to sort by.
    #[arg(long, value_enum, default_value_t)]
    sort: eip_nat::top::view::SortKey,
    /// EIPs the agent sends each time: the ones with the largest counters
    /// (bytes, or packets when sorting by packets).
    #[arg(long, default_value_t = eip_nat::api::TopQuery::DEFAULT_N)]
    limit: usize,
    /// Print one screen, two samples an interval apart, as text, and exit.
    #[arg(long)]
    once: bool,
    /// With --once: the screen's width.
    #[arg(long, default_value_t = 120)]
    width: u16,
    /// With --once: the screen's height (default: as high as its rows).
    #[arg(long)]
    height: Option<u16>,
}

/// `--interval`: a number and `ms`, `s` or `m`, or seconds.
fn interval(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number and ms, s or m"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: the unit is ms, s or m")),
    };
    std::time::Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?}: a positive time"))
}

fn top(client: &Client, args: &TopArgs) -> Result<()> {
    let options = eip_nat::top::screen::Options {
        interval: args.interval,
        n: args.limit,
    };
    let view = eip_nat::top::view::View {
        sort: args.sort,
        filter: args.filter.clone().unwrap_or_default(),
        ..Default::default()
    };
    if args.once {
        let screen = eip_nat::top::screen::once(client, &options, &view, args.width, args.height)?;
        print!("{screen}");
        return Ok(());
    }
    eip_nat::top::screen::live(client, &options, view)
}

/// `--since`: a Unix time in seconds, or a time ago.
fn since_unix(since: &str) -> Result<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (n, unit) = since.split_at(since.trim_end_matches(['s', 'm', 'h', 'd']).len());
    let n: u64 = n
        .parse()
        .with_context(|| format!("--since {since:?}: a Unix time, or a number and s, m, h or d"))?;
    let secs = match unit {
        "" => return Ok(n),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => anyhow::bail!("--since {since:?}: one unit of s, m, h or d"),
    };
    Ok(now.saturating_sub(secs))
}

fn print_usage(records: &[eip_nat::usage::UsageRecord]) {
    println!(
        "{:<16} {:<14} {:<11} {:<20} {:<20} {:>10} {:>12} {:>10} {:>12}",
        "EIP", "ENI", "MODE", "STARTED", "ENDED", "IN PKTS", "IN BYTES", "OUT PKTS", "OUT BYTES"
    );
    let time = |ns: u64| {
        let secs = ns / 1_000_000_000;
        format!("{secs}.{:03}", (ns / 1_000_000) % 1000)
    };
    for r in records {
        println!(
            "{:<16} {:<14} {:<11} {:<20} {:<20} {:>10} {:>12} {:>10} {:>12}",
            r.carried.eip.to_string(),
            r.carried.eni,
            r.carried.mode.name(),
            time(r.started_ns),
            time(r.ended_ns),
            r.counts.in_packets,
            r.counts.in_bytes,
            r.counts.out_packets,
            r.counts.out_bytes
        );
    }
}

#[derive(clap::Args, Debug)]
struct TraceArgs {
    /// Only packets to or from this address (an EIP, a private IP, a
    /// peer), before or after translation.
    #[arg(long)]
    addr: Option<std::net::Ipv4Addr>,
    /// Only this verdict (repeatable), e.g. drop_public_unlisted or
    /// translated_redirect; default: every drop.
    #[arg(long = "verdict")]
    verdicts: Vec<String>,
    /// Only packets arriving on this side: inbound (public) or outbound
    /// (private).
    #[arg(long)]
    direction: Option<String>,
    /// Also trace one translated packet in N (on average).
    #[arg(long)]
    sample: Option<u32>,
    /// Stop after this many packets.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Write a pcapng capture (tcpdump, Wireshark) instead of lines;
    /// each packet's comment names its side and verdict.
    #[arg(long)]
    pcap: Option<PathBuf>,
}

fn trace(client: &Client, args: &TraceArgs, json: bool) -> Result<()> {
    let request = eip_nat::trace::TraceRequest {
        verdicts: (!args.verdicts.is_empty()).then(|| args.verdicts.join(",")),
        direction: args.direction.clone(),
        addr: args.addr,
        sample: args.sample,
    };
    // Checked here too, for a message before anything is sent.
    request.config().map_err(anyhow::Error::msg)?;
    let query = serde_urlencoded::to_string(&request)?;
    let until = args
        .seconds
        .map(|s| std::time::Instant::now() + std::time::Duration::from_secs_f64(s));
    let mut pcap = match &args.pcap {
        Some(path) => Some(eip_nat::trace::Pcapng::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ))?),
        None => None,
    };
    let mut seen = 0u64;
    let mut failed = None;
    client.stream_lines(&format!("/v1/trace?{query}"), until, |line| {
        let record: eip_nat::trace::TraceRecord = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                failed = Some(anyhow::Error::from(e));
                return false;
            }
        };
        let written = match &mut pcap {
            Some(p) => p.write(&record).map_err(anyhow::Error::from),
            None if json => {
                println!("{}", String::from_utf8_lossy(line));
                Ok(())
            }
            None => {
                println!("{}", record.line());
                Ok(())
            }
        };
        if let Err(e) = written {
            failed = Some(e);
            return false;
        }
        seen += 1;
        args.count.is_none_or(|c| seen < c)
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(p) = pcap {
        use std::io::Write;
        p.into_inner().flush()?;
    }
    eprintln!("{seen} packets traced");
    Ok(())
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
    match cli.command {
        Command::Event(EventCommand(event)) => {
            return match client.event(&event) {
                Ok(g) => print_generation(&g, json).map(|()| ExitCode::SUCCESS),
                Err(e) => report(e, json),
            }
        }
        Command::Agent(args) => {
            let cfg = args.resolve(&cli.socket)?;
            if args.print_config {
                print_json(&cfg)?;
                return Ok(ExitCode::SUCCESS);
            }
            let log = eip_nat::logging::init(&cfg.log_level)?;
            // Two threads: the API keeps answering while one is busy
            // (large bodies are parsed and serialized on blocking threads,
            // and the writer has its own thread).
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(agent::run(cfg, Some(log)))?;
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
        Command::Trace(args) => trace(&client, &args, json)?,
        Command::Usage { since, eip } => {
            let since = since.as_deref().map(since_unix).transpose()?.unwrap_or(0);
            let records = client.usage(since, eip)?;
            if json {
                print_json(&records)?;
            } else {
                print_usage(&records);
            }
        }
        Command::LogLevel { level } => {
            let answer = match level {
                Some(level) => client.set_log_level(&level),
                None => client.log_level(),
            };
            match answer {
                Ok(l) if json => print_json(&l)?,
                Ok(l) => println!("{}", l.level),
                Err(e) => return report(e, json),
            }
        }
        Command::Metrics => print!("{}", client.metrics()?),
        Command::Top(args) => top(&client, &args)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eip_nat::model::{Event, Location, Mode};

    fn event(args: &[&str]) -> Event {
        let cli = Cli::try_parse_from(std::iter::once("eip-nat").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match cli.command {
            Command::Event(EventCommand(event)) => event,
            _ => panic!("{args:?} is no event"),
        }
    }

    /// The subcommands made from the events' schema are the CLI it always had.
    #[test]
    fn every_event_has_its_subcommand() {
        let ip = |s: &str| s.parse().unwrap();
        let at = Location {
            via: Some(ip("10.9.0.1")),
            dev: Some("eth1".into()),
        };
        let cases = [
            (
                &["eni", "create", "--eni", "e", "--kind", "primary"][..],
                &[
                    "--primary-ip",
                    "10.0.0.1",
                    "--instance",
                    "i",
                    "--via",
                    "10.9.0.1",
                ][..],
                Event::CreateEni {
                    eni: "e".into(),
                    kind: eip_nat::model::EniKind::Primary,
                    primary_ip: ip("10.0.0.1"),
                    instance: Some("i".into()),
                    location: Location {
                        via: Some(ip("10.9.0.1")),
                        dev: None,
                    },
                },
            ),
            (
                &["eni", "delete"][..],
                &["--eni", "e"][..],
                Event::DeleteEni { eni: "e".into() },
            ),
            (
                &["eni", "attach", "--eni", "e", "--instance", "i"][..],
                &["--via", "10.9.0.1", "--dev", "eth1"][..],
                Event::AttachEni {
                    eni: "e".into(),
                    instance: "i".into(),
                    location: at.clone(),
                },
            ),
            (
                &["eni", "detach"][..],
                &["--eni", "e"][..],
                Event::DetachEni { eni: "e".into() },
            ),
            (
                &["eni", "move", "--eni", "e", "--instance", "i"][..],
                &[][..],
                Event::MoveEni {
                    eni: "e".into(),
                    instance: "i".into(),
                    location: Location::default(),
                },
            ),
            (
                &["eni", "locate", "--eni", "e"][..],
                &["--via", "10.9.0.1", "--dev", "eth1"][..],
                Event::LocateEni {
                    eni: "e".into(),
                    location: at,
                },
            ),
            (
                &["ip", "assign", "--eni", "e"][..],
                &["--ip", "10.0.0.2"][..],
                Event::AssignIp {
                    eni: "e".into(),
                    ip: ip("10.0.0.2"),
                },
            ),
            (
                &["ip", "revoke", "--eni", "e"][..],
                &["--ip", "10.0.0.2"][..],
                Event::RevokeIp {
                    eni: "e".into(),
                    ip: ip("10.0.0.2"),
                },
            ),
            (
                &["associate", "--eip", "203.0.113.1", "--eni", "e"][..],
                &[][..],
                Event::Associate {
                    eip: ip("203.0.113.1"),
                    eni: "e".into(),
                    private_ip: None,
                    mode: Mode::Nat,
                },
            ),
            (
                &["associate", "--eip", "203.0.113.1", "--eni", "e"][..],
                &["--mode", "cut-through", "--private-ip", "10.0.0.1"][..],
                Event::Associate {
                    eip: ip("203.0.113.1"),
                    eni: "e".into(),
                    private_ip: Some(ip("10.0.0.1")),
                    mode: Mode::CutThrough,
                },
            ),
            (
                &["disassociate"][..],
                &["--eip", "203.0.113.1"][..],
                Event::Disassociate {
                    eip: ip("203.0.113.1"),
                },
            ),
            (
                &["instance", "terminate"][..],
                &["--instance", "i"][..],
                Event::TerminateInstance {
                    instance: "i".into(),
                },
            ),
        ];
        let mut tags = std::collections::BTreeSet::new();
        for (head, tail, want) in cases {
            let args: Vec<&str> = head.iter().chain(tail).copied().collect();
            assert_eq!(event(&args), want, "{args:?}");
            tags.insert(serde_json::to_value(&want).unwrap()["event"].to_string());
        }
        let schema: serde_json::Value = schemars::schema_for!(Event).into();
        assert_eq!(
            tags.len(),
            schema["oneOf"].as_array().unwrap().len(),
            "an event untested"
        );
        let bad = [
            &["associate", "--eip", "1.2.3", "--eni", "e"][..],
            &[
                "associate",
                "--eip",
                "203.0.113.1",
                "--eni",
                "e",
                "--mode",
                "x",
            ][..],
            &["eni", "create", "--eni", "e", "--kind", "primary"][..],
            &["eni", "delete", "--eni", "e", "--ip", "10.0.0.1"][..],
            &["eni"][..],
        ];
        for args in bad {
            let argv = std::iter::once("eip-nat").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?} was taken");
        }
        assert_eq!(interval("1s"), Ok(std::time::Duration::from_secs(1)));
        assert_eq!(interval("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert_eq!(interval("1.5"), Ok(std::time::Duration::from_millis(1500)));
        assert_eq!(interval("2m"), Ok(std::time::Duration::from_secs(120)));
        assert!(interval("0s").is_err() && interval("1h").is_err() && interval("x").is_err());
        assert!(matches!(
            Cli::try_parse_from(["eip-nat", "agent", "--xdp-mode", "generic"])
                .unwrap()
                .command,
            Command::Agent(a) if a.xdp_mode == Some(AttachMode::Generic)
        ));
    }
}
