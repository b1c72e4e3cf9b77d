//! A second, deliberately naive reading of docs/domain.md's rules (lists
//! and linear scans, no indexes, no shared code with `rules.rs`), and property
//! tests that random event sequences get the same answer from both: the
//! same accept or refuse (and the same rule), and the same tables after
//! every event.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use eip_nat_common::maps::{ADDR_DETACHED, ADDR_IS_EIP, ADDR_IS_PRIVATE, ADDR_PRIVATE_DISABLED};
use proptest::prelude::*;

use super::{tables, EniKind, Event, Journal, Limits, Location, Mode, State, Touched};

#[derive(Clone, Debug)]
struct OEni {
    id: String,
    primary: bool,
    ips: Vec<Ipv4Addr>, // ips[0] is the primary private IP
    instance: Option<String>,
    location: Location,
}

#[derive(Clone, Debug)]
struct OAssoc {
    eip: Ipv4Addr,
    eni: String,
    private: Option<Ipv4Addr>,
    mode: Mode,
}

#[derive(Clone, Debug, Default)]
struct Oracle {
    enis: Vec<OEni>,
    assocs: Vec<OAssoc>,
    quota: usize,
    capacity: usize,
}

fn bad_addr(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 0 || o[0] == 127 || o[0] >= 224 || (o[0] == 169 && o[1] == 254)
}

fn bad_name(s: &str) -> bool {
    s.is_empty()
        || s.len() > 64
        || s.chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(c)))
}

fn bad_location(l: &Location) -> bool {
    l.via.is_some_and(bad_addr)
        || l.dev.as_ref().is_some_and(|d| {
            d.is_empty() || d.len() > 15 || d == "." || d == ".." || d.contains(['/', ':', ' '])
        })
}

impl Oracle {
    fn eni(&self, id: &str) -> Option<&OEni> {
        self.enis.iter().find(|e| e.id == id)
    }
    fn eni_mut(&mut self, id: &str) -> &mut OEni {
        self.enis.iter_mut().find(|e| e.id == id).unwrap()
    }
    fn instance_known(&self, i: &str) -> bool {
        self.enis
            .iter()
            .any(|e| e.primary && e.instance.as_deref() == Some(i))
    }
    fn in_use(&self, a: Ipv4Addr) -> bool {
        self.enis.iter().any(|e| e.ips.contains(&a)) || self.assocs.iter().any(|x| x.eip == a)
    }
    fn eips_of(&self, id: &str) -> Vec<&OAssoc> {
        self.assocs.iter().filter(|a| a.eni == id).collect()
    }

