//! The control plane: loading a million associations through the API,
//! restarting the agent with them, and how soon an association takes effect.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use eip_nat::model::{EniKind, Event, Mode};
use integration_tests::{
    agent::{Agent, AgentHome},
    netns::{in_netns, Topology},
};
use serde::Serialize;

use crate::associations::{bulk_load, PER_BATCH};

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
    /// The same after `eip-nat teardown` (a reboot, say): every entry is
    /// written again from the store.
    pub cold_start_seconds: f64,
}

pub fn control_plane(quick: bool) -> ControlPlane {
    let n: u32 = if quick { 100_000 } else { 1_000_000 };
    let t = Topology::new();
    let max = (n + 1024).to_string();
    let home = AgentHome::new(&t.gw_public.ns);
    let args = ["--max-associations", &max, "--log-level", "info"];
    let start = || Agent::on_in(&home, &t, &args);
    let agent = start();
    eprintln!("control plane: loading {n} associations…");
    let load = bulk_load(&agent.client(), [11, 0, 0, 0], [10, 1, 0, 0], n);
    eprintln!("  {:.1} s; restarting the agent", load.as_secs_f64());
    assert!(agent.stop().success());
    let t0 = Instant::now();
    let agent = start();
    let warm = t0.elapsed();
    assert!(agent.log_text().contains("0 entries written"));
    assert!(agent.stop().success());
    assert!(home.teardown(&t.gw_public.ns).status.success());
    let t0 = Instant::now();
    let agent = start();
    let cold = t0.elapsed();
    let written = format!("{} entries written", 2 * n);
    assert!(agent.log_text().contains(&written), "{}", agent.log_text());
    eprintln!(
        "  warm restart {:.1} s, cold start {:.1} s",
        warm.as_secs_f64(),
        cold.as_secs_f64()
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
        cold_start_seconds: cold.as_secs_f64(),
    }
}

pub fn control_table(c: &ControlPlane) -> String {
    format!(
        "Control plane: {} associations (a primary ENI and an association each) loaded in batches of \
         {PER_BATCH} in {:.1} s ({:.0}/s); agent restart with them loaded {:.1} s (warm: pinned maps, nothing \
         to write), {:.1} s cold (after teardown: every entry written from the store); from `associate` \
         returning to the first translated datagram arriving: p50 {:.0} µs, p99 {:.0} µs ({} samples).\n",
        c.associations,
        c.load_seconds,
        c.associations_per_second,
        c.warm_restart_seconds,
        c.cold_start_seconds,
        c.latency_us_p50,
        c.latency_us_p99,
        c.latency_samples
    )
}
