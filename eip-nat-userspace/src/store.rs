//! The desired state, durable: an embedded redb database in the state
//! directory. Every group of accepted events (one, or as many as arrived
//! together: group commit; several groups, when they queue behind a
//! commit, `committer.rs`) is one write transaction, committed with redb's
//! default immediate durability before anyone is answered, so a `kill -9`
//! at any point leaves a store that opens consistent: with or without each
//! event, never half of one, and with every event that was answered.
//!
//! Reads ([`Snapshot`]) are redb read transactions: they see the last
//! committed state and neither wait for the writer nor hold it up (redb
//! is copy-on-write, one writer and any number of readers).

use std::{net::Ipv4Addr, path::Path, sync::Arc};

use redb::{backends::InMemoryBackend, Database, ReadableTable, TableDefinition, TableHandle};
use thiserror::Error;

use crate::{
    model::{Association, Eni, Limits, State, Touched},
    usage::{Period, Turned, UsageRecord},
};

/// ENI id → JSON of [`Eni`].
const ENIS: TableDefinition<&str, &[u8]> = TableDefinition::new("enis");
/// EIP (u32, host order) → JSON of [`Association`].
const ASSOCIATIONS: TableDefinition<u32, &[u8]> = TableDefinition::new("associations");
/// EIP → JSON of the open usage [`Period`].
const PERIODS: TableDefinition<u32, &[u8]> = TableDefinition::new("periods");
/// (ended_ns << 32 | EIP) → JSON of a [`UsageRecord`]: in time order.
const USAGE: TableDefinition<u128, &[u8]> = TableDefinition::new("usage");
/// Counters of the store itself.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";
const SCHEMA: &str = "schema";
const SCHEMA_VERSION: u64 = 1;

