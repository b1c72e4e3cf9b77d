//! The association table and its rules, with no kernel in sight: every
//! request is checked here before anything reaches the datapath.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One EIP ↔ private IP pair in NAT mode, and where its counters live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Association {
    pub eip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
    /// Index of its counters in the datapath's per-EIP counter array.
    pub slot: u32,
}

/// Why a request was refused. Each message names the rule.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("{addr} cannot be {role}: it is {what}")]
    UnusableAddress {
        addr: Ipv4Addr,
        role: &'static str,
        what: &'static str,
    },
    #[error("the EIP and the private IP are the same address ({0})")]
    SameAddress(Ipv4Addr),
    #[error("EIP {eip} is already associated with {private_ip}; an EIP has one target (disassociate it first)")]
    EipTaken { eip: Ipv4Addr, private_ip: Ipv4Addr },
    #[error(
        "private IP {private_ip} already carries EIP {eip}; a private IP carries at most one EIP"
    )]
    PrivateTaken { private_ip: Ipv4Addr, eip: Ipv4Addr },
    #[error("{addr} is the private IP of EIP {eip}, so it cannot also be an EIP")]
    EipIsAPrivateIp { addr: Ipv4Addr, eip: Ipv4Addr },
    #[error("{addr} is an associated EIP, so it cannot also be a private IP")]
    PrivateIpIsAnEip { addr: Ipv4Addr },
    #[error("EIP {0} is not associated")]
    UnknownEip(Ipv4Addr),
    #[error("the association table is full ({0} entries); restart the agent with a larger --max-associations")]
    Full(u32),
}

/// What an address must not be to take part in a translation: these never
/// cross a router as unicast (RFC 1122 §3.2.1.3, RFC 5771, RFC 3927,
/// RFC 1112 §4).
fn unusable(addr: Ipv4Addr) -> Option<&'static str> {
    let o = addr.octets();
    if o[0] == 0 {
        Some("in 0.0.0.0/8 (\"this network\")")
    } else if addr.is_loopback() {
        Some("a loopback address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else if addr.is_broadcast() {
        Some("the limited broadcast address")
    } else if o[0] >= 240 {
        Some("in the reserved range 240.0.0.0/4")
    } else if addr.is_link_local() {
        Some("a link-local address")
    } else {
        None
    }
}

#[derive(Debug)]
pub struct Associations {
    capacity: u32,
    by_eip: BTreeMap<Ipv4Addr, Association>,
    by_private: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Slots released by a disassociation, reused lowest first.
    free: BTreeSet<u32>,
    /// Slots below this have been handed out at least once.
    next: u32,
}

