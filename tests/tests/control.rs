//! The control plane end to end, in network namespaces with a real agent:
//! each association mode with real TCP and UDP, an ENI moving between two
//! instances under traffic, agent restarts (clean and `kill -9`) under
//! traffic, teardown, and the API itself.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use eip_nat::{
    api::{Batch, ErrorKind, Stats},
    model::{tables, EniKind, Event, Limits, Location, Mode, State},
};
use eip_nat_common::{maps::ADDRESSES, AddrEntry};
use integration_tests::{
    agent::{Agent, AgentHome},
    netns::{in_netns, ns_output, ns_sh, Topology, TwoInstances},
    require_root, setsockopt,
    sockets::{accept_within, sa, udp_socket, TIMEOUT},
};

fn dropped(before: &Stats, after: &Stats, direction: &str, verdict: &str) -> u64 {
    after.verdict(direction, verdict).unwrap().packets
        - before.verdict(direction, verdict).unwrap().packets
}

/// `eni create`, as CLI arguments.
fn create_eni<'a>(eni: &'a str, kind: &'a str, ip: &'a str) -> [&'a str; 8] {
    [
        "eni",
        "create",
        "--eni",
        eni,
        "--kind",
        kind,
        "--primary-ip",
        ip,
    ]
}

/// `eni attach` with one location flag (`--via` or `--dev`).
fn attach_eni<'a>(eni: &'a str, instance: &'a str, flag: &'a str, at: &'a str) -> [&'a str; 8] {
    [
        "eni",
        "attach",
        "--eni",
        eni,
        "--instance",
        instance,
        flag,
        at,
    ]
}

/// `eni create` of a primary ENI with its instance.
fn create_primary<'a>(eni: &'a str, ip: &'a str, instance: &'a str) -> Vec<&'a str> {
    [
        &create_eni(eni, "primary", ip)[..],
        &["--instance", instance],
    ]
    .concat()
}

/// The instance of `t` gets a placeholder primary ENI (instance `i-1`), and
/// a secondary ENI `eni-s` on its real address, attached through the
/// gateway's private interface.
fn secondary_eni_on_instance(agent: &Agent, t: &Topology) {
    agent.cli_ok(&create_primary("eni-p", "10.200.0.9", "i-1"));
    agent.cli_ok(&create_eni(
        "eni-s",
        "secondary",
        &t.instance.addr.to_string(),
    ));
    agent.cli_ok(&attach_eni("eni-s", "i-1", "--dev", &t.gw_private.ifname));
}

/// The instance's OS owns `eip` (cut-through and multi-EIP: the EIP is
/// configured in the instance).
fn configure_eip_in_instance(t: &Topology, eip: Ipv4Addr) {
    ns_sh(
        &t.instance.ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{eip}/32"),
            "dev",
            &t.instance.ifname,
        ],
    );
}

/// The instance's connections leave from `eip`.
fn leave_by(t: &Topology, eip: Ipv4Addr) {
    let src = eip.to_string();
    let route = [
        "ip",
        "route",
        "replace",
        "default",
        "via",
        "10.200.0.1",
        "src",
        &src,
    ];
    ns_sh(&t.instance.ns, &route);
}

/// A UDP round trip from the internet to `eip`, answered by a socket bound
/// to `eip` itself in the instance: it only gets datagrams whose
/// destination is still the EIP.
fn udp_round_trip_untranslated(t: &Topology, eip: Ipv4Addr, port: u16) {
    let server = udp_socket(&t.instance.ns, sa(eip, port));
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let mut buf = [0u8; 256];
    client.send_to(b"ping", sa(eip, port)).unwrap();
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("the instance gets the datagram addressed to its EIP");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(from.ip(), t.internet.addr);
    server.send_to(b"pong", from).unwrap();
    let (n, from) = client.recv_from(&mut buf).expect("the reply comes back");
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(from, SocketAddr::V4(sa(eip, port)), "from the EIP itself");
}

