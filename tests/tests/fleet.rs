//! A fleet on etcd (`store = "etcd"`, docs/fleet.md), against a real etcd
//! cluster (Debian's `etcd-server`) that each test starts in a namespace
//! of its own: gateways sharing one desired state, writers on two gateways
//! racing for one EIP and for one private IP, etcd going away and coming
//! back, a gateway restarting while etcd is down and after a compaction,
//! and a member of a three-node cluster failing.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use eip_nat::{
    api::Generation,
    client::ClientError,
    model::{EniKind, Event, Location, Mode},
};
use integration_tests::{
    agent::{Agent, AgentHome},
    etcd::{self, translated, Etcd, Fleet},
    netns::Namespaces,
    require_root,
    sockets::{sa, udp_socket},
};

/// Starts gateways A and B, associates the topologies' EIP with their
/// instance's address through A, and waits until B has it too.
fn start_two_and_associate(fleet: &Fleet) -> (Agent, Agent, Generation) {
    let a = fleet.start(0);
    let mut b = fleet.start(1);
    let t = &fleet.topologies[0];
    a.client()
        .event(&eni("eni-i", EniKind::Primary, t.instance.addr))
        .unwrap();
    let g = a
        .client()
        .event(&associate(t.eip, "eni-i", None))
        .expect("associate through A");
    wait_applied(&mut b, g.generation, Duration::from_secs(10));
    (a, b, g)
}

fn eni(id: &str, kind: EniKind, ip: Ipv4Addr) -> Event {
    Event::CreateEni {
        eni: id.into(),
        kind,
        primary_ip: ip,
        instance: (kind == EniKind::Primary).then(|| format!("i-{id}")),
        location: Location::default(),
    }
}

fn associate(eip: Ipv4Addr, eni: &str, private_ip: Option<Ipv4Addr>) -> Event {
    Event::Associate {
        eip,
        eni: eni.into(),
        private_ip,
        mode: Mode::Nat,
    }
}

/// Waits until `agent`'s datapath reflects at least `generation`; returns
/// how long that took.
fn wait_applied(agent: &mut Agent, generation: u64, timeout: Duration) -> Duration {
    let start = Instant::now();
    agent.wait_until(timeout, |g: &Generation| {
        g.applied_generation >= generation && g.reconcile.is_none()
    });
    start.elapsed()
}

