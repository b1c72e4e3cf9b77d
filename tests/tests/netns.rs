//! Real traffic through a real agent: internet ── gateway ── instance in
//! network namespaces, the agent on the gateway, sockets on both ends.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::Duration,
};

use integration_tests::{
    agent::Agent,
    capture::Capture,
    netns::{in_netns, ns_sh, Topology},
    packet::{parse_and_verify, Parsed, ICMP, UDP},
    require_root, setsockopt,
    sockets::{accept_within, sa, udp_socket, TIMEOUT},
};

/// Agent first: fields drop in order, so the agent stops before its
/// namespaces go.
struct Setup {
    agent: Agent,
    t: Topology,
}

fn setup_with(extra: &[&str], associate: bool) -> Setup {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, extra);
    if associate {
        agent.nat(&t.eip.to_string(), &t.instance.addr.to_string());
    }
    Setup { agent, t }
}

fn setup() -> Setup {
    setup_with(&[], true)
}

/// Captured IPv4 frames, each verified (IPv4 and L4 checksums) and parsed.
fn verified(frames: Vec<Vec<u8>>) -> Vec<Parsed> {
    frames
        .iter()
        .filter(|f| f.len() > 14 && f[12..14] == [0x08, 0x00])
        .map(|f| parse_and_verify(f).unwrap_or_else(|e| panic!("captured frame: {e}")))
        .collect()
}

fn collect(c: &Capture) -> Vec<Parsed> {
    verified(c.collect(Duration::from_millis(300), Duration::from_secs(5), 10_000))
}

/// N datagrams from the internet to the EIP, each echoed by the instance.
fn udp_exchange(s: &Setup, n: usize, size: usize) {
    let t = &s.t;
    let server = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let payload = vec![(i % 251) as u8; size];
        client.send_to(&payload, sa(t.eip, 7000)).unwrap();
        let (len, from) = server
            .recv_from(&mut buf)
            .expect("instance receives the datagram sent to its EIP");
        assert_eq!(&buf[..len], &payload[..]);
        assert_eq!(from.ip(), t.internet.addr, "no SNAT on the way in");
        server.send_to(&buf[..len], from).unwrap();
        let (len, from) = client.recv_from(&mut buf).expect("the reply comes back");
        assert_eq!(&buf[..len], &payload[..]);
        assert_eq!(
            from,
            SocketAddr::V4(sa(t.eip, 7000)),
            "the reply comes from the EIP"
        );
    }
}

/// The agent options of the two datapath paths, with the verdict a
/// translated packet gets on each.
const FAST: (&[&str], &str) = (&[], "translated_redirect");
const SLOW: (&[&str], &str) = (&["--no-fast-path"], "translated");

fn check_udp_exchange(extra: &[&str], verdict: &str) {
    let s = setup_with(extra, true);
    let t = &s.t;
    let at_instance = Capture::start(&t.instance.ns, &t.instance.ifname);
    let at_internet = Capture::start(&t.internet.ns, &t.internet.ifname);
    let before = s.agent.stats();
    let (n, size) = (20, 100);
    udp_exchange(&s, n, size);
    let after = s.agent.stats();

    // On the wire: every datagram reached the instance for its private IP
    // and left with the EIP, with valid checksums.
    let inb: Vec<_> = collect(&at_instance)
        .into_iter()
        .filter(|p| p.proto == UDP)
        .collect();
    assert_eq!(inb.len(), n);
    assert!(inb
        .iter()
        .all(|p| p.dst == t.instance.addr && p.src == t.internet.addr));
    let outb: Vec<_> = collect(&at_internet)
        .into_iter()
        .filter(|p| p.proto == UDP)
        .collect();
    assert_eq!(outb.len(), n);
    assert!(outb
        .iter()
        .all(|p| p.src == t.eip && p.dst == t.internet.addr));

    // Counters: exactly these packets, with their IPv4 bytes.
    let ip_bytes = (n * (20 + 8 + size)) as u64;
    let (e0, e1) = (before.eip(t.eip).unwrap(), after.eip(t.eip).unwrap());
    assert_eq!(e1.in_packets - e0.in_packets, n as u64);
    assert_eq!(e1.in_bytes - e0.in_bytes, ip_bytes);
    assert_eq!(e1.out_packets - e0.out_packets, n as u64);
    assert_eq!(e1.out_bytes - e0.out_bytes, ip_bytes);
    for dir in ["inbound", "outbound"] {
        let v0 = before.verdict(dir, verdict).unwrap();
        let v1 = after.verdict(dir, verdict).unwrap();
        assert_eq!(v1.packets - v0.packets, n as u64, "{dir} {verdict}");
        assert_eq!(after.translated(dir) - before.translated(dir), n as u64);
        // Frames: IPv4 bytes plus a 14-byte Ethernet header each.
        assert_eq!(v1.bytes - v0.bytes, ip_bytes + 14 * n as u64, "{dir} bytes");
    }
    let drops: u64 = after
        .verdicts
        .iter()
        .filter(|v| v.drop)
        .map(|v| v.packets)
        .sum();
    assert_eq!(drops, 0, "{after:?}");
}

