//! The programmed next hops, with real traffic: used without a FIB lookup,
//! and following the kernel when a neighbour, a route or a link changes,
//! each within 100 ms (docs/datapath.md, "Next hops").

use std::{net::Ipv4Addr, time::Duration};

use eip_nat::api::Stats;
use integration_tests::{
    agent::Agent,
    netns::{ns_sh, Topology, TwoInstances},
    require_root,
    sockets::{sa, udp_socket},
};

/// How long a change may take to reach the datapath.
const FOLLOW_WITHIN: Duration = Duration::from_millis(100);

fn delta(before: &Stats, after: &Stats, dir: &str, verdict: &str) -> u64 {
    after.verdict(dir, verdict).unwrap().packets - before.verdict(dir, verdict).unwrap().packets
}

/// Fast-path verdicts of a translated packet, for the messages.
const PATHS: [&str; 6] = [
    "translated_redirect",
    "translated_redirect_fib",
    "translated_pass_no_neighbour",
    "translated_pass_not_forwarded",
    "translated_pass_frag_needed",
    "translated_pass_no_tx_port",
];

fn paths(before: &Stats, after: &Stats, dir: &str) -> Vec<(&'static str, u64)> {
    PATHS
        .iter()
        .map(|v| (*v, delta(before, after, dir, v)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Sends one datagram from the internet to `eip`; true if `receiver`
/// (bound in an instance) got it.
fn delivered(
    internet: &integration_tests::netns::End,
    eip: Ipv4Addr,
    receiver: &std::net::UdpSocket,
    payload: &[u8],
) -> bool {
    let client = udp_socket(&internet.ns, sa(internet.addr, 0));
    client.send_to(payload, sa(eip, 7000)).unwrap();
    let mut buf = [0u8; 512];
    matches!(receiver.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == payload)
}

fn short_timeout(s: &std::net::UdpSocket) {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
}

/// One datagram, as [`delivered`], and the inbound paths it took.
fn delivered_via(
    agent: &Agent,
    internet: &integration_tests::netns::End,
    eip: Ipv4Addr,
    receiver: &std::net::UdpSocket,
    payload: &[u8],
) -> (bool, Vec<(&'static str, u64)>) {
    let before = agent.stats();
    let ok = delivered(internet, eip, receiver, payload);
    (ok, paths(&before, &agent.stats(), "inbound"))
}

/// The standard topology with an agent, the EIP associated, and the
/// instance's socket, checked with one datagram. Fields drop in order: the
/// agent before the namespaces.
fn serving() -> (Agent, std::net::UdpSocket, Topology) {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &[]);
    agent.nat(&t.eip.to_string(), &t.instance.addr.to_string());
    let server = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    short_timeout(&server);
    assert!(delivered(&t.internet, t.eip, &server, b"first"));
    (agent, server, t)
}

const PROGRAMMED: (bool, &[(&str, u64)]) = (true, &[("translated_redirect", 1)]);

/// Both directions forwarded through the programmed next hops: the
/// instance's (inbound) and the internet host's, a directly connected
/// neighbour (outbound); not one FIB lookup.
#[test]
fn programmed_next_hops_forward_without_a_fib_lookup() {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &[]);
    agent.nat(&t.eip.to_string(), &t.instance.addr.to_string());
    let server = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let before = agent.stats();
    let n = 50;
    let mut buf = [0u8; 256];
    for i in 0..n {
        let payload = format!("datagram {i}");
        client.send_to(payload.as_bytes(), sa(t.eip, 7000)).unwrap();
        let (len, from) = server.recv_from(&mut buf).expect("inbound");
        assert_eq!(&buf[..len], payload.as_bytes());
        server.send_to(&buf[..len], from).unwrap();
        client.recv_from(&mut buf).expect("outbound");
    }
    let after = agent.stats();
    for dir in ["inbound", "outbound"] {
        assert_eq!(
            paths(&before, &after, dir),
            vec![("translated_redirect", n)],
            "{dir}: every packet through the programmed next hop"
        );
    }
}

/// The instance's MAC changes (a replaced NIC, a failover): once the
/// gateway's neighbour entry has the new MAC, the datapath sends there.
#[test]
fn a_neighbours_new_mac_is_followed() {
    let (agent, server, t) = serving();

    let new_mac = "02:ee:00:00:00:44";
    ns_sh(
        &t.instance.ns,
        &["ip", "link", "set", &t.instance.ifname, "address", new_mac],
    );
    ns_sh(
        &t.gw_private.ns,
        &[
            "ip",
            "neigh",
            "replace",
            &t.instance.addr.to_string(),
            "lladdr",
            new_mac,
            "dev",
            &t.gw_private.ifname,
            "nud",
            "permanent",
        ],
    );
    std::thread::sleep(FOLLOW_WITHIN);
    // To the old MAC the instance's kernel would drop it (PACKET_OTHERHOST).
    let (ok, paths) = delivered_via(&agent, &t.internet, t.eip, &server, b"after");
    assert_eq!((ok, &paths[..]), PROGRAMMED, "sent to the new MAC");
}

/// The operator moves the route to a private IP from one instance to the
/// other: the next packet goes to the new next hop.
#[test]
fn a_route_change_is_followed() {
    require_root();
    let t = TwoInstances::new();
    let agent = Agent::on(&t, &[]);
    let private = Ipv4Addr::new(10, 201, 0, 5);
    let eip = Ipv4Addr::new(203, 0, 113, 50);
    // Both instances own the address; the gateway's route picks one.
    for i in &t.instances {
        ns_sh(&i.ns, &["ip", "addr", "add", "10.201.0.5/32", "dev", "lo"]);
    }
    let route = |via: Ipv4Addr| {
        ns_sh(
            &t.gw_private.ns,
            &[
                "ip",
                "route",
                "replace",
                "10.201.0.5/32",
                "via",
                &via.to_string(),
            ],
        )
    };
    route(t.instances[0].addr);
    agent.nat(&eip.to_string(), &private.to_string());
    let servers = t
        .instances
        .each_ref()
        .map(|i| udp_socket(&i.ns, sa(Ipv4Addr::UNSPECIFIED, 7000)));
    servers.iter().for_each(short_timeout);
    assert!(delivered(&t.internet, eip, &servers[0], b"to one"));

    route(t.instances[1].addr);
    std::thread::sleep(FOLLOW_WITHIN);
    let (ok, paths) = delivered_via(&agent, &t.internet, eip, &servers[1], b"to the other");
    assert_eq!((ok, &paths[..]), PROGRAMMED, "follows the new route");
    let mut buf = [0u8; 64];
    assert!(
        servers[0].recv_from(&mut buf).is_err(),
        "nothing more to the old next hop"
    );
}

/// The private link goes down: the programmed next hop is withdrawn and
/// the kernel's answer takes over (no route: passed to it); when the link
/// comes back, so does the fast path.
#[test]
fn a_link_going_down_is_followed() {
    let (agent, server, t) = serving();

    let link = |state: &str| {
        ns_sh(
            &t.gw_private.ns,
            &["ip", "link", "set", &t.gw_private.ifname, state],
        )
    };
    link("down");
    std::thread::sleep(FOLLOW_WITHIN);
    let (ok, paths) = delivered_via(&agent, &t.internet, t.eip, &server, b"down");
    assert_eq!(
        (ok, &paths[..]),
        (false, &[("translated_pass_not_forwarded", 1)][..]),
        "not redirected into a link that is down"
    );

    link("up");
    // Admin down flushed the neighbour; the kernel resolves it again.
    let mut back = false;
    for _ in 0..20 {
        if delivered(&t.internet, t.eip, &server, b"back") {
            back = true;
            break;
        }
    }
    assert!(back, "delivered again once the link is up");
    // The kernel resolved the neighbour for that delivery; the agent hears
    // of it by notification, and has FOLLOW_WITHIN to program it again
    // (a datagram sent at once may still find the next hop unresolved).
    std::thread::sleep(FOLLOW_WITHIN);
    let (ok, paths) = delivered_via(&agent, &t.internet, t.eip, &server, b"fast again");
    assert_eq!((ok, &paths[..]), PROGRAMMED);
}
