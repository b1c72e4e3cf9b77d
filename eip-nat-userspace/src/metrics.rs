//! `GET /metrics`: the counters, gauges and histograms in the OpenMetrics
//! text format (the `prometheus-client` crate), for Prometheus.
//!
//! Nothing is copied ahead of a scrape: the counters are read from the
//! per-CPU maps, the associations from the store's last committed snapshot
//! and the generations from [`Status`](crate::status::Status), each at
//! scrape time, by a [`Collector`]. Only the histograms (reconcile time,
//! API request time) are kept here, as they are observed.

use std::{fmt, sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use eip_nat_common::maps::{Direction, EipCounters};
use prometheus_client::{
    collector::Collector,
    encoding::{text, DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        family::Family,
        gauge::ConstGauge,
        histogram::{exponential_buckets, Histogram},
        info::Info,
        MetricType,
    },
    registry::{Registry, Unit},
};

use crate::{model::Association, reads::Reads};

/// The content type of [`Metrics::encode`]'s answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reconcile time: from a millisecond to about 20 minutes.
pub fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 11))
}

/// API request time: from 50 µs to about 13 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

type RequestLabels = [(&'static str, String); 3];
type Requests = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// What `GET /metrics` serves, shared by the API's listeners.
pub struct Metrics {
    registry: Registry,
    requests: Requests,
}

/// The options of the scrape.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The datapath's capacity (`max_associations`).
    pub max_associations: u32,
    /// Per-EIP series for the N EIPs with the most bytes (in + out); 0: all.
    pub top_eips: usize,
}

impl Metrics {
    pub fn new(reads: Reads, options: Options) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "eip_nat_build",
            "The agent's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_with_unit(
            "eip_nat_reconcile",
            "Time a full reconcile took (the start's: loading the store, the routes, the \
             datapath's entries, attaching)",
            Unit::Seconds,
            reads.status.reconcile_seconds().clone(),
        );
        let requests: Requests = Family::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "eip_nat_api_request",
            "Time the API took to answer, per route (method, matched path, status code)",
            Unit::Seconds,
            requests.clone(),
        );
        registry.register_collector(Box::new(Scrape { reads, options }));
        Self { registry, requests }
    }

    /// Every metric, read now.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(16 << 10);
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn observe(&self, method: &str, route: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&[
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("code", code.to_string()),
            ])
            .observe(seconds);
    }
}

/// Middleware: the time of each request to a known route
/// (`eip_nat_api_request_seconds`).
pub async fn time_request(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    if let Some(route) = route {
        metrics.observe(
            method.as_str(),
            &route,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    response
}

/// The direction label: `in` (arrived on the public side), `out` (on the
/// private side), `other`.
fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "in",
        Direction::Outbound => "out",
        Direction::Other => "other",
    }
}

/// Reads everything a scrape shows, at the scrape.
struct Scrape {
    reads: Reads,
    options: Options,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrape")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Encodes one metric family: `name`'s descriptor, then each series.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> fmt::Result {
    // As the registry's own: help ends with a full stop.
    let help = format!("{help}.");
    let mut metric = encoder.encode_descriptor(name, &help, unit, kind)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let help = format!("{help}.");
    let metric = encoder.encode_descriptor(name, &help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Scrape {
    /// Every association with its counters; the `top_eips` with the most
    /// bytes only, when that is set. Ordered by EIP.
    fn eips(&self) -> Result<(usize, Vec<(Association, EipCounters)>), String> {
        let carried = self.reads.carried().map_err(|e| e.to_string())?;
        let top = carried.top(
            self.options.top_eips,
            |c| c.in_bytes.saturating_add(c.out_bytes),
            |_| true,
        );
        let mut eips: Vec<_> = top
            .into_iter()
            .map(|i| (carried.associations[i].clone(), carried.counters[i]))
            .collect();
        eips.sort_unstable_by_key(|(a, _)| a.eip);
        Ok((carried.associations.len(), eips))
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let g = self.reads.status.generation();
        gauge(
            &mut encoder,
            "eip_nat_generation",
            "The desired state's generation (the last change committed)",
            g.generation as i64,
        )?;
        gauge(
            &mut encoder,
            "eip_nat_applied_generation",
            "The generation the datapath's maps and routes reflect",
            g.applied_generation as i64,
        )?;
        gauge(
            &mut encoder,
            "eip_nat_reconciling",
            "1 while the agent reconciles the datapath with the store (at start)",
            i64::from(g.reconcile.is_some()),
        )?;
        if let Some(role) = &g.standby {
            gauge(
                &mut encoder,
                "eip_nat_standby_active",
                "Active/standby on a shared L2: 1 while this gateway holds its group's lease and \
                 answers ARP for the EIPs, 0 otherwise",
                i64::from(role.role == "active"),
            )?;
        }
        gauge(
            &mut encoder,
            "eip_nat_associations_capacity",
            "Associations the datapath's maps hold (max_associations)",
            i64::from(self.options.max_associations),
        )?;

        match self.reads.counters.verdicts() {
            Ok(verdicts) => {
                let labels = |d: Direction, v: eip_nat_common::Verdict| {
                    vec![
                        ("direction", direction(d).to_owned()),
                        ("verdict", v.name().to_owned()),
                        ("drop", v.is_drop().to_string()),
                    ]
                };
                family(
                    &mut encoder,
                    "eip_nat_packets",
                    "Packets by the direction they arrived in and the datapath's verdict",
                    None,
                    MetricType::Counter,
                    verdicts
                        .iter()
                        .map(|(d, v, c)| (labels(*d, *v), ConstCounter::new(c.packets))),
                )?;
                family(
                    &mut encoder,
                    "eip_nat_bytes",
                    "Bytes (whole frames) by direction and verdict",
                    None,
                    MetricType::Counter,
                    verdicts
                        .iter()
                        .map(|(d, v, c)| (labels(*d, *v), ConstCounter::new(c.bytes))),
                )?;
            }
            Err(e) => log::warn!("metrics: reading the verdict counters: {e}"),
        }

        match self.eips() {
            Ok((total, eips)) => {
                gauge(
                    &mut encoder,
                    "eip_nat_associations",
                    "Associations in the committed state (each takes a counter slot)",
                    total as i64,
                )?;
                let labels = |a: &Association, dir: &'static str| {
                    vec![
                        ("eip", a.eip.to_string()),
                        ("eni", a.eni.to_string()),
                        ("mode", a.mode.name().to_owned()),
                        ("direction", dir.to_owned()),
                    ]
                };
                let per_eip = |packets: bool| {
                    eips.iter().flat_map(move |(a, c)| {
                        let (i, o) = if packets {
                            (c.in_packets, c.out_packets)
                        } else {
                            (c.in_bytes, c.out_bytes)
                        };
                        [
                            (labels(a, "in"), ConstCounter::new(i)),
                            (labels(a, "out"), ConstCounter::new(o)),
                        ]
                    })
                };
                family(
                    &mut encoder,
                    "eip_nat_eip_packets",
                    "Translated packets per EIP (the top metrics_top_eips EIPs by bytes, if set)",
                    None,
                    MetricType::Counter,
                    per_eip(true),
                )?;
                family(
                    &mut encoder,
                    "eip_nat_eip_bytes",
                    "Translated IPv4 bytes per EIP (the top metrics_top_eips EIPs by bytes, if set)",
                    None,
                    MetricType::Counter,
                    per_eip(false),
                )?;
            }
            Err(e) => log::warn!("metrics: reading the associations' counters: {e}"),
        }
        Ok(())
    }
}
