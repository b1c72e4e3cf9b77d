//! The loaded XDP program and its maps, behind a typed API.

use std::{collections::BTreeMap, net::Ipv4Addr, os::fd::AsFd, sync::Arc};

use ipnet::Ipv4Net;

use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        Array, DevMap, DevMapHash, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray,
        RingBuf,
    },
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use eip_nat_common::{
    maps::{self as names, verdict_index, ArpConfig, IcmpConfig, Ipv4Key, NextHop, TraceConfig},
    AddrEntry, Config, Direction, EipCounters, Verdict, VerdictCounter,
};
use thiserror::Error;

/// The BPF object, embedded at build time so the agent ships as one file.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/eip-nat"));

/// Name of the XDP program in [`OBJECT`].
pub const PROGRAM: &str = "eip_nat";

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("this build of eip-nat has no BPF object embedded (it was built without one): build it with `cargo xtask build`")]
    NoObject,
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
    #[error("no free TX_SLOTS slot for ifindex {0}")]
    NoTxSlot(u32),
    #[error("adding ifindex {0} to the fast path's TX_PORTS")]
    TxPort(u32, #[source] aya::maps::xdp::XdpMapError),
    #[error("pinned link {path}: {why}")]
    Pin { path: String, why: String },
    #[error("reading the number of possible CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
}

/// How to attach: let the driver decide, or force one mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP where the driver supports it, else generic.
    #[default]
    Auto,
    /// Native only; fail if the driver cannot.
    Native,
    /// Generic (SKB) XDP, which works on any interface but is slower.
    Generic,
}

impl std::str::FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            _ => Err(format!("{s:?} is not an XDP mode (auto, native, generic)")),
        }
    }
}

pub fn mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "kernel's choice",
    }
}

/// The maps the agent pins, so that they (and the tables and counters in
/// them) outlive it.
pub const PINNED_MAPS: [&str; 10] = [
    names::TX_SLOTS,
    names::ADDRESS_FILTER,
    names::CONFIG,
    names::TX_PORTS,
    names::ADDRESSES,
    names::VERDICT_COUNTERS,
    names::EIP_COUNTERS,
    names::NEXTHOPS,
    names::ROUTES,
    names::PUBLIC_ACCEPT,
];

/// What [`Datapath::attach_pinned`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Attached in this mode, with a new pinned link.
    New(XdpMode),
    /// Replaced the program in the pinned link, atomically.
    Replaced,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Capacity of the association maps and per-EIP counters.
    pub max_associations: u32,
    /// Level above which the program's own log lines are dropped in the
    /// kernel, before they cost a ring-buffer write.
    pub kernel_log_level: log::LevelFilter,
    /// Pin the maps in this bpffs directory, reusing the ones already
    /// there; `None` gives private maps that die with this process.
    pub pin_maps: Option<std::path::PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_associations: names::DEFAULT_MAX_ASSOCIATIONS,
            kernel_log_level: log::LevelFilter::Info,
            pin_maps: None,
        }
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    tx_ports: DevMapHash<MapData>,
    tx_slots: DevMap<MapData>,
    addresses: HashMap<MapData, Ipv4Key, AddrEntry>,
    /// Written here (a new association's counters start at zero)…
    eip_counters: PerCpuArray<MapData, EipCounters>,
    /// …and read there, from any thread, without the writer.
    counters: Arc<Counters>,
    nexthops: Array<MapData, NextHop>,
    routes: LpmTrie<MapData, Ipv4Key, u32>,
    public_accept: LpmTrie<MapData, Ipv4Key, u32>,
    trace_config: Array<MapData, TraceConfig>,
    /// Taken by the one reader of traced packets.
    trace_events: Option<RingBuf<MapData>>,
    icmp: Array<MapData, IcmpConfig>,
    /// Taken by the one owner of the active/standby role (`standby.rs`),
    /// which moves its deadline on from its own task, never waiting for
    /// the writer.
    arp: Option<Array<MapData, ArpConfig>>,
    filter: Array<MapData, u64>,
    /// What `filter` holds, so that a bit already set costs no write.
    filter_words: Vec<u64>,
}

