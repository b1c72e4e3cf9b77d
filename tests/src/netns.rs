//! Network namespaces joined by veth pairs, created by a guard that deletes
//! them by name when dropped, on success and on panic alike.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::rig::PassProgram;

/// Runs `ip` (or any command) and panics with its stderr if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip netns exec NS ARGS…`, panicking on failure.
/// `ping -c count` from `ns` to `addr`, 0.2 s apart, 1 s for each reply.
pub fn ping(ns: &str, addr: &str, count: u32) -> std::process::Output {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-q", "-i", "0.2", "-W", "1", "-c",
        ])
        .arg(count.to_string())
        .arg(addr)
        .output()
        .expect("run ping")
}

pub fn ns_sh(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full);
}

/// Starts `program args…` in `ns` (`ip netns exec`, which execs it: the
/// child is the program), its standard output and error written to `log`.
pub fn spawn_in<I, S>(
    ns: &str,
    program: impl AsRef<std::ffi::OsStr>,
    args: I,
    log: &std::path::Path,
) -> std::process::Child
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let program = program.as_ref();
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {} in {ns}: {e}", program.display()))
}

/// `ip netns exec NS ARGS…`'s standard output, panicking on failure.
pub fn ns_output(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A prefix unique to this process and call, short enough that
/// prefix + 3 characters fits an interface name (15 bytes).
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("en{:x}{:x}", std::process::id() & 0xfffff, n)
}

/// Runs `f` on a thread that has entered namespace `ns`. Sockets created in
/// `f` stay in `ns` and may be returned and used from any thread.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; this thread alone changes netns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

/// Interface index of `ifname` inside `ns`.
pub fn ifindex(ns: &str, ifname: &str) -> u32 {
    let c = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: valid C string.
    let i = in_netns(ns, || unsafe { libc::if_nametoindex(c.as_ptr()) });
    assert_ne!(i, 0, "{ifname} not found in {ns}");
    i
}

/// Owns a set of namespaces; deletes them (and so their veths) on drop.
pub struct Namespaces {
    pub prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    pub fn new() -> Self {
        Self {
            prefix: unique_prefix(),
            names: Vec::new(),
        }
    }

    /// Creates `<prefix>-<role>` with loopback up, IPv6 off (no DAD or
    /// router-solicitation noise), and returns its name.
    pub fn add(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        sh(&["ip", "netns", "add", &name]);
        self.names.push(name.clone());
        ns_sh(&name, &["ip", "link", "set", "lo", "up"]);
        ns_sh(
            &name,
            &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
        );
        ns_sh(
            &name,
            &["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"],
        );
        name
    }
}