#[test]
fn udp_exchange_native_xdp_fast_path() {
    check_udp_exchange(&["--xdp-mode", "native"], FAST.1);
}

#[test]
fn udp_exchange_native_xdp_slow_path() {
    check_udp_exchange(&["--xdp-mode", "native", "--no-fast-path"], SLOW.1);
}

#[test]
fn udp_exchange_generic_xdp_fast_path() {
    check_udp_exchange(&["--xdp-mode", "generic"], FAST.1);
}

#[test]
fn udp_exchange_generic_xdp_slow_path() {
    check_udp_exchange(&["--xdp-mode", "generic", "--no-fast-path"], SLOW.1);
}

/// Runs a traffic check once per datapath path.
macro_rules! both_paths {
    ($check:ident: $fast:ident, $slow:ident) => {
        #[test]
        fn $fast() {
            $check(FAST.0);
        }
        #[test]
        fn $slow() {
            $check(SLOW.0);
        }
    };
}

both_paths!(tcp_from_the_internet: tcp_from_the_internet_fast_path, tcp_from_the_internet_slow_path);
both_paths!(connections_started_by_the_instance: instance_connects_out_fast_path, instance_connects_out_slow_path);
both_paths!(icmp_echo_both_ways: icmp_echo_fast_path, icmp_echo_slow_path);

/// A TCP connection from the internet to the EIP reaches the instance.
fn tcp_from_the_internet(extra: &[&str]) {
    let s = setup_with(extra, true);
    let t = &s.t;
    let listener = in_netns(&t.instance.ns, || {
        TcpListener::bind("0.0.0.0:8080").unwrap()
    });
    let at_instance = Capture::start(&t.instance.ns, &t.instance.ifname);
    let eip = t.eip;
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 256) as u8).collect();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            let (mut conn, peer) = accept_within(&listener, TIMEOUT);
            conn.set_read_timeout(Some(TIMEOUT)).unwrap();
            assert_eq!(
                peer.ip(),
                t.internet.addr,
                "the instance sees the real client"
            );
            assert_eq!(
                conn.local_addr().unwrap().ip(),
                t.instance.addr,
                "and its own private IP"
            );
            let mut got = vec![0u8; data.len()];
            conn.read_exact(&mut got).unwrap();
            conn.write_all(&got).unwrap();
        });
        let mut client = in_netns(&t.internet.ns, || {
            TcpStream::connect_timeout(&SocketAddr::V4(sa(eip, 8080)), TIMEOUT)
                .expect("connect to the EIP")
        });
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        assert_eq!(client.peer_addr().unwrap(), SocketAddr::V4(sa(eip, 8080)));
        client.write_all(&data).unwrap();
        let mut echo = vec![0u8; data.len()];
        client
            .read_exact(&mut echo)
            .expect("echo through the gateway");
        assert!(echo == data, "payload changed in transit");
        server.join().unwrap();
    });
    let seen = collect(&at_instance);
    let tcp: Vec<_> = seen.iter().filter(|p| p.proto == 6).collect();
    assert!(tcp.len() > 10, "captured {} TCP segments", tcp.len());
    assert!(tcp
        .iter()
        .all(|p| p.dst == t.instance.addr && p.src == t.internet.addr));
    let st = s.agent.stats();
    let e = st.eip(t.eip).unwrap();
    assert!(
        e.in_bytes > data.len() as u64 && e.out_bytes > data.len() as u64,
        "{e:?}"
    );
}

/// Connections started by the instance leave with the EIP.
fn connections_started_by_the_instance(extra: &[&str]) {
    let s = setup_with(extra, true);
    let t = &s.t;
    // TCP.
    let listener = in_netns(&t.internet.ns, || {
        TcpListener::bind("198.51.100.2:9090").unwrap()
    });
    let inet = t.internet.addr;
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            let (mut conn, peer) = accept_within(&listener, TIMEOUT);
            assert_eq!(peer.ip(), t.eip, "the internet sees the EIP");
            conn.write_all(b"hello EIP").unwrap();
        });
        let mut c = in_netns(&t.instance.ns, || {
            TcpStream::connect_timeout(&SocketAddr::V4(sa(inet, 9090)), TIMEOUT)
                .expect("instance connects out")
        });
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello EIP");
        server.join().unwrap();
    });
    // UDP.
    let server = udp_socket(&t.internet.ns, sa(inet, 5353));
    let client = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 0));
    client.send_to(b"query", sa(inet, 5353)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"query"[..], std::net::IpAddr::V4(t.eip))
    );
    server.send_to(b"answer", from).unwrap();
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"answer"[..], SocketAddr::V4(sa(inet, 5353)))
    );
}

