//! What the public side may reach besides the EIPs: the contents of
//! `PUBLIC_ACCEPT` (docs/behaviour.md, "What the public side reaches").
//!
//! In a cloud an instance is reached from the Internet through its EIP
//! only. So the datapath passes a packet arriving on the public interface
//! when its destination is an EIP (translated, or passed through as the
//! mode says), or one of these:
//! - an address of the gateway itself (its local table: local and
//!   broadcast addresses), for its own services;
//! - link-local control traffic (limited broadcast, 224.0.0.0/24), which
//!   routers never forward (RFC 919, RFC 5771 §4);
//! - a prefix the operator lists in `routed_prefixes`, which the kernel
//!   then routes unchanged.
//!
//! An ENI's private IP is refused even inside a listed prefix: the
//! datapath checks the association table first.

use std::{collections::BTreeMap, net::Ipv4Addr};

use eip_nat_common::maps::{ACCEPT_LINK_CONTROL, ACCEPT_LOCAL, ACCEPT_ROUTED};
use ipnet::Ipv4Net;

/// Limited broadcast, and the local network control block.
fn link_control() -> [Ipv4Net; 2] {
    [
        Ipv4Net::new(Ipv4Addr::BROADCAST, 32).expect("a /32"),
        Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 24).expect("a /24"),
    ]
}

/// The whole table: prefix → kind. An operator prefix that is also one of
/// the other kinds keeps the more specific meaning (local, link control),
/// which only matters for the counters' reading, not for the verdict.
pub fn table(
    routed: &[Ipv4Net],
    locals: impl IntoIterator<Item = Ipv4Addr>,
) -> BTreeMap<Ipv4Net, u32> {
    let mut t: BTreeMap<Ipv4Net, u32> = routed.iter().map(|p| (p.trunc(), ACCEPT_ROUTED)).collect();
    t.extend(link_control().map(|p| (p, ACCEPT_LINK_CONTROL)));
    // Loopback addresses never arrive on a real interface (the kernel
    // drops them as martians): nothing to list.
    t.extend(
        locals
            .into_iter()
            .filter(|a| !a.is_loopback())
            .map(|a| (Ipv4Net::new(a, 32).expect("a /32"), ACCEPT_LOCAL)),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_own_addresses_link_control_and_listed_prefixes() {
        let routed: Vec<Ipv4Net> = vec!["192.0.2.0/24".parse().unwrap()];
        let locals = [
            Ipv4Addr::new(198, 51, 100, 1),
            Ipv4Addr::new(198, 51, 100, 255),
            Ipv4Addr::LOCALHOST,
        ];
        let t = table(&routed, locals);
        let kind = |s: &str| t.get(&s.parse::<Ipv4Net>().unwrap()).copied();
        assert_eq!(kind("192.0.2.0/24"), Some(ACCEPT_ROUTED));
        assert_eq!(kind("198.51.100.1/32"), Some(ACCEPT_LOCAL));
        assert_eq!(kind("198.51.100.255/32"), Some(ACCEPT_LOCAL));
        assert_eq!(kind("255.255.255.255/32"), Some(ACCEPT_LINK_CONTROL));
        assert_eq!(kind("224.0.0.0/24"), Some(ACCEPT_LINK_CONTROL));
        assert_eq!(kind("127.0.0.1/32"), None);
        assert_eq!(t.len(), 5);
    }
}