fn rows(agent: &Agent) -> (u64, String, String) {
    let s = agent.client().state().expect("state");
    (
        s.generation.generation,
        serde_json::to_string(&s.enis).unwrap(),
        serde_json::to_string(&s.associations).unwrap(),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What one gateway's API accepts, every gateway holds and translates; the
/// generation is etcd's revision, the same on all.
#[test]
fn a_change_made_through_one_gateway_reaches_every_gateway() {
    let fleet = Fleet::new(2, 1);
    let (a, mut b, g) = start_two_and_associate(&fleet);
    assert_eq!(g.generation, g.applied_generation);
    let revision = fleet.etcd.revision();
    assert_eq!(g.generation, revision, "the generation is etcd's revision");
    assert_eq!(rows(&a), rows(&b), "both gateways hold the same state");
    for (i, t) in fleet.topologies.iter().enumerate() {
        assert!(translated(t, 7000 + i as u16), "gateway {i} translates");
    }

    // How long a change acknowledged by A takes to be in B's datapath.
    let mut lags = Vec::new();
    for n in 0..100u8 {
        let g = a
            .client()
            .event(&eni(
                &format!("eni-l{n}"),
                EniKind::Secondary,
                Ipv4Addr::new(10, 201, 0, n),
            ))
            .unwrap();
        lags.push(wait_applied(&mut b, g.generation, Duration::from_secs(10)));
    }
    lags.sort();
    println!(
        "MEASURED acknowledged on A -> applied on B: p50 {:?}, p99 {:?}, max {:?} (100 events)",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags[lags.len() - 1]
    );
    assert_eq!(rows(&a), rows(&b));
}

/// Two gateways' clients race for one EIP, and for one private IP, many
/// times: each time exactly one wins, the other is refused by the rule,
/// and both gateways end with the same state.
#[test]
fn writers_on_two_gateways_racing_one_wins_the_other_is_refused() {
    let fleet = Fleet::new(2, 1);
    let mut a = fleet.start(0);
    let mut b = fleet.start(1);
    let rounds = 20u8;
    let mut setup = Vec::new();
    for n in 0..rounds {
        for side in [1u8, 2, 3] {
            setup.push(eni(
                &format!("eni-{n}-{side}"),
                EniKind::Secondary,
                Ipv4Addr::new(10, 200, side, n + 1),
            ));
        }
    }
    let g = a
        .client()
        .batch(&eip_nat::api::Batch {
            events: setup,
            if_generation: None,
        })
        .unwrap();
    wait_applied(&mut b, g.generation, Duration::from_secs(10));

    let race = |events: [Event; 2]| -> [Result<Generation, ClientError>; 2] {
        let barrier = Arc::new(Barrier::new(2));
        let sockets = [a.socket.clone(), b.socket.clone()];
        let handles: Vec<_> = events
            .into_iter()
            .zip(sockets)
            .map(|(event, socket)| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let client = eip_nat::client::Client::new(&socket);
                    let _ = client.generation();
                    barrier.wait();
                    client.event(&event)
                })
            })
            .collect();
        let mut out = handles.into_iter().map(|h| h.join().unwrap());
        [out.next().unwrap(), out.next().unwrap()]
    };
    let check = |outcomes: [Result<Generation, ClientError>; 2], rule: &str, what: &str| {
        let won = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(won, 1, "{what}: exactly one writer wins: {outcomes:?}");
        let refused = outcomes.iter().find_map(|o| o.as_ref().err()).unwrap();
        let api = refused
            .api()
            .unwrap_or_else(|| panic!("{what}: {refused:?}"));
        assert_eq!(api.rule.as_deref(), Some(rule), "{what}: {api:?}");
    };
    for n in 0..rounds {
        // The same EIP, each to an ENI of its own.
        let eip = Ipv4Addr::new(203, 0, 113, 100 + n);
        let outcomes = race([
            associate(eip, &format!("eni-{n}-1"), None),
            associate(eip, &format!("eni-{n}-2"), None),
        ]);
        check(outcomes, "eip_has_one_target", "one EIP");
        // Two EIPs for the same private IP.
        let outcomes = race([
            associate(Ipv4Addr::new(203, 0, 114, n), &format!("eni-{n}-3"), None),
            associate(Ipv4Addr::new(203, 0, 115, n), &format!("eni-{n}-3"), None),
        ]);
        check(outcomes, "one_eip_per_private_ip", "one private IP");
    }
    let g = a.client().generation().unwrap().generation;
    let gb = b.client().generation().unwrap().generation;
    wait_applied(&mut b, g, Duration::from_secs(10));
    wait_applied(&mut a, gb, Duration::from_secs(10));
    assert_eq!(rows(&a), rows(&b), "both gateways converge");
    let lost = |agent: &Agent| {
        agent
            .log_text()
            .matches("another gateway wrote first")
            .count()
    };
    println!(
        "MEASURED races: {} rounds x 2, compare failures caught up and checked again: A {}, B {}",
        rounds,
        lost(&a),
        lost(&b)
    );
}