fn ping(ns: &str, to: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-q",
        ])
        .arg(to.to_string())
        .output()
        .expect("ping")
        .status
        .success()
}

fn icmp_echo_both_ways(extra: &[&str]) {
    let s = setup_with(extra, true);
    let t = &s.t;
    let at_instance = Capture::start(&t.instance.ns, &t.instance.ifname);
    let at_internet = Capture::start(&t.internet.ns, &t.internet.ifname);
    assert!(ping(&t.internet.ns, t.eip), "internet pings the EIP");
    assert!(
        ping(&t.instance.ns, t.internet.addr),
        "instance pings the internet"
    );
    let inb: Vec<_> = collect(&at_instance)
        .into_iter()
        .filter(|p| p.proto == ICMP)
        .collect();
    let outb: Vec<_> = collect(&at_internet)
        .into_iter()
        .filter(|p| p.proto == ICMP)
        .collect();
    // 3 requests in + 3 replies in, on each side; all translated.
    assert_eq!(inb.len(), 6, "{inb:?}");
    assert_eq!(outb.len(), 6, "{outb:?}");
    assert!(inb.iter().all(|p| p.dst == t.instance.addr));
    assert!(outb.iter().all(|p| p.src == t.eip));
}

#[test]
fn disassociate_stops_translation_at_once() {
    let s = setup();
    let t = &s.t;
    udp_exchange(&s, 1, 10);
    let before = s.agent.stats();
    s.agent
        .cli_ok(&["disassociate", "--eip", &t.eip.to_string()]);

    // Inbound: the very next datagram for the EIP does not reach the instance.
    let server = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    server
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    client.send_to(b"too late", sa(t.eip, 7000)).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        server.recv_from(&mut buf).is_err(),
        "the disassociated EIP still reached the instance"
    );
    // Outbound: the instance's traffic leaves with its private source.
    let at_internet = Capture::start(&t.internet.ns, &t.internet.ifname);
    let out = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 0));
    out.send_to(b"untranslated", sa(t.internet.addr, 9))
        .unwrap();
    let seen: Vec<_> = collect(&at_internet)
        .into_iter()
        .filter(|p| p.proto == UDP)
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].src, t.instance.addr);

    let after = s.agent.stats();
    assert!(after.eip(t.eip).is_none(), "its counters went with it");
    // Inbound, a former EIP is no way in any more; outbound, the private
    // IP leaves as it is.
    for (dir, verdict) in [
        ("inbound", "drop_public_unlisted"),
        ("outbound", "pass_no_mapping"),
    ] {
        let d = after.verdict(dir, verdict).unwrap().packets
            - before.verdict(dir, verdict).unwrap().packets;
        assert_eq!(d, 1, "{dir}: {verdict}");
        assert_eq!(after.translated(dir), before.translated(dir));
    }
    // Disassociating again is refused, and says why.
    let again = s.agent.cli(&["disassociate", "--eip", &t.eip.to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("203.0.113.10 is not associated"));
}

#[test]
fn invalid_requests_are_refused_and_change_nothing() {
    let s = setup();
    let list = || s.agent.cli_ok(&["list", "--json"]);
    let before = list();
    assert!(before.contains("203.0.113.10") && before.contains("10.200.0.10"));
    for (args, says) in [
        (
            vec!["associate", "--eip", "203.0.113.10", "--eni", "eni-other"],
            "already associated with ENI eni-10.200.0.10: an EIP has one target",
        ),
        (
            vec![
                "associate",
                "--eip",
                "203.0.113.11",
                "--eni",
                "eni-10.200.0.10",
            ],
            "a primary ENI carries at most one EIP",
        ),
        (
            vec![
                "associate",
                "--eip",
                "203.0.113.300",
                "--eni",
                "eni-10.200.0.10",
            ],
            "invalid value '203.0.113.300'",
        ),
        (
            vec![
                "associate",
                "--eip",
                "127.0.0.1",
                "--eni",
                "eni-10.200.0.10",
            ],
            "loopback",
        ),
        (
            vec![
                "associate",
                "--eip",
                "10.200.0.10",
                "--eni",
                "eni-10.200.0.10",
            ],
            "already in use as a private IP of ENI eni-10.200.0.10",
        ),
        (
            vec![
                "associate",
                "--eip",
                "203.0.113.12",
                "--eni",
                "eni-10.200.0.10",
                "--mode",
                "cut-through",
            ],
            "[primary_eni_nat_only]",
        ),
        (
            vec!["disassociate", "--eip", "203.0.113.99"],
            "203.0.113.99 is not associated",
        ),
    ] {
        let out = s.agent.cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(says),
            "{args:?}: stderr {err:?} does not say {says:?}"
        );
        assert_eq!(list(), before, "{args:?} changed the table");
    }
    // The datapath still translates exactly as before.
    udp_exchange(&s, 2, 32);
}