/// Takes map `name` out of the object, typed.
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::Missing(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Wraps a map error with the map's name.
/// Takes map `name` out of the object twice: two handles on one map, so
/// that readers on other threads need not share the writer's.
fn take_two<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<(T, T), DatapathError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::Missing(name))?;
    let data = match &map {
        Map::PerCpuArray(d) | Map::Array(d) | Map::HashMap(d) => d,
        _ => return Err(DatapathError::Missing(name)),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| DatapathError::Map {
            name,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }),
        })?;
    let second = MapData::from_fd(fd)
        .and_then(Map::from_map_data)
        .map_err(map_err(name))?;
    Ok((
        T::try_from(map).map_err(map_err(name))?,
        T::try_from(second).map_err(map_err(name))?,
    ))
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn key(addr: Ipv4Addr) -> Ipv4Key {
    addr.octets()
}

fn batch_err(name: &'static str, call: &'static str, io_error: std::io::Error) -> DatapathError {
    DatapathError::Map {
        name,
        source: MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    }
}

/// Possible CPUs: the number of values of a per-CPU map's element. Read
/// once; it does not change while the system runs.
fn cpus() -> Result<usize, DatapathError> {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(n) = CPUS.get() {
        return Ok(*n);
    }
    let n = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
    Ok(*CPUS.get_or_init(|| n))
}

