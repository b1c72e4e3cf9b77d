//! `eip-nat top`, end to end: a real agent in network namespaces, real UDP
//! at known rates through the gateway (to an EIP, echoed back by the
//! instance, and to a private address the public side may not reach), and
//! the real binary's `top --once` screen read back: the EIP's packets and
//! bits per second both ways, 0 for an EIP without traffic, the drop rate
//! of `drop_public_unlisted`, the generation lag, the filter.

use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use eip_nat::{api::TopQuery, top::screen::row};
use integration_tests::{
    agent::Agent,
    netns::{in_netns, ns_sh, Topology},
    require_root,
    sockets::{sa, send_at_rate, udp_socket},
};

/// An EIP that carries nothing.
const QUIET: &str = "203.0.113.11";
/// A private address behind the gateway, with no EIP: the public side may
/// not reach it (`drop_public_unlisted`).
const UNLISTED: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 50);
/// IPv4 bytes of one datagram: header, UDP header, 64 bytes of payload.
const DATAGRAM: f64 = 20.0 + 8.0 + 64.0;

/// A number as `top` prints it: `200.0`, `147.2k`, `1.3M`.
fn si(word: &str) -> f64 {
    let (n, scale) = match word.chars().last() {
        Some('k') => (&word[..word.len() - 1], 1e3),
        Some('M') => (&word[..word.len() - 1], 1e6),
        Some('G') => (&word[..word.len() - 1], 1e9),
        _ => (word, 1.0),
    };
    n.parse::<f64>()
        .unwrap_or_else(|_| panic!("{word:?} is no number"))
        * scale
}

fn near(measured: f64, expected: f64, tolerance: f64) -> bool {
    (measured - expected).abs() <= expected * tolerance
}

#[test]
fn top_shows_the_rates_of_real_traffic() {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &[]);
    agent.nat(&t.eip.to_string(), &t.instance.addr.to_string());
    agent.nat(QUIET, "10.200.0.11");
    ns_sh(
        &t.internet.ns,
        &[
            "ip",
            "route",
            "add",
            "10.200.0.0/24",
            "via",
            &t.gw_public.addr.to_string(),
        ],
    );

    // The instance echoes every datagram: translated out, counted.
    let server = in_netns(&t.instance.ns, || {
        UdpSocket::bind(sa(Ipv4Addr::UNSPECIFIED, 7000)).unwrap()
    });
    server
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let to_eip = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let to_unlisted = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let stop = AtomicBool::new(false);
    let (sent, echoed, knocked) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let (eip_rate, drop_rate) = (200, 50);

    let (screen, sent_rate, echo_rate, knock_rate, filtered) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 128];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    server.send_to(&buf[..n], from).unwrap();
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // The echoes come back to this socket, where nobody reads them.
        s.spawn(|| send_at_rate(&to_eip, sa(t.eip, 7000), eip_rate, &stop, &sent));
        s.spawn(|| send_at_rate(&to_unlisted, sa(UNLISTED, 9), drop_rate, &stop, &knocked));
        // Under way before the first sample.
        std::thread::sleep(Duration::from_millis(1500));
        let counts = || [&sent, &echoed, &knocked].map(|c| c.load(Ordering::Relaxed) as f64);
        let (before, started) = (counts(), Instant::now());
        let screen = agent.cli_ok(&["top", "--once", "--interval", "2s", "--width", "130"]);
        let (after, seconds) = (counts(), started.elapsed().as_secs_f64());
        let filtered =
            agent.cli_ok(&["top", "--once", "--interval", "300ms", "--filter", "113.11"]);
        stop.store(true, Ordering::Relaxed);
        let rate = |i: usize| (after[i] - before[i]) / seconds;
        (screen, rate(0), rate(1), rate(2), filtered)
    });
    println!("{screen}");
    println!(
        "sent {sent_rate:.1}/s to the EIP, {echo_rate:.1}/s echoed, {knock_rate:.1}/s to an \
         unlisted address"
    );
    assert!(sent_rate > 100.0 && echo_rate > 100.0, "the traffic flowed");

    let words = row(&screen, &t.eip.to_string()).unwrap_or_else(|| panic!("no EIP row:\n{screen}"));
    let eni = format!("eni-{}", t.instance.addr);
    assert_eq!(words[1..3], [eni.as_str(), "nat"], "{screen}");
    let [in_pps, out_pps, pps, in_bps, out_bps, bps] = [3, 4, 5, 6, 7, 8].map(|i| si(words[i]));
    // The agent's two readings are 2 s apart inside the time measured
    // here; the sender keeps its average rate.
    assert!(
        near(in_pps, sent_rate, 0.25),
        "in {in_pps}/s, sent {sent_rate}/s\n{screen}"
    );
    assert!(
        near(out_pps, echo_rate, 0.25),
        "out {out_pps}/s, echoed {echo_rate}/s\n{screen}"
    );
    assert!(near(pps, in_pps + out_pps, 0.01), "{screen}");
    // Each datagram is 92 IPv4 bytes both ways.
    assert!(near(in_bps, in_pps * DATAGRAM * 8.0, 0.01), "{screen}");
    assert!(near(out_bps, out_pps * DATAGRAM * 8.0, 0.01), "{screen}");
    assert!(near(bps, in_bps + out_bps, 0.01), "{screen}");

    let quiet = row(&screen, QUIET).unwrap_or_else(|| panic!("no row of {QUIET}:\n{screen}"));
    assert_eq!(quiet[3..], ["0.0"; 6], "no traffic, no rate\n{screen}");
    // Sorted by total bits per second, largest first.
    let order: Vec<usize> = [t.eip.to_string(), QUIET.to_string()]
        .iter()
        .map(|e| {
            screen
                .lines()
                .position(|l| l.contains(&format!(" {e} ")))
                .unwrap()
        })
        .collect();
    assert!(order[0] < order[1], "the busy EIP first\n{screen}");

    let drops = row(&screen, "inbound").unwrap_or_else(|| panic!("no drop row:\n{screen}"));
    assert_eq!(drops[1], "drop_public_unlisted", "{screen}");
    let drop_pps = si(drops[2]);
    assert!(
        near(drop_pps, knock_rate, 0.25),
        "drops {drop_pps}/s, sent {knock_rate}/s\n{screen}"
    );

    let g = agent.client().generation().unwrap();
    assert!(
        screen.contains(&format!(
            "generation {}, datapath at {} (lag 0)",
            g.generation, g.applied_generation
        )),
        "{screen}"
    );

    // A query the endpoint does not take is refused as the API refuses.
    let (status, body) = agent
        .client()
        .request(hyper::Method::GET, "/v1/top?sort=sideways", None)
        .unwrap();
    assert_eq!(status, 400);
    let e: eip_nat::api::ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(e.error.kind, eip_nat::api::ErrorKind::Malformed, "{e:?}");

    // --filter: only the quiet EIP's row.
    assert!(row(&filtered, QUIET).is_some(), "{filtered}");
    assert!(row(&filtered, &t.eip.to_string()).is_none(), "{filtered}");
    assert!(
        filtered.contains("EIPs: 1 shown, 1 matched of 2"),
        "{filtered}"
    );
}

