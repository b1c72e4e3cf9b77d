//! The agent's state: the rule-checked model, its durable copy, the
//! datapath's maps and the host routes.
//!
//! A group of writes is checked against the rules and applied to the maps
//! and routes; its rows (with the usage it ended and started) are then
//! committed to the store in one transaction on the committer's thread
//! (`committer.rs`) while this one takes the next group, and its writers
//! are answered once the commit is durable. So the datapath may hold a
//! change for the moment of its commit before the store does, and nobody
//! has been told of it yet: if the agent dies then, the next agent's
//! reconcile takes it out again (the store is the truth); if the commit
//! fails, [`Gateway::recover`] undoes it in memory and in the datapath.
//! A fleet's gateway records in etcd first, then applies (`shared.rs`).
//! One thread owns the gateway (`writer.rs`); readers use the store's
//! snapshots and the counters (`reads.rs`), and never wait for it.

mod shared;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{atomic::Ordering, Arc},
};

use eip_nat_common::{
    maps::{TraceConfig, FLAG_ARP_ACTIVE, FLAG_STANDBY, FLAG_TRACE},
    AddrEntry,
};
use ipnet::Ipv4Net;
use thiserror::Error;

use crate::{
    api::{Batch, Generation},
    committer::Committer,
    datapath::{Datapath, DatapathError},
    desired::{Desired, Group, HostChecks, Write},
    fleet::EtcdError,
    model::{tables, Event, Limits, Location, RuleError, State, Touched},
    nexthops::NextHops,
    public_access,
    routes::{host_route, ForeignRoute, RouteError, Routes},
    status::{Phase, Status},
    store::{Changes, Store, StoreError},
    usage::{self, Counts, Period, Turned, Turnover, UsageRecord},
};

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Refused(#[from] RuleError),
    #[error("event {index} of the batch was refused: {error}")]
    RefusedInBatch {
        index: usize,
        /// A `Refused`, a `BadLocation` or a `RouteConflict`.
        error: Box<GatewayError>,
    },
    #[error("the ENI's location cannot be used on this gateway: {0}")]
    BadLocation(String),
    #[error("the change needs a host route that would replace another's: {0}")]
    RouteConflict(ForeignRoute),
    #[error("reading the gateway's routes failed; nothing changed")]
    Routes(#[source] Box<RouteError>),
    #[error("the generation is {current}, not {expected}: the state changed since it was read")]
    Stale { expected: u64, current: u64 },
    #[error("the state store is new, but the pinned datapath holds {0} entries from an earlier agent; refusing to clear them: restore the state directory, or run `eip-nat teardown` to start from nothing")]
    NewStoreOverLiveDatapath(usize),
    #[error("recording the change failed; nothing changed")]
    Store(#[source] Arc<StoreError>),
    #[error("the change is recorded (generation {generation}) but the datapath did not take it; it is retried on the next change or restart")]
    Datapath {
        generation: u64,
        #[source]
        source: Arc<ApplyError>,
    },
    #[error("the agent is stopping; the change was not made")]
    Stopped,
    /// The fleet's shared store (etcd) did not take the change.
    #[error(transparent)]
    Etcd(Arc<EtcdError>),
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        Self::Store(Arc::new(e))
    }
}

fn datapath_error(generation: u64, source: impl Into<ApplyError>) -> GatewayError {
    GatewayError::Datapath {
        generation,
        source: Arc::new(source.into()),
    }
}

impl GatewayError {
    /// The rule, for refusals.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            Self::Refused(e) => Some(e.code()),
            Self::RefusedInBatch { error, .. } => error.rule(),
            Self::BadLocation(_) => Some("unusable_location"),
            Self::RouteConflict(_) => Some("route_conflict"),
            _ => None,
        }
    }
}

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("reading the kernel's routes, neighbours and links")]
    Kernel(#[source] std::io::Error),
    #[error("reading the usage periods")]
    Store(#[from] StoreError),
}

/// What a reconcile changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub entries_written: usize,
    pub entries_removed: usize,
    pub routes_written: usize,
    pub routes_removed: usize,
    /// Routes not written because another's route is in their place.
    pub routes_conflicting: usize,
}

/// A group applied but not yet known durable ([`Gateway::submit`]).
struct InFlight {
    generation: u64,
    journals: Vec<crate::model::Journal>,
    periods: Vec<(Ipv4Addr, Option<Period>)>,
    /// The counter slots it freed (a later group that takes one waits
    /// until this one is durable before it zeroes the slot).
    freed: Vec<u32>,
}

/// What the committer reports of a failed commit, for
/// [`Gateway::recover`]: the epoch, and the answers to send once memory
/// and the datapath are back to what the store holds.
#[derive(Default)]
struct Failed {
    epoch: Option<u64>,
    replies: Vec<(Reply, Vec<Result<Generation, GatewayError>>)>,
}

