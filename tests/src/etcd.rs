//! A real etcd cluster (Debian's `etcd-server`) for the fleet tests, in a
//! network namespace of its own: its members listen on that namespace's
//! loopback (peers, and the test's own `etcdctl`) and on the addresses of
//! veths to the gateways' namespaces (the agents), so nothing of it is
//! reachable from the host. Each member has its own ports and a temporary
//! data directory; every member is killed and the directory removed when
//! the guard is dropped, on success and on panic alike.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use std::sync::Arc;

use crate::{
    agent::{Agent, AgentHome},
    netns::{veth, End, Namespaces, Topology},
    require_root,
    sockets::{sa, udp_socket},
};

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

pub struct Member {
    pub name: String,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
}

/// TLS for etcd's client URLs (https, clients must present a certificate
/// signed by `ca`), and the client certificate the test's `etcdctl` uses.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub struct Etcd {
    /// The namespace the members run in.
    pub ns: String,
    /// Addresses the members listen on for clients besides loopback.
    pub listen: Vec<Ipv4Addr>,
    pub members: Vec<Member>,
    dir: PathBuf,
    initial_cluster: String,
    tls: Option<EtcdTls>,
    /// `user:password` for the test's `etcdctl`, once authentication is on.
    pub ctl_user: Option<String>,
}

impl Etcd {
    /// Starts `nodes` members in `ns`, listening for clients on loopback and
    /// on `listen`, and waits until the cluster answers.
    pub fn start(ns: &str, nodes: usize, listen: &[Ipv4Addr]) -> Self {
        Self::start_with(ns, nodes, listen, None)
    }

