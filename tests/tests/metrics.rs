//! What an operator watches, end to end: a real agent in network
//! namespaces serving `GET /metrics` on its socket and on `metrics_listen`,
//! a real Prometheus server (Debian's `prometheus`) scraping it while UDP
//! flows through an EIP, PromQL over Prometheus' HTTP API; and the log's
//! level changed while the agent runs.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Child,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::Agent,
    netns::{in_netns, spawn_in, Topology},
    require_root,
    sockets::{sa, send_at_rate, udp_socket},
};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A port nobody listens on in `ns` (its loopback) now.
fn free_port(ns: &str) -> u16 {
    in_netns(ns, || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

/// `GET path` on `127.0.0.1:port` in `ns`, HTTP/1.0: the status and body.
fn try_get(ns: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut conn = in_netns(ns, || {
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(3),
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n"
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let bad = || std::io::Error::other(format!("no HTTP answer: {answer:?}"));
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

fn http_get(ns: &str, port: u16, path: &str) -> (u16, String) {
    try_get(ns, port, path)
        .unwrap_or_else(|e| panic!("GET {path} on 127.0.0.1:{port} in {ns}: {e}"))
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of the test's own, in the gateway's namespace (where
/// the agent's `metrics_listen` is), on its loopback, with its
/// configuration and TSDB in a temporary directory. Killed, and its
/// directory removed, when dropped, on failure too.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    ns: String,
    port: u16,
}

impl Prometheus {
    fn start(ns: &str, target: SocketAddr) -> Self {
        assert!(
            std::path::Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: `cargo xtask test` installs Debian's prometheus package"
        );
        let dir =
            std::env::temp_dir().join(format!("eip-nat-prometheus-{}-{}", std::process::id(), ns));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
                 - job_name: eip-nat\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port(ns);
        let child = spawn_in(
            ns,
            PROMETHEUS,
            [
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
            ],
            &dir.join("prometheus.log"),
        );
        Self {
            child,
            dir,
            ns: ns.into(),
            port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector (`/api/v1/query`).
    fn try_query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = try_get(&self.ns, self.port, &path).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{promql}: {status} {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        self.try_query(promql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The single value of an instant query, if it has one.
    fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        let first = result.first()?;
        first["value"][1].as_str()?.parse().ok()
    }

    /// Waits until Prometheus answers and has scraped the agent.
    fn wait_scraping(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}: {}", self.log());
            }
            let up = self.try_query("up{job=\"eip-nat\"}");
            let value = up.as_ref().ok().and_then(|r| r.first()).cloned();
            if value.as_ref().and_then(|v| v["value"][1].as_str()) == Some("1") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus does not scrape the agent ({up:?}): {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // `ip netns exec` execs prometheus: the child is the server.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One sample of the exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text exposition, checking each line's shape: `# HELP`,
/// `# TYPE`, `# UNIT` or `# EOF` comments, and samples `name{labels} value`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end");
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let word = comment.split(' ').next().unwrap();
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&word),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let mut labels = BTreeMap::new();
                for pair in rest.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label in {line:?}"));
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

/// The value of the one sample named `name` whose labels include `labels`.
fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<_> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
    found.first().map(|(_, _, v)| *v)
}

/// Prometheus scrapes the agent's `metrics_listen` while UDP flows to an
/// EIP at a known rate; PromQL's `rate()` over the EIP's inbound packets
/// is that rate. The socket's `GET /metrics` has every family, the EIP's
/// counters equal to `/v1/stats`, and only the top EIP with
/// `--metrics-top-eips 1`.
#[test]
fn prometheus_scrapes_the_rate_of_an_eip() {
    require_root();
    let t = Topology::new();
    let ns = t.gw_public.ns.clone();
    let metrics_port = free_port(&ns);
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port));
    // 64 slots, 2 used: more than a 64th, so the scrape reads the
    // counters in batches (BPF_MAP_LOOKUP_BATCH), compared with /v1/stats'
    // one lookup per slot below.
    let agent = Agent::on(
        &t,
        &[
            "--metrics-listen",
            &listen.to_string(),
            "--metrics-top-eips",
            "1",
            "--max-associations",
            "64",
        ],
    );
    agent.nat(&t.eip.to_string(), &t.instance.addr.to_string());
    // A second EIP that carries nothing: left out by the top-1 limit.
    agent.nat("203.0.113.11", "10.200.0.11");

    // The metrics listener serves /metrics without a token, and nothing else.
    let (status, body) = http_get(&ns, metrics_port, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body);
    let (status, _) = http_get(&ns, metrics_port, "/v1/state");
    assert_eq!(status, 404, "metrics_listen serves /metrics only");

    let mut prometheus = Prometheus::start(&ns, listen);
    prometheus.wait_scraping();

    // The instance has a socket for the datagrams (and reads none of them).
    let _sink = udp_socket(&t.instance.ns, sa(Ipv4Addr::UNSPECIFIED, 7000));
    let client = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    let eip = t.eip;
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let per_sec = 200;
    let window = 5;
    let (measured, expected) = std::thread::scope(|s| {
        s.spawn(|| send_at_rate(&client, sa(eip, 7000), per_sec, &stop, &sent));
        let started = Instant::now();
        // Enough scrapes inside the window, all under traffic.
        std::thread::sleep(Duration::from_secs(window + 4));
        let query = format!(
            "rate(eip_nat_eip_packets_total{{eip=\"{}\",direction=\"in\"}}[{window}s])",
            t.eip
        );
        let measured = prometheus.value(&query);
        let expected = sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        (measured, expected)
    });
    let measured = measured.unwrap_or_else(|| {
        panic!(
            "no rate for {}: {:?}",
            t.eip,
            prometheus.query("eip_nat_eip_packets_total")
        )
    });
    println!("sent {expected:.0} packets/s; Prometheus measured {measured:.1}");
    assert!(
        measured > expected / 2.0 && measured < expected * 2.0,
        "Prometheus measured {measured} packets/s; {expected} were sent"
    );
    // Its label set, as scraped.
    let series = prometheus.query(&format!("eip_nat_eip_bytes_total{{eip=\"{}\"}}", t.eip));
    assert_eq!(series.len(), 2, "in and out: {series:?}");
    let m = &series[0]["metric"];
    assert_eq!(m["eni"], format!("eni-{}", t.instance.addr));
    assert_eq!(m["mode"], "nat");
    assert_eq!(
        prometheus.value("eip_nat_build_info"),
        Some(1.0),
        "build info scraped"
    );
    drop(prometheus);

    // The API socket's /metrics, traffic stopped: equal to /v1/stats.
    std::thread::sleep(Duration::from_millis(200));
    let stats = agent.stats();
    let text = agent.client().metrics().unwrap();
    let samples = parse_exposition(&text);
    let eip = t.eip.to_string();
    let eni = format!("eni-{}", t.instance.addr);
    let labels = |dir: &'static str| -> Vec<(&str, &str)> {
        vec![
            ("eip", eip.as_str()),
            ("eni", eni.as_str()),
            ("mode", "nat"),
            ("direction", dir),
        ]
    };
    let e = stats.eip(t.eip).unwrap();
    assert!(e.in_packets >= 1000, "{e:?}");
    for (name, dir, want) in [
        ("eip_nat_eip_packets_total", "in", e.in_packets),
        ("eip_nat_eip_bytes_total", "in", e.in_bytes),
        ("eip_nat_eip_packets_total", "out", e.out_packets),
        ("eip_nat_eip_bytes_total", "out", e.out_bytes),
    ] {
        assert_eq!(
            sample(&samples, name, &labels(dir)),
            Some(want as f64),
            "{name} {dir}"
        );
    }
    assert_eq!(
        sample(
            &samples,
            "eip_nat_eip_packets_total",
            &[("eip", "203.0.113.11")]
        ),
        None,
        "the EIP without traffic is left out by --metrics-top-eips 1"
    );
    let translated = stats.verdict("inbound", "translated_redirect").unwrap();
    assert_eq!(
        sample(
            &samples,
            "eip_nat_packets_total",
            &[
                ("direction", "in"),
                ("verdict", "translated_redirect"),
                ("drop", "false")
            ]
        ),
        Some(translated.packets as f64)
    );
    let g = agent.client().generation().unwrap();
    for (name, want) in [
        ("eip_nat_generation", g.generation as f64),
        ("eip_nat_applied_generation", g.applied_generation as f64),
        ("eip_nat_associations", 2.0),
        ("eip_nat_associations_capacity", 64.0),
        ("eip_nat_reconciling", 0.0),
        ("eip_nat_reconcile_seconds_count", 1.0),
    ] {
        assert_eq!(sample(&samples, name, &[]), Some(want), "{name}");
    }
    assert_eq!(
        sample(&samples, "eip_nat_build_info", &[("version", "0.1.0")]),
        Some(1.0)
    );
    // The API's request times, per route: /v1/stats was asked once above.
    assert!(
        sample(
            &samples,
            "eip_nat_api_request_seconds_count",
            &[("method", "GET"), ("route", "/v1/stats"), ("code", "200")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(text.contains("# TYPE eip_nat_api_request_seconds histogram"));
    // The CLI prints the same exposition.
    let cli = agent.cli_ok(&["metrics"]);
    assert!(cli.contains("# TYPE eip_nat_eip_packets counter"), "{cli}");
}

/// `eip-nat log-level debug` turns on the agent's debug lines (an event's
/// is logged), `info` turns them off again; a bad level is refused and
/// changes nothing.
#[test]
fn the_log_level_changes_while_the_agent_runs() {
    require_root();
    let t = Topology::new();
    let agent = Agent::on(&t, &[]);
    let debug_lines = |agent: &Agent| {
        agent
            .log_text()
            .lines()
            .filter(|l| l.contains("DEBUG") && l.contains("event: CreateEni"))
            .count()
    };
    let create = |n: u8| {
        agent.cli_ok(&[
            "eni",
            "create",
            "--eni",
            &format!("eni-{n}"),
            "--kind",
            "secondary",
            "--primary-ip",
            &format!("10.200.1.{n}"),
        ]);
    };
    assert_eq!(agent.cli_ok(&["log-level"]).trim(), "info");
    create(1);
    assert_eq!(debug_lines(&agent), 0, "{}", agent.log_text());

    assert_eq!(agent.cli_ok(&["log-level", "debug"]).trim(), "debug");
    create(2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while debug_lines(&agent) == 0 {
        assert!(
            Instant::now() < deadline,
            "no debug line: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(debug_lines(&agent), 1);

    let bad = agent.cli(&["log-level", "loud"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a log filter"),
        "{bad:?}"
    );
    let level = agent.client().log_level().unwrap();
    assert_eq!(level.level, "debug", "a refused level changes nothing");

    let json = agent.cli_ok(&["--json", "log-level", "info"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["level"], "info");
    create(3);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(debug_lines(&agent), 1, "{}", agent.log_text());
}

/// A scrape of 100,000 associations: its time (printed; docs/operating.md
/// quotes it), with the default top 1,000 EIPs exported and every
/// association counted; `/v1/stats`, one lookup per association, beside it.
#[test]
fn a_scrape_of_100_000_associations() {
    require_root();
    const N: u32 = 100_000;
    let t = Topology::new();
    let agent = Agent::with_associations(&t, N);
    let api = agent.client();
    let mut scrapes = Vec::new();
    let mut text = String::new();
    for _ in 0..3 {
        let started = Instant::now();
        text = api.metrics().unwrap();
        scrapes.push(started.elapsed());
    }
    let samples = parse_exposition(&text);
    assert_eq!(
        sample(&samples, "eip_nat_associations", &[]),
        Some(f64::from(N))
    );
    let per_eip = samples
        .iter()
        .filter(|(n, _, _)| n.starts_with("eip_nat_eip_"))
        .count();
    assert_eq!(per_eip, 4 * 1000, "the top 1,000 EIPs, four series each");
    let started = Instant::now();
    let stats = api.stats().unwrap();
    let stats_time = started.elapsed();
    assert_eq!(stats.eips.len(), N as usize);
    println!(
        "{N} associations, {} CPUs: GET /metrics (top 1,000) took {scrapes:?} ({} bytes); GET \
         /v1/stats (one lookup per association) {stats_time:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        text.len()
    );
    let best = scrapes.iter().min().unwrap();
    assert!(
        *best < Duration::from_secs(1),
        "a scrape of {N} associations took {best:?}"
    );
}
