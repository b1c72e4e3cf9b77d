//! The throughput tables, one per placement, and eip-nat's fast path
//! against the minimal NAT.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    peers::Peer,
    placement::{Placement, GATEWAY_CPU},
    throughput::{Measurement, FLOWS},
};

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The lowest and the highest of `v`.
fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)))
}

pub fn spread(v: &[f64]) -> f64 {
    let m = median(v);
    let (lo, hi) = range(v);
    if m > 0.0 {
        (hi - lo) / m * 100.0
    } else {
        0.0
    }
}

pub fn mpps(x: f64) -> String {
    format!("{:.3}", x / 1e6)
}

fn find(
    rows: &[Measurement],
    placement: Placement,
    peer: Peer,
    associations: u32,
    flows: u32,
) -> Option<&Measurement> {
    rows.iter().find(|m| {
        (m.placement, m.peer, m.associations, m.flows) == (placement, peer, associations, flows)
    })
}

/// The gateway's own cost per frame. On one core every frame's costs add
/// up, so it is the time per frame minus that with no gateway at all (row
/// 0, measured in the same rounds). On its own CPU it is its NAPI thread's
/// CPU time per frame.
fn gateway_cost(rows: &[Measurement], m: &Measurement) -> Option<f64> {
    match m.placement {
        Placement::OneCore => {
            let direct = find(rows, m.placement, Peer::Direct, m.associations, m.flows)?;
            let (pps, base) = (median(&m.pps), median(&direct.pps));
            (m.peer != Peer::Direct && pps > 0.0).then(|| 1e9 / pps - 1e9 / base)
        }
        Placement::OwnCpu => {
            let ns: Vec<f64> = m.cost.iter().filter_map(|c| c.gateway_ns).collect();
            (!ns.is_empty()).then(|| median(&ns))
        }
    }
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".into())
}

/// The rows in reading order: flows, then associations, then peer.
fn ordered(rows: &[Measurement], placement: Placement) -> Vec<&Measurement> {
    let mut assocs: Vec<u32> = rows.iter().map(|m| m.associations).collect();
    assocs.sort_unstable();
    assocs.dedup();
    let mut out = Vec::new();
    for flows in FLOWS {
        for &a in &assocs {
            out.extend(
                Peer::ALL
                    .iter()
                    .filter_map(|&p| find(rows, placement, p, a, flows)),
            );
        }
    }
    out
}

