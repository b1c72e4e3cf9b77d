//! Reads for the API, answered without the writer: the desired state from
//! the store's last committed snapshot, generations and progress from
//! [`Status`], counters from the per-CPU maps at read time. A large batch
//! or a reconcile in progress does not hold them up.

use std::{
    cmp::Reverse,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use eip_nat_common::maps::EipCounters;

use crate::{
    api::{EipStat, EniView, Generation, StateView, Stats, Top, TopQuery, TopSort, VerdictStat},
    datapath::{Counters, DatapathError},
    model::Association,
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
    pub associations: AssociationCache,
}

/// The committed associations as last read, with the generation they
/// were read at: kept between the reads that rank every EIP (`/metrics`,
/// `/v1/top`), which read them again only when the generation moved. At
/// a million associations, reading the rows takes most of a second.
#[derive(Clone, Default)]
pub struct AssociationCache(Arc<Mutex<Option<ReadAt>>>);

/// Associations, and the generation of the snapshot they were read from.
type ReadAt = (u64, Arc<Vec<Association>>);

/// Every association, and its counters (its slot's since it was
/// associated, summed over CPUs) at the same index.
pub struct Carried {
    pub associations: Arc<Vec<Association>>,
    pub counters: Vec<EipCounters>,
}

impl Carried {
    /// The indices of the `n` associations `keep` takes with the largest
    /// `key` of their counters, largest first (ties by EIP); all of them
    /// if `n` is 0.
    pub fn top(
        &self,
        n: usize,
        key: impl Fn(&EipCounters) -> u64,
        keep: impl Fn(&Association) -> bool,
    ) -> Vec<usize> {
        let mut kept: Vec<usize> = (0..self.associations.len())
            .filter(|&i| keep(&self.associations[i]))
            .collect();
        let rank = |&i: &usize| (Reverse(key(&self.counters[i])), self.associations[i].eip);
        if n > 0 && kept.len() > n {
            kept.select_nth_unstable_by_key(n - 1, rank);
            kept.truncate(n);
        }
        kept.sort_unstable_by_key(rank);
        kept
    }
}

impl Reads {
    pub fn new(store: Reader, counters: Arc<Counters>, status: Arc<Status>) -> Self {
        Self {
            store,
            counters,
            status,
            associations: AssociationCache::default(),
        }
    }

    /// Every committed association: the cached ones while the generation
    /// is the one they were read at.
    pub fn associations(&self) -> Result<Arc<Vec<Association>>, ReadError> {
        let now = self.status.generation().generation;
        let mut cache = self
            .associations
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((read_at, rows)) = cache.as_ref() {
            if *read_at == now {
                return Ok(Arc::clone(rows));
            }
        }
        // Keyed by the generation of the snapshot read, so a commit that
        // lands between the two reads is read again next time.
        let (read_at, rows) = self.store.associations()?;
        let rows = Arc::new(rows);
        *cache = Some((read_at, Arc::clone(&rows)));
        Ok(rows)
    }

    /// Every association with its counters. Many associations: every slot
    /// in batches (a few system calls per 4,096 slots); few: one lookup
    /// each.
    pub fn carried(&self) -> Result<Carried, ReadError> {
        let associations = self.associations()?;
        let counters = &self.counters;
        let all = if associations.len() > (counters.eip_slots() / 64) as usize {
            counters.all_eips()?
        } else {
            None
        };
        let mut out = Vec::with_capacity(associations.len());
        for a in associations.iter() {
            out.push(
                match all.as_ref().and_then(|all| all.get(a.slot as usize)) {
                    Some(c) => *c,
                    None => counters.eip(a.slot)?,
                },
            );
        }
        Ok(Carried {
            associations,
            counters: out,
        })
    }

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

    /// Every (direction, verdict) counter, summed over CPUs.
    fn verdicts(&self) -> Result<Vec<VerdictStat>, ReadError> {
        Ok(self
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
            .collect())
    }

    /// `GET /v1/top`: the EIPs `query.filter` matches with the largest
    /// counters, the verdict counters and the generations, read together.
    pub fn top(&self, query: &TopQuery) -> Result<Top, ReadError> {
        let carried = self.carried()?;
        let read_ns = monotonic_ns();
        let verdicts = self.verdicts()?;
        let filter = query.filter.as_deref().unwrap_or("");
        let keep = |a: &Association| crate::top::filter::matches(filter, a.eip, &a.eni);
        let matched = if filter.is_empty() {
            carried.associations.len()
        } else {
            carried.associations.iter().filter(|a| keep(a)).count()
        };
        let top = match query.sort {
            TopSort::Bytes => {
                carried.top(query.n(), |c| c.in_bytes.saturating_add(c.out_bytes), keep)
            }
            TopSort::Packets => carried.top(
                query.n(),
                |c| c.in_packets.saturating_add(c.out_packets),
                keep,
            ),
        };
        let eips = top
            .into_iter()
            .map(|i| eip_stat(&carried.associations[i], carried.counters[i].into()))
            .collect();
        Ok(Top {
            read_ns,
            generation: self.generation(),
            associations: carried.associations.len() as u64,
            matched: matched as u64,
            verdicts,
            eips,
        })
    }

    /// Every counter; per-EIP counters for `eip` only, if given (one row
    /// read instead of every association's).
    pub fn stats(&self, eip: Option<Ipv4Addr>) -> Result<Stats, ReadError> {
        let verdicts = self.verdicts()?;
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
            eips.push(eip_stat(&a, c));
        }
        Ok(Stats { verdicts, eips })
    }
}