/// The store's file inside the state directory.
pub const FILE: &str = "state.redb";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening the state store {path}")]
    Open {
        path: String,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("the state store")]
    Db(#[source] Box<redb::Error>),
    #[error("the state store holds a record that does not parse ({what})")]
    Corrupt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the state store is inconsistent: {0}")]
    Inconsistent(String),
    /// A change checked after one that failed to record, and so not recorded.
    #[error("an earlier change failed to record, and this one was checked after it")]
    AfterFailure(#[source] Arc<StoreError>),
    #[error("the agent is stopping")]
    Stopped,
    #[error("the state directory {dir} is in use by another agent (or cannot be locked)")]
    Locked {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the state store has schema {found}; this agent knows {SCHEMA_VERSION}")]
    Schema { found: u64 },
}

macro_rules! db {
    ($e:expr) => {
        $e.map_err(|e| StoreError::Db(Box::new(e.into())))
    };
}

/// Takes `dir/lock` exclusively, without waiting.
fn lock(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::fd::AsRawFd;
    let locked = |source| StoreError::Locked {
        dir: dir.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(locked)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(locked(std::io::Error::last_os_error()));
    }
    Ok(file)
}

pub struct Store {
    /// Held (flock) while the store is open: one agent per state directory.
    _lock: Option<std::fs::File>,
    tables: Tables,
}

impl Store {
    /// Opens (or creates) the store in `dir`. redb holds a lock on the
    /// file, so a second agent on the same directory fails here.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let lock = lock(dir)?;
        let path = dir.join(FILE);
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        let mut store = Self::init(db)?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// A store that lives in memory, for tests and tools.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = db!(Database::builder().create_with_backend(InMemoryBackend::new()))?;
        Self::init(db)
    }

    /// An in-memory store whose disk fails (every write and sync) while
    /// the flag is set: a disk that fills up or goes away under the store.
    #[cfg(test)]
    pub fn faulty() -> Result<(Self, Arc<std::sync::atomic::AtomicBool>), StoreError> {
        let backend = faulty::Faulty::default();
        let failing = Arc::clone(&backend.failing);
        let db = db!(Database::builder().create_with_backend(backend))?;
        Ok((Self::init(db)?, failing))
    }

    fn init(db: Database) -> Result<Self, StoreError> {
        let tx = db!(db.begin_write())?;
        {
            let mut meta = db!(tx.open_table(META))?;
            let found = db!(meta.get(SCHEMA))?.map(|v| v.value());
            match found {
                None => {
                    db!(meta.insert(SCHEMA, SCHEMA_VERSION))?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(StoreError::Schema { found }),
            }
            db!(tx.open_table(ENIS))?;
            db!(tx.open_table(ASSOCIATIONS))?;
            db!(tx.open_table(PERIODS))?;
            db!(tx.open_table(USAGE))?;
        }
        db!(tx.commit())?;
        Ok(Self {
            tables: Tables {
                db: Arc::new(db),
                usage_pending: Default::default(),
            },
            _lock: None,
        })
    }

    /// The committed generation, without loading the state.
    pub fn generation(&self) -> Result<u64, StoreError> {
        let tx = db!(self.tables.db.begin_read())?;
        read_generation(&tx)
    }

    /// The open usage periods.
    pub fn periods(&self) -> Result<Vec<Period>, StoreError> {
        let tx = db!(self.tables.db.begin_read())?;
        read_periods(&tx)
    }

    /// Records periods that ended, and opens (or replaces) and closes
    /// periods, in one transaction.
    ///
    /// Without an fsync of its own (redb's `Durability::None`): readers see
    /// it at once, and the next durable commit makes it durable, so a
    /// change costs one fsync, not two. If the agent dies before, the store
    /// still holds the ended period as open while its association is gone;
    /// the next start ends it from the counters, which no change has reset
    /// in between (`Gateway::open_periods`): the record is kept, only its
    /// end time is later. A clean stop writes it at once (`Drop`).
    pub fn record_usage(&self, turned: &Turned) -> Result<(), StoreError> {
        let mut usage = Changes::default();
        usage.usage(turned);
        self.tables.write(&[usage], false)
    }

    /// A handle for readers on other threads: each read sees the last
    /// committed state.
    pub fn reader(&self) -> Reader {
        Reader {
            db: Arc::clone(&self.tables.db),
        }
    }

    /// The desired state and its generation.
    pub fn load(&self, limits: Limits) -> Result<(State, u64), StoreError> {
        let tx = db!(self.tables.db.begin_read())?;
        let rows = read_rows(&tx)?;
        let state = State::from_rows(limits, rows.enis, rows.associations)
            .map_err(StoreError::Inconsistent)?;
        Ok((state, rows.generation))
    }

    /// Writes the rows `touched` names, as they are in `state`, and the new
    /// generation, in one transaction.
    pub fn commit(
        &self,
        state: &State,
        touched: &Touched,
        generation: u64,
    ) -> Result<(), StoreError> {
        self.tables
            .write(&[Changes::rows(state, touched, generation)], true)
    }

    /// The tables, to write from another thread (`committer.rs`).
    pub fn tables(&self) -> Tables {
        self.tables.clone()
    }
}

/// Rows to write, serialized, owned: what one group changed (and the
/// usage it ended and started), handed to the thread that commits it.
#[derive(Debug, Default)]
pub struct Changes {
    enis: Vec<(String, Option<Vec<u8>>)>,
    associations: Vec<(u32, Option<Vec<u8>>)>,
    generation: Option<u64>,
    usage: Vec<(u128, Vec<u8>)>,
    periods: Vec<(u32, Option<Vec<u8>>)>,
}

impl Changes {
    /// The rows `touched` names, as they are in `state`, at `generation`.
    pub fn rows(state: &State, touched: &Touched, generation: u64) -> Self {
        let enis = touched
            .enis
            .iter()
            .map(|id| {
                let row = state
                    .eni(id)
                    .map(|eni| serde_json::to_vec(eni).expect("ENIs serialize"));
                (id.clone(), row)
            })
            .collect();
        let associations = touched
            .eips
            .iter()
            .map(|eip| {
                let row = state
                    .association(*eip)
                    .map(|a| serde_json::to_vec(a).expect("associations serialize"));
                (u32::from(*eip), row)
            })
            .collect();
        Self {
            enis,
            associations,
            generation: Some(generation),
            ..Self::default()
        }
    }

    /// Adds the periods a change ended (their records), opened and closed.
    pub fn usage(&mut self, turned: &Turned) {
        for r in &turned.ended {
            let json = serde_json::to_vec(r).expect("records serialize");
            self.usage.push((usage_key(r), json));
        }
        self.periods
            .extend(turned.closed.iter().map(|eip| (u32::from(*eip), None)));
        for p in &turned.opened {
            let json = serde_json::to_vec(p).expect("periods serialize");
            self.periods.push((u32::from(p.carried.eip), Some(json)));
        }
    }
}

/// The store's tables, shared by the writer's thread and the committer's
/// (redb takes one write transaction at a time).
#[derive(Clone)]
pub struct Tables {
    db: Arc<Database>,
    /// A commit without an fsync since the last durable one.
    usage_pending: Arc<std::sync::atomic::AtomicBool>,
}

impl Tables {
    /// Writes `changes`, in order, in one transaction: with an fsync
    /// (`durable`), which makes every commit before it durable too, or
    /// without (see [`Store::record_usage`]).
    pub fn write(&self, changes: &[Changes], durable: bool) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut tx = db!(self.db.begin_write())?;
        if !durable {
            tx.set_durability(redb::Durability::None);
            self.usage_pending.store(true, Relaxed);
        }
        {
            let mut enis = db!(tx.open_table(ENIS))?;
            let mut associations = db!(tx.open_table(ASSOCIATIONS))?;
            let mut usage = db!(tx.open_table(USAGE))?;
            let mut periods = db!(tx.open_table(PERIODS))?;
            for c in changes {
                for (id, row) in &c.enis {
                    match row {
                        Some(json) => db!(enis.insert(id.as_str(), json.as_slice()))?,
                        None => db!(enis.remove(id.as_str()))?,
                    };
                }
                for (eip, row) in &c.associations {
                    match row {
                        Some(json) => db!(associations.insert(*eip, json.as_slice()))?,
                        None => db!(associations.remove(*eip))?,
                    };
                }
                for (key, json) in &c.usage {
                    db!(usage.insert(*key, json.as_slice()))?;
                }
                for (eip, row) in &c.periods {
                    match row {
                        Some(json) => db!(periods.insert(*eip, json.as_slice()))?,
                        None => db!(periods.remove(*eip))?,
                    };
                }
            }
            if let Some(generation) = changes.iter().filter_map(|c| c.generation).max() {
                db!(db!(tx.open_table(META))?.insert(GENERATION, generation))?;
            }
        }
        if durable {
            // Durable, and with it every commit before it. Cleared while
            // this transaction holds redb's write lock, so that no
            // non-durable commit after it can be cleared too.
            self.usage_pending.store(false, Relaxed);
        }
        let committed = db!(tx.commit());
        if committed.is_err() {
            self.usage_pending.store(true, Relaxed);
        }
        committed
    }
}

impl Drop for Store {
    /// Makes a usage commit that no change has followed durable.
    fn drop(&mut self) {
        if !self
            .tables
            .usage_pending
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let flushed = self.tables.write(&[], true);
        if let Err(e) = flushed {
            log::error!("writing the last usage records durably: {e}");
        }
    }
}

fn usage_key(r: &UsageRecord) -> u128 {
    (u128::from(r.ended_ns) << 32) | u128::from(u32::from(r.carried.eip))
}

fn read_periods(tx: &redb::ReadTransaction) -> Result<Vec<Period>, StoreError> {
    let table = db!(tx.open_table(PERIODS))?;
    let mut out = Vec::new();
    for item in db!(table.iter())? {
        let (k, v) = db!(item)?;
        out.push(
            serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                what: format!("usage period of {}", Ipv4Addr::from(k.value())),
                source,
            })?,
        );
    }
    Ok(out)
}