    fn apply(&mut self, ev: &Event) -> Result<(), &'static str> {
        match ev {
            Event::CreateEni {
                eni,
                kind,
                primary_ip,
                instance,
                location,
            } => {
                if bad_name(eni) {
                    return Err("invalid_name");
                }
                if bad_addr(*primary_ip) {
                    return Err("unusable_address");
                }
                if bad_location(location) {
                    return Err("invalid_name");
                }
                if self.eni(eni).is_some() {
                    return Err("eni_exists");
                }
                if self.in_use(*primary_ip) {
                    return Err("address_in_use");
                }
                let primary = *kind == EniKind::Primary;
                match (primary, instance) {
                    (true, None) => return Err("primary_needs_instance"),
                    (true, Some(i)) if bad_name(i) => return Err("invalid_name"),
                    (true, Some(i)) if self.instance_known(i) => return Err("instance_exists"),
                    (false, Some(_)) => return Err("secondary_created_detached"),
                    (false, None) if *location != Location::default() => {
                        return Err("secondary_created_detached")
                    }
                    _ => {}
                }
                self.enis.push(OEni {
                    id: eni.clone(),
                    primary,
                    ips: vec![*primary_ip],
                    instance: instance.clone(),
                    location: location.clone(),
                });
            }
            Event::DeleteEni { eni } => {
                let e = self.eni(eni).ok_or("unknown_eni")?;
                if e.primary {
                    return Err("primary_eni_fixed");
                }
                if e.instance.is_some() {
                    return Err("eni_attached");
                }
                if !self.eips_of(eni).is_empty() {
                    return Err("eni_has_eips");
                }
                self.enis.retain(|e| e.id != *eni);
            }
            Event::AttachEni {
                eni,
                instance,
                location,
            }
            | Event::MoveEni {
                eni,
                instance,
                location,
            } => {
                let moving = matches!(ev, Event::MoveEni { .. });
                if bad_name(instance) || bad_location(location) {
                    return Err("invalid_name");
                }
                let e = self.eni(eni).ok_or("unknown_eni")?;
                if e.primary {
                    return Err("primary_eni_fixed");
                }
                match (&e.instance, moving) {
                    (Some(_), false) => return Err("already_attached"),
                    (None, true) => return Err("not_attached"),
                    _ => {}
                }
                if !self.instance_known(instance) {
                    return Err("unknown_instance");
                }
                if moving && e.instance.as_ref() == Some(instance) {
                    return Err("same_instance");
                }
                let e = self.eni_mut(eni);
                e.instance = Some(instance.clone());
                e.location = location.clone();
            }
            Event::DetachEni { eni } => {
                let e = self.eni(eni).ok_or("unknown_eni")?;
                if e.primary {
                    return Err("primary_eni_fixed");
                }
                if e.instance.is_none() {
                    return Err("not_attached");
                }
                let e = self.eni_mut(eni);
                e.instance = None;
                e.location = Location::default();
            }
            Event::LocateEni { eni, location } => {
                if bad_location(location) {
                    return Err("invalid_name");
                }
                let e = self.eni(eni).ok_or("unknown_eni")?;
                if e.instance.is_none() {
                    return Err("not_attached");
                }
                self.eni_mut(eni).location = location.clone();
            }
            Event::AssignIp { eni, ip } => {
                self.eni(eni).ok_or("unknown_eni")?;
                if bad_addr(*ip) {
                    return Err("unusable_address");
                }
                if self.in_use(*ip) {
                    return Err("address_in_use");
                }
                self.eni_mut(eni).ips.push(*ip);
            }
            Event::RevokeIp { eni, ip } => {
                let e = self.eni(eni).ok_or("unknown_eni")?;
                if e.ips[0] == *ip {
                    return Err("revoke_primary_ip");
                }
                if !e.ips.contains(ip) {
                    return Err("ip_not_on_eni");
                }
                if self.assocs.iter().any(|a| a.private == Some(*ip)) {
                    return Err("ip_carries_eip");
                }
                self.eni_mut(eni).ips.retain(|x| x != ip);
            }
            Event::Associate {
                eip,
                eni,
                private_ip,
                mode,
            } => {
                if bad_addr(*eip) || private_ip.is_some_and(bad_addr) {
                    return Err("unusable_address");
                }
                if self.assocs.iter().any(|a| a.eip == *eip) {
                    return Err("eip_has_one_target");
                }
                if self.in_use(*eip) {
                    return Err("address_in_use");
                }
                let e = self.eni(eni).ok_or("unknown_eni")?;
                if e.primary && *mode != Mode::Nat {
                    return Err("primary_eni_nat_only");
                }
                let private = match mode {
                    Mode::Nat => {
                        let p = private_ip.unwrap_or(e.ips[0]);
                        if !e.ips.contains(&p) {
                            return Err("ip_not_on_eni");
                        }
                        Some(p)
                    }
                    Mode::CutThrough => {
                        if private_ip.is_some_and(|p| p != e.ips[0]) {
                            return Err("cut_through_primary_ip");
                        }
                        Some(e.ips[0])
                    }
                    Mode::MultiEip => {
                        if private_ip.is_some() {
                            return Err("multi_eip_no_private_ip");
                        }
                        None
                    }
                };
                let mine = self.eips_of(eni);
                if let Some(first) = mine.first() {
                    if first.mode == Mode::CutThrough || *mode == Mode::CutThrough {
                        return Err("cut_through_exclusive");
                    }
                    if first.mode != *mode {
                        return Err("one_mode_per_eni");
                    }
                    if e.primary {
                        return Err("primary_eni_one_eip");
                    }
                }
                if *mode == Mode::Nat && self.assocs.iter().any(|a| a.private == private) {
                    return Err("one_eip_per_private_ip");
                }
                if *mode == Mode::MultiEip && mine.len() >= self.quota {
                    return Err("multi_eip_quota");
                }
                if self.assocs.len() >= self.capacity {
                    return Err("table_full");
                }
                self.assocs.push(OAssoc {
                    eip: *eip,
                    eni: eni.clone(),
                    private,
                    mode: *mode,
                });
            }
            Event::Disassociate { eip } => {
                if !self.assocs.iter().any(|a| a.eip == *eip) {
                    return Err("unknown_eip");
                }
                self.assocs.retain(|a| a.eip != *eip);
            }
            Event::TerminateInstance { instance } => {
                if !self.instance_known(instance) {
                    return Err("unknown_instance");
                }
                if self
                    .enis
                    .iter()
                    .any(|e| !e.primary && e.instance.as_ref() == Some(instance))
                {
                    return Err("instance_has_enis");
                }
                let p = self
                    .enis
                    .iter()
                    .find(|e| e.primary && e.instance.as_ref() == Some(instance))
                    .unwrap()
                    .id
                    .clone();
                if !self.eips_of(&p).is_empty() {
                    return Err("eni_has_eips");
                }
                self.enis.retain(|e| e.id != p);
            }
        }
        Ok(())
    }

    /// Expected `ADDRESSES` entries: flags and the address each points at
    /// (slots are checked separately, as they are the agent's choice).
    fn entries(&self) -> BTreeMap<Ipv4Addr, (u32, Ipv4Addr)> {
        let mut out = BTreeMap::new();
        for a in &self.assocs {
            let e = self.eni(&a.eni).unwrap();
            let detached = if e.instance.is_none() {
                ADDR_DETACHED
            } else {
                0
            };
            match (a.mode, a.private) {
                (Mode::Nat, Some(p)) => {
                    out.insert(a.eip, (ADDR_IS_EIP | detached, p));
                    out.insert(p, (ADDR_IS_PRIVATE | detached, a.eip));
                }
                (Mode::CutThrough, Some(p)) => {
                    out.insert(a.eip, (ADDR_IS_EIP | ADDR_IS_PRIVATE | detached, a.eip));
                    out.insert(p, (ADDR_PRIVATE_DISABLED, Ipv4Addr::UNSPECIFIED));
                }
                _ => {
                    out.insert(a.eip, (ADDR_IS_EIP | ADDR_IS_PRIVATE | detached, a.eip));
                }
            }
        }
        out
    }

    fn routes(&self) -> BTreeMap<Ipv4Addr, Location> {
        let mut out = BTreeMap::new();
        for a in &self.assocs {
            let e = self.eni(&a.eni).unwrap();
            if e.instance.is_none() || e.location == Location::default() {
                continue;
            }
            let addr = if a.mode == Mode::Nat {
                a.private.unwrap()
            } else {
                a.eip
            };
            out.insert(addr, e.location.clone());
        }
        out
    }
}

