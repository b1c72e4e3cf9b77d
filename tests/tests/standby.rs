//! Active/standby on a shared L2 uplink (`fleet_mode = "active-standby"`,
//! docs/fleet.md), against a real etcd: two gateways on one bridge with the
//! upstream, which reaches the EIPs by ARP. Only the active gateway
//! answers; when its host dies (agent killed, links down) the standby takes
//! the lease, announces the EIPs by gratuitous ARP, and the traffic
//! follows. The loss is measured on a steady stream. A stopped active
//! hands over at once; with etcd gone, the active stops answering ARP.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use eip_nat::{
    api::{Generation, Stats},
    model::{EniKind, Event, Location, Mode},
};
use eip_nat_common::{Direction, Verdict};
use integration_tests::{
    agent::{Agent, AgentHome},
    etcd::{self, Etcd},
    l2::{SharedL2, INSTANCE, UPSTREAM},
    netns::{mac_str, Namespaces},
    require_root,
    sockets::{sa, udp_socket},
};

const EIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PORT: u16 = 7000;
/// The stream: one datagram a millisecond, for this long.
const RATE_PER_SEC: u64 = 1000;
const STREAM: Duration = Duration::from_secs(7);
/// When, into the stream, the active gateway's host dies.
const FAILURE_AT: Duration = Duration::from_secs(2);
/// etcd counts leases in seconds; 1 is its least.
const LEASE_TTL_SECS: &str = "1";

fn role_is(agent: &mut Agent, role: &'static str, leader: &'static str) {
    agent.wait_until(Duration::from_secs(15), |g: &Generation| {
        g.reconcile.is_none()
            && g.standby
                .as_ref()
                .is_some_and(|s| s.role == role && s.leader.as_deref() == Some(leader))
    });
}

fn inbound(stats: &Stats, verdict: Verdict) -> u64 {
    stats
        .verdicts
        .iter()
        .find(|v| v.direction == Direction::Inbound && v.verdict == verdict)
        .map_or(0, |v| v.packets)
}

/// Sends `n` datagrams to the EIP and returns how many the instance got
/// from the upstream's address on its own (translated).
fn reach(net: &SharedL2, n: u32) -> u32 {
    let inst = udp_socket(&net.instance.ns, sa(INSTANCE, PORT));
    inst.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let up = udp_socket(&net.upstream.ns, sa(UPSTREAM, 0));
    let mut got = 0;
    for i in 0..n {
        up.send_to(&i.to_be_bytes(), sa(EIP, PORT)).unwrap();
        let mut buf = [0u8; 8];
        if let Ok((4, from)) = inst.recv_from(&mut buf) {
            got += u32::from(from.ip() == IpAddr::V4(UPSTREAM));
        }
    }
    got
}

/// Two gateways on one L2 uplink sharing one etcd, gateway 0 active and
/// gateway 1 its standby, the EIP associated with the instance on both.
struct Pair {
    // Dropped in this order: the agents, etcd, then the namespaces.
    a: Option<Agent>,
    b: Agent,
    etcd: Etcd,
    _namespaces: Namespaces,
    net: SharedL2,
}

