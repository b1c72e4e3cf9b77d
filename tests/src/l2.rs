//! Gateways on one shared L2 uplink (issue #12, active/standby):
//!
//! ```text
//!   upstream 198.51.100.2 ──┐                     ┌── 10.200.0.2 gateway 0
//!   (203.0.113.0/24 on-link)├─ bridge, public side│
//!   gateway 0 198.51.100.10 ┤  (namespace "br")   ├── 10.200.0.3 gateway 1
//!   gateway 1 198.51.100.11 ┘                     └── 10.200.0.10 instance
//!                               bridge, private side
//! ```
//!
//! The upstream reaches the EIP pool on-link, as a router on a shared
//! segment does: it resolves each EIP by ARP, so whichever gateway answers
//! gets the traffic. Both gateways reach the instance on the private
//! bridge. Unknown-unicast flooding is off on the gateways' bridge ports:
//! a frame reaches a gateway only when the upstream addressed it to that
//! gateway's MAC (learned by the bridge), so traffic moves only when the
//! upstream's neighbour entry does.

use std::net::Ipv4Addr;

use crate::{
    netns::{bring_up, in_netns, mac_str, ns_sh, End, Namespaces},
    rig::PassProgram,
};

pub const UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const INSTANCE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
pub const EIP_POOL: &str = "203.0.113.0/24";

pub struct Gateway {
    pub ns: String,
    pub public: End,
    pub private: End,
}

pub struct SharedL2 {
    pub upstream: End,
    pub instance: End,
    pub gateways: Vec<Gateway>,
    /// The namespace holding both bridges.
    pub bridges: String,
    /// `xdp_pass` on the bridge ports (the gateways' veths redirect and
    /// transmit into them).
    pub peer_programs: Vec<PassProgram>,
    pub namespaces: Namespaces,
}

impl SharedL2 {
    pub fn new(gateways: u8) -> Self {
        let mut namespaces = Namespaces::new();
        let bridges = namespaces.add("br");
        for br in ["bpub", "bpriv"] {
            ns_sh(&bridges, &["ip", "link", "add", br, "type", "bridge"]);
            ns_sh(&bridges, &["ip", "link", "set", br, "up"]);
        }
        let upstream_ns = namespaces.add("up");
        let instance_ns = namespaces.add("inst");
        let prefix = namespaces.prefix.clone();
        let end = |ns: &str, name: String, last: u8, addr: Ipv4Addr| End {
            ns: ns.to_string(),
            ifname: name,
            mac: [0x02, 0x12, 0, 0, 0, last],
            addr,
            prefix_len: 24,
        };
        let mut ports = Vec::new();
        let upstream = end(&upstream_ns, format!("{prefix}u"), 1, UPSTREAM);
        ports.push(port(
            &bridges,
            &upstream,
            "bpub",
            &format!("{prefix}U"),
            true,
        ));
        let instance = end(&instance_ns, format!("{prefix}i"), 2, INSTANCE);
        ports.push(port(
            &bridges,
            &instance,
            "bpriv",
            &format!("{prefix}I"),
            true,
        ));
        let mut gws = Vec::new();
        for i in 0..gateways {
            let ns = namespaces.add(&format!("gw{i}"));
            let public = end(
                &ns,
                format!("{prefix}p{i}"),
                0x10 + i,
                Ipv4Addr::new(198, 51, 100, 10 + i),
            );
            let private = end(
                &ns,
                format!("{prefix}v{i}"),
                0x20 + i,
                Ipv4Addr::new(10, 200, 0, 2 + i),
            );
            ports.push(port(
                &bridges,
                &public,
                "bpub",
                &format!("{prefix}P{i}"),
                false,
            ));
            ports.push(port(
                &bridges,
                &private,
                "bpriv",
                &format!("{prefix}V{i}"),
                false,
            ));
            for s in [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ] {
                ns_sh(&ns, &["sysctl", "-qw", s]);
            }
            // The instance's neighbour entry is known: no ARP on the private
            // side in the measurement.
            ns_sh(
                &ns,
                &[
                    "ip",
                    "neigh",
                    "replace",
                    &INSTANCE.to_string(),
                    "lladdr",
                    &mac_str(instance.mac),
                    "dev",
                    &private.ifname,
                    "nud",
                    "permanent",
                ],
            );
            gws.push(Gateway {
                ns,
                public,
                private,
            });
        }
        // The EIPs are on the upstream's link: it ARPs for each.
        ns_sh(
            &upstream_ns,
            &["ip", "route", "add", EIP_POOL, "dev", &upstream.ifname],
        );
        ns_sh(
            &instance_ns,
            &["ip", "route", "add", "default", "via", "10.200.0.2"],
        );
        for ns in [&upstream_ns, &instance_ns] {
            ns_sh(ns, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
            ns_sh(ns, &["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]);
        }
        let peer_programs = ports
            .iter()
            .map(|name| {
                in_netns(&bridges, || PassProgram::attach(name))
                    .unwrap_or_else(|e| panic!("xdp_pass on {name}: {e:?}"))
            })
            .collect();
        Self {
            upstream,
            instance,
            gateways: gws,
            bridges,
            peer_programs,
            namespaces,
        }
    }

    /// The upstream's neighbour entry for `addr`: its MAC, if it has one.
    pub fn upstream_neighbour(&self, addr: Ipv4Addr) -> Option<String> {
        let out = crate::netns::ns_output(
            &self.upstream.ns,
            &[
                "ip",
                "neigh",
                "show",
                &addr.to_string(),
                "dev",
                &self.upstream.ifname,
            ],
        );
        let mut words = out.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_string)
    }

    /// The upstream forgets what it resolved: its next datagram to an EIP
    /// asks by ARP again.
    pub fn upstream_forgets(&self) {
        ns_sh(
            &self.upstream.ns,
            &["ip", "neigh", "flush", "dev", &self.upstream.ifname],
        );
    }

    /// Gateway `i`'s host dies: both its links go down, so its datapath
    /// (which a killed agent leaves attached) forwards nothing more.
    pub fn power_off(&self, i: usize) {
        let g = &self.gateways[i];
        for e in [&g.public, &g.private] {
            ns_sh(&g.ns, &["ip", "link", "set", &e.ifname, "down"]);
        }
    }
}

/// A veth from `end` to bridge `bridge` in namespace `bridges`, the bridge's
/// side named `port`; `end` gets its address and MAC, offloads off on both
/// sides (see `netns::veth`). Flooding of unknown unicast to the port stays on only
/// for `flood` (the hosts that are no gateway). Returns the port's name.
fn port(bridges: &str, end: &End, bridge: &str, port: &str, flood: bool) -> String {
    crate::netns::sh(&[
        "ip",
        "link",
        "add",
        &end.ifname,
        "netns",
        &end.ns,
        "address",
        &mac_str(end.mac),
        "type",
        "veth",
        "peer",
        "name",
        port,
        "netns",
        bridges,
    ]);
    ns_sh(bridges, &["ethtool", "-K", port, "tx", "off", "rx", "off"]);
    ns_sh(bridges, &["ip", "link", "set", port, "master", bridge]);
    if !flood {
        ns_sh(
            bridges,
            &["bridge", "link", "set", "dev", port, "flood", "off"],
        );
    }
    ns_sh(bridges, &["ip", "link", "set", port, "up"]);
    bring_up(end);
    port.to_string()
}
