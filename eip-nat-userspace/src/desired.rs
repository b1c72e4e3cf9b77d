//! The desired state in memory and its durable copy, changed by groups of
//! writes (group commit): every write of a group is checked on its own,
//! against the state the writes before it left, and accepted or refused on
//! its own; the accepted ones are recorded in one store transaction (one
//! fsync). If that transaction fails, memory is put back to what the store
//! holds, from the undo journals, which cannot fail: memory and store
//! agree once every commit is done (`Gateway::recover` does the same for
//! groups that were pipelined).

use crate::{
    api::Batch,
    gateway::GatewayError,
    model::{Event, Journal, State, Touched},
    store::{Store, StoreError},
};

/// One request that changes the desired state.
#[derive(Clone, Debug)]
pub enum Write {
    Event(Event),
    Batch(Batch),
}

/// What the host must allow besides the model's rules (an ENI's interface
/// exists here, a route the change needs is not another's): asked before
/// and after an event changes the model.
pub trait HostChecks {
    fn before(&mut self, event: &Event) -> Result<(), GatewayError>;
    fn after(&mut self, state: &State, touched: &Touched) -> Result<(), GatewayError>;
}

/// No host to check against (the model alone).
impl HostChecks for () {
    fn before(&mut self, _: &Event) -> Result<(), GatewayError> {
        Ok(())
    }
    fn after(&mut self, _: &State, _: &Touched) -> Result<(), GatewayError> {
        Ok(())
    }
}

/// A group of writes applied in memory, not yet recorded.
pub struct Group {
    /// Per write: the generation it gets, or why it was refused.
    pub outcomes: Vec<Result<u64, GatewayError>>,
    /// One per accepted write, in order, to undo them newest first.
    journals: Vec<Journal>,
    /// Every row the accepted writes changed.
    pub touched: Touched,
    /// The generation once the group is recorded.
    pub generation: u64,
}

impl Group {
    pub fn accepted(&self) -> usize {
        self.journals.len()
    }

    /// The undo journals, to keep until the group is durable
    /// ([`Desired::undo_journals`]).
    pub fn take_journals(&mut self) -> Vec<Journal> {
        std::mem::take(&mut self.journals)
    }
}

pub struct Desired {
    pub state: State,
    /// The generation of the last group admitted: recorded, or (groups
    /// pipelined, `Gateway::submit`) on its way to the store.
    pub generation: u64,
    pub store: Store,
}

impl Desired {
    /// Applies each write in memory, in order, each on its own: a refused
    /// write leaves no trace, and does not affect the others.
    pub fn admit(&mut self, writes: &[Write], host: &mut dyn HostChecks) -> Group {
        let mut group = Group {
            outcomes: Vec::with_capacity(writes.len()),
            journals: Vec::new(),
            touched: Touched::default(),
            generation: self.generation,
        };
        for write in writes {
            let mut journal = Journal::new(&self.state);
            let admitted = match write {
                Write::Event(event) => self.admit_event(&mut journal, event, host),
                Write::Batch(batch) => {
                    self.admit_batch(&mut journal, batch, group.generation, host)
                }
            };
            match admitted {
                Ok(touched) => {
                    group.touched.merge(touched);
                    group.journals.push(journal);
                    group.generation += 1;
                    group.outcomes.push(Ok(group.generation));
                }
                Err(e) => {
                    self.state.undo(journal);
                    group.outcomes.push(Err(e));
                }
            }
        }
        group
    }

    fn admit_event(
        &mut self,
        journal: &mut Journal,
        event: &Event,
        host: &mut dyn HostChecks,
    ) -> Result<Touched, GatewayError> {
        host.before(event)?;
        let touched = self.state.apply(event, journal)?;
        host.after(&self.state, &touched)?;
        Ok(touched)
    }

    /// All or nothing; the caller undoes the journal on an error.
    fn admit_batch(
        &mut self,
        journal: &mut Journal,
        batch: &Batch,
        current: u64,
        host: &mut dyn HostChecks,
    ) -> Result<Touched, GatewayError> {
        if let Some(expected) = batch.if_generation.filter(|g| *g != current) {
            return Err(GatewayError::Stale { expected, current });
        }
        let mut touched = Touched::default();
        for (index, event) in batch.events.iter().enumerate() {
            match self.admit_event(journal, event, host) {
                Ok(t) => touched.merge(t),
                Err(e @ GatewayError::Routes(_)) => return Err(e),
                Err(e) => {
                    return Err(GatewayError::RefusedInBatch {
                        index,
                        error: Box::new(e),
                    })
                }
            }
        }
        Ok(touched)
    }

