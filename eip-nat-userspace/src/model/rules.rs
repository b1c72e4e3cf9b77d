//! The rules of docs/domain.md, applied to one event at a time. Each
//! handler checks everything first and changes the state last, through the
//! primitives of `journal.rs`, so a refused event leaves the state exactly
//! as it was.

use std::net::Ipv4Addr;

use thiserror::Error;

use super::{
    journal::Writes, Association, Attachment, Eni, EniId, EniKind, Event, Journal, Location, Mode,
    State, Touched,
};

/// Why an event was refused. Each message names the rule it broke;
/// [`RuleError::code`] is the same rule as a stable identifier.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("{what} name {id:?} is invalid: {why}")]
    InvalidName {
        what: &'static str,
        id: String,
        why: &'static str,
    },
    #[error("{addr} cannot be used: it is {what}")]
    UnusableAddress { addr: Ipv4Addr, what: &'static str },
    #[error("ENI {0} already exists")]
    EniExists(EniId),
    #[error("ENI {0} does not exist")]
    UnknownEni(EniId),
    #[error("instance {0} is unknown (an instance is known by its primary ENI)")]
    UnknownInstance(String),
    #[error("instance {0} already has a primary ENI")]
    InstanceExists(String),
    #[error("{addr} is already in use as {by}")]
    AddressInUse { addr: Ipv4Addr, by: String },
    #[error("a primary ENI is created with its instance: give --instance")]
    PrimaryNeedsInstance,
    #[error("a secondary ENI is created detached: create it, then attach it")]
    SecondaryCreatedDetached,
    #[error("ENI {0} is a primary ENI: it lives and dies with its instance (attach, detach, move and delete apply to secondary ENIs)")]
    PrimaryEniFixed(EniId),
    #[error("ENI {eni} is attached to {instance}: detach it before deleting it")]
    EniAttached { eni: EniId, instance: String },
    #[error("ENI {eni} carries EIP {eip}: disassociate its EIPs first")]
    EniHasEips { eni: EniId, eip: Ipv4Addr },
    #[error("ENI {eni} is already attached to {instance}: an ENI is attached to one instance at a time (move it instead)")]
    AlreadyAttached { eni: EniId, instance: String },
    #[error("ENI {0} is not attached")]
    NotAttached(EniId),
    #[error("ENI {eni} is already attached to {instance}")]
    SameInstance { eni: EniId, instance: String },
    #[error("instance {instance} still has secondary ENI {eni} attached: detach it first")]
    InstanceHasEnis { instance: String, eni: EniId },
    #[error(
        "{ip} is the primary private IP of ENI {eni}; only secondary private IPs can be revoked"
    )]
    RevokePrimaryIp { eni: EniId, ip: Ipv4Addr },
    #[error("{ip} is not a private IP of ENI {eni}")]
    IpNotOnEni { eni: EniId, ip: Ipv4Addr },
    #[error("{ip} carries EIP {eip}: a private IP that carries an EIP cannot be revoked (disassociate first)")]
    IpCarriesEip { ip: Ipv4Addr, eip: Ipv4Addr },
    #[error("EIP {eip} is already associated with ENI {eni}: an EIP has one target (disassociate it first)")]
    EipTaken { eip: Ipv4Addr, eni: EniId },
    #[error(
        "private IP {private_ip} already carries EIP {eip}: a private IP carries at most one EIP"
    )]
    PrivateTaken { private_ip: Ipv4Addr, eip: Ipv4Addr },
    #[error("ENI {eni} is a primary ENI and already carries EIP {eip}: a primary ENI carries at most one EIP")]
    PrimaryEniOneEip { eni: EniId, eip: Ipv4Addr },
    #[error("ENI {eni} is a primary ENI: it takes EIPs in NAT mode only, not {mode}")]
    PrimaryEniNatOnly { eni: EniId, mode: &'static str },
    #[error(
        "cut-through binds the EIP to ENI {eni}'s primary private IP {primary_ip}, not {given}"
    )]
    CutThroughPrimaryIp {
        eni: EniId,
        primary_ip: Ipv4Addr,
        given: Ipv4Addr,
    },
    #[error("ENI {eni} {why}: a cut-through ENI carries exactly one EIP")]
    CutThroughExclusive { eni: EniId, why: &'static str },
    #[error("ENI {eni} carries EIPs in {existing} mode, so it cannot take one in {requested} mode: an ENI's EIPs share one mode")]
    OneModePerEni {
        eni: EniId,
        existing: &'static str,
        requested: &'static str,
    },
    #[error("multi-EIP mode binds EIPs to the ENI, not to a private IP: leave out the private IP")]
    MultiEipNoPrivateIp,
    #[error("ENI {eni} already carries {quota} EIPs in multi-EIP mode, its quota")]
    MultiEipQuota { eni: EniId, quota: u32 },
    #[error("EIP {0} is not associated")]
    UnknownEip(Ipv4Addr),
    #[error("the association table is full ({0} entries); restart the agent with a larger max_associations")]
    Full(u32),
}

