//! What the writer publishes for readers, who never wait for it: the
//! generations and the progress of a reconcile (`GET /v1/generation`).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use crate::api::{Generation, ReconcileProgress};

/// The steps of a start (or of a full reconcile), in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the desired state from the store.
    Loading,
    /// Reading the kernel's links, routes and neighbours.
    NextHops,
    /// Making the host routes match.
    Routes,
    /// Making the datapath's entries match.
    Entries,
    /// Attaching the program to the interfaces.
    Attaching,
}

impl Phase {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::NextHops => "next_hops",
            Self::Routes => "routes",
            Self::Entries => "entries",
            Self::Attaching => "attaching",
        }
    }
}

pub struct Status {
    generation: AtomicU64,
    applied: AtomicU64,
    /// The phase, and how much of it there is; None when not reconciling.
    phase: Mutex<Option<(Phase, u64)>>,
    done: AtomicU64,
}

impl Status {
    /// `generation` as stored, `applied` as the datapath says; starting.
    pub fn new(generation: u64, applied: u64) -> Self {
        Self {
            generation: AtomicU64::new(generation),
            applied: AtomicU64::new(applied),
            phase: Mutex::new(Some((Phase::Loading, 0))),
            done: AtomicU64::new(0),
        }
    }

    pub fn set_generation(&self, g: u64) {
        self.generation.store(g, Ordering::Release);
    }

    pub fn set_applied(&self, g: u64) {
        self.applied.store(g, Ordering::Release);
    }

    /// Enters `phase`, which has `total` steps (0: unknown).
    pub fn phase(&self, phase: Phase, total: usize) {
        self.done.store(0, Ordering::Relaxed);
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = Some((phase, total as u64));
    }

    /// One step of the phase done.
    pub fn step(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// Not reconciling (any more): the datapath follows each write.
    pub fn done(&self) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn generation(&self) -> Generation {
        let phase = *self.phase.lock().unwrap_or_else(|p| p.into_inner());
        Generation {
            generation: self.generation.load(Ordering::Acquire),
            applied_generation: self.applied.load(Ordering::Acquire),
            reconcile: phase.map(|(phase, total)| ReconcileProgress {
                phase: phase.name().into(),
                done: self.done.load(Ordering::Relaxed),
                total,
            }),
        }
    }
}
