//! The loaded XDP program and its maps, behind a typed API.

use std::net::Ipv4Addr;

use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use eip_nat_common::{
    maps::{self as names, verdict_index, Ipv4Key},
    Config, Direction, EipCounters, NatEntry, Verdict, VerdictCounter,
};
use thiserror::Error;

use crate::associations::Association;

/// The BPF object, embedded at build time so the agent ships as one file.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/eip-nat"));

/// Name of the XDP program in [`OBJECT`].
pub const PROGRAM: &str = "eip_nat";

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("loading the BPF object failed (are you root, with bpffs and BTF available?)")]
    Load(#[source] EbpfError),
    #[error("the BPF object has no {0}; it does not match this agent")]
    Missing(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {0}")]
    Program(&'static str, #[source] ProgramError),
    #[error("attaching XDP to {iface} in {mode} mode")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("adding ifindex {0} to the fast path's TX_PORTS")]
    TxPort(u32, #[source] aya::maps::xdp::XdpMapError),
    #[error("reading the number of possible CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
}

/// How to attach: let the driver decide, or force one mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) XDP where the driver supports it, else generic.
    #[default]
    Auto,
    /// Native only; fail if the driver cannot.
    Native,
    /// Generic (SKB) XDP, which works on any interface but is slower.
    Generic,
}

pub fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "kernel's choice",
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Capacity of the association maps and per-EIP counters.
    pub max_associations: u32,
    /// Level above which the program's own log lines are dropped in the
    /// kernel, before they cost a ring-buffer write.
    pub kernel_log_level: log::LevelFilter,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_associations: names::DEFAULT_MAX_ASSOCIATIONS,
            kernel_log_level: log::LevelFilter::Info,
        }
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    tx_ports: DevMapHash<MapData>,
    eip_to_private: HashMap<MapData, Ipv4Key, NatEntry>,
    private_to_eip: HashMap<MapData, Ipv4Key, NatEntry>,
    verdicts: PerCpuArray<MapData, VerdictCounter>,
    eip_counters: PerCpuArray<MapData, EipCounters>,
}

