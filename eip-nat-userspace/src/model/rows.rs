//! Rows written elsewhere (another gateway of a fleet, through the shared
//! store) put in place as they are: they were checked against the rules by
//! the agent that wrote them, against the same state. The indexes follow,
//! and the rows and addresses they affect are reported, as an event's are,
//! for persisting and applying.

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::{Association, Eni, EniId, State, Touched};

/// A set of row changes: the new row, or None where the row is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowChanges {
    pub enis: BTreeMap<EniId, Option<Eni>>,
    pub associations: BTreeMap<Ipv4Addr, Option<Association>>,
}

impl RowChanges {
    pub fn is_empty(&self) -> bool {
        self.enis.is_empty() && self.associations.is_empty()
    }

    /// What it takes to turn `state`'s rows into `enis` and `associations`
    /// (a whole listing): only the rows that differ.
    pub fn between(
        state: &State,
        enis: impl IntoIterator<Item = (EniId, Eni)>,
        associations: impl IntoIterator<Item = Association>,
    ) -> Self {
        let mut c = Self::default();
        let enis: BTreeMap<EniId, Eni> = enis.into_iter().collect();
        let associations: BTreeMap<Ipv4Addr, Association> =
            associations.into_iter().map(|a| (a.eip, a)).collect();
        for id in state.enis.keys().filter(|id| !enis.contains_key(*id)) {
            c.enis.insert(id.clone(), None);
        }
        for (id, eni) in enis {
            if state.enis.get(&id) != Some(&eni) {
                c.enis.insert(id, Some(eni));
            }
        }
        for eip in state.associations.keys() {
            if !associations.contains_key(eip) {
                c.associations.insert(*eip, None);
            }
        }
        for (eip, a) in associations {
            if state.associations.get(&eip) != Some(&a) {
                c.associations.insert(eip, Some(a));
            }
        }
        c
    }
}

impl State {
    /// Puts `changes` in place; returns the rows changed and every address
    /// whose datapath entry or route may differ (before or after).
    pub fn set_rows(&mut self, changes: RowChanges) -> Touched {
        let mut t = Touched::default();
        // The addresses that depend on what is about to change, as it is.
        for id in changes.enis.keys() {
            self.addresses_of_eni(id, &mut t);
        }
        for eip in changes.associations.keys() {
            self.addresses_of_association(*eip, &mut t);
        }
        // Removals first (an address or a slot may move between two
        // changed rows), then insertions.
        for id in changes.enis.keys() {
            if let Some(eni) = self.enis.remove(id) {
                self.unindex(id, &eni);
            }
        }
        // Slots as an event moves them; nothing here is undone, so their
        // log is dropped.
        let mut slots = Vec::new();
        for eip in changes.associations.keys() {
            if let Some(a) = self.associations.remove(eip) {
                self.release_slot(a.slot, &mut slots);
            }
        }
        for (id, eni) in &changes.enis {
            t.enis.insert(id.clone());
            if let Some(eni) = eni {
                self.index(id, eni);
                self.enis.insert(id.clone(), eni.clone());
            }
        }
        for (eip, a) in changes.associations {
            t.eips.insert(eip);
            if let Some(a) = a {
                self.take_slot(a.slot, &mut slots);
                self.associations.insert(eip, a);
            }
        }
        // And as they are now.
        for id in changes.enis.keys() {
            self.addresses_of_eni(id, &mut t);
        }
        for eip in t.eips.clone() {
            self.addresses_of_association(eip, &mut t);
        }
        t
    }

    fn addresses_of_eni(&self, id: &str, t: &mut Touched) {
        if let Some(eni) = self.enis.get(id) {
            for eip in &eni.eips {
                self.addresses_of_association(*eip, t);
                t.addresses.insert(*eip);
            }
        }
    }

    fn addresses_of_association(&self, eip: Ipv4Addr, t: &mut Touched) {
        t.addresses.insert(eip);
        if let Some(a) = self.associations.get(&eip) {
            t.addresses.extend(a.private_ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{
        oracle::{covers, event, LIMITS},
        Journal,
    };

    proptest! {
        /// A follower that takes only the rows each group of events changed
        /// (as another gateway's agent takes them from etcd) ends equal to
        /// the state the events were applied to, with every row and every
        /// address whose entry or route changed reported.
        #[test]
        fn a_follower_taking_the_changed_rows_stays_equal(
            groups in prop::collection::vec(prop::collection::vec(event(), 1..6), 1..30)
        ) {
            let mut leader = State::new(LIMITS);
            let mut follower = State::new(LIMITS);
            for group in groups {
                let mut touched = Touched::default();
                for event in group {
                    let mut journal = Journal::new(&leader);
                    match leader.apply(&event, &mut journal) {
                        Ok(t) => touched.merge(t),
                        Err(_) => leader.undo(journal),
                    }
                }
                let changes = RowChanges {
                    enis: touched.enis.iter().map(|id| (id.clone(), leader.eni(id).cloned())).collect(),
                    associations: touched.eips.iter().map(|e| (*e, leader.association(*e).cloned())).collect(),
                };
                let before = follower.clone();
                let t = follower.set_rows(changes);
                prop_assert_eq!(&follower, &leader);
                prop_assert_eq!(covers(&before, &follower, &t), Ok(()));
                // A whole listing gives no further change.
                prop_assert!(RowChanges::between(
                    &follower,
                    leader.enis().map(|(id, e)| (id.clone(), e.clone())),
                    leader.associations().cloned(),
                ).is_empty());
            }
        }
    }
}