/// An association's row of counters.
fn eip_stat(a: &Association, c: Counts) -> EipStat {
    EipStat {
        eip: a.eip,
        eni: a.eni.clone(),
        mode: a.mode,
        private_ip: a.private_ip,
        in_packets: c.in_packets,
        in_bytes: c.in_bytes,
        out_packets: c.out_packets,
        out_bytes: c.out_bytes,
    }
}

/// The host's monotonic clock, in ns: what two readings' interval is
/// measured with (wall-clock steps do not move it).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mode;

    fn carried(rows: &[(u8, &str, u64)]) -> Carried {
        Carried {
            associations: Arc::new(
                rows.iter()
                    .enumerate()
                    .map(|(slot, (last, eni, _))| Association {
                        eip: Ipv4Addr::new(203, 0, 113, *last),
                        eni: (*eni).into(),
                        private_ip: None,
                        mode: Mode::Nat,
                        slot: slot as u32,
                    })
                    .collect(),
            ),
            counters: rows
                .iter()
                .map(|(_, _, bytes)| EipCounters {
                    in_bytes: *bytes,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn eips(c: &Carried, top: &[usize]) -> Vec<u8> {
        top.iter()
            .map(|&i| c.associations[i].eip.octets()[3])
            .collect()
    }

    #[test]
    fn the_top_is_the_largest_kept_first_ties_by_address() {
        let c = carried(&[
            (1, "eni-a", 10),
            (2, "eni-b", 300),
            (3, "eni-a", 20),
            (4, "eni-b", 300),
            (5, "eni-c", 0),
        ]);
        let bytes = |c: &EipCounters| c.in_bytes;
        assert_eq!(eips(&c, &c.top(2, bytes, |_| true)), [2, 4]);
        assert_eq!(eips(&c, &c.top(3, bytes, |_| true)), [2, 4, 3]);
        assert_eq!(eips(&c, &c.top(0, bytes, |_| true)), [2, 4, 3, 1, 5]);
        assert_eq!(eips(&c, &c.top(9, bytes, |_| true)), [2, 4, 3, 1, 5]);
        let eni_a = |a: &Association| a.eni == "eni-a";
        assert_eq!(eips(&c, &c.top(1, bytes, eni_a)), [3]);
        assert_eq!(eips(&c, &c.top(5, bytes, eni_a)), [3, 1]);
    }
}