impl RuleError {
    /// The rule, as a stable identifier for programs.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::InvalidName { .. } => "invalid_name",
            Self::UnusableAddress { .. } => "unusable_address",
            Self::EniExists(_) => "eni_exists",
            Self::UnknownEni(_) => "unknown_eni",
            Self::UnknownInstance(_) => "unknown_instance",
            Self::InstanceExists(_) => "instance_exists",
            Self::AddressInUse { .. } => "address_in_use",
            Self::PrimaryNeedsInstance => "primary_needs_instance",
            Self::SecondaryCreatedDetached => "secondary_created_detached",
            Self::PrimaryEniFixed(_) => "primary_eni_fixed",
            Self::EniAttached { .. } => "eni_attached",
            Self::EniHasEips { .. } => "eni_has_eips",
            Self::AlreadyAttached { .. } => "already_attached",
            Self::NotAttached(_) => "not_attached",
            Self::SameInstance { .. } => "same_instance",
            Self::InstanceHasEnis { .. } => "instance_has_enis",
            Self::RevokePrimaryIp { .. } => "revoke_primary_ip",
            Self::IpNotOnEni { .. } => "ip_not_on_eni",
            Self::IpCarriesEip { .. } => "ip_carries_eip",
            Self::EipTaken { .. } => "eip_has_one_target",
            Self::PrivateTaken { .. } => "one_eip_per_private_ip",
            Self::PrimaryEniOneEip { .. } => "primary_eni_one_eip",
            Self::PrimaryEniNatOnly { .. } => "primary_eni_nat_only",
            Self::CutThroughPrimaryIp { .. } => "cut_through_primary_ip",
            Self::CutThroughExclusive { .. } => "cut_through_exclusive",
            Self::OneModePerEni { .. } => "one_mode_per_eni",
            Self::MultiEipNoPrivateIp => "multi_eip_no_private_ip",
            Self::MultiEipQuota { .. } => "multi_eip_quota",
            Self::UnknownEip(_) => "unknown_eip",
            Self::Full(_) => "table_full",
        }
    }
}

/// What an address must not be to take part in a translation: these never
/// cross a router as unicast (RFC 1122 §3.2.1.3, RFC 5771, RFC 3927,
/// RFC 1112 §4).
pub fn unusable(addr: Ipv4Addr) -> Option<&'static str> {
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

fn usable(addr: Ipv4Addr) -> Result<(), RuleError> {
    match unusable(addr) {
        Some(what) => Err(RuleError::UnusableAddress { addr, what }),
        None => Ok(()),
    }
}

/// ENI and instance names: what a cloud API hands out, and safe to print.
fn valid_name(what: &'static str, id: &str) -> Result<(), RuleError> {
    let why = if id.is_empty() {
        "it is empty"
    } else if id.len() > 64 {
        "it is longer than 64 bytes"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        "only letters, digits and - _ . : are allowed"
    } else {
        return Ok(());
    };
    Err(RuleError::InvalidName {
        what,
        id: id.to_string(),
        why,
    })
}

fn valid_location(l: &Location) -> Result<(), RuleError> {
    if let Some(via) = l.via {
        usable(via)?;
    }
    if let Some(dev) = &l.dev {
        // IFNAMSIZ is 16 with the NUL (include/uapi/linux/if.h); dev_valid_name()
        // refuses '/', ':' and whitespace.
        let bad = dev.is_empty()
            || dev.len() > 15
            || dev == "."
            || dev == ".."
            || dev
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
        if bad {
            return Err(RuleError::InvalidName {
                what: "interface",
                id: dev.clone(),
                why: "not a valid Linux interface name",
            });
        }
    }
    Ok(())
}

