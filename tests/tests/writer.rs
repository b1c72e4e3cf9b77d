//! The writer under load, with a real agent (issue #10, points 6 and 7):
//! concurrent clients' events share transactions yet each is answered on
//! its own and is durable once answered; reads are answered while a large
//! batch commits and while the agent reconciles at start. Speeds are the
//! benchmark's (`cargo xtask bench --only=control`); these check behaviour.

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use eip_nat::{
    api::Batch,
    model::{EniKind, Event, Location, Mode},
};
use integration_tests::{
    agent::{Agent, AgentHome},
    netns::Topology,
    require_root,
};

fn eni(id: &str, ip: Ipv4Addr) -> Event {
    Event::CreateEni {
        eni: id.into(),
        kind: EniKind::Secondary,
        primary_ip: ip,
        instance: None,
        location: Location::default(),
    }
}

fn associate(eip: Ipv4Addr, eni: &str) -> Event {
    Event::Associate {
        eip,
        eni: eni.into(),
        private_ip: None,
        mode: Mode::Nat,
    }
}

/// `n` ENIs and an association each, as events.
fn pairs(first: u32, n: u32) -> Vec<Event> {
    (first..first + n)
        .flat_map(|k| {
            let id = format!("eni-bulk-{k}");
            [
                eni(&id, Ipv4Addr::from(0x0a40_0000 + k)),
                associate(Ipv4Addr::from(0x0b00_0000 + k), &id),
            ]
        })
        .collect()
}