impl Associations {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            by_eip: BTreeMap::new(),
            by_private: BTreeMap::new(),
            free: BTreeSet::new(),
            next: 0,
        }
    }

    /// Checks an associate request against every rule and returns the
    /// association it would create, without changing anything.
    pub fn check_associate(
        &self,
        eip: Ipv4Addr,
        private_ip: Ipv4Addr,
    ) -> Result<Association, RuleError> {
        for (addr, role) in [(eip, "an EIP"), (private_ip, "a private IP")] {
            if let Some(what) = unusable(addr) {
                return Err(RuleError::UnusableAddress { addr, role, what });
            }
        }
        if eip == private_ip {
            return Err(RuleError::SameAddress(eip));
        }
        if let Some(a) = self.by_eip.get(&eip) {
            return Err(RuleError::EipTaken {
                eip,
                private_ip: a.private_ip,
            });
        }
        if let Some(&taken_by) = self.by_private.get(&private_ip) {
            return Err(RuleError::PrivateTaken {
                private_ip,
                eip: taken_by,
            });
        }
        // One address in both tables would translate twice on a hairpin and
        // make the two maps disagree about who owns it.
        if let Some(&of) = self.by_private.get(&eip) {
            return Err(RuleError::EipIsAPrivateIp { addr: eip, eip: of });
        }
        if self.by_eip.contains_key(&private_ip) {
            return Err(RuleError::PrivateIpIsAnEip { addr: private_ip });
        }
        let slot = match self.free.first() {
            Some(&slot) => slot,
            None if self.next < self.capacity => self.next,
            None => return Err(RuleError::Full(self.capacity)),
        };
        Ok(Association {
            eip,
            private_ip,
            slot,
        })
    }

    /// Records an association that [`Self::check_associate`] returned and
    /// the datapath accepted.
    pub fn insert(&mut self, a: Association) {
        if !self.free.remove(&a.slot) {
            debug_assert_eq!(a.slot, self.next);
            self.next = a.slot + 1;
        }
        self.by_private.insert(a.private_ip, a.eip);
        self.by_eip.insert(a.eip, a);
    }

    pub fn check_disassociate(&self, eip: Ipv4Addr) -> Result<Association, RuleError> {
        self.by_eip
            .get(&eip)
            .copied()
            .ok_or(RuleError::UnknownEip(eip))
    }

    pub fn remove(&mut self, eip: Ipv4Addr) -> Option<Association> {
        let a = self.by_eip.remove(&eip)?;
        self.by_private.remove(&a.private_ip);
        self.free.insert(a.slot);
        Some(a)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Association> {
        self.by_eip.values()
    }

    pub fn len(&self) -> usize {
        self.by_eip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_eip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn assoc(t: &mut Associations, e: &str, p: &str) -> Result<Association, RuleError> {
        let a = t.check_associate(ip(e), ip(p))?;
        t.insert(a);
        Ok(a)
    }

    #[test]
    fn associate_and_disassociate() {
        let mut t = Associations::new(4);
        let a = assoc(&mut t, "203.0.113.10", "10.0.0.10").unwrap();
        assert_eq!(a.slot, 0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.check_disassociate(ip("203.0.113.10")), Ok(a));
        assert_eq!(t.remove(ip("203.0.113.10")), Some(a));
        assert!(t.is_empty());
        // Both addresses are free again.
        assert!(assoc(&mut t, "203.0.113.10", "10.0.0.11").is_ok());
        assert!(assoc(&mut t, "203.0.113.11", "10.0.0.10").is_ok());
    }

    /// A refusal leaves the table exactly as it was.
    fn refused(t: &mut Associations, e: &str, p: &str) -> RuleError {
        let before = format!("{t:?}");
        let err = t.check_associate(ip(e), ip(p)).unwrap_err();
        assert_eq!(before, format!("{t:?}"));
        err
    }

    #[test]
    fn one_target_per_eip() {
        let mut t = Associations::new(4);
        assoc(&mut t, "203.0.113.10", "10.0.0.10").unwrap();
        let e = refused(&mut t, "203.0.113.10", "10.0.0.11");
        assert_eq!(
            e,
            RuleError::EipTaken {
                eip: ip("203.0.113.10"),
                private_ip: ip("10.0.0.10")
            }
        );
        // Repeating the same association is refused too: it is not a no-op
        // that could hide a mistaken second caller.
        refused(&mut t, "203.0.113.10", "10.0.0.10");
        assert!(e.to_string().contains("already associated with 10.0.0.10"));
    }

    #[test]
    fn one_eip_per_private_ip() {
        let mut t = Associations::new(4);
        assoc(&mut t, "203.0.113.10", "10.0.0.10").unwrap();
        let e = refused(&mut t, "203.0.113.11", "10.0.0.10");
        assert_eq!(
            e,
            RuleError::PrivateTaken {
                private_ip: ip("10.0.0.10"),
                eip: ip("203.0.113.10")
            }
        );
        assert!(e.to_string().contains("at most one EIP"));
    }

    #[test]
    fn an_address_is_never_both_eip_and_private() {
        let mut t = Associations::new(4);
        assoc(&mut t, "203.0.113.10", "10.0.0.10").unwrap();
        assert!(matches!(
            refused(&mut t, "10.0.0.10", "10.0.0.20"),
            RuleError::EipIsAPrivateIp { .. }
        ));
        assert!(matches!(
            refused(&mut t, "203.0.113.20", "203.0.113.10"),
            RuleError::PrivateIpIsAnEip { .. }
        ));
        assert!(matches!(
            refused(&mut t, "203.0.113.20", "203.0.113.20"),
            RuleError::SameAddress(_)
        ));
    }

    #[test]
    fn unusable_addresses() {
        let mut t = Associations::new(4);
        for (e, p, what) in [
            ("0.0.0.0", "10.0.0.1", "0.0.0.0/8"),
            ("127.0.0.1", "10.0.0.1", "loopback"),
            ("224.0.0.5", "10.0.0.1", "multicast"),
            ("255.255.255.255", "10.0.0.1", "broadcast"),
            ("240.0.0.1", "10.0.0.1", "reserved"),
            ("169.254.1.1", "10.0.0.1", "link-local"),
            ("203.0.113.1", "127.0.0.1", "loopback"),
        ] {
            let err = refused(&mut t, e, p).to_string();
            assert!(err.contains(what), "{e}->{p}: {err}");
        }
        assert!(t.is_empty());
    }

    #[test]
    fn unknown_eip() {
        let t = Associations::new(4);
        assert_eq!(
            t.check_disassociate(ip("203.0.113.9")),
            Err(RuleError::UnknownEip(ip("203.0.113.9")))
        );
    }

    #[test]
    fn capacity_and_slot_reuse() {
        let mut t = Associations::new(2);
        let a = assoc(&mut t, "203.0.113.1", "10.0.0.1").unwrap();
        let b = assoc(&mut t, "203.0.113.2", "10.0.0.2").unwrap();
        assert_eq!((a.slot, b.slot), (0, 1));
        assert_eq!(
            refused(&mut t, "203.0.113.3", "10.0.0.3"),
            RuleError::Full(2)
        );
        t.remove(a.eip);
        let c = assoc(&mut t, "203.0.113.3", "10.0.0.3").unwrap();
        assert_eq!(c.slot, 0, "a freed slot is reused");
    }
}