fn xdp_attached(ns: &str, ifname: &str) -> bool {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ip", "-d", "link", "show", "dev", ifname,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn agent_detaches_cleanly_on_sigterm() {
    let Setup { agent, t } = setup();
    assert!(xdp_attached(&t.gw_public.ns, &t.gw_public.ifname));
    assert!(xdp_attached(&t.gw_private.ns, &t.gw_private.ifname));
    let socket = agent.socket.clone();
    let log = agent.log.clone();
    let status = agent.stop();
    assert!(
        status.success(),
        "agent exit: {status}: {}",
        std::fs::read_to_string(log).unwrap()
    );
    assert!(!xdp_attached(&t.gw_public.ns, &t.gw_public.ifname));
    assert!(!xdp_attached(&t.gw_private.ns, &t.gw_private.ifname));
    assert!(!socket.exists(), "control socket removed");
}

#[test]
fn agent_names_missing_sysctls() {
    require_root();
    let t = Topology::new();
    ns_sh(&t.gw_public.ns, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    ns_sh(
        &t.gw_public.ns,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{}.rp_filter=1", t.gw_private.ifname),
        ],
    );
    let agent = Agent::on(&t, &[]);
    let log = agent.log_text();
    assert!(log.contains("net.ipv4.ip_forward is not 1"), "{log}");
    assert!(
        log.contains(&format!(
            "reverse-path filtering is strict on {}",
            t.gw_private.ifname
        )),
        "{log}"
    );
    drop(agent);
}

/// The trap behind `ethtool -K … tx off` in every topology: a local socket's
/// UDP packet on a veth carries only a partial checksum (CHECKSUM_PARTIAL),
/// which no NIC completes; once rewritten, it is wrong on the wire. This
/// proves the tests' own checksum verification catches that.
#[test]
fn partial_checksums_from_offloading_senders_are_caught() {
    let s = setup();
    let t = &s.t;
    ns_sh(
        &t.internet.ns,
        &["ethtool", "-K", &t.internet.ifname, "tx", "on"],
    );
    let at_instance = Capture::start(&t.instance.ns, &t.instance.ifname);
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    client
        .send_to(b"offloaded checksum", sa(t.eip, 7000))
        .unwrap();
    let frames = at_instance.collect(Duration::from_millis(300), Duration::from_secs(3), 100);
    let udp: Vec<_> = frames
        .iter()
        .filter(|f| f.len() > 23 && f[23] == UDP)
        .collect();
    assert_eq!(udp.len(), 1);
    let err = parse_and_verify(udp[0]).expect_err("a partial checksum, rewritten, is wrong");
    assert!(err.contains("bad L4 checksum"), "{err}");
}

// ---- The fast path's traps and fallbacks, with real traffic ----

fn verdict_delta(
    before: &eip_nat::api::Stats,
    after: &eip_nat::api::Stats,
    dir: &str,
    verdict: &str,
) -> u64 {
    after.verdict(dir, verdict).unwrap().packets - before.verdict(dir, verdict).unwrap().packets
}

/// The veth trap: frames redirected into a veth whose peer runs no XDP
/// program (so no NAPI) are dropped by the veth, after the datapath counted
/// them as redirected. With `xdp_pass` back on the peer they arrive.
#[test]
fn redirect_into_a_veth_needs_an_xdp_program_on_the_peer() {
    let mut s = setup();
    let instance_program = s.t.peer_programs.remove(1);
    drop(instance_program);
    let t = &s.t;
    let server = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    server
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let before = s.agent.stats();
    client.send_to(b"into the void", sa(t.eip, 7000)).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        server.recv_from(&mut buf).is_err(),
        "arrived without NAPI on the peer?"
    );
    let after = s.agent.stats();
    assert_eq!(
        verdict_delta(&before, &after, "inbound", "translated_redirect"),
        1
    );

    let _back = in_netns(&t.instance.ns, || {
        integration_tests::rig::PassProgram::attach(&t.instance.ifname)
    })
    .unwrap();
    client.send_to(b"delivered", sa(t.eip, 7000)).unwrap();
    let (n, _) = server
        .recv_from(&mut buf)
        .expect("arrives once the peer runs XDP");
    assert_eq!(&buf[..n], b"delivered");
}

