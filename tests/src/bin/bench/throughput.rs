//! Throughput: every peer on a rig of its own, all set up at once and
//! measured in interleaved rounds, so that a slow spell of this shared
//! machine hits every peer alike and each rate is compared with the
//! others of the same run.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use integration_tests::{
    capture::RawSender,
    netns::{ifindex, in_netns, Namespaces},
    rig::{live_frames_allowed, Generator, LoopGenerator, Sink, Traffic},
};
use serde::Serialize;

use crate::{
    peers::{start_peer, Gateway, Peer},
    placement::{pin_self, Cost, OwnCpu, Placement, GENERATOR_CPU},
    tables::mpps,
    topology::{rig, Rig},
    EIPS,
};

/// 1 flow, and 256 EIPs × 256 source ports.
pub const FLOWS: [u32; 2] = [1, 65_536];

#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub placement: Placement,
    pub peer: Peer,
    /// Associations (mappings) loaded in the gateway.
    pub associations: u32,
    pub flows: u32,
    /// Packets per second delivered to the sink, one per repetition.
    pub pps: Vec<f64>,
    /// Packets per second the generator offered, per repetition.
    pub offered_pps: Vec<f64>,
    /// With the gateway on its own CPU: CPU time per delivered frame, per
    /// repetition.
    pub cost: Vec<Cost>,
    pub bad: u64,
}

pub struct Plan {
    pub repetitions: usize,
    pub seconds: f64,
    /// In [`Placement::ALL`]'s order: a rig, once its gateway has a CPU of
    /// its own, keeps it.
    pub placements: Vec<Placement>,
    pub peers: Vec<Peer>,
    /// The larger number of associations loaded (the smaller is [`EIPS`]).
    pub many: u32,
    pub generator: GeneratorKind,
}

/// How the rig makes its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum GeneratorKind {
    /// `xdp_gen` under `BPF_F_TEST_XDP_LIVE_FRAMES`.
    LiveFrames,
    /// Frames circulating sink → generator → gateway → sink, where the
    /// kernel refuses live frames ([`LoopGenerator`]).
    Loop,
}

impl GeneratorKind {
    /// Live frames where the kernel runs them, else the loop.
    pub fn detect() -> Self {
        let mut namespaces = Namespaces::new();
        let probe = namespaces.add("probe");
        if live_frames_allowed(&probe).expect("probing live frames") {
            Self::LiveFrames
        } else {
            eprintln!(
                "this kernel refuses BPF_F_TEST_XDP_LIVE_FRAMES (EPERM): the rig's frames loop \
                 sink → generator → gateway instead (docs/benchmarks.md)"
            );
            Self::Loop
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::LiveFrames => "live-frame generator (BPF_F_TEST_XDP_LIVE_FRAMES)",
            Self::Loop => {
                "looping generator (frames handed back by the sink; live frames refused here)"
            }
        }
    }
}

fn runs_in(peer: Peer, placement: Placement) -> bool {
    placement == Placement::OneCore || peer.on_own_cpu()
}

pub fn run(plan: &Plan) -> Vec<Measurement> {
    let mut out = Vec::new();
    for associations in [EIPS, plan.many] {
        let mut setups: Vec<Setup> = plan
            .peers
            .iter()
            .filter(|p| associations == EIPS || p.with_many_associations())
            .filter(|p| plan.placements.iter().any(|&pl| runs_in(**p, pl)))
            .map(|&p| Setup::new(p, associations, plan.generator))
            .collect();
        for &placement in &plan.placements {
            let runs = |s: &&mut Setup| runs_in(s.peer, placement);
            for s in setups.iter_mut().filter(runs) {
                s.place(placement);
            }
            let active: Vec<&Setup> = setups
                .iter()
                .filter(|s| runs_in(s.peer, placement))
                .collect();
            out.extend(rounds(&active, placement, plan));
        }
    }
    out
}

