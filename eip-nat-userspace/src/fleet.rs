//! The fleet's desired state in etcd (`store = "etcd"`, docs/fleet.md).
//!
//! Keys, under the configured prefix: `enis/<id>` → the [`Eni`] row and
//! `associations/<eip>` → the [`Association`] row (the JSON the redb rows
//! hold), and `generation`, which every transaction rewrites.
//!
//! A group of writes is checked on the agent's own copy of the state, then
//! written in one etcd transaction guarded by the revision that copy
//! reflects: no key under the prefix may have changed since (the
//! `generation` key catches deletions, which leave no key behind). So the
//! rules, which span rows and gateways (an EIP has one target, a private
//! IP carries one EIP), hold across concurrent writers: of two gateways
//! racing, one transaction fails its compare, and that gateway catches up
//! and checks its writes again ([`crate::gateway`]). The generation is the
//! etcd revision the state reflects: it increases across the fleet.
//!
//! Every agent follows the prefix with a watch from the revision after the
//! one it reflects ([`follow`]), and applies what changed through its
//! writer thread; after a compaction it lists everything and applies the
//! difference. Its local copy (the redb store) follows too, so an agent
//! can start while etcd is unreachable.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use thiserror::Error;

use crate::{
    config::EtcdConfig,
    model::{Association, Eni, RowChanges, State, Touched},
    status::Status,
    store::Store,
    writer::Writer,
};

/// How long one request to etcd may take before the agent calls it
/// unreachable.
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("the shared store (etcd) is unreachable: {0}")]
    Unreachable(String),
    #[error("the shared store (etcd) did not answer in time: {0}")]
    Timeout(&'static str),
    #[error("the shared store (etcd) refused the request: {0}")]
    Failed(String),
    #[error("reading the fleet's TLS or password files: {0}")]
    Files(String),
}

impl EtcdError {
    /// Worth retrying later: etcd is down or out of reach (HTTP 503).
    pub fn unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Timeout(_))
    }
}

impl From<etcd_client::Error> for EtcdError {
    fn from(e: etcd_client::Error) -> Self {
        match &e {
            // Cancelled, Unknown (a broken transport), DeadlineExceeded,
            // Unavailable.
            etcd_client::Error::GRpcStatus(s) if ![1, 2, 4, 14].contains(&(s.code() as i32)) => {
                Self::Failed(s.message().to_string())
            }
            etcd_client::Error::InvalidArgs(m) => Self::Failed(m.clone()),
            _ => Self::Unreachable(e.to_string()),
        }
    }
}

/// One row as a watch or a listing reports it, at its revision.
#[derive(Clone, Debug)]
pub enum Row {
    Eni(String, Option<Eni>),
    Association(Ipv4Addr, Option<Association>),
    /// The `generation` key: no row, but a revision of the state.
    Generation,
}

/// What changed in etcd since a revision.
#[derive(Debug)]
pub enum Fetched {
    /// Each change with its revision, in order.
    Events(Vec<(u64, Row)>),
    /// Everything, when the history since was compacted away (or the
    /// agent has nothing yet): applied by difference.
    Listing(Listing),
}

#[derive(Debug)]
pub struct Listing {
    pub enis: Vec<(String, Eni)>,
    pub associations: Vec<Association>,
    /// The newest revision among the keys: the generation it reflects.
    pub generation: u64,
    /// The revision it was read at; the history after it follows.
    pub revision: u64,
}

pub struct Etcd {
    endpoints: Vec<String>,
    options: ConnectOptions,
    prefix: String,
    client: tokio::sync::Mutex<Option<Client>>,
    runtime: tokio::runtime::Handle,
}