/// `GET /v1/top` at 100,000 associations: the first answer reads the
/// store's rows and every counter, the next ones (same generation) only
/// the counters. Times printed; docs/operating.md quotes them.
#[test]
fn top_of_100_000_associations() {
    require_root();
    const N: u32 = 100_000;
    let t = Topology::new();
    let agent = Agent::with_associations(&t, N);
    let api = agent.client();
    let query = TopQuery::default();
    let mut times = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let top = api.top(&query).unwrap();
        times.push(started.elapsed());
        assert_eq!(top.associations, u64::from(N));
        assert_eq!(top.eips.len(), TopQuery::DEFAULT_N);
    }
    let filtered = api
        .top(&TopQuery {
            filter: Some("eni-many-99999".into()),
            ..TopQuery::default()
        })
        .unwrap();
    assert_eq!(filtered.matched, 1);
    assert_eq!(filtered.eips[0].eni, "eni-many-99999");
    println!(
        "{N} associations, {} CPUs: GET /v1/top took {times:?} (the first reads the store's rows)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let best = times[1..].iter().min().unwrap();
    assert!(
        *best < Duration::from_secs(1),
        "a top of {N} associations took {best:?}"
    );
}

/// A tmux server of the test's own (its own socket) with one window
/// running a command; killed when dropped, on failure too.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Self {
        let tmux = Self {
            socket: format!("eip-nat-top-{}", std::process::id()),
        };
        let ok = tmux
            .run(&[
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "120",
                "-y",
                "20",
                command,
            ])
            .status
            .success();
        assert!(
            ok,
            "tmux new-session: is tmux installed (cargo xtask test installs it)?"
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Sends keys, as tmux names them (`s`, `Enter`, `Escape`), or text
    /// with `-l`.
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success(), "send-keys {keys:?}");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Waits until the screen shows what `ready` wants; returns it.
    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "waiting for {what}:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The live view in a real terminal (tmux): `s` sorts by the next
/// column, `/` types a filter that the screen follows, Enter keeps it; an
/// agent that goes away is an error line, not an exit; `q` quits with
/// status 0 and leaves the terminal as it was (the alternate screen left).
#[test]
fn the_live_view_takes_its_keys_and_restores_the_terminal() {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &[]);
    agent.nat(&t.eip.to_string(), &t.instance.addr.to_string());
    agent.nat(QUIET, "10.200.0.11");
    let command = format!(
        "echo before top; {} --socket {} top --interval 300ms; echo top exited $?; sleep 60",
        integration_tests::agent::binary().display(),
        agent.socket.display()
    );
    let tmux = Tmux::start(&command);
    let busy = t.eip.to_string();
    let shown = |s: &str, eip: &str| row(s, eip).is_some();
    tmux.wait_for("the first screen", |s| {
        s.contains("sort: total bit/s") && shown(s, &busy) && shown(s, QUIET)
    });
    tmux.keys(&["s"]);
    tmux.wait_for("the next sort column", |s| s.contains("sort: in bit/s"));
    tmux.keys(&["/"]);
    tmux.wait_for("the filter prompt", |s| {
        s.contains("(Enter applies, Esc cancels)")
    });
    tmux.keys(&["-l", "113.11"]);
    tmux.wait_for("the rows the typed filter matches", |s| {
        shown(s, QUIET) && !shown(s, &busy)
    });
    tmux.keys(&["Enter"]);
    tmux.wait_for("the filter kept, from the agent", |s| {
        s.contains("filter: \"113.11\"") && s.contains("EIPs: 1 shown, 1 matched of 2")
    });

    // The agent goes: the view says so and stays.
    assert!(agent.stop().success());
    tmux.wait_for("the error line", |s| {
        s.contains("error: cannot reach the agent")
    });

    tmux.keys(&["q"]);
    let after = tmux.wait_for("top to exit", |s| s.contains("top exited"));
    assert!(after.contains("top exited 0"), "{after}");
    assert!(
        after.contains("before top"),
        "the terminal as it was:\n{after}"
    );
    assert!(
        !after.contains("eip-nat top ·"),
        "the view is gone:\n{after}"
    );
}
