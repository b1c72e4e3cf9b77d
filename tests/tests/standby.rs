//! Active/standby on a shared L2 uplink (`fleet_mode = "active-standby"`,
//! docs/fleet.md), against a real etcd: two gateways on one bridge with the
//! upstream, which reaches the EIPs by ARP. Only the active gateway
//! answers; when its host dies (agent killed, links down) the standby takes
//! the lease, announces the EIPs by gratuitous ARP, and the traffic
//! follows. The loss is measured on a steady stream.

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

#[test]
fn the_standby_takes_over_when_the_active_dies() {
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
    // The standby's tables are the active's: taking over needs no reload.
    b.wait_until(Duration::from_secs(10), |g2: &Generation| {
        g2.applied_generation >= g.generation
    });

    // Only the active answers ARP for the EIP: resolved three times over,
    // the upstream's entry names its MAC, and the standby sent no reply.
    let mac = |i: usize| mac_str(net.gateways[i].public.mac);
    for _ in 0..3 {
        net.upstream_forgets();
        assert_eq!(reach(&net, 5), 5, "translated through the active");
        assert_eq!(net.upstream_neighbour(EIP), Some(mac(0)));
    }
    let (sa_, sb) = (a.stats(), b.stats());
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

    // A steady stream, sequence-numbered; the active's host dies in its
    // course.
    let inst = udp_socket(&net.instance.ns, sa(INSTANCE, PORT));
    inst.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let up = udp_socket(&net.upstream.ns, sa(UPSTREAM, 0));
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
    let mut a = Some(a);
    let mut failed_at = None;
    for seq in 0..total {
        let due = started + interval * seq;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if failed_at.is_none() && started.elapsed() >= FAILURE_AT {
            // The host dies: the agent with no cleanup, and the links its
            // datapath (still attached, maps pinned) would forward on.
            a.take().unwrap().kill9();
            net.power_off(0);
            failed_at = Some(seq);
        }
        up.send_to(&seq.to_be_bytes(), sa(EIP, PORT)).unwrap();
    }
    sending.store(false, Ordering::Relaxed);
    let got = receiver.join().unwrap();
    let failed_at = failed_at.unwrap() as usize;

    let before = got[..failed_at].iter().filter(|g| **g).count();
    let lost: Vec<usize> = (failed_at..got.len()).filter(|s| !got[*s]).collect();
    let first_after = (failed_at..got.len()).find(|s| got[*s] && lost.iter().any(|l| l < s));
    let lost_ms = lost.len() as f64 * 1000.0 / RATE_PER_SEC as f64;
    println!(
        "active/standby takeover: {} datagrams lost of {} after the failure ({lost_ms:.0} ms of \
         traffic at {RATE_PER_SEC}/s, lease TTL {LEASE_TTL_SECS} s); {before} of {failed_at} \
         before it arrived; the last {} sent all arrived: {}",
        lost.len(),
        got.len() - failed_at,
        got.len() - first_after.unwrap_or(got.len()),
        first_after.is_some_and(|f| got[f..].iter().all(|g| *g)),
    );
    assert!(
        before >= failed_at * 99 / 100,
        "the stream flowed before the failure: {before} of {failed_at}"
    );
    let resumed = first_after.expect("the stream resumed through the standby");
    assert!(
        got[resumed..].iter().all(|g| *g),
        "once taken over, nothing more is lost"
    );
    assert!(
        lost_ms < 3000.0,
        "the takeover lost {lost_ms:.0} ms of traffic (target < 1,000 ms with a 1 s lease)"
    );

    // The standby is the active one now, announced its EIP (the upstream's
    // entry names its MAC: only a gratuitous ARP moved it, the upstream
    // asked nothing), and carried the rest.
    role_is(&mut b, "active", "gw1");
    assert_eq!(net.upstream_neighbour(EIP), Some(mac(1)));
    let sb = b.stats();
    let carried: u64 = sb.eips.iter().map(|e| e.in_packets).sum();
    assert!(
        carried >= (got.len() - resumed) as u64,
        "the rest went through the standby: {carried}"
    );
    assert!(
        inbound(&sb, Verdict::TranslatedRedirect) >= carried,
        "translated on its fast path"
    );
    assert!(b.log_text().contains("gratuitous ARP: 1 EIPs announced"));
}
