//! Usage records: what each association carried, for monitoring and
//! billing. An association's *period* starts when it is made (or its ENI
//! is attached, moved or relocated) and ends when it is undone (or its
//! ENI is detached, moved or relocated); the record of a period that ended
//! holds its final counters and is kept durably (`GET /v1/usage`).
//!
//! The per-EIP counters in the datapath live in slots that associations
//! reuse. A period's counters are its slot's counters minus the period's
//! *base*: 0 when the slot was zeroed for it, or the slot's reading at the
//! moment the previous period on that slot ended, when one period follows
//! another on the same slot in one change (a move, or a slot freed and
//! taken again in one batch). That one reading ends one period and starts
//! the next, so no packet is counted in both, nor in neither. A change
//! that leaves an association carried as it was (a batch that undoes and
//! remakes it alike, say) ends nothing: the datapath never stopped
//! carrying it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{SystemTime, UNIX_EPOCH},
};

use eip_nat_common::EipCounters;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{EniId, InstanceId, Location, Mode, State, Touched};

/// Packets and bytes, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Counts {
    pub in_packets: u64,
    /// IPv4 bytes (header total length), as billed.
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

impl Counts {
    pub fn since(self, base: Counts) -> Counts {
        Counts {
            in_packets: self.in_packets.saturating_sub(base.in_packets),
            in_bytes: self.in_bytes.saturating_sub(base.in_bytes),
            out_packets: self.out_packets.saturating_sub(base.out_packets),
            out_bytes: self.out_bytes.saturating_sub(base.out_bytes),
        }
    }
}

impl From<EipCounters> for Counts {
    fn from(c: EipCounters) -> Self {
        Self {
            in_packets: c.in_packets,
            in_bytes: c.in_bytes,
            out_packets: c.out_packets,
            out_bytes: c.out_bytes,
        }
    }
}

/// What makes a period: an association as it is carried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Carried {
    pub eip: Ipv4Addr,
    pub eni: EniId,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<Ipv4Addr>,
    /// The instance the ENI is attached to; none while detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// The counter slot.
    pub slot: u32,
}

/// A period that has not ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Period {
    #[serde(flatten)]
    pub carried: Carried,
    /// Nanoseconds since the Unix epoch.
    pub started_ns: u64,
    /// The slot's counters when the period started.
    pub base: Counts,
}

/// `GET /v1/usage`: a period that ended, with its final counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRecord {
    #[serde(flatten)]
    pub carried: Carried,
    pub started_ns: u64,
    pub ended_ns: u64,
    #[serde(flatten)]
    pub counts: Counts,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// How `eip` is carried in `state`, if it is associated.
pub fn carried(state: &State, eip: Ipv4Addr) -> Option<Carried> {
    let a = state.association(eip)?;
    let attachment = state.eni(&a.eni).and_then(|e| e.attachment.clone());
    Some(Carried {
        eip,
        eni: a.eni.clone(),
        mode: a.mode,
        private_ip: a.private_ip,
        instance: attachment.as_ref().map(|at| at.instance.clone()),
        location: attachment.map(|at| at.location),
        slot: a.slot,
    })
}

/// What a change wrote of usage, once the datapath took it: records of
/// the periods that ended, the periods opened (or replaced), and the EIPs
/// whose period closed with none after it.
#[derive(Debug, Default)]
pub struct Turned {
    pub ended: Vec<UsageRecord>,
    pub opened: Vec<Period>,
    pub closed: Vec<Ipv4Addr>,
    /// The counter slots of the closed periods' associations, now free.
    pub freed: Vec<u32>,
    /// The open periods these replaced, by EIP (None: it had none), to
    /// put back if the change is undone.
    pub before: Vec<(Ipv4Addr, Option<Period>)>,
}

/// What a change did to the periods.
#[derive(Debug, Default)]
pub struct Turnover {
    pub ended: Vec<Period>,
    pub started: Vec<Carried>,
}

