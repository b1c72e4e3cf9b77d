//! Every change to the state's rows goes through the primitives here. Each
//! saves the row's pre-image in the caller's [`Journal`] (once per batch:
//! as it was before the batch) and notes the row in the event's
//! [`Touched`] before changing it. So [`State::undo`] puts back what a
//! refused batch changed, a batch costs what its events touch, not what
//! the state holds, and the rows to persist are the rows that changed:
//! there is no second list, per event, of the rows it changes.

use std::{collections::HashMap, net::Ipv4Addr};

use super::{Association, Attachment, Eni, EniId, EniKind, State, Touched};

/// The rows a batch has changed so far, as they were before it.
pub struct Journal {
    enis: HashMap<EniId, Option<Eni>>,
    associations: HashMap<Ipv4Addr, Option<Association>>,
    /// Each change to the free counter slots, in order, with whether the
    /// slot was free before it: undone newest first. A log, not a copy of
    /// the set, so that an event costs what it touches even when a
    /// million slots are free (a copy per event made single events crawl
    /// once many associations had gone: docs/benchmarks.md).
    slots: Vec<(u32, bool)>,
    next_slot: u32,
}

impl Journal {
    pub fn new(state: &State) -> Self {
        Self {
            enis: HashMap::new(),
            associations: HashMap::new(),
            slots: Vec::new(),
            next_slot: state.next_slot,
        }
    }
}

/// One event's changes: pre-images into the batch's journal, rows and
/// addresses into the event's [`Touched`].
pub(super) struct Writes<'j> {
    journal: &'j mut Journal,
    pub(super) touched: Touched,
}

impl<'j> Writes<'j> {
    pub(super) fn new(journal: &'j mut Journal) -> Self {
        Self {
            journal,
            touched: Touched::default(),
        }
    }

    fn eni(&mut self, state: &State, id: &str) {
        self.journal
            .enis
            .entry(id.to_string())
            .or_insert_with(|| state.enis.get(id).cloned());
        self.touched.enis.insert(id.to_string());
    }

    fn association(&mut self, state: &State, eip: Ipv4Addr) {
        self.journal
            .associations
            .entry(eip)
            .or_insert_with(|| state.associations.get(&eip).cloned());
        self.touched.eips.insert(eip);
    }

    /// Every address whose datapath entry or route depends on ENI `id`:
    /// its EIPs and the private IPs they translate to.
    fn addresses_of(&mut self, state: &State, id: &str) {
        let Some(eni) = state.enis.get(id) else {
            return;
        };
        for eip in &eni.eips {
            self.touched.addresses.insert(*eip);
            let private = state.associations.get(eip).and_then(|a| a.private_ip);
            self.touched.addresses.extend(private);
        }
    }
}

/// The row-changing primitives: the only code that writes `enis` and
/// `associations`, and the indexes that follow them.
impl State {
    pub(super) fn insert_eni(&mut self, w: &mut Writes, id: &str, eni: Eni) {
        w.eni(self, id);
        self.index(id, &eni);
        self.enis.insert(id.to_string(), eni);
        w.addresses_of(self, id);
    }

    pub(super) fn remove_eni(&mut self, w: &mut Writes, id: &str) {
        w.eni(self, id);
        w.addresses_of(self, id);
        let eni = self.enis.remove(id).expect("checked");
        self.unindex(id, &eni);
    }

    /// Adds what `eni` puts in the indexes: its private IPs, and its
    /// instance's ([`State::index_instance`]).
    pub(super) fn index(&mut self, id: &str, eni: &Eni) {
        for ip in std::iter::once(eni.primary_ip).chain(eni.secondary_ips.iter().copied()) {
            self.private_ips.insert(ip, id.to_string());
        }
        self.index_instance(id, eni);
    }

    /// Adds what `eni` puts in the instances' indexes: a primary ENI is its
    /// instance's, a secondary one is attached to it.
    pub(super) fn index_instance(&mut self, id: &str, eni: &Eni) {
        match (eni.kind, &eni.attachment) {
            (EniKind::Primary, Some(a)) => {
                self.instances.insert(a.instance.clone(), id.to_string());
            }
            (EniKind::Secondary, Some(a)) => {
                self.attached
                    .entry(a.instance.clone())
                    .or_default()
                    .insert(id.to_string());
            }
            (_, None) => {}
        }
    }

    pub(super) fn unindex(&mut self, id: &str, eni: &Eni) {
        for ip in std::iter::once(eni.primary_ip).chain(eni.secondary_ips.iter().copied()) {
            self.private_ips.remove(&ip);
        }
        self.unindex_instance(id, eni);
    }

    fn unindex_instance(&mut self, id: &str, eni: &Eni) {
        match (eni.kind, &eni.attachment) {
            (EniKind::Primary, Some(a)) => {
                self.instances.remove(&a.instance);
            }
            (EniKind::Secondary, Some(a)) => {
                if let Some(enis) = self.attached.get_mut(&a.instance) {
                    enis.remove(id);
                    if enis.is_empty() {
                        self.attached.remove(&a.instance);
                    }
                }
            }
            (_, None) => {}
        }
    }