#[test]
fn missing_neighbour_falls_back_then_takes_the_fast_path() {
    let s = setup();
    let t = &s.t;
    ns_sh(
        &t.gw_private.ns,
        &[
            "ip",
            "neigh",
            "del",
            &t.instance.addr.to_string(),
            "dev",
            &t.gw_private.ifname,
        ],
    );
    let before = s.agent.stats();
    udp_exchange(&s, 1, 64);
    let after = s.agent.stats();
    assert_eq!(
        verdict_delta(&before, &after, "inbound", "translated_pass_no_neighbour"),
        1,
        "the first packet waits for ARP in the kernel"
    );
    // The kernel's new neighbour entry reaches the programmed next hop
    // within 100 ms (its notification, followed by the agent).
    std::thread::sleep(Duration::from_millis(100));
    let before = s.agent.stats();
    udp_exchange(&s, 4, 64);
    let after = s.agent.stats();
    assert_eq!(
        verdict_delta(&before, &after, "inbound", "translated_redirect"),
        4,
        "once resolved, the programmed next hop takes over"
    );
}

fn set_df(sock: &UdpSocket, df: bool) {
    let v: libc::c_int = if df {
        libc::IP_PMTUDISC_DO
    } else {
        libc::IP_PMTUDISC_DONT
    };
    setsockopt(sock, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &v).expect("IP_MTU_DISCOVER");
}

/// An ICMP error the gateway sent, as captured: (from, type, code, the 4
/// bytes after the checksum, the quoted packet's source and destination).
type OwnError = (Ipv4Addr, u8, u8, [u8; 4], Ipv4Addr, Ipv4Addr);

fn own_errors(c: &Capture) -> Vec<OwnError> {
    let quoted = |l4: &[u8], at: usize| Ipv4Addr::new(l4[at], l4[at + 1], l4[at + 2], l4[at + 3]);
    collect(c)
        .into_iter()
        .filter(|p| p.proto == ICMP && p.l4.len() >= 8 + 28 && matches!(p.l4[0], 3 | 11))
        .map(|p| {
            let rest = [p.l4[4], p.l4[5], p.l4[6], p.l4[7]];
            (
                p.src,
                p.l4[0],
                p.l4[1],
                rest,
                quoted(&p.l4, 8 + 12),
                quoted(&p.l4, 8 + 16),
            )
        })
        .collect()
}

/// Larger than the egress MTU: with DF the datapath answers
/// "fragmentation needed" with the MTU (RFC 1191), from the gateway,
/// quoting the datagram as the sender sent it (to the EIP), so the sender's
/// kernel takes the MTU for its path; without DF the kernel fragments it
/// and the instance reassembles the whole datagram.
#[test]
fn oversized_packets_get_what_a_router_would_do() {
    let s = setup();
    let t = &s.t;
    ns_sh(
        &t.gw_private.ns,
        &["ip", "link", "set", &t.gw_private.ifname, "mtu", "1280"],
    );
    ns_sh(
        &t.instance.ns,
        &["ip", "link", "set", &t.instance.ifname, "mtu", "1280"],
    );
    let server = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    server
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let at_internet = Capture::start(&t.internet.ns, &t.internet.ifname);
    let big = vec![0x5a; 1400];
    let mut buf = vec![0u8; 2000];

    set_df(&client, true);
    let before = s.agent.stats();
    client.send_to(&big, sa(t.eip, 7000)).unwrap();
    assert!(
        server.recv_from(&mut buf).is_err(),
        "a DF datagram over the MTU must not arrive"
    );
    assert_eq!(
        own_errors(&at_internet),
        vec![(
            t.gw_public.addr,
            3,
            4,
            [0, 0, 0x05, 0x00],
            t.internet.addr,
            t.eip
        )],
        "fragmentation needed, next-hop MTU 1280, quoting what was sent"
    );
    let after = s.agent.stats();
    assert_eq!(
        verdict_delta(&before, &after, "inbound", "icmp_frag_needed_sent"),
        1
    );
    assert!(
        route_to(&t.internet.ns, t.eip).contains("mtu 1280"),
        "the sender's kernel matched the error and took the MTU"
    );

    set_df(&client, false);
    client.send_to(&big, sa(t.eip, 7000)).unwrap();
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("fragmented by the gateway, reassembled");
    assert_eq!(
        (&buf[..n], from.ip()),
        (&big[..], std::net::IpAddr::V4(t.internet.addr))
    );
}