impl State {
    /// Checks `event` against every rule and, if it passes, applies it,
    /// saving in `journal` the rows it changes as they were before (see
    /// [`State::undo`]). A refused event changes nothing. Returns what the
    /// event changed.
    pub fn apply(&mut self, event: &Event, journal: &mut Journal) -> Result<Touched, RuleError> {
        let mut w = Writes::new(journal);
        let w = &mut w;
        match event {
            Event::CreateEni {
                eni,
                kind,
                primary_ip,
                instance,
                location,
            } => self.create_eni(w, eni, *kind, *primary_ip, instance.as_deref(), location),
            Event::DeleteEni { eni } => self.delete_eni(w, eni),
            Event::AttachEni {
                eni,
                instance,
                location,
            } => self.attach_eni(w, eni, instance, location),
            Event::DetachEni { eni } => self.detach_eni(w, eni),
            Event::MoveEni {
                eni,
                instance,
                location,
            } => self.move_eni(w, eni, instance, location),
            Event::LocateEni { eni, location } => self.locate_eni(w, eni, location),
            Event::AssignIp { eni, ip } => self.assign_ip(w, eni, *ip),
            Event::RevokeIp { eni, ip } => self.revoke_ip(w, eni, *ip),
            Event::Associate {
                eip,
                eni,
                private_ip,
                mode,
            } => self.associate(w, *eip, eni, *private_ip, *mode),
            Event::Disassociate { eip } => self.disassociate(w, *eip),
            Event::TerminateInstance { instance } => self.terminate_instance(w, instance),
        }?;
        Ok(std::mem::take(&mut w.touched))
    }

    fn existing(&self, eni: &str) -> Result<&Eni, RuleError> {
        self.enis
            .get(eni)
            .ok_or_else(|| RuleError::UnknownEni(eni.to_string()))
    }

    /// A secondary ENI, for the events that only apply to those.
    fn secondary(&self, eni: &str) -> Result<&Eni, RuleError> {
        let e = self.existing(eni)?;
        match e.kind {
            EniKind::Primary => Err(RuleError::PrimaryEniFixed(eni.to_string())),
            EniKind::Secondary => Ok(e),
        }
    }

    fn known_instance(&self, instance: &str) -> Result<(), RuleError> {
        match self.instances.contains_key(instance) {
            true => Ok(()),
            false => Err(RuleError::UnknownInstance(instance.to_string())),
        }
    }

    /// `addr` is free to become a private IP or an EIP.
    fn unused(&self, addr: Ipv4Addr) -> Result<(), RuleError> {
        if let Some(eni) = self.private_ips.get(&addr) {
            return Err(RuleError::AddressInUse {
                addr,
                by: format!("a private IP of ENI {eni}"),
            });
        }
        if let Some(a) = self.associations.get(&addr) {
            return Err(RuleError::AddressInUse {
                addr,
                by: format!("an EIP associated with ENI {}", a.eni),
            });
        }
        Ok(())
    }

    fn create_eni(
        &mut self,
        w: &mut Writes,
        id: &str,
        kind: EniKind,
        primary_ip: Ipv4Addr,
        instance: Option<&str>,
        location: &Location,
    ) -> Result<(), RuleError> {
        valid_name("ENI", id)?;
        usable(primary_ip)?;
        valid_location(location)?;
        if self.enis.contains_key(id) {
            return Err(RuleError::EniExists(id.to_string()));
        }
        self.unused(primary_ip)?;
        let attachment = match (kind, instance) {
            (EniKind::Primary, None) => return Err(RuleError::PrimaryNeedsInstance),
            (EniKind::Primary, Some(instance)) => {
                valid_name("instance", instance)?;
                if self.instances.contains_key(instance) {
                    return Err(RuleError::InstanceExists(instance.to_string()));
                }
                Some(Attachment {
                    instance: instance.to_string(),
                    location: location.clone(),
                })
            }
            (EniKind::Secondary, Some(_)) => return Err(RuleError::SecondaryCreatedDetached),
            (EniKind::Secondary, None) if !location.is_routed() => {
                return Err(RuleError::SecondaryCreatedDetached)
            }
            (EniKind::Secondary, None) => None,
        };
        self.insert_eni(
            w,
            id,
            Eni {
                kind,
                primary_ip,
                secondary_ips: Default::default(),
                attachment,
                eips: Default::default(),
            },
        );
        Ok(())
    }