/// Repetitions of every (peer, flows) cell, interleaved.
fn rounds(setups: &[&Setup], placement: Placement, plan: &Plan) -> Vec<Measurement> {
    let mut cells: Vec<(&Setup, Measurement)> = setups
        .iter()
        .flat_map(|s| {
            FLOWS.map(|flows| {
                let m = Measurement {
                    placement,
                    peer: s.peer,
                    associations: s.associations,
                    flows,
                    pps: vec![],
                    offered_pps: vec![],
                    cost: vec![],
                    bad: 0,
                };
                (*s, m)
            })
        })
        .collect();
    // Cells of one flow count side by side, so that each round's ratio
    // of two peers compares measurements seconds apart; every other round
    // runs backwards (A B B A …), so that a machine that slows down or
    // speeds up during a round favours no peer.
    cells.sort_by_key(|(_, m)| m.flows);
    for rep in 1..=plan.repetitions {
        cells.reverse();
        for (s, m) in cells.iter_mut() {
            s.repetition(m, plan.seconds);
            eprintln!(
                "  {} {}/{}: {}, {} associations, {} flow(s): {} Mpps (offered {}, bad {})",
                placement.key(),
                rep,
                plan.repetitions,
                s.peer.key(),
                s.associations,
                m.flows,
                mpps(*m.pps.last().unwrap()),
                mpps(*m.offered_pps.last().unwrap()),
                m.bad
            );
        }
    }
    cells.into_iter().map(|(_, m)| m).collect()
}

/// The looping generator of a rig, and where it is seeded from.
struct Loop {
    gen: LoopGenerator,
    seeder: RawSender,
}

/// Frames put into a loop every [`LOOP_TOP_UP_EVERY`] while it warms up:
/// far more than its rings and NAPI batches hold, so that the slowest
/// stage always has a full ring in front of it.
const LOOP_FILL: u32 = 256;
/// Frames added every [`LOOP_TOP_UP_EVERY`] afterwards, for those the
/// full ring drops.
const LOOP_TOP_UP: u32 = 64;
const LOOP_TOP_UP_EVERY: Duration = Duration::from_millis(2);
/// Before each measurement window.
const WARM_UP: Duration = Duration::from_millis(500);

/// One peer, started on a rig of its own, with the sink attached.
struct Setup {
    peer: Peer,
    associations: u32,
    own_cpu: Option<OwnCpu>,
    sink: Sink,
    looping: Option<Loop>,
    _gateway: Gateway,
    /// Last: its namespaces go after everything in them.
    rig: Rig,
}

impl Setup {
    fn new(peer: Peer, associations: u32, generator: GeneratorKind) -> Self {
        eprintln!(
            "setting up {} with {associations} associations…",
            peer.label()
        );
        let rig = rig(peer == Peer::Direct);
        let gateway = start_peer(peer, &rig, associations);
        let (prefix, len) = peer.sink_expects();
        let (sink, looping) = match generator {
            GeneratorKind::LiveFrames => {
                let sink = in_netns(&rig.sink.ns, || Sink::attach(&rig.sink.ifname, prefix, len));
                (sink.expect("sink"), None)
            }
            GeneratorKind::Loop => {
                let back = ifindex(&rig.sink_ret.ns, &rig.sink_ret.ifname);
                let sink = in_netns(&rig.sink.ns, || {
                    Sink::attach_looping(&rig.sink.ifname, prefix, len, back)
                })
                .expect("sink");
                let out = ifindex(&rig.gen.ns, &rig.gen.ifname);
                let traffic = traffic(&rig, peer, 1);
                let gen = in_netns(&rig.gen_ret.ns, || {
                    LoopGenerator::attach(&rig.gen_ret.ifname, out, &traffic)
                })
                .expect("looping generator");
                let seeder = RawSender::open(&rig.sink_ret.ns, &rig.sink_ret.ifname);
                (sink, Some(Loop { gen, seeder }))
            }
        };
        Self {
            peer,
            associations,
            own_cpu: None,
            sink,
            looping,
            _gateway: gateway,
            rig,
        }
    }

    fn place(&mut self, placement: Placement) {
        match placement {
            Placement::OneCore => assert!(self.own_cpu.is_none(), "placements out of order"),
            Placement::OwnCpu => {
                if self.own_cpu.is_none() {
                    self.own_cpu = Some(OwnCpu::place(&self.rig, self.looping.is_some()));
                }
            }
        }
    }

    fn traffic(&self, flows: u32) -> Traffic {
        traffic(&self.rig, self.peer, flows)
    }