/// TCP from the internet to `eip`, and from the instance out with `eip` as
/// its source: both ends see the EIP.
fn tcp_both_ways_untranslated(t: &Topology, eip: Ipv4Addr) {
    let listener = in_netns(&t.instance.ns, || TcpListener::bind(sa(eip, 8080)).unwrap());
    let conn = std::thread::spawn({
        let (ns, addr) = (t.internet.ns.clone(), t.internet.addr);
        move || {
            let mut c = in_netns(&ns, || {
                TcpStream::connect_timeout(&SocketAddr::V4(sa(eip, 8080)), TIMEOUT).unwrap()
            });
            assert_eq!(c.local_addr().unwrap().ip(), addr);
            c.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            c.read_exact(&mut back).unwrap();
            back
        }
    });
    let (mut served, peer) = accept_within(&listener, TIMEOUT);
    assert_eq!(peer.ip(), t.internet.addr, "the instance sees the client");
    let mut got = [0u8; 5];
    served.set_read_timeout(Some(TIMEOUT)).unwrap();
    served.read_exact(&mut got).unwrap();
    served.write_all(&got).unwrap();
    assert_eq!(&conn.join().unwrap(), b"hello");

    // Outbound: the instance connects to the internet from its EIP.
    let listener = in_netns(&t.internet.ns, || {
        TcpListener::bind(sa(t.internet.addr, 9090)).unwrap()
    });
    let out = std::thread::spawn({
        let (ns, to) = (t.instance.ns.clone(), t.internet.addr);
        move || {
            let socket = in_netns(&ns, || {
                let s =
                    std::net::TcpStream::connect_timeout(&SocketAddr::V4(sa(to, 9090)), TIMEOUT);
                s.unwrap()
            });
            socket.local_addr().unwrap().ip()
        }
    });
    let (_c, peer) = accept_within(&listener, TIMEOUT);
    assert_eq!(peer.ip(), eip, "the internet sees the EIP, unchanged");
    assert_eq!(out.join().unwrap(), eip);
}

#[test]
fn cut_through_mode_end_to_end() {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &[]);
    secondary_eni_on_instance(&agent, &t);
    agent.cli_ok(&[
        "associate",
        "--eip",
        &t.eip.to_string(),
        "--eni",
        "eni-s",
        "--mode",
        "cut-through",
    ]);
    // The instance's OS takes the EIP as its address and leaves by it.
    configure_eip_in_instance(&t, t.eip);
    leave_by(&t, t.eip);
    // The gateway routes the EIP to where the ENI lives.
    let routes = ns_output(&t.gw_public.ns, &["ip", "route", "show", "proto", "234"]);
    assert!(
        routes.contains(&format!("{} dev {}", t.eip, t.gw_private.ifname)),
        "{routes}"
    );

    let before = agent.stats();
    udp_round_trip_untranslated(&t, t.eip, 7000);
    tcp_both_ways_untranslated(&t, t.eip);
    let after = agent.stats();
    let (b, a) = (before.eip(t.eip).unwrap(), after.eip(t.eip).unwrap());
    assert!(a.in_packets > b.in_packets && a.out_packets > b.out_packets);

    // The ENI's private IP no longer takes traffic, from either side.
    ns_sh(
        &t.internet.ns,
        &["ip", "route", "add", "10.200.0.0/24", "via", "198.51.100.1"],
    );
    let before = agent.stats();
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    client
        .send_to(b"to the old address", sa(t.instance.addr, 7001))
        .unwrap();
    let old = udp_socket(&t.instance.ns, sa(t.instance.addr, 7002));
    old.send_to(b"from the old address", sa(t.internet.addr, 7003))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = agent.stats();
    assert_eq!(
        dropped(&before, &after, "inbound", "drop_private_disabled"),
        1
    );
    assert_eq!(
        dropped(&before, &after, "outbound", "drop_private_disabled"),
        1
    );
}

