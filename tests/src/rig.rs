//! Handles on the rig's programs (`eip-nat-rig-ebpf`), for veth test
//! rigs, the demo and the benchmark: a pass-through receiver, a no-op
//! redirector, the minimal NAT the benchmark compares with, a traffic
//! generator (live frames, or a loop where the kernel refuses those) and
//! a counting sink. Their object is not the agent's:
//! the agent never carries them.

use std::{net::Ipv4Addr, sync::Mutex, time::Duration};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, DevMap, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use eip_nat_rig_common::{
    self as names, GenConfig, Ipv4Key, MinNatConfig, SinkConfig, SinkCounters, GEN_HEADER_LEN,
};

/// The rig's BPF object, embedded at build time (see `build.rs`); empty
/// when it was built without one.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/eip-nat-rig"));

/// Takes map `name` out of the rig object, typed.
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the rig object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// Loads the object for one rig program (the datapath's maps kept tiny)
/// and returns it with the program loaded.
fn load(program: &'static str) -> Result<Ebpf> {
    load_sized(program, &[])
}

/// [`load`], with some of the rig's maps given a size.
fn load_sized(program: &'static str, sizes: &[(&str, u32)]) -> Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!("no rig BPF object was embedded in this build: build it with `cargo xtask build`");
    }
    let mut loader = EbpfLoader::new();
    for (name, size) in sizes {
        loader.map_max_entries(name, *size);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .context("loading the rig's BPF object (as root, with BTF?)")?;
    xdp(&mut ebpf, program)?
        .load()
        .with_context(|| format!("loading {program}"))?;
    Ok(ebpf)
}

fn xdp<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(program)
        .with_context(|| format!("the rig object has no program {program}"))?
        .try_into()
        .with_context(|| format!("{program} is not an XDP program"))
}

/// Loads `program` and attaches it, native, to `iface` in the caller's
/// namespace. Detached when the returned object is dropped.
fn attached(program: &'static str, iface: &str) -> Result<Ebpf> {
    let mut ebpf = load(program)?;
    attach_native(&mut ebpf, program, iface)?;
    Ok(ebpf)
}

fn attach_native(ebpf: &mut Ebpf, program: &'static str, iface: &str) -> Result<()> {
    xdp(ebpf, program)?
        .attach(iface, XdpMode::Driver)
        .with_context(|| format!("attaching {program} to {iface} in native mode"))?;
    Ok(())
}

/// Points one-entry `DevMap` `name` at `ifindex`.
fn set_port(ebpf: &mut Ebpf, name: &'static str, ifindex: u32) -> Result<()> {
    let mut port: DevMap<MapData> = take(ebpf, name)?;
    port.set(0, ifindex, None, 0)
        .with_context(|| format!("ifindex {ifindex} in map {name}"))?;
    // The map stays referenced by the loaded program.
    Ok(())
}

