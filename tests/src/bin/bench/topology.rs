//! The rig: generator ── gateway ── sink in namespaces joined by veths.

use integration_tests::netns::{ns_sh, veth, End, Namespaces};

/// generator ── gateway ── sink, fixed MACs, permanent neighbours, IPv6 off,
/// rp_filter off, forwarding on.
pub struct Rig {
    pub gen: End,
    pub gw_public: End,
    pub gw_private: End,
    pub sink: End,
    /// Last: removed after everything in it.
    _namespaces: Namespaces,
}

pub fn rig(direct: bool) -> Rig {
    if direct {
        return direct_rig();
    }
    let mut namespaces = Namespaces::new();
    let gen_ns = namespaces.add("gen");
    let gw = namespaces.add("gw");
    let sink_ns = namespaces.add("sink");
    let end = |ns: &str, suffix: &str, last: u8, addr: [u8; 4]| {
        namespaces.end(ns, suffix, 0xbe, last, addr)
    };
    let gen = end(&gen_ns, "g", 1, [198, 51, 100, 2]);
    let gw_public = end(&gw, "gp", 2, [198, 51, 100, 1]);
    let gw_private = end(&gw, "gv", 3, [10, 199, 0, 1]);
    let sink = end(&sink_ns, "s", 4, [10, 199, 0, 2]);
    veth(&gen, &gw_public);
    veth(&gw_private, &sink);
    ns_sh(
        &gw,
        &["ip", "route", "add", "10.200.0.0/16", "via", "10.199.0.2"],
    );
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        ns_sh(&gw, &["sysctl", "-qw", s]);
    }
    for e in [&gw_public, &gw_private] {
        ns_sh(
            &gw,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{}.rp_filter=0", e.ifname),
            ],
        );
    }
    // GRO on every veth, so each runs NAPI and accepts XDP frames even
    // without an XDP program of its own.
    for e in [&gen, &gw_public, &gw_private, &sink] {
        ns_sh(&e.ns, &["ethtool", "-K", &e.ifname, "gro", "on"]);
    }
    Rig {
        gen,
        gw_public,
        gw_private,
        sink,
        _namespaces: namespaces,
    }
}

/// generator ── sink, no gateway: what the rig itself costs per frame.
/// The gateway fields name the sink, the generator's only neighbour.
fn direct_rig() -> Rig {
    let mut namespaces = Namespaces::new();
    let gen_ns = namespaces.add("gen");
    let sink_ns = namespaces.add("sink");
    let end = |ns: &str, suffix: &str, last: u8, addr: [u8; 4]| {
        namespaces.end(ns, suffix, 0xbe, last, addr)
    };
    let gen = end(&gen_ns, "g", 1, [198, 51, 100, 2]);
    let sink = end(&sink_ns, "s", 4, [198, 51, 100, 1]);
    veth(&gen, &sink);
    for e in [&gen, &sink] {
        ns_sh(&e.ns, &["ethtool", "-K", &e.ifname, "gro", "on"]);
    }
    Rig {
        gw_public: sink.clone(),
        gw_private: sink.clone(),
        gen,
        sink,
        _namespaces: namespaces,
    }
}

impl Rig {
    /// False for the direct rig, where the sink stands in for the gateway.
    pub fn has_gateway(&self) -> bool {
        self.gw_public.ifname != self.sink.ifname
    }
}