    /// Where a secondary ENI is attached, or where any attached ENI lives:
    /// every address it carries follows.
    pub(super) fn set_attachment(&mut self, w: &mut Writes, id: &str, a: Option<Attachment>) {
        w.eni(self, id);
        w.addresses_of(self, id);
        let mut eni = self.enis.remove(id).expect("checked");
        debug_assert!(
            eni.kind == EniKind::Secondary
                || eni.attachment.as_ref().map(|a| &a.instance) == a.as_ref().map(|a| &a.instance),
            "a primary ENI stays with its instance"
        );
        self.unindex_instance(id, &eni);
        eni.attachment = a;
        self.index_instance(id, &eni);
        self.enis.insert(id.to_string(), eni);
    }

    pub(super) fn add_secondary_ip(&mut self, w: &mut Writes, id: &str, ip: Ipv4Addr) {
        w.eni(self, id);
        w.addresses_of(self, id);
        let eni = self.enis.get_mut(id).expect("checked");
        eni.secondary_ips.insert(ip);
        self.private_ips.insert(ip, id.to_string());
    }

    pub(super) fn remove_secondary_ip(&mut self, w: &mut Writes, id: &str, ip: Ipv4Addr) {
        w.eni(self, id);
        w.addresses_of(self, id);
        let eni = self.enis.get_mut(id).expect("checked");
        eni.secondary_ips.remove(&ip);
        self.private_ips.remove(&ip);
    }

    /// Associates `a.eip` with its ENI, on counter slot `a.slot`: the
    /// lowest free one.
    pub(super) fn insert_association(&mut self, w: &mut Writes, a: Association) {
        w.eni(self, &a.eni);
        w.association(self, a.eip);
        w.touched
            .addresses
            .extend([a.eip].into_iter().chain(a.private_ip));
        self.take_slot(a.slot, &mut w.journal.slots);
        self.enis
            .get_mut(&a.eni)
            .expect("checked")
            .eips
            .insert(a.eip);
        self.associations.insert(a.eip, a);
    }

    pub(super) fn remove_association(&mut self, w: &mut Writes, eip: Ipv4Addr) {
        w.association(self, eip);
        let a = self.associations.remove(&eip).expect("checked");
        w.eni(self, &a.eni);
        w.touched
            .addresses
            .extend([a.eip].into_iter().chain(a.private_ip));
        self.enis
            .get_mut(&a.eni)
            .expect("indexed")
            .eips
            .remove(&eip);
        self.release_slot(a.slot, &mut w.journal.slots);
    }

    /// Takes counter `slot` for an association, noting in `log` each slot
    /// whose freedom changes (and whether it was free before).
    pub(super) fn take_slot(&mut self, slot: u32, log: &mut Vec<(u32, bool)>) {
        if self.free_slots.remove(&slot) {
            log.push((slot, true));
        } else if slot >= self.next_slot {
            // Above held slots (`State::free_slot`): the ones between are
            // free, as a state rebuilt from the store has them.
            for s in self.next_slot..slot {
                if self.free_slots.insert(s) {
                    log.push((s, false));
                }
            }
            self.next_slot = slot + 1;
        }
    }

    /// Frees counter `slot`, noting changes in `log` as [`State::take_slot`].
    pub(super) fn release_slot(&mut self, slot: u32, log: &mut Vec<(u32, bool)>) {
        if self.free_slots.insert(slot) {
            log.push((slot, false));
        }
        // Keep the slot bookkeeping canonical (free = the gaps below the
        // highest slot in use), so a state rebuilt from the store is equal.
        while self.next_slot > 0 && self.free_slots.remove(&(self.next_slot - 1)) {
            log.push((self.next_slot - 1, true));
            self.next_slot -= 1;
        }
    }

    /// Puts back every row `journal` saved: the state is as it was when
    /// the journal was made.
    pub fn undo(&mut self, journal: Journal) {
        // Indexes first: drop what the current rows put there, then add
        // what the saved rows had (an address may have moved between two
        // saved ENIs, so all removals go before any insertion).
        for id in journal.enis.keys() {
            if let Some(eni) = self.enis.remove(id) {
                self.unindex(id, &eni);
            }
        }
        for (id, saved) in journal.enis {
            let Some(eni) = saved else { continue };
            self.index(&id, &eni);
            self.enis.insert(id, eni);
        }
        for (eip, saved) in journal.associations {
            match saved {
                Some(a) => self.associations.insert(eip, a),
                None => self.associations.remove(&eip),
            };
        }
        for (slot, was_free) in journal.slots.into_iter().rev() {
            if was_free {
                self.free_slots.insert(slot);
            } else {
                self.free_slots.remove(&slot);
            }
        }
        self.next_slot = journal.next_slot;
    }
}