impl Namespaces {
    /// An interface end in `ns` named `<prefix><suffix>`, with MAC
    /// 02:<family>:00:00:00:<last> and address `addr`/24.
    pub fn end(&self, ns: &str, suffix: &str, family: u8, last: u8, addr: [u8; 4]) -> End {
        End {
            ns: ns.to_string(),
            ifname: format!("{}{suffix}", self.prefix),
            mac: [0x02, family, 0, 0, 0, last],
            addr: Ipv4Addr::from(addr),
            prefix_len: 24,
        }
    }
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// One end of a veth pair.
#[derive(Clone, Debug)]
pub struct End {
    pub ns: String,
    pub ifname: String,
    pub mac: [u8; 6],
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Creates a veth pair between two namespaces with fixed MACs and addresses,
/// brings both up and installs permanent neighbour entries both ways (no ARP
/// in the measurements). Checksum offload is turned off on both ends: a
/// packet a local socket sends would otherwise carry only a partial checksum
/// (CHECKSUM_PARTIAL) that an XDP rewrite cannot fix, since no NIC finishes
/// it on a veth.
pub fn veth(a: &End, b: &End) {
    sh(&[
        "ip",
        "link",
        "add",
        &a.ifname,
        "netns",
        &a.ns,
        "address",
        &mac_str(a.mac),
        "type",
        "veth",
        "peer",
        "name",
        &b.ifname,
        "netns",
        &b.ns,
        "address",
        &mac_str(b.mac),
    ]);
    for (me, peer) in [(a, b), (b, a)] {
        bring_up(me);
        permanent_neighbour(me, peer);
    }
}

/// Gives `e` its address, turns its checksum offload off and brings it up.
pub fn bring_up(e: &End) {
    let cidr = format!("{}/{}", e.addr, e.prefix_len);
    ns_sh(&e.ns, &["ip", "addr", "add", &cidr, "dev", &e.ifname]);
    ns_sh(
        &e.ns,
        &["ethtool", "-K", &e.ifname, "tx", "off", "rx", "off"],
    );
    ns_sh(&e.ns, &["ip", "link", "set", &e.ifname, "up"]);
}

/// A permanent neighbour entry on `me` for `peer`: no ARP in the tests.
fn permanent_neighbour(me: &End, peer: &End) {
    let (addr, mac) = (peer.addr.to_string(), mac_str(peer.mac));
    ns_sh(
        &me.ns,
        &[
            "ip",
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &mac,
            "dev",
            &me.ifname,
            "nud",
            "permanent",
        ],
    );
}

/// The standard three-namespace topology of the tests and the demo:
///
/// ```text
///  internet 198.51.100.2 ── 198.51.100.1 [gateway] 10.200.0.1 ── 10.200.0.10 instance
///           (pubif)              (gw-pub)     (gw-priv)          (privif)
/// ```
///
/// The internet routes the EIP range 203.0.113.0/24 to the gateway; the
/// instance's default route is the gateway.
pub struct Topology {
    pub internet: End,
    pub gw_public: End,
    pub gw_private: End,
    pub instance: End,
    pub eip: Ipv4Addr,
    /// `xdp_pass` on the internet's and the instance's ends.
    pub peer_programs: Vec<PassProgram>,
    // Last, so the namespaces go after everything that lives in them.
    pub namespaces: Namespaces,
}

impl Topology {
    pub fn new() -> Self {
        let mut namespaces = Namespaces::new();
        let inet = namespaces.add("inet");
        let gw = namespaces.add("gw");
        let inst = namespaces.add("inst");
        let end = |ns: &str, suffix: &str, last: u8, addr: [u8; 4]| {
            namespaces.end(ns, suffix, 0xee, last, addr)
        };
        let internet = end(&inet, "i", 0x01, [198, 51, 100, 2]);
        let gw_public = end(&gw, "gp", 0x02, [198, 51, 100, 1]);
        let gw_private = end(&gw, "gv", 0x03, [10, 200, 0, 1]);
        let instance = end(&inst, "n", 0x04, [10, 200, 0, 10]);
        veth(&internet, &gw_public);
        veth(&gw_private, &instance);
        // The fast path redirects frames into the gateway's veths; a veth
        // delivers such frames to its peer only when the peer runs NAPI,
        // which an XDP program on the peer turns on (veth.c, veth_xdp_xmit).
        let peer_programs = [&internet, &instance]
            .map(|end| {
                in_netns(&end.ns, || PassProgram::attach(&end.ifname))
                    .unwrap_or_else(|e| panic!("xdp_pass on {}: {e:?}", end.ifname))
            })
            .into();
        ns_sh(
            &inet,
            &[
                "ip",
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                "198.51.100.1",
            ],
        );
        ns_sh(
            &inst,
            &["ip", "route", "add", "default", "via", "10.200.0.1"],
        );
        ns_sh(&gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns_sh(
            &gw,
            &["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"],
        );
        ns_sh(
            &gw,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{}.send_redirects=0", gw_private.ifname),
            ],
        );
        ns_sh(&gw, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
        ns_sh(
            &gw,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{}.rp_filter=0", gw_private.ifname),
            ],
        );
        Self {
            internet,
            gw_public,
            gw_private,
            instance,
            eip: Ipv4Addr::new(203, 0, 113, 10),
            peer_programs,
            namespaces,
        }
    }
}

/// A topology with a gateway: its public and private ends.
pub trait WithGateway {
    fn gateway(&self) -> (&End, &End);
}

impl WithGateway for Topology {
    fn gateway(&self) -> (&End, &End) {
        (&self.gw_public, &self.gw_private)
    }
}

impl WithGateway for TwoInstances {
    fn gateway(&self) -> (&End, &End) {
        (&self.gw_public, &self.gw_private)
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// Two instances behind the gateway on one L2 segment (a bridge in its own
/// namespace), for hairpin: each instance reaching the other's EIP.
///
/// ```text
///  internet ── [gateway] 10.200.0.1 ── bridge ─┬─ 10.200.0.10 instance 1
///                                              └─ 10.200.0.20 instance 2
/// ```
pub struct TwoInstances {
    pub internet: End,
    pub gw_public: End,
    pub gw_private: End,
    pub instances: [End; 2],
    pub peer_programs: Vec<PassProgram>,
    pub namespaces: Namespaces,
}

impl TwoInstances {
    pub fn new() -> Self {
        let mut namespaces = Namespaces::new();
        let p = namespaces.prefix.clone();
        let inet = namespaces.add("inet");
        let gw = namespaces.add("gw");
        let vpc = namespaces.add("vpc");
        let ns1 = namespaces.add("i1");
        let ns2 = namespaces.add("i2");
        let end = |ns: &str, suffix: &str, last: u8, addr: [u8; 4]| {
            namespaces.end(ns, suffix, 0xef, last, addr)
        };
        let internet = end(&inet, "i", 1, [198, 51, 100, 2]);
        let gw_public = end(&gw, "gp", 2, [198, 51, 100, 1]);
        let gw_private = end(&gw, "gv", 3, [10, 200, 0, 1]);
        let instances = [
            end(&ns1, "n", 4, [10, 200, 0, 10]),
            end(&ns2, "m", 5, [10, 200, 0, 20]),
        ];
        veth(&internet, &gw_public);
        ns_sh(&vpc, &["ip", "link", "add", "br0", "type", "bridge"]);
        ns_sh(&vpc, &["ip", "link", "set", "br0", "up"]);
        // Each L3 end gets a bridge port as its peer.
        for (i, e) in std::iter::once(&gw_private)
            .chain(instances.iter())
            .enumerate()
        {
            let port = format!("{p}b{i}");
            sh(&[
                "ip",
                "link",
                "add",
                &e.ifname,
                "netns",
                &e.ns,
                "address",
                &mac_str(e.mac),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &vpc,
            ]);
            ns_sh(&vpc, &["ip", "link", "set", &port, "master", "br0"]);
            ns_sh(&vpc, &["ip", "link", "set", &port, "up"]);
            bring_up(e);
        }
        for inst in &instances {
            permanent_neighbour(inst, &gw_private);
            permanent_neighbour(&gw_private, inst);
            ns_sh(
                &inst.ns,
                &["ip", "route", "add", "default", "via", "10.200.0.1"],
            );
        }
        ns_sh(
            &inet,
            &[
                "ip",
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                "198.51.100.1",
            ],
        );
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            &format!("net.ipv4.conf.{}.rp_filter=0", gw_private.ifname),
            // Hairpin leaves by the interface it came in on; the slow path
            // would otherwise tell the instance to go direct (ICMP redirect).
            "net.ipv4.conf.all.send_redirects=0",
            &format!("net.ipv4.conf.{}.send_redirects=0", gw_private.ifname),
        ] {
            ns_sh(&gw, &["sysctl", "-qw", s]);
        }
        // Frames the fast path redirects into the gateway's veths need NAPI
        // on the peers: the internet's end and the bridge port.
        let bridge_port = format!("{p}b0");
        let peer_programs = vec![
            in_netns(&inet, || PassProgram::attach(&internet.ifname)).expect("xdp_pass"),
            in_netns(&vpc, || PassProgram::attach(&bridge_port)).expect("xdp_pass"),
        ];
        Self {
            internet,
            gw_public,
            gw_private,
            instances,
            peer_programs,
            namespaces,
        }
    }
}

impl Default for TwoInstances {
    fn default() -> Self {
        Self::new()
    }
}
