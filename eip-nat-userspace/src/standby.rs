//! Active/standby on a shared L2 uplink (`fleet_mode = "active-standby"`,
//! docs/fleet.md): the gateways of a group share one L2 segment with the
//! upstream router, which reaches an EIP by ARP. One of them, the active,
//! answers that ARP; the others stand by with the same tables (they follow
//! etcd like any gateway of the fleet), so taking over changes two flags.
//!
//! Leadership is one etcd key per group, `<prefix>-leader/<group>` (outside
//! the prefix of the state, so the state's transactions and watch never see
//! it), created only if absent and bound to a lease of `lease_ttl_secs`
//! that the active renews three times per TTL. The active also writes the
//! key again every [`HEARTBEAT`] (only while it holds it with its lease):
//! the standbys see each write on their watch, and one that has seen none
//! for [`TAKEOVER`] revokes the active's lease, which deletes the key, and
//! they race to create it again: one wins and announces the EIPs
//! (gratuitous ARP, `garp.rs`). Without the heartbeat a standby would wait
//! for the lease to run out and for etcd to notice (its expiry check runs
//! every 500 ms): one to one and a half TTLs of whole seconds, where the
//! heartbeat takes [`TAKEOVER`]. If the active and its etcd client both die,
//! the lease still runs out by itself.
//!
//! Split brain is avoided rather than availability kept: an active stops
//! answering ARP [`FENCE`] after it *sent* its last heartbeat that etcd
//! took, by its own clock. A standby takes over [`TAKEOVER`] after it
//! *saw* the last heartbeat, which etcd took before it was seen and after
//! it was sent: as `FENCE < TAKEOVER`, the active has stopped before any
//! standby starts, with `TAKEOVER - FENCE` to spare for the watch's delay.
//! The same holds for the lease: an active that cannot renew it stops when
//! it would run out, counted from when each renewal was sent. The datapath holds that
//! deadline itself (`ArpConfig::active_until_ns`): a datapath whose agent
//! died or hangs stops answering too. Such a gateway keeps translating
//! what is still sent to it (the upstream's entries for the EIPs still name
//! its MAC until someone else announces them); a standby drops what a
//! switch floods to it (`drop_standby`) only while another gateway is
//! known to be the active one.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use eip_nat_common::maps::{ArpConfig, FLAG_ARP_ACTIVE, FLAG_STANDBY};
use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::{
    api::StandbyRole,
    config::StandbyConfig,
    fleet::{Etcd, EtcdError},
    status::Status,
    writer::Writer,
};

/// After a failed attempt (etcd unreachable), the next one.
const RETRY: Duration = Duration::from_millis(200);
/// How often the active writes its key, for the standbys to see it alive.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// How long after its last heartbeat that etcd took an active stops
/// answering ARP (by its own clock)…
pub const FENCE: Duration = Duration::from_millis(300);
/// …and how long after the last heartbeat it saw a standby takes over.
pub const TAKEOVER: Duration = Duration::from_millis(500);
/// Announcements are sent twice, this far apart, in case the first round
/// met a full queue or a busy router (RFC 5227 §2.3 sends two).
const SECOND_ROUND: Duration = Duration::from_secs(1);

