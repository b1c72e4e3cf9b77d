//! The peers measured on the rig, and how each is started.

use eip_nat_common::maps::DEFAULT_MAX_ASSOCIATIONS;
use eip_nat_rig_common::MinNatConfig;
use integration_tests::{
    agent::Agent,
    netns::{ifindex, in_netns, ns_sh},
    rig::{MinNat, NoopRedirect},
};
use serde::Serialize;

use crate::{
    associations::{bulk_load, pairs, FILL_EIPS, FILL_PRIVATES},
    topology::Rig,
    EIPS, EIP_BASE, PRIVATE_BASE,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Peer {
    /// No gateway at all: the rig's own cost per frame.
    Direct,
    NoopRedirect,
    /// The minimal hand-written XDP NAT, the reference eip-nat is held to.
    MinNat,
    KernelForwarding,
    NftStateless,
    NftConntrack,
    EipNatFast,
    EipNatFallback,
}

impl Peer {
    pub const ALL: [Peer; 8] = [
        Self::Direct,
        Self::NoopRedirect,
        Self::MinNat,
        Self::KernelForwarding,
        Self::NftStateless,
        Self::NftConntrack,
        Self::EipNatFast,
        Self::EipNatFallback,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::NoopRedirect => "noop",
            Self::MinNat => "min-nat",
            Self::KernelForwarding => "kernel",
            Self::NftStateless => "nft-stateless",
            Self::NftConntrack => "nft-conntrack",
            Self::EipNatFast => "fast",
            Self::EipNatFallback => "fallback",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "(0) no gateway: generator → sink (the rig's own cost)",
            Self::NoopRedirect => "(a) XDP no-op redirect (ceiling)",
            Self::MinNat => "(m) minimal hand-written XDP NAT (reference)",
            Self::KernelForwarding => "(b) kernel IPv4 forwarding, no NAT",
            Self::NftStateless => "(c) nftables stateless NAT (notrack)",
            Self::NftConntrack => "(d) nftables conntrack DNAT+SNAT",
            Self::EipNatFast => "(e) eip-nat, fast path",
            Self::EipNatFallback => "(f) eip-nat, fallback only",
        }
    }

    /// Also run with the gateway on its own CPU: the rig's cost, the
    /// ceiling and the two NATs of the comparison.
    pub fn on_own_cpu(self) -> bool {
        matches!(
            self,
            Self::Direct | Self::NoopRedirect | Self::MinNat | Self::EipNatFast
        )
    }

    /// Also run with a million associations loaded: the comparison's two,
    /// and the rig's own cost again, in the same rounds as they are.
    pub fn with_many_associations(self) -> bool {
        matches!(self, Self::Direct | Self::MinNat | Self::EipNatFast)
    }

    /// Where the generator aims: the EIPs, except for plain forwarding,
    /// which has nothing to translate and is sent the private IPs.
    pub fn dst_base(self) -> [u8; 4] {
        match self {
            Self::KernelForwarding | Self::Direct => PRIVATE_BASE,
            _ => EIP_BASE,
        }
    }

    /// What the sink must see: translated private IPs, except for the
    /// no-op, which does not translate.
    pub fn sink_expects(self) -> ([u8; 4], u8) {
        match self {
            Self::NoopRedirect => ([198, 18, 0, 0], 16),
            _ => ([10, 200, 0, 0], 16),
        }
    }
}

