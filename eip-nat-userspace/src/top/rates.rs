//! Rates: the difference of two successive samples' counters over the
//! time between their readings (the agent's monotonic clock).

use std::{collections::HashMap, net::Ipv4Addr};

use eip_nat_common::{Direction, Verdict};

use crate::{
    api::{EipStat, Top},
    model::Mode,
};

/// Packets and bits per second, in and out.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Flow {
    pub in_pps: f64,
    pub out_pps: f64,
    pub in_bps: f64,
    pub out_bps: f64,
}

impl Flow {
    pub fn total_pps(&self) -> f64 {
        self.in_pps + self.out_pps
    }

    pub fn total_bps(&self) -> f64 {
        self.in_bps + self.out_bps
    }
}

/// One EIP's row.
#[derive(Clone, Debug, PartialEq)]
pub struct EipRate {
    pub eip: Ipv4Addr,
    pub eni: String,
    pub mode: Mode,
    /// None when the previous sample did not have this EIP (it just
    /// entered the top, or was just associated) or its counters went
    /// back (a new association on its slot).
    pub flow: Option<Flow>,
}

/// A dropping verdict's packets per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropRate {
    pub direction: Direction,
    pub verdict: Verdict,
    pub pps: f64,
}

/// What a screen shows between two samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    /// Seconds between the two readings.
    pub seconds: f64,
    /// The current sample's EIPs, in its order.
    pub eips: Vec<EipRate>,
    /// Dropping verdicts with packets in the interval.
    pub drops: Vec<DropRate>,
}

/// A counter's increase per second; None if it went back.
fn per_second(now: u64, before: u64, seconds: f64) -> Option<f64> {
    now.checked_sub(before).map(|d| d as f64 / seconds)
}

fn flow(now: &EipStat, before: &EipStat, seconds: f64) -> Option<Flow> {
    let bits = |now: u64, before: u64| per_second(now, before, seconds).map(|b| b * 8.0);
    Some(Flow {
        in_pps: per_second(now.in_packets, before.in_packets, seconds)?,
        out_pps: per_second(now.out_packets, before.out_packets, seconds)?,
        in_bps: bits(now.in_bytes, before.in_bytes)?,
        out_bps: bits(now.out_bytes, before.out_bytes)?,
    })
}

/// The rates from `before` to `now`, two samples of one agent.
pub fn rates(before: &Top, now: &Top) -> Rates {
    let seconds = now.read_ns.saturating_sub(before.read_ns) as f64 / 1e9;
    let known = seconds > 0.0;
    let earlier: HashMap<Ipv4Addr, &EipStat> = before.eips.iter().map(|e| (e.eip, e)).collect();
    let eips = now
        .eips
        .iter()
        .map(|e| EipRate {
            eip: e.eip,
            eni: e.eni.clone(),
            mode: e.mode,
            flow: earlier
                .get(&e.eip)
                .filter(|_| known)
                .and_then(|b| flow(e, b, seconds)),
        })
        .collect();
    let drops = now
        .verdicts
        .iter()
        .filter(|v| v.drop && known)
        .filter_map(|v| {
            let b = before
                .verdicts
                .iter()
                .find(|b| b.direction == v.direction && b.verdict == v.verdict)?;
            let pps = per_second(v.packets, b.packets, seconds)?;
            (pps > 0.0).then_some(DropRate {
                direction: v.direction,
                verdict: v.verdict,
                pps,
            })
        })
        .collect();
    Rates {
        seconds,
        eips,
        drops,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{Generation, VerdictStat};

    pub fn eip(last: u8, eni: &str, packets: (u64, u64), bytes: (u64, u64)) -> EipStat {
        EipStat {
            eip: Ipv4Addr::new(203, 0, 113, last),
            eni: eni.into(),
            mode: Mode::Nat,
            private_ip: None,
            in_packets: packets.0,
            in_bytes: bytes.0,
            out_packets: packets.1,
            out_bytes: bytes.1,
        }
    }

    pub fn drop_count(verdict: Verdict, packets: u64) -> VerdictStat {
        VerdictStat {
            direction: Direction::Inbound,
            verdict,
            code: verdict as u32,
            drop: verdict.is_drop(),
            packets,
            bytes: packets * 60,
        }
    }

    pub fn sample(read_ns: u64, eips: Vec<EipStat>, verdicts: Vec<VerdictStat>) -> Top {
        Top {
            read_ns,
            generation: Generation {
                generation: 9,
                applied_generation: 7,
                reconcile: None,
                standby: None,
            },
            verdicts,
            associations: eips.len() as u64,
            matched: eips.len() as u64,
            eips,
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let before = sample(
            1_000_000_000,
            vec![eip(1, "eni-a", (100, 50), (10_000, 5_000))],
            vec![drop_count(Verdict::DropPublicUnlisted, 7)],
        );
        // Two seconds later.
        let now = sample(
            3_000_000_000,
            vec![eip(1, "eni-a", (500, 250), (50_000, 25_000))],
            vec![drop_count(Verdict::DropPublicUnlisted, 27)],
        );
        let r = rates(&before, &now);
        assert_eq!(r.seconds, 2.0);
        let f = r.eips[0].flow.unwrap();
        assert_eq!(f.in_pps, 200.0);
        assert_eq!(f.out_pps, 100.0);
        assert_eq!(f.in_bps, 160_000.0);
        assert_eq!(f.out_bps, 80_000.0);
        assert_eq!(f.total_bps(), 240_000.0);
        assert_eq!(f.total_pps(), 300.0);
        assert_eq!(
            r.drops,
            vec![DropRate {
                direction: Direction::Inbound,
                verdict: Verdict::DropPublicUnlisted,
                pps: 10.0
            }]
        );
    }

    #[test]
    fn unknown_rates_are_none_and_quiet_drops_are_left_out() {
        let before = sample(
            1_000_000_000,
            vec![eip(1, "eni-a", (100, 0), (10_000, 0))],
            vec![drop_count(Verdict::DropPublicUnlisted, 7)],
        );
        let now = sample(
            2_000_000_000,
            vec![
                // A new association on the slot: its counters went back.
                eip(1, "eni-a", (3, 0), (300, 0)),
                // Not in the previous sample.
                eip(2, "eni-b", (9, 0), (900, 0)),
            ],
            vec![drop_count(Verdict::DropPublicUnlisted, 7)],
        );
        let r = rates(&before, &now);
        assert_eq!(r.eips.len(), 2);
        assert!(r.eips.iter().all(|e| e.flow.is_none()), "{r:?}");
        assert!(r.drops.is_empty(), "no drops in the interval");
        // The same reading twice: no interval, no rates.
        let same = rates(&now, &now);
        assert!(same.eips.iter().all(|e| e.flow.is_none()));
    }
}
