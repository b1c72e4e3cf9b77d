//! What the agent may change, in network namespaces with real agents: an
//! agent that refuses to start leaves the live gateway as it was, and the
//! agent never replaces a host route that is not its own.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use eip_nat::{
    api::Batch,
    model::{EniKind, Event, Location, Mode},
};
use eip_nat_common::{
    maps::{CONFIG, TX_PORTS},
    Config,
};
use integration_tests::{
    agent::{binary, Agent, AgentHome},
    netns::{ifindex, ns_output, ns_sh, Topology},
    require_root,
    sockets::{sa, udp_socket},
};

/// CONFIG as the running program reads it, from the pinned map.
fn pinned_config(home: &AgentHome) -> Config {
    let map: aya::maps::Array<_, Config> =
        aya::maps::Array::try_from(aya::maps::Map::Array(home.pinned(CONFIG))).unwrap();
    map.get(&0, 0).unwrap()
}

/// The interfaces the fast path may redirect to, from the pinned map.
fn pinned_tx_ports(home: &AgentHome) -> BTreeSet<u32> {
    let map =
        aya::maps::DevMapHash::try_from(aya::maps::Map::DevMapHash(home.pinned(TX_PORTS))).unwrap();
    map.keys().map(Result::unwrap).collect()
}

/// `n` datagrams from the internet to the EIP, each echoed by the instance:
/// every one translated by the fast path (redirected), both ways, as the
/// agent's counters say.
fn assert_fast_path_serves(t: &Topology, agent: &Agent, n: u64) {
    let before = agent.stats();
    let server = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let mut buf = [0u8; 64];
    for i in 0..n {
        client.send_to(&i.to_be_bytes(), sa(t.eip, 7000)).unwrap();
        let (len, from) = server
            .recv_from(&mut buf)
            .expect("the instance receives the datagram sent to its EIP");
        assert_eq!(&buf[..len], i.to_be_bytes());
        server.send_to(&buf[..len], from).unwrap();
        let (_, from) = client.recv_from(&mut buf).expect("the reply comes back");
        assert_eq!(from, SocketAddr::V4(sa(t.eip, 7000)), "from the EIP");
    }
    let after = agent.stats();
    for dir in ["inbound", "outbound"] {
        let delta = |verdict| {
            after.verdict(dir, verdict).unwrap().packets
                - before.verdict(dir, verdict).unwrap().packets
        };
        assert_eq!(delta("translated_redirect"), n, "{dir}: {after:?}");
        assert_eq!(delta("translated"), 0, "{dir}: none by the slow path");
    }
}

/// Runs `eip-nat ARGS…` in `ns`, which must refuse to start; returns what
/// it said. One that starts instead is killed after 20 s, failing the test.
fn refused(ns: &str, log: &Path, args: &[&str]) -> String {
    let file = std::fs::File::create(log).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent started instead of refusing: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(log).unwrap();
    assert!(!status.success(), "{said}");
    said
}

fn xdp_on(ns: &str, ifname: &str) -> bool {
    ns_output(ns, &["ip", "link", "show", ifname]).contains("xdp")
}