/// Runs `program` once on `frame` (BPF_PROG_TEST_RUN, no live frames);
/// returns its action and the frame it left.
fn run_once(program: &mut Xdp, name: &'static str, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    // Room for a program that grows the frame.
    let mut out = vec![0u8; frame.len() + 64];
    let r = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .with_context(|| format!("test run of {name}"))?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// `xdp_pass` on an interface, for as long as this value lives.
///
/// On a veth rig, frames redirected into a veth reach its peer only if the
/// peer runs NAPI, which an XDP program on the peer turns on. (GRO on the
/// peer would too, but would hand captures coalesced frames.)
pub struct PassProgram {
    ebpf: Ebpf,
}

impl PassProgram {
    pub fn attach(iface: &str) -> Result<Self> {
        Ok(Self {
            ebpf: attached("xdp_pass", iface)?,
        })
    }

    /// Loaded but not attached: the no-op baseline of the microbenchmark.
    pub fn load_only() -> Result<Self> {
        Ok(Self {
            ebpf: load("xdp_pass")?,
        })
    }

    pub fn program(&mut self) -> &mut Xdp {
        xdp(&mut self.ebpf, "xdp_pass").expect("loaded")
    }
}

/// `xdp_redirect_noop` on `iface`, sending every frame to `egress_ifindex`
/// untouched: the ceiling any XDP forwarder on the rig can reach.
pub struct NoopRedirect {
    _ebpf: Ebpf,
}

impl NoopRedirect {
    pub fn attach(iface: &str, egress_ifindex: u32) -> Result<Self> {
        let mut ebpf = attached("xdp_redirect_noop", iface)?;
        set_port(&mut ebpf, names::NOOP_PORT, egress_ifindex)?;
        Ok(Self { _ebpf: ebpf })
    }
}

/// `xdp_min_nat`: the minimal hand-written XDP NAT the benchmark holds
/// eip-nat against. Rewrites the destination of every frame whose
/// destination it has a mapping for and redirects it out of one port with
/// fixed MACs.
pub struct MinNat {
    ebpf: Ebpf,
    table: HashMap<MapData, Ipv4Key, Ipv4Key>,
}

impl MinNat {
    const PROGRAM: &'static str = "xdp_min_nat";

    /// Loaded and configured, not attached (for [`Self::run`] and test
    /// runs): frames leave with `macs` through `egress_ifindex`; the table
    /// holds up to `capacity` mappings.
    pub fn load(macs: MinNatConfig, egress_ifindex: u32, capacity: u32) -> Result<Self> {
        let mut ebpf = load_sized(Self::PROGRAM, &[(names::MIN_NAT_TABLE, capacity)])?;
        let mut config: Array<MapData, MinNatConfig> = take(&mut ebpf, names::MIN_NAT_CONFIG)?;
        config
            .set(0, macs, 0)
            .with_context(|| format!("map {}", names::MIN_NAT_CONFIG))?;
        set_port(&mut ebpf, names::MIN_NAT_PORT, egress_ifindex)?;
        let table = take(&mut ebpf, names::MIN_NAT_TABLE)?;
        Ok(Self { ebpf, table })
    }

    /// [`Self::load`], then attached natively to `iface` in the caller's
    /// namespace until dropped.
    pub fn attach(
        iface: &str,
        macs: MinNatConfig,
        egress_ifindex: u32,
        capacity: u32,
    ) -> Result<Self> {
        let mut nat = Self::load(macs, egress_ifindex, capacity)?;
        attach_native(&mut nat.ebpf, Self::PROGRAM, iface)?;
        Ok(nat)
    }

    /// Frames to `from` leave addressed to `to`. One map update each, so a
    /// million take a few seconds.
    pub fn insert_all(
        &mut self,
        mappings: impl IntoIterator<Item = (Ipv4Addr, Ipv4Addr)>,
    ) -> Result<()> {
        for (from, to) in mappings {
            self.table
                .insert(from.octets(), to.octets(), 0)
                .with_context(|| format!("map {}", names::MIN_NAT_TABLE))?;
        }
        Ok(())
    }

    /// The program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> &mut Xdp {
        xdp(&mut self.ebpf, Self::PROGRAM).expect("loaded")
    }

    /// Runs the program once on `frame`; returns its action and output.
    pub fn run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        run_once(self.program(), Self::PROGRAM, frame)
    }
}

/// `xdp_sink` on an interface: counts and drops (or, in the looping rig,
/// `xdp_sink_loop`: counts and hands back to the generator).
pub struct Sink {
    ebpf: Ebpf,
    program: &'static str,
    counters: PerCpuArray<MapData, SinkCounters>,
}

impl Sink {
    /// Frames count as good when their destination is in `prefix/len`.
    pub fn attach(iface: &str, prefix: [u8; 4], len: u8) -> Result<Self> {
        Self::configure(attached("xdp_sink", iface)?, "xdp_sink", prefix, len)
    }

