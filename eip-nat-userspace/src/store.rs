//! The desired state, durable: an embedded redb database in the state
//! directory. Every accepted event (or batch) is one write transaction,
//! committed with redb's default immediate durability before the datapath
//! changes, so a `kill -9` at any point leaves a store that opens
//! consistent: with or without that event, never half of it.

use std::{net::Ipv4Addr, path::Path};

use redb::{backends::InMemoryBackend, Database, ReadableTable, TableDefinition, TableHandle};
use thiserror::Error;

use crate::model::{Association, Eni, Limits, State, Touched};

/// ENI id → JSON of [`Eni`].
const ENIS: TableDefinition<&str, &[u8]> = TableDefinition::new("enis");
/// EIP (u32, host order) → JSON of [`Association`].
const ASSOCIATIONS: TableDefinition<u32, &[u8]> = TableDefinition::new("associations");
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
    db: Database,
    /// Held (flock) while the store is open: one agent per state directory.
    _lock: Option<std::fs::File>,
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
        }
        db!(tx.commit())?;
        Ok(Self { db, _lock: None })
    }

    /// The desired state and its generation.
    pub fn load(&self, limits: Limits) -> Result<(State, u64), StoreError> {
        let tx = db!(self.db.begin_read())?;
        let enis = db!(tx.open_table(ENIS))?;
        let mut rows = Vec::new();
        for item in db!(enis.iter())? {
            let (k, v) = db!(item)?;
            let id = k.value().to_string();
            let eni: Eni =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                    what: format!("{} {id}", ENIS.name()),
                    source,
                })?;
            rows.push((id, eni));
        }
        let table = db!(tx.open_table(ASSOCIATIONS))?;
        let mut associations = Vec::new();
        for item in db!(table.iter())? {
            let (k, v) = db!(item)?;
            let a: Association =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                    what: format!("association {}", Ipv4Addr::from(k.value())),
                    source,
                })?;
            associations.push(a);
        }
        let generation = db!(db!(tx.open_table(META))?.get(GENERATION))?.map_or(0, |v| v.value());
        let state =
            State::from_rows(limits, rows, associations).map_err(StoreError::Inconsistent)?;
        Ok((state, generation))
    }

    /// Writes the rows `touched` names, as they are in `state`, and the new
    /// generation, in one transaction.
    pub fn commit(
        &self,
        state: &State,
        touched: &Touched,
        generation: u64,
    ) -> Result<(), StoreError> {
        let tx = db!(self.db.begin_write())?;
        {
            let mut enis = db!(tx.open_table(ENIS))?;
            for id in &touched.enis {
                match state.eni(id) {
                    Some(eni) => {
                        let json = serde_json::to_vec(eni).expect("ENIs serialize");
                        db!(enis.insert(id.as_str(), json.as_slice()))?;
                    }
                    None => {
                        db!(enis.remove(id.as_str()))?;
                    }
                }
            }
            let mut table = db!(tx.open_table(ASSOCIATIONS))?;
            for eip in &touched.eips {
                match state.association(*eip) {
                    Some(a) => {
                        let json = serde_json::to_vec(a).expect("associations serialize");
                        db!(table.insert(u32::from(*eip), json.as_slice()))?;
                    }
                    None => {
                        db!(table.remove(u32::from(*eip)))?;
                    }
                }
            }
            db!(db!(tx.open_table(META))?.insert(GENERATION, generation))?;
        }
        db!(tx.commit())?;
        Ok(())
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