/// Every stored row, as of one committed generation.
pub struct Rows {
    pub generation: u64,
    pub enis: Vec<(String, Eni)>,
    pub associations: Vec<Association>,
}

fn read_generation(tx: &redb::ReadTransaction) -> Result<u64, StoreError> {
    Ok(db!(db!(tx.open_table(META))?.get(GENERATION))?.map_or(0, |v| v.value()))
}

fn read_rows(tx: &redb::ReadTransaction) -> Result<Rows, StoreError> {
    let enis = db!(tx.open_table(ENIS))?;
    let mut eni_rows = Vec::new();
    for item in db!(enis.iter())? {
        let (k, v) = db!(item)?;
        let id = k.value().to_string();
        let eni: Eni = serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
            what: format!("{} {id}", ENIS.name()),
            source,
        })?;
        eni_rows.push((id, eni));
    }
    Ok(Rows {
        generation: read_generation(tx)?,
        enis: eni_rows,
        associations: read_associations(tx)?,
    })
}

fn read_associations(tx: &redb::ReadTransaction) -> Result<Vec<Association>, StoreError> {
    let table = db!(tx.open_table(ASSOCIATIONS))?;
    let mut out = Vec::new();
    for item in db!(table.iter())? {
        let (k, v) = db!(item)?;
        out.push(
            serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                what: format!("association {}", Ipv4Addr::from(k.value())),
                source,
            })?,
        );
    }
    Ok(out)
}

/// Reads the last committed state from any thread (see the module's
/// comment): what an acknowledged event changed is always there.
#[derive(Clone)]
pub struct Reader {
    db: Arc<Database>,
}

