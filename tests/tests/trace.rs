//! `eip-nat trace` with a real agent and real traffic (issue #13, point
//! 3): drops from the public side traced into a pcapng file that is read
//! back with a parser, translations sampled as lines, one tracer at a time,
//! and the datapath's trace flag cleared when the tracer goes.

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use eip_nat_common::{
    maps::{CONFIG, FLAG_TRACE},
    Config,
};
use integration_tests::{
    agent::{binary, Agent},
    netns::{ns_sh, Topology},
    require_root,
    sockets::{sa, udp_socket},
};
use pcap_file::pcapng::{blocks::enhanced_packet::EnhancedPacketOption, Block, PcapNgReader};

/// In the private network, of no ENI: the public side may not reach it.
const UNLISTED: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 50);

fn trace_flag(agent: &Agent) -> bool {
    let map: aya::maps::Array<_, Config> =
        aya::maps::Array::try_from(aya::maps::Map::Array(agent.home.pinned(CONFIG))).unwrap();
    map.get(&0, 0).unwrap().flags & FLAG_TRACE != 0
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `eip-nat trace …` against `agent`, and waits until its trace is
/// the one running (a second tracer is refused with 409 meanwhile).
fn start_tracer(agent: &Agent, args: &[&str]) -> std::process::Child {
    let mut child = Command::new(binary())
        .arg("--socket")
        .arg(&agent.home.socket)
        .arg("trace")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the tracer started", Duration::from_secs(10), || {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.stderr.take().map(std::io::read_to_string);
            panic!("the tracer exited: {out:?}");
        }
        trace_flag(agent)
    });
    // One at a time: a second tracer is refused while it runs.
    let second = agent
        .client()
        .stream_lines("/v1/trace", Some(Instant::now()), |_| false);
    assert!(
        matches!(
            second,
            Err(eip_nat::client::ClientError::Api { status: 409, .. })
        ),
        "{second:?}"
    );
    child
}

fn finish(child: std::process::Child) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

#[test]
fn drops_are_traced_into_a_pcap_and_translations_sampled() {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &[]);
    agent.primary_nat("eni-1", t.instance.addr, t.eip);
    assert!(!trace_flag(&agent), "nobody traces: the flag is off");
    ns_sh(
        &t.internet.ns,
        &["ip", "route", "add", "10.200.0.0/24", "via", "198.51.100.1"],
    );
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));

    // Drops, into a capture.
    let pcap = agent.home.dir.join("drops.pcapng");
    let tracer = start_tracer(
        &agent,
        &[
            "--verdict",
            "drop_public_unlisted",
            "--count",
            "3",
            "--seconds",
            "20",
            "--pcap",
            pcap.to_str().unwrap(),
        ],
    );
    for port in [7001u16, 7002, 7003] {
        client.send_to(b"knock", sa(UNLISTED, port)).unwrap();
        // A translated packet between them is not what was asked for.
        client.send_to(b"by the EIP", sa(t.eip, 7000)).unwrap();
    }
    let (_, stderr) = finish(tracer);
    assert!(stderr.contains("3 packets traced"), "{stderr}");
    wait_for(
        "the flag is cleared once the tracer has gone",
        Duration::from_secs(3),
        || !trace_flag(&agent),
    );

    let file = std::fs::File::open(&pcap).unwrap();
    let mut reader = PcapNgReader::new(file).expect("a pcapng file");
    let mut ports = Vec::new();
    while let Some(block) = reader.next_block() {
        let Block::EnhancedPacket(p) = block.expect("a well-formed block") else {
            continue;
        };
        let f = &p.data;
        assert_eq!(&f[12..14], &[0x08, 0x00], "Ethernet, IPv4");
        let ip = &f[14..];
        assert_eq!(
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            t.internet.addr
        );
        assert_eq!(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]), UNLISTED);
        assert_eq!(ip[9], 17, "UDP");
        let hlen = usize::from(ip[0] & 0x0f) * 4;
        ports.push(u16::from_be_bytes([ip[hlen + 2], ip[hlen + 3]]));
        assert_eq!(p.original_len as usize, 14 + 20 + 8 + 5);
        assert!(
            p.options.iter().any(|o| matches!(
                o,
                EnhancedPacketOption::Comment(c) if c == "inbound drop_public_unlisted"
            )),
            "{:?}",
            p.options
        );
        let age = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .saturating_sub(p.timestamp);
        assert!(age < Duration::from_secs(60), "a wall-clock time: {age:?}");
    }
    assert_eq!(ports, [7001, 7002, 7003]);

    // Translations, sampled (one in one), as lines, for one address and
    // one side (the instance's port unreachable would go out through it).
    let tracer = start_tracer(
        &agent,
        &[
            "--addr",
            &t.eip.to_string(),
            "--sample",
            "1",
            "--direction",
            "inbound",
            "--count",
            "2",
            "--seconds",
            "20",
        ],
    );
    client.send_to(b"knock", sa(UNLISTED, 7004)).unwrap();
    for _ in 0..2 {
        client.send_to(b"by the EIP", sa(t.eip, 7000)).unwrap();
    }
    let (stdout, _) = finish(tracer);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        assert!(l.contains("inbound") && l.contains("translated"), "{l}");
        // The frame as it left: addressed to the instance now.
        assert!(l.contains(&format!("→ {}:7000", t.instance.addr)), "{l}");
        assert!(
            l.contains(&format!("arrived {} → {}", t.internet.addr, t.eip)),
            "{l}"
        );
    }
    wait_for("the flag is cleared again", Duration::from_secs(3), || {
        !trace_flag(&agent)
    });
}