    /// [`Self::attach`] for the looping rig ([`LoopGenerator`]): every
    /// frame, counted, leaves again through `return_ifindex`.
    pub fn attach_looping(
        iface: &str,
        prefix: [u8; 4],
        len: u8,
        return_ifindex: u32,
    ) -> Result<Self> {
        let mut sink = Self::detached_looping(prefix, len, return_ifindex)?;
        attach_native(&mut sink.ebpf, sink.program, iface)?;
        Ok(sink)
    }

    /// [`Self::attach_looping`], not attached, for [`Self::run`].
    pub fn detached_looping(prefix: [u8; 4], len: u8, return_ifindex: u32) -> Result<Self> {
        const PROGRAM: &str = "xdp_sink_loop";
        let mut ebpf = load(PROGRAM)?;
        set_port(&mut ebpf, names::SINK_PORT, return_ifindex)?;
        Self::configure(ebpf, PROGRAM, prefix, len)
    }

    /// Loaded but not attached, for feeding it frames with [`Self::run`].
    pub fn detached(prefix: [u8; 4], len: u8) -> Result<Self> {
        Self::configure(load("xdp_sink")?, "xdp_sink", prefix, len)
    }

    /// Runs the sink once on `frame` (BPF_PROG_TEST_RUN); returns its action.
    pub fn run(&mut self, frame: &[u8]) -> Result<u32> {
        let program = xdp(&mut self.ebpf, self.program)?;
        Ok(run_once(program, self.program, frame)?.0)
    }

    fn configure(mut ebpf: Ebpf, program: &'static str, prefix: [u8; 4], len: u8) -> Result<Self> {
        let mask = (u32::MAX.checked_shl(32 - len as u32).unwrap_or(0)).to_be_bytes();
        let mut cfg: Array<MapData, SinkConfig> = take(&mut ebpf, names::SINK_CONFIG)?;
        cfg.set(0, SinkConfig { prefix, mask }, 0)
            .with_context(|| format!("map {}", names::SINK_CONFIG))?;
        let counters = take(&mut ebpf, names::SINK_COUNTERS)?;
        Ok(Self {
            ebpf,
            program,
            counters,
        })
    }

    pub fn counters(&self) -> Result<SinkCounters> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .with_context(|| format!("map {}", names::SINK_COUNTERS))?;
        Ok(per_cpu
            .iter()
            .fold(SinkCounters::default(), |a, c| SinkCounters {
                good: a.good + c.good,
                bad: a.bad + c.bad,
            }))
    }
}

/// What the generator sends: 64-byte (60 without FCS) UDP frames.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: [u8; 4],
    /// First destination; flow f goes to dst_base + f / 256.
    pub dst_base: [u8; 4],
    pub sport_base: u16,
    pub dport: u16,
    /// A power of two.
    pub flows: u32,
    pub frame_len: usize,
}