impl Reader {
    pub fn rows(&self) -> Result<Rows, StoreError> {
        let tx = db!(self.db.begin_read())?;
        read_rows(&tx)
    }

    /// The open periods, by EIP.
    pub fn periods(&self) -> Result<std::collections::BTreeMap<Ipv4Addr, Period>, StoreError> {
        let tx = db!(self.db.begin_read())?;
        Ok(read_periods(&tx)?
            .into_iter()
            .map(|p| (p.carried.eip, p))
            .collect())
    }

    /// The open period of `eip`.
    pub fn period(&self, eip: Ipv4Addr) -> Result<Option<Period>, StoreError> {
        let tx = db!(self.db.begin_read())?;
        let table = db!(tx.open_table(PERIODS))?;
        let Some(row) = db!(table.get(u32::from(eip)))? else {
            return Ok(None);
        };
        serde_json::from_slice(row.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                what: format!("usage period of {eip}"),
                source,
            })
    }

    /// Usage records of periods that ended at or after `since_ns`, oldest
    /// first, of `eip` only if given.
    pub fn usage(
        &self,
        since_ns: u64,
        eip: Option<Ipv4Addr>,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let tx = db!(self.db.begin_read())?;
        let table = db!(tx.open_table(USAGE))?;
        let mut out = Vec::new();
        for item in db!(table.range(u128::from(since_ns) << 32..))? {
            let (_, v) = db!(item)?;
            let r: UsageRecord =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                    what: "usage record".into(),
                    source,
                })?;
            if eip.is_none_or(|e| e == r.carried.eip) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The association of `eip`, if it has one.
    pub fn association(&self, eip: Ipv4Addr) -> Result<Option<Association>, StoreError> {
        let tx = db!(self.db.begin_read())?;
        let table = db!(tx.open_table(ASSOCIATIONS))?;
        let Some(row) = db!(table.get(u32::from(eip)))? else {
            return Ok(None);
        };
        serde_json::from_slice(row.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                what: format!("association {eip}"),
                source,
            })
    }

    /// The associations only (for counters), and their generation.
    pub fn associations(&self) -> Result<(u64, Vec<Association>), StoreError> {
        let tx = db!(self.db.begin_read())?;
        Ok((read_generation(&tx)?, read_associations(&tx)?))
    }
}

#[cfg(test)]
mod faulty {
    use std::{
        io,
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
    };

    use redb::{backends::InMemoryBackend, StorageBackend};

    #[derive(Debug, Default)]
    pub struct Faulty {
        inner: InMemoryBackend,
        pub failing: Arc<AtomicBool>,
    }

    impl Faulty {
        fn check(&self) -> io::Result<()> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected: the disk failed"));
            }
            Ok(())
        }
    }

    impl StorageBackend for Faulty {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            self.inner.read(offset, len)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self, eventual: bool) -> io::Result<()> {
            self.check()?;
            self.inner.sync_data(eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EniKind, Event, Journal, Location, Mode};

    #[test]
    fn what_is_committed_loads_back() {
        let dir = std::env::temp_dir().join(format!("eip-nat-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let limits = Limits::default();
        let mut state = State::new(limits);
        {
            let store = Store::open(&dir).unwrap();
            let mut gen = 0;
            for ev in [
                Event::CreateEni {
                    eni: "eni-1".into(),
                    kind: EniKind::Primary,
                    primary_ip: "10.0.0.1".parse().unwrap(),
                    instance: Some("i-1".into()),
                    location: Location::default(),
                },
                Event::Associate {
                    eip: "203.0.113.1".parse().unwrap(),
                    eni: "eni-1".into(),
                    private_ip: None,
                    mode: Mode::Nat,
                },
            ] {
                let t = state.apply(&ev, &mut Journal::new(&state)).unwrap();
                gen += 1;
                store.commit(&state, &t, gen).unwrap();
            }
            // A second opener is refused while the first holds the store.
            let e = Store::open(&dir).err().expect("second open refused");
            assert!(e.to_string().contains("in use by another agent"), "{e}");
        }
        let store = Store::open(&dir).unwrap();
        let (loaded, gen) = store.load(limits).unwrap();
        assert_eq!(gen, 2);
        assert_eq!(loaded, state);
        let t = state
            .apply(
                &Event::Disassociate {
                    eip: "203.0.113.1".parse().unwrap(),
                },
                &mut Journal::new(&state),
            )
            .unwrap();
        store.commit(&state, &t, 3).unwrap();
        assert_eq!(store.load(limits).unwrap(), (state, 3));
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