    /// Records the accepted writes of `group` in one transaction. If that
    /// fails, every accepted write is undone in memory (newest first), so
    /// that memory holds what the store holds, and the error is returned.
    pub fn record(&mut self, group: &mut Group) -> Result<(), StoreError> {
        if group.accepted() == 0 {
            return Ok(());
        }
        match self
            .store
            .commit(&self.state, &group.touched, group.generation)
        {
            Ok(()) => {
                self.generation = group.generation;
                Ok(())
            }
            Err(e) => {
                self.undo(group);
                Err(e)
            }
        }
    }

    /// Undoes every accepted write of `group` in memory, newest first: the
    /// state is as it was before [`Desired::admit`].
    pub fn undo(&mut self, group: &mut Group) {
        self.undo_journals(group.take_journals());
        group.generation = self.generation;
    }

    /// Undoes the writes `journals` recorded, newest first.
    pub fn undo_journals(&mut self, journals: Vec<Journal>) {
        for journal in journals.into_iter().rev() {
            self.state.undo(journal);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::model::{EniKind, Limits, Location, Mode};

    fn eni(n: u8) -> Event {
        Event::CreateEni {
            eni: format!("eni-{n}"),
            kind: EniKind::Secondary,
            primary_ip: [10, 0, 0, n].into(),
            instance: None,
            location: Location::default(),
        }
    }

    fn associate(eip: u8, eni: u8) -> Event {
        Event::Associate {
            eip: [203, 0, 113, eip].into(),
            eni: format!("eni-{eni}"),
            private_ip: None,
            mode: Mode::Nat,
        }
    }

    #[test]
    fn each_write_of_a_group_is_accepted_or_refused_on_its_own() {
        let store = Store::in_memory().unwrap();
        let limits = Limits::default();
        let mut d = Desired {
            state: State::new(limits),
            generation: 0,
            store,
        };
        let writes = [
            Write::Event(eni(1)),
            // Refused: the ENI does not exist.
            Write::Event(associate(1, 9)),
            Write::Event(associate(1, 1)),
            // Refused as a whole: its second event takes an EIP in use.
            Write::Batch(Batch {
                events: vec![eni(2), associate(1, 2)],
                if_generation: None,
            }),
            // Refused: stale.
            Write::Batch(Batch {
                events: vec![eni(3)],
                if_generation: Some(0),
            }),
            Write::Batch(Batch {
                events: vec![eni(3)],
                if_generation: Some(2),
            }),
        ];
        let mut group = d.admit(&writes, &mut ());
        let gens: Vec<Option<u64>> = group
            .outcomes
            .iter()
            .map(|o| o.as_ref().ok().copied())
            .collect();
        assert_eq!(gens, [Some(1), None, Some(2), None, None, Some(3)]);
        assert!(matches!(
            group.outcomes[3],
            Err(GatewayError::RefusedInBatch { index: 1, .. })
        ));
        d.record(&mut group).unwrap();
        assert_eq!(d.generation, 3);
        assert_eq!(d.store.load(limits).unwrap(), (d.state.clone(), 3));
        assert!(d.state.eni("eni-2").is_none());
    }

    /// Issue #10, point 5: a failed commit leaves memory equal to the store.
    #[test]
    fn a_failed_commit_leaves_memory_equal_to_the_store() {
        let (store, failing) = Store::faulty().unwrap();
        let limits = Limits::default();
        let mut d = Desired {
            state: State::new(limits),
            generation: 0,
            store,
        };
        let mut group = d.admit(
            &[Write::Event(eni(1)), Write::Event(associate(1, 1))],
            &mut (),
        );
        d.record(&mut group).unwrap();
        let before = d.state.clone();
        assert_eq!(d.store.load(limits).unwrap(), (before.clone(), 2));

        // The disk fails under the next group, which changes ENIs,
        // associations, indexes and counter slots.
        failing.store(true, Ordering::SeqCst);
        let mut group = d.admit(
            &[
                Write::Event(Event::Disassociate {
                    eip: [203, 0, 113, 1].into(),
                }),
                Write::Event(eni(2)),
                Write::Event(associate(2, 2)),
                Write::Event(Event::DeleteEni {
                    eni: "eni-1".into(),
                }),
            ],
            &mut (),
        );
        assert_eq!(group.accepted(), 4);
        assert_ne!(d.state, before);
        assert!(d.record(&mut group).is_err());
        assert_eq!(d.state, before, "memory is what the store holds");
        assert_eq!(d.generation, 2);
        failing.store(false, Ordering::SeqCst);
        // What the store holds, read back, is that state too.
        assert_eq!(d.store.load(limits).unwrap(), (before, 2));
    }
}
