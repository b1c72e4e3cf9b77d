//! What the writer publishes for readers, who never wait for it: the
//! generations and the progress of a reconcile (`GET /v1/generation`).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

use prometheus_client::metrics::histogram::Histogram;

use crate::api::{Generation, ReconcileProgress, StandbyRole};

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
    /// The phase, how much of it there is, and when the reconcile began;
    /// None when not reconciling.
    phase: Mutex<Option<(Phase, u64, Instant)>>,
    done: AtomicU64,
    /// How long each reconcile took, for `GET /metrics`.
    reconcile_seconds: Histogram,
    /// Active/standby on a shared L2: the role, published by `standby.rs`.
    standby: Mutex<Option<StandbyRole>>,
}

impl Status {
    /// `generation` as stored, `applied` as the datapath says; starting.
    pub fn new(generation: u64, applied: u64) -> Self {
        Self {
            generation: AtomicU64::new(generation),
            applied: AtomicU64::new(applied),
            phase: Mutex::new(Some((Phase::Loading, 0, Instant::now()))),
            done: AtomicU64::new(0),
            reconcile_seconds: crate::metrics::reconcile_histogram(),
            standby: Mutex::new(None),
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
        let mut current = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let began = current.map_or_else(Instant::now, |(_, _, began)| began);
        *current = Some((phase, total as u64, began));
    }

    /// One step of the phase done.
    pub fn step(&self) {
        self.steps(1);
    }

    pub fn steps(&self, n: usize) {
        self.done.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Not reconciling (any more): the datapath follows each write.
    pub fn done(&self) {
        let ended = self.phase.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((_, _, began)) = ended {
            self.reconcile_seconds
                .observe(began.elapsed().as_secs_f64());
        }
    }

    /// The time each reconcile took, from its first phase to done.
    pub fn reconcile_seconds(&self) -> &Histogram {
        &self.reconcile_seconds
    }

    pub fn set_standby(&self, role: StandbyRole) {
        *self.standby.lock().unwrap_or_else(|p| p.into_inner()) = Some(role);
    }

    pub fn standby(&self) -> Option<StandbyRole> {
        self.standby
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn generation(&self) -> Generation {
        let phase = *self.phase.lock().unwrap_or_else(|p| p.into_inner());
        Generation {
            generation: self.generation.load(Ordering::Acquire),
            applied_generation: self.applied.load(Ordering::Acquire),
            reconcile: phase.map(|(phase, total, _)| ReconcileProgress {
                phase: phase.name().into(),
                done: self.done.load(Ordering::Relaxed),
                total,
            }),
            standby: self.standby(),
        }
    }
}
