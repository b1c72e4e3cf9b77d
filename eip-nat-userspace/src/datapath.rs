//! The loaded XDP program and its maps, behind a typed API.

use std::net::Ipv4Addr;

use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use eip_nat_common::{
    maps::{self as names, verdict_index, Ipv4Key},
    maps::{ADDR_IS_EIP, ADDR_IS_PRIVATE},
    AddrEntry, Config, Direction, EipCounters, Verdict, VerdictCounter,
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
    addresses: HashMap<MapData, Ipv4Key, AddrEntry>,
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
            // Each association has two addresses.
            .map_max_entries(names::ADDRESSES, opts.max_associations.saturating_mul(2))
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
            addresses: take(&mut ebpf, names::ADDRESSES)?,
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

    /// The entry of `addr`, if any.
    fn entry(&self, addr: Ipv4Addr) -> Result<Option<AddrEntry>, DatapathError> {
        match self.addresses.get(&key(addr), 0) {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::ADDRESSES)(e)),
        }
    }

    /// Writes `addr`'s entry, or deletes it when no role is left.
    fn put(&mut self, addr: Ipv4Addr, e: AddrEntry) -> Result<(), DatapathError> {
        let r = if e.flags == 0 {
            self.addresses.remove(&key(addr))
        } else {
            self.addresses.insert(key(addr), e, 0)
        };
        r.map_err(map_err(names::ADDRESSES))
    }

    /// Installs an association: counters zeroed first, then the private
    /// IP's entry (outbound), then the EIP's (inbound). Each entry is
    /// replaced whole, so the datapath never sees half of one; on failure
    /// nothing is left behind.
    pub fn insert(&mut self, a: &Association) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
        let zero = PerCpuValues::try_from(vec![EipCounters::default(); cpus])
            .map_err(DatapathError::Cpus)?;
        self.eip_counters
            .set(a.slot, zero, 0)
            .map_err(map_err(names::EIP_COUNTERS))?;
        let private_before = self.entry(a.private_ip)?;
        let mut private = private_before.unwrap_or_default();
        private.flags |= ADDR_IS_PRIVATE;
        private.eip = key(a.eip);
        private.private_slot = a.slot;
        self.put(a.private_ip, private)?;
        let mut eip = self.entry(a.eip)?.unwrap_or_default();
        eip.flags |= ADDR_IS_EIP;
        eip.private_ip = key(a.private_ip);
        eip.eip_slot = a.slot;
        if let Err(e) = self.put(a.eip, eip) {
            let _ = self.put(a.private_ip, private_before.unwrap_or_default());
            return Err(e);
        }
        Ok(())
    }

    /// Removes an association; the EIP first, so it stops reaching the
    /// private IP before anything else changes.
    pub fn remove(&mut self, a: &Association) -> Result<(), DatapathError> {
        if let Some(mut e) = self.entry(a.eip)? {
            e.flags &= !ADDR_IS_EIP;
            e.private_ip = [0; 4];
            e.eip_slot = 0;
            self.put(a.eip, e)?;
        }
        if let Some(mut p) = self.entry(a.private_ip)? {
            p.flags &= !ADDR_IS_PRIVATE;
            p.eip = [0; 4];
            p.private_slot = 0;
            self.put(a.private_ip, p)?;
        }
        Ok(())
    }

    /// Every entry of the address map, for checks that it agrees with the
    /// agent's table.
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, AddrEntry)>, DatapathError> {
        self.addresses
            .iter()
            .map(|item| {
                item.map(|(k, v)| (Ipv4Addr::from(k), v))
                    .map_err(map_err(names::ADDRESSES))
            })
            .collect()
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