fn words(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

impl Traffic {
    /// The template frame and the generator's configuration.
    pub fn build(&self) -> (Vec<u8>, GenConfig) {
        assert!(self.flows.is_power_of_two() && self.flows <= 65_536);
        assert!(self.frame_len >= GEN_HEADER_LEN && self.frame_len <= 1514);
        let ip_len = (self.frame_len - 14) as u16;
        let udp_len = ip_len - 20;
        let mut f = Vec::with_capacity(self.frame_len);
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        f.extend([0x08, 0x00]);
        f.extend([0x45, 0]);
        f.extend(ip_len.to_be_bytes());
        f.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend(self.src);
        f.extend([0, 0, 0, 0]); // destination: per flow
        f.extend([0, 0]); // source port: per flow
        f.extend(self.dport.to_be_bytes());
        f.extend(udp_len.to_be_bytes());
        f.extend([0, 0]);
        f.extend((0..self.frame_len - GEN_HEADER_LEN).map(|i| i as u8));
        let ip_sum = words(&f[14..34]);
        let udp_sum = words(&self.src) + 17 + udp_len as u32 + words(&f[34..]);
        let cfg = GenConfig {
            header: f[..GEN_HEADER_LEN].try_into().unwrap(),
            sport_base: self.sport_base,
            dst_base: self.dst_base,
            flows_mask: self.flows - 1,
            ip_sum,
            udp_sum,
            stop: 0,
        };
        (f, cfg)
    }
}

/// `xdp_gen` run with `BPF_F_TEST_XDP_LIVE_FRAMES`: the kernel builds
/// frames from a template, runs the program on each, and transmits what it
/// returns XDP_TX for out of `ifindex` (net/bpf/test_run.c).
pub struct Generator {
    ebpf: Ebpf,
    template: Vec<u8>,
    ifindex: u32,
}

impl Generator {
    pub fn new(ifindex: u32, traffic: &Traffic) -> Result<Self> {
        let mut ebpf = load("xdp_gen")?;
        let (template, cfg) = traffic.build();
        let mut config: Array<MapData, GenConfig> = take(&mut ebpf, names::GEN_CONFIG)?;
        config
            .set(0, cfg, 0)
            .with_context(|| format!("map {}", names::GEN_CONFIG))?;
        Ok(Self {
            ebpf,
            template,
            ifindex,
        })
    }

    /// Runs the program once on the template, without transmitting, and
    /// returns the frame it produced: what every live frame looks like.
    pub fn sample(&mut self) -> Result<Vec<u8>> {
        let program = xdp(&mut self.ebpf, "xdp_gen")?;
        Ok(run_once(program, "xdp_gen", &self.template)?.1)
    }

    /// Sends `frames` frames, in batches of 64; returns how long it took.
    /// Call from a thread inside the generator's namespace.
    pub fn send(&mut self, frames: u32) -> Result<Duration> {
        let start = std::time::Instant::now();
        let program = xdp(&mut self.ebpf, "xdp_gen")?;
        live_run(program, "xdp_gen", &self.template, self.ifindex, frames)?;
        Ok(start.elapsed())
    }
}

/// Runs `program` on `frames` live frames made from `template`, arriving
/// on `ifindex` (of the caller's namespace), in batches of 64; what it
/// returns XDP_TX or XDP_REDIRECT for is transmitted.
fn live_run(
    program: &mut Xdp,
    name: &'static str,
    template: &[u8],
    ifindex: u32,
    frames: u32,
) -> Result<()> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [0, template.len() as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
    program
        .test_run(TestRunOptions {
            data_in: Some(template),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        })
        .with_context(|| format!("live-frame test run of {name}"))?;
    Ok(())
}

/// Whether this kernel runs `BPF_F_TEST_XDP_LIVE_FRAMES`: some sandboxes
/// refuse it (EPERM) even to root. Tried in `ns`, a namespace of the
/// caller's, with one frame that a stopped `xdp_gen_loop` drops, so that
/// nothing is sent anywhere.
pub fn live_frames_allowed(ns: &str) -> Result<bool> {
    let ifindex = crate::netns::ifindex(ns, "lo");
    let traffic = Traffic {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src: [198, 51, 100, 2],
        dst_base: [198, 18, 0, 0],
        sport_base: 1024,
        dport: 9,
        flows: 1,
        frame_len: 60,
    };
    crate::netns::in_netns(ns, || {
        let mut g = LoopGenerator::new(ifindex, &traffic)?;
        let template = g.template.clone();
        let program = xdp(&mut g.ebpf, LoopGenerator::PROGRAM)?;
        match live_run(program, LoopGenerator::PROGRAM, &template, ifindex, 1) {
            Ok(()) => Ok(true),
            Err(e)
                if e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
                }) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    })
}

