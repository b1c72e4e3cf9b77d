//! Undoing a refused batch without copying the whole state first: the rows
//! each event may change are saved (once, as they were before the batch)
//! before it runs, and put back, indexes included, if a later event is
//! refused. A batch costs what its events touch, not what the state holds.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use super::{Association, Eni, EniId, EniKind, Event, State};

/// The rows a batch has changed so far, as they were before it.
pub struct Journal {
    enis: HashMap<EniId, Option<Eni>>,
    associations: HashMap<Ipv4Addr, Option<Association>>,
    free_slots: BTreeSet<u32>,
    next_slot: u32,
}

impl Journal {
    pub fn new(state: &State) -> Self {
        Self {
            enis: HashMap::new(),
            associations: HashMap::new(),
            free_slots: state.free_slots.clone(),
            next_slot: state.next_slot,
        }
    }

    /// Saves the rows `event` may change, unless already saved.
    pub fn save(&mut self, state: &State, event: &Event) {
        let mut enis: Vec<&str> = Vec::new();
        let mut eips = Vec::new();
        match event {
            Event::CreateEni { eni, .. }
            | Event::DeleteEni { eni }
            | Event::AttachEni { eni, .. }
            | Event::DetachEni { eni }
            | Event::MoveEni { eni, .. }
            | Event::LocateEni { eni, .. }
            | Event::AssignIp { eni, .. }
            | Event::RevokeIp { eni, .. } => enis.push(eni),
            Event::Associate { eip, eni, .. } => {
                enis.push(eni);
                eips.push(*eip);
            }
            Event::Disassociate { eip } => {
                eips.push(*eip);
                if let Some(a) = state.associations.get(eip) {
                    enis.push(&a.eni);
                }
            }
            Event::TerminateInstance { instance } => {
                if let Some(eni) = state.instances.get(instance) {
                    enis.push(eni);
                }
            }
        }
        for id in enis {
            self.enis
                .entry(id.to_string())
                .or_insert_with(|| state.enis.get(id).cloned());
        }
        for eip in eips {
            self.associations
                .entry(eip)
                .or_insert_with(|| state.associations.get(&eip).cloned());
        }
    }
}

impl State {
    /// Puts back every row `journal` saved: the state is as it was when
    /// the journal was made.
    pub fn undo(&mut self, journal: Journal) {
        // Indexes first: drop what the current rows put there, then add
        // what the saved rows had (an address may have moved between two
        // saved ENIs, so all removals go before any insertion).
        for id in journal.enis.keys() {
            if let Some(eni) = self.enis.remove(id) {
                for ip in std::iter::once(eni.primary_ip).chain(eni.secondary_ips) {
                    self.private_ips.remove(&ip);
                }
                if let (EniKind::Primary, Some(a)) = (eni.kind, eni.attachment) {
                    self.instances.remove(&a.instance);
                }
            }
        }
        for (id, saved) in journal.enis {
            let Some(eni) = saved else { continue };
            for ip in std::iter::once(eni.primary_ip).chain(eni.secondary_ips.iter().copied()) {
                self.private_ips.insert(ip, id.clone());
            }
            if let (EniKind::Primary, Some(a)) = (eni.kind, &eni.attachment) {
                self.instances.insert(a.instance.clone(), id.clone());
            }
            self.enis.insert(id, eni);
        }
        for (eip, saved) in journal.associations {
            match saved {
                Some(a) => self.associations.insert(eip, a),
                None => self.associations.remove(&eip),
            };
        }
        self.free_slots = journal.free_slots;
        self.next_slot = journal.next_slot;
    }
}