#[test]
fn multi_eip_mode_end_to_end() {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &["--multi-eip-quota", "2"]);
    secondary_eni_on_instance(&agent, &t);
    let eips = [t.eip, Ipv4Addr::new(203, 0, 113, 11)];
    for eip in eips {
        agent.cli_ok(&[
            "associate",
            "--eip",
            &eip.to_string(),
            "--eni",
            "eni-s",
            "--mode",
            "multi-eip",
        ]);
        configure_eip_in_instance(&t, eip);
    }
    // The quota is the agent's configuration.
    let third = agent.cli(&[
        "associate",
        "--eip",
        "203.0.113.12",
        "--eni",
        "eni-s",
        "--mode",
        "multi-eip",
    ]);
    assert!(!third.status.success());
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(err.contains("[multi_eip_quota]"), "{err}");

    for (i, eip) in eips.into_iter().enumerate() {
        udp_round_trip_untranslated(&t, eip, 7000 + i as u16);
    }
    // The first EIP also carries TCP both ways (the instance's default
    // source is its first EIP).
    leave_by(&t, eips[0]);
    tcp_both_ways_untranslated(&t, eips[0]);
    // The ENI keeps its private IP: the VPC (here, the gateway's own
    // address on it) still reaches it, and the datapath drops nothing.
    let before = agent.stats();
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.gw_public.ns,
            "ping",
            "-c",
            "2",
            "-W",
            "2",
        ])
        .args(["-i", "0.2", &t.instance.addr.to_string()])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    let after = agent.stats();
    let drops: u64 = after
        .verdicts
        .iter()
        .zip(&before.verdicts)
        .filter(|(a, _)| a.drop)
        .map(|(a, b)| a.packets - b.packets)
        .sum();
    assert_eq!(drops, 0);
}

/// Received sequence numbers, on a thread that drains `socket` until
/// `stop` and then until the socket is quiet.
fn receiver(socket: UdpSocket, stop: &AtomicBool) -> BTreeSet<u64> {
    let big: libc::c_int = 8 << 20;
    setsockopt(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &big).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut buf = [0u8; 64];
    loop {
        match socket.recv(&mut buf) {
            Ok(8) => {
                seen.insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
            }
            Ok(_) => {}
            Err(_) if stop.load(Ordering::SeqCst) => return seen,
            Err(_) => {}
        }
    }
}