/// The generator where the kernel refuses live frames: a loop. The sink
/// (`xdp_sink_loop`, [`Sink::attach_looping`]) hands every frame back over
/// a return veth, `xdp_gen_loop` on the generator's end of it writes the
/// next flow into it and redirects it out of the generator's interface
/// again. So the gateway sees exactly the traffic of the live-frame
/// generator, each frame an XDP frame from end to end, and the loop runs
/// at the rate of its slowest stage: the full veth ring in front of it
/// drops what does not fit, and [`Self::seed`] tops the population up.
pub struct LoopGenerator {
    ebpf: Ebpf,
    /// The configuration map and what it holds: changed between
    /// repetitions while another thread may be seeding.
    config: Mutex<(Array<MapData, GenConfig>, GenConfig)>,
    seq: PerCpuArray<MapData, u64>,
    /// Seeds; their headers are rewritten anyway, only their length and
    /// payload (the template's, which the UDP checksum covers) matter.
    template: Vec<u8>,
}

impl LoopGenerator {
    const PROGRAM: &'static str = "xdp_gen_loop";

    /// Loaded, sending out of `out_ifindex`, not attached; stopped until
    /// [`Self::start`].
    pub fn new(out_ifindex: u32, traffic: &Traffic) -> Result<Self> {
        let mut ebpf = load(Self::PROGRAM)?;
        let (template, cfg) = traffic.build();
        let config: Array<MapData, GenConfig> = take(&mut ebpf, names::GEN_CONFIG)?;
        let seq = take(&mut ebpf, names::GEN_SEQ)?;
        set_port(&mut ebpf, names::GEN_PORT, out_ifindex)?;
        let g = Self {
            ebpf,
            config: Mutex::new((config, cfg)),
            seq,
            template,
        };
        g.stop()?;
        Ok(g)
    }

    /// [`Self::new`], attached natively to `return_iface` (in the caller's
    /// namespace) until dropped.
    pub fn attach(return_iface: &str, out_ifindex: u32, traffic: &Traffic) -> Result<Self> {
        let mut g = Self::new(out_ifindex, traffic)?;
        attach_native(&mut g.ebpf, Self::PROGRAM, return_iface)?;
        Ok(g)
    }

    /// Runs the program once on `frame` (BPF_PROG_TEST_RUN, which does
    /// not redirect); returns its action and the frame it left.
    pub fn run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        run_once(xdp(&mut self.ebpf, Self::PROGRAM)?, Self::PROGRAM, frame)
    }

    /// The next flows follow `traffic` (same interfaces and frame
    /// length), stopped.
    pub fn set_traffic(&self, traffic: &Traffic) -> Result<()> {
        let (template, cfg) = traffic.build();
        anyhow::ensure!(
            template.len() == self.template.len(),
            "another frame length"
        );
        self.configure(move |c| {
            *c = cfg;
            c.stop = 1;
        })
    }

    pub fn start(&self) -> Result<()> {
        self.configure(|c| c.stop = 0)
    }

    /// Frames that come back are dropped: the loop empties within a lap.
    pub fn stop(&self) -> Result<()> {
        self.configure(|c| c.stop = 1)
    }

    fn configure(&self, change: impl FnOnce(&mut GenConfig)) -> Result<()> {
        let mut guard = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let (map, cfg) = &mut *guard;
        change(cfg);
        map.set(0, *cfg, 0)
            .with_context(|| format!("map {}", names::GEN_CONFIG))
    }

    /// Puts `frames` more frames into the loop through `sender`, the
    /// return veth's other end.
    /// Returns how many the socket took.
    pub fn seed(&self, sender: &crate::capture::RawSender, frames: u32) -> Result<u32> {
        for sent in 0..frames {
            match sender.send(&self.template) {
                Ok(()) => {}
                // A full queue: the loop has enough for now.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(sent),
                Err(e) => return Err(e).context("seeding the loop"),
            }
        }
        Ok(frames)
    }

    /// Frames generated so far, all CPUs.
    pub fn generated(&self) -> Result<u64> {
        let per_cpu = self
            .seq
            .get(&0, 0)
            .with_context(|| format!("map {}", names::GEN_SEQ))?;
        Ok(per_cpu.iter().sum())
    }
}