impl Etcd {
    /// Reads the TLS and password files; connects on first use (the
    /// agent starts, from its local copy, while etcd is unreachable).
    pub fn new(cfg: &EtcdConfig, runtime: tokio::runtime::Handle) -> Result<Self, EtcdError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| EtcdError::Files(format!("{}: {e}", p.display())))
        };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(TIMEOUT)
            .with_timeout(TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), TIMEOUT)
            .with_keep_alive_while_idle(true);
        if cfg.ca_file.is_some() || cfg.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        if let (Some(user), Some(file)) = (&cfg.user, &cfg.password_file) {
            let password = String::from_utf8_lossy(&read(file)?).trim().to_string();
            options = options.with_user(user.clone(), password);
        }
        Ok(Self {
            endpoints: cfg.endpoints.clone(),
            options,
            prefix: format!("{}/", cfg.prefix),
            client: tokio::sync::Mutex::new(None),
            runtime,
        })
    }

    /// Runs `f` to completion on the agent's runtime, from the writer
    /// thread (which is not one of the runtime's).
    /// Forgets the channel after a failure: the next request makes a new
    /// one (the old one may hold on to a member that is gone).
    pub(crate) async fn reconnect(&self) {
        *self.client.lock().await = None;
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The channel to the cluster (made on first use).
    pub(crate) async fn client(&self) -> Result<Client, EtcdError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let connect = Client::connect(&self.endpoints, Some(self.options.clone()));
        let c = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| EtcdError::Timeout("connecting"))??;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `op` on a client, within [`TIMEOUT`]. A request that never left
    /// (the connection to the member the channel chose was refused: it is
    /// down) is made again, once per endpoint, so that one member down of
    /// a cluster costs no error.
    async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for _ in 0..self.endpoints.len().max(1) {
            let client = self.client().await?;
            let error = match tokio::time::timeout(TIMEOUT, op(client)).await {
                Err(_) => EtcdError::Timeout(what),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let not_sent = e.to_string().contains("tcp connect error");
                    let e = EtcdError::from(e);
                    if not_sent {
                        last = Some(e);
                        continue;
                    }
                    e
                }
            };
            if error.unreachable() {
                self.reconnect().await;
            }
            return Err(error);
        }
        Err(last.expect("one attempt at least"))
    }

    fn eni_key(&self, id: &str) -> String {
        format!("{}enis/{id}", self.prefix)
    }

    fn association_key(&self, eip: Ipv4Addr) -> String {
        format!("{}associations/{eip}", self.prefix)
    }

    fn generation_key(&self) -> String {
        format!("{}generation", self.prefix)
    }

    /// Writes the rows `touched` names, as they are in `state`, in one
    /// transaction that holds only if nothing under the prefix changed
    /// after revision `generation`. Some(the new revision), or None: the
    /// compare failed, another gateway wrote first.
    pub async fn commit(
        &self,
        state: &State,
        touched: &Touched,
        generation: u64,
    ) -> Result<Option<u64>, EtcdError> {
        let mut ops = Vec::with_capacity(touched.enis.len() + touched.eips.len() + 1);
        for id in &touched.enis {
            let key = self.eni_key(id);
            ops.push(match state.eni(id) {
                Some(eni) => {
                    TxnOp::put(key, serde_json::to_vec(eni).expect("ENIs serialize"), None)
                }
                None => TxnOp::delete(key, None),
            });
        }
        for eip in &touched.eips {
            let key = self.association_key(*eip);
            ops.push(match state.association(*eip) {
                Some(a) => TxnOp::put(key, serde_json::to_vec(a).expect("rows serialize"), None),
                None => TxnOp::delete(key, None),
            });
        }
        ops.push(TxnOp::put(self.generation_key(), "", None));
        let guard =
            Compare::mod_revision(self.prefix.clone(), CompareOp::Less, generation as i64 + 1)
                .with_prefix();
        let txn = Txn::new().when([guard]).and_then(ops);
        let response = self
            .call("committing", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(response
            .succeeded()
            .then(|| response.header().map_or(0, |h| h.revision() as u64)))
    }

    /// Everything under the prefix.
    pub async fn list(&self) -> Result<Listing, EtcdError> {
        let response = self
            .call("listing", |mut c| async move {
                c.get(self.prefix.clone(), Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let mut listing = Listing {
            enis: Vec::new(),
            associations: Vec::new(),
            generation: 0,
            revision: response.header().map_or(0, |h| h.revision() as u64),
        };
        for kv in response.kvs() {
            listing.generation = listing.generation.max(kv.mod_revision() as u64);
            match self.row(kv, false) {
                Some(Row::Eni(id, Some(eni))) => listing.enis.push((id, eni)),
                Some(Row::Association(_, Some(a))) => listing.associations.push(a),
                _ => {}
            }
        }
        Ok(listing)
    }

    /// The newest revision of a key under the prefix (0 if none).
    async fn newest(&self) -> Result<u64, EtcdError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Mod, SortOrder::Descend)
            .with_limit(1);
        let response = self
            .call("reading the newest revision", |mut c| {
                let options = options.clone();
                async move { c.get(self.prefix.clone(), Some(options)).await }
            })
            .await?;
        Ok(response
            .kvs()
            .first()
            .map_or(0, |kv| kv.mod_revision() as u64))
    }

    /// A watch of the prefix from `revision` on.
    pub async fn watch(&self, revision: u64) -> Result<WatchStream, EtcdError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision as i64);
        self.call("watching", |mut c| {
            let options = options.clone();
            async move { c.watch(self.prefix.clone(), Some(options)).await }
        })
        .await
    }

    /// What changed after revision `generation`: the events up to the
    /// newest key's revision, or the whole listing when that history was
    /// compacted (or `generation` is 0, or etcd holds less than it).
    pub async fn fetch_since(&self, generation: u64) -> Result<Option<Fetched>, EtcdError> {
        let newest = self.newest().await?;
        if generation == 0 || newest < generation {
            return Ok(Some(Fetched::Listing(self.list().await?)));
        }
        if newest == generation {
            return Ok(None);
        }
        let mut stream = self.watch(generation + 1).await?;
        let mut events = Vec::new();
        let deadline = Instant::now() + TIMEOUT * 5;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, stream.message())
                .await
                .map_err(|_| EtcdError::Timeout("catching up"))??;
            let Some(response) = message else {
                return Err(EtcdError::Unreachable("the watch ended".into()));
            };
            if response.canceled() {
                return Ok(Some(Fetched::Listing(self.list().await?)));
            }
            // Any key counts towards `newest`, a row of ours or not.
            let done = response
                .events()
                .iter()
                .filter_map(|e| e.kv())
                .any(|kv| kv.mod_revision() as u64 >= newest);
            events.extend(self.events(response.events()));
            if done {
                break;
            }
        }
        Ok(Some(Fetched::Events(events)))
    }

    /// A watch response's events as rows, with their revisions.
    pub fn events(&self, events: &[etcd_client::Event]) -> Vec<(u64, Row)> {
        events
            .iter()
            .filter_map(|e| {
                let kv = e.kv()?;
                let deleted = e.event_type() == EventType::Delete;
                Some((kv.mod_revision() as u64, self.row(kv, deleted)?))
            })
            .collect()
    }

    /// The row a key holds (None: the key is no row of ours, or its value
    /// does not parse, which is logged).
    fn row(&self, kv: &KeyValue, deleted: bool) -> Option<Row> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        let rest = key.strip_prefix(&self.prefix)?;
        if rest == "generation" {
            Some(Row::Generation)
        } else if let Some(id) = rest.strip_prefix("enis/") {
            Some(Row::Eni(id.to_string(), value(key, kv, deleted)?))
        } else if let Some(eip) = rest.strip_prefix("associations/") {
            Some(Row::Association(
                eip.parse().ok()?,
                value(key, kv, deleted)?,
            ))
        } else {
            None
        }
    }
}