impl Datapath {
    /// Loads and verifies the program, with empty tables and no interfaces
    /// configured (every packet passes as `pass_unknown_interface`).
    pub fn load(opts: LoadOptions) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let level = opts.kernel_log_level as u8;
        let mut loader = EbpfLoader::new();
        loader
            // Each association has two addresses.
            .map_max_entries(names::ADDRESSES, opts.max_associations.saturating_mul(2))
            .map_max_entries(names::EIP_COUNTERS, opts.max_associations)
            // One next hop per association at most (each on its own link
            // neighbour), and the routes towards the Internet.
            .map_max_entries(
                names::NEXTHOPS,
                opts.max_associations.saturating_add(names::EXTRA_NEXTHOPS),
            )
            // The table mirrors the agent's host routes (up to two per
            // association) and the operator's. Not preallocated: it costs
            // only the routes there are.
            .map_max_entries(
                names::ROUTES,
                opts.max_associations
                    .saturating_mul(2)
                    .saturating_add(names::EXTRA_ROUTES),
            )
            .override_global(aya_log::LEVEL, &level, false);
        if let Some(dir) = &opts.pin_maps {
            // A map already pinned there is opened, not created: its
            // entries are what the previous agent left.
            for name in PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(DatapathError::Load)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DatapathError::Missing(PROGRAM))?
            .try_into()
            .map_err(|e| DatapathError::Program(PROGRAM, e))?;
        program
            .load()
            .map_err(|e| DatapathError::Program(PROGRAM, e))?;
        let (eip_counters, eip_counters_read) = take_two(&mut ebpf, names::EIP_COUNTERS)?;
        Ok(Self {
            config: take(&mut ebpf, names::CONFIG)?,
            tx_ports: take(&mut ebpf, names::TX_PORTS)?,
            tx_slots: take(&mut ebpf, names::TX_SLOTS)?,
            addresses: take(&mut ebpf, names::ADDRESSES)?,
            eip_counters,
            counters: Arc::new(Counters {
                verdicts: take(&mut ebpf, names::VERDICT_COUNTERS)?,
                eips: eip_counters_read,
            }),
            nexthops: take(&mut ebpf, names::NEXTHOPS)?,
            routes: take(&mut ebpf, names::ROUTES)?,
            public_accept: take(&mut ebpf, names::PUBLIC_ACCEPT)?,
            trace_config: take(&mut ebpf, names::TRACE_CONFIG)?,
            trace_events: Some(take(&mut ebpf, names::TRACE_EVENTS)?),
            icmp: take(&mut ebpf, names::ICMP_CONFIG)?,
            arp: Some(take(&mut ebpf, names::ARP_CONFIG)?),
            filter_words: Vec::new(),
            filter: take(&mut ebpf, names::ADDRESS_FILTER)?,
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

    /// Lets the fast path redirect to `ifindex`, by ifindex (`TX_PORTS`)
    /// and by slot (`TX_SLOTS`).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        // Already there (a pinned map from the previous agent): leave the
        // entries the running program redirects through alone.
        if !self
            .tx_ports
            .get(ifindex, 0)
            .is_ok_and(|v| v.if_index == ifindex)
        {
            self.tx_ports
                .insert(ifindex, ifindex, None, 0)
                .map_err(|e| DatapathError::TxPort(ifindex, e))?;
        }
        if self.tx_slot(ifindex).is_none() {
            let free = (0..names::MAX_TX_PORTS)
                .find(|i| self.tx_slots.get(*i, 0).map_or(true, |v| v.if_index == 0))
                .ok_or(DatapathError::NoTxSlot(ifindex))?;
            self.tx_slots
                .set(free, ifindex, None, 0)
                .map_err(|e| DatapathError::TxPort(ifindex, e))?;
        }
        Ok(())
    }

    /// `ifindex`'s slot in `TX_SLOTS`, if it has one.
    pub fn tx_slot(&self, ifindex: u32) -> Option<u8> {
        (0..names::MAX_TX_PORTS)
            .find(|i| {
                self.tx_slots
                    .get(*i, 0)
                    .is_ok_and(|v| v.if_index == ifindex)
            })
            .map(|i| i as u8)
    }

    /// Where the datapath's own ICMP errors come from, and how many.
    pub fn set_icmp_config(&mut self, cfg: IcmpConfig) -> Result<(), DatapathError> {
        self.icmp
            .set(0, cfg, 0)
            .map_err(map_err(names::ICMP_CONFIG))
    }

    /// The interfaces the fast path may redirect to, with their slots.
    pub fn tx_ports(&self) -> Result<std::collections::BTreeMap<u32, u8>, DatapathError> {
        let mut out = std::collections::BTreeMap::new();
        for r in self.tx_ports.iter() {
            let (ifindex, _) = r.map_err(map_err(names::TX_PORTS))?;
            if let Some(slot) = self.tx_slot(ifindex) {
                out.insert(ifindex, slot);
            }
        }
        Ok(out)
    }

    /// Slots of `NEXTHOPS`, id 0 included (never used).
    pub fn nexthop_capacity(&self) -> u32 {
        self.nexthops.len()
    }

    pub fn nexthop(&self, id: u32) -> Result<NextHop, DatapathError> {
        self.nexthops.get(&id, 0).map_err(map_err(names::NEXTHOPS))
    }

    pub fn set_nexthop(&mut self, id: u32, hop: NextHop) -> Result<(), DatapathError> {
        self.nexthops
            .set(id, hop, 0)
            .map_err(map_err(names::NEXTHOPS))
    }

    /// Every slot in use (a pinned map keeps the last agent's).
    pub fn nexthops(&self) -> Result<Vec<(u32, NextHop)>, DatapathError> {
        let mut out = Vec::new();
        for (id, hop) in self.nexthops.iter().enumerate() {
            let hop = hop.map_err(map_err(names::NEXTHOPS))?;
            if hop != NextHop::default() {
                out.push((id as u32, hop));
            }
        }
        Ok(out)
    }

    /// `ROUTES[prefix] = id`.
    pub fn set_route(&mut self, prefix: (u8, u32), id: u32) -> Result<(), DatapathError> {
        let key = LpmKey::new(prefix.0 as u32, prefix.1.to_be_bytes());
        self.routes
            .insert(&key, id, 0)
            .map_err(map_err(names::ROUTES))
    }

    pub fn remove_route(&mut self, prefix: (u8, u32)) -> Result<(), DatapathError> {
        let key = LpmKey::new(prefix.0 as u32, prefix.1.to_be_bytes());
        match self.routes.remove(&key) {
            Err(MapError::KeyNotFound) => Ok(()),
            r => r.map_err(map_err(names::ROUTES)),
        }
    }

    /// Empties `ROUTES`: every outbound packet then asks the FIB.
    pub fn clear_routes(&mut self) -> Result<(), DatapathError> {
        let keys: Vec<_> = self
            .routes
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::ROUTES))?;
        for k in keys {
            match self.routes.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::ROUTES)(e)),
            }
        }
        Ok(())
    }

    /// Attaches through a link pinned at `pin`, so the program stays
    /// attached after this process exits. If a link is pinned there already
    /// (a previous agent's), this program replaces the old one in it with
    /// one `BPF_LINK_UPDATE`: the interface never runs without a program,
    /// and no packet misses the datapath.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        pin: &std::path::Path,
    ) -> Result<Attached, DatapathError> {
        let pinned = |why: String| DatapathError::Pin {
            path: pin.display().to_string(),
            why,
        };
        if pin.exists() {
            let replaced = PinnedLink::from_pin(pin)
                .map_err(|e| e.to_string())
                .and_then(|p| XdpLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
                .and_then(|link| {
                    self.program_mut()
                        .attach_to_link(link)
                        .map_err(|e| e.to_string())
                });
            match replaced {
                Ok(_) => return Ok(Attached::Replaced),
                // The interface it was on is gone (ENOLINK), say: start over.
                Err(e) => {
                    log::warn!("{iface}: cannot reuse the pinned link ({e}); attaching anew");
                    std::fs::remove_file(pin).map_err(|e| pinned(e.to_string()))?;
                }
            }
        }
        let (mode, id) = self.attach_link(iface, mode)?;
        let link = self
            .program_mut()
            .take_link(id)
            .map_err(|e| DatapathError::Program(PROGRAM, e))?;
        let link = FdLink::try_from(link).map_err(|e| pinned(e.to_string()))?;
        link.pin(pin).map_err(|e| pinned(e.to_string()))?;
        Ok(Attached::New(mode))
    }

    fn attach_link(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(XdpMode, XdpLinkId), DatapathError> {
        let program = self.program_mut();
        let mut try_mode = |m: XdpMode| {
            program
                .attach(iface, m)
                .map(|id| (m, id))
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

    /// Sets `addr`'s entry, or removes it. Entries are replaced whole, so
    /// the datapath never sees half of one.
    pub fn put_entry(
        &mut self,
        addr: Ipv4Addr,
        entry: Option<AddrEntry>,
    ) -> Result<(), DatapathError> {
        let r = match entry {
            Some(e) => {
                // The filter first: the program must never skip the
                // lookup of an address that has an entry.
                self.let_through(addr)?;
                self.addresses.insert(key(addr), e, 0)
            }
            None => match self.addresses.remove(&key(addr)) {
                Err(MapError::KeyNotFound) => Ok(()),
                r => r,
            },
        };
        r.map_err(map_err(names::ADDRESSES))
    }

    /// [`Datapath::put_entry`] for many addresses: the filter's bits, then
    /// the entries in one batched write, then the removals.
    pub fn put_entries(
        &mut self,
        entries: &[(Ipv4Addr, Option<AddrEntry>)],
    ) -> Result<(), DatapathError> {
        let mut keys = Vec::with_capacity(entries.len());
        let mut values = Vec::with_capacity(entries.len());
        for (addr, entry) in entries {
            match entry {
                Some(e) => {
                    self.let_through(*addr)?;
                    keys.push(key(*addr));
                    values.push(*e);
                }
                None => self.put_entry(*addr, None)?,
            }
        }
        crate::map_batch::update(self.addresses.map(), &keys, &values, 1)
            .map_err(|e| batch_err(names::ADDRESSES, "bpf_map_update_batch", e))
    }

    /// Sets `addr`'s /16 in `ADDRESS_FILTER`.
    fn let_through(&mut self, addr: Ipv4Addr) -> Result<(), DatapathError> {
        if self.filter_words.is_empty() {
            // A pinned filter keeps the bits the last agent set.
            self.filter_words = self
                .filter
                .iter()
                .collect::<Result<_, _>>()
                .map_err(map_err(names::ADDRESS_FILTER))?;
        }
        let (word, bit) = names::filter_bit(addr.octets());
        let w = &mut self.filter_words[word as usize];
        if *w & bit == 0 {
            *w |= bit;
            let v = *w;
            self.filter
                .set(word, v, 0)
                .map_err(map_err(names::ADDRESS_FILTER))?;
        }
        Ok(())
    }

    /// Rebuilds `ADDRESS_FILTER` for exactly `addrs` (the entries now in
    /// `ADDRESSES`), clearing the bits of /16s nothing is left in.
    pub fn rebuild_filter(
        &mut self,
        addrs: impl Iterator<Item = Ipv4Addr>,
    ) -> Result<(), DatapathError> {
        let mut words = vec![0u64; names::FILTER_WORDS as usize];
        for a in addrs {
            let (word, bit) = names::filter_bit(a.octets());
            words[word as usize] |= bit;
        }
        for (i, w) in words.iter().enumerate() {
            if self.filter_words.get(i) != Some(w) {
                self.filter
                    .set(i as u32, *w, 0)
                    .map_err(map_err(names::ADDRESS_FILTER))?;
            }
        }
        self.filter_words = words;
        Ok(())
    }

    /// What `PUBLIC_ACCEPT` holds: prefix → kind (`names::ACCEPT_*`).
    pub fn public_accept(&self) -> Result<BTreeMap<Ipv4Net, u32>, DatapathError> {
        let err = map_err(names::PUBLIC_ACCEPT);
        let mut out = BTreeMap::new();
        for k in self.public_accept.keys() {
            let k = k.map_err(&err)?;
            let kind = self.public_accept.get(&k, 0).map_err(&err)?;
            let net = Ipv4Net::new(Ipv4Addr::from(k.data()), k.prefix_len() as u8)
                .expect("the kernel keeps prefix lengths ≤ 32 for a 4-byte key");
            out.insert(net, kind);
        }
        Ok(out)
    }

    /// Makes `PUBLIC_ACCEPT` exactly `want`, writing only what differs:
    /// additions first, so nothing accepted before and after is refused in
    /// between. Returns how many prefixes were written or removed.
    pub fn set_public_accept(
        &mut self,
        want: &BTreeMap<Ipv4Net, u32>,
    ) -> Result<usize, DatapathError> {
        let err = map_err(names::PUBLIC_ACCEPT);
        let current = self.public_accept()?;
        let lpm = |n: &Ipv4Net| LpmKey::new(n.prefix_len() as u32, n.network().octets());
        let mut changed = 0;
        for (net, kind) in want {
            if current.get(net) != Some(kind) {
                self.public_accept
                    .insert(&lpm(net), kind, 0)
                    .map_err(&err)?;
                changed += 1;
            }
        }
        for net in current.keys().filter(|n| !want.contains_key(n)) {
            match self.public_accept.remove(&lpm(net)) {
                Ok(()) | Err(MapError::KeyNotFound) => changed += 1,
                Err(e) => return Err(err(e)),
            }
        }
        Ok(changed)
    }

    /// What the program traces while `FLAG_TRACE` is set in `CONFIG`.
    pub fn set_trace_config(&mut self, cfg: TraceConfig) -> Result<(), DatapathError> {
        self.trace_config
            .set(0, cfg, 0)
            .map_err(map_err(names::TRACE_CONFIG))
    }

    /// The ARP responder's configuration, for its one owner.
    pub fn take_arp_config(&mut self) -> Option<Array<MapData, ArpConfig>> {
        self.arp.take()
    }

    /// The ring buffer of traced packets, for its one reader.
    pub fn take_trace_events(&mut self) -> Option<RingBuf<MapData>> {
        self.trace_events.take()
    }

    /// Zeroes the counters in `slots`, for new associations.
    pub fn reset_eip_counters(&mut self, slots: &[u32]) -> Result<(), DatapathError> {
        let zeroes = vec![EipCounters::default(); slots.len() * cpus()?];
        crate::map_batch::update(self.eip_counters.map(), slots, &zeroes, cpus()?)
            .map_err(|e| batch_err(names::EIP_COUNTERS, "bpf_map_update_batch", e))
    }

    /// The configuration in the map (a pinned map keeps the last agent's).
    pub fn config(&self) -> Result<Config, DatapathError> {
        self.config.get(&0, 0).map_err(map_err(names::CONFIG))
    }

    /// Every entry of the address map, for checks that it agrees with the
    /// agent's table.
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, AddrEntry)>, DatapathError> {
        // With `BPF_MAP_LOOKUP_BATCH`, thousands of entries per system call
        // (two million at a start with a million associations), else one by
        // one.
        let mut out = Vec::new();
        let batched = crate::map_batch::lookup_all(
            self.addresses.map(),
            65_536,
            1,
            |keys: &[Ipv4Key], values: &[AddrEntry]| {
                out.extend(
                    keys.iter()
                        .zip(values)
                        .map(|(k, v)| (Ipv4Addr::from(*k), *v)),
                )
            },
        )
        .map_err(|e| batch_err(names::ADDRESSES, "bpf_map_lookup_batch", e))?;
        if batched {
            return Ok(out);
        }
        self.addresses
            .iter()
            .map(|item| {
                item.map(|(k, v)| (Ipv4Addr::from(k), v))
                    .map_err(map_err(names::ADDRESSES))
            })
            .collect()
    }

    /// The counters, for readers on any thread.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    pub fn verdict_counters(
        &self,
    ) -> Result<Vec<(Direction, Verdict, VerdictCounter)>, DatapathError> {
        self.counters.verdicts()
    }

    pub fn eip_counters(&self, slot: u32) -> Result<EipCounters, DatapathError> {
        self.counters.eip(slot)
    }
}

/// The datapath's counters, read-only: per CPU in the kernel, summed here
/// at read time (no copy is kept).
pub struct Counters {
    verdicts: PerCpuArray<MapData, VerdictCounter>,
    eips: PerCpuArray<MapData, EipCounters>,
}

impl Counters {
    /// Global counters, summed over CPUs, for every (direction, verdict).
    pub fn verdicts(&self) -> Result<Vec<(Direction, Verdict, VerdictCounter)>, DatapathError> {
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

    /// Counter slots (the datapath's `max_associations`).
    pub fn eip_slots(&self) -> u32 {
        self.eips.len()
    }

    /// Every slot's counters, summed over CPUs, indexed by slot: read with
    /// `BPF_MAP_LOOKUP_BATCH`, thousands of slots per system call, where
    /// [`Counters::eip`] takes one per slot. `None` if the kernel has no
    /// batch lookup for this map.
    pub fn all_eips(&self) -> Result<Option<Vec<EipCounters>>, DatapathError> {
        let cpus = cpus()?;
        let mut out = vec![EipCounters::default(); self.eips.len() as usize];
        let batched = crate::map_batch::lookup_all(
            self.eips.map(),
            4096,
            cpus,
            |keys: &[u32], values: &[EipCounters]| {
                for (key, per_cpu) in keys.iter().zip(values.chunks(cpus)) {
                    if let Some(sum) = out.get_mut(*key as usize) {
                        per_cpu.iter().for_each(|c| *sum += *c);
                    }
                }
            },
        )
        .map_err(|e| batch_err(names::EIP_COUNTERS, "bpf_map_lookup_batch", e))?;
        Ok(batched.then_some(out))
    }

    /// Counters of the association in `slot`, summed over CPUs.
    pub fn eip(&self, slot: u32) -> Result<EipCounters, DatapathError> {
        let per_cpu = self
            .eips
            .get(&slot, 0)
            .map_err(map_err(names::EIP_COUNTERS))?;
        let mut sum = EipCounters::default();
        per_cpu.iter().for_each(|c| sum += *c);
        Ok(sum)
    }
}
