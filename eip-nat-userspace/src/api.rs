//! The agent's HTTP/JSON API: the bodies it takes and returns. The routes
//! are in `server.rs`, the client in `client.rs`, and the whole API is
//! described in `openapi.json` (served at `GET /openapi.json`).

use std::net::Ipv4Addr;

use eip_nat_common::{Direction, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{Association, Eni, EniId, Event, Mode};

pub const DEFAULT_SOCKET: &str = "/run/eip-nat/eip-nat.sock";

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The generation of the desired state (bumped by every accepted event or
/// batch) and the one the datapath reflects. They differ only while an
/// update is being applied, or after the datapath failed to take one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Generation {
    /// Bumped by every accepted event or batch; durable.
    pub generation: u64,
    /// The generation the datapath's maps and routes reflect.
    pub applied_generation: u64,
    /// While the agent starts (or redoes the whole datapath): how far it
    /// is. Writes wait until it ends; reads are answered throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileProgress>,
    /// Active/standby on a shared L2 (`fleet_mode = "active-standby"`):
    /// this gateway's role and its group's leader. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbyRole>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StandbyRole {
    /// `active` (holds the group's lease: answers ARP for the EIPs),
    /// `standby` (another gateway holds it) or `candidate` (no lease and no
    /// leader known: etcd is unreachable, or the lease was just lost;
    /// answers no ARP).
    pub role: String,
    /// The group of gateways sharing one L2 segment.
    pub group: String,
    /// This gateway's name in it.
    pub node: String,
    /// The active gateway's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReconcileProgress {
    /// `loading` (the store), `next_hops` (reading the kernel's tables),
    /// `routes`, `entries`, `attaching`.
    pub phase: String,
    pub done: u64,
    /// Steps in this phase; 0 if not known.
    pub total: u64,
}

/// `POST /v1/batch`: events applied all or nothing, as one generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub events: Vec<Event>,
    /// Refuse the batch unless the current generation is this one
    /// (optimistic concurrency between several writers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_generation: Option<u64>,
}

/// `GET` and `PUT /v1/log-level`: the agent's log filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogLevel {
    /// A level (`off`, `error`, `warn`, `info`, `debug`, `trace`), or
    /// directives per module: `info,eip_nat::server=debug`.
    pub level: String,
}

/// Every error the API returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// The rule that refused it (`refused` only), as a stable code, e.g.
    /// `eni_attached`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Which event of a batch was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub message: String,
}

/// What went wrong, for a program to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A rule refused it (`rule` names it); nothing changed.
    Refused,
    /// Not a request this API takes; nothing changed.
    Malformed,
    /// `if_generation` did not match; nothing changed.
    Stale,
    /// The TCP listener's token is missing or wrong.
    Unauthorized,
    /// No such endpoint.
    NotFound,
    /// The agent could not carry out a valid request.
    Failed,
    /// The agent is stopping; nothing changed.
    Unavailable,
}

impl ErrorKind {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Malformed => "malformed",
            Self::Stale => "stale",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::Failed => "failed",
            Self::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EniView {
    pub id: EniId,
    #[serde(flatten)]
    pub eni: Eni,
}

/// `GET /v1/state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StateView {
    #[serde(flatten)]
    pub generation: Generation,
    pub enis: Vec<EniView>,
    pub associations: Vec<Association>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Stats {
    /// Every (direction, verdict) counter, zero or not, so a scraper sees a
    /// stable set of series.
    pub verdicts: Vec<VerdictStat>,
    pub eips: Vec<EipStat>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VerdictStat {
    #[serde(with = "by_name")]
    #[schemars(schema_with = "by_name::schema::<Direction>")]
    pub direction: Direction,
    #[serde(with = "by_name")]
    #[schemars(schema_with = "by_name::schema::<Verdict>")]
    pub verdict: Verdict,
    pub code: u32,
    pub drop: bool,
    pub packets: u64,
    /// Whole frames, link-layer header included.
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

/// `GET /v1/top`: the EIPs with the largest counters, and what a live
/// view shows beside them, read together. Rates are the differences of
/// two answers divided by the difference of their `read_ns`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Top {
    /// When the counters were read: the agent host's monotonic clock, in
    /// ns (only differences between two answers mean anything).
    pub read_ns: u64,
    pub generation: Generation,
    /// Every (direction, verdict) counter.
    pub verdicts: Vec<VerdictStat>,
    /// Associations in the committed state.
    pub associations: u64,
    /// Associations `filter` matched (all without one).
    pub matched: u64,
    /// The `n` matched EIPs with the largest counters (`sort`, in + out),
    /// largest first. Their counters are their slot's since the
    /// association began (as in `/metrics`), not since the usage period
    /// began (as in `/v1/stats`); differences are the same.
    pub eips: Vec<EipStat>,
}

/// `GET /v1/top`'s query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopQuery {
    /// How many EIPs (default 100, at most [`TopQuery::MAX_N`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default)]
    pub sort: TopSort,
    /// Only EIPs whose address or ENI contains this text (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

impl TopQuery {
    pub const DEFAULT_N: usize = 100;
    pub const MAX_N: usize = 10_000;

    pub fn n(&self) -> usize {
        self.n.unwrap_or(Self::DEFAULT_N).clamp(1, Self::MAX_N)
    }
}

/// What `/v1/top` ranks the EIPs by: their bytes or their packets, in +
/// out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopSort {
    #[default]
    Bytes,
    Packets,
}

impl Stats {
    /// The counter of a direction and a verdict, by their names.
    pub fn verdict(&self, direction: &str, verdict: &str) -> Option<&VerdictStat> {
        self.verdicts
            .iter()
            .find(|v| v.direction.name() == direction && v.verdict.name() == verdict)
    }