/// The tables the real control plane produces, in the oracle's terms.
fn real_entries(state: &State) -> BTreeMap<Ipv4Addr, (u32, Ipv4Addr)> {
    tables::all_entries(state)
        .into_iter()
        .map(|(addr, e)| {
            let target = if e.is_eip() { e.private_ip } else { e.eip };
            (addr, (e.flags, Ipv4Addr::from(target)))
        })
        .collect()
}

/// What an accepted event reports as touched covers every row and every
/// address (datapath entry or route) that it changed.
pub(super) fn covers(before: &State, after: &State, t: &Touched) -> Result<(), String> {
    let ids: BTreeSet<&String> = before
        .enis()
        .chain(after.enis())
        .map(|(id, _)| id)
        .collect();
    for id in ids {
        if before.eni(id) != after.eni(id) && !t.enis.contains(id) {
            return Err(format!("ENI {id} changed, not reported"));
        }
    }
    let eips: BTreeSet<Ipv4Addr> = before
        .associations()
        .chain(after.associations())
        .map(|a| a.eip)
        .collect();
    for eip in eips {
        if before.association(eip) != after.association(eip) && !t.eips.contains(&eip) {
            return Err(format!("association of {eip} changed, not reported"));
        }
    }
    let (e0, e1) = (tables::all_entries(before), tables::all_entries(after));
    let (r0, r1) = (tables::all_routes(before), tables::all_routes(after));
    let addrs: BTreeSet<&Ipv4Addr> = e0
        .keys()
        .chain(e1.keys())
        .chain(r0.keys())
        .chain(r1.keys())
        .collect();
    for a in addrs {
        let changed = e0.get(a) != e1.get(a) || r0.get(a) != r1.get(a);
        if changed && !t.addresses.contains(a) {
            return Err(format!("the entry or route of {a} changed, not reported"));
        }
    }
    Ok(())
}

pub(super) const LIMITS: Limits = Limits {
    max_associations: 6,
    multi_eip_quota: 3,
};

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        8 => (1u8..=8).prop_map(|i| Ipv4Addr::new(10, 0, 0, i)),
        8 => (1u8..=8).prop_map(|i| Ipv4Addr::new(203, 0, 113, i)),
        1 => Just(Ipv4Addr::new(127, 0, 0, 1)),
        1 => Just(Ipv4Addr::new(169, 254, 0, 1)),
    ]
}

fn name(prefix: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        20 => (0u8..4).prop_map(move |i| format!("{prefix}{i}")),
        1 => Just("bad name".to_string()),
    ]
}