    /// [`Etcd::start`], with TLS on the client URLs if `tls` is given.
    pub fn start_with(ns: &str, nodes: usize, listen: &[Ipv4Addr], tls: Option<EtcdTls>) -> Self {
        let dir = std::env::temp_dir().join(format!("eip-nat-etcd-{ns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let members: Vec<Member> = (0..nodes)
            .map(|i| Member {
                name: format!("n{i}"),
                child: None,
                client_port: CLIENT_PORT + 10 * i as u16,
                peer_port: PEER_PORT + 10 * i as u16,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Self {
            ns: ns.to_string(),
            listen: listen.to_vec(),
            members,
            dir,
            initial_cluster,
            tls,
            ctl_user: None,
        };
        for i in 0..nodes {
            etcd.spawn(i);
        }
        etcd.wait_healthy(Duration::from_secs(20));
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let scheme = self.scheme();
        let mut clients = vec![format!("{scheme}://127.0.0.1:{}", m.client_port)];
        clients.extend(
            self.listen
                .iter()
                .map(|a| format!("{scheme}://{a}:{}", m.client_port)),
        );
        let tls: Vec<String> = match &self.tls {
            None => Vec::new(),
            Some(t) => vec![
                format!("--cert-file={}", t.server_cert.display()),
                format!("--key-file={}", t.server_key.display()),
                format!("--trusted-ca-file={}", t.ca.display()),
                "--client-cert-auth".into(),
            ],
        };
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcd"])
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", clients.join(",")))
            .arg(format!(
                "--advertise-client-urls={scheme}://127.0.0.1:{}",
                m.client_port
            ))
            .args(&tls)
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=eip-nat-test")
            // A batch of the agent is one transaction.
            .args(["--max-txn-ops=100000", "--max-request-bytes=33554432"])
            // Quick elections: the node-failure test waits for one.
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run etcd (Debian's etcd-server; cargo xtask test installs it)");
        self.members[i].child = Some(child);
    }

    /// The client URLs of every member at `addr` (one of `listen`).
    pub fn endpoints(&self, addr: Ipv4Addr) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://{addr}:{}", self.scheme(), m.client_port))
            .collect()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `--etcd-endpoint URL` for each member, for an agent that reaches
    /// the cluster at `addr`.
    pub fn agent_args(&self, addr: Ipv4Addr, prefix: &str) -> Vec<String> {
        let mut args = vec!["--store".into(), "etcd".into()];
        for e in self.endpoints(addr) {
            args.extend(["--etcd-endpoint".into(), e]);
        }
        args.extend(["--etcd-prefix".into(), prefix.into()]);
        args
    }

    fn loopback_endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl ARGS…` against the running members; its output, or the
    /// error.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcdctl"])
            .arg(format!("--endpoints={}", self.loopback_endpoints()))
            .args(["--command-timeout=3s", "--dial-timeout=2s"]);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        if let Some(u) = &self.ctl_user {
            cmd.arg(format!("--user={u}"));
        }
        let out = cmd
            .args(args)
            .output()
            .expect("run etcdctl (Debian's etcd-client)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The cluster's current revision.
    pub fn revision(&self) -> u64 {
        let out = self
            .ctl(&[
                "get",
                "/",
                "--prefix",
                "--keys-only",
                "--limit=1",
                "-w",
                "json",
            ])
            .expect("etcdctl get");
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl's JSON");
        v["header"]["revision"].as_u64().expect("a revision")
    }

    /// Waits until every running member answers.
    pub fn wait_healthy(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            match self.ctl(&["endpoint", "health"]) {
                Ok(_) => return,
                Err(e) if start.elapsed() > timeout => {
                    panic!(
                        "etcd did not become healthy in {timeout:?}: {e}\n{}",
                        self.logs()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The index of the member that leads the cluster now.
    pub fn leader(&self) -> usize {
        let out = self
            .ctl(&["endpoint", "status", "-w", "json"])
            .expect("etcdctl endpoint status");
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl's JSON");
        let leading = v
            .as_array()
            .expect("one status per endpoint")
            .iter()
            .find(|e| e["Status"]["leader"] == e["Status"]["header"]["member_id"])
            .expect("a member that leads");
        let endpoint = leading["Endpoint"].as_str().expect("its endpoint");
        self.members
            .iter()
            .position(|m| endpoint.ends_with(&format!(":{}", m.client_port)))
            .expect("a member of ours")
    }

    /// Kills member `i` (SIGKILL): its data directory stays.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Every member's log, for a failure's message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                format!("── etcd {} ──\n{log}", m.name)
            })
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A namespace for etcd joined by a veth to each of `gateways` (namespace
/// names): etcd at 10.250.<i>.1, gateway i at 10.250.<i>.2. Returns the
/// namespace and, per gateway, the address it reaches etcd at.
pub fn link_to_gateways(namespaces: &mut Namespaces, gateways: &[&str]) -> (String, Vec<Ipv4Addr>) {
    let ns = namespaces.add("etcd");
    let mut addrs = Vec::new();
    for (i, gw) in gateways.iter().enumerate() {
        let i = u8::try_from(i).unwrap();
        let end = |ns: &str, side: u8| End {
            ns: ns.to_string(),
            ifname: format!(
                "{}{}{i}",
                namespaces.prefix,
                ["", "e", "k"][usize::from(side)]
            ),
            mac: [0x02, 0xec, 0, 0, side, i],
            addr: Ipv4Addr::new(10, 250, i, side),
            prefix_len: 24,
        };
        let (here, there) = (end(&ns, 1), end(gw, 2));
        veth(&here, &there);
        addrs.push(here.addr);
    }
    (ns, addrs)
}

/// Gateways, each the standard topology (its own internet and instance),
/// sharing one etcd.
pub struct Fleet {
    pub etcd: Etcd,
    /// Per gateway, the address it reaches etcd at.
    pub addrs: Vec<Ipv4Addr>,
    pub topologies: Vec<Topology>,
    pub prefix: String,
}

impl Fleet {
    pub fn new(gateways: usize, members: usize) -> Self {
        Self::new_with(gateways, members, |_| None)
    }

    /// [`Fleet::new`], with etcd's TLS made by `tls` from the addresses
    /// etcd listens on for the gateways.
    pub fn new_with(
        gateways: usize,
        members: usize,
        tls: impl FnOnce(&[Ipv4Addr]) -> Option<EtcdTls>,
    ) -> Self {
        require_root();
        let mut topologies: Vec<Topology> = (0..gateways).map(|_| Topology::new()).collect();
        let gw_ns: Vec<String> = topologies.iter().map(|t| t.gw_public.ns.clone()).collect();
        let names: Vec<&str> = gw_ns.iter().map(String::as_str).collect();
        let (ns, addrs) = link_to_gateways(&mut topologies[0].namespaces, &names);
        let etcd = Etcd::start_with(&ns, members, &addrs, tls(&addrs));
        Self {
            etcd,
            addrs,
            topologies,
            prefix: format!("/eip-nat-test-{}", std::process::id()),
        }
    }

    pub fn agent_args(&self, i: usize) -> Vec<String> {
        self.etcd.agent_args(self.addrs[i], &self.prefix)
    }

    /// Starts the agent of gateway `i` with a new home and waits until it
    /// has started; it leaves its datapath running when it stops.
    pub fn start(&self, i: usize) -> Agent {
        self.start_in(AgentHome::new(&self.topologies[i].gw_public.ns), i)
    }

    /// Starts the agent of gateway `i` in `home` (an earlier agent's: its
    /// local copy, and its datapath).
    pub fn start_in(&self, home: Arc<AgentHome>, i: usize) -> Agent {
        self.start_in_with(home, i, &[])
    }

    /// [`Fleet::start_in`] with `extra` arguments for the agent.
    pub fn start_in_with(&self, home: Arc<AgentHome>, i: usize, extra: &[&str]) -> Agent {
        let mut args = self.agent_args(i);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = &self.topologies[i];
        Agent::start_in(
            home,
            &t.gw_public.ns,
            &t.gw_public.ifname,
            &t.gw_private.ifname,
            &args,
        )
    }
}

/// A datagram from the topology's internet to its EIP reaches the
/// instance's private address (translated by that gateway's datapath).
pub fn translated(t: &Topology, port: u16) -> bool {
    let inst = udp_socket(&t.instance.ns, sa(t.instance.addr, port));
    inst.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let inet = udp_socket(&t.internet.ns, sa(t.internet.addr, 0));
    inet.send_to(b"fleet", sa(t.eip, port)).unwrap();
    let mut buf = [0u8; 64];
    matches!(inst.recv_from(&mut buf), Ok((5, from)) if from.ip() == std::net::IpAddr::V4(t.internet.addr))
}