    /// Packets translated in `direction` (by name), by either path.
    pub fn translated(&self, direction: &str) -> u64 {
        self.verdicts
            .iter()
            .filter(|v| v.direction.name() == direction && v.verdict.is_translated())
            .map(|v| v.packets)
            .sum()
    }

    pub fn eip(&self, eip: Ipv4Addr) -> Option<&EipStat> {
        self.eips.iter().find(|e| e.eip == eip)
    }
}

/// The datapath's enums travel by their stable names (`inbound`,
/// `translated_redirect`), the names `eip-nat stats` shows.
mod by_name {
    use eip_nat_common::{Direction, Verdict};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub trait Named: Copy + 'static {
        const ALL: &'static [Self];
        fn name(self) -> &'static str;
    }

    impl Named for Direction {
        const ALL: &'static [Self] = &Direction::ALL;
        fn name(self) -> &'static str {
            Direction::name(self)
        }
    }

    impl Named for Verdict {
        const ALL: &'static [Self] = &Verdict::ALL;
        fn name(self) -> &'static str {
            Verdict::name(self)
        }
    }

    /// A string, one of the names.
    pub fn schema<T: Named>(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<_> = T::ALL.iter().map(|v| v.name()).collect();
        schemars::json_schema!({ "type": "string", "enum": names })
    }

    pub fn serialize<T: Named, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.name())
    }

    pub fn deserialize<'de, T: Named, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        T::ALL
            .iter()
            .copied()
            .find(|v| v.name() == name)
            .ok_or_else(|| D::Error::custom(format!("unknown name {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `components.schemas` of openapi.json must be: the API's types
    /// as schemars describes them (what they accept).
    fn components() -> serde_json::Value {
        let mut g = schemars::generate::SchemaSettings::draft2020_12()
            .with(|s| s.definitions_path = "/components/schemas".into())
            .into_generator();
        g.subschema_for::<Event>();
        g.subschema_for::<Batch>();
        g.subschema_for::<Generation>();
        g.subschema_for::<ErrorBody>();
        g.subschema_for::<StateView>();
        g.subschema_for::<Stats>();
        g.subschema_for::<LogLevel>();
        g.subschema_for::<Top>();
        g.take_definitions(true).into()
    }

    fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                out.extend(m.get("$ref").and_then(|r| r.as_str()));
                m.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// openapi.json's paths are written by hand; its schemas are the
    /// types'. `UPDATE_OPENAPI=1 cargo test -p eip-nat-userspace --lib
    /// openapi` rewrites them after a change to the types (review the diff).
    #[test]
    fn openapi_describes_the_types() {
        let want = components();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            let head = &OPENAPI[..OPENAPI.find("  \"components\": ").expect("components last")];
            let schemas = serde_json::to_string_pretty(&serde_json::json!({ "schemas": want }))
                .unwrap()
                .replace('\n', "\n  ");
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
            std::fs::write(path, format!("{head}  \"components\": {schemas}\n}}\n")).unwrap();
            return;
        }
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let have = &doc["components"]["schemas"];
        for (name, schema) in want.as_object().unwrap() {
            assert_eq!(
                have.get(name),
                Some(schema),
                "openapi.json's {name} is not the type's: UPDATE_OPENAPI=1 cargo test -p \
                 eip-nat-userspace --lib openapi rewrites it"
            );
        }
        assert_eq!(have, &want, "openapi.json has schemas no type has");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
            assert!(
                want.get(name).is_some(),
                "openapi.json refers to {r}, no type"
            );
        }
    }

    #[test]
    fn enums_travel_by_their_names() {
        let v = VerdictStat {
            direction: Direction::Inbound,
            verdict: Verdict::TranslatedRedirect,
            code: Verdict::TranslatedRedirect as u32,
            drop: false,
            packets: 1,
            bytes: 2,
        };
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["direction"], "inbound");
        assert_eq!(json["verdict"], "translated_redirect");
        assert_eq!(serde_json::from_value::<VerdictStat>(json).unwrap(), v);
        let mut bad = serde_json::to_value(&v).unwrap();
        bad["verdict"] = "sideways".into();
        assert!(serde_json::from_value::<VerdictStat>(bad).is_err());

        let e = ErrorBody {
            error: ApiError {
                kind: ErrorKind::NotFound,
                rule: None,
                index: None,
                message: "m".into(),
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"error":{"kind":"not_found","message":"m"}}"#);
        assert_eq!(serde_json::from_str::<ErrorBody>(&json).unwrap(), e);
    }
}