    fn delete_eni(&mut self, w: &mut Writes, id: &str) -> Result<(), RuleError> {
        let eni = self.secondary(id)?;
        if let Some(a) = &eni.attachment {
            return Err(RuleError::EniAttached {
                eni: id.to_string(),
                instance: a.instance.clone(),
            });
        }
        if let Some(&eip) = eni.eips.first() {
            return Err(RuleError::EniHasEips {
                eni: id.to_string(),
                eip,
            });
        }
        self.remove_eni(w, id);
        Ok(())
    }

    fn attach_eni(
        &mut self,
        w: &mut Writes,
        id: &str,
        instance: &str,
        location: &Location,
    ) -> Result<(), RuleError> {
        valid_name("instance", instance)?;
        valid_location(location)?;
        let eni = self.secondary(id)?;
        if let Some(a) = &eni.attachment {
            return Err(RuleError::AlreadyAttached {
                eni: id.to_string(),
                instance: a.instance.clone(),
            });
        }
        self.known_instance(instance)?;
        self.attach(w, id, instance, location);
        Ok(())
    }

    fn attach(&mut self, w: &mut Writes, id: &str, instance: &str, location: &Location) {
        let a = Attachment {
            instance: instance.to_string(),
            location: location.clone(),
        };
        self.set_attachment(w, id, Some(a));
    }

    fn detach_eni(&mut self, w: &mut Writes, id: &str) -> Result<(), RuleError> {
        let eni = self.secondary(id)?;
        if eni.attachment.is_none() {
            return Err(RuleError::NotAttached(id.to_string()));
        }
        self.set_attachment(w, id, None);
        Ok(())
    }

    fn move_eni(
        &mut self,
        w: &mut Writes,
        id: &str,
        instance: &str,
        location: &Location,
    ) -> Result<(), RuleError> {
        valid_name("instance", instance)?;
        valid_location(location)?;
        let eni = self.secondary(id)?;
        let Some(current) = &eni.attachment else {
            return Err(RuleError::NotAttached(id.to_string()));
        };
        let current = current.instance.clone();
        self.known_instance(instance)?;
        if current == instance {
            return Err(RuleError::SameInstance {
                eni: id.to_string(),
                instance: current,
            });
        }
        self.attach(w, id, instance, location);
        Ok(())
    }

    fn locate_eni(
        &mut self,
        w: &mut Writes,
        id: &str,
        location: &Location,
    ) -> Result<(), RuleError> {
        valid_location(location)?;
        let eni = self.existing(id)?;
        let Some(a) = &eni.attachment else {
            return Err(RuleError::NotAttached(id.to_string()));
        };
        let instance = a.instance.clone();
        self.attach(w, id, &instance, location);
        Ok(())
    }

    fn assign_ip(&mut self, w: &mut Writes, id: &str, ip: Ipv4Addr) -> Result<(), RuleError> {
        self.existing(id)?;
        usable(ip)?;
        self.unused(ip)?;
        self.add_secondary_ip(w, id, ip);
        Ok(())
    }

    fn revoke_ip(&mut self, w: &mut Writes, id: &str, ip: Ipv4Addr) -> Result<(), RuleError> {
        let eni = self.existing(id)?;
        if eni.primary_ip == ip {
            return Err(RuleError::RevokePrimaryIp {
                eni: id.to_string(),
                ip,
            });
        }
        if !eni.secondary_ips.contains(&ip) {
            return Err(RuleError::IpNotOnEni {
                eni: id.to_string(),
                ip,
            });
        }
        if let Some(a) = self.eip_of(ip) {
            return Err(RuleError::IpCarriesEip { ip, eip: a.eip });
        }
        self.remove_secondary_ip(w, id, ip);
        Ok(())
    }