/// A row's value: Some(None) if deleted, None if it does not parse.
fn value<T: serde::de::DeserializeOwned>(
    key: &str,
    kv: &KeyValue,
    deleted: bool,
) -> Option<Option<T>> {
    if deleted {
        return Some(None);
    }
    match serde_json::from_slice(kv.value()) {
        Ok(v) => Some(Some(v)),
        Err(e) => {
            log::error!("etcd key {key} does not parse ({e}); ignored");
            None
        }
    }
}

/// Takes what etcd reports into `state` (whose local copy is `store`, at
/// `generation`): only what is newer than the generation it reflects, only
/// the rows that differ. Returns what changed, for the datapath, or None if
/// nothing did. `pending` holds rows the local copy could not be given
/// before; they are written with these.
pub fn take(
    state: &mut State,
    generation: &mut u64,
    store: &Store,
    fetched: Fetched,
    pending: &mut Touched,
) -> Option<Touched> {
    let (changes, newest) = match fetched {
        Fetched::Events(events) => {
            let mut changes = RowChanges::default();
            let mut newest = *generation;
            for (revision, row) in events {
                if revision <= *generation {
                    continue;
                }
                newest = newest.max(revision);
                match row {
                    Row::Eni(id, eni) => {
                        changes.enis.insert(id, eni);
                    }
                    Row::Association(eip, a) => {
                        changes.associations.insert(eip, a);
                    }
                    Row::Generation => {}
                }
            }
            (changes, newest)
        }
        Fetched::Listing(l) => {
            let limits = state.limits();
            if let Err(e) = State::from_rows(limits, l.enis.clone(), l.associations.clone()) {
                log::error!("the fleet's state in etcd is inconsistent ({e}); not taken");
                return None;
            }
            let changes = RowChanges::between(state, l.enis, l.associations);
            (changes, l.generation)
        }
    };
    if newest == *generation && changes.is_empty() {
        return None;
    }
    let touched = state.set_rows(changes);
    *generation = newest;
    record_locally(store, state, &touched, newest, pending);
    Some(touched)
}