/// Takes map `name` out of the object, typed.
pub(crate) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::Missing(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Wraps a map error with the map's name.
pub(crate) fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn key(addr: Ipv4Addr) -> Ipv4Key {
    addr.octets()
}

impl Datapath {
    /// Loads and verifies the program, with empty tables and no interfaces
    /// configured (every packet passes as `pass_unknown_interface`).
    pub fn load(opts: LoadOptions) -> Result<Self, DatapathError> {
        let level = opts.kernel_log_level as u8;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::EIP_TO_PRIVATE, opts.max_associations)
            .map_max_entries(names::PRIVATE_TO_EIP, opts.max_associations)
            .map_max_entries(names::EIP_COUNTERS, opts.max_associations)
            .override_global(aya_log::LEVEL, &level, false)
            .load(OBJECT)
            .map_err(DatapathError::Load)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DatapathError::Missing(PROGRAM))?
            .try_into()
            .map_err(|e| DatapathError::Program(PROGRAM, e))?;
        program
            .load()
            .map_err(|e| DatapathError::Program(PROGRAM, e))?;
        Ok(Self {
            config: take(&mut ebpf, names::CONFIG)?,
            tx_ports: take(&mut ebpf, names::TX_PORTS)?,
            eip_to_private: take(&mut ebpf, names::EIP_TO_PRIVATE)?,
            private_to_eip: take(&mut ebpf, names::PRIVATE_TO_EIP)?,
            verdicts: take(&mut ebpf, names::VERDICT_COUNTERS)?,
            eip_counters: take(&mut ebpf, names::EIP_COUNTERS)?,
            ebpf,
        })
    }

    /// The program, for attaching or for `BPF_PROG_TEST_RUN`.
    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("checked at load")
    }

    /// Starts the kernel-log reader (aya-log). Call once, from the agent.
    pub fn logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, aya_log::Error> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
    }

    /// Sets the interfaces' roles and the options.
    pub fn set_config(&mut self, cfg: Config) -> Result<(), DatapathError> {
        self.config.set(0, cfg, 0).map_err(map_err(names::CONFIG))
    }

    /// Lets the fast path redirect to `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DatapathError::TxPort(ifindex, e))
    }

    pub fn remove_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.tx_ports
            .remove(ifindex)
            .map_err(map_err(names::TX_PORTS))
    }

    /// Attaches to `iface`'s ingress and returns the mode in effect.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode, DatapathError> {
        let program = self.program_mut();
        let mut try_mode = |m: XdpMode| {
            program
                .attach(iface, m)
                .map(|_| m)
                .map_err(|source| match source {
                    ProgramError::UnknownInterface { .. } => {
                        DatapathError::NoSuchInterface(iface.to_string())
                    }
                    source => DatapathError::Attach {
                        iface: iface.to_string(),
                        mode: mode_name(m),
                        source,
                    },
                })
        };
        match mode {
            AttachMode::Native => try_mode(XdpMode::Driver),
            AttachMode::Generic => try_mode(XdpMode::Skb),
            AttachMode::Auto => match try_mode(XdpMode::Driver) {
                Err(DatapathError::Attach { source, .. }) => {
                    log::warn!(
                        "{iface}: native XDP unavailable ({source}); using generic XDP, which is slower"
                    );
                    try_mode(XdpMode::Skb)
                }
                other => other,
            },
        }
    }

    /// Installs an association: counters zeroed first, then both directions.
    /// On failure nothing is left behind.
    pub fn insert(&mut self, a: &Association) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
        let zero = PerCpuValues::try_from(vec![EipCounters::default(); cpus])
            .map_err(DatapathError::Cpus)?;
        self.eip_counters
            .set(a.slot, zero, 0)
            .map_err(map_err(names::EIP_COUNTERS))?;
        let out = NatEntry {
            addr: key(a.eip),
            slot: a.slot,
        };
        let inb = NatEntry {
            addr: key(a.private_ip),
            slot: a.slot,
        };
        self.private_to_eip
            .insert(key(a.private_ip), out, 0)
            .map_err(map_err(names::PRIVATE_TO_EIP))?;
        if let Err(e) = self.eip_to_private.insert(key(a.eip), inb, 0) {
            let _ = self.private_to_eip.remove(&key(a.private_ip));
            return Err(map_err(names::EIP_TO_PRIVATE)(e));
        }
        Ok(())
    }

    /// Removes an association; inbound first, so the EIP stops reaching the
    /// private IP before anything else changes.
    pub fn remove(&mut self, a: &Association) -> Result<(), DatapathError> {
        self.eip_to_private
            .remove(&key(a.eip))
            .map_err(map_err(names::EIP_TO_PRIVATE))?;
        self.private_to_eip
            .remove(&key(a.private_ip))
            .map_err(map_err(names::PRIVATE_TO_EIP))
    }

    /// Entries of both maps, for checks that they agree with the agent.
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, NatEntry, Option<NatEntry>)>, DatapathError> {
        let mut out = Vec::new();
        for item in self.eip_to_private.iter() {
            let (eip, inb) = item.map_err(map_err(names::EIP_TO_PRIVATE))?;
            let back = self.private_to_eip.get(&inb.addr, 0).ok();
            out.push((Ipv4Addr::from(eip), inb, back));
        }
        Ok(out)
    }

    /// Global counters, summed over CPUs, for every (direction, verdict).
    pub fn verdict_counters(
        &self,
    ) -> Result<Vec<(Direction, Verdict, VerdictCounter)>, DatapathError> {
        let mut out = Vec::with_capacity(Direction::COUNT * Verdict::COUNT);
        for d in Direction::ALL {
            for v in Verdict::ALL {
                let per_cpu = self
                    .verdicts
                    .get(&verdict_index(d, v), 0)
                    .map_err(map_err(names::VERDICT_COUNTERS))?;
                let mut sum = VerdictCounter::default();
                per_cpu.iter().for_each(|c| sum += *c);
                out.push((d, v, sum));
            }
        }
        Ok(out)
    }

    /// Counters of the association in `slot`, summed over CPUs.
    pub fn eip_counters(&self, slot: u32) -> Result<EipCounters, DatapathError> {
        let per_cpu = self
            .eip_counters
            .get(&slot, 0)
            .map_err(map_err(names::EIP_COUNTERS))?;
        let mut sum = EipCounters::default();
        per_cpu.iter().for_each(|c| sum += *c);
        Ok(sum)
    }
}