/// What the role needs from the rest of the agent.
pub struct Role {
    pub etcd: Arc<Etcd>,
    pub cfg: StandbyConfig,
    /// `<prefix>-leader/<group>`.
    pub key: String,
    pub writer: Writer,
    pub status: Arc<Status>,
    /// The ARP responder's configuration: this task's own handle.
    pub arp: Array<MapData, ArpConfig>,
    pub public_ifindex: u32,
    pub mac: [u8; 6],
    /// Set when the agent stops: an active one hands over at once.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// The leadership key of `group` under the fleet's `prefix`.
pub fn leader_key(prefix: &str, group: &str) -> String {
    format!("{prefix}-leader/{group}")
}

/// The outcome of one campaign.
enum Campaign {
    /// This gateway holds the key, with this lease, granted at that time.
    Won(i64, Instant),
    /// Another holds it (its name, its lease), as of this revision.
    Lost(String, i64, i64),
}

/// CLOCK_MONOTONIC in nanoseconds: `bpf_ktime_get_ns`'s clock.
fn monotonic_ns() -> u64 {
    // SAFETY: zeroes are a valid timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Role {
    fn ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.lease_ttl_secs.into())
    }

    fn publish(&self, role: &str, leader: Option<String>) {
        self.status.set_standby(StandbyRole {
            role: role.into(),
            group: self.cfg.group.clone(),
            node: self.cfg.node.clone(),
            leader,
        });
    }

    /// The datapath answers ARP until `until` (None: no longer).
    fn answer_until(&mut self, until: Option<Instant>) {
        let active_until_ns = until.map_or(0, |u| {
            let left = u.saturating_duration_since(Instant::now());
            monotonic_ns() + left.as_nanos() as u64
        });
        let cfg = ArpConfig {
            mac: self.mac,
            reserved: 0,
            active_until_ns,
        };
        if let Err(e) = self.arp.set(0, cfg, 0) {
            log::error!("setting the ARP responder's deadline: {e}");
        }
    }

    /// Sets the datapath's role bits, through the writer.
    async fn set_flags(&self, flags: u32) {
        match self.writer.call(move |gw| gw.set_l2_role(flags)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("setting the active/standby flags: {e}"),
            Err(e) => log::error!("setting the active/standby flags: {e}"),
        }
    }

    /// Runs until the agent stops.
    pub async fn run(mut self) {
        self.answer_until(None);
        self.publish("candidate", None);
        let mut stop = self.stop.clone();
        while !*stop.borrow() {
            let campaign = tokio::select! {
                c = self.campaign() => c,
                _ = stop.wait_for(|s| *s) => return,
            };
            match campaign {
                Ok(Campaign::Won(lease, granted)) => {
                    let stopped = self.lead(lease, granted).await;
                    // Lost or given up: nobody known to lead until etcd
                    // says so.
                    self.answer_until(None);
                    self.set_flags(0).await;
                    self.publish("candidate", None);
                    if stopped {
                        self.resign(lease).await;
                        return;
                    }
                }
                Ok(Campaign::Lost(leader, lease, revision)) => {
                    self.set_flags(FLAG_STANDBY).await;
                    log::info!(
                        "standby in group {}: {leader} is the active gateway",
                        self.cfg.group
                    );
                    self.publish("standby", Some(leader));
                    let vacant = tokio::select! {
                        v = self.wait_for_vacancy(lease, revision) => v,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    if let Err(e) = vacant {
                        // Stays a standby (what it last knew) until etcd
                        // answers again.
                        log::warn!("following the group's leader: {e}");
                        tokio::time::sleep(RETRY).await;
                    }
                }
                Err(e) => {
                    log::warn!("campaigning for group {}: {e}", self.cfg.group);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// The agent stops: gives the lease up, so that a standby takes over
    /// now rather than when it would have run out. The datapath already
    /// answers no ARP (a restarted agent campaigns like any other).
    async fn resign(&self, lease: i64) {
        let revoked = async {
            let mut client = self.etcd.client().await?;
            timeout(self.ttl(), client.lease_revoke(lease)).await
        };
        match revoked.await {
            Ok(_) => log::info!("stopping: gave up the group's lease, a standby takes over"),
            Err(e) => log::warn!("stopping: {e}; the group's lease runs out by itself"),
        }
    }

    /// Creates the key with a new lease if nobody holds it; else who does.
    async fn campaign(&self) -> Result<Campaign, EtcdError> {
        let granted = Instant::now();
        let mut client = self.etcd.client().await?;
        let ttl = self.cfg.lease_ttl_secs.into();
        let lease = timeout(self.ttl(), client.lease_grant(ttl, None))
            .await?
            .id();
        let node = self.cfg.node.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                self.key.clone(),
                node.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(self.key.clone(), None)]);
        let response = timeout(self.ttl(), client.txn(txn)).await?;
        if response.succeeded() {
            return Ok(Campaign::Won(lease, granted));
        }
        // Not ours: the lease would only wait out its TTL.
        let _ = timeout(self.ttl(), client.lease_revoke(lease)).await;
        let revision = response.header().map_or(0, |h| h.revision());
        let holder = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())),
            _ => None,
        });
        let Some((holder, holder_lease)) = holder else {
            // Deleted between the compare and the get: try again.
            return Box::pin(self.campaign()).await;
        };
        if holder == node {
            // This gateway's previous agent (restarted): its lease is of no
            // use to this one; free the key at once rather than wait it out.
            let free = Txn::new()
                .when([Compare::value(
                    self.key.clone(),
                    CompareOp::Equal,
                    node.clone(),
                )])
                .and_then([TxnOp::delete(self.key.clone(), None)]);
            timeout(self.ttl(), client.txn(free)).await?;
            return Box::pin(self.campaign()).await;
        }
        Ok(Campaign::Lost(holder, holder_lease, revision))
    }

    /// Watches the key from `revision` on until it is deleted (the active
    /// gave it up, or its lease ran out), or until the active, holding
    /// `lease`, has not written it for [`TAKEOVER`]: then its lease is
    /// revoked here, which deletes the key.
    async fn wait_for_vacancy(&self, mut lease: i64, revision: i64) -> Result<(), EtcdError> {
        let mut client = self.etcd.client().await?;
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let mut stream = timeout(self.ttl(), client.watch(self.key.clone(), Some(options))).await?;
        // The holder wrote the key before this gateway read it.
        let mut seen = tokio::time::Instant::now();
        loop {
            let message = tokio::time::timeout_at(seen + TAKEOVER, stream.message()).await;
            let Ok(message) = message else {
                log::warn!(
                    "group {}: no heartbeat from the active gateway for {TAKEOVER:?}: taking over",
                    self.cfg.group
                );
                // Gone already (its lease ran out) is as good.
                let _ = timeout(self.ttl(), client.lease_revoke(lease)).await;
                return Ok(());
            };
            let Some(response) = message? else {
                return Err(EtcdError::Unreachable("the watch ended".into()));
            };
            for event in response.events() {
                match (event.event_type(), event.kv()) {
                    (EventType::Delete, _) => return Ok(()),
                    (EventType::Put, Some(kv)) => {
                        seen = tokio::time::Instant::now();
                        lease = kv.lease();
                        let leader = String::from_utf8_lossy(kv.value()).into_owned();
                        self.publish("standby", Some(leader));
                    }
                    _ => {}
                }
            }
            if response.canceled() {
                return Err(EtcdError::Unreachable("the watch was canceled".into()));
            }
        }
    }

    /// The active gateway: answers ARP, announces the EIPs, and renews the
    /// lease until it cannot; returns when the lease is lost (or may be),
    /// or (true) when the agent stops.
    async fn lead(&mut self, lease: i64, granted: Instant) -> bool {
        let ttl = self.ttl();
        // When etcd could let another take over at the earliest: by the
        // lease, and by the heartbeat (`FENCE`); ARP until the earlier.
        let mut lease_until = granted + ttl;
        let mut fence = granted + FENCE;
        self.answer_until(Some(fence.min(lease_until)));
        self.set_flags(FLAG_ARP_ACTIVE).await;
        log::info!(
            "active in group {}: answering ARP for the EIPs, announcing them",
            self.cfg.group
        );
        self.publish("active", Some(self.cfg.node.clone()));
        self.spawn_announcements();
        let mut stop = self.stop.clone();
        let mut next_renewal = granted + ttl / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = stop.wait_for(|s| *s) => return true,
            }
            let sent = Instant::now();
            if sent >= next_renewal {
                match self.renew(lease, lease_until).await {
                    Ok(true) => {
                        lease_until = sent + ttl;
                        next_renewal = sent + ttl / 3;
                    }
                    Ok(false) => {
                        log::warn!("the group's lease ran out: stepping down");
                        return false;
                    }
                    Err(e) if Instant::now() + ttl / 3 >= lease_until => {
                        log::warn!(
                            "{e}; the lease is running out: stepping down (no ARP answered)"
                        );
                        return false;
                    }
                    Err(e) => log::warn!("renewing the group's lease: {e}; trying again"),
                }
            }
            let sent = Instant::now();
            match self.heartbeat(lease, fence).await {
                Ok(true) => fence = sent + FENCE,
                Ok(false) => {
                    log::warn!("the group's key is no longer this gateway's: stepping down");
                    return false;
                }
                Err(e) if Instant::now() >= fence => {
                    log::warn!("{e}; no heartbeat for {FENCE:?}: stepping down (no ARP answered)");
                    return false;
                }
                Err(e) => log::warn!("the group's heartbeat: {e}; trying again"),
            }
            self.answer_until(Some(fence.min(lease_until)));
        }
    }

    /// Writes the key again, only while it is held with `lease`: true if
    /// written, false if it is not this gateway's any more. Given up at
    /// `deadline`.
    async fn heartbeat(&self, lease: i64, deadline: Instant) -> Result<bool, EtcdError> {
        let txn = Txn::new()
            .when([Compare::lease(self.key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                self.key.clone(),
                self.cfg.node.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let attempt = async {
            let mut client = self.etcd.client().await?;
            Ok(client.txn(txn).await?.succeeded())
        };
        self.until(deadline, "the group's heartbeat", attempt).await
    }

    /// `attempt`, given up at `deadline`; a new channel to etcd after an
    /// attempt that could not reach it.
    async fn until<T>(
        &self,
        deadline: Instant,
        what: &'static str,
        attempt: impl std::future::Future<Output = Result<T, EtcdError>>,
    ) -> Result<T, EtcdError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = tokio::time::timeout(left, attempt)
            .await
            .map_err(|_| EtcdError::Timeout(what))?;
        if result.as_ref().is_err_and(EtcdError::unreachable) {
            self.etcd.reconnect().await;
        }
        result
    }

    /// One keep-alive of `lease`, given up at `deadline`: true if etcd
    /// renewed it, false if it is gone.
    async fn renew(&self, lease: i64, deadline: Instant) -> Result<bool, EtcdError> {
        let attempt = async {
            let mut client = self.etcd.client().await?;
            let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(r) => Ok(r.ttl() > 0),
                None => Err(EtcdError::Unreachable("the keep-alive stream ended".into())),
            }
        };
        self.until(deadline, "renewing the lease", attempt).await
    }

    /// Gratuitous ARP for every EIP, in two rounds, on a blocking thread.
    fn spawn_announcements(&self) {
        let (writer, ifindex, mac) = (self.writer.clone(), self.public_ifindex, self.mac);
        tokio::spawn(async move {
            let eips = match writer
                .call(|gw| {
                    gw.state()
                        .associations()
                        .map(|a| a.eip)
                        .collect::<Vec<Ipv4Addr>>()
                })
                .await
            {
                Ok(eips) => Arc::new(eips),
                Err(e) => return log::error!("listing the EIPs to announce: {e}"),
            };
            for round in 0..2 {
                if round > 0 {
                    tokio::time::sleep(SECOND_ROUND).await;
                }
                let started = Instant::now();
                let list = Arc::clone(&eips);
                let sent =
                    tokio::task::spawn_blocking(move || crate::garp::announce(ifindex, mac, &list))
                        .await;
                match sent {
                    Ok(Ok(n)) => log::info!(
                        "gratuitous ARP: {n} EIPs announced in {:.1?}",
                        started.elapsed()
                    ),
                    Ok(Err(e)) => log::error!("{e}"),
                    Err(e) => log::error!("gratuitous ARP: {e}"),
                }
            }
        });
    }
}

/// `f`, given up after `limit`.
async fn timeout<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    Ok(tokio::time::timeout(limit, f)
        .await
        .map_err(|_| EtcdError::Timeout("the group's leadership"))??)
}