/// While etcd is unreachable the datapath keeps translating, reads are
/// answered and writes refused with 503; a gateway restarts from its local
/// copy; when etcd is back every gateway converges.
#[test]
fn while_etcd_is_down_gateways_serve_refuse_writes_and_then_converge() {
    let mut fleet = Fleet::new(2, 1);
    let (a, b, g) = start_two_and_associate(&fleet);

    fleet.etcd.kill(0);
    let down = Instant::now();
    for (i, t) in fleet.topologies.iter().enumerate() {
        assert!(
            translated(t, 7100 + i as u16),
            "gateway {i} translates with etcd down"
        );
    }
    let e = a
        .client()
        .event(&eni(
            "eni-x",
            EniKind::Secondary,
            Ipv4Addr::new(10, 201, 0, 1),
        ))
        .expect_err("a write with etcd down");
    match &e {
        ClientError::Api { status, error } => {
            assert_eq!(*status, 503, "{e}");
            assert!(error.message.contains("etcd"), "{}", error.message);
            println!("refused while etcd is down: {}", error.message);
        }
        other => panic!("{other:?}"),
    }
    let refused_in = down.elapsed();
    let state = a.client().state().expect("reads are answered");
    assert_eq!(state.associations.len(), 1);
    assert!(a
        .client()
        .state()
        .unwrap()
        .enis
        .iter()
        .all(|e| e.id != "eni-x"));

    // B restarts while etcd is down: from its local copy.
    let home = Arc::clone(&b.home);
    b.stop();
    let mut b = fleet.start_in(home, 1);
    assert_eq!(rows(&b).0, g.generation, "B starts from its local copy");
    assert!(
        translated(&fleet.topologies[1], 7200),
        "B translates after its restart"
    );

    fleet.etcd.restart(0);
    fleet.etcd.wait_healthy(Duration::from_secs(20));
    let back = Instant::now();
    // A write is taken again as soon as etcd answers.
    let g = loop {
        match a.client().event(&eni(
            "eni-y",
            EniKind::Secondary,
            Ipv4Addr::new(10, 201, 0, 2),
        )) {
            Ok(g) => break g,
            Err(e) if back.elapsed() < Duration::from_secs(20) => {
                assert_eq!(
                    e.api().map(|e| e.kind.to_string()),
                    Some("unavailable".into())
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("etcd is back, the write still fails: {e}"),
        }
    };
    let writable = back.elapsed();
    wait_applied(&mut b, g.generation, Duration::from_secs(20));
    let converged = back.elapsed();
    assert_eq!(rows(&a), rows(&b));
    println!(
        "MEASURED etcd outage: write refused {refused_in:?} after the kill; after etcd is healthy \
         again: writes taken in {writable:?}, both gateways converged in {converged:?}"
    );
}

/// A gateway that was stopped while the others changed the state, and
/// etcd compacted that history away, catches up by listing everything and
/// applying the difference before it takes over its datapath.
#[test]
fn a_gateway_restarted_after_a_compaction_takes_the_difference() {
    let fleet = Fleet::new(2, 1);
    let (a, b, _) = start_two_and_associate(&fleet);
    let t = &fleet.topologies[0];
    // B stops, leaving its datapath.
    let home = Arc::clone(&b.home);
    drop(b);
    let other = Ipv4Addr::new(203, 0, 113, 77);
    a.client()
        .event(&eni(
            "eni-j",
            EniKind::Primary,
            Ipv4Addr::new(10, 200, 0, 77),
        ))
        .unwrap();
    a.client().event(&associate(other, "eni-j", None)).unwrap();
    let g = a
        .client()
        .event(&Event::Disassociate { eip: t.eip })
        .unwrap();
    fleet
        .etcd
        .ctl(&["compact", &fleet.etcd.revision().to_string()])
        .expect("compact");
    let mut b = fleet.start_in(home, 1);
    wait_applied(&mut b, g.generation, Duration::from_secs(10));
    assert_eq!(rows(&a), rows(&b));
    assert!(
        b.log_text().contains("caught up from etcd"),
        "{}",
        b.log_text()
    );
    assert!(
        !translated(&fleet.topologies[1], 7300),
        "the disassociated EIP is gone on B"
    );
}

/// With three etcd members, the leader failing changes nothing the gateways
/// do, but a short wait for the next election.
#[test]
fn a_three_member_cluster_survives_a_member_failure() {
    let mut fleet = Fleet::new(2, 3);
    let a = fleet.start(0);
    let mut b = fleet.start(1);
    let mut n = 0u8;
    let mut write = |a: &Agent| {
        n += 1;
        let start = Instant::now();
        loop {
            match a.client().event(&eni(
                &format!("eni-{n}"),
                EniKind::Secondary,
                Ipv4Addr::new(10, 201, 0, n),
            )) {
                Ok(g) => return (g.generation, start.elapsed()),
                Err(e) if start.elapsed() < Duration::from_secs(20) => {
                    println!("while a member is down: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    write(&a);
    // The leader: a new one must be elected.
    let leader = fleet.etcd.leader();
    fleet.etcd.kill(leader);
    let mut worst = Duration::ZERO;
    let mut g = 0;
    for _ in 0..20 {
        let (gen, took) = write(&a);
        worst = worst.max(took);
        g = gen;
    }
    wait_applied(&mut b, g, Duration::from_secs(20));
    assert_eq!(rows(&a), rows(&b));
    println!(
        "MEASURED the leader of three etcd members killed: slowest of the 20 writes after {worst:?}"
    );
    fleet.etcd.restart(leader);
}

/// Issue #12, point 3: three gateways behind ECMP on both sides. An
/// association made through one gateway's API is translated by all
/// three; one killed and taken out of the upstream route, the flows go on
/// through the other two; restarted, it catches up from etcd before it is
/// put back. Measures the time from an associate acknowledged on A to the
/// first translated packet through B and through C.
#[test]
fn three_gateways_behind_ecmp_translate_alike_and_survive_one_failing() {
    use integration_tests::ecmp::{Ecmp, INSTANCE, INTERNET};
    require_root();
    let net = Ecmp::new(3);
    let mut namespaces = Namespaces::new();
    let gw_ns: Vec<&str> = net.gateways.iter().map(|g| g.ns.as_str()).collect();
    let (etcd_ns, addrs) = etcd::link_to_gateways(&mut namespaces, &gw_ns);
    let etcd = Etcd::start(&etcd_ns, 1, &addrs);
    let prefix = "/eip-nat-ecmp";
    let start_in = |i: usize, home: Arc<AgentHome>| {
        let args = etcd.agent_args(addrs[i], prefix);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let g = &net.gateways[i];
        Agent::start_in(home, &g.ns, &g.public.ifname, &g.private.ifname, &args)
    };
    let mut agents: Vec<Option<Agent>> = (0..3)
        .map(|i| Some(start_in(i, AgentHome::new(&net.gateways[i].ns))))
        .collect();
    let api = |agents: &[Option<Agent>], i: usize| agents[i].as_ref().unwrap().client();
    let eip = Ipv4Addr::new(203, 0, 113, 10);
    api(&agents, 0)
        .event(&eni("eni-i", EniKind::Primary, INSTANCE))
        .unwrap();
    let g = api(&agents, 0)
        .event(&associate(eip, "eni-i", None))
        .unwrap();
    for agent in agents.iter_mut().flatten() {
        wait_applied(agent, g.generation, Duration::from_secs(10));
    }

    // 90 flows (source ports) to the EIP: all arrive, translated, and
    // spread over the gateways.
    let receiver = udp_socket(&net.instance, sa(INSTANCE, 7000));
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let flows = |eip: Ipv4Addr, n: u16| -> usize {
        let mut got = 0;
        for port in 0..n {
            let s = udp_socket(&net.internet, sa(INTERNET, 20000 + port));
            s.send_to(&port.to_be_bytes(), sa(eip, 7000)).unwrap();
            let mut buf = [0u8; 8];
            if let Ok((2, from)) = receiver.recv_from(&mut buf) {
                got += usize::from(from.ip() == std::net::IpAddr::V4(INTERNET));
            }
        }
        got
    };
    let carried = |agents: &[Option<Agent>], eip: Ipv4Addr| -> Vec<u64> {
        agents
            .iter()
            .map(|a| {
                a.as_ref().map_or(0, |a| {
                    a.client()
                        .stats_of(eip)
                        .unwrap()
                        .eips
                        .first()
                        .map_or(0, |e| e.in_packets)
                })
            })
            .collect()
    };
    assert_eq!(flows(eip, 90), 90, "every flow translated");
    let before = carried(&agents, eip);
    println!("flows per gateway: {before:?}");
    assert!(
        before.iter().all(|n| *n > 0),
        "every gateway carried flows: {before:?}"
    );

    // Gateway 1 dies; the router's health check takes its next hop out.
    let home1 = Arc::clone(&agents[1].as_ref().unwrap().home);
    agents[1].take().unwrap().kill9();
    net.route_pool(&[0, 2]);
    assert_eq!(flows(eip, 90), 90, "the flows go on through the other two");

    // Meanwhile the state changes: the EIP moves to another address.
    let moved = Ipv4Addr::new(203, 0, 113, 11);
    api(&agents, 0).event(&Event::Disassociate { eip }).unwrap();
    let g = api(&agents, 2)
        .event(&associate(moved, "eni-i", None))
        .unwrap();
    // Restarted (its datapath was left running, with the old EIP), it
    // catches up from etcd before it is put back in the route.
    agents[1] = Some(start_in(1, home1));
    let caught_up = agents[1].as_ref().unwrap().client().generation().unwrap();
    assert!(
        caught_up.generation >= g.generation && caught_up.applied_generation >= g.generation,
        "started at {caught_up:?}, etcd at {}",
        g.generation
    );
    net.route_pool(&[0, 1, 2]);
    assert_eq!(
        flows(moved, 90),
        90,
        "every flow to the moved EIP translated"
    );
    assert_eq!(flows(eip, 10), 0, "the old EIP is gone everywhere");
    let after = carried(&agents, moved);
    println!("flows per gateway after the restart: {after:?}");
    assert_eq!(
        after.iter().sum::<u64>(),
        90,
        "each counted once, from zero: {after:?}"
    );
    assert!(
        after.iter().all(|n| *n > 0),
        "every gateway carried flows: {after:?}"
    );

    // Acknowledged on A -> first packet translated through B (C): the
    // internet routes 203.0.113.128/26 through B only, .192/26 through C.
    let mut lags: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut current = moved;
    for round in 0..20u8 {
        for (k, base) in [(0usize, 128u8), (1, 192)] {
            let next = Ipv4Addr::new(203, 0, 113, base + round);
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sender = {
                let stop = Arc::clone(&stop);
                let s = udp_socket(&net.internet, sa(INTERNET, 30000));
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && Instant::now() < deadline
                    {
                        let _ = s.send_to(b"lag", sa(next, 7000));
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            };
            api(&agents, 0)
                .event(&Event::Disassociate { eip: current })
                .unwrap();
            api(&agents, 0)
                .event(&associate(next, "eni-i", None))
                .unwrap();
            let acked = Instant::now();
            let mut buf = [0u8; 8];
            let arrived = loop {
                match receiver.recv_from(&mut buf) {
                    Ok((3, _)) => break Instant::now(),
                    Ok(_) => continue,
                    Err(e) => panic!("nothing translated through gateway {}: {e}", k + 1),
                }
            };
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            sender.join().unwrap();
            while receiver.recv_from(&mut buf).is_ok() {}
            lags[k].push(arrived.saturating_duration_since(acked));
            current = next;
        }
    }
    for (k, l) in lags.iter_mut().enumerate() {
        l.sort();
        println!(
            "MEASURED associate acknowledged on A -> first translated packet through {}: p50 {:?}, \
             p99 {:?} (20 associations; sender every 0.2 ms)",
            ["B", "C"][k],
            percentile(l, 0.5),
            percentile(l, 0.99)
        );
    }
}