/// `a0 : b0, a1 : b1, …` for an nftables map.
fn nft_map(from: [u8; 4], to: [u8; 4]) -> String {
    pairs(from, to, EIPS)
        .map(|(a, b)| format!("{a} : {b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whatever keeps a peer's gateway running until dropped.
#[expect(
    dead_code,
    reason = "the values are held for their Drop, which detaches"
)]
pub enum Gateway {
    Noop(NoopRedirect),
    MinNat(MinNat),
    Kernel,
    Agent(Agent),
}

/// Starts `peer` on the rig with `associations` loaded: the [`EIPS`] the
/// traffic uses, then filler ([`FILL_EIPS`]) up to the number.
pub fn start_peer(peer: Peer, r: &Rig, associations: u32) -> Gateway {
    let filler = associations - EIPS;
    let gw = &r.gw_public.ns;
    match peer {
        Peer::NoopRedirect => {
            let egress = ifindex(gw, &r.gw_private.ifname);
            Gateway::Noop(
                in_netns(gw, || NoopRedirect::attach(&r.gw_public.ifname, egress))
                    .expect("attach no-op"),
            )
        }
        Peer::MinNat => {
            let egress = ifindex(gw, &r.gw_private.ifname);
            let macs = MinNatConfig {
                dst_mac: r.sink.mac,
                src_mac: r.gw_private.mac,
            };
            // Sized like the agent's tables, which hold at least the
            // default number of associations.
            let capacity = associations.max(DEFAULT_MAX_ASSOCIATIONS);
            let mut nat = in_netns(gw, || {
                MinNat::attach(&r.gw_public.ifname, macs, egress, capacity)
            })
            .expect("attach the minimal NAT");
            nat.insert_all(pairs(EIP_BASE, PRIVATE_BASE, EIPS).chain(pairs(
                FILL_EIPS,
                FILL_PRIVATES,
                filler,
            )))
            .expect("the minimal NAT's mappings");
            Gateway::MinNat(nat)
        }
        Peer::KernelForwarding | Peer::Direct => Gateway::Kernel,
        Peer::NftStateless => {
            // Stateless: rewrite by map in prerouting, conntrack off.
            nft(
                gw,
                &format!(
                    "table ip eipnat {{\n map eip2priv {{ type ipv4_addr : ipv4_addr; elements = {{ {} }} }}\n \
                     map priv2eip {{ type ipv4_addr : ipv4_addr; elements = {{ {} }} }}\n \
                     chain pre {{\n type filter hook prerouting priority raw; policy accept;\n notrack\n \
                     ip daddr set ip daddr map @eip2priv\n ip saddr set ip saddr map @priv2eip\n }}\n}}\n",
                    nft_map(EIP_BASE, PRIVATE_BASE),
                    nft_map(PRIVATE_BASE, EIP_BASE)
                ),
            );
            Gateway::Kernel
        }
        Peer::NftConntrack => {
            nft(
                gw,
                &format!(
                    "table ip eipnat {{\n map eip2priv {{ type ipv4_addr : ipv4_addr; elements = {{ {} }} }}\n \
                     map priv2eip {{ type ipv4_addr : ipv4_addr; elements = {{ {} }} }}\n \
                     chain pre {{\n type nat hook prerouting priority dstnat; policy accept;\n \
                     dnat to ip daddr map @eip2priv\n }}\n \
                     chain post {{\n type nat hook postrouting priority srcnat; policy accept;\n \
                     snat to ip saddr map @priv2eip\n }}\n}}\n",
                    nft_map(EIP_BASE, PRIVATE_BASE),
                    nft_map(PRIVATE_BASE, EIP_BASE)
                ),
            );
            Gateway::Kernel
        }
        Peer::EipNatFast | Peer::EipNatFallback => {
            let max = associations.max(DEFAULT_MAX_ASSOCIATIONS).to_string();
            let mut extra = vec!["--xdp-mode", "native", "--max-associations", &max];
            if peer == Peer::EipNatFallback {
                extra.push("--no-fast-path");
            }
            let agent = Agent::start(gw, &r.gw_public.ifname, &r.gw_private.ifname, &extra);
            for (eip, private_ip) in pairs(EIP_BASE, PRIVATE_BASE, EIPS) {
                agent.nat(&eip.to_string(), &private_ip.to_string());
            }
            if filler > 0 {
                let took = bulk_load(|| agent.client(), FILL_EIPS, FILL_PRIVATES, filler);
                eprintln!(
                    "  {filler} more associations in {:.1} s",
                    took.as_secs_f64()
                );
            }
            Gateway::Agent(agent)
        }
    }
}

fn nft(ns: &str, rules: &str) {
    let path = std::env::temp_dir().join(format!("{ns}.nft"));
    std::fs::write(&path, rules).unwrap();
    ns_sh(ns, &["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}
