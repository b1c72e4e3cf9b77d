//! The control plane: loading a million associations through the API,
//! single events from 1 to 256 concurrent clients, restarting the agent
//! with them (to the first answer, and to ready), how fast reads are
//! answered while a batch commits and while the agent reconciles, how
//! soon an association takes effect, and, last, single events again once
//! half the associations are gone (the free counter slots many).

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use eip_nat::{
    api::Batch,
    client::Client,
    model::{EniKind, Event, Mode},
};
use integration_tests::{
    agent::{Agent, AgentHome},
    netns::{in_netns, Topology},
};
use serde::Serialize;

use crate::associations::{bulk_load, PER_BATCH, SENDERS};

#[derive(Clone, Debug, Serialize)]
pub struct ControlPlane {
    pub associations: u32,
    pub load_seconds: f64,
    pub associations_per_second: f64,
    pub latency_samples: usize,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    /// Agent restart with the tables loaded: stop, start, API answering
    /// (the reconcile finds nothing to change).
    pub warm_restart_seconds: f64,
    /// From starting the agent to its API's first answer, warm.
    pub restart_to_first_answer_seconds: f64,
    /// The same after `eip-nat teardown` (a reboot, say): every entry is
    /// written again from the store.
    pub cold_start_seconds: f64,
    /// Single events per second (associate, disassociate, in turn), each
    /// acknowledged once durable, with the associations loaded, from
    /// [`CLIENTS`] concurrent clients.
    pub events_per_second: Vec<(u32, f64)>,
    /// Disassociating every other loaded association, in batches: seconds.
    pub disassociate_half_seconds: f64,
    /// Single events from [`FRAGMENTED_CLIENTS`] clients once half the
    /// counter slots below the highest in use are free.
    pub events_per_second_half_free: f64,
    /// Reads (`/v1/generation` and `/v1/stats?eip=`, in turn) while the
    /// batches of the load commit, and while the agent reconciles at a
    /// cold start.
    pub read_during_batch: Latency,
    pub read_during_reconcile: Latency,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
        Self {
            samples: ms.len(),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: *ms.last().unwrap(),
        }
    }
}

/// Reads the API in a loop until `stop`; the latency of each read, in ms.
fn reader(api: Client, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let mut ms = Vec::new();
        let mut i = 0u32;
        while !stop.load(Ordering::SeqCst) {
            let t0 = Instant::now();
            let ok = if i.is_multiple_of(2) {
                api.generation().is_ok()
            } else {
                api.stats_of(Ipv4Addr::new(11, 0, 0, 7)).is_ok()
            };
            if ok {
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        ms
    })
}

/// `clients` threads each send `each` single events (associate and
/// disassociate of their own EIP, in turn); events per second.
fn single_events(agent: &Agent, clients: u32, each: u32) -> f64 {
    single_events_in(agent, clients, each, 0)
}

