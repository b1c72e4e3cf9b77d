//! The product's objects (ENIs, instances, EIPs and their associations) and
//! the events that change them, with no kernel in sight. Every event is
//! checked against the rules of `docs/domain.md` in [`State::apply`]
//! before anything is written anywhere; [`tables`] turns the state into
//! what the datapath and the routing table must hold.

mod journal;
mod rows;
mod rules;
pub mod tables;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use journal::Journal;
pub use rows::RowChanges;
pub use rules::RuleError;

/// Names an ENI, e.g. `eni-0a1b2c`.
pub type EniId = String;
/// Names an instance, e.g. `i-0a1b2c`.
pub type InstanceId = String;

/// How an EIP reaches its ENI (docs/domain.md, "Association modes").
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// 1:1 stateless NAT between the EIP and one private IP of the ENI.
    Nat,
    /// The EIP replaces the ENI's primary private IP and travels unchanged.
    CutThrough,
    /// Up to a quota of EIPs travel unchanged to the ENI, which keeps its
    /// private IPs.
    MultiEip,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::CutThrough => "cut-through",
            Self::MultiEip => "multi-eip",
        }
    }

    /// The EIP travels unchanged between the Internet and the ENI.
    pub const fn passthrough(self) -> bool {
        !matches!(self, Self::Nat)
    }
}

/// Whether an ENI lives and dies with its instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EniKind {
    /// Created with an instance; lives and dies with it.
    Primary,
    /// Created on its own; attached, detached and moved at run time.
    Secondary,
}

/// Where the gateway reaches an ENI: a next hop, an interface, or both.
/// Neither means "wherever the gateway's own routes already send its
/// addresses" (an ENI on a directly connected subnet, say).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Location {
    /// Next hop through which the gateway reaches the ENI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ipv4Addr>,
    /// Interface through which the gateway reaches the ENI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

impl Location {
    pub fn is_routed(&self) -> bool {
        self.via.is_none() && self.dev.is_none()
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.via, &self.dev) {
            (None, None) => f.write_str("routed"),
            (Some(via), None) => write!(f, "via {via}"),
            (None, Some(dev)) => write!(f, "dev {dev}"),
            (Some(via), Some(dev)) => write!(f, "via {via} dev {dev}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attachment {
    pub instance: InstanceId,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Eni {
    pub kind: EniKind,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: BTreeSet<Ipv4Addr>,
    pub attachment: Option<Attachment>,
    /// The EIPs associated with this ENI.
    pub eips: BTreeSet<Ipv4Addr>,
}

impl Eni {
    pub fn has_ip(&self, ip: Ipv4Addr) -> bool {
        self.primary_ip == ip || self.secondary_ips.contains(&ip)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Association {
    pub eip: Ipv4Addr,
    pub eni: EniId,
    /// NAT: the private IP it translates to. Cut-through: the ENI's primary
    /// private IP, which it replaces. Multi-EIP: none.
    pub private_ip: Option<Ipv4Addr>,
    pub mode: Mode,
    /// Index of its counters in the datapath's per-EIP counter array.
    pub slot: u32,
}

/// One change to the state, as the cloud's control plane reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(extend("discriminator" = {"propertyName": "event"}))]
pub enum Event {
    /// A primary ENI comes with its instance (`instance` required); a
    /// secondary ENI is created detached.
    CreateEni {
        eni: EniId,
        kind: EniKind,
        primary_ip: Ipv4Addr,
        /// The instance (primary ENIs only).
        #[serde(default)]
        instance: Option<InstanceId>,
        #[serde(default)]
        location: Location,
    },
    /// Delete a detached secondary ENI that carries no EIP.
    DeleteEni { eni: EniId },
    /// Attach a detached secondary ENI to a known instance.
    AttachEni {
        eni: EniId,
        instance: InstanceId,
        #[serde(default)]
        location: Location,
    },
    /// Detach a secondary ENI; its EIPs stay associated, their packets are
    /// dropped (`drop_eni_detached`).
    DetachEni { eni: EniId },
    /// Detach and attach elsewhere in one step; its EIPs follow.
    MoveEni {
        eni: EniId,
        instance: InstanceId,
        #[serde(default)]
        location: Location,
    },
    /// Where an attached ENI now lives (its instance was migrated, say).
    LocateEni {
        eni: EniId,
        #[serde(default)]
        location: Location,
    },
    /// Assign a secondary private IP to an ENI.
    AssignIp { eni: EniId, ip: Ipv4Addr },
    /// Revoke a secondary private IP; refused while it carries an EIP.
    RevokeIp { eni: EniId, ip: Ipv4Addr },
    /// Associate an EIP with an ENI. `private_ip` defaults to the ENI's
    /// primary private IP in NAT and cut-through mode; multi-EIP mode takes
    /// none.
    Associate {
        eip: Ipv4Addr,
        eni: EniId,
        /// NAT: which private IP (default: the ENI's primary). Cut-through:
        /// the primary, if given. Multi-EIP: none.
        #[serde(default)]
        private_ip: Option<Ipv4Addr>,
        mode: Mode,
    },
    /// Remove an EIP's association; it stops reaching its ENI at once.
    Disassociate { eip: Ipv4Addr },
    /// The instance is gone, and its primary ENI with it.
    TerminateInstance { instance: InstanceId },
}

/// Capacities and quotas, from the agent's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Associations the datapath has room for.
    pub max_associations: u32,
    /// EIPs one ENI may carry in multi-EIP mode.
    pub multi_eip_quota: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_associations: eip_nat_common::maps::DEFAULT_MAX_ASSOCIATIONS,
            multi_eip_quota: 10,
        }
    }
}

/// What an accepted event changed: rows to persist, and addresses whose
/// datapath entry and route must be recomputed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub enis: BTreeSet<EniId>,
    pub eips: BTreeSet<Ipv4Addr>,
    pub addresses: BTreeSet<Ipv4Addr>,
}

impl Touched {
    pub fn merge(&mut self, other: Touched) {
        self.enis.extend(other.enis);
        self.eips.extend(other.eips);
        self.addresses.extend(other.addresses);
    }
}

/// Everything the control plane knows. Indexes are rebuilt from the ENIs
/// and associations, which are all that is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    limits: Limits,
    enis: BTreeMap<EniId, Eni>,
    associations: BTreeMap<Ipv4Addr, Association>,
    /// Every private IP of every ENI → its ENI.
    private_ips: BTreeMap<Ipv4Addr, EniId>,
    /// Instance → its primary ENI.
    instances: BTreeMap<InstanceId, EniId>,
    /// Instance → the secondary ENIs attached to it, so that terminating
    /// an instance looks at its own ENIs rather than at every ENI.
    attached: BTreeMap<InstanceId, BTreeSet<EniId>>,
    /// Counter slots released by a disassociation, reused lowest first.
    free_slots: BTreeSet<u32>,
    /// Slots below this have been handed out at least once.
    next_slot: u32,
    /// Free slots not to hand out while another is free (`Gateway::submit`).
    held: Held,
}

