//! Reads for the API, answered without the writer: the desired state from
//! the store's last committed snapshot, generations and progress from
//! [`Status`], counters from the per-CPU maps at read time. A large batch
//! or a reconcile in progress does not hold them up.

use std::{net::Ipv4Addr, sync::Arc};

use crate::{
    api::{EipStat, EniView, Generation, StateView, Stats, VerdictStat},
    datapath::{Counters, DatapathError},
    status::Status,
    store::{Reader, StoreError},
    usage::{Counts, Period, UsageRecord},
};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

#[derive(Clone)]
pub struct Reads {
    pub store: Reader,
    pub counters: Arc<Counters>,
    pub status: Arc<Status>,
}

impl Reads {
    pub fn generation(&self) -> Generation {
        self.status.generation()
    }

    /// The committed state, as of one generation.
    pub fn state(&self) -> Result<StateView, ReadError> {
        let rows = self.store.rows()?;
        let mut generation = self.status.generation();
        generation.generation = rows.generation;
        Ok(StateView {
            generation,
            enis: rows
                .enis
                .into_iter()
                .map(|(id, eni)| EniView { id, eni })
                .collect(),
            associations: rows.associations,
        })
    }

    /// Records of usage periods that ended at or after `since_ns`.
    pub fn usage(
        &self,
        since_ns: u64,
        eip: Option<Ipv4Addr>,
    ) -> Result<Vec<UsageRecord>, ReadError> {
        Ok(self.store.usage(since_ns, eip)?)
    }

    /// Every counter; per-EIP counters for `eip` only, if given (one row
    /// read instead of every association's).
    pub fn stats(&self, eip: Option<Ipv4Addr>) -> Result<Stats, ReadError> {
        let verdicts = self
            .counters
            .verdicts()?
            .into_iter()
            .map(|(d, v, c)| VerdictStat {
                direction: d,
                verdict: v,
                code: v as u32,
                drop: v.is_drop(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        let (associations, periods) = match eip {
            Some(eip) => (
                self.store.association(eip)?.into_iter().collect(),
                self.store
                    .period(eip)?
                    .map(|p| (eip, p))
                    .into_iter()
                    .collect(),
            ),
            None => (self.store.associations()?.1, self.store.periods()?),
        };
        let mut eips = Vec::with_capacity(associations.len());
        for a in associations {
            // The association's own counters: its slot's, less what the
            // slot held when its usage period started (`usage.rs`).
            let base = periods
                .get(&a.eip)
                .filter(|p: &&Period| p.carried.slot == a.slot)
                .map_or(Counts::default(), |p| p.base);
            let c = Counts::from(self.counters.eip(a.slot)?).since(base);
            eips.push(EipStat {
                eip: a.eip,
                eni: a.eni,
                mode: a.mode,
                private_ip: a.private_ip,
                in_packets: c.in_packets,
                in_bytes: c.in_bytes,
                out_packets: c.out_packets,
                out_bytes: c.out_bytes,
            });
        }
        Ok(Stats { verdicts, eips })
    }
}