/// `ip route get` in `ns`: the route and what the kernel learnt for it.
fn route_to(ns: &str, addr: Ipv4Addr) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ip", "route", "get", &addr.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TTL 1 cannot be forwarded: the datapath sends ICMP time exceeded from
/// the gateway's address on the sender's side, quoting the packet as it was
/// sent, both ways; the sender's UDP socket (IP_RECVERR) gets the error,
/// which its kernel delivers only when the quote matches the socket.
#[test]
fn expiring_ttl_gets_time_exceeded_both_ways() {
    let s = setup();
    let t = &s.t;
    let cases = [
        (&t.internet, t.eip, t.gw_public.addr, "inbound"),
        (&t.instance, t.internet.addr, t.gw_private.addr, "outbound"),
    ];
    for (sender, to, gateway, dir) in cases {
        let client = udp_socket(&sender.ns, sa(sender.addr, 0));
        client.set_ttl(1).unwrap();
        let on: libc::c_int = 1;
        setsockopt(&client, libc::IPPROTO_IP, libc::IP_RECVERR, &on).expect("IP_RECVERR");
        client.connect(sa(to, 7000)).unwrap();
        let capture = Capture::start(&sender.ns, &sender.ifname);
        let before = s.agent.stats();
        client.send(b"short-lived").unwrap();
        let err = client
            .recv(&mut [0u8; 64])
            .expect_err("the error reaches the sending socket");
        assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "{dir}: {err}");
        assert_eq!(
            own_errors(&capture),
            vec![(gateway, 11, 0, [0; 4], sender.addr, to)],
            "{dir}: time exceeded in transit, quoting what was sent"
        );
        let after = s.agent.stats();
        assert_eq!(
            verdict_delta(&before, &after, dir, "icmp_time_exceeded_sent"),
            1,
            "{dir}"
        );
    }
}

/// The datapath's own errors are rate-limited as the kernel's are (1,000
/// per second per CPU, bursts of 50): a flood of expiring packets gets a
/// burst of answers, and the rest are dropped under their own verdict.
#[test]
fn own_icmp_errors_are_rate_limited() {
    let s = setup();
    let t = &s.t;
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    client.set_ttl(1).unwrap();
    let n = 400;
    let before = s.agent.stats();
    let start = std::time::Instant::now();
    for _ in 0..n {
        client.send_to(b"flood", sa(t.eip, 7000)).unwrap();
    }
    let ms = start.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_millis(100));
    let after = s.agent.stats();
    let sent = verdict_delta(&before, &after, "inbound", "icmp_time_exceeded_sent");
    let limited = verdict_delta(&before, &after, "inbound", "drop_icmp_rate_limited");
    assert_eq!(sent + limited, n, "each packet counted once");
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(
        sent <= (50 + ms + 1) * cpus,
        "{sent} errors in {ms} ms is over the limit"
    );
    assert!(sent >= 1 && limited >= 1, "sent {sent}, limited {limited}");
}

/// Path MTU discovery across a gateway whose next hop has the smaller MTU
/// (an overlay on the private side, a tunnel upstream): a real TCP
/// transfer must complete in each direction, the sender learning the path
/// MTU from the datapath's "fragmentation needed". Left to the kernel, the
/// error would quote the translated packet (inbound: the sender cannot
/// match it) or be addressed to the EIP (outbound: lost), and the transfer
/// would stall.
#[test]
fn path_mtu_discovery_with_the_smaller_mtu_at_the_gateway_both_ways() {
    let s = setup();
    let t = &s.t;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    // Inbound data: the gateway's route to the instance has the small MTU.
    ns_sh(
        &t.gw_private.ns,
        &[
            "ip",
            "route",
            "replace",
            &format!("{}/32", t.instance.addr),
            "dev",
            &t.gw_private.ifname,
            "mtu",
            "1280",
        ],
    );
    // Outbound data: and so has its route to the internet host.
    ns_sh(
        &t.gw_public.ns,
        &[
            "ip",
            "route",
            "replace",
            &format!("{}/32", t.internet.addr),
            "dev",
            &t.gw_public.ifname,
            "mtu",
            "1280",
        ],
    );
    let transfers = [
        (&t.internet, &t.instance, t.eip, "inbound"),
        (&t.instance, &t.internet, t.internet.addr, "outbound"),
    ];
    for (sender, receiver, to, dir) in transfers {
        // What the other transfer taught either end (a path MTU, and the
        // MSS advertised from it) must not spare this one the discovery.
        for ns in [&sender.ns, &receiver.ns] {
            ns_sh(ns, &["ip", "route", "flush", "cache"]);
        }
        let before = s.agent.stats();
        let listener = in_netns(&receiver.ns, || TcpListener::bind("0.0.0.0:9100").unwrap());
        std::thread::scope(|scope| {
            let got = scope.spawn(|| {
                let (mut conn, _) = accept_within(&listener, TIMEOUT);
                conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut got = vec![0u8; data.len()];
                conn.read_exact(&mut got)
                    .unwrap_or_else(|e| panic!("{dir}: the whole transfer arrives: {e}"));
                got == data
            });
            let mut c = in_netns(&sender.ns, || {
                TcpStream::connect_timeout(&SocketAddr::V4(sa(to, 9100)), TIMEOUT).expect("connect")
            });
            c.set_write_timeout(Some(TIMEOUT)).unwrap();
            c.write_all(&data).unwrap();
            assert!(got.join().unwrap(), "{dir}: intact");
        });
        let after = s.agent.stats();
        assert!(
            verdict_delta(&before, &after, dir, "icmp_frag_needed_sent") >= 1,
            "{dir}: the gateway told the sender: {:?}",
            after
                .verdicts
                .iter()
                .zip(&before.verdicts)
                .filter(|(a, b)| a.packets != b.packets)
                .map(|(a, b)| (&a.direction, &a.verdict, a.packets - b.packets))
                .collect::<Vec<_>>()
        );
        assert!(
            route_to(&sender.ns, to).contains("mtu 1280"),
            "{dir}: the sender learnt the path MTU"
        );
    }
}

