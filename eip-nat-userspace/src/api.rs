//! The agent's HTTP/JSON API: the bodies it takes and returns. The routes
//! are in `server.rs`, the client in `client.rs`, and the whole API is
//! described in `openapi.json` (served at `GET /openapi.json`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{Association, Eni, EniId, Event, Mode};

pub const DEFAULT_SOCKET: &str = "/run/eip-nat/eip-nat.sock";

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The generation of the desired state (bumped by every accepted event or
/// batch) and the one the datapath reflects. They differ only while an
/// update is being applied, or after the datapath failed to take one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u64,
    pub applied_generation: u64,
    /// While the agent starts (or redoes the whole datapath): how far it
    /// is. Writes wait until it ends; reads are answered throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileProgress>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileProgress {
    /// `loading` (the store), `next_hops` (reading the kernel's tables),
    /// `routes`, `entries`, `attaching`.
    pub phase: String,
    pub done: u64,
    /// Steps in this phase; 0 if not known.
    pub total: u64,
}

/// `POST /v1/batch`: events applied all or nothing, as one generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub events: Vec<Event>,
    /// Refuse the batch unless the current generation is this one
    /// (optimistic concurrency between several writers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_generation: Option<u64>,
}

/// Every error the API returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// `refused` (a rule; nothing changed), `malformed` (nothing changed),
    /// `stale` (if_generation did not match; nothing changed),
    /// `unauthorized`, `not_found`, or `failed` (the agent could not carry
    /// out a valid request).
    pub kind: String,
    /// The rule that refused it (`refused` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Which event of a batch was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniView {
    pub id: EniId,
    #[serde(flatten)]
    pub eni: Eni,
}

/// `GET /v1/state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateView {
    #[serde(flatten)]
    pub generation: Generation,
    pub enis: Vec<EniView>,
    pub associations: Vec<Association>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every (direction, verdict) counter, zero or not, so a scraper sees a
    /// stable set of series.
    pub verdicts: Vec<VerdictStat>,
    pub eips: Vec<EipStat>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictStat {
    pub direction: String,
    pub verdict: String,
    pub code: u32,
    pub drop: bool,
    pub packets: u64,
    /// Whole frames, link-layer header included.
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EipStat {
    pub eip: Ipv4Addr,
    pub eni: EniId,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<Ipv4Addr>,
    pub in_packets: u64,
    /// IPv4 bytes (header total length), as billed.
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

impl Stats {
    pub fn verdict(&self, direction: &str, verdict: &str) -> Option<&VerdictStat> {
        self.verdicts
            .iter()
            .find(|v| v.direction == direction && v.verdict == verdict)
    }

    /// Packets translated in `direction`, by either path.
    pub fn translated(&self, direction: &str) -> u64 {
        self.verdicts
            .iter()
            .filter(|v| v.direction == direction && v.verdict.starts_with("translated"))
            .map(|v| v.packets)
            .sum()
    }

    pub fn eip(&self, eip: Ipv4Addr) -> Option<&EipStat> {
        self.eips.iter().find(|e| e.eip == eip)
    }
}
