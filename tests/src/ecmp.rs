//! Gateways side by side behind ECMP (issue #12, active-active):
//!
//! ```text
//!                    ┌─ 198.51.10i.1 [gateway i] 10.21i.0.1 ─┐
//!  internet ─ ECMP ──┼─ …                                    ├── ECMP ─ instance
//!  198.51.99.2/32    └─ one veth pair per gateway on each side┘   10.200.0.10/32
//! ```
//!
//! The internet routes the EIP pool over every gateway (multipath, hashed
//! on L4 ports), and 203.0.113.128/26 through gateway 1 only and
//! 203.0.113.192/26 through gateway 2 only (to time one gateway); the
//! instance's default route is multipath over every gateway's private
//! address. Each gateway routes the internet host and the instance's
//! address over its own links, so an ENI's location needs no next hop of
//! any one gateway.

use std::net::Ipv4Addr;

use crate::{
    netns::{in_netns, ns_sh, veth, End, Namespaces},
    rig::PassProgram,
};

pub const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 99, 2);
pub const INSTANCE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);

pub struct Gateway {
    pub ns: String,
    pub public: End,
    pub private: End,
    /// The internet's end of the public link.
    pub upstream: End,
}

pub struct Ecmp {
    pub internet: String,
    pub instance: String,
    pub gateways: Vec<Gateway>,
    pub peer_programs: Vec<PassProgram>,
    pub namespaces: Namespaces,
}

impl Ecmp {
    pub fn new(n: u8) -> Self {
        let mut namespaces = Namespaces::new();
        let internet = namespaces.add("inet");
        let instance = namespaces.add("inst");
        let mut gateways = Vec::new();
        let mut far_ends = Vec::new();
        for i in 0..n {
            let ns = namespaces.add(&format!("gw{i}"));
            let end = |ns: &str, kind: &str, last: u8, addr: Ipv4Addr| End {
                ns: ns.to_string(),
                ifname: format!("{}{kind}{i}", namespaces.prefix),
                mac: [0x02, 0xe0 + i, 0, 0, 0, last],
                addr,
                prefix_len: 24,
            };
            let upstream = end(&internet, "u", 1, Ipv4Addr::new(198, 51, 100 + i, 2));
            let public = end(&ns, "p", 2, Ipv4Addr::new(198, 51, 100 + i, 1));
            let private = end(&ns, "v", 3, Ipv4Addr::new(10, 210 + i, 0, 1));
            let downstream = end(&instance, "n", 4, Ipv4Addr::new(10, 210 + i, 0, 2));
            veth(&upstream, &public);
            veth(&private, &downstream);
            for s in [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.all.rp_filter=0",
                &format!("net.ipv4.conf.{}.send_redirects=0", private.ifname),
                &format!("net.ipv4.conf.{}.rp_filter=0", private.ifname),
            ] {
                ns_sh(&ns, &["sysctl", "-qw", s]);
            }
            let via = |e: &End| e.addr.to_string();
            ns_sh(
                &ns,
                &[
                    "ip",
                    "route",
                    "add",
                    &format!("{INTERNET}/32"),
                    "via",
                    &via(&upstream),
                ],
            );
            ns_sh(
                &ns,
                &[
                    "ip",
                    "route",
                    "add",
                    &format!("{INSTANCE}/32"),
                    "via",
                    &via(&downstream),
                ],
            );
            far_ends.push(upstream.clone());
            far_ends.push(downstream);
            gateways.push(Gateway {
                ns,
                public,
                private,
                upstream,
            });
        }
        ns_sh(
            &internet,
            &["ip", "addr", "add", &format!("{INTERNET}/32"), "dev", "lo"],
        );
        ns_sh(
            &instance,
            &["ip", "addr", "add", &format!("{INSTANCE}/32"), "dev", "lo"],
        );
        for ns in [&internet, &instance] {
            ns_sh(
                ns,
                &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"],
            );
            ns_sh(ns, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
            ns_sh(ns, &["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]);
        }
        let mut ecmp = Self {
            internet,
            instance,
            gateways,
            peer_programs: Vec::new(),
            namespaces,
        };
        let up: Vec<usize> = (0..usize::from(n)).collect();
        ecmp.route_pool(&up);
        let mut default = vec!["ip", "route", "add", "default"];
        let hops: Vec<(String, String)> = ecmp
            .gateways
            .iter()
            .zip(far_ends.iter().skip(1).step_by(2))
            .map(|(g, down)| (g.private.addr.to_string(), down.ifname.clone()))
            .collect();
        for (via, dev) in &hops {
            default.extend(["nexthop", "via", via, "dev", dev]);
        }
        ns_sh(&ecmp.instance, &default);
        for (k, prefix) in [(1, "203.0.113.128/26"), (2, "203.0.113.192/26")] {
            if let Some(g) = ecmp.gateways.get(k) {
                let (via, dev) = (g.public.addr.to_string(), g.upstream.ifname.clone());
                ns_sh(
                    &ecmp.internet,
                    &["ip", "route", "add", prefix, "via", &via, "dev", &dev],
                );
            }
        }
        // The fast path redirects into the gateways' veths: their peers
        // need an XDP program to receive (see `Topology`).
        ecmp.peer_programs = far_ends
            .iter()
            .map(|end| {
                in_netns(&end.ns, || PassProgram::attach(&end.ifname))
                    .unwrap_or_else(|e| panic!("xdp_pass on {}: {e:?}", end.ifname))
            })
            .collect();
        ecmp
    }

    /// The internet's route for the EIP pool: multipath over the gateways
    /// `up` (a router's health check removing a dead one's next hop).
    pub fn route_pool(&self, up: &[usize]) {
        let mut args = vec!["ip", "route", "replace", "203.0.113.0/24"];
        let hops: Vec<(String, String)> = up
            .iter()
            .map(|i| {
                let g = &self.gateways[*i];
                (g.public.addr.to_string(), g.upstream.ifname.clone())
            })
            .collect();
        for (via, dev) in &hops {
            args.extend(["nexthop", "via", via, "dev", dev]);
        }
        ns_sh(&self.internet, &args);
    }
}