    fn associate(
        &mut self,
        w: &mut Writes,
        eip: Ipv4Addr,
        id: &str,
        private_ip: Option<Ipv4Addr>,
        mode: Mode,
    ) -> Result<(), RuleError> {
        usable(eip)?;
        if let Some(p) = private_ip {
            usable(p)?;
        }
        if let Some(a) = self.associations.get(&eip) {
            return Err(RuleError::EipTaken {
                eip,
                eni: a.eni.clone(),
            });
        }
        self.unused(eip)?;
        let eni = self.existing(id)?;
        if eni.kind == EniKind::Primary && mode != Mode::Nat {
            return Err(RuleError::PrimaryEniNatOnly {
                eni: id.to_string(),
                mode: mode.name(),
            });
        }
        let private_ip = match (mode, private_ip) {
            (Mode::Nat, p) => {
                let p = p.unwrap_or(eni.primary_ip);
                if !eni.has_ip(p) {
                    return Err(RuleError::IpNotOnEni {
                        eni: id.to_string(),
                        ip: p,
                    });
                }
                Some(p)
            }
            (Mode::CutThrough, Some(given)) if given != eni.primary_ip => {
                return Err(RuleError::CutThroughPrimaryIp {
                    eni: id.to_string(),
                    primary_ip: eni.primary_ip,
                    given,
                })
            }
            (Mode::CutThrough, _) => Some(eni.primary_ip),
            (Mode::MultiEip, Some(_)) => return Err(RuleError::MultiEipNoPrivateIp),
            (Mode::MultiEip, None) => None,
        };
        if let Some(existing) = eni.eips.first().map(|e| self.associations[e].mode) {
            if existing == Mode::CutThrough {
                return Err(RuleError::CutThroughExclusive {
                    eni: id.to_string(),
                    why: "is in cut-through mode already",
                });
            }
            if mode == Mode::CutThrough {
                return Err(RuleError::CutThroughExclusive {
                    eni: id.to_string(),
                    why: "already carries EIPs",
                });
            }
            if existing != mode {
                return Err(RuleError::OneModePerEni {
                    eni: id.to_string(),
                    existing: existing.name(),
                    requested: mode.name(),
                });
            }
            if eni.kind == EniKind::Primary {
                return Err(RuleError::PrimaryEniOneEip {
                    eni: id.to_string(),
                    eip: *eni.eips.first().expect("non-empty"),
                });
            }
        }
        if mode == Mode::Nat {
            let p = private_ip.expect("NAT has one");
            if let Some(a) = self.eip_of(p) {
                return Err(RuleError::PrivateTaken {
                    private_ip: p,
                    eip: a.eip,
                });
            }
        }
        let quota = self.limits.multi_eip_quota;
        if mode == Mode::MultiEip && eni.eips.len() as u32 >= quota {
            return Err(RuleError::MultiEipQuota {
                eni: id.to_string(),
                quota,
            });
        }
        let Some(slot) = self.free_slot() else {
            return Err(RuleError::Full(self.limits.max_associations));
        };
        let a = Association {
            eip,
            eni: id.to_string(),
            private_ip,
            mode,
            slot,
        };
        self.insert_association(w, a);
        Ok(())
    }

    fn disassociate(&mut self, w: &mut Writes, eip: Ipv4Addr) -> Result<(), RuleError> {
        if !self.associations.contains_key(&eip) {
            return Err(RuleError::UnknownEip(eip));
        }
        self.remove_association(w, eip);
        Ok(())
    }

    fn terminate_instance(&mut self, w: &mut Writes, instance: &str) -> Result<(), RuleError> {
        let Some(primary) = self.instances.get(instance).cloned() else {
            return Err(RuleError::UnknownInstance(instance.to_string()));
        };
        if let Some(eni) = self.attached.get(instance).and_then(|enis| enis.first()) {
            return Err(RuleError::InstanceHasEnis {
                instance: instance.to_string(),
                eni: eni.clone(),
            });
        }
        if let Some(&eip) = self.enis[&primary].eips.first() {
            return Err(RuleError::EniHasEips { eni: primary, eip });
        }
        self.remove_eni(w, &primary);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