/// Counter slots freed by changes not yet durable: the gateway holds them
/// so that a new association does not zero a slot whose last period's end
/// could still be lost. Not part of what the state is (equality ignores
/// it), nor journaled: the gateway sets and clears it.
#[derive(Clone, Debug, Default, Eq)]
struct Held(BTreeSet<u32>);

impl PartialEq for Held {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl State {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            enis: BTreeMap::new(),
            associations: BTreeMap::new(),
            private_ips: BTreeMap::new(),
            instances: BTreeMap::new(),
            attached: BTreeMap::new(),
            free_slots: BTreeSet::new(),
            next_slot: 0,
            held: Held::default(),
        }
    }

    /// Rebuilds a state from stored rows, checking that they are coherent
    /// (they are, unless the store was edited by hand).
    pub fn from_rows(
        limits: Limits,
        enis: impl IntoIterator<Item = (EniId, Eni)>,
        associations: impl IntoIterator<Item = Association>,
    ) -> Result<Self, String> {
        let mut s = Self::new(limits);
        for (id, eni) in enis {
            for ip in std::iter::once(eni.primary_ip).chain(eni.secondary_ips.iter().copied()) {
                if let Some(other) = s.private_ips.insert(ip, id.clone()) {
                    return Err(format!("{ip} belongs to both {other} and {id}"));
                }
            }
            s.index_instance(&id, &eni);
            s.enis.insert(id, eni);
        }
        let mut used = BTreeSet::new();
        for a in associations {
            let Some(eni) = s.enis.get(&a.eni) else {
                return Err(format!(
                    "EIP {} is associated with unknown ENI {}",
                    a.eip, a.eni
                ));
            };
            if !eni.eips.contains(&a.eip) {
                return Err(format!("ENI {} does not list EIP {}", a.eni, a.eip));
            }
            if a.slot >= limits.max_associations || !used.insert(a.slot) {
                return Err(format!("EIP {} has a bad counter slot {}", a.eip, a.slot));
            }
            s.associations.insert(a.eip, a);
        }
        for (id, eni) in &s.enis {
            if let Some(eip) = eni.eips.iter().find(|e| !s.associations.contains_key(e)) {
                return Err(format!("ENI {id} lists EIP {eip}, which is not associated"));
            }
        }
        s.next_slot = used.last().map_or(0, |l| l + 1);
        s.free_slots = (0..s.next_slot).filter(|i| !used.contains(i)).collect();
        Ok(s)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Hands out `slots` (if free) only when no other slot is left.
    pub fn hold_slots(&mut self, slots: &[u32]) {
        self.held.0.extend(slots);
    }

    /// Ends [`State::hold_slots`] for `slots`.
    pub fn release_slots(&mut self, slots: &[u32]) {
        for s in slots {
            self.held.0.remove(s);
        }
    }

    /// Ends [`State::hold_slots`] for every slot.
    pub fn release_all_slots(&mut self) {
        self.held.0.clear();
    }

    /// The slot a new association gets: the lowest free one not held, else
    /// the next one above every slot in use or held, else (the limit
    /// reached) a held one; None when every slot is taken.
    fn free_slot(&self) -> Option<u32> {
        let max = self.limits.max_associations;
        let held = &self.held.0;
        self.free_slots
            .iter()
            .find(|s| !held.contains(s))
            .copied()
            .or_else(|| {
                let above = self.next_slot.max(held.last().map_or(0, |h| h + 1));
                (above < max).then_some(above)
            })
            .or_else(|| self.free_slots.first().copied())
            .or_else(|| (self.next_slot < max).then_some(self.next_slot))
    }

    pub fn enis(&self) -> impl Iterator<Item = (&EniId, &Eni)> {
        self.enis.iter()
    }

    pub fn eni(&self, id: &str) -> Option<&Eni> {
        self.enis.get(id)
    }

    pub fn associations(&self) -> impl Iterator<Item = &Association> {
        self.associations.values()
    }

    pub fn association(&self, eip: Ipv4Addr) -> Option<&Association> {
        self.associations.get(&eip)
    }

    /// The EIP that `private_ip` carries (NAT or cut-through).
    pub fn eip_of(&self, private_ip: Ipv4Addr) -> Option<&Association> {
        let eni = self.enis.get(self.private_ips.get(&private_ip)?)?;
        eni.eips
            .iter()
            .filter_map(|e| self.associations.get(e))
            .find(|a| a.private_ip == Some(private_ip))
    }
}

#[cfg(test)]
mod oracle;