impl Pair {
    fn new() -> Self {
        require_root();
        let net = SharedL2::new(2);
        let mut namespaces = Namespaces::new();
        let gw_ns: Vec<&str> = net.gateways.iter().map(|g| g.ns.as_str()).collect();
        let (etcd_ns, addrs) = etcd::link_to_gateways(&mut namespaces, &gw_ns);
        let etcd = Etcd::start(&etcd_ns, 1, &addrs);
        let names = ["gw0", "gw1"];
        let start = |i: usize| {
            let mut args = etcd.agent_args(addrs[i], "/eip-nat-standby");
            args.extend(
                [
                    "--fleet-mode",
                    "active-standby",
                    "--standby-group",
                    "uplink",
                    "--node-name",
                    names[i],
                    "--lease-ttl-secs",
                    LEASE_TTL_SECS,
                ]
                .map(String::from),
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let g = &net.gateways[i];
            Agent::start_in(
                AgentHome::new(&g.ns),
                &g.ns,
                &g.public.ifname,
                &g.private.ifname,
                &args,
            )
        };
        // The first one up takes the lease; the second stands by.
        let mut a = start(0);
        role_is(&mut a, "active", "gw0");
        let mut b = start(1);
        role_is(&mut b, "standby", "gw0");

        a.client()
            .event(&Event::CreateEni {
                eni: "eni-i".into(),
                kind: EniKind::Primary,
                primary_ip: INSTANCE,
                instance: Some("i-1".into()),
                location: Location::default(),
            })
            .unwrap();
        let g = a
            .client()
            .event(&Event::Associate {
                eip: EIP,
                eni: "eni-i".into(),
                private_ip: None,
                mode: Mode::Nat,
            })
            .unwrap();
        // The standby's tables are the active's: taking over needs no
        // reload.
        b.wait_until(Duration::from_secs(10), |g2: &Generation| {
            g2.applied_generation >= g.generation
        });
        Self {
            a: Some(a),
            b,
            etcd,
            _namespaces: namespaces,
            net,
        }
    }

    fn mac(&self, i: usize) -> String {
        mac_str(self.net.gateways[i].public.mac)
    }

    /// Streams [`STREAM`] of datagrams to the EIP, one a millisecond,
    /// sequence-numbered; `fail` is called [`FAILURE_AT`] into it. Returns,
    /// per datagram, whether the instance got it translated, and the
    /// sequence number sent first after `fail`.
    fn stream(&mut self, fail: impl FnOnce(&mut Self)) -> (Vec<bool>, usize) {
        let inst = udp_socket(&self.net.instance.ns, sa(INSTANCE, PORT));
        inst.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let up = udp_socket(&self.net.upstream.ns, sa(UPSTREAM, 0));
        let total = (STREAM.as_millis() as u64 * RATE_PER_SEC / 1000) as u32;
        let sending = Arc::new(AtomicBool::new(true));
        let receiver = {
            let sending = Arc::clone(&sending);
            std::thread::spawn(move || {
                let mut got = vec![false; total as usize];
                let mut quiet_since: Option<Instant> = None;
                loop {
                    let mut buf = [0u8; 8];
                    match inst.recv_from(&mut buf) {
                        Ok((4, from)) if from.ip() == IpAddr::V4(UPSTREAM) => {
                            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                            if let Some(slot) = got.get_mut(seq as usize) {
                                *slot = true;
                            }
                        }
                        _ if sending.load(Ordering::Relaxed) => {}
                        _ => {
                            // The stream ended: wait out what is in flight.
                            let since = *quiet_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > Duration::from_millis(300) {
                                return got;
                            }
                        }
                    }
                }
            })
        };
        let started = Instant::now();
        let interval = Duration::from_secs(1) / RATE_PER_SEC as u32;
        let mut fail = Some(fail);
        let mut failed_at = None;
        for seq in 0..total {
            let due = started + interval * seq;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if started.elapsed() >= FAILURE_AT {
                if let Some(fail) = fail.take() {
                    fail(self);
                    failed_at = Some(seq as usize);
                }
            }
            up.send_to(&seq.to_be_bytes(), sa(EIP, PORT)).unwrap();
        }
        sending.store(false, Ordering::Relaxed);
        (receiver.join().unwrap(), failed_at.unwrap())
    }

    /// Checks the stream flowed before `failed_at` and resumed after it,
    /// with nothing lost once resumed; returns how many were lost.
    fn lost(got: &[bool], failed_at: usize, what: &str) -> usize {
        let before = got[..failed_at].iter().filter(|g| **g).count();
        let lost = (failed_at..got.len()).filter(|s| !got[*s]).count();
        let last_lost = (failed_at..got.len()).rev().find(|s| !got[*s]);
        println!(
            "{what}: {lost} datagrams lost of {} after it ({:.0} ms of traffic at \
             {RATE_PER_SEC}/s, lease TTL {LEASE_TTL_SECS} s); {before} of {failed_at} before \
             it arrived",
            got.len() - failed_at,
            lost as f64 * 1000.0 / RATE_PER_SEC as f64,
        );
        assert!(
            before >= failed_at * 99 / 100,
            "the stream flowed before: {before} of {failed_at}"
        );
        let resumed = last_lost.map_or(failed_at, |l| l + 1);
        assert!(
            got.len() - resumed >= 1000,
            "the stream resumed and flowed for its last second at least"
        );
        lost
    }
}

#[test]
fn the_standby_takes_over_when_the_active_dies() {
    let mut pair = Pair::new();
    // Only the active answers ARP for the EIP: resolved three times over,
    // the upstream's entry names its MAC, and the standby sent no reply.
    for _ in 0..3 {
        pair.net.upstream_forgets();
        assert_eq!(reach(&pair.net, 5), 5, "translated through the active");
        assert_eq!(pair.net.upstream_neighbour(EIP), Some(pair.mac(0)));
    }
    let metrics = |agent: &Agent| agent.cli_ok(&["metrics"]);
    assert!(metrics(pair.a.as_ref().unwrap()).contains("eip_nat_standby_active 1"));
    assert!(metrics(&pair.b).contains("eip_nat_standby_active 0"));
    let (sa_, sb) = (pair.a.as_ref().unwrap().stats(), pair.b.stats());
    assert!(
        inbound(&sa_, Verdict::ArpReplySent) >= 3,
        "the active answered"
    );
    assert_eq!(
        inbound(&sb, Verdict::ArpReplySent),
        0,
        "the standby answered"
    );
    assert_eq!(
        sb.eips.iter().map(|e| e.in_packets).sum::<u64>(),
        0,
        "the standby carried nothing"
    );

    // The active's host dies in the course of a stream: the agent with no
    // cleanup, and the links its datapath (still attached, maps pinned)
    // would forward on.
    let (got, failed_at) = pair.stream(|p| {
        p.a.take().unwrap().kill9();
        p.net.power_off(0);
    });
    let lost = Pair::lost(
        &got,
        failed_at,
        "active/standby takeover, the active's host died",
    );
    assert!(
        lost < 1500,
        "the takeover lost {lost} ms of traffic (target < 1,000 ms; the standby takes over \
         500 ms after the last heartbeat it saw)"
    );

    // The standby is the active one now, announced its EIP (the upstream's
    // entry names its MAC: only a gratuitous ARP moved it, the upstream
    // asked nothing), and carried the rest, translated.
    role_is(&mut pair.b, "active", "gw1");
    assert_eq!(pair.net.upstream_neighbour(EIP), Some(pair.mac(1)));
    let sb = pair.b.stats();
    let carried: u64 = sb.eips.iter().map(|e| e.in_packets).sum();
    assert!(
        carried >= (got.len() - failed_at - lost) as u64,
        "the rest went through the standby: {carried}"
    );
    assert!(
        inbound(&sb, Verdict::TranslatedRedirect) >= carried,
        "translated on its fast path"
    );
    assert!(pair
        .b
        .log_text()
        .contains("gratuitous ARP: 1 EIPs announced"));
}

/// An active agent that is stopped (SIGTERM) gives its lease up: the
/// standby takes over at once, while the stopped one's datapath (left
/// running) still translates what the upstream sends it until then.
#[test]
fn a_stopped_active_hands_over_at_once() {
    let mut pair = Pair::new();
    assert_eq!(reach(&pair.net, 5), 5, "translated through the active");
    let (got, failed_at) = pair.stream(|p| {
        assert!(p.a.take().unwrap().stop().success());
    });
    let lost = Pair::lost(
        &got,
        failed_at,
        "active/standby hand-over, the active stopped",
    );
    role_is(&mut pair.b, "active", "gw1");
    assert_eq!(pair.net.upstream_neighbour(EIP), Some(pair.mac(1)));
    assert!(lost < 100, "the hand-over lost {lost} ms of traffic");
}

/// etcd gone: the active cannot renew its lease and stops answering ARP
/// when it would run out (no two gateways answering for one EIP), but
/// its datapath translates on what the upstream still sends it; the
/// standby stays one. etcd back: one of them leads again, and the upstream
/// resolves the EIP to it.
#[test]
fn with_etcd_gone_the_active_stops_answering_arp_and_translates_on() {
    let mut pair = Pair::new();
    assert_eq!(reach(&pair.net, 5), 5, "translated through the active");
    pair.etcd.kill(0);
    let a = pair.a.as_mut().unwrap();
    a.wait_until(Duration::from_secs(5), |g: &Generation| {
        g.standby.as_ref().is_some_and(|s| s.role == "candidate")
    });
    assert_eq!(
        reach(&pair.net, 5),
        5,
        "the stepped-down active translates on"
    );
    pair.net.upstream_forgets();
    assert_eq!(reach(&pair.net, 2), 0, "nobody answers ARP for the EIP");
    role_is(&mut pair.b, "standby", "gw0");

    pair.etcd.restart(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        let role = |agent: &Agent| agent.client().generation().unwrap().standby.unwrap();
        let (ra, rb) = (role(pair.a.as_ref().unwrap()), role(&pair.b));
        match (ra.role.as_str(), rb.role.as_str()) {
            ("active", "standby") if rb.leader.as_deref() == Some("gw0") => break 0,
            ("standby", "active") if ra.leader.as_deref() == Some("gw1") => break 1,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no leader after etcd came back: {ra:?} {rb:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    pair.net.upstream_forgets();
    assert_eq!(reach(&pair.net, 5), 5, "translated through the new leader");
    assert_eq!(pair.net.upstream_neighbour(EIP), Some(pair.mac(leader)));
}
