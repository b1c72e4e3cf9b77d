//! The rig: generator ── gateway ── sink in namespaces joined by veths.

use integration_tests::netns::{ns_sh, veth, End, Namespaces};

/// generator ── gateway ── sink, fixed MACs, permanent neighbours, IPv6 off,
/// rp_filter off, forwarding on.
pub struct Rig {
    pub gen: End,
    pub gw_public: End,
    pub gw_private: End,
    pub sink: End,
    /// The return veth of the looping generator: the sink hands frames
    /// back through `sink_ret` to `gen_ret` (`LoopGenerator`); unused by
    /// the live-frame generator.
    pub sink_ret: End,
    pub gen_ret: End,
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
    let (sink_ret, gen_ret) = return_ends(&namespaces, &sink_ns, &gen_ns);
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
        sink_ret,
        gen_ret,
        _namespaces: namespaces,
    }
}

/// The looping generator's return veth, sink → generator, made.
fn return_ends(namespaces: &Namespaces, sink_ns: &str, gen_ns: &str) -> (End, End) {
    let sink_ret = namespaces.end(sink_ns, "sr", 0xbe, 5, [10, 198, 0, 1]);
    let gen_ret = namespaces.end(gen_ns, "gr", 0xbe, 6, [10, 198, 0, 2]);
    veth(&sink_ret, &gen_ret);
    (sink_ret, gen_ret)
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
    let (sink_ret, gen_ret) = return_ends(&namespaces, &sink_ns, &gen_ns);
    for e in [&gen, &sink] {
        ns_sh(&e.ns, &["ethtool", "-K", &e.ifname, "gro", "on"]);
    }
    Rig {
        gw_public: sink.clone(),
        gw_private: sink.clone(),
        gen,
        sink,
        sink_ret,
        gen_ret,
        _namespaces: namespaces,
    }
}

impl Rig {
    /// False for the direct rig, where the sink stands in for the gateway.
    pub fn has_gateway(&self) -> bool {
        self.gw_public.ifname != self.sink.ifname
    }
}
