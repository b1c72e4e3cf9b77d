//! `cargo xtask demo`: a small gateway in network namespaces, an EIP
//! associated, real traffic both ways, what was observed on the wire, and
//! the counters. Everything it creates is removed at the end, or on failure.

use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use integration_tests::{
    agent::{Agent, AgentHome},
    capture::Capture,
    netns::{in_netns, Topology},
    packet::parse_and_verify,
    require_root,
};

const T: Duration = Duration::from_secs(3);

fn step(s: &str) {
    println!("\n── {s}");
}

/// Prints the frames a capture saw, as the interface received them, with
/// their checksums verified here.
fn show(label: &str, c: &Capture) {
    for f in c.collect(Duration::from_millis(300), Duration::from_secs(3), 64) {
        if f.len() < 14 || f[12..14] != [0x08, 0x00] {
            continue;
        }
        match parse_and_verify(&f) {
            Ok(p) => {
                let proto = match p.proto {
                    1 => "ICMP",
                    6 => "TCP",
                    17 => "UDP",
                    _ => "IP",
                };
                let ports = p.ports().map(|(s, d)| (format!(":{s}"), format!(":{d}")));
                let (sp, dp) = ports.unwrap_or_default();
                println!(
                    "   {label}: {proto:<4} {}{sp} -> {}{dp}  (checksums valid)",
                    p.src, p.dst
                );
            }
            Err(e) => println!("   {label}: {e}"),
        }
    }
}

fn main() {
    require_root();
    let t = Topology::new();
    println!("eip-nat demo");
    println!(
        "  internet {} ── {} [gateway: eip-nat] {} ── {} instance",
        t.internet.addr, t.gw_public.addr, t.gw_private.addr, t.instance.addr
    );
    println!("  namespaces {}-{{inet,gw,inst}}", t.namespaces.prefix);
    println!(
        "  xdp_pass on the internet's and the instance's veth ends: a veth hands frames the \
         gateway redirects (XDP_REDIRECT) to its peer only if the peer runs an XDP program"
    );

    step("starting the agent on the gateway");
    // Its own bpffs and state directory, removed at the end.
    let home = AgentHome::new(&t.gw_public.ns);
    let start = || Agent::on_in(&home, &t, &[]);
    let agent = start();
    for line in agent.log_text().lines() {
        println!("   {line}");
    }
    let (eip, private) = (t.eip.to_string(), t.instance.addr.to_string());
    step(&format!(
        "eip-nat eni create --eni eni-demo --kind primary --primary-ip {private} --instance i-demo"
    ));
    print!(
        "   {}",
        agent.cli_ok(&[
            "eni",
            "create",
            "--eni",
            "eni-demo",
            "--kind",
            "primary",
            "--primary-ip",
            &private,
            "--instance",
            "i-demo"
        ])
    );
    step(&format!(
        "eip-nat associate --eip {eip} --eni eni-demo   (NAT mode)"
    ));
    print!(
        "   {}",
        agent.cli_ok(&["associate", "--eip", &eip, "--eni", "eni-demo"])
    );

    let at_instance = Capture::start(&t.instance.ns, &t.instance.ifname);
    let at_internet = Capture::start(&t.internet.ns, &t.internet.ifname);

    step(&format!(
        "UDP: the internet sends to {eip}:7000, the instance echoes"
    ));
    let server = in_netns(&t.instance.ns, || UdpSocket::bind("0.0.0.0:7000").unwrap());
    let client = in_netns(&t.internet.ns, || {
        UdpSocket::bind("198.51.100.2:0").unwrap()
    });
    server.set_read_timeout(Some(T)).unwrap();
    client.set_read_timeout(Some(T)).unwrap();
    client
        .send_to(b"hello from the internet", SocketAddrV4::new(t.eip, 7000))
        .unwrap();
    let mut buf = [0u8; 128];
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("datagram reached the instance");
    println!(
        "   instance got {:?} from {from}",
        String::from_utf8_lossy(&buf[..n])
    );
    server.send_to(&buf[..n], from).unwrap();
    let (_, from) = client.recv_from(&mut buf).expect("echo came back");
    println!("   internet got the echo from {from}");
    show("on the instance's wire", &at_instance);
    show("on the internet's wire", &at_internet);

    step(&format!("TCP: the internet connects to {eip}:8080"));
    let listener = in_netns(&t.instance.ns, || {
        TcpListener::bind("0.0.0.0:8080").unwrap()
    });
    let mut c = in_netns(&t.internet.ns, || {
        TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(t.eip, 8080)), T)
            .expect("connect")
    });
    let (mut s, peer) = listener.accept().unwrap();
    println!("   instance accepted {peer} on {}", s.local_addr().unwrap());
    s.write_all(b"hi").unwrap();
    drop(s);
    let mut got = String::new();
    c.set_read_timeout(Some(T)).unwrap();
    c.read_to_string(&mut got).unwrap();
    println!(
        "   internet's socket is connected to {}",
        c.peer_addr().unwrap()
    );

    step("TCP: the instance connects out to 198.51.100.2:9090");
    let listener = in_netns(&t.internet.ns, || {
        TcpListener::bind("198.51.100.2:9090").unwrap()
    });
    let _c = in_netns(&t.instance.ns, || {
        TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(t.internet.addr, 9090)), T)
            .expect("connect out")
    });
    let (_s, peer) = listener.accept().unwrap();
    println!("   the internet sees the connection coming from {peer}");
    at_instance.collect(Duration::from_millis(200), T, 1000);
    at_internet.collect(Duration::from_millis(200), T, 1000);

    step(&format!("ICMP: the internet pings {eip}"));
    let ok = integration_tests::netns::ping(&t.internet.ns, &eip, 2)
        .status
        .success();
    println!(
        "   {}",
        if ok {
            "echo replies received"
        } else {
            "no reply!"
        }
    );
    show("on the instance's wire", &at_instance);
    show("on the internet's wire", &at_internet);

    step("eip-nat stats");
    for line in agent.cli_ok(&["stats"]).lines() {
        println!("   {line}");
    }

    step("hitless restart: stop the agent; the pinned datapath keeps translating without it");
    let status = agent.stop();
    println!("   agent stopped ({status})");
    client
        .send_to(b"anyone home?", SocketAddrV4::new(t.eip, 7000))
        .unwrap();
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("translated with no agent running");
    server.send_to(&buf[..n], from).unwrap();
    let (_, from) = client.recv_from(&mut buf).expect("echo came back");
    println!("   with no agent: the instance got a datagram, the internet its echo from {from}");
    let agent = start();
    for line in agent
        .log_text()
        .lines()
        .filter(|l| l.contains("reconciled") || l.contains("took over"))
    {
        println!("   {line}");
    }
    print!("   {}", agent.cli_ok(&["generation"]));

    step(&format!("eip-nat disassociate --eip {eip}"));
    print!("   {}", agent.cli_ok(&["disassociate", "--eip", &eip]));
    let status = agent.stop();
    step(&format!("agent stopped ({status}); eip-nat teardown"));
    let out = home.teardown(&t.gw_public.ns);
    print!("   {}", String::from_utf8_lossy(&out.stdout));
    step("removing the namespaces");
    drop(t);
}