// ---- Hairpin and anti-spoofing with real traffic ----

fn hairpin_tcp(extra: &[&str]) {
    require_root();
    let t = integration_tests::netns::TwoInstances::new();
    let agent = Agent::on(&t, extra);
    let eips = [
        Ipv4Addr::new(203, 0, 113, 11),
        Ipv4Addr::new(203, 0, 113, 12),
    ];
    for (eip, inst) in eips.iter().zip(&t.instances) {
        agent.nat(&eip.to_string(), &inst.addr.to_string());
    }
    let [one, two] = &t.instances;
    let at_two = Capture::start(&two.ns, &two.ifname);
    let listener = in_netns(&two.ns, || TcpListener::bind("0.0.0.0:8080").unwrap());
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            let (mut conn, peer) = accept_within(&listener, TIMEOUT);
            assert_eq!(
                peer.ip(),
                eips[0],
                "instance 2 sees instance 1's public identity"
            );
            conn.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&buf).unwrap();
        });
        let mut c = in_netns(&one.ns, || {
            TcpStream::connect_timeout(&SocketAddr::V4(sa(eips[1], 8080)), TIMEOUT)
                .expect("instance 1 reaches instance 2's EIP")
        });
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf)
            .expect("the reply comes back the same way");
        assert_eq!(&buf, b"hello");
        assert_eq!(c.peer_addr().unwrap(), SocketAddr::V4(sa(eips[1], 8080)));
        server.join().unwrap();
    });
    // The bridge floods frames for MACs it has not learnt yet, so the
    // capture also sees instance 1's frames to the gateway: keep those the
    // gateway sent to instance 2.
    let tcp: Vec<_> = collect(&at_two)
        .into_iter()
        .filter(|p| p.proto == 6 && p.dst == two.addr)
        .collect();
    assert!(!tcp.is_empty());
    assert!(tcp.iter().all(|p| p.src == eips[0]), "{tcp:?}");
    drop(agent);
}

both_paths!(hairpin_tcp: hairpin_between_instances_fast_path, hairpin_between_instances_slow_path);

/// A UDP socket sending from an address the namespace does not own: bound
/// with `ip_nonlocal_bind`, and IP_TRANSPARENT so the route lookup accepts
/// the foreign source.
fn spoofing_socket(ns: &str, addr: Ipv4Addr) -> UdpSocket {
    ns_sh(ns, &["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"]);
    let s = udp_socket(ns, sa(addr, 0));
    let one: libc::c_int = 1;
    setsockopt(&s, libc::IPPROTO_IP, libc::IP_TRANSPARENT, &one).expect("IP_TRANSPARENT");
    s
}

#[test]
fn spoofed_sources_are_dropped_on_both_sides() {
    let s = setup();
    let t = &s.t;
    let server = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let before = s.agent.stats();
    // From the Internet, claiming the EIP and then the private IP.
    spoofing_socket(&t.internet.ns, t.eip)
        .send_to(b"spoof", sa(t.eip, 7000))
        .unwrap();
    spoofing_socket(&t.internet.ns, t.instance.addr)
        .send_to(b"spoof", sa(t.eip, 7000))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        server.recv_from(&mut buf).is_err(),
        "a spoofed packet reached the instance"
    );
    // From the instance, claiming its EIP as source.
    let inet_server = udp_socket(&t.internet.ns, sa(t.internet.addr, 9999));
    inet_server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    spoofing_socket(&t.instance.ns, t.eip)
        .send_to(b"spoof", sa(t.internet.addr, 9999))
        .unwrap();
    assert!(
        inet_server.recv_from(&mut buf).is_err(),
        "a spoofed packet left the gateway"
    );
    let after = s.agent.stats();
    assert_eq!(
        verdict_delta(&before, &after, "inbound", "drop_spoofed_eip"),
        1
    );
    assert_eq!(
        verdict_delta(&before, &after, "inbound", "drop_spoofed_private"),
        1
    );
    assert_eq!(
        verdict_delta(&before, &after, "outbound", "drop_spoofed_eip"),
        1
    );
    // Real traffic is untouched by the checks.
    drop(server);
    udp_exchange(&s, 2, 16);
}

