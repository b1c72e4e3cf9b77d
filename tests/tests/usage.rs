//! Usage records under traffic (issue #13, point 4): an EIP is
//! disassociated and associated again (its counter slot freed, then taken
//! again), and its ENI is relocated (a period ends and the next starts on
//! the same slot, split by one reading), while datagrams stream to it.
//! Every datagram the instance received was counted exactly once: in a
//! usage record of a period that ended, or in the open period's counters.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use eip_nat::model::{Event, Location, Mode};
use integration_tests::{
    agent::Agent,
    netns::{in_netns, Topology},
    require_root,
    sockets::{sa, udp_socket},
};

const PAYLOAD: usize = 32;

fn associate(eip: Ipv4Addr) -> Event {
    Event::Associate {
        eip,
        eni: "eni-1".into(),
        private_ip: None,
        mode: Mode::Nat,
    }
}

#[test]
fn no_byte_is_lost_or_counted_twice_across_disassociate_and_reassociate() {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &[]);
    let api = agent.client();
    agent.primary_nat("eni-1", t.instance.addr, t.eip);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let server = in_netns(&t.instance.ns, || {
        UdpSocket::bind(sa(Ipv4Addr::UNSPECIFIED, 7000)).unwrap()
    });
    server
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let stop = AtomicBool::new(false);
    let received = std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let mut n = 0u64;
            let mut buf = [0u8; 64];
            loop {
                match server.recv_from(&mut buf) {
                    Ok(_) => n += 1,
                    Err(_) if stop.load(Ordering::SeqCst) => return n,
                    Err(_) => {}
                }
            }
        });
        let tx = s.spawn(|| {
            let to = SocketAddr::V4(sa(t.eip, 7000));
            // About 4 s at one datagram each 200 µs.
            for _ in 0..20_000 {
                client.send_to(&[7u8; PAYLOAD], to).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        for round in 0..6 {
            std::thread::sleep(Duration::from_millis(400));
            if round % 2 == 0 {
                // Undone, then made again: the slot is freed, then taken.
                api.event(&Event::Disassociate { eip: t.eip }).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                api.event(&associate(t.eip)).unwrap();
            } else {
                // Relocated (a route on the private interface, or none):
                // one reading of the slot ends the old period and starts
                // the new one, under traffic.
                let dev = (round % 4 == 1).then(|| t.gw_private.ifname.clone());
                api.event(&Event::LocateEni {
                    eni: "eni-1".into(),
                    location: Location { via: None, dev },
                })
                .unwrap();
            }
        }
        tx.join().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        rx.join().unwrap()
    });

    let records = api.usage(started, Some(t.eip)).unwrap();
    assert_eq!(records.len(), 6, "{records:?}");
    for w in records.windows(2) {
        assert!(
            w[0].ended_ns <= w[1].started_ns,
            "periods follow each other"
        );
    }
    for r in &records {
        assert_eq!(r.carried.eni, "eni-1");
        assert_eq!(r.carried.mode, Mode::Nat);
        assert!(r.started_ns < r.ended_ns);
        assert!(r.counts.in_packets > 0, "traffic in every period: {r:?}");
    }
    let open = api.stats_of(t.eip).unwrap();
    let open = open.eip(t.eip).unwrap();
    let counted: u64 = records.iter().map(|r| r.counts.in_packets).sum::<u64>() + open.in_packets;
    let bytes: u64 = records.iter().map(|r| r.counts.in_bytes).sum::<u64>() + open.in_bytes;
    assert!(received > 5_000, "traffic went through ({received})");
    assert_eq!(counted, received, "each delivered datagram counted once");
    assert_eq!(bytes, received * (20 + 8 + PAYLOAD as u64), "IPv4 bytes");

    // The CLI shows them.
    let out = agent.cli_ok(&["usage", "--since", "1h", "--eip", &t.eip.to_string()]);
    assert_eq!(out.lines().count(), 1 + 6, "{out}");
}
