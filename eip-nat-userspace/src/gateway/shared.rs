//! A gateway of a fleet (`store = "etcd"`, docs/fleet.md): its writes go
//! to etcd first, guarded by the revision its state reflects (a lost race
//! is caught up and checked again), then to the local copy and the
//! datapath; what other gateways write reaches it through
//! [`Gateway::take_shared`].

use std::sync::Arc;

use super::{not_recorded, ApplyError, Gateway, GatewayError, Host};
use crate::{
    api::Generation,
    desired::Write,
    fleet::{self, Etcd, EtcdError, Fetched},
    model::Touched,
};

/// How many times a group is checked again after another gateway's write
/// came first, before its writers are told to retry.
const ATTEMPTS: usize = 8;

pub(super) struct Shared {
    etcd: Arc<Etcd>,
    /// Rows the local copy failed to take, written with the next change.
    pending: Touched,
}

impl Gateway {
    /// Shares this gateway's state through `etcd` from now on.
    pub fn share(&mut self, etcd: Arc<Etcd>) {
        // etcd is the truth, and a write goes there first, in turn.
        self.committer = None;
        self.shared = Some(Shared {
            etcd,
            pending: Touched::default(),
        });
    }

    /// [`Gateway::write`] for a gateway of a fleet.
    pub(super) fn write_shared(
        &mut self,
        writes: &[Write],
    ) -> Vec<Result<Generation, GatewayError>> {
        let etcd = Arc::clone(&self.shared.as_ref().expect("shared").etcd);
        let mut attempt = 1;
        loop {
            let mut host = Host {
                routes: &mut self.routes,
                routed: &self.routed,
            };
            let mut group = self.desired.admit(writes, &mut host);
            let before = self.desired.generation;
            if group.accepted() == 0 {
                return self.apply_recorded(group, before);
            }
            let committed = etcd.block_on(etcd.commit(&self.desired.state, &group.touched, before));
            let error = match committed {
                Ok(Some(revision)) => {
                    self.desired.generation = revision;
                    group.generation = revision;
                    for outcome in group.outcomes.iter_mut().flatten() {
                        *outcome = revision;
                    }
                    let shared = self.shared.as_mut().expect("shared");
                    fleet::record_locally(
                        &self.desired.store,
                        &self.desired.state,
                        &group.touched,
                        revision,
                        &mut shared.pending,
                    );
                    return self.apply_recorded(group, before);
                }
                // Another gateway wrote first: take what it wrote, and
                // check these writes again against it.
                Ok(None) if attempt < ATTEMPTS => {
                    log::info!(
                        "another gateway wrote first (after generation {before}): catching up, \
                         checking {} writes again",
                        writes.len()
                    );
                    self.desired.undo(&mut group);
                    attempt += 1;
                    match etcd.block_on(etcd.fetch_since(before)) {
                        Ok(fetched) => {
                            if let Some(f) = fetched {
                                self.take_logged(f);
                            }
                            continue;
                        }
                        Err(e) => e,
                    }
                }
                Ok(None) => EtcdError::Unreachable(format!(
                    "other gateways' writes came first {ATTEMPTS} times in a row; nothing changed, \
                     try again"
                )),
                Err(e) => e,
            };
            self.desired.undo(&mut group);
            let error = Arc::new(error);
            return not_recorded(group, || GatewayError::Etcd(Arc::clone(&error)));
        }
    }

    /// Takes what other gateways wrote (reported by etcd) into the state,
    /// its local copy and the datapath.
    pub fn take_shared(&mut self, fetched: Fetched) {
        self.take_logged(fetched);
    }

    fn take_logged(&mut self, fetched: Fetched) {
        if let Err(e) = self.take(fetched) {
            log::warn!(
                "applying the fleet's changes to the datapath: {}; retried with the next change",
                super::chain(&e)
            );
        }
    }

    fn take(&mut self, fetched: Fetched) -> Result<(), ApplyError> {
        let Some(shared) = &mut self.shared else {
            return Ok(());
        };
        let before = self.desired.generation;
        let Some(touched) = fleet::take(
            &mut self.desired.state,
            &mut self.desired.generation,
            &self.desired.store,
            fetched,
            &mut shared.pending,
        ) else {
            return Ok(());
        };
        let generation = self.desired.generation;
        self.status.set_generation(generation);
        if self.applied == before {
            let turnover = crate::usage::turnover(&self.periods, &self.desired.state, &touched);
            let readings = self.apply_touched(&touched, &turnover)?;
            let turned = self.turn_periods(turnover, &readings);
            self.record_usage(&turned);
        } else {
            self.reconcile()?;
            self.open_periods()?;
        }
        self.mark_applied(generation)?;
        self.status.set_applied(generation);
        Ok(())
    }
}