#[test]
fn a_refused_agent_leaves_the_live_gateway_as_it_was() {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let agent = Agent::on_in(&home, &t, &["--detach-on-exit"]);
    agent.nat(&t.eip.to_string(), &t.instance.addr.to_string());
    let gw = &t.gw_public.ns;
    let config = pinned_config(&home);
    let ports = pinned_tx_ports(&home);
    let (public, private) = (
        ifindex(gw, &t.gw_public.ifname),
        ifindex(gw, &t.gw_private.ifname),
    );
    assert_eq!(
        (config.public_ifindex, config.private_ifindex),
        (public, private)
    );
    assert!(config.fast_path(), "{config:?}");
    assert_eq!(ports, BTreeSet::from([public, private]));
    assert_fast_path_serves(&t, &agent, 20);

    // Another interface pair on the gateway, for an agent configured with it.
    let (other_public, other_private) = (
        format!("{}xa", t.namespaces.prefix),
        format!("{}xb", t.namespaces.prefix),
    );
    ns_sh(
        gw,
        &[
            "ip",
            "link",
            "add",
            &other_public,
            "type",
            "veth",
            "peer",
            "name",
            &other_private,
        ],
    );
    for i in [&other_public, &other_private] {
        ns_sh(gw, &["ip", "link", "set", i, "up"]);
    }
    let path = |name: &str| home.dir.join(name).to_str().unwrap().to_string();
    let bpffs = home.bpffs.to_str().unwrap();
    let live_socket = agent.socket.to_str().unwrap();
    let agent_args = |socket: &str, state: &str, bpffs: &str, public: &str, private: &str| {
        [
            "--socket",
            socket,
            "agent",
            "--state-dir",
            state,
            "--bpffs-dir",
            bpffs,
            "--public-if",
            public,
            "--private-if",
            private,
            "--no-fast-path",
        ]
        .map(String::from)
    };
    let cases = [
        // A new, empty store over the live datapath, on its interfaces
        // but without the fast path; then on other interfaces.
        (
            agent_args(
                &path("b.sock"),
                &path("state-b"),
                bpffs,
                &t.gw_public.ifname,
                &t.gw_private.ifname,
            ),
            "refusing to clear them",
        ),
        (
            agent_args(
                &path("c.sock"),
                &path("state-c"),
                bpffs,
                &other_public,
                &other_private,
            ),
            "refusing to clear them",
        ),
        // The live agent's socket, with a datapath of its own (a bpffs
        // directory of its own) on the other interfaces.
        (
            agent_args(
                live_socket,
                &path("state-d"),
                &path("bpffs/other"),
                &other_public,
                &other_private,
            ),
            "another agent is already serving",
        ),
    ];
    for (n, (args, says)) in cases.iter().enumerate() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let said = refused(gw, &home.dir.join(format!("refused-{n}.log")), &args);
        assert!(said.contains(says), "case {n}: {said}");
        // Nothing live changed: the program's configuration, the ports it
        // redirects to, its attachments; packets still take the fast path.
        assert_eq!(pinned_config(&home), config, "case {n}: {said}");
        assert_eq!(pinned_tx_ports(&home), ports, "case {n}");
        assert!(xdp_on(gw, &t.gw_public.ifname) && xdp_on(gw, &t.gw_private.ifname));
        assert!(
            !xdp_on(gw, &other_public) && !xdp_on(gw, &other_private),
            "case {n}: {said}"
        );
        assert_fast_path_serves(&t, &agent, 20);
    }
    assert!(agent.client().generation().is_ok(), "the live agent serves");
}

/// The gateway's route to `addr/32`, as `ip route` shows it.
fn route_to(ns: &str, addr: Ipv4Addr) -> String {
    ns_output(ns, &["ip", "route", "show", &format!("{addr}/32")])
}

/// `ip route add|replace` (`verb`) of the operator's static route to
/// `addr/32` via the instance, on the gateway; returns how it shows.
fn operator_route(t: &Topology, verb: &str, addr: Ipv4Addr) -> String {
    let gw = &t.gw_public.ns;
    let (dst, via) = (format!("{addr}/32"), t.instance.addr.to_string());
    ns_sh(
        gw,
        &["ip", "route", verb, &dst, "via", &via, "proto", "static"],
    );
    let theirs = route_to(gw, addr);
    assert!(theirs.contains("proto static"), "{theirs}");
    theirs
}

/// A secondary ENI for `floating`, attached to instance `i-0` (the
/// topology's instance, with its primary ENI) at the instance's address.
fn floating_eni(t: &Topology, floating: Ipv4Addr) -> Vec<Event> {
    vec![
        Event::CreateEni {
            eni: "eni-p".into(),
            kind: EniKind::Primary,
            primary_ip: t.instance.addr,
            instance: Some("i-0".into()),
            location: Location::default(),
        },
        Event::CreateEni {
            eni: "eni-f".into(),
            kind: EniKind::Secondary,
            primary_ip: floating,
            instance: None,
            location: Location::default(),
        },
        Event::AttachEni {
            eni: "eni-f".into(),
            instance: "i-0".into(),
            location: Location {
                via: Some(t.instance.addr),
                dev: None,
            },
        },
    ]
}