fn location() -> impl Strategy<Value = Location> {
    prop_oneof![
        Just(Location::default()),
        (1u8..=2).prop_map(|h| Location {
            via: Some(Ipv4Addr::new(10, 1, 0, h)),
            dev: None,
        }),
        Just(Location {
            via: None,
            dev: Some("veth-a".into()),
        }),
        Just(Location {
            via: Some(Ipv4Addr::new(10, 1, 0, 3)),
            dev: Some("bad/dev".into()),
        }),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Nat),
        Just(Mode::CutThrough),
        Just(Mode::MultiEip)
    ]
}

pub(super) fn event() -> impl Strategy<Value = Event> {
    let kind = prop_oneof![Just(EniKind::Primary), Just(EniKind::Secondary)];
    prop_oneof![
        4 => (name("eni-"), kind, addr(), proptest::option::of(name("i-")), location()).prop_map(
            |(eni, kind, primary_ip, instance, location)| Event::CreateEni {
                eni,
                kind,
                primary_ip,
                instance,
                // Mostly valid combinations, or nothing would get created.
                location: if kind == EniKind::Primary { location } else { Location::default() },
            }
        ),
        1 => name("eni-").prop_map(|eni| Event::DeleteEni { eni }),
        3 => (name("eni-"), name("i-"), location())
            .prop_map(|(eni, instance, location)| Event::AttachEni { eni, instance, location }),
        1 => name("eni-").prop_map(|eni| Event::DetachEni { eni }),
        2 => (name("eni-"), name("i-"), location())
            .prop_map(|(eni, instance, location)| Event::MoveEni { eni, instance, location }),
        1 => (name("eni-"), location()).prop_map(|(eni, location)| Event::LocateEni { eni, location }),
        3 => (name("eni-"), addr()).prop_map(|(eni, ip)| Event::AssignIp { eni, ip }),
        1 => (name("eni-"), addr()).prop_map(|(eni, ip)| Event::RevokeIp { eni, ip }),
        8 => (addr(), name("eni-"), proptest::option::of(addr()), mode()).prop_map(
            |(eip, eni, private_ip, mode)| Event::Associate { eip, eni, private_ip, mode }
        ),
        2 => addr().prop_map(|eip| Event::Disassociate { eip }),
        1 => name("i-").prop_map(|instance| Event::TerminateInstance { instance }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn control_plane_agrees_with_the_oracle(events in proptest::collection::vec(event(), 1..60)) {
        let mut state = State::new(LIMITS);
        let mut oracle = Oracle { quota: 3, capacity: 6, ..Default::default() };
        for (i, ev) in events.iter().enumerate() {
            let before = state.clone();
            let touched = state.apply(ev, &mut Journal::new(&state));
            let real = touched.as_ref().map(|_| ()).map_err(|e| e.code());
            let expected = oracle.apply(ev);
            prop_assert_eq!(real, expected, "event {} {:?}", i, ev);
            match touched {
                Ok(t) => covers(&before, &state, &t).map_err(|e| TestCaseError::fail(format!("event {i} {ev:?}: {e}")))?,
                Err(_) => prop_assert_eq!(&state, &before, "a refused event changed the state"),
            }
            prop_assert_eq!(real_entries(&state), oracle.entries(), "after event {} {:?}", i, ev);
            prop_assert_eq!(tables::all_routes(&state), oracle.routes(), "after event {} {:?}", i, ev);
            // Counter slots: distinct and within capacity.
            let mut slots: Vec<u32> = state.associations().map(|a| a.slot).collect();
            slots.sort();
            slots.dedup();
            prop_assert_eq!(slots.len(), state.associations().count());
            prop_assert!(slots.iter().all(|s| *s < LIMITS.max_associations));
            // What is stored rebuilds the same state.
            let rebuilt = State::from_rows(
                LIMITS,
                state.enis().map(|(k, v)| (k.clone(), v.clone())),
                state.associations().cloned(),
            );
            prop_assert_eq!(rebuilt.as_ref(), Ok(&state));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Batches of random events: whenever one is refused, undoing the
    /// journal gives back exactly the state from before the batch.
    #[test]
    fn a_refused_batch_is_undone_exactly(
        events in proptest::collection::vec(event(), 1..200),
        sizes in proptest::collection::vec(1usize..12, 1..40),
    ) {
        let mut state = State::new(LIMITS);
        let mut events = events.iter();
        for size in sizes {
            let batch: Vec<_> = events.by_ref().take(size).collect();
            let before = state.clone();
            let mut journal = Journal::new(&state);
            let mut refused = false;
            for ev in batch {
                if state.apply(ev, &mut journal).is_err() {
                    refused = true;
                    break;
                }
            }
            if refused {
                state.undo(journal);
                prop_assert_eq!(&state, &before);
            }
        }
    }
}