/// Gets a group's outcomes, one per write, once it is durable.
pub type Reply = Box<dyn FnOnce(Vec<Result<Generation, GatewayError>>) + Send>;

pub struct Gateway {
    /// Makes groups durable off this thread (`committer.rs`); first, so
    /// that it drains before the store closes. None: each group is
    /// committed before it is applied (a fleet's gateway, whose truth is
    /// etcd; or after a failed commit, [`Gateway::recover`]).
    committer: Option<Committer>,
    /// Counts the committer's failures: a group of an epoch whose commit
    /// failed is not recorded (`committer.rs`).
    epoch: u64,
    /// A failed commit, set by the committer, taken by
    /// [`Gateway::recover`].
    store_failed: Arc<std::sync::Mutex<Failed>>,
    /// The newest generation the committer has made durable.
    durable: Arc<std::sync::atomic::AtomicU64>,
    /// The groups applied but not known durable, oldest first, with what
    /// undoes them in memory.
    in_flight: std::collections::VecDeque<InFlight>,
    desired: Desired,
    applied: u64,
    datapath: Datapath,
    /// None: leave the routing table alone (test-run harnesses).
    routes: Option<Routes>,
    /// The addresses that have a route of ours, so that an address that
    /// never had one costs no netlink round trip.
    routed: BTreeSet<Ipv4Addr>,
    /// The programmed next hops; None with no routing table to follow
    /// (test-run harnesses), where the fast path asks the FIB.
    nexthops: Option<NextHops>,
    /// The operator's `routed_prefixes`, and what `PUBLIC_ACCEPT` holds
    /// (None until they are set: a pinned table stays as the last agent
    /// left it, so a restart opens nothing and closes nothing meanwhile).
    routed_prefixes: Vec<Ipv4Net>,
    public_accept: Option<BTreeMap<Ipv4Net, u32>>,
    /// What readers see of the writer's progress.
    status: Arc<Status>,
    /// The open usage periods, as the store holds them (`usage.rs`).
    periods: BTreeMap<Ipv4Addr, Period>,
    /// The fleet's shared store, if the state is shared (`shared.rs`).
    shared: Option<shared::Shared>,
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A route as listed matches the desired one if it goes the same way; the
/// kernel always reports the interface, even when only a next hop was given.
fn same_route(listed: &Location, desired: &Location) -> bool {
    listed.via == desired.via && (desired.dev.is_none() || listed.dev == desired.dev)
}

/// Sets our route to `addr`; false, with a warning, if another's route is
/// in its place (it appeared after the event was checked, or while no
/// agent ran): that route stays, and the address's traffic follows it.
fn set_route(routes: &mut Routes, addr: Ipv4Addr, location: &Location) -> Result<bool, RouteError> {
    match routes.set(addr, location) {
        Ok(()) => Ok(true),
        Err(RouteError::Conflict(f)) => {
            log::warn!("{f}: traffic to {addr} follows it, not the ENI's location ({location})");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A desired state loaded and checked against the datapath it is to take
/// over ([`Gateway::prepare`]); nothing live has changed yet.
pub struct Opening {
    desired: Desired,
    datapath: Datapath,
    routes: Option<Routes>,
    status: Arc<Status>,
}

impl Opening {
    /// The datapath, to configure (interfaces, options) once the checks
    /// have passed and before the reconcile.
    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    /// Makes the datapath and routes match the desired state, touching only
    /// what differs: pinned maps that a previous agent filled keep serving
    /// packets throughout.
    pub fn open(self) -> Result<(Gateway, Reconciled), GatewayError> {
        let Self {
            desired,
            datapath,
            routes,
            status,
        } = self;
        let generation = desired.generation;
        let nexthops = match &routes {
            Some(_) => {
                status.phase(Phase::NextHops, 0);
                let ports = datapath
                    .tx_ports()
                    .map_err(|e| datapath_error(generation, e))?;
                let loaded = NextHops::load(&datapath, ports)
                    .map_err(|e| datapath_error(generation, ApplyError::Kernel(e)))?;
                Some(loaded)
            }
            None => None,
        };
        let committer = match Committer::start(desired.store.tables()) {
            Ok(c) => Some(c),
            Err(e) => {
                log::warn!("starting the commit thread: {e}; committing on the writer's");
                None
            }
        };
        let mut gw = Gateway {
            committer,
            epoch: 0,
            store_failed: Default::default(),
            durable: Arc::new(generation.into()),
            in_flight: Default::default(),
            desired,
            applied: 0,
            datapath,
            routes,
            routed: Default::default(),
            nexthops,
            routed_prefixes: Vec::new(),
            public_accept: None,
            status,
            periods: BTreeMap::new(),
            shared: None,
        };
        let report = gw
            .reconcile_all()
            .map_err(|source| datapath_error(generation, source))?;
        gw.open_periods()
            .map_err(|source| datapath_error(generation, source))?;
        Ok((gw, report))
    }
}

impl Gateway {
    /// Loads the desired state from `store` and makes the datapath (and
    /// routes) match it: [`Gateway::prepare`], then [`Opening::open`].
    pub fn open(
        store: Store,
        datapath: Datapath,
        routes: Option<Routes>,
        limits: Limits,
    ) -> Result<(Self, Reconciled), GatewayError> {
        let status = Arc::new(Status::new(store.generation()?, 0));
        Self::prepare(store, datapath, routes, limits, status)?.open()
    }

    /// Loads the desired state from `store` and checks that it may take
    /// over `datapath`, changing nothing: an agent that is refused here
    /// leaves the gateway that is serving as it was.
    pub fn prepare(
        store: Store,
        datapath: Datapath,
        routes: Option<Routes>,
        limits: Limits,
        status: Arc<Status>,
    ) -> Result<Opening, GatewayError> {
        // A new (or lost) store must not wipe a datapath that is serving:
        // that is an operator's decision, not a side effect of a restart.
        if store.generation()? == 0 {
            let serving = datapath.entries().map_err(|e| datapath_error(0, e))?;
            if !serving.is_empty() {
                return Err(GatewayError::NewStoreOverLiveDatapath(serving.len()));
            }
        }
        status.phase(Phase::Loading, 0);
        let (state, generation) = store.load(limits)?;
        Ok(Opening {
            desired: Desired {
                state,
                generation,
                store,
            },
            datapath,
            routes,
            status,
        })
    }

    /// Brings the maps and routes in line with the whole desired state.
    pub fn reconcile(&mut self) -> Result<Reconciled, ApplyError> {
        let r = self.reconcile_all();
        self.status.done();
        r
    }

    /// [`Gateway::reconcile`], leaving the progress shown (the agent's
    /// start goes on to attach).
    fn reconcile_all(&mut self) -> Result<Reconciled, ApplyError> {
        let mut r = Reconciled::default();
        // Routes first: the next hops in the entries are resolved from them.
        if let Some(routes) = &mut self.routes {
            let desired = tables::all_routes(&self.desired.state);
            self.status.phase(Phase::Routes, desired.len());
            let current = routes.list()?;
            for addr in current.keys().filter(|a| !desired.contains_key(a)) {
                routes.delete(*addr)?;
                r.routes_removed += 1;
            }
            self.routed.clear();
            for (addr, location) in &desired {
                if current.get(addr).is_some_and(|l| same_route(l, location)) {
                    self.routed.insert(*addr);
                } else if set_route(routes, *addr, location)? {
                    self.routed.insert(*addr);
                    r.routes_written += 1;
                } else {
                    r.routes_conflicting += 1;
                }
                self.status.step();
            }
        }
        if let Some(nh) = &mut self.nexthops {
            // The view was read when the next hops were loaded, and follows
            // the kernel since; read it again only if routes were just
            // changed here (a full dump costs seconds with a million host
            // routes), then write ROUTES and the slots from it.
            if r.routes_written + r.routes_removed > 0 {
                nh.reload(&mut self.datapath)?;
            } else {
                nh.sync_all(&mut self.datapath)?;
            }
        }
        let mut desired = tables::all_entries(&self.desired.state);
        self.status.phase(Phase::Entries, desired.len());
        if let Some(nh) = &mut self.nexthops {
            for (addr, entry) in desired.iter_mut() {
                if entry.is_eip() {
                    let dest = Ipv4Addr::from(entry.private_ip);
                    entry.nexthop = nh.bind(&mut self.datapath, *addr, dest)?;
                } else {
                    nh.unbind(*addr);
                }
            }
        }
        let current: std::collections::BTreeMap<_, _> =
            self.datapath.entries()?.into_iter().collect();
        for addr in current.keys().filter(|a| !desired.contains_key(a)) {
            self.datapath.put_entry(*addr, None)?;
            if let Some(nh) = &mut self.nexthops {
                nh.unbind(*addr);
            }
            r.entries_removed += 1;
        }
        let changed: Vec<(Ipv4Addr, Option<AddrEntry>)> = desired
            .iter()
            .filter(|(addr, entry)| current.get(addr) != Some(entry))
            .map(|(addr, entry)| (*addr, Some(*entry)))
            .collect();
        // In chunks, so that the progress /v1/generation shows moves.
        for chunk in changed.chunks(65_536) {
            self.datapath.put_entries(chunk)?;
            self.status.steps(chunk.len());
        }
        r.entries_written = changed.len();
        self.status.steps(desired.len() - changed.len());
        if let Some(nh) = &mut self.nexthops {
            nh.settle(&mut self.datapath)?;
        }
        self.datapath.rebuild_filter(desired.keys().copied())?;
        self.mark_applied(self.desired.generation)?;
        self.status.set_applied(self.applied);
        Ok(r)
    }

    /// Notes in the datapath that it holds `generation`; the caller tells
    /// readers (`status`) when it may (a pipelined group: once durable).
    fn mark_applied(&mut self, generation: u64) -> Result<(), DatapathError> {
        let mut config = self.datapath.config()?;
        config.generation = generation;
        self.datapath.set_config(config)?;
        self.applied = generation;
        Ok(())
    }

    pub fn state(&self) -> &State {
        &self.desired.state
    }

    pub fn generation(&self) -> Generation {
        Generation {
            generation: self.desired.generation,
            applied_generation: self.applied,
            reconcile: None,
            standby: None,
        }
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    /// What readers see of this gateway's progress.
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Applies one event: checked, in the datapath, recorded; returns once
    /// it is durable.
    pub fn apply(&mut self, event: &Event) -> Result<Generation, GatewayError> {
        self.write(&[Write::Event(event.clone())])
            .pop()
            .expect("one outcome per write")
    }

    /// Applies `events` all or nothing, as one generation.
    pub fn apply_batch(
        &mut self,
        events: &[Event],
        if_generation: Option<u64>,
    ) -> Result<Generation, GatewayError> {
        let batch = Batch {
            events: events.to_vec(),
            if_generation,
        };
        self.write(&[Write::Batch(batch)])
            .pop()
            .expect("one outcome per write")
    }

    /// Applies a group of writes, each accepted or refused on its own, the
    /// accepted ones recorded in one store transaction (group commit) and
    /// applied to the datapath; one outcome per write, in order, once the
    /// group is durable.
    pub fn write(&mut self, writes: &[Write]) -> Vec<Result<Generation, GatewayError>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            writes,
            Box::new(move |outcomes| {
                let _ = tx.send(outcomes);
            }),
        );
        rx.recv()
            .unwrap_or_else(|_| writes.iter().map(|_| Err(GatewayError::Stopped)).collect())
    }

    /// [`Gateway::write`] without waiting: `reply` gets the outcomes once
    /// the group is durable (on the committer's thread). The group is
    /// checked and applied to the datapath now, and committed while the
    /// next group is checked: the datapath may hold a change for the
    /// moment of its commit before the store does. That is safe because
    /// nobody has been answered yet: a crash meanwhile is undone by the
    /// next start's reconcile, a failed commit by [`Gateway::recover`].
    pub fn submit(&mut self, writes: &[Write], reply: Reply) {
        self.recover();
        self.prune_durable();
        if self.applied != self.desired.generation {
            // An earlier group did not reach the datapath, and this one
            // redoes all of it (`apply_group`), usage periods from the
            // store: with every group before it durable.
            self.settle();
        }
        if self.shared.is_some() || self.committer.is_none() {
            return reply(self.write_committed(writes));
        }
        let t0 = std::time::Instant::now();
        let mut host = Host {
            routes: &mut self.routes,
            routed: &self.routed,
        };
        let mut group = self.desired.admit(writes, &mut host);
        if self.takes_a_slot_in_flight(&group.touched) && !self.all_durable() {
            // Zeroing a slot whose last association's end is not durable
            // would lose that association's usage if its commit failed or
            // the agent died meanwhile: that end is made durable first,
            // and if it failed, this group is checked again after it.
            self.desired.undo(&mut group);
            self.recover();
            return reply(self.write_committed(writes));
        }
        let admitted = t0.elapsed();
        let before = self.desired.generation;
        let generation = group.generation;
        let journals = group.take_journals();
        let changes = (generation > before).then(|| {
            self.desired.generation = generation;
            Changes::rows(&self.desired.state, &group.touched, generation)
        });
        let (outcomes, turned) = self.apply_group(group, before);
        let changes = changes.map(|mut c| {
            c.usage(&turned);
            c
        });
        log::debug!(
            "group of {} writes: admitted in {admitted:?}, applied in {:?}",
            writes.len(),
            t0.elapsed() - admitted
        );
        self.prune_durable();
        if changes.is_some() {
            self.desired.state.hold_slots(&turned.freed);
            self.in_flight.push_back(InFlight {
                generation,
                journals,
                periods: turned.before,
                freed: turned.freed,
            });
        }
        let status = Arc::clone(&self.status);
        let failed = Arc::clone(&self.store_failed);
        let durable = Arc::clone(&self.durable);
        let epoch = self.epoch;
        let applied = self.applied;
        let recorded = changes.is_some();
        let committer = self.committer.as_ref().expect("checked above");
        committer.submit(
            epoch,
            changes,
            Box::new(move |committed| match committed {
                Ok(()) => {
                    if recorded {
                        durable.fetch_max(generation, Ordering::AcqRel);
                    }
                    status.set_generation(generation);
                    status.set_applied(applied);
                    reply(outcomes)
                }
                Err(e) => {
                    // Every outcome, refusals too: each was checked against
                    // groups that are now undone. Answered by `recover`,
                    // once the datapath is back to what the store holds.
                    let outcomes = outcomes
                        .iter()
                        .map(|_| Err(GatewayError::Store(Arc::clone(&e))))
                        .collect();
                    let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
                    failed.epoch = Some(epoch);
                    failed.replies.push((reply, outcomes));
                }
            }),
        );
    }

    /// Forgets the undo journals of groups now durable, and lets the
    /// slots they freed be taken again.
    fn prune_durable(&mut self) {
        let durable = self.durable.load(Ordering::Acquire);
        while self
            .in_flight
            .front()
            .is_some_and(|f| f.generation <= durable)
        {
            if let Some(f) = self.in_flight.pop_front() {
                self.desired.state.release_slots(&f.freed);
            }
        }
    }

    /// Whether a new association in `touched` is on a counter slot that a
    /// group not yet durable freed (the model hands those out last).
    fn takes_a_slot_in_flight(&self, touched: &Touched) -> bool {
        // One set, not a search of every freed list per EIP: a batch of
        // associations behind a batch of disassociations would otherwise
        // cost their product.
        let freed: std::collections::HashSet<u32> = self
            .in_flight
            .iter()
            .flat_map(|f| f.freed.iter().copied())
            .collect();
        !freed.is_empty()
            && touched.eips.iter().any(|eip| {
                self.desired
                    .state
                    .association(*eip)
                    .is_some_and(|a| freed.contains(&a.slot))
            })
    }

    /// Waits until every group handed to the committer is durable (true)
    /// or has failed (false; [`Gateway::recover`] is then due).
    fn all_durable(&mut self) -> bool {
        let Some(committer) = &self.committer else {
            return true;
        };
        committer.wait();
        self.prune_durable();
        let failed = self
            .store_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .epoch;
        failed != Some(self.epoch)
    }

    /// [`Gateway::all_durable`], then [`Gateway::recover`] if need be.
    fn settle(&mut self) {
        if !self.all_durable() {
            self.recover();
        }
    }

    /// If a commit failed: the groups not durable undone in memory, newest
    /// first (so memory holds what the store holds, without reading it),
    /// and the datapath reconciled to that; the groups queued after the
    /// failed one failed too (`committer.rs`). Their writers are answered
    /// then. Called before each group; the writer also calls it when idle.
    pub fn recover(&mut self) {
        let failed =
            std::mem::take(&mut *self.store_failed.lock().unwrap_or_else(|p| p.into_inner()));
        if failed.epoch != Some(self.epoch) {
            return;
        }
        self.epoch += 1;
        // After an I/O error redb refuses every write until it is opened
        // again: from now on each group is recorded before it is applied,
        // so a refused commit leaves the datapath alone. (Dropping it
        // waits for what it holds, which fails as of the failed epoch.)
        drop(self.committer.take());
        let mut replies = failed.replies;
        replies.append(
            &mut std::mem::take(&mut *self.store_failed.lock().unwrap_or_else(|p| p.into_inner()))
                .replies,
        );
        let durable = self.durable.load(Ordering::Acquire);
        let mut undone = 0;
        while let Some(f) = self.in_flight.pop_back() {
            if f.generation <= durable {
                break;
            }
            for (eip, period) in f.periods.into_iter().rev() {
                match period {
                    Some(p) => self.periods.insert(eip, p),
                    None => self.periods.remove(&eip),
                };
            }
            self.desired.undo_journals(f.journals);
            undone += 1;
        }
        self.in_flight.clear();
        self.desired.state.release_all_slots();
        self.desired.generation = durable;
        self.status.set_generation(durable);
        log::error!(
            "a change failed to record: {undone} groups undone, back to generation {durable}; \
             reconciling the datapath to it"
        );
        let reconciled = self.reconcile().map(|_| ());
        match reconciled.and_then(|()| Ok(self.mark_applied(durable)?)) {
            Ok(()) => self.status.set_applied(durable),
            Err(e) => log::error!("reconciling after a failed commit: {}", chain(&e)),
        }
        for (reply, outcomes) in replies {
            reply(outcomes);
        }
    }

    /// Each group committed before it is applied (a fleet's gateway, or
    /// without a committer thread).
    fn write_committed(&mut self, writes: &[Write]) -> Vec<Result<Generation, GatewayError>> {
        if self.shared.is_some() {
            return self.write_shared(writes);
        }
        let mut host = Host {
            routes: &mut self.routes,
            routed: &self.routed,
        };
        let mut group = self.desired.admit(writes, &mut host);
        if let Err(e) = self.desired.record(&mut group) {
            // Memory is back to what the store holds; nothing else changed.
            let e = Arc::new(e);
            return not_recorded(group, || GatewayError::Store(Arc::clone(&e)));
        }
        let before = group.generation - group.accepted() as u64;
        self.apply_recorded(group, before)
    }

    /// [`Gateway::apply_group`] for a group already recorded: its usage
    /// recorded after it, the progress shown.
    fn apply_recorded(
        &mut self,
        group: Group,
        before: u64,
    ) -> Vec<Result<Generation, GatewayError>> {
        let generation = group.generation;
        let (outcomes, turned) = self.apply_group(group, before);
        self.record_usage(&turned);
        self.status.set_generation(generation);
        self.status.set_applied(self.applied);
        outcomes
    }

    /// Applies a group to the datapath (all of it again if the datapath
    /// was not at `before`, the generation the group was checked against);
    /// one outcome per write, and the usage the group ended and started.
    fn apply_group(
        &mut self,
        group: Group,
        before: u64,
    ) -> (Vec<Result<Generation, GatewayError>>, Turned) {
        let generation = group.generation;
        let mut failed = None;
        let mut turned = Turned::default();
        // Only accepted writes advance the generation.
        if generation > before {
            let turnover = usage::turnover(&self.periods, &self.desired.state, &group.touched);
            let applied = if self.applied == before {
                self.apply_touched(&group.touched, &turnover)
                    .map(|readings| turned = self.turn_periods(turnover, &readings))
            } else {
                // An earlier change did not reach the datapath: redo all
                // (usage periods follow, as at start).
                self.reconcile().and_then(|_| self.open_periods())
            };
            failed = applied
                .and_then(|()| Ok(self.mark_applied(generation)?))
                .err()
                .map(Arc::new);
        }
        let outcomes = group
            .outcomes
            .into_iter()
            .map(|o| {
                let g = o?;
                match &failed {
                    Some(source) => Err(GatewayError::Datapath {
                        generation: g,
                        source: Arc::clone(source),
                    }),
                    None => Ok(Generation {
                        generation: g,
                        applied_generation: generation,
                        reconcile: None,
                        standby: None,
                    }),
                }
            })
            .collect();
        (outcomes, turned)
    }

    /// Applies what `touched` names to the routes and maps; returns the
    /// readings of the slots on which a usage period ends, taken once the
    /// datapath no longer counts those periods.
    fn apply_touched(
        &mut self,
        touched: &Touched,
        turnover: &Turnover,
    ) -> Result<BTreeMap<u32, Counts>, ApplyError> {
        // A new association starts from zero, on a slot no period left
        // this time; one that follows another on its slot starts from the
        // reading that ends the other (`usage.rs`).
        let ending = turnover.ending_slots();
        let fresh: Vec<u32> = turnover
            .started
            .iter()
            .map(|c| c.slot)
            .filter(|slot| !ending.contains(slot))
            .collect();
        self.datapath.reset_eip_counters(&fresh)?;
        // Routes first, each taken into the next hops as soon as the
        // kernel has it: an entry written below already forwards to where
        // the ENI is now.
        let mut rebind = Vec::new();
        for addr in &touched.addresses {
            let Some(routes) = &mut self.routes else {
                break;
            };
            match tables::route_for(&self.desired.state, *addr) {
                Some(location) => {
                    if !set_route(routes, *addr, &location)? {
                        self.routed.remove(addr);
                        continue;
                    }
                    self.routed.insert(*addr);
                    if let Some(nh) = &mut self.nexthops {
                        rebind.extend(nh.refresh_host_route(&mut self.datapath, *addr)?);
                    }
                }
                None if self.routed.contains(addr) => {
                    routes.delete(*addr)?;
                    self.routed.remove(addr);
                    if let Some(nh) = &mut self.nexthops {
                        let gone = netlink_packet_route::RouteNetlinkMessage::DelRoute(host_route(
                            *addr,
                            Default::default(),
                        ));
                        rebind.extend(nh.on_kernel(&mut self.datapath, &gone)?);
                    }
                }
                None => {}
            }
        }
        let addresses: std::collections::BTreeSet<Ipv4Addr> =
            touched.addresses.iter().chain(&rebind).copied().collect();
        let entries = addresses
            .iter()
            .map(|addr| Ok((*addr, self.entry(*addr)?)))
            .collect::<Result<Vec<_>, DatapathError>>()?;
        self.datapath.put_entries(&entries)?;
        if let Some(nh) = &mut self.nexthops {
            nh.settle(&mut self.datapath)?;
        }
        let mut readings = BTreeMap::new();
        for slot in ending {
            readings.insert(slot, Counts::from(self.datapath.eip_counters(slot)?));
        }
        Ok(readings)
    }

    /// The `ADDRESSES` entry of `addr`, with the next hop of the address an
    /// EIP delivers to.
    fn entry(&mut self, addr: Ipv4Addr) -> Result<Option<AddrEntry>, DatapathError> {
        let mut entry = tables::entry_for(&self.desired.state, addr);
        if let Some(nh) = &mut self.nexthops {
            match &mut entry {
                Some(e) if e.is_eip() => {
                    e.nexthop = nh.bind(&mut self.datapath, addr, Ipv4Addr::from(e.private_ip))?
                }
                _ => nh.unbind(addr),
            }
        }
        Ok(entry)
    }

    /// Ends and starts usage periods (`turnover`, with the readings that
    /// split them); returns what to record: with the change's own commit
    /// when it is pipelined ([`Gateway::submit`]), else after it
    /// ([`Gateway::record_usage`]).
    fn turn_periods(&mut self, turnover: Turnover, readings: &BTreeMap<u32, Counts>) -> Turned {
        if turnover.ended.is_empty() && turnover.started.is_empty() {
            return Turned::default();
        }
        let now = usage::now_ns();
        let records: Vec<UsageRecord> = turnover
            .ended
            .into_iter()
            .map(|p| {
                let end = readings.get(&p.carried.slot).copied().unwrap_or_default();
                UsageRecord {
                    counts: end.since(p.base),
                    carried: p.carried,
                    started_ns: p.started_ns,
                    ended_ns: now,
                }
            })
            .collect();
        let opened: Vec<Period> = turnover
            .started
            .into_iter()
            .map(|carried| Period {
                base: readings.get(&carried.slot).copied().unwrap_or_default(),
                carried,
                started_ns: now,
            })
            .collect();
        let reopened: BTreeSet<Ipv4Addr> = opened.iter().map(|p| p.carried.eip).collect();
        let (closed, freed): (Vec<Ipv4Addr>, Vec<u32>) = records
            .iter()
            .filter(|r| !reopened.contains(&r.carried.eip))
            .map(|r| (r.carried.eip, r.carried.slot))
            .unzip();
        let before = closed
            .iter()
            .chain(opened.iter().map(|p| &p.carried.eip))
            .map(|eip| (*eip, self.periods.get(eip).cloned()))
            .collect();
        for eip in &closed {
            self.periods.remove(eip);
        }
        for p in &opened {
            self.periods.insert(p.carried.eip, p.clone());
        }
        Turned {
            ended: records,
            opened,
            closed,
            freed,
            before,
        }
    }

    /// Records `turned` in a transaction of its own, without an fsync
    /// (`Store::record_usage`).
    fn record_usage(&self, turned: &Turned) {
        if turned.ended.is_empty() && turned.opened.is_empty() && turned.closed.is_empty() {
            return;
        }
        if let Err(e) = self.desired.store.record_usage(turned) {
            log::error!("recording usage: {}", chain(&e));
        }
    }

    /// Loads the open periods and brings them in line with the state: an
    /// association with none (made before this agent kept usage, or while
    /// the last one died between the change and its usage) starts one
    /// from its slot as it is; a period of an association since undone
    /// ends now.
    fn open_periods(&mut self) -> Result<(), ApplyError> {
        self.periods = self
            .desired
            .store
            .periods()?
            .into_iter()
            .map(|p| (p.carried.eip, p))
            .collect();
        let mut touched = Touched::default();
        touched.eips.extend(self.periods.keys().copied());
        touched
            .eips
            .extend(self.desired.state.associations().map(|a| a.eip));
        let turnover = usage::turnover(&self.periods, &self.desired.state, &touched);
        let mut readings = BTreeMap::new();
        for slot in turnover.ending_slots() {
            readings.insert(slot, Counts::from(self.datapath.eip_counters(slot)?));
        }
        let turned = self.turn_periods(turnover, &readings);
        self.record_usage(&turned);
        Ok(())
    }

    /// Starts tracing what `config` selects, or (None) stops: the
    /// selection first, then the flag the datapath tests.
    pub fn set_trace(&mut self, config: Option<TraceConfig>) -> Result<(), DatapathError> {
        if let Some(c) = config {
            self.datapath.set_trace_config(c)?;
        }
        let mut cfg = self.datapath.config()?;
        cfg.flags = match config {
            Some(_) => cfg.flags | FLAG_TRACE,
            None => cfg.flags & !FLAG_TRACE,
        };
        self.datapath.set_config(cfg)
    }

    /// Sets the active/standby bits of the datapath's flags (`standby.rs`):
    /// `role` is `FLAG_ARP_ACTIVE`, `FLAG_STANDBY` or 0.
    pub fn set_l2_role(&mut self, role: u32) -> Result<(), DatapathError> {
        let mut cfg = self.datapath.config()?;
        cfg.flags = cfg.flags & !(FLAG_ARP_ACTIVE | FLAG_STANDBY) | role;
        self.datapath.set_config(cfg)
    }

    /// Sets what the public side may reach besides the EIPs: `routed`, the
    /// gateway's own addresses and link control (`public_access`).
    pub fn set_routed_prefixes(&mut self, routed: Vec<Ipv4Net>) -> Result<(), DatapathError> {
        self.routed_prefixes = routed;
        self.sync_public_accept(true)
    }

    /// Writes `PUBLIC_ACCEPT` if what it should hold changed (or `force`).
    fn sync_public_accept(&mut self, force: bool) -> Result<(), DatapathError> {
        if self.public_accept.is_none() && !force {
            return Ok(());
        }
        let locals: Vec<Ipv4Addr> = self
            .nexthops
            .as_ref()
            .map(|nh| nh.local_addresses().collect())
            .unwrap_or_default();
        let want = public_access::table(&self.routed_prefixes, locals);
        if self.public_accept.as_ref() != Some(&want) {
            let changed = self.datapath.set_public_accept(&want)?;
            if changed > 0 {
                log::info!(
                    "the public side reaches the EIPs and {} more prefixes (own addresses, link \
                     control, routed_prefixes)",
                    want.len()
                );
            }
            self.public_accept = Some(want);
        }
        Ok(())
    }

    /// Follows a change of the kernel's links, routes or neighbours
    /// (an rtnetlink notification) into the programmed next hops.
    pub fn kernel_changed(
        &mut self,
        m: &netlink_packet_route::RouteNetlinkMessage,
    ) -> Result<(), ApplyError> {
        let Some(nh) = &mut self.nexthops else {
            return Ok(());
        };
        let rebind = nh.on_kernel(&mut self.datapath, m)?;
        for eip in rebind {
            let mut entry = tables::entry_for(&self.desired.state, eip);
            if let Some(e) = &mut entry {
                e.nexthop = nh.id_of(eip);
            }
            self.datapath.put_entry(eip, entry)?;
        }
        nh.settle(&mut self.datapath)?;
        // An address added to or removed from the host.
        self.sync_public_accept(false)?;
        Ok(())
    }
}

/// The outcomes of a group that was not recorded: each accepted write
/// fails with `error`, the refused ones keep their refusal.
fn not_recorded(
    group: Group,
    error: impl Fn() -> GatewayError,
) -> Vec<Result<Generation, GatewayError>> {
    group
        .outcomes
        .into_iter()
        .map(|o| o.and(Err(error())))
        .collect()
}

/// The host's side of an event's checks (see [`HostChecks`]).
struct Host<'a> {
    routes: &'a mut Option<Routes>,
    routed: &'a BTreeSet<Ipv4Addr>,
}

impl HostChecks for Host<'_> {
    /// An ENI's interface must exist here, and its next hop be directly
    /// reachable: facts about this host that the model cannot check.
    fn before(&mut self, event: &Event) -> Result<(), GatewayError> {
        let location = match event {
            Event::CreateEni { location, .. }
            | Event::AttachEni { location, .. }
            | Event::MoveEni { location, .. }
            | Event::LocateEni { location, .. } => location,
            _ => return Ok(()),
        };
        match self.routes {
            Some(routes) => routes.check(location).map_err(GatewayError::BadLocation),
            None => Ok(()),
        }
    }

    /// A route the change needs must not take the place of another's (an
    /// operator's `/32`, say): refused before anything is recorded. Routes
    /// the agent already has are its own, and cost no lookup.
    fn after(&mut self, state: &State, touched: &Touched) -> Result<(), GatewayError> {
        let Some(routes) = self.routes else {
            return Ok(());
        };
        for addr in &touched.addresses {
            if self.routed.contains(addr) || tables::route_for(state, *addr).is_none() {
                continue;
            }
            let foreign = routes
                .foreign(*addr)
                .map_err(|e| GatewayError::Routes(Box::new(e)))?;
            if let Some(f) = foreign {
                return Err(GatewayError::RouteConflict(f));
            }
        }
        Ok(())
    }
}
