//! The EIP is the only way in: from the public side, a real agent in
//! network namespaces passes only packets to an EIP, to the gateway's own
//! addresses and to the prefixes the operator lists, and drops the rest,
//! in each association mode, with the fast path on and off.
//!
//! The internet is given a route to the whole private network through the
//! gateway, as a neighbour on the uplink could set up, and the instance
//! owns every address the test knocks on, so anything let through would
//! be received.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use eip_nat::{
    api::{Batch, Stats},
    model::{EniKind, Event, Location, Mode},
};
use integration_tests::{
    agent::Agent,
    netns::{ns_sh, ping, Topology},
    require_root,
    sockets::{sa, udp_socket},
};

/// The placeholder primary ENI of the instance's secondary ENI: an ENI's
/// private IP that has no EIP.
const NO_EIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 9);
/// In the private network, but of no ENI.
const NO_ENI: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 50);
/// In the prefix the operator routes through (`--routed-prefix`).
const LISTED: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 70);
const LISTED_PREFIX: &str = "10.200.0.64/26";

/// The events that give the instance of `t` its address (10.200.0.10)
/// on an ENI associated with `t.eip` in `mode`: NAT on a primary ENI; the
/// passthrough modes on a secondary ENI beside a placeholder primary.
fn associate(t: &Topology, mode: Mode) -> Vec<Event> {
    let eni = |eni: &str, kind, ip, instance: Option<&str>| Event::CreateEni {
        eni: eni.into(),
        kind,
        primary_ip: ip,
        instance: instance.map(Into::into),
        location: Location::default(),
    };
    let mut events = vec![eni("eni-p", EniKind::Primary, NO_EIP, Some("i-1"))];
    let target = if mode == Mode::Nat {
        events.push(eni("eni-n", EniKind::Primary, t.instance.addr, Some("i-2")));
        "eni-n"
    } else {
        events.push(eni("eni-s", EniKind::Secondary, t.instance.addr, None));
        events.push(Event::AttachEni {
            eni: "eni-s".into(),
            instance: "i-1".into(),
            location: Location {
                via: None,
                dev: Some(t.gw_private.ifname.clone()),
            },
        });
        "eni-s"
    };
    events.push(Event::Associate {
        eip: t.eip,
        eni: target.into(),
        private_ip: None,
        mode,
    });
    events
}

fn drops(before: &Stats, after: &Stats, verdict: &str) -> u64 {
    let n = |s: &Stats| s.verdict("inbound", verdict).map_or(0, |v| v.packets);
    n(after) - n(before)
}

/// True if `socket` gets a datagram within `wait`.
fn receives(socket: &UdpSocket, wait: Duration) -> bool {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    socket.recv_from(&mut buf).is_ok()
}

fn the_public_side_reaches_only_the_eip_and_what_is_listed(mode: Mode, fast_path: bool) {
    require_root();
    let t = Topology::new();
    let mut flags = vec!["--routed-prefix", LISTED_PREFIX];
    if !fast_path {
        flags.push("--no-fast-path");
    }
    let agent = Agent::on(&t, &flags);
    agent
        .client()
        .batch(&Batch {
            events: associate(&t, mode),
            if_generation: None,
        })
        .unwrap();
    let inst = &t.instance;
    // The instance owns every address knocked on, and (passthrough modes)
    // the EIP itself.
    let mut owned = vec![NO_EIP, NO_ENI, LISTED];
    if mode != Mode::Nat {
        owned.push(t.eip);
    }
    for a in &owned {
        ns_sh(
            &inst.ns,
            &["ip", "addr", "add", &format!("{a}/32"), "dev", &inst.ifname],
        );
    }
    ns_sh(
        &t.internet.ns,
        &["ip", "route", "add", "10.200.0.0/24", "via", "198.51.100.1"],
    );
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let listen = |addr: Ipv4Addr| udp_socket(&inst.ns, sa(addr, 7000));

    // The way in: the EIP, whatever the mode does with it.
    let via_eip = listen(if mode == Mode::Nat { inst.addr } else { t.eip });
    client.send_to(b"by the EIP", sa(t.eip, 7000)).unwrap();
    assert!(
        receives(&via_eip, Duration::from_secs(3)),
        "{mode:?}: the EIP leads to the instance"
    );
    drop(via_eip);
    // The operator's prefix is routed through, unchanged.
    let listed = listen(LISTED);
    client.send_to(b"listed", sa(LISTED, 7000)).unwrap();
    assert!(
        receives(&listed, Duration::from_secs(3)),
        "{mode:?}: a listed prefix is routed through"
    );
    // The gateway's own address answers.
    let ping = ping(&t.internet.ns, &t.gw_public.addr.to_string(), 1);
    assert!(
        ping.status.success(),
        "{mode:?}: the gateway answers: {ping:?}"
    );

    // No other way in: the ENI's private IP (with its EIP), an ENI's
    // private IP without one, and an address of no ENI.
    let before = agent.stats();
    let knocked = [inst.addr, NO_EIP, NO_ENI].map(|addr| {
        let s = listen(addr);
        client.send_to(b"knock", sa(addr, 7000)).unwrap();
        (addr, s)
    });
    for (addr, s) in &knocked {
        assert!(
            !receives(s, Duration::from_millis(300)),
            "{mode:?}, fast path {fast_path}: {addr} was reached from the Internet"
        );
    }
    let after = agent.stats();
    // The datapath knows the private IPs that carry an EIP: NAT's is
    // dropped as such, a cut-through ENI's has its own verdict (the EIP
    // took its place); a multi-EIP ENI's (its EIPs travel unchanged) and
    // every address of no association are simply not listed.
    let (to_private, disabled, unlisted) = match mode {
        Mode::Nat => (1, 0, 2),
        Mode::CutThrough => (0, 1, 2),
        Mode::MultiEip => (0, 0, 3),
    };
    let got = [
        "drop_public_to_private_ip",
        "drop_private_disabled",
        "drop_public_unlisted",
    ]
    .map(|v| drops(&before, &after, v));
    assert_eq!(
        got,
        [to_private, disabled, unlisted],
        "{mode:?}, fast path {fast_path}: drops by verdict"
    );
}

#[test]
fn nat_private_ips_are_not_reachable_from_the_internet() {
    for fast_path in [true, false] {
        the_public_side_reaches_only_the_eip_and_what_is_listed(Mode::Nat, fast_path);
    }
}

#[test]
fn cut_through_private_ips_are_not_reachable_from_the_internet() {
    for fast_path in [true, false] {
        the_public_side_reaches_only_the_eip_and_what_is_listed(Mode::CutThrough, fast_path);
    }
}

#[test]
fn multi_eip_private_ips_are_not_reachable_from_the_internet() {
    for fast_path in [true, false] {
        the_public_side_reaches_only_the_eip_and_what_is_listed(Mode::MultiEip, fast_path);
    }
}