    /// Generates for [`WARM_UP`], then counts what reaches the sink over
    /// `secs`.
    fn repetition(&self, m: &mut Measurement, secs: f64) {
        if self.looping.is_some() {
            return self.loop_repetition(m, secs);
        }
        let traffic = self.traffic(m.flows);
        let gen = &self.rig.gen;
        let gen_if = ifindex(&gen.ns, &gen.ifname);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let generator = scope.spawn(|| {
                in_netns(&gen.ns, || {
                    pin_self(GENERATOR_CPU);
                    let mut g = Generator::new(gen_if, &traffic).expect("generator");
                    let (mut frames, start) = (0u64, Instant::now());
                    while !stop.load(Ordering::Relaxed)
                        && start.elapsed() < Duration::from_secs_f64(secs + 5.0)
                    {
                        g.send(100_000).expect("live frames");
                        frames += 100_000;
                    }
                    (frames, start.elapsed())
                })
            });
            self.window(m, secs, || ());
            stop.store(true, Ordering::Relaxed);
            let (frames, gen_time) = generator.join().unwrap();
            m.offered_pps.push(frames as f64 / gen_time.as_secs_f64());
        });
    }

    /// After [`WARM_UP`], counts what reaches the sink over `secs` and
    /// records the rate, the bad frames and (on its own CPU) the cost in
    /// `m`; `mark` is read at both ends of the window. Returns the frames
    /// delivered, the window's length and the two readings of `mark`.
    fn window<T>(&self, m: &mut Measurement, secs: f64, mark: impl Fn() -> T) -> (u64, f64, T, T) {
        std::thread::sleep(WARM_UP);
        let cpu0 = self.own_cpu.as_ref().map(OwnCpu::times);
        let (c0, mark0) = (self.sink.counters().unwrap(), mark());
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (c1, mark1) = (self.sink.counters().unwrap(), mark());
        let cpu1 = self.own_cpu.as_ref().map(OwnCpu::times);
        let dt = t0.elapsed().as_secs_f64();
        let good = c1.good - c0.good;
        m.pps.push(good as f64 / dt);
        m.bad += c1.bad - c0.bad;
        if let (Some(own), Some(a), Some(b)) = (&self.own_cpu, cpu0, cpu1) {
            m.cost.push(own.cost(a, b, good));
        }
        (good, dt, mark0, mark1)
    }

    /// [`Self::repetition`] with the looping generator: seeded, topped up
    /// from [`GENERATOR_CPU`], stopped and drained afterwards so that it
    /// takes no CPU while the other peers are measured.
    fn loop_repetition(&self, m: &mut Measurement, secs: f64) {
        let lp = self.looping.as_ref().expect("a looping rig");
        let gen = &lp.gen;
        gen.set_traffic(&self.traffic(m.flows))
            .expect("the loop's traffic");
        gen.start().expect("starting the loop");
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let seeder = scope.spawn(|| {
                pin_self(GENERATOR_CPU);
                let (start, mut seeded) = (Instant::now(), 0u64);
                while !stop.load(Ordering::Relaxed)
                    && start.elapsed() < Duration::from_secs_f64(secs + 5.0)
                {
                    // The loop fills while it warms up, then is kept full.
                    let n = if start.elapsed() < WARM_UP {
                        LOOP_FILL
                    } else {
                        LOOP_TOP_UP
                    };
                    seeded += u64::from(gen.seed(&lp.seeder, n).expect("seeding the loop"));
                    std::thread::sleep(LOOP_TOP_UP_EVERY);
                }
                seeded
            });
            let (good, dt, g0, g1) = self.window(m, secs, || gen.generated().unwrap());
            stop.store(true, Ordering::Relaxed);
            let seeded = seeder.join().unwrap();
            m.offered_pps.push((g1 - g0) as f64 / dt);
            eprintln!(
                "    loop: {seeded} frames seeded; in the window {} generated, {good} delivered",
                g1 - g0
            );
        });
        gen.stop().expect("stopping the loop");
        // A lap takes microseconds; what is still in a ring is dropped
        // when it comes back.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the generator sends to `peer` on `rig`.
fn traffic(rig: &Rig, peer: Peer, flows: u32) -> Traffic {
    Traffic {
        src_mac: rig.gen.mac,
        dst_mac: rig.gw_public.mac,
        src: rig.gen.addr.octets(),
        dst_base: peer.dst_base(),
        sport_base: 1024,
        dport: 9,
        flows,
        frame_len: 60,
    }
}
