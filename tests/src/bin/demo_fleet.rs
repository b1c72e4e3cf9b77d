//! `cargo xtask demo --fleet`: two gateways sharing one etcd (Debian's
//! `etcd-server`, in a namespace of its own). An EIP associated through
//! gateway A is translated by gateway B; with etcd down both keep
//! translating, writes are refused with 503 and reads answered; when etcd
//! is back a write through B reaches A. Everything it creates is removed at
//! the end, or on failure.

use std::{net::SocketAddr, time::Duration};

use integration_tests::{
    agent::Agent,
    etcd::Fleet,
    netns::Topology,
    sockets::{sa, udp_socket},
};

fn step(s: &str) {
    println!("\n── {s}");
}

/// A datagram from the topology's internet to its EIP: what its instance
/// received, if anything.
fn datagram(t: &Topology, port: u16) -> Option<SocketAddr> {
    let inst = udp_socket(&t.instance.ns, sa(t.instance.addr, port));
    inst.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let inet = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    inet.send_to(b"hello", sa(t.eip, port)).unwrap();
    let mut buf = [0u8; 16];
    inst.recv_from(&mut buf).ok().map(|(_, from)| from)
}

fn show_translation(name: &str, t: &Topology, port: u16) {
    match datagram(t, port) {
        Some(from) => println!(
            "   through gateway {name}: the instance got a datagram sent to {}:{port}, from {from}",
            t.eip
        ),
        None => println!("   through gateway {name}: nothing arrived"),
    }
}

/// The CLI's answer, success or not, indented.
fn cli(agent: &Agent, name: &str, args: &[&str]) {
    println!("   {name}$ eip-nat {}", args.join(" "));
    let out = agent.cli(args);
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("     {line}");
    }
}

/// A write through B.
const ENI_B: [&str; 8] = [
    "eni",
    "create",
    "--eni",
    "eni-b",
    "--kind",
    "secondary",
    "--primary-ip",
    "10.201.0.1",
];

fn main() {
    let mut fleet = Fleet::new(2, 1);
    println!("eip-nat fleet demo: two gateways, one etcd");
    for (name, t, addr) in [
        ("A", &fleet.topologies[0], fleet.addrs[0]),
        ("B", &fleet.topologies[1], fleet.addrs[1]),
    ] {
        println!(
            "  gateway {name}: internet {} ── [{}] ── instance {}; etcd at {addr}:2379",
            t.internet.addr, t.gw_public.ns, t.instance.addr
        );
    }
    step("starting both agents with --store etcd");
    let a = fleet.start(0);
    let b = fleet.start(1);
    println!("   both serving; prefix {}", fleet.prefix);

    step("through A's API: an instance's ENI and an EIP on it");
    let (eip, private) = (
        fleet.topologies[0].eip.to_string(),
        fleet.topologies[0].instance.addr.to_string(),
    );
    let create = format!(
        "eni create --eni eni-demo --kind primary --primary-ip {private} --instance i-demo"
    );
    cli(&a, "A", &create.split(' ').collect::<Vec<_>>());
    cli(&a, "A", &["associate", "--eip", &eip, "--eni", "eni-demo"]);
    std::thread::sleep(Duration::from_millis(200));

    step("gateway B has it: the same state, the same generation (etcd's revision)");
    cli(&b, "B", &["list"]);
    cli(&b, "B", &["generation"]);
    println!(
        "   etcd keys: {}",
        fleet
            .etcd
            .ctl(&["get", &fleet.prefix, "--prefix", "--keys-only"])
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (i, name) in ["A", "B"].iter().enumerate() {
        show_translation(name, &fleet.topologies[i], 7000);
    }

    step("etcd goes down");
    fleet.etcd.kill(0);
    for (i, name) in ["A", "B"].iter().enumerate() {
        show_translation(name, &fleet.topologies[i], 7001);
    }
    cli(&b, "B", &ENI_B);
    cli(&b, "B", &["list"]);

    step("etcd is back: a write through B reaches A");
    fleet.etcd.restart(0);
    fleet.etcd.wait_healthy(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    cli(&b, "B", &ENI_B);
    std::thread::sleep(Duration::from_millis(200));
    cli(&a, "A", &["list"]);
    cli(&a, "A", &["generation"]);

    step("stopping; removing the namespaces, the agents' datapaths and etcd");
    drop((a, b));
}