// ---- ICMP errors through the gateway: path MTU discovery ----

/// A host behind a router on the internet side whose link to it has a
/// smaller MTU: the router's "fragmentation needed" (sent to the EIP) must
/// reach the instance translated, quote and all, and shrink its TCP path
/// MTU, or the transfer stalls (RFC 1191; the classic NAT black hole).
#[test]
fn path_mtu_discovery_works_through_the_gateway() {
    let mut s = setup();
    let far_ns = s.t.namespaces.add("far");
    let t = &s.t;
    let p = &t.namespaces.prefix;
    let router = integration_tests::netns::End {
        ns: t.internet.ns.clone(),
        ifname: format!("{p}r"),
        mac: [0x02, 0xee, 0, 0, 0, 0x21],
        addr: Ipv4Addr::new(192, 0, 2, 1),
        prefix_len: 24,
    };
    let far = integration_tests::netns::End {
        ns: far_ns.clone(),
        ifname: format!("{p}x"),
        mac: [0x02, 0xee, 0, 0, 0, 0x22],
        addr: Ipv4Addr::new(192, 0, 2, 2),
        prefix_len: 24,
    };
    integration_tests::netns::veth(&router, &far);
    // The bottleneck is the router's side: the far host still advertises
    // an MSS for 1500, so only PMTU discovery can find it.
    ns_sh(
        &router.ns,
        &["ip", "link", "set", &router.ifname, "mtu", "1280"],
    );
    ns_sh(&router.ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    ns_sh(
        &far.ns,
        &["ip", "route", "add", "default", "via", "192.0.2.1"],
    );
    ns_sh(
        &t.gw_public.ns,
        &["ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.2"],
    );

    let listener = in_netns(&far.ns, || TcpListener::bind("0.0.0.0:9000").unwrap());
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let before = s.agent.stats();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            let (mut conn, peer) = accept_within(&listener, TIMEOUT);
            assert_eq!(peer.ip(), t.eip);
            conn.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut got = vec![0u8; data.len()];
            conn.read_exact(&mut got)
                .expect("the whole transfer arrives");
            assert!(got == data);
        });
        let mut c = in_netns(&t.instance.ns, || {
            TcpStream::connect_timeout(&SocketAddr::V4(sa(far.addr, 9000)), TIMEOUT)
                .expect("connect to the far host")
        });
        c.set_write_timeout(Some(TIMEOUT)).unwrap();
        c.write_all(&data).unwrap();
        server.join().unwrap();
    });
    let route = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.instance.ns,
            "ip",
            "route",
            "get",
            "192.0.2.2",
        ])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("mtu 1280"),
        "the instance learnt the path MTU: {route}"
    );
    let after = s.agent.stats();
    assert!(after.translated("inbound") > before.translated("inbound"));
}

/// A datagram larger than the MTU, both ways: the sender's kernel fragments
/// it; the gateway translates the first fragment's UDP checksum and only
/// the IP header of the others; the far end reassembles it intact.
fn large_datagrams(extra: &[&str]) {
    let s = setup_with(extra, true);
    let t = &s.t;
    let server = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let big: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut buf = vec![0u8; 8000];
    client.send_to(&big, sa(t.eip, 7000)).unwrap();
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("reassembled at the instance");
    assert_eq!(
        (&buf[..n], from.ip()),
        (&big[..], std::net::IpAddr::V4(t.internet.addr))
    );
    server.send_to(&big, from).unwrap();
    let (n, from) = client
        .recv_from(&mut buf)
        .expect("reassembled on the internet");
    assert_eq!(
        (&buf[..n], from),
        (&big[..], SocketAddr::V4(sa(t.eip, 7000)))
    );
    let st = s.agent.stats();
    let e = st.eip(t.eip).unwrap();
    // 5000 bytes over a 1500 MTU: four fragments each way.
    assert_eq!((e.in_packets, e.out_packets), (4, 4), "{e:?}");
}

both_paths!(large_datagrams: large_datagrams_fast_path, large_datagrams_slow_path);