/// Sends `total` datagrams numbered 0.. to `to` at about 10,000 per
/// second, publishing the last number sent in `sent`.
fn sender(socket: UdpSocket, to: SocketAddr, total: u64, sent: &AtomicU64) {
    let start = Instant::now();
    for seq in 0..total {
        // Stored before the send: a datagram whose number is above what a
        // reader saw was sent after that read (after an acknowledgement,
        // say), never during it.
        sent.store(seq, Ordering::SeqCst);
        socket.send_to(&seq.to_be_bytes(), to).unwrap();
        // Pace by the clock: seq n leaves at n × 100 µs.
        let due = Duration::from_micros(100 * seq);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

#[test]
fn a_moving_eni_takes_its_traffic_along() {
    require_root();
    let t = TwoInstances::new();
    let agent = Agent::on(&t, &[]);
    let (eip, floating) = (Ipv4Addr::new(203, 0, 113, 50), Ipv4Addr::new(10, 200, 1, 5));
    let [one, two] = &t.instances;
    let api = agent.client();
    let mut events = Vec::new();
    for (n, inst) in t.instances.iter().enumerate() {
        events.push(Event::CreateEni {
            eni: format!("eni-p{n}"),
            kind: EniKind::Primary,
            primary_ip: inst.addr,
            instance: Some(format!("i-{n}")),
            location: Location::default(),
        });
    }
    events.extend([
        Event::CreateEni {
            eni: "eni-float".into(),
            kind: EniKind::Secondary,
            primary_ip: floating,
            instance: None,
            location: Location::default(),
        },
        Event::AttachEni {
            eni: "eni-float".into(),
            instance: "i-0".into(),
            location: Location {
                via: Some(one.addr),
                dev: None,
            },
        },
        Event::Associate {
            eip,
            eni: "eni-float".into(),
            private_ip: None,
            mode: Mode::Nat,
        },
    ]);
    api.batch(&Batch {
        events,
        if_generation: None,
    })
    .unwrap();
    // Both instances answer for the floating address (an old instance that
    // still believes it owns it): only the gateway decides where packets go.
    let receivers = [one, two].map(|inst| {
        ns_sh(
            &inst.ns,
            &["ip", "addr", "add", &format!("{floating}/32"), "dev", "lo"],
        );
        in_netns(&inst.ns, || UdpSocket::bind(sa(floating, 7000)).unwrap())
    });
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let total = 20_000;
    let (at_one, at_two, acked_at) = std::thread::scope(|s| {
        let [r1, r2] = receivers;
        let h1 = s.spawn(|| receiver(r1, &stop));
        let h2 = s.spawn(|| receiver(r2, &stop));
        let tx = s.spawn(|| sender(client, SocketAddr::V4(sa(eip, 7000)), total, &sent));
        std::thread::sleep(Duration::from_millis(700));
        api.event(&Event::MoveEni {
            eni: "eni-float".into(),
            instance: "i-1".into(),
            location: Location {
                via: Some(two.addr),
                dev: None,
            },
        })
        .expect("move");
        let acked_at = sent.load(Ordering::SeqCst);
        tx.join().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        (h1.join().unwrap(), h2.join().unwrap(), acked_at)
    });
    assert!(
        acked_at > 1000 && acked_at < total - 1000,
        "the move happened mid-stream ({acked_at})"
    );
    // Nothing sent after the acknowledgement reached the old instance.
    let late: Vec<_> = at_one.range(acked_at + 1..).collect();
    assert!(
        late.is_empty(),
        "{} datagrams reached the old instance after the move: {:?}",
        late.len(),
        &late[..late.len().min(10)]
    );
    // Everything sent after it reached the new one; and nothing was lost.
    assert!((acked_at + 1..total).all(|s| at_two.contains(&s)));
    let all: BTreeSet<u64> = at_one.union(&at_two).copied().collect();
    assert_eq!(all.len() as u64, total, "every datagram arrived somewhere");
    assert!(at_one.len() > 1000 && at_two.len() > 1000);
    // The route says so too.
    let routes = ns_output(&t.gw_public.ns, &["ip", "route", "show", "proto", "234"]);
    assert!(
        routes.contains(&format!("{floating} via {}", two.addr)),
        "{routes}"
    );

    // Detached, the ENI lives nowhere: its route goes, its EIP's packets
    // are dropped with their reason.
    api.event(&Event::DetachEni {
        eni: "eni-float".into(),
    })
    .unwrap();
    let routes = ns_output(&t.gw_public.ns, &["ip", "route", "show", "proto", "234"]);
    assert!(routes.is_empty(), "{routes}");
    let before = agent.stats();
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    client.send_to(b"anyone?", sa(eip, 7000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        dropped(&before, &agent.stats(), "inbound", "drop_eni_detached"),
        1
    );
}

/// Restarts the agent while the internet streams datagrams to an EIP;
/// `restart` stops the running agent, and the receiver counts every
/// sequence number.
fn stream_through_restart(restart: impl FnOnce(Agent) -> Agent) {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let agent = Agent::on_in(&home, &t, &[]);
    agent.nat(&t.eip.to_string(), &t.instance.addr.to_string());
    let gen_before = agent.client().generation().unwrap();
    let server = in_netns(&t.instance.ns, || {
        UdpSocket::bind(sa(Ipv4Addr::UNSPECIFIED, 7000)).unwrap()
    });
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let total = 30_000;
    let (seen, agent) = std::thread::scope(|s| {
        let rx = s.spawn(|| receiver(server, &stop));
        let tx = s.spawn(|| sender(client, SocketAddr::V4(sa(t.eip, 7000)), total, &sent));
        std::thread::sleep(Duration::from_millis(500));
        let restarted_at = sent.load(Ordering::SeqCst);
        let agent = restart(agent);
        let up_at = sent.load(Ordering::SeqCst);
        assert!(
            up_at > restarted_at && up_at < total,
            "the restart happened mid-stream ({restarted_at}..{up_at} of {total})"
        );
        tx.join().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        (rx.join().unwrap(), agent)
    });
    let missing: Vec<u64> = (0..total).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {total} datagrams lost across the restart, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // The new agent took over the same tables, counters and generation.
    let log = agent.log_text();
    assert!(log.contains("took over the program"), "{log}");
    assert!(log.contains("0 entries written, 0 removed"), "{log}");
    let g = agent.client().generation().unwrap();
    assert_eq!(g, gen_before);
    let counted = agent.stats().eip(t.eip).unwrap().in_packets;
    assert!(
        counted >= total,
        "per-EIP counters kept counting: {counted}"
    );
}

#[test]
fn restarting_the_agent_under_traffic_loses_nothing() {
    stream_through_restart(|agent| {
        let home = agent.home.clone();
        let (ns, public, private) = agent.started_with();
        assert!(agent.stop().success());
        Agent::start_in(home, &ns, &public, &private, &[])
    });
}

#[test]
fn kill_9_under_traffic_loses_nothing_and_the_next_agent_takes_over() {
    stream_through_restart(|agent| {
        let home = agent.home.clone();
        let (ns, public, private) = agent.started_with();
        agent.kill9();
        // No agent at all for a while: the pinned datapath keeps working.
        std::thread::sleep(Duration::from_millis(300));
        Agent::start_in(home, &ns, &public, &private, &[])
    });
}

/// Reads the pinned ADDRESSES map the agent left, from outside it.
fn pinned_addresses(home: &AgentHome) -> std::collections::BTreeMap<Ipv4Addr, AddrEntry> {
    let data = home.pinned(ADDRESSES);
    let map: aya::maps::HashMap<_, [u8; 4], AddrEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    map.iter()
        .map(|r| r.map(|(k, v)| (Ipv4Addr::from(k), v)).unwrap())
        .collect()
}

#[test]
fn kill_9_during_a_burst_of_events_leaves_a_consistent_store() {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let start = || Agent::on_in(&home, &t, &[]);
    let mut agent = start();
    let mut generation = 0;
    for round in 0..4u32 {
        // A writer hammers the agent with events; it dies mid-burst.
        let api = agent.client();
        let writer = std::thread::spawn(move || {
            for k in 0..5_000u32 {
                let n = round * 5_000 + k;
                let ip = Ipv4Addr::from(0x0a64_0000 + n);
                let ev = if k % 2 == 0 {
                    Event::CreateEni {
                        eni: format!("eni-{n}"),
                        kind: EniKind::Primary,
                        primary_ip: ip,
                        instance: Some(format!("i-{n}")),
                        location: Location::default(),
                    }
                } else {
                    Event::Associate {
                        eip: Ipv4Addr::from(0xcb00_0000 + n),
                        eni: format!("eni-{}", n - 1),
                        private_ip: None,
                        mode: Mode::Nat,
                    }
                };
                if api.event(&ev).is_err() {
                    return; // the agent is gone
                }
            }
        });
        std::thread::sleep(Duration::from_millis(150 + 70 * round as u64));
        agent.kill9();
        writer.join().unwrap();
        agent = start();
        let view = agent.client().state().unwrap();
        assert!(
            view.generation.generation > generation,
            "round {round}: events were accepted before the kill"
        );
        generation = view.generation.generation;
        assert_eq!(view.generation.applied_generation, generation);
        // The store opened, and the datapath holds exactly what it says.
        let state = State::from_rows(
            Limits::default(),
            view.enis.into_iter().map(|e| (e.id, e.eni)),
            view.associations,
        )
        .expect("a consistent store");
        assert_eq!(pinned_addresses(&home), tables::all_entries(&state));
    }
}

#[test]
fn teardown_removes_what_the_agent_left_running() {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let agent = Agent::on_in(&home, &t, &[]);
    // A located ENI, so there is a route to remove too.
    agent.cli_ok(&[
        "eni",
        "create",
        "--eni",
        "eni-1",
        "--kind",
        "primary",
        "--primary-ip",
        &t.instance.addr.to_string(),
        "--instance",
        "i-1",
        "--dev",
        &t.gw_private.ifname,
    ]);
    agent.cli_ok(&["associate", "--eip", &t.eip.to_string(), "--eni", "eni-1"]);
    assert!(agent.stop().success());
    let attached =
        |ifname: &str| ns_output(&t.gw_public.ns, &["ip", "link", "show", ifname]).contains("xdp");
    assert!(attached(&t.gw_public.ifname) && attached(&t.gw_private.ifname));
    assert!(!ns_output(&t.gw_public.ns, &["ip", "route", "show", "proto", "234"]).is_empty());

    // An agent with a new, empty store does not wipe the live datapath.
    let moved = home.dir.join("state.moved");
    std::fs::rename(&home.state, &moved).unwrap();
    let refused = Command::new("ip")
        .args(["netns", "exec", &t.gw_public.ns])
        .arg(integration_tests::agent::binary())
        .args(["--socket", "/nonexistent/eip-nat.sock", "agent"])
        .args(["--public-if", &t.gw_public.ifname])
        .args(["--private-if", &t.gw_private.ifname])
        .arg("--state-dir")
        .arg(&home.state)
        .arg("--bpffs-dir")
        .arg(&home.bpffs)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("refusing to clear them"), "{err}");
    assert_eq!(
        pinned_addresses(&home).len(),
        2,
        "the datapath kept its entries"
    );
    std::fs::remove_dir_all(&home.state).unwrap();
    std::fs::rename(&moved, &home.state).unwrap();

    let out = home.teardown(&t.gw_public.ns);
    assert!(out.status.success(), "{out:?}");
    // Unpinning drops the last reference to each link, and the kernel
    // releases a link from a work queue (bpf_link_put defers to
    // bpf_link_put_deferred), so the detach follows shortly after.
    let deadline = Instant::now() + Duration::from_secs(2);
    while (attached(&t.gw_public.ifname) || attached(&t.gw_private.ifname))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!attached(&t.gw_public.ifname) && !attached(&t.gw_private.ifname));
    assert!(ns_output(&t.gw_public.ns, &["ip", "route", "show", "proto", "234"]).is_empty());
    assert!(!home.bpffs.exists());
    // The desired state stays: the next agent puts it all back.
    let agent = Agent::on_in(&home, &t, &["--detach-on-exit"]);
    assert!(
        agent.log_text().contains("2 entries written"),
        "{}",
        agent.log_text()
    );
    let s = agent.client().state().unwrap();
    assert_eq!(s.associations.len(), 1);
}

/// One HTTP/1.1 request over TCP from inside `ns`; returns status and body.
fn http_tcp(ns: &str, addr: SocketAddr, request: &str) -> (u16, String) {
    let mut conn = in_netns(ns, || TcpStream::connect_timeout(&addr, TIMEOUT).unwrap());
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn the_api_serves_its_description_refuses_whole_batches_and_guards_tcp() {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let token = "s3cret-token-for-the-test-run";
    let token_file = home.dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let agent = Agent::on_in(
        &home,
        &t,
        &[
            "--detach-on-exit",
            "--tcp-listen",
            "127.0.0.1:7878",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only root may use the socket");

    // Every path the description lists is served: GETs answer (JSON, but
    // for the metrics' text), POSTs and PUTs without a body are malformed
    // (not missing).
    let api = agent.client();
    let doc = api.get("/openapi.json").unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 8);
    for (path, ops) in paths {
        let streams = ops["get"]["responses"]["200"]["content"]
            .get("application/x-ndjson")
            .is_some();
        if ops.get("get").is_some() && !streams {
            if path == "/metrics" {
                api.metrics().unwrap_or_else(|e| panic!("GET {path}: {e}"));
            } else {
                api.get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
            }
        }
        for method in ["post", "put"] {
            if ops.get(method).is_some() {
                let m = hyper::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let (status, _) = api
                    .request(m, path, None)
                    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
                assert_eq!(status, 400, "{method} {path} with no body");
            }
        }
    }

    // A batch is all or nothing: its second event is refused, so its first
    // (valid on its own) is not applied either.
    let g0 = api.generation().unwrap();
    let primary = Event::CreateEni {
        eni: "eni-1".into(),
        kind: EniKind::Primary,
        primary_ip: t.instance.addr,
        instance: Some("i-1".into()),
        location: Location::default(),
    };
    let bad = Batch {
        events: vec![
            primary.clone(),
            Event::Associate {
                eip: t.eip,
                eni: "eni-1".into(),
                private_ip: None,
                mode: Mode::CutThrough,
            },
        ],
        if_generation: None,
    };
    let e = api.batch(&bad).unwrap_err();
    let err = e.api().unwrap();
    assert_eq!(
        (err.kind, err.rule.as_deref(), err.index),
        (ErrorKind::Refused, Some("primary_eni_nat_only"), Some(1))
    );
    assert_eq!(api.generation().unwrap(), g0);
    assert!(api.state().unwrap().enis.is_empty());

    // A good batch is one generation; a stale if_generation is refused.
    let good = Batch {
        events: vec![
            primary,
            Event::Associate {
                eip: t.eip,
                eni: "eni-1".into(),
                private_ip: None,
                mode: Mode::Nat,
            },
        ],
        if_generation: Some(g0.generation),
    };
    let g1 = api.batch(&good).unwrap();
    assert_eq!(g1.generation, g0.generation + 1);
    assert_eq!(g1.applied_generation, g1.generation);
    let stale = api.batch(&good).unwrap_err();
    assert_eq!(stale.api().unwrap().kind, ErrorKind::Stale);
    assert_eq!(api.generation().unwrap(), g1);
    // A location the gateway cannot route to is refused before anything
    // is recorded; one on a connected network is taken.
    let located = |eni: &str, ip: [u8; 4], via: Option<[u8; 4]>, dev: Option<&str>| {
        api.event(&Event::CreateEni {
            eni: eni.into(),
            kind: EniKind::Primary,
            primary_ip: Ipv4Addr::from(ip),
            instance: Some(format!("i-{eni}")),
            location: Location {
                via: via.map(Ipv4Addr::from),
                dev: dev.map(Into::into),
            },
        })
    };
    ns_sh(
        &t.gw_public.ns,
        &["ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.2"],
    );
    for (via, dev, says) in [
        (Some([192, 0, 2, 1]), None, "not on a network"),
        (
            Some([172, 16, 0, 1]),
            None,
            "no route to next hop 172.16.0.1",
        ),
        (Some([198, 51, 100, 1]), None, "not a unicast address"),
        (None, Some("nope0"), "interface nope0 does not exist"),
        (
            Some([10, 200, 0, 50]),
            Some(t.gw_public.ifname.as_str()),
            "next hop 10.200.0.50",
        ),
    ] {
        let e = located("eni-bad", [10, 200, 0, 77], via, dev).unwrap_err();
        let err = e.api().unwrap();
        assert_eq!(err.rule.as_deref(), Some("unusable_location"), "{err:?}");
        assert!(err.message.contains(says), "{err:?}");
    }
    assert_eq!(api.generation().unwrap(), g1, "refusals recorded nothing");
    // In a batch, the refusal says which event.
    let unroutable = |eni: &str, ip: [u8; 4], via: [u8; 4]| Event::CreateEni {
        eni: eni.into(),
        kind: EniKind::Primary,
        primary_ip: Ipv4Addr::from(ip),
        instance: Some(format!("i-{eni}")),
        location: Location {
            via: Some(Ipv4Addr::from(via)),
            dev: None,
        },
    };
    let e = api
        .batch(&Batch {
            events: vec![
                unroutable("eni-b1", [10, 200, 0, 78], [10, 200, 0, 51]),
                unroutable("eni-b2", [10, 200, 0, 79], [172, 16, 0, 1]),
            ],
            if_generation: None,
        })
        .unwrap_err();
    let err = e.api().unwrap();
    assert_eq!(
        (err.rule.as_deref(), err.index),
        (Some("unusable_location"), Some(1)),
        "{err:?}"
    );
    assert_eq!(api.generation().unwrap(), g1);
    let g2 = located("eni-ok", [10, 200, 0, 77], Some([10, 200, 0, 50]), None).unwrap();
    assert_eq!(g2.generation, g1.generation + 1);
    let g1 = g2;

    // The CLI shows the same.
    let out = agent.cli_ok(&["generation", "--json"]);
    assert!(
        out.contains(&format!("\"generation\": {}", g1.generation)),
        "{out}"
    );

    // TCP: nothing without the token, everything with it.
    let addr: SocketAddr = "127.0.0.1:7878".parse().unwrap();
    let get = |auth: &str| {
        format!("GET /v1/generation HTTP/1.1\r\nHost: gw\r\n{auth}Connection: close\r\n\r\n")
    };
    let (status, body) = http_tcp(&t.gw_public.ns, addr, &get(""));
    assert_eq!(status, 401, "{body}");
    let (status, _) = http_tcp(
        &t.gw_public.ns,
        addr,
        &get("Authorization: Bearer wrong\r\n"),
    );
    assert_eq!(status, 401);
    let (status, body) = http_tcp(
        &t.gw_public.ns,
        addr,
        &get(&format!("Authorization: Bearer {token}\r\n")),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("\"generation\":{}", g1.generation)),
        "{body}"
    );
}

#[test]
fn an_interface_dropped_from_the_configuration_is_detached() {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let (public, private) = (&t.gw_public.ifname, &t.gw_private.ifname);
    let agent = Agent::start_in(home.clone(), &t.gw_public.ns, public, private, &[]);
    assert!(agent.stop().success());
    let xdp_on =
        |ifname: &str| ns_output(&t.gw_public.ns, &["ip", "link", "show", ifname]).contains("xdp");
    assert!(xdp_on(public), "still attached with no agent");
    // The public side moves to another interface.
    let other = format!("{}x", &public[..public.len().min(12)]);
    ns_sh(
        &t.gw_public.ns,
        &[
            "ip",
            "link",
            "add",
            &other,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{other}y"),
        ],
    );
    ns_sh(&t.gw_public.ns, &["ip", "link", "set", &other, "up"]);
    let agent = Agent::start_in(
        home.clone(),
        &t.gw_public.ns,
        &other,
        private,
        &["--detach-on-exit"],
    );
    assert!(!xdp_on(public), "the old public interface is detached");
    assert!(xdp_on(&other) && xdp_on(private));
    assert!(agent.log_text().contains("no longer configured"));
}

/// Every event has its CLI subcommand, and each does what it says: the
/// state read back through the API after each step.
#[test]
fn the_cli_has_a_subcommand_per_event() {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &[]);
    let gv = t.gw_private.ifname.as_str();
    let ok = |args: &[&str]| {
        let out = agent.cli_ok(&[&["--json"], args].concat());
        let g: eip_nat::api::Generation = serde_json::from_str(&out).expect("a generation");
        assert_eq!(g.generation, g.applied_generation, "{args:?}");
    };
    ok(&[
        &create_primary("eni-p", "10.200.0.10", "i-1")[..],
        &["--dev", gv],
    ]
    .concat());
    ok(&create_primary("eni-q", "10.200.0.20", "i-2"));
    ok(&create_eni("eni-s", "secondary", "10.200.0.30"));
    ok(&attach_eni("eni-s", "i-1", "--via", "10.200.0.10"));
    ok(&["ip", "assign", "--eni", "eni-s", "--ip", "10.200.0.31"]);
    ok(&[
        "associate",
        "--eip",
        "203.0.113.31",
        "--eni",
        "eni-s",
        "--private-ip",
        "10.200.0.31",
    ]);
    ok(&[
        "eni",
        "move",
        "--eni",
        "eni-s",
        "--instance",
        "i-2",
        "--via",
        "10.200.0.20",
    ]);
    ok(&["eni", "locate", "--eni", "eni-s", "--via", "10.200.0.21"]);
    let s = agent.client().state().unwrap();
    let eni = s.enis.iter().find(|e| e.id == "eni-s").unwrap();
    let at = eni.eni.attachment.as_ref().unwrap();
    assert_eq!(at.instance, "i-2");
    assert_eq!(at.location.via, Some(Ipv4Addr::new(10, 200, 0, 21)));
    assert!(eni
        .eni
        .secondary_ips
        .contains(&Ipv4Addr::new(10, 200, 0, 31)));
    assert_eq!(
        s.associations[0].private_ip,
        Some(Ipv4Addr::new(10, 200, 0, 31))
    );
    let routes = ns_output(&t.gw_public.ns, &["ip", "route", "show", "proto", "234"]);
    assert!(routes.contains("10.200.0.31 via 10.200.0.21"), "{routes}");

    ok(&["disassociate", "--eip", "203.0.113.31"]);
    ok(&["ip", "revoke", "--eni", "eni-s", "--ip", "10.200.0.31"]);
    ok(&["eni", "detach", "--eni", "eni-s"]);
    ok(&["eni", "delete", "--eni", "eni-s"]);
    ok(&["instance", "terminate", "--instance", "i-2"]);
    let s = agent.client().state().unwrap();
    let ids: Vec<_> = s.enis.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["eni-p"]);
    assert!(s.associations.is_empty());

    // A batch from a file, and a refusal as JSON with its rule.
    let file = agent.home.dir.join("batch.json");
    std::fs::write(
        &file,
        r#"{"events": [
            {"event": "create_eni", "eni": "eni-m", "kind": "secondary", "primary_ip": "10.200.0.40"},
            {"event": "attach_eni", "eni": "eni-m", "instance": "i-1"},
            {"event": "associate", "eip": "203.0.113.40", "eni": "eni-m", "mode": "multi-eip"},
            {"event": "associate", "eip": "203.0.113.41", "eni": "eni-m", "mode": "multi-eip"}
        ]}"#,
    )
    .unwrap();
    ok(&["batch", file.to_str().unwrap()]);
    assert_eq!(agent.client().state().unwrap().associations.len(), 2);
    let out = agent.cli(&["--json", "eni", "delete", "--eni", "eni-m"]);
    assert!(!out.status.success());
    let e: eip_nat::api::ErrorBody = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e.error.rule.as_deref(), Some("eni_attached"));
    let list = agent.cli_ok(&["list"]);
    assert!(
        list.contains("eni-m") && list.contains("multi-eip"),
        "{list}"
    );
}