fn associate(eip: Ipv4Addr) -> Event {
    Event::Associate {
        eip,
        eni: "eni-f".into(),
        private_ip: None,
        mode: Mode::Nat,
    }
}

#[test]
fn an_event_that_needs_an_operators_route_is_refused() {
    require_root();
    let t = Topology::new();
    let gw = &t.gw_public.ns;
    let floating = Ipv4Addr::new(10, 200, 1, 5);
    // The operator's route to the address an association would route.
    let theirs = operator_route(&t, "add", floating);
    let via = t.instance.addr.to_string();

    let agent = Agent::on(&t, &[]);
    let api = agent.client();
    api.batch(&Batch {
        events: floating_eni(&t, floating),
        if_generation: None,
    })
    .unwrap();
    let generation = api.generation().unwrap();
    let e = api.event(&associate(t.eip)).unwrap_err();
    let err = e.api().unwrap();
    assert_eq!(err.rule.as_deref(), Some("route_conflict"), "{err:?}");
    for says in ["10.200.1.5/32", "proto static", &format!("via {via}")] {
        assert!(err.message.contains(says), "{says}: {err:?}");
    }
    assert!(matches!(
        e,
        eip_nat::client::ClientError::Api { status: 409, .. }
    ));
    // In a batch, the event that needs it is named, and nothing is taken.
    let other_eip = Ipv4Addr::new(203, 0, 113, 11);
    let nat_primary = Event::Associate {
        eip: other_eip,
        eni: "eni-p".into(),
        private_ip: None,
        mode: Mode::Nat,
    };
    let e = api
        .batch(&Batch {
            events: vec![nat_primary, associate(t.eip)],
            if_generation: None,
        })
        .unwrap_err();
    let err = e.api().unwrap();
    assert_eq!(
        (err.rule.as_deref(), err.index),
        (Some("route_conflict"), Some(1)),
        "{err:?}"
    );
    // Nothing changed: no generation, no association, the operator's route.
    assert_eq!(api.generation().unwrap(), generation);
    assert!(api.state().unwrap().associations.is_empty());
    assert_eq!(route_to(gw, floating), theirs);
    let ours = ns_output(gw, &["ip", "route", "show", "proto", "234"]);
    assert!(ours.is_empty(), "{ours}");
}

#[test]
fn a_restarted_agent_leaves_an_operators_route_in_place() {
    require_root();
    let t = Topology::new();
    let gw = &t.gw_public.ns;
    let floating = Ipv4Addr::new(10, 200, 1, 5);
    let home = AgentHome::new(gw);
    let agent = Agent::on_in(&home, &t, &[]);
    let mut events = floating_eni(&t, floating);
    events.push(associate(t.eip));
    agent
        .client()
        .batch(&Batch {
            events,
            if_generation: None,
        })
        .unwrap();
    assert!(route_to(gw, floating).contains("proto 234"));
    assert!(agent.stop().success());

    // While no agent runs, the operator takes the route over.
    let theirs = operator_route(&t, "replace", floating);

    // The next agent reports the conflict and leaves the route alone.
    let agent = Agent::on_in(&home, &t, &["--detach-on-exit"]);
    let log = agent.log_text();
    assert!(
        log.contains("not the agent's (proto static") && log.contains("routes left"),
        "{log}"
    );
    assert_eq!(route_to(gw, floating), theirs);
    // Neither disassociating nor detaching removes it, and associating
    // again is refused.
    let api = agent.client();
    api.event(&Event::Disassociate { eip: t.eip }).unwrap();
    assert_eq!(route_to(gw, floating), theirs);
    let e = api.event(&associate(t.eip)).unwrap_err();
    assert_eq!(e.api().unwrap().rule.as_deref(), Some("route_conflict"));
    api.event(&Event::DetachEni {
        eni: "eni-f".into(),
    })
    .unwrap();
    assert_eq!(route_to(gw, floating), theirs);
    // Nor does the agent's own teardown.
    assert!(agent.stop().success());
    assert_eq!(route_to(gw, floating), theirs);
}