/// Writes the rows `touched` names (and those a failed write left in
/// `pending`) to the local copy, at `generation`. A failure is logged: the
/// local copy is only for starting while etcd is unreachable, and the rows
/// are written with the next change.
pub fn record_locally(
    store: &Store,
    state: &State,
    touched: &Touched,
    generation: u64,
    pending: &mut Touched,
) {
    pending.merge(touched.clone());
    match store.commit(state, pending, generation) {
        Ok(()) => *pending = Touched::default(),
        Err(e) => log::error!(
            "writing the local copy of the state (generation {generation}): {}; retried with the \
             next change",
            crate::gateway::chain(&e)
        ),
    }
}

/// At start, before the datapath is touched: brings the local copy up to
/// what etcd holds, so the gateway reconciles to the fleet's state. If etcd
/// is unreachable the agent starts from its local copy (and catches up
/// once etcd answers). Returns the counter slots of the associations that
/// changed, which start from zero.
pub fn catch_up_local(store: &Store, limits: crate::model::Limits, etcd: &Etcd) -> Vec<u32> {
    let (mut state, mut generation) = match store.load(limits) {
        Ok(s) => s,
        Err(e) => {
            log::error!("loading the local copy: {}", crate::gateway::chain(&e));
            return Vec::new();
        }
    };
    let local = generation;
    let started = Instant::now();
    match etcd.block_on(etcd.fetch_since(generation)) {
        Ok(None) => log::info!("the local copy is at etcd's generation {generation}"),
        Ok(Some(fetched)) => {
            let mut pending = Touched::default();
            let touched = take(&mut state, &mut generation, store, fetched, &mut pending);
            log::info!(
                "caught up from etcd: generation {local} to {generation} in {:.1?}",
                started.elapsed()
            );
            return touched
                .iter()
                .flat_map(|t| &t.eips)
                .filter_map(|eip| state.association(*eip).map(|a| a.slot))
                .collect();
        }
        Err(e) => log::warn!(
            "{e}; starting from the local copy (generation {generation}), catching up when etcd \
             answers"
        ),
    }
    Vec::new()
}

/// Follows etcd for as long as the agent runs: every change under the
/// prefix after the generation the gateway reflects is applied, in its
/// turn, by the writer; after a compaction, the whole listing by
/// difference. While etcd is unreachable it retries every second; the
/// datapath keeps serving what it has.
pub async fn follow(etcd: Arc<Etcd>, writer: Writer, status: Arc<Status>) {
    let mut listed_at = 0;
    let mut down_since: Option<Instant> = None;
    loop {
        let from = status.generation().generation.max(listed_at) + 1;
        let mut stream = match etcd.watch(from).await {
            Ok(s) => s,
            Err(e) => {
                if down_since.is_none() {
                    log::warn!(
                        "{e}; writes are refused until it answers, the datapath keeps serving"
                    );
                    down_since = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    if down_since.is_none() {
                        log::warn!("watching etcd: {e}; following again when it answers");
                        down_since = Some(Instant::now());
                    }
                    break;
                }
            };
            if let Some(since) = down_since.take() {
                log::info!("etcd answers again (after {:.1?})", since.elapsed());
            }
            let fetched = if response.canceled() {
                if response.compact_revision() == 0 {
                    log::warn!("the watch was canceled: {}", response.cancel_reason());
                    break;
                }
                // The history since the gateway's generation is gone.
                match etcd.list().await {
                    Ok(l) => {
                        log::info!(
                            "etcd compacted past generation {}: taking the whole state by difference",
                            from - 1
                        );
                        listed_at = l.revision;
                        Fetched::Listing(l)
                    }
                    Err(e) => {
                        log::warn!("{e}");
                        break;
                    }
                }
            } else {
                let events = etcd.events(response.events());
                if events.is_empty() {
                    continue;
                }
                Fetched::Events(events)
            };
            let canceled = matches!(fetched, Fetched::Listing(_));
            if writer
                .call(move |gw| gw.take_shared(fetched))
                .await
                .is_err()
            {
                return;
            }
            if canceled {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