impl Turnover {
    /// Slots on which a period ends: read once, after the datapath took
    /// the change, to end those periods and start the ones that follow.
    pub fn ending_slots(&self) -> BTreeSet<u32> {
        self.ended.iter().map(|p| p.carried.slot).collect()
    }
}

/// The periods that `touched` (applied to `state`) ended and started,
/// against the `open` ones.
pub fn turnover(open: &BTreeMap<Ipv4Addr, Period>, state: &State, touched: &Touched) -> Turnover {
    // An association that changed, or went, has its row in `touched`; one
    // whose ENI changed (attached, detached, moved, relocated) is on that
    // ENI still. Nothing else can end a period, so no scan of them all.
    let mut eips: BTreeSet<Ipv4Addr> = touched.eips.iter().copied().collect();
    for id in &touched.enis {
        if let Some(eni) = state.eni(id) {
            eips.extend(eni.eips.iter().copied());
        }
    }
    let mut t = Turnover::default();
    for eip in eips {
        let now = carried(state, eip);
        let before = open.get(&eip);
        if before.map(|p| &p.carried) == now.as_ref() {
            continue;
        }
        if let Some(p) = before {
            t.ended.push(p.clone());
        }
        if let Some(c) = now {
            t.started.push(c);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EniKind, Event, Journal, Limits};

    fn apply(state: &mut State, e: Event) -> Touched {
        state.apply(&e, &mut Journal::new(state)).unwrap()
    }

    #[test]
    fn periods_end_and_start_with_association_and_attachment() {
        let mut s = State::new(Limits::default());
        let mut open = BTreeMap::new();
        let eip: Ipv4Addr = "203.0.113.1".parse().unwrap();
        let step = |s: &mut State, e: Event, open: &mut BTreeMap<Ipv4Addr, Period>| {
            let touched = apply(s, e);
            let t = turnover(open, s, &touched);
            for p in &t.ended {
                open.remove(&p.carried.eip);
            }
            for c in &t.started {
                open.insert(
                    c.eip,
                    Period {
                        carried: c.clone(),
                        started_ns: 0,
                        base: Counts::default(),
                    },
                );
            }
            (t.ended.len(), t.started.len())
        };
        for (n, instance) in ["i-1", "i-2"].into_iter().enumerate() {
            let primary = Event::CreateEni {
                eni: format!("eni-p{n}"),
                kind: EniKind::Primary,
                primary_ip: Ipv4Addr::new(10, 0, 1, n as u8),
                instance: Some(instance.into()),
                location: Location::default(),
            };
            assert_eq!(step(&mut s, primary, &mut open), (0, 0));
        }
        let eni = Event::CreateEni {
            eni: "eni-1".into(),
            kind: EniKind::Secondary,
            primary_ip: "10.0.0.1".parse().unwrap(),
            instance: None,
            location: Location::default(),
        };
        assert_eq!(step(&mut s, eni, &mut open), (0, 0));
        let assoc = Event::Associate {
            eip,
            eni: "eni-1".into(),
            private_ip: None,
            mode: Mode::Nat,
        };
        assert_eq!(step(&mut s, assoc.clone(), &mut open), (0, 1));
        let attach = Event::AttachEni {
            eni: "eni-1".into(),
            instance: "i-1".into(),
            location: Location::default(),
        };
        assert_eq!(step(&mut s, attach, &mut open), (1, 1), "attached");
        let moved = Event::MoveEni {
            eni: "eni-1".into(),
            instance: "i-2".into(),
            location: Location::default(),
        };
        assert_eq!(step(&mut s, moved, &mut open), (1, 1), "moved");
        // An unrelated change ends nothing.
        let other = Event::AssignIp {
            eni: "eni-1".into(),
            ip: "10.0.0.2".parse().unwrap(),
        };
        assert_eq!(step(&mut s, other, &mut open), (0, 0));
        assert_eq!(step(&mut s, Event::Disassociate { eip }, &mut open), (1, 0));
        assert!(open.is_empty());
    }
}