/// [`single_events`] with ENIs and EIPs of their own for each `round`, so
/// that the same number of clients can run again.
fn single_events_in(agent: &Agent, clients: u32, each: u32, round: u8) -> f64 {
    let api = agent.client();
    let name = move |c: u32| format!("eni-events-{round}-{clients}-{c}");
    let enis: Vec<Event> = (0..clients)
        .map(|c| Event::CreateEni {
            eni: name(c),
            kind: EniKind::Secondary,
            primary_ip: Ipv4Addr::new(172, 31 - round, clients as u8, c as u8),
            instance: None,
            location: Default::default(),
        })
        .collect();
    api.batch(&Batch {
        events: enis,
        if_generation: None,
    })
    .expect("the clients' ENIs");
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let api = agent.client();
            std::thread::spawn(move || {
                let eip = Ipv4Addr::new(198, 18 + round, clients as u8, c as u8);
                for k in 0..each {
                    let ev = if k.is_multiple_of(2) {
                        Event::Associate {
                            eip,
                            eni: name(c),
                            private_ip: None,
                            mode: Mode::Nat,
                        }
                    } else {
                        Event::Disassociate { eip }
                    };
                    api.event(&ev).expect("a single event");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    f64::from(clients * each) / t0.elapsed().as_secs_f64()
}

/// How many concurrent clients send single events, in turn.
const CLIENTS: [u32; 4] = [1, 16, 64, 256];

/// How many clients send single events once half the slots are free.
const FRAGMENTED_CLIENTS: u32 = 16;

/// Disassociates every other of the `n` associations [`bulk_load`] made
/// from `eips`, in batches of [`PER_BATCH`]: their counter slots, spread
/// over the whole range, are free afterwards, as after a day of churn.
fn disassociate_every_other(agent: &Agent, eips: [u8; 4], n: u32) -> Duration {
    let api = agent.client();
    let t0 = Instant::now();
    let odd: Vec<u32> = (1..n).step_by(2).collect();
    for chunk in odd.chunks(PER_BATCH as usize) {
        let events = chunk
            .iter()
            .map(|k| Event::Disassociate {
                eip: crate::nth(eips, *k),
            })
            .collect();
        api.batch(&Batch {
            events,
            if_generation: None,
        })
        .expect("disassociate a batch");
    }
    t0.elapsed()
}

pub fn control_plane(quick: bool) -> ControlPlane {
    let n: u32 = if quick { 100_000 } else { 1_000_000 };
    let t = Topology::new();
    let max = (n + 1024).to_string();
    let home = AgentHome::new(&t.gw_public.ns);
    let args = ["--max-associations", &max, "--log-level", "info"];
    let start = || Agent::on_in(&home, &t, &args);
    let launch = || {
        let (public, private) = (&t.gw_public, &t.gw_private);
        Agent::launch_in(
            home.clone(),
            &public.ns,
            &public.ifname,
            &private.ifname,
            &args,
        )
    };
    let agent = start();
    eprintln!("control plane: loading {n} associations…");
    let stop = Arc::new(AtomicBool::new(false));
    let reads = reader(agent.client(), Arc::clone(&stop));
    const EIPS: [u8; 4] = [11, 0, 0, 0];
    let load = bulk_load(|| agent.client(), EIPS, [10, 1, 0, 0], n);
    stop.store(true, Ordering::SeqCst);
    let read_during_batch = Latency::of(reads.join().unwrap());
    eprintln!(
        "  {:.2} s (reads meanwhile: p50 {:.2} ms, p99 {:.2} ms)",
        load.as_secs_f64(),
        read_during_batch.p50_ms,
        read_during_batch.p99_ms
    );
    // Each client waits for its answer (durable) before its next event,
    // so more clients make bigger groups to share one commit.
    let total = if quick { 8_000 } else { 32_000 };
    let events_per_second: Vec<(u32, f64)> = CLIENTS
        .iter()
        .map(|&c| {
            let each = (total / c).clamp(200, 4_000);
            let rate = single_events(&agent, c, each);
            eprintln!("  single events: {rate:.0}/s from {c} clients");
            (c, rate)
        })
        .collect();
    assert!(agent.stop().success());
    let t0 = Instant::now();
    let mut agent = launch();
    let first = agent.wait_until(Duration::from_secs(60), |_| true) - t0;
    let warm = agent.wait_until(Duration::from_secs(60), |g| g.reconcile.is_none()) - t0;
    assert!(agent.log_text().contains("0 entries written"));
    assert!(agent.stop().success());
    assert!(home.teardown(&t.gw_public.ns).status.success());
    let t0 = Instant::now();
    let mut agent = launch();
    agent.wait_until(Duration::from_secs(60), |_| true);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = reader(agent.client(), Arc::clone(&stop));
    let cold = agent.wait_until(Duration::from_secs(60), |g| g.reconcile.is_none()) - t0;
    stop.store(true, Ordering::SeqCst);
    let read_during_reconcile = Latency::of(reads.join().unwrap());
    let written = format!("{} entries written", 2 * n);
    assert!(agent.log_text().contains(&written), "{}", agent.log_text());
    eprintln!(
        "  restart: first answer {:.2} s, ready {:.2} s warm, {:.2} s cold (reads meanwhile: \
         p50 {:.2} ms, p99 {:.2} ms)",
        first.as_secs_f64(),
        warm.as_secs_f64(),
        cold.as_secs_f64(),
        read_during_reconcile.p50_ms,
        read_during_reconcile.p99_ms
    );
    let api = agent.client();
    api.event(&Event::CreateEni {
        eni: "eni-instance".into(),
        kind: EniKind::Primary,
        primary_ip: t.instance.addr,
        instance: Some("i-instance".into()),
        location: Default::default(),
    })
    .expect("instance ENI");

    // Latency: associate a fresh EIP while the internet sends to it; time
    // from the associate call returning to the first datagram arriving.
    let server = in_netns(&t.instance.ns, || UdpSocket::bind("0.0.0.0:7000").unwrap());
    server.set_nonblocking(true).unwrap();
    let client = in_netns(&t.internet.ns, || {
        UdpSocket::bind("198.51.100.2:0").unwrap()
    });
    let mut lat = Vec::new();
    let mut buf = [0u8; 64];
    let samples = if quick { 50 } else { 200 };
    for i in 0..samples {
        let eip = Ipv4Addr::new(203, 0, 113, 20 + i as u8);
        api.event(&Event::Associate {
            eip,
            eni: "eni-instance".into(),
            private_ip: None,
            mode: Mode::Nat,
        })
        .expect("associate");
        let t0 = Instant::now();
        let arrived = loop {
            client
                .send_to(b"probe", SocketAddrV4::new(eip, 7000))
                .unwrap();
            if server.recv_from(&mut buf).is_ok() {
                break Some(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(1) {
                break None;
            }
        };
        lat.push(
            arrived
                .expect("translation took effect within 1 s")
                .as_secs_f64()
                * 1e6,
        );
        api.event(&Event::Disassociate { eip })
            .expect("disassociate");
        while server.recv_from(&mut buf).is_ok() {}
    }
    // Last, as it leaves half the associations: every other one goes, so
    // that the free counter slots are many and spread out.
    let disassociate_half = disassociate_every_other(&agent, EIPS, n);
    let each = (total / FRAGMENTED_CLIENTS).clamp(200, 4_000);
    let events_per_second_half_free = single_events_in(&agent, FRAGMENTED_CLIENTS, each, 1);
    eprintln!(
        "  {} disassociated in {:.2} s; then single events: {events_per_second_half_free:.0}/s \
         from {FRAGMENTED_CLIENTS} clients",
        n / 2,
        disassociate_half.as_secs_f64()
    );
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    ControlPlane {
        associations: n,
        load_seconds: load.as_secs_f64(),
        associations_per_second: n as f64 / load.as_secs_f64(),
        latency_samples: lat.len(),
        latency_us_p50: pct(0.5),
        latency_us_p99: pct(0.99),
        warm_restart_seconds: warm.as_secs_f64(),
        restart_to_first_answer_seconds: first.as_secs_f64(),
        cold_start_seconds: cold.as_secs_f64(),
        events_per_second,
        disassociate_half_seconds: disassociate_half.as_secs_f64(),
        events_per_second_half_free,
        read_during_batch,
        read_during_reconcile,
    }
}

pub fn control_table(c: &ControlPlane) -> String {
    let events: String = c
        .events_per_second
        .iter()
        .map(|(clients, rate)| {
            format!("| single events, {clients} concurrent clients | {rate:.0}/s |\n")
        })
        .collect();
    format!(
        "Control plane, {n} associations (a primary ENI and an association each):\n\n\
         | | |\n|---|---|\n\
         | load, in batches of {PER_BATCH} from {SENDERS} clients at once | {:.2} s ({:.0}/s) |\n\
         {events}\
         | restart: API's first answer | {:.2} s |\n\
         | restart: ready (reconciled, attached; nothing to write) | {:.2} s |\n\
         | cold start after teardown: ready (every entry written) | {:.2} s |\n\
         | reads during the load's batches: p50 / p99 / max | {:.2} / {:.2} / {:.2} ms ({} reads) |\n\
         | reads during the cold start's reconcile: p50 / p99 / max | {:.2} / {:.2} / {:.2} ms ({} reads) |\n\
         | `associate` returning → first translated datagram: p50 / p99 | {:.0} / {:.0} µs ({} samples) |\n\
         | last: every other association disassociated, in batches | {:.2} s |\n\
         | then single events, {FRAGMENTED_CLIENTS} concurrent clients, half the counter slots free | {:.0}/s |\n",
        c.load_seconds,
        c.associations_per_second,
        c.restart_to_first_answer_seconds,
        c.warm_restart_seconds,
        c.cold_start_seconds,
        c.read_during_batch.p50_ms,
        c.read_during_batch.p99_ms,
        c.read_during_batch.max_ms,
        c.read_during_batch.samples,
        c.read_during_reconcile.p50_ms,
        c.read_during_reconcile.p99_ms,
        c.read_during_reconcile.max_ms,
        c.read_during_reconcile.samples,
        c.latency_us_p50,
        c.latency_us_p99,
        c.latency_samples,
        c.disassociate_half_seconds,
        c.events_per_second_half_free,
        n = c.associations,
    )
}