pub fn table(rows: &[Measurement], placement: Placement) -> String {
    let own_cpu = placement == Placement::OwnCpu;
    let mut md = match placement {
        Placement::OneCore => "### One core\n\nThe generator pinned to CPU 0; a veth delivers a frame in the \
            sender's softirq, so the gateway and the sink run there too and each rate is 1 / (their summed \
            cost per frame). Gateway ns/frame: the time per frame minus that of row (0) of the same \
            rounds (row 0 has no gateway; its associations are those of the rounds it ran in).\n\n"
            .to_string(),
        Placement::OwnCpu => format!(
            "### Gateway on its own CPU\n\nThe generator pinned to CPU 0; threaded NAPI on the gateway's \
             public veth end and on the sink's, both threads pinned to CPU {GATEWAY_CPU} (checked after each \
             repetition). Gateway ns/frame: its NAPI thread's CPU time (schedstat) per delivered frame, \
             its receive path, XDP program and hand-over to the sink included. CPU {GATEWAY_CPU} busy: all \
             that ran there (/proc/stat ticks), whoever it was.\n\n"
        ),
    };
    md.push_str("| peer | associations | flows | Mpps (median) | spread | eip-nat rate ÷ peer's | gateway ns/frame | peer's cost ÷ eip-nat's |");
    if own_cpu {
        writeln!(md, " sink ns/frame | CPU {GATEWAY_CPU} busy ns/frame |").unwrap();
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    } else {
        md.push_str("\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    }
    for m in ordered(rows, placement) {
        let fast = find(rows, placement, Peer::EipNatFast, m.associations, m.flows);
        let med = median(&m.pps);
        let ratio = fast
            .filter(|_| med > 0.0)
            .map(|f| format!("{:.2}×", median(&f.pps) / med));
        let cost = gateway_cost(rows, m);
        let rel = match (cost, fast.and_then(|f| gateway_cost(rows, f))) {
            (Some(c), Some(f)) => Some(format!("{:.2}×", c / f)),
            _ => None,
        };
        write!(
            md,
            "| {} | {} | {} | {} | {:.1} % | {} | {} | {} |",
            m.peer.label(),
            m.associations,
            m.flows,
            mpps(med),
            spread(&m.pps),
            or_dash(ratio),
            or_dash(cost.map(|c| format!("{c:.0}"))),
            or_dash(rel),
        )
        .unwrap();
        if own_cpu {
            let sink: Vec<f64> = m.cost.iter().map(|c| c.sink_ns).collect();
            let cpu: Vec<f64> = m.cost.iter().map(|c| c.cpu_ns).collect();
            write!(md, " {:.0} | {:.0} |", median(&sink), median(&cpu)).unwrap();
        }
        md.push('\n');
    }
    md.push('\n');
    md
}

/// eip-nat's fast path against the minimal NAT, in one cell of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub placement: Placement,
    pub associations: u32,
    pub flows: u32,
    pub eip_nat_pps: f64,
    pub min_nat_pps: f64,
    /// eip-nat's delivered rate ÷ the minimal NAT's, the median of the
    /// rounds' ratios (each round measures both side by side, seconds
    /// apart, so a slow spell of the machine cancels out); the target is
    /// ≥ 0.95.
    pub rate_ratio: f64,
    /// The lowest and highest of the rounds' ratios.
    pub rate_ratio_range: (f64, f64),
    pub eip_nat_ns: Option<f64>,
    pub min_nat_ns: Option<f64>,
    /// eip-nat's gateway cost per frame ÷ the minimal NAT's.
    pub cost_ratio: Option<f64>,
}

pub fn comparisons(rows: &[Measurement]) -> Vec<Comparison> {
    rows.iter()
        .filter(|m| m.peer == Peer::EipNatFast)
        .filter_map(|e| {
            let m = find(rows, e.placement, Peer::MinNat, e.associations, e.flows)?;
            let (eip_nat_ns, min_nat_ns) = (gateway_cost(rows, e), gateway_cost(rows, m));
            let per_round: Vec<f64> = e.pps.iter().zip(&m.pps).map(|(e, m)| e / m).collect();
            Some(Comparison {
                placement: e.placement,
                associations: e.associations,
                flows: e.flows,
                eip_nat_pps: median(&e.pps),
                min_nat_pps: median(&m.pps),
                rate_ratio: median(&per_round),
                rate_ratio_range: range(&per_round),
                eip_nat_ns,
                min_nat_ns,
                cost_ratio: eip_nat_ns.zip(min_nat_ns).map(|(e, m)| e / m),
            })
        })
        .collect()
}

pub fn comparison_table(c: &[Comparison]) -> String {
    let mut md = String::from(
        "### eip-nat's fast path against the minimal hand-written NAT (target: rate ≥ 0.95×)\n\n\
         | placement | associations | flows | eip-nat Mpps | minimal NAT Mpps | eip-nat rate ÷ minimal NAT's (median of the rounds') | the rounds' lowest – highest | eip-nat ns/frame | minimal NAT ns/frame | eip-nat cost ÷ minimal NAT's |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let ns = |v: Option<f64>| or_dash(v.map(|x| format!("{x:.0}")));
    for r in c {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.2}× | {:.2}–{:.2}× | {} | {} | {} |",
            r.placement.label(),
            r.associations,
            r.flows,
            mpps(r.eip_nat_pps),
            mpps(r.min_nat_pps),
            r.rate_ratio,
            r.rate_ratio_range.0,
            r.rate_ratio_range.1,
            ns(r.eip_nat_ns),
            ns(r.min_nat_ns),
            or_dash(r.cost_ratio.map(|x| format!("{x:.2}×"))),
        )
        .unwrap();
    }
    md.push('\n');
    md
}