#[test]
fn sixteen_clients_are_answered_one_by_one_and_what_was_answered_survives_kill_9() {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let agent = Agent::on_in(&home, &t, &[]);
    const CLIENTS: u32 = 16;
    const EACH: u32 = 150;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let api = agent.client();
            std::thread::spawn(move || {
                let mut accepted = Vec::new();
                let mut refused = 0;
                for k in 0..EACH {
                    let id = format!("eni-{c}-{k}");
                    let ip = Ipv4Addr::from(0x0a00_0000 + (c << 16) + k);
                    api.event(&eni(&id, ip)).expect("a new ENI is accepted");
                    // Every fifth client event is refused (its private IP
                    // is another ENI's), in the middle of the others'
                    // accepted ones that share its transaction.
                    if k.is_multiple_of(5) {
                        let e = api
                            .event(&eni(&format!("{id}-twin"), ip))
                            .expect_err("a private IP in use is refused");
                        assert_eq!(
                            e.api().and_then(|a| a.rule.as_deref()),
                            Some("address_in_use"),
                            "{e}"
                        );
                        refused += 1;
                    }
                    let eip = Ipv4Addr::from(0xcb00_0000 + (c << 16) + k);
                    let g = api.event(&associate(eip, &id)).expect("associate");
                    assert!(
                        g.applied_generation >= g.generation,
                        "answered once applied"
                    );
                    accepted.push((id, eip));
                }
                (accepted, refused)
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for c in clients {
        let (a, refused) = c.join().unwrap();
        assert_eq!(refused, EACH / 5);
        accepted.extend(a);
    }
    // Each accepted event is its own generation, though they shared
    // transactions: 2 per ENI and association.
    let g = agent.client().generation().unwrap();
    assert_eq!(g.generation, 2 * u64::from(CLIENTS * EACH));

    agent.kill9();
    let agent = Agent::on_in(&home, &t, &[]);
    let view = agent.client().state().unwrap();
    assert_eq!(view.generation.generation, g.generation);
    assert_eq!(view.associations.len(), accepted.len());
    for (id, eip) in accepted {
        let a = view
            .associations
            .iter()
            .find(|a| a.eip == eip)
            .unwrap_or_else(|| panic!("{eip} was answered, so it is durable"));
        assert_eq!(a.eni, id);
    }
    assert!(view.enis.iter().all(|e| !e.id.ends_with("-twin")));
}

#[test]
fn reads_are_answered_while_a_large_batch_commits() {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let agent = Agent::on_in(&home, &t, &["--max-associations", "300000"]);
    let api = agent.client();
    api.event(&eni("eni-small", [10, 9, 0, 1].into())).unwrap();
    api.event(&associate([203, 0, 113, 9].into(), "eni-small"))
        .unwrap();
    let before = api.generation().unwrap();

    let writing = Arc::new(AtomicBool::new(true));
    let batch = {
        let api = agent.client();
        let writing = Arc::clone(&writing);
        std::thread::spawn(move || {
            let g = api.batch(&Batch {
                events: pairs(0, 200_000),
                if_generation: None,
            });
            writing.store(false, Ordering::SeqCst);
            g.expect("the batch is accepted")
        })
    };
    // Reads while the batch is in flight: answered, with the state as last
    // committed.
    let mut during = 0;
    while writing.load(Ordering::SeqCst) {
        let g = api.generation().unwrap();
        let s = api.stats_of([203, 0, 113, 9].into()).unwrap();
        assert_eq!(s.eips.len(), 1);
        // Before the batch is committed (it may be committed, and not
        // yet answered, by the time `writing` is read).
        if g.generation == before.generation && writing.load(Ordering::SeqCst) {
            during += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let after = batch.join().unwrap();
    assert_eq!(after.generation, before.generation + 1);
    assert!(
        during >= 10,
        "reads were answered while the batch committed ({during})"
    );
    assert_eq!(api.state().unwrap().associations.len(), 200_001);
}

#[test]
fn the_api_answers_during_the_reconcile_at_start_and_shows_its_progress() {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let args = ["--max-associations", "300000"];
    let agent = Agent::on_in(&home, &t, &args);
    agent
        .client()
        .batch(&Batch {
            events: pairs(0, 150_000),
            if_generation: None,
        })
        .unwrap();
    let generation = agent.client().generation().unwrap().generation;
    assert!(agent.stop().success());
    // After a teardown every entry is written again at start.
    assert!(home.teardown(&t.gw_public.ns).status.success());

    let (public, private) = (&t.gw_public, &t.gw_private);
    let mut agent = Agent::launch_in(
        home.clone(),
        &public.ns,
        &public.ifname,
        &private.ifname,
        &args,
    );
    let first = agent.wait_until(Duration::from_secs(20), |_| true);
    let mut phases = Vec::new();
    let ready = loop {
        let g = agent.client().generation().unwrap();
        assert_eq!(g.generation, generation, "the stored generation, at once");
        match g.reconcile {
            Some(p) => {
                assert!(p.total == 0 || p.done <= p.total, "{p:?}");
                if phases.last() != Some(&p.phase) {
                    phases.push(p.phase);
                }
            }
            None => break std::time::Instant::now(),
        }
        // A read of the state is answered meanwhile too.
        if phases.len() == 1 {
            assert_eq!(
                agent
                    .client()
                    .stats_of([11, 0, 0, 1].into())
                    .unwrap()
                    .eips
                    .len(),
                1
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(ready > first);
    assert!(
        phases.iter().any(|p| p == "entries"),
        "the reconcile's progress was shown: {phases:?}"
    );
    let g = agent.client().generation().unwrap();
    assert_eq!(g.applied_generation, generation);
    assert!(
        agent.log_text().contains("300000 entries written"),
        "{}",
        agent.log_text()
    );
}

/// A tmpfs mounted on `dir` (removed, lazily, when dropped): a disk that
/// can be filled.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs on {}", dir.display());
        Self(dir.to_path_buf())
    }

    /// Writes `file` until the file system is full.
    fn fill(&self, file: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join(file)).unwrap();
        let chunk = vec![0u8; 1 << 16];
        while f.write_all(&chunk).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Whether a datagram to `eip` reaches the instance (three tries).
fn reaches(t: &Topology, eip: Ipv4Addr) -> bool {
    use integration_tests::{
        netns::in_netns,
        sockets::{sa, udp_socket},
    };
    let server = in_netns(&t.instance.ns, || {
        std::net::UdpSocket::bind(sa(Ipv4Addr::UNSPECIFIED, 7001)).unwrap()
    });
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let mut buf = [0u8; 16];
    (0..3).any(|_| {
        client.send_to(b"ping", sa(eip, 7001)).unwrap();
        server.recv_from(&mut buf).is_ok()
    })
}

/// Issue #10, point 5, with groups pipelined (applied to the datapath
/// while the group before commits): a commit that fails (the disk is
/// full) is undone in memory and in the datapath, so memory, datapath and
/// store agree; the next agent finds nothing to rewrite.
#[test]
fn a_commit_that_fails_is_undone_in_memory_and_in_the_datapath() {
    require_root();
    let t = Topology::new();
    let home = AgentHome::new(&t.gw_public.ns);
    let disk = Tmpfs::mount(&home.state, "32m");
    let agent = Agent::on_in(&home, &t, &[]);
    let api = agent.client();
    agent.primary_nat("eni-1", t.instance.addr, t.eip);
    assert!(reaches(&t, t.eip), "translated before");
    let before = api.state().unwrap();

    disk.fill("filler");
    // Applied to the datapath before its commit, which fails: its first
    // event takes the EIP away from the instance.
    let mut events = vec![Event::Disassociate { eip: t.eip }];
    events.extend(pairs(0, 5_000));
    let e = api
        .batch(&Batch {
            events,
            if_generation: None,
        })
        .expect_err("the disk is full");
    assert!(e.to_string().contains("recording the change failed"), "{e}");
    // Undone in the datapath: the EIP still reaches the instance.
    assert!(
        reaches(&t, t.eip),
        "the failed batch is out of the datapath"
    );
    // Undone in memory: the EIP is still associated there (else this would
    // be refused as unknown), and this write is recorded before it is
    // applied, so its failure leaves the datapath alone.
    let e = api
        .event(&Event::Disassociate { eip: t.eip })
        .expect_err("the store refuses writes after an I/O error");
    assert!(
        e.api().is_some_and(|a| a.rule.is_none()),
        "not a refusal: {e}"
    );
    assert!(reaches(&t, t.eip));
    assert!(
        agent.log_text().contains("groups undone"),
        "{}",
        agent.log_text()
    );
    drop(agent);

    std::fs::remove_file(home.state.join("filler")).unwrap();
    let agent = Agent::on_in(&home, &t, &[]);
    assert_eq!(agent.client().state().unwrap(), before);
    assert!(
        agent.log_text().contains(" 0 entries written"),
        "the datapath held what the store holds: {}",
        agent.log_text()
    );
    assert!(reaches(&t, t.eip));
}
